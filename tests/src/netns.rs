//! Network namespaces for fault tests: a [`Net`] (a Linux bridge in the root namespace with
//! `10.<x>.0.1/24`) and [`Host`]s on it (a network namespace with `lo` up and one veth pair
//! to the bridge, `eth0` = `10.<x>.0.<n>` inside).
//!
//! Faults are packet filter rules inside the host's namespace (its `filter` table is rewritten
//! whole with `iptables-restore` at every change), so traffic that stays inside the host (an
//! agent talking to its local OpenBao) is never touched:
//! - [`Host::cut`] / [`Host::heal`]: drop everything in and out of `eth0` (a full partition);
//! - [`Host::cut_from`]: drop the traffic between this host and one address only;
//! - [`Host::loss`]: drop a random share of the packets leaving `eth0`;
//! - [`Host::delay`]: hold every packet leaving `eth0` for a fixed time. This kernel has no
//!   `sch_netem` (nor `tbf`, `fq`, nft `queue`), so the delay is an `NFQUEUE` rule and a small
//!   Python program in the namespace that keeps each queued packet for the delay and then
//!   accepts it (`--queue-bypass`: if the program dies, packets flow again undelayed);
//! - [`Host::clear`]: no fault at all.
//!
//! Everything is named `vdr-<pid>-...`; dropping a [`Host`] or [`Net`] removes it (also during a
//! panic), and [`Net::create`] first removes leftovers of processes that no longer exist. Only
//! namespaces and links created here are ever touched. Needs root, `ip` and `iptables`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use vault_dr_lab::LabError;
use vault_dr_lab::degrade::{PortDegradation, PortFault, start_delay_program};
use vault_dr_lab::process::{ChildGuard, pid_alive};

/// Every name starts with this, then the owner's pid and `-`.
const PREFIX: &str = "vdr-";
/// Linux interface names are at most 15 bytes.
const IFNAME_MAX: usize = 15;
/// The name of the host's veth end inside its namespace.
const HOST_IF: &str = "eth0";
/// The NFQUEUE number used for the delay (one per namespace, so always 0).
const QUEUE: u16 = 0;

/// Distinguishes the links of several [`Net`]s in one process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What went wrong setting up a namespace or a fault.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command could not be started (not root, or `ip`/`iptables` missing).
    #[error(
        "cannot run {cmd}: {source} (run as root with iproute2 and iptables; see scripts/setup.sh)"
    )]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command exited non-zero.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// A name or address that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Starting a process in the namespace failed.
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// Runs `program args...`, feeding `stdin`; its stdout on success.
fn run_with(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    run_with(program, args, None)
}

