//! Default-deny egress without DNS: a pod isolated for egress whose egress rules allow neither
//! UDP 53 nor TCP 53 (or only one of them) to any peer cannot resolve names (TCP is needed for
//! large answers and by some resolvers). Reported once per (first isolating policy, missing
//! protocols), listing the affected pods.
use std::collections::BTreeMap;

use super::{Finding, Index, Severity};
use crate::eval::spec::port_matches;
use crate::model::{Direction, Peer, Pod, PortRef, Protocol, Rule};

const CODE: &str = "egress-without-dns";
const DNS_PORT: u16 = 53;

/// Findings keyed by the index of the policy they are attributed to.
pub(super) fn check(ix: &Index) -> BTreeMap<usize, Vec<Finding>> {
    let cluster = ix.cluster;
    // Whether each policy has an egress rule reaching UDP 53 / TCP 53 somewhere. This does
    // not depend on the source pod, so it is computed once per policy.
    let reaches: Vec<[bool; 2]> = cluster
        .policies
        .iter()
        .map(|p| {
            [Protocol::Udp, Protocol::Tcp].map(|proto| {
                p.rules(Direction::Egress)
                    .iter()
                    .any(|r| rule_reaches(ix, r, proto, DNS_PORT))
            })
        })
        .collect();
    // Valid egress-isolating policies of each pod, in cluster order. Invalid policies are
    // reported as errors; their fail-closed isolation is not blamed on DNS as well.
    let mut isolating: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, p) in cluster.policies.iter().enumerate() {
        if p.errors.is_empty() && p.isolates(Direction::Egress) {
            for pod in ix.selected(p) {
                isolating
                    .entry((pod.namespace.as_str(), pod.name.as_str()))
                    .or_default()
                    .push(i);
            }
        }
    }
    // (first isolating policy, missing protocols) -> affected pods, in pod order.
    let mut groups: BTreeMap<(usize, Vec<Protocol>), Vec<&Pod>> = BTreeMap::new();
    for pod in ix.pods() {
        let Some(isolating) = isolating.get(&(pod.namespace.as_str(), pod.name.as_str())) else {
            continue;
        };
        let first = isolating[0];
        let missing: Vec<Protocol> = [Protocol::Udp, Protocol::Tcp]
            .into_iter()
            .enumerate()
            .filter(|(k, _)| !isolating.iter().any(|&i| reaches[i][*k]))
            .map(|(_, proto)| proto)
            .collect();
        if !missing.is_empty() {
            groups.entry((first, missing)).or_default().push(pod);
        }
    }
    let mut out: BTreeMap<usize, Vec<Finding>> = BTreeMap::new();
    for ((index, missing), affected) in groups {
        let policy = &cluster.policies[index];
        let missing_s: Vec<String> = missing.iter().map(|p| format!("{p} 53")).collect();
        let mut names: Vec<String> = affected.iter().take(5).map(|p| p.key()).collect();
        if affected.len() > 5 {
            names.push(format!("and {} more", affected.len() - 5));
        }
        let ports: Vec<String> = missing
            .iter()
            .map(|p| format!("{{protocol: {p}, port: 53}}"))
            .collect();
        out.entry(index).or_default().push(Finding {
            severity: Severity::Warning,
            code: CODE,
            object: policy.key(),
            field: if policy.egress.is_empty() {
                "spec.policyTypes".to_string()
            } else {
                "spec.egress".to_string()
            },
            message: format!(
                "this policy isolates {} pod(s) for egress ({}) and no egress rule of the \
                 policies selecting them allows {} to any peer: DNS lookups will fail",
                affected.len(),
                names.join(", "),
                missing_s.join(" or ")
            ),
            fix: format!(
                "Add an egress rule to the cluster DNS, e.g. `to: [{{namespaceSelector: \
                 {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}, podSelector: \
                 {{matchLabels: {{k8s-app: kube-dns}}}}}}]` with `ports: [{}]`.",
                ports.join(", ")
            ),
        });
    }
    out
}

