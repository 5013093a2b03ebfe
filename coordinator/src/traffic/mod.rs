//! Client traffic: the local TCP forwarder ([`forwarder`]) as the `TrafficSwitch` of
//! `traffic.backend = "local"`, and the loop that keeps it listening only while this
//! coordinator leads and pointed at the topology's primary.
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
use std::time::Duration;
use tokio::sync::watch;

/// How often the loop checks leadership and re-reads the topology.
pub const REFRESH_PERIOD: Duration = Duration::from_millis(250);

/// The cluster client traffic belongs to under `topology`: the serving primary, except during
/// a planned switchover until the target is promoted (traffic is cut then, so that no write
/// reaches the old primary after its final snapshot).
pub fn target_cluster(topology: &Topology) -> Option<&str> {
    match &topology.failover {
        Some(f) if f.planned && f.completed < Step::Promoted => None,
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
            None => format!(
                "forwarder on {listen} already sends new connections to {target} (term {term})"
            ),
        })
    }

    async fn cut(&self, term: u64) -> ActionResult {
        self.mark_explicit();
        let listen = self.listen();
        Ok(match self.set_target(None) {
            Some(closed) => format!(
                "forwarder on {listen} cut client traffic for term {term}: new connections are closed at once; closed {closed} open connection(s)"
            ),
            None => format!(
                "forwarder on {listen} had already cut client traffic for term {term} (the topology showed the switchover first)"
            ),
        })
    }
}

/// Keeps `forwarder` listening exactly while `coordination` says we lead and `refusal` says
/// nothing (see `crate::group`), pointed at the topology's target, until `stop` turns true
/// (then closes it).
pub async fn supervise(
    forwarder: Arc<LocalForwarder>,
    coordination: Arc<dyn Coordination>,
    clusters: Vec<ClusterConfig>,
    period: Duration,
    refusal: crate::group::Refusal,
    mut stop: watch::Receiver<bool>,
) {
    let acting = || coordination.is_leader() && !refusal.is_refusing();
    loop {
        if *stop.borrow() {
            break;
        }
        if acting() {
            let before = forwarder.explicit_changes();
            match coordination.read_topology().await {
                Ok(Some(t)) if forwarder.explicit_changes() == before => {
                    let target = target_cluster(&t.value)
                        .and_then(|name| clusters.iter().find(|c| c.name == name))
                        .and_then(target_of);
                    forwarder.set_target(target);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "forwarder: cannot read the topology ({e}); keeping the current target"
                ),
            }
            // Leadership may have ended while reading.
            if acting()
                && !forwarder.is_running()
                && let Err(e) = forwarder.start()
            {
                tracing::warn!(listen = %forwarder.listen(), "forwarder cannot listen: {e}");
            }
        }
        if !acting() && forwarder.is_running() {
            if refusal.is_refusing() {
                tracing::warn!(listen = %forwarder.listen(), "forwarder closed: this coordinator refuses to act (see status)");
            }
            forwarder.stop().await;
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(period) => {}
        }
    }
    forwarder.stop().await;
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
            }),
            last_failover_at: None,
            group_id: None,
        }
    }

    #[test]
    fn the_target_follows_the_serving_primary_and_a_planned_switchover_cuts_until_promoted() {
        let rows = [
            (
                "steady state: the primary",
                Topology::initial("dc1"),
                Some("dc1"),
            ),
            (
                "unplanned, decided: still the old primary",
                failover(false, Step::Decided),
                Some("dc1"),
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

    #[tokio::test]
    async fn the_forwarder_listens_only_while_leading_and_follows_the_topology() {
        let dir = tempfile::tempdir().unwrap();
        let a = named_server("dc1").await;
        let b = named_server("dc2").await;
        let clusters = vec![
            cluster("dc1", &format!("http://{a}")),
            cluster("dc2", &format!("http://{b}")),
        ];
        let coordination = Arc::new(LocalCoordination::new(
            dir.path().join("c.json"),
            "a",
            Duration::from_secs(30),
        ));
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
        // Leadership lost: the listener closes.
        coordination.release().await.unwrap();
        let mut gone = false;
        for _ in 0..200 {
            if !f.is_running() && TcpStream::connect(listen).await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "nothing listens on {listen} after leadership ended");
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
}
