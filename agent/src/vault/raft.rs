//! The raft snapshot API of a Vault/OpenBao node: streaming a snapshot out
//! (`GET sys/storage/raft/snapshot`), restoring one (`POST`, then waiting until the node serves
//! it) and reading the raft applied index (`sys/leader`). Free functions over a caller's HTTP
//! client, because transfers need a longer timeout than probes.

use super::{POLL, POLL_TIMEOUT, endpoint};
use crate::error::{Error, Result};
use serde_json::Value;
use std::time::{Duration, Instant};
use url::Url;
use vault_dr_common::Secret;

/// How long a restore may take until the node serves the restored data (measured: about 5 s
/// plus 25 ms per MB).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(180);

/// A snapshot being streamed out of a node, chunk by chunk.
#[derive(Debug)]
pub struct SnapshotDownload {
    what: &'static str,
    resp: reqwest::Response,
}

impl SnapshotDownload {
    /// The next chunk, `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<axum::body::Bytes>> {
        self.resp
            .chunk()
            .await
            .map_err(|source| Error::VaultRequest {
                what: self.what,
                source,
            })
    }
}

/// Starts `GET <base>/v1/sys/storage/raft/snapshot` with `token`; `what` names the request in
/// errors (a pull from the primary, a quarantine of the local node).
pub async fn download_snapshot(
    http: &reqwest::Client,
    base: &Url,
    token: &Secret,
    what: &'static str,
) -> Result<SnapshotDownload> {
    let resp = http
        .get(endpoint(base, "sys/storage/raft/snapshot"))
        .header("X-Vault-Token", token.expose())
        .send()
        .await
        .map_err(|source| Error::VaultRequest { what, source })?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(Error::VaultStatus { what, status });
    }
    Ok(SnapshotDownload { what, resp })
}

/// Restores the snapshot `body` (raft index `index`) into the node at `addr` with `token`
/// (`POST sys/storage/raft/snapshot`, verified against the shared seal, never forced) and waits
/// until the node serves the restored data: its applied index moved to at least `index` and a
/// token request is answered (requests block while OpenBao restores). The time from the POST
/// to that point. The agent's restore path, public for the replication benchmark.
pub async fn restore_snapshot(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    body: Vec<u8>,
    index: u64,
) -> Result<Duration> {
    let before = applied_index(http, addr).await;
    let started = Instant::now();
    let what = "restore snapshot";
    let resp = http
        .post(endpoint(addr, "sys/storage/raft/snapshot"))
        .header("X-Vault-Token", token.expose())
        .body(body)
        .send()
        .await
        .map_err(|source| Error::VaultRequest { what, source })?;
    let status = resp.status().as_u16();
    if !matches!(status, 200 | 204) {
        return Err(Error::VaultStatus { what, status });
    }
    loop {
        if started.elapsed() > RESTORE_TIMEOUT {
            return Err(Error::VaultRestoreTimeout {
                index,
                after: RESTORE_TIMEOUT,
            });
        }
        let applied = applied_index(http, addr).await;
        let moved = applied.is_some_and(|a| a >= index && before.is_none_or(|b| a != b));
        if moved && super::token::token_served(http, addr, token).await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Raft applied index of the node at `addr` (`sys/leader`, no token); `None` without a usable
/// answer within the poll timeout.
pub async fn applied_index(http: &reqwest::Client, addr: &Url) -> Option<u64> {
    let resp = http
        .get(endpoint(addr, "sys/leader"))
        .timeout(POLL_TIMEOUT)
        .send()
        .await
        .ok()?;
    if resp.status().as_u16() != 200 {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    v.get("raft_applied_index").and_then(Value::as_u64)
}
