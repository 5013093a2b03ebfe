//! [`CoordinatorGroup`]: several `vault-dr coordinator` processes sharing one coordination
//! backend (the local file, or a Kubernetes Lease and ConfigMap) and one embedded store, beside
//! in-process agents a test can ask for their reports: for the high-availability tests, the
//! takeover benchmark, and the end-to-end tests that run one replica (replication, the
//! coordinator against real clusters, the chart's metrics, the Service reconcile). Such a group
//! is built only through the
//! one group builder, [`vault_dr_lab::harness::Group::builder`], turned into its
//! high-availability form with [`HaGroups::ha`]:
//!
//! ```no_run
//! # async fn f() -> Result<(), vault_dr_tests::coordinators::HaError> {
//! use vault_dr_lab::harness::Group;
//! use vault_dr_tests::coordinators::{Backend, HaGroups};
//! let mut lab = Group::builder()
//!     .clusters(["p", "s1", "s2"])
//!     .coordinators(3)
//!     .ha(Backend::Local)
//!     .start()
//!     .await?;
//! lab.group.start(0, &[("VAULT_DR_FAILPOINT", "crash-after:fenced")]).await?;
//! lab.group.start_all().await?;
//! lab.start_agents().await?;
//! # Ok(()) }
//! ```
//!
//! Every replica is a real process under a [`ChildGuard`] (dies with the guard, also on panic,
//! and with the owning process), started through `sh -c 'ulimit -c 0; exec env VAR=… prog …'`
//! so a test can give one replica its own environment (a failpoint, `KUBECONFIG`) without
//! touching this process's environment, and so an abort leaves no core file. `kill` is a real
//! SIGKILL; `signal` sends SIGSTOP/SIGCONT to the replica itself.

use crate::lab::process::{ChildGuard, Signal};
use serde::de::DeserializeOwned;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use url::Url;

use crate::agents::InProcessAgent;
use vault_dr_coordinator::config::{
    ClusterFile, ClusterRole, ConfigFile, CoordinationBackend, CoordinationFile, PolicyFile,
    StoreFile, TrafficBackend, TrafficFile,
};
use vault_dr_coordinator::model::FailoverRecord;
use vault_dr_lab::harness::{GroupBuilder, write_coordinator_file};
use vault_dr_lab::wait::try_wait_for;

/// The bearer token every replica of a group accepts (tests only).
pub const TOKEN: &str = "ha-test-token";

/// An error of starting or driving a coordinator group.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// A file could not be written or a process not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A lab process could not be started.
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    /// A wait ran out.
    #[error("{0}")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HaError {
    let what = what.into();
    move |source| HaError::Io { what, source }
}

/// Where the replicas coordinate.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One shared file in the group's directory.
    Local,
    /// A Lease and a ConfigMap through the apiserver of `kubeconfig` (given to each replica
    /// as `KUBECONFIG`).
    Kubernetes {
        /// Kubeconfig file the replicas read.
        kubeconfig: PathBuf,
        /// Namespace of the Lease and ConfigMap.
        namespace: String,
        /// Lease name.
        lease_name: String,
        /// ConfigMap name.
        configmap_name: String,
    },
}

/// One cluster of the DR group as the coordinators' configuration names it.
#[derive(Debug, Clone)]
struct ClusterSpec {
    /// Cluster name.
    name: String,
    /// API address.
    api_addr: Url,
    /// Whether it starts as the primary.
    primary: bool,
    /// Whether the operator excludes it from promotion.
    excluded: bool,
    /// The labels of its pods (the Kubernetes traffic switch selects them).
    selector: std::collections::BTreeMap<String, String>,
}

/// What [`HaGroupBuilder::start`] hands [`CoordinatorGroup::new`].
#[derive(Debug, Clone)]
struct GroupSpec {
    /// Coordination backend.
    backend: Backend,
    /// Number of replicas (ids `<id_prefix>1`, `<id_prefix>2`, …).
    replicas: usize,
    /// The replicas' id prefix (default `c`).
    id_prefix: String,
    /// The DR group.
    clusters: Vec<ClusterSpec>,
    /// The `[policy]` table.
    policy: PolicyFile,
    /// Further `[coordination]` settings (e.g. lease times); the backend's own keys are set
    /// from [`GroupSpec::backend`].
    coordination: CoordinationFile,
    /// DR token the coordinators use against OpenBao (fencing, canary), if any.
    vault_token: Option<String>,
    /// The `[traffic]` table.
    traffic: TrafficFile,
    /// Each replica its own embedded store (`<id>-store.sqlite`, as in pods without MongoDB)
    /// instead of one shared file.
    own_stores: bool,
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    /// Its id (`c1`, …): the lease holder name.
    pub id: String,
    /// Its API base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    config: PathBuf,
    file: ConfigFile,
    log: PathBuf,
    guard: Option<ChildGuard>,
}

