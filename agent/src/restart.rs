//! Restarting a sealed server so that its seal unseals it again.
//!
//! A node of an old primary that vault-dr's fence sealed stays sealed: OpenBao's auto-unseal
//! seals (static, transit, KMS, PKCS#11) unseal a node only when its server starts, and
//! `sys/unseal` refuses them. The snapshot backend asks for a restart once such a node has been
//! sealed for [`plan::SEALED_GRACE`](crate::replication::snapshot::plan::SEALED_GRACE) while its
//! cluster is a secondary of a later term ([`Action::RestartSealed`]); the [`Restarter`] does
//! it the way its [`RestartMode`] says:
//!
//! - `signal`: SIGTERM to the server process (found as the host figures find it: pid file,
//!   listener of the node's address, the only process with the name), SIGKILL if it is still there after [`STOP_TIMEOUT`]. Whatever supervises the server
//!   starts it again: the kubelet (the agent as a sidecar with `shareProcessNamespace`), systemd
//!   with `Restart=always`, the lab's supervisor.
//! - `off` (the default of the binary): nothing; the agent reports `sealed_restart_off` and
//!   `status` says what to run.
//!
//! A Shamir-sealed node is never restarted (a restart leaves it sealed): `sealed_shamir`. Two
//! restarts are at least [`MIN_BACKOFF`] apart, doubling up to [`MAX_BACKOFF`] while the node is
//! found sealed again.
//!
//! [`Action::RestartSealed`]: crate::replication::snapshot::plan::Action::RestartSealed

use std::path::PathBuf;
use std::time::{Duration, Instant};
use url::Url;

use crate::system;

/// How long a server has to exit after SIGTERM before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The least time between two restarts.
pub const MIN_BACKOFF: Duration = Duration::from_secs(30);
/// The most time between two restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How often the server's exit is checked after the signal.
const POLL: Duration = Duration::from_millis(100);

/// What the agent may do to restart its server (`--vault-restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartMode {
    /// Never: report and let the operator restart it.
    #[default]
    Off,
    /// SIGTERM the server; its supervisor starts it again.
    Signal,
}

impl RestartMode {
    /// Parses `off` or `signal`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "off" => Some(Self::Off),
            "signal" => Some(Self::Signal),
            _ => None,
        }
    }
}

/// Why the server was not restarted, or how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM sent to `pid`; it exited (after a SIGKILL when `killed`).
    Restarted {
        /// The server's pid.
        pid: u32,
        /// Whether SIGTERM was not enough.
        killed: bool,
    },
    /// `--vault-restart off`.
    Off,
    /// The node's seal is Shamir: a restart would leave it sealed.
    Shamir,
    /// The last restart is too recent.
    Backoff {
        /// Time until the next one is allowed.
        next_in: Duration,
    },
    /// No server process was found to signal.
    NoProcess,
    /// The process is still there after SIGKILL.
    StillRunning {
        /// Its pid.
        pid: u32,
    },
}

impl Outcome {
    /// The bounded kind the agent reports as its replication `last_error`; `None` after a
    /// restart. The coordinator's `status` turns it into what to run.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Self::Restarted { .. } | Self::Backoff { .. } => None,
            Self::Off => Some("sealed_restart_off"),
            Self::Shamir => Some("sealed_shamir"),
            Self::NoProcess | Self::StillRunning { .. } => Some("sealed_restart_failed"),
        }
    }
}

/// Restarts the local server on request, at most once per backoff.
#[derive(Debug)]
pub struct Restarter {
    mode: RestartMode,
    pid_file: Option<PathBuf>,
    vault_addr: Option<Url>,
    names: Vec<String>,
    last: Option<Instant>,
    backoff: Duration,
}

impl Restarter {
    /// A restarter finding the server by `pid_file`, else as the only one of `names` running
    /// (see [`Restarter::with_vault_addr`]).
    pub fn new(mode: RestartMode, pid_file: Option<PathBuf>, names: Vec<String>) -> Self {
        Self {
            mode,
            pid_file,
            vault_addr: None,
            names,
            last: None,
            backoff: MIN_BACKOFF,
        }
    }

