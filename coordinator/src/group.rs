//! One coordinator group per set of clusters: the group stamp.
//!
//! Every topology carries a random group identity made with it (`Topology::group_id`). The
//! leader writes a small record, the **stamp** `{group_id, term, primary, by, written_at}`,
//! into the serving primary at `cubbyhole/vault-dr/group` with the DR token (the DR token is
//! the same in every cluster and a restore brings the primary's token store, so every restored
//! secondary carries the stamp too, by the snapshots themselves). Before it acts, and every
//! [`CHECK_EVERY`], the leader reads the stamp of every cluster it manages ([`judge`]):
//!
//! - a stamp of **another group** (another identity): a second coordinator group was started
//!   over these clusters, or this group lost its coordination state;
//! - a stamp of this group with a **higher term** than this coordinator's: a topology older
//!   than the clusters' (a coordination backend restored from an old backup, say).
//!
//! Either way the coordinator **refuses**: it keeps probing and serving its view and metrics,
//! but decides nothing, starts and resumes no failover, forwards no client connection and
//! patches no Service, says why in `status` and its log, and sets
//! `vault_dr_coordinator_group_refusing` (alert `VaultDrGroupConflict`). It never overwrites
//! another group's stamp.
//!
//! An operator whose group lost its coordination state for good (the other group is gone)
//! sets `[coordination] adopt_group` to the identity the refusal names: the leader then takes
//! that identity and a term above the stamps' ([`adopt`]), and acts again.

use crate::model::topology::Topology;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Why this coordinator refuses to act, shared by the leader (which sets it) and everything
/// that acts (the traffic supervisors, the switchover API, the report intake). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Refusal(Arc<RwLock<Option<String>>>);

impl Refusal {
    /// The reason, while refusing.
    pub fn reason(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this coordinator refuses to act.
    pub fn is_refusing(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Sets (or clears) the reason; returns whether it changed.
    pub fn set(&self, reason: Option<String>) -> bool {
        let mut r = self.0.write().unwrap_or_else(|p| p.into_inner());
        let changed = *r != reason;
        *r = reason;
        changed
    }
}

/// Where the stamp lives in each cluster (the DR token's cubbyhole).
pub const STAMP_PATH: &str = "cubbyhole/vault-dr/group";
/// How often the leader reads every cluster's stamp.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The record a leader writes into its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStamp {
    /// The group identity (`Topology::group_id`).
    pub group_id: String,
    /// The term the writer was in.
    pub term: u64,
    /// The primary of that term.
    pub primary: String,
    /// The coordinator replica that wrote it.
    pub by: String,
    /// When.
    pub written_at: DateTime<Utc>,
}

/// What the leader found in one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A stamp.
    Stamp(GroupStamp),
    /// The cluster answered that it has none.
    None,
    /// The cluster could not be read (down, sealed, restoring, no token): no evidence.
    Unread(String),
}

/// What the leader does after reading the stamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Act; and write this group's stamp into the named cluster first when it is not there
    /// yet (the serving primary's stamp is missing or of an older term).
    Act {
        /// The cluster to stamp, if any.
        stamp: Option<String>,
    },
    /// Do nothing at all, for this reason (one sentence).
    Refuse(String),
}

/// The pure rule over every cluster's stamp (`found`: cluster name and what was read).
pub fn judge(own: &Topology, found: &[(String, Found)]) -> Judgement {
    let Some(id) = own.group_id.as_deref() else {
        return Judgement::Refuse(
            "this group's topology has no identity yet: the leader gives it one first".into(),
        );
    };
    for (cluster, f) in found {
        let Found::Stamp(s) = f else { continue };
        if s.group_id != id {
            return Judgement::Refuse(format!(
                "cluster {cluster} carries the stamp of another coordinator group (group {}, term {}, primary {}, written by {} at {}); this group is {id}: a second group over the same clusters, or this group lost its coordination state (if that group is gone for good, set [coordination] adopt_group = \"{}\")",
                s.group_id,
                s.term,
                s.primary,
                s.by,
                s.written_at.format("%Y-%m-%dT%H:%M:%SZ"),
                s.group_id
            ));
        }
        if s.term > own.term {
            return Judgement::Refuse(format!(
                "cluster {cluster} carries term {} of this group (primary {}, written by {}), above this coordinator's term {}: its topology is older than the clusters' (restored from a backup?); set [coordination] adopt_group = \"{id}\" to take a term above the stamps'",
                s.term, s.primary, s.by, own.term
            ));
        }
    }
    let primary = own.serving_primary();
    let stamped = found.iter().any(|(c, f)| {
        c == primary && matches!(f, Found::Stamp(s) if s.group_id == id && s.term >= own.term)
    });
    let readable = found
        .iter()
        .any(|(c, f)| c == primary && !matches!(f, Found::Unread(_)));
    Judgement::Act {
        stamp: (!stamped && readable).then(|| primary.to_owned()),
    }
}

