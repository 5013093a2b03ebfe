//! The agent's write gate on real OpenBao: no client write is taken by a node whose data will be
//! replaced. A client tries a KV write every 100 ms, with a token the node knows, on the node's
//! client address (its agent's `--gate-listen`):
//!
//! - on every secondary while snapshots are pulled and restored, in both restore modes (a
//!   restore replaces everything in storage, so only the listener layout survives it);
//! - on the old primary after a failover, restarted with its own (diverged) data: after a
//!   SIGKILL with every coordinator down at the moment it returns, and with its agent
//!   restarted too (fail closed: a new agent process knows no role); and after a SIGSTOP past
//!   the failover, then SIGCONT.
//!
//! Each must take 0 writes; every refusal is a `503` with `x-vault-dr-gate: closed` and a
//! reason, counted by the agent's `vault_dr_agent_gate_refused_total`. The same writes on the
//! primary are taken, so the gate is not simply shut. Needs `.tools/bin/bao` (run
//! `scripts/setup.sh`) and the built binaries (`cargo build --workspace`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use url::Url;
use vault_dr_common::Secret;
use vault_dr_lab::group::RestoreMode;
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::wait_for;

/// What the client got from one address.
#[derive(Debug, Default)]
struct Tally {
    tried: u32,
    /// 2xx: the node took the write.
    accepted: u32,
    /// 503 from the gate, with a reason.
    refused: u32,
    /// Anything else (connection refused while the gate's agent restarts, ...).
    other: Vec<String>,
    reason: Option<String>,
}

/// Tries a KV write on `addr` every 100 ms for `for_`.
async fn try_writes(http: &reqwest::Client, addr: &Url, token: &Secret, for_: Duration) -> Tally {
    let url = addr.join("v1/secret/data/gate-probe").unwrap();
    let mut t = Tally::default();
    let end = Instant::now() + for_;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < end {
        ticker.tick().await;
        t.tried += 1;
        let sent = http
            .put(url.clone())
            .header("X-Vault-Token", token.expose())
            .json(&json!({ "data": { "n": t.tried } }))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => t.accepted += 1,
            Ok(r)
                if r.status().as_u16() == 503
                    && r.headers()
                        .get("x-vault-dr-gate")
                        .is_some_and(|v| v == "closed") =>
            {
                t.refused += 1;
                if t.reason.is_none() {
                    t.reason = r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v.pointer("/errors/0")?.as_str().map(str::to_owned));
                }
            }
            Ok(r) => t.other.push(format!("status {}", r.status().as_u16())),
            Err(e) => t.other.push(format!("{e}")),
        }
    }
    t
}

/// Clusters p, s1, s2, one coordinator, no stable address, snapshot replication as given,
/// `more` for the rest; every agent runs the write gate.
async fn gated_group(
    restore: RestoreMode,
    interval: Duration,
    more: impl FnOnce(vault_dr_lab::harness::GroupBuilder) -> vault_dr_lab::harness::GroupBuilder,
) -> Group {
    let builder = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(1)
        .traffic(false)
        .replication(restore, interval);
    let g = more(builder).start().await.unwrap();
    assert!(g.gated(), "this agent build has no write gate");
    g
}

