//! The agent against a fake coordinator (axum on 127.0.0.1:0) that answers 500, then
//! non-JSON, then a valid desired state: the agent keeps running, counts both failures by
//! kind, keeps the desired state and, told it is a secondary, probes the primary.

// Test code: a failed unwrap is a failed test (clippy.toml allows it only inside #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use url::Url;
use vault_dr_agent::Config;
use vault_dr_common::{DesiredState, NodeState, Report, Role};

mod support;

/// Every report received, with its `Authorization` header.
type Received = Arc<Mutex<Vec<(Option<String>, Report)>>>;

#[derive(Clone, Default)]
struct Fake {
    reports: Received,
    primary: Arc<Mutex<Option<Url>>>,
}

async fn reports(
    State(f): State<Fake>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let report: Report = serde_json::from_str(&body).expect("the agent sends a valid report");
    let n = {
        let mut r = f.reports.lock().unwrap();
        r.push((auth, report));
        r.len()
    };
    match n {
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        2 => (StatusCode::OK, "this is not JSON").into_response(),
        _ => {
            let desired = DesiredState {
                term: 4,
                cluster: "dc2".into(),
                role: Role::Secondary,
                primary: "dc1".into(),
                primary_api_addr: f.primary.lock().unwrap().clone(),
                failover_in_progress: false,
                promotion: Default::default(),
                final_snapshot_from: None,
                primary_suspect: false,
                raft_formed_term: None,
                raft_recover_node: None,
                raft_formed_by: None,
                raft_handover: false,
            };
            axum::Json(desired).into_response()
        }
    }
}

/// Stands in for the primary's health endpoint.
async fn primary_health() -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "initialized": true, "sealed": false, "standby": false, "version": "2.7.2",
        "cluster_name": "dr-dc1", "cluster_id": "abc"
    }))
}

fn metric(text: &str, series: &str) -> f64 {
    support::sample(text, series).unwrap_or_else(|| panic!("metric {series} not found in:\n{text}"))
}

#[tokio::test]
async fn failures_are_counted_and_the_desired_state_is_kept() {
    let fake = Fake::default();
    let coord = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coord_addr = coord.local_addr().unwrap();
    *fake.primary.lock().unwrap() = Some(Url::parse(&format!("http://{coord_addr}")).unwrap());
    let app = Router::new()
        .route("/v1/reports", post(reports))
        .route("/v1/sys/health", get(primary_health))
        .with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(coord, app).await });

    // The local Vault is a closed port: the agent must still report (as unreachable).
    let vault = support::closed_port();
    let mut config = Config::minimal("dc2", "n1", vault);
    config.interval = Duration::from_millis(100);
    config.coordinator = Some(support::coordinator(
        Url::parse(&format!("http://{coord_addr}")).unwrap(),
        "bearer-123",
    ));
    let agent = support::spawn(config).await;
    let agent_url = agent.url.clone();

    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let desired: DesiredState = loop {
        let r = http.get(format!("{agent_url}/v1/desired")).send().await;
        if let Ok(r) = r
            && r.status() == 200
        {
            break r.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no desired state kept within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(desired.term, 4);

    // The agent is alive and ready after the failures.
    assert_eq!(
        http.get(format!("{agent_url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{agent_url}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = http
        .get(format!("{agent_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "vault_dr_agent_report_send_failures_total{kind=\"status\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "vault_dr_agent_report_send_failures_total{kind=\"decode\"}"
        ),
        1.0
    );
    assert!(metric(&text, "vault_dr_agent_reports_sent_total") >= 1.0);
    assert_eq!(metric(&text, "vault_dr_agent_desired_term"), 4.0);
    assert_eq!(metric(&text, "vault_dr_agent_up"), 0.0);
    assert_eq!(
        metric(&text, "vault_dr_agent_node_state{state=\"unreachable\"}"),
        1.0
    );

    // Next reports carry the term and, as a secondary, the agent's probe of the primary.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probed = fake.reports.lock().unwrap().iter().any(|(_, r)| {
            r.seen_term == 4
                && r.primary_probe
                    .as_ref()
                    .is_some_and(|p| p.cluster == "dc1" && p.state == NodeState::Active)
        });
        if probed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report with the primary probe within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reports = fake.reports.lock().unwrap().clone();
    for (i, (auth, r)) in reports.iter().enumerate() {
        assert_eq!(auth.as_deref(), Some("Bearer bearer-123"));
        assert_eq!(r.seq, i as u64 + 1, "seq rises by one per report");
        assert_eq!(r.schema_version, vault_dr_common::SCHEMA_VERSION);
        assert_eq!(r.vault.state, NodeState::Unreachable);
    }

    agent.stop().await.unwrap().unwrap();
    server.abort();
}
