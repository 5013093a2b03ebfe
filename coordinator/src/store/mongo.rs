//! [`MongoStore`]: the production store, a MongoDB database (any server speaking the MongoDB wire
//! protocol).
//!
//! Collections, all created with their indexes by [`Store::init`]:
//! - `reports`: the history, one document per report, removed by a TTL index on `received_at`
//!   (a BSON date) after the configured retention, and an index on
//!   `(cluster, node, received_us)` for the history of one node.
//! - `clusters`: the latest report of every node, one document per cluster and node
//!   (`_id` = `"cluster/node"`), written by an upsert guarded so that an older report never
//!   overwrites a newer one.
//! - `decisions`: the latest decision (`_id` = `"latest"`).
//! - `failovers`: the journal, one document per failover (`_id` = its id), indexed on
//!   `decided_at`.
//!
//! Each document holds the record itself under `doc` (converted with `bson::to_document`, so it
//! round-trips exactly) next to the few fields that are filtered, sorted or expired on. Times
//! that are compared are kept twice: as a BSON date (millisecond precision, for the TTL index
//! and for people reading the database) and as integer microseconds (`*_us`, the exact order the
//! embedded store uses too).
//!
//! Time-outs for connecting and for server selection are short ([`TIMEOUT`]) so that an outage
//! is noticed within seconds; the [`super::buffered`] wrapper keeps it from blocking anybody.
//! Error messages never contain the password of the connection string.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vault_dr_common::Secret;

use super::{Result, Store, StoreError, StoredReport};
use crate::model::DecisionRecord;
use crate::model::FailoverRecord;

/// Connect and server-selection time-out: an unreachable server fails an operation this fast.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Name of the TTL index on `reports.received_at`.
pub const TTL_INDEX: &str = "received_at_ttl";

/// `NamespaceNotFound`: the collection does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;
/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// `IndexOptionsConflict` and `IndexKeySpecsConflict`: an index of that name exists with other
/// options (here: the retention changed).
const INDEX_CONFLICT: [i32; 2] = [85, 86];

/// The MongoDB store.
#[derive(Debug, Clone)]
pub struct MongoStore {
    db: Database,
    reports: Collection<Document>,
    clusters: Collection<Document>,
    decisions: Collection<Document>,
    failovers: Collection<Document>,
    retention: Duration,
    /// The connection string's password, to scrub from error messages.
    password: Option<Secret>,
}

impl MongoStore {
    /// Prepares a client for `uri` and `database`. Does not contact the server (the coordinator
    /// must start while MongoDB is down); the first operation does. Report history is kept for
    /// `retention` (at least one second).
    pub async fn connect(uri: &str, database: &str, retention: Duration) -> Result<Self> {
        let password = password_of(uri).map(Secret::new);
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            StoreError::Unavailable(scrub(
                &format!("invalid MongoDB connection string: {e}"),
                password.as_ref(),
            ))
        })?;
        options.connect_timeout = Some(TIMEOUT);
        options.server_selection_timeout = Some(TIMEOUT);
        options
            .app_name
            .get_or_insert_with(|| "vault-dr-coordinator".to_owned());
        let client = Client::with_options(options).map_err(|e| {
            StoreError::Unavailable(scrub(&format!("MongoDB client: {e}"), password.as_ref()))
        })?;
        let db = client.database(database);
        Ok(Self {
            reports: db.collection("reports"),
            clusters: db.collection("clusters"),
            decisions: db.collection("decisions"),
            failovers: db.collection("failovers"),
            db,
            retention: retention.max(Duration::from_secs(1)),
            password,
        })
    }

    /// The `expireAfterSeconds` of the TTL index on `reports`, as the server reports it
    /// (`None` when the index does not exist).
    pub async fn report_ttl(&self) -> Result<Option<Duration>> {
        let cursor = match self.reports.list_indexes().await {
            Ok(cursor) => cursor,
            // No collection yet, so no index.
            Err(e) if command_code(&e) == Some(NAMESPACE_NOT_FOUND) => return Ok(None),
            Err(e) => return Err(self.err("list indexes", e)),
        };
        let indexes: Vec<IndexModel> = cursor
            .try_collect()
            .await
            .map_err(|e| self.err("list indexes", e))?;
        Ok(indexes
            .into_iter()
            .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some(TTL_INDEX))
            .and_then(|i| i.options.and_then(|o| o.expire_after)))
    }

    fn err(&self, what: &str, e: mongodb::error::Error) -> StoreError {
        StoreError::Unavailable(scrub(
            &format!("mongodb {what}: {e}"),
            self.password.as_ref(),
        ))
    }

    async fn create_index(&self, coll: &Collection<Document>, index: IndexModel) -> Result<()> {
        coll.create_index(index)
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("create index on {}", coll.name()), e))
    }

    /// Creates the TTL index, or changes its `expireAfterSeconds` if the retention changed.
    async fn ensure_ttl(&self) -> Result<()> {
        let secs = self.retention.as_secs();
        let index = IndexModel::builder()
            .keys(doc! { "received_at": 1 })
            .options(
                IndexOptions::builder()
                    .name(TTL_INDEX.to_owned())
                    .expire_after(Duration::from_secs(secs))
                    .build(),
            )
            .build();
        match self.reports.create_index(index).await {
            Ok(_) => Ok(()),
            Err(e) if command_code(&e).is_some_and(|c| INDEX_CONFLICT.contains(&c)) => {
                let secs = i64::try_from(secs).unwrap_or(i64::MAX);
                self.db
                    .run_command(doc! {
                        "collMod": self.reports.name(),
                        "index": { "name": TTL_INDEX, "expireAfterSeconds": secs },
                    })
                    .await
                    .map(drop)
                    .map_err(|e| self.err("change report retention", e))
            }
            Err(e) => Err(self.err("create TTL index on reports", e)),
        }
    }

    async fn find_all(
        &self,
        coll: &Collection<Document>,
        filter: Document,
        sort: Document,
        limit: Option<i64>,
    ) -> Result<Vec<Document>> {
        let what = format!("find in {}", coll.name());
        let mut find = coll.find(filter).sort(sort);
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        find.await
            .map_err(|e| self.err(&what, e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&what, e))
    }

    async fn upsert(
        &self,
        coll: &Collection<Document>,
        filter: Document,
        doc: Document,
    ) -> Result<()> {
        coll.replace_one(filter, doc)
            .upsert(true)
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("write to {}", coll.name()), e))
    }
}

