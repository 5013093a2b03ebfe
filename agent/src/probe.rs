//! The probe loop: every interval, `sys/health` of the local node (classified), its raft
//! indices and autopilot health, its replication status, host figures, and on a secondary
//! the third-observer probe of the primary. Latencies go into a rolling window.

use crate::metrics::Metrics;
use crate::replication::Replicator;
use crate::state::{Observation, Shared};
use crate::system::SystemSampler;
use crate::vault::{VaultClient, probe_health};
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use vault_dr_common::latency::{LatencyWindow, RECENT_PROBES};
use vault_dr_common::{NodeState, PeerProbe, Role, VaultStatus};

/// Probes kept in the rolling window (two minutes at the default 1 s interval).
pub const WINDOW_PROBES: usize = 120;

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
            recent: self.window.summary_of_last(RECENT_PROBES),
            version: health.health.version,
            cluster_id: health.health.cluster_id,
            cluster_name: health.health.cluster_name,
            raft_applied_index: leader.as_ref().and_then(|l| l.raft_applied_index),
            raft_commit_index: leader.as_ref().and_then(|l| l.raft_committed_index),
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
