//! NetworkPolicy -> [`model::Policy`], validated as apimachinery's
//! `pkg/apis/networking/validation` does and defaulted as `SetDefaults_NetworkPolicy` does.
//!
//! A policy with any validation error fails closed: it is kept, isolates the pods it selects in
//! both directions and allows nothing (every pod of its namespace when the podSelector itself
//! is invalid), so a bad edit can only ever close traffic, never open it.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::syntax;
use crate::model::{
    FieldError, LabelSelector, NamespaceScope, Operator, Peer, Policy, PortRef, PortSpec, Protocol,
    Requirement, Rule,
};

/// Collects field errors and the notices (accepted but suspicious input) of one object.
#[derive(Default)]
pub(super) struct Report {
    pub errors: Vec<FieldError>,
    pub notices: Vec<String>,
}

impl Report {
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Convert one policy living in `namespace`. Validation errors end up in `Policy::errors` and
/// the returned policy is already rewritten to fail closed; notices are returned beside it.
pub(super) fn convert_policy(
    np: &netv1::NetworkPolicy,
    namespace: &str,
    name: &str,
    origin: &str,
) -> (Policy, Vec<String>) {
    let mut r = Report::default();
    let default_spec = netv1::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);

    // A missing podSelector is the empty selector: every pod of the namespace.
    let pod_selector = match &spec.pod_selector {
        Some(sel) => {
            let before = r.errors.len();
            let parsed = label_selector(sel, "spec.podSelector", &mut r);
            // An invalid podSelector cannot say which pods the author meant: isolate them all.
            (r.errors.len() == before).then_some(parsed)
        }
        None => Some(LabelSelector::everything()),
    };

    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, rule)| {
            let path = format!("spec.ingress[{i}]");
            convert_rule(
                rule.from.as_deref(),
                "from",
                rule.ports.as_deref(),
                &path,
                namespace,
                &mut r,
            )
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, rule)| {
            let path = format!("spec.egress[{i}]");
            convert_rule(
                rule.to.as_deref(),
                "to",
                rule.ports.as_deref(),
                &path,
                namespace,
                &mut r,
            )
        })
        .collect();

    let (ingress_isolation, egress_isolation) =
        policy_types(spec.policy_types.as_deref(), spec.egress.as_deref(), &mut r);

    let mut policy = Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector: pod_selector.clone().unwrap_or_default(),
        ingress_isolation,
        egress_isolation,
        ingress,
        egress,
        origin: origin.to_string(),
        errors: Vec::new(),
    };
    if !r.errors.is_empty() {
        // Fail closed (see the module docs).
        policy.pod_selector = pod_selector.unwrap_or_else(LabelSelector::everything);
        policy.ingress_isolation = true;
        policy.egress_isolation = true;
        policy.ingress.clear();
        policy.egress.clear();
        policy.errors = r.errors;
    }
    (policy, r.notices)
}

/// `spec.policyTypes`, defaulted as `SetDefaults_NetworkPolicy`: when omitted (or empty),
/// Ingress always and Egress when the policy has at least one egress rule. Note: upstream tests
/// `len(spec.Egress) != 0`, so `egress: []` alone does not make a policy isolate egress.
fn policy_types(
    types: Option<&[String]>,
    egress: Option<&[netv1::NetworkPolicyEgressRule]>,
    r: &mut Report,
) -> (bool, bool) {
    let types = types.unwrap_or_default();
    if types.is_empty() {
        return (true, egress.is_some_and(|e| !e.is_empty()));
    }
    if types.len() > 2 {
        r.error(
            "spec.policyTypes",
            format!(
                "may not specify more than two policyTypes (got {})",
                types.len()
            ),
        );
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => r.error(
                format!("spec.policyTypes[{i}]"),
                format!("Unsupported value: {other:?}: supported values: \"Ingress\", \"Egress\""),
            ),
        }
    }
    (ingress, egress)
}

fn convert_rule(
    peers: Option<&[netv1::NetworkPolicyPeer]>,
    peers_field: &str,
    ports: Option<&[netv1::NetworkPolicyPort]>,
    path: &str,
    namespace: &str,
    r: &mut Report,
) -> Rule {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| convert_peer(p, &format!("{path}.{peers_field}[{i}]"), namespace, r))
        .collect();
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| convert_port(p, &format!("{path}.ports[{i}]"), r))
        .collect();
    Rule { peers, ports }
}

/// `ValidateNetworkPolicyPeer`: exactly one of ipBlock or (podSelector and/or
/// namespaceSelector).
fn convert_peer(
    peer: &netv1::NetworkPolicyPeer,
    path: &str,
    namespace: &str,
    r: &mut Report,
) -> Option<Peer> {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, selectors) {
        (None, false) => {
            r.error(
                path,
                "must specify a peer (podSelector, namespaceSelector or ipBlock)",
            );
            None
        }
        (Some(_), true) => {
            r.error(path, "may not specify both ipBlock and another peer");
            None
        }
        (Some(block), false) => ip_block(block, &format!("{path}.ipBlock"), r),
        (None, true) => {
            let pods = peer
                .pod_selector
                .as_ref()
                .map(|s| label_selector(s, &format!("{path}.podSelector"), r))
                .unwrap_or_default();
            let namespaces = match &peer.namespace_selector {
                Some(s) => NamespaceScope::Selector(label_selector(
                    s,
                    &format!("{path}.namespaceSelector"),
                    r,
                )),
                None => NamespaceScope::Own(namespace.to_string()),
            };
            Some(Peer::Pods { namespaces, pods })
        }
    }
}

