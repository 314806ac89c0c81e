//! The spec evaluator: NetworkPolicy (networking.k8s.io/v1) semantics read straight off the
//! model. This is the definition of truth the compiler and the datapath are tested against, so
//! it deliberately shares nothing with them (no Plan, no classes): it walks policies and rules
//! exactly as the API documentation describes them.
//!
//! * A pod is isolated for a direction iff some policy selecting it has that policyType
//!   ([`Policy::isolates`]; the source already applied the policyTypes defaulting).
//! * An isolated side allows a flow iff some rule of some isolating policy matches it (union).
//!   Within a rule, peers are ORed (none listed: every peer) and ports are ORed (none listed:
//!   every port of every protocol, ICMP included); peers AND ports must both match.
//! * Both sides must allow: the source pod's egress and the destination pod's ingress.
//! * "A pod cannot block access to itself" (Kubernetes docs, Network Policies): a pod's
//!   traffic to its own address is looped back inside its network namespace and never reaches
//!   an enforcement point, so both sides are [`SideVerdict::NotEnforced`].
//! * Traffic NetworkPolicy does not define (ICMP and other non TCP/UDP/SCTP protocols) is only
//!   allowed on an isolated side by a rule without `ports`; a rule that lists ports only ever
//!   matches TCP, UDP or SCTP.
//! * Selector peers match the pod owning the peer address; ipBlocks match the address itself,
//!   pod or not. Named ports resolve against the pod receiving the traffic (the local pod on
//!   ingress, the destination pod on egress); toward an address that is no pod they match
//!   nothing.
//! * Egress to a Service virtual address on a port the Service serves (and that no pod owns)
//!   is decided against every endpoint of that port in the address's family, as kube-proxy
//!   may rewrite it to any of them: each (endpoint address, target port) is checked as a plain
//!   egress flow (selectors against the endpoint's pod, named ports resolved on it, ipBlocks
//!   against its address). All allowed: [`SideVerdict::Allowed`] by the rule allowing the
//!   first endpoint; otherwise, or without endpoints, [`SideVerdict::ServiceDenied`]. The
//!   ingress side is [`SideVerdict::NotEnforced`]: the endpoint's own ingress is enforced
//!   after the rewrite, on its veth. Other ports and protocols see a plain address.
//! * hostNetwork pods are neither enforced nor pod peers (their address is the node's); only
//!   ipBlocks match them. With `node` set, only pods scheduled on that node are enforced: the
//!   other end's side is then [`SideVerdict::NotEnforced`] unless it runs there too.
use std::net::IpAddr;

use super::{Decision, Flow, ServiceTarget, SideVerdict};
use crate::model::{
    Cluster, Direction, Peer, Pod, Policy, PortRef, PortSpec, Protocol, Rule, Service, ServicePort,
};
use crate::plan::PolicyRef;

/// Evaluate `flow` against `cluster`, treating every pod on `node` (all pods when None) as
/// enforced.
pub fn evaluate(cluster: &Cluster, node: Option<&str>, flow: &Flow) -> Decision {
    let src_pod = cluster.pod_by_ip(flow.src);
    let dst_pod = cluster.pod_by_ip(flow.dst);
    if let (Some(s), Some(d)) = (src_pod, dst_pod) {
        if std::ptr::eq(s, d) {
            return Decision {
                egress: SideVerdict::NotEnforced,
                ingress: SideVerdict::NotEnforced,
            };
        }
    }
    if dst_pod.is_none() {
        if let Some((svc, port)) = served_port(cluster, flow) {
            return Decision {
                egress: service_side(cluster, node, src_pod, svc, port, flow),
                ingress: SideVerdict::NotEnforced,
            };
        }
    }
    Decision {
        egress: side(cluster, node, Direction::Egress, src_pod, dst_pod, flow),
        ingress: side(cluster, node, Direction::Ingress, dst_pod, src_pod, flow),
    }
}

/// The Service port `flow` reaches when its destination is a virtual address serving its
/// protocol and port.
pub fn served_port<'a>(
    cluster: &'a Cluster,
    flow: &Flow,
) -> Option<(&'a Service, &'a ServicePort)> {
    let protocol = Protocol::from_number(flow.protocol)?;
    cluster.service_port(flow.dst, protocol, flow.port)
}

