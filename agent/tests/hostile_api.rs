//! The agent against a hostile coordinator (issue 8, scenario 7, the agent's side of the
//! report exchange): the answers to its reports are garbage, 100 000 nested arrays, a 4 MiB
//! string, a desired state for another cluster, a stale term, error statuses and a redirect to
//! another origin. The agent keeps running and serving, counts each failure by kind, keeps only
//! the valid desired state of its own cluster with the highest term, and never sends its bearer
//! token to the other origin.

// Test code: a failed unwrap is a failed test (clippy.toml allows it only inside #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use url::Url;
use vault_dr_agent::Config;
use vault_dr_common::{DesiredState, Role, Secret};

mod support;

const TOKEN: &str = "hostile-api-bearer-7f3e9";

/// What the hostile coordinator answers to report number n (1-based); after the list, the
/// valid desired state again.
fn answer(n: usize, thief: &str) -> Response {
    let desired = |cluster: &str, term: u64| {
        axum::Json(DesiredState {
            term,
            cluster: cluster.into(),
            role: Role::Secondary,
            primary: "dc1".into(),
            primary_api_addr: None,
            failover_in_progress: false,
            promotion: Default::default(),
            final_snapshot_from: None,
            primary_suspect: false,
            raft_formed_term: None,
            raft_recover_node: None,
            raft_formed_by: None,
            raft_handover: false,
        })
        .into_response()
    };
    match n {
        1 => (StatusCode::OK, vec![0xffu8, 0x00, 0x13, 0x37]).into_response(),
        2 => (StatusCode::OK, "[".repeat(100_000)).into_response(),
        3 => (StatusCode::OK, format!("\"{}\"", "a".repeat(4 << 20))).into_response(),
        4 => desired("dc9", 50),
        5 => desired("dc2", 5),
        6 => desired("dc2", 3),
        7 => (
            StatusCode::OK,
            r#"{"term":"7","cluster":"dc2","role":"primary","primary":"dc2"}"#,
        )
            .into_response(),
        8 => (StatusCode::UNAUTHORIZED, "{\"error\":\"no\"}").into_response(),
        9 => (StatusCode::SERVICE_UNAVAILABLE, "follower").into_response(),
        10 => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{thief}/v1/reports"))],
        )
            .into_response(),
        _ => desired("dc2", 5),
    }
}

#[derive(Clone, Default)]
struct Hostile {
    count: Arc<Mutex<usize>>,
    thief: Arc<Mutex<String>>,
}

async fn reports(State(h): State<Hostile>) -> Response {
    let n = {
        let mut c = h.count.lock().unwrap();
        *c += 1;
        *c
    };
    let thief = h.thief.lock().unwrap().clone();
    answer(n, &thief)
}

