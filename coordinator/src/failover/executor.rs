//! The journaled failover executor:
//! `Decided -> Fenced -> Promoted -> Switched -> Repointed -> Verified -> Done`.
//!
//! Traffic moves as soon as the target is promoted (its agent wrote a canary there), before
//! the other secondaries are repointed: clients never wait for them.
//!
//! - [`Executor::begin`] raises the term by compare-and-swap on the topology *before* any side
//!   effect; if the CAS fails (another coordinator got there first) nothing happens at all.
//! - [`Executor::resume`] runs the remaining steps. The topology (in the coordination backend)
//!   records the last completed step, so a new leader resumes from there; the store journal gets
//!   each step written before it runs and again when it finished, one entry per step.
//! - Before every attempt the executor checks that it still holds the lease, and every step's
//!   completion is itself a CAS: a coordinator that lost leadership stops at its next write.
//! - Every failover accounts for what it lost ([`LossAccount`]): the old primary's newest
//!   applied index is taken at the decision, what the target serves once it is promoted; the
//!   record carries the account from the Promoted step on.
//! - In a planned switchover the Fenced step cuts client traffic instead of sealing the old
//!   primary: the old primary must stay up so the target can pull a final snapshot from it
//!   (see `state::desired_state`), and with no client able to write there, nothing
//!   acknowledged after that snapshot can be lost.
//! - In a failover the Fenced step cuts client traffic and makes one bounded attempt to seal
//!   the old primary, side by side ([`crate::vault::FENCE_BOUND`]): the term and the cut fence
//!   it at once, a frozen old primary does not hold the failover, and a seal that did not
//!   complete stays pending in the topology for the leader to finish after the failover
//!   ([`crate::failover::fence`]), which adds its outcome to the step's record.

use crate::config::ClusterConfig;
use crate::coordination::Coordination;
use crate::failover::actions::{ActionError, Actions};
pub use crate::failover::error::ExecError;
use crate::failover::hooks::StepHook;
use crate::model::CandidateTable;
use crate::model::topology::{FailoverInProgress, PendingFence, Topology, Versioned};
use crate::model::{FailoverRecord, FailoverStatus, LossAccount, Step, StepRecord};
use crate::store::Store;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use vault_dr_common::PromotionMode;

/// How often a step is tried before the executor moves on (or never gives up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// Retry until it succeeds (or leadership is lost).
    Forever,
    /// Give up after this many attempts, record the error, and continue with the next step.
    AtMost(u32),
}

/// Retry behaviour of the executor.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First back-off.
    pub initial: Duration,
    /// Longest back-off.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

/// How many attempts each step gets. Fencing, re-pointing and the canary must not hold a
/// failover hostage (the term already fences a returning primary); promotion and the traffic
/// switch are what clients need, so they are retried for as long as we lead.
pub fn attempts(step: Step) -> Attempts {
    match step {
        // A planned switchover's cut; a failover's fence is one bounded attempt (`fence`).
        Step::Fenced => Attempts::AtMost(3),
        Step::Repointed => Attempts::AtMost(5),
        Step::Verified => Attempts::AtMost(10),
        _ => Attempts::Forever,
    }
}

/// Carries out failovers.
#[derive(Debug, Clone)]
pub struct Executor {
    id: String,
    coordination: Arc<dyn Coordination>,
    store: Arc<dyn Store>,
    actions: Actions,
    clusters: Vec<ClusterConfig>,
    retry: RetryPolicy,
    hook: Option<Arc<dyn StepHook>>,
    promotion: PromotionMode,
    publish: Option<Publish>,
}

/// Receives every topology the executor wrote (see [`Executor::with_publish`]).
#[derive(Clone)]
pub struct Publish(pub Arc<dyn Fn(&Topology) + Send + Sync>);

impl std::fmt::Debug for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publish(..)")
    }
}

impl Executor {
    /// Before a planned switchover to `to` begins: waits (bounded) until `to` restores
    /// nothing, by reports received after `since` (see [`crate::failover::actions::Replication::quiesce`]).
    pub async fn quiesce(&self, to: &str, since: chrono::DateTime<Utc>) -> Option<String> {
        let target = self.cluster(to).ok()?;
        self.actions.replication.quiesce(target, since).await
    }

    /// An executor acting as coordinator `id`.
    pub fn new(
        id: impl Into<String>,
        coordination: Arc<dyn Coordination>,
        store: Arc<dyn Store>,
        actions: Actions,
        clusters: Vec<ClusterConfig>,
    ) -> Self {
        Self {
            id: id.into(),
            coordination,
            store,
            actions,
            clusters,
            retry: RetryPolicy::default(),
            hook: None,
            promotion: PromotionMode::default(),
            publish: None,
        }
    }