impl Replica {
    /// The replica's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(ChildGuard::pid)
    }

    /// Its log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Several coordinator processes of one DR group.
#[derive(Debug)]
pub struct CoordinatorGroup {
    dir: tempfile::TempDir,
    program: PathBuf,
    prefix: Vec<OsString>,
    base_env: Vec<(String, String)>,
    /// The replicas, in id order.
    pub replicas: Vec<Replica>,
    http: reqwest::Client,
}

impl CoordinatorGroup {
    /// Writes every replica's configuration (nothing starts yet). `program` and `prefix` run a
    /// coordinator as `program prefix… coordinator --config FILE` (the `vault-dr` binary with
    /// no prefix). Built by [`HaGroupBuilder::start`].
    fn new(spec: &GroupSpec, program: PathBuf, prefix: Vec<OsString>) -> Result<Self, HaError> {
        let dir = tempfile::tempdir().map_err(io("temporary directory"))?;
        std::fs::write(dir.path().join("token"), TOKEN).map_err(io("write the token file"))?;
        if let Some(t) = &spec.vault_token {
            std::fs::write(dir.path().join("vault-token"), t)
                .map_err(io("write the vault token file"))?;
        }
        let mut base_env = Vec::new();
        let mut coordination = spec.coordination.clone();
        match &spec.backend {
            Backend::Local => {
                coordination.backend = CoordinationBackend::Local;
                coordination.path = Some("coordination.json".into());
            }
            Backend::Kubernetes {
                kubeconfig,
                namespace,
                lease_name,
                configmap_name,
            } => {
                base_env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
                coordination.backend = CoordinationBackend::Kubernetes;
                coordination.namespace = Some(namespace.clone());
                coordination.lease_name = Some(lease_name.clone());
                coordination.configmap_name = Some(configmap_name.clone());
            }
        }
        let clusters: Vec<ClusterFile> = spec
            .clusters
            .iter()
            .map(|c| {
                let role = if c.primary {
                    ClusterRole::Primary
                } else {
                    ClusterRole::Secondary
                };
                ClusterFile {
                    excluded: c.excluded,
                    selector: c.selector.clone(),
                    ..crate::lab::coordinator_file::one_node_cluster(
                        &c.name,
                        role,
                        c.api_addr.as_str(),
                    )
                }
            })
            .collect();
        let mut replicas = Vec::new();
        for i in 1..=spec.replicas {
            let id = format!("{}{i}", spec.id_prefix);
            let port = crate::lab::ports::reserve_loopback()?;
            let file = ConfigFile {
                listen: Some(format!("127.0.0.1:{port}")),
                id: Some(id.clone()),
                token_file: Some("token".into()),
                vault_token_file: spec.vault_token.as_ref().map(|_| "vault-token".into()),
                store: StoreFile {
                    path: Some(if spec.own_stores {
                        format!("{id}-store.sqlite").into()
                    } else {
                        "store.sqlite".into()
                    }),
                    ..StoreFile::default()
                },
                coordination: coordination.clone(),
                traffic: spec.traffic.clone(),
                policy: spec.policy.clone(),
                clusters: clusters.clone(),
                ..ConfigFile::default()
            };
            let config = dir.path().join(format!("{id}.toml"));
            write_coordinator_file(&config, &file)?;
            replicas.push(Replica {
                log: dir.path().join(format!("{id}.log")),
                url: format!("http://127.0.0.1:{port}"),
                id,
                config,
                file,
                guard: None,
            });
        }
        let http = vault_dr_common::http::client_builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| HaError::Io {
                what: "http client".into(),
                source: std::io::Error::other(e),
            })?;
        Ok(Self {
            dir,
            program,
            prefix,
            base_env,
            replicas,
            http,
        })
    }

    /// The group's directory (configs, token, store, shared coordination file, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The token file the CLI and agents use.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Every replica's URL, comma-separated (for `--url` and the agents).
    pub fn urls(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts replica `i` (index into [`Self::replicas`]) with `env` added to its environment.
    /// Waits until it listens; when its port was taken meanwhile, it is started again on another
    /// ([`crate::lab::ports::start_listening`]) and its [`Replica::url`] changes.
    pub async fn start(&mut self, i: usize, env: &[(&str, &str)]) -> Result<(), HaError> {
        let mut args: Vec<OsString> = vec![
            "-c".into(),
            "ulimit -c 0; exec env \"$@\"".into(),
            "vault-dr-replica".into(),
        ];
        for (k, v) in self
            .base_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(env.iter().copied())
        {
            args.push(format!("{k}={v}").into());
        }
        args.push(self.program.clone().into_os_string());
        args.extend(self.prefix.iter().cloned());
        args.extend(["coordinator".into(), "--config".into()]);
        let r = &mut self.replicas[i];
        args.push(r.config.clone().into_os_string());
        let first = Url::parse(&r.url).ok().and_then(|u| u.port());
        let what = format!("coordinator {}", r.id);
        let (config, log, file) = (&r.config, &r.log, &mut r.file);
        let (port, guard) = crate::lab::ports::start_listening(
            &what,
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            first,
            Duration::from_secs(30),
            |port| {
                file.listen = Some(format!("127.0.0.1:{port}"));
                write_coordinator_file(config, file)?;
                ChildGuard::spawn(&what, Path::new("sh"), &args, log)
            },
        )
        .await?;
        r.url = format!("http://127.0.0.1:{port}");
        r.guard = Some(guard);
        Ok(())
    }

    /// Starts every replica that is not running, with no extra environment.
    pub async fn start_all(&mut self) -> Result<(), HaError> {
        for i in 0..self.replicas.len() {
            if self.replicas[i].guard.is_none() {
                self.start(i, &[]).await?;
            }
        }
        Ok(())
    }

    /// SIGKILLs replica `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut g) = self.replicas[i].guard.take() {
            g.kill();
        }
    }

    /// Whether replica `i`'s process is still there (a stopped one counts; an aborted one not).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.replicas[i]
            .guard
            .as_mut()
            .is_some_and(ChildGuard::is_running)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to replica `i`.
    pub fn signal(&self, i: usize, signal: Signal) {
        if let Some(g) = &self.replicas[i].guard {
            g.signal(signal);
        }
    }

    /// Whether replica `i` answers `/readyz` with 200 (it leads).
    pub async fn is_ready(&self, i: usize) -> bool {
        ready(&self.http, &self.replicas[i].url).await
    }

    /// Indices of the replicas whose `/readyz` is 200 right now (asked in parallel).
    pub async fn leaders(&self) -> Vec<usize> {
        // Only replicas this group runs: the port of one not started yet (or killed) may meanwhile
        // belong to another test's process, whose /readyz must not count here.
        let tasks: Vec<_> = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pid().is_some_and(vault_dr_lab::process::pid_alive))
            .map(|(i, r)| {
                let (http, url) = (self.http.clone(), r.url.clone());
                (i, tokio::spawn(async move { ready(&http, &url).await }))
            })
            .collect();
        let mut out = Vec::new();
        for (i, t) in tasks {
            if matches!(t.await, Ok(true)) {
                out.push(i);
            }
        }
        out
    }

    /// Waits until exactly one replica other than `except` leads; returns it and when it was
    /// first seen leading. Polls every 50 ms.
    pub async fn wait_leader(
        &self,
        except: Option<usize>,
        timeout: Duration,
    ) -> Result<(usize, Instant), HaError> {
        let what = format!("a single leader other than {except:?}");
        try_wait_for(&what, timeout, || async {
            let leaders: Vec<usize> = self
                .leaders()
                .await
                .into_iter()
                .filter(|i| Some(*i) != except)
                .collect();
            match leaders.as_slice() {
                [one] => Ok((*one, Instant::now())),
                _ => Err(format!("ready {leaders:?}")),
            }
        })
        .await
        .map_err(|t| HaError::Timeout(t.to_string()))
    }

    /// `GET` a JSON document from replica `i` with the group's token (`None` on any failure).
    pub async fn get<T: DeserializeOwned>(&self, i: usize, path: &str) -> Option<T> {
        let url = format!("{}{path}", self.replicas[i].url);
        let r = self.http.get(url).bearer_auth(TOKEN).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// `GET /metrics` of replica `i` as text.
    pub async fn metrics(&self, i: usize) -> Option<String> {
        let url = format!("{}/metrics", self.replicas[i].url);
        self.http.get(url).send().await.ok()?.text().await.ok()
    }

    /// Waits until replica `i` journals a failover that satisfies `done` (e.g. a finished one
    /// to some term); returns it and every failover the replica listed then. On a timeout the
    /// error carries the last list and every replica's log.
    pub async fn wait_failover(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        done: impl Fn(&FailoverRecord) -> bool,
    ) -> Result<(FailoverRecord, Vec<FailoverRecord>), HaError> {
        try_wait_for(what, timeout, || async {
            // No answer is not "no failover": the error says which it was.
            let all: Vec<FailoverRecord> = self
                .get(i, "/v1/failovers")
                .await
                .ok_or_else(|| format!("replica {i} gave no list of failovers"))?;
            match all.iter().find(|r| done(r)).cloned() {
                Some(r) => Ok((r, all)),
                None => Err(format!("{all:#?}")),
            }
        })
        .await
        .map_err(|t| HaError::Timeout(format!("{t}\n{}", self.logs())))
    }

    /// Shuts replica `i` down with SIGTERM: its exit code (0 for a clean shutdown), or `None`
    /// when it did not exit within `within` (it is then killed) or was not running.
    pub async fn terminate(&mut self, i: usize, within: Duration) -> Option<i32> {
        let mut guard = self.replicas[i].guard.take()?;
        guard.terminate(within).await
    }

    /// Runs the operator CLI, `vault-dr ARGS… --url <every replica> --token-file <token>`;
    /// panics (a failed test) when it cannot start or exits non-zero. Its standard output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let program = crate::lab::tools::built_binary("vault-dr").unwrap_or_else(|e| panic!("{e}"));
        let out = tokio::process::Command::new(program)
            .args(args)
            .args(["--url", &self.urls(), "--token-file"])
            .arg(self.token_file())
            .output()
            .await
            .unwrap_or_else(|e| panic!("vault-dr {args:?}: {e}"));
        assert!(
            out.status.success(),
            "vault-dr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every replica's log, labelled (for failure messages).
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("----- {} -----\n{}", r.id, r.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn ready(http: &reqwest::Client, base: &str) -> bool {
    matches!(
        http.get(format!("{base}/readyz"))
            .timeout(Duration::from_millis(500))
            .send()
            .await,
        Ok(r) if r.status().is_success()
    )
}

/// The value of the sample `name` (exact, with its labels if any) in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

/// A kubeconfig for an apiserver at `server` with no credentials (the fake apiserver).
pub fn write_kubeconfig(path: &Path, server: &str, namespace: &str) -> Result<(), HaError> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
         current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    );
    std::fs::write(path, text).map_err(io(format!("write {}", path.display())))
}

/// How the in-process agents of a [`DrLab`] run ([`HaGroupBuilder::agents`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOptions {
    /// Probe and report interval (default 300 ms).
    pub interval: Duration,
    /// Snapshot replication with the DR token (default: continuous restore, a pull every
    /// second, two snapshots kept); `None`: no replication and no Vault token at all.
    pub replication: Option<SnapshotOptions>,
}

