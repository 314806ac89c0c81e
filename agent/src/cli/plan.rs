//! `netward plan`: what the compiler would install in the maps, sized and (with `--dump`)
//! decoded: addresses to classes, (subject, direction, peer, protocol, ports) to the policy
//! rule that allows them, and the class tables that give the numbers a meaning. Service
//! virtual addresses add three tables: (address, protocol, port) -> Service port, (subject
//! class, Service port) -> the rule allowing every endpoint, and the Service ports with their
//! endpoints.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;

use ipnet::IpNet;
use netward_common::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, ServiceKey, ServicePolicyKey, ServiceValue,
    ANY_PEER, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EP_LOCAL, EP_SERVICE, FAMILY_V4,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
};
use serde::Serialize;

use super::common::{self, Input, Output, ProtocolArg};
use crate::compiler;
use crate::model::Direction;
use crate::plan::{Endpoint, PeerClass, Plan, PlanStats, ServicePortRef, SubjectClass};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub input: Input,
    /// Compile for this node: only its pods are endpoints (default: every pod).
    #[arg(long)]
    pub node: Option<String>,
    /// Print every map entry, decoded, and the class tables.
    #[arg(long)]
    pub dump: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// One ipcache entry, decoded.
#[derive(Serialize)]
pub struct IpcacheRow {
    pub prefix: IpNet,
    pub peer_class: u32,
    pub subject_class: u32,
    pub flags: Vec<&'static str>,
    pub endpoint: Option<String>,
}

/// One policy entry, decoded.
#[derive(Serialize)]
pub struct PolicyRow {
    pub direction: &'static str,
    pub subject_class: u32,
    /// None: any peer.
    pub peer_class: Option<u32>,
    /// None: any protocol.
    pub protocol: Option<String>,
    /// None: any port; `8080` or `32768-33023`.
    pub ports: Option<String>,
    pub policy: String,
    pub rule: u16,
}

/// One `SERVICES` entry, decoded.
#[derive(Serialize)]
pub struct ServiceRow {
    pub address: IpAddr,
    pub protocol: String,
    pub port: u16,
    /// Index+1 into `service_ports`.
    pub service_port: u32,
    /// `namespace/name`.
    pub service: String,
}

/// One `SERVICE_POLICY` entry, decoded.
#[derive(Serialize)]
pub struct ServicePolicyRow {
    pub subject_class: u32,
    pub service_port: u32,
    pub service: String,
    pub policy: String,
    pub rule: u16,
}

#[derive(Serialize)]
struct Dump<'a> {
    ipcache: Vec<IpcacheRow>,
    policy: Vec<PolicyRow>,
    services: Vec<ServiceRow>,
    service_policy: Vec<ServicePolicyRow>,
    service_ports: &'a [ServicePortRef],
    endpoints: &'a [Endpoint],
    subject_classes: &'a [SubjectClass],
    peer_classes: &'a [PeerClass],
}

#[derive(Serialize)]
struct Json<'a> {
    node: Option<&'a str>,
    stats: PlanStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    dump: Option<Dump<'a>>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = common::load(&args.input)?;
    let plan = compiler::compile(&loaded.cluster, args.node.as_deref());
    let dump = args.dump.then(|| Dump {
        ipcache: plan.ipcache.iter().map(|e| ipcache_row(&plan, e)).collect(),
        policy: {
            // Map order is by prefix length first; people read by subject, then direction.
            let mut entries: Vec<_> = plan.policy.iter().collect();
            entries.sort_by_key(|(k, _)| {
                (
                    k.subject_class(),
                    k.dir,
                    k.peer_class(),
                    k.proto,
                    k.port_number(),
                    k.prefixlen,
                )
            });
            entries.into_iter().map(|e| policy_row(&plan, e)).collect()
        },
        services: plan
            .services
            .iter()
            .map(|e| service_row(&plan, e))
            .collect(),
        service_policy: plan
            .service_policy
            .iter()
            .map(|e| service_policy_row(&plan, e))
            .collect(),
        service_ports: &plan.service_ports,
        endpoints: &plan.endpoints,
        subject_classes: &plan.subject_classes,
        peer_classes: &plan.peer_classes,
    });
    match args.output {
        Output::Json => common::print_json(&Json {
            node: args.node.as_deref(),
            stats: plan.stats(),
            dump,
        })?,
        Output::Table => common::emit(&table(&plan, args.node.as_deref(), dump.as_ref()))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn ipcache_row(plan: &Plan, (k, v): &(IpcacheKey, IpcacheValue)) -> IpcacheRow {
    let prefix = k.addr_prefix() as u8;
    let addr = if k.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.addr))
    };
    let flags = [
        (EP_LOCAL, "local"),
        (EP_ISOLATED_INGRESS, "isolated-ingress"),
        (EP_ISOLATED_EGRESS, "isolated-egress"),
        (EP_SERVICE, "service"),
    ]
    .into_iter()
    .filter(|(bit, _)| v.flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    IpcacheRow {
        prefix: IpNet::new(addr, prefix).unwrap_or_else(|_| IpNet::from(addr)),
        peer_class: v.peer_class,
        subject_class: v.subject_class,
        flags,
        endpoint: plan.endpoint(v.endpoint).map(Endpoint::key),
    }
}

