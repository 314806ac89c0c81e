//! `netward explain`: is one flow allowed, and why, side by side.
//!
//! The verdict comes from the compiled Plan (what the datapath would do); the reasons come
//! from the spec evaluator, which reads policies directly and can name policies and rules.
//! The two are independent implementations: if they ever disagree that is a netward bug, and
//! the command says so loudly and exits 2 rather than guess.
//!
//! Toward a Service virtual address on a port the Service serves, the egress side is decided
//! against every endpoint kube-proxy may rewrite the connection to: the output lists the
//! Service, each endpoint (address, target port, pod) and its own verdict. The ingress side is
//! not enforced at the virtual address; each endpoint's ingress applies after the rewrite.
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::bail;
use serde::Serialize;

use super::common::{self, pick_family, Endpoint, Input, Output, ProtocolArg};
use super::describe;
use super::{EXIT_DENIED, EXIT_ERROR};
use crate::compiler;
use crate::eval::{self, Flow, SideVerdict};
use crate::model::{Cluster, Direction, Pod, Policy, Service, ServicePort};
use crate::plan::PolicyRef;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub input: Input,
    /// Source: `namespace/pod`, a pod name, or an IP address.
    #[arg(long)]
    pub from: String,
    /// Destination: `namespace/pod`, a pod name, or an IP address.
    #[arg(long)]
    pub to: String,
    /// Destination port (required for TCP, UDP and SCTP).
    #[arg(long)]
    pub port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number.
    #[arg(long, default_value = "TCP")]
    pub protocol: ProtocolArg,
    /// Compile for this node: only its pods are enforced (default: every pod).
    #[arg(long)]
    pub node: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct JsonEnd {
    address: IpAddr,
    pod: Option<String>,
}

#[derive(Serialize)]
struct JsonRule {
    policy: String,
    rule: u16,
    text: String,
}

/// One endpoint of the Service port a flow to a virtual address is rewritten for.
#[derive(Serialize)]
struct JsonBackend {
    address: IpAddr,
    /// Target port on the endpoint.
    port: u16,
    pod: Option<String>,
    /// `allowed`, `denied`, or `not_isolated` when the client's egress is not isolated.
    verdict: &'static str,
    allowed_by: Option<JsonRule>,
}

#[derive(Serialize)]
struct JsonService {
    namespace: String,
    name: String,
    port_name: String,
    protocol: String,
    port: u16,
    backends: Vec<JsonBackend>,
}

#[derive(Serialize)]
struct JsonSide {
    /// `allowed`, `denied`, `service_denied`, `not_isolated` or `not_enforced`.
    verdict: &'static str,
    isolated_by: Vec<String>,
    allowed_by: Option<JsonRule>,
    /// One line, as in the table output.
    reason: String,
}

