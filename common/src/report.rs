//! The report an agent sends to the coordinator every interval (`POST /v1/reports`).
//!
//! Every numeric field carries its unit in its name. The coordinator rejects a report whose
//! `schema_version` it does not know, so any incompatible change here must raise
//! [`SCHEMA_VERSION`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the report format. Raised on every incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// One agent's view of its node, host and replication at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Must equal [`SCHEMA_VERSION`] for the coordinator to accept it.
    pub schema_version: u32,
    /// DR cluster this node belongs to (a name in the coordinator's group config).
    pub cluster: String,
    /// Node name, unique within its cluster (the pod name in Kubernetes).
    pub node: String,
    /// Per-agent-process sequence number, raised by one for every report sent. With
    /// `agent_started_at` it lets the coordinator drop replayed or reordered reports.
    pub seq: u64,
    /// When this agent process started (identifies the sequence).
    pub agent_started_at: DateTime<Utc>,
    /// When the report was assembled, by the agent's clock.
    pub sent_at: DateTime<Utc>,
    /// Agent version (crate version).
    pub agent_version: String,
    /// The local Vault/OpenBao node as the agent probed it.
    pub vault: VaultStatus,
    /// CPU and memory of the node's container, process or host.
    pub host: HostStats,
    /// Cross-cluster replication as seen from this node.
    pub replication: ReplicationStatus,
    /// The agent's own probe of the current primary (the third observer of failure detection).
    /// `None` when the agent does not know the primary yet or is on the primary itself.
    #[serde(default)]
    pub primary_probe: Option<PeerProbe>,
    /// Highest term this agent has seen in a desired state (0 before the first answer).
    #[serde(default)]
    pub seen_term: u64,
    /// Highest term whose desired state this agent has carried out: as the promotion target,
    /// restored (per the promotion mode), unsealed and canary-written; as a secondary,
    /// following (pulling from) that term's primary. The coordinator's promotion step waits for
    /// this, not for `seen_term`.
    #[serde(default)]
    pub applied_term: u64,
}

/// What `GET sys/health` (and friends) say about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Unsealed active node of its cluster (HTTP 200).
    Active,
    /// Unsealed HA standby (HTTP 429).
    Standby,
    /// Vault Enterprise performance standby (HTTP 473).
    PerformanceStandby,
    /// Initialised but sealed (HTTP 503).
    Sealed,
    /// Not initialised (HTTP 501).
    Uninitialized,
    /// A snapshot restore is in progress: requests block for several seconds by design. The
    /// coordinator must not mistake this for a dead node.
    Restoring,
    /// No HTTP answer at all: refused, reset or timed out.
    Unreachable,
    /// An answer that fits none of the above (5xx other than 503, garbage body).
    Error,
}

impl NodeState {
    /// Whether the node is unsealed and serving (active or some kind of standby).
    pub fn is_serving(self) -> bool {
        matches!(
            self,
            Self::Active | Self::Standby | Self::PerformanceStandby
        )
    }

    /// Classifies the HTTP status of `GET /v1/sys/health` (with default query parameters):
    /// 200 active, 429 standby, 473 performance standby, 501 uninitialised, 503 sealed;
    /// anything else is an error.
    pub fn from_health_status(status: u16) -> Self {
        match status {
            200 => Self::Active,
            429 => Self::Standby,
            473 => Self::PerformanceStandby,
            501 => Self::Uninitialized,
            503 => Self::Sealed,
            _ => Self::Error,
        }
    }

    /// Stable lower-case name, as used in metrics labels and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Standby => "standby",
            Self::PerformanceStandby => "performance_standby",
            Self::Sealed => "sealed",
            Self::Uninitialized => "uninitialized",
            Self::Restoring => "restoring",
            Self::Unreachable => "unreachable",
            Self::Error => "error",
        }
    }

    /// Every state, in a fixed order (for one-hot gauges).
    pub const ALL: [NodeState; 8] = [
        Self::Active,
        Self::Standby,
        Self::PerformanceStandby,
        Self::Sealed,
        Self::Uninitialized,
        Self::Restoring,
        Self::Unreachable,
        Self::Error,
    ];
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rolling-window summary of the agent's own probe latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Probes in the window.
    pub samples: u32,
    /// Median probe latency over successful probes, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile probe latency over successful probes, in milliseconds.
    pub p99_ms: f64,
    /// Fraction of probes in the window that failed (0.0..=1.0).
    pub error_ratio: f64,
}

