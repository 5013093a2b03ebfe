//! The lab against real OpenBao 2.7 (`bao` from `scripts/setup.sh`): parallel start of
//! independent clusters with a shared static seal, snapshot restore between them without force
//! or unseal, kill and restart of a node, a 3-node HA cluster, Prometheus scraping a node, and
//! no `bao` process left behind after drop.
//!
//! The tests of this file run one at a time (a shared lock) so that the timing of the parallel
//! start is not disturbed by another test of the same binary.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vault_dr_tests::lab::process::pid_alive;
use vault_dr_tests::lab::wait::try_wait_for;
use vault_dr_tests::lab::{LabCluster, LabError};
use vault_dr_tests::prometheus::PrometheusServer;

/// The two tests that compare start times take turns, so that one does not load the other's
/// measurement.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every `bao` pid of `clusters`.
fn pids(clusters: &[&LabCluster]) -> Vec<u32> {
    clusters
        .iter()
        .flat_map(|c| c.nodes().iter().filter_map(|n| n.pid()))
        .collect()
}

fn assert_all_gone(pids: &[u32]) {
    let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(
        alive.is_empty(),
        "bao processes left behind after drop: {alive:?}"
    );
}

/// `sys/health` body of a node, asserting it is active (200).
async fn health_body(c: &LabCluster, node: usize) -> Value {
    let (status, body) = match c.nodes()[node].health().await {
        Ok(answer) => answer,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status, 200, "{}: {body}", c.nodes()[node].name());
    body
}

