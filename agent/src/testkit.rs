//! Concise construction of [`Cluster`] values for tests (unit, property and integration tests
//! of every part), producing exactly what the source would: namespaces implied by pods and
//! policies exist and carry `kubernetes.io/metadata.name`, pods and policies are sorted by
//! (namespace, name), policyTypes are defaulted, podSelector-only peers are scoped to the
//! policy's namespace, and an invalid policy is rewritten to fail closed.
//!
//! ```
//! use netward::testkit::*;
//! let cluster = ClusterBuilder::new()
//!     .namespace("prod", &[("team", "a")])
//!     .pod("prod", "web", &[("app", "web")], "10.0.0.1")
//!     .port("http", 8080, TCP)
//!     .pod("prod", "client", &[("app", "client")], "10.0.0.2")
//!     .ip("fd00::2")
//!     .policy(
//!         policy("prod", "allow-web")
//!             .select(&[("app", "web")])
//!             .ingress(rule().pods(&[("app", "client")]).named_port(TCP, "http")),
//!     )
//!     .build();
//! assert_eq!(cluster.pods.len(), 2);
//! ```
//!
//! Helpers panic on malformed input (bad IP or CIDR literals): they are test tooling.
use std::net::IpAddr;

use ipnet::IpNet;

use crate::eval::Flow;
use crate::model::{
    Cluster, ContainerPort, Direction, EndpointPort, FieldError, LabelSelector, Labels, Namespace,
    NamespaceScope, Operator, Peer, Pod, Policy, PortRef, PortSpec, Protocol, Requirement, Rule,
    Service, ServiceEndpoint, ServicePort, NAMESPACE_NAME_LABEL,
};

pub const TCP: Protocol = Protocol::Tcp;
pub const UDP: Protocol = Protocol::Udp;
pub const SCTP: Protocol = Protocol::Sctp;

/// A label set from `(key, value)` pairs.
pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A selector with `matchLabels` only (`&[]`: the empty selector, matching everything).
pub fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(kv),
        match_expressions: Vec::new(),
    }
}

/// A selector with `matchLabels` and `matchExpressions`.
pub fn sel_exprs(kv: &[(&str, &str)], exprs: Vec<Requirement>) -> LabelSelector {
    LabelSelector {
        match_labels: labels(kv),
        match_expressions: exprs,
    }
}

/// One `matchExpressions` requirement (values are sorted as the source does).
pub fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    let mut values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    values.sort();
    Requirement {
        key: key.to_string(),
        operator,
        values,
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("testkit: bad IP {s:?}: {e}"))
}

pub fn cidr(s: &str) -> IpNet {
    s.parse()
        .unwrap_or_else(|e| panic!("testkit: bad CIDR {s:?}: {e}"))
}

/// A flow with an explicit IP protocol number.
pub fn flow(src: &str, dst: &str, protocol: u8, port: u16) -> Flow {
    Flow {
        src: ip(src),
        dst: ip(dst),
        protocol,
        port,
    }
}

pub fn tcp(src: &str, dst: &str, port: u16) -> Flow {
    flow(src, dst, netward_common::PROTO_TCP, port)
}

pub fn udp(src: &str, dst: &str, port: u16) -> Flow {
    flow(src, dst, netward_common::PROTO_UDP, port)
}

pub fn sctp(src: &str, dst: &str, port: u16) -> Flow {
    flow(src, dst, netward_common::PROTO_SCTP, port)
}

/// ICMP (IPv4) or ICMPv6, chosen by the source address's family; port 0.
pub fn icmp(src: &str, dst: &str) -> Flow {
    let proto = if ip(src).is_ipv4() {
        netward_common::PROTO_ICMP
    } else {
        netward_common::PROTO_ICMPV6
    };
    flow(src, dst, proto, 0)
}

/// Builds a [`Cluster`]. Pod modifiers (`ip`, `port`, `node`, ...) apply to the pod added last.
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    cluster: Cluster,
    services: Vec<ServiceDraft>,
}

/// spec.ports[].targetPort of a Service: a number, or a container port name resolved on each
/// endpoint pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Num(u16),
    Name(String),
}

