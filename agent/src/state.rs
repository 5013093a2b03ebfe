//! The agent's shared state: the latest observation of node, host and replication (written by
//! the probe loop), the desired state with the highest term (written by the report sender),
//! the report sequence, and the liveness/readiness flags the HTTP handlers read.
//!
//! Locks are `std::sync::Mutex`, held only to copy a value in or out, never across an await.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;
use vault_dr_common::{
    DesiredState, HostStats, NodeState, PeerProbe, ReplicationStatus, Report, SCHEMA_VERSION,
    VaultStatus,
};

/// One probe round's findings.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The local node.
    pub vault: VaultStatus,
    /// Host, process or container figures.
    pub host: HostStats,
    /// Replication status.
    pub replication: ReplicationStatus,
    /// Probe of the primary, on a secondary.
    pub primary_probe: Option<PeerProbe>,
}

#[derive(Debug, Default)]
struct Inner {
    observation: Option<Observation>,
    desired: Option<DesiredState>,
    seen_term: u64,
    applied_term: u64,
    seq: u64,
    evidence: Option<Evidence>,
}

/// What a probe round found as an observer of the primary: whether the local node serves (or
/// restores), and whether the primary answered this agent's probe (`None`: not probed, e.g.
/// on the primary itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The local node serves or restores.
    pub node_up: bool,
    /// The primary answered as serving (or restoring).
    pub primary_up: Option<bool>,
}

impl Evidence {
    /// Something is down: the local node, or the primary as this agent sees it.
    pub fn alarming(self) -> bool {
        !self.node_up || self.primary_up == Some(false)
    }
}

/// State shared by the probe loop, the report sender and the HTTP handlers.
#[derive(Debug)]
pub struct Shared {
    cluster: String,
    node: String,
    started_at: DateTime<Utc>,
    inner: Mutex<Inner>,
    ready: AtomicBool,
    running: AtomicBool,
    restoring: AtomicBool,
    /// Counts the kept desired states that differ from the one before. Every consumer (the
    /// replication backend, the write gate) watches it with its own receiver, so each one
    /// acts at once (a `Notify` would wake only one of them).
    desired_generation: tokio::sync::watch::Sender<u64>,
    /// Woken when `applied_term` rises (the report sender tells the coordinator at once).
    applied_changed: Notify,
    /// Woken when a probe round's [`Evidence`] differs from the round before (the report
    /// sender tells the coordinator at once).
    evidence_changed: Notify,
}

/// One consumer's watch on the kept desired state ([`Shared::desired_changes`]).
#[derive(Debug)]
pub struct DesiredChanges(tokio::sync::watch::Receiver<u64>);

impl DesiredChanges {
    /// Resolves when a different desired state was kept since the last call (at once if one
    /// was meanwhile).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The `Shared` is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}

/// What [`Shared::offer_desired`] did with a desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Kept: its term is at least the current one.
    Kept,
    /// Ignored: its term is lower than one already seen (a stale coordinator).
    StaleTerm,
    /// Ignored: it is for another cluster.
    WrongCluster,
}

