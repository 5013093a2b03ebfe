//! The write gate: the node's client address, served by the agent in front of the node's own
//! listener, forwarding a request only while this node may take writes.
//!
//! OpenBao 2.7 has no read-only or DR-secondary mode, and everything kept in storage (a
//! quota, a policy) is replaced by the next snapshot restore
//! (`../shared/reference/openbao-2.7-measured.md` §9 D): only the listener layout survives.
//! So the node listens where only its agent reaches it (`127.0.0.1` in the pod, see the
//! chart's examples) and the agent serves the address clients, the Service and the other
//! clusters use. The gate is **open** only while the coordinator's desired state says this
//! cluster is the primary *and* the promotion of that term is carried out on this node
//! ([`verdict`]); it starts **closed**, so a node that comes back (an old primary after a
//! failover, a secondary after a restore) serves no client before its agent has heard its
//! role. It fails closed: with no coordinator to ask, a restarted agent keeps it closed until
//! one answers, unless the operator starts it with `--gate-override open`.
//!
//! A closed gate still forwards the read-only endpoints that the coordinator, the other
//! agents, the raft join and the scrapers need ([`always_forwarded`]); every other request is
//! answered `503` with a JSON `errors` body that says why, the header `x-vault-dr-gate:
//! closed`, and is counted in `vault_dr_agent_gate_refused_total`.

use crate::metrics::Metrics;
use crate::state::Shared;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;
use vault_dr_common::{DesiredState, NodeState, Role};

pub use vault_dr_common::http::GATE_HEADER;
/// How long the gate waits for the node to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the gate's state is looked at for the log and the gauge (requests look at it
/// themselves, every time).
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

/// How often the gate looks at its certificate files for a change (cert-manager renewals).
pub const TLS_RELOAD_EVERY: Duration = Duration::from_secs(30);

/// What the operator configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    /// Where the gate listens: the node's client address.
    pub listen: SocketAddr,
    /// `--gate-override open`: forward everything whatever the role (an operator who knows
    /// no other cluster is primary, with every coordinator down).
    pub override_open: bool,
    /// Serve TLS with this certificate (`None`: plain HTTP).
    pub tls: Option<GateTls>,
}

/// The gate's certificate chain and key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTls {
    /// `--gate-tls-cert`.
    pub cert: std::path::PathBuf,
    /// `--gate-tls-key`.
    pub key: std::path::PathBuf,
}

/// Whether the gate forwards client requests, and why, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every request is forwarded.
    Open(String),
    /// Only [`always_forwarded`] requests are.
    Closed(String),
}

impl Verdict {
    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }

    /// The sentence.
    pub fn why(&self) -> &str {
        match self {
            Self::Open(w) | Self::Closed(w) => w,
        }
    }
}

/// The gate's rule. Open when the operator overrides it, or when this cluster is the primary
/// of the kept desired state and either this agent carried out that term (promoted, canary
/// written) or the node is an HA standby of a primary whose failover has finished (it only
/// forwards to its active node). Closed otherwise: no desired state yet, a secondary, or a
/// promotion not finished.
pub fn verdict(
    desired: Option<&DesiredState>,
    applied_term: u64,
    node: Option<NodeState>,
    override_open: bool,
) -> Verdict {
    if override_open {
        return Verdict::Open("the operator opened the gate (--gate-override open)".into());
    }
    let Some(d) = desired else {
        return Verdict::Closed(
            "no coordinator has told this agent its cluster's role yet (fail closed)".into(),
        );
    };
    match d.role {
        // One raft has one leader, and every node of it forwards a write there: while its
        // leadership moves, clients keep writing through whichever node they reach.
        _ if d.raft_handover && d.failover_in_progress => Verdict::Open(format!(
            "a handover inside one raft is in progress in term {} (to {}): this node forwards to the raft's leader",
            d.term, d.primary
        )),
        Role::Secondary => Verdict::Closed(format!(
            "cluster {} is a secondary in term {}; the primary is {}",
            d.cluster, d.term, d.primary
        )),
        Role::Primary if applied_term >= d.term => Verdict::Open(format!(
            "cluster {} is the primary in term {}",
            d.cluster, d.term
        )),
        Role::Primary
            if !d.failover_in_progress
                && node.is_some_and(|s| s.is_serving() && s != NodeState::Active) =>
        {
            Verdict::Open(format!(
                "cluster {} is the primary in term {}; this node is a standby",
                d.cluster, d.term
            ))
        }
        Role::Primary => Verdict::Closed(format!(
            "cluster {} becomes the primary in term {}; the promotion is not finished",
            d.cluster, d.term
        )),
    }
}

