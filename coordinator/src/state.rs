//! The coordinator's in-memory state: the latest report of every node, the latest direct probe
//! of every cluster, the cached topology and the latest decision. Handlers write reports here;
//! the leader loop builds each tick's [`View`] from it.

use crate::config::Config;
use crate::model::AppliedIndex;
use crate::model::DecisionRecord;
use crate::model::Step;
use crate::model::topology::Topology;
use crate::model::view::{ClusterView, DirectProbe, NodeView, View};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use url::Url;
use vault_dr_common::{DesiredState, Report, Role};

/// Why a report was refused (each maps to a 4xx and a metric label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRejection {
    /// The cluster is not in the configuration.
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    /// The node is not configured for its cluster.
    #[error("unknown node {node:?} for cluster {cluster:?}")]
    UnknownNode {
        /// Cluster named in the report.
        cluster: String,
        /// Node named in the report.
        node: String,
    },
    /// `agent_started_at` or `sent_at` lies further in the future than [`MAX_CLOCK_SKEW_SECONDS`]:
    /// accepting it would make every later real report of the node look like a replay.
    #[error(
        "report from the future: {field} is {ahead_seconds} s ahead of the coordinator's clock"
    )]
    ClockSkew {
        /// Which timestamp.
        field: &'static str,
        /// How far ahead, in seconds.
        ahead_seconds: i64,
    },
    /// Same agent process, sequence number not higher than one already accepted.
    #[error("replayed or reordered report (seq {seq} <= {last})")]
    Replay {
        /// Sequence number of this report.
        seq: u64,
        /// Highest accepted so far.
        last: u64,
    },
}

impl ReportRejection {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownCluster(_) => "unknown_cluster",
            Self::UnknownNode { .. } => "unknown_node",
            Self::Replay { .. } => "replay",
            Self::ClockSkew { .. } => "clock_skew",
        }
    }
}

/// How far an agent's clock may run ahead of the coordinator's before its report is refused.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 60;

/// Shared mutable state. Locks are held only for map operations, never across `.await`.
#[derive(Debug, Default)]
pub struct State {
    reports: RwLock<HashMap<(String, String), NodeView>>,
    applied: RwLock<HashMap<(String, String), AppliedIndex>>,
    probes: RwLock<HashMap<String, DirectProbe>>,
    probe_windows: RwLock<HashMap<String, vault_dr_common::latency::LatencyWindow>>,
    topology: RwLock<Option<Topology>>,
    decision: RwLock<Option<DecisionRecord>>,
    leading_since: RwLock<Option<DateTime<Utc>>>,
    refusal: crate::group::Refusal,
    held: RwLock<Option<String>>,
    kick: tokio::sync::Notify,
    evidence: tokio::sync::Notify,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// Validates a report against the configuration and the last one of its node, and keeps it.
    pub fn accept_report(
        &self,
        config: &Config,
        report: Report,
        received_at: DateTime<Utc>,
    ) -> Result<(), ReportRejection> {
        let cluster = config
            .cluster(&report.cluster)
            .ok_or_else(|| ReportRejection::UnknownCluster(report.cluster.clone()))?;
        if !cluster.nodes.contains(&report.node) {
            return Err(ReportRejection::UnknownNode {
                cluster: report.cluster.clone(),
                node: report.node.clone(),
            });
        }
        for (field, at) in [
            ("agent_started_at", report.agent_started_at),
            ("sent_at", report.sent_at),
        ] {
            let ahead_seconds = (at - received_at).num_seconds();
            if ahead_seconds > MAX_CLOCK_SKEW_SECONDS {
                return Err(ReportRejection::ClockSkew {
                    field,
                    ahead_seconds,
                });
            }
        }
        let key = (report.cluster.clone(), report.node.clone());
        let mut reports = write(&self.reports);
        if let Some(prev) = reports.get(&key) {
            let p = &prev.report;
            // A report of an older agent process, or an old sequence number of the same process,
            // is a replay (or a reordering) and must not move the view backwards.
            if report.agent_started_at < p.agent_started_at
                || (report.agent_started_at == p.agent_started_at && report.seq <= p.seq)
            {
                return Err(ReportRejection::Replay {
                    seq: report.seq,
                    last: p.seq,
                });
            }
        }
        // A node's newest applied index while it served: the loss account of a failover
        // needs the old primary's, and the reports after its fault carry none.
        if report.vault.state.is_serving()
            && let Some(index) = report.vault.raft_applied_index
        {
            let mut applied = write(&self.applied);
            let prev = applied.get(&key);
            let interval_seconds = prev
                .map(|p| (report.sent_at - p.last_seen_at).num_milliseconds() as f64 / 1000.0)
                .filter(|s| *s > 0.0);
            // The same index again keeps its first date: the report may repeat the observation.
            let seen_at = prev
                .filter(|p| p.index == index)
                .map_or(report.sent_at, |p| p.seen_at);
            applied.insert(
                key.clone(),
                AppliedIndex {
                    node: report.node.clone(),
                    index,
                    seen_at,
                    last_seen_at: report.sent_at,
                    interval_seconds,
                },
            );
        }
        // What the report says as an observer changed: the leader evaluates now rather than
        // at its next tick (see `Leader::run`).
        let changed = reports.get(&key).is_some_and(|prev| {
            crate::failover::detector::evidence(&prev.report)
                != crate::failover::detector::evidence(&report)
        });
        reports.insert(
            key,
            NodeView {
                node: report.node.clone(),
                received_at,
                report,
            },
        );
        drop(reports);
        if changed {
            self.evidence.notify_one();
        }
        Ok(())
    }

