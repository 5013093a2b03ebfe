//! The snapshot directory: pulled snapshots as `<term>-<index>-<millis>.snap` with their
//! metadata beside them (`.json`: raft index, DR term, taken-at, SHA-256, size, source), written
//! with temp file + fsync + rename so a crash never leaves a half file under a real name; the
//! newest K are kept. [`Store::verify`] is the gate before any restore: the DR term must not be
//! older than allowed, the size and SHA-256 must match the metadata and the archive must parse
//! with the same raft index. The agent's record of what it did to its node (`node.json`) lives
//! here too.

use super::archive::{self, ArchiveError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Metadata of one snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// File name of the snapshot (in the same directory).
    pub file: String,
    /// Raft index, read from the archive's `meta.json`.
    pub index: u64,
    /// Raft term of the source cluster (not the DR term).
    pub raft_term: u64,
    /// DR term it was pulled in.
    pub term: u64,
    /// When the pull finished.
    pub taken_at: DateTime<Utc>,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it came from (the source cluster's API address).
    pub source: String,
}

impl SnapshotMeta {
    /// Ordering key, newest last: DR term, then raft index (one source per term), then time.
    fn key(&self) -> (u64, u64, DateTime<Utc>) {
        (self.term, self.index, self.taken_at)
    }

    /// Whether this snapshot holds newer data than `other` (a later DR term, or the same term
    /// and a higher raft index).
    pub fn newer_than(&self, other: &SnapshotMeta) -> bool {
        (self.term, self.index) > (other.term, other.index)
    }
}

/// What the agent has done to its node, kept across agent restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The snapshot last restored into the node.
    #[serde(default)]
    pub restored: Option<SnapshotMeta>,
    /// The DR term in which this node was last made primary by this agent.
    #[serde(default)]
    pub primary_term: Option<u64>,
    /// The newest quarantine file written.
    #[serde(default)]
    pub quarantined: Option<PathBuf>,
    /// The newest DR term in which this node's cluster was the primary while this agent
    /// watched it; cleared once the node follows a later term. A node sealed while it is set
    /// and its cluster is a secondary of a later term is a superseded primary's: its server
    /// is restarted (`--vault-restart`).
    #[serde(default)]
    pub was_primary: Option<u64>,
}

/// Why a snapshot was not restored, or a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done, with the path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot was pulled in a DR term older than the one allowed.
    #[error("snapshot of term {term} is older than term {min_term}")]
    OlderTerm {
        /// Its DR term.
        term: u64,
        /// The lowest term allowed.
        min_term: u64,
    },
    /// The file is shorter or longer than when it was written.
    #[error("{file}: size {actual} instead of {expected}")]
    Size {
        /// The file.
        file: String,
        /// Size from the metadata.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The file's SHA-256 differs from the metadata.
    #[error("{0}: checksum mismatch")]
    Checksum(String),
    /// Metadata or the node record could not be encoded as JSON.
    #[error("encode {what}: {source}")]
    Encode {
        /// What was encoded.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The archive is not a usable snapshot.
    #[error("{file}: {source}")]
    Archive {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: ArchiveError,
    },
    /// The archive's raft index differs from the metadata.
    #[error("{file}: raft index {actual} instead of {expected}")]
    Index {
        /// The file.
        file: String,
        /// From the metadata.
        expected: u64,
        /// From the archive.
        actual: u64,
    },
}

impl StoreError {
    /// Bounded kind, for `last_error` and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::OlderTerm { .. } => "older_term",
            Self::Size { .. } => "truncated",
            Self::Checksum(_) => "checksum",
            Self::Archive { .. } | Self::Index { .. } => "corrupt",
            Self::Encode { .. } => "encode",
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A snapshot being written: a temp file in the store's directory, hashed as it is written.
#[derive(Debug)]
pub struct Incoming {
    path: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
}

impl Incoming {
    /// Appends bytes.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(chunk)
            .map_err(io(format!("write {}", self.path.display())))?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Committed files were renamed away; anything left is an abandoned pull.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A directory of snapshots keeping the newest `keep`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
}

const NODE_RECORD: &str = "node.json";

impl Store {
    /// Opens (creating) `dir`, removing temp files of interrupted pulls.
    pub fn open(dir: &Path, keep: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts writing a snapshot.
    pub fn begin(&self) -> Result<Incoming, StoreError> {
        begin_in(&self.dir)
    }

    /// Finishes `incoming`: fsync, check the archive, rename to its final name, write the
    /// metadata beside it, fsync the directory, then drop all but the newest `keep`.
    pub fn commit(
        &self,
        incoming: Incoming,
        term: u64,
        source: &str,
        taken_at: DateTime<Utc>,
    ) -> Result<SnapshotMeta, StoreError> {
        let name = format!("{term:010}-{{index}}-{}", taken_at.timestamp_millis());
        let meta = commit_in(&self.dir, incoming, &name, term, source, taken_at)?;
        self.prune();
        Ok(meta)
    }

    /// Every snapshot with readable metadata and an existing file, newest first.
    pub fn list(&self) -> Vec<SnapshotMeta> {
        let mut all: Vec<SnapshotMeta> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".json") && n != NODE_RECORD
            })
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<SnapshotMeta>(&b).ok())
            .filter(|m| self.dir.join(&m.file).is_file())
            .collect();
        all.sort_by_key(|m| std::cmp::Reverse(m.key()));
        all
    }

    /// The newest snapshot held.
    pub fn newest(&self) -> Option<SnapshotMeta> {
        self.list().into_iter().next()
    }

    /// Removes all but the newest `keep` snapshots (file and metadata).
    pub fn prune(&self) {
        for old in self.list().into_iter().skip(self.keep) {
            let _ = std::fs::remove_file(self.dir.join(&old.file));
            let _ = std::fs::remove_file(self.dir.join(meta_name(&old.file)));
        }
    }

    /// The path of `meta`'s file once it passes every check: DR term at least `min_term`,
    /// size and SHA-256 as recorded, and an archive that parses with the recorded raft index.
    pub fn verify(&self, meta: &SnapshotMeta, min_term: u64) -> Result<PathBuf, StoreError> {
        verify_in(&self.dir, meta, min_term)
    }

    /// The agent's record of its node: the default when none was written yet. An unreadable or
    /// corrupt record is logged and also read as the default: the agent then no longer knows
    /// it was a primary, so an operator must be told (its data is still quarantined before the
    /// first restore in continuous mode).
    pub fn node_record(&self) -> NodeRecord {
        let path = self.dir.join(NODE_RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return NodeRecord::default(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "node record unreadable; treating this node as never promoted");
                return NodeRecord::default();
            }
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(path = %path.display(), error = %e, "node record corrupt; treating this node as never promoted");
            NodeRecord::default()
        })
    }

    /// Saves the record of the node atomically.
    pub fn save_node_record(&self, r: &NodeRecord) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(r).map_err(|source| StoreError::Encode {
            what: "node record".into(),
            source,
        })?;
        write_atomic(&self.dir.join(NODE_RECORD), &body)
    }
}

