//! `vault-dr-agent`: parse the configuration (exit 64 naming the field when invalid), bind the
//! listener and run the agent on a single-threaded runtime until SIGINT/SIGTERM.

use anyhow::Context;
use vault_dr_agent::{Config, config::ProcessEnv};

fn main() -> anyhow::Result<()> {
    // Before any TLS client is built.
    vault_dr_common::http::install_crypto_provider();
    let config = match Config::parse(std::env::args_os(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            e.print();
            std::process::exit(e.exit_code());
        }
    };
    vault_dr_common::telemetry::init(config.log_format);
    // One thread is plenty for a probe a second, and keeps the resident set small; the write
    // gate carries the node's client traffic and gets two.
    let runtime = if config.gate.is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        // A setting that only fails when used (the gate's certificate) exits 64 like any
        // other invalid setting.
        if let Err(e) =
            vault_dr_agent::run(config, listener, vault_dr_common::shutdown::signal()).await
        {
            e.print();
            std::process::exit(e.exit_code());
        }
        Ok(())
    })
}
