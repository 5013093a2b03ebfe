//! Handler tests of `POST /v1/reports` and the read endpoints, through `router(service).oneshot`:
//! bad input gets a 4xx, is counted, and stores nothing; a property test throws random bytes and
//! random JSON at the endpoint without a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use vault_dr_common::{
    DesiredState, HostStats, LatencySummary, NodeState, ReplicationStatus, Report, Role,
    SCHEMA_VERSION, VaultStatus,
};
use vault_dr_coordinator::api::{Service, router};
use vault_dr_coordinator::config::{Config, ENV_TOKEN_FILE};
use vault_dr_coordinator::coordination::Coordination;
use vault_dr_coordinator::coordination::local::LocalCoordination;
use vault_dr_coordinator::metrics::Metrics;
use vault_dr_coordinator::model::topology::Topology;
use vault_dr_coordinator::state::State;
use vault_dr_coordinator::store::Store;
use vault_dr_coordinator::store::embedded::EmbeddedStore;

const TOKEN: &str = "test-agent-token";

struct Fixture {
    _dir: tempfile::TempDir,
    service: Service,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let env = BTreeMap::from([(
        ENV_TOKEN_FILE.to_owned(),
        dir.path().join("token").display().to_string(),
    )]);
    let config = Config::parse(
        r#"
        [[clusters]]
        name = "dc1"
        role = "primary"
        api_addrs = ["http://127.0.0.1:9"]
        nodes = ["dc1-0"]
        [[clusters]]
        name = "dc2"
        api_addrs = ["http://127.0.0.1:9"]
        nodes = ["dc2-0"]
        "#,
        dir.path(),
        &env,
    )
    .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.sqlite"), Duration::from_secs(3600)).unwrap(),
    );
    store.init().await.unwrap();
    let coordination: Arc<dyn Coordination> = Arc::new(LocalCoordination::new(
        dir.path().join("c.json"),
        "test",
        Duration::from_secs(30),
    ));
    assert!(coordination.try_acquire_or_renew().await.unwrap());
    let state = Arc::new(State::default());
    state.set_topology(Topology::initial("dc1"));
    let service = Service {
        config: Arc::new(config),
        state,
        store,
        coordination,
        metrics,
        registry,
        executor: None,
    };
    Fixture { _dir: dir, service }
}

fn report(cluster: &str, node: &str, seq: u64) -> Report {
    Report {
        schema_version: SCHEMA_VERSION,
        cluster: cluster.into(),
        node: node.into(),
        seq,
        agent_started_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        sent_at: chrono::Utc::now(),
        agent_version: "test".into(),
        vault: VaultStatus {
            state: NodeState::Active,
            last_probe_ms: Some(1.0),
            latency: LatencySummary::default(),
            recent: Default::default(),
            version: None,
            cluster_id: None,
            cluster_name: None,
            raft_applied_index: Some(10),
            raft_commit_index: Some(10),
            autopilot_healthy: None,
            last_error: None,
        },
        host: HostStats::default(),
        replication: ReplicationStatus::default(),
        primary_probe: None,
        seen_term: 0,
        applied_term: 0,
    }
}

