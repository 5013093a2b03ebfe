//! The scorer's result as data: the [`CandidateTable`] (every cluster's row, ranked, the
//! winner), each [`Candidate`] with its figures, and the reason it cannot be promoted
//! ([`Ineligible`]), stored with every decision and shown by `vault-dr explain`. The logic is
//! `failover::scorer::score`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
    /// Whether its promotion would still restore a snapshot once its restore in flight ends
    /// (it holds one newer than what it serves or restores, and the policy's promotion
    /// restores it).
    #[serde(default)]
    pub promotion_restores: bool,
    /// Raft backend: the representative node's last log index. Nodes of one raft compare by
    /// it exactly; the highest holds the most of the log (every committed entry, in the
    /// synchronous layout).
    #[serde(default)]
    pub log_index: Option<u64>,
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
