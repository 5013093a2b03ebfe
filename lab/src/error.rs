//! [`LabError`]: everything that can go wrong while running lab processes. Messages name the
//! cluster or node and, for a server that failed, the log file and its last lines. They never
//! contain a token or a seal key.

use std::path::PathBuf;

/// An error of the local lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A required executable was not found.
    #[error(
        "`{tool}` not found (looked at {looked}); run `bash scripts/setup.sh` in the workspace \
         root to install it, or point {env_var} at it"
    )]
    ToolNotFound {
        /// The tool's name, e.g. `bao`.
        tool: String,
        /// The environment variable that overrides the search, e.g. `VAULT_DR_BAO`.
        env_var: String,
        /// Where it was looked for.
        looked: String,
    },
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The process (node name and program).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A server process exited while it was expected to run.
    #[error("{node}: server exited unexpectedly; log {log}; last lines:\n{tail}")]
    Exited {
        /// The node.
        node: String,
        /// The node's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// A condition was not reached in time.
    #[error("{node}: timed out after {after:?} waiting for {what}; log {log}; last lines:\n{tail}")]
    Timeout {
        /// The node.
        node: String,
        /// What was awaited.
        what: String,
        /// How long was waited.
        after: std::time::Duration,
        /// The node's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// An HTTP request could not be made or its answer not read.
    #[error("{target}: {what}: {source}")]
    Http {
        /// The cluster or node.
        target: String,
        /// The request, e.g. `PUT sys/init`.
        what: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an unexpected status.
    #[error("{target}: {what}: HTTP {status}: {body}")]
    Api {
        /// The cluster or node.
        target: String,
        /// The request, e.g. `POST sys/mounts/secret`.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The response body (error responses of OpenBao carry no secrets).
        body: String,
    },
    /// The server answered 2xx but the body was not what was expected.
    #[error("{target}: {what}: unexpected answer: {detail}")]
    Protocol {
        /// The cluster or node.
        target: String,
        /// The request.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The arguments make no sense (no names, duplicate names, zero nodes).
    #[error("invalid lab request: {0}")]
    Invalid(String),
    /// Something the group should have reached did not happen in time.
    #[error("gave up waiting for {0}")]
    NotWithin(String),
}

impl LabError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
