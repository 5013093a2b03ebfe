//! Configuration of the coordinator: the DR group (clusters, initial primary, policy) and the
//! service settings, from a TOML file plus `VAULT_DR_*` environment overrides, validated once.
//! Every error names the field, and `main` turns it into exit code 64.

use crate::model::{Policy, QuorumMode};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;
use vault_dr_common::{PromotionMode, Secret};

/// Environment variable overriding `listen`.
pub const ENV_LISTEN: &str = "VAULT_DR_LISTEN";
/// Environment variable overriding `token_file` (the agents' bearer token).
pub const ENV_TOKEN_FILE: &str = "VAULT_DR_TOKEN_FILE";
/// Environment variable overriding `vault_token_file` (the DR Vault token for seal and canary).
pub const ENV_VAULT_TOKEN_FILE: &str = "VAULT_DR_VAULT_TOKEN_FILE";
/// Environment variable overriding `store.mongodb_uri` (and selecting the MongoDB store).
pub const ENV_MONGODB_URI: &str = "VAULT_DR_MONGODB_URI";
/// Environment variable overriding `store.path`.
pub const ENV_STORE_PATH: &str = "VAULT_DR_STORE_PATH";
/// Environment variable overriding `coordination.path`.
pub const ENV_COORDINATION_PATH: &str = "VAULT_DR_COORDINATION_PATH";
/// Environment variable naming the Kubernetes namespace (the chart sets it from the pod).
pub const ENV_NAMESPACE: &str = "VAULT_DR_NAMESPACE";
/// Where a pod finds its namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// Environment variable naming this replica (the lease holder); defaults to the host name.
pub const ENV_ID: &str = "VAULT_DR_ID";
/// Every environment variable the coordinator reads, for `--help` and the chart.
pub const ENV_VARS: [&str; 8] = [
    ENV_NAMESPACE,
    ENV_LISTEN,
    ENV_TOKEN_FILE,
    ENV_VAULT_TOKEN_FILE,
    ENV_MONGODB_URI,
    ENV_STORE_PATH,
    ENV_COORDINATION_PATH,
    ENV_ID,
];

/// The environment seam, shared with the agent.
pub use vault_dr_common::env::{Env, ProcessEnv};

/// An invalid configuration: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field (`clusters[1].api_addrs[0]`, `policy.confirm`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The file as written (before validation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    vault_token_file: Option<PathBuf>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    coordination: RawCoordination,
    #[serde(default)]
    traffic: RawTraffic,
    #[serde(default)]
    policy: Option<toml::Value>,
    #[serde(default)]
    clusters: Vec<RawCluster>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    mongodb_uri: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    buffer: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordination {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    lease_name: Option<String>,
    #[serde(default)]
    configmap_name: Option<String>,
    #[serde(default)]
    lease_duration: Option<String>,
    #[serde(default)]
    renew_period: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    #[serde(default)]
    role: Option<String>,
    api_addrs: Vec<String>,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    excluded: bool,
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

/// One cluster of the DR group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Unique name.
    pub name: String,
    /// API addresses of its nodes (or one load-balanced address); probed by the coordinator.
    pub api_addrs: Vec<Url>,
    /// Names of the nodes whose agents may report for it.
    pub nodes: Vec<String>,
    /// Operator's priority: higher wins a tie between otherwise equal candidates.
    pub priority: i32,
    /// Never promoted automatically.
    pub excluded: bool,
    /// Pod labels selecting this cluster's nodes (for the Kubernetes Service traffic switch).
    pub selector: BTreeMap<String, String>,
}

/// Where the record goes.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// One local SQLite file.
    Embedded {
        /// Path of the file.
        path: PathBuf,
    },
    /// A MongoDB deployment.
    Mongo {
        /// Connection string (may hold a password: kept as a secret).
        uri: Secret,
        /// Database name.
        database: String,
    },
}

