//! The agent's configuration: command-line flags with environment fallbacks, validated once
//! into [`Config`]. Every environment variable is a named const; the environment is read
//! through the tiny [`Env`] trait so tests pass a map instead of touching the process.
//!
//! Any invalid value is an [`Error::Config`] naming the flag and variable (exit code 64).

use crate::error::{Error, Result};
use clap::Parser;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;
use vault_dr_common::Secret;
use vault_dr_common::telemetry::{LOG_FORMATS, LogFormat};

/// Env: address of the local Vault/OpenBao node (`--vault-addr`).
pub const ENV_VAULT_ADDR: &str = "VAULT_DR_AGENT_VAULT_ADDR";
/// Env: PEM bundle of CAs that sign the Vault listener (`--vault-ca-cert`).
pub const ENV_VAULT_CA_CERT: &str = "VAULT_DR_AGENT_VAULT_CA_CERT";
/// Env: skip TLS verification towards Vault (`--vault-skip-verify`), for labs only.
pub const ENV_VAULT_SKIP_VERIFY: &str = "VAULT_DR_AGENT_VAULT_SKIP_VERIFY";
/// Env: file holding the Vault token (`--vault-token-file`).
pub const ENV_VAULT_TOKEN_FILE: &str = "VAULT_DR_AGENT_VAULT_TOKEN_FILE";
/// Env: DR cluster of this node (`--cluster`).
pub const ENV_CLUSTER: &str = "VAULT_DR_AGENT_CLUSTER";
/// Env: node name (`--node`).
pub const ENV_NODE: &str = "VAULT_DR_AGENT_NODE";
/// Env: coordinator base URL (`--coordinator-url`).
pub const ENV_COORDINATOR_URL: &str = "VAULT_DR_AGENT_COORDINATOR_URL";
/// Env: file holding the coordinator bearer token (`--coordinator-token-file`).
pub const ENV_COORDINATOR_TOKEN_FILE: &str = "VAULT_DR_AGENT_COORDINATOR_TOKEN_FILE";
/// Env: PEM bundle of CAs that sign the coordinator (`--coordinator-ca-cert`).
pub const ENV_COORDINATOR_CA_CERT: &str = "VAULT_DR_AGENT_COORDINATOR_CA_CERT";
/// Env: probe and report interval, humantime (`--interval`).
pub const ENV_INTERVAL: &str = "VAULT_DR_AGENT_INTERVAL";
/// Env: listen address of the agent's HTTP server (`--listen`).
pub const ENV_LISTEN: &str = "VAULT_DR_AGENT_LISTEN";
/// Env: pid file of the Vault process (`--vault-pid-file`).
pub const ENV_VAULT_PID_FILE: &str = "VAULT_DR_AGENT_VAULT_PID_FILE";
/// Environment variable of `--cgroup-root`.
pub const ENV_CGROUP_ROOT: &str = "VAULT_DR_AGENT_CGROUP_ROOT";
/// Env: process name of Vault (`--vault-process-name`).
pub const ENV_VAULT_PROCESS_NAME: &str = "VAULT_DR_AGENT_VAULT_PROCESS_NAME";
/// Env: how the agent restarts a superseded primary's sealed server (`--vault-restart`).
pub const ENV_VAULT_RESTART: &str = "VAULT_DR_AGENT_VAULT_RESTART";
/// Env: log format, `json` or `text` (`--log-format`).
pub const ENV_LOG_FORMAT: &str = "VAULT_DR_AGENT_LOG_FORMAT";
/// Env: log one JSON object per line (`--log-json`), the older form of
/// `VAULT_DR_AGENT_LOG_FORMAT=json`, kept because charts and users set it.
pub const ENV_LOG_JSON: &str = "VAULT_DR_AGENT_LOG_JSON";
/// Env: replication backend, `none` or `snapshot` (`--replication`).
pub const ENV_REPLICATION: &str = "VAULT_DR_AGENT_REPLICATION";
/// Env: directory of pulled snapshots (`--snapshot-dir`).
pub const ENV_SNAPSHOT_DIR: &str = "VAULT_DR_AGENT_SNAPSHOT_DIR";
/// Env: pull interval, humantime (`--snapshot-interval`).
pub const ENV_SNAPSHOT_INTERVAL: &str = "VAULT_DR_AGENT_SNAPSHOT_INTERVAL";
/// Env: snapshots kept (`--snapshot-keep`).
pub const ENV_SNAPSHOT_KEEP: &str = "VAULT_DR_AGENT_SNAPSHOT_KEEP";
/// Env: when a secondary restores, `continuous` or `on-promotion` (`--restore`).
pub const ENV_RESTORE: &str = "VAULT_DR_AGENT_RESTORE";
/// Env: directory of quarantined (diverged) data (`--quarantine-dir`).
pub const ENV_QUARANTINE_DIR: &str = "VAULT_DR_AGENT_QUARANTINE_DIR";
/// Env: the node's raft storage path (`--raft-path`).
pub const ENV_RAFT_PATH: &str = "VAULT_DR_AGENT_RAFT_PATH";
/// Env: the node's raft node id (`--raft-node-id`).
pub const ENV_RAFT_NODE_ID: &str = "VAULT_DR_AGENT_RAFT_NODE_ID";
/// Env: the node's raft cluster address, `host:port` (`--raft-cluster-addr`).
pub const ENV_RAFT_CLUSTER_ADDR: &str = "VAULT_DR_AGENT_RAFT_CLUSTER_ADDR";
/// Env: how the node joins a raft, `auto`, `voter` or `non-voter` (`--raft-suffrage`).
pub const ENV_RAFT_SUFFRAGE: &str = "VAULT_DR_AGENT_RAFT_SUFFRAGE";
/// Env: the launcher's control directory (`--raft-control-dir`).
pub const ENV_RAFT_CONTROL_DIR: &str = "VAULT_DR_AGENT_RAFT_CONTROL_DIR";
/// Env: the write gate's listen address, the node's client address (`--gate-listen`).
pub const ENV_GATE_LISTEN: &str = "VAULT_DR_AGENT_GATE_LISTEN";
/// Env: `open` forwards every request whatever the role (`--gate-override`).
pub const ENV_GATE_OVERRIDE: &str = "VAULT_DR_AGENT_GATE_OVERRIDE";
/// Env: PEM certificate chain the gate serves TLS with (`--gate-tls-cert`).
pub const ENV_GATE_TLS_CERT: &str = "VAULT_DR_AGENT_GATE_TLS_CERT";
/// Env: PEM private key of that certificate (`--gate-tls-key`).
pub const ENV_GATE_TLS_KEY: &str = "VAULT_DR_AGENT_GATE_TLS_KEY";

