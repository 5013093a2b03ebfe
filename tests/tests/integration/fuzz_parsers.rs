//! Bounded fuzzing (proptest, about a thousand cases each, seconds per target) of the parsers that
//! take outside input (issue 8, scenario 7):
//! - the report parser: random bytes and mutated reports into `vault_dr_common::Report` never
//!   panic, and whatever parses survives a round trip unchanged;
//! - the coordinator's intake (`POST /v1/reports` through `router(service)`): mutated reports get
//!   200 or a 4xx, never a 5xx, and a refused report is not kept;
//! - the coordinator's `Config::parse`: random text and mutated good files never panic, and every
//!   error names a field;
//! - the agent's flags and environment (`vault_dr_agent::Config::parse`): random flags, values and
//!   variables never panic, every configuration error names a `--flag` and its `VAULT_DR_AGENT_*`
//!   variable, and no error or parsed configuration shows the token files' contents;
//! - the agent's desired-state intake: replayed, stale and foreign desired states never move it
//!   backwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use vault_dr_common::{NodeState, Report};
use vault_dr_coordinator::api::{Service, router};
use vault_dr_coordinator::config::{Config, ENV_TOKEN_FILE};
use vault_dr_coordinator::coordination::Coordination;
use vault_dr_coordinator::coordination::local::LocalCoordination;
use vault_dr_coordinator::metrics::Metrics;
use vault_dr_coordinator::model::topology::Topology;
use vault_dr_coordinator::state::State;
use vault_dr_coordinator::store::Store;
use vault_dr_coordinator::store::embedded::EmbeddedStore;

/// Cases per property: enough to find the shallow bugs, small enough for CI (each target runs
/// in a few seconds on the 2-core CI machine).
const CASES: u32 = 1024;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// The shared healthy report (`test_util::report`) of standby dc2-0, numbered `seq`.
fn report(seq: u64) -> Report {
    let at = chrono::DateTime::from_timestamp(1_700_000_100, 0).unwrap();
    let mut r = vault_dr_coordinator::model::test_util::report("dc2", "dc2-0", at);
    r.seq = seq;
    r.agent_started_at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    r.vault.state = NodeState::Standby;
    r
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,24}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("2026-11-24T18:00:00Z")),
        Just(serde_json::Value::from("active")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers of every value (objects and leaves) in `v`.
fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{k}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// One change to a JSON document.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, serde_json::Value),
    Remove(usize),
    AddUnknownKey(usize, String, serde_json::Value),
}

fn mutation(paths: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0..paths, arbitrary_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (0..paths).prop_map(Mutation::Remove),
        1 => (0..paths, "[a-z_]{1,10}", arbitrary_json())
            .prop_map(|(i, k, v)| Mutation::AddUnknownKey(i, k, v)),
    ]
}

