//! Restore ahead, on real OpenBao: while the leader suspects the primary (all three observers
//! said down, the confirm count not reached yet), it tells the agents so in their desired state
//! (`primary_suspect`), and an `on-promotion` secondary whose `complete` promotion would restore
//! its newest snapshot starts that restore at once. The promotion decided a few ticks later then
//! finds the restore done or under way and restores nothing more: the target's agent restores
//! exactly once over the whole failover, and serves what was written before its newest pull.
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::Duration;
use vault_dr_lab::group::RestoreMode;
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::wait_for;

/// `cluster`'s agents' logs, concatenated.
fn agent_log(g: &Group, cluster: &str) -> String {
    g.agent_log(cluster).unwrap()
}

/// `GET url` with `token`, as JSON.
async fn get(http: &reqwest::Client, url: &url::Url, token: &vault_dr_common::Secret) -> Value {
    http.get(url.clone())
        .header("X-Vault-Token", token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The raft index of the newest snapshot `cluster`'s first node holds, from the leader's view.
async fn held_index(g: &Group, cluster: &str) -> Option<u64> {
    let leader = g.leader().await?;
    let v = g.get_json(&leader, "v1/clusters").await?;
    v.pointer(&format!(
        "/view/clusters/{cluster}/nodes/0/report/replication/replicated_index"
    ))
    .and_then(Value::as_u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspected_primary_makes_an_on_promotion_secondary_restore_ahead_and_its_promotion_restores_nothing_more()
 {
    // Confirm 3 at 500 ms: a second of suspicion between the first tick of full agreement and
    // the decision, for the agents to hear of it (they report every 200 ms while they see the
    // primary down).
    let mut g = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(1)
        .traffic(false)
        .replication(RestoreMode::OnPromotion, Duration::from_secs(1))
        .spec(|s| s.confirm = 3)
        .start()
        .await
        .unwrap();
    let http = g.http().clone();
    let p = g.cluster("p").unwrap();
    let token = p.root_token().clone();
    p.kv_put("ahead/before-the-fault", &json!({ "v": "kept" }))
        .await
        .unwrap();
    // Both secondaries pulled a snapshot holding the write (p's applied index now).
    let leader = get(&http, &p.api_addr().join("v1/sys/leader").unwrap(), &token).await;
    let applied = leader["raft_applied_index"].as_u64().unwrap();
    for s in ["s1", "s2"] {
        wait_for(
            &format!("{s} holds a snapshot of index {applied} or later"),
            Duration::from_secs(30),
            || async { held_index(&g, s).await.is_some_and(|i| i >= applied) },
        )
        .await;
        assert_eq!(
            agent_log(&g, s)
                .matches("snapshot restored; the node serves it")
                .count(),
            0,
            "an on-promotion secondary restores nothing before a failover"
        );
    }

    g.cluster_mut("p").unwrap().nodes_mut()[0].kill();
    let new_primary = g
        .wait_failover_done(1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(new_primary, "p");
    let log = agent_log(&g, &new_primary);
    assert!(
        log.contains("the leader suspects the primary: restoring the newest snapshot held ahead of a promotion"),
        "{new_primary} restored ahead:\n{log}"
    );
    assert_eq!(
        log.matches("snapshot restored; the node serves it").count(),
        1,
        "{new_primary} restored once over the failover (ahead), not again when promoted:\n{log}"
    );
    assert!(
        log.contains("promoted: node active, canary written and read"),
        "{log}"
    );

    // It serves what was written before its newest pull, through its open gate.
    let np = g.cluster(&new_primary).unwrap();
    let url = g
        .client_addr(np)
        .join("v1/secret/data/ahead/before-the-fault")
        .unwrap();
    let v = get(&http, &url, &token).await;
    assert_eq!(v["data"]["data"]["v"], "kept", "{v}");
}
