//! The operator's command line against a running coordinator's API: `status`, `explain`,
//! `history`, `switchover`; `drill` and `bench` run the separate `vault-dr-lab` binary.

pub mod explain;
pub mod history;
pub mod lab;
pub mod maintenance;
pub mod status;
pub mod switchover;

use crate::config::{Config, ProcessEnv};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use vault_dr_common::Secret;
use vault_dr_common::http::{Answerer, answer_reason, error_chain, quoted};
use vault_dr_common::telemetry::{LOG_FORMATS, LogFormat};

/// Env: log format of every subcommand, `json` or `text` (`--log-format`).
pub const ENV_LOG_FORMAT: &str = "VAULT_DR_LOG_FORMAT";
/// Env: `true` logs JSON (`vault-dr coordinator --log-json`), the older form of
/// `VAULT_DR_LOG_FORMAT=json`, kept because charts and users set it.
pub const ENV_LOG_JSON: &str = "VAULT_DR_LOG_JSON";

/// vault-dr: disaster recovery for Vault and OpenBao.
#[derive(Debug, clap::Parser)]
#[command(name = "vault-dr", version, about)]
pub struct Cli {
    /// Log format of every subcommand: json = one JSON object per line, text = one line for
    /// people. Never colour codes unless stderr is a terminal [default: text]
    #[arg(
        long,
        global = true,
        env = ENV_LOG_FORMAT,
        value_name = LOG_FORMATS,
        value_parser = parse_log_format
    )]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Runs the coordinator service.
    Coordinator(CoordinatorArgs),
    /// Shows every cluster: role, state, lag, latency, CPU, memory, report age, eligibility.
    Status(ApiArgs),
    /// Shows the latest decision that made a candidate table (a failover, a switchover, or
    /// no candidate) with that table and its time, then the current tick's sentence;
    /// `--failover ID` shows one past failover's decision instead.
    Explain(explain::ExplainArgs),
    /// Shows the failover journal.
    History {
        /// Shared flags.
        #[command(flatten)]
        api: ApiArgs,
        /// How many failovers, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Runs a whole DR group on this machine (four OpenBao clusters, agents, three
    /// coordinators, a client), kills the primary and shows the failover: timeline, RTO, RPO.
    /// Runs `vault-dr-lab drill` (`cargo build -p vault-dr-lab`; not in the service image).
    #[command(disable_help_flag = true)]
    Drill(lab::LabArgs),
    /// Benchmarks that print figures. Runs `vault-dr-lab bench`.
    #[command(disable_help_flag = true)]
    Bench(lab::LabArgs),
    /// Planned switchover: cut client traffic, restore a final snapshot of the primary into
    /// the target, promote it, switch traffic. No acknowledged write is lost.
    Switchover(switchover::SwitchoverArgs),
    /// Maintenance: no automatic failover until `vault-dr resume` or `--for` runs out
    /// (detection, metrics and planned switchovers go on). Journaled in the topology with who
    /// and why; `status` shows it on its first line.
    Pause(maintenance::PauseArgs),
    /// Ends the maintenance pause: automatic failover is on again.
    Resume(maintenance::ResumeArgs),
}

/// Flags of `vault-dr coordinator`.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArgs {
    /// The DR group configuration (TOML). Environment overrides: see the README.
    #[arg(long, env = "VAULT_DR_CONFIG")]
    pub config: PathBuf,
    /// Same as --log-format json (kept for older set-ups; --log-format wins).
    #[arg(long, env = ENV_LOG_JSON)]
    pub log_json: bool,
}

impl Cli {
    /// The log format: `--log-format`, else `--log-json` of `vault-dr coordinator`, else text.
    pub fn log_format(&self) -> LogFormat {
        let json_alias = matches!(&self.command, Command::Coordinator(a) if a.log_json);
        LogFormat::resolve(self.log_format, json_alias)
    }
}

/// `--log-format`'s value parser: clap's usage error (exit 64) then names the flag, and this
/// message the variable.
fn parse_log_format(raw: &str) -> Result<LogFormat, String> {
    LogFormat::parse(raw).map_err(|m| format!("{m} (--log-format, env {ENV_LOG_FORMAT})"))
}

