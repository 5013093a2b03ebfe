//! `vault-dr drill --json` end to end, as a newcomer runs it: the real `vault-dr` binary runs
//! `vault-dr-lab drill`, which starts
//! three OpenBao clusters, an agent process per node, two coordinator processes (with the local
//! forwarder as the stable client address) and the client, kills the primary, and reports.
//! Secondaries keep snapshots and restore at promotion (`--restore on-promotion`), so the lost
//! writes are bounded by the pull interval. s1 is excluded, so s2 is the expected target. Asserts one
//! promotion to s2, a finished timeline, an RPO within one snapshot interval of writes, the
//! coordinator's accounted loss printed and within one report interval of the client's RPO, and
//! that no process it started is alive after it exits and its run directory is gone.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built binaries (`cargo build
//! --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};
use vault_dr_lab::wait::wait_for_blocking;

use serde_json::Value;
use vault_dr_lab::tools::built_binary;

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

/// Runs `vault-dr drill --json ARGS…` (the real binary, which runs `vault-dr-lab drill`): its
/// output and its report, the one JSON document on stdout (panics naming both otherwise).
fn drill(args: &[&str]) -> (std::process::Output, Value) {
    built_binary("vault-dr-agent").unwrap();
    built_binary("vault-dr-lab").unwrap();
    let out = std::process::Command::new(built_binary("vault-dr").unwrap())
        .args(["drill", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("drill progress:\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}\n{stderr}"));
    (out, report)
}

/// The detail of the report's timeline event `event` (panics when there is none).
fn event_detail(report: &Value, event: &str) -> String {
    report["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["event"] == event))
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_else(|| panic!("no {event} event in {}", report["timeline"]))
        .to_owned()
}

#[test]
fn a_short_drill_promotes_exactly_once_loses_at_most_one_snapshot_interval_and_leaves_nothing() {
    let started = Instant::now();
    let (out, report) = drill(&[
        "--clusters",
        "3",
        "--coordinators",
        "2",
        "--exclude",
        "s1",
        "--restore",
        "on-promotion",
        "--snapshot-interval",
        "1s",
        "--warmup",
        "2s",
    ]);
    eprintln!("drill took {:.1} s", started.elapsed().as_secs_f64());
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        out.status.success(),
        "exit {:?}, problems {}",
        out.status.code(),
        report["problems"]
    );
    assert_eq!(report["ok"], true);
    assert_eq!(report["promotions"], 1, "exactly one promotion");
    assert_eq!(report["term"], 2);
    assert_eq!(report["primary"], "p");
    assert_eq!(
        report["traffic"], "local",
        "the client used the stable address"
    );
    assert_eq!(report["target"], "s2", "s1 is excluded: s2 must win");
    let s1 = report["candidates"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "s1")
        .unwrap()
        .clone();
    assert_eq!(
        s1["eligibility"]["ineligible"]["reason"], "excluded",
        "{s1}"
    );

    let events: Vec<&str> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "fault",
        "detected",
        "decided",
        "fenced",
        "promoted",
        "switched",
        "repointed",
        "first_write",
    ] {
        assert!(events.contains(&want), "{want} missing in {events:?}");
    }
    let rto = report["rto_seconds"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 60.0, "RTO {rto}");

    // RPO: at most the writes of one snapshot interval (plus the pull and restore of that
    // snapshot, which the interval does not count).
    let interval = report["snapshot_interval_seconds"].as_f64().unwrap();
    let per_interval = report["writes_per_snapshot_interval"].as_f64().unwrap();
    let rpo_writes = report["rpo_writes"].as_u64().unwrap();
    let rpo_seconds = report["rpo_seconds"].as_f64().unwrap();
    assert!(
        rpo_seconds <= interval + 1.5,
        "lost writes reach back {rpo_seconds} s, snapshot interval {interval} s"
    );
    assert!(
        (rpo_writes as f64) <= per_interval * (interval + 1.5) / interval,
        "{rpo_writes} writes lost, {per_interval} per interval"
    );
    assert!(report["client"]["writes_acked"].as_u64().unwrap() > 20);

    // The coordinator's own account of the loss: printed while the drill follows the
    // failover, stored in the record, and within one report interval (plus the client's write
    // period, its resolution) of what the client lost.
    assert!(
        stderr.contains("accounted loss: "),
        "the drill prints the coordinator's account:\n{stderr}"
    );
    let loss = &report["accounted_loss"];
    assert_eq!(loss["at_risk"]["kind"], "accounted", "{loss}");
    let accounted = loss["at_risk"]["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no seconds at risk: {loss}"));
    let entries = loss["at_risk"]["entries"].as_u64().unwrap();
    assert!(
        loss["primary"]["node"].as_str().unwrap().starts_with("p-"),
        "the old primary's index: {loss}"
    );
    assert!(
        loss["served"]["node"].as_str().unwrap().starts_with("s2-"),
        "{loss}"
    );
    // Raft entries are not client writes (tokens and leases are entries too), and writes
    // after the primary's last report are not in the account: only "lost something" shows.
    if entries == 0 {
        assert!(
            accounted == 0.0,
            "nothing at risk but {accounted} s: {loss}"
        );
    }
    let report_interval = report["report_interval_seconds"].as_f64().unwrap();
    assert!(report_interval > 0.0);
    let difference = report["loss_difference_seconds"].as_f64().unwrap();
    assert!(
        (difference - (accounted - rpo_seconds)).abs() < 1e-6,
        "{difference} vs {accounted} - {rpo_seconds}"
    );
    assert!(
        difference.abs() <= report_interval + 0.1,
        "accounted {accounted} s, client {rpo_seconds} s: more than one report interval \
         ({report_interval} s) and one write period apart"
    );

    // Nothing left behind: every pid it started is gone, and so is its run directory.
    let pids: Vec<u64> = report["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        pids.len() >= 3 + 3 + 2 - 1,
        "servers, agents and coordinators listed: {pids:?}"
    );
    wait_for_blocking("every process to be gone", Duration::from_secs(5), || {
        let left: Vec<u64> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("processes left behind: {left:?}"))
        }
    });
    let dir = PathBuf::from(report["run_dir"].as_str().unwrap());
    assert!(!dir.exists(), "run directory {} left behind", dir.display());
}

