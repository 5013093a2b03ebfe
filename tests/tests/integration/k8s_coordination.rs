//! The `kubernetes` coordination backend, Service traffic switch and failover Events, on the
//! fake apiserver (or on a real cluster when `VAULT_DR_TEST_KUBECONFIG` names a kubeconfig):
//! three coordinators elect one leader the Lease names, the Lease moves within the lease
//! duration plus one second when the leader stops, release hands over at once, two replicas
//! that both won the unconditioned lease patch raise the term exactly once by CAS, the Service
//! selector follows the new primary, and every step writes an Event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{Method, Request};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use vault_dr_coordinator::config::ClusterConfig;
use vault_dr_coordinator::coordination::kubernetes::KubernetesCoordination;
use vault_dr_coordinator::coordination::{Coordination, CoordinationError};
use vault_dr_coordinator::failover::actions::TrafficSwitch;
use vault_dr_coordinator::failover::events::{EVENT_REASON, KubernetesEvents};
use vault_dr_coordinator::failover::hooks::StepHook;
use vault_dr_coordinator::model::CandidateTable;
use vault_dr_coordinator::model::topology::Topology;
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus, Step};
use vault_dr_coordinator::traffic::kubernetes::KubernetesServiceSwitch;
use vault_dr_lab::wait::wait_for_every;
use vault_dr_tests::fake_apiserver::{Call, FakeApiServer, TestKube, test_client};

const LEASE: &str = "vault-dr-coordinator";
const TOPOLOGY: &str = "vault-dr-topology";

fn coordinator(
    k: &TestKube,
    client: kube::Client,
    id: &str,
    lease: Duration,
    renew: Duration,
) -> Arc<KubernetesCoordination> {
    Arc::new(KubernetesCoordination::new(
        client,
        k.namespace.clone(),
        k.name(LEASE),
        k.name(TOPOLOGY),
        k.name(id),
        lease,
        renew,
    ))
}

/// The renew loop of one coordinator, as the leader loop runs it.
fn renew_loop(c: Arc<KubernetesCoordination>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(c.renew_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = c.try_acquire_or_renew().await;
        }
    })
}

/// The holder as `kubectl get lease` shows it.
async fn lease_holder(k: &TestKube) -> Option<String> {
    let lease = Api::<Lease>::namespaced(k.client.clone(), &k.namespace)
        .get(&k.name(LEASE))
        .await
        .unwrap();
    lease.spec.and_then(|s| s.holder_identity)
}