/// Runs a subcommand and returns the process exit code.
pub async fn main(command: Command) -> i32 {
    use vault_dr_common::exit;
    let printed = match command {
        Command::Coordinator(args) => return run_coordinator(&args).await,
        Command::Status(api) => status::run(&api).await,
        Command::Explain(args) => explain::run(&args).await,
        Command::History { api, limit } => history::run(&api, limit).await,
        Command::Drill(args) => return lab::run(&ProcessEnv, "drill", &args),
        Command::Bench(args) => return lab::run(&ProcessEnv, "bench", &args),
        Command::Switchover(args) => switchover::run(&args).await,
        Command::Pause(args) => maintenance::pause(&args).await,
        Command::Resume(args) => maintenance::resume(&args).await,
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            0
        }
        Err(e @ CliError::Token { .. }) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}

async fn run_coordinator(args: &CoordinatorArgs) -> i32 {
    use vault_dr_common::exit;
    let config = match Config::load(&args.config, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return exit::UNAVAILABLE;
        }
    };
    match crate::run(config, listener, vault_dr_common::shutdown::signal()).await {
        Ok(()) => 0,
        Err(e @ crate::Error::Config(_)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::SOFTWARE
        }
    }
}

/// How to reach the coordinator (flags shared by every API command).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Coordinator URL, or several replicas' URLs separated by commas: the command talks to
    /// the leader (the replica whose `/readyz` answers 200).
    #[arg(
        long,
        env = "VAULT_DR_URL",
        default_value = "http://127.0.0.1:8300",
        value_delimiter = ','
    )]
    pub url: Vec<Url>,
    /// File holding the coordinator's bearer token.
    #[arg(long, env = "VAULT_DR_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output format of the API commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The token file could not be read.
    #[error("--token-file {path}: {message}")]
    Token {
        /// The path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The coordinator could not be reached.
    #[error("cannot reach the coordinator at {url}: {message}")]
    Unreachable {
        /// What was asked: the full URL.
        url: String,
        /// The transport error with every cause (refused, DNS failure, timeout).
        message: String,
    },
    /// The coordinator, or whatever answers at `--url`, answered with an error.
    #[error("{url} answered {status}: {reason}")]
    Status {
        /// What was asked: the full URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The reason the answer gave, or what it probably means when it gave none
        /// ([`answer_reason`]).
        reason: String,
    },
    /// The answer was not what this CLI understands.
    #[error("unexpected answer from the coordinator: {0}")]
    Decode(String),
    /// Something the command waits for did not happen in time.
    #[error("{0}")]
    Timeout(String),
}

/// A small authenticated client of the coordinator API. Given several replicas, it talks to
/// the leader (found on the first request); with none leading, to the first that answers.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Vec<Url>,
    base: Arc<tokio::sync::OnceCell<Url>>,
    token: Secret,
}

/// One coordinator replica as the CLI sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replica {
    /// The URL it was asked at.
    pub url: Url,
    /// Its id (lease holder name), when it answered `/v1/topology`.
    pub id: Option<String>,
    /// `leader` (`/readyz` 200), `follower` (503) or `unreachable`.
    pub role: ReplicaRole,
}

/// Role of a coordinator replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaRole {
    /// Holds the lease: `/readyz` is 200.
    Leader,
    /// Answers, but `/readyz` is not 200.
    Follower,
    /// Does not answer.
    Unreachable,
}

impl std::fmt::Display for ReplicaRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Unreachable => "unreachable",
        })
    }
}

