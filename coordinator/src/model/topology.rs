//! The topology: the authoritative record `{primary, term, failover in progress}`.
//!
//! It lives in the coordination backend (a ConfigMap or a local file) and is only ever changed
//! by compare-and-swap on its version, so two coordinators that both believe they lead cannot
//! both raise the term.

use crate::model::Step;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who is primary, in which term, and the failover in progress if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Name of the primary cluster.
    pub primary: String,
    /// Current term (starts at 1 with the initial primary).
    pub term: u64,
    /// The failover being carried out, if any. While it is set, the new term is already in
    /// force but `primary` still names the old primary until the `Promoted` step completes.
    pub failover: Option<FailoverInProgress>,
    /// When the last failover finished (for the cooldown).
    #[serde(default)]
    pub last_failover_at: Option<DateTime<Utc>>,
    /// This coordinator group's identity, random, made with the topology: what the leader
    /// stamps into the clusters it manages (see `crate::group`). `None` in a topology written
    /// before stamps existed; the leader gives it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Old primaries whose seal did not complete within the fence's bound: the leader goes on
    /// sealing them (bounded, in the background) until every node is sealed or follows the new
    /// primary (see `crate::failover::fence`). Kept here so that a new leader goes on too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence_pending: Vec<PendingFence>,
    /// A maintenance pause: while it holds, no automatic failover is decided (detection and
    /// metrics go on; an operator's switchover is still taken). Kept here so that every
    /// replica, and the next leader, honours it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// The pauses that ended, newest last, at most [`PAUSES_KEPT`]: who paused, why, and who
    /// or what ended it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_pauses: Vec<Pause>,
    /// When the automatic switchovers away from a degraded primary of the last 24 hours began
    /// (for `policy.degraded.max_per_day`), written by the compare-and-swap that begins each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub automatic_switchovers: Vec<DateTime<Utc>>,
    /// Raft replication: the raft `primary` leads, when it was handed over to `primary` by a
    /// planned switchover inside it rather than formed by `primary`'s promotion (see
    /// [`FailoverInProgress::raft_handover`]). Written by the handover's term raise; a
    /// failover that forms a new raft clears it when it is done. `None`: the raft was formed
    /// by `primary` in the term the last failover raised (or is the initial one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_lineage: Option<RaftLineage>,
}

/// Which raft: the term in which it was formed and the cluster whose nodes formed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftLineage {
    /// The term in which it was formed.
    pub term: u64,
    /// The cluster whose nodes were its voters then.
    pub formed_by: String,
}

/// How many ended pauses the topology keeps.
pub const PAUSES_KEPT: usize = 10;

/// An operator's maintenance pause of automatic failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who asked (`--by`, else the CLI's user@host).
    pub by: String,
    /// Why (required).
    pub reason: String,
    /// When it began.
    pub since: DateTime<Utc>,
    /// When it ends by itself; `None`: until `vault-dr resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// When it ended and how ("resumed by alice", "its time ran out"); `None` while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<(DateTime<Utc>, String)>,
}

impl Pause {
    /// Whether it holds at `now` (not ended, and its time has not run out).
    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        self.ended.is_none() && self.until.is_none_or(|u| now < u)
    }
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        write!(f, "paused by {} since {}", self.by, at(self.since))?;
        match self.until {
            Some(u) => write!(f, " until {}", at(u))?,
            None => write!(f, " until `vault-dr resume`")?,
        }
        write!(f, ": {}", self.reason)?;
        if let Some((t, how)) = &self.ended {
            write!(f, " (ended {}: {how})", at(*t))?;
        }
        Ok(())
    }
}

/// An old primary not yet sealed: fenced by the term and the traffic cut, not by a seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFence {
    /// The failover whose Fenced step left it pending (its journal record gets the outcome).
    pub failover: String,
    /// The old primary.
    pub cluster: String,
    /// The term it was fenced for.
    pub term: u64,
    /// When the Fenced step gave up waiting.
    pub since: DateTime<Utc>,
}