/// The snapshot replication of [`AgentOptions`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotOptions {
    /// How pulled snapshots are restored.
    pub restore: vault_dr_agent::config::RestoreMode,
    /// How often a secondary pulls.
    pub interval: Duration,
    /// How many snapshots are kept on disk.
    pub keep: usize,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(300),
            replication: Some(SnapshotOptions {
                restore: vault_dr_agent::config::RestoreMode::Continuous,
                interval: Duration::from_secs(1),
                keep: 2,
            }),
        }
    }
}

/// Where the agent of `cluster` keeps its snapshots under the group directory `dir`.
fn snapshot_dir(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(format!("agent-{cluster}"))
}

/// Starts an in-process agent for node `<cluster>-0` at `vault`, reporting to the coordinator
/// replicas `coordinators` (the first, then the others in turn) with the group's token, as
/// `options` say: with replication it uses `dr_token` against OpenBao and keeps its snapshots
/// and quarantine under `dir`.
async fn spawn_agent(
    cluster: &str,
    vault: &Url,
    coordinators: &[Url],
    dr_token: &vault_dr_common::Secret,
    dir: &Path,
    options: &AgentOptions,
) -> Result<InProcessAgent, HaError> {
    use vault_dr_agent::config::{CoordinatorConfig, ReplicationConfig, SnapshotConfig};
    let (first, rest) = coordinators
        .split_first()
        .ok_or_else(|| HaError::Timeout("no coordinator URL for the agent".into()))?;
    let mut config =
        vault_dr_agent::Config::minimal(cluster, &format!("{cluster}-0"), vault.clone());
    config.interval = options.interval;
    config.coordinator = Some(CoordinatorConfig {
        url: first.clone(),
        token: vault_dr_common::Secret::new(TOKEN),
        ca_certs: Vec::new(),
    });
    config.coordinator_fallbacks = rest.to_vec();
    if let Some(r) = options.replication {
        let snapshots = snapshot_dir(dir, cluster);
        std::fs::create_dir_all(&snapshots)
            .map_err(io(format!("create {}", snapshots.display())))?;
        config.vault.token = Some(dr_token.clone());
        config.replication = ReplicationConfig::Snapshot(SnapshotConfig {
            dir: snapshots.clone(),
            interval: r.interval,
            keep: r.keep,
            restore: r.restore,
            quarantine_dir: snapshots.join("quarantine"),
        });
    }
    InProcessAgent::start(config)
        .await
        .map_err(io(format!("start the agent of {cluster}")))
}

