//! Secret hygiene after a full failover (issue 8, scenario 8): a real DR group ([`Group`]:
//! three OpenBao clusters with a shared static seal, one `vault-dr-agent` process per node, two
//! `vault-dr coordinator` processes) loses its primary's `bao` process and fails over. Then the
//! test provokes errors (wrong and misplaced tokens, malformed reports, bad CLI and agent
//! invocations, a coordinator whose MongoDB URI carries a password) and scans everything that
//! came out for every secret value in every likely encoding:
//! - secrets: each cluster's root token, the DR token, the coordinator bearer token, the MongoDB
//!   password, and the static seal key (raw bytes, hex, base64 and base64url, with and without
//!   padding);
//! - places: every file of the run directory (agent, coordinator and OpenBao logs, configs,
//!   snapshots, the coordination file, the SQLite store including its WAL) except the files whose
//!   job is to hold a secret (token files, seal key) and OpenBao's own encrypted storage; every
//!   table of the SQLite store row by row; every `/metrics` page; every `/v1/*` JSON of the
//!   coordinators and agents; every error body and captured stdout/stderr of the provoked errors.
//!
//! A leak fails the test naming the secret, its encoding and where it was found (never the value).
//! Needs `.tools/bin/bao` (run `scripts/setup.sh`) and the built binaries (`cargo build
//! --workspace`, which `scripts/test.sh` runs first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use url::Url;
use vault_dr_coordinator::config::{ConfigFile, StoreFile};
use vault_dr_coordinator::model::{FailoverRecord, FailoverStatus};
use vault_dr_tests::lab::harness::Group;
use vault_dr_tests::lab::harness::{coordinator_toml, write_coordinator_file};
use vault_dr_tests::lab::ports::{closed_loopback, reserve_loopback};
use vault_dr_tests::lab::process::ChildGuard;
use vault_dr_tests::lab::tools::built_binary;
use vault_dr_tests::lab::wait::try_wait_for;

