//! BPF_PROG_TEST_RUN tests of the real tc programs on crafted packets: every parser branch
//! and verdict path. Each test loads its own datapath (own bpffs dir) and installs a small
//! Plan written directly as map entries.
mod datapath_support;

use datapath_support::*;
use netward::datapath::{Datapath, DatapathConfig, Origin, Verdict};
use netward::model::Direction::{Egress, Ingress};
use netward::plan::{Plan, PolicyRef};
use netward_common::*;

// Local pods.
const A4: &str = "10.0.0.1"; // isolated both ways, subject 1
const A6: &str = "fd00::1";
const B4: &str = "10.0.0.2"; // local, not isolated
                             // Peers.
const C4: &str = "10.0.1.7"; // class 3
const C6: &str = "fd00:1::7";
const D4: &str = "10.0.2.7"; // class 4: any TCP port
const E4: &str = "10.0.3.7"; // class 5: any protocol
const W4: &str = "192.0.2.1"; // world, class 1
const U4: &str = "10.9.9.9"; // unknown local address (no endpoint)

fn fixture() -> Plan {
    let mut p = PlanBuilder::new();
    p.pod(A4, 2, 1, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS, 1)
        .pod(A6, 2, 1, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS, 1)
        .pod(B4, 2, 0, 0, 2)
        .peer("10.0.1.0/24", 3)
        .peer("fd00:1::/64", 3)
        .peer("10.0.2.0/24", 4)
        .peer("10.0.3.0/24", 5)
        .allow(POLICY_PREFIX_FULL, DIR_INGRESS, 1, 3, PROTO_TCP, 80, 1, 0)
        .allow(POLICY_PREFIX_FULL, DIR_INGRESS, 1, 3, PROTO_UDP, 53, 1, 1)
        .allow(
            POLICY_PREFIX_FULL,
            DIR_INGRESS,
            1,
            3,
            PROTO_SCTP,
            9000,
            1,
            2,
        )
        // 8000-8015: a 12-bit block.
        .allow(
            POLICY_PREFIX_ANY_PORT + 12,
            DIR_INGRESS,
            1,
            3,
            PROTO_TCP,
            8000,
            2,
            0,
        )
        .allow(
            POLICY_PREFIX_FULL,
            DIR_INGRESS,
            1,
            ANY_PEER,
            PROTO_TCP,
            443,
            3,
            0,
        )
        .allow(
            POLICY_PREFIX_ANY_PORT,
            DIR_INGRESS,
            1,
            4,
            PROTO_TCP,
            0,
            4,
            0,
        )
        .allow(POLICY_PREFIX_ANY_PROTO, DIR_INGRESS, 1, 5, 0, 0, 5, 0)
        .allow(POLICY_PREFIX_FULL, DIR_EGRESS, 1, 3, PROTO_TCP, 5432, 6, 0);
    let mut plan = p.build();
    plan.policies = (1..=6)
        .map(|i| PolicyRef {
            namespace: "default".into(),
            name: format!("p{i}"),
        })
        .collect();
    plan
}

fn setup(tag: &str) -> TestDp {
    setup_with(test_config(tag))
}

fn setup_with(cfg: DatapathConfig) -> TestDp {
    let mut dp = open(cfg);
    dp.apply(&fixture()).unwrap();
    dp
}

fn check(dp: &Datapath, dir: netward::model::Direction, f: &[u8], pass: bool, reason: &str) {
    let got = run(dp, dir, f);
    assert_eq!(got, (pass, reason), "packet {f:02x?} at {dir:?}");
}

#[test]
fn ports_exact_range_any_port_any_peer() {
    let dp = setup("ports");
    // Exact port, per protocol.
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(1000, 80)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(1001, 81)),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, udp(1000, 53)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, udp(1000, 80)),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Ingress,
        &frame(
            C4,
            A4,
            L4::Sctp {
                sport: 1000,
                dport: 9000,
            },
        ),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(
            C4,
            A4,
            L4::Sctp {
                sport: 1000,
                dport: 80,
            },
        ),
        false,
        "policy_deny",
    );
    // Range 8000-8015.
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(1002, 8000)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(1002, 8015)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(1002, 8016)),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(1002, 7999)),
        false,
        "policy_deny",
    );
    // Any port of TCP for class 4, not UDP.
    check(
        &dp,
        Ingress,
        &frame(D4, A4, tcp(1003, 1)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(D4, A4, tcp(1003, 65535)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(D4, A4, udp(1, 53)),
        false,
        "policy_deny",
    );
    // Any peer on 443, also from the world.
    check(
        &dp,
        Ingress,
        &frame(W4, A4, tcp(1004, 443)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(W4, A4, tcp(1004, 80)),
        false,
        "policy_deny",
    );
    // Egress rules are per direction.
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp(1005, 5432)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp(1005, 80)),
        false,
        "policy_deny",
    );
    // Rules are per subject: an ingress rule does not open egress.
    check(
        &dp,
        Egress,
        &frame(A4, D4, tcp(1006, 80)),
        false,
        "policy_deny",
    );
}

#[test]
fn ipv6_and_extension_headers() {
    let dp = setup("v6");
    check(
        &dp,
        Ingress,
        &frame(C6, A6, tcp(1000, 80)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C6, A6, tcp(1000, 81)),
        false,
        "policy_deny",
    );
    // Hop-by-hop + destination options + routing: ports found behind them.
    let f = with_ipv6_ext(&frame(C6, A6, tcp(1001, 80)), &[(0, 8), (60, 16), (43, 8)]);
    check(&dp, Ingress, &f, true, "policy_allow");
    let f = with_ipv6_ext(&frame(C6, A6, tcp(1001, 81)), &[(0, 8), (60, 16)]);
    check(&dp, Ingress, &f, false, "policy_deny");
    // Authentication header ((len + 2) * 4 bytes).
    let f = with_ipv6_ext(&frame(C6, A6, tcp(1002, 80)), &[(51, 16)]);
    check(&dp, Ingress, &f, true, "policy_allow");
    // A chain longer than the bounded walk is malformed, never passed as something else.
    let chain = [(60u8, 8usize); 9];
    let f = with_ipv6_ext(&frame(C6, A6, tcp(1003, 80)), &chain);
    check(&dp, Ingress, &f, false, "malformed");
    // Extension header cut short.
    let f = with_ipv6_ext(&frame(C6, A6, tcp(1004, 80)), &[(60, 16)]);
    check(&dp, Ingress, &f[..IP_OFF + 40 + 4], false, "malformed");
}

#[test]
fn vlan_tags_and_ipv4_options() {
    let dp = setup("vlan");
    let f = with_vlans(&frame(C4, A4, tcp(1000, 80)), &[0x8100]);
    check(&dp, Ingress, &f, true, "policy_allow");
    let f = with_vlans(&frame(C4, A4, tcp(1001, 81)), &[0x8100]);
    check(&dp, Ingress, &f, false, "policy_deny");
    let f = with_vlans(&frame(C4, A4, tcp(1002, 80)), &[0x88a8, 0x8100]);
    check(&dp, Ingress, &f, true, "policy_allow");
    let f = with_vlans(&frame(C4, A4, tcp(1003, 80)), &[0x88a8, 0x8100, 0x8100]);
    check(&dp, Ingress, &f, false, "malformed");
    // IPv4 options: the ports are after IHL*4 bytes.
    let f = with_ipv4_options(&frame(C4, A4, tcp(1004, 80)), 8);
    check(&dp, Ingress, &f, true, "policy_allow");
    let f = with_ipv4_options(&frame(C4, A4, tcp(1005, 81)), 40);
    check(&dp, Ingress, &f, false, "policy_deny");
    // If options were ignored, these bytes would read as port 80 and pass.
    let mut f = with_ipv4_options(&frame(C4, A4, tcp(1006, 81)), 4);
    f[IP_OFF + 20..IP_OFF + 24].copy_from_slice(&[0x03, 0xe8, 0x00, 0x50]);
    check(&dp, Ingress, &f, false, "policy_deny");
}

#[test]
fn malformed_and_truncated() {
    let dp = setup("malformed");
    let good = frame(C4, A4, tcp(1000, 80));
    // BPF_PROG_TEST_RUN refuses untagged frames whose IPv4 header is short, so these
    // frames carry an 802.1Q tag (the parser treats tagged and untagged frames alike).
    let tagged = |f: &[u8]| with_vlans(f, &[0x8100]);
    // IPv4 header cut: dropped whatever the pod's isolation.
    check(
        &dp,
        Ingress,
        &tagged(&good[..IP_OFF + 12]),
        false,
        "malformed",
    );
    check(
        &dp,
        Ingress,
        &tagged(&frame(C4, B4, tcp(1000, 80))[..IP_OFF + 12]),
        false,
        "malformed",
    );
    // IHL below 5, wrong version, total length below IHL.
    let mut f = good.clone();
    f[IP_OFF] = 0x44;
    check(&dp, Ingress, &tagged(&f), false, "malformed");
    let mut f = good.clone();
    f[IP_OFF] = 0x65;
    check(&dp, Ingress, &tagged(&f), false, "malformed");
    let mut f = good.clone();
    f[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&10u16.to_be_bytes());
    check(&dp, Ingress, &tagged(&f), false, "malformed");
    // The same untagged, as the common-packet parser sees it, both directions.
    check(&dp, Ingress, &f, false, "malformed");
    let mut f = frame(A4, C4, tcp(80, 1000));
    f[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&10u16.to_be_bytes());
    check(&dp, Egress, &f, false, "malformed");
    // Options announced but missing.
    let mut f = good[..IP_OFF + 20].to_vec();
    f[IP_OFF] = 0x4f;
    check(&dp, Ingress, &tagged(&f), false, "malformed");
    // Ethertype IPv4 and one byte of header.
    check(&dp, Ingress, &tagged(&good[..15]), false, "malformed");
    // A VLAN tag cut short.
    check(&dp, Ingress, &tagged(&good[..12])[..15], false, "malformed");
    // TCP header truncated: dropped towards an isolated pod, passed to a non-isolated one.
    check(&dp, Ingress, &good[..IP_OFF + 20 + 10], false, "malformed");
    check(
        &dp,
        Ingress,
        &frame(C4, B4, tcp(1000, 80))[..IP_OFF + 20 + 10],
        true,
        "not_isolated",
    );
    // UDP / ICMP truncated.
    check(
        &dp,
        Ingress,
        &frame(C4, A4, udp(1, 53))[..IP_OFF + 24],
        false,
        "malformed",
    );
    check(
        &dp,
        Ingress,
        &frame(E4, A4, L4::EchoRequest { id: 1 })[..IP_OFF + 24],
        false,
        "malformed",
    );
}

