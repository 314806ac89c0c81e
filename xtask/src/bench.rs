//! `cargo xtask bench ...`: benchmarks. Figures are ratios measured side by side in one run
//! wherever a comparison is made (this machine is noisy).
//!
//! Each benchmark is a bench binary of the crate it measures (run through `cargo bench`, i.e.
//! an optimised build), so xtask itself stays free of netward's dependencies and builds fast.
use anyhow::Result;
use clap::{Args, Subcommand};
use std::process::Command;

use crate::run as run_cmd;

#[derive(Subcommand)]
pub enum Bench {
    /// Compile a synthetic cluster: compile time, peak RSS, Plan sizes, recompile after one
    /// label change, and a check that unselected high-cardinality labels do not grow the Plan.
    Compile(CompileArgs),
}

#[derive(Args)]
pub struct CompileArgs {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 2_000)]
    policies: usize,
    #[arg(long, default_value_t = 500)]
    namespaces: usize,
    /// Compiles per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Seed of the synthetic cluster.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Compile(a) => run_cmd(
            Command::new("cargo")
                .args(["bench", "--package", "netward", "--bench", "compile", "--"])
                .args(["--pods", &a.pods.to_string()])
                .args(["--policies", &a.policies.to_string()])
                .args(["--namespaces", &a.namespaces.to_string()])
                .args(["--runs", &a.runs.to_string()])
                .args(["--seed", &a.seed.to_string()]),
        ),
    }
}
