//! The `kubernetes` coordination backend: [`KubernetesCoordination`], leader election on a
//! `coordination.k8s.io/v1` Lease (holder = this replica's id, so `kubectl get lease` shows the
//! leader), and the topology in a ConfigMap written only by create (must not exist) or by
//! replace carrying the resourceVersion just read, so a stale writer gets 409 Conflict. The
//! Service switch is `traffic::kubernetes`, the Event hook `failover::events`.
//!
//! Every Lease write is conditional on the resourceVersion it was decided on ([`next_lease`]):
//! of two replicas that both saw an expired Lease, one write succeeds and the other gets 409,
//! so the replica that acts is always the one the Lease names (kube-leader-election, used
//! before, acquired and renewed with unconditioned merge patches, and two replicas could both
//! "win"). Safety still never rests on the lease alone: every term raise is a compare-and-swap
//! on the ConfigMap's resourceVersion.

use super::{Coordination, CoordinationError, LeaseInfo, Result};
use crate::config::CoordinationConfig;
use crate::model::topology::{Topology, Versioned};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use prometheus::IntCounterVec;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Key of the ConfigMap's `data` holding the topology as JSON.
pub const TOPOLOGY_KEY: &str = "topology.json";
/// Field manager and event source of every write this module makes.
pub const FIELD_MANAGER: &str = "vault-dr-coordinator";

/// The HTTP status of an apiserver error, if it is one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// What the apiserver said, for a log line: `403 Forbidden: <its message>` for an answer (its
/// message names the user and the missing permission), else the error with its causes (no
/// answer: refused, TLS, DNS).
pub fn api_error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "{} {}: {}",
            status.code,
            status.reason,
            vault_dr_common::http::quoted(&status.message)
        ),
        other => vault_dr_common::http::error_chain(other),
    }
}

fn to_chrono(ts: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.as_second(), u32::try_from(ts.subsec_nanosecond()).ok()?)
}

/// The duration the Lease can express: whole seconds (`leaseDurationSeconds`), at least one. Our own leadership deadline uses the same value, so it
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

/// The Lease replica `id` writes at `now` to take or keep the lead, given the Lease as just
/// read (`None`: there is none yet): `None` when another replica holds it unexpired. The
/// result keeps the read `resourceVersion`, so writing it back is conditional: whoever wrote
/// the Lease in between makes the write fail with 409 instead of being overwritten (two
/// replicas can never both win one expired Lease). Taking it from another holder (or from
/// none) sets `acquireTime` and counts a transition.
pub fn next_lease(
    current: Option<&Lease>,
    id: &str,
    name: &str,
    now: Timestamp,
    duration: Duration,
) -> Option<Lease> {
    if let Some(l) = current
        && let Some(holder) = lease_info(l, now).holder
        && holder != id
    {
        return None;
    }
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let held = spec.holder_identity.as_deref() == Some(id);
    if !held {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(match current {
            Some(_) => spec.lease_transitions.unwrap_or(0).saturating_add(1),
            None => 0,
        });
    }
    spec.holder_identity = Some(id.to_owned());
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX));
    Some(lease)
}

/// Leader election on a Lease and the topology in a ConfigMap, in one namespace.
pub struct KubernetesCoordination {
    client: kube::Client,
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
    api_errors: ApiErrors,
}

/// The object of one request: its metric label and its name for messages.
struct What {
    label: &'static str,
    text: String,
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Counts failed Kubernetes API requests in
/// `vault_dr_coordinator_kubernetes_api_errors_total{what, kind}`: `what` is the object
/// (`lease`, `configmap`, `pods`, `service`), `kind` [`api_error_kind`] or `timeout`. Without a
/// counter (tests, embedding) it counts nothing.
#[derive(Debug, Clone, Default)]
pub struct ApiErrors(Option<IntCounterVec>);

impl ApiErrors {
    /// Counts into `counter` (labels `what`, `kind`).
    pub fn new(counter: IntCounterVec) -> Self {
        Self(Some(counter))
    }

