//! A planned switchover inside one raft (a **handover**): the raft stays as it is, its
//! leadership moves to the target cluster. No node is recovered, restored, cut off or sealed.
//!
//! The moves, each one raft membership change or one step-down, decided afresh from the raft
//! configuration before every move ([`next_move`]), so that a retry, or the next leader after
//! a crash, goes on from whatever the raft looks like:
//! 1. every node of the target that is a non-voter is promoted;
//! 2. every voter outside the target except the leader is demoted: the leader's step-down can
//!    then only hand the leadership to a node of the target (OpenBao gives it to another voter,
//!    it takes no target);
//! 3. the leader steps down (`sys/step-down`): the one write pause, the time a new leader takes
//!    to become active (0.6 s on OpenBao 2.7, `../shared/reference/openbao-2.7-measured.md` §7);
//! 4. once a node of the target leads, the nodes outside it whose agents join as voters (the
//!    DR voters of the synchronous layout) vote again, and every other one, the old leader
//!    among them, is a non-voter. The layout then is the one the agents' suffrages describe
//!    for the new primary.
//!
//! While the leadership moves in the synchronous layout, the other DR voters are non-voters
//! for a few seconds (autopilot's reconciliations): a commit then needs the target's voters
//! and the old leader, not a third site.
//!
//! Client requests are never cut: every node of one raft forwards a write to its leader.
//! Nothing can be lost either: a raft leader holds every committed entry.
//!
//! Autopilot carries a promotion or a demotion into the raft configuration at its next
//! reconciliation, one change each, every 10 s (OpenBao 2.7): a move asked for is not asked
//! again while it is pending. A handover of a 3-node primary to a 1-node target therefore
//! takes about 40 s (promote 1, demote 2, step down, demote the old leader), of which clients
//! notice only the step-down.

use crate::vault::{RaftServer, VaultClient};
use std::collections::BTreeSet;
use std::time::Duration;
use url::Url;

/// How long one attempt goes on before it gives up and says what it saw (the executor tries
/// again, for as long as it leads).
pub const ATTEMPT: Duration = Duration::from_secs(60);
/// How long a move asked for may stay invisible in the raft configuration before it is asked
/// again (autopilot applies one change per 10 s reconciliation).
pub const ASK_AGAIN: Duration = Duration::from_secs(12);
/// How often the raft configuration is read while a move is pending.
const POLL: Duration = Duration::from_millis(100);

/// The next move of a handover to the nodes `target`, from the raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Make this node of the target a voter.
    Promote(String),
    /// Make this voter outside the target a non-voter.
    Demote(String),
    /// The leader, outside the target, steps down.
    StepDown(String),
    /// Nothing to do until the raft changes (why).
    Wait(String),
    /// The handover is complete: this node of the target leads, and only the target votes.
    Done(String),
}

/// Who the handover is for: the target's nodes, and which nodes vote once it is done.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// The target's raft node ids.
    pub target: BTreeSet<String>,
    /// Every node that votes once the handover is done: the target's nodes but those whose
    /// agent joins as a non-voter, and the nodes outside it whose agent joins as a voter (the
    /// DR voters of the synchronous layout). Every other node ends a non-voter.
    pub voters: BTreeSet<String>,
}

/// The next move (pure): see the module's list. Before the leadership moves, every voter
/// outside the target but the leader is a non-voter (so that the step-down can only land in
/// the target); once it has moved, the nodes outside it that vote by their suffrage are
/// promoted again and every other one demoted. An error when no node of the target may vote,
/// or none is a member of the raft.
pub fn next_move(servers: &[RaftServer], layout: &Layout) -> Result<Move, String> {
    let in_target = |s: &RaftServer| layout.target.contains(&s.id);
    let votes = |s: &RaftServer| layout.voters.contains(&s.id);
    let names = || {
        let n: Vec<&str> = layout.target.iter().map(String::as_str).collect();
        n.join(", ")
    };
    if !servers.iter().any(|s| in_target(s) && votes(s)) {
        return Err(format!(
            "no node of the target ({}) that may vote is a member of the raft",
            names()
        ));
    }
    if let Some(s) = servers
        .iter()
        .find(|s| in_target(s) && votes(s) && !s.voter)
    {
        return Ok(Move::Promote(s.id.clone()));
    }
    let Some(leader) = servers.iter().find(|s| s.leader) else {
        return Ok(Move::Wait("the raft has no leader (an election)".into()));
    };
    if !in_target(leader) || !votes(leader) {
        return Ok(
            match servers
                .iter()
                .find(|s| !in_target(s) && s.voter && !s.leader)
            {
                Some(s) => Move::Demote(s.id.clone()),
                None => Move::StepDown(leader.id.clone()),
            },
        );
    }
    if let Some(s) = servers.iter().find(|s| votes(s) && !s.voter) {
        return Ok(Move::Promote(s.id.clone()));
    }
    Ok(match servers.iter().find(|s| !votes(s) && s.voter) {
        Some(s) => Move::Demote(s.id.clone()),
        None => Move::Done(leader.id.clone()),
    })
}

