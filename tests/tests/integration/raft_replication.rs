//! Raft replication (`--replication raft`) on real OpenBao 2.7 processes: the DR group is one
//! raft (the primary's 3 nodes voters, each secondary's node a non-voter, every `bao` under
//! `vault-dr-launch`). The whole primary cluster is killed under a writing client: one
//! promotion by raft recovery, every acknowledged write read back by version and value, the
//! other secondary rejoins the new raft; the old primary's nodes come back with their old data
//! and accept no write on their own addresses while the new primary stays active, then follow.
//! A target whose server cannot start keeps the failover open, journaled with the reason and
//! counted for the alert, until it can.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use vault_dr_tests::lab::drill::workload::{self, Target, Workload};
use vault_dr_tests::lab::harness::Group;
use vault_dr_tests::lab::wait::try_wait_for;

const READY: Duration = Duration::from_secs(90);

/// The leader's candidate table (`GET /v1/clusters`): cluster → its row.
async fn candidates(group: &Group) -> BTreeMap<String, Value> {
    let Some(leader) = group.leader().await else {
        return BTreeMap::new();
    };
    let Some(v) = group.get_json(&leader, "v1/clusters").await else {
        return BTreeMap::new();
    };
    v.pointer("/candidates/candidates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| Some((c.get("cluster")?.as_str()?.to_owned(), c)))
        .collect()
}

/// The raft configuration's servers as (id, voter) through `cluster`'s first live node.
async fn raft_servers(group: &Group, via: &str) -> Option<Vec<(String, bool)>> {
    let c = group.cluster(via)?;
    for n in c.nodes() {
        let url = n
            .api_addr()
            .join("v1/sys/storage/raft/configuration")
            .ok()?;
        let Ok(resp) = group
            .http()
            .get(url)
            .header("X-Vault-Token", c.root_token().expose())
            .send()
            .await
        else {
            continue;
        };
        if resp.status().as_u16() != 200 {
            continue;
        }
        let v: Value = resp.json().await.ok()?;
        let servers = v.pointer("/data/config/servers")?.as_array()?.clone();
        return Some(
            servers
                .iter()
                .filter_map(|s| {
                    Some((
                        s.get("node_id")?.as_str()?.to_owned(),
                        s.get("voter")?.as_bool()?,
                    ))
                })
                .collect(),
        );
    }
    None
}

/// One write of `key` through `addr` with `token`: whether it was acknowledged (2xx).
async fn try_write(http: &reqwest::Client, addr: &url::Url, token: &str, key: &str) -> bool {
    let Ok(url) = addr.join(&format!("v1/secret/data/{key}")) else {
        return false;
    };
    let sent = http
        .post(url)
        .header("X-Vault-Token", token)
        .timeout(Duration::from_millis(500))
        .json(&serde_json::json!({ "data": { "k": key } }))
        .send()
        .await;
    sent.is_ok_and(|r| r.status().is_success())
}

/// A client writing every 20 ms through the stable address (the write gate of whichever
/// cluster the coordinators name), with a token made on p; and p's root token. A failed
/// unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used)]
async fn writing_client(group: &Group) -> (Workload, vault_dr_common::Secret) {
    let p = group.cluster("p").unwrap();
    let root = p.root_token().clone();
    let http = workload::client_http().unwrap();
    let token = workload::create_client_token(&http, p.nodes()[0].api_addr(), &root)
        .await
        .expect("client token");
    let target = Target::Stable(group.traffic_addr().expect("the stable address").clone());
    let client = Workload::start(
        target,
        token,
        group.dir(),
        Duration::from_millis(20),
        Duration::from_secs(20),
    )
    .await
    .expect("client");
    (client, root)
}

/// The leader's journal holds exactly one failover, with each of its steps once, in order:
/// that record. Panics (the test fails) otherwise.
#[allow(clippy::unwrap_used)]
async fn one_failover_each_step_once(group: &Group) -> Value {
    let records = failovers(group).await;
    assert_eq!(records.len(), 1, "one failover: {records:#?}");
    let steps: Vec<&str> = records[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    let all: Vec<&str> = vault_dr_coordinator::model::Step::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(steps, all, "each step once: {:#}", records[0]);
    records[0].clone()
}

/// The lag figures of `cluster` in the leader's table.
fn lag(rows: &BTreeMap<String, Value>, cluster: &str) -> (Option<u64>, Option<f64>) {
    let row = rows.get(cluster);
    (
        row.and_then(|r| r.get("lag_entries"))
            .and_then(Value::as_u64),
        row.and_then(|r| r.get("lag_seconds"))
            .and_then(Value::as_f64),
    )
}

/// Waits until the leader's table gives each of `secondaries` its exact lag (entries and
/// seconds), below 50 entries: their nodes follow the primary's raft. Panics (the test fails)
/// with the table when they do not within [`READY`].
async fn wait_lag_known(group: &Group, secondaries: &[&str]) {
    let lagged = try_wait_for("the secondaries' exact lag", READY, || async {
        let rows = candidates(group).await;
        secondaries
            .iter()
            .all(|c| matches!(lag(&rows, c), (Some(e), Some(_)) if e < 50))
            .then_some(())
    })
    .await;
    if lagged.is_err() {
        panic!("no exact lag reported: {:#?}", candidates(group).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_primary_killed_promotes_a_non_voter_with_every_acknowledged_write() {
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft(3, 1)
        .coordinators(2)
        .spec(|s| {
            s.dir = std::env::var_os("VAULT_DR_TEST_RUN_DIR").map(Into::into);
            s.keep = s.dir.is_some();
        })
        .start()
        .await
        .expect("raft group");
    let servers = raft_servers(&group, "p").await.expect("raft configuration");
    let mut voters: Vec<&str> = servers
        .iter()
        .filter(|(_, v)| *v)
        .map(|(id, _)| id.as_str())
        .collect();
    voters.sort_unstable();
    assert_eq!(voters, ["p-n1", "p-n2", "p-n3"], "{servers:?}");
    assert_eq!(
        servers.len(),
        5,
        "two non-voters beside the voters: {servers:?}"
    );

    // A writing client, through the write gate of whichever cluster the coordinators name.
    let (client, root) = writing_client(&group).await;

    // The exact lag of the non-voters while the client writes.
    wait_lag_known(&group, &["s1", "s2"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = candidates(&group).await;
    let reported_lag = ["s1", "s2"]
        .iter()
        .filter_map(|c| lag(&before, c).1)
        .fold(0.0_f64, f64::max);
    println!(
        "lag before the fault: s1 {:?}, s2 {:?}",
        lag(&before, "s1"),
        lag(&before, "s2")
    );

    // The loss of the primary site: every node of p, with its agents.
    let killed_at = chrono::Utc::now();
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    let fault = Instant::now();
    let new_primary = group
        .wait_failover_done(1, Duration::from_secs(90))
        .await
        .expect("the failover finishes");
    println!(
        "failover to {new_primary} done after {:.1} s; the client's first write after the \
         fault acknowledged {:?} after it",
        fault.elapsed().as_secs_f64(),
        client
            .first_acked_sent_after(killed_at)
            .map(|w| (w.acked_at - killed_at).to_std().unwrap_or_default())
    );
    assert!(["s1", "s2"].contains(&new_primary.as_str()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = client.acked();
    let stats = client.stop().await;
    let leader = group.leader().await.expect("a leader");
    let topology = group.get_json(&leader, "v1/topology").await.unwrap();
    assert_eq!(
        topology.pointer("/topology/term").and_then(Value::as_u64),
        Some(2),
        "exactly one promotion: {topology}"
    );

    // Every acknowledged write, by version and value, on the new primary.
    let x_api = group.cluster(&new_primary).unwrap().nodes()[0]
        .api_addr()
        .clone();
    let missing = workload::missing_writes(&x_api, &root, &acked)
        .await
        .expect("read back");
    let window = chrono::Duration::milliseconds((reported_lag * 1000.0).ceil() as i64);
    let allowed = acked
        .iter()
        .filter(|w| w.acked_at <= killed_at && w.acked_at >= killed_at - window)
        .count();
    println!(
        "{} writes acknowledged ({} after the fault), {} missing; allowed by the reported lag \
         of {reported_lag:.3} s: {allowed}; client {stats:?}",
        acked.len(),
        acked.iter().filter(|w| w.sent_at > killed_at).count(),
        missing.len()
    );
    assert!(
        missing.len() <= allowed,
        "lost more than the lag before the fault: {missing:?}"
    );
    assert!(
        acked.iter().any(|w| w.sent_at > killed_at),
        "the client wrote to the new primary"
    );

    // The other secondary follows the new raft as a non-voter, its lag back near zero.
    let other = if new_primary == "s1" { "s2" } else { "s1" };
    let other_node = format!("{other}-n1");
    let x_node = format!("{new_primary}-n1");
    let followed = try_wait_for("the other secondary in the new raft", READY, || async {
        let servers = raft_servers(&group, &new_primary).await?;
        let rows = candidates(&group).await;
        let joined = servers.contains(&(other_node.clone(), false))
            && servers.contains(&(x_node.clone(), true));
        let near = matches!(lag(&rows, other), (Some(e), _) if e < 50);
        (joined && near).then_some(())
    })
    .await;
    if followed.is_err() {
        let servers = raft_servers(&group, &new_primary).await;
        panic!("{other} did not follow: {servers:?}");
    }

    // The old primary's nodes come back with their old data, agents too.
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.restart_held().expect("restart an old node");
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.restart().expect("restart an old agent");
    }
    let old: Vec<(String, url::Url, url::Url)> = group
        .cluster("p")
        .unwrap()
        .nodes()
        .iter()
        .map(|n| {
            (
                n.name().to_owned(),
                n.client_addr().clone(),
                n.api_addr().clone(),
            )
        })
        .collect();
    let probe = vault_dr_common::http::client_builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (mut gate_accepted, mut raw_accepted, mut not_active, mut rounds) = (0, Vec::new(), 0, 0);
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(60) {
        rounds += 1;
        for (name, gate, api) in &old {
            let key = format!("fence/{name}-{rounds}");
            if try_write(&probe, gate, root.expose(), &format!("{key}-gate")).await {
                gate_accepted += 1;
            }
            if try_write(&probe, api, root.expose(), &key).await {
                raw_accepted.push(key);
            }
        }
        let active = probe
            .get(x_api.join("v1/sys/health").unwrap())
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200);
        if !active {
            not_active += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{rounds} rounds: {gate_accepted} writes accepted on the old nodes' client addresses, \
         {} on their listeners (forwarded into {new_primary}), {new_primary} not active in \
         {not_active}",
        raw_accepted.len()
    );
    assert_eq!(
        gate_accepted, 0,
        "an old node's client address took a write"
    );
    assert_eq!(not_active, 0, "{new_primary} lost leadership");
    // What an old node's own listener took went into the new primary, nowhere else.
    for key in &raw_accepted {
        let x = group.cluster(&new_primary).unwrap();
        let got = x.kv_get(key).await.expect("read on the new primary");
        assert!(
            got.is_some(),
            "{key} was accepted by an old node but is not on {new_primary}"
        );
    }
    // Then the old nodes follow: non-voters of the new raft.
    let rejoined = try_wait_for("the old nodes in the new raft", READY, || async {
        let servers = raft_servers(&group, &new_primary).await?;
        ["p-n1", "p-n2", "p-n3"]
            .iter()
            .all(|n| servers.contains(&((*n).to_owned(), false)))
            .then_some(())
    })
    .await;
    if rejoined.is_err() {
        let servers = raft_servers(&group, &new_primary).await;
        panic!("the old nodes did not follow: {servers:?}");
    }
    let quarantined = std::fs::read_dir(
        group.cluster("p").unwrap().nodes()[0]
            .data_dir()
            .join(".vault-dr-quarantine"),
    )
    .map(|d| d.count())
    .unwrap_or(0);
    assert_eq!(quarantined, 1, "p-n1's old raft state is in the quarantine");
}

/// KV v2 `key` as `cluster`'s first node serves it, with `token` (`None`: no answer).
async fn read_kv(group: &Group, cluster: &str, token: &str, key: &str) -> Option<Value> {
    let api = group.cluster(cluster)?.nodes().first()?.api_addr().clone();
    let url = api.join(&format!("v1/secret/data/{key}")).ok()?;
    let resp = group
        .http()
        .get(url)
        .header("X-Vault-Token", token)
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// The leader's failover records (`GET /v1/failovers`), newest first.
async fn failovers(group: &Group) -> Vec<Value> {
    let Some(leader) = group.leader().await else {
        return Vec::new();
    };
    group
        .get_json(&leader, "v1/failovers")
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_start_leaves_the_failover_open_with_its_reason_until_it_can() {
    // A one-voter primary and a one-node secondary; a promotion must be acknowledged within
    // 4 s, else the attempt counts as failed.
    let mut group = Group::builder()
        .clusters(["p", "s1"])
        .raft(1, 1)
        .coordinators(1)
        .spec(|s| s.promote_timeout = Some(Duration::from_secs(4)))
        .start()
        .await
        .expect("raft group");
    wait_lag_known(&group, &["s1"]).await;
    let p = group.cluster("p").unwrap();
    let root = p.root_token().clone();
    p.kv_put("kept/before-the-fault", &serde_json::json!({ "v": "one" }))
        .await
        .expect("a write on p");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Bad input: s1's server cannot start any more (its config no longer parses), so the
    // raft recovery that would promote it cannot be applied.
    let s1_config = group.cluster("s1").unwrap().nodes()[0]
        .config_path()
        .to_owned();
    let good = std::fs::read(&s1_config).unwrap();
    std::fs::write(&s1_config, b"storage \"raft\" { this is not HCL\n").unwrap();
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }

    // The term is raised, the failover stays in progress, and its Promoted step carries the
    // reason, the agent's included; the attempts are counted for the alert.
    let journaled = try_wait_for("the failed promotion in the journal", READY, || async {
        let f = failovers(&group).await.into_iter().next()?;
        let step = f
            .get("steps")?
            .as_array()?
            .iter()
            .find(|s| s.get("step").and_then(Value::as_str) == Some("promoted"))?
            .clone();
        let error = step.get("error")?.as_str()?.to_owned();
        (error.contains("the server failed to start")).then_some((f, step, error))
    })
    .await;
    let Ok((record, step, error)) = journaled else {
        panic!(
            "no journaled promotion failure: {:#?}",
            failovers(&group).await
        );
    };
    println!("journaled: {error}\n  detail: {}", step["detail"]);
    assert!(
        error.contains("s1 has not applied term 2") && error.contains("s1-n1 reports"),
        "{error}"
    );
    assert_eq!(record["status"], "in_progress", "{record:#}");
    assert!(step["finished_at"].is_null(), "{step:#}");
    assert!(
        step["detail"]
            .as_str()
            .is_some_and(|d| d.contains("failed") && d.contains("retrying")),
        "{step:#}"
    );
    let leader = group.leader().await.expect("a leader");
    let topology = group.get_json(&leader, "v1/topology").await.unwrap();
    assert_eq!(topology.pointer("/topology/term"), Some(&Value::from(2)));
    assert!(
        topology
            .pointer("/topology/failover")
            .is_some_and(|f| !f.is_null()),
        "never reported done while the target cannot start: {topology}"
    );
    let metrics = group
        .get_text(&leader, "metrics")
        .await
        .expect("the leader's metrics");
    let attempts = vault_dr_tests::agents::metric(
        &metrics,
        "vault_dr_coordinator_failover_step_attempt_failures_total{step=\"promoted\"}",
    );
    assert!(attempts >= 1.0, "attempt failures counted: {attempts}");

    // The operator mends the node; the next attempt promotes it with the data it had.
    std::fs::write(&s1_config, good).unwrap();
    let done = group
        .wait_failover_done(1, Duration::from_secs(90))
        .await
        .expect("the failover finishes once s1 can start");
    assert_eq!(done, "s1");
    let record = failovers(&group).await.into_iter().next().unwrap();
    assert_eq!(record["status"], "done", "{record:#}");
    let promoted = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "promoted")
        .unwrap();
    assert!(promoted["error"].is_null(), "{promoted:#}");
    assert!(
        promoted["detail"]
            .as_str()
            .is_some_and(|d| d.contains("failed attempt")),
        "the journal keeps the failed attempts: {promoted:#}"
    );
    let kept = read_kv(&group, "s1", root.expose(), "kept/before-the-fault")
        .await
        .expect("a KV answer from s1");
    assert_eq!(
        kept.pointer("/data/data/v"),
        Some(&Value::from("one")),
        "{kept}"
    );
}

/// The index of the coordinator that leads now.
async fn leader_index(group: &Group) -> Option<usize> {
    let url = group.leader().await?;
    group.coordinators().iter().position(|c| c.url == url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_as_the_raft_promotion_begins_is_finished_by_the_next_once() {
    leader_killed_at("crash-before:promoted").await;
}

/// The leader coordinator aborts at `failpoint` of a raft failover (the whole primary lost):
/// the next leader finishes it, each step once, the target's node recovered once, the data
/// kept and the other secondary in the new raft. A failed unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used)]
async fn leader_killed_at(failpoint: &str) {
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft(1, 1)
        .coordinators(2)
        .start()
        .await
        .expect("raft group");
    wait_lag_known(&group, &["s1", "s2"]).await;
    // Arm the follower, then make it the leader: it aborts at the failpoint (before the
    // Promoted step: right after journaling its start, while the target's agent recovers its
    // node).
    let first = leader_index(&group).await.expect("a leader");
    let armed = 1 - first;
    group.coordinators_mut()[armed]
        .restart_with_env(&[("VAULT_DR_FAILPOINT", failpoint)])
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    group.coordinators_mut()[first].kill();
    let took = try_wait_for("the armed coordinator to lead", READY, || async {
        (leader_index(&group).await == Some(armed)).then_some(())
    })
    .await;
    assert!(took.is_ok(), "the armed coordinator never led");
    group.coordinators_mut()[first].restart().unwrap();

    let root = group.cluster("p").unwrap().root_token().clone();
    group
        .cluster("p")
        .unwrap()
        .kv_put("kept/before-the-fault", &serde_json::json!({ "v": "one" }))
        .await
        .expect("a write on p");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    let aborted = try_wait_for("the armed leader to abort at its failpoint", READY, || {
        let dead = group.coordinators()[armed].pid().is_none()
            || std::fs::read_to_string(&group.coordinators()[armed].log_path)
                .is_ok_and(|l| l.contains("failpoint reached"));
        async move { dead.then_some(()) }
    })
    .await;
    assert!(
        aborted.is_ok(),
        "the armed leader did not reach its failpoint"
    );
    let to = group
        .wait_failover_done(1, Duration::from_secs(120))
        .await
        .expect("the next leader finishes the failover");
    let record = one_failover_each_step_once(&group).await;
    let by: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["by"].as_str())
        .collect();
    let ids: Vec<&str> = group.coordinators().iter().map(|c| c.id.as_str()).collect();
    assert!(
        by.contains(&ids[armed]) && by.contains(&ids[first]),
        "steps by both leaders: {by:?}"
    );
    // The target's node was recovered once; the other secondary rejoined it.
    let log = group.agent_log(&to).unwrap();
    assert_eq!(
        log.matches("raft: acting action=Recover").count(),
        1,
        "one raft recovery of {to}:\n{log}"
    );
    let other = if to == "s1" { "s2" } else { "s1" };
    let joined = try_wait_for("the other secondary in the new raft", READY, || async {
        let servers = raft_servers(&group, &to).await?;
        servers
            .contains(&(format!("{other}-n1"), false))
            .then_some(())
    })
    .await;
    assert!(joined.is_ok(), "{:?}", raft_servers(&group, &to).await);
    let kept = read_kv(&group, &to, root.expose(), "kept/before-the-fault")
        .await
        .expect("a KV answer from the new primary");
    assert_eq!(
        kept.pointer("/data/data/v"),
        Some(&Value::from("one")),
        "{kept}"
    );
}

/// The leader coordinator aborts after each step of one raft failover but the last (every
/// coordinator armed with the six failpoints, each restarted, armed again, when it aborts:
/// every step completes once, so each point kills exactly one leader, whoever leads then). The leaders that follow finish it: each step once,
/// one recovery, the data kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
async fn a_leader_killed_after_every_step_of_a_raft_failover_is_followed_by_one_that_finishes_it_each_step_once()
 {
    const ARMED: &str = "crash-after:decided,crash-after:fenced,crash-after:promoted,\
                         crash-after:switched,crash-after:repointed,crash-after:verified";
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft(1, 1)
        .coordinators(2)
        .spec(|s| {
            s.coordinator_env = vec![("VAULT_DR_FAILPOINT".into(), ARMED.into())];
            s.dir = std::env::var_os("VAULT_DR_TEST_RUN_DIR").map(Into::into);
            s.keep = s.dir.is_some();
        })
        .start()
        .await
        .expect("raft group");
    wait_lag_known(&group, &["s1", "s2"]).await;
    let root = group.cluster("p").unwrap().root_token().clone();
    group
        .cluster("p")
        .unwrap()
        .kv_put("kept/before-the-fault", &serde_json::json!({ "v": "four" }))
        .await
        .expect("a write on p");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    let started = Instant::now();
    let mut aborts = 0;
    let to = loop {
        for c in group.coordinators_mut() {
            if !c.is_running() {
                aborts += 1;
                c.restart().unwrap();
            }
        }
        if aborts == 6
            && let Ok(to) = group
                .wait_failover_done(1, Duration::from_millis(500))
                .await
        {
            break to;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the failover did not finish ({aborts} leaders aborted)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    one_failover_each_step_once(&group).await;
    let log = group.agent_log(&to).unwrap();
    assert_eq!(
        log.matches("raft: acting action=Recover").count(),
        1,
        "one raft recovery of {to}:\n{log}"
    );
    let kept = read_kv(&group, &to, root.expose(), "kept/before-the-fault")
        .await
        .expect("a KV answer from the new primary");
    assert_eq!(
        kept.pointer("/data/data/v"),
        Some(&Value::from("four")),
        "{kept}"
    );
}

/// The term in the leader coordinator's topology.
async fn term(group: &Group) -> Option<u64> {
    let leader = group.leader().await?;
    let v = group.get_json(&leader, "v1/topology").await?;
    v.pointer("/topology/term").and_then(Value::as_u64)
}

/// The voters of the raft as `cluster` sees it, sorted.
async fn voters(group: &Group, via: &str) -> Option<Vec<String>> {
    let mut v: Vec<String> = raft_servers(group, via)
        .await?
        .into_iter()
        .filter(|(_, voter)| *voter)
        .map(|(id, _)| id)
        .collect();
    v.sort_unstable();
    Some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synchronous_layout_keeps_its_leader_in_the_primary_and_loses_no_acknowledged_write() {
    // 2 + 1 + 1: p-n1 and p-n2 vote, p-n3 does not; s1-n1 and s2-n1 vote. A commit needs 3
    // of 4 voters, so it always includes s1-n1 or s2-n1.
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft_sync(3, 1)
        .coordinators(2)
        .spec(|s| {
            s.dir = std::env::var_os("VAULT_DR_TEST_RUN_DIR").map(Into::into);
            s.keep = s.dir.is_some();
        })
        .start()
        .await
        .expect("raft group");
    let servers = raft_servers(&group, "p").await.expect("raft configuration");
    assert_eq!(
        voters(&group, "p").await.unwrap(),
        ["p-n1", "p-n2", "s1-n1", "s2-n1"],
        "{servers:?}"
    );
    assert!(servers.contains(&("p-n3".into(), false)), "{servers:?}");

    let (client, root) = writing_client(&group).await;
    let indexed = try_wait_for("both DR voters' log index", READY, || async {
        let rows = candidates(&group).await;
        ["s1", "s2"]
            .iter()
            .all(|c| {
                rows.get(*c)
                    .and_then(|r| r.get("log_index"))
                    .and_then(Value::as_u64)
                    .is_some()
            })
            .then_some(())
    })
    .await;
    if indexed.is_err() {
        panic!("no log index reported: {:#?}", candidates(&group).await);
    }

    // The primary's active node alone killed: the raft elects among p-n2, s1-n1, s2-n1. A DR
    // voter that wins steps down (its agent), until p-n2 leads: no promotion.
    let http = workload::client_http().unwrap();
    let p = group.cluster("p").unwrap();
    let active = p.active_node().await.expect("p has an active node");
    let lost = p.nodes()[active].name().to_owned();
    group.cluster_mut("p").unwrap().nodes_mut()[active].kill();
    let back = try_wait_for("the leadership back in p", READY, || async {
        let p = group.cluster("p")?;
        let a = p.active_node().await?;
        (p.nodes()[a].name() != lost).then_some(())
    })
    .await;
    assert!(back.is_ok(), "p never led again after {lost} was lost");
    // It stays there, and nothing was promoted.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let p = group.cluster("p").unwrap();
    assert!(p.active_node().await.is_some(), "the leadership left p");
    assert_eq!(
        term(&group).await,
        Some(1),
        "a node's loss promoted nothing"
    );
    group.cluster_mut("p").unwrap().nodes_mut()[active]
        .restart_held()
        .expect("restart the lost node");
    let rejoined = try_wait_for("the lost node a voter again", READY, || async {
        (voters(&group, "p").await? == ["p-n1", "p-n2", "s1-n1", "s2-n1"]).then_some(())
    })
    .await;
    assert!(rejoined.is_ok(), "{:?}", raft_servers(&group, "p").await);
    // Make a DR voter win: step p's active node down (a leadership transfer to another
    // voter, two of three of them DR voters) until one has, and its agent stepped it down.
    let dr_step_downs = |group: &Group| {
        group
            .agents()
            .iter()
            .filter(|a| a.cluster != "p")
            .map(|a| {
                std::fs::read_to_string(&a.log_path)
                    .unwrap_or_default()
                    .matches("stepping it down")
                    .count()
            })
            .sum::<usize>()
    };
    let mut transfers = 0;
    while dr_step_downs(&group) == 0 && transfers < 12 {
        let p = group.cluster("p").unwrap();
        if let Some(a) = p.active_node().await {
            let url = p.nodes()[a].api_addr().join("v1/sys/step-down").unwrap();
            let _ = http
                .put(url)
                .header("X-Vault-Token", root.expose())
                .send()
                .await;
            transfers += 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let won = dr_step_downs(&group);
    println!("{transfers} leadership transfers: {won} step-downs by DR voters' agents");
    assert!(won > 0, "no DR voter won in {transfers} transfers");
    let back = try_wait_for("the leadership back in p", READY, || async {
        group.cluster("p")?.active_node().await
    })
    .await;
    assert!(
        back.is_ok(),
        "p never led again after a DR voter stepped down"
    );
    assert_eq!(term(&group).await, Some(1), "a step-down promoted nothing");
    // The client's address is p-n1's: writes resume once it serves again.
    let resumed_from = client.acked().len();
    let resumed = try_wait_for("the client writing again", READY, || async {
        (client.acked().len() >= resumed_from + 100).then_some(())
    })
    .await;
    assert!(resumed.is_ok(), "the client never wrote again");

    // The loss of the primary site.
    let killed_at = chrono::Utc::now();
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    let new_primary = group
        .wait_failover_done(1, Duration::from_secs(90))
        .await
        .expect("the failover finishes");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = client.acked();
    let stats = client.stop().await;
    assert_eq!(term(&group).await, Some(2), "exactly one promotion");
    let x = group.cluster(&new_primary).unwrap();
    let x_api = x.nodes()[0].api_addr().clone();
    let missing = workload::missing_writes(&x_api, &root, &acked)
        .await
        .expect("read back");
    println!(
        "{} writes acknowledged ({} in the second before the fault, {} after it), {} missing \
         on {new_primary}; client {stats:?}",
        acked.len(),
        acked
            .iter()
            .filter(|w| w.acked_at <= killed_at
                && w.acked_at > killed_at - chrono::Duration::seconds(1))
            .count(),
        acked.iter().filter(|w| w.sent_at > killed_at).count(),
        missing.len()
    );
    assert!(missing.is_empty(), "synchronous, yet lost: {missing:?}");
    assert!(acked.iter().any(|w| w.sent_at > killed_at));

    // The other DR voter rejoins the new raft as a voter: the new primary's commits include it.
    let other = if new_primary == "s1" { "s2" } else { "s1" };
    let both = {
        let mut v = vec![format!("{new_primary}-n1"), format!("{other}-n1")];
        v.sort_unstable();
        v
    };
    let joined = try_wait_for(
        "the other DR voter a voter of the new raft",
        READY,
        || async { (voters(&group, &new_primary).await? == both).then_some(()) },
    )
    .await;
    assert!(
        joined.is_ok(),
        "{:?}",
        raft_servers(&group, &new_primary).await
    );
    assert!(try_write(&http, &x_api, root.expose(), "sync/with-both").await);

    // Without it, the new primary takes no write: a commit needs both voters.
    let other_node = group.cluster_mut(other).unwrap().nodes_mut();
    other_node[0].kill();
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == other) {
        a.kill();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut taken = 0;
    for i in 0..6 {
        if try_write(&http, &x_api, root.expose(), &format!("sync/alone-{i}")).await {
            taken += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(taken, 0, "{new_primary} committed without a DR voter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_while_it_suspects_the_primary_and_woken_after_the_failover_promotes_nothing_more()
 {
    use vault_dr_tests::lab::process::Signal;
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft(1, 1)
        .coordinators(2)
        .start()
        .await
        .expect("raft group");
    wait_lag_known(&group, &["s1", "s2"]).await;
    let stale = leader_index(&group).await.expect("a leader");
    let stale_url = group.coordinators()[stale].url.clone();
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    // Freeze the leader the moment it suspects the primary (every 10 ms): it believes it
    // leads, about to fail over.
    let suspecting = vault_dr_tests::lab::wait::try_wait_for_every(
        Duration::from_millis(10),
        "the leader to suspect the primary",
        READY,
        || async {
            let d = group.get_json(&stale_url, "v1/decisions/latest").await?;
            (d.pointer("/decision/kind").and_then(Value::as_str) != Some("no_action"))
                .then(|| d["sentence"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await
    .expect("the leader suspected the primary");
    group.coordinators()[stale].signal(Signal::Stop);
    println!("froze the leader on: {suspecting}");
    // The other replica takes the lease once it lapses and fails over.
    let to = group
        .wait_failover_done(1, Duration::from_secs(120))
        .await
        .expect("the other replica fails over");
    // Wake the stale leader: it must find its lease lost and do nothing. The sleep is the
    // point: what follows asserts that nothing happened meanwhile.
    group.coordinators()[stale].signal(Signal::Cont);
    tokio::time::sleep(Duration::from_secs(8)).await;
    one_failover_each_step_once(&group).await;
    assert_eq!(term(&group).await, Some(2), "one term raised");
    assert_ne!(
        leader_index(&group).await,
        Some(stale),
        "the woken replica does not lead"
    );
    let log = group.agent_log(&to).unwrap();
    assert_eq!(
        log.matches("raft: acting action=Recover").count(),
        1,
        "one raft recovery of {to}:\n{log}"
    );
    let other = if to == "s1" { "s2" } else { "s1" };
    let other_log = group.agent_log(other).unwrap();
    assert_eq!(
        other_log.matches("raft: acting action=Recover").count(),
        0,
        "{other} was never recovered: one raft, one primary"
    );
    let joined = try_wait_for("the other secondary in the new raft", READY, || async {
        let servers = raft_servers(&group, &to).await?;
        servers
            .contains(&(format!("{other}-n1"), false))
            .then_some(())
    })
    .await;
    assert!(joined.is_ok(), "{:?}", raft_servers(&group, &to).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_secondary_of_two_nodes_forms_the_new_raft_from_one_and_the_other_joins_it() {
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft(1, 2)
        .coordinators(1)
        .spec(|s| {
            s.dir = std::env::var_os("VAULT_DR_TEST_RUN_DIR").map(Into::into);
            s.keep = s.dir.is_some();
        })
        .start()
        .await
        .expect("raft group");
    wait_lag_known(&group, &["s1", "s2"]).await;
    let p = group.cluster("p").unwrap();
    let root = p.root_token().clone();
    p.kv_put("kept/before-the-fault", &serde_json::json!({ "v": "two" }))
        .await
        .expect("a write on p");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    let to = group
        .wait_failover_done(1, Duration::from_secs(120))
        .await
        .expect("the failover finishes");
    let records = failovers(&group).await;
    assert_eq!(records.len(), 1, "one failover: {records:#?}");
    // Exactly one node of the target formed the new raft.
    let recovered: Vec<String> = group
        .agents()
        .iter()
        .filter(|a| a.cluster == to)
        .filter(|a| {
            std::fs::read_to_string(&a.log_path)
                .unwrap_or_default()
                .contains("raft: acting action=Recover")
        })
        .map(|a| a.node.clone())
        .collect();
    assert_eq!(recovered.len(), 1, "one recovery in {to}: {recovered:?}");
    // Its other node joins as a voter (the primary's), the other secondary's two as
    // non-voters.
    let other = if to == "s1" { "s2" } else { "s1" };
    let want: Vec<(String, bool)> = vec![
        (format!("{to}-n1"), true),
        (format!("{to}-n2"), true),
        (format!("{other}-n1"), false),
        (format!("{other}-n2"), false),
    ];
    let formed = try_wait_for("the new raft with every live node", READY, || async {
        let servers = raft_servers(&group, &to).await?;
        want.iter().all(|w| servers.contains(w)).then_some(())
    })
    .await;
    assert!(formed.is_ok(), "{:?}", raft_servers(&group, &to).await);
    let kept = read_kv(&group, &to, root.expose(), "kept/before-the-fault")
        .await
        .expect("a KV answer from the new primary");
    assert_eq!(
        kept.pointer("/data/data/v"),
        Some(&Value::from("two")),
        "{kept}"
    );
    // Both of its nodes carry the term out: the recovered one as the active node, the other
    // as a standby of it.
    let applied = try_wait_for("both nodes of the new primary in term 2", READY, || async {
        let leader = group.leader().await?;
        let v = group.get_json(&leader, "v1/clusters").await?;
        let cluster = v.pointer(&format!("/view/clusters/{to}"))?.clone();
        let terms: Vec<u64> = cluster["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n.pointer("/report/applied_term")?.as_u64())
            .collect();
        (terms.len() == 2 && terms.iter().all(|t| *t == 2)).then_some(())
    })
    .await;
    assert!(applied.is_ok(), "a node of {to} did not carry out term 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_naming_the_wrong_node_id_is_journaled_and_done_again_once_mended() {
    let mut group = Group::builder()
        .clusters(["p", "s1"])
        .raft(1, 1)
        .coordinators(1)
        .spec(|s| {
            s.promote_timeout = Some(Duration::from_secs(4));
            s.dir = std::env::var_os("VAULT_DR_TEST_RUN_DIR").map(Into::into);
            s.keep = s.dir.is_some();
        })
        .start()
        .await
        .expect("raft group");
    // Bad input: s1's agent is told a node id that is not its server's. OpenBao accepts and
    // deletes a peers.json naming it, and the node then never elects itself.
    let s1_agent = group
        .agents()
        .iter()
        .position(|a| a.cluster == "s1")
        .expect("s1's agent");
    group.agents_mut()[s1_agent]
        .restart_with_args(&["--raft-node-id", "s1-wrong"])
        .unwrap();
    let noticed = try_wait_for("s1's agent to notice the wrong node id", READY, || async {
        let leader = group.leader().await?;
        let v = group.get_json(&leader, "v1/clusters").await?;
        let e = v
            .pointer("/view/clusters/s1/nodes/0/report/replication/last_error")?
            .as_str()?
            .to_owned();
        e.contains("s1-wrong").then_some(e)
    })
    .await;
    let Ok(noticed) = noticed else {
        panic!("s1's agent never reported the wrong node id");
    };
    println!("s1's agent reports: {noticed}");
    let p = group.cluster("p").unwrap();
    let root = p.root_token().clone();
    p.kv_put(
        "kept/before-the-fault",
        &serde_json::json!({ "v": "three" }),
    )
    .await
    .expect("a write on p");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in group.cluster_mut("p").unwrap().nodes_mut() {
        n.kill();
    }
    for a in group.agents_mut().iter_mut().filter(|a| a.cluster == "p") {
        a.kill();
    }
    // The term is raised, the failover stays open with the agent's reason on its Promoted step.
    let journaled = try_wait_for("the failed promotion in the journal", READY, || async {
        let f = failovers(&group).await.into_iter().next()?;
        let step = f
            .get("steps")?
            .as_array()?
            .iter()
            .find(|s| s.get("step").and_then(Value::as_str) == Some("promoted"))?
            .clone();
        let error = step.get("error")?.as_str()?.to_owned();
        error.contains("s1-wrong").then_some((f, error))
    })
    .await;
    let Ok((record, error)) = journaled else {
        panic!("no journaled failure: {:#?}", failovers(&group).await);
    };
    println!("journaled: {error}");
    assert_eq!(record["status"], "in_progress", "{record:#}");
    assert_eq!(term(&group).await, Some(2));
    let s1 = group.cluster("s1").unwrap();
    assert_eq!(
        s1.active_node().await,
        None,
        "the wrong recovery made nothing active"
    );

    // The operator mends the agent's flag; its next recovery takes.
    group.agents_mut()[s1_agent].restart().unwrap();
    let done = group
        .wait_failover_done(1, Duration::from_secs(90))
        .await
        .expect("the failover finishes once the node id is right");
    assert_eq!(done, "s1");
    let log = group.agent_log("s1").unwrap();
    assert!(
        log.contains("the recovery did not take"),
        "the agent recovered again:\n{log}"
    );
    let kept = read_kv(&group, "s1", root.expose(), "kept/before-the-fault")
        .await
        .expect("a KV answer from s1");
    assert_eq!(
        kept.pointer("/data/data/v"),
        Some(&Value::from("three")),
        "{kept}"
    );
}

/// A planned switchover inside one raft: the leadership moves to the target, whose node
/// becomes the raft's only voter; nothing is recovered, restored, quarantined or sealed, and
/// a client writing throughout loses nothing, though the leader coordinator is killed in the
/// middle of it. The write pause is printed (the drill measures it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_hands_the_raft_over_with_no_restore_and_no_write_lost() {
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .raft(3, 1)
        .coordinators(2)
        .spec(|s| {
            s.dir = std::env::var_os("VAULT_DR_TEST_RUN_DIR").map(Into::into);
            s.keep = s.dir.is_some();
        })
        .start()
        .await
        .expect("raft group");
    let (client, root) = writing_client(&group).await;
    wait_lag_known(&group, &["s1", "s2"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let leader = group.leader().await.expect("a leader");
    let asked_at = chrono::Utc::now();
    let resp = group
        .http()
        .post(leader.join("v1/switchover").unwrap())
        .bearer_auth(group.coordinator_token().expose())
        .json(&serde_json::json!({ "to": "s1" }))
        .send()
        .await
        .expect("the switchover request");
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    // The leader coordinator is killed in the middle of the handover, once the target's node
    // votes (the first of its moves): the next leader goes on from what the raft looks like.
    let first = leader_index(&group).await.expect("a leader");
    let voting = try_wait_for("s1-n1 a voter", READY, || async {
        raft_servers(&group, "p")
            .await?
            .contains(&("s1-n1".to_owned(), true))
            .then_some(())
    })
    .await;
    assert!(voting.is_ok(), "{:?}", raft_servers(&group, "p").await);
    group.coordinators_mut()[first].kill();
    let to = group
        .wait_failover_done(1, Duration::from_secs(90))
        .await
        .expect("the switchover finishes");
    assert_eq!(to, "s1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = client.acked();
    let stats = client.stop().await;

    // The journal: a handover, no cut, no seal.
    let records = failovers(&group).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let reason = records[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("a handover inside one raft"), "{reason}");
    let steps = records[0]["steps"].as_array().cloned().unwrap_or_default();
    let detail = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .and_then(|s| s["detail"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    let all: Vec<&str> = vault_dr_coordinator::model::Step::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(names, all, "each step once: {steps:#?}");
    let by: Vec<&str> = steps.iter().filter_map(|s| s["by"].as_str()).collect();
    let killed = group.coordinators()[first].id.clone();
    assert!(
        by.contains(&killed.as_str()) && by.iter().any(|b| *b != killed),
        "steps by both leaders: {by:?}"
    );
    assert!(
        detail("fenced").contains("nothing is cut or sealed"),
        "{steps:#?}"
    );
    assert!(
        detail("promoted").contains("handed over to s1-n1"),
        "{steps:#?}"
    );
    println!("promoted: {}", detail("promoted"));

    // Nothing recovered, restored or quarantined anywhere.
    for a in group.agents() {
        let log = std::fs::read_to_string(&a.log_path).expect("the agent's log");
        for act in ["action=Recover", "action=Quarantine", "action=Stop"] {
            assert!(!log.contains(act), "{} did {act}", a.node);
        }
    }
    // s1's node leads and alone votes; every other node is a non-voter of the same raft.
    let handed = try_wait_for("s1-n1 the only voter", READY, || async {
        let servers = raft_servers(&group, "s1").await?;
        let voters: Vec<&str> = servers
            .iter()
            .filter(|(_, v)| *v)
            .map(|(id, _)| id.as_str())
            .collect();
        (voters == ["s1-n1"] && servers.len() == 5).then_some(())
    })
    .await;
    assert!(handed.is_ok(), "{:?}", raft_servers(&group, "s1").await);

    // Every acknowledged write, by version and value, and the pause the client saw.
    let x_api = group.cluster("s1").unwrap().nodes()[0].api_addr().clone();
    let missing = workload::missing_writes(&x_api, &root, &acked)
        .await
        .expect("read back");
    let mut times: Vec<_> = acked
        .iter()
        .filter(|w| w.acked_at >= asked_at)
        .map(|w| w.acked_at)
        .collect();
    times.sort_unstable();
    let pause = times
        .windows(2)
        .map(|t| (t[1] - t[0]).num_milliseconds())
        .max()
        .unwrap_or_default();
    println!(
        "{} writes acknowledged, {} missing; longest gap between acknowledgements after the \
         request {pause} ms; client {stats:?}",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(
        acked.iter().any(|w| w.sent_at > asked_at),
        "the client wrote during the switchover"
    );

    // Done: the old primary's client addresses refuse writes, the new primary's take them.
    let probe = workload::client_http().unwrap();
    for n in group.cluster("p").unwrap().nodes() {
        assert!(
            !try_write(&probe, n.client_addr(), root.expose(), "after/old").await,
            "{} took a write after the switchover",
            n.name()
        );
    }
    let took = try_wait_for("a write on s1's client address", READY, || async {
        let n = &group.cluster("s1")?.nodes()[0];
        try_write(&probe, n.client_addr(), root.expose(), "after/new")
            .await
            .then_some(())
    })
    .await;
    assert!(took.is_ok(), "s1 takes no write");
}
