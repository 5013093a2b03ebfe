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
//! [`coordinator_file`] (from `crate::coordinator_file`, re-exported here) builds the
//! coordinator's own serialisable file form for a set of lab clusters, and callers set the
//! sections they care about (store, coordination, traffic, policy) on the value. A coordinator
//! process gets it as TOML ([`write_coordinator_file`]); an in-process one gets it validated
//! ([`in_process_config`]). No coordinator TOML is written by hand.

use std::time::Duration;

pub use crate::coordinator_file::{
    cluster_file, coordinator_file, coordinator_toml, failover_policy, in_process_config,
    write_coordinator_file,
};

use super::LabError;
use super::group::{DrGroup, GroupSpec, Placement, PromotionMode, RestoreMode};

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
    /// `[policy.degraded]` (`None`: the rule off).
    pub degraded: Option<vault_dr_coordinator::config::DegradedFile>,
    /// `policy.max_lag` (`None`: the coordinator's default).
    pub max_lag: Option<Duration>,
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
            degraded: s.degraded,
            max_lag: s.max_lag,
        };
        change(&mut p);
        (
            s.probe_interval,
            s.confirm,
            s.report_ttl,
            s.cooldown,
            s.promotion,
            s.degraded,
            s.max_lag,
        ) = (
            p.probe_interval,
            p.confirm,
            p.report_ttl,
            p.cooldown,
            p.promotion,
            p.degraded,
            p.max_lag,
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

    /// Whether the agents replicate by snapshots with the DR token (the default). Without, no
    /// cluster gets the DR token and neither agents nor coordinators have a Vault token.
    pub fn replicate(mut self, replicate: bool) -> Self {
        self.spec.replication = replicate;
        self
    }

    /// Raft replication: the group is one raft of `primary_nodes` voters in the first
    /// cluster and `secondary_nodes` non-voters in every other.
    pub fn raft(mut self, primary_nodes: usize, secondary_nodes: usize) -> Self {
        self.spec.raft = Some(super::group::RaftLayout {
            primary_nodes,
            secondary_nodes,
            sync: false,
        });
        self
    }

    /// The synchronous raft layout ([`super::group::RaftLayout::sync`]): the first node of
    /// every secondary votes, and every commit quorum includes one of them.
    pub fn raft_sync(mut self, primary_nodes: usize, secondary_nodes: usize) -> Self {
        self.spec.raft = Some(super::group::RaftLayout {
            primary_nodes,
            secondary_nodes,
            sync: true,
        });
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