/// Parse a CIDR as the API server does; host bits are accepted and cleared, with a notice.
fn parse_cidr(s: &str, path: &str, r: &mut Report) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(net) => {
            let trunc = net.trunc();
            if trunc != net {
                r.notices
                    .push(format!("{path}: {s:?} has host bits set; using {trunc}"));
            }
            Some(trunc)
        }
        Err(_) => {
            let hint = if s.parse::<IpAddr>().is_ok() {
                " (a single address needs a prefix length, e.g. /32 or /128)"
            } else {
                ""
            };
            r.error(
                path,
                format!("{s:?}: must be a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/64){hint}"),
            );
            None
        }
    }
}

/// `ValidateIPBlock`: cidr required and valid; every except a strict subset of cidr.
fn ip_block(block: &netv1::IPBlock, path: &str, r: &mut Report) -> Option<Peer> {
    if block.cidr.is_empty() {
        r.error(format!("{path}.cidr"), "Required value");
        return None;
    }
    let cidr = parse_cidr(&block.cidr, &format!("{path}.cidr"), r);
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let epath = format!("{path}.except[{i}]");
        let Some(net) = parse_cidr(e, &epath, r) else {
            continue;
        };
        if let Some(cidr) = cidr {
            // Same family, inside cidr, and strictly longer prefix.
            if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
                r.error(
                    epath,
                    format!("{e:?}: must be a strict subset of `cidr` ({cidr})"),
                );
                continue;
            }
        }
        except.push(net);
    }
    except.sort();
    except.dedup();
    cidr.map(|cidr| Peer::IpBlock { cidr, except })
}

/// `ValidateNetworkPolicyPort`, with protocol defaulted to TCP.
fn convert_port(port: &netv1::NetworkPolicyPort, path: &str, r: &mut Report) -> Option<PortSpec> {
    let before = r.errors.len();
    let protocol = match port.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(p @ ("TCP" | "UDP" | "SCTP")) => p.parse().expect("known protocol"),
        Some(other) => {
            r.error(
                format!("{path}.protocol"),
                format!(
                    "Unsupported value: {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                ),
            );
            Protocol::Tcp
        }
    };
    let mut port_ref = None;
    let mut end_port = None;
    match &port.port {
        Some(IntOrString::Int(n)) => {
            match syntax::port_number(*n) {
                Ok(p) => port_ref = Some(PortRef::Number(p)),
                Err(m) => r.error(format!("{path}.port"), m),
            }
            if let Some(end) = port.end_port {
                match syntax::port_number(end) {
                    Err(m) => r.error(format!("{path}.endPort"), m),
                    Ok(_) if end < *n => r.error(
                        format!("{path}.endPort"),
                        format!("{end}: must be greater than or equal to `port` ({n})"),
                    ),
                    Ok(e) => end_port = Some(e),
                }
            }
        }
        Some(IntOrString::String(name)) => {
            for m in syntax::port_name_errors(name) {
                r.error(format!("{path}.port"), m);
            }
            if port.end_port.is_some() {
                r.error(
                    format!("{path}.endPort"),
                    "may not be specified when `port` is non-numeric",
                );
            }
            port_ref = Some(PortRef::Name(name.clone()));
        }
        None => {
            if port.end_port.is_some() {
                r.error(
                    format!("{path}.endPort"),
                    "may not be specified when `port` is not specified",
                );
            }
        }
    }
    (r.errors.len() == before).then_some(PortSpec {
        protocol,
        port: port_ref,
        end_port,
    })
}

/// `ValidateLabelSelector` (values validated too) and conversion. On errors the returned
/// selector is partial; callers decide what an invalid selector means.
pub(super) fn label_selector(
    sel: &metav1::LabelSelector,
    path: &str,
    r: &mut Report,
) -> LabelSelector {
    let mut out = LabelSelector::default();
    for (k, v) in sel.match_labels.iter().flatten() {
        for m in syntax::qualified_name_errors(k) {
            r.error(format!("{path}.matchLabels"), m);
        }
        for m in syntax::label_value_errors(v) {
            r.error(format!("{path}.matchLabels"), m);
        }
        out.match_labels.insert(k.clone(), v.clone());
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let rpath = format!("{path}.matchExpressions[{i}]");
        let before = r.errors.len();
        for m in syntax::qualified_name_errors(&req.key) {
            r.error(format!("{rpath}.key"), m);
        }
        let values = req.values.as_deref().unwrap_or_default();
        let operator = match req.operator.as_str() {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            other => {
                r.error(
                    format!("{rpath}.operator"),
                    format!("{other:?}: not a valid selector operator (In, NotIn, Exists, DoesNotExist)"),
                );
                None
            }
        };
        match operator {
            Some(Operator::In | Operator::NotIn) if values.is_empty() => r.error(
                format!("{rpath}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            Some(Operator::Exists | Operator::DoesNotExist) if !values.is_empty() => r.error(
                format!("{rpath}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            for m in syntax::label_value_errors(v) {
                r.error(format!("{rpath}.values[{j}]"), m);
            }
        }
        if let (Some(operator), true) = (operator, r.errors.len() == before) {
            let mut values = values.to_vec();
            values.sort();
            values.dedup();
            out.match_expressions.push(Requirement {
                key: req.key.clone(),
                operator,
                values,
            });
        }
    }
    out
}
