//! The node's own CPU and memory figures for the report: the cgroup v2 files of the node's
//! cgroup (`cpu.stat`, `memory.current`, `memory.max`), otherwise the node's server process.
//! [`Locator`] finds that process: by its pid file; else as the process that listens on the
//! node's address (the port of `--vault-addr`: `/proc/net/tcp{,6}` gives the listening
//! socket's inode, the `socket:[inode]` links under `/proc/<pid>/fd` its owner); else, when
//! that owner is not visible to the agent (another user's process), as the only process
//! running with one of the names.
//!
//! When none of these tells which process is the node's, the figures are unknown
//! ([`HostStats::UNKNOWN`]) and the agent logs why, once per reason: nothing listens on the
//! node's port (the node is down, starting, or not on this host), or several servers run here
//! and the listener's owner is hidden ("give --vault-pid-file"). The figures are never the
//! whole host's nor another process's: the scorer and `vault-dr status` compare nodes with
//! them, and a dead primary shown at "1.3 cores" (some other `bao` on its host) misleads both.
//! Host-wide figures are not offered even on request: they describe no node, and a host
//! exporter (node_exporter) measures hosts better.
//!
//! A cgroup counts only beside the node's live process ([`SystemSampler::sample_at`]): the one
//! given with `--cgroup-root`, or the agent's own container ("inside a container" meaning the
//! cgroup v2 root the agent sees holds `memory.current`: the real root cgroup of a host has
//! none, a container's namespaced root has one) when the node runs in it with no other server.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use url::Url;
use vault_dr_common::HostStats;
use vault_dr_common::report::HostSource;

/// Where procfs is mounted.
pub const PROC_ROOT: &str = "/proc";
/// Where the cgroup v2 hierarchy is mounted (for a process's own `memory.max`).
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The pid in `pid_file`, if it reads as one.
fn pid_from_file(pid_file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    text.trim().parse::<u32>().ok()
}

/// Whether `pid` exists under `proc_root` and is not a zombie.
fn alive_in(proc_root: &Path, pid: u32) -> bool {
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The numeric entries of `proc_root`: every process the agent can see.
fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes (not the agent itself) whose `comm` is one of `names`.
fn pids_named(proc_root: &Path, names: &[String]) -> BTreeSet<u32> {
    let me = std::process::id();
    pids(proc_root)
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                .is_ok_and(|comm| names.iter().any(|n| n == comm.trim_end_matches('\n')))
        })
        .filter(|&pid| alive_in(proc_root, pid))
        .collect()
}

/// The host part of the node's address, as far as it narrows the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenHost {
    /// A name other than `localhost`: any local address with the port (a pod's own DNS name
    /// resolves to an address of the pod's network namespace).
    Any,
    /// `localhost`: a loopback address.
    Loopback,
    /// This address.
    Ip(IpAddr),
}

/// Where the node listens, from its `--vault-addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// Which local addresses count.
    pub host: ListenHost,
}

impl Listen {
    /// The listener of `addr`, if it has a host and port.
    pub fn of(addr: &Url) -> Option<Self> {
        let port = addr.port_or_known_default()?;
        let host = match addr.host()? {
            url::Host::Ipv4(ip) => ListenHost::Ip(ip.into()),
            url::Host::Ipv6(ip) => ListenHost::Ip(ip.into()),
            url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => ListenHost::Loopback,
            url::Host::Domain(_) => ListenHost::Any,
        };
        Some(Self { port, host })
    }

    /// Whether a socket listening on `local` serves this address.
    pub fn matches(&self, local: SocketAddr) -> bool {
        if local.port() != self.port {
            return false;
        }
        // An IPv4 address as the tcp6 table shows it (::ffff:a.b.c.d) compares as IPv4.
        let ip = match local.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if ip.is_unspecified() {
            return true;
        }
        match self.host {
            ListenHost::Any => true,
            ListenHost::Loopback => ip.is_loopback(),
            ListenHost::Ip(want) => ip == want || (want.is_unspecified()),
        }
    }
}

/// The listening sockets (state `0A`) of a `/proc/net/tcp` or `/proc/net/tcp6` text: local
/// address and socket inode. Addresses are the kernel's words in native byte order.
pub fn parse_listeners(text: &str) -> Vec<(SocketAddr, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (ip_hex, port_hex) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let ip: IpAddr = match ip_hex.len() {
                8 => Ipv4Addr::from(u32::from_str_radix(ip_hex, 16).ok()?.to_ne_bytes()).into(),
                32 => {
                    let mut bytes = [0u8; 16];
                    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                        let word = u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                        chunk.copy_from_slice(&word.to_ne_bytes());
                    }
                    Ipv6Addr::from(bytes).into()
                }
                _ => return None,
            };
            Some((SocketAddr::new(ip, port), f[9].parse().ok()?))
        })
        .collect()
}

/// What a scan for the owners of some sockets found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Owners {
    /// Processes holding one of the sockets (the agent excluded).
    pids: BTreeSet<u32>,
    /// Whether some process's descriptors could not be read (another user's, without
    /// `CAP_SYS_PTRACE`): the owner may be among them.
    hidden: bool,
}

