//! What an operator reads, from the real binaries: log files without terminal escape bytes
//! (`--log-format json` lines parse as JSON), errors that name what failed, where, and the
//! reason the other side gave, and a revoked RBAC rule logged once rather than at every retry,
//! while `vault_dr_coordinator_kubernetes_api_errors_total` counts every failure.
//!
//! - `vault-dr status` pointed at an OpenBao server (403) and at a name that does not resolve;
//! - agents refused by a real coordinator with a wrong token (401) and for a cluster it does
//!   not know (422), beside a DR group on real OpenBao whose logs are all files;
//! - a coordinator whose Role loses pods and services (the leader label, the client Service)
//!   and then leases, on the fake apiserver or, unchanged, on the cluster named by
//!   `VAULT_DR_TEST_KUBECONFIG` (there it runs as a ServiceAccount of its own whose Role the
//!   test rewrites).
//!
//! Needs `.tools/bin/bao` (`scripts/setup.sh`) and the built binaries
//! (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use url::Url;
use vault_dr_coordinator::config::{CoordinationFile, TrafficBackend, TrafficFile};
use vault_dr_lab::harness::Group;
use vault_dr_lab::openbao::LabCluster;
use vault_dr_lab::ports::closed_loopback;
use vault_dr_lab::process::ChildGuard;
use vault_dr_lab::tools::built_binary;
use vault_dr_lab::wait::try_wait_for;
use vault_dr_tests::coordinators::{Backend, HaGroups, probe_policy, sample};
use vault_dr_tests::fake_apiserver::{client_service, replica_pod, test_client};

/// A terminal type that asks for colour: output that is not a terminal must have none anyway.
const COLOUR_TERM: (&str, &str) = ("TERM", "xterm-256color");

/// Runs `vault-dr ARGS…` with stdout and stderr piped: its exit code and both outputs.
async fn vault_dr(args: &[&str]) -> (i32, String, Vec<u8>) {
    let out = tokio::process::Command::new(built_binary("vault-dr").unwrap())
        .args(args)
        .env(COLOUR_TERM.0, COLOUR_TERM.1)
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.stderr,
    )
}

fn no_escape_bytes(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.contains(&0x1b),
        "escape bytes in {what}:\n{}",
        String::from_utf8_lossy(bytes)
    );
}

/// `vault-dr status --url URL` with a throw-away token file: its exit code and its stderr.
async fn status_at(url: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let (code, _, stderr) = vault_dr(&[
        "status",
        "--url",
        url,
        "--token-file",
        token.to_str().unwrap(),
    ])
    .await;
    let text = String::from_utf8_lossy(&stderr).into_owned();
    println!("{text}");
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pointed_at_an_openbao_server_names_its_403_reason_and_says_what_answered() {
    let clusters = LabCluster::start_group_with(&["v"], true, None)
        .await
        .unwrap();
    let url = clusters[0].api_addr().to_string();
    let (code, text) = status_at(&url).await;
    assert_eq!(code, vault_dr_common::exit::UNAVAILABLE, "{text}");
    assert!(
        text.contains(&format!("{url}v1/clusters answered 403: permission denied")),
        "names the URL asked, the status and OpenBao's reason: {text}"
    );
    assert!(
        text.contains("Vault/OpenBao server, not the vault-dr coordinator"),
        "says what answered: {text}"
    );
    no_escape_bytes("the CLI's error", text.as_bytes());
    // Usage errors and --help through a pipe carry no colour either (clap's own output).
    let (code, _, stderr) = vault_dr(&["status", "--bogus"]).await;
    assert_eq!(code, vault_dr_common::exit::USAGE);
    no_escape_bytes("a usage error", &stderr);
    let (code, stdout, _) = vault_dr(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--log-format"), "{stdout}");
    no_escape_bytes("--help", stdout.as_bytes());
    // The agent's, too; an invalid format is a usage error naming the flag and variable.
    let agent = |args: &'static [&'static str]| {
        tokio::process::Command::new(built_binary("vault-dr-agent").unwrap())
            .args(args)
            .env(COLOUR_TERM.0, COLOUR_TERM.1)
            .env_remove("NO_COLOR")
            .output()
    };
    let out = agent(&["--help"]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("VAULT_DR_AGENT_LOG_FORMAT"));
    no_escape_bytes("the agent's --help", &out.stdout);
    let out = agent(&["--cluster", "a", "--node", "b", "--log-format", "xml"])
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(vault_dr_common::exit::USAGE),
        "{err}"
    );
    assert!(
        err.contains("--log-format") && err.contains("VAULT_DR_AGENT_LOG_FORMAT"),
        "{err}"
    );
    no_escape_bytes("the agent's usage error", &out.stderr);
}

