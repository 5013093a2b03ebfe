//! The degraded-primary rule (`[policy.degraded]`): a primary that still serves but answers
//! slowly or fails requests is moved away from by an automatic planned switchover.
//!
//! Pure: `judge(clock, &view, now, &policy, &degraded) -> (clock, Option<Decision>)`. Each
//! observer (the primary's agents: the active node's report, else the freshest serving one; the
//! coordinator's own probe) gives [`Figures`] of every cluster (see [`DegradedPolicy`]). An
//! observer calls the primary **over** when its latency exceeds `latency_p99` or its error rate
//! exceeds `error_ratio`, and that figure is at least `worse_factor` times the same observer's
//! figure of the best eligible secondary (the scorer's first): a slowdown of every cluster, or
//! of the network the coordinator sees them through, never moves the primary. It **holds** while
//! that figure has not fallen below the `*_clear` threshold (hysteresis) and is still worse than
//! the secondary's.
//!
//! The clock starts on a tick on which both observers call the primary over and runs while both
//! hold; after `window` the primary is degraded. It is then moved ([`Decision::Switchover`] to
//! the scorer's first, which the leader begins through the same journaled, fenced path as
//! `vault-dr switchover`), unless automatic action is paused, the cooldown after the last
//! failover runs, `max_per_day` automatic switchovers began in the last 24 hours, or no
//! secondary is eligible (a lagging one is not): then [`Decision::Degraded`] says why. The
//! caller only asks while no failover is in progress or being confirmed.

use crate::failover::scorer;
use crate::model::degraded::{DegradedClock, DegradedEvidence, Figures, ObserverJudgement};
use crate::model::policy::DegradedPolicy;
use crate::model::view::{ClusterView, View};
use crate::model::{Decision, Policy};
use chrono::{DateTime, Utc};
use vault_dr_common::NodeState;

