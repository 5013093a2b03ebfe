//! Locating the executables the lab runs. Installed tools (`bao`, `secantusd-py`,
//! `prometheus`, ...) with [`find`]: an environment override, then the project's `.tools/bin`
//! (installed by `scripts/setup.sh`), then `PATH`. This workspace's own binaries (`vault-dr`,
//! `vault-dr-agent`, `vault-dr-lab`) with [`built_binary`]: an environment override, then beside
//! the running executable or one folder up (a test binary lives in `target/<profile>/deps/`).
//! The one place every test, bench and lab module finds a binary.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::LabError;

/// The environment variable that overrides the search for `tool`: `VAULT_DR_` + the tool's
/// name in upper case with `-` and `.` as `_` (`bao` -> `VAULT_DR_BAO`,
/// `secantusd-py` -> `VAULT_DR_SECANTUSD_PY`).
pub fn env_var(tool: &str) -> String {
    let mut name = String::from("VAULT_DR_");
    for c in tool.chars() {
        match c {
            '-' | '.' => name.push('_'),
            c => name.push(c.to_ascii_uppercase()),
        }
    }
    name
}

/// Finds `tool`: the env variable [`env_var`]`(tool)` if set, else
/// `<workspace>/.tools/bin/<tool>`, else the first executable `<tool>` on `PATH`.
pub fn find(tool: &str) -> Result<PathBuf, LabError> {
    find_with(tool, |k| std::env::var_os(k), workspace_root())
}

/// The directory holding the workspace's `Cargo.toml` (the one with `[workspace]`), searched
/// upwards from the current directory and then from the running executable (a test binary lives
/// in `<workspace>/target/...`).
pub fn workspace_root() -> Option<PathBuf> {
    let from_cwd = std::env::current_dir().ok();
    let from_exe = std::env::current_exe().ok();
    [from_cwd, from_exe]
        .into_iter()
        .flatten()
        .find_map(|start| workspace_root_from(&start))
}

/// [`workspace_root`] starting at `start`.
fn workspace_root_from(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).ok()?;
        text.lines()
            .any(|l| l.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

/// [`find`] with the environment and workspace root given, for tests.
fn find_with(
    tool: &str,
    env: impl Fn(&str) -> Option<OsString>,
    root: Option<PathBuf>,
) -> Result<PathBuf, LabError> {
    let var = env_var(tool);
    let mut looked = Vec::new();
    if let Some(p) = env(&var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        looked.push(format!("${var}={}", p.display()));
    }
    if let Some(root) = root {
        let p = root.join(".tools").join("bin").join(tool);
        if is_executable(&p) {
            return Ok(p);
        }
        looked.push(p.display().to_string());
    }
    if let Some(path) = env("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(tool);
            if is_executable(&p) {
                return Ok(p);
            }
        }
        looked.push("PATH".to_owned());
    }
    Err(LabError::ToolNotFound {
        tool: tool.to_owned(),
        env_var: var,
        looked: looked.join(", "),
    })
}

/// The environment variable that overrides where the workspace binary `name` is: `name` in
/// upper case with `-` as `_`, then `_BIN` (`vault-dr` -> `VAULT_DR_BIN`, `vault-dr-agent` ->
/// `VAULT_DR_AGENT_BIN`, `vault-dr-lab` -> `VAULT_DR_LAB_BIN`).
pub fn built_binary_env_var(name: &str) -> String {
    let mut var: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    var.push_str("_BIN");
    var
}

/// Finds this workspace's binary `name` (`vault-dr`, `vault-dr-agent`, `vault-dr-lab`):
/// `$`[`built_binary_env_var`]`(name)` if set, else next to the running executable, else one
/// folder up (a test binary lives in `target/<profile>/deps/`). An error saying to build it
/// otherwise.
pub fn built_binary(name: &str) -> Result<PathBuf, LabError> {
    let exe =
        std::env::current_exe().map_err(|e| LabError::io("locate the running executable", e))?;
    built_binary_with(name, |k| std::env::var_os(k), &exe)
}

/// [`built_binary`] with the environment and the running executable given, for tests.
fn built_binary_with(
    name: &str,
    env: impl Fn(&str) -> Option<OsString>,
    exe: &Path,
) -> Result<PathBuf, LabError> {
    let var = built_binary_env_var(name);
    if let Some(p) = env(&var).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(p.display().to_string());
    }
    Err(LabError::ToolNotFound {
        tool: name.to_owned(),
        env_var: var,
        looked: format!(
            "{} (build it first: cargo build -p vault-dr-coordinator -p vault-dr-agent \
             -p vault-dr-lab --bins)",
            looked.join(", ")
        ),
    })
}

