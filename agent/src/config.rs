//! The agent's configuration: command-line flags with environment fallbacks, validated once
//! into [`Config`]. Every environment variable is a named const; the environment is read
//! through the tiny [`Env`] trait so tests pass a map instead of touching the process.
//!
//! Any invalid value is an [`Error::Config`] naming the flag and variable (exit code 64).

use crate::error::{Error, Result};
use clap::Parser;
use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;
use vault_dr_common::Secret;

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
/// Env: process name of Vault (`--vault-process-name`).
pub const ENV_VAULT_PROCESS_NAME: &str = "VAULT_DR_AGENT_VAULT_PROCESS_NAME";
/// Env: log one JSON object per line (`--log-json`).
pub const ENV_LOG_JSON: &str = "VAULT_DR_AGENT_LOG_JSON";

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

/// Read access to environment variables.
pub trait Env {
    /// The value of `key`, `None` when unset.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

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
    #[arg(long, value_name = "URL", help = help("Coordinator base URL; without it the agent only probes and serves metrics", ENV_COORDINATOR_URL))]
    coordinator_url: Option<String>,
    #[arg(long, value_name = "FILE", help = help("File holding the coordinator bearer token", ENV_COORDINATOR_TOKEN_FILE))]
    coordinator_token_file: Option<PathBuf>,
    #[arg(long, value_name = "PEM", help = help("CA bundle for the coordinator", ENV_COORDINATOR_CA_CERT))]
    coordinator_ca_cert: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", help = help("Probe and report interval, e.g. 1s, 500ms [default: 1s]", ENV_INTERVAL))]
    interval: Option<String>,
    #[arg(long, value_name = "ADDR", help = help("Listen address for /metrics, /healthz, /readyz, /v1/* [default: 0.0.0.0:8210]", ENV_LISTEN))]
    listen: Option<String>,
    #[arg(long, value_name = "FILE", help = help("Pid file of the Vault process", ENV_VAULT_PID_FILE))]
    vault_pid_file: Option<PathBuf>,
    #[arg(long, value_name = "NAME", help = help("Vault process name (then `vault`) [default: bao]", ENV_VAULT_PROCESS_NAME))]
    vault_process_name: Option<String>,
    #[arg(long, help = help("Log one JSON object per line", ENV_LOG_JSON))]
    log_json: bool,
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
    /// Probe and report interval (> 0).
    pub interval: Duration,
    /// Listen address of the HTTP server.
    pub listen: SocketAddr,
    /// Pid file of the Vault process.
    pub vault_pid_file: Option<PathBuf>,
    /// Process names to look for, in order.
    pub vault_process_names: Vec<String>,
    /// JSON logs.
    pub log_json: bool,
    /// Where cgroup v2 is mounted (tests point it at fixtures).
    pub cgroup_root: PathBuf,
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

        let coordinator = match pick(a.coordinator_url, ENV_COORDINATOR_URL) {
            None => None,
            Some(raw) => {
                let url = parse_url(&raw, "--coordinator-url", ENV_COORDINATOR_URL)?;
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

        Ok(Self {
            vault,
            cluster,
            node,
            coordinator,
            interval,
            listen,
            vault_pid_file: pick_path(a.vault_pid_file, ENV_VAULT_PID_FILE),
            vault_process_names,
            log_json: a.log_json || parse_bool(env.var(ENV_LOG_JSON), "--log-json", ENV_LOG_JSON)?,
            cgroup_root: PathBuf::from(DEFAULT_CGROUP_ROOT),
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
            interval: DEFAULT_INTERVAL,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            vault_pid_file: None,
            vault_process_names: vec![DEFAULT_PROCESS_NAME.into(), "vault".into()],
            log_json: false,
            cgroup_root: PathBuf::from(DEFAULT_CGROUP_ROOT),
        }
    }
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
