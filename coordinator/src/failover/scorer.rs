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
//!   So are CPU and memory the agent could not attribute to its node (`source: unknown`) and
//!   an older agent's host-wide ones (`source: host`): unknown sorts after known, so a node
//!   without figures never wins as "0 % CPU".
//! - Data age is compared in steps of [`CLOSE_DATA_AGE_SECONDS`]. Within a step, a standby
//!   whose promotion has nothing more to restore ranks first (it serves its newest snapshot or
//!   is restoring it, e.g. ahead of a suspected primary's failover), then one that serves
//!   before one mid-restore: promoting the latter waits for its restore in flight first
//!   (OpenBao cannot abort one), up to a restore more of RTO for a second of data.

use crate::model::view::{ClusterView, NodeView, View};
use crate::model::{Candidate, CandidateTable, Eligibility, Ineligible, Policy};
use chrono::{DateTime, Utc};
use std::cmp::Ordering;
use vault_dr_common::{NodeState, PromotionMode, ReplicationMode};

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

/// Data ages within the same step of this many seconds count as close: among them a standby
/// that serves beats one mid-restore (which must finish that restore before it can restore
/// for its promotion: up to one restore, about 5.5 s, more of RTO).
pub const CLOSE_DATA_AGE_SECONDS: f64 = 1.0;

/// The step of data age `lag_seconds` falls in (for [`rank_order`]; `None` when unknown).
fn age_step(lag_seconds: Option<f64>) -> Option<i64> {
    lag_seconds
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s / CLOSE_DATA_AGE_SECONDS).floor() as i64)
}

