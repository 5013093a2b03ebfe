//! `vault-dr drill`: the whole system on real servers on one machine. Starts a [`DrGroup`]
//! (four OpenBao clusters, an agent per node, three coordinators, the stable client address),
//! runs the client [`workload`], optionally [`stress`]es chosen secondaries, faults the
//! primary (`kill`, `stop` or `seal`), and follows the failover live. The result is a
//! [`DrillReport`]: the timeline (detected, decided with the candidate table, fenced, promoted,
//! switched, repointed, verified, first acknowledged client write), RTO (fault to the first
//! acknowledged write on the new primary) and RPO (acknowledged writes missing on the new
//! primary, each read back), beside the coordinator's own loss account of the failover, which
//! must agree with the client's RPO within one report interval.
//!
//! Everything started here belongs to the group or to a task aborted on drop, so returning,
//! failing, panicking or being cancelled (Ctrl-C drops the future) leaves no process behind.

pub mod command;
pub mod progress;
pub mod rto;
pub mod stress;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;
use vault_dr_common::{Role, Secret};

use crate::LabError;
use crate::group::{DrGroup, GroupSpec, PromotionMode, RaftLayout, RestoreMode};
use progress::Progress;
use vault_dr_coordinator::model::CandidateTable;
use vault_dr_coordinator::model::{AtRisk, FailoverRecord, FailoverStatus, LossAccount, Step};
use vault_dr_coordinator::model::{Decision, DecisionRecord, Phase};
use workload::{ClientStats, Workload};

/// OpenBao's restore of a small snapshot (measured facts: about 5.5 s): the part of a warm
/// standby's replication cycle after the pull interval.
const RESTORE_ESTIMATE: Duration = Duration::from_millis(5500);

/// Errors that stop a drill before it has a result.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Starting or driving the lab failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The client workload failed where it must not.
    #[error("client: {0}")]
    Client(String),
    /// The options make no sense.
    #[error("invalid drill options: {0}")]
    Invalid(String),
}

/// The fault injected into the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL the primary's `bao`.
    #[default]
    Kill,
    /// SIGSTOP it: the port stays open, nothing answers.
    Stop,
    /// Seal it through the API.
    Seal,
    /// No fault: a planned switchover to the leader's rank-1 candidate
    /// (`POST /v1/switchover`), the primary staying up. RTO is then the clients' write
    /// pause, and RPO must be 0.
    Switchover,
    /// The primary's API slowed by 800 ms on every request (its port, for every client: see
    /// `crate::degrade`), the server alive: the degraded-primary rule moves it by an automatic
    /// switchover. Needs root and iptables.
    Slow,
    /// One request in five to the primary's API refused (reset), the server alive; as `slow`.
    Errors,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Stop => "stop",
            Self::Seal => "seal",
            Self::Switchover => "switchover",
            Self::Slow => "slow",
            Self::Errors => "errors",
        }
    }

    /// The primary stays up and is moved by a planned switchover (asked for, or automatic):
    /// the RTO is the clients' write pause and nothing may be lost.
    pub fn planned(self) -> bool {
        matches!(self, Self::Switchover | Self::Slow | Self::Errors)
    }

    /// What the fault does to the primary's API port, if it degrades it.
    pub fn degradation(self) -> Option<crate::degrade::PortFault> {
        match self {
            Self::Slow => Some(crate::degrade::PortFault::Slow { ms: 800 }),
            Self::Errors => Some(crate::degrade::PortFault::Errors { every: 5 }),
            _ => None,
        }
    }
}

/// `[policy.degraded]` of a drill whose fault degrades the primary: a 20 s window, the
/// default thresholds.
fn drill_degraded_policy() -> vault_dr_coordinator::config::DegradedFile {
    vault_dr_coordinator::config::DegradedFile {
        window: Some(Duration::from_secs(20)),
        ..Default::default()
    }
}

/// How the client reaches the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrafficMode {
    /// Through the coordinators' local TCP forwarder (the stable address they switch).
    #[default]
    Local,
    /// No traffic switch: the client asks the coordinators for the primary before each round.
    Follow,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// How the client reaches the primary.
    pub traffic: TrafficMode,
    /// Clusters (the first, `p`, is the primary; the others `s1`, `s2`, ...).
    pub clusters: usize,
    /// Coordinator processes.
    pub coordinators: usize,
    /// Restore mode of the secondaries.
    pub restore: RestoreMode,
    /// Promotion mode.
    pub promotion: PromotionMode,
    /// The fault.
    pub fault: Fault,
    /// Secondaries to stress before the fault.
    pub stress: Vec<String>,
    /// How long stress-ng runs.
    pub stress_duration: Duration,
    /// How long the stress runs before the fault.
    pub stress_lead: Duration,
    /// Secondaries excluded from promotion.
    pub exclude: Vec<String>,
    /// MongoDB instead of the embedded store.
    pub mongodb_uri: Option<Secret>,
    /// Snapshot pull interval of the secondaries.
    pub snapshot_interval: Duration,
    /// Pause between client rounds (read + write).
    pub write_period: Duration,
    /// Healthy workload time before the fault (and before the stress).
    pub warmup: Duration,
    /// How long to wait for the failover and the first write after the fault.
    pub failover_timeout: Duration,
    /// Keep the run directory.
    pub keep: bool,
    /// The coordinators' policy: probe interval, confirming ticks, report TTL; and the
    /// agents' report interval (the drill's fast defaults; the README's are 1 s, 3, 5 s, 1 s).
    pub probe_interval: Duration,
    /// Consecutive agreeing ticks before the primary is down.
    pub confirm: u32,
    /// How long a report counts.
    pub report_ttl: Duration,
    /// The agents' probe and report interval.
    pub agent_interval: Duration,
    /// Raft replication (one raft: the primary's nodes voters, the secondaries' non-voters)
    /// instead of snapshot shipping; `None`: snapshots.
    pub raft: Option<RaftLayout>,
}

impl Default for DrillOptions {
    fn default() -> Self {
        Self {
            traffic: TrafficMode::Local,
            clusters: 4,
            coordinators: 3,
            restore: RestoreMode::Continuous,
            promotion: PromotionMode::Complete,
            fault: Fault::Kill,
            stress: Vec::new(),
            stress_duration: Duration::from_secs(30),
            stress_lead: Duration::from_secs(10),
            exclude: Vec::new(),
            mongodb_uri: None,
            snapshot_interval: Duration::from_secs(2),
            write_period: Duration::from_millis(100),
            warmup: Duration::from_secs(3),
            failover_timeout: Duration::from_secs(120),
            keep: false,
            probe_interval: Duration::from_millis(500),
            confirm: 2,
            report_ttl: Duration::from_secs(3),
            agent_interval: Duration::from_millis(500),
            raft: None,
        }
    }
}

impl DrillOptions {
    /// The cluster names: `p`, `s1`, `s2`, ...
    pub fn cluster_names(&self) -> Vec<String> {
        let mut v = vec!["p".to_owned()];
        v.extend((1..self.clusters).map(|i| format!("s{i}")));
        v
    }

    fn validate(&self) -> Result<(), DrillError> {
        if self.clusters < 2 || self.coordinators == 0 {
            return Err(DrillError::Invalid(
                "at least 2 clusters and 1 coordinator".into(),
            ));
        }
        let names = self.cluster_names();
        for n in self.stress.iter().chain(&self.exclude) {
            if !names.contains(n) {
                return Err(DrillError::Invalid(format!(
                    "{n:?} is not a cluster of this drill ({})",
                    names.join(", ")
                )));
            }
        }
        if self.confirm == 0
            || [self.probe_interval, self.report_ttl, self.agent_interval]
                .iter()
                .any(Duration::is_zero)
        {
            return Err(DrillError::Invalid(
                "--confirm, --probe-interval, --report-ttl and --agent-interval must be above 0"
                    .into(),
            ));
        }
        if let Some(layout) = self.raft {
            if !matches!(self.fault, Fault::Kill | Fault::Stop | Fault::Switchover) {
                return Err(DrillError::Invalid(format!(
                    "--replication raft takes --fault kill or stop (every node of the primary \
                     cluster) or switchover (a handover inside the raft), not {}",
                    self.fault.as_str()
                )));
            }
            if layout.primary_nodes == 0 || layout.primary_nodes > 7 {
                return Err(DrillError::Invalid(
                    "--primary-nodes must be 1 to 7 (the voters of the raft)".into(),
                ));
            }
            if !(1..=2).contains(&layout.secondary_nodes) {
                return Err(DrillError::Invalid(
                    "--secondary-nodes must be 1 or 2 with --replication raft".into(),
                ));
            }
        }
        if self.exclude.len() + 1 >= self.clusters {
            return Err(DrillError::Invalid(
                "every secondary is excluded: nothing could be promoted".into(),
            ));
        }
        Ok(())
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// `fault`, `detected`, `decided`, `fenced`, `promoted`, `switched`, `repointed`,
    /// `verified`, `done`, `first_write`.
    pub event: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Seconds after the fault.
    pub after_fault_seconds: f64,
    /// What happened.
    pub detail: String,
}

/// The stress phase as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StressReport {
    /// Stressed clusters.
    pub clusters: Vec<String>,
    /// Whether stress-ng and `bao` shared a per-cluster cgroup that the agent read.
    pub in_cgroups: bool,
    /// What the agents can and cannot see of it.
    pub note: String,
}

