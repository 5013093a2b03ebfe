//! The one place ports are picked for processes that must bind them themselves (`bao`, the
//! `vault-dr` coordinator and its traffic forwarder, agents, MongoDB, Prometheus), and for
//! "closed" ports a test wants nothing listening on.
//!
//! Picking a port by binding `:0` and dropping the listener races with everything else that
//! binds: the kernel may hand the same port to the next `:0` bind, in this process or another.
//! [`reserve`] narrows that: it never hands out the same port twice in one process (a test
//! binary runs its tests as threads of one process, so parallel tests no longer collide), and it
//! checks that the port binds once more before handing it over. Across processes the window
//! stays; starts that can retry with a new port do (see `LabCluster`'s "address in use" retry).
//! An in-process server needs none of this: bind the [`std::net::TcpListener`] (or tokio's)
//! once and hand the listener over.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Mutex;

use super::LabError;

/// Every port [`reserve`] handed out in this process.
static HANDED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How many `:0` binds [`reserve`] tries before it gives up.
const ATTEMPTS: usize = 64;

/// A port on `ip` that was free a moment ago and that this process has not handed out before.
pub fn reserve(ip: IpAddr) -> Result<u16, LabError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let ports = reserve_loopback_n(200).unwrap();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn a_reserved_port_binds() {
        let p = reserve_loopback().unwrap();
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
