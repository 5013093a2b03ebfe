//! The raft backend's decisions, as a pure function of what the agent knows ([`plan`]).
//!
//! The node's data belongs to one raft, its **lineage**: the term in which that raft was formed
//! and the primary cluster that formed it (recorded in the control directory when the agent
//! lets the node start in it). The coordinator's desired state names the raft the node must
//! be in ([`DesiredState::raft_formed_term`] of `primary`). The node starts only in that raft:
//! - data of that raft: the node starts as it is (a voter in the primary cluster, a non-voter
//!   elsewhere);
//! - the promotion target's node, whose data is the old primary's raft: it is recovered with a
//!   `peers.json` that makes it the only voter of the new raft ([`Action::Recover`]);
//! - any other data (an old primary coming back, a secondary after a promotion elsewhere, data
//!   of unknown origin): moved aside into the quarantine, and the node joins the current raft
//!   as a non-voter ([`Action::Quarantine`]).
//!
//! A running node whose data is of another raft is stopped first; a node not involved waits
//! while a failover is in progress (the old primary and the target are held until the end).

use serde::{Deserialize, Serialize};
use std::fmt;
use vault_dr_common::{DesiredState, NodeState, Role};

/// Which raft a node's data belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The term in which the raft was formed.
    pub term: u64,
    /// The cluster whose nodes were its voters then.
    pub primary: String,
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the raft {} formed in term {}", self.primary, self.term)
    }
}

/// The launcher's state, from the control directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No run and no permit: the server waits for one.
    Down,
    /// A permit is waiting for the launcher.
    Permitted,
    /// The server runs.
    Running,
    /// A stop was asked for and the server has not exited yet.
    Stopping,
}

/// What the agent knows in one round.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The kept desired state.
    pub desired: Option<&'a DesiredState>,
    /// The recorded lineage of the node's data (`None`: never recorded).
    pub lineage: Option<&'a Lineage>,
    /// The launcher.
    pub launcher: Launcher,
    /// Whether the node's data directory holds raft data.
    pub data_present: bool,
    /// The node as the last probe saw it.
    pub node: NodeState,
    /// Whether the raft the node runs in has a leader it can reach (autopilot state answered
    /// through the node).
    pub leader_seen: bool,
    /// How the node joins.
    pub suffrage: Suffrage,
    /// The agent's node name (as its reports carry it).
    pub me: &'a str,
    /// Whether the raft lists the node as a voter (the last autopilot reading; `None`:
    /// unknown).
    pub voter: Option<bool>,
    /// How long the server has been running (`None`: not running, or unknown).
    pub running_for: Option<std::time::Duration>,
}

/// How long a recovered target may run without becoming active (or seeing a leader) before
/// its recovery counts as not taken and is done again: OpenBao accepts and deletes a
/// `peers.json` that names another node id, and the node then stays a standby without a
/// leader forever (reference §9 E). A recovery that takes is active within a second.
pub const RECOVERY_TAKES: std::time::Duration = std::time::Duration::from_secs(10);

/// How a node joins a raft (`--raft-suffrage`). A promotion target becomes the only voter of
/// the raft it forms whatever its suffrage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Suffrage {
    /// A voter while its cluster is the primary, a non-voter otherwise: the asynchronous
    /// layout, where the primary's voters commit alone.
    #[default]
    Auto,
    /// Always a voter: a DR voter of the synchronous layout, where every commit quorum
    /// includes a node outside the primary cluster.
    Voter,
    /// Always a non-voter (a primary node kept out of the quorum in the synchronous layout).
    NonVoter,
}

impl Suffrage {
    /// Whether a node of this suffrage joins as a non-voter in `role`.
    pub fn non_voter(self, role: Role) -> bool {
        match self {
            Self::Auto => role == Role::Secondary,
            Self::Voter => false,
            Self::NonVoter => true,
        }
    }

    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Voter => "voter",
            Self::NonVoter => "non-voter",
        }
    }
}

impl std::str::FromStr for Suffrage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "voter" => Ok(Self::Voter),
            "non-voter" => Ok(Self::NonVoter),
            other => Err(format!("{other:?} is not one of auto, voter, non-voter")),
        }
    }
}

