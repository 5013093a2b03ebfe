//! The bounded fence on real OpenBao: no seal can be carried out long after it was sent, and
//! a frozen old primary adds at most the bound to the failover.
//!
//! - A seal sent to a frozen node (SIGSTOP: the port accepts, nothing answers) waits in its
//!   socket. Sent with the DR token it seals the node when it wakes, however late (the control
//!   half of the first test shows that this is real); sent with the fence token
//!   (`VaultClient::fence`) it is refused once the token expired, 2 s after it was made.
//! - A primary frozen together with its agent (a stalled VM or pod) is failed over with a
//!   Fenced step that ends within the bound plus the traffic cut, says it did not seal and why,
//!   and leaves the old primary pending; when the old primary wakes, the leader finishes its
//!   fence (sealed, or found behind its closed write gate) and journals that under the step.
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use url::Url;
use vault_dr_common::Secret;
use vault_dr_coordinator::config::ClusterConfig;
use vault_dr_coordinator::model::{FailoverStatus, Step, Topology};
use vault_dr_coordinator::vault::{FENCE_BOUND, FENCE_TOKEN_TTL, NodeFence, VaultClient};
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::wait_for;
use vault_dr_tests::lab::LabCluster;

fn cluster_config(name: &str, addr: &Url) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        api_addrs: vec![addr.clone()],
        nodes: Vec::new(),
        priority: 0,
        excluded: false,
        selector: Default::default(),
    }
}

