//! Differential tests: the spec evaluator (the NetworkPolicy definition, read off the model)
//! and the plan evaluator (the datapath's lookups on the compiled Plan) must return the same
//! Decision (verdict per side, isolating policies and the first allowing rule) for every flow.
//!
//! Clusters are random but small and dense: labels and names come from tiny alphabets so
//! selectors hit, ipBlocks are cut around the pod addresses (v4 and v6) with excepts, ports are
//! named, numeric and ranges, and every policyTypes combination occurs. Flows cover every pair
//! of addresses (pods and a few external ones), TCP/UDP/SCTP/ICMP, and ports at every range
//! edge and named-port number. Each case is checked with node None and with a random node.
//!
//! Clusters also carry Services: virtual addresses from a small pool (outside the pod range,
//! inside it so ipBlocks cover them, equal to a pod address, IPv6), shared between Services at
//! times, ports by name and number, endpoints computed from a selector (named or numeric
//! targetPorts), manual (pod and non-pod addresses) or none. Flows go to every virtual
//! address on served and unserved ports, and the whole Decision must match (including the
//! denied endpoints of a Service).
//!
//! `PROPTEST_CASES` raises the case count (default 48 to keep `cargo xtask test` fast).
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netward::compiler::compile;
use netward::eval::{plan, spec, Flow, SideVerdict};
use netward::model::*;
use netward::synth::{add_services, generate, SynthParams};
use netward::testkit::{endpoints_from_pods, normalise_service, Target};
use netward_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const NAMESPACES: &[&str] = &["a", "b", "c"];
const KEYS: &[&str] = &["app", "tier"];
const VALUES: &[&str] = &["x", "y", "z"];
const NS_KEYS: &[&str] = &["team", "env"];
const PORT_NAMES: &[&str] = &["http", "metrics"];
const PORT_NUMBERS: &[u16] = &[53, 80, 8080, 9090];
const NODES: &[&str] = &["n1", "n2"];

fn labels_strategy(keys: &'static [&'static str]) -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(keys).prop_map(str::to_string),
        proptest::sample::select(VALUES).prop_map(str::to_string),
        0..=keys.len(),
    )
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        4 => Just(Protocol::Tcp),
        2 => Just(Protocol::Udp),
        1 => Just(Protocol::Sctp),
    ]
}

fn selector(keys: &'static [&'static str]) -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        proptest::sample::select(keys),
        prop_oneof![
            Just(Operator::In),
            Just(Operator::NotIn),
            Just(Operator::Exists),
            Just(Operator::DoesNotExist),
        ],
        proptest::collection::btree_set(proptest::sample::select(VALUES), 1..=2),
    )
        .prop_map(|(k, op, vals)| Requirement {
            key: k.to_string(),
            operator: op,
            values: match op {
                Operator::In | Operator::NotIn => vals.into_iter().map(str::to_string).collect(),
                _ => Vec::new(),
            },
        });
    (
        labels_strategy(keys),
        proptest::collection::vec(requirement, 0..=1),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// 10.0.0.0/27 and fd00::/123 hold the pod addresses; blocks are cut around them.
fn ip_block() -> impl Strategy<Value = Peer> {
    (
        any::<bool>(),
        prop_oneof![Just(0u8), 24u8..=32],
        proptest::collection::vec((0u8..32, 1u8..=6), 0..=2),
        0u8..32,
    )
        .prop_map(|(v6, len, excepts, start)| {
            let (cidr, family_bits) = if v6 {
                let len6 = if len == 0 { 0 } else { len + 96 };
                let a = Ipv6Addr::from(0xfd00u128 << 112 | u128::from(start));
                (IpNet::new(IpAddr::V6(a), len6).unwrap().trunc(), 128u8)
            } else {
                let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + u32::from(start));
                (IpNet::new(IpAddr::V4(a), len).unwrap().trunc(), 32u8)
            };
            let except = excepts
                .into_iter()
                .filter_map(|(off, extra)| {
                    let l = cidr.prefix_len() + extra;
                    if l > family_bits || cidr.prefix_len() == 0 {
                        return None;
                    }
                    let host = match cidr.network() {
                        IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n) + u32::from(off))),
                        IpAddr::V6(n) => {
                            IpAddr::V6(Ipv6Addr::from(u128::from(n) + u128::from(off)))
                        }
                    };
                    let e = IpNet::new(host, l).unwrap().trunc();
                    cidr.contains(&e).then_some(e)
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            Peer::IpBlock { cidr, except }
        })
}

