//! The coordinator's TOML file as written ([`ConfigFile`] and one type per section, typed and
//! serialisable: the lab and the tests write their coordinators' files from it) and its
//! validation, one section at a time, into [`Config`](super::Config).

use super::{
    ClusterConfig, Config, ConfigError, CoordinationConfig, ENV_COORDINATION_PATH, ENV_ID,
    ENV_LISTEN, ENV_MONGODB_URI, ENV_NAMESPACE, ENV_STORE_PATH, ENV_TOKEN_FILE,
    ENV_VAULT_TOKEN_FILE, Env, SERVICE_ACCOUNT_NAMESPACE, StoreConfig, TrafficConfig,
};
use crate::model::policy::DegradedPolicy;
use crate::model::policy::humantime_serde_compat;
use crate::model::{Policy, QuorumMode};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;
use vault_dr_common::{PromotionMode, Secret};

/// The coordinator's TOML file as written: every section typed (durations as humantime
/// strings, addresses, URLs and backends as what they are), nothing validated across fields
/// yet. [`Config::parse`] reads it; the lab and the tests build one and serialise it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The API listener (`VAULT_DR_LISTEN`; default `0.0.0.0:8300`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// This replica's id (`VAULT_DR_ID`; default the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The agents' and the CLI's bearer token file (`VAULT_DR_TOKEN_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The DR Vault token file (`VAULT_DR_VAULT_TOKEN_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_token_file: Option<PathBuf>,
    /// `[tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreFile,
    /// `[coordination]`.
    #[serde(default)]
    pub coordination: CoordinationFile,
    /// `[traffic]`.
    #[serde(default)]
    pub traffic: TrafficFile,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicyFile,
    /// `[[clusters]]`.
    #[serde(default)]
    pub clusters: Vec<ClusterFile>,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `[store]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// The embedded SQLite file (`VAULT_DR_STORE_PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// MongoDB instead (`VAULT_DR_MONGODB_URI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb_uri: Option<String>,
    /// MongoDB database (default `vault_dr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Writes buffered in front of the store (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<usize>,
}

/// `coordination.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinationBackend {
    /// Replicas on one machine sharing one file.
    #[default]
    Local,
    /// A Lease and a ConfigMap.
    Kubernetes,
}

/// `[coordination]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationFile {
    /// The backend (default `local`).
    #[serde(default)]
    pub backend: CoordinationBackend,
    /// `local`: the shared file (`VAULT_DR_COORDINATION_PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `kubernetes`: the namespace (`VAULT_DR_NAMESPACE`; default the pod's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `kubernetes`: the Lease (default `vault-dr-coordinator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_name: Option<String>,
    /// `kubernetes`: the topology ConfigMap (default `vault-dr-topology`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configmap_name: Option<String>,
    /// How long a lease lasts unrenewed (default 5 s).
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_duration: Option<Duration>,
    /// How often the holder renews (default 1.5 s).
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub renew_period: Option<Duration>,
    /// Take over the group identity a refusal names (`crate::group::adopt`): only for a group
    /// that lost its coordination state while no other group drives the clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_group: Option<String>,
    /// `kubernetes`: the label selector of the coordinator group's pods. When set, the leader
    /// labels its own pod `vault-dr.io/leader=true` (its id is its pod name) and takes the
    /// label from the others, so that a Service can select the leader
    /// (`crate::coordination::leader_pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<String>,
}

/// `traffic.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficBackend {
    /// Clients follow the primary themselves.
    None,
    /// The leader's TCP forwarder on `listen`.
    Local,
    /// Patch a Service's selector.
    Kubernetes,
}

/// `[traffic]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficFile {
    /// The backend (default `none`, or `local` when `listen` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<TrafficBackend>,
    /// `local`: the stable client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `kubernetes`: the client-facing Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `kubernetes`: its namespace (default the coordination namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `[policy]` as written: every field optional (defaults: [`Policy::default`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// See [`Policy::probe_interval`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe_interval: Option<Duration>,
    /// See [`Policy::probe_timeout`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe_timeout: Option<Duration>,
    /// See [`Policy::confirm`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<u32>,
    /// See [`Policy::report_ttl`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub report_ttl: Option<Duration>,
    /// See [`Policy::max_lag_entries`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_entries: Option<u64>,
    /// See [`Policy::max_lag`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_lag: Option<Duration>,
    /// See [`Policy::cooldown`] (`"0s"` disables anti-flap).
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown: Option<Duration>,
    /// See [`Policy::quorum`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumMode>,
    /// See [`Policy::report_retention`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub report_retention: Option<Duration>,
    /// See [`Policy::promotion`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionMode>,
    /// See [`Policy::promote_timeout`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub promote_timeout: Option<Duration>,
    /// `[policy.degraded]`: see [`Policy::degraded`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<DegradedFile>,
}

