//! The agent against a real OpenBao node (the lab): `active` for a live node, `sealed` after
//! `PUT sys/seal`, `unreachable` and no CPU or memory figures after SIGKILL, `active` again
//! with the new process's figures after a restart (the static seal unseals it); real latency percentiles; the raft applied index rises after writes;
//! OpenBao's 404 on `sys/replication/*` is mode `none`, not an error.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`); a missing binary fails the test.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use vault_dr_agent::Config;
use vault_dr_common::report::HostSource;
use vault_dr_common::{HostStats, NodeState, ReplicationMode};
use vault_dr_tests::agents::{InProcessAgent, metric};
use vault_dr_tests::lab::LabCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_a_real_openbao_node_through_seal_kill_and_restart() {
    let mut clusters = LabCluster::start_group_with(&["agent-life"], true, None)
        .await
        .unwrap_or_else(|e| panic!("lab start failed (run scripts/setup.sh?): {e}"));
    let mut cluster = clusters.remove(0);
    let node = &cluster.nodes()[0];
    let mut config = Config::minimal("agent-life", node.name(), cluster.api_addr().clone());
    config.interval = Duration::from_millis(200);
    // The agent holds the least-privilege DR token (policies/vault-dr.hcl), never root.
    let dr = vault_dr_common::Secret::new(format!(
        "vdr-agent-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    cluster.create_dr_token(&dr).await.unwrap();
    config.vault.token = Some(dr);
    config.vault_pid_file = Some(node.pid_file().to_path_buf());
    let agent = InProcessAgent::start(config).await.unwrap();

    // Active, with identity, raft indices, autopilot and real latency figures.
    let r = agent
        .wait_for(
            "active with 5 latency samples",
            Duration::from_secs(20),
            |r| r.vault.state == NodeState::Active && r.vault.latency.samples >= 5,
        )
        .await;
    assert_eq!(r.vault.version.as_deref(), Some("2.7.2"));
    assert!(r.vault.cluster_id.is_some(), "{r:#?}");
    assert!(r.vault.cluster_name.is_some());
    assert!(r.vault.raft_applied_index.is_some_and(|i| i > 0), "{r:#?}");
    assert!(r.vault.raft_commit_index.is_some());
    assert!(
        r.vault.autopilot_healthy.is_some(),
        "the DR token may read autopilot state: {r:#?}"
    );
    let l = r.vault.latency;
    assert!(
        l.p50_ms > 0.0 && l.p99_ms >= l.p50_ms && l.p99_ms < 1000.0,
        "{l:?}"
    );
    assert_eq!(l.error_ratio, 0.0);
    println!(
        "latency against a live OpenBao: p50 {:.3} ms, p99 {:.3} ms over {} probes",
        l.p50_ms, l.p99_ms, l.samples
    );
    assert_eq!(
        r.replication.mode,
        ReplicationMode::None,
        "OpenBao's 404 is mode none"
    );
    assert_eq!(r.replication.last_error, None, "404 is not an error");
    assert_eq!(r.host.source, HostSource::Process, "{:?}", r.host);
    assert_eq!(r.host.pid, node.pid(), "the pid file's server");
    assert!(
        r.host.memory_used_bytes.is_some_and(|b| b > 10 << 20),
        "bao's RSS is tens of MiB: {:?}",
        r.host
    );
    let m = agent.metrics().await;
    assert_eq!(
        metric(&m, "vault_dr_agent_node_state{state=\"active\"}"),
        1.0
    );
    assert_eq!(metric(&m, "vault_dr_agent_up"), 1.0);
    assert!(metric(&m, "vault_dr_agent_probe_duration_seconds_count") >= 5.0);
    assert!(metric(&m, "vault_dr_agent_memory_bytes") > 0.0);

    // Writes raise the raft applied index.
    let before = r.vault.raft_applied_index.unwrap();
    for i in 0..10 {
        cluster
            .kv_put(&format!("agent/k{i}"), &serde_json::json!({ "i": i }))
            .await
            .unwrap();
    }
    let r = agent
        .wait_for("a higher applied index", Duration::from_secs(10), |r| {
            r.vault.raft_applied_index.is_some_and(|i| i >= before + 10)
        })
        .await;
    println!(
        "raft applied index {before} -> {:?} after 10 writes",
        r.vault.raft_applied_index
    );
    assert!(
        metric(&agent.metrics().await, "vault_dr_agent_raft_applied_index") >= (before + 10) as f64
    );

    // PUT sys/seal -> sealed.
    let seal = cluster
        .client()
        .put(cluster.api_addr().join("v1/sys/seal").unwrap())
        .header("X-Vault-Token", cluster.root_token().expose())
        .send()
        .await
        .unwrap();
    assert!(
        seal.status().is_success(),
        "sys/seal answered {}",
        seal.status()
    );
    let r = agent
        .wait_for("sealed", Duration::from_secs(10), |r| {
            r.vault.state == NodeState::Sealed
        })
        .await;
    assert!(
        r.vault.last_probe_ms.is_some(),
        "a sealed node still answers"
    );
    assert_eq!(
        r.vault.raft_applied_index, None,
        "no raft figures from a sealed node"
    );

    // SIGKILL -> unreachable, with failures in the error ratio.
    cluster.nodes_mut()[0].kill();
    let r = agent
        .wait_for("unreachable", Duration::from_secs(10), |r| {
            r.vault.state == NodeState::Unreachable
        })
        .await;
    assert_eq!(r.vault.last_probe_ms, None);
    assert_eq!(r.vault.last_error.as_deref(), Some("connect"));
    // A dead server has no figures: neither its last ones nor the host's.
    assert_eq!(r.host, HostStats::UNKNOWN, "{:?}", r.host);
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "vault_dr_agent_up"), 0.0);
    assert!(metric(&m, "vault_dr_agent_cpu_usage_cores").is_nan());
    assert!(metric(&m, "vault_dr_agent_memory_bytes").is_nan());
    assert_eq!(
        metric(&m, "vault_dr_agent_host_figures_source{source=\"unknown\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "vault_dr_agent_node_state{state=\"unreachable\"}"),
        1.0
    );
    let r = agent
        .wait_for(
            "a failed probe in the window",
            Duration::from_secs(5),
            |r| r.vault.latency.error_ratio > 0.0,
        )
        .await;
    assert!(r.vault.latency.error_ratio < 1.0);

    // Restart: the static seal unseals it, the agent sees it active again with the new pid.
    cluster.nodes_mut()[0].restart().await.unwrap();
    let r = agent
        .wait_for("active again", Duration::from_secs(20), |r| {
            r.vault.state == NodeState::Active
        })
        .await;
    assert!(
        r.vault.raft_applied_index.is_some_and(|i| i >= before + 10),
        "{r:#?}"
    );
    let new_pid = cluster.nodes()[0].pid();
    agent
        .wait_for("the new process's figures", Duration::from_secs(5), |r| {
            r.host.source == HostSource::Process && r.host.pid == new_pid
        })
        .await;
    agent.shutdown().await.unwrap().unwrap();
}
