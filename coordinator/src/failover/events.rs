//! The Kubernetes Event writer ([`KubernetesEvents`]): a `core/v1` Event on the topology
//! ConfigMap for every failover step, written in the background so a slow apiserver never
//! holds a step up. A [`StepHook`].

use crate::coordination::CoordinationError;
use crate::coordination::kubernetes::FIELD_MANAGER;
use crate::failover::hooks::StepHook;
use crate::model::{AtRisk, FailoverRecord, Step};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Event reason of every failover step Event.
pub const EVENT_REASON: &str = "FailoverStep";
/// The apiserver's limit on an Event message.
const EVENT_MESSAGE_MAX: usize = 1024;
/// Events queued for writing before new ones are dropped (and logged).
const EVENT_QUEUE: usize = 256;
/// How long one Event write may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Attempt `attempt` failed with `error`; the step is tried again.
    Retrying {
        /// Which attempt failed (1 = the first).
        attempt: u32,
        /// Why.
        error: &'a str,
    },
}

/// The Event `type` and message for `step` of `record`: names the step, from, to and term.
/// Once the target is promoted (the Promoted and Done steps finished) it adds the loss
/// account, and a failover that lost data is a `Warning`.
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
        StepPhase::Retrying { attempt, error } => (
            "Warning",
            format!(
                "failover {}: step {step} attempt {attempt} failed {tail}, retrying: {error}",
                record.id
            ),
        ),
    };
    let mut kind = kind;
    if let (Some(loss), StepPhase::Finished { .. }) = (&record.loss, phase)
        && matches!(step, Step::Promoted | Step::Done)
        && loss.at_risk != AtRisk::Pending
    {
        message.push_str(&format!("; loss: {loss}"));
        if loss.entries().is_some_and(|e| e > 0) {
            kind = "Warning";
        }
    }
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
    ) -> Result<Self, CoordinationError> {
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

    fn attempt_failed(&self, record: &FailoverRecord, step: Step, attempt: u32, error: &str) {
        self.emit(record, step, StepPhase::Retrying { attempt, error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CandidateTable, FailoverStatus};
    use chrono::Utc;

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
            loss: None,
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
        let (retry_kind, retry) = step_message(
            &r,
            Step::Promoted,
            StepPhase::Retrying {
                attempt: 2,
                error: "dc2 has not applied term 3",
            },
        );
        assert_eq!(retry_kind, "Warning");
        assert_eq!(
            retry,
            "failover 3-dc1-dc2: step promoted attempt 2 failed (from dc1 to dc2, term 3), retrying: dc2 has not applied term 3"
        );
        assert!(
            msg.ends_with("(from dc1 to dc2, term 3): canary read returned 403"),
            "{msg}"
        );
    }

    #[test]
    fn the_promoted_and_done_events_carry_the_loss_and_a_loss_is_a_warning() {
        use crate::model::{AppliedIndex, LossAccount, ServedData};
        let now = Utc::now();
        let account = |served_index: u64| {
            LossAccount::promoted(
                Some(AppliedIndex {
                    node: "dc1-0".into(),
                    index: 700,
                    seen_at: now,
                    last_seen_at: now,
                    interval_seconds: Some(0.5),
                }),
                Some(ServedData {
                    node: "dc2-0".into(),
                    mode: vault_dr_common::ReplicationMode::Snapshot,
                    index: Some(served_index),
                    taken_at: Some(now - chrono::Duration::milliseconds(1800)),
                }),
            )
        };
        let done = StepPhase::Finished {
            seconds: 1.0,
            error: None,
        };
        let lost = FailoverRecord {
            loss: Some(account(650)),
            ..record()
        };
        let (kind, msg) = step_message(&lost, Step::Promoted, done);
        assert_eq!(kind, "Warning");
        assert!(
            msg.contains(
                "term 3); loss: 50 entries and 1.80 s at risk: dc1-0 was at index 700 by "
            ),
            "{msg}"
        );
        assert!(msg.contains("are unknown to the coordinator"), "{msg}");
        let (kind, msg) = step_message(&lost, Step::Done, done);
        assert_eq!(kind, "Warning");
        assert!(msg.contains("loss: 50 entries"), "{msg}");
        let (_, msg) = step_message(&lost, Step::Promoted, StepPhase::Started);
        assert!(!msg.contains("loss"), "not before the promotion: {msg}");
        let (_, msg) = step_message(&lost, Step::Switched, done);
        assert!(!msg.contains("loss"), "once, not on every step: {msg}");
        let kept = FailoverRecord {
            loss: Some(account(720)),
            ..record()
        };
        let (kind, msg) = step_message(&kept, Step::Promoted, done);
        assert_eq!(kind, "Normal");
        assert!(msg.contains("loss: nothing at risk"), "{msg}");
        let unknown = FailoverRecord {
            loss: Some(LossAccount::promoted(None, None)),
            ..record()
        };
        let (kind, msg) = step_message(&unknown, Step::Promoted, done);
        assert_eq!(kind, "Normal");
        assert!(msg.contains("loss: not accounted: "), "{msg}");
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
