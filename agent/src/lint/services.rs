//! Services whose virtual addresses behave surprisingly under egress policy.
//!
//! * `service-partially-allowed`: a connection to a Service virtual address is allowed only
//!   when the client's egress allows every endpoint kube-proxy may rewrite it to. When the
//!   egress rules of some isolated clients allow some endpoints of a Service port but not all,
//!   the rule author most likely meant to allow the Service, yet every connection through its
//!   virtual address is denied (kube-proxy may pick a denied endpoint, and the decision is
//!   taken before it picks). Clients are grouped by the policies isolating them for egress
//!   (their verdicts are the same), one finding per (Service port, address family, group).
//! * `dns-service-denied`: the same clients' egress rules allow port 53 of that protocol
//!   somewhere (so `egress-without-dns` is quiet, e.g. an ipBlock of the DNS Service address)
//!   but none of the endpoints of a Service port 53: pods send their queries to the virtual
//!   address, so lookups fail. An ipBlock of a virtual address never covers its served ports.
//! * `service-vip-is-pod-address`: a virtual address equal to a pod's address. The pod wins:
//!   the address reaches the pod and the Service is ignored for it.
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Finding, Index, Severity};
use crate::eval::spec::service_backend_rules;
use crate::eval::Flow;
use crate::model::{Direction, Pod, Service, ServicePort};

const PARTIAL: &str = "service-partially-allowed";
const COLLISION: &str = "service-vip-is-pod-address";
const DNS_DENIED: &str = "dns-service-denied";
const DNS_PORT: u16 = 53;

pub(super) fn check(ix: &Index) -> Vec<Finding> {
    let cluster = ix.cluster;
    // Egress-isolated pods grouped by their isolating policies, groups in order of their
    // first pod.
    let mut groups: BTreeMap<Vec<usize>, Vec<&Pod>> = BTreeMap::new();
    let mut order: Vec<Vec<usize>> = Vec::new();
    for pod in ix.pods().filter(|p| !p.ips.is_empty()) {
        let by: Vec<usize> = ix
            .policies_in(&pod.namespace)
            .iter()
            .copied()
            .filter(|&i| {
                let p = &cluster.policies[i];
                p.isolates(Direction::Egress) && p.selects(pod)
            })
            .collect();
        if by.is_empty() {
            continue;
        }
        let members = groups.entry(by.clone()).or_default();
        if members.is_empty() {
            order.push(by);
        }
        members.push(pod);
    }

    let mut out = Vec::new();
    for svc in &cluster.services {
        collisions(ix, svc, &mut out);
        for (pi, port) in svc.ports.iter().enumerate() {
            for vip in family_vips(ix, svc, port) {
                for by in &order {
                    partial(ix, svc, pi, port, vip, &groups[by], by, &mut out);
                }
            }
        }
    }
    out
}

