//! The snapshot backend (OpenBao, Vault Community): raft snapshot shipping driven by the
//! desired state. This file owns the orchestration: each tick the [`Shipper`] gathers the facts
//! (its record, the snapshots held, the pull timer, the primary's index and, when asked for,
//! the node's state), asks the pure [`plan::plan`] for the next [`Action`], logs it and
//! carries it out. The decisions and their rules live in [`plan`], the Vault calls in
//! [`crate::vault::raft`] and [`crate::vault::token`], the files in [`store`].
//!
//! - **Secondary** (only the agent of the cluster's active node acts): every `interval`, pull
//!   `GET sys/storage/raft/snapshot` from the term's primary into the [`store::Store`] (temp
//!   file, fsync, rename, metadata, newest K kept), then restore it at once (`continuous`) or
//!   keep it (`on-promotion`). `applied_term` = the term once a pull from its primary worked.
//! - **Promotion** (desired role primary for a term above `applied_term`): stop pulling; with
//!   `final_snapshot_from` pull one last snapshot from there and restore it; else with
//!   `promotion: complete` restore the newest snapshot held that is newer than the node's data;
//!   `fast` keeps what the node has, unless the node never restored a snapshot (an
//!   `on-promotion` standby): then it holds none of the primary's data, and the newest held
//!   snapshot is restored whatever the mode (a refused one falls back to the next older). Then
//!   the node must be active and pass a canary write and read in the DR token's cubbyhole; only
//!   then `applied_term` = term. A node that already was primary never restores over its own
//!   (live) data.
//! - **Returning ex-primary** (desired role secondary in a term after the one it was primary
//!   in): once no failover is in progress, save its own node's snapshot to the quarantine
//!   directory (nothing is destroyed silently), then restore the primary's snapshot and follow.
//!
//! No snapshot is restored unless its DR term is allowed (never older than the seen term on a
//! secondary), its size and SHA-256 match and the archive parses with the recorded index. While
//! a restore runs the agent reports `restoring`, until the node answers again with the restored
//! data (applied index at least the snapshot's, a token request served).

pub mod archive;
pub mod plan;
pub mod store;

use crate::config::SnapshotConfig;
use crate::metrics::Metrics;
use crate::replication::Replicator;
use crate::restart::{self, RestartMode, Restarter};
use crate::state::Shared;
use crate::vault::{POLL, VaultClient, raft, token};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use plan::{Acknowledge, Action, AfterPull, NodeFacts, PlanState, PromotionData, RestoreWhy};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{NodeRecord, SnapshotMeta, Store, StoreError};
use url::Url;
use vault_dr_common::{DesiredState, NodeState, ReplicationMode, ReplicationStatus, Role, Secret};

pub use crate::vault::raft::{RESTORE_TIMEOUT, restore_snapshot};
pub use crate::vault::token::CANARY_PATH;

/// Longest pause between two looks at the desired state.
pub const TICK: Duration = Duration::from_millis(500);
/// Timeout of one snapshot transfer (pull or restore upload).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a promotion waits for the node to be active and to take the canary.
pub const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the agent renews the (periodic) DR token on its node.
pub const RENEW_EVERY: Duration = Duration::from_secs(3600);
/// How soon a renewal the node could not serve (5xx) is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How long renewals may fail with 5xx before it is a warning.
const RENEW_PATIENCE: Duration = Duration::from_secs(600);

/// What went wrong in one step of the backend.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The snapshot store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Vault request failed: no answer, an unexpected status, a restore not served in time,
    /// a failed canary.
    #[error(transparent)]
    Vault(#[from] crate::Error),
    /// The local node is not active.
    #[error("the local node is {0}, not active")]
    NotActive(NodeState),
    /// A blocking file task died.
    #[error("file task failed")]
    Task,
}

impl ShipError {
    /// Bounded kind for `last_error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Store(e) => e.kind(),
            Self::Vault(e) => e.kind(),
            Self::NotActive(_) => "not_active",
            Self::Task => "internal",
        }
    }
}

/// The replication status the backend publishes; the probe loop reads it. Lag is refreshed
/// by its own loop (also while a pull or restore keeps the main loop busy).
#[derive(Debug, Default)]
pub struct SnapshotStatus(Mutex<Published>);

#[derive(Debug, Default)]
struct Published {
    status: ReplicationStatus,
    newest_taken_at: Option<DateTime<Utc>>,
    primary_index: Option<u64>,
    /// When `primary_index` was read from the primary.
    primary_index_at: Option<DateTime<Utc>>,
    secondary: bool,
}

