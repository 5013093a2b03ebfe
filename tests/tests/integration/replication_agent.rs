//! Snapshot replication in the agent against real OpenBao (lab groups sharing one static seal)
//! and a tiny axum fake coordinator that answers every report with the desired state the test
//! sets for its cluster. Agents run in-process with the DR token (policy `vault-dr`), never
//! root:
//!
//! - continuous mode: a secret written on the primary appears on the secondary within the pull
//!   interval plus a restore, the agent reports `restoring` during a restore, and the reported
//!   lag falls after each pull and restore;
//! - on-promotion mode: snapshots accumulate but the secondary's data does not change until the
//!   desired state makes it primary; then it restores, sets `applied_term` and the canary works;
//! - a returning ex-primary quarantines its diverged data (the file restores into a third
//!   cluster and holds the secret only the ex-primary had) and then follows the new primary.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`); a missing binary fails the test.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;
use vault_dr_agent::Config;
use vault_dr_agent::config::{CoordinatorConfig, ReplicationConfig, RestoreMode, SnapshotConfig};
use vault_dr_common::{DesiredState, NodeState, PromotionMode, Report, Role, Secret};
use vault_dr_lab::wait::{wait_for, wait_for_every};
use vault_dr_tests::agents::InProcessAgent;
use vault_dr_tests::lab::LabCluster;

/// Pull interval of the agents under test.
const PULL: Duration = Duration::from_secs(1);

/// The fake coordinator: desired state per cluster, the reports it got.
#[derive(Clone, Default)]
struct Fake {
    desired: Arc<Mutex<HashMap<String, DesiredState>>>,
    reports: Arc<Mutex<Vec<Report>>>,
}

