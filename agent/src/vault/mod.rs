//! A small HTTP client for the Vault/OpenBao API: health, leader (raft indices), autopilot
//! state and raw status reads for the replication parsers. The token (from a file) goes in
//! `X-Vault-Token` and only to the local node and, for a snapshot pull, to the primary; peers
//! are probed without it.
//!
//! [`raft`] holds the snapshot API (download, restore, applied index) and [`token`] what is
//! done with the DR token (renewal, lookup, the promotion canary): the snapshot backend's
//! Vault calls, so that `replication/` holds only decisions and their orchestration.

pub mod health;
pub mod raft;
pub mod token;

use crate::config::VaultConfig;
use crate::error::{Error, Result, request_error_kind};
use serde::Deserialize;
use std::time::{Duration, Instant};
use url::Url;
use vault_dr_common::{NodeState, Secret};

pub use health::{Health, classify};

/// Result of one health probe, with its latency.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthProbe {
    /// The classified answer (state `unreachable`, kind set, when there was none).
    pub health: Health,
    /// Time to the full answer; `None` when there was no answer.
    pub latency: Option<Duration>,
}

/// Raft indices from `GET sys/leader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Leader {
    /// Raft applied index.
    #[serde(default)]
    pub raft_applied_index: Option<u64>,
    /// Raft committed index.
    #[serde(default)]
    pub raft_committed_index: Option<u64>,
    /// Whether the answering node is the active one.
    #[serde(default)]
    pub is_self: bool,
    /// The active node's API address as the node knows it (empty when none).
    #[serde(default)]
    pub leader_address: String,
}

/// `GET <base>/v1/sys/leader` (unauthenticated) within [`POLL_TIMEOUT`].
pub async fn leader_of(http: &reqwest::Client, base: &Url) -> Result<Leader> {
    const WHAT: &str = "sys/leader";
    let resp = http
        .get(endpoint(base, WHAT))
        .timeout(POLL_TIMEOUT)
        .send()
        .await
        .map_err(|source| Error::VaultRequest { what: WHAT, source })?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(Error::VaultStatus { what: WHAT, status });
    }
    let body = resp
        .bytes()
        .await
        .map_err(|source| Error::VaultRequest { what: WHAT, source })?;
    serde_json::from_slice(&body).map_err(|source| Error::VaultDecode { what: WHAT, source })
}

/// Longest wait for a TCP connection to a Vault node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for the next bytes of an answer (a restore answers at once and works in the
/// background; a snapshot of 100k secrets starts streaming in about a second).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of one poll while waiting for a node (a restore to be served, a canary).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two polls while waiting.
pub const POLL: Duration = Duration::from_millis(100);

/// Builds the `reqwest` client used for Vault (and peer) probes.
pub fn http_client(config: &VaultConfig, timeout: Duration) -> Result<reqwest::Client> {
    // Never follow a redirect: reqwest would carry X-Vault-Token to whatever origin it names.
    // A cut network drops packets silently: give up connecting after a few seconds, and on a
    // transfer that stalls, whatever the whole request's timeout (a snapshot pull of a cut
    // primary must not hold a promotion for minutes).
    let mut b = vault_dr_common::http::client_builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(CONNECT_TIMEOUT))
        .read_timeout(timeout.min(STALL_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .no_proxy()
        .tls_danger_accept_invalid_certs(config.skip_verify);
    for cert in &config.ca_certs {
        b = b.add_root_certificate(cert.clone());
    }
    b.build().map_err(|source| Error::HttpClient {
        what: "vault",
        source,
    })
}

/// The write gate's client towards the node: no overall timeout (a request takes as long as
/// the node takes; a snapshot can be large), a bounded connect, redirects passed on to the
/// client rather than followed.
pub fn gate_client(config: &VaultConfig) -> Result<reqwest::Client> {
    let mut b = vault_dr_common::http::client_builder()
        .connect_timeout(crate::gate::CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tls_danger_accept_invalid_certs(config.skip_verify);
    for cert in &config.ca_certs {
        b = b.add_root_certificate(cert.clone());
    }
    b.build().map_err(|source| Error::HttpClient {
        what: "gate",
        source,
    })
}

/// `<base>/v1/<segments…>`, keeping any path prefix of `base`.
pub fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segs) = url.path_segments_mut() {
        segs.pop_if_empty().push("v1").extend(path.split('/'));
    }
    url
}

/// Probes `GET <base>/v1/sys/health` with no token (used for the local node and for peers).
pub async fn probe_health(http: &reqwest::Client, base: &Url) -> HealthProbe {
    let started = Instant::now();
    let answer = async {
        let resp = http.get(endpoint(base, "sys/health")).send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    match answer {
        Ok((status, body)) => HealthProbe {
            health: classify(status, &body),
            latency: Some(started.elapsed()),
        },
        Err(e) => HealthProbe {
            health: Health {
                state: NodeState::Unreachable,
                version: None,
                cluster_id: None,
                cluster_name: None,
                error: Some(request_error_kind(&e)),
            },
            latency: None,
        },
    }
}

/// Client of the local node.
#[derive(Debug, Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    addr: Url,
    token: Option<Secret>,
}

