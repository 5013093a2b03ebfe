//! `vault-dr bench raft-writes`: what each raft layout costs a write. Two DR groups of real
//! OpenBao processes run side by side, one raft each: the asynchronous layout (the primary's 3
//! nodes vote, each of two secondaries has a non-voter) and the synchronous one (2 + 1 + 1
//! voters, the primary's third node a non-voter). Rounds alternate between them, each
//! measuring `writes` sequential KV v2 writes through the primary's leader on loopback, then
//! with the delay added between the clusters: every packet sent to a secondary node's cluster
//! port is held `delay` (the NFQUEUE holder of [`crate::degrade`]), so each round trip of the
//! raft log between the primary and a secondary takes that much longer, while the primary's
//! own nodes and the client (in the primary's site) stay on loopback.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::LabCluster;
use crate::degrade::{PortDegradation, PortFault};
use crate::error::LabError;
use crate::group::RaftLayout;
use crate::openbao::NodeHost;

/// The write latency of one layout at one added delay, over every round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The layout's label (as the drill's).
    pub layout: String,
    /// Whether it is the synchronous layout.
    pub sync: bool,
    /// Milliseconds added to each round trip between the primary and a secondary.
    pub added_ms: u32,
    /// Writes measured.
    pub writes: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

/// The result of `bench raft-writes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Rounds (each measures every row once).
    pub rounds: usize,
    /// Writes per row and round.
    pub writes_per_round: usize,
    /// Every layout at 0 and at the added delay.
    pub rows: Vec<Row>,
}

impl Report {
    /// The synchronous layout's p50 minus the asynchronous one's at `added_ms`.
    pub fn sync_cost_p50(&self, added_ms: u32) -> Option<f64> {
        let p50 = |sync| {
            self.rows
                .iter()
                .find(|r| r.sync == sync && r.added_ms == added_ms)
                .map(|r| r.p50_ms)
        };
        Some(p50(true)? - p50(false)?)
    }
}

/// One layout's running group and its samples.
struct Layout {
    sync: bool,
    label: String,
    clusters: Vec<LabCluster>,
    /// Samples at 0 and at the delay.
    samples: [Vec<f64>; 2],
}

/// Runs the benchmark: `rounds` rounds of `writes` writes per layout and delay.
pub async fn run(writes: usize, rounds: usize, delay: Duration) -> Result<Report, LabError> {
    let ms = u32::try_from(delay.as_millis())
        .map_err(|_| LabError::Invalid("--delay is too long".into()))?;
    if writes == 0 || rounds == 0 || ms == 0 {
        return Err(LabError::Invalid(
            "--writes, --rounds and --delay must be above 0".into(),
        ));
    }
    let launcher = crate::tools::built_binary("vault-dr-launch")?;
    let mut layouts = Vec::new();
    for sync in [false, true] {
        let layout = RaftLayout {
            primary_nodes: 3,
            secondary_nodes: 1,
            sync,
        };
        let names = ["p", "s1", "s2"];
        let sized: Vec<_> = names
            .iter()
            .zip(layout.suffrages(names.len()))
            .map(|(n, s)| (*n, s, NodeHost::default()))
            .collect();
        let clusters = LabCluster::start_raft_group(&sized, &launcher, None).await?;
        layouts.push(Layout {
            sync,
            label: crate::drill::raft_label(&layout, names.len()),
            clusters,
            samples: [Vec::new(), Vec::new()],
        });
    }
    for round in 0..rounds {
        for l in &mut layouts {
            for (slot, added) in [0, ms].into_iter().enumerate() {
                let held = if added > 0 {
                    hold(l, added)?
                } else {
                    Vec::new()
                };
                // The first writes after a change of delay fill the pipe: not measured.
                measure(&l.clusters[0], &format!("warm/{round}"), 5).await?;
                let got =
                    measure(&l.clusters[0], &format!("bench/{round}/{added}"), writes).await?;
                l.samples[slot].extend(got);
                drop(held);
            }
        }
    }
    let mut rows = Vec::new();
    for l in &mut layouts {
        for (slot, added) in [0, ms].into_iter().enumerate() {
            let v = &mut l.samples[slot];
            v.sort_by(f64::total_cmp);
            rows.push(Row {
                layout: l.label.clone(),
                sync: l.sync,
                added_ms: added,
                writes: v.len(),
                p50_ms: vault_dr_common::latency::percentile(v, 0.50),
                p99_ms: vault_dr_common::latency::percentile(v, 0.99),
            });
        }
    }
    Ok(Report {
        rounds,
        writes_per_round: writes,
        rows,
    })
}

