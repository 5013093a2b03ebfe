//! What a failover lost, as the coordinator accounts it from the agents' reports: the old
//! primary's newest applied raft index it knew of (and when it was last seen at it) against
//! the index of the primary's data the promoted target serves (the snapshot it restored, whose
//! index is in the old primary's raft index space), in entries and seconds.
//!
//! The account is a lower bound by construction: the coordinator learns the primary's index
//! only from its agent's reports, so writes the primary applied after the index it last
//! reported (up to one report interval) are unknown to it, and the real loss can be larger by
//! that much. Seconds are dated by the first report of that index, since a report can repeat
//! an older observation.
//! Seconds compare two agents' clocks (the primary's report, the target's snapshot), so clock
//! skew between them enters the figure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use vault_dr_common::ReplicationMode;

/// The newest applied raft index a cluster was seen at, from its agents' reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedIndex {
    /// The node that reported it.
    pub node: String,
    /// Its raft applied index (`sys/leader`).
    pub index: u64,
    /// When the node was first reported at this index (`sent_at`, by the agent's clock): it
    /// held this data by then. Later reports may repeat an old observation (a probe of a
    /// stopped node hangs while the reports go on), so this, not the last report, dates the
    /// index.
    pub seen_at: DateTime<Utc>,
    /// The latest report still carrying this index.
    pub last_seen_at: DateTime<Utc>,
    /// Seconds between the node's last two serving reports: the report interval as observed,
    /// about the most the account can miss (`None` after a single report).
    #[serde(default)]
    pub interval_seconds: Option<f64>,
}

/// The primary's data the promoted target serves, from its agent's report after promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedData {
    /// The target's node whose agent carried out the promotion.
    pub node: String,
    /// Its replication mechanism.
    pub mode: ReplicationMode,
    /// Raft index (the old primary's index space) of the snapshot last restored into it;
    /// `None` when it restored none.
    pub index: Option<u64>,
    /// When that snapshot was taken; `None` when the agent does not say (an agent that
    /// predates the field) or nothing was restored.
    pub taken_at: Option<DateTime<Utc>>,
}

/// How much was at risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AtRisk {
    /// Not known until the target is promoted.
    Pending,
    /// Accounted from the reports.
    Accounted {
        /// Raft entries the primary had applied that the target does not serve (0 when it
        /// serves everything the primary was last seen with).
        entries: u64,
        /// Seconds of the primary's writes the target does not serve: the time the primary
        /// was first reported at its index minus the time of the served snapshot (0 when nothing is
        /// at risk; `None` when the snapshot's time is unknown or nothing was restored).
        seconds: Option<f64>,
    },
    /// The reports cannot tell.
    NotAccounted {
        /// Why, in one sentence.
        reason: String,
    },
}

/// A failover's loss account, stored in its journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossAccount {
    /// The old primary's newest applied index known at the decision; `None` when the deciding
    /// coordinator had none (its agent never reported one to it).
    pub primary: Option<AppliedIndex>,
    /// What the target serves after promotion; `None` until then.
    pub served: Option<ServedData>,
    /// The result.
    pub at_risk: AtRisk,
}

impl LossAccount {
    /// The account at the decision: the primary's index is known, the rest is pending.
    pub fn decided(primary: Option<AppliedIndex>) -> Self {
        Self {
            primary,
            served: None,
            at_risk: AtRisk::Pending,
        }
    }

    /// The account once the target is promoted and serves `served` (`None` when no report of
    /// its promoting agent was found).
    pub fn promoted(primary: Option<AppliedIndex>, served: Option<ServedData>) -> Self {
        let at_risk = at_risk(primary.as_ref(), served.as_ref());
        Self {
            primary,
            served,
            at_risk,
        }
    }

    /// Entries at risk, when accounted.
    pub fn entries(&self) -> Option<u64> {
        match self.at_risk {
            AtRisk::Accounted { entries, .. } => Some(entries),
            _ => None,
        }
    }

    /// Seconds at risk, when accounted and known.
    pub fn seconds(&self) -> Option<f64> {
        match self.at_risk {
            AtRisk::Accounted { seconds, .. } => seconds,
            _ => None,
        }
    }

    /// Entries and seconds in a few words (`57 entries, 2.31 s`, `not accounted`), for
    /// tables and Event messages.
    pub fn short(&self) -> String {
        match &self.at_risk {
            AtRisk::Pending => "pending".into(),
            AtRisk::NotAccounted { .. } => "not accounted".into(),
            AtRisk::Accounted { entries, seconds } => format!(
                "{entries} entries, {}",
                seconds.map_or("? s".to_owned(), |s| format!("{s:.2} s"))
            ),
        }
    }
}

