//! The pure failure detector: `step(phase, &view, now, &policy) -> (Phase, Decision)`.
//!
//! The primary is **down** only when, for `policy.confirm` consecutive ticks, all three observers
//! agree ([`Observers`]):
//! 1. the coordinator's own probe of the primary is not serving (unreachable, error, sealed,
//!    uninitialised). `restoring` is not down (OpenBao blocks ~5 s during a snapshot restore);
//!    no probe yet, or a probe older than `report_ttl`, is no evidence and so not down;
//! 2. no fresh report (age <= `report_ttl`) from any primary node says it is serving or
//!    restoring; a fresh report of sealed/unreachable/error counts as down, and so does silence;
//! 3. the quorum (`policy.quorum`) of the secondaries that can vote says the primary is not
//!    reachable. A secondary cluster votes when one of its nodes has a fresh report carrying a
//!    `primary_probe` of the current primary that is itself no older than `report_ttl`; it votes
//!    "down" only when every such node of it says not reachable (one node of a cluster still
//!    seeing the primary is enough to say the primary is reachable from there). Zero voters means
//!    the quorum is never met: the coordinator never fails over blind.
//!
//! A group of one primary and one secondary therefore fails over only when that single
//! secondary's agent is alive and also cannot reach the primary. That is deliberate: with one
//! secondary there is no third party to break a tie between "the primary died" and "the
//! coordinator and its network died", and a silent secondary agent is itself a sign of a
//! partition. An operator still has the planned switchover.
//!
//! Anything less than full agreement is at most [`Phase::Suspect`], and a tick on which not all
//! three agree resets the count (ticks must be consecutive). When `confirm` is reached the
//! cooldown after the last failover is checked, then the scorer picks the target. A failover in
//! progress in the topology always wins: [`Decision::Resume`].

use crate::failover::scorer;
use crate::model::view::{ClusterView, View};
use crate::model::{
    Decision, Eligibility, FailoverRecord, Observers, Phase, Policy, QuorumMode, SwitchoverRefusal,
};
use chrono::{DateTime, Utc};
use vault_dr_common::NodeState;

/// Whether a direct probe state means "not serving" (restoring is not down).
fn state_down(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Unreachable | NodeState::Error | NodeState::Sealed | NodeState::Uninitialized
    )
}

/// What one report says as an observer: whether its node serves (or restores), and what its
/// probe of a peer (the primary) found. A change of it between two reports of a node is what
/// makes the leader evaluate at once (the confirm count still counts probe-interval ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The node serves or restores (not down as the second observer counts it).
    pub node_up: bool,
    /// The peer probed and whether it answered as serving (or restoring).
    pub peer: Option<(String, bool)>,
}

/// The [`Evidence`] of `report`.
pub fn evidence(report: &vault_dr_common::Report) -> Evidence {
    let s = report.vault.state;
    Evidence {
        node_up: s.is_serving() || s == NodeState::Restoring,
        peer: report.primary_probe.as_ref().map(|p| {
            (
                p.cluster.clone(),
                p.reachable() || p.state == NodeState::Restoring,
            )
        }),
    }
}

/// What the three observers say about `primary` at `now`.
pub fn observe(view: &View, now: DateTime<Utc>, policy: &Policy) -> Observers {
    let ttl = policy.report_ttl.as_secs_f64();
    let fresh_at = |at: DateTime<Utc>| (now - at).num_milliseconds() as f64 / 1000.0 <= ttl;
    let primary_name = &view.topology.primary;
    let primary = view.clusters.get(primary_name);
    let direct_down = primary
        .and_then(|c| c.direct_probe.as_ref())
        .is_some_and(|p| fresh_at(p.at) && state_down(p.state));
    // A new leader has heard from no agent yet: their silence is no evidence until one
    // report TTL has passed, or it would suspect every primary at every takeover; as soon as
    // every node of the primary has reported to it, their reports are evidence (a primary
    // that dies with the leader is then seen as fast as any other).
    let heard_from_all = |since: DateTime<Utc>| {
        primary.is_some_and(|c| {
            c.configured_nodes > 0
                && c.nodes.len() >= c.configured_nodes
                && c.nodes.iter().all(|n| n.received_at >= since)
        })
    };
    let reports_warming = view
        .observing_since
        .is_some_and(|since| fresh_at(since) && !heard_from_all(since));
    let reports_down = !reports_warming
        && !primary.is_some_and(|c| {
            c.fresh_nodes(now, ttl).any(|n| {
                let s = n.report.vault.state;
                s.is_serving() || s == NodeState::Restoring
            })
        });
    let mut secondaries_fresh = 0;
    let mut secondaries_down = 0;
    for cluster in view.clusters.values() {
        if &cluster.name == primary_name {
            continue;
        }
        match vote(cluster, primary_name, now, ttl, &fresh_at) {
            Some(true) => {
                secondaries_fresh += 1;
                secondaries_down += 1;
            }
            Some(false) => secondaries_fresh += 1,
            None => {}
        }
    }
    let quorum_met = secondaries_fresh > 0
        && match policy.quorum {
            QuorumMode::Majority => secondaries_down * 2 > secondaries_fresh,
            QuorumMode::All => secondaries_down == secondaries_fresh,
            QuorumMode::Any => secondaries_down >= 1,
        };
    Observers {
        direct_down,
        reports_down,
        secondaries_down,
        secondaries_fresh,
        quorum_met,
        reports_warming,
    }
}

