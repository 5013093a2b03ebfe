//! `bench-takeover`: how long the coordinator group is without a leader after kill -9 of the
//! leader, over N kills, per coordination backend.
//!
//! ```text
//! cargo run --release -p vault-dr-tests --bin bench-takeover -- --kills 10 --backend both
//! ```
//!
//! Three coordinator replicas run with the default lease settings (5 s lease, 1.5 s renew
//! period; the leader renews at least once a second, followers retry every 500 ms) on the
//! `local` backend (shared generation files) and/or the `kubernetes` backend (the fake
//! apiserver, or the cluster of `VAULT_DR_TEST_KUBECONFIG`). Each round: wait until one replica leads and every replica runs,
//! wait a varying 1.5–2.5 s (so the kill falls at different points of the renewal cycle), kill -9
//! the leader, and time (a) until the lease names another replica and (b) until another
//! replica's `/readyz` answers 200; then restart the killed replica as a follower. Prints each
//! round, then p50 and max per backend. The DR group's clusters point at closed loopback ports
//! (no agent reports, so the detector never fails over): this measures coordination only.
//!
//! The replicas are this binary re-executed in coordinator mode (`bench-takeover coordinator
//! --config FILE` runs `vault_dr_coordinator::cli::main`, the code of `vault-dr coordinator`), so
//! the bench always measures the code it was built from and needs nothing else built.
//! Exit code 2 on a set-up error.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vault_dr_coordinator::coordination::Coordination;
use vault_dr_coordinator::coordination::local::LocalCoordination;
use vault_dr_lab::harness::Group;
use vault_dr_tests::coordinators::{Backend, HaGroups, write_kubeconfig};
use vault_dr_tests::fake_apiserver::{ENV_KUBECONFIG, TestKube, test_client};

/// The default lease settings of the coordinator (not overridden here).
const LEASE: Duration = Duration::from_secs(5);
const RENEW: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Local,
    Kubernetes,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Kubernetes => "kubernetes",
        }
    }
}