/// The local Vault/OpenBao node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultStatus {
    /// Classified health.
    pub state: NodeState,
    /// Latency of the latest probe, in milliseconds (`None` when it got no answer).
    pub last_probe_ms: Option<f64>,
    /// Rolling window of probe latencies.
    pub latency: LatencySummary,
    /// The same over the newest [`crate::latency::RECENT_PROBES`] probes (absent from older
    /// agents: zero samples, no evidence).
    #[serde(default)]
    pub recent: LatencySummary,
    /// Server version string from `sys/health`.
    pub version: Option<String>,
    /// `cluster_id` from `sys/health` (absent while sealed).
    pub cluster_id: Option<String>,
    /// `cluster_name` from `sys/health` (absent while sealed).
    pub cluster_name: Option<String>,
    /// Raft applied index (from `sys/leader`), when readable.
    pub raft_applied_index: Option<u64>,
    /// Raft commit index (from `sys/leader`), when readable.
    pub raft_commit_index: Option<u64>,
    /// Autopilot health (`sys/storage/raft/autopilot/state`), when the token allows.
    pub autopilot_healthy: Option<bool>,
    /// Short error kind of the latest failed probe (bounded vocabulary, no secrets).
    pub last_error: Option<String>,
}

/// CPU and memory figures of the node alone: its container's cgroup v2, or its own server
/// process. A figure the agent cannot attribute to its node is `None` (a dead process, or
/// several servers on one host and no way to tell which is this node's), never another
/// process's or the whole host's.
///
/// Wire compatibility: every figure is optional and defaults to `None`, so reports of older
/// agents (plain numbers) still load. An older coordinator rejects only the reports whose
/// figures are unknown (`null`, source `unknown`), hence coordinators are upgraded first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Where the figures come from.
    pub source: HostSource,
    /// The server process the figures are of (source `process`), or the one that was found
    /// for the memory of a cgroup without memory controller.
    #[serde(default)]
    pub pid: Option<u32>,
    /// CPU used over the last interval, in cores (1.0 = one core fully busy); `None` until
    /// two readings of the same container or process gave a rate.
    #[serde(default)]
    pub cpu_usage_cores: Option<f64>,
    /// Cumulative CPU time of the container or process, in seconds.
    #[serde(default)]
    pub cpu_seconds_total: Option<f64>,
    /// Memory in use, in bytes.
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
    /// Memory limit (the cgroup's `memory.max`, else the host's total), in bytes; `None` when
    /// unlimited, or unknown with the memory in use.
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
}

impl HostStats {
    /// No figures: the agent cannot tell which process is its node's, or it is gone.
    pub const UNKNOWN: Self = Self {
        source: HostSource::Unknown,
        pid: None,
        cpu_usage_cores: None,
        cpu_seconds_total: None,
        memory_used_bytes: None,
        memory_limit_bytes: None,
    };

    /// Whether the figures are the node's own (its container or process). Host-wide figures,
    /// which older agents sent when they found no process, are other processes' too.
    pub fn is_node_own(&self) -> bool {
        matches!(self.source, HostSource::Cgroup | HostSource::Process)
    }

    /// CPU cores in use by the node, when known and its own.
    pub fn node_cpu_cores(&self) -> Option<f64> {
        self.cpu_usage_cores.filter(|_| self.is_node_own())
    }

    /// Memory in use by the node, in bytes, when known and its own.
    pub fn node_memory_bytes(&self) -> Option<u64> {
        self.memory_used_bytes.filter(|_| self.is_node_own())
    }

    /// Fraction of the memory limit still free (1.0 when unlimited); `None` when the memory
    /// in use is unknown or not the node's own.
    pub fn memory_headroom_ratio(&self) -> Option<f64> {
        let used = self.node_memory_bytes()?;
        Some(match self.memory_limit_bytes {
            Some(limit) if limit > 0 => 1.0 - (used as f64 / limit as f64).clamp(0.0, 1.0),
            _ => 1.0,
        })
    }
}

/// Origin of [`HostStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostSource {
    /// cgroup v2 files of the agent's container (`cpu.stat`, `memory.current`, `memory.max`).
    Cgroup,
    /// The node's server process: from its pid file, the process listening on the node's
    /// address, or the only one running with its name.
    Process,
    /// The whole host. Sent only by older agents (they fell back to it when they found no
    /// process); the figures are not the node's own, so they count as unknown.
    Host,
    /// No figures: no process of the node (it is down), or no way to tell which one is.
    #[default]
    Unknown,
}

