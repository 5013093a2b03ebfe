//! The start hold of a raft-replicated node: `vault-dr-launch` runs the server only when the
//! node's agent has permitted this start.
//!
//! With `--replication raft` the DR group is one raft, and a node that comes back with old raft
//! state is dangerous before anyone has looked at it: the measured hazard
//! (`../shared/reference/openbao-2.7-measured.md` §7, §9 A) is an old primary's voters that
//! elect among themselves within 4 s, force the promoted cluster out of leadership 28 ms later
//! and take writes on their own addresses. So the server's start is the agent's decision: the
//! server container runs `vault-dr-launch --control-dir D -- bao server ...`, which waits until
//! the agent writes a [`Permit`] into `D`, consumes it, and runs the server until it exits or
//! the agent asks for a stop. A permit is good for one start: a server that exits (a crash, a
//! stop for a raft recovery) waits for the next one, which the agent writes only once it knows
//! the current term and has made the node's data fit it (kept, recovered with `peers.json`, or
//! quarantined for a rejoin). An agent that cannot reach a coordinator writes none: the node
//! stays down rather than serve an unknown term.
//!
//! The control directory lives on the node's data volume (shared by the server container and
//! the agent sidecar in a pod), beside the raft data. Files, all written atomically (a
//! temporary file renamed into place):
//! - `permit.json`: the agent's [`Permit`] for the next start;
//! - `running.json`: the permit of the run in progress (the launcher renames `permit.json` to
//!   it at the start and removes it when the server has exited);
//! - `stop`: the agent asks the launcher to end the run (SIGTERM, SIGKILL after
//!   [`STOP_TIMEOUT`]); removed by the launcher when the server has exited;
//! - `ended.json`: how the latest run ended ([`RunEnded`]), which the agent reads to tell a
//!   server that cannot start (it backs off and reports why) from one that was stopped.
//!
//! The launcher starts the server with `BAO_RAFT_RETRY_JOIN_AS_NON_VOTER=true` when the permit
//! says `non_voter` (OpenBao reads it like `retry_join_as_non_voter` in the config), and
//! without it otherwise, so one config file serves a node in every role. The server stays in
//! the launcher's process group: a kill of the container (or of the lab's process group)
//! takes both.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The permit file the agent writes.
pub const PERMIT_FILE: &str = "permit.json";
/// The permit of the run in progress.
pub const RUNNING_FILE: &str = "running.json";
/// The agent's request to end the run.
pub const STOP_FILE: &str = "stop";
/// How the latest run ended.
pub const ENDED_FILE: &str = "ended.json";
/// The environment variable OpenBao reads as `retry_join_as_non_voter`.
pub const NON_VOTER_ENV: &str = "BAO_RAFT_RETRY_JOIN_AS_NON_VOTER";
/// Vault's name of it (a Vault server reads this one).
pub const NON_VOTER_ENV_VAULT: &str = "VAULT_RAFT_RETRY_JOIN_AS_NON_VOTER";
/// How long the server has to exit after SIGTERM before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the launcher looks at the control directory.
pub const POLL: Duration = Duration::from_millis(50);

/// The agent's permission for one start of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permit {
    /// The term the agent knew when it permitted the start.
    pub term: u64,
    /// Start the server as a non-voter (its `retry_join` joins the raft without a vote).
    pub non_voter: bool,
    /// Why the agent permits this start (in the launcher's log).
    pub reason: String,
}

/// How a run of the server ended, written by the launcher when it has exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnded {
    /// The permit it ran on.
    pub permit: Permit,
    /// "exited: exit status: 1", "stopped: signal: 15 (SIGTERM)", ...
    pub how: String,
    /// Whether the agent had asked for the stop.
    pub asked: bool,
    /// When the server was started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it had exited.
    pub ended_at: chrono::DateTime<chrono::Utc>,
}