fn leaders(cs: &[Arc<KubernetesCoordination>]) -> Vec<usize> {
    (0..cs.len()).filter(|i| cs[*i].is_leader()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_elect_one_leader_and_the_lease_moves_when_it_stops() {
    let k = test_client().await.unwrap();
    let (lease, renew) = (Duration::from_secs(2), Duration::from_millis(500));
    let cs: Vec<_> = ["coord-0", "coord-1", "coord-2"]
        .iter()
        .map(|id| coordinator(&k, k.client.clone(), id, lease, renew))
        .collect();
    let mut loops: Vec<_> = cs.iter().map(|c| Some(renew_loop(c.clone()))).collect();

    let leader = wait_for_every(
        Duration::from_millis(20),
        "one leader",
        Duration::from_secs(5),
        || async {
            match leaders(&cs).as_slice() {
                [one] => Some(*one),
                _ => None,
            }
        },
    )
    .await;
    let leader_id = k.name(&format!("coord-{leader}"));
    assert_eq!(lease_holder(&k).await.as_deref(), Some(leader_id.as_str()));
    let info = cs[(leader + 1) % 3].lease().await.unwrap();
    assert_eq!(info.holder.as_deref(), Some(leader_id.as_str()));
    assert!(info.expires_at.is_some());
    // Several renewals later it is still the only leader.
    tokio::time::sleep(lease + renew).await;
    assert_eq!(leaders(&cs), vec![leader]);
    assert_eq!(lease_holder(&k).await.as_deref(), Some(leader_id.as_str()));

    // Stop the leader right after a renewal (the worst case): it neither renews nor releases.
    assert!(cs[leader].try_acquire_or_renew().await.unwrap());
    if let Some(task) = loops[leader].take() {
        task.abort();
    }
    let stopped = Instant::now();
    let old = cs[leader].clone();
    wait_for_every(
        Duration::from_millis(20),
        "another coordinator takes the lease",
        lease + Duration::from_secs(3),
        || async {
            let others = leaders(&cs).into_iter().filter(|i| *i != leader).count();
            // No overlap: the old leader stopped acting before anyone could take over.
            assert!(
                others == 0 || !old.is_leader(),
                "old leader still acting at takeover"
            );
            (others > 0).then_some(())
        },
    )
    .await;
    let moved_after = stopped.elapsed();
    println!(
        "lease moved away from {leader_id} {:.2} s after the leader stopped (lease {lease:?}, renew {renew:?})",
        moved_after.as_secs_f64()
    );
    assert!(
        moved_after <= lease + Duration::from_secs(1),
        "lease took {moved_after:?} to move (lease duration {lease:?})"
    );
    // The two survivors renew in lockstep here, so both may win the unconditioned patch on the
    // expired lease (the race the term CAS guards against). Within one renew period the loser
    // sees the winner's fresh renewal and stops; the Lease names the one that remains.
    let new = wait_for_every(
        Duration::from_millis(20),
        "a single new leader",
        renew * 2 + Duration::from_secs(1),
        || async {
            match leaders(&cs).as_slice() {
                [one] => Some(*one),
                _ => None,
            }
        },
    )
    .await;
    let new_id = k.name(&format!("coord-{new}"));
    assert_ne!(new, leader);
    assert_eq!(lease_holder(&k).await.as_deref(), Some(new_id.as_str()));
    let info = cs[new].lease().await.unwrap();
    assert!(info.transitions >= 1, "{info:?}");
    for task in loops.into_iter().flatten() {
        task.abort();
    }
}

#[tokio::test]
async fn release_hands_the_lease_over_at_once() {
    let k = test_client().await.unwrap();
    let long = Duration::from_secs(30);
    let a = coordinator(&k, k.client.clone(), "a", long, Duration::from_secs(1));
    let b = coordinator(&k, k.client.clone(), "b", long, Duration::from_secs(1));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(!b.is_leader());
    let before = a.lease().await.unwrap();

    a.release().await.unwrap();
    assert!(!a.is_leader());
    assert_eq!(a.lease().await.unwrap().holder, None);
    // A 30 s lease, yet b takes over on its very next try.
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(b.is_leader());
    let after = b.lease().await.unwrap();
    assert_eq!(after.holder, Some(k.name("b")));
    assert_eq!(after.transitions, before.transitions + 1);
    // Releasing a lease we do not hold leaves it alone.
    a.release().await.unwrap();
    assert_eq!(lease_holder(&k).await, Some(k.name("b")));
}

#[tokio::test]
async fn topology_is_created_once_and_a_stale_replace_is_a_conflict() {
    let k = test_client().await.unwrap();
    let lease = Duration::from_secs(5);
    let a = coordinator(&k, k.client.clone(), "a", lease, Duration::from_secs(1));
    let b = coordinator(&k, k.client.clone(), "b", lease, Duration::from_secs(1));
    assert_eq!(a.read_topology().await.unwrap(), None);
    let first = a
        .write_topology(&Topology::initial("dc1"), None)
        .await
        .unwrap();
    assert!(matches!(
        b.write_topology(&Topology::initial("dc2"), None).await,
        Err(CoordinationError::Conflict { expected: None })
    ));
    let mut next = first.value.clone();
    next.term = 2;
    let second = a.write_topology(&next, Some(&first.version)).await.unwrap();
    assert_ne!(second.version, first.version);
    let mut rival = first.value.clone();
    rival.term = 2;
    rival.primary = "dc3".into();
    assert!(matches!(
        b.write_topology(&rival, Some(&first.version)).await,
        Err(CoordinationError::Conflict { .. })
    ));
    let now = b.read_topology().await.unwrap().unwrap();
    assert_eq!(now, second);
    // The ConfigMap holds it as JSON, readable with kubectl.
    let cm = Api::<ConfigMap>::namespaced(k.client.clone(), &k.namespace)
        .get(&k.name(TOPOLOGY))
        .await
        .unwrap();
    let json = cm.data.unwrap().remove("topology.json").unwrap();
    assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), next);
}

/// Holds the first GET of the Lease until every replica has done its own, so each sees the
/// same expired lease and writes it: the race that an unconditioned write (kube-leader-election's
/// merge patch, used before) lost, made certain. Works against a real cluster as well as the fake.
#[derive(Clone)]
struct HoldFirstLeaseGet {
    barrier: Arc<Barrier>,
    armed: Arc<AtomicBool>,
    lease_path: String,
}

