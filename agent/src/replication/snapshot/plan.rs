//! The snapshot backend's decisions, as pure functions: [`plan`] turns what the agent knows
//! ([`PlanState`]), the desired state, the snapshots held and what the node said
//! ([`NodeFacts`]) into the next [`Action`]; [`after_pull`] decides what becomes of a snapshot
//! just pulled (the one decision that depends on the outcome of IO). No IO, no clock: the
//! [`Shipper`](super::Shipper) gathers the facts, executes the action and logs its `Display`.
//!
//! The rules, each a row of the table tests below:
//! - Nothing is done without a desired state, by a primary whose term is applied, or by a
//!   standby node (the agent of the cluster's active node acts for the cluster).
//! - **Promotion** (role primary, term above the applied one): a node that already was primary
//!   keeps its live data; else a planned switchover restores a final snapshot from the old
//!   primary; else `complete` restores the newest held snapshot newer than the node's data and
//!   not of a term older than the applied one; `fast` keeps the restored data, unless the node
//!   never restored a snapshot: then it restores first, like `complete`.
//! - **Secondary**: nothing while a failover is in progress (only its target acts) or without a
//!   primary address; a pull every `interval`, skipped while the term's primary applied nothing
//!   beyond the newest snapshot held (and, when continuous, restored); a new term is
//!   acknowledged right after its first pull, before a restore blocks the node.
//! - **Returning ex-primary** (primary in an older term): once no failover is in progress it
//!   rejoins at once, whatever the interval: pull, quarantine its own data, restore, and only
//!   then acknowledge the term.
//! - **Sealed, superseded** (its cluster was the primary in an older term, the node sealed for
//!   [`SEALED_GRACE`], no failover in progress): its server is restarted, so that its
//!   auto-unseal seal unseals it and it rejoins. A sealed node that never was primary, or is
//!   primary of the current term, is left sealed: an operator may have sealed it.
//! - **After a pull**: `on-promotion` keeps the snapshot; `continuous` restores it when newer
//!   than the restored one, first quarantining the node's own data if it never restored one.
//! - **Pulls never wait for restores** ([`background_restore`]): a continuous secondary's
//!   restore runs beside the pulls; when it ends, the newest snapshot held is restored next if
//!   it is newer than the one just restored. A promotion or a rejoin first waits for the restore
//!   in flight (OpenBao cannot abort one) and then plans with what it left.

use super::store::SnapshotMeta;
use crate::config::RestoreMode;
use std::fmt;
use std::time::Duration;
use url::Url;
use vault_dr_common::{DesiredState, NodeState, PromotionMode, Role};

/// What the agent knows of itself and its node when it plans, gathered once per tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanState {
    /// Highest term whose desired state was carried out.
    pub applied_term: u64,
    /// The snapshot this agent last restored into the node (its record).
    pub restored: Option<SnapshotMeta>,
    /// The term in which this agent last made the node primary, while its data is not yet
    /// replaced by a primary's (its record).
    pub primary_term: Option<u64>,
    /// When a secondary restores pulled snapshots.
    pub restore: RestoreMode,
    /// Pull interval.
    pub interval: Duration,
    /// Time since the last pull (or skipped pull); `None` before the first.
    pub since_last_pull: Option<Duration>,
    /// The term's primary's raft applied index, when read.
    pub primary_index: Option<u64>,
    /// The snapshot this agent is restoring into the node in the background, if any: pulls
    /// go on meanwhile, and the node (blocked by the restore) is not probed to plan them.
    pub restoring: Option<SnapshotMeta>,
    /// The newest term in which this node's cluster was the primary while this agent watched
    /// it, until the node follows a later term (its record).
    pub was_primary: Option<u64>,
    /// How long the node has been found sealed without a break; `None` when it was not.
    pub sealed_for: Option<Duration>,
}

/// How long a superseded primary's node must stay sealed before its server is restarted: well
/// above the moment a restore seals a node, and above a slow auto-unseal at start.
pub const SEALED_GRACE: Duration = Duration::from_secs(5);

/// What the local node said. Its state is asked for only when the plan needs it (a probe can
/// take seconds while the node is down): [`Action::ProbeNode`] until then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's state, `None` while not probed.
    pub state: Option<NodeState>,
}

/// Why nothing is done this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// The coordinator has not answered yet.
    NoDesiredState,
    /// The node's cluster is the primary of a term already applied.
    PrimaryApplied {
        /// The term.
        term: u64,
    },
    /// The node is not its cluster's active node: that node's agent acts.
    NotActive {
        /// The node's state.
        state: NodeState,
    },
    /// A failover is in progress: only its target acts.
    FailoverInProgress {
        /// The term.
        term: u64,
    },
    /// The desired state names no primary to pull from.
    NoPrimaryAddress,
    /// The next pull is not due yet.
    NotDue {
        /// Time until it is.
        next_in: Duration,
    },
}

/// What a secondary does about its term once a pull worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledge {
    /// A new term: acknowledged as soon as the pull from its primary worked, before a restore
    /// blocks the node for seconds (the coordinator's repoint step waits for it).
    AfterPull,
    /// The term is applied already.
    Applied,
}

/// Why a promotion restores the newest snapshot held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreWhy {
    /// `promotion: complete`: fewer writes lost.
    Complete,
    /// `promotion: fast`, but the node never restored a snapshot: it holds none of the
    /// primary's data, only its snapshots.
    NeverRestored,
}

