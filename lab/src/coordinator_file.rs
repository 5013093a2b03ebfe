//! The coordinator file every lab and test coordinator is started from: the coordinator's own
//! serialisable file form ([`ConfigFile`]) built for a set of lab clusters, written as TOML for
//! a process or validated for an in-process coordinator. No coordinator TOML is written by hand.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vault_dr_coordinator::config::{
    ClusterFile, ClusterRole, Config, ConfigFile, ENV_TOKEN_FILE, PolicyFile,
};

use crate::{LabCluster, LabError};

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

/// One `[[clusters]]` entry of one node, `<name>-0`, at `api_addr`: priority 0, not excluded,
/// no selector (change the fields the test needs with `..`).
pub fn one_node_cluster(name: &str, role: ClusterRole, api_addr: &str) -> ClusterFile {
    ClusterFile {
        name: name.to_owned(),
        role,
        api_addrs: vec![api_addr.to_owned()],
        nodes: vec![format!("{name}-0")],
        priority: 0,
        excluded: false,
        selector: BTreeMap::new(),
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
    crate::tools::write_private(path, &coordinator_toml(file)?)
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