/// The result of one drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    /// Exactly one promotion finished, the client wrote on the new primary, RPO was measured.
    pub ok: bool,
    /// Why not ok.
    pub problems: Vec<String>,
    /// Every cluster, the primary first.
    pub clusters: Vec<String>,
    /// The primary before the fault.
    pub primary: String,
    /// The fault.
    pub fault: Fault,
    /// How the client reached the primary.
    pub traffic: TrafficMode,
    /// The restore mode.
    pub restore: RestoreMode,
    /// The promotion mode.
    pub promotion: PromotionMode,
    /// How the secondaries replicated: `snapshot`, or `raft (V voters, N non-voters per
    /// secondary)`.
    #[serde(default)]
    pub replication: String,
    /// Raft replication: the new primary's lag as reported before the fault and at the
    /// decision, the larger (seconds since the leader last reached it), and the writes the
    /// client had acknowledged within that much before the fault: what an asynchronous
    /// raft may lose.
    #[serde(default)]
    pub raft_lag: Option<RaftLag>,
    /// The store (`embedded` or `mongodb`).
    pub store: String,
    /// Coordinator processes.
    pub coordinators: usize,
    /// Snapshot interval, seconds.
    pub snapshot_interval_seconds: f64,
    /// When the fault was injected.
    pub fault_at: DateTime<Utc>,
    /// The winner of the candidate table just before the fault.
    pub expected_target: Option<String>,
    /// The new primary.
    pub target: Option<String>,
    /// Failovers in the journal at the end (one expected).
    pub promotions: usize,
    /// The term at the end.
    pub term: Option<u64>,
    /// Timeline, in order.
    pub timeline: Vec<TimelineEvent>,
    /// The decision's candidate table.
    pub candidates: Option<CandidateTable>,
    /// The candidate table just before the fault (shows the stress).
    pub candidates_before_fault: Option<CandidateTable>,
    /// Fault to first acknowledged write on the new primary, seconds.
    pub rto_seconds: Option<f64>,
    /// Acknowledged writes missing on the new primary.
    pub rpo_writes: Option<u64>,
    /// Seconds between the oldest missing acknowledged write and the fault.
    pub rpo_seconds: Option<f64>,
    /// Client writes per snapshot interval (the RPO bound of snapshot replication).
    pub writes_per_snapshot_interval: f64,
    /// The coordinator's loss account of the failover, from its journal record.
    #[serde(default)]
    pub accounted_loss: Option<LossAccount>,
    /// The agents' report interval, seconds: the account cannot see the primary's writes after
    /// its last report, so it and the client's RPO may differ by that much.
    #[serde(default)]
    pub report_interval_seconds: f64,
    /// Accounted seconds at risk minus the client's `rpo_seconds`, when both are known.
    #[serde(default)]
    pub loss_difference_seconds: Option<f64>,
    /// The client's counters.
    pub client: ClientStats,
    /// The stress phase, if any.
    pub stress: Option<StressReport>,
    /// Agent flags the drill wanted but this agent build does not know.
    pub agent_flags_missing: Vec<String>,
    /// Coordinator config keys the drill wanted but this build does not know.
    pub coordinator_keys_missing: Vec<String>,
    /// Every pid the drill started (all gone when it returns).
    pub pids: Vec<u32>,
    /// The run directory (removed at the end unless `--keep`).
    pub run_dir: PathBuf,
    /// Start to ready (clusters, agents, coordinators, seeding), seconds.
    pub setup_seconds: f64,
    /// The random pause added to the warmup, so that the fault lands at a random point of the
    /// secondaries' pull and restore cycle (as a real failure does), seconds.
    pub fault_offset_seconds: f64,
    /// The whole drill, seconds.
    pub total_seconds: f64,
    /// The client's write latency before the fault, between the fault and the decision, and
    /// after the switch (what a degraded primary cost its clients, and what moving it gave back).
    #[serde(default)]
    pub client_latency: Option<ClientLatency>,
}

/// What asynchronous raft replication may lose: the target's reported lag and the writes
/// acknowledged within it before the fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RaftLag {
    /// The target's lag in entries (the larger of before the fault and at the decision).
    pub entries: Option<u64>,
    /// The target's lag in seconds (likewise).
    pub seconds: f64,
    /// Writes the client had acknowledged within `seconds` before the fault.
    pub writes_within: usize,
}

impl RaftLag {
    /// The lag of `target` in the two tables and the acknowledged writes it covers.
    fn of(
        target: &str,
        tables: [Option<&CandidateTable>; 2],
        acked: &[workload::AckedWrite],
        fault_at: DateTime<Utc>,
    ) -> Self {
        let rows = tables
            .into_iter()
            .flatten()
            .filter_map(|t| t.candidates.iter().find(|c| c.cluster == target));
        let (mut entries, mut seconds) = (None, 0.0_f64);
        for row in rows {
            entries = entries.max(row.lag_entries);
            seconds = seconds.max(row.lag_seconds.unwrap_or(0.0));
        }
        let window = chrono::Duration::microseconds((seconds * 1e6).ceil() as i64);
        let writes_within = acked
            .iter()
            .filter(|w| w.acked_at <= fault_at && w.acked_at >= fault_at - window)
            .count();
        Self {
            entries,
            seconds,
            writes_within,
        }
    }
}

/// p50 and p99 of the client's acknowledged writes (sent to acknowledged) in three periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientLatency {
    /// Before the fault: (p50, p99) in milliseconds, and the writes.
    pub before_ms: (f64, f64, usize),
    /// From the fault to the decision.
    pub fault_to_decision_ms: (f64, f64, usize),
    /// After the switch (traffic on the new primary).
    pub after_ms: (f64, f64, usize),
}

impl ClientLatency {
    fn of(
        acked: &[workload::AckedWrite],
        fault_at: DateTime<Utc>,
        decided_at: DateTime<Utc>,
        switched_at: DateTime<Utc>,
    ) -> Self {
        let figures = |keep: &dyn Fn(&workload::AckedWrite) -> bool| {
            let mut ms: Vec<f64> = acked
                .iter()
                .filter(|a| keep(a))
                .map(|a| (a.acked_at - a.sent_at).num_microseconds().unwrap_or(0) as f64 / 1000.0)
                .collect();
            ms.sort_by(f64::total_cmp);
            (
                vault_dr_common::latency::percentile(&ms, 0.50),
                vault_dr_common::latency::percentile(&ms, 0.99),
                ms.len(),
            )
        };
        Self {
            before_ms: figures(&|a| a.sent_at < fault_at),
            fault_to_decision_ms: figures(&|a| a.sent_at >= fault_at && a.acked_at < decided_at),
            after_ms: figures(&|a| a.sent_at >= switched_at),
        }
    }
}

impl std::fmt::Display for ClientLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let one = |(p50, p99, n): (f64, f64, usize)| {
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms ({n} writes)")
        };
        write!(
            f,
            "before the fault {}; fault to decision {}; after the switch {}",
            one(self.before_ms),
            one(self.fault_to_decision_ms),
            one(self.after_ms)
        )
    }
}

