//! Real OpenBao 2.7 clusters on loopback: [`LabCluster`] (one raft cluster, initialised, with
//! KV v2 at `secret/`) made of [`LabNode`]s (one `bao server` process each).
//!
//! Every cluster started by one call shares one `seal "static"` key (32 random bytes in a file),
//! so a snapshot of one cluster restores into another without `snapshot-force` and without an
//! unseal, and a restarted node unseals itself. `sys/init` with a static seal takes no shares at
//! all (`{}`), and answers with the root token. Nothing here logs or prints a token or the key.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use url::Url;
use vault_dr_agent::replication::raft::plan::Suffrage;
use vault_dr_common::{Role, Secret};

pub use super::error::LabError;
use super::process::{ChildGuard, Signal};
use super::tools;
use super::wait::try_wait_for;

/// How long a server may take to open its listener.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `sys/init` plus the first election may take (measured: 6–10 s on an idle machine).
const INIT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long standbys may take to join and the cluster to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How many times a start is retried when a picked port was taken in the meantime.
const PORT_ATTEMPTS: usize = 3;
/// Lines of a node's log shown in an error.
const TAIL_LINES: usize = 25;

/// One OpenBao raft cluster of the lab, initialised, unsealed and with KV v2 at `secret/`.
/// Dropping it kills its processes (and removes the lab directory if the lab created it and this
/// was the last cluster using it).
#[derive(Debug)]
pub struct LabCluster {
    name: String,
    // Declared before `dir` so the processes die before their directory is removed.
    nodes: Vec<LabNode>,
    root_token: Secret,
    seal_key_path: PathBuf,
    client: reqwest::Client,
    dir: Arc<LabDir>,
}

/// One `bao server` process of a [`LabCluster`].
#[derive(Debug)]
pub struct LabNode {
    name: String,
    api_addr: Url,
    client_addr: Url,
    client_socket: std::net::SocketAddr,
    cluster_socket: std::net::SocketAddr,
    dir: PathBuf,
    data_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    pid_file: PathBuf,
    bao: PathBuf,
    client: reqwest::Client,
    child: Option<ChildGuard>,
    /// Runs `bao` through this prefix (e.g. `ip netns exec <ns>`); empty: directly.
    prefix: Vec<OsString>,
    /// Raft replication: `bao` runs under this `vault-dr-launch`, which starts it only with
    /// its agent's permit (in [`LabNode::control_dir`]).
    launcher: Option<PathBuf>,
    /// Raft replication: how the node joins a raft (its agent's `--raft-suffrage`).
    suffrage: Suffrage,
}

/// Where the nodes of a lab cluster run: the IP address their listeners bind (and advertise)
/// and a command prefix that `bao server` is started through, e.g. `ip netns exec <ns>` to put
/// a cluster on its own network namespace ("host"). The default is `127.0.0.1`, no prefix.
/// The prefix must exec the program (not fork), so the started pid stays `bao`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHost {
    /// The address the API and cluster listeners bind.
    pub ip: IpAddr,
    /// Program and arguments put in front of `bao server ...`.
    pub prefix: Vec<OsString>,
}

impl Default for NodeHost {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            prefix: Vec::new(),
        }
    }
}

/// The directory of a lab; removed on drop when the lab created it.
#[derive(Debug)]
struct LabDir {
    path: PathBuf,
    owned: bool,
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl LabDir {
    fn new(base_dir: Option<&Path>) -> Result<Self, LabError> {
        let (path, owned) = match base_dir {
            Some(p) => (p.to_path_buf(), false),
            None => {
                remove_stale_lab_dirs();
                let tag: u64 = rand::random();
                let p = std::env::temp_dir()
                    .join(format!("vault-dr-lab-{}-{tag:016x}", std::process::id()));
                (p, true)
            }
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| LabError::io(format!("create lab dir {}", path.display()), e))?;
        // Config files hold absolute paths.
        let path = std::fs::canonicalize(&path)
            .map_err(|e| LabError::io(format!("resolve lab dir {}", path.display()), e))?;
        Ok(Self { path, owned })
    }

    /// Writes a fresh random 32-byte static seal key, readable by the owner only.
    fn write_seal_key(&self) -> Result<PathBuf, LabError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tag: u32 = rand::random();
        let path = self.path.join(format!("static-seal-{tag:08x}.key"));
        let key: [u8; 32] = rand::random();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| LabError::io(format!("create seal key {}", path.display()), e))?;
        f.write_all(&key)
            .map_err(|e| LabError::io(format!("write seal key {}", path.display()), e))?;
        Ok(path)
    }
}

/// Removes `vault-dr-lab-<pid>-*` temp dirs whose owner process is gone (a test runner that was
/// SIGKILLed cannot clean up; its servers died with it through the watchdog).
fn remove_stale_lab_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("vault-dr-lab-")) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = owner
            && !super::process::pid_alive(pid)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Everything that goes into one node's config file.
#[derive(Debug, Clone)]
struct NodeSpec {
    cluster: String,
    node: String,
    api_port: u16,
    cluster_port: u16,
    client_port: u16,
    fast_election: bool,
    retry_join: Vec<Url>,
    ip: IpAddr,
}