/// The processes under `proc_root` that hold one of the sockets `inodes`.
fn socket_owners(proc_root: &Path, inodes: &BTreeSet<u64>) -> Owners {
    let me = std::process::id();
    let mut out = Owners::default();
    for pid in pids(proc_root).into_iter().filter(|&p| p != me) {
        let fd_dir = proc_root.join(pid.to_string()).join("fd");
        let Ok(fds) = std::fs::read_dir(&fd_dir) else {
            // Gone since the listing, or not ours to read.
            out.hidden |= fd_dir.exists();
            continue;
        };
        let holds = fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| inodes.contains(&n))
            })
        });
        if holds {
            out.pids.insert(pid);
        }
    }
    out
}

/// How the node's process was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `--vault-pid-file`.
    PidFile,
    /// It holds the socket listening on the node's address.
    Listener,
    /// The listener's owner is hidden and this is the only process with one of the names.
    OnlyNamed,
}

/// Why the node's process is not known; each is logged once when it starts to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// The pid file is missing or names no live process.
    PidFile(PathBuf),
    /// Nothing listens on the node's port (down, starting, or not on this host).
    NotListening {
        /// The port of `--vault-addr`.
        port: u16,
    },
    /// Something listens, but its owner is hidden and no process has one of the names.
    OwnerHidden {
        /// The port of `--vault-addr`.
        port: u16,
    },
    /// Several processes could be the node's.
    Ambiguous {
        /// Their pids.
        pids: Vec<u32>,
    },
    /// No `/proc/net/tcp` to tell by (or no port) and no process with one of the names.
    NoProcess,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PidFile(p) => write!(f, "the pid file {} names no live process", p.display()),
            Self::NotListening { port } => write!(
                f,
                "nothing listens on port {port} of the node's address (down, starting, or not on this host)"
            ),
            Self::OwnerHidden { port } => write!(
                f,
                "the process listening on port {port} is not visible to the agent and none runs with the server's name; give --vault-pid-file"
            ),
            Self::Ambiguous { pids } => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "cannot tell which server is this node's: pids {}; give --vault-pid-file",
                    pids.join(", ")
                )
            }
            Self::NoProcess => f.write_str("no server process with the configured name runs"),
        }
    }
}

/// The outcome of one [`Locator::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// The node's process.
    Pid(u32, Found),
    /// Not known, and why.
    Unknown(Unknown),
}

/// Finds the node's server process (see the module documentation for the order).
#[derive(Debug, Clone)]
pub struct Locator {
    pid_file: Option<PathBuf>,
    listen: Option<Listen>,
    names: Vec<String>,
    proc_root: PathBuf,
    /// The last owner scan, by the set of listening inodes it was for: scanning every
    /// process's descriptors is the expensive part, and the answer holds while the socket does.
    scanned: Option<(BTreeSet<u64>, Owners)>,
}

impl Locator {
    /// A locator by `pid_file` when given, else by the listener of `vault_addr`, else by the
    /// only process named one of `names`.
    pub fn new(pid_file: Option<PathBuf>, vault_addr: Option<&Url>, names: Vec<String>) -> Self {
        Self {
            pid_file,
            listen: vault_addr.and_then(Listen::of),
            names,
            proc_root: PathBuf::from(PROC_ROOT),
            scanned: None,
        }
    }

    /// Reads processes and sockets under `proc_root` instead of `/proc` (tests: fixtures).
    pub fn with_proc_root(mut self, proc_root: PathBuf) -> Self {
        self.proc_root = proc_root;
        self
    }

    /// The listening sockets of the node's address, or `None` without a readable
    /// `/proc/net/tcp` (or without a port to look for).
    fn node_listeners(&self) -> Option<(u16, BTreeSet<u64>)> {
        let listen = self.listen?;
        let net = self.proc_root.join("net");
        let v4 = std::fs::read_to_string(net.join("tcp")).ok()?;
        let v6 = std::fs::read_to_string(net.join("tcp6")).unwrap_or_default();
        let inodes = parse_listeners(&v4)
            .into_iter()
            .chain(parse_listeners(&v6))
            .filter(|(local, _)| listen.matches(*local))
            .map(|(_, inode)| inode)
            .collect();
        Some((listen.port, inodes))
    }

    /// The only live process named one of the names, or why there is none.
    fn only_named(&self, none: Unknown) -> Located {
        let named = pids_named(&self.proc_root, &self.names);
        match named.len() {
            0 => Located::Unknown(none),
            1 => named.first().map_or(Located::Unknown(none), |&p| {
                Located::Pid(p, Found::OnlyNamed)
            }),
            _ => Located::Unknown(Unknown::Ambiguous {
                pids: named.into_iter().collect(),
            }),
        }
    }

