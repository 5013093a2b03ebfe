//! `bench-replication`: the snapshot backend against real OpenBao.
//!
//! ```text
//! cargo run --release -p vault-dr-lab --bin bench-replication -- [--secrets 10000] [--seconds 60] [--rate 50]
//! ```
//!
//! 1. Lag: p holds `--secrets` KV v2 secrets; an in-process agent on s1 (`--replication
//!    snapshot`, continuous, default 5 s interval, DR token) follows p while a writer puts
//!    `--rate` secrets a second on p for `--seconds`. The agent's reported lag (entries and
//!    seconds) is sampled every 250 ms: p50 / p95 / max.
//! 2. Restore: the same snapshot (pulled from p, a fresh sentinel secret written just before)
//!    restored by the agent's path (`restore_snapshot`: POST, then wait for the applied index
//!    and a served token request) into s2 and by `bao operator raft snapshot restore` into s3,
//!    three rounds. Both are timed from the start of the restore to the sentinel being readable
//!    on the target (50 ms polls); the agent's own "restored" signal is printed too. Goal:
//!    ours / bao <= 1.2 (medians).
//!
//! Exit code 1 when the ratio goal is missed, 2 on a set-up error.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use url::Url;
use vault_dr_agent::Config;
use vault_dr_agent::config::{CoordinatorConfig, ReplicationConfig, RestoreMode, SnapshotConfig};
use vault_dr_common::{DesiredState, PromotionMode, Report, Role, Secret};
use vault_dr_lab::{LabCluster, tools};

/// Goal: our restore time / bao's at most this.
const GOAL_RATIO: f64 = 1.2;
/// Restore rounds.
const ROUNDS: usize = 3;

struct Args {
    secrets: usize,
    seconds: u64,
    rate: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        secrets: 10_000,
        seconds: 60,
        rate: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secrets" => a.secrets = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            other => bail!("unknown flag {other} (--secrets, --seconds, --rate)"),
        }
    }
    Ok(a)
}