/// Default Vault address.
pub const DEFAULT_VAULT_ADDR: &str = "http://127.0.0.1:8200";
/// Default probe and report interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8210";
/// Default Vault process name; `vault` is always tried after it.
pub const DEFAULT_PROCESS_NAME: &str = "bao";
/// Where cgroup v2 is mounted.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Default snapshot pull interval.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of snapshots kept.
pub const DEFAULT_SNAPSHOT_KEEP: usize = 3;
/// Default quarantine directory, inside the snapshot directory.
pub const DEFAULT_QUARANTINE_SUBDIR: &str = "quarantine";

/// The environment seam, shared with the coordinator.
pub use vault_dr_common::env::{Env, ProcessEnv};

fn help(text: &str, env: &str) -> String {
    format!("{text} [env: {env}]")
}

/// Raw command line; every value is optional here so that the environment can fill it in.
#[derive(Debug, Parser)]
#[command(
    name = "vault-dr-agent",
    version,
    about = "vault-dr sidecar: probes its Vault/OpenBao node and host, serves metrics, reports to the coordinator"
)]
struct Args {
    #[arg(long, value_name = "URL", help = help("Vault/OpenBao API address [default: http://127.0.0.1:8200]", ENV_VAULT_ADDR))]
    vault_addr: Option<String>,
    #[arg(long, value_name = "PEM", help = help("CA bundle for the Vault listener", ENV_VAULT_CA_CERT))]
    vault_ca_cert: Option<PathBuf>,
    #[arg(long, help = help("Do not verify Vault's TLS certificate (labs only)", ENV_VAULT_SKIP_VERIFY))]
    vault_skip_verify: bool,
    #[arg(long, value_name = "FILE", help = help("File holding the Vault token (autopilot state)", ENV_VAULT_TOKEN_FILE))]
    vault_token_file: Option<PathBuf>,
    #[arg(long, value_name = "NAME", help = help("DR cluster of this node (required)", ENV_CLUSTER))]
    cluster: Option<String>,
    #[arg(long, value_name = "NAME", help = help("Node name, unique in its cluster (required)", ENV_NODE))]
    node: Option<String>,
    #[arg(long, value_name = "URL[,URL...]", help = help("Coordinator base URL, or a comma-separated list (the agent moves on to the next on a connection error or 503); without it the agent only probes and serves metrics", ENV_COORDINATOR_URL))]
    coordinator_url: Option<String>,
    #[arg(long, value_name = "FILE", help = help("File holding the coordinator bearer token", ENV_COORDINATOR_TOKEN_FILE))]
    coordinator_token_file: Option<PathBuf>,
    #[arg(long, value_name = "PEM", help = help("CA bundle for the coordinator", ENV_COORDINATOR_CA_CERT))]
    coordinator_ca_cert: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", help = help("Probe and report interval, e.g. 1s, 500ms [default: 1s]", ENV_INTERVAL))]
    interval: Option<String>,
    #[arg(long, value_name = "ADDR", help = help("Listen address for /metrics, /healthz, /readyz, /v1/* [default: 0.0.0.0:8210]", ENV_LISTEN))]
    listen: Option<String>,
    #[arg(long, value_name = "FILE", help = help("Pid file of the Vault process, whose CPU and memory the agent reports (without it: the process listening on --vault-addr)", ENV_VAULT_PID_FILE))]
    vault_pid_file: Option<PathBuf>,
    #[arg(long, value_name = "DIR", help = help("cgroup v2 directory of the Vault node (its CPU, and memory when the controller is there) [default: /sys/fs/cgroup inside a container]", ENV_CGROUP_ROOT))]
    cgroup_root: Option<PathBuf>,
    #[arg(long, value_name = "NAME", help = help("Vault process name (then `vault`): without pid file, when the agent cannot see which process listens on --vault-addr, the only one running with it [default: bao]", ENV_VAULT_PROCESS_NAME))]
    vault_process_name: Option<String>,
    #[arg(long, value_name = "off|signal", help = help("signal: when this node's cluster was the primary of an older term and the node stays sealed (vault-dr's fence), SIGTERM its server so that its supervisor (kubelet, systemd Restart=always) starts it again and its auto-unseal seal unseals it; it then rejoins as a secondary [default: off]", ENV_VAULT_RESTART))]
    vault_restart: Option<String>,
    #[arg(long, value_name = LOG_FORMATS, help = help("Log format: json = one JSON object per line, text = one line for people; never colour codes unless stderr is a terminal [default: text]", ENV_LOG_FORMAT))]
    log_format: Option<String>,
    #[arg(long, help = help("Same as --log-format json (kept for older set-ups; --log-format wins)", ENV_LOG_JSON))]
    log_json: bool,
    #[arg(long, value_name = "ADDR", help = help("Serve the node's client address here and forward to --vault-addr only while this node may take writes (the write gate; see README) [default: no gate]", ENV_GATE_LISTEN))]
    gate_listen: Option<String>,
    #[arg(long, value_name = "open", help = help("open: the gate forwards every request whatever the role (every coordinator down and no other cluster primary)", ENV_GATE_OVERRIDE))]
    gate_override: Option<String>,
    #[arg(long, value_name = "PEM", help = help("Certificate chain the gate serves TLS with (the node's own, as its listener had it); with --gate-tls-key. Reloaded when the files change", ENV_GATE_TLS_CERT))]
    gate_tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", help = help("Private key of --gate-tls-cert", ENV_GATE_TLS_KEY))]
    gate_tls_key: Option<PathBuf>,
    #[command(flatten)]
    snapshot: SnapshotArgs,
}

