//! The coordinator's Prometheus metrics, registered on the one registry built in `run`.

use crate::failover::hooks::StepHook;
use crate::model::{AtRisk, FailoverRecord, LossAccount, Step};
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
    /// Failed attempts of steps that are tried again (a promotion that keeps failing).
    pub step_attempt_failures: IntCounterVec,
    /// 1 while this replica holds the lease.
    pub is_leader: IntGauge,
    /// `vault_dr_coordinator_group_refusing`: 1 while this coordinator refuses to act because
    /// a cluster carries another group's stamp or a higher term (`crate::group`).
    pub group_refusing: IntGauge,
    /// `vault_dr_coordinator_paused`: 1 while an operator's pause holds automatic failover
    /// (`vault-dr pause`), as the topology this replica last read says.
    pub paused: IntGauge,
    /// `vault_dr_coordinator_primary_degraded_seconds`: how long both observers have called the
    /// serving primary over the `[policy.degraded]` thresholds (0: not over, or the rule off).
    pub primary_degraded_seconds: Gauge,
    /// Lease acquisitions by this replica.
    pub leader_transitions: IntCounter,
    /// Lease reads or writes that failed (the backend unreachable, RBAC refused, ...).
    pub lease_errors: IntCounter,
    /// `vault_dr_coordinator_kubernetes_api_errors_total{what, kind}`: Kubernetes API requests
    /// that failed, by object (`lease`, `configmap`, `pods`, `service`) and kind (`forbidden`,
    /// `unauthorized`, `not_found`, `timeout`, `transport`, ...), every one of them, also those
    /// the logs mention only once a minute.
    pub kubernetes_api_errors: IntCounterVec,
    /// Seconds this replica has been leader (cumulative).
    pub leader_seconds: Gauge,
    /// Times the leader found client traffic pointed elsewhere than the topology says (e.g. a
    /// Service selector changed by hand or by a reinstall) and corrected it.
    pub traffic_corrections: IntCounter,
    /// Raft entries at risk in the latest failover this replica promoted (NaN when the loss
    /// could not be accounted).
    pub failover_loss_entries: Gauge,
    /// Seconds of writes at risk in the latest failover this replica promoted (NaN when not
    /// accounted or unknown).
    pub failover_loss_seconds: Gauge,
    /// Failovers whose accounted loss was above zero, counted once each, at promotion.
    pub failovers_lost_data: IntCounter,
    /// Failovers whose loss could not be accounted, counted once each, at promotion.
    pub failovers_loss_unaccounted: IntCounter,
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
        let m = Self {
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
            step_attempt_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("failover_step_attempt_failures_total"),
                        "Failed attempts of failover steps that are tried again",
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
            paused: reg(
                r,
                IntGauge::new(
                    name("paused"),
                    "1 while an operator's pause holds automatic failover (vault-dr pause; detection goes on)",
                )?,
            )?,
            primary_degraded_seconds: reg(
                r,
                Gauge::new(
                    name("primary_degraded_seconds"),
                    "How long both observers have called the serving primary slow or failing ([policy.degraded]); 0 when not",
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
            kubernetes_api_errors: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("kubernetes_api_errors_total"),
                        "Kubernetes API requests that failed, by object and kind",
                    ),
                    &["what", "kind"],
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
            failover_loss_entries: reg(
                r,
                Gauge::new(
                    name("failover_loss_entries"),
                    "Raft entries at risk in the latest failover this replica promoted (NaN: not accounted)",
                )?,
            )?,
            failover_loss_seconds: reg(
                r,
                Gauge::new(
                    name("failover_loss_seconds"),
                    "Seconds of writes at risk in the latest failover this replica promoted (NaN: not accounted or unknown)",
                )?,
            )?,
            failovers_lost_data: reg(
                r,
                IntCounter::new(
                    name("failovers_lost_data_total"),
                    "Failovers whose accounted loss was above zero",
                )?,
            )?,
            failovers_loss_unaccounted: reg(
                r,
                IntCounter::new(
                    name("failovers_loss_unaccounted_total"),
                    "Failovers whose loss could not be accounted",
                )?,
            )?,
        };
        // Exported at 0 from the start, so that an alert on their increase sees the first one.
        for step in crate::model::Step::ALL {
            m.step_attempt_failures.with_label_values(&[step.as_str()]);
        }
        Ok(m)
    }

    /// Exports the loss account of a failover whose target was just promoted: the gauges show
    /// the latest one, the counters count it once (the Promoted step completes once, by a
    /// topology compare-and-swap), so an alert on their increase fires once per failover.
    pub fn observe_loss(&self, loss: &LossAccount) {
        match &loss.at_risk {
            AtRisk::Pending => {}
            AtRisk::NotAccounted { .. } => {
                self.failover_loss_entries.set(f64::NAN);
                self.failover_loss_seconds.set(f64::NAN);
                self.failovers_loss_unaccounted.inc();
            }
            AtRisk::Accounted { entries, seconds } => {
                self.failover_loss_entries.set(*entries as f64);
                self.failover_loss_seconds.set(seconds.unwrap_or(f64::NAN));
                if *entries > 0 {
                    self.failovers_lost_data.inc();
                }
            }
        }
    }
}

impl StepHook for Metrics {
    fn started(&self, _record: &FailoverRecord, _step: Step) {
        self.failover_in_progress.set(1);
    }

    fn finished(&self, record: &FailoverRecord, step: Step, seconds: f64, error: Option<&str>) {
        if step == Step::Promoted
            && let Some(loss) = &record.loss
        {
            self.observe_loss(loss);
        }
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

    fn attempt_failed(&self, _record: &FailoverRecord, step: Step, _attempt: u32, _error: &str) {
        self.step_attempt_failures
            .with_label_values(&[step.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppliedIndex, ServedData};
    use chrono::Utc;
    use vault_dr_common::ReplicationMode;

    fn account(primary_index: Option<u64>, served_index: u64) -> LossAccount {
        let now = Utc::now();
        LossAccount::promoted(
            primary_index.map(|index| AppliedIndex {
                node: "p-0".into(),
                index,
                seen_at: now,
                last_seen_at: now,
                interval_seconds: None,
            }),
            Some(ServedData {
                node: "s1-0".into(),
                mode: ReplicationMode::Snapshot,
                index: Some(served_index),
                taken_at: Some(now - chrono::Duration::milliseconds(1500)),
            }),
        )
    }

    #[test]
    fn each_promoted_failover_sets_the_loss_gauges_and_counts_once_by_outcome() {
        let m = Metrics::new(&Registry::new()).unwrap();
        m.observe_loss(&account(Some(120), 100));
        assert_eq!(m.failover_loss_entries.get(), 20.0);
        assert_eq!(m.failover_loss_seconds.get(), 1.5);
        assert_eq!(m.failovers_lost_data.get(), 1);
        m.observe_loss(&account(Some(120), 130));
        assert_eq!(
            (m.failover_loss_entries.get(), m.failover_loss_seconds.get()),
            (0.0, 0.0),
            "the gauges show the latest failover"
        );
        assert_eq!(m.failovers_lost_data.get(), 1, "nothing lost: not counted");
        m.observe_loss(&account(None, 130));
        assert!(
            m.failover_loss_entries.get().is_nan(),
            "not accounted is not 0"
        );
        assert_eq!(m.failovers_loss_unaccounted.get(), 1);
        m.observe_loss(&LossAccount::decided(None));
        assert_eq!(
            m.failovers_loss_unaccounted.get(),
            1,
            "pending is not an outcome"
        );
    }
}
