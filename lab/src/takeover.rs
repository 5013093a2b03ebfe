//! `vault-dr-lab bench takeover`: the leading coordinator SIGKILLed N times in a running group
//! (clusters `p`, `s1`, `s2` with their agents, three coordinators on the local coordination
//! file, the stable client address), while a client writes through the stable address every
//! 100 ms. Per takeover it measures:
//!
//! - **ready**: from the kill to another replica answering `/readyz` 200 (polled every 20 ms);
//! - **agents**: for each agent, from that readiness to the first report the new leader
//!   received from it (its `/v1/clusters` polled every 50 ms: the resolution);
//! - **client**: the longest time between two acknowledged writes from the kill until every
//!   agent reached the new leader, and how many writes failed.
//!
//! The killed replica is started again and the group left to settle before the next kill.
//! Run it against other binaries with `VAULT_DR_BIN` / `VAULT_DR_AGENT_BIN` (e.g. an older
//! build, for a before/after comparison in one sitting).

use crate::LabError;
use crate::drill::rto::Summary;
use crate::harness::Group;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

/// The figures of one takeover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TakeoverRun {
    /// Kill to the new leader's `/readyz` 200, seconds.
    pub ready_seconds: f64,
    /// Per agent (`cluster/node`): new leader ready to its first report there, seconds.
    pub agents_seconds: BTreeMap<String, f64>,
    /// Longest time between two acknowledged client writes around the takeover, seconds.
    pub client_gap_seconds: f64,
    /// Client writes that failed around the takeover.
    pub client_failed: usize,
}

/// The whole benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TakeoverReport {
    /// Every takeover.
    pub runs: Vec<TakeoverRun>,
    /// Kill to ready.
    pub ready: Option<Summary>,
    /// Ready to each agent's first report (every agent of every run).
    pub agents: Option<Summary>,
    /// The longest agent of each run.
    pub slowest_agent: Option<Summary>,
    /// The client's longest gap per run.
    pub client_gap: Option<Summary>,
    /// Failed client writes, all runs.
    pub client_failed: usize,
    /// The coordinator binary measured.
    pub coordinator_binary: String,
}

/// One client write: when it was sent and whether it was acknowledged.
type Attempt = (Instant, bool);

/// Runs `runs` takeovers (see the module documentation).
pub async fn run(runs: usize) -> Result<TakeoverReport, LabError> {
    let mut g = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(3)
        .start()
        .await?;
    let traffic = g
        .traffic_addr()
        .cloned()
        .ok_or_else(|| LabError::Invalid("the group has no stable client address".into()))?;
    let token = g
        .cluster("p")
        .ok_or_else(|| LabError::Invalid("no cluster p".into()))?
        .root_token()
        .clone();
    let http = g.http().clone();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let attempts = attempts.clone();
        let url = traffic
            .join("v1/secret/data/bench-takeover")
            .map_err(|e| LabError::Invalid(format!("stable address: {e}")))?;
        let http = http.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let sent = Instant::now();
                let ok = http
                    .put(url.clone())
                    .header("X-Vault-Token", token.expose())
                    .json(&serde_json::json!({ "data": { "n": n } }))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                attempts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((sent, ok));
            }
        })
    };
    let nodes: usize = g.clusters().iter().map(|c| c.nodes().len()).sum();
    let mut out = Vec::new();
    for i in 0..runs {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = wait_leader(&g, Duration::from_secs(30)).await?;
        let index = g
            .coordinators()
            .iter()
            .position(|c| c.url == leader)
            .ok_or_else(|| LabError::Invalid("the leader is none of the group's".into()))?;
        let killed = Instant::now();
        g.coordinators_mut()[index].kill();
        let (next, ready_at) = wait_ready(&g, Duration::from_secs(30)).await?;
        let ready = killed.elapsed();
        let agents = first_reports(&g, &next, ready_at, nodes, Duration::from_secs(30)).await?;
        let settled = Instant::now();
        let (gap, failed) = client_figures(&attempts, killed, settled);
        let run = TakeoverRun {
            ready_seconds: ready.as_secs_f64(),
            agents_seconds: agents,
            client_gap_seconds: gap,
            client_failed: failed,
        };
        eprintln!(
            "takeover {}/{runs}: ready {:.2} s; agents {}; client gap {:.2} s, {failed} failed",
            i + 1,
            run.ready_seconds,
            run.agents_seconds
                .iter()
                .map(|(n, s)| format!("{n} {s:.2} s"))
                .collect::<Vec<_>>()
                .join(", "),
            gap
        );
        out.push(run);
        g.coordinators_mut()[index].restart()?;
    }
    writer.abort();
    let all_agents: Vec<f64> = out
        .iter()
        .flat_map(|r| r.agents_seconds.values().copied())
        .collect();
    let slowest: Vec<f64> = out
        .iter()
        .filter_map(|r| r.agents_seconds.values().copied().reduce(f64::max))
        .collect();
    let coordinator_binary = crate::tools::built_binary("vault-dr")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("not found: {e}"));
    Ok(TakeoverReport {
        ready: Summary::of(&out.iter().map(|r| r.ready_seconds).collect::<Vec<_>>()),
        agents: Summary::of(&all_agents),
        slowest_agent: Summary::of(&slowest),
        client_gap: Summary::of(&out.iter().map(|r| r.client_gap_seconds).collect::<Vec<_>>()),
        client_failed: out.iter().map(|r| r.client_failed).sum(),
        runs: out,
        coordinator_binary,
    })
}

