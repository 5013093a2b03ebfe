//! The shared store test suite: every [`Store`] implementation must pass [`run_all`] (the embedded
//! store in its unit tests, the MongoDB store on a real MongoDB wire server in
//! `tests/tests/store_mongo.rs`, the buffered store over both).
//!
//! The cases share one store and stay out of each other's way: each uses its own cluster names
//! (`suite-<case>-...`) and, for the journal, its own ids. Every case panics (`assert!`) on the
//! first violation. [`run_all_settled`] takes a `settle` step run between writes and the reads
//! that check them, for stores that write asynchronously (the buffered store passes its
//! `flush`).
//!
//! The fixtures ([`report`], [`failover_record`], [`decision`]) fill every field, nested enums
//! and optional numbers included, so a backend whose encoding loses anything fails the
//! round-trip comparisons.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use vault_dr_common::report::{
    HostSource, HostStats, LatencySummary, PeerProbe, ReplicationMode, ReplicationStatus,
    VaultStatus,
};
use vault_dr_common::{NodeState, Report};

use super::{Store, StoredReport};
use crate::model::FailoverRecord;
use crate::model::journal::{FailoverStatus, Step, StepRecord};
use crate::model::{AppliedIndex, LossAccount, ServedData};
use crate::model::{Candidate, CandidateTable, Eligibility, Ineligible};
use crate::model::{Decision, DecisionRecord, Observers, Phase};

/// Runs every case against `store`.
pub async fn run_all(store: Arc<dyn Store>) {
    run_all_settled(store, || async {}).await;
}

/// Runs every case against `store`, awaiting `settle()` after writes and before the reads that
/// check them.
pub async fn run_all_settled<S, F>(store: Arc<dyn Store>, settle: S)
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let s = store.as_ref();
    init_twice(s).await;
    latest_report_per_node_ordered_by_cluster_then_node(s, &settle).await;
    a_late_older_report_does_not_replace_the_latest(s, &settle).await;
    history_is_a_range_oldest_first(s, &settle).await;
    a_decision_replaces_the_previous(s, &settle).await;
    failovers_are_replaced_by_id_and_listed_newest_first(s, &settle).await;
    repeated_writes_leave_one_copy(s, &settle).await;
}

/// `init` twice is harmless.
pub async fn init_twice(store: &dyn Store) {
    store
        .init()
        .await
        .unwrap_or_else(|e| panic!("first init: {e}"));
    store
        .init()
        .await
        .unwrap_or_else(|e| panic!("second init: {e}"));
}

/// The newest report of every node is its latest, ordered by cluster then node.
pub async fn latest_report_per_node_ordered_by_cluster_then_node<S, F>(
    store: &dyn Store,
    settle: &S,
) where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let t0 = Utc::now() - Duration::minutes(5);
    // Written out of order, so the order of the answer is the store's doing.
    let writes = [
        report("suite-latest-b", "n2", 1, t0),
        report("suite-latest-b", "n1", 1, t0),
        report("suite-latest-a", "n2", 1, t0),
        report("suite-latest-a", "n1", 1, t0),
        report("suite-latest-a", "n1", 2, t0 + Duration::seconds(5)),
    ];
    for r in &writes {
        put_report(store, r).await;
    }
    settle().await;
    let got = latest_of(store, "suite-latest-").await;
    assert_eq!(
        got,
        vec![
            writes[4].clone(),
            writes[2].clone(),
            writes[1].clone(),
            writes[0].clone()
        ],
        "latest reports: one per node, the newest, ordered by cluster then node"
    );
}

/// A report that arrives late with an older receive time lands in the history only.
pub async fn a_late_older_report_does_not_replace_the_latest<S, F>(store: &dyn Store, settle: &S)
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let t1 = Utc::now() - Duration::minutes(1);
    let newer = report("suite-tardy", "n1", 7, t1);
    let older = report("suite-tardy", "n1", 6, t1 - Duration::seconds(10));
    put_report(store, &newer).await;
    put_report(store, &older).await;
    settle().await;
    assert_eq!(
        latest_of(store, "suite-tardy").await,
        vec![newer.clone()],
        "an older report arriving late replaced the newer latest"
    );
    let history = history(store, "suite-tardy", "n1", t1 - Duration::minutes(1)).await;
    assert_eq!(
        history,
        vec![older, newer.clone()],
        "both reports are history"
    );

    // Same receive instant: the higher sequence number wins, whatever the arrival order.
    let same_time_higher_seq = report("suite-tardy", "n1", 8, t1);
    put_report(store, &same_time_higher_seq).await;
    put_report(store, &newer).await;
    settle().await;
    assert_eq!(
        latest_of(store, "suite-tardy").await,
        vec![same_time_higher_seq],
        "at equal receive times the higher sequence number is the latest"
    );
}

