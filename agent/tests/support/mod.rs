//! Shared by the agent's integration tests: an agent run in-process on a free loopback port,
//! an address nothing listens on, and a coordinator entry.
#![allow(dead_code)] // each test file uses its own part

use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;
use vault_dr_agent::Config;
use vault_dr_agent::config::CoordinatorConfig;
use vault_dr_common::Secret;

/// `http://127.0.0.1:PORT` of a port that was free a moment ago and is closed now.
pub fn closed_port() -> Url {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = Url::parse(&format!("http://{}", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    url
}

/// The coordinator at `url` with bearer `token`, no extra CA.
pub fn coordinator(url: Url, token: &str) -> CoordinatorConfig {
    CoordinatorConfig {
        url,
        token: Secret::new(token),
        ca_certs: Vec::new(),
    }
}

/// An agent running in-process (`vault_dr_agent::run`).
pub struct Running {
    /// Base URL of its HTTP API.
    pub url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<vault_dr_agent::Result<()>>,
}

/// Starts an agent with `config` on a free loopback port.
pub async fn spawn(config: Config) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(vault_dr_agent::run(config, listener, async {
        let _ = stopped.await;
    }));
    Running { url, stop, task }
}

impl Running {
    /// Whether the agent's task has ended (it should only on a stop).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the agent to stop and waits up to 5 s: its result, or `None` if it did not stop.
    pub async fn stop(self) -> Option<vault_dr_agent::Result<()>> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .ok()
            .map(|joined| joined.expect("the agent task panicked"))
    }
}

/// The value of the sample `series` (`name` or `name{k="v",...}`) in a Prometheus text
/// exposition: the first sample of that name whose labels include the given ones, whatever
/// their order and whatever others it has (every agent series also carries `cluster` and
/// `node`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    fn parse(series: &str) -> (&str, Vec<(&str, &str)>) {
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let labels = labels
            .trim_end_matches('}')
            .split(',')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k.trim(), v.trim().trim_matches('"')))
            })
            .collect();
        (name, labels)
    }
    let (name, want) = parse(series);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, value) = l.rsplit_once(' ')?;
        let (n, labels) = parse(s);
        let all = want.iter().all(|w| labels.contains(w));
        (n == name && all)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}
