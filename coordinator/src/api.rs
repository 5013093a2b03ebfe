//! The coordinator's HTTP API: agent reports in, topology, clusters, decisions and failover
//! history out, planned switchovers (`POST /v1/switchover`, leader only), plus `/metrics`,
//! `/healthz` and `/readyz` (200 only on the leader, so a Kubernetes Service in front of the
//! replicas reaches the leader only).

use crate::config::Config;
use crate::coordination::{Coordination, CoordinationError};
use crate::failover::executor::Executor;
use crate::metrics::Metrics;
use crate::model::{Topology, Versioned};
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

/// How long a report's body may take to arrive once its headers are in.
pub const REPORT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest accepted switchover request body.
pub const MAX_SWITCHOVER_BYTES: usize = 4 * 1024;

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
    /// The failover executor, with which `POST /v1/switchover` begins a planned switchover
    /// (`None`: this service takes no switchover, e.g. a report-intake test).
    pub executor: Option<Executor>,
}

impl Service {
    /// Reads the topology from the coordination backend, writing the initial one (the
    /// configured primary in term 1) when there is none yet, and caches it. With
    /// [`Service::reload_topology`] the only writer of the cached topology that `/readyz`,
    /// desired states and views read.
    pub async fn load_topology(&self) -> Result<Versioned<Topology>, CoordinationError> {
        let t = match self.coordination.read_topology().await? {
            Some(t) => t,
            None => {
                let initial = Topology::initial(self.config.initial_primary.clone());
                match self.coordination.write_topology(&initial, None).await {
                    Ok(t) => {
                        tracing::info!(
                            "initialised topology: {} is primary in term 1",
                            initial.primary
                        );
                        t
                    }
                    // Another replica initialised it first: read theirs.
                    Err(CoordinationError::Conflict { .. }) => {
                        self.coordination.read_topology().await?.ok_or_else(|| {
                            CoordinationError::Unavailable("topology vanished".into())
                        })?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.state.set_topology(t.value.clone());
        Ok(t)
    }

    /// [`Service::load_topology`] after a step changed the topology; a failed read is logged
    /// and the next tick reads again.
    pub async fn reload_topology(&self) {
        if let Err(e) = self.load_topology().await {
            tracing::warn!("topology not reloaded: {e}");
        }
    }
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
        .route(
            "/v1/switchover",
            post(post_switchover).layer(DefaultBodyLimit::max(MAX_SWITCHOVER_BYTES)),
        )
        .route(
            "/v1/pause",
            post(post_pause).layer(DefaultBodyLimit::max(MAX_SWITCHOVER_BYTES)),
        )
        .route(
            "/v1/resume",
            post(post_resume).layer(DefaultBodyLimit::max(MAX_SWITCHOVER_BYTES)),
        )
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
    body: axum::body::Body,
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
    // The token and the announced length are checked before a byte of the body is read, and the
    // body must arrive in time: a client cannot hold a connection open by announcing much and
    // sending little.
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return reject(
            "body",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a report is at most {MAX_REPORT_BYTES} bytes"),
        );
    }
    let body = match tokio::time::timeout(
        REPORT_BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_REPORT_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return reject(
                "body",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a report is at most {MAX_REPORT_BYTES} bytes"),
            );
        }
        Err(_) => {
            return reject(
                "body",
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    REPORT_BODY_TIMEOUT.as_secs()
                ),
            );
        }
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
    let mut desired = desired_state(&s.config, &topology, &cluster);
    // A planned switchover to this cluster is about to begin: no new restore meanwhile.
    desired.failover_in_progress |= s.state.is_held(&cluster);
    desired.primary_suspect = s.state.primary_suspect();
    Json(desired).into_response()
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
    pub topology: Option<crate::model::topology::Topology>,
    /// Desired state of every cluster.
    pub desired: BTreeMap<String, vault_dr_common::DesiredState>,
    /// Why this coordinator refuses to act (another coordinator group's stamp in a cluster,
    /// or a higher term there); `None` while it may act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusing: Option<String>,
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
        refusing: s.state.refusal().reason(),
    })
    .into_response()
}

