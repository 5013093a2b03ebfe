//! Sending reports: every interval `POST <coordinator>/v1/reports` with the bearer token, keep
//! the desired state from the answer. With several coordinator URLs the agent posts to the one
//! that last answered 2xx and moves on to the next on a connection error or a 503 (a follower
//! coordinator answers 503), trying each at most once per report. When the coordinator is down or answers garbage, back
//! off with full jitter (never faster than the interval), count the failure by kind, and keep
//! going; the probe loop is a separate task and never waits for this one.

use crate::config::CoordinatorConfig;
use crate::error::{Error, Result, request_error_kind};
use crate::metrics::Metrics;
use crate::state::{Offer, Shared};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use url::Url;
use vault_dr_common::backoff::Backoff;
use vault_dr_common::{DesiredState, Secret};

/// First back-off ceiling after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest back-off ceiling.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Timeout of one report request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why one send failed; its label is the `kind` of the failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// No connection.
    Connect,
    /// No answer in time.
    Timeout,
    /// A non-2xx answer.
    Status(u16),
    /// A 2xx answer that is not a desired state.
    Decode,
}

impl SendFailure {
    /// Metric label.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
            Self::Decode => "decode",
        }
    }
}

/// Sends the reports of one agent.
#[derive(Debug)]
pub struct Sender {
    http: reqwest::Client,
    urls: Vec<Url>,
    current: AtomicUsize,
    token: Secret,
    shared: Arc<Shared>,
    metrics: Metrics,
    replication_applies: bool,
}

