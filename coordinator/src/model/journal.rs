//! The failover journal: one record per failover with every step, its timing and outcome, and
//! the candidate table the choice was made from.

use crate::model::CandidateTable;
use crate::model::loss::LossAccount;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Steps of a failover, in order. `Ord` follows the order of execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Term raised by CAS, target chosen, table stored.
    Decided,
    /// Old primary sealed (or found unreachable) and out of traffic.
    Fenced,
    /// Target made primary (its agent's canary write went through: it is writable).
    Promoted,
    /// Client traffic switched to the new primary: as soon as it is writable, so that clients
    /// never wait for the other secondaries.
    Switched,
    /// Other secondaries told to replicate from the new primary.
    Repointed,
    /// Canary write and read succeeded on the new primary.
    Verified,
    /// Finished.
    Done,
}

impl Step {
    /// All steps in order.
    pub const ALL: [Step; 7] = [
        Self::Decided,
        Self::Fenced,
        Self::Promoted,
        Self::Switched,
        Self::Repointed,
        Self::Verified,
        Self::Done,
    ];

    /// The step after this one (`None` after `Done`).
    pub fn next(self) -> Option<Step> {
        Self::ALL.iter().copied().find(|s| *s > self)
    }

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decided => "decided",
            Self::Fenced => "fenced",
            Self::Promoted => "promoted",
            Self::Repointed => "repointed",
            Self::Switched => "switched",
            Self::Verified => "verified",
            Self::Done => "done",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of a whole failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverStatus {
    /// Steps still to run.
    InProgress,
    /// Reached `Done`.
    Done,
    /// Abandoned (a step failed beyond retry); the reason is in the last step.
    Failed,
}

/// One step of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Which step.
    pub step: Step,
    /// When it was written to the journal (before running).
    pub started_at: DateTime<Utc>,
    /// When it completed; `None` while it runs or if it never completed.
    pub finished_at: Option<DateTime<Utc>>,
    /// Which coordinator ran it.
    pub by: String,
    /// What it did, in one sentence ("sealed dc1", "dc1 unreachable, fenced by traffic switch").
    pub detail: String,
    /// Error of the latest attempt, if it failed.
    pub error: Option<String>,
    /// When the step's effect happened, where that is not when the step ran: the forwarders
    /// follow the topology, so client traffic reaches the new primary as soon as it is
    /// promoted, before the Switched step runs and finds it done. `None`: the effect is the
    /// step's own (its `finished_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_at: Option<DateTime<Utc>>,
    /// What happened after the step finished because of it (a seal that completed in the
    /// background after the Fenced step gave up waiting), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<LaterEvent>,
}

impl StepRecord {
    /// When the step's effect happened: [`StepRecord::effect_at`], else when it finished.
    pub fn took_effect_at(&self) -> Option<DateTime<Utc>> {
        self.effect_at.or(self.finished_at)
    }
}

/// Something a step's effect did after the step finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaterEvent {
    /// When it happened (when the coordinator saw it).
    pub at: DateTime<Utc>,
    /// What happened, in one sentence.
    pub detail: String,
}

/// The journal record of one failover (or planned switchover).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// Unique id (`<term>-<from>-<to>`).
    pub id: String,
    /// Term the failover establishes.
    pub term: u64,
    /// Old primary.
    pub from: String,
    /// New primary.
    pub to: String,
    /// Operator switchover rather than automatic failover.
    pub planned: bool,
    /// Why the failover was decided (the detector's sentence).
    pub reason: String,
    /// When it was decided.
    pub decided_at: DateTime<Utc>,
    /// The full candidate table the target was chosen from.
    pub table: CandidateTable,
    /// Steps so far, in order, each once.
    pub steps: Vec<StepRecord>,
    /// Outcome.
    pub status: FailoverStatus,
    /// What the failover lost (entries and seconds at risk), accounted once the target is
    /// promoted; `None` in records written before loss accounting existed.
    #[serde(default)]
    pub loss: Option<LossAccount>,
}