/// `GET /v1/clusters`: the latest view the leader holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClustersResponse {
    /// The view (every cluster, its direct probe and the latest report of every node).
    pub view: crate::model::view::View,
    /// Report TTL of the policy, so clients can mark stale reports.
    pub report_ttl_seconds: f64,
    /// The candidate table of the latest decision, if any.
    pub decision: Option<crate::model::DecisionRecord>,
    /// Every secondary scored now: who could be promoted, in which order, or why not.
    pub candidates: crate::model::CandidateTable,
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
            _ => crate::model::topology::Topology::initial(s.config.initial_primary.clone()),
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

/// `POST /v1/pause` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Why (required, at most [`MAX_PAUSE_TEXT`] characters).
    pub reason: String,
    /// Who asks (at most [`MAX_PAUSE_TEXT`] characters; default "unknown").
    #[serde(default)]
    pub by: Option<String>,
    /// How long, as a humantime duration ("2h", "30m"), at most [`MAX_PAUSE`]; `None`:
    /// until `POST /v1/resume`.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
}

/// `POST /v1/resume` body (may be empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// Who asks.
    #[serde(default)]
    pub by: Option<String>,
}

/// The longest reason or name a pause takes.
pub const MAX_PAUSE_TEXT: usize = 500;
/// The longest pause with a duration (a longer one is a pause until resumed, said so).
pub const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// A request the API refuses: its status and the message of the `{"error": ...}` body.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The JSON body of an operator's request, or a 400 saying what it must look like.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    expected: &str,
) -> Result<T, Refused> {
    let body = body.map_err(|e| Refused(e.status(), e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| {
        Refused(
            StatusCode::BAD_REQUEST,
            format!("the body must be {expected}: {e}"),
        )
    })
}

/// The topology an operator's request acts on: 503 while it is unreadable or not made yet.
async fn current_topology(s: &Service) -> Result<Versioned<Topology>, Refused> {
    match s.coordination.read_topology().await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the topology is not initialised yet; retry in a second".into(),
        )),
        Err(e) => Err(Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// Writes an operator's change of `current`: 409 when the topology moved meanwhile.
async fn write_change(
    s: &Service,
    next: &Topology,
    current: &Versioned<Topology>,
) -> Result<(), Refused> {
    match s
        .coordination
        .write_topology(next, Some(&current.version))
        .await
    {
        Ok(_) => Ok(()),
        Err(CoordinationError::Conflict { .. }) => Err(Refused(
            StatusCode::CONFLICT,
            "the topology changed meanwhile; ask again".into(),
        )),
        Err(e) => Err(Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// The checks every pause or resume passes: the token, then leadership and the group.
fn maintenance_refused(s: &Service, headers: &HeaderMap) -> Option<Response> {
    if !authorised(s, headers) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
    }
    if let Some(why) = s.state.refusal().reason() {
        return Some(error(
            StatusCode::CONFLICT,
            format!("this coordinator refuses to act: {why}"),
        ));
    }
    if !s.coordination.is_leader() {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator is not the leader; send it to the leader",
        ));
    }
    None
}

/// A pause's text field, trimmed; empty or too long is the message of a 422 naming the field.
fn pause_text(field: &str, text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if t.chars().count() > MAX_PAUSE_TEXT {
        return Err(format!(
            "{field} is longer than {MAX_PAUSE_TEXT} characters"
        ));
    }
    Ok(t.to_owned())
}

/// `POST /v1/pause`: no automatic failover until the pause ends (its duration runs out or
/// `POST /v1/resume`). Leader only; refused while a failover is in progress (finish it first).
/// A new pause replaces the current one. Written into the topology by compare-and-swap.
async fn post_pause(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refused) = maintenance_refused(&s, &headers) {
        return refused;
    }
    let request: PauseRequest = match json_body(
        body,
        r#"{"reason": "...", "by": "...", "for": "2h"} (by and for optional)"#,
    ) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let reason = match pause_text("reason", &request.reason) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let by = match request.by.as_deref().map(|b| pause_text("by", b)) {
        Some(Ok(b)) => b,
        Some(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
        None => "unknown".to_owned(),
    };
    let duration = match request.duration.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() && d <= MAX_PAUSE => Some(d),
        Some(Ok(_)) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "for must be above 0 and at most 30 days (pause without it to pause until resumed)",
            );
        }
        Some(Err(e)) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("for is not a duration (\"2h\", \"30m\"): {e}"),
            );
        }
    };
    let current = match current_topology(&s).await {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    if let Some(f) = &current.value.failover {
        return error(
            StatusCode::CONFLICT,
            format!(
                "failover {} is in progress; pause once it has finished (a half-done failover is never held)",
                f.id
            ),
        );
    }
    let now = Utc::now();
    let mut next = current.value.clone();
    next.end_pause(now, format!("replaced by a pause by {by}"));
    let pause = crate::model::topology::Pause {
        by,
        reason,
        since: now,
        until: duration
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d),
        ended: None,
    };
    next.pause = Some(pause.clone());
    if let Err(r) = write_change(&s, &next, &current).await {
        return r.into_response();
    }
    s.metrics.paused.set(1);
    tracing::info!("{pause}: no automatic failover until it ends (detection goes on)");
    s.reload_topology().await;
    Json(json!({ "paused": true, "pause": pause })).into_response()
}

