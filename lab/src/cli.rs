//! The `vault-dr-lab` command line: `drill` and `bench …` (`vault-dr drill` and `vault-dr
//! bench …` run this binary with the same arguments).

use crate::drill::command::{self, DrillArgs};

/// vault-dr-lab: the drill and the benchmarks of vault-dr, on real servers on this machine.
#[derive(Debug, clap::Parser)]
#[command(name = "vault-dr-lab", version, about)]
pub struct LabCli {
    /// What to run.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Runs a whole DR group on this machine (four OpenBao clusters, agents, three
    /// coordinators, a client), kills the primary and shows the failover: timeline, RTO, RPO.
    Drill(DrillArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

/// Runs a subcommand and returns the process exit code.
pub async fn main(command: LabCommand) -> i32 {
    match command {
        LabCommand::Drill(args) => command::run(&args).await,
        LabCommand::Bench(b) => crate::bench::main(b).await,
    }
}
