//! The `netward` command line. Exit codes everywhere: 0 ok, 1 denied / findings, 2 error.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
pub enum Command {}

// Until the first subcommand lands, `Command` has no variants.
#[allow(unreachable_code)]
pub fn main() -> ExitCode {
    match Cli::parse().command {}
}
