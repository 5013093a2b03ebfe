//! A real Prometheus scrapes a real agent (probing a real OpenBao node) and a query through
//! Prometheus' HTTP API returns the agent's metrics.
//!
//! Needs `.tools/bin/bao` and the Debian `prometheus` (run `scripts/setup.sh`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tokio::net::TcpListener;
use vault_dr_agent::Config;
use vault_dr_lab::wait::wait_for;
use vault_dr_tests::lab::LabCluster;
use vault_dr_tests::prometheus::PrometheusServer;

/// The value of the first sample of an instant-query answer, if any.
fn first_value(data: &serde_json::Value) -> Option<f64> {
    data.pointer("/result/0/value/1")?.as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_answers_a_query() {
    let mut clusters = LabCluster::start_group_with(&["agent-prom"], true, None)
        .await
        .unwrap_or_else(|e| panic!("lab start failed (run scripts/setup.sh?): {e}"));
    let cluster = clusters.remove(0);
    let mut config = Config::minimal(
        "agent-prom",
        cluster.nodes()[0].name(),
        cluster.api_addr().clone(),
    );
    config.interval = Duration::from_millis(500);
    // No pid file: the agent finds the `bao` process by name.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(vault_dr_agent::run(config, listener, async {
        let _ = stopped.await;
    }));

    let prom = PrometheusServer::start(
        &[("vault-dr-agent", target.as_str())],
        Duration::from_secs(1),
    )
    .await
    .unwrap_or_else(|e| panic!("prometheus start failed (run scripts/setup.sh?): {e}"));

    let query = r#"vault_dr_agent_node_state{job="vault-dr-agent",state="active"}"#;
    wait_for(
        "Prometheus to hold an active node state",
        Duration::from_secs(30),
        || async {
            let data = prom.query(query).await.unwrap();
            if first_value(&data) == Some(1.0) {
                Ok(())
            } else {
                Err(data)
            }
        },
    )
    .await;
    // The target is up and the agent's own histogram made it through as well.
    let up = prom.query(r#"up{job="vault-dr-agent"}"#).await.unwrap();
    assert_eq!(first_value(&up), Some(1.0), "{up}");
    let count = prom
        .query("vault_dr_agent_probe_duration_seconds_count")
        .await
        .unwrap();
    assert!(first_value(&count).is_some_and(|c| c >= 1.0), "{count}");
    let mem = prom.query("vault_dr_agent_memory_bytes").await.unwrap();
    assert!(first_value(&mem).is_some_and(|b| b > 0.0), "{mem}");

    // Found by name, the figures are a process's, not the host's.
    let report: serde_json::Value = vault_dr_common::http::client_builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{target}/v1/report"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["host"]["source"], "process", "{report}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