/// Holds every packet sent to the cluster port of each secondary node of `l` for `ms`.
fn hold(l: &Layout, ms: u32) -> Result<Vec<PortDegradation>, LabError> {
    let dir = l.clusters[0].nodes()[0].dir().to_path_buf();
    l.clusters[1..]
        .iter()
        .flat_map(|c| c.nodes())
        .map(|n| {
            PortDegradation::start(&[], n.cluster_socket().port(), PortFault::Slow { ms }, &dir)
        })
        .collect()
}

/// `n` sequential writes under `prefix` through the primary; each one's milliseconds.
async fn measure(primary: &LabCluster, prefix: &str, n: usize) -> Result<Vec<f64>, LabError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        primary
            .kv_put(&format!("{prefix}/{i}"), &json!({ "n": i }))
            .await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "vault-dr bench raft-writes: {} rounds of {} sequential KV writes through the primary's \
         leader per layout and delay, alternating, side by side\n",
        r.rounds, r.writes_per_round
    );
    out.push_str(&format!(
        "{:<52} {:>14} {:>9} {:>9} {:>7}\n",
        "LAYOUT", "ADDED RTT MS", "P50 MS", "P99 MS", "WRITES"
    ));
    for row in &r.rows {
        out.push_str(&format!(
            "{:<52} {:>14} {:>9.2} {:>9.2} {:>7}\n",
            row.layout, row.added_ms, row.p50_ms, row.p99_ms, row.writes
        ));
    }
    let mut delays: Vec<u32> = r.rows.iter().map(|x| x.added_ms).collect();
    delays.sort_unstable();
    delays.dedup();
    for d in delays {
        if let Some(c) = r.sync_cost_p50(d) {
            out.push_str(&format!(
                "synchronous minus asynchronous, p50, {d} ms added between clusters: {c:+.2} ms\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn out_of_range_flags_are_refused_before_anything_starts() {
        for (writes, rounds, ms) in [(0, 1, 20), (1, 0, 20), (1, 1, 0)] {
            let got = run(writes, rounds, Duration::from_millis(ms)).await;
            assert!(
                matches!(&got, Err(LabError::Invalid(m)) if m.contains("--writes")),
                "{writes} {rounds} {ms}: {got:?}"
            );
        }
    }

    #[test]
    fn the_report_shows_what_the_synchronous_layout_adds_at_each_delay() {
        let row = |sync, added_ms, p50_ms| Row {
            layout: if sync { "raft synchronous" } else { "raft" }.into(),
            sync,
            added_ms,
            writes: 10,
            p50_ms,
            p99_ms: p50_ms * 2.0,
        };
        let r = Report {
            rounds: 2,
            writes_per_round: 5,
            rows: vec![
                row(false, 0, 5.0),
                row(false, 20, 5.5),
                row(true, 0, 6.0),
                row(true, 20, 26.0),
            ],
        };
        assert_eq!(r.sync_cost_p50(0), Some(1.0));
        assert_eq!(r.sync_cost_p50(20), Some(20.5));
        assert_eq!(r.sync_cost_p50(7), None);
        let text = render(&r);
        assert!(
            text.contains("p50, 20 ms added between clusters: +20.50 ms"),
            "{text}"
        );
        assert!(
            text.contains("p50, 0 ms added between clusters: +1.00 ms"),
            "{text}"
        );
    }
}