/// A Service being built: its endpoints are computed from `selector` at build time, as the
/// EndpointSlice controller would, plus manual ones.
#[derive(Clone, Debug)]
struct ServiceDraft {
    service: Service,
    targets: Vec<Target>,
    selector: Option<LabelSelector>,
}

/// The ready endpoints the EndpointSlice controller computes for a Service selecting pods:
/// every addressable pod of `ns` the selector matches, one endpoint per address, serving each
/// Service port whose targetPort resolves on the pod (a name the pod does not declare leaves
/// that port out). Sorted by address.
pub fn endpoints_from_pods(
    cluster: &Cluster,
    ns: &str,
    selector: &LabelSelector,
    ports: &[(ServicePort, Target)],
) -> Vec<ServiceEndpoint> {
    let mut out = Vec::new();
    for pod in &cluster.pods {
        if pod.namespace != ns || pod.host_network || !selector.matches(&pod.labels) {
            continue;
        }
        let served: Vec<EndpointPort> = ports
            .iter()
            .filter_map(|(sp, target)| {
                let port = match target {
                    Target::Num(n) => Some(*n),
                    Target::Name(name) => pod.resolve_named_port(name, sp.protocol),
                }?;
                Some(EndpointPort {
                    name: sp.name.clone(),
                    protocol: sp.protocol,
                    port,
                })
            })
            .collect();
        for &ip in &pod.ips {
            out.push(ServiceEndpoint {
                ip,
                ports: served.clone(),
            });
        }
    }
    out
}

/// Sort a Service's addresses and endpoints and drop duplicate addresses (first kept), as
/// the source normalises them.
pub fn normalise_service(svc: &mut Service) {
    svc.vips.sort();
    svc.vips.dedup();
    svc.endpoints.sort_by_key(|e| e.ip);
    svc.endpoints.dedup_by_key(|e| e.ip);
}

