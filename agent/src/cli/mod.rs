//! The `netward` command line. Exit codes everywhere: 0 ok, 1 denied / findings, 2 error.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod lab;

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
    /// A manifest directory as a real node on this machine: pods, servers, enforcement, probes.
    Lab(lab::LabArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}
