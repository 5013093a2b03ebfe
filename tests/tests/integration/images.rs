//! The container images, built without a daemon by `scripts/build-images.sh` (which calls
//! `scripts/oci_image.py`) from this build's debug binaries, the same code as a release build:
//! - both archives are valid OCI image layouts: every blob's sha256 and size match its name and
//!   descriptor, index -> manifest -> config and layer resolve with the right media types, the
//!   layer's uncompressed digest is the config's diff_id, and the docker-archive `manifest.json`
//!   (what `docker load` before 25.0 reads) names the same config, layer and reference;
//! - a second build of the same binaries is byte for byte the same archive (same digest);
//! - the root file system holds the very binary of this build, owned by root and runnable by
//!   anyone, nothing setuid, and `/etc/passwd` names the uid:gid the chart runs the image as,
//!   which is also the config's `User`;
//! - unpacked, it runs `<binary> --help` in a chroot as that uid:gid, and then its service
//!   (the config's Entrypoint and Cmd) on a read-only bind mount of the root, with only the
//!   chart's mounts writable and the image's Env only, until `/healthz` answers;
//!   `/proc/<pid>/{status,root,environ}` show the process ran as that uid:gid, in the image's
//!   root, with that environment, and the coordinator's store file is owned by that uid:gid.
//!
//! The chart's uid:gid are read from the chart (coordinator: its Deployment; agent: the sidecar
//! examples), so an image and a chart that disagree fail here. Needs root (chroot, a mount
//! namespace), `unshare`, `python3` and `ldd`; the machine `scripts/setup.sh` prepares has them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flate2::read::GzDecoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vault_dr_coordinator::config::{
    ClusterRole, ConfigFile, CoordinationBackend, CoordinationFile, StoreFile,
};
use vault_dr_lab::coordinator_file::coordinator_toml;
use vault_dr_lab::process::ChildGuard;
use vault_dr_lab::tools::built_binary;
use vault_dr_lab::wait::wait_for;

/// Where the images are named in these tests (not the default: the option is exercised).
const REPOSITORY: &str = "registry.example.test/dr";
/// Their tag.
const TAG: &str = "it-1";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The CA bundle's path in the image (where rustls-native-certs' probe and SSL_CERT_FILE look).
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// Shell run in a new mount namespace (arguments: ROOT USER ENV [ro|rw SOURCE TARGET]... --
/// COMMAND...): bind the image root onto itself read-only (the chart's
/// `readOnlyRootFilesystem: true`), bind each triple over it (the pod's volumes), then exec
/// chroot as USER with nothing but the image's ENV (KEY=VALUE lines). Every step execs, so the
/// pid stays the service's.
const CONTAINER_SH: &str = r#"set -e
root="$1"; user="$2"; envs="$3"; shift 3
chroot="$(command -v chroot)"
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
while [ "$1" != -- ]; do
  mount --bind "$2" "$root$3"
  [ "$1" = ro ] && mount -o remount,bind,ro "$root$3"
  shift 3
done
shift
IFS='
'
exec env -i $envs "$chroot" --userspec="$user" "$root" "$@""#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One image of the build: what it runs and as whom the chart runs it.
#[derive(Debug, Clone, Copy)]
struct Spec {
    /// Image name (last path element of the repository).
    name: &'static str,
    /// The binary it runs.
    binary: &'static str,
    /// Its port (the chart's `coordinator.port`, `agent.port`).
    port: &'static str,
    /// Chart files whose container securityContext says the uid:gid (all must agree).
    chart_files: &'static [&'static str],
}

const COORDINATOR: Spec = Spec {
    name: "vault-dr-coordinator",
    binary: "vault-dr",
    port: "8300/tcp",
    chart_files: &["templates/coordinator-deployment.yaml"],
};
const AGENT: Spec = Spec {
    name: "vault-dr-agent",
    binary: "vault-dr-agent",
    port: "8210/tcp",
    chart_files: &[
        "examples/openbao-agent-values.yaml",
        "examples/vault-agent-values.yaml",
    ],
};

impl Spec {
    fn reference(&self) -> String {
        format!("{REPOSITORY}/{}:{TAG}", self.name)
    }

