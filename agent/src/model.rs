//! The cluster model: namespaces, pods and NetworkPolicies as plain, validated Rust values.
//!
//! Sources (manifest files, the Kubernetes watch) translate k8s-openapi objects into this
//! model; everything downstream (compiler, evaluators, lint, lab) reads only this. The model is
//! already normalised: defaults applied (policyTypes, protocol TCP), selectors parsed, CIDRs
//! parsed, namespaces carry `kubernetes.io/metadata.name`. A policy that failed validation is
//! kept with its errors and rewritten to fail closed (see [`Policy::errors`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// Label set of an object.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries (added when a manifest omits it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything the compiler needs to know about a cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cluster {
    /// By name. Every namespace a pod or policy lives in is present.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Sorted by (namespace, name).
    pub pods: Vec<Pod>,
    /// Sorted by (namespace, name). The index in this vector is the policy's id in a Plan.
    pub policies: Vec<Policy>,
    /// Sorted by (namespace, name). Only Services with at least one virtual address.
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// Includes `kubernetes.io/metadata.name=<name>`.
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// status.podIPs (or status.podIP), at most one per family. Empty: not yet scheduled /
    /// no address; such a pod can be selected but no packet can reach it.
    pub ips: Vec<IpAddr>,
    /// spec.nodeName.
    pub node: Option<String>,
    /// hostNetwork pods share the node's address: they are never endpoints nor pod peers.
    pub host_network: bool,
    /// Declared container ports (all containers), used to resolve named ports.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Resolve a named port against this pod's container ports for `protocol`.
    pub fn resolve_named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// L4 protocols NetworkPolicy ports can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => netward_common::PROTO_TCP,
            Protocol::Udp => netward_common::PROTO_UDP,
            Protocol::Sctp => netward_common::PROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == n)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unsupported protocol {s:?}: expected TCP, UDP or SCTP"
            )),
        }
    }
}

