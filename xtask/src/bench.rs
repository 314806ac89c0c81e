//! `cargo xtask bench ...`: benchmarks. Figures are ratios measured side by side in one run
//! wherever a comparison is made (this machine is noisy).
//!
//! Each benchmark is a bench binary of the crate it measures (run through `cargo bench`), so
//! xtask itself stays free of netward's dependencies.
use std::process::Command;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum Bench {
    /// Per-packet cost of the tc programs (BPF_PROG_TEST_RUN) for the new-flow and established
    /// paths with 1, 1k, 10k, 100k policy entries. Needs root.
    Datapath(DatapathArgs),
}

#[derive(Args)]
pub struct DatapathArgs {
    /// Runs per measurement (the kernel reports the average).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Policy entries of the measured Plans, comma-separated.
    #[arg(long, default_value = "1,1000,10000,100000")]
    sizes: String,
    /// Distinct packets measured for the allowed-new-flow path.
    #[arg(long, default_value_t = 20_000)]
    new_flows: u32,
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Datapath(a) => crate::run(
            Command::new("cargo")
                .args(["bench", "--package", "netward", "--bench", "datapath", "--"])
                .args(["--repeat", &a.repeat.to_string()])
                .args(["--sizes", &a.sizes])
                .args(["--new-flows", &a.new_flows.to_string()]),
        ),
    }
}