async fn take_report(
    State(f): State<Fake>,
    axum::Json(r): axum::Json<Report>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let d = f.desired.lock().unwrap().get(&r.cluster).cloned();
    f.reports.lock().unwrap().push(r);
    match d {
        Some(d) => axum::Json(d).into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

impl Fake {
    async fn start() -> (Self, Url, oneshot::Sender<()>) {
        let fake = Self::default();
        let app = axum::Router::new()
            .route("/v1/reports", post(take_report))
            .with_state(fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (fake, url, stop)
    }

    fn set(&self, d: DesiredState) {
        self.desired.lock().unwrap().insert(d.cluster.clone(), d);
    }
}

fn desired(
    term: u64,
    cluster: &LabCluster,
    primary: &LabCluster,
    failover_in_progress: bool,
) -> DesiredState {
    let is_primary = cluster.name() == primary.name();
    DesiredState {
        term,
        cluster: cluster.name().to_owned(),
        role: if is_primary {
            Role::Primary
        } else {
            Role::Secondary
        },
        primary: primary.name().to_owned(),
        primary_api_addr: (!is_primary).then(|| primary.api_addr().clone()),
        failover_in_progress,
        promotion: PromotionMode::Complete,
        final_snapshot_from: None,
        primary_suspect: false,
        raft_formed_term: None,
        raft_recover_node: None,
        raft_formed_by: None,
        raft_handover: false,
    }
}

/// An agent running in-process; stops when dropped.
struct Agent {
    agent: InProcessAgent,
    url: String,
    snapshot_dir: PathBuf,
    quarantine_dir: PathBuf,
}

impl Agent {
    async fn start(
        cluster: &LabCluster,
        coordinator: &Url,
        token_file: &Path,
        dir: &Path,
        restore: RestoreMode,
    ) -> Self {
        let mut config = Config::minimal(
            cluster.name(),
            cluster.nodes()[0].name(),
            cluster.api_addr().clone(),
        );
        config.interval = Duration::from_millis(250);
        config.vault.token = Some(Secret::new(std::fs::read_to_string(token_file).unwrap()));
        config.coordinator = Some(CoordinatorConfig {
            url: coordinator.clone(),
            token: Secret::new("coordinator-bearer"),
            ca_certs: Vec::new(),
        });
        let snapshot_dir = dir.join(format!("{}-snapshots", cluster.name()));
        let quarantine_dir = dir.join(format!("{}-quarantine", cluster.name()));
        config.replication = ReplicationConfig::Snapshot(SnapshotConfig {
            dir: snapshot_dir.clone(),
            interval: PULL,
            keep: 3,
            restore,
            quarantine_dir: quarantine_dir.clone(),
        });
        let agent = InProcessAgent::start(config).await.unwrap();
        Self {
            url: agent.url.clone(),
            agent,
            snapshot_dir,
            quarantine_dir,
        }
    }

    async fn report(&self) -> Option<Report> {
        self.agent.report().await
    }

    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Report) -> bool,
    ) -> Report {
        self.agent.wait_for(what, timeout, pred).await
    }

    fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Starts a group with fast elections and the DR token in every cluster; the token file.
async fn group(names: &[&str], dir: &Path) -> (Vec<LabCluster>, PathBuf) {
    let clusters = LabCluster::start_group_with(names, true, None)
        .await
        .expect("lab group starts (run `bash scripts/setup.sh` if bao is missing)");
    let id = Secret::new(format!("vdr-test-{:016x}", rand_u64()));
    for c in &clusters {
        c.create_dr_token(&id).await.unwrap();
    }
    let token_file = dir.join("dr.token");
    std::fs::write(&token_file, id.expose()).unwrap();
    (clusters, token_file)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// KV v2 write at `addr` with `token`.
async fn put(addr: &Url, token: &Secret, path: &str, data: Value) {
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let r = http
        .post(addr.join(&format!("v1/secret/data/{path}")).unwrap())
        .header("X-Vault-Token", token.expose())
        .json(&json!({ "data": data }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "write {path}: {}", r.status());
}

/// [`put`] for a load generator: a write whose connection fails (a reset seen once under a
/// loaded CI machine) is sent again, up to 3 times; an HTTP error still fails the test.
async fn put_retrying(addr: &Url, token: &Secret, path: &str, data: Value) {
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let url = addr.join(&format!("v1/secret/data/{path}")).unwrap();
    for attempt in 1..=3 {
        let sent = http
            .post(url.clone())
            .header("X-Vault-Token", token.expose())
            .json(&json!({ "data": data }))
            .send()
            .await;
        match sent {
            Ok(r) => {
                assert!(r.status().is_success(), "write {path}: {}", r.status());
                return;
            }
            Err(e) if attempt < 3 => {
                eprintln!("write {path}: {e}; sending it again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write {path} failed 3 times: {e}"),
        }
    }
}

/// KV v2 read at `addr` with `token`: the data, None on 404 (or a token not known there).
async fn get(addr: &Url, token: &Secret, path: &str) -> Option<Value> {
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = http
        .get(addr.join(&format!("v1/secret/data/{path}")).unwrap())
        .header("X-Vault-Token", token.expose())
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v.pointer("/data/data").cloned()
}

/// Waits until `path` reads as `want` at `addr`; the time it took.
async fn wait_secret(
    addr: &Url,
    token: &Secret,
    path: &str,
    want: &Value,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    wait_for(&format!("{path} to appear at {addr}"), timeout, || async {
        get(addr, token, path).await.as_ref() == Some(want)
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_mode_replicates_writes_reports_restoring_and_lag_falls() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, token_file) = group(&["p", "s1"], dir.path()).await;
    let (p, s1) = (&clusters[0], &clusters[1]);
    let (fake, coord, _stop) = Fake::start().await;
    fake.set(desired(1, p, p, false));
    fake.set(desired(1, s1, p, false));
    let root = p.root_token().clone();
    put(p.api_addr(), &root, "repl/first", json!({"v": "1"})).await;

    let ap = Agent::start(p, &coord, &token_file, dir.path(), RestoreMode::Continuous).await;
    let a1 = Agent::start(s1, &coord, &token_file, dir.path(), RestoreMode::Continuous).await;
    ap.wait_for("the primary applied term 1", Duration::from_secs(60), |r| {
        r.applied_term == 1
    })
    .await;

    // Watch every report of s1 from now on: a restore must show as `restoring`.
    let seen_restoring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let seen = seen_restoring.clone();
        let url = a1.url.clone();
        tokio::spawn(async move {
            let http = vault_dr_common::http::client_builder()
                .no_proxy()
                .build()
                .unwrap();
            loop {
                if let Ok(r) = http.get(format!("{url}/v1/report")).send().await
                    && let Ok(r) = r.json::<Report>().await
                    && r.vault.state == NodeState::Restoring
                {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let r = a1
        .wait_for(
            "term 1 applied with a restore",
            Duration::from_secs(90),
            |r| r.applied_term == 1 && r.replication.restored_index.is_some(),
        )
        .await;
    assert!(r.replication.seeded);
    wait_secret(
        s1.api_addr(),
        &root,
        "repl/first",
        &json!({"v": "1"}),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        seen_restoring.load(std::sync::atomic::Ordering::SeqCst),
        "the agent reported `restoring` during its restore"
    );

    // A write on p appears on s1 within the pull interval plus a restore (~5 s).
    let written = Instant::now();
    put(p.api_addr(), &root, "repl/second", json!({"v": "2"})).await;
    wait_secret(
        s1.api_addr(),
        &root,
        "repl/second",
        &json!({"v": "2"}),
        PULL + Duration::from_secs(25),
    )
    .await;
    println!(
        "replication_agent: write on p visible on s1 after {:.2} s (pull interval {:?})",
        written.elapsed().as_secs_f64(),
        PULL
    );

    // Lag grows with writes on p and falls again after the next pull and restore. Pulls go on
    // every second, also during restores, so the writes keep coming until a report shows the
    // lag: a burst that ends between two pulls may never be seen lagging.
    let before = a1
        .report()
        .await
        .unwrap()
        .replication
        .restored_index
        .unwrap();
    let bulk = {
        let (addr, root) = (p.api_addr().clone(), root.clone());
        tokio::spawn(async move {
            for i in 0..600 {
                put_retrying(&addr, &root, &format!("repl/bulk/{i}"), json!({"i": i})).await;
            }
        })
    };
    let high = a1
        .wait_for("lag of the bulk writes", Duration::from_secs(30), |r| {
            r.replication.lag_entries.is_some_and(|l| l >= 20)
        })
        .await;
    bulk.abort();
    let _ = bulk.await;
    let low = a1
        .wait_for(
            "lag falling after the next restore",
            Duration::from_secs(40),
            |r| {
                r.replication
                    .restored_index
                    .is_some_and(|i| i >= before + 20)
                    && r.replication.lag_entries.is_some_and(|l| l < 20)
            },
        )
        .await;
    println!(
        "replication_agent: lag {:?} entries before, {:?} after restore of index {:?}",
        high.replication.lag_entries, low.replication.lag_entries, low.replication.restored_index
    );
    let snaps = Agent::files(&a1.snapshot_dir, "snap");
    assert!(
        !snaps.is_empty() && snaps.len() <= 3,
        "the newest 3 snapshots are kept: {snaps:?}"
    );
    assert!(
        Agent::files(&a1.snapshot_dir, "json").len() > snaps.len(),
        "metadata beside each"
    );
    // The snapshot metrics count what happened.
    let text = a1.agent.metrics().await;
    let metric = |series: &str| vault_dr_tests::agents::metric(&text, series);
    assert!(metric("vault_dr_agent_snapshot_pulls_total{result=\"ok\"}") >= 2.0);
    assert!(metric("vault_dr_agent_snapshot_restores_total{result=\"ok\"}") >= 2.0);
    assert!(metric("vault_dr_agent_snapshot_restore_duration_seconds_count") >= 2.0);
    assert!(metric("vault_dr_agent_snapshot_restore_duration_seconds_sum") >= 2.0 * 4.0);
    assert_eq!(
        metric("vault_dr_agent_snapshot_quarantines_total"),
        1.0,
        "the fresh node's own data, once"
    );
    assert!(metric("vault_dr_agent_snapshot_index") > 0.0);
    watcher.abort();
    drop((ap, a1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_promotion_mode_holds_snapshots_until_promoted_then_restores_and_canaries() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, token_file) = group(&["p", "s1"], dir.path()).await;
    let (p, s1) = (&clusters[0], &clusters[1]);
    let (fake, coord, _stop) = Fake::start().await;
    fake.set(desired(1, p, p, false));
    fake.set(desired(1, s1, p, false));
    let root = p.root_token().clone();
    put(p.api_addr(), &root, "onpromo/x", json!({"v": "x"})).await;

    let a1 = Agent::start(
        s1,
        &coord,
        &token_file,
        dir.path(),
        RestoreMode::OnPromotion,
    )
    .await;
    a1.wait_for("term 1 applied (pulling)", Duration::from_secs(60), |r| {
        r.applied_term == 1 && r.replication.replicated_index.is_some()
    })
    .await;
    // An idle primary: nothing new, no further pull. (A sleep on purpose: it proves that
    // nothing happens.)
    tokio::time::sleep(PULL * 3).await;
    assert_eq!(
        Agent::files(&a1.snapshot_dir, "snap").len(),
        1,
        "no pull while the primary applied nothing new"
    );
    // Writes on p: snapshots accumulate…
    // One write per poll, until three snapshots are there.
    let mut n = 0;
    wait_for_every(
        Duration::from_millis(300),
        "snapshots to accumulate",
        Duration::from_secs(30),
        || {
            n += 1;
            let n = n - 1;
            let (addr, root, dir) = (p.api_addr(), &root, &a1.snapshot_dir);
            async move {
                if Agent::files(dir, "snap").len() >= 3 {
                    return true;
                }
                put(addr, root, &format!("onpromo/more/{n}"), json!({"n": n})).await;
                false
            }
        },
    )
    .await;
    // …but s1's data is its own: p's token is unknown there, s1's root still works.
    assert_eq!(get(s1.api_addr(), &root, "onpromo/x").await, None);
    assert_eq!(get(s1.api_addr(), s1.root_token(), "onpromo/x").await, None);
    let r = a1.report().await.unwrap();
    assert_eq!(r.replication.restored_index, None);
    assert!(r.replication.seeded, "held snapshots make it a candidate");

    // Promotion: s1 primary in term 2 (complete); p is the old primary, a failover runs.
    fake.set(desired(2, p, s1, true));
    fake.set(desired(2, s1, s1, true));
    let promoted = Instant::now();
    let r = a1
        .wait_for("term 2 applied as primary", Duration::from_secs(90), |r| {
            r.applied_term == 2
                && r.vault.state == NodeState::Active
                && r.replication.restored_index.is_some()
        })
        .await;
    println!(
        "replication_agent: on-promotion restore + canary took {:.2} s",
        promoted.elapsed().as_secs_f64()
    );
    assert_eq!(r.vault.state, NodeState::Active);
    assert!(r.replication.restored_index.is_some());
    assert_eq!(
        get(s1.api_addr(), &root, "onpromo/x").await,
        Some(json!({"v": "x"}))
    );
    // The canary sits in the DR token's cubbyhole.
    let dr = Secret::new(std::fs::read_to_string(&token_file).unwrap());
    let v: Value = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(s1.api_addr().join("v1/cubbyhole/vault-dr-canary").unwrap())
        .header("X-Vault-Token", dr.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.pointer("/data/term"), Some(&json!(2)), "{v}");
    // The same desired state again does nothing more. (A sleep on purpose: it proves that
    // nothing happens.)
    let restores = a1.report().await.unwrap().replication.restored_index;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a1.report().await.unwrap().replication.restored_index,
        restores
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_ex_primary_quarantines_its_diverged_data_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, token_file) = group(&["p", "s1", "q"], dir.path()).await;
    let (p, s1, q) = (&clusters[0], &clusters[1], &clusters[2]);
    let (fake, coord, _stop) = Fake::start().await;
    fake.set(desired(1, p, p, false));
    fake.set(desired(1, s1, p, false));
    let root = p.root_token().clone();
    put(p.api_addr(), &root, "ex/shared", json!({"v": "both"})).await;

    let ap = Agent::start(p, &coord, &token_file, dir.path(), RestoreMode::Continuous).await;
    let a1 = Agent::start(s1, &coord, &token_file, dir.path(), RestoreMode::Continuous).await;
    ap.wait_for("p applied term 1", Duration::from_secs(60), |r| {
        r.applied_term == 1
    })
    .await;
    a1.wait_for("s1 follows p", Duration::from_secs(90), |r| {
        r.applied_term == 1 && r.replication.restored_index.is_some()
    })
    .await;
    wait_secret(
        s1.api_addr(),
        &root,
        "ex/shared",
        &json!({"v": "both"}),
        Duration::from_secs(30),
    )
    .await;

    // Failover to s1 (term 2) while p is cut off; p keeps a write nobody else has.
    fake.set(desired(2, p, s1, true));
    fake.set(desired(2, s1, s1, true));
    put(p.api_addr(), &root, "ex/only-p", json!({"v": "diverged"})).await;
    a1.wait_for("s1 promoted in term 2", Duration::from_secs(90), |r| {
        r.applied_term == 2
    })
    .await;
    put(
        s1.api_addr(),
        &root,
        "ex/after",
        json!({"v": "new primary"}),
    )
    .await;
    // p's agent does nothing while the failover is in progress. (A sleep on purpose: it
    // proves that nothing happens.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = ap.report().await.unwrap();
    assert_eq!(r.applied_term, 1);
    assert_eq!(r.replication.quarantined, None);
    assert_eq!(
        get(p.api_addr(), &root, "ex/only-p").await,
        Some(json!({"v": "diverged"}))
    );

    // The failover is done: p's agent quarantines, restores s1's data and follows it.
    fake.set(desired(2, p, s1, false));
    fake.set(desired(2, s1, s1, false));
    let r = ap
        .wait_for(
            "p quarantined and follows s1",
            Duration::from_secs(90),
            |r| r.applied_term == 2 && r.replication.quarantined.is_some(),
        )
        .await;
    wait_secret(
        p.api_addr(),
        &root,
        "ex/after",
        &json!({"v": "new primary"}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        get(p.api_addr(), &root, "ex/only-p").await,
        None,
        "p now holds s1's data"
    );
    let file = PathBuf::from(r.replication.quarantined.unwrap());
    assert!(file.starts_with(&ap.quarantine_dir), "{file:?}");
    assert!(file.is_file());
    let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        file_name.starts_with("primary-term-1-"),
        "the name says whose data it is: {file_name}"
    );
    let meta = file.with_extension("json");
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        meta["term"],
        json!(1),
        "quarantine of the data of term 1: {meta}"
    );

    // The quarantined file holds the diverged write: restore it into q and read it there.
    let body = std::fs::read(&file).unwrap();
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let resp = http
        .post(q.api_addr().join("v1/sys/storage/raft/snapshot").unwrap())
        .header("X-Vault-Token", q.root_token().expose())
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "restore into q: {}",
        resp.status()
    );
    wait_secret(
        q.api_addr(),
        &root,
        "ex/only-p",
        &json!({"v": "diverged"}),
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_pulls_a_final_snapshot_and_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, token_file) = group(&["p", "s1"], dir.path()).await;
    let (p, s1) = (&clusters[0], &clusters[1]);
    let (fake, coord, _stop) = Fake::start().await;
    fake.set(desired(1, p, p, false));
    fake.set(desired(1, s1, p, false));
    let root = p.root_token().clone();
    let a1 = Agent::start(
        s1,
        &coord,
        &token_file,
        dir.path(),
        RestoreMode::OnPromotion,
    )
    .await;
    a1.wait_for("s1 follows p", Duration::from_secs(60), |r| {
        r.applied_term == 1 && r.replication.replicated_index.is_some()
    })
    .await;

    // Clients write to p until the traffic is cut; every acknowledged write must survive.
    let mut acknowledged = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        put(
            p.api_addr(),
            &root,
            &format!("sw/{acknowledged}"),
            json!({"i": acknowledged}),
        )
        .await;
        acknowledged += 1;
    }
    // Traffic cut (Fenced); s1 becomes primary with a final snapshot from p.
    let mut to_s1 = desired(2, s1, s1, true);
    to_s1.final_snapshot_from = Some(p.api_addr().clone());
    fake.set(desired(2, p, s1, true));
    fake.set(to_s1);
    let started = Instant::now();
    a1.wait_for(
        "s1 promoted with the final snapshot",
        Duration::from_secs(90),
        |r| r.applied_term == 2 && r.vault.state == NodeState::Active,
    )
    .await;
    println!(
        "replication_agent: planned switchover (final pull + restore + canary) took {:.2} s for {acknowledged} writes",
        started.elapsed().as_secs_f64()
    );
    for i in 0..acknowledged {
        assert_eq!(
            get(s1.api_addr(), &root, &format!("sw/{i}")).await,
            Some(json!({"i": i})),
            "acknowledged write sw/{i} of {acknowledged} is on the new primary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_promotion_of_a_standby_that_never_restored_restores_the_newest_snapshot_first() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, token_file) = group(&["p", "s1"], dir.path()).await;
    let (p, s1) = (&clusters[0], &clusters[1]);
    let (fake, coord, _stop) = Fake::start().await;
    fake.set(desired(1, p, p, false));
    fake.set(desired(1, s1, p, false));
    put(p.api_addr(), p.root_token(), "fast/x", json!({"v": "x"})).await;
    let a1 = Agent::start(
        s1,
        &coord,
        &token_file,
        dir.path(),
        RestoreMode::OnPromotion,
    )
    .await;
    a1.wait_for("s1 holds a snapshot", Duration::from_secs(60), |r| {
        r.applied_term == 1 && r.replication.replicated_index.is_some()
    })
    .await;
    assert_eq!(
        a1.report().await.unwrap().replication.restored_index,
        None,
        "an on-promotion standby restores nothing before it is promoted"
    );
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    // The agent renewed its periodic DR token (the policy allows renew-self).
    let dr = Secret::new(std::fs::read_to_string(&token_file).unwrap());
    let me: Value = http
        .get(s1.api_addr().join("v1/auth/token/lookup-self").unwrap())
        .header("X-Vault-Token", dr.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        me.pointer("/data/last_renewal_time")
            .and_then(Value::as_i64)
            .is_some_and(|t| t > 0),
        "the DR token was renewed: {}",
        me["data"]["last_renewal_time"]
    );
    let mut fast = desired(2, s1, s1, true);
    fast.promotion = PromotionMode::Fast;
    fake.set(desired(2, p, s1, true));
    fake.set(fast);
    let started = Instant::now();
    let r = a1
        .wait_for(
            "s1 promoted, the newest held snapshot restored first",
            Duration::from_secs(90),
            // The report's replication part is refreshed by the probe loop: wait for both.
            |r| r.applied_term == 2 && r.replication.restored_index.is_some(),
        )
        .await;
    println!(
        "replication_agent: fast promotion of a never-restored standby (restore + canary) took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // `fast` would have kept s1's own, empty data: it restored the newest snapshot instead.
    assert_eq!(r.vault.state, NodeState::Active);
    assert_eq!(
        get(s1.api_addr(), p.root_token(), "fast/x").await,
        Some(json!({"v": "x"})),
        "the primary's secret is on the promoted node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_standby_keeps_pulling_while_it_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, token_file) = group(&["p", "s1"], dir.path()).await;
    let (p, s1) = (&clusters[0], &clusters[1]);
    let (fake, coord, _stop) = Fake::start().await;
    fake.set(desired(1, p, p, false));
    fake.set(desired(1, s1, p, false));
    let root = p.root_token().clone();
    let _ap = Agent::start(p, &coord, &token_file, dir.path(), RestoreMode::Continuous).await;
    let a1 = Agent::start(s1, &coord, &token_file, dir.path(), RestoreMode::Continuous).await;
    a1.wait_for("a first restore", Duration::from_secs(90), |r| {
        r.applied_term == 1 && r.replication.restored_index.is_some()
    })
    .await;

    // A client writes on p every 100 ms; s1's reports are sampled every 100 ms for 20 s. A
    // restore takes about 5.5 s and the pull interval is 1 s, so pulls must land while one runs.
    let writer = {
        let (addr, root) = (p.api_addr().clone(), root.clone());
        tokio::spawn(async move {
            for i in 0u32.. {
                put(&addr, &root, "repl/ticker", json!({ "i": i })).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // (restoring, newest held index, restored index) per sample.
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Some(r) = a1.report().await {
            samples.push((
                r.vault.state == NodeState::Restoring,
                r.replication.replicated_index,
                r.replication.restored_index,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.abort();
    // Within one unbroken run of `restoring` samples, the newest snapshot held moved on.
    let mut pulled_during_restore = 0;
    for run in samples.split(|s| !s.0) {
        let held: std::collections::BTreeSet<_> = run.iter().filter_map(|s| s.1).collect();
        if held.len() >= 2 {
            pulled_during_restore += 1;
        }
    }
    let restored: std::collections::BTreeSet<_> = samples.iter().filter_map(|s| s.2).collect();
    let restoring = samples.iter().filter(|s| s.0).count();
    println!(
        "replication_agent: {} samples, {restoring} restoring; {pulled_during_restore} restores saw a newer snapshot pulled; {} snapshots restored",
        samples.len(),
        restored.len()
    );
    assert!(
        pulled_during_restore >= 1,
        "no pull finished while a restore ran: {samples:?}"
    );
    assert!(restored.len() >= 2, "restores went on: {samples:?}");
    let text = a1.agent.metrics().await;
    let restoring_s =
        vault_dr_tests::agents::metric(&text, "vault_dr_agent_snapshot_restoring_seconds_total");
    assert!(
        restoring_s >= 5.0,
        "time spent restoring is counted: {restoring_s}"
    );
}
