//! One coordinator group per set of clusters, on real OpenBao: the leader stamps its group
//! identity and term into the primary (`cubbyhole/vault-dr/group`, DR token), snapshots carry
//! it to the secondaries, and a second group started over the same clusters, the way an operator
//! who copied the config would (fresh coordination file, the config naming the old primary),
//! refuses to act: no failover, no forwarder, no switchover, `status` and the log say why, the
//! metric behind `VaultDRGroupConflict` is 1, and it overwrites no stamp. The first group goes on
//! as before. Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::Duration;
use vault_dr_lab::LabCluster;
use vault_dr_lab::group::RestoreMode;
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::wait_for;

/// `cluster`'s stamp, read on the node's own address with the DR token.
async fn stamp(g: &Group, cluster: &LabCluster) -> Option<Value> {
    let url = cluster
        .api_addr()
        .join("v1/cubbyhole/vault-dr/group")
        .unwrap();
    let r = g
        .http()
        .get(url)
        .header("X-Vault-Token", g.dr_token().expose())
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<Value>().await.ok()?.get("data").cloned()
}

async fn wait_stamp(g: &Group, name: &str, term: u64) -> Value {
    let what = format!("{name} stamped with term {term}");
    wait_for(&what, Duration::from_secs(60), || async {
        let s = stamp(g, g.cluster(name).unwrap()).await?;
        (s["term"] == term).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_over_the_same_clusters_refuses_to_act_and_the_first_goes_on() {
    let builder = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(1)
        .replication(RestoreMode::Continuous, Duration::from_secs(2));
    let spec = builder.group_spec().clone();
    let mut g = builder.start().await.unwrap();
    let first = wait_stamp(&g, "p", 1).await;
    let group_a = first["group_id"].as_str().unwrap().to_owned();
    assert_eq!(first["primary"], "p");
    assert_eq!(first["by"], "coordinator-1");

    // A failover: the new primary gets the new term's stamp; p comes back with its own data.
    g.cluster_mut("p").unwrap().nodes_mut()[0].kill();
    let primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    let second = wait_stamp(&g, &primary, 2).await;
    assert_eq!(second["group_id"], group_a.as_str());
    let p = &mut g.cluster_mut("p").unwrap().nodes_mut()[0];
    p.restart().await.unwrap();
    p.wait_health(200, Duration::from_secs(30)).await.unwrap();

    // A second group, started from a copy of the config (p named as the primary) with a
    // fresh coordination file.
    let b = g.start_second_group(&spec).await.unwrap();
    let topology = wait_for(
        "the second group to refuse",
        Duration::from_secs(30),
        || async {
            let v = g.get_json(&b.url, "v1/topology").await?;
            v.get("refusing")?.as_str()?;
            Some(v)
        },
    )
    .await;
    let why = topology["refusing"].as_str().unwrap();
    eprintln!("second group: {why}");
    assert!(
        why.contains("carries the stamp of another coordinator group")
            && why.contains(&format!("group {group_a}"))
            && why.contains("adopt_group"),
        "{why}"
    );
    // It decides and does nothing, a few checks later too.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let topology = g.get_json(&b.url, "v1/topology").await.unwrap();
    assert_eq!(topology["topology"]["term"], 1, "{topology}");
    assert_eq!(topology["topology"]["primary"], "p", "{topology}");
    assert!(topology["topology"]["failover"].is_null(), "{topology}");
    assert!(
        topology["refusing"].is_string(),
        "still refusing: {topology}"
    );
    let journal = g.get_json(&b.url, "v1/failovers").await.unwrap();
    assert_eq!(journal, json!([]), "no failover in its journal");
    let port = b.traffic_port.unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the refusing group opened its stable client address on {port}"
    );
    let switchover = g
        .http()
        .post(b.url.join("v1/switchover").unwrap())
        .bearer_auth(g.coordinator_token().expose())
        .json(&json!({ "to": "s2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        switchover.status(),
        409,
        "a refusing coordinator takes no switchover"
    );
    let metrics = g
        .get_text(&b.url, "metrics")
        .await
        .expect("the coordinator's metrics");
    assert!(
        metrics.contains("vault_dr_coordinator_group_refusing 1"),
        "the alert's metric: {metrics}"
    );
    let log = std::fs::read_to_string(&b.log_path).unwrap();
    assert!(log.contains("refusing to act:"), "{log}");
    // It overwrote no stamp: the new primary's is still the first group's of term 2, and p's
    // (its own old one, or the new primary's once it rejoined by a restore) the first group's.
    let s = stamp(&g, g.cluster(&primary).unwrap()).await.unwrap();
    assert_eq!(
        (&s["group_id"], &s["term"]),
        (&json!(group_a), &json!(2)),
        "{s}"
    );
    let s = stamp(&g, g.cluster("p").unwrap()).await.unwrap();
    assert_eq!(s["group_id"], group_a.as_str(), "p: {s}");

    // The first group goes on: same term and primary, acting.
    let a = g
        .get_json(&g.coordinators()[0].url, "v1/topology")
        .await
        .unwrap();
    assert_eq!(a["topology"]["term"], 2, "{a}");
    assert_eq!(a["topology"]["primary"], primary.as_str(), "{a}");
    assert!(a.get("refusing").is_none(), "the first group acts: {a}");
}
