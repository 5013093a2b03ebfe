//! The Vault/OpenBao implementations of the action traits.
//!
//! - Fencing seals every reachable node of the old primary with the DR token.
//! - Promotion and re-pointing go through the desired state: the topology already names the new
//!   primary and term, every agent receives it in the answer to its next report, and the step
//!   completes once the agents report the term as carried out (`Report::applied_term`, not
//!   merely seen): the target only after it stopped pulling, restored (complete promotion or a
//!   planned switchover's final snapshot), found its node unsealed and active and did a canary
//!   write; a secondary once it follows the new primary.
//! - Verification writes and reads a canary in the DR token's cubbyhole on the new primary.
//! - The loss account's figures come from the reports too: the old primary's newest applied
//!   index while it served ([`State::last_applied`]), the target's restored snapshot after
//!   its promotion.

use crate::config::ClusterConfig;
use crate::failover::actions::{ActionError, ActionResult, Fencer, Replication, Verifier};
use crate::failover::handover::{Handover, Layout};
use crate::model::{AppliedIndex, ServedData};
use crate::state::State;
use crate::vault::VaultClient;
use async_trait::async_trait;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use vault_dr_common::{NodeState, ReplicationMode};

/// Seals the old primary within [`crate::vault::FENCE_BOUND`], with seals that expire
/// ([`VaultClient::fence`]).
#[derive(Debug, Clone)]
pub struct SealFencer {
    /// Client carrying the DR token.
    pub vault: VaultClient,
}

#[async_trait]
impl Fencer for SealFencer {
    async fn fence(&self, old: &ClusterConfig, _term: u64) -> ActionResult {
        let fence = self.vault.fence(old, crate::vault::FENCE_BOUND).await;
        if fence.complete() || fence.gone() {
            Ok(fence.sentence())
        } else {
            Err(ActionError(fence.sentence()))
        }
    }
}

/// Canary on the new primary.
#[derive(Debug, Clone)]
pub struct CanaryVerifier {
    /// Client carrying the DR token.
    pub vault: VaultClient,
}

#[async_trait]
impl Verifier for CanaryVerifier {
    async fn verify(&self, target: &ClusterConfig, term: u64) -> ActionResult {
        self.vault.canary(target, term).await.map_err(ActionError)
    }
}

/// The longest a planned switchover waits for its target's restore in flight before it
/// begins (a restore of a 100k-secret snapshot took 8 s; one that hangs is not waited out, and
/// the operator's request, 10 s at most, is answered).
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(8);
/// A report received this long after a hold began comes from an agent that had the hold's
/// answer (agents report at least every few seconds; at the default 1 s interval, the next).
pub const HOLD_MARGIN: Duration = Duration::from_millis(HOLD_MARGIN_MS as u64);
const HOLD_MARGIN_MS: i64 = 1200;

/// Promotion and re-pointing through the agents' desired state.
#[derive(Debug, Clone)]
pub struct DesiredStateReplication {
    /// Where the agents' reports land.
    pub state: Arc<State>,
    /// A report older than this does not count as an acknowledgement.
    pub report_ttl: Duration,
    /// How long one promotion attempt waits for the target's agent.
    pub promote_timeout: Duration,
    /// How long re-pointing waits for the other agents.
    pub repoint_timeout: Duration,
    /// Moves a raft's leadership (a planned switchover inside one raft).
    pub handover: Handover,
}

impl DesiredStateReplication {
    /// Nodes of `cluster` whose fresh report says `term` is carried out (`applied_term`), and
    /// whether one of those is the active node.
    fn acks(&self, cluster: &str, term: u64) -> (usize, bool) {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        let mut acked = 0;
        let mut active = false;
        for n in self.state.latest_reports() {
            if n.report.cluster == cluster
                && n.age_seconds(now) <= ttl
                && n.report.applied_term >= term
            {
                acked += 1;
                active |= n.report.vault.state == NodeState::Active;
            }
        }
        (acked, active)
    }