    /// The uid:gid the chart runs this image as (`runAsUser` / `runAsGroup`).
    fn chart_user(&self) -> (u32, u32) {
        let mut found = BTreeSet::new();
        for file in self.chart_files {
            let text = std::fs::read_to_string(root().join("helm/vault-dr").join(file)).unwrap();
            let field = |key: &str| -> u32 {
                let values: Vec<u32> = text
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix(key))
                    .map(|v| v.trim().parse().unwrap())
                    .collect();
                assert_eq!(values.len(), 1, "{file}: expected one {key} line");
                values[0]
            };
            found.insert((field("runAsUser:"), field("runAsGroup:")));
        }
        assert_eq!(found.len(), 1, "{:?} disagree: {found:?}", self.chart_files);
        found.pop_first().unwrap()
    }
}

/// The debug binaries of this build (`cargo build --workspace --bins`).
fn bin_dir() -> PathBuf {
    let agent = built_binary("vault-dr-agent").unwrap();
    let dir = agent.parent().unwrap().to_path_buf();
    assert!(
        dir.join("vault-dr").is_file(),
        "{} has no vault-dr",
        dir.display()
    );
    dir
}

/// Runs the script into `out`; the manifest digest it printed, by image name.
fn build(out: &Path) -> BTreeMap<String, String> {
    let output = Command::new("bash")
        .arg(root().join("scripts/build-images.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .args(["--repository", REPOSITORY, "--tag", TAG, "--out"])
        .arg(out)
        // The default creation time: a build does not depend on the caller's environment.
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "build-images.sh failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut digests = BTreeMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [file, reference, digest] = fields[..] else {
            panic!("unexpected output line {line:?}")
        };
        let spec = [COORDINATOR, AGENT]
            .into_iter()
            .find(|s| s.reference() == reference)
            .unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert_eq!(Path::new(file), out.join(format!("{}.oci.tar", spec.name)));
        digests.insert(spec.name.to_owned(), digest.to_owned());
    }
    assert_eq!(digests.len(), 2, "{stdout}");
    digests
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())
}

/// An image archive's files by path.
fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(name, bytes);
        }
    }
    files
}

/// The OCI architecture of this machine (the binaries' too).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no OCI architecture known for {other}"),
    }
}

/// Checks the archive as a whole; returns the image config and the gzip layer.
fn validate(spec: Spec, files: &BTreeMap<String, Vec<u8>>, digest: &str) -> (Value, Vec<u8>) {
    let json = |name: &str| -> Value {
        let bytes = files.get(name).unwrap_or_else(|| panic!("no {name}"));
        serde_json::from_slice(bytes).unwrap()
    };
    // A descriptor resolves: its blob is there with its size (the digest is checked below).
    let resolve = |d: &Value, media: &str| -> Vec<u8> {
        assert_eq!(d["mediaType"], media, "{d}");
        let blob = files
            .get(&blob_path(d["digest"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("no blob for {d}"));
        assert_eq!(d["size"].as_u64(), Some(blob.len() as u64), "{d}");
        blob.clone()
    };
    for (name, bytes) in files.iter().filter(|(n, _)| n.starts_with("blobs/")) {
        let hex = name.strip_prefix("blobs/sha256/").unwrap();
        assert_eq!(sha256(bytes), format!("sha256:{hex}"), "{name}");
    }
    assert_eq!(json("oci-layout"), json!({"imageLayoutVersion": "1.0.0"}));

    let index = json("index.json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    let entry = &entries[0];
    assert_eq!(entry["digest"], digest, "the digest the script printed");
    let reference = spec.reference();
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        reference
    );
    assert_eq!(entry["annotations"]["io.containerd.image.name"], reference);
    assert_eq!(
        entry["platform"],
        json!({"architecture": oci_arch(), "os": "linux"})
    );

    let manifest: Value = serde_json::from_slice(&resolve(entry, MEDIA_MANIFEST)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
    let config_bytes = resolve(&manifest["config"], MEDIA_CONFIG);
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = resolve(&layers[0], MEDIA_LAYER);

    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], oci_arch());
    assert_eq!(config["rootfs"]["type"], "layers");
    let mut raw = Vec::new();
    GzDecoder::new(&layer[..]).read_to_end(&mut raw).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], json!([sha256(&raw)]));

    // No blob is left over: exactly the manifest, the config and the layer.
    let blobs: BTreeSet<&String> = files.keys().filter(|n| n.starts_with("blobs/")).collect();
    let wanted =
        [entry, &manifest["config"], &layers[0]].map(|d| blob_path(d["digest"].as_str().unwrap()));
    assert_eq!(blobs, wanted.iter().collect());

    let docker = json("manifest.json");
    assert_eq!(
        docker,
        json!([{
            "Config": blob_path(manifest["config"]["digest"].as_str().unwrap()),
            "RepoTags": [reference],
            "Layers": [blob_path(layers[0]["digest"].as_str().unwrap())],
        }])
    );
    (config, layer)
}

