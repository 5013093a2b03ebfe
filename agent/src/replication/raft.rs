//! Raft replication (`--replication raft`): the DR group is one raft. The primary cluster's
//! nodes are its voters, every secondary's nodes are non-voters that receive the log within
//! milliseconds; promotion re-forms the raft around the target with a `peers.json` recovery.
//!
//! This node's side, every round ([`Controller::run`]):
//! - **status**: the exact lag in entries and the time since the leader last heard from this
//!   node, from autopilot (`sys/storage/raft/autopilot/state` through the node, which a standby
//!   forwards to the leader); while no leader answers, the lag against the leader's last known
//!   index and the time since it was known;
//! - **the start hold**: the server runs under `vault-dr-launch` ([`crate::launch`]) and
//!   starts only with this agent's permit, which [`plan::plan`] gives only once the node's data
//!   belongs to the raft the coordinator names; otherwise the data is recovered (the promotion
//!   target) or quarantined and the node joins as a non-voter.
//!
//! Every step is safe to repeat: a round re-reads the control directory and the lineage file,
//! and each action writes its files before the permit that acts on them.

pub mod plan;

pub use crate::config::RaftConfig;
use crate::launch::{ControlDir, Permit, write_atomic};
use crate::metrics::Metrics;
use crate::replication::Replicator;
use crate::state::Shared;
use crate::vault::VaultClient;
use async_trait::async_trait;
use chrono::Utc;
use plan::{Action, Facts, Launcher, Lineage, Wait};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vault_dr_common::{NodeState, ReplicationMode, ReplicationStatus};

/// The lineage file in the control directory.
pub const LINEAGE_FILE: &str = "lineage.json";
/// How often the controller looks at its node when nothing changes.
pub const ROUND: Duration = Duration::from_millis(250);
/// How often the controller looks while a stop, a start or a recovery is in flight.
pub const BUSY_ROUND: Duration = Duration::from_millis(50);
/// How far back the leader's committed indexes are kept for the lag in seconds.
pub const COMMIT_HISTORY: Duration = Duration::from_secs(30);
/// How often autopilot's state (membership, last contact) is read.
pub const AUTOPILOT_EVERY: Duration = Duration::from_secs(1);
/// The least time between two step-downs of this node ([`Action::StepDown`]): one election
/// (about 1 s with `performance_multiplier = 1`) must be able to finish before the next.
pub const STEP_DOWN_EVERY: Duration = Duration::from_secs(5);
/// How long a node that should vote may stay a non-voter before its agent asks the raft to
/// promote it ([`plan::wants_promotion`]): autopilot's default stabilization time (10 s)
/// and a margin. Asked again at most this often.
pub const PROMOTE_AFTER: Duration = Duration::from_secs(15);
/// A run the agent did not stop that ends sooner than this is a failed start.
pub const FAILED_START: Duration = Duration::from_secs(10);
/// The longest wait before the next start after failed starts.
pub const START_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Entries of the raft path that are the agent's own and are never quarantined.
const OWN_PREFIX: &str = ".vault-dr";

/// What the reports carry, kept between rounds.
#[derive(Debug, Default)]
pub struct RaftStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default, Clone)]
struct StatusInner {
    status: ReplicationStatus,
    /// The leader's last committed index and when it was read.
    leader_index: Option<(u64, Instant)>,
    /// The leader's committed index as read each round, over the last [`COMMIT_HISTORY`]:
    /// when entries are missing, their age is bounded by the last reading at or below this
    /// node's applied index.
    commits: std::collections::VecDeque<(u64, Instant)>,
    /// The last autopilot reading.
    membership: Option<Membership>,
}

/// What the last autopilot state said of this node.
#[derive(Debug, Clone)]
struct Membership {
    read_at: Instant,
    /// Listed, under a leader.
    member: bool,
    /// `leader`, `voter`, `non-voter`.
    status: Option<String>,
    /// Seconds since the leader last heard from it (0 for the leader).
    contact: f64,
}

#[async_trait]
impl Replicator for RaftStatus {
    async fn status(&self) -> ReplicationStatus {
        self.lock().status.clone()
    }
}

