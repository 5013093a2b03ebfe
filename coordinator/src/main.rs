//! `vault-dr`: the coordinator service and the operator's command line.

use clap::Parser;
use vault_dr_common::exit;
use vault_dr_coordinator::cli::{self, Cli, Command};

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(exit::USAGE);
        }
        Err(e) => {
            let _ = e.print();
            std::process::exit(0);
        }
    };
    vault_dr_common::telemetry::init(matches!(&cli.command, Command::Coordinator(a) if a.log_json));
    let code = cli::main(cli.command).await;
    std::process::exit(code);
}
