//! The one way vault-dr builds HTTP clients.
//!
//! The workspace links rustls with exactly one crypto provider, ring (the MongoDB driver needs it
//! anyway; aws-lc-rs would add a C/CMake build to every first build). reqwest is built without a
//! provider of its own, so it takes the process default, and a client built before one is installed
//! would panic. [`client_builder`] installs ring first, so no caller can get that order wrong;
//! `clippy.toml` forbids `reqwest::Client::new` and `reqwest::Client::builder` everywhere else.

/// Installs ring as the process-wide rustls crypto provider. Idempotent and cheap after the first
/// call; another provider installed earlier by the embedding program is kept.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only means a provider is already installed, which is what this function wants.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A `reqwest::ClientBuilder` with the crypto provider in place. Callers add their own timeouts,
/// redirect policy and proxy settings.
#[allow(clippy::disallowed_methods)] // the one permitted call site
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// `e` and its sources, `: `-separated (reqwest's own message hides the cause, such as the
/// refused connection or the DNS failure under "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// The header a vault-dr agent's write gate sets on the answers it gives itself: `closed`
/// (it refused a client request: the node is not the primary's serving node) or `error` (the
/// node behind it did not answer, so the gate answered 502 for it).
pub const GATE_HEADER: &str = "x-vault-dr-gate";

/// Whether `resp` is a write gate's refusal (`503`, `closed`): its node does not serve
/// clients, because its cluster is not the primary (or the node has not carried out the term).
pub fn gate_says_closed(resp: &reqwest::Response) -> bool {
    gate_answered(resp, 503, b"closed")
}

/// Whether `resp` is a write gate's 502 for a node that did not answer: the node is
/// unreachable, whatever the gate in front of it says.
pub fn gate_says_unreachable(resp: &reqwest::Response) -> bool {
    gate_answered(resp, 502, b"error")
}

/// Whether the gate itself answered `resp` with `status` and [`GATE_HEADER`] `value`.
fn gate_answered(resp: &reqwest::Response, status: u16, value: &[u8]) -> bool {
    resp.status().as_u16() == status
        && resp
            .headers()
            .get(GATE_HEADER)
            .is_some_and(|v| v.as_bytes() == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_builds_without_any_other_set_up() {
        let client = client_builder().build();
        assert!(client.is_ok(), "{:?}", client.err());
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
