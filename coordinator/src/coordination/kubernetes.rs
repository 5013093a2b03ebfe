//! The `kubernetes` coordination backend and its two Kubernetes side effects.
//!
//! - [`KubernetesCoordination`]: leader election on a `coordination.k8s.io/v1` Lease through the
//!   `kube-leader-election` crate (holder = this replica's id, so `kubectl get lease` shows the
//!   leader), and the topology in a ConfigMap written only by create (must not exist) or by
//!   replace carrying the resourceVersion just read, so a stale writer gets 409 Conflict.
//! - [`KubernetesServiceSwitch`]: the traffic switch, a merge patch of a Service's
//!   `spec.selector` to the new primary's pod labels.
//! - [`KubernetesEvents`]: a `core/v1` Event on the topology ConfigMap for every failover step.
//!
//! kube-leader-election acquires an expired lease with an unconditioned merge patch, so two
//! replicas can both believe they won for up to one renew period. Safety never rests on the
//! lease: every term raise is a compare-and-swap on the ConfigMap's resourceVersion.

use super::{Coordination, CoordinationError, LeaseInfo, Result};
use crate::config::{ClusterConfig, CoordinationConfig};
use crate::failover::actions::{ActionError, ActionResult, TrafficSwitch};
use crate::failover::executor::StepHook;
use crate::failover::{FailoverRecord, Step};
use crate::topology::{Topology, Versioned};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Key of the ConfigMap's `data` holding the topology as JSON.
pub const TOPOLOGY_KEY: &str = "topology.json";
/// Field manager and event source of every write this module makes.
pub const FIELD_MANAGER: &str = "vault-dr-coordinator";
/// `reason` of the Event written for every failover step.
pub const EVENT_REASON: &str = "FailoverStep";
/// Longest Event message the apiserver accepts.
const EVENT_MESSAGE_MAX: usize = 1024;
/// Events waiting to be written before new ones are dropped (with a warning).
const EVENT_QUEUE: usize = 256;
/// How long one Event write may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn to_chrono(ts: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.as_second(), u32::try_from(ts.subsec_nanosecond()).ok()?)
}

/// The duration the Lease can express: whole seconds (what kube-leader-election writes into
/// `leaseDurationSeconds`), at least one. Our own leadership deadline uses the same value, so it
/// never outlives the lease other replicas see.
pub fn effective_lease_duration(requested: Duration) -> Duration {
    Duration::from_secs(requested.as_secs().max(1))
}

/// The lease as other replicas judge it at `now`: the holder only while its renewal is fresh.
pub fn lease_info(lease: &Lease, now: Timestamp) -> LeaseInfo {
    let spec = lease.spec.as_ref();
    let transitions = spec
        .and_then(|s| s.lease_transitions)
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0);
    let expires_at = spec.and_then(|s| {
        let renewed = s.renew_time.as_ref()?.0;
        let seconds = i64::from(s.lease_duration_seconds?);
        renewed.checked_add(SignedDuration::from_secs(seconds)).ok()
    });
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    match (holder, expires_at) {
        (Some(holder), Some(expires)) if expires > now => LeaseInfo {
            holder: Some(holder),
            expires_at: to_chrono(expires),
            transitions,
        },
        _ => LeaseInfo {
            holder: None,
            expires_at: None,
            transitions,
        },
    }
}

/// Leader election on a Lease and the topology in a ConfigMap, in one namespace.
pub struct KubernetesCoordination {
    client: kube::Client,
    lock: LeaseLock,
    leases: Api<Lease>,
    configmaps: Api<ConfigMap>,
    namespace: String,
    lease_name: String,
    configmap_name: String,
    id: String,
    lease_duration: Duration,
    renew_period: Duration,
    /// Local monotonic deadline until which we consider ourselves leader.
    leader_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KubernetesCoordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesCoordination")
            .field("namespace", &self.namespace)
            .field("lease_name", &self.lease_name)
            .field("configmap_name", &self.configmap_name)
            .field("id", &self.id)
            .field("lease_duration", &self.lease_duration)
            .field("renew_period", &self.renew_period)
            .finish_non_exhaustive()
    }
}

