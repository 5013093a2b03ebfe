//! `vault-dr bench rto`: repeats the drill N times and summarises RTO, RPO and the
//! coordinator's accounted loss beside it (p50, p95, max);
//! in the same run it measures OpenBao's own in-cluster failover N times (a fresh 3-node raft
//! cluster with `performance_multiplier = 1`: SIGKILL the active node, time to the first
//! successful write through a surviving node) and prints the ratio of the p50s.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::progress::Progress;
use super::{DrillError, DrillOptions, DrillReport};
use crate::LabCluster;

/// p50, p95 and max of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (None when empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Some(Self {
            n: v.len(),
            p50: rank(0.5),
            p95: rank(0.95),
            max: v[v.len() - 1],
        })
    }
}

/// The figures of one drill run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFigures {
    /// The drill's verdict.
    pub ok: bool,
    /// Fault to first acknowledged write on the new primary.
    pub rto_seconds: Option<f64>,
    /// Acknowledged writes lost.
    pub rpo_writes: Option<u64>,
    /// Age of the oldest lost write at the fault.
    pub rpo_seconds: Option<f64>,
    /// Raft entries at risk by the coordinator's account.
    #[serde(default)]
    pub accounted_entries: Option<u64>,
    /// Seconds at risk by the coordinator's account.
    #[serde(default)]
    pub accounted_seconds: Option<f64>,
    /// Accounted seconds minus `rpo_seconds`.
    #[serde(default)]
    pub loss_difference_seconds: Option<f64>,
    /// The client's write latency before the fault, p50 and p99 in milliseconds.
    #[serde(default)]
    pub write_ms: Option<(f64, f64)>,
    /// Seconds after the fault of each timeline event (where the time goes).
    pub phases: Vec<(String, f64)>,
    /// Problems, if not ok.
    pub problems: Vec<String>,
}

impl From<&DrillReport> for RunFigures {
    fn from(r: &DrillReport) -> Self {
        Self {
            ok: r.ok,
            rto_seconds: r.rto_seconds,
            rpo_writes: r.rpo_writes,
            rpo_seconds: r.rpo_seconds,
            accounted_entries: r.accounted_loss.as_ref().and_then(|l| l.entries()),
            accounted_seconds: r.accounted_loss.as_ref().and_then(|l| l.seconds()),
            loss_difference_seconds: r.loss_difference_seconds,
            write_ms: r
                .client_latency
                .filter(|l| l.before_ms.2 > 0)
                .map(|l| (l.before_ms.0, l.before_ms.1)),
            phases: r
                .timeline
                .iter()
                .map(|e| (e.event.clone(), e.after_fault_seconds))
                .collect(),
            problems: r.problems.clone(),
        }
    }
}

/// The figures of one replication mode in `bench rto`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    /// The mode: `raft (3 voters, 1 non-voter per secondary)` or `snapshot (restore
    /// continuous, promotion fast)`.
    pub mode: String,
    /// Every drill run.
    pub runs: Vec<RunFigures>,
    /// RTO over the runs that produced one.
    pub rto: Option<Summary>,
    /// RPO (writes).
    pub rpo_writes: Option<Summary>,
    /// RPO (seconds).
    pub rpo_seconds: Option<Summary>,
    /// Accounted loss (seconds).
    #[serde(default)]
    pub accounted_seconds: Option<Summary>,
    /// |accounted seconds - RPO seconds| over the runs with both.
    #[serde(default)]
    pub loss_difference: Option<Summary>,
    /// The client's write latency before the fault: the runs' p50s, and their p99s (ms).
    #[serde(default)]
    pub write_p50_ms: Option<Summary>,
    /// See [`ModeReport::write_p50_ms`].
    #[serde(default)]
    pub write_p99_ms: Option<Summary>,
    /// Median seconds after the fault of each timeline event, in timeline order.
    pub phases_p50: Vec<(String, f64)>,
    /// This mode's p50 RTO divided by OpenBao's p50.
    pub ratio_p50: Option<f64>,
}

impl ModeReport {
    /// Summarises the runs of `mode`; `openbao`: the in-cluster failover's summary.
    fn of(mode: String, figures: Vec<RunFigures>, openbao: Option<Summary>) -> Self {
        let vals = |f: &dyn Fn(&RunFigures) -> Option<f64>| -> Vec<f64> {
            figures.iter().filter_map(f).collect()
        };
        let rto = Summary::of(&vals(&|r| r.rto_seconds));
        let mut phases_p50 = Vec::new();
        if let Some(first) = figures.first() {
            for (name, _) in &first.phases {
                let v: Vec<f64> = figures
                    .iter()
                    .filter_map(|r| r.phases.iter().find(|(n, _)| n == name).map(|(_, s)| *s))
                    .collect();
                if let Some(s) = Summary::of(&v) {
                    phases_p50.push((name.clone(), s.p50));
                }
            }
        }
        Self {
            mode,
            rpo_writes: Summary::of(&vals(&|r| r.rpo_writes.map(|w| w as f64))),
            rpo_seconds: Summary::of(&vals(&|r| r.rpo_seconds)),
            accounted_seconds: Summary::of(&vals(&|r| r.accounted_seconds)),
            loss_difference: Summary::of(&vals(&|r| r.loss_difference_seconds.map(f64::abs))),
            write_p50_ms: Summary::of(&vals(&|r| r.write_ms.map(|w| w.0))),
            write_p99_ms: Summary::of(&vals(&|r| r.write_ms.map(|w| w.1))),
            ratio_p50: match (rto, openbao) {
                (Some(a), Some(b)) if b.p50 > 0.0 => Some(a.p50 / b.p50),
                _ => None,
            },
            rto,
            runs: figures,
            phases_p50,
        }
    }
}