impl Shared {
    /// Fresh state for node `node` of `cluster`.
    pub fn new(cluster: &str, node: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            started_at: Utc::now(),
            inner: Mutex::new(Inner::default()),
            ready: AtomicBool::new(false),
            running: AtomicBool::new(false),
            restoring: AtomicBool::new(false),
            desired_generation: tokio::sync::watch::Sender::new(0),
            applied_changed: Notify::new(),
            evidence_changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while copying plain data: keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Stores the latest observation and marks the agent ready.
    pub fn set_observation(&self, o: Observation) {
        self.lock().observation = Some(o);
        self.ready.store(true, Ordering::Release);
    }

    /// The latest observation.
    pub fn observation(&self) -> Option<Observation> {
        self.lock().observation.clone()
    }

    /// Whether the first probe round has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the loops as running or stopped.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Whether the loops are running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Marks a snapshot restore started by this agent as in flight (or finished): reports
    /// say `restoring` meanwhile, whatever the last probe saw.
    pub fn set_restoring(&self, restoring: bool) {
        self.restoring.store(restoring, Ordering::Release);
    }

    /// Whether a restore started by this agent is in flight.
    pub fn is_restoring(&self) -> bool {
        self.restoring.load(Ordering::Acquire)
    }

    /// The kept desired state.
    pub fn desired(&self) -> Option<DesiredState> {
        self.lock().desired.clone()
    }

    /// Highest term seen.
    pub fn seen_term(&self) -> u64 {
        self.lock().seen_term
    }

    /// Highest term whose desired state has been carried out.
    pub fn applied_term(&self) -> u64 {
        self.lock().applied_term
    }

    /// Records that the desired state of `term` has been carried out (never lowers it).
    pub fn set_applied_term(&self, term: u64) {
        let raised = {
            let mut inner = self.lock();
            let raised = term > inner.applied_term;
            inner.applied_term = inner.applied_term.max(term);
            raised
        };
        if raised {
            self.applied_changed.notify_one();
        }
    }

    /// Resolves at the next rise of `applied_term` (or at once if one happened since the last
    /// wait: the wake-up is kept).
    pub async fn applied_term_raised(&self) {
        self.applied_changed.notified().await;
    }

    /// Records a probe round's evidence; wakes [`Shared::evidence_changed`] when it differs
    /// from the previous round's.
    pub fn note_evidence(&self, e: Evidence) {
        let changed = self
            .lock()
            .evidence
            .replace(e)
            .is_some_and(|prev| prev != e);
        if changed {
            self.evidence_changed.notify_one();
        }
    }

    /// Whether the latest probe round found something down ([`Evidence::alarming`]).
    pub fn alarmed(&self) -> bool {
        self.lock().evidence.is_some_and(Evidence::alarming)
    }

    /// Resolves at the next change of the probe rounds' [`Evidence`] (or at once if one
    /// happened since the last wait).
    pub async fn evidence_changed(&self) {
        self.evidence_changed.notified().await;
    }

    /// Watches the kept desired state: [`DesiredChanges::changed`] resolves when a different
    /// one was kept since this watcher last looked (not for one kept before it was made).
    pub fn desired_changes(&self) -> DesiredChanges {
        DesiredChanges(self.desired_generation.subscribe())
    }

    /// Offers a desired state from the coordinator: kept unless its term is lower than the
    /// highest seen (the term is the fencing token) or it names another cluster.
    pub fn offer_desired(&self, d: DesiredState) -> Offer {
        if d.cluster != self.cluster {
            return Offer::WrongCluster;
        }
        let changed = {
            let mut inner = self.lock();
            if d.term < inner.seen_term {
                return Offer::StaleTerm;
            }
            inner.seen_term = d.term;
            let changed = inner.desired.as_ref() != Some(&d);
            inner.desired = Some(d);
            changed
        };
        if changed {
            self.desired_generation.send_modify(|g| *g += 1);
        }
        Offer::Kept
    }

    /// Builds the next report to send (raises `seq` by one); `None` before the first probe.
    pub fn next_report(&self) -> Option<Report> {
        let mut inner = self.lock();
        let o = inner.observation.clone()?;
        inner.seq += 1;
        Some(self.build(o, inner.seq, inner.seen_term, inner.applied_term))
    }

    /// The report as of now with the last `seq` used, without raising it (`GET /v1/report`).
    pub fn current_report(&self) -> Option<Report> {
        let inner = self.lock();
        let o = inner.observation.clone()?;
        Some(self.build(o, inner.seq, inner.seen_term, inner.applied_term))
    }

    fn build(&self, mut o: Observation, seq: u64, seen_term: u64, applied_term: u64) -> Report {
        if self.is_restoring() {
            o.vault.state = NodeState::Restoring;
        }
        Report {
            schema_version: SCHEMA_VERSION,
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            seq,
            agent_started_at: self.started_at,
            sent_at: Utc::now(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            vault: o.vault,
            host: o.host,
            replication: o.replication,
            primary_probe: o.primary_probe,
            seen_term,
            applied_term,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vault_dr_common::{LatencySummary, NodeState, Role};

    pub(crate) fn observation() -> Observation {
        Observation {
            vault: VaultStatus {
                state: NodeState::Active,
                last_probe_ms: Some(1.0),
                latency: LatencySummary::default(),
                recent: Default::default(),
                version: None,
                cluster_id: None,
                cluster_name: None,
                raft_applied_index: Some(3),
                raft_commit_index: Some(3),
                autopilot_healthy: None,
                last_error: None,
            },
            host: HostStats::default(),
            replication: ReplicationStatus::default(),
            primary_probe: None,
        }
    }

    fn desired(term: u64, cluster: &str) -> DesiredState {
        DesiredState {
            term,
            cluster: cluster.into(),
            role: Role::Secondary,
            primary: "dc1".into(),
            primary_api_addr: None,
            failover_in_progress: false,
            promotion: Default::default(),
            final_snapshot_from: None,
            primary_suspect: false,
            raft_formed_term: None,
            raft_recover_node: None,
            raft_formed_by: None,
            raft_handover: false,
        }
    }

    /// Whether `f` resolves within 50 ms.
    async fn resolves(f: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(50), f)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_change_of_evidence_wakes_the_sender_and_something_down_is_alarming() {
        let s = Shared::new("dc2", "n1");
        let up = Evidence {
            node_up: true,
            primary_up: Some(true),
        };
        s.note_evidence(up);
        assert!(
            !resolves(s.evidence_changed()).await,
            "a first round is no change"
        );
        assert!(!s.alarmed());
        s.note_evidence(up);
        assert!(!resolves(s.evidence_changed()).await, "the same again");
        let primary_down = Evidence {
            primary_up: Some(false),
            ..up
        };
        s.note_evidence(primary_down);
        assert!(
            resolves(s.evidence_changed()).await,
            "the primary went down"
        );
        assert!(s.alarmed());
        let node_down = Evidence {
            node_up: false,
            primary_up: None,
        };
        s.note_evidence(node_down);
        assert!(resolves(s.evidence_changed()).await, "the node went down");
        assert!(s.alarmed());
        s.note_evidence(up);
        assert!(resolves(s.evidence_changed()).await, "both back");
        assert!(!s.alarmed());
    }

    #[tokio::test]
    async fn a_different_desired_state_and_a_raised_term_wake_their_waiters_once() {
        let s = Shared::new("dc2", "n1");
        // Two consumers (the replication backend and the write gate): each is woken.
        let (mut a, mut b) = (s.desired_changes(), s.desired_changes());
        assert!(!resolves(a.changed()).await, "nothing kept yet");
        assert_eq!(s.offer_desired(desired(1, "dc2")), Offer::Kept);
        assert!(resolves(a.changed()).await, "first desired state");
        assert!(resolves(b.changed()).await, "the other watcher too");
        assert_eq!(s.offer_desired(desired(1, "dc2")), Offer::Kept);
        assert!(!resolves(a.changed()).await, "the same again: no wake-up");
        let mut promoted = desired(2, "dc2");
        promoted.role = Role::Primary;
        s.offer_desired(promoted);
        assert!(resolves(b.changed()).await, "a new term");
        assert!(resolves(a.changed()).await, "a new term, for both");
        s.offer_desired(desired(1, "dc2"));
        assert!(!resolves(a.changed()).await, "a stale term is not kept");
        assert!(!resolves(b.changed()).await);

        assert!(!resolves(s.applied_term_raised()).await);
        s.set_applied_term(2);
        assert!(resolves(s.applied_term_raised()).await, "raised to 2");
        s.set_applied_term(2);
        s.set_applied_term(1);
        assert!(!resolves(s.applied_term_raised()).await, "not raised");
    }

    #[test]
    fn seq_rises_by_one_per_report_and_get_does_not_raise_it() {
        let s = Shared::new("dc2", "n1");
        assert!(
            s.next_report().is_none(),
            "no report before the first probe"
        );
        s.set_observation(observation());
        assert_eq!(s.next_report().unwrap().seq, 1);
        assert_eq!(s.next_report().unwrap().seq, 2);
        assert_eq!(s.current_report().unwrap().seq, 2);
        assert_eq!(s.next_report().unwrap().seq, 3);
    }

    #[test]
    fn only_the_highest_term_is_kept() {
        let s = Shared::new("dc2", "n1");
        assert_eq!(s.offer_desired(desired(5, "dc2")), Offer::Kept);
        assert_eq!(s.offer_desired(desired(4, "dc2")), Offer::StaleTerm);
        assert_eq!(s.desired().unwrap().term, 5);
        assert_eq!(
            s.offer_desired(desired(5, "dc2")),
            Offer::Kept,
            "same term updates"
        );
        assert_eq!(s.offer_desired(desired(9, "dc3")), Offer::WrongCluster);
        assert_eq!(s.seen_term(), 5);
        s.set_observation(observation());
        assert_eq!(s.next_report().unwrap().seen_term, 5);
    }
}
