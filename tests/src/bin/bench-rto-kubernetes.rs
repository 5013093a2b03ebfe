//! `bench-rto-kubernetes`: the RTO a client of the Kubernetes client Service sees, from the
//! primary's server stop to its first acknowledged write, with the chart's default policy.
//!
//! ```text
//! cargo run -p vault-dr-tests --bin bench-rto-kubernetes -- --runs 5 [--vs DIR] [--keep-alive]
//! ```
//!
//! Each run starts a DR group of three single-node OpenBao clusters (`p` primary, `s1`, `s2`),
//! each with its agent (write gate, snapshot replication at the chart's 5 s interval,
//! continuous restore) and three coordinators with the chart's default policy (probe every
//! 1 s, 800 ms timeout, 3 confirming ticks, 5 s report TTL, `complete` promotion) whose traffic
//! backend is the Kubernetes Service switch, on a fake apiserver in this process. A client
//! writes every 50 ms through an emulated kube-proxy: each connection goes to the cluster
//! whose pod labels the Service selects at that moment (read from the fake's store, so the
//! proxy adds no delay of its own; a real kube-proxy adds its endpoint sync), or is refused
//! while the Service is cut. Then `p`'s server is SIGKILLed, and the bench measures the time
//! to the client's first acknowledged write, and the failover's step times from its record.
//!
//! Each write opens a new connection (as a new connection through kube-proxy goes to the
//! endpoints of the moment); `--keep-alive` reuses it, as most clients do: then the client
//! reaches the new primary only once the old pod's write gate closes the connection after a
//! refusal.
//!
//! `--vs DIR` alternates the runs between this build's binaries and the `vault-dr` and
//! `vault-dr-agent` in `DIR` (another build), so that both are measured side by side in one
//! run; the summary gives each one's median and the ratio. Exit code 2 on a set-up error.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use vault_dr_coordinator::config::{TrafficBackend, TrafficFile};
use vault_dr_coordinator::model::{FailoverRecord, Step};
use vault_dr_lab::harness::Group;
use vault_dr_tests::coordinators::write_kubeconfig;
use vault_dr_tests::fake_apiserver::{FakeApiServer, client_service};

const NAMESPACE: &str = "default";
const SERVICE: &str = "vault-dr-active";
const CLUSTERS: [&str; 3] = ["p", "s1", "s2"];
const WRITE_EVERY: Duration = Duration::from_millis(50);

fn labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "openbao".to_owned()),
        ("vault-dr.io/cluster".to_owned(), cluster.to_owned()),
    ])
}