/// The replication flags.
#[derive(Debug, clap::Args)]
struct SnapshotArgs {
    #[arg(long, value_name = "none|snapshot|raft", help = help("Replication backend: snapshot = pull raft snapshots from the primary; raft = the group is one raft, secondaries are non-voters, the server runs under vault-dr-launch [default: none]", ENV_REPLICATION))]
    replication: Option<String>,
    #[arg(long, value_name = "DIR", help = help("Directory of pulled snapshots (required with --replication snapshot)", ENV_SNAPSHOT_DIR))]
    snapshot_dir: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", help = help("Snapshot pull interval [default: 5s]", ENV_SNAPSHOT_INTERVAL))]
    snapshot_interval: Option<String>,
    #[arg(long, value_name = "N", help = help("Snapshots kept on disk, newest first [default: 3]", ENV_SNAPSHOT_KEEP))]
    snapshot_keep: Option<String>,
    #[arg(long, value_name = "continuous|on-promotion", help = help("continuous: restore every pulled snapshot (warm standby); on-promotion: restore the newest at promotion [default: continuous]", ENV_RESTORE))]
    restore: Option<String>,
    #[arg(long, value_name = "DIR", help = help("Where a returning ex-primary saves its diverged data [default: <snapshot-dir>/quarantine; raft: <raft-path>/.vault-dr-quarantine]", ENV_QUARANTINE_DIR))]
    quarantine_dir: Option<PathBuf>,
    #[arg(long, value_name = "DIR", help = help("The node's raft storage path, as in its config (required with --replication raft)", ENV_RAFT_PATH))]
    raft_path: Option<PathBuf>,
    #[arg(long, value_name = "ID", help = help("The node's raft node_id [default: --node]", ENV_RAFT_NODE_ID))]
    raft_node_id: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = help("The node's raft cluster address, as in its cluster_addr (required with --replication raft)", ENV_RAFT_CLUSTER_ADDR))]
    raft_cluster_addr: Option<String>,
    #[arg(long, value_name = "DIR", help = help("The control directory of the node's vault-dr-launch [default: <raft-path>/.vault-dr]", ENV_RAFT_CONTROL_DIR))]
    raft_control_dir: Option<PathBuf>,
    #[arg(long, value_name = "auto|voter|non-voter", help = help("How the node joins a raft: auto = a voter while its cluster is the primary, else a non-voter (asynchronous); voter = always (a DR voter of the synchronous layout); non-voter = always [default: auto]", ENV_RAFT_SUFFRAGE))]
    raft_suffrage: Option<String>,
}

/// When a secondary restores pulled snapshots into its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// Restore every pulled snapshot at once (warm standby).
    Continuous,
    /// Keep the newest few; restore the newest at promotion.
    OnPromotion,
}

/// The raft backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// The node's raft storage `path` (`--raft-path`): `peers.json` goes to `<path>/raft/`.
    pub path: PathBuf,
    /// The node's raft `node_id` (`--raft-node-id`, default the node name).
    pub node_id: String,
    /// The node's cluster address, `host:port` (`--raft-cluster-addr`): the address the
    /// recovered raft lists for it.
    pub cluster_addr: String,
    /// The launcher's control directory (`--raft-control-dir`, default
    /// `<path>/.vault-dr`).
    pub control_dir: PathBuf,
    /// Where data of another raft is moved (`--quarantine-dir`, default
    /// `<path>/.vault-dr-quarantine`; on the same file system as `path`).
    pub quarantine_dir: PathBuf,
    /// How the node joins a raft (`--raft-suffrage`, default `auto`).
    pub suffrage: crate::replication::raft::plan::Suffrage,
    /// The agent's node name (`--node`, the name its reports carry): how the coordinator
    /// names the one node of a promoted cluster that forms the new raft.
    pub node: String,
}

/// The snapshot backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Directory of pulled snapshots (and the agent's restore record).
    pub dir: PathBuf,
    /// Pull interval (> 0).
    pub interval: Duration,
    /// Snapshots kept (>= 1).
    pub keep: usize,
    /// When to restore.
    pub restore: RestoreMode,
    /// Where a returning ex-primary saves its diverged data.
    pub quarantine_dir: PathBuf,
}

/// The replication backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReplicationConfig {
    /// No replication of the agent's own: Enterprise status only.
    #[default]
    None,
    /// Raft snapshot shipping.
    Snapshot(SnapshotConfig),
    /// The group is one raft.
    Raft(RaftConfig),
}

/// Connection to the local Vault/OpenBao node.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// API address (`http(s)://host:port`).
    pub addr: Url,
    /// Extra CA certificates for its listener.
    pub ca_certs: Vec<reqwest::Certificate>,
    /// Skip TLS verification.
    pub skip_verify: bool,
    /// Token for authenticated endpoints (autopilot state); `None` without a token file.
    pub token: Option<Secret>,
}

/// Connection to the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Base URL; reports go to `<url>/v1/reports`.
    pub url: Url,
    /// Bearer token.
    pub token: Secret,
    /// Extra CA certificates.
    pub ca_certs: Vec<reqwest::Certificate>,
}

/// The validated configuration of one agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// The local node.
    pub vault: VaultConfig,
    /// DR cluster of the node.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// The coordinator; `None` = probe and serve metrics only.
    pub coordinator: Option<CoordinatorConfig>,
    /// Further coordinator URLs after `coordinator.url`, tried in order (the list of
    /// `--coordinator-url` after its first entry).
    pub coordinator_fallbacks: Vec<Url>,
    /// The replication backend.
    pub replication: ReplicationConfig,
    /// Probe and report interval (> 0).
    pub interval: Duration,
    /// Listen address of the HTTP server.
    pub listen: SocketAddr,
    /// Pid file of the Vault process.
    pub vault_pid_file: Option<PathBuf>,
    /// Process names to look for, in order.
    pub vault_process_names: Vec<String>,
    /// Whether and how a superseded primary's sealed server is restarted.
    pub vault_restart: crate::restart::RestartMode,
    /// The log format.
    pub log_format: LogFormat,
    /// Where cgroup v2 is mounted (tests point it at fixtures).
    pub cgroup_root: PathBuf,
    /// Whether `cgroup_root` was given (`--cgroup-root`): then `cpu.stat` alone is enough and
    /// memory comes from the Vault process when the memory controller is missing.
    pub cgroup_explicit: bool,
    /// The write gate; `None`: clients reach the node's own listener.
    pub gate: Option<crate::gate::GateConfig>,
}

impl Config {
    /// Parses `args` (including the program name) with `env` as fallback and validates all.
    pub fn parse<I, T>(args: I, env: &dyn Env) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let a = Args::try_parse_from(args)?;
        let pick = |flag: Option<String>, key: &str| flag.or_else(|| non_empty(env.var(key)));
        let pick_path = |flag: Option<PathBuf>, key: &str| {
            flag.or_else(|| non_empty(env.var(key)).map(PathBuf::from))
        };