/// The endpoints a connection to `vip` on `port` may be rewritten to: kube-proxy only picks
/// endpoints of the virtual address's family.
pub fn service_backends(svc: &Service, port: &ServicePort, vip: IpAddr) -> Vec<(IpAddr, u16)> {
    svc.backends(port)
        .filter(|(ip, _)| ip.is_ipv4() == vip.is_ipv4())
        .collect()
}

pub fn service_target(svc: &Service, port: &ServicePort) -> ServiceTarget {
    ServiceTarget {
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
        port_name: port.name.clone(),
        protocol: port.protocol,
        port: port.port,
    }
}

/// The client's egress for a connection to a Service virtual address: every backend must be
/// allowed, each evaluated as the rewritten flow (endpoint address, target port).
fn service_side(
    cluster: &Cluster,
    node: Option<&str>,
    client: Option<&Pod>,
    svc: &Service,
    port: &ServicePort,
    flow: &Flow,
) -> SideVerdict {
    let Some(client) = client.filter(|p| is_enforced(p, node)) else {
        return SideVerdict::NotEnforced;
    };
    let isolating = isolating(cluster, Direction::Egress, client);
    if isolating.is_empty() {
        return SideVerdict::NotIsolated;
    }
    let isolated_by: Vec<PolicyRef> = isolating.iter().map(|p| policy_ref(p)).collect();
    let verdicts = backend_rules(cluster, &isolating, svc, port, flow);
    let first = verdicts.first().and_then(|(_, hit)| hit.clone());
    let denied: Vec<(IpAddr, u16)> = verdicts
        .iter()
        .filter(|(_, hit)| hit.is_none())
        .map(|(b, _)| *b)
        .collect();
    match first {
        Some((policy, rule)) if denied.is_empty() => SideVerdict::Allowed {
            isolated_by,
            policy,
            rule,
        },
        _ => SideVerdict::ServiceDenied {
            isolated_by,
            service: service_target(svc, port),
            backends: verdicts.len(),
            denied,
        },
    }
}

/// One backend (endpoint address, target port) and the first egress rule allowing it (None:
/// no rule does).
pub type BackendRule = ((IpAddr, u16), Option<(PolicyRef, u16)>);

/// Per backend of the Service port `flow` reaches, in order: the first of `client`'s egress
/// rules allowing the rewritten flow (endpoint address, target port), None when none does.
pub fn service_backend_rules(
    cluster: &Cluster,
    client: &Pod,
    svc: &Service,
    port: &ServicePort,
    flow: &Flow,
) -> Vec<BackendRule> {
    let isolating = isolating(cluster, Direction::Egress, client);
    backend_rules(cluster, &isolating, svc, port, flow)
}

fn backend_rules(
    cluster: &Cluster,
    isolating: &[&Policy],
    svc: &Service,
    port: &ServicePort,
    flow: &Flow,
) -> Vec<BackendRule> {
    service_backends(svc, port, flow.dst)
        .into_iter()
        .map(|(ip, target)| {
            let pod = cluster.pod_by_ip(ip);
            let rewritten = Flow {
                dst: ip,
                port: target,
                ..*flow
            };
            let hit = first_allow(
                cluster,
                isolating,
                Direction::Egress,
                ip,
                pod,
                pod,
                &rewritten,
            );
            ((ip, target), hit)
        })
        .collect()
}

/// The policies selecting `local` that isolate it for `dir`, in policy order.
pub fn isolating<'a>(cluster: &'a Cluster, dir: Direction, local: &Pod) -> Vec<&'a Policy> {
    cluster
        .policies
        .iter()
        .filter(|p| p.isolates(dir) && p.selects(local))
        .collect()
}

/// The first (policy, rule) of `policies` allowing the flow toward/from `peer_ip`.
fn first_allow(
    cluster: &Cluster,
    policies: &[&Policy],
    dir: Direction,
    peer_ip: IpAddr,
    peer: Option<&Pod>,
    receiver: Option<&Pod>,
    flow: &Flow,
) -> Option<(PolicyRef, u16)> {
    for policy in policies {
        for (index, rule) in policy.rules(dir).iter().enumerate() {
            if rule_matches(cluster, rule, peer_ip, peer, receiver, flow) {
                return Some((policy_ref(policy), u16::try_from(index).unwrap_or(u16::MAX)));
            }
        }
    }
    None
}

