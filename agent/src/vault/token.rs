//! What the agent does with its DR token on the local node: renew it (`auth/token/renew-self`),
//! check that it is served (`auth/token/lookup-self`), and the promotion canary, a write and
//! read in the token's cubbyhole that proves the node takes writes.

use super::{POLL, POLL_TIMEOUT, endpoint};
use crate::error::{Error, Result, request_error_kind};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use url::Url;
use vault_dr_common::Secret;

/// The canary path, in the DR token's cubbyhole.
pub const CANARY_PATH: &str = "cubbyhole/vault-dr-canary";

/// Renews `token` at the node at `addr` (`auth/token/renew-self`, within the poll timeout), so
/// that a periodic token never expires. [`Error::VaultStatus`] when the node answered but did
/// not renew, [`Error::VaultRequest`] when it did not answer.
pub async fn renew_self(http: &reqwest::Client, addr: &Url, token: &Secret) -> Result<()> {
    const WHAT: &str = "auth/token/renew-self";
    let r = http
        .post(endpoint(addr, WHAT))
        .header("X-Vault-Token", token.expose())
        .timeout(POLL_TIMEOUT)
        .json(&json!({}))
        .send()
        .await
        .map_err(|source| Error::VaultRequest { what: WHAT, source })?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(Error::VaultStatus {
            what: WHAT,
            status: r.status().as_u16(),
        })
    }
}

/// Whether `auth/token/lookup-self` answers 200 within the poll timeout (while OpenBao
/// restores a snapshot, requests block).
pub async fn token_served(http: &reqwest::Client, addr: &Url, token: &Secret) -> bool {
    let r = http
        .get(endpoint(addr, "auth/token/lookup-self"))
        .header("X-Vault-Token", token.expose())
        .timeout(POLL_TIMEOUT)
        .send()
        .await;
    matches!(r, Ok(r) if r.status().as_u16() == 200)
}

/// Writes `{term, node, at}` to [`CANARY_PATH`] at the node at `addr` and reads it back,
/// retrying until `within` has passed; [`Error::Canary`] names the last failure.
pub async fn canary(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    term: u64,
    node: &str,
    within: Duration,
) -> Result<()> {
    let url = endpoint(addr, CANARY_PATH);
    let at = chrono::Utc::now().to_rfc3339();
    let body = json!({ "term": term, "node": node, "at": at });
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let write = http
            .post(url.clone())
            .header("X-Vault-Token", token.expose())
            .timeout(POLL_TIMEOUT)
            .json(&body)
            .send()
            .await;
        match write {
            Ok(r) if matches!(r.status().as_u16(), 200 | 204) => {
                let read = http
                    .get(url.clone())
                    .header("X-Vault-Token", token.expose())
                    .timeout(POLL_TIMEOUT)
                    .send()
                    .await;
                match read {
                    Ok(r) if r.status().as_u16() == 200 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if v.pointer("/data/at").and_then(Value::as_str) == Some(at.as_str()) {
                            return Ok(());
                        }
                        last = "read back a different value".into();
                    }
                    Ok(r) => last = format!("read: HTTP {}", r.status().as_u16()),
                    Err(e) => last = format!("read: {}", request_error_kind(&e)),
                }
            }
            Ok(r) => last = format!("write: HTTP {}", r.status().as_u16()),
            Err(e) => last = format!("write: {}", request_error_kind(&e)),
        }
        tokio::time::sleep(POLL).await;
    }
    Err(Error::Canary(last))
}