impl Client {
    /// Builds a client from the shared flags.
    pub fn new(args: &ApiArgs) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(&args.token_file).map_err(|e| CliError::Token {
            path: args.token_file.display().to_string(),
            message: e.to_string(),
        })?;
        let token = Secret::new(text);
        if token.is_empty() {
            return Err(CliError::Token {
                path: args.token_file.display().to_string(),
                message: "empty".into(),
            });
        }
        let http = vault_dr_common::http::client_builder()
            .timeout(CLI_TIMEOUT)
            .build()
            .map_err(|e| CliError::Decode(e.to_string()))?;
        if args.url.is_empty() {
            return Err(CliError::Decode("--url names no coordinator".into()));
        }
        let base = Arc::new(tokio::sync::OnceCell::new());
        if let [only] = args.url.as_slice() {
            // One URL: no need to look for the leader.
            let _ = base.set(only.clone());
        }
        Ok(Self {
            http,
            bases: args.url.clone(),
            base,
            token,
        })
    }

    /// Every replica given, with its role (asked in parallel).
    pub async fn replicas(&self) -> Vec<Replica> {
        futures::future::join_all(self.bases.iter().map(|url| self.replica(url))).await
    }

    async fn replica(&self, url: &Url) -> Replica {
        let role = match url.join("readyz") {
            Ok(u) => match self
                .http
                .get(u)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => ReplicaRole::Leader,
                Ok(_) => ReplicaRole::Follower,
                Err(_) => ReplicaRole::Unreachable,
            },
            Err(_) => ReplicaRole::Unreachable,
        };
        let id = match role {
            ReplicaRole::Unreachable => None,
            _ => self
                .get_at(url, "v1/topology")
                .await
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned)),
        };
        Replica {
            url: url.clone(),
            id,
            role,
        }
    }

    /// The URL requests go to: the leader, else the first replica that answers, else the first.
    async fn base(&self) -> &Url {
        self.base
            .get_or_init(|| async {
                let replicas = self.replicas().await;
                replicas
                    .iter()
                    .find(|r| r.role == ReplicaRole::Leader)
                    .or_else(|| replicas.iter().find(|r| r.role == ReplicaRole::Follower))
                    .map(|r| r.url.clone())
                    .unwrap_or_else(|| self.bases[0].clone())
            })
            .await
    }

    /// `GET` a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let value = self.get_value(path).await?;
        serde_json::from_value(value).map_err(|e| CliError::Decode(e.to_string()))
    }

    /// `GET` raw JSON.
    pub async fn get_value(&self, path: &str) -> Result<serde_json::Value, CliError> {
        let base = self.base().await.clone();
        self.get_at(&base, path).await
    }

    /// `POST` a JSON body and return the JSON answer.
    pub async fn post_value(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        let base = self.base().await.clone();
        let url = base
            .join(path)
            .map_err(|e| CliError::Decode(e.to_string()))?;
        self.send(self.http.post(url).json(body)).await
    }

    async fn get_at(&self, base: &Url, path: &str) -> Result<serde_json::Value, CliError> {
        let url = base
            .join(path)
            .map_err(|e| CliError::Decode(e.to_string()))?;
        self.send(self.http.get(url)).await
    }

    /// Sends `request` to the coordinator with the bearer token: the JSON answer, or the error
    /// a CLI user can act on, naming the URL asked and the reason (the transport error with its
    /// causes, or what the answer said).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, CliError> {
        let request = request
            .bearer_auth(self.token.expose())
            .build()
            .map_err(|e| CliError::Decode(error_chain(&e)))?;
        let url = request.url().to_string();
        // The URL is named once, in front; reqwest would repeat it in its own message.
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            url: url.clone(),
            message: if e.is_timeout() {
                format!(
                    "no answer within {CLI_TIMEOUT:?} ({})",
                    error_chain(&e.without_url())
                )
            } else {
                error_chain(&e.without_url())
            },
        };
        let resp = self.http.execute(request).await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(CliError::Status {
                url,
                status: status.as_u16(),
                reason: status_reason(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| {
            CliError::Decode(format!(
                "{url} answered {status} with something that is not JSON ({e}): {:?}",
                quoted(&String::from_utf8_lossy(&body))
            ))
        })
    }
}

/// Timeout of one CLI request.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// The reason an error answer gave, and when it is not a vault-dr answer what it probably is
/// (a coordinator always says why in `{"error": ...}`): a Vault/OpenBao server, something
/// else, or a body with nothing in it.
pub fn status_reason(body: &[u8]) -> String {
    const NOT_US: &str = "--url names a Vault/OpenBao server, not the vault-dr coordinator";
    match answer_reason(body) {
        (Some(reason), Answerer::VaultDr) => reason,
        (Some(reason), Answerer::Vault) => format!("{reason} (a Vault/OpenBao answer: {NOT_US})"),
        (None, Answerer::Vault) => format!("no reason given (a Vault/OpenBao answer: {NOT_US})"),
        (Some(reason), _) => format!(
            "{reason} (not a vault-dr answer: is --url the coordinator, not a proxy or another server?)"
        ),
        (None, _) => "an empty body: probably not a vault-dr coordinator, which always says \
             why (is --url the coordinator, not a proxy or another server?)"
            .to_owned(),
    }
}

