//! Classification of `GET /v1/sys/health`: status code plus body into a [`NodeState`] and the
//! identity fields (version, cluster id and name). A pure function, table-tested.

use serde::Deserialize;
use vault_dr_common::NodeState;

/// The fields of a `sys/health` body the agent uses. The state flags are required: a body
/// without them is garbage, not a healthy node.
#[derive(Debug, Clone, Deserialize)]
struct HealthBody {
    initialized: bool,
    sealed: bool,
    standby: bool,
    #[serde(default)]
    performance_standby: bool,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    cluster_name: Option<String>,
}

/// What one health answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Classified state.
    pub state: NodeState,
    /// Server version.
    pub version: Option<String>,
    /// Cluster id (absent while sealed).
    pub cluster_id: Option<String>,
    /// Cluster name (absent while sealed).
    pub cluster_name: Option<String>,
    /// Bounded error kind when the state is [`NodeState::Error`].
    pub error: Option<&'static str>,
}

impl Health {
    fn error(kind: &'static str) -> Self {
        Self {
            state: NodeState::Error,
            version: None,
            cluster_id: None,
            cluster_name: None,
            error: Some(kind),
        }
    }
}

/// Classifies one answer of `GET /v1/sys/health` (default query parameters).
///
/// The documented status codes (200, 429, 473, 501, 503) must come with a JSON body holding
/// `initialized`, `sealed` and `standby`; the body decides, because it is richer than the code
/// (Vault Enterprise sets `performance_standby`). Any other status, or a garbage body, is
/// [`NodeState::Error`] with kind `status` or `decode`.
pub fn classify(status: u16, body: &[u8]) -> Health {
    if !matches!(status, 200 | 429 | 473 | 501 | 503) {
        return Health::error("status");
    }
    let Ok(b) = serde_json::from_slice::<HealthBody>(body) else {
        return Health::error("decode");
    };
    let state = if !b.initialized {
        NodeState::Uninitialized
    } else if b.sealed {
        NodeState::Sealed
    } else if b.performance_standby || status == 473 {
        NodeState::PerformanceStandby
    } else if b.standby {
        NodeState::Standby
    } else {
        NodeState::Active
    };
    // A code that contradicts the body (a proxy rewriting statuses, say) is not trusted either way.
    if NodeState::from_health_status(status) != state {
        return Health::error("status");
    }
    Health {
        state,
        version: b.version,
        cluster_id: b.cluster_id.filter(|s| !s.is_empty()),
        cluster_name: b.cluster_name.filter(|s| !s.is_empty()),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVE: &str = r#"{"initialized":true,"sealed":false,"standby":false,"replication_performance_mode":"primary","replication_dr_mode":"disabled","server_time_utc":1,"version":"2.7.2","cluster_name":"dr-p","cluster_id":"783249de"}"#;
    const STANDBY: &str = r#"{"initialized":true,"sealed":false,"standby":true,"version":"2.7.2","cluster_name":"dr-p","cluster_id":"783249de"}"#;
    const PERF: &str = r#"{"initialized":true,"sealed":false,"standby":true,"performance_standby":true,"version":"1.15.0+ent"}"#;
    const SEALED: &str = r#"{"initialized":true,"sealed":true,"standby":true,"replication_performance_mode":"unknown","version":"2.7.2"}"#;
    const UNINIT: &str = r#"{"initialized":false,"sealed":true,"standby":true,"version":"2.7.2"}"#;

    #[test]
    fn status_code_and_body_classify_as_documented() {
        let table: [(u16, &str, NodeState, Option<&str>); 11] = [
            (200, ACTIVE, NodeState::Active, None),
            (429, STANDBY, NodeState::Standby, None),
            (473, PERF, NodeState::PerformanceStandby, None),
            (503, SEALED, NodeState::Sealed, None),
            (501, UNINIT, NodeState::Uninitialized, None),
            (500, r#"{"errors":[]}"#, NodeState::Error, Some("status")),
            (404, "", NodeState::Error, Some("status")),
            (200, "<html>proxy</html>", NodeState::Error, Some("decode")),
            (200, "{}", NodeState::Error, Some("decode")),
            (200, SEALED, NodeState::Error, Some("status")),
            (503, ACTIVE, NodeState::Error, Some("status")),
        ];
        for (status, body, want, kind) in table {
            let h = classify(status, body.as_bytes());
            assert_eq!(h.state, want, "status {status} body {body}");
            assert_eq!(h.error, kind, "status {status} body {body}");
        }
    }

    #[test]
    fn identity_fields_are_taken_from_the_body() {
        let h = classify(200, ACTIVE.as_bytes());
        assert_eq!(h.version.as_deref(), Some("2.7.2"));
        assert_eq!(h.cluster_id.as_deref(), Some("783249de"));
        assert_eq!(h.cluster_name.as_deref(), Some("dr-p"));
        let sealed = classify(503, SEALED.as_bytes());
        assert_eq!(sealed.cluster_id, None);
        assert_eq!(sealed.version.as_deref(), Some("2.7.2"));
    }
}