/// `[policy.degraded]` as written (defaults: [`DegradedPolicy::default`]). The section turns
/// the rule on unless it says `enabled = false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradedFile {
    /// `false` keeps the rule off with the section written (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// See [`DegradedPolicy::window`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// See [`DegradedPolicy::latency_p99`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_p99: Option<Duration>,
    /// See [`DegradedPolicy::latency_p99_clear`].
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_p99_clear: Option<Duration>,
    /// See [`DegradedPolicy::error_ratio`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,
    /// See [`DegradedPolicy::error_ratio_clear`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio_clear: Option<f64>,
    /// See [`DegradedPolicy::worse_factor`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse_factor: Option<f64>,
    /// See [`DegradedPolicy::max_per_day`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_day: Option<u32>,
}

impl DegradedFile {
    /// Checks the section against the policy it belongs to (`probe_interval`).
    fn validate(self, probe_interval: Duration) -> Result<Option<DegradedPolicy>, ConfigError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let d = DegradedPolicy::default();
        let p = DegradedPolicy {
            window: self.window.unwrap_or(d.window),
            latency_p99: positive(
                "policy.degraded.latency_p99",
                self.latency_p99,
                d.latency_p99,
            )?,
            latency_p99_clear: self.latency_p99_clear.unwrap_or(d.latency_p99_clear),
            error_ratio: self.error_ratio.unwrap_or(d.error_ratio),
            error_ratio_clear: self.error_ratio_clear.unwrap_or(d.error_ratio_clear),
            worse_factor: self.worse_factor.unwrap_or(d.worse_factor),
            max_per_day: self.max_per_day.unwrap_or(d.max_per_day),
        };
        if p.window < probe_interval * 3 {
            return Err(ConfigError::new(
                "policy.degraded.window",
                format!(
                    "{} is shorter than three probe intervals ({}): a window needs at least three probes",
                    humantime::format_duration(p.window),
                    humantime::format_duration(probe_interval * 3)
                ),
            ));
        }
        if p.latency_p99_clear >= p.latency_p99 {
            return Err(ConfigError::new(
                "policy.degraded.latency_p99_clear",
                "must be below policy.degraded.latency_p99 (it is the lower threshold of the hysteresis)",
            ));
        }
        if !(p.error_ratio > 0.0 && p.error_ratio <= 1.0) {
            return Err(ConfigError::new(
                "policy.degraded.error_ratio",
                format!("{} must be a share above 0 and at most 1", p.error_ratio),
            ));
        }
        if !(p.error_ratio_clear >= 0.0 && p.error_ratio_clear < p.error_ratio) {
            return Err(ConfigError::new(
                "policy.degraded.error_ratio_clear",
                format!(
                    "{} must be at least 0 and below policy.degraded.error_ratio ({})",
                    p.error_ratio_clear, p.error_ratio
                ),
            ));
        }
        if !(1.0..=100.0).contains(&p.worse_factor) {
            return Err(ConfigError::new(
                "policy.degraded.worse_factor",
                format!("{} must be between 1 and 100", p.worse_factor),
            ));
        }
        if p.max_per_day == 0 {
            return Err(ConfigError::new(
                "policy.degraded.max_per_day",
                "must be at least 1 (turn the rule off with enabled = false)",
            ));
        }
        Ok(Some(p))
    }
}

/// `clusters[].role`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterRole {
    /// The primary in term 1 (exactly one cluster).
    Primary,
    /// Every other cluster.
    #[default]
    Secondary,
}

