//! Wire types and plumbing that both vault-dr binaries use, and nothing else: the agent's
//! [`report::Report`], the coordinator's [`desired::DesiredState`] answer, the [`secret::Secret`]
//! wrapper that keeps tokens out of logs, the [`env::Env`] seam, the retry [`backoff::Backoff`],
//! telemetry set-up, the HTTP client builder and the shutdown signal.

pub mod backoff;
pub mod desired;
pub mod env;
pub mod exit;
pub mod http;
pub mod latency;
pub mod report;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use desired::{DesiredState, PromotionMode, Role};
pub use env::{Env, ProcessEnv};
pub use report::{
    HostStats, LatencySummary, NodeState, PeerProbe, ReplicationMode, ReplicationStatus, Report,
    SCHEMA_VERSION, VaultStatus,
};
pub use secret::Secret;
