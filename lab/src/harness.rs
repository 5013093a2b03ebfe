//! The one way to build a DR group for a test or the drill, and the coordinator file every lab
//! and test coordinator is started from.
//!
//! [`Group::builder`] starts a whole group on one machine (clusters, an agent per node,
//! coordinators, placement, policy) and hands back the running [`Group`]:
//!
//! ```no_run
//! # async fn f() -> Result<(), vault_dr_lab::LabError> {
//! use std::time::Duration;
//! use vault_dr_lab::harness::Group;
//! let group = Group::builder()
//!     .clusters(["p", "s1", "s2"])
//!     .coordinators(2)
//!     .traffic(false)
//!     .policy(|p| p.cooldown = Duration::from_secs(120))
//!     .start()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! [`coordinator_file`]
//! builds the coordinator's own serialisable file form ([`ConfigFile`]) for a set of lab
//! clusters, and callers set the sections they care about (store, coordination, traffic,
//! policy) on the value. A coordinator process gets it as TOML ([`write_coordinator_file`],
//! `toml::to_string` of that value); an in-process one gets it validated
//! ([`ConfigFile::validate`]). No coordinator TOML is written by hand.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vault_dr_coordinator::config::{
    ClusterFile, ClusterRole, Config, ConfigFile, ENV_TOKEN_FILE, PolicyFile,
};

use super::group::{DrGroup, GroupSpec, Placement, PromotionMode, RestoreMode};
use super::{LabCluster, LabError};

/// A running DR group (see [`DrGroup`] for what it offers).
pub type Group = DrGroup;

impl DrGroup {
    /// The builder of a group: four clusters `p`, `s1`, `s2`, `s3` (the first is the primary),
    /// three coordinators, agents, the traffic forwarder and the fast policy unless told
    /// otherwise.
    pub fn builder() -> GroupBuilder {
        GroupBuilder {
            spec: GroupSpec::default(),
            agents: true,
        }
    }
}

/// The coordinators' policy in a [`GroupBuilder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupPolicy {
    /// Probe interval (the probe timeout is 80 % of it).
    pub probe_interval: Duration,
    /// Consecutive agreeing ticks before the primary is down.
    pub confirm: u32,
    /// Report TTL.
    pub report_ttl: Duration,
    /// Cooldown after a failover.
    pub cooldown: Duration,
    /// Promotion mode (`None`: the key is left out of the file).
    pub promotion: Option<PromotionMode>,
}

/// What [`Group::builder`] starts; [`GroupBuilder::start`] starts it.
#[derive(Debug, Clone)]
#[must_use]
pub struct GroupBuilder {
    spec: GroupSpec,
    agents: bool,
}

impl GroupBuilder {
    /// The clusters by name; the first is the initial primary.
    pub fn clusters<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.spec.clusters = names.into_iter().map(Into::into).collect();
        self
    }

    /// How many coordinator processes (at least 1).
    pub fn coordinators(mut self, count: usize) -> Self {
        self.spec.coordinators = count;
        self
    }

    /// Whether to start an agent beside every node and wait until the group is ready (the
    /// default). Without, [`DrGroup::start_agents`] starts them later.
    pub fn agents(mut self, agents: bool) -> Self {
        self.agents = agents;
        self
    }

    /// Where `cluster`'s processes run (e.g. a network namespace).
    pub fn placement(mut self, cluster: &str, placement: Placement) -> Self {
        self.spec.placements.insert(cluster.to_owned(), placement);
        self
    }

    /// Changes the coordinators' policy.
    pub fn policy(mut self, change: impl FnOnce(&mut GroupPolicy)) -> Self {
        let s = &mut self.spec;
        let mut p = GroupPolicy {
            probe_interval: s.probe_interval,
            confirm: s.confirm,
            report_ttl: s.report_ttl,
            cooldown: s.cooldown,
            promotion: s.promotion,
        };
        change(&mut p);
        (
            s.probe_interval,
            s.confirm,
            s.report_ttl,
            s.cooldown,
            s.promotion,
        ) = (
            p.probe_interval,
            p.confirm,
            p.report_ttl,
            p.cooldown,
            p.promotion,
        );
        self
    }

    /// Excludes `cluster` from promotion.
    pub fn exclude(mut self, cluster: &str) -> Self {
        self.spec.excluded.push(cluster.to_owned());
        self
    }

    /// How the secondaries' agents restore pulled snapshots, and how often they pull.
    pub fn replication(mut self, restore: RestoreMode, interval: Duration) -> Self {
        (self.spec.restore, self.spec.snapshot_interval) = (restore, interval);
        self
    }

    /// The agents' probe and report interval.
    pub fn agent_interval(mut self, interval: Duration) -> Self {
        self.spec.agent_interval = interval;
        self
    }

    /// Whether to start the local traffic forwarder (the stable client address).
    pub fn traffic(mut self, traffic: bool) -> Self {
        self.spec.traffic = traffic;
        self
    }

    /// Any further setting of the underlying [`GroupSpec`] (store, cgroups, run directory,
    /// the coordinators' address).
    pub fn spec(mut self, change: impl FnOnce(&mut GroupSpec)) -> Self {
        change(&mut self.spec);
        self
    }

    /// Starts the group; with agents, waits until one coordinator leads, every node has
    /// reported and every secondary is eligible.
    pub async fn start(self) -> Result<Group, LabError> {
        let mut group = DrGroup::start_without_agents(&self.spec).await?;
        if self.agents {
            group.start_agents(&self.spec).await?;
        }
        Ok(group)
    }

    /// The spec it starts, e.g. for [`DrGroup::start_agents`] after `agents(false)`.
    pub fn group_spec(&self) -> &GroupSpec {
        &self.spec
    }
}

