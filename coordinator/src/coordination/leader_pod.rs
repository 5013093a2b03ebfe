//! The leader's pod carries a label, and only it: the coordinator's Service selects that label.
//!
//! Before, the Service selected every replica and the followers answered `/readyz` with 503, so
//! that only the leader was an endpoint; the kubelet then emitted a Warning Event for every
//! failed readiness probe of every follower, all the time. Now every replica is ready while
//! its process serves, and the replica that holds the Lease labels its own pod
//! [`LEADER_LABEL`]`=true`, as CloudNativePG's operator labels the primary's pod for its `-rw`
//! Service. The label follows the Lease, level-triggered:
//!
//! - every [`RECONCILE_EVERY`] and at once when leadership changes, the leader makes sure its own
//!   pod has the label and that no other pod of its group ([`LeaderPod::selector`]) has it — a
//!   leader that died or was cut off from the apiserver kept it;
//! - a replica that does not lead removes the label from its own pod (a container restarted in
//!   the leader's pod starts as a follower, and the pod keeps its labels).
//!
//! So the Service may select a stale pod only between a leader's death and its successor's
//! first reconcile (at most the lease duration plus a period), and a stale pod answers as a
//! follower: agents and the CLI move on to another address, as they do with any follower.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::Coordination;
use super::kubernetes::{ApiErrors, api_error_kind, api_error_text};
use vault_dr_common::telemetry::Repeats;

/// The label the leader's pod carries (value `"true"`).
pub const LEADER_LABEL: &str = "vault-dr.io/leader";
/// How often the labels are checked while leadership does not change.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How often leadership is looked at.
const POLL: Duration = Duration::from_millis(250);
/// How soon a failed reconcile is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The label of this replica's pod and of the other pods of its group.
#[derive(Clone)]
pub struct LeaderPod {
    pods: Api<Pod>,
    own: String,
    selector: String,
    api_errors: ApiErrors,
}

impl std::fmt::Debug for LeaderPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderPod")
            .field("own", &self.own)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// What one reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relabelled {
    /// The label was put on this replica's pod.
    pub labelled_own: bool,
    /// Pods the label was taken from.
    pub unlabelled: Vec<String>,
}

impl LeaderPod {
    /// The pods in `namespace`: this replica's is `own` (its id is its pod name), its group's
    /// are those matching the label selector `selector` (e.g. the chart's
    /// `app.kubernetes.io/instance=vault-dr,app.kubernetes.io/component=coordinator`).
    pub fn new(client: kube::Client, namespace: &str, own: &str, selector: &str) -> Self {
        Self {
            pods: Api::namespaced(client, namespace),
            own: own.to_owned(),
            selector: selector.to_owned(),
            api_errors: ApiErrors::default(),
        }
    }

    /// Counts every failed reconcile (`what` = `pods`, by kind) into `api_errors`.
    pub fn with_api_errors(mut self, api_errors: ApiErrors) -> Self {
        self.api_errors = api_errors;
        self
    }

    /// This replica's pod.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// The group's pods.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Puts the label on this replica's pod and takes it from every other pod of the group
    /// (`leading`), or takes it from this replica's pod (not leading). One list of the group's
    /// pods, and a patch only where a label is wrong (RBAC: pods list and patch).
    pub async fn reconcile(&self, leading: bool) -> Result<Relabelled, kube::Error> {
        let mut done = Relabelled::default();
        let group = self
            .pods
            .list(&ListParams::default().labels(&self.selector))
            .await?;
        let mut own_seen = false;
        for pod in group {
            let Some(name) = pod.metadata.name else {
                continue;
            };
            let has = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LEADER_LABEL))
                .is_some_and(|v| v == "true");
            let own = name == self.own;
            own_seen |= own;
            if !own && !leading {
                // Only the leader touches other pods' labels.
                continue;
            }
            let want = own && leading;
            if has != want {
                self.set(&name, want).await?;
                if want {
                    done.labelled_own = true;
                } else if !own {
                    done.unlabelled.push(name);
                }
            }
        }
        if leading && !own_seen {
            return Err(kube::Error::Service(
                format!(
                    "this replica's pod {} is not among the pods of {:?} (VAULT_DR_ID must be the pod name)",
                    self.own, self.selector
                )
                .into(),
            ));
        }
        Ok(done)
    }

    async fn set(&self, pod: &str, on: bool) -> Result<(), kube::Error> {
        let value = if on {
            serde_json::Value::from("true")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: value } } });
        self.pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// Keeps the label on the leader's pod until `stop` turns true: at once when `coordination`
/// says leadership changed, else every [`RECONCILE_EVERY`]. Each change is logged; a failure
/// is counted, logged when it appears or changes and then once a minute ([`Repeats`]), and
/// retried after [`RETRY`]. On stop, a leader takes the label off its own pod (the next leader
/// puts it on its own).
pub async fn supervise(
    pod: Arc<LeaderPod>,
    coordination: Arc<dyn Coordination>,
    mut stop: watch::Receiver<bool>,
) {
    // The leadership the labels were last made right for, and when to look again.
    let mut done_for: Option<bool> = None;
    let mut next = Instant::now();
    let mut retry_at = Instant::now();
    let mut failing = Repeats::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let leading = coordination.is_leader();
        let now = Instant::now();
        let due = now >= next || (done_for != Some(leading) && now >= retry_at);
        if due {
            match pod.reconcile(leading).await {
                Ok(done) => {
                    done_for = Some(leading);
                    next = Instant::now() + RECONCILE_EVERY;
                    if let Some(n) = failing.clear() {
                        tracing::info!(pod = %pod.own, "leader label reconciled again after {n} more failed attempts");
                    }
                    if done.labelled_own {
                        tracing::info!(pod = %pod.own, "leader: labelled this pod {LEADER_LABEL}=true (the coordinator Service selects it)");
                    }
                    for other in &done.unlabelled {
                        tracing::warn!(pod = %other, "leader: took {LEADER_LABEL} from a pod that does not hold the lease");
                    }
                }
                Err(e) => {
                    // Retried after RETRY, not at every poll (a missing RBAC rule must not
                    // turn into four requests a second).
                    retry_at = Instant::now() + RETRY;
                    next = retry_at;
                    pod.api_errors.count("pods", api_error_kind(&e));
                    let e = api_error_text(&e);
                    if let Some(repeated) = failing.note(&e, Instant::now()) {
                        tracing::warn!(pod = %pod.own, leading, repeated, "cannot set the leader label (pods in the coordinator's namespace, selector {}): {e}; retrying every {RETRY:?}, logged again once a minute while it lasts", pod.selector);
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    if let Err(e) = pod.reconcile(false).await {
        tracing::warn!(pod = %pod.own, "could not take the leader label off this pod on stop: {e}");
    }
}