#[test]
fn fragments_follow_their_first_fragment() {
    let dp = setup("frags");
    // v4: first fragment to an allowed port records the ports; later fragments pass.
    let first = ipv4_frag(&frame(C4, A4, udp(5000, 53)), 77, 0, true);
    check(&dp, Ingress, &first, true, "policy_allow");
    let later = ipv4_frag(&frame(C4, A4, L4::Raw { proto: PROTO_UDP }), 77, 3, false);
    check(&dp, Ingress, &later, true, "established");
    // A later fragment whose first fragment was denied or never seen: dropped (isolated).
    let first = ipv4_frag(&frame(C4, A4, udp(5001, 54)), 78, 0, true);
    check(&dp, Ingress, &first, false, "policy_deny");
    let later = ipv4_frag(&frame(C4, A4, L4::Raw { proto: PROTO_UDP }), 78, 3, false);
    check(&dp, Ingress, &later, false, "fragment_untracked");
    // Towards a pod that is not isolated: passes.
    let later = ipv4_frag(&frame(C4, B4, L4::Raw { proto: PROTO_UDP }), 79, 3, false);
    check(&dp, Ingress, &later, true, "fragment");
    // v6: the same through the fragment header.
    let first = ipv6_frag(&frame(C6, A6, tcp(6000, 80)), 0xdead, 0, true);
    check(&dp, Ingress, &first, true, "policy_allow");
    let later = ipv6_frag(&frame(C6, A6, tcp(6000, 80)), 0xdead, 2, false);
    check(&dp, Ingress, &later, true, "established");
    let later = ipv6_frag(&frame(C6, A6, tcp(6000, 80)), 0xbeef, 2, false);
    check(&dp, Ingress, &later, false, "fragment_untracked");
    // An atomic fragment (offset 0, no M flag) is a whole packet.
    let whole = ipv6_frag(&frame(C6, A6, tcp(6001, 81)), 0xf00, 0, false);
    check(&dp, Ingress, &whole, false, "policy_deny");
}

#[test]
fn icmp_arp_and_other_protocols() {
    let dp = setup("icmp");
    // Echo needs a rule without ports: class 5 has one (any protocol), class 3 only ports.
    check(
        &dp,
        Ingress,
        &frame(E4, A4, L4::EchoRequest { id: 9 }),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, L4::EchoRequest { id: 9 }),
        false,
        "policy_deny",
    );
    // A TCP any-port rule does not allow ICMP (class 4).
    check(
        &dp,
        Ingress,
        &frame(D4, A4, L4::EchoRequest { id: 9 }),
        false,
        "policy_deny",
    );
    // The echo reply of an allowed request passes the egress of an isolated pod.
    check(
        &dp,
        Egress,
        &frame(A4, E4, L4::EchoReply { id: 9 }),
        true,
        "reply",
    );
    check(
        &dp,
        Egress,
        &frame(A4, E4, L4::EchoReply { id: 10 }),
        false,
        "policy_deny",
    );
    // ICMPv6 echo is policy-checked; neighbour discovery passes like ARP.
    check(
        &dp,
        Ingress,
        &frame(C6, A6, L4::EchoRequest { id: 1 }),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Ingress,
        &icmpv6(C6, A6, 135),
        true,
        "neighbor_discovery",
    );
    check(
        &dp,
        Ingress,
        &icmpv6(C6, A6, 136),
        true,
        "neighbor_discovery",
    );
    // Other protocols (GRE) are policy-checked with port 0.
    check(
        &dp,
        Ingress,
        &frame(E4, A4, L4::Raw { proto: 47 }),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, L4::Raw { proto: 47 }),
        false,
        "policy_deny",
    );
    // ARP passes even into an isolated pod.
    let mut arp = frame(C4, A4, tcp(1, 1));
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    check(&dp, Ingress, &arp, true, "non_ip");
}

#[test]
fn endpoints_unknown_and_not_isolated() {
    // Fail open.
    let dp = setup("unknown-open");
    check(
        &dp,
        Ingress,
        &frame(C4, U4, tcp(1, 80)),
        true,
        "unknown_endpoint_open",
    );
    check(
        &dp,
        Egress,
        &frame(U4, C4, tcp(1, 80)),
        true,
        "unknown_endpoint_open",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, B4, tcp(1, 9999)),
        true,
        "not_isolated",
    );
    check(&dp, Egress, &frame(B4, W4, udp(1, 9)), true, "not_isolated");
    drop(dp);
    // Fail closed.
    let mut cfg = test_config("unknown-closed");
    cfg.fail_closed_unknown = true;
    let dp = setup_with(cfg);
    check(
        &dp,
        Ingress,
        &frame(C4, U4, tcp(1, 80)),
        false,
        "unknown_endpoint",
    );
    check(
        &dp,
        Egress,
        &frame(U4, C4, tcp(1, 80)),
        false,
        "unknown_endpoint",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, B4, tcp(1, 9999)),
        true,
        "not_isolated",
    );
}

#[test]
fn nothing_passes_before_the_first_plan() {
    let dp = open(test_config("not-ready"));
    check(&dp, Ingress, &frame(C4, B4, tcp(1, 80)), false, "not_ready");
    let mut arp = frame(C4, A4, tcp(1, 1));
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    check(&dp, Ingress, &arp, true, "non_ip");
}

#[test]
fn conntrack_replies_established_and_related() {
    let dp = setup("ct");
    // Ingress flow C -> A:80 allowed; its replies leave A although A's egress has no rule.
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(40000, 80)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp_ack(40000, 80)),
        true,
        "established",
    );
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp_ack(80, 40000)),
        true,
        "reply",
    );
    // Not a reply: other port.
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp_ack(80, 40001)),
        false,
        "policy_deny",
    );
    // IPv6 addresses with the same leading bytes (a00:1:: is 10.0.0.1 then zeros) are another
    // flow: the key's family keeps them apart (unknown endpoint, failing open here).
    check(
        &dp,
        Ingress,
        &frame("a00:107::", "a00:1::", tcp_ack(40000, 80)),
        true,
        "unknown_endpoint_open",
    );
    // Egress flow A -> C:5432; replies enter A.
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp(40002, 5432)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp_ack(5432, 40002)),
        true,
        "reply",
    );
    // ICMP errors about a tracked flow pass; about an unknown flow they are plain ICMP.
    let offending = frame(A4, C4, tcp(40002, 5432));
    check(
        &dp,
        Ingress,
        &icmp_error(W4, A4, &offending),
        true,
        "related",
    );
    let unknown = frame(A4, C4, tcp(40003, 5432));
    check(
        &dp,
        Ingress,
        &icmp_error(W4, A4, &unknown),
        false,
        "policy_deny",
    );
    // An error the pod sends about a packet it received on a tracked flow.
    let received = frame(C4, A4, tcp(40000, 80));
    check(&dp, Egress, &icmp_error(A4, C4, &received), true, "related");
    // Same-node pair: B (not isolated) -> A:80 checked at both veths.
    check(
        &dp,
        Egress,
        &frame(B4, A4, tcp(40004, 80)),
        true,
        "not_isolated",
    );
    check(
        &dp,
        Ingress,
        &frame(B4, A4, tcp(40004, 80)),
        false,
        "policy_deny",
    );
}

/// A TCP frame with FIN|ACK (IPv4 without options): reads conntrack unless this CPU's flow
/// cache has the flow closing (after a first FIN).
fn tcp_fin(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = frame(src, dst, tcp_ack(sport, dport));
    f[14 + 20 + 13] |= 0x01; // TCP flags of an IPv4 frame without options
    f
}

/// The verdict flags of each side of the only conntrack entry: (lo, hi, shared flags).
fn only_entry_sides(cfg: &DatapathConfig) -> (u16, u16, u16) {
    let e = conntrack_entries(cfg);
    assert_eq!(e.len(), 1, "{e:?}");
    let v = e[0].1;
    (v.sides[0].flags, v.sides[1].flags, v.flags)
}

