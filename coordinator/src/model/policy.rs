//! The detection and choice [`Policy`] (the `[policy]` section once validated) and its
//! [`QuorumMode`]. Plain data shared by the detector, the scorer, the executor and the API;
//! parsing and validation are in `config`.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use vault_dr_common::PromotionMode;

/// How many secondaries' agents must also fail to reach the primary before it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuorumMode {
    /// More than half of the secondaries with a fresh report (the default).
    #[default]
    Majority,
    /// Every secondary with a fresh report.
    All,
    /// At least one secondary.
    Any,
}

/// Detection and choice policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// How often the leader builds a view and probes every cluster.
    #[serde(with = "humantime_serde_compat")]
    pub probe_interval: Duration,
    /// Timeout of one direct probe.
    #[serde(with = "humantime_serde_compat")]
    pub probe_timeout: Duration,
    /// Consecutive evaluations on which all three observers must agree before the primary is
    /// down.
    pub confirm: u32,
    /// A report older than this is stale: it neither proves the primary alive nor makes a
    /// secondary eligible.
    #[serde(with = "humantime_serde_compat")]
    pub report_ttl: Duration,
    /// A secondary further behind than this many raft entries is not eligible (`None`: no limit).
    pub max_lag_entries: Option<u64>,
    /// A secondary whose newest replicated data is older than this is not eligible.
    #[serde(with = "humantime_serde_compat")]
    pub max_lag: Duration,
    /// After a failover, no automatic failover for this long (anti-flap).
    #[serde(with = "humantime_serde_compat")]
    pub cooldown: Duration,
    /// Agreement needed among the secondaries' agents.
    pub quorum: QuorumMode,
    /// How long report history is kept in the store.
    #[serde(with = "humantime_serde_compat")]
    pub report_retention: Duration,
    /// How a promoted secondary gets its data (`complete`: restore the newest snapshot first,
    /// the default; `fast`: promote what it has once it restored a snapshot). Goes into every desired state and into the
    /// failover's journal record.
    #[serde(default)]
    pub promotion: PromotionMode,
    /// How long the target has to carry out its promotion (restore, or raft recovery and
    /// election; its agent then acknowledges the term) before the attempt counts as failed:
    /// the failure is journaled with the agents' reasons and alerted, and the promotion is
    /// tried again for as long as this coordinator leads.
    #[serde(default = "default_promote_timeout", with = "humantime_serde_compat")]
    pub promote_timeout: Duration,
    /// The degraded-primary rule (`[policy.degraded]`; `None`: off, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<DegradedPolicy>,
}

fn default_promote_timeout() -> Duration {
    Duration::from_secs(30)
}

/// When a primary that still serves is moved away from by an automatic planned switchover
/// (see `failover::degraded`).
///
/// Each observer (the primary's agents, the coordinator's own probe) gives two figures of a
/// cluster over its newest [`vault_dr_common::latency::RECENT_PROBES`] probes: the **latency**
/// (their p99) and the **error rate** (their failed share). An observer calls the primary *over* when a figure exceeds
/// its threshold and is at least `worse_factor` times the best eligible secondary's figure by
/// the same observer. The primary is degraded once both observers have called it over, without
/// a tick of either falling below the `*_clear` thresholds, for `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegradedPolicy {
    /// How long the primary must stay over before it is moved.
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    /// The latency (p99 of the recent probes) above which a primary is over.
    #[serde(with = "humantime_serde_compat")]
    pub latency_p99: Duration,
    /// The latency below which it is no longer over (hysteresis; below `latency_p99`).
    #[serde(with = "humantime_serde_compat")]
    pub latency_p99_clear: Duration,
    /// The failed share (0..1) above which a primary is over.
    pub error_ratio: f64,
    /// The failed share below which it is no longer over (below `error_ratio`).
    pub error_ratio_clear: f64,
    /// How many times worse than the best eligible secondary's a figure must be (so that a
    /// slowdown of every cluster, e.g. of the network, never moves the primary).
    pub worse_factor: f64,
    /// At most this many automatic switchovers in any 24 hours.
    pub max_per_day: u32,
}

impl Default for DegradedPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            latency_p99: Duration::from_millis(500),
            latency_p99_clear: Duration::from_millis(250),
            error_ratio: 0.10,
            error_ratio_clear: 0.05,
            worse_factor: 3.0,
            max_per_day: 2,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(800),
            confirm: 3,
            report_ttl: Duration::from_secs(5),
            max_lag_entries: None,
            max_lag: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            quorum: QuorumMode::Majority,
            report_retention: Duration::from_secs(24 * 3600),
            promotion: PromotionMode::Complete,
            promote_timeout: default_promote_timeout(),
            degraded: None,
        }
    }
}

/// `serde` for `Duration` as a humantime string ("1s", "250ms", "5m").
pub mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialises as "1s 500ms".
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Parses "1s", "250ms", "5m".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
    }

    /// The same for an optional field (`#[serde(default, with = "…::option")]`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        /// Serialises `Some` as "1s 500ms" (`None` is skipped by the field's attributes).
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Parses "1s", "250ms", "5m".
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = String::deserialize(d)?;
            humantime::parse_duration(&text)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
        }
    }
}
