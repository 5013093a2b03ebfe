//! `vault-dr`: the coordinator service and the operator's command line.

use clap::Parser;
use vault_dr_common::exit;
use vault_dr_coordinator::cli::{self, Cli};

#[tokio::main]
async fn main() {
    // Before any TLS client (reqwest, kube, mongodb) or the TLS listener is built.
    vault_dr_common::http::install_crypto_provider();
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
    // Every subcommand logs in the format asked for (`drill` and `bench` run another binary).
    vault_dr_common::telemetry::init(cli.log_format());
    let code = cli::main(cli.command).await;
    std::process::exit(code);
}
