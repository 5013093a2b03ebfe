//! `vault-dr-launch` as a shim named `bao` (the form a chart with a fixed server command
//! needs): installed by `vault-dr-launch install`, it runs `bao server ...` only with the
//! agent's permit and passes every other command to the real binary at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vault_dr_agent::launch::{ControlDir, Permit};

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn the_installed_shim_holds_a_server_start_and_passes_other_commands_through() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let installed = Command::new(env!("CARGO_BIN_EXE_vault-dr-launch"))
        .args(["install".as_ref(), bin.as_os_str()])
        .output()
        .unwrap();
    assert!(installed.status.success(), "{installed:?}");
    let shim = bin.join("bao");
    assert!(shim.exists());

    // The "real" server: records its arguments, then runs until stopped.
    let out = dir.path().join("out");
    let real = dir.path().join("real-bao");
    std::fs::write(
        &real,
        format!(
            "#!/bin/sh\nif [ \"$1\" = status ]; then echo real status; exit 2; fi\necho \"$@\" >> {}\nexec sleep 30\n",
            out.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let control = dir.path().join("control");

    // Not a server start: the real binary at once, its output and exit code.
    let status = Command::new(&shim)
        .arg("status")
        .env("VAULT_DR_LAUNCH_PROGRAM", &real)
        .env("VAULT_DR_LAUNCH_CONTROL_DIR", &control)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(2), "{status:?}");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "real status\n");

    // A server start waits for the permit.
    let mut server = Command::new(&shim)
        .args(["server", "-config=/tmp/c.hcl"])
        .env("VAULT_DR_LAUNCH_PROGRAM", &real)
        .env("VAULT_DR_LAUNCH_CONTROL_DIR", &control)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the control directory", || control.exists());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!out.exists(), "the server started without a permit");
    let c = ControlDir::new(&control);
    c.write_permit(&Permit {
        term: 1,
        non_voter: false,
        reason: "test".into(),
    })
    .unwrap();
    wait_until("the permitted start", || out.exists());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "server -config=/tmp/c.hcl\n"
    );
    c.request_stop(false).unwrap();
    wait_until("the stop", || c.running().is_none());
    assert!(c.last_ended().is_some_and(|e| e.asked));
    let _ = server.kill();
    let _ = server.wait();

    // Without its environment the shim refuses (64), naming the variable.
    let bare = Command::new(&shim)
        .arg("server")
        .env_remove("VAULT_DR_LAUNCH_PROGRAM")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("VAULT_DR_LAUNCH_PROGRAM"));
    assert!(Path::new(&shim).exists());
}
