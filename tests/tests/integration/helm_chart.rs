//! The Helm chart `helm/vault-dr`: lint and render with the default values and with
//! `ci/test-values.yaml`; the core manifests pass `kubernetes-validate --strict` for Kubernetes
//! 1.29; the custom resources (ServiceMonitor, PodMonitor, PrometheusRule, StressChaos), which that
//! tool has no schema for, are checked field by field and the rules with `promtool check rules`;
//! the rendered `config.toml` is accepted by the coordinator's own parser; the Role is namespaced
//! least privilege; the agent sidecar examples validate as containers of a Pod;
//! `examples/merge-values.sh` adds them to a release's own values without losing any; and every
//! metric the Grafana dashboard and the alerts query is exported by a real agent and a real
//! coordinator running against a lab OpenBao group, every agent series with its `cluster` and
//! `node` labels (`agent_prometheus` runs the agent queries in a real Prometheus).
//!
//! Needs `.tools/bin/{helm,kubectl,bao}`, `kubernetes-validate` in `.tools/venv` and `promtool`
//! (run `scripts/setup.sh`, which calls `scripts/setup-helm.sh`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vault_dr_coordinator::config::{self as coord_config, Config as CoordConfig};
use vault_dr_lab::wait::wait_for;
use vault_dr_tests::coordinators::{Backend, HaGroups};

/// Kinds the chart renders whose schemas `kubernetes-validate` does not ship.
const CUSTOM_KINDS: [&str; 4] = [
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "StressChaos",
];
/// Namespace used for rendering.
const NAMESPACE: &str = "vault";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("helm/vault-dr")
}

/// A tool installed by the setup scripts; panics with the install hint when it is missing.
fn tool(relative: &str) -> PathBuf {
    let p = root().join(".tools").join(relative);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (it calls scripts/setup-helm.sh)",
        p.display()
    );
    p
}

/// Runs a command, feeding `stdin`; returns (success, stdout, stderr).
fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup.sh)"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value files the acceptance criteria name: the defaults, and the CI file.
fn value_sets() -> Vec<(&'static str, Vec<String>)> {
    let ci = chart().join("ci/test-values.yaml").display().to_string();
    vec![
        ("default values", vec![]),
        ("ci/test-values.yaml", vec!["-f".into(), ci]),
    ]
}

/// `helm template` output for one value set (release `vault-dr` in namespace `vault`).
fn render(extra: &[String]) -> String {
    let (ok, out, err) = run(
        Command::new(tool("bin/helm"))
            .args(["template", "vault-dr"])
            .arg(chart())
            .args(["--namespace", NAMESPACE])
            .args(extra),
        None,
    );
    assert!(ok, "helm template {extra:?} failed:\n{err}");
    out
}

/// YAML (one or more documents) to JSON values, through PyYAML in the tools venv (no YAML crate
/// in the workspace; PyYAML comes with kubernetes-validate).
fn yaml_docs(text: &str) -> Vec<Value> {
    let (ok, out, err) = run(
        Command::new(tool("venv/bin/python")).args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ]),
        Some(text),
    );
    assert!(ok, "YAML did not parse:\n{err}");
    serde_json::from_str(&out).unwrap()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind_: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == kind_).collect()
}

fn one<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} rendered"))
}

/// Runs `kubernetes-validate --strict -k 1.29.0` on a file; returns its output lines.
fn kubernetes_validate(file: &Path) -> Vec<String> {
    let (ok, out, err) = run(
        Command::new(tool("venv/bin/kubernetes-validate"))
            .args(["--strict", "-k", "1.29.0"])
            .arg(file),
        None,
    );
    let text = format!("{out}{err}");
    assert!(
        ok,
        "kubernetes-validate failed on {}:\n{text}",
        file.display()
    );
    text.lines().map(str::to_owned).collect()
}

#[test]
fn helm_lint_passes_with_the_default_and_the_ci_values() {
    for (label, extra) in value_sets() {
        let (ok, out, err) = run(
            Command::new(tool("bin/helm"))
                .args(["lint", "--strict", "--namespace", NAMESPACE])
                .arg(chart())
                .args(&extra),
            None,
        );
        assert!(ok, "helm lint with {label} failed:\n{out}{err}");
        assert!(out.contains("0 chart(s) failed"), "{label}: {out}");
    }
}

#[test]
fn core_manifests_pass_strict_validation_for_kubernetes_1_29_and_custom_ones_are_only_the_known_crds()
 {
    let dir = tempfile::tempdir().unwrap();
    for (label, extra) in value_sets() {
        let rendered = render(&extra);
        let docs = yaml_docs(&rendered);
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).unwrap();
        let lines = kubernetes_validate(&file);
        for doc in &docs {
            let (k, n) = (kind(doc), name(doc));
            if CUSTOM_KINDS.contains(&k) {
                // Not in the tool's schema set: it warns; the custom-resource test checks them.
                assert!(
                    lines
                        .iter()
                        .any(|l| l.contains("Couldn't find schema") && l.contains(k)),
                    "{label}: {k} {n} was neither validated nor reported as schemaless"
                );
            } else {
                let wanted = format!("passed for resource {}/{n} ", k.to_lowercase());
                assert!(
                    lines.iter().any(|l| l.contains(&wanted)),
                    "{label}: {k} {n} did not pass strict validation:\n{}",
                    lines.join("\n")
                );
            }
        }
        // Every warning is about a known custom resource, nothing else.
        for l in lines.iter().filter(|l| l.starts_with("WARN")) {
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|k| l.contains(&format!("kind {k} "))),
                "{label}: unexpected warning: {l}"
            );
        }
        for k in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
        ] {
            assert!(!find(&docs, k).is_empty(), "{label}: no {k} rendered");
        }
        assert!(
            find(&docs, "Secret").is_empty(),
            "{label}: the chart must reference Secrets, never render one"
        );
        assert!(
            find(&docs, "ClusterRole").is_empty() && find(&docs, "ClusterRoleBinding").is_empty(),
            "{label}: nothing cluster-wide"
        );
    }
}