/// One secondary cluster's vote: `Some(true)` = cannot reach the primary, `Some(false)` = can,
/// `None` = no fresh report with a fresh probe of the primary.
fn vote(
    cluster: &ClusterView,
    primary: &str,
    now: DateTime<Utc>,
    ttl: f64,
    fresh_at: &impl Fn(DateTime<Utc>) -> bool,
) -> Option<bool> {
    let mut voted = false;
    for node in cluster.fresh_nodes(now, ttl) {
        let Some(probe) = &node.report.primary_probe else {
            continue;
        };
        if probe.cluster != primary || !fresh_at(probe.at) {
            continue;
        }
        voted = true;
        if probe.reachable() || probe.state == NodeState::Restoring {
            return Some(false);
        }
    }
    voted.then_some(true)
}

/// The decision logic: given the phase after the previous tick, this tick's view, the time and
/// the policy, the next phase and this tick's decision. Pure and deterministic.
pub fn step(phase: &Phase, view: &View, now: DateTime<Utc>, policy: &Policy) -> (Phase, Decision) {
    if let Some(f) = &view.topology.failover {
        return (
            Phase::FailingOver { id: f.id.clone() },
            Decision::Resume { id: f.id.clone() },
        );
    }
    // A `FailingOver` phase without a failover in the topology means the failover finished or
    // its term CAS was lost: the topology is authoritative, so evaluate afresh.
    let primary = view.topology.primary.clone();
    let observers = observe(view, now, policy);
    let confirm = policy.confirm.max(1);
    let since = match phase {
        Phase::Suspect { since, .. } => *since,
        _ => now,
    };
    if observers.all_down() {
        let ticks = match phase {
            Phase::Suspect { ticks, .. } => ticks.saturating_add(1),
            _ => 1,
        };
        let suspect = Phase::Suspect { since, ticks };
        if ticks < confirm {
            return (
                suspect,
                Decision::Suspect {
                    primary,
                    ticks,
                    confirm,
                    observers,
                },
            );
        }
        if let Some(pause) = view.topology.pause_at(now) {
            return (
                suspect,
                Decision::Paused {
                    primary,
                    pause: pause.clone(),
                },
            );
        }
        if let Some(last) = view.topology.last_failover_at {
            let cooldown =
                chrono::Duration::from_std(policy.cooldown).unwrap_or(chrono::Duration::MAX);
            let until = last
                .checked_add_signed(cooldown)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if until > now {
                let remaining_seconds = (until - now).num_milliseconds() as f64 / 1000.0;
                return (
                    suspect,
                    Decision::CooldownBlocked {
                        primary,
                        remaining_seconds,
                    },
                );
            }
        }
        let table = scorer::score(view, policy);
        return match table.winner.clone() {
            Some(to) => {
                let term = view.topology.term + 1;
                let reason = format!(
                    "primary {primary} down for {ticks} consecutive ticks ({observers}); {to} ranked first"
                );
                (
                    Phase::FailingOver {
                        id: FailoverRecord::id_for(term, &primary, &to),
                    },
                    Decision::Failover {
                        from: primary,
                        to,
                        term,
                        reason,
                        table,
                    },
                )
            }
            None => (suspect, Decision::NoCandidate { primary, table }),
        };
    }
    if observers.any_down() {
        return (
            Phase::Suspect { since, ticks: 0 },
            Decision::Suspect {
                primary,
                ticks: 0,
                confirm,
                observers,
            },
        );
    }
    let ttl = policy.report_ttl.as_secs_f64();
    let age = view
        .clusters
        .get(&primary)
        .and_then(|c| {
            c.fresh_nodes(now, ttl)
                .map(|n| n.age_seconds(now))
                .min_by(f64::total_cmp)
        })
        .map(|a| format!("report age {a:.1} s"))
        .unwrap_or_else(|| "no fresh report".to_owned());
    (
        Phase::Healthy,
        Decision::NoAction {
            reason: format!("primary {primary} healthy, {age}"),
        },
    )
}