impl LabCluster {
    /// Starts `names.len()` independent single-node raft clusters in parallel on free loopback
    /// ports, all with one shared `seal "static"` key (fresh for this call, in a file in the base
    /// dir), each initialised, active (`sys/health` 200) and with KV v2 at `secret/`. Four start
    /// in about the time of one, because almost all of a start is the first raft election.
    /// `base_dir` None: a temporary directory owned by the returned clusters.
    pub async fn start_group(
        names: &[&str],
        base_dir: Option<&Path>,
    ) -> Result<Vec<LabCluster>, LabError> {
        Self::start_group_with(names, false, base_dir).await
    }

    /// [`LabCluster::start_group`] with `performance_multiplier = 1` when `fast_election`: the
    /// first election, and so `sys/init`, takes about 1.5 s instead of about 7 s. For tests that
    /// do not depend on default raft timings.
    pub async fn start_group_with(
        names: &[&str],
        fast_election: bool,
        base_dir: Option<&Path>,
    ) -> Result<Vec<LabCluster>, LabError> {
        let placed: Vec<(&str, NodeHost)> =
            names.iter().map(|n| (*n, NodeHost::default())).collect();
        Self::start_group_on(&placed, fast_election, base_dir).await
    }

    /// [`LabCluster::start_group_with`], each cluster on its own [`NodeHost`]: its node binds
    /// `host.ip` (API and cluster port) and `bao` runs through `host.prefix`, e.g. in a network
    /// namespace. The lab's own HTTP client must be able to reach `host.ip` (a namespace on a
    /// bridge of the root namespace is).
    pub async fn start_group_on(
        clusters: &[(&str, NodeHost)],
        fast_election: bool,
        base_dir: Option<&Path>,
    ) -> Result<Vec<LabCluster>, LabError> {
        if clusters.is_empty() {
            return Err(LabError::Invalid(
                "start_group needs at least one name".into(),
            ));
        }
        for (i, (n, _)) in clusters.iter().enumerate() {
            check_name(n)?;
            if clusters[..i].iter().any(|(m, _)| m == n) {
                return Err(LabError::Invalid(format!("duplicate cluster name {n:?}")));
            }
        }
        let bao = tools::find("bao")?;
        let dir = Arc::new(LabDir::new(base_dir)?);
        let key = dir.write_seal_key()?;
        let client = http_client()?;
        let starts = clusters
            .iter()
            .map(|(n, host)| Self::start_single(n, fast_election, host, &bao, &dir, &key, &client));
        futures::future::try_join_all(starts).await
    }

    /// One single-node cluster of [`LabCluster::start_group`].
    #[allow(clippy::too_many_arguments)]
    async fn start_single(
        name: &str,
        fast_election: bool,
        host: &NodeHost,
        bao: &Path,
        dir: &Arc<LabDir>,
        key: &Path,
        client: &reqwest::Client,
    ) -> Result<LabCluster, LabError> {
        let mut nodes =
            Self::spawn_nodes(name, 1, fast_election, host, bao, dir, key, client).await?;
        let root_token = init(&nodes[0]).await?;
        let cluster = LabCluster {
            name: name.to_owned(),
            nodes: std::mem::take(&mut nodes),
            root_token,
            seal_key_path: key.to_path_buf(),
            client: client.clone(),
            dir: Arc::clone(dir),
        };
        cluster.nodes[0].wait_health(200, INIT_TIMEOUT).await?;
        cluster.enable_kv2(&cluster.nodes[0]).await?;
        Ok(cluster)
    }

