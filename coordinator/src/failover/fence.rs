//! Finishing the fence of an old primary after its failover.
//!
//! A failover's Fenced step makes one bounded attempt to seal the old primary
//! ([`crate::vault::FENCE_BOUND`]): the term and the traffic cut fence it at once, and a frozen
//! or unreachable old primary must not hold the clients' failover. When that attempt does not
//! seal every node, the old primary stays in the topology's `fence_pending` list, and the
//! leader goes on here, after the failover, until one of these is true:
//!
//! - every node is sealed (a later bounded attempt; each seal carries a token that expires
//!   [`crate::vault::FENCE_TOKEN_TTL`] after it was made, so none lands long after);
//! - every node follows the new primary: its agent carried the term out as a secondary, so its
//!   write gate refuses clients and no seal is needed (a node that comes back from a freeze
//!   with a live agent ends up here, and is not sealed at all);
//! - the cluster is the primary again, or no longer configured (dropped, with a warning).
//!
//! Attempts back off from [`RETRY_FIRST`] to [`RETRY_MAX`]. Each changed outcome of an attempt
//! is journaled as a [`LaterEvent`] of the failover's Fenced step ("still not sealed: … a seal
//! that got no answer is refused from 12:00:03.5 on"), and so is the end ("dc1 fenced in
//! 0.02 s: 1 node(s) sealed; 63.2 s after the Fenced step"), before the fence is removed from
//! the topology by compare-and-swap. The list lives in the topology,
//! so a new leader goes on where the old one stopped.

use crate::config::ClusterConfig;
use crate::coordination::Coordination;
use crate::failover::actions::{Fencer, Replication};
use crate::failover::error::ExecError;
use crate::model::topology::PendingFence;
use crate::model::{LaterEvent, Step};
use crate::store::Store;
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first retry after the Fenced step's attempt.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts on one old primary.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// When the next attempt on one pending fence is due, and what the last one said.
#[derive(Debug)]
struct Retry {
    at: Instant,
    backoff: Duration,
    said: String,
}

/// Carries on the pending fences of the topology (see the module documentation).
#[derive(Debug)]
pub struct FenceKeeper {
    id: String,
    coordination: Arc<dyn Coordination>,
    store: Arc<dyn Store>,
    fencer: Arc<dyn Fencer>,
    replication: Arc<dyn Replication>,
    clusters: Vec<ClusterConfig>,
    retries: Mutex<HashMap<String, Retry>>,
}

impl FenceKeeper {
    /// A keeper acting as coordinator `id`.
    pub fn new(
        id: impl Into<String>,
        coordination: Arc<dyn Coordination>,
        store: Arc<dyn Store>,
        fencer: Arc<dyn Fencer>,
        replication: Arc<dyn Replication>,
        clusters: Vec<ClusterConfig>,
    ) -> Self {
        Self {
            id: id.into(),
            coordination,
            store,
            fencer,
            replication,
            clusters,
            retries: Mutex::new(HashMap::new()),
        }
    }

    /// One round over the topology's pending fences, each attempted when due; only while no
    /// failover is in progress (the executor owns the record then). Returns how many are
    /// still pending.
    pub async fn round(&self) -> Result<usize, ExecError> {
        if !self.coordination.is_leader() {
            return Err(ExecError::NotLeader);
        }
        let Some(current) = self.coordination.read_topology().await? else {
            return Ok(0);
        };
        let pending = &current.value.fence_pending;
        if pending.is_empty() || current.value.failover.is_some() {
            return Ok(pending.len());
        }
        let mut finished: Vec<(PendingFence, String)> = Vec::new();
        for p in pending {
            if p.cluster == current.value.primary {
                tracing::warn!(failover = %p.failover, "the fence of {} is dropped: it is the primary in term {}", p.cluster, current.value.term);
                finished.push((
                    p.clone(),
                    format!(
                        "not sealed: {} became the primary again in term {}",
                        p.cluster, current.value.term
                    ),
                ));
                continue;
            }
            let Some(cluster) = self.clusters.iter().find(|c| c.name == p.cluster) else {
                tracing::warn!(failover = %p.failover, "the fence of {} is dropped: it is not in the configuration", p.cluster);
                finished.push((
                    p.clone(),
                    format!(
                        "not sealed: {} is not in the configuration any more",
                        p.cluster
                    ),
                ));
                continue;
            };
            if self.replication.follows(cluster, p.term) {
                finished.push((
                    p.clone(),
                    format!(
                        "no seal needed: every node of {} follows the primary of term {} (its agents carried the term out, so their write gates refuse clients)",
                        p.cluster, p.term
                    ),
                ));
                continue;
            }
            if !self.due(&p.failover) {
                continue;
            }
            if !self.coordination.is_leader() {
                return Err(ExecError::NotLeader);
            }
            // Read again right before the seal: a failover begun meanwhile (this round may be
            // seconds old) owns the clusters now, and its target is never sealed.
            match self.coordination.read_topology().await? {
                Some(now) if now.value.failover.is_none() && now.value.primary != p.cluster => {}
                _ => break,
            }
            match self.fencer.fence(cluster, p.term).await {
                Ok(sealed) => finished.push((p.clone(), sealed)),
                Err(e) => {
                    if self.retry_later(p, &e.0) {
                        // A changed outcome is journaled too (a seal sent to a node that woke
                        // and did not answer in time may still be carried out).
                        self.journal(p, &format!("still not sealed: {}", e.0)).await;
                    }
                }
            }
        }
        if finished.is_empty() {
            return Ok(pending.len());
        }
        for (p, detail) in &finished {
            self.journal(p, detail).await;
        }
        self.remove(&finished).await?;
        let mut retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        for (p, detail) in &finished {
            retries.remove(&p.failover);
            tracing::info!(failover = %p.failover, "fence of {} finished: {detail}", p.cluster);
        }
        Ok(pending.len() - finished.len())
    }