/// Two pods of the node: ONE conntrack entry for their flow, each veth keeping its own pod's
/// verdict in it (the sender's program writes the entry, the receiver's adds its side). A
/// policy change revokes one side and leaves the other; a SYN that reopens a closed flow's
/// tuple clears the other side, which the receiver's veth then decides again.
#[test]
fn a_same_node_flow_is_one_entry_with_each_pods_verdict() {
    // B (not isolated) -> A:443, which A's ingress allows from any peer (policy 3).
    let cfg = test_config("pairs");
    let mut dp = setup_with(cfg.clone());
    let syn = frame(B4, A4, tcp(40500, 443));
    check(&dp, Egress, &syn, true, "not_isolated");
    // B's veth wrote the entry: its side only. A (10.0.0.1) is the lower end, side 0.
    let e = conntrack_entries(&cfg);
    assert_eq!(e.len(), 1);
    let (k, v) = e[0];
    assert_eq!((k.lo[..4].to_vec(), k.lo_port), (vec![10, 0, 0, 1], 443));
    assert_eq!((k.hi[..4].to_vec(), k.hi_port), (vec![10, 0, 0, 2], 40500));
    assert_eq!(
        (v.sides[0].flags, v.sides[1].flags),
        (0, CT_TRACKED | CT_ORIGIN_EGRESS)
    );
    // A's veth: the entry exists, but not A's verdict: A's policy decides.
    check(&dp, Ingress, &syn, true, "policy_allow");
    let e = conntrack_entries(&cfg);
    assert_eq!(e.len(), 1, "one entry for the flow");
    let v = e[0].1;
    assert_eq!(v.sides[0].flags, CT_TRACKED);
    assert_eq!((v.sides[0].policy, v.sides[0].rule), (3, 0));
    assert_eq!(v.sides[1].flags, CT_TRACKED | CT_ORIGIN_EGRESS);
    // A's replies: its egress allows nothing to B:40500, its side of the entry passes them
    // (the first FIN reads conntrack), and B's side passes them into B (here through the
    // cache entry that read filled for B from B's side).
    check(&dp, Egress, &tcp_fin(A4, B4, 443, 40500), true, "reply");
    check(&dp, Ingress, &tcp_fin(A4, B4, 443, 40500), true, "reply");
    assert_eq!(only_entry_sides(&cfg).2, CT_CLOSING);

    // The rule for 443 goes: A's side is revoked at A's veth; B's side stays B's to judge.
    let mut without = fixture();
    without
        .policy
        .retain(|(k, _)| !(k.port_number() == 443 && k.dir == DIR_INGRESS));
    dp.apply(&without).unwrap();
    let ack = frame(B4, A4, tcp_ack(40500, 443));
    check(&dp, Ingress, &ack, false, "revoked");
    assert_eq!(only_entry_sides(&cfg).0, 0, "A's verdict cleared");
    check(&dp, Egress, &ack, true, "established");
    assert_eq!(
        only_entry_sides(&cfg).1,
        CT_TRACKED | CT_ORIGIN_EGRESS,
        "B's verdict kept"
    );
    // A's side is gone: its packets are new flows for its policy.
    check(&dp, Ingress, &ack, false, "policy_deny");
    check(
        &dp,
        Egress,
        &tcp_fin(A4, B4, 443, 40500),
        false,
        "policy_deny",
    );

    // Rule back; B reopens the tuple (a SYN at B's veth, then at A's): both sides again.
    dp.apply(&fixture()).unwrap();
    check(&dp, Egress, &syn, true, "not_isolated");
    check(&dp, Ingress, &syn, true, "policy_allow");
    assert_eq!(
        only_entry_sides(&cfg),
        (CT_TRACKED, CT_TRACKED | CT_ORIGIN_EGRESS, 0)
    );
    // It closes, and B opens the tuple once more while the entry is closing.
    check(
        &dp,
        Egress,
        &tcp_fin(B4, A4, 40500, 443),
        true,
        "established",
    );
    assert_eq!(only_entry_sides(&cfg).2, CT_CLOSING);
    check(&dp, Egress, &syn, true, "not_isolated");
    // The new flow's entry: B's side, not closing; A's side was the old flow's, cleared.
    assert_eq!(
        only_entry_sides(&cfg),
        (0, CT_TRACKED | CT_ORIGIN_EGRESS, 0)
    );
    check(
        &dp,
        Egress,
        &tcp_fin(A4, B4, 443, 40500),
        false,
        "policy_deny",
    );
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Egress, &tcp_fin(A4, B4, 443, 40500), true, "reply");
}

/// Two pods of the node: the veth whose program reads the flow's entry also fills the other
/// pod's flow cache entry on this CPU, so after the first FIN marked the flow closing, the
/// other FINs at both veths need no conntrack read.
#[test]
fn a_same_node_pairs_later_fins_are_answered_by_the_flow_cache() {
    pin_to_this_cpu();
    // B (not isolated) -> A:443; A's egress allows nothing to B:40600.
    let cfg = test_config("pairfins");
    let dp = setup_with(cfg.clone());
    let syn = frame(B4, A4, tcp(40600, 443));
    check(&dp, Egress, &syn, true, "not_isolated");
    check(&dp, Ingress, &syn, true, "policy_allow");
    let a_fin = tcp_fin(A4, B4, 443, 40600);
    let b_fin = tcp_fin(B4, A4, 40600, 443);
    // A closes first: its FIN reads conntrack at A's veth and marks the flow closing.
    let hits = dp.counters().unwrap().flow_cache_hits;
    check(&dp, Egress, &a_fin, true, "reply");
    assert_eq!(dp.counters().unwrap().flow_cache_hits, hits);
    assert_eq!(only_entry_sides(&cfg).2, CT_CLOSING);
    // With the entry gone behind the programs' back, only the cache can pass the rest: A's
    // FIN into B, and B's FIN out of B and into A.
    forget_conntrack(&cfg);
    check(&dp, Ingress, &a_fin, true, "reply");
    check(&dp, Egress, &b_fin, true, "established");
    check(&dp, Ingress, &b_fin, true, "established");
    assert_eq!(dp.counters().unwrap().flow_cache_hits, hits + 3);
}

#[test]
fn generation_change_rechecks_established_flows() {
    let mut dp = setup("gen");
    let syn = frame(C4, A4, tcp(41000, 80));
    let ack = frame(C4, A4, tcp_ack(41000, 80));
    let reply = frame(A4, C4, tcp_ack(80, 41000));
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Ingress, &ack, true, "established");
    // Same rules, new generation: the flow is re-checked and stays.
    dp.apply(&fixture()).unwrap();
    check(&dp, Ingress, &ack, true, "established");
    // The rule goes: the established flow stops, in both directions, and stays stopped.
    let mut without = fixture();
    without
        .policy
        .retain(|(k, _)| !(k.proto == PROTO_TCP && k.port_number() == 80 && k.dir == DIR_INGRESS));
    dp.apply(&without).unwrap();
    check(&dp, Egress, &reply, false, "revoked");
    check(&dp, Ingress, &ack, false, "policy_deny");
    // Rule back: a new connection is allowed again.
    dp.apply(&fixture()).unwrap();
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Ingress, &ack, true, "established");
    dp.apply(&without).unwrap();
    check(&dp, Ingress, &ack, false, "revoked");
}

#[test]
fn events_carry_attribution_and_are_rate_limited() {
    let mut cfg = test_config("events");
    cfg.events_per_sec = 1;
    cfg.events_burst = 3;
    let dp = setup_with(cfg);
    let mut reader = dp.events().unwrap();
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42000, 8007)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42001, 81)),
        false,
        "policy_deny",
    );
    let ev = reader.poll(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0].verdict, Verdict::Allow);
    assert_eq!(ev[0].policy.as_ref().map(|p| p.name.as_str()), Some("p2"));
    assert_eq!(ev[0].rule, Some(0));
    assert_eq!(ev[0].dport, 8007);
    assert_eq!(ev[0].src.to_string(), C4);
    assert_eq!(ev[1].verdict, Verdict::Drop);
    assert_eq!(ev[1].reason, "policy_deny");
    assert_eq!(ev[1].direction, Ingress);
    // The burst is 3: a flood yields one more event, the rest is counted as suppressed.
    for p in 0..50 {
        run(&dp, Ingress, &frame(C4, A4, tcp(43000 + p, 81)));
    }
    let ev = reader.poll(std::time::Duration::from_millis(200)).unwrap();
    assert!(ev.len() <= 2, "{}", ev.len());
    let c = dp.counters().unwrap();
    assert!(c.events_rate_limited >= 48, "{c:?}");
    assert_eq!(c.denied, c.reason(reason::POLICY_DENY));
}

/// Run one packet with a chosen origin; (passed, reason) from the counters' delta.
fn run_from(
    dp: &Datapath,
    dir: netward::model::Direction,
    f: &[u8],
    origin: Origin,
) -> (bool, &'static str) {
    let before = dp.counters().unwrap();
    let pass = dp.test_run_from(dir, f, 1, origin).unwrap().pass;
    let after = dp.counters().unwrap();
    let r = (0..reason::COUNT)
        .find(|&r| after.reason(r) > before.reason(r))
        .map(reason::name)
        .unwrap_or("none");
    (pass, r)
}

#[test]
fn traffic_from_the_node_is_allowed() {
    let mut dp = setup("from-host");
    // The node (any address: its own, a hostNetwork pod's) probes A:8080, which no rule allows.
    let probe = frame(W4, A4, tcp(42000, 8080));
    let ack = frame(W4, A4, tcp_ack(42000, 8080));
    let answer = frame(A4, W4, tcp_ack(8080, 42000));
    // Forwarded from a device, the same packet is denied: only local origin is exempt.
    check(&dp, Ingress, &probe, false, "policy_deny");
    assert_eq!(
        run_from(&dp, Ingress, &probe, Origin::Host),
        (true, "from_host")
    );
    assert_eq!(
        run_from(&dp, Ingress, &ack, Origin::Host),
        (true, "established")
    );
    // The pod's answer leaves through conntrack although A's egress allows nothing to W.
    check(&dp, Egress, &answer, true, "reply");
    // A new Plan does not revoke the node's flow (it is not the Plan's to decide).
    dp.apply(&fixture()).unwrap();
    check(&dp, Egress, &answer, true, "reply");
    assert_eq!(
        run_from(&dp, Ingress, &ack, Origin::Host),
        (true, "established")
    );
    // Truncated L4 from the node passes too; forwarded, it is dropped (A is isolated).
    let mut cut = frame(W4, A4, tcp(42001, 8080));
    cut.truncate(IP_OFF + 20 + 10);
    let tl = (cut.len() - IP_OFF) as u16;
    cut[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&tl.to_be_bytes());
    assert_eq!(
        run_from(&dp, Ingress, &cut, Origin::Host),
        (true, "from_host")
    );
    check(&dp, Ingress, &cut, false, "malformed");
    // Origin means nothing on the pod's egress hook: A -> W stays denied.
    assert_eq!(
        run_from(&dp, Egress, &frame(A4, W4, tcp(42002, 80)), Origin::Host),
        (false, "policy_deny")
    );
}

