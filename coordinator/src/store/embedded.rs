//! [`EmbeddedStore`]: the default store, one local SQLite file (rusqlite with the bundled
//! SQLite, so nothing has to be installed).
//!
//! The file runs in WAL mode with a busy timeout, so a `vault-dr history` reading it while the
//! coordinator writes neither blocks nor fails. rusqlite is blocking: every call runs in
//! [`tokio::task::spawn_blocking`] on one connection behind a mutex.
//!
//! Tables: `reports` (history, one row per report), `latest` (one row per cluster and node),
//! `decisions` (one row, the latest decision) and `failovers` (the journal, one row per id).
//! Each row keeps the record as a JSON document next to the few columns that are filtered or
//! sorted on. Times are stored as integer microseconds since the epoch for ordering; the
//! document keeps the full value.
//!
//! Retention: every [`PRUNE_EVERY`]th `put_report` deletes the history rows received more than
//! `retention` ago (one indexed range delete), so history stays bounded without a timer. The
//! `latest` table is never pruned: it holds one row per node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Result, Store, StoreError, StoredReport};
use crate::model::DecisionRecord;
use crate::model::FailoverRecord;

/// History is pruned on every this many `put_report` calls (and on the first).
pub const PRUNE_EVERY: u64 = 100;

/// How long a writer waits for a lock held by another connection before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    cluster     TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    received_us INTEGER NOT NULL,
    started_us  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    doc         TEXT    NOT NULL,
    PRIMARY KEY (cluster, node, received_us, started_us, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_received ON reports (received_us);
CREATE TABLE IF NOT EXISTS latest (
    cluster     TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    received_us INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    doc         TEXT    NOT NULL,
    PRIMARY KEY (cluster, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    doc TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS failovers (
    id         TEXT    PRIMARY KEY,
    term       INTEGER NOT NULL,
    decided_us INTEGER NOT NULL,
    doc        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS failovers_decided ON failovers (decided_us DESC, term DESC, id DESC);
";

/// The embedded store: one SQLite file.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    retention: Duration,
    puts: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the SQLite file at `path` in WAL mode and creates the tables.
    /// Report history older than `retention` is pruned as reports arrive.
    pub fn open(path: &Path, retention: Duration) -> Result<Self> {
        let err = |e: rusqlite::Error| unavailable(path, "open", e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // WAL: readers (the CLI) never block the writer. NORMAL sync is durable across a
        // process crash, which is what the record needs.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            retention,
            puts: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in the blocking pool.
    async fn with<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| {
                StoreError::Unavailable(format!(
                    "{}: {what}: connection poisoned by an earlier panic",
                    path.display()
                ))
            })?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("{what}: blocking task failed: {e}")))?
    }
}

/// Microseconds since the epoch, the sort key of every time column.
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn unavailable(path: &Path, what: &str, e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {what}: {e}", path.display()))
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("sqlite {what}: {e}"))
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn from_json<T: DeserializeOwned>(what: &str, doc: &str) -> Result<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Integer columns are i64 in SQLite; a sequence number beyond that cannot come from an agent.
fn int(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} exceeds i64")))
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn init(&self) -> Result<()> {
        self.with("init", |c| c.execute_batch(SCHEMA).map_err(sql("init")))
            .await
    }

    async fn put_report(&self, report: &StoredReport) -> Result<()> {
        let r = &report.report;
        let cluster = r.cluster.clone();
        let node = r.node.clone();
        let received_us = micros(report.received_at);
        let started_us = micros(r.agent_started_at);
        let seq = int("seq", r.seq)?;
        let doc = to_json("report", report)?;
        let n = self.puts.fetch_add(1, Ordering::Relaxed);
        // Delete the history older than retention now and then (a cheap indexed range delete).
        let prune_before = n.is_multiple_of(PRUNE_EVERY).then(|| {
            let retention = chrono::Duration::from_std(self.retention)
                .unwrap_or_else(|_| chrono::Duration::days(365 * 100));
            micros(Utc::now() - retention)
        });
        self.with("put_report", move |c| {
            let tx = c.transaction().map_err(sql("begin"))?;
            tx.execute(
                "INSERT OR REPLACE INTO reports (cluster, node, received_us, started_us, seq, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![cluster, node, received_us, started_us, seq, doc],
            )
            .map_err(sql("insert report"))?;
            // The newest by (received_at, seq) stays latest: a late, older report only
            // lands in the history.
            tx.execute(
                "INSERT INTO latest (cluster, node, received_us, seq, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (cluster, node) DO UPDATE SET
                     received_us = excluded.received_us, seq = excluded.seq, doc = excluded.doc
                 WHERE excluded.received_us > latest.received_us
                    OR (excluded.received_us = latest.received_us AND excluded.seq >= latest.seq)",
                params![cluster, node, received_us, seq, doc],
            )
            .map_err(sql("upsert latest"))?;
            if let Some(before) = prune_before {
                tx.execute("DELETE FROM reports WHERE received_us < ?1", [before])
                    .map_err(sql("prune reports"))?;
            }
            tx.commit().map_err(sql("commit"))
        })
        .await
    }

    async fn latest_reports(&self) -> Result<Vec<StoredReport>> {
        self.with("latest_reports", |c| {
            let mut stmt = c
                .prepare_cached("SELECT doc FROM latest ORDER BY cluster, node")
                .map_err(sql("select latest"))?;
            let docs = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql("select latest"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("read latest"))?;
            docs.iter().map(|d| from_json("latest report", d)).collect()
        })
        .await
    }

    async fn report_history(
        &self,
        cluster: &str,
        node: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReport>> {
        let (cluster, node, since) = (cluster.to_owned(), node.to_owned(), micros(since));
        self.with("report_history", move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM reports
                     WHERE cluster = ?1 AND node = ?2 AND received_us >= ?3
                     ORDER BY received_us, seq, started_us",
                )
                .map_err(sql("select history"))?;
            let docs = stmt
                .query_map(params![cluster, node, since], |row| row.get::<_, String>(0))
                .map_err(sql("select history"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("read history"))?;
            docs.iter().map(|d| from_json("report", d)).collect()
        })
        .await
    }

    async fn put_decision(&self, decision: &DecisionRecord) -> Result<()> {
        let doc = to_json("decision", decision)?;
        self.with("put_decision", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO decisions (id, doc) VALUES (1, ?1)",
                [doc],
            )
            .map(drop)
            .map_err(sql("upsert decision"))
        })
        .await
    }

    async fn latest_decision(&self) -> Result<Option<DecisionRecord>> {
        self.with("latest_decision", |c| {
            let doc: Option<String> = c
                .query_row("SELECT doc FROM decisions WHERE id = 1", [], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sql("select decision"))?;
            doc.map(|d| from_json("decision", &d)).transpose()
        })
        .await
    }

    async fn put_failover(&self, failover: &FailoverRecord) -> Result<()> {
        let doc = to_json("failover", failover)?;
        let id = failover.id.clone();
        let term = int("term", failover.term)?;
        let decided_us = micros(failover.decided_at);
        let progress = failover.progress();
        self.with("put_failover", move |c| {
            // Read and write in one write transaction (other coordinator processes may share
            // the file): a record that got less far than the stored one is not written.
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql("begin failover write"))?;
            let stored: Option<String> = tx
                .query_row("SELECT doc FROM failovers WHERE id = ?1", [&id], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sql("select failover"))?;
            if let Some(stored) = stored {
                let stored: FailoverRecord = from_json("failover", &stored)?;
                if stored.progress() > progress {
                    tracing::warn!(failover = %id, stored = stored.progress(), offered = progress, "kept the journal record that got further; an older view was offered (a stale leader?)");
                    return Ok(());
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO failovers (id, term, decided_us, doc)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, term, decided_us, doc],
            )
            .map_err(sql("upsert failover"))?;
            tx.commit().map_err(sql("commit failover write"))
        })
        .await
    }

    async fn failover(&self, id: &str) -> Result<Option<FailoverRecord>> {
        let id = id.to_owned();
        self.with("failover", move |c| {
            let doc: Option<String> = c
                .query_row("SELECT doc FROM failovers WHERE id = ?1", [&id], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sql("select failover"))?;
            doc.map(|d| from_json("failover", &d)).transpose()
        })
        .await
    }

    async fn failovers(&self, limit: usize) -> Result<Vec<FailoverRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with("failovers", move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM failovers
                     ORDER BY decided_us DESC, term DESC, id DESC LIMIT ?1",
                )
                .map_err(sql("select failovers"))?;
            let docs = stmt
                .query_map([limit], |row| row.get::<_, String>(0))
                .map_err(sql("select failovers"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("read failovers"))?;
            docs.iter().map(|d| from_json("failover", d)).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    fn open(dir: &tempfile::TempDir, retention: Duration) -> EmbeddedStore {
        EmbeddedStore::open(&dir.path().join("vault-dr.db"), retention).unwrap()
    }

    #[tokio::test]
    async fn the_shared_suite_passes_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        suite::run_all(Arc::new(open(&dir, Duration::from_secs(86_400)))).await;
    }

    #[tokio::test]
    async fn history_older_than_retention_is_pruned_on_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Duration::from_secs(3600));
        let now = Utc::now();
        let old = suite::report("dc1", "n1", 1, now - chrono::Duration::hours(2));
        let fresh = suite::report("dc1", "n1", 2, now - chrono::Duration::minutes(1));
        store.put_report(&old).await.unwrap();
        // The first put prunes; make the next pruning put come after the old report.
        store.puts.store(PRUNE_EVERY, Ordering::Relaxed);
        store.put_report(&fresh).await.unwrap();
        let since = now - chrono::Duration::days(1);
        let history = store.report_history("dc1", "n1", since).await.unwrap();
        assert_eq!(history, vec![fresh.clone()]);
        // Latest is one row per node and is never pruned.
        assert_eq!(store.latest_reports().await.unwrap(), vec![fresh]);
    }

    #[tokio::test]
    async fn the_record_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let record = suite::failover_record(7, "dc1", "dc2", Utc::now());
        {
            let store = open(&dir, Duration::from_secs(3600));
            store.put_failover(&record).await.unwrap();
        }
        let store = open(&dir, Duration::from_secs(3600));
        assert_eq!(store.failover(&record.id).await.unwrap(), Some(record));
    }

    #[tokio::test]
    async fn a_second_connection_reads_while_the_store_writes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir, Duration::from_secs(3600));
        let reader = open(&dir, Duration::from_secs(3600));
        let r = suite::report("dc1", "n1", 1, Utc::now());
        writer.put_report(&r).await.unwrap();
        assert_eq!(reader.latest_reports().await.unwrap(), vec![r]);
        let mode: String = reader
            .with("mode", |c| {
                c.query_row("PRAGMA journal_mode", [], |row| row.get(0))
                    .map_err(sql("mode"))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_corrupt_document_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Duration::from_secs(3600));
        store
            .with("corrupt", |c| {
                c.execute(
                    "INSERT INTO failovers (id, term, decided_us, doc) VALUES ('x', 1, 0, '{')",
                    [],
                )
                .map(drop)
                .map_err(sql("insert"))
            })
            .await
            .unwrap();
        let err = store.failover("x").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