/// How replicas agree on a leader and keep the topology.
#[derive(Debug, Clone, PartialEq)]
pub enum CoordinationConfig {
    /// Coordinators on one machine sharing one file.
    Local {
        /// The shared file.
        path: PathBuf,
        /// How long a lease lasts without renewal.
        lease_duration: Duration,
        /// How often the holder renews.
        renew_period: Duration,
    },
    /// A `coordination.k8s.io/v1` Lease and a ConfigMap in one namespace.
    Kubernetes {
        /// Namespace of the Lease and the ConfigMap.
        namespace: String,
        /// Lease name (`kubectl get lease` shows the holder).
        lease_name: String,
        /// ConfigMap holding the topology.
        configmap_name: String,
        /// How long a lease lasts without renewal.
        lease_duration: Duration,
        /// How often the holder renews.
        renew_period: Duration,
    },
}

impl CoordinationConfig {
    /// How often the lease is renewed.
    pub fn renew_period(&self) -> Duration {
        match self {
            Self::Local { renew_period, .. } | Self::Kubernetes { renew_period, .. } => {
                *renew_period
            }
        }
    }

    /// How long a lease lasts.
    pub fn lease_duration(&self) -> Duration {
        match self {
            Self::Local { lease_duration, .. } | Self::Kubernetes { lease_duration, .. } => {
                *lease_duration
            }
        }
    }
}

/// How client traffic reaches the primary.
#[derive(Debug, Clone, PartialEq)]
pub enum TrafficConfig {
    /// No switch: clients follow the primary themselves.
    None,
    /// A TCP forwarder in the coordinator on a fixed address (one machine, the drill).
    Local {
        /// The stable client address.
        listen: SocketAddr,
    },
    /// Patch the selector of a client-facing Service to the new primary's `selector`.
    Kubernetes {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        service: String,
    },
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the API listener.
    pub listen: SocketAddr,
    /// This replica's identity (lease holder name).
    pub id: String,
    /// Bearer token agents and the CLI present.
    pub token: Secret,
    /// DR Vault token (seal, canary write); `None` disables fencing by seal and the canary.
    pub vault_token: Option<Secret>,
    /// TLS certificate and key for the listener, if any.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The record.
    pub store: StoreConfig,
    /// Size of the write buffer in front of the store.
    pub store_buffer: usize,
    /// Leader election and topology.
    pub coordination: CoordinationConfig,
    /// How client traffic follows the primary.
    pub traffic: TrafficConfig,
    /// Detection and choice policy.
    pub policy: Policy,
    /// Every cluster, in file order.
    pub clusters: Vec<ClusterConfig>,
    /// The cluster that is primary in term 1.
    pub initial_primary: String,
}

impl Config {
    /// Reads and validates a TOML file, applying environment overrides.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), env)
    }

    /// Parses and validates TOML text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml names the key and position in its message; keep it whole.
            ConfigError::new(toml_field(&e, text), e.message().to_owned())
        })?;
        validate(raw, base, env)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// The field a toml error is about. "unknown field `x`" and "missing field `x`" name it; serde's
/// type and value errors ("invalid type: map, expected a string") do not, so the key is found
/// from the error's span in `text`: the key left of `=` on that line (or the nearest line above
/// with one, for a multi-line value) under the last `[section]` header (`[[clusters]]` counted,
/// as `clusters[i]`).
fn toml_field(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message();
    let named = msg.find('`').and_then(|start| {
        msg[start + 1..]
            .find('`')
            .map(|len| msg[start + 1..start + 1 + len].to_owned())
    });
    let is_name_error = msg.starts_with("unknown field") || msg.starts_with("missing field");
    if is_name_error && let Some(n) = named {
        return n;
    }
    if let Some(span) = e.span()
        && let Some(field) = field_at(text, span.start)
    {
        return field;
    }
    named.unwrap_or_else(|| "file".to_owned())
}

/// `section.key` of the line holding byte `offset` of `text`.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_no = text.get(..offset)?.bytes().filter(|&b| b == b'\n').count();
    let lines: Vec<&str> = text.lines().collect();
    // A table value (`key = {}` re-serialised as `[key]`) is reported at its header.
    if let Some(header) = lines.get(line_no).map(|l| l.trim())
        && header.starts_with('[')
    {
        let name = header.trim_start_matches('[').split(']').next()?.trim();
        return (!name.is_empty()).then(|| name.to_owned());
    }
    let key = lines
        .get(..=line_no.min(lines.len().saturating_sub(1)))?
        .iter()
        .rev()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (k, _) = l.split_once('=')?;
            let k = k.trim().trim_matches('"').trim_matches('\'');
            (!k.is_empty()).then(|| k.to_owned())
        })?;
    let mut section = None;
    let mut tables: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in &lines[..line_no.min(lines.len())] {
        let t = l.trim();
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let i = tables.entry(name).or_insert(0);
            section = Some(format!("{name}[{i}]"));
            *i += 1;
        } else if let Some(name) = t
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            section = Some(name.to_owned());
        }
    }
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key,
    })
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

