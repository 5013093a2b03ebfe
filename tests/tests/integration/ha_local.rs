//! Coordinator high availability on the `local` backend, with three real `vault-dr coordinator`
//! processes sharing one coordination file and one store, in front of real OpenBao clusters:
//!
//! - kill -9 the leader: another replica holds the lease within the lease duration plus one
//!   second, `/readyz` moves to it, its leader metrics move, and `vault-dr status --url a,b,c`
//!   names it and lists every replica's role;
//! - kill -9 the leader while a client writes through the local stable address every 100 ms:
//!   every replica serves it, so at most the one request in flight on the killed replica's
//!   connection fails and the client never waits for the election;
//! - a 40 s leaderless gap (a lease held by no replica while the replicas run as followers):
//!   every agent's first report reaches the new leader within 2 s of its readiness;
//! - kill -9 the primary's server and the leader at the same instant (one host holding both):
//!   one failover, decided within the lease duration + the policy's detection time + 1 s;
//! - kill the leader between `Fenced` and `Promoted` (failpoint `crash-after:fenced`): the next
//!   leader finishes the failover; the journal shows each step exactly once.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built `vault-dr` binary
//! (`cargo build --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use vault_dr_common::NodeState;
use vault_dr_coordinator::coordination::Coordination;
use vault_dr_coordinator::coordination::local::LocalCoordination;
use vault_dr_coordinator::failpoint::ENV_FAILPOINT;
use vault_dr_coordinator::model::{FailoverStatus, Step};
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::{try_wait_for, try_wait_for_every, wait_for};
use vault_dr_tests::coordinators::{Backend, CoordinatorGroup, HaGroups, probe_policy, sample};

/// The default lease (the group runs with the default coordination settings).
const LEASE: Duration = Duration::from_secs(5);

async fn status(group: &CoordinatorGroup) -> String {
    group.cli(&["status"]).await
}

fn replica_row<'a>(status: &'a str, id: &str) -> Vec<&'a str> {
    status
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id) && w.len() == 3)
        .unwrap_or_default()
}

