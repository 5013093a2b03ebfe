//! Failure detection, choice of secondary and the journaled failover.
//!
//! [`detector`] and [`scorer`] are pure functions over the data in `crate::model`;
//! [`executor`] performs the side effects through the traits in [`actions`] and tells the
//! [`hooks`] (metrics, Kubernetes Events) about every step; [`fence`] finishes a seal of the old
//! primary that the Fenced step's bounded attempt left pending; [`handover`] moves the leadership
//! of one raft to the target of a planned switchover.

pub mod actions;
pub mod degraded;
pub mod detector;
pub mod error;
#[cfg(feature = "kubernetes")]
pub mod events;
pub mod executor;
pub mod fence;
pub mod handover;
pub mod hooks;
pub mod openbao;
pub mod scorer;
