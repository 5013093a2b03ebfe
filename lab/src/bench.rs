//! `vault-dr-lab bench` (also `vault-dr bench`): benchmarks that print figures.
//!
//! - `bench scorer`: the scorer over N candidates of a synthetic view.
//! - `bench ingest`: N simulated agents each reporting once a second into one coordinator
//!   process (a child of this one, so its CPU is measured alone): handling latency and CPU.
//! - `bench takeover`: the leading coordinator killed N times ([`crate::takeover`]).

use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vault_dr_common::{NodeState, Report};
use vault_dr_coordinator::failover::scorer::score;
use vault_dr_coordinator::model::Policy;
use vault_dr_coordinator::model::test_util::synthetic;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The scorer over N candidates (goal: at most 5 ms for 1,000).
    Scorer {
        /// Candidates per run.
        #[arg(long, default_value_t = 1000)]
        candidates: usize,
        /// Runs.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
    /// Repeats the drill N times: p50/p95/max RTO and RPO, and OpenBao's own in-cluster
    /// failover measured in the same run, with the ratio.
    Rto {
        /// Drills (and OpenBao in-cluster failovers).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The drill's flags.
        #[command(flatten)]
        drill: Box<crate::drill::command::DrillArgs>,
    },
    /// The leading coordinator killed N times under a client writing through the stable
    /// address: takeover time, each agent's first report at the new leader, the client's gap.
    Takeover {
        /// Takeovers.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The write latency of the raft layouts, asynchronous and synchronous, side by side, on
    /// loopback and with a delay added between the clusters.
    RaftWrites {
        /// Sequential writes per layout, delay and round.
        #[arg(long, default_value_t = 200)]
        writes: usize,
        /// Rounds (alternating between the layouts).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Added to each round trip between the primary and a secondary, e.g. 20ms.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        delay: std::time::Duration,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// N agents reporting once a second into one coordinator (goal: p99 at most 20 ms).
    Ingest {
        /// Simulated agents.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Measured seconds (after a 3 s warm-up).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

/// Runs a benchmark, prints its figures, returns the exit code.
pub async fn main(cmd: BenchCommand) -> i32 {
    let result = match cmd {
        BenchCommand::Scorer {
            candidates,
            iterations,
        } => {
            let f = scorer(candidates, iterations);
            println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
            Ok(())
        }
        BenchCommand::Rto { runs, drill } => {
            return crate::drill::command::bench_rto(runs, &drill).await;
        }
        BenchCommand::Ingest { agents, seconds } => ingest(agents, seconds).await,
        BenchCommand::RaftWrites {
            writes,
            rounds,
            delay,
            json,
        } => match crate::raft_writes::run(writes, rounds, delay).await {
            Ok(r) if json => serde_json::to_string_pretty(&r)
                .map(|text| println!("{text}"))
                .map_err(|e| format!("the figures as JSON: {e}")),
            Ok(r) => {
                print!("{}", crate::raft_writes::render(&r));
                Ok(())
            }
            // A flag out of range is the caller's error: the usage exit, the flag named.
            Err(e @ crate::LabError::Invalid(_)) => {
                eprintln!("error: {e}");
                return vault_dr_common::exit::USAGE;
            }
            Err(e) => Err(e.to_string()),
        },
        BenchCommand::Takeover { runs, json } => match crate::takeover::run(runs).await {
            Ok(r) if json => serde_json::to_string_pretty(&r)
                .map(|text| println!("{text}"))
                .map_err(|e| format!("the figures as JSON: {e}")),
            Ok(r) => {
                print!("{}", crate::takeover::render(&r));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            vault_dr_common::exit::SOFTWARE
        }
    }
}

/// Latency figures of [`scorer`], in microseconds per `score` call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BenchFigures {
    /// Candidates per view.
    pub candidates: usize,
    /// Timed calls.
    pub iterations: usize,
    /// Median duration of one call.
    pub p50_micros: f64,
    /// 99th percentile duration of one call.
    pub p99_micros: f64,
    /// Slowest call.
    pub max_micros: f64,
}

impl fmt::Display for BenchFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scorer over {} candidates, {} iterations: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            self.candidates, self.iterations, self.p50_micros, self.p99_micros, self.max_micros
        )
    }
}

/// Times [`score`] over a synthetic view of `candidates` clusters (varied lag, latency, CPU,
/// memory, some ineligible), `iterations` times after a short warm-up.
pub fn scorer(candidates: usize, iterations: usize) -> BenchFigures {
    let view = synthetic::view(candidates, 0x5eed);
    let policy = Policy::default();
    for _ in 0..iterations.min(10) {
        std::hint::black_box(score(std::hint::black_box(&view), &policy));
    }
    let mut micros: Vec<f64> = (0..iterations.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(score(std::hint::black_box(&view), &policy));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_unstable_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((micros.len() as f64 - 1.0) * q).round() as usize;
        micros.get(i).copied().unwrap_or(0.0)
    };
    BenchFigures {
        candidates,
        iterations: micros.len(),
        p50_micros: pick(0.5),
        p99_micros: pick(0.99),
        max_micros: micros.last().copied().unwrap_or(0.0),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// utime+stime of a process, in seconds, and its RSS in bytes.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, rss_kib * 1024))
}

fn write_config(dir: &Path, port: u16, agents: usize) -> Result<(), crate::LabError> {
    use vault_dr_coordinator::config::{ClusterFile, ClusterRole, ConfigFile, PolicyFile};
    std::fs::write(dir.join("token"), "bench-token\n")
        .map_err(|e| crate::LabError::io("write the bench token", e))?;
    let clusters = 4;
    let per = agents.div_ceil(clusters);
    let mut file = ConfigFile {
        listen: Some(format!("127.0.0.1:{port}")),
        id: Some("bench".into()),
        token_file: Some("token".into()),
        policy: PolicyFile {
            probe_interval: Some(Duration::from_secs(1)),
            ..PolicyFile::default()
        },
        clusters: (0..clusters)
            .map(|c| ClusterFile {
                name: format!("c{c}"),
                role: if c == 0 {
                    ClusterRole::Primary
                } else {
                    ClusterRole::Secondary
                },
                api_addrs: vec!["http://127.0.0.1:9".into()],
                nodes: (0..per).map(|n| format!("c{c}-{n}")).collect(),
                priority: 0,
                excluded: false,
                selector: Default::default(),
            })
            .collect(),
        ..ConfigFile::default()
    };
    file.store.path = Some("store.sqlite".into());
    file.coordination.path = Some("coordination.json".into());
    crate::coordinator_file::write_coordinator_file(&dir.join("config.toml"), &file)
}

/// The shared healthy report (`test_util::report`) of node `node` of cluster `c<cluster>`: the
/// first node active, the others standbys, raft indexes and CPU seconds moving with `seq`.
fn report(cluster: usize, node: usize, seq: u64, started: chrono::DateTime<Utc>) -> Report {
    let mut r = vault_dr_coordinator::model::test_util::report(
        &format!("c{cluster}"),
        &format!("c{cluster}-{node}"),
        Utc::now(),
    );
    r.seq = seq;
    r.agent_started_at = started;
    if node != 0 {
        r.vault.state = NodeState::Standby;
    }
    r.vault.raft_applied_index = Some(1000 + seq);
    r.vault.raft_commit_index = Some(1000 + seq);
    r.host.cpu_seconds_total = Some(seq as f64);
    r
}

async fn ingest(agents: usize, seconds: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = crate::ports::reserve_loopback().map_err(|e| e.to_string())?;
    write_config(dir.path(), port, agents).map_err(|e| e.to_string())?;
    let exe = crate::tools::built_binary("vault-dr").map_err(|e| e.to_string())?;
    let log =
        std::fs::File::create(dir.path().join("coordinator.log")).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .arg("coordinator")
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the coordinator: {e}"))?;
    let pid = child.id().ok_or("coordinator exited at once")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = vault_dr_common::http::client_builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| e.to_string())?;
    let ready_by = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > ready_by {
            return Err("the coordinator did not become leader within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let per = agents.div_ceil(4);
    let warmup = Duration::from_secs(3);
    let total = warmup + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..agents {
        let (http, url) = (http.clone(), format!("{base}/v1/reports"));
        let (cluster, node) = (i / per, i % per);
        tasks.push(tokio::spawn(async move {
            // Spread the agents evenly over the second, like real ones started at random times.
            tokio::time::sleep(Duration::from_secs_f64(i as f64 / agents as f64)).await;
            let started = Utc::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut lat, mut errors, mut seq) = (Vec::new(), 0u64, 0u64);
            while start.elapsed() < total {
                tick.tick().await;
                seq += 1;
                let body = report(cluster, node, seq, started);
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .bearer_auth("bench-token")
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if start.elapsed() >= warmup {
                    if ok {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(warmup).await;
    let (cpu0, _) = proc_usage(pid).ok_or("cannot read the coordinator's /proc")?;
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    let (cpu1, rss) = proc_usage(pid).ok_or("cannot read the coordinator's /proc")?;
    let wall = t0.elapsed().as_secs_f64();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let metrics = metrics.text().await.map_err(|e| e.to_string())?;
    let _ = child.kill().await;
    lat.sort_by(f64::total_cmp);
    let server = server_histogram(&metrics);
    let figures = serde_json::json!({
        "agents": agents,
        "measured_seconds": wall,
        "reports": lat.len(),
        "errors": errors,
        "reports_per_second": lat.len() as f64 / wall,
        "client_latency_ms": {
            "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(f64::NAN)
        },
        "server_handling_ms_p99_upper_bound": server,
        "coordinator_cpu_percent_of_one_core": (cpu1 - cpu0) / wall * 100.0,
        "coordinator_rss_mib": rss as f64 / 1048576.0,
        "goal_p99_ms": 20.0,
        "goal_met": percentile(&lat, 0.99) <= 20.0,
        "note": "client and coordinator share this machine's cores; client latency includes the simulated agents' own scheduling"
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&figures).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Upper bound of the p99 of `vault_dr_coordinator_report_duration_seconds` from its buckets, in ms.
fn server_histogram(text: &str) -> Option<f64> {
    let mut buckets = Vec::new();
    let mut count = None;
    for line in text.lines() {
        if let Some(rest) =
            line.strip_prefix("vault_dr_coordinator_report_duration_seconds_bucket{le=\"")
        {
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, v.trim().parse::<f64>().ok()?));
        } else if let Some(v) =
            line.strip_prefix("vault_dr_coordinator_report_duration_seconds_count ")
        {
            count = v.trim().parse::<f64>().ok();
        }
    }
    let count = count?;
    buckets
        .iter()
        .find(|(_, c)| *c >= count * 0.99)
        .map(|(le, _)| le * 1000.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_benchmark_scores_a_thousand_candidates_within_the_goal() {
        let f = scorer(1_000, 200);
        assert_eq!((f.candidates, f.iterations), (1_000, 200));
        assert!(
            f.p50_micros > 0.0 && f.p50_micros <= f.p99_micros && f.p99_micros <= f.max_micros,
            "{f}"
        );
        // The goal is 5 ms per call; an unoptimised test build on a shared 2-core machine still
        // has to meet it at the median.
        assert!(f.p50_micros < 5_000.0, "{f}");
        println!("{f}");
    }
}
