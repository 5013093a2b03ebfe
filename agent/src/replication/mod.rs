//! Cross-cluster replication as seen from this node, behind the [`Replicator`] seam.
//!
//! One file per backend: [`enterprise`] reads Vault Enterprise's own DR / performance
//! replication status (OpenBao answers 404 there, which is mode `none`); [`snapshot`] ships raft
//! snapshots for OpenBao and publishes its status through the same trait, its decisions being
//! the pure [`snapshot::plan`] and its Vault calls in [`crate::vault`]; [`raft`] keeps the
//! node in the group's one raft (non-voters outside the primary, promotion by raft recovery),
//! its decisions the pure [`raft::plan`].

pub mod enterprise;
pub mod raft;
pub mod snapshot;

use async_trait::async_trait;
use vault_dr_common::ReplicationStatus;

/// A source of this node's replication status, asked once per probe interval.
#[async_trait]
pub trait Replicator: Send + Sync + std::fmt::Debug {
    /// The current status. Failures are folded into `last_error`, never panics or errors:
    /// the report must go out either way.
    async fn status(&self) -> ReplicationStatus;
}

#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    //! A fixed-answer [`Replicator`] for tests.
    use super::*;
    use std::sync::Mutex;

    /// Answers whatever was last set.
    #[derive(Debug, Default)]
    pub struct FixedReplicator(pub Mutex<ReplicationStatus>);

    #[async_trait]
    impl Replicator for FixedReplicator {
        async fn status(&self) -> ReplicationStatus {
            self.0.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }
}