fn read_secret(field: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
    let secret = Secret::new(text);
    if secret.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(secret)
}

fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text)
        .map_err(|e| ConfigError::new(field, format!("{text:?} is not a duration: {e}")))?;
    if d.is_zero() {
        return Err(ConfigError::new(field, "must be greater than zero"));
    }
    Ok(d)
}

fn socket(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| {
        ConfigError::new(
            field,
            format!("{text:?} is not an address like 0.0.0.0:8300: {e}"),
        )
    })
}

fn validate(raw: RawConfig, base: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let listen_text = env
        .var(ENV_LISTEN)
        .or(raw.listen)
        .unwrap_or_else(|| "0.0.0.0:8300".into());
    let listen = socket("listen", &listen_text)?;
    let id = env
        .var(ENV_ID)
        .or(raw.id)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("coordinator-{}", std::process::id()));

    let token_file = env
        .var(ENV_TOKEN_FILE)
        .map(PathBuf::from)
        .or(raw.token_file)
        .ok_or_else(|| ConfigError::new("token_file", "required: the agents' bearer token file"))?;
    let token = read_secret("token_file", &resolve(base, token_file))?;
    let vault_token = match env
        .var(ENV_VAULT_TOKEN_FILE)
        .map(PathBuf::from)
        .or(raw.vault_token_file)
    {
        Some(p) => Some(read_secret("vault_token_file", &resolve(base, p))?),
        None => None,
    };
    let tls = match raw.tls {
        Some(t) => {
            let (c, k) = (resolve(base, t.cert_file), resolve(base, t.key_file));
            for (field, p) in [("tls.cert_file", &c), ("tls.key_file", &k)] {
                if !p.is_file() {
                    return Err(ConfigError::new(
                        field,
                        format!("{} does not exist", p.display()),
                    ));
                }
            }
            Some((c, k))
        }
        None => None,
    };

    let store = match env.var(ENV_MONGODB_URI).or(raw.store.mongodb_uri) {
        Some(uri) => {
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err(ConfigError::new(
                    "store.mongodb_uri",
                    "must start with mongodb:// or mongodb+srv://",
                ));
            }
            StoreConfig::Mongo {
                uri: Secret::new(uri),
                database: raw.store.database.unwrap_or_else(|| "vault_dr".into()),
            }
        }
        None => StoreConfig::Embedded {
            path: resolve(
                base,
                env.var(ENV_STORE_PATH)
                    .map(PathBuf::from)
                    .or(raw.store.path)
                    .unwrap_or_else(|| "vault-dr.sqlite".into()),
            ),
        },
    };
    let store_buffer = raw.store.buffer.unwrap_or(10_000);
    if store_buffer == 0 {
        return Err(ConfigError::new(
            "store.buffer",
            "must be greater than zero",
        ));
    }

    let backend = raw.coordination.backend.unwrap_or_else(|| "local".into());
    let lease_duration = duration(
        "coordination.lease_duration",
        raw.coordination.lease_duration.as_deref().unwrap_or("5s"),
    )?;
    let renew_period = duration(
        "coordination.renew_period",
        raw.coordination.renew_period.as_deref().unwrap_or("1500ms"),
    )?;
    if renew_period >= lease_duration {
        return Err(ConfigError::new(
            "coordination.renew_period",
            "must be shorter than coordination.lease_duration",
        ));
    }
    let namespace = || {
        env.var(ENV_NAMESPACE)
            .or_else(|| raw.coordination.namespace.clone())
            .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let coordination = match backend.as_str() {
        "local" => CoordinationConfig::Local {
            path: resolve(
                base,
                env.var(ENV_COORDINATION_PATH)
                    .map(PathBuf::from)
                    .or(raw.coordination.path.clone())
                    .unwrap_or_else(|| "vault-dr.coordination.json".into()),
            ),
            lease_duration,
            renew_period,
        },
        "kubernetes" => CoordinationConfig::Kubernetes {
            namespace: namespace().ok_or_else(|| {
                ConfigError::new(
                    "coordination.namespace",
                    format!("required outside a pod (or set {ENV_NAMESPACE})"),
                )
            })?,
            lease_name: raw
                .coordination
                .lease_name
                .clone()
                .unwrap_or_else(|| "vault-dr-coordinator".into()),
            configmap_name: raw
                .coordination
                .configmap_name
                .clone()
                .unwrap_or_else(|| "vault-dr-topology".into()),
            lease_duration,
            renew_period,
        },
        other => {
            return Err(ConfigError::new(
                "coordination.backend",
                format!("{other:?} is not a backend (local or kubernetes)"),
            ));
        }
    };
    let traffic = match raw.traffic.backend.as_deref() {
        None if let Some(listen) = raw.traffic.listen.as_deref() => TrafficConfig::Local {
            listen: socket("traffic.listen", listen)?,
        },
        None | Some("none") => TrafficConfig::None,
        Some("local") => TrafficConfig::Local {
            listen: socket(
                "traffic.listen",
                raw.traffic.listen.as_deref().ok_or_else(|| {
                    ConfigError::new("traffic.listen", "required with backend = \"local\"")
                })?,
            )?,
        },
        Some("kubernetes") => TrafficConfig::Kubernetes {
            namespace: raw
                .traffic
                .namespace
                .clone()
                .or_else(namespace)
                .ok_or_else(|| ConfigError::new("traffic.namespace", "required outside a pod"))?,
            service: raw.traffic.service.clone().ok_or_else(|| {
                ConfigError::new("traffic.service", "required with backend = \"kubernetes\"")
            })?,
        },
        Some(other) => {
            return Err(ConfigError::new(
                "traffic.backend",
                format!("{other:?} is not a backend (none, local or kubernetes)"),
            ));
        }
    };

    let policy = match raw.policy {
        Some(v) => {
            let text =
                toml::to_string(&v).map_err(|e| ConfigError::new("policy", e.to_string()))?;
            toml::from_str::<PolicyFile>(&text)
                .map_err(|e| {
                    ConfigError::new(
                        format!("policy.{}", toml_field(&e, &text)),
                        e.message().to_owned(),
                    )
                })?
                .into_policy()?
        }
        None => Policy::default(),
    };

    if raw.clusters.len() < 2 {
        return Err(ConfigError::new(
            "clusters",
            "at least two clusters (one primary, one secondary) are needed",
        ));
    }
    let mut names = HashSet::new();
    let mut clusters = Vec::new();
    let mut primaries = Vec::new();
    for (i, c) in raw.clusters.into_iter().enumerate() {
        let f = |name: &str| format!("clusters[{i}].{name}");
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(ConfigError::new(
                f("name"),
                format!("{:?} must be non-empty letters, digits, '-' or '_'", c.name),
            ));
        }
        if !names.insert(c.name.clone()) {
            return Err(ConfigError::new(
                f("name"),
                format!("{:?} is used by two clusters", c.name),
            ));
        }
        match c.role.as_deref().unwrap_or("secondary") {
            "primary" => primaries.push(c.name.clone()),
            "secondary" => {}
            other => {
                return Err(ConfigError::new(
                    f("role"),
                    format!("{other:?} is neither primary nor secondary"),
                ));
            }
        }
        if c.api_addrs.is_empty() {
            return Err(ConfigError::new(
                f("api_addrs"),
                "at least one address is needed",
            ));
        }
        let mut api_addrs = Vec::new();
        for (j, a) in c.api_addrs.iter().enumerate() {
            let url = Url::parse(a).map_err(|e| {
                ConfigError::new(
                    f(&format!("api_addrs[{j}]")),
                    format!("{a:?} is not a URL: {e}"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError::new(
                    f(&format!("api_addrs[{j}]")),
                    format!("{a:?} must be an http(s) URL with a host"),
                ));
            }
            api_addrs.push(url);
        }
        if c.nodes.is_empty() {
            return Err(ConfigError::new(
                f("nodes"),
                "at least one node name is needed (the agents' --node)",
            ));
        }
        let mut seen = HashSet::new();
        for (j, n) in c.nodes.iter().enumerate() {
            if n.is_empty() || !seen.insert(n) {
                return Err(ConfigError::new(
                    f(&format!("nodes[{j}]")),
                    format!("{n:?} is empty or repeated"),
                ));
            }
        }
        if matches!(traffic, TrafficConfig::Kubernetes { .. }) && c.selector.is_empty() {
            return Err(ConfigError::new(
                f("selector"),
                "required with traffic.backend = \"kubernetes\" (pod labels of this cluster)",
            ));
        }
        clusters.push(ClusterConfig {
            name: c.name,
            api_addrs,
            nodes: c.nodes,
            priority: c.priority,
            excluded: c.excluded,
            selector: c.selector,
        });
    }
    let initial_primary = match primaries.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ConfigError::new(
                "clusters[].role",
                "exactly one cluster must have role = \"primary\"; none has",
            ));
        }
        many => {
            return Err(ConfigError::new(
                "clusters[].role",
                format!(
                    "exactly one cluster must have role = \"primary\"; {} have: {}",
                    many.len(),
                    many.join(", ")
                ),
            ));
        }
    };
    if clusters
        .iter()
        .any(|c| c.name == initial_primary && c.excluded)
    {
        return Err(ConfigError::new(
            "clusters[].excluded",
            "the initial primary cannot be excluded",
        ));
    }

    Ok(Config {
        listen,
        id,
        token,
        vault_token,
        tls,
        store,
        store_buffer,
        coordination,
        traffic,
        policy,
        clusters,
        initial_primary,
    })
}