    /// Looks for the node's process now.
    pub fn locate(&mut self) -> Located {
        if let Some(f) = &self.pid_file {
            // Authoritative and cheap: read every time (restarts change it).
            return match pid_from_file(f) {
                Some(pid) if alive_in(&self.proc_root, pid) => Located::Pid(pid, Found::PidFile),
                _ => Located::Unknown(Unknown::PidFile(f.clone())),
            };
        }
        let Some((port, inodes)) = self.node_listeners() else {
            return self.only_named(Unknown::NoProcess);
        };
        if inodes.is_empty() {
            // Whatever runs with the name here is not serving the node's address.
            return Located::Unknown(Unknown::NotListening { port });
        }
        let owners = match &self.scanned {
            Some((for_inodes, owners)) if *for_inodes == inodes => owners.clone(),
            _ => {
                let owners = socket_owners(&self.proc_root, &inodes);
                self.scanned = Some((inodes, owners.clone()));
                owners
            }
        };
        let live: BTreeSet<u32> = owners
            .pids
            .iter()
            .copied()
            .filter(|&p| alive_in(&self.proc_root, p))
            .collect();
        if live.is_empty() {
            self.scanned = None;
            return if owners.hidden {
                self.only_named(Unknown::OwnerHidden { port })
            } else {
                // A socket without a visible owner and nothing hidden: it closed meanwhile.
                Located::Unknown(Unknown::NotListening { port })
            };
        }
        // Several holders (a supervisor that passed the socket on): the one with the name.
        let named = pids_named(&self.proc_root, &self.names);
        let pick: Vec<u32> = if live.len() == 1 {
            live.into_iter().collect()
        } else {
            let both: Vec<u32> = live.intersection(&named).copied().collect();
            if both.is_empty() {
                live.into_iter().collect()
            } else {
                both
            }
        };
        match pick.as_slice() {
            [pid] => Located::Pid(*pid, Found::Listener),
            _ => Located::Unknown(Unknown::Ambiguous { pids: pick }),
        }
    }
}

/// The node's process now (as [`Locator::locate`] finds it), for a one-off action such as the
/// restart of a sealed server.
pub fn locate_pid(
    pid_file: Option<&Path>,
    vault_addr: Option<&Url>,
    names: &[String],
) -> Result<u32, Unknown> {
    match Locator::new(pid_file.map(Path::to_path_buf), vault_addr, names.to_vec()).locate() {
        Located::Pid(pid, _) => Ok(pid),
        Located::Unknown(why) => Err(why),
    }
}

/// Sends `signal` to `pid`; whether it was delivered.
pub fn signal(pid: u32, signal: sysinfo::Signal) -> bool {
    let pid = Pid::from_u32(pid);
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(pid)
        .and_then(|p| p.kill_with(signal))
        .unwrap_or(false)
}

/// Whether a process with this pid exists and is not a zombie (Linux `/proc`).
pub fn pid_alive(pid: u32) -> bool {
    alive_in(Path::new(PROC_ROOT), pid)
}

/// One reading of a cgroup v2 directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupReading {
    /// `usage_usec` of `cpu.stat`, in microseconds.
    pub cpu_usage_usec: u64,
    /// `memory.current`, in bytes.
    pub memory_current_bytes: Option<u64>,
    /// `memory.max`, in bytes; `None` for `max` (unlimited) or a missing file.
    pub memory_max_bytes: Option<u64>,
}

/// `usage_usec` from the text of `cpu.stat`.
pub fn parse_cpu_stat(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("usage_usec"))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// The text of `memory.max`: `Some(None)` for `max`, `Some(Some(bytes))`, `None` when garbage.
pub fn parse_memory_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

impl CgroupReading {
    /// Reads the three files under `root`; `None` when `cpu.stat` is missing or unreadable, or
    /// when `memory.current` is and `memory_required` (the default root: only a container's
    /// cgroup has it, the host's root cgroup has `cpu.stat` too).
    pub fn read(root: &Path, memory_required: bool) -> Option<Self> {
        let cpu = std::fs::read_to_string(root.join("cpu.stat")).ok()?;
        let mem = std::fs::read_to_string(root.join("memory.current"))
            .ok()
            .and_then(|m| m.trim().parse().ok());
        if memory_required && mem.is_none() {
            return None;
        }
        let max = std::fs::read_to_string(root.join("memory.max")).ok();
        Some(Self {
            cpu_usage_usec: parse_cpu_stat(&cpu)?,
            memory_current_bytes: mem,
            memory_max_bytes: max.as_deref().and_then(parse_memory_max).flatten(),
        })
    }
}

/// CPU cores used between two cumulative CPU-second readings taken `elapsed_secs` apart.
pub fn cores_between(prev_cpu_secs: f64, now_cpu_secs: f64, elapsed_secs: f64) -> f64 {
    if elapsed_secs <= 0.0 || now_cpu_secs < prev_cpu_secs {
        return 0.0;
    }
    (now_cpu_secs - prev_cpu_secs) / elapsed_secs
}