/// How often the agents of `cluster` logged their gate closing (once per change).
fn closings_logged(g: &Group, cluster: &str) -> usize {
    g.agent_log(cluster)
        .unwrap()
        .matches("write gate closed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondaries_and_a_returning_old_primary_take_no_client_write_even_with_every_coordinator_down()
 {
    let mut g = gated_group(RestoreMode::Continuous, Duration::from_secs(2), |b| b).await;
    let http = g.http().clone();
    let p = g.cluster("p").unwrap();
    // p's root token: every secondary holds p's token store after its first restore, and the
    // old primary keeps its own; the gate, not a policy, must refuse it.
    let token = p.root_token().clone();
    let p_client = g.client_addr(p);
    let s_client: Vec<(String, Url)> = ["s1", "s2"]
        .iter()
        .map(|n| (n.to_string(), g.client_addr(g.cluster(n).unwrap())))
        .collect();

    // Secondaries while they pull and restore (continuous: a restore every cycle), and the
    // primary beside them.
    let restored_before = restored_index(&g, "s1").await;
    let (on_p, on_s1, on_s2) = tokio::join!(
        try_writes(&http, &p_client, &token, Duration::from_secs(12)),
        try_writes(&http, &s_client[0].1, &token, Duration::from_secs(12)),
        try_writes(&http, &s_client[1].1, &token, Duration::from_secs(12)),
    );
    let restored_after = restored_index(&g, "s1").await;
    eprintln!("primary: {on_p:?}\ns1: {on_s1:?}\ns2: {on_s2:?}");
    assert_eq!(
        on_p.accepted, on_p.tried,
        "the primary's gate is open: {on_p:?}"
    );
    for (name, t) in [("s1", &on_s1), ("s2", &on_s2)] {
        assert_eq!(t.accepted, 0, "{name} took client writes: {t:?}");
        assert_eq!(
            t.refused, t.tried,
            "{name}: every write refused by the gate: {t:?}"
        );
        let why = t.reason.as_deref().unwrap();
        assert!(
            why.contains(&format!(
                "cluster {name} is a secondary in term 1; the primary is p"
            )),
            "{why}"
        );
    }
    assert!(
        restored_after > restored_before,
        "s1 restored no newer snapshot while the client tried ({restored_before} -> {restored_after}): \
         the refusal must hold across restores"
    );

    // Kill p; the group fails over; then every coordinator goes, and p comes back with its
    // own data while no coordinator can tell its agent anything new.
    g.cluster_mut("p").unwrap().nodes_mut()[0].kill();
    let new_primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(new_primary, "p");
    for c in g.coordinators_mut() {
        c.kill();
    }
    let p_node = &mut g.cluster_mut("p").unwrap().nodes_mut()[0];
    p_node.restart().await.unwrap();
    p_node
        .wait_health(200, Duration::from_secs(30))
        .await
        .unwrap();
    let other = s_client.iter().find(|(n, _)| *n != new_primary).unwrap();
    let (on_old, on_other) = tokio::join!(
        try_writes(&http, &p_client, &token, Duration::from_secs(30)),
        try_writes(&http, &other.1, &token, Duration::from_secs(30)),
    );
    eprintln!(
        "old primary p (coordinators down): {on_old:?}\n{}: {on_other:?}",
        other.0
    );
    assert_eq!(
        on_old.accepted, 0,
        "the returning old primary took writes: {on_old:?}"
    );
    assert_eq!(on_old.refused, on_old.tried, "{on_old:?}");
    assert!(
        on_old.reason.as_deref().unwrap().contains(&format!(
            "cluster p is a secondary in term 2; the primary is {new_primary}"
        )),
        "{on_old:?}"
    );
    assert_eq!(on_other.accepted, 0, "{}: {on_other:?}", other.0);
    // The node itself serves on its own listener: it is the gate that refuses.
    let (status, _) = g.cluster("p").unwrap().nodes()[0].health().await.unwrap();
    assert_eq!(
        status, 200,
        "the old primary is up and active behind its gate"
    );

    // Its agent restarts too, with every coordinator still down: a new agent process knows no
    // role, so its gate stays closed (fail closed).
    let agent = g
        .agents_mut()
        .iter_mut()
        .find(|a| a.cluster == "p")
        .unwrap();
    agent.restart().unwrap();
    let on_old = try_writes(&http, &p_client, &token, Duration::from_secs(5)).await;
    eprintln!("old primary p, agent restarted, coordinators down: {on_old:?}");
    assert_eq!(on_old.accepted, 0, "{on_old:?}");
    assert!(
        on_old.refused > 0,
        "the restarted agent's gate answered: {on_old:?}"
    );
    assert!(
        on_old
            .reason
            .as_deref()
            .unwrap()
            .contains("no coordinator has told this agent its cluster's role yet (fail closed)"),
        "{on_old:?}"
    );
    assert!(
        closings_logged(&g, "p") >= 1,
        "p's agent logged its closed gate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_promotion_secondaries_and_an_old_primary_stopped_past_the_failover_take_no_client_write()
 {
    let mut g = gated_group(RestoreMode::OnPromotion, Duration::from_secs(1), |b| {
        b.exclude("s1")
    })
    .await;
    let http = g.http().clone();
    let p = g.cluster("p").unwrap();
    let token = p.root_token().clone();
    let p_client = g.client_addr(p);
    // An on-promotion secondary holds only its own data, which knows its own root token, not
    // p's: use each one's own, the most a client could have.
    let s1 = g.cluster("s1").unwrap();
    let (s1_client, s1_token) = (g.client_addr(s1), s1.root_token().clone());

    // SIGSTOP p past the failover (to s2: s1 is excluded, so it stays a secondary) while a
    // client tries s1 for 30 s.
    let writes = {
        let (http, addr, token) = (http.clone(), s1_client.clone(), s1_token.clone());
        tokio::spawn(async move { try_writes(&http, &addr, &token, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    g.cluster_mut("p").unwrap().nodes_mut()[0].stop();
    let new_primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    g.cluster_mut("p").unwrap().nodes_mut()[0].cont();
    let on_old = try_writes(&http, &p_client, &token, Duration::from_secs(30)).await;
    let on_s1 = writes.await.unwrap();
    eprintln!("new primary {new_primary}\nold primary p after SIGCONT: {on_old:?}\ns1: {on_s1:?}");
    assert_eq!(
        on_old.accepted, 0,
        "the old primary took writes after SIGCONT: {on_old:?}"
    );
    assert_eq!(on_old.refused, on_old.tried, "{on_old:?}");
    assert_eq!(new_primary, "s2");
    assert_eq!(on_s1.accepted, 0, "s1 took client writes: {on_s1:?}");
    assert_eq!(on_s1.refused, on_s1.tried, "{on_s1:?}");
}

/// The index of the snapshot last restored by `cluster`'s agent, from the leader's view of its
/// reports (it moves at every restore of a newer snapshot).
async fn restored_index(g: &Group, cluster: &str) -> u64 {
    let leader = g.leader().await.unwrap();
    let v = g.get_json(&leader, "v1/clusters").await.unwrap();
    v.pointer(&format!(
        "/view/clusters/{cluster}/nodes/0/report/replication/restored_index"
    ))
    .and_then(Value::as_u64)
    .unwrap_or(0)
}

/// A gate in front of `cluster`'s node with `tls`, in-process, on a free port.
async fn tls_gate(
    cluster: &vault_dr_lab::LabCluster,
    tls: &vault_dr_tests::tls::TestCertificates,
    override_open: bool,
) -> (vault_dr_tests::agents::InProcessAgent, Url) {
    let port = vault_dr_lab::ports::reserve_loopback().unwrap();
    let mut config = vault_dr_agent::Config::minimal(
        cluster.name(),
        cluster.nodes()[0].name(),
        cluster.api_addr().clone(),
    );
    config.gate = Some(vault_dr_agent::gate::GateConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        override_open,
        tls: Some(vault_dr_agent::gate::GateTls {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }),
    });
    let agent = vault_dr_tests::agents::InProcessAgent::start(config)
        .await
        .unwrap();
    (
        agent,
        Url::parse(&format!("https://localhost:{port}/")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_serves_tls_with_the_nodes_certificate_and_fails_closed_without_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let tls = vault_dr_tests::tls::certificates(dir.path()).unwrap();
    let clusters = vault_dr_lab::LabCluster::start_group_with(&["t"], true, None)
        .await
        .unwrap();
    let t = &clusters[0];
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca).unwrap()).unwrap();
    let https = vault_dr_common::http::client_builder()
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let write = |addr: &Url, n: u32| {
        https
            .put(addr.join("v1/secret/data/tls-gate").unwrap())
            .header("X-Vault-Token", t.root_token().expose())
            .json(&json!({ "data": { "n": n } }))
            .send()
    };

    // No coordinator: closed, but the status a load balancer asks for is the node's own.
    let (_closed, addr) = tls_gate(t, &tls, false).await;
    let health = wait_for(
        "the TLS gate to answer",
        Duration::from_secs(10),
        || async {
            https
                .get(addr.join("v1/sys/health").unwrap())
                .send()
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(
        health.status(),
        200,
        "the active node's health, through the gate"
    );
    let refused = write(&addr, 1).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["x-vault-dr-gate"], "closed");
    // Closed after the refusal: a keep-alive client reconnects, to wherever traffic points now.
    assert_eq!(refused.headers()["connection"], "close");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("no coordinator has told this agent its cluster's role yet (fail closed)"),
        "{body}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = Url::parse(&format!(
        "http://127.0.0.1:{}/v1/sys/health",
        addr.port().unwrap()
    ));
    let plain = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(plain.unwrap())
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was answered: {plain:?}"
    );

    // The operator's override forwards writes, over TLS, to the node.
    let (_open, addr) = tls_gate(t, &tls, true).await;
    let taken = wait_for(
        "the overridden gate to take a write",
        Duration::from_secs(10),
        || async {
            write(&addr, 2)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        },
    )
    .await;
    assert_eq!(taken.status(), 200);
    let stored = t.kv_get("tls-gate").await.unwrap().unwrap();
    assert_eq!(stored["n"], 2, "{stored}");
}
