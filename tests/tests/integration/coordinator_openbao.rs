//! A `vault-dr coordinator` process against four real OpenBao clusters with four real agents
//! (in-process), built by the one harness (`Group::builder().ha(..)`):
//! while everything is healthy nothing happens; killing the primary's process leads to exactly
//! one failover, to term 2, to the expected target, shown by the journal, the topology and the
//! `vault-dr history` command.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built `vault-dr` binary
//! (`cargo build --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use vault_dr_coordinator::api::{ClustersResponse, TopologyResponse};
use vault_dr_coordinator::model::DecisionRecord;
use vault_dr_coordinator::model::{Eligibility, Ineligible};
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus, Step};
use vault_dr_tests::coordinators::{Backend, HaGroups};
use vault_dr_tests::lab::harness::{Group, failover_policy};
use vault_dr_tests::lab::wait::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_leads_to_exactly_one_failover_and_health_to_none() {
    // s1 is excluded by the operator, s3's agent will be stopped (stale report): s2 must win.
    // The agents report every 300 ms, with no replication and no DR token.
    let mut lab = Group::builder()
        .clusters(["p", "s1", "s2", "s3"])
        .exclude("s1")
        .coordinators(1)
        .ha(Backend::Local)
        .dr_token(false)
        .policy_file(failover_policy(
            Duration::from_millis(500),
            2,
            Duration::from_secs(2),
            Duration::from_secs(60),
        ))
        .agents(|a| a.replication = None)
        .start()
        .await
        .unwrap();
    lab.group.start_all().await.unwrap();
    lab.start_agents().await.unwrap();

    // Healthy: the coordinator leads, sees every node, and decides nothing for 8 s.
    wait_for(
        "the coordinator to see all four agents",
        Duration::from_secs(30),
        || async {
            let d: Option<DecisionRecord> = lab.group.get(0, "/v1/decisions/latest").await;
            let clusters_seen: Option<serde_json::Value> = lab.group.get(0, "/v1/clusters").await;
            let nodes = clusters_seen
                .as_ref()
                .map(|v| {
                    v["view"]["clusters"]
                        .as_object()
                        .unwrap()
                        .values()
                        .filter(|c| !c["nodes"].as_array().unwrap().is_empty())
                        .count()
                })
                .unwrap_or(0);
            d.is_some() && nodes == 4
        },
    )
    .await;
    // A sleep on purpose: the assertions below are that nothing was decided meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let failovers: Vec<FailoverRecord> = lab.group.get(0, "/v1/failovers").await.unwrap();
    assert!(
        failovers.is_empty(),
        "no failover while healthy: {failovers:?}"
    );
    let topo: TopologyResponse = lab.group.get(0, "/v1/topology").await.unwrap();
    assert_eq!(topo.topology.as_ref().unwrap().term, 1);
    assert_eq!(topo.leader.as_deref(), Some("c1"));

    // s3's agent goes silent; then the primary's process dies.
    drop(lab.agents.remove("s3"));
    wait_for(
        "s3's report to go stale",
        Duration::from_secs(30),
        || async {
            let v: ClustersResponse = lab.group.get(0, "/v1/clusters").await?;
            v.candidates.candidates.iter().find(|c| {
                c.cluster == "s3"
                    && matches!(
                        c.eligibility,
                        Eligibility::Ineligible(Ineligible::ReportStale { .. })
                    )
            })?;
            Some(())
        },
    )
    .await;
    let killed_at = Instant::now();
    lab.clusters[0].nodes_mut()[0].kill();

    let (done, f) = lab
        .group
        .wait_failover(
            0,
            "a finished failover after the kill",
            Duration::from_secs(60),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap();
    assert_eq!(f.len(), 1, "exactly one failover: {f:?}");
    let decided_after = (done.decided_at - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0
        + killed_at.elapsed().as_secs_f64();
    println!("failover decided {decided_after:.2} s after the kill; journal: {done:#?}");
    assert_eq!(
        (done.term, done.from.as_str(), done.to.as_str()),
        (2, "p", "s2")
    );
    let steps: Vec<Step> = done.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL, "each step once, in order");
    let reason = |name: &str| {
        done.table
            .candidates
            .iter()
            .find(|c| c.cluster == name)
            .map(|c| c.eligibility.clone())
    };
    assert_eq!(
        reason("s1"),
        Some(Eligibility::Ineligible(Ineligible::Excluded))
    );
    assert!(
        matches!(
            reason("s3"),
            Some(Eligibility::Ineligible(Ineligible::ReportStale { .. }))
        ),
        "{:?}",
        reason("s3")
    );
    assert_eq!(reason("s2"), Some(Eligibility::Eligible));
    assert_eq!(done.table.winner.as_deref(), Some("s2"));

    // Nothing more happens: still one failover and term 2 a few seconds later. (A sleep on
    // purpose: it proves that nothing happens.)
    tokio::time::sleep(Duration::from_secs(4)).await;
    let topo: TopologyResponse = lab.group.get(0, "/v1/topology").await.unwrap();
    let t = topo.topology.unwrap();
    assert_eq!(
        (t.primary.as_str(), t.term, t.failover.is_none()),
        ("s2", 2, true)
    );
    assert_eq!(topo.desired["s1"].primary, "s2");
    let all: Vec<FailoverRecord> = lab.group.get(0, "/v1/failovers").await.unwrap();
    assert_eq!(all.len(), 1);
    // The operator's view: `vault-dr history` and `vault-dr status` show it.
    let history = lab.group.cli(&["history"]).await;
    println!("{history}");
    assert!(
        history.contains("2-p-s2 · p -> s2 · term 2 · Done"),
        "{history}"
    );
    for step in [
        "decided",
        "fenced",
        "promoted",
        "switched",
        "repointed",
        "verified",
        "done",
    ] {
        assert_eq!(
            history
                .lines()
                .filter(|l| l.trim_start().starts_with(step))
                .count(),
            1,
            "{step} once in {history}"
        );
    }
    // `vault-dr explain` after the failover: the failover's own candidate table and time,
    // then the current tick's sentence; `--failover ID` shows the same record.
    let explain = lab.group.cli(&["explain"]).await;
    println!("{explain}");
    assert!(
        explain.starts_with("latest decision with a candidate table: failover 2-p-s2\n"),
        "{explain}"
    );
    assert!(explain.contains("candidate table at "), "{explain}");
    assert!(explain.contains("winner: s2"), "{explain}");
    let s2_row = explain
        .lines()
        .find(|l| l.starts_with("#1") && l.contains(" s2 "));
    assert!(s2_row.is_some_and(|l| l.contains("eligible")), "{explain}");
    assert!(explain.contains("\nnow ("), "{explain}");
    assert!(
        explain
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .contains("primary s2"),
        "the current tick's sentence names the new primary: {explain}"
    );
    let one = lab.group.cli(&["explain", "--failover", "2-p-s2"]).await;
    assert!(one.starts_with("2-p-s2 (p -> s2, term 2, Done"), "{one}");
    assert!(one.contains("winner: s2"), "{one}");

    let status = lab.group.cli(&["status"]).await;
    println!("{status}");
    assert!(
        status.starts_with("primary s2 · term 2 · leader c1"),
        "{status}"
    );
    let row = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        row("s1").ends_with("no: excluded by the operator") || row("s1").contains("no: excluded"),
        "{status}"
    );
    assert!(row("s2").contains("primary"), "{status}");

    // The coordinator shuts down cleanly on SIGTERM.
    drop(lab.agents);
    assert_eq!(
        lab.group.terminate(0, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        lab.group.logs()
    );
}
