//! The Kubernetes traffic switch: patches a client-facing Service's selector to the new
//! primary's pods (conditional on the Service's resourceVersion), or cuts it to a label no pod
//! carries while a failover or planned switchover has not promoted its target yet.
//!
//! The switch is level-triggered: besides the executor's explicit `switch` and `cut`,
//! [`supervise`] has the leader compare the Service with the topology on every tick and
//! correct it (a selector changed by hand, a `helm install` that recreated the Service with
//! the values' first primary, a leader that died between the topology write and the patch).
//! A reading of the topology taken before the latest explicit change is discarded, so the loop
//! never undoes a cut or switch it did not see yet.

use crate::config::ClusterConfig;
use crate::coordination::Coordination;
use crate::coordination::kubernetes::{
    ApiErrors, FIELD_MANAGER, api_code, api_error_kind, api_error_text,
};
use crate::failover::actions::{ActionError, ActionResult, TrafficSwitch};
use crate::model::topology::Topology;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use prometheus::IntCounter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use vault_dr_common::telemetry::Repeats;

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
    /// Explicit `switch`/`cut` calls so far (see [`supervise`]).
    explicit: AtomicU64,
    /// The selector this replica last patched in, and when (the effect time the journal
    /// records for the Switched step when the reconcile loop got there first).
    patched: std::sync::Mutex<Option<Patched>>,
    api_errors: ApiErrors,
}

/// A selector this replica patched into the Service, and when.
type Patched = (BTreeMap<String, String>, chrono::DateTime<chrono::Utc>);

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
            explicit: AtomicU64::new(0),
            patched: std::sync::Mutex::new(None),
            api_errors: ApiErrors::default(),
        }
    }

    /// Counts every failed read or patch (`what` = `service`, by kind) into `api_errors`.
    pub fn with_api_errors(mut self, api_errors: ApiErrors) -> Self {
        self.api_errors = api_errors;
        self
    }

    /// How many explicit `switch`/`cut` calls were made so far.
    pub fn explicit_changes(&self) -> u64 {
        self.explicit.load(Ordering::SeqCst)
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> ActionError {
        ActionError(format!(
            "cannot {what} service {}/{}: {e}",
            self.namespace, self.name
        ))
    }

    /// A request that got no answer in time, counted.
    fn timed_out(&self, what: &str) -> ActionError {
        self.api_errors.count("service", "timeout");
        self.failed(what, "no answer within 10 s")
    }

    /// A request the apiserver refused or that got no answer, counted by kind.
    fn refused(&self, what: &str, e: &kube::Error) -> ActionError {
        self.api_errors.count("service", api_error_kind(e));
        self.failed(what, api_error_text(e))
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
        self.explicit.fetch_add(1, Ordering::SeqCst);
        self.select(&to.selector, &to.name, term).await
    }

    fn switched_at(&self, cluster: &ClusterConfig) -> Option<chrono::DateTime<chrono::Utc>> {
        self.patched_since(&cluster.selector)
    }

    /// Points the Service at a label no pod carries (`vault-dr.io/cut: "<term>"`): its
    /// endpoints empty, new client connections find nobody; the next `switch` replaces it.
    async fn cut(&self, term: u64) -> ActionResult {
        self.explicit.fetch_add(1, Ordering::SeqCst);
        self.select(&cut_selector(term), "no cluster (cut)", term)
            .await
    }
}

/// Selector label of a cut Service: no pod carries it.
pub const CUT_LABEL: &str = "vault-dr.io/cut";

/// The selector of a Service cut in `term`.
pub fn cut_selector(term: u64) -> BTreeMap<String, String> {
    BTreeMap::from([(CUT_LABEL.to_owned(), term.to_string())])
}

/// The selector the client Service must have under `topology`: the target cluster's selector
/// ([`super::target_cluster`]), or the cut selector while a failover or switchover has cut
/// traffic. `None` when the target has no selector (nothing to enforce).
pub fn desired_selector(
    topology: &Topology,
    clusters: &[ClusterConfig],
) -> Option<BTreeMap<String, String>> {
    match super::target_cluster(topology) {
        None => Some(cut_selector(topology.term)),
        Some(name) => clusters
            .iter()
            .find(|c| c.name == name && !c.selector.is_empty())
            .map(|c| c.selector.clone()),
    }
}

