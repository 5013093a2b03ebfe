//! [`ChildGuard`]: one lab server process that cannot outlive its owner.
//!
//! The server is started by a tiny `sh` watchdog in a process group of its own:
//! - the watchdog forks the server (stdout and stderr appended to a log file), prints the
//!   server's pid, and `wait`s for it, so the server is reaped as soon as it dies;
//! - a watcher sub-shell polls the owning process (this process) once a second and SIGKILLs the
//!   server when the owner is gone, so even a test runner that is itself SIGKILLed leaves no
//!   server behind;
//! - dropping the guard SIGKILLs the server, reaps the watchdog, and SIGKILLs the whole group.
//!
//! Signals go through the `kill` utility (the crate forbids `unsafe`). [`ChildGuard::pid`] is
//! the server's own pid, so `stop`/`cont`/`kill` act on the server, not on the shell.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::LabError;

/// The watchdog: `$1` the program, `$2` the log file, `$3` the owner's pid, then the arguments.
const WATCHDOG: &str = r#"prog="$1"; log="$2"; owner="$3"; shift 3
"$prog" "$@" >>"$log" 2>&1 </dev/null &
c=$!
echo "$c"
exec >/dev/null
( while kill -0 "$owner" 2>/dev/null && kill -0 "$c" 2>/dev/null; do sleep 1; done
  kill -9 "$c" 2>/dev/null ) &
w=$!
wait "$c"
rc=$?
kill "$w" 2>/dev/null
wait "$w" 2>/dev/null
exit "$rc"
"#;

/// The supervising watchdog (same arguments): like [`WATCHDOG`], but it starts the server
/// again 0.2 s after each exit, as the kubelet or systemd `Restart=always` would. Only the
/// first pid is printed (the server writes its own pid file); the watcher kills the whole
/// group when the owner is gone.
const SUPERVISOR: &str = r#"prog="$1"; log="$2"; owner="$3"; shift 3
( while kill -0 "$owner" 2>/dev/null; do sleep 1; done; kill -9 0 ) &
"$prog" "$@" >>"$log" 2>&1 </dev/null &
echo "$!"
exec >/dev/null
while :; do
  wait "$!"
  sleep 0.2
  "$prog" "$@" >>"$log" 2>&1 </dev/null &
done
"#;

/// A signal the lab sends to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: die now.
    Kill,
    /// SIGSTOP: freeze (a hung server: listener open, no answers).
    Stop,
    /// SIGCONT: resume after [`Signal::Stop`].
    Cont,
    /// SIGHUP: reload configuration.
    Hup,
    /// SIGTERM: shut down cleanly.
    Term,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Kill => "-KILL",
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
            Signal::Hup => "-HUP",
            Signal::Term => "-TERM",
        }
    }
}

/// Sends `signal` to process `pid` (a negative target means a process group). Errors (no such
/// process) are ignored: the callers only want the process gone or signalled if it exists.
fn send(signal: Signal, target: &str) {
    let _ = Command::new("kill")
        .arg(signal.flag())
        .arg("--")
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running server process, killed (with its watchdog) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    /// The watchdog shell; its pid is the process group id.
    watchdog: Child,
    /// The server's pid.
    pid: u32,
    /// Where the server's stdout and stderr go.
    log: PathBuf,
    /// Set once the server is known to be dead and reaped.
    done: bool,
    /// Supervised ([`ChildGuard::spawn_supervised`]): the server's pid file, which names the
    /// server of the current run.
    supervised: Option<PathBuf>,
}

