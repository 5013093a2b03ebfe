//! `vault-dr-launch`: runs the server only when the node's agent has permitted the start (see
//! `vault_dr_agent::launch`). Three forms:
//!
//! - `vault-dr-launch --control-dir DIR -- PROGRAM [ARGS...]`: the launcher (the lab, a
//!   container whose command you write).
//! - **Shim**: invoked under another name (a copy called `bao` or `vault` first on `PATH`), with
//!   `VAULT_DR_LAUNCH_PROGRAM` (the real server binary) and `VAULT_DR_LAUNCH_CONTROL_DIR` set:
//!   `bao server ...` is launched under the start hold; anything else (`bao status`, operator
//!   commands, a readiness probe) is the real binary at once. This is how the hold gets into a
//!   chart whose server command is fixed (the official OpenBao and Vault charts run
//!   `docker-entrypoint.sh bao server ...`, which finds `bao` on `PATH`).
//! - `vault-dr-launch install DIR [NAME]`: copies this binary to `DIR/NAME` (default `bao`),
//!   for an initContainer of an image without a shell.
//!
//! Exit 64 on a bad command line or a shim without its environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use vault_dr_agent::launch::{ControlDir, Launcher};

const USAGE: &str = "usage: vault-dr-launch --control-dir DIR -- PROGRAM [ARGS...]\n       \
                     vault-dr-launch install DIR [NAME]\n       \
                     (as a shim named e.g. bao: VAULT_DR_LAUNCH_PROGRAM and VAULT_DR_LAUNCH_CONTROL_DIR)";
/// The real server binary, for the shim.
const ENV_PROGRAM: &str = "VAULT_DR_LAUNCH_PROGRAM";
/// The control directory, for the shim.
const ENV_CONTROL_DIR: &str = "VAULT_DR_LAUNCH_CONTROL_DIR";
/// This binary's own name: any other is the shim.
const OWN_NAME: &str = "vault-dr-launch";

/// What the command line asks for.
#[derive(Debug)]
enum Form {
    /// Run the server under the start hold.
    Launch(Launcher),
    /// Run another program at once (the shim, not a server start).
    Exec(PathBuf, Vec<OsString>),
    /// Copy this binary to the path.
    Install(PathBuf),
}

