//! The coordinator against four real OpenBao clusters with four real agents (in-process):
//! while everything is healthy nothing happens; killing the primary's process leads to exactly
//! one failover, to term 2, to the expected target, shown by the journal, the topology and the
//! `vault-dr history` command.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built `vault-dr` binary
//! (`cargo build --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use url::Url;
use vault_dr_coordinator::api::{ClustersResponse, TopologyResponse};
use vault_dr_coordinator::model::DecisionRecord;
use vault_dr_coordinator::model::{Eligibility, Ineligible};
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus, Step};
use vault_dr_tests::agents::InProcessAgent;
use vault_dr_tests::coordinators::InProcessCoordinator;
use vault_dr_tests::lab::LabCluster;
use vault_dr_tests::lab::harness::{coordinator_file, failover_policy, in_process_config};
use vault_dr_tests::lab::tools::built_binary;
use vault_dr_tests::lab::wait::wait_for;

const TOKEN: &str = "integration-token";

/// An in-process agent of `node` in `cluster` at `vault`, reporting every 300 ms to
/// `coordinator` (no replication, no DR token).
async fn spawn_agent(
    cluster: &str,
    node: &str,
    vault: &Url,
    coordinator: &str,
    dir: &std::path::Path,
) -> InProcessAgent {
    let token_file = dir.join("token");
    let mut config = vault_dr_agent::Config::minimal(cluster, node, vault.clone());
    config.interval = Duration::from_millis(300);
    config.coordinator = Some(vault_dr_agent::config::CoordinatorConfig {
        url: Url::parse(coordinator).unwrap(),
        token: vault_dr_common::Secret::new(std::fs::read_to_string(token_file).unwrap()),
        ca_certs: Vec::new(),
    });
    InProcessAgent::start(config).await.unwrap()
}

async fn get<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Option<T> {
    let r = http.get(url).bearer_auth(TOKEN).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_leads_to_exactly_one_failover_and_health_to_none() {
    let mut clusters = LabCluster::start_group_with(&["p", "s1", "s2", "s3"], true, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    // Bound once and handed to the coordinator.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let coordinator_url = format!("http://127.0.0.1:{port}");
    // s1 is excluded by the operator, s3's agent will be stopped (stale report): s2 must win.
    let mut file = coordinator_file("it", format!("127.0.0.1:{port}"), &clusters, "p");
    for c in &mut file.clusters {
        // The in-process agents below report as `<cluster>-0`.
        c.nodes = vec![format!("{}-0", c.name)];
        c.excluded = c.name == "s1";
    }
    file.store.path = Some("store.sqlite".into());
    file.coordination.path = Some("coordination.json".into());
    file.policy = failover_policy(
        Duration::from_millis(500),
        2,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let config = in_process_config(file, dir.path(), &dir.path().join("token")).unwrap();
    let coordinator = InProcessCoordinator::start(config, listener);
    let mut agents: BTreeMap<String, InProcessAgent> = BTreeMap::new();
    for c in &clusters {
        let node = format!("{}-0", c.name());
        let agent = spawn_agent(c.name(), &node, c.api_addr(), &coordinator_url, dir.path()).await;
        agents.insert(c.name().to_owned(), agent);
    }
    let http = vault_dr_common::http::client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // Healthy: the coordinator leads, sees every node, and decides nothing for 8 s.
    wait_for(
        "the coordinator to see all four agents",
        Duration::from_secs(30),
        || async {
            let d: Option<DecisionRecord> =
                get(&http, &format!("{coordinator_url}/v1/decisions/latest")).await;
            let clusters_seen: Option<serde_json::Value> =
                get(&http, &format!("{coordinator_url}/v1/clusters")).await;
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
    let failovers: Vec<FailoverRecord> = get(&http, &format!("{coordinator_url}/v1/failovers"))
        .await
        .unwrap();
    assert!(
        failovers.is_empty(),
        "no failover while healthy: {failovers:?}"
    );
    let topo: TopologyResponse = get(&http, &format!("{coordinator_url}/v1/topology"))
        .await
        .unwrap();
    assert_eq!(topo.topology.as_ref().unwrap().term, 1);
    assert_eq!(topo.leader.as_deref(), Some("it"));

    // s3's agent goes silent; then the primary's process dies.
    drop(agents.remove("s3"));
    wait_for(
        "s3's report to go stale",
        Duration::from_secs(30),
        || async {
            let v: ClustersResponse = get(&http, &format!("{coordinator_url}/v1/clusters")).await?;
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
    clusters[0].nodes_mut()[0].kill();

    let done = wait_for(
        "a finished failover after the kill",
        Duration::from_secs(60),
        || async {
            let f: Vec<FailoverRecord> = get(&http, &format!("{coordinator_url}/v1/failovers"))
                .await
                .unwrap_or_default();
            match f.iter().find(|r| r.status == FailoverStatus::Done) {
                Some(r) => {
                    assert_eq!(f.len(), 1, "exactly one failover: {f:?}");
                    Ok(r.clone())
                }
                None => Err(format!("{f:?}")),
            }
        },
    )
    .await;
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
    let topo: TopologyResponse = get(&http, &format!("{coordinator_url}/v1/topology"))
        .await
        .unwrap();
    let t = topo.topology.unwrap();
    assert_eq!(
        (t.primary.as_str(), t.term, t.failover.is_none()),
        ("s2", 2, true)
    );
    assert_eq!(topo.desired["s1"].primary, "s2");
    let all: Vec<FailoverRecord> = get(&http, &format!("{coordinator_url}/v1/failovers"))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);

    // The operator's view: `vault-dr history` and `vault-dr status` show it.
    let out = tokio::process::Command::new(built_binary("vault-dr").unwrap())
        .args(["history", "--url", &coordinator_url, "--token-file"])
        .arg(dir.path().join("token"))
        .output()
        .await
        .unwrap();
    let history = String::from_utf8_lossy(&out.stdout);
    println!("{history}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        history.contains("2-p-s2 · p -> s2 · term 2 · Done"),
        "{history}"
    );
    for step in [
        "decided",
        "fenced",
        "promoted",
        "repointed",
        "switched",
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
    let out = tokio::process::Command::new(built_binary("vault-dr").unwrap())
        .args(["status", "--url", &coordinator_url, "--token-file"])
        .arg(dir.path().join("token"))
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    println!("{status}");
    assert!(
        status.starts_with("primary s2 · term 2 · leader it"),
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

    drop(agents);
    coordinator.shutdown().await.unwrap();
}