/// The `[policy]` of the failover tests: probe every 500 ms, confirm on 2 ticks, reports fresh
/// for 2 s, a cooldown long enough that one test never sees a second failover.
pub fn failover_policy() -> PolicyFile {
    crate::lab::harness::failover_policy(
        Duration::from_millis(500),
        2,
        Duration::from_secs(2),
        Duration::from_secs(300),
    )
}

/// A `[policy]` that probes every 500 ms (timeout 400 ms), everything else at its default.
pub fn probe_policy(interval: Duration, timeout: Duration) -> PolicyFile {
    PolicyFile {
        probe_interval: Some(interval),
        probe_timeout: Some(timeout),
        ..PolicyFile::default()
    }
}

/// The DR token id every lab cluster of a failover test gets (tests only).
pub const DR_TOKEN: &str = "vault-dr-ha-test-dr-token";

/// A DR group of real single-node OpenBao clusters (the first is the primary), each with the
/// DR token unless told otherwise, a coordinator group in front (not started yet), and one
/// in-process agent per cluster (started with [`DrLab::start_agents`]); what
/// [`HaGroupBuilder::start`] hands back.
#[derive(Debug)]
pub struct DrLab {
    /// The clusters, the primary first.
    pub clusters: Vec<crate::lab::LabCluster>,
    /// The coordinator replicas.
    pub group: CoordinatorGroup,
    /// Running agents by cluster name.
    pub agents: std::collections::BTreeMap<String, InProcessAgent>,
    /// The DR token.
    pub dr_token: vault_dr_common::Secret,
    /// The stable client address (every replica's local traffic forwarder), when asked for with
    /// [`HaGroupBuilder::stable_address`].
    pub stable: Option<Url>,
    agent_options: AgentOptions,
}

