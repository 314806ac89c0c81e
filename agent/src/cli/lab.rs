//! `netward lab ...`: a manifest directory as a real node on this machine (see [`crate::lab`]).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::lab::{self, lifecycle, probe, LabName, LabState};
use crate::model::{Cluster, Protocol};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Turn the manifests into pods (network namespaces) on this machine, with servers on
    /// their declared ports, enforced by a background daemon that follows edits.
    Up {
        /// Manifest files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = lab::DEFAULT_NAME)]
        name: String,
        /// Build topology and servers only; enforce nothing.
        #[arg(long)]
        no_enforce: bool,
    },
    /// Remove everything the lab made (also after a crash); idempotent.
    Down {
        #[arg(long, default_value = lab::DEFAULT_NAME)]
        name: String,
    },
    /// Pods, addresses, veths and whether the daemon enforces; every lab without --name.
    Status {
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Connect every pod to every pod with real packets (over each address family both
    /// have), then every pod to every Service port's virtual address; compare with the
    /// prediction. Exits 1 when observation and prediction differ.
    Probe {
        #[arg(long, default_value = lab::DEFAULT_NAME)]
        name: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: Protocol,
        /// Probe each pod on each of its declared ports instead of --port/--protocol.
        #[arg(long)]
        all_ports: bool,
        /// How long one probe waits, in milliseconds.
        #[arg(long, default_value_t = 800)]
        timeout_ms: u64,
        /// Leave out the Services' virtual addresses (probed after the pods by default).
        #[arg(long)]
        no_services: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run a command inside a pod's network namespace; its exit code passes through.
    Exec {
        #[arg(long, default_value = lab::DEFAULT_NAME)]
        name: String,
        /// `namespace/name` of the pod.
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// (internal) The enforcing agent of a lab, started by `lab up`.
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        name: String,
        /// Flow cache slots per CPU (as `netward agent`; `lab up` passes its environment on).
        #[arg(long, default_value_t = netward_common::FLOW_CACHE_DEFAULT_SLOTS, env = "NETWARD_FLOW_CACHE_SLOTS")]
        flow_cache_slots: u32,
        /// Seconds between conntrack sweeps (as `netward agent`; 0: never).
        #[arg(
            long,
            default_value_t = crate::datapath::DEFAULT_CONNTRACK_GC_INTERVAL.as_secs(),
            env = "NETWARD_CONNTRACK_GC_INTERVAL"
        )]
        conntrack_gc_interval: u64,
        /// Same-node TCP flows veth to veth (as `netward agent`).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "NETWARD_DIRECT_DELIVERY")]
        direct_delivery: bool,
    },
    /// (internal) The servers of a lab, started by `lab up`.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
    },
}

/// Load manifests into the model. Invalid policies are kept (they fail closed) and
/// reported; input that could not be read at all is an error, since the model would miss
/// objects and could be more open than the manifests.
pub fn load_cluster(files: &[PathBuf]) -> Result<Cluster> {
    lab::load_manifests(files, |line| eprintln!("{line}"))
}