/// `vault-dr drill --fault slow --json`: the primary's API slowed by 800 ms on loopback (it
/// stays up) is moved by the degraded-primary rule's automatic switchover, with the evidence in
/// the decision, nothing lost, and the client's write latency before, during and after.
#[test]
fn a_slow_primary_drill_is_one_automatic_switchover_with_no_loss_and_the_clients_latency() {
    let (out, report) = drill(&["--clusters", "3", "--coordinators", "2", "--fault", "slow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report["ok"] == true,
        "problems {}\n{stderr}",
        report["problems"]
    );
    assert_eq!(report["fault"], "slow");
    assert_eq!(
        (report["promotions"].as_u64(), report["term"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(report["rpo_writes"], 0, "a switchover loses nothing");
    let decided = event_detail(&report, "decided");
    assert!(
        decided.contains("automatic switchover: primary p degraded")
            && decided.contains("agent of p-")
            && decided.contains("coordinator probe"),
        "{decided}"
    );
    let detected = event_detail(&report, "detected");
    assert!(detected.contains("degraded: primary p"), "{detected}");
    // The client felt the 800 ms while p was primary, and not after the switch.
    let l = &report["client_latency"];
    let p50 = |k: &str| l[k][0].as_f64().unwrap();
    assert!(p50("fault_to_decision_ms") >= 800.0, "{l}");
    assert!(p50("after_ms") < 400.0 && p50("before_ms") < 400.0, "{l}");
}
