//! The Kubernetes traffic switch is level-triggered: the leading `vault-dr coordinator`
//! process keeps the client Service selecting the topology's primary, whatever changed it.
//!
//! - A reinstall: the topology ConfigMap survived in term 4 with `dc2` as primary, and the
//!   Service was recreated selecting the values' first primary (`dc1`). The new leader corrects
//!   it to `dc2` on its first ticks.
//! - A hand edit: the Service patched to select `dc1` again is corrected within a tick.
//!
//! Each correction is counted (`vault_dr_coordinator_traffic_corrections_total`) and logged.
//! The coordinator finds the apiserver through `KUBECONFIG`: the fake apiserver started here, or
//! the cluster named by `VAULT_DR_TEST_KUBECONFIG` (names get a unique suffix; the test removes
//! what it created). No OpenBao runs: the clusters' addresses are closed ports, so nothing can
//! fail over (no agent confirms anything).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use url::Url;
use vault_dr_coordinator::config::{TrafficBackend, TrafficFile};
use vault_dr_coordinator::model::Step;
use vault_dr_coordinator::model::topology::{FailoverInProgress, Topology};
use vault_dr_coordinator::traffic::kubernetes::cut_selector;
use vault_dr_coordinator::traffic::target_cluster;
use vault_dr_lab::harness::Group;
use vault_dr_lab::ports::closed_loopback;
use vault_dr_lab::wait::try_wait_for_every;
use vault_dr_tests::coordinators::{Backend, DrLab, HaGroups, probe_policy, sample};
use vault_dr_tests::fake_apiserver::{client_service, test_client};

/// The leader's tick (its probe interval), which is also the reconcile period.
const TICK: Duration = Duration::from_millis(500);

fn labels(dc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "vault-dr-it".to_owned(),
        ),
        ("vault-dr.io/cluster".to_owned(), dc.to_owned()),
    ])
}

/// The Service's selector (a Service without one has an empty selector); a failed read is an
/// error, not "selects nothing".
async fn selector(services: &Api<Service>, name: &str) -> Result<BTreeMap<String, String>, String> {
    let service = services
        .get(name)
        .await
        .map_err(|e| format!("GET service {name}: {e}"))?;
    Ok(service.spec.and_then(|s| s.selector).unwrap_or_default())
}