/// Runs one drill. An `Err` means it could not run; a finished drill whose checks failed is an
/// `Ok` report with `ok = false` and the `problems`.
pub async fn run(opts: &DrillOptions, progress: &Progress) -> Result<DrillReport, DrillError> {
    opts.validate()?;
    let began = Instant::now();
    let names = opts.cluster_names();
    let spec = GroupSpec {
        clusters: names.clone(),
        coordinators: opts.coordinators,
        excluded: opts.exclude.clone(),
        restore: opts.restore,
        promotion: Some(opts.promotion),
        snapshot_interval: opts.snapshot_interval,
        traffic: opts.traffic == TrafficMode::Local,
        mongodb_uri: opts.mongodb_uri.clone(),
        cgroups: !opts.stress.is_empty(),
        keep: opts.keep,
        probe_interval: opts.probe_interval,
        confirm: opts.confirm,
        report_ttl: opts.report_ttl,
        agent_interval: opts.agent_interval,
        degraded: opts.fault.degradation().map(|_| drill_degraded_policy()),
        raft: opts.raft,
        ..GroupSpec::default()
    };
    let mut group = progress
        .wait(
            &format!(
                "starting {} OpenBao clusters and {}",
                names.len(),
                match opts.coordinators {
                    1 => "1 coordinator".to_owned(),
                    n => format!("{n} coordinators"),
                }
            ),
            DrGroup::start_without_agents(&spec),
        )
        .await?;
    let primary = names[0].clone();
    // The client's token is created on the primary before any agent runs, so the snapshot every
    // secondary is seeded from already holds it (it still reaches them only by replication).
    let (root, api) = {
        let p = group
            .cluster(&primary)
            .ok_or_else(|| DrillError::Invalid("no primary".into()))?;
        (p.root_token().clone(), p.api_addr().clone())
    };
    let token = workload::create_client_token(group.http(), &api, &root).await?;
    let token_at = Utc::now();
    progress
        .wait(
            &format!(
                "starting {} agents; waiting for a leader and secondaries seeded from {primary}",
                names.len()
            ),
            group.start_agents(&spec),
        )
        .await?;
    if !group.agent_flags_missing().is_empty() {
        progress.line(format!(
            "warning: this vault-dr-agent does not know {}; they were left out",
            group.agent_flags_missing().join(", ")
        ));
    }
    let setup_seconds = began.elapsed().as_secs_f64();
    let target = match group.traffic_addr() {
        Some(addr) => workload::Target::Stable(addr.clone()),
        None => workload::Target::Follow {
            coordinators: group.coordinators().iter().map(|c| c.url.clone()).collect(),
            token: group.coordinator_token().clone(),
            clusters: group
                .clusters()
                .iter()
                .map(|c| (c.name().to_owned(), group.client_addr(c)))
                .collect(),
        },
    };
    progress.line(format!(
        "ready: primary {primary}, leader {}, client talks to {}",
        group
            .leader()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into()),
        target.describe()
    ));
    if !group.coordinator_keys_missing().is_empty() {
        progress.line(format!(
            "warning: this coordinator build does not know {}; left out",
            group.coordinator_keys_missing().join(", ")
        ));
    }

    let client = progress
        .wait(
            &format!(
                "client: first write of secret/{} through {}",
                workload::SECRET_PATH,
                target.describe()
            ),
            Workload::start(
                target.clone(),
                token.clone(),
                group.dir(),
                opts.write_period,
                Duration::from_secs(30),
            ),
        )
        .await?;
    // The client's token must be in the secondaries' data before the fault, or no client could
    // write after it. A warm standby (`continuous`) must serve it (its first restore is done);
    // an `on-promotion` standby must hold a snapshot with it, which it restores when promoted.
    let warm = opts.restore == RestoreMode::Continuous;
    if opts.raft.is_some() {
        // One raft: the token is in every node's log once committed. What must hold before
        // the fault is that every secondary's agent reports its exact lag.
        progress
            .wait(
                "waiting until every secondary reports its lag in raft entries",
                wait_raft_lag(&group, &primary, Duration::from_secs(60)),
            )
            .await?;
    } else {
        progress
            .wait(
                if warm {
                    "waiting until every secondary serves the client's token (restored)"
                } else {
                    "waiting until every secondary holds a snapshot with the client's token"
                },
                wait_replicated_after(
                    &group,
                    &primary,
                    token_at,
                    &token,
                    warm,
                    Duration::from_secs(60),
                ),
            )
            .await?;
    }
    // Without a random offset the fault would always land at the same point of the replication
    // cycle (the wait above ends right after a restore), and RTO and RPO would measure that
    // point only. One cycle: the pull interval, plus OpenBao's restore (about 5.5 s for a small
    // snapshot) when every pull is restored.
    let cycle = if opts.raft.is_some() {
        // Raft replicates continuously; the cycle that matters is the agents' reports.
        opts.agent_interval
    } else if warm {
        opts.snapshot_interval + RESTORE_ESTIMATE
    } else {
        opts.snapshot_interval
    };
    let fault_offset = cycle.mul_f64(rand::random::<f64>());
    tokio::time::sleep(opts.warmup + fault_offset).await;

    let stress = if opts.stress.is_empty() {
        None
    } else {
        let in_cgroups = stress::start(&mut group, &opts.stress, opts.stress_duration)?;
        let note = stress_note(&group, in_cgroups);
        progress.line(format!(
            "stress-ng (CPU {}%, {} for {} s) on {}: {note}",
            stress::CPU_LOAD_PERCENT,
            stress::VM_BYTES,
            opts.stress_duration.as_secs(),
            opts.stress.join(", ")
        ));
        progress
            .wait(
                "letting the agents report the stress",
                tokio::time::sleep(opts.stress_lead),
            )
            .await;
        Some(StressReport {
            clusters: opts.stress.clone(),
            in_cgroups,
            note,
        })
    };

    let candidates_before_fault = candidates_now(&group).await;
    let expected_target = candidates_before_fault
        .as_ref()
        .and_then(|t| t.winner.clone());
    if let Some(t) = &candidates_before_fault {
        progress.line(format!(
            "candidates before the fault (winner {}):\n{}",
            t.winner.as_deref().unwrap_or("none"),
            vault_dr_coordinator::cli::explain::render_table(t)
        ));
    }

    // The fault.
    let fault_at = Utc::now();
    let (fault_detail, degradation) = inject(&mut group, &primary, opts.fault).await?;
    // The fault has taken effect (a killed server is reaped, a stopped one stopped): a request
    // sent from now on cannot reach the old primary. One sent before may still have been
    // acknowledged by it a moment after `fault_at`, and is lost with it (the RPO), not "after
    // the fault".
    let fault_effective_at = Utc::now();
    progress.line(format!("FAULT: {fault_detail}"));
    let mut timeline = vec![TimelineEvent {
        event: "fault".into(),
        at: fault_at,
        after_fault_seconds: 0.0,
        detail: fault_detail,
    }];

    let followed = follow(
        &group,
        &client,
        &primary,
        fault_at,
        opts,
        progress,
        &mut timeline,
    )
    .await;
    // A little more traffic on the new primary, then stop the client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = client.stop().await;
    drop(degradation);
    let acked = read_acked(&group)?;

    let mut problems = Vec::new();
    let mut target = None;
    let mut candidates = None;
    if let Some(rec) = &followed.record {
        target = Some(rec.to.clone());
        candidates = Some(rec.table.clone());
        if rec.status != FailoverStatus::Done {
            problems.push(format!("the failover {} ended {:?}", rec.id, rec.status));
        }
    } else {
        problems.push(format!(
            "no failover finished within {} s of the fault",
            opts.failover_timeout.as_secs()
        ));
    }
    if let Some(p) = &followed.problem {
        problems.push(p.clone());
    }
    // Give a second failover the chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = match failovers(&group).await {
        Some(records) => {
            if records.len() != 1 {
                problems.push(format!(
                    "{} failovers in the journal, exactly one expected",
                    records.len()
                ));
            }
            records
        }
        None => {
            problems
                .push("no coordinator answered GET /v1/failovers: the journal is unread".into());
            Vec::new()
        }
    };
    let term = topology_term(&group).await;

    let first = followed.first_write.clone();
    // A switchover's RTO is its write pause: from the last write before the gap to the
    // first after it.
    let rto_seconds = first.as_ref().map(|w| {
        let start = match opts.fault {
            f if f.planned() => acked
                .iter()
                .filter(|a| a.acked_at < w.acked_at)
                .map(|a| a.acked_at)
                .max()
                .unwrap_or(fault_at),
            _ => fault_at,
        };
        seconds_between(start, w.acked_at)
    });
    if first.is_none() {
        problems.push("no client write was acknowledged after the fault".into());
    }
    let (mut rpo_writes, mut rpo_seconds) = (None, None);
    if let Some(t) = &target
        && let Some(c) = group.cluster(t)
    {
        let (after, before) = split_at_fault(&acked, fault_effective_at);
        match workload::missing_writes(c.api_addr(), &token, &acked).await {
            Ok(missing) => {
                let lost_after: Vec<String> = missing
                    .iter()
                    .filter(|m| after.contains(m))
                    .map(|m| {
                        format!(
                            "#{} (sent {:+.3} s, acknowledged {:+.3} s after the fault)",
                            m.seq,
                            seconds_between(fault_at, m.sent_at),
                            seconds_between(fault_at, m.acked_at)
                        )
                    })
                    .collect();
                if !lost_after.is_empty() {
                    problems.push(format!(
                        "{} writes sent after the fault took effect and acknowledged are missing on {t}: {}",
                        lost_after.len(),
                        lost_after.join(", ")
                    ));
                }
                rpo_writes = Some(missing.len() as u64);
                rpo_seconds = Some(
                    missing
                        .iter()
                        .filter(|m| before.contains(m))
                        .map(|m| seconds_between(m.sent_at, fault_at))
                        .fold(0.0, f64::max),
                );
            }
            Err(e) => problems.push(format!("reading the acknowledged writes back: {e}")),
        }
    }
    let raft_lag = match (&opts.raft, &target) {
        (Some(layout), Some(t)) => {
            let lag = RaftLag::of(
                t,
                [candidates_before_fault.as_ref(), candidates.as_ref()],
                &acked,
                fault_at,
            );
            if layout.sync
                && let Some(lost) = rpo_writes.filter(|l| *l > 0)
            {
                problems.push(format!(
                    "{lost} acknowledged writes lost in the synchronous layout, where every \
                     commit includes a DR voter: none may be"
                ));
            } else if let Some(lost) = rpo_writes
                && lost > lag.writes_within as u64
            {
                problems.push(format!(
                    "{lost} acknowledged writes lost, more than the {} acknowledged within \
                     {t}'s reported lag of {:.2} s before the fault",
                    lag.writes_within, lag.seconds
                ));
            }
            Some(lag)
        }
        _ => None,
    };
    let client_latency = followed.record.as_ref().map(|r| {
        ClientLatency::of(
            &acked,
            fault_at,
            r.decided_at,
            r.step(Step::Switched)
                .and_then(|s| s.took_effect_at())
                .unwrap_or(r.decided_at),
        )
    });
    let accounted_loss = followed.record.as_ref().and_then(|r| r.loss.clone());
    let report_interval_seconds = spec.agent_interval.as_secs_f64();
    let loss_difference_seconds = match loss_agreement(
        accounted_loss.as_ref(),
        rpo_seconds,
        report_interval_seconds,
        opts.write_period.as_secs_f64(),
    ) {
        Ok(d) => d,
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    let rounds_per_second = 1.0 / opts.write_period.as_secs_f64().max(0.001);
    let report = DrillReport {
        ok: problems.is_empty(),
        problems,
        clusters: names.clone(),
        primary,
        fault: opts.fault,
        traffic: opts.traffic,
        restore: opts.restore,
        promotion: opts.promotion,
        replication: opts
            .raft
            .map_or_else(|| "snapshot".into(), |l| raft_label(&l, opts.clusters)),
        raft_lag,
        store: if opts.mongodb_uri.is_some() {
            "mongodb"
        } else {
            "embedded"
        }
        .into(),
        coordinators: opts.coordinators,
        snapshot_interval_seconds: opts.snapshot_interval.as_secs_f64(),
        fault_at,
        expected_target,
        target,
        promotions: records.len(),
        term,
        timeline,
        candidates,
        candidates_before_fault,
        rto_seconds,
        rpo_writes,
        rpo_seconds,
        writes_per_snapshot_interval: opts.snapshot_interval.as_secs_f64() * rounds_per_second,
        accounted_loss,
        report_interval_seconds,
        loss_difference_seconds,
        client: stats,
        stress,
        agent_flags_missing: group.agent_flags_missing().to_vec(),
        coordinator_keys_missing: group.coordinator_keys_missing().to_vec(),
        pids: group.pids(),
        run_dir: group.dir().to_path_buf(),
        setup_seconds,
        fault_offset_seconds: fault_offset.as_secs_f64(),
        total_seconds: 0.0,
        client_latency,
    };
    progress
        .wait("stopping every process", async { drop(group) })
        .await;
    Ok(DrillReport {
        total_seconds: began.elapsed().as_secs_f64(),
        ..report
    })
}

