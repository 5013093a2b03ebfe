//! The coordinator's own small Vault/OpenBao client: the direct health probe (second observer),
//! sealing the old primary (fencing) and the canary write (verification).

use crate::config::ClusterConfig;
use crate::model::view::DirectProbe;
use chrono::Utc;
use std::time::{Duration, Instant};
use url::Url;
use vault_dr_common::{NodeState, Secret};

/// HTTP client for the clusters' APIs.
#[derive(Debug, Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    token: Option<Secret>,
}

/// Bounded vocabulary of probe failures, for metrics labels and the view.
fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

impl VaultClient {
    /// A client whose requests time out after `timeout`; `token` is the DR token (seal, canary).
    pub fn new(timeout: Duration, token: Option<Secret>) -> reqwest::Result<Self> {
        // Never follow a redirect: reqwest would carry X-Vault-Token to whatever origin it names.
        let http = vault_dr_common::http::client_builder()
            .timeout(timeout)
            // A cut network drops packets silently: fencing an unreachable old primary must not
            // wait out the whole action timeout before the failover moves on.
            .connect_timeout(timeout.min(Duration::from_secs(1)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http, token })
    }

    fn url(base: &Url, path: &str) -> Url {
        let mut u = base.clone();
        let prefix = u.path().trim_end_matches('/').to_owned();
        u.set_path(&format!("{prefix}/v1/{path}"));
        u
    }

