//! [`LatencyWindow`]: a rolling window of probe outcomes and its [`LatencySummary`] (p50, p99,
//! failed fraction): the agent's probes of its node, the coordinator's probes of each cluster.

use crate::report::LatencySummary;
use std::collections::VecDeque;

/// How many of the newest probes make the *recent* summary ([`LatencyWindow::summary_of_last`]):
/// the figures of the degraded-primary rule. Forty probes are enough for a failed share to mean
/// something (at 20 % failing, a share below 5 % comes once in about 700 windows), and short
/// enough that the figures follow a degradation within a window: its p99 is the slowest but
/// of them (nearest rank), so one slow probe counts for forty probes only.
pub const RECENT_PROBES: usize = 40;

/// Rolling window of probe outcomes: a latency in milliseconds, or `None` for a failed probe.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    cap: usize,
    samples: VecDeque<Option<f64>>,
}

impl LatencyWindow {
    /// An empty window of at most `cap` probes (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            samples: VecDeque::with_capacity(cap.max(1)),
        }
    }

    /// Adds one probe outcome, dropping the oldest when full.
    pub fn push(&mut self, latency_ms: Option<f64>) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(latency_ms);
    }

    /// p50 and p99 (nearest rank) over successful probes and the failed fraction.
    pub fn summary(&self) -> LatencySummary {
        self.summary_of_last(self.cap)
    }

    /// The same over the newest `n` probes only (e.g. [`RECENT_PROBES`]).
    pub fn summary_of_last(&self, n: usize) -> LatencySummary {
        let skip = self.samples.len().saturating_sub(n);
        let mut ok: Vec<f64> = self.samples.iter().skip(skip).flatten().copied().collect();
        ok.sort_by(f64::total_cmp);
        let n = self.samples.len() - skip;
        let failed = n - ok.len();
        LatencySummary {
            samples: u32::try_from(n).unwrap_or(u32::MAX),
            p50_ms: percentile(&ok, 0.50),
            p99_ms: percentile(&ok, 0.99),
            error_ratio: if n == 0 {
                0.0
            } else {
                failed as f64 / n as f64
            },
        }
    }
}

/// Nearest-rank percentile of sorted values (0.0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_window_rolls_and_counts_failures() {
        let mut w = LatencyWindow::new(4);
        for ms in [10.0, 20.0, 30.0] {
            w.push(Some(ms));
        }
        w.push(None);
        let s = w.summary();
        assert_eq!(s.samples, 4);
        assert_eq!(s.p50_ms, 20.0);
        assert_eq!(s.p99_ms, 30.0);
        assert!((s.error_ratio - 0.25).abs() < 1e-12);
        // Two more successes push out 10 ms and 20 ms.
        w.push(Some(1.0));
        w.push(Some(2.0));
        let s = w.summary();
        assert_eq!(s.samples, 4);
        assert_eq!(s.p99_ms, 30.0);
        assert_eq!(s.p50_ms, 2.0);
        assert!((s.error_ratio - 0.25).abs() < 1e-12);
    }

    #[test]
    fn the_recent_summary_covers_the_newest_probes_only() {
        let mut w = LatencyWindow::new(20);
        for _ in 0..15 {
            w.push(Some(900.0));
        }
        for _ in 0..4 {
            w.push(Some(2.0));
        }
        w.push(None);
        assert_eq!(w.summary().p99_ms, 900.0);
        let r = w.summary_of_last(5);
        assert_eq!((r.samples, r.p99_ms), (5, 2.0));
        assert!((r.error_ratio - 0.2).abs() < 1e-12);
        assert_eq!(w.summary_of_last(100), w.summary());
    }

    #[test]
    fn an_empty_or_all_failed_window_has_zero_latency() {
        assert_eq!(LatencyWindow::new(3).summary(), LatencySummary::default());
        let mut w = LatencyWindow::new(3);
        w.push(None);
        let s = w.summary();
        assert_eq!((s.p50_ms, s.p99_ms, s.error_ratio), (0.0, 0.0, 1.0));
    }
}
