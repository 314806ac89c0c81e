//! The `netward` command line. Exit codes everywhere: 0 ok, 1 denied / findings, 2 error.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
pub mod monitor;
pub mod status;

#[derive(Parser)]
#[command(
    name = "netward",
    version,
    about = "Kubernetes NetworkPolicy enforcement with eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the per-node agent (the DaemonSet's process).
    Agent(agent::AgentArgs),
    /// What the agent on this node enforces.
    Status(status::StatusArgs),
    /// Stream verdict events live from the agent on this node.
    Monitor(monitor::MonitorArgs),
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Agent(a) => agent::run(a),
        Command::Status(a) => status::run(a),
        Command::Monitor(a) => monitor::run(a),
    }
}
