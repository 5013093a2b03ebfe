//! The maintenance pause on real OpenBao: `vault-dr pause` holds automatic failover while
//! detection goes on (`status` says so on its first line, the gauge is 1), `vault-dr resume`
//! lets the failover happen, a pause with `--for` ends by itself; a pause is refused on a
//! follower, without the token, and with bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use vault_dr_coordinator::api::TopologyResponse;
use vault_dr_coordinator::model::{DecisionRecord, FailoverRecord, FailoverStatus};
use vault_dr_tests::coordinators::{Backend, DrLab, HaGroups, sample};
use vault_dr_tests::lab::harness::{Group, failover_policy};
use vault_dr_tests::lab::wait::wait_for;

/// Two coordinators (a leader and a follower) over `p` and `s1`, agents reporting, probing
/// every 500 ms, 2 confirming ticks; returns the lab and the leader's index.
async fn group() -> (DrLab, usize) {
    let mut lab = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(2)
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
    let (leader, _) = lab
        .group
        .wait_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.group.logs()));
    (lab, leader)
}

/// `POST path` on replica `i` with `body`, with the group's token unless `token` is false:
/// the status and the body.
async fn post(lab: &DrLab, i: usize, path: &str, body: &str, token: bool) -> (u16, String) {
    let bearer = std::fs::read_to_string(lab.group.token_file()).unwrap();
    let http = vault_dr_common::http::client_builder().build().unwrap();
    let mut req = http
        .post(format!("{}{path}", lab.group.replicas[i].url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if token {
        req = req.bearer_auth(bearer.trim());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn decision(lab: &DrLab, i: usize) -> Option<String> {
    let d: DecisionRecord = lab.group.get(i, "/v1/decisions/latest").await?;
    Some(d.sentence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_group_detects_a_dead_primary_but_fails_over_only_once_resumed() {
    let (mut lab, leader) = group().await;
    let follower = 1 - leader;

    // Refused: on the follower, without the token, without a reason, with a bad duration.
    let ok = r#"{"reason": "raft upgrade", "by": "alice"}"#;
    let (status, body) = post(&lab, follower, "/v1/pause", ok, true).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not the leader"), "{body}");
    assert_eq!(post(&lab, leader, "/v1/pause", ok, false).await.0, 401);
    let (status, body) = post(&lab, leader, "/v1/pause", r#"{"reason": " "}"#, true).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("reason must not be empty"), "{body}");
    let bad_for = r#"{"reason": "x", "for": "soon"}"#;
    let (status, body) = post(&lab, leader, "/v1/pause", bad_for, true).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("for is not a duration"), "{body}");
    let (status, _) = post(&lab, leader, "/v1/pause", r#"{"why": "x"}"#, true).await;
    assert_eq!(status, 400);
    assert!(
        lab.group
            .metrics(leader)
            .await
            .is_some_and(|m| sample(&m, "vault_dr_coordinator_paused") == Some(0.0)),
        "nothing was paused by the refused requests"
    );

    // Paused through the CLI: status says so on its first line, the gauge is 1.
    let out = lab
        .group
        .cli(&["pause", "--reason", "raft upgrade", "--by", "alice"])
        .await;
    assert!(out.starts_with("paused by alice since "), "{out}");
    let status = lab.group.cli(&["status"]).await;
    assert!(
        status.starts_with("PAUSED: no automatic failover (detection goes on): paused by alice")
            && status.lines().next().unwrap().ends_with("raft upgrade"),
        "{status}"
    );
    let metrics = lab.group.metrics(leader).await.unwrap();
    assert_eq!(sample(&metrics, "vault_dr_coordinator_paused"), Some(1.0));

    // The primary dies: detected, not failed over.
    lab.clusters[0].nodes_mut()[0].kill();
    wait_for(
        "the leader to see the primary down and say it is paused",
        Duration::from_secs(30),
        || async {
            decision(&lab, leader)
                .await
                .filter(|s| s.starts_with("paused: primary p is down"))
        },
    )
    .await;
    // A sleep on purpose: nothing may happen meanwhile (the policy would fail over in ~1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let none: Vec<FailoverRecord> = lab.group.get(leader, "/v1/failovers").await.unwrap();
    assert!(none.is_empty(), "a failover while paused: {none:?}");
    let explain = lab.group.cli(&["explain"]).await;
    assert!(explain.contains("paused: primary p is down"), "{explain}");

    // Resumed: the failover happens, and the topology keeps who paused and who resumed.
    let out = lab.group.cli(&["resume", "--by", "bob"]).await;
    assert!(out.starts_with("automatic failover is on again"), "{out}");
    let (done, all) = lab
        .group
        .wait_failover(
            leader,
            "the failover once resumed",
            Duration::from_secs(60),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.group.logs()));
    assert_eq!((all.len(), done.to.as_str()), (1, "s1"));
    let topo: TopologyResponse = lab.group.get(leader, "/v1/topology").await.unwrap();
    let t = topo.topology.unwrap();
    assert!(t.pause.is_none());
    let past = t.past_pauses.last().unwrap();
    assert_eq!(
        (past.by.as_str(), past.reason.as_str()),
        ("alice", "raft upgrade")
    );
    assert_eq!(past.ended.as_ref().unwrap().1, "resumed by bob");
    let history = lab.group.cli(&["history"]).await;
    assert!(
        history
            .lines()
            .any(|l| l.trim_start().starts_with("paused by alice since ")
                && l.contains(": raft upgrade (ended ")
                && l.ends_with(": resumed by bob)")),
        "history keeps who paused, why, and who resumed: {history}"
    );
    let again = lab.group.cli(&["resume"]).await;
    assert_eq!(again, "automatic failover was not paused\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_pause_ends_by_itself_and_the_failover_follows() {
    let (mut lab, leader) = group().await;
    lab.group
        .cli(&[
            "pause",
            "--for",
            "6s",
            "--reason",
            "network work",
            "--by",
            "carol",
        ])
        .await;
    let topo: TopologyResponse = lab.group.get(leader, "/v1/topology").await.unwrap();
    let until = topo.topology.unwrap().pause.unwrap().until.unwrap();
    lab.clusters[0].nodes_mut()[0].kill();
    let (done, _) = lab
        .group
        .wait_failover(
            leader,
            "the failover after the pause ran out",
            Duration::from_secs(60),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.group.logs()));
    assert!(
        done.decided_at >= until,
        "decided at {} while paused until {until}",
        done.decided_at
    );
    let topo: TopologyResponse = lab.group.get(leader, "/v1/topology").await.unwrap();
    let t = topo.topology.unwrap();
    assert!(t.pause.is_none(), "{t:?}");
    let past = t.past_pauses.last().unwrap();
    assert_eq!(past.by, "carol");
    assert_eq!(past.ended.as_ref().unwrap().1, "its time ran out");
    let metrics = lab.group.metrics(leader).await.unwrap();
    assert_eq!(sample(&metrics, "vault_dr_coordinator_paused"), Some(0.0));
    println!(
        "paused until {until}; decided {:.2} s after it ran out",
        (done.decided_at - until).num_milliseconds() as f64 / 1000.0
    );
}
