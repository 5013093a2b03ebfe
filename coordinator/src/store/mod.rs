//! Where the coordinator keeps its record: reports (history with retention), the latest report
//! per node, the latest decision, and the failover journal.
//!
//! One trait, two implementations: [`embedded`] (the default: one local SQLite file) and
//! [`mongo`] (production). [`buffered`] wraps either so that an outage of the store never blocks
//! detection or failover: writes are queued in a bounded buffer and retried with backoff.
//! [`shared_journal`] keeps the journal's recent records also where every replica can read
//! them, for replicas that each have their own embedded store.
//!
//! The store is the *record*. What a new leader needs to resume a failover lives in the
//! topology of the coordination backend; the store journal is written as well, for history.

pub mod buffered;
pub mod embedded;
#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod shared_journal;

use crate::model::DecisionRecord;
use crate::model::FailoverRecord;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vault_dr_common::Report;

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored document could not be decoded.
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
    /// The write buffer is full; the write was dropped (counted in metrics).
    #[error("store write buffer full, {0} writes pending")]
    BufferFull(usize),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A report as received, with the coordinator's receive time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReport {
    /// When the coordinator received it (its clock, not the agent's).
    pub received_at: DateTime<Utc>,
    /// The report itself.
    pub report: Report,
}

/// The coordinator's record. Every method is idempotent: writing the same thing twice leaves
/// one copy.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates tables or indexes. Called once at start-up; harmless to call again.
    async fn init(&self) -> Result<()>;
    /// Appends a report to the history (kept for the configured retention) and makes it the
    /// latest for its `(cluster, node)` unless a newer one is already stored.
    async fn put_report(&self, report: &StoredReport) -> Result<()>;
    /// The latest report of every `(cluster, node)`, ordered by cluster then node.
    async fn latest_reports(&self) -> Result<Vec<StoredReport>>;
    /// Report history of one node received at or after `since`, oldest first.
    async fn report_history(
        &self,
        cluster: &str,
        node: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReport>>;
    /// Stores the latest decision (replacing the previous latest; older ones need not be kept).
    async fn put_decision(&self, decision: &DecisionRecord) -> Result<()>;
    /// The latest decision, if any.
    async fn latest_decision(&self) -> Result<Option<DecisionRecord>>;
    /// Inserts or replaces the journal record with this `id`.
    async fn put_failover(&self, failover: &FailoverRecord) -> Result<()>;
    /// One journal record.
    async fn failover(&self, id: &str) -> Result<Option<FailoverRecord>>;
    /// The newest `limit` journal records, newest first.
    async fn failovers(&self, limit: usize) -> Result<Vec<FailoverRecord>>;
}

#[cfg(any(test, feature = "test-util"))]
pub mod suite;