impl RunEnded {
    /// How long the server ran.
    pub fn ran(&self) -> Duration {
        (self.ended_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// The control directory shared by the launcher and the agent.
#[derive(Debug, Clone)]
pub struct ControlDir {
    dir: PathBuf,
}

impl ControlDir {
    /// The control directory at `dir` (created by [`ControlDir::create`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Creates the directory if it is missing.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `permit` for the next start (replacing an unused one).
    pub fn write_permit(&self, permit: &Permit) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(permit).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(PERMIT_FILE), &body)
    }

    /// The unused permit, if any.
    pub fn pending_permit(&self) -> Option<Permit> {
        read_json(&self.dir.join(PERMIT_FILE))
    }

    /// The permit of the run in progress, if the launcher runs the server.
    pub fn running(&self) -> Option<Permit> {
        read_json(&self.dir.join(RUNNING_FILE))
    }

    /// How long ago the run in progress was permitted (the running record's age), when one is.
    pub fn running_for(&self) -> Option<std::time::Duration> {
        let modified = std::fs::metadata(self.dir.join(RUNNING_FILE))
            .ok()?
            .modified()
            .ok()?;
        Some(modified.elapsed().unwrap_or_default())
    }

    /// Asks the launcher to end the run in progress (no-op without one): SIGTERM, or with
    /// `kill` SIGKILL at once.
    pub fn request_stop(&self, kill: bool) -> io::Result<()> {
        let body: &[u8] = if kill { b"kill\n" } else { b"stop\n" };
        write_atomic(&self.dir.join(STOP_FILE), body)
    }

    /// Whether the pending stop asks for SIGKILL.
    fn stop_is_kill(&self) -> bool {
        std::fs::read(self.dir.join(STOP_FILE)).is_ok_and(|b| b.starts_with(b"kill"))
    }

    /// How the latest run ended, if one has.
    pub fn last_ended(&self) -> Option<RunEnded> {
        read_json(&self.dir.join(ENDED_FILE))
    }

    /// The launcher's side: records how a run ended.
    fn write_ended(&self, ended: &RunEnded) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(ended).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(ENDED_FILE), &body)
    }

    /// Whether a stop was asked for and not yet carried out.
    pub fn stop_pending(&self) -> bool {
        self.dir.join(STOP_FILE).exists()
    }

    /// The launcher's side: takes the pending permit (renames it to `running.json`), `None`
    /// when there is none. A stale `stop` is removed: it was meant for an earlier run.
    fn take_permit(&self) -> io::Result<Option<Permit>> {
        let permit_path = self.dir.join(PERMIT_FILE);
        let Some(permit) = read_json::<Permit>(&permit_path) else {
            return Ok(None);
        };
        std::fs::rename(&permit_path, self.dir.join(RUNNING_FILE))?;
        remove_if_there(&self.dir.join(STOP_FILE))?;
        Ok(Some(permit))
    }

    /// The launcher's side: the run has ended.
    fn run_ended(&self) -> io::Result<()> {
        remove_if_there(&self.dir.join(RUNNING_FILE))?;
        remove_if_there(&self.dir.join(STOP_FILE))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "unreadable control file ignored");
            None
        }
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `body` to `path` through a temporary file in the same directory, renamed into place
/// after an fsync: a reader sees the old file or the whole new one.
pub fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// What the launcher runs.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The control directory.
    pub control: ControlDir,
    /// The server program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl Launcher {
    /// Runs until SIGTERM or SIGINT: waits for a permit, runs the server, again. On the
    /// signal the server (if running) gets SIGTERM and the launcher exits with it.
    pub async fn run(self) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        self.control.create()?;
        // A run of a previous launcher ended with it.
        self.control.run_ended()?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tracing::info!(control = %self.control.path().display(), "waiting for the agent's permit");
        loop {
            let permit = tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                p = self.next_permit() => p?,
            };
            tracing::info!(
                term = permit.term,
                non_voter = permit.non_voter,
                reason = %permit.reason,
                "permitted: starting the server"
            );
            let started_at = chrono::Utc::now();
            let mut child = self.spawn(&permit)?;
            let ended = tokio::select! {
                _ = term.recv() => None,
                _ = int.recv() => None,
                e = self.watch(&mut child) => Some(e),
            };
            match ended {
                None => {
                    stop_child(&mut child).await;
                    self.control.run_ended()?;
                    return Ok(());
                }
                Some((how, asked)) => {
                    tracing::info!(how = %how, "server run ended; waiting for the next permit");
                    // Recorded before the run is gone: the agent that sees no run finds how
                    // it ended.
                    self.control.write_ended(&RunEnded {
                        permit,
                        how,
                        asked,
                        started_at,
                        ended_at: chrono::Utc::now(),
                    })?;
                    self.control.run_ended()?;
                }
            }
        }
    }

    async fn next_permit(&self) -> io::Result<Permit> {
        loop {
            if let Some(p) = self.control.take_permit()? {
                return Ok(p);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn spawn(&self, permit: &Permit) -> io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args).kill_on_drop(true);
        if permit.non_voter {
            cmd.env(NON_VOTER_ENV, "true")
                .env(NON_VOTER_ENV_VAULT, "true");
        } else {
            cmd.env_remove(NON_VOTER_ENV)
                .env_remove(NON_VOTER_ENV_VAULT);
        }
        cmd.spawn()
    }

    /// Waits until the server exits, or the agent asks for a stop (then stops it). How it
    /// ended, and whether the agent asked for it.
    async fn watch(&self, child: &mut tokio::process::Child) -> (String, bool) {
        loop {
            tokio::select! {
                status = child.wait() => {
                    let how = match status {
                        Ok(s) => format!("exited: {s}"),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    return (how, false);
                }
                () = tokio::time::sleep(POLL) => {
                    if self.control.stop_pending() {
                        if self.control.stop_is_kill() {
                            tracing::info!("the agent asked for a kill");
                            let _ = child.kill().await;
                            let how = match child.wait().await {
                                Ok(s) => format!("killed: {s}"),
                                Err(e) => format!("wait failed: {e}"),
                            };
                            return (how, true);
                        }
                        tracing::info!("the agent asked for a stop");
                        return (stop_child(child).await, true);
                    }
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; how it ended.
async fn stop_child(child: &mut tokio::process::Child) -> String {
    if let Some(pid) = child.id() {
        crate::system::signal(pid, sysinfo::Signal::Term);
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(s)) => format!("stopped: {s}"),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            "SIGKILLed after the stop timeout".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(non_voter: bool) -> Permit {
        Permit {
            term: 3,
            non_voter,
            reason: "test".into(),
        }
    }

    #[test]
    fn a_permit_is_taken_once_and_a_stale_stop_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = ControlDir::new(dir.path());
        assert_eq!(c.take_permit().unwrap(), None);
        c.request_stop(false).unwrap();
        c.write_permit(&permit(true)).unwrap();
        assert_eq!(c.pending_permit(), Some(permit(true)));
        assert_eq!(c.take_permit().unwrap(), Some(permit(true)));
        assert!(!c.stop_pending(), "a stop from before the start is moot");
        assert_eq!(c.running(), Some(permit(true)));
        assert_eq!(c.take_permit().unwrap(), None, "one start per permit");
        c.run_ended().unwrap();
        assert_eq!(c.running(), None);
    }

    #[test]
    fn a_garbled_permit_is_no_permit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PERMIT_FILE), b"{not json").unwrap();
        assert_eq!(ControlDir::new(dir.path()).take_permit().unwrap(), None);
    }

    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn the_server_starts_only_with_a_permit_gets_the_voter_env_and_stops_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let control = ControlDir::new(dir.path().join("control"));
        let out = dir.path().join("out");
        let script = format!(
            "echo \"start ${{{NON_VOTER_ENV}:-voter}}\" >> {}; exec sleep 30",
            out.display()
        );
        let launcher = Launcher {
            control: control.clone(),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        };
        let task = tokio::spawn(launcher.run());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!out.exists(), "no start without a permit");

        control.write_permit(&permit(true)).unwrap();
        wait_until("the first run", || control.running().is_some()).await;
        wait_until("the output", || out.exists()).await;
        control.request_stop(false).unwrap();
        wait_until("the stop", || control.running().is_none()).await;
        assert!(!control.stop_pending());
        let ended = control
            .last_ended()
            .expect("the end of the run is recorded");
        assert!(ended.asked && ended.how.starts_with("stopped"), "{ended:?}");
        assert_eq!(ended.permit, permit(true));

        control.write_permit(&permit(false)).unwrap();
        wait_until("the second start", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() == 2)
        })
        .await;
        let runs = std::fs::read_to_string(&out).unwrap();
        assert_eq!(runs, "start true\nstart voter\n");
        control.request_stop(true).unwrap();
        wait_until("the kill", || control.running().is_none()).await;
        let ended = control.last_ended().unwrap();
        assert!(ended.asked && ended.how.starts_with("killed"), "{ended:?}");
        task.abort();
    }
}