fn apply(doc: &serde_json::Value, paths: &[String], m: &Mutation) -> serde_json::Value {
    let mut doc = doc.clone();
    let parent_and_key = |p: &str| {
        let (parent, key) = p.rsplit_once('/').unwrap();
        (parent.to_owned(), key.to_owned())
    };
    match m {
        Mutation::Replace(i, v) => {
            *doc.pointer_mut(&paths[*i]).unwrap() = v.clone();
        }
        Mutation::Remove(i) => {
            let (parent, key) = parent_and_key(&paths[*i]);
            match doc.pointer_mut(&parent).unwrap() {
                serde_json::Value::Object(o) => {
                    o.remove(&key);
                }
                serde_json::Value::Array(a) => {
                    a.remove(key.parse::<usize>().unwrap());
                }
                _ => unreachable!("a parent is a container"),
            }
        }
        Mutation::AddUnknownKey(i, k, v) => {
            let (parent, _) = parent_and_key(&paths[*i]);
            if let Some(serde_json::Value::Object(o)) = doc.pointer_mut(&parent) {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    doc
}

/// Equal as JSON, numbers within a relative 1e-12: serde_json's default float parser is not
/// correctly rounded for every subnormal (3.6687006510399704e-39 comes back as
/// 3.668700651039971e-39), which is no concern for milliseconds and ratios.
fn same(a: &Report, b: &Report) -> bool {
    fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (a, b) {
            (V::Number(x), V::Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                    x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
                }
                _ => x == y,
            },
            (V::Array(x), V::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
            }
            (V::Object(x), V::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
            }
            _ => a == b,
        }
    }
    close(
        &serde_json::to_value(a).unwrap(),
        &serde_json::to_value(b).unwrap(),
    )
}

#[test]
fn random_bytes_never_panic_the_report_parser_and_what_parses_round_trips() {
    runner(CASES * 4)
        .run(&prop::collection::vec(any::<u8>(), 0..2048), |bytes| {
            if let Ok(r) = serde_json::from_slice::<Report>(&bytes) {
                let again: Report = serde_json::from_slice(&serde_json::to_vec(&r).unwrap())
                    .map_err(|e| TestCaseError::fail(format!("no round trip: {e}")))?;
                prop_assert!(same(&again, &r), "no round trip:\n{again:?}\n{r:?}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_reports_never_panic_the_report_parser_and_what_parses_round_trips() {
    let template = serde_json::to_value(report(7)).unwrap();
    let mut paths = Vec::new();
    pointers(&template, String::new(), &mut paths);
    let accepted = Cell::new(0u32);
    runner(CASES * 4)
        .run(&mutation(paths.len()), |m| {
            let doc = apply(&template, &paths, &m);
            if let Ok(r) = serde_json::from_value::<Report>(doc) {
                accepted.set(accepted.get() + 1);
                let again: Report = serde_json::from_slice(&serde_json::to_vec(&r).unwrap())
                    .map_err(|e| TestCaseError::fail(format!("no round trip: {e}")))?;
                prop_assert!(same(&again, &r), "no round trip:\n{again:?}\n{r:?}");
            }
            Ok(())
        })
        .unwrap();
    // The mutations must exercise both sides: some reports still parse (unknown keys, a
    // changed number), most do not.
    assert!(
        accepted.get() > 0,
        "no mutated report parsed: the fuzzer is not reaching the type"
    );
}

struct Intake {
    _dir: tempfile::TempDir,
    service: Service,
}

const TOKEN: &str = "fuzz-intake-token";

async fn intake() -> Intake {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let env = BTreeMap::from([(
        ENV_TOKEN_FILE.to_owned(),
        dir.path().join("token").display().to_string(),
    )]);
    let config = Config::parse(
        "[[clusters]]\nname = \"dc1\"\nrole = \"primary\"\napi_addrs = [\"http://127.0.0.1:9\"]\n\
         nodes = [\"dc1-0\"]\n[[clusters]]\nname = \"dc2\"\napi_addrs = [\"http://127.0.0.1:9\"]\n\
         nodes = [\"dc2-0\"]\n",
        dir.path(),
        &env,
    )
    .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.sqlite"), Duration::from_secs(3600)).unwrap(),
    );
    store.init().await.unwrap();
    let coordination: Arc<dyn Coordination> = Arc::new(LocalCoordination::new(
        dir.path().join("c.json"),
        "fuzz",
        Duration::from_secs(600),
    ));
    assert!(coordination.try_acquire_or_renew().await.unwrap());
    let state = Arc::new(State::default());
    state.set_topology(Topology::initial("dc1"));
    let service = Service {
        config: Arc::new(config),
        state,
        store,
        coordination,
        metrics,
        registry,
        executor: None,
    };
    Intake { _dir: dir, service }
}

#[test]
fn mutated_reports_get_200_or_a_4xx_from_the_intake_and_refused_ones_are_not_kept() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(intake());
    let template = serde_json::to_value(report(1)).unwrap();
    let mut paths = Vec::new();
    pointers(&template, String::new(), &mut paths);
    let seq = Cell::new(0u64);
    let (ok, refused) = (Cell::new(0u32), Cell::new(0u32));
    runner(CASES)
        .run(&mutation(paths.len()), |m| {
            // A fresh, higher seq each time, so that a report refused as a replay was refused
            // because of the mutation.
            seq.set(seq.get() + 1);
            let mut doc = template.clone();
            doc["seq"] = seq.get().into();
            let doc = apply(&doc, &paths, &m);
            let kept_before = f.service.state.latest_reports();
            let status = rt.block_on(async {
                let resp = router(f.service.clone())
                    .oneshot(
                        Request::post("/v1/reports")
                            .header("authorization", format!("Bearer {TOKEN}"))
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&doc).unwrap()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                prop_assert!(
                    !String::from_utf8_lossy(&body).contains(TOKEN),
                    "the answer carries the token"
                );
                Ok(status)
            })?;
            if status == StatusCode::OK {
                ok.set(ok.get() + 1);
            } else {
                refused.set(refused.get() + 1);
                prop_assert!(status.is_client_error(), "{m:?} -> {status}");
                prop_assert_eq!(
                    f.service.state.latest_reports(),
                    kept_before,
                    "a refused report changed the view"
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(
        ok.get() > 0 && refused.get() > 0,
        "ok {}, refused {}",
        ok.get(),
        refused.get()
    );
}

/// A good coordinator configuration, one `key = value` per line so that a mutation can replace
/// one value (the header lines stay as they are).
const GOOD_CONFIG: &str = r#"listen = "127.0.0.1:8300"
id = "fuzz"
token_file = "token"
[store]
path = "store.sqlite"
buffer = 100
[coordination]
path = "coordination.json"
lease_duration = "5s"
renew_period = "1s"
[policy]
probe_interval = "500ms"
probe_timeout = "400ms"
confirm = 2
report_ttl = "2s"
cooldown = "60s"
[[clusters]]
name = "dc1"
role = "primary"
api_addrs = ["http://127.0.0.1:8200"]
nodes = ["dc1-0"]
priority = 1
[[clusters]]
name = "dc2"
api_addrs = ["http://127.0.0.1:8210", "https://dc2.example:8200"]
nodes = ["dc2-0", "dc2-1"]
excluded = false
"#;

fn toml_literal() -> impl Strategy<Value = String> {
    let string = "[ -~&&[^\"\\\\]]{0,20}".prop_map(|s| format!("\"{s}\""));
    let leaf = prop_oneof![
        string,
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("\"0s\"".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"http://\"".to_owned()),
        Just("\"not a url\"".to_owned()),
        Just("\"99999999999999999999h\"".to_owned()),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            // Unique keys: a duplicate key is a syntax error, not a changed value.
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3).prop_map(|kv| {
                let fields: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

fn parse_config(
    text: &str,
    dir: &std::path::Path,
) -> Result<Config, vault_dr_coordinator::config::ConfigError> {
    let env = BTreeMap::from([(
        ENV_TOKEN_FILE.to_owned(),
        dir.join("token").display().to_string(),
    )]);
    Config::parse(text, dir, &env)
}

#[test]
fn random_text_never_panics_the_config_parser_and_errors_name_a_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let text = prop_oneof![
        ".{0,200}",
        "[\\[\\]a-z_=\" .0-9\n{},]{0,300}",
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    runner(CASES * 2)
        .run(&text, |text| {
            if let Err(e) = parse_config(&text, dir.path()) {
                prop_assert!(!e.field.trim().is_empty(), "no field in {e}");
                prop_assert!(!e.message.trim().is_empty(), "no message in {e:?}");
            }
            Ok(())
        })
        .unwrap();
}

/// Where an error about line `key = …` of section `section` may point: the key itself, or a
/// field that is checked against it.
fn field_matches(field: &str, section: &str, key: &str) -> bool {
    let related: &[&str] = match key {
        // renew_period is checked against lease_duration.
        "lease_duration" => &["renew_period"],
        // the probe timeout is checked against the interval, the TTL against both.
        "probe_interval" => &["probe_timeout", "report_ttl"],
        "probe_timeout" => &["probe_interval", "report_ttl"],
        // exactly one primary, and it may not be excluded.
        "role" | "excluded" => &["clusters[].role", "clusters[].excluded"],
        _ => &[],
    };
    field.contains(key)
        || related.iter().any(|r| field.contains(r))
        || (!section.is_empty() && field == section.trim_matches(['[', ']']))
}

#[test]
fn mutated_config_files_never_panic_and_errors_name_the_changed_field() {
    mutated_config_files(false);
}

/// Found by this suite: serde's type and value errors from toml ("invalid type: map, expected
/// a string", "invalid value: integer `-5`, expected i32") carry no key in their message, so
/// the coordinator named the field `file` (or the value). Fixed: `ConfigFile::parse` takes the
/// field's path from `serde_path_to_error`.
#[test]
fn mutated_config_files_name_the_changed_field_also_for_type_errors() {
    mutated_config_files(true);
}

/// Replaces one value of a good file with a random TOML value (or drops the line): never a
/// panic, every error names a field, and that field is the changed one; `strict` also for
/// serde's type and value errors.
fn mutated_config_files(strict: bool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    assert!(
        parse_config(GOOD_CONFIG, dir.path()).is_ok(),
        "the base config is valid"
    );
    let lines: Vec<&str> = GOOD_CONFIG.lines().collect();
    let values: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(" = "))
        .collect();
    let unnamed: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let type_errors: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let errors = Cell::new(0u32);
    runner(CASES * 2)
        .run(
            &(0..values.len(), toml_literal(), any::<bool>()),
            |(pick, literal, delete)| {
                let line = values[pick];
                let key = lines[line].split(" = ").next().unwrap().trim().to_owned();
                let section = lines[..line]
                    .iter()
                    .rev()
                    .find(|l| l.starts_with('['))
                    .map(|l| l.to_string())
                    .unwrap_or_default();
                let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                changed[line] = if delete {
                    String::new()
                } else {
                    format!("{key} = {literal}")
                };
                if let Err(e) = parse_config(&changed.join("\n"), dir.path()) {
                    errors.set(errors.get() + 1);
                    prop_assert!(!e.field.trim().is_empty(), "no field in {e}");
                    // Known gap (reported): serde's type and value errors from toml ("invalid
                    // type: map, expected a string") name the file (or the value), not the
                    // key; counted and shown, not failed.
                    if !strict
                        && ["invalid type", "invalid value", "invalid length"]
                            .iter()
                            .any(|p| e.message.starts_with(p))
                    {
                        type_errors.borrow_mut().push(format!(
                            "{section} {} -> field {:?}",
                            changed[line], e.field
                        ));
                    } else if !field_matches(&e.field, &section, &key) {
                        unnamed.borrow_mut().push(format!(
                            "{section} {} -> field {:?}: {}",
                            changed[line], e.field, e.message
                        ));
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(
        errors.get() > 0,
        "no mutation was refused: the fuzzer is not reaching validation"
    );
    let type_errors = type_errors.into_inner();
    println!(
        "{} of {} errors are toml type errors whose field is the file, e.g.:\n{}",
        type_errors.len(),
        errors.get(),
        type_errors
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        unnamed.borrow().is_empty(),
        "{} of {} errors do not name the changed field, e.g.:\n{}",
        unnamed.borrow().len(),
        errors.get(),
        unnamed
            .borrow()
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The agent's flags, as `vault-dr-agent --help` lists them (the replication ones included).
const AGENT_FLAGS: [&str; 21] = [
    "--vault-addr",
    "--vault-ca-cert",
    "--vault-skip-verify",
    "--vault-token-file",
    "--cluster",
    "--node",
    "--coordinator-url",
    "--coordinator-token-file",
    "--coordinator-ca-cert",
    "--interval",
    "--listen",
    "--vault-pid-file",
    "--vault-process-name",
    "--log-json",
    "--log-format",
    "--replication",
    "--snapshot-dir",
    "--snapshot-interval",
    "--snapshot-keep",
    "--restore",
    "--quarantine-dir",
];

/// Their environment variables, in the same order.
const AGENT_ENV: [&str; 21] = [
    "VAULT_DR_AGENT_VAULT_ADDR",
    "VAULT_DR_AGENT_VAULT_CA_CERT",
    "VAULT_DR_AGENT_VAULT_SKIP_VERIFY",
    "VAULT_DR_AGENT_VAULT_TOKEN_FILE",
    "VAULT_DR_AGENT_CLUSTER",
    "VAULT_DR_AGENT_NODE",
    "VAULT_DR_AGENT_COORDINATOR_URL",
    "VAULT_DR_AGENT_COORDINATOR_TOKEN_FILE",
    "VAULT_DR_AGENT_COORDINATOR_CA_CERT",
    "VAULT_DR_AGENT_INTERVAL",
    "VAULT_DR_AGENT_LISTEN",
    "VAULT_DR_AGENT_VAULT_PID_FILE",
    "VAULT_DR_AGENT_VAULT_PROCESS_NAME",
    "VAULT_DR_AGENT_LOG_JSON",
    "VAULT_DR_AGENT_LOG_FORMAT",
    "VAULT_DR_AGENT_REPLICATION",
    "VAULT_DR_AGENT_SNAPSHOT_DIR",
    "VAULT_DR_AGENT_SNAPSHOT_INTERVAL",
    "VAULT_DR_AGENT_SNAPSHOT_KEEP",
    "VAULT_DR_AGENT_RESTORE",
    "VAULT_DR_AGENT_QUARANTINE_DIR",
];

/// Values for flags and variables. Paths always point into the test's temporary directory, so a
/// parser that created what it is given could not touch anything else.
fn agent_value(tmp: String) -> impl Strategy<Value = String> {
    let in_tmp = move |name: &'static str| format!("{tmp}/{name}");
    prop_oneof![
        "[ -~]{0,24}",
        Just(String::new()),
        Just("   ".to_owned()),
        Just("http://127.0.0.1:8200".to_owned()),
        Just("http://127.0.0.1:1,https://[::1]:2".to_owned()),
        Just("ftp://x".to_owned()),
        Just("127.0.0.1:0".to_owned()),
        Just("500ms".to_owned()),
        Just("0s".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("snapshot".to_owned()),
        Just("continuous".to_owned()),
        Just("true".to_owned()),
        Just("dc1".to_owned()),
        Just("n\u{202e}1".to_owned()),
        Just(in_tmp("token")),
        Just(in_tmp("empty-token")),
        Just(in_tmp("missing")),
        Just(in_tmp("garbage.pem")),
        Just(in_tmp("dir")),
    ]
}

const AGENT_SECRET: &str = "agent-token-file-secret-4b1d";

#[test]
fn random_agent_flags_and_environment_never_panic_and_errors_name_the_flag_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().display().to_string();
    std::fs::write(dir.path().join("token"), format!("{AGENT_SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("empty-token"), "\n").unwrap();
    std::fs::write(
        dir.path().join("garbage.pem"),
        format!("-----BEGIN CERTIFICATE-----\n{AGENT_SECRET}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("dir")).unwrap();
    let arg = prop_oneof![
        3 => (0..AGENT_FLAGS.len(), agent_value(tmp.clone()))
            .prop_map(|(i, v)| vec![AGENT_FLAGS[i].to_owned(), v]),
        1 => (0..AGENT_FLAGS.len()).prop_map(|i| vec![AGENT_FLAGS[i].to_owned()]),
        1 => (0..AGENT_FLAGS.len(), agent_value(tmp.clone()))
            .prop_map(|(i, v)| vec![format!("{}={v}", AGENT_FLAGS[i])]),
        1 => "[ -~]{0,16}".prop_map(|s| vec![s]),
    ];
    let args = prop::collection::vec(arg, 0..8);
    let env = prop::collection::vec((0..AGENT_ENV.len(), agent_value(tmp.clone())), 0..8);
    let (ok, errors) = (Cell::new(0u32), Cell::new(0u32));
    runner(CASES * 2)
        .run(&(args, env), |(args, env)| {
            let mut argv = vec!["vault-dr-agent".to_owned()];
            argv.extend(args.into_iter().flatten());
            let env: HashMap<String, String> = env
                .into_iter()
                .map(|(i, v)| (AGENT_ENV[i].to_owned(), v))
                .collect();
            match vault_dr_agent::Config::parse(argv.clone(), &env) {
                Ok(c) => {
                    ok.set(ok.get() + 1);
                    prop_assert!(
                        !format!("{c:?}").contains(AGENT_SECRET),
                        "the parsed config shows a token: {argv:?}"
                    );
                }
                Err(e) => {
                    errors.set(errors.get() + 1);
                    let text = e.to_string();
                    prop_assert!(
                        !text.contains(AGENT_SECRET) && !format!("{e:?}").contains(AGENT_SECRET),
                        "the error shows a token file's contents: {argv:?} {env:?}"
                    );
                    if e.exit_code() == 0 {
                        prop_assert!(
                            argv[1..].iter().any(|a| a.starts_with('-') && (a.contains('h') || a.contains('V'))),
                            "only --help and --version exit 0: {argv:?}"
                        );
                    }
                    if let vault_dr_agent::Error::Config { flag, env: var, message } = &e {
                        prop_assert!(flag.starts_with("--"), "flag {flag:?} in {text}");
                        prop_assert!(var.starts_with("VAULT_DR_AGENT_"), "env {var:?} in {text}");
                        prop_assert!(!message.trim().is_empty(), "no message: {text}");
                        prop_assert_eq!(e.exit_code(), vault_dr_common::exit::USAGE);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(errors.get() > 0, "ok {}, errors {}", ok.get(), errors.get());
}

#[test]
fn a_valid_agent_command_line_parses() {
    // The positive control of the fuzz target above: a full, valid command line.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, AGENT_SECRET).unwrap();
    let argv = [
        "vault-dr-agent".to_owned(),
        "--cluster".into(),
        "dc1".into(),
        "--node".into(),
        "dc1-0".into(),
        "--coordinator-url".into(),
        "http://127.0.0.1:8300".into(),
        "--coordinator-token-file".into(),
        token.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let c = vault_dr_agent::Config::parse(argv, &HashMap::new()).unwrap();
    assert_eq!((c.cluster.as_str(), c.node.as_str()), ("dc1", "dc1-0"));
    assert!(!format!("{c:?}").contains(AGENT_SECRET));
}

/// One desired state as a coordinator (current, stale, or of another group member) may send.
fn desired_state() -> impl Strategy<Value = vault_dr_common::DesiredState> {
    (
        prop_oneof![Just("dc1"), Just("dc2"), Just("dc9")],
        0u64..8,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(cluster, term, primary, in_progress)| vault_dr_common::DesiredState {
                term,
                cluster: cluster.into(),
                role: if primary {
                    vault_dr_common::Role::Primary
                } else {
                    vault_dr_common::Role::Secondary
                },
                primary: if primary {
                    cluster.into()
                } else {
                    "dc1".into()
                },
                primary_api_addr: None,
                failover_in_progress: in_progress,
                promotion: Default::default(),
                final_snapshot_from: None,
                primary_suspect: false,
                raft_formed_term: None,
                raft_recover_node: None,
                raft_formed_by: None,
                raft_handover: false,
            },
        )
}

#[test]
fn replayed_and_foreign_desired_states_never_move_the_agent_backwards() {
    // The agent's side of replays: any sequence of desired states (stale terms, other
    // clusters, repeats) leaves the agent with the newest state of its own cluster, and its
    // seen term never falls.
    runner(CASES)
        .run(&prop::collection::vec(desired_state(), 0..24), |offers| {
            let shared = vault_dr_agent::state::Shared::new("dc2", "dc2-0");
            let mut model: Option<vault_dr_common::DesiredState> = None;
            let mut seen = 0u64;
            for d in offers {
                let before = shared.seen_term();
                let _ = shared.offer_desired(d.clone());
                prop_assert!(shared.seen_term() >= before, "the seen term fell");
                if d.cluster == "dc2" && d.term >= seen {
                    seen = d.term;
                    model = Some(d);
                }
                prop_assert_eq!(shared.seen_term(), seen);
                prop_assert_eq!(shared.desired(), model.clone());
            }
            Ok(())
        })
        .unwrap();
}
