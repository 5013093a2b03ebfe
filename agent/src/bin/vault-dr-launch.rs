//! `vault-dr-launch --control-dir DIR -- PROGRAM [ARGS...]`: runs the server only when the
//! node's agent has permitted the start (see `vault_dr_agent::launch`). Exit 64 on a bad
//! command line.

use std::ffi::OsString;
use vault_dr_agent::launch::{ControlDir, Launcher};

const USAGE: &str = "usage: vault-dr-launch --control-dir DIR -- PROGRAM [ARGS...]";

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Launcher, String> {
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

fn main() {
    vault_dr_common::telemetry::init(vault_dr_common::telemetry::LogFormat::Text);
    let launcher = match parse(std::env::args_os().skip(1)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vault-dr-launch: {e}\n{USAGE}");
            std::process::exit(vault_dr_common::exit::USAGE);
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
