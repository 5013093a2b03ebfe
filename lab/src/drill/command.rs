//! `drill` and `bench rto`: their flags, Ctrl-C handling, output and exit code. The work is
//! in [`crate::drill`] and [`crate::drill::rto`].
//!
//! Ctrl-C or SIGTERM drops the running drill, and with it every process and file it started
//! (the group's guards); the command then exits 130.

use std::time::Duration;

use vault_dr_common::Secret;

use crate::drill::progress::Progress;
use crate::drill::{self, DrillOptions, Fault, TrafficMode};
use crate::group::{PromotionMode, RaftLayout, RestoreMode};

/// Exit code after Ctrl-C / SIGTERM.
const INTERRUPTED: i32 = 130;
/// Exit code when the drill ran but its checks failed (not exactly one promotion, ...).
const FAILED: i32 = 1;

/// Flags of `drill` (also used by `bench rto`).
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// Fault injected into the primary.
    #[arg(long, value_enum, default_value_t = Fault::Kill)]
    pub fault: Fault,
    /// How the client reaches the primary: the coordinators' local forwarder (a stable
    /// address), or `follow` (no traffic switch; it asks the coordinators for the primary).
    #[arg(long, value_enum, default_value_t = TrafficMode::Local)]
    pub traffic: TrafficMode,
    /// How secondaries restore pulled snapshots.
    #[arg(long, value_enum, default_value_t = RestoreArg::Continuous)]
    pub restore: RestoreArg,
    /// How the target is promoted.
    #[arg(long, value_enum, default_value_t = PromotionArg::Complete)]
    pub promotion: PromotionArg,
    /// Secondaries to stress with stress-ng before the fault (CPU 80 %, 100 MB, 30 s),
    /// comma-separated, e.g. `s1,s2`.
    #[arg(long, value_delimiter = ',')]
    pub stress: Vec<String>,
    /// Secondaries the coordinators must not promote, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// How the secondaries replicate: `snapshot` (pull and restore snapshots) or `raft` (one
    /// raft: the primary's nodes voters, every secondary's node a non-voter; promotion by raft
    /// recovery, the old primary held and fenced when it comes back).
    #[arg(long, value_enum, default_value_t = ReplicationArg::Snapshot)]
    pub replication: ReplicationArg,
    /// With `--replication raft`: nodes of the primary cluster, the raft's voters.
    #[arg(long, default_value_t = 3)]
    pub primary_nodes: usize,
    /// With `--replication raft`: nodes of every secondary cluster (1 or 2), non-voters (the
    /// first a voter with `--sync`).
    #[arg(long, default_value_t = 1)]
    pub secondary_nodes: usize,
    /// With `--replication raft`: the synchronous layout. Every secondary's first node is a
    /// voter and at most as many of the primary's nodes vote (2 + 1 + 1 for a 3-node primary
    /// and two secondaries), so that every commit includes a node outside the primary: no
    /// acknowledged write may be lost. `bench rto --replication raft` runs both layouts.
    #[arg(long)]
    pub sync: bool,
    /// Number of clusters: `p` (the primary) and `s1`.. `sN-1` (default 4; 3 with
    /// `--replication raft`).
    #[arg(long)]
    pub clusters: Option<usize>,
    /// Number of coordinator processes.
    #[arg(long, default_value_t = 3)]
    pub coordinators: usize,
    /// Store the coordinators' record in MongoDB at this URI instead of the embedded file.
    #[arg(long, env = "VAULT_DR_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// How often secondaries pull a snapshot, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
    /// Pause between client rounds (one read and one write), e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub write_period: Duration,
    /// Healthy client traffic before the fault (and before any stress), e.g. 3s.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The coordinators' probe interval (the README's: 1s).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,
    /// Consecutive ticks all observers must agree before the primary is down (the README's: 3).
    #[arg(long, default_value_t = 2)]
    pub confirm: u32,
    /// How long an agent's report counts (the README's: 5s).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub report_ttl: Duration,
    /// The agents' probe and report interval (the agent's default: 1s).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub agent_interval: Duration,
    /// Print one JSON document instead of the timeline.
    #[arg(long)]
    pub json: bool,
    /// Keep the run directory (configs, logs, client write log) and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// `--restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreArg {
    /// Restore each snapshot at once (warm standby).
    Continuous,
    /// Keep snapshots; restore the newest at promotion.
    OnPromotion,
}

