//! Reading an OpenBao raft snapshot file: a gzip tar holding `meta.json` (raft `Index`, `Term`,
//! configuration), `state.bin`, `SHA256SUMS` and `SHA256SUMS.sealed`. [`inspect`] parses the
//! whole archive, checks every member listed in `SHA256SUMS` against its digest and returns the
//! raft index and term from `meta.json`, so a truncated or altered file is refused before any
//! restore, and the index is read from the data rather than trusted from a header.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;

/// What the archive says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveMeta {
    /// Raft index of the snapshot (`meta.json` `Index`).
    pub index: u64,
    /// Raft term of the snapshot (`meta.json` `Term`), not the DR term.
    pub raft_term: u64,
}

/// Why an archive is not a usable snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a readable gzip tar (truncated, not gzip, not tar).
    #[error("not a complete gzip tar: {0}")]
    Unreadable(#[source] std::io::Error),
    /// A member the snapshot must have is missing.
    #[error("the archive has no {0}")]
    Missing(&'static str),
    /// `meta.json` is not what OpenBao writes.
    #[error("meta.json is not a raft snapshot header: {0}")]
    Meta(#[source] serde_json::Error),
    /// A member's SHA-256 differs from `SHA256SUMS`, or a listed member is absent.
    #[error("member {0} does not match SHA256SUMS")]
    Digest(String),
}

#[derive(Deserialize)]
struct RaftMeta {
    #[serde(rename = "Index")]
    index: u64,
    #[serde(rename = "Term")]
    term: u64,
}

/// Hex of a SHA-256 digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the snapshot archive from `reader` (the whole file) and checks it; see the module doc.
pub fn inspect(reader: impl Read) -> Result<ArchiveMeta, ArchiveError> {
    let gz = flate2::read::GzDecoder::new(reader);
    let mut tar = tar::Archive::new(gz);
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut meta: Option<Vec<u8>> = None;
    let mut sums: Option<String> = None;
    for entry in tar.entries().map_err(ArchiveError::Unreadable)? {
        let mut entry = entry.map_err(ArchiveError::Unreadable)?;
        let name = entry
            .path()
            .map_err(ArchiveError::Unreadable)?
            .to_string_lossy()
            .into_owned();
        let mut hasher = Sha256::new();
        let mut keep = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buf).map_err(ArchiveError::Unreadable)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if name == "meta.json" || name == "SHA256SUMS" {
                keep.extend_from_slice(&buf[..n]);
            }
        }
        match name.as_str() {
            "meta.json" => meta = Some(keep),
            "SHA256SUMS" => sums = Some(String::from_utf8_lossy(&keep).into_owned()),
            _ => {}
        }
        digests.insert(name, hex(&hasher.finalize()));
    }
    // Reading to the end of the tar is not enough: the gzip trailer (CRC, length) of a
    // truncated file is only checked once the decoder reaches it.
    let mut rest = Vec::new();
    tar.into_inner()
        .read_to_end(&mut rest)
        .map_err(ArchiveError::Unreadable)?;

    let meta = meta.ok_or(ArchiveError::Missing("meta.json"))?;
    let sums = sums.ok_or(ArchiveError::Missing("SHA256SUMS"))?;
    let mut listed = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(want), Some(file)) = (parts.next(), parts.next()) else {
            return Err(ArchiveError::Digest(line.to_owned()));
        };
        let file = file.trim_start_matches('*');
        if digests.get(file).map(String::as_str) != Some(want) {
            return Err(ArchiveError::Digest(file.to_owned()));
        }
        listed += 1;
    }
    if listed == 0 || !digests.contains_key("state.bin") {
        return Err(ArchiveError::Missing("state.bin in SHA256SUMS"));
    }
    let m: RaftMeta = serde_json::from_slice(&meta).map_err(ArchiveError::Meta)?;
    Ok(ArchiveMeta {
        index: m.index,
        raft_term: m.term,
    })
}

#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    //! Builds archives shaped like OpenBao's, for tests.
    use super::*;

    /// A gzip tar with `meta.json` (index, raft term), `state.bin` = `state` and a correct
    /// `SHA256SUMS`.
    pub fn archive(index: u64, raft_term: u64, state: &[u8]) -> Vec<u8> {
        let meta = format!(
            r#"{{"Version":1,"ID":"2-{index}-1","Index":{index},"Term":{raft_term},"Size":{}}}"#,
            state.len()
        );
        let sum = |b: &[u8]| hex(&Sha256::digest(b));
        let sums = format!(
            "{}  meta.json\n{}  state.bin\n",
            sum(meta.as_bytes()),
            sum(state)
        );
        build(&[
            ("meta.json", meta.as_bytes()),
            ("state.bin", state),
            ("SHA256SUMS", sums.as_bytes()),
        ])
    }

    /// A gzip tar of the given members.
    pub fn build(members: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            // Writing into a Vec cannot fail.
            let _ = b.append_data(&mut h, name, *data);
        }
        b.into_inner()
            .and_then(flate2::write::GzEncoder::finish)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn a_well_formed_archive_gives_its_raft_index_and_term() {
        let a = archive(1045, 3, b"state");
        assert_eq!(
            inspect(&a[..]).unwrap(),
            ArchiveMeta {
                index: 1045,
                raft_term: 3
            }
        );
    }

    #[test]
    fn a_truncated_archive_is_refused() {
        let a = archive(7, 1, &[42u8; 100_000]);
        for cut in [a.len() - 4, a.len() / 2, 10] {
            assert!(
                matches!(inspect(&a[..cut]), Err(ArchiveError::Unreadable(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_altered_member_fails_its_digest() {
        let meta = br#"{"Index":5,"Term":1}"#;
        let sums = format!(
            "{}  meta.json\n{}  state.bin\n",
            hex(&Sha256::digest(meta)),
            hex(&Sha256::digest(b"original"))
        );
        let a = build(&[
            ("meta.json", meta),
            ("state.bin", b"tampered"),
            ("SHA256SUMS", sums.as_bytes()),
        ]);
        assert!(matches!(inspect(&a[..]), Err(ArchiveError::Digest(f)) if f == "state.bin"));
    }

    #[test]
    fn missing_members_and_garbage_are_refused() {
        let a = build(&[("state.bin", b"x")]);
        assert!(matches!(
            inspect(&a[..]),
            Err(ArchiveError::Missing("meta.json"))
        ));
        assert!(matches!(
            inspect(&b"not gzip at all"[..]),
            Err(ArchiveError::Unreadable(_))
        ));
    }
}