/// The total order over eligible candidates: the raft log index, highest first (raft
/// backend: nodes of one raft; known before unknown), then data age in steps of
/// [`CLOSE_DATA_AGE_SECONDS`] (unknown after known), then nothing left to restore at promotion
/// before a restore still to do, then serving before mid-restore, then
/// least lag (entries, then seconds; unknown after known), lowest p99 latency, lowest CPU,
/// highest memory headroom, highest priority, then name. Every key is compared exactly (the
/// age by its step, not by a tolerance), and names are unique in a view, so this is a strict
/// total order.
pub fn rank_order(a: &Candidate, b: &Candidate) -> Ordering {
    let restoring = |c: &Candidate| c.state == Some(NodeState::Restoring);
    known_first(a.log_index, b.log_index, |x, y| y.cmp(&x))
        .then_with(|| {
            known_first(age_step(a.lag_seconds), age_step(b.lag_seconds), |x, y| {
                x.cmp(&y)
            })
        })
        .then_with(|| a.promotion_restores.cmp(&b.promotion_restores))
        .then_with(|| restoring(a).cmp(&restoring(b)))
        .then_with(|| known_first(a.lag_entries, b.lag_entries, |x, y| x.cmp(&y)))
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
        // Unknown figures (a dead or unidentified process, an older agent's host-wide ones)
        // stay unknown: they sort after every known figure, never as an idle node.
        cpu_usage_cores: rep
            .and_then(|n| n.report.host.node_cpu_cores())
            .and_then(finite),
        memory_headroom_ratio: rep
            .and_then(|n| n.report.host.memory_headroom_ratio())
            .and_then(finite),
        priority: cluster.priority,
        report_age_seconds: freshest_age,
        // A fast promotion keeps what the node restored, unless it never restored one.
        // The longest log of any fresh node: the one that would form the new raft.
        log_index: cluster
            .fresh_nodes(now, ttl)
            .map(|n| &n.report.replication)
            .filter(|r| r.mode == ReplicationMode::Raft)
            .filter_map(|r| r.log_index)
            .max(),
        promotion_restores: replication.is_some_and(|r| {
            r.promotion_restores
                && (policy.promotion == PromotionMode::Complete || r.restored_index.is_none())
        }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{ViewBuilder, synthetic};
    use proptest::prelude::*;
    use std::time::Duration as StdDuration;

    fn policy() -> Policy {
        Policy {
            report_ttl: StdDuration::from_secs(5),
            max_lag: StdDuration::from_secs(60),
            max_lag_entries: Some(1_000),
            ..Policy::default()
        }
    }

    fn reason(table: &CandidateTable, cluster: &str) -> Option<Ineligible> {
        match &table.candidate(cluster)?.eligibility {
            Eligibility::Eligible => None,
            Eligibility::Ineligible(why) => Some(why.clone()),
        }
    }

    fn ranks(table: &CandidateTable) -> Vec<(String, u32)> {
        table
            .candidates
            .iter()
            .filter_map(|c| c.rank.map(|r| (c.cluster.clone(), r)))
            .collect()
    }

    #[test]
    fn every_hard_filter_records_its_reason() {
        type Adjust = fn(ViewBuilder) -> ViewBuilder;
        let rows: Vec<(&str, Adjust, Option<Ineligible>)> = vec![
            ("a healthy secondary is eligible", |b| b, None),
            ("the primary is its own row", |b| b, None),
            (
                "excluded",
                |b| b.with("dc2", |c| c.excluded = true),
                Some(Ineligible::Excluded),
            ),
            (
                "unreachable: no fresh active node and the probe fails",
                |b| {
                    b.report_age("dc2", 60)
                        .direct("dc2", Some(NodeState::Unreachable))
                },
                Some(Ineligible::Unreachable),
            ),
            (
                "unreachable: nothing known at all",
                |b| b.no_reports("dc2").direct("dc2", None),
                Some(Ineligible::Unreachable),
            ),
            (
                "unreachable: a standby without leader that the coordinator cannot probe",
                |b| {
                    b.node_state("dc2", NodeState::Standby)
                        .direct("dc2", Some(NodeState::Error))
                },
                Some(Ineligible::Unreachable),
            ),
            (
                "sealed, from the report",
                |b| {
                    b.node_state("dc2", NodeState::Sealed)
                        .direct("dc2", Some(NodeState::Unreachable))
                },
                Some(Ineligible::Sealed),
            ),
            (
                "sealed, from the probe",
                |b| {
                    b.node_state("dc2", NodeState::Sealed)
                        .direct("dc2", Some(NodeState::Sealed))
                },
                Some(Ineligible::Sealed),
            ),
            (
                "uninitialised",
                |b| {
                    b.no_reports("dc2")
                        .direct("dc2", Some(NodeState::Uninitialized))
                },
                Some(Ineligible::Uninitialized),
            ),
            (
                "no report, although the probe sees it serving",
                |b| b.no_reports("dc2"),
                Some(Ineligible::NoReport),
            ),
            (
                "report stale, although the probe sees it serving",
                |b| b.report_age("dc2", 12),
                Some(Ineligible::ReportStale { age_seconds: 12.0 }),
            ),
            (
                "never seeded",
                |b| b.reports("dc2", |r| r.replication.seeded = false),
                Some(Ineligible::NeverSeeded),
            ),
            (
                "lagging in seconds",
                |b| b.reports("dc2", |r| r.replication.lag_seconds = Some(61.0)),
                Some(Ineligible::Lagging {
                    by_entries: None,
                    by_seconds: Some(61.0),
                }),
            ),
            (
                "lagging in entries",
                |b| b.reports("dc2", |r| r.replication.lag_entries = Some(1_001)),
                Some(Ineligible::Lagging {
                    by_entries: Some(1_001),
                    by_seconds: None,
                }),
            ),
            (
                "lagging in both",
                |b| {
                    b.reports("dc2", |r| {
                        r.replication.lag_entries = Some(5_000);
                        r.replication.lag_seconds = Some(90.0);
                    })
                },
                Some(Ineligible::Lagging {
                    by_entries: Some(5_000),
                    by_seconds: Some(90.0),
                }),
            ),
            (
                "exactly at the lag limits is still eligible",
                |b| {
                    b.reports("dc2", |r| {
                        r.replication.lag_entries = Some(1_000);
                        r.replication.lag_seconds = Some(60.0);
                    })
                },
                None,
            ),
            (
                "a restoring secondary whose probe times out is not unreachable",
                |b| {
                    b.node_state("dc2", NodeState::Restoring)
                        .direct("dc2", Some(NodeState::Unreachable))
                },
                None,
            ),
            (
                "a warm standby restoring while the probe gets errors stays eligible",
                |b| {
                    b.node_state("dc2", NodeState::Restoring)
                        .direct("dc2", Some(NodeState::Error))
                },
                None,
            ),
            (
                "a restoring standby before the coordinator's first probe stays eligible",
                |b| {
                    b.node_state("dc2", NodeState::Restoring)
                        .direct("dc2", None)
                },
                None,
            ),
            (
                "a stale restoring report no longer vouches for a standby whose probe fails",
                |b| {
                    b.node_state("dc2", NodeState::Restoring)
                        .report_age("dc2", 12)
                        .direct("dc2", Some(NodeState::Unreachable))
                },
                Some(Ineligible::Unreachable),
            ),
            (
                "replication mode none is never 'never seeded' and its unknown lag is allowed",
                |b| {
                    b.reports("dc2", |r| {
                        r.replication = vault_dr_common::ReplicationStatus::default();
                    })
                },
                None,
            ),
        ];
        for (name, adjust, want) in rows {
            let v = adjust(ViewBuilder::healthy("dc1", &["dc2"])).build();
            let t = score(&v, &policy());
            assert_eq!(reason(&t, "dc1"), Some(Ineligible::IsPrimary), "{name}");
            assert_eq!(reason(&t, "dc2"), want, "{name}");
            assert_eq!(t.winner.is_some(), want.is_none(), "{name}");
            let row = t.candidate("dc2").unwrap();
            assert_eq!(
                row.rank.is_some(),
                want.is_none(),
                "{name}: rank only for the eligible"
            );
        }
    }

    #[test]
    fn the_first_failing_filter_in_order_is_the_one_recorded() {
        // Excluded beats sealed beats stale beats never seeded beats lagging.
        let all_wrong = |b: ViewBuilder| {
            b.reports("dc2", |r| {
                r.vault.state = NodeState::Sealed;
                r.replication.seeded = false;
                r.replication.lag_seconds = Some(1e6);
            })
            .direct("dc2", Some(NodeState::Sealed))
        };
        type Adjust = fn(ViewBuilder) -> ViewBuilder;
        let rows: [(Adjust, Ineligible); 4] = [
            (
                |b| b.with("dc2", |c| c.excluded = true),
                Ineligible::Excluded,
            ),
            (|b| b, Ineligible::Sealed),
            (
                |b| {
                    b.node_state("dc2", NodeState::Active)
                        .direct("dc2", Some(NodeState::Active))
                        .report_age("dc2", 9)
                },
                Ineligible::ReportStale { age_seconds: 9.0 },
            ),
            (
                |b| {
                    b.node_state("dc2", NodeState::Active)
                        .direct("dc2", Some(NodeState::Active))
                },
                Ineligible::NeverSeeded,
            ),
        ];
        for (adjust, want) in rows {
            let v = adjust(all_wrong(ViewBuilder::healthy("dc1", &["dc2"]))).build();
            assert_eq!(reason(&score(&v, &policy()), "dc2"), Some(want));
        }
    }

    #[test]
    fn cpu_stress_on_one_secondary_and_lag_on_another_make_the_third_win() {
        // dc2 and dc3 would win on name alone; dc2 burns CPU, dc3 lags (within the limit).
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3", "dc4"])
            .reports("dc2", |r| r.host.cpu_usage_cores = Some(1.9))
            .reports("dc3", |r| {
                r.replication.lag_entries = Some(40);
                r.replication.lag_seconds = Some(8.0);
            })
            .build();
        let t = score(&v, &policy());
        assert_eq!(t.winner.as_deref(), Some("dc4"));
        assert_eq!(
            ranks(&t),
            [("dc4".into(), 1), ("dc2".into(), 2), ("dc3".into(), 3)]
        );
        assert_eq!(t.candidates.last().map(|c| c.cluster.as_str()), Some("dc1"));
    }

    #[test]
    fn a_serving_standby_beats_one_mid_restore_when_their_data_age_is_close() {
        let view = |dc3_age: f64| {
            // dc2 is mid-restore: its agent says so and the coordinator's probe times out.
            ViewBuilder::healthy("dc1", &["dc2", "dc3"])
                .node_state("dc2", NodeState::Restoring)
                .direct("dc2", Some(NodeState::Unreachable))
                .reports("dc2", |r| {
                    r.replication.lag_entries = Some(0);
                    r.replication.lag_seconds = Some(0.2);
                })
                .reports("dc3", move |r| {
                    r.replication.lag_entries = Some(5);
                    r.replication.lag_seconds = Some(dc3_age);
                })
                .build()
        };
        // Within the same second of data age: the serving one, though it lags 5 entries.
        assert_eq!(score(&view(0.8), &policy()).winner.as_deref(), Some("dc3"));
        // Seconds apart: the fresher data wins, mid-restore or not.
        assert_eq!(score(&view(3.5), &policy()).winner.as_deref(), Some("dc2"));
    }

    #[test]
    fn a_standby_with_nothing_left_to_restore_beats_one_whose_promotion_would_restore() {
        // dc2 restores its newest snapshot (ahead of a suspected primary's failover); dc3
        // serves an older one and holds the newest unrestored (on-promotion).
        let view = |dc2_left: bool| {
            ViewBuilder::healthy("dc1", &["dc2", "dc3"])
                .node_state("dc2", NodeState::Restoring)
                .direct("dc2", Some(NodeState::Unreachable))
                .reports("dc2", move |r| {
                    r.replication.lag_seconds = Some(0.4);
                    r.replication.promotion_restores = dc2_left;
                })
                .reports("dc3", |r| {
                    r.replication.lag_seconds = Some(0.4);
                    r.replication.restored_index = Some(7);
                    r.replication.promotion_restores = true;
                })
                .build()
        };
        let complete = policy();
        assert_eq!(
            score(&view(false), &complete).winner.as_deref(),
            Some("dc2"),
            "mid-restore of its newest beats a full restore still to do"
        );
        assert_eq!(
            score(&view(true), &complete).winner.as_deref(),
            Some("dc3"),
            "both still restore at promotion: the serving one"
        );
        let fast = Policy {
            promotion: PromotionMode::Fast,
            ..policy()
        };
        assert_eq!(
            score(&view(false), &fast).winner.as_deref(),
            Some("dc3"),
            "a fast promotion keeps what dc3 restored: serving beats mid-restore"
        );
        let table = score(&view(false), &complete);
        assert!(!table.candidate("dc2").unwrap().promotion_restores);
        assert!(table.candidate("dc3").unwrap().promotion_restores);
    }

    #[test]
    fn each_criterion_decides_only_when_the_earlier_ones_tie() {
        type Adjust = fn(&mut vault_dr_common::Report);
        // (what dc2 gets worse, so dc3 must win). Each row leaves every earlier criterion tied.
        let rows: [(&str, Adjust); 9] = [
            ("more lag entries", |r| r.replication.lag_entries = Some(1)),
            ("unknown lag entries", |r| r.replication.lag_entries = None),
            ("more lag seconds", |r| {
                r.replication.lag_seconds = Some(0.5)
            }),
            ("higher p99 latency", |r| r.vault.latency.p99_ms = 2.5),
            ("more CPU", |r| r.host.cpu_usage_cores = Some(0.2)),
            ("unknown CPU (its process is gone)", |r| {
                r.host = vault_dr_common::HostStats::UNKNOWN
            }),
            ("host-wide CPU of an older agent", |r| {
                r.host.source = vault_dr_common::report::HostSource::Host;
                r.host.cpu_usage_cores = Some(0.0);
            }),
            ("less memory headroom", |r| {
                r.host.memory_used_bytes = r.host.memory_used_bytes.map(|b| b + (1 << 20))
            }),
            ("unknown memory", |r| r.host.memory_used_bytes = None),
        ];
        for (name, worse) in rows {
            let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
                .reports("dc2", worse)
                .build();
            assert_eq!(
                score(&v, &policy()).winner.as_deref(),
                Some("dc3"),
                "{name}"
            );
        }
        // Lag beats everything after it.
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .reports("dc2", |r| r.replication.lag_entries = Some(1))
            .reports("dc3", |r| {
                r.vault.latency.p99_ms = 900.0;
                r.host.cpu_usage_cores = Some(8.0);
                r.host.memory_used_bytes = Some(1 << 30);
            })
            .with("dc2", |c| c.priority = 100)
            .build();
        assert_eq!(score(&v, &policy()).winner.as_deref(), Some("dc3"));
        // Priority, then name, once every figure ties.
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .with("dc3", |c| c.priority = 1)
            .build();
        assert_eq!(score(&v, &policy()).winner.as_deref(), Some("dc3"));
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"]).build();
        assert_eq!(score(&v, &policy()).winner.as_deref(), Some("dc2"));
    }

    #[test]
    fn in_one_raft_the_longest_log_wins_before_any_lag_figure() {
        // The leader is gone: each node's lag is against the index it last read from the
        // leader, at its own moment; only the nodes' own log indexes compare exactly.
        let raft = |index: u64, lag: u64, age: f64| {
            move |r: &mut vault_dr_common::Report| {
                r.replication.mode = ReplicationMode::Raft;
                r.replication.log_index = Some(index);
                r.replication.lag_entries = Some(lag);
                r.replication.lag_seconds = Some(age);
            }
        };
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .reports("dc2", raft(1_000, 0, 0.9))
            .reports("dc3", raft(1_002, 3, 1.2))
            .build();
        let t = score(&v, &policy());
        assert_eq!(t.winner.as_deref(), Some("dc3"), "{t:#?}");
        assert_eq!(t.candidate("dc3").unwrap().log_index, Some(1_002));
        // A log index outside the raft backend means nothing.
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .reports("dc3", |r| r.replication.log_index = Some(1_002))
            .build();
        assert_eq!(
            score(&v, &policy()).candidate("dc3").unwrap().log_index,
            None
        );
    }

    #[test]
    fn a_cluster_without_vault_dr_replication_ranks_after_every_measured_replica() {
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .reports("dc2", |r| {
                r.replication = vault_dr_common::ReplicationStatus::default()
            })
            .reports("dc3", |r| {
                r.replication.lag_entries = Some(900);
                r.replication.lag_seconds = Some(59.0);
            })
            .build();
        let t = score(&v, &policy());
        assert_eq!(ranks(&t), [("dc3".into(), 1), ("dc2".into(), 2)]);
        assert_eq!(t.candidate("dc2").unwrap().lag_entries, None);
        assert_eq!(t.candidate("dc2").unwrap().lag_seconds, None);
    }

    #[test]
    fn figures_come_from_the_freshest_active_node() {
        let v = ViewBuilder::healthy("dc1", &["dc2"])
            .with("dc2", |c| {
                let mut standby = c.nodes[0].clone();
                standby.node = "dc2-1".into();
                standby.report.vault.state = NodeState::Standby;
                standby.report.host.cpu_usage_cores = Some(3.0);
                c.nodes.insert(0, standby);
            })
            .reports("dc2", |r| {
                if r.vault.state == NodeState::Active {
                    r.host.cpu_usage_cores = Some(0.7);
                }
            })
            .build();
        let row = score(&v, &policy()).candidate("dc2").cloned().unwrap();
        assert_eq!(
            (row.state, row.cpu_usage_cores),
            (Some(NodeState::Active), Some(0.7))
        );
        assert_eq!(row.memory_headroom_ratio, Some(0.5));
        assert_eq!(row.latency_p99_ms, Some(2.0));
        assert_eq!(row.report_age_seconds, Some(0.0));
    }

    #[test]
    fn non_finite_figures_are_unknown() {
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .reports("dc2", |r| {
                r.vault.latency.p99_ms = f64::NAN;
                r.replication.lag_seconds = Some(f64::NEG_INFINITY);
            })
            .build();
        let t = score(&v, &policy());
        let row = t.candidate("dc2").unwrap();
        assert_eq!((row.latency_p99_ms, row.lag_seconds), (None, None));
        assert_eq!(t.winner.as_deref(), Some("dc3"));
    }

    #[test]
    fn reasons_read_as_short_sentences_and_the_table_survives_json() {
        let t = score(
            &ViewBuilder::healthy("dc1", &["dc2", "dc3", "dc4"])
                .report_age("dc3", 12)
                .reports("dc4", |r| {
                    r.replication.lag_entries = Some(2_000);
                    r.replication.lag_seconds = Some(75.25);
                })
                .build(),
            &policy(),
        );
        assert_eq!(
            t.reasons(),
            "dc3: report stale (12.0 s old); dc4: lagging by 2000 entries and by 75.2 s"
        );
        let json = serde_json::to_value(&t).unwrap();
        let dc4 = &json["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster"] == "dc4")
            .unwrap()["eligibility"];
        assert_eq!(dc4["ineligible"]["reason"], "lagging");
        assert_eq!(serde_json::from_value::<CandidateTable>(json).unwrap(), t);
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        // Small domains so that ties on every criterion are common.
        let opt_f = || prop::option::of(prop::sample::select(vec![0.0, 0.5, 1.0, f64::NAN, -0.0]));
        (
            prop::option::of(0u64..3),
            opt_f(),
            opt_f(),
            opt_f(),
            opt_f(),
            -1i32..2,
        )
            .prop_map(
                |(
                    lag_entries,
                    lag_seconds,
                    latency_p99_ms,
                    cpu_usage_cores,
                    memory_headroom_ratio,
                    priority,
                )| Candidate {
                    cluster: String::new(),
                    rank: None,
                    eligibility: Eligibility::Eligible,
                    state: Some(NodeState::Active),
                    lag_entries,
                    lag_seconds,
                    latency_p99_ms,
                    cpu_usage_cores,
                    memory_headroom_ratio,
                    priority,
                    report_age_seconds: Some(0.0),
                    promotion_restores: false,
                    log_index: None,
                },
            )
    }

    fn named(mut v: Vec<Candidate>) -> Vec<Candidate> {
        for (i, c) in v.iter_mut().enumerate() {
            c.cluster = format!("c{i:03}");
        }
        v
    }

    proptest! {
        #[test]
        fn the_order_is_a_strict_total_order(v in prop::collection::vec(arb_candidate(), 1..40)) {
            let v = named(v);
            for a in &v {
                prop_assert_eq!(rank_order(a, a), Ordering::Equal);
                for b in &v {
                    let ab = rank_order(a, b);
                    prop_assert_eq!(ab, rank_order(b, a).reverse());
                    prop_assert_eq!(ab == Ordering::Equal, a.cluster == b.cluster);
                    for c in &v {
                        if ab == Ordering::Less && rank_order(b, c) == Ordering::Less {
                            prop_assert_eq!(rank_order(a, c), Ordering::Less);
                        }
                    }
                }
            }
        }

        #[test]
        fn shuffled_input_gives_the_same_ranking(
            (v, shuffled) in prop::collection::vec(arb_candidate(), 1..60)
                .prop_map(named)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
        ) {
            let mut a = v;
            let mut b = shuffled;
            a.sort_unstable_by(rank_order);
            b.sort_unstable_by(rank_order);
            let names = |x: &[Candidate]| x.iter().map(|c| c.cluster.clone()).collect::<Vec<_>>();
            prop_assert_eq!(names(&a), names(&b));
        }

        #[test]
        fn scoring_is_deterministic_over_random_groups(seed in any::<u64>(), n in 2usize..80) {
            let v = synthetic::view(n, seed);
            let t = score(&v, &policy());
            prop_assert_eq!(&t, &score(&v, &policy()));
            prop_assert_eq!(t.candidates.len(), n);
            let ranked: Vec<u32> = t.candidates.iter().filter_map(|c| c.rank).collect();
            prop_assert_eq!(ranked, (1..).take(t.candidates.iter().filter(|c| c.rank.is_some()).count()).collect::<Vec<u32>>());
            for w in t.candidates.windows(2) {
                if w[0].rank.is_some() && w[1].rank.is_some() {
                    prop_assert_eq!(rank_order(&w[0], &w[1]), Ordering::Less);
                }
            }
        }
    }

    #[test]
    fn the_synthetic_group_has_a_mix_of_eligible_and_ineligible() {
        let t = score(&synthetic::view(1_000, 0x5eed), &Policy::default());
        let eligible = t
            .candidates
            .iter()
            .filter(|c| c.eligibility.is_eligible())
            .count();
        assert!((800..1_000).contains(&eligible), "{eligible}");
    }
}