/// Largest answer to a report the agent reads (a desired state is a few hundred bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads at most `cap` bytes of a body; `Err(None)` when it is larger (announced or streamed).
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> std::result::Result<Vec<u8>, Option<reqwest::Error>> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > cap {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Builds the coordinator client.
pub fn http_client(c: &CoordinatorConfig) -> Result<reqwest::Client> {
    // Never follow a redirect: the answer must come from the configured coordinator, and the
    // bearer token must not travel anywhere else.
    let mut b = vault_dr_common::http::client_builder()
        .timeout(SEND_TIMEOUT)
        .connect_timeout(SEND_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1);
    for cert in &c.ca_certs {
        b = b.add_root_certificate(cert.clone());
    }
    b.build().map_err(|source| Error::HttpClient {
        what: "coordinator",
        source,
    })
}

impl Sender {
    /// A sender to `config.url`, then `fallbacks` in order.
    pub fn new(
        config: &CoordinatorConfig,
        fallbacks: &[Url],
        shared: Arc<Shared>,
        metrics: Metrics,
    ) -> Result<Self> {
        let urls = std::iter::once(&config.url)
            .chain(fallbacks)
            .map(|base| {
                let mut url = base.clone();
                if let Ok(mut segs) = url.path_segments_mut() {
                    segs.pop_if_empty().extend(["v1", "reports"]);
                }
                url
            })
            .collect();
        Ok(Self {
            http: http_client(config)?,
            urls,
            current: AtomicUsize::new(0),
            token: config.token.clone(),
            shared,
            metrics,
            replication_applies: false,
        })
    }

    /// Leaves `applied_term` to the replication backend (it sets it once it has carried out
    /// the desired state); without this, a kept desired state counts as applied at once.
    pub fn replication_applies_terms(mut self) -> Self {
        self.replication_applies = true;
        self
    }

    /// The report URL in use (the one that last answered 2xx).
    pub fn current_url(&self) -> &Url {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends one report (if there is an observation yet) and handles the answer.
    pub async fn send_once(&self) -> std::result::Result<(), SendFailure> {
        let Some(report) = self.shared.next_report() else {
            return Ok(());
        };
        let first = self.current.load(Ordering::Relaxed);
        let mut result = Err(SendFailure::Connect);
        for step in 0..self.urls.len() {
            let i = (first + step) % self.urls.len();
            result = self.post(&self.urls[i], &report).await;
            match result {
                Ok(_) => {
                    if i != first {
                        tracing::info!(url = %self.urls[i], "reporting to another coordinator");
                    }
                    self.current.store(i, Ordering::Relaxed);
                    break;
                }
                // Not there, frozen or not the leader: the next one may be.
                Err(SendFailure::Connect | SendFailure::Timeout | SendFailure::Status(503)) => {
                    continue;
                }
                Err(_) => break,
            }
        }
        let desired = result?;
        let term = desired.term;
        match self.shared.offer_desired(desired) {
            // Without a replication backend there is nothing to carry out for a new term.
            Offer::Kept if !self.replication_applies => self.shared.set_applied_term(term),
            Offer::Kept => {}
            Offer::StaleTerm => tracing::warn!(
                term,
                seen = self.shared.seen_term(),
                "ignored a desired state with a lower term"
            ),
            Offer::WrongCluster => {
                tracing::warn!(term, "ignored a desired state for another cluster")
            }
        }
        self.metrics
            .desired_term
            .set(i64::try_from(self.shared.seen_term()).unwrap_or(i64::MAX));
        self.metrics.reports_sent.inc();
        Ok(())
    }

    /// Posts one report to `url`; the desired state from a 2xx answer.
    async fn post(
        &self,
        url: &Url,
        report: &vault_dr_common::Report,
    ) -> std::result::Result<DesiredState, SendFailure> {
        let classify = |e: reqwest::Error| match request_error_kind(&e) {
            "timeout" => SendFailure::Timeout,
            "decode" => SendFailure::Decode,
            _ => SendFailure::Connect,
        };
        let resp = self
            .http
            .post(url.clone())
            .bearer_auth(self.token.expose())
            .json(report)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SendFailure::Status(status.as_u16()));
        }
        let body = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                Some(e) => classify(e),
                None => SendFailure::Decode,
            })?;
        serde_json::from_slice(&body).map_err(|_| SendFailure::Decode)
    }

    /// Sends every `interval`, backing off after failures, until the task is dropped.
    pub async fn run(self, interval: Duration) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP).with_floor(interval);
        let mut delay = interval;
        loop {
            if backoff.failures() == 0 {
                // A newly applied term (a promotion done, a new primary followed) is reported
                // at once: the coordinator's failover waits for it. Never while backing off.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.shared.applied_term_raised() => {}
                }
            } else {
                tokio::time::sleep(delay).await;
            }
            delay = match self.send_once().await {
                Ok(()) => {
                    if backoff.failures() > 0 {
                        tracing::info!(
                            after = backoff.failures(),
                            "coordinator accepts reports again"
                        );
                    }
                    backoff.reset();
                    interval
                }
                Err(f) => {
                    self.metrics.send_failed(f.kind());
                    let d = backoff.next_delay(&mut rand::rng());
                    // Log the first failure and then every tenth, not every second.
                    if backoff.failures() % 10 == 1 {
                        tracing::warn!(kind = f.kind(), ?f, failures = backoff.failures(), retry_in = ?d, "report not accepted");
                    }
                    d
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_ceiling_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            let d = b.next_delay(&mut rng);
            assert!(d <= b.ceiling(), "{d:?} above {:?}", b.ceiling());
            ceilings.push(b.ceiling().as_millis());
        }
        assert_eq!(
            ceilings,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.failures(), 0);
        b.next_delay(&mut rng);
        assert_eq!(b.ceiling(), BACKOFF_BASE);
    }

    #[test]
    fn the_delay_is_jittered_but_never_below_the_interval() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let floor = Duration::from_secs(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP).with_floor(floor);
            for _ in 0..6 {
                b.next_delay(&mut rng);
            }
            let d = b.next_delay(&mut rng);
            assert!(d >= floor && d <= BACKOFF_CAP, "{d:?}");
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 40, "full jitter spreads the delays: {seen:?}");
    }
}