/// Whether `path` is (or links to) a regular file with an execute bit.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Writes `text` to `path`, readable by the owner only (configs name token files and maybe a
/// MongoDB URI).
pub fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(format!("create {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn env_var_names_are_upper_snake_case() {
        assert_eq!(env_var("bao"), "VAULT_DR_BAO");
        assert_eq!(env_var("secantusd-py"), "VAULT_DR_SECANTUSD_PY");
    }

    #[test]
    fn env_override_wins_over_tools_dir_and_path() {
        let tmp = tempfile::tempdir().unwrap();
        let over = exe(tmp.path(), "my-bao");
        std::fs::create_dir_all(tmp.path().join(".tools/bin")).unwrap();
        exe(&tmp.path().join(".tools/bin"), "bao");
        let over2 = over.clone();
        let found = find_with(
            "bao",
            move |k| (k == "VAULT_DR_BAO").then(|| over2.clone().into_os_string()),
            Some(tmp.path().to_path_buf()),
        )
        .unwrap();
        assert_eq!(found, over);
    }

    #[test]
    fn tools_dir_wins_over_path() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join(".tools/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let want = exe(&bin, "bao");
        let on_path = tmp.path().join("p");
        std::fs::create_dir_all(&on_path).unwrap();
        exe(&on_path, "bao");
        let path = on_path.clone().into_os_string();
        let found = find_with(
            "bao",
            move |k| (k == "PATH").then(|| path.clone()),
            Some(tmp.path().to_path_buf()),
        )
        .unwrap();
        assert_eq!(found, want);
    }

    #[test]
    fn path_is_searched_last_and_non_executables_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("prometheus"), "not executable").unwrap();
        let want = exe(&b, "prometheus");
        let path = std::env::join_paths([&a, &b]).unwrap();
        let found = find_with(
            "prometheus",
            move |k| (k == "PATH").then(|| path.clone()),
            None,
        )
        .unwrap();
        assert_eq!(found, want);
    }

    #[test]
    fn missing_tool_error_points_at_setup_script() {
        let err = find_with("no-such-tool-xyz", |_| None, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("scripts/setup.sh"), "{msg}");
        assert!(msg.contains("VAULT_DR_NO_SUCH_TOOL_XYZ"), "{msg}");
    }

    #[test]
    fn built_binaries_have_one_env_override_each() {
        assert_eq!(built_binary_env_var("vault-dr"), "VAULT_DR_BIN");
        assert_eq!(built_binary_env_var("vault-dr-agent"), "VAULT_DR_AGENT_BIN");
        assert_eq!(built_binary_env_var("vault-dr-lab"), "VAULT_DR_LAB_BIN");
    }

    #[test]
    fn a_built_binary_is_found_beside_the_executable_or_one_folder_up() {
        let tmp = tempfile::tempdir().unwrap();
        let deps = tmp.path().join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let test_exe = exe(&deps, "some-test");
        let up = exe(tmp.path(), "vault-dr");
        assert_eq!(
            built_binary_with("vault-dr", |_| None, &test_exe).unwrap(),
            up
        );
        let beside = exe(&deps, "vault-dr");
        assert_eq!(
            built_binary_with("vault-dr", |_| None, &test_exe).unwrap(),
            beside
        );
        let over = built_binary_with(
            "vault-dr",
            |k| (k == "VAULT_DR_BIN").then(|| "/opt/vault-dr".into()),
            &test_exe,
        )
        .unwrap();
        assert_eq!(over, PathBuf::from("/opt/vault-dr"));
        let err = built_binary_with("vault-dr-agent", |_| None, &test_exe).unwrap_err();
        assert!(err.to_string().contains("VAULT_DR_AGENT_BIN"), "{err}");
    }

    #[test]
    fn workspace_root_is_found_from_a_nested_dir() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        let nested = tmp.path().join("crate/src");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(
            tmp.path().join("crate/Cargo.toml"),
            "[package]\nname = \"x\"\n",
        )
        .unwrap();
        assert_eq!(workspace_root_from(&nested).as_deref(), Some(tmp.path()));
    }
}