/// Checks the image config and the root file system's entries against the chart's user.
fn check_contents(spec: Spec, config: &Value, layer: &[u8]) {
    let (uid, gid) = spec.chart_user();
    let c = &config["config"];
    assert_eq!(c["User"], format!("{uid}:{gid}"), "{c}");
    let entrypoint = format!("/usr/local/bin/{}", spec.binary);
    assert_eq!(c["Entrypoint"], json!([entrypoint]));
    assert!(c["ExposedPorts"].get(spec.port).is_some(), "{c}");
    assert!(
        c["Env"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("SSL_CERT_FILE=/{CA_BUNDLE}"))),
        "{c}"
    );
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], spec.name);

    let mut tar = tar::Archive::new(GzDecoder::new(layer));
    let mut files = BTreeMap::new();
    let mut tmp_mode = None;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let h = entry.header();
        let mode = h.mode().unwrap();
        // Owned by root, writable by root only: the runtime user can change nothing but /tmp.
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{path}");
        assert_eq!(mode & 0o6000, 0, "{path} is setuid or setgid");
        assert_eq!(h.mtime().unwrap(), 0, "{path}");
        if path.trim_end_matches('/') == "tmp" {
            tmp_mode = Some(mode);
            continue;
        }
        assert_eq!(mode & 0o022, 0, "{path} is writable by others: {mode:o}");
        if h.entry_type().is_dir() {
            assert_eq!(mode & 0o005, 0o005, "{path}: {mode:o}");
        } else {
            assert!(
                h.entry_type().is_file(),
                "{path} is neither a file nor a directory"
            );
            assert_eq!(
                mode & 0o004,
                0o004,
                "{path} is not readable by others: {mode:o}"
            );
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(path, (mode, bytes));
        }
    }
    assert_eq!(tmp_mode, Some(0o1777), "/tmp");

    let (mode, image_binary) = &files[entrypoint.trim_start_matches('/')];
    assert_eq!(
        mode & 0o001,
        0o001,
        "the binary is not executable by others"
    );
    let built = std::fs::read(bin_dir().join(spec.binary)).unwrap();
    assert!(
        image_binary == &built,
        "the image holds another {}",
        spec.binary
    );
    // The loader the binary names, and libc, are in the image (the chroot runs prove the rest).
    assert!(
        files.keys().any(|p| p.contains("/libc.so")),
        "no libc: {:?}",
        files.keys()
    );

    let passwd = String::from_utf8(files["etc/passwd"].1.clone()).unwrap();
    assert!(
        passwd.lines().any(|l| l
            .split(':')
            .skip(2)
            .take(2)
            .eq([uid.to_string(), gid.to_string()])),
        "/etc/passwd names no {uid}:{gid}: {passwd}"
    );
    let group = String::from_utf8(files["etc/group"].1.clone()).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&gid.to_string())),
        "/etc/group names no {gid}: {group}"
    );
    let bundle = String::from_utf8_lossy(&files[CA_BUNDLE].1).into_owned();
    assert!(
        bundle.matches("-----BEGIN CERTIFICATE-----").count() >= 10,
        "the CA bundle holds almost no certificate"
    );
}

#[test]
fn both_archives_are_valid_oci_images_and_rebuild_to_the_same_digest() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let digests = build(first.path());
    assert_eq!(
        build(second.path()),
        digests,
        "a rebuild gave other digests"
    );
    for spec in [COORDINATOR, AGENT] {
        let file = format!("{}.oci.tar", spec.name);
        let bytes = std::fs::read(first.path().join(&file)).unwrap();
        assert!(
            bytes == std::fs::read(second.path().join(&file)).unwrap(),
            "{file}: a rebuild is not byte for byte the same"
        );
        let files = read_archive(&first.path().join(&file));
        let (config, layer) = validate(spec, &files, &digests[spec.name]);
        check_contents(spec, &config, &layer);
    }
}