fn peer(ns: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        3 => selector(KEYS).prop_map(move |pods| Peer::Pods {
            namespaces: NamespaceScope::Own(ns.to_string()),
            pods,
        }),
        2 => (selector(NS_KEYS), selector(KEYS)).prop_map(|(n, pods)| Peer::Pods {
            namespaces: NamespaceScope::Selector(n),
            pods,
        }),
        2 => ip_block(),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    let number = (
        proptest::sample::select(PORT_NUMBERS),
        prop_oneof![
            Just(None),
            Just(Some(0u16)),
            Just(Some(10)),
            Just(Some(1000))
        ],
    )
        .prop_map(|(p, extra)| (PortRef::Number(p), extra.map(|e| p + e)));
    let named = proptest::sample::select(PORT_NAMES).prop_map(|n| (PortRef::Name(n.into()), None));
    (
        protocol(),
        prop_oneof![1 => Just(None), 3 => number.prop_map(Some), 2 => named.prop_map(Some)],
    )
        .prop_map(|(protocol, p)| match p {
            None => PortSpec {
                protocol,
                port: None,
                end_port: None,
            },
            Some((port, end_port)) => PortSpec {
                protocol,
                port: Some(port),
                end_port,
            },
        })
}

fn rule(ns: &'static str) -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(peer(ns), 0..=2),
        proptest::collection::vec(port_spec(), 0..=2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policy() -> impl Strategy<Value = Policy> {
    proptest::sample::select(NAMESPACES).prop_flat_map(|ns| {
        (
            selector(KEYS),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(rule(ns), 0..=2),
            proptest::collection::vec(rule(ns), 0..=2),
        )
            .prop_map(move |(pod_selector, ing, eg, ingress, egress)| Policy {
                namespace: ns.to_string(),
                name: String::new(),
                pod_selector,
                ingress_isolation: ing,
                egress_isolation: eg,
                ingress,
                egress,
                origin: "proptest".into(),
                errors: Vec::new(),
            })
    })
}

#[derive(Clone, Debug)]
struct PodDraft {
    ns: &'static str,
    labels: Labels,
    v6: bool,
    no_ip: bool,
    host_network: bool,
    node: &'static str,
    ports: Vec<ContainerPort>,
}

fn pod() -> impl Strategy<Value = PodDraft> {
    let container_port = (
        proptest::sample::select(PORT_NAMES),
        proptest::sample::select(&[80u16, 8080, 8085, 9090, 9095][..]),
        protocol(),
    )
        .prop_map(|(n, port, protocol)| ContainerPort {
            name: Some(n.to_string()),
            port,
            protocol,
        });
    (
        proptest::sample::select(NAMESPACES),
        labels_strategy(KEYS),
        any::<bool>(),
        proptest::bool::weighted(0.05),
        proptest::bool::weighted(0.1),
        proptest::sample::select(NODES),
        proptest::collection::vec(container_port, 0..=2),
    )
        .prop_map(
            |(ns, labels, v6, no_ip, host_network, node, ports)| PodDraft {
                ns,
                labels,
                v6,
                no_ip,
                host_network,
                node,
                ports,
            },
        )
}

/// Virtual addresses: outside the pod range, inside it (10.0.0.20 is in 10.0.0.0/27 where
/// ipBlocks are cut), equal to pod p2's address, and IPv6 (inside and outside fd00::/123).
const VIPS: &[&str] = &[
    "10.96.0.1",
    "10.96.0.2",
    "10.0.0.20",
    "10.0.0.2",
    "fd00:96::1",
    "fd00::14",
];
const SERVICE_PORT_NAMES: &[&str] = &["", "http", "dns"];

#[derive(Clone, Debug)]
enum EndpointsDraft {
    /// Selector over the Service's namespace; one targetPort per Service port.
    Selector(LabelSelector, Vec<Target>),
    /// Manual endpoints: pod number (1..=8, may not exist) or external, and whether each
    /// serves every port (else only the first).
    Manual(Vec<(u8, bool)>),
    None,
}

#[derive(Clone, Debug)]
struct ServiceDraft {
    ns: &'static str,
    vips: Vec<&'static str>,
    ports: Vec<(&'static str, Protocol, u16)>,
    endpoints: EndpointsDraft,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        proptest::sample::select(PORT_NAMES).prop_map(|n| Target::Name(n.to_string())),
        proptest::sample::select(&[80u16, 8080, 9090][..]).prop_map(Target::Num),
    ]
}

fn service() -> impl Strategy<Value = ServiceDraft> {
    (
        proptest::sample::select(NAMESPACES),
        proptest::collection::vec(proptest::sample::select(VIPS), 1..=2),
        proptest::collection::vec(
            (
                proptest::sample::select(SERVICE_PORT_NAMES),
                protocol(),
                proptest::sample::select(&[53u16, 80, 8080][..]),
            ),
            1..=2,
        ),
        prop_oneof![
            3 => (selector(KEYS), proptest::collection::vec(target(), 2))
                .prop_map(|(s, t)| EndpointsDraft::Selector(s, t)),
            2 => proptest::collection::vec((0u8..=9, any::<bool>()), 1..=3)
                .prop_map(EndpointsDraft::Manual),
            1 => Just(EndpointsDraft::None),
        ],
    )
        .prop_map(|(ns, vips, ports, endpoints)| ServiceDraft {
            ns,
            vips,
            ports,
            endpoints,
        })
}

fn build_service(c: &Cluster, i: usize, d: ServiceDraft) -> Service {
    // Port names are unique within a Service (the API requires it).
    let mut ports: Vec<ServicePort> = Vec::new();
    for (n, (name, protocol, port)) in d.ports.into_iter().enumerate() {
        let name = if n == 0 {
            name.to_string()
        } else {
            format!("{name}{n}")
        };
        ports.push(ServicePort {
            name,
            protocol,
            port,
        });
    }
    let endpoints = match d.endpoints {
        EndpointsDraft::Selector(sel, targets) => {
            let with_targets: Vec<(ServicePort, Target)> =
                ports.iter().cloned().zip(targets).collect();
            endpoints_from_pods(c, d.ns, &sel, &with_targets)
        }
        EndpointsDraft::Manual(list) => list
            .into_iter()
            .flat_map(|(n, all)| {
                let ips: Vec<IpAddr> = if n == 0 {
                    vec!["8.8.8.8".parse().unwrap(), "2001:db8::1".parse().unwrap()]
                } else if n == 9 {
                    vec!["10.0.0.30".parse().unwrap()]
                } else {
                    vec![
                        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + u32::from(n))),
                        IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | u128::from(n))),
                    ]
                };
                let served: Vec<EndpointPort> = ports
                    .iter()
                    .take(if all { ports.len() } else { 1 })
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        protocol: p.protocol,
                        port: [8080u16, 9090, 80][usize::from(n) % 3],
                    })
                    .collect();
                ips.into_iter().map(move |ip| ServiceEndpoint {
                    ip,
                    ports: served.clone(),
                })
            })
            .collect(),
        EndpointsDraft::None => Vec::new(),
    };
    let mut svc = Service {
        namespace: d.ns.to_string(),
        name: format!("svc{i}"),
        vips: d.vips.iter().map(|v| v.parse().unwrap()).collect(),
        ports,
        endpoints,
    };
    normalise_service(&mut svc);
    svc
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        proptest::collection::vec(labels_strategy(NS_KEYS), NAMESPACES.len()),
        proptest::collection::vec(pod(), 1..=7),
        proptest::collection::vec(policy(), 0..=5),
        proptest::collection::vec(service(), 0..=3),
    )
        .prop_map(|(ns_labels, pods, policies, services)| {
            let mut c = Cluster::default();
            for (name, mut l) in NAMESPACES.iter().zip(ns_labels) {
                l.insert(NAMESPACE_NAME_LABEL.into(), name.to_string());
                c.namespaces.insert(
                    name.to_string(),
                    Namespace {
                        name: name.to_string(),
                        labels: l,
                    },
                );
            }
            for (i, d) in pods.into_iter().enumerate() {
                let i = i as u32 + 1;
                let ips = if d.no_ip {
                    vec![]
                } else if d.host_network {
                    vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, i as u8))]
                } else if d.v6 {
                    vec![
                        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                        IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | u128::from(i))),
                    ]
                } else {
                    vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))]
                };
                c.pods.push(Pod {
                    namespace: d.ns.into(),
                    name: format!("p{i}"),
                    labels: d.labels,
                    ips,
                    node: Some(d.node.into()),
                    host_network: d.host_network,
                    ports: d.ports,
                });
            }
            for (i, mut p) in policies.into_iter().enumerate() {
                p.name = format!("np{i}");
                c.policies.push(p);
            }
            c.pods
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            c.policies
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            for (i, d) in services.into_iter().enumerate() {
                let svc = build_service(&c, i, d);
                c.services.push(svc);
            }
            c.services
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            c
        })
}

