//! `cargo xtask bench ...`: benchmarks. Figures are ratios measured side by side in one run
//! wherever a comparison is made (this machine is noisy).
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {}

pub fn run(which: Bench) -> Result<()> {
    match which {}
}
