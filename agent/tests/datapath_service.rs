//! Egress to Service virtual addresses with real packets: a node namespace with three pods
//! whose host-side veths carry the programs, and an nftables DNAT ruleset playing kube-proxy
//! (VIP:port -> endpoint:targetPort, after netward's egress hook as on a real node).
//!
//! The client pod is isolated both ways with no ingress rule, so every reply it gets passed
//! through conntrack; its egress may reach Service `web` (all endpoints allowed) and not
//! Service `db` (an endpoint it may not reach): `web` works over TCP and UDP, `db` is dropped
//! as `service_deny` with an event, and a policy change revokes an established connection.
//! Both Services are dual-stack: the same checks run on their IPv6 virtual addresses.
//!
//! The first test installs Plans written by hand (the datapath alone); the second compiles
//! them from a cluster with the compiler's Service pass (the whole chain).
mod datapath_support;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datapath_support::netns::{connect, echo_servers, exchange, in_ns, resolve_neighbours, Node};
use datapath_support::*;
use netward::datapath::{Datapath, EventReader, Verdict, VerdictEvent};
use netward::model::Direction::{Egress, Ingress};
use netward::model::Protocol;
use netward::plan::{Plan, PolicyRef, ServicePortRef};
use netward_common::*;

const WEB_VIP: &str = "10.201.0.1";
const DB_VIP: &str = "10.201.0.2";
const WEB_VIP6: &str = "fd21::1";
const DB_VIP6: &str = "fd21::2";
const TARGET_PORT: u16 = 7777;

/// Service port ids in the Plan: web TCP 80, web UDP 53, db TCP 80, db UDP 53.
const WEB_TCP: u32 = 1;
const WEB_UDP: u32 = 2;

/// A pod's (IPv4, IPv6) addresses.
type Ips = (String, String);

/// Pods: 0 client (subject 1, isolated both ways, peer class 2), 1 web backend (subject 2,
/// isolated for ingress: the client's class on TCP/UDP 7777), 2 db backend (not isolated).
/// Both Services are dual-stack: one Service port id for both virtual addresses.
fn plan(client: &Ips, web: &Ips, db: &Ips, web_allowed: bool) -> Plan {
    let mut p = PlanBuilder::new();
    for ip in [&client.0, &client.1] {
        p.pod(ip, 2, 1, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS, 1);
    }
    for ip in [&web.0, &web.1] {
        p.pod(ip, 3, 2, EP_ISOLATED_INGRESS, 2);
    }
    for ip in [&db.0, &db.1] {
        p.pod(ip, 4, 0, 0, 3);
    }
    for vip in [WEB_VIP, WEB_VIP6] {
        p.service(
            vip,
            1,
            &[(PROTO_TCP, 80, WEB_TCP), (PROTO_UDP, 53, WEB_UDP)],
        );
    }
    for vip in [DB_VIP, DB_VIP6] {
        p.service(vip, 1, &[(PROTO_TCP, 80, 3), (PROTO_UDP, 53, 4)]);
    }
    p.allow(
        POLICY_PREFIX_FULL,
        DIR_INGRESS,
        2,
        2,
        PROTO_TCP,
        TARGET_PORT,
        2,
        0,
    )
    .allow(
        POLICY_PREFIX_FULL,
        DIR_INGRESS,
        2,
        2,
        PROTO_UDP,
        TARGET_PORT,
        2,
        0,
    );
    if web_allowed {
        p.service_allow(1, WEB_TCP, 1, 0)
            .service_allow(1, WEB_UDP, 1, 0);
    }
    let mut plan = p.build();
    plan.policies = ["client-egress", "web-ingress"]
        .iter()
        .map(|n| PolicyRef {
            namespace: "default".into(),
            name: n.to_string(),
        })
        .collect();
    let port = |name: &str, protocol, port, backend: &Ips| ServicePortRef {
        namespace: "default".into(),
        name: name.into(),
        port_name: String::new(),
        protocol,
        port,
        backends: vec![
            (backend.0.parse().unwrap(), TARGET_PORT),
            (backend.1.parse().unwrap(), TARGET_PORT),
        ],
    };
    plan.service_ports = vec![
        port("web", Protocol::Tcp, 80, web),
        port("web", Protocol::Udp, 53, web),
        port("db", Protocol::Tcp, 80, db),
        port("db", Protocol::Udp, 53, db),
    ];
    plan
}

