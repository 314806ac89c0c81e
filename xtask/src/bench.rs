//! `cargo xtask bench ...`: benchmarks. Figures are ratios measured side by side in one run
//! wherever a comparison is made (this machine is noisy).
use std::process::Command;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Agent event-to-enforced latency for one pod label change with 10k pods in the stores
    /// (test API server + real agent; eBPF maps when root). BENCH_PODS / BENCH_ROUNDS override.
    Agent,
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Agent => agent(),
    }
}

fn agent() -> Result<()> {
    crate::run(
        Command::new("cargo")
            .current_dir(crate::workspace_root())
            .args([
                "test",
                "--release",
                "--package",
                "netward-tests",
                "--test",
                "k8s_bench",
                "--",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]),
    )
}
