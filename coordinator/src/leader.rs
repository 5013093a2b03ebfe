//! The leader loop: hold the lease, and on every tick probe every cluster, build the view, run
//! the detector, record its decision as one sentence, and hand failovers to the executor.
//!
//! Only the leader probes, decides and acts. A replica that loses the lease stops at once: the
//! executor checks leadership before every side effect and every step is a topology CAS.

use crate::api::Service;
use crate::coordination::CoordinationError;
use crate::failover::executor::{ExecError, Executor};
use crate::failover::{degraded, detector};
use crate::model::degraded::DegradedClock;
use crate::model::topology::{Topology, Versioned};
use crate::model::{Decision, DecisionRecord, Phase};
use crate::vault::VaultClient;
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};
use vault_dr_common::telemetry::Repeats;

/// The leader's loops and their state.
#[derive(Debug)]
pub struct Leader {
    service: Service,
    executor: Executor,
    vault: VaultClient,
    phase: Mutex<Phase>,
    executing: Arc<AtomicBool>,
    /// Finishes the seals the Fenced step left pending (after the failover).
    fences: Arc<crate::failover::fence::FenceKeeper>,
    /// Whether a round of `fences` runs.
    fencing: Arc<AtomicBool>,
    /// When the group stamps were last read (`None`: at the next tick, e.g. a new leader).
    stamps_read: std::sync::Mutex<Option<Instant>>,
    /// Whether "the DR token may not read the stamp" was said.
    stamps_forbidden_said: AtomicBool,
    /// Since when the primary has been over the `[policy.degraded]` thresholds.
    degraded: Mutex<Option<DegradedClock>>,
    /// Whether an automatic switchover is being begun (the target quiesces first).
    switching: Arc<AtomicBool>,
}

