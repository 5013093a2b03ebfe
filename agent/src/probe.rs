//! The probe loop: every interval, `sys/health` of the local node (classified), its raft
//! indices and autopilot health, its replication status, host figures, and on a secondary
//! the third-observer probe of the primary. Latencies go into a rolling window.

use crate::metrics::Metrics;
use crate::replication::Replicator;
use crate::state::{Observation, Shared};
use crate::system::SystemSampler;
use crate::vault::{VaultClient, probe_health};
use chrono::Utc;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use vault_dr_common::{LatencySummary, NodeState, PeerProbe, Role, VaultStatus};

/// Probes kept in the rolling window (two minutes at the default 1 s interval).
pub const WINDOW_PROBES: usize = 120;

/// Rolling window of probe outcomes: a latency in milliseconds, or `None` for a failed probe.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    cap: usize,
    samples: VecDeque<Option<f64>>,
}

impl LatencyWindow {
    /// An empty window of at most `cap` probes (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            samples: VecDeque::with_capacity(cap.max(1)),
        }
    }

    /// Adds one probe outcome, dropping the oldest when full.
    pub fn push(&mut self, latency_ms: Option<f64>) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(latency_ms);
    }

    /// p50 and p99 (nearest rank) over successful probes and the failed fraction.
    pub fn summary(&self) -> LatencySummary {
        let mut ok: Vec<f64> = self.samples.iter().flatten().copied().collect();
        ok.sort_by(f64::total_cmp);
        let n = self.samples.len();
        let failed = n - ok.len();
        LatencySummary {
            samples: u32::try_from(n).unwrap_or(u32::MAX),
            p50_ms: percentile(&ok, 0.50),
            p99_ms: percentile(&ok, 0.99),
            error_ratio: if n == 0 {
                0.0
            } else {
                failed as f64 / n as f64
            },
        }
    }
}

/// Nearest-rank percentile of sorted values (0.0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Whether a probe outcome counts as failed in the error ratio: no answer, or a garbage one.
fn failed(state: NodeState) -> bool {
    matches!(state, NodeState::Unreachable | NodeState::Error)
}

/// Runs one probe round after another.
#[derive(Debug)]
pub struct Prober {
    vault: Arc<VaultClient>,
    replicator: Arc<dyn Replicator>,
    system: SystemSampler,
    window: LatencyWindow,
    shared: Arc<Shared>,
    metrics: Metrics,
}

impl Prober {
    /// A prober writing into `shared` and `metrics`.
    pub fn new(
        vault: Arc<VaultClient>,
        replicator: Arc<dyn Replicator>,
        system: SystemSampler,
        shared: Arc<Shared>,
        metrics: Metrics,
    ) -> Self {
        Self {
            vault,
            replicator,
            system,
            window: LatencyWindow::new(WINDOW_PROBES),
            shared,
            metrics,
        }
    }

    /// Probes every `interval` until the task is dropped. A slow round delays the next tick
    /// rather than bunching up ticks.
    pub async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.round().await;
        }
    }

    /// One probe round: probes, updates metrics and stores the observation.
    pub async fn round(&mut self) -> Observation {
        let health = self.vault.health().await;
        let latency_ms = health.latency.map(|d| d.as_secs_f64() * 1000.0);
        let state = health.health.state;
        // While this agent's own restore runs the node blocks requests by design: do not ask
        // it for indices or replication meanwhile. Reports and the state metric say
        // `restoring` for as long as the flag is up (the stored observation keeps what the
        // node answered, so nothing stale is left once the restore is over).
        let restoring = self.shared.is_restoring();
        self.window
            .push(if failed(state) { None } else { latency_ms });

        let serving = state.is_serving() && !restoring;
        let desired = self.shared.desired();
        let (leader, autopilot, replication, primary_probe) = tokio::join!(
            async {
                if serving {
                    self.vault.leader().await.ok()
                } else {
                    None
                }
            },
            async {
                if serving {
                    self.vault.autopilot_healthy().await.ok().flatten()
                } else {
                    None
                }
            },
            async {
                // During this agent's own restore the status comes from the snapshot backend
                // (memory, no request to the node) and its lag must stay current.
                if serving || restoring {
                    Some(self.replicator.status().await)
                } else {
                    None
                }
            },
            async {
                let d = desired?;
                let addr = d.primary_api_addr.filter(|_| d.role == Role::Secondary)?;
                let p = probe_health(self.vault.http(), &addr).await;
                Some(PeerProbe {
                    cluster: d.primary,
                    state: p.health.state,
                    at: Utc::now(),
                    latency_ms: p.latency.map(|l| l.as_secs_f64() * 1000.0),
                })
            },
        );
        let host = self.system.sample();
        let vault = VaultStatus {
            state,
            last_probe_ms: latency_ms,
            latency: self.window.summary(),
            version: health.health.version,
            cluster_id: health.health.cluster_id,
            cluster_name: health.health.cluster_name,
            raft_applied_index: leader.and_then(|l| l.raft_applied_index),
            raft_commit_index: leader.and_then(|l| l.raft_committed_index),
            autopilot_healthy: autopilot,
            last_error: health.health.error.map(str::to_owned),
        };
        // When the node is not serving, keep the last replication status we had: the node's
        // data did not change while sealed, and "none" would hide an Enterprise setup.
        let replication = replication
            .or_else(|| self.shared.observation().map(|o| o.replication))
            .unwrap_or_default();
        if restoring {
            let mut shown = vault.clone();
            shown.state = NodeState::Restoring;
            self.metrics.observe_vault(&shown);
        } else {
            self.metrics.observe_vault(&vault);
        }
        self.metrics.observe_host(&host);
        self.metrics.observe_replication(&replication);
        let o = Observation {
            vault,
            host,
            replication,
            primary_probe,
        };
        tracing::debug!(state = %o.vault.state, "probe round done");
        self.shared.set_observation(o.clone());
        self.shared.note_evidence(crate::state::Evidence {
            node_up: restoring || o.vault.state.is_serving(),
            primary_up: o
                .primary_probe
                .as_ref()
                .map(|p| p.reachable() || p.state == NodeState::Restoring),
        });
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_window_rolls_and_counts_failures() {
        let mut w = LatencyWindow::new(4);
        for ms in [10.0, 20.0, 30.0] {
            w.push(Some(ms));
        }
        w.push(None);
        let s = w.summary();
        assert_eq!(s.samples, 4);
        assert_eq!(s.p50_ms, 20.0);
        assert_eq!(s.p99_ms, 30.0);
        assert!((s.error_ratio - 0.25).abs() < 1e-12);
        // Two more successes push out 10 ms and 20 ms.
        w.push(Some(1.0));
        w.push(Some(2.0));
        let s = w.summary();
        assert_eq!(s.samples, 4);
        assert_eq!(s.p99_ms, 30.0);
        assert_eq!(s.p50_ms, 2.0);
        assert!((s.error_ratio - 0.25).abs() < 1e-12);
    }

    #[test]
    fn an_empty_or_all_failed_window_has_zero_latency() {
        assert_eq!(LatencyWindow::new(3).summary(), LatencySummary::default());
        let mut w = LatencyWindow::new(3);
        w.push(None);
        let s = w.summary();
        assert_eq!((s.p50_ms, s.p99_ms, s.error_ratio), (0.0, 0.0, 1.0));
    }
}