/// Starts writing a snapshot file in `dir`.
pub fn begin_in(dir: &Path) -> Result<Incoming, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let tag: u64 = rand::random();
    let path = dir.join(format!(".incoming-{tag:016x}.tmp"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io(format!("create {}", path.display())))?;
    Ok(Incoming {
        path,
        file,
        hasher: Sha256::new(),
        size: 0,
    })
}

/// Finishes a snapshot file in `dir` under `name` (`{index}` in it is replaced by the raft
/// index) + `.snap`, with metadata in `<name>.json`. Used by the store and for quarantine.
pub fn commit_in(
    dir: &Path,
    incoming: Incoming,
    name: &str,
    term: u64,
    source: &str,
    taken_at: DateTime<Utc>,
) -> Result<SnapshotMeta, StoreError> {
    let tmp = incoming.path.clone();
    incoming
        .file
        .sync_all()
        .map_err(io(format!("fsync {}", tmp.display())))?;
    let sha256 = archive::hex(&incoming.hasher.clone().finalize());
    let file = std::fs::File::open(&tmp).map_err(io(format!("open {}", tmp.display())))?;
    let a =
        archive::inspect(std::io::BufReader::new(file)).map_err(|source| StoreError::Archive {
            file: tmp.display().to_string(),
            source,
        })?;
    let file_name = format!(
        "{}.snap",
        name.replace("{index}", &format!("{:012}", a.index))
    );
    let meta = SnapshotMeta {
        file: file_name.clone(),
        index: a.index,
        raft_term: a.raft_term,
        term,
        taken_at,
        sha256,
        size: incoming.size,
        source: source.to_owned(),
    };
    let dest = dir.join(&file_name);
    std::fs::rename(&tmp, &dest).map_err(io(format!("rename to {}", dest.display())))?;
    let body = serde_json::to_vec_pretty(&meta).map_err(|source| StoreError::Encode {
        what: format!("metadata of {file_name}"),
        source,
    })?;
    write_atomic(&dir.join(meta_name(&file_name)), &body)?;
    Ok(meta)
}

