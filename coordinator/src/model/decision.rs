//! What the detector decides: the [`Phase`] it stands in between ticks, what the three
//! [`Observers`] say, the tick's [`Decision`] (one sentence by `Display`) and the
//! [`DecisionRecord`] that is stored and served. Plain data; the logic is
//! `failover::detector::step`.

use crate::model::candidate::{CandidateTable, Ineligible};
use crate::model::view::View;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the detector stands between ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// No observer says the primary is down.
    Healthy,
    /// At least one observer says down since `since`; `ticks` counts the consecutive ticks on
    /// which all three agreed (0 while they do not).
    Suspect {
        /// First tick of this suspicion.
        since: DateTime<Utc>,
        /// Consecutive ticks of full agreement.
        ticks: u32,
    },
    /// A failover is decided or in progress.
    FailingOver {
        /// Journal id of the failover.
        id: String,
    },
}

/// What the three observers say about the primary on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observers {
    /// The coordinator's own probe says the primary is not serving.
    pub direct_down: bool,
    /// No fresh report from a primary node says it is serving.
    pub reports_down: bool,
    /// Secondaries voting "not reachable".
    pub secondaries_down: usize,
    /// Secondaries that could vote (fresh report with a fresh probe of the primary).
    pub secondaries_fresh: usize,
    /// Whether `secondaries_down` meets `policy.quorum` over `secondaries_fresh`.
    pub quorum_met: bool,
    /// This coordinator leads for less than one report TTL: the agents' reports are still
    /// arriving, so their silence is no evidence yet (`reports_down` is false).
    #[serde(default)]
    pub reports_warming: bool,
}

impl Observers {
    /// All three agree that the primary is down.
    pub fn all_down(&self) -> bool {
        self.direct_down && self.reports_down && self.quorum_met
    }

    /// At least one observer says down.
    pub fn any_down(&self) -> bool {
        self.direct_down || self.reports_down || self.secondaries_down > 0
    }
}

impl fmt::Display for Observers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let say = |down: bool| if down { "down" } else { "up" };
        write!(
            f,
            "direct probe {}, reports {}, {} of {} secondaries cannot reach it (quorum {})",
            say(self.direct_down),
            if self.reports_warming {
                "not counted yet (new leader)"
            } else {
                say(self.reports_down)
            },
            self.secondaries_down,
            self.secondaries_fresh,
            if self.quorum_met { "met" } else { "not met" }
        )
    }
}

/// The decision of one tick. Its `Display` is the tick's one info log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to do.
    NoAction {
        /// Why, e.g. "primary dc1 healthy, report age 0.4 s".
        reason: String,
    },
    /// Some observers say down, not yet `confirm` ticks of full agreement.
    Suspect {
        /// The primary.
        primary: String,
        /// Consecutive ticks of full agreement so far.
        ticks: u32,
        /// Ticks needed.
        confirm: u32,
        /// What each observer says.
        observers: Observers,
    },
    /// Fail over now.
    Failover {
        /// Old primary.
        from: String,
        /// Target.
        to: String,
        /// The new term.
        term: u64,
        /// Why.
        reason: String,
        /// The scorer's table.
        table: CandidateTable,
    },
    /// The primary is down but no secondary is eligible.
    NoCandidate {
        /// The primary.
        primary: String,
        /// The scorer's table, with every reason.
        table: CandidateTable,
    },
    /// The primary is down but the last failover was too recent.
    CooldownBlocked {
        /// The primary.
        primary: String,
        /// Seconds until the cooldown ends.
        remaining_seconds: f64,
    },
    /// The primary is down but an operator paused automatic failover.
    Paused {
        /// The primary.
        primary: String,
        /// The pause (who, why, until when).
        pause: crate::model::topology::Pause,
    },
    /// The primary serves but is slow or failing (`[policy.degraded]`): over the thresholds
    /// for `held_seconds` of the `window_seconds` it must be, or for the whole window but not
    /// moved (`not_moved` says why). An automatic move is [`Decision::Switchover`].
    Degraded {
        /// The primary.
        primary: String,
        /// How long both observers have called it over.
        held_seconds: f64,
        /// The policy's window.
        window_seconds: f64,
        /// Why it is not moved although the window is over (paused, cooldown, the daily cap,
        /// no eligible secondary).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_moved: Option<String>,
        /// Both observers' figures.
        evidence: crate::model::degraded::DegradedEvidence,
    },
    /// The topology records a failover in progress: carry on with it.
    Resume {
        /// Journal id.
        id: String,
    },
    /// The operator asked for a planned switchover and the target may be promoted: switch over
    /// now (cut instead of seal, final snapshot, nothing lost).
    Switchover {
        /// Old primary.
        from: String,
        /// Target.
        to: String,
        /// The new term.
        term: u64,
        /// Why.
        reason: String,
        /// The scorer's table.
        table: CandidateTable,
    },
}