impl<S> tower::Layer<S> for HoldFirstLeaseGet {
    type Service = HeldService<S>;
    fn layer(&self, inner: S) -> HeldService<S> {
        HeldService {
            inner,
            hold: self.clone(),
        }
    }
}

struct HeldService<S> {
    inner: S,
    hold: HoldFirstLeaseGet,
}

impl<S, B> tower::Service<Request<B>> for HeldService<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let hold = req.method() == Method::GET
            && req.uri().path().ends_with(&self.hold.lease_path)
            && self.hold.armed.swap(false, Ordering::SeqCst);
        let barrier = self.hold.barrier.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            if hold {
                barrier.wait().await;
            }
            Ok(response)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_one_free_lease_win_it_once_and_raise_the_term_once() {
    let k = test_client().await.unwrap();
    let (lease, renew) = (Duration::from_secs(5), Duration::from_secs(1));
    // The lease exists and is free: c held it and released it; c also wrote term 1.
    let c = coordinator(&k, k.client.clone(), "c", lease, renew);
    assert!(c.try_acquire_or_renew().await.unwrap());
    let base = c
        .write_topology(&Topology::initial("dc1"), None)
        .await
        .unwrap();
    c.release().await.unwrap();

    let barrier = Arc::new(Barrier::new(2));
    let held_client = || {
        let layer = HoldFirstLeaseGet {
            barrier: barrier.clone(),
            armed: Arc::new(AtomicBool::new(true)),
            lease_path: format!("/leases/{}", k.name(LEASE)),
        };
        kube::client::ClientBuilder::try_from(k.config())
            .unwrap()
            .with_layer(&layer)
            .build()
    };
    let a = coordinator(&k, held_client(), "a", lease, renew);
    let b = coordinator(&k, held_client(), "b", lease, renew);
    let (won_a, won_b) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
    assert!(
        won_a ^ won_b,
        "exactly one replica wins the same free Lease (a {won_a}, b {won_b}): each write is \
         conditional on the resourceVersion both read"
    );
    assert_eq!((a.is_leader(), b.is_leader()), (won_a, won_b));
    let named = if won_a { k.name("a") } else { k.name("b") };
    assert_eq!(
        lease_holder(&k).await,
        Some(named),
        "the Lease names the replica that acts"
    );

    // Safety does not rest on the Lease alone: two replicas that decide a failover from the
    // same topology (as a stale leader and a new one could) get exactly one term raise.

    let (seen_a, seen_b) = tokio::join!(a.read_topology(), b.read_topology());
    let (seen_a, seen_b) = (seen_a.unwrap().unwrap(), seen_b.unwrap().unwrap());
    assert_eq!(seen_a, base);
    assert_eq!(seen_b, base);
    let raise = |to: &str| {
        let mut t = base.value.clone();
        t.term += 1;
        t.primary = to.to_owned();
        t
    };
    let (to_a, to_b) = (raise("dc2"), raise("dc3"));
    let (wrote_a, wrote_b) = tokio::join!(
        a.write_topology(&to_a, Some(&seen_a.version)),
        b.write_topology(&to_b, Some(&seen_b.version)),
    );
    let outcomes = [&wrote_a, &wrote_b];
    assert_eq!(
        outcomes.iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one term raise succeeds: {wrote_a:?} / {wrote_b:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|r| matches!(r, Err(CoordinationError::Conflict { .. }))),
        "the other gets Conflict: {wrote_a:?} / {wrote_b:?}"
    );
    let winner = if wrote_a.is_ok() { &to_a } else { &to_b };
    let stored = c.read_topology().await.unwrap().unwrap();
    assert_eq!(&stored.value, winner);
    assert_eq!(stored.value.term, 2);

    // One renewal round later the Lease has one holder and only it still leads.
    let holder = lease_holder(&k).await;
    a.try_acquire_or_renew().await.unwrap();
    b.try_acquire_or_renew().await.unwrap();
    let leading: Vec<&str> = [("a", &a), ("b", &b)]
        .into_iter()
        .filter(|(_, c)| c.is_leader())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        leading.len(),
        1,
        "one leader after a renewal round: {leading:?}"
    );
    let leader = if a.is_leader() {
        k.name("a")
    } else {
        k.name("b")
    };
    assert_eq!(holder, Some(leader.clone()));
    assert_eq!(lease_holder(&k).await, Some(leader));
}

