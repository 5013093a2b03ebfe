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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;

    /// Serves `app` on a free loopback port; its base URL.
    async fn serve(app: Router) -> Url {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        url
    }

    fn http() -> reqwest::Client {
        vault_dr_common::http::client_builder()
            .no_proxy()
            .build()
            .unwrap()
    }

    fn token() -> Secret {
        Secret::new("dr-token".to_owned())
    }

    #[tokio::test]
    async fn a_renewal_refused_is_a_status_and_no_answer_is_a_request_error() {
        let ok =
            serve(Router::new().route("/v1/auth/token/renew-self", post(|| async { "{}" }))).await;
        assert!(renew_self(&http(), &ok, &token()).await.is_ok());
        let refused = serve(Router::new().route(
            "/v1/auth/token/renew-self",
            post(|| async { StatusCode::FORBIDDEN }),
        ))
        .await;
        let e = renew_self(&http(), &refused, &token()).await.unwrap_err();
        assert!(matches!(e, Error::VaultStatus { status: 403, .. }), "{e}");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap()
        };
        let e = renew_self(&http(), &closed, &token()).await.unwrap_err();
        assert_eq!(e.kind(), "connect");
    }

    #[tokio::test]
    async fn a_canary_read_back_with_another_value_fails_naming_it() {
        // Takes every write, always reads back an old canary.
        let app = Router::new().route(
            "/v1/cubbyhole/vault-dr-canary",
            post(|| async { StatusCode::NO_CONTENT })
                .get(|| async { r#"{"data":{"at":"2020-01-01T00:00:00Z"}}"# }),
        );
        let addr = serve(app).await;
        let e = canary(
            &http(),
            &addr,
            &token(),
            4,
            "dc2-0",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), "canary");
        assert_eq!(e.to_string(), "canary: read back a different value");
    }
}