impl RaftStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The raft backend's loop.
#[derive(Debug)]
pub struct Controller {
    config: RaftConfig,
    vault: Arc<VaultClient>,
    shared: Arc<Shared>,
    metrics: Metrics,
    status: Arc<RaftStatus>,
    control: ControlDir,
    starts: Mutex<FailedStarts>,
    /// When this node last stepped down.
    stepped_down: Mutex<Option<Instant>>,
    /// Since when the node should vote but is a non-voter, and when its promotion was last
    /// asked for.
    unpromoted: Mutex<(Option<Instant>, Option<Instant>)>,
}

/// The server's failed starts in a row, from the launcher's end records.
#[derive(Debug, Default)]
struct FailedStarts {
    /// The end record counted last.
    seen: Option<chrono::DateTime<Utc>>,
    /// Failed starts in a row (0: the latest run ended normally or was stopped).
    count: u32,
}

/// The age of the oldest entry this node misses, bounded from above: every entry past
/// `mine` was committed after the last reading of the leader's committed index at or below
/// `mine` (`history`, oldest first), so the time since that reading. 0 when no entry is
/// missing; without such a reading in the history, the larger of its span and autopilot's
/// last contact.
fn lag_seconds(
    history: &std::collections::VecDeque<(u64, Instant)>,
    mine: u64,
    entries: u64,
    contact: f64,
    now: Instant,
) -> f64 {
    if entries == 0 {
        return 0.0;
    }
    match history.iter().rev().find(|(commit, _)| *commit <= mine) {
        Some((_, at)) => now.duration_since(*at).as_secs_f64(),
        None => history.front().map_or(contact, |(_, at)| {
            now.duration_since(*at).as_secs_f64().max(contact)
        }),
    }
}

/// The wait before the next start after `failures` failed starts in a row: 1 s, 2 s, 4 s, ...,
/// at most [`START_BACKOFF_MAX`].
fn start_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(START_BACKOFF_MAX)
}

impl Controller {
    /// A controller of the node behind `vault`.
    pub fn new(
        config: RaftConfig,
        vault: Arc<VaultClient>,
        shared: Arc<Shared>,
        metrics: Metrics,
        status: Arc<RaftStatus>,
    ) -> std::io::Result<Self> {
        let control = ControlDir::new(&config.control_dir);
        control.create()?;
        Ok(Self {
            config,
            vault,
            shared,
            metrics,
            status,
            control,
            starts: Mutex::default(),
            stepped_down: Mutex::default(),
            unpromoted: Mutex::default(),
        })
    }