/// `POST /v1/resume`: ends the pause (idempotent: no pause is a 200 that says so).
async fn post_resume(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refused) = maintenance_refused(&s, &headers) {
        return refused;
    }
    let request: ResumeRequest = match body {
        Ok(b) if b.is_empty() => ResumeRequest::default(),
        body => match json_body(body, r#"empty or {"by": "..."}"#) {
            Ok(r) => r,
            Err(r) => return r.into_response(),
        },
    };
    let by = match request.by.as_deref().map(|b| pause_text("by", b)) {
        Some(Ok(b)) => b,
        Some(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
        None => "unknown".to_owned(),
    };
    let current = match current_topology(&s).await {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let now = Utc::now();
    let mut next = current.value.clone();
    if !next.end_pause(now, format!("resumed by {by}")) {
        return Json(json!({ "resumed": false, "message": "automatic failover was not paused" }))
            .into_response();
    }
    let ended = next.past_pauses.last().cloned();
    if let Err(r) = write_change(&s, &next, &current).await {
        return r.into_response();
    }
    s.metrics.paused.set(0);
    if let Some(p) = &ended {
        tracing::info!("pause ended: {p}; automatic failover is on again");
    }
    s.reload_topology().await;
    Json(json!({ "resumed": true, "pause": ended })).into_response()
}

/// `POST /v1/switchover` body: the cluster to make primary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// Name of the secondary to promote.
    pub to: String,
}

/// `POST /v1/switchover` answer (202): the failover that was begun.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchoverResponse {
    /// Journal id (`GET /v1/failovers/{id}` follows it).
    pub id: String,
    /// The term it establishes.
    pub term: u64,
    /// Current primary.
    pub from: String,
    /// Cluster being promoted.
    pub to: String,
    /// One sentence for the operator.
    pub message: String,
}