/// The requests a closed gate still forwards: read-only status (`sys/health`, `sys/leader`,
/// `sys/seal-status`, `sys/init`), metrics, the raft snapshot a secondary pulls (also from an
/// old primary whose traffic was cut for a switchover's final snapshot), the raft state reads,
/// the coordinator group's stamp (read with the DR token), the raft join handshake of a new
/// node, and a seal (a fence can only take a node further out of service). Exact paths under
/// the root namespace only.
pub fn always_forwarded(method: &Method, path: &str) -> bool {
    const READS: [&str; 9] = [
        "/v1/cubbyhole/vault-dr/group",
        "/v1/sys/health",
        "/v1/sys/leader",
        "/v1/sys/seal-status",
        "/v1/sys/init",
        "/v1/sys/metrics",
        "/v1/sys/storage/raft/snapshot",
        "/v1/sys/storage/raft/autopilot/state",
        "/v1/sys/storage/raft/configuration",
    ];
    const JOIN: [&str; 2] = [
        "/v1/sys/storage/raft/bootstrap/challenge",
        "/v1/sys/storage/raft/bootstrap/answer",
    ];
    let path = path.trim_end_matches('/');
    match *method {
        Method::GET | Method::HEAD => READS.contains(&path),
        Method::POST | Method::PUT => JOIN.contains(&path) || path == "/v1/sys/seal",
        _ => false,
    }
}

/// Whether a method is a read for the refusal counter's `kind` label.
fn kind(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" | "HEAD" | "OPTIONS" | "LIST" => "read",
        _ => "write",
    }
}

/// The gate of one node.
#[derive(Debug, Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    backend: Url,
    client: reqwest::Client,
    metrics: Metrics,
    override_open: bool,
    last: Arc<Mutex<Option<Verdict>>>,
}

impl Gate {
    /// A gate in front of the node at `backend`, forwarding with `client` (no overall
    /// timeout: a request takes as long as the node takes).
    pub fn new(
        shared: Arc<Shared>,
        backend: Url,
        client: reqwest::Client,
        metrics: Metrics,
        override_open: bool,
    ) -> Self {
        Self {
            shared,
            backend,
            client,
            metrics,
            override_open,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The verdict as of now.
    pub fn verdict(&self) -> Verdict {
        let node = self.shared.observation().map(|o| o.vault.state);
        verdict(
            self.shared.desired().as_ref(),
            self.shared.applied_term(),
            node,
            self.override_open,
        )
    }

    /// Logs every change of the verdict once and keeps `vault_dr_agent_gate_open` current.
    pub async fn watch(self) {
        let mut ticker = tokio::time::interval(WATCH_EVERY);
        let mut changes = self.shared.desired_changes();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = changes.changed() => {}
            }
            self.note(&self.verdict());
        }
    }

    /// Records `v` as the latest verdict: logs a change, sets the gauge.
    fn note(&self, v: &Verdict) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() == Some(v) {
            return;
        }
        match v {
            Verdict::Open(why) => tracing::info!(why = %why, "write gate open"),
            Verdict::Closed(why) => tracing::warn!(why = %why, "write gate closed"),
        }
        self.metrics.gate_open.set(i64::from(v.is_open()));
        *last = Some(v.clone());
    }

    /// The router: every request goes to [`forward`].
    pub fn router(self) -> Router {
        Router::new().fallback(forward).with_state(self)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// A Vault-style error answer: `{"errors": [message]}`.
fn refusal(status: StatusCode, gate: &'static str, message: String) -> Response {
    let body = serde_json::json!({ "errors": [message] }).to_string();
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            // The connection is closed after a refusal: a client that keeps its connection
            // alive would otherwise be refused on it forever, while a new connection goes
            // where the Service or the stable address points now (the new primary).
            (header::CONNECTION, HeaderValue::from_static("close")),
            (
                HeaderName::from_static(GATE_HEADER),
                HeaderValue::from_static(gate),
            ),
        ],
        body,
    )
        .into_response()
}

