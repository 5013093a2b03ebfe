//! Coordinator high availability on the `kubernetes` backend with three real `vault-dr
//! coordinator` processes: the Lease names the leader, and after kill -9 of the leader the Lease
//! moves to another replica within the lease duration plus one second, and `/readyz` with it.
//!
//! The replicas find the apiserver the way the kube client does, through `KUBECONFIG`: a
//! kubeconfig for the fake apiserver (started in this test), or the file named by
//! `VAULT_DR_TEST_KUBECONFIG`, in which case the test runs unchanged against that cluster (Lease
//! and ConfigMap names get a unique suffix, namespace from `VAULT_DR_TEST_NAMESPACE`).
//!
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built `vault-dr` binary
//! (`cargo build --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::time::{Duration, Instant};
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::try_wait_for_every;
use vault_dr_tests::coordinators::{Backend, HaGroups, probe_policy};
use vault_dr_tests::fake_apiserver::test_client;

/// The default lease (the group runs with the default coordination settings).
const LEASE: Duration = Duration::from_secs(5);

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_names_the_leader_and_moves_when_the_leader_is_killed() {
    let kube = test_client().await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(kubeconfig_dir.path()).unwrap();
    let lease_name = kube.name("vault-dr-coordinator");
    let mut lab = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(3)
        .ha(Backend::Kubernetes {
            kubeconfig,
            namespace: kube.namespace.clone(),
            lease_name: lease_name.clone(),
            configmap_name: kube.name("vault-dr-topology"),
        })
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
    let leases: Api<Lease> = Api::namespaced(kube.client.clone(), &kube.namespace);
    assert_eq!(
        holder(&leases, &lease_name).await.as_deref(),
        Some(first_id.as_str()),
        "the Lease names the replica whose /readyz is 200"
    );
    // It stays that way: the followers do not steal a live lease. (A sleep on purpose: it
    // proves that nothing happens.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(group.leaders().await, vec![first]);
    assert_eq!(
        holder(&leases, &lease_name).await.as_deref(),
        Some(first_id.as_str())
    );

    group.kill(first);
    let killed = Instant::now();
    // Every 20 ms: the time it took is asserted below.
    let (moved_to, moved_after) = try_wait_for_every(
        Duration::from_millis(20),
        "the Lease to move",
        LEASE + Duration::from_secs(10),
        || async {
            holder(&leases, &lease_name)
                .await
                .filter(|h| *h != first_id)
                .map(|h| (h, killed.elapsed()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", group.logs()));
    let (second, ready_at) = group
        .wait_leader(Some(first), Duration::from_secs(10))
        .await
        .unwrap();
    println!(
        "Lease moved from {first_id} to {moved_to} {:.2} s after kill -9; /readyz 200 after {:.2} s",
        moved_after.as_secs_f64(),
        (ready_at - killed).as_secs_f64()
    );
    assert_eq!(group.replicas[second].id, moved_to);
    assert!(
        moved_after <= LEASE + Duration::from_secs(1),
        "takeover took {moved_after:?}"
    );
    // A sleep on purpose: the new holder keeps the Lease, nobody takes it meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&leases, &lease_name).await.as_deref(),
        Some(moved_to.as_str()),
        "the new holder keeps the Lease"
    );
    assert_eq!(group.leaders().await, vec![second]);
}
