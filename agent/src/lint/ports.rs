//! Named ports that no pod receiving the traffic declares. A named port resolves against the
//! container ports of the receiver: the selected pods on ingress, the peer pods on egress; if
//! none of them declares the name for the protocol, the port entry matches nothing.
use super::similar::{near, quote_list};
use super::{Finding, Index, Severity};
use crate::model::{Direction, Peer, Pod, Policy, PortRef, Rule};

const CODE: &str = "named-port-undeclared";

pub(super) fn check<'a>(
    ix: &Index<'a>,
    policy: &Policy,
    dir: Direction,
    rule: &'a Rule,
    field: &str,
    out: &mut Vec<Finding>,
) {
    let named: Vec<(usize, &str, _)> = rule
        .ports
        .iter()
        .enumerate()
        .filter_map(|(k, p)| match &p.port {
            Some(PortRef::Name(n)) => Some((k, n.as_str(), p.protocol)),
            _ => None,
        })
        .collect();
    if named.is_empty() {
        return;
    }
    // Egress: decide from the memoised resolutions; list the receivers only for a message.
    if dir == Direction::Egress {
        let declared = |name: &'a str, protocol| {
            if rule.peers.is_empty() {
                !ix.resolutions(None, name, protocol).is_empty()
            } else {
                rule.peers
                    .iter()
                    .any(|p| !ix.resolutions(Some(p), name, protocol).is_empty())
            }
        };
        if named
            .iter()
            .all(|&(_, name, protocol)| declared(name, protocol))
        {
            return;
        }
    }
    let receivers = receivers(ix, policy, dir, rule);
    if receivers.is_empty() {
        // Egress to ipBlocks only, none holding a pod: named ports resolve against
        // destination pods, so they match nothing here. (Selectors that match no pod are
        // reported by the selector check.)
        let only_blocks =
            !rule.peers.is_empty() && rule.peers.iter().all(|p| matches!(p, Peer::IpBlock { .. }));
        if dir == Direction::Egress && only_blocks {
            for &(k, name, protocol) in &named {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: CODE,
                    object: policy.key(),
                    field: format!("{field}.ports[{k}].port"),
                    message: format!(
                        "named port `{name}` ({protocol}) on a rule whose destinations are \
                         ipBlocks holding no pod: a named port is resolved against the \
                         destination pod's container ports, so it matches nothing here"
                    ),
                    fix: "Use the port number (e.g. `port: 443`) for destinations outside the \
                          cluster."
                        .to_string(),
                });
            }
        }
        return;
    }
    let who = match dir {
        Direction::Ingress => "pods this policy selects",
        Direction::Egress => "destination pods",
    };
    for (k, name, protocol) in named {
        if receivers
            .iter()
            .any(|r| r.resolve_named_port(name, protocol).is_some())
        {
            continue;
        }
        let other_proto: Vec<String> = receivers
            .iter()
            .flat_map(|r| r.ports.iter())
            .filter(|p| p.name.as_deref() == Some(name))
            .map(|p| p.protocol.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let declared: Vec<&str> = receivers
            .iter()
            .flat_map(|r| r.ports.iter())
            .filter(|p| p.protocol == protocol)
            .filter_map(|p| p.name.as_deref())
            .collect();
        let mut message = format!(
            "named port `{name}` ({protocol}) is declared by none of the {} {who} ({}), so \
             this port entry matches nothing",
            receivers.len(),
            short_pods(&receivers)
        );
        let mut fix = String::new();
        if !other_proto.is_empty() {
            message.push_str(&format!(
                "; `{name}` is declared with protocol {}",
                other_proto.join("/")
            ));
            fix = format!(
                "Set `protocol: {}` on this port entry.",
                other_proto.join(" or ")
            );
        } else {
            let alternatives = near(name, declared);
            if !alternatives.is_empty() {
                fix = format!(
                    "Did you mean {} instead of `{name}`?",
                    quote_list(&alternatives)
                );
            }
        }
        if fix.is_empty() {
            fix = format!(
                "Add a container port named `{name}` ({protocol}) to the {who}, or use the port \
                 number."
            );
        }
        out.push(Finding {
            severity: Severity::Warning,
            code: CODE,
            object: policy.key(),
            field: format!("{field}.ports[{k}].port"),
            message,
            fix,
        });
    }
}