impl ChildGuard {
    /// Starts `program args...` with stdout and stderr appended to `log`, under the watchdog.
    /// `what` names the process in errors.
    pub fn spawn(
        what: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<Self, LabError> {
        Self::start(WATCHDOG, what, program, args, log, None, &[])
    }

    /// [`ChildGuard::spawn`] with `env` added to the server's environment.
    pub fn spawn_with_env(
        what: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        env: &[(String, String)],
    ) -> Result<Self, LabError> {
        Self::start(WATCHDOG, what, program, args, log, None, env)
    }

    /// [`ChildGuard::spawn`] of a program that starts the server as its child (a launcher):
    /// `pid_file` is where the server writes its pid, [`ChildGuard::pid`] and signals follow
    /// it, and a kill takes the whole process group.
    pub fn spawn_tracked(
        what: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        pid_file: &Path,
    ) -> Result<Self, LabError> {
        Self::start(WATCHDOG, what, program, args, log, Some(pid_file), &[])
    }

    /// [`ChildGuard::spawn`] under a supervisor that starts the server again whenever it
    /// exits; `pid_file` is where the server writes its pid. [`ChildGuard::kill`] and
    /// [`ChildGuard::terminate`] end the supervisor with it.
    pub fn spawn_supervised(
        what: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        pid_file: &Path,
    ) -> Result<Self, LabError> {
        Self::start(SUPERVISOR, what, program, args, log, Some(pid_file), &[])
    }

    fn start(
        script: &str,
        what: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        pid_file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Self, LabError> {
        let spawn_err = |source| LabError::Spawn {
            what: format!("{what} ({})", program.display()),
            source,
        };
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("vault-dr-lab-watchdog")
            .arg(program)
            .arg(log)
            .arg(std::process::id().to_string())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        let mut line = String::new();
        let read = match watchdog.stdout.take() {
            Some(out) => BufReader::new(out).read_line(&mut line),
            None => Ok(0),
        };
        let pid = match read.map(|_| line.trim().parse::<u32>()) {
            Ok(Ok(pid)) => pid,
            other => {
                send(Signal::Kill, &format!("-{}", watchdog.id()));
                let _ = watchdog.wait();
                let detail = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("watchdog printed {line:?} instead of a pid"),
                };
                return Err(spawn_err(std::io::Error::other(detail)));
            }
        };
        Ok(Self {
            watchdog,
            pid,
            log: log.to_path_buf(),
            done: false,
            supervised: pid_file.map(Path::to_path_buf),
        })
    }

    /// The server's pid (supervised: of its current run, from its pid file once written).
    pub fn pid(&self) -> u32 {
        self.supervised
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.trim().parse().ok())
            .filter(|p| pid_alive(*p))
            .unwrap_or(self.pid)
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the server is still running (a stopped server counts as running).
    pub fn is_running(&mut self) -> bool {
        if self.done {
            return false;
        }
        // The watchdog exits right after the server does.
        match self.watchdog.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.done = true;
                false
            }
        }
    }

    /// Sends `signal` to the server (not to the watchdog).
    pub fn signal(&self, signal: Signal) {
        if !self.done {
            send(signal, &self.pid().to_string());
        }
    }

    /// Waits (blocking, at most `within`) until every thread of the server is stopped, after
    /// [`Signal::Stop`]: `kill` returns before the kernel has stopped each thread, and a busy
    /// machine may let a thread answer one more request meanwhile. Whether they all stopped.
    pub fn wait_stopped(&self, within: Duration) -> bool {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let all_stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|dir| {
                dir.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().next())
                            .is_some_and(|state| state == "T" || state == "t")
                    })
                })
            })
        };
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if all_stopped() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        all_stopped()
    }

    /// Waits (blocking) until the server has exited on its own, e.g. after [`Signal::Term`].
    pub fn wait(&mut self) {
        if !self.done {
            let _ = self.watchdog.wait();
            self.reap_group();
        }
    }

    /// Sends SIGTERM and waits up to `within` for the server to exit: its exit code (128 + n
    /// after signal n), or `None` when it was still running (it is then SIGKILLed) or had
    /// already been reaped. A supervised server is SIGKILLed with its supervisor.
    pub async fn terminate(&mut self, within: std::time::Duration) -> Option<i32> {
        if self.done {
            return None;
        }
        if self.supervised.is_some() {
            // The supervisor would start it again: it and its server go together.
            self.kill();
            return None;
        }
        self.signal(Signal::Term);
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            // The watchdog exits with the server's code right after the server does.
            if let Ok(Some(status)) = self.watchdog.try_wait() {
                self.reap_group();
                return status.code();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.kill();
        None
    }

    /// SIGKILLs the server and waits until it is reaped; then kills what is left of the group.
    pub fn kill(&mut self) {
        if self.done {
            return;
        }
        if self.supervised.is_some() {
            // The whole group: the supervisor, its watcher and the server's current run.
            send(Signal::Kill, &format!("-{}", self.watchdog.id()));
        }
        send(Signal::Kill, &self.pid.to_string());
        // The watchdog `wait`s for the server, so once it has exited the server is reaped.
        let _ = self.watchdog.wait();
        self.reap_group();
    }

    fn reap_group(&mut self) {
        // Whatever is left of the group (the watcher's `sleep`) goes too.
        send(Signal::Kill, &format!("-{}", self.watchdog.id()));
        self.done = true;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process with this pid exists and is not a zombie (the agent's check, which its
/// server restart uses too).
pub use vault_dr_agent::system::pid_alive;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::{try_wait_for_blocking, wait_for_blocking};
    use std::time::Duration;

    fn sleeper(dir: &Path) -> ChildGuard {
        ChildGuard::spawn(
            "sleeper",
            Path::new("/bin/sleep"),
            &["300".into()],
            &dir.join("sleep.log"),
        )
        .unwrap()
    }

    #[test]
    fn drop_kills_the_server_and_reaps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut g = sleeper(tmp.path());
        let pid = g.pid();
        assert!(pid_alive(pid));
        assert!(g.is_running());
        drop(g);
        assert!(!pid_alive(pid), "server pid {pid} still alive after drop");
    }

    #[test]
    fn drop_during_a_panic_kills_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = std::thread::spawn(move || {
            let g = sleeper(&path);
            tx.send(g.pid()).unwrap();
            panic!("test panic with a live child");
        })
        .join();
        assert!(r.is_err());
        let pid = rx.recv().unwrap();
        assert!(!pid_alive(pid), "server pid {pid} survived the panic");
    }

    #[test]
    fn stop_and_cont_act_on_the_server_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let g = sleeper(tmp.path());
        let state = |pid: u32| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            s.rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        };
        g.signal(Signal::Stop);
        wait_for_blocking("the child to stop", Duration::from_secs(5), || {
            state(g.pid()) == "T"
        });
        g.signal(Signal::Cont);
        // Running or sleeping, never stopped again (R or S depending on the scheduler).
        wait_for_blocking("the child to continue", Duration::from_secs(5), || {
            state(g.pid()) != "T"
        });
    }

    #[test]
    fn server_output_goes_to_the_log_and_exit_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("echo.log");
        let mut g = ChildGuard::spawn(
            "echo",
            Path::new("/bin/sh"),
            &["-c".into(), "echo out; echo err >&2".into()],
            &log,
        )
        .unwrap();
        g.wait();
        assert!(!g.is_running());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");
    }

    /// A `sh` server running `script` (which must print `up` first), once it is up.
    fn shell_server(dir: &Path, name: &str, script: &str) -> ChildGuard {
        let log = dir.join(format!("{name}.log"));
        let g = ChildGuard::spawn(
            name,
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &log,
        )
        .unwrap();
        wait_for_blocking("the server to start", Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("up"))
        });
        g
    }

    #[tokio::test]
    async fn terminate_hands_back_the_servers_own_exit_code() {
        let tmp = tempfile::tempdir().unwrap();
        // A server that shuts down cleanly on SIGTERM with a code of its own.
        let script = "trap 'echo bye; exit 3' TERM; echo up; while :; do sleep 0.1; done";
        let mut g = shell_server(tmp.path(), "trap", script);
        assert_eq!(g.terminate(Duration::from_secs(10)).await, Some(3));
        assert!(!g.is_running());
        assert!(!pid_alive(g.pid()));
        // One that ignores SIGTERM is killed after the wait, and has no code to hand back.
        let script = "trap '' TERM; echo up; while :; do sleep 0.1; done";
        let mut g = shell_server(tmp.path(), "stubborn", script);
        assert_eq!(g.terminate(Duration::from_millis(500)).await, None);
        assert!(!pid_alive(g.pid()));
    }

    #[test]
    fn server_dies_when_its_owner_dies() {
        // Stand in for a SIGKILLed test runner: a `sh` owner that we kill, running the watchdog
        // with itself as the owner.
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("orphan.log");
        let mut owner = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sh -c '{}' wd /bin/sleep {} $$ 300; sleep 300",
                WATCHDOG.replace('\'', r"'\''"),
                log.display()
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(owner.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line.trim().parse().unwrap();
        assert!(pid_alive(pid));
        // Kill only the owner shell, not its group.
        send(Signal::Kill, &owner.id().to_string());
        owner.wait().unwrap();
        let died = try_wait_for_blocking("the server to die", Duration::from_secs(5), || {
            !pid_alive(pid)
        });
        send(Signal::Kill, &format!("-{}", owner.id()));
        assert!(died.is_ok(), "server {pid} outlived its owner");
    }
}
