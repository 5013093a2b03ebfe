//! Why the executor (and the fence keeper) stopped.

use crate::coordination::CoordinationError;

/// Why the executor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// This coordinator no longer holds the lease; another one will resume.
    #[error("not the leader any more; stopping before the next side effect")]
    NotLeader,
    /// Another coordinator changed the topology first; it owns the failover now.
    #[error("topology changed under us: {0}")]
    Conflict(String),
    /// The coordination backend failed.
    #[error("coordination backend: {0}")]
    Coordination(#[source] CoordinationError),
    /// The topology names a cluster the configuration does not know.
    #[error("cluster {0:?} is not in the configuration")]
    UnknownCluster(String),
    /// A failover is already in progress, or the term moved since the decision.
    #[error("cannot begin a failover: {0}")]
    Refused(String),
}

impl From<CoordinationError> for ExecError {
    fn from(e: CoordinationError) -> Self {
        match e {
            CoordinationError::Conflict { .. } => Self::Conflict(e.to_string()),
            other => Self::Coordination(other),
        }
    }
}