/// Forwards `req` to the node when the gate admits it; refuses it otherwise.
async fn forward(
    State(g): State<Gate>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let v = g.verdict();
    g.note(&v);
    if let Verdict::Closed(why) = &v
        && !always_forwarded(&method, &path)
    {
        g.metrics
            .gate_refused
            .with_label_values(&[kind(&method)])
            .inc();
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "closed",
            format!(
                "vault-dr: this node does not take client requests now: {why}; a write here \
                 would be lost at the next restore, send it to the primary"
            ),
        );
    }
    let mut url = g.backend.clone();
    url.set_path(&path);
    url.set_query(req.uri().query());
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    // The node sees the agent's address; it logs the client's when its listener trusts the
    // agent's (`x_forwarded_for_authorized_addrs`).
    if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.append(HeaderName::from_static("x-forwarded-for"), ip);
    }
    let sent = g
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                copy_headers(resp.headers(), h);
            }
            out.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| {
                    refusal(
                        StatusCode::BAD_GATEWAY,
                        "error",
                        format!("vault-dr: the node's answer could not be passed on: {e}"),
                    )
                })
        }
        Err(e) => refusal(
            StatusCode::BAD_GATEWAY,
            "error",
            format!(
                "vault-dr: the node at {} did not answer: {}",
                g.backend,
                vault_dr_common::http::error_chain(&e)
            ),
        ),
    }
}

/// Loads the gate's certificate and key for rustls (the workspace's ring provider).
pub async fn load_tls(tls: &GateTls) -> Result<axum_server::tls_rustls::RustlsConfig, String> {
    vault_dr_common::http::install_crypto_provider();
    axum_server::tls_rustls::RustlsConfig::from_pem_chain_file(&tls.cert, &tls.key)
        .await
        .map_err(|e| {
            format!(
                "cannot load the certificate {} and key {}: {e}",
                tls.cert.display(),
                tls.key.display()
            )
        })
}

/// Serves the gate on `listener` until the task is dropped: plain HTTP, or TLS with `tls`
/// (loaded by [`load_tls`]), whose files are reloaded when they change.
pub async fn serve(
    gate: Gate,
    listener: tokio::net::TcpListener,
    tls: Option<(GateTls, axum_server::tls_rustls::RustlsConfig)>,
) -> std::io::Result<()> {
    let app = gate
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => axum::serve(listener, app).await,
        Some((files, config)) => {
            tokio::spawn(reload_tls(files, config.clone()));
            axum_server::from_tcp_rustls(listener.into_std()?, config)?
                .serve(app)
                .await
        }
    }
}