    /// Starts one raft cluster of `nodes` nodes that find each other with `retry_join`, sharing
    /// a fresh static seal key; `performance_multiplier = 1` (elections in about 2–3 s instead of
    /// about 9 s) when `fast_election`. Returns once node 1 is active with KV v2 at `secret/`,
    /// every other node has joined, unsealed itself and answers 429 (standby), and autopilot has
    /// made every node a voter, so that losing the active node leads to a new election. The
    /// lab sets autopilot's `server_stabilization_time` to 1 s to get there quickly.
    pub async fn start_ha(
        name: &str,
        nodes: usize,
        fast_election: bool,
        base_dir: Option<&Path>,
    ) -> Result<LabCluster, LabError> {
        check_name(name)?;
        if nodes == 0 {
            return Err(LabError::Invalid(format!(
                "{name}: an HA cluster needs nodes"
            )));
        }
        let bao = tools::find("bao")?;
        let dir = Arc::new(LabDir::new(base_dir)?);
        let key = dir.write_seal_key()?;
        let client = http_client()?;
        let host = NodeHost::default();
        let nodes =
            Self::spawn_nodes(name, nodes, fast_election, &host, &bao, &dir, &key, &client).await?;
        let root_token = init(&nodes[0]).await?;
        let cluster = LabCluster {
            name: name.to_owned(),
            nodes,
            root_token,
            seal_key_path: key,
            client,
            dir,
        };
        let first = &cluster.nodes[0];
        first.wait_health(200, INIT_TIMEOUT).await?;
        cluster.enable_kv2(first).await?;
        cluster.shorten_stabilization().await?;
        let standbys = cluster.nodes[1..]
            .iter()
            .map(|n| n.wait_health(429, SETTLE_TIMEOUT));
        futures::future::try_join_all(standbys).await?;
        cluster.wait_voters(SETTLE_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Starts a DR group that is **one raft** (raft replication): `clusters[0]` is the
    /// primary, whose nodes are the voters; every node of the other clusters joins as a
    /// non-voter. Every node's config lists every other node in `retry_join` (a quarantined
    /// node joins whichever is the leader then), and every `bao` runs under `launcher`
    /// (`vault-dr-launch`), given its first permit and the bootstrap lineage (term 0, the
    /// primary) by the lab as an installer would. Returns once the primary's node 1 is active
    /// with KV v2, every primary node is a voter and every other node a non-voter answering
    /// 429. One shared static seal key, `performance_multiplier = 1`. Every cluster's root
    /// token is the primary's (one raft).
    pub async fn start_raft_group(
        clusters: &[(&str, Vec<Suffrage>, NodeHost)],
        launcher: &Path,
        base_dir: Option<&Path>,
    ) -> Result<Vec<LabCluster>, LabError> {
        if clusters.len() < 2 || clusters.iter().any(|(_, n, _)| n.is_empty()) {
            return Err(LabError::Invalid(
                "a raft group needs a primary and a secondary, each with nodes".into(),
            ));
        }
        for (i, (n, _, _)) in clusters.iter().enumerate() {
            check_name(n)?;
            if clusters[..i].iter().any(|(m, _, _)| m == n) {
                return Err(LabError::Invalid(format!("duplicate cluster name {n:?}")));
            }
        }
        let bao = tools::find("bao")?;
        let dir = Arc::new(LabDir::new(base_dir)?);
        let key = dir.write_seal_key()?;
        let client = http_client()?;
        let total: usize = clusters.iter().map(|(_, n, _)| n.len()).sum();
        let ports = super::ports::reserve_loopback_n(3 * total)?;
        let mut specs = Vec::new();
        let mut k = 0;
        for (name, suffrages, host) in clusters {
            for (i, suffrage) in suffrages.iter().enumerate() {
                specs.push((
                    host.clone(),
                    *suffrage,
                    NodeSpec {
                        cluster: (*name).to_owned(),
                        node: format!("{name}-n{}", i + 1),
                        api_port: ports[3 * k],
                        cluster_port: ports[3 * k + 1],
                        client_port: ports[3 * k + 2],
                        fast_election: true,
                        retry_join: Vec::new(),
                        ip: host.ip,
                    },
                ));
                k += 1;
            }
        }
        let api_urls = specs
            .iter()
            .map(|(_, _, sp)| host_url(sp.ip, sp.api_port))
            .collect::<Result<Vec<_>, _>>()?;
        let primary = clusters[0].0;
        let mut by_cluster: Vec<Vec<LabNode>> = clusters.iter().map(|_| Vec::new()).collect();
        for (j, (host, suffrage, spec)) in specs.iter_mut().enumerate() {
            spec.retry_join = api_urls
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != j)
                .map(|(_, u)| u.clone())
                .collect();
            let mut node = LabNode::create(
                spec,
                &bao,
                &dir.path.join(&spec.cluster),
                &key,
                &client,
                &host.prefix,
            )?;
            node.launcher = Some(launcher.to_path_buf());
            node.suffrage = *suffrage;
            let c = clusters
                .iter()
                .position(|(n, _, _)| *n == spec.cluster)
                .unwrap_or(0);
            let role = if c == 0 {
                Role::Primary
            } else {
                Role::Secondary
            };
            node.write_bootstrap(primary, suffrage.non_voter(role))?;
            by_cluster[c].push(node);
        }
        // The primary first: node 1 is initialised, the others join it as voters.
        for n in &mut by_cluster[0] {
            n.spawn()?;
        }
        futures::future::try_join_all(by_cluster[0].iter_mut().map(|n| n.wait_listening())).await?;
        let root_token = init(&by_cluster[0][0]).await?;
        let mut out: Vec<LabCluster> = clusters
            .iter()
            .zip(by_cluster)
            .map(|((name, _, _), nodes)| LabCluster {
                name: (*name).to_owned(),
                nodes,
                root_token: root_token.clone(),
                seal_key_path: key.clone(),
                client: client.clone(),
                dir: Arc::clone(&dir),
            })
            .collect();
        {
            let p = &out[0];
            let first = &p.nodes[0];
            first.wait_health(200, INIT_TIMEOUT).await?;
            p.enable_kv2(first).await?;
            p.shorten_stabilization().await?;
            let standbys = p.nodes[1..]
                .iter()
                .map(|n| n.wait_health(429, SETTLE_TIMEOUT));
            futures::future::try_join_all(standbys).await?;
            p.wait_voter_count(voters(&p.nodes, Role::Primary), SETTLE_TIMEOUT)
                .await?;
        }
        for c in &mut out[1..] {
            for n in &mut c.nodes {
                n.spawn()?;
            }
        }
        let joined = out[1..]
            .iter()
            .flat_map(|c| c.nodes.iter())
            .map(|n| n.wait_health(429, SETTLE_TIMEOUT));
        futures::future::try_join_all(joined).await?;
        let all = voters(&out[0].nodes, Role::Primary)
            + out[1..]
                .iter()
                .map(|c| voters(&c.nodes, Role::Secondary))
                .sum::<usize>();
        out[0].wait_voter_count(all, SETTLE_TIMEOUT).await?;
        Ok(out)
    }

    /// Writes configs and starts `count` nodes of cluster `name`, then waits until every one
    /// listens. Picks new ports and starts again if a port was taken in the meantime.
    #[allow(clippy::too_many_arguments)]
    async fn spawn_nodes(
        name: &str,
        count: usize,
        fast_election: bool,
        host: &NodeHost,
        bao: &Path,
        dir: &Arc<LabDir>,
        key: &Path,
        client: &reqwest::Client,
    ) -> Result<Vec<LabNode>, LabError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = super::ports::reserve_loopback_n(3 * count)?;
            let api_urls = (0..count)
                .map(|i| host_url(host.ip, ports[3 * i]))
                .collect::<Result<Vec<_>, _>>()?;
            let mut nodes = Vec::with_capacity(count);
            for i in 0..count {
                let node_name = format!("{name}-n{}", i + 1);
                let spec = NodeSpec {
                    cluster: name.to_owned(),
                    node: node_name,
                    api_port: ports[3 * i],
                    cluster_port: ports[3 * i + 1],
                    client_port: ports[3 * i + 2],
                    fast_election,
                    retry_join: if count > 1 {
                        api_urls
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, u)| u.clone())
                            .collect()
                    } else {
                        Vec::new()
                    },
                    ip: host.ip,
                };
                nodes.push(LabNode::create(
                    &spec,
                    bao,
                    &dir.path.join(name),
                    key,
                    client,
                    &host.prefix,
                )?);
            }
            for n in &mut nodes {
                n.spawn()?;
            }
            let listening =
                futures::future::join_all(nodes.iter_mut().map(|n| n.wait_listening())).await;
            match listening.into_iter().find_map(Result::err) {
                None => return Ok(nodes),
                Some(err) if attempt < PORT_ATTEMPTS && port_clash(&err) => {
                    drop(nodes);
                    let _ = std::fs::remove_dir_all(dir.path.join(name));
                }
                Some(err) => return Err(err),
            }
        }
    }

    /// The cluster's name (also its `cluster_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The API address of the first node.
    pub fn api_addr(&self) -> &Url {
        &self.nodes[0].api_addr
    }

    /// The client address of the first node (its agent's write gate, when it has one).
    pub fn client_addr(&self) -> &Url {
        &self.nodes[0].client_addr
    }

    /// The root token from `sys/init`.
    pub fn root_token(&self) -> &Secret {
        &self.root_token
    }

    /// The nodes, the first one initialised the cluster.
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// The nodes, to kill, stop or restart them.
    pub fn nodes_mut(&mut self) -> &mut [LabNode] {
        &mut self.nodes
    }

    /// The static seal key file (shared by every cluster of one start call).
    pub fn seal_key_path(&self) -> &Path {
        &self.seal_key_path
    }

    /// The lab directory (holding the seal key and one folder per cluster).
    pub fn base_dir(&self) -> &Path {
        &self.dir.path
    }

    /// An HTTP client for loopback without proxies, as the lab uses it.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The index of the node that is currently active (`sys/health` 200), if any.
    pub async fn active_node(&self) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if matches!(n.health().await, Ok((200, _))) {
                return Some(i);
            }
        }
        None
    }

    /// Writes `data` to KV v2 `secret/<path>` with the root token, through the first node that
    /// answers (a standby forwards writes to the active node).
    pub async fn kv_put(&self, path: &str, data: &Value) -> Result<(), LabError> {
        let what = format!("POST secret/data/{path}");
        let body = json!({ "data": data });
        let (status, text) = self
            .request(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(&body),
            )
            .await?;
        match status {
            200 | 204 => Ok(()),
            _ => Err(self.api_error(&what, status, text)),
        }
    }

    /// Reads KV v2 `secret/<path>` with the root token: `Ok(None)` on 404, else the `data`.
    pub async fn kv_get(&self, path: &str) -> Result<Option<Value>, LabError> {
        let what = format!("GET secret/data/{path}");
        let (status, text) = self
            .request(reqwest::Method::GET, &format!("secret/data/{path}"), None)
            .await?;
        match status {
            200 => {
                let v: Value = serde_json::from_str(&text).map_err(|e| LabError::Protocol {
                    target: self.name.clone(),
                    what: what.clone(),
                    detail: e.to_string(),
                })?;
                Ok(v.pointer("/data/data").cloned())
            }
            404 => Ok(None),
            _ => Err(self.api_error(&what, status, text)),
        }
    }

    /// Sends an API request with the root token to the first node that accepts a connection;
    /// returns the status and body.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), LabError> {
        let mut last = None;
        for node in &self.nodes {
            let url = api_url(&node.api_addr, path)?;
            let mut req = self
                .client
                .request(method.clone(), url)
                .header("X-Vault-Token", self.root_token.expose());
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    return Ok((status, text));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(source) => LabError::Http {
                target: self.name.clone(),
                what: format!("{method} {path}"),
                source,
            },
            None => LabError::Invalid(format!("{}: no nodes", self.name)),
        })
    }

    fn api_error(&self, what: &str, status: u16, body: String) -> LabError {
        LabError::Api {
            target: self.name.clone(),
            what: what.to_owned(),
            status,
            body,
        }
    }

    /// Mounts KV v2 at `secret/` through `node` and waits until it serves.
    async fn enable_kv2(&self, node: &LabNode) -> Result<(), LabError> {
        let what = "POST sys/mounts/secret";
        let resp = self
            .client
            .post(api_url(&node.api_addr, "sys/mounts/secret")?)
            .header("X-Vault-Token", self.root_token.expose())
            .json(&json!({ "type": "kv", "options": { "version": "2" } }))
            .send()
            .await
            .map_err(|source| node.http_error(what, source))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.text().await.unwrap_or_default();
            return Err(self.api_error(what, status, body));
        }
        // A fresh KV v2 mount can answer "upgrading" for a moment; wait until its config reads.
        let config = api_url(&node.api_addr, "secret/config")?;
        try_wait_for("KV v2 at secret/ to serve", SETTLE_TIMEOUT, || async {
            let resp = self
                .client
                .get(config.clone())
                .header("X-Vault-Token", self.root_token.expose())
                .send()
                .await;
            matches!(&resp, Ok(r) if r.status().as_u16() == 200)
        })
        .await
        .map_err(|_| node.timeout("KV v2 at secret/ to serve", SETTLE_TIMEOUT))
    }

    /// Sets autopilot's `server_stabilization_time` to 1 s (default 10 s), so that joined
    /// standbys become voters in a few seconds instead of about 15: lab HA starts stay short.
    async fn shorten_stabilization(&self) -> Result<(), LabError> {
        let what = "POST sys/storage/raft/autopilot/configuration";
        let body = json!({ "server_stabilization_time": "1s" });
        let (status, text) = self
            .request(
                reqwest::Method::POST,
                "sys/storage/raft/autopilot/configuration",
                Some(&body),
            )
            .await?;
        match status {
            200 | 204 => Ok(()),
            _ => Err(self.api_error(what, status, text)),
        }
    }

    /// Waits until the raft configuration lists every node as a voter.
    pub async fn wait_voters(&self, timeout: Duration) -> Result<(), LabError> {
        self.wait_voter_count(self.nodes.len(), timeout).await
    }

    /// Waits until the raft configuration lists `want` voters.
    pub async fn wait_voter_count(&self, want: usize, timeout: Duration) -> Result<(), LabError> {
        // Voters counted: Ok(Ok(())); a request error: Ok(Err(e)), which ends the wait at once.
        try_wait_for("every node to be a raft voter", timeout, || async {
            let (status, text) = match self
                .request(reqwest::Method::GET, "sys/storage/raft/configuration", None)
                .await
            {
                Ok(answer) => answer,
                Err(e) => return Ok(Err(e)),
            };
            if status != 200 {
                return Err(format!("HTTP {status}"));
            }
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let servers = v
                .pointer("/data/config/servers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let voters = servers
                .iter()
                .filter(|s| s.get("voter").and_then(Value::as_bool) == Some(true))
                .count();
            if voters == want {
                Ok(Ok(()))
            } else {
                Err(format!("{voters} voters, waiting for {want}"))
            }
        })
        .await
        .map_err(|_| self.nodes[0].timeout(&format!("{want} raft voters"), timeout))?
    }
}

