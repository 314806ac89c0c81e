//! `cargo xtask bench compile` (or `cargo bench -p netward --bench compile`): compile time,
//! peak RSS and Plan size of a synthetic cluster (default 10,000 pods, 2,000 policies, 500
//! namespaces), the time to recompile after one pod label change, and a check that a
//! high-cardinality label no policy selects on leaves the Plan's entry counts unchanged.
//!
//! Peak RSS is measured on a child process (this binary with `--child`) that only generates
//! and compiles, through `getrusage(RUSAGE_CHILDREN)`, so the parent's copies do not count.
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use netward::compiler::compile;
use netward::model::Cluster;
use netward::plan::PlanStats;
use netward::synth::{generate, SynthParams};

#[derive(Parser, Clone)]
#[command(about = "netward compile benchmark")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 2_000)]
    policies: usize,
    #[arg(long, default_value_t = 500)]
    namespaces: usize,
    /// Compiles per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Internal: generate and compile once, then exit (peak RSS measurement).
    #[arg(long, hide = true)]
    child: bool,
    /// Internal, with --child: only generate (the cluster's own share of the RSS).
    #[arg(long, hide = true)]
    generate_only: bool,
    /// Also print policy entries per kind of synthetic policy (name without its index).
    #[arg(long)]
    breakdown: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn params(&self) -> SynthParams {
        SynthParams {
            pods: self.pods,
            policies: self.policies,
            namespaces: self.namespaces,
            ..SynthParams::bench()
        }
    }
}

/// Median and min of `runs` timings of `f`.
fn measure<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed());
        last = Some(std::hint::black_box(out));
    }
    times.sort();
    (times[times.len() / 2], times[0], last.unwrap())
}

fn peak_rss_of_child(args: &Args) -> std::io::Result<u64> {
    let status = Command::new(std::env::current_exe()?)
        .args(["--child", "--pods", &args.pods.to_string()])
        .args(["--policies", &args.policies.to_string()])
        .args(["--namespaces", &args.namespaces.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("child failed: {status}")));
    }
    // SAFETY: getrusage writes a plain struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ru.ru_maxrss as u64 * 1024)
}

