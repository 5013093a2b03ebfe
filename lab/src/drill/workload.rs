//! The drill's client: like the original proof of concept's, it writes one secret once and then
//! keeps reading it and writing new versions, through the stable client address, with a client
//! token created on the primary. Every acknowledged write is logged with its time, in memory
//! and as one JSON line in `client-writes.jsonl` in the run directory.
//!
//! The client talks to a [`Target`]: the stable address, or (without a traffic switch) the
//! primary named by the coordinators. Each request opens a fresh connection (no keep-alive): a pooled connection through the TCP
//! forwarder would stay tied to the old primary after the switch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;
use vault_dr_common::Secret;

use super::DrillError;

/// The secret the client writes (KV v2 at `secret/`).
pub const SECRET_PATH: &str = "drill/app";
/// The client's policy name.
pub const CLIENT_POLICY: &str = "vault-dr-drill-client";
/// Timeout of one client request: short, so a request stuck on the faulted primary does not
/// hide the moment the new primary answers.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// One acknowledged write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckedWrite {
    /// The client's sequence number (also in the secret's data).
    pub seq: u64,
    /// The KV version the server answered.
    pub version: u64,
    /// When the request was sent.
    pub sent_at: DateTime<Utc>,
    /// When the answer arrived.
    pub acked_at: DateTime<Utc>,
}

/// Counters of the client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Writes that failed (refused, timed out, 5xx).
    pub writes_failed: u64,
    /// Reads that returned the secret.
    pub reads_ok: u64,
    /// Reads that failed.
    pub reads_failed: u64,
}

/// The running client; stop it with [`Workload::stop`] (dropping it aborts the task).
#[derive(Debug)]
pub struct Workload {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    log: Arc<Mutex<Vec<AckedWrite>>>,
    counters: Arc<Counters>,
    log_path: PathBuf,
    via: String,
}

#[derive(Debug, Default)]
struct Counters {
    writes_failed: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// An HTTP client without connection reuse and proxies.
pub fn client_http() -> Result<reqwest::Client, DrillError> {
    vault_dr_common::http::client_builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| DrillError::Client(format!("build HTTP client: {e}")))
}

/// Creates the client policy and token on the primary (`api_addr`, with its root token), and
/// lets the secret keep enough versions that every acknowledged write can be read back.
pub async fn create_client_token(
    http: &reqwest::Client,
    api_addr: &Url,
    root: &Secret,
) -> Result<Secret, DrillError> {
    let policy = format!(
        "path \"secret/data/{p}\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
         path \"secret/metadata/{p}\" {{ capabilities = [\"read\"] }}\n",
        p = SECRET_PATH
    );
    call(
        http,
        api_addr,
        root,
        reqwest::Method::POST,
        &format!("sys/policies/acl/{CLIENT_POLICY}"),
        Some(json!({ "policy": policy })),
    )
    .await?;
    call(
        http,
        api_addr,
        root,
        reqwest::Method::POST,
        &format!("secret/metadata/{SECRET_PATH}"),
        Some(json!({ "max_versions": 1_000_000 })),
    )
    .await?;
    let v = call(
        http,
        api_addr,
        root,
        reqwest::Method::POST,
        "auth/token/create",
        Some(json!({
            "policies": [CLIENT_POLICY],
            "ttl": "4h",
            "no_default_policy": true,
            "display_name": "vault-dr-drill-client",
        })),
    )
    .await?;
    v.pointer("/auth/client_token")
        .and_then(Value::as_str)
        .map(Secret::new)
        .ok_or_else(|| DrillError::Client("auth/token/create: no client_token".into()))
}

