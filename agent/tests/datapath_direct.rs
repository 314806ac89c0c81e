//! Same-node delivery with real packets: a TCP flow between two pods of a node goes from the
//! sender's veth straight to the receiver's, and the node's netfilter never sees it; UDP, and
//! a TCP flow to a Service virtual address (which kube-proxy's DNAT rewrites), still take the
//! node's path; the receiver's policy still decides; the packets arrive as forwarded by a
//! router (TTL 63); turning the option off and on again never breaks an open connection; a
//! veth with an ingress-side qdisc or another TCX program is left out, also when they come
//! after netward attached, and taken back once they are gone.
//!
//! The node's nftables `forward` hook counts what takes the node's path; a rule in the server
//! pod counts what arrives with a TTL other than 63.
mod datapath_support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datapath_support::netns::{
    connect, echo_servers, exchange, in_ns, nft, nft_packets, resolve_neighbours, Node,
};
use datapath_support::*;
use netward::datapath::bench::attach_floor;
use netward::datapath::{Counters, Datapath, DatapathConfig, DirectChange};
use netward::plan::Plan;
use netward_common::*;

const PORT: u16 = 7777;
/// The server listens here too, but its policy does not allow it.
const DENIED_PORT: u16 = 7778;
const VIP: &str = "10.202.0.1";
const TABLE: &str = "netward_test_direct";

/// Client (subject 1, peer class 2) not isolated; server (subject 2) isolated for ingress,
/// allowing the client's class on TCP and UDP `PORT`.
fn plan(client: &[&str; 2], server: &[&str; 2]) -> Plan {
    let mut p = PlanBuilder::new();
    for ip in client {
        p.pod(ip, 2, 1, 0, 1);
    }
    for ip in server {
        p.pod(ip, 3, 2, EP_ISOLATED_INGRESS, 2);
    }
    for proto in [PROTO_TCP, PROTO_UDP] {
        p.allow(POLICY_PREFIX_FULL, DIR_INGRESS, 2, 2, proto, PORT, 1, 0);
    }
    p.build()
}

/// The node's rules: what the forward hook sees of the test's flows, and kube-proxy's DNAT of
/// `VIP:80` to the server.
fn node_rules(server: &str) -> String {
    format!(
        "table inet {TABLE} {{
  counter tcp_fwd {{}}
  counter udp_fwd {{}}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    tcp dport {PORT} counter name tcp_fwd
    tcp sport {PORT} counter name tcp_fwd
    udp dport {PORT} counter name udp_fwd
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} tcp dport 80 dnat ip to {server}:{PORT}
  }}
}}
"
    )
}

/// The server pod's rules: its TCP packets by TTL (hop limit) on arrival.
const HOPS: &str = "table inet netward_test_hops {
  counter hops_ok {}
  counter hops_other {}
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 7777 ip ttl 63 counter name hops_ok
    tcp dport 7777 ip ttl != 63 counter name hops_other
    tcp dport 7777 ip6 hoplimit 63 counter name hops_ok
    tcp dport 7777 ip6 hoplimit != 63 counter name hops_other
  }
}
";

fn udp_round_trip(ns: &str, to: SocketAddr) -> bool {
    let sock = in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s
    });
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut b = [0u8; 16];
    (0..3).any(|_| {
        sock.send(b"ping").unwrap();
        matches!(sock.recv(&mut b), Ok(4) if &b[..4] == b"ping")
    })
}

/// Counter readings: (forward hook TCP, forward hook UDP, datapath counters).
struct Reading {
    tcp_fwd: u64,
    udp_fwd: u64,
    dp: Counters,
}

fn read(node: &str, dp: &Datapath) -> Reading {
    Reading {
        tcp_fwd: nft_packets(node, TABLE, "tcp_fwd"),
        udp_fwd: nft_packets(node, TABLE, "udp_fwd"),
        dp: dp.counters().unwrap(),
    }
}

/// Replace the running datapath by one with `direct_delivery` set as given, over the same
/// pinned maps and links (an agent restarted with the other setting).
fn restart(dp: &mut TestDp, direct_delivery: bool) {
    let cfg = DatapathConfig {
        direct_delivery,
        ..dp.config().clone()
    };
    drop(dp.dp.take());
    dp.dp = Some(Datapath::open_or_create(cfg).unwrap());
}