    /// Hands every topology this executor wrote to `publish` at once (the service's cached
    /// topology, from which the agents' desired states are answered): an agent learns of a
    /// step in its next report's answer, not a tick later.
    pub fn with_publish(mut self, publish: Publish) -> Self {
        self.publish = Some(publish);
        self
    }

    fn published(&self, topology: &Topology) {
        if let Some(p) = &self.publish {
            (p.0)(topology);
        }
    }

    /// Records `mode` (the policy's promotion mode, which the agents receive in their desired
    /// state) in every failover's reason, so the journal shows how the target got its data.
    pub fn with_promotion(mut self, mode: PromotionMode) -> Self {
        self.promotion = mode;
        self
    }

    /// Uses `retry` instead of the default back-off.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Reports step events to `hook`.
    pub fn with_hook(mut self, hook: Arc<dyn StepHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The keeper of the pending fences this executor's failovers leave, acting with the same
    /// coordination, store and actions.
    pub fn fence_keeper(&self) -> crate::failover::fence::FenceKeeper {
        crate::failover::fence::FenceKeeper::new(
            self.id.clone(),
            self.coordination.clone(),
            self.store.clone(),
            self.actions.fencer.clone(),
            self.actions.replication.clone(),
            self.clusters.clone(),
        )
    }

    fn cluster(&self, name: &str) -> Result<&ClusterConfig, ExecError> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ExecError::UnknownCluster(name.to_owned()))
    }

    /// Raises the term from `current` by compare-and-swap and journals the decision. No side
    /// effect happens before the CAS succeeds; on conflict nothing happens at all.
    pub async fn begin(
        &self,
        current: &Versioned<Topology>,
        to: &str,
        reason: &str,
        table: CandidateTable,
        planned: bool,
    ) -> Result<FailoverRecord, ExecError> {
        if !self.coordination.is_leader() {
            return Err(ExecError::NotLeader);
        }
        if let Some(f) = &current.value.failover {
            return Err(ExecError::Refused(format!(
                "failover {} is in progress",
                f.id
            )));
        }
        let from = current.value.primary.clone();
        if from == to {
            return Err(ExecError::Refused(format!("{to} is already the primary")));
        }
        self.cluster(to)?;
        self.cluster(&from)?;
        let term = current.value.term + 1;
        let id = FailoverRecord::id_for(term, &from, to);
        // Taken before any side effect: what the old primary was last seen with.
        let primary_index = self.actions.replication.last_applied(self.cluster(&from)?);
        // Raft: a planned switchover inside one raft hands its leadership over; anything
        // else forms a new raft from the one node of the target fixed with the term.
        let raft_handover = planned
            && self
                .actions
                .replication
                .raft_handover(self.cluster(&from)?, self.cluster(to)?);
        let raft_node = if raft_handover {
            None
        } else {
            self.actions
                .replication
                .raft_recovery_node(self.cluster(to)?)
        };
        let reason = if raft_handover {
            format!(
                "{reason}; a handover inside one raft: the leadership moves to {to}, nothing is recovered or restored"
            )
        } else {
            format!("{reason}; promotion: {}", self.promotion)
        };
        let reason = reason.as_str();
        let next = Topology {
            primary: from.clone(),
            term,
            failover: Some(FailoverInProgress {
                id: id.clone(),
                from: from.clone(),
                to: to.to_owned(),
                completed: Step::Decided,
                planned,
                raft_node,
                raft_handover,
            }),
            // The raft stays the one `from` leads: kept with the term, since the next
            // failover's agents must know it.
            raft_lineage: if raft_handover {
                current.value.raft_of(&from)
            } else {
                current.value.raft_lineage.clone()
            },
            ..current.value.clone()
        };
        // The fencing point: only one coordinator can move the topology off this version.
        self.coordination
            .write_topology(&next, Some(&current.version))
            .await?;
        self.published(&next);
        let now = Utc::now();
        let record = FailoverRecord {
            id,
            term,
            from,
            to: to.to_owned(),
            planned,
            reason: reason.to_owned(),
            decided_at: now,
            table,
            steps: vec![StepRecord {
                step: Step::Decided,
                started_at: now,
                finished_at: Some(now),
                by: self.id.clone(),
                detail: format!("term raised to {term}; {reason}"),
                error: None,
                effect_at: None,
                later: Vec::new(),
            }],
            status: FailoverStatus::InProgress,
            loss: Some(LossAccount::decided(primary_index)),
        };
        self.journal(&record).await;
        tracing::info!(failover = %record.id, "decided: fail over {} -> {} in term {term}", record.from, record.to);
        crate::failpoint::after(Step::Decided).await;
        Ok(record)
    }

    /// Runs the remaining steps of the failover the topology says is in progress, each exactly
    /// once. Returns the finished record, or `None` when no failover is in progress.
    pub async fn resume(&self) -> Result<Option<FailoverRecord>, ExecError> {
        loop {
            if !self.coordination.is_leader() {
                return Err(ExecError::NotLeader);
            }
            let Some(current) = self.coordination.read_topology().await? else {
                return Ok(None);
            };
            let Some(f) = current.value.failover.clone() else {
                return Ok(None);
            };
            let mut record = self.load_record(&current.value, &f).await;
            let Some(step) = f.completed.next() else {
                return Ok(Some(record));
            };
            self.start_step(&mut record, step).await;
            crate::failpoint::before(step).await;
            let started = std::time::Instant::now();
            let mut next = current.value.clone();
            let (detail, error) = if step == Step::Fenced && !f.planned {
                let (detail, unsealed) = self.fence(&f, current.value.term).await?;
                if unsealed.is_some() && !next.fence_pending.iter().any(|p| p.failover == f.id) {
                    next.fence_pending.push(PendingFence {
                        failover: f.id.clone(),
                        cluster: f.from.clone(),
                        term: current.value.term,
                        since: Utc::now(),
                    });
                }
                (detail, unsealed)
            } else {
                let outcome = self.run_step(&current.value, &f, step, &mut record).await?;
                if step == Step::Promoted && outcome.is_ok() {
                    let account = self.account_loss(&record, &f, current.value.term)?;
                    tracing::info!(failover = %record.id, "loss: {account}");
                    record.loss = Some(account);
                }
                match outcome {
                    Ok(detail) => (detail, None),
                    Err(e) => (
                        format!("gave up after {:?}: {e}; continuing", attempts(step)),
                        Some(e.0),
                    ),
                }
            };
            // The forwarders follow the topology: traffic may have reached the new primary as
            // soon as it was promoted, before this step ran. The journal records that time.
            let effect_at = match step {
                Step::Switched if error.is_none() => self
                    .cluster(&f.to)
                    .ok()
                    .and_then(|c| self.actions.traffic.switched_at(c)),
                _ => None,
            };
            // The step's completion is a CAS: if another coordinator moved the topology, we stop.
            if step == Step::Done {
                next.primary = f.to.clone();
                next.failover = None;
                next.last_failover_at = Some(Utc::now());
                if !f.raft_handover {
                    // The target formed a new raft (or replication is by snapshot).
                    next.raft_lineage = None;
                }
            } else if let Some(nf) = next.failover.as_mut() {
                nf.completed = step;
            }
            if !self.coordination.is_leader() {
                return Err(ExecError::NotLeader);
            }
            self.coordination
                .write_topology(&next, Some(&current.version))
                .await?;
            self.published(&next);
            self.finish_step(
                &mut record,
                step,
                detail,
                error,
                effect_at,
                started.elapsed(),
            )
            .await;
            crate::failpoint::after(step).await;
            if step == Step::Done {
                tracing::info!(failover = %record.id, "done: {} is primary in term {}", record.to, record.term);
                return Ok(Some(record));
            }
        }
    }

    /// The Fenced step of a failover (a planned switchover's only cuts, in `run_step`): cuts
    /// client traffic and makes one bounded attempt to seal the old primary, side by side, so
    /// that a frozen or unreachable old primary adds at most [`crate::vault::FENCE_BOUND`].
    /// Returns the journal sentence and, when the seal did not complete, what it did: the
    /// old primary is then fenced by the term and the cut, and stays pending in the topology
    /// for the leader to go on sealing ([`crate::failover::fence`]).
    async fn fence(
        &self,
        f: &FailoverInProgress,
        term: u64,
    ) -> Result<(String, Option<String>), ExecError> {
        if !self.coordination.is_leader() {
            return Err(ExecError::NotLeader);
        }
        let old = self.cluster(&f.from)?;
        let (cut, sealed) = tokio::join!(
            self.actions.traffic.cut(term),
            self.actions.fencer.fence(old, term)
        );
        let cut = cut.unwrap_or_else(|e| format!("traffic not cut: {e}"));
        Ok(match sealed {
            Ok(sealed) => (format!("{sealed}; {cut}"), None),
            Err(e) => (
                format!(
                    "fenced by the term and the traffic cut ({cut}); not sealed yet: the leader goes on sealing {} in the background",
                    f.from
                ),
                Some(e.0),
            ),
        })
    }

    /// The loss account once `f.to` is promoted in `term`: the old primary's index from the
    /// decision (this coordinator's own knowledge when the record has none) against what the
    /// target serves now.
    fn account_loss(
        &self,
        record: &FailoverRecord,
        f: &FailoverInProgress,
        term: u64,
    ) -> Result<LossAccount, ExecError> {
        let primary = match &record.loss {
            Some(l) => l.primary.clone(),
            None => self
                .actions
                .replication
                .last_applied(self.cluster(&f.from)?),
        };
        let served = self.actions.replication.served(self.cluster(&f.to)?, term);
        Ok(LossAccount::promoted(primary, served))
    }

    async fn load_record(&self, topology: &Topology, f: &FailoverInProgress) -> FailoverRecord {
        let mut record = self.load_journaled(topology, f).await;
        record.fill_in_completed(f.completed);
        record
    }

    async fn load_journaled(&self, topology: &Topology, f: &FailoverInProgress) -> FailoverRecord {
        match self.store.failover(&f.id).await {
            Ok(Some(r)) => r,
            other => {
                if let Err(e) = other {
                    tracing::warn!(failover = %f.id, "journal unreadable ({e}); continuing from the topology");
                }
                // The topology is authoritative; the journal is rebuilt from what it says.
                FailoverRecord {
                    id: f.id.clone(),
                    term: topology.term,
                    from: f.from.clone(),
                    to: f.to.clone(),
                    planned: f.planned,
                    reason: "resumed from the topology; the decision's journal entry was not found"
                        .into(),
                    decided_at: Utc::now(),
                    table: CandidateTable {
                        at: Utc::now(),
                        candidates: Vec::new(),
                        winner: None,
                    },
                    steps: Vec::new(),
                    status: FailoverStatus::InProgress,
                    // What this coordinator saw of the old primary, the decider's being lost.
                    loss: Some(LossAccount::decided(
                        self.cluster(&f.from)
                            .ok()
                            .and_then(|c| self.actions.replication.last_applied(c)),
                    )),
                }
            }
        }
    }

    async fn start_step(&self, record: &mut FailoverRecord, step: Step) {
        let now = Utc::now();
        match record.steps.iter_mut().find(|s| s.step == step) {
            // A previous leader wrote it and died before finishing: take it over, keep one entry.
            Some(s) => {
                s.detail = format!("resumed by {} after {} stopped", self.id, s.by);
                s.by = self.id.clone();
            }
            None => record.steps.push(StepRecord {
                step,
                started_at: now,
                finished_at: None,
                by: self.id.clone(),
                detail: "running".into(),
                error: None,
                effect_at: None,
                later: Vec::new(),
            }),
        }
        self.journal(record).await;
        if let Some(h) = &self.hook {
            h.started(record, step);
        }
    }

    async fn finish_step(
        &self,
        record: &mut FailoverRecord,
        step: Step,
        detail: String,
        error: Option<String>,
        effect_at: Option<chrono::DateTime<Utc>>,
        elapsed: Duration,
    ) {
        let now = Utc::now();
        let mut effect = String::new();
        if let Some(s) = record.steps.iter_mut().find(|s| s.step == step) {
            s.finished_at = Some(now);
            s.detail = detail;
            s.error = error.clone();
            s.effect_at = effect_at;
            if let Some(at) = effect_at.filter(|at| *at < s.started_at) {
                effect = format!(
                    "; its effect happened {:.2} s before the step ran, at {}",
                    (s.started_at - at).num_milliseconds() as f64 / 1000.0,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                );
            }
        }
        if step == Step::Done {
            record.status = FailoverStatus::Done;
        }
        self.journal(record).await;
        tracing::info!(failover = %record.id, step = %step, "step {step} finished in {:.2} s{effect}", elapsed.as_secs_f64());
        if let Some(h) = &self.hook {
            h.finished(record, step, elapsed.as_secs_f64(), error.as_deref());
        }
    }

    async fn journal(&self, record: &FailoverRecord) {
        // The buffered store never blocks; a direct store error is logged, never fatal: the
        // topology carries what a resume needs.
        if let Err(e) = self.store.put_failover(record).await {
            tracing::warn!(failover = %record.id, "journal write failed: {e}");
        }
    }

    /// Runs `step` until it succeeds or its [`attempts`] are used up. Every failed attempt
    /// that is retried is journaled in `record` (the step's `error` and the attempt in its
    /// `detail`) and reported to the hooks, so that a step that keeps failing (a target that
    /// cannot carry out its promotion) is seen, with its reason, while it is retried.
    async fn run_step(
        &self,
        topology: &Topology,
        f: &FailoverInProgress,
        step: Step,
        record: &mut FailoverRecord,
    ) -> Result<Result<String, ActionError>, ExecError> {
        let term = topology.term;
        let mut backoff = self.retry.initial;
        let mut attempt = 0u32;
        let mut failed: Option<(u32, String)> = None;
        loop {
            attempt += 1;
            if !self.coordination.is_leader() {
                return Err(ExecError::NotLeader);
            }
            let result = match step {
                Step::Decided => Ok("decided".to_owned()),
                // Planned: cut client traffic, keep the old primary up for the final snapshot
                // (a failover's Fenced step runs in `fence`).
                Step::Fenced if f.raft_handover => Ok(format!(
                    "a handover inside one raft: {} stays a member of it and forwards every client request to its leader; nothing is cut or sealed",
                    f.from
                )),
                Step::Fenced => self.actions.traffic.cut(term).await,
                Step::Promoted if f.raft_handover => {
                    let replication = &self.actions.replication;
                    let to = self.cluster(&f.to)?;
                    match replication
                        .hand_over(self.cluster(&f.from)?, to, term)
                        .await
                    {
                        Ok(handed) => replication
                            .promote(to, term)
                            .await
                            .map(|p| format!("{handed}; {p}")),
                        Err(e) => Err(e),
                    }
                }
                Step::Promoted => {
                    self.actions
                        .replication
                        .promote(self.cluster(&f.to)?, term)
                        .await
                }
                Step::Repointed => {
                    let others: Vec<ClusterConfig> = self
                        .clusters
                        .iter()
                        .filter(|c| c.name != f.to && c.name != f.from)
                        .cloned()
                        .collect();
                    self.actions
                        .replication
                        .repoint(&others, self.cluster(&f.to)?, term)
                        .await
                }
                Step::Switched => {
                    self.actions
                        .traffic
                        .switch(self.cluster(&f.to)?, term)
                        .await
                }
                Step::Verified => {
                    self.actions
                        .verifier
                        .verify(self.cluster(&f.to)?, term)
                        .await
                }
                Step::Done => Ok(format!("{} is primary in term {term}", f.to)),
            };
            match (result, attempts(step)) {
                (Ok(detail), _) => {
                    return Ok(Ok(match failed {
                        None => detail,
                        Some((n, last)) => format!(
                            "{detail} (after {n} failed attempt{}; the last: {last})",
                            if n == 1 { "" } else { "s" }
                        ),
                    }));
                }
                (Err(e), Attempts::AtMost(n)) if attempt >= n => return Ok(Err(e)),
                (Err(e), _) => {
                    tracing::warn!(failover = %f.id, step = %step, attempt, "step {step} failed: {e}; retrying in {backoff:?}");
                    if let Some(s) = record.steps.iter_mut().find(|s| s.step == step) {
                        s.detail = format!(
                            "attempt {attempt} failed at {}; retrying in {backoff:?}, for as long as {} leads",
                            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            self.id
                        );
                        s.error = Some(e.0.clone());
                    }
                    self.journal(record).await;
                    if let Some(h) = &self.hook {
                        h.attempt_failed(record, step, attempt, &e.0);
                    }
                    failed = Some((attempt, e.0));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::local::LocalCoordination;
    use crate::failover::actions::test_util::Recorder;
    use crate::store::embedded::EmbeddedStore;
    use std::collections::BTreeMap;

    fn cluster(name: &str) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            api_addrs: vec![url::Url::parse("http://127.0.0.1:9").unwrap()],
            nodes: vec![format!("{name}-0")],
            priority: 0,
            excluded: false,
            selector: BTreeMap::new(),
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        coordination: Arc<LocalCoordination>,
        store: Arc<dyn Store>,
        recorder: Arc<Recorder>,
        path: std::path::PathBuf,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.json");
        let coordination = Arc::new(LocalCoordination::new(&path, "a", Duration::from_secs(30)));
        assert!(coordination.try_acquire_or_renew().await.unwrap());
        coordination
            .write_topology(&Topology::initial("dc1"), None)
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.path().join("s.sqlite"), Duration::from_secs(60)).unwrap(),
        );
        store.init().await.unwrap();
        Rig {
            _dir: dir,
            coordination,
            store,
            recorder: Recorder::new(),
            path,
        }
    }

    fn executor(r: &Rig, id: &str, coordination: Arc<dyn Coordination>) -> Executor {
        Executor::new(
            id,
            coordination,
            r.store.clone(),
            r.recorder.actions(),
            vec![cluster("dc1"), cluster("dc2"), cluster("dc3")],
        )
        .with_retry(RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        })
    }

    fn table() -> CandidateTable {
        CandidateTable {
            at: Utc::now(),
            candidates: Vec::new(),
            winner: Some("dc2".into()),
        }
    }

    #[tokio::test]
    async fn a_failover_runs_every_step_once_in_order_and_raises_the_term_once() {
        let r = rig().await;
        let e = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        let rec = e
            .begin(&current, "dc2", "primary dc1 down", table(), false)
            .await
            .unwrap();
        assert_eq!(rec.term, 2);
        let done = e.resume().await.unwrap().unwrap();
        assert_eq!(
            r.recorder.calls(),
            [
                "cut traffic 2",
                "fence dc1 2",
                "promote dc2 2",
                "switch dc2 2",
                "repoint dc3->dc2 2",
                "verify dc2 2"
            ]
        );
        let steps: Vec<Step> = done.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, Step::ALL);
        assert_eq!(done.status, FailoverStatus::Done);
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        assert_eq!(
            (t.primary.as_str(), t.term, t.failover.is_none()),
            ("dc2", 2, true)
        );
        assert!(t.last_failover_at.is_some());
        let stored = r.store.failover(&done.id).await.unwrap().unwrap();
        assert_eq!(stored, done);
        assert_eq!(e.resume().await.unwrap(), None, "nothing left to do");
    }

    fn applied(index: u64, seen_at: chrono::DateTime<Utc>) -> crate::model::AppliedIndex {
        crate::model::AppliedIndex {
            node: "dc1-0".into(),
            index,
            seen_at,
            last_seen_at: seen_at,
            interval_seconds: Some(0.5),
        }
    }

    fn served(index: u64, taken_at: chrono::DateTime<Utc>) -> crate::model::ServedData {
        crate::model::ServedData {
            node: "dc2-0".into(),
            mode: vault_dr_common::ReplicationMode::Snapshot,
            index: Some(index),
            taken_at: Some(taken_at),
        }
    }

    #[tokio::test]
    async fn the_record_accounts_the_loss_from_the_primary_at_the_decision_and_the_target_promoted()
    {
        let r = rig().await;
        let seen = Utc::now() - chrono::Duration::seconds(1);
        r.recorder.set_applied("dc1", applied(500, seen));
        r.recorder
            .set_served("dc2", served(480, seen - chrono::Duration::seconds(2)));
        let e = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        let rec = e
            .begin(&current, "dc2", "primary dc1 down", table(), false)
            .await
            .unwrap();
        let decided = rec.loss.as_ref().unwrap();
        assert_eq!(decided.primary.as_ref().map(|p| p.index), Some(500));
        assert_eq!(decided.at_risk, crate::model::AtRisk::Pending);
        // The primary's agent keeps reporting after the decision: the account keeps the
        // decision's figure.
        r.recorder.set_applied("dc1", applied(900, Utc::now()));
        let done = e.resume().await.unwrap().unwrap();
        let loss = done.loss.as_ref().unwrap();
        assert_eq!(
            loss.at_risk,
            crate::model::AtRisk::Accounted {
                entries: 20,
                seconds: Some(2.0)
            }
        );
        let stored = r.store.failover(&done.id).await.unwrap().unwrap();
        assert_eq!(stored.loss, done.loss, "the journal holds the account");
    }

    #[tokio::test]
    async fn a_primary_never_seen_with_an_index_is_not_accounted_rather_than_zero() {
        let r = rig().await;
        r.recorder.set_served("dc2", served(480, Utc::now()));
        let e = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        e.begin(&current, "dc2", "primary dc1 down", table(), false)
            .await
            .unwrap();
        let done = e.resume().await.unwrap().unwrap();
        let loss = done.loss.unwrap();
        assert!(
            matches!(loss.at_risk, crate::model::AtRisk::NotAccounted { .. }),
            "{loss:?}"
        );
        assert_eq!(loss.entries(), None);
    }

    #[tokio::test]
    async fn a_planned_switchover_cuts_traffic_instead_of_sealing_and_records_the_promotion_mode() {
        let r = rig().await;
        let e = executor(&r, "a", r.coordination.clone()).with_promotion(PromotionMode::Fast);
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        let rec = e
            .begin(&current, "dc2", "operator asked", table(), true)
            .await
            .unwrap();
        assert!(rec.planned);
        assert_eq!(rec.reason, "operator asked; promotion: fast");
        let done = e.resume().await.unwrap().unwrap();
        assert_eq!(
            r.recorder.calls(),
            [
                "cut traffic 2",
                "promote dc2 2",
                "switch dc2 2",
                "repoint dc3->dc2 2",
                "verify dc2 2"
            ],
            "no seal in a planned switchover: the target pulls the final snapshot from dc1"
        );
        assert_eq!(done.step(Step::Fenced).unwrap().detail, "cut traffic");
        assert!(
            done.step(Step::Decided)
                .unwrap()
                .detail
                .contains("promotion: fast")
        );
    }

    #[tokio::test]
    async fn a_planned_switchover_inside_one_raft_hands_it_over_and_keeps_its_lineage() {
        use crate::model::topology::RaftLineage;
        let r = rig().await;
        r.recorder.set_raft_handover();
        let e = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        let rec = e
            .begin(&current, "dc2", "operator asked", table(), true)
            .await
            .unwrap();
        assert!(
            rec.reason.contains("a handover inside one raft"),
            "{}",
            rec.reason
        );
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        let f = t.failover.clone().unwrap();
        assert!(f.raft_handover && f.raft_node.is_none(), "{f:?}");
        let initial = RaftLineage {
            term: 1,
            formed_by: "dc1".into(),
        };
        assert_eq!(t.raft_lineage, Some(initial.clone()));
        let done = e.resume().await.unwrap().unwrap();
        assert_eq!(
            r.recorder.calls(),
            [
                "hand-over dc2 2",
                "promote dc2 2",
                "switch dc2 2",
                "repoint dc3->dc2 2",
                "verify dc2 2"
            ],
            "no cut and no seal: the old primary forwards to the raft's leader"
        );
        assert!(
            done.step(Step::Fenced)
                .unwrap()
                .detail
                .contains("nothing is cut or sealed")
        );
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        assert_eq!((t.primary.as_str(), t.term), ("dc2", 2));
        assert_eq!(
            t.raft_lineage,
            Some(initial),
            "dc2 leads the raft dc1 formed"
        );
        // An automatic failover after it forms a new raft: the lineage goes once it is done.
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        e.begin(&current, "dc3", "down", table(), false)
            .await
            .unwrap();
        e.resume().await.unwrap().unwrap();
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        assert_eq!(t.raft_lineage, None);
        assert_eq!(
            t.raft_of("dc3"),
            Some(RaftLineage {
                term: 3,
                formed_by: "dc3".into()
            })
        );
    }

    #[tokio::test]
    async fn a_second_coordinator_with_the_same_stale_topology_does_nothing() {
        let r = rig().await;
        let a = executor(&r, "a", r.coordination.clone());
        // b believes it leads too (a paused process, an unconditioned lease patch).
        let b_coord = Arc::new(LocalCoordination::new(
            &r.path,
            "b",
            Duration::from_secs(30),
        ));
        b_coord.force_leader_for_tests(Duration::from_secs(30));
        let b = executor(&r, "b", b_coord);
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        a.begin(&current, "dc2", "down", table(), false)
            .await
            .unwrap();
        let err = b
            .begin(&current, "dc3", "down", table(), false)
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Conflict(_)), "{err}");
        assert!(
            r.recorder.calls().is_empty(),
            "no side effect before or after a lost CAS"
        );
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        assert_eq!(t.term, 2);
        assert_eq!(t.failover.unwrap().to, "dc2");
        assert_eq!(r.store.failovers(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_new_leader_resumes_after_fenced_without_fencing_again() {
        let r = rig().await;
        let a = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        a.begin(&current, "dc2", "down", table(), false)
            .await
            .unwrap();
        // a fences, then dies before promoting: simulate by running Fenced alone.
        r.recorder.fail("promote", 1_000_000);
        let run = tokio::spawn({
            let a = a.clone();
            async move { a.resume().await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        run.abort();
        // a's lease is gone; b takes over.
        r.coordination.release().await.unwrap();
        r.recorder.fail("promote", 0);
        let b_coord = Arc::new(LocalCoordination::new(
            &r.path,
            "b",
            Duration::from_secs(30),
        ));
        assert!(b_coord.try_acquire_or_renew().await.unwrap());
        let b = executor(&r, "b", b_coord);
        let done = b.resume().await.unwrap().unwrap();
        let calls = r.recorder.calls();
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("fence")).count(),
            1,
            "{calls:?}"
        );
        assert_eq!(
            done.steps.len(),
            Step::ALL.len(),
            "one journal entry per step"
        );
        let promoted = done.step(Step::Promoted).unwrap();
        assert_eq!(promoted.by, "b");
        assert_eq!(done.step(Step::Fenced).unwrap().by, "a");
    }

    #[tokio::test]
    async fn a_coordinator_that_is_not_leader_performs_nothing() {
        let r = rig().await;
        r.coordination.release().await.unwrap();
        let e = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        assert!(matches!(
            e.begin(&current, "dc2", "down", table(), false).await,
            Err(ExecError::NotLeader)
        ));
        assert!(r.recorder.calls().is_empty());
        assert_eq!(
            r.coordination
                .read_topology()
                .await
                .unwrap()
                .unwrap()
                .value
                .term,
            1
        );
    }

    /// A failover dc1 -> dc2 carried out to the end while the fence fails `times` times.
    async fn failed_over_with_fence_failing(times: u32) -> (Rig, Executor, FailoverRecord) {
        let r = rig().await;
        r.recorder.fail("fence", times);
        let e = executor(&r, "a", r.coordination.clone());
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        e.begin(&current, "dc2", "down", table(), false)
            .await
            .unwrap();
        let done = e.resume().await.unwrap().unwrap();
        (r, e, done)
    }

    /// The clusters of the topology's pending fences, in order.
    async fn pending_clusters(r: &Rig) -> Vec<String> {
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        t.fence_pending.into_iter().map(|p| p.cluster).collect()
    }

    fn fences(r: &Rig) -> usize {
        r.recorder
            .calls()
            .iter()
            .filter(|c| c.starts_with("fence"))
            .count()
    }

    #[tokio::test]
    async fn a_fence_that_keeps_failing_does_not_hold_the_failover_hostage_and_stays_pending() {
        let (r, e, done) = failed_over_with_fence_failing(100).await;
        let fenced = done.step(Step::Fenced).unwrap();
        assert_eq!(fenced.error.as_deref(), Some("fence failed on purpose"));
        assert!(
            fenced
                .detail
                .contains("fenced by the term and the traffic cut (cut traffic)"),
            "{}",
            fenced.detail
        );
        assert_eq!(fences(&r), 1, "one bounded attempt in the failover");
        assert_eq!(done.status, FailoverStatus::Done);
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        let pending: Vec<_> = t
            .fence_pending
            .iter()
            .map(|p| (p.failover.as_str(), p.cluster.as_str(), p.term))
            .collect();
        assert_eq!(pending, [("2-dc1-dc2", "dc1", 2)]);

        // The keeper tries again at once, then backs off: no second attempt within a second.
        let keeper = e.fence_keeper();
        assert_eq!(keeper.round().await.unwrap(), 1);
        assert_eq!(keeper.round().await.unwrap(), 1);
        assert_eq!(fences(&r), 2);
        // The next due attempt seals it: journaled as a later event of the Fenced step, then
        // removed from the topology.
        r.recorder.fail("fence", 0);
        tokio::time::sleep(crate::failover::fence::RETRY_FIRST).await;
        assert_eq!(keeper.round().await.unwrap(), 0);
        assert_eq!(fences(&r), 3);
        let t = r.coordination.read_topology().await.unwrap().unwrap().value;
        assert!(t.fence_pending.is_empty(), "{t:?}");
        let record = r.store.failover("2-dc1-dc2").await.unwrap().unwrap();
        let later = &record.step(Step::Fenced).unwrap().later;
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(
            later[0].detail.starts_with("fence dc1; ") && later[0].detail.ends_with("by a"),
            "{}",
            later[0].detail
        );
        assert_eq!(
            record.status,
            FailoverStatus::Done,
            "the rest of the record kept"
        );
        // Nothing more to do, nothing more sent.
        assert_eq!(keeper.round().await.unwrap(), 0);
        assert_eq!(fences(&r), 3);
    }

    #[tokio::test]
    async fn an_old_primary_whose_agents_follow_the_new_primary_is_not_sealed_later() {
        let (r, e, _) = failed_over_with_fence_failing(1).await;
        r.recorder.set_following("dc1");
        assert_eq!(e.fence_keeper().round().await.unwrap(), 0);
        assert_eq!(fences(&r), 1, "no seal sent after the failover");
        let record = r.store.failover("2-dc1-dc2").await.unwrap().unwrap();
        let later = &record.step(Step::Fenced).unwrap().later;
        assert!(
            later[0]
                .detail
                .starts_with("no seal needed: every node of dc1 follows the primary of term 2"),
            "{later:?}"
        );
    }

    #[tokio::test]
    async fn pending_fences_wait_while_a_failover_is_in_progress_and_a_new_primary_is_never_sealed()
    {
        let (r, e, _) = failed_over_with_fence_failing(100).await;
        // dc2 fails too, back to dc1: while that failover runs the keeper does nothing; once
        // dc1 is the primary again its pending fence is dropped, never sent.
        let current = r.coordination.read_topology().await.unwrap().unwrap();
        e.begin(&current, "dc1", "down", table(), false)
            .await
            .unwrap();
        let keeper = e.fence_keeper();
        assert_eq!(keeper.round().await.unwrap(), 1);
        assert_eq!(fences(&r), 1);
        e.resume().await.unwrap().unwrap();
        assert_eq!(pending_clusters(&r).await, ["dc1", "dc2"]);
        let before = fences(&r);
        keeper.round().await.unwrap();
        assert_eq!(fences(&r), before + 1, "dc2 only: {:?}", r.recorder.calls());
        assert!(
            r.recorder.calls().last().unwrap().starts_with("fence dc2"),
            "{:?}",
            r.recorder.calls()
        );
        assert_eq!(pending_clusters(&r).await, ["dc2"]);
        let record = r.store.failover("2-dc1-dc2").await.unwrap().unwrap();
        assert!(
            record.step(Step::Fenced).unwrap().later[0]
                .detail
                .starts_with("not sealed: dc1 became the primary again in term 3"),
        );
    }
}
