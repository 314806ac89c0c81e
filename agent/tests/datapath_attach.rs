//! The programs attached (TCX) to a real veth whose peer sits in a network namespace: real
//! packets are enforced, links are pinned, a new `Datapath` (agent restart/upgrade) replaces
//! the programs in place, detach removes them.
mod datapath_support;

use std::net::UdpSocket;
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
        Veth { ns, host, pod_ip }
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

    /// Host -> pod datagram and the pod's answer; true when the round trip completes.
    fn round_trip(&self, server: &UdpSocket) -> bool {
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
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

fn tcx_programs(ifname: &str, hook: TcAttachType) -> Vec<u32> {
    let (_, progs) = SchedClassifier::query_tcx(ifname, hook).unwrap();
    progs.iter().map(|p| p.id()).collect()
}

#[test]
fn real_packets_on_a_veth_restart_and_detach() {
    let veth = Veth::new(0);
    let server = veth.server();
    let cfg = test_config("attach");
    let mut dp = open(cfg.clone());
    assert_eq!(
        dp.attach_mode(),
        AttachMode::Tcx,
        "kernel >= 6.6 expected here"
    );
    dp.apply(&plan(&veth.pod_ip, false)).unwrap();
    assert!(veth.round_trip(&server), "no program yet: the pod answers");
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
    assert!(!veth.round_trip(&server));
    assert!(dp.counters().unwrap().reason(reason::POLICY_DENY) > before);
    // A rule for UDP 7777 allows it; the answer leaves through conntrack.
    dp.apply(&plan(&veth.pod_ip, true)).unwrap();
    assert!(veth.round_trip(&server));
    assert!(dp.counters().unwrap().reason(reason::REPLY) > 0);
    // Attaching again is idempotent (one program per hook).
    dp.attach(&veth.host).unwrap();
    assert_eq!(tcx_programs(&veth.host, TcAttachType::Egress).len(), 1);
    let egress = tcx_programs(&veth.host, TcAttachType::Egress);

    // Agent restart: the old handle goes, the pinned links keep enforcing, the new one
    // swaps its programs into the same links.
    drop(dp.dp.take());
    assert!(
        veth.round_trip(&server),
        "still allowed with no agent running"
    );
    let mut dp2 = open(cfg);
    let egress2 = tcx_programs(&veth.host, TcAttachType::Egress);
    assert_eq!(egress2.len(), 1);
    assert_ne!(egress2, egress, "the program was replaced in place");
    dp2.apply(&plan(&veth.pod_ip, false)).unwrap();
    assert!(
        !veth.round_trip(&server),
        "the new agent's Plan is enforced"
    );
    assert_eq!(dp2.attached().unwrap().len(), 1);

    dp2.detach(&veth.host).unwrap();
    assert!(tcx_programs(&veth.host, TcAttachType::Egress).is_empty());
    assert!(veth.round_trip(&server), "detached: no enforcement");
}

#[test]
fn netlink_clsact_fallback() {
    let veth = Veth::new(1);
    let server = veth.server();
    let mut cfg = test_config("netlink");
    cfg.attach_mode = Some(AttachMode::Netlink);
    let mut dp = open(cfg.clone());
    dp.apply(&plan(&veth.pod_ip, false)).unwrap();
    dp.attach(&veth.host).unwrap();
    assert!(!veth.round_trip(&server), "isolated, no rule: dropped");
    dp.apply(&plan(&veth.pod_ip, true)).unwrap();
    assert!(veth.round_trip(&server));
    // Restart: the filters stay in the kernel; attaching again replaces their programs.
    drop(dp.dp.take());
    assert!(
        veth.round_trip(&server),
        "still allowed with no agent running"
    );
    let mut dp2 = open(cfg);
    dp2.attach(&veth.host).unwrap();
    dp2.apply(&plan(&veth.pod_ip, false)).unwrap();
    assert!(
        !veth.round_trip(&server),
        "the new agent's Plan is enforced"
    );
    dp2.detach(&veth.host).unwrap();
    assert!(veth.round_trip(&server), "detached: no enforcement");
}
