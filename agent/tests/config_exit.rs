//! The built `vault-dr-agent` binary exits 64 and names the field for bad input, and 0 for
//! `--help`.

// Test code: a failed unwrap is a failed test (clippy.toml allows it only inside #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vault-dr-agent"))
        .args(args)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("the agent binary does not run: {e}"))
}

fn assert_usage_error(args: &[&str], field: &str) {
    let out = agent(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(64),
        "args {args:?}: stderr {stderr}"
    );
    assert!(
        stderr.contains(field),
        "args {args:?}: stderr does not name {field}: {stderr}"
    );
}

const NAMES: [&str; 4] = ["--cluster", "dc1", "--node", "n1"];

fn with_names(extra: &[&'static str]) -> Vec<&'static str> {
    NAMES.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn a_malformed_vault_url_exits_64_naming_the_flag() {
    assert_usage_error(
        &with_names(&["--vault-addr", "http//nohost"]),
        "--vault-addr",
    );
}

#[test]
fn a_malformed_coordinator_url_exits_64_naming_the_flag() {
    assert_usage_error(
        &with_names(&["--coordinator-url", "::not-a-url"]),
        "--coordinator-url",
    );
}

#[test]
fn a_zero_interval_exits_64_naming_the_flag() {
    assert_usage_error(&with_names(&["--interval", "0s"]), "--interval");
}

#[test]
fn a_missing_token_file_exits_64_naming_the_flag() {
    assert_usage_error(
        &with_names(&["--vault-token-file", "/nonexistent/vault-dr/token"]),
        "--vault-token-file",
    );
    assert_usage_error(
        &with_names(&[
            "--coordinator-url",
            "http://127.0.0.1:1",
            "--coordinator-token-file",
            "/nonexistent/vault-dr/ctoken",
        ]),
        "--coordinator-token-file",
    );
}

#[test]
fn a_missing_cluster_name_exits_64_naming_the_flag() {
    assert_usage_error(&["--node", "n1"], "--cluster");
}

#[test]
fn an_unknown_flag_is_a_usage_error_with_64_not_clap_2() {
    assert_usage_error(&with_names(&["--no-such-flag"]), "--no-such-flag");
}

#[test]
fn environment_values_are_validated_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_vault-dr-agent"))
        .env_clear()
        .env("VAULT_DR_AGENT_CLUSTER", "dc1")
        .env("VAULT_DR_AGENT_NODE", "n1")
        .env("VAULT_DR_AGENT_INTERVAL", "0ms")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--interval") && stderr.contains("VAULT_DR_AGENT_INTERVAL"),
        "{stderr}"
    );
}

#[test]
fn help_exits_0_and_lists_the_environment_variables() {
    let out = agent(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for var in [
        "VAULT_DR_AGENT_VAULT_ADDR",
        "VAULT_DR_AGENT_INTERVAL",
        "VAULT_DR_AGENT_COORDINATOR_URL",
    ] {
        assert!(stdout.contains(var), "--help lacks {var}: {stdout}");
    }
}

#[test]
fn snapshot_replication_flags_exit_64_naming_the_flag() {
    assert_usage_error(&with_names(&["--replication", "rsync"]), "--replication");
    assert_usage_error(
        &with_names(&["--replication", "snapshot"]),
        "--snapshot-dir",
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "dr").unwrap();
    let token = token.to_str().unwrap();
    let snap = [
        "--replication",
        "snapshot",
        "--snapshot-dir",
        "/tmp/x",
        "--vault-token-file",
        token,
    ];
    for (flag, bad) in [
        ("--snapshot-interval", "0s"),
        ("--snapshot-keep", "0"),
        ("--restore", "later"),
    ] {
        let mut args: Vec<&str> = NAMES.to_vec();
        args.extend(snap);
        args.extend([flag, bad]);
        assert_usage_error(&args, flag);
    }
}