impl DrLab {
    /// Where the agent of `cluster` moves diverged data it throws away (with replication).
    pub fn quarantine_dir(&self, cluster: &str) -> PathBuf {
        snapshot_dir(self.group.dir(), cluster).join("quarantine")
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&crate::lab::LabCluster> {
        self.clusters.iter().find(|c| c.name() == name)
    }

    /// The cluster called `name`, to kill or restart its nodes.
    pub fn cluster_mut(&mut self, name: &str) -> Option<&mut crate::lab::LabCluster> {
        self.clusters.iter_mut().find(|c| c.name() == name)
    }

    /// Starts one agent per cluster, each given every coordinator URL in id order.
    pub async fn start_agents(&mut self) -> Result<(), HaError> {
        self.start_agents_with_last(None).await
    }

    /// Stops the running agents and starts one per cluster, each given every coordinator URL,
    /// replica `last` (if any) at the end of the list.
    pub async fn start_agents_with_last(&mut self, last: Option<usize>) -> Result<(), HaError> {
        self.agents.clear();
        let mut order: Vec<usize> = (0..self.group.replicas.len())
            .filter(|i| Some(*i) != last)
            .collect();
        order.extend(last);
        let urls: Vec<Url> = order
            .iter()
            .filter_map(|i| Url::parse(&self.group.replicas[*i].url).ok())
            .collect();
        for c in &self.clusters {
            let agent = spawn_agent(
                c.name(),
                c.api_addr(),
                &urls,
                &self.dr_token,
                self.group.dir(),
                &self.agent_options,
            )
            .await?;
            self.agents.insert(c.name().to_owned(), agent);
        }
        Ok(())
    }

    /// Starts replica 0 alone with `env` (e.g. a failpoint) and waits until it leads, then the
    /// other replicas and the agents, and waits up to `ready_within` until the group is ready
    /// for a failover ([`DrLab::wait_failover_ready`]) with replica 0 leading.
    pub async fn start_with_first_leading(
        &mut self,
        env: &[(&str, &str)],
        ready_within: Duration,
    ) -> Result<(), HaError> {
        self.group.start(0, env).await?;
        let (first, _) = self
            .group
            .wait_leader(None, Duration::from_secs(30))
            .await?;
        if first != 0 {
            return Err(HaError::Timeout(format!(
                "replica {first} leads instead of the first"
            )));
        }
        self.group.start_all().await?;
        self.start_agents().await?;
        self.wait_failover_ready(0, ready_within).await
    }

    /// Waits until replica `leader` holds a report of `cluster` whose agent applied `term` (as
    /// the promoted primary: restored, active, canary written; as a secondary: following that
    /// term's primary); returns that report.
    pub async fn wait_applied(
        &self,
        leader: usize,
        cluster: &str,
        term: u64,
        timeout: Duration,
    ) -> Result<vault_dr_common::Report, HaError> {
        let what = format!("{cluster} to apply term {term}");
        try_wait_for(&what, timeout, || async {
            let report = self
                .group
                .get::<serde_json::Value>(leader, "/v1/clusters")
                .await
                .and_then(|v| {
                    serde_json::from_value::<Vec<vault_dr_coordinator::model::view::NodeView>>(
                        v["view"]["clusters"][cluster]["nodes"].clone(),
                    )
                    .ok()
                })
                .and_then(|nodes| nodes.into_iter().max_by_key(|n| n.received_at))
                .map(|n| n.report);
            match report {
                Some(r) if r.applied_term >= term => Ok(r),
                last => Err(format!("last report: {last:?}")),
            }
        })
        .await
        .map_err(|t| HaError::Timeout(t.to_string()))
    }

    /// Waits until replica `leader` has a fresh report from every cluster and every secondary
    /// is eligible for promotion (seeded by replication, not lagging).
    pub async fn wait_failover_ready(
        &self,
        leader: usize,
        timeout: Duration,
    ) -> Result<(), HaError> {
        let ready = try_wait_for("the group to be ready for a failover", timeout, || async {
            let v = self
                .group
                .get::<serde_json::Value>(leader, "/v1/clusters")
                .await
                .ok_or_else(|| "no view".to_owned())?;
            let reporting = self
                .clusters
                .iter()
                .filter(|c| {
                    v["view"]["clusters"][c.name()]["nodes"]
                        .as_array()
                        .is_some_and(|n| !n.is_empty())
                })
                .count();
            let candidates = v["candidates"]["candidates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let eligible = candidates
                .iter()
                .filter(|c| c["eligibility"] == serde_json::json!("eligible"))
                .count();
            if reporting == self.clusters.len() && eligible + 1 == self.clusters.len() {
                return Ok(());
            }
            Err(format!(
                "{reporting} clusters reporting, {eligible} eligible: {}",
                serde_json::to_string(&candidates).unwrap_or_default()
            ))
        })
        .await;
        ready.map_err(|t| HaError::Timeout(format!("{t}\n{}", self.group.logs())))
    }
}

/// What [`HaGroups::ha`] adds to the one group builder ([`GroupBuilder`]): coordinator
/// replicas as processes sharing `backend`, and in-process agents. Its clusters (names, the
/// first the primary, placement and exclusions) and replica count
/// ([`GroupBuilder::coordinators`]) come from the group builder; [`HaGroupBuilder::start`] starts the clusters and writes every
/// replica's configuration, and the test starts replicas one by one (each with its own
/// environment) through [`DrLab::group`] and the agents with [`DrLab::start_agents`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HaGroupBuilder {
    base: GroupBuilder,
    backend: Backend,
    policy: PolicyFile,
    coordination: CoordinationFile,
    dr_token: bool,
    program: Option<(PathBuf, Vec<OsString>)>,
    addresses: Option<Vec<Url>>,
    stable_address: bool,
    traffic: TrafficFile,
    selectors: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    agents: AgentOptions,
    id_prefix: String,
    own_stores: bool,
}

/// The high-availability form of the group builder.
pub trait HaGroups {
    /// Coordinator replicas coordinating through `backend` (the failover policy
    /// [`failover_policy`], the DR token on every cluster, unless told otherwise). Of the group
    /// builder's settings the clusters, the coordinator count, the placements and the
    /// exclusions apply; the replicas' policy is [`HaGroupBuilder::policy_file`], and the
    /// agents are in-process ones ([`DrLab::start_agents`], [`HaGroupBuilder::agents`]).
    fn ha(self, backend: Backend) -> HaGroupBuilder;
}

impl HaGroups for GroupBuilder {
    fn ha(self, backend: Backend) -> HaGroupBuilder {
        HaGroupBuilder {
            base: self,
            backend,
            policy: failover_policy(),
            coordination: CoordinationFile::default(),
            dr_token: true,
            program: None,
            addresses: None,
            stable_address: false,
            traffic: TrafficFile::default(),
            selectors: Default::default(),
            agents: AgentOptions::default(),
            id_prefix: "c".to_owned(),
            own_stores: false,
        }
    }
}

impl HaGroupBuilder {
    /// The replicas' ids are `<prefix>1`, `<prefix>2`, … (default `c`): unique names where
    /// an id names a Kubernetes object, e.g. the pod a replica labels as the leader's.
    pub fn id_prefix(mut self, prefix: &str) -> Self {
        self.id_prefix = prefix.to_owned();
        self
    }

