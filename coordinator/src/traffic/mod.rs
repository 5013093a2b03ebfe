//! Client traffic: the local TCP forwarder ([`forwarder`]) as the `TrafficSwitch` of
//! `traffic.backend = "local"`, and the loop that keeps it listening on every replica (the
//! leader and its followers) and pointed at the topology's primary.
//!
//! The executor sets the target explicitly (`switch` in the Switched step, `cut` in a planned
//! switchover's Fenced step); the loop re-reads the topology so that a new leader, or one that
//! resumed a failover, forwards to the right cluster too. A reading taken before the latest
//! explicit change is discarded, so the loop can never undo a cut it did not see.

pub mod forwarder;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;

use crate::config::ClusterConfig;
use crate::coordination::Coordination;
use crate::failover::actions::{ActionError, ActionResult, TrafficSwitch};
use crate::model::Step;
use crate::model::topology::Topology;
use async_trait::async_trait;
pub use forwarder::{ForwarderMetrics, LocalForwarder, Target};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often every replica's forwarder re-reads the topology with the local coordination
/// backend (a file on the same machine).
pub const REFRESH_PERIOD: Duration = Duration::from_millis(25);
/// The same with the Kubernetes backend (a ConfigMap GET per reading and replica).
pub const REFRESH_PERIOD_KUBERNETES: Duration = Duration::from_millis(250);

/// The cluster client traffic belongs to under `topology`: the serving primary, except during
/// a failover or planned switchover until the target is promoted. Traffic is cut then: in a
/// switchover so that no write reaches the old primary after its final snapshot, in a
/// failover because the old primary is fenced from the decision on (a frozen one that wakes
/// must find no clients). A handover inside one raft cuts nothing: traffic stays on the old
/// primary, whose nodes forward every request to the raft's leader, until the target leads.
pub fn target_cluster(topology: &Topology) -> Option<&str> {
    match &topology.failover {
        Some(f) if f.raft_handover && f.completed < Step::Promoted => Some(&f.from),
        Some(f) if f.completed < Step::Promoted => None,
        _ => Some(topology.serving_primary()),
    }
}

/// The forwarding target of a cluster: `host:port` of its first API address.
pub fn target_of(cluster: &ClusterConfig) -> Option<Target> {
    let url = cluster.api_addrs.first()?;
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    // An IPv6 literal keeps its brackets in host_str, so "host:port" stays parseable.
    Some(Target {
        cluster: cluster.name.clone(),
        addr: format!("{host}:{port}"),
    })
}

#[async_trait]
impl TrafficSwitch for LocalForwarder {
    async fn switch(&self, to: &ClusterConfig, term: u64) -> ActionResult {
        let target = target_of(to).ok_or_else(|| {
            ActionError(format!(
                "cluster {} has no API address with a host and port to forward to",
                to.name
            ))
        })?;
        self.mark_explicit();
        let listen = self.listen();
        Ok(match self.set_target(Some(target.clone())) {
            Some(closed) => format!(
                "forwarder on {listen} sends new connections to {target} in term {term}; closed {closed} open connection(s) to the previous target"
            ),
            None => match self.sending_to_since(&to.name) {
                Some(since) => format!(
                    "forwarder on {listen} has sent new connections to {target} since {} (term {term}): it follows the topology, which named {} as soon as it was promoted",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    to.name
                ),
                None => format!(
                    "forwarder on {listen} already sends new connections to {target} (term {term})"
                ),
            },
        })
    }

    fn switched_at(&self, cluster: &ClusterConfig) -> Option<chrono::DateTime<chrono::Utc>> {
        self.sending_to_since(&cluster.name)
    }

    async fn cut(&self, term: u64) -> ActionResult {
        self.mark_explicit();
        let listen = self.listen();
        let here = match self.set_target(None) {
            Some(closed) => format!(
                "forwarder on {listen} cut client traffic for term {term}: new connections are closed at once; closed {closed} open connection(s)"
            ),
            None => format!(
                "forwarder on {listen} had already cut client traffic for term {term} (the topology showed the switchover first)"
            ),
        };
        // Every other replica's forwarder honours the cut the topology carries (written
        // before this step) within this bound: nothing reaches the old primary after it.
        let bound = cut_honoured_within(self.refresh_period());
        tokio::time::sleep(bound).await;
        Ok(format!(
            "{here}; waited {:.2} s for every replica's forwarder to honour it",
            bound.as_secs_f64()
        ))
    }
}