/// What one reconciliation of the Service found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The Service already selects what the topology says.
    InPlace,
    /// It selected `from`; it now selects what the topology says.
    Corrected {
        /// The selector it had.
        from: BTreeMap<String, String>,
    },
    /// Left alone this time: an explicit switch or cut came in meanwhile, leadership ended, or
    /// the Service changed under the patch (409). The next tick looks again.
    Skipped,
}

impl KubernetesServiceSwitch {
    fn patched_in(&self, selector: &BTreeMap<String, String>) {
        if let Ok(mut p) = self.patched.lock() {
            *p = Some((selector.clone(), chrono::Utc::now()));
        }
    }

    fn patched_since(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let p = self.patched.lock().ok()?;
        p.as_ref().filter(|(s, _)| s == selector).map(|(_, t)| *t)
    }

    async fn read(&self) -> Result<(BTreeMap<String, String>, Option<String>), ActionError> {
        let service = tokio::time::timeout(WRITE_TIMEOUT, self.services.get(&self.name))
            .await
            .map_err(|_| self.timed_out("read"))?
            .map_err(|e| self.refused("read", &e))?;
        let current = service.spec.and_then(|s| s.selector).unwrap_or_default();
        Ok((current, service.metadata.resource_version))
    }

    /// Makes the Service select `want` unless it already does, or an explicit change came in
    /// since `since` ([`Self::explicit_changes`]) or `leading` turns false before the patch.
    /// One read and at most one conditional patch: a concurrent change wins, and the next call
    /// looks again.
    pub async fn reconcile(
        &self,
        want: &BTreeMap<String, String>,
        since: u64,
        leading: impl Fn() -> bool,
    ) -> Result<Reconciled, ActionError> {
        let (current, rv) = self.read().await?;
        if current == *want {
            return Ok(Reconciled::InPlace);
        }
        // Checked after the read: an explicit change marked before it is seen here, and one
        // marked after it patches after our read, so our conditional patch gets a 409.
        if self.explicit_changes() != since || !leading() {
            return Ok(Reconciled::Skipped);
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = selector_patch(&current, want, rv.as_deref());
        let patched = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.services
                .patch(&self.name, &params, &Patch::Merge(&patch)),
        )
        .await
        .map_err(|_| self.timed_out("patch"))?;
        match patched {
            Ok(_) => {
                self.patched_in(want);
                Ok(Reconciled::Corrected { from: current })
            }
            Err(e) if api_code(&e) == Some(409) => Ok(Reconciled::Skipped),
            Err(e) => Err(self.refused("patch", &e)),
        }
    }

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
            let (current, rv) = self.read().await?;
            if current == *selector {
                let since = self
                    .patched_since(selector)
                    .map(|t| {
                        format!(
                            " since {} (the topology loop patched it in)",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        )
                    })
                    .unwrap_or_default();
                return Ok(format!(
                    "service {}/{} already selects {}{since} ({what}, term {term})",
                    self.namespace,
                    self.name,
                    show_selector(selector),
                ));
            }
            let patch = selector_patch(&current, selector, rv.as_deref());
            let patched = tokio::time::timeout(
                WRITE_TIMEOUT,
                self.services
                    .patch(&self.name, &params, &Patch::Merge(&patch)),
            )
            .await
            .map_err(|_| self.timed_out("patch"))?;
            match patched {
                Ok(_) => {
                    self.patched_in(selector);
                    return Ok(format!(
                        "service {}/{} now selects {} ({what}, term {term}); it selected {}",
                        self.namespace,
                        self.name,
                        show_selector(selector),
                        show_selector(&current)
                    ));
                }
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) => return Err(self.refused("patch", &e)),
            }
        }
        Err(self.failed("patch", "it changed under every attempt"))
    }
}