/// `report_history` returns the reports received at or after `since`, oldest first, for one
/// node only.
pub async fn history_is_a_range_oldest_first<S, F>(store: &dyn Store, settle: &S)
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let t0 = Utc::now() - Duration::minutes(10);
    let at = |s: i64| t0 + Duration::seconds(s);
    let rs: Vec<StoredReport> = (0..5)
        .map(|i| report("suite-history", "n1", i as u64, at(i)))
        .collect();
    for i in [3, 0, 4, 1, 2] {
        put_report(store, &rs[i]).await;
    }
    put_report(store, &report("suite-history", "n2", 1, at(2))).await;
    put_report(store, &report("suite-history-other", "n1", 1, at(2))).await;
    settle().await;
    assert_eq!(
        history(store, "suite-history", "n1", at(2)).await,
        rs[2..].to_vec(),
        "history from `since` (inclusive), oldest first, this node only"
    );
    assert_eq!(
        history(store, "suite-history", "n1", t0 - Duration::hours(1)).await,
        rs
    );
    assert!(
        history(store, "suite-history", "n1", at(5))
            .await
            .is_empty(),
        "nothing received after the last report"
    );
    assert!(history(store, "suite-history", "nope", t0).await.is_empty());
}

/// `put_decision` replaces the latest decision.
pub async fn a_decision_replaces_the_previous<S, F>(store: &dyn Store, settle: &S)
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let now = Utc::now();
    let first = decision(1, now);
    let second = decision(2, now + Duration::seconds(1));
    store
        .put_decision(&first)
        .await
        .unwrap_or_else(|e| panic!("put decision: {e}"));
    settle().await;
    assert_eq!(latest_decision(store).await, Some(first));
    store
        .put_decision(&second)
        .await
        .unwrap_or_else(|e| panic!("put decision: {e}"));
    settle().await;
    assert_eq!(
        latest_decision(store).await,
        Some(second),
        "the newer decision replaced the older"
    );
}

/// A journal record is inserted, replaced by id (never by one that got less far), read back,
/// and listed newest first with a limit.
pub async fn failovers_are_replaced_by_id_and_listed_newest_first<S, F>(
    store: &dyn Store,
    settle: &S,
) where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    // Far in the future, so these are the newest records whatever else the store holds.
    let base = Utc::now() + Duration::days(365 * 50);
    let a = failover_record(101, "suite-dc1", "suite-dc2", base);
    let b = failover_record(102, "suite-dc2", "suite-dc3", base + Duration::minutes(1));
    let c = failover_record(103, "suite-dc3", "suite-dc1", base + Duration::minutes(2));
    for r in [&b, &c, &a] {
        put_failover(store, r).await;
    }
    settle().await;
    assert_eq!(failover(store, &a.id).await, Some(a.clone()));

    // The next journal step replaces the record.
    let mut b2 = b.clone();
    b2.steps.push(step(
        Step::Fenced,
        b.decided_at + Duration::seconds(1),
        None,
    ));
    b2.steps.push(step(
        Step::Promoted,
        b.decided_at + Duration::seconds(2),
        Some("sealed"),
    ));
    b2.status = FailoverStatus::Failed;
    put_failover(store, &b2).await;
    settle().await;
    assert_eq!(
        failover(store, &b.id).await,
        Some(b2.clone()),
        "replaced by id"
    );
    // An older view of the same failover (a leader that woke up after losing its lease) never
    // replaces the record that got further.
    assert!(b.progress() < b2.progress());
    put_failover(store, &b).await;
    settle().await;
    assert_eq!(
        failover(store, &b.id).await,
        Some(b2.clone()),
        "a record that got less far is not written back"
    );
    assert_eq!(failover(store, "suite-no-such-failover").await, None);

    let top2 = failovers(store, 2).await;
    assert_eq!(
        top2,
        vec![c.clone(), b2.clone()],
        "newest two, newest first"
    );
    let all: Vec<_> = failovers(store, 1000)
        .await
        .into_iter()
        .filter(|r| r.id.contains("suite-dc"))
        .collect();
    assert_eq!(all, vec![c, b2, a], "one copy of each, newest first");
    assert!(
        failovers(store, 0).await.is_empty(),
        "a limit of 0 lists nothing"
    );
}

