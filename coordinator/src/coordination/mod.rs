//! Leader election and the authoritative topology, behind one trait.
//!
//! Safety never rests on the lease alone: two replicas may both believe they lead for a short
//! while (a paused process, an unconditioned lease patch). Every change of the topology is a
//! compare-and-swap on its version, so at most one of them can raise a term.

pub mod journal_copy;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "kubernetes")]
pub mod leader_pod;
pub mod local;

use crate::model::topology::{Topology, Versioned};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Errors of a coordination backend.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    /// Another writer changed the topology since it was read.
    #[error("topology changed since it was read (expected version {expected:?})")]
    Conflict {
        /// The version the caller expected.
        expected: Option<String>,
    },
    /// The backend could not be read or written.
    #[error("coordination backend unavailable: {0}")]
    Unavailable(String),
    /// The stored state could not be decoded.
    #[error("coordination state is corrupt: {0}")]
    Corrupt(String),
}

/// Result of coordination operations.
pub type Result<T, E = CoordinationError> = std::result::Result<T, E>;

/// The lease as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Current holder, if the lease is held and not expired.
    pub holder: Option<String>,
    /// When the holder's lease expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// How many times the lease changed hands.
    pub transitions: u64,
}

/// Leader election plus the topology record.
#[async_trait]
pub trait Coordination: Send + Sync + std::fmt::Debug {
    /// Acquires the lease if free or expired, or renews it if held by us. Returns whether we
    /// hold it now.
    async fn try_acquire_or_renew(&self) -> Result<bool>;
    /// Whether we hold the lease right now by our own clock (acquired or renewed within the
    /// lease duration, with a safety margin). Cheap; called before every side effect.
    fn is_leader(&self) -> bool;
    /// Gives the lease up (on shutdown) so another replica takes over at once.
    async fn release(&self) -> Result<()>;
    /// The lease as stored.
    async fn lease(&self) -> Result<LeaseInfo>;
    /// The topology, or `None` before the first write.
    async fn read_topology(&self) -> Result<Option<Versioned<Topology>>>;
    /// Writes the topology if its stored version is still `expected` (`None`: it must not exist
    /// yet). Returns the new version.
    async fn write_topology(
        &self,
        topology: &Topology,
        expected: Option<&str>,
    ) -> Result<Versioned<Topology>>;
}