/// One request with `token`; the JSON answer on 2xx, an error naming the path otherwise.
async fn call(
    http: &reqwest::Client,
    base: &Url,
    token: &Secret,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, DrillError> {
    let url = base
        .join(&format!("v1/{path}"))
        .map_err(|e| DrillError::Client(format!("{path}: {e}")))?;
    let mut req = http
        .request(method.clone(), url)
        .header("X-Vault-Token", token.expose());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| DrillError::Client(format!("{method} {path}: {}", kind(&e))))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(DrillError::Client(format!(
            "{method} {path}: HTTP {}: {}",
            status.as_u16(),
            text.trim()
        )));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection refused or failed"
    } else {
        "request failed"
    }
}

/// Writes `seq` as a new version; the version number on success.
async fn write(
    http: &reqwest::Client,
    base: &Url,
    token: &Secret,
    seq: u64,
) -> Result<u64, DrillError> {
    let v = call(
        http,
        base,
        token,
        reqwest::Method::POST,
        &format!("secret/data/{SECRET_PATH}"),
        Some(json!({ "data": { "seq": seq, "at": Utc::now().to_rfc3339() } })),
    )
    .await?;
    v.pointer("/data/version")
        .and_then(Value::as_u64)
        .ok_or_else(|| DrillError::Client("write answered without a version".into()))
}

/// Where the client sends its requests.
#[derive(Debug, Clone)]
pub enum Target {
    /// The stable client address (the coordinators' traffic switch moves it).
    Stable(Url),
    /// No traffic switch: before each round the client asks the coordinators which cluster is
    /// primary (`GET /v1/topology`) and talks to it directly.
    Follow {
        /// Coordinator base URLs, tried in order.
        coordinators: Vec<Url>,
        /// Their bearer token.
        token: Secret,
        /// API address of every cluster.
        clusters: std::collections::BTreeMap<String, Url>,
    },
}

impl Target {
    /// The address for the next request (None: no coordinator answered).
    async fn resolve(&self, http: &reqwest::Client) -> Option<Url> {
        match self {
            Self::Stable(u) => Some(u.clone()),
            Self::Follow {
                coordinators,
                token,
                clusters,
            } => {
                for c in coordinators {
                    let Ok(url) = c.join("v1/topology") else {
                        continue;
                    };
                    let Ok(resp) = http.get(url).bearer_auth(token.expose()).send().await else {
                        continue;
                    };
                    if !resp.status().is_success() {
                        continue;
                    }
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    if let Some(p) = v.pointer("/topology/primary").and_then(Value::as_str) {
                        return clusters.get(p).cloned();
                    }
                }
                None
            }
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Stable(u) => format!("the stable address {u}"),
            Self::Follow { .. } => "the primary named by the coordinators' topology".into(),
        }
    }
}