/// See [`Store::verify`].
pub fn verify_in(dir: &Path, meta: &SnapshotMeta, min_term: u64) -> Result<PathBuf, StoreError> {
    if meta.term < min_term {
        return Err(StoreError::OlderTerm {
            term: meta.term,
            min_term,
        });
    }
    let path = dir.join(&meta.file);
    let mut f = std::fs::File::open(&path).map_err(io(format!("open {}", path.display())))?;
    let actual = f
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    if actual != meta.size {
        return Err(StoreError::Size {
            file: meta.file.clone(),
            expected: meta.size,
            actual,
        });
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if archive::hex(&hasher.finalize()) != meta.sha256 {
        return Err(StoreError::Checksum(meta.file.clone()));
    }
    let f = std::fs::File::open(&path).map_err(io(format!("open {}", path.display())))?;
    let a = archive::inspect(std::io::BufReader::new(f)).map_err(|source| StoreError::Archive {
        file: meta.file.clone(),
        source,
    })?;
    if a.index != meta.index {
        return Err(StoreError::Index {
            file: meta.file.clone(),
            expected: meta.index,
            actual: a.index,
        });
    }
    Ok(path)
}

fn meta_name(snap_file: &str) -> String {
    format!("{}.json", snap_file.trim_end_matches(".snap"))
}

/// Writes `body` to `path` through a temp file in the same directory: write, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tag: u64 = rand::random();
    let tmp = dir.join(format!(".write-{tag:016x}.tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        f.write_all(body)
            .map_err(io(format!("write {}", tmp.display())))?;
        f.sync_all()
            .map_err(io(format!("fsync {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::archive::test_util::archive;
    use super::*;

    fn put(store: &Store, term: u64, index: u64, at_ms: i64) -> SnapshotMeta {
        let mut inc = store.begin().unwrap();
        inc.write(&archive(index, 2, format!("state {index}").as_bytes()))
            .unwrap();
        let at = DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap();
        store.commit(inc, term, "http://127.0.0.1:1", at).unwrap()
    }

    #[test]
    fn committed_snapshots_carry_their_metadata_and_pass_verification() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let m = put(&store, 4, 1045, 1_000);
        assert_eq!((m.term, m.index, m.raft_term), (4, 1045, 2));
        assert_eq!(m.sha256.len(), 64);
        assert_eq!(store.newest(), Some(m.clone()));
        let path = store.verify(&m, 4).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), m.size);
        // No temp files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn the_newest_k_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        put(&store, 1, 10, 1);
        put(&store, 1, 30, 3);
        put(&store, 1, 20, 2);
        put(&store, 2, 5, 4);
        let held: Vec<(u64, u64)> = store.list().iter().map(|m| (m.term, m.index)).collect();
        assert_eq!(held, vec![(2, 5), (1, 30)]);
        let snaps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".snap")
            })
            .count();
        assert_eq!(snaps, 2);
    }

    #[test]
    fn a_snapshot_of_an_older_term_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let m = put(&store, 3, 10, 1);
        assert!(matches!(
            store.verify(&m, 4),
            Err(StoreError::OlderTerm {
                term: 3,
                min_term: 4
            })
        ));
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let m = put(&store, 1, 10, 1);
        let path = dir.path().join(&m.file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = store.verify(&m, 1).unwrap_err();
        assert_eq!(e.kind(), "truncated", "{e}");
        // Truncated with matching metadata (say, written by hand): the archive check refuses it.
        let mut forged = m.clone();
        forged.size = (bytes.len() - 10) as u64;
        forged.sha256 = archive::hex(&Sha256::digest(&bytes[..bytes.len() - 10]));
        assert_eq!(store.verify(&forged, 1).unwrap_err().kind(), "corrupt");
    }

    #[test]
    fn a_checksum_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let m = put(&store, 1, 10, 1);
        let path = dir.path().join(&m.file);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(store.verify(&m, 1).unwrap_err().kind(), "checksum");
    }

    #[test]
    fn a_pull_that_is_not_a_snapshot_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let mut inc = store.begin().unwrap();
        inc.write(b"<html>proxy error</html>").unwrap();
        let e = store.commit(inc, 1, "x", Utc::now()).unwrap_err();
        assert_eq!(e.kind(), "corrupt");
        assert!(store.list().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_node_record_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        assert_eq!(store.node_record(), NodeRecord::default());
        let m = put(&store, 1, 10, 1);
        let r = NodeRecord {
            restored: Some(m),
            primary_term: Some(2),
            quarantined: None,
            was_primary: Some(2),
        };
        store.save_node_record(&r).unwrap();
        let again = Store::open(dir.path(), 3).unwrap();
        assert_eq!(again.node_record(), r);
        assert_eq!(again.list().len(), 1, "node.json is not a snapshot");
    }

    #[test]
    fn a_corrupt_node_record_reads_as_default_and_a_save_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        std::fs::write(dir.path().join(NODE_RECORD), b"{ truncated").unwrap();
        assert_eq!(store.node_record(), NodeRecord::default());
        let r = NodeRecord {
            restored: None,
            primary_term: Some(4),
            quarantined: None,
            was_primary: None,
        };
        store.save_node_record(&r).unwrap();
        assert_eq!(store.node_record(), r);
    }
}