/// Addresses to probe: every pod address and a few outside ones (inside and outside the
/// pod ranges, both families, a node address).
fn addresses(c: &Cluster) -> Vec<IpAddr> {
    let mut v: BTreeSet<IpAddr> = c.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    for s in [
        "10.0.0.30",
        "8.8.8.8",
        "192.168.0.200",
        "fd00::1e",
        "2001:db8::1",
    ] {
        v.insert(s.parse().unwrap());
    }
    for svc in &c.services {
        v.extend(svc.vips.iter().copied());
        v.extend(svc.endpoints.iter().map(|e| e.ip));
    }
    v.into_iter().collect()
}

/// Ports to probe: range edges, every number policies and pods mention, and a few others.
fn ports(c: &Cluster) -> Vec<u16> {
    let mut v: BTreeSet<u16> = [1u16, 79, 443, 65535].into_iter().collect();
    for p in &c.policies {
        for r in p.ingress.iter().chain(&p.egress) {
            for s in &r.ports {
                if let Some(PortRef::Number(n)) = s.port {
                    let end = s.end_port.unwrap_or(n);
                    v.extend([n.saturating_sub(1), n, end, end.saturating_add(1)]);
                }
            }
        }
    }
    for pod in &c.pods {
        v.extend(pod.ports.iter().map(|p| p.port));
    }
    for svc in &c.services {
        v.extend(svc.ports.iter().map(|p| p.port));
        v.extend(
            svc.endpoints
                .iter()
                .flat_map(|e| e.ports.iter().map(|p| p.port)),
        );
    }
    v.into_iter().collect()
}