#[tokio::test]
async fn status_of_a_coordinator_whose_name_does_not_resolve_names_the_dns_failure() {
    let (code, text) = status_at("http://no-such-host.invalid:1").await;
    assert_eq!(code, vault_dr_common::exit::UNAVAILABLE, "{text}");
    assert!(
        text.contains("cannot reach the coordinator at http://no-such-host.invalid:1/v1/clusters")
            && text.contains("failed to lookup address"),
        "names the URL and the resolver's reason: {text}"
    );
}

/// Starts `vault-dr-agent` for `cluster`/`node` against `coordinator` with `token_file` and
/// `extra` flags, its stderr in `log`.
fn agent(
    vault: &Url,
    coordinator: &Url,
    token_file: &Path,
    (cluster, node): (&str, &str),
    extra: &[&str],
    log: &Path,
) -> ChildGuard {
    let mut args: Vec<OsString> = [
        "--vault-addr",
        vault.as_str(),
        "--cluster",
        cluster,
        "--node",
        node,
        "--coordinator-url",
        coordinator.as_str(),
        "--interval",
        "200ms",
        "--listen",
        "127.0.0.1:0",
        "--coordinator-token-file",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(token_file.into());
    args.extend(extra.iter().map(OsString::from));
    let env = [(COLOUR_TERM.0.to_owned(), COLOUR_TERM.1.to_owned())];
    ChildGuard::spawn_with_env(
        &format!("agent {node}"),
        &built_binary("vault-dr-agent").unwrap(),
        &args,
        log,
        &env,
    )
    .unwrap()
}

/// The JSON objects of a `--log-format json` log; panics on a line that is not one.
fn json_lines(what: &str, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| panic!("{what}: not a JSON object: {l:?}\n{text}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_agents_log_the_coordinators_reason_and_no_log_file_holds_escape_bytes() {
    let group = Group::builder()
        .clusters(["p", "s1"])
        .coordinators(1)
        .traffic(false)
        .replicate(false)
        .spec(|s| {
            s.coordinator_env = vec![
                ("VAULT_DR_LOG_FORMAT".to_owned(), "json".to_owned()),
                (COLOUR_TERM.0.to_owned(), COLOUR_TERM.1.to_owned()),
            ];
        })
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let coordinator = group.coordinators()[0].url.clone();
    let vault = group.clusters()[0].api_addr().clone();
    // A wrong token: the coordinator answers 401 and says why; logged as text.
    let wrong_log = dir.path().join("wrong-token-agent.log");
    let _wrong = agent(&vault, &coordinator, &wrong, ("p", "p-0"), &[], &wrong_log);
    // A cluster the coordinator does not know: 422 with the reason; logged as JSON.
    let unknown_log = dir.path().join("unknown-cluster-agent.log");
    let _unknown = agent(
        &vault,
        &coordinator,
        group.token_file(),
        ("nowhere", "nowhere-0"),
        &["--log-format", "json"],
        &unknown_log,
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let line_401 = try_wait_for(
        "the 401 in the agent's log",
        Duration::from_secs(20),
        || {
            let text = read(&wrong_log);
            async move {
                text.lines()
                    .find(|l| l.contains("report not accepted"))
                    .map(str::to_owned)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", read(&wrong_log)));
    println!("{line_401}");
    assert!(
        line_401.contains("WARN")
            && line_401.contains(&format!("report to {coordinator}v1/reports"))
            && line_401.contains("the coordinator answered 401: missing or wrong bearer token"),
        "status, URL and the coordinator's reason: {line_401}"
    );
    let line_422 = try_wait_for(
        "the 422 in the agent's log",
        Duration::from_secs(20),
        || {
            let text = read(&unknown_log);
            async move {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|v| {
                        v["fields"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("report not accepted"))
                    })
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", read(&unknown_log)));
    println!("{line_422}");
    let message = line_422["fields"]["message"].as_str().unwrap();
    assert_eq!(line_422["level"], "WARN", "{line_422}");
    assert!(
        message.contains(&format!("report to {coordinator}v1/reports"))
            && message.contains("the coordinator answered 422: unknown cluster \"nowhere\""),
        "{message}"
    );
    // Once per change, then once a minute: a second of refusals every 200 ms is one line.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        read(&wrong_log).matches("report not accepted").count(),
        1,
        "{}",
        read(&wrong_log)
    );

    // Every log is a file; none holds an escape byte, and the JSON ones parse line by line.
    let coordinator_log = read(&group.coordinators()[0].log_path);
    let lines = json_lines("the coordinator's log", &coordinator_log);
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "coordinator listening (plain HTTP)"),
        "{coordinator_log}"
    );
    json_lines("the unknown-cluster agent's log", &read(&unknown_log));
    let mut files = vec![
        group.coordinators()[0].log_path.clone(),
        wrong_log.clone(),
        unknown_log.clone(),
    ];
    files.extend(group.agents().iter().map(|a| a.log_path.clone()));
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(!bytes.is_empty(), "{} is empty", f.display());
        no_escape_bytes(&f.display().to_string(), &bytes);
    }
    let group_agent = read(&group.agents()[0].log_path);
    assert!(
        group_agent.contains(" INFO "),
        "the text format: {group_agent}"
    );
}

/// The value of `vault_dr_coordinator_kubernetes_api_errors_total{what, kind}` (0 when absent).
fn api_errors(metrics: &str, what: &str, kind: &str) -> f64 {
    sample(
        metrics,
        &format!(
            "vault_dr_coordinator_kubernetes_api_errors_total{{kind=\"{kind}\",what=\"{what}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

/// How long the test watches each revoked rule once it failed: ten lease polls, ten reconcile
/// ticks, five label retries.
const WATCH: Duration = Duration::from_secs(5);

/// Waits until replica `i`'s log says `text` after its first `from` bytes.
async fn seen(
    group: &vault_dr_tests::coordinators::CoordinatorGroup,
    i: usize,
    from: usize,
    text: &str,
) {
    try_wait_for(text, Duration::from_secs(15), || async {
        group.replicas[i].log_text()[from..].contains(text)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", group.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_rbac_rule_is_logged_once_and_every_refused_request_is_counted() {
    let kube = test_client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = kube.identity(dir.path(), "vdr-rbac").await.unwrap();
    let prefix = kube.name("vdr-rbac-");
    let (lease_name, configmap_name, service_name) = (
        kube.name("vault-dr-coordinator"),
        kube.name("vault-dr-topology"),
        kube.name("vault-dr-active"),
    );
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "vault-dr".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), prefix.clone()),
    ]);
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let own_pod = format!("{prefix}1");
    pods.create(&PostParams::default(), &replica_pod(&own_pod, &labels))
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let dc1 = BTreeMap::from([("vault-dr.io/cluster".to_owned(), "dc1".to_owned())]);
    services
        .create(
            &PostParams::default(),
            &client_service(&service_name, dc1.clone()),
        )
        .await
        .unwrap();
    // No OpenBao: closed ports, so nothing fails over; the leader still labels its pod and
    // keeps the client Service on the topology's primary at every tick.
    let addresses: Vec<Url> = (0..2)
        .map(|_| Url::parse(&format!("http://127.0.0.1:{}", closed_loopback().unwrap())).unwrap())
        .collect();
    let mut lab = Group::builder()
        .clusters(["dc1", "dc2"])
        .coordinators(1)
        .ha(Backend::Kubernetes {
            kubeconfig: identity.kubeconfig.clone(),
            namespace: kube.namespace.clone(),
            lease_name: lease_name.clone(),
            configmap_name: configmap_name.clone(),
        })
        .id_prefix(&prefix)
        .coordination(CoordinationFile {
            pod_selector: Some(selector.clone()),
            ..CoordinationFile::default()
        })
        .addresses(addresses)
        .dr_token(false)
        .policy_file(probe_policy(
            Duration::from_millis(500),
            Duration::from_millis(400),
        ))
        .traffic_file(TrafficFile {
            backend: Some(TrafficBackend::Kubernetes),
            namespace: Some(kube.namespace.clone()),
            service: Some(service_name.clone()),
            ..TrafficFile::default()
        })
        .selector("dc1", &[("vault-dr.io/cluster", "dc1")])
        .selector("dc2", &[("vault-dr.io/cluster", "dc2")])
        .start()
        .await
        .unwrap();
    lab.group.start_all().await.unwrap();
    let (leader, _) = lab
        .group
        .wait_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.group.logs()));
    let group = &lab.group;
    try_wait_for("the leader label", Duration::from_secs(10), || async {
        let pod = pods.get(&own_pod).await.ok()?;
        pod.metadata
            .labels?
            .get(vault_dr_coordinator::coordination::leader_pod::LEADER_LABEL)
            .is_some_and(|v| v == "true")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", group.logs()));

    // The leader loses pods and services: the label and the Service reconcile fail at every
    // attempt (each second, each 500 ms tick).
    // The label is checked every 5 s: the window starts once both failures were seen.
    let before = group.replicas[leader].log_text();
    kube.revoke(&identity, "", "pods").await.unwrap();
    kube.revoke(&identity, "", "services").await.unwrap();
    seen(group, leader, before.len(), "cannot set the leader label").await;
    seen(group, leader, before.len(), "traffic: cannot reconcile").await;
    // A sleep on purpose: what is asserted is how little gets logged meanwhile.
    tokio::time::sleep(WATCH).await;
    let log = group.replicas[leader].log_text();
    let window = &log[before.len()..];
    println!("----- pods and services revoked, {WATCH:?}:\n{window}");
    let label_lines = window.matches("cannot set the leader label").count();
    let service_lines = window
        .matches("traffic: cannot reconcile the client service")
        .count();
    assert!(
        (1..=2).contains(&label_lines),
        "{label_lines} label warnings:\n{window}"
    );
    assert!(
        (1..=2).contains(&service_lines),
        "{service_lines} service warnings:\n{window}"
    );
    assert!(
        window.contains("403 Forbidden") && window.contains("is forbidden: User"),
        "the apiserver's reason: {window}"
    );
    let metrics = group.metrics(leader).await.unwrap();
    let (pod_errors, service_errors) = (
        api_errors(&metrics, "pods", "forbidden"),
        api_errors(&metrics, "service", "forbidden"),
    );
    println!("counted: pods {pod_errors}, service {service_errors}");
    assert!(pod_errors > 1.0, "{metrics}");
    assert!(service_errors > 1.0, "{metrics}");

    // Then leases: the replica cannot renew, loses the lead, and tries again every 500 ms.
    let before = group.replicas[leader].log_text();
    kube.revoke(&identity, "coordination.k8s.io", "leases")
        .await
        .unwrap();
    seen(group, leader, before.len(), "lease renewal failed").await;
    tokio::time::sleep(WATCH).await;
    let log = group.replicas[leader].log_text();
    let window = &log[before.len()..];
    println!("----- leases revoked, {WATCH:?}:\n{window}");
    let lease_lines = window.matches("lease renewal failed").count();
    assert!(
        (1..=2).contains(&lease_lines),
        "{lease_lines} lease warnings:\n{window}"
    );
    let warnings = window.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(
        warnings <= 6,
        "{warnings} warnings in {WATCH:?}, a condition repeats:\n{window}"
    );
    let metrics = group.metrics(leader).await.unwrap();
    let lease_errors = api_errors(&metrics, "lease", "forbidden");
    println!("counted: lease {lease_errors}");
    assert!(lease_errors > 1.0, "{metrics}");

    drop(lab);
    if kube.fake().is_none() {
        let dp = DeleteParams::default();
        let _ = pods.delete(&own_pod, &dp).await;
        let _ = services.delete(&service_name, &dp).await;
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(kube.client.clone(), &kube.namespace);
        let _ = cms.delete(&configmap_name, &dp).await;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(kube.client.clone(), &kube.namespace);
        let _ = leases.delete(&lease_name, &dp).await;
        kube.remove_identity(&identity).await;
    }
}
