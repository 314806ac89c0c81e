//! Synthetic clusters for benchmarks and property tests: `generate(params, seed) -> Cluster`.
//!
//! The shape follows what production clusters look like rather than uniform noise:
//!
//! * namespaces labelled with `team` and `env`, plus `kube-system` (kube-dns) and `monitoring`
//!   (prometheus, `purpose=monitoring`);
//! * pods of a handful of apps per namespace with `app`, `tier`, `team`, `env`, `version`
//!   labels, named container ports (`http`, `grpc`, `metrics`, ...), dual-stack for a share of
//!   them, some hostNetwork pods (node addresses), spread over nodes;
//! * high-cardinality labels no policy selects on: `pod-template-hash` (per deployment) and
//!   `statefulset.kubernetes.io/pod-name` (per pod);
//! * policies cycling through common kinds per namespace: default deny, app -> app on ports,
//!   scraping from the monitoring namespace on a named port, egress default deny with DNS,
//!   egress to the internet through ipBlocks with excepts (metadata endpoints), endPort
//!   ranges from a team's namespaces, cross-namespace access by team label, matchExpressions,
//!   ipBlocks overlapping pod addresses (v4 and v6), node CIDRs.
//!
//! The same `(params, seed)` always gives the same cluster.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{
    Cluster, ContainerPort, Direction, LabelSelector, Labels, Namespace, Operator, Pod, Protocol,
    NAMESPACE_NAME_LABEL,
};
use crate::testkit::{policy, req, rule, sel_exprs, SCTP, TCP, UDP};

/// Size and mix of a synthetic cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthParams {
    /// Total namespaces, including `kube-system` and `monitoring` (at least 3).
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    pub nodes: usize,
    /// Share of pods with an IPv6 address too.
    pub dual_stack_percent: u32,
    /// Share of pods on the host network.
    pub host_network_percent: u32,
}

impl SynthParams {
    /// The benchmark's cluster: 10,000 pods, 2,000 policies, 500 namespaces.
    pub fn bench() -> Self {
        SynthParams {
            namespaces: 500,
            pods: 10_000,
            policies: 2_000,
            nodes: 100,
            dual_stack_percent: 20,
            host_network_percent: 1,
        }
    }
}

