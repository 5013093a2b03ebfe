//! [`DrGroup`]: a whole DR group on one machine, for `vault-dr drill`, `vault-dr bench rto` and
//! the fault tests: N single-node OpenBao clusters (shared static seal, fast election), the DR
//! token in each, one `vault-dr-agent` PROCESS per node, K `vault-dr coordinator` PROCESSES
//! (local coordination file, one shared store, the local traffic forwarder on a fixed port, a
//! fast policy), and optionally a cgroup v2 per cluster holding its `bao` process.
//!
//! Every process runs under a [`ChildGuard`], so dropping the group (also during a panic or
//! after Ctrl-C unwinds the drill) kills everything; the run directory and the cgroups are
//! removed too unless [`GroupSpec::keep`] is set.
//!
//! [`Placement`] is the hook for network-namespace fault tests: per cluster, a command prefix
//! (`ip netns exec NS`) and a bind IP for the cluster's agent. The agents use it here; the
//! cluster processes are started by [`LabCluster::start_group_with`] on loopback.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use url::Url;
use vault_dr_agent::replication::raft::plan::Suffrage;
use vault_dr_common::Secret;
use vault_dr_coordinator::config::{
    ConfigFile, CoordinationBackend, CoordinationFile, StoreFile, TrafficBackend, TrafficFile,
};

use super::LabCluster;
use super::coordinator_file::{coordinator_file, failover_policy, write_coordinator_file};
use super::error::LabError;
use super::openbao::NodeHost;
use super::ports;
use super::process::ChildGuard;
use super::tools::built_binary;
use super::wait::{try_wait_for, try_wait_for_blocking};

/// How long a coordinator may take to listen after it started.
const COORDINATOR_LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the group may take to be ready after the clusters started.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How a secondary's agent restores pulled snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Restore every pulled snapshot at once (warm standby).
    #[default]
    Continuous,
    /// Keep snapshots on disk; restore the newest at promotion.
    OnPromotion,
}

impl RestoreMode {
    /// The agent flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continuous => "continuous",
            Self::OnPromotion => "on-promotion",
        }
    }
}

/// How the coordinator promotes (`[policy] promotion`): the coordinator's own type.
pub use vault_dr_common::PromotionMode;

/// Where one cluster's processes run: the IP its `bao` and its agent bind, and a command
/// prefix (e.g. `ip netns exec vdr-s1`) both are started through. The default is the host's
/// loopback without a prefix. The same type as the lab's [`NodeHost`].
pub type Placement = NodeHost;

/// What to start.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// Cluster names; the first is the initial primary.
    pub clusters: Vec<String>,
    /// Coordinator processes (at least 1).
    pub coordinators: usize,
    /// Clusters the operator excludes from promotion.
    pub excluded: Vec<String>,
    /// Snapshot restore mode of the secondaries.
    pub restore: RestoreMode,
    /// Promotion mode of the coordinators (`None`: the config key is left out).
    pub promotion: Option<PromotionMode>,
    /// `[policy.degraded]` (`None`: the rule off).
    pub degraded: Option<vault_dr_coordinator::config::DegradedFile>,
    /// `policy.max_lag` (`None`: the coordinator's default).
    pub max_lag: Option<Duration>,
    /// `policy.promote_timeout` (`None`: the coordinator's default).
    pub promote_timeout: Option<Duration>,
    /// How often secondaries pull a snapshot.
    pub snapshot_interval: Duration,
    /// Agents' probe and report interval.
    pub agent_interval: Duration,
    /// Start the local traffic forwarder (the stable client address).
    pub traffic: bool,
    /// Use MongoDB instead of the shared embedded store.
    pub mongodb_uri: Option<Secret>,
    /// The MongoDB database (default: `vault_dr_drill_<pid>`).
    pub mongodb_database: Option<String>,
    /// Snapshot replication with the DR token (the default). Without, no cluster gets the DR
    /// token, and neither the agents nor the coordinators have a Vault token.
    pub replication: bool,
    /// Put each cluster's `bao` into a cgroup v2 of its own and give its agent `--cgroup-root`.
    pub cgroups: bool,
    /// Per cluster placement (missing: [`Placement::default`]).
    pub placements: BTreeMap<String, Placement>,
    /// The address the coordinators listen on (agents in a network namespace need one they
    /// can reach; the default is 127.0.0.1).
    pub coordinator_ip: IpAddr,
    /// Run directory (None: a fresh temporary one).
    pub dir: Option<PathBuf>,
    /// Keep the run directory when the group is dropped.
    pub keep: bool,
    /// Coordinator policy: probe interval.
    pub probe_interval: Duration,
    /// Coordinator policy: consecutive agreeing ticks before the primary is down.
    pub confirm: u32,
    /// Coordinator policy: report TTL.
    pub report_ttl: Duration,
    /// Coordinator policy: cooldown after a failover.
    pub cooldown: Duration,
    /// Every agent serves its node's client address through the write gate
    /// (`--gate-listen` on [`crate::LabNode::client_addr`]); the coordinators, the other
    /// agents and the clients use that address. The lab itself keeps the node's own.
    pub gate: bool,
    /// Every agent runs with `--vault-restart signal`: a superseded primary's sealed server
    /// is SIGTERMed, to be started again by its supervisor ([`crate::LabNode::supervise`]).
    pub vault_restart: bool,
    /// The coordinators' `[traffic]` table instead of the local forwarder's (e.g. the
    /// Kubernetes Service switch, with `traffic: false`).
    pub traffic_file: Option<TrafficFile>,
    /// Per cluster, the pod labels the Kubernetes Service switch selects.
    pub selectors: BTreeMap<String, BTreeMap<String, String>>,
    /// Added to every coordinator's environment (e.g. `KUBECONFIG`).
    pub coordinator_env: Vec<(String, String)>,
    /// Raft replication instead of snapshots (`None`: snapshots when `replication`): the
    /// group is one raft, the first cluster's nodes its voters, every other node a non-voter,
    /// every `bao` under `vault-dr-launch` and every agent `--replication raft`.
    pub raft: Option<RaftLayout>,
    /// Where `vault-dr` and `vault-dr-agent` are taken from (e.g. another build, for a
    /// before/after bench in one run); `None`: [`built_binary`].
    pub binaries_dir: Option<PathBuf>,
}

