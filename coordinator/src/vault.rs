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

    /// Seals every reachable node of `cluster` (`PUT /v1/sys/seal`). Returns one sentence.
    pub async fn seal(&self, cluster: &ClusterConfig) -> Result<String, String> {
        let Some(token) = &self.token else {
            return Ok(format!(
                "no DR token configured: {} not sealed; fenced by the term and the traffic switch",
                cluster.name
            ));
        };
        let mut sealed = 0;
        let mut unreachable = 0;
        let mut errors = Vec::new();
        for addr in &cluster.api_addrs {
            let req = self
                .http
                .put(Self::url(addr, "sys/seal"))
                .header("X-Vault-Token", token.expose());
            match req.send().await {
                Ok(r) if r.status().is_success() => sealed += 1,
                // Already sealed answers 503: the goal holds.
                Ok(r) if r.status().as_u16() == 503 => sealed += 1,
                // The node behind its agent's write gate did not answer: unreachable, and the
                // gate refuses its clients once the agent sees the new term.
                Ok(r) if vault_dr_common::http::gate_says_unreachable(&r) => unreachable += 1,
                Ok(r) => errors.push(format!("{addr}: status {}", r.status().as_u16())),
                Err(e) if e.is_connect() || e.is_timeout() => unreachable += 1,
                Err(e) => errors.push(format!("{addr}: {}", error_kind(&e))),
            }
        }
        if !errors.is_empty() {
            return Err(format!(
                "could not seal {}: {}",
                cluster.name,
                errors.join("; ")
            ));
        }
        Ok(match (sealed, unreachable) {
            (0, _) => format!(
                "{} unreachable; fenced by the term and the traffic switch",
                cluster.name
            ),
            (s, 0) => format!("sealed {} ({s} node(s))", cluster.name),
            (s, u) => format!("sealed {} ({s} node(s); {u} unreachable)", cluster.name),
        })
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
