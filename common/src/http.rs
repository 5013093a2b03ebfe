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

/// The most characters of an answer's body an error message quotes.
pub const MAX_QUOTED_BODY: usize = 300;

/// Who most likely wrote an error answer, from the shape of its JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answerer {
    /// `{"error": "..."}`: a vault-dr coordinator or agent.
    VaultDr,
    /// `{"errors": [...]}`: a Vault/OpenBao server.
    Vault,
    /// `{"kind": "Status", "message": ...}`: a Kubernetes apiserver.
    Kubernetes,
    /// Anything else, including an empty body.
    Unknown,
}

/// What an error answer's body says, for an error message, and who probably wrote it: the
/// `error` of a vault-dr answer, the `errors` of a Vault one (`; `-joined), the `message` of a
/// Kubernetes `Status`, else the text itself; [`quoted`] (trimmed, control characters escaped,
/// at most [`MAX_QUOTED_BODY`] characters). `None` for a body with nothing in it.
pub fn answer_reason(body: &[u8]) -> (Option<String>, Answerer) {
    let text = String::from_utf8_lossy(body);
    let (reason, answerer) = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.get("error").is_some_and(serde_json::Value::is_string) => (
            v["error"].as_str().unwrap_or_default().to_owned(),
            Answerer::VaultDr,
        ),
        Ok(v) if v.get("errors").is_some_and(serde_json::Value::is_array) => {
            let all: Vec<String> = v["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect();
            (all.join("; "), Answerer::Vault)
        }
        Ok(v) if v.get("kind").and_then(serde_json::Value::as_str) == Some("Status") => (
            v["message"].as_str().unwrap_or_default().to_owned(),
            Answerer::Kubernetes,
        ),
        _ => (text.into_owned(), Answerer::Unknown),
    };
    let reason = quoted(&reason);
    ((!reason.is_empty()).then_some(reason), answerer)
}

/// `text` fit for one log line or error message: trimmed, control characters (a remote
/// answer's colour codes, line breaks) escaped, cut at [`MAX_QUOTED_BODY`] characters.
pub fn quoted(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.trim().chars().enumerate() {
        if i == MAX_QUOTED_BODY {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
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
    fn the_reason_of_an_answer_comes_from_its_body_whoever_wrote_it() {
        assert_eq!(
            answer_reason(br#"{"error":"missing or wrong bearer token"}"#),
            (
                Some("missing or wrong bearer token".into()),
                Answerer::VaultDr
            )
        );
        assert_eq!(
            answer_reason(br#"{"errors":["permission denied"]}"#),
            (Some("permission denied".into()), Answerer::Vault)
        );
        assert_eq!(answer_reason(br#"{"errors":[]}"#), (None, Answerer::Vault));
        let k = br#"{"kind":"Status","message":"leases is forbidden","code":403}"#;
        assert_eq!(
            answer_reason(k),
            (Some("leases is forbidden".into()), Answerer::Kubernetes)
        );
        assert_eq!(answer_reason(b""), (None, Answerer::Unknown));
        assert_eq!(answer_reason(b" \n"), (None, Answerer::Unknown));
        assert_eq!(
            answer_reason(b"<html>Forbidden</html>\n"),
            (Some("<html>Forbidden</html>".into()), Answerer::Unknown)
        );
    }

    #[test]
    fn a_quoted_body_has_no_escape_bytes_and_a_bounded_length() {
        let q = quoted("\u{1b}[31mred\u{1b}[0m\nnext");
        assert!(!q.contains('\u{1b}') && !q.contains('\n'), "{q}");
        assert!(q.contains("red") && q.contains("next"), "{q}");
        let long = quoted(&"x".repeat(1000));
        assert_eq!(long.chars().count(), MAX_QUOTED_BODY + 1);
    }

    #[test]
    fn a_client_builds_without_any_other_set_up() {
        let client = client_builder().build();
        assert!(client.is_ok(), "{:?}", client.err());
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
