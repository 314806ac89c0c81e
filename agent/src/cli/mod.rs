//! The `netward` command line. Exit codes everywhere: 0 ok, 1 denied / findings, 2 error.
//!
//! One file per subcommand, each with an `Args` struct (clap derive) and
//! `run(args) -> anyhow::Result<ExitCode>`; adding a subcommand is a new file plus one enum
//! variant and one match arm below. Shared pieces: [`common`] (loading manifests, output
//! format, addresses) and [`describe`] (policies and rules in one line).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
pub mod common;
pub mod describe;
pub mod explain;
pub mod lab;
pub mod lint;
pub mod matrix;
pub mod monitor;
pub mod plan;
pub mod status;

/// Exit code: success (allowed, no findings).
pub const EXIT_OK: u8 = 0;
/// Exit code: the answer is "denied" or there are findings.
pub const EXIT_DENIED: u8 = 1;
/// Exit code: the command could not do its job.
pub const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "netward",
    version,
    about = "Kubernetes NetworkPolicy enforcement with eBPF",
    long_about = "Kubernetes NetworkPolicy enforcement with eBPF.\n\nExit codes: 0 ok, 1 denied or findings, 2 error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Reachability of every pod to every pod on one port, computed through the compiled Plan.
    Matrix(matrix::Args),
    /// Is one flow allowed, and which policies and rules decide it on each side.
    Explain(explain::Args),
    /// Find the pitfalls of the policies (missing DNS, selectors matching nothing, ...).
    Lint(lint::Args),
    /// Compile the policies and show the Plan's size (and, with --dump, its entries).
    Plan(plan::Args),
    /// Run the per-node agent (the DaemonSet's process).
    Agent(agent::AgentArgs),
    /// What the agent on this node enforces.
    Status(status::StatusArgs),
    /// Stream verdict events live from the agent on this node.
    Monitor(monitor::MonitorArgs),
    /// A manifest directory as a real node on this machine: pods, servers, enforcement, probes.
    Lab(lab::LabArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Matrix(args) => matrix::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Lint(args) => lint::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Agent(args) => Ok(agent::run(args)),
        Command::Status(args) => Ok(status::run(args)),
        Command::Monitor(args) => Ok(monitor::run(args)),
        Command::Lab(args) => lab::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
