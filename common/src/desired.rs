//! The coordinator's answer to a report: what the node's agent should make true.

use serde::{Deserialize, Serialize};
use std::fmt;
use url::Url;

/// Role of a cluster in the DR group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes client traffic; the source of replication.
    Primary,
    /// Replicates from the primary; a failover candidate.
    Secondary,
}

impl Role {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Desired state of one node, returned in the response to its report.
///
/// Agents keep the newest one (highest `term`) and ignore any with a lower term: the term is
/// the fencing token of the whole system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Current term of the DR group.
    pub term: u64,
    /// The node's cluster.
    pub cluster: String,
    /// Role of the node's cluster in this term.
    pub role: Role,
    /// Name of the primary cluster in this term.
    pub primary: String,
    /// API address of the primary cluster: what a secondary probes (as an observer) and
    /// replicates from. `None` on the primary itself.
    pub primary_api_addr: Option<Url>,
    /// Whether a failover is in progress. Agents keep probing and reporting but start no
    /// restore or pull of their own meanwhile; only the promotion target acts (promoting).
    #[serde(default)]
    pub failover_in_progress: bool,
    /// How the target of a promotion gets its data (shown in the decision).
    #[serde(default)]
    pub promotion: PromotionMode,
    /// Planned switchover only: before promoting, the target pulls one final snapshot from this
    /// address (the old primary, with client traffic already cut) and restores it, so that no
    /// acknowledged write is lost. `None` in an unplanned failover.
    #[serde(default)]
    pub final_snapshot_from: Option<Url>,
    /// Whether the leader suspects the primary: on at least one tick all three observers said
    /// it is down, and the confirm count is not reached yet (no failover is decided). Meanwhile
    /// agents report at the failover pace, and a secondary whose `complete` promotion would
    /// restore a held snapshot starts that restore now (restore ahead): its data is replaced at
    /// a promotion anyway, and OpenBao blocks a node for seconds per restore.
    #[serde(default)]
    pub primary_suspect: bool,
    /// Raft replication (`--replication raft`): the term in which the raft that `primary`
    /// leads was formed (the initial term, or the term of the failover whose promotion made
    /// `primary`'s nodes its voters). A node whose data belongs to that raft may start as it
    /// is; any other data is quarantined before the node starts (or recovered, on the target of
    /// the promotion). `None` while no such raft exists yet (a failover to `primary` that has
    /// not promoted it): a node that does not belong waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_formed_term: Option<u64>,
    /// Raft replication, on the target of a failover: the one node of it that forms the new
    /// raft by recovery; its other nodes wait for the end of the failover, then join it.
    /// `None`: every node of the target recovers (one-node clusters, or no node reported a
    /// raft log when the term was raised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_recover_node: Option<String>,
    /// Raft replication: the cluster whose nodes formed the raft `primary` leads, when it is
    /// not `primary` itself (the raft was handed over to `primary` by a planned switchover
    /// inside it, [`DesiredState::raft_handover`]). A node's data belongs to the raft of the
    /// lineage `(raft_formed_term, raft_formed_by or else primary)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_formed_by: Option<String>,
    /// Raft replication: the failover in progress is a planned switchover inside the raft
    /// (a handover): the target's nodes are made voters and the leadership is moved to one of
    /// them, with no recovery and no restore. Every node stays in the raft it is in, and every
    /// node forwards client requests to the raft's leader meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raft_handover: bool,
}

/// What a promoted secondary restores before it takes traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionMode {
    /// Restore the newest snapshot held when it is newer than the node's data (always so with
    /// `restore: on-promotion`): fewer writes lost, a restore (~5 s) longer.
    #[default]
    Complete,
    /// Promote what the node already has: lowest RTO, more writes lost.
    Fast,
}

impl PromotionMode {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Fast => "fast",
        }
    }
}

impl fmt::Display for PromotionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