/// The part of a failover that must survive the loss of the leader: enough to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverInProgress {
    /// Journal id of the failover (also the store key).
    pub id: String,
    /// Cluster being replaced.
    pub from: String,
    /// Cluster being promoted.
    pub to: String,
    /// The last step that completed (`Decided` right after the term CAS).
    pub completed: Step,
    /// Whether it was an automatic failover or an operator's switchover.
    #[serde(default)]
    pub planned: bool,
    /// Raft replication: the one node of `to` that forms the new raft by recovery (its agent
    /// writes the `peers.json`), chosen at the term's raise as the node with the longest log
    /// in the fresh reports; the other nodes of `to` join it once the failover is done.
    /// `None`: no raft node reported (every node of `to` recovers, right for one-node
    /// clusters), or snapshot replication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_node: Option<String>,
    /// Raft replication, a planned switchover inside the raft (a handover): the target's
    /// nodes become voters and the leadership moves to one of them; nothing is recovered,
    /// restored, cut or sealed, and every node stays in the raft it is in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raft_handover: bool,
}

impl Topology {
    /// The topology of a fresh DR group.
    pub fn initial(primary: impl Into<String>) -> Self {
        Self {
            primary: primary.into(),
            term: 1,
            failover: None,
            last_failover_at: None,
            group_id: Some(Self::new_group_id()),
            fence_pending: Vec::new(),
            automatic_switchovers: Vec::new(),
            pause: None,
            past_pauses: Vec::new(),
            raft_lineage: None,
        }
    }

    /// Raft replication: the raft that `cluster`, the primary or the old primary of the
    /// failover in progress, leads or led (see [`DesiredState::raft_formed_term`]): the
    /// current term's raft without a failover; during one, the old primary's raft until
    /// the target forms its own (from `Fenced` on), and in a handover the same raft for
    /// both. `None` for the target before it forms its raft (and for any other cluster).
    ///
    /// [`DesiredState::raft_formed_term`]: vault_dr_common::DesiredState::raft_formed_term
    pub fn raft_of(&self, cluster: &str) -> Option<RaftLineage> {
        let kept = || {
            self.raft_lineage.clone().unwrap_or_else(|| RaftLineage {
                term: match &self.failover {
                    // The old primary's raft was formed by the term before this failover's.
                    Some(_) => self.term.saturating_sub(1).max(1),
                    None => self.term,
                },
                formed_by: match &self.failover {
                    Some(f) => f.from.clone(),
                    None => self.primary.clone(),
                },
            })
        };
        match &self.failover {
            None if cluster == self.primary => Some(kept()),
            Some(f) if f.raft_handover && (cluster == f.from || cluster == f.to) => Some(kept()),
            Some(f) if cluster == f.from => Some(kept()),
            Some(f) if cluster == f.to && f.completed >= Step::Fenced => Some(RaftLineage {
                term: self.term,
                formed_by: f.to.clone(),
            }),
            _ => None,
        }
    }

    /// How many automatic switchovers began in the 24 hours before `now`.
    pub fn automatic_switchovers_since_a_day(&self, now: DateTime<Utc>) -> usize {
        let day = now - chrono::Duration::hours(24);
        self.automatic_switchovers
            .iter()
            .filter(|at| **at > day)
            .count()
    }

    /// Records an automatic switchover beginning at `now`, forgetting those older than a day.
    pub fn note_automatic_switchover(&mut self, now: DateTime<Utc>) {
        let day = now - chrono::Duration::hours(24);
        self.automatic_switchovers.retain(|at| *at > day);
        self.automatic_switchovers.push(now);
    }

    /// The pause that holds at `now`, if any.
    pub fn pause_at(&self, now: DateTime<Utc>) -> Option<&Pause> {
        self.pause.as_ref().filter(|p| p.holds_at(now))
    }

    /// Ends the current pause (at `now`, `how` says by whom or why) and keeps it among the
    /// last [`PAUSES_KEPT`]. Returns whether there was one.
    pub fn end_pause(&mut self, now: DateTime<Utc>, how: impl Into<String>) -> bool {
        let Some(mut p) = self.pause.take() else {
            return false;
        };
        p.ended = Some((now, how.into()));
        self.past_pauses.push(p);
        let extra = self.past_pauses.len().saturating_sub(PAUSES_KEPT);
        self.past_pauses.drain(..extra);
        true
    }

    /// A fresh random group identity (128 bits, hex).
    pub fn new_group_id() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// The cluster clients should reach right now: the promoted target once promotion is done.
    pub fn serving_primary(&self) -> &str {
        match &self.failover {
            Some(f) if f.completed >= Step::Promoted => &f.to,
            _ => &self.primary,
        }
    }
}

/// A topology together with the opaque version the coordination backend returned with it
/// (a resourceVersion, a file generation). Passed back unchanged to compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value read.
    pub value: T,
    /// Backend version of the value.
    pub version: String,
}