/// Why the agent does nothing this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// No desired state yet: the server is held (it never starts on an unknown term).
    NoDesiredState,
    /// The stop asked for is in progress.
    Stopping,
    /// A permit is waiting for the launcher.
    Permitted,
    /// The server runs and is not serving yet.
    Starting,
    /// A failover is in progress and this node is not its target: it waits for the end.
    FailoverInProgress,
    /// The raft this node must be in does not exist yet (the target is not promoted).
    NoRaftYet,
    /// Nothing to do: the term is carried out.
    Steady,
    /// The server failed to start this many times in a row: the next start waits (the
    /// agent's back-off, not the plan's).
    FailedStarts(u32),
}

/// One round's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Wait(Wait),
    /// Permit the next start with the node's data as it is.
    Permit {
        /// As a non-voter (its [`Suffrage`] in its role).
        non_voter: bool,
        /// Record this lineage first (a fresh node, or the bootstrap lineage confirmed).
        record: Option<Lineage>,
    },
    /// Ask the launcher to stop the server (its data is of another raft).
    Stop {
        /// The raft the data is of.
        why: String,
        /// SIGKILL at once instead of a graceful stop: the promotion target, whose recovery
        /// waits for the stop (OpenBao takes ~0.4 s to close its cluster listeners on
        /// SIGTERM), while raft's log and store are crash-safe by design (every entry is
        /// fsynced before it is acknowledged).
        kill: bool,
    },
    /// The promotion target: write `peers.json` making this node the voter, record the new
    /// lineage, permit the start.
    Recover {
        /// The raft being formed.
        lineage: Lineage,
    },
    /// Move the node's data into the quarantine, record the lineage, permit a start (it joins
    /// the current raft with `retry_join`, as its [`Suffrage`] says).
    Quarantine {
        /// The raft the node will join.
        lineage: Lineage,
        /// The data's lineage (`None`: unknown).
        from: Option<Lineage>,
        /// As a non-voter.
        non_voter: bool,
    },
    /// The node of a secondary won a raft election (a DR voter of the synchronous layout,
    /// after the primary's leader was lost): it steps down, so that the active node is in
    /// the primary cluster again. The agent spaces them ([`crate::replication::raft::STEP_DOWN_EVERY`]).
    StepDown,
    /// The desired state of this term is carried out on this node.
    Applied(u64),
    /// Record this lineage for the running node: the installer's bootstrap lineage (term 0)
    /// of the primary now named, confirmed by the first desired state.
    Record(Lineage),
}

/// Whether the node should be a voter but the raft keeps it a non-voter, while it follows the
/// primary's raft outside a failover: a node that joined as a voter is added as a non-voter
/// and autopilot promotes it once stable, but not one the raft knew as a permanent non-voter
/// before its data was quarantined (a secondary's node, now in the promoted cluster). The
/// agent asks for the promotion when autopilot has not made it for a while
/// ([`crate::replication::raft::PROMOTE_AFTER`]).
pub fn wants_promotion(f: &Facts<'_>) -> bool {
    let Some(d) = f.desired else {
        return false;
    };
    let in_raft = wanted(d).is_some_and(|want| f.lineage == Some(&want));
    in_raft
        && !d.failover_in_progress
        && f.launcher == Launcher::Running
        && f.leader_seen
        && f.voter == Some(false)
        && !f.suffrage.non_voter(d.role)
}

/// The raft the node must be in: formed in `raft_formed_term` by `raft_formed_by`, or else by
/// the primary. `None` while it does not exist yet.
fn wanted(d: &DesiredState) -> Option<Lineage> {
    Some(Lineage {
        term: d.raft_formed_term?,
        primary: d
            .raft_formed_by
            .clone()
            .unwrap_or_else(|| d.primary.clone()),
    })
}

