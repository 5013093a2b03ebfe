//! Failure detection, choice of secondary and the journaled failover.
//!
//! [`detector`] and [`scorer`] are pure; [`executor`] performs the side effects through the
//! traits in [`actions`].

pub mod actions;
pub mod detector;
pub mod executor;
pub mod journal;
pub mod openbao;

pub mod scorer;

pub use journal::{FailoverRecord, FailoverStatus, Step, StepRecord};