    /// Runs forever, one round every [`ROUND`] (at once when the desired state changes).
    pub async fn run(self) {
        let mut changes = self.shared.desired_changes();
        let mut last_wait = None;
        loop {
            let (action, promote) = self.round().await;
            let action = self.hold_failed_starts(action);
            if let Err(e) = self.promote_if_kept_out(promote).await {
                tracing::error!(error = %e, "raft: promotion failed; asked again later");
                self.status.lock().status.last_error = Some(e);
            }
            match &action {
                Action::Wait(w) => {
                    if last_wait.as_ref() != Some(w) {
                        tracing::info!(wait = ?w, "raft: waiting");
                        last_wait = Some(w.clone());
                    }
                }
                other => {
                    last_wait = None;
                    if !matches!(other, Action::Applied(_) | Action::Record(_)) {
                        tracing::info!(action = ?other, "raft: acting");
                    }
                }
            }
            // While a stop, a start or a recovery is in flight the next step follows within
            // [`BUSY_ROUND`]: a promotion waits for each of them.
            let busy = matches!(
                action,
                Action::Stop { .. }
                    | Action::Recover { .. }
                    | Action::Permit { .. }
                    | Action::Quarantine { .. }
                    | Action::Wait(Wait::Stopping | Wait::Permitted | Wait::Starting)
            );
            let result = if action == Action::StepDown {
                self.step_down().await
            } else {
                self.act(action)
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "raft: action failed; retried next round");
                self.status.lock().status.last_error = Some(e);
            }
            tokio::select! {
                () = tokio::time::sleep(if busy { BUSY_ROUND } else { ROUND }) => {}
                () = changes.changed() => {}
            }
        }
    }

    /// Holds a start back while the server keeps failing to start (a recovery that cannot be
    /// applied, a broken config): after n failed starts in a row the next one waits
    /// [`start_backoff`]`(n)` from the last failure, and the report says why, so that the
    /// coordinator journals the reason with the failed promotion. Other actions pass.
    fn hold_failed_starts(&self, action: Action) -> Action {
        if !matches!(
            action,
            Action::Permit { .. } | Action::Recover { .. } | Action::Quarantine { .. }
        ) {
            return action;
        }
        let Some(ended) = self.control.last_ended() else {
            return action;
        };
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        if starts.seen != Some(ended.ended_at) {
            starts.seen = Some(ended.ended_at);
            let failed = !ended.asked && ended.ran() < FAILED_START;
            starts.count = if failed { starts.count + 1 } else { 0 };
            if failed {
                self.metrics.raft_failed_starts.inc();
                tracing::error!(how = %ended.how, ran = ?ended.ran(), failures = starts.count, "raft: the server failed to start; see its log");
            }
        }
        if starts.count == 0 {
            return action;
        }
        let delay = start_backoff(starts.count);
        let since = (Utc::now() - ended.ended_at).to_std().unwrap_or_default();
        let mut why = format!(
            "the server failed to start {} time{} in a row (the last {} after {:.1} s, on the permit \"{}\" of term {}); see the server's log",
            starts.count,
            if starts.count == 1 { "" } else { "s" },
            ended.how,
            ended.ran().as_secs_f64(),
            ended.permit.reason,
            ended.permit.term
        );
        let held = since < delay;
        if held {
            why.push_str(&format!(
                "; next start in {:.0} s",
                (delay - since).as_secs_f64().ceil()
            ));
        }
        self.status.lock().status.last_error = Some(why);
        if held {
            Action::Wait(Wait::FailedStarts(starts.count))
        } else {
            action
        }
    }

    /// Asks the raft to promote this node (`sys/storage/raft/promote`) once it has been kept
    /// a non-voter for [`PROMOTE_AFTER`] while it should vote; at most once per that time.
    async fn promote_if_kept_out(&self, wanted: bool) -> Result<(), String> {
        {
            let mut u = self.unpromoted.lock().unwrap_or_else(|p| p.into_inner());
            if !wanted {
                u.0 = None;
                return Ok(());
            }
            let since = *u.0.get_or_insert_with(Instant::now);
            let due = since.elapsed() >= PROMOTE_AFTER
                && u.1.is_none_or(|last| last.elapsed() >= PROMOTE_AFTER);
            if !due {
                return Ok(());
            }
            u.1 = Some(Instant::now());
        }
        tracing::warn!(node_id = %self.config.node_id, "raft: this node should vote and is still a non-voter; asking the raft to promote it");
        self.metrics
            .raft_actions
            .with_label_values(&["promote"])
            .inc();
        self.vault
            .raft_promote(&self.config.node_id)
            .await
            .map_err(|e| format!("promote {} to a voter: {e}", self.config.node_id))
    }

    /// Reads the facts, updates the status, decides; and whether the node wants its
    /// promotion to a voter ([`plan::wants_promotion`]).
    async fn round(&self) -> (Action, bool) {
        let launcher = if self.control.stop_pending() {
            Launcher::Stopping
        } else if self.control.pending_permit().is_some() {
            Launcher::Permitted
        } else if self.control.running().is_some() {
            Launcher::Running
        } else {
            Launcher::Down
        };
        let node = if launcher == Launcher::Running {
            self.vault.health().await.health.state
        } else {
            NodeState::Unreachable
        };
        let leader_seen = self.refresh_status(launcher == Launcher::Running).await;
        let lineage = self.lineage();
        let desired = self.shared.desired();
        let voter = self
            .status
            .lock()
            .membership
            .as_ref()
            .and_then(|m| m.status.as_deref().map(|s| s != "non-voter"));
        let facts = Facts {
            desired: desired.as_ref(),
            lineage: lineage.as_ref(),
            launcher,
            data_present: data_present(&self.config.path),
            node,
            leader_seen,
            suffrage: self.config.suffrage,
            me: &self.config.node,
            voter,
            running_for: (launcher == Launcher::Running)
                .then(|| self.control.running_for())
                .flatten(),
        };
        (plan::plan(facts), plan::wants_promotion(&facts))
    }

    /// Reads the raft through the node; updates the status. Whether the node is a member of
    /// a raft whose leader answers (its own `sys/leader` names a leader that answers, and the
    /// last autopilot state, at most [`AUTOPILOT_EVERY`] old, lists this node).
    ///
    /// The lag in entries is the leader's committed index minus this node's applied index,
    /// this node's read first: never smaller than the true lag, larger by at most the writes
    /// of one round trip. The lag in seconds is 0 when no entry is missing, else an upper
    /// bound of the oldest missing entry's age ([`lag_seconds`]: the time since the leader's
    /// committed index was last read at or below this node's; autopilot's last contact,
    /// which OpenBao refreshes only every few seconds for non-voters, when there is no such
    /// reading); while no leader answers, both are taken against the leader's last known
    /// index and grow with the time since it was known.
    async fn refresh_status(&self, running: bool) -> bool {
        let local = if running {
            self.vault.leader().await.ok()
        } else {
            None
        };
        let leader_commit = match &local {
            Some(l) if l.is_self => l.raft_committed_index,
            Some(l) if !l.leader_address.is_empty() => match url::Url::parse(&l.leader_address) {
                Ok(addr) => crate::vault::leader_of(self.vault.http(), &addr)
                    .await
                    .ok()
                    .filter(|x| x.is_self)
                    .and_then(|x| x.raft_committed_index),
                Err(_) => None,
            },
            _ => None,
        };
        let due = self
            .status
            .lock()
            .membership
            .as_ref()
            .is_none_or(|m| m.read_at.elapsed() >= AUTOPILOT_EVERY);
        let autopilot = if running && due && leader_commit.is_some() {
            Some(self.vault.autopilot_servers().await)
        } else {
            None
        };
        let lineage = self.lineage();
        let mut s = self.status.lock();
        if !running || leader_commit.is_none() {
            s.membership = None;
        }
        match autopilot {
            Some(Ok(list)) => {
                let me = list.iter().find(|x| x.id == self.config.node_id);
                s.membership = Some(Membership {
                    read_at: Instant::now(),
                    member: me.is_some() && list.iter().any(|x| x.status == "leader"),
                    status: me.map(|m| m.status.clone()),
                    contact: me
                        .filter(|m| m.status != "leader")
                        .and_then(|m| m.last_contact())
                        .map_or(0.0, |d| d.as_secs_f64()),
                });
                if me.is_none() {
                    s.status.last_error = Some(format!(
                        "this node ({}) is not a server of the raft its node answers for",
                        self.config.node_id
                    ));
                }
            }
            Some(Err(e)) => {
                s.membership = None;
                s.status.last_error = Some(format!("autopilot state: {e}"));
            }
            None => {}
        }
        let applied = local.as_ref().and_then(|l| l.raft_applied_index);
        let mut status = ReplicationStatus {
            mode: ReplicationMode::Raft,
            ..s.status.clone()
        };
        if let Some(a) = applied {
            status.replicated_index = Some(a);
        }
        // The node's own last log index, known while it runs, leader or not.
        status.log_index = local.as_ref().and_then(|l| l.raft_committed_index);
        status.raft_suffrage = Some(self.config.suffrage.as_str().to_owned());
        let member = s.membership.as_ref().is_some_and(|m| m.member);
        match (leader_commit, applied) {
            (Some(commit), Some(mine)) => {
                let entries = commit.saturating_sub(mine);
                let contact = s.membership.as_ref().map_or(0.0, |m| m.contact);
                let now = Instant::now();
                status.lag_entries = Some(entries);
                status.lag_seconds = Some(lag_seconds(&s.commits, mine, entries, contact, now));
                s.commits.push_back((commit, now));
                while s
                    .commits
                    .front()
                    .is_some_and(|(_, at)| now.duration_since(*at) > COMMIT_HISTORY)
                {
                    s.commits.pop_front();
                }
                status.state = s.membership.as_ref().and_then(|m| m.status.clone());
                status.connection_state = Some("leader reachable".into());
                status.last_success_at = Some(Utc::now());
                if member {
                    status.last_error = None;
                }
                s.leader_index = Some((commit, Instant::now()));
            }
            _ => {
                status.connection_state = Some(if running {
                    "no leader reachable".into()
                } else {
                    "server held by its agent".into()
                });
                if let Some((index, at)) = s.leader_index {
                    status.lag_entries = status
                        .replicated_index
                        .map(|mine| index.saturating_sub(mine));
                    status.lag_seconds = Some(at.elapsed().as_secs_f64());
                }
            }
        }
        status.seeded = lineage.is_some() && status.replicated_index.unwrap_or(0) > 0;
        s.status = status;
        leader_commit.is_some() && member
    }

    /// Steps the node down (at most once every [`STEP_DOWN_EVERY`]).
    async fn step_down(&self) -> Result<(), String> {
        {
            let mut last = self.stepped_down.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < STEP_DOWN_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        tracing::warn!("raft: this secondary's node leads the raft; stepping it down");
        self.metrics
            .raft_actions
            .with_label_values(&["step-down"])
            .inc();
        self.vault
            .step_down()
            .await
            .map_err(|e| format!("step down: {e}"))
    }

    fn act(&self, action: Action) -> Result<(), String> {
        let term = self.shared.seen_term();
        let label = match &action {
            Action::Wait(_) | Action::Applied(_) | Action::Record(_) | Action::StepDown => None,
            Action::Permit { .. } => Some("permit"),
            Action::Stop { .. } => Some("stop"),
            Action::Recover { .. } => Some("recover"),
            Action::Quarantine { .. } => Some("quarantine"),
        };
        if let Some(l) = label {
            self.metrics.raft_actions.with_label_values(&[l]).inc();
        }
        match action {
            Action::Wait(_) | Action::StepDown => Ok(()),
            Action::Applied(t) => {
                if self.shared.applied_term() < t {
                    tracing::info!(term = t, "raft: the term is carried out on this node");
                    // The index this node serves from, for the failover's loss account.
                    let index = self.status.lock().status.replicated_index;
                    if let Some(i) = index {
                        self.status.lock().status.restored_index = Some(i);
                    }
                    self.shared.set_applied_term(t);
                }
                Ok(())
            }
            Action::Permit { non_voter, record } => {
                if let Some(l) = record {
                    self.write_lineage(&l)?;
                }
                self.permit(term, non_voter, "its data belongs to the primary's raft")
            }
            Action::Record(l) => self.write_lineage(&l),
            Action::Stop { why, kill } => {
                tracing::warn!(why = %why, kill, "raft: stopping the server");
                self.control
                    .request_stop(kill)
                    .map_err(|e| format!("request a stop: {e}"))
            }
            Action::Recover { lineage } => {
                self.write_peers()?;
                self.write_lineage(&lineage)?;
                self.permit(term, false, "raft recovery: this node forms the new raft")
            }
            Action::Quarantine {
                lineage,
                from,
                non_voter,
            } => {
                let moved = self.quarantine(from.as_ref())?;
                self.status.lock().status.quarantined = moved.clone();
                self.write_lineage(&lineage)?;
                self.permit(term, non_voter, "quarantined: joins the primary's raft")
            }
        }
    }

    fn permit(&self, term: u64, non_voter: bool, reason: &str) -> Result<(), String> {
        self.control
            .write_permit(&Permit {
                term,
                non_voter,
                reason: reason.into(),
            })
            .map_err(|e| format!("write the permit: {e}"))
    }

    fn lineage(&self) -> Option<Lineage> {
        let bytes = std::fs::read(self.config.control_dir.join(LINEAGE_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_lineage(&self, l: &Lineage) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(l).map_err(|e| e.to_string())?;
        write_atomic(&self.config.control_dir.join(LINEAGE_FILE), &body)
            .map_err(|e| format!("write the lineage: {e}"))
    }

    /// `<path>/raft/peers.json` naming this node the only voter.
    fn write_peers(&self) -> Result<(), String> {
        let dir = self.config.path.join("raft");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let body = peers_json(&self.config.node_id, &self.config.cluster_addr);
        write_atomic(&dir.join("peers.json"), body.as_bytes())
            .map_err(|e| format!("write peers.json: {e}"))
    }

    /// Moves every entry of the raft path but the agent's own into a new folder of the
    /// quarantine; its path (`None` when there was nothing to move).
    fn quarantine(&self, from: Option<&Lineage>) -> Result<Option<String>, String> {
        let entries = data_entries(&self.config.path)
            .map_err(|e| format!("read {}: {e}", self.config.path.display()))?;
        if entries.is_empty() {
            return Ok(None);
        }
        let label = match from {
            Some(l) => format!("term{}-{}", l.term, l.primary),
            None => "unknown".into(),
        };
        let dest = self.config.quarantine_dir.join(format!(
            "{}-{label}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        std::fs::create_dir_all(&dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
        for e in entries {
            let to = dest.join(e.file_name().unwrap_or_default());
            std::fs::rename(&e, &to)
                .map_err(|err| format!("move {} to {}: {err}", e.display(), to.display()))?;
        }
        tracing::warn!(to = %dest.display(), "raft: the node's data of another raft is quarantined");
        Ok(Some(dest.display().to_string()))
    }
}

/// The `peers.json` of a recovery that makes `id` at `addr` the only voter.
pub fn peers_json(id: &str, addr: &str) -> String {
    serde_json::json!([{ "id": id, "address": addr, "non_voter": false }]).to_string()
}

/// The raft path's entries that are the server's (everything but the agent's own).
fn data_entries(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match std::fs::read_dir(path) {
        Ok(dir) => {
            for e in dir {
                let e = e?;
                if !e.file_name().to_string_lossy().starts_with(OWN_PREFIX) {
                    out.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Whether the raft path holds server data.
fn data_present(path: &Path) -> bool {
    data_entries(path).is_ok_and(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_in_seconds_is_the_time_since_the_leader_was_last_seen_at_or_below_this_node() {
        let now = Instant::now();
        let ago = |ms| now - Duration::from_millis(ms);
        let history: std::collections::VecDeque<(u64, Instant)> = [
            (100, ago(1000)),
            (104, ago(750)),
            (110, ago(500)),
            (112, ago(250)),
        ]
        .into();
        assert_eq!(lag_seconds(&history, 112, 0, 3.0, now), 0.0, "caught up");
        // Applied 110: everything past it was committed after the reading of 110.
        assert_eq!(lag_seconds(&history, 110, 3, 3.0, now), 0.5);
        assert_eq!(lag_seconds(&history, 111, 2, 3.0, now), 0.5);
        // Behind every reading: at least the history's span, or the last contact.
        assert_eq!(lag_seconds(&history, 90, 23, 0.2, now), 1.0);
        assert_eq!(lag_seconds(&history, 90, 23, 2.5, now), 2.5);
        assert_eq!(lag_seconds(&Default::default(), 90, 23, 2.5, now), 2.5);
    }

    #[test]
    fn peers_json_names_one_voter() {
        let v: serde_json::Value =
            serde_json::from_str(&peers_json("s1-n1", "127.0.0.1:8201")).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"id": "s1-n1", "address": "127.0.0.1:8201", "non_voter": false}])
        );
    }

    #[test]
    fn the_agent_s_own_entries_are_not_data() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!data_present(dir.path()));
        std::fs::create_dir(dir.path().join(".vault-dr")).unwrap();
        std::fs::create_dir(dir.path().join(".vault-dr-quarantine")).unwrap();
        assert!(!data_present(dir.path()));
        std::fs::write(dir.path().join("vault.db"), b"x").unwrap();
        assert_eq!(
            data_entries(dir.path()).unwrap(),
            vec![dir.path().join("vault.db")]
        );
        assert!(!data_present(&dir.path().join("missing")));
    }
}