    /// Probes one address: `GET /v1/sys/health`, classified by status code.
    pub async fn probe_addr(&self, addr: &Url) -> DirectProbe {
        let started = Instant::now();
        let result = self.http.get(Self::url(addr, "sys/health")).send().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(resp) if vault_dr_common::http::gate_says_unreachable(&resp) => DirectProbe {
                state: NodeState::Unreachable,
                at: Utc::now(),
                latency_ms: None,
                error: Some("no answer behind the agent's write gate".into()),
            },
            Ok(resp) => {
                let state = NodeState::from_health_status(resp.status().as_u16());
                DirectProbe {
                    state,
                    at: Utc::now(),
                    latency_ms: Some(latency_ms),
                    error: (!state.is_serving())
                        .then(|| format!("status {}", resp.status().as_u16())),
                }
            }
            Err(e) => DirectProbe {
                state: NodeState::Unreachable,
                at: Utc::now(),
                latency_ms: None,
                error: Some(error_kind(&e).to_owned()),
            },
        }
    }

    /// Probes every address of a cluster and keeps the best answer (serving beats sealed beats
    /// error beats unreachable), so one dead node of a healthy cluster does not look like a
    /// dead cluster.
    pub async fn probe_cluster(&self, cluster: &ClusterConfig) -> DirectProbe {
        let probes =
            futures::future::join_all(cluster.api_addrs.iter().map(|a| self.probe_addr(a))).await;
        probes
            .into_iter()
            .min_by_key(|p| rank(p.state))
            .unwrap_or(DirectProbe {
                state: NodeState::Unreachable,
                at: Utc::now(),
                latency_ms: None,
                error: Some("no address".into()),
            })
    }

    /// Seals every node of `cluster` within `bound`, with a request that cannot be carried out
    /// later than [`FENCE_TOKEN_TTL`] after it was made (see [`Fence`]).
    ///
    /// A seal request sent to a frozen process (SIGSTOP, a stalled VM) waits in its socket and
    /// is carried out whenever the process wakes, however late: by then the node may be a
    /// following secondary, or even the primary again. So the seal never carries the DR token
    /// itself: first a child token is made on the cluster that expires [`FENCE_TOKEN_TTL`]
    /// later ([`VaultClient::fence_token`]; OpenBao checks a token's expiry when it handles
    /// the request, so a queued seal read after that is refused), then every node is sealed
    /// with it in parallel ([`VaultClient::seal_with`]). A cluster that makes no token within
    /// the bound is sent no seal at all. A node whose agent's write gate is closed is fenced
    /// by the gate and needs no seal. Everything is over by `bound`.
    pub async fn fence(&self, cluster: &ClusterConfig, bound: Duration) -> Fence {
        let started = Instant::now();
        let deadline = started + bound;
        let (token, mut nodes) = self.fence_token(cluster, deadline, bound).await;
        let mut fence = match token {
            Ok(token) => {
                self.seal_with(cluster, &token, &nodes, deadline, bound)
                    .await
            }
            Err(why) => {
                let unsent: Vec<(Url, NodeFence)> = cluster
                    .api_addrs
                    .iter()
                    .filter(|a| !nodes.iter().any(|(n, _)| n == *a))
                    .map(|a| (a.clone(), NodeFence::NotSent))
                    .collect();
                nodes.extend(unsent);
                Fence {
                    cluster: cluster.name.clone(),
                    nodes,
                    expires_at: None,
                    took: Duration::ZERO,
                    not_sent: Some(why),
                }
            }
        };
        fence.took = started.elapsed();
        fence
    }

    /// A child of the DR token that expires [`FENCE_TOKEN_TTL`] after it is made, usable once
    /// per node, from the first node of `cluster` that makes one before `deadline`. Also
    /// returns the nodes found fenced on the way (sealed, or behind a closed write gate): they
    /// get no seal.
    pub async fn fence_token(
        &self,
        cluster: &ClusterConfig,
        deadline: Instant,
        bound: Duration,
    ) -> (Result<FenceToken, String>, Vec<(Url, NodeFence)>) {
        let mut gated = Vec::new();
        let Some(token) = &self.token else {
            return (Err("no DR token configured".into()), gated);
        };
        let ttl = format!("{FENCE_TOKEN_TTL_S}s");
        let body = serde_json::json!({
            "ttl": ttl,
            "explicit_max_ttl": ttl,
            "renewable": false,
            "num_uses": cluster.api_addrs.len(),
            "display_name": "vault-dr-fence",
        });
        let mut last = String::from("no address");
        for addr in &cluster.api_addrs {
            if Instant::now() >= deadline {
                break;
            }
            let made_at = Utc::now();
            let sent = self
                .http
                .post(Self::url(addr, "auth/token/create"))
                .header("X-Vault-Token", token.expose())
                .json(&body)
                .timeout(remaining(deadline))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let v: Option<serde_json::Value> = r.json().await.ok();
                    match v
                        .as_ref()
                        .and_then(|v| v.pointer("/auth/client_token")?.as_str())
                    {
                        Some(t) => {
                            let token = FenceToken {
                                token: Secret::new(t),
                                expires_at: made_at + chrono::Duration::seconds(FENCE_TOKEN_TTL_S),
                            };
                            return (Ok(token), gated);
                        }
                        None => last = format!("{addr}: the answer holds no token"),
                    }
                }
                Ok(r) if vault_dr_common::http::gate_says_closed(&r) => {
                    gated.push((addr.clone(), NodeFence::GateClosed));
                    last = format!("{addr}: fenced by its write gate");
                }
                // A sealed node answers every request but its status with 503.
                Ok(r) if r.status().as_u16() == 503 => {
                    gated.push((addr.clone(), NodeFence::FoundSealed));
                    last = format!("{addr}: sealed");
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    last = format!("{addr}: status {status}{}", reason_of(r).await);
                    if status == 403 {
                        last.push_str(
                            " (the DR token's policy must grant update on auth/token/create: see policies/vault-dr.hcl)",
                        );
                    }
                }
                // No process listens: nothing can be delivered, now or later.
                Err(e) if refused(&e) => {
                    gated.push((addr.clone(), NodeFence::Gone));
                    last = format!("{addr}: connection refused");
                }
                Err(e) if e.is_timeout() => {
                    last = format!("{addr}: no answer within {:.1} s", bound.as_secs_f64());
                }
                Err(e) => last = format!("{addr}: {}", chain(&e)),
            }
        }
        (Err(format!("no fence token: {last}")), gated)
    }

    /// Seals every node of `cluster` not in `done` with `token`, in parallel, each request
    /// bounded by `deadline`.
    pub async fn seal_with(
        &self,
        cluster: &ClusterConfig,
        token: &FenceToken,
        done: &[(Url, NodeFence)],
        deadline: Instant,
        bound: Duration,
    ) -> Fence {
        let started = Instant::now();
        let seals = cluster.api_addrs.iter().map(|addr| {
            let known = done.iter().find(|(a, _)| a == addr).map(|(_, n)| n.clone());
            let req = self
                .http
                .put(Self::url(addr, "sys/seal"))
                .header("X-Vault-Token", token.token.expose())
                .timeout(remaining(deadline));
            async move {
                if let Some(known) = known {
                    return (addr.clone(), known);
                }
                let outcome = match req.send().await {
                    Ok(r) if r.status().is_success() => NodeFence::Sealed,
                    Ok(r) if vault_dr_common::http::gate_says_closed(&r) => NodeFence::GateClosed,
                    // Already sealed answers 503: the goal holds.
                    Ok(r) if r.status().as_u16() == 503 => NodeFence::FoundSealed,
                    // The node behind its agent's write gate did not answer.
                    Ok(r) if vault_dr_common::http::gate_says_unreachable(&r) => {
                        NodeFence::Unreachable("no answer behind its agent's write gate".into())
                    }
                    Ok(r) => NodeFence::Refused(format!(
                        "status {}{}",
                        r.status().as_u16(),
                        reason_of(r).await
                    )),
                    // Not connected: nothing was delivered.
                    Err(e) if refused(&e) => NodeFence::Gone,
                    Err(e) if e.is_connect() => NodeFence::Unreachable(chain(&e)),
                    // Sent, or perhaps sent: it may wait in the node's socket.
                    Err(e) if e.is_timeout() => NodeFence::NoAnswer(format!(
                        "no answer within {:.1} s",
                        bound.as_secs_f64()
                    )),
                    Err(e) => NodeFence::NoAnswer(chain(&e)),
                };
                (addr.clone(), outcome)
            }
        });
        let nodes = futures::future::join_all(seals).await;
        Fence {
            cluster: cluster.name.clone(),
            nodes,
            expires_at: Some(token.expires_at),
            took: started.elapsed(),
            not_sent: None,
        }
    }

    /// Reads `cluster`'s group stamp with the DR token from the first address that answers.
    pub async fn read_stamp(&self, cluster: &ClusterConfig) -> crate::group::Found {
        use crate::group::Found;
        let Some(token) = &self.token else {
            return Found::Unread("no DR token configured".into());
        };
        let mut last = String::from("no address");
        for addr in &cluster.api_addrs {
            let sent = self
                .http
                .get(Self::url(addr, crate::group::STAMP_PATH))
                .header("X-Vault-Token", token.expose())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 404 => return Found::None,
                Ok(r) if r.status().is_success() => {
                    let body: Result<serde_json::Value, _> = r.json().await;
                    return match body
                        .ok()
                        .and_then(|b| serde_json::from_value(b.get("data")?.clone()).ok())
                    {
                        Some(stamp) => Found::Stamp(stamp),
                        None => Found::Unread(format!("{addr}: the stamp is not a group stamp")),
                    };
                }
                Ok(r) => last = format!("{addr}: status {}", r.status().as_u16()),
                Err(e) => last = format!("{addr}: {}", error_kind(&e)),
            }
        }
        Found::Unread(last)
    }

    /// Writes `stamp` into `cluster` with the DR token. Returns one sentence.
    pub async fn write_stamp(
        &self,
        cluster: &ClusterConfig,
        stamp: &crate::group::GroupStamp,
    ) -> Result<String, String> {
        let Some(token) = &self.token else {
            return Err("no DR token configured".into());
        };
        let mut last = String::from("no address");
        for addr in &cluster.api_addrs {
            let sent = self
                .http
                .put(Self::url(addr, crate::group::STAMP_PATH))
                .header("X-Vault-Token", token.expose())
                .json(stamp)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    return Ok(format!(
                        "stamped {} with group {} term {}",
                        cluster.name, stamp.group_id, stamp.term
                    ));
                }
                Ok(r) => last = format!("{addr}: status {}", r.status().as_u16()),
                Err(e) => last = format!("{addr}: {}", error_kind(&e)),
            }
        }
        Err(format!("could not stamp {}: {last}", cluster.name))
    }

    /// Canary: writes and reads back `cubbyhole/vault-dr/canary` with the DR token on `cluster`.
    /// Without a DR token, checks that the cluster's health says active.
    pub async fn canary(&self, cluster: &ClusterConfig, term: u64) -> Result<String, String> {
        let Some(token) = &self.token else {
            let p = self.probe_cluster(cluster).await;
            return if p.state == NodeState::Active {
                Ok(format!(
                    "{} is active (no DR token configured for a canary write)",
                    cluster.name
                ))
            } else {
                Err(format!("{} is {}", cluster.name, p.state))
            };
        };
        let value = format!("term-{term}-{}", Utc::now().timestamp_millis());
        let mut last = String::from("no address");
        for addr in &cluster.api_addrs {
            let url = Self::url(addr, "cubbyhole/vault-dr/canary");
            let write = self
                .http
                .put(url.clone())
                .header("X-Vault-Token", token.expose())
                .json(&serde_json::json!({ "value": value }))
                .send()
                .await;
            match write {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    last = format!("canary write on {addr}: status {}", r.status().as_u16());
                    continue;
                }
                Err(e) => {
                    last = format!("canary write on {addr}: {}", error_kind(&e));
                    continue;
                }
            }
            let read = self
                .http
                .get(url)
                .header("X-Vault-Token", token.expose())
                .send()
                .await;
            match read {
                Ok(r) if r.status().is_success() => {
                    let body: serde_json::Value = r
                        .json()
                        .await
                        .map_err(|_| "canary read: not JSON".to_owned())?;
                    if body["data"]["value"] == value {
                        return Ok(format!(
                            "canary write and read on {} succeeded",
                            cluster.name
                        ));
                    }
                    last = format!("canary read on {addr} returned another value");
                }
                Ok(r) => last = format!("canary read on {addr}: status {}", r.status().as_u16()),
                Err(e) => last = format!("canary read on {addr}: {}", error_kind(&e)),
            }
        }
        Err(last)
    }
}