/// The other origin: records every Authorization header it gets.
#[derive(Clone, Default)]
struct Thief {
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

async fn steal(State(t): State<Thief>, headers: HeaderMap) -> Response {
    t.seen.lock().unwrap().push(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    (StatusCode::SERVICE_UNAVAILABLE, "follower").into_response()
}

fn metric(text: &str, series: &str) -> f64 {
    support::sample(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_do_not_crash_the_agent_nor_move_its_desired_state() {
    let thief = Thief::default();
    let thief_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_url = format!("http://{}", thief_listener.local_addr().unwrap());
    let thief_app = Router::new()
        .route("/v1/reports", post(steal))
        .with_state(thief.clone());
    let thief_server = tokio::spawn(async move { axum::serve(thief_listener, thief_app).await });

    let hostile = Hostile::default();
    *hostile.thief.lock().unwrap() = thief_url;
    let coord = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coord_addr = coord.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/reports", post(reports))
        .with_state(hostile.clone());
    let server = tokio::spawn(async move { axum::serve(coord, app).await });

    let vault = support::closed_port();
    let mut config = Config::minimal("dc2", "dc2-0", vault);
    config.interval = Duration::from_millis(50);
    config.coordinator = Some(support::coordinator(
        Url::parse(&format!("http://{coord_addr}")).unwrap(),
        TOKEN,
    ));
    let agent = support::spawn(config).await;
    let agent_url = agent.url.clone();

    // Wait until every hostile answer was served and a few valid ones after them (the agent
    // backs off after failures, so this takes some seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    while *hostile.count.lock().unwrap() < 13 {
        assert!(
            Instant::now() < deadline,
            "the agent stopped reporting after {} answers",
            hostile.count.lock().unwrap()
        );
        assert!(!agent.is_finished(), "the agent ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let get = |path: &str| http.get(format!("{agent_url}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200, "still alive");
    let desired: DesiredState = get("/v1/desired").await.unwrap().json().await.unwrap();
    assert_eq!(
        (desired.cluster.as_str(), desired.term, desired.role),
        ("dc2", 5, Role::Secondary),
        "only the valid desired state of its own cluster with the highest term is kept"
    );
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    let failures = |kind: &str| {
        metric(
            &text,
            &format!("vault_dr_agent_report_send_failures_total{{kind=\"{kind}\"}}"),
        )
    };
    // Garbage, nesting, the 4 MiB string and the wrongly typed term: undecodable.
    assert!(failures("decode") >= 4.0, "decode failures: {text}");
    // 401, 503 (and the thief's 503 after the redirect).
    assert!(failures("status") >= 2.0, "status failures: {text}");
    assert_eq!(metric(&text, "vault_dr_agent_desired_term"), 5.0);
    // The redirect may or may not be followed; if it is, the token stays at home.
    let seen = thief.seen.lock().unwrap().clone();
    println!("the other origin got {} request(s): {seen:?}", seen.len());
    for auth in &seen {
        assert!(
            !auth.as_deref().unwrap_or("").contains(TOKEN),
            "the bearer token was sent to another origin"
        );
    }

    agent
        .stop()
        .await
        .expect("the agent stops within 5 s")
        .unwrap();
    server.abort();
    thief_server.abort();
}

/// Request paths with the `X-Vault-Token` each carried.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The other origin of a Vault redirect: records the paths and `X-Vault-Token` headers it gets.
#[derive(Clone, Default)]
struct VaultThief {
    seen: Seen,
}

async fn steal_vault_token(
    State(t): State<VaultThief>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    t.seen.lock().unwrap().push((
        uri.path().to_owned(),
        headers
            .get("x-vault-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    ));
    (StatusCode::NOT_FOUND, "").into_response()
}

/// Found by this suite: reqwest follows redirects by default and strips only `Authorization`
/// and cookies on a cross-origin hop, so the agent's Vault client hands the DR token in
/// `X-Vault-Token` to whatever host a 307 names (`sys/leader`, `sys/storage/raft/autopilot/
/// state`, ... all arrived at the other origin with the token). Fixed: the Vault client in
/// `agent/src/vault/mod.rs` (`http_client`) follows no redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_redirect_to_another_origin_gets_no_token() {
    let thief = VaultThief::default();
    let thief_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_url = format!("http://{}", thief_listener.local_addr().unwrap());
    let thief_app = Router::new()
        .fallback(steal_vault_token)
        .with_state(thief.clone());
    let thief_server = tokio::spawn(async move { axum::serve(thief_listener, thief_app).await });
    // A "Vault" that is healthy and active, and redirects everything else to the other origin.
    let vault_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vault_addr = vault_listener.local_addr().unwrap();
    let vault_app = Router::new().fallback(move |uri: axum::http::Uri| {
        let target = format!("{thief_url}{uri}");
        async move {
            if uri.path() == "/v1/sys/health" {
                return axum::Json(serde_json::json!({
                    "initialized": true, "sealed": false, "standby": false,
                    "version": "2.7.2", "cluster_name": "x", "cluster_id": "y"
                }))
                .into_response();
            }
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
        }
    });
    let vault_server = tokio::spawn(async move { axum::serve(vault_listener, vault_app).await });

    let mut config = Config::minimal(
        "dc2",
        "dc2-0",
        Url::parse(&format!("http://{vault_addr}")).unwrap(),
    );
    config.interval = Duration::from_millis(100);
    config.vault.token = Some(Secret::new(TOKEN));
    let agent = support::spawn(config).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = thief.seen.lock().unwrap().clone();
    let _ = agent.stop().await;
    vault_server.abort();
    thief_server.abort();
    let leaked: std::collections::BTreeSet<&String> = seen
        .iter()
        .filter(|(_, t)| t.as_deref() == Some(TOKEN))
        .map(|(p, _)| p)
        .collect();
    assert!(
        leaked.is_empty(),
        "the Vault token went to another origin with: {leaked:?}"
    );
}

/// Found by this suite: the agent follows a 307 on `POST /v1/reports` to another origin
/// (reqwest's default policy), re-posts its report there (without the bearer token) and adopts
/// the desired state that origin answers: whoever can make the coordinator's address redirect
/// (a proxy, an ingress rule) could steer the agent's term and role. Fixed: the coordinator
/// client in `agent/src/report.rs` follows no redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_redirect_to_another_origin_is_not_followed() {
    // The other origin answers with a desired state of a higher term that makes dc2 primary.
    let thief_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_url = format!("http://{}", thief_listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(0usize));
    let counted = hits.clone();
    let thief_app = Router::new().route(
        "/v1/reports",
        post(move || {
            let counted = counted.clone();
            async move {
                *counted.lock().unwrap() += 1;
                axum::Json(DesiredState {
                    term: 99,
                    cluster: "dc2".into(),
                    role: Role::Primary,
                    primary: "dc2".into(),
                    primary_api_addr: None,
                    failover_in_progress: false,
                    promotion: Default::default(),
                    final_snapshot_from: None,
                    primary_suspect: false,
                    raft_formed_term: None,
                    raft_recover_node: None,
                    raft_formed_by: None,
                    raft_handover: false,
                })
            }
        }),
    );
    let thief_server = tokio::spawn(async move { axum::serve(thief_listener, thief_app).await });
    let coord = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coord_addr = coord.local_addr().unwrap();
    let app = Router::new().route(
        "/v1/reports",
        post(move || {
            let target = format!("{thief_url}/v1/reports");
            async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(coord, app).await });

    let vault = support::closed_port();
    let mut config = Config::minimal("dc2", "dc2-0", vault);
    config.interval = Duration::from_millis(100);
    config.coordinator = Some(support::coordinator(
        Url::parse(&format!("http://{coord_addr}")).unwrap(),
        TOKEN,
    ));
    let agent = support::spawn(config).await;
    let agent_url = agent.url.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let desired = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{agent_url}/v1/desired"))
        .send()
        .await
        .unwrap()
        .status();
    let hits = *hits.lock().unwrap();
    let _ = agent.stop().await;
    server.abort();
    thief_server.abort();
    assert_eq!(hits, 0, "the report went to another origin {hits} time(s)");
    assert_eq!(
        desired, 404,
        "a desired state from another origin was adopted"
    );
}