#[test]
fn the_coordinator_deployment_is_ha_probed_limited_and_locked_down() {
    for (label, extra) in value_sets() {
        let docs = yaml_docs(&render(&extra));
        let deploy = find(&docs, "Deployment")[0];
        let spec = &deploy["spec"];
        assert_eq!(spec["replicas"], 3, "{label}");
        let pod = &spec["template"]["spec"];
        let anti = &pod["affinity"]["podAntiAffinity"];
        assert!(anti.is_object(), "{label}: no pod anti-affinity");
        let c = &pod["containers"][0];
        // Every serving replica is ready; the Service selects the leader's pod label.
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/healthz",
            "{label}"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{label}");
        for part in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][part][res].is_string(),
                    "{label}: resources.{part}.{res} missing"
                );
            }
        }
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{label}");
        assert_eq!(c["securityContext"]["runAsNonRoot"], true, "{label}");
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{label}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{label}"
        );
        // Every env value that could carry a secret comes from a Secret reference.
        for env in c["env"].as_array().unwrap() {
            let n = env["name"].as_str().unwrap();
            if n.contains("TOKEN") || n.contains("MONGODB") {
                assert!(
                    env["valueFrom"]["secretKeyRef"].is_object(),
                    "{label}: {n} must come from a Secret"
                );
            }
        }
        let secret_volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert!(
            secret_volumes.contains(&"vault-dr-token"),
            "{label}: bearer token Secret not mounted: {secret_volumes:?}"
        );
        // The PDB selects the Deployment's pods.
        let pdb = find(&docs, "PodDisruptionBudget")[0];
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], spec["selector"]["matchLabels"],
            "{label}"
        );
        assert_eq!(
            pdb["spec"]["maxUnavailable"], 1,
            "{label}: one replica at a time"
        );
        // The coordinator Service selects the Deployment's pod that the leader labels.
        let svc = one(&docs, "Service", name(deploy));
        let mut want = spec["selector"]["matchLabels"].clone();
        want["vault-dr.io/leader"] = "true".into();
        assert_eq!(svc["spec"]["selector"], want, "{label}");
    }
    let ci = yaml_docs(&render(&value_sets()[1].1));
    let c = &find(&ci, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    let mongo = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == coord_config::ENV_MONGODB_URI)
        .expect("ci values: VAULT_DR_MONGODB_URI from the MongoDB Secret");
    assert_eq!(
        mongo["valueFrom"]["secretKeyRef"]["name"],
        "vault-dr-mongodb"
    );
}

#[test]
fn the_role_is_namespaced_least_privilege_and_extractable_alone() {
    let (ok, out, err) = run(
        Command::new(tool("bin/helm"))
            .args(["template", "vault-dr"])
            .arg(chart())
            .args([
                "--namespace",
                NAMESPACE,
                "-s",
                "templates/coordinator-role.yaml",
            ]),
        None,
    );
    assert!(ok, "{err}");
    let docs = yaml_docs(&out);
    assert_eq!(docs.len(), 1, "the Role template renders exactly the Role");
    let rules = docs[0]["rules"].as_array().unwrap();
    let mut grants: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    for r in rules {
        let names: Vec<String> = r["resourceNames"]
            .as_array()
            .map(|a| a.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    let v = v.as_str().unwrap().to_owned();
                    assert_ne!(v, "*", "no wildcard verbs");
                    assert!(!["watch", "delete", "deletecollection"].contains(&v.as_str()));
                    if v == "list" {
                        assert_eq!(res, "pods", "list only the pods (the leader's label)");
                    }
                    if v == "create" {
                        assert!(
                            names.is_empty(),
                            "create cannot be limited by resourceNames"
                        );
                    }
                    let name_list = if names.is_empty() {
                        "*".into()
                    } else {
                        names.join(",")
                    };
                    grants.insert((
                        g.as_str().unwrap().to_owned(),
                        res.as_str().unwrap().to_owned(),
                        name_list,
                        v,
                    ));
                }
            }
        }
    }
    let want: BTreeSet<(String, String, String, String)> = [
        (
            "coordination.k8s.io",
            "leases",
            "vault-dr-coordinator",
            "get",
        ),
        (
            "coordination.k8s.io",
            "leases",
            "vault-dr-coordinator",
            "update",
        ),
        ("coordination.k8s.io", "leases", "*", "create"),
        (
            "",
            "configmaps",
            "vault-dr-topology,vault-dr-topology-journal",
            "get",
        ),
        (
            "",
            "configmaps",
            "vault-dr-topology,vault-dr-topology-journal",
            "update",
        ),
        ("", "configmaps", "*", "create"),
        ("", "services", "vault-dr-active", "get"),
        ("", "services", "vault-dr-active", "patch"),
        ("", "events", "*", "create"),
        ("", "pods", "*", "list"),
        ("", "pods", "*", "patch"),
    ]
    .into_iter()
    .map(|(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()))
    .collect();
    assert_eq!(grants, want);
}