/// How many of `nodes` are voters of a raft whose primary they are (`Role::Primary`) or not.
fn voters(nodes: &[LabNode], role: Role) -> usize {
    nodes.iter().filter(|n| !n.suffrage.non_voter(role)).count()
}

impl LabNode {
    /// Creates the node's folder, data dir and config file (does not start it).
    fn create(
        spec: &NodeSpec,
        bao: &Path,
        cluster_dir: &Path,
        seal_key: &Path,
        client: &reqwest::Client,
        prefix: &[OsString],
    ) -> Result<Self, LabError> {
        let dir = cluster_dir.join(&spec.node);
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| LabError::io(format!("create {}", data_dir.display()), e))?;
        let node = LabNode {
            name: spec.node.clone(),
            api_addr: host_url(spec.ip, spec.api_port)?,
            client_addr: host_url(spec.ip, spec.client_port)?,
            client_socket: std::net::SocketAddr::new(spec.ip, spec.client_port),
            cluster_socket: std::net::SocketAddr::new(spec.ip, spec.cluster_port),
            config_path: dir.join("config.hcl"),
            log_path: dir.join("bao.log"),
            pid_file: dir.join("bao.pid"),
            data_dir,
            dir,
            bao: bao.to_path_buf(),
            client: client.clone(),
            child: None,
            prefix: prefix.to_vec(),
            launcher: None,
            suffrage: Suffrage::Auto,
        };
        let config = render_config(spec, &node.data_dir, &node.pid_file, seal_key);
        std::fs::write(&node.config_path, config)
            .map_err(|e| LabError::io(format!("write {}", node.config_path.display()), e))?;
        Ok(node)
    }

    /// What an installer gives a launched node before its first start: the bootstrap
    /// lineage (term 0 of `primary`'s raft) and a permit, as a voter or a non-voter.
    fn write_bootstrap(&self, primary: &str, non_voter: bool) -> Result<(), LabError> {
        let control = vault_dr_agent::launch::ControlDir::new(self.control_dir());
        let io =
            |what: &str, e| LabError::io(format!("{what} in {}", self.control_dir().display()), e);
        control
            .create()
            .map_err(|e| io("create the control dir", e))?;
        let lineage = serde_json::json!({ "term": 0, "primary": primary });
        vault_dr_agent::launch::write_atomic(
            &self
                .control_dir()
                .join(vault_dr_agent::replication::raft::LINEAGE_FILE),
            lineage.to_string().as_bytes(),
        )
        .map_err(|e| io("write the lineage", e))?;
        control
            .write_permit(&vault_dr_agent::launch::Permit {
                term: 0,
                non_voter,
                reason: "the lab's first start".into(),
            })
            .map_err(|e| io("write the permit", e))
    }

    /// Starts `bao server` with this node's config (log appended to [`LabNode::log_path`]).
    /// A launched node ([`LabNode::launched`]) starts its launcher, which starts `bao` only
    /// with a permit; the process group goes on a kill.
    fn spawn(&mut self) -> Result<(), LabError> {
        let (program, args) = self.command();
        let guard = if self.launcher.is_some() {
            ChildGuard::spawn_tracked(&self.name, &program, &args, &self.log_path, &self.pid_file)?
        } else {
            ChildGuard::spawn(&self.name, &program, &args, &self.log_path)?
        };
        self.child = Some(guard);
        Ok(())
    }

    /// The program and arguments that start `bao server` (through the launcher when there is
    /// one, through the host's prefix).
    fn command(&self) -> (PathBuf, Vec<OsString>) {
        let mut args: Vec<OsString> = vec![
            "server".into(),
            format!("-config={}", self.config_path.display()).into(),
        ];
        let mut bao = self.bao.clone();
        if let Some(launcher) = &self.launcher {
            let mut launch: Vec<OsString> = vec![
                "--control-dir".into(),
                self.control_dir().into_os_string(),
                "--".into(),
                bao.into_os_string(),
            ];
            launch.append(&mut args);
            args = launch;
            bao = launcher.clone();
        }
        let program = match self.prefix.split_first() {
            None => bao,
            Some((first, rest)) => {
                let mut full = rest.to_vec();
                full.push(bao.into_os_string());
                full.append(&mut args);
                args = full;
                PathBuf::from(first)
            }
        };
        (program, args)
    }

    /// The node's name (`<cluster>-n<i>`, also its raft `node_id`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's API address, `http://127.0.0.1:<port>` (or its [`NodeHost`]'s IP).
    pub fn api_addr(&self) -> &Url {
        &self.api_addr
    }

    /// The node's client address when its agent runs a write gate (`--gate-listen`): a port
    /// reserved for it next to the API port, on the same IP. Nothing listens there without
    /// a gated agent; [`LabNode::api_addr`] stays the node's own listener, which the lab and
    /// the agent use.
    pub fn client_addr(&self) -> &Url {
        &self.client_addr
    }

    /// [`LabNode::client_addr`] as the socket address the agent's gate listens on.
    pub fn client_socket(&self) -> std::net::SocketAddr {
        self.client_socket
    }

    /// The pid of the `bao` process, None when it is not running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// The `pid_file` that `bao` writes.
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The raft data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The control directory of the node's `vault-dr-launch` (raft replication), inside its
    /// data directory as the agent's default has it.
    pub fn control_dir(&self) -> PathBuf {
        self.data_dir.join(".vault-dr")
    }

    /// Whether `bao` runs under `vault-dr-launch` (raft replication).
    pub fn launched(&self) -> bool {
        self.launcher.is_some()
    }

    /// How the node joins a raft (raft replication; `auto` otherwise).
    pub fn suffrage(&self) -> Suffrage {
        self.suffrage
    }

    /// The node's cluster address, `host:port` (its `cluster_addr` without the scheme).
    pub fn cluster_socket(&self) -> std::net::SocketAddr {
        self.cluster_socket
    }

    /// Starts the node's launcher again (killing it and `bao` first if they run) and returns
    /// at once: `bao` starts when the agent permits it. For [`LabNode::launched`] nodes.
    pub fn restart_held(&mut self) -> Result<(), LabError> {
        self.kill();
        self.spawn()
    }

    /// The node's folder (config, log, pid file, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (stdout and stderr of every run of this node).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// SIGKILLs `bao` and waits until it is gone. No-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// SIGSTOPs `bao`: the listener stays open but nothing answers.
    pub fn stop(&mut self) {
        if let Some(child) = &self.child {
            child.signal(Signal::Stop);
            // Stopped when this returns: no thread answers a request sent afterwards.
            if !child.wait_stopped(Duration::from_secs(2)) {
                tracing::warn!(node = %self.name, "bao not stopped 2 s after SIGSTOP");
            }
        }
    }

    /// SIGCONTs `bao` after [`LabNode::stop`].
    pub fn cont(&mut self) {
        if let Some(child) = &self.child {
            child.signal(Signal::Cont);
        }
    }

    /// SIGHUPs `bao` (reload its config file).
    pub fn reload(&mut self) {
        if let Some(child) = &self.child {
            child.signal(Signal::Hup);
        }
    }

    /// Starts `bao` again under a supervisor that starts it again 0.2 s after each exit, as
    /// the kubelet or systemd `Restart=always` would (killing it first if it runs), and waits
    /// until it listens. [`LabNode::kill`] ends the supervisor too; [`LabNode::pid`] follows
    /// the current run through the pid file.
    pub async fn supervise(&mut self) -> Result<(), LabError> {
        self.kill();
        let (program, args) = self.command();
        let guard = ChildGuard::spawn_supervised(
            &self.name,
            &program,
            &args,
            &self.log_path,
            &self.pid_file,
        )?;
        self.child = Some(guard);
        self.wait_listening().await
    }

    /// Starts `bao` again with the same config and data (killing it first if it runs) and
    /// waits until it listens. The static seal unseals it without help; wait for
    /// [`LabNode::wait_health`] 200 or 429 to know when it serves.
    pub async fn restart(&mut self) -> Result<(), LabError> {
        self.kill();
        self.spawn()?;
        self.wait_listening().await
    }

    /// `GET sys/health`: the status and the JSON body. An error when nothing answers.
    pub async fn health(&self) -> Result<(u16, Value), LabError> {
        let what = "GET sys/health";
        let resp = self
            .client
            .get(api_url(&self.api_addr, "sys/health")?)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|source| self.http_error(what, source))?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Polls `sys/health` until it answers `want_status` (200 active, 429 standby, 503 sealed,
    /// 501 uninitialised). Fails early when the process has exited.
    pub async fn wait_health(&self, want_status: u16, timeout: Duration) -> Result<(), LabError> {
        let what = format!("sys/health {want_status}");
        self.wait_alive(&what, timeout, || async {
            matches!(self.health().await, Ok((status, _)) if status == want_status)
        })
        .await
    }

    /// Waits until the API listener answers anything.
    async fn wait_listening(&mut self) -> Result<(), LabError> {
        let me = &*self;
        me.wait_alive("the API listener", LISTEN_TIMEOUT, || async {
            me.health().await.is_ok()
        })
        .await
    }

    /// Waits until `condition` holds; fails at once when the process exits meanwhile, and
    /// with [`LabError::Timeout`] (the log's last lines) after `timeout`.
    async fn wait_alive<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> Result<(), LabError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        // Held: Some(Ok(())); the process exited: Some(Err(e)), which ends the wait at once.
        try_wait_for(what, timeout, || {
            let held = condition();
            async move {
                if held.await {
                    return Some(Ok(()));
                }
                self.check_alive().err().map(Err)
            }
        })
        .await
        .map_err(|_| self.timeout(what, timeout))?
    }

    /// An error when the process was started and has exited since.
    fn check_alive(&self) -> Result<(), LabError> {
        // `is_running` needs `&mut`; a zero-signal check on the pid is enough here.
        match &self.child {
            Some(child) if !super::process::pid_alive(child.pid()) => Err(LabError::Exited {
                node: self.name.clone(),
                log: self.log_path.clone(),
                tail: log_tail(&self.log_path),
            }),
            _ => Ok(()),
        }
    }

    fn timeout(&self, what: &str, after: Duration) -> LabError {
        LabError::Timeout {
            node: self.name.clone(),
            what: what.to_owned(),
            after,
            log: self.log_path.clone(),
            tail: log_tail(&self.log_path),
        }
    }

    fn http_error(&self, what: &str, source: reqwest::Error) -> LabError {
        LabError::Http {
            target: self.name.clone(),
            what: what.to_owned(),
            source,
        }
    }
}