impl HostSource {
    /// Stable lower-case name, as used in the metrics label and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Process => "process",
            Self::Host => "host",
            Self::Unknown => "unknown",
        }
    }
}

/// Which replication mechanism a node takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// No replication (OpenBao answers 404 on `sys/replication/*`).
    #[default]
    None,
    /// vault-dr's raft-snapshot shipping.
    Snapshot,
    /// The group is one raft: this node is a voter of the primary cluster or a non-voter of
    /// a secondary (vault-dr's zero-loss mode).
    Raft,
    /// Vault Enterprise DR replication.
    EnterpriseDr,
    /// Vault Enterprise performance replication.
    EnterprisePerformance,
}

/// Replication as seen from one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// Mechanism in use.
    pub mode: ReplicationMode,
    /// Whether this node holds data replicated from the primary at least once.
    pub seeded: bool,
    /// How far behind the primary this node's data is, in raft log entries (or WALs).
    pub lag_entries: Option<u64>,
    /// Age of the newest replicated data, in seconds.
    pub lag_seconds: Option<f64>,
    /// Raft index of the newest replicated data this node holds (snapshot index or WAL).
    pub replicated_index: Option<u64>,
    /// Enterprise: `state` of the replication status (e.g. `stream-wals`).
    pub state: Option<String>,
    /// Enterprise: `connection_state` (e.g. `ready`).
    pub connection_state: Option<String>,
    /// Enterprise: `last_wal` (primary) or `last_remote_wal` (secondary).
    pub last_wal: Option<u64>,
    /// Enterprise: `last_remote_wal` of a secondary.
    pub last_remote_wal: Option<u64>,
    /// When replication last succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Short kind of the latest replication error.
    pub last_error: Option<String>,
    /// Snapshot backend: raft index of the snapshot last restored into this node (`None` when
    /// the agent never restored one).
    #[serde(default)]
    pub restored_index: Option<u64>,
    /// Snapshot backend: when the snapshot last restored into this node was taken (its pull
    /// finished), the age of the data the node serves (`None` when it never restored one, or
    /// from an agent that predates this field).
    #[serde(default)]
    pub restored_taken_at: Option<DateTime<Utc>>,
    /// Snapshot backend: whether a `complete` promotion of this node would still restore a
    /// held snapshot once the restore in flight (if any) ends: the newest held is newer than
    /// the one the node serves or is restoring. The scorer prefers a standby with nothing left
    /// to restore (`false` from an agent that predates this field).
    #[serde(default)]
    pub promotion_restores: bool,
    /// Snapshot backend: path of the newest quarantine snapshot, the diverged data a returning
    /// ex-primary saved before it was turned into a secondary.
    #[serde(default)]
    pub quarantined: Option<String>,
    /// Raft backend: the node's last log index (`raft_committed_index` of its own `sys/leader`,
    /// which OpenBao reads from the log's last entry). Among nodes of one raft whose leader is
    /// gone, the highest holds every committed entry a quorum including it acknowledged: the
    /// scorer ranks by it first.
    #[serde(default)]
    pub log_index: Option<u64>,
    /// Raft backend: how the node joins a raft (its agent's `--raft-suffrage`): `auto` (a
    /// voter while its cluster is the primary), `voter` (a DR voter of the synchronous layout)
    /// or `non-voter`. A handover leaves a node outside its target a voter exactly when this
    /// is `voter`, and a node of the target a non-voter when it is `non-voter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_suffrage: Option<String>,
}

/// An agent's own probe of another cluster (the primary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerProbe {
    /// Cluster name of the probed peer.
    pub cluster: String,
    /// Classified state of the peer's health endpoint.
    pub state: NodeState,
    /// When the probe finished.
    pub at: DateTime<Utc>,
    /// Latency in milliseconds, when it answered.
    pub latency_ms: Option<f64>,
}