/// The primary's (or any cluster's) figures by its agents: the active node's fresh report,
/// else the freshest one; `None` without one, or from an agent too old to send the
/// recent summary. The node's name comes along.
pub fn agent_figures(
    cluster: &ClusterView,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Option<(String, Figures)> {
    let ttl = policy.report_ttl.as_secs_f64();
    // A secondary restoring snapshots is often not "serving" at the moment of its report; its
    // figures still say how fast its node answers.
    let node = cluster.active_node(now, ttl).or_else(|| {
        cluster
            .fresh_nodes(now, ttl)
            .min_by(|a, b| a.age_seconds(now).total_cmp(&b.age_seconds(now)))
    })?;
    let v = &node.report.vault;
    (v.recent.samples > 0).then(|| {
        (
            node.node.clone(),
            Figures {
                p99_ms: v.recent.p99_ms,
                error_ratio: v.recent.error_ratio,
            },
        )
    })
}

/// The coordinator's own figures of `cluster` (`None` before its first probe).
pub fn probe_figures(cluster: &ClusterView) -> Option<Figures> {
    (cluster.probe_recent.samples > 0).then_some(Figures {
        p99_ms: cluster.probe_recent.p99_ms,
        error_ratio: cluster.probe_recent.error_ratio,
    })
}

/// One observer's judgement of `primary` against `secondary`.
fn judge_observer(
    observer: String,
    primary: Option<Figures>,
    secondary: Option<Figures>,
    d: &DegradedPolicy,
) -> ObserverJudgement {
    let worse = |p: f64, s: Option<f64>| s.is_none_or(|s| p >= d.worse_factor * s);
    let (over, holding) = match primary {
        None => (false, false),
        Some(p) => {
            let high_ms = d.latency_p99.as_secs_f64() * 1000.0;
            let clear_ms = d.latency_p99_clear.as_secs_f64() * 1000.0;
            let slow = worse(p.p99_ms, secondary.map(|s| s.p99_ms));
            let failing = worse(p.error_ratio, secondary.map(|s| s.error_ratio));
            let over = (p.p99_ms > high_ms && slow) || (p.error_ratio > d.error_ratio && failing);
            let holding =
                (p.p99_ms >= clear_ms && slow) || (p.error_ratio >= d.error_ratio_clear && failing);
            (over, holding)
        }
    };
    ObserverJudgement {
        observer,
        primary,
        secondary,
        over,
        holding,
    }
}

/// The thresholds as one phrase.
fn thresholds(d: &DegradedPolicy) -> String {
    format!(
        "p99 > {} ms or > {:.0} % failed (clear below {} ms / {:.0} %), {}x the secondary's",
        d.latency_p99.as_millis(),
        d.error_ratio * 100.0,
        d.latency_p99_clear.as_millis(),
        d.error_ratio_clear * 100.0,
        d.worse_factor
    )
}

/// The evidence of this tick: both observers' figures of the primary and of the scorer's
/// first secondary (`None` when the primary is not in the view).
pub fn evidence(
    view: &View,
    now: DateTime<Utc>,
    policy: &Policy,
    d: &DegradedPolicy,
    secondary: Option<&str>,
) -> Option<DegradedEvidence> {
    let primary = view.clusters.get(&view.topology.primary)?;
    let second = secondary.and_then(|s| view.clusters.get(s));
    let agents = agent_figures(primary, now, policy);
    let agents_second = second
        .and_then(|c| agent_figures(c, now, policy))
        .map(|(_, f)| f);
    let observer = match &agents {
        Some((node, _)) => format!("agent of {node}"),
        None => "agents".to_owned(),
    };
    // A direct probe that is not serving (sealed, uninitialised) is the failure detector's
    // business, not a slowness: only a serving or unanswered probe is judged here.
    let probe_primary = probe_figures(primary).filter(|_| {
        primary.direct_probe.as_ref().is_none_or(|p| {
            p.state.is_serving() || matches!(p.state, NodeState::Unreachable | NodeState::Error)
        })
    });
    Some(DegradedEvidence {
        primary: primary.name.clone(),
        secondary: second.map(|c| c.name.clone()),
        agents: judge_observer(observer, agents.map(|(_, f)| f), agents_second, d),
        coordinator: judge_observer(
            "coordinator probe".to_owned(),
            probe_primary,
            second.and_then(probe_figures),
            d,
        ),
        thresholds: thresholds(d),
    })
}

/// One tick of the rule: the clock after it, and a decision when the primary is over (`None`:
/// not over, nothing to say).
pub fn judge(
    clock: Option<&DegradedClock>,
    view: &View,
    now: DateTime<Utc>,
    policy: &Policy,
    d: &DegradedPolicy,
) -> (Option<DegradedClock>, Option<Decision>) {
    let primary = view.topology.primary.clone();
    let table = scorer::score(view, policy);
    let Some(evidence) = evidence(view, now, policy, d, table.winner.as_deref()) else {
        return (None, None);
    };
    let running = clock.filter(|c| c.primary == primary && evidence.holding());
    let clock = match running {
        Some(c) => c.clone(),
        None if evidence.over() => DegradedClock {
            primary: primary.clone(),
            since: now,
        },
        None => return (None, None),
    };
    let held = (now - clock.since).num_milliseconds().max(0) as f64 / 1000.0;
    let window = d.window.as_secs_f64();
    let degraded = |not_moved: Option<String>| Decision::Degraded {
        primary: primary.clone(),
        held_seconds: held,
        window_seconds: window,
        not_moved,
        evidence: evidence.clone(),
    };
    if held < window {
        return (Some(clock), Some(degraded(None)));
    }
    let not_moved = if let Some(pause) = view.topology.pause_at(now) {
        Some(format!("automatic action is {pause}"))
    } else if let Some(left) = cooldown_left(view, now, policy) {
        Some(format!(
            "the last failover was too recent, cooldown {left:.1} s left"
        ))
    } else if view.topology.automatic_switchovers_since_a_day(now) >= d.max_per_day as usize {
        Some(format!(
            "{} automatic switchovers in the last 24 hours already (policy.degraded.max_per_day)",
            d.max_per_day
        ))
    } else if table.winner.is_none() {
        Some(format!("no secondary is eligible ({})", table.reasons()))
    } else {
        None
    };
    if not_moved.is_some() {
        return (Some(clock), Some(degraded(not_moved)));
    }
    let Some(to) = table.winner.clone() else {
        return (Some(clock), Some(degraded(None)));
    };
    let reason = format!(
        "automatic switchover: primary {primary} degraded for {held:.1} s (window {window:.0} s): {evidence}; {to} ranked first"
    );
    let decision = Decision::Switchover {
        from: primary,
        to,
        term: view.topology.term + 1,
        reason,
        table,
    };
    (Some(clock), Some(decision))
}

/// Seconds of cooldown left after the last failover (`None`: none left).
fn cooldown_left(view: &View, now: DateTime<Utc>, policy: &Policy) -> Option<f64> {
    let last = view.topology.last_failover_at?;
    let cooldown = chrono::Duration::from_std(policy.cooldown).unwrap_or(chrono::Duration::MAX);
    let until = last
        .checked_add_signed(cooldown)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    (until > now).then(|| (until - now).num_milliseconds() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{ViewBuilder, t0};
    use crate::model::topology::Pause;
    use chrono::Duration;
    use std::time::Duration as StdDuration;
    use vault_dr_common::LatencySummary;

    fn policy() -> Policy {
        Policy {
            cooldown: StdDuration::from_secs(300),
            degraded: Some(degraded()),
            ..Policy::default()
        }
    }

    fn degraded() -> DegradedPolicy {
        DegradedPolicy {
            window: StdDuration::from_secs(10),
            ..DegradedPolicy::default()
        }
    }

    fn summary(p99_ms: f64, error_ratio: f64) -> LatencySummary {
        LatencySummary {
            samples: 10,
            p50_ms: p99_ms,
            p99_ms,
            error_ratio,
        }
    }

    /// Sets both observers' figures of `cluster`: the agents' (recent p99, window errors) and
    /// the coordinator's probe.
    fn figures(b: ViewBuilder, cluster: &str, agent: (f64, f64), probe: (f64, f64)) -> ViewBuilder {
        b.reports(cluster, |r| {
            r.vault.recent = summary(agent.0, agent.1);
            r.vault.latency = summary(agent.0, agent.1);
        })
        .with(cluster, |c| {
            c.probe_recent = summary(probe.0, probe.1);
            c.probe_latency = summary(probe.0, probe.1);
        })
    }

    /// A group p, s1, s2 with the given figures of p and every secondary fast.
    fn group(agent: (f64, f64), probe: (f64, f64)) -> ViewBuilder {
        let b = ViewBuilder::healthy("p", &["s1", "s2"]);
        let b = figures(b, "s1", (2.0, 0.0), (3.0, 0.0));
        let b = figures(b, "s2", (2.0, 0.0), (3.0, 0.0));
        figures(b, "p", agent, probe)
    }

    /// Runs `judge` on `n` ticks one second apart: every decision, and the clock after.
    fn run(
        b: &ViewBuilder,
        n: i64,
        policy: &Policy,
    ) -> (Vec<Option<Decision>>, Option<DegradedClock>) {
        let d = policy.degraded.clone().unwrap();
        let mut clock = None;
        let mut out = Vec::new();
        for i in 0..n {
            let at = t0() + Duration::seconds(i);
            let v = b.clone().at(at).build();
            let (next, decision) = judge(clock.as_ref(), &v, at, policy, &d);
            clock = next;
            out.push(decision);
        }
        (out, clock)
    }

    fn switchovers(out: &[Option<Decision>]) -> Vec<(usize, String)> {
        out.iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Some(Decision::Switchover { to, .. }) => Some((i, to.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_fast_primary_is_not_over_and_says_nothing() {
        let (out, clock) = run(&group((2.0, 0.0), (3.0, 0.0)), 20, &policy());
        assert!(out.iter().all(Option::is_none), "{out:?}");
        assert_eq!(clock, None);
    }

    #[test]
    fn a_slow_primary_is_moved_once_the_window_is_over_with_both_observers_figures() {
        // The agents see 800 ms; the coordinator's probes time out (all failed).
        // The leader begins the switchover at once; until the topology says so, the rule
        // would say the same again.
        let (out, _) = run(&group((800.0, 0.0), (0.0, 1.0)), 11, &policy());
        for d in &out[..10] {
            let Some(Decision::Degraded {
                not_moved: None, ..
            }) = d
            else {
                panic!("expected degraded, got {d:?}");
            };
        }
        assert_eq!(switchovers(&out), vec![(10, "s1".to_owned())]);
        let Some(Decision::Switchover { reason, term, .. }) = &out[10] else {
            unreachable!()
        };
        assert_eq!(*term, 2);
        assert!(
            reason
                .contains("agent of p-0: p99 800 ms, 0 % failed (secondary p99 2 ms, 0 % failed)")
                && reason.contains(
                    "coordinator probe: p99 0 ms, 100 % failed (secondary p99 3 ms, 0 % failed)"
                )
                && reason.contains("window 10 s")
                && reason.contains("p99 > 500 ms or > 10 % failed"),
            "{reason}"
        );
    }

    #[test]
    fn a_primary_failing_one_request_in_five_is_moved_too() {
        let (out, _) = run(&group((2.0, 0.2), (3.0, 0.2)), 11, &policy());
        assert_eq!(switchovers(&out), vec![(10, "s1".to_owned())]);
    }

    #[test]
    fn one_observer_alone_never_makes_the_primary_degraded() {
        for (agent, probe) in [((800.0, 0.0), (3.0, 0.0)), ((2.0, 0.0), (0.0, 1.0))] {
            let (out, clock) = run(&group(agent, probe), 15, &policy());
            assert!(
                out.iter().all(Option::is_none),
                "{agent:?} {probe:?}: {out:?}"
            );
            assert_eq!(clock, None);
        }
    }

    #[test]
    fn every_cluster_slow_alike_moves_nothing() {
        let b = ViewBuilder::healthy("p", &["s1"]);
        let b = figures(b, "s1", (800.0, 0.0), (0.0, 1.0));
        let b = figures(b, "p", (820.0, 0.0), (0.0, 1.0));
        let (out, _) = run(&b, 20, &policy());
        assert!(out.iter().all(Option::is_none), "{out:?}");
    }

    #[test]
    fn the_clock_holds_above_the_lower_threshold_and_restarts_below_it() {
        let d = degraded();
        let p = policy();
        let slow = group((800.0, 0.0), (0.0, 1.0)).build();
        let mut clock = None;
        let at = |s: i64| t0() + Duration::seconds(s);
        let (c, _) = judge(None, &slow, at(0), &p, &d);
        assert_eq!(c.as_ref().map(|c| c.since), Some(at(0)));
        clock = c.or(clock);
        // 300 ms by the agents and the probe answering again, 7 % failed: below the upper
        // thresholds, above the lower ones: the clock holds.
        let between = group((300.0, 0.0), (300.0, 0.07)).at(at(5)).build();
        let (c, d5) = judge(clock.as_ref(), &between, at(5), &p, &d);
        assert_eq!(c.as_ref().map(|c| c.since), Some(at(0)), "{d5:?}");
        // Below the lower thresholds: it stops, and a new stretch starts from zero.
        let fast = group((100.0, 0.0), (100.0, 0.01)).at(at(6)).build();
        let (c, d6) = judge(c.as_ref(), &fast, at(6), &p, &d);
        assert_eq!((c, d6), (None, None));
    }

    #[test]
    fn the_primary_is_not_moved_while_paused_in_cooldown_at_the_daily_cap_or_without_a_candidate() {
        let p = policy();
        let slow = || group((800.0, 0.0), (0.0, 1.0));
        let cases: Vec<(ViewBuilder, &str)> = vec![
            (
                slow().topology(|t| {
                    t.pause = Some(Pause {
                        by: "ops".into(),
                        reason: "maintenance".into(),
                        since: t0(),
                        until: None,
                        ended: None,
                    })
                }),
                "automatic action is paused",
            ),
            (
                slow().topology(|t| t.last_failover_at = Some(t0())),
                "cooldown",
            ),
            (
                slow().topology(|t| {
                    t.note_automatic_switchover(t0() - Duration::hours(3));
                    t.note_automatic_switchover(t0() - Duration::hours(1));
                }),
                "2 automatic switchovers in the last 24 hours",
            ),
            (
                slow()
                    .reports("s1", |r| r.replication.lag_seconds = Some(600.0))
                    .reports("s2", |r| r.replication.lag_seconds = Some(600.0)),
                "no secondary is eligible",
            ),
        ];
        for (b, why) in cases {
            let (out, clock) = run(&b, 14, &p);
            assert!(switchovers(&out).is_empty(), "{why}: {out:?}");
            assert!(clock.is_some());
            let Some(Some(
                d @ Decision::Degraded {
                    not_moved: Some(n), ..
                },
            )) = out.last()
            else {
                panic!("{why}: {:?}", out.last());
            };
            assert!(n.contains(why), "{why}: {n}");
            assert!(d.to_string().contains("but not moved"), "{d}");
        }
        // Switchovers older than a day do not count.
        let old = slow().topology(|t| {
            t.note_automatic_switchover(t0() - Duration::hours(30));
            t.note_automatic_switchover(t0() - Duration::hours(25));
        });
        assert_eq!(switchovers(&run(&old, 11, &p).0).len(), 1);
    }

    #[test]
    fn a_lagging_secondary_is_passed_over_for_a_caught_up_one() {
        let b = group((800.0, 0.0), (0.0, 1.0))
            .reports("s1", |r| r.replication.lag_seconds = Some(600.0));
        let (out, _) = run(&b, 11, &policy());
        assert_eq!(switchovers(&out), vec![(10, "s2".to_owned())]);
    }

    #[test]
    fn a_new_primary_starts_a_new_clock() {
        let p = policy();
        let d = degraded();
        let v = group((800.0, 0.0), (0.0, 1.0)).build();
        let old = DegradedClock {
            primary: "s1".into(),
            since: t0() - Duration::seconds(100),
        };
        let (c, decision) = judge(Some(&old), &v, t0(), &p, &d);
        assert_eq!(c.map(|c| c.primary), Some("p".to_owned()));
        assert!(matches!(
            decision,
            Some(Decision::Degraded {
                held_seconds: 0.0,
                ..
            })
        ));
    }

    #[test]
    fn an_agent_without_the_recent_summary_gives_no_figures() {
        let b = group((800.0, 0.0), (0.0, 1.0)).reports("p", |r| {
            r.vault.recent = LatencySummary::default();
        });
        let (out, _) = run(&b, 12, &policy());
        assert!(out.iter().all(Option::is_none), "{out:?}");
    }
}