impl ClusterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a namespace with labels (`kubernetes.io/metadata.name` is added). Declaring
    /// a namespace again replaces its labels.
    pub fn namespace(mut self, name: &str, kv: &[(&str, &str)]) -> Self {
        let mut l = labels(kv);
        l.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        self.cluster.namespaces.insert(
            name.to_string(),
            Namespace {
                name: name.to_string(),
                labels: l,
            },
        );
        self
    }

    /// Add a pod with one address (`""`: no address yet). It has no node and no ports.
    pub fn pod(mut self, ns: &str, name: &str, kv: &[(&str, &str)], addr: &str) -> Self {
        self.cluster.pods.push(Pod {
            namespace: ns.to_string(),
            name: name.to_string(),
            labels: labels(kv),
            ips: if addr.is_empty() {
                Vec::new()
            } else {
                vec![ip(addr)]
            },
            node: None,
            host_network: false,
            ports: Vec::new(),
        });
        self
    }

    fn last_pod(&mut self) -> &mut Pod {
        self.cluster
            .pods
            .last_mut()
            .expect("testkit: add a pod before modifying it")
    }

    /// Another address of the last pod (dual stack).
    pub fn ip(mut self, addr: &str) -> Self {
        self.last_pod().ips.push(ip(addr));
        self
    }

    /// A named container port of the last pod.
    pub fn port(mut self, name: &str, port: u16, protocol: Protocol) -> Self {
        self.last_pod().ports.push(ContainerPort {
            name: Some(name.to_string()),
            port,
            protocol,
        });
        self
    }

    /// An unnamed container port of the last pod.
    pub fn unnamed_port(mut self, port: u16, protocol: Protocol) -> Self {
        self.last_pod().ports.push(ContainerPort {
            name: None,
            port,
            protocol,
        });
        self
    }

    /// spec.nodeName of the last pod.
    pub fn node(mut self, node: &str) -> Self {
        self.last_pod().node = Some(node.to_string());
        self
    }

    /// Mark the last pod hostNetwork.
    pub fn host_network(mut self) -> Self {
        self.last_pod().host_network = true;
        self
    }

    pub fn policy(mut self, p: impl Into<Policy>) -> Self {
        self.cluster.policies.push(p.into());
        self
    }

    /// Add a Service with these virtual addresses (clusterIPs, externalIPs...), no ports and
    /// no endpoints yet. Service modifiers (`svc_*`) apply to the Service added last.
    pub fn service(mut self, ns: &str, name: &str, vips: &[&str]) -> Self {
        self.services.push(ServiceDraft {
            service: Service {
                namespace: ns.to_string(),
                name: name.to_string(),
                vips: vips.iter().map(|a| ip(a)).collect(),
                ports: Vec::new(),
                endpoints: Vec::new(),
            },
            targets: Vec::new(),
            selector: None,
        });
        self
    }

    fn last_service(&mut self) -> &mut ServiceDraft {
        self.services
            .last_mut()
            .expect("testkit: add a service before modifying it")
    }

    /// A port of the last Service (`name` "" when unnamed) and its targetPort.
    pub fn svc_port(mut self, name: &str, protocol: Protocol, port: u16, target: Target) -> Self {
        let d = self.last_service();
        d.service.ports.push(ServicePort {
            name: name.to_string(),
            protocol,
            port,
        });
        d.targets.push(target);
        self
    }

    /// spec.selector of the last Service: its endpoints are the matching pods (at build).
    pub fn svc_selector(mut self, kv: &[(&str, &str)]) -> Self {
        self.last_service().selector = Some(sel(kv));
        self
    }

    /// A manual endpoint of the last Service (an EndpointSlice without selector): address and
    /// (port name, protocol, target port) it serves.
    pub fn svc_endpoint(mut self, addr: &str, ports: &[(&str, Protocol, u16)]) -> Self {
        self.last_service().service.endpoints.push(ServiceEndpoint {
            ip: ip(addr),
            ports: ports
                .iter()
                .map(|&(name, protocol, port)| EndpointPort {
                    name: name.to_string(),
                    protocol,
                    port,
                })
                .collect(),
        });
        self
    }

    /// The cluster, normalised as the source normalises it.
    pub fn build(mut self) -> Cluster {
        let implied: Vec<String> = self
            .cluster
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .chain(self.cluster.policies.iter().map(|p| p.namespace.clone()))
            .collect();
        for ns in implied {
            if !self.cluster.namespaces.contains_key(&ns) {
                self = self.namespace(&ns, &[]);
            }
        }
        for d in std::mem::take(&mut self.services) {
            let mut svc = d.service;
            if !self.cluster.namespaces.contains_key(&svc.namespace) {
                self = self.namespace(&svc.namespace.clone(), &[]);
            }
            if let Some(selector) = &d.selector {
                let ports: Vec<(ServicePort, Target)> =
                    svc.ports.iter().cloned().zip(d.targets).collect();
                svc.endpoints.extend(endpoints_from_pods(
                    &self.cluster,
                    &svc.namespace,
                    selector,
                    &ports,
                ));
            }
            normalise_service(&mut svc);
            self.cluster.services.push(svc);
        }
        let c = &mut self.cluster;
        c.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        c.policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        c.services
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.cluster
    }
}

/// Start a NetworkPolicy; its podSelector is `{}` (every pod of `ns`) until [`PolicyBuilder::select`].
pub fn policy(ns: &str, name: &str) -> PolicyBuilder {
    PolicyBuilder {
        namespace: ns.to_string(),
        name: name.to_string(),
        pod_selector: LabelSelector::everything(),
        ingress: None,
        egress: None,
        types: None,
        errors: Vec::new(),
    }
}

/// Builds a [`Policy`] the way the source normalises a manifest.
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    namespace: String,
    name: String,
    pod_selector: LabelSelector,
    /// None: the section is absent from the manifest.
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
    types: Option<Vec<Direction>>,
    errors: Vec<FieldError>,
}

impl PolicyBuilder {
    /// spec.podSelector.matchLabels.
    pub fn select(self, kv: &[(&str, &str)]) -> Self {
        self.select_sel(sel(kv))
    }

    pub fn select_sel(mut self, selector: LabelSelector) -> Self {
        self.pod_selector = selector;
        self
    }

    /// Append a rule to spec.ingress (creating the section).
    pub fn ingress(mut self, rule: RuleBuilder) -> Self {
        let r = rule.resolve(&self.namespace);
        self.ingress.get_or_insert_with(Vec::new).push(r);
        self
    }

