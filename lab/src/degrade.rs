//! Degrading one server port while the server stays alive: every request to it slowed by a
//! fixed time ([`PortFault::Slow`]) or one in `n` refused ([`PortFault::Errors`]). This is how
//! the degraded-primary tests and `vault-dr drill --fault slow|errors` make a primary slow or
//! failing *on its API only*: the rules match the TCP destination port on every interface, so
//! every client (the node's own agent on loopback, the coordinator, the other clusters' agents,
//! the writing client) sees it, and the raft and cluster ports are untouched.
//!
//! The rules live in a chain of their own (`VDR<pid>P<port>`) jumped to from `INPUT`, in the
//! root namespace or in a network namespace given by its `ip netns exec` prefix, and are removed
//! when the [`PortDegradation`] is dropped. Slow: an `NFQUEUE` rule and the delay program
//! ([`DELAY_PY`], a small Python program holding each queued packet for the delay; this kernel
//! has no `tc netem`), with `--queue-bypass` so packets flow undelayed if it dies. Errors: the
//! `statistic` match (`--mode nth`) on the packets that carry data, answered with a TCP reset,
//! so every `n`-th request sent to the port fails and its connection is reset. Needs root,
//! `iptables` and `python3`.

use crate::error::LabError;
use crate::process::ChildGuard;
use crate::wait::try_wait_for_blocking;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The delay program: binds NFQUEUE `argv[1]` (copy mode: metadata only), then accepts every
/// packet `argv[2]` milliseconds after it arrived, in order. Prints `ready` once bound.
pub const DELAY_PY: &str = r#"import collections, select, socket, struct, sys, time
qnum = int(sys.argv[1]); delay = float(sys.argv[2]) / 1000.0
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.bind((0, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
def msg(mtype, attrs, flags=1):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(qnum))
    for t, p in attrs:
        n = 4 + len(p)
        body += struct.pack("=HH", n, t) + p + b"\0" * ((4 - n % 4) % 4)
    return struct.pack("=IHHII", 16 + len(body), (3 << 8) | mtype, flags, 0, 0) + body
def ack():
    d = s.recv(65536)
    ln, ty = struct.unpack_from("=IH", d, 0)
    if ty == 2:
        err = struct.unpack_from("=i", d, 16)[0]
        if err != 0:
            sys.exit("nfqueue config failed: errno %d" % -err)
s.send(msg(2, [(1, struct.pack("=BBH", 1, 0, socket.htons(socket.AF_INET)))], 5)); ack()
s.send(msg(2, [(2, struct.pack(">IB", 0, 1)), (3, struct.pack(">I", 20000))], 5)); ack()
print("ready", flush=True)
pending = collections.deque()
while True:
    t = max(0.0, pending[0][0] - time.monotonic()) if pending else 1.0
    r, _, _ = select.select([s], [], [], t)
    if r:
        try:
            d = s.recv(1 << 20)
        except OSError:
            d = b""
        off = 0
        while off + 16 <= len(d):
            ln, ty = struct.unpack_from("=IH", d, off)
            if ln < 16:
                break
            if ty == (3 << 8):
                a = off + 20
                while a + 4 <= off + ln:
                    al, at = struct.unpack_from("=HH", d, a)
                    if al < 4:
                        break
                    if at & 0x3FFF == 1:
                        pending.append((time.monotonic() + delay, struct.unpack_from(">I", d, a + 4)[0]))
                    a += (al + 3) & ~3
            off += (ln + 3) & ~3
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        _, pid = pending.popleft()
        s.send(msg(1, [(2, struct.pack(">II", 1, pid))]))
"#;

/// How long the delay program may take to bind its queue.
const DELAY_READY: Duration = Duration::from_secs(10);

/// The smallest IPv4 TCP packet that carries data: 20 bytes of IP header, 32 of TCP header
/// with timestamps, and one byte. Pure ACKs and FINs are shorter; a SYN (60 bytes with its
/// options) is excluded by its flag.
const DATA_PACKET: u32 = 53;

/// What is done to the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortFault {
    /// Every packet sent to the port is held this many milliseconds: each request is that
    /// much slower (a new connection twice, its handshake too).
    Slow {
        /// The added delay.
        ms: u32,
    },
    /// Every `every`-th data packet sent to the port is answered with a TCP reset: that share
    /// of the requests fails (`every = 5`: 20 %).
    Errors {
        /// One in how many.
        every: u32,
    },
}

impl std::fmt::Display for PortFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Slow { ms } => write!(f, "+{ms} ms on every request"),
            Self::Errors { every } => write!(
                f,
                "one request in {every} refused ({:.0} %)",
                100.0 / f64::from((*every).max(1))
            ),
        }
    }
}

/// One degraded port; the rules and the delay program go when it is dropped.
#[derive(Debug)]
pub struct PortDegradation {
    prefix: Vec<OsString>,
    chain: String,
    port: u16,
    fault: PortFault,
    delay: Option<ChildGuard>,
}