/// The decision on an operator's planned switchover to `to`, from the same view and scorer as
/// a failover: refused while a failover is in progress, when `to` is unknown or already the
/// primary, or when the scorer says it cannot be promoted (a restoring standby can: see the
/// scorer). Pure: the caller executes [`Decision::Switchover`].
pub fn switchover(view: &View, to: &str, policy: &Policy) -> Result<Decision, SwitchoverRefusal> {
    if !view.clusters.contains_key(to) {
        return Err(SwitchoverRefusal::UnknownCluster {
            to: to.to_owned(),
            known: view.clusters.keys().cloned().collect(),
        });
    }
    if let Some(f) = &view.topology.failover {
        return Err(SwitchoverRefusal::InProgress {
            id: f.id.clone(),
            from: f.from.clone(),
            to: f.to.clone(),
        });
    }
    let from = view.topology.primary.clone();
    if from == to {
        return Err(SwitchoverRefusal::AlreadyPrimary { to: to.to_owned() });
    }
    let table = scorer::score(view, policy);
    if let Some(Eligibility::Ineligible(why)) = table.candidate(to).map(|c| &c.eligibility) {
        return Err(SwitchoverRefusal::Ineligible {
            to: to.to_owned(),
            why: why.clone(),
        });
    }
    Ok(Decision::Switchover {
        reason: format!("planned switchover {from} -> {to} requested by the operator"),
        from,
        to: to.to_owned(),
        term: view.topology.term + 1,
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Step;
    use crate::model::test_util::{ViewBuilder, t0};
    use crate::model::topology::FailoverInProgress;
    use crate::model::{DecisionRecord, Ineligible};
    use chrono::Duration;
    use std::time::Duration as StdDuration;

    fn policy() -> Policy {
        Policy {
            confirm: 3,
            report_ttl: StdDuration::from_secs(5),
            cooldown: StdDuration::from_secs(300),
            ..Policy::default()
        }
    }

    /// Runs `step` on `views` in order, starting Healthy, and returns every decision.
    fn run(views: &[View], policy: &Policy) -> Vec<(Phase, Decision)> {
        let mut phase = Phase::Healthy;
        views
            .iter()
            .map(|v| {
                let (next, d) = step(&phase, v, v.at, policy);
                phase = next.clone();
                (next, d)
            })
            .collect()
    }

    /// `n` views of the same builder, one second apart.
    fn ticks(b: &ViewBuilder, n: i64) -> Vec<View> {
        (0..n)
            .map(|i| b.clone().at(t0() + Duration::seconds(i)).build())
            .collect()
    }

    fn dead3() -> ViewBuilder {
        ViewBuilder::healthy("dc1", &["dc2", "dc3"]).primary_dead()
    }

    #[test]
    fn a_healthy_primary_gives_no_action_and_a_healthy_phase() {
        let v = ViewBuilder::healthy("dc1", &["dc2", "dc3"]).build();
        let (phase, d) = step(&Phase::Healthy, &v, v.at, &policy());
        assert_eq!(phase, Phase::Healthy);
        assert_eq!(
            d.to_string(),
            "no action: primary dc1 healthy, report age 0.0 s"
        );
    }

    #[test]
    fn one_observer_saying_down_makes_the_primary_suspect_without_counting_ticks() {
        let b = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .direct("dc1", Some(NodeState::Unreachable));
        let out = run(&ticks(&b, 5), &policy());
        for (phase, d) in out {
            assert_eq!(
                phase,
                Phase::Suspect {
                    since: t0(),
                    ticks: 0
                }
            );
            let Decision::Suspect {
                ticks, observers, ..
            } = d
            else {
                panic!("expected suspect, got {d}");
            };
            assert_eq!(ticks, 0);
            assert!(observers.direct_down && !observers.reports_down && !observers.quorum_met);
        }
    }

    #[test]
    fn the_primary_is_down_only_after_confirm_ticks_of_full_agreement() {
        let out = run(&ticks(&dead3(), 3), &policy());
        assert!(
            matches!(
                out[0].1,
                Decision::Suspect {
                    ticks: 1,
                    confirm: 3,
                    ..
                }
            ),
            "{}",
            out[0].1
        );
        assert!(
            matches!(out[1].1, Decision::Suspect { ticks: 2, .. }),
            "{}",
            out[1].1
        );
        let (
            phase,
            Decision::Failover {
                from,
                to,
                term,
                table,
                ..
            },
        ) = &out[2]
        else {
            panic!("expected failover, got {}", out[2].1);
        };
        assert_eq!((from.as_str(), to.as_str(), *term), ("dc1", "dc2", 2));
        assert_eq!(table.winner.as_deref(), Some("dc2"));
        assert_eq!(
            phase,
            &Phase::FailingOver {
                id: FailoverRecord::id_for(2, "dc1", "dc2")
            }
        );
    }

    #[test]
    fn a_coordinator_cut_off_from_the_primary_while_secondaries_still_see_it_never_fails_over() {
        // The coordinator neither probes the primary nor receives its agents' reports, but both
        // secondaries' agents still reach it.
        let b = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .direct("dc1", Some(NodeState::Unreachable))
            .report_age("dc1", 3600);
        for (phase, d) in run(&ticks(&b, 20), &policy()) {
            assert!(
                matches!(phase, Phase::Suspect { ticks: 0, .. }),
                "{phase:?}"
            );
            let Decision::Suspect { observers, .. } = d else {
                panic!("expected suspect, got {d}");
            };
            assert_eq!(
                (observers.secondaries_down, observers.secondaries_fresh),
                (0, 2)
            );
        }
    }

    #[test]
    fn stale_secondary_reports_do_not_count_toward_the_quorum() {
        let b = dead3().report_age("dc2", 6).report_age("dc3", 60);
        for (_, d) in run(&ticks(&b, 6), &policy()) {
            let Decision::Suspect {
                observers, ticks, ..
            } = d
            else {
                panic!("expected suspect, got {d}");
            };
            assert_eq!(
                (observers.secondaries_fresh, observers.quorum_met, ticks),
                (0, false, 0)
            );
        }
    }

    #[test]
    fn a_stale_primary_probe_inside_a_fresh_secondary_report_does_not_vote() {
        let b = dead3().primary_probe("dc2", NodeState::Unreachable, 30);
        let v = b.build();
        let o = observe(&v, v.at, &policy());
        assert_eq!((o.secondaries_down, o.secondaries_fresh), (1, 1));
        assert!(
            o.quorum_met,
            "the one fresh voter is a majority of the voters"
        );
    }

    #[test]
    fn probes_of_another_cluster_than_the_primary_do_not_vote() {
        let v = dead3()
            .reports("dc2", |r| {
                if let Some(p) = &mut r.primary_probe {
                    p.cluster = "dc0".into();
                }
            })
            .build();
        let o = observe(&v, v.at, &policy());
        assert_eq!((o.secondaries_down, o.secondaries_fresh), (1, 1));
    }

    #[test]
    fn zero_voting_secondaries_never_meet_the_quorum() {
        let b = dead3()
            .reports("dc2", |r| r.primary_probe = None)
            .reports("dc3", |r| r.primary_probe = None);
        for quorum in [QuorumMode::Majority, QuorumMode::All, QuorumMode::Any] {
            let p = Policy { quorum, ..policy() };
            for (_, d) in run(&ticks(&b, 6), &p) {
                assert!(
                    matches!(d, Decision::Suspect { ticks: 0, .. }),
                    "{quorum:?}: {d}"
                );
            }
        }
    }

    #[test]
    fn a_restoring_primary_is_not_down() {
        // The direct probe times out during the restore, but the agent says restoring.
        let b = dead3()
            .report_age("dc1", 0)
            .node_state("dc1", NodeState::Restoring);
        let v = b.clone().build();
        let o = observe(&v, v.at, &policy());
        assert!(o.direct_down && !o.reports_down, "{o}");
        for (_, d) in run(&ticks(&b, 6), &policy()) {
            assert!(matches!(d, Decision::Suspect { ticks: 0, .. }), "{d}");
        }
        // A restoring answer to the direct probe is not down either.
        let v = dead3().direct("dc1", Some(NodeState::Restoring)).build();
        assert!(!observe(&v, v.at, &policy()).direct_down);
        // Nor is a secondary's probe that saw it restoring.
        let v = dead3()
            .primary_probe("dc2", NodeState::Restoring, 0)
            .primary_probe("dc3", NodeState::Restoring, 0)
            .build();
        assert!(!observe(&v, v.at, &policy()).quorum_met);
    }

    #[test]
    fn no_direct_probe_yet_is_not_down() {
        let v = dead3().direct("dc1", None).build();
        let (_, d) = step(&Phase::Healthy, &v, v.at, &policy());
        let Decision::Suspect { observers, .. } = d else {
            panic!("expected suspect, got {d}");
        };
        assert!(!observers.direct_down && observers.reports_down && observers.quorum_met);
    }

    #[test]
    fn a_fresh_report_of_a_sealed_primary_counts_as_down() {
        let b = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .node_state("dc1", NodeState::Sealed)
            .direct("dc1", Some(NodeState::Sealed))
            .primary_probe("dc2", NodeState::Sealed, 0)
            .primary_probe("dc3", NodeState::Sealed, 0);
        let out = run(&ticks(&b, 3), &policy());
        assert!(
            matches!(out[2].1, Decision::Failover { .. }),
            "{}",
            out[2].1
        );
    }

    #[test]
    fn confirm_ticks_must_be_consecutive() {
        let dead = dead3();
        let wobble = dead3()
            .primary_probe("dc2", NodeState::Active, 0)
            .primary_probe("dc3", NodeState::Active, 0);
        let seq = [
            &dead, &dead, &wobble, &dead, &dead, &wobble, &dead, &dead, &dead,
        ];
        let views: Vec<View> = seq
            .iter()
            .enumerate()
            .map(|(i, b)| (*b).clone().at(t0() + Duration::seconds(i as i64)).build())
            .collect();
        let out = run(&views, &policy());
        let counted: Vec<Option<u32>> = out
            .iter()
            .map(|(_, d)| match d {
                Decision::Suspect { ticks, .. } => Some(*ticks),
                _ => None,
            })
            .collect();
        assert_eq!(
            counted,
            [
                Some(1),
                Some(2),
                Some(0),
                Some(1),
                Some(2),
                Some(0),
                Some(1),
                Some(2),
                None
            ]
        );
        assert!(
            matches!(out[8].1, Decision::Failover { .. }),
            "{}",
            out[8].1
        );
        // The suspicion's start survives a partial tick: it only clears when nobody says down.
        assert!(matches!(out[7].0, Phase::Suspect { since, .. } if since == t0()));
    }

    #[test]
    fn a_suspect_that_clears_returns_to_healthy_and_restarts_the_count() {
        let healthy = ViewBuilder::healthy("dc1", &["dc2", "dc3"]);
        let seq = [&dead3(), &dead3(), &healthy, &dead3()];
        let views: Vec<View> = seq
            .iter()
            .enumerate()
            .map(|(i, b)| (*b).clone().at(t0() + Duration::seconds(i as i64)).build())
            .collect();
        let out = run(&views, &policy());
        assert_eq!(out[2].0, Phase::Healthy);
        assert_eq!(
            out[3].0,
            Phase::Suspect {
                since: t0() + Duration::seconds(3),
                ticks: 1
            }
        );
    }

    #[test]
    fn a_flapping_primary_is_blocked_by_the_cooldown() {
        let last = t0() - Duration::seconds(60);
        let b = dead3().topology(|t| {
            t.term = 2;
            t.last_failover_at = Some(last);
        });
        let out = run(&ticks(&b, 4), &policy());
        let Decision::CooldownBlocked {
            primary,
            remaining_seconds,
        } = &out[2].1
        else {
            panic!("expected cooldown, got {}", out[2].1);
        };
        assert_eq!(primary, "dc1");
        assert!(
            (remaining_seconds - 238.0).abs() < 1e-9,
            "{remaining_seconds}"
        );
        assert!(matches!(out[3].1, Decision::CooldownBlocked { .. }));
        assert!(matches!(out[3].0, Phase::Suspect { ticks: 4, .. }));
        // Once the cooldown has passed, a primary still down fails over at once.
        let after = b.at(last + Duration::seconds(300)).build();
        let (_, d) = step(&out[3].0, &after, after.at, &policy());
        assert!(matches!(d, Decision::Failover { term: 3, .. }), "{d}");
    }

    #[test]
    fn a_paused_group_does_not_fail_over_a_down_primary_until_the_pause_ends() {
        use crate::model::topology::Pause;
        let until = t0() + Duration::seconds(10);
        let b = dead3().topology(|t| {
            t.pause = Some(Pause {
                by: "alice@ops".into(),
                reason: "raft upgrade".into(),
                since: t0() - Duration::seconds(5),
                until: Some(until),
                ended: None,
            });
        });
        let out = run(&ticks(&b, 4), &policy());
        let Decision::Paused { primary, pause } = &out[2].1 else {
            panic!("expected paused, got {}", out[2].1);
        };
        assert_eq!((primary.as_str(), pause.by.as_str()), ("dc1", "alice@ops"));
        let sentence = out[2].1.to_string();
        assert!(
            sentence.starts_with(
                "paused: primary dc1 is down but automatic failover is paused by alice@ops"
            ) && sentence.contains("raft upgrade"),
            "{sentence}"
        );
        // Detection goes on meanwhile: the count keeps rising.
        assert!(matches!(out[3].0, Phase::Suspect { ticks: 4, .. }));
        // Its time runs out: a primary still down fails over at once.
        let after = b.clone().at(until).build();
        let (_, d) = step(&out[3].0, &after, after.at, &policy());
        assert!(matches!(d, Decision::Failover { term: 2, .. }), "{d}");
        // Ended by `vault-dr resume` before its time: the same.
        let resumed = b
            .topology(|t| {
                t.end_pause(t0(), "resumed by bob");
            })
            .build();
        let (_, d) = step(&out[3].0, &resumed, resumed.at, &policy());
        assert!(matches!(d, Decision::Failover { .. }), "{d}");
    }

    #[test]
    fn a_failover_in_progress_in_the_topology_is_resumed_whatever_else() {
        let inflight = FailoverInProgress {
            id: "2-dc1-dc2".into(),
            from: "dc1".into(),
            to: "dc2".into(),
            completed: Step::Decided,
            planned: false,
            raft_node: None,
            raft_handover: false,
        };
        for b in [ViewBuilder::healthy("dc1", &["dc2"]), dead3()] {
            let v = b.topology(|t| t.failover = Some(inflight.clone())).build();
            for phase in [
                Phase::Healthy,
                Phase::Suspect {
                    since: t0(),
                    ticks: 2,
                },
            ] {
                let (next, d) = step(&phase, &v, v.at, &policy());
                assert_eq!(
                    next,
                    Phase::FailingOver {
                        id: "2-dc1-dc2".into()
                    }
                );
                assert_eq!(
                    d,
                    Decision::Resume {
                        id: "2-dc1-dc2".into()
                    }
                );
            }
        }
    }

    #[test]
    fn a_failing_over_phase_without_a_failover_in_the_topology_is_evaluated_afresh() {
        let v = ViewBuilder::healthy("dc2", &["dc1"])
            .topology(|t| t.term = 2)
            .build();
        let (next, d) = step(
            &Phase::FailingOver {
                id: "2-dc1-dc2".into(),
            },
            &v,
            v.at,
            &policy(),
        );
        assert_eq!(next, Phase::Healthy);
        assert!(matches!(d, Decision::NoAction { .. }));
    }

    #[test]
    fn a_down_primary_with_no_eligible_secondary_gives_no_candidate() {
        let b = dead3()
            .with("dc2", |c| c.excluded = true)
            .reports("dc3", |r| r.replication.seeded = false);
        let out = run(&ticks(&b, 3), &policy());
        let (phase, d) = &out[2];
        let Decision::NoCandidate { primary, table } = d else {
            panic!("expected no candidate, got {d}");
        };
        assert_eq!((primary.as_str(), table.winner.as_ref()), ("dc1", None));
        assert!(matches!(phase, Phase::Suspect { ticks: 3, .. }));
        assert_eq!(
            d.to_string(),
            "no candidate: primary dc1 is down but no secondary is eligible \
             (dc2: excluded by the operator; dc3: never seeded by replication)"
        );
    }

    #[test]
    fn a_two_cluster_group_fails_over_only_when_the_single_secondary_agrees() {
        let go = |b: &ViewBuilder, n: i64| run(&ticks(b, n), &policy());
        let dead = ViewBuilder::healthy("dc1", &["dc2"]).primary_dead();
        assert!(matches!(go(&dead, 3)[2].1, Decision::Failover { .. }));
        let never = |out: Vec<(Phase, Decision)>| {
            out.iter()
                .all(|(_, d)| matches!(d, Decision::Suspect { ticks: 0, .. }))
        };
        let silent = dead.clone().reports("dc2", |r| r.primary_probe = None);
        assert!(
            never(go(&silent, 10)),
            "a silent secondary agent must block failover"
        );
        let sees_it = dead.primary_probe("dc2", NodeState::Standby, 0);
        assert!(
            never(go(&sees_it, 10)),
            "a secondary that still sees the primary must block failover"
        );
    }

    #[test]
    fn the_quorum_modes_count_the_voting_secondaries_as_documented() {
        // 4 voters, `down` of them cannot reach the primary.
        let rows = [
            (QuorumMode::Majority, 2, false),
            (QuorumMode::Majority, 3, true),
            (QuorumMode::All, 3, false),
            (QuorumMode::All, 4, true),
            (QuorumMode::Any, 0, false),
            (QuorumMode::Any, 1, true),
        ];
        for (mode, down, want) in rows {
            let names = ["dc2", "dc3", "dc4", "dc5"];
            let mut b = ViewBuilder::healthy("dc1", &names).primary_dead();
            for n in &names[down..] {
                b = b.primary_probe(n, NodeState::Active, 0);
            }
            let v = b.build();
            let p = Policy {
                quorum: mode,
                ..policy()
            };
            let o = observe(&v, v.at, &p);
            assert_eq!((o.secondaries_down, o.secondaries_fresh), (down, 4));
            assert_eq!(o.quorum_met, want, "{mode:?} with {down} of 4 down");
        }
    }

    #[test]
    fn a_secondary_cluster_with_one_node_still_seeing_the_primary_votes_up() {
        let v = dead3()
            .with("dc2", |c| {
                let mut other = c.nodes[0].clone();
                other.node = "dc2-1".into();
                if let Some(p) = &mut other.report.primary_probe {
                    p.state = NodeState::Active;
                }
                c.nodes.push(other);
            })
            .build();
        let o = observe(&v, v.at, &policy());
        assert_eq!(
            (o.secondaries_down, o.secondaries_fresh, o.quorum_met),
            (1, 2, false)
        );
    }

    #[test]
    fn every_decision_reads_as_one_sentence_and_the_record_survives_json() {
        let out = run(&ticks(&dead3(), 3), &policy());
        for (phase, d) in out {
            let s = d.to_string();
            assert!(!s.contains('\n') && s.len() < 400, "{s}");
            let v = dead3().build();
            let rec = DecisionRecord::new(phase, d, &v);
            assert_eq!(rec.sentence, s);
            assert_eq!((rec.term, rec.primary.as_str()), (1, "dc1"));
            let json = serde_json::to_string(&rec).unwrap();
            assert_eq!(serde_json::from_str::<DecisionRecord>(&json).unwrap(), rec);
        }
        let v = dead3().build();
        let (_, d) = step(&Phase::Healthy, &v, v.at, &policy());
        assert_eq!(
            d.to_string(),
            "suspect: primary dc1 may be down, 1 of 3 confirming ticks (direct probe down, \
             reports down, 2 of 2 secondaries cannot reach it (quorum met))"
        );
    }

    /// One row per rule of [`switchover`]: the view, the target, and what must come out.
    #[test]
    fn a_planned_switchover_is_decided_by_the_same_rules_for_every_caller() {
        let inflight = FailoverInProgress {
            id: "2-dc1-dc2".into(),
            from: "dc1".into(),
            to: "dc2".into(),
            completed: Step::Fenced,
            planned: true,
            raft_node: None,
            raft_handover: false,
        };
        let healthy = || ViewBuilder::healthy("dc1", &["dc2", "dc3"]);
        /// The rule, the view, the target, and `Ok((from, term))` or the refusal.
        type Row = (
            &'static str,
            View,
            &'static str,
            Result<(&'static str, u64), SwitchoverRefusal>,
        );
        let rows: Vec<Row> = vec![
            (
                "an eligible secondary is switched to in the next term",
                healthy().build(),
                "dc2",
                Ok(("dc1", 2)),
            ),
            (
                "an unknown cluster is refused with the group's clusters",
                healthy().build(),
                "dc9",
                Err(SwitchoverRefusal::UnknownCluster {
                    to: "dc9".into(),
                    known: vec!["dc1".into(), "dc2".into(), "dc3".into()],
                }),
            ),
            (
                "a failover in progress is never overtaken",
                healthy()
                    .topology(|t| t.failover = Some(inflight.clone()))
                    .build(),
                "dc3",
                Err(SwitchoverRefusal::InProgress {
                    id: "2-dc1-dc2".into(),
                    from: "dc1".into(),
                    to: "dc2".into(),
                }),
            ),
            (
                "the primary cannot be switched to itself",
                healthy().build(),
                "dc1",
                Err(SwitchoverRefusal::AlreadyPrimary { to: "dc1".into() }),
            ),
            (
                "an excluded secondary is refused with the scorer's reason",
                healthy().with("dc2", |c| c.excluded = true).build(),
                "dc2",
                Err(SwitchoverRefusal::Ineligible {
                    to: "dc2".into(),
                    why: Ineligible::Excluded,
                }),
            ),
            (
                "a sealed secondary is refused with the scorer's reason",
                healthy()
                    .node_state("dc3", NodeState::Sealed)
                    .direct("dc3", Some(NodeState::Sealed))
                    .build(),
                "dc3",
                Err(SwitchoverRefusal::Ineligible {
                    to: "dc3".into(),
                    why: Ineligible::Sealed,
                }),
            ),
            (
                "a restoring standby may be switched to (the promote step waits for it)",
                healthy()
                    .node_state("dc2", NodeState::Restoring)
                    .direct("dc2", Some(NodeState::Restoring))
                    .build(),
                "dc2",
                Ok(("dc1", 2)),
            ),
        ];
        for (rule, view, to, want) in rows {
            let got = switchover(&view, to, &policy());
            match (got, want) {
                (
                    Ok(Decision::Switchover {
                        from,
                        to: t,
                        term,
                        table,
                        reason,
                    }),
                    Ok((f, n)),
                ) => {
                    assert_eq!((from.as_str(), t.as_str(), term), (f, to, n), "{rule}");
                    assert_eq!(
                        reason,
                        format!("planned switchover {f} -> {to} requested by the operator"),
                        "{rule}"
                    );
                    assert!(table.candidate(to).is_some(), "{rule}");
                }
                (Err(e), Err(w)) => assert_eq!(e, w, "{rule}"),
                (got, want) => panic!("{rule}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn switchover_refusals_read_as_the_sentences_the_api_answers() {
        let cases = [
            (
                SwitchoverRefusal::UnknownCluster {
                    to: "dc9".into(),
                    known: vec!["dc1".into(), "dc2".into()],
                },
                "\"dc9\" is not a cluster of this DR group (clusters: dc1, dc2)",
            ),
            (
                SwitchoverRefusal::InProgress {
                    id: "2-dc1-dc2".into(),
                    from: "dc1".into(),
                    to: "dc2".into(),
                },
                "failover 2-dc1-dc2 (dc1 -> dc2) is in progress; wait until it is done",
            ),
            (
                SwitchoverRefusal::AlreadyPrimary { to: "dc1".into() },
                "dc1 is already the primary",
            ),
            (
                SwitchoverRefusal::Ineligible {
                    to: "dc2".into(),
                    why: Ineligible::Excluded,
                },
                "dc2 cannot be promoted now: excluded by the operator; remove `excluded` from its configuration first",
            ),
        ];
        for (refusal, sentence) in cases {
            assert_eq!(refusal.to_string(), sentence);
        }
    }

    #[test]
    fn a_new_leader_counts_the_agents_silence_only_once_their_reports_had_time_to_arrive() {
        let p = policy();
        // Just took the lease: no report has arrived yet, the primary answers the probe.
        let fresh = ViewBuilder::healthy("dc1", &["dc2", "dc3"])
            .no_reports("dc1")
            .no_reports("dc2")
            .no_reports("dc3")
            .observing_since(t0() - Duration::seconds(1));
        let (phase, d) = step(&Phase::Healthy, &fresh.clone().build(), t0(), &p);
        assert_eq!(phase, Phase::Healthy, "{d}");
        assert!(matches!(d, Decision::NoAction { .. }), "{d}");
        let o = observe(&fresh.clone().build(), t0(), &p);
        assert!(o.reports_warming && !o.reports_down, "{o}");
        assert!(o.to_string().contains("reports not counted yet"), "{o}");
        // One report TTL later the silence is evidence again.
        let late = fresh.observing_since(t0() - Duration::seconds(6)).build();
        let o = observe(&late, t0(), &p);
        assert!(!o.reports_warming && o.reports_down, "{o}");
        // A dead primary is still seen by the other two observers while warming, and the
        // failover follows once the reports count.
        // (Its reports arrived before the takeover: as a follower's, they are no evidence.)
        let dead = dead3()
            .observing_since(t0() - Duration::seconds(1))
            .with("dc1", |c| {
                for n in &mut c.nodes {
                    n.received_at = t0() - Duration::seconds(2);
                }
            })
            .build();
        let o = observe(&dead, t0(), &p);
        assert!(o.direct_down && o.quorum_met && !o.reports_down, "{o}");
        let dead_later = dead3().observing_since(t0() - Duration::seconds(6)).build();
        assert!(observe(&dead_later, t0(), &p).all_down());
        // Once every node of the primary has reported to the new leader, its reports count at
        // once: a primary that died with the old leader is seen without waiting out the TTL.
        let heard = dead3()
            .node_state("dc1", NodeState::Unreachable)
            .observing_since(t0() - Duration::seconds(1))
            .with("dc1", |c| {
                for n in &mut c.nodes {
                    n.received_at = t0() - Duration::milliseconds(500);
                }
            })
            .build();
        let o = observe(&heard, t0(), &p);
        assert!(!o.reports_warming && o.all_down(), "{o}");
        // Not while a configured node of the primary has not reported yet.
        let partly = dead3()
            .node_state("dc1", NodeState::Unreachable)
            .observing_since(t0() - Duration::seconds(1))
            .with("dc1", |c| {
                for n in &mut c.nodes {
                    n.received_at = t0() - Duration::milliseconds(500);
                }
                c.configured_nodes = 2;
            })
            .build();
        assert!(observe(&partly, t0(), &p).reports_warming);
    }
}
