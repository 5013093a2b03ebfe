//! The Kubernetes traffic switch: patches a client-facing Service's selector to the new
//! primary's pods (conditional on the Service's resourceVersion), or cuts it to a label no pod
//! carries for a planned switchover.

use crate::config::ClusterConfig;
use crate::coordination::kubernetes::{FIELD_MANAGER, api_code};
use crate::failover::actions::{ActionError, ActionResult, TrafficSwitch};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one read or patch of the Service may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The merge patch that makes a Service's selector exactly `target`: keys of `current` that
/// `target` lacks are set to null (a merge patch merges maps), and `resource_version` makes the
/// patch conditional on the Service being unchanged since it was read.
pub fn selector_patch(
    current: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
    resource_version: Option<&str>,
) -> serde_json::Value {
    let mut selector = serde_json::Map::new();
    for key in current.keys().filter(|k| !target.contains_key(*k)) {
        selector.insert(key.clone(), serde_json::Value::Null);
    }
    for (k, v) in target {
        selector.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let mut patch = serde_json::json!({ "spec": { "selector": selector } });
    if let Some(rv) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    patch
}

fn show_selector(selector: &BTreeMap<String, String>) -> String {
    if selector.is_empty() {
        return "nothing".to_owned();
    }
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Kubernetes traffic switch: points a client-facing Service at the new primary's pods by
/// patching its `spec.selector` to the cluster's `selector`. Idempotent.
pub struct KubernetesServiceSwitch {
    services: Api<Service>,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for KubernetesServiceSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesServiceSwitch")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KubernetesServiceSwitch {
    /// Switches Service `name` in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        let namespace = namespace.into();
        Self {
            services: Api::namespaced(client, &namespace),
            namespace,
            name: name.into(),
        }
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> ActionError {
        ActionError(format!(
            "cannot {what} service {}/{}: {e}",
            self.namespace, self.name
        ))
    }
}

#[async_trait]
impl TrafficSwitch for KubernetesServiceSwitch {
    async fn switch(&self, to: &ClusterConfig, term: u64) -> ActionResult {
        if to.selector.is_empty() {
            return Err(ActionError(format!(
                "cluster {} has no selector to point service {}/{} at",
                to.name, self.namespace, self.name
            )));
        }
        self.select(&to.selector, &to.name, term).await
    }

    /// Points the Service at a label no pod carries (`vault-dr.io/cut: "<term>"`): its
    /// endpoints empty, new client connections find nobody; the next `switch` replaces it.
    async fn cut(&self, term: u64) -> ActionResult {
        let selector = BTreeMap::from([(CUT_LABEL.to_owned(), term.to_string())]);
        self.select(&selector, "no cluster (cut)", term).await
    }
}

/// Selector label of a cut Service: no pod carries it.
pub const CUT_LABEL: &str = "vault-dr.io/cut";

impl KubernetesServiceSwitch {
    /// Makes the Service select exactly `selector` (`what` names it in the journal).
    async fn select(
        &self,
        selector: &BTreeMap<String, String>,
        what: &str,
        term: u64,
    ) -> ActionResult {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        // A concurrent change of the Service makes the conditional patch fail with 409: read
        // again and retry a few times.
        for _ in 0..3 {
            let service = tokio::time::timeout(WRITE_TIMEOUT, self.services.get(&self.name))
                .await
                .map_err(|_| self.failed("read", "no answer within 10 s"))?
                .map_err(|e| self.failed("read", e))?;
            let current = service.spec.and_then(|s| s.selector).unwrap_or_default();
            if current == *selector {
                return Ok(format!(
                    "service {}/{} already selects {} ({what}, term {term})",
                    self.namespace,
                    self.name,
                    show_selector(selector),
                ));
            }
            let patch = selector_patch(
                &current,
                selector,
                service.metadata.resource_version.as_deref(),
            );
            let patched = tokio::time::timeout(
                WRITE_TIMEOUT,
                self.services
                    .patch(&self.name, &params, &Patch::Merge(&patch)),
            )
            .await
            .map_err(|_| self.failed("patch", "no answer within 10 s"))?;
            match patched {
                Ok(_) => {
                    return Ok(format!(
                        "service {}/{} now selects {} ({what}, term {term}); it selected {}",
                        self.namespace,
                        self.name,
                        show_selector(selector),
                        show_selector(&current)
                    ));
                }
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) => return Err(self.failed("patch", e)),
            }
        }
        Err(self.failed("patch", "it changed under every attempt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_patch_replaces_the_whole_selector_under_a_precondition() {
        let current = BTreeMap::from([
            ("app".to_owned(), "vault".to_owned()),
            ("cluster".to_owned(), "dc1".to_owned()),
            ("zone".to_owned(), "a".to_owned()),
        ]);
        let target = BTreeMap::from([
            ("app".to_owned(), "vault".to_owned()),
            ("cluster".to_owned(), "dc2".to_owned()),
        ]);
        let patch = selector_patch(&current, &target, Some("42"));
        assert_eq!(
            patch,
            serde_json::json!({
                "metadata": { "resourceVersion": "42" },
                "spec": { "selector": { "app": "vault", "cluster": "dc2", "zone": null } }
            })
        );
    }
}