/// Change one pod's `app` label to another app of its namespace.
fn relabel_one(c: &Cluster) -> Cluster {
    let mut c = c.clone();
    let i = c.pods.len() / 2;
    let ns = c.pods[i].namespace.clone();
    let cur = c.pods[i].labels.get("app").cloned();
    let other = c
        .pods
        .iter()
        .filter(|p| p.namespace == ns)
        .filter_map(|p| p.labels.get("app"))
        .find(|a| Some(*a) != cur.as_ref())
        .cloned()
        .unwrap_or_else(|| "relabelled".into());
    c.pods[i].labels.insert("app".into(), other);
    c
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn row(name: &str, value: impl std::fmt::Display) {
    println!("| {name:<44} | {value:>22} |");
}

fn stats_rows(prefix: &str, s: &PlanStats) {
    row(&format!("{prefix} endpoints"), s.endpoints);
    row(&format!("{prefix} subject classes"), s.subject_classes);
    row(&format!("{prefix} peer classes"), s.peer_classes);
    row(&format!("{prefix} ipcache entries"), s.ipcache_entries);
    row(&format!("{prefix} policy entries"), s.policy_entries);
}

/// Policy entries attributed to each kind of policy (the synthetic names end in `-<index>`,
/// app names and teams are folded away).
fn breakdown(plan: &netward::plan::Plan) {
    let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, v) in &plan.policy {
        let name = &plan.policy_ref(v).expect("attributed").name;
        let kind = name
            .rsplit_once('-')
            .map_or(name.as_str(), |(k, _)| k)
            .split('-')
            .filter(|w| {
                matches!(
                    *w,
                    "default"
                        | "deny"
                        | "from"
                        | "to"
                        | "internet"
                        | "nodeports"
                        | "allow"
                        | "monitoring"
                        | "egress"
                        | "but"
                        | "dns"
                        | "web"
                        | "tiers"
                        | "nodes"
                        | "pod"
                        | "ranges"
                        | "orders"
                )
            })
            .collect::<Vec<_>>()
            .join("-");
        *by_kind.entry(kind).or_default() += 1;
    }
    let mut rows: Vec<_> = by_kind.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (k, n) in rows {
        row(&format!("entries from {k}"), n);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let params = args.params();
    if args.child {
        let c = generate(&params, args.seed);
        if args.generate_only {
            std::hint::black_box(&c);
            return ExitCode::SUCCESS;
        }
        let plan = compile(&c, None);
        std::hint::black_box(plan.stats());
        return ExitCode::SUCCESS;
    }

    // First, while this process is still small: Linux keeps a child's RSS high-water mark
    // across exec, so a fork of a large parent would inflate the figure.
    let rss = peak_rss_of_child(&args);

    let t = Instant::now();
    let cluster = generate(&params, args.seed);
    let gen_time = t.elapsed();
    let (full_med, full_min, plan) = measure(args.runs, || compile(&cluster, None));
    let stats = plan.stats();
    let deterministic = compile(&cluster, None) == plan;
    let node = cluster.pods[0].node.clone();
    let (node_med, _, node_plan) = measure(args.runs, || compile(&cluster, node.as_deref()));

    let relabelled = relabel_one(&cluster);
    let (relabel_med, _, relabel_plan) = measure(args.runs, || compile(&relabelled, None));

    let mut high_card = cluster.clone();
    for (i, p) in high_card.pods.iter_mut().enumerate() {
        p.labels.insert("uid".into(), format!("{i:08x}-{}", p.name));
    }
    let high_stats = compile(&high_card, None).stats();
    let unchanged = high_stats == stats;

    println!(
        "\nnetward compile benchmark: {} pods, {} policies, {} namespaces, seed {}, median of {} runs\n",
        args.pods, args.policies, args.namespaces, args.seed, args.runs
    );
    println!("| {:<44} | {:>22} |", "measure", "value");
    println!("|{:-<46}|{:-<24}|", "", "");
    row("generate synthetic cluster", ms(gen_time));
    row("full compile, node None (median)", ms(full_med));
    row("full compile, node None (min)", ms(full_min));
    row(
        &format!(
            "full compile, node {} (median)",
            node.as_deref().unwrap_or("-")
        ),
        ms(node_med),
    );
    row(
        "recompile after one pod label change (median)",
        ms(relabel_med),
    );
    match &rss {
        Ok(b) => row(
            "peak RSS, child generating + compiling",
            format!("{:.1} MB", *b as f64 / 1e6),
        ),
        Err(e) => row("peak RSS", format!("error: {e}")),
    }
    stats_rows("plan:", &stats);
    row("plan: policies", stats.policies);
    row(
        &format!("plan for {}: endpoints", node.as_deref().unwrap_or("-")),
        node_plan.stats().endpoints,
    );
    row(
        &format!(
            "plan for {}: policy entries",
            node.as_deref().unwrap_or("-")
        ),
        node_plan.stats().policy_entries,
    );
    row(
        "after label change: policy entries",
        relabel_plan.stats().policy_entries,
    );
    row("deterministic (two compiles byte-identical)", deterministic);
    row("unselected high-cardinality label: same size", unchanged);
    println!();

    if args.breakdown {
        breakdown(&plan);
    }
    let mut ok = deterministic && unchanged;
    if !unchanged {
        eprintln!("high-cardinality label changed the Plan: {stats:?} -> {high_stats:?}");
    }
    let target_time = Duration::from_millis(500);
    if args.pods >= 10_000 {
        if full_med > target_time {
            eprintln!("target missed: full compile {} > 500 ms", ms(full_med));
            ok = false;
        }
        if let Ok(b) = rss {
            if b > 200_000_000 {
                eprintln!("target missed: peak RSS {b} B > 200 MB");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
