//! Fault suite on network namespaces (issue 8, scenarios 1–6; issue 17, scenarios 7–10: a
//! degraded primary, its API port slowed or failing with `Host::degrade_port`): each OpenBao cluster lives on
//! its own namespace ("host") on one bridge; faults are packet filter rules and an NFQUEUE
//! delay inside a host (see `vault_dr_tests::netns`). Every group comes from the one harness
//! (`Group::builder()`, placed on the hosts). Scenarios 1–5: one `vault-dr coordinator`
//! process in the root namespace, listening on the bridge address, and each cluster's agent a
//! `vault-dr-agent` process on the cluster's host. Scenario 6: three `vault-dr coordinator`
//! processes (local lease, `.ha(..)`) with in-process agents (snapshot replication, DR token),
//! the first leader armed with a crash failpoint. Each scenario asserts on the journal, the topology, the
//! OpenBao clusters and, where a client writes, its acknowledged-write log; each prints one row
//! of the closing-note table (`FAULT TABLE | ...`, also appended to
//! `<target>/tmp/faults_netns.md`).
//!
//! Needs root, `ip`, `iptables`, `python3`, `stress-ng`, SecantusDB and `.tools/bin/bao`
//! (run `scripts/setup.sh`) and the built `vault-dr` and `vault-dr-agent` (`cargo build
//! --workspace`). Policy: probe 500 ms, confirm 2, report TTL 2 s, fast raft election.
//! Run: `cargo test -p vault-dr-tests --test integration faults_netns:: -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use url::Url;
use vault_dr_coordinator::config::DegradedFile;
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus, Step};
use vault_dr_lab::LabCluster;
use vault_dr_lab::degrade::{PortDegradation, PortFault};
use vault_dr_lab::group::RestoreMode;
use vault_dr_lab::harness::Group;
use vault_dr_lab::openbao::NodeHost;
use vault_dr_lab::process::ChildGuard;
use vault_dr_lab::wait::{try_wait_for, wait_for, wait_for_every};
use vault_dr_tests::netns::{Host, Net};

/// Detection needs the report TTL to lapse plus `confirm` ticks: about 3 s here.
const DETECTION: Duration = Duration::from_secs(3);

/// One fault lab: a DR group from the one harness, its clusters and agents placed on the
/// hosts. Field order is drop order: stress processes, then the group (coordinator, agents,
/// clusters, files), then the namespaces, then the bridge.
struct Lab {
    stress: Vec<ChildGuard>,
    group: Group,
    hosts: Vec<Host>,
    net: Net,
    /// The coordinator's API address.
    url: Url,
    /// The stable client address (the coordinator's local forwarder), with `replicate`.
    traffic: Option<String>,
}

struct LabOptions {
    names: &'static [&'static str],
    cooldown: Duration,
    /// The MongoDB store (URI and database; default: an embedded file).
    mongodb: Option<(String, String)>,
    /// Snapshot replication (continuous restore every second) with the DR token in every
    /// cluster, agents and coordinator; and the local traffic forwarder.
    replicate: bool,
    /// `[policy.degraded]` (`None`: the rule off).
    degraded: Option<DegradedFile>,
    /// Raft replication instead: one raft, `p`'s 3 nodes its voters, one non-voter in every
    /// other cluster (the DR token everywhere).
    raft: bool,
}

impl LabOptions {
    /// Three clusters `p`, `s1`, `s2`, snapshot replication and the traffic forwarder, a 60 s
    /// cooldown and the degraded-primary rule ([`degraded_policy`]).
    fn degraded() -> Self {
        LabOptions {
            names: &["p", "s1", "s2"],
            cooldown: Duration::from_secs(60),
            mongodb: None,
            replicate: true,
            degraded: degraded_policy(),
            raft: false,
        }
    }
}

