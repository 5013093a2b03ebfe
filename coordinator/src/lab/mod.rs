//! The local lab: real OpenBao (and helper) processes on loopback, for `vault-dr drill`,
//! `vault-dr bench` and the integration tests.
//!
//! [`LabCluster::start_group`] starts independent single-node raft clusters that share one
//! `seal "static"` key (so a raft snapshot of one restores into another without `-force` and
//! without an unseal step); [`LabCluster::start_ha`] starts one multi-node raft cluster. Every
//! process runs under a [`process::ChildGuard`] that kills it when the guard is dropped, also
//! during a panic, and under a small shell watchdog that kills it when the owning process dies.

pub mod error;
pub mod group;
pub mod openbao;
pub mod process;
pub mod token;
pub mod tools;

pub use error::LabError;
pub use openbao::{LabCluster, LabNode};