fn cluster(name: &str, selector: &[(&str, &str)]) -> ClusterConfig {
    ClusterConfig {
        name: name.to_owned(),
        api_addrs: vec!["http://127.0.0.1:8200".parse().unwrap()],
        nodes: Vec::new(),
        priority: 0,
        excluded: false,
        selector: selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

#[tokio::test]
async fn the_service_switch_points_the_selector_at_the_new_primary() {
    let k = test_client().await.unwrap();
    let name = k.name("vault-active");
    let services = Api::<Service>::namespaced(k.client.clone(), &k.namespace);
    let dc1 = cluster(
        "dc1",
        &[
            ("app.kubernetes.io/name", "openbao"),
            ("vault-dr/cluster", "dc1"),
            ("vault-dr/zone", "a"),
        ],
    );
    let dc2 = cluster(
        "dc2",
        &[
            ("app.kubernetes.io/name", "openbao"),
            ("vault-dr/cluster", "dc2"),
        ],
    );
    services
        .create(
            &PostParams::default(),
            &Service {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    selector: Some(dc1.selector.clone()),
                    ports: Some(vec![ServicePort {
                        name: Some("api".into()),
                        port: 8200,
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            },
        )
        .await
        .unwrap();

    let switch = KubernetesServiceSwitch::new(k.client.clone(), k.namespace.clone(), name.clone());
    let said = switch.switch(&dc2, 2).await.unwrap();
    assert!(
        said.contains("now selects") && said.contains("dc2"),
        "{said}"
    );
    let selector = services.get(&name).await.unwrap().spec.unwrap().selector;
    // Exactly dc2's labels: dc1's extra zone label is gone too.
    assert_eq!(selector, Some(dc2.selector.clone()));
    // The ports were left alone by the merge patch.
    let ports = services
        .get(&name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports
        .unwrap();
    assert_eq!(ports[0].port, 8200);

    // Idempotent: a retry after a crash changes nothing and says so.
    let again = switch.switch(&dc2, 2).await.unwrap();
    assert!(again.contains("already selects"), "{again}");
    assert_eq!(
        services.get(&name).await.unwrap().spec.unwrap().selector,
        Some(dc2.selector.clone())
    );
    // And back.
    switch.switch(&dc1, 3).await.unwrap();
    assert_eq!(
        services.get(&name).await.unwrap().spec.unwrap().selector,
        Some(dc1.selector.clone())
    );

    // Two switches that changed something, two patches: the idempotent retry only read.
    if let Some(fake) = k.fake() {
        let patches = fake
            .calls()
            .into_iter()
            .filter(|c| c.resource == "services" && c.verb == "patch")
            .count();
        assert_eq!(patches, 2, "the idempotent retry must not patch");
    }
    // A planned switchover cuts traffic first: the Service selects a label no pod carries, and
    // the next switch replaces it whole.
    let cut = switch.cut(5).await.unwrap();
    assert!(cut.contains("now selects") && cut.contains("cut"), "{cut}");
    assert_eq!(
        services.get(&name).await.unwrap().spec.unwrap().selector,
        Some(std::collections::BTreeMap::from([(
            vault_dr_coordinator::traffic::kubernetes::CUT_LABEL.to_owned(),
            "5".to_owned()
        )]))
    );
    switch.switch(&dc2, 5).await.unwrap();
    assert_eq!(
        services.get(&name).await.unwrap().spec.unwrap().selector,
        Some(dc2.selector.clone())
    );
    let missing =
        KubernetesServiceSwitch::new(k.client.clone(), k.namespace.clone(), k.name("nope"));
    let err = missing.switch(&dc2, 4).await.unwrap_err();
    assert!(err.0.contains("cannot read service"), "{err}");
}

fn record() -> FailoverRecord {
    FailoverRecord {
        id: FailoverRecord::id_for(4, "dc1", "dc2"),
        term: 4,
        from: "dc1".into(),
        to: "dc2".into(),
        planned: false,
        reason: "primary dc1 sealed".into(),
        decided_at: chrono::Utc::now(),
        table: CandidateTable {
            at: chrono::Utc::now(),
            candidates: Vec::new(),
            winner: Some("dc2".into()),
        },
        steps: Vec::new(),
        status: FailoverStatus::InProgress,
        loss: None,
    }
}

#[tokio::test]
async fn every_failover_step_writes_an_event_on_the_topology_configmap() {
    let k = test_client().await.unwrap();
    let events = KubernetesEvents::new(
        k.client.clone(),
        k.namespace.clone(),
        k.name(TOPOLOGY),
        "coord-0",
    )
    .unwrap();
    let r = record();
    for step in Step::ALL {
        events.started(&r, step);
        let error = (step == Step::Verified).then_some("canary read returned 403");
        events.finished(&r, step, 0.25, error);
    }
    events.flush().await;

    let written: Vec<Event> = Api::<Event>::namespaced(k.client.clone(), &k.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(k.name(TOPOLOGY).as_str()))
        .collect();
    assert_eq!(written.len(), 2 * Step::ALL.len(), "{written:#?}");
    for e in &written {
        assert_eq!(e.reason.as_deref(), Some(EVENT_REASON));
        assert_eq!(e.involved_object.kind.as_deref(), Some("ConfigMap"));
        assert_eq!(
            e.involved_object.namespace.as_deref(),
            Some(k.namespace.as_str())
        );
        let msg = e.message.as_deref().unwrap_or_default();
        assert!(
            msg.contains("from dc1 to dc2, term 4") && msg.contains("failover 4-dc1-dc2"),
            "{msg}"
        );
    }
    for step in Step::ALL {
        let named: Vec<&Event> = written
            .iter()
            .filter(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.contains(&format!("step {step} ")))
            })
            .collect();
        assert_eq!(named.len(), 2, "started and finished for {step}");
    }
    let warnings: Vec<&Event> = written
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("step verified failed") && m.contains("403"))
    );
}

fn call(verb: &str, group: &str, resource: &str, name: Option<&str>) -> Call {
    Call {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        name: name.map(str::to_owned),
        namespace: Some("default".into()),
    }
}

/// The fake itself, over raw HTTP: status codes, Status reasons, versions, merge patch, and
/// the recorded RBAC verbs.
#[tokio::test]
async fn the_fake_apiserver_answers_like_kubernetes_and_records_rbac_verbs() {
    let fake = FakeApiServer::start().await.unwrap();
    let http = vault_dr_common::http::client_builder().build().unwrap();
    let base = format!("{}/api/v1/namespaces/default/configmaps", fake.url());
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "t" }, "data": { "a": "1", "b": "2" }
    });
    let created = http.post(&base).json(&cm).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let rv1: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let again = http.post(&base).json(&cm).send().await.unwrap();
    assert_eq!(again.status(), 409);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["kind"], "Status");
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(again["code"], 409);

    let missing = http.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(missing["reason"], "NotFound");

    let mut replaced = created.clone();
    replaced["data"]["a"] = "3".into();
    let put = http
        .put(format!("{base}/t"))
        .json(&replaced)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put: serde_json::Value = put.json().await.unwrap();
    let rv2: u64 = put["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    // The same body again carries rv1, now stale.
    let stale = http
        .put(format!("{base}/t"))
        .json(&replaced)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let stale: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(stale["reason"], "Conflict");

    let patched = http
        .patch(format!("{base}/t"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"data":{"b":null,"c":"4"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: serde_json::Value = patched.json().await.unwrap();
    assert_eq!(patched["data"], serde_json::json!({ "a": "3", "c": "4" }));
    assert_eq!(patched["metadata"]["uid"], created["metadata"]["uid"]);
    let rv3: u64 = patched["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv3 > rv2);
    // A merge patch carrying an old resourceVersion is a precondition that fails.
    let conditional = http
        .patch(format!("{base}/t"))
        .header("content-type", "application/merge-patch+json")
        .body(format!(
            r#"{{"metadata":{{"resourceVersion":"{rv2}"}},"data":{{"d":"5"}}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), 409);

    let list: serde_json::Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let watch = http.get(format!("{base}?watch=true")).send().await.unwrap();
    assert_eq!(watch.status(), 200);
    let deleted = http.delete(format!("{base}/t")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        http.get(format!("{base}/t")).send().await.unwrap().status(),
        404
    );

    // Lease through kube: the coordination group is recorded with its name.
    let leases = Api::<Lease>::namespaced(fake.client().unwrap(), "default");
    assert!(leases.get_opt("l").await.unwrap().is_none());
    let patch = serde_json::json!({ "spec": { "holderIdentity": "x" } });
    let err = leases
        .patch("l", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));

    assert_eq!(
        fake.calls(),
        vec![
            call("create", "", "configmaps", None),
            call("create", "", "configmaps", None),
            call("get", "", "configmaps", Some("nope")),
            call("update", "", "configmaps", Some("t")),
            call("update", "", "configmaps", Some("t")),
            call("patch", "", "configmaps", Some("t")),
            call("patch", "", "configmaps", Some("t")),
            call("list", "", "configmaps", None),
            call("watch", "", "configmaps", None),
            call("delete", "", "configmaps", Some("t")),
            call("get", "", "configmaps", Some("t")),
            call("get", "coordination.k8s.io", "leases", Some("l")),
            call("patch", "coordination.k8s.io", "leases", Some("l")),
        ]
    );
}

/// Every request the coordinator makes is one the chart's Role must allow: this pins the set.
#[tokio::test]
async fn the_kubernetes_backend_uses_only_these_verbs() {
    let fake = FakeApiServer::start().await.unwrap();
    let client = fake.client().unwrap();
    let lease = Duration::from_secs(5);
    let c = KubernetesCoordination::new(
        client.clone(),
        "default",
        LEASE,
        TOPOLOGY,
        "coord-0",
        lease,
        Duration::from_secs(1),
    );
    assert!(c.try_acquire_or_renew().await.unwrap()); // get 404, create
    assert!(c.try_acquire_or_renew().await.unwrap()); // get, update (conditional)
    let t = c
        .write_topology(&Topology::initial("dc1"), None)
        .await
        .unwrap();
    c.write_topology(&t.value, Some(&t.version)).await.unwrap();
    c.read_topology().await.unwrap();
    c.lease().await.unwrap();
    c.release().await.unwrap(); // get, update
    let mut verbs: Vec<(String, String, String)> = fake
        .calls()
        .into_iter()
        .map(|c| (c.group, c.resource, c.verb))
        .collect();
    verbs.sort();
    verbs.dedup();
    let expected: Vec<(String, String, String)> = [
        ("", "configmaps", "create"),
        ("", "configmaps", "get"),
        ("", "configmaps", "update"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"),
    ]
    .iter()
    .map(|(g, r, v)| ((*g).into(), (*r).into(), (*v).into()))
    .collect();
    assert_eq!(verbs, expected);
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.namespace.as_deref() == Some("default")
                && matches!(c.name.as_deref(), None | Some(LEASE) | Some(TOPOLOGY)))
    );
    // The Lease reads as kubectl shows it.
    let stored = fake
        .object("coordination.k8s.io", "leases", "default", LEASE)
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "");
    let _ = c.try_acquire_or_renew().await.unwrap();
    let stored = fake
        .object("coordination.k8s.io", "leases", "default", LEASE)
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "coord-0");
    assert_eq!(stored["spec"]["leaseDurationSeconds"], 5);
}

/// One forced takeover of [`the_lease_names_every_replica_that_acts_across_20_forced_takeovers`].
#[derive(Debug, Clone, Copy)]
enum Takeover {
    /// kill -9: the leader's loop ends, it neither renews nor releases; a new process (a new
    /// instance) starts in its place.
    Kill,
    /// SIGSTOP past the lease, then SIGCONT: the same instance renews again, too late.
    Stop,
    /// An orderly shutdown: `release`, then it competes again.
    Release,
}

/// Samples every 50 ms, across 20 forced takeovers (kill, stop past the lease, release, in
/// turn), which replicas act (`is_leader`, what gates every side effect) and which the Lease
/// names. A sample is `acting` before the Lease GET, the holder, `acting` after it; a replica
/// that acts both before and after while the Lease names another is a violation. A replica
/// that starts or stops acting during the GET's round trip is not counted: that is the one
/// round trip around a handover the issue allows to exclude. Set `VAULT_DR_TEST_STRESS=1` to
/// run it under `stress-ng --cpu 2` (both cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_names_every_replica_that_acts_across_20_forced_takeovers() {
    let k = Arc::new(test_client().await.unwrap());
    let (lease, renew) = (Duration::from_secs(2), Duration::from_millis(500));
    let stress_log = tempfile::NamedTempFile::new().unwrap();
    let _stress = std::env::var("VAULT_DR_TEST_STRESS")
        .is_ok_and(|v| v == "1")
        .then(|| {
            let program = std::env::var_os("PATH")
                .and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("stress-ng"))
                        .find(|p| p.exists())
                })
                .expect("stress-ng on PATH (scripts/setup.sh installs it)");
            // Its workers are in the guard's process group: all go when it is dropped.
            vault_dr_tests::lab::process::ChildGuard::spawn(
                "stress-ng",
                &program,
                &[
                    "--cpu".into(),
                    "2".into(),
                    "--timeout".into(),
                    "180s".into(),
                ],
                stress_log.path(),
            )
            .unwrap()
        });
    let ids = ["coord-0", "coord-1", "coord-2"];
    let cs: Arc<std::sync::Mutex<Vec<Arc<KubernetesCoordination>>>> =
        Arc::new(std::sync::Mutex::new(
            ids.iter()
                .map(|id| coordinator(&k, k.client.clone(), id, lease, renew))
                .collect(),
        ));
    let current =
        |cs: &std::sync::Mutex<Vec<Arc<KubernetesCoordination>>>| cs.lock().unwrap().clone();
    let mut loops: Vec<Option<JoinHandle<()>>> = current(&cs)
        .into_iter()
        .map(|c| Some(renew_loop(c)))
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (k, cs, done) = (k.clone(), cs.clone(), done.clone());
        let names: Vec<String> = ids.iter().map(|id| k.name(id)).collect();
        async move {
            let (mut samples, mut violations, mut excluded) = (0u32, Vec::new(), 0u32);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !done.load(Ordering::SeqCst) {
                tick.tick().await;
                let before = leaders(&cs.lock().unwrap());
                // No Lease yet (before the first election) names nobody.
                let holder = Api::<Lease>::namespaced(k.client.clone(), &k.namespace)
                    .get_opt(&k.name(LEASE))
                    .await
                    .unwrap()
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity);
                let after = leaders(&cs.lock().unwrap());
                samples += 1;
                if before != after {
                    excluded += 1;
                }
                for i in before.iter().filter(|i| after.contains(i)) {
                    if holder.as_deref() != Some(names[*i].as_str()) {
                        violations.push(format!(
                            "sample {samples}: {} acts, the Lease names {holder:?}",
                            names[*i]
                        ));
                    }
                }
            }
            (samples, violations, excluded)
        }
    });

    let kinds = [Takeover::Kill, Takeover::Stop, Takeover::Release];
    let mut moves = Vec::new();
    for n in 0..20 {
        let leader = wait_for_every(
            Duration::from_millis(20),
            "one leader",
            lease * 3,
            || async {
                match leaders(&cs.lock().unwrap()).as_slice() {
                    [one] => Some(*one),
                    _ => None,
                }
            },
        )
        .await;
        let kind = kinds[n % kinds.len()];
        let at = Instant::now();
        if let Some(task) = loops[leader].take() {
            task.abort();
        }
        let old = current(&cs)[leader].clone();
        match kind {
            Takeover::Kill => {}
            Takeover::Stop => {}
            Takeover::Release => old.release().await.unwrap(),
        }
        wait_for_every(
            Duration::from_millis(20),
            "another replica takes over",
            lease * 3,
            || async {
                leaders(&cs.lock().unwrap())
                    .iter()
                    .any(|i| *i != leader)
                    .then_some(())
            },
        )
        .await;
        moves.push((kind, at.elapsed()));
        // The old replica comes back: a new process after a kill, the same one otherwise.
        let back = match kind {
            Takeover::Kill => {
                let fresh = coordinator(&k, k.client.clone(), ids[leader], lease, renew);
                cs.lock().unwrap()[leader] = fresh.clone();
                fresh
            }
            Takeover::Stop | Takeover::Release => old,
        };
        loops[leader] = Some(renew_loop(back));
    }
    // A last stretch of steady leadership, then the verdict.
    tokio::time::sleep(lease).await;
    done.store(true, Ordering::SeqCst);
    let (samples, violations, excluded) = sampler.await.unwrap();
    for task in loops.into_iter().flatten() {
        task.abort();
    }
    let longest = moves.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "20 forced takeovers{}: {samples} samples, {excluded} excluded (leadership changed during the Lease GET), {} violations; longest takeover {:.2} s; {moves:?}",
        if _stress.is_some() {
            " under stress-ng --cpu 2"
        } else {
            ""
        },
        violations.len(),
        longest.as_secs_f64()
    );
    assert!(samples > 400, "sampled the whole run: {samples}");
    assert!(
        violations.is_empty(),
        "a replica acted while the Lease named another: {violations:#?}"
    );
}
