//! The programs attached (TCX) to a real veth whose peer sits in a network namespace: real
//! packets are enforced, links are pinned, a new `Datapath` (agent restart/upgrade) replaces
//! the programs in place, detach removes them.
mod datapath_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use aya::programs::{SchedClassifier, TcAttachType};
use datapath_support::*;
use netward::datapath::AttachMode;
use netward::plan::Plan;
use netward_common::*;

const PORT: u16 = 7777;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn must(args: &[&str]) {
    assert!(sh(args), "command failed: {args:?}");
}

/// A network namespace with a veth pair; removed on drop.
struct Veth {
    ns: String,
    host: String,
    pod_ip: String,
}

impl Veth {
    /// `n` tells apart several pairs of one test process.
    fn new(n: u32) -> Veth {
        let id = (std::process::id() % 10_000) * 10 + n;
        let (ns, host, pod) = (format!("nwdp-{id}"), format!("nwh{id}"), format!("nwp{id}"));
        let net = format!("198.18.{}.{}", (id / 64) % 256, (id % 64) * 4);
        let base: Vec<u8> = net.split('.').map(|x| x.parse().unwrap()).collect();
        let host_ip = format!("{}.{}.{}.{}/30", base[0], base[1], base[2], base[3] + 1);
        let pod_ip = format!("{}.{}.{}.{}", base[0], base[1], base[2], base[3] + 2);
        let _ = sh(&["ip", "netns", "del", &ns]);
        let _ = sh(&["ip", "link", "del", &host]);
        // Pods of these tests are routed through the root namespace: the node must forward
        // (a fresh machine starts with forwarding off; left on, as the lab does).
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable ip_forward");
        must(&["ip", "netns", "add", &ns]);
        must(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &pod,
        ]);
        must(&["ip", "link", "set", &pod, "netns", &ns]);
        must(&["ip", "addr", "add", &host_ip, "dev", &host]);
        must(&["ip", "link", "set", &host, "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            &pod,
        ]);
        must(&["ip", "-n", &ns, "link", "set", &pod, "up"]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let gateway = host_ip.trim_end_matches("/30").to_string();
        must(&["ip", "-n", &ns, "route", "add", "default", "via", &gateway]);
        Veth { ns, host, pod_ip }
    }

    /// Run `f` on a thread inside the namespace (sockets it makes stay there).
    fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: setns on this (short-lived) thread only.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join()
        .unwrap()
    }

    /// A TCP echo server (one byte per connection) inside the namespace.
    fn tcp_echo(&self) -> SocketAddr {
        let addr: SocketAddr = format!("{}:{PORT}", self.pod_ip).parse().unwrap();
        let listener = self.in_ns(move || TcpListener::bind(addr).unwrap());
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
        addr
    }

    /// A UDP socket bound inside the namespace (a socket keeps the namespace it was made in).
    fn server(&self) -> UdpSocket {
        let ns = self.ns.clone();
        let addr = format!("{}:{PORT}", self.pod_ip);
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: setns on this (short-lived) thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            UdpSocket::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }

    /// A UDP socket of this pod, to be a client of another pod.
    fn client(&self) -> UdpSocket {
        self.in_ns(|| UdpSocket::bind("0.0.0.0:0").unwrap())
    }

    /// Datagram from `client` (another pod's socket, forwarded by the node) to this pod and
    /// the pod's answer; true when the round trip completes. (The node's own packets always
    /// pass: they would not test policy.)
    fn round_trip(&self, server: &UdpSocket, client: &UdpSocket) -> bool {
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        client
            .send_to(b"ping", format!("{}:{PORT}", self.pod_ip))
            .unwrap();
        let mut buf = [0u8; 16];
        let Ok((_, from)) = server.recv_from(&mut buf) else {
            return false;
        };
        server.send_to(b"pong", from).unwrap();
        client.recv_from(&mut buf).is_ok()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.host]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

fn plan(pod_ip: &str, allow_any: bool) -> Plan {
    let mut p = PlanBuilder::new();
    p.pod(pod_ip, 2, 1, EP_ISOLATED_INGRESS, 1);
    if allow_any {
        p.allow(
            POLICY_PREFIX_FULL,
            DIR_INGRESS,
            1,
            ANY_PEER,
            PROTO_UDP,
            PORT,
            1,
            0,
        );
    }
    p.build()
}

/// Connect, send one byte, read its echo: true when all of it works within a second.
fn tcp_exchange(to: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
        return false;
    };
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 1];
    c.write_all(b"x").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"x"
}

fn tcx_programs(ifname: &str, hook: TcAttachType) -> Vec<u32> {
    let (_, progs) = SchedClassifier::query_tcx(ifname, hook).unwrap();
    progs.iter().map(|p| p.id()).collect()
}