    /// Nodes of `cluster` whose latest report is restoring a snapshot, and whether every
    /// node of it has reported since `since` (plus [`HOLD_MARGIN`]: the report after the one
    /// whose answer told its agent to hold).
    fn restoring(&self, cluster: &str, since: chrono::DateTime<Utc>) -> (usize, bool) {
        let margin = chrono::Duration::milliseconds(HOLD_MARGIN_MS);
        let nodes: Vec<_> = self
            .state
            .latest_reports()
            .into_iter()
            .filter(|n| n.report.cluster == cluster)
            .collect();
        let restoring = nodes
            .iter()
            .filter(|n| n.report.vault.state == NodeState::Restoring)
            .count();
        let since_hold = !nodes.is_empty() && nodes.iter().all(|n| n.received_at >= since + margin);
        (restoring, since_hold)
    }

    /// "; s1-0 reports: <its replication error>" for every node of `cluster` whose latest
    /// report carries one (what its agent knows of why it does not get there).
    fn agent_errors(&self, cluster: &str) -> String {
        self.state
            .latest_reports()
            .iter()
            .filter(|n| n.report.cluster == cluster)
            .filter_map(|n| {
                let e = n.report.replication.last_error.as_deref()?;
                Some(format!("; {} reports: {e}", n.report.node))
            })
            .collect()
    }

    /// Fresh nodes of `cluster` that have seen `term` but not carried it out yet (for messages).
    fn seen_only(&self, cluster: &str, term: u64) -> usize {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        self.state
            .latest_reports()
            .iter()
            .filter(|n| {
                n.report.cluster == cluster
                    && n.age_seconds(now) <= ttl
                    && n.report.seen_term >= term
                    && n.report.applied_term < term
            })
            .count()
    }
}

#[async_trait]
impl Replication for DesiredStateReplication {
    fn last_applied(&self, cluster: &ClusterConfig) -> Option<AppliedIndex> {
        self.state.last_applied(&cluster.name)
    }

    /// The fresh raft node of `target` with the highest last log index (a tie: the name
    /// first in order, so that every leader picks the same).
    fn raft_recovery_node(&self, target: &ClusterConfig) -> Option<String> {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        raft_recovery_node(
            self.state
                .latest_reports()
                .iter()
                .filter(|n| n.report.cluster == target.name && n.age_seconds(now) <= ttl)
                .filter(|n| n.report.replication.mode == ReplicationMode::Raft)
                .filter_map(|n| Some((n.node.as_str(), n.report.replication.log_index?))),
        )
    }

    /// Both clusters have fresh reports, every one of raft replication, and a node of
    /// `target` reports its lag in entries (it follows the raft's leader).
    fn raft_handover(&self, from: &ClusterConfig, target: &ClusterConfig) -> bool {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        let reports = self.state.latest_reports();
        let fresh = |cluster: &str| {
            reports
                .iter()
                .filter(|n| n.report.cluster == cluster && n.age_seconds(now) <= ttl)
                .collect::<Vec<_>>()
        };
        let (from, to) = (fresh(&from.name), fresh(&target.name));
        let raft = |nodes: &[&crate::model::view::NodeView]| {
            !nodes.is_empty()
                && nodes
                    .iter()
                    .all(|n| n.report.replication.mode == ReplicationMode::Raft)
        };
        raft(&from)
            && raft(&to)
            && to
                .iter()
                .any(|n| n.report.replication.lag_entries.is_some())
    }

    /// Hands the raft over to the target's raft node ids: its configured nodes, or else the
    /// nodes that report for it.
    async fn hand_over(
        &self,
        from: &ClusterConfig,
        target: &ClusterConfig,
        term: u64,
    ) -> ActionResult {
        let reports = self.state.latest_reports();
        let mut nodes: std::collections::BTreeSet<String> = target.nodes.iter().cloned().collect();
        if nodes.is_empty() {
            nodes = reports
                .iter()
                .filter(|n| n.report.cluster == target.name)
                .map(|n| n.node.clone())
                .collect();
        }
        // Who votes once it is done, by each agent's suffrage (a node whose agent never said
        // is `auto`): the target's nodes but its non-voters, and the DR voters elsewhere.
        let suffrage = |node: &str| {
            reports
                .iter()
                .find(|n| n.node == node)
                .and_then(|n| n.report.replication.raft_suffrage.clone())
                .unwrap_or_else(|| "auto".into())
        };
        let mut voters: std::collections::BTreeSet<String> = nodes
            .iter()
            .filter(|n| suffrage(n) != "non-voter")
            .cloned()
            .collect();
        voters.extend(
            reports
                .iter()
                .filter(|n| n.report.cluster != target.name)
                .filter(|n| n.report.replication.raft_suffrage.as_deref() == Some("voter"))
                .map(|n| n.node.clone()),
        );
        let layout = Layout {
            target: nodes,
            voters,
        };
        // The old primary's first: its gate is open throughout (the primary's until its
        // agent hears of the handover, then the handover's); the target's opens once its
        // agent has heard.
        let addrs: Vec<url::Url> = from
            .api_addrs
            .iter()
            .chain(target.api_addrs.iter())
            .cloned()
            .collect();
        self.handover
            .run(&addrs, &layout)
            .await
            .map(|done| format!("term {term}: {done}"))
            .map_err(ActionError)
    }

