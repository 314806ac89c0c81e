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
//! [`add_services`] adds Services to a generated cluster (kube-dns, one per app of a
//! namespace selecting its pods with named or numeric targetPorts, some with manual endpoints
//! outside the cluster, some without endpoints, dual-stack virtual addresses for a share);
//! [`generate`] alone has none, so the compile benchmark measures what it always measured.
//!
//! Policy names start with their kind (`deny`, `app2app`, `monitoring`, `dns`, `internet`,
//! `nodeports`, `crossns`, `tiers`, `nodes`, `podranges`) and end with their index. The same
//! `(params, seed)` always gives the same cluster.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{
    Cluster, ContainerPort, Direction, LabelSelector, Labels, Namespace, Operator, Pod, Protocol,
    NAMESPACE_NAME_LABEL,
};
use crate::model::{EndpointPort, Service, ServiceEndpoint, ServicePort};
use crate::testkit::{
    endpoints_from_pods, normalise_service, policy, req, rule, sel, sel_exprs, Target, SCTP, TCP,
    UDP,
};

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
        0 => policy(n, &format!("deny-ingress-{j}")).types(&[Direction::Ingress]),
        1 => {
            let (to, from) = (app(rng), app(rng));
            policy(n, &format!("app2app-{to}-from-{from}-{j}"))
                .select(&[("app", to)])
                .ingress(
                    rule()
                        .pods(&[("app", from)])
                        .tcp(8080)
                        .named_port(TCP, "grpc"),
                )
        }
        2 => policy(n, &format!("monitoring-scrape-{j}")).ingress(
            rule()
                .pods_in(&[("purpose", "monitoring")], &[("app", "prometheus")])
                .named_port(TCP, "metrics"),
        ),
        3 => policy(n, &format!("dns-only-egress-{j}"))
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
            policy(n, &format!("internet-{a}-{j}"))
                .select(&[("app", a)])
                .egress(rule().ip_block("0.0.0.0/0", &except).tcp(443))
                .egress(rule().ip_block("203.0.113.0/24", &[]).tcp(443).tcp(80))
        }
        5 => {
            let team = all[rng.usize(..all.len())].team;
            let a = app(rng);
            policy(n, &format!("nodeports-{a}-from-{team}-{j}"))
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
            policy(n, &format!("crossns-{a}-from-{}-orders-api-{j}", ns.team))
                .select(&[("app", a)])
                .ingress(
                    rule()
                        .pods_in(&[("team", ns.team)], &[("app", "orders-api")])
                        .tcp(5432),
                )
        }
        7 => policy(n, &format!("tiers-web-app-{j}"))
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
        8 => policy(n, &format!("nodes-cidr-{j}"))
            .select_sel(LabelSelector::everything())
            .ingress(rule().ip_block("192.168.0.0/16", &["192.168.255.0/24"])),
        _ => {
            // ipBlocks over pod CIDRs of a few nodes (a legacy pool), with excepts, in both
            // families.
            let third = 4 * rng.u8(..2);
            let a = app(rng);
            policy(n, &format!("podranges-{a}-{j}"))
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

/// Add Services to `c` (deterministic for a seed): kube-dns (named targetPorts on the
/// coredns pods), then for up to `per_namespace` apps of each namespace a Service selecting
/// that app (targetPort by name or number; port 80 or the app's own), one Service in ten with
/// manual endpoints (addresses outside the cluster and a pod address), one in ten without any
/// endpoint. Virtual addresses come from 10.96.0.0/16, plus fd00:96::/112 for a quarter.
pub fn add_services(c: &mut Cluster, per_namespace: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x05e4_1ce5);
    let mut next: u32 = 10;
    let mut vip = |rng: &mut fastrand::Rng| {
        next += 1;
        let mut v = vec![IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 96, 0, 0)) + next,
        ))];
        if rng.u32(0..4) == 0 {
            v.push(IpAddr::V6(Ipv6Addr::from(
                (0xfd00_0096u128 << 96) | u128::from(next),
            )));
        }
        v
    };
    let mut services = Vec::new();
    let dns_ports = [
        (sp("dns", UDP, 53), Target::Name("dns".into())),
        (sp("dns-tcp", TCP, 53), Target::Name("dns-tcp".into())),
    ];
    services.push(Service {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        vips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))],
        ports: dns_ports.iter().map(|p| p.0.clone()).collect(),
        endpoints: endpoints_from_pods(
            c,
            "kube-system",
            &sel(&[("k8s-app", "kube-dns")]),
            &dns_ports,
        ),
    });
    let pod_ips: Vec<IpAddr> = c.pods.iter().flat_map(|p| p.ips.clone()).collect();
    let mut apps: Vec<(String, String)> = c
        .pods
        .iter()
        .filter_map(|p| Some((p.namespace.clone(), p.labels.get("app")?.clone())))
        .collect();
    apps.sort();
    apps.dedup();
    let mut count_in: Option<(String, usize)> = None;
    for (ns, app) in apps {
        let n = match &mut count_in {
            Some((cur, n)) if *cur == ns => {
                *n += 1;
                *n
            }
            _ => {
                count_in = Some((ns.clone(), 1));
                1
            }
        };
        if n > per_namespace {
            continue;
        }
        let Some(&(_, _, app_ports)) = APPS.iter().find(|a| a.0 == app) else {
            continue;
        };
        let Some(&(pname, pnum, proto)) = app_ports.first() else {
            continue;
        };
        let (port, target) = match rng.u8(..3) {
            0 => (80, Target::Name(pname.into())),
            1 => (pnum, Target::Num(pnum)),
            _ => (pnum, Target::Name(pname.into())),
        };
        let ports = [(sp(pname, proto, port), target)];
        let mut svc = Service {
            namespace: ns.clone(),
            name: app.clone(),
            vips: vip(&mut rng),
            ports: vec![ports[0].0.clone()],
            endpoints: Vec::new(),
        };
        match rng.u8(..10) {
            0 => {
                // Manual endpoints: outside addresses and, sometimes, a pod address.
                let mut addrs = vec![
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, rng.u8(1..20))),
                    IpAddr::V4(Ipv4Addr::new(198, 51, 100, rng.u8(1..20))),
                ];
                if rng.bool() && !pod_ips.is_empty() {
                    addrs.push(pod_ips[rng.usize(..pod_ips.len())]);
                }
                svc.endpoints = addrs
                    .into_iter()
                    .map(|ip| ServiceEndpoint {
                        ip,
                        ports: vec![EndpointPort {
                            name: pname.into(),
                            protocol: proto,
                            port: pnum,
                        }],
                    })
                    .collect();
            }
            1 => {} // no endpoint (scaled to zero)
            _ => svc.endpoints = endpoints_from_pods(c, &ns, &sel(&[("app", &app)]), &ports),
        }
        services.push(svc);
    }
    for svc in &mut services {
        normalise_service(svc);
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    c.services = services;
}

fn sp(name: &str, protocol: Protocol, port: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port,
    }
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
        assert!(a.services.is_empty());
    }

    #[test]
    fn services_are_deterministic_and_varied() {
        let p = SynthParams {
            namespaces: 20,
            pods: 300,
            policies: 60,
            nodes: 5,
            dual_stack_percent: 30,
            host_network_percent: 2,
        };
        let mut a = generate(&p, 7);
        add_services(&mut a, 2, 7);
        let mut b = generate(&p, 7);
        add_services(&mut b, 2, 7);
        assert_eq!(a, b);
        let s = &a.services;
        assert!(s.len() > 10);
        assert!(s
            .iter()
            .any(|s| s.key() == "kube-system/kube-dns" && s.endpoints.len() >= 2));
        assert!(s.iter().any(|s| s.endpoints.is_empty()));
        assert!(s.iter().any(|s| s.vips.len() == 2));
        assert!(s
            .iter()
            .any(|s| s.endpoints.iter().any(|e| a.pod_by_ip(e.ip).is_none())));
        assert!(s
            .windows(2)
            .all(|w| (&w[0].namespace, &w[0].name) < (&w[1].namespace, &w[1].name)));
    }
}
