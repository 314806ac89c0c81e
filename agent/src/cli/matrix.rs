//! `netward matrix`: reachability of every pod to every pod on one port and protocol.
//!
//! Verdicts come from the compiled Plan evaluated the way the datapath does
//! ([`crate::eval::plan`]), so the matrix shows what enforcement would do, not what the spec
//! says it should (`explain` cross-checks the two). A matrix with denials is a normal answer:
//! the exit code is 0 unless the command fails.
use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;

use super::common::{self, pick_family, Input, Output, ProtocolArg};
use crate::compiler;
use crate::eval::{self, Flow};
use crate::model::{Cluster, Pod};

/// Above this many pods the table collapses to namespaces (unless `--full`).
const MAX_POD_COLUMNS: usize = 40;
/// Above this many namespaces the summary becomes a list.
const MAX_NAMESPACE_COLUMNS: usize = 40;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub input: Input,
    /// Destination port of every flow.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// TCP, UDP or SCTP (or ICMP, ICMPv6, a protocol number: port is then ignored).
    #[arg(long, default_value = "TCP")]
    pub protocol: ProtocolArg,
    /// Compile for this node: only its pods are enforced (default: every pod).
    #[arg(long)]
    pub node: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// Always print one row and column per pod, however many pods there are.
    #[arg(long)]
    pub full: bool,
    /// Also evaluate every pair with the spec evaluator (reads the policies directly) and fail
    /// with exit code 2 if it disagrees with the Plan anywhere.
    #[arg(long)]
    pub verify: bool,
}

/// The reachability of `pods` to each other: `allowed[from][to]`.
pub struct Matrix<'a> {
    pub pods: Vec<&'a Pod>,
    pub allowed: Vec<Vec<bool>>,
}

/// Evaluate every ordered pair of pods with an address (hostNetwork pods have none of their
/// own) through the Plan for `node`. Pods without a common address family cannot talk.
pub fn compute<'a>(
    cluster: &'a Cluster,
    node: Option<&str>,
    protocol: ProtocolArg,
    port: u16,
) -> Matrix<'a> {
    let plan = compiler::compile(cluster, node);
    let pods: Vec<&Pod> = cluster
        .pods
        .iter()
        .filter(|p| !p.host_network && !p.ips.is_empty())
        .collect();
    let port = if protocol.has_ports() { port } else { 0 };
    let allowed = pods
        .iter()
        .map(|from| {
            pods.iter()
                .map(|to| {
                    pick_family(&from.ips, &to.ips).is_some_and(|(src, dst)| {
                        let flow = Flow {
                            src,
                            dst,
                            protocol: protocol.0,
                            port,
                        };
                        eval::plan::evaluate(&plan, &flow).allowed()
                    })
                })
                .collect()
        })
        .collect();
    Matrix { pods, allowed }
}

/// Pairs where the spec evaluator disagrees with the Plan, described.
pub fn disagreements(
    cluster: &Cluster,
    node: Option<&str>,
    protocol: ProtocolArg,
    port: u16,
    m: &Matrix,
) -> Vec<String> {
    let port = if protocol.has_ports() { port } else { 0 };
    let mut out = Vec::new();
    for (i, from) in m.pods.iter().enumerate() {
        for (j, to) in m.pods.iter().enumerate() {
            let spec = pick_family(&from.ips, &to.ips).is_some_and(|(src, dst)| {
                let flow = Flow {
                    src,
                    dst,
                    protocol: protocol.0,
                    port,
                };
                eval::spec::evaluate(cluster, node, &flow).allowed()
            });
            if spec != m.allowed[i][j] {
                out.push(format!(
                    "{} -> {} {protocol}/{port}: Plan says {}, spec says {}",
                    from.key(),
                    to.key(),
                    m.allowed[i][j],
                    spec
                ));
            }
        }
    }
    out
}