#[test]
fn custom_resources_carry_their_required_fields_and_the_rules_pass_promtool() {
    let docs = yaml_docs(&render(&value_sets()[1].1));
    // ServiceMonitor: selects the headless metrics Service by its labels, on a port it has.
    let sm = find(&docs, "ServiceMonitor")[0];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    let metrics_svc = one(&docs, "Service", "vault-dr-coordinator-metrics");
    assert_eq!(metrics_svc["spec"]["publishNotReadyAddresses"], true);
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &metrics_svc["metadata"]["labels"][k], v,
            "selector label {k}"
        );
    }
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        metrics_svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port)
    );
    // PodMonitor: the port name the sidecar examples declare, and no relabelling onto the
    // agent's own `cluster` and `node` labels (a target label would rename them `exported_*`).
    let pm = find(&docs, "PodMonitor")[0];
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "vault-dr");
    let relabelled: Vec<&Value> = ep["relabelings"]
        .as_array()
        .map(|r| r.iter().map(|r| &r["targetLabel"]).collect())
        .unwrap_or_default();
    assert!(
        !relabelled.iter().any(|t| *t == "cluster" || *t == "node"),
        "{relabelled:?}"
    );
    // StressChaos: like the proof of concept, one per cluster, every pod of it.
    let chaos = find(&docs, "StressChaos");
    assert_eq!(chaos.len(), 3, "one StressChaos per cluster");
    for c in chaos {
        assert_eq!(c["apiVersion"], "chaos-mesh.org/v1alpha1");
        let s = &c["spec"];
        assert_eq!(s["mode"], "all");
        assert_eq!(s["duration"], "30s");
        assert_eq!(s["stressors"]["cpu"]["load"], 80);
        assert_eq!(s["stressors"]["memory"]["size"], "100MB");
        let sel = s["selector"]["labelSelectors"].as_object().unwrap();
        assert!(sel.contains_key("app.kubernetes.io/instance"));
        assert!(
            !sel.contains_key("openbao-active"),
            "every node, not only the active one"
        );
        assert_eq!(s["selector"]["namespaces"][0], NAMESPACE);
    }
    // PrometheusRule: the alerts the issue asks for, syntactically valid for Prometheus.
    let rule = find(&docs, "PrometheusRule")[0];
    let alerts: BTreeSet<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for a in [
        "VaultDRPrimaryDown",
        "VaultDRFailoverStarted",
        "VaultDRFailoverFinished",
        "VaultDRReplicationLagHigh",
        "VaultDRNoCoordinatorLeader",
        "VaultDRAgentReportStale",
        "VaultDRFailoverLostData",
        "VaultDRFailoverLossNotAccounted",
        "VaultDRGroupConflict",
        "VaultDRAgentWritesRefused",
    ] {
        assert!(alerts.contains(a), "missing alert {a}: {alerts:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.yaml");
    // JSON is YAML: promtool reads the PrometheusRule's spec as a rules file.
    std::fs::write(&rules_file, rule["spec"].to_string()).unwrap();
    let promtool = which("promtool");
    let (ok, out, err) = run(
        Command::new(promtool)
            .args(["check", "rules"])
            .arg(&rules_file),
        None,
    );
    assert!(ok, "promtool check rules failed:\n{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// `promtool test rules` on the rendered PrometheusRule: a failover that lost data at minute 2
/// (the leader `c-0` counts it once and shows 57 entries, 2.31 s) fires
/// `VaultDRFailoverLostData` with those figures, not the stale gauges of the former leader
/// `c-1`; it resolves once the window has passed and does not fire again (once per
/// failover). An unaccounted failover fires `VaultDRFailoverLossNotAccounted` the same way.
#[test]
fn the_lost_data_alert_fires_once_per_failover_with_the_figures_of_the_replica_that_counted_it() {
    let docs = yaml_docs(&render(&value_sets()[1].1));
    let rule = find(&docs, "PrometheusRule")[0];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.json"), rule["spec"].to_string()).unwrap();
    let description = "The promoted cluster does not serve the old primary's last 57 raft \
        entries (2.31 s of writes), and writes after its last report (up to one report \
        interval) are unknown. Acknowledged writes in that window are gone; `vault-dr \
        history` has the account.";
    let series = |name: &str, pod: &str, values: &str| {
        json!({
            "series": format!("{name}{{namespace=\"dr\",pod=\"{pod}\"}}"),
            "values": values,
        })
    };
    let alert = |at: &str, name: &str, firing: Vec<Value>| json!({ "eval_time": at, "alertname": name, "exp_alerts": firing });
    let lost = json!({
        "exp_labels": { "severity": "critical" },
        "exp_annotations": {
            "summary": "A vault-dr failover lost data",
            "description": description,
        },
    });
    let unaccounted = json!({
        "exp_labels": { "severity": "warning" },
        "exp_annotations": {
            "summary": rule["spec"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["alert"] == "VaultDRFailoverLossNotAccounted")
                .unwrap()["annotations"]["summary"],
            "description": rule["spec"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["alert"] == "VaultDRFailoverLossNotAccounted")
                .unwrap()["annotations"]["description"],
        },
    });
    let tests = json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("vault_dr_coordinator_failovers_lost_data_total", "c-0", "0 0 1x60"),
                    series("vault_dr_coordinator_failover_loss_entries", "c-0", "0 0 57x60"),
                    series("vault_dr_coordinator_failover_loss_seconds", "c-0", "0 0 2.31x60"),
                    series("vault_dr_coordinator_failovers_lost_data_total", "c-1", "3x62"),
                    series("vault_dr_coordinator_failover_loss_entries", "c-1", "900x62"),
                    series("vault_dr_coordinator_failover_loss_seconds", "c-1", "40x62"),
                    series("vault_dr_coordinator_failovers_loss_unaccounted_total", "c-0", "0x30 1x31"),
                ],
                "alert_rule_test": [
                    alert("1m", "VaultDRFailoverLostData", vec![]),
                    alert("3m", "VaultDRFailoverLostData", vec![lost.clone()]),
                    alert("10m", "VaultDRFailoverLostData", vec![lost]),
                    alert("20m", "VaultDRFailoverLostData", vec![]),
                    alert("60m", "VaultDRFailoverLostData", vec![]),
                    alert("20m", "VaultDRFailoverLossNotAccounted", vec![]),
                    alert("35m", "VaultDRFailoverLossNotAccounted", vec![unaccounted]),
                    alert("55m", "VaultDRFailoverLossNotAccounted", vec![]),
                ],
            }
        ],
    });
    let tests_file = dir.path().join("tests.json");
    std::fs::write(&tests_file, tests.to_string()).unwrap();
    let (ok, out, err) = run(
        Command::new(which("promtool"))
            .args(["test", "rules"])
            .arg(&tests_file),
        None,
    );
    assert!(ok, "promtool test rules failed:\n{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");
}

fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not on PATH: run scripts/setup.sh (Debian prometheus)"))
}

/// `config.toml` of the coordinator ConfigMap for one value set.
fn rendered_config(extra: &[String]) -> String {
    let docs = yaml_docs(&render(extra));
    one(&docs, "ConfigMap", "vault-dr-coordinator")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_rendered_config_is_accepted_by_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bearer\n").unwrap();
    // In the pod these files are mounted Secrets; here the environment points at test files,
    // exactly as the coordinator's overrides allow.
    let env = BTreeMap::from([
        (
            coord_config::ENV_TOKEN_FILE.to_owned(),
            token.display().to_string(),
        ),
        (
            coord_config::ENV_VAULT_TOKEN_FILE.to_owned(),
            token.display().to_string(),
        ),
        (coord_config::ENV_NAMESPACE.to_owned(), NAMESPACE.to_owned()),
        (
            coord_config::ENV_ID.to_owned(),
            "vault-dr-coordinator-0".to_owned(),
        ),
        (
            coord_config::ENV_STORE_PATH.to_owned(),
            dir.path().join("s.sqlite").display().to_string(),
        ),
    ]);
    let default = CoordConfig::parse(&rendered_config(&[]), dir.path(), &env)
        .unwrap_or_else(|e| panic!("default values: {e}"));
    assert_eq!(default.initial_primary, "dc1");
    assert_eq!(default.clusters.len(), 2);
    assert_eq!(default.listen.port(), 8300);
    assert_eq!(
        default.coordination,
        coord_config::CoordinationConfig::Kubernetes {
            namespace: NAMESPACE.into(),
            lease_name: "vault-dr-coordinator".into(),
            configmap_name: "vault-dr-topology".into(),
            lease_duration: Duration::from_secs(5),
            renew_period: Duration::from_millis(1500),
            pod_selector: Some(
                "app.kubernetes.io/name=vault-dr,app.kubernetes.io/instance=vault-dr,\
                 app.kubernetes.io/component=coordinator"
                    .into()
            ),
        }
    );
    assert_eq!(
        default.traffic,
        coord_config::TrafficConfig::Kubernetes {
            namespace: NAMESPACE.into(),
            service: "vault-dr-active".into(),
        }
    );
    assert_eq!(
        default.cluster("dc2").unwrap().selector["app.kubernetes.io/instance"],
        "openbao-dc2"
    );
    // The degraded-primary rule is off unless enabled; enabled, its section is rendered.
    assert_eq!(default.policy.degraded, None);
    let on: Vec<String> = [
        "--set",
        "coordinator.policy.degraded.enabled=true",
        "--set",
        "coordinator.policy.degraded.window=30s",
    ]
    .map(String::from)
    .to_vec();
    let degraded = CoordConfig::parse(&rendered_config(&on), dir.path(), &env)
        .unwrap_or_else(|e| panic!("degraded on: {e}"))
        .policy
        .degraded
        .expect("[policy.degraded] rendered");
    assert_eq!(degraded.window, Duration::from_secs(30));
    assert_eq!(degraded.max_per_day, 2);

    let mut env_ci = env.clone();
    env_ci.insert(
        coord_config::ENV_MONGODB_URI.into(),
        "mongodb://127.0.0.1:1/vault_dr".into(),
    );
    let ci = CoordConfig::parse(&rendered_config(&value_sets()[1].1), dir.path(), &env_ci)
        .unwrap_or_else(|e| panic!("ci values: {e}"));
    assert_eq!(ci.initial_primary, "east");
    assert_eq!(ci.clusters.len(), 3);
    assert!(ci.cluster("north").unwrap().excluded);
    assert_eq!(ci.cluster("east").unwrap().priority, 10);
    assert_eq!(ci.policy.max_lag, Duration::from_secs(30));
    assert_eq!(ci.policy.max_lag_entries, Some(1000));
    assert!(ci.vault_token.is_some());
    assert!(matches!(ci.store, coord_config::StoreConfig::Mongo { .. }));
}

