//! Builders for tests and benchmarks (feature `test-util`): [`ViewBuilder`] for hand-made views,
//! [`synthetic`] for a large generated group. Never part of a release build.

use crate::model::topology::Topology;
use crate::model::view::{ClusterView, DirectProbe, NodeView, View};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use vault_dr_common::{NodeState, PeerProbe, Report, Role};

/// A fixed instant the tests build views around (2023-11-14T22:13:20Z).
pub fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default()
}

/// A healthy active report of `node` in `cluster` sent at `at` (seeded snapshot
/// replication, zero lag, 2 ms p99, 0.1 cores, half the memory free).
pub fn report(cluster: &str, node: &str, at: DateTime<Utc>) -> Report {
    crate::model::test_util::synthetic::report(cluster, node, at)
}

/// Builds a [`View`] at a given instant: clusters are added healthy and then adjusted.
#[derive(Debug, Clone)]
pub struct ViewBuilder {
    view: View,
}

impl ViewBuilder {
    /// An empty group at `at` whose primary is `primary` (term 1). Add `primary` itself with
    /// [`ViewBuilder::cluster`].
    pub fn new(at: DateTime<Utc>, primary: &str) -> Self {
        Self {
            view: View {
                at,
                topology: Topology::initial(primary),
                clusters: BTreeMap::new(),
                observing_since: None,
            },
        }
    }

    /// A healthy group at [`t0`]: `primary` plus `secondaries`, every cluster with one
    /// active node reporting now, a serving direct probe, and every secondary's agent
    /// seeing the primary serving.
    pub fn healthy(primary: &str, secondaries: &[&str]) -> Self {
        let mut b = Self::new(t0(), primary).cluster(primary);
        for s in secondaries {
            b = b.cluster(s).primary_probe(s, NodeState::Active, 0);
        }
        b
    }

    /// Adds a healthy cluster `name` with one node `name-0`, reported now, probed now.
    pub fn cluster(mut self, name: &str) -> Self {
        let at = self.view.at;
        let role = if self.view.topology.primary == name {
            Role::Primary
        } else {
            Role::Secondary
        };
        let node = format!("{name}-0");
        let mut report = report(name, &node, at);
        if role == Role::Primary {
            report.replication.lag_entries = None;
            report.replication.lag_seconds = None;
        }
        self.view.clusters.insert(
            name.to_owned(),
            ClusterView {
                name: name.to_owned(),
                role,
                priority: 0,
                excluded: false,
                probe_latency: Default::default(),
                probe_recent: Default::default(),
                direct_probe: Some(DirectProbe {
                    state: NodeState::Active,
                    at,
                    latency_ms: Some(1.0),
                    error: None,
                }),
                nodes: vec![NodeView {
                    node,
                    received_at: at,
                    report,
                }],
                configured_nodes: 1,
            },
        );
        self
    }

    /// Changes cluster `name` in place (a no-op if absent).
    pub fn with(mut self, name: &str, f: impl FnOnce(&mut ClusterView)) -> Self {
        if let Some(c) = self.view.clusters.get_mut(name) {
            f(c);
        }
        self
    }

    /// Changes every report of cluster `name`.
    pub fn reports(self, name: &str, f: impl Fn(&mut Report)) -> Self {
        self.with(name, |c| c.nodes.iter_mut().for_each(|n| f(&mut n.report)))
    }

    /// Sets the state of every node report of `name` (not the direct probe).
    pub fn node_state(self, name: &str, state: NodeState) -> Self {
        self.reports(name, |r| r.vault.state = state)
    }

    /// Sets the coordinator's direct probe of `name` (taken now); `None` removes it.
    pub fn direct(self, name: &str, state: Option<NodeState>) -> Self {
        let at = self.view.at;
        self.with(name, |c| {
            c.direct_probe = state.map(|state| DirectProbe {
                state,
                at,
                latency_ms: state.is_serving().then_some(1.0),
                error: (!state.is_serving()).then(|| state.as_str().to_owned()),
            })
        })
    }

    /// Makes every report of `name` `seconds` old.
    pub fn report_age(self, name: &str, seconds: i64) -> Self {
        let at = self.view.at - Duration::seconds(seconds);
        self.with(name, |c| {
            c.nodes.iter_mut().for_each(|n| n.received_at = at)
        })
    }

    /// Removes every report of `name`.
    pub fn no_reports(self, name: &str) -> Self {
        self.with(name, |c| c.nodes.clear())
    }

    /// Sets the probe of the primary in every report of secondary `name`: the primary in
    /// `state`, probed `age_seconds` ago.
    pub fn primary_probe(self, name: &str, state: NodeState, age_seconds: i64) -> Self {
        let primary = self.view.topology.primary.clone();
        let at = self.view.at - Duration::seconds(age_seconds);
        self.reports(name, |r| {
            r.primary_probe = Some(PeerProbe {
                cluster: primary.clone(),
                state,
                at,
                latency_ms: state.is_serving().then_some(1.0),
            })
        })
    }