/// Begins a planned switchover to `to`, the operator's (`POST /v1/switchover`) or the
/// degraded-primary rule's (`automatic`, counted in the topology for
/// `policy.degraded.max_per_day` by the same compare-and-swap): the target finishes a restore
/// in flight before clients are cut and starts none, so that the write pause is one restore of
/// the final snapshot; then the term CAS, the journal, and a kick for the leader loop to run
/// the executor now.
pub async fn begin_switchover(
    s: &Service,
    executor: &crate::failover::executor::Executor,
    current: &Versioned<Topology>,
    to: &str,
    reason: &str,
    table: crate::model::CandidateTable,
    automatic: bool,
) -> Result<crate::model::FailoverRecord, crate::failover::executor::ExecError> {
    let since = Utc::now();
    s.state.hold(to);
    let waited = executor.quiesce(to, since).await;
    let mut current = current.clone();
    if automatic {
        current.value.note_automatic_switchover(Utc::now());
    }
    let begun = executor.begin(&current, to, reason, table, true).await;
    s.state.release();
    if let Some(w) = &waited {
        tracing::info!("switchover to {to}: {w}");
    }
    if let Ok(rec) = &begun {
        s.metrics.failovers_started.inc();
        s.metrics.failover_in_progress.set(1);
        s.reload_topology().await;
        s.state.kick();
        tracing::info!(
            failover = %rec.id,
            "{} switchover begun: {} -> {} in term {}",
            if automatic { "automatic" } else { "planned" },
            rec.from,
            rec.to,
            rec.term
        );
    }
    begun
}