/// Keeps the client Service selecting what the topology says while `coordination` says we
/// lead: every `period`, reads the topology and [`KubernetesServiceSwitch::reconcile`]s the
/// Service, logging and counting each correction; until `stop` turns true. A failing read or
/// patch is logged when it appears or changes and then once a minute ([`Repeats`]), and retried
/// at the next tick.
pub async fn supervise(
    switch: Arc<KubernetesServiceSwitch>,
    coordination: Arc<dyn Coordination>,
    clusters: Vec<ClusterConfig>,
    period: Duration,
    corrections: IntCounter,
    refusal: crate::group::Refusal,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = Repeats::default();
    loop {
        if *stop.borrow() {
            break;
        }
        // A refusing coordinator (another group's stamp) patches nothing.
        if coordination.is_leader() && !refusal.is_refusing() {
            let since = switch.explicit_changes();
            let outcome = match coordination.read_topology().await {
                Ok(Some(t)) if switch.explicit_changes() == since => {
                    match desired_selector(&t.value, &clusters) {
                        Some(want) => switch
                            .reconcile(&want, since, || coordination.is_leader())
                            .await
                            .map(|r| (r, want, t.value.term)),
                        None => Ok((Reconciled::InPlace, BTreeMap::new(), t.value.term)),
                    }
                }
                Ok(_) => Ok((Reconciled::Skipped, BTreeMap::new(), 0)),
                Err(e) => Err(ActionError(format!("cannot read the topology: {e}"))),
            };
            match outcome {
                Ok((Reconciled::Corrected { from }, want, term)) => {
                    corrections.inc();
                    failing.clear();
                    tracing::warn!(
                        service = %format!("{}/{}", switch.namespace, switch.name),
                        "traffic corrected: the service selected {} but the topology (term {term}) says {}; it now selects {}",
                        show_selector(&from),
                        show_selector(&want),
                        show_selector(&want),
                    );
                }
                Ok(_) => {
                    if let Some(n) = failing.clear() {
                        tracing::info!(
                            "traffic: the client service reconciles again after {n} more failed attempts"
                        );
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if let Some(repeated) = failing.note(&e, std::time::Instant::now()) {
                        tracing::warn!(
                            repeated,
                            "traffic: cannot reconcile the client service: {e}; retrying every {period:?}, logged again once a minute while it lasts"
                        );
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(period) => {}
        }
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

    fn cluster(name: &str, selector: &[(&str, &str)]) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            api_addrs: vec![url::Url::parse("http://127.0.0.1:8200").unwrap()],
            nodes: vec![format!("{name}-0")],
            priority: 0,
            excluded: false,
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_desired_selector_is_the_target_clusters_or_the_cut_until_promoted() {
        use crate::model::Step;
        use crate::model::topology::FailoverInProgress;
        let clusters = [
            cluster("dc1", &[("app", "vault"), ("dc", "dc1")]),
            cluster("dc2", &[("app", "vault"), ("dc", "dc2")]),
            cluster("dc3", &[]),
        ];
        let sel = |dc: &str| {
            Some(BTreeMap::from([
                ("app".to_owned(), "vault".to_owned()),
                ("dc".to_owned(), dc.to_owned()),
            ]))
        };
        let moving = |to: &str, planned: bool, completed: Step| Topology {
            primary: "dc1".into(),
            term: 4,
            failover: Some(FailoverInProgress {
                id: format!("4-dc1-{to}"),
                from: "dc1".into(),
                to: to.into(),
                completed,
                planned,
                raft_node: None,
                raft_handover: false,
            }),
            last_failover_at: None,
            group_id: None,
            fence_pending: Vec::new(),
            pause: None,
            past_pauses: Vec::new(),
            raft_lineage: None,
            automatic_switchovers: Vec::new(),
        };
        let mut later = Topology::initial("dc2");
        later.term = 4;
        let rows = [
            (
                "steady: the primary's pods",
                Topology::initial("dc1"),
                sel("dc1"),
            ),
            ("a later term: its primary's pods", later, sel("dc2")),
            (
                "unplanned, fenced: cut in the topology's term",
                moving("dc2", false, Step::Fenced),
                Some(cut_selector(4)),
            ),
            (
                "unplanned, promoted: the new primary",
                moving("dc2", false, Step::Promoted),
                sel("dc2"),
            ),
            (
                "planned, fenced: cut in the topology's term",
                moving("dc2", true, Step::Fenced),
                Some(cut_selector(4)),
            ),
            (
                "a target with no selector: nothing to enforce",
                moving("dc3", false, Step::Promoted),
                None,
            ),
        ];
        for (name, topology, want) in rows {
            assert_eq!(desired_selector(&topology, &clusters), want, "{name}");
        }
    }
}