impl FailoverRecord {
    /// Adds an entry for every step up to `completed` (the topology's word, which is
    /// authoritative) that the journal lacks: a leader can complete a step in the topology
    /// and stop before its journal entry reaches the store (a buffered store, a freeze). Each
    /// step then appears once, in order; the filled-in one says its time was not journaled and
    /// carries the previous entry's end.
    pub fn fill_in_completed(&mut self, completed: Step) {
        for step in Step::ALL.into_iter().filter(|s| *s <= completed) {
            if self.steps.iter().any(|r| r.step == step) {
                continue;
            }
            let at = self
                .steps
                .iter()
                .filter(|r| r.step < step)
                .filter_map(|r| r.finished_at)
                .max()
                .unwrap_or(self.decided_at);
            self.steps.push(StepRecord {
                step,
                started_at: at,
                finished_at: Some(at),
                by: "a previous leader".into(),
                detail: format!(
                    "{step} done, as the topology records; the previous leader's journal entry never reached the store (time not journaled: shown as the previous entry's end)"
                ),
                error: None,
                effect_at: None,
                later: Vec::new(),
            });
        }
        self.steps.sort_by_key(|r| r.step);
    }

    /// How far the record has got: one point per step started, one per step finished, and a
    /// step's worth more once it has ended (done or failed). Every write of one failover only
    /// raises it, so the stores keep the record with the highest progress: a leader that wakes
    /// up after losing its lease can never put an older view of the journal back.
    pub fn progress(&self) -> u64 {
        let steps: u64 = self
            .steps
            .iter()
            .map(|s| 1 + u64::from(s.finished_at.is_some()))
            .sum();
        steps
            + if self.status == FailoverStatus::InProgress {
                0
            } else {
                2
            }
    }

    /// The journal id of a failover to `term`.
    pub fn id_for(term: u64, from: &str, to: &str) -> String {
        format!("{term}-{from}-{to}")
    }

    /// The record of `step`, if written.
    pub fn step(&self, step: Step) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// Seconds from decision to the completion of `step`, if it completed.
    pub fn seconds_to(&self, step: Step) -> Option<f64> {
        let done = self.step(step)?.finished_at?;
        Some((done - self.decided_at).num_milliseconds() as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_before_loss_accounting_still_loads() {
        let old = r#"{
            "id": "2-p-s1", "term": 2, "from": "p", "to": "s1", "planned": false,
            "reason": "primary p down", "decided_at": "2025-01-01T12:00:00Z",
            "table": {"at": "2025-01-01T12:00:00Z", "candidates": [], "winner": "s1"},
            "steps": [], "status": "done"
        }"#;
        let r: FailoverRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.id.as_str(), r.status), ("2-p-s1", FailoverStatus::Done));
        assert_eq!(
            r.loss, None,
            "no account: not accounted, never a made-up zero"
        );
    }

    #[test]
    fn steps_the_topology_completed_but_the_journal_lacks_are_filled_in_once_in_order() {
        let old = r#"{
            "id": "2-p-s1", "term": 2, "from": "p", "to": "s1", "planned": false,
            "reason": "primary p down", "decided_at": "2025-01-01T12:00:00Z",
            "table": {"at": "2025-01-01T12:00:00Z", "candidates": [], "winner": "s1"},
            "steps": [{"step": "decided", "started_at": "2025-01-01T12:00:00Z",
                       "finished_at": "2025-01-01T12:00:01Z", "by": "c1", "detail": "decided"}],
            "status": "in_progress"
        }"#;
        let mut r: FailoverRecord = serde_json::from_str(old).unwrap();
        // The leader completed Fenced in the topology and froze before journaling it.
        r.fill_in_completed(Step::Fenced);
        let steps: Vec<Step> = r.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, [Step::Decided, Step::Fenced]);
        let fenced = &r.steps[1];
        assert_eq!(fenced.by, "a previous leader");
        assert!(
            fenced.detail.contains("never reached the store"),
            "{}",
            fenced.detail
        );
        assert_eq!(
            fenced.finished_at, r.steps[0].finished_at,
            "the previous entry's end"
        );
        // Again, or with nothing missing: unchanged.
        let before = r.clone();
        r.fill_in_completed(Step::Fenced);
        r.fill_in_completed(Step::Decided);
        assert_eq!(r, before);
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let names: Vec<_> = Step::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "decided",
                "fenced",
                "promoted",
                "switched",
                "repointed",
                "verified",
                "done"
            ]
        );
        assert_eq!(Step::Decided.next(), Some(Step::Fenced));
        assert_eq!(Step::Verified.next(), Some(Step::Done));
        assert_eq!(Step::Done.next(), None);
    }
}