impl KubernetesCoordination {
    /// Coordination through `client` on Lease `lease_name` and ConfigMap `configmap_name` in
    /// `namespace`, as replica `id`. The lease duration is rounded down to whole seconds (at
    /// least one), which is all a Lease can hold.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        configmap_name: impl Into<String>,
        id: impl Into<String>,
        lease_duration: Duration,
        renew_period: Duration,
    ) -> Self {
        let (namespace, lease_name, id) = (namespace.into(), lease_name.into(), id.into());
        let lease_duration = effective_lease_duration(lease_duration);
        let lock = LeaseLock::new(
            client.clone(),
            &namespace,
            LeaseLockParams {
                lease_name: lease_name.clone(),
                holder_id: id.clone(),
                lease_ttl: lease_duration,
            },
        );
        Self {
            leases: Api::namespaced(client.clone(), &namespace),
            configmaps: Api::namespaced(client.clone(), &namespace),
            client,
            lock,
            namespace,
            lease_name,
            configmap_name: configmap_name.into(),
            id,
            lease_duration,
            renew_period,
            leader_until: Mutex::new(None),
        }
    }

    /// Production constructor: a client from the pod's service account (or the kubeconfig
    /// outside a cluster) and the names from `config`, which must be the `kubernetes` backend.
    pub async fn from_config(config: &CoordinationConfig, id: impl Into<String>) -> Result<Self> {
        let CoordinationConfig::Kubernetes {
            namespace,
            lease_name,
            configmap_name,
            lease_duration,
            renew_period,
        } = config
        else {
            return Err(CoordinationError::Unavailable(
                "the kubernetes backend needs coordination.backend = \"kubernetes\"".into(),
            ));
        };
        let client = kube::Client::try_default().await.map_err(|e| {
            CoordinationError::Unavailable(format!(
                "no Kubernetes client (in-cluster service account or kubeconfig): {e}"
            ))
        })?;
        Ok(Self::new(
            client,
            namespace.clone(),
            lease_name.clone(),
            configmap_name.clone(),
            id,
            *lease_duration,
            *renew_period,
        ))
    }

    /// The client, to share with [`KubernetesServiceSwitch`] and [`KubernetesEvents`].
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The namespace of the Lease and the ConfigMap.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name of the topology ConfigMap (the object failover Events refer to).
    pub fn configmap_name(&self) -> &str {
        &self.configmap_name
    }

    /// The lease duration in force (whole seconds).
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    /// How often the holder is meant to renew.
    pub fn renew_period(&self) -> Duration {
        self.renew_period
    }

    /// Bound on one apiserver round trip: past half the lease a late answer is of no use.
    fn request_timeout(&self) -> Duration {
        (self.lease_duration / 2).max(Duration::from_secs(1))
    }

    async fn timed<T>(&self, what: &str, fut: impl Future<Output = T>) -> Result<T> {
        tokio::time::timeout(self.request_timeout(), fut)
            .await
            .map_err(|_| {
                CoordinationError::Unavailable(format!(
                    "{what}: no answer from the Kubernetes API within {:?}",
                    self.request_timeout()
                ))
            })
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> CoordinationError {
        CoordinationError::Unavailable(format!("{what} in namespace {}: {e}", self.namespace))
    }

    fn set_leader_until(&self, until: Option<Instant>) {
        *self.leader_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    fn topology_configmap(&self, topology: &Topology, version: Option<&str>) -> Result<ConfigMap> {
        let json = serde_json::to_string(topology)
            .map_err(|e| CoordinationError::Corrupt(format!("cannot encode topology: {e}")))?;
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.configmap_name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: version.map(str::to_owned),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_owned(), "vault-dr".to_owned()),
                    (
                        "app.kubernetes.io/component".to_owned(),
                        "topology".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(TOPOLOGY_KEY.to_owned(), json)])),
            ..ConfigMap::default()
        })
    }

    fn versioned(&self, cm: ConfigMap) -> Result<Versioned<Topology>> {
        let version = cm.metadata.resource_version.ok_or_else(|| {
            CoordinationError::Corrupt(format!(
                "configmap {} has no resourceVersion",
                self.configmap_name
            ))
        })?;
        let json = cm
            .data
            .as_ref()
            .and_then(|d| d.get(TOPOLOGY_KEY))
            .ok_or_else(|| {
                CoordinationError::Corrupt(format!(
                    "configmap {} has no {TOPOLOGY_KEY}",
                    self.configmap_name
                ))
            })?;
        let value = serde_json::from_str(json).map_err(|e| {
            CoordinationError::Corrupt(format!("configmap {}: {e}", self.configmap_name))
        })?;
        Ok(Versioned { value, version })
    }
}