/// Whether the node at `addr` says it is sealed (asked again while it answers something else,
/// as it does in the middle of sealing).
/// A node just woken from SIGSTOP first works through what queued in its sockets (the seal
/// with an expired token, whose lookup also revokes it): in one CI run under load its first
/// seal-status answer took more than 10 s. So each request gets 2 s and is sent again, for up
/// to 30 s; the assertion is about the state, not the time.
async fn sealed(http: &reqwest::Client, addr: &Url) -> bool {
    let url = addr.join("v1/sys/seal-status").unwrap();
    let asked = Instant::now();
    let sealed = wait_for("a seal status", Duration::from_secs(30), || async {
        let v: serde_json::Value = http
            .get(url.clone())
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["sealed"].as_bool()
    })
    .await;
    println!(
        "seal status {sealed} after {:.2} s",
        asked.elapsed().as_secs_f64()
    );
    sealed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_queued_in_a_frozen_node_is_refused_once_its_fence_token_expired() {
    let mut clusters = LabCluster::start_group_with(&["fence"], true, None)
        .await
        .unwrap_or_else(|e| panic!("lab start failed (run scripts/setup.sh?): {e}"));
    let mut lab = clusters.remove(0);
    let addr = lab.api_addr().clone();
    let http = lab.client().clone();
    // The least-privilege DR token of policies/vault-dr.hcl, never root.
    let dr = Secret::new(format!("vdr-fence-{}", std::process::id()));
    lab.create_dr_token(&dr).await.unwrap();
    let client = VaultClient::new(Duration::from_secs(5), Some(dr)).unwrap();
    let config = cluster_config("fence", &addr);

    // A fence token is made while the node runs; then the node freezes, and the seal carrying
    // it gets no answer within the bound.
    let deadline = Instant::now() + FENCE_BOUND;
    let (token, gated) = client.fence_token(&config, deadline, FENCE_BOUND).await;
    let token = token.unwrap();
    assert!(gated.is_empty());
    lab.nodes_mut()[0].stop();
    let started = Instant::now();
    let fence = client
        .seal_with(
            &config,
            &token,
            &[],
            Instant::now() + FENCE_BOUND,
            FENCE_BOUND,
        )
        .await;
    let took = started.elapsed();
    println!(
        "seal sent to the frozen node: {} ({took:?})",
        fence.sentence()
    );
    assert!(
        matches!(fence.nodes[0].1, NodeFence::NoAnswer(_)),
        "{fence:?}"
    );
    assert!(took < FENCE_BOUND + Duration::from_millis(300), "{took:?}");
    assert!(!fence.complete());
    assert!(
        fence.sentence().contains("is refused from"),
        "{}",
        fence.sentence()
    );

    // Woken after the token expired: the queued seal is read and refused.
    tokio::time::sleep(FENCE_TOKEN_TTL + Duration::from_secs(1)).await;
    lab.nodes_mut()[0].cont();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !sealed(&http, &addr).await,
        "a seal with an expired fence token was carried out"
    );

    // The control: the same queued seal carrying a token that does not expire (root) is
    // carried out when the node wakes. This is the hazard the fence token removes.
    lab.nodes_mut()[0].stop();
    let queued = http
        .put(addr.join("v1/sys/seal").unwrap())
        .header("X-Vault-Token", lab.root_token().expose())
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(queued.is_err(), "the frozen node answered: {queued:?}");
    tokio::time::sleep(FENCE_TOKEN_TTL + Duration::from_secs(1)).await;
    lab.nodes_mut()[0].cont();
    wait_for(
        "the queued root seal to be carried out on wake",
        Duration::from_secs(30),
        || async { sealed(&http, &addr).await.then_some(()) },
    )
    .await;

    // Restarted (the static seal unseals it): a fence of a live node seals it, and a second
    // one finds it sealed (a sealed node refuses the fence token with 503). An active raft
    // node takes 0.7-1.2 s to seal on this machine under load, which the 1 s bound does not
    // always cover (the leader then finds it sealed at its next attempt), so this part gives
    // the seal 5 s: it is about what the seal does, not how fast.
    lab.nodes_mut()[0].restart().await.unwrap();
    lab.nodes_mut()[0]
        .wait_health(200, Duration::from_secs(30))
        .await
        .unwrap();
    let fence = client.fence(&config, Duration::from_secs(5)).await;
    println!("fence of a live node: {}", fence.sentence());
    assert!(fence.complete(), "{fence:?}");
    assert_eq!(fence.nodes[0].1, NodeFence::Sealed);
    assert!(sealed(&http, &addr).await);
    let again = client.fence(&config, FENCE_BOUND).await;
    println!("fence of a sealed node: {}", again.sentence());
    assert_eq!(again.nodes[0].1, NodeFence::FoundSealed, "{again:?}");
    assert!(again.complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_frozen_with_its_agent_adds_at_most_the_bound_and_its_fence_is_finished_when_it_wakes()
 {
    let g = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(1)
        .start()
        .await
        .unwrap();
    assert!(g.gated(), "this agent build has no write gate");
    let p_addr = g.cluster("p").unwrap().api_addr().clone();
    let http = g.http().clone();

    // The whole of p freezes: its bao and its agent (the gate in front of it).
    let bao = g.cluster("p").unwrap().nodes()[0].pid().unwrap();
    let agent = g
        .agents()
        .iter()
        .find(|a| a.cluster == "p")
        .and_then(|a| a.pid())
        .unwrap();
    let signal = |sig: &str, pid: u32| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP", agent);
    signal("-STOP", bao);
    let new_primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    let leader = g.leader().await.unwrap();
    let records = g.get_json(&leader, "v1/failovers").await.unwrap();
    let record: vault_dr_coordinator::model::FailoverRecord =
        serde_json::from_value(records[0].clone()).unwrap();
    let fenced = record.step(Step::Fenced).unwrap().clone();
    let took = (fenced.finished_at.unwrap() - fenced.started_at)
        .to_std()
        .unwrap();
    println!(
        "failover to {new_primary}; Fenced took {took:?}: {} (error: {:?})",
        fenced.detail, fenced.error
    );
    // The bound, plus the local traffic cut (in parallel) and the journal write.
    assert!(
        took < FENCE_BOUND + Duration::from_millis(500),
        "Fenced took {took:?}"
    );
    assert!(
        fenced
            .detail
            .starts_with("fenced by the term and the traffic cut"),
        "{}",
        fenced.detail
    );
    let error = fenced.error.clone().unwrap();
    assert!(
        error.starts_with("p not sealed: no fence token: ") && error.contains("no answer within"),
        "{error}"
    );
    let topology: Topology = serde_json::from_value(
        g.get_json(&leader, "v1/topology").await.unwrap()["topology"].clone(),
    )
    .unwrap();
    assert_eq!(
        topology
            .fence_pending
            .iter()
            .map(|f| (f.cluster.as_str(), f.term))
            .collect::<Vec<_>>(),
        [("p", 2)]
    );

    // `vault-dr status` says so.
    let clusters: vault_dr_coordinator::api::ClustersResponse =
        serde_json::from_value(g.get_json(&leader, "v1/clusters").await.unwrap()).unwrap();
    let topo: vault_dr_coordinator::api::TopologyResponse =
        serde_json::from_value(g.get_json(&leader, "v1/topology").await.unwrap()).unwrap();
    let status = vault_dr_coordinator::cli::status::render(&clusters, &topo);
    assert!(
        status.contains("fence pending: p (old primary of term 2) is not sealed yet"),
        "{status}"
    );

    // Frozen well past the token's lifetime and a few keeper attempts, then woken.
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal("-CONT", bao);
    signal("-CONT", agent);
    let woke = Instant::now();
    wait_for(
        "the leader to finish p's fence",
        Duration::from_secs(60),
        || async {
            let v = g.get_json(&leader, "v1/topology").await?;
            let t: Topology = serde_json::from_value(v["topology"].clone()).ok()?;
            t.fence_pending.is_empty().then_some(())
        },
    )
    .await;
    let records = g.get_json(&leader, "v1/failovers").await.unwrap();
    let r: vault_dr_coordinator::model::FailoverRecord =
        serde_json::from_value(records[0].clone()).unwrap();
    let later = r.step(Step::Fenced).unwrap().later.clone();
    println!(
        "{:.1} s after p woke: {later:#?}",
        woke.elapsed().as_secs_f64()
    );
    let outcome = &later.last().unwrap().detail;
    assert!(
        outcome.starts_with("p fenced in")
            || outcome.starts_with("no seal needed: every node of p follows"),
        "{outcome}"
    );
    assert_eq!(record.status, FailoverStatus::Done);
    // Sealed only if the journal says a seal was sent once p was awake: sealed, or sent
    // without an answer in time (an active node takes about a second to seal) and refused
    // after its token expired. No request of the freeze was carried out late.
    let seal_sent = later
        .iter()
        .any(|l| l.detail.contains("node(s) sealed") || l.detail.contains("is refused from"));
    if sealed(&http, &p_addr).await {
        assert!(
            seal_sent,
            "p is sealed, and no seal is journaled: {later:#?}"
        );
    } else {
        // Not sealed by anyone: p follows s1 and restores its snapshots, and a restore shows
        // the node sealed for a moment; a seal stays until a restart.
        wait_for(
            "p to be seen unsealed (a seal carried out late would keep it sealed)",
            Duration::from_secs(30),
            || async { (!sealed(&http, &p_addr).await).then_some(()) },
        )
        .await;
    }
}

/// GET `secret/data/<path>` on `addr` with `token`: the secret's data, `None` while it does
/// not answer 200 (sealed, restoring, not there yet).
async fn kv_read(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    path: &str,
) -> Option<serde_json::Value> {
    let resp = http
        .get(addr.join(&format!("v1/secret/data/{path}")).unwrap())
        .header("X-Vault-Token", token.expose())
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let v: serde_json::Value = resp.json().await.ok()?;
    Some(v["data"]["data"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_old_primary_is_restarted_by_its_agent_and_follows_the_new_primary_with_no_manual_step()
 {
    let builder = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(1)
        .spec(|s| s.vault_restart = true)
        .agents(false);
    let spec = builder.group_spec().clone();
    let mut g = builder.start().await.unwrap();
    // p's server runs under a supervisor that starts it again when it exits, as the kubelet
    // restarts a container (or systemd with Restart=always).
    let node = &mut g.cluster_mut("p").unwrap().nodes_mut()[0];
    node.supervise().await.unwrap();
    node.wait_health(200, Duration::from_secs(30))
        .await
        .unwrap();
    let first_pid = node.pid().unwrap();
    g.start_agents(&spec).await.unwrap();
    let p_addr = g.cluster("p").unwrap().api_addr().clone();
    let http = g.http().clone();
    let p_root = g.cluster("p").unwrap().root_token().clone();

    // p is sealed (by hand here; by vault-dr's fence in a failover): it is down, and a
    // failover makes another cluster primary. Its auto-unseal seal would unseal it only at a
    // restart, and `sys/unseal` refuses it.
    let resp = http
        .put(p_addr.join("v1/sys/seal").unwrap())
        .header("X-Vault-Token", p_root.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "seal p");
    let sealed_at = Instant::now();
    let new_primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    // Every cluster restored p's snapshots: p's root token is the group's.
    let t_addr = g.cluster(&new_primary).unwrap().api_addr().clone();
    let t_root = p_root.clone();
    let written = serde_json::json!({"written": "after the failover"});
    let resp = http
        .post(t_addr.join("v1/secret/data/rejoin/after").unwrap())
        .header("X-Vault-Token", t_root.expose())
        .json(&serde_json::json!({ "data": written }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "write on the new primary");
    println!(
        "failover to {new_primary} {:.1} s after p was sealed",
        sealed_at.elapsed().as_secs_f64()
    );

    // No manual step: p's agent restarts its server, the seal unseals it, and it follows the
    // new primary (its own data quarantined, the new primary's restored).
    let leader = g.leader().await.unwrap();
    let followed = wait_for(
        "p to follow the new primary",
        Duration::from_secs(90),
        || async {
            let v = g.get_json(&leader, "v1/clusters").await?;
            let report = &v["view"]["clusters"]["p"]["nodes"][0]["report"];
            let applied = report["applied_term"].as_u64()?;
            let state = report["vault"]["state"].as_str()?.to_owned();
            (applied >= 2 && state == "active").then_some(state)
        },
    )
    .await;
    let data = wait_for(
        "p to serve the new primary's data",
        Duration::from_secs(30),
        || kv_read(&http, &p_addr, &t_root, "rejoin/after"),
    )
    .await;
    println!(
        "p {followed} and following {new_primary} {:.1} s after it was sealed",
        sealed_at.elapsed().as_secs_f64()
    );
    assert_eq!(data, written);
    assert!(!sealed(&http, &p_addr).await, "p is unsealed");
    let pid = g.cluster("p").unwrap().nodes()[0].pid().unwrap();
    assert_ne!(pid, first_pid, "p's server was started again");
    let agent_log = g
        .agents()
        .iter()
        .find(|a| a.cluster == "p")
        .map(|a| std::fs::read_to_string(&a.log_path).unwrap())
        .unwrap();
    for line in agent_log
        .lines()
        .filter(|l| l.contains("sealed") || l.contains("quarantine"))
    {
        println!("p's agent: {line}");
    }
    assert!(
        agent_log.contains("is sealed") && agent_log.contains("restart its server"),
        "the agent logs the restart before it: {agent_log}"
    );
    assert!(
        agent_log.contains("saved this node's own data to quarantine"),
        "p's own data is kept: {agent_log}"
    );
    // The new primary is still the primary, and its data is intact.
    assert_eq!(
        kv_read(&http, &t_addr, &t_root, "rejoin/after").await,
        Some(written)
    );
}