/// How long a read of the primary's applied index counts for the lag. A secondary that cannot
/// reach the primary any more (a partition, or the primary died) must not go on saying it is
/// caught up: past this its lag in entries is unknown and its lag in seconds is the age of
/// the newest snapshot it holds, growing, as the design defines it.
pub const PRIMARY_INDEX_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

impl Published {
    fn refresh_lag(&mut self) {
        let s = &mut self.status;
        let fresh = self.primary_index_at.is_some_and(|at| {
            (Utc::now() - at).to_std().unwrap_or_default() <= PRIMARY_INDEX_FRESH
        });
        let primary_index = self.primary_index.filter(|_| fresh);
        s.lag_entries = match (s.replicated_index, primary_index) {
            (Some(held), Some(p)) if self.secondary => Some(p.saturating_sub(held)),
            _ => None,
        };
        // Caught up (the primary applied nothing newer): no data is missing, however old the
        // snapshot is.
        s.lag_seconds = match s.lag_entries {
            Some(0) => Some(0.0),
            _ => self
                .newest_taken_at
                .filter(|_| self.secondary)
                .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0),
        };
    }
}

impl SnapshotStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, s: ReplicationStatus, newest_taken_at: Option<DateTime<Utc>>, secondary: bool) {
        let mut p = self.lock();
        p.status = s;
        p.newest_taken_at = newest_taken_at;
        p.secondary = secondary;
        if !secondary {
            p.primary_index = None;
        }
        p.refresh_lag();
    }

    fn primary_index(&self) -> Option<u64> {
        self.lock().primary_index
    }

    fn set_primary_index(&self, index: u64) {
        let mut p = self.lock();
        p.primary_index = Some(index);
        p.primary_index_at = Some(Utc::now());
        p.refresh_lag();
    }

    /// The latest published status, lag as of now.
    pub fn get(&self) -> ReplicationStatus {
        let mut p = self.lock();
        p.refresh_lag();
        p.status.clone()
    }
}

#[async_trait]
impl Replicator for SnapshotStatus {
    async fn status(&self) -> ReplicationStatus {
        self.get()
    }
}

/// Clears the `restoring` flag when a restore ends, also on an early error.
struct RestoringFlag<'a>(&'a Shared);

impl<'a> RestoringFlag<'a> {
    fn raise(shared: &'a Shared) -> Self {
        shared.set_restoring(true);
        Self(shared)
    }
}

impl Drop for RestoringFlag<'_> {
    fn drop(&mut self) {
        self.0.set_restoring(false);
    }
}

/// What a restore needs, cloned into the background task that runs one beside the pulls.
#[derive(Debug, Clone)]
struct Restorer {
    vault: Arc<VaultClient>,
    http: reqwest::Client,
    token: Secret,
    store: Store,
    shared: Arc<Shared>,
    metrics: Metrics,
}

impl Restorer {
    /// Verifies `m` (term at least `min_term`) and restores it into the local node; reports
    /// `restoring` until the node serves the restored data. Returns the time that took.
    async fn restore(&self, m: &SnapshotMeta, min_term: u64) -> Result<Duration, ShipError> {
        let started = Instant::now();
        let result = self.restore_inner(m, min_term).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .snapshot_restores
            .with_label_values(&[label])
            .inc();
        self.metrics
            .snapshot_restoring_seconds
            .inc_by(started.elapsed().as_secs_f64());
        result
    }

    async fn restore_inner(&self, m: &SnapshotMeta, min_term: u64) -> Result<Duration, ShipError> {
        let store = self.store.clone();
        let meta = m.clone();
        let path = tokio::task::spawn_blocking(move || store.verify(&meta, min_term))
            .await
            .map_err(|_| ShipError::Task)??;
        let body = tokio::fs::read(&path).await.map_err(|source| {
            ShipError::Store(StoreError::Io {
                what: format!("read {}", path.display()),
                source,
            })
        })?;
        let _flag = RestoringFlag::raise(&self.shared);
        let took =
            raft::restore_snapshot(&self.http, self.vault.addr(), &self.token, body, m.index)
                .await?;
        self.metrics
            .snapshot_restore_duration
            .observe(took.as_secs_f64());
        Ok(took)
    }
}

/// A restore running beside the pulls.
#[derive(Debug)]
struct Background {
    meta: SnapshotMeta,
    task: tokio::task::JoinHandle<Result<Duration, ShipError>>,
}

