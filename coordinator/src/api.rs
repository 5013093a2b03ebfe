//! The coordinator's HTTP API: agent reports in, topology, clusters, decisions and failover
//! history out, plus `/metrics`, `/healthz` and `/readyz` (200 only on the leader, so a
//! Kubernetes Service in front of the replicas reaches the leader only).

use crate::config::Config;
use crate::coordination::Coordination;
use crate::metrics::Metrics;
use crate::state::{State, desired_state};
use crate::store::{Store, StoredReport};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use vault_dr_common::{Report, SCHEMA_VERSION};

/// Largest accepted report body.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub struct Service {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// In-memory state.
    pub state: Arc<State>,
    /// The record (buffered).
    pub store: Arc<dyn Store>,
    /// Lease and topology.
    pub coordination: Arc<dyn Coordination>,
    /// Metrics.
    pub metrics: Metrics,
    /// The registry `/metrics` renders.
    pub registry: prometheus::Registry,
}

/// Builds the router.
pub fn router(service: Service) -> Router {
    Router::new()
        .route(
            "/v1/reports",
            post(post_report).layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route("/v1/topology", get(get_topology))
        .route("/v1/clusters", get(get_clusters))
        .route("/v1/decisions/latest", get(get_decision))
        .route("/v1/failovers", get(get_failovers))
        .route("/v1/failovers/{id}", get(get_failover))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(get_ready))
        .with_state(service)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn authorised(service: &Service, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(presented) = value.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant-time over the bytes; the length comparison leaks only the length.
    presented
        .as_bytes()
        .ct_eq(service.config.token.expose().as_bytes())
        .into()
}

async fn post_report(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _timer = s.metrics.report_duration.start_timer();
    let reject = |reason: &str, status: StatusCode, message: String| {
        s.metrics
            .reports_rejected
            .with_label_values(&[reason])
            .inc();
        error(status, message)
    };
    if !authorised(&s, &headers) {
        return reject(
            "auth",
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return reject("body", e.status(), e.body_text()),
    };
    // Check the version first so that a newer agent gets a clear answer rather than a parse error.
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reject(
                "json",
                StatusCode::BAD_REQUEST,
                format!("malformed JSON: {e}"),
            );
        }
    };
    match value
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(v) => {
            return reject(
                "schema",
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "schema_version {v} is not supported (this coordinator speaks {SCHEMA_VERSION})"
                ),
            );
        }
        None => {
            return reject(
                "schema",
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema_version missing".into(),
            );
        }
    }
    let report: Report = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            return reject(
                "json",
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid report: {e}"),
            );
        }
    };
    if !s.coordination.is_leader() {
        return reject(
            "not_leader",
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator is not the leader".into(),
        );
    }
    let Some(topology) = s.state.topology() else {
        return reject(
            "not_leader",
            StatusCode::SERVICE_UNAVAILABLE,
            "topology not loaded yet".into(),
        );
    };
    let received_at = Utc::now();
    let cluster = report.cluster.clone();
    if let Err(r) = s
        .state
        .accept_report(&s.config, report.clone(), received_at)
    {
        let status = match r {
            crate::state::ReportRejection::Replay { .. } => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        return reject(r.label(), status, r.to_string());
    }
    s.metrics.reports_accepted.inc();
    if let Err(e) = s
        .store
        .put_report(&StoredReport {
            received_at,
            report,
        })
        .await
    {
        tracing::warn!("report not recorded: {e}");
    }
    Json(desired_state(&s.config, &topology, &cluster)).into_response()
}

/// `GET /v1/topology`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopologyResponse {
    /// This replica's id.
    pub id: String,
    /// Whether this replica is the leader.
    pub is_leader: bool,
    /// Current lease holder.
    pub leader: Option<String>,
    /// The topology (from the coordination backend).
    pub topology: Option<crate::topology::Topology>,
    /// Desired state of every cluster.
    pub desired: BTreeMap<String, vault_dr_common::DesiredState>,
}

async fn get_topology(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let leader = s.coordination.lease().await.ok().and_then(|l| l.holder);
    let topology = match s.coordination.read_topology().await {
        Ok(t) => t.map(|t| t.value),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let desired = topology
        .as_ref()
        .map(|t| {
            s.config
                .clusters
                .iter()
                .map(|c| (c.name.clone(), desired_state(&s.config, t, &c.name)))
                .collect()
        })
        .unwrap_or_default();
    Json(TopologyResponse {
        id: s.config.id.clone(),
        is_leader: s.coordination.is_leader(),
        leader,
        topology,
        desired,
    })
    .into_response()
}

/// `GET /v1/clusters`: the latest view the leader holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClustersResponse {
    /// The view (every cluster, its direct probe and the latest report of every node).
    pub view: crate::view::View,
    /// Report TTL of the policy, so clients can mark stale reports.
    pub report_ttl_seconds: f64,
    /// The candidate table of the latest decision, if any.
    pub decision: Option<crate::failover::detector::DecisionRecord>,
    /// Every secondary scored now: who could be promoted, in which order, or why not.
    pub candidates: crate::failover::scorer::CandidateTable,
}

async fn get_clusters(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let topology = match s.state.topology() {
        Some(t) => t,
        None => match s.coordination.read_topology().await {
            Ok(Some(t)) => t.value,
            _ => crate::topology::Topology::initial(s.config.initial_primary.clone()),
        },
    };
    let view = s.state.view(&s.config, &topology, Utc::now());
    let candidates = crate::failover::scorer::score(&view, &s.config.policy);
    Json(ClustersResponse {
        candidates,
        view,
        report_ttl_seconds: s.config.policy.report_ttl.as_secs_f64(),
        decision: s.state.decision(),
    })
    .into_response()
}

async fn get_decision(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if let Some(d) = s.state.decision() {
        return Json(d).into_response();
    }
    match s.store.latest_decision().await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no decision yet"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn get_failovers(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
    q: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorised(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let limit = match q {
        Ok(Query(l)) => l.limit.unwrap_or(20).clamp(1, 1000),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match s.store.failovers(limit).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn get_failover(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorised(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    match s.store.failover(&id).await {
        Ok(Some(f)) => Json(f).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no failover {id:?}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn get_metrics(axum::extract::State(s): axum::extract::State<Service>) -> Response {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&s.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_ready(axum::extract::State(s): axum::extract::State<Service>) -> Response {
    if s.coordination.is_leader() && s.state.topology().is_some() {
        (StatusCode::OK, "leader").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "follower").into_response()
    }
}
