//! [`BufferedStore`]: keeps a store outage from ever blocking detection or failover.
//!
//! Writes (`put_report`, `put_decision`, `put_failover`) go into a bounded in-memory queue and
//! return at once; one background task writes the queue into the inner store in order, retrying
//! the head write with exponential back-off and jitter (100 ms .. 10 s) while the inner store
//! fails. When the queue is full the oldest queued *report* is dropped (reports come again every
//! interval); journal records and decisions are never dropped for a report, and when no report is
//! left to drop the write is refused with [`StoreError::BufferFull`].
//!
//! The queue is coalesced where the newer write makes an older one pointless: a new decision
//! replaces a queued decision (the store keeps only the latest), and a journal record replaces the
//! queued record with the same id unless it got less far ([`FailoverRecord::progress`]). So a long outage fills the queue with reports only.
//!
//! Reads go to the inner store, but `failover(id)`, `failovers(limit)` and `latest_decision()`
//! overlay what is still queued, so a journal step written during an outage is visible to the
//! coordinator at once (`failover(id)` and `latest_decision()` answer from the queue without
//! asking the inner store when the queue holds the answer). Report reads see only what has been
//! written; call [`BufferedStore::flush`] first where that matters.
//!
//! `init` tries the inner store once; if it is down, the background task keeps trying (before
//! any write) and the coordinator starts anyway. After a failed write the task runs `init` again
//! before retrying, so a store that comes back empty gets its indexes (the TTL above all).
//!
//! Metrics: `vault_dr_coordinator_store_backlog` (queued writes, the one being written
//! included), `vault_dr_coordinator_store_write_failures_total`,
//! `vault_dr_coordinator_store_dropped_total` and
//! `vault_dr_coordinator_store_write_duration_seconds`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vault_dr_common::backoff::{Backoff, Jitter};

use super::{Result, Store, StoreError, StoredReport};
use crate::model::DecisionRecord;
use crate::model::FailoverRecord;

/// First retry delay after a failed write.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Errors of building a [`BufferedStore`].
#[derive(Debug, thiserror::Error)]
pub enum BufferedError {
    /// A metric could not be registered (a name is taken in the registry).
    #[error("store buffer metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Built outside a Tokio runtime: the background writer cannot be spawned.
    #[error("the store buffer must be built inside a Tokio runtime")]
    NoRuntime,
}

/// One queued write.
#[derive(Debug, Clone)]
enum Write {
    Report(Box<StoredReport>),
    Decision(DecisionRecord),
    Failover(FailoverRecord),
}

impl Write {
    async fn apply(&self, store: &dyn Store) -> Result<()> {
        match self {
            Self::Report(r) => store.put_report(r).await,
            Self::Decision(d) => store.put_decision(d).await,
            Self::Failover(f) => store.put_failover(f).await,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Report(_) => "report",
            Self::Decision(_) => "decision",
            Self::Failover(_) => "failover",
        }
    }
}

/// The queue and the write the background task is working on (oldest of all).
#[derive(Debug, Default)]
struct Queue {
    in_flight: Option<Write>,
    queued: VecDeque<Write>,
}

impl Queue {
    fn len(&self) -> usize {
        self.queued.len() + usize::from(self.in_flight.is_some())
    }

    /// Every pending write, oldest first.
    fn pending(&self) -> impl DoubleEndedIterator<Item = &Write> {
        self.in_flight.iter().chain(self.queued.iter())
    }
}

#[derive(Debug)]
struct Metrics {
    backlog: IntGauge,
    failures: IntCounter,
    dropped: IntCounter,
    duration: Histogram,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let backlog = IntGauge::new(
            crate::metrics::name("store_backlog"),
            "Store writes queued and not yet written.",
        )?;
        let failures = IntCounter::new(
            crate::metrics::name("store_write_failures_total"),
            "Store write attempts that failed (each is retried).",
        )?;
        let dropped = IntCounter::new(
            crate::metrics::name("store_dropped_total"),
            "Store writes dropped because the write buffer was full.",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                crate::metrics::name("store_write_duration_seconds"),
                "Duration of one write attempt to the store.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(backlog.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            backlog,
            failures,
            dropped,
            duration,
        })
    }
}

/// What the handle and the background task share.
#[derive(Debug)]
struct Shared {
    inner: Arc<dyn Store>,
    capacity: usize,
    queue: Mutex<Queue>,
    /// Signalled on every enqueue (a stored permit covers a write that races the wait).
    wake: Notify,
    /// Whether the inner store's `init` has succeeded.
    ready: AtomicBool,
    /// Retry delay bounds: [`BACKOFF_MIN`], [`BACKOFF_MAX`] (shorter in tests).
    backoff: (Duration, Duration),
    metrics: Metrics,
}