/// The figures as lines.
pub fn render(r: &TakeoverReport) -> String {
    let s = |x: &Option<Summary>| {
        x.as_ref()
            .map(|s| format!("p50 {:.2} s, p95 {:.2} s, max {:.2} s", s.p50, s.p95, s.max))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "leader takeovers: {} (coordinator {})\n\
         kill -> new leader ready:            {}\n\
         ready -> an agent's first report:    {}\n\
         ready -> the last agent's report:    {}\n\
         client's longest gap between acks:   {}\n\
         client writes failed:                {}\n",
        r.runs.len(),
        r.coordinator_binary,
        s(&r.ready),
        s(&r.agents),
        s(&r.slowest_agent),
        s(&r.client_gap),
        r.client_failed
    )
}

/// The coordinator that leads, by its topology answer.
async fn wait_leader(g: &Group, timeout: Duration) -> Result<Url, LabError> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(l) = g.leader().await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LabError::NotWithin("a leading coordinator".into()))
}

/// Polls every live coordinator's `/readyz` every 20 ms until one answers 200.
async fn wait_ready(g: &Group, timeout: Duration) -> Result<(Url, DateTime<Utc>), LabError> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        for c in g.coordinators().iter().filter(|c| c.pid().is_some()) {
            let Ok(url) = c.url.join("readyz") else {
                continue;
            };
            let ready = g
                .http()
                .get(url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok((c.url.clone(), Utc::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(LabError::NotWithin("a new leader's readiness".into()))
}

/// For each of `nodes` agents, the first report `leader` received after `ready_at`, as seconds
/// after it (polled every 50 ms).
async fn first_reports(
    g: &Group,
    leader: &Url,
    ready_at: DateTime<Utc>,
    nodes: usize,
    timeout: Duration,
) -> Result<BTreeMap<String, f64>, LabError> {
    let mut first: BTreeMap<String, f64> = BTreeMap::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end && first.len() < nodes {
        if let Some(v) = g.get_json(leader, "v1/clusters").await {
            let clusters = v.pointer("/view/clusters").and_then(Value::as_object);
            for (name, c) in clusters.into_iter().flatten() {
                for n in c["nodes"].as_array().into_iter().flatten() {
                    let (Some(node), Some(at)) = (
                        n["node"].as_str(),
                        n["received_at"]
                            .as_str()
                            .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
                    ) else {
                        continue;
                    };
                    let after = (at.with_timezone(&Utc) - ready_at).num_milliseconds();
                    let key = format!("{name}/{node}");
                    if after > 0 && !first.contains_key(&key) {
                        first.insert(key, after as f64 / 1000.0);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if first.len() < nodes {
        return Err(LabError::NotWithin(format!(
            "every agent's report at the new leader ({} of {nodes})",
            first.len()
        )));
    }
    Ok(first)
}

/// The longest time between acknowledged writes sent in `from..to` (counting from the last
/// one before `from`), and how many of those failed.
fn client_figures(attempts: &Mutex<Vec<Attempt>>, from: Instant, to: Instant) -> (f64, usize) {
    let a = attempts.lock().unwrap_or_else(|p| p.into_inner());
    let mut last_ok = a
        .iter()
        .rev()
        .find(|(at, ok)| *ok && *at < from)
        .map(|(at, _)| *at)
        .unwrap_or(from);
    let mut longest = Duration::ZERO;
    let mut failed = 0;
    for (at, ok) in a.iter().filter(|(at, _)| *at >= from && *at <= to) {
        if *ok {
            longest = longest.max(at.saturating_duration_since(last_ok));
            last_ok = *at;
        } else {
            failed += 1;
        }
    }
    longest = longest.max(to.saturating_duration_since(last_ok));
    (longest.as_secs_f64(), failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_gap_counts_from_the_last_ack_before_the_kill_and_to_the_end() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let attempts = Mutex::new(vec![
            (at(0), true),
            (at(100), true),
            (at(200), false),
            (at(300), false),
            (at(400), true),
            (at(500), true),
        ]);
        let (gap, failed) = client_figures(&attempts, at(150), at(550));
        assert_eq!(failed, 2);
        assert!((gap - 0.3).abs() < 1e-9, "{gap}");
        let (gap, failed) = client_figures(&attempts, at(150), at(1500));
        assert_eq!(failed, 2);
        assert!((gap - 1.0).abs() < 1e-9, "{gap}");
    }
}
