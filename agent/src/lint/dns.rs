//! Default-deny egress without DNS: a pod isolated for egress whose egress rules allow neither
//! UDP 53 nor TCP 53 (or only one of them) to any peer cannot resolve names (TCP is needed for
//! large answers and by some resolvers). Reported once per (first isolating policy, missing
//! protocols), listing the affected pods.
use std::collections::BTreeMap;

use super::{pods, Finding, Severity};
use crate::eval::spec::port_matches;
use crate::model::{Cluster, Direction, Peer, Pod, Protocol, Rule};

const CODE: &str = "egress-without-dns";
const DNS_PORT: u16 = 53;

/// Findings keyed by the index of the policy they are attributed to.
pub(super) fn check(cluster: &Cluster) -> BTreeMap<usize, Vec<Finding>> {
    // (first isolating policy, missing protocols) -> affected pods, in pod order.
    let mut groups: BTreeMap<(usize, Vec<Protocol>), Vec<&Pod>> = BTreeMap::new();
    for pod in pods(cluster) {
        let isolating: Vec<usize> = cluster
            .policies
            .iter()
            .enumerate()
            // Invalid policies are reported as errors; their fail-closed isolation is not
            // blamed on DNS as well.
            .filter(|(_, p)| p.errors.is_empty())
            .filter(|(_, p)| p.isolates(Direction::Egress) && p.selects(pod))
            .map(|(i, _)| i)
            .collect();
        let Some(&first) = isolating.first() else {
            continue;
        };
        let missing: Vec<Protocol> = [Protocol::Udp, Protocol::Tcp]
            .into_iter()
            .filter(|proto| {
                !isolating.iter().any(|&i| {
                    cluster.policies[i]
                        .rules(Direction::Egress)
                        .iter()
                        .any(|r| rule_reaches(cluster, r, *proto, DNS_PORT))
                })
            })
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
                "this policy isolates {} pod(s) for egress ({}) and no egress rule selecting \
                 them allows {} to any peer: DNS lookups will fail",
                affected.len(),
                names.join(", "),
                missing_s.join(" or ")
            ),
            fix: format!(
                "add an egress rule to the cluster DNS, e.g. `to: [{{namespaceSelector: \
                 {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}, podSelector: \
                 {{matchLabels: {{k8s-app: kube-dns}}}}}}]` with `ports: [{}]`",
                ports.join(", ")
            ),
        });
    }
    out
}

/// Whether `rule` allows `protocol`/`port` to at least one destination: some address of an
/// ipBlock (or anything, without peers) for numeric or port-less entries, and for named ports
/// a destination pod that declares the name with that number.
fn rule_reaches(cluster: &Cluster, rule: &Rule, protocol: Protocol, port: u16) -> bool {
    let ports_ok = |receiver: Option<&Pod>| {
        rule.ports.is_empty()
            || rule
                .ports
                .iter()
                .any(|p| port_matches(p, receiver, protocol.number(), port))
    };
    let pod_reaches = |p: &&Pod| ports_ok(Some(p));
    if rule.peers.is_empty() {
        return ports_ok(None) || pods(cluster).any(|p| pod_reaches(&p));
    }
    rule.peers.iter().any(|peer| match peer {
        Peer::IpBlock { .. } => {
            ports_ok(None)
                || pods(cluster)
                    .filter(|p| p.ips.iter().any(|ip| peer.ip_block_contains(*ip)))
                    .any(|p| pod_reaches(&p))
        }
        Peer::Pods { .. } => pods(cluster)
            .filter(|p| cluster.peer_selects_pod(peer, p))
            .any(|p| pod_reaches(&p)),
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
