//! The `local` coordination backend: coordinator processes on one machine share one JSON file
//! holding the lease (holder and expiry) and the topology (with a generation number for
//! compare-and-swap). Every read-modify-write holds an exclusive `flock` on a side file.

use super::{Coordination, CoordinationError, LeaseInfo, Result};
use crate::topology::{Topology, Versioned};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    lock_path: PathBuf,
    id: String,
    lease_duration: Duration,
    /// Local monotonic deadline until which we consider ourselves leader.
    leader_until: Mutex<Option<Instant>>,
}

impl LocalCoordination {
    /// Uses `path` (created on first write) as the shared file; `id` is this replica's name.
    pub fn new(path: impl Into<PathBuf>, id: impl Into<String>, lease_duration: Duration) -> Self {
        let path = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Self {
            path,
            lock_path: PathBuf::from(lock),
            id: id.into(),
            lease_duration,
            leader_until: Mutex::new(None),
        }
    }

    fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(T, bool)> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> + Send + 'static {
        let (path, lock_path) = (self.path.clone(), self.lock_path.clone());
        async move {
            tokio::task::spawn_blocking(move || locked_update(&path, &lock_path, f))
                .await
                .map_err(|e| CoordinationError::Unavailable(format!("task failed: {e}")))?
        }
    }
}

fn unavailable(what: &str, path: &Path, e: std::io::Error) -> CoordinationError {
    CoordinationError::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// Runs `f` on the state under an exclusive lock; writes it back atomically when `f` says so.
fn locked_update<T>(
    path: &Path,
    lock_path: &Path,
    f: impl FnOnce(&mut State) -> Result<(T, bool)>,
) -> Result<T> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("cannot create", dir, e))?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|e| unavailable("cannot open", lock_path, e))?;
    lock.lock()
        .map_err(|e| unavailable("cannot lock", lock_path, e))?;
    let mut state = match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => State::default(),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| CoordinationError::Corrupt(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(unavailable("cannot read", path, e)),
    };
    let (out, dirty) = f(&mut state)?;
    if dirty {
        let mut tmp = path.to_path_buf().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| CoordinationError::Corrupt(e.to_string()))?;
        let mut file = File::create(&tmp).map_err(|e| unavailable("cannot create", &tmp, e))?;
        file.write_all(&bytes)
            .map_err(|e| unavailable("cannot write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| unavailable("cannot sync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| unavailable("cannot replace", path, e))?;
    }
    drop(lock);
    Ok(out)
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
        let (id, duration) = (self.id.clone(), self.lease_duration);
        let won = self
            .with_state(move |s| {
                let now = Utc::now();
                let expires_at = now + chrono::Duration::from_std(duration).unwrap_or_default();
                match &mut s.lease {
                    Some(l) if l.holder == id => {
                        l.renewed_at = now;
                        l.expires_at = expires_at;
                        Ok((true, true))
                    }
                    Some(l) if l.expires_at > now => Ok((false, false)),
                    _ => {
                        s.transitions += 1;
                        s.lease = Some(Lease {
                            holder: id,
                            acquired_at: now,
                            renewed_at: now,
                            expires_at,
                        });
                        Ok((true, true))
                    }
                }
            })
            .await?;
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
                return Err(CoordinationError::Conflict { expected });
            }
            let generation = s.topology.as_ref().map_or(1, |t| t.generation + 1);
            s.topology = Some(Stored {
                generation,
                value: value.clone(),
            });
            Ok((
                Versioned {
                    value,
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
        let (a, b) = pair(dir.path(), Duration::from_millis(300));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(a.is_leader());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(!b.is_leader());
        assert_eq!(b.lease().await.unwrap().holder.as_deref(), Some("a"));
        tokio::time::sleep(Duration::from_millis(350)).await;
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
