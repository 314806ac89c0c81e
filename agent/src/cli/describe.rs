//! Policies, rules, peers and ports in one line each, for `explain` and `plan --dump`, e.g.
//! `production/backend ingress[0]: from podSelector app=frontend, ports TCP/api`.
use crate::model::{Direction, NamespaceScope, Peer, Pod, Policy, PortRef, PortSpec, Rule};

/// `production/backend ingress[0]: from ..., ports ...`.
pub fn rule_line(policy: &Policy, dir: Direction, index: usize) -> String {
    match policy.rules(dir).get(index) {
        Some(rule) => format!("{} {dir}[{index}]: {}", policy.key(), rule_text(rule, dir)),
        None => format!("{} {dir}[{index}]", policy.key()),
    }
}

/// `from A OR B, ports TCP/80, UDP/53`.
pub fn rule_text(rule: &Rule, dir: Direction) -> String {
    let word = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peers = if rule.peers.is_empty() {
        "anywhere".to_string()
    } else {
        rule.peers
            .iter()
            .map(peer_text)
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let ports = if rule.ports.is_empty() {
        "all ports and protocols".to_string()
    } else {
        format!(
            "ports {}",
            rule.ports
                .iter()
                .map(port_text)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!("{word} {peers}, {ports}")
}

pub fn peer_text(peer: &Peer) -> String {
    match peer {
        Peer::Pods {
            namespaces: NamespaceScope::Own(ns),
            pods,
        } => {
            if pods.is_empty() {
                format!("podSelector {{}} (every pod of {ns})")
            } else {
                format!("podSelector {pods}")
            }
        }
        Peer::Pods {
            namespaces: NamespaceScope::Selector(ns),
            pods,
        } => {
            let ns = if ns.is_empty() {
                "namespaceSelector {} (every namespace)".to_string()
            } else {
                format!("namespaceSelector {ns}")
            };
            if pods.is_empty() {
                ns
            } else {
                format!("({ns} AND podSelector {pods})")
            }
        }
        Peer::IpBlock { cidr, except } => {
            if except.is_empty() {
                format!("ipBlock {cidr}")
            } else {
                let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
                format!("ipBlock {cidr} except {}", ex.join(", "))
            }
        }
    }
}

/// `TCP/8080`, `TCP/32000-32768`, `TCP/metrics`, `SCTP/*`.
pub fn port_text(p: &PortSpec) -> String {
    match (&p.port, p.end_port) {
        (None, _) => format!("{}/*", p.protocol),
        (Some(PortRef::Number(n)), Some(end)) if end != *n => {
            format!("{}/{n}-{end}", p.protocol)
        }
        (Some(PortRef::Number(n)), _) => format!("{}/{n}", p.protocol),
        (Some(PortRef::Name(name)), _) => format!("{}/{name}", p.protocol),
    }
}

/// Named ports of a rule resolved against the receiving pod: `api=8080 on production/backend`.
pub fn named_port_resolution(rule: &Rule, receiver: Option<&Pod>) -> Option<String> {
    let names: Vec<String> = rule
        .ports
        .iter()
        .filter_map(|p| match &p.port {
            Some(PortRef::Name(name)) => Some((name, p.protocol)),
            _ => None,
        })
        .map(|(name, proto)| match receiver {
            Some(pod) => match pod.resolve_named_port(name, proto) {
                Some(n) => format!("{name}={n}"),
                None => format!("{name}=(not declared)"),
            },
            None => format!("{name}=(no receiving pod)"),
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    let on = receiver
        .map(|p| format!(" on {}", p.key()))
        .unwrap_or_default();
    Some(format!("{}{on}", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LabelSelector, Protocol};

    fn sel(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: [(k.to_string(), v.to_string())].into(),
            match_expressions: vec![],
        }
    }

    #[test]
    fn rules_read_like_the_yaml() {
        let rule = Rule {
            peers: vec![
                Peer::Pods {
                    namespaces: NamespaceScope::Own("production".into()),
                    pods: sel("app", "frontend"),
                },
                Peer::Pods {
                    namespaces: NamespaceScope::Selector(sel("team", "orders")),
                    pods: sel("app", "orders-api"),
                },
                Peer::IpBlock {
                    cidr: "0.0.0.0/0".parse().unwrap(),
                    except: vec!["169.254.169.254/32".parse().unwrap()],
                },
            ],
            ports: vec![
                PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Number(8080)),
                    end_port: None,
                },
                PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Number(32000)),
                    end_port: Some(32768),
                },
                PortSpec {
                    protocol: Protocol::Udp,
                    port: Some(PortRef::Name("dns".into())),
                    end_port: None,
                },
                PortSpec {
                    protocol: Protocol::Sctp,
                    port: None,
                    end_port: None,
                },
            ],
        };
        assert_eq!(
            rule_text(&rule, Direction::Ingress),
            "from podSelector app=frontend OR (namespaceSelector team=orders AND podSelector app=orders-api) OR ipBlock 0.0.0.0/0 except 169.254.169.254/32, ports TCP/8080, TCP/32000-32768, UDP/dns, SCTP/*"
        );
        assert_eq!(
            rule_text(&Rule::default(), Direction::Egress),
            "to anywhere, all ports and protocols"
        );
    }
}
