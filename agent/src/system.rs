//! Host and process figures for the report: cgroup v2 files inside a container (`cpu.stat`,
//! `memory.current`, `memory.max`), otherwise the Vault process (found by pid file or by name)
//! through `sysinfo`, otherwise the whole host.
//!
//! "Inside a container" means the cgroup v2 root the agent sees holds `memory.current`: the
//! real root cgroup of a host has none, a container's namespaced root has one.

use std::path::{Path, PathBuf};
use std::time::Instant;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use vault_dr_common::HostStats;
use vault_dr_common::report::HostSource;

/// How many samples to wait between two scans of the process table for the Vault process.
const RESCAN_EVERY: u32 = 10;

/// The pid in `pid_file`, if it reads as one.
fn pid_from_file(pid_file: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    text.trim().parse::<u32>().ok().map(Pid::from_u32)
}

/// Scans the process table for the first of `names` (lowest pid wins). A throw-away `System`
/// keeps the full table out of memory between scans.
fn pid_by_name(names: &[String]) -> Option<Pid> {
    let mut all = System::new();
    all.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    names.iter().find_map(|name| {
        all.processes_by_exact_name(name.as_ref())
            .map(sysinfo::Process::pid)
            .min()
    })
}

/// The Vault process: the pid in `pid_file` when one is given (authoritative: it is read every
/// time, restarts change it), else the first of `names` running.
pub fn locate_pid(pid_file: Option<&Path>, names: &[String]) -> Option<u32> {
    match pid_file {
        Some(f) => pid_from_file(f),
        None => pid_by_name(names),
    }
    .map(|p| p.as_u32())
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
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
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

/// Takes one [`HostStats`] sample per call.
#[derive(Debug)]
pub struct SystemSampler {
    cgroup_root: PathBuf,
    cgroup_explicit: bool,
    pid_file: Option<PathBuf>,
    names: Vec<String>,
    sys: System,
    pid: Option<Pid>,
    since_scan: u32,
    prev_cgroup: Option<(Instant, f64)>,
    prev_host: Option<Instant>,
    host_cpu_seconds: f64,
}

impl SystemSampler {
    /// A sampler reading cgroup v2 under `cgroup_root`, else the process from `pid_file` or
    /// with one of `names`, else the host.
    pub fn new(cgroup_root: PathBuf, pid_file: Option<PathBuf>, names: Vec<String>) -> Self {
        Self {
            cgroup_root,
            cgroup_explicit: false,
            pid_file,
            names,
            sys: System::new(),
            pid: None,
            since_scan: RESCAN_EVERY,
            prev_cgroup: None,
            prev_host: None,
            host_cpu_seconds: 0.0,
        }
    }

    /// Takes `cgroup_root` as given by the operator (`--cgroup-root`): its `cpu.stat` alone is
    /// enough, memory then comes from the Vault process when the memory controller is missing.
    pub fn with_explicit_cgroup(mut self, explicit: bool) -> Self {
        self.cgroup_explicit = explicit;
        self
    }

    /// The pid of the Vault process currently followed, if any.
    pub fn vault_pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_u32())
    }

    /// One sample now.
    pub fn sample(&mut self) -> HostStats {
        self.sample_at(Instant::now())
    }

    /// One sample, `now` being the time of the reading (tests pass their own instants).
    pub fn sample_at(&mut self, now: Instant) -> HostStats {
        if let Some(r) = CgroupReading::read(&self.cgroup_root, !self.cgroup_explicit) {
            let mut stats = self.sample_cgroup(r, now);
            if r.memory_current_bytes.is_none() {
                // No memory controller in this cgroup: the Vault process's memory instead.
                if let Some(p) = self.sample_process() {
                    stats.memory_used_bytes = p.memory_used_bytes;
                    stats.memory_limit_bytes = p.memory_limit_bytes;
                }
            }
            return stats;
        }
        if let Some(stats) = self.sample_process() {
            return stats;
        }
        self.sample_host(now)
    }

    fn sample_cgroup(&mut self, r: CgroupReading, now: Instant) -> HostStats {
        let secs = r.cpu_usage_usec as f64 / 1e6;
        let cores = self
            .prev_cgroup
            .map(|(t, prev)| {
                cores_between(prev, secs, now.saturating_duration_since(t).as_secs_f64())
            })
            .unwrap_or(0.0);
        self.prev_cgroup = Some((now, secs));
        HostStats {
            source: HostSource::Cgroup,
            cpu_usage_cores: cores,
            cpu_seconds_total: secs,
            memory_used_bytes: r.memory_current_bytes.unwrap_or(0),
            memory_limit_bytes: r.memory_max_bytes,
        }
    }

    fn locate(&mut self) -> Option<Pid> {
        if self.pid_file.is_some() {
            // The pid file is authoritative and cheap: read it every time (restarts change it).
            return pid_from_file(self.pid_file.as_deref()?);
        }
        if self.pid.is_none() {
            if self.since_scan < RESCAN_EVERY {
                self.since_scan += 1;
                return None;
            }
            self.since_scan = 0;
            self.pid = pid_by_name(&self.names);
        }
        self.pid
    }

    fn sample_process(&mut self) -> Option<HostStats> {
        let pid = self.locate()?;
        if self.pid != Some(pid) {
            // A new process: forget the old one so its CPU history does not leak in.
            self.sys = System::new();
            self.pid = Some(pid);
        }
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let Some(p) = self.sys.process(pid) else {
            self.pid = None;
            self.since_scan = RESCAN_EVERY;
            return None;
        };
        let (cores, cpu_secs, mem) = (
            f64::from(p.cpu_usage()) / 100.0,
            p.accumulated_cpu_time() as f64 / 1000.0,
            p.memory(),
        );
        self.sys.refresh_memory();
        let total = self.sys.total_memory();
        Some(HostStats {
            source: HostSource::Process,
            cpu_usage_cores: cores,
            cpu_seconds_total: cpu_secs,
            memory_used_bytes: mem,
            memory_limit_bytes: (total > 0).then_some(total),
        })
    }

    fn sample_host(&mut self, now: Instant) -> HostStats {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let ncpu = self.sys.cpus().len().max(1) as f64;
        let cores = f64::from(self.sys.global_cpu_usage()) / 100.0 * ncpu;
        if let Some(prev) = self.prev_host {
            self.host_cpu_seconds += cores * now.saturating_duration_since(prev).as_secs_f64();
        }
        self.prev_host = Some(now);
        let total = self.sys.total_memory();
        HostStats {
            source: HostSource::Host,
            cpu_usage_cores: cores,
            cpu_seconds_total: self.host_cpu_seconds,
            memory_used_bytes: self.sys.used_memory(),
            memory_limit_bytes: (total > 0).then_some(total),
        }
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

    #[test]
    fn cgroup_files_parse_including_unlimited_memory() {
        assert_eq!(parse_cpu_stat("user_usec 5\nusage_usec 1234\n"), Some(1234));
        assert_eq!(parse_cpu_stat("nothing here"), None);
        assert_eq!(parse_memory_max("max\n"), Some(None));
        assert_eq!(parse_memory_max("536870912\n"), Some(Some(536_870_912)));
        assert_eq!(parse_memory_max("lots"), None);
    }

    #[test]
    fn an_explicit_cgroup_without_memory_controller_still_gives_its_cpu() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 4000000\n").unwrap();
        // The default root needs memory.current (the host's root cgroup has cpu.stat too).
        let mut default = SystemSampler::new(dir.path().into(), None, vec![]);
        assert_ne!(default.sample().source, HostSource::Cgroup);
        // Given by the operator, cpu.stat is enough (stress in that cgroup becomes visible).
        let mut explicit =
            SystemSampler::new(dir.path().into(), None, vec![]).with_explicit_cgroup(true);
        let t0 = Instant::now();
        let first = explicit.sample_at(t0);
        assert_eq!(first.source, HostSource::Cgroup);
        assert_eq!(first.cpu_seconds_total, 4.0);
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 5600000\n").unwrap();
        let second = explicit.sample_at(t0 + Duration::from_secs(2));
        assert!((second.cpu_usage_cores - 0.8).abs() < 1e-9, "{second:?}");
    }

    #[test]
    fn a_cgroup_directory_is_read_and_cpu_usage_is_a_rate() {
        let dir = tempfile::tempdir().unwrap();
        write_cgroup(dir.path(), 2_000_000, 100 << 20, "536870912");
        let mut s = SystemSampler::new(dir.path().into(), None, vec!["bao".into()]);
        let t0 = Instant::now();
        let first = s.sample_at(t0);
        assert_eq!(first.source, HostSource::Cgroup);
        assert_eq!(first.cpu_seconds_total, 2.0);
        assert_eq!(
            first.cpu_usage_cores, 0.0,
            "no rate before the second reading"
        );
        assert_eq!(first.memory_used_bytes, 100 << 20);
        assert_eq!(first.memory_limit_bytes, Some(512 << 20));

        // Half a core for two seconds.
        write_cgroup(dir.path(), 3_000_000, 120 << 20, "max");
        let second = s.sample_at(t0 + Duration::from_secs(2));
        assert!((second.cpu_usage_cores - 0.5).abs() < 1e-9, "{second:?}");
        assert_eq!(second.memory_limit_bytes, None);
        assert_eq!(second.memory_used_bytes, 120 << 20);
    }

    #[test]
    fn without_cgroup_files_the_process_from_the_pid_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let mut s = SystemSampler::new(dir.path().join("no-cgroup"), Some(pid_file), vec![]);
        let h = s.sample();
        assert_eq!(h.source, HostSource::Process);
        assert!(h.memory_used_bytes > 0);
        assert!(h.memory_limit_bytes.unwrap() >= h.memory_used_bytes);
        assert_eq!(s.vault_pid(), Some(std::process::id()));
    }

    #[test]
    fn without_a_process_the_host_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SystemSampler::new(
            dir.path().join("none"),
            None,
            vec!["no-such-process-xyz".into()],
        );
        let h = s.sample();
        assert_eq!(h.source, HostSource::Host);
        assert!(h.memory_used_bytes > 0);
    }

    #[test]
    fn cores_are_zero_for_a_counter_reset_or_no_time() {
        assert_eq!(cores_between(5.0, 4.0, 1.0), 0.0);
        assert_eq!(cores_between(1.0, 2.0, 0.0), 0.0);
        assert!((cores_between(1.0, 2.0, 4.0) - 0.25).abs() < 1e-12);
    }
}
