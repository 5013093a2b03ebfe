//! Errors of the coordinator service.

use crate::config::ConfigError;
use crate::coordination::CoordinationError;
use crate::store::StoreError;

/// What can stop the coordinator from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The coordination backend failed.
    #[error("coordination: {0}")]
    Coordination(#[from] CoordinationError),
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of the coordinator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