/// One server of a raft configuration (`sys/storage/raft/configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    /// Its raft node id.
    pub id: String,
    /// Whether it leads the raft.
    pub leader: bool,
    /// Whether it votes.
    pub voter: bool,
}

impl VaultClient {
    fn dr_token(&self) -> Result<&Secret, String> {
        self.token
            .as_ref()
            .ok_or_else(|| "no DR token configured (a raft handover needs one)".to_owned())
    }

    /// `GET sys/storage/raft/configuration` through `addr` (a standby forwards it to the
    /// leader): every server of the raft, with the DR token.
    pub async fn raft_configuration(&self, addr: &Url) -> Result<Vec<RaftServer>, String> {
        let token = self.dr_token()?;
        let resp = self
            .http
            .get(Self::url(addr, "sys/storage/raft/configuration"))
            .header("X-Vault-Token", token.expose())
            .send()
            .await
            .map_err(|e| format!("raft configuration via {addr}: {}", error_kind(&e)))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(format!("raft configuration via {addr}: status {status}"));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|_| format!("raft configuration via {addr}: not JSON"))?;
        let servers = v
            .pointer("/data/config/servers")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| format!("raft configuration via {addr}: no servers in the answer"))?;
        Ok(servers
            .iter()
            .filter_map(|s| {
                Some(RaftServer {
                    id: s.get("node_id")?.as_str()?.to_owned(),
                    leader: s.get("leader")?.as_bool()?,
                    voter: s.get("voter")?.as_bool()?,
                })
            })
            .collect())
    }

    /// `POST sys/storage/raft/promote` (`voter`) or `demote` of raft node `id`, through
    /// `addr`, with the DR token. Idempotent: promoting a voter or demoting a non-voter
    /// changes nothing.
    pub async fn raft_suffrage(&self, addr: &Url, id: &str, voter: bool) -> Result<(), String> {
        let path = if voter {
            "sys/storage/raft/promote"
        } else {
            "sys/storage/raft/demote"
        };
        match self
            .send_with_token(
                addr,
                reqwest::Method::POST,
                path,
                Some(serde_json::json!({ "server_id": id })),
            )
            .await
        {
            // Autopilot took the request already and has not carried it into the raft
            // configuration yet (it does so every 10 s): done.
            Err(e) if e.contains("is already a voter") || e.contains("is already a non-voter") => {
                Ok(())
            }
            other => other,
        }
    }

    /// `PUT sys/step-down` through `addr` (a standby forwards it): the raft's leader gives up
    /// its leadership to another voter. With the DR token.
    pub async fn step_down(&self, addr: &Url) -> Result<(), String> {
        self.send_with_token(addr, reqwest::Method::PUT, "sys/step-down", None)
            .await
    }

    async fn send_with_token(
        &self,
        addr: &Url,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), String> {
        let token = self.dr_token()?;
        let mut req = self
            .http
            .request(method, Self::url(addr, path))
            .header("X-Vault-Token", token.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{path} via {addr}: {}", error_kind(&e)))?;
        match resp.status().as_u16() {
            200 | 204 => Ok(()),
            status => {
                // OpenBao says why in `errors` (never a secret: a message about the request).
                let why = resp
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| {
                        v.pointer("/errors/0")
                            .and_then(|e| e.as_str())
                            .map(str::to_owned)
                    })
                    .map_or_else(String::new, |e| {
                        format!(": {}", e.chars().take(200).collect::<String>())
                    });
                Err(format!("{path} via {addr}: status {status}{why}"))
            }
        }
    }
}