/// Where a promoted node's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionData {
    /// The node already was primary (this agent made it so in `primary_term`): nothing is
    /// restored over its live data.
    Live {
        /// The term it was made primary in.
        primary_term: u64,
    },
    /// Planned switchover: one final snapshot pulled from the old primary and restored.
    FinalSnapshot {
        /// The old primary.
        from: Url,
    },
    /// The newest of `candidates` (newest first) that passes verification is restored;
    /// none restored when none is held or all are refused.
    RestoreNewest {
        /// Held snapshots newer than the node's data, of term `min_term` or later.
        candidates: Vec<SnapshotMeta>,
        /// The oldest term allowed (the applied one).
        min_term: u64,
        /// Why.
        why: RestoreWhy,
    },
    /// `promotion: fast`: the data restored last is kept.
    KeepRestored {
        /// Its raft index.
        index: u64,
    },
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing, for a reason.
    Idle {
        /// Why.
        reason: Idle,
    },
    /// Probe the local node's state, then plan again.
    ProbeNode,
    /// No pull: the term's primary applied nothing beyond the newest snapshot held (restored
    /// when continuous). Counts as a pull for the interval.
    SkipPull {
        /// Raft index of the newest snapshot held.
        held_index: u64,
        /// The primary's applied index.
        primary_index: u64,
    },
    /// Pull a snapshot from the term's primary, acknowledge the term as said, then act on the
    /// snapshot per [`after_pull`].
    Follow {
        /// The primary.
        from: Url,
        /// The term (also the oldest term a restore accepts).
        term: u64,
        /// When the term is acknowledged.
        acknowledge: Acknowledge,
    },
    /// A returning ex-primary: pull from the term's primary, quarantine the node's own
    /// (diverged) data, restore the pulled snapshot, forget the primary record, and only then
    /// acknowledge the term.
    Rejoin {
        /// The primary.
        from: Url,
        /// The term.
        term: u64,
        /// The term the node was primary in.
        primary_term: u64,
    },
    /// The node of a superseded primary is sealed (vault-dr's fence, or the seal that made it
    /// fail): restart its server, so that its auto-unseal seal unseals it and it rejoins.
    RestartSealed {
        /// The term its cluster was primary in.
        primary_term: u64,
        /// The term it is to follow.
        term: u64,
        /// How long it has been sealed.
        sealed_for: Duration,
    },
    /// Promote the node: wait until it is active, get its data, wait again, write and read
    /// the canary, record the node as primary and acknowledge the term.
    Promote {
        /// The term.
        term: u64,
        /// Where the data comes from.
        data: PromotionData,
    },
}

/// Why the node's own data is saved before a restore replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    /// The node never restored a snapshot: its data is not this agent's.
    NeverRestored,
}

/// Why a pulled snapshot is only kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// `restore: on-promotion`: restored when promoted.
    OnPromotion,
    /// It holds nothing newer than the snapshot restored (of raft index `restored_index`).
    NotNewer {
        /// The restored snapshot's raft index.
        restored_index: u64,
    },
}

/// What becomes of a snapshot a secondary just pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPull {
    /// It stays in the store.
    Keep(Keep),
    /// It is restored into the node, after the node's data is quarantined when said.
    Restore {
        /// Whether (and why) the node's data is saved first.
        quarantine: Option<Quarantine>,
    },
}

/// The next action for the node, from the facts of this tick. `snapshots` are the ones held,
/// newest first.
pub fn plan(
    state: &PlanState,
    desired: Option<&DesiredState>,
    snapshots: &[SnapshotMeta],
    node: &NodeFacts,
) -> Action {
    let Some(d) = desired else {
        return idle(Idle::NoDesiredState);
    };
    match d.role {
        Role::Primary if d.term > state.applied_term => promote(state, d, snapshots, node),
        Role::Primary => idle(Idle::PrimaryApplied { term: d.term }),
        Role::Secondary => follow(state, d, snapshots, node),
    }
}

fn idle(reason: Idle) -> Action {
    Action::Idle { reason }
}

fn promote(
    state: &PlanState,
    d: &DesiredState,
    snapshots: &[SnapshotMeta],
    node: &NodeFacts,
) -> Action {
    let Some(node_state) = node.state else {
        return Action::ProbeNode;
    };
    if matches!(
        node_state,
        NodeState::Standby | NodeState::PerformanceStandby
    ) {
        return idle(Idle::NotActive { state: node_state });
    }
    // Any other state (sealed, unreachable…) is waited out by the promotion itself.
    let data = if let Some(primary_term) = state.primary_term {
        PromotionData::Live { primary_term }
    } else if let Some(from) = &d.final_snapshot_from {
        PromotionData::FinalSnapshot { from: from.clone() }
    } else {
        match (&state.restored, d.promotion) {
            (Some(r), PromotionMode::Fast) => PromotionData::KeepRestored { index: r.index },
            (restored, mode) => PromotionData::RestoreNewest {
                candidates: restore_candidates(snapshots, restored.as_ref(), state.applied_term),
                min_term: state.applied_term,
                why: match mode {
                    PromotionMode::Complete => RestoreWhy::Complete,
                    PromotionMode::Fast => RestoreWhy::NeverRestored,
                },
            },
        }
    };
    Action::Promote { term: d.term, data }
}