/// `PUT sys/init` on `node` (static seal: no shares) and returns the root token.
async fn init(node: &LabNode) -> Result<Secret, LabError> {
    let what = "PUT sys/init";
    let resp = node
        .client
        .put(api_url(&node.api_addr, "sys/init")?)
        .json(&json!({}))
        .timeout(INIT_TIMEOUT)
        .send()
        .await
        .map_err(|source| node.http_error(what, source))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.text().await.unwrap_or_default();
        return Err(LabError::Api {
            target: node.name.clone(),
            what: what.to_owned(),
            status,
            body,
        });
    }
    let v: Value = resp
        .json()
        .await
        .map_err(|source| node.http_error(what, source))?;
    match v.get("root_token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(Secret::new(t)),
        _ => Err(LabError::Protocol {
            target: node.name.clone(),
            what: what.to_owned(),
            detail: "no root_token in the answer".into(),
        }),
    }
}

/// The config file of one node.
fn render_config(spec: &NodeSpec, data_dir: &Path, pid_file: &Path, seal_key: &Path) -> String {
    let mut raft = format!(
        "  path = {}\n  node_id = {}\n",
        hcl_str(&data_dir.display().to_string()),
        hcl_str(&spec.node)
    );
    if spec.fast_election {
        raft.push_str("  performance_multiplier = 1\n");
    }
    for url in &spec.retry_join {
        raft.push_str(&format!(
            "  retry_join {{\n    leader_api_addr = {}\n  }}\n",
            hcl_str(url.as_str().trim_end_matches('/'))
        ));
    }
    format!(
        r#"# Generated by vault-dr lab for node {node} of cluster {cluster}.
ui = false
cluster_name = {cluster_q}
pid_file = {pid_file}
api_addr = "http://{api}"
cluster_addr = "https://{cport}"

storage "raft" {{
{raft}}}

listener "tcp" {{
  address = "{api}"
  cluster_address = "{cport}"
  tls_disable = true
  telemetry {{
    unauthenticated_metrics_access = true
  }}
}}

telemetry {{
  prometheus_retention_time = "30s"
  disable_hostname = true
}}

seal "static" {{
  current_key_id = "vault-dr-lab-1"
  current_key = {key}
}}
"#,
        node = spec.node,
        cluster = spec.cluster,
        cluster_q = hcl_str(&spec.cluster),
        pid_file = hcl_str(&pid_file.display().to_string()),
        api = std::net::SocketAddr::new(spec.ip, spec.api_port),
        cport = std::net::SocketAddr::new(spec.ip, spec.cluster_port),
        key = hcl_str(&format!("file://{}", seal_key.display())),
    )
}