    /// Resolves when an accepted report said something new as an observer of the primary
    /// (its node stopped or started serving, its probe of the primary changed), or at once if
    /// one did since the last wait.
    pub async fn evidence_changed(&self) {
        self.evidence.notified().await;
    }

    /// Whether the leader's latest tick suspects the primary with full agreement of the three
    /// observers ([`Phase::Suspect`] with at least one confirming tick): agents are told so in
    /// their desired state ([`vault_dr_common::DesiredState::primary_suspect`]).
    pub fn primary_suspect(&self) -> bool {
        read(&self.decision).as_ref().is_some_and(
            |d| matches!(d.phase, crate::model::Phase::Suspect { ticks, .. } if ticks >= 1),
        )
    }

    /// Records the latest direct probe of a cluster.
    pub fn set_probe(&self, cluster: &str, probe: DirectProbe) {
        // No answer, or a garbage one, counts as failed (as in the agents' windows).
        let answered = !matches!(
            probe.state,
            vault_dr_common::NodeState::Unreachable | vault_dr_common::NodeState::Error
        );
        write(&self.probe_windows)
            .entry(cluster.to_owned())
            .or_insert_with(|| {
                vault_dr_common::latency::LatencyWindow::new(crate::model::view::PROBE_WINDOW)
            })
            .push(probe.latency_ms.filter(|_| answered));
        write(&self.probes).insert(cluster.to_owned(), probe);
    }

    /// Caches the topology last read from the coordination backend.
    pub fn set_topology(&self, topology: Topology) {
        *write(&self.topology) = Some(topology);
    }

    /// The topology last read, if any.
    pub fn topology(&self) -> Option<Topology> {
        read(&self.topology).clone()
    }

    /// Keeps the latest decision.
    pub fn set_decision(&self, d: DecisionRecord) {
        *write(&self.decision) = Some(d);
    }

    /// The latest decision.
    pub fn decision(&self) -> Option<DecisionRecord> {
        read(&self.decision).clone()
    }

    /// Latest report of every node, ordered by cluster then node.
    pub fn latest_reports(&self) -> Vec<NodeView> {
        let mut v: Vec<_> = read(&self.reports).values().cloned().collect();
        v.sort_by(|a, b| (&a.report.cluster, &a.node).cmp(&(&b.report.cluster, &b.node)));
        v
    }