/// The result of `bench rto`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RtoReport {
    /// Each mode's figures, in the order given.
    pub modes: Vec<ModeReport>,
    /// OpenBao's in-cluster failover: seconds from killing the active node to the first write.
    pub openbao_failover: Vec<f64>,
    /// Its summary.
    pub openbao: Option<Summary>,
}

/// The label of a drill's mode in the benchmark.
pub fn mode_label(o: &DrillOptions) -> String {
    match o.raft {
        Some(l) => super::raft_label(&l, o.clusters),
        None => format!(
            "snapshot (restore {}, promotion {})",
            o.restore.as_str(),
            o.promotion.as_str()
        ),
    }
}

/// Runs `runs` rounds: in each, one drill of every mode in `modes`, then one OpenBao
/// in-cluster failover, so that every figure is measured side by side on the same machine.
pub async fn run(
    runs: usize,
    modes: &[DrillOptions],
    progress: &Progress,
) -> Result<RtoReport, DrillError> {
    let mut figures: Vec<Vec<RunFigures>> = vec![Vec::new(); modes.len()];
    let mut openbao = Vec::new();
    for i in 0..runs {
        for (m, drill) in modes.iter().enumerate() {
            let name = format!("{} drill {}/{runs}", mode_label(drill), i + 1);
            progress.line(name.clone());
            let quiet = Progress::new(true);
            let r = progress.wait(&name, super::run(drill, &quiet)).await?;
            progress.line(format!(
                "{name}: RTO {} RPO {} writes {} accounted {}{}",
                r.rto_seconds.map_or("-".into(), |v| format!("{v:.2} s")),
                r.rpo_writes.map_or("-".into(), |v| v.to_string()),
                r.rpo_seconds.map_or("-".into(), |v| format!("{v:.2} s")),
                r.accounted_loss
                    .as_ref()
                    .map_or("-".into(), vault_dr_coordinator::model::LossAccount::short),
                if r.ok {
                    String::new()
                } else {
                    format!(" FAILED: {}", r.problems.join("; "))
                }
            ));
            figures[m].push(RunFigures::from(&r));
        }
        let t = progress
            .wait(
                &format!("OpenBao in-cluster failover {}/{runs}", i + 1),
                openbao_failover(),
            )
            .await?;
        progress.line(format!(
            "OpenBao in-cluster failover {}/{runs}: {t:.2} s",
            i + 1
        ));
        openbao.push(t);
    }
    let openbao_summary = Summary::of(&openbao);
    Ok(RtoReport {
        modes: modes
            .iter()
            .zip(figures)
            .map(|(o, f)| ModeReport::of(mode_label(o), f, openbao_summary))
            .collect(),
        openbao_failover: openbao,
        openbao: openbao_summary,
    })
}