/// The verdict of `local`'s `dir` policies for `flow`; `peer` is the pod at the other end, if
/// the other address belongs to a pod.
fn side(
    cluster: &Cluster,
    node: Option<&str>,
    dir: Direction,
    local: Option<&Pod>,
    peer: Option<&Pod>,
    flow: &Flow,
) -> SideVerdict {
    let Some(local) = local.filter(|p| is_enforced(p, node)) else {
        return SideVerdict::NotEnforced;
    };
    let isolating = isolating(cluster, dir, local);
    if isolating.is_empty() {
        return SideVerdict::NotIsolated;
    }
    let isolated_by: Vec<PolicyRef> = isolating.iter().map(|p| policy_ref(p)).collect();
    // The pod receiving the traffic resolves named ports: the local pod on ingress, the peer
    // on egress.
    let receiver = match dir {
        Direction::Ingress => Some(local),
        Direction::Egress => peer,
    };
    let peer_ip = match dir {
        Direction::Ingress => flow.src,
        Direction::Egress => flow.dst,
    };
    match first_allow(cluster, &isolating, dir, peer_ip, peer, receiver, flow) {
        Some((policy, rule)) => SideVerdict::Allowed {
            isolated_by,
            policy,
            rule,
        },
        None => SideVerdict::Denied { isolated_by },
    }
}

/// Whether `pod` is enforced by an agent responsible for `node` (None: every node).
/// hostNetwork pods have no pod address of their own and are never enforced.
fn is_enforced(pod: &Pod, node: Option<&str>) -> bool {
    !pod.host_network && node.is_none_or(|n| pod.node.as_deref() == Some(n))
}

fn policy_ref(p: &Policy) -> PolicyRef {
    PolicyRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
    }
}

/// One rule: some peer matches (or none listed) and some port matches (or none listed).
pub fn rule_matches(
    cluster: &Cluster,
    rule: &Rule,
    peer_ip: IpAddr,
    peer_pod: Option<&Pod>,
    receiver: Option<&Pod>,
    flow: &Flow,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, p, peer_ip, peer_pod));
    peer_ok
        && (rule.ports.is_empty()
            || rule
                .ports
                .iter()
                .any(|p| port_matches(p, receiver, flow.protocol, flow.port)))
}

/// One `from`/`to` entry against the address at the other end of the flow. Selector peers
/// match the pod owning that address; ipBlocks match the address itself, pod or not.
pub fn peer_matches(cluster: &Cluster, peer: &Peer, ip: IpAddr, pod: Option<&Pod>) -> bool {
    match peer {
        Peer::Pods { .. } => pod.is_some_and(|pod| cluster.peer_selects_pod(peer, pod)),
        Peer::IpBlock { .. } => peer.ip_block_contains(ip),
    }
}

