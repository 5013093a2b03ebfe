//! The journaled failover executor.
