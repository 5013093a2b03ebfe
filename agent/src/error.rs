//! The agent's error type: configuration errors (exit 64, naming the field), HTTP client and
//! server set-up, and the failures of single Vault or coordinator requests, each naming the
//! address and the reason the other side gave (also a restore not served in time and a failed
//! promotion canary).

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or environment variable has an invalid value. `flag` names it (`--interval`).
    #[error("invalid {flag} (env {env}): {message}")]
    Config {
        /// The command-line flag, e.g. `--interval`.
        flag: &'static str,
        /// The environment variable that can set it.
        env: &'static str,
        /// What is wrong, without any secret value.
        message: String,
    },
    /// Clap's own answer: a usage error (exit 64), or `--help` / `--version` (exit 0).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// An HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client for {what}")]
    HttpClient {
        /// Which client (`vault`, `coordinator`).
        what: &'static str,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A metric could not be registered.
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP server stopped with an error.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    /// The write gate cannot listen on its address (most often: the node still listens there).
    #[error(
        "the write gate cannot listen on {addr} (--gate-listen): {source}; the node must listen on an address of its own (e.g. 127.0.0.1:8300, README \"The write gate\")"
    )]
    GateListen {
        /// `--gate-listen`.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The snapshot directory cannot be used.
    #[error("snapshot directory")]
    SnapshotStore(#[source] crate::replication::snapshot::store::StoreError),
    /// A Vault request got no HTTP answer (refused, reset, timed out).
    #[error("{what}: no answer from Vault")]
    VaultRequest {
        /// The endpoint (`sys/leader`).
        what: &'static str,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A Vault request got an unexpected HTTP status.
    #[error("{what}: unexpected HTTP status {status}")]
    VaultStatus {
        /// The endpoint.
        what: &'static str,
        /// The status code.
        status: u16,
    },
    /// A Vault answer could not be decoded.
    #[error("{what}: undecodable answer")]
    VaultDecode {
        /// The endpoint.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A restored snapshot was not served by the node in time.
    #[error("the node did not serve snapshot index {index} within {after:?}")]
    VaultRestoreTimeout {
        /// The snapshot's raft index.
        index: u64,
        /// How long was waited.
        after: std::time::Duration,
    },
    /// A report got no answer from the coordinator (refused, reset, DNS, timed out).
    #[error("report to {url}: no answer from the coordinator: {message}")]
    CoordinatorRequest {
        /// The report URL.
        url: url::Url,
        /// The transport error with every cause.
        message: String,
    },
    /// The coordinator refused a report; `reason` is what its answer said (trimmed).
    #[error("report to {url}: the coordinator answered {status}: {reason}")]
    CoordinatorStatus {
        /// The report URL.
        url: url::Url,
        /// The HTTP status.
        status: u16,
        /// The answer's reason, or what it probably means when it gave none.
        reason: String,
    },
    /// The coordinator's 2xx answer to a report is not a desired state.
    #[error("report to {url}: the coordinator's answer is not a desired state: {message}")]
    CoordinatorDecode {
        /// The report URL.
        url: url::Url,
        /// Why.
        message: String,
    },
    /// The promotion canary (a write and read in the DR token's cubbyhole) failed.
    #[error("canary: {0}")]
    Canary(String),
}

impl Error {
    /// Process exit code for this error when it ends the process: 0 for `--help`/`--version`,
    /// 64 (`EX_USAGE`) for bad input, 70 (`EX_SOFTWARE`) otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Cli(e) if !e.use_stderr() => 0,
            Self::Cli(_) | Self::Config { .. } => vault_dr_common::exit::USAGE,
            _ => vault_dr_common::exit::SOFTWARE,
        }
    }

    /// Prints the error for the user: clap's help and version to stdout, everything else to
    /// stderr (clap's usage errors with its suggestions).
    pub fn print(&self) {
        match self {
            Self::Cli(e) => {
                let _ = e.print();
            }
            other => eprintln!("vault-dr-agent: {other}"),
        }
    }

    /// Short bounded kind of a request failure, for `last_error` fields and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VaultRequest { source, .. } => request_error_kind(source),
            Self::VaultStatus { .. } => "status",
            Self::VaultDecode { .. } => "decode",
            Self::VaultRestoreTimeout { .. } => "restore_timeout",
            Self::Canary(_) => "canary",
            _ => "internal",
        }
    }
}

/// Bounded kind of a `reqwest` failure: `timeout`, `connect` or `request`.
pub fn request_error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() || e.is_body() {
        "decode"
    } else {
        "request"
    }
}
