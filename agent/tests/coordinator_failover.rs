//! The agent with a list of coordinator URLs (`--coordinator-url a,b,c`): a closed port and a
//! follower answering 503 are passed over within one report, the agent then sticks to the
//! coordinator that answered 2xx, and moves on when that one turns follower (503).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use url::Url;
use vault_dr_agent::Config;
use vault_dr_common::{DesiredState, Role};

mod support;

/// One fake coordinator replica: leader (answers a desired state) or follower (503).
#[derive(Clone, Default)]
struct Replica {
    leader: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn reports(State(r): State<Replica>) -> axum::response::Response {
    r.hits.fetch_add(1, Ordering::SeqCst);
    if !r.leader.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not the leader").into_response();
    }
    axum::Json(DesiredState {
        term: 2,
        cluster: "dc2".into(),
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
}

async fn serve(r: Replica) -> Url {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    let app = Router::new()
        .route("/v1/reports", post(reports))
        .with_state(r);
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

async fn wait(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reports_go_to_the_replica_that_answers_and_follow_the_leadership() {
    let dead = support::closed_port();
    let a = Replica::default();
    let b = Replica::default();
    b.leader.store(true, Ordering::SeqCst);
    let (a_url, b_url) = (serve(a.clone()).await, serve(b.clone()).await);

    let vault = dead.clone();
    let mut config = Config::minimal("dc2", "n1", vault);
    config.interval = Duration::from_millis(50);
    config.coordinator = Some(support::coordinator(dead, "t"));
    config.coordinator_fallbacks = vec![a_url, b_url];
    let agent = support::spawn(config).await;

    // First report: dead port, then a (503), then b (leader) — all in one round.
    wait("b gets a report", || b.hits.load(Ordering::SeqCst) >= 1).await;
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        1,
        "the follower was asked once"
    );
    // It sticks to b: more reports, none to a.
    wait("b gets five reports", || b.hits.load(Ordering::SeqCst) >= 5).await;
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        1,
        "no report to the follower"
    );

    // Leadership moves to a: b answers 503, the agent wraps around the list to a.
    b.leader.store(false, Ordering::SeqCst);
    a.leader.store(true, Ordering::SeqCst);
    let b_before = b.hits.load(Ordering::SeqCst);
    wait("a gets reports again", || {
        a.hits.load(Ordering::SeqCst) >= 4
    })
    .await;
    let b_after = b.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        b_after,
        "the agent stays with the new leader"
    );
    assert!(b_after > b_before, "b answered 503 at least once first");

    agent.stop().await.unwrap().unwrap();
}