    /// The newest applied raft index any node of `cluster` was seen serving at (the highest
    /// index; of equal ones the latest report), `None` when none reported one.
    pub fn last_applied(&self, cluster: &str) -> Option<AppliedIndex> {
        read(&self.applied)
            .iter()
            .filter(|((c, _), _)| c == cluster)
            .map(|(_, a)| a)
            .max_by_key(|a| (a.index, a.last_seen_at))
            .cloned()
    }

    /// Latest direct probes by cluster.
    pub fn probes(&self) -> BTreeMap<String, DirectProbe> {
        read(&self.probes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Builds the immutable view of this instant.
    pub fn view(&self, config: &Config, topology: &Topology, at: DateTime<Utc>) -> View {
        let reports = read(&self.reports);
        let probes = read(&self.probes);
        let windows = read(&self.probe_windows);
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let mut nodes: Vec<NodeView> = c
                    .nodes
                    .iter()
                    .filter_map(|n| reports.get(&(c.name.clone(), n.clone())).cloned())
                    .collect();
                nodes.sort_by(|a, b| a.node.cmp(&b.node));
                let role = if topology.serving_primary() == c.name {
                    Role::Primary
                } else {
                    Role::Secondary
                };
                (
                    c.name.clone(),
                    ClusterView {
                        name: c.name.clone(),
                        role,
                        priority: c.priority,
                        excluded: c.excluded,
                        direct_probe: probes.get(&c.name).cloned(),
                        probe_latency: windows
                            .get(&c.name)
                            .map(|w| w.summary())
                            .unwrap_or_default(),
                        probe_recent: windows
                            .get(&c.name)
                            .map(|w| w.summary_of_last(vault_dr_common::latency::RECENT_PROBES))
                            .unwrap_or_default(),
                        nodes,
                        configured_nodes: c.nodes.len(),
                    },
                )
            })
            .collect();
        View {
            at,
            topology: topology.clone(),
            clusters,
            observing_since: *read(&self.leading_since),
        }
    }

    /// Tells `cluster`'s agents to start no restore of their own (their desired state says a
    /// failover is in progress) until [`State::release`]: a planned switchover to it waits
    /// for its restore in flight before it begins.
    pub fn hold(&self, cluster: &str) {
        *write(&self.held) = Some(cluster.to_owned());
    }

    /// Asks the leader loop for a tick now (a switchover was begun through the API: its
    /// executor starts at once rather than at the next probe interval).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Resolves at the next [`State::kick`] (or at once if one came since the last wait).
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    /// Ends [`State::hold`].
    pub fn release(&self) {
        *write(&self.held) = None;
    }

    /// Whether `cluster` is held.
    pub fn is_held(&self, cluster: &str) -> bool {
        read(&self.held).as_deref() == Some(cluster)
    }

    /// Why this coordinator refuses to act (another group's stamp, a higher term), shared
    /// with everything that acts.
    pub fn refusal(&self) -> &crate::group::Refusal {
        &self.refusal
    }

    /// Records since when this coordinator leads (`None` when it stops): views carry it, so
    /// the detector counts the agents' reports only once they had time to arrive.
    pub fn set_leading_since(&self, since: Option<DateTime<Utc>>) {
        *write(&self.leading_since) = since;
    }
}