/// Writing the same report, decision and journal record twice leaves one copy of each.
pub async fn repeated_writes_leave_one_copy<S, F>(store: &dyn Store, settle: &S)
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let now = Utc::now();
    let r = report("suite-idem", "n1", 1, now - Duration::seconds(30));
    let f = failover_record(7, "suite-idem-a", "suite-idem-b", now);
    let d = decision(9, now);
    for _ in 0..2 {
        put_report(store, &r).await;
        put_failover(store, &f).await;
        store
            .put_decision(&d)
            .await
            .unwrap_or_else(|e| panic!("put decision: {e}"));
    }
    settle().await;
    assert_eq!(
        history(store, "suite-idem", "n1", now - Duration::hours(1)).await,
        vec![r.clone()]
    );
    assert_eq!(latest_of(store, "suite-idem").await, vec![r]);
    let journal: Vec<_> = failovers(store, 1000)
        .await
        .into_iter()
        .filter(|x| x.id == f.id)
        .collect();
    assert_eq!(journal, vec![f]);
    assert_eq!(latest_decision(store).await, Some(d));
}

async fn put_report(store: &dyn Store, r: &StoredReport) {
    store
        .put_report(r)
        .await
        .unwrap_or_else(|e| panic!("put report {}/{}: {e}", r.report.cluster, r.report.node));
}

async fn put_failover(store: &dyn Store, f: &FailoverRecord) {
    store
        .put_failover(f)
        .await
        .unwrap_or_else(|e| panic!("put failover {}: {e}", f.id));
}

async fn latest_of(store: &dyn Store, cluster_prefix: &str) -> Vec<StoredReport> {
    store
        .latest_reports()
        .await
        .unwrap_or_else(|e| panic!("latest reports: {e}"))
        .into_iter()
        .filter(|r| r.report.cluster.starts_with(cluster_prefix))
        .collect()
}

async fn history(
    store: &dyn Store,
    cluster: &str,
    node: &str,
    since: DateTime<Utc>,
) -> Vec<StoredReport> {
    store
        .report_history(cluster, node, since)
        .await
        .unwrap_or_else(|e| panic!("history {cluster}/{node}: {e}"))
}

async fn latest_decision(store: &dyn Store) -> Option<DecisionRecord> {
    store
        .latest_decision()
        .await
        .unwrap_or_else(|e| panic!("latest decision: {e}"))
}

async fn failover(store: &dyn Store, id: &str) -> Option<FailoverRecord> {
    store
        .failover(id)
        .await
        .unwrap_or_else(|e| panic!("failover {id}: {e}"))
}

async fn failovers(store: &dyn Store, limit: usize) -> Vec<FailoverRecord> {
    store
        .failovers(limit)
        .await
        .unwrap_or_else(|e| panic!("failovers({limit}): {e}"))
}

/// A complete report of `cluster/node` with sequence number `seq`, received at `received_at`.
pub fn report(cluster: &str, node: &str, seq: u64, received_at: DateTime<Utc>) -> StoredReport {
    let started = received_at - Duration::hours(1);
    StoredReport {
        received_at,
        report: Report {
            schema_version: vault_dr_common::report::SCHEMA_VERSION,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            seq,
            agent_started_at: started,
            sent_at: received_at - Duration::milliseconds(3),
            agent_version: "0.1.0".to_owned(),
            vault: VaultStatus {
                state: NodeState::Active,
                last_probe_ms: Some(1.25),
                latency: LatencySummary {
                    samples: 60,
                    p50_ms: 0.8,
                    p99_ms: 4.5,
                    error_ratio: 0.0,
                },
                recent: Default::default(),
                version: Some("2.7.2".to_owned()),
                cluster_id: Some(format!("{cluster}-id")),
                cluster_name: Some(cluster.to_owned()),
                raft_applied_index: Some(1000 + seq),
                raft_commit_index: Some(1000 + seq),
                autopilot_healthy: None,
                last_error: None,
            },
            host: HostStats {
                source: HostSource::Cgroup,
                pid: None,
                cpu_usage_cores: Some(0.37),
                cpu_seconds_total: Some(1234.5),
                memory_used_bytes: Some(512 << 20),
                memory_limit_bytes: Some(2 << 30),
            },
            replication: ReplicationStatus {
                mode: ReplicationMode::Snapshot,
                seeded: true,
                lag_entries: Some(12),
                lag_seconds: Some(4.2),
                replicated_index: Some(988 + seq),
                last_success_at: Some(received_at - Duration::seconds(4)),
                ..ReplicationStatus::default()
            },
            primary_probe: Some(PeerProbe {
                cluster: "dc1".to_owned(),
                state: NodeState::Unreachable,
                at: received_at - Duration::seconds(1),
                latency_ms: None,
            }),
            seen_term: 3,
            applied_term: 3,
        },
    }
}