// ---- Service virtual addresses (egress is seen before kube-proxy's DNAT) ----

const VIP4: &str = "10.96.0.10"; // TCP 80 (sp 1, allowed), UDP 53 (sp 2, allowed), TCP 8443 (sp 3)
const VIP6: &str = "fd00:96::10"; // TCP 80 (sp 4, allowed), TCP 8443 (sp 5)

/// What [`service_fixture`] decides, checked on fresh flows: an allowed and a denied Service
/// port from A, and a denied ingress to A (the Plan in force after a restart or upgrade).
fn service_fixture_enforces(dp: &Datapath) {
    check(
        dp,
        Egress,
        &frame(A4, VIP4, tcp(43000, 80)),
        true,
        "policy_allow",
    );
    check(
        dp,
        Egress,
        &frame(A4, VIP4, tcp(43001, 8443)),
        false,
        "service_deny",
    );
    check(
        dp,
        Ingress,
        &frame(C4, A4, tcp(43002, 81)),
        false,
        "policy_deny",
    );
}

/// [`fixture`] plus two virtual addresses; subject 1 may reach Service ports 1, 2 and 4 (the
/// compiler's verdict that every endpoint is allowed), not 3 and 5. A plain egress rule lets
/// subject 1 reach any peer on TCP 9999 (for ports the Service does not serve).
fn service_fixture() -> Plan {
    let mut p = PlanBuilder { plan: fixture() };
    p.service(
        VIP4,
        1,
        &[(PROTO_TCP, 80, 1), (PROTO_UDP, 53, 2), (PROTO_TCP, 8443, 3)],
    )
    .service(VIP6, 1, &[(PROTO_TCP, 80, 4), (PROTO_TCP, 8443, 5)])
    .service_allow(1, 1, 7, 0)
    .service_allow(1, 2, 7, 1)
    .service_allow(1, 4, 7, 0)
    .allow(
        POLICY_PREFIX_FULL,
        DIR_EGRESS,
        1,
        ANY_PEER,
        PROTO_TCP,
        9999,
        6,
        1,
    );
    let mut plan = p.build();
    plan.policies = (1..=7)
        .map(|i| PolicyRef {
            namespace: "default".into(),
            name: format!("p{i}"),
        })
        .collect();
    plan
}

fn service_setup(tag: &str) -> TestDp {
    let mut dp = open(test_config(tag));
    dp.apply(&service_fixture()).unwrap();
    dp
}

#[test]
fn service_vip_allowed_denied_and_unserved_ports() {
    let dp = service_setup("svc");
    let mut reader = dp.events().unwrap();
    // Allowed: every endpoint of the Service port is allowed to the client.
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(40000, 80)),
        true,
        "policy_allow",
    );
    let udp = |sport, dport| L4::Udp { sport, dport };
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, udp(40001, 53)),
        true,
        "policy_allow",
    );
    // Not all endpoints allowed (no SERVICE_POLICY entry): service_deny, not policy_deny.
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(40002, 8443)),
        false,
        "service_deny",
    );
    // Ports and protocols the Service does not serve: the plain policy of the address.
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(40003, 9999)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, udp(40004, 80)),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(40005, 81)),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, L4::EchoRequest { id: 40006 }),
        false,
        "policy_deny",
    );
    // A pod not isolated for egress reaches every Service port.
    check(
        &dp,
        Egress,
        &frame(B4, VIP4, tcp(40007, 8443)),
        true,
        "not_isolated",
    );
    // Ingress is unaffected: a packet from the virtual address is a plain peer.
    check(
        &dp,
        Ingress,
        &frame(VIP4, A4, tcp(40008, 443)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(VIP4, A4, tcp(40009, 8443)),
        false,
        "policy_deny",
    );
    // IPv6 virtual address.
    check(
        &dp,
        Egress,
        &frame(A6, VIP6, tcp(40010, 80)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Egress,
        &frame(A6, VIP6, tcp(40011, 8443)),
        false,
        "service_deny",
    );
    check(
        &dp,
        Egress,
        &frame(A6, VIP6, tcp(40012, 81)),
        false,
        "policy_deny",
    );

    let ev = reader.poll(std::time::Duration::from_secs(1)).unwrap();
    let first = &ev[0];
    assert_eq!(
        (first.verdict, first.reason, first.dport),
        (Verdict::Allow, "policy_allow", 80)
    );
    assert_eq!(first.dst.to_string(), VIP4);
    assert_eq!(first.policy.as_ref().map(|p| p.name.as_str()), Some("p7"));
    let udp_ev = &ev[1];
    assert_eq!((udp_ev.dport, udp_ev.rule), (53, Some(1)));
    let denied: Vec<_> = ev.iter().filter(|e| e.reason == "service_deny").collect();
    assert_eq!(denied.len(), 2, "{ev:?}");
    assert!(denied
        .iter()
        .all(|e| e.verdict == Verdict::Drop && e.dport == 8443 && e.direction == Egress));
}

#[test]
fn service_flows_are_tracked_and_revoked_by_a_policy_change() {
    let mut dp = service_setup("svcgen");
    let syn = frame(A4, VIP4, tcp(41000, 80));
    let ack = frame(A4, VIP4, tcp_ack(41000, 80));
    // kube-proxy undoes the DNAT before the reply reaches the client's veth.
    let reply = frame(VIP4, A4, tcp_ack(80, 41000));
    check(&dp, Egress, &syn, true, "policy_allow");
    check(&dp, Egress, &ack, true, "established");
    check(&dp, Ingress, &reply, true, "reply");
    // Same Plan again: re-checked, still allowed.
    dp.apply(&service_fixture()).unwrap();
    check(&dp, Egress, &ack, true, "established");
    // An endpoint the client may not reach joins: the compiler drops the SERVICE_POLICY entry.
    let mut without = service_fixture();
    without.service_policy.retain(|(k, _)| k.service_port != 1);
    dp.apply(&without).unwrap();
    check(&dp, Ingress, &reply, false, "revoked");
    check(&dp, Egress, &ack, false, "service_deny");
    check(&dp, Egress, &syn, false, "service_deny");
    // Back again.
    dp.apply(&service_fixture()).unwrap();
    check(&dp, Egress, &syn, true, "policy_allow");
}

#[test]
fn service_maps_follow_the_slot_protocol() {
    let mut dp = service_setup("svcsync");
    let plan = service_fixture();
    for round in 0..3 {
        let g = dp.current_config().unwrap().generation;
        let slot = Config::slot_of(g);
        let (services, policy) = dp.service_entries().unwrap();
        // Only the live slot remains, holding exactly the Plan's tables.
        let mut want_s = plan.services.clone();
        want_s.iter_mut().for_each(|(k, _)| k.slot = slot);
        let mut want_p = plan.service_policy.clone();
        want_p.iter_mut().for_each(|(k, _)| k.slot = slot);
        want_s.sort();
        want_p.sort();
        assert_eq!(services, want_s, "round {round}");
        assert_eq!(policy, want_p, "round {round}");
        let r = dp.apply(&plan).unwrap();
        assert_eq!(
            (r.services_written, r.services_deleted),
            (
                plan.services.len() + plan.service_policy.len(),
                plan.services.len() + plan.service_policy.len()
            ),
            "round {round}"
        );
    }
    // An empty Plan removes everything.
    dp.apply(&fixture()).unwrap();
    let (s, p) = dp.service_entries().unwrap();
    assert!(s.is_empty() && p.is_empty(), "{s:?} {p:?}");
}

#[test]
fn full_service_maps_fail_closed() {
    let mut cfg = test_config("svcfull");
    let plan = service_fixture();
    // Room for one Plan's SERVICES, not for two side by side.
    cfg.services_max = plan.services.len() as u32 + 1;
    let mut dp = open(cfg);
    dp.apply(&plan).unwrap();
    let g = dp.current_config().unwrap().generation;
    let err = dp.apply(&plan).unwrap_err();
    assert!(
        matches!(
            err,
            netward::datapath::SyncError::MapFull {
                map: "SERVICES",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(dp.current_config().unwrap().generation, g);
    assert_eq!(dp.counters().unwrap().sync_failures, 1);
    // The Plan in force still decides, nothing was left half-written.
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(42000, 80)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(42001, 8443)),
        false,
        "service_deny",
    );
    let (s, _) = dp.service_entries().unwrap();
    assert_eq!(s.len(), plan.services.len());
    // Same for SERVICE_POLICY.
    let mut cfg = test_config("svcfull2");
    cfg.service_policy_max = plan.service_policy.len() as u32;
    let mut dp = open(cfg);
    dp.apply(&plan).unwrap();
    let err = dp.apply(&plan).unwrap_err();
    assert!(
        matches!(
            err,
            netward::datapath::SyncError::MapFull {
                map: "SERVICE_POLICY",
                ..
            }
        ),
        "{err}"
    );
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(42002, 80)),
        true,
        "policy_allow",
    );
}