/// Whether MongoDB refused a write as a duplicate key (code 11000).
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// The password of a `mongodb://user:password@host/...` connection string, if any.
fn password_of(uri: &str) -> Option<String> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// `message` with every occurrence of the password replaced.
fn scrub(message: &str, password: Option<&Secret>) -> String {
    match password {
        Some(p) if !p.is_empty() => message.replace(p.expose(), "[redacted]"),
        _ => message.to_owned(),
    }
}

/// The server's error code of a failed command or write, if there is one.
fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

fn date(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

fn to_doc<T: Serialize>(what: &str, value: &T) -> Result<Document> {
    bson::to_document(value).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

/// Decodes the record kept under `doc`.
fn from_doc<T: DeserializeOwned>(what: &str, mut stored: Document) -> Result<T> {
    match stored.remove("doc") {
        Some(Bson::Document(d)) => {
            bson::from_document(d).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }
        _ => Err(StoreError::Corrupt(format!(
            "{what}: no `doc` sub-document"
        ))),
    }
}

fn int(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} exceeds i64")))
}

#[async_trait]
impl Store for MongoStore {
    async fn init(&self) -> Result<()> {
        self.ensure_ttl().await?;
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        self.create_index(
            &self.reports,
            index(
                doc! { "cluster": 1, "node": 1, "received_us": 1 },
                "cluster_node_received",
            ),
        )
        .await?;
        self.create_index(
            &self.clusters,
            index(doc! { "cluster": 1, "node": 1 }, "cluster_node"),
        )
        .await?;
        self.create_index(
            &self.failovers,
            index(doc! { "decided_at": -1 }, "decided_at"),
        )
        .await
    }

    async fn put_report(&self, report: &StoredReport) -> Result<()> {
        let r = &report.report;
        let received_us = report.received_at.timestamp_micros();
        let seq = int("seq", r.seq)?;
        let body = to_doc("report", report)?;
        // One document per report: the id makes a repeated write replace, not add.
        let id = format!(
            "{}/{}/{received_us}/{}/{seq}",
            r.cluster,
            r.node,
            r.agent_started_at.timestamp_micros()
        );
        let history = doc! {
            "_id": &id,
            "cluster": &r.cluster,
            "node": &r.node,
            "received_at": date(report.received_at),
            "received_us": received_us,
            "seq": seq,
            "doc": body.clone(),
        };
        self.upsert(&self.reports, doc! { "_id": &id }, history)
            .await?;

        let key = format!("{}/{}", r.cluster, r.node);
        let latest = doc! {
            "_id": &key,
            "cluster": &r.cluster,
            "node": &r.node,
            "received_at": date(report.received_at),
            "received_us": received_us,
            "seq": seq,
            "doc": body,
        };
        // Replace only an older latest. When a newer one is stored the filter matches nothing,
        // the upsert tries to insert the same `_id` and the server answers duplicate key: that
        // is the "keep the newer" outcome, not an error.
        let guard = doc! {
            "_id": &key,
            "$or": [
                { "received_us": { "$lt": received_us } },
                { "received_us": received_us, "seq": { "$lte": seq } },
            ],
        };
        match self.clusters.replace_one(guard, latest).upsert(true).await {
            Ok(_) => Ok(()),
            Err(e) if command_code(&e) == Some(DUPLICATE_KEY) => Ok(()),
            Err(e) => Err(self.err("write to clusters", e)),
        }
    }

    async fn latest_reports(&self) -> Result<Vec<StoredReport>> {
        self.find_all(
            &self.clusters,
            doc! {},
            doc! { "cluster": 1, "node": 1 },
            None,
        )
        .await?
        .into_iter()
        .map(|d| from_doc("latest report", d))
        .collect()
    }

    async fn report_history(
        &self,
        cluster: &str,
        node: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReport>> {
        let filter = doc! {
            "cluster": cluster,
            "node": node,
            "received_us": { "$gte": since.timestamp_micros() },
        };
        self.find_all(
            &self.reports,
            filter,
            doc! { "received_us": 1, "seq": 1, "_id": 1 },
            None,
        )
        .await?
        .into_iter()
        .map(|d| from_doc("report", d))
        .collect()
    }

    async fn put_decision(&self, decision: &DecisionRecord) -> Result<()> {
        let body = to_doc("decision", decision)?;
        let stored = doc! { "_id": "latest", "written_at": date(Utc::now()), "doc": body };
        self.upsert(&self.decisions, doc! { "_id": "latest" }, stored)
            .await
    }

    async fn latest_decision(&self) -> Result<Option<DecisionRecord>> {
        self.decisions
            .find_one(doc! { "_id": "latest" })
            .await
            .map_err(|e| self.err("read decision", e))?
            .map(|d| from_doc("decision", d))
            .transpose()
    }

    async fn put_failover(&self, failover: &FailoverRecord) -> Result<()> {
        let stored = doc! {
            "_id": &failover.id,
            "term": int("term", failover.term)?,
            "decided_at": date(failover.decided_at),
            "decided_us": failover.decided_at.timestamp_micros(),
            "doc": to_doc("failover", failover)?,
            "progress": int("progress", failover.progress())?,
        };
        // Replace only a record that got no further (or one written before `progress` was
        // stored). When the stored record got further the filter matches nothing, the upsert
        // tries to insert the same _id and MongoDB refuses it as a duplicate key: that refusal
        // is the intended outcome (a stale leader's older view is not written).
        let filter = doc! {
            "_id": &failover.id,
            "$or": [
                { "progress": { "$lte": int("progress", failover.progress())? } },
                { "progress": { "$exists": false } },
            ],
        };
        match self
            .failovers
            .replace_one(filter, stored)
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => {
                tracing::warn!(failover = %failover.id, offered = failover.progress(), "kept the journal record that got further; an older view was offered (a stale leader?)");
                Ok(())
            }
            Err(e) => Err(self.err("write to failovers", e)),
        }
    }

    async fn failover(&self, id: &str) -> Result<Option<FailoverRecord>> {
        self.failovers
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.err("read failover", e))?
            .map(|d| from_doc("failover", d))
            .transpose()
    }

    async fn failovers(&self, limit: usize) -> Result<Vec<FailoverRecord>> {
        // MongoDB reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sort = doc! { "decided_at": -1, "decided_us": -1, "term": -1, "_id": -1 };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.find_all(&self.failovers, doc! {}, sort, Some(limit))
            .await?
            .into_iter()
            .map(|d| from_doc("failover", d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_found_in_the_connection_string() {
        assert_eq!(
            password_of("mongodb://vd:s3cr%40t@db1:27017,db2/vault_dr?authSource=admin").as_deref(),
            Some("s3cr%40t")
        );
        assert_eq!(password_of("mongodb://127.0.0.1:27017/x"), None);
        assert_eq!(password_of("mongodb://user@h/x"), None);
        assert_eq!(
            password_of("mongodb+srv://u:p@cluster.example/x").as_deref(),
            Some("p")
        );
    }

    #[test]
    fn error_messages_never_carry_the_password() {
        let p = Secret::new("hunter2");
        let msg = scrub("auth failed for mongodb://u:hunter2@h", Some(&p));
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("[redacted]"), "{msg}");
    }

    #[tokio::test]
    async fn an_invalid_connection_string_is_an_error_without_the_password() {
        let err = MongoStore::connect("mongodb://u:hunter2@", "x", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn connecting_does_not_need_a_running_server() {
        // Port 1 on loopback: nothing listens there. `connect` must still succeed (the
        // coordinator starts without MongoDB); the first operation fails within the time-out.
        let store = MongoStore::connect("mongodb://127.0.0.1:1/", "x", Duration::from_secs(60))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = store.latest_decision().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
    }
}