/// The held snapshots (newest first) a promotion may restore, in order of preference: of term
/// `min_term` or later and newer than the node's data, stopping at the first that is not.
pub fn restore_candidates(
    snapshots: &[SnapshotMeta],
    restored: Option<&SnapshotMeta>,
    min_term: u64,
) -> Vec<SnapshotMeta> {
    snapshots
        .iter()
        .take_while(|m| m.term >= min_term && restored.is_none_or(|r| m.newer_than(r)))
        .cloned()
        .collect()
}

fn follow(
    state: &PlanState,
    d: &DesiredState,
    snapshots: &[SnapshotMeta],
    node: &NodeFacts,
) -> Action {
    if d.failover_in_progress {
        return idle(Idle::FailoverInProgress { term: d.term });
    }
    let Some(from) = d.primary_api_addr.clone() else {
        return idle(Idle::NoPrimaryAddress);
    };
    // A node this agent is restoring is its cluster's active node (it was when the restore
    // began) and answers nothing until the restore ends: it is not probed.
    if state.restoring.is_none() {
        let Some(node_state) = node.state else {
            return Action::ProbeNode;
        };
        if node_state == NodeState::Sealed
            && let Some(primary_term) = state.was_primary.filter(|t| *t < d.term)
            && let Some(sealed_for) = state.sealed_for.filter(|s| *s >= SEALED_GRACE)
        {
            return Action::RestartSealed {
                primary_term,
                term: d.term,
                sealed_for,
            };
        }
        if node_state != NodeState::Active {
            return idle(Idle::NotActive { state: node_state });
        }
    }
    if let Some(primary_term) = state.primary_term.filter(|t| *t < d.term) {
        return Action::Rejoin {
            from,
            term: d.term,
            primary_term,
        };
    }
    if let Some(since) = state.since_last_pull.filter(|s| *s < state.interval) {
        return idle(Idle::NotDue {
            next_in: state.interval - since,
        });
    }
    if let Some((held_index, primary_index)) = up_to_date(state, d.term, snapshots.first()) {
        return Action::SkipPull {
            held_index,
            primary_index,
        };
    }
    Action::Follow {
        from,
        term: d.term,
        acknowledge: if state.applied_term < d.term {
            Acknowledge::AfterPull
        } else {
            Acknowledge::Applied
        },
    }
}

/// `(held, primary)` indices when this term's primary has applied nothing beyond the newest
/// snapshot held, pulled in this (applied) term, and in continuous mode restored.
fn up_to_date(state: &PlanState, term: u64, newest: Option<&SnapshotMeta>) -> Option<(u64, u64)> {
    if state.applied_term < term {
        return None;
    }
    let (primary, newest) = (state.primary_index?, newest?);
    let restored = state.restore == RestoreMode::OnPromotion
        || [state.restored.as_ref(), state.restoring.as_ref()]
            .into_iter()
            .flatten()
            .any(|r| r.sha256 == newest.sha256);
    (newest.term == term && primary <= newest.index && restored).then_some((newest.index, primary))
}

/// The snapshot a secondary restores next in the background, beside the pulls: the newest
/// held, when no restore is in flight, the term is applied, no failover is in progress, the
/// node is no returning ex-primary, and the newest is of the applied term or later and newer
/// than the one restored; and either
/// - the secondary is `continuous` and has restored one before (a first restore quarantines
///   the node's own data, in [`Action::Follow`]), unless the leader suspects the primary and
///   promotions are `fast` (a promotion would wait for that restore), or
/// - **restore ahead**: the leader suspects the primary ([`DesiredState::primary_suspect`])
///   and promotions are `complete`, so that this very restore is what a promotion of this
///   secondary would do first: a promotion decided a few ticks later finds it done or under
///   way instead of starting it. An `on-promotion` secondary's own data is replaced
///   unquarantined, as its promotion ([`PromotionData::RestoreNewest`]) would; a continuous
///   one that never restored keeps its first restore, with the quarantine, for its pull.
pub fn background_restore(
    state: &PlanState,
    desired: Option<&DesiredState>,
    snapshots: &[SnapshotMeta],
) -> Option<SnapshotMeta> {
    let d = desired?;
    let newest = snapshots.first()?;
    let restored = state.restored.as_ref();
    // A fast promotion serves what is restored: while the primary is suspected, a new
    // restore would only make that promotion wait for it.
    let continuous = state.restore == RestoreMode::Continuous
        && restored.is_some()
        && !(d.primary_suspect && d.promotion == PromotionMode::Fast);
    let ahead = d.primary_suspect
        && d.promotion == PromotionMode::Complete
        && (state.restore == RestoreMode::OnPromotion || restored.is_some());
    let due = (continuous || ahead)
        && state.restoring.is_none()
        && d.role == Role::Secondary
        && !d.failover_in_progress
        && state.applied_term >= d.term
        && state.primary_term.is_none()
        && newest.term >= state.applied_term
        && restored.is_none_or(|r| newest.newer_than(r));
    due.then(|| newest.clone())
}

/// What a secondary (not a returning ex-primary) does with the snapshot it just pulled, given
/// the one restored last.
pub fn after_pull(
    mode: RestoreMode,
    pulled: &SnapshotMeta,
    restored: Option<&SnapshotMeta>,
) -> AfterPull {
    match (mode, restored) {
        (RestoreMode::OnPromotion, _) => AfterPull::Keep(Keep::OnPromotion),
        (RestoreMode::Continuous, None) => AfterPull::Restore {
            quarantine: Some(Quarantine::NeverRestored),
        },
        (RestoreMode::Continuous, Some(r)) if pulled.newer_than(r) => {
            AfterPull::Restore { quarantine: None }
        }
        (RestoreMode::Continuous, Some(r)) => AfterPull::Keep(Keep::NotNewer {
            restored_index: r.index,
        }),
    }
}