    /// Whether the pending fence of `failover` may be attempted now (at once the first time).
    fn due(&self, failover: &str) -> bool {
        let retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        retries.get(failover).is_none_or(|r| Instant::now() >= r.at)
    }

    /// Schedules the next attempt with a doubled back-off; logs what the attempt said when it
    /// differs from the last time (the first time: from the Fenced step's own error), and
    /// returns whether it did.
    fn retry_later(&self, p: &PendingFence, said: &str) -> bool {
        let mut retries = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        let r = retries.entry(p.failover.clone()).or_insert(Retry {
            at: Instant::now(),
            backoff: RETRY_FIRST / 2,
            said: String::new(),
        });
        r.backoff = (r.backoff * 2).clamp(RETRY_FIRST, RETRY_MAX);
        r.at = Instant::now() + r.backoff;
        if r.said == said {
            return false;
        }
        tracing::info!(failover = %p.failover, "fence of {} still pending: {said}; next attempt in {:?}", p.cluster, r.backoff);
        r.said = said.to_owned();
        true
    }

    /// Adds the outcome to the failover's Fenced step in the journal (a journal that cannot be
    /// read or written is logged: the topology keeps what matters).
    async fn journal(&self, p: &PendingFence, detail: &str) {
        let now = Utc::now();
        let after = (now - p.since).num_milliseconds() as f64 / 1000.0;
        let mut record = match self.store.failover(&p.failover).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::warn!(failover = %p.failover, "fence outcome not journaled: the failover's record is not in the store");
                return;
            }
            Err(e) => {
                tracing::warn!(failover = %p.failover, "fence outcome not journaled: {e}");
                return;
            }
        };
        let Some(step) = record.steps.iter_mut().find(|s| s.step == Step::Fenced) else {
            tracing::warn!(failover = %p.failover, "fence outcome not journaled: the record has no Fenced step");
            return;
        };
        if detail
            .strip_prefix("still not sealed: ")
            .is_some_and(|d| step.error.as_deref() == Some(d))
        {
            return; // what the step itself said
        }
        step.later.push(LaterEvent {
            at: now,
            detail: format!(
                "{detail}; {after:.1} s after the Fenced step, by {}",
                self.id
            ),
        });
        if let Err(e) = self.store.put_failover(&record).await {
            tracing::warn!(failover = %p.failover, "fence outcome not journaled: {e}");
        }
    }

    /// Removes `finished` from the topology's pending fences (compare-and-swap, re-read on a
    /// conflict: the leader may have changed it meanwhile, e.g. by beginning a failover).
    async fn remove(&self, finished: &[(PendingFence, String)]) -> Result<(), ExecError> {
        for _ in 0..3 {
            if !self.coordination.is_leader() {
                return Err(ExecError::NotLeader);
            }
            let Some(current) = self.coordination.read_topology().await? else {
                return Ok(());
            };
            let mut next = current.value.clone();
            next.fence_pending
                .retain(|p| !finished.iter().any(|(f, _)| f.failover == p.failover));
            if next == current.value {
                return Ok(());
            }
            match self
                .coordination
                .write_topology(&next, Some(&current.version))
                .await
            {
                Ok(_) => return Ok(()),
                Err(crate::coordination::CoordinationError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ExecError::Conflict(
            "the topology kept changing while the finished fences were removed".into(),
        ))
    }
}