#[async_trait]
impl Coordination for KubernetesCoordination {
    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let started = Instant::now();
        let outcome = self
            .timed("lease", self.lock.try_acquire_or_renew())
            .await?;
        let won = match outcome {
            Ok(LeaseLockResult::Acquired(lease)) => lease
                .spec
                .and_then(|s| s.holder_identity)
                .is_some_and(|h| h == self.id),
            Ok(LeaseLockResult::NotAcquired(_)) => false,
            // Another replica created the Lease between our get and our create.
            Err(kube_leader_election::Error::CreateLease(ref e)) if api_code(e) == Some(409) => {
                false
            }
            Err(e @ kube_leader_election::Error::TraverseLease { .. }) => {
                return Err(CoordinationError::Corrupt(format!(
                    "lease {}: {e}",
                    self.lease_name
                )));
            }
            Err(e) => return Err(self.unavailable(&format!("lease {}", self.lease_name), e)),
        };
        // Count the lease from before the write started, less a margin for clock skew and
        // reads, so we stop acting before any other replica can see the lease as expired.
        self.set_leader_until(won.then(|| started + self.lease_duration.mul_f64(0.8)));
        Ok(won)
    }

    fn is_leader(&self) -> bool {
        let until = self.leader_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|u| Instant::now() < u)
    }

    async fn release(&self) -> Result<()> {
        self.set_leader_until(None);
        let what = format!("lease {}", self.lease_name);
        // kube-leader-election's step_down patches without a precondition (it could clear a
        // successor's hold) and leaves the lease unexpired for a second; we replace with the
        // resourceVersion just read, and date the renewal in the past so takeover is at once.
        for _ in 0..3 {
            let Some(mut lease) = self
                .timed(&what, self.leases.get_opt(&self.lease_name))
                .await?
                .map_err(|e| self.unavailable(&what, e))?
            else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.id.as_str()) {
                return Ok(());
            }
            let past = Timestamp::now()
                .checked_sub(SignedDuration::from_secs(2))
                .unwrap_or(Timestamp::UNIX_EPOCH);
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(past));
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            match self
                .timed(&what, self.leases.replace(&self.lease_name, &pp, &lease))
                .await?
            {
                Ok(_) => return Ok(()),
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) => return Err(self.unavailable(&what, e)),
            }
        }
        Err(self.unavailable(&what, "changed under every release attempt"))
    }

    async fn lease(&self) -> Result<LeaseInfo> {
        let what = format!("lease {}", self.lease_name);
        let lease = self
            .timed(&what, self.leases.get_opt(&self.lease_name))
            .await?
            .map_err(|e| self.unavailable(&what, e))?;
        Ok(match lease {
            Some(l) => lease_info(&l, Timestamp::now()),
            None => LeaseInfo {
                holder: None,
                expires_at: None,
                transitions: 0,
            },
        })
    }

    async fn read_topology(&self) -> Result<Option<Versioned<Topology>>> {
        let what = format!("configmap {}", self.configmap_name);
        let cm = self
            .timed(&what, self.configmaps.get_opt(&self.configmap_name))
            .await?
            .map_err(|e| self.unavailable(&what, e))?;
        cm.map(|cm| self.versioned(cm)).transpose()
    }

    async fn write_topology(
        &self,
        topology: &Topology,
        expected: Option<&str>,
    ) -> Result<Versioned<Topology>> {
        let what = format!("configmap {}", self.configmap_name);
        let cm = self.topology_configmap(topology, expected)?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = match expected {
            None => self.timed(&what, self.configmaps.create(&pp, &cm)).await?,
            Some(_) => {
                self.timed(
                    &what,
                    self.configmaps.replace(&self.configmap_name, &pp, &cm),
                )
                .await?
            }
        };
        match written {
            Ok(cm) => self.versioned(cm),
            // 409: AlreadyExists on create, Conflict on a stale replace; 404: the version we
            // expected no longer exists at all. Each means another writer got there first.
            Err(e) if matches!(api_code(&e), Some(409 | 404)) => Err(CoordinationError::Conflict {
                expected: expected.map(str::to_owned),
            }),
            Err(e) => Err(self.unavailable(&what, e)),
        }
    }
}

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
            let service = tokio::time::timeout(EVENT_TIMEOUT, self.services.get(&self.name))
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
                EVENT_TIMEOUT,
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

