//! [`SharedJournal`]: the journal's recent records also kept where every replica can read
//! them, so that a leader change does not lose the history when each replica has its own
//! embedded store (Kubernetes without MongoDB: one SQLite file per pod).
//!
//! The copy lives with the coordination backend ([`JournalCopy`]): a ConfigMap beside the
//! topology's (`<configmap>-journal`), or a file beside the local coordination file
//! (`<path>.journal.json`). It holds the newest [`KEEP_RECORDS`] failovers, at most
//! [`KEEP_BYTES`] of JSON (a ConfigMap holds at most 1 MiB); older records stay in the store
//! of the replica that wrote them. Reads merge the replica's own store with the copy, record by
//! record, keeping the one that got further ([`FailoverRecord::progress`]), so a stale
//! leader's older view never hides a newer one.
//!
//! The copy is written after the inner store, in the buffered store's background writer (the
//! failover never waits for it). A copy that cannot be written is logged when the condition
//! changes and counted in `vault_dr_coordinator_journal_copy_failures_total`; the inner store's
//! write still counts as done, and the next journal write carries the record again (each write
//! merges the newest records of this replica's store into the copy).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use prometheus::{IntCounter, Registry};

use super::{Result, Store, StoreError, StoredReport};
use crate::model::{DecisionRecord, FailoverRecord};

/// How many failovers the copy keeps, newest first.
pub const KEEP_RECORDS: usize = 32;
/// The most JSON the copy holds; the oldest records are dropped to fit.
pub const KEEP_BYTES: usize = 512 * 1024;

/// A place every replica of the group can read, holding the journal's recent records.
#[async_trait]
pub trait JournalCopy: Send + Sync + std::fmt::Debug {
    /// The records in the copy (empty when it does not exist yet).
    async fn read_journal(&self) -> Result<Vec<FailoverRecord>>;
    /// Replaces the copy with `change(current)`, as one compare-and-swap where the backend
    /// has one (retried on a conflict).
    async fn update_journal(
        &self,
        change: &(dyn Fn(Vec<FailoverRecord>) -> Vec<FailoverRecord> + Send + Sync),
    ) -> Result<()>;
    /// Where the copy lives, for messages ("ConfigMap ns/name", "file /path").
    fn location(&self) -> String;
}

/// `records` merged by id (the one with the higher progress wins, the first on a tie), newest
/// decision first, cut to `keep` records and to `keep_bytes` of JSON.
pub fn merge(
    records: impl IntoIterator<Item = FailoverRecord>,
    keep: usize,
    keep_bytes: usize,
) -> Vec<FailoverRecord> {
    let mut by_id: Vec<FailoverRecord> = Vec::new();
    for r in records {
        match by_id.iter_mut().find(|k| k.id == r.id) {
            Some(k) if r.progress() > k.progress() => *k = r,
            Some(_) => {}
            None => by_id.push(r),
        }
    }
    by_id.sort_by(|a, b| {
        b.decided_at
            .cmp(&a.decided_at)
            .then_with(|| b.term.cmp(&a.term))
    });
    by_id.truncate(keep);
    while by_id.len() > 1 && serde_json::to_vec(&by_id).map_or(0, |v| v.len()) > keep_bytes {
        by_id.pop();
    }
    by_id
}

/// The store with its journal also kept in a [`JournalCopy`].
#[derive(Debug)]
pub struct SharedJournal {
    inner: Arc<dyn Store>,
    copy: Arc<dyn JournalCopy>,
    failures: IntCounter,
    /// The last copy error logged (a changed condition is logged once).
    last_error: Mutex<Option<String>>,
}

impl SharedJournal {
    /// `inner` with its journal copied to `copy`; registers the failure counter.
    pub fn new(
        inner: Arc<dyn Store>,
        copy: Arc<dyn JournalCopy>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let failures = IntCounter::new(
            crate::metrics::name("journal_copy_failures_total"),
            "Journal writes whose copy where every replica reads it (ConfigMap or file) failed",
        )?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self {
            inner,
            copy,
            failures,
            last_error: Mutex::new(None),
        })
    }

    fn copy_failed(&self, e: &StoreError) {
        self.failures.inc();
        let e = e.to_string();
        let Ok(mut last) = self.last_error.lock() else {
            return;
        };
        if last.as_deref() != Some(e.as_str()) {
            tracing::warn!(
                "journal: cannot keep the copy in {} ({e}); a new leader may not show the latest failovers until a later write succeeds",
                self.copy.location()
            );
            *last = Some(e);
        }
    }

    fn copy_written(&self) {
        if let Ok(mut last) = self.last_error.lock()
            && last.take().is_some()
        {
            tracing::info!(
                "journal: the copy in {} is written again",
                self.copy.location()
            );
        }
    }

    async fn copied(&self) -> Vec<FailoverRecord> {
        match self.copy.read_journal().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(
                    "journal: cannot read the copy in {} ({e}); answering from this replica's store alone",
                    self.copy.location()
                );
                Vec::new()
            }
        }
    }
}

