//! [`PrometheusServer`]: the real `prometheus` binary (Debian package, installed by
//! `scripts/setup.sh`) on a free loopback port, with a generated scrape config and a temporary
//! TSDB, killed when dropped.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use url::Url;
use vault_dr_lab::LabError;
use vault_dr_lab::process::ChildGuard;
use vault_dr_lab::tools;
use vault_dr_lab::wait::try_wait_for;

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// An error of the test Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The binary was not found or could not be started.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// A file or port operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A scrape target could not be understood.
    #[error("scrape target {0:?}: expected 127.0.0.1:PORT[/path[?k=v&...]]")]
    Target(String),
    /// Prometheus did not get ready, or exited.
    #[error("prometheus not ready after {after:?}; log {log}; last lines:\n{tail}")]
    NotReady {
        /// How long was waited.
        after: Duration,
        /// The log file.
        log: String,
        /// Its last lines.
        tail: String,
    },
    /// An HTTP request to Prometheus failed.
    #[error("prometheus {what}: {source}")]
    Http {
        /// The request.
        what: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered a query with an error.
    #[error("prometheus query {query:?}: {detail}")]
    Query {
        /// The PromQL.
        query: String,
        /// The error Prometheus gave (or what was wrong with its answer).
        detail: String,
    },
}

/// A running Prometheus scraping fixed targets; killed (and its storage removed) on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    // Declared before `dir` so the process dies before its storage is removed.
    child: ChildGuard,
    url: Url,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `scrape_targets` (`(job, target)`) every `scrape_interval`
    /// and waits until it is ready. A target is `127.0.0.1:PORT` (path `/metrics`) or
    /// `127.0.0.1:PORT/path?k=v`, e.g. an OpenBao node:
    /// `127.0.0.1:8200/v1/sys/metrics?format=prometheus`.
    pub async fn start(
        scrape_targets: &[(&str, &str)],
        scrape_interval: Duration,
    ) -> Result<Self, PromError> {
        let bin = tools::find("prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("vault-dr-prometheus-")
            .tempdir()
            .map_err(|source| PromError::Io {
                what: "create a temp dir".into(),
                source,
            })?;
        let config_path = dir.path().join("prometheus.yml");
        let config = render_config(scrape_targets, scrape_interval)?;
        std::fs::write(&config_path, config).map_err(|source| PromError::Io {
            what: format!("write {}", config_path.display()),
            source,
        })?;
        let port = vault_dr_lab::ports::reserve_loopback()?;
        let log = dir.path().join("prometheus.log");
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config_path.display()).into(),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            "--log.level=warn".into(),
        ];
        let child = ChildGuard::spawn("prometheus", &bin, &args, &log)?;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/"))
            .map_err(|e| PromError::Target(format!("prometheus listen url: {e}")))?;
        let client = vault_dr_common::http::client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| PromError::Http {
                what: "build client".into(),
                source,
            })?;
        let mut server = Self {
            child,
            url,
            client,
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// The base URL, `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The pid of the `prometheus` process.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The log file of the process.
    pub fn log_path(&self) -> &Path {
        self.child.log()
    }

    async fn wait_ready(&mut self) -> Result<(), PromError> {
        let ready = self
            .url
            .join("-/ready")
            .map_err(|e| PromError::Target(e.to_string()))?;
        let (client, child) = (&self.client, &mut self.child);
        // Some(true): ready; Some(false): it exited, which ends the wait at once.
        let outcome = try_wait_for("prometheus to be ready", READY_TIMEOUT, || {
            let running = child.is_running();
            let get = client.get(ready.clone()).send();
            async move {
                if matches!(get.await, Ok(r) if r.status().is_success()) {
                    return Some(true);
                }
                (!running).then_some(false)
            }
        })
        .await;
        if outcome == Ok(true) {
            return Ok(());
        }
        let log = self.child.log().to_path_buf();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        Err(PromError::NotReady {
            after: READY_TIMEOUT,
            log: log.display().to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        })
    }

    /// Runs an instant query (`/api/v1/query`) and returns its `data` object
    /// (`{"resultType": ..., "result": [...]}`).
    pub async fn query(&self, promql: &str) -> Result<Value, PromError> {
        let mut url = self
            .url
            .join("api/v1/query")
            .map_err(|e| PromError::Target(e.to_string()))?;
        url.query_pairs_mut().append_pair("query", promql);
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|source| PromError::Http {
                what: format!("query {promql:?}"),
                source,
            })?;
        let body: Value = resp.json().await.map_err(|source| PromError::Http {
            what: format!("read answer to {promql:?}"),
            source,
        })?;
        if body.get("status").and_then(Value::as_str) != Some("success") {
            return Err(PromError::Query {
                query: promql.to_owned(),
                detail: body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no status success")
                    .to_owned(),
            });
        }
        body.get("data").cloned().ok_or_else(|| PromError::Query {
            query: promql.to_owned(),
            detail: "no data in the answer".into(),
        })
    }

    /// Polls [`PrometheusServer::query`] until the result vector is not empty, and returns it.
    pub async fn wait_for(&self, promql: &str, timeout: Duration) -> Result<Vec<Value>, PromError> {
        // A result: Some(Ok(v)); a failed query: Some(Err(e)), which ends the wait at once.
        try_wait_for(promql, timeout, || async {
            match self.query(promql).await {
                Ok(data) => data
                    .get("result")
                    .and_then(Value::as_array)
                    .filter(|r| !r.is_empty())
                    .map(|r| Ok(r.clone())),
                Err(e) => Some(Err(e)),
            }
        })
        .await
        .map_err(|_| PromError::Query {
            query: promql.to_owned(),
            detail: format!("still no result after {timeout:?}"),
        })?
    }

    /// The temporary directory holding config, log and TSDB.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The YAML config: one scrape job per target.
