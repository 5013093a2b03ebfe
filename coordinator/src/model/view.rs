//! The [`View`]: the leader's immutable snapshot of every cluster at one instant, built once per
//! tick from the latest reports, the coordinator's own probes and the topology.

use crate::model::topology::Topology;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vault_dr_common::{NodeState, Report, Role};

/// Everything the detector and scorer may look at, frozen at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The instant the view was built.
    pub at: DateTime<Utc>,
    /// The topology as read at `at`.
    pub topology: Topology,
    /// Every configured cluster by name.
    pub clusters: BTreeMap<String, ClusterView>,
    /// Since when this coordinator leads and collects reports (`None`: not leading, or a
    /// view built for a test or the API). Reports count as an observer one report TTL after
    /// it, or as soon as every node of the primary has reported since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observing_since: Option<DateTime<Utc>>,
}

/// One cluster as seen by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Cluster name.
    pub name: String,
    /// Role in the current topology.
    pub role: Role,
    /// Operator's priority (higher wins ties).
    pub priority: i32,
    /// Excluded from promotion by the operator.
    pub excluded: bool,
    /// The coordinator's own probe of the cluster's API (the second observer); `None` before
    /// the first probe.
    pub direct_probe: Option<DirectProbe>,
    /// The coordinator's last [`PROBE_WINDOW`] probes of the cluster: p50, p99 and the failed
    /// fraction, as this replica measured them (the agents' own are in their reports).
    #[serde(default)]
    pub probe_latency: vault_dr_common::LatencySummary,
    /// The same over its newest [`vault_dr_common::latency::RECENT_PROBES`] probes.
    #[serde(default)]
    pub probe_recent: vault_dr_common::LatencySummary,
    /// Latest report of each configured node that has reported at all.
    pub nodes: Vec<NodeView>,
    /// How many nodes the configuration names (0 when unknown: a view from an older build).
    #[serde(default)]
    pub configured_nodes: usize,
}

/// How many of its own probes of a cluster the coordinator keeps for
/// [`ClusterView::probe_latency`] (two minutes at the default 1 s probe interval, as the
/// agents' window).
pub const PROBE_WINDOW: usize = 120;

/// The coordinator's own probe of one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectProbe {
    /// Classified state (the best answer over the cluster's API addresses).
    pub state: NodeState,
    /// When the probe finished.
    pub at: DateTime<Utc>,
    /// Latency in milliseconds, when it answered.
    pub latency_ms: Option<f64>,
    /// Short error kind when it did not answer as serving.
    pub error: Option<String>,
}

/// The latest report of one node and when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub node: String,
    /// When the coordinator received the report.
    pub received_at: DateTime<Utc>,
    /// The report.
    pub report: Report,
}

impl NodeView {
    /// Age of the report at `now`, in seconds.
    pub fn age_seconds(&self, now: DateTime<Utc>) -> f64 {
        (now - self.received_at).num_milliseconds().max(0) as f64 / 1000.0
    }
}

impl ClusterView {
    /// Reports younger than `ttl_seconds` at `now`.
    pub fn fresh_nodes(
        &self,
        now: DateTime<Utc>,
        ttl_seconds: f64,
    ) -> impl Iterator<Item = &NodeView> {
        self.nodes
            .iter()
            .filter(move |n| n.age_seconds(now) <= ttl_seconds)
    }

    /// The node whose report says it is the active node of its cluster, freshest first.
    pub fn active_node(&self, now: DateTime<Utc>, ttl_seconds: f64) -> Option<&NodeView> {
        self.fresh_nodes(now, ttl_seconds)
            .filter(|n| n.report.vault.state == NodeState::Active)
            .min_by(|a, b| a.age_seconds(now).total_cmp(&b.age_seconds(now)))
    }
}