/// Why a planned switchover is refused: the same checks for every caller, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SwitchoverRefusal {
    /// `to` is not a cluster of the DR group.
    UnknownCluster {
        /// The requested target.
        to: String,
        /// The group's clusters.
        known: Vec<String>,
    },
    /// A failover or switchover is already in progress.
    InProgress {
        /// Its journal id.
        id: String,
        /// Its old primary.
        from: String,
        /// Its target.
        to: String,
    },
    /// `to` is the primary already.
    AlreadyPrimary {
        /// The requested target.
        to: String,
    },
    /// The scorer says `to` cannot be promoted now.
    Ineligible {
        /// The requested target.
        to: String,
        /// The scorer's reason.
        why: Ineligible,
    },
}

impl fmt::Display for SwitchoverRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCluster { to, known } => write!(
                f,
                "{to:?} is not a cluster of this DR group (clusters: {})",
                known.join(", ")
            ),
            Self::InProgress { id, from, to } => write!(
                f,
                "failover {id} ({from} -> {to}) is in progress; wait until it is done"
            ),
            Self::AlreadyPrimary { to } => write!(f, "{to} is already the primary"),
            Self::Ineligible { to, why } => {
                let hint = match why {
                    Ineligible::Excluded => "; remove `excluded` from its configuration first",
                    _ => "",
                };
                write!(f, "{to} cannot be promoted now: {why}{hint}")
            }
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAction { reason } => write!(f, "no action: {reason}"),
            Self::Suspect {
                primary,
                ticks,
                confirm,
                observers,
            } => write!(
                f,
                "suspect: primary {primary} may be down, {ticks} of {confirm} confirming ticks ({observers})"
            ),
            Self::Failover {
                from,
                to,
                term,
                reason,
                ..
            } => write!(f, "failover: {from} to {to} in term {term}, {reason}"),
            Self::NoCandidate { primary, table } => write!(
                f,
                "no candidate: primary {primary} is down but no secondary is eligible ({})",
                table.reasons()
            ),
            Self::CooldownBlocked {
                primary,
                remaining_seconds,
            } => write!(
                f,
                "cooldown: primary {primary} is down but the last failover was too recent, {remaining_seconds:.1} s left"
            ),
            Self::Paused { primary, pause } => write!(
                f,
                "paused: primary {primary} is down but automatic failover is {pause}; `vault-dr resume` ends the pause"
            ),
            Self::Degraded {
                primary,
                held_seconds,
                window_seconds,
                not_moved: None,
                evidence,
            } => write!(
                f,
                "degraded: primary {primary} over the thresholds for {held_seconds:.1} of {window_seconds:.0} s ({evidence})"
            ),
            Self::Degraded {
                primary,
                held_seconds,
                not_moved: Some(why),
                evidence,
                ..
            } => write!(
                f,
                "degraded: primary {primary} over the thresholds for {held_seconds:.1} s but not moved: {why} ({evidence})"
            ),
            Self::Resume { id } => write!(f, "resume: failover {id} is in progress"),
            Self::Switchover {
                from,
                to,
                term,
                reason,
                ..
            } => write!(f, "switchover: {from} to {to} in term {term}, {reason}"),
        }
    }
}

/// One tick's decision as persisted ("latest decision") and served by
/// `GET /v1/decisions/latest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The view's instant.
    pub at: DateTime<Utc>,
    /// The phase after the tick.
    pub phase: Phase,
    /// The decision.
    pub decision: Decision,
    /// The decision's one-sentence `Display`.
    pub sentence: String,
    /// The topology term of the view.
    pub term: u64,
    /// The primary of the view.
    pub primary: String,
}

impl DecisionRecord {
    /// The candidate table of the decision, when it made one.
    pub fn table(&self) -> Option<&CandidateTable> {
        match &self.decision {
            Decision::Failover { table, .. }
            | Decision::NoCandidate { table, .. }
            | Decision::Switchover { table, .. } => Some(table),
            _ => None,
        }
    }

    /// Bundles a tick's result with the view it was made from.
    pub fn new(phase: Phase, decision: Decision, view: &View) -> Self {
        Self {
            at: view.at,
            sentence: decision.to_string(),
            phase,
            decision,
            term: view.topology.term,
            primary: view.topology.primary.clone(),
        }
    }
}