/// A candidate table with an eligible and an ineligible row.
pub fn table(at: DateTime<Utc>) -> CandidateTable {
    CandidateTable {
        at,
        candidates: vec![
            Candidate {
                cluster: "dc2".to_owned(),
                rank: Some(1),
                eligibility: Eligibility::Eligible,
                state: Some(NodeState::Active),
                lag_entries: Some(3),
                lag_seconds: Some(1.5),
                latency_p99_ms: Some(2.25),
                cpu_usage_cores: Some(0.2),
                memory_headroom_ratio: Some(0.75),
                priority: 0,
                report_age_seconds: Some(0.4),
                promotion_restores: false,
                log_index: None,
            },
            Candidate {
                cluster: "dc3".to_owned(),
                rank: None,
                eligibility: Eligibility::Ineligible(Ineligible::Lagging {
                    by_entries: Some(5000),
                    by_seconds: None,
                }),
                state: Some(NodeState::Standby),
                lag_entries: Some(5000),
                lag_seconds: None,
                latency_p99_ms: None,
                cpu_usage_cores: Some(1.9),
                memory_headroom_ratio: Some(0.1),
                priority: -2,
                report_age_seconds: Some(0.9),
                promotion_restores: false,
                log_index: None,
            },
        ],
        winner: Some("dc2".to_owned()),
    }
}

/// A journal record of a failover to `term`, decided at `decided_at`, with its first step.
pub fn failover_record(
    term: u64,
    from: &str,
    to: &str,
    decided_at: DateTime<Utc>,
) -> FailoverRecord {
    FailoverRecord {
        id: FailoverRecord::id_for(term, from, to),
        term,
        from: from.to_owned(),
        to: to.to_owned(),
        planned: term.is_multiple_of(2),
        reason: format!("primary {from} down: all three observers agree for 3 ticks"),
        decided_at,
        table: table(decided_at),
        steps: vec![step(Step::Decided, decided_at, None)],
        status: FailoverStatus::InProgress,
        // A full account, so every store is shown to keep it as written.
        loss: Some(LossAccount::promoted(
            Some(AppliedIndex {
                node: format!("{from}-0"),
                index: 5_000 + term,
                seen_at: decided_at - Duration::milliseconds(800),
                last_seen_at: decided_at - Duration::milliseconds(300),
                interval_seconds: Some(0.5),
            }),
            Some(ServedData {
                node: format!("{to}-0"),
                mode: ReplicationMode::Snapshot,
                index: Some(4_990),
                taken_at: Some(decided_at - Duration::milliseconds(2_300)),
            }),
        )),
    }
}

fn step(step: Step, at: DateTime<Utc>, error: Option<&str>) -> StepRecord {
    StepRecord {
        step,
        started_at: at,
        finished_at: error.is_none().then(|| at + Duration::milliseconds(250)),
        by: "coordinator-0".to_owned(),
        detail: format!("{step} at {at}"),
        error: error.map(str::to_owned),
        effect_at: None,
        later: Vec::new(),
    }
}

/// A decision record; odd `n` is a suspect tick, even `n` a failover with its table.
pub fn decision(n: u32, at: DateTime<Utc>) -> DecisionRecord {
    let (phase, decision) = if !n.is_multiple_of(2) {
        (
            Phase::Suspect {
                since: at - Duration::seconds(2),
                ticks: n,
            },
            Decision::Suspect {
                primary: "dc1".to_owned(),
                ticks: n,
                confirm: 3,
                observers: Observers {
                    direct_down: true,
                    reports_down: true,
                    secondaries_down: 1,
                    secondaries_fresh: 2,
                    quorum_met: false,
                    reports_warming: false,
                },
            },
        )
    } else {
        let id = FailoverRecord::id_for(u64::from(n), "dc1", "dc2");
        (
            Phase::FailingOver { id },
            Decision::Failover {
                from: "dc1".to_owned(),
                to: "dc2".to_owned(),
                term: u64::from(n),
                reason: "all three observers agree".to_owned(),
                table: table(at),
            },
        )
    };
    DecisionRecord {
        at,
        sentence: decision.to_string(),
        phase,
        decision,
        term: u64::from(n),
        primary: "dc1".to_owned(),
    }
}
