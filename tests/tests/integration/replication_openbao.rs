//! Issue 4 acceptance: snapshot replication, promotion, fencing, the stable client address and
//! the planned switchover, end to end on four real OpenBao clusters (p, s1, s2, s3; one shared
//! static seal; fast elections), an in-process agent per node with `--replication snapshot` and
//! the DR token (policy `vault-dr`, never root), and one `vault-dr coordinator` process with the
//! local TCP forwarder as the stable address, all built by the one harness
//! (`Group::builder().ha(..)`). Clients use the old primary's root token through the
//! stable address throughout (after a restore the primary's tokens work on the secondary).
//!
//! - continuous mode: kill p -> the best-ranked secondary is promoted; every secret acked before
//!   the newest snapshot reads back through the stable address, new writes work; the restarted
//!   old primary takes no client writes, quarantines its diverged data and becomes a secondary
//!   of the new primary;
//! - on-promotion mode: a planned switchover (`vault-dr switchover --to s1 --wait`) while a
//!   client keeps writing through the stable address loses no acknowledged write; then killing
//!   s1 promotes another cluster that restores on promotion, and every secret acked before the
//!   newest snapshot reads back.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built `vault-dr` binary
//! (`cargo build --workspace`, which `scripts/test.sh` runs first). Timings are printed.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use url::Url;
use vault_dr_agent::config::RestoreMode;
use vault_dr_common::{Report, Secret};
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus, Step};
use vault_dr_tests::coordinators::{Backend, DrLab, HaGroups, SnapshotOptions};
use vault_dr_tests::lab::harness::{Group as LabGroup, failover_policy};
use vault_dr_tests::lab::wait::{try_wait_for, wait_for};

/// Pull interval of every agent.
const PULL: Duration = Duration::from_secs(1);

/// The whole group (one coordinator, an agent per cluster, the stable address) and a client;
/// everything stops when it is dropped.
struct Group {
    lab: DrLab,
    stable: Url,
    client_token: Secret,
    http: reqwest::Client,
}

impl Group {
    async fn start(restore: RestoreMode) -> Self {
        let mut policy = failover_policy(
            Duration::from_millis(500),
            2,
            Duration::from_secs(3),
            Duration::ZERO,
        );
        policy.max_lag = Some(Duration::from_secs(60));
        let mut lab = LabGroup::builder()
            .clusters(["p", "s1", "s2", "s3"])
            .coordinators(1)
            .ha(Backend::Local)
            .policy_file(policy)
            .stable_address(true)
            .agents(|a| {
                a.interval = Duration::from_millis(250);
                a.replication = Some(SnapshotOptions {
                    restore,
                    interval: PULL,
                    keep: 3,
                });
            })
            .start()
            .await
            .expect("lab group starts (run `bash scripts/setup.sh` if bao is missing)");
        lab.group.start_all().await.unwrap();
        lab.start_agents().await.unwrap();
        let stable = lab.stable.clone().unwrap();
        let client_token = lab.clusters[0].root_token().clone();
        // A new connection per request: the forwarder closes connections on a switch, and a
        // pooled one would turn into a spurious error.
        let http = vault_dr_common::http::client_builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self {
            lab,
            stable,
            client_token,
            http,
        }
    }

    fn cluster(&self, name: &str) -> &vault_dr_tests::lab::LabCluster {
        self.lab.cluster(name).unwrap()
    }

    async fn report(&self, cluster: &str) -> Option<Report> {
        self.lab.agents[cluster].report().await
    }

    /// Waits until `pred` holds for the agent report of `cluster`.
    async fn wait_report(
        &self,
        cluster: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Report) -> bool,
    ) -> Report {
        self.lab.agents[cluster]
            .wait_for(&format!("{cluster}: {what}"), timeout, pred)
            .await
    }

    /// Waits until the leader serves the stable address and every secondary is seeded.
    async fn wait_ready(&self) {
        for c in ["s1", "s2", "s3"] {
            self.wait_report(c, "seeded", Duration::from_secs(90), |r| {
                r.replication.seeded && r.applied_term >= 1
            })
            .await;
        }
        wait_for(
            "the stable address to reach p",
            Duration::from_secs(30),
            || write(&self.http, &self.stable, &self.client_token, "ready", "1"),
        )
        .await;
    }

    /// Waits for a finished failover to `term`; returns it.
    async fn wait_done(&self, term: u64, timeout: Duration) -> FailoverRecord {
        let what = format!("a finished failover to term {term}");
        let done = self.lab.group.wait_failover(0, &what, timeout, |r| {
            r.term == term && r.status == FailoverStatus::Done
        });
        done.await.unwrap().0
    }

    /// Every failover the coordinator journaled.
    async fn failovers(&self) -> Vec<FailoverRecord> {
        self.lab.group.get(0, "/v1/failovers").await.unwrap()
    }
}