/// KV v2 writes of `n` on `stable` every 100 ms until `until`, a new connection each (as a
/// client behind a load balancer would): the instants of the acknowledged ones, and the
/// failures with their reasons.
async fn write_every_100ms(
    stable: &url::Url,
    token: &vault_dr_common::Secret,
    until: Instant,
) -> (Vec<Instant>, Vec<String>) {
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = stable.join("v1/secret/data/through-the-election").unwrap();
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u32;
    while Instant::now() < until {
        ticker.tick().await;
        n += 1;
        let r = http
            .put(url.clone())
            .header("X-Vault-Token", token.expose())
            .json(&serde_json::json!({ "data": { "n": n } }))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => acked.push(Instant::now()),
            Ok(r) => failed.push(format!("write {n}: status {}", r.status())),
            Err(e) => failed.push(format!("write {n}: {e}")),
        }
    }
    (acked, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_stable_address_writes_on_while_the_leader_is_killed() {
    let mut lab = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(3)
        .ha(Backend::Local)
        .policy_file(probe_policy(
            Duration::from_millis(500),
            Duration::from_millis(400),
        ))
        .stable_address(true)
        .dr_token(false)
        .start()
        .await
        .unwrap();
    lab.group.start_all().await.unwrap();
    let (first, _) = match lab.group.wait_leader(None, Duration::from_secs(30)).await {
        Ok(l) => l,
        Err(e) => panic!("{e}\n{}", lab.group.logs()),
    };
    let stable = lab.stable.clone().unwrap();
    let token = lab.clusters[0].root_token().clone();
    // Every replica serves the stable address: the followers too, before any kill.
    let warm = write_every_100ms(&stable, &token, Instant::now() + Duration::from_secs(2)).await;
    assert!(warm.1.is_empty() && warm.0.len() >= 10, "{:?}", warm.1);

    let start = Instant::now();
    let kill_at = start + Duration::from_secs(2);
    let writer = tokio::spawn({
        let (stable, token) = (stable.clone(), token.clone());
        async move { write_every_100ms(&stable, &token, kill_at + LEASE + Duration::from_secs(3)).await }
    });
    tokio::time::sleep_until(kill_at.into()).await;
    lab.group.kill(first);
    let (acked, failed) = writer.await.unwrap();
    let longest = acked
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let after_kill = acked.iter().filter(|t| **t > kill_at).count();
    println!(
        "leader killed under a client writing every 100 ms through the stable address: {} acked ({after_kill} after the kill), {} failed {failed:?}, longest gap between acks {:.2} s",
        acked.len(),
        failed.len(),
        longest.as_secs_f64()
    );
    // At most the one request in flight on a connection the killed replica held.
    assert!(failed.len() <= 1, "failed writes: {failed:?}");
    assert!(
        longest < Duration::from_secs(1),
        "clients waited {longest:?} (the lease is {LEASE:?}): followers must forward meanwhile"
    );
    assert!(
        after_kill >= 50,
        "the client wrote on after the kill: {after_kill}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_and_the_leader_killed_together_fail_over_once_within_the_lease_and_the_detection_time()
 {
    use vault_dr_coordinator::model::FailoverRecord;
    // The lab's policy: probe every 500 ms, 2 confirming ticks; default lease (5 s).
    let builder = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(3)
        .traffic(false)
        .replication(
            vault_dr_lab::group::RestoreMode::OnPromotion,
            Duration::from_secs(1),
        );
    let spec = builder.group_spec().clone();
    let mut g = builder.start().await.unwrap();
    let leader = g.leader().await.unwrap();
    let i = g
        .coordinators()
        .iter()
        .position(|c| c.url == leader)
        .unwrap();
    // One host holding both pods: the primary's server and the leading coordinator go at once.
    let killed = chrono::Utc::now();
    g.cluster_mut("p").unwrap().nodes_mut()[0].kill();
    g.coordinators_mut()[i].kill();
    let new_primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(new_primary, "p");
    let leader = g.leader().await.unwrap();
    let records: Vec<FailoverRecord> =
        serde_json::from_value(g.get_json(&leader, "v1/failovers").await.unwrap()).unwrap();
    assert_eq!(records.len(), 1, "one failover: {records:#?}");
    let detection = spec.probe_interval * spec.confirm;
    let bound = LEASE + detection + Duration::from_secs(1);
    let decided = (records[0].decided_at - killed).to_std().unwrap();
    println!(
        "primary and leader killed together: decided after {:.2} s (bound: lease {LEASE:?} + detection {detection:?} + 1 s = {:.2} s), {} promoted",
        decided.as_secs_f64(),
        bound.as_secs_f64(),
        records[0].to
    );
    assert!(
        decided <= bound,
        "decided {decided:?} after the kill, bound {bound:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_40_s_leaderless_gap_every_agent_reaches_the_new_leader_within_2_s_of_its_readiness()
 {
    use vault_dr_tests::lab::process::Signal;
    let mut lab = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(3)
        .ha(Backend::Local)
        .policy_file(probe_policy(
            Duration::from_millis(500),
            Duration::from_millis(400),
        ))
        .agents(|a| a.interval = Duration::from_millis(500))
        .dr_token(false)
        .start()
        .await
        .unwrap();
    lab.group.start_all().await.unwrap();
    lab.start_agents().await.unwrap();
    let (before, _) = lab
        .group
        .wait_leader(None, Duration::from_secs(30))
        .await
        .unwrap();
    // Every agent's node, as the leader's view names them once each has reported.
    let nodes: Vec<(String, String)> = try_wait_for(
        "a report from every agent",
        Duration::from_secs(30),
        || async {
            let v = lab
                .group
                .get::<serde_json::Value>(before, "/v1/clusters")
                .await
                .ok_or("no view")?;
            let mut nodes = Vec::new();
            for c in ["p", "s1", "s2"] {
                let reported = v
                    .pointer(&format!("/view/clusters/{c}/nodes"))
                    .and_then(serde_json::Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if reported.is_empty() {
                    return Err(format!("no report from {c} yet"));
                }
                for n in reported {
                    nodes.push((c.to_owned(), n["node"].as_str().unwrap_or("?").to_owned()));
                }
            }
            Ok(nodes)
        },
    )
    .await
    .unwrap();
    // The gap: every replica frozen past the lease, a holder that is no replica takes the
    // lease (as revoked RBAC or a hand on the Lease would leave it), and the replicas run on
    // as followers for 40 s, answering the agents' reports 503.
    for i in 0..3 {
        lab.group.signal(i, Signal::Stop);
    }
    let ghost = LocalCoordination::new(
        lab.group.dir().join("coordination.json"),
        "ghost",
        Duration::from_secs(60),
    );
    try_wait_for("the ghost to take the expired lease", LEASE * 3, || async {
        match ghost.try_acquire_or_renew().await {
            Ok(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    for i in 0..3 {
        lab.group.signal(i, Signal::Cont);
    }
    let gap = Instant::now();
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        lab.group.leaders().await.is_empty(),
        "no replica leads while the ghost holds the lease"
    );
    ghost.release().await.unwrap();
    let (leader, ready_at) = lab
        .group
        .wait_leader(None, Duration::from_secs(10))
        .await
        .unwrap();
    // When each agent's first report reaches the new leader (it accepted none as a follower).
    let mut first: std::collections::BTreeMap<String, Duration> = Default::default();
    let until = ready_at + Duration::from_secs(10);
    while first.len() < nodes.len() && Instant::now() < until {
        if let Some(v) = lab
            .group
            .get::<serde_json::Value>(leader, "/v1/clusters")
            .await
        {
            for (cluster, node) in &nodes {
                let reported = v
                    .pointer(&format!("/view/clusters/{cluster}/nodes"))
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|a| a.iter().any(|n| n["node"] == node.as_str()));
                if reported {
                    first
                        .entry(format!("{cluster}/{node}"))
                        .or_insert_with(|| ready_at.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "after a {:.0} s leaderless gap, first report at the new leader after its readiness: {first:?}",
        gap.elapsed().as_secs_f64() - ready_at.elapsed().as_secs_f64()
    );
    let view = lab
        .group
        .get::<serde_json::Value>(leader, "/v1/clusters")
        .await;
    assert_eq!(
        first.len(),
        nodes.len(),
        "every agent reported: {first:?}; nodes {nodes:?}; the leader's view: {view:#?}\n{}",
        lab.group.logs()
    );
    for (node, after) in &first {
        assert!(
            *after <= Duration::from_secs(2),
            "{node}'s first report came {after:?} after the new leader's readiness"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_the_lease_to_another_replica_within_lease_plus_one_second() {
    let mut lab = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(3)
        .ha(Backend::Local)
        .policy_file(probe_policy(
            Duration::from_millis(500),
            Duration::from_millis(400),
        ))
        .dr_token(false)
        .start()
        .await
        .unwrap();
    let group = &mut lab.group;
    group.start_all().await.unwrap();
    let (first, _) = match group.wait_leader(None, Duration::from_secs(30)).await {
        Ok(l) => l,
        Err(e) => panic!("{e}\n{}", group.logs()),
    };
    let first_id = group.replicas[first].id.clone();

    // Leader metrics: 1 on the leader only, one transition, time as leader rising.
    wait_for("a second as leader", Duration::from_secs(10), || async {
        let m = group.metrics(first).await?;
        sample(&m, "vault_dr_coordinator_leader_seconds_total").filter(|s| *s >= 1.0)
    })
    .await;
    for i in 0..3 {
        let m = group.metrics(i).await.unwrap();
        let leading = i == first;
        assert_eq!(
            sample(&m, "vault_dr_coordinator_is_leader"),
            Some(f64::from(u8::from(leading))),
            "replica {i}"
        );
        assert_eq!(
            sample(&m, "vault_dr_coordinator_leader_transitions_total"),
            Some(f64::from(u8::from(leading))),
            "replica {i}"
        );
        let secs = sample(&m, "vault_dr_coordinator_leader_seconds_total").unwrap();
        if leading {
            assert!(secs >= 1.0, "time as leader moves: {secs}");
        } else {
            assert_eq!(secs, 0.0);
        }
    }

    let text = status(group).await;
    println!("{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains(&format!("leader {first_id}")),
        "{text}"
    );
    for r in &group.replicas {
        let role = if r.id == first_id {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(replica_row(&text, &r.id)[1..2], [role], "{text}");
    }

    // kill -9 the leader and watch the shared lease.
    let observer = LocalCoordination::new(group.dir().join("coordination.json"), "observer", LEASE);
    group.kill(first);
    let killed = Instant::now();
    let moved = try_wait_for_every(
        Duration::from_millis(20),
        "the lease to move",
        LEASE + Duration::from_secs(5),
        || async {
            let lease = observer.lease().await.unwrap();
            lease
                .holder
                .filter(|h| *h != first_id)
                .map(|h| (h, killed.elapsed()))
        },
    )
    .await;
    let (holder, moved_after) = moved.unwrap_or_else(|e| panic!("{e}:\n{}", group.logs()));
    let (second, ready_at) = group
        .wait_leader(Some(first), Duration::from_secs(10))
        .await
        .unwrap();
    println!(
        "lease moved to {holder} {:.2} s after kill -9 of {first_id}; /readyz 200 after {:.2} s",
        moved_after.as_secs_f64(),
        (ready_at - killed).as_secs_f64()
    );
    assert!(
        moved_after <= LEASE + Duration::from_secs(1),
        "takeover took {moved_after:?}"
    );
    assert_eq!(group.replicas[second].id, holder);

    let m = group.metrics(second).await.unwrap();
    assert_eq!(sample(&m, "vault_dr_coordinator_is_leader"), Some(1.0));
    assert_eq!(
        sample(&m, "vault_dr_coordinator_leader_transitions_total"),
        Some(1.0)
    );

    let text = status(group).await;
    println!("{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains(&format!("leader {holder}")),
        "{text}"
    );
    assert_eq!(replica_row(&text, &holder)[1], "leader", "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("unreachable") && l.contains(&group.replicas[first].url)),
        "the killed replica is listed as unreachable: {text}"
    );
    let third = (0..3).find(|i| *i != first && *i != second).unwrap();
    assert_eq!(
        replica_row(&text, &group.replicas[third].id)[1],
        "follower",
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_between_fenced_and_promoted_is_finished_by_the_next_leader_step_by_step_once()
 {
    let mut lab = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(3)
        .ha(Backend::Local)
        .start()
        .await
        .unwrap();
    // c1 leads first, armed to abort right after Fenced completes; the others start later.
    lab.start_with_first_leading(
        &[(ENV_FAILPOINT, "crash-after:fenced")],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // The followers have seen the lease by now and are ready to take over. A sleep on purpose:
    // the assertion below is that no follower leads meanwhile (there is nothing to wait on).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lab.group.leaders().await, vec![0]);

    lab.clusters[0].nodes_mut()[0].kill();
    let killed = Instant::now();
    let group = &mut lab.group;
    let stopped = try_wait_for("c1 to reach its failpoint", Duration::from_secs(60), || {
        let running = group.is_running(0);
        async move { !running }
    })
    .await;
    stopped.unwrap_or_else(|e| panic!("{e}:\n{}", lab.group.logs()));
    let aborted = killed.elapsed();
    assert!(
        lab.group.replicas[0]
            .log_text()
            .contains("failpoint reached: aborting the process"),
        "c1 died at its failpoint:\n{}",
        lab.group.replicas[0].log_text()
    );

    // At the crash the topology records Fenced as the last completed step, in term 2.
    let observer =
        LocalCoordination::new(lab.group.dir().join("coordination.json"), "observer", LEASE);
    let at_crash = observer.read_topology().await.unwrap().unwrap().value;
    assert_eq!(at_crash.term, 2, "{at_crash:?}");
    let f = at_crash.failover.clone().unwrap();
    assert_eq!(
        (f.from.as_str(), f.completed),
        ("p", Step::Fenced),
        "{at_crash:?}"
    );

    let (next, _) = lab
        .group
        .wait_leader(Some(0), LEASE + Duration::from_secs(10))
        .await
        .unwrap();
    let (done, all) = lab
        .group
        .wait_failover(
            next,
            "the next leader to finish the failover",
            Duration::from_secs(120).saturating_sub(killed.elapsed()),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 1, "one failover: {all:#?}");
    println!(
        "c1 aborted {:.1} s after the primary died; journal: {done:#?}",
        aborted.as_secs_f64()
    );
    assert_eq!(
        (done.term, done.from.as_str(), done.to.as_str()),
        (2, "p", f.to.as_str())
    );
    let steps: Vec<Step> = done.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL, "each step exactly once, in order");
    let next_id = lab.group.replicas[next].id.clone();
    for s in &done.steps {
        let by = if s.step <= Step::Fenced {
            "c1"
        } else {
            next_id.as_str()
        };
        assert_eq!(s.by, by, "{:?} run by {by}", s.step);
        assert!(s.finished_at.is_some(), "{:?} finished", s.step);
    }
    let t = observer.read_topology().await.unwrap().unwrap().value;
    assert_eq!(
        (t.primary.as_str(), t.term, t.failover.is_none()),
        (f.to.as_str(), 2, true)
    );
    // The promoted cluster applied term 2 as an active primary; the other follows it.
    let report = lab
        .wait_applied(next, &f.to, 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(report.vault.state, NodeState::Active);
    let other = if f.to == "s1" { "s2" } else { "s1" };
    lab.wait_applied(next, other, 2, Duration::from_secs(60))
        .await
        .unwrap();
}
