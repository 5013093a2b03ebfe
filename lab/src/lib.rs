//! vault-dr's harnesses, kept out of the product: the process lab, the drill and the benchmarks.
//! The lab uses the product (the coordinator's config, journal and rendering); the product never
//! uses the lab, and its release image carries none of it.
//!
//! - The process lab: real OpenBao (and helper) processes on loopback for the drill, the
//!   benchmarks and the integration tests. [`LabCluster::start_group`] starts independent
//!   single-node raft clusters that share one `seal "static"` key (so a raft snapshot of one
//!   restores into another without `-force` and without an unseal step);
//!   [`LabCluster::start_ha`] starts one multi-node raft cluster; [`group::DrGroup`] starts a
//!   whole DR group (clusters, an agent per node, coordinators, the stable client address).
//!   Every process runs under a [`process::ChildGuard`] that kills it when the guard is
//!   dropped, also during a panic, and under a small shell watchdog that kills it when the
//!   owning process dies.
//! - [`drill`]: `vault-dr-lab drill` (also reached as `vault-dr drill`).
//! - [`bench`]: `vault-dr-lab bench …` (also reached as `vault-dr bench …`).
//! - [`cli`]: the `vault-dr-lab` command line.
//! - [`tools`], [`wait`], [`ports`]: finding executables, waiting on a condition and picking
//!   ports, for the lab and the integration tests.

pub mod bench;
pub mod cli;
pub mod coordinator_file;
pub mod degrade;
pub mod drill;
pub mod error;
pub mod group;
pub mod harness;
pub mod openbao;
pub mod ports;
pub mod process;
pub mod raft_writes;
pub mod takeover;
pub mod token;
pub mod tools;
pub mod wait;

pub use error::LabError;
pub use openbao::{LabCluster, LabNode};
