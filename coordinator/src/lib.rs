//! vault-dr coordinator: aggregates agent reports, detects the loss of the primary with three
//! observers, chooses the best secondary, and carries out a journaled failover. Also the CLI
//! (`status`, `explain`, `history`, `bench`) and the local lab of real OpenBao processes that the
//! drill and the tests share.

pub mod config;
pub mod coordination;
pub mod error;
pub mod failover;
pub mod lab;
pub mod state;
pub mod store;
pub mod topology;
pub mod vault;
pub mod view;