/// The agent variables the chart and the examples may set (agent/src/config.rs).
fn agent_env_vars() -> BTreeSet<&'static str> {
    use vault_dr_agent::config as a;
    [
        a::ENV_VAULT_ADDR,
        a::ENV_VAULT_CA_CERT,
        a::ENV_VAULT_SKIP_VERIFY,
        a::ENV_VAULT_TOKEN_FILE,
        a::ENV_CLUSTER,
        a::ENV_NODE,
        a::ENV_COORDINATOR_URL,
        a::ENV_COORDINATOR_TOKEN_FILE,
        a::ENV_COORDINATOR_CA_CERT,
        a::ENV_INTERVAL,
        a::ENV_LISTEN,
        a::ENV_VAULT_PID_FILE,
        a::ENV_VAULT_PROCESS_NAME,
        a::ENV_VAULT_RESTART,
        a::ENV_LOG_JSON,
        a::ENV_LOG_FORMAT,
        a::ENV_REPLICATION,
        a::ENV_SNAPSHOT_DIR,
        a::ENV_SNAPSHOT_INTERVAL,
        a::ENV_SNAPSHOT_KEEP,
        a::ENV_RESTORE,
        a::ENV_QUARANTINE_DIR,
        a::ENV_GATE_LISTEN,
        a::ENV_GATE_OVERRIDE,
        a::ENV_GATE_TLS_CERT,
        a::ENV_GATE_TLS_KEY,
        a::ENV_RAFT_PATH,
        a::ENV_RAFT_NODE_ID,
        a::ENV_RAFT_CLUSTER_ADDR,
        a::ENV_RAFT_CONTROL_DIR,
    ]
    .into_iter()
    .collect()
}

/// A sidecar's environment: the agent ConfigMap's `data`, token files (written into `dir`) and
/// what the pod adds (its cluster and node).
fn sidecar_env(
    data: &Value,
    dir: &Path,
    cluster: &str,
    node: &str,
) -> std::collections::HashMap<String, String> {
    use vault_dr_agent::config as a;
    let token = dir.join("token");
    std::fs::write(&token, "t").unwrap();
    let mut env: std::collections::HashMap<String, String> = data
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    for k in [a::ENV_COORDINATOR_TOKEN_FILE, a::ENV_VAULT_TOKEN_FILE] {
        env.insert(k.into(), token.display().to_string());
    }
    env.insert(a::ENV_CLUSTER.into(), cluster.into());
    env.insert(a::ENV_NODE.into(), node.into());
    env
}

#[test]
fn the_raft_backend_renders_an_agent_configuration_the_agent_accepts() {
    use vault_dr_agent::config as a;
    let docs = yaml_docs(&render(&[
        "--set".into(),
        "agent.replication.backend=raft".into(),
    ]));
    let cm = one(&docs, "ConfigMap", "vault-dr-agent");
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data[a::ENV_REPLICATION], "raft");
    assert_eq!(data[a::ENV_RAFT_PATH], "/openbao/data");
    assert_eq!(data[a::ENV_RAFT_SUFFRAGE], "auto");
    assert!(
        !data.contains_key(a::ENV_SNAPSHOT_DIR),
        "no snapshot settings with raft"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut env = sidecar_env(&cm["data"], dir.path(), "dc2", "openbao-dc2-0");
    // What the sidecar adds per pod.
    env.insert(
        a::ENV_RAFT_CLUSTER_ADDR.into(),
        "openbao-dc2-0.openbao-dc2-internal:8201".into(),
    );
    let c = vault_dr_agent::Config::parse(["vault-dr-agent"], &env).unwrap();
    let a::ReplicationConfig::Raft(r) = c.replication else {
        panic!("not raft: {:?}", c.replication)
    };
    assert_eq!(r.node_id, "openbao-dc2-0", "the pod name, as setNodeId");
    assert_eq!(r.control_dir, Path::new("/openbao/data/.vault-dr"));
    let (ok, _, err) = run(
        Command::new(tool("bin/helm"))
            .args(["template", "vault-dr"])
            .arg(chart())
            .args(["--set", "agent.replication.backend=rsync"]),
        None,
    );
    assert!(!ok && err.contains("snapshot, raft or none"), "{err}");
    // A DR cluster of the synchronous layout.
    let docs = yaml_docs(&render(&[
        "--set".into(),
        "agent.replication.backend=raft".into(),
        "--set".into(),
        "agent.replication.raftSuffrage=voter".into(),
    ]));
    let cm = one(&docs, "ConfigMap", "vault-dr-agent");
    let mut env = sidecar_env(&cm["data"], dir.path(), "dc2", "openbao-dc2-0");
    env.insert(a::ENV_RAFT_CLUSTER_ADDR.into(), "openbao-dc2-0:8201".into());
    let c = vault_dr_agent::Config::parse(["vault-dr-agent"], &env).unwrap();
    let a::ReplicationConfig::Raft(r) = c.replication else {
        panic!("not raft")
    };
    assert_eq!(
        r.suffrage,
        vault_dr_agent::replication::raft::plan::Suffrage::Voter
    );
    let (ok, _, err) = run(
        Command::new(tool("bin/helm"))
            .args(["template", "vault-dr"])
            .arg(chart())
            .args(["--set", "agent.replication.backend=raft"])
            .args(["--set", "agent.replication.raftSuffrage=sometimes"]),
        None,
    );
    assert!(!ok && err.contains("auto, voter or non-voter"), "{err}");
}