fn http() -> reqwest::Client {
    vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

async fn put(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    path: &str,
    v: Value,
) -> Result<()> {
    let r = http
        .post(addr.join(&format!("v1/secret/data/{path}"))?)
        .header("X-Vault-Token", token.expose())
        .json(&json!({ "data": v }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("write {path}: HTTP {}", r.status());
    }
    Ok(())
}

async fn readable(http: &reqwest::Client, addr: &Url, token: &Secret, path: &str) -> bool {
    let Ok(url) = addr.join(&format!("v1/secret/data/{path}")) else {
        return false;
    };
    matches!(
        http.get(url)
            .header("X-Vault-Token", token.expose())
            .timeout(Duration::from_secs(2))
            .send()
            .await,
        Ok(r) if r.status() == 200
    )
}

async fn wait_readable(
    http: &reqwest::Client,
    addr: &Url,
    token: &Secret,
    path: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !readable(http, addr, token, path).await {
        if Instant::now() > deadline {
            bail!("{path} not readable at {addr} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

/// A fake coordinator answering every report with the desired state of its cluster.
async fn coordinator(
    desired: Vec<DesiredState>,
    seen: Arc<std::sync::Mutex<Vec<Report>>>,
) -> Result<Url> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/reports",
        post(move |axum::Json(r): axum::Json<Report>| {
            let d = desired.iter().find(|d| d.cluster == r.cluster).cloned();
            if let Ok(mut s) = seen.lock() {
                s.push(r);
            }
            async move { d.map(axum::Json).ok_or(axum::http::StatusCode::NOT_FOUND) }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let url = Url::parse(&format!("http://{}", l.local_addr()?))?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(url)
}

fn desired(term: u64, cluster: &str, primary: &LabCluster) -> DesiredState {
    let is_primary = cluster == primary.name();
    DesiredState {
        term,
        cluster: cluster.to_owned(),
        role: if is_primary {
            Role::Primary
        } else {
            Role::Secondary
        },
        primary: primary.name().to_owned(),
        primary_api_addr: (!is_primary).then(|| primary.api_addr().clone()),
        failover_in_progress: false,
        promotion: PromotionMode::Complete,
        final_snapshot_from: None,
        primary_suspect: false,
        raft_formed_term: None,
        raft_recover_node: None,
        raft_formed_by: None,
        raft_handover: false,
    }
}

async fn start_agent(
    c: &LabCluster,
    coord: &Url,
    token: &Secret,
    dir: &std::path::Path,
) -> Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let mut config = Config::minimal(c.name(), c.nodes()[0].name(), c.api_addr().clone());
    config.interval = Duration::from_millis(250);
    config.vault.token = Some(token.clone());
    config.coordinator = Some(CoordinatorConfig {
        url: coord.clone(),
        token: Secret::new("bench"),
        ca_certs: Vec::new(),
    });
    config.replication = ReplicationConfig::Snapshot(SnapshotConfig {
        dir: dir.join(format!("{}-snap", c.name())),
        interval: vault_dr_agent::config::DEFAULT_SNAPSHOT_INTERVAL,
        keep: 3,
        restore: RestoreMode::Continuous,
        quarantine_dir: dir.join(format!("{}-quarantine", c.name())),
    });
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(vault_dr_agent::run(config, l, async {
        let _ = stopped.await;
    }));
    Ok((url, stop))
}

async fn report(http: &reqwest::Client, agent: &str) -> Option<Report> {
    http.get(format!("{agent}/v1/report"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn run() -> Result<bool> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let bao = tools::find("bao")?;
    println!("starting p, s1, s2, s3 (OpenBao, one static seal)…");
    let clusters = LabCluster::start_group_with(&["p", "s1", "s2", "s3"], true, None).await?;
    let (p, s1, s2, s3) = (&clusters[0], &clusters[1], &clusters[2], &clusters[3]);
    let dr = Secret::new(format!("vdr-bench-{}", std::process::id()));
    for c in &clusters {
        c.create_dr_token(&dr).await?;
    }
    let root = p.root_token().clone();
    let h = http();

    // Seed.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let (h, addr, root) = (h.clone(), p.api_addr().clone(), root.clone());
        let n = a.secrets;
        tasks.spawn(async move {
            for i in (w..n).step_by(workers) {
                put(
                    &h,
                    &addr,
                    &root,
                    &format!("bench/seed/{i}"),
                    json!({"i": i, "pad": "x".repeat(64)}),
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!(
        "seeded {} secrets on p in {:.1} s",
        a.secrets,
        started.elapsed().as_secs_f64()
    );

    // Lag under load.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let coord = coordinator(vec![desired(1, "p", p), desired(1, "s1", p)], seen).await?;
    let (ap, _stop_p) = start_agent(p, &coord, &dr, dir.path()).await?;
    let (a1, _stop_1) = start_agent(s1, &coord, &dr, dir.path()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r1 = report(&h, &a1).await;
        let rp = report(&h, &ap).await;
        if r1
            .as_ref()
            .is_some_and(|r| r.applied_term == 1 && r.replication.restored_index.is_some())
            && rp.is_some_and(|r| r.applied_term == 1)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("s1 did not follow p within 120 s: {r1:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "s1 follows p; writing {} secrets/s on p for {} s…",
        a.rate, a.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (h, addr, root, stop) = (h.clone(), p.api_addr().clone(), root.clone(), stop.clone());
        let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                if put(
                    &h,
                    &addr,
                    &root,
                    &format!("bench/load/{n}"),
                    json!({"n": n}),
                )
                .await
                .is_ok()
                {
                    n += 1;
                }
            }
            n
        })
    };
    let (mut entries, mut seconds) = (Vec::new(), Vec::new());
    let mut restoring = 0usize;
    let until = Instant::now() + Duration::from_secs(a.seconds);
    while Instant::now() < until {
        if let Some(r) = report(&h, &a1).await {
            if let Some(l) = r.replication.lag_entries {
                entries.push(l as f64);
            }
            if let Some(l) = r.replication.lag_seconds {
                seconds.push(l);
            }
            if r.vault.state == vault_dr_common::NodeState::Restoring {
                restoring += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.await?;
    entries.sort_by(f64::total_cmp);
    seconds.sort_by(f64::total_cmp);
    let restores = report(&h, &a1)
        .await
        .and_then(|r| r.replication.restored_index);
    println!(
        "lag under {:.1} writes/s ({written} writes, {} samples, {restoring} while restoring, last restored index {restores:?}):",
        written as f64 / a.seconds as f64,
        entries.len()
    );
    println!(
        "  entries p50 {:.0}  p95 {:.0}  max {:.0}",
        pct(&entries, 0.5),
        pct(&entries, 0.95),
        entries.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  seconds p50 {:.2}  p95 {:.2}  max {:.2}",
        pct(&seconds, 0.5),
        pct(&seconds, 0.95),
        seconds.last().copied().unwrap_or(f64::NAN)
    );
    drop((_stop_p, _stop_1));

    // Restore: ours vs bao, the same snapshot each round.
    let (mut ours, mut ours_signal, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let sentinel = format!("bench/sentinel/{round}");
        put(&h, p.api_addr(), &root, &sentinel, json!({"round": round})).await?;
        let body = h
            .get(p.api_addr().join("v1/sys/storage/raft/snapshot")?)
            .header("X-Vault-Token", dr.expose())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?
            .to_vec();
        let meta = vault_dr_agent::replication::snapshot::archive::inspect(&body[..])?;
        let file = dir.path().join(format!("round-{round}.snap"));
        std::fs::write(&file, &body)?;

        let t0 = Instant::now();
        let signal = vault_dr_agent::replication::snapshot::restore_snapshot(
            &h,
            s2.api_addr(),
            &dr,
            body.clone(),
            meta.index,
        )
        .await
        .map_err(|e| anyhow!("our restore: {e}"))?;
        wait_readable(&h, s2.api_addr(), &root, &sentinel).await?;
        let t_ours = t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let out = tokio::process::Command::new(&bao)
            .args(["operator", "raft", "snapshot", "restore"])
            .arg(&file)
            .env("BAO_ADDR", s3.api_addr().as_str().trim_end_matches('/'))
            .env("BAO_TOKEN", dr.expose())
            .output()
            .await
            .context("run bao operator raft snapshot restore")?;
        if !out.status.success() {
            bail!(
                "bao restore failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_readable(&h, s3.api_addr(), &root, &sentinel).await?;
        let t_bao = t0.elapsed().as_secs_f64();
        println!(
            "restore round {round}: {:.1} MB index {}: ours {t_ours:.2} s (restored signal {:.2} s), bao CLI {t_bao:.2} s",
            body.len() as f64 / 1e6,
            meta.index,
            signal.as_secs_f64()
        );
        ours.push(t_ours);
        ours_signal.push(signal.as_secs_f64());
        theirs.push(t_bao);
    }
    let ratio = median(ours.clone()) / median(theirs.clone());
    println!(
        "restore medians: ours {:.2} s (signal {:.2} s), bao {:.2} s; ratio {ratio:.2} (goal <= {GOAL_RATIO})",
        median(ours),
        median(ours_signal),
        median(theirs)
    );
    Ok(ratio <= GOAL_RATIO)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench-replication: {e:#}");
            std::process::exit(2);
        }
    }
}