fn start_hint(e: LabError) -> String {
    format!("{e}\n(hint: run `bash scripts/setup.sh` if a tool is missing)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clusters_start_in_about_the_time_of_one() {
    let _serial = SERIAL.lock().await;

    let t = Instant::now();
    let single = LabCluster::start_group(&["solo"], None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    let single_time = t.elapsed();
    let single_pids = pids(&single.iter().collect::<Vec<_>>());
    assert_eq!(single_pids.len(), 1);
    drop(single);
    assert_all_gone(&single_pids);

    let t = Instant::now();
    let group = LabCluster::start_group(&["dc1", "dc2", "dc3", "dc4"], None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    let group_time = t.elapsed();
    println!(
        "lab start: 1 cluster {:.2} s, 4 clusters in parallel {:.2} s (ratio {:.2})",
        single_time.as_secs_f64(),
        group_time.as_secs_f64(),
        group_time.as_secs_f64() / single_time.as_secs_f64()
    );
    assert!(
        group_time.as_secs_f64() < 2.5 * single_time.as_secs_f64(),
        "4 clusters took {group_time:?}, one took {single_time:?}: not started in parallel"
    );

    // All active, distinct clusters, sharing one seal key file.
    let mut ids = Vec::new();
    for c in &group {
        let body = health_body(c, 0).await;
        assert_eq!(body["cluster_name"], c.name());
        assert_eq!(body["sealed"], false);
        ids.push(body["cluster_id"].as_str().unwrap_or_default().to_owned());
        assert_eq!(c.seal_key_path(), group[0].seal_key_path());
        assert_eq!(std::fs::read(c.seal_key_path()).unwrap().len(), 32);
        let pid_file = std::fs::read_to_string(c.nodes()[0].pid_file()).unwrap();
        assert_eq!(pid_file.trim().parse::<u32>().ok(), c.nodes()[0].pid());
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "cluster ids not distinct: {ids:?}");
    assert!(ids.iter().all(|i| !i.is_empty()), "{ids:?}");

    // KV v2 write and read on each, with its own root token.
    for c in &group {
        c.kv_put("lab/hello", &json!({ "from": c.name() }))
            .await
            .unwrap();
        let got = c.kv_get("lab/hello").await.unwrap();
        assert_eq!(got, Some(json!({ "from": c.name() })));
        assert_eq!(c.kv_get("lab/absent").await.unwrap(), None);
    }
    // The root tokens are distinct clusters' tokens: dc1's token is unknown to dc2.
    let resp = group[1]
        .client()
        .get(
            group[1]
                .api_addr()
                .join("v1/secret/data/lab/hello")
                .unwrap(),
        )
        .header("X-Vault-Token", group[0].root_token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    let all = pids(&group.iter().collect::<Vec<_>>());
    assert_eq!(all.len(), 4);
    let base = group[0].base_dir().to_path_buf();
    drop(group);
    assert_all_gone(&all);
    assert!(
        !base.exists(),
        "the lab's temp dir {} was not removed",
        base.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_into_another_cluster_and_a_node_restarts_without_unseal() {
    let mut group = LabCluster::start_group_with(&["src", "dst"], true, None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    let (src, dst) = (&group[0], &group[1]);
    src.kv_put("app/db", &json!({ "password": "from-src" }))
        .await
        .unwrap();
    dst.kv_put("app/local", &json!({ "v": "dst-only" }))
        .await
        .unwrap();

    // GET the snapshot from src.
    let snap = src
        .client()
        .get(src.api_addr().join("v1/sys/storage/raft/snapshot").unwrap())
        .header("X-Vault-Token", src.root_token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(snap.status().as_u16(), 200);
    let bytes = snap.bytes().await.unwrap();
    assert!(bytes.len() > 1000, "snapshot of {} bytes", bytes.len());

    // POST it into dst (non-force: the shared static seal makes the hash check pass).
    let t = Instant::now();
    let resp = dst
        .client()
        .post(dst.api_addr().join("v1/sys/storage/raft/snapshot").unwrap())
        .header("X-Vault-Token", dst.root_token().expose())
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert!(
        matches!(status, 200 | 204),
        "restore answered {status}: {body}"
    );

    // dst serves src's secret to src's root token.
    let url = dst.api_addr().join("v1/secret/data/app/db").unwrap();
    let served = try_wait_for(
        "dst to serve src's secret",
        Duration::from_secs(25).saturating_sub(t.elapsed()),
        || async {
            let r = dst
                .client()
                .get(url.clone())
                .header("X-Vault-Token", src.root_token().expose())
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    Some(v["data"]["data"].clone())
                }
                _ => None,
            }
        },
    )
    .await
    .ok();
    let restore_time = t.elapsed();
    println!(
        "snapshot restore src -> dst serving after {:.2} s",
        restore_time.as_secs_f64()
    );
    assert_eq!(
        served,
        Some(json!({ "password": "from-src" })),
        "dst did not serve src's secret within 25 s"
    );
    let (_, h) = dst.nodes()[0].health().await.unwrap();
    assert_eq!(h["sealed"], false, "restore must not need an unseal");

    // Kill dst's node: unreachable; restart: active again with no unseal, data kept.
    let node = &mut group[1].nodes_mut()[0];
    let old_pid = node.pid().unwrap();
    node.kill();
    assert!(!pid_alive(old_pid));
    assert_eq!(node.pid(), None);
    assert!(
        node.health().await.is_err(),
        "a killed node must not answer"
    );
    let t = Instant::now();
    node.restart().await.unwrap();
    node.wait_health(200, Duration::from_secs(30))
        .await
        .unwrap();
    println!(
        "restart -> active (static seal auto-unseal) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_ne!(node.pid(), Some(old_pid));
    let resp = group[1]
        .client()
        .get(url)
        .header("X-Vault-Token", group[0].root_token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // SIGSTOP: the listener accepts but nothing answers; SIGCONT: it answers again.
    let node = &mut group[1].nodes_mut()[0];
    node.stop();
    assert!(
        node.health().await.is_err(),
        "a stopped node must not answer"
    );
    node.cont();
    node.wait_health(200, Duration::from_secs(10))
        .await
        .unwrap();

    let all = pids(&group.iter().collect::<Vec<_>>());
    drop(group);
    assert_all_gone(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_cluster_has_one_active_and_two_standbys_and_fails_over() {
    let t = Instant::now();
    let mut ha = LabCluster::start_ha("ha", 3, true, None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    println!(
        "HA start (3 nodes, all voters) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let mut statuses = Vec::new();
    for n in ha.nodes() {
        statuses.push(n.health().await.unwrap().0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 429, 429]);
    ha.kv_put("ha/x", &json!({ "v": 1 })).await.unwrap();

    // Kill the active node; a standby takes over (fast election).
    let active = ha.active_node().await.unwrap();
    let killed_pid = ha.nodes()[active].pid().unwrap();
    let t = Instant::now();
    ha.nodes_mut()[active].kill();
    let new_active = try_wait_for("a new active node", Duration::from_secs(30), || {
        ha.active_node()
    })
    .await
    .ok();
    println!(
        "HA failover after SIGKILL of the active node: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let new_active = new_active.expect("no new active node within 30 s");
    assert_ne!(new_active, active);
    assert!(!pid_alive(killed_pid));
    assert_eq!(ha.kv_get("ha/x").await.unwrap(), Some(json!({ "v": 1 })));

    let all = pids(&[&ha]);
    assert_eq!(all.len(), 2);
    drop(ha);
    assert_all_gone(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_lab_node() {
    let group = LabCluster::start_group_with(&["metrics"], true, None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    let addr = group[0].api_addr();
    let target = format!(
        "127.0.0.1:{}/v1/sys/metrics?format=prometheus",
        addr.port().unwrap_or_default()
    );
    let prom = PrometheusServer::start(&[("openbao", &target)], Duration::from_millis(500))
        .await
        .unwrap_or_else(|e| panic!("{e}\n(hint: run `bash scripts/setup.sh`)"));
    let up = prom
        .wait_for("up{job=\"openbao\"} == 1", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(up.len(), 1);
    let unsealed = prom
        .wait_for("vault_core_unsealed", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(unsealed[0]["value"][1], "1", "{unsealed:?}");
    let prom_pid = prom.pid();
    drop(prom);
    assert!(!pid_alive(prom_pid), "prometheus left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_election_groups_start_quickly_and_serve() {
    let _serial = SERIAL.lock().await;
    let t = Instant::now();
    let single = LabCluster::start_group_with(&["fast-solo"], true, None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    let single_time = t.elapsed();
    drop(single);
    let t = Instant::now();
    let group = LabCluster::start_group_with(&["f1", "f2", "f3", "f4"], true, None)
        .await
        .unwrap_or_else(|e| panic!("{}", start_hint(e)));
    let group_time = t.elapsed();
    println!(
        "lab start, fast election: 1 cluster {:.2} s, 4 clusters in parallel {:.2} s",
        single_time.as_secs_f64(),
        group_time.as_secs_f64()
    );
    for c in &group {
        assert_eq!(c.nodes()[0].health().await.unwrap().0, 200);
        c.kv_put("k", &json!({ "v": c.name() })).await.unwrap();
        assert_eq!(c.kv_get("k").await.unwrap(), Some(json!({ "v": c.name() })));
    }
    let all = pids(&group.iter().collect::<Vec<_>>());
    drop(group);
    assert_all_gone(&all);
}