/// The pods a named port of `rule` is resolved against, in cluster order.
fn receivers<'a>(ix: &Index<'a>, policy: &Policy, dir: Direction, rule: &'a Rule) -> Vec<&'a Pod> {
    match dir {
        Direction::Ingress => ix.selected(policy),
        Direction::Egress if rule.peers.is_empty() => ix.pods().collect(),
        Direction::Egress => ix.peers_pods(&rule.peers),
    }
}

fn short_pods(pods: &[&Pod]) -> String {
    let mut s: Vec<String> = pods.iter().take(3).map(|p| p.key()).collect();
    if pods.len() > 3 {
        s.push("...".to_string());
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use crate::lint::{lint, Finding};
    use crate::model::Direction;
    use crate::testkit::*;

    fn only(f: Vec<Finding>) -> Vec<Finding> {
        f.into_iter().filter(|f| f.code == super::CODE).collect()
    }

    fn base() -> ClusterBuilder {
        ClusterBuilder::new()
            .pod("prod", "web", &[("app", "web")], "10.0.0.1")
            .port("http", 8080, TCP)
            .pod("prod", "client", &[("app", "client")], "10.0.0.2")
            .port("https", 9443, TCP)
            .pod("kube-system", "dns", &[("k8s-app", "kube-dns")], "10.0.1.1")
            .port("dns", 53, UDP)
    }

    #[test]
    fn ingress_named_port_resolves_on_selected_pods() {
        let ok = base()
            .policy(
                policy("prod", "p")
                    .select(&[("app", "web")])
                    .ingress(rule().named_port(TCP, "http")),
            )
            .build();
        assert_eq!(only(lint(&ok)), vec![]);
        // `https` is declared by client, the sender, not by web, the receiver.
        let bad = base()
            .policy(
                policy("prod", "p")
                    .select(&[("app", "web")])
                    .ingress(rule().tcp(1).named_port(TCP, "https")),
            )
            .build();
        let f = only(lint(&bad));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].field, "spec.ingress[0].ports[1].port");
        assert!(f[0].message.contains("prod/web"), "{}", f[0].message);
    }

    #[test]
    fn egress_named_port_resolves_on_peers() {
        let ok = base()
            .policy(
                policy("prod", "p")
                    .types(&[Direction::Egress])
                    .egress(rule().namespaces(&[]).named_port(UDP, "dns")),
            )
            .build();
        assert_eq!(only(lint(&ok)), vec![]);
        let typo = base()
            .policy(
                policy("prod", "p")
                    .types(&[Direction::Egress])
                    .egress(rule().ip_block("10.0.1.0/24", &[]).named_port(UDP, "dsn")),
            )
            .build();
        let f = only(lint(&typo));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].field, "spec.egress[0].ports[0].port");
        assert!(f[0].fix.contains("`dns`"), "{}", f[0].fix);
    }

    #[test]
    fn egress_named_port_to_external_block() {
        let c = base()
            .policy(
                policy("prod", "p").types(&[Direction::Egress]).egress(
                    rule()
                        .ip_block("203.0.113.0/24", &[])
                        .named_port(TCP, "https"),
                ),
            )
            .build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].field, "spec.egress[0].ports[0].port");
        assert!(f[0].fix.contains("port number"), "{}", f[0].fix);
        // A block that holds a pod declaring the name is fine.
        let ok = base()
            .policy(
                policy("prod", "p")
                    .types(&[Direction::Egress])
                    .egress(rule().ip_block("10.0.0.0/24", &[]).named_port(TCP, "https")),
            )
            .build();
        assert_eq!(only(lint(&ok)), vec![]);
    }

    #[test]
    fn named_port_with_wrong_protocol() {
        let c = base()
            .policy(
                policy("prod", "p")
                    .types(&[Direction::Egress])
                    .egress(rule().named_port(TCP, "dns")),
            )
            .build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].fix.contains("protocol: UDP"), "{}", f[0].fix);
    }
}