/// kube-proxy's part: DNAT in prerouting, after the tc hook on the client's veth.
fn kube_proxy(services: &[(&str, &str, &Ips)]) -> String {
    let mut rules = String::new();
    for (vip, vip6, b) in services {
        for (l4, port) in [("tcp", 80), ("udp", 53)] {
            rules += &format!(
                "    ip daddr {vip} {l4} dport {port} dnat ip to {}:{TARGET_PORT}\n",
                b.0
            );
            rules += &format!(
                "    ip6 daddr {vip6} {l4} dport {port} dnat ip6 to [{}]:{TARGET_PORT}\n",
                b.1
            );
        }
    }
    format!(
        "table inet netward_test_kube_proxy {{\n  chain prerouting {{\n    \
         type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// A TCP connection from the client pod to `vip:80` (None: not established within 1 s).
fn connect_vip(client_ns: &str, vip: &str) -> Option<TcpStream> {
    connect(client_ns, SocketAddr::new(vip.parse().unwrap(), 80))
}

/// A UDP datagram from the client pod to `vip:53` and the answer, which must come from
/// `vip:53` (the connected socket ignores anything else): kube-proxy's reverse NAT and
/// netward's conntrack both worked.
fn udp_round_trip(client_ns: &str, vip: &str, tries: usize) -> bool {
    let addr = SocketAddr::new(vip.parse().unwrap(), 53);
    let sock = in_ns(client_ns, move || {
        let s = UdpSocket::bind(if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .unwrap();
        s.connect(addr).unwrap();
        s
    });
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut b = [0u8; 16];
    (0..tries).any(|_| {
        sock.send(b"ping").unwrap();
        matches!(sock.recv(&mut b), Ok(4) if &b[..4] == b"ping")
    })
}

fn events_until(
    reader: &mut EventReader,
    want: impl Fn(&VerdictEvent) -> bool,
) -> Vec<VerdictEvent> {
    let mut all = Vec::new();
    for _ in 0..10 {
        all.extend(reader.poll(Duration::from_millis(200)).unwrap());
        if all.iter().any(&want) {
            break;
        }
    }
    all
}

fn delta(dp: &Datapath, before: &netward::datapath::Counters, r: u8) -> u64 {
    dp.counters().unwrap().reason(r) - before.reason(r)
}

#[test]
fn service_vips_with_kube_proxy_dnat() {
    let mut node = Node::new("svc");
    let (client, web, db) = (node.pod(), node.pod(), node.pod());
    let ips = |i: usize| (node.pods[i].ip.clone(), node.pods[i].ip6.clone());
    let (client_ips, web_ips, db_ips) = (ips(client), ips(web), ips(db));
    let (client_ip, web_ip) = (client_ips.0.clone(), web_ips.0.clone());
    node.nft(&kube_proxy(&[
        (WEB_VIP, WEB_VIP6, &web_ips),
        (DB_VIP, DB_VIP6, &db_ips),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    echo_servers(&node.pods[web].ns.name, TARGET_PORT, &stop);
    echo_servers(&node.pods[db].ns.name, TARGET_PORT, &stop);
    let client_ns = node.pods[client].ns.name.clone();
    let ifaces: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();

    // The agent's part runs in the node namespace, where the pods' host-side veths are.
    in_ns(&node.ns.name.clone(), move || {
        let mut dp = open(test_config("svcns"));
        dp.apply(&plan(&client_ips, &web_ips, &db_ips, true))
            .unwrap();
        for i in &ifaces {
            dp.attach(i).unwrap();
        }
        let mut reader = dp.events().unwrap();
        let pods = [&client_ips, &web_ips, &db_ips];
        resolve_neighbours(
            &pods
                .iter()
                .flat_map(|p| [p.0.as_str(), p.1.as_str()])
                .collect::<Vec<_>>(),
        );

        // Allowed: TCP and UDP through the VIP, replies through conntrack.
        let before = dp.counters().unwrap();
        let mut conn = connect_vip(&client_ns, WEB_VIP).expect("TCP to the web VIP");
        assert!(exchange(&mut conn), "echo through the web VIP");
        assert!(
            udp_round_trip(&client_ns, WEB_VIP, 3),
            "UDP through the web VIP"
        );
        assert!(
            delta(&dp, &before, reason::REPLY) >= 3,
            "{:?}",
            dp.counters()
        );
        assert_eq!(delta(&dp, &before, reason::SERVICE_DENY), 0);
        let ev = events_until(&mut reader, |e| e.direction == Ingress);
        let out = ev
            .iter()
            .find(|e| e.direction == Egress && e.protocol == PROTO_TCP)
            .unwrap_or_else(|| panic!("{ev:?}"));
        assert_eq!((out.verdict, out.reason), (Verdict::Allow, "policy_allow"));
        assert_eq!((out.dst.to_string(), out.dport), (WEB_VIP.to_string(), 80));
        assert_eq!(out.policy.as_ref().unwrap().name, "client-egress");
        assert_eq!(out.service.as_deref(), Some("default/web:80/TCP"));
        // The backend's ingress saw the rewritten packet and judged it on its own policy.
        let inb = ev
            .iter()
            .find(|e| e.direction == Ingress && e.protocol == PROTO_TCP)
            .unwrap_or_else(|| panic!("{ev:?}"));
        assert_eq!(
            (inb.dst.to_string(), inb.dport),
            (web_ip.clone(), TARGET_PORT)
        );
        assert_eq!(inb.policy.as_ref().unwrap().name, "web-ingress");
        assert_eq!(inb.service, None);

        // The same over the IPv6 virtual addresses.
        let before = dp.counters().unwrap();
        let mut conn6 = connect_vip(&client_ns, WEB_VIP6).expect("TCP to the web IPv6 VIP");
        assert!(exchange(&mut conn6), "echo through the web IPv6 VIP");
        assert!(
            udp_round_trip(&client_ns, WEB_VIP6, 3),
            "UDP through the web IPv6 VIP"
        );
        assert!(
            connect_vip(&client_ns, DB_VIP6).is_none(),
            "TCP to the db IPv6 VIP"
        );
        assert!(
            !udp_round_trip(&client_ns, DB_VIP6, 1),
            "UDP to the db IPv6 VIP"
        );
        assert!(
            delta(&dp, &before, reason::SERVICE_DENY) >= 2,
            "{:?}",
            dp.counters()
        );
        reader.drain();

        // Denied: db has an endpoint the client may not reach.
        let before = dp.counters().unwrap();
        assert!(
            connect_vip(&client_ns, DB_VIP).is_none(),
            "TCP to the db VIP"
        );
        assert!(!udp_round_trip(&client_ns, DB_VIP, 1), "UDP to the db VIP");
        assert!(
            delta(&dp, &before, reason::SERVICE_DENY) >= 2,
            "{:?}",
            dp.counters()
        );
        let ev = events_until(&mut reader, |e| {
            e.reason == "service_deny" && e.protocol == PROTO_UDP
        });
        for proto in [PROTO_TCP, PROTO_UDP] {
            let e = ev
                .iter()
                .find(|e| e.reason == "service_deny" && e.protocol == proto)
                .unwrap_or_else(|| panic!("no service_deny event for {proto}: {ev:?}"));
            assert_eq!((e.verdict, e.direction), (Verdict::Drop, Egress));
            assert_eq!(e.dst.to_string(), DB_VIP);
            assert_eq!(e.src.to_string(), client_ip);
            let want = if proto == PROTO_TCP {
                "default/db:80/TCP"
            } else {
                "default/db:53/UDP"
            };
            assert_eq!(e.service.as_deref(), Some(want));
        }

        // A policy change revokes: the established connection stops, new ones are denied.
        let before = dp.counters().unwrap();
        dp.apply(&plan(&client_ips, &web_ips, &db_ips, false))
            .unwrap();
        assert!(!exchange(&mut conn), "revoked connection still works");
        assert!(!exchange(&mut conn6), "revoked IPv6 connection still works");
        assert!(
            delta(&dp, &before, reason::REVOKED) >= 2,
            "{:?}",
            dp.counters()
        );
        assert!(connect_vip(&client_ns, WEB_VIP).is_none());
        assert!(!udp_round_trip(&client_ns, WEB_VIP, 1));
        assert!(delta(&dp, &before, reason::SERVICE_DENY) >= 2);
        // And allowed again.
        dp.apply(&plan(&client_ips, &web_ips, &db_ips, true))
            .unwrap();
        let mut conn = connect_vip(&client_ns, WEB_VIP).expect("TCP to the web VIP, re-allowed");
        assert!(exchange(&mut conn));
        drop(dp); // detach and unpin while the veths still exist
    });
    stop.store(true, Ordering::Relaxed);
}

const MIXED_VIP: &str = "10.201.0.3";
const MIXED_VIP6: &str = "fd21::3";

/// The cluster of [`compiled_plans_enforce_service_vips`]: `client` may reach pods `to_app`
/// on 7777; Service `web` selects the web pod, `mixed` the web and the db pods (tier=backend).
fn cluster(client: &Ips, web: &Ips, db: &Ips, to_app: &str) -> netward::model::Cluster {
    use netward::testkit::{policy, rule, ClusterBuilder, Target};
    let mut b = ClusterBuilder::new()
        .pod("default", "client", &[("app", "client")], &client.0)
        .ip(&client.1)
        .pod(
            "default",
            "web",
            &[("app", "web"), ("tier", "backend")],
            &web.0,
        )
        .ip(&web.1)
        .pod(
            "default",
            "db",
            &[("app", "db"), ("tier", "backend")],
            &db.0,
        )
        .ip(&db.1)
        .policy(
            policy("default", "client-egress")
                .select(&[("app", "client")])
                .egress(
                    rule()
                        .pods(&[("app", to_app)])
                        .tcp(TARGET_PORT)
                        .udp(TARGET_PORT),
                ),
        );
    for (name, vips, selector) in [
        ("web", [WEB_VIP, WEB_VIP6], ("app", "web")),
        ("mixed", [MIXED_VIP, MIXED_VIP6], ("tier", "backend")),
    ] {
        b = b
            .service("default", name, &vips)
            .svc_port("http", Protocol::Tcp, 80, Target::Num(TARGET_PORT))
            .svc_port("dns", Protocol::Udp, 53, Target::Num(TARGET_PORT))
            .svc_selector(&[selector]);
    }
    b.build()
}

/// The Plans of the compiler: `web` is allowed while the client may reach the web pod; `mixed`
/// never is (the db endpoint is not allowed), even though kube-proxy here always picks its
/// web endpoint; a policy change revokes.
#[test]
fn compiled_plans_enforce_service_vips() {
    use netward::compiler::compile;
    let mut node = Node::new("svcc");
    let (client, web, db) = (node.pod(), node.pod(), node.pod());
    let ips = |i: usize| (node.pods[i].ip.clone(), node.pods[i].ip6.clone());
    let (client_ips, web_ips, db_ips) = (ips(client), ips(web), ips(db));
    node.nft(&kube_proxy(&[
        (WEB_VIP, WEB_VIP6, &web_ips),
        (MIXED_VIP, MIXED_VIP6, &web_ips),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    echo_servers(&node.pods[web].ns.name, TARGET_PORT, &stop);
    let client_ns = node.pods[client].ns.name.clone();
    let ifaces: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();

    in_ns(&node.ns.name.clone(), move || {
        let to_web = compile(&cluster(&client_ips, &web_ips, &db_ips, "web"), None);
        assert!(!to_web.services.is_empty() && !to_web.service_policy.is_empty());
        let mut dp = open(test_config("svccomp"));
        dp.apply(&to_web).unwrap();
        for i in &ifaces {
            dp.attach(i).unwrap();
        }
        let pods = [&client_ips, &web_ips, &db_ips];
        resolve_neighbours(
            &pods
                .iter()
                .flat_map(|p| [p.0.as_str(), p.1.as_str()])
                .collect::<Vec<_>>(),
        );
        let mut reader = dp.events().unwrap();

        let before = dp.counters().unwrap();
        let mut conns = Vec::new();
        for vip in [WEB_VIP, WEB_VIP6] {
            let mut c = connect_vip(&client_ns, vip).unwrap_or_else(|| panic!("TCP to {vip}"));
            assert!(exchange(&mut c), "echo through {vip}");
            assert!(udp_round_trip(&client_ns, vip, 3), "UDP through {vip}");
            conns.push(c);
        }
        for vip in [MIXED_VIP, MIXED_VIP6] {
            assert!(connect_vip(&client_ns, vip).is_none(), "TCP to {vip}");
            assert!(!udp_round_trip(&client_ns, vip, 1), "UDP to {vip}");
        }
        assert!(
            delta(&dp, &before, reason::SERVICE_DENY) >= 4,
            "{:?}",
            dp.counters()
        );
        let ev = events_until(&mut reader, |e| e.reason == "service_deny");
        let e = ev
            .iter()
            .find(|e| e.reason == "service_deny")
            .unwrap_or_else(|| panic!("{ev:?}"));
        assert!(
            e.service
                .as_deref()
                .is_some_and(|s| s.starts_with("default/mixed:")),
            "{e:?}"
        );

        // The client may now reach the db pod only: web's connections are revoked.
        let before = dp.counters().unwrap();
        let to_db = compile(&cluster(&client_ips, &web_ips, &db_ips, "db"), None);
        dp.apply(&to_db).unwrap();
        for c in &mut conns {
            assert!(!exchange(c), "revoked connection still works");
        }
        assert!(
            delta(&dp, &before, reason::REVOKED) >= 2,
            "{:?}",
            dp.counters()
        );
        assert!(connect_vip(&client_ns, WEB_VIP).is_none());
        drop(dp);
    });
    stop.store(true, Ordering::Relaxed);
}