        let vault_addr =
            pick(a.vault_addr, ENV_VAULT_ADDR).unwrap_or_else(|| DEFAULT_VAULT_ADDR.into());
        let vault = VaultConfig {
            addr: parse_url(&vault_addr, "--vault-addr", ENV_VAULT_ADDR)?,
            ca_certs: read_ca(
                pick_path(a.vault_ca_cert, ENV_VAULT_CA_CERT),
                "--vault-ca-cert",
                ENV_VAULT_CA_CERT,
            )?,
            skip_verify: a.vault_skip_verify
                || parse_bool(
                    env.var(ENV_VAULT_SKIP_VERIFY),
                    "--vault-skip-verify",
                    ENV_VAULT_SKIP_VERIFY,
                )?,
            token: pick_path(a.vault_token_file, ENV_VAULT_TOKEN_FILE)
                .map(|p| read_token(&p, "--vault-token-file", ENV_VAULT_TOKEN_FILE))
                .transpose()?,
        };
        let cluster = required_name(pick(a.cluster, ENV_CLUSTER), "--cluster", ENV_CLUSTER)?;
        let node = required_name(pick(a.node, ENV_NODE), "--node", ENV_NODE)?;
        let replication = parse_replication(&a.snapshot, env, vault.token.is_some(), &node)?;

        let mut coordinator_fallbacks = Vec::new();
        let coordinator = match pick(a.coordinator_url, ENV_COORDINATOR_URL) {
            None => None,
            Some(raw) => {
                let mut urls = raw
                    .split(',')
                    .map(|u| parse_url(u, "--coordinator-url", ENV_COORDINATOR_URL))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter();
                let Some(url) = urls.next() else {
                    return Err(config_error(
                        "--coordinator-url",
                        ENV_COORDINATOR_URL,
                        "is empty",
                    ));
                };
                coordinator_fallbacks = urls.collect();
                let token_file = pick_path(a.coordinator_token_file, ENV_COORDINATOR_TOKEN_FILE)
                    .ok_or_else(|| {
                        config_error(
                            "--coordinator-token-file",
                            ENV_COORDINATOR_TOKEN_FILE,
                            "is required with --coordinator-url",
                        )
                    })?;
                Some(CoordinatorConfig {
                    url,
                    token: read_token(
                        &token_file,
                        "--coordinator-token-file",
                        ENV_COORDINATOR_TOKEN_FILE,
                    )?,
                    ca_certs: read_ca(
                        pick_path(a.coordinator_ca_cert, ENV_COORDINATOR_CA_CERT),
                        "--coordinator-ca-cert",
                        ENV_COORDINATOR_CA_CERT,
                    )?,
                })
            }
        };

        let interval = match pick(a.interval, ENV_INTERVAL) {
            None => DEFAULT_INTERVAL,
            Some(raw) => parse_interval(&raw)?,
        };
        let cgroup_root = pick_path(a.cgroup_root, ENV_CGROUP_ROOT);
        if let Some(root) = &cgroup_root
            && !root.join("cpu.stat").is_file()
        {
            return Err(config_error(
                "--cgroup-root",
                ENV_CGROUP_ROOT,
                format!(
                    "{} has no cpu.stat: not a cgroup v2 directory",
                    root.display()
                ),
            ));
        }
        let listen_raw = pick(a.listen, ENV_LISTEN).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_raw.parse::<SocketAddr>().map_err(|e| {
            config_error(
                "--listen",
                ENV_LISTEN,
                format!("{listen_raw:?} is not a socket address: {e}"),
            )
        })?;

        let process_name = pick(a.vault_process_name, ENV_VAULT_PROCESS_NAME)
            .unwrap_or_else(|| DEFAULT_PROCESS_NAME.into());
        let process_name = required_name(
            Some(process_name),
            "--vault-process-name",
            ENV_VAULT_PROCESS_NAME,
        )?;
        let mut vault_process_names = vec![process_name];
        if vault_process_names[0] != "vault" {
            vault_process_names.push("vault".into());
        }

        let vault_restart = match pick(a.vault_restart, ENV_VAULT_RESTART) {
            None => crate::restart::RestartMode::Off,
            Some(raw) => crate::restart::RestartMode::parse(&raw).ok_or_else(|| {
                config_error(
                    "--vault-restart",
                    ENV_VAULT_RESTART,
                    format!("{raw:?} is neither off nor signal"),
                )
            })?,
        };

        let gate = parse_gate(
            pick(a.gate_listen, ENV_GATE_LISTEN),
            pick(a.gate_override, ENV_GATE_OVERRIDE),
            (
                pick_path(a.gate_tls_cert, ENV_GATE_TLS_CERT),
                pick_path(a.gate_tls_key, ENV_GATE_TLS_KEY),
            ),
            listen,
            &vault.addr,
        )?;

        Ok(Self {
            gate,
            vault,
            cluster,
            node,
            coordinator,
            coordinator_fallbacks,
            replication,
            interval,
            listen,
            vault_pid_file: pick_path(a.vault_pid_file, ENV_VAULT_PID_FILE),
            vault_process_names,
            vault_restart,
            log_format: parse_log_format(
                pick(a.log_format, ENV_LOG_FORMAT),
                a.log_json || parse_bool(env.var(ENV_LOG_JSON), "--log-json", ENV_LOG_JSON)?,
            )?,
            cgroup_explicit: cgroup_root.is_some(),
            cgroup_root: cgroup_root.unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_ROOT)),
        })
    }

    /// A configuration for tests and embedding: defaults everywhere, the given names and Vault
    /// address, no coordinator.
    pub fn minimal(cluster: &str, node: &str, vault_addr: Url) -> Self {
        Self {
            vault: VaultConfig {
                addr: vault_addr,
                ca_certs: Vec::new(),
                skip_verify: false,
                token: None,
            },
            cluster: cluster.into(),
            node: node.into(),
            coordinator: None,
            coordinator_fallbacks: Vec::new(),
            replication: ReplicationConfig::None,
            interval: DEFAULT_INTERVAL,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            vault_pid_file: None,
            vault_process_names: vec![DEFAULT_PROCESS_NAME.into(), "vault".into()],
            vault_restart: crate::restart::RestartMode::Off,
            log_format: LogFormat::Text,
            cgroup_root: PathBuf::from(DEFAULT_CGROUP_ROOT),
            cgroup_explicit: false,
            gate: None,
        }
    }
}