/// One `[[clusters]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Unique name.
    pub name: String,
    /// Role in term 1 (default secondary).
    #[serde(default)]
    pub role: ClusterRole,
    /// API addresses of its nodes.
    pub api_addrs: Vec<String>,
    /// Node names whose agents report for it.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Operator's priority (higher wins a tie).
    #[serde(default)]
    pub priority: i32,
    /// Never promoted automatically.
    #[serde(default)]
    pub excluded: bool,
    /// Pod labels of its nodes (Kubernetes traffic switch).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// The field an error is about: serde's path to the value, with the key of a "missing field"
/// or "unknown field" error appended (serde reports those at the enclosing table).
fn field_path(path: &str, message: &str) -> String {
    let path = path.trim_matches('.');
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path.is_empty(), named) {
        (_, Some(key)) if path.ends_with(key) => path.to_owned(),
        (true, Some(key)) => key.to_owned(),
        (false, Some(key)) => format!("{path}.{key}"),
        (true, None) => "file".to_owned(),
        (false, None) => path.to_owned(),
    }
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

/// A positive duration, or the default.
fn positive(
    field: &str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = value.unwrap_or(default);
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

/// The service settings of a file: listener, id, tokens, TLS.
struct ServiceSettings {
    listen: SocketAddr,
    id: String,
    token: Secret,
    vault_token: Option<Secret>,
    tls: Option<(PathBuf, PathBuf)>,
}

impl ConfigFile {
    /// Reads TOML text into the file form. A syntax error names the line and column; a type
    /// or value error (and an unknown or missing key) names the field's path, e.g.
    /// `clusters[1].priority`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" (line {line}, column {column})")
                })
                .unwrap_or_default();
            ConfigError::new("file", format!("{}{at}", e.message().trim_end()))
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().trim_end().to_owned();
            ConfigError::new(field_path(&path, &message), message)
        })
    }

    /// The file as TOML text (what the lab and the tests write for their coordinators).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::new("file", e.to_string()))
    }

    /// Validates every section, applying the environment overrides; relative paths are
    /// resolved against `base`.
    pub fn validate(self, base: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let service = self.service(base, env)?;
        let (store, store_buffer) = self.store.validate(base, env)?;
        let namespace = || {
            env.var(ENV_NAMESPACE)
                .or_else(|| self.coordination.namespace.clone())
                .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let adopt_group = match self.coordination.adopt_group.as_deref().map(str::trim) {
            None => None,
            Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(id.to_ascii_lowercase())
            }
            Some(other) => {
                return Err(ConfigError::new(
                    "coordination.adopt_group",
                    format!(
                        "{other:?} is not a group identity (32 hex digits, as a refusal names it)"
                    ),
                ));
            }
        };
        let coordination = self.coordination.validate(base, env, namespace())?;
        let traffic = self.traffic.validate(namespace())?;
        let policy = self.policy.validate()?;
        let (clusters, initial_primary) = validate_clusters(self.clusters, &traffic)?;
        Ok(Config {
            listen: service.listen,
            id: service.id,
            token: service.token,
            vault_token: service.vault_token,
            tls: service.tls,
            store,
            store_buffer,
            coordination,
            traffic,
            policy,
            clusters,
            initial_primary,
            adopt_group,
        })
    }

    fn service(&self, base: &Path, env: &dyn Env) -> Result<ServiceSettings, ConfigError> {
        let listen = match env.var(ENV_LISTEN).or_else(|| self.listen.clone()) {
            Some(text) => socket("listen", &text)?,
            None => SocketAddr::from(([0, 0, 0, 0], 8300)),
        };
        let id = env
            .var(ENV_ID)
            .or_else(|| self.id.clone())
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
            .or_else(|| self.token_file.clone())
            .ok_or_else(|| {
                ConfigError::new("token_file", "required: the agents' bearer token file")
            })?;
        let token = read_secret("token_file", &resolve(base, token_file))?;
        let vault_token = match env
            .var(ENV_VAULT_TOKEN_FILE)
            .map(PathBuf::from)
            .or_else(|| self.vault_token_file.clone())
        {
            Some(p) => Some(read_secret("vault_token_file", &resolve(base, p))?),
            None => None,
        };
        let tls = match &self.tls {
            Some(t) => {
                let c = resolve(base, t.cert_file.clone());
                let k = resolve(base, t.key_file.clone());
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
        Ok(ServiceSettings {
            listen,
            id,
            token,
            vault_token,
            tls,
        })
    }
}

impl StoreFile {
    fn validate(self, base: &Path, env: &dyn Env) -> Result<(StoreConfig, usize), ConfigError> {
        let store = match env.var(ENV_MONGODB_URI).or(self.mongodb_uri) {
            Some(uri) => {
                if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                    return Err(ConfigError::new(
                        "store.mongodb_uri",
                        "must start with mongodb:// or mongodb+srv://",
                    ));
                }
                StoreConfig::Mongo {
                    uri: Secret::new(uri),
                    database: self.database.unwrap_or_else(|| "vault_dr".into()),
                }
            }
            None => StoreConfig::Embedded {
                path: resolve(
                    base,
                    env.var(ENV_STORE_PATH)
                        .map(PathBuf::from)
                        .or(self.path)
                        .unwrap_or_else(|| "vault-dr.sqlite".into()),
                ),
            },
        };
        let buffer = self.buffer.unwrap_or(10_000);
        if buffer == 0 {
            return Err(ConfigError::new(
                "store.buffer",
                "must be greater than zero",
            ));
        }
        Ok((store, buffer))
    }
}