impl Workload {
    /// Writes the secret once (must succeed within `first_write_timeout`), then starts the
    /// read/write loop with `period` between rounds.
    pub async fn start(
        target: Target,
        token: Secret,
        run_dir: &Path,
        period: Duration,
        first_write_timeout: Duration,
    ) -> Result<Self, DrillError> {
        let http = client_http()?;
        let via = target.describe();
        let log_path = run_dir.join("client-writes.jsonl");
        let mut file = std::fs::File::create(&log_path)
            .map_err(|e| DrillError::Client(format!("create {}: {e}", log_path.display())))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let deadline = tokio::time::Instant::now() + first_write_timeout;
        let first = loop {
            let sent_at = Utc::now();
            let attempt = match target.resolve(&http).await {
                Some(addr) => write(&http, &addr, &token, 0).await,
                None => Err(DrillError::Client("no coordinator names a primary".into())),
            };
            match attempt {
                Ok(version) => {
                    break AckedWrite {
                        seq: 0,
                        version,
                        sent_at,
                        acked_at: Utc::now(),
                    };
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(DrillError::Client(format!(
                        "the first write through {} did not succeed: {e}",
                        target.describe()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        record(&log, &mut file, first);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (l, c) = (log.clone(), counters.clone());
        let task = tokio::spawn(async move {
            let mut seq = 0;
            loop {
                if *stopped.borrow() {
                    return;
                }
                let Some(addr) = target.resolve(&http).await else {
                    c.reads_failed.fetch_add(1, Ordering::Relaxed);
                    c.writes_failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(period).await;
                    continue;
                };
                let read = call(
                    &http,
                    &addr,
                    &token,
                    reqwest::Method::GET,
                    &format!("secret/data/{SECRET_PATH}"),
                    None,
                )
                .await;
                match read {
                    Ok(_) => c.reads_ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => c.reads_failed.fetch_add(1, Ordering::Relaxed),
                };
                seq += 1;
                let sent_at = Utc::now();
                match write(&http, &addr, &token, seq).await {
                    Ok(version) => record(
                        &l,
                        &mut file,
                        AckedWrite {
                            seq,
                            version,
                            sent_at,
                            acked_at: Utc::now(),
                        },
                    ),
                    Err(_) => {
                        c.writes_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Ok(Self {
            via,
            task: Some(task),
            stop,
            log,
            counters,
            log_path,
        })
    }

    /// Every acknowledged write so far, in order.
    pub fn acked(&self) -> Vec<AckedWrite> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first write sent at or after `t` that was acknowledged.
    pub fn first_acked_sent_after(&self, t: DateTime<Utc>) -> Option<AckedWrite> {
        self.log
            .lock()
            .ok()?
            .iter()
            .find(|w| w.sent_at >= t)
            .cloned()
    }

    /// The counters so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            writes_acked: self.log.lock().map(|l| l.len() as u64).unwrap_or(0),
            writes_failed: self.counters.writes_failed.load(Ordering::Relaxed),
            reads_ok: self.counters.reads_ok.load(Ordering::Relaxed),
            reads_failed: self.counters.reads_failed.load(Ordering::Relaxed),
        }
    }

    /// How the client reaches the primary, for messages.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// The JSON-lines log of acknowledged writes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stops the loop and waits for it.
    pub async fn stop(mut self) -> ClientStats {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        self.stats()
    }
}

fn record(log: &Mutex<Vec<AckedWrite>>, file: &mut std::fs::File, w: AckedWrite) {
    if let Ok(line) = serde_json::to_string(&w) {
        let _ = writeln!(file, "{line}");
    }
    if let Ok(mut l) = log.lock() {
        l.push(w);
    }
}

/// Reads every acknowledged write back from `api_addr` (the new primary, directly) by its
/// version and returns those whose version is missing or holds another write's data.
pub async fn missing_writes(
    api_addr: &Url,
    token: &Secret,
    writes: &[AckedWrite],
) -> Result<Vec<AckedWrite>, DrillError> {
    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| DrillError::Client(format!("build HTTP client: {e}")))?;
    let checks = writes.iter().map(|w| {
        let http = http.clone();
        async move {
            let path = format!("secret/data/{SECRET_PATH}?version={}", w.version);
            let url = api_addr
                .join(&format!("v1/{path}"))
                .map_err(|e| DrillError::Client(format!("{path}: {e}")))?;
            let resp = http
                .get(url)
                .header("X-Vault-Token", token.expose())
                .send()
                .await
                .map_err(|e| DrillError::Client(format!("read back {path}: {}", kind(&e))))?;
            let status = resp.status().as_u16();
            match status {
                200 => {
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    let seq = v.pointer("/data/data/seq").and_then(Value::as_u64);
                    Ok((seq != Some(w.seq)).then(|| w.clone()))
                }
                // A version that does not exist (or was never written there).
                404 => Ok(Some(w.clone())),
                _ => Err(DrillError::Client(format!(
                    "read back {path} on {api_addr}: HTTP {status}"
                ))),
            }
        }
    });
    let results: Vec<Result<Option<AckedWrite>, DrillError>> =
        futures::stream::iter(checks).buffered(16).collect().await;
    let mut missing = Vec::new();
    for r in results {
        if let Some(w) = r? {
            missing.push(w);
        }
    }
    Ok(missing)
}
