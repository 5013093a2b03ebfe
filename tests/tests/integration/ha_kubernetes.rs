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
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vault_dr_coordinator::config::CoordinationFile;
use vault_dr_coordinator::coordination::leader_pod::LEADER_LABEL;
use vault_dr_lab::harness::Group;
use vault_dr_lab::wait::try_wait_for_every;
use vault_dr_tests::coordinators::{Backend, DrLab, HaGroupBuilder, HaGroups, probe_policy};
use vault_dr_tests::fake_apiserver::{TestKube, replica_pod, test_client};

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

/// Three coordinator processes on the Lease `lease_name` (the builder changed by `configure`),
/// started, with the index of the one that leads first.
async fn three_replicas(
    kube: &TestKube,
    kubeconfig: std::path::PathBuf,
    lease_name: &str,
    configure: impl FnOnce(HaGroupBuilder) -> HaGroupBuilder,
) -> (DrLab, usize) {
    let builder = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(3)
        .ha(Backend::Kubernetes {
            kubeconfig,
            namespace: kube.namespace.clone(),
            lease_name: lease_name.to_owned(),
            configmap_name: kube.name("vault-dr-topology"),
        })
        .policy_file(probe_policy(
            Duration::from_millis(500),
            Duration::from_millis(400),
        ))
        .dr_token(false);
    let mut lab = configure(builder).start().await.unwrap();
    lab.group.start_all().await.unwrap();
    let first = match lab.group.wait_leader(None, Duration::from_secs(30)).await {
        Ok((l, _)) => l,
        Err(e) => panic!("{e}\n{}", lab.group.logs()),
    };
    (lab, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_names_the_leader_and_moves_when_the_leader_is_killed() {
    let kube = test_client().await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(kubeconfig_dir.path()).unwrap();
    let lease_name = kube.name("vault-dr-coordinator");
    let (mut lab, first) = three_replicas(&kube, kubeconfig, &lease_name, |b| b).await;
    let group = &mut lab.group;
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

/// The pods that carry the leader label, by name.
async fn labelled(pods: &Api<Pod>, selector: &str) -> Vec<String> {
    let lp = ListParams::default().labels(&format!("{selector},{LEADER_LABEL}=true"));
    let mut names: Vec<String> = pods
        .list(&lp)
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_pod_alone_carries_the_leader_label_and_it_follows_the_lease() {
    let kube = test_client().await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(kubeconfig_dir.path()).unwrap();
    let lease_name = kube.name("vault-dr-coordinator");
    let prefix = kube.name("vdr-pod-");
    // The chart's selector labels of the coordinator pods; the instance is unique per run.
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "vault-dr".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), prefix.clone()),
        (
            "app.kubernetes.io/component".to_owned(),
            "coordinator".to_owned(),
        ),
    ]);
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), &kube.namespace);
    for i in 1..=3 {
        pods.create(
            &PostParams::default(),
            &replica_pod(&format!("{prefix}{i}"), &labels),
        )
        .await
        .unwrap();
    }
    let (mut lab, first) = three_replicas(&kube, kubeconfig, &lease_name, |b| {
        b.id_prefix(&prefix).coordination(CoordinationFile {
            pod_selector: Some(selector.clone()),
            ..CoordinationFile::default()
        })
    })
    .await;
    let group = &mut lab.group;
    let first_id = group.replicas[first].id.clone();
    let on_first = try_wait_for_every(
        Duration::from_millis(50),
        "the leader's pod to carry the label",
        Duration::from_secs(5),
        || async {
            let now = labelled(&pods, &selector).await;
            (now == [first_id.clone()]).then_some(now)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", group.logs()));
    assert_eq!(
        holder(
            &Api::namespaced(kube.client.clone(), &kube.namespace),
            &lease_name
        )
        .await
        .as_deref(),
        Some(first_id.as_str()),
        "the label names the Lease's holder"
    );

    // The leader dies and its pod keeps its labels (a container restart, a partition): the
    // next leader labels its own pod and takes the label from the old one.
    group.kill(first);
    let killed = Instant::now();
    let (moved, after) = try_wait_for_every(
        Duration::from_millis(50),
        "the label to follow the Lease",
        LEASE + Duration::from_secs(10),
        || async {
            let now = labelled(&pods, &selector).await;
            (now.len() == 1 && now[0] != first_id).then(|| (now[0].clone(), killed.elapsed()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", group.logs()));
    let leases: Api<Lease> = Api::namespaced(kube.client.clone(), &kube.namespace);
    println!(
        "label on {on_first:?}; after kill -9 of {first_id} it moved to {moved} in {:.2} s",
        after.as_secs_f64()
    );
    assert_eq!(
        holder(&leases, &lease_name).await.as_deref(),
        Some(moved.as_str())
    );

    // The killed replica comes back as a follower: its pod stays unlabelled, and every
    // replica answers /healthz, so readiness never fails by design.
    group.start(first, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        labelled(&pods, &selector).await,
        std::slice::from_ref(&moved)
    );
    for r in &group.replicas {
        let status = reqwest::get(format!("{}/healthz", r.url))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{} /healthz", r.id);
    }
    drop(lab);
    // The replicas touch pods only as the chart's Role allows (list, patch; no get, no delete).
    if let Some(fake) = kube.fake() {
        let verbs: std::collections::BTreeSet<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.resource == "pods" && c.verb != "create")
            .map(|c| c.verb)
            .collect();
        assert_eq!(
            verbs,
            ["list", "patch"].map(String::from).into(),
            "pod calls besides the test's own creates"
        );
    }
    if kube.fake().is_none() {
        for i in 1..=3 {
            let _ = pods
                .delete(&format!("{prefix}{i}"), &DeleteParams::default())
                .await;
        }
        let _ = leases.delete(&lease_name, &DeleteParams::default()).await;
    }
}

/// Without MongoDB every pod has its own embedded store: the leader keeps the journal's recent
/// records also in the ConfigMap `<topology>-journal`, so the replica that leads next answers
/// `history` and `explain --failover` with the failover the killed leader ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_without_mongodb_keeps_the_history() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use vault_dr_coordinator::coordination::journal_copy::{JOURNAL_KEY, journal_configmap_name};
    use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus};
    use vault_dr_tests::coordinators::failover_policy;

    let kube = test_client().await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(kubeconfig_dir.path()).unwrap();
    let lease_name = kube.name("vault-dr-history");
    let (mut lab, first) = three_replicas(&kube, kubeconfig, &lease_name, |b| {
        b.own_stores(true)
            .policy_file(failover_policy())
            .agents(|a| a.replication = None)
    })
    .await;
    lab.start_agents().await.unwrap();
    let dir = lab.group.dir().to_path_buf();
    assert!(!dir.join("store.sqlite").exists(), "no shared store file");
    for r in &lab.group.replicas {
        let own = dir.join(format!("{}-store.sqlite", r.id));
        assert!(own.exists(), "{} has its own store", r.id);
    }

    // The primary's server dies: the first leader runs the failover p -> s1.
    wait_for_eligible(&lab, first, "s1").await;
    lab.clusters[0].nodes_mut()[0].kill();
    let (done, _) = lab
        .group
        .wait_failover(
            first,
            "the failover to finish",
            Duration::from_secs(60),
            |r| r.status == FailoverStatus::Done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.group.logs()));
    assert_eq!((done.from.as_str(), done.to.as_str()), ("p", "s1"));

    // The copy every replica reads holds it.
    let configmaps: Api<ConfigMap> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let journal_name = journal_configmap_name(&kube.name("vault-dr-topology"));
    let copy = configmaps.get(&journal_name).await.unwrap();
    let copied: Vec<FailoverRecord> =
        serde_json::from_str(&copy.data.unwrap()[JOURNAL_KEY]).unwrap();
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].id, done.id);

    // Its leader dies; the next one has never written a journal record in its own store.
    lab.group.kill(first);
    let (second, _) = lab
        .group
        .wait_leader(Some(first), Duration::from_secs(30))
        .await
        .unwrap();
    let seen: Vec<FailoverRecord> = lab.group.get(second, "/v1/failovers").await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].id, done.id);
    assert_eq!(seen[0].status, FailoverStatus::Done);
    assert_eq!(
        seen[0].steps.len(),
        done.steps.len(),
        "every step, as journaled"
    );
    let history = lab.group.cli(&["history"]).await;
    assert!(
        history.contains(&format!("{} · p -> s1 · term 2 · Done", done.id)),
        "{history}"
    );
    let explain = lab.group.cli(&["explain", "--failover", &done.id]).await;
    assert!(explain.contains("winner: s1"), "{explain}");

    if kube.fake().is_none() {
        let _ = configmaps
            .delete(&journal_name, &DeleteParams::default())
            .await;
    }
}

/// Waits until `cluster` is an eligible candidate on replica `i`.
async fn wait_for_eligible(lab: &DrLab, i: usize, cluster: &str) {
    use vault_dr_coordinator::api::ClustersResponse;
    use vault_dr_coordinator::model::Eligibility;
    let found = try_wait_for_every(
        Duration::from_millis(200),
        "the secondary to be eligible",
        Duration::from_secs(30),
        || async {
            let v: ClustersResponse = lab.group.get(i, "/v1/clusters").await?;
            v.candidates
                .candidates
                .iter()
                .find(|c| c.cluster == cluster && c.eligibility == Eligibility::Eligible)
                .map(|_| ())
        },
    )
    .await;
    if let Err(e) = found {
        let clusters: Option<serde_json::Value> = lab.group.get(i, "/v1/clusters").await;
        panic!("{e}: {clusters:#?}");
    }
}
