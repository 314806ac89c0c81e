//! netward's developer tasks. `cargo xtask <task>`:
//!
//! * `setup`: install what a fresh machine lacks (nightly rust-src, bpf-linker linked to the
//!   nightly toolchain's LLVM, Debian packages the tests use). Idempotent and quick when all
//!   is present.
//! * `test`: setup, then every test of the workspace (needs root: BPF, network namespaces).
//! * `demo`: setup, then the lab demo on the bundled examples (predicted vs observed).
//! * `bench compile|datapath|agent`: benchmarks (see `bench.rs`).
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod setup;

#[derive(Parser)]
#[command(name = "xtask", about = "netward developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and Debian packages netward's build and tests need.
    Setup,
    /// Set up, then run every test of the workspace (as root).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the main job on the bundled examples.
    Demo,
    /// Benchmarks; figures are printed as tables.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { args } => {
            setup::run()?;
            test(&args)
        }
        Task::Demo => {
            setup::run()?;
            demo()
        }
        Task::Bench { which } => {
            setup::run()?;
            bench::run(which)
        }
    }
}

/// Packages whose tests `cargo xtask test` runs (the eBPF crate only builds for BPF).
const TEST_PACKAGES: &[&str] = &["netward-common", "netward", "netward-tests", "xtask"];

fn test(extra: &[String]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    // Every test binary runs even when an earlier one fails: CI shows all failures at once.
    cmd.args(["test", "--no-fail-fast"]);
    for p in TEST_PACKAGES {
        cmd.args(["--package", p]);
    }
    cmd.args(extra);
    run(&mut cmd)
}

/// The lab demo: the bundled examples become pods (network namespaces) on this machine,
/// enforced by netward, with their Services rewritten as kube-proxy does; the observed
/// reachability matrices (pods, then Service virtual addresses) are compared with the
/// predicted ones, then everything is torn down (also when a step fails).
fn demo() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--package", "netward"]))?;
    let netward = workspace_root().join("target/release/netward");
    let examples = workspace_root().join("examples");
    let lab = |args: &[&str]| {
        let mut cmd = Command::new(&netward);
        cmd.arg("lab").args(args);
        cmd
    };
    // A leftover demo from an interrupted run would hold the same addresses.
    run(&mut lab(&["down", "--name", "demo"]))?;
    let result = (|| {
        run(lab(&["up", "--name", "demo", "-f"]).arg(&examples))?;
        run(&mut lab(&["status", "--name", "demo"]))?;
        for (port, proto) in [("8080", "TCP"), ("5432", "TCP")] {
            println!();
            run(&mut lab(&[
                "probe",
                "--name",
                "demo",
                "--port",
                port,
                "--protocol",
                proto,
                "--no-services",
            ]))?;
        }
        // DNS: the pod matrix, then the Services through their virtual addresses (kube-dns
        // from production pods; postgres allowed to one client and denied to the others).
        println!();
        run(&mut lab(&[
            "probe",
            "--name",
            "demo",
            "--port",
            "53",
            "--protocol",
            "UDP",
        ]))?;
        println!();
        run(&mut lab(&[
            "probe",
            "--name",
            "demo",
            "--all-ports",
            "--no-services",
        ]))
    })();
    let down = run(&mut lab(&["down", "--name", "demo"]));
    result.and(down)
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Run a command, inheriting stdio; fail with the command line when it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