/// An agent from before `reason::SERVICE_DENY` left a `COUNTERS` map one entry shorter: the
/// restarted agent replaces it (counters are not enforcement state) and keeps the Plan.
#[test]
fn restart_over_an_older_counters_map_keeps_enforcing() {
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let cfg = test_config("svccounters");
    let mut dp = open(cfg.clone());
    dp.apply(&service_fixture()).unwrap();
    let g = dp.current_config().unwrap().generation;
    // Drop the process's handles (pins stay), then swap in the older agent's map.
    drop(dp.dp.take());
    let pin = cfg.bpffs_dir.join("COUNTERS");
    std::fs::remove_file(&pin).unwrap();
    pin_raw_map(&pin, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, COUNTER_COUNT - 1);
    let info = aya::maps::MapInfo::from_pin(&pin).unwrap();
    assert_eq!(info.max_entries(), COUNTER_COUNT - 1);

    dp.dp = Some(Datapath::open_or_create(cfg.clone()).expect("restart over old pins"));
    let info = aya::maps::MapInfo::from_pin(&pin).unwrap();
    assert_eq!(info.max_entries(), COUNTER_COUNT);
    // The Plan in force was not touched and enforces without a new apply.
    assert_eq!(dp.current_config().unwrap().generation, g);
    service_fixture_enforces(&dp);
    let c = dp.counters().unwrap();
    assert_eq!((c.reason(reason::SERVICE_DENY), c.denied), (1, 2), "{c:?}");

    // An agent from before the Service maps left none: they are created (empty) on load; until
    // the first apply a virtual address is a plain address, then the Service decides.
    drop(dp.dp.take());
    for name in ["SERVICES", "SERVICE_POLICY"] {
        std::fs::remove_file(cfg.bpffs_dir.join(name)).unwrap();
    }
    dp.dp = Some(Datapath::open_or_create(cfg).expect("restart without Service maps"));
    assert_eq!(dp.service_entries().unwrap(), (vec![], vec![]));
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(43003, 8443)),
        false,
        "policy_deny",
    );
    dp.apply(&service_fixture()).unwrap();
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(43004, 8443)),
        false,
        "service_deny",
    );
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(43005, 80)),
        true,
        "policy_allow",
    );
}

/// An agent from before the policy hash tables left its Plan in a `POLICY` trie (and `HOSTS`
/// keyed by the ipcache key). A new agent rebuilds its tables from those pins before its
/// programs take over: the Plan in force keeps enforcing with no apply, and the old pins go.
#[test]
fn upgrade_over_an_older_policy_trie_keeps_the_plan_in_force() {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let cfg = test_config("upgrade");
    let mut dp = open(cfg.clone());
    dp.apply(&service_fixture()).unwrap();
    let g = dp.current_config().unwrap().generation;
    let (_, live_policy) = dp.live_entries().unwrap();
    assert!(!live_policy.is_empty());
    drop(dp.dp.take());

    // The older agent's layout: no hash tables, a POLICY trie and HOSTS.
    for name in ["POLICY_HASH", "LOCAL_TABLE", "HOST_TABLE"] {
        std::fs::remove_file(cfg.bpffs_dir.join(name)).unwrap();
    }
    let trie_pin = cfg.bpffs_dir.join("POLICY");
    pin_raw_map_flags(
        &trie_pin,
        BPF_MAP_TYPE_LPM_TRIE,
        size_of::<PolicyKey>() as u32,
        size_of::<PolicyValue>() as u32,
        4096,
        BPF_F_NO_PREALLOC,
    );
    {
        let data = aya::maps::MapData::from_pin(&trie_pin).unwrap();
        let mut trie: aya::maps::LpmTrie<_, [u8; PolicyKey::DATA_LEN], PolicyValue> =
            aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).unwrap();
        for (k, v) in &live_policy {
            trie.insert(
                &aya::maps::lpm_trie::Key::new(k.prefixlen, k.lpm_data()),
                *v,
                0,
            )
            .unwrap();
        }
    }
    let hosts_pin = cfg.bpffs_dir.join("HOSTS");
    pin_raw_map(
        &hosts_pin,
        BPF_MAP_TYPE_HASH,
        size_of::<IpcacheKey>() as u32,
        size_of::<IpcacheValue>() as u32,
        1024,
    );

    dp.dp = Some(Datapath::open_or_create(cfg.clone()).expect("upgrade over old pins"));
    assert_eq!(
        dp.current_config().unwrap().generation,
        g,
        "no new Plan was applied"
    );
    let (_, migrated) = dp.live_entries().unwrap();
    assert_eq!(migrated, live_policy);
    assert!(
        !trie_pin.exists() && !hosts_pin.exists(),
        "the older agent's pins are removed"
    );
    service_fixture_enforces(&dp);
    // And the next Plan goes in as usual.
    dp.apply(&service_fixture()).unwrap();
    check(
        &dp,
        Egress,
        &frame(A4, VIP4, tcp(43003, 80)),
        true,
        "policy_allow",
    );
}

/// IPv6 addresses are keyed by a 32-bit tag (see `AddrKey`); two addresses with the same tag
/// share a key. The first keeps the hash entry, the second is decided through the `IPCACHE`
/// trie, and the full address stored in the value keeps one from being taken for the other,
/// as a local pod and as a peer.
#[test]
fn ipv6_addresses_with_the_same_tag_are_told_apart() {
    let twin = |a: &str| {
        let t = tag_twin(&v6(a), 0x5a5a);
        std::net::Ipv6Addr::from(t).to_string()
    };
    // X < Y and P < Q as addresses: X and P keep the hash entries.
    const X: &str = "fd00::1"; // local, subject 1: TCP 80 from class 3
    const P: &str = "fd00:2::5"; // peer, class 3
    let (y, q) = (twin(X), twin(P));
    // Y: local, subject 2, TCP 443 from class 3; Q: peer, class 6 (allowed nowhere).
    #[allow(non_snake_case)]
    let (Y, Q) = (y.as_str(), q.as_str());
    assert!(v6(X) < v6(Y) && v6(P) < v6(Q), "{Y} {Q}");
    assert_eq!(addr_tag(&v6(X)), addr_tag(&v6(Y)));
    assert_eq!(addr_tag(&v6(P)), addr_tag(&v6(Q)));
    let mut p = PlanBuilder::new();
    p.pod(X, 2, 1, EP_ISOLATED_INGRESS, 1)
        .pod(Y, 7, 2, EP_ISOLATED_INGRESS, 2)
        .peer("fd00:2::5/128", 3)
        .peer(&format!("{Q}/128"), 6)
        .allow(POLICY_PREFIX_FULL, DIR_INGRESS, 1, 3, PROTO_TCP, 80, 1, 0)
        .allow(
            POLICY_PREFIX_FULL - 2,
            DIR_INGRESS,
            2,
            3,
            PROTO_TCP,
            440,
            2,
            0,
        );
    let mut dp = open(test_config("tags"));
    dp.apply(&p.build()).unwrap();
    let eps = dp.endpoint_entries().unwrap();
    assert_eq!(eps.len(), 1, "one hash entry for the shared tag: {eps:?}");
    for (src, dst, port, pass, reason) in [
        (P, X, 80, true, "policy_allow"),
        (P, X, 443, false, "policy_deny"),
        (P, Y, 443, true, "policy_allow"), // Y through the trie, 440..443 block
        (P, Y, 80, false, "policy_deny"),
        (Q, X, 80, false, "policy_deny"), // Q is not P
        (Q, Y, 443, false, "policy_deny"),
    ] {
        let f = frame(src, dst, tcp(40000 + port, port));
        assert_eq!(
            run(&dp, Ingress, &f),
            (pass, reason),
            "{src} -> {dst}:{port}"
        );
    }
}

/// A TCP SYN without ACK opens a flow: conntrack is not consulted, so a retransmitted SYN is
/// decided by the policy again, and a SYN at the hook where the flow's replies pass meets the
/// policy of that direction instead of passing as a reply.
#[test]
fn a_syn_is_always_decided_by_policy() {
    let dp = setup("syn");
    let steps = [
        (Ingress, C4, A4, tcp(40000, 80), true, "policy_allow"),
        (Ingress, C4, A4, tcp(40000, 80), true, "policy_allow"),
        (Ingress, C4, A4, tcp_ack(40000, 80), true, "established"),
        (Egress, A4, C4, tcp_ack(80, 40000), true, "reply"),
        // The same addresses and ports, but a SYN from A: A's egress allows nothing to C:40000.
        (Egress, A4, C4, tcp(80, 40000), false, "policy_deny"),
        // The flow itself is untouched.
        (Egress, A4, C4, tcp_ack(80, 40000), true, "reply"),
    ];
    for (dir, src, dst, l4, pass, reason) in steps {
        check(&dp, dir, &frame(src, dst, l4), pass, reason);
    }
}