/// Keeps `forwarder` listening while `refusal` says nothing (see `crate::group`), on every
/// replica, pointed at the target of the topology this replica last read, until `stop` turns
/// true (then closes it). Only the leader changes the topology (and switches or cuts
/// explicitly); a follower forwards to what the topology says, so clients of the stable
/// address never wait for an election. A reading is taken every `period`; a replica whose last
/// reading began more than [`stale_after`]`(period)` ago forwards nothing (the leader may
/// have cut traffic since), which is what lets the leader's cut wait a bounded time for every
/// replica to honour it ([`cut_honoured_within`]).
pub async fn supervise(
    forwarder: Arc<LocalForwarder>,
    coordination: Arc<dyn Coordination>,
    clusters: Vec<ClusterConfig>,
    period: Duration,
    refusal: crate::group::Refusal,
    mut stop: watch::Receiver<bool>,
) {
    forwarder.set_refresh_period(period);
    let mut read_at: Option<Instant> = None;
    let mut stale_said = false;
    loop {
        if *stop.borrow() {
            break;
        }
        if refusal.is_refusing() {
            if forwarder.is_running() {
                tracing::warn!(listen = %forwarder.listen(), "forwarder closed: this coordinator refuses to act (see status)");
                forwarder.stop().await;
            }
        } else {
            let before = forwarder.explicit_changes();
            let began = Instant::now();
            // A reading that hangs counts as failed: the staleness check below must run.
            let reading = tokio::time::timeout(stale_after(period), coordination.read_topology())
                .await
                .unwrap_or_else(|_| {
                    Err(crate::coordination::CoordinationError::Unavailable(
                        format!("no answer within {:?}", stale_after(period)),
                    ))
                });
            match reading {
                Ok(Some(t)) => {
                    read_at = Some(began);
                    // A reading from before the leader's latest explicit switch or cut is
                    // discarded: it could undo a cut it did not see.
                    if forwarder.explicit_changes() == before {
                        let target = target_cluster(&t.value)
                            .and_then(|name| clusters.iter().find(|c| c.name == name))
                            .and_then(target_of);
                        forwarder.set_target(target);
                    }
                    stale_said = false;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(
                    "forwarder: cannot read the topology ({e}); keeping the current target for now"
                ),
            }
            let fresh = read_at.is_some_and(|t| t.elapsed() <= stale_after(period));
            if !fresh && !coordination.is_leader() && forwarder.target().is_some() {
                if !stale_said {
                    tracing::warn!(listen = %forwarder.listen(), "forwarder cut: no topology read for {:?}, the leader may have cut client traffic since", stale_after(period));
                    stale_said = true;
                }
                forwarder.set_target(None);
            }
            if !forwarder.is_running()
                && let Err(e) = forwarder.start()
            {
                tracing::warn!(listen = %forwarder.listen(), "forwarder cannot listen: {e}");
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(period) => {}
        }
    }
    forwarder.stop().await;
}

/// How old a follower's last topology reading (from its start) may be before it forwards
/// nothing.
pub fn stale_after(period: Duration) -> Duration {
    period * 2
}

/// How long after the leader wrote a cut into the topology every replica's forwarder has
/// honoured it. A replica's last reading that began before the cut began at `r`; a reading
/// begun after it shows the cut. Until then the replica forwards at most to its next check with
/// a reading older than [`stale_after`], and checks come at most a reading timeout
/// ([`stale_after`] again) plus `period` apart: by `r + 2 × stale_after + period`.
pub fn cut_honoured_within(period: Duration) -> Duration {
    stale_after(period) * 2 + period
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::local::LocalCoordination;
    use crate::model::topology::FailoverInProgress;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn cluster(name: &str, addr: &str) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            api_addrs: vec![url::Url::parse(addr).unwrap()],
            nodes: vec![format!("{name}-0")],
            priority: 0,
            excluded: false,
            selector: BTreeMap::new(),
        }
    }

    fn failover(planned: bool, completed: Step) -> Topology {
        Topology {
            primary: "dc1".into(),
            term: 2,
            failover: Some(FailoverInProgress {
                id: "2-dc1-dc2".into(),
                from: "dc1".into(),
                to: "dc2".into(),
                completed,
                planned,
                raft_node: None,
                raft_handover: false,
            }),
            last_failover_at: None,
            group_id: None,
            fence_pending: Vec::new(),
            pause: None,
            past_pauses: Vec::new(),
            raft_lineage: None,
            automatic_switchovers: Vec::new(),
        }
    }

    fn handover(completed: Step) -> Topology {
        let mut t = failover(true, completed);
        if let Some(f) = t.failover.as_mut() {
            f.raft_handover = true;
        }
        t
    }

    #[test]
    fn the_target_follows_the_serving_primary_and_every_failover_cuts_until_promoted() {
        let rows = [
            (
                "steady state: the primary",
                Topology::initial("dc1"),
                Some("dc1"),
            ),
            (
                "unplanned, decided: cut (the old primary is fenced)",
                failover(false, Step::Decided),
                None,
            ),
            (
                "unplanned, promoted: the new primary",
                failover(false, Step::Promoted),
                Some("dc2"),
            ),
            ("planned, decided: cut", failover(true, Step::Decided), None),
            ("planned, fenced: cut", failover(true, Step::Fenced), None),
            (
                "planned, promoted: the new primary",
                failover(true, Step::Promoted),
                Some("dc2"),
            ),
            (
                "planned, switched: the new primary",
                failover(true, Step::Switched),
                Some("dc2"),
            ),
            (
                "a handover, fenced: still the old primary (it forwards to the raft's leader)",
                handover(Step::Fenced),
                Some("dc1"),
            ),
            (
                "a handover, promoted: the new primary",
                handover(Step::Promoted),
                Some("dc2"),
            ),
        ];
        for (name, t, want) in rows {
            assert_eq!(target_cluster(&t), want, "{name}");
        }
    }

    #[test]
    fn the_target_address_is_host_and_port_of_the_first_api_address() {
        let t = target_of(&cluster("dc1", "http://127.0.0.1:8200")).unwrap();
        assert_eq!(
            (t.cluster.as_str(), t.addr.as_str()),
            ("dc1", "127.0.0.1:8200")
        );
        let t = target_of(&cluster("dc1", "https://localhost")).unwrap();
        assert_eq!(t.addr, "localhost:443");
    }

    async fn named_server(name: &'static str) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    async fn greeting(addr: std::net::SocketAddr) -> Option<String> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut buf = vec![0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The local backend, whose topology reads fail while `unreadable`.
    #[derive(Debug)]
    struct Flaky {
        inner: LocalCoordination,
        unreadable: std::sync::atomic::AtomicBool,
        hanging: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Coordination for Flaky {
        async fn try_acquire_or_renew(&self) -> crate::coordination::Result<bool> {
            self.inner.try_acquire_or_renew().await
        }
        fn is_leader(&self) -> bool {
            self.inner.is_leader()
        }
        async fn release(&self) -> crate::coordination::Result<()> {
            self.inner.release().await
        }
        async fn lease(&self) -> crate::coordination::Result<crate::coordination::LeaseInfo> {
            self.inner.lease().await
        }
        async fn read_topology(
            &self,
        ) -> crate::coordination::Result<Option<crate::model::topology::Versioned<Topology>>>
        {
            if self.unreadable.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::coordination::CoordinationError::Unavailable(
                    "unreadable (test)".into(),
                ));
            }
            if self.hanging.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            self.inner.read_topology().await
        }
        async fn write_topology(
            &self,
            topology: &Topology,
            expected: Option<&str>,
        ) -> crate::coordination::Result<crate::model::topology::Versioned<Topology>> {
            self.inner.write_topology(topology, expected).await
        }
    }

    #[tokio::test]
    async fn every_replica_forwards_to_the_topologys_primary_while_its_reading_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let a = named_server("dc1").await;
        let b = named_server("dc2").await;
        let clusters = vec![
            cluster("dc1", &format!("http://{a}")),
            cluster("dc2", &format!("http://{b}")),
        ];
        let coordination = Arc::new(Flaky {
            inner: LocalCoordination::new(dir.path().join("c.json"), "a", Duration::from_secs(30)),
            unreadable: std::sync::atomic::AtomicBool::new(false),
            hanging: std::sync::atomic::AtomicBool::new(false),
        });
        assert!(coordination.try_acquire_or_renew().await.unwrap());
        let v = coordination
            .write_topology(&Topology::initial("dc1"), None)
            .await
            .unwrap();
        // Pick a free fixed port for the forwarder.
        let listen = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let m = ForwarderMetrics::new(&prometheus::Registry::new()).unwrap();
        let f = LocalForwarder::new(listen, vec!["dc1".into(), "dc2".into()], m);
        let (stop_tx, stop_rx) = watch::channel(false);
        let refusal = crate::group::Refusal::default();
        let task = tokio::spawn(supervise(
            f.clone(),
            coordination.clone(),
            clusters,
            Duration::from_millis(20),
            refusal.clone(),
            stop_rx,
        ));
        let wait_for = |want: Option<&'static str>| {
            let f = f.clone();
            async move {
                for _ in 0..200 {
                    let got = if f.is_running() {
                        greeting(listen).await
                    } else {
                        None
                    };
                    if got.as_deref() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("forwarder never answered {want:?}");
            }
        };
        wait_for(Some("dc1")).await;
        // The topology moves on (a failover finished by another leader): the forwarder follows.
        let mut t = Topology::initial("dc2");
        t.term = 2;
        coordination
            .write_topology(&t, Some(&v.version))
            .await
            .unwrap();
        wait_for(Some("dc2")).await;
        // Refusing (another group's stamp): no forwarder at all, although this replica leads;
        // it opens again once the refusal ends.
        refusal.set(Some("another group".into()));
        wait_for(None).await;
        assert!(!f.is_running(), "a refusing leader opens no forwarder");
        refusal.set(None);
        wait_for(Some("dc2")).await;
        // Leadership lost: a follower keeps forwarding to the topology's primary (clients
        // never wait for an election)...
        coordination.release().await.unwrap();
        assert!(!coordination.is_leader());
        wait_for(Some("dc2")).await;
        // ...while it can read the topology: a follower without a fresh reading forwards
        // nothing (the leader may have cut traffic since).
        coordination
            .unreadable
            .store(true, std::sync::atomic::Ordering::SeqCst);
        wait_for(None).await;
        assert!(f.is_running(), "cut, still listening");
        coordination
            .unreadable
            .store(false, std::sync::atomic::Ordering::SeqCst);
        wait_for(Some("dc2")).await;
        // A reading that hangs is no reading either.
        coordination
            .hanging
            .store(true, std::sync::atomic::Ordering::SeqCst);
        wait_for(None).await;
        coordination
            .hanging
            .store(false, std::sync::atomic::Ordering::SeqCst);
        wait_for(Some("dc2")).await;
        let _ = stop_tx.send(true);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_topology_read_from_before_an_explicit_cut_does_not_undo_it() {
        let m = ForwarderMetrics::new(&prometheus::Registry::new()).unwrap();
        let f = LocalForwarder::new("127.0.0.1:0".parse().unwrap(), vec!["dc1".into()], m);
        let dc1 = cluster("dc1", "http://127.0.0.1:8200");
        f.switch(&dc1, 1).await.unwrap();
        let before = f.explicit_changes();
        let detail = f.cut(2).await.unwrap();
        assert!(detail.contains("cut client traffic"), "{detail}");
        assert_ne!(
            f.explicit_changes(),
            before,
            "the refresh loop sees the cut and discards its reading"
        );
        assert_eq!(f.target(), None);
        let again = f.cut(2).await.unwrap();
        assert!(again.contains("already cut client traffic"), "{again}");
    }

    #[tokio::test]
    async fn a_switch_the_topology_loop_made_first_is_journaled_at_the_loops_time() {
        let m = ForwarderMetrics::new(&prometheus::Registry::new()).unwrap();
        let f = LocalForwarder::new(
            "127.0.0.1:0".parse().unwrap(),
            vec!["dc1".into(), "dc2".into()],
            m,
        );
        let (dc1, dc2) = (
            cluster("dc1", "http://127.0.0.1:8200"),
            cluster("dc2", "http://127.0.0.1:8202"),
        );
        assert_eq!(f.switched_at(&dc2), None, "never sent to dc2");
        // The topology loop moves the forwarder as soon as dc2 is promoted.
        f.set_target(target_of(&dc2));
        let moved = f.switched_at(&dc2).expect("the time the loop moved it");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let detail = f.switch(&dc2, 2).await.unwrap();
        assert!(detail.contains("since"), "{detail}");
        assert_eq!(
            f.switched_at(&dc2),
            Some(moved),
            "the step does not move the time"
        );
        assert_eq!(f.switched_at(&dc1), None, "it does not send to dc1");
        // An explicit switch elsewhere is its own effect, at its own time.
        f.switch(&dc1, 3).await.unwrap();
        assert!(f.switched_at(&dc1).is_some_and(|t| t > moved));
        assert_eq!(f.switched_at(&dc2), None);
    }
}
