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