/// One secret and the byte strings it may show up as.
struct Secret {
    name: String,
    forms: Vec<(&'static str, Vec<u8>)>,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8], url: bool, pad: bool) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let mut c = B64[((n >> (18 - 6 * i)) & 63) as usize];
            if url {
                c = match c {
                    b'+' => b'-',
                    b'/' => b'_',
                    c => c,
                };
            }
            out.push(c as char);
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

impl Secret {
    /// A token: as is, and base64/hex of its text (a header dump, a basic-auth form).
    fn token(name: impl Into<String>, value: &str) -> Self {
        let v = value.trim().as_bytes().to_vec();
        assert!(
            v.len() >= 8,
            "a test secret must be long enough to be unique"
        );
        Self {
            name: name.into(),
            forms: vec![
                ("plain", v.clone()),
                ("base64", base64(&v, false, false).into_bytes()),
                ("base64url", base64(&v, true, false).into_bytes()),
                ("hex", hex(&v).into_bytes()),
            ],
        }
    }

    /// Key bytes: raw, hex (both cases), base64 and base64url (padded or not).
    fn key(name: impl Into<String>, bytes: &[u8]) -> Self {
        Self {
            name: name.into(),
            forms: vec![
                ("raw bytes", bytes.to_vec()),
                ("hex", hex(bytes).into_bytes()),
                ("HEX", hex(bytes).to_uppercase().into_bytes()),
                ("base64", base64(bytes, false, true).into_bytes()),
                ("base64 unpadded", base64(bytes, false, false).into_bytes()),
                ("base64url", base64(bytes, true, true).into_bytes()),
                (
                    "base64url unpadded",
                    base64(bytes, true, false).into_bytes(),
                ),
            ],
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Everything scanned, with what was found.
#[derive(Default)]
struct Scan {
    places: usize,
    bytes: usize,
    leaks: Vec<String>,
}

impl Scan {
    fn check(&mut self, place: &str, data: &[u8], secrets: &[Secret]) {
        self.places += 1;
        self.bytes += data.len();
        for s in secrets {
            for (form, needle) in &s.forms {
                if contains(data, needle) {
                    self.leaks.push(format!("{} ({form}) in {place}", s.name));
                }
            }
        }
    }
}

/// Files that hold a secret by design, or OpenBao's barrier-encrypted storage.
fn exempt(path: &Path, exempt_files: &[PathBuf]) -> bool {
    if exempt_files.iter().any(|e| e == path) {
        return true;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("static-seal-") && name.ends_with(".key") {
        return true;
    }
    // `<node>/data/{raft.db,vault.db,raft/…}`: OpenBao's own storage, encrypted by its barrier.
    path.components().any(|c| c.as_os_str() == "data")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Every table of the SQLite store, row by row, as one text per table.
fn sqlite_tables(path: &Path) -> Vec<(String, Vec<u8>, usize)> {
    use rusqlite::types::ValueRef;
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let columns = stmt.column_count();
        let mut dump = Vec::new();
        let mut rows = stmt.query([]).unwrap();
        let mut count = 0;
        while let Some(row) = rows.next().unwrap() {
            count += 1;
            for i in 0..columns {
                match row.get_ref(i).unwrap() {
                    ValueRef::Null => {}
                    ValueRef::Integer(n) => dump.extend_from_slice(n.to_string().as_bytes()),
                    ValueRef::Real(f) => dump.extend_from_slice(f.to_string().as_bytes()),
                    ValueRef::Text(b) | ValueRef::Blob(b) => dump.extend_from_slice(b),
                }
                dump.push(b'\t');
            }
            dump.push(b'\n');
        }
        out.push((t, dump, count));
    }
    out
}

/// `text` without ANSI colour sequences (`ESC [ … letter`), as the logs carry them.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The agent's bound address, from its start-up log line (`listen=Some(127.0.0.1:PORT)`).
fn agent_addr(log: &Path) -> Option<Url> {
    let text = strip_ansi(&std::fs::read_to_string(log).ok()?);
    let at = text.find("listen=Some(")? + "listen=Some(".len();
    let end = text[at..].find(')')? + at;
    Url::parse(&format!("http://{}/", &text[at..end])).ok()
}

/// Text of one answer, whatever it was.
async fn fetch(req: reqwest::RequestBuilder) -> (u16, String) {
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Runs a command to the end (at most 30 s) and returns its exit code, stdout and stderr.
async fn run(program: &Path, args: &[OsString]) -> (Option<i32>, String) {
    run_for(program, args, Duration::from_secs(30)).await
}

/// [`run`] with a time limit; the command is killed when it is exceeded (or on panic).
async fn run_for(program: &Path, args: &[OsString], limit: Duration) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {args:?} did not finish in {limit:?}", program.display()))
    .unwrap();
    (
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_seal_key_appears_in_any_log_metric_store_document_or_error() {
    let mut group = Group::builder()
        .clusters(["p", "s1", "s2"])
        .coordinators(2)
        .traffic(false)
        .policy(|p| p.cooldown = Duration::from_secs(120))
        .start()
        .await
        .expect("the DR group starts (needs .tools/bin/bao: run scripts/setup.sh; and the built binaries: cargo build --workspace)");
    let http = group.http().clone();
    let run_dir = group.dir().to_path_buf();
    let cli = built_binary("vault-dr").unwrap();
    let agent_bin = built_binary("vault-dr-agent").unwrap();

    // The secrets of this run.
    let mongo_password = format!("mongo-pw-{:032x}", rand_u128());
    let mut secrets = vec![
        Secret::token("the DR token", group.dr_token().expose()),
        Secret::token(
            "the coordinator bearer token",
            group.coordinator_token().expose(),
        ),
        Secret::token("the MongoDB password", &mongo_password),
    ];
    for c in group.clusters() {
        secrets.push(Secret::token(
            format!("the root token of {}", c.name()),
            c.root_token().expose(),
        ));
    }
    let seal_key_path = group.clusters()[0].seal_key_path().to_path_buf();
    let seal_key = std::fs::read(&seal_key_path).unwrap();
    assert!(
        seal_key.len() >= 16,
        "the static seal key has {} bytes",
        seal_key.len()
    );
    secrets.push(Secret::key("the static seal key", &seal_key));

    // Some data, so that snapshots and the store have content.
    group.clusters()[0]
        .kv_put("hygiene/a", &serde_json::json!({ "v": "1" }))
        .await
        .unwrap();

    // The failover: the primary's bao process dies.
    let leader = group.leader().await.expect("a coordinator leads");
    tokio::time::sleep(Duration::from_secs(3)).await;
    group.clusters_mut()[0].nodes_mut()[0].kill();
    let killed = Instant::now();
    let done = try_wait_for(
        "a finished failover after the kill",
        Duration::from_secs(90),
        || async {
            let f: Vec<FailoverRecord> = group
                .get_json(&leader, "v1/failovers")
                .await
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let done = f.iter().find(|r| r.status == FailoverStatus::Done).cloned();
            done.ok_or_else(|| format!("{f:?}"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e} (logs in {})", run_dir.display()));
    println!(
        "failover {} done {:.1} s after the kill",
        done.id,
        killed.elapsed().as_secs_f64()
    );

    // Answers and outputs to scan, collected as (place, text).
    let mut answers: Vec<(String, String)> = Vec::new();
    let coordinator_token = group.coordinator_token().expose().to_owned();
    let dr_token = group.dr_token().expose().to_owned();
    let root_token = group.clusters()[1].root_token().expose().to_owned();
    let coordinator_urls: Vec<Url> = group.coordinators().iter().map(|c| c.url.clone()).collect();
    for base in &coordinator_urls {
        let u = |p: &str| base.join(p).unwrap();
        // Every read endpoint, with the right token (the documents) and with wrong ones.
        let reads = [
            "v1/topology".to_owned(),
            "v1/clusters".to_owned(),
            "v1/decisions/latest".to_owned(),
            "v1/failovers".to_owned(),
            format!("v1/failovers/{}", done.id),
            "v1/failovers/..%2F..%2Fetc%2Fpasswd".to_owned(),
            "metrics".to_owned(),
            "healthz".to_owned(),
            "readyz".to_owned(),
        ];
        for path in &reads {
            for (how, token) in [
                ("coordinator token", Some(coordinator_token.as_str())),
                ("no token", None),
                ("DR token as bearer", Some(dr_token.as_str())),
                ("root token as bearer", Some(root_token.as_str())),
            ] {
                let mut req = http.get(u(path));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let (status, body) = fetch(req).await;
                answers.push((format!("GET {base}{path} ({how}) -> {status}"), body));
            }
        }
        // Reports: misplaced tokens, malformed and replayed bodies.
        let report = serde_json::json!({
            "schema_version": vault_dr_common::SCHEMA_VERSION, "cluster": "s1", "node": "s1-n1",
            "seq": 0, "agent_started_at": "2020-01-01T00:00:00Z"
        });
        for (how, token, body) in [
            ("DR token", dr_token.as_str(), report.to_string()),
            (
                "token + 1 byte",
                &*format!("{coordinator_token}x"),
                report.to_string(),
            ),
            (
                "malformed",
                coordinator_token.as_str(),
                "{\"schema_version\":".to_owned(),
            ),
            (
                "incomplete report",
                coordinator_token.as_str(),
                report.to_string(),
            ),
            ("oversized", coordinator_token.as_str(), " ".repeat(70_000)),
        ] {
            let (status, body) = fetch(
                http.post(u("v1/reports"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
            answers.push((format!("POST {base}v1/reports ({how}) -> {status}"), body));
        }
    }
    // Every agent: its documents, metrics and wrong requests.
    let mut agents_seen = 0;
    for a in group.agents() {
        let Some(base) = agent_addr(&a.log_path) else {
            panic!(
                "agent {} logged no listen address in {}",
                a.node,
                a.log_path.display()
            );
        };
        agents_seen += 1;
        for path in [
            "metrics",
            "healthz",
            "readyz",
            "v1/report",
            "v1/desired",
            "v1/x",
        ] {
            let (status, body) = fetch(http.get(base.join(path).unwrap())).await;
            answers.push((format!("GET agent {} /{path} -> {status}", a.node), body));
        }
        let (status, body) = fetch(
            http.post(base.join("v1/desired").unwrap())
                .bearer_auth(&coordinator_token)
                .body("{}"),
        )
        .await;
        answers.push((
            format!("POST agent {} /v1/desired -> {status}", a.node),
            body,
        ));
    }
    assert_eq!(agents_seen, group.agents().len());

    // The operator's CLI: documents, and errors with wrong and misplaced token files.
    let wrong = run_dir.join("wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let leader_url = leader.as_str().trim_end_matches('/').to_owned();
    for (how, file) in [
        ("coordinator token", group.token_file().to_path_buf()),
        ("wrong token", wrong.clone()),
        ("DR token file", run_dir.join("dr.token")),
        ("seal key file", seal_key_path.clone()),
        ("missing file", run_dir.join("missing.token")),
    ] {
        for cmd in ["status", "explain", "history"] {
            let mut args = os(&[
                cmd,
                "--url",
                &leader_url,
                "--output",
                "json",
                "--token-file",
            ]);
            args.push(file.clone().into_os_string());
            let (code, out) = run(&cli, &args).await;
            answers.push((format!("vault-dr {cmd} ({how}) exit {code:?}"), out));
        }
    }
    // Bad agent invocations whose token files hold secrets.
    for (how, args) in [
        (
            "bad coordinator URL",
            vec![
                "--cluster",
                "s1",
                "--node",
                "x",
                "--coordinator-url",
                "not a url",
                "--coordinator-token-file",
            ],
        ),
        (
            "bad interval",
            vec![
                "--cluster",
                "s1",
                "--node",
                "x",
                "--interval",
                "soon",
                "--vault-token-file",
            ],
        ),
        (
            "seal key as CA",
            vec!["--cluster", "s1", "--node", "x", "--vault-ca-cert"],
        ),
    ] {
        let mut a = os(&args);
        a.push(match how {
            "seal key as CA" => seal_key_path.clone().into_os_string(),
            "bad interval" => run_dir.join("dr.token").into_os_string(),
            _ => group.token_file().to_path_buf().into_os_string(),
        });
        let (code, out) = run(&agent_bin, &a).await;
        assert_eq!(code, Some(64), "vault-dr-agent ({how}) exits 64: {out}");
        answers.push((format!("vault-dr-agent ({how}) exit {code:?}"), out));
    }
    // A coordinator whose MongoDB URI carries a password, pointing at a closed port: it must
    // complain about the store without showing the password, in its log and on its API.
    let closed = closed_loopback().unwrap();
    let mongo_port = reserve_loopback().unwrap();
    let mongo_config = run_dir.join("mongo-coordinator.toml");
    // The group's first coordinator file, read back as the coordinator's own type and changed.
    let original = std::fs::read_to_string(&group.coordinators()[0].config_path).unwrap();
    let mut file = ConfigFile::parse(&original).unwrap();
    file.listen = Some(format!("127.0.0.1:{mongo_port}"));
    file.id = Some("mongo-hygiene".into());
    // It must never act on the real clusters: it has no agents and never confirms.
    file.policy.confirm = Some(100_000);
    file.store = StoreFile {
        mongodb_uri: Some(format!(
            "mongodb://vaultdr:{mongo_password}@127.0.0.1:{closed}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500"
        )),
        ..StoreFile::default()
    };
    file.coordination.path = Some(run_dir.join("mongo-coordination.json"));
    let text = coordinator_toml(&file).unwrap();
    assert!(
        text.contains(&mongo_password),
        "the MongoDB URI went into the config"
    );
    write_coordinator_file(&mongo_config, &file).unwrap();
    let mongo_log = run_dir.join("mongo-coordinator.log");
    // Logged at trace level (through `env`, which execs, so the guard's pid is the process).
    let env_bin = PathBuf::from("/usr/bin/env");
    let mut mongo_args = os(&["RUST_LOG=trace"]);
    mongo_args.push(cli.clone().into_os_string());
    mongo_args.extend(os(&["coordinator", "--config"]));
    mongo_args.push(mongo_config.clone().into_os_string());
    let mongo = ChildGuard::spawn("mongo coordinator", &env_bin, &mongo_args, &mongo_log).unwrap();
    // An agent at trace level that reports (with the bearer token and the DR token in use) to
    // the leader under a node name the leader does not know: every report is refused (422).
    let trace_log = run_dir.join("trace-agent.log");
    let s2 = group.cluster("s2").unwrap();
    let mut trace_args = os(&["RUST_LOG=trace"]);
    trace_args.push(agent_bin.clone().into_os_string());
    trace_args.extend(os(&[
        "--cluster",
        "s2",
        "--node",
        "s2-trace",
        "--vault-addr",
        s2.api_addr().as_str(),
        "--coordinator-url",
        &leader_url,
        "--interval",
        "200ms",
        "--listen",
        "127.0.0.1:0",
        "--vault-token-file",
    ]));
    trace_args.push(run_dir.join("dr.token").into_os_string());
    trace_args.push("--coordinator-token-file".into());
    trace_args.push(group.token_file().to_path_buf().into_os_string());
    let trace_agent = ChildGuard::spawn("trace agent", &env_bin, &trace_args, &trace_log).unwrap();
    let mongo_base = Url::parse(&format!("http://127.0.0.1:{mongo_port}/")).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for path in [
        "readyz",
        "metrics",
        "v1/failovers",
        "v1/decisions/latest",
        "v1/clusters",
    ] {
        let (status, body) = fetch(
            http.get(mongo_base.join(path).unwrap())
                .bearer_auth(&coordinator_token),
        )
        .await;
        answers.push((format!("GET mongo coordinator /{path} -> {status}"), body));
    }
    group.adopt(mongo);
    group.adopt(trace_agent);
    let trace_text = std::fs::read_to_string(&trace_log).unwrap_or_default();
    assert!(
        trace_text.contains("TRACE") || trace_text.contains("DEBUG"),
        "the trace agent logs at trace level"
    );
    assert!(
        trace_text.contains("422"),
        "the trace agent's reports were refused as from an unknown node"
    );

    // Scan: the answers and outputs collected above.
    let mut scan = Scan::default();
    for (place, text) in &answers {
        scan.check(place, text.as_bytes(), &secrets);
    }
    // Every file of the run directory but those that hold a secret by design.
    let exempt_files = [
        group.token_file().to_path_buf(),
        run_dir.join("dr.token"),
        seal_key_path.clone(),
        mongo_config.clone(),
    ];
    let mut files = Vec::new();
    walk(&run_dir, &mut files);
    let mut logs = 0;
    let mut exempted = Vec::new();
    for f in &files {
        if exempt(f, &exempt_files) {
            exempted.push(f.strip_prefix(&run_dir).unwrap_or(f).display().to_string());
            continue;
        }
        let data = std::fs::read(f).unwrap_or_default();
        if f.extension().is_some_and(|e| e == "log") {
            logs += 1;
            assert!(
                !data.is_empty() || f == &mongo_log,
                "{} is empty",
                f.display()
            );
        }
        scan.check(&f.display().to_string(), &data, &secrets);
    }
    // Every table of the store, row by row.
    let store = run_dir.join("store.sqlite");
    let tables = sqlite_tables(&store);
    let mut rows = 0;
    for (table, dump, count) in &tables {
        rows += count;
        scan.check(
            &format!("{} table {table}", store.display()),
            dump,
            &secrets,
        );
    }

    // The scan must have looked at real material.
    let names: Vec<&str> = tables.iter().map(|(t, _, _)| t.as_str()).collect();
    for t in ["reports", "failovers"] {
        assert!(names.contains(&t), "store tables: {names:?}");
    }
    assert!(rows > 10, "the store holds only {rows} rows");
    // 3 bao logs, 3 agent logs, 2 coordinator logs, the MongoDB coordinator's.
    assert!(logs >= 9, "only {logs} log files in {}", run_dir.display());
    let coordinator_logs: String = group
        .coordinators()
        .iter()
        .map(|c| std::fs::read_to_string(&c.log_path).unwrap_or_default())
        .collect();
    assert!(
        coordinator_logs.contains(&done.id) || coordinator_logs.contains("failover"),
        "the coordinator logs tell of the failover"
    );
    assert!(
        answers
            .iter()
            .any(|(p, t)| p.contains("/metrics") && t.contains("vault_dr_coordinator_failovers")),
        "a coordinator /metrics page was scanned"
    );
    assert!(
        answers
            .iter()
            .any(|(p, t)| p.starts_with("GET agent") && t.contains("vault_dr_agent_up")),
        "an agent /metrics page was scanned"
    );
    let mongo_text = std::fs::read_to_string(&mongo_log).unwrap_or_default();
    assert!(
        !mongo_text.trim().is_empty(),
        "the MongoDB coordinator said nothing about its unreachable store"
    );
    // The scanner itself finds what it looks for (a scan that cannot find is no evidence).
    let mut control = Scan::default();
    control.check(
        "control",
        &std::fs::read(run_dir.join("dr.token")).unwrap(),
        &secrets,
    );
    control.check("control", &std::fs::read(&seal_key_path).unwrap(), &secrets);
    control.check("control", hex(&seal_key).as_bytes(), &secrets);
    assert_eq!(control.leaks.len(), 3, "{:?}", control.leaks);

    println!(
        "scanned {} places, {} bytes ({} files, {} store rows in {} tables, {} answers and outputs) for {} secrets",
        scan.places,
        scan.bytes,
        files.len(),
        rows,
        tables.len(),
        answers.len(),
        secrets.len()
    );
    println!("not scanned (hold a secret by design, or OpenBao's encrypted storage): {exempted:?}");
    assert!(
        scan.leaks.is_empty(),
        "SECRET LEAKED ({}):\n{}",
        scan.leaks.len(),
        scan.leaks.join("\n")
    );
    drop(group);
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    let mut a = s.build_hasher();
    a.write_u64(1);
    let mut b = s.build_hasher();
    b.write_u64(2);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Removes a kept run directory when dropped (also on panic).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drill_leaves_no_token_or_seal_key_in_its_output_logs_or_store() {
    let cli = built_binary("vault-dr").unwrap();
    built_binary("vault-dr-agent").unwrap();
    let (code, out) = run_for(
        &cli,
        &os(&[
            "drill",
            "--json",
            "--keep",
            "--clusters",
            "3",
            "--coordinators",
            "2",
            "--warmup",
            "2s",
        ]),
        Duration::from_secs(240),
    )
    .await;
    let json_start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON from the drill: {out}"));
    let mut stream =
        serde_json::Deserializer::from_str(&out[json_start..]).into_iter::<serde_json::Value>();
    let report = stream
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("the drill printed no JSON report: {out}"));
    let run_dir = PathBuf::from(
        report["run_dir"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_dir in {report}")),
    );
    let _remove = RemoveDir(run_dir.clone());
    assert!(
        report["promotions"].as_u64().unwrap_or(0) >= 1,
        "the drill (exit {code:?}) promoted nothing: {report}"
    );
    assert!(run_dir.is_dir(), "--keep kept {}", run_dir.display());

    let read = |name: &str| {
        std::fs::read_to_string(run_dir.join(name))
            .unwrap_or_else(|e| panic!("{name} in the kept run directory: {e}"))
    };
    let mut files = Vec::new();
    walk(&run_dir, &mut files);
    let key_path = files
        .iter()
        .find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("static-seal-") && n.ends_with(".key"))
        })
        .unwrap_or_else(|| panic!("no seal key in {}", run_dir.display()))
        .clone();
    let seal_key = std::fs::read(&key_path).unwrap();
    let secrets = vec![
        Secret::token("the DR token", &read("dr.token")),
        Secret::token("the coordinator bearer token", &read("coordinator.token")),
        Secret::key("the static seal key", &seal_key),
    ];

    let mut scan = Scan::default();
    scan.check("the drill's stdout and stderr", out.as_bytes(), &secrets);
    let exempt_files = [
        run_dir.join("dr.token"),
        run_dir.join("coordinator.token"),
        key_path.clone(),
    ];
    let mut logs = 0;
    for f in &files {
        if exempt(f, &exempt_files) {
            continue;
        }
        let data = std::fs::read(f).unwrap_or_default();
        if f.extension().is_some_and(|e| e == "log") {
            logs += 1;
        }
        scan.check(&f.display().to_string(), &data, &secrets);
    }
    let store = run_dir.join("store.sqlite");
    let mut rows = 0;
    for (table, dump, count) in sqlite_tables(&store) {
        rows += count;
        scan.check(
            &format!("{} table {table}", store.display()),
            &dump,
            &secrets,
        );
    }
    // 3 bao, 3 agents, 2 coordinators.
    assert!(logs >= 8, "only {logs} log files in {}", run_dir.display());
    assert!(rows > 0, "the drill's store is empty");
    println!(
        "drill: scanned {} places, {} bytes ({} files, {rows} store rows) for {} secrets",
        scan.places,
        scan.bytes,
        files.len(),
        secrets.len()
    );
    assert!(
        scan.leaks.is_empty(),
        "SECRET LEAKED in the drill ({}):\n{}",
        scan.leaks.len(),
        scan.leaks.join("\n")
    );
}
