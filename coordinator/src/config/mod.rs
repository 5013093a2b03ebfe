//! Configuration of the coordinator: the DR group (clusters, initial primary, policy) and the
//! service settings, from a TOML file plus `VAULT_DR_*` environment overrides, validated once.
//! Every error names the field, and `main` turns it into exit code 64.

use crate::model::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;
use vault_dr_common::Secret;

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
pub(crate) const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
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

mod file;

pub use file::{
    ClusterFile, ClusterRole, ConfigFile, CoordinationBackend, CoordinationFile, DegradedFile,
    PolicyFile, StoreFile, TlsFile, TrafficBackend, TrafficFile,
};

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
        /// Label selector of the group's pods: the leader labels its own pod
        /// (`crate::coordination::leader_pod`). `None`: no pod is labelled.
        pod_selector: Option<String>,
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
    /// `[coordination] adopt_group`: the group identity to take over (see `crate::group`).
    pub adopt_group: Option<String>,
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
        ConfigFile::parse(text)?.validate(base, env)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_dr_common::PromotionMode;

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
    fn a_pod_selector_needs_the_kubernetes_backend_and_a_label_selector() {
        let local = format!("[coordination]\npod_selector = \"app=vault-dr\"\n{GOOD}");
        assert_eq!(field_of(&local), "coordination.pod_selector");
        let k8s = |selector: &str| {
            format!(
                "[coordination]\nbackend = \"kubernetes\"\nnamespace = \"vault\"\npod_selector = {selector:?}\n{GOOD}"
            )
        };
        assert_eq!(
            field_of(&k8s("app = vault-dr")),
            "coordination.pod_selector"
        );
        assert_eq!(field_of(&k8s("")), "coordination.pod_selector");
        match parse(&k8s("app=vault-dr,component=coordinator"))
            .unwrap()
            .coordination
        {
            CoordinationConfig::Kubernetes { pod_selector, .. } => assert_eq!(
                pod_selector.as_deref(),
                Some("app=vault-dr,component=coordinator")
            ),
            other => panic!("{other:?}"),
        }
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

    /// `GOOD` with a `[policy.degraded]` section holding `body`.
    fn degraded(body: &str) -> String {
        GOOD.replace(
            "cooldown = \"0s\"\n",
            &format!("cooldown = \"0s\"\n[policy.degraded]\n{body}\n"),
        )
    }

    #[test]
    fn the_degraded_rule_is_off_by_default_and_on_with_its_section() {
        assert_eq!(parse(GOOD).unwrap().policy.degraded, None);
        let on = parse(&degraded("")).unwrap().policy.degraded;
        assert_eq!(on, Some(crate::model::policy::DegradedPolicy::default()));
        assert_eq!(
            parse(&degraded("enabled = false")).unwrap().policy.degraded,
            None
        );
        let p = parse(&degraded(
            "window = \"30s\"\nlatency_p99 = \"1s\"\nlatency_p99_clear = \"400ms\"\nerror_ratio = 0.2\nerror_ratio_clear = 0.1\nworse_factor = 2.0\nmax_per_day = 5",
        ))
        .unwrap()
        .policy
        .degraded
        .unwrap();
        assert_eq!(p.window, Duration::from_secs(30));
        assert_eq!(p.latency_p99_clear, Duration::from_millis(400));
        assert_eq!(
            (p.error_ratio, p.worse_factor, p.max_per_day),
            (0.2, 2.0, 5)
        );
    }

    #[test]
    fn degraded_thresholds_out_of_range_or_a_short_window_name_their_field() {
        for (body, field) in [
            // probe_interval is 500 ms in GOOD: three intervals are 1.5 s.
            ("window = \"1s\"", "policy.degraded.window"),
            ("latency_p99 = \"0s\"", "policy.degraded.latency_p99"),
            ("latency_p99 = \"soon\"", "policy.degraded.latency_p99"),
            (
                "latency_p99 = \"200ms\"\nlatency_p99_clear = \"300ms\"",
                "policy.degraded.latency_p99_clear",
            ),
            ("error_ratio = 0.0", "policy.degraded.error_ratio"),
            ("error_ratio = 1.5", "policy.degraded.error_ratio"),
            (
                "error_ratio_clear = 0.5",
                "policy.degraded.error_ratio_clear",
            ),
            (
                "error_ratio_clear = -0.1",
                "policy.degraded.error_ratio_clear",
            ),
            ("worse_factor = 0.5", "policy.degraded.worse_factor"),
            ("max_per_day = 0", "policy.degraded.max_per_day"),
            ("surprise = 1", "policy.degraded.surprise"),
        ] {
            assert_eq!(field_of(&degraded(body)), field, "{body}");
        }
        assert!(parse(&degraded("window = \"1500ms\"")).is_ok());
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

    #[test]
    fn type_and_key_errors_name_the_path_of_the_field() {
        let cases = [
            (
                "priority = 5",
                "priority = \"high\"",
                "clusters[1].priority",
            ),
            (
                "confirm = 2",
                "confirm = 2\nsurprise = 1",
                "policy.surprise",
            ),
            ("confirm = 2", "confirm = -1", "policy.confirm"),
            (
                "probe_interval = \"500ms\"",
                "probe_interval = 5",
                "policy.probe_interval",
            ),
            ("name = \"dc2\"", "", "clusters[1].name"),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from} is in the fixture");
            assert_eq!(field_of(&text), field, "{to}");
        }
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let e = ConfigFile::parse("listen = \"a\"\n[policy\n").unwrap_err();
        assert_eq!(e.field, "file");
        assert!(e.message.contains("line 2"), "{e}");
    }

    #[test]
    fn a_file_written_from_the_type_reads_back_the_same() {
        let file = ConfigFile::parse(GOOD).unwrap();
        let text = file.to_toml().unwrap();
        assert_eq!(ConfigFile::parse(&text).unwrap(), file, "{text}");
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_token(dir.path());
        let a = Config::parse(GOOD, dir.path(), &env).unwrap();
        let b = Config::parse(&text, dir.path(), &env).unwrap();
        assert_eq!((a.policy, a.clusters), (b.policy, b.clusters));
    }
}