/// The acknowledged writes from the client's log file.
fn read_acked(group: &DrGroup) -> Result<Vec<workload::AckedWrite>, DrillError> {
    let path = group.dir().join("client-writes.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| DrillError::Client(format!("read {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn stress_note(group: &DrGroup, in_cgroups: bool) -> String {
    if in_cgroups
        && group
            .agent_flags_missing()
            .iter()
            .any(|f| f == "--cgroup-root")
    {
        return "bao and stress-ng share a cgroup v2 per cluster, but this agent build has no \
                --cgroup-root: it measures the bao process only and sees the stress as contention"
            .into();
    }
    match (in_cgroups, group.cgroups(), group.cgroup_error()) {
        (true, Some(cg), _) if cg.memory_accounted => {
            "bao and stress-ng share a cgroup per cluster; its agent reads CPU and memory there"
                .into()
        }
        (true, Some(_), _) => "bao and stress-ng share a cgroup v2 per cluster; this host's \
             cgroup v2 has no memory controller (hybrid v1/v2), so the agent reads the cgroup's \
             CPU (the stress shows) and the bao process's memory (the stress's 100 MB does not)"
            .into(),
        (_, _, Some(e)) => format!(
            "cgroups are not writable here ({e}): stress-ng runs outside, the agents see it only \
             as contention on the machine"
        ),
        _ => "stress-ng runs outside any per-cluster cgroup".into(),
    }
}

/// Injects `fault` into `primary`: what was done, and the port degradation that must live
/// until the drill ends (for `slow` and `errors`).
async fn inject(
    group: &mut DrGroup,
    primary: &str,
    fault: Fault,
) -> Result<(String, Option<crate::degrade::PortDegradation>), DrillError> {
    if let Some(port_fault) = fault.degradation() {
        let dir = group.dir().to_path_buf();
        let cluster = group
            .cluster(primary)
            .ok_or_else(|| DrillError::Invalid(format!("no cluster {primary}")))?;
        let port = cluster.api_addr().port().unwrap_or(8200);
        let d =
            crate::degrade::PortDegradation::start(&[], port, port_fault, &dir).map_err(|e| {
                DrillError::Invalid(format!("degrading {primary}'s API port {port}: {e}"))
            })?;
        return Ok((
            format!("{primary}'s API (port {port}) degraded: {port_fault}; the server stays up"),
            Some(d),
        ));
    }
    inject_on_node(group, primary, fault)
        .await
        .map(|d| (d, None))
}

async fn inject_on_node(
    group: &mut DrGroup,
    primary: &str,
    fault: Fault,
) -> Result<String, DrillError> {
    let Some(cluster) = group
        .clusters_mut()
        .iter_mut()
        .find(|c| c.name() == primary)
    else {
        return Err(DrillError::Invalid(format!("no cluster {primary}")));
    };
    // Every node of the primary cluster: the loss of the whole site (one node in the
    // snapshot layout, the voters in the raft layout).
    let pids = cluster
        .nodes()
        .iter()
        .map(|n| n.pid().map_or_else(|| "-".into(), |p| p.to_string()))
        .collect::<Vec<String>>()
        .join(", ");
    let what = match cluster.nodes().len() {
        1 => format!("{primary}'s bao (pid {pids})"),
        n => format!("every node of {primary}: {n} bao (pids {pids})"),
    };
    match fault {
        Fault::Kill => {
            for node in cluster.nodes_mut() {
                node.kill();
            }
            Ok(format!("SIGKILL {what}"))
        }
        Fault::Stop => {
            for node in cluster.nodes_mut() {
                node.stop();
            }
            Ok(format!("SIGSTOP {what}: ports open, no answers"))
        }
        Fault::Seal => {
            let url = cluster
                .api_addr()
                .join("v1/sys/seal")
                .map_err(|e| DrillError::Invalid(e.to_string()))?;
            let resp = cluster
                .client()
                .put(url)
                .header("X-Vault-Token", cluster.root_token().expose())
                .send()
                .await
                .map_err(|e| DrillError::Client(format!("seal {primary}: {e}")))?;
            if !resp.status().is_success() {
                return Err(DrillError::Client(format!(
                    "seal {primary}: HTTP {}",
                    resp.status().as_u16()
                )));
            }
            Ok(format!("sealed {primary} through sys/seal"))
        }
        Fault::Switchover => switchover(group).await,
        Fault::Slow | Fault::Errors => Err(DrillError::Invalid(format!(
            "{} degrades a port, not a node",
            fault.as_str()
        ))),
    }
}

/// The acknowledged write right after the longest gap between two acknowledged writes
/// since `from`, among the gaps that end after the target was promoted at `promoted`
/// (`None` until a write follows it): the end of a switchover's write pause.
pub fn after_longest_pause(
    acked: &[workload::AckedWrite],
    from: DateTime<Utc>,
    promoted: DateTime<Utc>,
) -> Option<workload::AckedWrite> {
    let mut since: Vec<&workload::AckedWrite> =
        acked.iter().filter(|w| w.acked_at >= from).collect();
    since.sort_by_key(|w| w.acked_at);
    since
        .windows(2)
        .filter(|p| p[1].acked_at >= promoted)
        .max_by_key(|p| p[1].acked_at - p[0].acked_at)
        .map(|p| p[1].clone())
}

/// Asks the leader for a planned switchover to its rank-1 candidate.
async fn switchover(group: &DrGroup) -> Result<String, DrillError> {
    let leader = group
        .leader()
        .await
        .ok_or_else(|| DrillError::Client("switchover: no coordinator leads".into()))?;
    let to = candidates_now(group)
        .await
        .and_then(|t| t.winner)
        .ok_or_else(|| DrillError::Client("switchover: no eligible candidate".into()))?;
    let url = leader
        .join("v1/switchover")
        .map_err(|e| DrillError::Invalid(e.to_string()))?;
    let resp = group
        .http()
        .post(url)
        .bearer_auth(group.coordinator_token().expose())
        .json(&serde_json::json!({ "to": to }))
        .send()
        .await
        .map_err(|e| DrillError::Client(format!("switchover to {to}: {e}")))?;
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let body = resp
            .text()
            .await
            .unwrap_or_else(|e| format!("(the answer's body could not be read: {e})"));
        return Err(DrillError::Client(format!(
            "switchover to {to}: HTTP {status}: {body}"
        )));
    }
    Ok(format!(
        "planned switchover to {to} requested from the leader (the primary stays up)"
    ))
}

/// What was seen while following the failover.
struct Followed {
    record: Option<FailoverRecord>,
    first_write: Option<workload::AckedWrite>,
    problem: Option<String>,
}

/// Polls the coordinators and the client until the failover is done and the client has
/// written after the fault; adds each event to the timeline (and prints it) as it is seen.
async fn follow(
    group: &DrGroup,
    client: &Workload,
    primary: &str,
    fault_at: DateTime<Utc>,
    opts: &DrillOptions,
    progress: &Progress,
    timeline: &mut Vec<TimelineEvent>,
) -> Followed {
    let deadline = Instant::now() + opts.failover_timeout;
    let mut detected = false;
    let mut seen_steps: Vec<Step> = Vec::new();
    let mut record: Option<FailoverRecord> = None;
    let mut first_write = None;
    let mut leader: Option<Url> = None;
    let mut loss_shown = false;
    let push =
        |timeline: &mut Vec<TimelineEvent>, event: &str, at: DateTime<Utc>, detail: String| {
            let after = seconds_between(fault_at, at);
            progress.line(format!("{event:<12} +{after:6.2} s  {detail}"));
            timeline.push(TimelineEvent {
                event: event.into(),
                at,
                after_fault_seconds: after,
                detail,
            });
        };
    let wait = async {
        loop {
            if leader.is_none() {
                leader = group.leader().await;
            }
            if !detected && let Some(l) = &leader {
                match group.get_json(l, "v1/decisions/latest").await {
                    Some(v) => {
                        if let Ok(d) = serde_json::from_value::<DecisionRecord>(v) {
                            let since = match d.phase {
                                // A degraded primary is detected by the degraded rule (its
                                // slow probes may make it suspect too, which is no detection).
                                _ if opts.fault.degradation().is_some() => {
                                    matches!(d.decision, Decision::Degraded { .. })
                                        .then_some(d.at)
                                        .filter(|at| *at >= fault_at)
                                }
                                Phase::Suspect { since, .. } if since >= fault_at => Some(since),
                                // Only a failover's decision is a detection (a switchover's
                                // is the operator's, a resume follows either).
                                Phase::FailingOver { .. }
                                    if d.primary == primary
                                        && matches!(d.decision, Decision::Failover { .. }) =>
                                {
                                    Some(d.at)
                                }
                                _ => None,
                            };
                            if let Some(since) = since {
                                detected = true;
                                push(
                                    timeline,
                                    "detected",
                                    since,
                                    format!("primary {primary}: {}", d.sentence),
                                );
                            }
                        }
                    }
                    None => leader = None,
                }
            }
            if let Some(all) = failovers(group).await
                && let Some(rec) = all
                    .into_iter()
                    .find(|r| r.decided_at >= fault_at - chrono::Duration::seconds(1))
            {
                // A planned switchover detects nothing: the operator asked (the fault line).
                if !detected {
                    detected = true;
                    if !rec.planned || opts.fault.degradation().is_some() {
                        push(
                            timeline,
                            "detected",
                            rec.decided_at,
                            format!("primary {primary} down (seen with the decision)"),
                        );
                    }
                }
                if seen_steps.is_empty() {
                    seen_steps.push(Step::Decided);
                    push(
                        timeline,
                        "decided",
                        rec.decided_at,
                        format!(
                            "term {}: {} -> {} ({})",
                            rec.term, rec.from, rec.to, rec.reason
                        ),
                    );
                    progress.line(format!(
                        "candidate table:\n{}",
                        vault_dr_coordinator::cli::explain::render_table(&rec.table)
                    ));
                }
                for s in &rec.steps {
                    if s.step == Step::Decided || seen_steps.contains(&s.step) {
                        continue;
                    }
                    // The time its effect happened (traffic follows the topology, so it can
                    // reach the new primary before the Switched step runs).
                    if let Some(done) = s.took_effect_at() {
                        seen_steps.push(s.step);
                        push(timeline, s.step.as_str(), done, s.detail.clone());
                    }
                }
                if !loss_shown
                    && let Some(loss) = rec.loss.as_ref().filter(|l| l.at_risk != AtRisk::Pending)
                {
                    loss_shown = true;
                    progress.line(format!("accounted loss: {loss}"));
                }
                let finished = rec.status != FailoverStatus::InProgress;
                record = Some(rec);
                if finished && first_write.is_some() {
                    return None;
                }
            }
            // A planned switchover: the primary stays up and takes writes until clients are
            // cut, so the first write that counts is the one after the pause (the longest gap
            // between two acknowledged writes since the request), once the record is done.
            // In a handover inside one raft the pause is the leader's step-down, in the
            // Promoted step: gaps that end after the Fenced step count.
            let moved_in = if opts.raft.is_some() {
                Step::Fenced
            } else {
                Step::Promoted
            };
            let next = if opts.fault.planned() {
                record
                    .as_ref()
                    .filter(|r| r.status != FailoverStatus::InProgress)
                    .and_then(|r| r.step(moved_in)?.finished_at)
                    .and_then(|promoted| after_longest_pause(&client.acked(), fault_at, promoted))
            } else {
                client.first_acked_sent_after(fault_at)
            };
            if first_write.is_none()
                && let Some(w) = next
            {
                let on = record
                    .as_ref()
                    .map(|r| r.to.clone())
                    .unwrap_or_else(|| "?".into());
                push(
                    timeline,
                    "first_write",
                    w.acked_at,
                    format!(
                        "client write #{} (version {}) acknowledged through {}, new primary {on}",
                        w.seq,
                        w.version,
                        client.via()
                    ),
                );
                first_write = Some(w);
                if record
                    .as_ref()
                    .is_some_and(|r| r.status != FailoverStatus::InProgress)
                {
                    return None;
                }
            }
            if Instant::now() > deadline {
                return Some(format!(
                    "timed out {} s after the fault",
                    opts.failover_timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let problem = progress
        .wait(
            "waiting for the failover and the first client write on the new primary",
            wait,
        )
        .await;
    timeline.sort_by_key(|e| e.at);
    Followed {
        record,
        first_write,
        problem,
    }
}

/// The journal from the first coordinator that answers.
async fn failovers(group: &DrGroup) -> Option<Vec<FailoverRecord>> {
    for c in group.coordinators() {
        if c.pid().is_none() {
            continue;
        }
        if let Some(v) = group.get_json(&c.url, "v1/failovers").await
            && let Ok(r) = serde_json::from_value::<Vec<FailoverRecord>>(v)
        {
            return Some(r);
        }
    }
    None
}

async fn topology_term(group: &DrGroup) -> Option<u64> {
    for c in group.coordinators() {
        if let Some(v) = group.get_json(&c.url, "v1/topology").await
            && let Some(t) = v.pointer("/topology/term").and_then(Value::as_u64)
        {
            return Some(t);
        }
    }
    None
}

/// The leader's candidate table now.
async fn candidates_now(group: &DrGroup) -> Option<CandidateTable> {
    let leader = group.leader().await?;
    let v = group.get_json(&leader, "v1/clusters").await?;
    serde_json::from_value(v.get("candidates")?.clone()).ok()
}

/// Whether `api_addr` already knows the client's token: a snapshot taken after it was created
/// has been restored there. The token may read only the drill's secret (no default policy), so
/// it asks for that: 200, or 404 while the restored snapshot predates the secret's first write,
/// both prove the token; an unknown token gets 403.
async fn token_served(http: &reqwest::Client, api_addr: &Url, token: &Secret) -> bool {
    let Ok(url) = api_addr.join(&format!("v1/secret/data/{}", workload::SECRET_PATH)) else {
        return false;
    };
    http.get(url)
        .header("X-Vault-Token", token.expose())
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| matches!(r.status().as_u16(), 200 | 404))
}

/// "raft (3 voters, 1 non-voter per secondary)", or for the synchronous layout of `clusters`
/// clusters "raft synchronous (2 + 1 + 1 voters, 1 non-voter in the primary)".
pub(crate) fn raft_label(l: &RaftLayout, clusters: usize) -> String {
    if !l.sync {
        return format!(
            "raft ({} voters, {} non-voter{} per secondary)",
            l.primary_nodes,
            l.secondary_nodes,
            if l.secondary_nodes == 1 { "" } else { "s" }
        );
    }
    let suffrages = l.suffrages(clusters);
    let voters: Vec<usize> = suffrages
        .iter()
        .enumerate()
        .map(|(c, nodes)| {
            let role = if c == 0 {
                Role::Primary
            } else {
                Role::Secondary
            };
            nodes.iter().filter(|s| !s.non_voter(role)).count()
        })
        .collect();
    let non_voters = suffrages.iter().flatten().count() - voters.iter().sum::<usize>();
    let voters: Vec<String> = voters.iter().map(ToString::to_string).collect();
    format!(
        "raft synchronous ({} voters, {non_voters} non-voter{})",
        voters.join(" + "),
        if non_voters == 1 { "" } else { "s" }
    )
}

/// Waits until the leader's candidate table gives every secondary of a raft group its exact
/// lag (`lag_entries`), which the agents report once their node has joined as a non-voter.
async fn wait_raft_lag(
    group: &DrGroup,
    primary: &str,
    timeout: Duration,
) -> Result<(), DrillError> {
    let deadline = Instant::now() + timeout;
    let secondaries: Vec<String> = group
        .clusters()
        .iter()
        .map(|c| c.name().to_owned())
        .filter(|n| n != primary)
        .collect();
    loop {
        let behind: Vec<String> = match candidates_now(group).await {
            Some(table) => secondaries
                .iter()
                .filter(|s| {
                    !table
                        .candidates
                        .iter()
                        .any(|c| &c.cluster == *s && c.lag_entries.is_some())
                })
                .cloned()
                .collect(),
            None => secondaries.clone(),
        };
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DrillError::Lab(LabError::Invalid(format!(
                "no lag in raft entries reported for {} within {} s",
                behind.join(", "),
                timeout.as_secs()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every secondary holds the client's token: it serves it (restored), or, unless
/// `must_serve`, its agent reports a snapshot pulled after `t` (kept for restore at promotion).
async fn wait_replicated_after(
    group: &DrGroup,
    primary: &str,
    t: DateTime<Utc>,
    token: &Secret,
    must_serve: bool,
    timeout: Duration,
) -> Result<(), DrillError> {
    let deadline = Instant::now() + timeout;
    let secondaries: Vec<(String, Url)> = group
        .clusters()
        .iter()
        .filter(|c| c.name() != primary)
        .map(|c| (c.name().to_owned(), c.api_addr().clone()))
        .collect();
    // Once a secondary holds the token every later snapshot holds it too: remember it.
    let mut holding: Vec<String> = Vec::new();
    loop {
        let view = match group.leader().await {
            Some(l) => group.get_json(&l, "v1/clusters").await,
            None => None,
        };
        let pending: Vec<&(String, Url)> = secondaries
            .iter()
            .filter(|(n, _)| !holding.contains(n))
            .collect();
        // A secondary that restores continuously blocks requests for seconds at a time, so
        // ask all of them at once.
        let served = futures::future::join_all(
            pending
                .iter()
                .map(|(_, addr)| token_served(group.http(), addr, token)),
        )
        .await;
        for ((name, _), served) in pending.iter().zip(served) {
            let nodes = view
                .as_ref()
                .and_then(|v| v.pointer(&format!("/view/clusters/{name}/nodes")))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let pulled = nodes.iter().any(|n| {
                n.pointer("/report/replication/last_success_at")
                    .and_then(Value::as_str)
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .is_some_and(|at| at.with_timezone(&Utc) > t)
            });
            if served || (pulled && !must_serve) {
                holding.push(name.clone());
            }
        }
        let behind: Vec<&str> = secondaries
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !holding.iter().any(|h| h == n))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DrillError::Lab(LabError::Invalid(format!(
                "{} did not {} the client's token within {} s \
                 (is snapshot replication on? agent logs in {})",
                behind.join(", "),
                if must_serve {
                    "serve"
                } else {
                    "hold a snapshot with"
                },
                timeout.as_secs(),
                group.dir().display()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The acknowledged writes sent after the fault took effect (`effective_at`), which the old
/// primary cannot have served and which must all survive, and the others, which it may have
/// acknowledged just before it went (the RPO window), in that order.
fn split_at_fault(
    acked: &[workload::AckedWrite],
    effective_at: DateTime<Utc>,
) -> (Vec<workload::AckedWrite>, Vec<workload::AckedWrite>) {
    acked
        .iter()
        .cloned()
        .partition(|w| w.sent_at > effective_at)
}

/// Checks the coordinator's loss account against the client's RPO: the account must be there,
/// accounted in seconds, and differ from the client's `rpo_seconds` by at most one report
/// interval (the index is dated by the first report that carried it, sent up to one interval
/// after the probe that read it, and the primary's writes after that probe are unknown to the
/// coordinator) plus one write period (the client's resolution: its oldest lost write was sent up to one
/// period after the snapshot). The signed difference (account minus client), or the problem.
fn loss_agreement(
    accounted: Option<&LossAccount>,
    rpo_seconds: Option<f64>,
    report_interval_seconds: f64,
    write_period_seconds: f64,
) -> Result<Option<f64>, String> {
    let Some(loss) = accounted else {
        return Err("the failover record carries no loss account".into());
    };
    let Some(accounted) = loss.seconds() else {
        return Err(format!("the coordinator gave no seconds at risk ({loss})"));
    };
    let Some(client) = rpo_seconds else {
        // The client's RPO is missing for a reason already among the problems.
        return Ok(None);
    };
    let difference = accounted - client;
    let tolerance = report_interval_seconds + write_period_seconds;
    if difference.abs() > tolerance {
        return Err(format!(
            "the coordinator accounts {accounted:.2} s at risk, the client lost {client:.2} s: \
             they differ by {:.2} s, more than one report interval ({report_interval_seconds:.1} s) \
             and one write period ({write_period_seconds:.1} s)",
            difference.abs()
        ));
    }
    Ok(Some(difference))
}

fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// The report for people: the timeline, the candidate table, RTO, RPO and the verdict.
pub fn render(r: &DrillReport) -> String {
    let replication = if r.replication.starts_with("raft") {
        format!("replication {}", r.replication)
    } else {
        format!(
            "restore {}, promotion {}",
            r.restore.as_str(),
            r.promotion.as_str()
        )
    };
    let mut out = format!(
        "vault-dr drill: {} clusters ({} primary; {}), {} coordinators, {} store, traffic {}, {replication}, fault {}\n",
        r.clusters.len(),
        r.primary,
        r.clusters[1..].join(", "),
        r.coordinators,
        r.store,
        match r.traffic {
            TrafficMode::Local => "local forwarder",
            TrafficMode::Follow => "client follows the topology",
        },
        r.fault.as_str(),
    );
    out.push_str(&format!(
        "setup {:.1} s, whole drill {:.1} s, fault {:.1} s into the replication cycle (random)\n\ntimeline (seconds after the fault)\n",
        r.setup_seconds, r.total_seconds, r.fault_offset_seconds
    ));
    for e in &r.timeline {
        out.push_str(&format!(
            "  {:>7.2}  {:<12} {}\n",
            e.after_fault_seconds, e.event, e.detail
        ));
    }
    if let Some(s) = &r.stress {
        out.push_str(&format!(
            "\nstress on {}: {}\n",
            s.clusters.join(", "),
            s.note
        ));
    }
    if let Some(t) = &r.candidates_before_fault {
        out.push_str("\ncandidates just before the fault\n");
        out.push_str(&vault_dr_coordinator::cli::explain::render_table(t));
    }
    if let Some(t) = &r.candidates {
        out.push_str("\ncandidates at the decision\n");
        out.push_str(&vault_dr_coordinator::cli::explain::render_table(t));
    }
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} s"));
    out.push_str(&format!(
        "\nRTO  {}  ({})\n",
        f(r.rto_seconds),
        if r.fault.planned() {
            "the clients' write pause: last acknowledged write before it -> first on the new primary"
        } else {
            "fault -> first acknowledged client write on the new primary"
        }
    ));
    let bound = match &r.raft_lag {
        Some(_) if r.replication.starts_with("raft synchronous") => {
            "every commit included a DR voter: none may be missing".to_owned()
        }
        Some(l) => format!(
            "the new primary's reported lag was {} entries, {:.2} s: {} writes acknowledged \
             within it",
            l.entries.map_or("-".into(), |e| e.to_string()),
            l.seconds,
            l.writes_within
        ),
        None => format!(
            "one snapshot interval ({:.1} s) is about {:.0} writes",
            r.snapshot_interval_seconds, r.writes_per_snapshot_interval
        ),
    };
    out.push_str(&format!(
        "RPO  {} acknowledged writes missing on the new primary (oldest {} before the fault); \
         {bound}\n",
        r.rpo_writes.map_or("-".into(), |v| v.to_string()),
        f(r.rpo_seconds),
    ));
    out.push_str(&format!(
        "LOSS {} accounted by the coordinator ({}){}\n",
        r.accounted_loss
            .as_ref()
            .map_or("-".to_owned(), LossAccount::short),
        r.accounted_loss
            .as_ref()
            .map_or("the failover record has no account".to_owned(), |l| l
                .to_string()),
        r.loss_difference_seconds.map_or(String::new(), |d| format!(
            "; {d:+.2} s from the client's RPO (report interval {:.1} s)",
            r.report_interval_seconds
        ))
    ));
    if let Some(l) = &r.client_latency {
        out.push_str(&format!("client write latency: {l}\n"));
    }
    out.push_str(&format!(
        "client: {} writes acknowledged, {} failed; {} reads ok, {} failed\n",
        r.client.writes_acked, r.client.writes_failed, r.client.reads_ok, r.client.reads_failed
    ));
    out.push_str(&format!(
        "promotions: {} ({} -> {}, term {})\n",
        r.promotions,
        r.primary,
        r.target.as_deref().unwrap_or("-"),
        r.term.map_or("-".into(), |t| t.to_string())
    ));
    if !r.coordinator_keys_missing.is_empty() {
        out.push_str(&format!(
            "note: this coordinator build lacks {}\n",
            r.coordinator_keys_missing.join(", ")
        ));
    }
    if !r.agent_flags_missing.is_empty() {
        out.push_str(&format!(
            "note: this agent build lacks {}\n",
            r.agent_flags_missing.join(", ")
        ));
    }
    if r.ok {
        out.push_str(
            "\nOK: exactly one promotion, clients served by the new primary, the accounted loss agrees with the client's\n",
        );
    } else {
        out.push_str("\nFAILED:\n");
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
        out.push_str(&format!(
            "(logs: run again with --keep and look in {})\n",
            r.run_dir.display()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account of `entries` entries and `seconds` at risk (p at index 104 when last seen,
    /// s1 serving index 100).
    fn account(entries: u64, seconds: Option<f64>) -> LossAccount {
        use vault_dr_coordinator::model::{AppliedIndex, ServedData};
        let at = Utc::now();
        let mut a = LossAccount::promoted(
            Some(AppliedIndex {
                node: "p-0".into(),
                index: 100 + entries,
                seen_at: at,
                last_seen_at: at,
                interval_seconds: Some(0.5),
            }),
            Some(ServedData {
                node: "s1-0".into(),
                mode: vault_dr_common::ReplicationMode::Snapshot,
                index: Some(100),
                taken_at: Some(at - chrono::Duration::milliseconds(600)),
            }),
        );
        a.at_risk = AtRisk::Accounted { entries, seconds };
        a
    }

    fn report() -> DrillReport {
        let at = Utc::now();
        DrillReport {
            ok: true,
            problems: Vec::new(),
            clusters: vec!["p".into(), "s1".into()],
            primary: "p".into(),
            fault: Fault::Kill,
            traffic: TrafficMode::Local,
            restore: RestoreMode::Continuous,
            promotion: PromotionMode::Fast,
            replication: "snapshot".into(),
            raft_lag: None,
            store: "embedded".into(),
            coordinators: 3,
            snapshot_interval_seconds: 2.0,
            fault_at: at,
            expected_target: Some("s1".into()),
            target: Some("s1".into()),
            promotions: 1,
            term: Some(2),
            timeline: vec![TimelineEvent {
                event: "first_write".into(),
                at,
                after_fault_seconds: 2.5,
                detail: "client write #9".into(),
            }],
            candidates: None,
            candidates_before_fault: None,
            rto_seconds: Some(2.5),
            rpo_writes: Some(3),
            rpo_seconds: Some(0.4),
            writes_per_snapshot_interval: 20.0,
            accounted_loss: Some(account(4, Some(0.6))),
            report_interval_seconds: 0.5,
            loss_difference_seconds: Some(0.2),
            client: ClientStats::default(),
            stress: None,
            agent_flags_missing: Vec::new(),
            coordinator_keys_missing: Vec::new(),
            pids: vec![1, 2],
            run_dir: PathBuf::from("/tmp/x"),
            setup_seconds: 10.0,
            fault_offset_seconds: 1.5,
            total_seconds: 40.0,
            client_latency: None,
        }
    }

    #[test]
    fn clusters_are_named_p_then_s1_onwards() {
        let o = DrillOptions {
            clusters: 4,
            ..DrillOptions::default()
        };
        assert_eq!(o.cluster_names(), ["p", "s1", "s2", "s3"]);
    }

    #[test]
    fn options_naming_unknown_clusters_or_excluding_every_secondary_are_refused() {
        let bad = DrillOptions {
            stress: vec!["s9".into()],
            ..DrillOptions::default()
        };
        assert!(matches!(bad.validate(), Err(DrillError::Invalid(m)) if m.contains("s9")));
        let all = DrillOptions {
            clusters: 3,
            exclude: vec!["s1".into(), "s2".into()],
            ..DrillOptions::default()
        };
        assert!(all.validate().is_err());
        assert!(DrillOptions::default().validate().is_ok());
    }

    #[test]
    fn the_synchronous_layout_keeps_the_primary_s_voters_at_most_the_dr_voters() {
        let layout = |primary_nodes, sync| RaftLayout {
            primary_nodes,
            secondary_nodes: 1,
            sync,
        };
        assert_eq!(
            raft_label(&layout(3, true), 3),
            "raft synchronous (2 + 1 + 1 voters, 1 non-voter)"
        );
        assert_eq!(
            raft_label(&layout(1, true), 3),
            "raft synchronous (1 + 1 + 1 voters, 0 non-voters)"
        );
        assert_eq!(
            raft_label(&layout(3, false), 3),
            "raft (3 voters, 1 non-voter per secondary)"
        );
        use vault_dr_agent::replication::raft::plan::Suffrage::{Auto, NonVoter, Voter};
        assert_eq!(
            layout(3, true).suffrages(3),
            vec![vec![Auto, Auto, NonVoter], vec![Voter], vec![Voter]]
        );
        // Four secondaries: all three primary nodes vote (3 of 7: no quorum alone).
        assert_eq!(layout(3, true).suffrages(5)[0], vec![Auto, Auto, Auto]);
    }

    #[test]
    fn raft_drills_take_a_whole_site_fault_and_secondaries_of_one_or_two_nodes() {
        let raft = |fault, primary_nodes, secondary_nodes| DrillOptions {
            clusters: 3,
            fault,
            raft: Some(RaftLayout {
                primary_nodes,
                secondary_nodes,
                sync: false,
            }),
            ..DrillOptions::default()
        };
        assert!(raft(Fault::Kill, 3, 1).validate().is_ok());
        assert!(raft(Fault::Stop, 1, 1).validate().is_ok());
        let refused = |o: DrillOptions, field: &str| {
            assert!(
                matches!(o.validate(), Err(DrillError::Invalid(ref m)) if m.contains(field)),
                "{field}: {:?}",
                o.validate()
            );
        };
        refused(raft(Fault::Seal, 3, 1), "--fault");
        refused(raft(Fault::Kill, 0, 1), "--primary-nodes");
        refused(raft(Fault::Kill, 8, 1), "--primary-nodes");
        refused(raft(Fault::Kill, 3, 3), "--secondary-nodes");
        assert!(raft(Fault::Kill, 3, 2).validate().is_ok());
        assert!(raft(Fault::Switchover, 3, 1).validate().is_ok());
    }

    #[test]
    fn the_raft_lag_bound_counts_the_writes_acknowledged_within_the_larger_reported_lag() {
        use vault_dr_coordinator::model::{Candidate, Eligibility};
        let t0 = Utc::now();
        let ms = chrono::Duration::milliseconds;
        let row = |cluster: &str, entries, seconds| Candidate {
            cluster: cluster.into(),
            rank: Some(1),
            eligibility: Eligibility::Eligible,
            state: None,
            lag_entries: Some(entries),
            lag_seconds: Some(seconds),
            latency_p99_ms: None,
            cpu_usage_cores: None,
            memory_headroom_ratio: None,
            priority: 0,
            report_age_seconds: Some(0.2),
            promotion_restores: false,
            log_index: None,
        };
        let table = |candidates: Vec<Candidate>| CandidateTable {
            at: t0,
            candidates,
            winner: Some("s1".into()),
        };
        let before = table(vec![row("s1", 2, 0.25), row("s2", 9, 3.0)]);
        let decided = table(vec![row("s1", 5, 0.1)]);
        let w = |seq, acked: i64| workload::AckedWrite {
            seq,
            version: seq,
            sent_at: t0 + ms(acked - 5),
            acked_at: t0 + ms(acked),
        };
        // Acknowledged 400, 200 and 100 ms before the fault, and one after it.
        let acked = [w(1, -400), w(2, -200), w(3, -100), w(4, 50)];
        let lag = RaftLag::of("s1", [Some(&before), Some(&decided)], &acked, t0);
        assert_eq!(lag.entries, Some(5), "the larger of the two tables");
        assert_eq!(lag.seconds, 0.25);
        assert_eq!(
            lag.writes_within, 2,
            "writes 2 and 3, not 1 (older), not 4 (after)"
        );
    }

    #[test]
    fn the_text_report_shows_rto_rpo_the_timeline_and_the_verdict() {
        let text = render(&report());
        assert!(text.contains("RTO  2.50 s"), "{text}");
        assert!(text.contains("RPO  3 acknowledged writes"), "{text}");
        assert!(text.contains("first_write"), "{text}");
        assert!(text.contains("OK: exactly one promotion"), "{text}");
        assert!(
            text.contains(
                "LOSS 4 entries, 0.60 s accounted by the coordinator (4 entries and 0.60 s at risk: p-0 was at index 104 by "
            ),
            "{text}"
        );
        assert!(
            text.contains("; +0.20 s from the client's RPO (report interval 0.5 s)\n"),
            "{text}"
        );
        let unaccounted = DrillReport {
            accounted_loss: None,
            loss_difference_seconds: None,
            ..report()
        };
        let text = render(&unaccounted);
        assert!(
            text.contains(
                "LOSS - accounted by the coordinator (the failover record has no account)\n"
            ),
            "{text}"
        );
        let failed = DrillReport {
            ok: false,
            problems: vec!["2 failovers in the journal, exactly one expected".into()],
            ..report()
        };
        let text = render(&failed);
        assert!(text.contains("FAILED:\n  - 2 failovers"), "{text}");
    }

    #[test]
    fn the_json_report_round_trips() {
        let r = report();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["fault"], "kill");
        assert_eq!(v["restore"], "continuous");
        assert_eq!(v["promotion"], "fast");
        assert_eq!(v["traffic"], "local");
        let back: DrillReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.rto_seconds, Some(2.5));
    }

    #[test]
    fn a_write_sent_before_the_fault_took_effect_is_in_the_rpo_window_even_if_acked_after() {
        let t0 = Utc::now();
        let ms = chrono::Duration::milliseconds;
        let w = |seq, sent: i64, acked: i64| workload::AckedWrite {
            seq,
            version: seq,
            sent_at: t0 + ms(sent),
            acked_at: t0 + ms(acked),
        };
        // The fault was decided at t0 and had taken effect (the server reaped) at +20 ms.
        let acked = [w(1, -150, -140), w(2, -5, 3), w(3, 10, 25), w(4, 30, 900)];
        let (after, before) = split_at_fault(&acked, t0 + ms(20));
        let seqs = |v: &[workload::AckedWrite]| v.iter().map(|w| w.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(&after),
            [4],
            "only a write sent after +20 ms must survive"
        );
        assert_eq!(
            seqs(&before),
            [1, 2, 3],
            "acknowledged by the old primary, maybe lost"
        );
    }

    #[test]
    fn the_verdict_needs_an_account_in_seconds_within_one_report_interval_of_the_client() {
        let not_accounted = LossAccount::promoted(None, None);
        type Want = Result<Option<f64>, &'static str>;
        let rows: Vec<(&str, Option<LossAccount>, Option<f64>, Want)> = vec![
            (
                "an account 0.3 s above the client's agrees",
                Some(account(20, Some(2.3))),
                Some(2.0),
                Ok(Some(0.3)),
            ),
            (
                "an account 0.5 s below the client's agrees (the writes after the last report)",
                Some(account(20, Some(1.5))),
                Some(2.0),
                Ok(Some(-0.5)),
            ),
            (
                "nothing lost on either side agrees",
                Some(account(0, Some(0.0))),
                Some(0.0),
                Ok(Some(0.0)),
            ),
            (
                "an account a snapshot interval off disagrees",
                Some(account(20, Some(4.0))),
                Some(2.0),
                Err("they differ by 2.00 s"),
            ),
            (
                "no account at all fails",
                None,
                Some(2.0),
                Err("carries no loss account"),
            ),
            (
                "an account without seconds fails",
                Some(not_accounted),
                Some(2.0),
                Err("no seconds at risk (not accounted: "),
            ),
            (
                "without the client's RPO there is nothing to compare (already a problem)",
                Some(account(20, Some(2.0))),
                None,
                Ok(None),
            ),
        ];
        for (name, loss, client, want) in rows {
            let got = loss_agreement(loss.as_ref(), client, 0.5, 0.1);
            match (got, want) {
                (Ok(Some(d)), Ok(Some(w))) => assert!((d - w).abs() < 1e-9, "{name}: {d}"),
                (Ok(None), Ok(None)) => {}
                (Err(e), Err(w)) => assert!(e.contains(w), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn seconds_between_is_signed_and_precise() {
        let a = Utc::now();
        let b = a + chrono::Duration::milliseconds(1500);
        assert!((seconds_between(a, b) - 1.5).abs() < 1e-9);
        assert!((seconds_between(b, a) + 1.5).abs() < 1e-9);
    }
}