    /// Each replica its own embedded store, as pods without MongoDB have (default: one file
    /// shared by the replicas).
    pub fn own_stores(mut self, own: bool) -> Self {
        self.own_stores = own;
        self
    }

    /// The replicas' `[policy]` table.
    pub fn policy_file(mut self, policy: PolicyFile) -> Self {
        self.policy = policy;
        self
    }

    /// Further `[coordination]` settings (e.g. lease times).
    pub fn coordination(mut self, coordination: CoordinationFile) -> Self {
        self.coordination = coordination;
        self
    }

    /// Whether every cluster gets the DR token and the replicas use it (the default).
    pub fn dr_token(mut self, dr_token: bool) -> Self {
        self.dr_token = dr_token;
        self
    }

    /// Runs a replica as `program prefix… coordinator --config FILE` (default: the built
    /// `vault-dr` with no prefix).
    pub fn program(mut self, program: PathBuf, prefix: Vec<OsString>) -> Self {
        self.program = Some((program, prefix));
        self
    }

    /// Whether the replicas run the local traffic forwarder on a loopback port of its own, the
    /// stable client address [`DrLab::stable`] (every replica listens on it, `SO_REUSEPORT`).
    pub fn stable_address(mut self, stable: bool) -> Self {
        self.stable_address = stable;
        self
    }