    /// The primary as every observer sees it dead: direct probe and reports unreachable,
    /// every secondary's agent failing to reach it.
    pub fn primary_dead(self) -> Self {
        let primary = self.view.topology.primary.clone();
        let secondaries: Vec<String> = self
            .view
            .clusters
            .keys()
            .filter(|k| **k != primary)
            .cloned()
            .collect();
        let mut b = self
            .direct(&primary, Some(NodeState::Unreachable))
            .report_age(&primary, 3600);
        for s in secondaries {
            b = b.primary_probe(&s, NodeState::Unreachable, 0);
        }
        b
    }

    /// Changes the topology.
    pub fn topology(mut self, f: impl FnOnce(&mut Topology)) -> Self {
        f(&mut self.view.topology);
        self
    }

    /// Moves the view (and every probe and report in it) to `at`, keeping their ages.
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        let shift = at - self.view.at;
        self.view.at = at;
        for c in self.view.clusters.values_mut() {
            if let Some(p) = &mut c.direct_probe {
                p.at += shift;
            }
            for n in &mut c.nodes {
                n.received_at += shift;
                if let Some(p) = &mut n.report.primary_probe {
                    p.at += shift;
                }
            }
        }
        self
    }

    /// The coordinator leads since `at` (reports count one report TTL later).
    pub fn observing_since(mut self, at: DateTime<Utc>) -> Self {
        self.view.observing_since = Some(at);
        self
    }

    /// The view.
    pub fn build(self) -> View {
        self.view
    }
}

/// Synthetic reports and views for the benchmark and for tests.
pub mod synthetic {
    use crate::model::topology::Topology;
    use crate::model::view::{ClusterView, DirectProbe, NodeView, View};
    use chrono::{DateTime, Duration, Utc};
    use std::collections::BTreeMap;
    use vault_dr_common::report::HostSource;
    use vault_dr_common::{
        HostStats, LatencySummary, NodeState, ReplicationMode, ReplicationStatus, Report, Role,
        SCHEMA_VERSION, VaultStatus,
    };

    /// A healthy report of `node` in `cluster`, sent at `at`: active, seeded by snapshot
    /// replication with zero lag, 2 ms p99, 0.1 cores, half the memory free.
    pub fn report(cluster: &str, node: &str, at: DateTime<Utc>) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            seq: 1,
            agent_started_at: at,
            sent_at: at,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            vault: VaultStatus {
                state: NodeState::Active,
                last_probe_ms: Some(1.0),
                latency: LatencySummary {
                    samples: 10,
                    p50_ms: 1.0,
                    p99_ms: 2.0,
                    error_ratio: 0.0,
                },
                recent: Default::default(),
                version: Some("2.7.2".to_owned()),
                cluster_id: None,
                cluster_name: None,
                raft_applied_index: Some(100),
                raft_commit_index: Some(100),
                autopilot_healthy: None,
                last_error: None,
            },
            host: HostStats {
                source: HostSource::Process,
                pid: Some(4242),
                cpu_usage_cores: Some(0.1),
                cpu_seconds_total: Some(1.0),
                memory_used_bytes: Some(512 << 20),
                memory_limit_bytes: Some(1 << 30),
            },
            replication: ReplicationStatus {
                mode: ReplicationMode::Snapshot,
                seeded: true,
                lag_entries: Some(0),
                lag_seconds: Some(0.0),
                ..ReplicationStatus::default()
            },
            primary_probe: None,
            seen_term: 1,
            applied_term: 1,
        }
    }

    /// A view of `n` clusters (`c0000` primary) with figures drawn from a small LCG seeded by
    /// `seed`; about one in ten secondaries fails some filter.
    pub fn view(n: usize, seed: u64) -> View {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        let mut clusters = BTreeMap::new();
        for i in 0..n {
            let name = format!("c{i:04}");
            let mut r = report(&name, &format!("{name}-0"), at);
            r.replication.lag_entries = Some(next() % 50);
            r.replication.lag_seconds = Some((next() % 30_000) as f64 / 1000.0);
            r.vault.latency.p99_ms = (next() % 5_000) as f64 / 100.0;
            r.host.cpu_usage_cores = Some((next() % 400) as f64 / 100.0);
            r.host.memory_used_bytes = Some((next() % 1024) << 20);
            match next() % 20 {
                0 => r.vault.state = NodeState::Sealed,
                1 => r.replication.lag_seconds = Some(600.0),
                _ => {}
            }
            let age = Duration::milliseconds((next() % 1_000) as i64);
            clusters.insert(
                name.clone(),
                ClusterView {
                    name: name.clone(),
                    role: if i == 0 {
                        Role::Primary
                    } else {
                        Role::Secondary
                    },
                    priority: (next() % 3) as i32,
                    excluded: next() % 50 == 0,
                    probe_latency: Default::default(),
                    probe_recent: Default::default(),
                    direct_probe: Some(DirectProbe {
                        state: r.vault.state,
                        at,
                        latency_ms: Some(1.0),
                        error: None,
                    }),
                    nodes: vec![NodeView {
                        node: r.node.clone(),
                        received_at: at - age,
                        report: r,
                    }],
                    configured_nodes: 1,
                },
            );
        }
        View {
            at,
            topology: Topology::initial("c0000"),
            clusters,
            observing_since: None,
        }
    }
}