/// The pure computation: entries and seconds between the primary's newest known index and
/// the served data.
pub fn at_risk(primary: Option<&AppliedIndex>, served: Option<&ServedData>) -> AtRisk {
    let not = |reason: &str| AtRisk::NotAccounted {
        reason: reason.to_owned(),
    };
    let Some(served) = served else {
        return not("no report of the target's promoting agent was found");
    };
    // Both index the old primary's raft log: a restored snapshot's index, or (raft) the
    // index the recovered target served from.
    if !matches!(
        served.mode,
        ReplicationMode::Snapshot | ReplicationMode::Raft
    ) {
        return AtRisk::NotAccounted {
            reason: format!(
                "the target replicates by {}, whose reports name no restored snapshot index",
                mode_name(served.mode)
            ),
        };
    }
    let Some(primary) = primary else {
        return not(
            "the deciding coordinator never received a report with the old primary's applied index",
        );
    };
    let Some(index) = served.index else {
        // It serves none of the primary's data: everything the primary held is at risk.
        return AtRisk::Accounted {
            entries: primary.index,
            seconds: None,
        };
    };
    let entries = primary.index.saturating_sub(index);
    let seconds = if entries == 0 {
        Some(0.0)
    } else {
        served
            .taken_at
            .map(|t| ((primary.seen_at - t).num_milliseconds().max(0) as f64 / 1000.0).max(0.0))
    };
    AtRisk::Accounted { entries, seconds }
}

fn mode_name(mode: ReplicationMode) -> &'static str {
    match mode {
        ReplicationMode::None => "nothing (no replication)",
        ReplicationMode::Snapshot => "snapshot",
        ReplicationMode::Raft => "raft (one raft, non-voters)",
        ReplicationMode::EnterpriseDr => "Vault Enterprise DR replication",
        ReplicationMode::EnterprisePerformance => "Vault Enterprise performance replication",
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S%.3f").to_string()
}

