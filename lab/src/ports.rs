//! The one place ports are picked for processes that must bind them themselves (`bao`, the
//! `vault-dr` coordinator and its traffic forwarder, agents, MongoDB, Prometheus), and for
//! "closed" ports a test wants nothing listening on.
//!
//! Picking a port by binding `:0` and dropping the listener races with everything else that
//! binds: the kernel may hand the same port to the next `:0` bind, in this process or another.
//! [`reserve`] narrows that: it never hands out the same port twice in one process (a test
//! binary runs its tests as threads of one process, so parallel tests no longer collide), and it
//! checks that the port binds once more before handing it over. Across processes the window
//! stays, so a start that can take another port retries with one when the child says "address
//! in use": [`start_listening`] (the coordinators of a `DrGroup`), and `LabCluster`'s own
//! retry for `bao`.
//! An in-process server needs none of this: bind the [`std::net::TcpListener`] (or tokio's)
//! once and hand the listener over.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use super::LabError;
use super::process::ChildGuard;
use super::wait::try_wait_for;

/// How many ports [`start_listening`] tries.
const START_ATTEMPTS: usize = 3;

/// Every port [`reserve`] handed out in this process.
static HANDED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How many `:0` binds [`reserve`] tries before it gives up.
const ATTEMPTS: usize = 64;

/// A port on `ip` that was free a moment ago and that this process has not handed out before.
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`) when there is room
/// there: a port the kernel hands out as the local port of outgoing connections can be taken
/// by any connection of any process between the pick and the child's bind (seen: an agent's
/// write gate refused "address in use" in CI). Otherwise, by binding `:0`.
pub fn reserve(ip: IpAddr) -> Result<u16, LabError> {
    if let Some((lo, hi)) = below_ephemeral() {
        let span = u32::from(hi - lo);
        let start = rand::random::<u32>() % span;
        let mut handed = HANDED
            .lock()
            .map_err(|_| LabError::Invalid("the port reservation lock is poisoned".into()))?;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            if handed.contains(&port) || TcpListener::bind((ip, port)).is_err() {
                continue;
            }
            handed.insert(port);
            return Ok(port);
        }
    }
    reserve_ephemeral(ip)
}

/// The ports below the ephemeral range the lab picks from: `[10000, first ephemeral)`, when
/// that holds at least 2,000 ports.
fn below_ephemeral() -> Option<(u16, u16)> {
    const LOW: u16 = 10_000;
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let first: u16 = text.split_whitespace().next()?.parse().ok()?;
    (first >= LOW + 2_000).then_some((LOW, first))
}

/// [`reserve`] by binding `:0` (a port of the ephemeral range).
fn reserve_ephemeral(ip: IpAddr) -> Result<u16, LabError> {
    // Listeners of ports already handed out stay open until the pick is done, so that the
    // kernel offers a different one on the next try.
    let mut held = Vec::new();
    for _ in 0..ATTEMPTS {
        let l = TcpListener::bind((ip, 0))
            .map_err(|e| LabError::io(format!("bind {ip}:0 to pick a free port"), e))?;
        let port = l
            .local_addr()
            .map_err(|e| LabError::io("read a picked port", e))?
            .port();
        let mut handed = HANDED
            .lock()
            .map_err(|_| LabError::Invalid("the port reservation lock is poisoned".into()))?;
        if handed.contains(&port) {
            held.push(l);
            continue;
        }
        drop(l);
        // Re-bind to check: it is free right now, on exactly this address.
        if TcpListener::bind((ip, port)).is_err() {
            continue;
        }
        handed.insert(port);
        return Ok(port);
    }
    Err(LabError::Invalid(format!(
        "no free port on {ip} after {ATTEMPTS} tries"
    )))
}

/// [`reserve`] on 127.0.0.1.
pub fn reserve_loopback() -> Result<u16, LabError> {
    reserve(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// `count` distinct ports on 127.0.0.1 from [`reserve`].
pub fn reserve_loopback_n(count: usize) -> Result<Vec<u16>, LabError> {
    (0..count).map(|_| reserve_loopback()).collect()
}

/// A loopback port nothing listens on (a dead peer for a test): a reserved port, so nothing
/// else this process starts is given it.
pub fn closed_loopback() -> Result<u16, LabError> {
    reserve_loopback()
}

/// Starts a child that binds `ip:<port>` itself: `start(port)` with `first` (a port reserved
/// earlier) or a port from [`reserve`], then waits (up to `within`) until the port accepts connections. When the child exits
/// because the port was taken in the meantime ("address in use" in its log), starts it again
/// with a new port (three tries in all). The port and the running child.
pub async fn start_listening(
    what: &str,
    ip: IpAddr,
    first: Option<u16>,
    within: Duration,
    mut start: impl FnMut(u16) -> Result<ChildGuard, LabError>,
) -> Result<(u16, ChildGuard), LabError> {
    let mut attempt = 0;
    let mut first = first;
    loop {
        attempt += 1;
        let port = match first.take() {
            Some(p) => p,
            None => reserve(ip)?,
        };
        let mut child = start(port)?;
        // Some(true): it listens; Some(false): it exited, which ends the wait at once.
        let listening = try_wait_for(&format!("{what} to listen on {ip}:{port}"), within, || {
            let running = child.is_running();
            async move {
                if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
                    return Some(true);
                }
                (!running).then_some(false)
            }
        })
        .await;
        let tail = || {
            let text = std::fs::read(child.log()).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        match listening {
            Ok(true) => return Ok((port, child)),
            Ok(false) => {
                let tail = tail();
                if attempt < START_ATTEMPTS
                    && tail.to_lowercase().contains("address already in use")
                {
                    continue;
                }
                return Err(LabError::Exited {
                    node: what.to_owned(),
                    log: child.log().to_path_buf(),
                    tail,
                });
            }
            Err(t) => {
                return Err(LabError::Timeout {
                    node: what.to_owned(),
                    what: format!("connections on {ip}:{port}"),
                    after: t.within,
                    log: child.log().to_path_buf(),
                    tail: tail(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let ports = reserve_loopback_n(200).unwrap();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[tokio::test]
    async fn a_child_that_finds_its_port_taken_is_started_again_on_another() {
        let tmp = tempfile::tempdir().unwrap();
        let mut tries = Vec::new();
        let (port, mut child) = start_listening(
            "listener",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            None,
            Duration::from_secs(10),
            |port| {
                tries.push(port);
                // The first start fails as a taken port does; the second listens.
                let script = if tries.len() == 1 {
                    "echo 'Error: Address already in use (os error 98)'; exit 1".to_owned()
                } else {
                    format!("exec python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\",{port})); s.listen(); time.sleep(30)'")
                };
                ChildGuard::spawn(
                    "listener",
                    std::path::Path::new("/bin/sh"),
                    &["-c".into(), script.into()],
                    &tmp.path().join(format!("try-{}.log", tries.len())),
                )
            },
        )
        .await
        .unwrap();
        assert_eq!(tries.len(), 2, "{tries:?}");
        assert_eq!(port, tries[1]);
        assert!(child.is_running());
    }

    #[test]
    fn a_reserved_port_binds() {
        let p = reserve_loopback().unwrap();
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