/// The gate flags: a socket address that is neither the agent's own `--listen` nor the node's
/// `--vault-addr` (the gate would forward to itself), an override that only `open` is, and
/// TLS as a readable certificate and key, both or neither.
fn parse_gate(
    listen: Option<String>,
    override_raw: Option<String>,
    tls: (Option<PathBuf>, Option<PathBuf>),
    agent_listen: SocketAddr,
    vault_addr: &Url,
) -> Result<Option<crate::gate::GateConfig>> {
    let override_open = match override_raw.as_deref().map(str::trim) {
        None => false,
        Some("open") => true,
        Some(other) => {
            return Err(config_error(
                "--gate-override",
                ENV_GATE_OVERRIDE,
                format!("{other:?} is not `open` (leave it out for the normal, fail-closed gate)"),
            ));
        }
    };
    let Some(raw) = listen else {
        if override_open {
            return Err(config_error(
                "--gate-override",
                ENV_GATE_OVERRIDE,
                "needs --gate-listen (there is no gate to open)",
            ));
        }
        if tls.0.is_some() || tls.1.is_some() {
            return Err(config_error(
                "--gate-tls-cert",
                ENV_GATE_TLS_CERT,
                "needs --gate-listen (there is no gate to serve TLS on)",
            ));
        }
        return Ok(None);
    };
    let tls = match tls {
        (None, None) => None,
        (Some(_), None) => {
            return Err(config_error(
                "--gate-tls-key",
                ENV_GATE_TLS_KEY,
                "is required with --gate-tls-cert",
            ));
        }
        (None, Some(_)) => {
            return Err(config_error(
                "--gate-tls-cert",
                ENV_GATE_TLS_CERT,
                "is required with --gate-tls-key",
            ));
        }
        (Some(cert), Some(key)) => {
            for (path, flag, env) in [
                (&cert, "--gate-tls-cert", ENV_GATE_TLS_CERT),
                (&key, "--gate-tls-key", ENV_GATE_TLS_KEY),
            ] {
                std::fs::File::open(path).map_err(|e| {
                    config_error(flag, env, format!("cannot read {}: {e}", path.display()))
                })?;
            }
            Some(crate::gate::GateTls { cert, key })
        }
    };
    let addr = raw.trim().parse::<SocketAddr>().map_err(|e| {
        config_error(
            "--gate-listen",
            ENV_GATE_LISTEN,
            format!("{raw:?} is not a socket address: {e}"),
        )
    })?;
    if addr == agent_listen && addr.port() != 0 {
        return Err(config_error(
            "--gate-listen",
            ENV_GATE_LISTEN,
            format!("{addr} is also --listen, the agent's own API"),
        ));
    }
    let same_as_vault = vault_addr.port_or_known_default() == Some(addr.port())
        && vault_addr.host_str().is_some_and(|h| {
            h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == addr.ip() || addr.ip().is_unspecified())
                || (h == "localhost" && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
        });
    if same_as_vault {
        return Err(config_error(
            "--gate-listen",
            ENV_GATE_LISTEN,
            format!(
                "{addr} is where --vault-addr {vault_addr} points: the node must listen on an address of its own that only the agent uses"
            ),
        ));
    }
    Ok(Some(crate::gate::GateConfig {
        listen: addr,
        override_open,
        tls,
    }))
}

/// The replication flags: `none` ignores the snapshot flags; `snapshot` needs a directory and
/// the Vault token (the DR token), and validates interval, keep and restore mode.
fn parse_replication(
    a: &SnapshotArgs,
    env: &dyn Env,
    has_token: bool,
    node: &str,
) -> Result<ReplicationConfig> {
    let pick = |flag: &Option<String>, key: &str| flag.clone().or_else(|| non_empty(env.var(key)));
    let pick_path = |flag: &Option<PathBuf>, key: &str| {
        flag.clone()
            .or_else(|| non_empty(env.var(key)).map(PathBuf::from))
    };
    let backend = pick(&a.replication, ENV_REPLICATION).unwrap_or_else(|| "none".into());
    match backend.trim().to_ascii_lowercase().as_str() {
        "none" => return Ok(ReplicationConfig::None),
        "snapshot" => {}
        "raft" => return parse_raft(a, env, has_token, node),
        other => {
            return Err(config_error(
                "--replication",
                ENV_REPLICATION,
                format!("{other:?} is not one of none, snapshot, raft"),
            ));
        }
    }
    let dir = pick_path(&a.snapshot_dir, ENV_SNAPSHOT_DIR).ok_or_else(|| {
        config_error(
            "--snapshot-dir",
            ENV_SNAPSHOT_DIR,
            "is required with --replication snapshot",
        )
    })?;
    if !has_token {
        return Err(config_error(
            "--vault-token-file",
            ENV_VAULT_TOKEN_FILE,
            "is required with --replication snapshot (the DR token)",
        ));
    }
    let interval = match pick(&a.snapshot_interval, ENV_SNAPSHOT_INTERVAL) {
        None => DEFAULT_SNAPSHOT_INTERVAL,
        Some(raw) => {
            let d = humantime::parse_duration(raw.trim()).map_err(|e| {
                config_error(
                    "--snapshot-interval",
                    ENV_SNAPSHOT_INTERVAL,
                    format!("{raw:?} is not a duration (e.g. 5s): {e}"),
                )
            })?;
            if d.is_zero() {
                return Err(config_error(
                    "--snapshot-interval",
                    ENV_SNAPSHOT_INTERVAL,
                    "must be greater than zero",
                ));
            }
            d
        }
    };
    let keep = match pick(&a.snapshot_keep, ENV_SNAPSHOT_KEEP) {
        None => DEFAULT_SNAPSHOT_KEEP,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(config_error(
                    "--snapshot-keep",
                    ENV_SNAPSHOT_KEEP,
                    format!("{raw:?} is not a whole number of at least 1"),
                ));
            }
        },
    };
    let restore = match pick(&a.restore, ENV_RESTORE)
        .map(|r| r.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("continuous") => RestoreMode::Continuous,
        Some("on-promotion") => RestoreMode::OnPromotion,
        Some(other) => {
            return Err(config_error(
                "--restore",
                ENV_RESTORE,
                format!("{other:?} is not one of continuous, on-promotion"),
            ));
        }
    };
    let quarantine_dir = pick_path(&a.quarantine_dir, ENV_QUARANTINE_DIR)
        .unwrap_or_else(|| dir.join(DEFAULT_QUARANTINE_SUBDIR));
    Ok(ReplicationConfig::Snapshot(SnapshotConfig {
        dir,
        interval,
        keep,
        restore,
        quarantine_dir,
    }))
}

