//! A real Prometheus scrapes a real agent (probing a real OpenBao node) and a query through
//! Prometheus' HTTP API returns the agent's metrics; every agent series carries the agent's
//! `cluster` and `node` labels with no relabelling, and every query of the dashboard and the
//! alerts over agent metrics evaluates in that Prometheus to series grouped by those labels.
//!
//! Needs `.tools/bin/bao`, `.tools/bin/helm` (the alerts are rendered from the chart) and the
//! Debian `prometheus` (run `scripts/setup.sh`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tokio::net::TcpListener;
use vault_dr_agent::Config;
use vault_dr_lab::wait::wait_for;
use vault_dr_tests::lab::LabCluster;
use vault_dr_tests::prometheus::PrometheusServer;

/// The `by (...)` labels of a PromQL expression's outermost aggregation.
fn grouping(expr: &str) -> Vec<String> {
    expr.split_once("by (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(labels, _)| labels.split(',').map(|l| l.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// Evaluates `expr` (a dashboard or alert query of `source`) in `prom`: it must parse and run;
/// its aggregation (the part before a final comparison such as `== 0` or `> 0`, which may
/// rightly select nothing now) must return series, each with every label it groups by, and
/// `cluster` and `node` the agent's own.
async fn check_grouped_by_agent_labels(
    prom: &PrometheusServer,
    source: &str,
    expr: &str,
    node: &str,
) {
    // Grafana's range variable, as a dashboard over the last 5 minutes has it.
    let expr = expr.replace("$__range", "5m");
    prom.query(&expr)
        .await
        .unwrap_or_else(|e| panic!("{source}: {expr}: {e}"));
    let aggregation = [" == ", " > ", " < "]
        .iter()
        .filter_map(|op| expr.rsplit_once(op).map(|(left, _)| left))
        .min_by_key(|left| left.len())
        .unwrap_or(&expr)
        .trim()
        .to_owned();
    let by = grouping(&aggregation);
    assert!(
        by.iter().any(|l| l == "cluster"),
        "{source}: {expr} does not group by cluster"
    );
    let result = prom
        .wait_for(&aggregation, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{source}: {aggregation}: {e}"));
    for series in &result {
        let labels = &series["metric"];
        for l in &by {
            assert!(
                labels.get(l).is_some(),
                "{source}: {aggregation}: no {l} in {series}"
            );
        }
        assert_eq!(
            labels["cluster"], "agent-prom",
            "{source}: {aggregation}: {series}"
        );
        if by.iter().any(|l| l == "node") {
            assert_eq!(labels["node"], node, "{source}: {aggregation}: {series}");
        }
    }
    println!("{source}: {aggregation} -> {} series", result.len());
}

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
    // No pid file: the agent finds the `bao` that listens on its --vault-addr.
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

    // Found by its listener, the figures are the node's process's, not the host's.
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
    assert_eq!(
        report["host"]["pid"].as_u64(),
        cluster.nodes()[0].pid().map(u64::from),
        "{report}"
    );

    // Every agent series carries the agent's own cluster and node (no relabelling here).
    let node = cluster.nodes()[0].name();
    let all = prom
        .query(r#"count({__name__=~"vault_dr_agent_.+"})"#)
        .await
        .unwrap();
    let labelled = prom
        .query(&format!(
            r#"count({{__name__=~"vault_dr_agent_.+",cluster="agent-prom",node="{node}"}})"#
        ))
        .await
        .unwrap();
    assert!(first_value(&all).is_some_and(|n| n > 30.0), "{all}");
    assert_eq!(
        first_value(&all),
        first_value(&labelled),
        "{all} vs {labelled}"
    );

    // The dashboard's and the alerts' queries over agent metrics, in this Prometheus.
    let exprs: Vec<(&str, String)> = crate::helm_chart::dashboard_exprs()
        .into_iter()
        .map(|e| ("dashboard", e))
        .chain(
            crate::helm_chart::rule_exprs()
                .into_iter()
                .map(|e| ("alerts", e)),
        )
        .filter(|(_, e)| {
            let names = crate::helm_chart::metric_names(e);
            !names.is_empty() && names.iter().all(|n| n.starts_with("vault_dr_agent_"))
        })
        .collect();
    assert!(exprs.len() >= 10, "{exprs:#?}");
    for (source, expr) in &exprs {
        check_grouped_by_agent_labels(&prom, source, expr, node).await;
    }

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