/// How long the fence of a failover may take: the seal of the old primary is attempted within
/// this, never longer, and the failover moves on (the term and the traffic cut fence it
/// already; the leader goes on sealing it in the background, see `crate::failover::fence`).
pub const FENCE_BOUND: Duration = Duration::from_secs(1);
/// Lifetime of the token a seal carries (whole seconds: OpenBao's TTL granularity). One second
/// more than [`FENCE_BOUND`], so that a node whose clock is a little behind the one that made
/// the token still takes a seal sent within the bound.
pub const FENCE_TOKEN_TTL: Duration = Duration::from_secs(FENCE_TOKEN_TTL_S as u64);
const FENCE_TOKEN_TTL_S: i64 = 2;

/// A child of the DR token that expires soon ([`VaultClient::fence_token`]).
pub struct FenceToken {
    token: Secret,
    /// When it expires, counted from the moment it was asked for (it was made no earlier):
    /// no request carrying it is carried out after this.
    pub expires_at: chrono::DateTime<Utc>,
}

impl std::fmt::Debug for FenceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What one seal attempt did to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFence {
    /// Sealed by this request.
    Sealed,
    /// Was sealed already (`503`).
    FoundSealed,
    /// Not connected (refused, no route, no answer behind its gate): nothing was delivered.
    Unreachable(String),
    /// Sent without an answer in time: it may wait in the node's socket, and is refused once
    /// its token expired ([`Fence::expires_at`]).
    NoAnswer(String),
    /// Answered with another status (the reason the node gave).
    Refused(String),
    /// Its agent's write gate is closed: it refuses clients, fenced without a seal.
    GateClosed,
    /// The connection was refused: no process listens there. A process started again is a
    /// new one, fenced by the term (its agent's gate starts closed).
    Gone,
    /// Nothing sent: no fence token was made in time.
    NotSent,
}