#[async_trait]
impl Store for SharedJournal {
    async fn init(&self) -> Result<()> {
        self.inner.init().await
    }

    async fn put_report(&self, report: &StoredReport) -> Result<()> {
        self.inner.put_report(report).await
    }

    async fn latest_reports(&self) -> Result<Vec<StoredReport>> {
        self.inner.latest_reports().await
    }

    async fn report_history(
        &self,
        cluster: &str,
        node: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<StoredReport>> {
        self.inner.report_history(cluster, node, since).await
    }

    async fn put_decision(&self, decision: &DecisionRecord) -> Result<()> {
        self.inner.put_decision(decision).await
    }

    async fn latest_decision(&self) -> Result<Option<DecisionRecord>> {
        self.inner.latest_decision().await
    }

    async fn put_failover(&self, failover: &FailoverRecord) -> Result<()> {
        self.inner.put_failover(failover).await?;
        // This replica's newest records go along, so a copy that failed before heals now (if
        // they cannot be read this time, this record goes alone and the next write heals).
        let own = self.inner.failovers(KEEP_RECORDS).await.unwrap_or_default();
        let record = failover.clone();
        let change = move |current: Vec<FailoverRecord>| {
            merge(
                std::iter::once(record.clone())
                    .chain(own.iter().cloned())
                    .chain(current),
                KEEP_RECORDS,
                KEEP_BYTES,
            )
        };
        match self.copy.update_journal(&change).await {
            Ok(()) => self.copy_written(),
            Err(e) => self.copy_failed(&e),
        }
        Ok(())
    }

    async fn failover(&self, id: &str) -> Result<Option<FailoverRecord>> {
        let own = self.inner.failover(id).await?;
        let copied = self.copied().await.into_iter().find(|r| r.id == id);
        Ok(merge(own.into_iter().chain(copied), 1, usize::MAX)
            .into_iter()
            .next())
    }

    async fn failovers(&self, limit: usize) -> Result<Vec<FailoverRecord>> {
        let own = self.inner.failovers(limit).await?;
        let copied = self.copied().await;
        Ok(merge(own.into_iter().chain(copied), limit, usize::MAX))
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    //! An in-memory [`JournalCopy`] that can be made to fail.

    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A copy in memory, shared by the replicas of a test.
    #[derive(Debug, Default)]
    pub struct MemoryCopy {
        records: Mutex<Vec<FailoverRecord>>,
        down: AtomicBool,
    }

    impl MemoryCopy {
        /// Makes every read and write fail (or work again).
        pub fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        fn check(&self) -> Result<()> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the copy is down (test)".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl JournalCopy for MemoryCopy {
        async fn read_journal(&self) -> Result<Vec<FailoverRecord>> {
            self.check()?;
            Ok(self.records.lock().map(|r| r.clone()).unwrap_or_default())
        }

        async fn update_journal(
            &self,
            change: &(dyn Fn(Vec<FailoverRecord>) -> Vec<FailoverRecord> + Send + Sync),
        ) -> Result<()> {
            self.check()?;
            let mut records = self
                .records
                .lock()
                .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
            *records = change(std::mem::take(&mut *records));
            Ok(())
        }

        fn location(&self) -> String {
            "memory".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::MemoryCopy;
    use super::*;
    use crate::model::{CandidateTable, FailoverStatus, Step, StepRecord};
    use crate::store::embedded::EmbeddedStore;
    use chrono::{Duration, TimeZone, Utc};

    fn record(term: u64, done: bool) -> FailoverRecord {
        let at =
            Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(term as i64);
        FailoverRecord {
            id: format!("{term}-p-s1"),
            term,
            from: "p".into(),
            to: "s1".into(),
            planned: false,
            reason: "primary p down".into(),
            decided_at: at,
            table: CandidateTable {
                at,
                candidates: Vec::new(),
                winner: Some("s1".into()),
            },
            steps: vec![StepRecord {
                step: Step::Decided,
                started_at: at,
                finished_at: Some(at),
                by: "c1".into(),
                detail: "decided".into(),
                error: None,
                effect_at: None,
                later: Vec::new(),
            }],
            status: if done {
                FailoverStatus::Done
            } else {
                FailoverStatus::InProgress
            },
            loss: None,
        }
    }

    fn replica(dir: &tempfile::TempDir, name: &str, copy: &Arc<MemoryCopy>) -> SharedJournal {
        replica_in(dir, name, copy, &Registry::new())
    }

    /// A replica's store, its metrics in `registry`.
    fn replica_in(
        dir: &tempfile::TempDir,
        name: &str,
        copy: &Arc<MemoryCopy>,
        registry: &Registry,
    ) -> SharedJournal {
        let inner: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(
                &dir.path().join(format!("{name}.sqlite")),
                std::time::Duration::from_secs(60),
            )
            .unwrap(),
        );
        SharedJournal::new(inner, copy.clone(), registry).unwrap()
    }

    /// The ids of the newest 20 failovers `store` answers, newest first.
    async fn ids(store: &SharedJournal) -> Vec<String> {
        let all = store.failovers(20).await.unwrap();
        all.into_iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn the_shared_suite_passes_on_the_embedded_store_with_a_journal_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = replica(&dir, "s", &Arc::new(MemoryCopy::default()));
        crate::store::suite::run_all(Arc::new(store)).await;
    }

    #[test]
    fn merging_keeps_the_record_that_got_further_newest_first_within_the_bounds() {
        let merged = merge(
            [
                record(2, false),
                record(3, false),
                record(2, true),
                record(1, true),
            ],
            10,
            usize::MAX,
        );
        let ids: Vec<&str> = merged.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["3-p-s1", "2-p-s1", "1-p-s1"]);
        assert_eq!(merged[1].status, FailoverStatus::Done, "the done one wins");
        assert_eq!(
            merge([record(2, true), record(2, false)], 10, usize::MAX)[0].status,
            FailoverStatus::Done
        );
        assert_eq!(
            merge((1..=40).map(|t| record(t, true)), KEEP_RECORDS, usize::MAX).len(),
            KEEP_RECORDS
        );
        let one = serde_json::to_vec(&[record(1, true)]).unwrap().len();
        let bounded = merge((1..=10).map(|t| record(t, true)), 10, one * 3);
        assert!(
            bounded.len() < 10 && !bounded.is_empty(),
            "{}",
            bounded.len()
        );
        assert_eq!(bounded[0].id, "10-p-s1", "the newest are kept");
    }

    #[tokio::test]
    async fn a_replica_with_its_own_store_sees_the_history_another_leader_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let copy = Arc::new(MemoryCopy::default());
        let (a, b) = (replica(&dir, "a", &copy), replica(&dir, "b", &copy));
        a.put_failover(&record(2, false)).await.unwrap();
        a.put_failover(&record(2, true)).await.unwrap();
        let seen = b.failovers(20).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].status, FailoverStatus::Done);
        assert_eq!(
            b.failover("2-p-s1").await.unwrap().map(|r| r.status),
            Some(FailoverStatus::Done)
        );
        // b leads now and writes the next one: both are in the copy, newest first.
        b.put_failover(&record(3, true)).await.unwrap();
        let ids = ids(&a).await;
        assert_eq!(ids, ["3-p-s1", "2-p-s1"]);
        // A stale view offered later does not win over the record that got further.
        a.put_failover(&record(2, false)).await.unwrap();
        assert_eq!(
            b.failover("2-p-s1").await.unwrap().unwrap().status,
            FailoverStatus::Done
        );
    }

    #[tokio::test]
    async fn a_copy_that_fails_is_counted_the_store_write_stands_and_the_next_write_heals_it() {
        let dir = tempfile::tempdir().unwrap();
        let copy = Arc::new(MemoryCopy::default());
        let registry = Registry::new();
        let a = replica_in(&dir, "a", &copy, &registry);
        let b = replica(&dir, "b", &copy);
        copy.set_down(true);
        a.put_failover(&record(2, true)).await.unwrap();
        assert_eq!(a.failures.get(), 1);
        assert_eq!(
            a.failovers(20).await.unwrap().len(),
            1,
            "its own store has it"
        );
        copy.set_down(false);
        assert!(b.failovers(20).await.unwrap().is_empty());
        a.put_failover(&record(3, true)).await.unwrap();
        let ids = ids(&b).await;
        assert_eq!(ids, ["3-p-s1", "2-p-s1"], "the earlier record came along");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("vault_dr_coordinator_journal_copy_failures_total 1"),
            "{text}"
        );
    }
}