/// A coordinator file for `clusters` (the one named `primary` is the primary of term 1, every
/// node listed with its API address), listening on `listen`, with the id `id`; every other
/// setting at its default.
pub fn coordinator_file(
    id: &str,
    listen: impl std::fmt::Display,
    clusters: &[LabCluster],
    primary: &str,
) -> ConfigFile {
    ConfigFile {
        listen: Some(listen.to_string()),
        id: Some(id.to_owned()),
        clusters: clusters
            .iter()
            .map(|c| cluster_file(c, c.name() == primary))
            .collect(),
        ..ConfigFile::default()
    }
}

/// One `[[clusters]]` entry for a lab cluster: its nodes' names and API addresses.
pub fn cluster_file(cluster: &LabCluster, primary: bool) -> ClusterFile {
    ClusterFile {
        name: cluster.name().to_owned(),
        role: if primary {
            ClusterRole::Primary
        } else {
            ClusterRole::Secondary
        },
        api_addrs: cluster
            .nodes()
            .iter()
            .map(|n| n.api_addr().to_string())
            .collect(),
        nodes: cluster
            .nodes()
            .iter()
            .map(|n| n.name().to_owned())
            .collect(),
        priority: 0,
        excluded: false,
        selector: BTreeMap::new(),
    }
}

/// The `[policy]` of the failover tests: probe every `probe_interval` (timeout 80 % of it),
/// `confirm` agreeing ticks, reports fresh for `report_ttl`, `cooldown` after a failover.
pub fn failover_policy(
    probe_interval: Duration,
    confirm: u32,
    report_ttl: Duration,
    cooldown: Duration,
) -> PolicyFile {
    PolicyFile {
        probe_interval: Some(probe_interval),
        probe_timeout: Some(probe_interval.mul_f64(0.8)),
        confirm: Some(confirm),
        report_ttl: Some(report_ttl),
        cooldown: Some(cooldown),
        ..PolicyFile::default()
    }
}

/// `file` as TOML (`toml::to_string` of the coordinator's own type).
pub fn coordinator_toml(file: &ConfigFile) -> Result<String, LabError> {
    file.to_toml()
        .map_err(|e| LabError::Invalid(format!("serialise a coordinator file: {e}")))
}

/// Writes `file` as TOML to `path` (owner-only: it names token files and maybe a MongoDB URI).
pub fn write_coordinator_file(path: &Path, file: &ConfigFile) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = coordinator_toml(file)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(format!("create {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("write {}", path.display()), e))
}

/// `file` validated for an in-process coordinator (`vault_dr_coordinator::run`): relative
/// paths against `dir`, the bearer token read from `token_file`.
pub fn in_process_config(
    file: ConfigFile,
    dir: &Path,
    token_file: &Path,
) -> Result<Config, LabError> {
    let env = BTreeMap::from([(ENV_TOKEN_FILE.to_owned(), token_file.display().to_string())]);
    file.validate(dir, &env)
        .map_err(|e| LabError::Invalid(format!("coordinator config: {e}")))
}