impl Leader {
    /// Builds the loops (they start with [`Leader::run`]).
    pub fn new(service: Service, executor: Executor, vault: VaultClient) -> Arc<Self> {
        Arc::new(Self {
            service,
            fences: Arc::new(executor.fence_keeper()),
            fencing: Arc::new(AtomicBool::new(false)),
            executor,
            vault,
            phase: Mutex::new(Phase::Healthy),
            executing: Arc::new(AtomicBool::new(false)),
            stamps_read: std::sync::Mutex::new(None),
            stamps_forbidden_said: AtomicBool::new(false),
            degraded: Mutex::new(None),
            switching: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Runs the lease loop and the tick loop until `shutdown` turns true, then gives the lease up.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // The leader renews at least once a second; followers must notice an expired lease
        // quickly, so they try every FOLLOWER_POLL: a takeover takes at most the lease duration
        // plus FOLLOWER_POLL (plus one backend round trip), well inside lease + 1 s.
        let renew = self
            .service
            .config
            .coordination
            .renew_period()
            .min(Duration::from_secs(1));
        let mut lease_tick = tokio::time::interval(renew.min(FOLLOWER_POLL));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A tick that comes this soon after the leader's last renewal is skipped by the leader.
        let renew_skip = renew.saturating_sub(FOLLOWER_POLL / 2);
        let mut last_try: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.service.config.policy.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        let mut leader_since: Option<Instant> = None;
        let mut lease_errors = Repeats::default();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = lease_tick.tick() => {
                    if was_leader && last_try.is_some_and(|t| t.elapsed() < renew_skip) {
                        continue;
                    }
                    last_try = Some(Instant::now());
                    let m = &self.service.metrics;
                    let leader = match self.service.coordination.try_acquire_or_renew().await {
                        Ok(l) => {
                            if let Some(n) = lease_errors.clear() {
                                tracing::info!("lease reachable again after {n} failed attempts");
                            }
                            l
                        }
                        Err(e) => {
                            m.lease_errors.inc();
                            let text = e.to_string();
                            if let Some(repeated) = lease_errors.note(&text, Instant::now()) {
                                tracing::warn!(repeated, "lease renewal failed: {text}");
                            }
                            self.service.coordination.is_leader()
                        }
                    };
                    if leader && !was_leader {
                        tracing::info!(
                            id = %self.service.config.id,
                            "became leader; the agents' reports count as an observer after {:?}, once they had time to arrive",
                            self.service.config.policy.report_ttl
                        );
                        self.service.state.set_leading_since(Some(Utc::now()));
                        m.leader_transitions.inc();
                        leader_since = Some(Instant::now());
                        *self.phase.lock().await = Phase::Healthy;
                        // A new leader reads every cluster's group stamp before it acts.
                        *self.stamps_read.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        // Load the topology now rather than at the next tick, so /readyz (and
                        // the agents' reports) reach the new leader at once.
                        if let Err(e) = self.service.load_topology().await {
                            tracing::warn!("topology not loaded on taking the lease: {e}");
                        }
                    } else if !leader && was_leader {
                        tracing::warn!(id = %self.service.config.id, "lost leadership; acting no more");
                        self.service.state.set_leading_since(None);
                    }
                    // Count the time since the previous lease tick if we led then, also when
                    // leadership just ended.
                    if let Some(since) = leader_since.take() {
                        m.leader_seconds.add(since.elapsed().as_secs_f64());
                    }
                    if leader {
                        leader_since = Some(Instant::now());
                    }
                    was_leader = leader;
                    m.is_leader.set(i64::from(leader));
                }
                _ = tick.tick() => {
                    if self.service.coordination.is_leader()
                        && let Err(e) = self.tick().await
                    {
                        tracing::warn!("tick failed: {e}");
                    }
                }
                () = self.service.state.kicked() => {
                    if self.service.coordination.is_leader()
                        && let Err(e) = self.tick().await
                    {
                        tracing::warn!("tick failed: {e}");
                    }
                }
                () = self.service.state.evidence_changed() => {
                    // An observer's report changed: evaluate now, so the first tick of full
                    // agreement comes as soon as the evidence does, not up to a probe interval
                    // later. Only before that first tick: the confirming ticks after it stay a
                    // probe interval apart (the next regular tick is one interval from this
                    // one), so `confirm` still means `confirm` intervals of agreement.
                    if self.service.coordination.is_leader() && !self.confirming().await {
                        if let Err(e) = self.tick().await {
                            tracing::warn!("tick failed: {e}");
                        }
                        tick.reset();
                    }
                }
            }
        }
        if let Err(e) = self.service.coordination.release().await {
            tracing::warn!("could not release the lease: {e}");
        }
        self.service.metrics.is_leader.set(0);
    }

    /// Whether the detector counts confirming ticks (all three observers agreed on the last
    /// one) or a failover is under way.
    async fn confirming(&self) -> bool {
        match *self.phase.lock().await {
            Phase::Suspect { ticks, .. } => ticks >= 1,
            Phase::FailingOver { .. } => true,
            Phase::Healthy => false,
        }
    }