/// Earlier builds kept the address tables in hash maps: keyed by the full 20-byte address
/// (`ENDPOINTS`, `ADDRS`), then by an 8-byte tag (`LOCAL_ADDRS`, `HOST_ADDRS`). A new agent
/// fills its address tables from `IPCACHE` and `POLICY_HASH` before its programs take over,
/// and removes the old pins; the Plan in force keeps enforcing.
fn upgrade_over_hash_address_tables(tag: &str, old: [(&str, usize, usize); 2]) {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let cfg = test_config(tag);
    let mut dp = open(cfg.clone());
    dp.apply(&service_fixture()).unwrap();
    let g = dp.current_config().unwrap().generation;
    let endpoints = dp.endpoint_entries().unwrap();
    let hosts = dp.host_entries().unwrap();
    assert!(!endpoints.is_empty() && !hosts.is_empty());
    drop(dp.dp.take());

    // The older layout: no address tables, its hash maps instead.
    for name in ["LOCAL_TABLE", "HOST_TABLE"] {
        std::fs::remove_file(cfg.bpffs_dir.join(name)).unwrap();
    }
    for (name, key, value) in old {
        pin_raw_map(
            &cfg.bpffs_dir.join(name),
            BPF_MAP_TYPE_HASH,
            key as u32,
            value as u32,
            1024,
        );
    }

    dp.dp = Some(Datapath::open_or_create(cfg.clone()).expect("upgrade over old pins"));
    assert_eq!(
        dp.current_config().unwrap().generation,
        g,
        "no new Plan was applied"
    );
    assert_eq!(
        dp.endpoint_entries().unwrap(),
        endpoints,
        "rebuilt before the swap"
    );
    assert_eq!(dp.host_entries().unwrap(), hosts);
    for (name, _, _) in old {
        assert!(!cfg.bpffs_dir.join(name).exists(), "{name} pin removed");
    }
    service_fixture_enforces(&dp);
}

#[test]
fn upgrade_over_full_key_address_tables_keeps_the_plan_in_force() {
    upgrade_over_hash_address_tables(
        "upgrade-full",
        [
            (
                "ENDPOINTS",
                size_of::<HostKey>(),
                size_of::<EndpointValue>(),
            ),
            ("ADDRS", size_of::<HostKey>(), size_of::<IpcacheValue>()),
        ],
    );
}

#[test]
fn upgrade_over_tagged_hash_address_tables_keeps_the_plan_in_force() {
    upgrade_over_hash_address_tables(
        "upgrade-tags",
        [
            (
                "LOCAL_ADDRS",
                size_of::<AddrKey>(),
                size_of::<Tagged<EndpointValue>>(),
            ),
            (
                "HOST_ADDRS",
                size_of::<AddrKey>(),
                size_of::<Tagged<IpcacheValue>>(),
            ),
        ],
    );
}

/// The key an agent from before `CT` stored in its `CONNTRACK` map: the tuple as first
/// seen + the admitting hook's direction (40 bytes), value `CtValue` (24 bytes).
fn legacy_ct_entry(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    dir: u8,
    generation: u64,
    expires_ns: u64,
) -> ([u8; 40], [u8; 24]) {
    let bytes = |a: &str| -> ([u8; 16], u8) {
        match a.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, FAMILY_V4)
            }
            std::net::IpAddr::V6(a) => (a.octets(), FAMILY_V6),
        }
    };
    let ((s, family), (d, _)) = (bytes(src), bytes(dst));
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&s);
    k[16..32].copy_from_slice(&d);
    k[32..34].copy_from_slice(&sport.to_ne_bytes());
    k[34..36].copy_from_slice(&dport.to_ne_bytes());
    k[36..39].copy_from_slice(&[PROTO_TCP, family, dir]);
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&generation.to_ne_bytes());
    v[8..16].copy_from_slice(&expires_ns.to_ne_bytes());
    v[16..20].copy_from_slice(&1u32.to_ne_bytes()); // policy 1, rule 0, no flags
    (k, v)
}

fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out buffer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Stop the agent and leave, in place of its `CT_PAIRS`, an older agent's conntrack map
/// `name` (an LRU hash, 40-byte keys, 24-byte values) holding `entries`: its pin.
fn stop_with_older_conntrack<K: aya::Pod, V: aya::Pod>(
    dp: &mut TestDp,
    name: &str,
    entries: &[(K, V)],
) -> std::path::PathBuf {
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let dir = dp.config().bpffs_dir.clone();
    drop(dp.dp.take());
    std::fs::remove_file(dir.join("CT_PAIRS")).unwrap();
    let pin = dir.join(name);
    pin_raw_map(&pin, BPF_MAP_TYPE_LRU_HASH, 40, 24, 1024);
    let data = aya::maps::MapData::from_pin(&pin).unwrap();
    let mut old: aya::maps::HashMap<_, K, V> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    for (k, v) in entries {
        old.insert(k, v, 0).unwrap();
    }
    pin
}

/// Upgrade from an agent whose conntrack was the `CONNTRACK` map: its live flows move into
/// `CT_PAIRS`, so replies the Plan alone would drop keep passing, and the old pin goes.
#[test]
fn upgrade_over_an_older_conntrack_map_keeps_established_flows() {
    let cfg = test_config("ctmigrate");
    let mut dp = setup_with(cfg.clone());
    let g = dp.current_config().unwrap().generation;
    let live = monotonic_ns() + 3600 * 1_000_000_000;
    let pin = stop_with_older_conntrack(
        &mut dp,
        "CONNTRACK",
        &[
            // C -> A:80 admitted at A's ingress, verified under an older generation (the
            // new program re-checks it, as opened: ingress, port 80).
            legacy_ct_entry(C4, A4, 40000, 80, DIR_INGRESS, g - 1, live),
            // A -> C:5432 admitted at A's egress.
            legacy_ct_entry(A4, C4, 40100, 5432, DIR_EGRESS, g, live),
            legacy_ct_entry(C6, A6, 40300, 80, DIR_INGRESS, g, live),
            // Expired: not copied.
            legacy_ct_entry(C4, A4, 40200, 80, DIR_INGRESS, g, 1),
        ],
    );

    dp.dp = Some(Datapath::open_or_create(cfg.clone()).expect("upgrade over old pins"));
    assert!(!pin.exists(), "the old CONNTRACK pin was not removed");
    assert_eq!(dp.current_config().unwrap().generation, g);
    // A's egress allows nothing to C:40000 and its ingress nothing to port 40100: only the
    // migrated entries let these replies through.
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp_ack(80, 40000)),
        true,
        "reply",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp_ack(40000, 80)),
        true,
        "established",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp_ack(5432, 40100)),
        true,
        "reply",
    );
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp_ack(40100, 5432)),
        true,
        "established",
    );
    check(
        &dp,
        Egress,
        &frame(A6, C6, tcp_ack(80, 40300)),
        true,
        "reply",
    );
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp_ack(80, 40200)),
        false,
        "policy_deny",
    );
    // A later restart (no legacy map any more) keeps the migrated flows.
    drop(dp.dp.take());
    dp.dp = Some(Datapath::open_or_create(cfg).expect("restart"));
    check(
        &dp,
        Egress,
        &frame(A4, C4, tcp_ack(80, 40000)),
        true,
        "reply",
    );
}

/// One veth's entry of the previous layout's `CT` map (the veth's orientation: `local` is its
/// pod; origin direction in the value).
fn oriented_ct_entry(
    local: &str,
    lport: u16,
    remote: &str,
    rport: u16,
    origin_egress: bool,
    (generation, policy): (u64, u32),
    expires_ns: u64,
) -> (CtFlowKey, CtValue) {
    let v4 = |a: &str| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.parse::<std::net::Ipv4Addr>().unwrap().octets());
        b
    };
    let k = CtFlowKey {
        local: v4(local),
        remote: v4(remote),
        lport,
        rport,
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let v = CtValue {
        generation,
        expires_ns,
        policy,
        rule: 0,
        flags: if origin_egress { CT_ORIGIN_EGRESS } else { 0 },
    };
    (k, v)
}

/// Upgrade from an agent whose conntrack was `CT` (an entry per flow and veth): its live
/// flows move into `CT_PAIRS`, a same-node pair's two entries into one entry with both
/// sides; replies the Plan alone would drop keep passing at both veths; the old pin goes.
#[test]
fn upgrade_over_the_per_veth_conntrack_map_merges_same_node_pairs() {
    let cfg = test_config("ctpairs");
    let mut dp = setup_with(cfg.clone());
    let g = dp.current_config().unwrap().generation;
    let live = monotonic_ns() + 3600 * 1_000_000_000;
    let pin = stop_with_older_conntrack(
        &mut dp,
        "CT",
        &[
            // B:40600 -> A:443 on this node: B's veth admitted it at egress, A's at ingress
            // (policy 3).
            oriented_ct_entry(B4, 40600, A4, 443, true, (g, 0), live),
            oriented_ct_entry(A4, 443, B4, 40600, false, (g, 3), live),
            // A:40100 -> C:5432, admitted at A's egress.
            oriented_ct_entry(A4, 40100, C4, 5432, true, (g, 6), live),
            // Expired: not copied.
            oriented_ct_entry(A4, 80, C4, 40200, false, (g, 1), 1),
        ],
    );

    dp.dp = Some(Datapath::open_or_create(cfg.clone()).expect("upgrade over old pins"));
    assert!(!pin.exists(), "the old CT pin was not removed");
    let entries = conntrack_entries(&cfg);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (_, pair) = entries
        .iter()
        .find(|(k, _)| k.hi_port == 40600)
        .expect("the pair's entry");
    assert_eq!(
        (pair.sides[0].flags, pair.sides[0].policy),
        (CT_TRACKED, 3),
        "A's side"
    );
    assert_eq!(
        pair.sides[1].flags,
        CT_TRACKED | CT_ORIGIN_EGRESS,
        "B's side"
    );
    // A's egress allows nothing to B:40600 nor its ingress anything from C:5432: only the
    // migrated sides pass these (a flow's first FIN reads conntrack; the FINs after it may
    // hit the cache entries that read filled from the migrated sides).
    check(&dp, Egress, &tcp_fin(A4, B4, 443, 40600), true, "reply");
    check(&dp, Ingress, &tcp_fin(A4, B4, 443, 40600), true, "reply");
    check(
        &dp,
        Ingress,
        &tcp_fin(B4, A4, 40600, 443),
        true,
        "established",
    );
    check(&dp, Ingress, &tcp_fin(C4, A4, 5432, 40100), true, "reply");
    check(
        &dp,
        Egress,
        &tcp_fin(A4, C4, 40100, 5432),
        true,
        "established",
    );
    check(
        &dp,
        Egress,
        &tcp_fin(A4, C4, 80, 40200),
        false,
        "policy_deny",
    );
}