impl PeerProbe {
    /// Whether the peer answered as a serving node.
    pub fn reachable(&self) -> bool {
        self.state.is_serving()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            cluster: "dc1".into(),
            node: "dc1-0".into(),
            seq: 7,
            agent_started_at: Utc::now(),
            sent_at: Utc::now(),
            agent_version: "0.1.0".into(),
            vault: VaultStatus {
                state: NodeState::Active,
                last_probe_ms: Some(1.5),
                latency: LatencySummary {
                    samples: 10,
                    p50_ms: 1.0,
                    p99_ms: 3.0,
                    error_ratio: 0.0,
                },
                recent: Default::default(),
                version: Some("2.7.2".into()),
                cluster_id: Some("abc".into()),
                cluster_name: Some("dr-dc1".into()),
                raft_applied_index: Some(42),
                raft_commit_index: Some(42),
                autopilot_healthy: Some(true),
                last_error: None,
            },
            host: HostStats {
                source: HostSource::Process,
                pid: Some(4242),
                cpu_usage_cores: Some(0.2),
                cpu_seconds_total: Some(12.0),
                memory_used_bytes: Some(100 << 20),
                memory_limit_bytes: Some(1 << 30),
            },
            replication: ReplicationStatus::default(),
            primary_probe: None,
            seen_term: 1,
            applied_term: 1,
        }
    }

    #[test]
    fn a_report_survives_a_json_round_trip() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(text.contains("\"state\":\"active\""));
    }

    #[test]
    fn a_replication_status_without_restored_taken_at_still_loads() {
        // An agent from before loss accounting sends no `restored_taken_at`.
        let mut v = serde_json::to_value(sample()).unwrap();
        v["replication"]["restored_index"] = serde_json::json!(40);
        v["replication"]
            .as_object_mut()
            .unwrap()
            .remove("restored_taken_at");
        let r: Report = serde_json::from_value(v).unwrap();
        assert_eq!(r.replication.restored_index, Some(40));
        assert_eq!(r.replication.restored_taken_at, None);
    }

    #[test]
    fn unknown_top_level_fields_are_rejected() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Report>(v).is_err());
    }

    #[test]
    fn health_status_codes_classify_as_documented() {
        let table = [
            (200, NodeState::Active),
            (429, NodeState::Standby),
            (473, NodeState::PerformanceStandby),
            (501, NodeState::Uninitialized),
            (503, NodeState::Sealed),
            (500, NodeState::Error),
            (404, NodeState::Error),
        ];
        for (code, want) in table {
            assert_eq!(NodeState::from_health_status(code), want, "status {code}");
        }
    }

    #[test]
    fn memory_headroom_is_the_free_fraction_of_the_limit() {
        let mut h = sample().host;
        h.memory_used_bytes = Some(256 << 20);
        h.memory_limit_bytes = Some(1 << 30);
        assert!((h.memory_headroom_ratio().unwrap() - 0.75).abs() < 1e-9);
        h.memory_limit_bytes = None;
        assert_eq!(h.memory_headroom_ratio(), Some(1.0));
        h.memory_used_bytes = None;
        assert_eq!(
            h.memory_headroom_ratio(),
            None,
            "unknown use, unknown headroom"
        );
    }

    #[test]
    fn figures_that_are_not_the_nodes_own_count_as_unknown() {
        let mut h = sample().host;
        assert_eq!(h.node_cpu_cores(), Some(0.2));
        for source in [HostSource::Host, HostSource::Unknown] {
            h.source = source;
            assert_eq!(h.node_cpu_cores(), None, "{source:?}");
            assert_eq!(h.node_memory_bytes(), None, "{source:?}");
            assert_eq!(h.memory_headroom_ratio(), None, "{source:?}");
        }
        assert_eq!(HostStats::default(), HostStats::UNKNOWN);
    }

    #[test]
    fn host_figures_of_an_older_agent_still_load_and_unknown_ones_are_null() {
        // An agent before optional figures: plain numbers, source `host`, no pid.
        let mut v = serde_json::to_value(sample()).unwrap();
        v["host"] = serde_json::json!({
            "source": "host",
            "cpu_usage_cores": 1.29,
            "cpu_seconds_total": 100.0,
            "memory_used_bytes": 1_181_116_006u64,
            "memory_limit_bytes": 25_000_000_000u64,
        });
        let r: Report = serde_json::from_value(v).unwrap();
        assert_eq!(r.host.source, HostSource::Host);
        assert_eq!(r.host.cpu_usage_cores, Some(1.29));
        assert_eq!(r.host.pid, None);
        assert_eq!(r.host.node_cpu_cores(), None, "the host's, not the node's");
        // Unknown figures go out as nulls with source `unknown`.
        let mut r = sample();
        r.host = HostStats::UNKNOWN;
        let text = serde_json::to_value(&r).unwrap();
        assert_eq!(text["host"]["source"], "unknown");
        assert!(text["host"]["cpu_usage_cores"].is_null());
        assert_eq!(serde_json::from_value::<Report>(text).unwrap(), r);
    }
}