impl GroupSpec {
    /// The workspace binary `name` this group runs.
    fn binary(&self, name: &str) -> Result<PathBuf, LabError> {
        match &self.binaries_dir {
            Some(dir) => {
                let p = dir.join(name);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(LabError::Invalid(format!("{} is not a file", p.display())))
                }
            }
            None => built_binary(name),
        }
    }
}

impl Default for GroupSpec {
    fn default() -> Self {
        Self {
            clusters: ["p", "s1", "s2", "s3"].map(String::from).to_vec(),
            coordinators: 3,
            excluded: Vec::new(),
            restore: RestoreMode::Continuous,
            promotion: Some(PromotionMode::Complete),
            degraded: None,
            max_lag: None,
            promote_timeout: None,
            snapshot_interval: Duration::from_secs(2),
            agent_interval: Duration::from_millis(500),
            traffic: true,
            mongodb_uri: None,
            mongodb_database: None,
            replication: true,
            cgroups: false,
            placements: BTreeMap::new(),
            coordinator_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dir: None,
            keep: false,
            probe_interval: Duration::from_millis(500),
            confirm: 2,
            report_ttl: Duration::from_secs(3),
            cooldown: Duration::from_secs(60),
            gate: true,
            vault_restart: false,
            traffic_file: None,
            selectors: BTreeMap::new(),
            coordinator_env: Vec::new(),
            raft: None,
            binaries_dir: None,
        }
    }
}

/// How many nodes each cluster of a raft group has, and who votes ([`GroupSpec::raft`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftLayout {
    /// Nodes of the primary.
    pub primary_nodes: usize,
    /// Nodes of every secondary.
    pub secondary_nodes: usize,
    /// The synchronous layout: the first node of every secondary is a voter (`voter`
    /// suffrage), and no more of the primary's nodes vote than there are DR voters (the rest
    /// `non-voter`), so that every commit quorum includes a node outside the primary (2 + 1 + 1
    /// for a 3-node primary and two secondaries). Otherwise (asynchronous) the primary's
    /// nodes are the voters and every other node a non-voter (`auto`).
    pub sync: bool,
}

impl RaftLayout {
    /// Each node's suffrage, cluster by cluster, for a group of `clusters` (the primary
    /// first).
    pub fn suffrages(&self, clusters: usize) -> Vec<Vec<Suffrage>> {
        let dr_voters = clusters.saturating_sub(1);
        (0..clusters)
            .map(|c| {
                let nodes = if c == 0 {
                    self.primary_nodes
                } else {
                    self.secondary_nodes
                };
                (0..nodes)
                    .map(|i| match (self.sync, c, i) {
                        (false, _, _) => Suffrage::Auto,
                        (true, 0, i) if i < dr_voters.max(1) => Suffrage::Auto,
                        (true, 0, _) => Suffrage::NonVoter,
                        (true, _, 0) => Suffrage::Voter,
                        (true, _, _) => Suffrage::Auto,
                    })
                    .collect()
            })
            .collect()
    }
}

/// One running coordinator process.
#[derive(Debug)]
pub struct LabCoordinator {
    /// Its id (lease holder name).
    pub id: String,
    /// Its API address.
    pub url: Url,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its log file.
    pub log_path: PathBuf,
    child: Option<ChildGuard>,
    program: PathBuf,
    /// The port of its own stable client address ([`DrGroup::start_second_group`] only; the
    /// group's coordinators share [`DrGroup::traffic_addr`]).
    pub traffic_port: Option<u16>,
    /// Added to its environment ([`GroupSpec::coordinator_env`]).
    env: Vec<(String, String)>,
}

impl LabCoordinator {
    /// The pid, None once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// Whether its process runs (false once killed, or once it exited or aborted).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Sends `signal` to the process (SIGSTOP freezes it, SIGCONT wakes it), when it runs.
    pub fn signal(&self, signal: super::process::Signal) {
        if let Some(c) = &self.child {
            c.signal(signal);
        }
    }

    /// Starts it again with the same config file and address (killing it first if it runs);
    /// its log is appended to.
    pub fn restart(&mut self) -> Result<(), LabError> {
        self.restart_with_env(&[])
    }

    /// [`LabCoordinator::restart`] with `extra` added to its environment for this run (e.g.
    /// a crash failpoint).
    pub fn restart_with_env(&mut self, extra: &[(&str, &str)]) -> Result<(), LabError> {
        self.kill();
        let mut env = self.env.clone();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let args: Vec<OsString> = vec![
            "coordinator".into(),
            "--config".into(),
            self.config_path.clone().into_os_string(),
        ];
        self.child = Some(ChildGuard::spawn_with_env(
            &self.id,
            &self.program,
            &args,
            &self.log_path,
            &env,
        )?);
        Ok(())
    }
}