#[test]
fn the_agent_sidecar_examples_validate_as_pod_containers_and_use_real_agent_variables() {
    let known = agent_env_vars();
    let docs = yaml_docs(&render(&[]));
    let agent_cm = one(&docs, "ConfigMap", "vault-dr-agent");
    for k in agent_cm["data"].as_object().unwrap().keys() {
        assert!(
            known.contains(k.as_str()),
            "agent ConfigMap sets unknown {k}"
        );
    }
    // The chart's defaults are a valid agent configuration with the write gate in front of a
    // node on a port of its own (the token files are the pod's; here temporary ones).
    {
        let dir = tempfile::tempdir().unwrap();
        let env = sidecar_env(&agent_cm["data"], dir.path(), "dc1", "dc1-0");
        let c = vault_dr_agent::Config::parse(["vault-dr-agent"], &env).unwrap();
        let gate = c.gate.expect("the chart turns the write gate on");
        assert_eq!(gate.listen, "0.0.0.0:8200".parse().unwrap());
        assert!(!gate.override_open);
        assert_eq!(c.vault.addr.as_str(), "http://127.0.0.1:8300/");
    }
    // The ConfigMap's coordinator URL is the coordinator Service on its port.
    let svc = one(&docs, "Service", "vault-dr-coordinator");
    assert_eq!(
        agent_cm["data"][vault_dr_agent::config::ENV_COORDINATOR_URL],
        format!(
            "http://vault-dr-coordinator.{NAMESPACE}.svc:{}",
            svc["spec"]["ports"][0]["port"]
        )
    );

    let dir = tempfile::tempdir().unwrap();
    for example in [
        "openbao-agent-values.yaml",
        "vault-agent-values.yaml",
        "openbao-agent-raft-values.yaml",
    ] {
        let text = std::fs::read_to_string(chart().join("examples").join(example)).unwrap();
        let values = &yaml_docs(&text)[0];
        let server = &values["server"];
        let sidecars = server["extraContainers"].as_array().unwrap();
        assert_eq!(sidecars.len(), 1, "{example}");
        let sidecar = &sidecars[0];
        assert!(
            sidecar.get("readinessProbe").is_none(),
            "{example}: no sidecar readiness"
        );
        for e in sidecar["env"].as_array().unwrap() {
            let n = e["name"].as_str().unwrap();
            assert!(known.contains(n), "{example}: unknown agent variable {n}");
        }
        assert_eq!(
            sidecar["envFrom"][0]["configMapRef"]["name"],
            name(agent_cm)
        );
        // The way the official charts place them: the Vault container, the extra containers,
        // the extra volumes and the StatefulSet's `data` claim (the quarantine lives there) in
        // one pod.
        let mut pod_volumes = server["volumes"].as_array().unwrap().clone();
        pod_volumes.push(json!({
            "name": "data",
            "persistentVolumeClaim": {"claimName": "data-openbao-dc1-0"}
        }));
        // The server container with what the chart adds from the values: its environment
        // (`extraEnvironmentVars`) and mounts (`volumeMounts`); the init containers as given.
        let server_env: Vec<Value> = server["extraEnvironmentVars"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect()
            })
            .unwrap_or_default();
        let server_mounts = server["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = server["extraInitContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "openbao-dc1-0", "labels": server["extraLabels"]},
            "spec": {
                "shareProcessNamespace": server["shareProcessNamespace"],
                "initContainers": init,
                "containers": [
                    {
                        "name": "openbao",
                        "image": "openbao/openbao:2.7.2",
                        "env": server_env,
                        "volumeMounts": server_mounts,
                    },
                    sidecar
                ],
                "volumes": pod_volumes,
            }
        });
        let file = dir.path().join(example.replace(".yaml", ".json"));
        std::fs::write(&file, pod.to_string()).unwrap();
        let lines = kubernetes_validate(&file);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("passed for resource pod/openbao-dc1-0")),
            "{example}: {}",
            lines.join("\n")
        );
        // Every mount names a declared volume or the charts' `data` claim; the token comes from
        // the referenced Secret.
        let mut volumes: BTreeSet<&str> = server["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        volumes.insert("data");
        let mounts = sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .chain(&server_mounts)
            .chain(
                init.iter()
                    .flat_map(|c| c["volumeMounts"].as_array().unwrap()),
            );
        for m in mounts {
            assert!(
                volumes.contains(m["name"].as_str().unwrap()),
                "{example}: {m}"
            );
        }
        // Raft replication: the shim comes first on the server's PATH, installed by an init
        // container into a volume the server mounts, and the agent shares the data volume at
        // the raft path the chart's ConfigMap gives it.
        if let Some(path) = server["extraEnvironmentVars"]["PATH"].as_str() {
            let shim_dir = path.split(':').next().unwrap();
            let install = &init[0]["command"];
            assert_eq!(install[1], "install", "{example}: {install}");
            assert_eq!(install[2], shim_dir, "{example}");
            assert!(
                server_mounts.iter().any(|m| m["mountPath"] == shim_dir),
                "{example}: the server mounts {shim_dir}"
            );
            assert!(
                sidecar["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["name"] == "data" && m["mountPath"] == "/openbao/data"),
                "{example}: the agent shares the data volume"
            );
            assert_eq!(
                server["extraEnvironmentVars"]["VAULT_DR_LAUNCH_CONTROL_DIR"],
                "/openbao/data/.vault-dr",
                "{example}: the agent's default control dir"
            );
        }
        assert!(
            server["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "vault-dr-token"),
            "{example}: the coordinator token Secret"
        );
        let token_file = agent_cm["data"][vault_dr_agent::config::ENV_COORDINATOR_TOKEN_FILE]
            .as_str()
            .unwrap();
        assert!(
            sidecar["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| token_file.starts_with(m["mountPath"].as_str().unwrap())),
            "{example}: {token_file} is not under a mount"
        );
    }
}

/// Runs `examples/merge-values.sh RELEASE ADDITION` with the tools' helm; returns (success,
/// stdout, stderr).
fn merge_values(release: &Path, addition: &Path) -> (bool, String, String) {
    run(
        Command::new("sh")
            .arg(chart().join("examples/merge-values.sh"))
            .arg(release)
            .arg(addition)
            .env("HELM", tool("bin/helm")),
        None,
    )
}

/// Whether everything in `part` is in `whole`: maps key by key, lists entry by entry (in any
/// place), scalars equal.
fn holds(whole: &Value, part: &Value) -> bool {
    match (whole, part) {
        (Value::Object(w), Value::Object(p)) => {
            p.iter().all(|(k, v)| w.get(k).is_some_and(|x| holds(x, v)))
        }
        (Value::Array(w), Value::Array(p)) => p.iter().all(|v| w.contains(v)),
        (w, p) => w == p,
    }
}

/// The names of a list of named entries.
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

/// A release of the official OpenBao chart with values of its own: TLS from a Secret volume
/// mounted into the server, a log-shipping sidecar, and a config fit for vault-dr.
const RELEASE_WITH_TLS: &str = r#"
global:
  tlsDisable: false
server:
  volumes:
    - name: openbao-tls
      secret:
        secretName: openbao-dc1-tls
  volumeMounts:
    - name: openbao-tls
      mountPath: /openbao/userconfig/tls
      readOnly: true
  extraContainers:
    - name: log-shipper
      image: fluent/fluent-bit:3.1
      args: ["-c", "/fluent-bit/etc/fluent-bit.conf"]
  ha:
    enabled: true
    raft:
      enabled: true
      config: |
        listener "tcp" {
          address         = "127.0.0.1:8300"
          cluster_address = "[::]:8201"
          tls_cert_file   = "/openbao/userconfig/tls/tls.crt"
          tls_key_file    = "/openbao/userconfig/tls/tls.key"
        }
        storage "raft" { path = "/openbao/data" }
        service_registration "kubernetes" {}
        seal "static" {
          current_key_id = "dr-1"
          current_key    = "file:///openbao/userconfig/seal/key"
        }
"#;

/// The install story of a release that already has volumes and containers: the merge script adds
/// the example's sidecar and volumes and keeps every value of the release (the TLS volume, its
/// mount, the other sidecar, the server config); run again on its output it changes nothing; an
/// older sidecar of the same name is replaced in place; a value it cannot merge stops it with the
/// path; a config without what vault-dr needs is warned about. The merged server pod (the way the
/// official chart places `server.volumes`, `server.volumeMounts` and `server.extraContainers`)
/// passes strict validation and every mount names a volume.
#[test]
fn the_merge_script_adds_the_sidecar_to_a_release_and_keeps_its_volumes_mounts_and_containers() {
    let dir = tempfile::tempdir().unwrap();
    let example = chart().join("examples/openbao-agent-values.yaml");
    let example_values = yaml_docs(&std::fs::read_to_string(&example).unwrap()).remove(0);
    let release_file = dir.path().join("current.yaml");
    std::fs::write(&release_file, RELEASE_WITH_TLS).unwrap();
    let release = yaml_docs(RELEASE_WITH_TLS).remove(0);

    let (ok, merged_text, err) = merge_values(&release_file, &example);
    assert!(ok, "merge failed:\n{err}");
    assert!(!err.contains("warning"), "a fit release warns: {err}");
    let merged = yaml_docs(&merged_text).remove(0);
    assert!(
        holds(&merged, &release),
        "release values lost:\n{merged_text}"
    );
    assert!(
        holds(&merged, &example_values),
        "example values missing:\n{merged_text}"
    );
    let server = &merged["server"];
    assert_eq!(
        names(&server["volumes"]),
        [
            "openbao-tls",
            "vault-dr-token",
            "vault-dr-vault-token",
            "vault-dr-snapshots"
        ]
    );
    assert_eq!(server["volumeMounts"], release["server"]["volumeMounts"]);
    assert_eq!(
        names(&server["extraContainers"]),
        ["log-shipper", "vault-dr-agent"]
    );
    assert_eq!(
        server["ha"]["raft"]["config"], release["server"]["ha"]["raft"]["config"],
        "the release's own server config is kept"
    );

    // Idempotent: the merged values merged again are the same text.
    let merged_file = dir.path().join("merged.yaml");
    std::fs::write(&merged_file, &merged_text).unwrap();
    let (ok, again, err) = merge_values(&merged_file, &example);
    assert!(ok, "{err}");
    assert_eq!(again, merged_text, "a second merge changed the values");

    // An older sidecar of the same name is replaced where it was, not duplicated.
    let older = RELEASE_WITH_TLS.replace(
        "  extraContainers:\n",
        "  extraContainers:\n    - name: vault-dr-agent\n      image: ghcr.io/vault-dr/vault-dr-agent:0.0.9\n",
    );
    let older_file = dir.path().join("older.yaml");
    std::fs::write(&older_file, older).unwrap();
    let (ok, out, err) = merge_values(&older_file, &example);
    assert!(ok, "{err}");
    let containers = &yaml_docs(&out)[0]["server"]["extraContainers"];
    assert_eq!(names(containers), ["vault-dr-agent", "log-shipper"]);
    assert_eq!(
        containers[0],
        example_values["server"]["extraContainers"][0]
    );

    // A value of another kind stops the merge and names its place; nothing is written.
    let string_volumes = dir.path().join("string-volumes.yaml");
    std::fs::write(&string_volumes, "server:\n  volumes: \"- name: x\"\n").unwrap();
    let (ok, out, err) = merge_values(&string_volumes, &example);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("cannot merge server.volumes"), "{err}");

    // A release on the chart's defaults (standalone, no config): merged, with the warnings.
    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "null\n").unwrap();
    let (ok, out, err) = merge_values(&bare, &example);
    assert!(ok, "{err}");
    assert!(holds(&yaml_docs(&out)[0], &example_values), "{out}");
    for warning in [
        "the release did not set server.ha.raft.enabled: true",
        "server.ha.raft.config is not set",
    ] {
        assert!(err.contains(warning), "no warning {warning:?}:\n{err}");
    }
    let no_registration = dir.path().join("no-registration.yaml");
    std::fs::write(
        &no_registration,
        RELEASE_WITH_TLS.replace("service_registration \"kubernetes\" {}\n", ""),
    )
    .unwrap();
    let (ok, _, err) = merge_values(&no_registration, &example);
    assert!(ok, "{err}");
    assert!(
        err.contains("no service_registration \"kubernetes\" stanza"),
        "{err}"
    );

    // The server pod as the official chart builds it from these values.
    let mut volumes = server["volumes"].as_array().unwrap().clone();
    volumes.push(json!({
        "name": "data",
        "persistentVolumeClaim": {"claimName": "data-openbao-dc1-0"}
    }));
    let mut containers = vec![json!({
        "name": "openbao",
        "image": "quay.io/openbao/openbao:2.5.3",
        "volumeMounts": server["volumeMounts"],
    })];
    containers.extend(
        server["extraContainers"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    let declared: BTreeSet<&str> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for c in &containers {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                declared.contains(m["name"].as_str().unwrap()),
                "{}: {m} names no volume",
                c["name"]
            );
        }
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "openbao-dc1-0", "labels": server["extraLabels"]},
        "spec": {
            "shareProcessNamespace": server["shareProcessNamespace"],
            "containers": containers,
            "volumes": volumes,
        }
    });
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    let lines = kubernetes_validate(&file);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("passed for resource pod/openbao-dc1-0")),
        "{}",
        lines.join("\n")
    );
}