    /// One failed request about `what`.
    pub fn count(&self, what: &'static str, kind: &'static str) {
        if let Some(c) = &self.0 {
            c.with_label_values(&[what, kind]).inc();
        }
    }
}

/// Bounded kind of a failed Kubernetes API request, from the status the apiserver answered:
/// `unauthorized`, `forbidden` (RBAC), `not_found`, `conflict`, `invalid`, `throttled`,
/// `server_error`, `client_error`; `transport` when no answer came (refused, TLS, DNS).
pub fn api_error_kind(e: &kube::Error) -> &'static str {
    match api_code(e) {
        Some(401) => "unauthorized",
        Some(403) => "forbidden",
        Some(404) => "not_found",
        Some(409) => "conflict",
        Some(422) => "invalid",
        Some(429) => "throttled",
        Some(c) if c >= 500 => "server_error",
        Some(_) => "client_error",
        None => "transport",
    }
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
        Self {
            leases: Api::namespaced(client.clone(), &namespace),
            configmaps: Api::namespaced(client.clone(), &namespace),
            client,
            namespace,
            lease_name,
            configmap_name: configmap_name.into(),
            id,
            lease_duration,
            renew_period,
            leader_until: Mutex::new(None),
            api_errors: ApiErrors::default(),
        }
    }

    /// Counts every failed request (by object and kind) into `api_errors`.
    pub fn with_api_errors(mut self, api_errors: ApiErrors) -> Self {
        self.api_errors = api_errors;
        self
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
            ..
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

    /// The client, to share with the Service switch and the Event hook.
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

    fn what(&self, label: &'static str, name: &str) -> What {
        What {
            label,
            text: format!("{label} {name}"),
        }
    }

    async fn timed<T>(&self, what: &What, fut: impl Future<Output = T>) -> Result<T> {
        tokio::time::timeout(self.request_timeout(), fut)
            .await
            .map_err(|_| {
                self.api_errors.count(what.label, "timeout");
                CoordinationError::Unavailable(format!(
                    "{what}: no answer from the Kubernetes API within {:?}",
                    self.request_timeout()
                ))
            })
    }

    /// A failed request, counted by kind.
    fn unavailable(&self, what: &What, e: kube::Error) -> CoordinationError {
        self.api_errors.count(what.label, api_error_kind(&e));
        self.gave_up(what, api_error_text(&e))
    }

    fn gave_up(&self, what: &What, e: impl std::fmt::Display) -> CoordinationError {
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
        let what = self.what("lease", &self.lease_name);
        let current = self
            .timed(&what, self.leases.get_opt(&self.lease_name))
            .await?
            .map_err(|e| self.unavailable(&what, e))?;
        let next = next_lease(
            current.as_ref(),
            &self.id,
            &self.lease_name,
            Timestamp::now(),
            self.lease_duration,
        );
        let won = match next {
            None => false,
            Some(lease) => {
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                let written = match current {
                    None => self.timed(&what, self.leases.create(&pp, &lease)).await?,
                    Some(_) => {
                        self.timed(&what, self.leases.replace(&self.lease_name, &pp, &lease))
                            .await?
                    }
                };
                match written {
                    Ok(l) => l
                        .spec
                        .and_then(|s| s.holder_identity)
                        .is_some_and(|h| h == self.id),
                    // Another replica wrote the Lease since we read it (or created it first):
                    // it decided, not us.
                    Err(e) if matches!(api_code(&e), Some(409 | 404)) => false,
                    Err(e) => return Err(self.unavailable(&what, e)),
                }
            }
        };
        // Count the lease from before the read started, less a margin for clock skew and
        // reads, so we stop acting before any other replica can see the lease as expired; and
        // only while the Lease we last wrote names us.
        self.set_leader_until(won.then(|| started + self.lease_duration.mul_f64(0.8)));
        Ok(won)
    }

    fn is_leader(&self) -> bool {
        let until = self.leader_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|u| Instant::now() < u)
    }

    async fn release(&self) -> Result<()> {
        self.set_leader_until(None);
        let what = self.what("lease", &self.lease_name);
        // Replace with the resourceVersion just read (never clear a successor's hold), only
        // when the Lease names us, and date the renewal in the past so takeover is at once.
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
        Err(self.gave_up(&what, "changed under every release attempt"))
    }

    async fn lease(&self) -> Result<LeaseInfo> {
        let what = self.what("lease", &self.lease_name);
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
        let what = self.what("configmap", &self.configmap_name);
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
        let what = self.what("configmap", &self.configmap_name);
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

#[cfg(test)]
mod tests {
    use super::*;
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

    /// One row per rule of [`next_lease`]: the Lease read, who asks, and what is written.
    #[test]
    fn a_lease_is_written_only_by_its_holder_or_over_an_expired_or_missing_one() {
        let five = Duration::from_secs(5);
        let now = at(100);
        let mut read = lease("a", at(98), 5, 3);
        read.metadata.resource_version = Some("42".into());
        // a renews its own: holder, renewal and duration change, the rest is kept.
        let renewed = next_lease(Some(&read), "a", "l", now, five).unwrap();
        let spec = renewed.spec.as_ref().unwrap();
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, None);
        // b may not take a's unexpired Lease.
        assert_eq!(next_lease(Some(&read), "b", "l", now, five), None);
        // b takes it once expired: conditional on the read version, one more transition.
        let expired = lease("a", at(90), 5, 3);
        let mut expired_read = expired.clone();
        expired_read.metadata.resource_version = Some("43".into());
        let taken = next_lease(Some(&expired_read), "b", "l", now, five).unwrap();
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("43"));
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.lease_duration_seconds, Some(5));
        // A released Lease (no holder) is free at once.
        let released = lease("", at(99), 1, 4);
        let spec = next_lease(Some(&released), "c", "l", now, five)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("c"));
        assert_eq!(spec.lease_transitions, Some(5));
        // No Lease yet: a new one with no version (a create), no transition yet.
        let created = next_lease(None, "a", "l", now, five).unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("l"));
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(created.spec.unwrap().lease_transitions, Some(0));
    }
}