/// A parsed metav1.LabelSelector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted; empty for Exists/DoesNotExist.
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Selects every object.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// metav1.LabelSelector semantics: all matchLabels and all requirements must hold.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            // NotIn matches objects without the key too (apimachinery labels.Selector).
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for LabelSelector {
    /// kubectl-style: `app=web,tier in (a,b),!legacy`; `<all>` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("<all>");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// A networking.k8s.io/v1 NetworkPolicy, normalised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// spec.podSelector (within `namespace`).
    pub pod_selector: LabelSelector,
    /// The policy isolates selected pods for ingress (policyTypes, defaulted).
    pub ingress_isolation: bool,
    /// The policy isolates selected pods for egress (policyTypes, defaulted).
    pub egress_isolation: bool,
    /// spec.ingress; ignored unless `ingress_isolation`.
    pub ingress: Vec<Rule>,
    /// spec.egress; ignored unless `egress_isolation`.
    pub egress: Vec<Rule>,
    /// Where it came from (file path or "kubernetes"), for messages.
    pub origin: String,
    /// Validation errors. A policy with errors is rewritten to fail closed: it isolates the
    /// pods it selects (every pod of its namespace when its podSelector is itself invalid) in
    /// both directions and allows nothing, so a bad edit never opens traffic.
    pub errors: Vec<FieldError>,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The rules of one direction, empty if the policy does not isolate that direction.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress if self.ingress_isolation => &self.ingress,
            Direction::Egress if self.egress_isolation => &self.egress,
            _ => &[],
        }
    }

    pub fn isolates(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.ingress_isolation,
            Direction::Egress => self.egress_isolation,
        }
    }

    /// Whether the policy applies to `pod` (same namespace and podSelector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// A validation error naming the object and the field, as the API server would.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Policy direction, seen from the selected (local) pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The `DIR_*` constant used in map keys.
    pub fn code(self) -> u8 {
        match self {
            Direction::Ingress => netward_common::DIR_INGRESS,
            Direction::Egress => netward_common::DIR_EGRESS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ingress or egress rule. Empty `peers` means every peer; empty `ports` every port and
/// protocol (the API treats a missing and an empty list alike).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Peer {
    /// podSelector and/or namespaceSelector. podSelector alone: `namespaces` is
    /// `Own(policy namespace)`; namespaceSelector alone: `pods` is empty (all pods).
    Pods {
        namespaces: NamespaceScope,
        pods: LabelSelector,
    },
    /// ipBlock: `cidr` minus every `except` (all of the same family, inside `cidr`).
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum NamespaceScope {
    /// The policy's own namespace (podSelector without namespaceSelector).
    Own(String),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

impl Peer {
    /// Whether `ip` is inside this ipBlock (false for pod peers).
    pub fn ip_block_contains(&self, ip: IpAddr) -> bool {
        match self {
            Peer::IpBlock { cidr, except } => {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
            Peer::Pods { .. } => false,
        }
    }
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// None: every port of `protocol`.
    pub port: Option<PortRef>,
    /// Inclusive end of a range; only with a numeric `port`, and >= it.
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PortRef {
    Number(u16),
    /// IANA_SVC_NAME, resolved against the container ports of the pod receiving the traffic.
    Name(String),
}

/// A Service whose virtual addresses kube-proxy rewrites (DNAT) to one of its endpoints.
///
/// netward's egress hook (tc ingress on the pod's host-side veth) sees the packet before that
/// rewrite, so a connection to a virtual address is decided against the Service's endpoints:
/// it is allowed iff the client's egress allows every ready endpoint of that port (evaluated
/// post-DNAT, on the endpoint's address and target port), and denied when some endpoint is not
/// allowed or there is none. Ingress is unaffected: the receiving pod sees the rewritten packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// spec.clusterIPs (without "None"), spec.externalIPs and status.loadBalancer.ingress[].ip:
    /// every address kube-proxy rewrites for in-cluster clients. Sorted, unique.
    pub vips: Vec<IpAddr>,
    /// spec.ports.
    pub ports: Vec<ServicePort>,
    /// Ready endpoints, from the Service's EndpointSlices (or, for manifests without any, the
    /// ready pods its selector matches, as the EndpointSlice controller would compute them).
    /// Sorted by address, unique addresses.
    pub endpoints: Vec<ServiceEndpoint>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Where a connection to `port` may be rewritten to: (endpoint address, target port) of
    /// every endpoint serving a port of the same name and protocol.
    pub fn backends<'a>(
        &'a self,
        port: &'a ServicePort,
    ) -> impl Iterator<Item = (IpAddr, u16)> + 'a {
        self.endpoints.iter().filter_map(move |e| {
            e.ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
                .map(|p| (e.ip, p.port))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// spec.ports[].name ("" when the Service has a single unnamed port); EndpointSlice ports
    /// are matched to it by name.
    pub name: String,
    pub protocol: Protocol,
    /// spec.ports[].port: the port clients connect to on a virtual address.
    pub port: u16,
}

/// One ready endpoint address and the ports it serves (EndpointSlice `ports`, by name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEndpoint {
    pub ip: IpAddr,
    /// (port name, protocol, target port on the endpoint).
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl Cluster {
    /// The Service port a connection to (`vip`, `protocol`, `port`) is rewritten for, if any.
    pub fn service_port(
        &self,
        vip: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<(&Service, &ServicePort)> {
        self.services.iter().find_map(|s| {
            if !s.vips.contains(&vip) {
                return None;
            }
            s.ports
                .iter()
                .find(|p| p.protocol == protocol && p.port == port)
                .map(|p| (s, p))
        })
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// The pod with this address, if any (hostNetwork pods are not pods for this purpose).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| !p.host_network && p.ips.contains(&ip))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Whether `pod` satisfies a podSelector/namespaceSelector peer. ipBlock peers are matched
    /// against the packet's address, never against a pod (see [`Peer::ip_block_contains`]).
    pub fn peer_selects_pod(&self, peer: &Peer, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    NamespaceScope::Own(ns) => &pod.namespace == ns,
                    NamespaceScope::Selector(sel) => self
                        .namespace_labels(&pod.namespace)
                        .is_some_and(|l| sel.matches(l)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
            Peer::IpBlock { .. } => false,
        }
    }
}