/// Polls every 50 ms until the Service selects `dc`; how long that took.
async fn wait_selects(services: &Api<Service>, name: &str, dc: &str, within: Duration) -> Duration {
    let t = Instant::now();
    let want = labels(dc);
    try_wait_for_every(
        Duration::from_millis(50),
        &format!("service {name} to select {dc}"),
        within,
        || async {
            let got = selector(services, name).await?;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    t.elapsed()
}

/// Starts `count` coordinators over the clusters `dc1` and `dc2` (closed ports: no OpenBao, so
/// nothing can fail over) with the Kubernetes Lease, topology ConfigMap and client Service of
/// these names.
async fn start_coordinators(
    kube: &vault_dr_tests::fake_apiserver::TestKube,
    kubeconfig: &std::path::Path,
    lease_name: &str,
    configmap_name: &str,
    service_name: &str,
    count: usize,
) -> DrLab {
    let addresses: Vec<Url> = (0..2)
        .map(|_| Url::parse(&format!("http://127.0.0.1:{}", closed_loopback().unwrap())).unwrap())
        .collect();
    Group::builder()
        .clusters(["dc1", "dc2"])
        .coordinators(count)
        .ha(Backend::Kubernetes {
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: kube.namespace.clone(),
            lease_name: lease_name.to_owned(),
            configmap_name: configmap_name.to_owned(),
        })
        .addresses(addresses)
        .dr_token(false)
        .policy_file(probe_policy(TICK, Duration::from_millis(400)))
        .traffic_file(TrafficFile {
            backend: Some(TrafficBackend::Kubernetes),
            namespace: Some(kube.namespace.clone()),
            service: Some(service_name.to_owned()),
            ..TrafficFile::default()
        })
        .selector(
            "dc1",
            &[
                ("app.kubernetes.io/name", "vault-dr-it"),
                ("vault-dr.io/cluster", "dc1"),
            ],
        )
        .selector(
            "dc2",
            &[
                ("app.kubernetes.io/name", "vault-dr-it"),
                ("vault-dr.io/cluster", "dc2"),
            ],
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_corrects_a_client_service_that_selects_another_cluster_than_the_topology() {
    let kube = test_client().await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(kubeconfig_dir.path()).unwrap();
    let (lease_name, configmap_name, service_name) = (
        kube.name("vault-dr-coordinator"),
        kube.name("vault-dr-topology"),
        kube.name("vault-dr-active"),
    );

    // What an uninstall leaves: the topology of term 4, dc2 primary (written by a replica of the
    // previous install, which then released the Lease).
    let mut term4 = Topology::initial("dc2");
    term4.term = 4;
    kube.leave_topology(&lease_name, &configmap_name, &term4)
        .await
        .unwrap();
    // What the reinstall creates: the Service selecting the values' first primary.
    let services: Api<Service> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let service = client_service(&service_name, labels("dc1"));
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let mut lab = start_coordinators(
        &kube,
        &kubeconfig,
        &lease_name,
        &configmap_name,
        &service_name,
        1,
    )
    .await;
    lab.group.start_all().await.unwrap();
    let (leader, _) = lab
        .group
        .wait_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The reinstall's Service is corrected to the term-4 primary.
    let took = wait_selects(&services, &service_name, "dc2", Duration::from_secs(10)).await;
    println!(
        "reinstalled service corrected {:.2} s after the leader was ready",
        took.as_secs_f64()
    );
    let topology: serde_json::Value = lab.group.get(leader, "/v1/topology").await.unwrap();
    assert_eq!(topology["topology"]["term"], 4, "{topology}");
    assert_eq!(topology["topology"]["primary"], "dc2", "{topology}");

    // A hand edit back to dc1 is undone within a tick (plus the round trips).
    let patch = serde_json::json!({ "spec": { "selector": labels("dc1") } });
    services
        .patch(
            &service_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let took = wait_selects(
        &services,
        &service_name,
        "dc2",
        TICK * 2 + Duration::from_secs(2),
    )
    .await;
    println!(
        "hand-edited service corrected in {:.2} s (tick {:.1} s)",
        took.as_secs_f64(),
        TICK.as_secs_f64()
    );

    let metrics = lab.group.metrics(leader).await.unwrap();
    assert_eq!(
        sample(&metrics, "vault_dr_coordinator_traffic_corrections_total"),
        Some(2.0),
        "{metrics}"
    );
    let logs = lab.group.logs();
    assert_eq!(
        logs.matches("traffic corrected").count(),
        2,
        "each correction is logged once:\n{logs}"
    );
    assert!(
        logs.contains(
            "the topology (term 4) says app.kubernetes.io/name=vault-dr-it,vault-dr.io/cluster=dc2"
        ),
        "{logs}"
    );

    // Leave nothing behind on a real cluster (the fake goes with the test).
    drop(lab);
    if kube.fake().is_none() {
        let dp = DeleteParams::default();
        let _ = services.delete(&service_name, &dp).await;
        let cms: Api<ConfigMap> = Api::namespaced(kube.client.clone(), &kube.namespace);
        let _ = cms.delete(&configmap_name, &dp).await;
        let leases: Api<Lease> = Api::namespaced(kube.client.clone(), &kube.namespace);
        let _ = leases.delete(&lease_name, &dp).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_takes_over_mid_failover_at_any_step_reconciles_the_service_to_the_topology()
{
    let kube = test_client().await.unwrap();
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(kubeconfig_dir.path()).unwrap();
    let services: Api<Service> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let mut created = Vec::new();
    for step in [
        Step::Decided,
        Step::Fenced,
        Step::Promoted,
        Step::Switched,
        Step::Repointed,
        Step::Verified,
    ] {
        let (lease_name, configmap_name, service_name) = (
            kube.name(&format!("vdr-mid-{step}")),
            kube.name(&format!("vdr-mid-topology-{step}")),
            kube.name(&format!("vdr-mid-active-{step}")),
        );
        // The leader died with the failover dc1 -> dc2 of term 2 at `step`, before it moved
        // the Service: it still selects the old primary.
        let mut topology = Topology::initial("dc1");
        topology.term = 2;
        topology.failover = Some(FailoverInProgress {
            id: format!("mid-{step}"),
            from: "dc1".into(),
            to: "dc2".into(),
            completed: step,
            planned: false,
            raft_node: None,
            raft_handover: false,
        });
        kube.leave_topology(&lease_name, &configmap_name, &topology)
            .await
            .unwrap();
        services
            .create(
                &PostParams::default(),
                &client_service(&service_name, labels("dc1")),
            )
            .await
            .unwrap();
        created.push((
            lease_name.clone(),
            configmap_name.clone(),
            service_name.clone(),
        ));

        let mut lab = start_coordinators(
            &kube,
            &kubeconfig,
            &lease_name,
            &configmap_name,
            &service_name,
            1,
        )
        .await;
        lab.group.start_all().await.unwrap();
        let (leader, _) = lab
            .group
            .wait_leader(None, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ready = Instant::now();
        // Within two ticks (and the round trips) the Service selects what the topology the
        // leader serves says: the cut before Promoted, the target from Promoted on.
        let (selector, want) = try_wait_for_every(
            Duration::from_millis(50),
            "the Service to select what the topology says",
            TICK * 2 + Duration::from_secs(3),
            || async {
                let v: serde_json::Value = lab.group.get(leader, "/v1/topology").await?;
                let t: Topology = serde_json::from_value(v["topology"].clone()).ok()?;
                let want = match target_cluster(&t) {
                    Some(dc) => labels(dc),
                    None => cut_selector(t.term),
                };
                let have = selector(&services, &service_name).await.ok()?;
                (have == want).then_some((have, want))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("step {step}: {e}"));
        println!(
            "taken over after {step}: the Service selects {selector:?} {:.2} s after the leader was ready",
            ready.elapsed().as_secs_f64()
        );
        assert_eq!(selector, want);
        assert_ne!(
            selector,
            labels("dc1"),
            "step {step}: still the old primary"
        );
        if step >= Step::Promoted {
            assert_eq!(selector, labels("dc2"), "step {step}: the target serves");
        } else {
            assert_eq!(selector, cut_selector(2), "step {step}: cut until promoted");
        }
        drop(lab);
    }
    if kube.fake().is_none() {
        let dp = DeleteParams::default();
        let cms: Api<ConfigMap> = Api::namespaced(kube.client.clone(), &kube.namespace);
        let leases: Api<Lease> = Api::namespaced(kube.client.clone(), &kube.namespace);
        for (lease, cm, service) in created {
            let _ = services.delete(&service, &dp).await;
            let _ = cms.delete(&cm, &dp).await;
            let _ = leases.delete(&lease, &dp).await;
        }
    }
}