impl VaultClient {
    /// A client for `addr` with an optional token.
    pub fn new(http: reqwest::Client, addr: Url, token: Option<Secret>) -> Self {
        Self { http, addr, token }
    }

    /// The node's API address.
    pub fn addr(&self) -> &Url {
        &self.addr
    }

    /// The underlying HTTP client (shared with peer probes).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `GET sys/health` of the local node.
    pub async fn health(&self) -> HealthProbe {
        probe_health(&self.http, &self.addr).await
    }

    /// The node's seal type from `GET sys/seal-status` (unauthenticated, answered while
    /// sealed): `shamir`, `static`, `transit`, `awskms`…; `None` when it does not answer.
    pub async fn seal_type(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct SealStatus {
            #[serde(rename = "type")]
            kind: String,
        }
        let resp = self
            .http
            .get(endpoint(&self.addr, "sys/seal-status"))
            .send()
            .await
            .ok()?;
        let status: SealStatus = resp.json().await.ok()?;
        Some(status.kind)
    }

    /// `GET v1/<path>` with the token when there is one: the status and body, whatever they are.
    pub async fn get_raw(
        &self,
        what: &'static str,
        path: &str,
    ) -> Result<(u16, axum::body::Bytes)> {
        let mut req = self.http.get(endpoint(&self.addr, path));
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|source| Error::VaultRequest { what, source })?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|source| Error::VaultRequest { what, source })?;
        Ok((status, body))
    }

    /// `GET sys/leader`: raft applied and committed index (unauthenticated).
    pub async fn leader(&self) -> Result<Leader> {
        const WHAT: &str = "sys/leader";
        let (status, body) = self.get_raw(WHAT, "sys/leader").await?;
        if status != 200 {
            return Err(Error::VaultStatus { what: WHAT, status });
        }
        serde_json::from_slice(&body).map_err(|source| Error::VaultDecode { what: WHAT, source })
    }

    /// `POST sys/storage/raft/promote {"server_id": id}`: makes a non-voter a voter (a
    /// standby forwards it to the leader). Needs the token (`sudo`).
    pub async fn raft_promote(&self, id: &str) -> Result<()> {
        let body = serde_json::json!({ "server_id": id });
        self.send(
            reqwest::Method::POST,
            "sys/storage/raft/promote",
            Some(&body),
        )
        .await
    }

    /// `PUT sys/step-down`: the active node gives up leadership (raft: a new election among
    /// the other voters). Needs the token (`sudo`).
    pub async fn step_down(&self) -> Result<()> {
        self.send(reqwest::Method::PUT, "sys/step-down", None).await
    }

    /// `method v1/<what>` with the token when there is one and `body` as JSON; `Ok` on 200 or
    /// 204.
    async fn send(
        &self,
        method: reqwest::Method,
        what: &'static str,
        body: Option<&serde_json::Value>,
    ) -> Result<()> {
        let mut req = self.http.request(method, endpoint(&self.addr, what));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|source| Error::VaultRequest { what, source })?;
        match resp.status().as_u16() {
            200 | 204 => Ok(()),
            status => Err(Error::VaultStatus { what, status }),
        }
    }

    /// `GET sys/storage/raft/autopilot/state`, every server (a standby forwards it to the
    /// active node, so it fails while the raft has no leader). Needs the token.
    pub async fn autopilot_servers(&self) -> Result<Vec<AutopilotServer>> {
        const WHAT: &str = "sys/storage/raft/autopilot/state";
        let (status, body) = self.get_raw(WHAT, WHAT).await?;
        if status != 200 {
            return Err(Error::VaultStatus { what: WHAT, status });
        }
        parse_autopilot_servers(&body)
    }

    /// `GET sys/storage/raft/autopilot/state`: `Some(healthy)`, or `None` when there is no
    /// token or the token does not allow it (403).
    pub async fn autopilot_healthy(&self) -> Result<Option<bool>> {
        const WHAT: &str = "sys/storage/raft/autopilot/state";
        if self.token.is_none() {
            return Ok(None);
        }
        let (status, body) = self.get_raw(WHAT, WHAT).await?;
        match status {
            200 => parse_autopilot(&body).map(Some),
            401 | 403 => Ok(None),
            _ => Err(Error::VaultStatus { what: WHAT, status }),
        }
    }
}

/// One server of the raft as autopilot sees it (`sys/storage/raft/autopilot/state`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AutopilotServer {
    /// Its raft node id.
    pub id: String,
    /// Its cluster address (`host:port`).
    #[serde(default)]
    pub address: String,
    /// `leader`, `voter`, `non-voter` (or `staging`).
    #[serde(default)]
    pub status: String,
    /// The last raft index it has (for the leader: its own last index).
    #[serde(default)]
    pub last_index: u64,
    /// Time since the leader last heard from it, Go duration text (`"0s"`, `"1.2ms"`).
    #[serde(default)]
    pub last_contact: String,
    /// Whether autopilot counts it healthy.
    #[serde(default)]
    pub healthy: bool,
}

