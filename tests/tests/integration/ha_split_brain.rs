//! Split brain between coordinator replicas: the leader is frozen (SIGSTOP) either just as it
//! starts to suspect the dead primary, or in the middle of the failover it began (term already
//! raised, steps running); it stays frozen past the expiry of its lease while another replica
//! takes over and fails over (or resumes the failover), and is then resumed (SIGCONT) still
//! believing, from its own point of view, that it was in the middle of leading. Exactly one promotion and one term increase must happen:
//! the journal holds one failover, to term 2, each step once; the topology says term 2 with
//! the target as primary; on the OpenBao side only the target acts as primary of term 2 (its
//! agent applied term 2 as the primary, every other live cluster follows it) and the dead old
//! primary was fenced once.
//!
//! Three real `vault-dr coordinator` processes on the local backend, three real OpenBao
//! clusters with the DR token, and in-process agents given all three coordinator URLs.
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built `vault-dr` binary
//! (`cargo build --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use vault_dr_common::{NodeState, Role};
use vault_dr_coordinator::api::TopologyResponse;
use vault_dr_coordinator::coordination::Coordination;
use vault_dr_coordinator::coordination::local::LocalCoordination;
use vault_dr_coordinator::model::{Decision, DecisionRecord};
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus, Step};
use vault_dr_lab::harness::Group;
use vault_dr_tests::coordinators::{Backend, HaGroups, sample};
use vault_dr_tests::lab::process::Signal;
use vault_dr_tests::lab::wait::try_wait_for_every;

const LEASE: Duration = Duration::from_secs(5);

/// When the test freezes the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freeze {
    /// As soon as its decision is no longer "no action" (it suspects the dead primary).
    Suspecting,
    /// As soon as the topology shows the failover it began (term 2 raised, steps running).
    MidFailover,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_while_it_suspects_the_primary_cannot_promote_a_second_time() {
    split_brain(Freeze::Suspecting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_in_the_middle_of_its_failover_cannot_promote_a_second_time() {
    split_brain(Freeze::MidFailover).await;
}

async fn split_brain(freeze: Freeze) {
    let mut lab = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(3)
        .ha(Backend::Local)
        .start()
        .await
        .unwrap();
    lab.group.start_all().await.unwrap();
    let (stale, _) = lab
        .group
        .wait_leader(None, Duration::from_secs(30))
        .await
        .unwrap();
    lab.start_agents().await.unwrap();
    lab.wait_failover_ready(stale, Duration::from_secs(60))
        .await
        .unwrap();
    let observer =
        LocalCoordination::new(lab.group.dir().join("coordination.json"), "observer", LEASE);

    // The primary dies; freeze the leader at the chosen point.
    lab.clusters[0].nodes_mut()[0].kill();
    let killed = Instant::now();
    // Every 10 ms: the freeze must land at the point, not after it.
    let seen = try_wait_for_every(
        Duration::from_millis(10),
        &format!("the leader to get to {freeze:?}"),
        Duration::from_secs(30),
        || async {
            match freeze {
                Freeze::Suspecting => {
                    let d: Option<DecisionRecord> =
                        lab.group.get(stale, "/v1/decisions/latest").await;
                    d.filter(|d| !matches!(d.decision, Decision::NoAction { .. }))
                        .map(|d| d.sentence)
                }
                Freeze::MidFailover => {
                    let t = observer.read_topology().await.unwrap().unwrap().value;
                    t.failover.map(|f| {
                        format!(
                            "failover {} in term {}, last step {}",
                            f.id, t.term, f.completed
                        )
                    })
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e} ({:?} after the kill):\n{}",
            killed.elapsed(),
            lab.group.logs()
        )
    });
    lab.group.signal(stale, Signal::Stop);
    let frozen = Instant::now();
    println!("froze {} on: {seen}", lab.group.replicas[stale].id);
    // The agents keep their list of all three replicas: a report to the frozen one times out
    // and they move on to the next.

    // Another replica takes over once the frozen one's lease has expired, and fails over.
    let (leader, _) = match lab
        .group
        .wait_leader(Some(stale), LEASE + Duration::from_secs(10))
        .await
    {
        Ok(l) => l,
        Err(e) => panic!("{e}\n{}", lab.group.logs()),
    };
    let (done, _) = lab
        .group
        .wait_failover(
            leader,
            "a finished failover",
            Duration::from_secs(120).saturating_sub(frozen.elapsed()),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        frozen.elapsed() > LEASE,
        "the frozen leader's lease expired first"
    );

    // Wake the stale leader: it must notice it lost the lease and do nothing.
    lab.group.signal(stale, Signal::Cont);
    // A sleep on purpose: what follows asserts that the woken leader did nothing meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let all: Vec<FailoverRecord> = lab.group.get(leader, "/v1/failovers").await.unwrap();
    assert_eq!(all.len(), 1, "exactly one failover: {all:#?}");
    let record = &all[0];
    assert_eq!(record.id, done.id);
    assert_eq!(record.status, FailoverStatus::Done);
    assert_eq!((record.term, record.from.as_str()), (2, "p"));
    let steps: Vec<Step> = record.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL, "each step once, in order: {record:#?}");
    let target = record.to.clone();

    let topo: TopologyResponse = lab.group.get(leader, "/v1/topology").await.unwrap();
    let t = topo.topology.clone().unwrap();
    assert_eq!(
        (t.primary.as_str(), t.term, t.failover.is_none()),
        (target.as_str(), 2, true),
        "{topo:#?}"
    );
    assert_eq!(
        topo.leader.as_deref(),
        Some(lab.group.replicas[leader].id.as_str())
    );
    // The stale replica is a follower and says so.
    assert_eq!(lab.group.leaders().await, vec![leader]);
    let m = lab.group.metrics(stale).await.unwrap();
    assert_eq!(sample(&m, "vault_dr_coordinator_is_leader"), Some(0.0));
    assert_eq!(
        sample(&m, "vault_dr_coordinator_failovers_total").unwrap_or(0.0)
            + sample(
                &lab.group.metrics(leader).await.unwrap(),
                "vault_dr_coordinator_failovers_total"
            )
            .unwrap_or(0.0),
        1.0,
        "one failover begun across the two replicas that led"
    );

    // OpenBao side: only the target acts as primary of term 2, every other live cluster follows
    // it, and the dead old primary was fenced once.
    let desired_primaries: Vec<&String> = topo
        .desired
        .iter()
        .filter(|(_, d)| d.role == Role::Primary)
        .map(|(c, _)| c)
        .collect();
    assert_eq!(desired_primaries, vec![&target], "{topo:#?}");
    for c in lab.clusters.iter().skip(1) {
        let report = lab
            .wait_applied(leader, c.name(), 2, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(report.applied_term, 2, "{}", c.name());
        if c.name() == target {
            assert_eq!(report.vault.state, NodeState::Active);
        }
    }
    let fenced = record
        .steps
        .iter()
        .filter(|s| s.step == Step::Fenced)
        .count();
    assert_eq!(fenced, 1);
    assert!(
        lab.clusters[0].nodes()[0].health().await.is_err(),
        "the old primary stays down"
    );
}
