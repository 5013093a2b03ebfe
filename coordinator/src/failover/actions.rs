//! The side effects of a failover, one small trait each, so the executor is testable with the
//! recording fake in [`test_util`] and the real backends can change (snapshot or Enterprise
//! replication, TCP forwarder or Kubernetes Service).
//!
//! Every action must be idempotent: the executor may run it again after a crash or a retry.
//! Each returns one sentence saying what it did, which goes into the journal.

use crate::config::ClusterConfig;
use crate::model::{AppliedIndex, ServedData};
use async_trait::async_trait;
use std::sync::Arc;

/// Why an action failed (its message goes into the journal; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ActionError(pub String);

/// Result of an action: the journal sentence.
pub type ActionResult = Result<String, ActionError>;

/// Seals the old primary, within a bound.
#[async_trait]
pub trait Fencer: Send + Sync + std::fmt::Debug {
    /// One bounded attempt to seal every node of `old` for `term`. `Ok` when every node is
    /// sealed; otherwise `Err` saying what each node did. Either way the call returns within
    /// its bound and no request it sent can be carried out long after (the old primary is
    /// fenced by the term and the traffic cut meanwhile; the leader tries again later).
    async fn fence(&self, old: &ClusterConfig, term: u64) -> ActionResult;
}

/// Makes a secondary primary and points the others at it, and tells what data each side
/// holds (for the failover's loss account).
#[async_trait]
pub trait Replication: Send + Sync + std::fmt::Debug {
    /// Promotes `target` in `term`; returns once the target serves as primary.
    async fn promote(&self, target: &ClusterConfig, term: u64) -> ActionResult;
    /// The newest applied raft index `cluster` was seen serving at, `None` when unknown.
    fn last_applied(&self, cluster: &ClusterConfig) -> Option<AppliedIndex>;
    /// Raft replication: the node of `target` that should form the new raft (the longest log
    /// among its fresh reports), `None` when no node of it reports a raft log. The default
    /// knows of no agents.
    fn raft_recovery_node(&self, _target: &ClusterConfig) -> Option<String> {
        None
    }
    /// Raft replication: whether a planned switchover from `from` to `target` can be a
    /// handover inside one raft (both clusters' nodes report raft replication, and the
    /// target's follow the raft's leader). The default knows of no agents.
    fn raft_handover(&self, _from: &ClusterConfig, _target: &ClusterConfig) -> bool {
        false
    }
    /// Raft replication, a handover: moves the raft's leadership to a node of `target` and
    /// makes `target`'s nodes its only voters (see `crate::failover::handover`). One bounded
    /// attempt. The default cannot.
    async fn hand_over(
        &self,
        _from: &ClusterConfig,
        target: &ClusterConfig,
        _term: u64,
    ) -> ActionResult {
        Err(ActionError(format!(
            "no raft handover here: {} cannot be handed the raft's leadership",
            target.name
        )))
    }
    /// The data `target` serves once promoted in `term`, `None` when nothing says.
    fn served(&self, target: &ClusterConfig, term: u64) -> Option<ServedData>;
    /// Whether every node of `cluster` carried out `term` as a secondary (it follows the
    /// term's primary, and its agent's write gate refuses clients): an old primary that needs
    /// no seal any more. The default knows of no agents.
    fn follows(&self, _cluster: &ClusterConfig, _term: u64) -> bool {
        false
    }
    /// Points `others` at `primary` for `term`.
    async fn repoint(
        &self,
        others: &[ClusterConfig],
        primary: &ClusterConfig,
        term: u64,
    ) -> ActionResult;

    /// Before a planned switchover to `target` begins (its agents are told to start no
    /// restore from `since` on): waits, bounded, until `target`'s reports received after
    /// `since` show no restore in flight, so that once clients are cut it starts on the final
    /// snapshot at once instead of finishing a restore first. A note when it waited. The
    /// default waits for nothing.
    async fn quiesce(
        &self,
        _target: &ClusterConfig,
        _since: chrono::DateTime<chrono::Utc>,
    ) -> Option<String> {
        None
    }
}

/// Moves client traffic to the new primary.
#[async_trait]
pub trait TrafficSwitch: Send + Sync + std::fmt::Debug {
    /// Sends client traffic to `to` from now on.
    async fn switch(&self, to: &ClusterConfig, term: u64) -> ActionResult;

    /// Sends client traffic nowhere (a planned switchover, before the final snapshot): open
    /// connections are closed and new ones refused until the next [`TrafficSwitch::switch`].
    /// The default, for switches that cannot cut, says so and does nothing.
    async fn cut(&self, term: u64) -> ActionResult {
        Ok(format!(
            "no traffic switch to cut in term {term}; clients may still write to the old primary"
        ))
    }

    /// When client traffic was last sent to `cluster` (the effect of a switch, which the
    /// topology loops may have made before the Switched step ran), if this switch knows it
    /// and sends traffic there now.
    fn switched_at(&self, cluster: &ClusterConfig) -> Option<chrono::DateTime<chrono::Utc>> {
        let _ = cluster;
        None
    }
}

/// Proves the new primary works.
#[async_trait]
pub trait Verifier: Send + Sync + std::fmt::Debug {
    /// A canary write and read on `target`.
    async fn verify(&self, target: &ClusterConfig, term: u64) -> ActionResult;
}

