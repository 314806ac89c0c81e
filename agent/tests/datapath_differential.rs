//! Differential test: for many random clusters, compile a Plan, install it, and run random
//! packets through the real eBPF programs (BPF_PROG_TEST_RUN). The verdict of each program
//! (the source pod's egress, the destination pod's ingress) must equal the plan evaluator's
//! (`eval::plan::evaluate`), which performs the lookups the program is specified to do.
//! The clusters include Services: some packets go to their virtual addresses (served ports,
//! unserved ports, port-less protocols), as the egress hook sees them before kube-proxy.
mod datapath_support;

use datapath_support::*;
use netward::compiler::compile;
use netward::eval::{plan::evaluate, Flow, SideVerdict};
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
        rule = match r.below(8) {
            0 => rule.pods(&[("app", *r.pick(&APPS))]),
            1 => rule.namespaces(&[("team", *r.pick(&TEAMS))]),
            2 => rule.pods_in(&[("team", *r.pick(&TEAMS))], &[("app", *r.pick(&APPS))]),
            3 => rule.ip_block("10.5.0.0/29", &["10.5.0.4/30"]),
            4 => rule.ip_block("192.0.2.0/24", &[]),
            // Every pod address (of one family): allows whole Services.
            5 => rule.ip_block("10.5.0.0/24", &[]),
            6 => rule.ip_block("fd05::/64", &[]),
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
        if r.chance(65) {
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
        // Usually one target port per Service port (a Service's targetPort), else per endpoint.
        let shared: Vec<u16> = ports.iter().map(|_| *r.pick(&TARGET_PORTS)).collect();
        let per_endpoint = r.chance(20);
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
                .zip(&shared)
                .map(|(p, shared)| EndpointPort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: if per_endpoint {
                        *r.pick(&TARGET_PORTS)
                    } else {
                        *shared
                    },
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

/// Random clusters (Plans) per run.
const ROUNDS: usize = 80;

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
    // One CPU, so each packet's twin (below) meets the decision cache its packet filled.
    pin_to_this_cpu();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sport: u16 = 20000;
    let (mut checked, mut denied) = (0usize, 0usize);
    // Packets to virtual addresses, and those to a served port an isolated client may reach.
    let (mut to_vip, mut to_vip_allowed) = (0usize, 0usize);
    let mut plans_with_services = 0;
    for round in 0..ROUNDS {
        let mut cluster = random_cluster(&mut r);
        random_services(&mut r, &mut cluster);
        let plan = compile(&cluster, None);
        plans_with_services += usize::from(!plan.services.is_empty());
        dp.apply(&plan)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for _ in 0..150 {
            let v6 = r.chance(30);
            let to_a_vip = r.chance(30);
            let (src, dst) = if to_a_vip {
                // A pod client, since only local pods' egress consults the Service maps.
                let i = r.below(PODS);
                let src = if v6 { pod_v6(i) } else { pod_v4(i) };
                (
                    src,
                    r.pick(if v6 { &VIPS_V6 } else { &VIPS_V4 }).to_string(),
                )
            } else {
                (random_addr(&mut r, v6), random_addr(&mut r, v6))
            };
            // Mostly a port the Service serves (if the address is a Service's).
            let served = cluster
                .services
                .iter()
                .find(|s| s.vips.iter().any(|v| v.to_string() == dst))
                .filter(|_| r.chance(70))
                .map(|s| {
                    let p = r.pick(&s.ports);
                    (p.protocol.number(), p.port)
                });
            if src == dst {
                continue;
            }
            // Unique source ports / echo ids: every packet starts a new flow, and so does its
            // twin (the next port).
            sport = if sport >= 59998 { 20000 } else { sport + 2 };
            let (proto, port) = match served {
                Some(pp) => pp,
                None => match r.below(5) {
                    0 | 1 => (
                        PROTO_TCP,
                        *r.pick(&[80u16, 81, 8000, 8050, 8080, 8100, 8101, 443, 9999]),
                    ),
                    2 => (PROTO_UDP, *r.pick(&[53u16, 54, 1000, 1023, 1024])),
                    3 => (PROTO_SCTP, *r.pick(&[9000u16, 9001, 80])),
                    _ => (if v6 { PROTO_ICMPV6 } else { PROTO_ICMP }, 0),
                },
            };
            let l4_from = |sport: u16| match proto {
                PROTO_TCP => datapath_support::tcp(sport, port),
                PROTO_UDP => L4::Udp { sport, dport: port },
                PROTO_SCTP => L4::Sctp { sport, dport: port },
                _ => L4::EchoRequest { id: sport },
            };
            let l4 = l4_from(sport);
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
            let egress = if to_a_vip {
                // The reason too: service_deny exactly where the evaluator says ServiceDenied.
                let (pass, why) = run(&dp, Egress, &f);
                let want_why = match want.egress.deny_reason() {
                    Some(r) => reason::name(r),
                    None => match want.egress {
                        SideVerdict::Allowed { .. } => "policy_allow",
                        SideVerdict::NotIsolated => "not_isolated",
                        // A pod without an address of this family (the test fails open).
                        _ => "unknown_endpoint_open",
                    },
                };
                assert_eq!(
                    why, want_why,
                    "round {round}: {flow:?}\nevaluator: {want:?}\ncluster: {cluster:#?}"
                );
                pass
            } else {
                dp.test_run(Egress, &f, 1).unwrap().pass
            };
            let ingress = dp.test_run(Ingress, &f, 1).unwrap().pass;
            assert_eq!(
                (egress, ingress),
                (want.egress.allows(), want.ingress.allows()),
                "round {round}: {flow:?}\nevaluator: {want:?}\ncluster: {cluster:#?}"
            );
            // Its twin, a new flow asking the same questions (another source port): decided
            // by this CPU's decision cache, with the same verdicts and reasons.
            let twin = frame(&src, &dst, l4_from(sport + 1));
            for (dir, pass) in [(Egress, egress), (Ingress, ingress)] {
                let (twin_pass, twin_why) = run(&dp, dir, &twin);
                assert_eq!(
                    twin_pass, pass,
                    "round {round}: twin at {dir:?} ({twin_why}): {flow:?}\nevaluator: {want:?}"
                );
            }
            checked += 1;
            denied += usize::from(!egress || !ingress);
            if to_a_vip {
                to_vip += 1;
                let served = Protocol::from_number(proto)
                    .and_then(|p| cluster.service_port(flow.dst, p, port))
                    .is_some();
                to_vip_allowed +=
                    usize::from(served && matches!(want.egress, SideVerdict::Allowed { .. }));
            }
        }
    }
    let service_denied = dp.counters().unwrap().reason(reason::SERVICE_DENY);
    // The twins were decided by the cache (two decisions each, a few by conntrack instead
    // when a first fragment or ICMP path skips the policy).
    let cache_hits = dp.counters().unwrap().decision_cache_hits;
    assert!(
        cache_hits >= checked as u64,
        "{cache_hits} decision cache hits"
    );
    eprintln!(
        "{checked} packets compared, {denied} denied by some side; {to_vip} to virtual \
         addresses ({to_vip_allowed} to a served port allowed by an isolating policy, {service_denied} \
         service_deny); {plans_with_services} of {ROUNDS} Plans with Services"
    );
    // The random clusters must exercise both outcomes, or the test proves nothing.
    assert!(checked > ROUNDS * 100, "{checked}");
    assert!(
        denied > checked / 10 && denied < checked * 9 / 10,
        "{denied} of {checked} denied"
    );
    assert!(to_vip > 1000, "{to_vip}");
    if plans_with_services > 0 {
        // The Service path must be exercised both ways.
        assert!(service_denied >= 100, "{service_denied}");
        assert!(to_vip_allowed >= 25, "{to_vip_allowed}");
    }
}