fn service_name(plan: &Plan, id: u32) -> String {
    crate::eval::plan::service_port(plan, id)
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .unwrap_or_else(|| format!("<service port {id}>"))
}

fn service_row(plan: &Plan, (k, v): &(ServiceKey, ServiceValue)) -> ServiceRow {
    let address = if k.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.addr))
    };
    ServiceRow {
        address,
        protocol: ProtocolArg(k.proto).to_string(),
        port: k.port,
        service_port: v.service_port,
        service: service_name(plan, v.service_port),
    }
}

fn service_policy_row(plan: &Plan, (k, v): &(ServicePolicyKey, PolicyValue)) -> ServicePolicyRow {
    ServicePolicyRow {
        subject_class: k.subject,
        service_port: k.service_port,
        service: service_name(plan, k.service_port),
        policy: plan
            .policy_ref(v)
            .map(|r| r.key())
            .unwrap_or_else(|| format!("<policy {}>", v.policy)),
        rule: v.rule,
    }
}

fn policy_row(plan: &Plan, (k, v): &(PolicyKey, PolicyValue)) -> PolicyRow {
    let direction = if k.dir == Direction::Ingress.code() {
        "ingress"
    } else {
        "egress"
    };
    let (protocol, ports) = if k.prefixlen <= POLICY_PREFIX_ANY_PROTO {
        (None, None)
    } else if k.prefixlen <= POLICY_PREFIX_ANY_PORT {
        (Some(ProtocolArg(k.proto).to_string()), None)
    } else {
        // The last 16 bits hold the port; a shorter prefix is a power-of-two aligned block.
        let free_bits = POLICY_PREFIX_FULL - k.prefixlen.min(POLICY_PREFIX_FULL);
        let start = k.port_number();
        let end = start | ((1u32 << free_bits) - 1) as u16;
        let ports = if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        };
        (Some(ProtocolArg(k.proto).to_string()), Some(ports))
    };
    PolicyRow {
        direction,
        subject_class: k.subject_class(),
        peer_class: (k.peer_class() != ANY_PEER).then(|| k.peer_class()),
        protocol,
        ports,
        policy: plan
            .policy_ref(v)
            .map(|r| r.key())
            .unwrap_or_else(|| format!("<policy {}>", v.policy)),
        rule: v.rule,
    }
}

