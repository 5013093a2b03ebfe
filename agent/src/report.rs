//! Sending reports: every interval `POST <coordinator>/v1/reports` with the bearer token, keep
//! the desired state from the answer. With several coordinator URLs the agent posts to the one
//! that last answered 2xx and moves on to the next on a connection error or a 503 (a follower
//! coordinator answers 503), trying each at most once per report. While no coordinator answers
//! as leader, retry within at most 1 s (a new leader must hear from every agent at once); when
//! one answers and refuses or answers garbage, back off with full jitter up to 30 s. Never
//! faster than the interval; every failure is counted by kind; the probe loop is a separate
//! task and never waits for this one.

use crate::config::CoordinatorConfig;
use crate::error::{Error, Result, request_error_kind};
use crate::metrics::Metrics;
use crate::replication::Replicator;
use crate::state::{Offer, Shared};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use url::Url;
use vault_dr_common::backoff::Backoff;
use vault_dr_common::{DesiredState, Secret};

/// First back-off ceiling after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest back-off ceiling when a coordinator answered and refused the report (4xx, garbage).
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Largest back-off ceiling while no coordinator answers as leader (every URL refused the
/// connection, timed out or answered 503): a new leader must hear from every agent within
/// about one report interval of becoming ready, or it has no observers to decide with.
pub const NO_LEADER_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// Timeout of one report request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two reports while a failover is in progress: every step of it
/// (promotion, re-pointing) waits for an agent's next report to carry the news either way.
pub const FAILOVER_INTERVAL: Duration = Duration::from_millis(200);

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

/// One failed send: its kind (the back-off and the failure counter) and the error that names
/// the URL and the coordinator's reason (the log line).
#[derive(Debug)]
pub struct SendError {
    /// The kind.
    pub failure: SendFailure,
    /// What failed, where, and why.
    pub error: Error,
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
    live_replication: Option<Arc<dyn Replicator>>,
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
            live_replication: None,
        })
    }

    /// Leaves `applied_term` to the replication backend `status` (it sets it once it has
    /// carried out the desired state); without this, a kept desired state counts as applied
    /// at once. Every report then carries `status` as of sending rather than as of the last
    /// probe round: the report that announces a promotion must name the snapshot the backend
    /// restored for it (the coordinator accounts the failover's loss from it), and the probe
    /// round may have run before that restore ended. `status` must be cheap and local (the
    /// snapshot backend's is in memory), as it is read for every report.
    pub fn replication_applies_terms(mut self, status: Arc<dyn Replicator>) -> Self {
        self.replication_applies = true;
        self.live_replication = Some(status);
        self
    }

    /// The report URL in use (the one that last answered 2xx).
    pub fn current_url(&self) -> &Url {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends one report (if there is an observation yet) and handles the answer.
    pub async fn send_once(&self) -> std::result::Result<(), SendError> {
        let Some(mut report) = self.shared.next_report() else {
            return Ok(());
        };
        if let Some(status) = &self.live_replication {
            report.replication = status.status().await;
        }
        let first = self.current.load(Ordering::Relaxed);
        let mut result = Err(SendError {
            failure: SendFailure::Connect,
            error: Error::CoordinatorRequest {
                url: self.current_url().clone(),
                message: "no coordinator URL".into(),
            },
        });
        for step in 0..self.urls.len() {
            let i = (first + step) % self.urls.len();
            result = self.post(&self.urls[i], &report).await;
            match &result {
                Ok(_) => {
                    if i != first {
                        tracing::info!(url = %self.urls[i], "reporting to another coordinator");
                    }
                    self.current.store(i, Ordering::Relaxed);
                    break;
                }
                // Not there, frozen or not the leader: the next one may be.
                Err(SendError {
                    failure: SendFailure::Connect | SendFailure::Timeout | SendFailure::Status(503),
                    ..
                }) => {
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

    /// Posts one report to `url`; the desired state from a 2xx answer, else the failure with
    /// the URL and the reason (the transport error's causes, or what the answer said).
    async fn post(
        &self,
        url: &Url,
        report: &vault_dr_common::Report,
    ) -> std::result::Result<DesiredState, SendError> {
        let classify = |e: reqwest::Error| SendError {
            failure: match request_error_kind(&e) {
                "timeout" => SendFailure::Timeout,
                "decode" => SendFailure::Decode,
                _ => SendFailure::Connect,
            },
            error: Error::CoordinatorRequest {
                url: url.clone(),
                message: vault_dr_common::http::error_chain(&e.without_url()),
            },
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
        let decode = |message: String| SendError {
            failure: SendFailure::Decode,
            error: Error::CoordinatorDecode {
                url: url.clone(),
                message,
            },
        };
        let body = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                Some(e) => classify(e),
                None => decode(format!("more than {MAX_ANSWER_BYTES} bytes")),
            });
        if !status.is_success() {
            // The coordinator says why in its body; a body that cannot be read still leaves
            // the status.
            let reason = match &body {
                Ok(b) => refusal_reason(b),
                Err(e) => format!("(body unreadable: {})", e.error),
            };
            return Err(SendError {
                failure: SendFailure::Status(status.as_u16()),
                error: Error::CoordinatorStatus {
                    url: url.clone(),
                    status: status.as_u16(),
                    reason,
                },
            });
        }
        serde_json::from_slice(&body?).map_err(|e| decode(e.to_string()))
    }

    /// Sends every `interval`, backing off after failures, until the task is dropped. Every
    /// [`FAILOVER_INTERVAL`] at most while a failover is in progress (each step waits for the
    /// agents' next answer), while the leader suspects the primary, or while this agent sees
    /// its node or the primary down (the leader's word comes back in the answers); at once
    /// when the applied term rises or a probe round's evidence changes.
    pub async fn run(self, interval: Duration) {
        let mut backoff = Retry::new(interval);
        let mut repeats = vault_dr_common::telemetry::Repeats::default();
        let mut delay = interval;
        loop {
            if backoff.failures() == 0 {
                // A newly applied term (a promotion done, a new primary followed) is reported
                // at once: the coordinator's failover waits for it. Never while backing off.
                // So is a change of what the node or the primary looks like to this agent:
                // the leader decides on the observers' reports.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.shared.applied_term_raised() => {}
                    () = self.shared.evidence_changed() => {}
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
                    repeats.clear();
                    let urgent = self.shared.alarmed()
                        || self
                            .shared
                            .desired()
                            .is_some_and(|d| d.failover_in_progress || d.primary_suspect);
                    if urgent {
                        interval.min(FAILOVER_INTERVAL)
                    } else {
                        interval
                    }
                }
                Err(SendError { failure: f, error }) => {
                    self.metrics.send_failed(f.kind());
                    let d = backoff.next_delay(f, &mut rand::rng());
                    // Once when the failure appears or changes, then once a minute.
                    let text = error.to_string();
                    if let Some(repeated) = repeats.note(&text, std::time::Instant::now()) {
                        tracing::warn!(kind = f.kind(), failures = backoff.failures(), repeated, retry_in = ?d, "report not accepted: {text}");
                    }
                    d
                }
            };
        }
    }
}

/// What a refused report's answer says: the coordinator's `{"error": ...}`, else the body
/// (trimmed, escaped), else that it was empty (then it is probably not a vault-dr coordinator).
fn refusal_reason(body: &[u8]) -> String {
    use vault_dr_common::http::{Answerer, answer_reason};
    match answer_reason(body) {
        (Some(reason), Answerer::VaultDr) => reason,
        (Some(reason), _) => format!("{reason} (not a vault-dr answer)"),
        (None, _) => "an empty body (probably not a vault-dr coordinator, which says why)".into(),
    }
}

/// The report loop's back-off: while no coordinator answers as leader it stays short
/// ([`NO_LEADER_BACKOFF_CAP`]), so the agent finds a new leader within about an interval of its
/// readiness; a coordinator that answers and refuses backs off up to [`BACKOFF_CAP`]. Never
/// faster than the report interval.
#[derive(Debug, Clone)]
struct Retry {
    searching: Backoff,
    refused: Backoff,
}

impl Retry {
    fn new(interval: Duration) -> Self {
        Self {
            searching: Backoff::new(BACKOFF_BASE, NO_LEADER_BACKOFF_CAP.max(interval))
                .with_floor(interval),
            refused: Backoff::new(BACKOFF_BASE, BACKOFF_CAP).with_floor(interval),
        }
    }

    /// Consecutive failures of either kind.
    fn failures(&self) -> u32 {
        self.searching.failures() + self.refused.failures()
    }

    fn reset(&mut self) {
        self.searching.reset();
        self.refused.reset();
    }

    /// The delay after failure `f`.
    fn next_delay(&mut self, f: SendFailure, rng: &mut impl rand::Rng) -> Duration {
        match f {
            SendFailure::Connect | SendFailure::Timeout | SendFailure::Status(503) => {
                self.searching.next_delay(rng)
            }
            _ => self.refused.next_delay(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[tokio::test]
    async fn a_report_carries_the_replication_status_as_of_sending_not_of_the_last_probe() {
        use crate::replication::test_util::FixedReplicator;
        use std::sync::Mutex;
        use vault_dr_common::{ReplicationStatus, Report, Role};
        // A coordinator that keeps the reports it gets and answers a desired state.
        let got: Arc<Mutex<Vec<Report>>> = Arc::default();
        let app = axum::Router::new().route(
            "/v1/reports",
            axum::routing::post({
                let got = got.clone();
                move |axum::Json(r): axum::Json<Report>| async move {
                    let answer = DesiredState {
                        term: 2,
                        cluster: r.cluster.clone(),
                        role: Role::Primary,
                        primary: r.cluster.clone(),
                        primary_api_addr: None,
                        failover_in_progress: false,
                        promotion: Default::default(),
                        final_snapshot_from: None,
                        primary_suspect: false,
                        raft_formed_term: None,
                        raft_recover_node: None,
                        raft_formed_by: None,
                        raft_handover: false,
                    };
                    got.lock().unwrap().push(r);
                    axum::Json(answer)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let shared = Arc::new(Shared::new("s1", "s1-0"));
        // The last probe round saw the data before the promotion's restore.
        let mut o = crate::state::tests::observation();
        o.replication.restored_index = Some(100);
        shared.set_observation(o);
        // The backend has restored index 140 since and applied the term.
        let backend = Arc::new(FixedReplicator(Mutex::new(ReplicationStatus {
            restored_index: Some(140),
            restored_taken_at: Some(chrono::Utc::now()),
            ..ReplicationStatus::default()
        })));
        let sender = Sender::new(
            &CoordinatorConfig {
                url,
                token: Secret::new("t".to_owned()),
                ca_certs: Vec::new(),
            },
            &[],
            shared.clone(),
            Metrics::new(&prometheus::Registry::new()).unwrap(),
        )
        .unwrap()
        .replication_applies_terms(backend);
        sender.send_once().await.unwrap();
        server.abort();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].replication.restored_index,
            Some(140),
            "the promotion's restore, not the probe round's"
        );
        assert!(got[0].replication.restored_taken_at.is_some());
        assert_eq!(
            got[0].vault.raft_applied_index,
            Some(3),
            "the rest is the probe's"
        );
    }

    #[tokio::test]
    async fn a_refused_report_names_the_status_the_url_and_the_coordinators_reason() {
        // Answers in turn: 401 with a reason, 422 with a reason, 403 with nothing.
        let answers = Arc::new(std::sync::Mutex::new(vec![
            (403, String::new()),
            (422, r#"{"error":"unknown cluster \"nowhere\""}"#.to_owned()),
            (
                401,
                r#"{"error":"missing or wrong bearer token"}"#.to_owned(),
            ),
        ]));
        let app = axum::Router::new().route(
            "/v1/reports",
            axum::routing::post(move || {
                let answers = answers.clone();
                async move {
                    let (code, body) = answers.lock().unwrap().pop().unwrap();
                    (axum::http::StatusCode::from_u16(code).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Arc::new(Shared::new("s1", "s1-0"));
        shared.set_observation(crate::state::tests::observation());
        let sender = Sender::new(
            &CoordinatorConfig {
                url: url.clone(),
                token: Secret::new("wrong".to_owned()),
                ca_certs: Vec::new(),
            },
            &[],
            shared,
            Metrics::new(&prometheus::Registry::new()).unwrap(),
        )
        .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let e = sender.send_once().await.unwrap_err();
            seen.push((e.failure, e.error.to_string()));
        }
        server.abort();
        let at = format!("{url}v1/reports");
        assert_eq!(seen[0].0, SendFailure::Status(401));
        assert!(
            seen[0].1.contains(&at) && seen[0].1.contains("401: missing or wrong bearer token"),
            "{}",
            seen[0].1
        );
        assert_eq!(seen[1].0, SendFailure::Status(422));
        assert!(
            seen[1].1.contains("422: unknown cluster \"nowhere\""),
            "{}",
            seen[1].1
        );
        assert_eq!(seen[2].0, SendFailure::Status(403));
        assert!(seen[2].1.contains("403: an empty body"), "{}", seen[2].1);
    }

    #[tokio::test]
    async fn an_unresolvable_coordinator_names_the_dns_failure() {
        let shared = Arc::new(Shared::new("s1", "s1-0"));
        shared.set_observation(crate::state::tests::observation());
        let sender = Sender::new(
            &CoordinatorConfig {
                url: Url::parse("http://no-such-host.invalid:1").unwrap(),
                token: Secret::new("t".to_owned()),
                ca_certs: Vec::new(),
            },
            &[],
            shared,
            Metrics::new(&prometheus::Registry::new()).unwrap(),
        )
        .unwrap();
        let e = sender.send_once().await.unwrap_err();
        assert_eq!(e.failure, SendFailure::Connect);
        let text = e.error.to_string();
        assert!(
            text.contains("http://no-such-host.invalid:1/v1/reports")
                && text.contains("failed to lookup address"),
            "{text}"
        );
    }

    #[test]
    fn while_no_leader_answers_the_agent_retries_within_a_second_and_backs_off_only_on_refusals() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let interval = Duration::from_millis(500);
        let mut r = Retry::new(interval);
        for f in [
            SendFailure::Connect,
            SendFailure::Timeout,
            SendFailure::Status(503),
        ] {
            for _ in 0..40 {
                let d = r.next_delay(f, &mut rng);
                assert!(d >= interval && d <= NO_LEADER_BACKOFF_CAP, "{f:?}: {d:?}");
            }
        }
        let mut longest = Duration::ZERO;
        for _ in 0..12 {
            longest = longest.max(r.next_delay(SendFailure::Status(401), &mut rng));
        }
        assert!(
            longest > NO_LEADER_BACKOFF_CAP,
            "a refusing coordinator is backed off: {longest:?}"
        );
        assert!(longest <= BACKOFF_CAP);
        r.reset();
        assert_eq!(r.failures(), 0);
    }

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
