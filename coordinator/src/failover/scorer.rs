//! The pure scorer: which secondary to promote, and why every other cluster is not chosen.
//!
//! [`score`] turns a [`View`] into a [`CandidateTable`]: one row per cluster (the primary as an
//! [`Ineligible::IsPrimary`] row), hard filters first with the first failing filter recorded as
//! the reason, then a strict total order over the eligible (see [`rank_order`]). The table is
//! stored with the decision and shown by `vault-dr explain`.
//!
//! Choices worth knowing:
//! - A cluster in state `restoring` is not unreachable: OpenBao blocks requests for ~5 s while
//!   it installs a snapshot, so the coordinator's direct probe may time out although the node is
//!   fine. It stays a candidate; the executor's promote step retries until it answers.
//! - Replication mode `none` (plain OpenBao, no vault-dr replication configured) has no notion of
//!   seeding, so the never-seeded filter does not apply and its lag is unknown-but-allowed: it
//!   may still be promoted (a cluster on shared or externally replicated storage is a legitimate
//!   DR target), but unknown lag sorts after every known lag, so any measured replica wins.
//!   Operators who never want such a cluster promoted mark it `excluded`.
//! - Non-finite figures (NaN, infinity) are treated as unknown so they cannot distort the order.

use crate::config::Policy;
use crate::view::{ClusterView, NodeView, View};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use vault_dr_common::NodeState;

/// Every cluster's row at one instant, ranked, with the winner if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateTable {
    /// When the table was computed (the view's instant).
    pub at: DateTime<Utc>,
    /// One row per cluster: the eligible in rank order first, then the ineligible by name.
    pub candidates: Vec<Candidate>,
    /// Name of the rank-1 candidate, if any cluster is eligible.
    pub winner: Option<String>,
}

impl CandidateTable {
    /// The row of `cluster`, if present.
    pub fn candidate(&self, cluster: &str) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.cluster == cluster)
    }

    /// "dc2: sealed; dc3: report stale (12.0 s old)" for the ineligible rows (the primary left out).
    pub fn reasons(&self) -> String {
        let parts: Vec<String> = self
            .candidates
            .iter()
            .filter_map(|c| match &c.eligibility {
                Eligibility::Ineligible(Ineligible::IsPrimary) | Eligibility::Eligible => None,
                Eligibility::Ineligible(why) => Some(format!("{}: {why}", c.cluster)),
            })
            .collect();
        if parts.is_empty() {
            "no secondary configured".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// One cluster's figures and its eligibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Cluster name.
    pub cluster: String,
    /// Rank among the eligible, 1 = best; `None` when ineligible.
    pub rank: Option<u32>,
    /// Whether it may be promoted, and if not why.
    pub eligibility: Eligibility,
    /// State of its freshest active node, else of the direct probe or a fresh report.
    pub state: Option<NodeState>,
    /// Replication lag in raft entries (or WALs), when known.
    pub lag_entries: Option<u64>,
    /// Age of the newest replicated data in seconds, when known.
    pub lag_seconds: Option<f64>,
    /// p99 of the agent's probe latency, in milliseconds, when the agent has samples.
    pub latency_p99_ms: Option<f64>,
    /// CPU in use, in cores, from the representative node's report.
    pub cpu_usage_cores: Option<f64>,
    /// Free fraction of the memory limit, from the representative node's report.
    pub memory_headroom_ratio: Option<f64>,
    /// Operator's priority (higher wins a tie).
    pub priority: i32,
    /// Age of the cluster's freshest report, in seconds (`None`: never reported).
    pub report_age_seconds: Option<f64>,
}

/// Whether a candidate may be promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eligibility {
    /// Passed every hard filter.
    Eligible,
    /// Failed the recorded filter (the first one, in filter order).
    Ineligible(Ineligible),
}

impl Eligibility {
    /// Whether the candidate passed every hard filter.
    pub fn is_eligible(&self) -> bool {
        matches!(self, Self::Eligible)
    }
}

