//! The coordinator's answer to a report: what the node's agent should make true.

use serde::{Deserialize, Serialize};
use std::fmt;
use url::Url;

/// Role of a cluster in the DR group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes client traffic; the source of replication.
    Primary,
    /// Replicates from the primary; a failover candidate.
    Secondary,
}

impl Role {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Desired state of one node, returned in the response to its report.
///
/// Agents keep the newest one (highest `term`) and ignore any with a lower term: the term is
/// the fencing token of the whole system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Current term of the DR group.
    pub term: u64,
    /// The node's cluster.
    pub cluster: String,
    /// Role of the node's cluster in this term.
    pub role: Role,
    /// Name of the primary cluster in this term.
    pub primary: String,
    /// API address of the primary cluster: what a secondary probes (as an observer) and
    /// replicates from. `None` on the primary itself.
    pub primary_api_addr: Option<Url>,
    /// Whether a failover is in progress (agents keep probing but start nothing new).
    #[serde(default)]
    pub failover_in_progress: bool,
}