/// One running agent process.
#[derive(Debug)]
pub struct LabAgent {
    /// Its cluster.
    pub cluster: String,
    /// Its node.
    pub node: String,
    /// Its log file.
    pub log_path: PathBuf,
    program: PathBuf,
    args: Vec<OsString>,
    child: Option<ChildGuard>,
}

impl LabAgent {
    /// Starts the agent again with the same arguments (killing it first if it runs); its log
    /// is appended to. A new agent process knows nothing of the old one's desired state.
    pub fn restart(&mut self) -> Result<(), LabError> {
        self.restart_with_args(&[])
    }

    /// [`LabAgent::restart`] with `extra` arguments after its own, for this run (e.g. a wrong
    /// `--raft-node-id`).
    pub fn restart_with_args(&mut self, extra: &[&str]) -> Result<(), LabError> {
        self.kill();
        let mut args = self.args.clone();
        args.extend(extra.iter().map(OsString::from));
        self.child = Some(ChildGuard::spawn(
            &format!("agent {}", self.node),
            &self.program,
            &args,
            &self.log_path,
        )?);
        Ok(())
    }

    /// The pid, None once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}

/// Per-cluster cgroups v2 under one parent directory of this run; removed on drop.
#[derive(Debug)]
pub struct Cgroups {
    parent: PathBuf,
    clusters: BTreeMap<String, PathBuf>,
    /// Whether the hierarchy accounts memory (`memory.current`); false on a hybrid host where
    /// the memory controller is bound to cgroup v1.
    pub memory_accounted: bool,
}

impl Cgroups {
    /// The cgroup of `cluster`.
    pub fn of(&self, cluster: &str) -> Option<&Path> {
        self.clusters.get(cluster).map(PathBuf::as_path)
    }

    /// Moves process `pid` into the cgroup of `cluster`.
    pub fn add(&self, cluster: &str, pid: u32) -> Result<(), LabError> {
        let dir = self
            .of(cluster)
            .ok_or_else(|| LabError::Invalid(format!("no cgroup for cluster {cluster}")))?;
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| LabError::io(format!("write {}", procs.display()), e))
    }