    /// Append a rule to spec.egress (creating the section).
    pub fn egress(mut self, rule: RuleBuilder) -> Self {
        let r = rule.resolve(&self.namespace);
        self.egress.get_or_insert_with(Vec::new).push(r);
        self
    }

    /// `ingress: []` (present, no rules).
    pub fn ingress_section(mut self) -> Self {
        self.ingress.get_or_insert_with(Vec::new);
        self
    }

    /// `egress: []` (present, no rules). With defaulted policyTypes this does NOT isolate
    /// for egress: upstream `SetDefaults_NetworkPolicy` adds Egress only when
    /// `len(spec.egress) != 0`.
    pub fn egress_section(mut self) -> Self {
        self.egress.get_or_insert_with(Vec::new);
        self
    }

    /// Explicit spec.policyTypes (otherwise defaulted: Ingress, plus Egress when the policy
    /// has at least one egress rule).
    pub fn types(mut self, types: &[Direction]) -> Self {
        self.types = Some(types.to_vec());
        self
    }

    /// Record a validation error: the policy is rewritten to fail closed (isolates the pods
    /// it selects in both directions, allows nothing).
    pub fn invalid(mut self, field: &str, message: &str) -> Self {
        self.errors.push(FieldError {
            field: field.to_string(),
            message: message.to_string(),
        });
        self
    }

    pub fn build(self) -> Policy {
        let (ingress_isolation, egress_isolation) = match &self.types {
            Some(t) => (
                t.contains(&Direction::Ingress),
                t.contains(&Direction::Egress),
            ),
            None => (true, self.egress.as_ref().is_some_and(|e| !e.is_empty())),
        };
        let failed = !self.errors.is_empty();
        Policy {
            namespace: self.namespace,
            name: self.name,
            pod_selector: self.pod_selector,
            ingress_isolation: ingress_isolation || failed,
            egress_isolation: egress_isolation || failed,
            ingress: if failed {
                Vec::new()
            } else {
                self.ingress.unwrap_or_default()
            },
            egress: if failed {
                Vec::new()
            } else {
                self.egress.unwrap_or_default()
            },
            origin: "testkit".to_string(),
            errors: self.errors,
        }
    }
}

impl From<PolicyBuilder> for Policy {
    fn from(b: PolicyBuilder) -> Policy {
        b.build()
    }
}

/// Start a rule with no peers (every peer) and no ports (every port and protocol).
pub fn rule() -> RuleBuilder {
    RuleBuilder::default()
}

/// A rule of a policy under construction; podSelector-only peers are resolved to the
/// policy's namespace when the rule is added to it.
#[derive(Clone, Debug, Default)]
pub struct RuleBuilder {
    peers: Vec<PeerDraft>,
    ports: Vec<PortSpec>,
}

#[derive(Clone, Debug)]
enum PeerDraft {
    OwnNamespace(LabelSelector),
    Resolved(Peer),
}

impl RuleBuilder {
    /// `podSelector` alone: pods of the policy's own namespace.
    pub fn pods(self, kv: &[(&str, &str)]) -> Self {
        self.pods_sel(sel(kv))
    }

    pub fn pods_sel(mut self, pods: LabelSelector) -> Self {
        self.peers.push(PeerDraft::OwnNamespace(pods));
        self
    }

    /// `namespaceSelector` alone: every pod of the matching namespaces.
    pub fn namespaces(self, kv: &[(&str, &str)]) -> Self {
        self.namespaces_sel(sel(kv))
    }

    pub fn namespaces_sel(self, ns: LabelSelector) -> Self {
        self.pods_in_sel(ns, LabelSelector::everything())
    }

    /// `namespaceSelector` AND `podSelector` in one peer.
    pub fn pods_in(self, ns: &[(&str, &str)], pods: &[(&str, &str)]) -> Self {
        self.pods_in_sel(sel(ns), sel(pods))
    }

    pub fn pods_in_sel(self, ns: LabelSelector, pods: LabelSelector) -> Self {
        self.peer(Peer::Pods {
            namespaces: NamespaceScope::Selector(ns),
            pods,
        })
    }