/// The set of actions the executor uses.
#[derive(Debug, Clone)]
pub struct Actions {
    /// Fencing of the old primary.
    pub fencer: Arc<dyn Fencer>,
    /// Promotion and re-pointing.
    pub replication: Arc<dyn Replication>,
    /// Client traffic.
    pub traffic: Arc<dyn TrafficSwitch>,
    /// The canary.
    pub verifier: Arc<dyn Verifier>,
}

/// Traffic switch used when none is configured: says so in the journal.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrafficSwitch;

#[async_trait]
impl TrafficSwitch for NoTrafficSwitch {
    async fn switch(&self, to: &ClusterConfig, _term: u64) -> ActionResult {
        Ok(format!(
            "no traffic switch configured; clients must follow {} themselves",
            to.name
        ))
    }
}

/// A recording fake of every action, for tests of the executor.
#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Records every call as `"<action> <cluster> <term>"`; can be told to fail an action a
    /// number of times.
    #[derive(Debug, Default)]
    pub struct Recorder {
        calls: Mutex<Vec<String>>,
        failures: Mutex<HashMap<&'static str, u32>>,
        applied: Mutex<HashMap<String, AppliedIndex>>,
        served: Mutex<HashMap<String, ServedData>>,
        following: Mutex<Vec<String>>,
        handover: Mutex<bool>,
    }

    impl Recorder {
        /// A new recorder, shared.
        pub fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        /// All calls so far.
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }

        /// Makes the next `times` calls of `action` fail.
        pub fn fail(&self, action: &'static str, times: u32) {
            if let Ok(mut f) = self.failures.lock() {
                f.insert(action, times);
            }
        }

        fn record(&self, action: &'static str, cluster: &str, term: u64) -> ActionResult {
            if let Ok(mut c) = self.calls.lock() {
                c.push(format!("{action} {cluster} {term}"));
            }
            if let Ok(mut f) = self.failures.lock()
                && let Some(n) = f.get_mut(action)
                && *n > 0
            {
                *n -= 1;
                return Err(ActionError(format!("{action} failed on purpose")));
            }
            Ok(format!("{action} {cluster}"))
        }

        /// Makes `cluster` known at `index` (what [`Replication::last_applied`] answers).
        pub fn set_applied(&self, cluster: &str, index: AppliedIndex) {
            if let Ok(mut a) = self.applied.lock() {
                a.insert(cluster.to_owned(), index);
            }
        }

        /// Makes `cluster` serve `data` once promoted (what [`Replication::served`] answers).
        pub fn set_served(&self, cluster: &str, data: ServedData) {
            if let Ok(mut s) = self.served.lock() {
                s.insert(cluster.to_owned(), data);
            }
        }

        /// Makes every node of `cluster` follow the new primary (what
        /// [`Replication::follows`] answers).
        pub fn set_following(&self, cluster: &str) {
            if let Ok(mut f) = self.following.lock() {
                f.push(cluster.to_owned());
            }
        }

        /// Makes every planned switchover a raft handover (what
        /// [`Replication::raft_handover`] answers).
        pub fn set_raft_handover(&self) {
            if let Ok(mut h) = self.handover.lock() {
                *h = true;
            }
        }

        /// All four actions backed by this recorder.
        pub fn actions(self: &Arc<Self>) -> Actions {
            Actions {
                fencer: self.clone(),
                replication: self.clone(),
                traffic: self.clone(),
                verifier: self.clone(),
            }
        }
    }

    #[async_trait]
    impl Fencer for Recorder {
        async fn fence(&self, old: &ClusterConfig, term: u64) -> ActionResult {
            self.record("fence", &old.name, term)
        }
    }

    #[async_trait]
    impl Replication for Recorder {
        async fn promote(&self, target: &ClusterConfig, term: u64) -> ActionResult {
            self.record("promote", &target.name, term)
        }
        fn raft_handover(&self, _from: &ClusterConfig, _target: &ClusterConfig) -> bool {
            self.handover.lock().is_ok_and(|h| *h)
        }
        async fn hand_over(
            &self,
            _from: &ClusterConfig,
            target: &ClusterConfig,
            term: u64,
        ) -> ActionResult {
            self.record("hand-over", &target.name, term)
        }
        fn last_applied(&self, cluster: &ClusterConfig) -> Option<AppliedIndex> {
            self.applied.lock().ok()?.get(&cluster.name).cloned()
        }
        fn served(&self, target: &ClusterConfig, _term: u64) -> Option<ServedData> {
            self.served.lock().ok()?.get(&target.name).cloned()
        }
        fn follows(&self, cluster: &ClusterConfig, _term: u64) -> bool {
            self.following
                .lock()
                .is_ok_and(|f| f.contains(&cluster.name))
        }
        async fn repoint(
            &self,
            others: &[ClusterConfig],
            primary: &ClusterConfig,
            term: u64,
        ) -> ActionResult {
            let names: Vec<_> = others.iter().map(|c| c.name.as_str()).collect();
            self.record(
                "repoint",
                &format!("{}->{}", names.join(","), primary.name),
                term,
            )
        }
    }

    #[async_trait]
    impl TrafficSwitch for Recorder {
        async fn switch(&self, to: &ClusterConfig, term: u64) -> ActionResult {
            self.record("switch", &to.name, term)
        }
        async fn cut(&self, term: u64) -> ActionResult {
            self.record("cut", "traffic", term)
        }
    }

    #[async_trait]
    impl Verifier for Recorder {
        async fn verify(&self, target: &ClusterConfig, term: u64) -> ActionResult {
            self.record("verify", &target.name, term)
        }
    }
}