/// `--replication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicationArg {
    /// Snapshot shipping (the secondaries are separate rafts).
    Snapshot,
    /// One raft, the secondaries' nodes non-voters (zero-loss mode, asynchronous flavour).
    Raft,
}

/// `--promotion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromotionArg {
    /// Restore the newest snapshot before serving.
    Complete,
    /// Serve what the target holds at once.
    Fast,
}

impl DrillArgs {
    /// The drill options these flags describe.
    pub fn options(&self) -> DrillOptions {
        DrillOptions {
            traffic: self.traffic,
            clusters: self.clusters.unwrap_or(match self.replication {
                ReplicationArg::Snapshot => 4,
                ReplicationArg::Raft => 3,
            }),
            raft: (self.replication == ReplicationArg::Raft).then_some(RaftLayout {
                primary_nodes: self.primary_nodes,
                secondary_nodes: self.secondary_nodes,
                sync: self.sync,
            }),
            coordinators: self.coordinators,
            restore: match self.restore {
                RestoreArg::Continuous => RestoreMode::Continuous,
                RestoreArg::OnPromotion => RestoreMode::OnPromotion,
            },
            promotion: match self.promotion {
                PromotionArg::Complete => PromotionMode::Complete,
                PromotionArg::Fast => PromotionMode::Fast,
            },
            fault: self.fault,
            stress: self.stress.clone(),
            exclude: self.exclude.clone(),
            mongodb_uri: self.mongodb_uri.clone().map(Secret::new),
            snapshot_interval: self.snapshot_interval,
            write_period: self.write_period,
            warmup: self.warmup,
            keep: self.keep,
            probe_interval: self.probe_interval,
            confirm: self.confirm,
            report_ttl: self.report_ttl,
            agent_interval: self.agent_interval,
            ..DrillOptions::default()
        }
    }
}

/// Flags that make sense only together: why, when they are given apart.
fn refused(args: &DrillArgs) -> Option<&'static str> {
    (args.sync && args.replication != ReplicationArg::Raft)
        .then_some("--sync is a layout of --replication raft")
}

/// Runs `drill`; returns the exit code.
pub async fn run(args: &DrillArgs) -> i32 {
    if let Some(why) = refused(args) {
        eprintln!("error: {why}");
        return vault_dr_common::exit::USAGE;
    }
    let progress = Progress::new(false);
    let opts = args.options();
    let result = tokio::select! {
        r = drill::run(&opts, &progress) => r,
        _ = vault_dr_common::shutdown::signal() => {
            eprintln!("interrupted: every process of the drill was stopped");
            return INTERRUPTED;
        }
    };
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", drill::render(&report));
            }
            if args.keep {
                eprintln!("run directory kept: {}", report.run_dir.display());
            }
            if report.ok { 0 } else { FAILED }
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                drill::DrillError::Invalid(_) => vault_dr_common::exit::USAGE,
                _ => vault_dr_common::exit::SOFTWARE,
            }
        }
    }
}

/// Runs `bench rto`; returns the exit code.
pub async fn bench_rto(runs: usize, args: &DrillArgs) -> i32 {
    if let Some(why) = refused(args) {
        eprintln!("error: {why}");
        return vault_dr_common::exit::USAGE;
    }
    let progress = Progress::new(false);
    let opts = args.options();
    // Raft is measured in both layouts (asynchronous, synchronous) beside the snapshot mode
    // of the lowest RTO (warm standby, fast promotion) in the same run.
    let modes = match opts.raft {
        None => vec![opts],
        Some(_) => {
            let layout = |sync| {
                DrillArgs {
                    sync,
                    ..args.clone()
                }
                .options()
            };
            let snapshot = DrillArgs {
                replication: ReplicationArg::Snapshot,
                restore: RestoreArg::Continuous,
                promotion: PromotionArg::Fast,
                clusters: None,
                sync: false,
                ..args.clone()
            };
            vec![layout(false), layout(true), snapshot.options()]
        }
    };
    let result = tokio::select! {
        r = drill::rto::run(runs, &modes, &progress) => r,
        _ = vault_dr_common::shutdown::signal() => {
            eprintln!("interrupted: every process of the benchmark was stopped");
            return INTERRUPTED;
        }
    };
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", drill::rto::render(&report));
            }
            if report.modes.iter().flat_map(|m| &m.runs).all(|r| r.ok) {
                0
            } else {
                FAILED
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            vault_dr_common::exit::SOFTWARE
        }
    }
}