/// Where a step is when its Event is written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepPhase<'a> {
    /// Written to the journal, about to run.
    Started,
    /// Finished after `seconds`, with `error` when it gave up.
    Finished {
        /// How long it took.
        seconds: f64,
        /// Why it failed, if it did.
        error: Option<&'a str>,
    },
}

/// The Event `type` and message for `step` of `record`: names the step, from, to and term.
pub fn step_message(
    record: &FailoverRecord,
    step: Step,
    phase: StepPhase<'_>,
) -> (&'static str, String) {
    let tail = format!(
        "(from {} to {}, term {})",
        record.from, record.to, record.term
    );
    let (kind, mut message) = match phase {
        StepPhase::Started => (
            "Normal",
            format!("failover {}: step {step} started {tail}", record.id),
        ),
        StepPhase::Finished {
            seconds,
            error: None,
        } => (
            "Normal",
            format!(
                "failover {}: step {step} done in {seconds:.1} s {tail}",
                record.id
            ),
        ),
        StepPhase::Finished {
            seconds,
            error: Some(error),
        } => (
            "Warning",
            format!(
                "failover {}: step {step} failed after {seconds:.1} s {tail}: {error}",
                record.id
            ),
        ),
    };
    if message.len() > EVENT_MESSAGE_MAX {
        let mut end = EVENT_MESSAGE_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    (kind, message)
}

enum EventMsg {
    Write(Box<Event>),
    Flush(oneshot::Sender<()>),
}

/// Writes a `core/v1` Event (reason `FailoverStep`, involvedObject = the topology ConfigMap)
/// for every failover step. [`StepHook`] is synchronous, so Events go through a queue to one
/// writer task; a full queue or a failed write costs a warning, never the failover.
#[derive(Debug)]
pub struct KubernetesEvents {
    queue: mpsc::Sender<EventMsg>,
    namespace: String,
    configmap_name: String,
    id: String,
    seq: AtomicU64,
}

impl std::fmt::Debug for EventMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Write(e) => write!(f, "Write({:?})", e.metadata.name),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl KubernetesEvents {
    /// Events about ConfigMap `configmap_name` in `namespace`, reported by replica `id`. Starts
    /// the writer task, so it must be called inside a Tokio runtime.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        configmap_name: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<Self> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            CoordinationError::Unavailable(format!("the Event writer needs a Tokio runtime: {e}"))
        })?;
        let namespace = namespace.into();
        let events: Api<Event> = Api::namespaced(client, &namespace);
        let (queue, mut rx) = mpsc::channel::<EventMsg>(EVENT_QUEUE);
        handle.spawn(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    EventMsg::Write(event) => {
                        let name = event.metadata.name.clone().unwrap_or_default();
                        let pp = PostParams {
                            field_manager: Some(FIELD_MANAGER.to_owned()),
                            ..PostParams::default()
                        };
                        match tokio::time::timeout(EVENT_TIMEOUT, events.create(&pp, &event)).await
                        {
                            Ok(Ok(_)) => tracing::debug!(event = %name, "failover event written"),
                            Ok(Err(e)) => tracing::warn!(event = %name, "failover event not written: {e}"),
                            Err(_) => tracing::warn!(event = %name, "failover event not written: timed out"),
                        }
                    }
                    EventMsg::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(Self {
            queue,
            namespace,
            configmap_name: configmap_name.into(),
            id: id.into(),
            seq: AtomicU64::new(0),
        })
    }

    /// Waits until every Event queued so far has been written (or has failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(EventMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The Event for `step` of `record`.
    pub fn event(&self, record: &FailoverRecord, step: Step, phase: StepPhase<'_>) -> Event {
        let (kind, message) = step_message(record, step, phase);
        let now = Timestamp::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Event {
            metadata: ObjectMeta {
                // The apiserver's own convention: "<object>.<unique hex>".
                name: Some(format!(
                    "{}.{:x}{:04x}",
                    self.configmap_name,
                    now.as_nanosecond(),
                    seq & 0xffff
                )),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("ConfigMap".to_owned()),
                name: Some(self.configmap_name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(EVENT_REASON.to_owned()),
            message: Some(message),
            type_: Some(kind.to_owned()),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.to_owned()),
                host: None,
            }),
            reporting_component: Some(FIELD_MANAGER.to_owned()),
            reporting_instance: Some(self.id.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Event::default()
        }
    }

    fn emit(&self, record: &FailoverRecord, step: Step, phase: StepPhase<'_>) {
        let event = self.event(record, step, phase);
        if let Err(e) = self.queue.try_send(EventMsg::Write(Box::new(event))) {
            tracing::warn!(failover = %record.id, step = %step, "failover event dropped: {e}");
        }
    }
}