/// Every move of the same kind as `next` (a promotion or a demotion) that [`next_move`] would
/// make one after the other.
pub fn alike(servers: &[RaftServer], layout: &Layout, next: &Move) -> Vec<Move> {
    let mut moves = vec![next.clone()];
    let mut seen: Vec<RaftServer> = servers.to_vec();
    // The configuration as if the last move were done.
    while let Some(last) = moves.last() {
        match last {
            Move::Promote(id) | Move::Demote(id) => {
                let voter = matches!(last, Move::Promote(_));
                for s in seen.iter_mut().filter(|s| &s.id == id) {
                    s.voter = voter;
                }
            }
            _ => break,
        }
        match next_move(&seen, layout) {
            Ok(m)
                if std::mem::discriminant(&m) == std::mem::discriminant(next)
                    && !moves.contains(&m) =>
            {
                moves.push(m);
            }
            _ => break,
        }
    }
    moves
}

/// Carries out a handover with the DR token.
#[derive(Debug, Clone)]
pub struct Handover {
    /// Client carrying the DR token.
    pub vault: VaultClient,
}

impl Handover {
    /// Moves the leadership of the raft to a node of `layout.target`, through
    /// the first of `addrs` that answers; one attempt, at most [`ATTEMPT`]. Returns what it
    /// did, in one sentence.
    pub async fn run(&self, addrs: &[Url], layout: &Layout) -> Result<String, String> {
        let started = tokio::time::Instant::now();
        let mut did: Vec<String> = Vec::new();
        let mut asked: Vec<(Move, tokio::time::Instant)> = Vec::new();
        let mut pause: Option<Duration> = None;
        loop {
            let (addr, servers) = self.configuration(addrs).await?;
            let next = next_move(&servers, layout)?;
            let pending = asked
                .iter()
                .any(|(m, at)| *m == next && at.elapsed() < ASK_AGAIN);
            match &next {
                Move::Done(leader) => {
                    if did.is_empty() {
                        did.push("it leads, and the voters are as the layout wants".into());
                    }
                    let pause = pause.map_or_else(String::new, |p| {
                        format!(
                            "; the leader changed {:.2} s after the step-down",
                            p.as_secs_f64()
                        )
                    });
                    return Ok(format!(
                        "the raft's leadership handed over to {leader}: {}{pause}",
                        did.join(", ")
                    ));
                }
                Move::Wait(_) => {}
                _ if pending => {}
                Move::Promote(_) | Move::Demote(_) => {
                    // Every change of the kind at once: autopilot may carry several in one
                    // reconciliation.
                    let voter = matches!(next, Move::Promote(_));
                    for m in alike(&servers, layout, &next) {
                        let (Move::Promote(id) | Move::Demote(id)) = &m else {
                            continue;
                        };
                        if asked
                            .iter()
                            .any(|(a, at)| *a == m && at.elapsed() < ASK_AGAIN)
                        {
                            continue;
                        }
                        self.vault.raft_suffrage(&addr, id, voter).await?;
                        did.push(format!(
                            "{} {id}",
                            if voter { "promoted" } else { "demoted" }
                        ));
                        asked.push((m.clone(), tokio::time::Instant::now()));
                    }
                }
                Move::StepDown(leader) => {
                    let at = tokio::time::Instant::now();
                    self.vault.step_down(&addr).await?;
                    did.push(format!("{leader} stepped down"));
                    asked.push((next.clone(), at));
                    pause = Some(self.wait_leader_change(addrs, leader, at).await);
                }
            }
            if started.elapsed() >= ATTEMPT {
                return Err(format!(
                    "the handover did not complete within {ATTEMPT:?} (done: {}; next: {next:?})",
                    if did.is_empty() {
                        "nothing".to_owned()
                    } else {
                        did.join(", ")
                    }
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The raft configuration through the first of `addrs` that answers.
    async fn configuration(&self, addrs: &[Url]) -> Result<(Url, Vec<RaftServer>), String> {
        let mut last = String::from("no address");
        for addr in addrs {
            match self.vault.raft_configuration(addr).await {
                Ok(servers) => return Ok((addr.clone(), servers)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits (at most [`ASK_AGAIN`]) until another node than `old` leads; how long after `at`.
    async fn wait_leader_change(
        &self,
        addrs: &[Url],
        old: &str,
        at: tokio::time::Instant,
    ) -> Duration {
        while at.elapsed() < ASK_AGAIN {
            if let Ok((_, servers)) = self.configuration(addrs).await
                && servers.iter().any(|s| s.leader && s.id != old)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        at.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raft(servers: &[(&str, bool, bool)]) -> Vec<RaftServer> {
        servers
            .iter()
            .map(|(id, leader, voter)| RaftServer {
                id: (*id).into(),
                leader: *leader,
                voter: *voter,
            })
            .collect()
    }

    fn layout(target: &[&str], voters: &[&str]) -> Layout {
        Layout {
            target: target.iter().map(|s| (*s).to_owned()).collect(),
            voters: voters.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The whole handover of the asynchronous layout, one configuration after each move.
    #[test]
    fn a_handover_promotes_the_target_demotes_the_others_and_steps_the_leader_down() {
        let to = layout(&["s1-n1", "s1-n2"], &["s1-n1", "s1-n2"]);
        let rows: Vec<(&str, Vec<RaftServer>, Move)> = vec![
            (
                "the target's nodes are promoted first",
                raft(&[
                    ("p-n1", true, true),
                    ("p-n2", false, true),
                    ("s1-n1", false, false),
                    ("s1-n2", false, false),
                    ("s2-n1", false, false),
                ]),
                Move::Promote("s1-n1".into()),
            ),
            (
                "then every voter outside it but the leader is demoted",
                raft(&[
                    ("p-n1", true, true),
                    ("p-n2", false, true),
                    ("s1-n1", false, true),
                    ("s1-n2", false, true),
                    ("s2-n1", false, false),
                ]),
                Move::Demote("p-n2".into()),
            ),
            (
                "then the leader steps down",
                raft(&[
                    ("p-n1", true, true),
                    ("p-n2", false, false),
                    ("s1-n1", false, true),
                    ("s1-n2", false, true),
                    ("s2-n1", false, false),
                ]),
                Move::StepDown("p-n1".into()),
            ),
            (
                "an election in progress is waited for",
                raft(&[
                    ("p-n1", false, true),
                    ("s1-n1", false, true),
                    ("s1-n2", false, true),
                ]),
                Move::Wait("the raft has no leader (an election)".into()),
            ),
            (
                "once the target leads, the old leader is demoted",
                raft(&[
                    ("p-n1", false, true),
                    ("p-n2", false, false),
                    ("s1-n1", true, true),
                    ("s1-n2", false, true),
                ]),
                Move::Demote("p-n1".into()),
            ),
            (
                "done: the target leads and alone votes",
                raft(&[
                    ("p-n1", false, false),
                    ("s1-n1", false, true),
                    ("s1-n2", true, true),
                    ("s2-n1", false, false),
                ]),
                Move::Done("s1-n2".into()),
            ),
        ];
        for (why, servers, want) in rows {
            assert_eq!(next_move(&servers, &to), Ok(want), "{why}");
        }
    }

    /// The synchronous layout (2 + 1 + 1): the DR voter of the other secondary and the old
    /// primary's voters are demoted only while the leadership moves, then vote again.
    #[test]
    fn a_synchronous_handover_gives_the_dr_voters_their_vote_back() {
        let to = layout(&["s1-n1"], &["s1-n1", "s2-n1", "p-n1", "p-n2"]);
        let before = raft(&[
            ("p-n1", true, true),
            ("p-n2", false, true),
            ("p-n3", false, false),
            ("s1-n1", false, true),
            ("s2-n1", false, true),
        ]);
        let next = next_move(&before, &to).unwrap();
        assert_eq!(
            alike(&before, &to, &next),
            [Move::Demote("p-n2".into()), Move::Demote("s2-n1".into())],
            "so that the step-down lands on s1-n1"
        );
        let moved = raft(&[
            ("p-n1", false, true),
            ("p-n2", false, false),
            ("p-n3", false, false),
            ("s1-n1", true, true),
            ("s2-n1", false, false),
        ]);
        let next = next_move(&moved, &to).unwrap();
        assert_eq!(
            alike(&moved, &to, &next),
            [Move::Promote("p-n2".into()), Move::Promote("s2-n1".into())]
        );
        let done = raft(&[
            ("p-n1", false, true),
            ("p-n2", false, true),
            ("p-n3", false, false),
            ("s1-n1", true, true),
            ("s2-n1", false, true),
        ]);
        assert_eq!(next_move(&done, &to), Ok(Move::Done("s1-n1".into())));
    }

    #[test]
    fn the_changes_of_one_kind_are_asked_for_together() {
        let to = layout(&["s1-n1", "s1-n2"], &["s1-n1", "s1-n2"]);
        let servers = raft(&[
            ("p-n1", true, true),
            ("p-n2", false, true),
            ("p-n3", false, true),
            ("s1-n1", false, false),
            ("s1-n2", false, false),
        ]);
        let next = next_move(&servers, &to).unwrap();
        assert_eq!(
            alike(&servers, &to, &next),
            [Move::Promote("s1-n1".into()), Move::Promote("s1-n2".into())]
        );
        let promoted = raft(&[
            ("p-n1", true, true),
            ("p-n2", false, true),
            ("p-n3", false, true),
            ("s1-n1", false, true),
            ("s1-n2", false, true),
        ]);
        let next = next_move(&promoted, &to).unwrap();
        assert_eq!(
            alike(&promoted, &to, &next),
            [Move::Demote("p-n2".into()), Move::Demote("p-n3".into())],
            "never the leader while it is outside the target"
        );
    }

    #[test]
    fn a_target_with_no_node_that_may_vote_in_the_raft_is_an_error_naming_its_nodes() {
        let e = next_move(
            &raft(&[("p-n1", true, true)]),
            &layout(&["s1-n1"], &["s1-n1"]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "no node of the target (s1-n1) that may vote is a member of the raft"
        );
    }
}
