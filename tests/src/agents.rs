//! An agent running in-process on a free loopback port (`vault_dr_agent::run`), with the calls
//! the integration tests make on it: its current report, polling until a report satisfies a
//! predicate, its `/metrics` text, and an orderly shutdown. It stops when dropped.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use vault_dr_common::Report;
use vault_dr_lab::wait::wait_for;

/// An in-process agent; its task is aborted when this is dropped.
#[derive(Debug)]
pub struct InProcessAgent {
    /// Base URL of its HTTP API, `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<vault_dr_agent::Result<()>>>,
}

impl InProcessAgent {
    /// Starts an agent with `config` on a free loopback port.
    pub async fn start(config: vault_dr_agent::Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(vault_dr_agent::run(config, listener, async {
            let _ = stopped.await;
        }));
        let http = vault_dr_common::http::client_builder()
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            url,
            http,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `GET /v1/report` (`None` before the first probe or on any failure).
    pub async fn report(&self) -> Option<Report> {
        let r = self
            .http
            .get(format!("{}/v1/report", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// Polls the report every 100 ms until `pred` holds; panics with the last report after
    /// `timeout` (this is test support: a timeout is a failed test).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Report) -> bool,
    ) -> Report {
        let what = format!("the agent to report {what}");
        wait_for(&what, timeout, || async {
            match self.report().await {
                Some(r) if pred(&r) => Ok(r),
                Some(r) => Err(format!("{r:#?}")),
                None => Err("no report".to_owned()),
            }
        })
        .await
    }

    /// `GET /metrics` as text. Panics when the agent does not answer with it (test support: the
    /// caller is about to assert on the text, and an empty one would hide why).
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.url);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), 200, "GET {url}");
        resp.text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
    }

    /// Asks the agent to stop and waits up to 5 s for it; the agent's own result.
    pub async fn shutdown(mut self) -> Result<vault_dr_agent::Result<()>, String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let Some(t) = self.task.take() else {
            return Err("already stopped".into());
        };
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(format!("agent task failed: {e}")),
            Err(_) => Err("agent did not stop within 5 s".into()),
        }
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The name and labels of one sample line's series (`name{k="v",...}`), labels sorted.
pub fn parse_series(series: &str) -> (String, BTreeMap<String, String>) {
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    let labels = labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect();
    (name.to_owned(), labels)
}

/// The value of the sample `series` (`name` or `name{k="v",...}`) in a Prometheus text
/// exposition: the first sample of that name whose labels include the given ones, whatever
/// their order and whatever others it has (every agent series also carries `cluster` and
/// `node`); panics with the text when there is none.
pub fn metric(text: &str, series: &str) -> f64 {
    let (name, want) = parse_series(series);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, value) = l.rsplit_once(' ')?;
            let (n, labels) = parse_series(s);
            let all = want.iter().all(|(k, v)| labels.get(k) == Some(v));
            (n == name && all)
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("metric {series} not found in:\n{text}"))
}