pub fn run(args: LabArgs) -> Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            files,
            name,
            no_enforce,
        } => {
            let name = LabName::new(&name)?;
            let cluster = load_cluster(&files)?;
            let opts = lifecycle::UpOptions {
                exe: std::env::current_exe().context("locating the netward executable")?,
                enforce: !no_enforce,
            };
            let state = lifecycle::up(&name, &files, &cluster, &opts)?;
            println!(
                "lab {name} up: {} pods{}",
                state.pods.len(),
                if no_enforce {
                    ", not enforced"
                } else {
                    ", enforced"
                }
            );
            for p in &state.pods {
                let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
                println!("  {:30} {:30} {}", p.key, ips.join(","), p.host_veth);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { name } => {
            let name = LabName::new(&name)?;
            lifecycle::down(&name)?;
            println!("lab {name} down");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { name, output } => {
            let names = match name {
                Some(n) => vec![LabName::new(&n)?],
                None => lab::list_labs()?,
            };
            let statuses = names
                .iter()
                .map(lifecycle::status)
                .collect::<Result<Vec<_>>>()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&statuses)?),
                Output::Table => {
                    if statuses.is_empty() {
                        println!("no lab is up");
                    }
                    for s in &statuses {
                        println!(
                            "lab {}: servers {}, daemon {}",
                            s.name,
                            s.serve.map_or("down".into(), |p| format!("pid {p}")),
                            match (s.daemon, s.enforcing) {
                                (Some(p), true) => format!("pid {p}, enforcing"),
                                (Some(p), false) => format!("pid {p}, starting"),
                                (None, _) => "not running (nothing enforced)".into(),
                            }
                        );
                        for p in &s.pods {
                            let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
                            println!(
                                "  {:30} {:30} {:8} {}{}",
                                p.pod,
                                ips.join(","),
                                p.host_veth,
                                p.netns,
                                if p.present { "" } else { "  MISSING" }
                            );
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Probe {
            name,
            port,
            protocol,
            all_ports,
            timeout_ms,
            no_services,
            output,
        } => {
            let name = LabName::new(&name)?;
            let state = LabState::require(&name)?;
            let cluster = load_cluster(&state.manifests)?;
            let opts = probe::Options {
                timeout: std::time::Duration::from_millis(timeout_ms),
                ..Default::default()
            };
            let reports: Vec<probe::Report> = if all_ports {
                let mut out = Vec::new();
                for (t, dests) in probe::declared_targets(&state) {
                    out.extend(probe::probe(&state, &cluster, t, Some(&dests), opts)?);
                }
                out
            } else {
                probe::probe(
                    &state,
                    &cluster,
                    probe::Target { port, protocol },
                    None,
                    opts,
                )?
            };
            let services = if no_services {
                Vec::new()
            } else {
                probe::probe_services(&state, &cluster, opts)
            };
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ports": reports, "services": services })
                    )?
                ),
                Output::Table => {
                    for r in &reports {
                        println!("{}", report_table(r));
                    }
                    if !services.is_empty() {
                        let pods: Vec<&str> = state.pods.iter().map(|p| p.key.as_str()).collect();
                        println!("{}", services_table(&pods, &services));
                    }
                }
            }
            let differ = reports.iter().any(|r| !r.differences.is_empty())
                || services.iter().any(|r| !r.differences.is_empty());
            Ok(if differ {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        LabCommand::Exec { name, pod, command } => {
            let name = LabName::new(&name)?;
            let status = lifecycle::exec(&name, &pod, &command)?;
            Ok(match status.code() {
                Some(c) => ExitCode::from(c.clamp(0, 255) as u8),
                None => ExitCode::from(2),
            })
        }
        LabCommand::Daemon {
            name,
            flow_cache_slots,
            conntrack_gc_interval,
            direct_delivery,
        } => {
            init_background_logging();
            lab::daemon::run(
                &LabName::new(&name)?,
                lab::daemon::Options {
                    flow_cache_slots,
                    conntrack_gc_interval: std::time::Duration::from_secs(conntrack_gc_interval),
                    direct_delivery,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Serve { name } => {
            init_background_logging();
            lab::serve::run(&LabName::new(&name)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Background processes log to stderr, which `lab up` points at their log file.
fn init_background_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .try_init();
}

/// One probe report as the numbered grid of `netward matrix`: the observed verdict per cell,
/// `!` where it differs from the prediction, then the differing cells spelled out.
pub fn report_table(r: &probe::Report) -> String {
    let mut keys: Vec<&String> = r
        .matrix
        .iter()
        .flat_map(|(from, row)| std::iter::once(from).chain(row.keys()))
        .collect();
    keys.sort();
    keys.dedup();
    let names: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| k.split_once('/').unwrap_or(("", k.as_str())))
        .collect();
    let probed: usize = r.matrix.values().map(|row| row.len()).sum();
    let mut footer = if r.differences.is_empty() {
        format!("observed == predicted on all {probed} probed pairs")
    } else {
        format!(
            "{} of {probed} probed pairs differ from the prediction:",
            r.differences.len()
        )
    };
    for d in &r.differences {
        footer.push_str(&format!(
            "\nDIFFERS {} -> {}: observed {}, predicted {}",
            d.from,
            d.to,
            if d.observed { "reached" } else { "blocked" },
            if d.predicted { "allowed" } else { "denied" }
        ));
    }
    super::matrix::grid_of(
        &names,
        &format!(
            "{}/{} over {}, observed with real packets",
            r.protocol, r.port, r.family
        ),
        "\u{2713} reached, \u{b7} blocked, ! differs from the prediction, - not probed",
        |i, j| {
            let observed = r.matrix.get(keys[i]).and_then(|row| row.get(keys[j]));
            let predicted = r.predicted.get(keys[i]).and_then(|row| row.get(keys[j]));
            match observed {
                None => "-".to_string(),
                Some(&o) => {
                    let mut m = if o { "\u{2713}" } else { "\u{b7}" }.to_string();
                    if predicted != Some(&o) {
                        m.push('!');
                    }
                    m
                }
            }
        },
        &footer,
    )
}

/// The Service probes: one row per pod (numbered and grouped as in the pod grid), one
/// column per Service port and virtual address (numbered, listed above), then the differing
/// cells spelled out.
pub fn services_table(pods: &[&str], reports: &[probe::ServiceReport]) -> String {
    use std::fmt::Write;
    let mut pods: Vec<&str> = pods.to_vec();
    pods.sort();
    let mut out = String::from(
        "Services: real connections to every Service port's virtual address (the lab's \
         kube-proxy rules send each to a random endpoint), observed vs predicted by the spec \
         evaluator\ncolumns:\n",
    );
    for (j, r) in reports.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>2} {} {} {}/{}{}",
            j + 1,
            r.service,
            r.vip,
            r.protocol,
            r.port,
            if r.port_name.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.port_name)
            }
        );
    }
    let _ = writeln!(
        out,
        "\u{2713} reached, \u{b7} blocked, ~ reached on some attempts only, ! differs from the \
         prediction,\n- not probed (an endpoint of the Service itself, or no address of the \
         family)\n"
    );
    let nw = pods.len().to_string().len();
    let label_width = pods
        .iter()
        .map(|k| k.split_once('/').map_or(k.len(), |(_, n)| n.len()) + nw + 3)
        .max()
        .unwrap_or(0);
    let cw = reports.len().to_string().len().max(2);
    let header: String = (1..=reports.len()).map(|j| format!(" {j:>cw$}")).collect();
    let _ = writeln!(out, "{:label_width$}{header}", "");
    let mut namespace = None;
    for (i, key) in pods.iter().enumerate() {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        if namespace != Some(ns) {
            let _ = writeln!(out, "{ns}");
            namespace = Some(ns);
        }
        let label = format!("  {:>nw$} {name}", i + 1);
        let cells: String = reports
            .iter()
            .map(|r| {
                let mark = match r.observed.get(*key) {
                    None => "-".to_string(),
                    Some(&o) => {
                        let partial = r.partial.iter().any(|p| p == key);
                        let mut m = if partial {
                            "~"
                        } else if o {
                            "\u{2713}"
                        } else {
                            "\u{b7}"
                        }
                        .to_string();
                        if r.differences.iter().any(|d| d.from == *key) {
                            m.push('!');
                        }
                        m
                    }
                };
                format!(" {mark:>cw$}")
            })
            .collect();
        let _ = writeln!(out, "{label:label_width$}{cells}");
    }
    let probed: usize = reports.iter().map(|r| r.observed.len()).sum();
    let differ: usize = reports.iter().map(|r| r.differences.len()).sum();
    if differ == 0 {
        let _ = writeln!(out, "\nobserved == predicted on all {probed} probed pairs");
    } else {
        let _ = writeln!(
            out,
            "\n{differ} of {probed} probed pairs differ from the prediction:"
        );
        for r in reports {
            for d in &r.differences {
                let _ = writeln!(
                    out,
                    "DIFFERS {} -> {} {}:{}/{}: observed {}, predicted {}",
                    d.from,
                    r.service,
                    r.vip,
                    r.port,
                    r.protocol,
                    if d.partial {
                        "reached on some attempts only"
                    } else if d.observed {
                        "reached"
                    } else {
                        "blocked"
                    },
                    if d.predicted { "allowed" } else { "denied" }
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::probe::{Difference, Family, Matrix, Report};

    #[test]
    fn report_table_numbers_pods_and_marks_differences() {
        let mut matrix = Matrix::new();
        let mut predicted = Matrix::new();
        for (from, to, o, p) in [
            ("a/x", "a/y", true, true),
            ("a/y", "a/x", false, true),
            ("a/x", "b/z", false, false),
        ] {
            matrix.entry(from.into()).or_default().insert(to.into(), o);
            predicted
                .entry(from.into())
                .or_default()
                .insert(to.into(), p);
        }
        let r = Report {
            port: 80,
            protocol: Protocol::Tcp,
            family: Family::IPv6,
            matrix,
            predicted,
            differences: vec![Difference {
                from: "a/y".into(),
                to: "a/x".into(),
                observed: false,
                predicted: true,
            }],
        };
        let t = report_table(&r);
        assert!(t.starts_with("TCP/80 over IPv6"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        // Header numbers the three pods; rows: x (to y reached, to z blocked), y (to x
        // blocked but predicted allowed), z (not probed from).
        assert!(lines.iter().any(|l| l.trim() == "1  2   3"), "{t}");
        assert!(
            lines
                .iter()
                .any(|l| l.trim() == "1 x  -  \u{2713}   \u{b7}"),
            "{t}"
        );
        assert!(
            lines.iter().any(|l| l.trim() == "2 y \u{b7}!  -   -"),
            "{t}"
        );
        assert!(t.contains("DIFFERS a/y -> a/x: observed blocked, predicted allowed"));
        assert!(t.contains("1 of 3 probed pairs differ"));
    }
}
