//! The `local` coordination backend: coordinator processes on one machine share one state
//! (the lease, with holder and expiry, and the topology, with a generation number for
//! compare-and-swap) kept as immutable generation files next to the configured path:
//! `<path>.00000000000000000042` holds generation 42.
//!
//! No lock is ever held between operations or across a pause: a writer reads the newest
//! generation N, computes the new state, writes it to a private temporary file, and publishes
//! it with `link(tmp, <path>.N+1)`, which fails if any other writer published N+1 first; then
//! it reads again and re-decides. So a replica frozen in the middle of an update (SIGSTOP, a
//! paused VM) blocks nobody, and when it resumes its stale update is refused. (An exclusive
//! `flock` held by a frozen process would stall every other replica, the lease takeover
//! included, for as long as it stays frozen.) Old generations beyond the newest
//! [`KEEP_GENERATIONS`] are deleted by the writers. A plain file at `<path>` itself (the
//! earlier single-file layout) is read as generation 0.

use super::{Coordination, CoordinationError, LeaseInfo, Result};
use crate::model::topology::{Topology, Versioned};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Generations kept on disk (older ones are deleted by the writers).
pub const KEEP_GENERATIONS: u64 = 16;

/// How many times one update re-reads and re-decides after losing a publish race.
const MAX_ATTEMPTS: usize = 64;

/// Digits of the generation suffix (zero-padded, so names sort by generation).
const GENERATION_DIGITS: usize = 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    lease: Option<Lease>,
    #[serde(default)]
    transitions: u64,
    topology: Option<Stored>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Which process of `holder` holds it: two processes given the same id (two replicas on
    /// one host without `VAULT_DR_ID`, whose default is the host name) must not both lead.
    /// `None` in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    acquired_at: DateTime<Utc>,
    renewed_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    generation: u64,
    value: Topology,
}

/// Shared-file coordination for one machine.
#[derive(Debug)]
pub struct LocalCoordination {
    path: PathBuf,
    id: String,
    lease_duration: Duration,
    /// Local monotonic deadline until which we consider ourselves leader.
    leader_until: Mutex<Option<Instant>>,
    /// This process's instance ([`Lease::instance`]).
    instance: String,
    /// Whether the lease held by another process under our id was last logged.
    same_id_said: std::sync::atomic::AtomicBool,
}

impl LocalCoordination {
    /// Uses `path` (its generation files are created on first write) as the shared state; `id`
    /// is this replica's name.
    pub fn new(path: impl Into<PathBuf>, id: impl Into<String>, lease_duration: Duration) -> Self {
        Self {
            path: path.into(),
            id: id.into(),
            lease_duration,
            leader_until: Mutex::new(None),
            instance: format!(
                "{}-{}",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ),
            same_id_said: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn with_state<T: Send + 'static>(
        &self,
        f: impl Fn(&mut State) -> Result<(T, bool)> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'static {
        let path = self.path.clone();
        async move {
            tokio::task::spawn_blocking(move || update(&path, f))
                .await
                .map_err(|e| CoordinationError::Unavailable(format!("task failed: {e}")))?
        }
    }
}

fn unavailable(what: &str, path: &Path, e: std::io::Error) -> CoordinationError {
    CoordinationError::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// `<path>.<generation>`.
fn generation_path(path: &Path, generation: u64) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{generation:0GENERATION_DIGITS$}"));
    PathBuf::from(p)
}

/// The generations present next to `path`, unsorted.
fn generations(path: &Path) -> Result<Vec<u64>> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(CoordinationError::Unavailable(format!(
            "{} names no file",
            path.display()
        )));
    };
    let mut prefix: OsString = name.to_owned();
    prefix.push(".");
    let prefix = prefix.to_string_lossy().into_owned();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unavailable("cannot list", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if let Some(digits) = file.strip_prefix(&prefix)
            && digits.len() == GENERATION_DIGITS
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(g) = digits.parse()
        {
            out.push(g);
        }
    }
    Ok(out)
}

fn read_state(file: &Path) -> std::io::Result<Result<State>> {
    let bytes = std::fs::read(file)?;
    if bytes.is_empty() {
        return Ok(Ok(State::default()));
    }
    Ok(serde_json::from_slice(&bytes)
        .map_err(|e| CoordinationError::Corrupt(format!("{}: {e}", file.display()))))
}