/// The raft flags: the storage path, the cluster address and the DR token are required.
fn parse_raft(
    a: &SnapshotArgs,
    env: &dyn Env,
    has_token: bool,
    node: &str,
) -> Result<ReplicationConfig> {
    let pick = |flag: &Option<String>, key: &str| flag.clone().or_else(|| non_empty(env.var(key)));
    let pick_path = |flag: &Option<PathBuf>, key: &str| {
        flag.clone()
            .or_else(|| non_empty(env.var(key)).map(PathBuf::from))
    };
    let path = pick_path(&a.raft_path, ENV_RAFT_PATH).ok_or_else(|| {
        config_error(
            "--raft-path",
            ENV_RAFT_PATH,
            "is required with --replication raft (the node's raft storage path)",
        )
    })?;
    if !path.is_absolute() {
        return Err(config_error(
            "--raft-path",
            ENV_RAFT_PATH,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let cluster_addr = pick(&a.raft_cluster_addr, ENV_RAFT_CLUSTER_ADDR).ok_or_else(|| {
        config_error(
            "--raft-cluster-addr",
            ENV_RAFT_CLUSTER_ADDR,
            "is required with --replication raft (host:port, the node's cluster_addr)",
        )
    })?;
    let cluster_addr = cluster_addr.trim().to_owned();
    let port_ok = cluster_addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || cluster_addr.contains("://") {
        return Err(config_error(
            "--raft-cluster-addr",
            ENV_RAFT_CLUSTER_ADDR,
            format!("{cluster_addr:?} is not host:port (no scheme)"),
        ));
    }
    let node_id = match pick(&a.raft_node_id, ENV_RAFT_NODE_ID) {
        Some(id) => required_name(Some(id), "--raft-node-id", ENV_RAFT_NODE_ID)?,
        None => node.to_owned(),
    };
    if !has_token {
        return Err(config_error(
            "--vault-token-file",
            ENV_VAULT_TOKEN_FILE,
            "is required with --replication raft (the DR token: autopilot state)",
        ));
    }
    let control_dir = pick_path(&a.raft_control_dir, ENV_RAFT_CONTROL_DIR)
        .unwrap_or_else(|| path.join(".vault-dr"));
    let quarantine_dir = pick_path(&a.quarantine_dir, ENV_QUARANTINE_DIR)
        .unwrap_or_else(|| path.join(".vault-dr-quarantine"));
    let suffrage = match pick(&a.raft_suffrage, ENV_RAFT_SUFFRAGE) {
        Some(v) => v
            .parse()
            .map_err(|e: String| config_error("--raft-suffrage", ENV_RAFT_SUFFRAGE, e))?,
        None => Default::default(),
    };
    Ok(ReplicationConfig::Raft(RaftConfig {
        path,
        node_id,
        cluster_addr,
        control_dir,
        quarantine_dir,
        suffrage,
        node: node.to_owned(),
    }))
}

fn config_error(flag: &'static str, env: &'static str, message: impl Into<String>) -> Error {
    Error::Config {
        flag,
        env,
        message: message.into(),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn required_name(v: Option<String>, flag: &'static str, env: &'static str) -> Result<String> {
    let v = v.map(|s| s.trim().to_owned()).unwrap_or_default();
    if v.is_empty() {
        return Err(config_error(flag, env, "is required and must not be empty"));
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(config_error(
            flag,
            env,
            "must not contain white space or control characters",
        ));
    }
    Ok(v)
}

fn parse_url(raw: &str, flag: &'static str, env: &'static str) -> Result<Url> {
    let url = Url::parse(raw.trim())
        .map_err(|e| config_error(flag, env, format!("{raw:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(
            flag,
            env,
            format!("{raw:?}: the scheme must be http or https"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(config_error(flag, env, format!("{raw:?} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(
            flag,
            env,
            "must not carry credentials; use the token file",
        ));
    }
    Ok(url)
}

fn parse_interval(raw: &str) -> Result<Duration> {
    let d = humantime::parse_duration(raw.trim()).map_err(|e| {
        config_error(
            "--interval",
            ENV_INTERVAL,
            format!("{raw:?} is not a duration (e.g. 1s, 500ms): {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(config_error(
            "--interval",
            ENV_INTERVAL,
            "must be greater than zero",
        ));
    }
    Ok(d)
}

/// `--log-format` (flag or variable) or else the older `--log-json` switch.
fn parse_log_format(raw: Option<String>, json_alias: bool) -> Result<LogFormat> {
    let explicit = raw
        .map(|r| LogFormat::parse(&r))
        .transpose()
        .map_err(|m| config_error("--log-format", ENV_LOG_FORMAT, m))?;
    Ok(LogFormat::resolve(explicit, json_alias))
}

fn parse_bool(raw: Option<String>, flag: &'static str, env: &'static str) -> Result<bool> {
    match raw
        .as_deref()
        .map(str::trim)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("0") | Some("false") | Some("no") | Some("off") => Ok(false),
        Some("1") | Some("true") | Some("yes") | Some("on") => Ok(true),
        Some(other) => Err(config_error(
            flag,
            env,
            format!("{other:?} is not a boolean"),
        )),
    }
}

fn read_token(path: &Path, flag: &'static str, env: &'static str) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(flag, env, format!("cannot read {}: {e}", path.display())))?;
    let token = Secret::new(text);
    if token.is_empty() {
        return Err(config_error(
            flag,
            env,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(token)
}

fn read_ca(
    path: Option<PathBuf>,
    flag: &'static str,
    env: &'static str,
) -> Result<Vec<reqwest::Certificate>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(&path)
        .map_err(|e| config_error(flag, env, format!("cannot read {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        config_error(
            flag,
            env,
            format!("{} is not a PEM bundle: {e}", path.display()),
        )
    })?;
    if certs.is_empty() {
        return Err(config_error(
            flag,
            env,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(args: &[&str], e: &[(&str, &str)]) -> Result<Config> {
        let mut all = vec!["vault-dr-agent"];
        all.extend_from_slice(args);
        Config::parse(all, &env(e))
    }

    fn flag_of(r: Result<Config>) -> &'static str {
        match r {
            Err(Error::Config { flag, .. }) => flag,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_only_the_names_are_given() {
        let c = parse(&["--cluster", "dc1", "--node", "n1"], &[]).unwrap();
        assert_eq!(c.vault.addr.as_str(), "http://127.0.0.1:8200/");
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.listen, "0.0.0.0:8210".parse().unwrap());
        assert_eq!(c.vault_process_names, vec!["bao", "vault"]);
        assert!(c.coordinator.is_none());
        assert!(c.vault.token.is_none());
    }

    #[test]
    fn vault_restart_is_off_by_default_signal_when_asked_and_anything_else_names_the_flag() {
        use crate::restart::RestartMode;
        let names = ["--cluster", "dc1", "--node", "n1"];
        assert_eq!(parse(&names, &[]).unwrap().vault_restart, RestartMode::Off);
        let signal = [&names[..], &["--vault-restart", "signal"]].concat();
        assert_eq!(
            parse(&signal, &[]).unwrap().vault_restart,
            RestartMode::Signal
        );
        let by_env = parse(&names, &[(ENV_VAULT_RESTART, "signal")]).unwrap();
        assert_eq!(by_env.vault_restart, RestartMode::Signal);
        let bad = [&names[..], &["--vault-restart", "always"]].concat();
        assert_eq!(flag_of(parse(&bad, &[])), "--vault-restart");
    }

    #[test]
    fn the_environment_fills_in_missing_flags_and_flags_win() {
        let e = [
            (ENV_CLUSTER, "dc2"),
            (ENV_NODE, "n2"),
            (ENV_INTERVAL, "250ms"),
            (ENV_VAULT_ADDR, "http://127.0.0.1:9999"),
        ];
        let c = parse(&["--interval", "2s"], &e).unwrap();
        assert_eq!(c.cluster, "dc2");
        assert_eq!(c.node, "n2");
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.vault.addr.port(), Some(9999));
    }

    #[test]
    fn the_gate_listens_where_neither_the_agent_nor_the_node_does() {
        let base = [
            "--cluster",
            "a",
            "--node",
            "b",
            "--vault-addr",
            "http://127.0.0.1:8300",
        ];
        let with = |extra: &[&str], e: &[(&str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            parse(&all, e)
        };
        let c = with(&["--gate-listen", "0.0.0.0:8200"], &[]).unwrap();
        let g = c.gate.unwrap();
        assert_eq!(g.listen, "0.0.0.0:8200".parse().unwrap());
        assert!(!g.override_open);
        assert!(with(&[], &[]).unwrap().gate.is_none());
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let c = with(
            &[
                "--gate-listen",
                "0.0.0.0:8200",
                "--gate-tls-cert",
                cert,
                "--gate-tls-key",
                key,
            ],
            &[],
        );
        assert!(c.unwrap().gate.unwrap().tls.is_some());
        let lone = ["--gate-listen", "0.0.0.0:8200", "--gate-tls-cert", cert];
        assert_eq!(flag_of(with(&lone, &[])), "--gate-tls-key");
        assert_eq!(
            flag_of(with(&["--gate-tls-key", key], &[])),
            "--gate-tls-cert"
        );
        let missing = [
            "--gate-listen",
            "0.0.0.0:8200",
            "--gate-tls-cert",
            "/nonexistent",
            "--gate-tls-key",
            key,
        ];
        assert_eq!(flag_of(with(&missing, &[])), "--gate-tls-cert");
        let c = with(
            &[],
            &[
                (ENV_GATE_LISTEN, "127.0.0.1:8200"),
                (ENV_GATE_OVERRIDE, "open"),
            ],
        );
        assert!(c.unwrap().gate.unwrap().override_open);
        for bad in [
            "127.0.0.1:8300",
            "0.0.0.0:8300",
            "0.0.0.0:8210",
            "eight",
            "127.0.0.1",
        ] {
            assert_eq!(
                flag_of(with(&["--gate-listen", bad], &[])),
                "--gate-listen",
                "{bad}"
            );
        }
        assert_eq!(
            flag_of(with(
                &["--gate-listen", "0.0.0.0:8200", "--gate-override", "yes"],
                &[]
            )),
            "--gate-override"
        );
        assert_eq!(
            flag_of(with(&["--gate-override", "open"], &[])),
            "--gate-override",
            "an override with no gate"
        );
    }

    #[test]
    fn a_zero_interval_names_the_interval_flag() {
        assert_eq!(
            flag_of(parse(
                &["--cluster", "a", "--node", "b", "--interval", "0s"],
                &[]
            )),
            "--interval"
        );
        assert_eq!(
            flag_of(parse(
                &["--cluster", "a", "--node", "b"],
                &[(ENV_INTERVAL, "soon")]
            )),
            "--interval"
        );
    }

    #[test]
    fn a_malformed_url_names_its_flag() {
        let r = parse(
            &["--cluster", "a", "--node", "b", "--vault-addr", "not a url"],
            &[],
        );
        assert_eq!(flag_of(r), "--vault-addr");
        let r = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--coordinator-url",
                "ftp://x",
            ],
            &[],
        );
        assert_eq!(flag_of(r), "--coordinator-url");
    }

    #[test]
    fn missing_names_are_reported() {
        assert_eq!(flag_of(parse(&["--node", "b"], &[])), "--cluster");
        assert_eq!(flag_of(parse(&["--cluster", "a"], &[])), "--node");
    }

    #[test]
    fn token_files_are_read_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s.topsecret\n").unwrap();
        let p = path.to_str().unwrap();
        let c = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--vault-token-file",
                p,
                "--coordinator-url",
                "http://127.0.0.1:1",
                "--coordinator-token-file",
                p,
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.vault.token.as_ref().unwrap().expose(), "s.topsecret");
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn a_missing_or_empty_token_file_names_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let r = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--vault-token-file",
                missing.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(flag_of(r), "--vault-token-file");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let r = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--coordinator-url",
                "http://127.0.0.1:1",
                "--coordinator-token-file",
                empty.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(flag_of(r), "--coordinator-token-file");
        let r = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--coordinator-url",
                "http://127.0.0.1:1",
            ],
            &[],
        );
        assert_eq!(flag_of(r), "--coordinator-token-file");
    }

    #[test]
    fn clap_usage_errors_exit_64_and_help_exits_0() {
        let e = parse(&["--bogus"], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 64);
        let e = parse(&["--help"], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 0);
        let e = parse(&["--node", "b"], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 64);
    }

    #[test]
    fn booleans_from_the_environment_are_strict() {
        let c = parse(
            &["--cluster", "a", "--node", "b"],
            &[(ENV_VAULT_SKIP_VERIFY, "true")],
        )
        .unwrap();
        assert!(c.vault.skip_verify);
        let r = parse(
            &["--cluster", "a", "--node", "b"],
            &[(ENV_LOG_JSON, "perhaps")],
        );
        assert_eq!(flag_of(r), "--log-json");
    }

    #[test]
    fn the_log_format_comes_from_its_flag_its_variable_or_the_old_json_switch() {
        let base = ["--cluster", "a", "--node", "b"];
        let format = |extra: &[&str], env: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v, env).map(|c| c.log_format)
        };
        assert_eq!(format(&[], &[]).unwrap(), LogFormat::Text);
        assert_eq!(
            format(&["--log-format", "json"], &[]).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            format(&[], &[(ENV_LOG_FORMAT, "json")]).unwrap(),
            LogFormat::Json
        );
        assert_eq!(format(&["--log-json"], &[]).unwrap(), LogFormat::Json);
        assert_eq!(
            format(&[], &[(ENV_LOG_JSON, "true")]).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            format(&["--log-format", "text"], &[(ENV_LOG_JSON, "true")]).unwrap(),
            LogFormat::Text,
            "--log-format wins over the old switch"
        );
        let e = format(&[], &[(ENV_LOG_FORMAT, "xml")]).unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert!(e.to_string().contains(ENV_LOG_FORMAT), "{e}");
        assert_eq!(
            flag_of(parse(
                &["--cluster", "a", "--node", "b", "--log-format", "yaml"],
                &[]
            )),
            "--log-format"
        );
    }

    #[test]
    fn raft_replication_needs_a_path_a_cluster_address_and_the_dr_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "dr").unwrap();
        let token = token.display().to_string();
        let base = [
            "--cluster",
            "s1",
            "--node",
            "s1-n1",
            "--replication",
            "raft",
            "--vault-token-file",
            &token,
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v, &[])
        };
        let ok = with(&[
            "--raft-path",
            "/data",
            "--raft-cluster-addr",
            "10.0.0.5:8201",
        ])
        .unwrap();
        let ReplicationConfig::Raft(r) = ok.replication else {
            panic!("not raft: {:?}", ok.replication)
        };
        assert_eq!(r.node_id, "s1-n1");
        assert_eq!(r.control_dir, PathBuf::from("/data/.vault-dr"));
        assert_eq!(
            r.quarantine_dir,
            PathBuf::from("/data/.vault-dr-quarantine")
        );
        assert_eq!(r.suffrage, crate::replication::raft::plan::Suffrage::Auto);
        let addr = ["--raft-path", "/d", "--raft-cluster-addr", "h:1"];
        let voter = with(&[&addr[..], &["--raft-suffrage", "voter"]].concat()).unwrap();
        let ReplicationConfig::Raft(r) = voter.replication else {
            panic!("not raft")
        };
        assert_eq!(r.suffrage, crate::replication::raft::plan::Suffrage::Voter);
        assert_eq!(
            flag_of(with(&[&addr[..], &["--raft-suffrage", "yes"]].concat())),
            "--raft-suffrage"
        );
        assert_eq!(
            flag_of(with(&["--raft-cluster-addr", "h:1"])),
            "--raft-path"
        );
        assert_eq!(
            flag_of(with(&["--raft-path", "rel", "--raft-cluster-addr", "h:1"])),
            "--raft-path"
        );
        assert_eq!(flag_of(with(&["--raft-path", "/d"])), "--raft-cluster-addr");
        for bad in ["h", "h:0", "h:x", "https://h:8201", ":8201"] {
            assert_eq!(
                flag_of(with(&["--raft-path", "/d", "--raft-cluster-addr", bad])),
                "--raft-cluster-addr",
                "{bad}"
            );
        }
        let no_token = parse(
            &[
                "--cluster",
                "s1",
                "--node",
                "n",
                "--replication",
                "raft",
                "--raft-path",
                "/d",
                "--raft-cluster-addr",
                "h:1",
            ],
            &[],
        );
        assert_eq!(flag_of(no_token), "--vault-token-file");
    }

    #[test]
    fn snapshot_replication_defaults_and_needs_a_dir_and_the_dr_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "dr-token").unwrap();
        let t = token.to_str().unwrap();
        let base = ["--cluster", "a", "--node", "b"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v, &[])
        };
        assert_eq!(with(&[]).unwrap().replication, ReplicationConfig::None);
        let c = with(&[
            "--replication",
            "snapshot",
            "--snapshot-dir",
            "/var/snap",
            "--vault-token-file",
            t,
        ])
        .unwrap();
        assert_eq!(
            c.replication,
            ReplicationConfig::Snapshot(SnapshotConfig {
                dir: "/var/snap".into(),
                interval: Duration::from_secs(5),
                keep: 3,
                restore: RestoreMode::Continuous,
                quarantine_dir: "/var/snap/quarantine".into(),
            })
        );
        assert_eq!(
            flag_of(with(&[
                "--replication",
                "snapshot",
                "--vault-token-file",
                t
            ])),
            "--snapshot-dir"
        );
        assert_eq!(
            flag_of(with(&["--replication", "snapshot", "--snapshot-dir", "/x"])),
            "--vault-token-file"
        );
        assert_eq!(flag_of(with(&["--replication", "rsync"])), "--replication");
        let snap = [
            "--replication",
            "snapshot",
            "--snapshot-dir",
            "/x",
            "--vault-token-file",
            t,
        ];
        for (flag, bad) in [
            ("--snapshot-interval", "0s"),
            ("--snapshot-interval", "often"),
            ("--snapshot-keep", "0"),
            ("--snapshot-keep", "many"),
            ("--restore", "sometimes"),
        ] {
            let mut v = snap.to_vec();
            v.extend_from_slice(&[flag, bad]);
            assert_eq!(flag_of(with(&v)), flag, "{flag} {bad}");
        }
        let mut v = snap.to_vec();
        v.extend_from_slice(&["--restore", "on-promotion", "--snapshot-keep", "5"]);
        let ReplicationConfig::Snapshot(s) = with(&v).unwrap().replication else {
            panic!("snapshot expected");
        };
        assert_eq!((s.restore, s.keep), (RestoreMode::OnPromotion, 5));
    }

    #[test]
    fn a_coordinator_url_list_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "x").unwrap();
        let c = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--coordinator-url",
                "http://127.0.0.1:1, http://127.0.0.1:2,http://127.0.0.1:3",
                "--coordinator-token-file",
                token.to_str().unwrap(),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.coordinator.unwrap().url.port(), Some(1));
        let rest: Vec<_> = c.coordinator_fallbacks.iter().map(|u| u.port()).collect();
        assert_eq!(rest, vec![Some(2), Some(3)]);
        let r = parse(
            &[
                "--cluster",
                "a",
                "--node",
                "b",
                "--coordinator-url",
                "http://127.0.0.1:1,ftp://x",
                "--coordinator-token-file",
                token.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(flag_of(r), "--coordinator-url");
    }

    #[test]
    fn a_bad_listen_address_names_the_flag() {
        assert_eq!(
            flag_of(parse(
                &["--cluster", "a", "--node", "b", "--listen", "localhost"],
                &[]
            )),
            "--listen"
        );
    }
}
