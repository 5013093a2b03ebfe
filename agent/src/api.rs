//! The agent's HTTP API: `/healthz` (200 while the loops run), `/readyz` (200 once the first
//! probe finished), `/metrics` (Prometheus text), `GET /v1/report` (the latest report) and
//! `GET /v1/desired` (the kept desired state, 404 before any).

use crate::state::Shared;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::Arc;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Shared agent state.
    pub shared: Arc<Shared>,
    /// The registry `/metrics` renders.
    pub registry: Registry,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/report", get(report))
        .route("/v1/desired", get(desired))
        .with_state(state)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

async fn healthz(State(s): State<ApiState>) -> Response {
    if s.shared.is_running() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "loops not running\n")
    }
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.shared.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "first probe not finished\n",
        )
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => {
            tracing::warn!("cannot encode metrics: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

async fn report(State(s): State<ApiState>) -> Response {
    match s.shared.current_report() {
        Some(r) => Json(r).into_response(),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "first probe not finished\n",
        ),
    }
}

async fn desired(State(s): State<ApiState>) -> Response {
    match s.shared.desired() {
        Some(d) => Json(d).into_response(),
        None => text(StatusCode::NOT_FOUND, "no desired state received yet\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::state::Observation;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use vault_dr_common::{
        DesiredState, HostStats, LatencySummary, NodeState, ReplicationStatus, Report, Role,
        VaultStatus,
    };

    fn state() -> (ApiState, Metrics) {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        (
            ApiState {
                shared: Arc::new(Shared::new("dc1", "n1")),
                registry,
            },
            metrics,
        )
    }

    async fn get(s: &ApiState, path: &str) -> (StatusCode, String) {
        let resp = router(s.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn observation() -> Observation {
        Observation {
            vault: VaultStatus {
                state: NodeState::Sealed,
                last_probe_ms: Some(2.0),
                latency: LatencySummary {
                    samples: 1,
                    p50_ms: 2.0,
                    p99_ms: 2.0,
                    error_ratio: 0.0,
                },
                recent: Default::default(),
                version: Some("2.7.2".into()),
                cluster_id: None,
                cluster_name: None,
                raft_applied_index: None,
                raft_commit_index: None,
                autopilot_healthy: None,
                last_error: None,
            },
            host: HostStats::default(),
            replication: ReplicationStatus::default(),
            primary_probe: None,
        }
    }

    #[tokio::test]
    async fn readiness_and_report_wait_for_the_first_probe() {
        let (s, _) = state();
        assert_eq!(get(&s, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            get(&s, "/v1/report").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.shared.set_observation(observation());
        assert_eq!(get(&s, "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(&s, "/v1/report").await;
        assert_eq!(status, StatusCode::OK);
        let r: Report = serde_json::from_str(&body).unwrap();
        assert_eq!(r.vault.state, NodeState::Sealed);
        assert_eq!((r.cluster.as_str(), r.node.as_str()), ("dc1", "n1"));
        assert_eq!(r.schema_version, vault_dr_common::SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn liveness_follows_the_loops() {
        let (s, _) = state();
        assert_eq!(get(&s, "/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        s.shared.set_running(true);
        assert_eq!(get(&s, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn desired_is_404_until_one_is_kept() {
        let (s, _) = state();
        assert_eq!(get(&s, "/v1/desired").await.0, StatusCode::NOT_FOUND);
        s.shared.offer_desired(DesiredState {
            term: 3,
            cluster: "dc1".into(),
            role: Role::Primary,
            primary: "dc1".into(),
            primary_api_addr: None,
            failover_in_progress: false,
            promotion: Default::default(),
            final_snapshot_from: None,
            primary_suspect: false,
            raft_formed_term: None,
            raft_recover_node: None,
            raft_formed_by: None,
            raft_handover: false,
        });
        let (status, body) = get(&s, "/v1/desired").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<DesiredState>(&body).unwrap().term, 3);
    }

    #[tokio::test]
    async fn metrics_render_the_one_hot_node_state() {
        let (s, m) = state();
        m.observe_vault(&observation().vault);
        let (status, body) = get(&s, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("vault_dr_agent_node_state{state=\"sealed\"} 1"),
            "{body}"
        );
        assert!(body.contains("vault_dr_agent_node_state{state=\"active\"} 0"));
        assert!(body.contains("vault_dr_agent_up 1"));
        assert!(body.contains("vault_dr_agent_report_send_failures_total{kind=\"decode\"} 0"));
        assert!(body.contains("vault_dr_agent_probe_duration_seconds_count 1"));
    }
}