/// The JSON form: `{"port":80,"protocol":"TCP","matrix":{"ns/pod":{"ns/pod":true}}}`.
#[derive(Serialize)]
struct Json {
    port: u16,
    protocol: String,
    matrix: BTreeMap<String, BTreeMap<String, bool>>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = common::load(&args.input)?;
    let cluster = &loaded.cluster;
    let skipped: Vec<String> = cluster
        .pods
        .iter()
        .filter(|p| p.host_network || p.ips.is_empty())
        .map(Pod::key)
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "notice: not in the matrix (hostNetwork or no address): {}",
            skipped.join(", ")
        );
    }
    let m = compute(cluster, args.node.as_deref(), args.protocol, args.port);
    if args.verify {
        let wrong = disagreements(cluster, args.node.as_deref(), args.protocol, args.port, &m);
        if !wrong.is_empty() {
            for w in &wrong {
                eprintln!("INTERNAL ERROR: {w}");
            }
            anyhow::bail!(
                "the compiled Plan and the NetworkPolicy spec disagree on {} pair(s): this is a netward bug, please report it with these manifests",
                wrong.len()
            );
        }
        eprintln!(
            "verified: the spec evaluator agrees with the Plan on all {} pairs",
            m.pods.len() * m.pods.len()
        );
    }
    match args.output {
        Output::Json => {
            let matrix = m
                .pods
                .iter()
                .zip(&m.allowed)
                .map(|(from, row)| {
                    let row = m.pods.iter().zip(row).map(|(to, a)| (to.key(), *a));
                    (from.key(), row.collect())
                })
                .collect();
            common::print_json(&Json {
                port: args.port,
                protocol: args.protocol.to_string(),
                matrix,
            })?;
        }
        Output::Table => {
            let title = title(&args);
            if m.pods.len() <= MAX_POD_COLUMNS || args.full {
                common::emit(&pod_table(&m, &title))?;
            } else {
                common::emit(&namespace_table(&m, &title))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn title(args: &Args) -> String {
    let what = if args.protocol.has_ports() {
        format!("{}/{}", args.protocol, args.port)
    } else {
        args.protocol.to_string()
    };
    let node = match &args.node {
        Some(n) => format!("node {n} (pods elsewhere are not enforced by its Plan)"),
        None => "every node".to_string(),
    };
    format!("Reachability on {what}, through the compiled Plan for {node}")
}

/// Runs of equal namespaces in the (sorted) pod list: (namespace, first index, end index).
fn groups(pods: &[&Pod]) -> Vec<(String, usize, usize)> {
    let names: Vec<(&str, &str)> = pods
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    groups_of(&names)
}

/// [`groups`] over (namespace, name) pairs.
fn groups_of(pods: &[(&str, &str)]) -> Vec<(String, usize, usize)> {
    let mut out: Vec<(String, usize, usize)> = Vec::new();
    for (i, (namespace, _)) in pods.iter().enumerate() {
        match out.last_mut() {
            Some((ns, _, end)) if ns == namespace => *end = i + 1,
            _ => out.push((namespace.to_string(), i, i + 1)),
        }
    }
    out
}

/// One row and column per pod, numbered, grouped by namespace.
pub fn pod_table(m: &Matrix, title: &str) -> String {
    let allowed = m.allowed.iter().flatten().filter(|a| **a).count();
    let n = m.pods.len();
    grid(
        &m.pods,
        title,
        "\u{2713} allowed, \u{b7} denied",
        |i, j| {
            if m.allowed[i][j] {
                "\u{2713}"
            } else {
                "\u{b7}"
            }
            .to_string()
        },
        &format!("{allowed} of {} pairs allowed ({n} pods)", n * n),
    )
}

/// The pod x pod layout with a short mark per cell (also for the lab, which shows observed
/// verdicts and where they differ from the prediction): `title`, a legend, numbered columns,
/// rows grouped by namespace, then `footer`. `pods` must be sorted by namespace.
pub fn grid(
    pods: &[&Pod],
    title: &str,
    legend: &str,
    mark: impl Fn(usize, usize) -> String,
    footer: &str,
) -> String {
    let names: Vec<(&str, &str)> = pods
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    grid_of(&names, title, legend, mark, footer)
}

/// [`grid`] over (namespace, name) pairs. Columns are as wide as the widest mark or number.
pub fn grid_of(
    pods: &[(&str, &str)],
    title: &str,
    legend: &str,
    mark: impl Fn(usize, usize) -> String,
    footer: &str,
) -> String {
    use std::fmt::Write;
    let n = pods.len();
    let marks: Vec<Vec<String>> = (0..n)
        .map(|i| (0..n).map(|j| mark(i, j)).collect())
        .collect();
    let w = marks
        .iter()
        .flatten()
        .map(|m| m.chars().count())
        .chain([n.to_string().len()])
        .max()
        .unwrap_or(1);
    let nw = n.to_string().len();
    let groups = groups_of(pods);
    let label_width = pods
        .iter()
        .map(|p| p.1.len() + nw + 3)
        .chain(groups.iter().map(|g| g.0.len()))
        .max()
        .unwrap_or(0);
    let group_starts: Vec<usize> = groups.iter().map(|g| g.1).collect();
    // A cell: an extra space before each namespace group, then the mark right-aligned to `w`
    // (`{:>w$}` counts characters, so the check marks align too).
    let cells = |f: &dyn Fn(usize) -> String| -> String {
        let mut s = String::new();
        for j in 0..n {
            if j > 0 && group_starts.contains(&j) {
                s.push(' ');
            }
            let _ = write!(s, " {:>w$}", f(j));
        }
        s
    };
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "rows: from, columns: to (numbered as the rows); {legend}\n"
    );
    let _ = writeln!(
        out,
        "{:label_width$}{}",
        "",
        cells(&|j| (j + 1).to_string())
    );
    for (ns, start, end) in &groups {
        let _ = writeln!(out, "{ns}");
        for (i, pod) in pods.iter().enumerate().take(*end).skip(*start) {
            let label = format!("  {:>nw$} {}", i + 1, pod.1);
            let row = cells(&|j| marks[i][j].clone());
            let _ = writeln!(out, "{label:label_width$}{row}");
        }
    }
    let _ = writeln!(out, "\n{footer}");
    out
}

/// Namespace x namespace, for clusters too big for one column per pod: one mark per pair of
/// namespaces (all, none, or roughly how many tenths of the pod pairs are allowed) and the
/// allowed/total pod pairs per source namespace. Beyond [`MAX_NAMESPACE_COLUMNS`] namespaces,
/// one line per pair of namespaces with exact counts.
pub fn namespace_table(m: &Matrix, title: &str) -> String {
    use std::fmt::Write;
    let groups = groups(&m.pods);
    let count = |from: &(String, usize, usize), to: &(String, usize, usize)| {
        let allowed = (from.1..from.2)
            .flat_map(|i| (to.1..to.2).map(move |j| (i, j)))
            .filter(|(i, j)| m.allowed[*i][*j])
            .count();
        (allowed, (from.2 - from.1) * (to.2 - to.1))
    };
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "{} pods in {} namespaces, summarised by namespace (--full for one column per pod)",
        m.pods.len(),
        groups.len()
    );
    if groups.len() > MAX_NAMESPACE_COLUMNS {
        let _ = writeln!(out, "allowed pod pairs / pod pairs:\n");
        for from in &groups {
            for to in &groups {
                let (a, t) = count(from, to);
                let _ = writeln!(out, "{} -> {}: {a}/{t}", from.0, to.0);
            }
        }
    } else {
        let _ = writeln!(
            out,
            "rows: from, columns: to (numbered as the rows); \u{2713} all pod pairs allowed, \u{b7} none, 1-9 about that many tenths\n"
        );
        let nw = groups.len().to_string().len();
        let label_width = groups.iter().map(|g| g.0.len()).max().unwrap_or(0) + nw + 1;
        let header: String = (1..=groups.len()).map(|j| format!(" {j:>nw$}")).collect();
        let _ = writeln!(out, "{:label_width$}{header}  allowed/pairs", "");
        for (i, from) in groups.iter().enumerate() {
            let label = format!("{:>nw$} {}", i + 1, from.0);
            let (mut row_allowed, mut row_total) = (0, 0);
            let marks: String = groups
                .iter()
                .map(|to| {
                    let (a, t) = count(from, to);
                    row_allowed += a;
                    row_total += t;
                    let mark = if a == t {
                        "\u{2713}".to_string()
                    } else if a == 0 {
                        "\u{b7}".to_string()
                    } else {
                        (a * 10 / t).clamp(1, 9).to_string()
                    };
                    format!(" {mark:>nw$}")
                })
                .collect();
            let _ = writeln!(
                out,
                "{label:label_width$}{marks}  {row_allowed}/{row_total}"
            );
        }
    }
    let allowed = m.allowed.iter().flatten().filter(|a| **a).count();
    let n = m.pods.len();
    let _ = writeln!(out, "\n{allowed} of {} pairs allowed", n * n);
    out
}
