//! Logs written to a file or a pipe carry no terminal colour codes: the real `vault-dr
//! coordinator` process runs with its stderr in a file, and the file holds plain text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_log_file_holds_no_escape_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        r#"
listen = "127.0.0.1:0"
token_file = "token"
[store]
path = "store.sqlite"
[coordination]
path = "coordination.json"
[[clusters]]
name = "dc1"
role = "primary"
api_addrs = ["http://127.0.0.1:9"]
nodes = ["dc1-0"]
[[clusters]]
name = "dc2"
api_addrs = ["http://127.0.0.1:9"]
nodes = ["dc2-0"]
"#,
    )
    .unwrap();
    let log_path = dir.path().join("coordinator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-dr"))
        .args(["coordinator", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Until it has logged that it listens and that it leads (a level, fields and a span each).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("coordinator listening") && text.contains("became leader") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("coordinator listening") && text.contains("became leader"),
        "the coordinator did not log its start within 20 s:\n{text}"
    );
    let bytes = std::fs::read(&log_path).unwrap();
    assert!(
        !bytes.contains(&0x1b),
        "escape bytes in the log file:\n{}",
        String::from_utf8_lossy(&bytes)
    );
}
