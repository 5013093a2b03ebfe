//! Vault Enterprise replication status: `GET sys/replication/dr/status` and
//! `sys/replication/performance/status` parsed into a [`ReplicationStatus`].
//!
//! OpenBao (and Vault Community) answer 404 `unsupported path` there: that is mode `none`,
//! not an error. A cluster whose DR replication is disabled is asked about performance
//! replication next.

use super::Replicator;
use crate::error::{Error, Result};
use crate::vault::VaultClient;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;
use vault_dr_common::{ReplicationMode, ReplicationStatus};

/// Which Enterprise replication flavour a status answer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sys/replication/dr/status`.
    Dr,
    /// `sys/replication/performance/status`.
    Performance,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Dr => "sys/replication/dr/status",
            Self::Performance => "sys/replication/performance/status",
        }
    }
    fn mode(self) -> ReplicationMode {
        match self {
            Self::Dr => ReplicationMode::EnterpriseDr,
            Self::Performance => ReplicationMode::EnterprisePerformance,
        }
    }
}

/// What one status answer means.
#[derive(Debug, Clone, PartialEq)]
// Short-lived parse result: boxing the status would only add an allocation per probe.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// 404: the server has no such replication (OpenBao, Vault Community).
    Unsupported,
    /// Enterprise, with this kind of replication disabled (`mode: disabled`).
    Disabled,
    /// Enabled: the node's status.
    Enabled(ReplicationStatus),
}

#[derive(Debug, Deserialize)]
struct Body {
    data: Data,
}

#[derive(Debug, Deserialize)]
struct Data {
    mode: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    connection_state: Option<String>,
    #[serde(default)]
    last_wal: Option<u64>,
    #[serde(default)]
    last_dr_wal: Option<u64>,
    #[serde(default)]
    last_performance_wal: Option<u64>,
    #[serde(default)]
    last_remote_wal: Option<u64>,
}

/// Parses one status answer (`status` code and body) of flavour `kind`.
pub fn parse(kind: Kind, status: u16, body: &[u8]) -> Result<Parsed> {
    match status {
        404 => return Ok(Parsed::Unsupported),
        200 => {}
        _ => {
            return Err(Error::VaultStatus {
                what: kind.path(),
                status,
            });
        }
    }
    let b: Body = serde_json::from_slice(body).map_err(|source| Error::VaultDecode {
        what: kind.path(),
        source,
    })?;
    let d = b.data;
    let mode = d.mode.as_str();
    if mode == "disabled" {
        return Ok(Parsed::Disabled);
    }
    let is_primary = mode == "primary";
    // Newer primaries report the flavour's own WAL; older ones only `last_wal`.
    let own_wal = match kind {
        Kind::Dr => d.last_dr_wal,
        Kind::Performance => d.last_performance_wal,
    }
    .or(d.last_wal);
    let replicated_index = if is_primary {
        own_wal
    } else {
        d.last_remote_wal
    };
    let lag_entries = if is_primary {
        Some(0)
    } else {
        match (own_wal, d.last_remote_wal) {
            (Some(local), Some(remote)) => Some(local.saturating_sub(remote)),
            _ => None,
        }
    };
    let seeded = is_primary
        || d.last_remote_wal.is_some_and(|w| w > 0)
        || d.state.as_deref() == Some("stream-wals");
    Ok(Parsed::Enabled(ReplicationStatus {
        mode: kind.mode(),
        seeded,
        lag_entries,
        lag_seconds: None,
        replicated_index,
        state: d.state,
        connection_state: d.connection_state,
        last_wal: own_wal,
        last_remote_wal: d.last_remote_wal,
        last_success_at: None,
        last_error: None,
        ..ReplicationStatus::default()
    }))
}

/// The [`Replicator`] for Vault Enterprise's built-in replication.
#[derive(Debug, Clone)]
pub struct EnterpriseStatus {
    vault: Arc<VaultClient>,
}

impl EnterpriseStatus {
    /// Reads the status from `vault`.
    pub fn new(vault: Arc<VaultClient>) -> Self {
        Self { vault }
    }

    async fn read(&self, kind: Kind) -> Result<Parsed> {
        let (status, body) = self.vault.get_raw(kind.path(), kind.path()).await?;
        parse(kind, status, &body)
    }
}

