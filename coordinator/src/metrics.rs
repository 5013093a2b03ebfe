//! The coordinator's Prometheus metrics, registered on the one registry built in `run`.

use crate::failover::hooks::StepHook;
use crate::model::{FailoverRecord, Step};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};

/// Every metric the coordinator exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reports accepted.
    pub reports_accepted: IntCounter,
    /// Reports rejected, by reason (auth, body, json, schema, unknown_cluster, unknown_node,
    /// replay, not_leader).
    pub reports_rejected: IntCounterVec,
    /// Time to handle one report.
    pub report_duration: Histogram,
    /// Current term.
    pub term: IntGauge,
    /// 1 for the cluster that is primary (serving), 0 for the others.
    pub cluster_primary: GaugeVec,
    /// Direct probe latency per cluster.
    pub probe_duration: HistogramVec,
    /// Direct probe state per cluster and state (one-hot).
    pub cluster_state: GaugeVec,
    /// Replication lag per cluster, in entries (from the freshest report).
    pub cluster_lag_entries: GaugeVec,
    /// Replication lag per cluster, in seconds.
    pub cluster_lag_seconds: GaugeVec,
    /// Report age per cluster and node, in seconds.
    pub report_age: GaugeVec,
    /// Decisions by kind.
    pub decisions: IntCounterVec,
    /// Failovers started.
    pub failovers_started: IntCounter,
    /// Failovers finished.
    pub failovers_finished: IntCounter,
    /// 1 while a failover is in progress.
    pub failover_in_progress: IntGauge,
    /// Step durations.
    pub step_duration: HistogramVec,
    /// Steps that gave up.
    pub step_failures: IntCounterVec,
    /// 1 while this replica holds the lease.
    pub is_leader: IntGauge,
    /// `vault_dr_coordinator_group_refusing`: 1 while this coordinator refuses to act because
    /// a cluster carries another group's stamp or a higher term (`crate::group`).
    pub group_refusing: IntGauge,
    /// Lease acquisitions by this replica.
    pub leader_transitions: IntCounter,
    /// Lease reads or writes that failed (the backend unreachable, RBAC refused, ...).
    pub lease_errors: IntCounter,
    /// Seconds this replica has been leader (cumulative).
    pub leader_seconds: Gauge,
    /// Times the leader found client traffic pointed elsewhere than the topology says (e.g. a
    /// Service selector changed by hand or by a reinstall) and corrected it.
    pub traffic_corrections: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: T,
) -> prometheus::Result<T> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

/// The full name of coordinator metric `thing` (`vault_dr_coordinator_<thing>`): the one
/// place the prefix is spelled, for every component that registers metrics.
pub fn name(thing: &str) -> String {
    format!(
        "{}{thing}",
        vault_dr_common::telemetry::COORDINATOR_METRICS_PREFIX
    )
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Ok(Self {
            reports_accepted: reg(
                r,
                IntCounter::new(name("reports_accepted_total"), "Agent reports accepted")?,
            )?,
            reports_rejected: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("reports_rejected_total"),
                        "Agent reports rejected, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            report_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        name("report_duration_seconds"),
                        "Time to handle one agent report",
                    )
                    .buckets(buckets.clone()),
                )?,
            )?,
            term: reg(
                r,
                IntGauge::new(name("term"), "Current term of the DR group")?,
            )?,
            cluster_primary: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        name("cluster_primary"),
                        "1 for the cluster serving as primary",
                    ),
                    &["cluster"],
                )?,
            )?,
            probe_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("probe_duration_seconds"),
                        "Direct probe latency per cluster",
                    )
                    .buckets(buckets.clone()),
                    &["cluster"],
                )?,
            )?,
            cluster_state: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        name("cluster_state"),
                        "Direct probe state per cluster (one-hot)",
                    ),
                    &["cluster", "state"],
                )?,
            )?,
            cluster_lag_entries: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        name("cluster_replication_lag_entries"),
                        "Replication lag per cluster in raft entries",
                    ),
                    &["cluster"],
                )?,
            )?,
            cluster_lag_seconds: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        name("cluster_replication_lag_seconds"),
                        "Replication lag per cluster in seconds",
                    ),
                    &["cluster"],
                )?,
            )?,
            report_age: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        name("report_age_seconds"),
                        "Age of the latest report per node",
                    ),
                    &["cluster", "node"],
                )?,
            )?,
            decisions: reg(
                r,
                IntCounterVec::new(
                    Opts::new(name("decisions_total"), "Detector decisions by kind"),
                    &["kind"],
                )?,
            )?,
            failovers_started: reg(
                r,
                IntCounter::new(name("failovers_total"), "Failovers decided (term raised)")?,
            )?,
            failovers_finished: reg(
                r,
                IntCounter::new(
                    name("failovers_finished_total"),
                    "Failovers that reached Done",
                )?,
            )?,
            failover_in_progress: reg(
                r,
                IntGauge::new(
                    name("failover_in_progress"),
                    "1 while a failover is in progress",
                )?,
            )?,
            step_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("failover_step_duration_seconds"),
                        "Duration of each failover step",
                    )
                    .buckets(vec![
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ]),
                    &["step"],
                )?,
            )?,
            step_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("failover_step_failures_total"),
                        "Failover steps that gave up",
                    ),
                    &["step"],
                )?,
            )?,
            is_leader: reg(
                r,
                IntGauge::new(
                    name("is_leader"),
                    "1 while this replica holds the coordination lease",
                )?,
            )?,
            group_refusing: reg(
                r,
                IntGauge::new(
                    name("group_refusing"),
                    "1 while this coordinator refuses to act: a cluster carries another coordinator group's stamp or a higher term",
                )?,
            )?,
            leader_transitions: reg(
                r,
                IntCounter::new(
                    name("leader_transitions_total"),
                    "Times this replica became leader",
                )?,
            )?,
            lease_errors: reg(
                r,
                IntCounter::new(
                    name("lease_errors_total"),
                    "Lease reads or writes of this replica that failed",
                )?,
            )?,
            leader_seconds: reg(
                r,
                Gauge::new(
                    name("leader_seconds_total"),
                    "Seconds this replica has been leader",
                )?,
            )?,
            traffic_corrections: reg(
                r,
                IntCounter::new(
                    name("traffic_corrections_total"),
                    "Times the leader corrected client traffic that pointed elsewhere than the topology",
                )?,
            )?,
        })
    }
}

impl StepHook for Metrics {
    fn started(&self, _record: &FailoverRecord, _step: Step) {
        self.failover_in_progress.set(1);
    }

    fn finished(&self, _record: &FailoverRecord, step: Step, seconds: f64, error: Option<&str>) {
        self.step_duration
            .with_label_values(&[step.as_str()])
            .observe(seconds);
        if error.is_some() {
            self.step_failures.with_label_values(&[step.as_str()]).inc();
        }
        if step == Step::Done {
            self.failover_in_progress.set(0);
            self.failovers_finished.inc();
        }
    }
}