    /// One evaluation: probe (and every [`crate::group::CHECK_EVERY`] read the group stamps),
    /// view, judge the stamps, decide, record, act.
    pub async fn tick(self: &Arc<Self>) -> Result<(), CoordinationError> {
        let s = &self.service;
        let stamps_due = self
            .stamps_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= crate::group::CHECK_EVERY);
        let probes = futures::future::join_all(
            s.config
                .clusters
                .iter()
                .map(|c| self.vault.probe_cluster(c)),
        );
        let stamps = async {
            if !stamps_due {
                return None;
            }
            let read = s
                .config
                .clusters
                .iter()
                .map(|c| async { (c.name.clone(), self.vault.read_stamp(c).await) });
            Some(futures::future::join_all(read).await)
        };
        let (probes, stamps) = tokio::join!(probes, stamps);
        for (c, p) in s.config.clusters.iter().zip(probes) {
            if let Some(ms) = p.latency_ms {
                s.metrics
                    .probe_duration
                    .with_label_values(&[&c.name])
                    .observe(ms / 1000.0);
            }
            for state in vault_dr_common::NodeState::ALL {
                s.metrics
                    .cluster_state
                    .with_label_values(&[&c.name, state.as_str()])
                    .set(f64::from(u8::from(state == p.state)));
            }
            s.state.set_probe(&c.name, p);
        }
        let topology = s.load_topology().await?;
        s.metrics
            .term
            .set(i64::try_from(topology.value.term).unwrap_or(i64::MAX));
        for c in &s.config.clusters {
            let primary = topology.value.serving_primary() == c.name;
            s.metrics
                .cluster_primary
                .with_label_values(&[&c.name])
                .set(f64::from(u8::from(primary)));
        }
        if let Some(found) = stamps {
            *self.stamps_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.judge_group(&topology, &found).await?;
        }
        if s.state.refusal().is_refusing() {
            // Detection stops here too: nothing is decided, begun or resumed.
            return Ok(());
        }
        let now = Utc::now();
        let topology = self.end_pause_whose_time_ran_out(topology, now).await?;
        s.metrics
            .paused
            .set(i64::from(topology.value.pause_at(now).is_some()));
        let view = s.state.view(&s.config, &topology.value, now);
        for n in s.state.latest_reports() {
            s.metrics
                .report_age
                .with_label_values(&[&n.report.cluster, &n.node])
                .set(n.age_seconds(now));
            if let Some(lag) = n.report.replication.lag_entries {
                s.metrics
                    .cluster_lag_entries
                    .with_label_values(&[&n.report.cluster])
                    .set(lag as f64);
            }
            if let Some(lag) = n.report.replication.lag_seconds {
                s.metrics
                    .cluster_lag_seconds
                    .with_label_values(&[&n.report.cluster])
                    .set(lag);
            }
        }
        let (phase, decision) = {
            let mut phase = self.phase.lock().await;
            let (next, decision) = detector::step(&phase, &view, now, &s.config.policy);
            *phase = next.clone();
            (next, decision)
        };
        let decision = self.judge_degraded(decision, &view, now).await;
        let record = DecisionRecord::new(phase, decision.clone(), &view);
        tracing::info!("{}", record.sentence);
        s.metrics
            .decisions
            .with_label_values(&[decision_kind(&decision)])
            .inc();
        s.state.set_decision(record.clone());
        if let Err(e) = s.store.put_decision(&record).await {
            tracing::warn!("decision not recorded: {e}");
        }
        match decision {
            Decision::Failover {
                to, reason, table, ..
            } => {
                match self
                    .executor
                    .begin(&topology, &to, &reason, table, false)
                    .await
                {
                    Ok(rec) => {
                        s.metrics.failovers_started.inc();
                        s.metrics.failover_in_progress.set(1);
                        s.reload_topology().await;
                        tracing::info!(failover = %rec.id, "failover begun");
                        self.spawn_executor();
                    }
                    Err(ExecError::Conflict(e)) => tracing::warn!(
                        "another coordinator moved the topology first ({e}); doing nothing"
                    ),
                    Err(e) => tracing::warn!("failover not begun: {e}"),
                }
            }
            Decision::Resume { .. } => self.spawn_executor(),
            Decision::Switchover {
                to, reason, table, ..
            } => self.spawn_switchover(topology.clone(), to, reason, table),
            _ => {}
        }
        if !topology.value.fence_pending.is_empty() {
            self.spawn_fences();
        }
        Ok(())
    }

    /// The degraded-primary rule on this tick (see `failover::degraded`), asked only while the
    /// failure detector sees no failover to confirm or carry on: `decision` itself when the
    /// rule is off or the primary is not over, else the rule's decision.
    async fn judge_degraded(
        &self,
        decision: Decision,
        view: &crate::model::View,
        now: chrono::DateTime<Utc>,
    ) -> Decision {
        let policy = &self.service.config.policy;
        let mut clock = self.degraded.lock().await;
        let judged = match (&policy.degraded, &decision) {
            (Some(d), Decision::NoAction { .. } | Decision::Suspect { ticks: 0, .. }) => {
                let (next, judged) = degraded::judge(clock.as_ref(), view, now, policy, d);
                *clock = next;
                judged
            }
            // A failover being confirmed, blocked or carried out: the rule waits, its clock
            // kept (one tick on which every observer missed the primary, as a failing primary
            // gives now and then, must not restart it).
            (
                Some(_),
                Decision::Suspect { .. }
                | Decision::NoCandidate { .. }
                | Decision::CooldownBlocked { .. }
                | Decision::Paused { .. },
            ) => None,
            _ => {
                *clock = None;
                None
            }
        };
        let held = match &judged {
            Some(Decision::Degraded { held_seconds, .. }) => *held_seconds,
            Some(Decision::Switchover { .. }) => clock
                .as_ref()
                .map(|c| (now - c.since).num_milliseconds() as f64 / 1000.0)
                .unwrap_or_default(),
            _ => 0.0,
        };
        self.service.metrics.primary_degraded_seconds.set(held);
        judged.unwrap_or(decision)
    }

    /// Begins the degraded rule's switchover in the background (the target first finishes a
    /// restore in flight, which may take seconds: the lease loop must not wait for it), unless
    /// one is being begun.
    fn spawn_switchover(
        self: &Arc<Self>,
        current: Versioned<Topology>,
        to: String,
        reason: String,
        table: crate::model::CandidateTable,
    ) {
        if self.switching.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let begun = crate::api::begin_switchover(
                &this.service,
                &this.executor,
                &current,
                &to,
                &reason,
                table,
                true,
            )
            .await;
            match begun {
                Ok(_) => *this.degraded.lock().await = None,
                Err(ExecError::Conflict(e)) => tracing::warn!(
                    "automatic switchover to {to} not begun: the topology moved first ({e})"
                ),
                Err(e) => tracing::warn!("automatic switchover to {to} not begun: {e}"),
            }
            this.switching.store(false, Ordering::SeqCst);
        });
    }

    /// A pause whose time ran out ends here, once, by compare-and-swap (another leader may end
    /// it first): it moves to the topology's past pauses, and the log says so.
    async fn end_pause_whose_time_ran_out(
        &self,
        topology: Versioned<Topology>,
        now: chrono::DateTime<Utc>,
    ) -> Result<Versioned<Topology>, CoordinationError> {
        let s = &self.service;
        match &topology.value.pause {
            Some(p) if !p.holds_at(now) && s.coordination.is_leader() => {
                let mut next = topology.value.clone();
                next.end_pause(now, "its time ran out");
                match s
                    .coordination
                    .write_topology(&next, Some(&topology.version))
                    .await
                {
                    Ok(written) => {
                        tracing::info!(
                            "pause ended: its time ran out ({p}); automatic failover is on again"
                        );
                        Ok(written)
                    }
                    Err(CoordinationError::Conflict { .. }) => s.load_topology().await,
                    Err(e) => Err(e),
                }
            }
            _ => Ok(topology),
        }
    }

    /// Starts a round of the pending fences unless one runs or a failover is being carried
    /// out (the executor owns the record then).
    fn spawn_fences(self: &Arc<Self>) {
        if self.executing.load(Ordering::SeqCst) || self.fencing.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match this.fences.round().await {
                Ok(0) => this.service.reload_topology().await,
                Ok(_) => {}
                Err(e) => tracing::warn!("pending fences not carried on: {e}"),
            }
            this.fencing.store(false, Ordering::SeqCst);
        });
    }

    /// Acts on the group stamps read this tick (see `crate::group`): gives an anonymous
    /// topology its identity, adopts the identity an operator names, refuses or stops
    /// refusing, and stamps the serving primary when it lacks this term's stamp.
    async fn judge_group(
        &self,
        topology: &crate::model::topology::Versioned<crate::model::topology::Topology>,
        found: &[(String, crate::group::Found)],
    ) -> Result<(), CoordinationError> {
        use crate::group::{Judgement, adopt, judge};
        let s = &self.service;
        let forbidden: Vec<&str> = found
            .iter()
            .filter(|(_, f)| matches!(f, crate::group::Found::Unread(why) if why.ends_with("status 403")))
            .map(|(c, _)| c.as_str())
            .collect();
        if !forbidden.is_empty() && !self.stamps_forbidden_said.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "the DR token may not read the group stamp on {} (403): apply the current policies/vault-dr.hcl (cubbyhole/vault-dr/group); until then this coordinator cannot tell another group's clusters from its own",
                forbidden.join(", ")
            );
        }
        let mut next = None;
        if topology.value.group_id.is_none() {
            let mut t = topology.value.clone();
            t.group_id = Some(crate::model::topology::Topology::new_group_id());
            tracing::info!(group = ?t.group_id, "this coordinator group has no identity yet: giving it one");
            next = Some(t);
        } else if let Some(id) = s.config.adopt_group.as_deref()
            && let Some(t) = adopt(&topology.value, id, found)
        {
            tracing::warn!(group = id, term = t.term, primary = %t.primary, "adopting the group identity [coordination] adopt_group names, with a term above its stamps");
            next = Some(t);
        }
        if let Some(t) = next {
            s.coordination
                .write_topology(&t, Some(&topology.version))
                .await?;
            s.reload_topology().await;
            // Judged again with the new topology at the next tick.
            *self.stamps_read.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(());
        }
        match judge(&topology.value, found) {
            Judgement::Refuse(why) => {
                s.metrics.group_refusing.set(1);
                if s.state.refusal().set(Some(why.clone())) {
                    tracing::error!("refusing to act: {why}");
                }
            }
            Judgement::Act { stamp } => {
                s.metrics.group_refusing.set(0);
                if s.state.refusal().set(None) {
                    tracing::info!("acting again: no other group's stamp and no higher term found");
                }
                // `judge` acts only with an identity; without one nothing is stamped.
                let cluster = stamp.and_then(|name| s.config.cluster(&name));
                if let (Some(c), Some(group_id)) = (cluster, topology.value.group_id.clone()) {
                    let stamp = crate::group::GroupStamp {
                        group_id,
                        term: topology.value.term,
                        primary: c.name.clone(),
                        by: s.config.id.clone(),
                        written_at: Utc::now(),
                    };
                    match self.vault.write_stamp(c, &stamp).await {
                        Ok(sentence) => tracing::info!("{sentence}"),
                        Err(e) => tracing::warn!("group stamp not written: {e}"),
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the executor on the failover in progress unless it already runs.
    fn spawn_executor(self: &Arc<Self>) {
        if self.executing.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let result = this.executor.resume().await;
            match result {
                Ok(Some(rec)) => {
                    tracing::info!(failover = %rec.id, "failover finished: {} is primary in term {}", rec.to, rec.term);
                    *this.phase.lock().await = Phase::Healthy;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("failover paused: {e}"),
            }
            this.service.reload_topology().await;
            this.executing.store(false, Ordering::SeqCst);
        });
    }
}

fn decision_kind(d: &Decision) -> &'static str {
    match d {
        Decision::NoAction { .. } => "no_action",
        Decision::Suspect { .. } => "suspect",
        Decision::Failover { .. } => "failover",
        Decision::NoCandidate { .. } => "no_candidate",
        Decision::CooldownBlocked { .. } => "cooldown_blocked",
        Decision::Paused { .. } => "paused",
        Decision::Degraded { .. } => "degraded",
        Decision::Resume { .. } => "resume",
        Decision::Switchover { .. } => "switchover",
    }
}

/// How often a follower tries to take the lease (the leader renews at its own renew period,
/// at most a second apart).
pub const FOLLOWER_POLL: Duration = Duration::from_millis(500);