impl CoordinationFile {
    fn validate(
        &self,
        base: &Path,
        env: &dyn Env,
        namespace: Option<String>,
    ) -> Result<CoordinationConfig, ConfigError> {
        let lease_duration = positive(
            "coordination.lease_duration",
            self.lease_duration,
            Duration::from_secs(5),
        )?;
        let renew_period = positive(
            "coordination.renew_period",
            self.renew_period,
            Duration::from_millis(1500),
        )?;
        if renew_period >= lease_duration {
            return Err(ConfigError::new(
                "coordination.renew_period",
                "must be shorter than coordination.lease_duration",
            ));
        }
        if self.backend == CoordinationBackend::Local && self.pod_selector.is_some() {
            return Err(ConfigError::new(
                "coordination.pod_selector",
                "labels the leader's pod: only with backend = \"kubernetes\"",
            ));
        }
        Ok(match self.backend {
            CoordinationBackend::Local => CoordinationConfig::Local {
                path: resolve(
                    base,
                    env.var(ENV_COORDINATION_PATH)
                        .map(PathBuf::from)
                        .or_else(|| self.path.clone())
                        .unwrap_or_else(|| "vault-dr.coordination.json".into()),
                ),
                lease_duration,
                renew_period,
            },
            CoordinationBackend::Kubernetes => CoordinationConfig::Kubernetes {
                namespace: namespace.ok_or_else(|| {
                    ConfigError::new(
                        "coordination.namespace",
                        format!("required outside a pod (or set {ENV_NAMESPACE})"),
                    )
                })?,
                pod_selector: match self.pod_selector.as_deref().map(str::trim) {
                    None => None,
                    Some(s) if s.is_empty() || s.contains(char::is_whitespace) => {
                        return Err(ConfigError::new(
                            "coordination.pod_selector",
                            format!("{s:?} is not a label selector (key=value[,key=value...])"),
                        ));
                    }
                    Some(s) => Some(s.to_owned()),
                },
                lease_name: self
                    .lease_name
                    .clone()
                    .unwrap_or_else(|| "vault-dr-coordinator".into()),
                configmap_name: self
                    .configmap_name
                    .clone()
                    .unwrap_or_else(|| "vault-dr-topology".into()),
                lease_duration,
                renew_period,
            },
        })
    }
}

impl TrafficFile {
    fn validate(&self, namespace: Option<String>) -> Result<TrafficConfig, ConfigError> {
        let listen = || {
            let text = self.listen.as_deref().ok_or_else(|| {
                ConfigError::new("traffic.listen", "required with backend = \"local\"")
            })?;
            socket("traffic.listen", text)
        };
        Ok(match self.backend {
            None if self.listen.is_some() => TrafficConfig::Local { listen: listen()? },
            None | Some(TrafficBackend::None) => TrafficConfig::None,
            Some(TrafficBackend::Local) => TrafficConfig::Local { listen: listen()? },
            Some(TrafficBackend::Kubernetes) => TrafficConfig::Kubernetes {
                namespace: self.namespace.clone().or(namespace).ok_or_else(|| {
                    ConfigError::new("traffic.namespace", "required outside a pod")
                })?,
                service: self.service.clone().ok_or_else(|| {
                    ConfigError::new("traffic.service", "required with backend = \"kubernetes\"")
                })?,
            },
        })
    }
}