fn table(plan: &Plan, node: Option<&str>, dump: Option<&Dump>) -> String {
    use std::fmt::Write;
    let s = plan.stats();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan for {}",
        node.map(|n| format!("node {n}"))
            .unwrap_or_else(|| "every node (all pods local)".into())
    );
    for (name, n) in [
        ("policies", s.policies),
        ("endpoints", s.endpoints),
        ("subject classes", s.subject_classes),
        ("peer classes", s.peer_classes),
        ("ipcache entries", s.ipcache_entries),
        ("policy entries", s.policy_entries),
        ("service ports", plan.service_ports.len()),
        ("service entries", s.service_entries),
        ("service policy", s.service_policy_entries),
    ] {
        let _ = writeln!(out, "  {name:<16} {n:>8}");
    }
    let Some(d) = dump else {
        return out;
    };
    let _ = writeln!(out, "\nipcache (address -> classes):");
    let w = d
        .ipcache
        .iter()
        .map(|r| r.prefix.to_string().len())
        .max()
        .unwrap_or(0);
    for r in &d.ipcache {
        let subject = if r.subject_class != 0 {
            format!(" subject {}", r.subject_class)
        } else {
            String::new()
        };
        let flags = if r.flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.flags.join(","))
        };
        let ep = r
            .endpoint
            .as_ref()
            .map(|e| format!(" {e}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<w$} -> peer {}{subject}{flags}{ep}",
            r.prefix.to_string(),
            r.peer_class
        );
    }
    let _ = writeln!(
        out,
        "\npolicy (subject dir peer proto/ports -> policy rule):"
    );
    for r in &d.policy {
        let peer = r
            .peer_class
            .map(|p| format!("peer {p}"))
            .unwrap_or_else(|| "any peer".into());
        let what = match (&r.protocol, &r.ports) {
            (None, _) => "any protocol".to_string(),
            (Some(p), None) => format!("{p}/*"),
            (Some(p), Some(ports)) => format!("{p}/{ports}"),
        };
        let _ = writeln!(
            out,
            "  subject {} {} {peer} {what} -> {} {}[{}]",
            r.subject_class, r.direction, r.policy, r.direction, r.rule
        );
    }
    if !plan.service_ports.is_empty() {
        let _ = writeln!(
            out,
            "\nservices (virtual address proto/port -> service port):"
        );
        for r in &d.services {
            let addr = match r.address {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            let _ = writeln!(
                out,
                "  {addr} {}/{} -> {} {}",
                r.protocol, r.port, r.service_port, r.service
            );
        }
        let _ = writeln!(
            out,
            "\nservice policy (subject -> service port: policy rule allowing every endpoint):"
        );
        for r in &d.service_policy {
            let _ = writeln!(
                out,
                "  subject {} -> {} {}: {} egress[{}]",
                r.subject_class, r.service_port, r.service, r.policy, r.rule
            );
        }
        let _ = writeln!(out, "\nservice ports (endpoint:target port):");
        for (i, sp) in d.service_ports.iter().enumerate() {
            let backends: Vec<String> = sp
                .backends
                .iter()
                .map(|(ip, port)| match ip {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                })
                .collect();
            let name = if sp.port_name.is_empty() {
                String::new()
            } else {
                format!(" ({})", sp.port_name)
            };
            let _ = writeln!(
                out,
                "  {}: {}/{} {}/{}{name} -> {}",
                i + 1,
                sp.namespace,
                sp.name,
                sp.port,
                sp.protocol,
                if backends.is_empty() {
                    "no endpoints".to_string()
                } else {
                    backends.join(", ")
                }
            );
        }
    }
    let _ = writeln!(out, "\nendpoints:");
    for (i, e) in d.endpoints.iter().enumerate() {
        let ips: Vec<String> = e.ips.iter().map(|ip| ip.to_string()).collect();
        let iso: Vec<&str> = [
            (e.isolated_ingress, "isolated-ingress"),
            (e.isolated_egress, "isolated-egress"),
        ]
        .into_iter()
        .filter(|(b, _)| *b)
        .map(|(_, n)| n)
        .collect();
        let _ = writeln!(
            out,
            "  {} {} {} subject {}{}",
            i + 1,
            e.key(),
            ips.join(","),
            e.subject_class,
            if iso.is_empty() {
                String::new()
            } else {
                format!(" [{}]", iso.join(","))
            }
        );
    }
    let _ = writeln!(out, "\nsubject classes:");
    for c in d.subject_classes {
        let names = |ids: &[u32]| -> String {
            let v: Vec<String> = ids
                .iter()
                .map(|id| {
                    plan.policies
                        .get((*id as usize).wrapping_sub(1))
                        .map(|r| r.key())
                        .unwrap_or_else(|| format!("<policy {id}>"))
                })
                .collect();
            if v.is_empty() {
                "-".into()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "  {}: members {}\n     ingress: {}\n     egress:  {}",
            c.id,
            c.members.join(", "),
            names(&c.ingress_policies),
            names(&c.egress_policies)
        );
    }
    let _ = writeln!(out, "\npeer classes:");
    for c in d.peer_classes {
        let _ = writeln!(
            out,
            "  {}: members {}\n     satisfies: {}",
            c.id,
            c.members.join(", "),
            if c.satisfies.is_empty() {
                "-".into()
            } else {
                c.satisfies.join("; ")
            }
        );
    }
    out
}