/// The pid in a `vdr-<pid>-...` name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes the namespaces and links of `vdr-<pid>-` owners that are gone.
pub fn remove_leftovers() {
    let dead = |name: &str| owner_pid(name).is_some_and(|p| !pid_alive(p));
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
    if let Ok(list) = run("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // "7: vdr-123-v1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if dead(name) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}

/// A bridge in the root namespace, `10.<x>.0.1/24`, removed on drop.
#[derive(Debug)]
pub struct Net {
    bridge: String,
    subnet: u8,
    next_host: AtomicU32,
}

impl Net {
    /// Removes leftovers of dead test processes, then creates a bridge on a free `10.<x>.0.0/24`
    /// (one not yet on any interface).
    pub fn create() -> Result<Self, NetError> {
        remove_leftovers();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let bridge = ifname(&format!("{PREFIX}{pid}-b{n}"))?;
        let used = run("ip", &["-o", "-4", "addr", "show"])?;
        let start = (pid.wrapping_mul(7).wrapping_add(n * 13) % 150) as u8;
        let subnet = (0..150u8)
            .map(|i| 100 + (start + i) % 150)
            .find(|x| !used.contains(&format!(" 10.{x}.0.")))
            .ok_or_else(|| NetError::Invalid("no free 10.<x>.0.0/24 subnet".into()))?;
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let net = Net {
            bridge,
            subnet,
            next_host: AtomicU32::new(2),
        };
        let cidr = format!("{}/24", net.gateway());
        run("ip", &["addr", "add", &cidr, "dev", &net.bridge])?;
        run("ip", &["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// The bridge's address, `10.<x>.0.1`: what the root namespace (an in-process coordinator)
    /// is seen as from the hosts, and where it can listen for them.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Creates a host `name` (letters, digits, `-`) with the next free address.
    pub fn host(&self, name: &str) -> Result<Host, NetError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(NetError::Invalid(format!("host name {name:?}")));
        }
        let n = self.next_host.fetch_add(1, Ordering::Relaxed);
        if n > 254 {
            return Err(NetError::Invalid("more than 253 hosts on one net".into()));
        }
        let pid = std::process::id();
        let c = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{PREFIX}{pid}-{c}-{name}");
        let veth = ifname(&format!("{PREFIX}{pid}-v{c}"))?;
        let ip = Ipv4Addr::new(10, self.subnet, 0, n as u8);
        run("ip", &["netns", "add", &ns])?;
        let host = Host {
            name: name.to_owned(),
            ns,
            veth,
            ip,
            gateway: self.gateway(),
            faults: Mutex::new(Faults::default()),
            delay: Mutex::new(None),
            dir: tempfile::Builder::new()
                .prefix("vdr-netns-")
                .tempdir()
                .map_err(|e| NetError::Invalid(format!("temp dir: {e}")))?,
        };
        run(
            "ip",
            &[
                "link", "add", &host.veth, "type", "veth", "peer", "name", HOST_IF, "netns",
                &host.ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &host.veth, "master", &self.bridge, "up"],
        )?;
        let cidr = format!("{ip}/24");
        run(
            "ip",
            &["-n", &host.ns, "addr", "add", &cidr, "dev", HOST_IF],
        )?;
        run("ip", &["-n", &host.ns, "link", "set", HOST_IF, "up"])?;
        run("ip", &["-n", &host.ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &host.ns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ],
        )?;
        Ok(host)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

fn ifname(name: &str) -> Result<String, NetError> {
    if name.len() > IFNAME_MAX {
        return Err(NetError::Invalid(format!(
            "interface name {name:?} is longer than {IFNAME_MAX} bytes"
        )));
    }
    Ok(name.to_owned())
}

/// The faults in force on one host.
#[derive(Debug, Default, Clone, PartialEq)]
struct Faults {
    cut: bool,
    cut_from: Vec<Ipv4Addr>,
    loss_pct: u8,
    delay_ms: u32,
}

impl Faults {
    /// The whole `filter` table for `iptables-restore`.
    fn rules(&self) -> String {
        let mut r = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        if self.cut {
            let _ = writeln!(r, "-A INPUT -i {HOST_IF} -j DROP");
            let _ = writeln!(r, "-A OUTPUT -o {HOST_IF} -j DROP");
        }
        for ip in &self.cut_from {
            let _ = writeln!(r, "-A INPUT -i {HOST_IF} -s {ip} -j DROP");
            let _ = writeln!(r, "-A OUTPUT -o {HOST_IF} -d {ip} -j DROP");
        }
        if self.loss_pct > 0 {
            let p = f64::from(self.loss_pct.min(100)) / 100.0;
            let _ = writeln!(
                r,
                "-A OUTPUT -o {HOST_IF} -m statistic --mode random --probability {p:.4} -j DROP"
            );
        }
        if self.delay_ms > 0 {
            let _ = writeln!(
                r,
                "-A OUTPUT -o {HOST_IF} -j NFQUEUE --queue-num {QUEUE} --queue-bypass"
            );
        }
        r.push_str("COMMIT\n");
        r
    }
}

/// A network namespace on a [`Net`]: `eth0` = [`Host::ip`], `lo` up, default route via the
/// bridge. Dropping it stops its delay program and deletes the namespace and its veth pair
/// (stop the processes you started in it first: they hold nothing, but keep running).
#[derive(Debug)]
pub struct Host {
    name: String,
    ns: String,
    veth: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    faults: Mutex<Faults>,
    delay: Mutex<Option<ChildGuard>>,
    dir: tempfile::TempDir,
}

impl Host {
    /// The name given to [`Net::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name (`vdr-<pid>-<n>-<name>`).
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The host's address on the net.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The root namespace's address as seen from this host (the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The command prefix that runs a program in this namespace: `ip netns exec <ns>`.
    /// (`ip netns exec` execs the program, so a started process keeps the pid of `ip`.)
    pub fn exec_prefix(&self) -> Vec<OsString> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.ns.clone().into(),
        ]
    }

    /// Starts `program args...` in this namespace under the lab's [`ChildGuard`] (killed on
    /// drop, also on panic or when this process dies), output appended to `log`.
    pub fn spawn(
        &self,
        what: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<ChildGuard, NetError> {
        let mut full: Vec<OsString> = self.exec_prefix()[1..].to_vec();
        full.push(program.as_os_str().to_owned());
        full.extend(args.iter().cloned());
        Ok(ChildGuard::spawn(what, Path::new("ip"), &full, log)?)
    }

    /// Runs a command in this namespace to completion; its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetError> {
        let mut full = vec!["netns", "exec", &self.ns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Full isolation: every packet in or out of `eth0` is dropped.
    pub fn cut(&self) -> Result<(), NetError> {
        self.change(|f| f.cut = true)
    }

    /// Ends [`Host::cut`] and every [`Host::cut_from`] (delay and loss stay).
    pub fn heal(&self) -> Result<(), NetError> {
        self.change(|f| {
            f.cut = false;
            f.cut_from.clear();
        })
    }

    /// Drops the traffic between this host and `ip` only (e.g. the coordinator's address).
    pub fn cut_from(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        self.change(|f| {
            if !f.cut_from.contains(&ip) {
                f.cut_from.push(ip);
            }
        })
    }

    /// Drops `pct` percent (random, 0–100) of the packets leaving `eth0`.
    pub fn loss(&self, pct: u8) -> Result<(), NetError> {
        if pct > 100 {
            return Err(NetError::Invalid(format!("loss {pct}% > 100%")));
        }
        self.change(|f| f.loss_pct = pct)
    }

    /// Holds every packet leaving `eth0` for `ms` milliseconds (0: no delay). Applied at both
    /// ends of a link this adds `2 × ms` to a round trip, like `tc netem delay` on each.
    pub fn delay(&self, ms: u32) -> Result<(), NetError> {
        let mut guard = self
            .delay
            .lock()
            .map_err(|_| NetError::Invalid("delay lock poisoned".into()))?;
        // Remove the rule first, so no packet waits for a program that is being replaced.
        self.change(|f| f.delay_ms = 0)?;
        if let Some(mut old) = guard.take() {
            old.kill();
        }
        if ms == 0 {
            return Ok(());
        }
        let log = self.dir.path().join(format!("delay-{ms}.log"));
        let child = start_delay_program(&self.exec_prefix(), QUEUE, ms, &log)?;
        *guard = Some(child);
        self.change(|f| f.delay_ms = ms)
    }

    /// Slows or fails the requests to TCP `port` in this host on every interface, its own
    /// loopback included (see `vault_dr_lab::degrade`): how a node's API is degraded while
    /// the node stays alive, for its own agent as for every other client. Undone on drop. The
    /// other faults of this host rewrite its filter table whole, which removes the degradation:
    /// do not combine them on one host.
    pub fn degrade_port(&self, port: u16, fault: PortFault) -> Result<PortDegradation, NetError> {
        Ok(PortDegradation::start(
            &self.exec_prefix(),
            port,
            fault,
            self.dir.path(),
        )?)
    }

    /// Removes every fault (cut, cut_from, loss, delay).
    pub fn clear(&self) -> Result<(), NetError> {
        self.delay(0)?;
        self.change(|f| *f = Faults::default())
    }

    fn change(&self, f: impl FnOnce(&mut Faults)) -> Result<(), NetError> {
        let mut faults = self
            .faults
            .lock()
            .map_err(|_| NetError::Invalid("fault lock poisoned".into()))?;
        let mut next = faults.clone();
        f(&mut next);
        let rules = next.rules();
        run_with(
            "ip",
            &["netns", "exec", &self.ns, "iptables-restore"],
            Some(&rules),
        )?;
        *faults = next;
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(mut d) = self.delay.lock()
            && let Some(mut child) = d.take()
        {
            child.kill();
        }
        let _ = run("ip", &["link", "del", &self.veth]);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    use std::time::Instant;
    use vault_dr_lab::degrade::python;
    use vault_dr_lab::wait::wait_for_blocking;

    /// A TCP server in `host` on port 7000 that writes "hi" to each connection.
    fn server(host: &Host) -> ChildGuard {
        let code = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('{}',7000))\ns.listen(64)\nprint('ready',flush=True)\n\
             while True:\n    c,_=s.accept()\n    c.sendall(b'hi')\n    c.close()\n",
            host.ip()
        );
        let log = host.dir.path().join("server.log");
        let g = host
            .spawn(
                "server",
                &python(),
                &["-u".into(), "-c".into(), code.into()],
                &log,
            )
            .unwrap();
        wait_for_blocking("the test server to start", Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("ready")
        });
        g
    }

    /// Connect from the root namespace and read "hi": the time it took, None on timeout.
    fn connect(ip: Ipv4Addr, timeout: Duration) -> Option<Duration> {
        use std::io::Read;
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((ip, 7000)), timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).ok()?;
        Some(t.elapsed())
    }

    /// Connect from inside `from` to `to`: whether it worked within 1 s.
    fn connect_from(from: &Host, to: Ipv4Addr) -> bool {
        let code = format!(
            "import socket\nc=socket.create_connection(('{to}',7000),timeout=1)\nassert c.recv(2)==b'hi'"
        );
        let py = python();
        from.exec(&py.display().to_string(), &["-c", &code]).is_ok()
    }

    const T: Duration = Duration::from_millis(800);

    #[test]
    fn hosts_reach_each_other_and_the_root_namespace() {
        let net = Net::create().unwrap();
        let a = net.host("a").unwrap();
        let b = net.host("b").unwrap();
        assert_ne!(a.ip(), b.ip());
        let _sa = server(&a);
        let _sb = server(&b);
        assert!(connect(a.ip(), T).is_some());
        assert!(connect_from(&b, a.ip()));
        assert!(connect_from(&a, b.ip()));
        // Loopback inside a namespace is the namespace's own.
        assert!(
            !a.exec("ip", &["-o", "link", "show"])
                .unwrap()
                .contains(&net.bridge)
        );
    }

    #[test]
    fn cut_isolates_fully_and_heal_restores() {
        let net = Net::create().unwrap();
        let a = net.host("a").unwrap();
        let b = net.host("b").unwrap();
        let _sa = server(&a);
        a.cut().unwrap();
        assert!(
            connect(a.ip(), T).is_none(),
            "root still reaches a cut host"
        );
        assert!(
            !connect_from(&b, a.ip()),
            "another host still reaches a cut host"
        );
        // Inside the host, its own address still answers (agent to local OpenBao).
        assert!(connect_from(&a, a.ip()));
        a.heal().unwrap();
        assert!(connect(a.ip(), T).is_some());
        assert!(connect_from(&b, a.ip()));
    }

    #[test]
    fn cut_from_drops_one_peer_only() {
        let net = Net::create().unwrap();
        let a = net.host("a").unwrap();
        let b = net.host("b").unwrap();
        let _sa = server(&a);
        a.cut_from(net.gateway()).unwrap();
        assert!(
            connect(a.ip(), T).is_none(),
            "the cut-off peer still reaches a"
        );
        assert!(connect_from(&b, a.ip()), "another host lost a too");
        a.clear().unwrap();
        assert!(connect(a.ip(), T).is_some());
    }

    #[test]
    fn delay_adds_latency_and_clear_removes_it() {
        let net = Net::create().unwrap();
        let a = net.host("a").unwrap();
        let _sa = server(&a);
        let before = connect(a.ip(), T).unwrap();
        assert!(before < Duration::from_millis(190), "{before:?}");
        a.delay(200).unwrap();
        // SYN-ACK and the data each leave a delayed by 200 ms.
        let slow = connect(a.ip(), Duration::from_secs(3)).unwrap();
        assert!(
            slow >= Duration::from_millis(390) && slow < Duration::from_millis(2000),
            "{slow:?}"
        );
        a.clear().unwrap();
        let after = connect(a.ip(), T).unwrap();
        assert!(after < Duration::from_millis(190), "{after:?}");
    }

    /// From inside `host`: `n` new connections to its own port 7001 on loopback, each sending
    /// one byte and reading its echo; the seconds each took, `None` for a failed one.
    fn echo_from_inside(host: &Host, n: u32) -> Vec<Option<f64>> {
        let code = format!(
            "import socket, time\n\
             for _ in range({n}):\n    t = time.monotonic()\n    try:\n        \
             c = socket.create_connection(('127.0.0.1', 7001), timeout=3)\n        \
             c.sendall(b'x')\n        assert c.recv(1) == b'x'\n        \
             print(time.monotonic() - t)\n    except Exception:\n        print('failed')\n"
        );
        let out = host
            .exec(&python().display().to_string(), &["-c", &code])
            .unwrap();
        out.lines().map(|l| l.trim().parse().ok()).collect()
    }

    #[test]
    fn a_degraded_port_is_slow_or_refuses_one_request_in_n_on_loopback_too() {
        let net = Net::create().unwrap();
        let a = net.host("a").unwrap();
        // A server that answers each connection in its own thread, as a real server does: a
        // connection whose request was refused never reaches it with data.
        let code = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',7001))\ns.listen(64)\nprint('ready',flush=True)\n\
             import threading\n\
             def echo(c):\n    c.settimeout(5)\n    d=c.recv(1)\n    c.sendall(d)\n    c.close()\n\
             while True:\n    c,_=s.accept()\n    threading.Thread(target=echo,args=(c,),daemon=True).start()\n";
        let log = a.dir.path().join("echo.log");
        let _echo = a
            .spawn(
                "echo",
                &python(),
                &["-u".into(), "-c".into(), code.into()],
                &log,
            )
            .unwrap();
        wait_for_blocking("the echo server", Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("ready")
        });
        let _other = server(&a);
        let fast = echo_from_inside(&a, 3);
        assert!(fast.iter().all(|t| t.is_some_and(|t| t < 0.15)), "{fast:?}");
        {
            let _slow = a.degrade_port(7001, PortFault::Slow { ms: 300 }).unwrap();
            // The handshake's SYN and the data each wait 300 ms on the way in.
            let slow = echo_from_inside(&a, 3);
            assert!(
                slow.iter()
                    .all(|t| t.is_some_and(|t| (0.55..2.5).contains(&t))),
                "{slow:?}"
            );
            // Another port of the same host is untouched.
            let other = connect(a.ip(), T).unwrap();
            assert!(other < Duration::from_millis(150), "{other:?}");
        }
        {
            let _errors = a
                .degrade_port(7001, PortFault::Errors { every: 5 })
                .unwrap();
            let out = echo_from_inside(&a, 20);
            let failed = out.iter().filter(|t| t.is_none()).count();
            assert_eq!(failed, 4, "every 5th request refused: {out:?}");
        }
        // Dropped: neither slow nor failing, and no rule is left.
        let after = echo_from_inside(&a, 5);
        assert!(
            after.iter().all(|t| t.is_some_and(|t| t < 0.15)),
            "{after:?}"
        );
        let rules = a.exec("iptables", &["-S"]).unwrap();
        assert!(!rules.contains("VDR"), "{rules}");
    }

    #[test]
    fn loss_drops_a_share_of_packets() {
        let net = Net::create().unwrap();
        let a = net.host("a").unwrap();
        let _sa = server(&a);
        a.loss(100).unwrap();
        assert!(connect(a.ip(), Duration::from_millis(500)).is_none());
        a.loss(50).unwrap();
        // A connection fails within 300 ms when its SYN-ACK or its data is lost (the
        // retransmission comes after 1 s): 75% expected; 0 or 30 of 30 is ~1e-4 likely.
        let failed = (0..30)
            .filter(|_| connect(a.ip(), Duration::from_millis(300)).is_none())
            .count();
        assert!(
            (1..30).contains(&failed),
            "{failed} of 30 failed at 50% loss"
        );
        a.loss(0).unwrap();
        assert!(connect(a.ip(), T).is_some());
    }

    #[test]
    fn drop_removes_namespaces_and_links() {
        let (ns, veth, bridge) = {
            let net = Net::create().unwrap();
            let a = net.host("a").unwrap();
            a.delay(50).unwrap();
            (
                a.netns().to_owned(),
                a.veth.clone(),
                net.bridge().to_owned(),
            )
        };
        let nss = run("ip", &["netns", "list"]).unwrap();
        let links = run("ip", &["-o", "link", "show"]).unwrap();
        assert!(!nss.contains(&ns), "{nss}");
        assert!(
            !links.contains(&veth) && !links.contains(&bridge),
            "{links}"
        );
    }

    #[test]
    fn leftovers_of_dead_owners_are_removed() {
        // pid 2^22+1 is above pid_max on Linux's default and cannot be alive.
        let dead = format!("{PREFIX}4194305-0-x");
        run("ip", &["netns", "add", &dead]).unwrap();
        remove_leftovers();
        assert!(!run("ip", &["netns", "list"]).unwrap().contains(&dead));
    }

    #[test]
    fn rules_render_every_fault() {
        let f = Faults {
            cut: true,
            cut_from: vec![Ipv4Addr::new(10, 1, 0, 1)],
            loss_pct: 30,
            delay_ms: 200,
        };
        let r = f.rules();
        assert!(r.contains("-A INPUT -i eth0 -j DROP"), "{r}");
        assert!(r.contains("-A OUTPUT -o eth0 -d 10.1.0.1 -j DROP"), "{r}");
        assert!(r.contains("--probability 0.3000"), "{r}");
        assert!(r.contains("NFQUEUE --queue-num 0 --queue-bypass"), "{r}");
        assert_eq!(
            Faults::default()
                .rules()
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count(),
            0
        );
    }
}