impl AutopilotServer {
    /// [`AutopilotServer::last_contact`] as a duration (`None` when it does not parse).
    pub fn last_contact(&self) -> Option<Duration> {
        parse_go_duration(&self.last_contact)
    }
}

/// A Go `time.Duration` string (`"0s"`, `"850µs"`, `"1.5ms"`, `"2m3.5s"`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" || s == "0s" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|i| *i > 0)?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The servers of an autopilot state answer, wrapped in `data` (Vault API) or bare.
pub fn parse_autopilot_servers(body: &[u8]) -> Result<Vec<AutopilotServer>> {
    #[derive(Deserialize)]
    struct State {
        servers: std::collections::BTreeMap<String, AutopilotServer>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Answer {
        Wrapped { data: State },
        Bare(State),
    }
    let a: Answer = serde_json::from_slice(body).map_err(|source| Error::VaultDecode {
        what: "sys/storage/raft/autopilot/state",
        source,
    })?;
    let (Answer::Wrapped { data } | Answer::Bare(data)) = a;
    Ok(data.servers.into_values().collect())
}

/// `healthy` from an autopilot state answer, wrapped in `data` (Vault API) or bare.
pub fn parse_autopilot(body: &[u8]) -> Result<bool> {
    #[derive(Deserialize)]
    struct State {
        healthy: bool,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Answer {
        Wrapped { data: State },
        Bare(State),
    }
    let a: Answer = serde_json::from_slice(body).map_err(|source| Error::VaultDecode {
        what: "sys/storage/raft/autopilot/state",
        source,
    })?;
    Ok(match a {
        Answer::Wrapped { data } | Answer::Bare(data) => data.healthy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let ms = |m: f64| Some(Duration::from_secs_f64(m / 1000.0));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1.5ms"), ms(1.5));
        assert_eq!(parse_go_duration("850µs"), ms(0.85));
        assert_eq!(parse_go_duration("2m3.5s"), ms(123_500.0));
        for bad in ["", "ms", "1.5", "3 s", "-1s", "1x"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn autopilot_servers_parse_from_openbao_s_answer() {
        let body = br#"{"data":{"healthy":true,"leader":"p-n1","servers":{
            "p-n1":{"id":"p-n1","name":"p-n1","address":"127.0.0.1:8201","node_status":"alive",
                    "last_contact":"0s","last_term":3,"last_index":61,"healthy":true,
                    "status":"leader","node_type":"voter"},
            "s1-n1":{"id":"s1-n1","address":"127.0.0.1:8211","last_contact":"2.1ms",
                     "last_index":59,"healthy":true,"status":"non-voter"}}}}"#;
        let servers = parse_autopilot_servers(body).unwrap();
        assert_eq!(servers.len(), 2);
        let s1 = servers.iter().find(|s| s.id == "s1-n1").unwrap();
        assert_eq!((s1.status.as_str(), s1.last_index), ("non-voter", 59));
        assert_eq!(s1.last_contact(), Some(Duration::from_micros(2100)));
        assert!(parse_autopilot_servers(b"{\"data\": 3}").is_err());
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let base = Url::parse("http://127.0.0.1:8200").unwrap();
        assert_eq!(
            endpoint(&base, "sys/health").as_str(),
            "http://127.0.0.1:8200/v1/sys/health"
        );
        let base = Url::parse("https://lb.example/vault/").unwrap();
        assert_eq!(
            endpoint(&base, "sys/replication/dr/status").as_str(),
            "https://lb.example/vault/v1/sys/replication/dr/status"
        );
    }

    #[test]
    fn autopilot_state_is_read_wrapped_or_bare() {
        assert!(parse_autopilot(br#"{"data":{"healthy":true,"failure_tolerance":0}}"#).unwrap());
        assert!(!parse_autopilot(br#"{"healthy":false,"servers":{}}"#).unwrap());
        assert!(parse_autopilot(b"nope").is_err());
    }

    #[test]
    fn leader_answers_decode_with_missing_indices() {
        let l: Leader = serde_json::from_slice(
            br#"{"ha_enabled":true,"is_self":true,"raft_committed_index":29,"raft_applied_index":28}"#,
        )
        .unwrap();
        assert_eq!(l.raft_applied_index, Some(28));
        assert_eq!(l.raft_committed_index, Some(29));
        let l: Leader = serde_json::from_slice(br#"{"ha_enabled":false}"#).unwrap();
        assert_eq!(l, Leader::default());
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_kind_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let http = vault_dr_common::http::client_builder()
            .no_proxy()
            .build()
            .unwrap();
        let base = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let p = probe_health(&http, &base).await;
        assert_eq!(p.health.state, NodeState::Unreachable);
        assert_eq!(p.health.error, Some("connect"));
        assert_eq!(p.latency, None);
    }
}