const TEAMS: &[&str] = &[
    "orders", "payments", "search", "identity", "catalog", "shipping", "ads", "data",
];
const ENVS: &[&str] = &["prod", "staging", "dev"];
/// A named container port: (name, port, protocol).
type NamedPort = (&'static str, u16, Protocol);
/// (app, tier, container ports).
const APPS: &[(&str, &str, &[NamedPort])] = &[
    ("frontend", "web", &[("http", 8080, TCP)]),
    (
        "backend",
        "app",
        &[("http", 8080, TCP), ("grpc", 9000, TCP)],
    ),
    ("api", "app", &[("http", 8000, TCP)]),
    (
        "orders-api",
        "app",
        &[("http", 8081, TCP), ("grpc", 9001, TCP)],
    ),
    ("auth", "app", &[("http", 8443, TCP)]),
    ("db", "data", &[("postgres", 5432, TCP)]),
    ("postgres", "data", &[("postgres", 5432, TCP)]),
    ("cache", "data", &[("redis", 6379, TCP)]),
    (
        "queue",
        "data",
        &[("amqp", 5672, TCP), ("stats", 5673, UDP)],
    ),
    ("worker", "batch", &[]),
    ("diameter", "app", &[("diameter", 3868, SCTP)]),
];
const METRICS_PORT: u16 = 9090;

struct NsInfo {
    name: String,
    team: &'static str,
    apps: Vec<usize>,
}

/// Generate a cluster (sorted and normalised as the source produces it).
pub fn generate(params: &SynthParams, seed: u64) -> Cluster {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut c = Cluster::default();
    let add_ns = |c: &mut Cluster, name: &str, kv: &[(&str, &str)]| {
        let mut labels: Labels = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        c.namespaces.insert(
            name.into(),
            Namespace {
                name: name.into(),
                labels,
            },
        );
    };
    add_ns(&mut c, "kube-system", &[]);
    add_ns(&mut c, "monitoring", &[("purpose", "monitoring")]);
    let n_ns = params.namespaces.saturating_sub(2).max(1);
    let mut spaces = Vec::with_capacity(n_ns);
    for i in 0..n_ns {
        let team = TEAMS[rng.usize(..TEAMS.len())];
        let env = ENVS[i % ENVS.len()];
        let name = format!("{team}-{env}-{i:03}");
        add_ns(&mut c, &name, &[("team", team), ("env", env)]);
        let mut apps: Vec<usize> = (0..APPS.len()).collect();
        rng.shuffle(&mut apps);
        apps.truncate(rng.usize(3..=6));
        spaces.push(NsInfo { name, team, apps });
    }

    // Pods: kube-dns and prometheus first, then round-robin over the namespaces. Each node
    // owns a pod CIDR (10.64.0.0/23 for node 0, ...; fd00:10::<node>:0/112), as with
    // Kubernetes' per-node podCIDR allocation.
    let nodes = params.nodes.max(1).max(params.pods.div_ceil(400));
    let mut per_node = vec![0u32; nodes];
    let mut pod = |c: &mut Cluster,
                   rng: &mut fastrand::Rng,
                   ns: &str,
                   name: String,
                   labels: Labels,
                   ports: Vec<ContainerPort>| {
        let node = rng.usize(..nodes);
        per_node[node] += 1;
        let slot = per_node[node];
        let host = rng.u32(0..100) < params.host_network_percent;
        let ips = if host {
            vec![IpAddr::V4(Ipv4Addr::new(
                192,
                168,
                (node / 250) as u8,
                (node % 250) as u8 + 1,
            ))]
        } else {
            let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
            let v4 = IpAddr::V4(Ipv4Addr::from(base + (node as u32) * 512 + slot));
            let mut ips = vec![v4];
            if rng.u32(0..100) < params.dual_stack_percent {
                ips.push(IpAddr::V6(Ipv6Addr::from(
                    (0xfd00_0010u128 << 96) | (node as u128) << 16 | u128::from(slot),
                )));
            }
            ips
        };
        c.pods.push(Pod {
            namespace: ns.into(),
            name,
            labels,
            ips,
            node: Some(format!("node-{node:03}")),
            host_network: host,
            ports,
        });
    };
    let port = |name: &str, port: u16, protocol: Protocol| ContainerPort {
        name: Some(name.into()),
        port,
        protocol,
    };
    for k in 0..2 {
        let l = labels(&[("k8s-app", "kube-dns")]);
        pod(
            &mut c,
            &mut rng,
            "kube-system",
            format!("coredns-{k}"),
            l,
            vec![port("dns", 53, UDP), port("dns-tcp", 53, TCP)],
        );
        let l = labels(&[("app", "prometheus")]);
        pod(
            &mut c,
            &mut rng,
            "monitoring",
            format!("prometheus-{k}"),
            l,
            vec![port("web", 9090, TCP)],
        );
    }
    for i in 0..params.pods.saturating_sub(4) {
        let ns = &spaces[i % n_ns];
        let app = ns.apps[rng.usize(..ns.apps.len())];
        let (name, tier, app_ports) = APPS[app];
        let version = if rng.bool() { "v1" } else { "v2" };
        // One ReplicaSet per (namespace, app, version): a stable hash-like value.
        let hash = format!("{:08x}", fxhash(&[&ns.name, name, version]));
        let pod_name = format!("{name}-{hash}-{i:05}");
        let mut l = labels(&[
            ("app", name),
            ("tier", tier),
            ("team", ns.team),
            ("version", version),
            ("pod-template-hash", &hash),
        ]);
        l.insert(
            "statefulset.kubernetes.io/pod-name".into(),
            pod_name.clone(),
        );
        let mut ports: Vec<ContainerPort> = app_ports
            .iter()
            .map(|&(n, p, proto)| port(n, p, proto))
            .collect();
        ports.push(port("metrics", METRICS_PORT, TCP));
        let ns_name = ns.name.clone();
        pod(&mut c, &mut rng, &ns_name, pod_name, l, ports);
    }

    // Policies: namespace j % n gets kinds in a rotating order, so every kind is common.
    let offsets: Vec<usize> = (0..n_ns).map(|_| rng.usize(..KINDS)).collect();
    for j in 0..params.policies {
        let n = j % n_ns;
        let kind = (j / n_ns + offsets[n]) % KINDS;
        c.policies
            .push(make_policy(&spaces[n], &spaces, kind, j, &mut rng));
    }
    c.pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    c.policies
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    c
}

const KINDS: usize = 10;

fn make_policy(
    ns: &NsInfo,
    all: &[NsInfo],
    kind: usize,
    j: usize,
    rng: &mut fastrand::Rng,
) -> crate::model::Policy {
    let app = |rng: &mut fastrand::Rng| APPS[ns.apps[rng.usize(..ns.apps.len())]].0;
    let n = &ns.name;
    let mut p = match kind {
        0 => policy(n, &format!("default-deny-{j}")).types(&[Direction::Ingress]),
        1 => {
            let (to, from) = (app(rng), app(rng));
            policy(n, &format!("{to}-from-{from}-{j}"))
                .select(&[("app", to)])
                .ingress(
                    rule()
                        .pods(&[("app", from)])
                        .tcp(8080)
                        .named_port(TCP, "grpc"),
                )
        }
        2 => policy(n, &format!("allow-monitoring-{j}")).ingress(
            rule()
                .pods_in(&[("purpose", "monitoring")], &[("app", "prometheus")])
                .named_port(TCP, "metrics"),
        ),
        3 => policy(n, &format!("egress-deny-but-dns-{j}"))
            .types(&[Direction::Egress])
            .egress(
                rule()
                    .pods_in(
                        &[(NAMESPACE_NAME_LABEL, "kube-system")],
                        &[("k8s-app", "kube-dns")],
                    )
                    .udp(53)
                    .tcp(53),
            )
            .egress(rule().pods(&[]).named_port(TCP, "http")),
        4 => {
            // Internet egress, cloud metadata blocked; sometimes pods are carved out too.
            let mut except = vec!["169.254.169.254/32", "100.100.100.200/32"];
            if rng.u32(0..4) != 0 {
                except.push("10.0.0.0/8");
            }
            let a = app(rng);
            policy(n, &format!("{a}-internet-{j}"))
                .select(&[("app", a)])
                .egress(rule().ip_block("0.0.0.0/0", &except).tcp(443))
                .egress(rule().ip_block("203.0.113.0/24", &[]).tcp(443).tcp(80))
        }
        5 => {
            let team = all[rng.usize(..all.len())].team;
            let a = app(rng);
            policy(n, &format!("{a}-nodeports-from-{team}-{j}"))
                .select(&[("app", a)])
                .ingress(
                    rule()
                        .namespaces(&[("team", team)])
                        .port_range(TCP, 30000, 32767)
                        .port_range(UDP, 5000, 5015),
                )
        }
        6 => {
            let a = if rng.bool() { "db" } else { "postgres" };
            policy(n, &format!("{a}-from-{}-orders-{j}", ns.team))
                .select(&[("app", a)])
                .ingress(
                    rule()
                        .pods_in(&[("team", ns.team)], &[("app", "orders-api")])
                        .tcp(5432),
                )
        }
        7 => policy(n, &format!("web-tiers-{j}"))
            .select_sel(sel_exprs(
                &[],
                vec![req("tier", Operator::In, &["app", "web"])],
            ))
            .ingress(
                rule()
                    .pods_sel(sel_exprs(
                        &[],
                        vec![
                            req("version", Operator::NotIn, &["v0"]),
                            req("app", Operator::Exists, &[]),
                        ],
                    ))
                    .port_range(TCP, 80, 90)
                    .port(SCTP, 3868),
            ),
        8 => policy(n, &format!("from-nodes-{j}"))
            .select_sel(LabelSelector::everything())
            .ingress(rule().ip_block("192.168.0.0/16", &["192.168.255.0/24"])),
        _ => {
            // ipBlocks over pod CIDRs of a few nodes (a legacy pool), with excepts, in both
            // families.
            let third = 4 * rng.u8(..2);
            let a = app(rng);
            policy(n, &format!("{a}-to-pod-ranges-{j}"))
                .select(&[("app", a)])
                .egress(
                    rule()
                        .ip_block(
                            &format!("10.64.{third}.0/22"),
                            &[&format!("10.64.{}.0/24", third + 1)],
                        )
                        .ip_block("fd00:10::/108", &["fd00:10::/112"])
                        .tcp(8080),
                )
                .egress(
                    rule()
                        .ip_block(&format!("10.64.{third}.0/23"), &[])
                        .udp(5673),
                )
                .ingress(rule().pods(&[("tier", "app")]).protocol(UDP))
        }
    }
    .build();
    p.origin = "synth".into();
    p
}

/// Small, stable string hash (FNV-1a) for label values like pod-template-hash.
fn fxhash(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        let p = SynthParams {
            namespaces: 20,
            pods: 300,
            policies: 60,
            nodes: 5,
            dual_stack_percent: 30,
            host_network_percent: 2,
        };
        let a = generate(&p, 7);
        assert_eq!(a, generate(&p, 7));
        assert_ne!(a, generate(&p, 8));
        assert_eq!(a.namespaces.len(), 20);
        assert_eq!(a.pods.len(), 300);
        assert_eq!(a.policies.len(), 60);
        // Keys are unique (names carry the index).
        let mut keys: Vec<String> = a.policies.iter().map(|p| p.key()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 60);
        assert!(a.pods.iter().any(|p| p.ips.len() == 2));
        assert!(a
            .pods
            .iter()
            .all(|p| a.namespaces.contains_key(&p.namespace)));
    }
}
