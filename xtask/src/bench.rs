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
    /// Per-packet cost of the tc programs (BPF_PROG_TEST_RUN) for the new-flow and established
    /// paths with 1, 1k, 10k, 100k policy entries. Needs root.
    Datapath(DatapathArgs),
    /// Agent event-to-enforced latency for one pod label change with 10k pods in the stores
    /// (test API server + real agent; eBPF maps when root). BENCH_PODS / BENCH_ROUNDS override.
    Agent,
    /// iperf3 throughput, short-connection and exchange rates between two lab pods: no
    /// program vs netward (0 and N rules) vs iptables (linear and ipset), each as a ratio to
    /// an untouched control pair (the rates in alternating slices, the two iperf3 streams at
    /// once). Optimised throughout: the
    /// bench binary and the `netward` it drives (built with `--release`). Needs root.
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
    /// Rounds of the whole sequence; ratios are taken within a round, then the median.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Another build's `netward` (e.g. the last release) to run the largest Plan under too,
    /// side by side: its daemon takes over the same pinned maps and links, as in an upgrade.
    #[arg(long)]
    baseline_netward: Option<std::path::PathBuf>,
    /// The one CPU everything runs on (default: the last one), so every cost lies on the
    /// connection's path and the scheduler's placement adds no noise.
    #[arg(long, conflicts_with = "no_pin")]
    cpu: Option<usize>,
    /// Let the scheduler place clients, servers and packet processing on any CPU.
    #[arg(long)]
    no_pin: bool,
    /// Leave netfilter conntrack off for the node's forwarded traffic (by default it is on,
    /// as kube-proxy's rules keep it on every Kubernetes node).
    #[arg(long)]
    bare_node: bool,
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

#[derive(Args)]
pub struct DatapathArgs {
    /// Runs per measurement, in ten rounds over every build and size (the kernel reports each
    /// round's average; the median round is taken).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Policy entries of the measured Plans, comma-separated.
    #[arg(long, default_value = "1,1000,10000,100000")]
    sizes: String,
    /// Distinct packets measured for the allowed-new-flow path.
    #[arg(long, default_value_t = 20_000)]
    new_flows: u32,
    /// An older build of the eBPF object (e.g. target/.../out/netward saved before a change),
    /// measured side by side in the same run.
    #[arg(long)]
    baseline_object: Option<String>,
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
        Bench::Datapath(a) => {
            let mut c = Command::new("cargo");
            c.args(["bench", "--package", "netward", "--bench", "datapath", "--"])
                .args(["--repeat", &a.repeat.to_string()])
                .args(["--sizes", &a.sizes])
                .args(["--new-flows", &a.new_flows.to_string()]);
            if let Some(b) = &a.baseline_object {
                c.args(["--baseline-object", b]);
            }
            run_cmd(&mut c)
        }
        // An ignored test of netward-tests: it needs the test API server beside the agent.
        Bench::Agent => run_cmd(Command::new("cargo").args([
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
        ])),
        Bench::Lab(a) => run_cmd(
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
                .args(["--sizes", &a.sizes])
                .args(["--rounds", &a.rounds.to_string()])
                .args(
                    a.baseline_netward
                        .iter()
                        .flat_map(|p| [std::ffi::OsStr::new("--baseline-netward"), p.as_os_str()]),
                )
                .args(
                    a.cpu
                        .iter()
                        .flat_map(|c| ["--cpu".to_string(), c.to_string()]),
                )
                .args(a.no_pin.then_some("--no-pin"))
                .args(a.bare_node.then_some("--bare-node")),
        ),
    }
}