/// Metric names (`vault_dr_*`) in a PromQL expression.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("vault_dr_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Every sample name a `/metrics` text can contain: the families of its `# TYPE` lines, with
/// `_bucket`, `_sum` and `_count` for histograms and summaries.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            out.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

/// The PromQL expressions of the dashboard, after checking it parses and has panels.
pub(crate) fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "vault-dr");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let titles: String = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect::<Vec<_>>()
        .join("|");
    for topic in [
        "leader", "primary", "role", "lag", "latency", "cpu", "memory", "failover",
    ] {
        assert!(titles.contains(topic), "no panel about {topic}: {titles}");
    }
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.iter().all(|e| !metric_names(e).is_empty()));
    exprs
}

/// The PromQL expressions of the rendered PrometheusRule.
pub(crate) fn rule_exprs() -> Vec<String> {
    let docs = yaml_docs(&render(&value_sets()[1].1));
    find(&docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_owned())
        .collect()
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported_by_the_agent_or_coordinator() {
    // Static parts first: a broken chart should fail before OpenBao starts.
    let dashboard = dashboard_exprs();
    let rules = rule_exprs();

    // One coordinator (probe every 500 ms, reports fresh for 3 s), an agent per cluster
    // reporting every 500 ms; no DR token, no replication.
    let mut lab = vault_dr_lab::harness::Group::builder()
        .clusters(["helm-a", "helm-b"])
        .coordinators(1)
        .ha(Backend::Local)
        .dr_token(false)
        .policy_file(vault_dr_coordinator::config::PolicyFile {
            probe_interval: Some(Duration::from_millis(500)),
            probe_timeout: Some(Duration::from_millis(400)),
            report_ttl: Some(Duration::from_secs(3)),
            ..Default::default()
        })
        .agents(|a| {
            a.interval = Duration::from_millis(500);
            a.replication = None;
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("lab start failed (run scripts/setup.sh?): {e}"));
    lab.group.start_all().await.unwrap();
    lab.start_agents().await.unwrap();
    let coord_url = lab.group.urls();
    let agent_urls: Vec<(String, String)> = lab
        .agents
        .iter()
        .map(|(cluster, a)| (cluster.clone(), format!("{}/metrics", a.url)))
        .collect();

    // Wait until the leader has probed both clusters and holds a report from each agent, so
    // every per-cluster family exists.
    let client = vault_dr_common::http::client_builder().build().unwrap();
    let coordinator_metrics = wait_for(
        "the coordinator to lead with two reports",
        Duration::from_secs(60),
        || async {
            let text = get_text(&client, &format!("{coord_url}/metrics")).await;
            let ready = client
                .get(format!("{coord_url}/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let ages = text
                .lines()
                .filter(|l| l.starts_with("vault_dr_coordinator_report_age_seconds{"))
                .count();
            if ready && ages >= 2 && text.contains("vault_dr_coordinator_cluster_state{") {
                Ok(text)
            } else {
                Err(format!("\n{text}"))
            }
        },
    )
    .await;
    let mut exported = exported_names(&coordinator_metrics);
    for (cluster, url) in &agent_urls {
        let text = get_text(&client, url).await;
        assert!(
            vault_dr_tests::agents::metric(&text, "vault_dr_agent_up") == 1.0,
            "agent at {url} is not up:\n{text}"
        );
        // Every agent series names its cluster and node, so the queries' `by (cluster, node)`
        // needs no relabelling.
        let node = format!("{cluster}-0");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, _) = line.rsplit_once(' ').unwrap();
            let (_, labels) = vault_dr_tests::agents::parse_series(series);
            assert_eq!(labels.get("cluster"), Some(cluster), "{line}");
            assert_eq!(labels.get("node"), Some(&node), "{line}");
        }
        exported.extend(exported_names(&text));
    }

    let mut missing = BTreeMap::new();
    for (source, exprs) in [("dashboard", &dashboard), ("alerts", &rules)] {
        for e in exprs.iter() {
            for m in metric_names(e) {
                if !exported.contains(&m) {
                    missing.insert(m, format!("{source}: {e}"));
                }
            }
        }
    }

    for (_, agent) in std::mem::take(&mut lab.agents) {
        agent.shutdown().await.unwrap().unwrap();
    }
    assert_eq!(
        lab.group.terminate(0, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        lab.group.logs()
    );
    drop(lab);

    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:#?}\nexported: {exported:#?}"
    );
}

/// A reinstall (`helm uninstall` keeps the topology ConfigMap; the client Service is gone)
/// renders the client Service for the topology's primary, not the values' first primary:
/// `helm template --dry-run=server` against the fake apiserver (or the cluster of
/// `VAULT_DR_TEST_KUBECONFIG`) holding a term-4 topology with `dc2` as primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_renders_the_client_service_for_the_topologys_primary() {
    use vault_dr_coordinator::model::topology::Topology;
    use vault_dr_tests::fake_apiserver::test_client;
    let kube = test_client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig_file(dir.path()).unwrap();
    let (lease, configmap, service) = (
        kube.name("vault-dr-coordinator"),
        kube.name("vault-dr-topology"),
        kube.name("vault-dr-active"),
    );
    let values = [
        format!("coordinator.coordination.leaseName={lease}"),
        format!("coordinator.coordination.configMapName={configmap}"),
        format!("traffic.service={service}"),
    ];
    let render_live = || {
        let mut cmd = Command::new(tool("bin/helm"));
        cmd.args(["template", "vault-dr"])
            .arg(chart())
            .args([
                "--dry-run=server",
                "--namespace",
                &kube.namespace,
                "--kubeconfig",
            ])
            .arg(&kubeconfig);
        for v in &values {
            cmd.args(["--set", v]);
        }
        let (ok, out, err) = run(&mut cmd, None);
        assert!(ok, "helm template --dry-run=server failed:\n{err}");
        let docs = yaml_docs(&out);
        one(&docs, "Service", &service)["spec"]["selector"].clone()
    };
    let selects = |dc: &str| {
        json!({
            "app.kubernetes.io/instance": format!("openbao-{dc}"),
            "component": "server",
            "openbao-active": "true",
        })
    };
    // A first install: nothing there yet, the values' primary.
    assert_eq!(render_live(), selects("dc1"));
    // What an uninstall leaves after failovers: the topology of term 4 with dc2 as primary.
    let mut term4 = Topology::initial("dc2");
    term4.term = 4;
    kube.leave_topology(&lease, &configmap, &term4)
        .await
        .unwrap();
    assert_eq!(
        render_live(),
        selects("dc2"),
        "the reinstall selects the topology's primary"
    );
    if kube.fake().is_none() {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::ConfigMap;
        let dp = kube::api::DeleteParams::default();
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(kube.client.clone(), &kube.namespace);
        let _ = cms.delete(&configmap, &dp).await;
        let leases: kube::Api<Lease> = kube::Api::namespaced(kube.client.clone(), &kube.namespace);
        let _ = leases.delete(&lease, &dp).await;
    }
}

/// Whether `call` is granted by one of the Role's `rules`.
fn allowed(rules: &[Value], call: &vault_dr_tests::fake_apiserver::Call) -> bool {
    let has = |v: &Value, s: &str| v.as_array().is_some_and(|a| a.iter().any(|x| x == s));
    rules.iter().any(|r| {
        has(&r["apiGroups"], &call.group)
            && has(&r["resources"], &call.resource)
            && has(&r["verbs"], &call.verb)
            && match r["resourceNames"].as_array() {
                None => true,
                Some(names) if names.is_empty() => true,
                Some(names) => call
                    .name
                    .as_deref()
                    .is_some_and(|n| names.iter().any(|x| x == n)),
            }
    })
}

/// The acceptance test of the chart's RBAC: render the chart (CI values: Kubernetes coordination,
/// Service switch), run the coordinator's Kubernetes backend against the fake apiserver through a
/// whole failover, and check that every API call it made is allowed by the rendered Role and that
/// the client Service now selects the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_of_a_failover_is_allowed_by_the_rendered_role() {
    use std::sync::Arc;
    use vault_dr_coordinator::coordination::Coordination;
    use vault_dr_coordinator::coordination::journal_copy::{
        ConfigMapJournalCopy, journal_configmap_name,
    };
    use vault_dr_coordinator::coordination::kubernetes::KubernetesCoordination;
    use vault_dr_coordinator::failover::actions::Actions;
    use vault_dr_coordinator::failover::actions::test_util::Recorder;
    use vault_dr_coordinator::failover::events::KubernetesEvents;
    use vault_dr_coordinator::failover::executor::Executor;
    use vault_dr_coordinator::failover::hooks::{Hooks, StepHook};
    use vault_dr_coordinator::model::CandidateTable;
    use vault_dr_coordinator::model::topology::Topology;
    use vault_dr_coordinator::model::{FailoverStatus, Step};
    use vault_dr_coordinator::store::Store;
    use vault_dr_coordinator::store::embedded::EmbeddedStore;
    use vault_dr_coordinator::store::shared_journal::SharedJournal;
    use vault_dr_coordinator::traffic::kubernetes::KubernetesServiceSwitch;
    use vault_dr_tests::fake_apiserver::FakeApiServer;

    let ci = vec![
        "-f".to_owned(),
        chart().join("ci/test-values.yaml").display().to_string(),
    ];
    let role_text = {
        let (ok, out, err) = run(
            Command::new(tool("bin/helm"))
                .args(["template", "vault-dr"])
                .arg(chart())
                .args([
                    "--namespace",
                    NAMESPACE,
                    "-s",
                    "templates/coordinator-role.yaml",
                ])
                .args(&ci),
            None,
        );
        assert!(ok, "{err}");
        out
    };
    let role = yaml_docs(&role_text).remove(0);
    let rules = role["rules"].as_array().unwrap().clone();

    // The coordinator's own configuration as the chart renders it.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bearer\n").unwrap();
    let env = BTreeMap::from([
        (
            coord_config::ENV_TOKEN_FILE.to_owned(),
            token.display().to_string(),
        ),
        (
            coord_config::ENV_VAULT_TOKEN_FILE.to_owned(),
            token.display().to_string(),
        ),
        (coord_config::ENV_NAMESPACE.to_owned(), NAMESPACE.to_owned()),
        (
            coord_config::ENV_ID.to_owned(),
            "vault-dr-coordinator-0".to_owned(),
        ),
    ]);
    let config = CoordConfig::parse(&rendered_config(&ci), dir.path(), &env).unwrap();
    let coord_config::CoordinationConfig::Kubernetes {
        namespace,
        lease_name,
        configmap_name,
        ..
    } = config.coordination.clone()
    else {
        panic!("the CI values must select the kubernetes backend");
    };
    let coord_config::TrafficConfig::Kubernetes { service, .. } = config.traffic.clone() else {
        panic!("the CI values must select the Service switch");
    };
    let primary = config.cluster(&config.initial_primary).unwrap().clone();
    let target = config
        .clusters
        .iter()
        .find(|c| c.name != primary.name)
        .unwrap()
        .clone();

    // The user's client Service exists before vault-dr runs and selects the primary.
    let fake = FakeApiServer::start().await.unwrap();
    let client = fake.client().unwrap();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), &namespace);
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": { "name": service, "namespace": namespace },
        "spec": { "selector": primary.selector, "ports": [{ "port": 8200 }] }
    }))
    .unwrap();
    services.create(&Default::default(), &svc).await.unwrap();
    let before = fake.calls().len();

    let coordination = Arc::new(KubernetesCoordination::new(
        client.clone(),
        namespace.clone(),
        lease_name,
        configmap_name.clone(),
        config.id.clone(),
        Duration::from_secs(5),
        Duration::from_secs(1),
    ));
    assert!(coordination.try_acquire_or_renew().await.unwrap());
    let current = coordination
        .write_topology(&Topology::initial(primary.name.clone()), None)
        .await
        .unwrap();
    // The store as `run` builds it without MongoDB: the replica's own embedded store, its
    // journal also kept in the ConfigMap every replica reads.
    let journal_name = journal_configmap_name(&configmap_name);
    let own: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.sqlite"), Duration::from_secs(60)).unwrap(),
    );
    let store: Arc<dyn Store> = Arc::new(
        SharedJournal::new(
            own,
            Arc::new(ConfigMapJournalCopy::new(
                client.clone(),
                &namespace,
                journal_name.clone(),
            )),
            &prometheus::Registry::new(),
        )
        .unwrap(),
    );
    store.init().await.unwrap();
    let recorder = Recorder::new();
    let events = Arc::new(
        KubernetesEvents::new(
            client.clone(),
            namespace.clone(),
            configmap_name,
            config.id.clone(),
        )
        .unwrap(),
    );
    let actions = Actions {
        traffic: Arc::new(KubernetesServiceSwitch::new(
            client.clone(),
            namespace.clone(),
            service.clone(),
        )),
        ..recorder.actions()
    };
    let hooks: Vec<Arc<dyn StepHook>> = vec![events.clone()];
    let executor = Executor::new(
        config.id.clone(),
        coordination.clone(),
        store,
        actions,
        config.clusters.clone(),
    )
    .with_hook(Arc::new(Hooks(hooks)));
    let table = CandidateTable {
        at: chrono::Utc::now(),
        candidates: Vec::new(),
        winner: Some(target.name.clone()),
    };
    executor
        .begin(&current, &target.name, "primary down (test)", table, false)
        .await
        .unwrap();
    let done = executor.resume().await.unwrap().unwrap();
    assert_eq!(done.status, FailoverStatus::Done);
    assert_eq!(done.steps.len(), Step::ALL.len());
    events.flush().await;
    coordination.release().await.unwrap();

    let calls: Vec<_> = fake.calls().into_iter().skip(before).collect();
    assert!(calls.iter().any(|c| c.resource == "leases"), "{calls:?}");
    assert!(
        calls
            .iter()
            .any(|c| c.resource == "configmaps" && c.verb == "update"),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.resource == "services" && c.verb == "patch"),
        "{calls:?}"
    );
    for verb in ["create", "update"] {
        assert!(
            calls.iter().any(|c| c.resource == "configmaps"
                && c.verb == verb
                && (verb == "create" || c.name.as_deref() == Some(journal_name.as_str()))),
            "the journal's copy is written ({verb}): {calls:?}"
        );
    }
    assert!(
        calls
            .iter()
            .any(|c| c.resource == "events" && c.verb == "create"),
        "{calls:?}"
    );
    let denied: Vec<_> = calls.iter().filter(|c| !allowed(&rules, c)).collect();
    assert!(
        denied.is_empty(),
        "calls the rendered Role does not allow: {denied:#?}\nrules: {rules:#?}"
    );
    for c in &calls {
        assert_eq!(
            c.namespace.as_deref(),
            Some(namespace.as_str()),
            "namespaced only: {c:?}"
        );
    }
    let selector = services
        .get(&service)
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    assert_eq!(
        selector, target.selector,
        "the client Service must select the new primary"
    );
}

