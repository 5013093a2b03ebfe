//! The agent's Prometheus metrics, `vault_dr_agent_<thing>_<unit>`, registered in the one
//! [`Registry`] that `run` builds ([`registry`]). Every series carries the agent's `cluster` and
//! `node` (constant labels of the registry), so one Prometheus scraping many agents tells them
//! apart without relabelling. Other labels are bounded: node states, figure sources, failure
//! kinds, results.

use crate::error::Result;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use vault_dr_common::report::HostSource;
use vault_dr_common::{HostStats, NodeState, ReplicationStatus, VaultStatus};

/// The registry of one agent: every series labelled with its `cluster` and `node` (one value
/// each per process, so bounded).
pub fn registry(cluster: &str, node: &str) -> Result<Registry> {
    let labels = [("cluster", cluster), ("node", node)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Registry::new_custom(None, Some(labels))?)
}

/// The sources this agent's figures come from (the `source` label); never `host`.
pub const HOST_SOURCES: [HostSource; 3] =
    [HostSource::Cgroup, HostSource::Process, HostSource::Unknown];

/// Kinds of report send failures (the `kind` label).
pub const SEND_FAILURE_KINDS: [&str; 4] = ["connect", "timeout", "status", "decode"];

/// All metrics of one agent.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `vault_dr_agent_probe_duration_seconds`: latency of answered health probes.
    pub probe_duration: Histogram,
    /// `vault_dr_agent_up`: 1 when the last probe got an answer.
    pub up: IntGauge,
    /// `vault_dr_agent_node_state{state}`: one-hot over [`NodeState::ALL`].
    pub node_state: IntGaugeVec,
    /// `vault_dr_agent_cpu_seconds_total`: cumulative CPU of the node's container or process
    /// (NaN while unknown, as the other figures).
    pub cpu_seconds_total: Gauge,
    /// `vault_dr_agent_cpu_usage_cores`.
    pub cpu_usage_cores: Gauge,
    /// `vault_dr_agent_memory_bytes`.
    pub memory_bytes: Gauge,
    /// `vault_dr_agent_memory_limit_bytes` (0 when unlimited).
    pub memory_limit_bytes: Gauge,
    /// `vault_dr_agent_host_figures_source{source}`: one-hot over [`HOST_SOURCES`]; `unknown`
    /// when the agent cannot tell which process is its node's, or it is gone.
    pub host_source: IntGaugeVec,
    /// `vault_dr_agent_raft_applied_index`.
    pub raft_applied_index: IntGauge,
    /// `vault_dr_agent_raft_commit_index`.
    pub raft_commit_index: IntGauge,
    /// `vault_dr_agent_replication_lag_entries`.
    pub replication_lag_entries: Gauge,
    /// `vault_dr_agent_replication_lag_seconds`.
    pub replication_lag_seconds: Gauge,
    /// `vault_dr_agent_report_send_failures_total{kind}`.
    pub send_failures: IntCounterVec,
    /// `vault_dr_agent_reports_sent_total`.
    pub reports_sent: IntCounter,
    /// `vault_dr_agent_desired_term`: highest term seen from the coordinator.
    pub desired_term: IntGauge,
    /// `vault_dr_agent_probe_latency_p99_seconds`: p99 of the rolling window.
    pub probe_latency_p99: Gauge,
    /// `vault_dr_agent_snapshot_pulls_total{result}`: snapshot pulls, `ok` or `error`.
    pub snapshot_pulls: IntCounterVec,
    /// `vault_dr_agent_snapshot_restores_total{result}`: restores into the local node.
    pub snapshot_restores: IntCounterVec,
    /// `vault_dr_agent_snapshot_restore_duration_seconds`: POST to serving the restored data.
    pub snapshot_restore_duration: Histogram,
    /// `vault_dr_agent_snapshot_quarantines_total`: diverged data saved by a returning
    /// ex-primary.
    pub snapshot_quarantines: IntCounter,
    /// `vault_dr_agent_server_restarts_total`: restarts of the sealed server of a superseded
    /// primary (`--vault-restart signal`).
    pub server_restarts: IntCounter,
    /// `vault_dr_agent_raft_actions_total{action}`: what the raft backend did to its node
    /// (`permit`, `stop`, `recover`, `quarantine`).
    pub raft_actions: IntCounterVec,
    /// `vault_dr_agent_raft_failed_starts_total`: runs of the server under `vault-dr-launch`
    /// that ended within 10 s without the agent asking (a start that failed).
    pub raft_failed_starts: IntCounter,
    /// `vault_dr_agent_snapshot_index`: raft index of the newest snapshot held.
    pub snapshot_index: IntGauge,
    /// `vault_dr_agent_snapshot_restoring_seconds_total`: time spent restoring (its rate is
    /// the fraction of time the node is blocked by restores).
    pub snapshot_restoring_seconds: prometheus::Counter,
    /// `vault_dr_agent_snapshot_restores_ahead_total`: restores begun because the leader
    /// suspected the primary (ahead of a promotion).
    pub snapshot_restores_ahead: IntCounter,
    /// `vault_dr_agent_gate_open`: 1 while the write gate forwards client requests.
    pub gate_open: IntGauge,
    /// `vault_dr_agent_gate_refused_total{kind}`: client requests a closed gate refused,
    /// `read` or `write`.
    pub gate_refused: IntCounterVec,
}

