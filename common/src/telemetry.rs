//! Logging set-up shared by both binaries.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`).
/// `json = true` writes one JSON object per line (for log shippers). Calling it twice is harmless.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Prefix of every agent metric: `vault_dr_agent_<thing>_<unit>`.
pub const AGENT_METRICS_PREFIX: &str = "vault_dr_agent_";
/// Prefix of every coordinator metric: `vault_dr_coordinator_<thing>_<unit>`.
pub const COORDINATOR_METRICS_PREFIX: &str = "vault_dr_coordinator_";