/// The image's root file system unpacked into `dir`/root, as a runtime would (modes, owners).
fn unpack(spec: Spec, archive: &Path, dir: &Path) -> PathBuf {
    let files = read_archive(archive);
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest: Value = serde_json::from_slice(
        &files[&blob_path(index["manifests"][0]["digest"].as_str().unwrap())],
    )
    .unwrap();
    let layer = &files[&blob_path(manifest["layers"][0]["digest"].as_str().unwrap())];
    let rootfs = dir.join("root");
    std::fs::create_dir_all(&rootfs).unwrap();
    // As /proc/<pid>/root will show it.
    let rootfs = rootfs.canonicalize().unwrap();
    let mut tar = tar::Archive::new(GzDecoder::new(&layer[..]));
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.unpack(&rootfs).unwrap();
    assert!(
        rootfs
            .join(format!("usr/local/bin/{}", spec.binary))
            .is_file()
    );
    rootfs
}

/// A directory for a pod volume at `path`, owned by `owner` when the container writes to it.
fn volume(path: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    path.to_path_buf()
}

/// `[(ro|rw, source, target in the image)]`: the pod's volumes.
type Mounts = Vec<(&'static str, PathBuf, &'static str)>;

/// Runs `start` as the image's service: the root read-only, `mounts` over it, chroot as the
/// image's user with the image's environment only; waits for `/healthz` on `port`, checks that
/// the process's uid and gid are the chart's and its root the image's.
async fn serve(spec: Spec, rootfs: &Path, mounts: Mounts, start: Start, port: u16, log: &Path) {
    let (uid, gid) = spec.chart_user();
    let mut argv: Vec<OsString> = [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        CONTAINER_SH,
    ]
    .map(OsString::from)
    .to_vec();
    argv.push("container.sh".into());
    argv.push(rootfs.into());
    argv.push(start.user.into());
    let env = start.env.join("\n");
    argv.push(env.clone().into());
    for (mode, source, target) in &mounts {
        // The runtime creates mount points in the image's root (they are not in the image).
        std::fs::create_dir_all(rootfs.join(target.trim_start_matches('/'))).unwrap();
        argv.extend([OsString::from(mode), source.into(), target.into()]);
    }
    argv.push("--".into());
    argv.extend(start.argv.into_iter().map(OsString::from));
    let mut child = ChildGuard::spawn(spec.name, Path::new("unshare"), &argv, log).unwrap();
    let client = vault_dr_common::http::client_builder().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_for(
        &format!("{} to answer {url}", spec.name),
        Duration::from_secs(30),
        || {
            let running = child.is_running();
            let get = client.get(&url).send();
            async move {
                assert!(
                    running,
                    "{} exited: {}",
                    spec.name,
                    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default())
                );
                match get.await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    let pid = child.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    // Real, effective, saved and file-system ids: no way back to root.
    assert_eq!(ids("Uid:"), [uid; 4], "{status}");
    assert_eq!(ids("Gid:"), [gid; 4], "{status}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(
        String::from_utf8(environ).unwrap().trim_end_matches('\0'),
        env.replace('\n', "\0"),
        "the service's environment is not the image's"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        rootfs,
        "the service's root is not the image's"
    );
    child.terminate(Duration::from_secs(10)).await;
}

/// What a runtime starts without overrides.
#[derive(Debug)]
struct Start {
    /// The config's User.
    user: String,
    /// Its Env.
    env: Vec<String>,
    /// Its Entrypoint followed by its Cmd (and what a test adds).
    argv: Vec<String>,
}

/// The [`Start`] of an image, from the config the docker manifest names.
fn command(archive: &Path) -> Start {
    let files = read_archive(archive);
    let docker: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config: Value =
        serde_json::from_slice(&files[docker[0]["Config"].as_str().unwrap()]).unwrap();
    let strings = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter_map(|k| config["config"][k].as_array())
            .flatten()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    Start {
        user: config["config"]["User"].as_str().unwrap().to_owned(),
        env: strings(&["Env"]),
        argv: strings(&["Entrypoint", "Cmd"]),
    }
}

/// `<binary> --help` in a chroot of the image as the chart's user: its usage text.
fn help(spec: Spec, rootfs: &Path) {
    let (uid, gid) = spec.chart_user();
    let out = Command::new("chroot")
        .arg(format!("--userspec={uid}:{gid}"))
        .arg(rootfs)
        .arg(format!("/usr/local/bin/{}", spec.binary))
        .arg("--help")
        // Nothing of this process's environment but a PATH for finding chroot.
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} --help in the image: {}{stdout}{}",
        spec.binary,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Usage: {}", spec.binary)),
        "{stdout}"
    );
}