impl PolicyFile {
    fn validate(self) -> Result<Policy, ConfigError> {
        let d = Policy::default();
        let p = Policy {
            probe_interval: positive(
                "policy.probe_interval",
                self.probe_interval,
                d.probe_interval,
            )?,
            probe_timeout: positive("policy.probe_timeout", self.probe_timeout, d.probe_timeout)?,
            confirm: self.confirm.unwrap_or(d.confirm),
            report_ttl: positive("policy.report_ttl", self.report_ttl, d.report_ttl)?,
            max_lag_entries: self.max_lag_entries,
            max_lag: positive("policy.max_lag", self.max_lag, d.max_lag)?,
            // A zero cooldown is allowed (tests, drills); it disables anti-flap.
            cooldown: self.cooldown.unwrap_or(d.cooldown),
            quorum: self.quorum.unwrap_or(d.quorum),
            report_retention: positive(
                "policy.report_retention",
                self.report_retention,
                d.report_retention,
            )?,
            promotion: self.promotion.unwrap_or(d.promotion),
            promote_timeout: positive(
                "policy.promote_timeout",
                self.promote_timeout,
                d.promote_timeout,
            )?,
            degraded: None,
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
        let degraded = match self.degraded {
            Some(f) => f.validate(p.probe_interval)?,
            None => None,
        };
        Ok(Policy { degraded, ..p })
    }
}

impl ClusterFile {
    /// Checks one cluster (`clusters[i]`) on its own.
    fn validate(self, i: usize, traffic: &TrafficConfig) -> Result<ClusterConfig, ConfigError> {
        let f = |name: &str| format!("clusters[{i}].{name}");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(ConfigError::new(
                f("name"),
                format!(
                    "{:?} must be non-empty letters, digits, '-' or '_'",
                    self.name
                ),
            ));
        }
        if self.api_addrs.is_empty() {
            return Err(ConfigError::new(
                f("api_addrs"),
                "at least one address is needed",
            ));
        }
        let mut api_addrs = Vec::new();
        for (j, a) in self.api_addrs.iter().enumerate() {
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
        if self.nodes.is_empty() {
            return Err(ConfigError::new(
                f("nodes"),
                "at least one node name is needed (the agents' --node)",
            ));
        }
        let mut seen = HashSet::new();
        for (j, n) in self.nodes.iter().enumerate() {
            if n.is_empty() || !seen.insert(n) {
                return Err(ConfigError::new(
                    f(&format!("nodes[{j}]")),
                    format!("{n:?} is empty or repeated"),
                ));
            }
        }
        if matches!(traffic, TrafficConfig::Kubernetes { .. }) && self.selector.is_empty() {
            return Err(ConfigError::new(
                f("selector"),
                "required with traffic.backend = \"kubernetes\" (pod labels of this cluster)",
            ));
        }
        Ok(ClusterConfig {
            name: self.name,
            api_addrs,
            nodes: self.nodes,
            priority: self.priority,
            excluded: self.excluded,
            selector: self.selector,
        })
    }
}

/// Checks every cluster and the group: at least two, unique names, exactly one primary, which
/// is not excluded. Returns the clusters in file order and the initial primary.
fn validate_clusters(
    files: Vec<ClusterFile>,
    traffic: &TrafficConfig,
) -> Result<(Vec<ClusterConfig>, String), ConfigError> {
    if files.len() < 2 {
        return Err(ConfigError::new(
            "clusters",
            "at least two clusters (one primary, one secondary) are needed",
        ));
    }
    let mut names = HashSet::new();
    let mut clusters = Vec::new();
    let mut primaries = Vec::new();
    for (i, c) in files.into_iter().enumerate() {
        let role = c.role;
        let cluster = c.validate(i, traffic)?;
        if !names.insert(cluster.name.clone()) {
            return Err(ConfigError::new(
                format!("clusters[{i}].name"),
                format!("{:?} is used by two clusters", cluster.name),
            ));
        }
        if role == ClusterRole::Primary {
            primaries.push(cluster.name.clone());
        }
        clusters.push(cluster);
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
    Ok((clusters, initial_primary))
}
