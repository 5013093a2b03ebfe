//! `vault-dr-lab`: the drill and the benchmarks. `vault-dr drill` and `vault-dr bench …` run
//! this binary when it is installed beside `vault-dr`.

use clap::Parser;
use vault_dr_common::exit;
use vault_dr_lab::cli::{self, LabCli};

#[tokio::main]
async fn main() {
    vault_dr_common::http::install_crypto_provider();
    let cli = match LabCli::try_parse() {
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
    vault_dr_common::telemetry::init(vault_dr_common::telemetry::LogFormat::Text);
    std::process::exit(cli::main(cli.command).await);
}
