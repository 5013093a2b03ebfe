//! The Vault/OpenBao implementations of the action traits.
//!
//! - Fencing seals every reachable node of the old primary with the DR token.
//! - Promotion and re-pointing go through the desired state: the topology already names the new
//!   primary and term, every agent receives it in the answer to its next report, and the step
//!   completes once the agents acknowledge the term (`Report::seen_term`). The replication
//!   backend in the agent does the cluster-side work (restore, canary) before acknowledging.
//! - Verification writes and reads a canary in the DR token's cubbyhole on the new primary.

use crate::config::ClusterConfig;
use crate::failover::actions::{ActionError, ActionResult, Fencer, Replication, Verifier};
use crate::state::State;
use crate::vault::VaultClient;
use async_trait::async_trait;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use vault_dr_common::NodeState;

/// Seals the old primary.
#[derive(Debug, Clone)]
pub struct SealFencer {
    /// Client carrying the DR token.
    pub vault: VaultClient,
}

#[async_trait]
impl Fencer for SealFencer {
    async fn fence(&self, old: &ClusterConfig, _term: u64) -> ActionResult {
        self.vault.seal(old).await.map_err(ActionError)
    }
}

/// Canary on the new primary.
#[derive(Debug, Clone)]
pub struct CanaryVerifier {
    /// Client carrying the DR token.
    pub vault: VaultClient,
}

#[async_trait]
impl Verifier for CanaryVerifier {
    async fn verify(&self, target: &ClusterConfig, term: u64) -> ActionResult {
        self.vault.canary(target, term).await.map_err(ActionError)
    }
}

/// Promotion and re-pointing through the agents' desired state.
#[derive(Debug, Clone)]
pub struct DesiredStateReplication {
    /// Where the agents' reports land.
    pub state: Arc<State>,
    /// A report older than this does not count as an acknowledgement.
    pub report_ttl: Duration,
    /// How long one promotion attempt waits for the target's agent.
    pub promote_timeout: Duration,
    /// How long re-pointing waits for the other agents.
    pub repoint_timeout: Duration,
}

impl DesiredStateReplication {
    /// Nodes of `cluster` whose fresh report acknowledges `term`, and whether one of them is active.
    fn acks(&self, cluster: &str, term: u64) -> (usize, bool) {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        let mut acked = 0;
        let mut active = false;
        for n in self.state.latest_reports() {
            if n.report.cluster == cluster
                && n.age_seconds(now) <= ttl
                && n.report.seen_term >= term
            {
                acked += 1;
                active |= n.report.vault.state == NodeState::Active;
            }
        }
        (acked, active)
    }
}

#[async_trait]
impl Replication for DesiredStateReplication {
    async fn promote(&self, target: &ClusterConfig, term: u64) -> ActionResult {
        let deadline = tokio::time::Instant::now() + self.promote_timeout;
        loop {
            let (acked, active) = self.acks(&target.name, term);
            if acked > 0 && active {
                return Ok(format!(
                    "{} acknowledged primary in term {term} and is active ({acked} node(s))",
                    target.name
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ActionError(format!(
                    "{} has not acknowledged term {term} as an active primary within {:?} ({acked} node(s) acknowledged)",
                    target.name, self.promote_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn repoint(
        &self,
        others: &[ClusterConfig],
        primary: &ClusterConfig,
        term: u64,
    ) -> ActionResult {
        if others.is_empty() {
            return Ok("no other secondaries to re-point".into());
        }
        let deadline = tokio::time::Instant::now() + self.repoint_timeout;
        loop {
            let pending: Vec<&str> = others
                .iter()
                .filter(|c| self.acks(&c.name, term).0 == 0)
                .map(|c| c.name.as_str())
                .collect();
            if pending.is_empty() {
                let names: Vec<_> = others.iter().map(|c| c.name.as_str()).collect();
                return Ok(format!(
                    "{} now follow {} in term {term}",
                    names.join(", "),
                    primary.name
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                // Not an error: a secondary that is down picks up the term when it reports again.
                let done: Vec<_> = others
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|n| !pending.contains(n))
                    .collect();
                return Ok(format!(
                    "{} follow {} in term {term}; {} not reporting yet and will follow on their next report",
                    if done.is_empty() {
                        "none".to_owned()
                    } else {
                        done.join(", ")
                    },
                    primary.name,
                    pending.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