#[test]
fn same_node_tcp_goes_veth_to_veth_and_the_rest_through_the_node() {
    let mut node = Node::new("direct");
    let (client, server) = (node.pod(), node.pod());
    let c = [node.pods[client].ip.clone(), node.pods[client].ip6.clone()];
    let s = [node.pods[server].ip.clone(), node.pods[server].ip6.clone()];
    node.nft(&node_rules(&s[0]));
    let server_ns = node.pods[server].ns.name.clone();
    nft(&server_ns, HOPS);
    let stop = Arc::new(AtomicBool::new(false));
    echo_servers(&server_ns, PORT, &stop);
    echo_servers(&server_ns, DENIED_PORT, &stop);
    let client_ns = node.pods[client].ns.name.clone();
    let node_ns = node.ns.name.clone();
    let ifaces: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();

    in_ns(&node.ns.name.clone(), move || {
        let mut dp = open(test_config("direct"));
        dp.apply(&plan(&[&c[0], &c[1]], &[&s[0], &s[1]])).unwrap();
        for i in &ifaces {
            dp.attach(i).unwrap();
        }
        // The IPv4 neighbours are not resolved yet: the first packets find none and have the
        // kernel resolve them on the way (`bpf_redirect_neigh`), later ones carry the FIB's
        // addresses. The IPv6 ones are (on a veth this new, a packet waiting for neighbour
        // discovery is sometimes lost, by the node's own path too; see `resolve_neighbours`).
        resolve_neighbours(&[&c[1], &s[1]]);
        let at = |ip: &String, port| SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);

        // TCP between the two pods, both families: veth to veth, never the forward hook.
        let mut kept = None;
        for ip in &s {
            let before = read(&node_ns, &dp);
            let Some(mut conn) = connect(&client_ns, at(ip, PORT)) else {
                panic!("allowed TCP connection to {ip}: {:?}", dp.counters());
            };
            for _ in 0..3 {
                assert!(exchange(&mut conn), "echo to {ip}");
            }
            let after = read(&node_ns, &dp);
            assert_eq!(
                after.tcp_fwd, before.tcp_fwd,
                "TCP to {ip} went through the node's forward hook"
            );
            // SYN, ACK and three bytes one way, SYN-ACK and three echoes the other.
            assert!(
                after.dp.direct_delivered - before.dp.direct_delivered >= 8,
                "{:?}",
                after.dp
            );
            assert_eq!(after.dp.direct_fallback, 0);
            kept.get_or_insert(conn);
        }
        let mut direct_conn = kept.unwrap();
        // Let the last TCP packets (delayed ACKs, the IPv6 connection's close) pass before the
        // steps that count what is delivered directly.
        std::thread::sleep(Duration::from_millis(300));

        // UDP takes the node's path.
        let before = read(&node_ns, &dp);
        assert!(udp_round_trip(&client_ns, at(&s[0], PORT)), "UDP echo");
        let after = read(&node_ns, &dp);
        assert!(after.udp_fwd > before.udp_fwd);
        assert_eq!(after.dp.direct_delivered, before.dp.direct_delivered);

        // The receiver's policy still decides: a port it does not allow stays closed.
        let before = read(&node_ns, &dp);
        assert!(connect(&client_ns, at(&s[0], DENIED_PORT)).is_none());
        let after = read(&node_ns, &dp);
        assert!(
            after.dp.reason_dir(DIR_INGRESS, reason::POLICY_DENY)
                > before.dp.reason_dir(DIR_INGRESS, reason::POLICY_DENY)
        );

        // A SYN from an address the node does not route back through the sender's veth
        // (another pod's, or none) is never delivered directly: it takes the node's path,
        // where rp_filter and the routes decide (here: no route back, no answer).
        let spoofed = "10.200.0.100";
        let route = format!("{}/32", s[0]);
        for cmd in [
            vec!["addr", "add", "10.200.0.100/32", "dev", "eth0"],
            vec!["route", "add", &route, "via", "10.200.0.1", "src", spoofed],
        ] {
            let mut args = vec!["ip", "-n", &client_ns];
            args.extend(cmd);
            datapath_support::netns::must(&args);
        }
        let before = read(&node_ns, &dp);
        assert!(connect(&client_ns, at(&s[0], PORT)).is_none());
        let after = read(&node_ns, &dp);
        assert!(after.tcp_fwd > before.tcp_fwd);
        assert_eq!(after.dp.direct_delivered, before.dp.direct_delivered);
        datapath_support::netns::must(&["ip", "-n", &client_ns, "route", "del", &route]);

        // A Service's flow goes through the node: kube-proxy rewrites it there, and its
        // replies must be rewritten back.
        let before = read(&node_ns, &dp);
        let mut svc = connect(&client_ns, at(&VIP.to_string(), 80)).expect("TCP to the VIP");
        assert!(exchange(&mut svc), "echo through the VIP");
        let after = read(&node_ns, &dp);
        assert!(after.tcp_fwd > before.tcp_fwd);

        // Forwarded as a router forwards: everything arrived with TTL (hop limit) 63, and
        // its checksum held (the connections worked).
        assert_eq!(
            nft_packets(&server_ns, "netward_test_hops", "hops_other"),
            0
        );
        assert!(nft_packets(&server_ns, "netward_test_hops", "hops_ok") > 0);

        // Turned off: the direct connection goes on through the node (netfilter picks it up
        // mid-stream), and so does a new one.
        restart(&mut dp, false);
        let before = read(&node_ns, &dp);
        assert!(
            exchange(&mut direct_conn),
            "direct connection after turning it off"
        );
        let mut node_conn = connect(&client_ns, at(&s[0], PORT)).expect("TCP, option off");
        assert!(exchange(&mut node_conn));
        let after = read(&node_ns, &dp);
        assert!(after.tcp_fwd > before.tcp_fwd);
        assert_eq!(after.dp.direct_delivered, before.dp.direct_delivered);

        // On again: the connection opened through the node stays there (netfilter has it),
        // the one opened directly is delivered directly again.
        restart(&mut dp, true);
        let before = read(&node_ns, &dp);
        assert!(
            exchange(&mut node_conn),
            "node-path connection after turning it on"
        );
        let mid = read(&node_ns, &dp);
        assert!(mid.tcp_fwd > before.tcp_fwd);
        assert_eq!(mid.dp.direct_delivered, before.dp.direct_delivered);
        assert!(
            exchange(&mut direct_conn),
            "direct connection after turning it on"
        );
        let after = read(&node_ns, &dp);
        assert_eq!(after.tcp_fwd, mid.tcp_fwd);
        assert!(after.dp.direct_delivered > mid.dp.direct_delivered);

        // Another component's tc setup on a pod veth, added after netward attached, is seen at
        // the next recheck (the agent's rescan, every 2 s): the veth loses its mark, its
        // flows take the node's path from their next packet on, and get it back once the
        // hook is netward's alone again.
        let client_if = ifaces[0].clone();
        let new_conn = |dp: &Datapath, what: &str| {
            let before = read(&node_ns, dp);
            let mut conn = connect(&client_ns, at(&s[0], PORT)).expect(what);
            assert!(exchange(&mut conn), "{what}");
            (before, read(&node_ns, dp))
        };
        let off = |changes: Vec<DirectChange>, why: &str| {
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert_eq!(changes[0].ifname, client_if);
            assert!(!changes[0].direct);
            assert!(
                changes[0].why.as_deref().unwrap().contains(why),
                "{changes:?}"
            );
        };
        let on = |changes: Vec<DirectChange>| {
            assert_eq!(
                changes,
                vec![DirectChange {
                    ifname: client_if.clone(),
                    direct: true,
                    why: None
                }]
            );
        };
        assert_eq!(dp.recheck_direct().unwrap(), vec![], "nothing changed yet");
        // An ingress-side qdisc: its filters (the bandwidth plugin's shaping, for one) run
        // after TCX, and a redirect would skip them.
        datapath_support::netns::must(&["tc", "qdisc", "add", "dev", &client_if, "clsact"]);
        off(dp.recheck_direct().unwrap(), "qdisc");
        let before = read(&node_ns, &dp);
        assert!(
            exchange(&mut direct_conn),
            "direct connection, clsact qdisc"
        );
        let after = read(&node_ns, &dp);
        assert!(after.tcp_fwd > before.tcp_fwd);
        assert_eq!(after.dp.direct_delivered, before.dp.direct_delivered);
        assert!(after.dp.direct_fallback > before.dp.direct_fallback);
        let (before, after) = new_conn(&dp, "TCP, clsact qdisc");
        assert!(after.tcp_fwd > before.tcp_fwd);
        assert_eq!(after.dp.direct_delivered, before.dp.direct_delivered);
        datapath_support::netns::must(&["tc", "qdisc", "del", "dev", &client_if, "clsact"]);
        on(dp.recheck_direct().unwrap());
        let (before, after) = new_conn(&dp, "TCP, qdisc gone");
        assert_eq!(after.tcp_fwd, before.tcp_fwd);
        assert!(after.dp.direct_delivered > before.dp.direct_delivered);
        // Another TCX program on the hook (here netward's do-nothing one, first): it must see
        // every packet, and one after ours would be skipped by the redirect.
        let floor_pins = PathBuf::from(format!(
            "/sys/fs/bpf/netward-test-direct-floor-{}",
            std::process::id()
        ));
        let other = attach_floor(&[&client_if], floor_pins).unwrap();
        off(dp.recheck_direct().unwrap(), "another program");
        let (before, after) = new_conn(&dp, "TCP, another TCX program");
        assert!(after.tcp_fwd > before.tcp_fwd);
        assert_eq!(after.dp.direct_delivered, before.dp.direct_delivered);
        drop(other);
        on(dp.recheck_direct().unwrap());
        let (before, after) = new_conn(&dp, "TCP, the other program gone");
        assert_eq!(after.tcp_fwd, before.tcp_fwd);
        assert!(after.dp.direct_delivered > before.dp.direct_delivered);
    });
    stop.store(true, Ordering::Relaxed);
}