impl Shared {
    /// The queue; a panic while it was held cannot leave it inconsistent (every critical
    /// section is a single push, pop or replace), so a poisoned lock is taken over.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, write: Write) -> Result<()> {
        let mut q = self.queue();
        // Coalesce: the newer write makes a queued one pointless.
        let same = match &write {
            Write::Decision(_) => q
                .queued
                .iter()
                .position(|w| matches!(w, Write::Decision(_))),
            Write::Failover(f) => q
                .queued
                .iter()
                .position(|w| matches!(w, Write::Failover(g) if g.id == f.id)),
            Write::Report(_) => None,
        };
        if let Some(i) = same {
            // A journal record replaces a queued one only if it got at least as far (the
            // stores apply the same rule).
            if let (Write::Failover(new), Write::Failover(old)) = (&write, &q.queued[i])
                && new.progress() < old.progress()
            {
                return Ok(());
            }
            q.queued[i] = write;
            return Ok(());
        }
        if q.queued.len() >= self.capacity {
            match q.queued.iter().position(|w| matches!(w, Write::Report(_))) {
                Some(i) => {
                    q.queued.remove(i);
                    self.metrics.dropped.inc();
                }
                None => {
                    self.metrics.dropped.inc();
                    tracing::warn!(
                        kind = write.kind(),
                        "store write buffer full, write dropped"
                    );
                    return Err(StoreError::BufferFull(q.len()));
                }
            }
        }
        q.queued.push_back(write);
        self.metrics.backlog.set(gauge(q.len()));
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// The write to do next: the one in flight (being retried) or the oldest queued.
    fn next(&self) -> Option<Write> {
        let mut q = self.queue();
        if q.in_flight.is_none() {
            q.in_flight = q.queued.pop_front();
        }
        q.in_flight.clone()
    }