impl NodeFence {
    /// Whether the node is fenced: sealed, or behind a closed write gate.
    pub fn fenced(&self) -> bool {
        matches!(self, Self::Sealed | Self::FoundSealed | Self::GateClosed)
    }
}

impl std::fmt::Display for NodeFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sealed => write!(f, "sealed"),
            Self::FoundSealed => write!(f, "already sealed"),
            Self::Unreachable(why) => write!(f, "unreachable ({why})"),
            Self::NoAnswer(why) => write!(f, "{why}"),
            Self::Refused(why) => write!(f, "refused ({why})"),
            Self::GateClosed => write!(f, "fenced by its write gate (closed)"),
            Self::Gone => write!(f, "no process (connection refused)"),
            Self::NotSent => write!(f, "no seal sent"),
        }
    }
}

/// One bounded seal attempt on a cluster ([`VaultClient::fence`]).
#[derive(Debug, Clone)]
pub struct Fence {
    /// The cluster.
    pub cluster: String,
    /// Each address and what happened there.
    pub nodes: Vec<(Url, NodeFence)>,
    /// When the seal's token expires: no seal of this attempt is carried out after it.
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// How long the attempt took.
    pub took: Duration,
    /// Why no seal was sent (no DR token, no fence token in time).
    pub not_sent: Option<String>,
}