impl fmt::Display for LossAccount {
    /// One sentence: what is at risk, from which figures, and what the account cannot see.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = |f: &mut fmt::Formatter<'_>, p: &AppliedIndex| {
            write!(
                f,
                "; writes {} applied after index {} (up to one report interval{}; its last report with an index was at {}) are unknown to the coordinator and may be lost too",
                p.node,
                p.index,
                p.interval_seconds
                    .map_or(String::new(), |s| format!(", {s:.1} s")),
                time(p.last_seen_at)
            )
        };
        match (&self.at_risk, &self.primary, &self.served) {
            (AtRisk::Pending, _, _) => f.write_str("not accounted yet: the target is not promoted"),
            (AtRisk::NotAccounted { reason }, _, _) => write!(f, "not accounted: {reason}"),
            (AtRisk::Accounted { entries, seconds }, Some(p), Some(s)) => {
                match (s.index, seconds) {
                    (None, _) => write!(
                        f,
                        "all {entries} entries at risk: {} serves none of the old primary's data ({} was at index {} by {})",
                        s.node,
                        p.node,
                        p.index,
                        time(p.seen_at)
                    )?,
                    (Some(i), _) if *entries == 0 => write!(
                        f,
                        "nothing at risk: {} serves index {i}, {} was at index {} by {}",
                        s.node,
                        p.node,
                        p.index,
                        time(p.seen_at)
                    )?,
                    (Some(i), secs) => write!(
                        f,
                        "{entries} entries and {} at risk: {} was at index {} by {}, {} serves index {i} from a snapshot taken {}",
                        secs.map_or("unknown seconds".to_owned(), |v| format!("{v:.2} s")),
                        p.node,
                        p.index,
                        time(p.seen_at),
                        s.node,
                        s.taken_at.map_or("at an unknown time".to_owned(), time)
                    )?,
                }
                unknown(f, p)
            }
            // An account is only computed with both sides; say so rather than guess.
            (AtRisk::Accounted { .. }, _, _) => f.write_str(
                "not accounted: the account lacks the primary's or the target's figures",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    fn primary(index: u64, seen_ms: i64) -> AppliedIndex {
        AppliedIndex {
            node: "p-0".into(),
            index,
            seen_at: t(seen_ms),
            last_seen_at: t(seen_ms + 700),
            interval_seconds: Some(0.5),
        }
    }

    fn served(index: Option<u64>, taken_ms: Option<i64>) -> ServedData {
        ServedData {
            node: "s1-0".into(),
            mode: ReplicationMode::Snapshot,
            index,
            taken_at: taken_ms.map(t),
        }
    }

    fn accounted(entries: u64, seconds: Option<f64>) -> AtRisk {
        AtRisk::Accounted { entries, seconds }
    }

    #[test]
    fn at_risk_follows_one_rule_per_case() {
        let enterprise = ServedData {
            mode: ReplicationMode::EnterpriseDr,
            ..served(None, None)
        };
        let rows: Vec<(&str, Option<AppliedIndex>, Option<ServedData>, AtRisk)> = vec![
            (
                "a target behind the primary loses the difference in entries and time",
                Some(primary(1200, 4_000)),
                Some(served(Some(1150), Some(1_500))),
                accounted(50, Some(2.5)),
            ),
            (
                "a target that serves the primary's last index loses nothing",
                Some(primary(1200, 4_000)),
                Some(served(Some(1200), Some(1_500))),
                accounted(0, Some(0.0)),
            ),
            (
                "a final snapshot newer than the primary's last report loses nothing",
                Some(primary(1200, 4_000)),
                Some(served(Some(1260), Some(6_000))),
                accounted(0, Some(0.0)),
            ),
            (
                "a target that restored nothing serves none of the primary's data",
                Some(primary(1200, 4_000)),
                Some(served(None, None)),
                accounted(1200, None),
            ),
            (
                "a target agent that does not say when its snapshot was taken gives no seconds",
                Some(primary(1200, 4_000)),
                Some(served(Some(1100), None)),
                accounted(100, None),
            ),
            (
                "a snapshot stamped after the primary's last report (clock skew) counts 0 s",
                Some(primary(1200, 4_000)),
                Some(served(Some(1100), Some(4_200))),
                accounted(100, Some(0.0)),
            ),
            (
                "a primary that never reported its index cannot be accounted",
                None,
                Some(served(Some(1100), Some(1_500))),
                AtRisk::NotAccounted {
                    reason: "the deciding coordinator never received a report with the old primary's applied index".into(),
                },
            ),
            (
                "Enterprise replication is not accounted (no snapshot index)",
                Some(primary(1200, 4_000)),
                Some(enterprise),
                AtRisk::NotAccounted {
                    reason: "the target replicates by Vault Enterprise DR replication, whose reports name no restored snapshot index".into(),
                },
            ),
            (
                "no report of the promoting agent cannot be accounted",
                Some(primary(1200, 4_000)),
                None,
                AtRisk::NotAccounted {
                    reason: "no report of the target's promoting agent was found".into(),
                },
            ),
        ];
        for (name, p, s, want) in rows {
            assert_eq!(at_risk(p.as_ref(), s.as_ref()), want, "{name}");
        }
    }

    #[test]
    fn the_sentence_says_what_is_at_risk_and_what_the_coordinator_cannot_see() {
        let lost = LossAccount::promoted(
            Some(primary(1200, 4_000)),
            Some(served(Some(1150), Some(1_500))),
        );
        assert_eq!(
            lost.to_string(),
            "50 entries and 2.50 s at risk: p-0 was at index 1200 by 12:00:04.000, s1-0 serves \
             index 1150 from a snapshot taken 12:00:01.500; writes p-0 applied after index 1200 \
             (up to one report interval, 0.5 s; its last report with an index was at \
             12:00:04.700) are unknown to the coordinator and may be lost too"
        );
        assert_eq!(lost.short(), "50 entries, 2.50 s");
        let none = LossAccount::promoted(
            Some(primary(1200, 4_000)),
            Some(served(Some(1300), Some(5_000))),
        );
        assert!(
            none.to_string()
                .starts_with("nothing at risk: s1-0 serves index 1300, p-0 was at index 1200"),
            "{none}"
        );
        let empty = LossAccount::promoted(Some(primary(1200, 4_000)), Some(served(None, None)));
        assert!(
            empty.to_string().starts_with(
                "all 1200 entries at risk: s1-0 serves none of the old primary's data"
            ),
            "{empty}"
        );
        assert_eq!(empty.short(), "1200 entries, ? s");
        let unknown = LossAccount::promoted(None, Some(served(Some(1), Some(0))));
        assert!(
            unknown.to_string().starts_with("not accounted: "),
            "{unknown}"
        );
        assert_eq!(unknown.short(), "not accounted");
        assert_eq!(
            LossAccount::decided(None).to_string(),
            "not accounted yet: the target is not promoted"
        );
    }

    #[test]
    fn the_account_survives_a_json_round_trip_with_tagged_outcomes() {
        let a = LossAccount::promoted(
            Some(primary(1200, 4_000)),
            Some(served(Some(1150), Some(1_500))),
        );
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["at_risk"]["kind"], "accounted");
        assert_eq!(v["at_risk"]["entries"], 50);
        let back: LossAccount = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }
}