/// Reloads the certificate whenever either file's modification time changes; a file that
/// cannot be loaded keeps the previous certificate and is logged.
async fn reload_tls(files: GateTls, config: axum_server::tls_rustls::RustlsConfig) {
    let stamp = |f: &GateTls| {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(&f.cert), m(&f.key))
    };
    let mut seen = stamp(&files);
    let mut ticker = tokio::time::interval(TLS_RELOAD_EVERY);
    loop {
        ticker.tick().await;
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match config.reload_from_pem_file(&files.cert, &files.key).await {
            Ok(()) => {
                tracing::info!(cert = %files.cert.display(), "write gate reloaded its TLS certificate")
            }
            Err(e) => {
                tracing::warn!(cert = %files.cert.display(), error = %e, "write gate kept its TLS certificate: the new files do not load")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_dr_common::PromotionMode;

    fn desired(role: Role, term: u64, in_progress: bool) -> DesiredState {
        DesiredState {
            term,
            cluster: "dc1".into(),
            role,
            primary: if role == Role::Primary { "dc1" } else { "dc2" }.into(),
            primary_api_addr: None,
            failover_in_progress: in_progress,
            promotion: PromotionMode::Complete,
            final_snapshot_from: None,
            primary_suspect: false,
            raft_formed_term: None,
            raft_recover_node: None,
            raft_formed_by: None,
            raft_handover: false,
        }
    }

    fn handover(mut d: DesiredState, in_progress: bool) -> DesiredState {
        d.raft_handover = in_progress;
        d.failover_in_progress = in_progress;
        d
    }

    #[test]
    fn the_gate_opens_only_on_a_primary_that_carried_out_its_term() {
        use NodeState::{Active, Sealed, Standby};
        let p = |t, ip| desired(Role::Primary, t, ip);
        let s = |t| desired(Role::Secondary, t, false);
        // (desired, applied term, node state, override) -> open?
        type Case = (Option<DesiredState>, u64, Option<NodeState>, bool, bool);
        let cases: Vec<Case> = vec![
            (None, 0, Some(Active), false, false),
            (None, 0, None, true, true),
            (Some(s(3)), 3, Some(Active), false, false),
            (Some(s(3)), 3, Some(Active), true, true),
            (Some(p(3, false)), 3, Some(Active), false, true),
            (Some(p(3, false)), 2, Some(Active), false, false),
            (Some(p(3, true)), 2, Some(Active), false, false),
            (Some(p(3, true)), 3, Some(Active), false, true),
            // A standby of the primary forwards to its active node once the failover is done.
            (Some(p(3, false)), 0, Some(Standby), false, true),
            (Some(p(3, true)), 0, Some(Standby), false, false),
            (Some(p(3, false)), 0, Some(Sealed), false, false),
            (Some(p(3, false)), 0, None, false, false),
            // A handover inside one raft: every node forwards to the raft's leader until it
            // is done, the old primary and the target alike; then the usual rule.
            (Some(handover(s(3), true)), 0, Some(Active), false, true),
            (
                Some(handover(p(3, true), true)),
                0,
                Some(Standby),
                false,
                true,
            ),
            (Some(handover(s(3), false)), 3, Some(Standby), false, false),
        ];
        for (d, applied, node, over, open) in cases {
            let v = verdict(d.as_ref(), applied, node, over);
            assert_eq!(
                v.is_open(),
                open,
                "{d:?} applied {applied} {node:?} {over}: {v:?}"
            );
        }
    }

    #[test]
    fn a_refusal_closes_the_connection_so_that_the_client_reconnects_where_traffic_points_now() {
        let r = refusal(StatusCode::SERVICE_UNAVAILABLE, "closed", "no".into());
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(r.headers()[GATE_HEADER], "closed");
    }

    #[test]
    fn a_closed_gate_says_why() {
        let v = verdict(Some(&desired(Role::Secondary, 4, false)), 4, None, false);
        assert_eq!(
            v.why(),
            "cluster dc1 is a secondary in term 4; the primary is dc2"
        );
        let v = verdict(None, 0, None, false);
        assert!(v.why().contains("fail closed"), "{v:?}");
    }

    #[test]
    fn a_closed_gate_forwards_only_status_snapshots_joins_and_seals() {
        let yes = [
            (Method::GET, "/v1/sys/health"),
            (Method::HEAD, "/v1/sys/health"),
            (Method::GET, "/v1/sys/leader"),
            (Method::GET, "/v1/sys/seal-status"),
            (Method::GET, "/v1/sys/storage/raft/snapshot"),
            (Method::GET, "/v1/sys/metrics"),
            (Method::GET, "/v1/cubbyhole/vault-dr/group"),
            (Method::POST, "/v1/sys/storage/raft/bootstrap/challenge"),
            (Method::PUT, "/v1/sys/seal"),
        ];
        let no = [
            (Method::POST, "/v1/secret/data/x"),
            (Method::PUT, "/v1/secret/data/x"),
            (Method::GET, "/v1/secret/data/x"),
            (Method::POST, "/v1/sys/storage/raft/snapshot"),
            (Method::POST, "/v1/sys/storage/raft/snapshot-force"),
            (Method::POST, "/v1/sys/unseal"),
            (Method::GET, "/v1/ns1/sys/health/../../secret/data/x"),
            (Method::DELETE, "/v1/sys/seal"),
            (Method::GET, "/v1/auth/token/lookup-self"),
            (Method::PUT, "/v1/cubbyhole/vault-dr/group"),
            (Method::GET, "/v1/cubbyhole/vault-dr/canary"),
            (Method::POST, "/v1/auth/approle/login"),
        ];
        for (m, p) in yes {
            assert!(always_forwarded(&m, p), "{m} {p}");
        }
        for (m, p) in no {
            assert!(!always_forwarded(&m, p), "{m} {p}");
        }
    }
}