/// One run's figures, in seconds.
#[derive(Debug, Clone)]
struct Run {
    build: String,
    /// Kill to the client's first acknowledged write.
    rto: f64,
    /// Kill to the decision (the failover's start).
    decided: f64,
    /// Kill to each step's end.
    steps: Vec<(Step, f64)>,
    /// Writes that failed between the kill and the first acknowledged one.
    failed_writes: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match run().await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench-rto-kubernetes: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<()> {
    let mut runs = 5usize;
    let mut vs: Option<PathBuf> = None;
    let mut keep_alive = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .context("--runs N")?
                    .parse()
                    .context("--runs N")?
            }
            "--vs" => vs = Some(PathBuf::from(args.next().context("--vs DIR")?)),
            "--keep-alive" => keep_alive = true,
            other => bail!("unknown argument {other:?} (--runs N, --vs DIR, --keep-alive)"),
        }
    }
    let mut results = Vec::new();
    for i in 0..runs {
        let builds: Vec<(String, Option<PathBuf>)> = match &vs {
            None => vec![("this".into(), None)],
            Some(dir) => {
                let pair = [
                    ("this".to_owned(), None),
                    (dir.display().to_string(), Some(dir.clone())),
                ];
                // Alternate which one goes first, so neither always runs on a warmer machine.
                if i % 2 == 0 {
                    pair.to_vec()
                } else {
                    pair.into_iter().rev().collect()
                }
            }
        };
        for (name, dir) in builds {
            let r = one_run(&name, dir, keep_alive).await?;
            println!(
                "run {} [{}]: RTO {:.2} s (decided +{:.2} s; {}), {} writes failed",
                i + 1,
                r.build,
                r.rto,
                r.decided,
                r.steps
                    .iter()
                    .map(|(s, t)| format!("{s} +{t:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.failed_writes
            );
            results.push(r);
        }
    }
    let mut names: Vec<String> = results.iter().map(|r| r.build.clone()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    let mut medians = Vec::new();
    for name in &names {
        let of: Vec<&Run> = results.iter().filter(|r| &r.build == name).collect();
        let mut rto: Vec<f64> = of.iter().map(|r| r.rto).collect();
        let p50 = median(&mut rto);
        let max = rto.iter().copied().fold(0.0, f64::max);
        // Detection depends on where the kill falls in the probe tick (up to one interval);
        // from the decision on, the failover itself.
        let mut after_decision: Vec<f64> = of.iter().map(|r| r.rto - r.decided).collect();
        let after_decision = median(&mut after_decision);
        let step_p50 = |step: Step| {
            let mut v: Vec<f64> = of
                .iter()
                .filter_map(|r| r.steps.iter().find(|(s, _)| *s == step).map(|(_, t)| *t))
                .collect();
            median(&mut v)
        };
        println!(
            "[{name}] {} runs: RTO p50 {p50:.2} s, max {max:.2} s; decision to first write p50 {after_decision:.2} s; p50 after the kill: promoted {:.2} s, switched {:.2} s, repointed {:.2} s",
            of.len(),
            step_p50(Step::Promoted),
            step_p50(Step::Switched),
            step_p50(Step::Repointed),
        );
        medians.push((name.clone(), p50, after_decision));
    }
    if let [(a, ma, da), (b, mb, db)] = medians.as_slice() {
        println!(
            "ratios [{a}] / [{b}]: RTO p50 {:.2}, decision to first write p50 {:.2}",
            ma / mb,
            da / db
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn one_run(build: &str, binaries: Option<PathBuf>, keep_alive: bool) -> Result<Run> {
    let fake = FakeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, fake.url(), NAMESPACE)?;
    let services: Api<Service> = Api::namespaced(fake.client()?, NAMESPACE);
    let service = client_service(SERVICE, labels("p"));
    services.create(&PostParams::default(), &service).await?;

    let mut g = Group::builder()
        .clusters(CLUSTERS)
        .coordinators(3)
        .traffic(false)
        .agent_interval(Duration::from_secs(1))
        .replication(
            vault_dr_lab::group::RestoreMode::Continuous,
            Duration::from_secs(5),
        )
        .policy(|p| {
            p.probe_interval = Duration::from_secs(1);
            p.confirm = 3;
            p.report_ttl = Duration::from_secs(5);
            p.cooldown = Duration::from_secs(300);
            p.promotion = None;
        })
        .spec(|s| {
            s.traffic_file = Some(TrafficFile {
                backend: Some(TrafficBackend::Kubernetes),
                namespace: Some(NAMESPACE.into()),
                service: Some(SERVICE.into()),
                ..TrafficFile::default()
            });
            s.selectors = CLUSTERS
                .iter()
                .map(|c| ((*c).to_owned(), labels(c)))
                .collect();
            s.coordinator_env = vec![("KUBECONFIG".into(), kubeconfig.display().to_string())];
            s.binaries_dir = binaries;
        })
        .start()
        .await
        .context("start the group")?;

    // The emulated kube-proxy: each connection to the cluster the Service selects now.
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for c in CLUSTERS {
        let node = &g.cluster(c).context("a cluster of the group")?.nodes()[0];
        let addr = if g.gated() {
            node.client_socket().to_string()
        } else {
            format!(
                "{}:{}",
                node.api_addr().host_str().unwrap_or("127.0.0.1"),
                node.api_addr().port().unwrap_or(8200)
            )
        };
        targets.insert(c.to_owned(), addr);
    }
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy.local_addr()?;
    let fake = Arc::new(fake);
    let proxy_fake = fake.clone();
    let proxy_task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            let selector = proxy_fake
                .object("", "services", NAMESPACE, SERVICE)
                .and_then(|s| {
                    serde_json::from_value::<BTreeMap<String, String>>(
                        s["spec"]["selector"].clone(),
                    )
                    .ok()
                })
                .unwrap_or_default();
            let target = CLUSTERS
                .iter()
                .find(|c| labels(c) == selector)
                .and_then(|c| targets.get(*c).cloned());
            let Some(target) = target else {
                // A cut Service selects no pod: the connection is refused.
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });

    // The writer, through the proxy, with p's root token (every cluster restored p's data).
    let token = g.cluster("p").context("p")?.root_token().clone();
    let mut http = vault_dr_common::http::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(2));
    if !keep_alive {
        http = http.pool_max_idle_per_host(0);
    }
    let http = http.build()?;
    let url = format!("http://{proxy_addr}/v1/secret/data/bench-rto-kubernetes");
    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let writer_log = log.clone();
    let last_answer: Arc<Mutex<String>> = Arc::default();
    let writer_answer = last_answer.clone();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            let at = Instant::now();
            let answer = http
                .post(&url)
                .header("X-Vault-Token", token.expose())
                .json(&serde_json::json!({ "data": { "n": n } }))
                .send()
                .await;
            let ok = answer.as_ref().is_ok_and(|r| r.status().is_success());
            let said = match answer {
                Ok(r) => format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default().trim()
                ),
                Err(e) => vault_dr_common::http::error_chain(&e),
            };
            *writer_answer.lock().unwrap_or_else(|p| p.into_inner()) = said;
            writer_log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((at, ok));
            tokio::time::sleep_until((at + WRITE_EVERY).into()).await;
        }
    });
    // Steady: writes go through.
    let steady = Instant::now();
    loop {
        let ok = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .take(5)
            .filter(|(_, ok)| *ok)
            .count();
        if ok == 5 {
            break;
        }
        if steady.elapsed() > Duration::from_secs(30) {
            bail!("the client never wrote through the Service before the fault");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed_at = Instant::now();
    let killed_utc = chrono::Utc::now();
    g.cluster_mut("p").context("p")?.nodes_mut()[0].kill();
    g.wait_failover_done(1, Duration::from_secs(90))
        .await
        .context("the failover")?;
    let first_ok = loop {
        let found = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(at, ok)| *ok && *at > killed_at)
            .map(|(at, _)| *at);
        if let Some(at) = found {
            break at;
        }
        if killed_at.elapsed() > Duration::from_secs(120) {
            let selector = fake
                .object("", "services", NAMESPACE, SERVICE)
                .map(|s| s["spec"]["selector"].clone());
            bail!(
                "no write was acknowledged within 120 s of the kill (the Service selects {selector:?}; last answer: {:?})",
                last_answer.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    writer.abort();
    proxy_task.abort();
    let failed_writes = log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(at, ok)| !*ok && *at > killed_at && *at < first_ok)
        .count() as u64;
    let leader = g.leader().await.context("a leader")?;
    let records = g
        .get_json(&leader, "v1/failovers")
        .await
        .context("GET v1/failovers")?;
    let record: FailoverRecord =
        serde_json::from_value(records[0].clone()).context("the failover record")?;
    let since_kill =
        |t: chrono::DateTime<chrono::Utc>| (t - killed_utc).num_milliseconds() as f64 / 1000.0;
    let steps = record
        .steps
        .iter()
        .filter_map(|s| s.finished_at.map(|f| (s.step, since_kill(f))))
        .collect();
    Ok(Run {
        build: build.to_owned(),
        rto: (first_ok - killed_at).as_secs_f64(),
        decided: since_kill(record.decided_at),
        steps,
        failed_writes,
    })
}