/// The cgroup v2 path of `pid` (the `0::` line of `/proc/<pid>/cgroup`, relative to the
/// reader's cgroup namespace).
fn cgroup_path(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The memory limit of `pid`'s own cgroup v2 (the lowest `memory.max` from its cgroup up to
/// the root), `None` when unlimited or not readable (cgroup v1, another namespace).
fn process_memory_max(proc_root: &Path, cgroup_mount: &Path, pid: u32) -> Option<u64> {
    let rel = cgroup_path(proc_root, pid)?;
    if rel.starts_with("/..") {
        // Outside the agent's cgroup namespace: not under its mount.
        return None;
    }
    let mut dir = cgroup_mount.join(rel.trim_start_matches('/'));
    let mut lowest: Option<u64> = None;
    while dir.starts_with(cgroup_mount) {
        if let Some(Some(max)) = std::fs::read_to_string(dir.join("memory.max"))
            .ok()
            .as_deref()
            .and_then(parse_memory_max)
        {
            lowest = Some(lowest.map_or(max, |l| l.min(max)));
        }
        if !dir.pop() {
            break;
        }
    }
    lowest
}

/// The figures of one process reading.
#[derive(Debug, Clone, Copy)]
struct ProcessReading {
    pid: u32,
    cores: Option<f64>,
    cpu_seconds: f64,
    memory_bytes: u64,
    memory_limit_bytes: Option<u64>,
}

/// Takes one [`HostStats`] sample per call.
#[derive(Debug)]
pub struct SystemSampler {
    cgroup_root: PathBuf,
    cgroup_explicit: bool,
    cgroup_mount: PathBuf,
    locator: Locator,
    sys: System,
    /// The process followed, and how it was found. Followed while it lives (without pid
    /// file): a restart gives a new process, which is looked for again.
    pid: Option<(u32, Found)>,
    /// The latest CPU reading (when, cumulative seconds) of the followed process.
    prev_process: Option<(Instant, f64)>,
    prev_cgroup: Option<(Instant, f64)>,
    /// The last reason the figures were unknown, so that each is logged once.
    last_unknown: Option<Unknown>,
}

impl SystemSampler {
    /// A sampler reading cgroup v2 under `cgroup_root`, else the process `locator` finds.
    pub fn new(cgroup_root: PathBuf, locator: Locator) -> Self {
        Self {
            cgroup_root,
            cgroup_explicit: false,
            cgroup_mount: PathBuf::from(CGROUP_MOUNT),
            locator,
            sys: System::new(),
            pid: None,
            prev_process: None,
            prev_cgroup: None,
            last_unknown: None,
        }
    }

    /// Takes `cgroup_root` as given by the operator (`--cgroup-root`): its `cpu.stat` alone is
    /// enough, memory then comes from the Vault process when the memory controller is missing.
    pub fn with_explicit_cgroup(mut self, explicit: bool) -> Self {
        self.cgroup_explicit = explicit;
        self
    }

    /// Reads a process's own `memory.max` under `mount` instead of `/sys/fs/cgroup` (tests).
    pub fn with_cgroup_mount(mut self, mount: PathBuf) -> Self {
        self.cgroup_mount = mount;
        self
    }

    /// The pid of the Vault process currently followed, if any.
    pub fn vault_pid(&self) -> Option<u32> {
        self.pid.map(|(p, _)| p)
    }

    /// One sample now.
    pub fn sample(&mut self) -> HostStats {
        self.sample_at(Instant::now())
    }

    /// One sample, `now` being the time of the reading (tests pass their own instants).
    ///
    /// The cgroup's figures count only beside the node's live process: an operator-given
    /// cgroup (`--cgroup-root`) is the node's by the operator's word; the container's own
    /// root only when the node runs in the agent's cgroup (one container for both). A sidecar
    /// sees its own container's cgroup there, not the server's: then the process's figures.
    /// Without a live process there are none: the cgroup may hold other work (the lab's
    /// stress, the agent itself).
    pub fn sample_at(&mut self, now: Instant) -> HostStats {
        let cgroup = CgroupReading::read(&self.cgroup_root, !self.cgroup_explicit);
        let Some(p) = self.sample_process(now) else {
            // Keep the cgroup's rate history honest across the gap.
            self.prev_cgroup = None;
            return HostStats::UNKNOWN;
        };
        let holds_node = self.cgroup_explicit || self.container_holds_only(p.pid);
        match cgroup.filter(|_| holds_node) {
            Some(r) => {
                let mut stats = self.sample_cgroup(r, now);
                stats.pid = Some(p.pid);
                if r.memory_current_bytes.is_none() {
                    // No memory controller in this cgroup: the Vault process's memory instead.
                    stats.memory_used_bytes = Some(p.memory_bytes);
                    stats.memory_limit_bytes = p.memory_limit_bytes;
                }
                stats
            }
            None => HostStats {
                source: HostSource::Process,
                pid: Some(p.pid),
                cpu_usage_cores: p.cores,
                cpu_seconds_total: Some(p.cpu_seconds),
                memory_used_bytes: Some(p.memory_bytes),
                memory_limit_bytes: p.memory_limit_bytes,
            },
        }
    }

    /// Whether the container's cgroup (the implicit root) holds the node `pid`, and no other
    /// server: the agent's own cgroup is the node's, and its figures are not several nodes'.
    fn container_holds_only(&self, pid: u32) -> bool {
        let root = &self.locator.proc_root;
        let mine = cgroup_path(root, std::process::id());
        if mine.is_none() || mine != cgroup_path(root, pid) {
            return false;
        }
        let Ok(procs) = std::fs::read_to_string(self.cgroup_root.join("cgroup.procs")) else {
            return false;
        };
        let servers = pids_named(root, &self.locator.names);
        !procs
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .any(|q| q != pid && servers.contains(&q))
    }

    fn sample_cgroup(&mut self, r: CgroupReading, now: Instant) -> HostStats {
        let secs = r.cpu_usage_usec as f64 / 1e6;
        let cores = self.prev_cgroup.map(|(t, prev)| {
            cores_between(prev, secs, now.saturating_duration_since(t).as_secs_f64())
        });
        self.prev_cgroup = Some((now, secs));
        HostStats {
            source: HostSource::Cgroup,
            pid: None,
            cpu_usage_cores: cores,
            cpu_seconds_total: Some(secs),
            memory_used_bytes: r.memory_current_bytes,
            memory_limit_bytes: r.memory_max_bytes,
        }
    }

    /// The process to read now: the one followed while it lives, else a new look.
    fn locate(&mut self) -> Option<(u32, Found)> {
        if let Some((pid, found)) = self.pid
            && found != Found::PidFile
            && alive_in(&self.locator.proc_root, pid)
        {
            return Some((pid, found));
        }
        match self.locator.locate() {
            Located::Pid(pid, found) => {
                if self.pid.map(|(p, _)| p) != Some(pid) {
                    tracing::info!(pid, how = ?found, "following the node's server process for its figures");
                }
                self.last_unknown = None;
                Some((pid, found))
            }
            Located::Unknown(why) => {
                if self.last_unknown.as_ref() != Some(&why) {
                    match why {
                        // The node being down is told by the probe; this only says why the
                        // figures went blank.
                        Unknown::NotListening { .. } | Unknown::PidFile(_) => {
                            tracing::info!(reason = %why, "the node's CPU and memory are unknown")
                        }
                        _ => tracing::warn!(reason = %why, "the node's CPU and memory are unknown"),
                    }
                    self.last_unknown = Some(why);
                }
                None
            }
        }
    }

    fn sample_process(&mut self, now: Instant) -> Option<ProcessReading> {
        let Some((pid, found)) = self.locate() else {
            self.pid = None;
            return None;
        };
        if self.pid.map(|(p, _)| p) != Some(pid) {
            // A new process: forget the old one so its CPU history does not leak in.
            self.sys = System::new();
            self.prev_process = None;
        }
        self.pid = Some((pid, found));
        let spid = Pid::from_u32(pid);
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[spid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let Some(p) = self.sys.process(spid) else {
            // Gone between the look and the reading: unknown, looked for again next time.
            self.pid = None;
            return None;
        };
        let (cpu_seconds, memory_bytes) = (p.accumulated_cpu_time() as f64 / 1000.0, p.memory());
        let cores = self.prev_process.map(|(t, prev)| {
            cores_between(
                prev,
                cpu_seconds,
                now.saturating_duration_since(t).as_secs_f64(),
            )
        });
        self.prev_process = Some((now, cpu_seconds));
        let limit =
            process_memory_max(&self.locator.proc_root, &self.cgroup_mount, pid).or_else(|| {
                // No cgroup limit: the host's memory is what the process may use.
                self.sys.refresh_memory();
                Some(self.sys.total_memory()).filter(|t| *t > 0)
            });
        Some(ProcessReading {
            pid,
            cores,
            cpu_seconds,
            memory_bytes,
            memory_limit_bytes: limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write_cgroup(dir: &Path, usage_usec: u64, current: u64, max: &str) {
        std::fs::write(
            dir.join("cpu.stat"),
            format!("usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\nnr_periods 0\n"),
        )
        .unwrap();
        std::fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
        std::fs::write(dir.join("memory.max"), format!("{max}\n")).unwrap();
    }

    /// A fake `/proc`: processes with a name, descriptors and state, and the socket tables.
    struct FakeProc(tempfile::TempDir);

    /// The header line of `/proc/net/tcp`.
    const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    impl FakeProc {
        fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join("net")).unwrap();
            std::fs::write(d.path().join("net/tcp"), TCP_HEADER).unwrap();
            std::fs::write(d.path().join("net/tcp6"), TCP_HEADER).unwrap();
            Self(d)
        }
        fn root(&self) -> PathBuf {
            self.0.path().to_path_buf()
        }
        /// A live process `pid` called `comm` holding the sockets `inodes`.
        fn process(&self, pid: u32, comm: &str, inodes: &[u64]) {
            let dir = self.0.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(dir.join("stat"), format!("{pid} ({comm}) S 1 2 3\n")).unwrap();
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
            for (i, inode) in inodes.iter().enumerate() {
                std::os::unix::fs::symlink(
                    format!("socket:[{inode}]"),
                    dir.join(format!("fd/{}", i + 3)),
                )
                .unwrap();
            }
        }
        /// `pid` is a zombie now.
        fn zombie(&self, pid: u32) {
            std::fs::write(
                self.0.path().join(format!("{pid}/stat")),
                format!("{pid} (x) Z 1\n"),
            )
            .unwrap();
        }
        /// A process whose descriptors the agent may not read (another user's).
        fn hidden(&self, pid: u32, comm: &str) {
            self.process(pid, comm, &[]);
            let fd = self.0.path().join(format!("{pid}/fd"));
            std::fs::remove_dir_all(&fd).unwrap();
            // A file where the directory was: read_dir fails, the path exists.
            std::fs::write(&fd, "").unwrap();
        }
        /// A listening IPv4 socket on `ip:port` with `inode`.
        fn listen4(&self, ip: Ipv4Addr, port: u16, inode: u64) {
            let hex = format!("{:08X}", u32::from_ne_bytes(ip.octets()));
            self.append("tcp", &format!("   0: {hex}:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 {inode} 1 0000000000000000 100 0 0 10 0\n"));
        }
        /// A listening IPv6 socket on `[ip]:port` with `inode`.
        fn listen6(&self, ip: Ipv6Addr, port: u16, inode: u64) {
            let hex: String = ip
                .octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            self.append("tcp6", &format!("   0: {hex}:{port:04X} 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 {inode} 1 0000000000000000 100 0 0 10 0\n"));
        }
        /// A connected (not listening) socket from `port`.
        fn connected4(&self, port: u16, inode: u64) {
            self.append("tcp", &format!("   1: 0100007F:{port:04X} 0100007F:D431 01 00000000:00000000 00:00000000 00000000   999        0 {inode} 1 0000000000000000 100 0 0 10 0\n"));
        }
        fn append(&self, table: &str, line: &str) {
            let p = self.0.path().join("net").join(table);
            let mut text = std::fs::read_to_string(&p).unwrap();
            text.push_str(line);
            std::fs::write(p, text).unwrap();
        }
    }

    fn locator(proc: &FakeProc, addr: &str) -> Locator {
        Locator::new(
            None,
            Some(&Url::parse(addr).unwrap()),
            vec!["bao".into(), "vault".into()],
        )
        .with_proc_root(proc.root())
    }

    #[test]
    fn the_kernels_socket_tables_parse_into_listening_addresses_and_inodes() {
        let p = FakeProc::new();
        p.listen4(Ipv4Addr::LOCALHOST, 8200, 111);
        p.connected4(8200, 112);
        p.listen6(Ipv6Addr::UNSPECIFIED, 8300, 113);
        let v4 = parse_listeners(&std::fs::read_to_string(p.root().join("net/tcp")).unwrap());
        assert_eq!(
            v4,
            vec![("127.0.0.1:8200".parse().unwrap(), 111)],
            "only LISTEN rows"
        );
        let v6 = parse_listeners(&std::fs::read_to_string(p.root().join("net/tcp6")).unwrap());
        assert_eq!(v6, vec![("[::]:8300".parse().unwrap(), 113)]);
        // A real row of this host's kernel (little-endian words), 127.0.0.1:8200.
        let real = "  sl  local_address rem_address   st\n   0: 0100007F:2008 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_listeners(real),
                vec![("127.0.0.1:8200".parse().unwrap(), 4242)]
            );
        }
    }

    #[test]
    fn a_listener_serves_the_nodes_address_by_port_and_address() {
        let l = |addr: &str| Listen::of(&Url::parse(addr).unwrap()).unwrap();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ip = l("http://127.0.0.2:8200");
        assert!(ip.matches(at("127.0.0.2:8200")));
        assert!(ip.matches(at("0.0.0.0:8200")), "all addresses");
        assert!(ip.matches(at("[::ffff:127.0.0.2]:8200")), "v4-mapped");
        assert!(
            !ip.matches(at("127.0.0.1:8200")),
            "another node on another loopback address"
        );
        assert!(!ip.matches(at("127.0.0.2:8201")));
        let local = l("https://localhost:8200");
        assert!(local.matches(at("[::1]:8200")) && local.matches(at("127.0.0.1:8200")));
        assert!(!local.matches(at("10.0.0.5:8200")));
        let name = l("https://vault-0.vault-internal");
        assert_eq!(name.port, 443, "the scheme's port");
        assert!(name.matches(at("10.0.0.5:443")));
    }

    #[test]
    fn the_node_is_the_process_listening_on_its_address_among_several_servers() {
        let p = FakeProc::new();
        p.listen4(Ipv4Addr::LOCALHOST, 8200, 501);
        p.listen4(Ipv4Addr::LOCALHOST, 8202, 502);
        p.process(100, "bao", &[502]);
        p.process(200, "bao", &[501]);
        p.process(300, "sshd", &[]);
        assert_eq!(
            locator(&p, "http://127.0.0.1:8200").locate(),
            Located::Pid(200, Found::Listener)
        );
        assert_eq!(
            locator(&p, "http://127.0.0.1:8202").locate(),
            Located::Pid(100, Found::Listener)
        );
    }

    #[test]
    fn a_node_that_does_not_listen_has_no_process_even_if_another_server_runs() {
        let p = FakeProc::new();
        // The other node's bao is alive; this node's (port 8200) was killed.
        p.listen4(Ipv4Addr::LOCALHOST, 8202, 502);
        p.process(100, "bao", &[502]);
        assert_eq!(
            locator(&p, "http://127.0.0.1:8200").locate(),
            Located::Unknown(Unknown::NotListening { port: 8200 })
        );
    }

    #[test]
    fn a_hidden_listener_owner_is_the_only_named_process_or_unknown_with_the_candidates() {
        let p = FakeProc::new();
        p.listen4(Ipv4Addr::UNSPECIFIED, 8200, 501);
        p.hidden(100, "bao");
        let mut l = locator(&p, "http://127.0.0.1:8200");
        assert_eq!(l.locate(), Located::Pid(100, Found::OnlyNamed));
        p.hidden(200, "bao");
        let why = l.locate();
        assert_eq!(
            why,
            Located::Unknown(Unknown::Ambiguous {
                pids: vec![100, 200]
            })
        );
        let Located::Unknown(why) = why else {
            unreachable!()
        };
        assert_eq!(
            why.to_string(),
            "cannot tell which server is this node's: pids 100, 200; give --vault-pid-file"
        );
        let q = FakeProc::new();
        q.listen4(Ipv4Addr::UNSPECIFIED, 8200, 501);
        q.hidden(300, "java");
        assert_eq!(
            locator(&q, "http://127.0.0.1:8200").locate(),
            Located::Unknown(Unknown::OwnerHidden { port: 8200 })
        );
    }

    #[test]
    fn several_holders_of_the_socket_are_narrowed_to_the_named_one() {
        let p = FakeProc::new();
        p.listen6(Ipv6Addr::UNSPECIFIED, 8200, 501);
        p.process(1, "systemd", &[501]);
        p.process(700, "bao", &[501]);
        assert_eq!(
            locator(&p, "http://127.0.0.1:8200").locate(),
            Located::Pid(700, Found::Listener)
        );
        p.process(800, "bao", &[501]);
        assert_eq!(
            locator(&p, "http://127.0.0.1:8200").locate(),
            Located::Unknown(Unknown::Ambiguous {
                pids: vec![700, 800]
            })
        );
    }

    #[test]
    fn without_socket_tables_only_a_single_named_process_counts() {
        let p = FakeProc::new();
        std::fs::remove_file(p.root().join("net/tcp")).unwrap();
        p.process(100, "bao", &[]);
        let mut l = locator(&p, "http://127.0.0.1:8200");
        assert_eq!(l.locate(), Located::Pid(100, Found::OnlyNamed));
        p.process(200, "vault", &[]);
        assert_eq!(
            l.locate(),
            Located::Unknown(Unknown::Ambiguous {
                pids: vec![100, 200]
            })
        );
        p.zombie(100);
        p.zombie(200);
        assert_eq!(l.locate(), Located::Unknown(Unknown::NoProcess));
    }

    #[test]
    fn a_pid_file_is_authoritative_and_a_dead_pid_in_it_is_unknown() {
        let p = FakeProc::new();
        p.process(100, "bao", &[]);
        let file = p.root().join("bao.pid");
        std::fs::write(&file, "100\n").unwrap();
        let mut l = Locator::new(Some(file.clone()), None, vec![]).with_proc_root(p.root());
        assert_eq!(l.locate(), Located::Pid(100, Found::PidFile));
        p.zombie(100);
        assert_eq!(l.locate(), Located::Unknown(Unknown::PidFile(file)));
    }

    #[test]
    fn cgroup_files_parse_including_unlimited_memory() {
        assert_eq!(parse_cpu_stat("user_usec 5\nusage_usec 1234\n"), Some(1234));
        assert_eq!(parse_cpu_stat("nothing here"), None);
        assert_eq!(parse_memory_max("max\n"), Some(None));
        assert_eq!(parse_memory_max("536870912\n"), Some(Some(536_870_912)));
        assert_eq!(parse_memory_max("lots"), None);
    }

    #[test]
    fn a_process_memory_limit_is_the_lowest_memory_max_of_its_cgroup_and_ancestors() {
        let p = FakeProc::new();
        p.process(100, "bao", &[]);
        std::fs::write(
            p.root().join("100/cgroup"),
            "0::/system.slice/openbao.service\n",
        )
        .unwrap();
        let mount = tempfile::tempdir().unwrap();
        let unit = mount.path().join("system.slice/openbao.service");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(unit.join("memory.max"), "max\n").unwrap();
        std::fs::write(mount.path().join("system.slice/memory.max"), "1073741824\n").unwrap();
        assert_eq!(
            process_memory_max(&p.root(), mount.path(), 100),
            Some(1 << 30)
        );
        std::fs::write(unit.join("memory.max"), "536870912\n").unwrap();
        assert_eq!(
            process_memory_max(&p.root(), mount.path(), 100),
            Some(512 << 20)
        );
        std::fs::remove_file(unit.join("memory.max")).unwrap();
        std::fs::remove_file(mount.path().join("system.slice/memory.max")).unwrap();
        assert_eq!(
            process_memory_max(&p.root(), mount.path(), 100),
            None,
            "unlimited"
        );
    }

    fn no_process() -> Locator {
        Locator::new(None, None, vec!["no-such-process-xyz".into()])
    }

    /// A locator whose pid file (in `dir`) names this test process.
    fn this_process(dir: &Path) -> Locator {
        let pid_file = dir.join("self.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        Locator::new(Some(pid_file), None, vec![])
    }

    #[test]
    fn a_containers_cgroup_is_the_nodes_only_while_the_node_runs_in_it_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let (me, node) = (std::process::id(), child.id());
        // A fake /proc for where processes are (the figures are the real processes').
        let p = FakeProc::new();
        p.process(me, "vault-dr-agent", &[]);
        p.process(node, "bao", &[]);
        p.process(999_999, "bao", &[]);
        let in_cgroup = |pid: u32, path: &str| {
            std::fs::write(
                p.root().join(format!("{pid}/cgroup")),
                format!("0::{path}\n"),
            )
            .unwrap();
        };
        in_cgroup(me, "/");
        in_cgroup(node, "/");
        let cg = tempfile::tempdir().unwrap();
        write_cgroup(cg.path(), 2_000_000, 300 << 20, "max");
        let procs = |pids: &[u32]| {
            let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
            std::fs::write(cg.path().join("cgroup.procs"), text).unwrap();
        };
        procs(&[1, me, node]);
        let pid_file = p.root().join("bao.pid");
        std::fs::write(&pid_file, format!("{node}\n")).unwrap();
        let mut s = SystemSampler::new(
            cg.path().into(),
            Locator::new(Some(pid_file), None, vec!["bao".into()]).with_proc_root(p.root()),
        );
        let h = s.sample();
        assert_eq!((h.source, h.pid), (HostSource::Cgroup, Some(node)), "{h:?}");
        assert_eq!(h.memory_used_bytes, Some(300 << 20), "the container's");
        // Another server in the same container: its figures would be both's.
        procs(&[1, me, node, 999_999]);
        let h = s.sample();
        assert_eq!(
            (h.source, h.pid),
            (HostSource::Process, Some(node)),
            "{h:?}"
        );
        // A sidecar: the agent's container is not the server's.
        procs(&[1, me]);
        in_cgroup(node, "/../server-container");
        let h = s.sample();
        assert_eq!(
            (h.source, h.pid),
            (HostSource::Process, Some(node)),
            "{h:?}"
        );
        // The server dies: nothing, though the cgroup files are still there.
        in_cgroup(node, "/");
        procs(&[1, me, node]);
        assert_eq!(s.sample().source, HostSource::Cgroup);
        child.kill().unwrap();
        child.wait().unwrap();
        p.zombie(node);
        assert_eq!(s.sample(), HostStats::UNKNOWN);
    }

    #[test]
    fn an_explicit_cgroup_without_memory_controller_still_gives_its_cpu() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 4000000\n").unwrap();
        // The default root needs memory.current (the host's root cgroup has cpu.stat too).
        let mut default = SystemSampler::new(dir.path().into(), no_process());
        assert_ne!(default.sample().source, HostSource::Cgroup);
        // Given by the operator, cpu.stat is enough (stress in that cgroup becomes visible).
        let mut explicit = SystemSampler::new(dir.path().into(), this_process(dir.path()))
            .with_explicit_cgroup(true);
        let t0 = Instant::now();
        let first = explicit.sample_at(t0);
        assert_eq!(first.source, HostSource::Cgroup);
        assert_eq!(first.cpu_seconds_total, Some(4.0));
        assert_eq!(first.pid, Some(std::process::id()));
        assert!(
            first.memory_used_bytes.is_some_and(|b| b > 0),
            "no memory controller: the process's memory"
        );
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 5600000\n").unwrap();
        let second = explicit.sample_at(t0 + Duration::from_secs(2));
        assert!(
            (second.cpu_usage_cores.unwrap() - 0.8).abs() < 1e-9,
            "{second:?}"
        );
    }

    #[test]
    fn a_cgroup_directory_is_read_and_cpu_usage_is_a_rate() {
        let dir = tempfile::tempdir().unwrap();
        write_cgroup(dir.path(), 2_000_000, 100 << 20, "536870912");
        // The agent's container, where the node runs too (here: this test process as both).
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let mut s = SystemSampler::new(dir.path().into(), this_process(dir.path()));
        let t0 = Instant::now();
        let first = s.sample_at(t0);
        assert_eq!(first.source, HostSource::Cgroup);
        assert_eq!(first.cpu_seconds_total, Some(2.0));
        assert_eq!(
            first.cpu_usage_cores, None,
            "no rate before the second reading"
        );
        assert_eq!(first.memory_used_bytes, Some(100 << 20));
        assert_eq!(first.memory_limit_bytes, Some(512 << 20));

        // Half a core for two seconds.
        write_cgroup(dir.path(), 3_000_000, 120 << 20, "max");
        let second = s.sample_at(t0 + Duration::from_secs(2));
        assert!(
            (second.cpu_usage_cores.unwrap() - 0.5).abs() < 1e-9,
            "{second:?}"
        );
        assert_eq!(second.memory_limit_bytes, None);
        assert_eq!(second.memory_used_bytes, Some(120 << 20));
    }

    #[test]
    fn without_cgroup_files_the_process_from_the_pid_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let mut s = SystemSampler::new(
            dir.path().join("no-cgroup"),
            Locator::new(Some(pid_file), None, vec![]),
        );
        let t0 = Instant::now();
        let h = s.sample_at(t0);
        assert_eq!(h.source, HostSource::Process);
        assert_eq!(h.pid, Some(std::process::id()));
        assert_eq!(h.cpu_usage_cores, None, "no rate before the second reading");
        let used = h.memory_used_bytes.unwrap();
        assert!(used > 0);
        assert!(h.memory_limit_bytes.unwrap() >= used);
        assert_eq!(s.vault_pid(), Some(std::process::id()));
        let again = s.sample_at(t0 + Duration::from_secs(1));
        assert!(again.cpu_usage_cores.is_some_and(|c| c >= 0.0), "{again:?}");
    }

    #[test]
    fn without_a_process_the_figures_are_unknown_never_the_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SystemSampler::new(dir.path().join("none"), no_process());
        assert_eq!(s.sample(), HostStats::UNKNOWN);
        assert_eq!(s.vault_pid(), None);
    }

    #[test]
    fn a_followed_process_that_dies_leaves_the_figures_unknown() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        let mut s = SystemSampler::new(
            dir.path().join("no-cgroup"),
            Locator::new(Some(pid_file), None, vec![]),
        );
        assert_eq!(s.sample().pid, Some(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(s.sample(), HostStats::UNKNOWN);
    }

    #[test]
    fn cores_are_zero_for_a_counter_reset_or_no_time() {
        assert_eq!(cores_between(5.0, 4.0, 1.0), 0.0);
        assert_eq!(cores_between(1.0, 2.0, 0.0), 0.0);
        assert!((cores_between(1.0, 2.0, 4.0) - 0.25).abs() < 1e-12);
    }
}
