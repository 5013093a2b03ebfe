//! The DR token of a lab group: [`LabCluster::create_dr_token`] writes the `vault-dr` policy
//! (`policies/vault-dr.hcl`, compiled in) and creates a periodic token with a fixed id, with the
//! cluster's root token. Called on every cluster of a group with the same id, it gives agents
//! and coordinators one least-privilege token that keeps working after a snapshot restore (the
//! restored token store is the primary's, which holds the same id).
//!
//! OpenBao 2.7.2 accepts `id` from root on `auth/token/create` (it warns that custom ids are
//! hashed with SHA1 on the wire) and refuses an id with the `hvs.` prefix.

use serde_json::{Value, json};
use vault_dr_common::Secret;

use super::error::LabError;
use super::openbao::LabCluster;

/// Name of the DR policy in every cluster.
pub const DR_POLICY_NAME: &str = "vault-dr";

/// The DR policy, as shipped in `policies/vault-dr.hcl`.
pub const DR_POLICY_HCL: &str = include_str!("../../policies/vault-dr.hcl");

/// Period of the DR token: it never expires while it is renewed at least this often.
pub const DR_TOKEN_PERIOD: &str = "768h";

impl LabCluster {
    /// Writes the `vault-dr` policy and creates the DR token with the fixed `id` (no default
    /// policy, periodic, renewable) using the root token. Idempotent: a token that already
    /// exists with this id is accepted when it carries the policy.
    pub async fn create_dr_token(&self, id: &Secret) -> Result<(), LabError> {
        if id.expose().starts_with("hvs.") || id.is_empty() {
            return Err(LabError::Invalid(
                "a DR token id must be non-empty and must not start with `hvs.`".into(),
            ));
        }
        self.root_call(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{DR_POLICY_NAME}"),
            Some(json!({ "policy": DR_POLICY_HCL })),
        )
        .await?;
        let created = self
            .root_call(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({
                    "id": id.expose(),
                    "policies": [DR_POLICY_NAME],
                    "no_default_policy": true,
                    "period": DR_TOKEN_PERIOD,
                    "renewable": true,
                    "display_name": "vault-dr",
                })),
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            // A second call with the same id: fine when that token is already ours.
            Err(LabError::Api { status: 400, .. }) if self.dr_token_exists(id).await => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a token with `id` exists and carries the DR policy (looked up by root).
    async fn dr_token_exists(&self, id: &Secret) -> bool {
        let found = self
            .root_call(
                reqwest::Method::POST,
                "auth/token/lookup",
                Some(json!({ "token": id.expose() })),
            )
            .await;
        matches!(found, Ok(v) if v
            .pointer("/data/policies")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(|x| x == DR_POLICY_NAME)))
    }

    /// One API call with the root token to the first node; the decoded body (Null when empty).
    async fn root_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, LabError> {
        let what = format!("{method} {path}");
        let url = self
            .api_addr()
            .join(&format!("v1/{path}"))
            .map_err(|e| LabError::Invalid(format!("{what}: {e}")))?;
        let mut req = self
            .client()
            .request(method, url)
            .header("X-Vault-Token", self.root_token().expose());
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| LabError::Http {
            target: self.name().to_owned(),
            what: what.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            // OpenBao's error bodies carry no secrets, but a token create echo could: only the
            // errors array is kept.
            let errors = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(LabError::Api {
                target: self.name().to_owned(),
                what,
                status,
                body: errors,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_grants_what_the_agent_calls_and_no_wildcard_on_sys() {
        for path in [
            "\"sys/storage/raft/snapshot\"",
            "\"cubbyhole/vault-dr-canary\"",
            "\"auth/token/lookup-self\"",
            "\"sys/leader\"",
            "\"sys/storage/raft/autopilot/state\"",
        ] {
            assert!(DR_POLICY_HCL.contains(path), "policy lacks {path}");
        }
        assert!(!DR_POLICY_HCL.contains("\"sys/*\""));
        assert!(!DR_POLICY_HCL.contains("\"*\""));
    }
}