impl Fence {
    /// Whether every node of the cluster is fenced (sealed, or behind a closed write gate).
    pub fn complete(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.iter().all(|(_, n)| n.fenced())
    }

    /// Whether no node has a process (every connection refused): nothing to seal, nothing
    /// sent, nothing to wait for.
    pub fn gone(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.iter().all(|(_, n)| *n == NodeFence::Gone)
    }

    /// One sentence for the journal: what was sent, what each node did, and until when a seal
    /// that got no answer could still be carried out.
    pub fn sentence(&self) -> String {
        let took = self.took.as_secs_f64();
        let count = |f: fn(&NodeFence) -> bool| self.nodes.iter().filter(|(_, n)| f(n)).count();
        if self.complete() {
            let sealed = count(|n| *n == NodeFence::Sealed);
            let found = count(|n| *n == NodeFence::FoundSealed);
            let gated = count(|n| *n == NodeFence::GateClosed);
            let mut parts = Vec::new();
            if sealed > 0 {
                parts.push(format!("{sealed} node(s) sealed"));
            }
            if found > 0 {
                parts.push(format!("{found} found sealed"));
            }
            if gated > 0 {
                parts.push(format!("{gated} fenced by a closed write gate"));
            }
            return format!(
                "{} fenced in {took:.2} s: {}",
                self.cluster,
                parts.join(", ")
            );
        }
        if self.gone() {
            return format!(
                "{} has no process (connection refused on every node): nothing to seal; a process started again is fenced by the term and its agent",
                self.cluster
            );
        }
        if let Some(why) = &self.not_sent
            && self.nodes.iter().all(|(_, n)| *n == NodeFence::NotSent)
        {
            return format!(
                "{} not sealed: {why}; no seal was sent, so none can be carried out later",
                self.cluster
            );
        }
        let each: Vec<String> = self
            .nodes
            .iter()
            .map(|(addr, n)| format!("{addr} {n}"))
            .collect();
        let mut out = format!(
            "{} not sealed in {took:.2} s: {}",
            self.cluster,
            each.join("; ")
        );
        if let Some(why) = &self.not_sent {
            out.push_str(&format!(" ({why})"));
        }
        if let (true, Some(at)) = (
            self.nodes
                .iter()
                .any(|(_, n)| matches!(n, NodeFence::NoAnswer(_))),
            self.expires_at,
        ) {
            out.push_str(&format!(
                "; a seal that got no answer is refused from {} on (its token expires)",
                at.format("%H:%M:%S%.3f UTC")
            ));
        }
        out
    }
}

/// The time left until `deadline` (at least 50 ms, so that a request is still sent).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50))
}

/// The reason an answer gives (OpenBao's `errors` list), as `": reason"`, or nothing.
async fn reason_of(r: reqwest::Response) -> String {
    let body: Option<serde_json::Value> = r.json().await.ok();
    let errors: Vec<String> = body
        .as_ref()
        .and_then(|b| b.get("errors")?.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// Whether the connection was refused (an `io::Error` of that kind among the sources).
fn refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn chain(e: &reqwest::Error) -> String {
    vault_dr_common::http::error_chain(e)
}

fn rank(state: NodeState) -> u8 {
    match state {
        NodeState::Active => 0,
        NodeState::PerformanceStandby | NodeState::Standby => 1,
        NodeState::Restoring => 2,
        NodeState::Sealed => 3,
        NodeState::Uninitialized => 4,
        NodeState::Error => 5,
        NodeState::Unreachable => 6,
    }
}