/// One OpenBao in-cluster failover: a fresh 3-node cluster with fast election, a write every
/// 50 ms; SIGKILL the active node; seconds until a write through a surviving node succeeds.
pub async fn openbao_failover() -> Result<f64, DrillError> {
    let mut cluster = LabCluster::start_ha("ha", 3, true, None).await?;
    cluster.kv_put("bench/rto", &json!({ "n": 0 })).await?;
    let active = cluster
        .active_node()
        .await
        .ok_or_else(|| DrillError::Client("the HA cluster has no active node".into()))?;
    let survivors: Vec<url::Url> = cluster
        .nodes()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != active)
        .map(|(_, n)| n.api_addr().clone())
        .collect();
    let http = super::workload::client_http()?;
    let root = cluster.root_token().clone();
    let killed = Instant::now();
    cluster.nodes_mut()[active].kill();
    let deadline = killed + Duration::from_secs(60);
    let mut n = 0u64;
    loop {
        for addr in &survivors {
            n += 1;
            let Ok(url) = addr.join("v1/secret/data/bench/rto") else {
                continue;
            };
            let ok = http
                .post(url)
                .header("X-Vault-Token", root.expose())
                .json(&json!({ "data": { "n": n } }))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(killed.elapsed().as_secs_f64());
            }
        }
        if Instant::now() > deadline {
            return Err(DrillError::Client(
                "OpenBao elected no new active node within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The report for people.
pub fn render(r: &RtoReport) -> String {
    let s = |v: &Option<Summary>, unit: &str| match v {
        Some(s) => format!(
            "p50 {:.2}{unit}  p95 {:.2}{unit}  max {:.2}{unit}  (n={})",
            s.p50, s.p95, s.max, s.n
        ),
        None => "-".into(),
    };
    let mut out = format!(
        "vault-dr bench rto: {} round{} of {} drill{} and one OpenBao in-cluster failover, side by side\n",
        r.openbao_failover.len(),
        if r.openbao_failover.len() == 1 {
            ""
        } else {
            "s"
        },
        r.modes.len(),
        if r.modes.len() == 1 { "" } else { "s" }
    );
    for m in &r.modes {
        out.push_str(&format!("{}\n", m.mode));
        out.push_str(&format!("  RTO        {}\n", s(&m.rto, " s")));
        out.push_str(&format!("  RPO        {}\n", s(&m.rpo_writes, " writes")));
        out.push_str(&format!("  RPO age    {}\n", s(&m.rpo_seconds, " s")));
        out.push_str(&format!(
            "  accounted  {}  (the coordinator's loss account, seconds at risk)\n",
            s(&m.accounted_seconds, " s")
        ));
        out.push_str(&format!(
            "  |accounted - RPO age|  {}\n",
            s(&m.loss_difference, " s")
        ));
        out.push_str(&format!(
            "  client write latency before the fault: p50 of the runs' p50 {}, of their p99 {}\n",
            m.write_p50_ms
                .map_or("-".into(), |s| format!("{:.1} ms", s.p50)),
            m.write_p99_ms
                .map_or("-".into(), |s| format!("{:.1} ms", s.p50)),
        ));
        out.push_str("  runs (RTO s, RPO writes, RPO age s, accounted entries, accounted s):");
        for x in &m.runs {
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            out.push_str(&format!(
                " [{} {} {} {} {}]",
                f(x.rto_seconds),
                n(x.rpo_writes),
                f(x.rpo_seconds),
                n(x.accounted_entries),
                f(x.accounted_seconds)
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "  ratio (p50 RTO / OpenBao p50)  {}\n",
            m.ratio_p50.map_or("-".into(), |v| format!("{v:.2}"))
        ));
        out.push_str("  where the time goes (p50 seconds after the fault):");
        for (name, t) in &m.phases_p50 {
            out.push_str(&format!(" {name} {t:.2};"));
        }
        out.push('\n');
        let failed = m.runs.iter().filter(|x| !x.ok).count();
        if failed > 0 {
            out.push_str(&format!("  {failed} drills FAILED:\n"));
            for x in m.runs.iter().filter(|x| !x.ok) {
                out.push_str(&format!("    - {}\n", x.problems.join("; ")));
            }
        }
    }
    out.push_str(&format!(
        "OpenBao in-cluster failover (3 nodes, performance_multiplier 1)  {}\n",
        s(&r.openbao, " s")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_the_accounted_loss_beside_the_rpo() {
        let run = |rpo: f64, accounted: f64| RunFigures {
            ok: true,
            rto_seconds: Some(9.0),
            rpo_writes: Some(20),
            rpo_seconds: Some(rpo),
            accounted_entries: Some(25),
            accounted_seconds: Some(accounted),
            loss_difference_seconds: Some(accounted - rpo),
            write_ms: Some((5.0, 9.0)),
            phases: Vec::new(),
            problems: Vec::new(),
        };
        let runs = vec![run(2.0, 1.8), run(1.0, 1.3)];
        let r = RtoReport {
            modes: vec![
                ModeReport::of(
                    "snapshot (restore continuous, promotion complete)".into(),
                    runs,
                    Summary::of(&[3.0]),
                ),
                ModeReport::of(
                    "raft (3 voters, 1 non-voter per secondary)".into(),
                    Vec::new(),
                    None,
                ),
            ],
            openbao_failover: vec![3.0],
            openbao: Summary::of(&[3.0]),
        };
        let text = render(&r);
        assert!(
            text.contains("  accounted  p50 1.30 s  p95 1.80 s  max 1.80 s  (n=2)"),
            "{text}"
        );
        assert!(
            text.contains("  |accounted - RPO age|  p50 0.20 s"),
            "{text}"
        );
        assert!(
            text.contains("before the fault: p50 of the runs' p50 5.0 ms, of their p99 9.0 ms"),
            "{text}"
        );
        assert!(
            text.contains("[9.00 20 2.00 25 1.80] [9.00 20 1.00 25 1.30]"),
            "{text}"
        );
        assert!(
            text.contains("  ratio (p50 RTO / OpenBao p50)  3.00\n")
                && text.contains("\nraft (3 voters"),
            "{text}"
        );
        assert!(
            text.contains("1 round of 2 drills and one OpenBao in-cluster failover"),
            "{text}"
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.p50, s.p95, s.max), (5, 3.0, 5.0, 5.0));
        let one = Summary::of(&[2.5]).unwrap();
        assert_eq!((one.p50, one.p95, one.max), (2.5, 2.5, 2.5));
        assert!(Summary::of(&[]).is_none());
    }
}