/// One `ports` entry. Only TCP, UDP and SCTP flows can match; named ports resolve against the
/// container ports of `receiver` (no receiver pod: nothing matches).
pub fn port_matches(spec: &PortSpec, receiver: Option<&Pod>, protocol: u8, port: u16) -> bool {
    if Protocol::from_number(protocol) != Some(spec.protocol) {
        return false;
    }
    match &spec.port {
        None => true,
        Some(PortRef::Number(start)) => {
            let end = spec.end_port.unwrap_or(*start);
            (*start..=end).contains(&port)
        }
        Some(PortRef::Name(name)) => receiver
            .and_then(|r| r.resolve_named_port(name, spec.protocol))
            .is_some_and(|p| p == port),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{
        ContainerPort, LabelSelector, Namespace, NamespaceScope, NAMESPACE_NAME_LABEL,
    };

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(name: &str, app: &str, ip: &str, node: &str) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: labels(&[("app", app)]),
            ips: vec![ip.parse().unwrap()],
            node: Some(node.into()),
            host_network: false,
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
        }
    }

    fn policy(name: &str, app: &str, ingress: Vec<Rule>) -> Policy {
        Policy {
            namespace: "default".into(),
            name: name.into(),
            pod_selector: LabelSelector {
                match_labels: labels(&[("app", app)]),
                match_expressions: vec![],
            },
            ingress_isolation: true,
            egress_isolation: false,
            ingress,
            egress: vec![],
            origin: "test".into(),
            errors: vec![],
        }
    }

    fn cluster(policies: Vec<Policy>) -> Cluster {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "default".to_string(),
            Namespace {
                name: "default".into(),
                labels: labels(&[(NAMESPACE_NAME_LABEL, "default")]),
            },
        );
        Cluster {
            namespaces,
            pods: vec![
                pod("a", "client", "10.0.0.1", "n1"),
                pod("b", "web", "10.0.0.2", "n2"),
            ],
            policies,
            services: Vec::new(),
        }
    }

    fn tcp(src: &str, dst: &str, port: u16) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 6,
            port,
        }
    }

    fn from_clients_on(port: PortRef) -> Rule {
        Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Own("default".into()),
                pods: LabelSelector {
                    match_labels: labels(&[("app", "client")]),
                    match_expressions: vec![],
                },
            }],
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                port: Some(port),
                end_port: None,
            }],
        }
    }

    #[test]
    fn no_policy_allows_everything() {
        let d = evaluate(&cluster(vec![]), None, &tcp("10.0.0.1", "10.0.0.2", 80));
        assert_eq!(d.egress, SideVerdict::NotIsolated);
        assert_eq!(d.ingress, SideVerdict::NotIsolated);
        assert!(d.allowed());
    }

    #[test]
    fn deny_all_ingress_denies_and_names_the_policy() {
        let c = cluster(vec![policy("deny", "web", vec![])]);
        let d = evaluate(&c, None, &tcp("10.0.0.1", "10.0.0.2", 80));
        assert!(!d.allowed());
        match d.ingress {
            SideVerdict::Denied { isolated_by } => assert_eq!(isolated_by[0].name, "deny"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn named_port_rule_allows_only_the_resolved_port_and_is_attributed() {
        let c = cluster(vec![
            policy("deny", "web", vec![]),
            policy(
                "allow",
                "web",
                vec![
                    from_clients_on(PortRef::Number(9999)),
                    from_clients_on(PortRef::Name("http".into())),
                ],
            ),
        ]);
        let d = evaluate(&c, None, &tcp("10.0.0.1", "10.0.0.2", 8080));
        assert!(d.allowed());
        match d.ingress {
            SideVerdict::Allowed {
                isolated_by,
                policy,
                rule,
            } => {
                assert_eq!(isolated_by.len(), 2);
                assert_eq!(policy.name, "allow");
                assert_eq!(rule, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!evaluate(&c, None, &tcp("10.0.0.1", "10.0.0.2", 8081)).allowed());
        // From an address that is not a client pod: the pod peer does not match.
        assert!(!evaluate(&c, None, &tcp("192.0.2.1", "10.0.0.2", 8080)).allowed());
    }

    #[test]
    fn node_scoping_leaves_other_nodes_pods_unenforced() {
        let c = cluster(vec![policy("deny", "web", vec![])]);
        let flow = tcp("10.0.0.1", "10.0.0.2", 80);
        let on_n1 = evaluate(&c, Some("n1"), &flow);
        assert_eq!(on_n1.ingress, SideVerdict::NotEnforced);
        assert_eq!(on_n1.egress, SideVerdict::NotIsolated);
        assert!(on_n1.allowed());
        assert!(!evaluate(&c, Some("n2"), &flow).allowed());
    }

    #[test]
    fn a_pod_cannot_block_access_to_itself() {
        let c = cluster(vec![policy("deny", "web", vec![])]);
        let d = evaluate(&c, None, &tcp("10.0.0.2", "10.0.0.2", 80));
        assert_eq!(d.ingress, SideVerdict::NotEnforced);
        assert!(d.allowed());
    }

    #[test]
    fn port_spec_matching() {
        let range = PortSpec {
            protocol: Protocol::Udp,
            port: Some(PortRef::Number(1000)),
            end_port: Some(1010),
        };
        assert!(port_matches(&range, None, 17, 1000));
        assert!(port_matches(&range, None, 17, 1010));
        assert!(!port_matches(&range, None, 17, 1011));
        assert!(!port_matches(&range, None, 6, 1005));
        let any_sctp = PortSpec {
            protocol: Protocol::Sctp,
            port: None,
            end_port: None,
        };
        assert!(port_matches(&any_sctp, None, 132, 1));
        assert!(!port_matches(&any_sctp, None, 1, 0));
    }
}