#[test]
fn real_packets_on_a_veth_restart_and_detach() {
    let veth = Veth::new(0);
    let server = veth.server();
    let peer = Veth::new(4);
    let client = peer.client();
    let cfg = test_config("attach");
    let mut dp = open(cfg.clone());
    assert_eq!(
        dp.attach_mode(),
        AttachMode::Tcx,
        "kernel >= 6.6 expected here"
    );
    dp.apply(&plan(&veth.pod_ip, false)).unwrap();
    assert!(
        veth.round_trip(&server, &client),
        "no program yet: the pod answers"
    );
    dp.attach(&veth.host).unwrap();
    let ingress = tcx_programs(&veth.host, TcAttachType::Ingress);
    let egress = tcx_programs(&veth.host, TcAttachType::Egress);
    assert_eq!((ingress.len(), egress.len()), (1, 1));
    assert!(
        dp.config()
            .bpffs_dir
            .join("links")
            .read_dir()
            .unwrap()
            .count()
            == 2
    );

    // Isolated, no rule: the datagram is dropped at the pod's ingress.
    let before = dp.counters().unwrap().reason(reason::POLICY_DENY);
    assert!(!veth.round_trip(&server, &client));
    assert!(dp.counters().unwrap().reason(reason::POLICY_DENY) > before);
    // A rule for UDP 7777 allows it; the answer leaves through conntrack.
    dp.apply(&plan(&veth.pod_ip, true)).unwrap();
    assert!(veth.round_trip(&server, &client));
    assert!(dp.counters().unwrap().reason(reason::REPLY) > 0);
    // Attaching again is idempotent (one program per hook).
    dp.attach(&veth.host).unwrap();
    assert_eq!(tcx_programs(&veth.host, TcAttachType::Egress).len(), 1);
    let egress = tcx_programs(&veth.host, TcAttachType::Egress);

    // Agent restart: the old handle goes, the pinned links keep enforcing, the new one
    // swaps its programs into the same links.
    drop(dp.dp.take());
    assert!(
        veth.round_trip(&server, &client),
        "still allowed with no agent running"
    );
    let mut dp2 = open(cfg);
    let egress2 = tcx_programs(&veth.host, TcAttachType::Egress);
    assert_eq!(egress2.len(), 1);
    assert_ne!(egress2, egress, "the program was replaced in place");
    dp2.apply(&plan(&veth.pod_ip, false)).unwrap();
    assert!(
        !veth.round_trip(&server, &client),
        "the new agent's Plan is enforced"
    );
    assert_eq!(dp2.attached().unwrap().len(), 1);

    dp2.detach(&veth.host).unwrap();
    assert!(tcx_programs(&veth.host, TcAttachType::Egress).is_empty());
    assert!(
        veth.round_trip(&server, &client),
        "detached: no enforcement"
    );
}

#[test]
fn netlink_clsact_fallback() {
    let veth = Veth::new(1);
    let server = veth.server();
    let peer = Veth::new(5);
    let client = peer.client();
    let mut cfg = test_config("netlink");
    cfg.attach_mode = Some(AttachMode::Netlink);
    let mut dp = open(cfg.clone());
    dp.apply(&plan(&veth.pod_ip, false)).unwrap();
    dp.attach(&veth.host).unwrap();
    assert!(
        !veth.round_trip(&server, &client),
        "isolated, no rule: dropped"
    );
    dp.apply(&plan(&veth.pod_ip, true)).unwrap();
    assert!(veth.round_trip(&server, &client));
    // Restart: the filters stay in the kernel; attaching again replaces their programs.
    drop(dp.dp.take());
    assert!(
        veth.round_trip(&server, &client),
        "still allowed with no agent running"
    );
    let mut dp2 = open(cfg);
    dp2.attach(&veth.host).unwrap();
    dp2.apply(&plan(&veth.pod_ip, false)).unwrap();
    assert!(
        !veth.round_trip(&server, &client),
        "the new agent's Plan is enforced"
    );
    dp2.detach(&veth.host).unwrap();
    assert!(
        veth.round_trip(&server, &client),
        "detached: no enforcement"
    );
}

/// NetworkPolicy always allows traffic from the pod's own node (kubelet probes): a TCP
/// connection from the root namespace (the node's stack, `ingress_ifindex` 0) reaches an
/// isolated pod under default deny, while the same connection from another pod, forwarded by
/// the node, is dropped.
#[test]
fn the_node_reaches_an_isolated_pod_other_pods_do_not() {
    let (a, b) = (Veth::new(2), Veth::new(3));
    let echo = a.tcp_echo();
    let from_b = |to| b.in_ns(move || tcp_exchange(to));
    assert!(tcp_exchange(echo), "no program: the node reaches the pod");
    assert!(from_b(echo), "no program: the other pod reaches the pod");

    let mut dp = open(test_config("from-host"));
    dp.apply(&plan(&a.pod_ip, false)).unwrap();
    dp.attach(&a.host).unwrap();
    let before = dp.counters().unwrap();
    assert!(
        tcp_exchange(echo),
        "isolated, default deny: the node still gets through"
    );
    let after = dp.counters().unwrap();
    assert!(after.reason(reason::FROM_HOST) > before.reason(reason::FROM_HOST));
    assert!(after.reason(reason::REPLY) > before.reason(reason::REPLY));
    assert!(
        !from_b(echo),
        "a forwarded connection from another pod is denied"
    );
    assert!(dp.counters().unwrap().reason(reason::POLICY_DENY) > after.reason(reason::POLICY_DENY));
    dp.detach(&a.host).unwrap();
}