/// `[policy]` as written: every field optional, durations as humantime strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    confirm: Option<u32>,
    report_ttl: Option<String>,
    max_lag_entries: Option<u64>,
    max_lag: Option<String>,
    cooldown: Option<String>,
    quorum: Option<QuorumMode>,
    report_retention: Option<String>,
    promotion: Option<String>,
}

impl PolicyFile {
    fn into_policy(self) -> Result<Policy, ConfigError> {
        let d = Policy::default();
        let dur = |field: &str, v: Option<String>, def: Duration| match v {
            Some(t) => duration(&format!("policy.{field}"), &t),
            None => Ok(def),
        };
        let p = Policy {
            probe_interval: dur("probe_interval", self.probe_interval, d.probe_interval)?,
            probe_timeout: dur("probe_timeout", self.probe_timeout, d.probe_timeout)?,
            confirm: self.confirm.unwrap_or(d.confirm),
            report_ttl: dur("report_ttl", self.report_ttl, d.report_ttl)?,
            max_lag_entries: self.max_lag_entries,
            max_lag: dur("max_lag", self.max_lag, d.max_lag)?,
            cooldown: match self.cooldown {
                // A zero cooldown is allowed (tests, drills); it disables anti-flap.
                Some(t) if t.trim() == "0s" || t.trim() == "0" => Duration::ZERO,
                other => dur("cooldown", other, d.cooldown)?,
            },
            quorum: self.quorum.unwrap_or(d.quorum),
            report_retention: dur(
                "report_retention",
                self.report_retention,
                d.report_retention,
            )?,
            promotion: match self.promotion.as_deref() {
                None => d.promotion,
                Some("complete") => PromotionMode::Complete,
                Some("fast") => PromotionMode::Fast,
                Some(other) => {
                    return Err(ConfigError::new(
                        "policy.promotion",
                        format!("{other:?} is not a promotion mode (complete or fast)"),
                    ));
                }
            },
        };
        if p.confirm == 0 {
            return Err(ConfigError::new("policy.confirm", "must be at least 1"));
        }
        if p.probe_timeout > p.probe_interval {
            return Err(ConfigError::new(
                "policy.probe_timeout",
                "must not exceed policy.probe_interval",
            ));
        }
        if p.report_ttl < p.probe_interval {
            return Err(ConfigError::new(
                "policy.report_ttl",
                "must be at least policy.probe_interval",
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_token(dir: &Path) -> BTreeMap<String, String> {
        std::fs::write(dir.join("token"), "agent-token\n").unwrap();
        BTreeMap::from([(
            ENV_TOKEN_FILE.to_owned(),
            dir.join("token").display().to_string(),
        )])
    }

    const GOOD: &str = r#"
        [policy]
        confirm = 2
        probe_interval = "500ms"
        probe_timeout = "400ms"
        cooldown = "0s"
        [[clusters]]
        name = "dc1"
        role = "primary"
        api_addrs = ["http://127.0.0.1:8200"]
        nodes = ["dc1-0"]
        [[clusters]]
        name = "dc2"
        api_addrs = ["http://127.0.0.1:8210"]
        nodes = ["dc2-0"]
        priority = 5
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_token(dir.path());
        Config::parse(text, dir.path(), &env)
    }

    #[test]
    fn a_valid_file_parses_with_defaults_filled_in() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.initial_primary, "dc1");
        assert_eq!(c.policy.confirm, 2);
        assert_eq!(c.policy.probe_interval, Duration::from_millis(500));
        assert_eq!(c.policy.cooldown, Duration::ZERO);
        assert_eq!(c.policy.report_ttl, Policy::default().report_ttl);
        assert_eq!(c.cluster("dc2").unwrap().priority, 5);
        assert!(matches!(c.store, StoreConfig::Embedded { .. }));
        assert_eq!(c.token.expose(), "agent-token");
    }

    fn field_of(text: &str) -> String {
        parse(text).unwrap_err().field
    }

    #[test]
    fn two_primaries_are_rejected_naming_the_role_field() {
        let text = GOOD.replace("name = \"dc2\"", "name = \"dc2\"\nrole = \"primary\"");
        assert_eq!(field_of(&text), "clusters[].role");
    }

    #[test]
    fn no_primary_is_rejected() {
        assert_eq!(
            field_of(&GOOD.replace("role = \"primary\"", "")),
            "clusters[].role"
        );
    }

    #[test]
    fn duplicate_names_are_rejected_naming_the_second() {
        assert_eq!(
            field_of(&GOOD.replace("\"dc2\"", "\"dc1\"")),
            "clusters[1].name"
        );
    }

    #[test]
    fn a_malformed_url_is_rejected_naming_its_index() {
        let text = GOOD.replace("http://127.0.0.1:8210", "not a url");
        assert_eq!(field_of(&text), "clusters[1].api_addrs[0]");
    }

    #[test]
    fn a_zero_confirm_count_is_rejected() {
        assert_eq!(
            field_of(&GOOD.replace("confirm = 2", "confirm = 0")),
            "policy.confirm"
        );
    }

    #[test]
    fn a_bad_duration_is_rejected_naming_the_policy_field() {
        let text = GOOD.replace("probe_interval = \"500ms\"", "probe_interval = \"soon\"");
        assert_eq!(field_of(&text), "policy.probe_interval");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse(&format!("surprise = 1\n{GOOD}")).unwrap_err();
        assert_eq!(e.field, "surprise");
    }

    #[test]
    fn the_promotion_mode_defaults_to_complete_and_parses_fast() {
        assert_eq!(
            parse(GOOD).unwrap().policy.promotion,
            PromotionMode::Complete
        );
        let fast = GOOD.replace("confirm = 2", "confirm = 2\npromotion = \"fast\"");
        assert_eq!(parse(&fast).unwrap().policy.promotion, PromotionMode::Fast);
        let bad = GOOD.replace("confirm = 2", "confirm = 2\npromotion = \"quick\"");
        assert_eq!(field_of(&bad), "policy.promotion");
    }

    #[test]
    fn a_missing_token_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::new();
        let e = Config::parse(GOOD, dir.path(), &env).unwrap_err();
        assert_eq!(e.field, "token_file");
    }

    #[test]
    fn the_environment_overrides_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_with_token(dir.path());
        env.insert(ENV_MONGODB_URI.into(), "mongodb://127.0.0.1:27017".into());
        let c = Config::parse(GOOD, dir.path(), &env).unwrap();
        assert!(matches!(c.store, StoreConfig::Mongo { .. }));
        env.insert(ENV_MONGODB_URI.into(), "http://nope".into());
        assert_eq!(
            Config::parse(GOOD, dir.path(), &env).unwrap_err().field,
            "store.mongodb_uri"
        );
    }
}
