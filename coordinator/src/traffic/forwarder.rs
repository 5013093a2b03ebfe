//! The local TCP forwarder: clients connect to one fixed address and the forwarder relays each
//! connection to the current primary's API address.
//!
//! - It listens only while this coordinator leads ([`LocalForwarder::start`] /
//!   [`LocalForwarder::stop`]); the socket has `SO_REUSEADDR` and `SO_REUSEPORT`, so a new leader
//!   can bind while a stopped old one still holds the port.
//! - The target changes atomically ([`LocalForwarder::set_target`]): new connections go to the
//!   new target at once and every connection to the old target is closed, so no client keeps
//!   writing to a fenced primary over an open connection.
//! - With no target (a planned switchover's cut) new connections are closed at once.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the forwarder waits for the target to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where client connections go: a cluster and its API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Cluster name (the metric label).
    pub cluster: String,
    /// `host:port` of its API.
    pub addr: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.cluster, self.addr)
    }
}

/// The forwarder's metrics (registered by [`ForwarderMetrics::new`]).
#[derive(Debug, Clone)]
pub struct ForwarderMetrics {
    /// Client connections accepted.
    pub connections: IntCounter,
    /// Client connections open right now.
    pub active: IntGauge,
    /// Connections closed by the forwarder, by reason (`cut`, `switch`, `stop`,
    /// `connect_failed`).
    pub closed: IntCounterVec,
    /// 1 for the cluster new connections go to, 0 for the others (all 0 while cut).
    pub target: GaugeVec,
    /// 1 while the forwarder listens (this coordinator leads).
    pub listening: IntGauge,
}

impl ForwarderMetrics {
    /// Creates and registers the forwarder's metrics on `r`.
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            connections: IntCounter::new(
                crate::metrics::name("forwarder_connections_total"),
                "Client connections accepted by the local forwarder",
            )?,
            active: IntGauge::new(
                crate::metrics::name("forwarder_connections_active"),
                "Client connections the local forwarder relays right now",
            )?,
            closed: IntCounterVec::new(
                Opts::new(
                    crate::metrics::name("forwarder_connections_closed_total"),
                    "Client connections the local forwarder closed itself, by reason",
                ),
                &["reason"],
            )?,
            target: GaugeVec::new(
                Opts::new(
                    crate::metrics::name("forwarder_target"),
                    "1 for the cluster the local forwarder sends new connections to",
                ),
                &["cluster"],
            )?,
            listening: IntGauge::new(
                crate::metrics::name("forwarder_listening"),
                "1 while the local forwarder listens (this coordinator leads)",
            )?,
        };
        r.register(Box::new(m.connections.clone()))?;
        r.register(Box::new(m.active.clone()))?;
        r.register(Box::new(m.closed.clone()))?;
        r.register(Box::new(m.target.clone()))?;
        r.register(Box::new(m.listening.clone()))?;
        Ok(m)
    }
}

/// The target as the connections see it: a generation that changes with every change of target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Routed {
    generation: u64,
    target: Option<Target>,
    /// When `target` was set (wall clock, for the journal).
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// A listening forwarder: its address and how to stop it.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