fn render_config(targets: &[(&str, &str)], interval: Duration) -> Result<String, PromError> {
    let secs = interval.as_secs_f64().max(0.1);
    let mut out = format!(
        "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\nscrape_configs:\n",
        ms = (secs * 1000.0).round() as u64
    );
    for (job, target) in targets {
        let (addr, rest) = match target.split_once('/') {
            Some((a, r)) => (a, Some(r)),
            None => (*target, None),
        };
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| PromError::Target((*target).to_owned()))?;
        if host != "127.0.0.1" || port.parse::<u16>().is_err() {
            return Err(PromError::Target((*target).to_owned()));
        }
        let (path, query) = match rest {
            Some(r) => match r.split_once('?') {
                Some((p, q)) => (format!("/{p}"), Some(q)),
                None => (format!("/{r}"), None),
            },
            None => ("/metrics".to_owned(), None),
        };
        let _ = writeln!(out, "  - job_name: {}", yaml_str(job));
        let _ = writeln!(out, "    metrics_path: {}", yaml_str(&path));
        if let Some(q) = query {
            let _ = writeln!(out, "    params:");
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let _ = writeln!(out, "      {}: [{}]", yaml_str(k), yaml_str(v));
            }
        }
        let _ = writeln!(
            out,
            "    static_configs:\n      - targets: [{}]",
            yaml_str(addr)
        );
    }
    Ok(out)
}

/// A double-quoted YAML string.
fn yaml_str(s: &str) -> String {
    format!("{:?}", s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_one_job_per_target_with_path_and_params() {
        let c = render_config(
            &[
                ("agent", "127.0.0.1:9100"),
                ("bao", "127.0.0.1:8200/v1/sys/metrics?format=prometheus"),
            ],
            Duration::from_millis(500),
        )
        .unwrap();
        assert!(c.contains("scrape_interval: 500ms"), "{c}");
        assert!(
            c.contains("job_name: \"agent\"\n    metrics_path: \"/metrics\""),
            "{c}"
        );
        assert!(c.contains("metrics_path: \"/v1/sys/metrics\""), "{c}");
        assert!(c.contains("\"format\": [\"prometheus\"]"), "{c}");
        assert!(c.contains("targets: [\"127.0.0.1:8200\"]"), "{c}");
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        assert!(render_config(&[("x", "10.0.0.1:80")], Duration::from_secs(1)).is_err());
        assert!(render_config(&[("x", "localhost")], Duration::from_secs(1)).is_err());
    }
}