    /// Every node of `cluster` (its configured nodes, or else every node that reported for
    /// it, at least one) has a fresh report that carried out `term`.
    fn follows(&self, cluster: &ClusterConfig, term: u64) -> bool {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        let reports: Vec<_> = self
            .state
            .latest_reports()
            .into_iter()
            .filter(|n| n.report.cluster == cluster.name)
            .collect();
        let carried_out = |node: &str| {
            reports.iter().any(|n| {
                n.node == node && n.age_seconds(now) <= ttl && n.report.applied_term >= term
            })
        };
        if cluster.nodes.is_empty() {
            !reports.is_empty() && reports.iter().all(|n| carried_out(&n.node))
        } else {
            cluster.nodes.iter().all(|n| carried_out(n))
        }
    }

    /// From the fresh report of the target's node that carried out `term` (the active one
    /// first): the snapshot it restored. Its agent sends the replication status as of sending,
    /// so the report that announces the promotion already names the promotion's restore.
    fn served(&self, target: &ClusterConfig, term: u64) -> Option<ServedData> {
        let now = Utc::now();
        let ttl = self.report_ttl.as_secs_f64();
        self.state
            .latest_reports()
            .into_iter()
            .filter(|n| {
                n.report.cluster == target.name
                    && n.age_seconds(now) <= ttl
                    && n.report.applied_term >= term
            })
            .max_by_key(|n| n.report.vault.state == NodeState::Active)
            .map(|n| ServedData {
                node: n.node,
                mode: n.report.replication.mode,
                index: n.report.replication.restored_index,
                taken_at: n.report.replication.restored_taken_at,
            })
    }