/// The snapshot backend of one agent.
#[derive(Debug)]
pub struct Shipper {
    config: SnapshotConfig,
    node: String,
    vault: Arc<VaultClient>,
    http: reqwest::Client,
    token: Secret,
    store: Store,
    record: NodeRecord,
    shared: Arc<Shared>,
    metrics: Metrics,
    status: Arc<SnapshotStatus>,
    restorer: Restorer,
    background: Option<Background>,
    warned_interval: bool,
    last_pull: Option<Instant>,
    last_success_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    /// When the DR token is renewed next (`None`: at the next tick).
    next_renew: Option<Instant>,
    /// Since when renewing the DR token fails because the node does not serve.
    renew_failing_since: Option<Instant>,
    restarter: Restarter,
    /// Since when the node has been found sealed without a break.
    sealed_since: Option<Instant>,
}

impl Shipper {
    /// A backend for the node behind `vault`, authenticating with `token` (the DR token) both
    /// locally and at the primary. `http` is used for transfers (long timeout).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: SnapshotConfig,
        node: &str,
        vault: Arc<VaultClient>,
        http: reqwest::Client,
        token: Secret,
        shared: Arc<Shared>,
        metrics: Metrics,
        status: Arc<SnapshotStatus>,
    ) -> Result<Self, StoreError> {
        let store = Store::open(&config.dir, config.keep)?;
        let record = store.node_record();
        let restorer = Restorer {
            vault: vault.clone(),
            http: http.clone(),
            token: token.clone(),
            store: store.clone(),
            shared: shared.clone(),
            metrics: metrics.clone(),
        };
        let me = Self {
            restorer,
            background: None,
            warned_interval: false,
            config,
            node: node.to_owned(),
            vault,
            http,
            token,
            store,
            record,
            shared,
            metrics,
            status,
            last_pull: None,
            last_success_at: None,
            last_error: None,
            next_renew: None,
            renew_failing_since: None,
            restarter: Restarter::new(RestartMode::Off, None, Vec::new()),
            sealed_since: None,
        };
        me.publish();
        Ok(me)
    }

    /// Restarts a superseded primary's sealed node with `restarter` (the default: never).
    pub fn with_restarter(mut self, restarter: Restarter) -> Self {
        self.restarter = restarter;
        self
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let tick = TICK.min(self.config.interval);
        let lag = watch_lag(
            self.shared.clone(),
            self.http.clone(),
            self.status.clone(),
            tick,
        );
        let main = async {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changes = self.shared.desired_changes();
            loop {
                // A new desired state (a promotion above all) is acted on at once.
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = changes.changed() => {}
                }
                self.tick().await;
                self.publish();
            }
        };
        tokio::join!(main, lag);
    }

    /// One look at the desired state and the node: gathers the facts, plans, and carries out
    /// the action planned.
    pub async fn tick(&mut self) {
        if self.next_renew.is_none_or(|t| Instant::now() >= t) {
            self.renew_token().await;
        }
        self.reap(false).await;
        let desired = self.shared.desired();
        if let Some(d) = &desired {
            self.note_primary(d);
        }
        if let Some(d) = desired.as_ref().filter(|d| self.needs_quiet_node(d))
            && let Some(b) = &self.background
        {
            // OpenBao cannot abort a restore: a promotion or a rejoin plans with what the
            // restore in flight leaves.
            tracing::info!(
                index = b.meta.index,
                term = d.term,
                role = %d.role,
                "waiting for the restore in flight before acting on the new term"
            );
            self.reap(true).await;
        }
        let action = self.next_action(desired.as_ref()).await;
        let Some(d) = desired else {
            tracing::trace!(%action);
            return;
        };
        if let Err(e) = self.execute(&d, action).await {
            self.failed(&d, &e);
        }
        let next = plan::background_restore(&self.plan_state(), Some(&d), &self.store.list());
        if let Some(m) = next {
            if d.primary_suspect {
                tracing::info!(
                    index = m.index,
                    term = m.term,
                    primary = %d.primary,
                    "the leader suspects the primary: restoring the newest snapshot held ahead of a promotion"
                );
                self.metrics.snapshot_restores_ahead.inc();
            }
            self.start_background(m, d.term);
        }
    }

    fn failed(&mut self, d: &DesiredState, e: &ShipError) {
        if self.last_error.as_deref() != Some(e.kind()) {
            tracing::warn!(kind = e.kind(), error = %e, term = d.term, role = %d.role, "snapshot replication step failed");
        }
        self.last_error = Some(e.kind().to_owned());
    }

    /// Whether `d` asks for something that must not run beside a restore: a promotion, or a
    /// returning ex-primary's rejoin.
    fn needs_quiet_node(&self, d: &DesiredState) -> bool {
        match d.role {
            Role::Primary => d.term > self.shared.applied_term(),
            Role::Secondary => self.record.primary_term.is_some_and(|t| t < d.term),
        }
    }

    /// Starts restoring `m` beside the pulls.
    fn start_background(&mut self, m: SnapshotMeta, min_term: u64) {
        tracing::debug!(
            index = m.index,
            term = m.term,
            "restoring the newest snapshot held, beside the pulls"
        );
        let restorer = self.restorer.clone();
        let meta = m.clone();
        let task = tokio::spawn(async move { restorer.restore(&meta, min_term).await });
        self.background = Some(Background { meta: m, task });
    }

    /// Collects the background restore when it has ended (or, with `wait`, once it ends).
    async fn reap(&mut self, wait: bool) {
        let ended = self
            .background
            .as_ref()
            .is_some_and(|b| wait || b.task.is_finished());
        if !ended {
            return;
        }
        let Some(b) = self.background.take() else {
            return;
        };
        let outcome = match b.task.await {
            Ok(r) => r,
            Err(_) => Err(ShipError::Task),
        };
        let result = match outcome {
            Ok(took) => self.restored(&b.meta, took),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let d = self.shared.desired();
                if let Some(d) = d {
                    self.failed(&d, &e);
                }
            }
        }
        self.publish();
    }

    /// Gathers the facts and asks the plan; probes the node only when the plan asks for its
    /// state (a probe of a node that is down takes seconds).
    async fn next_action(&mut self, desired: Option<&DesiredState>) -> Action {
        let snapshots = self.store.list();
        let mut node = NodeFacts::default();
        loop {
            let action = plan::plan(&self.plan_state(), desired, &snapshots, &node);
            if action == Action::ProbeNode && node.state.is_none() {
                let state = self.vault.health().await.health.state;
                self.note_node_state(state);
                node.state = Some(state);
                continue;
            }
            return action;
        }
    }

    /// Keeps since when the node is sealed.
    fn note_node_state(&mut self, state: NodeState) {
        if state != NodeState::Sealed {
            if self.sealed_since.take().is_some() {
                self.restarter.unsealed();
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|k| k.starts_with("sealed_"))
                {
                    self.last_error = None;
                }
            }
        } else if self.sealed_since.is_none() {
            self.sealed_since = Some(Instant::now());
        }
    }

    /// Records that this node's cluster is the primary of `d.term` (the fact that later makes a
    /// sealed node of it a superseded primary's).
    fn note_primary(&mut self, d: &DesiredState) {
        if d.role != Role::Primary || self.record.was_primary.is_some_and(|t| t >= d.term) {
            return;
        }
        self.record.was_primary = Some(d.term);
        if let Err(e) = self.save_record() {
            tracing::warn!(error = %e, term = d.term, "could not record that this cluster is the primary");
        }
    }

    /// The node follows `term`: it is no superseded primary any more.
    fn followed(&mut self, term: u64) -> Result<(), ShipError> {
        if self.record.was_primary.is_some_and(|t| t < term) {
            self.record.was_primary = None;
            self.save_record()?;
        }
        Ok(())
    }

    /// Restarts the sealed server of a superseded primary (when the mode, its seal and the
    /// backoff allow), logging before the signal; otherwise reports why not, once per change.
    async fn restart_sealed(&mut self, action: &Action) {
        let shamir = self.vault.seal_type().await.as_deref() == Some("shamir");
        let outcome = match self.restarter.due(shamir) {
            Ok(pid) => {
                tracing::warn!(pid, mode = ?self.restarter.mode(), "{action}");
                let outcome = restart::stop(pid).await;
                if let restart::Outcome::Restarted { pid, killed } = outcome {
                    self.metrics.server_restarts.inc();
                    self.sealed_since = None;
                    tracing::info!(
                        pid,
                        killed,
                        "the sealed server exited; its supervisor starts it again and its seal unseals it"
                    );
                }
                outcome
            }
            Err(why) => why,
        };
        let kind = outcome.kind();
        if kind.is_some() && self.last_error.as_deref() != kind {
            let why = match outcome {
                restart::Outcome::Off => {
                    "--vault-restart is off: restart the server by hand (README \"A sealed old primary\")"
                }
                restart::Outcome::Shamir => {
                    "its seal is Shamir: a restart leaves it sealed; unseal it with the primary's unseal keys"
                }
                _ => {
                    "no server process could be stopped (pid file, process name, permission to signal it)"
                }
            };
            tracing::warn!(?outcome, "a superseded primary's node stays sealed: {why}");
        }
        if let Some(kind) = kind {
            self.last_error = Some(kind.to_owned());
        }
    }

    /// Carries out `action`, planned for `d`; the action's sentence is logged (at debug for
    /// the routine ones: idle ticks, pulls).
    async fn execute(&mut self, d: &DesiredState, action: Action) -> Result<(), ShipError> {
        match action {
            Action::Idle { .. } | Action::ProbeNode => {
                tracing::trace!(%action);
                Ok(())
            }
            Action::SkipPull { .. } => {
                tracing::debug!(%action);
                // Nothing new on the primary since the newest snapshot held (and, when
                // continuous, restored): no pull, no restore that would block the node again.
                self.last_pull = Some(Instant::now());
                self.last_error = None;
                Ok(())
            }
            Action::Follow {
                ref from,
                term,
                acknowledge,
            } => {
                tracing::debug!(%action);
                self.follow(d, from, term, acknowledge).await
            }
            Action::Rejoin { ref from, term, .. } => {
                tracing::info!(%action);
                self.rejoin(d, from, term).await
            }
            Action::Promote { term, ref data } => {
                tracing::info!(%action);
                self.promote(d, term, data).await
            }
            Action::RestartSealed { .. } => {
                self.restart_sealed(&action).await;
                Ok(())
            }
        }
    }

    /// The facts the plan needs from this agent, as of now.
    fn plan_state(&self) -> PlanState {
        PlanState {
            applied_term: self.shared.applied_term(),
            restored: self.record.restored.clone(),
            primary_term: self.record.primary_term,
            restore: self.config.restore,
            interval: self.config.interval,
            since_last_pull: self.last_pull.map(|t| t.elapsed()),
            primary_index: self.status.primary_index(),
            restoring: self.background.as_ref().map(|b| b.meta.clone()),
            was_primary: self.record.was_primary,
            sealed_for: self.sealed_since.map(|t| t.elapsed()),
        }
    }

    /// Secondary role: pull from the term's primary, acknowledge the term as planned, then
    /// restore or keep the snapshot per [`plan::after_pull`].
    async fn follow(
        &mut self,
        d: &DesiredState,
        from: &Url,
        term: u64,
        acknowledge: Acknowledge,
    ) -> Result<(), ShipError> {
        self.last_pull = Some(Instant::now());
        let pulled = self.pull(from, term).await?;
        if acknowledge == Acknowledge::AfterPull {
            // Following = pulling from this term's primary. Say so before a restore blocks
            // this node for seconds: the coordinator's repoint step waits for it.
            tracing::info!(term, primary = %d.primary, "following the primary of this term");
            self.publish();
            self.shared.set_applied_term(term);
        }
        match plan::after_pull(self.config.restore, &pulled, self.record.restored.as_ref()) {
            AfterPull::Keep(_) => {}
            AfterPull::Restore {
                quarantine: Some(_),
            } => {
                // Data this agent did not put there (a fresh node's own) is saved before it
                // is replaced, and this first restore is waited for.
                self.quarantine().await?;
                self.restore(&pulled, term).await?;
            }
            // Restored beside the pulls: now, or when the restore in flight ends
            // (`plan::background_restore` takes the newest held then).
            AfterPull::Restore { quarantine: None } => {
                if self.background.is_none() {
                    self.start_background(pulled, term);
                }
            }
        }
        self.followed(term)?;
        self.publish();
        self.shared.set_applied_term(term);
        self.last_error = None;
        Ok(())
    }

    /// Returning ex-primary: pull, quarantine the node's diverged data, restore, forget the
    /// primary record; it applies the term only once its data is quarantined and replaced.
    async fn rejoin(&mut self, d: &DesiredState, from: &Url, term: u64) -> Result<(), ShipError> {
        self.last_pull = Some(Instant::now());
        let pulled = self.pull(from, term).await?;
        self.quarantine().await?;
        self.restore(&pulled, term).await?;
        tracing::info!(
            term,
            quarantined = ?self.record.quarantined,
            "ex-primary now follows the primary of this term"
        );
        self.record.primary_term = None;
        self.save_record()?;
        self.followed(term)?;
        if self.shared.applied_term() < term {
            tracing::info!(term, primary = %d.primary, "following the primary of this term");
        }
        self.publish();
        self.shared.set_applied_term(term);
        self.last_error = None;
        Ok(())
    }

    /// Primary role for a new term: get the data as planned, check, canary, apply.
    async fn promote(
        &mut self,
        d: &DesiredState,
        term: u64,
        data: &PromotionData,
    ) -> Result<(), ShipError> {
        let started = Instant::now();
        self.wait_active(ACTIVE_TIMEOUT).await?;
        let restored = match data {
            PromotionData::Live { .. } | PromotionData::KeepRestored { .. } => None,
            PromotionData::FinalSnapshot { from } => {
                let m = self.pull(from, term).await?;
                self.restore(&m, term).await?;
                Some(m.index)
            }
            PromotionData::RestoreNewest {
                candidates,
                min_term,
                why,
            } => {
                if *why == RestoreWhy::NeverRestored {
                    tracing::warn!(
                        term,
                        "fast promotion of a node that never restored a snapshot: restoring the newest held first"
                    );
                }
                self.restore_first(candidates, *min_term).await?
            }
        };
        self.wait_active(ACTIVE_TIMEOUT).await?;
        token::canary(
            &self.http,
            self.vault.addr(),
            &self.token,
            term,
            &self.node,
            ACTIVE_TIMEOUT,
        )
        .await?;
        self.record.primary_term = Some(term);
        self.save_record()?;
        self.publish();
        self.shared.set_applied_term(term);
        self.last_error = None;
        tracing::info!(
            term,
            promotion = %d.promotion,
            final_snapshot = d.final_snapshot_from.is_some(),
            restored_index = ?restored,
            took_s = started.elapsed().as_secs_f64(),
            "promoted: node active, canary written and read"
        );
        Ok(())
    }

    /// Restores the first of `candidates` (newest first) that passes verification, skipping
    /// any that fails it. Its index, or `None` when none was.
    async fn restore_first(
        &mut self,
        candidates: &[SnapshotMeta],
        min_term: u64,
    ) -> Result<Option<u64>, ShipError> {
        for m in candidates {
            // A restore that worked but whose record could not be saved (a store error) still
            // counts: nothing older is restored over it.
            if self
                .record
                .restored
                .as_ref()
                .is_some_and(|r| !m.newer_than(r))
            {
                break;
            }
            match self.restore(m, min_term).await {
                Ok(_) => return Ok(Some(m.index)),
                Err(ShipError::Store(e)) => {
                    tracing::warn!(file = %m.file, error = %e, "snapshot refused, trying an older one");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Pulls one snapshot from `from` into the store, in DR term `term`.
    async fn pull(&mut self, from: &Url, term: u64) -> Result<SnapshotMeta, ShipError> {
        let result = async {
            let mut incoming = self.store.begin()?;
            let mut download =
                raft::download_snapshot(&self.http, from, &self.token, "pull snapshot").await?;
            while let Some(chunk) = download.chunk().await? {
                incoming.write(&chunk)?;
            }
            let store = self.store.clone();
            let source = from.to_string();
            let meta = tokio::task::spawn_blocking(move || {
                store.commit(incoming, term, &source, Utc::now())
            })
            .await
            .map_err(|_| ShipError::Task)??;
            Ok::<_, ShipError>(meta)
        }
        .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .snapshot_pulls
            .with_label_values(&[label])
            .inc();
        if let Ok(m) = &result {
            self.last_success_at = Some(m.taken_at);
            tracing::debug!(index = m.index, size = m.size, term, "snapshot pulled");
        }
        result
    }

    /// Saves the local node's own data to `<quarantine-dir>/<term>-<time>.snap` (+ metadata).
    async fn quarantine(&mut self) -> Result<(), ShipError> {
        let dir = self.config.quarantine_dir.clone();
        let mut incoming = store::begin_in(&dir)?;
        let local = self.vault.addr().clone();
        let mut download =
            raft::download_snapshot(&self.http, &local, &self.token, "quarantine snapshot").await?;
        while let Some(chunk) = download.chunk().await? {
            incoming.write(&chunk)?;
        }
        // The DR term the data was the primary's in, when this agent knows it; a fresh node's
        // own data belongs to no term.
        let primary_of = self.record.primary_term.or(self.record.was_primary);
        let term = primary_of.unwrap_or(0);
        let now = Utc::now();
        let at = now.format("%Y%m%dT%H%M%S%.3fZ");
        let name = match primary_of {
            Some(t) => format!("primary-term-{t}-{at}"),
            None => format!("own-data-{at}"),
        };
        let source = local.to_string();
        let meta = tokio::task::spawn_blocking(move || {
            store::commit_in(&dir, incoming, &name, term, &source, now).map(|m| dir.join(m.file))
        })
        .await
        .map_err(|_| ShipError::Task)??;
        tracing::warn!(path = %meta.display(), primary_of_term = ?primary_of, "saved this node's own data to quarantine before replacing it");
        self.metrics.snapshot_quarantines.inc();
        self.record.quarantined = Some(meta);
        self.save_record()?;
        Ok(())
    }

    /// Restores `m` (term at least `min_term`) into the local node now, waiting for it.
    async fn restore(&mut self, m: &SnapshotMeta, min_term: u64) -> Result<Duration, ShipError> {
        let took = self.restorer.restore(m, min_term).await?;
        self.restored(m, took)?;
        Ok(took)
    }

    /// Records a finished restore of `m`; says once when a restore takes longer than the pull
    /// interval of a continuous standby.
    fn restored(&mut self, m: &SnapshotMeta, took: Duration) -> Result<(), ShipError> {
        self.record.restored = Some(m.clone());
        self.save_record()?;
        tracing::info!(
            index = m.index,
            term = m.term,
            size = m.size,
            took_s = took.as_secs_f64(),
            "snapshot restored; the node serves it"
        );
        if !self.warned_interval
            && self.config.restore == crate::config::RestoreMode::Continuous
            && took > self.config.interval
        {
            self.warned_interval = true;
            tracing::warn!(
                interval_s = self.config.interval.as_secs_f64(),
                restore_s = took.as_secs_f64(),
                "the snapshot interval is shorter than a restore here: this continuous standby \
                 restores all the time while pulls keep the newest snapshot; promotion = complete \
                 restores that one (loss within one interval), fast serves the one restored last \
                 (within an interval and a restore); an interval above the restore time leaves \
                 the node serving between restores (README)"
            );
        }
        Ok(())
    }

    /// Waits until the local node answers `sys/health` as active.
    async fn wait_active(&self, timeout: Duration) -> Result<(), ShipError> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.vault.health().await.health.state;
            if state == NodeState::Active {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ShipError::NotActive(state));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Renews the DR token on the local node, so that a periodic token never expires while
    /// the agent runs. Retried next tick when the node is not there.
    async fn renew_token(&mut self) {
        match token::renew_self(&self.http, self.vault.addr(), &self.token).await {
            Ok(()) => {
                self.next_renew = Some(Instant::now() + RENEW_EVERY);
                self.renew_failing_since = None;
            }
            // A node that does not serve yet (starting, sealed, a standby without an active
            // node: 5xx) is asked again in a minute; only a failure that lasts is worth a
            // warning.
            Err(crate::Error::VaultStatus { status, .. }) if status >= 500 => {
                let since = *self.renew_failing_since.get_or_insert_with(Instant::now);
                self.next_renew = Some(Instant::now() + RENEW_RETRY);
                if since.elapsed() >= RENEW_PATIENCE {
                    tracing::warn!(
                        status,
                        failing_for_s = since.elapsed().as_secs(),
                        "the DR token was not renewed: the node does not serve"
                    );
                } else {
                    tracing::debug!(
                        status,
                        "the DR token was not renewed yet: the node does not serve; again in a minute"
                    );
                }
            }
            // Answered, but no (not renewable, not allowed): say so once an hour, do not
            // hammer the node.
            Err(crate::Error::VaultStatus { status, .. }) => {
                tracing::warn!(status, "the DR token was not renewed");
                self.next_renew = Some(Instant::now() + RENEW_EVERY);
            }
            Err(_) => {}
        }
    }

    fn save_record(&self) -> Result<(), ShipError> {
        self.store.save_node_record(&self.record)?;
        Ok(())
    }

    /// Publishes the replication status for the probe loop and the metrics.
    fn publish(&self) {
        let newest = self.store.newest();
        let secondary = self
            .shared
            .desired()
            .is_some_and(|d| d.role == Role::Secondary);
        if let Some(m) = &newest {
            self.metrics
                .snapshot_index
                .set(i64::try_from(m.index).unwrap_or(i64::MAX));
        }
        let status = ReplicationStatus {
            mode: ReplicationMode::Snapshot,
            // Held snapshots count: a complete promotion restores them.
            seeded: self.record.restored.is_some() || newest.is_some(),
            replicated_index: newest.as_ref().map(|m| m.index),
            last_success_at: self.last_success_at,
            last_error: self.last_error.clone(),
            restored_index: self.record.restored.as_ref().map(|m| m.index),
            restored_taken_at: self.record.restored.as_ref().map(|m| m.taken_at),
            promotion_restores: newest.as_ref().is_some_and(|n| {
                self.background
                    .as_ref()
                    .map(|b| &b.meta)
                    .or(self.record.restored.as_ref())
                    .is_none_or(|r| n.newer_than(r))
            }),
            quarantined: self
                .record
                .quarantined
                .as_ref()
                .map(|p| p.display().to_string()),
            ..ReplicationStatus::default()
        };
        self.status
            .set(status, newest.as_ref().map(|m| m.taken_at), secondary);
    }
}

/// Every `tick`, on a secondary, reads the primary's raft applied index (`sys/leader`, no
/// token) into the published status, so that lag stays current while a pull or restore runs.
async fn watch_lag(
    shared: Arc<Shared>,
    http: reqwest::Client,
    status: Arc<SnapshotStatus>,
    tick: Duration,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(primary) = shared
            .desired()
            .filter(|d| d.role == Role::Secondary)
            .and_then(|d| d.primary_api_addr)
        else {
            continue;
        };
        if let Some(i) = raft::applied_index(&http, &primary).await {
            status.set_primary_index(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(index: u64, age_s: i64) -> (ReplicationStatus, Option<DateTime<Utc>>) {
        (
            ReplicationStatus {
                mode: ReplicationMode::Snapshot,
                replicated_index: Some(index),
                ..ReplicationStatus::default()
            },
            Some(Utc::now() - chrono::Duration::seconds(age_s)),
        )
    }

    #[test]
    fn lag_is_the_primary_index_minus_the_newest_held_and_its_age() {
        let s = SnapshotStatus::default();
        let (st, at) = held(100, 4);
        s.set(st, at, true);
        assert_eq!(s.get().lag_entries, None, "no primary index read yet");
        s.set_primary_index(160);
        let r = s.get();
        assert_eq!(r.lag_entries, Some(60));
        let age = r.lag_seconds.unwrap();
        assert!((4.0..5.0).contains(&age), "{age}");
        // A newer snapshot held: the lag falls.
        let (st, at) = held(158, 0);
        s.set(st, at, true);
        assert_eq!(s.get().lag_entries, Some(2));
        // A primary index below the snapshot's (a lagging read) is no negative lag.
        s.set_primary_index(150);
        assert_eq!(s.get().lag_entries, Some(0));
        assert_eq!(
            s.get().lag_seconds,
            Some(0.0),
            "caught up: nothing is missing"
        );
    }

    #[test]
    fn a_primary_index_not_read_again_stops_counting_as_caught_up() {
        let s = SnapshotStatus::default();
        let (st, at) = held(160, 30);
        s.set(st, at, true);
        s.set_primary_index(160);
        assert_eq!(s.get().lag_seconds, Some(0.0), "caught up as of the read");
        // The primary unreachable since: the read grows old.
        s.lock().primary_index_at =
            Some(Utc::now() - chrono::Duration::from_std(PRIMARY_INDEX_FRESH).unwrap() * 2);
        let r = s.get();
        assert_eq!(r.lag_entries, None, "no fresh primary index");
        let age = r.lag_seconds.unwrap();
        assert!(
            (30.0..31.0).contains(&age),
            "the newest snapshot's age: {age}"
        );
    }

    #[test]
    fn a_primary_reports_no_lag() {
        let s = SnapshotStatus::default();
        s.set_primary_index(160);
        let (st, at) = held(100, 4);
        s.set(st, at, false);
        let r = s.get();
        assert_eq!((r.lag_entries, r.lag_seconds), (None, None));
    }

    #[test]
    fn errors_have_bounded_kinds() {
        assert_eq!(ShipError::NotActive(NodeState::Sealed).kind(), "not_active");
        assert_eq!(
            ShipError::Store(StoreError::Checksum("f".into())).kind(),
            "checksum"
        );
        assert_eq!(
            ShipError::Vault(crate::Error::VaultRestoreTimeout {
                index: 1,
                after: RESTORE_TIMEOUT
            })
            .kind(),
            "restore_timeout"
        );
    }
}