async fn post_switchover(
    axum::extract::State(s): axum::extract::State<Service>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    use crate::failover::executor::ExecError;
    use crate::model::{Decision, SwitchoverRefusal};
    if !authorised(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let request: SwitchoverRequest = match json_body(body, r#"{"to": "<cluster>"}"#) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let to = request.to;
    if let Some(why) = s.state.refusal().reason() {
        return error(
            StatusCode::CONFLICT,
            format!("this coordinator refuses to act: {why}"),
        );
    }
    if !s.coordination.is_leader() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator is not the leader; send the switchover to the leader",
        );
    }
    let Some(executor) = s.executor.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the executor is not running yet",
        );
    };
    let current = match current_topology(&s).await {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let view = s.state.view(&s.config, &current.value, Utc::now());
    let (reason, table) = match crate::failover::detector::switchover(&view, &to, &s.config.policy)
    {
        Ok(Decision::Switchover { reason, table, .. }) => (reason, table),
        Ok(other) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected switchover decision: {other}"),
            );
        }
        Err(refusal) => {
            let status = match refusal {
                SwitchoverRefusal::UnknownCluster { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            return error(status, refusal.to_string());
        }
    };
    match begin_switchover(&s, &executor, &current, &to, &reason, table, false).await {
        Ok(rec) => (
                StatusCode::ACCEPTED,
                Json(SwitchoverResponse {
                    message: format!(
                        "switchover {} -> {} begun in term {}: client traffic is cut, {} restores a final snapshot of {} and is promoted",
                        rec.from, rec.to, rec.term, rec.to, rec.from
                    ),
                    id: rec.id,
                    term: rec.term,
                    from: rec.from,
                    to: rec.to,
                }),
            )
                .into_response(),
        Err(ExecError::NotLeader) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator lost the lease; send the switchover to the new leader",
        ),
        Err(e @ (ExecError::Conflict(_) | ExecError::Refused(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ ExecError::UnknownCluster(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ExecError::Coordination(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::local::LocalCoordination;
    use crate::failover::actions::test_util::Recorder;
    use crate::metrics::Metrics;
    use crate::model::test_util::synthetic::report;
    use crate::model::topology::Topology;
    use crate::store::embedded::EmbeddedStore;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tower::ServiceExt;

    const TOKEN: &str = "switchover-test-token";

    struct Fixture {
        _dir: tempfile::TempDir,
        service: Service,
        recorder: Arc<Recorder>,
    }

    async fn fixture(leader: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let env = BTreeMap::from([(
            crate::config::ENV_TOKEN_FILE.to_owned(),
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
            [[clusters]]
            name = "dc3"
            api_addrs = ["http://127.0.0.1:9"]
            nodes = ["dc3-0"]
            excluded = true
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
        let local = Arc::new(LocalCoordination::new(
            dir.path().join("c.json"),
            "test",
            Duration::from_secs(30),
        ));
        assert!(local.try_acquire_or_renew().await.unwrap());
        local
            .write_topology(&Topology::initial("dc1"), None)
            .await
            .unwrap();
        if !leader {
            local.release().await.unwrap();
        }
        let coordination: Arc<dyn Coordination> = local;
        let state = Arc::new(State::default());
        state.set_topology(Topology::initial("dc1"));
        let now = Utc::now();
        for c in ["dc1", "dc2", "dc3"] {
            let r = report(c, &format!("{c}-0"), now);
            state.accept_report(&config, r, now).unwrap();
        }
        let recorder = Recorder::new();
        let executor = Executor::new(
            "test",
            coordination.clone(),
            store.clone(),
            recorder.actions(),
            config.clusters.clone(),
        );
        let service = Service {
            config: Arc::new(config),
            state,
            store,
            coordination,
            metrics,
            registry,
            executor: Some(executor),
        };
        Fixture {
            _dir: dir,
            service,
            recorder,
        }
    }

    async fn switchover(
        service: &Service,
        token: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let req = Request::post("/v1/switchover")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = router(service.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn a_switchover_to_a_healthy_secondary_begins_a_planned_failover() {
        let f = fixture(true).await;
        let (status, body) = switchover(&f.service, TOKEN, r#"{"to":"dc2"}"#).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["id"], "2-dc1-dc2");
        assert_eq!(body["term"], 2);
        let t = f
            .service
            .coordination
            .read_topology()
            .await
            .unwrap()
            .unwrap()
            .value;
        let fo = t.failover.unwrap();
        assert!(fo.planned, "a switchover is a planned failover");
        assert_eq!(
            (fo.from.as_str(), fo.to.as_str(), t.term),
            ("dc1", "dc2", 2)
        );
        let rec = f
            .service
            .store
            .failover("2-dc1-dc2")
            .await
            .unwrap()
            .unwrap();
        assert!(
            rec.reason.contains("requested by the operator"),
            "{}",
            rec.reason
        );
        assert!(
            f.recorder.calls().is_empty(),
            "the API only decides; the leader loop runs the steps"
        );
        // A second request while it runs is refused.
        let (status, body) = switchover(&f.service, TOKEN, r#"{"to":"dc2"}"#).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body["error"].as_str().unwrap().contains("is in progress"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn bad_switchover_requests_get_a_4xx_with_a_sentence_and_change_nothing() {
        let f = fixture(true).await;
        let rows = [
            (
                TOKEN,
                r#"{"to":"dc1"}"#,
                StatusCode::CONFLICT,
                "already the primary",
            ),
            (
                TOKEN,
                r#"{"to":"nope"}"#,
                StatusCode::NOT_FOUND,
                "not a cluster",
            ),
            (TOKEN, r#"{"to":"dc3"}"#, StatusCode::CONFLICT, "excluded"),
            (
                TOKEN,
                r#"{"target":"dc2"}"#,
                StatusCode::BAD_REQUEST,
                "the body must be",
            ),
            (
                TOKEN,
                "not json",
                StatusCode::BAD_REQUEST,
                "the body must be",
            ),
            (
                "wrong",
                r#"{"to":"dc2"}"#,
                StatusCode::UNAUTHORIZED,
                "bearer token",
            ),
        ];
        for (token, body, want, words) in rows {
            let (status, answer) = switchover(&f.service, token, body).await;
            assert_eq!(status, want, "{body}: {answer}");
            let msg = answer["error"].as_str().unwrap_or_default();
            assert!(msg.contains(words), "{body}: {msg}");
        }
        let t = f
            .service
            .coordination
            .read_topology()
            .await
            .unwrap()
            .unwrap()
            .value;
        assert_eq!((t.term, t.failover.is_none()), (1, true));
    }

    #[tokio::test]
    async fn a_follower_refuses_a_switchover_with_503() {
        let f = fixture(false).await;
        let (status, body) = switchover(&f.service, TOKEN, r#"{"to":"dc2"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["error"].as_str().unwrap().contains("not the leader"),
            "{body}"
        );
    }
}