/// One virtual address per family through which `port` of `svc` is reached (the first that
/// no pod owns and no earlier Service claims for this port).
fn family_vips(ix: &Index, svc: &Service, port: &ServicePort) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for &vip in &svc.vips {
        if out.iter().any(|v| v.is_ipv4() == vip.is_ipv4()) {
            continue;
        }
        let claimed = ix
            .cluster
            .service_port(vip, port.protocol, port.port)
            .is_some_and(|(s, _)| std::ptr::eq(s, svc));
        if claimed && ix.cluster.pod_by_ip(vip).is_none() {
            out.push(vip);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn partial(
    ix: &Index,
    svc: &Service,
    pi: usize,
    port: &ServicePort,
    vip: IpAddr,
    clients: &[&Pod],
    by: &[usize],
    out: &mut Vec<Finding>,
) {
    let cluster = ix.cluster;
    let flow = Flow {
        src: vip,
        dst: vip,
        protocol: port.protocol.number(),
        port: port.port,
    };
    // Every client of the group has the same verdicts; the first stands for all.
    let verdicts = service_backend_rules(cluster, clients[0], svc, port, &flow);
    let denied: Vec<String> = verdicts
        .iter()
        .filter(|(_, hit)| hit.is_none())
        .map(|&((ip, target), _)| {
            let who = cluster
                .pod_by_ip(ip)
                .map_or_else(|| "not a pod".to_string(), Pod::key);
            match ip {
                IpAddr::V4(_) => format!("{ip}:{target} ({who})"),
                IpAddr::V6(_) => format!("[{ip}]:{target} ({who})"),
            }
        })
        .collect();
    if denied.is_empty() {
        return;
    }
    let mut names: Vec<String> = clients.iter().take(5).map(|p| p.key()).collect();
    if clients.len() > 5 {
        names.push(format!("and {} more", clients.len() - 5));
    }
    let policies: Vec<String> = by.iter().map(|&i| cluster.policies[i].key()).collect();
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    if denied.len() == verdicts.len() {
        let wants_dns = port.port == DNS_PORT
            && by.iter().any(|&i| {
                cluster.policies[i]
                    .rules(Direction::Egress)
                    .iter()
                    .any(|r| super::dns::rule_reaches(ix, r, port.protocol, DNS_PORT))
            });
        if wants_dns {
            out.push(Finding {
                severity: Severity::Warning,
                code: DNS_DENIED,
                object: format!("Service {}", svc.key()),
                field: format!("spec.ports[{pi}]"),
                message: format!(
                    "the egress of {} (isolated by {}) allows {} 53 to some peer but to none of                      the {family} endpoints of this Service, so queries sent to {vip} port 53                      are denied and lookups fail. Denied: {}",
                    names.join(", "),
                    policies.join(", "),
                    port.protocol,
                    denied.join(", ")
                ),
                fix: "Allow the DNS pods themselves (e.g. `to: [{namespaceSelector: \
                      {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: \
                      {matchLabels: {k8s-app: kube-dns}}}]` with their target ports): an \
                      ipBlock of the Service address does not cover it, the connection is \
                      decided on the endpoints."
                    .to_string(),
            });
        }
        return;
    }
    out.push(Finding {
        severity: Severity::Warning,
        code: PARTIAL,
        object: format!("Service {}", svc.key()),
        field: format!("spec.ports[{pi}]"),
        message: format!(
            "the egress of {} (isolated by {}) allows {} of the {} {family} endpoints of port \
             {}/{}, so connections to {vip} port {} are denied: kube-proxy may pick a denied \
             endpoint. Denied: {}",
            names.join(", "),
            policies.join(", "),
            verdicts.len() - denied.len(),
            verdicts.len(),
            port.port,
            port.protocol,
            port.port,
            denied.join(", ")
        ),
        fix: "Allow every endpoint of the Service (address and target port) in these clients' \
              egress rules, e.g. a podSelector matching all the Service's pods with the target \
              ports, or take the endpoints they must not reach out of the Service."
            .to_string(),
    });
}

fn collisions(ix: &Index, svc: &Service, out: &mut Vec<Finding>) {
    for &vip in &svc.vips {
        if let Some(pod) = ix.cluster.pod_by_ip(vip) {
            out.push(Finding {
                severity: Severity::Warning,
                code: COLLISION,
                object: format!("Service {}", svc.key()),
                field: "spec.clusterIPs".to_string(),
                message: format!(
                    "virtual address {vip} is also the address of pod {}: netward treats it \
                     as the pod (its policies apply) and ignores the Service for it",
                    pod.key()
                ),
                fix: "Give the Service an address outside the pod network (the Service CIDR), \
                      or fix the pod's reported address."
                    .to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::lint::{lint, Finding};
    use crate::testkit::*;

    fn only(f: Vec<Finding>) -> Vec<Finding> {
        f.into_iter()
            .filter(|f| f.code.starts_with("service-") || f.code == "dns-service-denied")
            .collect()
    }

    fn cluster() -> ClusterBuilder {
        ClusterBuilder::new()
            .pod("prod", "client", &[("app", "client")], "10.0.0.1")
            .pod("prod", "other", &[("app", "client")], "10.0.0.4")
            .pod("prod", "web", &[("app", "web")], "10.0.0.2")
            .port("http", 8080, TCP)
            .pod("prod", "web2", &[("app", "web")], "10.0.0.3")
            .port("http", 8081, TCP)
            .service("prod", "web", &["10.96.0.1"])
            .svc_port("", TCP, 80, Target::Name("http".into()))
            .svc_selector(&[("app", "web")])
    }

    #[test]
    fn partially_allowed_service_names_clients_and_denied_endpoints() {
        let c = cluster()
            .policy(
                policy("prod", "client-web")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).tcp(8080)),
            )
            .build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].code, "service-partially-allowed");
        assert_eq!(f[0].object, "Service prod/web");
        assert_eq!(f[0].field, "spec.ports[0]");
        let m = &f[0].message;
        assert!(m.contains("prod/client, prod/other"), "{m}");
        assert!(m.contains("1 of the 2 IPv4 endpoints"), "{m}");
        assert!(m.contains("10.0.0.3:8081 (prod/web2)"), "{m}");
        assert!(!m.contains("10.0.0.2:8080"), "{m}");
    }

    #[test]
    fn fully_allowed_or_fully_denied_services_are_not_reported() {
        let all = cluster()
            .policy(
                policy("prod", "client-web")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).named_port(TCP, "http")),
            )
            .build();
        assert_eq!(only(lint(&all)), vec![]);
        let none = cluster()
            .policy(
                policy("prod", "client-none")
                    .select(&[("app", "client")])
                    .egress(rule().ip_block("192.0.2.0/24", &[])),
            )
            .build();
        assert_eq!(only(lint(&none)), vec![]);
    }

    #[test]
    fn dns_allowed_only_by_an_ip_block_of_the_service_address() {
        let c = ClusterBuilder::new()
            .pod("prod", "client", &[("app", "client")], "10.0.0.1")
            .pod(
                "kube-system",
                "coredns",
                &[("k8s-app", "kube-dns")],
                "10.0.9.1",
            )
            .port("dns", 53, UDP)
            .service("kube-system", "kube-dns", &["10.96.0.10"])
            .svc_port("dns", UDP, 53, Target::Name("dns".into()))
            .svc_selector(&[("k8s-app", "kube-dns")])
            .policy(
                policy("prod", "dns-by-vip")
                    .select(&[("app", "client")])
                    .egress(rule().ip_block("10.96.0.10/32", &[]).udp(53).tcp(53)),
            )
            .build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].code, "dns-service-denied");
        assert!(f[0].message.contains("10.0.9.1:53 (kube-system/coredns)"));
        // Allowing the pods instead silences it.
        let fixed = ClusterBuilder::new()
            .pod("prod", "client", &[("app", "client")], "10.0.0.1")
            .pod(
                "kube-system",
                "coredns",
                &[("k8s-app", "kube-dns")],
                "10.0.9.1",
            )
            .port("dns", 53, UDP)
            .service("kube-system", "kube-dns", &["10.96.0.10"])
            .svc_port("dns", UDP, 53, Target::Name("dns".into()))
            .svc_selector(&[("k8s-app", "kube-dns")])
            .policy(
                policy("prod", "dns-by-pods")
                    .select(&[("app", "client")])
                    .egress(
                        rule()
                            .namespaces(&[])
                            .pods(&[("k8s-app", "kube-dns")])
                            .udp(53),
                    ),
            )
            .build();
        let all: Vec<Finding> = lint(&fixed)
            .into_iter()
            .filter(|f| f.code.contains("dns-service") || f.code.starts_with("service-"))
            .collect();
        assert_eq!(all, vec![]);
    }

    #[test]
    fn vip_equal_to_a_pod_address() {
        let c = cluster()
            .service("prod", "clash", &["10.0.0.2"])
            .svc_port("", TCP, 80, Target::Num(8080))
            .build();
        let f = only(lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].code, "service-vip-is-pod-address");
        assert!(f[0].message.contains("prod/web"), "{}", f[0].message);
    }
}