    /// Without pid file, the server is the process listening on `addr` (the node's own, not
    /// another server on the same host).
    pub fn with_vault_addr(mut self, addr: Url) -> Self {
        self.vault_addr = Some(addr);
        self
    }

    /// The mode.
    pub fn mode(&self) -> RestartMode {
        self.mode
    }

    /// The node is unsealed again: the next restart may come after the least backoff.
    pub fn unsealed(&mut self) {
        self.backoff = MIN_BACKOFF;
    }

    /// The pid of the server to restart now, or why not: the mode, the seal (`shamir`:
    /// whether the node reported a Shamir seal) and the backoff decide. A pid returned counts
    /// as a restart for the backoff; [`stop`] it.
    pub fn due(&mut self, shamir: bool) -> Result<u32, Outcome> {
        if self.mode == RestartMode::Off {
            return Err(Outcome::Off);
        }
        if shamir {
            return Err(Outcome::Shamir);
        }
        if let Some(last) = self.last {
            let since = last.elapsed();
            if since < self.backoff {
                return Err(Outcome::Backoff {
                    next_in: self.backoff - since,
                });
            }
            // Found sealed again after a restart: wait longer before the next.
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        let pid = system::locate_pid(
            self.pid_file.as_deref(),
            self.vault_addr.as_ref(),
            &self.names,
        )
        .map_err(|why| {
            tracing::warn!(reason = %why, "no server process to restart");
            Outcome::NoProcess
        })?;
        self.last = Some(Instant::now());
        Ok(pid)
    }
}

/// SIGTERMs `pid` and waits for it to exit; SIGKILLs it after [`STOP_TIMEOUT`].
pub async fn stop(pid: u32) -> Outcome {
    if !system::signal(pid, sysinfo::Signal::Term) {
        return Outcome::NoProcess;
    }
    if exited(pid, STOP_TIMEOUT).await {
        return Outcome::Restarted { pid, killed: false };
    }
    system::signal(pid, sysinfo::Signal::Kill);
    if exited(pid, Duration::from_secs(5)).await {
        Outcome::Restarted { pid, killed: true }
    } else {
        Outcome::StillRunning { pid }
    }
}

async fn exited(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !system::pid_alive(pid) {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    !system::pid_alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_nothing_else_does() {
        assert_eq!(RestartMode::parse("off"), Some(RestartMode::Off));
        assert_eq!(RestartMode::parse(" signal "), Some(RestartMode::Signal));
        assert_eq!(RestartMode::parse("kill"), None);
        assert_eq!(RestartMode::parse(""), None);
    }

    #[test]
    fn off_and_shamir_never_signal_and_say_why() {
        let mut off = Restarter::new(RestartMode::Off, None, vec!["no-such-process".into()]);
        assert_eq!(off.due(false), Err(Outcome::Off));
        assert_eq!(Outcome::Off.kind(), Some("sealed_restart_off"));
        let mut signal = Restarter::new(RestartMode::Signal, None, vec!["no-such-process".into()]);
        assert_eq!(signal.due(true), Err(Outcome::Shamir));
        assert_eq!(Outcome::Shamir.kind(), Some("sealed_shamir"));
        assert_eq!(signal.due(false), Err(Outcome::NoProcess));
    }

    #[tokio::test]
    async fn a_signalled_process_is_stopped_and_the_next_restart_waits_for_the_backoff() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep starts");
        let pid = child.id().expect("a pid");
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        let mut r = Restarter::new(RestartMode::Signal, Some(pid_file), vec![]);
        // The child is reaped by tokio, so it leaves no zombie behind.
        let waiter = tokio::spawn(async move { child.wait().await });
        assert_eq!(r.due(false), Ok(pid));
        assert_eq!(stop(pid).await, Outcome::Restarted { pid, killed: false });
        let status = waiter.await.unwrap().unwrap();
        assert!(!status.success(), "ended by the signal: {status:?}");
        match r.due(false) {
            Err(Outcome::Backoff { next_in }) => assert!(next_in <= MIN_BACKOFF, "{next_in:?}"),
            other => panic!("a second restart at once must wait: {other:?}"),
        }
    }
}