#[async_trait]
impl Replicator for EnterpriseStatus {
    async fn status(&self) -> ReplicationStatus {
        let fail = |e: Error| ReplicationStatus {
            last_error: Some(e.kind().to_owned()),
            ..Default::default()
        };
        match self.read(Kind::Dr).await {
            Ok(Parsed::Unsupported) => ReplicationStatus::default(),
            Ok(Parsed::Enabled(s)) => s,
            Ok(Parsed::Disabled) => match self.read(Kind::Performance).await {
                Ok(Parsed::Enabled(s)) => s,
                Ok(Parsed::Unsupported | Parsed::Disabled) => ReplicationStatus::default(),
                Err(e) => fail(e),
            },
            Err(e) => fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes from Vault's documentation of the replication status endpoints.
    const DR_PRIMARY: &str = r#"{"request_id":"x","data":{"cluster_id":"d4095d41","known_secondaries":["2"],"last_dr_wal":241,"last_reindex_epoch":"1619032146","last_wal":241,"merkle_root":"c3260c4c","mode":"primary","primary_cluster_addr":"","secondaries":[{"api_address":"https://10.0.0.2:8200","cluster_address":"https://10.0.0.2:8201","connection_status":"connected","last_heartbeat":"2021-04-21T12:19:08-04:00","node_id":"2"}],"state":"running"}}"#;
    const DR_SECONDARY: &str = r#"{"data":{"cluster_id":"d4095d41","connection_state":"ready","known_primary_cluster_addrs":["https://10.0.0.1:8201"],"last_reindex_epoch":"1619032146","last_remote_wal":291,"merkle_root":"c3260c4c","mode":"secondary","primaries":[{"api_address":"https://10.0.0.1:8200","cluster_address":"https://10.0.0.1:8201","connection_status":"connected","last_heartbeat":"2021-04-21T12:19:08-04:00"}],"primary_cluster_addr":"https://10.0.0.1:8201","secondary_id":"2","state":"stream-wals"}}"#;
    const SECONDARY_BEHIND: &str = r#"{"data":{"mode":"secondary","last_wal":300,"last_remote_wal":291,"state":"stream-wals","connection_state":"ready"}}"#;
    const DISABLED: &str = r#"{"data":{"mode":"disabled"}}"#;
    const OPENBAO_404: &str = "{\"errors\":[\"1 error occurred:\\n\\t* unsupported path\\n\\n\"]}";

    #[test]
    fn openbao_404_is_unsupported_not_an_error() {
        assert_eq!(
            parse(Kind::Dr, 404, OPENBAO_404.as_bytes()).unwrap(),
            Parsed::Unsupported
        );
        assert_eq!(ReplicationStatus::default().mode, ReplicationMode::None);
    }

    #[test]
    fn a_dr_primary_has_its_wal_and_no_lag() {
        let Parsed::Enabled(s) = parse(Kind::Dr, 200, DR_PRIMARY.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(s.mode, ReplicationMode::EnterpriseDr);
        assert_eq!(s.state.as_deref(), Some("running"));
        assert_eq!(s.last_wal, Some(241));
        assert_eq!(s.replicated_index, Some(241));
        assert_eq!(s.lag_entries, Some(0));
        assert!(s.seeded);
    }

    #[test]
    fn a_dr_secondary_reports_remote_wal_and_connection_state() {
        let Parsed::Enabled(s) = parse(Kind::Dr, 200, DR_SECONDARY.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(s.connection_state.as_deref(), Some("ready"));
        assert_eq!(s.state.as_deref(), Some("stream-wals"));
        assert_eq!(s.last_remote_wal, Some(291));
        assert_eq!(s.replicated_index, Some(291));
        assert_eq!(
            s.lag_entries, None,
            "a secondary alone does not know the primary's WAL"
        );
        assert!(s.seeded);
    }

    #[test]
    fn lag_is_local_wal_minus_remote_wal_when_both_are_known() {
        let Parsed::Enabled(s) =
            parse(Kind::Performance, 200, SECONDARY_BEHIND.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.mode, ReplicationMode::EnterprisePerformance);
        assert_eq!(s.lag_entries, Some(9));
    }

    #[test]
    fn disabled_and_garbage_are_told_apart() {
        assert_eq!(
            parse(Kind::Dr, 200, DISABLED.as_bytes()).unwrap(),
            Parsed::Disabled
        );
        assert_eq!(
            parse(Kind::Dr, 200, b"<html>").unwrap_err().kind(),
            "decode"
        );
        assert_eq!(parse(Kind::Dr, 500, b"{}").unwrap_err().kind(), "status");
    }
}
