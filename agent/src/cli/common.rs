//! Pieces every subcommand shares: reading manifests (and reporting what was wrong with
//! them), the output format, protocols and flow endpoints given on the command line.
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::Serialize;

use crate::model::{Cluster, Pod, Protocol};
use crate::source::{self, Loaded};

/// `-f PATH...`: the manifests describing the cluster.
#[derive(clap::Args, Clone, Debug)]
pub struct Input {
    /// Manifest files or directories (searched recursively for *.yaml, *.yml, *.json);
    /// `-` reads standard input. Repeatable. Default: the bundled examples.
    #[arg(short = 'f', long = "filename", value_name = "PATH", num_args = 1..)]
    pub paths: Vec<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Table,
    /// Machine-readable JSON on standard output.
    Json,
}

/// Load the manifests, printing notices and errors to standard error. Invalid policies are
/// reported and kept (they fail closed); input that could not be read at all is an error,
/// because results computed without it could be more open than the real cluster.
pub fn load(input: &Input) -> anyhow::Result<Loaded> {
    load_reporting(input, true)
}

/// [`load`], optionally leaving policy validation errors unprinted (for commands that report
/// them themselves, like `lint`).
pub fn load_reporting(input: &Input, policy_errors: bool) -> anyhow::Result<Loaded> {
    let loaded = if input.paths.is_empty() {
        eprintln!("notice: no -f given: using the bundled examples (examples/ in the source tree)");
        source::manifest::load_examples()
    } else {
        source::load(&input.paths)
    };
    for n in &loaded.notices {
        eprintln!("notice: {n}");
    }
    let is_policy = |e: &&source::SourceError| {
        e.object
            .as_deref()
            .is_some_and(|o| o.starts_with("NetworkPolicy "))
            && e.field.is_some()
    };
    for e in loaded
        .errors
        .iter()
        .filter(|e| policy_errors || !is_policy(e))
    {
        eprintln!("error: {e}");
    }
    if loaded.incomplete {
        bail!(
            "some manifests could not be read (see the errors above); refusing to answer from partial input"
        );
    }
    let failing: Vec<String> = loaded
        .cluster
        .policies
        .iter()
        .filter(|p| !p.errors.is_empty())
        .map(|p| p.key())
        .collect();
    if !failing.is_empty() {
        eprintln!(
            "warning: {} invalid polic{} closed (isolating the pods selected, allowing nothing): {}",
            failing.len(),
            if failing.len() == 1 { "y fails" } else { "ies fail" },
            failing.join(", ")
        );
    }
    Ok(loaded)
}

/// Print `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising JSON output")?;
    emit(&format!("{text}\n"))
}

/// Write command output to standard output. A reader that went away (`| head`) is not an
/// error: the rest of the output is simply dropped.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

/// An IP protocol given on the command line: TCP, UDP, SCTP (what policies name), ICMP,
/// ICMPv6, or a protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolArg(pub u8);

impl ProtocolArg {
    /// Protocols with ports.
    pub fn has_ports(self) -> bool {
        Protocol::from_number(self.0).is_some()
    }
}

impl std::str::FromStr for ProtocolArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(p) = s.parse::<Protocol>() {
            return Ok(ProtocolArg(p.number()));
        }
        match s.to_ascii_uppercase().as_str() {
            "ICMP" => Ok(ProtocolArg(netward_common::PROTO_ICMP)),
            "ICMPV6" => Ok(ProtocolArg(netward_common::PROTO_ICMPV6)),
            _ => s.parse::<u8>().map(ProtocolArg).map_err(|_| {
                format!("unknown protocol {s:?}: expected TCP, UDP, SCTP, ICMP, ICMPv6 or a number")
            }),
        }
    }
}

impl std::fmt::Display for ProtocolArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (Protocol::from_number(self.0), self.0) {
            (Some(p), _) => write!(f, "{p}"),
            (None, netward_common::PROTO_ICMP) => f.write_str("ICMP"),
            (None, netward_common::PROTO_ICMPV6) => f.write_str("ICMPv6"),
            (None, n) => write!(f, "{n}"),
        }
    }
}

/// One end of a flow given as `namespace/pod`, a pod name, or an IP address.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// The addresses to pick from (a pod's addresses, or the one given).
    #[serde(skip)]
    pub ips: Vec<IpAddr>,
    /// `namespace/name` of the pod, if the endpoint is (or has the address of) a pod.
    pub pod: Option<String>,
}

impl Endpoint {
    pub fn resolve(cluster: &Cluster, text: &str) -> anyhow::Result<Endpoint> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Endpoint {
                ips: vec![ip],
                pod: cluster.pod_by_ip(ip).map(Pod::key),
            });
        }
        let pod = match text.split_once('/') {
            Some((ns, name)) => cluster.pod(ns, name).with_context(|| {
                format!("no pod {text:?} in the manifests{}", suggest(cluster, name))
            })?,
            None => {
                let found: Vec<&Pod> = cluster.pods.iter().filter(|p| p.name == text).collect();
                match found.as_slice() {
                    [p] => *p,
                    [] => bail!(
                        "{text:?} is neither an IP address nor a pod in the manifests (use namespace/pod)"
                    ),
                    many => bail!(
                        "pod name {text:?} is ambiguous: {}; use namespace/pod",
                        many.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
        };
        if pod.host_network {
            bail!("pod {} uses hostNetwork: it has no pod address of its own; give the node's IP instead", pod.key());
        }
        if pod.ips.is_empty() {
            bail!("pod {} has no address", pod.key());
        }
        Ok(Endpoint {
            ips: pod.ips.clone(),
            pod: Some(pod.key()),
        })
    }

    /// `namespace/pod (10.0.0.1)` or the bare address.
    pub fn describe(&self, ip: IpAddr) -> String {
        match &self.pod {
            Some(p) => format!("{p} ({ip})"),
            None => ip.to_string(),
        }
    }
}

/// Pick addresses of one family for a flow between two endpoints, IPv4 first.
pub fn pick_family(from: &[IpAddr], to: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    for v4 in [true, false] {
        let a = from.iter().find(|ip| ip.is_ipv4() == v4);
        let b = to.iter().find(|ip| ip.is_ipv4() == v4);
        if let (Some(a), Some(b)) = (a, b) {
            return Some((*a, *b));
        }
    }
    None
}

/// ` (did you mean ns/name?)` when a pod of that name exists in another namespace.
fn suggest(cluster: &Cluster, name: &str) -> String {
    let same: Vec<String> = cluster
        .pods
        .iter()
        .filter(|p| p.name == name)
        .map(Pod::key)
        .collect();
    if same.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", same.join(" or "))
    }
}