#[derive(Serialize)]
struct Json {
    from: JsonEnd,
    to: JsonEnd,
    protocol: String,
    port: u16,
    allowed: bool,
    /// Set when the destination is a Service virtual address serving this protocol and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<JsonService>,
    egress: JsonSide,
    ingress: JsonSide,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = common::load(&args.input)?;
    let cluster = &loaded.cluster;
    let from = Endpoint::resolve(cluster, &args.from)?;
    let to = Endpoint::resolve(cluster, &args.to)?;
    let Some((src, dst)) = pick_family(&from.ips, &to.ips) else {
        bail!(
            "{} and {} have no address family in common",
            args.from,
            args.to
        );
    };
    let port = match (args.protocol.has_ports(), args.port) {
        (true, Some(p)) => p,
        (true, None) => bail!("--port is required for {}", args.protocol),
        (false, _) => 0,
    };
    let flow = Flow {
        src,
        dst,
        protocol: args.protocol.0,
        port,
    };
    let node = args.node.as_deref();
    let plan = compiler::compile(cluster, node);
    let verdict = eval::plan::evaluate(&plan, &flow);
    let why = eval::spec::evaluate(cluster, node, &flow);
    if verdict.egress.allows() != why.egress.allows()
        || verdict.ingress.allows() != why.ingress.allows()
    {
        eprintln!(
            "INTERNAL ERROR: the compiled Plan and the NetworkPolicy spec disagree on this flow \
             (plan: egress {}, ingress {}; spec: egress {}, ingress {}). This is a netward bug; \
             please report it with these manifests.",
            word(verdict.egress.allows()),
            word(verdict.ingress.allows()),
            word(why.egress.allows()),
            word(why.ingress.allows()),
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }

    let flow_text = if args.protocol.has_ports() {
        format!("{}/{port}", args.protocol)
    } else {
        args.protocol.to_string()
    };
    let src_pod = cluster.pod_by_ip(src);
    let dst_pod = cluster.pod_by_ip(dst);
    let service = dst_pod
        .is_none()
        .then(|| eval::spec::served_port(cluster, &flow))
        .flatten();
    let ctx = Context {
        cluster,
        node,
        flow_text: &flow_text,
        src_pod,
        dst_pod,
        from_text: from.describe(src),
        to_text: to.describe(dst),
        service,
        flow,
    };
    let mut egress = ctx.side(Direction::Egress, &why.egress);
    let ingress = ctx.side(Direction::Ingress, &why.ingress);
    let json_service = service.map(|(svc, sp)| {
        let (text, json) = ctx.service_block(svc, sp, &why.egress);
        egress.text.push_str(&text);
        json
    });
    let allowed = verdict.allowed();
    match args.output {
        Output::Json => common::print_json(&Json {
            from: JsonEnd {
                address: src,
                pod: from.pod.clone(),
            },
            to: JsonEnd {
                address: dst,
                pod: to.pod.clone(),
            },
            protocol: args.protocol.to_string(),
            port,
            allowed,
            service: json_service,
            egress: egress.json,
            ingress: ingress.json,
        })?,
        Output::Table => {
            common::emit(&format!(
                "{} -> {} {flow_text}: {}\n\n{}{}",
                ctx.from_text,
                ctx.to_text,
                if allowed { "ALLOWED" } else { "DENIED" },
                egress.text,
                ingress.text
            ))?;
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    })
}

fn word(allows: bool) -> &'static str {
    if allows {
        "allows"
    } else {
        "denies"
    }
}

struct Context<'a> {
    cluster: &'a Cluster,
    node: Option<&'a str>,
    flow_text: &'a str,
    src_pod: Option<&'a Pod>,
    dst_pod: Option<&'a Pod>,
    from_text: String,
    to_text: String,
    /// The Service port the destination virtual address serves for this flow.
    service: Option<(&'a Service, &'a ServicePort)>,
    flow: Flow,
}

struct Side {
    text: String,
    json: JsonSide,
}