/// The local TCP forwarder.
#[derive(Debug)]
pub struct LocalForwarder {
    listen: SocketAddr,
    routed: watch::Sender<Routed>,
    running: Mutex<Option<Running>>,
    explicit: AtomicU64,
    metrics: ForwarderMetrics,
    clusters: Vec<String>,
    /// How often the replicas re-read the topology, in ms (see `super::supervise`).
    refresh_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalForwarder {
    /// A forwarder for `listen` (not listening yet, no target). `clusters` names every
    /// cluster, so the target gauge shows a 0 for each one that is not the target.
    pub fn new(listen: SocketAddr, clusters: Vec<String>, metrics: ForwarderMetrics) -> Arc<Self> {
        let (routed, _) = watch::channel(Routed {
            generation: 0,
            target: None,
            since: None,
        });
        Arc::new(Self {
            listen,
            routed,
            running: Mutex::new(None),
            explicit: AtomicU64::new(0),
            metrics,
            clusters,
            refresh_ms: AtomicU64::new(
                u64::try_from(super::REFRESH_PERIOD.as_millis()).unwrap_or(u64::MAX),
            ),
        })
    }

    /// How often the replicas re-read the topology (what a cut waits for, see
    /// `super::cut_honoured_within`).
    pub fn refresh_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.refresh_ms.load(Ordering::SeqCst))
    }

    /// Sets [`Self::refresh_period`] (the supervising loop's period).
    pub fn set_refresh_period(&self, period: std::time::Duration) {
        self.refresh_ms.store(
            u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// The configured listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The address it listens on while running (differs from [`Self::listen`] for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.running).as_ref().map(|r| r.addr)
    }

    /// Where new connections go now (`None`: cut or not set yet).
    pub fn target(&self) -> Option<Target> {
        self.routed.borrow().target.clone()
    }

    /// How many explicit `switch`/`cut` calls happened; the topology refresh discards a reading
    /// taken before the latest one.
    pub fn explicit_changes(&self) -> u64 {
        self.explicit.load(Ordering::SeqCst)
    }

    /// Counts an explicit change (the traffic switch's `switch` or `cut`).
    pub fn mark_explicit(&self) {
        self.explicit.fetch_add(1, Ordering::SeqCst);
    }

    /// Sends new connections to `target` (`None`: refuse them). When the target changes, every
    /// open connection is closed. Returns the number of connections open at the change
    /// (closed now), or `None` when the target did not change.
    pub fn set_target(&self, target: Option<Target>) -> Option<i64> {
        let open = self.metrics.active.get();
        let changed = self.routed.send_if_modified(|r| {
            if r.target == target {
                return false;
            }
            r.generation += 1;
            r.target = target.clone();
            r.since = Some(chrono::Utc::now());
            true
        });
        if !changed {
            return None;
        }
        for c in &self.clusters {
            let on = target.as_ref().is_some_and(|t| t.cluster == *c);
            self.metrics
                .target
                .with_label_values(&[c])
                .set(f64::from(u8::from(on)));
        }
        match &target {
            Some(t) => {
                tracing::info!(listen = %self.listen, "forwarder now sends new connections to {t}; closing {open} open connection(s)")
            }
            None => {
                tracing::info!(listen = %self.listen, "forwarder cut: refusing new connections; closing {open} open connection(s)")
            }
        }
        Some(open)
    }

    /// When the forwarder started sending new connections to `cluster`, if it does now.
    pub fn sending_to_since(&self, cluster: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let r = self.routed.borrow();
        match &r.target {
            Some(t) if t.cluster == cluster => r.since,
            _ => None,
        }
    }

    /// Whether it listens now.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Binds the listen address (`SO_REUSEADDR` + `SO_REUSEPORT`) and starts accepting. Does
    /// nothing if already running. Returns the bound address.
    pub fn start(self: &Arc<Self>) -> std::io::Result<SocketAddr> {
        let mut running = lock(&self.running);
        if let Some(r) = running.as_ref() {
            return Ok(r.addr);
        }
        let listener = bind_reusable(self.listen)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(Arc::clone(self).accept_loop(listener, stopped));
        *running = Some(Running { addr, stop, accept });
        self.metrics.listening.set(1);
        tracing::info!(%addr, "forwarder listening");
        Ok(addr)
    }

    /// Closes the listener and every connection; returns once the listener is closed. Does
    /// nothing if not running.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(r) = running {
            let _ = r.stop.send(true);
            // The accept task owns the listener: once it ended, the port is ours no more.
            let _ = r.accept.await;
            self.metrics.listening.set(0);
            tracing::info!(addr = %r.addr, "forwarder stopped: listener and connections closed");
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        mut stopped: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => {
                        self.metrics.connections.inc();
                        let this = Arc::clone(&self);
                        let stopped = stopped.clone();
                        tokio::spawn(async move { this.relay(client, stopped).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("forwarder accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn relay(self: Arc<Self>, mut client: TcpStream, mut stopped: watch::Receiver<bool>) {
        let mut routed = self.routed.subscribe();
        let Routed {
            generation, target, ..
        } = routed.borrow_and_update().clone();
        let Some(target) = target else {
            self.metrics.closed.with_label_values(&["cut"]).inc();
            return; // dropping the stream closes it: cut
        };
        let upstream =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.addr)).await;
        let mut upstream = match upstream {
            Ok(Ok(s)) => s,
            _ => {
                self.metrics
                    .closed
                    .with_label_values(&["connect_failed"])
                    .inc();
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let _ = client.set_nodelay(true);
        // The target may have changed while connecting: then this connection must not be used.
        if self.routed.borrow().generation != generation {
            self.metrics.closed.with_label_values(&["switch"]).inc();
            return;
        }
        self.metrics.active.inc();
        let reason = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => None,
            _ = async {
                while routed.changed().await.is_ok() {
                    if routed.borrow_and_update().generation != generation {
                        return;
                    }
                }
                // The forwarder is gone: wait for the stop signal instead.
                std::future::pending::<()>().await;
            } => Some(if self.routed.borrow().target.is_none() { "cut" } else { "switch" }),
            _ = stopped.changed() => Some("stop"),
        };
        self.metrics.active.dec();
        if let Some(reason) = reason {
            self.metrics.closed.with_label_values(&[reason]).inc();
        }
        // Both streams drop here: the client sees the connection close.
    }
}

/// A listener on `addr` that another process (or a new leader in this one) can bind as well.
fn bind_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that prefixes every answer with its name, so a test sees where a
    /// connection went.
    async fn echo(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                // One write, so the answer arrives in one piece.
                                let mut answer = Vec::with_capacity(n + name.len());
                                if name != "raw" {
                                    answer.extend_from_slice(name.as_bytes());
                                }
                                answer.extend_from_slice(&buf[..n]);
                                if s.write_all(&answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    fn target(cluster: &str, addr: SocketAddr) -> Option<Target> {
        Some(Target {
            cluster: cluster.into(),
            addr: addr.to_string(),
        })
    }

    fn forwarder() -> (Arc<LocalForwarder>, Registry) {
        let r = Registry::new();
        let m = ForwarderMetrics::new(&r).unwrap();
        let f = LocalForwarder::new(
            "127.0.0.1:0".parse().unwrap(),
            vec!["a".into(), "b".into()],
            m,
        );
        (f, r)
    }

    async fn ask(s: &mut TcpStream, what: &str) -> String {
        s.write_all(what.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads until EOF or error; true when the connection was closed by the other side.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// The value of metric `name` (with a label value `label`, if given) in the text format.
    fn gauge(r: &Registry, name: &str, label: Option<&str>) -> f64 {
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&r.gather(), &mut text)
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| label.is_none_or(|v| l.contains(&format!("\"{v}\""))))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[tokio::test]
    async fn switching_closes_old_connections_and_new_ones_reach_the_new_target() {
        let (a, _ta) = echo("a:").await;
        let (b, _tb) = echo("b:").await;
        let (f, r) = forwarder();
        f.set_target(target("a", a));
        let addr = f.start().unwrap();
        let mut old = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut old, "x").await, "a:x");
        assert_eq!(
            gauge(
                &r,
                "vault_dr_coordinator_forwarder_connections_active",
                None
            ),
            1.0
        );

        assert_eq!(f.set_target(target("b", b)), Some(1));
        assert!(
            closed(&mut old).await,
            "the connection to a is closed by the switch"
        );
        let mut new = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut new, "y").await, "b:y");
        assert_eq!(
            gauge(&r, "vault_dr_coordinator_forwarder_target", Some("b")),
            1.0
        );
        assert_eq!(
            gauge(&r, "vault_dr_coordinator_forwarder_target", Some("a")),
            0.0
        );
        assert_eq!(
            gauge(&r, "vault_dr_coordinator_forwarder_connections_total", None),
            2.0
        );
        // Setting the same target again keeps the open connection.
        assert_eq!(f.set_target(target("b", b)), None);
        assert_eq!(ask(&mut new, "z").await, "b:z");
        f.stop().await;
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_refuses_new_ones() {
        let (a, _ta) = echo("a:").await;
        let (f, r) = forwarder();
        f.set_target(target("a", a));
        let addr = f.start().unwrap();
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut open, "x").await, "a:x");
        f.set_target(None);
        assert!(closed(&mut open).await, "open connection closed by the cut");
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(b"lost?").await;
            assert!(closed(&mut s).await, "a new connection is closed at once");
        }
        assert_eq!(
            gauge(&r, "vault_dr_coordinator_forwarder_target", Some("a")),
            0.0
        );
        assert!(
            gauge(
                &r,
                "vault_dr_coordinator_forwarder_connections_closed_total",
                Some("cut")
            ) >= 4.0
        );
        f.stop().await;
    }

    #[tokio::test]
    async fn stopping_closes_the_listener_and_every_connection_and_a_restart_rebinds() {
        let (a, _ta) = echo("a:").await;
        let (f, _r) = forwarder();
        f.set_target(target("a", a));
        let addr = f.start().unwrap();
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut open, "x").await, "a:x");
        f.stop().await;
        assert!(!f.is_running());
        assert!(closed(&mut open).await, "stop closes open connections");
        // The listener is gone: a connection is refused (give the accept task a moment to drop).
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "nothing listens on {addr} after stop");
        // A new leader binds the same fixed address.
        let m = ForwarderMetrics::new(&Registry::new()).unwrap();
        let g = LocalForwarder::new(addr, vec!["a".into()], m);
        g.set_target(target("a", a));
        assert_eq!(g.start().unwrap(), addr);
        let mut again = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut again, "y").await, "a:y");
        g.stop().await;
    }

    #[tokio::test]
    async fn a_second_forwarder_can_bind_while_the_first_still_holds_the_port() {
        let (a, _ta) = echo("a:").await;
        let (f, _r) = forwarder();
        f.set_target(target("a", a));
        let addr = f.start().unwrap();
        let m = ForwarderMetrics::new(&Registry::new()).unwrap();
        let g = LocalForwarder::new(addr, vec!["a".into()], m);
        g.set_target(target("a", a));
        assert_eq!(
            g.start().unwrap(),
            addr,
            "SO_REUSEPORT lets the new leader bind"
        );
        f.stop().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut s, "x").await, "a:x");
        g.stop().await;
    }

    #[tokio::test]
    async fn an_unreachable_target_closes_the_client_connection() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let (f, r) = forwarder();
        f.set_target(target("a", dead));
        let addr = f.start().unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut s).await);
        assert_eq!(
            gauge(
                &r,
                "vault_dr_coordinator_forwarder_connections_closed_total",
                Some("connect_failed")
            ),
            1.0
        );
        f.stop().await;
    }

    #[tokio::test]
    async fn throughput_is_sane_for_a_bulk_transfer() {
        let (a, _ta) = echo("raw").await;
        let (f, _r) = forwarder();
        f.set_target(target("a", a));
        let addr = f.start().unwrap();
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        const TOTAL: usize = 64 * 1024 * 1024;
        let started = std::time::Instant::now();
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 256 * 1024];
            let mut sent = 0;
            while sent < TOTAL {
                wr.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            wr
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < TOTAL {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended after {got} bytes");
            assert!(buf[..n].iter().all(|b| *b == 7), "bytes arrive unchanged");
            got += n;
        }
        let _wr = writer.await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        let mib_s = (2 * TOTAL) as f64 / secs / (1024.0 * 1024.0);
        println!("forwarder echo throughput: {mib_s:.0} MiB/s (64 MiB each way in {secs:.2} s)");
        // Debug builds on a shared 2-core machine: a very low floor that still catches a
        // byte-at-a-time or stalled relay.
        assert!(mib_s > 20.0, "throughput {mib_s:.1} MiB/s");
        f.stop().await;
    }
}