/// KV v2 write of `{"v": value}` at `secret/<path>`; Err with the reason when not acknowledged.
async fn write(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    path: &str,
    value: &str,
) -> Result<(), String> {
    let r = http
        .post(addr.join(&format!("v1/secret/data/{path}")).unwrap())
        .header("X-Vault-Token", token.expose())
        .json(&json!({ "data": { "v": value } }))
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status()))
    }
}

/// KV v2 read of `secret/<path>`: the `v` field, None when absent or unreadable.
async fn read(http: &reqwest::Client, addr: &Url, token: &Secret, path: &str) -> Option<String> {
    let r = http
        .get(addr.join(&format!("v1/secret/data/{path}")).ok()?)
        .header("X-Vault-Token", token.expose())
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v.pointer("/data/data/v")?.as_str().map(str::to_owned)
}

/// Reads `path` until it equals `want` (the stable address may need a moment after a switch).
async fn read_eventually(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    path: &str,
    want: &str,
    timeout: Duration,
) -> bool {
    try_wait_for(&format!("{path} to read {want}"), timeout, || async {
        read(http, addr, token, path).await.as_deref() == Some(want)
    })
    .await
    .is_ok()
}

/// Every key of `keys` reads back through `addr`; the missing ones.
async fn missing(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    keys: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        if !read_eventually(http, addr, token, k, k, Duration::from_secs(2)).await {
            out.push(k.clone());
        }
    }
    out
}

/// Seconds from `t0` to when `step` of `r` finished.
fn at(r: &FailoverRecord, step: Step, t0: chrono::DateTime<chrono::Utc>) -> f64 {
    let done = r.step(step).and_then(|s| s.finished_at).unwrap();
    (done - t0).num_milliseconds() as f64 / 1000.0
}