/// Whether `rule` allows `protocol`/`port` to at least one destination: some address of an
/// ipBlock (or anything, without peers) or some matched pod for numeric or port-less entries,
/// and for named ports a destination pod that declares the name with that number.
pub(super) fn rule_reaches<'a>(
    ix: &Index<'a>,
    rule: &'a Rule,
    protocol: Protocol,
    port: u16,
) -> bool {
    // Without a receiving pod, named ports match nothing: these are the numeric matches.
    let numeric = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| port_matches(p, None, protocol.number(), port));
    let named: Vec<&str> = rule
        .ports
        .iter()
        .filter(|p| p.protocol == protocol)
        .filter_map(|p| match &p.port {
            Some(PortRef::Name(n)) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let via_named = |peer: Option<&'a Peer>| {
        named
            .iter()
            .any(|n| ix.resolutions(peer, n, protocol).contains(&port))
    };
    if rule.peers.is_empty() {
        return numeric || via_named(None);
    }
    rule.peers.iter().any(|peer| {
        let has_destination = match peer {
            Peer::IpBlock { .. } => true,
            Peer::Pods { .. } => ix.peer_has_pods(peer),
        };
        (numeric && has_destination) || via_named(Some(peer))
    })
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
            .pod("prod", "db", &[("app", "db")], "10.0.0.2")
            .pod("kube-system", "dns", &[("k8s-app", "kube-dns")], "10.0.1.1")
            .port("dns", 53, UDP)
            .port("dns-tcp", 53, TCP)
    }

    fn deny_all() -> PolicyBuilder {
        policy("prod", "default-deny").types(&[Direction::Ingress, Direction::Egress])
    }

    #[test]
    fn default_deny_egress_without_dns() {
        let c = base().policy(deny_all()).build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].object, "prod/default-deny");
        assert_eq!(f[0].field, "spec.policyTypes");
        assert!(f[0].message.contains("2 pod(s)"), "{}", f[0].message);
        assert!(
            f[0].message.contains("UDP 53 or TCP 53"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn only_udp_allowed_flags_tcp() {
        let c = base()
            .policy(deny_all())
            .policy(
                policy("prod", "dns")
                    .types(&[Direction::Egress])
                    .egress(rule().namespaces(&[]).udp(53)),
            )
            .build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].message.contains("allows TCP 53 to"),
            "{}",
            f[0].message
        );
        assert!(!f[0].message.contains("UDP 53"), "{}", f[0].message);
    }

    #[test]
    fn dns_allowed_by_named_ports_or_open_rules() {
        let named = base()
            .policy(deny_all())
            .policy(
                policy("prod", "dns").types(&[Direction::Egress]).egress(
                    rule()
                        .pods_in(&[], &[("k8s-app", "kube-dns")])
                        .named_port(UDP, "dns")
                        .named_port(TCP, "dns-tcp"),
                ),
            )
            .build();
        assert_eq!(only(lint(&named)), vec![]);
        let open = base()
            .policy(deny_all())
            .policy(
                policy("prod", "out")
                    .types(&[Direction::Egress])
                    .egress(rule()),
            )
            .build();
        assert_eq!(only(lint(&open)), vec![]);
        let block = base()
            .policy(deny_all())
            .policy(
                policy("prod", "out")
                    .types(&[Direction::Egress])
                    .egress(rule().ip_block("10.96.0.10/32", &[]).protocol(UDP).tcp(53)),
            )
            .build();
        assert_eq!(only(lint(&block)), vec![]);
    }

    #[test]
    fn named_port_to_pods_without_it_is_no_dns() {
        let c = base()
            .policy(deny_all())
            .policy(
                policy("prod", "dns").types(&[Direction::Egress]).egress(
                    rule()
                        .pods(&[("app", "db")])
                        .named_port(UDP, "dns")
                        .named_port(TCP, "dns-tcp"),
                ),
            )
            .build();
        assert_eq!(only(lint(&c)).len(), 1);
    }

    #[test]
    fn invalid_policies_are_not_blamed() {
        let c = base()
            .policy(deny_all().invalid("spec.podSelector", "bad selector"))
            .build();
        assert_eq!(only(lint(&c)), vec![]);
    }

    #[test]
    fn ingress_only_isolation_is_not_reported() {
        let c = base()
            .policy(policy("prod", "deny-in").ingress_section())
            .build();
        assert_eq!(only(lint(&c)), vec![]);
    }
}
