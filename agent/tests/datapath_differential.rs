//! Differential test: for many random clusters, compile a Plan, install it, and run random
//! packets through the real eBPF programs (BPF_PROG_TEST_RUN). The verdict of each program
//! (the source pod's egress, the destination pod's ingress) must equal the plan evaluator's
//! (`eval::plan::evaluate`), which performs the lookups the program is specified to do.
//! The clusters include Services: some packets go to their virtual addresses (served ports,
//! unserved ports, port-less protocols), as the egress hook sees them before kube-proxy.
mod datapath_support;

use datapath_support::*;
use netward::compiler::compile;
use netward::eval::{plan::evaluate, Flow};
use netward::model::Direction::{Egress, Ingress};
use netward::model::{EndpointPort, Protocol, Service, ServiceEndpoint, ServicePort};
use netward::testkit::{policy, rule, ClusterBuilder, RuleBuilder};
use netward_common::*;

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const APPS: [&str; 3] = ["x", "y", "z"];
const TEAMS: [&str; 2] = ["a", "b"];
const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const PODS: usize = 7;

fn pod_v4(i: usize) -> String {
    format!("10.5.0.{}", i + 1)
}

fn pod_v6(i: usize) -> String {
    format!("fd05::{}", i + 1)
}

fn random_rule(r: &mut Rng) -> RuleBuilder {
    let mut rule = rule();
    for _ in 0..r.below(3) {
        rule = match r.below(6) {
            0 => rule.pods(&[("app", *r.pick(&APPS))]),
            1 => rule.namespaces(&[("team", *r.pick(&TEAMS))]),
            2 => rule.pods_in(&[("team", *r.pick(&TEAMS))], &[("app", *r.pick(&APPS))]),
            3 => rule.ip_block("10.5.0.0/29", &["10.5.0.4/30"]),
            4 => rule.ip_block("192.0.2.0/24", &[]),
            _ => rule.ip_block("fd05::/120", &["fd05::4/126"]),
        };
    }
    for _ in 0..r.below(3) {
        rule = match r.below(7) {
            0 => rule.tcp(80),
            1 => rule.udp(53),
            2 => rule.port_range(Protocol::Tcp, 8000, 8100),
            3 => rule.named_port(Protocol::Tcp, "http"),
            4 => rule.protocol(Protocol::Sctp),
            5 => rule.port(Protocol::Sctp, 9000),
            _ => rule.port_range(Protocol::Udp, 1000, 1023),
        };
    }
    rule
}

fn random_cluster(r: &mut Rng) -> netward::model::Cluster {
    let mut b = ClusterBuilder::new();
    for ns in NAMESPACES {
        b = b.namespace(ns, &[("team", *r.pick(&TEAMS))]);
    }
    for i in 0..PODS {
        let ns = *r.pick(&NAMESPACES);
        b = b.pod(
            ns,
            &format!("pod{i}"),
            &[("app", *r.pick(&APPS))],
            &pod_v4(i),
        );
        if r.chance(60) {
            b = b.ip(&pod_v6(i));
        }
        if r.chance(70) {
            b = b.port("http", *r.pick(&[80u16, 8080, 8050]), Protocol::Tcp);
        }
    }
    for p in 0..1 + r.below(4) {
        let ns = *r.pick(&NAMESPACES);
        let mut pol = policy(ns, &format!("pol{p}"));
        pol = if r.chance(30) {
            pol.select(&[])
        } else {
            pol.select(&[("app", *r.pick(&APPS))])
        };
        if r.chance(80) {
            pol = pol.ingress_section();
            for _ in 0..r.below(3) {
                pol = pol.ingress(random_rule(r));
            }
        }
        if r.chance(50) {
            pol = pol.egress_section();
            for _ in 0..r.below(3) {
                pol = pol.egress(random_rule(r));
            }
        }
        b = b.policy(pol);
    }
    b.build()
}

/// Virtual addresses of the random Services (v4 and v6 pools).
const VIPS_V4: [&str; 3] = ["10.96.0.1", "10.96.0.2", "10.96.0.3"];
const VIPS_V6: [&str; 3] = ["fd96::1", "fd96::2", "fd96::3"];
/// Service ports: (protocol, port) and the target ports endpoints may map them to.
const SERVICE_PORTS: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Udp, 53),
    (Protocol::Tcp, 8080),
    (Protocol::Sctp, 9000),
];
const TARGET_PORTS: [u16; 6] = [80, 8080, 8050, 53, 1000, 9000];

/// 0-3 Services, each of one family, with a random subset of the pods (of that family) as
/// ready endpoints (sometimes none) and random target ports.
fn random_services(r: &mut Rng, cluster: &mut netward::model::Cluster) {
    for (i, (v4, v6)) in VIPS_V4.iter().zip(VIPS_V6).enumerate() {
        if !r.chance(70) {
            continue;
        }
        let ipv6 = r.chance(30);
        let vip: std::net::IpAddr = if ipv6 { v6 } else { v4 }.parse().unwrap();
        let mut ports: Vec<ServicePort> = Vec::new();
        for (n, (protocol, port)) in SERVICE_PORTS.iter().enumerate() {
            if ports.is_empty() || r.chance(40) {
                ports.push(ServicePort {
                    name: format!("p{n}"),
                    protocol: *protocol,
                    port: *port,
                });
            }
        }
        let mut endpoints: Vec<ServiceEndpoint> = Vec::new();
        let wanted = r.below(4);
        for _ in 0..wanted {
            let pod = r.pick(&cluster.pods);
            let Some(ip) = pod.ips.iter().find(|a| a.is_ipv6() == ipv6) else {
                continue;
            };
            if endpoints.iter().any(|e| e.ip == *ip) {
                continue;
            }
            let ports = ports
                .iter()
                .map(|p| EndpointPort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: *r.pick(&TARGET_PORTS),
                })
                .collect();
            endpoints.push(ServiceEndpoint { ip: *ip, ports });
        }
        endpoints.sort_by_key(|e| e.ip);
        cluster.services.push(Service {
            namespace: r.pick(&NAMESPACES).to_string(),
            name: format!("svc{i}"),
            vips: vec![vip],
            ports,
            endpoints,
        });
    }
    cluster
        .services
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
}

