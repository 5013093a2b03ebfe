//! [`MongoServer`]: the real SecantusDB MongoDB wire server (`secantusd-py`, installed into
//! `.tools/bin` by `scripts/setup.sh`) on a free loopback port with in-memory storage, killed
//! when dropped (also on panic, and by the lab watchdog if the test process dies).
//!
//! [`MongoServer::kill`] and [`MongoServer::restart`] (same port) make store outages for tests.
//! In-memory storage starts empty after a restart.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use vault_dr_lab::LabError;
use vault_dr_lab::process::ChildGuard;
use vault_dr_lab::tools;
use vault_dr_lab::wait::try_wait_for;

/// The executable's name (`VAULT_DR_SECANTUSD_PY` overrides the search).
pub const TOOL: &str = "secantusd-py";

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running SecantusDB on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct MongoServer {
    program: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<ChildGuard>,
    starts: u32,
}

impl MongoServer {
    /// Starts SecantusDB on a free port with `--storage-path :memory:` and waits until it
    /// accepts connections. A missing binary is an error that says to run `scripts/setup.sh`.
    pub async fn start() -> Result<Self, LabError> {
        let program = tools::find(TOOL)?;
        let dir = tempfile::Builder::new()
            .prefix("vault-dr-mongo-")
            .tempdir()
            .map_err(|e| LabError::io("create temp dir for secantusd", e))?;
        let port = vault_dr_lab::ports::reserve_loopback()?;
        let mut server = Self {
            program,
            port,
            dir,
            child: None,
            starts: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    /// The connection string (`mongodb://127.0.0.1:<port>/`).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (all starts append to it).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("secantusd.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// SIGKILLs the server (an outage). Harmless if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it accepts connections. Storage is in memory: it starts empty.
    pub async fn restart(&mut self) -> Result<(), LabError> {
        self.kill();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), LabError> {
        self.starts += 1;
        let name = format!("secantusd (start {})", self.starts);
        let args: Vec<OsString> = [
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--storage-path",
            ":memory:",
            "--log-level",
            "WARNING",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let log = self.log();
        let mut child = ChildGuard::spawn(&name, &self.program, &args, &log)?;
        let addr = ("127.0.0.1", self.port);
        let what = format!("connections on 127.0.0.1:{}", self.port);
        // Some(true): it accepts; Some(false): it exited, which ends the wait at once.
        let ready = try_wait_for(&what, READY_TIMEOUT, || {
            let running = child.is_running();
            async move {
                if !running {
                    return Some(false);
                }
                tokio::net::TcpStream::connect(addr)
                    .await
                    .is_ok()
                    .then_some(true)
            }
        })
        .await;
        match ready {
            Ok(true) => {}
            Ok(false) => {
                return Err(LabError::Exited {
                    node: name,
                    tail: tail(&log),
                    log,
                });
            }
            Err(_) => {
                child.kill();
                return Err(LabError::Timeout {
                    node: name,
                    what,
                    after: READY_TIMEOUT,
                    tail: tail(&log),
                    log,
                });
            }
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file (empty if unreadable).
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
