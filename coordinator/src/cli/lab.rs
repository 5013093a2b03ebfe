//! `vault-dr drill` and `vault-dr bench …`: the harnesses live in their own binary,
//! `vault-dr-lab` (crate `lab/`), so the service and its image carry no lab code. These two
//! subcommands keep the commands users type: they run `vault-dr-lab` from beside this
//! executable (or `$VAULT_DR_LAB_BIN`) with the same arguments, in this process's place.

use crate::config::Env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Names the `vault-dr-lab` binary to run instead of the one beside `vault-dr`.
pub const ENV_LAB_BIN: &str = "VAULT_DR_LAB_BIN";

/// Everything after `vault-dr drill` or `vault-dr bench`, passed on unchanged (`--help` too).
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Arguments for `vault-dr-lab` (see `vault-dr-lab drill --help`, `vault-dr-lab bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// Where `vault-dr-lab` is: `$VAULT_DR_LAB_BIN`, else beside `exe`.
pub fn lab_binary(env: &impl Env, exe: &Path) -> PathBuf {
    match env.var(ENV_LAB_BIN).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => exe.with_file_name("vault-dr-lab"),
    }
}

/// Replaces this process by `vault-dr-lab <subcommand> <args…>`; returns an exit code only
/// when that cannot happen (the binary is missing or cannot run).
pub fn run(env: &impl Env, subcommand: &str, args: &LabArgs) -> i32 {
    use std::os::unix::process::CommandExt;
    use vault_dr_common::exit;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot locate the running executable: {e}");
            return exit::SOFTWARE;
        }
    };
    let lab = lab_binary(env, &exe);
    if !lab.is_file() {
        eprintln!(
            "error: `vault-dr {subcommand}` runs {}, which is not there: build it with \
             `cargo build -p vault-dr-lab` (it is not part of the service image), or name it \
             in {ENV_LAB_BIN}",
            lab.display()
        );
        return exit::UNAVAILABLE;
    }
    let e = std::process::Command::new(&lab)
        .arg(subcommand)
        .args(&args.args)
        .exec();
    eprintln!("error: cannot run {}: {e}", lab.display());
    exit::UNAVAILABLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_lab_binary_is_found_beside_vault_dr_unless_the_environment_names_one() {
        let exe = Path::new("/opt/vault-dr/bin/vault-dr");
        let none = BTreeMap::new();
        assert_eq!(
            lab_binary(&none, exe),
            PathBuf::from("/opt/vault-dr/bin/vault-dr-lab")
        );
        let named = BTreeMap::from([(ENV_LAB_BIN.to_owned(), "/tmp/lab".to_owned())]);
        assert_eq!(lab_binary(&named, exe), PathBuf::from("/tmp/lab"));
    }

    #[test]
    fn a_missing_lab_binary_is_an_unavailable_exit_that_says_how_to_build_it() {
        let env = BTreeMap::from([(
            ENV_LAB_BIN.to_owned(),
            "/nonexistent/vault-dr-lab".to_owned(),
        )]);
        let code = run(&env, "drill", &LabArgs { args: vec![] });
        assert_eq!(code, vault_dr_common::exit::UNAVAILABLE);
    }
}
