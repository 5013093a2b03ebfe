//! The optional TLS listener: with `[tls]` the coordinator serves its API over rustls only, a
//! client that trusts the certificate gets answers, a plain-HTTP client gets none, and an
//! unreadable certificate is a configuration error naming the field (exit 64 in the binary).
//!
//! The certificate is made by `vault_dr_tests::tls::certificates` (the `openssl` command line
//! tool, installed by `scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use vault_dr_coordinator::config::{Config, ENV_TOKEN_FILE};

const TOKEN: &str = "tls-test-token";

fn config(dir: &Path) -> Config {
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let env = BTreeMap::from([(
        ENV_TOKEN_FILE.to_owned(),
        dir.join("token").display().to_string(),
    )]);
    Config::parse(
        r#"
        listen = "127.0.0.1:0"
        [tls]
        cert_file = "cert.pem"
        key_file = "key.pem"
        [store]
        path = "store.sqlite"
        [coordination]
        backend = "local"
        path = "coordination.json"
        [[clusters]]
        name = "dc1"
        role = "primary"
        api_addrs = ["http://127.0.0.1:9"]
        nodes = ["dc1-0"]
        [[clusters]]
        name = "dc2"
        api_addrs = ["http://127.0.0.1:9"]
        nodes = ["dc2-0"]
        "#,
        dir,
        &env,
    )
    .unwrap()
}

#[tokio::test]
async fn the_api_is_served_over_tls_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    vault_dr_tests::tls::certificates(dir.path()).unwrap();
    let config = config(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vault_dr_coordinator::run(config, listener, async move {
        let _ = stop_rx.await;
    }));

    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let https = vault_dr_common::http::client_builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut status = None;
    for _ in 0..50 {
        match https
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
        {
            Ok(r) => {
                status = Some(Ok(r.status()));
                break;
            }
            Err(e) => status = Some(Err(format!("{e:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        Some(Ok(reqwest::StatusCode::OK)),
        "no TLS answer on /healthz"
    );
    let topology = https
        .get(format!("https://localhost:{port}/v1/topology"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(topology.status().is_success() || topology.status().as_u16() == 503);

    // Plain HTTP on the same port gets no HTTP answer.
    let plain = vault_dr_common::http::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        r.as_ref().map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served: {r:?}"
    );
    // A client that does not trust the certificate is refused by its own TLS check.
    let untrusting = vault_dr_common::http::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );

    let _ = stop_tx.send(());
    let ended = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the TLS server stops on shutdown");
    assert!(ended.unwrap().is_ok());
}

#[tokio::test]
async fn an_unreadable_certificate_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let config = config(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = vault_dr_coordinator::run(config, listener, std::future::pending())
        .await
        .expect_err("garbage PEM must not start a listener");
    assert!(
        matches!(err, vault_dr_coordinator::Error::Config(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
}