impl StepHook for KubernetesEvents {
    fn started(&self, record: &FailoverRecord, step: Step) {
        self.emit(record, step, StepPhase::Started);
    }

    fn finished(&self, record: &FailoverRecord, step: Step, seconds: f64, error: Option<&str>) {
        self.emit(record, step, StepPhase::Finished { seconds, error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::FailoverStatus;
    use crate::failover::scorer::CandidateTable;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32, transitions: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_fresh_lease_names_its_holder_and_expiry() {
        let info = lease_info(&lease("pod-a", at(0), 5, 3), at(4));
        assert_eq!(info.holder.as_deref(), Some("pod-a"));
        assert_eq!(info.expires_at, to_chrono(at(5)));
        assert_eq!(info.transitions, 3);
    }

    #[test]
    fn an_expired_lease_has_no_holder() {
        let info = lease_info(&lease("pod-a", at(0), 5, 3), at(6));
        assert_eq!(info.holder, None);
        assert_eq!(info.expires_at, None);
        assert_eq!(info.transitions, 3);
    }

    #[test]
    fn a_released_lease_has_no_holder() {
        let info = lease_info(&lease("", at(0), 30, 1), at(1));
        assert_eq!(info.holder, None);
    }

    #[test]
    fn lease_duration_is_whole_seconds_and_at_least_one() {
        assert_eq!(
            effective_lease_duration(Duration::from_millis(5_900)),
            Duration::from_secs(5)
        );
        assert_eq!(
            effective_lease_duration(Duration::from_millis(300)),
            Duration::from_secs(1)
        );
    }

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

    fn record() -> FailoverRecord {
        FailoverRecord {
            id: FailoverRecord::id_for(3, "dc1", "dc2"),
            term: 3,
            from: "dc1".into(),
            to: "dc2".into(),
            planned: false,
            reason: "primary dc1 down".into(),
            decided_at: Utc::now(),
            table: CandidateTable {
                at: Utc::now(),
                candidates: Vec::new(),
                winner: None,
            },
            steps: Vec::new(),
            status: FailoverStatus::InProgress,
        }
    }

    #[test]
    fn step_messages_name_step_from_to_and_term() {
        let r = record();
        let (kind, msg) = step_message(&r, Step::Fenced, StepPhase::Started);
        assert_eq!(kind, "Normal");
        assert_eq!(
            msg,
            "failover 3-dc1-dc2: step fenced started (from dc1 to dc2, term 3)"
        );
        let (kind, msg) = step_message(
            &r,
            Step::Promoted,
            StepPhase::Finished {
                seconds: 1.25,
                error: None,
            },
        );
        assert_eq!(kind, "Normal");
        assert_eq!(
            msg,
            "failover 3-dc1-dc2: step promoted done in 1.2 s (from dc1 to dc2, term 3)"
        );
        let (kind, msg) = step_message(
            &r,
            Step::Verified,
            StepPhase::Finished {
                seconds: 2.0,
                error: Some("canary read returned 403"),
            },
        );
        assert_eq!(kind, "Warning");
        assert!(
            msg.ends_with("(from dc1 to dc2, term 3): canary read returned 403"),
            "{msg}"
        );
    }

    #[test]
    fn long_step_messages_are_cut_to_what_the_apiserver_takes() {
        let long = "é".repeat(2_000);
        let (_, msg) = step_message(
            &record(),
            Step::Switched,
            StepPhase::Finished {
                seconds: 0.1,
                error: Some(&long),
            },
        );
        assert!(msg.len() <= EVENT_MESSAGE_MAX);
        assert!(msg.starts_with("failover 3-dc1-dc2: step switched failed"));
    }
}