impl fmt::Display for Idle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDesiredState => f.write_str("no desired state yet"),
            Self::PrimaryApplied { term } => write!(f, "primary of term {term}, applied"),
            Self::NotActive { state } => write!(
                f,
                "the node is {state}: the agent of its cluster's active node acts"
            ),
            Self::FailoverInProgress { term } => write!(
                f,
                "a failover is in progress in term {term}: only its target acts"
            ),
            Self::NoPrimaryAddress => f.write_str("the desired state names no primary address"),
            Self::NotDue { next_in } => {
                write!(f, "next pull in {:.1} s", next_in.as_secs_f64())
            }
        }
    }
}

impl fmt::Display for PromotionData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Live { primary_term } => write!(
                f,
                "keep the live data of a node already primary in term {primary_term}"
            ),
            Self::FinalSnapshot { from } => {
                write!(f, "pull and restore a final snapshot from {from}")
            }
            Self::RestoreNewest {
                candidates, why, ..
            } => {
                if *why == RestoreWhy::NeverRestored {
                    f.write_str("fast, but the node never restored a snapshot: ")?;
                }
                match candidates.first() {
                    Some(m) => write!(
                        f,
                        "restore the newest snapshot held (index {}, term {}; {} candidates)",
                        m.index,
                        m.term,
                        candidates.len()
                    ),
                    None => f.write_str("no snapshot held is newer than the node's data"),
                }
            }
            Self::KeepRestored { index } => {
                write!(f, "fast: keep the data restored at index {index}")
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle { reason } => write!(f, "no action: {reason}"),
            Self::ProbeNode => f.write_str("probe the local node's state"),
            Self::SkipPull {
                held_index,
                primary_index,
            } => write!(
                f,
                "skip the pull: the primary applied nothing beyond index {held_index} held (its index {primary_index})"
            ),
            Self::Follow {
                from,
                term,
                acknowledge,
            } => {
                write!(f, "pull a snapshot from {from} in term {term}")?;
                if *acknowledge == Acknowledge::AfterPull {
                    f.write_str(", then acknowledge the new term")?;
                }
                Ok(())
            }
            Self::Rejoin {
                from,
                term,
                primary_term,
            } => write!(
                f,
                "ex-primary of term {primary_term}: pull from {from}, quarantine this node's data, restore, follow term {term}"
            ),
            Self::RestartSealed {
                primary_term,
                term,
                sealed_for,
            } => write!(
                f,
                "the node of the primary of term {primary_term} is sealed ({:.0} s): restart its server so that its seal unseals it, then follow term {term}",
                sealed_for.as_secs_f64()
            ),
            Self::Promote { term, data } => write!(f, "promote for term {term}: {data}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use vault_dr_common::PromotionMode::{Complete, Fast};

    const INTERVAL: Duration = Duration::from_secs(5);

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// A held snapshot of DR term `term` at raft index `index`.
    fn snap(term: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta {
            file: format!("{term}-{index}.snap"),
            index,
            raft_term: 2,
            term,
            taken_at: Utc.timestamp_opt(1_700_000_000 + index as i64, 0).unwrap(),
            sha256: format!("sha-{term}-{index}"),
            size: 1000,
            source: "http://dc1:8200/".into(),
        }
    }

    /// A continuous secondary that applied term 3, restored (3, 100), last pulled long ago.
    fn state() -> PlanState {
        PlanState {
            applied_term: 3,
            restored: Some(snap(3, 100)),
            primary_term: None,
            restore: RestoreMode::Continuous,
            interval: INTERVAL,
            since_last_pull: Some(Duration::from_secs(60)),
            primary_index: Some(120),
            restoring: None,
            was_primary: None,
            sealed_for: None,
        }
    }

    fn secondary(term: u64) -> DesiredState {
        DesiredState {
            term,
            cluster: "dc2".into(),
            role: Role::Secondary,
            primary: "dc1".into(),
            primary_api_addr: Some(url("http://dc1:8200")),
            failover_in_progress: false,
            promotion: Complete,
            final_snapshot_from: None,
            primary_suspect: false,
            raft_formed_term: None,
            raft_recover_node: None,
            raft_formed_by: None,
            raft_handover: false,
        }
    }

    fn primary(term: u64, promotion: PromotionMode) -> DesiredState {
        DesiredState {
            role: Role::Primary,
            primary: "dc2".into(),
            primary_api_addr: None,
            promotion,
            ..secondary(term)
        }
    }

    const ACTIVE: NodeFacts = NodeFacts {
        state: Some(NodeState::Active),
    };

    const SEALED: NodeFacts = NodeFacts {
        state: Some(NodeState::Sealed),
    };

    fn follow(term: u64, acknowledge: Acknowledge) -> Action {
        Action::Follow {
            from: url("http://dc1:8200"),
            term,
            acknowledge,
        }
    }

    fn promote(term: u64, data: PromotionData) -> Action {
        Action::Promote { term, data }
    }

    struct Row {
        name: &'static str,
        state: PlanState,
        desired: Option<DesiredState>,
        snapshots: Vec<SnapshotMeta>,
        node: NodeFacts,
        want: Action,
    }

    fn rows() -> Vec<Row> {
        let held = vec![snap(3, 130), snap(3, 110), snap(3, 100), snap(2, 90)];
        vec![
            Row {
                name: "without_a_desired_state_nothing_is_done",
                state: state(),
                desired: None,
                snapshots: held.clone(),
                node: ACTIVE,
                want: idle(Idle::NoDesiredState),
            },
            Row {
                name: "a_primary_whose_term_is_applied_does_nothing",
                state: state(),
                desired: Some(primary(3, Complete)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: idle(Idle::PrimaryApplied { term: 3 }),
            },
            Row {
                name: "a_promotion_asks_for_the_node_state_first",
                state: state(),
                desired: Some(primary(4, Complete)),
                snapshots: held.clone(),
                node: NodeFacts::default(),
                want: Action::ProbeNode,
            },
            Row {
                name: "a_standby_of_the_promoted_cluster_leaves_the_promotion_to_the_active_node",
                state: state(),
                desired: Some(primary(4, Complete)),
                snapshots: held.clone(),
                node: NodeFacts {
                    state: Some(NodeState::Standby),
                },
                want: idle(Idle::NotActive {
                    state: NodeState::Standby,
                }),
            },
            Row {
                name: "a_performance_standby_of_the_promoted_cluster_leaves_the_promotion_too",
                state: state(),
                desired: Some(primary(4, Complete)),
                snapshots: held.clone(),
                node: NodeFacts {
                    state: Some(NodeState::PerformanceStandby),
                },
                want: idle(Idle::NotActive {
                    state: NodeState::PerformanceStandby,
                }),
            },
            Row {
                name: "a_sealed_promotion_target_is_promoted_once_it_is_active",
                state: state(),
                desired: Some(primary(4, Fast)),
                snapshots: held.clone(),
                node: NodeFacts {
                    state: Some(NodeState::Sealed),
                },
                want: promote(4, PromotionData::KeepRestored { index: 100 }),
            },
            Row {
                name: "complete_promotion_restores_the_held_snapshots_newer_than_the_node_data",
                state: state(),
                desired: Some(primary(4, Complete)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: promote(
                    4,
                    PromotionData::RestoreNewest {
                        candidates: vec![snap(3, 130), snap(3, 110)],
                        min_term: 3,
                        why: RestoreWhy::Complete,
                    },
                ),
            },
            Row {
                name: "complete_promotion_never_restores_a_snapshot_of_a_term_older_than_the_applied",
                state: PlanState {
                    restored: None,
                    ..state()
                },
                desired: Some(primary(4, Complete)),
                snapshots: vec![snap(3, 130), snap(3, 90), snap(2, 150)],
                node: ACTIVE,
                want: promote(
                    4,
                    PromotionData::RestoreNewest {
                        candidates: vec![snap(3, 130), snap(3, 90)],
                        min_term: 3,
                        why: RestoreWhy::Complete,
                    },
                ),
            },
            Row {
                name: "complete_promotion_of_a_node_holding_nothing_newer_restores_nothing",
                state: PlanState {
                    restored: Some(snap(3, 130)),
                    ..state()
                },
                desired: Some(primary(4, Complete)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: promote(
                    4,
                    PromotionData::RestoreNewest {
                        candidates: vec![],
                        min_term: 3,
                        why: RestoreWhy::Complete,
                    },
                ),
            },
            Row {
                name: "fast_promotion_keeps_the_restored_data",
                state: state(),
                desired: Some(primary(4, Fast)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: promote(4, PromotionData::KeepRestored { index: 100 }),
            },
            Row {
                name: "fast_promotion_of_a_never_restored_standby_restores_first",
                state: PlanState {
                    restored: None,
                    restore: RestoreMode::OnPromotion,
                    ..state()
                },
                desired: Some(primary(4, Fast)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: promote(
                    4,
                    PromotionData::RestoreNewest {
                        candidates: vec![snap(3, 130), snap(3, 110), snap(3, 100)],
                        min_term: 3,
                        why: RestoreWhy::NeverRestored,
                    },
                ),
            },
            Row {
                name: "a_planned_switchover_restores_a_final_snapshot_from_the_old_primary",
                state: state(),
                desired: Some(DesiredState {
                    final_snapshot_from: Some(url("http://dc1:8200")),
                    primary_suspect: false,
                    raft_formed_term: None,
                    raft_recover_node: None,
                    raft_formed_by: None,
                    raft_handover: false,
                    ..primary(4, Fast)
                }),
                snapshots: held.clone(),
                node: ACTIVE,
                want: promote(
                    4,
                    PromotionData::FinalSnapshot {
                        from: url("http://dc1:8200"),
                    },
                ),
            },
            Row {
                name: "a_node_that_already_was_primary_never_restores_over_its_live_data",
                state: PlanState {
                    applied_term: 0,
                    primary_term: Some(3),
                    ..state()
                },
                desired: Some(DesiredState {
                    final_snapshot_from: Some(url("http://dc1:8200")),
                    primary_suspect: false,
                    raft_formed_term: None,
                    raft_recover_node: None,
                    raft_formed_by: None,
                    raft_handover: false,
                    ..primary(3, Complete)
                }),
                snapshots: held.clone(),
                node: ACTIVE,
                want: promote(3, PromotionData::Live { primary_term: 3 }),
            },
            Row {
                name: "a_secondary_does_nothing_while_a_failover_is_in_progress",
                state: state(),
                desired: Some(DesiredState {
                    failover_in_progress: true,
                    ..secondary(4)
                }),
                snapshots: held.clone(),
                node: ACTIVE,
                want: idle(Idle::FailoverInProgress { term: 4 }),
            },
            Row {
                name: "a_returning_ex_primary_quarantines_nothing_while_a_failover_is_in_progress",
                state: PlanState {
                    primary_term: Some(3),
                    ..state()
                },
                desired: Some(DesiredState {
                    failover_in_progress: true,
                    ..secondary(4)
                }),
                snapshots: held.clone(),
                node: ACTIVE,
                want: idle(Idle::FailoverInProgress { term: 4 }),
            },
            Row {
                name: "a_secondary_without_a_primary_address_does_nothing",
                state: state(),
                desired: Some(DesiredState {
                    primary_api_addr: None,
                    ..secondary(3)
                }),
                snapshots: held.clone(),
                node: ACTIVE,
                want: idle(Idle::NoPrimaryAddress),
            },
            Row {
                name: "a_secondary_asks_for_the_node_state_before_pulling",
                state: state(),
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: NodeFacts::default(),
                want: Action::ProbeNode,
            },
            Row {
                name: "a_standby_of_a_secondary_leaves_the_pulls_to_the_active_node",
                state: state(),
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: NodeFacts {
                    state: Some(NodeState::Standby),
                },
                want: idle(Idle::NotActive {
                    state: NodeState::Standby,
                }),
            },
            Row {
                name: "a_sealed_secondary_does_not_pull",
                state: state(),
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: NodeFacts {
                    state: Some(NodeState::Sealed),
                },
                want: idle(Idle::NotActive {
                    state: NodeState::Sealed,
                }),
            },
            Row {
                name: "a_secondary_does_not_pull_before_the_interval_has_passed",
                state: PlanState {
                    since_last_pull: Some(Duration::from_secs(2)),
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: idle(Idle::NotDue {
                    next_in: Duration::from_secs(3),
                }),
            },
            Row {
                name: "a_secondary_pulls_when_the_interval_has_passed",
                state: state(),
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(3, Acknowledge::Applied),
            },
            Row {
                name: "a_fresh_secondary_pulls_at_once",
                state: PlanState {
                    applied_term: 0,
                    restored: None,
                    since_last_pull: None,
                    primary_index: None,
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: vec![],
                node: ACTIVE,
                want: follow(3, Acknowledge::AfterPull),
            },
            Row {
                name: "a_new_term_is_acknowledged_right_after_its_first_pull",
                state: state(),
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(4, Acknowledge::AfterPull),
            },
            Row {
                name: "a_continuous_secondary_caught_up_skips_the_pull",
                state: PlanState {
                    restored: Some(snap(3, 130)),
                    primary_index: Some(130),
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: Action::SkipPull {
                    held_index: 130,
                    primary_index: 130,
                },
            },
            Row {
                name: "an_on_promotion_secondary_caught_up_skips_the_pull_without_restoring",
                state: PlanState {
                    restore: RestoreMode::OnPromotion,
                    restored: None,
                    primary_index: Some(125),
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: Action::SkipPull {
                    held_index: 130,
                    primary_index: 125,
                },
            },
            Row {
                name: "a_continuous_secondary_whose_newest_is_not_restored_pulls_again",
                state: PlanState {
                    primary_index: Some(130),
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(3, Acknowledge::Applied),
            },
            Row {
                name: "a_primary_ahead_of_the_newest_held_is_pulled_from",
                state: PlanState {
                    restored: Some(snap(3, 130)),
                    primary_index: Some(131),
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(3, Acknowledge::Applied),
            },
            Row {
                name: "a_newest_held_of_an_older_term_is_no_reason_to_skip",
                state: PlanState {
                    restore: RestoreMode::OnPromotion,
                    applied_term: 4,
                    primary_index: Some(10),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(4, Acknowledge::Applied),
            },
            Row {
                name: "an_unread_primary_index_is_no_reason_to_skip",
                state: PlanState {
                    restored: Some(snap(3, 130)),
                    primary_index: None,
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(3, Acknowledge::Applied),
            },
            Row {
                name: "a_term_not_yet_applied_is_no_reason_to_skip",
                state: PlanState {
                    applied_term: 2,
                    restored: Some(snap(3, 130)),
                    primary_index: Some(130),
                    ..state()
                },
                desired: Some(secondary(3)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(3, Acknowledge::AfterPull),
            },
            Row {
                name: "a_returning_ex_primary_rejoins_once_no_failover_is_in_progress_whatever_the_interval",
                state: PlanState {
                    primary_term: Some(3),
                    since_last_pull: Some(Duration::from_secs(1)),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: Action::Rejoin {
                    from: url("http://dc1:8200"),
                    term: 4,
                    primary_term: 3,
                },
            },
            Row {
                name: "a_returning_ex_primary_rejoins_even_when_caught_up",
                state: PlanState {
                    applied_term: 4,
                    primary_term: Some(3),
                    restored: Some(snap(4, 130)),
                    primary_index: Some(130),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: vec![snap(4, 130)],
                node: ACTIVE,
                want: Action::Rejoin {
                    from: url("http://dc1:8200"),
                    term: 4,
                    primary_term: 3,
                },
            },
            Row {
                name: "a_node_recorded_primary_in_the_current_term_is_no_returning_ex_primary",
                state: PlanState {
                    primary_term: Some(4),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: ACTIVE,
                want: follow(4, Acknowledge::AfterPull),
            },
            Row {
                name: "a_superseded_primary_sealed_past_the_grace_has_its_server_restarted",
                state: PlanState {
                    was_primary: Some(3),
                    sealed_for: Some(SEALED_GRACE),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: SEALED,
                want: Action::RestartSealed {
                    primary_term: 3,
                    term: 4,
                    sealed_for: SEALED_GRACE,
                },
            },
            Row {
                name: "a_superseded_primary_sealed_for_less_than_the_grace_is_left_alone",
                state: PlanState {
                    was_primary: Some(3),
                    sealed_for: Some(SEALED_GRACE - Duration::from_millis(1)),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: SEALED,
                want: idle(Idle::NotActive {
                    state: NodeState::Sealed,
                }),
            },
            Row {
                name: "a_sealed_secondary_that_never_was_primary_is_left_sealed_an_operator_may_have_sealed_it",
                state: PlanState {
                    sealed_for: Some(Duration::from_secs(600)),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: SEALED,
                want: idle(Idle::NotActive {
                    state: NodeState::Sealed,
                }),
            },
            Row {
                name: "a_sealed_node_primary_of_the_current_term_is_left_sealed",
                state: PlanState {
                    was_primary: Some(4),
                    sealed_for: Some(Duration::from_secs(600)),
                    ..state()
                },
                desired: Some(secondary(4)),
                snapshots: held.clone(),
                node: SEALED,
                want: idle(Idle::NotActive {
                    state: NodeState::Sealed,
                }),
            },
            Row {
                name: "a_superseded_primary_is_not_restarted_while_the_failover_is_in_progress",
                state: PlanState {
                    was_primary: Some(3),
                    sealed_for: Some(Duration::from_secs(600)),
                    ..state()
                },
                desired: Some(DesiredState {
                    failover_in_progress: true,
                    ..secondary(4)
                }),
                snapshots: held.clone(),
                node: SEALED,
                want: idle(Idle::FailoverInProgress { term: 4 }),
            },
        ]
    }

    #[test]
    fn a_restore_in_flight_neither_stops_pulls_nor_is_probed() {
        let restoring = PlanState {
            restoring: Some(snap(3, 110)),
            ..state()
        };
        let held = vec![snap(3, 110), snap(3, 100)];
        // The node is blocked by the restore: the pull is planned without probing it.
        let got = plan(
            &restoring,
            Some(&secondary(3)),
            &held,
            &NodeFacts::default(),
        );
        assert_eq!(got, follow(3, Acknowledge::Applied));
        // The snapshot being restored counts as restored for "nothing new on the primary".
        let caught_up = PlanState {
            primary_index: Some(110),
            ..restoring.clone()
        };
        let got = plan(
            &caught_up,
            Some(&secondary(3)),
            &held,
            &NodeFacts::default(),
        );
        assert_eq!(
            got,
            Action::SkipPull {
                held_index: 110,
                primary_index: 110
            }
        );
    }

    #[test]
    fn the_newest_snapshot_is_restored_next_once_the_restore_in_flight_ends() {
        use super::background_restore as next;
        let held = vec![snap(3, 130), snap(3, 110), snap(3, 100)];
        let s = state();
        // (state, desired, held) -> restore next?
        assert_eq!(next(&s, Some(&secondary(3)), &held), Some(snap(3, 130)));
        let busy = PlanState {
            restoring: Some(snap(3, 110)),
            ..state()
        };
        assert_eq!(
            next(&busy, Some(&secondary(3)), &held),
            None,
            "one at a time"
        );
        let on_promotion = PlanState {
            restore: RestoreMode::OnPromotion,
            ..state()
        };
        assert_eq!(next(&on_promotion, Some(&secondary(3)), &held), None);
        let never = PlanState {
            restored: None,
            ..state()
        };
        assert_eq!(
            next(&never, Some(&secondary(3)), &held),
            None,
            "a first restore quarantines first"
        );
        let mut failing_over = secondary(3);
        failing_over.failover_in_progress = true;
        assert_eq!(next(&s, Some(&failing_over), &held), None);
        assert_eq!(
            next(&s, Some(&secondary(4)), &held),
            None,
            "term not applied yet"
        );
        assert_eq!(next(&s, Some(&primary(3, Complete)), &held), None);
        let ex_primary = PlanState {
            primary_term: Some(2),
            ..state()
        };
        assert_eq!(next(&ex_primary, Some(&secondary(3)), &held), None);
        assert_eq!(
            next(&s, Some(&secondary(3)), &held[2..]),
            None,
            "nothing newer held"
        );
        let older_term = vec![snap(2, 140)];
        assert_eq!(next(&s, Some(&secondary(3)), &older_term), None);
        assert_eq!(next(&s, None, &held), None);
    }

    #[test]
    fn a_suspected_primary_makes_an_on_promotion_secondary_restore_ahead() {
        use super::background_restore as next;
        let held = vec![snap(3, 130), snap(3, 110)];
        let on_promotion = PlanState {
            restore: RestoreMode::OnPromotion,
            restored: None,
            ..state()
        };
        let mut suspect = secondary(3);
        suspect.primary_suspect = true;
        // (state, desired, held) -> restore next?
        assert_eq!(
            next(&on_promotion, Some(&suspect), &held),
            Some(snap(3, 130)),
            "the newest held, over the node's own data, as its promotion would"
        );
        assert_eq!(next(&on_promotion, Some(&secondary(3)), &held), None);
        let restored_newest = PlanState {
            restored: Some(snap(3, 130)),
            ..on_promotion.clone()
        };
        assert_eq!(
            next(&restored_newest, Some(&suspect), &held),
            None,
            "already serves the newest"
        );
        let busy = PlanState {
            restoring: Some(snap(3, 110)),
            ..on_promotion.clone()
        };
        assert_eq!(next(&busy, Some(&suspect), &held), None, "one at a time");
        let mut fast = suspect.clone();
        fast.promotion = PromotionMode::Fast;
        assert_eq!(
            next(&on_promotion, Some(&fast), &held),
            None,
            "a fast promotion restores nothing it could do ahead"
        );
        assert_eq!(
            next(&state(), Some(&fast), &held),
            None,
            "nor does a continuous standby start a restore its fast promotion would wait for"
        );
        let mut decided = suspect.clone();
        decided.failover_in_progress = true;
        assert_eq!(next(&on_promotion, Some(&decided), &held), None);
        let ex_primary = PlanState {
            primary_term: Some(2),
            ..on_promotion.clone()
        };
        assert_eq!(
            next(&ex_primary, Some(&suspect), &held),
            None,
            "a returning ex-primary quarantines first"
        );
        // A continuous secondary restores ahead only over data it restored: one that never
        // restored keeps its first restore (with the quarantine) for its pull.
        let never = PlanState {
            restored: None,
            ..state()
        };
        assert_eq!(next(&never, Some(&suspect), &held), None);
        assert_eq!(next(&state(), Some(&suspect), &held), Some(snap(3, 130)));
    }

    #[test]
    fn each_rule_plans_its_action() {
        let rows = rows();
        let mut names: Vec<_> = rows.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), rows.len(), "row names are unique");
        for r in rows {
            let got = plan(&r.state, r.desired.as_ref(), &r.snapshots, &r.node);
            assert_eq!(got, r.want, "{}", r.name);
        }
    }

    #[test]
    fn the_node_state_is_asked_for_only_when_the_plan_depends_on_it() {
        for r in rows() {
            let unprobed = plan(
                &r.state,
                r.desired.as_ref(),
                &r.snapshots,
                &NodeFacts::default(),
            );
            if unprobed != Action::ProbeNode {
                assert_eq!(
                    unprobed, r.want,
                    "{}: planned without the node state",
                    r.name
                );
            }
            if r.node.state.is_some() {
                assert_ne!(r.want, Action::ProbeNode, "{}: probed twice", r.name);
            }
        }
    }

    #[test]
    fn every_action_says_what_it_does_in_one_line() {
        for r in rows() {
            let line = r.want.to_string();
            assert!(
                !line.is_empty() && !line.contains('\n'),
                "{}: {line}",
                r.name
            );
        }
        assert_eq!(
            promote(
                4,
                PromotionData::RestoreNewest {
                    candidates: vec![snap(3, 130)],
                    min_term: 3,
                    why: RestoreWhy::NeverRestored,
                }
            )
            .to_string(),
            "promote for term 4: fast, but the node never restored a snapshot: restore the newest snapshot held (index 130, term 3; 1 candidates)"
        );
        assert_eq!(
            idle(Idle::NotDue {
                next_in: Duration::from_millis(2500)
            })
            .to_string(),
            "no action: next pull in 2.5 s"
        );
    }

    #[test]
    fn each_rule_decides_what_becomes_of_a_pulled_snapshot() {
        use RestoreMode::{Continuous, OnPromotion};
        // (name, mode, pulled, restored, what becomes of the pulled one)
        type PullRow = (
            &'static str,
            RestoreMode,
            SnapshotMeta,
            Option<SnapshotMeta>,
            AfterPull,
        );
        let table: [PullRow; 6] = [
            (
                "on_promotion_keeps_a_pulled_snapshot_for_the_promotion",
                OnPromotion,
                snap(3, 130),
                None,
                AfterPull::Keep(Keep::OnPromotion),
            ),
            (
                "continuous_restores_a_pulled_snapshot_newer_than_the_restored",
                Continuous,
                snap(3, 130),
                Some(snap(3, 100)),
                AfterPull::Restore { quarantine: None },
            ),
            (
                "continuous_restores_a_snapshot_of_a_later_term_whatever_its_index",
                Continuous,
                snap(4, 5),
                Some(snap(3, 100)),
                AfterPull::Restore { quarantine: None },
            ),
            (
                "continuous_keeps_a_pulled_snapshot_no_newer_than_the_restored",
                Continuous,
                snap(3, 100),
                Some(snap(3, 100)),
                AfterPull::Keep(Keep::NotNewer {
                    restored_index: 100,
                }),
            ),
            (
                "continuous_never_restores_a_snapshot_of_an_older_term",
                Continuous,
                snap(2, 500),
                Some(snap(3, 100)),
                AfterPull::Keep(Keep::NotNewer {
                    restored_index: 100,
                }),
            ),
            (
                "continuous_quarantines_a_never_restored_node_before_its_first_restore",
                Continuous,
                snap(3, 130),
                None,
                AfterPull::Restore {
                    quarantine: Some(Quarantine::NeverRestored),
                },
            ),
        ];
        for (name, mode, pulled, restored, want) in table {
            assert_eq!(after_pull(mode, &pulled, restored.as_ref()), want, "{name}");
        }
    }
}