/// The reason a cluster cannot be promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Ineligible {
    /// Neither a fresh report of an active node nor the direct probe shows it serving.
    Unreachable,
    /// Its Vault is sealed.
    Sealed,
    /// Its Vault is not initialised.
    Uninitialized,
    /// Its freshest report is older than `policy.report_ttl`.
    ReportStale {
        /// Age of the freshest report, in seconds.
        age_seconds: f64,
    },
    /// None of its agents ever reported.
    NoReport,
    /// Replication is configured but has never delivered data to it.
    NeverSeeded,
    /// Further behind than `policy.max_lag` / `policy.max_lag_entries`.
    Lagging {
        /// Lag in entries, when that is what exceeded the limit.
        by_entries: Option<u64>,
        /// Lag in seconds, when that is what exceeded the limit.
        by_seconds: Option<f64>,
    },
    /// Excluded from promotion by the operator.
    Excluded,
    /// It is the current primary.
    IsPrimary,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("unreachable"),
            Self::Sealed => f.write_str("sealed"),
            Self::Uninitialized => f.write_str("not initialised"),
            Self::ReportStale { age_seconds } => {
                write!(f, "report stale ({age_seconds:.1} s old)")
            }
            Self::NoReport => f.write_str("no report yet"),
            Self::NeverSeeded => f.write_str("never seeded by replication"),
            Self::Lagging {
                by_entries,
                by_seconds,
            } => {
                f.write_str("lagging")?;
                if let Some(e) = by_entries {
                    write!(f, " by {e} entries")?;
                }
                if let Some(s) = by_seconds {
                    if by_entries.is_some() {
                        f.write_str(" and")?;
                    }
                    write!(f, " by {s:.1} s")?;
                }
                Ok(())
            }
            Self::Excluded => f.write_str("excluded by the operator"),
            Self::IsPrimary => f.write_str("is the primary"),
        }
    }
}

/// Scores every cluster of `view` against `policy`. The current primary (`view.topology.primary`)
/// appears as an [`Ineligible::IsPrimary`] row. Pure: the same view gives the same table.
pub fn score(view: &View, policy: &Policy) -> CandidateTable {
    let now = view.at;
    let ttl = policy.report_ttl.as_secs_f64();
    let mut eligible = Vec::with_capacity(view.clusters.len());
    let mut ineligible = Vec::new();
    for cluster in view.clusters.values() {
        let c = candidate(cluster, &view.topology.primary, now, ttl, policy);
        if c.eligibility.is_eligible() {
            eligible.push(c);
        } else {
            ineligible.push(c);
        }
    }
    eligible.sort_unstable_by(rank_order);
    for (i, c) in eligible.iter_mut().enumerate() {
        c.rank = Some(u32::try_from(i + 1).unwrap_or(u32::MAX));
    }
    // Clusters come from a BTreeMap, so the ineligible are already in name order.
    let winner = eligible.first().map(|c| c.cluster.clone());
    eligible.extend(ineligible);
    CandidateTable {
        at: now,
        candidates: eligible,
        winner,
    }
}

/// The total order over eligible candidates: least lag (entries, then seconds; unknown after
/// known), lowest p99 latency, lowest CPU, highest memory headroom, highest priority, then name.
/// Names are unique in a view, so this is a strict total order.
pub fn rank_order(a: &Candidate, b: &Candidate) -> Ordering {
    known_first(a.lag_entries, b.lag_entries, |x, y| x.cmp(&y))
        .then_with(|| known_first(a.lag_seconds, b.lag_seconds, fcmp))
        .then_with(|| known_first(a.latency_p99_ms, b.latency_p99_ms, fcmp))
        .then_with(|| known_first(a.cpu_usage_cores, b.cpu_usage_cores, fcmp))
        .then_with(|| {
            // Higher headroom is better: compare reversed.
            known_first(a.memory_headroom_ratio, b.memory_headroom_ratio, |x, y| {
                y.total_cmp(&x)
            })
        })
        .then_with(|| b.priority.cmp(&a.priority))
        .then_with(|| a.cluster.cmp(&b.cluster))
}

/// `total_cmp` by value, so it fits `known_first`.
fn fcmp(a: f64, b: f64) -> Ordering {
    a.total_cmp(&b)
}