/// An HCL string literal (OpenBao parses HCL 1: only `"` and `\` need escaping).
fn hcl_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Cluster names become folder names, node ids and HCL strings: keep them plain.
fn check_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "cluster name {name:?}: use 1-64 ASCII letters, digits, '-' or '_'"
        )))
    }
}

#[cfg(test)]
fn loopback_url(port: u16) -> Result<Url, LabError> {
    host_url(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// `http://<ip>:<port>` (IPv6 in brackets).
fn host_url(ip: IpAddr, port: u16) -> Result<Url, LabError> {
    let addr = std::net::SocketAddr::new(ip, port);
    Url::parse(&format!("http://{addr}"))
        .map_err(|e| LabError::Invalid(format!("url for {ip} port {port}: {e}")))
}

/// `<api_addr>/v1/<path>`.
fn api_url(api_addr: &Url, path: &str) -> Result<Url, LabError> {
    api_addr
        .join(&format!("v1/{path}"))
        .map_err(|e| LabError::Invalid(format!("api path {path:?}: {e}")))
}

/// The lab's HTTP client: no proxy, short connect timeout, 30 s per request.
pub(super) fn http_client() -> Result<reqwest::Client, LabError> {
    vault_dr_common::http::client_builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| LabError::Http {
            target: "lab".into(),
            what: "build HTTP client".into(),
            source,
        })
}

/// Whether a start failed because a picked port was taken by someone else in the meantime.
fn port_clash(err: &LabError) -> bool {
    match err {
        LabError::Exited { tail, .. } | LabError::Timeout { tail, .. } => {
            tail.contains("address already in use")
        }
        _ => false,
    }
}

/// The last lines of a log file (empty when it cannot be read).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_static_seal_raft_and_telemetry() {
        let spec = NodeSpec {
            cluster: "dc1".into(),
            node: "dc1-n1".into(),
            api_port: 18200,
            cluster_port: 18201,
            client_port: 18202,
            fast_election: true,
            retry_join: vec![loopback_url(18210).unwrap()],
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let c = render_config(
            &spec,
            Path::new("/lab/dc1/dc1-n1/data"),
            Path::new("/lab/dc1/dc1-n1/bao.pid"),
            Path::new("/lab/key"),
        );
        assert!(c.contains("cluster_name = \"dc1\""), "{c}");
        assert!(c.contains("node_id = \"dc1-n1\""), "{c}");
        assert!(c.contains("current_key = \"file:///lab/key\""), "{c}");
        assert!(c.contains("performance_multiplier = 1"), "{c}");
        assert!(
            c.contains("leader_api_addr = \"http://127.0.0.1:18210\""),
            "{c}"
        );
        assert!(c.contains("unauthenticated_metrics_access = true"), "{c}");
        assert!(!c.contains("disable_mlock"), "rejected by OpenBao 2.7: {c}");
    }

    #[test]
    fn hcl_strings_are_escaped() {
        assert_eq!(hcl_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn names_must_be_plain() {
        assert!(check_name("dc-1_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn a_port_clash_is_recognised_from_the_log() {
        let e = LabError::Exited {
            node: "n".into(),
            log: "/x".into(),
            tail:
                "Error initializing listener: listen tcp 127.0.0.1:1: bind: address already in use"
                    .into(),
        };
        assert!(port_clash(&e));
    }
}