    fn done(&self) {
        let mut q = self.queue();
        q.in_flight = None;
        self.metrics.backlog.set(gauge(q.len()));
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The writer's back-off between [`BACKOFF_MIN`] and [`BACKOFF_MAX`]: equal jitter, so the
/// retries of many coordinators spread out.
fn backoff((min, max): (Duration, Duration)) -> Backoff {
    Backoff::new(min, max).with_jitter(Jitter::Equal)
}

/// The background writer: init the inner store, then drain the queue in order, forever.
async fn run(shared: Arc<Shared>) {
    let mut backoff = backoff(shared.backoff);
    loop {
        if !shared.ready.load(Ordering::Acquire) {
            match shared.inner.init().await {
                Ok(()) => {
                    shared.ready.store(true, Ordering::Release);
                    tracing::info!("store initialised");
                    backoff.reset();
                }
                Err(e) => {
                    shared.metrics.failures.inc();
                    let delay = backoff.next_delay(&mut rand::rng());
                    tracing::warn!(error = %e, retry_in = ?delay, "store init failed, retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        let Some(write) = shared.next() else {
            shared.wake.notified().await;
            continue;
        };
        let started = tokio::time::Instant::now();
        let result = write.apply(shared.inner.as_ref()).await;
        shared
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                shared.done();
                backoff.reset();
            }
            Err(e) => {
                shared.metrics.failures.inc();
                // The store may come back empty (a new server, a restored backup): create the
                // indexes again before the retry. `init` is idempotent and cheap.
                shared.ready.store(false, Ordering::Release);
                let delay = backoff.next_delay(&mut rand::rng());
                tracing::warn!(kind = write.kind(), error = %e, retry_in = ?delay,
                    "store write failed, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A store in front of another that never makes a writer wait for it.
#[derive(Debug)]
pub struct BufferedStore {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl BufferedStore {
    /// Wraps `inner` with a queue of at most `capacity` writes (at least 1), registers the
    /// metrics on `registry` and spawns the background writer on the current Tokio runtime. The
    /// writer stops when the store is dropped.
    pub fn new(
        inner: Arc<dyn Store>,
        capacity: usize,
        registry: &Registry,
    ) -> Result<Arc<Self>, BufferedError> {
        Self::build(inner, capacity, registry, (BACKOFF_MIN, BACKOFF_MAX))
    }

    fn build(
        inner: Arc<dyn Store>,
        capacity: usize,
        registry: &Registry,
        backoff: (Duration, Duration),
    ) -> Result<Arc<Self>, BufferedError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| BufferedError::NoRuntime)?;
        let shared = Arc::new(Shared {
            inner,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            ready: AtomicBool::new(false),
            backoff,
            metrics: Metrics::register(registry)?,
        });
        let task = runtime.spawn(run(Arc::clone(&shared)));
        Ok(Arc::new(Self { shared, task }))
    }

    /// Writes queued and not yet written (the one being written included).
    pub fn backlog(&self) -> usize {
        self.shared.queue().len()
    }

    /// Waits until every queued write is written; `false` if that did not happen within
    /// `timeout`. For tests and for an orderly shutdown.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let empty = async {
            while self.backlog() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(timeout, empty).await.is_ok()
    }
}

impl Drop for BufferedStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Store for BufferedStore {
    async fn init(&self) -> Result<()> {
        match self.shared.inner.init().await {
            Ok(()) => self.shared.ready.store(true, Ordering::Release),
            // The background writer retries before any write; start without the store.
            Err(e) => tracing::warn!(error = %e, "store unavailable at start-up, will retry"),
        }
        Ok(())
    }

    async fn put_report(&self, report: &StoredReport) -> Result<()> {
        self.shared.enqueue(Write::Report(Box::new(report.clone())))
    }

    async fn latest_reports(&self) -> Result<Vec<StoredReport>> {
        self.shared.inner.latest_reports().await
    }

    async fn report_history(
        &self,
        cluster: &str,
        node: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReport>> {
        self.shared.inner.report_history(cluster, node, since).await
    }

    async fn put_decision(&self, decision: &DecisionRecord) -> Result<()> {
        self.shared.enqueue(Write::Decision(decision.clone()))
    }

    async fn latest_decision(&self) -> Result<Option<DecisionRecord>> {
        let queued = self.shared.queue().pending().rev().find_map(|w| match w {
            Write::Decision(d) => Some(d.clone()),
            _ => None,
        });
        match queued {
            Some(d) => Ok(Some(d)),
            None => self.shared.inner.latest_decision().await,
        }
    }

    async fn put_failover(&self, failover: &FailoverRecord) -> Result<()> {
        self.shared.enqueue(Write::Failover(failover.clone()))
    }

    async fn failover(&self, id: &str) -> Result<Option<FailoverRecord>> {
        let queued = self.shared.queue().pending().rev().find_map(|w| match w {
            Write::Failover(f) if f.id == id => Some(f.clone()),
            _ => None,
        });
        match queued {
            Some(f) => Ok(Some(f)),
            None => self.shared.inner.failover(id).await,
        }
    }

    async fn failovers(&self, limit: usize) -> Result<Vec<FailoverRecord>> {
        // Newest version of every queued record, oldest write first.
        let mut queued: Vec<FailoverRecord> = Vec::new();
        for w in self.shared.queue().pending() {
            if let Write::Failover(f) = w {
                queued.retain(|g| g.id != f.id);
                queued.push(f.clone());
            }
        }
        if queued.is_empty() {
            return self.shared.inner.failovers(limit).await;
        }
        // Ask for enough that the queued versions cannot push a stored record out of the top.
        let mut all = self
            .shared
            .inner
            .failovers(limit.saturating_add(queued.len()))
            .await?;
        all.retain(|s| !queued.iter().any(|q| q.id == s.id));
        all.extend(queued);
        // The order of the stores: newest decision first, then higher term, then id.
        all.sort_by(|a, b| {
            b.decided_at
                .timestamp_micros()
                .cmp(&a.decided_at.timestamp_micros())
                .then(b.term.cmp(&a.term))
                .then(b.id.cmp(&a.id))
        });
        all.truncate(limit);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::suite;
    use std::sync::atomic::AtomicUsize;

    /// An in-memory inner store that works until it is switched `down`, then fails every call.
    /// In memory (not SQLite) so that tests run under paused time without the blocking pool.
    #[derive(Debug, Default)]
    struct FlakyStore {
        down: AtomicBool,
        inits: AtomicUsize,
        writes: AtomicUsize,
        record: Mutex<Record>,
    }

    #[derive(Debug, Default)]
    struct Record {
        reports: Vec<StoredReport>,
        decision: Option<DecisionRecord>,
        failovers: Vec<FailoverRecord>,
    }

    impl FlakyStore {
        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        fn check(&self) -> Result<MutexGuard<'_, Record>> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("flaky store is down".into()));
            }
            Ok(self.record.lock().unwrap())
        }

        fn wrote(&self) -> Result<MutexGuard<'_, Record>> {
            let r = self.check()?;
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(r)
        }
    }

    #[async_trait]
    impl Store for FlakyStore {
        async fn init(&self) -> Result<()> {
            drop(self.check()?);
            self.inits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        async fn put_report(&self, report: &StoredReport) -> Result<()> {
            let mut r = self.wrote()?;
            if !r.reports.contains(report) {
                r.reports.push(report.clone());
            }
            Ok(())
        }

        async fn latest_reports(&self) -> Result<Vec<StoredReport>> {
            let r = self.check()?;
            let mut latest: Vec<StoredReport> = Vec::new();
            for x in &r.reports {
                let key = |s: &StoredReport| (s.report.cluster.clone(), s.report.node.clone());
                match latest.iter_mut().find(|l| key(l) == key(x)) {
                    Some(l) if (x.received_at, x.report.seq) >= (l.received_at, l.report.seq) => {
                        *l = x.clone()
                    }
                    Some(_) => {}
                    None => latest.push(x.clone()),
                }
            }
            latest.sort_by(|a, b| {
                (&a.report.cluster, &a.report.node).cmp(&(&b.report.cluster, &b.report.node))
            });
            Ok(latest)
        }

        async fn report_history(
            &self,
            cluster: &str,
            node: &str,
            since: DateTime<Utc>,
        ) -> Result<Vec<StoredReport>> {
            let r = self.check()?;
            let mut h: Vec<StoredReport> = r
                .reports
                .iter()
                .filter(|x| x.report.cluster == cluster && x.report.node == node)
                .filter(|x| x.received_at >= since)
                .cloned()
                .collect();
            h.sort_by_key(|x| (x.received_at, x.report.seq));
            Ok(h)
        }

        async fn put_decision(&self, decision: &DecisionRecord) -> Result<()> {
            self.wrote()?.decision = Some(decision.clone());
            Ok(())
        }

        async fn latest_decision(&self) -> Result<Option<DecisionRecord>> {
            Ok(self.check()?.decision.clone())
        }

        async fn put_failover(&self, failover: &FailoverRecord) -> Result<()> {
            let mut r = self.wrote()?;
            if r.failovers
                .iter()
                .any(|f| f.id == failover.id && f.progress() > failover.progress())
            {
                return Ok(());
            }
            r.failovers.retain(|f| f.id != failover.id);
            r.failovers.push(failover.clone());
            Ok(())
        }

        async fn failover(&self, id: &str) -> Result<Option<FailoverRecord>> {
            Ok(self.check()?.failovers.iter().find(|f| f.id == id).cloned())
        }

        async fn failovers(&self, limit: usize) -> Result<Vec<FailoverRecord>> {
            let mut all = self.check()?.failovers.clone();
            all.sort_by(|a, b| (b.decided_at, b.term, &b.id).cmp(&(a.decided_at, a.term, &a.id)));
            all.truncate(limit);
            Ok(all)
        }
    }

    /// A buffer over `inner` whose back-off is ten times shorter (10 ms .. 1 s), so the outage
    /// tests run in real time in well under a second each.
    fn fast(inner: Arc<FlakyStore>, capacity: usize, registry: &Registry) -> Arc<BufferedStore> {
        let backoff = (BACKOFF_MIN / 10, BACKOFF_MAX / 10);
        BufferedStore::build(inner, capacity, registry, backoff).unwrap()
    }

    fn metric(registry: &Registry, name: &str) -> f64 {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map(|f| {
                let m = &f.get_metric()[0];
                if f.get_field_type() == prometheus::proto::MetricType::GAUGE {
                    m.get_gauge().get_value()
                } else if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
                    m.get_counter().get_value()
                } else {
                    m.get_histogram().get_sample_count() as f64
                }
            })
            .unwrap_or_else(|| panic!("metric {name} not registered"))
    }

    fn settle(store: &Arc<BufferedStore>) -> impl Fn() -> futures::future::BoxFuture<'static, ()> {
        let store = Arc::clone(store);
        move || {
            let store = Arc::clone(&store);
            Box::pin(async move { assert!(store.flush(Duration::from_secs(10)).await, "flush") })
        }
    }

    #[tokio::test]
    async fn the_shared_suite_passes_on_the_buffered_store_over_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let inner =
            EmbeddedStore::open(&dir.path().join("s.db"), Duration::from_secs(86_400)).unwrap();
        let registry = Registry::new();
        let store = BufferedStore::new(Arc::new(inner), 1000, &registry).unwrap();
        suite::run_all_settled(store.clone(), settle(&store)).await;
        assert_eq!(metric(&registry, "vault_dr_coordinator_store_backlog"), 0.0);
        assert!(
            metric(
                &registry,
                "vault_dr_coordinator_store_write_duration_seconds"
            ) > 0.0
        );
    }

    #[tokio::test]
    async fn the_shared_suite_passes_on_the_fake_store_and_through_the_buffer() {
        // The fake is checked against the same contract, so the outage tests below rely on a
        // store that behaves like the real ones.
        suite::run_all(Arc::new(FlakyStore::default())).await;
        let registry = Registry::new();
        let store = BufferedStore::new(Arc::new(FlakyStore::default()), 1000, &registry).unwrap();
        suite::run_all_settled(store.clone(), settle(&store)).await;
    }

    #[tokio::test]
    async fn writes_during_an_outage_return_at_once_and_are_visible_then_written_in_order() {
        let inner = Arc::new(FlakyStore::default());
        let registry = Registry::new();
        let store = fast(inner.clone(), 100, &registry);
        store.init().await.unwrap();
        inner.set_down(true);

        let now = Utc::now();
        let mut journal = suite::failover_record(5, "dc1", "dc2", now);
        store.put_failover(&journal).await.unwrap();
        store
            .put_report(&suite::report("dc2", "n1", 1, now))
            .await
            .unwrap();
        journal.steps.push(fenced(now));
        store.put_failover(&journal).await.unwrap();
        let decision = suite::decision(3, now);
        store.put_decision(&decision).await.unwrap();

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(metric(&registry, "vault_dr_coordinator_store_backlog") > 0.0);
        let failures = metric(&registry, "vault_dr_coordinator_store_write_failures_total");
        // 300 ms of back-off from 10 ms doubling is 5 or 6 attempts (fewer on a slow machine),
        // not a busy loop.
        assert!(
            (2.0..=7.0).contains(&failures),
            "{failures} failures in 300 ms"
        );
        // The journal step written during the outage is visible, and so is the decision.
        assert_eq!(
            store.failover(&journal.id).await.unwrap(),
            Some(journal.clone())
        );
        assert_eq!(
            store.latest_decision().await.unwrap(),
            Some(decision.clone())
        );
        assert!(
            store.latest_reports().await.is_err(),
            "report reads go to the store"
        );

        inner.set_down(false);
        assert!(store.flush(Duration::from_secs(15)).await);
        assert_eq!(metric(&registry, "vault_dr_coordinator_store_backlog"), 0.0);
        assert_eq!(inner.failover(&journal.id).await.unwrap(), Some(journal));
        assert_eq!(inner.latest_decision().await.unwrap(), Some(decision));
        assert_eq!(inner.latest_reports().await.unwrap().len(), 1);
    }

    fn fenced(at: DateTime<Utc>) -> crate::model::StepRecord {
        crate::model::StepRecord {
            step: crate::model::Step::Fenced,
            started_at: at,
            finished_at: Some(at),
            by: "c0".into(),
            detail: "sealed dc1".into(),
            error: None,
            effect_at: None,
            later: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_the_oldest_report_and_refuses_when_no_report_is_left() {
        let inner = Arc::new(FlakyStore::default());
        let registry = Registry::new();
        let store = fast(inner.clone(), 3, &registry);
        store.init().await.unwrap();
        inner.set_down(true);
        let now = Utc::now();
        let r = |seq| {
            suite::report(
                "dc1",
                "n1",
                seq,
                now + chrono::Duration::seconds(seq as i64),
            )
        };
        let f = |term| suite::failover_record(term, "dc1", "dc2", now);
        // Let the writer take the first write in flight so the queue proper holds the rest.
        store.put_report(&r(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.put_report(&r(2)).await.unwrap();
        store.put_failover(&f(1)).await.unwrap();
        store.put_report(&r(3)).await.unwrap();
        // Full: r(2) is the oldest queued report and goes.
        store.put_failover(&f(2)).await.unwrap();
        assert_eq!(
            metric(&registry, "vault_dr_coordinator_store_dropped_total"),
            1.0
        );
        // Full again: r(3) goes.
        store.put_failover(&f(3)).await.unwrap();
        assert_eq!(
            metric(&registry, "vault_dr_coordinator_store_dropped_total"),
            2.0
        );
        // Only journal records queued: refused, counted.
        let err = store.put_failover(&f(4)).await.unwrap_err();
        assert!(matches!(err, StoreError::BufferFull(4)), "{err}");
        assert_eq!(
            metric(&registry, "vault_dr_coordinator_store_dropped_total"),
            3.0
        );
        // A newer version of a queued record still fits: it replaces the queued one.
        let mut f2 = f(2);
        f2.status = crate::model::FailoverStatus::Done;
        store.put_failover(&f2).await.unwrap();
        // So does a decision? No: none is queued and the queue is full of journal records.
        assert!(store.put_decision(&suite::decision(1, now)).await.is_err());

        inner.set_down(false);
        assert!(store.flush(Duration::from_secs(15)).await);
        let reports = inner
            .report_history("dc1", "n1", now - chrono::Duration::hours(1))
            .await;
        assert_eq!(
            reports.unwrap(),
            vec![r(1)],
            "the in-flight report is never dropped"
        );
        let ids: Vec<u64> = inner
            .failovers(10)
            .await
            .unwrap()
            .iter()
            .map(|f| f.term)
            .collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(inner.failover(&f2.id).await.unwrap(), Some(f2));
    }

    #[tokio::test]
    async fn a_store_down_at_start_up_is_initialised_in_the_background_before_any_write() {
        let inner = Arc::new(FlakyStore::default());
        inner.set_down(true);
        let registry = Registry::new();
        let store = fast(inner.clone(), 10, &registry);
        store
            .init()
            .await
            .expect("init must not fail while the store is down");
        store
            .put_report(&suite::report("dc1", "n1", 1, Utc::now()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(inner.inits.load(Ordering::SeqCst), 0);
        assert_eq!(store.backlog(), 1);
        inner.set_down(false);
        assert!(store.flush(Duration::from_secs(15)).await);
        assert_eq!(
            inner.inits.load(Ordering::SeqCst),
            1,
            "initialised once, in the background"
        );
        assert_eq!(inner.writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failovers_overlay_queued_records_in_store_order() {
        let inner = Arc::new(FlakyStore::default());
        let registry = Registry::new();
        let store = fast(inner.clone(), 10, &registry);
        let now = Utc::now();
        let old = suite::failover_record(1, "dc1", "dc2", now - chrono::Duration::hours(2));
        let mid = suite::failover_record(2, "dc2", "dc1", now - chrono::Duration::hours(1));
        store.put_failover(&old).await.unwrap();
        store.put_failover(&mid).await.unwrap();
        assert!(store.flush(Duration::from_secs(5)).await);
        inner.set_down(true);
        let mut mid2 = mid.clone();
        mid2.status = crate::model::FailoverStatus::Done;
        let new = suite::failover_record(3, "dc1", "dc3", now);
        store.put_failover(&mid2).await.unwrap();
        store.put_failover(&new).await.unwrap();
        // The list needs the store for the written records: it reports the outage.
        assert!(store.failovers(10).await.is_err());
        inner.set_down(false);
        let listed = store.failovers(2).await.unwrap();
        // Either still queued or already written: the answer is the same.
        assert_eq!(listed, vec![new.clone(), mid2.clone()]);
        assert!(store.flush(Duration::from_secs(15)).await);
        assert_eq!(store.failovers(10).await.unwrap(), vec![new, mid2, old]);
    }

    #[test]
    fn backoff_doubles_with_jitter_between_the_bounds() {
        let mut b = backoff((BACKOFF_MIN, BACKOFF_MAX));
        let mut step = BACKOFF_MIN;
        for _ in 0..12 {
            let d = b.next_delay(&mut rand::rng());
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        assert_eq!(b.ceiling(), BACKOFF_MAX);
        b.reset();
        assert!(b.next_delay(&mut rand::rng()) <= BACKOFF_MIN);
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err =
            BufferedStore::new(Arc::new(FlakyStore::default()), 1, &Registry::new()).unwrap_err();
        assert!(matches!(err, BufferedError::NoRuntime), "{err}");
    }

    #[tokio::test]
    async fn registering_twice_on_one_registry_is_an_error() {
        let registry = Registry::new();
        let _first = BufferedStore::new(Arc::new(FlakyStore::default()), 1, &registry).unwrap();
        let err = BufferedStore::new(Arc::new(FlakyStore::default()), 1, &registry).unwrap_err();
        assert!(matches!(err, BufferedError::Metrics(_)), "{err}");
    }
}