/// Orders known values by `cmp` and every known value before an unknown one.
fn known_first<T: Copy>(a: Option<T>, b: Option<T>, cmp: impl Fn(T, T) -> Ordering) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => cmp(x, y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// A finite float or nothing.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The node whose figures stand for the cluster: the freshest fresh active node, else the
/// freshest fresh node of any state.
fn representative(cluster: &ClusterView, now: DateTime<Utc>, ttl: f64) -> Option<&NodeView> {
    cluster.active_node(now, ttl).or_else(|| {
        cluster
            .fresh_nodes(now, ttl)
            .min_by(|a, b| a.age_seconds(now).total_cmp(&b.age_seconds(now)))
    })
}

/// The cluster's state as the filters see it, most telling evidence first: a fresh active
/// node; a serving direct probe; anything that shows the API answering but not serving
/// (restoring, sealed, uninitialised, from a fresh report or the probe); otherwise whatever the
/// probe or the freshest report says (unreachable, error, a leaderless standby).
fn resolve_state(cluster: &ClusterView, now: DateTime<Utc>, ttl: f64) -> Option<NodeState> {
    if cluster.active_node(now, ttl).is_some() {
        return Some(NodeState::Active);
    }
    let probe = cluster.direct_probe.as_ref().map(|p| p.state);
    if let Some(s) = probe.filter(|s| s.is_serving()) {
        return Some(s);
    }
    let evidence = || {
        cluster
            .fresh_nodes(now, ttl)
            .map(|n| n.report.vault.state)
            .chain(probe)
    };
    for telling in [
        NodeState::Restoring,
        NodeState::Sealed,
        NodeState::Uninitialized,
    ] {
        if evidence().any(|s| s == telling) {
            return Some(telling);
        }
    }
    probe.or_else(|| representative(cluster, now, ttl).map(|n| n.report.vault.state))
}

/// Builds one row, applying the hard filters in their documented order.
fn candidate(
    cluster: &ClusterView,
    primary: &str,
    now: DateTime<Utc>,
    ttl: f64,
    policy: &Policy,
) -> Candidate {
    let rep = representative(cluster, now, ttl);
    let state = resolve_state(cluster, now, ttl);
    let freshest_age = cluster
        .nodes
        .iter()
        .map(|n| n.age_seconds(now))
        .min_by(f64::total_cmp);
    let replication = rep.map(|n| &n.report.replication);
    let mut row = Candidate {
        cluster: cluster.name.clone(),
        rank: None,
        eligibility: Eligibility::Eligible,
        state,
        lag_entries: replication.and_then(|r| r.lag_entries),
        lag_seconds: replication.and_then(|r| r.lag_seconds).and_then(finite),
        latency_p99_ms: rep
            .filter(|n| n.report.vault.latency.samples > 0)
            .and_then(|n| finite(n.report.vault.latency.p99_ms)),
        cpu_usage_cores: rep.and_then(|n| finite(n.report.host.cpu_usage_cores)),
        memory_headroom_ratio: rep.and_then(|n| finite(n.report.host.memory_headroom_ratio())),
        priority: cluster.priority,
        report_age_seconds: freshest_age,
    };
    row.eligibility = match filter(cluster, primary, &row, rep, policy) {
        None => Eligibility::Eligible,
        Some(why) => Eligibility::Ineligible(why),
    };
    row
}

/// The first hard filter `row` fails, if any.
fn filter(
    cluster: &ClusterView,
    primary: &str,
    row: &Candidate,
    rep: Option<&NodeView>,
    policy: &Policy,
) -> Option<Ineligible> {
    use vault_dr_common::ReplicationMode;
    if cluster.name == primary {
        return Some(Ineligible::IsPrimary);
    }
    if cluster.excluded {
        return Some(Ineligible::Excluded);
    }
    match row.state {
        None | Some(NodeState::Unreachable | NodeState::Error) => {
            return Some(Ineligible::Unreachable);
        }
        Some(NodeState::Sealed) => return Some(Ineligible::Sealed),
        Some(NodeState::Uninitialized) => return Some(Ineligible::Uninitialized),
        // A standby without a fresh active node and without a serving probe: leaderless or
        // cut off; not promotable now.
        Some(NodeState::Standby | NodeState::PerformanceStandby)
            if rep.is_none_or(|n| n.report.vault.state != NodeState::Active)
                && !cluster
                    .direct_probe
                    .as_ref()
                    .is_some_and(|p| p.state.is_serving()) =>
        {
            return Some(Ineligible::Unreachable);
        }
        Some(_) => {}
    }
    let Some(rep) = rep else {
        return Some(match row.report_age_seconds {
            None => Ineligible::NoReport,
            Some(age_seconds) => Ineligible::ReportStale { age_seconds },
        });
    };
    let replication = &rep.report.replication;
    if replication.mode != ReplicationMode::None && !replication.seeded {
        return Some(Ineligible::NeverSeeded);
    }
    let by_seconds = row
        .lag_seconds
        .filter(|s| *s > policy.max_lag.as_secs_f64());
    let by_entries = row
        .lag_entries
        .filter(|e| policy.max_lag_entries.is_some_and(|max| *e > max));
    if by_seconds.is_some() || by_entries.is_some() {
        return Some(Ineligible::Lagging {
            by_entries,
            by_seconds,
        });
    }
    None
}

/// Latency figures of [`bench`], in microseconds per `score` call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BenchFigures {
    /// Candidates per view.
    pub candidates: usize,
    /// Timed calls.
    pub iterations: usize,
    /// Median duration of one call.
    pub p50_micros: f64,
    /// 99th percentile duration of one call.
    pub p99_micros: f64,
    /// Slowest call.
    pub max_micros: f64,
}