    /// Creates `<cgroup2 mount>/vault-dr-<pid>-<tag>/<cluster>` for every cluster. An error
    /// when no cgroup v2 hierarchy is mounted or it is not writable (the drill says so).
    fn create(names: &[String]) -> Result<Self, LabError> {
        let mount = cgroup2_mount().ok_or_else(|| {
            LabError::Invalid("no cgroup v2 hierarchy is mounted (see /proc/mounts)".into())
        })?;
        let tag: u32 = rand::random();
        let parent = mount.join(format!("vault-dr-{}-{tag:08x}", std::process::id()));
        std::fs::create_dir(&parent).map_err(|e| {
            LabError::io(
                format!("create cgroup {} (needs root)", parent.display()),
                e,
            )
        })?;
        let mut me = Self {
            parent,
            clusters: BTreeMap::new(),
            memory_accounted: false,
        };
        // Let the children have the controllers the parent has (best effort).
        if let Ok(ctl) = std::fs::read_to_string(me.parent.join("cgroup.controllers")) {
            let want: Vec<String> = ctl
                .split_whitespace()
                .filter(|c| matches!(*c, "cpu" | "memory"))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                let _ = std::fs::write(me.parent.join("cgroup.subtree_control"), want.join(" "));
            }
        }
        for n in names {
            let dir = me.parent.join(n);
            std::fs::create_dir(&dir)
                .map_err(|e| LabError::io(format!("create cgroup {}", dir.display()), e))?;
            me.clusters.insert(n.clone(), dir);
        }
        me.memory_accounted = me
            .clusters
            .values()
            .all(|d| d.join("memory.current").exists());
        Ok(me)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.clusters.values() {
            // Whatever is still inside (stress-ng workers) dies; then the directory can go.
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        for dir in self.clusters.values() {
            // Best effort: a cgroup that is not empty after 3 s stays behind.
            let _ = try_wait_for_blocking("the cgroup to empty", Duration::from_secs(3), || {
                std::fs::remove_dir(dir).is_ok()
            });
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on
/// a hybrid one), from `/proc/mounts`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// The run directory; removed on drop unless kept.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running DR group. Field order is drop order: processes first, then cgroups, then files.
#[derive(Debug)]
pub struct DrGroup {
    agents: Vec<LabAgent>,
    coordinators: Vec<LabCoordinator>,
    extra: Vec<ChildGuard>,
    clusters: Vec<LabCluster>,
    cgroups: Option<Cgroups>,
    /// Why cgroups are not in use, when they were asked for.
    cgroup_error: Option<String>,
    token_file: PathBuf,
    dr_token_file: PathBuf,
    dr_token: Secret,
    coordinator_token: Secret,
    traffic_addr: Option<Url>,
    agent_flags_missing: Vec<String>,
    coordinator_keys_missing: Vec<String>,
    excluded: Vec<String>,
    gated: bool,
    http: reqwest::Client,
    dir: RunDir,
}

impl DrGroup {
    /// Starts everything in `spec` and waits until one coordinator leads, every node has
    /// reported and every secondary is eligible (seeded by replication).
    pub async fn start(spec: &GroupSpec) -> Result<Self, LabError> {
        let mut group = Self::start_without_agents(spec).await?;
        group.start_agents(spec).await?;
        Ok(group)
    }

    /// The first half of [`DrGroup::start`]: the clusters (initialised, each with the DR token),
    /// the cgroups and the coordinators, but no agent yet, so nothing replicates. Data written to
    /// the primary now is in the snapshot every secondary is seeded from by
    /// [`DrGroup::start_agents`].
    pub async fn start_without_agents(spec: &GroupSpec) -> Result<Self, LabError> {
        if spec.clusters.len() < 2 || spec.coordinators == 0 {
            return Err(LabError::Invalid(
                "a DR group needs at least two clusters and one coordinator".into(),
            ));
        }
        // Both binaries are looked up first, so a missing one fails before anything starts.
        let agent_bin = spec.binary("vault-dr-agent")?;
        let coordinator_bin = spec.binary("vault-dr")?;
        // An agent build without the gate (a bench of an older one) keeps the nodes' own
        // addresses for everyone.
        let gated = spec.gate && agent_help(&agent_bin).await.contains("--gate-listen");
        let dir = make_run_dir(spec)?;
        let placed: Vec<(&str, NodeHost)> = spec
            .clusters
            .iter()
            .map(|n| {
                let host = spec.placements.get(n).cloned().unwrap_or_default();
                (n.as_str(), host)
            })
            .collect();
        let clusters = match &spec.raft {
            None => LabCluster::start_group_on(&placed, true, Some(&dir.path)).await?,
            Some(layout) => {
                let launcher = spec.binary("vault-dr-launch")?;
                let suffrages = layout.suffrages(placed.len());
                let sized: Vec<(&str, Vec<Suffrage>, NodeHost)> = placed
                    .iter()
                    .zip(suffrages)
                    .map(|((n, host), s)| (*n, s, host.clone()))
                    .collect();
                LabCluster::start_raft_group(&sized, &launcher, Some(&dir.path)).await?
            }
        };
        let http = super::openbao::http_client()?;

        let dr_token = Secret::new(format!("vdr-{:032x}", rand::random::<u128>()));
        let coordinator_token = Secret::new(format!("{:032x}", rand::random::<u128>()));
        let dr_token_file = dir.path.join("dr.token");
        let token_file = dir.path.join("coordinator.token");
        crate::tools::write_private(&dr_token_file, dr_token.expose())?;
        crate::tools::write_private(&token_file, coordinator_token.expose())?;
        if spec.raft.is_some() {
            // One raft: one token store.
            clusters[0].create_dr_token(&dr_token).await?;
        } else if spec.replication {
            let dr_tokens = clusters.iter().map(|c| c.create_dr_token(&dr_token));
            futures::future::try_join_all(dr_tokens).await?;
        }

        let (cgroups, cgroup_error) = if spec.cgroups {
            match Cgroups::create(&spec.clusters) {
                Ok(cg) => {
                    for c in &clusters {
                        for n in c.nodes() {
                            if let Some(pid) = n.pid() {
                                cg.add(c.name(), pid)?;
                            }
                        }
                    }
                    (Some(cg), None)
                }
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };

        let traffic_addr = if spec.traffic {
            Some(url_of(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                ports::reserve_loopback()?,
            )?)
        } else {
            None
        };
        let mut group = DrGroup {
            agents: Vec::new(),
            coordinators: Vec::new(),
            extra: Vec::new(),
            clusters,
            cgroups,
            cgroup_error,
            token_file,
            dr_token_file,
            dr_token,
            coordinator_token,
            traffic_addr,
            agent_flags_missing: Vec::new(),
            coordinator_keys_missing: Vec::new(),
            excluded: spec.excluded.clone(),
            gated,
            http,
            dir,
        };
        for i in 1..=spec.coordinators {
            group.spawn_coordinator(spec, &coordinator_bin, i).await?;
        }
        Ok(group)
    }

    /// The second half of [`DrGroup::start`]: an agent beside every node, then waits until one
    /// coordinator leads, every node has reported and every secondary is eligible.
    pub async fn start_agents(&mut self, spec: &GroupSpec) -> Result<(), LabError> {
        let group = self;
        let agent_bin = spec.binary("vault-dr-agent")?;
        let coordinator_urls: Vec<Url> = group.coordinators.iter().map(|c| c.url.clone()).collect();
        let help = agent_help(&agent_bin).await;
        let mut missing = Vec::new();
        let mut agents = Vec::new();
        for c in &group.clusters {
            for n in c.nodes() {
                let placement = spec.placements.get(c.name()).cloned().unwrap_or_default();
                let (args, miss) =
                    group.agent_args(spec, &help, c, n, &placement, &coordinator_urls);
                for m in miss {
                    if !missing.contains(&m) {
                        missing.push(m);
                    }
                }
                let log_path = n.dir().join("agent.log");
                let (program, all_args) = with_prefix(&placement, &agent_bin, args);
                let child = ChildGuard::spawn(
                    &format!("agent {}", n.name()),
                    &program,
                    &all_args,
                    &log_path,
                )?;
                agents.push(LabAgent {
                    cluster: c.name().to_owned(),
                    node: n.name().to_owned(),
                    log_path,
                    program,
                    args: all_args,
                    child: Some(child),
                });
            }
        }
        group.agents = agents;
        group.agent_flags_missing = missing;
        group.wait_ready(&spec.clusters[0], READY_TIMEOUT).await
    }

    /// Starts coordinator `index` on a port of its own and waits until it listens; again on
    /// another port if the picked one was taken meanwhile ([`ports::start_listening`]).
    async fn spawn_coordinator(
        &mut self,
        spec: &GroupSpec,
        bin: &Path,
        index: usize,
    ) -> Result<(), LabError> {
        let id = format!("coordinator-{index}");
        let dir = self.dir.path.clone();
        let me = &*self;
        let c = me
            .coordinator_process(spec, bin, &id, &dir, None, |port| {
                me.coordinator_config(spec, &id, port)
            })
            .await?;
        self.coordinators.push(c);
        Ok(())
    }

    /// Starts one `vault-dr coordinator` named `id` with its config and log in `dir`, the file
    /// made by `file` for the port it listens on (again on another port if the picked one was
    /// taken meanwhile, [`ports::start_listening`]).
    async fn coordinator_process(
        &self,
        spec: &GroupSpec,
        bin: &Path,
        id: &str,
        dir: &Path,
        traffic_port: Option<u16>,
        file: impl Fn(u16) -> ConfigFile,
    ) -> Result<LabCoordinator, LabError> {
        let config_path = dir.join(format!("{id}.toml"));
        let log_path = dir.join(format!("{id}.log"));
        let args: Vec<OsString> = vec![
            "coordinator".into(),
            "--config".into(),
            config_path.clone().into_os_string(),
        ];
        let (port, child) = ports::start_listening(
            id,
            spec.coordinator_ip,
            None,
            COORDINATOR_LISTEN_TIMEOUT,
            |port| {
                write_coordinator_file(&config_path, &file(port))?;
                ChildGuard::spawn_with_env(id, bin, &args, &log_path, &spec.coordinator_env)
            },
        )
        .await?;
        Ok(LabCoordinator {
            id: id.to_owned(),
            url: url_of(spec.coordinator_ip, port)?,
            config_path,
            log_path,
            child: Some(child),
            program: bin.to_path_buf(),
            traffic_port,
            env: spec.coordinator_env.clone(),
        })
    }

    /// Starts a coordinator of a **second** group over this group's clusters, as an operator
    /// who copied the config would: the same clusters (naming `spec`'s first cluster as the
    /// primary), tokens and policy, but a fresh coordination file, a store and a stable client
    /// address of its own. Its id is `second-1`; it is not one of [`DrGroup::coordinators`]
    /// and is stopped when the returned value is dropped.
    pub async fn start_second_group(&self, spec: &GroupSpec) -> Result<LabCoordinator, LabError> {
        let bin = built_binary("vault-dr")?;
        let dir = self.dir.path.join("second-group");
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        let traffic_port = ports::reserve_loopback()?;
        let id = "second-1";
        self.coordinator_process(spec, &bin, id, &dir, Some(traffic_port), |port| {
            let mut file = self.coordinator_config(spec, id, port);
            file.coordination.path = Some(dir.join("coordination.json"));
            file.store = StoreFile {
                path: Some(dir.join("store.sqlite")),
                ..StoreFile::default()
            };
            file.traffic = TrafficFile {
                backend: Some(TrafficBackend::Local),
                listen: Some(format!("127.0.0.1:{traffic_port}")),
                ..TrafficFile::default()
            };
            file
        })
        .await
    }

    /// The file of one coordinator (written as TOML by [`write_coordinator_file`]).
    fn coordinator_config(&self, spec: &GroupSpec, id: &str, port: u16) -> ConfigFile {
        let primary = spec.clusters[0].as_str();
        let mut file = coordinator_file(
            id,
            SocketAddr::new(spec.coordinator_ip, port),
            &self.clusters,
            primary,
        );
        for c in &mut file.clusters {
            c.excluded = spec.excluded.contains(&c.name);
            if let Some(labels) = spec.selectors.get(&c.name) {
                c.selector = labels.clone();
            }
            if self.gated
                && let Some(lab) = self.clusters.iter().find(|l| l.name() == c.name)
            {
                c.api_addrs = lab
                    .nodes()
                    .iter()
                    .map(|n| n.client_addr().to_string())
                    .collect();
            }
        }
        file.token_file = Some(self.token_file.clone());
        file.vault_token_file = spec.replication.then(|| self.dr_token_file.clone());
        file.store = match &spec.mongodb_uri {
            Some(uri) => StoreFile {
                mongodb_uri: Some(uri.expose().to_owned()),
                database: Some(
                    spec.mongodb_database
                        .clone()
                        .unwrap_or_else(|| format!("vault_dr_drill_{}", std::process::id())),
                ),
                ..StoreFile::default()
            },
            None => StoreFile {
                path: Some(self.dir.path.join("store.sqlite")),
                ..StoreFile::default()
            },
        };
        file.coordination = CoordinationFile {
            backend: CoordinationBackend::Local,
            path: Some(self.dir.path.join("coordination.json")),
            ..CoordinationFile::default()
        };
        if let Some(addr) = &self.traffic_addr {
            file.traffic = TrafficFile {
                backend: Some(TrafficBackend::Local),
                listen: Some(format!("127.0.0.1:{}", addr.port().unwrap_or_default())),
                ..TrafficFile::default()
            };
        }
        if let Some(traffic) = &spec.traffic_file {
            file.traffic = traffic.clone();
        }
        file.policy = failover_policy(
            spec.probe_interval,
            spec.confirm,
            spec.report_ttl,
            spec.cooldown,
        );
        file.policy.promotion = spec.promotion;
        file.policy.degraded = spec.degraded;
        file.policy.max_lag = spec.max_lag.or(file.policy.max_lag);
        file.policy.promote_timeout = spec.promote_timeout;
        file
    }

    /// The agent's arguments, and the wanted flags this agent build does not know (left out).
    fn agent_args(
        &self,
        spec: &GroupSpec,
        help: &str,
        cluster: &LabCluster,
        node: &super::LabNode,
        placement: &Placement,
        coordinators: &[Url],
    ) -> (Vec<OsString>, Vec<String>) {
        let mut args: Vec<OsString> = Vec::new();
        let mut missing = Vec::new();
        let mut push = |flag: &str, value: Option<OsString>, required: bool| {
            if required || help.contains(flag) {
                args.push(flag.into());
                if let Some(v) = value {
                    args.push(v);
                }
            } else {
                missing.push(flag.to_owned());
            }
        };
        let urls: Vec<String> = coordinators
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect();
        // A build without the comma-separated list gets the first coordinator only.
        let url_list = if help.contains("comma") {
            urls.join(",")
        } else {
            urls.first().cloned().unwrap_or_default()
        };
        push("--vault-addr", Some(node.api_addr().as_str().into()), true);
        if self.gated {
            let at = node.client_socket().to_string();
            push("--gate-listen", Some(at.into()), false);
        }
        if spec.replication || spec.raft.is_some() {
            push(
                "--vault-token-file",
                Some(self.dr_token_file.clone().into_os_string()),
                true,
            );
        }
        push("--cluster", Some(cluster.name().into()), true);
        push("--node", Some(node.name().into()), true);
        push("--coordinator-url", Some(url_list.into()), true);
        push(
            "--coordinator-token-file",
            Some(self.token_file.clone().into_os_string()),
            true,
        );
        push(
            "--interval",
            Some(format!("{}ms", spec.agent_interval.as_millis()).into()),
            true,
        );
        push(
            "--listen",
            Some(format!("{}:0", fmt_ip(placement.ip)).into()),
            true,
        );
        push(
            "--vault-pid-file",
            Some(node.pid_file().to_path_buf().into_os_string()),
            true,
        );
        if spec.raft.is_some() {
            push("--replication", Some("raft".into()), true);
            push(
                "--raft-path",
                Some(node.data_dir().to_path_buf().into_os_string()),
                true,
            );
            push(
                "--raft-cluster-addr",
                Some(node.cluster_socket().to_string().into()),
                true,
            );
            if node.suffrage() != Suffrage::Auto {
                push(
                    "--raft-suffrage",
                    Some(node.suffrage().as_str().into()),
                    true,
                );
            }
        } else if spec.replication {
            push("--replication", Some("snapshot".into()), false);
            push("--restore", Some(spec.restore.as_str().into()), false);
            push(
                "--snapshot-interval",
                Some(format!("{}ms", spec.snapshot_interval.as_millis()).into()),
                false,
            );
            push(
                "--snapshot-dir",
                Some(node.dir().join("snapshots").into_os_string()),
                false,
            );
        }
        if spec.vault_restart {
            push("--vault-restart", Some("signal".into()), false);
        }
        if let Some(cg) = self.cgroups.as_ref().and_then(|c| c.of(cluster.name())) {
            push(
                "--cgroup-root",
                Some(cg.to_path_buf().into_os_string()),
                false,
            );
        }
        (args, missing)
    }

    /// Waits until one coordinator leads with `primary` as primary, every node's agent has
    /// reported, and every secondary that is not excluded is eligible.
    pub async fn wait_ready(&self, primary: &str, timeout: Duration) -> Result<(), LabError> {
        self.wait_ready_inner(primary, timeout).await
    }

    /// Waits until a live coordinator's topology is past `term` with no failover in progress,
    /// and returns its primary.
    pub async fn wait_failover_done(
        &self,
        term: u64,
        timeout: Duration,
    ) -> Result<String, LabError> {
        try_wait_for("a finished failover", timeout, || async {
            for c in self.coordinators.iter().filter(|c| c.pid().is_some()) {
                if let Some(v) = self.get_json(&c.url, "v1/topology").await {
                    let t = v.pointer("/topology/term").and_then(Value::as_u64);
                    let done = v.pointer("/topology/failover").is_some_and(Value::is_null);
                    let primary = v.pointer("/topology/primary").and_then(Value::as_str);
                    if let (Some(t), true, Some(p)) = (t, done, primary)
                        && t > term
                    {
                        return Ok(p.to_owned());
                    }
                }
            }
            Err(format!(
                "no live coordinator shows a finished failover past term {term}"
            ))
        })
        .await
        .map_err(|t| LabError::Invalid(format!("{t} (logs in {})", self.dir.path.display())))
    }

    async fn wait_ready_inner(&self, primary: &str, timeout: Duration) -> Result<(), LabError> {
        // Ready: Ok(Ok(())); a process died: Ok(Err(e)), which ends the wait at once.
        try_wait_for("the DR group to be ready", timeout, || async {
            match self.readiness(primary).await {
                Ok(()) => Ok(Ok(())),
                Err(why) => self.dead_process().map(Err).ok_or(why),
            }
        })
        .await
        .map_err(|t| LabError::Invalid(format!("{t} (logs in {})", self.dir.path.display())))?
    }

    async fn readiness(&self, primary: &str) -> Result<(), String> {
        let leader = self.leader().await.ok_or("no coordinator leads yet")?;
        let v = self
            .get_json(&leader, "v1/clusters")
            .await
            .ok_or("the leader has no view yet")?;
        let clusters = v.pointer("/view/clusters").and_then(Value::as_object);
        let clusters = clusters.ok_or("the view has no clusters")?;
        for c in &self.clusters {
            let reported = clusters
                .get(c.name())
                .and_then(|cv| cv.get("nodes"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if reported < c.nodes().len() {
                return Err(format!("no report yet from every node of {}", c.name()));
            }
        }
        let topo_primary = v
            .pointer("/view/topology/primary")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if topo_primary != primary {
            return Err(format!("the primary is {topo_primary}, not {primary}"));
        }
        let candidates = v
            .pointer("/candidates/candidates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let wanted = self
            .clusters
            .iter()
            .filter(|c| c.name() != primary && !self.excluded.iter().any(|e| e == c.name()));
        for c in wanted {
            let row = candidates
                .iter()
                .find(|r| r.get("cluster").and_then(Value::as_str) == Some(c.name()));
            let eligible = row
                .and_then(|r| r.get("eligibility"))
                .is_some_and(|e| e == "eligible");
            if !eligible {
                let why = row
                    .and_then(|r| r.get("eligibility"))
                    .map(Value::to_string)
                    .unwrap_or_else(|| "no row".into());
                return Err(format!("{} is not eligible yet: {why}", c.name()));
            }
        }
        if self.gated {
            self.primary_gates_open(primary).await?;
        }
        Ok(())
    }

    /// Whether the write gate of every node of `primary` forwards clients' requests: a request
    /// the gate does not always forward (`GET sys/mounts`, no token) reaches the node (any
    /// answer without `x-vault-dr-gate`) rather than the gate's 503.
    async fn primary_gates_open(&self, primary: &str) -> Result<(), String> {
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name() == primary)
            .ok_or_else(|| format!("no cluster {primary}"))?;
        for node in cluster.nodes() {
            let url = node
                .client_addr()
                .join("v1/sys/mounts")
                .map_err(|e| format!("{}: {e}", node.client_addr()))?;
            let resp = self
                .http
                .get(url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .map_err(|e| format!("{}'s gate at {}: {e}", node.name(), node.client_addr()))?;
            if let Some(gate) = resp.headers().get("x-vault-dr-gate") {
                return Err(format!(
                    "{}'s write gate at {} is not open yet ({gate:?}, {})",
                    node.name(),
                    node.client_addr(),
                    resp.status()
                ));
            }
        }
        Ok(())
    }

    /// An error naming the first agent or coordinator that exited on its own.
    fn dead_process(&self) -> Option<LabError> {
        let agents = self
            .agents
            .iter()
            .map(|a| (a.pid(), format!("agent {}", a.node), &a.log_path));
        let coords = self
            .coordinators
            .iter()
            .map(|c| (c.pid(), c.id.clone(), &c.log_path));
        for (pid, name, log) in agents.chain(coords) {
            if let Some(pid) = pid
                && !super::process::pid_alive(pid)
            {
                return Some(LabError::Exited {
                    node: name,
                    log: log.clone(),
                    tail: tail(log),
                });
            }
        }
        None
    }

    /// The URL of the coordinator that currently leads, if one does.
    pub async fn leader(&self) -> Option<Url> {
        for c in &self.coordinators {
            if c.child.is_none() {
                continue;
            }
            if let Some(v) = self.get_json(&c.url, "v1/topology").await
                && v.get("is_leader").and_then(Value::as_bool) == Some(true)
            {
                return Some(c.url.clone());
            }
        }
        None
    }

    /// `GET <base>/<path>` with the coordinator token; None on any failure or non-2xx.
    pub async fn get_json(&self, base: &Url, path: &str) -> Option<Value> {
        let url = base.join(path).ok()?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.coordinator_token.expose())
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// The text a coordinator serves at `path` under `base` (e.g. `metrics`), if it answers 2xx.
    pub async fn get_text(&self, base: &Url, path: &str) -> Option<String> {
        let url = base.join(path).ok()?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.coordinator_token.expose())
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    /// The clusters; the first is the initial primary.
    pub fn clusters(&self) -> &[LabCluster] {
        &self.clusters
    }

    /// The clusters, to kill, stop or seal nodes.
    pub fn clusters_mut(&mut self) -> &mut [LabCluster] {
        &mut self.clusters
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&LabCluster> {
        self.clusters.iter().find(|c| c.name() == name)
    }

    /// The cluster named `name`, to kill, stop or restart its nodes.
    pub fn cluster_mut(&mut self, name: &str) -> Option<&mut LabCluster> {
        self.clusters.iter_mut().find(|c| c.name() == name)
    }

    /// The coordinators.
    pub fn coordinators(&self) -> &[LabCoordinator] {
        &self.coordinators
    }

    /// The coordinators, to kill one.
    pub fn coordinators_mut(&mut self) -> &mut [LabCoordinator] {
        &mut self.coordinators
    }

    /// The agents.
    pub fn agents(&self) -> &[LabAgent] {
        &self.agents
    }

    /// The agents, to kill one.
    pub fn agents_mut(&mut self) -> &mut [LabAgent] {
        &mut self.agents
    }

    /// The logs of `cluster`'s agents so far, concatenated in start order.
    pub fn agent_log(&self, cluster: &str) -> Result<String, LabError> {
        let mut all = String::new();
        for a in self.agents.iter().filter(|a| a.cluster == cluster) {
            let text = std::fs::read_to_string(&a.log_path)
                .map_err(|e| LabError::Invalid(format!("read {}: {e}", a.log_path.display())))?;
            all.push_str(&text);
        }
        Ok(all)
    }

    /// Whether the agents run the write gate (asked for, and the agent build knows it).
    pub fn gated(&self) -> bool {
        self.gated
    }

    /// Where clients reach `cluster`'s first node: its agent's write gate when
    /// [`DrGroup::gated`], else the node's own listener.
    pub fn client_addr(&self, cluster: &LabCluster) -> Url {
        if self.gated {
            cluster.client_addr().clone()
        } else {
            cluster.api_addr().clone()
        }
    }

    /// The stable client address (the local traffic forwarder), when started.
    pub fn traffic_addr(&self) -> Option<&Url> {
        self.traffic_addr.as_ref()
    }

    /// The file holding the coordinators' bearer token.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The coordinators' bearer token.
    pub fn coordinator_token(&self) -> &Secret {
        &self.coordinator_token
    }

    /// The DR token (same id in every cluster).
    pub fn dr_token(&self) -> &Secret {
        &self.dr_token
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The cgroups, when in use.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    /// Why cgroups were asked for but are not in use.
    pub fn cgroup_error(&self) -> Option<&str> {
        self.cgroup_error.as_deref()
    }

    /// Agent flags the drill wanted but this agent build does not know (left out).
    pub fn agent_flags_missing(&self) -> &[String] {
        &self.agent_flags_missing
    }

    /// Coordinator config keys the spec wanted but this build does not know (left out).
    pub fn coordinator_keys_missing(&self) -> &[String] {
        &self.coordinator_keys_missing
    }

    /// An HTTP client for loopback without proxies.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Keeps a further process (e.g. stress-ng) alive as long as the group and kills it with
    /// the group.
    pub fn adopt(&mut self, child: ChildGuard) {
        self.extra.push(child);
    }

    /// Every pid this group started and still holds (servers, agents, coordinators, extras).
    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self
            .clusters
            .iter()
            .flat_map(|c| c.nodes().iter().filter_map(super::LabNode::pid))
            .collect();
        p.extend(self.agents.iter().filter_map(LabAgent::pid));
        p.extend(self.coordinators.iter().filter_map(LabCoordinator::pid));
        p.extend(self.extra.iter().map(ChildGuard::pid));
        p
    }
}

/// `program` with the placement's prefix: (`ip`, [`netns`, `exec`, `NS`, program, args...]).
fn with_prefix(
    placement: &Placement,
    program: &Path,
    args: Vec<OsString>,
) -> (PathBuf, Vec<OsString>) {
    match placement.prefix.split_first() {
        None => (program.to_path_buf(), args),
        Some((first, rest)) => {
            let mut all: Vec<OsString> = rest.to_vec();
            all.push(program.as_os_str().to_owned());
            all.extend(args);
            (PathBuf::from(first), all)
        }
    }
}

fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `vault-dr-agent --help`, empty when it cannot be run (then every optional flag is left out).
async fn agent_help(bin: &Path) -> String {
    match tokio::process::Command::new(bin)
        .arg("--help")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(_) => String::new(),
    }
}

fn make_run_dir(spec: &GroupSpec) -> Result<RunDir, LabError> {
    let (path, remove) = match &spec.dir {
        Some(p) => (p.clone(), false),
        None => {
            let tag: u64 = rand::random();
            (
                std::env::temp_dir()
                    .join(format!("vault-dr-drill-{}-{tag:016x}", std::process::id())),
                !spec.keep,
            )
        }
    };
    std::fs::create_dir_all(&path)
        .map_err(|e| LabError::io(format!("create run dir {}", path.display()), e))?;
    let path = std::fs::canonicalize(&path)
        .map_err(|e| LabError::io(format!("resolve run dir {}", path.display()), e))?;
    Ok(RunDir { path, remove })
}

fn url_of(ip: IpAddr, port: u16) -> Result<Url, LabError> {
    Url::parse(&format!("http://{}:{port}/", fmt_ip(ip)))
        .map_err(|e| LabError::Invalid(format!("url for {ip} port {port}: {e}")))
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_goes_before_the_program() {
        let p = Placement {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), "ns1".into()],
            ip: "10.0.0.2".parse().unwrap(),
        };
        let (prog, args) = with_prefix(&p, Path::new("/bin/agent"), vec!["--x".into()]);
        assert_eq!(prog, PathBuf::from("ip"));
        assert_eq!(
            args,
            ["netns", "exec", "ns1", "/bin/agent", "--x"].map(OsString::from)
        );
        let (prog, args) = with_prefix(&Placement::default(), Path::new("/bin/agent"), vec![]);
        assert_eq!((prog, args.len()), (PathBuf::from("/bin/agent"), 0));
    }

    #[test]
    fn ipv6_bind_addresses_are_bracketed() {
        assert_eq!(fmt_ip("::1".parse().unwrap()), "[::1]");
        assert_eq!(fmt_ip("127.0.0.1".parse().unwrap()), "127.0.0.1");
    }
}