fn parse_launcher(mut args: impl Iterator<Item = OsString>) -> Result<Launcher, String> {
    let mut control = None;
    loop {
        match args.next() {
            None => return Err("PROGRAM is missing (after --)".into()),
            Some(a) if a == "--control-dir" => match args.next() {
                Some(d) if !d.is_empty() => control = Some(d),
                _ => return Err("--control-dir needs a directory".into()),
            },
            Some(a) if a == "--" => break,
            Some(a) => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let control = control.ok_or("--control-dir is required")?;
    let program = args.next().ok_or("PROGRAM is missing (after --)")?;
    Ok(Launcher {
        control: ControlDir::new(control),
        program: program.into(),
        args: args.collect(),
    })
}

/// The form of `argv` (program name first); `env` reads the shim's variables.
fn parse(
    mut argv: impl Iterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Form, String> {
    let name = argv.next().unwrap_or_default();
    let called = Path::new(&name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args: Vec<OsString> = argv.collect();
    if called == OWN_NAME || called.is_empty() {
        if args.first().is_some_and(|a| a == "install") {
            let dir = args
                .get(1)
                .filter(|d| !d.is_empty())
                .ok_or("install needs a DIR")?;
            let file = args.get(2).cloned().unwrap_or_else(|| "bao".into());
            if args.len() > 3 {
                return Err(format!("unexpected argument {:?}", args[3]));
            }
            return Ok(Form::Install(Path::new(dir).join(file)));
        }
        return parse_launcher(args.into_iter()).map(Form::Launch);
    }
    // The shim.
    let program: PathBuf = env(ENV_PROGRAM)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("called as {called:?}, a shim, but {ENV_PROGRAM} is not set"))?
        .into();
    if Path::new(&name) == program {
        return Err(format!(
            "{ENV_PROGRAM} names this shim itself ({}): give the real server binary",
            program.display()
        ));
    }
    if args.first().is_some_and(|a| a == "server") {
        let control = env(ENV_CONTROL_DIR)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| format!("`{called} server` under the shim needs {ENV_CONTROL_DIR}"))?;
        return Ok(Form::Launch(Launcher {
            control: ControlDir::new(control),
            program,
            args,
        }));
    }
    Ok(Form::Exec(program, args))
}

fn main() {
    vault_dr_common::telemetry::init(vault_dr_common::telemetry::LogFormat::Text);
    let form = match parse(std::env::args_os(), |k| std::env::var_os(k)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vault-dr-launch: {e}\n{USAGE}");
            std::process::exit(vault_dr_common::exit::USAGE);
        }
    };
    let launcher = match form {
        Form::Launch(l) => l,
        Form::Exec(program, args) => {
            use std::os::unix::process::CommandExt;
            // Replaces this process; returns only on failure.
            let e = std::process::Command::new(&program).args(args).exec();
            eprintln!("vault-dr-launch: cannot run {}: {e}", program.display());
            std::process::exit(vault_dr_common::exit::SOFTWARE);
        }
        Form::Install(to) => {
            let installed = std::env::current_exe().and_then(|me| {
                std::fs::copy(&me, &to)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            });
            match installed {
                Ok(()) => {
                    println!("installed {}", to.display());
                    return;
                }
                Err(e) => {
                    eprintln!("vault-dr-launch: install {}: {e}", to.display());
                    std::process::exit(vault_dr_common::exit::SOFTWARE);
                }
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vault-dr-launch: cannot start: {e}");
            std::process::exit(vault_dr_common::exit::SOFTWARE);
        }
    };
    if let Err(e) = runtime.block_on(launcher.run()) {
        eprintln!("vault-dr-launch: {e}");
        std::process::exit(vault_dr_common::exit::SOFTWARE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> impl Iterator<Item = OsString> {
        a.iter().map(OsString::from).collect::<Vec<_>>().into_iter()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn the_launcher_form_takes_a_control_dir_and_a_program() {
        let f = parse(
            argv(&[
                "/x/vault-dr-launch",
                "--control-dir",
                "/d",
                "--",
                "bao",
                "server",
            ]),
            env(&[]),
        );
        assert!(
            matches!(&f, Ok(Form::Launch(l)) if l.program == Path::new("bao") && l.args == ["server"]),
            "{f:?}"
        );
        let no_dir = parse(argv(&["vault-dr-launch", "--", "bao"]), env(&[]));
        assert!(matches!(no_dir, Err(e) if e.contains("--control-dir")));
    }

    #[test]
    fn as_a_shim_a_server_start_is_held_and_anything_else_runs_at_once() {
        let vars = [
            (ENV_PROGRAM, "/bin/bao"),
            (ENV_CONTROL_DIR, "/openbao/data/.vault-dr"),
        ];
        let server = parse(
            argv(&["/vault-dr/bin/bao", "server", "-config=/tmp/c.hcl"]),
            env(&vars),
        );
        assert!(
            matches!(&server, Ok(Form::Launch(l)) if l.program == Path::new("/bin/bao")
                && l.control.path() == Path::new("/openbao/data/.vault-dr")
                && l.args == ["server", "-config=/tmp/c.hcl"]),
            "{server:?}"
        );
        let status = parse(argv(&["bao", "status", "-tls-skip-verify"]), env(&vars));
        assert!(
            matches!(&status, Ok(Form::Exec(p, a)) if p == Path::new("/bin/bao") && a == &["status", "-tls-skip-verify"]),
            "{status:?}"
        );
        let unset = parse(argv(&["bao", "server"]), env(&[]));
        assert!(matches!(unset, Err(e) if e.contains(ENV_PROGRAM)));
        let no_dir = parse(argv(&["bao", "server"]), env(&[(ENV_PROGRAM, "/bin/bao")]));
        assert!(matches!(no_dir, Err(e) if e.contains(ENV_CONTROL_DIR)));
        let itself = parse(
            argv(&["/bin/bao", "status"]),
            env(&[(ENV_PROGRAM, "/bin/bao")]),
        );
        assert!(matches!(itself, Err(e) if e.contains("itself")));
    }

    #[test]
    fn install_names_the_target_file() {
        let f = parse(
            argv(&["vault-dr-launch", "install", "/vault-dr/bin"]),
            env(&[]),
        );
        assert!(
            matches!(&f, Ok(Form::Install(p)) if p == Path::new("/vault-dr/bin/bao")),
            "{f:?}"
        );
        let vault = parse(
            argv(&["vault-dr-launch", "install", "/b", "vault"]),
            env(&[]),
        );
        assert!(matches!(&vault, Ok(Form::Install(p)) if p == Path::new("/b/vault")));
        assert!(parse(argv(&["vault-dr-launch", "install"]), env(&[])).is_err());
    }
}