    /// `ipBlock` with `except`.
    pub fn ip_block(self, block: &str, except: &[&str]) -> Self {
        self.peer(Peer::IpBlock {
            cidr: cidr(block),
            except: except.iter().map(|e| cidr(e)).collect(),
        })
    }

    pub fn peer(mut self, peer: Peer) -> Self {
        self.peers.push(PeerDraft::Resolved(peer));
        self
    }

    /// A numeric port.
    pub fn port(self, protocol: Protocol, port: u16) -> Self {
        self.port_spec(PortSpec {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: None,
        })
    }

    pub fn tcp(self, port: u16) -> Self {
        self.port(TCP, port)
    }

    pub fn udp(self, port: u16) -> Self {
        self.port(UDP, port)
    }

    /// `port` .. `end_port` inclusive.
    pub fn port_range(self, protocol: Protocol, port: u16, end_port: u16) -> Self {
        self.port_spec(PortSpec {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: Some(end_port),
        })
    }

    /// A named port, resolved against the receiving pod's container ports.
    pub fn named_port(self, protocol: Protocol, name: &str) -> Self {
        self.port_spec(PortSpec {
            protocol,
            port: Some(PortRef::Name(name.to_string())),
            end_port: None,
        })
    }

    /// `protocol` with the port omitted: every port of that protocol.
    pub fn protocol(self, protocol: Protocol) -> Self {
        self.port_spec(PortSpec {
            protocol,
            port: None,
            end_port: None,
        })
    }

    pub fn port_spec(mut self, spec: PortSpec) -> Self {
        self.ports.push(spec);
        self
    }

    /// The rule, with podSelector-only peers scoped to `namespace`.
    pub fn resolve(self, namespace: &str) -> Rule {
        Rule {
            peers: self
                .peers
                .into_iter()
                .map(|p| match p {
                    PeerDraft::OwnNamespace(pods) => Peer::Pods {
                        namespaces: NamespaceScope::Own(namespace.to_string()),
                        pods,
                    },
                    PeerDraft::Resolved(p) => p,
                })
                .collect(),
            ports: self.ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_normalises_like_the_source() {
        let c = ClusterBuilder::new()
            .pod("z", "b", &[], "10.0.0.2")
            .pod("a", "a", &[("app", "x")], "10.0.0.1")
            .ip("fd00::1")
            .port("http", 80, TCP)
            .node("n1")
            .policy(policy("p", "deny").egress_section())
            .policy(policy("p", "out").egress(rule().tcp(53)))
            .policy(policy("a", "allow").ingress(rule().pods(&[("app", "x")]).tcp(80)))
            .build();
        // Implied namespaces exist and carry their name label.
        for ns in ["a", "p", "z"] {
            assert_eq!(
                c.namespaces[ns].labels.get(NAMESPACE_NAME_LABEL).unwrap(),
                ns
            );
        }
        assert_eq!(c.pods[0].key(), "a/a");
        assert_eq!(c.pods[0].ips.len(), 2);
        assert_eq!(c.pods[0].node.as_deref(), Some("n1"));
        assert_eq!(c.policies[0].key(), "a/allow");
        assert!(c.policies[0].ingress_isolation && !c.policies[0].egress_isolation);
        // `egress: []` alone does not isolate egress; one egress rule does.
        assert!(c.policies[1].ingress_isolation && !c.policies[1].egress_isolation);
        assert!(c.policies[2].ingress_isolation && c.policies[2].egress_isolation);
        assert_eq!(
            c.policies[0].ingress[0].peers[0],
            Peer::Pods {
                namespaces: NamespaceScope::Own("a".into()),
                pods: sel(&[("app", "x")]),
            }
        );
    }

    #[test]
    fn explicit_types_and_fail_closed() {
        let p = policy("a", "e")
            .types(&[Direction::Egress])
            .ingress(rule())
            .build();
        assert!(!p.ingress_isolation && p.egress_isolation);
        assert!(p.rules(Direction::Ingress).is_empty());
        let bad = policy("a", "bad")
            .ingress(rule())
            .invalid("spec.ingress[0].ports[0].protocol", "unsupported")
            .build();
        assert!(bad.ingress_isolation && bad.egress_isolation);
        assert!(bad.ingress.is_empty() && bad.egress.is_empty());
    }
}