/// One counter per packet, by the hook's direction and reason; totals are their sums.
#[test]
fn counters_split_by_direction() {
    let dp = setup("ctrdir");
    let mut arp = frame(C4, A4, tcp(1, 1));
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    for _ in 0..3 {
        dp.test_run(Ingress, &frame(C4, A4, tcp(44000, 81)), 1)
            .unwrap();
    }
    dp.test_run(Egress, &frame(A4, C4, tcp(44001, 81)), 1)
        .unwrap();
    dp.test_run(Egress, &arp, 2).unwrap();
    dp.test_run(Ingress, &frame(C4, A4, tcp(44002, 80)), 1)
        .unwrap();
    dp.test_run(Egress, &frame(A4, C4, tcp_ack(80, 44002)), 1)
        .unwrap();
    let c = dp.counters().unwrap();
    let rd = |d, r| c.reason_dir(d, r);
    assert_eq!(rd(DIR_INGRESS, reason::POLICY_DENY), 3, "{c:?}");
    assert_eq!(rd(DIR_EGRESS, reason::POLICY_DENY), 1, "{c:?}");
    assert_eq!(c.reason(reason::POLICY_DENY), 4);
    assert_eq!(
        (
            rd(DIR_EGRESS, reason::NON_IP),
            rd(DIR_INGRESS, reason::NON_IP)
        ),
        (2, 0)
    );
    assert_eq!(
        (
            rd(DIR_INGRESS, reason::POLICY_ALLOW),
            rd(DIR_EGRESS, reason::REPLY)
        ),
        (1, 1)
    );
    assert_eq!((c.allowed, c.denied), (4, 4), "{c:?}");
}

/// The pinned conntrack map, opened behind the programs' back.
fn pinned_conntrack(
    cfg: &DatapathConfig,
) -> aya::maps::HashMap<aya::maps::MapData, CtPairKey, CtPairValue> {
    let data = aya::maps::MapData::from_pin(cfg.bpffs_dir.join("CT_PAIRS")).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap()
}

/// Every conntrack entry.
fn conntrack_entries(cfg: &DatapathConfig) -> Vec<(CtPairKey, CtPairValue)> {
    pinned_conntrack(cfg).iter().map(|e| e.unwrap()).collect()
}

/// The kernel's coarse monotonic clock (what the programs stamp lifetimes with), in ns.
fn coarse_now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A busy client reuses a 5-tuple while the closed flow's entry is still in its closing
/// lifetime: the allowed SYN overwrites that entry (one entry, the new flow's state: not
/// closing, the TCP lifetime), and the new flow's reply passes.
#[test]
fn a_reused_tuple_overwrites_its_closing_entry() {
    let syn = frame(C4, A4, tcp(42100, 80));
    let reply = frame(A4, C4, tcp_ack(80, 42100));
    let fin = tcp_fin(C4, A4, 42100, 80);
    let cfg = test_config("reuse");
    let dp = setup_with(cfg.clone());
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Egress, &reply, true, "reply");
    check(&dp, Ingress, &fin, true, "established");
    let closing = conntrack_entries(&cfg);
    assert_eq!(closing.len(), 1);
    let (key, v) = closing[0];
    assert_eq!(v.flags, CT_CLOSING);
    // C (10.0.1.7) is the higher end: A's verdict is side 0, admitted at its ingress.
    assert_eq!(key.lo[..4], [10, 0, 0, 1]);
    assert_eq!((v.sides[0].flags, v.sides[1].flags), (CT_TRACKED, 0));
    assert!(v.expires_ns <= coarse_now_ns() + (CT_TIMEOUT_CLOSING_S + 1) * 1_000_000_000);

    check(&dp, Ingress, &syn, true, "policy_allow");
    let reused = conntrack_entries(&cfg);
    assert_eq!(reused.len(), 1, "one entry for the tuple");
    let (k, v) = reused[0];
    assert_eq!(k, key);
    assert_eq!((v.flags, v.sides[0].flags), (0, CT_TRACKED));
    assert!(v.expires_ns > coarse_now_ns() + CT_TIMEOUT_OTHER_S * 1_000_000_000);
    check(&dp, Egress, &reply, true, "reply");
}

/// A new flow's entry fills this CPU's flow cache as it is written: the flow's first reply
/// (a TCP SYN-ACK, sent from the softirq that took the SYN) is answered without a `CT`
/// read. With the entry removed behind the programs' back, only the cache can pass it.
#[test]
fn a_new_flows_first_reply_is_answered_by_the_flow_cache() {
    pin_to_this_cpu();
    let syn = frame(C4, A4, tcp(42200, 80));
    // A's egress allows nothing to C:42200: only conntrack (or the cache) passes the reply.
    let reply = frame(A4, C4, tcp_ack(80, 42200));
    let cfg = test_config("firstreply");
    let dp = setup_with(cfg.clone());
    check(&dp, Ingress, &syn, true, "policy_allow");
    forget_conntrack(&cfg);
    let hits = dp.counters().unwrap().flow_cache_hits;
    check(&dp, Egress, &reply, true, "reply");
    assert_eq!(dp.counters().unwrap().flow_cache_hits, hits + 1);
    // A denied SYN writes nothing, so fills nothing.
    let denied = frame(W4, A4, tcp(42201, 80));
    check(&dp, Ingress, &denied, false, "policy_deny");
    check(
        &dp,
        Egress,
        &frame(A4, W4, tcp_ack(80, 42201)),
        false,
        "policy_deny",
    );
}

/// Remove every conntrack entry behind the programs' back (as an LRU eviction would).
fn forget_conntrack(cfg: &DatapathConfig) {
    let mut ct = pinned_conntrack(cfg);
    let keys: Vec<CtPairKey> = ct.keys().map(|k| k.unwrap()).collect();
    assert!(!keys.is_empty(), "no flow was tracked");
    for k in keys {
        ct.remove(&k).unwrap();
    }
}

/// The per-CPU flow cache stands in for conntrack only within its window, under the same
/// Plan generation, and for a FIN or RST only once conntrack has the flow closing; with no
/// cache, every packet reads conntrack.
#[test]
fn the_flow_cache_stands_in_for_conntrack_only_within_its_window() {
    pin_to_this_cpu();
    let syn = frame(C4, A4, tcp(42000, 80));
    // A's egress allows nothing to C:42000: only conntrack (or the cache) passes the reply.
    let reply = frame(A4, C4, tcp_ack(80, 42000));
    let fin = tcp_fin(A4, C4, 80, 42000);
    assert_eq!(fin[14 + 20 + 13], 0x11);

    let cfg = test_config("flowcache");
    let mut dp = setup_with(cfg.clone());
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Egress, &reply, true, "reply");
    forget_conntrack(&cfg);
    // Within the window: the cache answers as conntrack did (and counts it).
    let hits = dp.counters().unwrap().flow_cache_hits;
    check(&dp, Egress, &reply, true, "reply");
    assert_eq!(dp.counters().unwrap().flow_cache_hits, hits + 1);
    // A FIN reads conntrack unless the flow was closing when the cache was filled.
    check(&dp, Egress, &fin, false, "policy_deny");
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Egress, &fin, true, "reply");
    assert_eq!(
        only_entry_sides(&cfg).2,
        CT_CLOSING,
        "the first FIN marks it"
    );
    forget_conntrack(&cfg);
    let hits = dp.counters().unwrap().flow_cache_hits;
    check(&dp, Egress, &fin, true, "reply");
    check(
        &dp,
        Ingress,
        &tcp_fin(C4, A4, 42000, 80),
        true,
        "established",
    );
    assert_eq!(dp.counters().unwrap().flow_cache_hits, hits + 2);
    // A new Plan generation always reads conntrack.
    check(&dp, Egress, &reply, true, "reply");
    dp.apply(&fixture()).unwrap();
    check(&dp, Egress, &reply, false, "policy_deny");
    // After the window (at most 1 s) the cache no longer answers.
    check(&dp, Ingress, &syn, true, "policy_allow");
    check(&dp, Egress, &reply, true, "reply");
    forget_conntrack(&cfg);
    check(&dp, Egress, &reply, true, "reply");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    check(&dp, Egress, &reply, false, "policy_deny");
    drop(dp);

    // Off (0 slots), and a zero window (every probe misses): conntrack decides every packet.
    for (tag, slots, window) in [("flowcache-off", 0, 100), ("flowcache-miss", 4096, 0)] {
        let cfg = DatapathConfig {
            flow_cache_slots: slots,
            flow_cache_window_jiffies: window,
            ..test_config(tag)
        };
        let dp = setup_with(cfg.clone());
        check(&dp, Ingress, &syn, true, "policy_allow");
        check(&dp, Egress, &reply, true, "reply");
        forget_conntrack(&cfg);
        check(&dp, Egress, &reply, false, "policy_deny");
        assert_eq!(dp.counters().unwrap().flow_cache_hits, 0);
    }
}

/// The pinned `CONFIG` map, opened behind the programs' back.
fn pinned_config(cfg: &DatapathConfig) -> aya::maps::Array<aya::maps::MapData, Config> {
    let data = aya::maps::MapData::from_pin(cfg.bpffs_dir.join("CONFIG")).unwrap();
    aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap()
}