/// Compare both evaluators on every flow; on mismatch, a readable report.
fn check_all(c: &Cluster, node: Option<&str>) -> Result<(), TestCaseError> {
    let plan = compile(c, node);
    let addrs = addresses(c);
    let ports = ports(c);
    for &src in &addrs {
        for &dst in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            let icmp = if src.is_ipv4() {
                PROTO_ICMP
            } else {
                PROTO_ICMPV6
            };
            let flows = [PROTO_TCP, PROTO_UDP, PROTO_SCTP]
                .into_iter()
                .flat_map(|proto| ports.iter().map(move |&port| (proto, port)))
                .chain([(icmp, 0)]);
            for (protocol, port) in flows {
                let f = Flow {
                    src,
                    dst,
                    protocol,
                    port,
                };
                let want = spec::evaluate(c, node, &f);
                let got = plan::evaluate(&plan, &f);
                if want != got {
                    return Err(TestCaseError::fail(format!(
                        "evaluators disagree (node {node:?}) on {src} -> {dst} proto {protocol} \
                         port {port}\n  spec: {want:?}\n  plan: {got:?}\ncluster:\n{}",
                        describe(c)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The cluster in a compact, readable form for failure reports.
fn describe(c: &Cluster) -> String {
    let mut s = String::new();
    for n in c.namespaces.values() {
        s += &format!("  namespace {} {:?}\n", n.name, n.labels);
    }
    for p in &c.pods {
        let ports: Vec<String> = p
            .ports
            .iter()
            .map(|cp| {
                format!(
                    "{}={}/{}",
                    cp.name.as_deref().unwrap_or("-"),
                    cp.port,
                    cp.protocol
                )
            })
            .collect();
        s += &format!(
            "  pod {} {:?} ips={:?} node={:?}{} ports=[{}]\n",
            p.key(),
            p.labels,
            p.ips,
            p.node,
            if p.host_network { " hostNetwork" } else { "" },
            ports.join(",")
        );
    }
    for svc in &c.services {
        s += &format!(
            "  service {} vips={:?} ports={:?}\n    endpoints={:?}\n",
            svc.key(),
            svc.vips,
            svc.ports,
            svc.endpoints
        );
    }
    for p in &c.policies {
        s += &format!(
            "  policy {} select {} ingress:{} egress:{}\n",
            p.key(),
            p.pod_selector,
            p.ingress_isolation,
            p.egress_isolation
        );
        for (d, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            for (i, r) in rules.iter().enumerate() {
                s += &format!("    {d}[{i}] peers={:?} ports={:?}\n", r.peers, r.ports);
            }
        }
    }
    s
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn spec_and_plan_agree(c in cluster(), node in proptest::sample::select(NODES)) {
        check_all(&c, None)?;
        check_all(&c, Some(node))?;
    }

    #[test]
    fn plan_is_deterministic_and_ignores_unselected_labels(c in cluster()) {
        let a = compile(&c, None);
        prop_assert_eq!(&a, &compile(&c, None));
        prop_assert_eq!(&a.ipcache, &compile(&c, None).ipcache);
        prop_assert_eq!(&a.policy, &compile(&c, None).policy);
        let mut more = c.clone();
        for (i, p) in more.pods.iter_mut().enumerate() {
            p.labels.insert("pod-template-hash".into(), format!("h{i}"));
        }
        prop_assert_eq!(a.stats(), compile(&more, None).stats());
    }
}

/// The synthetic generator's realistic mixes, on a sample of flows, for a few seeds.
#[test]
fn spec_and_plan_agree_on_synthetic_clusters() {
    let params = SynthParams {
        namespaces: 12,
        pods: 150,
        policies: 40,
        nodes: 4,
        dual_stack_percent: 30,
        host_network_percent: 3,
    };
    for seed in 0..3 {
        let mut c = generate(&params, seed);
        add_services(&mut c, 2, seed);
        // (virtual address, protocol, port) of every served Service port, probed besides.
        let served: Vec<(IpAddr, u8, u16)> = c
            .services
            .iter()
            .flat_map(|s| {
                s.vips.iter().flat_map(move |&v| {
                    s.ports
                        .iter()
                        .map(move |p| (v, p.protocol.number(), p.port))
                })
            })
            .collect();
        assert!(!served.is_empty());
        let (mut vip_allowed, mut vip_denied) = (0usize, 0usize);
        for node in [None, Some("node-001")] {
            let plan = compile(&c, node);
            let addrs = addresses(&c);
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..20_000 {
                let src = addrs[rng.usize(..addrs.len())];
                let dst = addrs[rng.usize(..addrs.len())];
                let (protocol, port) = match rng.u8(..6) {
                    0 => (PROTO_UDP, [53u16, 5000, 5100, 5101, 5673][rng.usize(..5)]),
                    1 => (PROTO_SCTP, 3868),
                    2 => (PROTO_ICMP, 0),
                    _ => (
                        PROTO_TCP,
                        [
                            53u16, 80, 90, 91, 443, 5432, 8080, 8081, 9000, 9090, 30000, 32767,
                            32768,
                        ][rng.usize(..13)],
                    ),
                };
                let (dst, protocol, port) = if rng.u8(..3) == 0 {
                    served[rng.usize(..served.len())]
                } else {
                    (dst, protocol, port)
                };
                if src.is_ipv4() != dst.is_ipv4() {
                    continue;
                }
                let f = Flow {
                    src,
                    dst,
                    protocol,
                    port,
                };
                let want = spec::evaluate(&c, node, &f);
                let got = plan::evaluate(&plan, &f);
                assert_eq!(want, got, "seed {seed} node {node:?} flow {f:?}");
                let to_service = c.pod_by_ip(dst).is_none()
                    && Protocol::from_number(protocol)
                        .and_then(|p| c.service_port(dst, p, port))
                        .is_some();
                if to_service {
                    match want.egress {
                        SideVerdict::Allowed { .. } => vip_allowed += 1,
                        SideVerdict::ServiceDenied { .. } => vip_denied += 1,
                        _ => {}
                    }
                }
            }
        }
        // Isolated clients to Services: both outcomes occur.
        assert!(
            vip_allowed > 0 && vip_denied > 0,
            "seed {seed}: {vip_allowed} allowed, {vip_denied} denied"
        );
    }
}