/// `coordinator.logFormat` and `agent.logFormat` reach both binaries as their log-format
/// variables; the older `logJson: false` still means text, and any other format fails the
/// render naming the value.
#[test]
fn the_log_format_values_reach_both_binaries_and_a_bad_one_fails_the_render() {
    let formats = |extra: &[&str]| {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let docs = yaml_docs(&render(&extra));
        let env = one(&docs, "Deployment", "vault-dr-coordinator")["spec"]["template"]["spec"]
            ["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        let coordinator = env
            .iter()
            .find(|e| e["name"] == vault_dr_coordinator::cli::ENV_LOG_FORMAT)
            .map(|e| e["value"].as_str().unwrap().to_owned());
        let agent = one(&docs, "ConfigMap", "vault-dr-agent")["data"]
            [vault_dr_agent::config::ENV_LOG_FORMAT]
            .as_str()
            .map(str::to_owned);
        (coordinator, agent)
    };
    let json = Some("json".to_owned());
    let text = Some("text".to_owned());
    assert_eq!(formats(&[]), (json.clone(), json.clone()));
    assert_eq!(
        formats(&["--set", "coordinator.logFormat=text"]),
        (text.clone(), json.clone())
    );
    assert_eq!(
        formats(&["--set", "agent.logJson=false"]),
        (json, text),
        "the older switch"
    );
    let (ok, _, err) = run(
        Command::new(tool("bin/helm"))
            .args(["template", "vault-dr"])
            .arg(chart())
            .args(["--set", "agent.logFormat=xml"]),
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("agent.logFormat must be json or text"),
        "{err}"
    );
}