impl Lab {
    /// One coordinator process in the root namespace on the bridge address; each cluster and
    /// its `vault-dr-agent` process on the cluster's host. Waits until the group is ready.
    async fn start(opts: LabOptions) -> Lab {
        let net = Net::create().expect("create a bridge (run as root; see scripts/setup.sh)");
        let hosts: Vec<Host> = opts.names.iter().map(|n| net.host(n).unwrap()).collect();
        let mut builder = Group::builder()
            .clusters(opts.names.iter().copied())
            .coordinators(1)
            .traffic(opts.replicate)
            .replicate(opts.replicate)
            .replication(RestoreMode::Continuous, Duration::from_secs(1))
            .agent_interval(Duration::from_millis(300))
            .policy(|p| {
                (p.probe_interval, p.confirm) = (Duration::from_millis(500), 2);
                (p.report_ttl, p.cooldown) = (Duration::from_secs(2), opts.cooldown);
                p.promotion = None;
                p.degraded = opts.degraded;
                // The degraded scenarios make secondaries lag past it within seconds.
                p.max_lag = opts.degraded.map(|_| Duration::from_secs(10));
            })
            .spec(|s| {
                s.coordinator_ip = net.gateway().into();
                if let Some((uri, db)) = &opts.mongodb {
                    s.mongodb_uri = Some(vault_dr_common::Secret::new(uri.clone()));
                    s.mongodb_database = Some(db.clone());
                }
            });
        if opts.raft {
            builder = builder.raft(3, 1);
        }
        for (n, h) in opts.names.iter().zip(&hosts) {
            let placement = NodeHost {
                ip: h.ip().into(),
                prefix: h.exec_prefix(),
            };
            builder = builder.placement(n, placement);
        }
        let group = builder
            .start()
            .await
            .expect("start OpenBao in namespaces (needs .tools/bin/bao: run scripts/setup.sh)");
        Lab {
            stress: Vec::new(),
            url: group.coordinators()[0].url.clone(),
            traffic: group
                .traffic_addr()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            group,
            hosts,
            net,
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        self.group.get_json(&self.url, path).await
    }

    async fn failovers(&self) -> Vec<FailoverRecord> {
        let v = self.get("v1/failovers").await.unwrap_or(json!([]));
        serde_json::from_value(v).unwrap_or_default()
    }

    async fn topology(&self) -> (String, u64) {
        let v = self.get("v1/topology").await.unwrap_or(Value::Null);
        let primary = v
            .pointer("/topology/primary")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let term = v
            .pointer("/topology/term")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        (primary, term)
    }

    /// Copies every agent's log to `<target>/tmp/faults_netns-<scenario>-<cluster>-agent.log`
    /// (the lab directory goes with the lab).
    fn keep_agent_logs(&self, scenario: &str) {
        for c in self.group.clusters() {
            let to = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("faults_netns-{scenario}-{}-agent.log", c.name()));
            let _ = std::fs::copy(c.nodes()[0].dir().join("agent.log"), to);
        }
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name() == name).unwrap()
    }

    fn cluster(&self, name: &str) -> &LabCluster {
        self.group.cluster(name).unwrap()
    }

    /// Watches the latest decision for `watch`: how many ticks were suspect, and the most
    /// telling observer sentence seen (the one with the most observers down).
    async fn watch_decisions(&self, watch: Duration) -> (u32, u32, String) {
        let t = Instant::now();
        let (mut ticks, mut suspect, mut worst, mut worst_score) = (0, 0, String::new(), -1i32);
        let mut last_at = String::new();
        while t.elapsed() < watch {
            if let Some(d) = self.get("v1/decisions/latest").await {
                let at = d["at"].as_str().unwrap_or_default().to_owned();
                if at != last_at {
                    last_at = at;
                    ticks += 1;
                    if d["decision"]["kind"] == "suspect" {
                        suspect += 1;
                        let o = &d["decision"]["observers"];
                        let score = i32::from(o["direct_down"] == true)
                            + i32::from(o["reports_down"] == true)
                            + o["secondaries_down"].as_i64().unwrap_or(0) as i32;
                        if score > worst_score {
                            worst_score = score;
                            worst = d["sentence"].as_str().unwrap_or_default().to_owned();
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (ticks, suspect, worst)
    }
}

/// One row of the closing-note table: printed and appended to `<target>/tmp/faults_netns.md`.
fn table_row(scenario: &str, expected: &str, observed: &str, rto: Option<f64>) {
    let rto = rto.map_or("–".to_owned(), |s| format!("{s:.1} s"));
    let row = format!("| {scenario} | {expected} | {observed} | {rto} |");
    println!("FAULT TABLE {row}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults_netns.md");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{row}");
    }
}

/// `decided +Xs: fenced +Ys …`: when each step finished, in seconds after the cut `from`.
fn timeline(record: &FailoverRecord, from: DateTime<Utc>) -> String {
    let secs = |at: DateTime<Utc>| (at - from).num_milliseconds() as f64 / 1000.0;
    let mut out = format!("decided +{:.1}s", secs(record.decided_at));
    for s in record.steps.iter().filter(|s| s.step != Step::Decided) {
        if let Some(done) = s.finished_at {
            out.push_str(&format!(", {} +{:.1}s", s.step, secs(done)));
        }
    }
    out
}

/// Seconds from `from` to the end of the failover's Done step.
fn rto(record: &FailoverRecord, from: DateTime<Utc>) -> Option<f64> {
    let done = record.step(Step::Done)?.finished_at?;
    Some((done - from).num_milliseconds() as f64 / 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_coordinator_cut_off_from_the_primary_only_does_not_promote() {
    cut_off_from_the_primary_only(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_raft_coordinator_cut_off_from_the_primary_only_does_not_promote() {
    cut_off_from_the_primary_only(true).await;
}

/// The coordinator cut off from the primary's host while the secondaries' hosts still reach
/// it: suspected, never promoted; once healed the primary takes writes at once. `raft`: the
/// group is one raft (the secondaries' non-voters keep following p across the bridge).
async fn cut_off_from_the_primary_only(raft: bool) {
    let lab = Lab::start(LabOptions {
        names: &["p", "s1", "s2"],
        cooldown: Duration::from_secs(60),
        mongodb: None,
        replicate: false,
        degraded: None,
        raft,
    })
    .await;
    let p = lab.host("p");
    p.cut_from(lab.net.gateway()).unwrap();
    // The coordinator really lost the primary (its own probe fails) ...
    let direct = vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap()
        .get(lab.cluster("p").api_addr().join("v1/sys/health").unwrap())
        .send()
        .await;
    assert!(direct.is_err(), "the root namespace still reaches p");
    // ... while a secondary's host still does.
    let health = lab.cluster("p").api_addr().join("v1/sys/health").unwrap();
    let probe = format!(
        "import urllib.request as u\n\
         o = u.build_opener(u.ProxyHandler({{}}))\n\
         print(o.open('{health}', timeout=2).status, end='')"
    );
    let from_s1 = lab.host("s1").exec("python3", &["-c", &probe]);
    assert_eq!(
        from_s1.as_deref().ok(),
        Some("200"),
        "s1 cannot reach p: {from_s1:?}"
    );

    let watch = DETECTION * 5;
    let (ticks, suspect, worst) = lab.watch_decisions(watch).await;
    let failovers = lab.failovers().await;
    let (primary, term) = lab.topology().await;
    assert!(
        failovers.is_empty(),
        "promoted while the secondaries see p: {failovers:?}"
    );
    assert_eq!((primary.as_str(), term), ("p", 1));
    assert!(suspect > 0, "the cut was never noticed ({ticks} ticks)");
    assert!(
        worst.contains("direct probe down") && worst.contains("quorum not met"),
        "{worst}"
    );
    // Nothing fenced the primary: once healed it serves writes at once.
    lab.host("p").heal().unwrap();
    lab.cluster("p")
        .kv_put("s1/after", &json!({"v": 1}))
        .await
        .unwrap();
    table_row(
        if raft {
            "1 coordinator cut off from the primary only (raft)"
        } else {
            "1 coordinator cut off from the primary only"
        },
        "no promotion",
        &format!(
            "no promotion in {} s ({suspect} of {ticks} ticks suspect: {worst}); term 1",
            watch.as_secs()
        ),
        None,
    );
}

/// A client that writes `n` to KV `client/<n>` through the stable address every 100 ms and
/// logs every acknowledged write with the time of the acknowledgement.
async fn client_writer(
    stable: String,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(u64, DateTime<Utc>)> {
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let r = http
            .post(format!("{stable}/v1/secret/data/client/{n}"))
            .header("X-Vault-Token", &token)
            .json(&json!({"data": {"n": n}}))
            .send()
            .await;
        if matches!(&r, Ok(resp) if resp.status().is_success()) {
            acked.push((n, Utc::now()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked
}

/// Which of `keys` (KV `client/<n>`) `cluster` holds, read with `token`.
async fn held(cluster: &LabCluster, token: &str, keys: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for n in keys {
        let r = cluster
            .client()
            .get(
                cluster
                    .api_addr()
                    .join(&format!("v1/secret/data/client/{n}"))
                    .unwrap(),
            )
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => out.push(*n),
            404 => {}
            s => panic!("{}: GET client/{n}: {s}", cluster.name()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_isolated_primary_is_replaced_exactly_once() {
    let lab = Lab::start(LabOptions {
        names: &["p", "s1", "s2"],
        cooldown: Duration::from_secs(60),
        mongodb: None,
        replicate: true,
        degraded: None,
        raft: false,
    })
    .await;
    // The client's token is p's root token: the secondaries restore p's snapshots, so it is
    // valid on whichever cluster serves (only this test client uses it).
    let token = lab.cluster("p").root_token().expose().to_owned();
    let stable = lab.traffic.clone().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(client_writer(stable, token.clone(), stop_rx));
    tokio::time::sleep(Duration::from_secs(12)).await;

    let cut_at = Utc::now();
    lab.host("p").cut().unwrap();
    let done = wait_for(
        "a finished failover after isolating p",
        Duration::from_secs(60),
        || async {
            let f = lab.failovers().await;
            let done = f.iter().find(|r| r.status == FailoverStatus::Done).cloned();
            done.ok_or_else(|| format!("{f:?}"))
        },
    )
    .await;
    // The old primary comes back: unsealed, active, with its own (diverged) data. The stable
    // address must keep going to the new primary, and nothing may fail over again. (The
    // sleeps from here to the assertions are on purpose: they prove that nothing happens.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heal_at = Utc::now();
    lab.host("p").heal().unwrap();
    tokio::time::sleep(DETECTION * 3).await;
    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();

    let all = lab.failovers().await;
    assert_eq!(all.len(), 1, "exactly one promotion: {all:?}");
    assert_eq!((done.term, done.from.as_str()), (2, "p"));
    let steps: Vec<Step> = done.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL, "each step once, in order");
    let (primary, term) = lab.topology().await;
    assert_eq!((primary.as_str(), term), (done.to.as_str(), 2));

    // Every write acknowledged through the stable address after the switch was acknowledged by
    // the new primary: it holds all of them (the old one could only have kept them to itself).
    let new = lab.cluster(&done.to);
    let switched = done
        .step(Step::Switched)
        .and_then(|s| s.finished_at)
        .unwrap();
    let after: Vec<u64> = acked
        .iter()
        .filter(|(_, at)| *at > switched)
        .map(|(n, _)| *n)
        .collect();
    let after_heal = acked.iter().filter(|(_, at)| *at > heal_at).count();
    assert!(after_heal > 0, "no write acknowledged after p came back");
    let on_new = held(new, &token, &after).await;
    let not_on_new: Vec<u64> = after
        .iter()
        .filter(|n| !on_new.contains(n))
        .copied()
        .collect();
    assert!(
        not_on_new.is_empty(),
        "acknowledged through the stable address after the switch but not on {}: {not_on_new:?}",
        done.to
    );
    // RPO of an unplanned failover with continuous restore: what p acknowledged in its last
    // moments may be lost, nothing older than a few snapshot intervals.
    let before: Vec<(u64, DateTime<Utc>)> = acked
        .iter()
        .filter(|(_, at)| *at < cut_at)
        .copied()
        .collect();
    let keys: Vec<u64> = before.iter().map(|(n, _)| *n).collect();
    let kept = held(new, &token, &keys).await;
    let lost: Vec<&(u64, DateTime<Utc>)> =
        before.iter().filter(|(n, _)| !kept.contains(n)).collect();
    let oldest_lost = lost
        .iter()
        .map(|(_, at)| (cut_at - *at).num_milliseconds() as f64 / 1000.0)
        .fold(0.0, f64::max);
    assert!(
        oldest_lost <= 15.0,
        "lost a write acknowledged {oldest_lost:.1} s before the cut: {lost:?}"
    );
    let rto = rto(&done, cut_at);
    println!("s2 timeline: {}", timeline(&done, cut_at));
    lab.keep_agent_logs("s2");
    table_row(
        "2 primary fully isolated",
        "exactly one promotion; no write acknowledged by the old primary through the stable address after the switch",
        &format!(
            "1 failover p -> {} (term 2), none after p returned; {} writes acked through the stable address, all {} after the switch ({after_heal} after p returned) on {}; RPO: {} of {} pre-cut writes lost (the oldest acked {oldest_lost:.1} s before the cut)",
            done.to,
            acked.len(),
            after.len(),
            done.to,
            lost.len(),
            before.len()
        ),
        rto,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_latency_and_cpu_stress_do_not_promote() {
    let mut lab = Lab::start(LabOptions {
        names: &["p", "s1", "s2"],
        cooldown: Duration::from_secs(60),
        mongodb: None,
        replicate: false,
        degraded: None,
        raft: false,
    })
    .await;
    for h in &lab.hosts {
        h.delay(200).unwrap();
    }
    let stress_ng = which("stress-ng");
    for h in &lab.hosts {
        let log = lab.group.dir().join(format!("stress-{}.log", h.name()));
        let args: Vec<OsString> = ["--cpu", "1", "--cpu-load", "50", "--timeout", "120s"]
            .iter()
            .map(OsString::from)
            .collect();
        lab.stress
            .push(h.spawn("stress-ng", &stress_ng, &args, &log).unwrap());
    }
    // The delay is real: a health check from the root namespace takes 2 × 200 ms or more.
    let t = Instant::now();
    let r = lab
        .group
        .http()
        .get(lab.cluster("p").api_addr().join("v1/sys/health").unwrap())
        .send()
        .await
        .unwrap();
    let rtt = t.elapsed();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        rtt >= Duration::from_millis(390),
        "no added latency: {rtt:?}"
    );

    let watch = DETECTION * 5;
    let (ticks, suspect, worst) = lab.watch_decisions(watch).await;
    let failovers = lab.failovers().await;
    let (primary, term) = lab.topology().await;
    assert!(
        failovers.is_empty(),
        "promoted under latency and load: {failovers:?}"
    );
    assert_eq!((primary.as_str(), term), ("p", 1));
    for s in &mut lab.stress {
        assert!(s.is_running(), "stress-ng ended early");
    }
    table_row(
        "3 200 ms latency + CPU stress on every cluster",
        "no promotion",
        &format!(
            "no promotion in {} s (health RTT {} ms; {suspect} of {ticks} ticks suspect{})",
            watch.as_secs(),
            rtt.as_millis(),
            if worst.is_empty() {
                String::new()
            } else {
                format!(": {worst}")
            }
        ),
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_flapping_primary_fails_over_at_most_once_per_cooldown() {
    let cooldown = Duration::from_secs(60);
    let lab = Lab::start(LabOptions {
        names: &["p", "s1", "s2"],
        cooldown: Duration::from_secs(60),
        mongodb: None,
        replicate: false,
        degraded: None,
        raft: false,
    })
    .await;
    let t = Instant::now();
    let mut flaps = 0;
    let mut cuts: Vec<DateTime<Utc>> = Vec::new();
    // Down 4 s / up 3 s, always on whatever cluster is primary now, for 35 s (< cooldown).
    while t.elapsed() < Duration::from_secs(35) {
        let (primary, _) = lab.topology().await;
        let h = lab.host(if primary.is_empty() { "p" } else { &primary });
        h.cut().unwrap();
        cuts.push(Utc::now());
        tokio::time::sleep(Duration::from_secs(4)).await;
        h.heal().unwrap();
        flaps += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    tokio::time::sleep(DETECTION).await;
    let f = lab.failovers().await;
    let mut decided: Vec<DateTime<Utc>> = f.iter().map(|r| r.decided_at).collect();
    decided.sort();
    for w in decided.windows(2) {
        let gap = (w[1] - w[0]).to_std().unwrap_or_default();
        assert!(gap >= cooldown, "two failovers {gap:?} apart: {f:?}");
    }
    assert!(
        f.len() <= 1,
        "more than one failover within one cooldown: {f:?}"
    );
    // RTO from the cut that led to the decision (the last one before it).
    let rto = f.first().and_then(|r| {
        let cut = cuts.iter().rev().find(|c| **c <= r.decided_at)?;
        rto(r, *cut)
    });
    let observed = match f.first() {
        None => format!("{flaps} flaps in 35 s, no failover"),
        Some(r) => format!(
            "{flaps} flaps in 35 s, 1 failover {} -> {} ({:?}), then none (cooldown 60 s)",
            r.from, r.to, r.status
        ),
    };
    table_row(
        "4 flapping primary (down 4 s / up 3 s)",
        "at most one failover per cooldown",
        &observed,
        rto,
    );
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| panic!("{tool} not on PATH: run scripts/setup.sh"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_mongodb_killed_during_a_failover_gets_the_journal_when_it_returns() {
    use vault_dr_coordinator::store::Store;
    use vault_dr_coordinator::store::mongo::MongoStore;
    let mut mongo = vault_dr_tests::mongo::MongoServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start SecantusDB (run `bash scripts/setup.sh`): {e}"));
    let db = format!("faults_{}", std::process::id());

    let lab = Lab::start(LabOptions {
        names: &["p", "s1", "s2"],
        cooldown: Duration::from_secs(60),
        mongodb: Some((mongo.uri(), db.clone())),
        replicate: false,
        degraded: None,
        raft: false,
    })
    .await;
    let cut_at = Utc::now();
    lab.host("p").cut().unwrap();
    // MongoDB dies as soon as the detector suspects the primary: the whole failover (decision,
    // every journaled step) runs during the outage.
    let t = Instant::now();
    // Every 50 ms: MongoDB must die before the failover gets far.
    wait_for_every(
        Duration::from_millis(50),
        "the detector to suspect p",
        Duration::from_secs(20),
        || async {
            let d = lab.get("v1/decisions/latest").await.unwrap_or(Value::Null);
            if d["decision"]["kind"] == "suspect" || d["decision"]["kind"] == "fail_over" {
                Ok(())
            } else {
                Err(d)
            }
        },
    )
    .await;
    mongo.kill();
    let killed_at = Utc::now();
    // The list (`GET /v1/failovers`) asks MongoDB; the topology and the record by id come
    // from the coordination backend and the write buffer.
    let done = wait_for(
        "a finished failover while MongoDB is down",
        Duration::from_secs(60).saturating_sub(t.elapsed()),
        || async {
            // One reading of the topology, and only an answer counts: a failed GET is not "no
            // failover in progress".
            let topo = lab
                .get("v1/topology")
                .await
                .ok_or_else(|| "no topology answer".to_owned())?;
            let primary = topo["topology"]["primary"]
                .as_str()
                .ok_or_else(|| format!("a topology without a primary: {topo}"))?;
            let term = topo["topology"]["term"].as_u64().unwrap_or(0);
            if term == 2 && topo["topology"]["failover"].is_null() {
                let id = FailoverRecord::id_for(2, "p", primary);
                let record = lab.get(&format!("v1/failovers/{id}")).await;
                let record = record.ok_or_else(|| format!("no answer for record {id}"))?;
                let r: FailoverRecord =
                    serde_json::from_value(record.clone()).unwrap_or_else(|e| {
                        panic!("record {id} not served during the outage: {e}: {record}")
                    });
                assert_eq!(r.status, FailoverStatus::Done, "{r:?}");
                return Ok(r);
            }
            Err(format!("term {term}, primary {primary}"))
        },
    )
    .await;
    let list_during_outage = lab.get("v1/failovers").await.is_some();
    assert!(
        done.decided_at > killed_at,
        "decided before the outage: {done:?}"
    );
    let steps: Vec<Step> = done.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL, "each step once, in order");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = (Utc::now() - killed_at).num_milliseconds() as f64 / 1000.0;

    // MongoDB returns, empty (in-memory storage): whatever it holds now was re-sent.
    mongo.restart().await.unwrap();
    let direct = MongoStore::connect(&mongo.uri(), &db, Duration::from_secs(86_400))
        .await
        .unwrap();
    let t = Instant::now();
    let stored = wait_for(
        "the journal to reach MongoDB after it returned",
        Duration::from_secs(60),
        || async {
            match direct.failover(&done.id).await {
                Ok(Some(r)) if r.status == FailoverStatus::Done => Some(r),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(stored.steps.len(), Step::ALL.len(), "{stored:?}");
    assert_eq!((stored.term, stored.to.as_str()), (2, done.to.as_str()));
    let reached = t.elapsed().as_secs_f64();
    table_row(
        "5 MongoDB killed during a failover",
        "failover completes; journal reaches MongoDB after it returns",
        &format!(
            "failover p -> {} Done during a {outage:.0} s outage (GET /v1/failovers {} meanwhile); full journal (7 steps) in MongoDB {reached:.1} s after restart",
            done.to,
            if list_during_outage {
                "answered"
            } else {
                "failed"
            }
        ),
        rto(&done, cut_at),
    );
}

/// Scenario 6, one step: three coordinator processes (local lease of 3 s), the first leads
/// armed with the failpoint `failpoint` (`crash-after:<step>`, or `crash-before:fenced` for
/// "right after Decided": the Decided step is not run by the executor); the primary's host is
/// isolated; the next leader must finish the failover, each step exactly once.
/// What makes the first leader act in [`leader_killed_at`].
#[derive(Clone, Copy, PartialEq)]
enum Trigger {
    /// p's host cut off: a failover.
    Cut,
    /// p's API slowed by 800 ms (`[policy.degraded]` on): an automatic switchover.
    Slow,
}

async fn leader_killed_at(moment: &str, failpoint: &str) {
    leader_killed_during(moment, failpoint, Trigger::Cut).await;
}

/// Three coordinators, the first armed with `failpoint`; `trigger` makes it begin a failover
/// (or an automatic switchover), the failpoint kills it mid-way, and the next leader must
/// finish it, each step once.
async fn leader_killed_during(moment: &str, failpoint: &str, trigger: Trigger) {
    use vault_dr_coordinator::config::CoordinationFile;
    use vault_dr_lab::harness::Group;
    use vault_dr_tests::coordinators::{Backend, HaGroups};
    let net = Net::create().expect("create a bridge (run as root; see scripts/setup.sh)");
    let names = ["p", "s1", "s2"];
    let hosts: Vec<Host> = names.iter().map(|n| net.host(n).unwrap()).collect();
    let mut builder = Group::builder().clusters(names).coordinators(3);
    for (n, h) in names.iter().zip(&hosts) {
        builder = builder.placement(
            n,
            NodeHost {
                ip: h.ip().into(),
                prefix: h.exec_prefix(),
            },
        );
    }
    let mut lab = builder
        .ha(Backend::Local)
        .policy_file(vault_dr_coordinator::config::PolicyFile {
            degraded: degraded_policy().filter(|_| trigger == Trigger::Slow),
            ..vault_dr_tests::coordinators::failover_policy()
        })
        .coordination(CoordinationFile {
            lease_duration: Some(Duration::from_secs(3)),
            renew_period: Some(Duration::from_secs(1)),
            ..CoordinationFile::default()
        })
        .start()
        .await
        .expect("start OpenBao in namespaces (needs .tools/bin/bao: run scripts/setup.sh)");
    lab.start_with_first_leading(
        &[("VAULT_DR_FAILPOINT", failpoint)],
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    // The followers have seen the lease by now. A sleep on purpose, as in ha_local: there is no
    // condition to wait on, and nothing may happen meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cut_at = Utc::now();
    let _slow = match trigger {
        Trigger::Cut => {
            hosts[0].cut().unwrap();
            Vec::new()
        }
        Trigger::Slow => lab.clusters[0]
            .nodes()
            .iter()
            .map(|n| {
                hosts[0]
                    .degrade_port(n.api_addr().port().unwrap(), PortFault::Slow { ms: 800 })
                    .unwrap()
            })
            .collect(),
    };
    let t = Instant::now();
    let group = &mut lab.group;
    let stopped = try_wait_for(
        &format!("c1 to reach {failpoint}"),
        Duration::from_secs(60),
        || {
            let running = group.is_running(0);
            async move { !running }
        },
    )
    .await;
    stopped.unwrap_or_else(|e| panic!("{e}:\n{}", lab.group.logs()));
    assert!(
        lab.group.replicas[0]
            .log_text()
            .contains("failpoint reached"),
        "c1 died elsewhere than at {failpoint}:\n{}",
        lab.group.replicas[0].log_text()
    );
    let (next, _) = lab
        .group
        .wait_leader(Some(0), Duration::from_secs(20))
        .await
        .unwrap();
    let (done, all) = lab
        .group
        .wait_failover(
            next,
            &format!("the next leader to finish after {failpoint}"),
            Duration::from_secs(120).saturating_sub(t.elapsed()),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 1, "one failover: {all:#?}");
    let steps: Vec<Step> = done.steps.iter().map(|s| s.step).collect();
    assert_eq!(
        steps,
        Step::ALL,
        "each step once, in order, after {failpoint}"
    );
    assert_eq!((done.term, done.from.as_str()), (2, "p"));
    assert_eq!(
        done.planned,
        trigger == Trigger::Slow,
        "a slow primary is switched over, a cut one failed over: {}",
        done.reason
    );
    let by: Vec<&str> = done.steps.iter().map(|s| s.by.as_str()).collect();
    assert!(
        by.contains(&"c1") && by.iter().any(|b| *b != "c1"),
        "steps by both leaders: {by:?}"
    );
    // Still exactly one a few seconds later, and the new primary serves a write. (A sleep on
    // purpose: it proves that nothing happens.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all: Vec<FailoverRecord> = lab
        .group
        .get(next, "/v1/failovers")
        .await
        .unwrap_or_default();
    assert_eq!(all.len(), 1, "{all:#?}");
    // The new primary serves writes; it restored p's snapshots, so p's root token is the one
    // its token store knows.
    let target = lab.clusters.iter().find(|c| c.name() == done.to).unwrap();
    let write = target
        .client()
        .post(target.api_addr().join("v1/secret/data/s6/after").unwrap())
        .header("X-Vault-Token", lab.clusters[0].root_token().expose())
        .json(&json!({"data": {"moment": moment}}))
        .send()
        .await
        .unwrap();
    assert!(write.status().is_success(), "{:?}", write.status());
    table_row(
        &format!(
            "{} leader killed {moment} ({failpoint})",
            if trigger == Trigger::Slow { "11" } else { "6" }
        ),
        if trigger == Trigger::Slow {
            "the automatic switchover completes exactly once"
        } else {
            "the failover completes exactly once"
        },
        &format!(
            "1 failover p -> {}, 7 steps once each (by {}), next leader {}",
            done.to,
            by.join(","),
            lab.group.replicas[next].id
        ),
        rto(&done, cut_at),
    );
    drop(lab);
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_after_decided() {
    leader_killed_at("after decided", "crash-before:fenced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_after_fenced() {
    leader_killed_at("after fenced", "crash-after:fenced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_after_promoted() {
    leader_killed_at("after promoted", "crash-after:promoted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_after_repointed() {
    leader_killed_at("after repointed", "crash-after:repointed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_after_switched() {
    leader_killed_at("after switched", "crash-after:switched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_after_verified() {
    leader_killed_at("after verified", "crash-after:verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_when_promoted_has_started() {
    leader_killed_at("when promoted has started", "crash-before:promoted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_leader_killed_when_verified_has_started() {
    leader_killed_at("when verified has started", "crash-before:verified").await;
}

/// The `[policy.degraded]` of the degraded-primary scenarios: a 20 s window (at least three
/// probe intervals of 500 ms), the default thresholds (p99 500 ms / 10 % failed, clear below
/// 250 ms / 5 %, 3× the best eligible secondary's), and room for every switchover a scenario
/// may make in a day.
fn degraded_policy() -> Option<DegradedFile> {
    Some(DegradedFile {
        window: Some(Duration::from_secs(20)),
        max_per_day: Some(10),
        ..DegradedFile::default()
    })
}

impl Lab {
    /// Degrades the API port of every node of `cluster` (on its host: loopback included).
    fn degrade(&self, cluster: &str, fault: PortFault) -> Vec<PortDegradation> {
        self.cluster(cluster)
            .nodes()
            .iter()
            .map(|n| {
                self.host(cluster)
                    .degrade_port(n.api_addr().port().unwrap(), fault)
                    .unwrap()
            })
            .collect()
    }

    /// `vault-dr ARGS… --url <the coordinator> --token-file <token>`: its standard output.
    async fn cli(&self, args: &[&str]) -> String {
        let program = vault_dr_lab::tools::built_binary("vault-dr").unwrap();
        let out = tokio::process::Command::new(program)
            .args(args)
            .args(["--url", self.url.as_str(), "--token-file"])
            .arg(self.group.token_file())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "vault-dr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The longest time between two acknowledged writes from `from` on: the clients' write pause.
fn longest_pause(acked: &[(u64, DateTime<Utc>)], from: DateTime<Utc>) -> f64 {
    acked
        .windows(2)
        .filter(|w| w[1].1 >= from)
        .map(|w| (w[1].1 - w[0].1).num_milliseconds() as f64 / 1000.0)
        .fold(0.0, f64::max)
}

/// The primary alone degraded (`fault` on its API port) for 90 s under a writing client:
/// exactly one automatic switchover, away from it, whose reason names both observers' figures,
/// and every acknowledged write on the new primary. Returns the row's figures.
async fn degraded_primary_is_switched_over_once_without_loss(fault: PortFault, scenario: &str) {
    let lab = Lab::start(LabOptions::degraded()).await;
    let token = lab.cluster("p").root_token().expose().to_owned();
    let stable = lab.traffic.clone().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(client_writer(stable, token.clone(), stop_rx));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(lab.failovers().await.is_empty());

    let degraded_at = Utc::now();
    let start = Instant::now();
    let degradation = lab.degrade("p", fault);
    let done = wait_for(
        "an automatic switchover away from the degraded primary",
        Duration::from_secs(90),
        || async {
            let f = lab.failovers().await;
            let done = f.iter().find(|r| r.status == FailoverStatus::Done).cloned();
            done.ok_or_else(|| format!("{f:?}"))
        },
    )
    .await;
    // The degradation stays on p for the whole 90 s: nothing else may move.
    tokio::time::sleep(Duration::from_secs(90).saturating_sub(start.elapsed())).await;
    drop(degradation);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();

    let all = lab.failovers().await;
    assert_eq!(all.len(), 1, "exactly one switchover: {all:?}");
    assert!(done.planned, "a switchover, not a failover: {done:?}");
    assert_eq!((done.from.as_str(), done.term), ("p", 2));
    for needed in [
        "automatic switchover: primary p degraded",
        "agent of p-",
        "coordinator probe: p99",
        "thresholds p99 > 500 ms or > 10 % failed",
    ] {
        assert!(
            done.reason.contains(needed),
            "{needed:?} not in {}",
            done.reason
        );
    }
    let history = lab.cli(&["history"]).await;
    assert!(
        history.contains("agent of p-") && history.contains("coordinator probe"),
        "history does not name both observers' figures:\n{history}"
    );
    let (primary, _) = lab.topology().await;
    assert_eq!(primary, done.to);
    // Zero loss: every write acknowledged, before and after the switchover, is on the new
    // primary.
    let keys: Vec<u64> = acked.iter().map(|(n, _)| *n).collect();
    let kept = held(lab.cluster(&done.to), &token, &keys).await;
    let lost: Vec<u64> = keys.iter().filter(|n| !kept.contains(n)).copied().collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not on {}: {lost:?}",
        done.to
    );
    let to_switch = (done.decided_at - degraded_at).num_milliseconds() as f64 / 1000.0;
    let pause = longest_pause(&acked, done.decided_at);
    println!("{scenario} timeline: {}", timeline(&done, degraded_at));
    println!("{scenario} reason: {}", done.reason);
    table_row(
        &format!("{scenario} primary alone degraded ({fault}) for 90 s"),
        "exactly one switchover, 0 acknowledged writes lost",
        &format!(
            "1 switchover p -> {} decided {to_switch:.1} s after the degradation began (window 20 s); longest write pause {pause:.1} s; {} writes acked, 0 lost",
            done.to,
            acked.len()
        ),
        rto(&done, degraded_at),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_a_slow_primary_is_switched_over_once_without_loss() {
    degraded_primary_is_switched_over_once_without_loss(PortFault::Slow { ms: 800 }, "7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_a_primary_failing_a_fifth_of_its_requests_is_switched_over_once_without_loss() {
    degraded_primary_is_switched_over_once_without_loss(PortFault::Errors { every: 4 }, "8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_every_cluster_slow_moves_nothing_and_a_lagging_secondary_is_not_promoted() {
    let lab = Lab::start(LabOptions::degraded()).await;
    // Every cluster +800 ms for twice the window: no switchover.
    let all: Vec<PortDegradation> = ["p", "s1", "s2"]
        .iter()
        .flat_map(|c| lab.degrade(c, PortFault::Slow { ms: 800 }))
        .collect();
    tokio::time::sleep(Duration::from_secs(40)).await;
    let f = lab.failovers().await;
    assert!(f.is_empty(), "moved with every cluster slow: {f:?}");
    drop(all);
    table_row(
        "9a every cluster +800 ms for 40 s (window 20 s)",
        "no switchover",
        "no switchover",
        None,
    );

    // The primary slow while no secondary is caught up: cut from p, s1 and s2 pull no more
    // snapshots, and while a client writes to p their data grows older than max_lag (10 s
    // here). Then p is slowed.
    let token = lab.cluster("p").root_token().expose().to_owned();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(client_writer(lab.traffic.clone().unwrap(), token, stop_rx));
    let p_ip = lab.host("p").ip();
    lab.host("s1").cut_from(p_ip).unwrap();
    lab.host("s2").cut_from(p_ip).unwrap();
    wait_for(
        "both secondaries to lag past max_lag",
        Duration::from_secs(60),
        || async {
            let c = lab.get("v1/clusters").await.unwrap_or(Value::Null);
            let rows = c["candidates"]["candidates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let lagging = rows
                .iter()
                .filter(|r| r.to_string().contains("lagging"))
                .count();
            if lagging == 2 {
                Ok(())
            } else {
                Err(c["candidates"].to_string())
            }
        },
    )
    .await;
    let _slow = lab.degrade("p", PortFault::Slow { ms: 800 });
    let sentence = wait_for(
        "the rule to say why the degraded primary is not moved",
        Duration::from_secs(120),
        || async {
            let d = lab.get("v1/decisions/latest").await.unwrap_or(Value::Null);
            let s = d["sentence"].as_str().unwrap_or_default().to_owned();
            if s.contains("not moved: no secondary is eligible") {
                Ok(s)
            } else {
                Err(s)
            }
        },
    )
    .await;
    let explain = lab.cli(&["explain"]).await;
    assert!(
        explain.contains("degraded: primary p over the thresholds")
            && explain.contains("not moved: no secondary is eligible")
            && explain.contains("lag"),
        "explain does not say why p is not moved:\n{explain}"
    );
    let status = lab.cli(&["status"]).await;
    assert!(
        status.contains("DEGRADED PRIMARY: degraded: primary p"),
        "{status}"
    );
    let f = lab.failovers().await;
    assert!(f.is_empty(), "moved to a lagging secondary: {f:?}");
    stop_tx.send(true).unwrap();
    assert!(
        !writer.await.unwrap().is_empty(),
        "the client wrote nothing"
    );
    table_row(
        "9b primary +800 ms, both secondaries lagging past max_lag",
        "no switchover; explain says why",
        &format!("no switchover; {sentence}"),
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_a_flapping_degradation_is_moved_from_at_most_once_per_cooldown() {
    let cooldown = Duration::from_secs(120);
    let lab = Lab::start(LabOptions {
        cooldown,
        ..LabOptions::degraded()
    })
    .await;
    // +800 ms for 30 s, then 30 s without, for 5 minutes, always on whichever cluster is
    // the primary when the degradation begins.
    let t = Instant::now();
    let mut on = Vec::new();
    while t.elapsed() < Duration::from_secs(300) {
        let (primary, _) = lab.topology().await;
        let primary = if primary.is_empty() {
            "p".to_owned()
        } else {
            primary
        };
        on.push((Utc::now(), primary.clone()));
        let slow = lab.degrade(&primary, PortFault::Slow { ms: 800 });
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(slow);
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let f = lab.failovers().await;
    let mut decided: Vec<DateTime<Utc>> = f.iter().map(|r| r.decided_at).collect();
    decided.sort();
    for w in decided.windows(2) {
        let gap = (w[1] - w[0]).to_std().unwrap_or_default();
        assert!(gap >= cooldown, "two switchovers {gap:?} apart: {f:?}");
    }
    assert!(f.iter().all(|r| r.planned), "only switchovers: {f:?}");
    assert!(
        f.len() <= 3,
        "more than one switchover per cooldown in 5 min: {f:?}"
    );
    table_row(
        "10 degradation flapping (+800 ms 30 s on / 30 s off, 5 min, on the current primary)",
        "at most one switchover per cooldown (120 s)",
        &format!(
            "{} degradations, {} switchovers ({}){}",
            on.len(),
            f.len(),
            f.iter()
                .map(|r| format!("{} -> {}", r.from, r.to))
                .collect::<Vec<_>>()
                .join(", "),
            if decided.len() > 1 {
                format!(
                    ", the closest {:.0} s apart",
                    decided
                        .windows(2)
                        .map(|w| (w[1] - w[0]).num_milliseconds() as f64 / 1000.0)
                        .fold(f64::MAX, f64::min)
                )
            } else {
                String::new()
            }
        ),
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_leader_killed_after_fenced_in_an_automatic_switchover() {
    leader_killed_during(
        "after fenced, in a slow primary's switchover",
        "crash-after:fenced",
        Trigger::Slow,
    )
    .await;
}