    /// The replicas' `[traffic]` table (e.g. the Kubernetes Service switch); with
    /// [`Self::stable_address`] the local forwarder replaces it.
    pub fn traffic_file(mut self, traffic: TrafficFile) -> Self {
        self.traffic = traffic;
        self
    }

    /// The pod labels of `cluster`'s servers, which the Kubernetes traffic switch selects.
    pub fn selector(mut self, cluster: &str, labels: &[(&str, &str)]) -> Self {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.selectors.insert(cluster.to_owned(), labels);
        self
    }

    /// Changes how the in-process agents run ([`AgentOptions`]).
    pub fn agents(mut self, change: impl FnOnce(&mut AgentOptions)) -> Self {
        change(&mut self.agents);
        self
    }

    /// Starts no OpenBao: the clusters are named at these API addresses (in cluster order).
    pub fn addresses(mut self, addresses: Vec<Url>) -> Self {
        self.addresses = Some(addresses);
        self
    }

    /// Starts the clusters (with the DR token) and writes the replicas' configurations; no
    /// replica and no agent runs yet.
    pub async fn start(self) -> Result<DrLab, HaError> {
        let base = self.base.group_spec();
        let names: Vec<&str> = base.clusters.iter().map(String::as_str).collect();
        let dr_token = vault_dr_common::Secret::new(DR_TOKEN);
        let (clusters, addresses) = match self.addresses {
            Some(addresses) => {
                if addresses.len() != names.len() {
                    return Err(HaError::Timeout(format!(
                        "{} addresses for {} clusters",
                        addresses.len(),
                        names.len()
                    )));
                }
                (Vec::new(), addresses)
            }
            None => {
                let placed: Vec<(&str, crate::lab::openbao::NodeHost)> = names
                    .iter()
                    .map(|n| (*n, base.placements.get(*n).cloned().unwrap_or_default()))
                    .collect();
                let clusters = crate::lab::LabCluster::start_group_on(&placed, true, None).await?;
                if self.dr_token {
                    for c in &clusters {
                        c.create_dr_token(&dr_token).await?;
                    }
                }
                let addresses = clusters.iter().map(|c| c.api_addr().clone()).collect();
                (clusters, addresses)
            }
        };
        let stable = if self.stable_address {
            let port = crate::lab::ports::reserve_loopback()?;
            Some(
                Url::parse(&format!("http://127.0.0.1:{port}"))
                    .map_err(|e| HaError::Timeout(format!("stable address: {e}")))?,
            )
        } else {
            None
        };
        let traffic = match stable.as_ref().and_then(Url::port) {
            Some(port) => TrafficFile {
                backend: Some(TrafficBackend::Local),
                listen: Some(format!("127.0.0.1:{port}")),
                ..TrafficFile::default()
            },
            None => self.traffic,
        };
        let spec = GroupSpec {
            backend: self.backend,
            replicas: base.coordinators,
            id_prefix: self.id_prefix.clone(),
            own_stores: self.own_stores,
            clusters: names
                .iter()
                .zip(addresses)
                .enumerate()
                .map(|(i, (name, api_addr))| ClusterSpec {
                    name: (*name).to_owned(),
                    api_addr,
                    primary: i == 0,
                    excluded: base.excluded.iter().any(|e| e == name),
                    selector: self.selectors.get(*name).cloned().unwrap_or_default(),
                })
                .collect(),
            policy: self.policy,
            coordination: self.coordination,
            vault_token: self.dr_token.then(|| DR_TOKEN.to_owned()),
            traffic,
        };
        let (program, prefix) = match self.program {
            Some(p) => p,
            None => (crate::lab::tools::built_binary("vault-dr")?, Vec::new()),
        };
        Ok(DrLab {
            clusters,
            group: CoordinatorGroup::new(&spec, program, prefix)?,
            agents: std::collections::BTreeMap::new(),
            dr_token,
            stable,
            agent_options: self.agents,
        })
    }
}

/// A coordinator running in this process (`vault_dr_coordinator::run`) on a listener bound once
/// and handed over; asked to stop when dropped, and aborted (a test that wants its result calls
/// [`InProcessCoordinator::shutdown`]).
#[derive(Debug)]
pub struct InProcessCoordinator {
    /// Its API base URL, `http://ADDR`.
    pub url: String,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<vault_dr_coordinator::Result<()>>>,
}

impl InProcessCoordinator {
    /// Starts `config` on `listener`.
    pub fn start(
        config: vault_dr_coordinator::config::Config,
        listener: tokio::net::TcpListener,
    ) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the coordinator's listener has no address: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(vault_dr_coordinator::run(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            url: format!("http://{addr}"),
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks it to stop and waits for it; its own result (panics when its task panicked).
    pub async fn shutdown(mut self) -> vault_dr_coordinator::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t
                .await
                .unwrap_or_else(|e| panic!("the coordinator task failed: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for InProcessCoordinator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