impl PortDegradation {
    /// Degrades TCP port `port` in the namespace that `prefix` runs commands in (empty: this
    /// process's namespace). `dir` takes the delay program's log.
    pub fn start(
        prefix: &[OsString],
        port: u16,
        fault: PortFault,
        dir: &Path,
    ) -> Result<Self, LabError> {
        let chain = format!("VDR{}P{port}", std::process::id());
        let mut d = Self {
            prefix: prefix.to_vec(),
            chain,
            port,
            fault,
            delay: None,
        };
        // Leftovers of an earlier run of this process (a test that panicked) go first.
        d.remove();
        d.iptables(&["-N", &d.chain.clone()])?;
        let port_text = port.to_string();
        let chain = d.chain.clone();
        d.iptables(&[
            "-I", "INPUT", "-p", "tcp", "--dport", &port_text, "-j", &chain,
        ])?;
        match fault {
            PortFault::Slow { ms } => {
                // One queue per port, kept clear of the fault suite's queue 0.
                let queue_num = 1000 + port % 30000;
                let queue = queue_num.to_string();
                let log = dir.join(format!("delay-port-{port}.log"));
                d.delay = Some(start_delay_program(prefix, queue_num, ms, &log)?);
                d.iptables(&[
                    "-A",
                    &chain,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                    "--queue-bypass",
                ])?;
            }
            PortFault::Errors { every } => {
                if every < 2 {
                    return Err(LabError::Invalid(format!(
                        "refusing one request in {every} is not a degradation"
                    )));
                }
                d.iptables(&[
                    "-A",
                    &chain,
                    "-p",
                    "tcp",
                    "!",
                    "--syn",
                    "-m",
                    "length",
                    "--length",
                    &format!("{DATA_PACKET}:65535"),
                    "-m",
                    "statistic",
                    "--mode",
                    "nth",
                    "--every",
                    &every.to_string(),
                    "--packet",
                    "0",
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ])?;
            }
        }
        Ok(d)
    }

    /// The port degraded.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What is done to it.
    pub fn fault(&self) -> PortFault {
        self.fault
    }

    fn command(&self, program: &str) -> Command {
        match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn iptables(&self, args: &[&str]) -> Result<(), LabError> {
        let out = self
            .command("iptables")
            .arg("-w")
            .args(args)
            .output()
            .map_err(|source| LabError::Spawn {
                what: "iptables (run as root; scripts/setup.sh installs iptables)".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(LabError::Invalid(format!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Removes the jump and the chain (quietly: they may not exist).
    fn remove(&self) {
        let port = self.port.to_string();
        for args in [
            vec![
                "-D",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                &self.chain,
            ],
            vec!["-F", &self.chain],
            vec!["-X", &self.chain],
        ] {
            let _ = self.command("iptables").arg("-w").args(&args).output();
        }
    }
}

impl Drop for PortDegradation {
    fn drop(&mut self) {
        self.remove();
        if let Some(mut child) = self.delay.take() {
            child.kill();
        }
    }
}

/// Starts the delay program ([`DELAY_PY`]) holding the packets of NFQUEUE `queue` for `ms`
/// milliseconds, in the namespace `prefix` runs commands in (empty: this one), its output in
/// `log`, and waits until it has bound its queue (an error with its log's tail if it exits or
/// takes longer than 10 s). Add the `NFQUEUE` rule only after: `--queue-bypass` lets packets
/// through while no program holds the queue.
pub fn start_delay_program(
    prefix: &[OsString],
    queue: u16,
    ms: u32,
    log: &Path,
) -> Result<ChildGuard, LabError> {
    let _ = std::fs::remove_file(log);
    let python = python();
    let mut args: Vec<OsString> = Vec::new();
    let program: PathBuf = match prefix.split_first() {
        Some((first, rest)) => {
            args.extend(rest.iter().cloned());
            args.push(python.into_os_string());
            PathBuf::from(first)
        }
        None => python,
    };
    args.extend(["-u".into(), "-c".into(), DELAY_PY.into()]);
    args.push(queue.to_string().into());
    args.push(ms.to_string().into());
    let mut child = ChildGuard::spawn("the delay program", &program, &args, log)?;
    // Some(true): it printed "ready"; Some(false): it exited, which ends the wait at once.
    let ready = try_wait_for_blocking("the delay program to be ready", DELAY_READY, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.trim() == "ready") {
            return Some(true);
        }
        (!child.is_running()).then_some(false)
    });
    if ready != Ok(true) {
        child.kill();
        return Err(LabError::Invalid(format!(
            "the delay program did not bind NFQUEUE {queue} within {DELAY_READY:?}; log {}: {}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        )));
    }
    Ok(child)
}

/// `/usr/bin/python3` when present (no shim), else `python3` from PATH.
pub fn python() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3");
    if p.exists() {
        p
    } else {
        PathBuf::from("python3")
    }
}