    /// Waits until every node of the target reported after the hold began (its agent starts
    /// no new restore then) with no restore in flight, at most [`QUIESCE_TIMEOUT`].
    async fn quiesce(
        &self,
        target: &ClusterConfig,
        since: chrono::DateTime<Utc>,
    ) -> Option<String> {
        let started = tokio::time::Instant::now();
        let mut was_restoring = false;
        loop {
            let (restoring, seen) = self.restoring(&target.name, since);
            was_restoring |= restoring > 0;
            if seen && restoring == 0 {
                return was_restoring.then(|| {
                    format!(
                        "waited {:.1} s for {}'s restore in flight before the switchover began",
                        started.elapsed().as_secs_f64(),
                        target.name
                    )
                });
            }
            if started.elapsed() >= QUIESCE_TIMEOUT {
                return Some(format!(
                    "{} still restoring after {QUIESCE_TIMEOUT:?} (or its agents did not report); beginning anyway",
                    target.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn promote(&self, target: &ClusterConfig, term: u64) -> ActionResult {
        let deadline = tokio::time::Instant::now() + self.promote_timeout;
        loop {
            let (acked, active) = self.acks(&target.name, term);
            if acked > 0 && active {
                return Ok(format!(
                    "{} is primary in term {term}: its agent applied the term and the node is active ({acked} node(s))",
                    target.name
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = self.seen_only(&target.name, term);
                return Err(ActionError(format!(
                    "{} has not applied term {term} as an active primary within {:?} ({acked} node(s) applied it, {seen} saw it and are still working on it){}",
                    target.name,
                    self.promote_timeout,
                    self.agent_errors(&target.name)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn repoint(
        &self,
        others: &[ClusterConfig],
        primary: &ClusterConfig,
        term: u64,
    ) -> ActionResult {
        if others.is_empty() {
            return Ok("no other secondaries to re-point".into());
        }
        let deadline = tokio::time::Instant::now() + self.repoint_timeout;
        loop {
            let pending: Vec<&str> = others
                .iter()
                .filter(|c| self.acks(&c.name, term).0 == 0)
                .map(|c| c.name.as_str())
                .collect();
            if pending.is_empty() {
                let names: Vec<_> = others.iter().map(|c| c.name.as_str()).collect();
                return Ok(format!(
                    "{} now follow {} in term {term}",
                    names.join(", "),
                    primary.name
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                // Not an error: a secondary that is down picks up the term when it reports again.
                let done: Vec<_> = others
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|n| !pending.contains(n))
                    .collect();
                return Ok(format!(
                    "{} follow {} in term {term}; {} not following yet (down, or still restoring) and will follow when their agents apply the term",
                    if done.is_empty() {
                        "none".to_owned()
                    } else {
                        done.join(", ")
                    },
                    primary.name,
                    pending.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Of `(node, last log index)`, the node with the highest index; a tie goes to the name
/// first in order.
fn raft_recovery_node<'a>(nodes: impl Iterator<Item = (&'a str, u64)>) -> Option<String> {
    nodes
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(n, _)| n.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_raft_recovery_node_is_the_longest_log_and_a_tie_the_first_name() {
        let pick = |v: &[(&'static str, u64)]| raft_recovery_node(v.iter().copied());
        assert_eq!(
            pick(&[("s1-n1", 10), ("s1-n2", 12)]).as_deref(),
            Some("s1-n2")
        );
        assert_eq!(
            pick(&[("s1-n2", 12), ("s1-n1", 12)]).as_deref(),
            Some("s1-n1")
        );
        assert_eq!(pick(&[]), None);
    }
    use crate::model::test_util::synthetic::report;
    use std::collections::BTreeMap;

    fn config() -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        let env = BTreeMap::from([(
            crate::config::ENV_TOKEN_FILE.to_owned(),
            dir.path().join("token").display().to_string(),
        )]);
        let text = r#"
            [[clusters]]
            name = "p"
            role = "primary"
            api_addrs = ["http://127.0.0.1:8200"]
            nodes = ["p-0"]
            [[clusters]]
            name = "s1"
            api_addrs = ["http://127.0.0.1:8201"]
            nodes = ["s1-0", "s1-1"]
            [[clusters]]
            name = "s2"
            api_addrs = ["http://127.0.0.1:8202"]
            nodes = ["s2-0"]
        "#;
        Config::parse(text, dir.path(), &env).unwrap()
    }

    struct Rig {
        config: Config,
        state: Arc<State>,
        replication: DesiredStateReplication,
        seq: std::sync::atomic::AtomicU64,
        started: chrono::DateTime<Utc>,
    }

    fn rig() -> Rig {
        let state = Arc::new(State::default());
        Rig {
            config: config(),
            replication: DesiredStateReplication {
                state: state.clone(),
                report_ttl: Duration::from_secs(60),
                promote_timeout: Duration::from_secs(2),
                repoint_timeout: Duration::from_secs(2),
                handover: Handover {
                    vault: crate::vault::VaultClient::new(Duration::from_secs(1), None).unwrap(),
                },
            },
            state,
            seq: std::sync::atomic::AtomicU64::new(1),
            started: Utc::now(),
        }
    }

    impl Rig {
        fn report(&self, node: &str, state: NodeState, seen: u64, applied: u64) {
            let cluster = node.split('-').next().unwrap();
            let mut r = report(cluster, node, self.started);
            r.seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            r.vault.state = state;
            r.seen_term = seen;
            r.applied_term = applied;
            self.state
                .accept_report(&self.config, r, Utc::now())
                .unwrap();
        }

        fn cluster(&self, name: &str) -> ClusterConfig {
            self.config.cluster(name).unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_switchover_begins_only_once_the_target_restores_nothing() {
        let r = rig();
        let s1 = r.cluster("s1");
        let hold = Utc::now() - chrono::Duration::seconds(5);
        // Reported after the hold, not restoring: nothing to wait for, nothing to say.
        r.report("s1-0", NodeState::Active, 1, 1);
        r.report("s1-1", NodeState::Standby, 1, 1);
        assert_eq!(r.replication.quiesce(&s1, hold).await, None);
        // One node mid-restore: waited for until it reports serving again.
        r.report("s1-0", NodeState::Restoring, 1, 1);
        let wait = r.replication.quiesce(&s1, hold);
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_secs(3), &mut wait)
                .await
                .is_err(),
            "a restore in flight is waited for"
        );
        r.report("s1-0", NodeState::Active, 1, 1);
        let note = wait.await.unwrap();
        assert!(
            note.starts_with("waited ")
                && note.ends_with("for s1's restore in flight before the switchover began"),
            "{note}"
        );
        // A report from before the hold does not count: its agent may not hold yet.
        let later = Utc::now() + chrono::Duration::seconds(60);
        let note = r.replication.quiesce(&s1, later).await.unwrap();
        assert!(note.contains("beginning anyway"), "{note}");
        // A restore that never ends is not waited out.
        r.report("s1-0", NodeState::Restoring, 1, 1);
        let note = r.replication.quiesce(&s1, hold).await.unwrap();
        assert!(note.contains("beginning anyway"), "{note}");
    }

    #[tokio::test(start_paused = true)]
    async fn promotion_waits_for_the_applied_term_not_the_seen_term() {
        let r = rig();
        // Seen but still restoring: not promoted yet.
        r.report("s1-0", NodeState::Restoring, 2, 1);
        let err = r
            .replication
            .promote(&r.cluster("s1"), 2)
            .await
            .unwrap_err();
        assert!(err.0.contains("1 saw it"), "{err}");
        // Applied, active: promoted.
        r.report("s1-0", NodeState::Active, 2, 2);
        let ok = r.replication.promote(&r.cluster("s1"), 2).await.unwrap();
        assert!(ok.contains("s1 is primary in term 2"), "{ok}");
    }

    #[test]
    fn the_served_data_is_the_restored_snapshot_of_the_node_that_applied_the_term() {
        let r = rig();
        assert_eq!(r.replication.served(&r.cluster("s1"), 2), None, "no report");
        // s1-1 has not carried out term 2: its data does not count.
        r.report("s1-1", NodeState::Standby, 2, 1);
        assert_eq!(r.replication.served(&r.cluster("s1"), 2), None);
        let taken = Utc::now() - chrono::Duration::seconds(3);
        let mut rep = report("s1", "s1-0", r.started);
        rep.seq = 99;
        rep.applied_term = 2;
        rep.replication.restored_index = Some(4321);
        rep.replication.restored_taken_at = Some(taken);
        r.state.accept_report(&r.config, rep, Utc::now()).unwrap();
        let served = r.replication.served(&r.cluster("s1"), 2).unwrap();
        assert_eq!(served.node, "s1-0");
        assert_eq!(served.mode, vault_dr_common::ReplicationMode::Snapshot);
        assert_eq!((served.index, served.taken_at), (Some(4321), Some(taken)));
        // The old primary's index comes from its reports while it served.
        let mut p = report("p", "p-0", r.started);
        p.vault.raft_applied_index = Some(5000);
        r.state.accept_report(&r.config, p, Utc::now()).unwrap();
        let applied = r.replication.last_applied(&r.cluster("p")).unwrap();
        assert_eq!((applied.node.as_str(), applied.index), ("p-0", 5000));
    }

    #[tokio::test(start_paused = true)]
    async fn promotion_needs_the_applying_node_to_be_active() {
        let r = rig();
        r.report("s1-0", NodeState::Standby, 2, 2);
        assert!(r.replication.promote(&r.cluster("s1"), 2).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn promotion_completes_as_soon_as_the_agent_reports_it_applied() {
        let r = Arc::new(rig());
        r.report("s1-0", NodeState::Restoring, 2, 1);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.replication.promote(&r.cluster("s1"), 2).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "still restoring: the step waits");
        r.report("s1-0", NodeState::Active, 2, 2);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn repointing_waits_for_every_other_secondary_to_apply_the_term() {
        let r = rig();
        r.report("s2-0", NodeState::Active, 2, 1);
        let partial = r
            .replication
            .repoint(&[r.cluster("s2")], &r.cluster("s1"), 2)
            .await
            .unwrap();
        assert!(partial.contains("s2 not following yet"), "{partial}");
        r.report("s2-0", NodeState::Active, 2, 2);
        let done = r
            .replication
            .repoint(&[r.cluster("s2")], &r.cluster("s1"), 2)
            .await
            .unwrap();
        assert_eq!(done, "s2 now follow s1 in term 2");
    }
}