/// The topology an operator's `adopt_group = "<id>"` makes of `own`: that identity, the
/// primary of the newest stamp of it, and a term above every stamp found (so the clusters'
/// agents follow it), no failover in progress. `None` when nothing is to be adopted (no stamp
/// of that identity found, or it is ours already with no higher term).
pub fn adopt(own: &Topology, adopt_id: &str, found: &[(String, Found)]) -> Option<Topology> {
    let newest = found
        .iter()
        .filter_map(|(_, f)| match f {
            Found::Stamp(s) if s.group_id == adopt_id => Some(s),
            _ => None,
        })
        .max_by_key(|s| s.term)?;
    if own.group_id.as_deref() == Some(adopt_id) && newest.term <= own.term {
        return None;
    }
    let mut next = own.clone();
    next.group_id = Some(adopt_id.to_owned());
    next.term = next.term.max(newest.term + 1);
    next.primary = newest.primary.clone();
    next.failover = None;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(group: &str, term: u64, primary: &str) -> Found {
        Found::Stamp(GroupStamp {
            group_id: group.into(),
            term,
            primary: primary.into(),
            by: "coord-1".into(),
            written_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        })
    }

    fn own(term: u64, primary: &str) -> Topology {
        let mut t = Topology::initial(primary);
        t.group_id = Some("a".into());
        t.term = term;
        t
    }

    fn found(rows: &[(&str, Found)]) -> Vec<(String, Found)> {
        rows.iter()
            .map(|(c, f)| ((*c).to_owned(), f.clone()))
            .collect()
    }

    #[test]
    fn the_stamps_decide_whether_the_leader_acts_and_where_it_stamps() {
        let unread = || Found::Unread("unreachable".into());
        // (name, own topology, found) -> judgement
        type Row = (&'static str, Topology, Vec<(String, Found)>, Judgement);
        let rows: Vec<Row> = vec![
            (
                "a fresh group stamps its primary",
                own(1, "p"),
                found(&[("p", Found::None), ("s1", Found::None)]),
                Judgement::Act {
                    stamp: Some("p".into()),
                },
            ),
            (
                "stamped in this term: nothing to write",
                own(2, "s1"),
                found(&[("p", stamp("a", 1, "p")), ("s1", stamp("a", 2, "s1"))]),
                Judgement::Act { stamp: None },
            ),
            (
                "after a failover the new primary gets the new term",
                own(2, "s1"),
                found(&[("p", unread()), ("s1", stamp("a", 1, "p"))]),
                Judgement::Act {
                    stamp: Some("s1".into()),
                },
            ),
            (
                "an unreadable primary is stamped later",
                own(1, "p"),
                found(&[("p", unread()), ("s1", Found::None)]),
                Judgement::Act { stamp: None },
            ),
        ];
        for (name, t, f, want) in rows {
            assert_eq!(judge(&t, &f), want, "{name}");
        }
    }

    #[test]
    fn another_group_or_a_higher_term_is_refused_with_the_reason() {
        let j = judge(
            &own(1, "p"),
            &found(&[("p", Found::None), ("s1", stamp("b", 2, "s1"))]),
        );
        let Judgement::Refuse(why) = j else {
            panic!("{j:?}")
        };
        assert!(
            why.starts_with("cluster s1 carries the stamp of another coordinator group (group b, term 2, primary s1"),
            "{why}"
        );
        assert!(why.contains("adopt_group = \"b\""), "{why}");
        let j = judge(&own(1, "p"), &found(&[("s1", stamp("a", 3, "s1"))]));
        let Judgement::Refuse(why) = j else {
            panic!("{j:?}")
        };
        assert!(why.contains("term 3 of this group"), "{why}");
        let mut anonymous = own(1, "p");
        anonymous.group_id = None;
        assert!(matches!(judge(&anonymous, &[]), Judgement::Refuse(_)));
    }

    #[test]
    fn adopting_takes_the_identity_and_a_term_above_the_stamps() {
        let f = found(&[("p", stamp("b", 2, "s1")), ("s1", stamp("b", 4, "s1"))]);
        let next = adopt(&own(1, "p"), "b", &f).unwrap();
        assert_eq!((next.group_id.as_deref(), next.term), (Some("b"), 5));
        assert_eq!(
            next.primary, "s1",
            "the primary of the newest stamp, not this config's"
        );
        assert_eq!(
            judge(&next, &f),
            Judgement::Act {
                stamp: Some("s1".into())
            }
        );
        assert_eq!(adopt(&next, "b", &f), None, "adopted already");
        assert_eq!(adopt(&own(1, "p"), "c", &f), None, "no stamp of that group");
    }
}
