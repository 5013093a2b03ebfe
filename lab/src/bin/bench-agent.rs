//! `bench-agent`: resident memory and CPU of the release `vault-dr-agent` at a 1 s interval
//! against a live OpenBao node, side by side with `prometheus-node-exporter` in the same run.
//!
//! ```text
//! cargo build --release -p vault-dr-agent
//! cargo run --release -p vault-dr-lab --bin bench-agent -- --seconds 60
//! ```
//!
//! Both processes are scraped once a second (as a 1 s Prometheus would), the agent also sends
//! a report every second to a minimal in-process coordinator. RSS comes from
//! `/proc/PID/status` (VmRSS), CPU from `/proc/PID/stat` (utime + stime), sampled each second
//! after both are warm. Exit code 1 when a goal is missed, 2 on a set-up error.

use anyhow::{Context, Result, anyhow, bail};
use std::ffi::OsString;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vault_dr_lab::process::ChildGuard;
use vault_dr_lab::{LabCluster, tools};

/// Goal: agent RSS at most this many MiB.
const GOAL_RSS_MIB: f64 = 15.0;
/// Goal: agent CPU at most this percentage of one core.
const GOAL_CPU_PERCENT: f64 = 1.0;
/// Goal: agent RSS / node-exporter RSS at most this.
const GOAL_RSS_RATIO: f64 = 0.8;

/// VmRSS in KiB and utime+stime in clock ticks of `pid`.
fn sample(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("pid {pid} is gone"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Result<u64> {
        Ok(rest
            .get(n - 3)
            .ok_or_else(|| anyhow!("short stat"))?
            .parse()?)
    };
    Ok((rss_kib, field(14)? + field(15)?))
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// Series of samples of one process.
#[derive(Debug, Default)]
struct Series {
    rss_kib: Vec<u64>,
    first_ticks: Option<(Instant, u64)>,
    last_ticks: Option<(Instant, u64)>,
}

impl Series {
    fn push(&mut self, now: Instant, (rss, ticks): (u64, u64)) {
        self.rss_kib.push(rss);
        self.first_ticks.get_or_insert((now, ticks));
        self.last_ticks = Some((now, ticks));
    }
    fn max_mib(&self) -> f64 {
        self.rss_kib.iter().copied().max().unwrap_or(0) as f64 / 1024.0
    }
    fn mean_mib(&self) -> f64 {
        if self.rss_kib.is_empty() {
            return 0.0;
        }
        self.rss_kib.iter().sum::<u64>() as f64 / self.rss_kib.len() as f64 / 1024.0
    }
    fn cpu_percent(&self, hz: u64) -> f64 {
        match (self.first_ticks, self.last_ticks) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                (c1 - c0) as f64 / hz as f64 / (t1 - t0).as_secs_f64() * 100.0
            }
            _ => 0.0,
        }
    }
}

/// A minimal coordinator: answers every `POST /v1/reports` with a desired state (primary).
async fn fake_coordinator(listener: TcpListener) {
    let body = serde_json::json!({
        "term": 1, "cluster": "bench", "role": "primary", "primary": "bench",
        "primary_api_addr": null, "failover_in_progress": false
    })
    .to_string();
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut chunk = [0u8; 8192];
            // Read the head, then as much body as Content-Length says.
            loop {
                let Ok(n) = sock.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

async fn wait_ok(http: &reqwest::Client, url: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not answer 200 at {url} within 20 s")
}

fn parse_seconds() -> Result<u64> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 60;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds")?
            }
            "-h" | "--help" => {
                println!("bench-agent [--seconds N]   (build the release agent first)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (usage: bench-agent [--seconds N])"),
        }
    }
    if seconds < 5 {
        bail!("--seconds must be at least 5");
    }
    Ok(seconds)
}