/// The per-CPU decision cache answers a question (direction, local pod, peer, protocol,
/// port) only as the policy maps did under the same Plan generation and fail-closed setting,
/// within its window, with the same attribution; denials too. Off, or with a zero window,
/// the maps decide every time.
#[test]
fn the_decision_cache_answers_only_what_the_maps_answered_under_the_same_plan() {
    pin_to_this_cpu();
    let cfg = test_config("decisioncache");
    let mut dp = setup_with(cfg.clone());
    let mut events = dp.events().unwrap();
    let hits = |dp: &Datapath| dp.counters().unwrap().decision_cache_hits;
    let h = hits(&dp);
    // The first question of its kind reads the maps; a client's next connection (another
    // source port) is answered by the cache, attributed to the same policy and rule.
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42000, 8007)),
        true,
        "policy_allow",
    );
    assert_eq!(hits(&dp), h);
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42001, 8007)),
        true,
        "policy_allow",
    );
    assert_eq!(hits(&dp), h + 1);
    let ev = events.poll(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in &ev {
        assert_eq!(e.policy.as_ref().map(|p| p.name.as_str()), Some("p2"));
        assert_eq!(e.rule, Some(0));
    }
    // Denials are cached too.
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42002, 81)),
        false,
        "policy_deny",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42003, 81)),
        false,
        "policy_deny",
    );
    assert_eq!(hits(&dp), h + 2);
    // Another protocol, port, peer or direction is another question.
    let other = [
        (
            Ingress,
            frame(C4, A4, udp(42000, 8007)),
            false,
            "policy_deny",
        ),
        (
            Ingress,
            frame(C4, A4, tcp(42004, 8016)),
            false,
            "policy_deny",
        ),
        (
            Ingress,
            frame(W4, A4, tcp(42005, 8007)),
            false,
            "policy_deny",
        ),
        (
            Egress,
            frame(A4, C4, tcp(8007, 42006)),
            false,
            "policy_deny",
        ),
    ];
    for (dir, f, pass, reason) in &other {
        check(&dp, *dir, f, *pass, reason);
    }
    assert_eq!(hits(&dp), h + 2);

    // A new Plan: the same question is decided by the new Plan's maps at once.
    let mut p = PlanBuilder::new();
    p.pod(A4, 2, 1, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS, 1)
        .peer("10.0.1.0/24", 3);
    dp.apply(&p.build()).unwrap();
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42007, 8007)),
        false,
        "policy_deny",
    );
    assert_eq!(hits(&dp), h + 2);
    dp.apply(&fixture()).unwrap();
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42008, 8007)),
        true,
        "policy_allow",
    );
    assert_eq!(hits(&dp), h + 2);

    // The fail-closed setting is part of the question: the agent may change it without a
    // new generation (a restart with other options writes `CONFIG` under the same Plan).
    let unknown = frame(C4, U4, tcp(1, 80));
    check(&dp, Ingress, &unknown, true, "unknown_endpoint_open");
    check(&dp, Ingress, &unknown, true, "unknown_endpoint_open");
    assert_eq!(hits(&dp), h + 3);
    let mut config = pinned_config(&cfg);
    let mut c = config.get(&0, 0).unwrap();
    c.flags |= CFG_FAIL_CLOSED_UNKNOWN;
    config.set(0, c, 0).unwrap();
    check(&dp, Ingress, &unknown, false, "unknown_endpoint");
    assert_eq!(hits(&dp), h + 3);

    // After the window (at most 1 s) the maps are read again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42009, 8007)),
        true,
        "policy_allow",
    );
    assert_eq!(hits(&dp), h + 3);
    drop(dp);

    // Off (0 slots), and a zero window (every probe misses).
    for (tag, slots, window) in [("decisions-off", 0, 100), ("decisions-miss", 256, 0)] {
        let cfg = DatapathConfig {
            decision_cache_slots: slots,
            flow_cache_window_jiffies: window,
            ..test_config(tag)
        };
        let dp = setup_with(cfg);
        for sport in 42000..42004 {
            check(
                &dp,
                Ingress,
                &frame(C4, A4, tcp(sport, 8007)),
                true,
                "policy_allow",
            );
            check(
                &dp,
                Ingress,
                &frame(C4, A4, tcp(sport, 81)),
                false,
                "policy_deny",
            );
        }
        assert_eq!(hits(&dp), 0);
    }
}

#[test]
fn cache_slots_must_be_zero_or_a_power_of_two() {
    let flow = DatapathConfig {
        flow_cache_slots: 1000,
        ..test_config("flowcache-size")
    };
    let decision = DatapathConfig {
        decision_cache_slots: 3,
        ..test_config("decisioncache-size")
    };
    for (cfg, want) in [
        (
            flow,
            "flow cache slots 1000: must be 0 (off) or a power of two",
        ),
        (
            decision,
            "decision cache slots 3: must be 0 (off) or a power of two",
        ),
    ] {
        let err = Datapath::open_or_create(cfg.clone())
            .err()
            .unwrap_or_else(|| panic!("accepted: {cfg:?}"));
        assert!(format!("{err:#}").contains(want), "{err:#}");
        let _ = std::fs::remove_dir_all(&cfg.bpffs_dir);
    }
}

/// Under connection churn, the conntrack collector keeps a long-idle flow from being evicted.
/// The programs delete an expired entry only when they meet its tuple again, so the closed
/// connections' entries stay until the LRU evicts them, by recency: an idle flow older than
/// they are goes first, and its next reply meets the policy as a new flow (here denied).
/// With the expired entries swept, the map has room and the LRU evicts nothing. The control
/// datapath runs the same packets without a sweep and must lose the idle flow: otherwise the
/// test would not show what the sweep does.
#[test]
fn the_conntrack_sweep_keeps_an_idle_flow_through_churn() {
    pin_to_this_cpu();
    // 1024 entries; each round of churn takes 700, so two rounds fit only if the first goes
    // (the kernel's LRU hands out free entries to each CPU 128 at a time and evicts when
    // fewer than that are left: a round of 900 evicted with 123 entries free).
    const CHURN: u16 = 700;
    let idle_syn = frame(C4, A4, tcp(42300, 80));
    // A's egress allows nothing to C:42300: only conntrack passes the idle flow's reply.
    let idle_reply = frame(A4, C4, tcp_ack(80, 42300));
    let churn = |dp: &Datapath, round: u16| {
        for i in 0..CHURN {
            let port = 43000 + round * CHURN + i;
            check(
                dp,
                Ingress,
                &frame(C4, A4, tcp(port, 80)),
                true,
                "policy_allow",
            );
            check(dp, Ingress, &tcp_fin(C4, A4, port, 80), true, "established");
        }
    };
    let mut dps = Vec::new();
    for tag in ["gc-swept", "gc-control"] {
        let dp = setup_with(DatapathConfig {
            conntrack_max: 1024,
            ..test_config(tag)
        });
        check(&dp, Ingress, &idle_syn, true, "policy_allow");
        check(&dp, Egress, &idle_reply, true, "reply");
        churn(&dp, 0);
        dps.push(dp);
    }
    // The first round's entries are closing (10 s), the idle flow open (6 h); past the flow
    // cache's second too.
    std::thread::sleep(std::time::Duration::from_secs(CT_TIMEOUT_CLOSING_S + 1));
    let mut gc = dps[0].conntrack_gc().unwrap();
    let r = gc.sweep().unwrap();
    assert_eq!(
        (r.scanned, r.deleted, r.live()),
        (1 + CHURN as u64, CHURN as u64, 1)
    );
    assert_eq!(
        gc.stats().live.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    for dp in &dps {
        churn(dp, 1);
    }
    check(&dps[0], Egress, &idle_reply, true, "reply");
    assert!(
        !run(&dps[1], Egress, &idle_reply).0,
        "without the sweep the LRU kept the idle flow: the test shows nothing"
    );
    // A second sweep finds nothing expired yet (the second round closes in 10 s).
    let r = gc.sweep().unwrap();
    assert_eq!((r.deleted, r.gone), (0, 0));
}

/// A sweep removes only expired entries (here the clock handed to the sweep runs ahead of
/// the entries: past the UDP flow's lifetime, within the TCP flow's), and only from a map
/// more than half full: below that, the expired ones are counted and stay.
#[test]
fn the_conntrack_sweep_keeps_live_entries() {
    let cfg = test_config("gc-live");
    let dp = setup_with(cfg.clone());
    check(
        &dp,
        Ingress,
        &frame(C4, A4, tcp(42400, 80)),
        true,
        "policy_allow",
    );
    check(
        &dp,
        Ingress,
        &frame(C4, A4, udp(42401, 53)),
        true,
        "policy_allow",
    );
    let mut gc = dp.conntrack_gc().unwrap();
    let r = gc.sweep().unwrap();
    assert_eq!((r.scanned, r.expired, r.deleted), (2, 0, 0));
    assert_eq!(conntrack_entries(&cfg).len(), 2);
    // Past the UDP flow's 60 s, within the TCP flow's 6 h.
    let later = coarse_now_ns() + (CT_TIMEOUT_OTHER_S + 5) * 1_000_000_000;
    // Two entries of 4096: counted, kept.
    let r = gc.sweep_at(later, 2048).unwrap();
    assert_eq!((r.scanned, r.expired, r.deleted, r.live()), (2, 1, 0, 1));
    assert_eq!(conntrack_entries(&cfg).len(), 2);
    // Above the threshold: the UDP entry goes.
    let r = gc.sweep_at(later, 1).unwrap();
    assert_eq!((r.scanned, r.expired, r.deleted, r.live()), (2, 1, 1, 1));
    let left = conntrack_entries(&cfg);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0.proto, PROTO_TCP);
}