#[tokio::test]
async fn each_image_runs_help_and_its_service_as_the_user_the_chart_runs_it_as() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images");
    build(&out);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // The coordinator as the chart runs it: the ConfigMap at /etc/vault-dr, the token Secret,
    // emptyDirs at /var/lib/vault-dr and /tmp; its Cmd is the chart's `args`.
    let c = dir.path().join("coordinator");
    let rootfs = unpack(COORDINATOR, &out.join("vault-dr-coordinator.oci.tar"), &c);
    help(COORDINATOR, &rootfs);
    let user = COORDINATOR.chart_user();
    let port = vault_dr_lab::ports::reserve(loopback).unwrap();
    let closed = vault_dr_lab::ports::closed_loopback().unwrap();
    let cluster = |name: &str, role| {
        vault_dr_lab::coordinator_file::one_node_cluster(
            name,
            role,
            &format!("http://127.0.0.1:{closed}"),
        )
    };
    let file = ConfigFile {
        listen: Some(format!("127.0.0.1:{port}")),
        id: Some("image-test".into()),
        token_file: Some("/var/run/secrets/vault-dr/token/token".into()),
        store: StoreFile {
            path: Some("/var/lib/vault-dr/store.sqlite".into()),
            ..StoreFile::default()
        },
        coordination: CoordinationFile {
            backend: CoordinationBackend::Local,
            path: Some("/var/lib/vault-dr/coordination.json".into()),
            ..CoordinationFile::default()
        },
        clusters: vec![
            cluster("dc1", ClusterRole::Primary),
            cluster("dc2", ClusterRole::Secondary),
        ],
        ..ConfigFile::default()
    };
    let config_dir = volume(&c.join("config"), None);
    std::fs::write(
        config_dir.join("config.toml"),
        coordinator_toml(&file).unwrap(),
    )
    .unwrap();
    let token_dir = volume(&c.join("token"), None);
    std::fs::write(token_dir.join("token"), "image-test-token").unwrap();
    let data = volume(&c.join("data"), Some(user));
    let tmp = volume(&c.join("tmp"), Some(user));
    let mut start = command(&out.join("vault-dr-coordinator.oci.tar"));
    // The chart's `args`, so that the image also runs as it stands.
    assert_eq!(
        start.argv[1..],
        ["coordinator", "--config", "/etc/vault-dr/config.toml"]
    );
    start.env.push("VAULT_DR_LOG_JSON=true".into());
    let mounts = vec![
        ("ro", config_dir, "/etc/vault-dr"),
        ("ro", token_dir, "/var/run/secrets/vault-dr/token"),
        ("rw", data.clone(), "/var/lib/vault-dr"),
        ("rw", tmp, "/tmp"),
    ];
    let log = c.join("log");
    serve(COORDINATOR, &rootfs, mounts, start, port, &log).await;
    // It wrote its store as that user, into the one volume meant for it.
    let store = std::fs::metadata(data.join("store.sqlite")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&store),
            std::os::unix::fs::MetadataExt::gid(&store)
        ),
        user
    );

    // The agent as the sidecar examples run it: no volume it needs to write for a probe.
    let a = dir.path().join("agent");
    let rootfs = unpack(AGENT, &out.join("vault-dr-agent.oci.tar"), &a);
    help(AGENT, &rootfs);
    let port = vault_dr_lab::ports::reserve(loopback).unwrap();
    let mut start = command(&out.join("vault-dr-agent.oci.tar"));
    assert_eq!(start.argv, ["/usr/local/bin/vault-dr-agent"]);
    start.argv.extend([
        "--cluster=dc1".to_owned(),
        "--node=dc1-0".into(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--vault-addr=http://127.0.0.1:{closed}"),
    ]);
    serve(AGENT, &rootfs, Vec::new(), start, port, &a.join("log")).await;
}