/// Results of a snapshot pull or restore (the `result` label).
pub const SNAPSHOT_RESULTS: [&str; 2] = ["ok", "error"];

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> Result<T> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Creates and registers every metric in `r`.
    pub fn new(r: &Registry) -> Result<Self> {
        const P: &str = vault_dr_common::telemetry::AGENT_METRICS_PREFIX;
        let g = |name: &str, help: &str| Gauge::new(format!("{P}{name}"), help);
        let m = Self {
            probe_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        format!("{P}probe_duration_seconds"),
                        "Latency of answered sys/health probes",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                )?,
            )?,
            up: reg(
                r,
                IntGauge::new(
                    format!("{P}up"),
                    "1 when the last probe of the node got an answer",
                )?,
            )?,
            node_state: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(format!("{P}node_state"), "Classified node state (one-hot)"),
                    &["state"],
                )?,
            )?,
            cpu_seconds_total: reg(
                r,
                g(
                    "cpu_seconds_total",
                    "Cumulative CPU time of the node's container or server process (NaN: unknown)",
                )?,
            )?,
            cpu_usage_cores: reg(
                r,
                g(
                    "cpu_usage_cores",
                    "CPU the node used over the last interval, in cores (NaN: unknown)",
                )?,
            )?,
            memory_bytes: reg(r, g("memory_bytes", "Memory the node uses (NaN: unknown)")?)?,
            memory_limit_bytes: reg(
                r,
                g(
                    "memory_limit_bytes",
                    "Memory limit of the node (0 = unlimited, NaN: unknown)",
                )?,
            )?,
            host_source: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{P}host_figures_source"),
                        "Where the node's CPU and memory figures come from (one-hot; unknown: no figures)",
                    ),
                    &["source"],
                )?,
            )?,
            raft_applied_index: reg(
                r,
                IntGauge::new(format!("{P}raft_applied_index"), "Raft applied index")?,
            )?,
            raft_commit_index: reg(
                r,
                IntGauge::new(format!("{P}raft_commit_index"), "Raft commit index")?,
            )?,
            replication_lag_entries: reg(
                r,
                g(
                    "replication_lag_entries",
                    "Replication lag in log entries/WALs",
                )?,
            )?,
            replication_lag_seconds: reg(
                r,
                g(
                    "replication_lag_seconds",
                    "Age of the newest replicated data",
                )?,
            )?,
            send_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{P}report_send_failures_total"),
                        "Reports the coordinator did not accept, by kind",
                    ),
                    &["kind"],
                )?,
            )?,
            reports_sent: reg(
                r,
                IntCounter::new(
                    format!("{P}reports_sent_total"),
                    "Reports accepted by the coordinator",
                )?,
            )?,
            desired_term: reg(
                r,
                IntGauge::new(
                    format!("{P}desired_term"),
                    "Highest term seen in a desired state",
                )?,
            )?,
            probe_latency_p99: reg(
                r,
                g(
                    "probe_latency_p99_seconds",
                    "p99 of the rolling probe latency window",
                )?,
            )?,
            snapshot_pulls: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{P}snapshot_pulls_total"),
                        "Raft snapshot pulls from the primary, by result",
                    ),
                    &["result"],
                )?,
            )?,
            snapshot_restores: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{P}snapshot_restores_total"),
                        "Snapshot restores into the local node, by result",
                    ),
                    &["result"],
                )?,
            )?,
            snapshot_restore_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        format!("{P}snapshot_restore_duration_seconds"),
                        "Time from the restore request to the node serving the restored data",
                    )
                    .buckets(vec![
                        1.0, 2.5, 5.0, 5.5, 6.0, 7.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
                    ]),
                )?,
            )?,
            snapshot_quarantines: reg(
                r,
                IntCounter::new(
                    format!("{P}snapshot_quarantines_total"),
                    "Diverged data saved by a returning ex-primary before it follows",
                )?,
            )?,
            server_restarts: reg(
                r,
                IntCounter::new(
                    format!("{P}server_restarts_total"),
                    "Restarts of the sealed server of a superseded primary, so that its seal unseals it",
                )?,
            )?,
            raft_actions: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{P}raft_actions_total"),
                        "Raft backend actions on the node: permit (a start), stop, recover (peers.json), quarantine, step-down (a secondary's voter that led), promote (a node kept a non-voter)",
                    ),
                    &["action"],
                )?,
            )?,
            raft_failed_starts: reg(
                r,
                IntCounter::new(
                    format!("{P}raft_failed_starts_total"),
                    "Starts of the server under vault-dr-launch that failed (it exited within 10 s unasked)",
                )?,
            )?,
            snapshot_index: reg(
                r,
                IntGauge::new(
                    format!("{P}snapshot_index"),
                    "Raft index of the newest snapshot held",
                )?,
            )?,
            snapshot_restoring_seconds: reg(
                r,
                prometheus::Counter::new(
                    format!("{P}snapshot_restoring_seconds_total"),
                    "Seconds spent restoring snapshots into the node (the node answers nothing meanwhile)",
                )?,
            )?,
            snapshot_restores_ahead: reg(
                r,
                IntCounter::new(
                    format!("{P}snapshot_restores_ahead_total"),
                    "Snapshot restores begun because the leader suspected the primary (ahead of a promotion)",
                )?,
            )?,
            gate_open: reg(
                r,
                IntGauge::new(
                    format!("{P}gate_open"),
                    "1 while the write gate forwards client requests to the node",
                )?,
            )?,
            gate_refused: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{P}gate_refused_total"),
                        "Client requests the closed write gate refused (kind: read or write)",
                    ),
                    &["kind"],
                )?,
            )?,
        };
        for kind in ["read", "write"] {
            m.gate_refused.with_label_values(&[kind]).inc_by(0);
        }
        for res in SNAPSHOT_RESULTS {
            m.snapshot_pulls.with_label_values(&[res]).inc_by(0);
            m.snapshot_restores.with_label_values(&[res]).inc_by(0);
        }
        // Every series exists from the start, so absent() and rate() work before the first event.
        for s in NodeState::ALL {
            m.node_state.with_label_values(&[s.as_str()]).set(0);
        }
        for k in SEND_FAILURE_KINDS {
            m.send_failures.with_label_values(&[k]).inc_by(0);
        }
        m.observe_host(&HostStats::UNKNOWN);
        Ok(m)
    }

    /// Records one probe of the local node.
    pub fn observe_vault(&self, v: &VaultStatus) {
        if let Some(ms) = v.last_probe_ms {
            self.probe_duration.observe(ms / 1000.0);
        }
        self.up.set(i64::from(v.last_probe_ms.is_some()));
        for s in NodeState::ALL {
            self.node_state
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == v.state));
        }
        self.probe_latency_p99.set(v.latency.p99_ms / 1000.0);
        if let Some(i) = v.raft_applied_index {
            self.raft_applied_index
                .set(i64::try_from(i).unwrap_or(i64::MAX));
        }
        if let Some(i) = v.raft_commit_index {
            self.raft_commit_index
                .set(i64::try_from(i).unwrap_or(i64::MAX));
        }
    }

    /// Records one host sample. An unknown figure is NaN, never 0 (an idle node) nor a
    /// stale value: comparisons with NaN are false, and graphs show a gap.
    pub fn observe_host(&self, h: &HostStats) {
        self.cpu_seconds_total
            .set(h.cpu_seconds_total.unwrap_or(f64::NAN));
        self.cpu_usage_cores
            .set(h.cpu_usage_cores.unwrap_or(f64::NAN));
        let used = h.memory_used_bytes;
        self.memory_bytes.set(used.map_or(f64::NAN, |b| b as f64));
        // The limit means something only beside a known use (None there is "unlimited").
        self.memory_limit_bytes.set(match used {
            Some(_) => h.memory_limit_bytes.unwrap_or(0) as f64,
            None => f64::NAN,
        });
        for s in HOST_SOURCES {
            self.host_source
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == h.source));
        }
    }

    /// Records one replication status.
    pub fn observe_replication(&self, r: &ReplicationStatus) {
        self.replication_lag_entries
            .set(r.lag_entries.map_or(0.0, |l| l as f64));
        self.replication_lag_seconds
            .set(r.lag_seconds.unwrap_or(0.0));
    }

    /// Counts one failed report of `kind` (one of [`SEND_FAILURE_KINDS`]).
    pub fn send_failed(&self, kind: &str) {
        self.send_failures.with_label_values(&[kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;
    use std::collections::BTreeMap;

    fn text(r: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Every sample of the text: name, labels (in any order on the wire), value.
    fn samples(t: &str) -> Vec<(String, BTreeMap<String, String>, String)> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let labels = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value.to_owned())
            })
            .collect()
    }

    /// The value of `name` whose labels include `want` (besides cluster and node).
    fn value(t: &str, name: &str, want: &[(&str, &str)]) -> String {
        samples(t)
            .into_iter()
            .find(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("no {name} {want:?} in\n{t}"))
    }

    #[test]
    fn every_series_carries_the_agents_cluster_and_node() {
        let r = registry("dc1", "dc1-0").unwrap();
        let m = Metrics::new(&r).unwrap();
        m.send_failed("timeout");
        let t = text(&r);
        let all = samples(&t);
        assert!(all.len() > 30, "{t}");
        for (name, labels, _) in &all {
            assert_eq!(
                labels.get("cluster").map(String::as_str),
                Some("dc1"),
                "{name}"
            );
            assert_eq!(
                labels.get("node").map(String::as_str),
                Some("dc1-0"),
                "{name}"
            );
        }
        let kind = [("kind", "timeout")];
        assert_eq!(
            value(&t, "vault_dr_agent_report_send_failures_total", &kind),
            "1"
        );
    }

    #[test]
    fn unknown_figures_are_nan_with_source_unknown_and_known_ones_are_shown() {
        let r = registry("dc1", "dc1-0").unwrap();
        let m = Metrics::new(&r).unwrap();
        let t = text(&r);
        for g in [
            "cpu_usage_cores",
            "cpu_seconds_total",
            "memory_bytes",
            "memory_limit_bytes",
        ] {
            assert_eq!(value(&t, &format!("vault_dr_agent_{g}"), &[]), "NaN", "{g}");
        }
        let source =
            |t: &str, s: &str| value(t, "vault_dr_agent_host_figures_source", &[("source", s)]);
        assert_eq!(source(&t, "unknown"), "1");
        assert_eq!(source(&t, "process"), "0");
        m.observe_host(&HostStats {
            source: HostSource::Process,
            pid: Some(7),
            cpu_usage_cores: Some(0.25),
            cpu_seconds_total: Some(3.0),
            memory_used_bytes: Some(1 << 20),
            memory_limit_bytes: None,
        });
        let t = text(&r);
        assert_eq!(value(&t, "vault_dr_agent_cpu_usage_cores", &[]), "0.25");
        assert_eq!(
            value(&t, "vault_dr_agent_memory_limit_bytes", &[]),
            "0",
            "unlimited"
        );
        assert_eq!(source(&t, "process"), "1");
        assert_eq!(source(&t, "unknown"), "0");
        assert!(
            !t.contains(r#"source="host""#),
            "agents never send host-wide figures"
        );
    }
}