/// The newest generation and its state (generation 0: the legacy single file, or nothing yet).
fn latest(path: &Path) -> Result<(u64, State)> {
    for _ in 0..MAX_ATTEMPTS {
        let Some(newest) = generations(path)?.into_iter().max() else {
            return match read_state(path) {
                Ok(state) => Ok((0, state?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, State::default())),
                Err(e) => Err(unavailable("cannot read", path, e)),
            };
        };
        let file = generation_path(path, newest);
        match read_state(&file) {
            Ok(state) => return Ok((newest, state?)),
            // Deleted as an old generation between the listing and the read: list again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unavailable("cannot read", &file, e)),
        }
    }
    Err(CoordinationError::Unavailable(format!(
        "{}: the newest generation kept vanishing",
        path.display()
    )))
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `state` to a private temporary file next to `path` and returns its name.
fn write_tmp(path: &Path, state: &State) -> Result<PathBuf> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let bytes =
        serde_json::to_vec_pretty(state).map_err(|e| CoordinationError::Corrupt(e.to_string()))?;
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(unavailable("cannot write", &tmp, e));
    }
    Ok(tmp)
}

/// Deletes generations older than the newest [`KEEP_GENERATIONS`] (best effort).
fn prune(path: &Path, newest: u64) {
    let Ok(all) = generations(path) else {
        return;
    };
    for g in all {
        if g + KEEP_GENERATIONS <= newest {
            let _ = std::fs::remove_file(generation_path(path, g));
        }
    }
}

/// Runs `f` on the newest state; when it says so, publishes the result as the next
/// generation, re-reading and re-running `f` whenever another writer published first.
fn update<T>(path: &Path, f: impl Fn(&mut State) -> Result<(T, bool)>) -> Result<T> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("cannot create", dir, e))?;
    }
    for _ in 0..MAX_ATTEMPTS {
        let (generation, mut state) = latest(path)?;
        let (out, dirty) = f(&mut state)?;
        if !dirty {
            return Ok(out);
        }
        let tmp = write_tmp(path, &state)?;
        let next = generation_path(path, generation + 1);
        // `link` publishes the complete file atomically and fails if the name exists.
        let published = std::fs::hard_link(&tmp, &next);
        let _ = std::fs::remove_file(&tmp);
        match published {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                    && let Ok(d) = File::open(dir)
                {
                    let _ = d.sync_all();
                }
                prune(path, generation + 1);
                return Ok(out);
            }
            // Another writer published this generation first: decide again on its state.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(unavailable("cannot publish", &next, e)),
        }
    }
    Err(CoordinationError::Unavailable(format!(
        "{}: lost {MAX_ATTEMPTS} publish races in a row",
        path.display()
    )))
}

/// The lease decision of `try_acquire_or_renew` on `s`: (whether `id` holds it, dirty).
/// What one attempt to acquire or renew the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// We hold it (acquired or renewed).
    Held,
    /// Another replica holds it.
    Taken,
    /// Another process holds it under our id (instance named).
    SameId(String),
}

fn acquire_or_renew(
    s: &mut State,
    id: &str,
    instance: &str,
    duration: Duration,
) -> (Attempt, bool) {
    let now = Utc::now();
    // A duration chrono cannot hold (centuries) falls back to zero: the lease then lapses at
    // once, which can only cost leadership, never make two leaders.
    let expires_at = now + chrono::Duration::from_std(duration).unwrap_or_default();
    match &mut s.lease {
        Some(l) if l.holder == id && l.instance.as_deref().is_none_or(|i| i == instance) => {
            l.instance = Some(instance.to_owned());
            l.renewed_at = now;
            l.expires_at = expires_at;
            (Attempt::Held, true)
        }
        Some(l) if l.expires_at > now && l.holder == id => (
            Attempt::SameId(l.instance.clone().unwrap_or_default()),
            false,
        ),
        Some(l) if l.expires_at > now => (Attempt::Taken, false),
        _ => {
            s.transitions += 1;
            s.lease = Some(Lease {
                holder: id.to_owned(),
                instance: Some(instance.to_owned()),
                acquired_at: now,
                renewed_at: now,
                expires_at,
            });
            (Attempt::Held, true)
        }
    }
}

impl LocalCoordination {
    /// Makes this replica believe it leads for `d` without touching the shared lease: the
    /// split-brain situation (a paused process resumed after its lease expired) that the
    /// topology CAS must make harmless.
    #[cfg(any(test, feature = "test-util"))]
    pub fn force_leader_for_tests(&self, d: Duration) {
        *self.leader_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + d);
    }
}

