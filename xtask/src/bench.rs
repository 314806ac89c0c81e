//! `cargo xtask bench ...`: benchmarks. Figures are ratios measured side by side in one run
//! wherever a comparison is made (this machine is noisy).
use std::process::Command;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum Bench {
    /// iperf3 throughput and short-connection rate between two lab pods: no program vs
    /// netward (0 and N rules) vs iptables (linear and ipset). Needs root.
    Lab(LabArgs),
}

#[derive(Args)]
pub struct LabArgs {
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Seconds of each connection-rate run.
    #[arg(long, default_value_t = 3)]
    conn_seconds: u64,
    /// Rule counts, comma-separated.
    #[arg(long, default_value = "1000,10000")]
    sizes: String,
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Lab(a) => crate::run(
            Command::new("cargo")
                .args([
                    "bench",
                    "--package",
                    "netward-tests",
                    "--bench",
                    "lab",
                    "--",
                ])
                .args(["--seconds", &a.seconds.to_string()])
                .args(["--conn-seconds", &a.conn_seconds.to_string()])
                .args(["--sizes", &a.sizes]),
        ),
    }
}