fn random_addr(r: &mut Rng, v6: bool) -> String {
    let i = r.below(PODS + 3);
    match (v6, i) {
        (false, i) if i < PODS => pod_v4(i),
        (true, i) if i < PODS => pod_v6(i),
        (false, _) => r.pick(&["192.0.2.9", "10.5.0.6", "10.99.0.1"]).to_string(),
        (true, _) => r.pick(&["2001:db8::9", "fd05::6", "fd99::1"]).to_string(),
    }
}

#[test]
fn ebpf_verdicts_equal_the_plan_evaluator() {
    let mut cfg = test_config("diff");
    cfg.policy_max = 65536;
    cfg.ipcache_max = 4096;
    cfg.conntrack_max = 65536;
    cfg.events_per_sec = 0;
    let mut dp = open(cfg);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sport: u16 = 20000;
    let (mut checked, mut denied) = (0usize, 0usize);
    // Packets to virtual addresses, and those an isolated client's egress allowed.
    let (mut to_vip, mut to_vip_allowed) = (0usize, 0usize);
    let mut plans_with_services = 0;
    for round in 0..40 {
        let mut cluster = random_cluster(&mut r);
        random_services(&mut r, &mut cluster);
        let plan = compile(&cluster, None);
        plans_with_services += usize::from(!plan.services.is_empty());
        dp.apply(&plan)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for _ in 0..150 {
            let v6 = r.chance(30);
            let src = random_addr(&mut r, v6);
            let dst = if r.chance(25) {
                r.pick(if v6 { &VIPS_V6 } else { &VIPS_V4 }).to_string()
            } else {
                random_addr(&mut r, v6)
            };
            if src == dst {
                continue;
            }
            // Unique source ports / echo ids: every packet starts a new flow.
            sport = if sport >= 60000 { 20000 } else { sport + 1 };
            let (proto, port, l4) = match r.below(5) {
                0 | 1 => {
                    let port = *r.pick(&[80u16, 81, 8000, 8050, 8080, 8100, 8101, 443, 9999]);
                    (PROTO_TCP, port, datapath_support::tcp(sport, port))
                }
                2 => {
                    let port = *r.pick(&[53u16, 54, 1000, 1023, 1024]);
                    (PROTO_UDP, port, L4::Udp { sport, dport: port })
                }
                3 => {
                    let port = *r.pick(&[9000u16, 9001, 80]);
                    (PROTO_SCTP, port, L4::Sctp { sport, dport: port })
                }
                _ => {
                    let proto = if v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
                    (proto, 0, L4::EchoRequest { id: sport })
                }
            };
            let flow = Flow {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: proto,
                port,
            };
            let want = evaluate(&plan, &flow);
            // Self traffic never reaches a veth: nothing to compare.
            if want.egress == netward::eval::SideVerdict::NotEnforced
                && want.ingress == netward::eval::SideVerdict::NotEnforced
                && src.starts_with("10.5.0.")
            {
                continue;
            }
            let f = frame(&src, &dst, l4);
            let egress = dp.test_run(Egress, &f, 1).unwrap().pass;
            let ingress = dp.test_run(Ingress, &f, 1).unwrap().pass;
            assert_eq!(
                (egress, ingress),
                (want.egress.allows(), want.ingress.allows()),
                "round {round}: {flow:?}\nevaluator: {want:?}\ncluster: {cluster:#?}"
            );
            checked += 1;
            denied += usize::from(!egress || !ingress);
            if dst.starts_with("10.96.") || dst.starts_with("fd96:") {
                to_vip += 1;
                to_vip_allowed += usize::from(matches!(
                    want.egress,
                    netward::eval::SideVerdict::Allowed { .. }
                ));
            }
        }
    }
    let service_denied = dp.counters().unwrap().reason(reason::SERVICE_DENY);
    eprintln!(
        "{checked} packets compared, {denied} denied by some side; {to_vip} to virtual \
         addresses ({to_vip_allowed} allowed by an isolating policy, {service_denied} \
         service_deny); {plans_with_services} of 40 Plans with Services"
    );
    // The random clusters must exercise both outcomes, or the test proves nothing.
    assert!(checked > 4000, "{checked}");
    assert!(
        denied > checked / 10 && denied < checked * 9 / 10,
        "{denied} of {checked} denied"
    );
    assert!(to_vip > 1000, "{to_vip}");
    if plans_with_services > 0 {
        // The Service path must be exercised both ways.
        assert!(service_denied > 50, "{service_denied}");
        assert!(to_vip_allowed > 50, "{to_vip_allowed}");
    }
}