struct Args {
    kills: usize,
    backends: Vec<Which>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut kills = 10;
    let mut backends = vec![Which::Local, Which::Kubernetes];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kills" => {
                kills = it
                    .next()
                    .context("--kills needs a number")?
                    .parse()
                    .context("--kills")?;
                if kills == 0 {
                    bail!("--kills must be at least 1");
                }
            }
            "--backend" => {
                backends = match it.next().map(String::as_str) {
                    Some("local") => vec![Which::Local],
                    Some("kubernetes") => vec![Which::Kubernetes],
                    Some("both") => vec![Which::Local, Which::Kubernetes],
                    other => bail!("--backend local|kubernetes|both, not {other:?}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "bench-takeover [--kills N (10)] [--backend local|kubernetes|both (both)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Args { kills, backends })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn closed_port_url() -> Result<url::Url> {
    let port = vault_dr_tests::lab::ports::closed_loopback()?;
    // Nothing answers there.
    Ok(url::Url::parse(&format!("http://127.0.0.1:{port}"))?)
}

/// Who holds the lease now, as the backend says.
enum Observer {
    Local(LocalCoordination),
    Kubernetes { leases: Api<Lease>, name: String },
}

impl Observer {
    async fn holder(&self) -> Option<String> {
        match self {
            Self::Local(c) => c.lease().await.ok().and_then(|l| l.holder),
            Self::Kubernetes { leases, name } => leases
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity),
        }
    }
}

struct Round {
    lease_moved: f64,
    ready: f64,
}

async fn bench(which: Which, kills: usize, program: &Path, prefix: &[OsString]) -> Result<()> {
    let kubeconfig_dir = tempfile::tempdir()?;
    // Kept alive for the whole run: the fake apiserver stops when dropped.
    let mut kube: Option<TestKube> = None;
    let backend = match which {
        Which::Local => Backend::Local,
        Which::Kubernetes => {
            let k = test_client().await.context("Kubernetes test cluster")?;
            let kubeconfig = match k.fake() {
                Some(fake) => {
                    let path = kubeconfig_dir.path().join("kubeconfig");
                    write_kubeconfig(&path, fake.url(), &k.namespace)?;
                    path
                }
                None => std::env::var(ENV_KUBECONFIG)?.into(),
            };
            let backend = Backend::Kubernetes {
                kubeconfig,
                namespace: k.namespace.clone(),
                lease_name: k.name("vault-dr-coordinator"),
                configmap_name: k.name("vault-dr-topology"),
            };
            kube = Some(k);
            backend
        }
    };
    let mut lab = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(3)
        .ha(backend.clone())
        .addresses(vec![closed_port_url()?, closed_port_url()?])
        .policy_file(vault_dr_tests::coordinators::probe_policy(
            Duration::from_millis(500),
            Duration::from_millis(300),
        ))
        .dr_token(false)
        .program(program.to_path_buf(), prefix.to_vec())
        .start()
        .await?;
    let group = &mut lab.group;
    let observer = match (&backend, &kube) {
        (Backend::Kubernetes { lease_name, .. }, Some(k)) => Observer::Kubernetes {
            leases: Api::namespaced(k.client.clone(), &k.namespace),
            name: lease_name.clone(),
        },
        _ => Observer::Local(LocalCoordination::new(
            group.dir().join("coordination.json"),
            "bench-observer",
            LEASE,
        )),
    };
    let where_ = match (&kube, which) {
        (_, Which::Local) => "shared generation files".to_owned(),
        (Some(k), _) if k.fake().is_some() => "the fake apiserver".to_owned(),
        _ => format!("the cluster of {ENV_KUBECONFIG}"),
    };
    println!(
        "== backend {} ({where_}): 3 replicas, lease duration {:?}, renew period {:?} \
         (followers retry every {:?}), {kills} kills",
        which.name(),
        LEASE,
        RENEW,
        vault_dr_coordinator::leader::FOLLOWER_POLL,
    );
    group.start_all().await?;
    let mut rounds = Vec::new();
    for n in 0..kills {
        let (leader, _) = match group.wait_leader(None, Duration::from_secs(30)).await {
            Ok(l) => l,
            Err(e) => bail!("{e}\n{}", group.logs()),
        };
        let id = group.replicas[leader].id.clone();
        // A different point of the renewal cycle each round.
        let offset = Duration::from_millis(1500 + (n as u64 * 373) % 1000);
        tokio::time::sleep(offset).await;
        if group.leaders().await != vec![leader] {
            bail!("leadership changed without a kill:\n{}", group.logs());
        }
        group.kill(leader);
        let killed = Instant::now();
        let lease_moved = loop {
            if observer.holder().await.is_some_and(|h| h != id) {
                break killed.elapsed();
            }
            if killed.elapsed() > LEASE * 4 {
                bail!("the lease did not move from {id}:\n{}", group.logs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (_, ready_at) = group
            .wait_leader(Some(leader), Duration::from_secs(20))
            .await?;
        let round = Round {
            lease_moved: lease_moved.as_secs_f64(),
            ready: (ready_at - killed).as_secs_f64(),
        };
        println!(
            "kill {:>2}: {id} killed; lease moved after {:.2} s, /readyz 200 after {:.2} s",
            n + 1,
            round.lease_moved,
            round.ready
        );
        rounds.push(round);
        group.start(leader, &[]).await?;
    }
    let mut lease: Vec<f64> = rounds.iter().map(|r| r.lease_moved).collect();
    let mut ready: Vec<f64> = rounds.iter().map(|r| r.ready).collect();
    lease.sort_by(f64::total_cmp);
    ready.sort_by(f64::total_cmp);
    println!(
        "backend {}: lease moved p50 {:.2} s, max {:.2} s; /readyz 200 p50 {:.2} s, max {:.2} s \
         (lease {:?} + 1 s = {:.1} s bound)",
        which.name(),
        percentile(&lease, 0.5),
        percentile(&lease, 1.0),
        percentile(&ready, 0.5),
        percentile(&ready, 1.0),
        LEASE,
        (LEASE + Duration::from_secs(1)).as_secs_f64(),
    );
    println!(
        "{}",
        serde_json::json!({
            "backend": which.name(),
            "kills": kills,
            "lease_duration_seconds": LEASE.as_secs_f64(),
            "renew_period_seconds": RENEW.as_secs_f64(),
            "lease_moved_p50_seconds": percentile(&lease, 0.5),
            "lease_moved_max_seconds": percentile(&lease, 1.0),
            "ready_p50_seconds": percentile(&ready, 0.5),
            "ready_max_seconds": percentile(&ready, 1.0),
        })
    );
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let (program, prefix): (PathBuf, Vec<OsString>) = (std::env::current_exe()?, Vec::new());
    println!(
        "coordinator replicas: {} in coordinator mode",
        program.display()
    );
    for which in args.backends {
        bench(which, args.kills, &program, &prefix).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // Re-executed as a replica: `bench-takeover coordinator --config FILE`.
    if let [cmd, flag, config] = argv.as_slice()
        && cmd == "coordinator"
        && flag == "--config"
    {
        vault_dr_common::telemetry::init(vault_dr_common::telemetry::LogFormat::Text);
        let args = vault_dr_coordinator::cli::CoordinatorArgs {
            config: config.into(),
            log_json: false,
        };
        let code =
            vault_dr_coordinator::cli::main(vault_dr_coordinator::cli::Command::Coordinator(args))
                .await;
        std::process::exit(code);
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