async fn bench() -> Result<bool> {
    let seconds = parse_seconds()?;
    // The release agent: this bench runs as `cargo run --release --bin bench-agent`, so it is
    // found beside this executable (or `$VAULT_DR_AGENT_BIN`).
    let agent_bin = tools::built_binary("vault-dr-agent")
        .context("run `cargo build --release -p vault-dr-agent` first")?;
    let exporter = tools::find("prometheus-node-exporter")
        .context("prometheus-node-exporter: run scripts/setup.sh")?;

    let mut clusters = LabCluster::start_group_with(&["bench"], true, None)
        .await
        .context("lab start (run scripts/setup.sh?)")?;
    let cluster = clusters.remove(0);
    let dir = tempfile::tempdir()?;
    // The agent runs with the least-privilege DR token, as in production.
    let dr = vault_dr_common::Secret::new(format!("vdr-bench-{}", std::process::id()));
    cluster
        .create_dr_token(&dr)
        .await
        .context("create the DR token")?;
    let vault_token = dir.path().join("vault-token");
    std::fs::write(&vault_token, dr.expose())?;
    let coord_token = dir.path().join("coordinator-token");
    std::fs::write(&coord_token, "bench-token")?;
    let coord = TcpListener::bind("127.0.0.1:0").await?;
    let coord_url = format!("http://{}", coord.local_addr()?);
    tokio::spawn(fake_coordinator(coord));

    let agent_port = vault_dr_lab::ports::reserve_loopback()?;
    let agent_args: Vec<OsString> = [
        "--vault-addr",
        cluster.api_addr().as_str(),
        "--vault-token-file",
        &vault_token.to_string_lossy(),
        "--vault-pid-file",
        &cluster.nodes()[0].pid_file().to_string_lossy(),
        "--cluster",
        "bench",
        "--node",
        cluster.nodes()[0].name(),
        "--coordinator-url",
        &coord_url,
        "--coordinator-token-file",
        &coord_token.to_string_lossy(),
        "--interval",
        "1s",
        "--listen",
        &format!("127.0.0.1:{agent_port}"),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let agent = ChildGuard::spawn(
        "vault-dr-agent",
        &agent_bin,
        &agent_args,
        &dir.path().join("agent.log"),
    )?;
    let exporter_port = vault_dr_lab::ports::reserve_loopback()?;
    let exporter_args = vec![OsString::from(format!(
        "--web.listen-address=127.0.0.1:{exporter_port}"
    ))];
    let node_exporter = ChildGuard::spawn(
        "prometheus-node-exporter",
        &exporter,
        &exporter_args,
        &dir.path().join("node-exporter.log"),
    )?;

    let http = vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let agent_metrics = format!("http://127.0.0.1:{agent_port}/metrics");
    let exporter_metrics = format!("http://127.0.0.1:{exporter_port}/metrics");
    wait_ok(
        &http,
        &format!("http://127.0.0.1:{agent_port}/readyz"),
        "the agent",
    )
    .await?;
    wait_ok(&http, &exporter_metrics, "node-exporter").await?;
    // Warm-up: a few scrapes and reports before measuring.
    for _ in 0..3 {
        let _ = http.get(&agent_metrics).send().await?.bytes().await?;
        let _ = http.get(&exporter_metrics).send().await?.bytes().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let hz = clock_ticks();
    let (mut a, mut e) = (Series::default(), Series::default());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..=seconds {
        ticker.tick().await;
        // A 1 s Prometheus scrapes both.
        let _ = http.get(&agent_metrics).send().await?.bytes().await?;
        let _ = http.get(&exporter_metrics).send().await?.bytes().await?;
        let now = Instant::now();
        a.push(now, sample(agent.pid())?);
        e.push(now, sample(node_exporter.pid())?);
    }
    let report = http
        .get(format!("http://127.0.0.1:{agent_port}/v1/report"))
        .send()
        .await?
        .text()
        .await?;
    let report: serde_json::Value = serde_json::from_str(&report)?;
    let sent = http.get(&agent_metrics).send().await?.text().await?;
    let sent = sent
        .lines()
        .find(|l| l.starts_with("vault_dr_agent_reports_sent_total"))
        .unwrap_or("")
        .to_owned();

    let ratio = a.max_mib() / e.max_mib().max(f64::MIN_POSITIVE);
    println!(
        "bench-agent: {seconds} s at a 1 s interval, OpenBao {}, both scraped every 1 s",
        cluster.api_addr()
    );
    println!(
        "{:<26} {:>12} {:>13} {:>14}",
        "process", "RSS max MiB", "RSS mean MiB", "CPU % of core"
    );
    println!(
        "{:<26} {:>12.2} {:>13.2} {:>14.3}",
        "vault-dr-agent",
        a.max_mib(),
        a.mean_mib(),
        a.cpu_percent(hz)
    );
    println!(
        "{:<26} {:>12.2} {:>13.2} {:>14.3}",
        "prometheus-node-exporter",
        e.max_mib(),
        e.mean_mib(),
        e.cpu_percent(hz)
    );
    println!("RSS ratio agent/node-exporter (max): {ratio:.3}");
    println!(
        "agent state {} p50 {} ms p99 {} ms; {sent}",
        report["vault"]["state"],
        report["vault"]["latency"]["p50_ms"],
        report["vault"]["latency"]["p99_ms"]
    );
    let goals = [
        (
            format!("agent RSS <= {GOAL_RSS_MIB} MiB"),
            a.max_mib() <= GOAL_RSS_MIB,
        ),
        (
            format!("agent CPU <= {GOAL_CPU_PERCENT}% of one core"),
            a.cpu_percent(hz) <= GOAL_CPU_PERCENT,
        ),
        (
            format!("RSS ratio <= {GOAL_RSS_RATIO}"),
            ratio <= GOAL_RSS_RATIO,
        ),
    ];
    for (goal, met) in &goals {
        println!("goal {goal}: {}", if *met { "met" } else { "NOT met" });
    }
    drop(agent);
    drop(node_exporter);
    Ok(goals.iter().all(|(_, met)| *met))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match bench().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench-agent: {e:#}");
            std::process::exit(2);
        }
    }
}