/// The decision of one round.
pub fn plan(f: Facts<'_>) -> Action {
    let Some(d) = f.desired else {
        return Action::Wait(Wait::NoDesiredState);
    };
    match f.launcher {
        Launcher::Stopping => return Action::Wait(Wait::Stopping),
        Launcher::Permitted => return Action::Wait(Wait::Permitted),
        Launcher::Down | Launcher::Running => {}
    }
    // The promotion target: the node of the promoted cluster that forms the new raft (the
    // one the coordinator named, or every node when it named none). Its cluster's other
    // nodes wait for the end of the failover and then join it. A handover forms no raft: the
    // coordinator moves the leadership, and the target's nodes go on as they are.
    let target = d.role == Role::Primary
        && d.cluster == d.primary
        && d.failover_in_progress
        && !d.raft_handover
        && d.raft_recover_node.as_deref().is_none_or(|n| n == f.me);
    let Some(want) = wanted(d) else {
        return Action::Wait(if d.failover_in_progress {
            Wait::FailoverInProgress
        } else {
            Wait::NoRaftYet
        });
    };
    let formed = want.term;
    let running = f.launcher == Launcher::Running;
    // The bootstrap: a node of the initial raft recorded by whoever installed it (lineage of
    // term 0 naming the primary).
    let bootstrap = f
        .lineage
        .is_some_and(|l| l.term == 0 && l.primary == want.primary);
    if bootstrap && running {
        return Action::Record(want);
    }
    if f.lineage == Some(&want) {
        if !running {
            // The target's server is down in the raft it forms (its recovery did not take and
            // was stopped, or the node died before the failover ended): recovered again, so
            // that it starts as the raft's only voter whatever its membership says.
            if target && formed == d.term {
                return Action::Recover { lineage: want };
            }
            return Action::Permit {
                non_voter: f.suffrage.non_voter(d.role),
                record: None,
            };
        }
        if let Some(ran) = f.running_for.filter(|t| {
            target && *t >= RECOVERY_TAKES && f.node != NodeState::Active && !f.leader_seen
        }) {
            return Action::Stop {
                kill: true,
                why: format!(
                    "recovered {:.0} s ago and still not active, without a leader: the recovery \
                     did not take (a peers.json naming another node id than the server's?); \
                     recovering again",
                    ran.as_secs_f64()
                ),
            };
        }
        if d.role == Role::Secondary && f.node == NodeState::Active && !d.failover_in_progress {
            return Action::StepDown;
        }
        let serving = match d.role {
            // The target serves once active; another node of the primary once it is a
            // standby of the primary's leader.
            Role::Primary if target => f.node == NodeState::Active,
            Role::Primary => f.node == NodeState::Active || (f.node.is_serving() && f.leader_seen),
            Role::Secondary => f.node.is_serving() && f.leader_seen,
        };
        // A secondary carries out a term once it follows the term's primary: not while a
        // failover holds it (it would acknowledge the old primary's raft). In a handover the
        // raft stays the same: the target's nodes carry the term out once they serve in it
        // (the coordinator moves the leadership to one of them).
        let handed = d.raft_handover && d.role == Role::Primary;
        let held = d.failover_in_progress && !target && !handed;
        return if serving && !held {
            Action::Applied(d.term)
        } else if serving {
            Action::Wait(Wait::Steady)
        } else {
            Action::Wait(Wait::Starting)
        };
    }
    // The data is of another raft (or of none recorded).
    if d.failover_in_progress && !target {
        return Action::Wait(Wait::FailoverInProgress);
    }
    if running {
        return Action::Stop {
            kill: target,
            why: match f.lineage {
                Some(l) => format!("its data is of {l}, the primary's is {want}"),
                None => format!("its data is of no recorded raft, the primary's is {want}"),
            },
        };
    }
    if target && formed == d.term {
        return Action::Recover { lineage: want };
    }
    // The bootstrap lineage, or a fresh node with no data at all.
    if bootstrap || (f.lineage.is_none() && !f.data_present) {
        return Action::Permit {
            non_voter: f.suffrage.non_voter(d.role),
            record: Some(want),
        };
    }
    Action::Quarantine {
        lineage: want,
        from: f.lineage.cloned(),
        non_voter: f.suffrage.non_voter(d.role),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_dr_common::PromotionMode;

    fn desired(cluster: &str, role: Role, primary: &str, term: u64) -> DesiredState {
        DesiredState {
            term,
            cluster: cluster.into(),
            role,
            primary: primary.into(),
            primary_api_addr: None,
            failover_in_progress: false,
            promotion: PromotionMode::Complete,
            final_snapshot_from: None,
            primary_suspect: false,
            raft_formed_term: Some(term),
            raft_recover_node: None,
            raft_formed_by: None,
            raft_handover: false,
        }
    }

    fn lineage(term: u64, primary: &str) -> Lineage {
        Lineage {
            term,
            primary: primary.into(),
        }
    }

    fn facts<'a>(d: Option<&'a DesiredState>, l: Option<&'a Lineage>) -> Facts<'a> {
        Facts {
            desired: d,
            lineage: l,
            launcher: Launcher::Down,
            data_present: true,
            node: NodeState::Unreachable,
            leader_seen: false,
            suffrage: Suffrage::Auto,
            me: "n1",
            voter: None,
            running_for: None,
        }
    }

    #[test]
    fn without_a_desired_state_the_server_is_held() {
        let l = lineage(1, "p");
        assert_eq!(
            plan(facts(None, Some(&l))),
            Action::Wait(Wait::NoDesiredState)
        );
    }

    #[test]
    fn data_of_the_current_raft_starts_as_it_is_and_carries_out_the_term_when_serving() {
        let d = desired("s1", Role::Secondary, "p", 1);
        let l = lineage(1, "p");
        assert_eq!(
            plan(facts(Some(&d), Some(&l))),
            Action::Permit {
                non_voter: true,
                record: None
            }
        );
        let mut f = facts(Some(&d), Some(&l));
        f.launcher = Launcher::Running;
        f.node = NodeState::Standby;
        assert_eq!(plan(f), Action::Wait(Wait::Starting), "no leader seen yet");
        f.leader_seen = true;
        assert_eq!(plan(f), Action::Applied(1));
        let p = desired("p", Role::Primary, "p", 1);
        let mut f = facts(Some(&p), Some(&l));
        f.launcher = Launcher::Running;
        f.node = NodeState::Active;
        assert_eq!(plan(f), Action::Applied(1));
        f.launcher = Launcher::Down;
        assert_eq!(
            plan(f),
            Action::Permit {
                non_voter: false,
                record: None
            },
            "a voter of the primary cluster"
        );
    }

    #[test]
    fn the_target_is_stopped_then_recovered_into_the_new_raft() {
        let mut d = desired("s1", Role::Primary, "s1", 2);
        d.failover_in_progress = true;
        let old = lineage(1, "p");
        let mut f = facts(Some(&d), Some(&old));
        f.launcher = Launcher::Running;
        f.node = NodeState::Standby;
        assert!(matches!(plan(f), Action::Stop { kill: true, .. }));
        f.launcher = Launcher::Stopping;
        assert_eq!(plan(f), Action::Wait(Wait::Stopping));
        f.launcher = Launcher::Down;
        assert_eq!(
            plan(f),
            Action::Recover {
                lineage: lineage(2, "s1")
            }
        );
        // Recovered and active: the promotion is carried out.
        let new = lineage(2, "s1");
        let mut f = facts(Some(&d), Some(&new));
        f.launcher = Launcher::Running;
        f.node = NodeState::Active;
        assert_eq!(plan(f), Action::Applied(2));
    }

    #[test]
    fn others_wait_during_the_failover_then_quarantine_and_rejoin() {
        let old = lineage(1, "p");
        // Before the target is promoted: still in p's raft of term 1, held.
        let mut d = desired("s2", Role::Secondary, "p", 2);
        d.failover_in_progress = true;
        d.raft_formed_term = Some(1);
        let mut f = facts(Some(&d), Some(&old));
        f.launcher = Launcher::Running;
        f.node = NodeState::Standby;
        f.leader_seen = true;
        assert_eq!(
            plan(f),
            Action::Wait(Wait::Steady),
            "not acknowledged early"
        );
        // The old primary's node during the failover: waits, whatever its data.
        let mut d = desired("p", Role::Secondary, "s1", 2);
        d.failover_in_progress = true;
        let f = facts(Some(&d), Some(&old));
        assert_eq!(plan(f), Action::Wait(Wait::FailoverInProgress));
        // Released: stop, then quarantine into s1's raft.
        d.failover_in_progress = false;
        let mut f = facts(Some(&d), Some(&old));
        f.launcher = Launcher::Running;
        assert!(
            matches!(plan(f), Action::Stop { kill: false, .. }),
            "a node that is not promoted stops gracefully"
        );
        f.launcher = Launcher::Down;
        assert_eq!(
            plan(f),
            Action::Quarantine {
                lineage: lineage(2, "s1"),
                from: Some(old.clone()),
                non_voter: true,
            }
        );
    }

    #[test]
    fn a_node_of_unknown_data_is_quarantined_a_fresh_one_joins_and_the_bootstrap_is_confirmed() {
        let d = desired("s1", Role::Secondary, "p", 1);
        assert_eq!(
            plan(facts(Some(&d), None)),
            Action::Quarantine {
                lineage: lineage(1, "p"),
                from: None,
                non_voter: true,
            }
        );
        let mut f = facts(Some(&d), None);
        f.data_present = false;
        assert_eq!(
            plan(f),
            Action::Permit {
                non_voter: true,
                record: Some(lineage(1, "p"))
            }
        );
        let boot = lineage(0, "p");
        assert_eq!(
            plan(facts(Some(&d), Some(&boot))),
            Action::Permit {
                non_voter: true,
                record: Some(lineage(1, "p"))
            }
        );
        let mut f = facts(Some(&d), Some(&boot));
        f.launcher = Launcher::Running;
        assert_eq!(
            plan(f),
            Action::Record(lineage(1, "p")),
            "no restart for it"
        );
        let other = lineage(0, "s9");
        assert!(matches!(
            plan(facts(Some(&d), Some(&other))),
            Action::Quarantine { .. }
        ));
    }

    #[test]
    fn the_suffrage_decides_how_a_node_joins_in_each_role() {
        use Role::{Primary, Secondary};
        for (suffrage, primary, secondary) in [
            (Suffrage::Auto, false, true),
            (Suffrage::Voter, false, false),
            (Suffrage::NonVoter, true, true),
        ] {
            assert_eq!(suffrage.non_voter(Primary), primary, "{suffrage:?}");
            assert_eq!(suffrage.non_voter(Secondary), secondary, "{suffrage:?}");
            assert_eq!(suffrage.as_str().parse::<Suffrage>(), Ok(suffrage));
        }
        assert!("voters".parse::<Suffrage>().is_err());
        // A DR voter of the synchronous layout rejoins the promoted raft as a voter ...
        let d = desired("s2", Secondary, "s1", 2);
        let old = lineage(1, "p");
        let mut f = facts(Some(&d), Some(&old));
        f.suffrage = Suffrage::Voter;
        assert_eq!(
            plan(f),
            Action::Quarantine {
                lineage: lineage(2, "s1"),
                from: Some(old.clone()),
                non_voter: false,
            }
        );
        // ... and a node kept out of the quorum starts as a non-voter even in the primary.
        let d = desired("p", Primary, "p", 1);
        let mine = lineage(1, "p");
        let mut f = facts(Some(&d), Some(&mine));
        f.suffrage = Suffrage::NonVoter;
        assert_eq!(
            plan(f),
            Action::Permit {
                non_voter: true,
                record: None
            }
        );
    }

    #[test]
    fn a_secondary_s_voter_that_leads_steps_down_unless_a_failover_makes_it_the_primary() {
        let d = desired("s1", Role::Secondary, "p", 1);
        let mine = lineage(1, "p");
        let mut f = facts(Some(&d), Some(&mine));
        f.launcher = Launcher::Running;
        f.node = NodeState::Active;
        f.leader_seen = true;
        assert_eq!(plan(f), Action::StepDown);
        f.node = NodeState::Standby;
        assert_eq!(plan(f), Action::Applied(1));
        let mut d = desired("s1", Role::Primary, "s1", 2);
        d.failover_in_progress = true;
        d.raft_formed_term = Some(1);
        let mut f = facts(Some(&d), Some(&mine));
        f.launcher = Launcher::Running;
        f.node = NodeState::Active;
        assert_ne!(
            plan(f),
            Action::StepDown,
            "the target is never stepped down"
        );
    }

    #[test]
    fn in_a_handover_every_node_stays_in_its_raft_and_the_target_carries_the_term_out_serving() {
        let p_raft = lineage(1, "p");
        let handover = |cluster: &str, role, in_progress| {
            let mut d = desired(cluster, role, "s1", 2);
            d.raft_formed_term = Some(1);
            d.raft_formed_by = Some("p".into());
            d.raft_handover = in_progress;
            d.failover_in_progress = in_progress;
            d
        };
        let running = |d: &DesiredState, node| {
            let mut f = facts(None, Some(&p_raft));
            f.launcher = Launcher::Running;
            f.node = node;
            f.leader_seen = true;
            f.voter = Some(true);
            (d.clone(), f)
        };
        // The target's node, a standby of p's leader: it carries the term out, no recovery.
        let d = handover("s1", Role::Primary, true);
        let (d, mut f) = running(&d, NodeState::Standby);
        f.desired = Some(&d);
        assert_eq!(plan(f), Action::Applied(2));
        f.launcher = Launcher::Down;
        assert_eq!(
            plan(f),
            Action::Permit {
                non_voter: false,
                record: None
            },
            "a target's node that is down starts as it is, never recovered"
        );
        // The old primary's node (p's raft, now led by s1): it keeps running, held until
        // the end; then it follows as a secondary, still in the raft p formed.
        let d = handover("p", Role::Secondary, true);
        let (d, mut f) = running(&d, NodeState::Active);
        f.desired = Some(&d);
        assert_eq!(plan(f), Action::Wait(Wait::Steady));
        let d = handover("p", Role::Secondary, false);
        let (d, mut f) = running(&d, NodeState::Standby);
        f.desired = Some(&d);
        assert_eq!(plan(f), Action::Applied(2));
        f.voter = Some(false);
        assert!(!wants_promotion(&f), "a secondary's node stays a non-voter");
        // After it, s1's nodes are in the raft, and one kept out of the vote asks for it.
        let d = handover("s1", Role::Primary, false);
        let (d, mut f) = running(&d, NodeState::Standby);
        f.desired = Some(&d);
        f.voter = Some(false);
        assert!(wants_promotion(&f));
    }

    #[test]
    fn only_the_named_node_of_a_promoted_cluster_recovers_the_others_join_it_after() {
        let mut d = desired("s1", Role::Primary, "s1", 2);
        d.failover_in_progress = true;
        d.raft_recover_node = Some("s1-n1".into());
        let old = lineage(1, "p");
        let mut f = facts(Some(&d), Some(&old));
        f.me = "s1-n1";
        assert_eq!(
            plan(f),
            Action::Recover {
                lineage: lineage(2, "s1")
            }
        );
        f.me = "s1-n2";
        assert_eq!(plan(f), Action::Wait(Wait::FailoverInProgress));
        f.launcher = Launcher::Running;
        assert_eq!(
            plan(f),
            Action::Wait(Wait::FailoverInProgress),
            "it keeps running, untouched, until the end"
        );
        // Done: it leaves the old raft and joins the new one as a voter of the primary.
        d.failover_in_progress = false;
        let mut f = facts(Some(&d), Some(&old));
        f.me = "s1-n2";
        f.launcher = Launcher::Running;
        assert!(matches!(plan(f), Action::Stop { kill: false, .. }));
        f.launcher = Launcher::Down;
        assert_eq!(
            plan(f),
            Action::Quarantine {
                lineage: lineage(2, "s1"),
                from: Some(old.clone()),
                non_voter: false,
            }
        );
        // In the new raft, a standby of the primary's leader carries the term out.
        let mine = lineage(2, "s1");
        let mut f = facts(Some(&d), Some(&mine));
        f.me = "s1-n2";
        f.launcher = Launcher::Running;
        f.node = NodeState::Standby;
        f.leader_seen = true;
        assert_eq!(plan(f), Action::Applied(2));
        // Kept a non-voter by the raft: it asks for its promotion; a secondary's does not.
        assert!(!wants_promotion(&f), "unknown membership");
        f.voter = Some(false);
        assert!(wants_promotion(&f));
        f.voter = Some(true);
        assert!(!wants_promotion(&f));
        let s = desired("s3", Role::Secondary, "s1", 2);
        let mut g = facts(Some(&s), Some(&mine));
        (g.launcher, g.leader_seen, g.voter) = (Launcher::Running, true, Some(false));
        assert!(!wants_promotion(&g));
        g.suffrage = Suffrage::Voter;
        assert!(wants_promotion(&g), "a DR voter of the synchronous layout");
    }

    #[test]
    fn a_recovery_that_did_not_take_is_stopped_and_done_again_only_on_the_target() {
        let mut d = desired("s1", Role::Primary, "s1", 2);
        d.failover_in_progress = true;
        let mine = lineage(2, "s1");
        let mut f = facts(Some(&d), Some(&mine));
        f.launcher = Launcher::Running;
        f.node = NodeState::Standby;
        f.running_for = Some(std::time::Duration::from_secs(3));
        assert_eq!(
            plan(f),
            Action::Wait(Wait::Starting),
            "still within its time"
        );
        f.running_for = Some(RECOVERY_TAKES);
        assert!(
            matches!(plan(f), Action::Stop { kill: true, .. }),
            "{:?}",
            plan(f)
        );
        f.leader_seen = true;
        assert_eq!(
            plan(f),
            Action::Wait(Wait::Starting),
            "a leader: not a lost recovery"
        );
        f.launcher = Launcher::Down;
        assert_eq!(
            plan(f),
            Action::Recover {
                lineage: mine.clone()
            }
        );
        // Not the target: a plain start.
        d.failover_in_progress = false;
        let f = facts(Some(&d), Some(&mine));
        assert!(matches!(plan(f), Action::Permit { .. }));
    }

    #[test]
    fn no_raft_yet_means_wait() {
        let mut d = desired("s2", Role::Secondary, "s1", 2);
        d.raft_formed_term = None;
        let old = lineage(1, "p");
        assert_eq!(
            plan(facts(Some(&d), Some(&old))),
            Action::Wait(Wait::NoRaftYet)
        );
    }
}