#[async_trait]
impl Coordination for LocalCoordination {
    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let started = Instant::now();
        let (id, instance, duration) =
            (self.id.clone(), self.instance.clone(), self.lease_duration);
        let attempt = self
            .with_state(move |s| Ok(acquire_or_renew(s, &id, &instance, duration)))
            .await?;
        use std::sync::atomic::Ordering::Relaxed;
        if let Attempt::SameId(other) = &attempt {
            if !self.same_id_said.swap(true, Relaxed) {
                tracing::error!(
                    id = %self.id,
                    "another coordinator process (instance {other}) holds the lease under this replica's id {}: give every replica its own id (VAULT_DR_ID or `id` in the file; the default is the host name); this one does not lead meanwhile",
                    self.id
                );
            }
        } else {
            self.same_id_said.store(false, Relaxed);
        }
        let won = attempt == Attempt::Held;
        let mut until = self.leader_until.lock().unwrap_or_else(|p| p.into_inner());
        // Count the lease from before the write started, less a margin for clock reads, so we
        // stop acting before any other replica can see the lease as expired.
        *until = won.then(|| started + self.lease_duration.mul_f64(0.8));
        Ok(won)
    }

    fn is_leader(&self) -> bool {
        let until = self.leader_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|u| Instant::now() < u)
    }

    async fn release(&self) -> Result<()> {
        *self.leader_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let id = self.id.clone();
        self.with_state(move |s| {
            if s.lease.as_ref().is_some_and(|l| l.holder == id) {
                s.lease = None;
                Ok(((), true))
            } else {
                Ok(((), false))
            }
        })
        .await
    }

    async fn lease(&self) -> Result<LeaseInfo> {
        self.with_state(|s| {
            let now = Utc::now();
            let live = s.lease.as_ref().filter(|l| l.expires_at > now);
            Ok((
                LeaseInfo {
                    holder: live.map(|l| l.holder.clone()),
                    expires_at: live.map(|l| l.expires_at),
                    transitions: s.transitions,
                },
                false,
            ))
        })
        .await
    }

    async fn read_topology(&self) -> Result<Option<Versioned<Topology>>> {
        self.with_state(|s| {
            Ok((
                s.topology.as_ref().map(|t| Versioned {
                    value: t.value.clone(),
                    version: t.generation.to_string(),
                }),
                false,
            ))
        })
        .await
    }

    async fn write_topology(
        &self,
        topology: &Topology,
        expected: Option<&str>,
    ) -> Result<Versioned<Topology>> {
        let (value, expected) = (topology.clone(), expected.map(str::to_owned));
        self.with_state(move |s| {
            let current = s.topology.as_ref().map(|t| t.generation.to_string());
            if current != expected {
                return Err(CoordinationError::Conflict {
                    expected: expected.clone(),
                });
            }
            let generation = s.topology.as_ref().map_or(1, |t| t.generation + 1);
            s.topology = Some(Stored {
                generation,
                value: value.clone(),
            });
            Ok((
                Versioned {
                    value: value.clone(),
                    version: generation.to_string(),
                },
                true,
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, lease: Duration) -> (LocalCoordination, LocalCoordination) {
        let path = dir.join("coord.json");
        (
            LocalCoordination::new(&path, "a", lease),
            LocalCoordination::new(&path, "b", lease),
        )
    }

    #[tokio::test]
    async fn only_one_replica_holds_the_lease_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        // A lease long enough that no stall of a loaded machine between two lines outlasts it
        // (300 ms did once, with three test threads on two cores).
        let (a, b) = pair(dir.path(), Duration::from_secs(2));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(a.is_leader());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(!b.is_leader());
        assert_eq!(b.lease().await.unwrap().holder.as_deref(), Some("a"));
        tokio::time::sleep(Duration::from_millis(2050)).await;
        assert!(
            !a.is_leader(),
            "a must stop acting before its lease expires"
        );
        assert!(b.try_acquire_or_renew().await.unwrap());
        let lease = b.lease().await.unwrap();
        assert_eq!(lease.holder.as_deref(), Some("b"));
        assert_eq!(lease.transitions, 2);
    }

    #[tokio::test]
    async fn two_processes_given_the_same_id_never_both_lead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.json");
        let lease = Duration::from_secs(2);
        // Two replicas on one host without VAULT_DR_ID: both default to the host name.
        let a = LocalCoordination::new(&path, "host", lease);
        let b = LocalCoordination::new(&path, "host", lease);
        assert_ne!(a.instance, b.instance);
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "b does not renew a's lease"
        );
        assert!(!b.is_leader());
        assert!(
            a.try_acquire_or_renew().await.unwrap(),
            "a goes on renewing"
        );
        // a stops (killed): b takes over once a's lease expired, as from any other replica.
        tokio::time::sleep(Duration::from_millis(2050)).await;
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert!(
            !a.try_acquire_or_renew().await.unwrap(),
            "and a no longer renews b's"
        );
        // A file from before instances existed is renewed by its holder's id.
        let mut state = State {
            lease: Some(Lease {
                holder: "old".into(),
                instance: None,
                acquired_at: Utc::now(),
                renewed_at: Utc::now(),
                expires_at: Utc::now() + chrono::Duration::seconds(5),
            }),
            ..State::default()
        };
        assert_eq!(
            acquire_or_renew(&mut state, "old", "new-1", lease).0,
            Attempt::Held
        );
    }

    #[tokio::test]
    async fn release_hands_the_lease_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = pair(dir.path(), Duration::from_secs(30));
        assert!(a.try_acquire_or_renew().await.unwrap());
        a.release().await.unwrap();
        assert!(!a.is_leader());
        assert!(b.try_acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn a_stale_topology_write_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = pair(dir.path(), Duration::from_secs(5));
        let first = a
            .write_topology(&Topology::initial("dc1"), None)
            .await
            .unwrap();
        assert!(matches!(
            b.write_topology(&Topology::initial("dc1"), None).await,
            Err(CoordinationError::Conflict { .. })
        ));
        let mut next = first.value.clone();
        next.term = 2;
        let second = a.write_topology(&next, Some(&first.version)).await.unwrap();
        // b still holds the first version: its write must fail and change nothing.
        let mut rival = first.value.clone();
        rival.term = 2;
        rival.primary = "dc3".into();
        assert!(matches!(
            b.write_topology(&rival, Some(&first.version)).await,
            Err(CoordinationError::Conflict { .. })
        ));
        let now = b.read_topology().await.unwrap().unwrap();
        assert_eq!(now, second);
        assert_eq!(now.value.primary, "dc1");
    }

    #[test]
    fn a_replica_paused_between_read_and_publish_blocks_nobody_and_then_decides_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.json");
        let lease = Duration::from_secs(5);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        // a reads a free lease; while it is "frozen" before publishing, b takes the lease
        // (nothing a holds can stop b). a's publish then loses, and a decides again on b's
        // state: the lease is b's and live, so a does not take it.
        let a_won = update(&path, |s| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let b_won =
                    update(&path, |s2| Ok(acquire_or_renew(s2, "b", "b-1", lease))).unwrap();
                assert_eq!(b_won, Attempt::Held);
            }
            Ok(acquire_or_renew(s, "a", "a-1", lease))
        })
        .unwrap();
        assert_eq!(a_won, Attempt::Taken);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a decided again once");
        let (_, state) = latest(&path).unwrap();
        assert_eq!(state.lease.unwrap().holder, "b");
        assert_eq!(state.transitions, 1);
    }

    #[tokio::test]
    async fn old_generations_are_pruned_and_a_legacy_single_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.json");
        let legacy = State {
            lease: None,
            transitions: 4,
            topology: Some(Stored {
                generation: 7,
                value: Topology::initial("dc2"),
            }),
        };
        std::fs::write(&path, serde_json::to_vec(&legacy).unwrap()).unwrap();
        let a = LocalCoordination::new(&path, "a", Duration::from_secs(5));
        let t = a.read_topology().await.unwrap().unwrap();
        assert_eq!((t.value.primary.as_str(), t.version.as_str()), ("dc2", "7"));
        for _ in 0..40 {
            assert!(a.try_acquire_or_renew().await.unwrap());
        }
        let gens = generations(&path).unwrap();
        assert_eq!(gens.iter().max(), Some(&40));
        assert!(
            gens.len() as u64 <= KEEP_GENERATIONS,
            "{} generations kept",
            gens.len()
        );
        let lease = a.lease().await.unwrap();
        assert_eq!((lease.holder.as_deref(), lease.transitions), (Some("a"), 5));
        assert_eq!(a.read_topology().await.unwrap().unwrap().version, "7");
    }

    #[tokio::test]
    async fn concurrent_cas_writers_raise_the_term_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.json");
        let base = LocalCoordination::new(&path, "x", Duration::from_secs(5))
            .write_topology(&Topology::initial("dc1"), None)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let c = LocalCoordination::new(&path, format!("r{i}"), Duration::from_secs(5));
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = base.value.clone();
                t.term += 1;
                c.write_topology(&t, Some(&base.version)).await.is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
    }
}