async fn post(
    service: &Service,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/v1/reports").header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(service.clone())
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn rejected(service: &Service, reason: &str) -> u64 {
    service
        .metrics
        .reports_rejected
        .with_label_values(&[reason])
        .get()
}

#[tokio::test]
async fn a_valid_report_is_stored_and_answered_with_the_desired_state() {
    let f = fixture().await;
    let body = serde_json::to_vec(&report("dc2", "dc2-0", 1)).unwrap();
    let (status, json) = post(&f.service, Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let desired: DesiredState = serde_json::from_value(json).unwrap();
    assert_eq!(desired.role, Role::Secondary);
    assert_eq!(desired.primary, "dc1");
    assert_eq!(desired.term, 1);
    assert_eq!(
        desired.primary_api_addr.unwrap().as_str(),
        "http://127.0.0.1:9/"
    );
    assert_eq!(f.service.state.latest_reports().len(), 1);
    assert_eq!(f.service.metrics.reports_accepted.get(), 1);
}

#[tokio::test]
async fn bad_reports_get_a_4xx_are_counted_and_store_nothing() {
    let f = fixture().await;
    let s = &f.service;
    let good = serde_json::to_vec(&report("dc2", "dc2-0", 1)).unwrap();
    // (what, token, body, expected status, rejection reason)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "auth",
        ),
        (
            "wrong token",
            Some("nope"),
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "auth",
        ),
        (
            "prefix of the token",
            Some("test-agent"),
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "auth",
        ),
        (
            "malformed JSON",
            Some(TOKEN),
            b"{\"schema_version\": 1,".to_vec(),
            StatusCode::BAD_REQUEST,
            "json",
        ),
        (
            "oversized body",
            Some(TOKEN),
            vec![b' '; 65 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
        (
            "unknown schema_version",
            Some(TOKEN),
            serde_json::to_vec(&{
                let mut v = serde_json::to_value(report("dc2", "dc2-0", 1)).unwrap();
                v["schema_version"] = 99.into();
                v
            })
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema",
        ),
        (
            "unknown cluster",
            Some(TOKEN),
            serde_json::to_vec(&report("dc9", "dc9-0", 1)).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_cluster",
        ),
        (
            "unknown node",
            Some(TOKEN),
            serde_json::to_vec(&report("dc2", "dc2-7", 1)).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_node",
        ),
    ];
    for (name, token, body, want, reason) in cases {
        let before = rejected(s, reason);
        let (status, json) = post(s, token, body).await;
        assert_eq!(status, want, "{name}: {json}");
        assert_eq!(
            rejected(s, reason),
            before + 1,
            "{name} must be counted as {reason}"
        );
    }
    assert!(s.state.latest_reports().is_empty(), "nothing may be kept");
    assert!(
        s.store.latest_reports().await.unwrap().is_empty(),
        "nothing may be stored"
    );
    assert_eq!(s.metrics.reports_accepted.get(), 0);
}

#[tokio::test]
async fn a_replayed_report_is_refused_with_409() {
    let f = fixture().await;
    let body = serde_json::to_vec(&report("dc2", "dc2-0", 5)).unwrap();
    assert_eq!(
        post(&f.service, Some(TOKEN), body.clone()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post(&f.service, Some(TOKEN), body).await.0,
        StatusCode::CONFLICT
    );
    let older = serde_json::to_vec(&report("dc2", "dc2-0", 4)).unwrap();
    assert_eq!(
        post(&f.service, Some(TOKEN), older).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(rejected(&f.service, "replay"), 2);
    assert_eq!(f.service.state.latest_reports()[0].report.seq, 5);
}

#[tokio::test]
async fn a_follower_refuses_reports_and_is_not_ready() {
    let f = fixture().await;
    f.service.coordination.release().await.unwrap();
    let body = serde_json::to_vec(&report("dc2", "dc2-0", 1)).unwrap();
    assert_eq!(
        post(&f.service, Some(TOKEN), body).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let resp = router(f.service.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn read_endpoints_need_the_token() {
    let f = fixture().await;
    for path in [
        "/v1/topology",
        "/v1/clusters",
        "/v1/decisions/latest",
        "/v1/failovers",
    ] {
        let resp = router(f.service.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let resp = router(f.service.clone())
            .oneshot(
                Request::get(path)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(
            resp.status() == StatusCode::OK || resp.status() == StatusCode::NOT_FOUND,
            "{path}: {}",
            resp.status()
        );
    }
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_and_never_store(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = fixture().await;
            let (status, _) = post(&f.service, Some(TOKEN), bytes).await;
            prop_assert!(status.is_client_error(), "status {status}");
            prop_assert!(f.service.state.latest_reports().is_empty());
            Ok(())
        })?;
    }

    #[test]
    fn random_json_never_panics_and_never_stores(mut value in arbitrary_json(), keep_version in any::<bool>()) {
        if keep_version && let Some(obj) = value.as_object_mut() {
            obj.insert("schema_version".into(), SCHEMA_VERSION.into());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = fixture().await;
            let (status, _) = post(&f.service, Some(TOKEN), serde_json::to_vec(&value).unwrap()).await;
            prop_assert!(status.is_client_error(), "status {status}");
            prop_assert!(f.service.state.latest_reports().is_empty());
            Ok(())
        })?;
    }
}
