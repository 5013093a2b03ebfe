//! What runs beside every failover step: the [`StepHook`] role and [`Hooks`] to run several.
//! The hooks themselves: the metrics (`metrics`) and the Kubernetes Event writer
//! (`failover::events`).

use crate::model::{FailoverRecord, Step};
use std::sync::Arc;

/// Receives step events, for metrics and Kubernetes Events.
pub trait StepHook: Send + Sync + std::fmt::Debug {
    /// `step` of `record` was written to the journal and is about to run.
    fn started(&self, record: &FailoverRecord, step: Step);
    /// `step` of `record` finished (`error` set when it finished by giving up).
    fn finished(&self, record: &FailoverRecord, step: Step, seconds: f64, error: Option<&str>);
    /// Attempt `attempt` of `step` failed with `error` and the step will be tried again.
    fn attempt_failed(&self, record: &FailoverRecord, step: Step, attempt: u32, error: &str);
}

/// Several hooks as one (metrics and Kubernetes Events).
#[derive(Debug, Clone)]
pub struct Hooks(pub Vec<Arc<dyn StepHook>>);

impl StepHook for Hooks {
    fn started(&self, record: &FailoverRecord, step: Step) {
        self.0.iter().for_each(|h| h.started(record, step));
    }

    fn finished(&self, record: &FailoverRecord, step: Step, seconds: f64, error: Option<&str>) {
        self.0
            .iter()
            .for_each(|h| h.finished(record, step, seconds, error));
    }

    fn attempt_failed(&self, record: &FailoverRecord, step: Step, attempt: u32, error: &str) {
        self.0
            .iter()
            .for_each(|h| h.attempt_failed(record, step, attempt, error));
    }
}