impl fmt::Display for BenchFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scorer over {} candidates, {} iterations: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            self.candidates, self.iterations, self.p50_micros, self.p99_micros, self.max_micros
        )
    }
}

/// Times [`score`] over a synthetic view of `candidates` clusters (varied lag, latency, CPU,
/// memory, some ineligible), `iterations` times after a short warm-up.
pub fn bench(candidates: usize, iterations: usize) -> BenchFigures {
    let view = synthetic::view(candidates, 0x5eed);
    let policy = Policy::default();
    for _ in 0..iterations.min(10) {
        std::hint::black_box(score(std::hint::black_box(&view), &policy));
    }
    let mut micros: Vec<f64> = (0..iterations.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(score(std::hint::black_box(&view), &policy));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_unstable_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((micros.len() as f64 - 1.0) * q).round() as usize;
        micros.get(i).copied().unwrap_or(0.0)
    };
    BenchFigures {
        candidates,
        iterations: micros.len(),
        p50_micros: pick(0.5),
        p99_micros: pick(0.99),
        max_micros: micros.last().copied().unwrap_or(0.0),
    }
}

/// Synthetic reports and views for the benchmark and for tests.
pub(crate) mod synthetic {
    use crate::topology::Topology;
    use crate::view::{ClusterView, DirectProbe, NodeView, View};
    use chrono::{DateTime, Duration, Utc};
    use std::collections::BTreeMap;
    use vault_dr_common::report::HostSource;
    use vault_dr_common::{
        HostStats, LatencySummary, NodeState, ReplicationMode, ReplicationStatus, Report, Role,
        SCHEMA_VERSION, VaultStatus,
    };

    /// A healthy report of `node` in `cluster`, sent at `at`: active, seeded by snapshot
    /// replication with zero lag, 2 ms p99, 0.1 cores, half the memory free.
    pub(crate) fn report(cluster: &str, node: &str, at: DateTime<Utc>) -> Report {
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
                cpu_usage_cores: 0.1,
                cpu_seconds_total: 1.0,
                memory_used_bytes: 512 << 20,
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
        }
    }

    /// A view of `n` clusters (`c0000` primary) with figures drawn from a small LCG seeded by
    /// `seed`; about one in ten secondaries fails some filter.
    pub(crate) fn view(n: usize, seed: u64) -> View {
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
            r.host.cpu_usage_cores = (next() % 400) as f64 / 100.0;
            r.host.memory_used_bytes = (next() % 1024) << 20;
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
                },
            );
        }
        View {
            at,
            topology: Topology::initial("c0000"),
            clusters,
        }
    }
}
