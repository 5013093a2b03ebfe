//! The data everyone in the coordinator shares, and nothing else: the [`topology`] (primary,
//! term, failover in progress), the leader's [`view`] of every cluster, the failover
//! [`journal`] (steps and records) with its [`loss`] account, the detector's [`decision`]s, the scorer's [`candidate`]
//! tables and the [`policy`]. Imported by the detector, the scorer, the executor, the store,
//! the coordination backends, the API, the CLI and the lab; it imports none of them.

pub mod candidate;
pub mod decision;
pub mod degraded;
pub mod journal;
pub mod loss;
pub mod policy;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod topology;
pub mod view;

pub use candidate::{Candidate, CandidateTable, Eligibility, Ineligible};
pub use decision::{Decision, DecisionRecord, Observers, Phase, SwitchoverRefusal};
pub use journal::{FailoverRecord, FailoverStatus, LaterEvent, Step, StepRecord};
pub use loss::{AppliedIndex, AtRisk, LossAccount, ServedData};
pub use policy::{Policy, QuorumMode};
pub use topology::{FailoverInProgress, PendingFence, Topology, Versioned};
pub use view::{ClusterView, DirectProbe, NodeView, View};
