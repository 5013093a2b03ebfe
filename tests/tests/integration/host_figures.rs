//! The CPU and memory figures are the node's own or none: with two real `bao` servers on one
//! host and agents without a pid file, each agent follows the server that listens on its
//! `--vault-addr` (the pid in its report is that server's, and writes to one show in its CPU
//! only); once a server is SIGKILLed its agent reports no figures at all, never the other
//! server's nor the host's, and `vault-dr status` shows `-` in its CPU and MEMORY columns.
//!
//! Needs `.tools/bin/bao` and the built `vault-dr` binary (run `scripts/setup.sh` and
//! `cargo build --workspace --bins`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use vault_dr_agent::Config;
use vault_dr_common::report::HostSource;
use vault_dr_common::{HostStats, NodeState, Report};
use vault_dr_lab::wait::wait_for;
use vault_dr_tests::agents::{InProcessAgent, metric};
use vault_dr_tests::coordinators::{Backend, HaGroups};
use vault_dr_tests::lab::LabCluster;

/// Whether `r` holds figures of the process `pid` and a CPU rate (two readings).
fn follows(r: &Report, pid: u32) -> bool {
    r.host.source == HostSource::Process
        && r.host.pid == Some(pid)
        && r.host.cpu_usage_cores.is_some()
        && r.host.memory_used_bytes.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bao_servers_on_one_host_are_told_apart_by_the_address_each_listens_on() {
    let mut clusters = LabCluster::start_group_with(&["hf-a", "hf-b"], true, None)
        .await
        .unwrap_or_else(|e| panic!("lab start failed (run scripts/setup.sh?): {e}"));
    let mut agents = Vec::new();
    for c in &clusters {
        let mut config = Config::minimal(c.name(), c.nodes()[0].name(), c.api_addr().clone());
        config.interval = Duration::from_millis(300);
        // No pid file: both servers are called `bao`, only the listener tells them apart.
        assert_eq!(config.vault_pid_file, None);
        assert!(config.vault_process_names.iter().any(|n| n == "bao"));
        agents.push(InProcessAgent::start(config).await.unwrap());
    }
    let pids: Vec<u32> = clusters
        .iter()
        .map(|c| c.nodes()[0].pid().unwrap())
        .collect();
    assert_ne!(pids[0], pids[1]);
    let mut before = Vec::new();
    for (agent, &pid) in agents.iter().zip(&pids) {
        let r = agent
            .wait_for(
                "the figures of the bao on its own address",
                Duration::from_secs(20),
                |r| follows(r, pid),
            )
            .await;
        before.push(r.host);
    }

    // Writes to hf-a burn CPU in hf-a's server only.
    for i in 0..300 {
        clusters[0]
            .kv_put(&format!("hf/k{i}"), &serde_json::json!({ "i": i }))
            .await
            .unwrap();
    }
    let mut used = Vec::new();
    for ((agent, &pid), start) in agents.iter().zip(&pids).zip(&before) {
        let start = start.cpu_seconds_total.unwrap();
        // Two more probe rounds: the report's figures are of a round begun after the writes.
        let probes = || async {
            metric(
                &agent.metrics().await,
                "vault_dr_agent_probe_duration_seconds_count",
            )
        };
        let after_writes = probes().await;
        wait_for(
            "two probe rounds after the writes",
            Duration::from_secs(10),
            || async {
                let n = probes().await;
                if n >= after_writes + 2.0 {
                    Ok(())
                } else {
                    Err(n)
                }
            },
        )
        .await;
        let r = agent.report().await.unwrap();
        assert!(follows(&r, pid), "{:?}", r.host);
        used.push(r.host.cpu_seconds_total.unwrap() - start);
    }
    println!(
        "CPU seconds during 300 writes to hf-a: hf-a's bao (pid {}) {:.3} s, hf-b's (pid {}) {:.3} s",
        pids[0], used[0], pids[1], used[1]
    );
    assert!(
        used[0] > used[1],
        "the written-to server used more CPU than the idle one: {used:?}"
    );

    // The case: hf-a's bao dies while hf-b's runs on, under the same name.
    clusters[0].nodes_mut()[0].kill();
    let r = agents[0]
        .wait_for(
            "no figures for the killed server",
            Duration::from_secs(10),
            |r| r.vault.state == NodeState::Unreachable && r.host == HostStats::UNKNOWN,
        )
        .await;
    assert_eq!(r.host.pid, None);
    // Several intervals later it still has none: no fallback to the other `bao` or the host.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = agents[0].report().await.unwrap();
    assert_eq!(r.host, HostStats::UNKNOWN, "{:?}", r.host);
    let other = agents[1].report().await.unwrap();
    assert!(follows(&other, pids[1]), "{:?}", other.host);

    for a in agents {
        a.shutdown().await.unwrap().unwrap();
    }
}

/// The cells of the row of `cluster` in `vault-dr status` output, by column header.
fn status_cells(text: &str, cluster: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let split = |line: &str| -> Vec<String> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let header = split(text.lines().find(|l| l.starts_with("CLUSTER "))?);
    let row = split(
        text.lines()
            .find(|l| l.starts_with(&format!("{cluster} ")))?,
    );
    Some(header.into_iter().zip(row).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_report_and_status_row_show_no_cpu_or_memory() {
    // One coordinator that never confirms a failure (this test watches figures, not a
    // failover), an agent per cluster without pid file, reporting every 300 ms.
    let mut lab = vault_dr_lab::harness::Group::builder()
        .clusters(["hfs-a", "hfs-b"])
        .coordinators(1)
        .ha(Backend::Local)
        .dr_token(false)
        .policy_file(vault_dr_coordinator::config::PolicyFile {
            probe_interval: Some(Duration::from_millis(500)),
            probe_timeout: Some(Duration::from_millis(400)),
            report_ttl: Some(Duration::from_secs(3)),
            confirm: Some(1_000_000),
            ..Default::default()
        })
        .agents(|a| {
            a.interval = Duration::from_millis(300);
            a.replication = None;
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("lab start failed (run scripts/setup.sh?): {e}"));
    lab.group.start_all().await.unwrap();
    lab.start_agents().await.unwrap();

    let figures = |cells: &std::collections::BTreeMap<String, String>| {
        (cells["CPU"].clone(), cells["MEMORY"].clone())
    };
    let text = wait_for(
        "status to show both nodes' figures",
        Duration::from_secs(60),
        || async {
            let text = lab.group.cli(&["status"]).await;
            let shown = ["hfs-a", "hfs-b"].iter().all(|c| {
                status_cells(&text, c).is_some_and(|cells| {
                    let (cpu, mem) = figures(&cells);
                    cpu.ends_with(" cores") && mem.ends_with(" MiB")
                })
            });
            if shown { Ok(text) } else { Err(text) }
        },
    )
    .await;
    println!("before the kill:\n{text}");

    // The primary's server dies (SIGKILL); hfs-b's `bao` runs on, on the same host.
    let killed = lab.cluster("hfs-a").unwrap().nodes()[0].pid().unwrap();
    lab.cluster_mut("hfs-a").unwrap().nodes_mut()[0].kill();
    let r = lab.agents["hfs-a"]
        .wait_for(
            "the killed node's report without figures",
            Duration::from_secs(10),
            |r| r.vault.state == NodeState::Unreachable,
        )
        .await;
    assert_eq!(
        r.host,
        HostStats::UNKNOWN,
        "pid {killed} is gone: {:?}",
        r.host
    );

    let text = wait_for(
        "the killed node's status row with no figures",
        Duration::from_secs(20),
        || async {
            let text = lab.group.cli(&["status"]).await;
            match status_cells(&text, "hfs-a") {
                Some(cells) if cells["STATE"] == "unreachable" => Ok((text, cells)),
                _ => Err(text),
            }
        },
    )
    .await;
    let (text, cells) = text;
    println!("after the kill:\n{text}");
    assert_eq!(
        figures(&cells),
        ("-".to_owned(), "-".to_owned()),
        "a dead node shows no CPU or memory:\n{text}"
    );
    let live = status_cells(&text, "hfs-b").unwrap();
    let (cpu, mem) = figures(&live);
    assert!(
        cpu.ends_with(" cores") && mem.ends_with(" MiB"),
        "the live node keeps its own figures:\n{text}"
    );

    for (_, agent) in std::mem::take(&mut lab.agents) {
        agent.shutdown().await.unwrap().unwrap();
    }
    assert_eq!(
        lab.group.terminate(0, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        lab.group.logs()
    );
}
