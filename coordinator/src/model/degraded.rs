//! The data of the degraded-primary rule: one observer's [`Figures`] of a cluster, the
//! [`DegradedEvidence`] a tick judged, and the [`DegradedClock`] the leader keeps between
//! ticks. Plain data; the logic is `failover::degraded`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What one observer measured of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// p99 of the observer's newest probes, in milliseconds (0 when none answered).
    pub p99_ms: f64,
    /// Failed share of the same probes (0..1).
    pub error_ratio: f64,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p99 {:.0} ms, {:.0} % failed",
            self.p99_ms,
            self.error_ratio * 100.0
        )
    }
}

/// One observer's judgement of the primary against the best eligible secondary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverJudgement {
    /// "agents of p-0" or "coordinator probe".
    pub observer: String,
    /// Its figures of the primary (`None`: it has none, e.g. no fresh report).
    pub primary: Option<Figures>,
    /// Its figures of the secondary compared with (`None`: no eligible secondary, or none
    /// measured).
    pub secondary: Option<Figures>,
    /// Over the upper thresholds and clearly worse than the secondary.
    pub over: bool,
    /// Not yet below the lower thresholds (a running clock goes on).
    pub holding: bool,
}

impl fmt::Display for ObserverJudgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.primary, &self.secondary) {
            (None, _) => write!(f, "{}: no figures", self.observer),
            (Some(p), None) => write!(f, "{}: {p}", self.observer),
            (Some(p), Some(s)) => write!(f, "{}: {p} (secondary {s})", self.observer),
        }
    }
}

/// What a tick found about the primary's responsiveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegradedEvidence {
    /// The primary.
    pub primary: String,
    /// The best eligible secondary it was compared with.
    pub secondary: Option<String>,
    /// The primary's agents.
    pub agents: ObserverJudgement,
    /// The coordinator's own probe.
    pub coordinator: ObserverJudgement,
    /// The thresholds, as one phrase ("p99 > 500 ms or > 10 % failed, 3× the secondary's").
    pub thresholds: String,
}

impl DegradedEvidence {
    /// Both observers call the primary over.
    pub fn over(&self) -> bool {
        self.agents.over && self.coordinator.over
    }

    /// Neither observer has fallen below the lower thresholds.
    pub fn holding(&self) -> bool {
        self.agents.holding && self.coordinator.holding
    }
}

impl fmt::Display for DegradedEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; {}; thresholds {}",
            self.agents, self.coordinator, self.thresholds
        )?;
        if let Some(s) = &self.secondary {
            write!(f, "; compared with {s}")?;
        }
        Ok(())
    }
}

/// Since when the primary has been over (kept by the leader between ticks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedClock {
    /// The primary it is about.
    pub primary: String,
    /// The first tick of this stretch on which both observers called it over.
    pub since: DateTime<Utc>,
}
