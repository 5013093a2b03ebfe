//! The MongoDB store on a real MongoDB wire server (SecantusDB, started per test): the shared
//! store suite, the TTL index, and the buffered store riding out a server outage.
//!
//! Needs, in `tests/Cargo.toml`: `vault-dr-coordinator` with the `test-util` feature (the shared
//! suite), `chrono` and `prometheus`. Run with `cargo test -p vault-dr-tests --test integration store_mongo::`.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vault_dr_lab::wait::wait_for;

use chrono::Utc;
use prometheus::Registry;
use vault_dr_coordinator::model::{FailoverStatus, Step, StepRecord};
use vault_dr_coordinator::store::buffered::BufferedStore;
use vault_dr_coordinator::store::mongo::MongoStore;
use vault_dr_coordinator::store::{Store, StoreError, suite};
use vault_dr_tests::mongo::MongoServer;

const RETENTION: Duration = Duration::from_secs(7 * 86_400);

async fn server() -> MongoServer {
    MongoServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start SecantusDB (run `bash scripts/setup.sh`): {e}"))
}

async fn store(server: &MongoServer, db: &str, retention: Duration) -> MongoStore {
    MongoStore::connect(&server.uri(), db, retention)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn metric(registry: &Registry, name: &str) -> f64 {
    let families = registry.gather();
    let family = families
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("metric {name} not registered"));
    let m = &family.get_metric()[0];
    match family.get_field_type() {
        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
        prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
        other => panic!("{name}: unexpected type {other:?}"),
    }
}

#[tokio::test]
async fn the_shared_suite_passes_on_the_mongodb_store() {
    let server = server().await;
    let store = store(&server, "suite", RETENTION).await;
    suite::run_all(Arc::new(store.clone())).await;
    assert_eq!(store.report_ttl().await.unwrap(), Some(RETENTION));
}

#[tokio::test]
async fn the_shared_suite_passes_on_the_buffered_store_over_mongodb() {
    let server = server().await;
    let inner = store(&server, "buffered_suite", RETENTION).await;
    let registry = Registry::new();
    let buffered = BufferedStore::new(Arc::new(inner), 1000, &registry).unwrap();
    let settle = {
        let b = Arc::clone(&buffered);
        move || {
            let b = Arc::clone(&b);
            async move { assert!(b.flush(Duration::from_secs(30)).await, "flush") }
        }
    };
    suite::run_all_settled(buffered.clone(), settle).await;
}

#[tokio::test]
async fn init_creates_the_ttl_index_and_a_new_retention_changes_it() {
    let server = server().await;
    let week = store(&server, "ttl", RETENTION).await;
    assert_eq!(
        week.report_ttl().await.unwrap(),
        None,
        "no index before init"
    );
    week.init().await.unwrap();
    assert_eq!(week.report_ttl().await.unwrap(), Some(RETENTION));
    // The coordinator restarted with a shorter retention: init adjusts the index.
    let day = store(&server, "ttl", Duration::from_secs(86_400)).await;
    day.init().await.unwrap();
    assert_eq!(
        day.report_ttl().await.unwrap(),
        Some(Duration::from_secs(86_400))
    );
}

#[tokio::test]
async fn a_dead_server_is_noticed_within_seconds() {
    let mut server = server().await;
    let store = store(&server, "dead", RETENTION).await;
    store.init().await.unwrap();
    server.kill();
    let started = Instant::now();
    let err = store
        .put_failover(&suite::failover_record(1, "dc1", "dc2", Utc::now()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "outage noticed after {took:?}"
    );
}

#[tokio::test]
async fn the_buffered_store_rides_out_a_mongodb_outage() {
    let mut server = server().await;
    let mongo = store(&server, "outage", RETENTION).await;
    let registry = Registry::new();
    let store = BufferedStore::new(Arc::new(mongo), 1000, &registry).unwrap();
    store.init().await.unwrap();

    let now = Utc::now();
    let mut journal = suite::failover_record(42, "dc1", "dc2", now);
    store.put_failover(&journal).await.unwrap();
    store
        .put_report(&suite::report("dc2", "n1", 1, now))
        .await
        .unwrap();
    assert!(store.flush(Duration::from_secs(10)).await);

    server.kill();
    // Writes never wait for the dead server.
    journal.steps.push(StepRecord {
        step: Step::Fenced,
        started_at: now,
        finished_at: Some(Utc::now()),
        by: "coordinator-0".into(),
        detail: "sealed dc1".into(),
        error: None,
        effect_at: None,
        later: Vec::new(),
    });
    journal.status = FailoverStatus::InProgress;
    let started = Instant::now();
    store.put_failover(&journal).await.unwrap();
    for seq in 2..=20 {
        store
            .put_report(&suite::report("dc2", "n1", seq, Utc::now()))
            .await
            .unwrap();
    }
    let decision = suite::decision(3, Utc::now());
    store.put_decision(&decision).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "21 writes took {took:?}");

    // Give the writer time to fail against the dead server.
    wait_for("a write failure", Duration::from_secs(15), || async {
        metric(&registry, "vault_dr_coordinator_store_write_failures_total") >= 1.0
    })
    .await;
    assert!(metric(&registry, "vault_dr_coordinator_store_backlog") > 0.0);
    // The journal step written during the outage is visible to the coordinator.
    assert_eq!(
        store.failover(&journal.id).await.unwrap(),
        Some(journal.clone())
    );

    // MongoDB comes back (empty: in-memory storage); the buffer re-sends what was queued.
    server.restart().await.unwrap();
    assert!(
        store.flush(Duration::from_secs(60)).await,
        "backlog {} not drained",
        store.backlog()
    );
    assert_eq!(metric(&registry, "vault_dr_coordinator_store_backlog"), 0.0);
    assert_eq!(
        metric(&registry, "vault_dr_coordinator_store_dropped_total"),
        0.0
    );

    // Read MongoDB directly, not through the buffer.
    let direct = MongoStore::connect(&server.uri(), "outage", RETENTION)
        .await
        .unwrap();
    assert_eq!(direct.failover(&journal.id).await.unwrap(), Some(journal));
    let history = direct
        .report_history("dc2", "n1", now - chrono::Duration::minutes(1))
        .await
        .unwrap();
    let seqs: Vec<u64> = history.iter().map(|r| r.report.seq).collect();
    assert_eq!(
        seqs,
        (2..=20).collect::<Vec<_>>(),
        "queued reports, in order"
    );
    assert_eq!(direct.latest_decision().await.unwrap(), Some(decision));
    // The background writer re-created the indexes on the new, empty server.
    assert_eq!(direct.report_ttl().await.unwrap(), Some(RETENTION));
}