/// The desired state of a node of `cluster` under `topology`.
///
/// During a failover from `from` to `to` in term N: the old primary is a secondary of `to` from
/// the decision on; the target becomes primary once fencing completed (its agent then promotes
/// it); the other secondaries follow `to` once it is promoted. In a planned switchover the
/// target's desired state also names the old primary's API address as `final_snapshot_from`
/// once fencing (the traffic cut) completed, so it restores the final snapshot before promoting.
/// Every desired state carries the policy's promotion mode. `failover_in_progress` holds every
/// agent still until the target is promoted, and the old primary and the target until Done.
pub fn desired_state(config: &Config, topology: &Topology, cluster: &str) -> DesiredState {
    let (role, primary) = match &topology.failover {
        None => {
            let role = if cluster == topology.primary {
                Role::Primary
            } else {
                Role::Secondary
            };
            (role, topology.primary.clone())
        }
        Some(f) => {
            if cluster == f.to {
                if f.completed >= Step::Fenced {
                    (Role::Primary, f.to.clone())
                } else {
                    (Role::Secondary, f.from.clone())
                }
            } else if cluster == f.from || f.completed >= Step::Promoted {
                // The old primary follows the new one from the decision on (its agent waits
                // for the end of the failover before it acts); the others once it is promoted.
                (Role::Secondary, f.to.clone())
            } else {
                (Role::Secondary, f.from.clone())
            }
        }
    };
    let primary_api_addr: Option<Url> = (role == Role::Secondary)
        .then(|| {
            config
                .cluster(&primary)
                .and_then(|c| c.api_addrs.first().cloned())
        })
        .flatten();
    // Agents start no pull or restore of their own while a failover is in progress. The other
    // secondaries are released once the target is promoted: re-pointing them (the Repointed
    // step waits for their applied_term) means pulling from the new primary. The old primary
    // and the target stay held until Done.
    let failover_in_progress = topology
        .failover
        .as_ref()
        .is_some_and(|f| cluster == f.to || cluster == f.from || f.completed < Step::Promoted);
    let final_snapshot_from = topology
        .failover
        .as_ref()
        .filter(|f| f.planned && !f.raft_handover && f.to == cluster && f.completed >= Step::Fenced)
        .and_then(|f| config.cluster(&f.from))
        .and_then(|c| c.api_addrs.first().cloned());
    let raft = topology.raft_of(&primary);
    let raft_recover_node = topology
        .failover
        .as_ref()
        .filter(|f| f.to == cluster)
        .and_then(|f| f.raft_node.clone());
    DesiredState {
        term: topology.term,
        cluster: cluster.to_owned(),
        role,
        primary_api_addr,
        failover_in_progress,
        promotion: config.policy.promotion,
        final_snapshot_from,
        // Set per report by the API from the leader's phase (`State::primary_suspect`).
        primary_suspect: false,
        raft_formed_term: raft.as_ref().map(|l| l.term),
        raft_formed_by: raft.filter(|l| l.formed_by != primary).map(|l| l.formed_by),
        raft_recover_node,
        raft_handover: topology.failover.as_ref().is_some_and(|f| f.raft_handover),
        primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::FailoverInProgress;
    use std::collections::BTreeMap;
    use vault_dr_common::PromotionMode;

    fn config(promotion: PromotionMode) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        let env = BTreeMap::from([(
            crate::config::ENV_TOKEN_FILE.to_owned(),
            dir.path().join("token").display().to_string(),
        )]);
        let mut text = String::from("[policy]\n");
        text.push_str(&format!("promotion = \"{promotion}\"\n"));
        for (i, name) in ["p", "s1", "s2"].iter().enumerate() {
            text.push_str(&format!(
                "[[clusters]]\nname = \"{name}\"\napi_addrs = [\"http://127.0.0.1:{}\"]\nnodes = [\"{name}-0\"]\n{}",
                8200 + i,
                if i == 0 { "role = \"primary\"\n" } else { "" }
            ));
        }
        Config::parse(&text, dir.path(), &env).unwrap()
    }

    #[test]
    fn the_view_carries_the_coordinators_own_probe_window_of_each_cluster() {
        use vault_dr_common::NodeState;
        let config = config(PromotionMode::Complete);
        let state = State::default();
        let probe = |state: NodeState, latency_ms: Option<f64>| DirectProbe {
            state,
            at: Utc::now(),
            latency_ms,
            error: None,
        };
        for ms in [10.0, 20.0, 30.0] {
            state.set_probe("p", probe(NodeState::Active, Some(ms)));
        }
        // A garbage answer counts as failed even though it took time.
        state.set_probe("p", probe(NodeState::Error, Some(5.0)));
        let view = state.view(&config, &Topology::initial("p"), Utc::now());
        let p = &view.clusters["p"].probe_latency;
        assert_eq!((p.samples, p.p99_ms), (4, 30.0));
        assert!((p.error_ratio - 0.25).abs() < 1e-12, "{p:?}");
        assert_eq!(view.clusters["s1"].probe_latency.samples, 0, "never probed");
    }

    fn during(planned: bool, completed: Step) -> Topology {
        Topology {
            primary: "p".into(),
            term: 2,
            failover: Some(FailoverInProgress {
                id: "2-p-s1".into(),
                from: "p".into(),
                to: "s1".into(),
                completed,
                planned,
                raft_node: None,
                raft_handover: false,
            }),
            last_failover_at: None,
            group_id: None,
            fence_pending: Vec::new(),
            pause: None,
            past_pauses: Vec::new(),
            raft_lineage: None,
            automatic_switchovers: Vec::new(),
        }
    }

    /// (role, primary, final snapshot source port, failover in progress)
    fn summary(d: &DesiredState) -> (Role, String, Option<u16>, bool) {
        (
            d.role,
            d.primary.clone(),
            d.final_snapshot_from.as_ref().and_then(|u| u.port()),
            d.failover_in_progress,
        )
    }

    #[test]
    fn desired_states_follow_the_failover_step_by_step() {
        let c = config(PromotionMode::Complete);
        use Role::{Primary as P, Secondary as S};
        type Want<'a> = (Role, &'a str, Option<u16>, bool);
        let rows: Vec<(&str, Topology, &str, Want)> = vec![
            (
                "steady: the primary",
                Topology::initial("p"),
                "p",
                (P, "p", None, false),
            ),
            (
                "steady: a secondary follows p",
                Topology::initial("p"),
                "s2",
                (S, "p", None, false),
            ),
            (
                "unplanned, decided: the target still follows p",
                during(false, Step::Decided),
                "s1",
                (S, "p", None, true),
            ),
            (
                "unplanned, fenced: the target promotes, no final snapshot",
                during(false, Step::Fenced),
                "s1",
                (P, "s1", None, true),
            ),
            (
                "unplanned: the old primary is a secondary of the target at once",
                during(false, Step::Decided),
                "p",
                (S, "s1", None, true),
            ),
            (
                "unplanned, fenced: the others still follow p",
                during(false, Step::Fenced),
                "s2",
                (S, "p", None, true),
            ),
            (
                "unplanned, promoted: the others follow the target and may pull again",
                during(false, Step::Promoted),
                "s2",
                (S, "s1", None, false),
            ),
            (
                "unplanned, promoted: the old primary stays held until done",
                during(false, Step::Promoted),
                "p",
                (S, "s1", None, true),
            ),
            (
                "planned, repointed: the target stays held until done",
                during(true, Step::Repointed),
                "s1",
                (P, "s1", Some(8200), true),
            ),
            (
                "planned, decided: no final snapshot before the cut",
                during(true, Step::Decided),
                "s1",
                (S, "p", None, true),
            ),
            (
                "planned, fenced: the target pulls the final snapshot from p",
                during(true, Step::Fenced),
                "s1",
                (P, "s1", Some(8200), true),
            ),
            (
                "planned, fenced: only the target gets the final snapshot source",
                during(true, Step::Fenced),
                "s2",
                (S, "p", None, true),
            ),
            (
                "planned, fenced: the old primary waits as a secondary of the target",
                during(true, Step::Fenced),
                "p",
                (S, "s1", None, true),
            ),
        ];
        for (name, t, cluster, (role, primary, port, in_progress)) in rows {
            let d = desired_state(&c, &t, cluster);
            assert_eq!(
                summary(&d),
                (role, primary.to_owned(), port, in_progress),
                "{name}"
            );
            assert_eq!(d.term, t.term, "{name}");
            assert_eq!(
                d.primary_api_addr.is_some(),
                role == S,
                "{name}: a secondary knows where to pull from"
            );
        }
    }

    #[test]
    fn the_raft_a_node_may_start_in_is_the_one_its_primary_leads() {
        let c = config(PromotionMode::Complete);
        let rows: Vec<(&str, Topology, &str, Option<u64>)> = vec![
            (
                "steady: the initial raft",
                Topology::initial("p"),
                "s2",
                Some(1),
            ),
            (
                "decided: the others stay in p's raft of term 1",
                during(false, Step::Decided),
                "s2",
                Some(1),
            ),
            (
                "decided: the old primary waits (s1's raft does not exist yet)",
                during(false, Step::Decided),
                "p",
                None,
            ),
            (
                "fenced: the target forms term 2's raft",
                during(false, Step::Fenced),
                "s1",
                Some(2),
            ),
            (
                "fenced: the target's raft forms (the old primary's agent waits for the end)",
                during(false, Step::Fenced),
                "p",
                Some(2),
            ),
            (
                "promoted: the others follow the target's raft",
                during(false, Step::Promoted),
                "s2",
                Some(2),
            ),
        ];
        for (name, t, cluster, want) in rows {
            assert_eq!(
                desired_state(&c, &t, cluster).raft_formed_term,
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn a_handover_keeps_every_node_in_the_raft_it_is_in() {
        use crate::model::topology::RaftLineage;
        let c = config(PromotionMode::Complete);
        let handover = |completed| {
            let mut t = during(true, completed);
            t.raft_lineage = Some(RaftLineage {
                term: 1,
                formed_by: "p".into(),
            });
            if let Some(f) = t.failover.as_mut() {
                f.raft_handover = true;
            }
            t
        };
        let mut after = Topology::initial("s1");
        after.term = 2;
        after.raft_lineage = Some(RaftLineage {
            term: 1,
            formed_by: "p".into(),
        });
        // A failover that forms a new raft after the handover: s1 -> s2 in term 3.
        let mut recovery = after.clone();
        recovery.term = 3;
        recovery.failover = during(false, Step::Decided).failover;
        if let Some(f) = recovery.failover.as_mut() {
            f.from = "s1".into();
            f.to = "s2".into();
        }
        let mut recovered = recovery.clone();
        if let Some(f) = recovered.failover.as_mut() {
            f.completed = Step::Fenced;
        }
        let mut done = Topology::initial("s2");
        done.term = 3;
        // (why, topology, cluster, (formed term, formed by when not the primary), handover)
        type Row<'a> = (
            &'a str,
            Topology,
            &'a str,
            (Option<u64>, Option<&'a str>),
            bool,
        );
        let rows: Vec<Row> = vec![
            (
                "decided: the old primary follows s1 in p's raft",
                handover(Step::Decided),
                "p",
                (Some(1), Some("p")),
                true,
            ),
            (
                "decided: the target is still a secondary of p's raft",
                handover(Step::Decided),
                "s1",
                (Some(1), None),
                true,
            ),
            (
                "fenced: the target leads p's raft, no recovery",
                handover(Step::Fenced),
                "s1",
                (Some(1), Some("p")),
                true,
            ),
            (
                "promoted: the others follow s1 in p's raft",
                handover(Step::Promoted),
                "s2",
                (Some(1), Some("p")),
                true,
            ),
            (
                "after the handover: s1 leads the raft p formed",
                after.clone(),
                "s2",
                (Some(1), Some("p")),
                false,
            ),
            (
                "a failover after it: the others stay in that raft",
                recovery.clone(),
                "p",
                (Some(1), Some("p")),
                false,
            ),
            (
                "its target forms term 3's raft",
                recovered,
                "s2",
                (Some(3), None),
                false,
            ),
            ("once done: s2's raft", done, "p", (Some(3), None), false),
        ];
        for (name, t, cluster, (term, by), handing_over) in rows {
            let d = desired_state(&c, &t, cluster);
            assert_eq!(
                (d.raft_formed_term, d.raft_formed_by.as_deref()),
                (term, by),
                "{name}"
            );
            assert_eq!(d.raft_handover, handing_over, "{name}");
            assert_eq!(
                d.final_snapshot_from, None,
                "{name}: a handover restores nothing"
            );
        }
    }

    #[tokio::test]
    async fn a_report_that_changes_what_its_node_observes_wakes_the_leader_loop() {
        use vault_dr_common::NodeState;
        let c = config(PromotionMode::Complete);
        let state = State::default();
        let started = Utc::now() - chrono::Duration::seconds(60);
        let send = |seq: u64, node_state: NodeState| {
            let mut r = crate::model::test_util::synthetic::report("p", "p-0", started);
            r.seq = seq;
            r.sent_at = Utc::now();
            r.vault.state = node_state;
            state.accept_report(&c, r, Utc::now()).unwrap();
        };
        let woken = || async {
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                state.evidence_changed(),
            )
            .await
            .is_ok()
        };
        send(1, NodeState::Active);
        assert!(!woken().await, "a first report is no change");
        send(2, NodeState::Active);
        assert!(!woken().await, "the same evidence again");
        send(3, NodeState::Standby);
        assert!(!woken().await, "still serving");
        send(4, NodeState::Unreachable);
        assert!(woken().await, "stopped serving");
        send(5, NodeState::Restoring);
        assert!(woken().await, "restoring is up");
    }

    #[test]
    fn the_last_applied_index_is_the_newest_seen_while_serving() {
        use vault_dr_common::NodeState;
        let c = config(PromotionMode::Complete);
        let state = State::default();
        let t0 = Utc::now() - chrono::Duration::seconds(10);
        let started = t0 - chrono::Duration::seconds(60);
        let send = |seq: u64, ms: i64, node_state: NodeState, index: Option<u64>| {
            let mut r = crate::model::test_util::synthetic::report("p", "p-0", started);
            r.seq = seq;
            r.sent_at = t0 + chrono::Duration::milliseconds(ms);
            r.vault.state = node_state;
            r.vault.raft_applied_index = index;
            state.accept_report(&c, r, Utc::now()).unwrap();
        };
        assert_eq!(state.last_applied("p"), None, "nothing reported yet");
        let at = |ms| t0 + chrono::Duration::milliseconds(ms);
        send(1, 0, NodeState::Active, Some(100));
        send(2, 500, NodeState::Active, Some(120));
        // A probe of a stopped node hangs: the reports repeat its last observation.
        send(3, 1_000, NodeState::Active, Some(120));
        // The fault shows: the agent still reports, the node answers nothing (or sealed).
        send(4, 1_500, NodeState::Unreachable, None);
        send(5, 2_000, NodeState::Sealed, Some(120));
        let a = state.last_applied("p").unwrap();
        assert_eq!((a.node.as_str(), a.index), ("p-0", 120));
        assert_eq!(
            (a.seen_at, a.last_seen_at),
            (at(500), at(1_000)),
            "dated by its first report, last seen while serving"
        );
        assert_eq!(a.interval_seconds, Some(0.5));
        assert_eq!(state.last_applied("s1"), None, "per cluster");
    }

    #[test]
    fn every_desired_state_carries_the_policy_promotion_mode() {
        for mode in [PromotionMode::Complete, PromotionMode::Fast] {
            let c = config(mode);
            for t in [
                Topology::initial("p"),
                during(false, Step::Fenced),
                during(true, Step::Promoted),
            ] {
                for cluster in ["p", "s1", "s2"] {
                    assert_eq!(desired_state(&c, &t, cluster).promotion, mode);
                }
            }
        }
    }
}