fn print_timeline(what: &str, r: &FailoverRecord, t0: chrono::DateTime<chrono::Utc>) {
    let line: Vec<String> = Step::ALL
        .iter()
        .filter(|s| r.step(**s).and_then(|x| x.finished_at).is_some())
        .map(|s| format!("{s} {:.2} s", at(r, *s, t0)))
        .collect();
    println!(
        "{what} ({} -> {}, term {}): {}",
        r.from,
        r.to,
        r.term,
        line.join(", ")
    );
    for s in &r.steps {
        println!("  {:<10} {}", s.step.as_str(), s.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_kill_the_primary_then_it_returns_as_a_quarantined_secondary() {
    let mut g = Group::start(RestoreMode::Continuous).await;
    g.wait_ready().await;
    let (http, stable, token) = (&g.http.clone(), &g.stable.clone(), &g.client_token.clone());

    // Acknowledged writes through the stable address, then wait until every secondary holds
    // them (their newest restored snapshot covers them).
    let mut acked = Vec::new();
    for i in 0..40 {
        let k = format!("early/{i}");
        write(http, stable, token, &k, &k).await.unwrap();
        acked.push(k);
    }
    for c in ["s1", "s2", "s3"] {
        let addr = g.cluster(c).api_addr();
        assert!(
            read_eventually(
                http,
                addr,
                token,
                "early/39",
                "early/39",
                Duration::from_secs(60)
            )
            .await,
            "{c} never restored a snapshot holding early/39"
        );
    }
    // Written on p after that: may or may not be in the newest snapshot (the RPO window).
    for i in 0..5 {
        let k = format!("late/{i}");
        write(http, stable, token, &k, &k).await.unwrap();
    }

    let killed = chrono::Utc::now();
    g.lab.clusters[0].nodes_mut()[0].kill();
    let done = g.wait_done(2, Duration::from_secs(120)).await;
    print_timeline("continuous failover after kill", &done, killed);
    assert_eq!(done.from, "p");
    assert!(!done.planned);
    let winner = done.table.winner.clone().unwrap();
    assert_eq!(done.to, winner, "the rank-1 candidate is promoted");
    assert_eq!(
        done.table.candidates[0].rank,
        Some(1),
        "{:#?}",
        done.table.candidates
    );
    assert!(
        done.reason.contains("promotion: complete"),
        "{}",
        done.reason
    );
    println!(
        "RTO (kill to done): {:.2} s; promoted at {:.2} s",
        at(&done, Step::Done, killed),
        at(&done, Step::Promoted, killed)
    );
    // The Switched step's time is when traffic moved: the forwarder follows the topology, so
    // it sent new connections to the winner once it was promoted, before the step ran.
    let (promoted, switched) = (
        done.step(Step::Promoted).unwrap(),
        done.step(Step::Switched).unwrap(),
    );
    let effect = switched
        .effect_at
        .expect("the Switched step records when the forwarder moved");
    assert!(effect <= switched.finished_at.unwrap(), "{switched:?}");
    assert!(
        effect >= promoted.started_at,
        "traffic moved after the promotion began: {promoted:?} {switched:?}"
    );

    let lost = missing(http, stable, token, &acked).await;
    assert!(
        lost.is_empty(),
        "acked before the newest snapshot but not readable through the stable address: {lost:?}"
    );
    write(http, stable, token, "after/1", "after/1")
        .await
        .expect("a new write through the stable address works with p's token");
    let new_primary = g.cluster(&done.to).api_addr().clone();
    assert_eq!(
        read(http, &new_primary, token, "after/1").await.as_deref(),
        Some("after/1"),
        "the stable address leads to the new primary"
    );

    // The old primary comes back: no client writes reach it, its data goes to quarantine, and
    // it follows the new primary.
    g.lab.clusters[0].nodes_mut()[0].restart().await.unwrap();
    let old = g.cluster("p").api_addr().clone();
    for i in 0..10 {
        let k = format!("back/{i}");
        write(http, stable, token, &k, &k).await.unwrap();
        assert_eq!(
            read(http, &new_primary, token, &k).await.as_deref(),
            Some(k.as_str()),
            "{k} went to the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = g
        .wait_report(
            "p",
            "following the new primary",
            Duration::from_secs(120),
            |r| r.applied_term >= 2 && r.replication.restored_index.is_some(),
        )
        .await;
    println!("old primary follows: {:?}", r.replication);
    let quarantined: Vec<_> = std::fs::read_dir(g.lab.quarantine_dir("p"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        quarantined
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "snap")),
        "p's diverged data is in quarantine: {quarantined:?}"
    );
    assert!(
        read_eventually(
            http,
            &old,
            token,
            "back/9",
            "back/9",
            Duration::from_secs(60)
        )
        .await,
        "p replicates the new primary's writes"
    );
    // Still one failover, still term 2.
    let all = g.failovers().await;
    assert_eq!(all.len(), 1, "{all:#?}");
}

/// A background writer: the keys it got acknowledged, how to stop it, and its task (which
/// returns the refused writes and the longest gap between two acknowledgements).
type Writer = (
    Arc<Mutex<Vec<String>>>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<(usize, Duration)>,
);

/// Keeps writing `sw/<n>` through `stable` until told to stop; the keys that were acknowledged,
/// and the longest gap between two acknowledgements.
fn spawn_writer(http: reqwest::Client, stable: Url, token: Secret, prefix: &'static str) -> Writer {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = oneshot::channel::<()>();
    let out = acked.clone();
    let task = tokio::spawn(async move {
        let mut failed = 0usize;
        let mut last_ack = Instant::now();
        let mut longest = Duration::ZERO;
        for i in 0.. {
            if stopped.try_recv().is_ok() {
                break;
            }
            let k = format!("{prefix}/{i}");
            match write(&http, &stable, &token, &k, &k).await {
                Ok(()) => {
                    longest = longest.max(last_ack.elapsed());
                    last_ack = Instant::now();
                    out.lock().unwrap().push(k);
                }
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (failed, longest)
    });
    (acked, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_promotion_switchover_loses_no_acked_write_then_a_kill_promotes_with_a_restore() {
    let mut g = Group::start(RestoreMode::OnPromotion).await;
    g.wait_ready().await;

    // A client keeps writing through the stable address during the whole switchover.
    let (acked, stop, writer) = spawn_writer(
        g.http.clone(),
        g.stable.clone(),
        g.client_token.clone(),
        "sw",
    );
    wait_for(
        "the writer's first acked writes",
        Duration::from_secs(10),
        || async { acked.lock().unwrap().len() >= 10 },
    )
    .await;
    let started = chrono::Utc::now();
    let printed = g
        .lab
        .group
        .cli(&["switchover", "--to", "s1", "--wait"])
        .await;
    println!("{printed}");
    assert!(
        printed.contains("switchover done: s1 is primary in term 2"),
        "{printed}"
    );
    for step in [
        "fenced",
        "promoted",
        "switched",
        "repointed",
        "verified",
        "done",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(step)),
            "{step} printed: {printed}"
        );
    }
    // The writer goes on after the switchover: ten more acknowledged writes.
    let before = acked.lock().unwrap().len();
    wait_for(
        "acked writes after the switchover",
        Duration::from_secs(10),
        || async { acked.lock().unwrap().len() >= before + 10 },
    )
    .await;
    let _ = stop.send(());
    let (failed, longest) = writer.await.unwrap();
    let done = g.wait_done(2, Duration::from_secs(10)).await;
    print_timeline("switchover", &done, started);
    assert!(done.planned);
    assert_eq!((done.from.as_str(), done.to.as_str()), ("p", "s1"));
    assert!(
        done.step(Step::Fenced)
            .unwrap()
            .detail
            .contains("cut client traffic"),
        "the Fenced step cut traffic instead of sealing: {:#?}",
        done.steps
    );
    let acked: Vec<String> = acked.lock().unwrap().clone();
    println!(
        "switchover: {} writes acked, {failed} refused during the cut, longest gap between acks {:.2} s, done in {:.2} s",
        acked.len(),
        longest.as_secs_f64(),
        at(&done, Step::Done, started)
    );
    assert!(acked.len() > 20, "the client wrote during the test");
    let (http, stable, token) = (&g.http.clone(), &g.stable.clone(), &g.client_token.clone());
    let lost = missing(http, stable, token, &acked).await;
    assert!(
        lost.is_empty(),
        "switchover lost {} acknowledged write(s): {lost:?}",
        lost.len()
    );
    let s1 = g.cluster("s1").api_addr().clone();
    let last = acked.last().unwrap();
    assert_eq!(
        read(http, &s1, token, last).await.as_deref(),
        Some(last.as_str()),
        "the stable address now leads to s1"
    );

    // On-promotion standbys (s2, s3, and p once it follows s1) hold snapshots of s1 without
    // restoring them. More acked writes, then wait for a couple of pulls and kill s1.
    g.wait_report("p", "following s1", Duration::from_secs(120), |r| {
        r.applied_term >= 2
    })
    .await;
    let mut second = Vec::new();
    for i in 0..30 {
        let k = format!("two/{i}");
        write(http, stable, token, &k, &k).await.unwrap();
        second.push(k);
    }
    // Every standby pulled the writes: a successful pull after the last one, and no lag.
    let written = chrono::Utc::now();
    for c in ["p", "s2", "s3"] {
        g.wait_report(c, "a pull of the writes", PULL * 30, |r| {
            r.replication.last_success_at.is_some_and(|at| at > written)
                && r.replication.lag_entries == Some(0)
        })
        .await;
    }
    for c in ["p", "s2", "s3"] {
        let r = g.report(c).await.unwrap();
        println!(
            "{c} before the kill: applied_term {}, lag {:?} entries / {:?} s",
            r.applied_term, r.replication.lag_entries, r.replication.lag_seconds
        );
    }
    let killed = chrono::Utc::now();
    g.lab.cluster_mut("s1").unwrap().nodes_mut()[0].kill();
    let done = g.wait_done(3, Duration::from_secs(120)).await;
    print_timeline("on-promotion failover after kill", &done, killed);
    assert_eq!(done.from, "s1");
    assert!(!done.planned);
    println!(
        "on-promotion RTO (kill to done): {:.2} s",
        at(&done, Step::Done, killed)
    );
    let mut all_acked = acked.clone();
    all_acked.extend(second);
    let lost = missing(http, stable, token, &all_acked).await;
    assert!(
        lost.is_empty(),
        "acked before the newest snapshot but lost after an on-promotion failover: {lost:?}"
    );
    write(http, stable, token, "three/1", "three/1")
        .await
        .expect("new writes work on the promoted cluster");
}