impl Context<'_> {
    fn policy(&self, r: &PolicyRef) -> Option<&Policy> {
        self.cluster
            .policies
            .iter()
            .find(|p| p.namespace == r.namespace && p.name == r.name)
    }

    /// `production/x` plus ` (invalid: fails closed)` when the policy has errors.
    fn policy_name(&self, r: &PolicyRef) -> String {
        match self.policy(r) {
            Some(p) if !p.errors.is_empty() => format!("{} (invalid: fails closed)", r.key()),
            _ => r.key(),
        }
    }

    fn side(&self, dir: Direction, v: &SideVerdict) -> Side {
        let (local, local_text, peer_text) = match dir {
            Direction::Egress => (self.src_pod, &self.from_text, &self.to_text),
            Direction::Ingress => (self.dst_pod, &self.to_text, &self.from_text),
        };
        let who = local.map(Pod::key).unwrap_or_else(|| local_text.clone());
        let head = format!("{dir} of {who}");
        // Named ports resolve on the pod receiving the traffic: the destination, either way.
        let receiver = self.dst_pod;
        let mut text = String::new();
        let (verdict, isolated_by, allowed_by, reason) = match v {
            SideVerdict::NotEnforced => {
                let reason = self.not_enforced_reason(dir, local, local_text);
                text.push_str(&format!("{head}: allowed ({reason})\n"));
                ("not_enforced", vec![], None, reason)
            }
            SideVerdict::NotIsolated => {
                let reason = format!("not isolated: no policy selects {who} for {dir}");
                text.push_str(&format!("{head}: allowed ({reason})\n"));
                ("not_isolated", vec![], None, reason)
            }
            SideVerdict::Allowed {
                isolated_by,
                policy,
                rule,
            } => {
                let line = match self.policy(policy) {
                    Some(p) => describe::rule_line(p, dir, *rule as usize),
                    None => format!("{} {dir}[{rule}]", policy.key()),
                };
                text.push_str(&format!("{head}: allowed\n"));
                text.push_str(&format!(
                    "  isolated by: {}\n",
                    isolated_by
                        .iter()
                        .map(|r| self.policy_name(r))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                text.push_str(&format!("  allowed by:  {line}\n"));
                if let Some(res) = self
                    .policy(policy)
                    .and_then(|p| p.rules(dir).get(*rule as usize))
                    .and_then(|r| describe::named_port_resolution(r, receiver))
                {
                    text.push_str(&format!("               named ports: {res}\n"));
                }
                let json_rule = JsonRule {
                    policy: policy.key(),
                    rule: *rule,
                    text: line.clone(),
                };
                (
                    "allowed",
                    isolated_by.iter().map(PolicyRef::key).collect(),
                    Some(json_rule),
                    format!("allowed by {line}"),
                )
            }
            SideVerdict::Denied { isolated_by } => {
                let names: Vec<String> = isolated_by.iter().map(|r| self.policy_name(r)).collect();
                text.push_str(&format!("{head}: DENIED\n"));
                text.push_str(&format!("  isolated by: {}\n", names.join(", ")));
                let word = match dir {
                    Direction::Ingress => "from",
                    Direction::Egress => "to",
                };
                text.push_str(&format!(
                    "  no rule of these policies allows {} {word} {peer_text}:\n",
                    self.flow_text
                ));
                text.push_str(&self.candidate_rules(dir, isolated_by));
                text.push_str(&format!(
                    "  to allow it, add an {dir} rule matching this flow to one of these policies, or a new policy selecting {who}\n"
                ));
                let reason = format!(
                    "denied: isolated by {} and no rule allows it",
                    names.join(", ")
                );
                (
                    "denied",
                    isolated_by.iter().map(PolicyRef::key).collect(),
                    None,
                    reason,
                )
            }
            SideVerdict::ServiceDenied {
                isolated_by,
                service,
                backends,
                denied,
            } => {
                let names: Vec<String> = isolated_by.iter().map(|r| self.policy_name(r)).collect();
                text.push_str(&format!("{head}: DENIED\n"));
                text.push_str(&format!("  isolated by: {}\n", names.join(", ")));
                let reason = if *backends == 0 {
                    format!(
                        "denied: {} has no ready endpoint of this address family to connect to",
                        service.describe()
                    )
                } else {
                    format!(
                        "denied: {} of the {backends} endpoints of {} are not allowed, and kube-proxy may pick any of them",
                        denied.len(),
                        service.describe()
                    )
                };
                text.push_str(&format!("  {reason}\n"));
                if *backends > 0 {
                    text.push_str(
                        "  to allow it, let an egress rule of these policies allow every endpoint below (address and target port)\n",
                    );
                }
                (
                    "service_denied",
                    isolated_by.iter().map(PolicyRef::key).collect(),
                    None,
                    reason,
                )
            }
        };
        Side {
            text,
            json: JsonSide {
                verdict,
                isolated_by,
                allowed_by,
                reason,
            },
        }
    }

    /// The Service block of the egress side: the Service port and every endpoint with its
    /// own verdict (the connection is allowed only when all are).
    fn service_block(
        &self,
        svc: &Service,
        sp: &ServicePort,
        egress: &SideVerdict,
    ) -> (String, JsonService) {
        let target = eval::spec::service_target(svc, sp);
        let client = self.src_pod;
        let isolated = matches!(
            egress,
            SideVerdict::Allowed { .. } | SideVerdict::ServiceDenied { .. }
        );
        let rules = match client {
            Some(c) if isolated => {
                eval::spec::service_backend_rules(self.cluster, c, svc, sp, &self.flow)
            }
            _ => eval::spec::service_backends(svc, sp, self.flow.dst)
                .into_iter()
                .map(|b| (b, None))
                .collect(),
        };
        let mut text = format!(
            "  {} at virtual address {}: every endpoint must be allowed, kube-proxy may pick any of them\n",
            target.describe(),
            self.flow.dst
        );
        if rules.is_empty() {
            text.push_str("    no ready endpoint of this address family\n");
        }
        let mut backends = Vec::new();
        for ((ip, port), hit) in rules {
            let pod = self.cluster.pod_by_ip(ip).map(Pod::key);
            let who = pod.clone().unwrap_or_else(|| "not a pod".into());
            let (verdict, allowed_by) = match (&hit, isolated) {
                (_, false) => ("not_isolated", None),
                (None, true) => ("denied", None),
                (Some((policy, rule)), true) => {
                    let line = match self.policy(policy) {
                        Some(p) => describe::rule_line(p, Direction::Egress, *rule as usize),
                        None => format!("{} egress[{rule}]", policy.key()),
                    };
                    (
                        "allowed",
                        Some(JsonRule {
                            policy: policy.key(),
                            rule: *rule,
                            text: line,
                        }),
                    )
                }
            };
            let shown = match (&allowed_by, verdict) {
                (Some(r), _) => format!("allowed by {}", r.text),
                (None, "denied") => "DENIED: no egress rule allows it".into(),
                _ => "allowed (not isolated)".into(),
            };
            let addr = match ip {
                IpAddr::V4(_) => format!("{ip}:{port}"),
                IpAddr::V6(_) => format!("[{ip}]:{port}"),
            };
            text.push_str(&format!("    {addr} ({who}): {shown}\n"));
            backends.push(JsonBackend {
                address: ip,
                port,
                pod,
                verdict,
                allowed_by,
            });
        }
        let json = JsonService {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            port_name: target.port_name.clone(),
            protocol: target.protocol.to_string(),
            port: target.port,
            backends,
        };
        (text, json)
    }

    /// Why a side is not enforced: self traffic, a pod on another node, a Service virtual
    /// address, or not a pod.
    fn not_enforced_reason(&self, dir: Direction, local: Option<&Pod>, local_text: &str) -> String {
        let same_pod =
            matches!((self.src_pod, self.dst_pod), (Some(a), Some(b)) if std::ptr::eq(a, b));
        let at_vip = dir == Direction::Ingress;
        match local {
            _ if same_pod => {
                "not enforced: a pod's traffic to itself never leaves its network namespace".into()
            }
            None if at_vip && self.service.is_some() => {
                let (svc, sp) = self.service.expect("checked");
                format!(
                    "not enforced here: {local_text} is a virtual address of {}; the endpoint kube-proxy picks enforces its own ingress after the rewrite, on its veth",
                    eval::spec::service_target(svc, sp).describe()
                )
            }
            Some(p) => format!(
                "not enforced: {} runs on {}, not on node {}",
                p.key(),
                p.node.as_deref().unwrap_or("no node"),
                self.node.unwrap_or("?")
            ),
            None => format!(
                "not enforced: {local_text} is not a pod address, no pod policy applies to it"
            ),
        }
    }

    /// The rules of the isolating policies, one per line, so the user sees where to add one.
    fn candidate_rules(&self, dir: Direction, isolated_by: &[PolicyRef]) -> String {
        let mut text = String::new();
        for r in isolated_by {
            match self.policy(r) {
                Some(p) if !p.errors.is_empty() => {
                    let errors: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
                    text.push_str(&format!(
                        "    {}: invalid ({}), allows nothing\n",
                        r.key(),
                        errors.join("; ")
                    ));
                }
                Some(p) if p.rules(dir).is_empty() => {
                    text.push_str(&format!("    {}: no {dir} rules\n", r.key()))
                }
                Some(p) => {
                    for i in 0..p.rules(dir).len() {
                        text.push_str(&format!("    {}\n", describe::rule_line(p, dir, i)));
                    }
                }
                None => text.push_str(&format!("    {}\n", r.key())),
            }
        }
        text
    }
}