/// Formats an optional figure, `-` when absent.
pub fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// Renders rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_the_coordinators_reason_or_what_answered_instead() {
        let token = status_reason(br#"{"error":"missing or wrong bearer token"}"#);
        assert_eq!(token, "missing or wrong bearer token");
        let vault = status_reason(br#"{"errors":["permission denied"]}"#);
        assert!(
            vault.starts_with("permission denied") && vault.contains("Vault/OpenBao server"),
            "{vault}"
        );
        let vault_silent = status_reason(br#"{"errors":[]}"#);
        assert!(
            vault_silent.contains("Vault/OpenBao server"),
            "{vault_silent}"
        );
        let empty = status_reason(b"");
        assert!(
            empty.contains("empty body") && empty.contains("not a vault-dr coordinator"),
            "{empty}"
        );
        let html = status_reason(b"<h1>403 Forbidden</h1>");
        assert!(
            html.contains("<h1>403 Forbidden</h1>") && html.contains("not a vault-dr answer"),
            "{html}"
        );
    }

    #[test]
    fn the_log_format_applies_to_every_subcommand_and_the_old_switch_still_works() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.log_format());
        let status = [
            "vault-dr",
            "status",
            "--token-file",
            "t",
            "--log-format",
            "json",
        ];
        assert_eq!(parse(&status).unwrap(), LogFormat::Json);
        let before = [
            "vault-dr",
            "--log-format",
            "json",
            "history",
            "--token-file",
            "t",
        ];
        assert_eq!(parse(&before).unwrap(), LogFormat::Json);
        let coordinator = ["vault-dr", "coordinator", "--config", "c.toml"];
        assert_eq!(parse(&coordinator).unwrap(), LogFormat::Text);
        let old = [
            "vault-dr",
            "coordinator",
            "--config",
            "c.toml",
            "--log-json",
        ];
        assert_eq!(parse(&old).unwrap(), LogFormat::Json);
        let both = [
            "vault-dr",
            "coordinator",
            "--config",
            "c.toml",
            "--log-json",
            "--log-format",
            "text",
        ];
        assert_eq!(parse(&both).unwrap(), LogFormat::Text);
        let bad = [
            "vault-dr",
            "coordinator",
            "--config",
            "c",
            "--log-format",
            "xml",
        ];
        let e = parse(&bad).unwrap_err();
        assert!(e.use_stderr(), "a usage error (main exits 64)");
        let text = e.to_string();
        assert!(
            text.contains("--log-format") && text.contains(ENV_LOG_FORMAT),
            "{text}"
        );
    }

    /// A client of one server at `url` with a token file in `dir`.
    fn client(dir: &std::path::Path, url: &str) -> Client {
        std::fs::write(dir.join("token"), "t").unwrap();
        Client::new(&ApiArgs {
            url: vec![Url::parse(url).unwrap()],
            token_file: dir.join("token"),
            output: Output::Table,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_empty_refusal_names_the_url_the_status_and_what_it_probably_is() {
        let app = axum::Router::new().route(
            "/v1/clusters",
            axum::routing::get(|| async { axum::http::StatusCode::FORBIDDEN }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let e = client(dir.path(), &url)
            .get_value("v1/clusters")
            .await
            .unwrap_err();
        server.abort();
        let text = e.to_string();
        assert!(matches!(e, CliError::Status { status: 403, .. }), "{e:?}");
        assert!(
            text.starts_with(&format!("{url}v1/clusters answered 403: an empty body")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_unresolvable_coordinator_names_the_dns_failure() {
        let dir = tempfile::tempdir().unwrap();
        let e = client(dir.path(), "http://no-such-host.invalid:1")
            .get_value("v1/clusters")
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("http://no-such-host.invalid:1/v1/clusters")
                && text.contains("failed to lookup address"),
            "{text}"
        );
    }
}
