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
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use url::Url;
use vault_dr_coordinator::config::{TrafficBackend, TrafficFile};
use vault_dr_coordinator::model::topology::Topology;
use vault_dr_lab::harness::Group;
use vault_dr_lab::ports::closed_loopback;
use vault_dr_lab::wait::try_wait_for_every;
use vault_dr_tests::coordinators::{Backend, HaGroups, probe_policy, sample};
use vault_dr_tests::fake_apiserver::test_client;

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
    let service = Service {
        metadata: ObjectMeta {
            name: Some(service_name.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels("dc1")),
            ports: Some(vec![ServicePort {
                port: 8200,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let addresses: Vec<Url> = (0..2)
        .map(|_| Url::parse(&format!("http://127.0.0.1:{}", closed_loopback().unwrap())).unwrap())
        .collect();
    let mut lab = Group::builder()
        .clusters(["dc1", "dc2"])
        .coordinators(1)
        .ha(Backend::Kubernetes {
            kubeconfig,
            namespace: kube.namespace.clone(),
            lease_name: lease_name.clone(),
            configmap_name: configmap_name.clone(),
        })
        .addresses(addresses)
        .dr_token(false)
        .policy_file(probe_policy(TICK, Duration::from_millis(400)))
        .traffic_file(TrafficFile {
            backend: Some(TrafficBackend::Kubernetes),
            namespace: Some(kube.namespace.clone()),
            service: Some(service_name.clone()),
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
        .unwrap();
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
