//! netward's tc programs. Attached to the host side of each local pod's veth:
//! tc ingress carries what the pod sends (its egress), tc egress what it receives (its ingress).
//!
//! Per packet (one module per concern, like Cilium's bpf/lib):
//! [`parse`] (the common untagged IPv4 TCP/UDP packet in a few instructions, anything else
//! through the full parser) -> `CONFIG` (live slot, generation) -> [`flowcache`] (this CPU's
//! copy of recent conntrack verdicts) -> `opaque` (the parser's constants hidden from the
//! verifier) -> [`conntrack`] (one entry per flow: established, reply, related) ->
//! [`policy`] (ipcache + policy LPM, constant number of lookups) -> [`counters`], [`events`].
//!
//! Verdicts for traffic NetworkPolicy leaves undefined (also in DATAPATH.md of the report):
//! * non-IP (ARP, LLDP, ...) passes: policies are about IP traffic, and pods need ARP;
//! * ICMPv6 neighbour/router discovery and MLD (types 130-137, 143) pass like ARP;
//! * ICMP/ICMPv6 echo and every other IP protocol are policy-checked like any protocol, with
//!   port 0: only rules without ports (or with protocol only, no port) allow them. Echo replies
//!   and ICMP errors about a tracked flow pass through conntrack;
//! * non-first fragments use the ports the first fragment recorded (`FRAGS`), and then get the
//!   verdict of their flow; a fragment whose first fragment was not seen passes only when the
//!   local pod is not isolated in that direction;
//! * an IP header that is truncated or inconsistent is dropped; a valid IP header with a
//!   truncated TCP/UDP/SCTP/ICMP header is dropped when the local pod is isolated in that
//!   direction (or unknown while failing closed), since its ports cannot be checked;
//! * before the first Plan is installed (`CFG_READY` unset) IP traffic is dropped;
//! * packets into the pod that the node itself generated (`ingress_ifindex == 0` at the pod's
//!   ingress hook: kubelet probes, hostNetwork pods) pass (`FROM_HOST`) and are tracked so the
//!   pod's replies pass too: NetworkPolicy always allows traffic from the pod's own node.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod decisioncache;
mod deliver;
mod events;
mod flowcache;
mod maps;
mod parse;
mod policy;
mod service;
mod table;
mod time;

use core::hint::cold_path;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use netward_common::{
    reason, FragKey, FragValue, CFG_DIRECT, CFG_EVENTS_ALLOW, CFG_READY, COUNTER_DIRECT,
    COUNTER_DIRECT_FALLBACK, DIR_EGRESS, DIR_INGRESS, FRAG_TIMEOUT_S,
};

use crate::{
    conntrack::Hit,
    maps::{CONFIG, FRAGS},
    parse::{addr_bytes, has_ports, Frag, Parsed, Tuple, L4, PARSE_MAX},
    policy::Decision,
};

/// Packets leaving the pod (host-side tc ingress): the pod's egress. Inlined into the
/// classifier's entry: the body outgrew LLVM's threshold, and a BPF-to-BPF call cost every
/// packet ~7 ns.
#[classifier]
#[inline(always)]
pub fn netward_egress(ctx: TcContext) -> i32 {
    enforce(&ctx, DIR_EGRESS)
}

/// Packets entering the pod (host-side tc egress): the pod's ingress.
#[classifier]
#[inline(always)]
pub fn netward_ingress(ctx: TcContext) -> i32 {
    enforce(&ctx, DIR_INGRESS)
}

/// Does nothing: the `BPF_PROG_TEST_RUN` floor the benchmark subtracts (never attached).
#[classifier]
pub fn netward_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn enforce(ctx: &TcContext, dir: u8) -> i32 {
    let parsed = match parse::parse_common(ctx) {
        Some(p) => Parsed::Ip(p),
        None => {
            // Laid out after the common packet's path (fewer instruction lines per run).
            cold_path();
            // Make the headers directly accessible when the skb is non-linear.
            let want = if ctx.len() < PARSE_MAX {
                ctx.len()
            } else {
                PARSE_MAX
            };
            if ((ctx.data_end() - ctx.data()) as u32) < want && !parse::headers_linear(ctx) {
                let _ = ctx.pull_data(want);
            }
            parse::parse(ctx)
        }
    };
    let (r, direct, routed) = decide(ctx, dir, parsed);
    counters::verdict(dir, r);
    if r < reason::FIRST_DROP {
        // A packet of a flow delivered between two local pods: straight to the other veth
        // (see `deliver`); new flows were routed when they were admitted.
        if direct {
            if routed || deliver::route(ctx, false) {
                if let Some(act) = deliver::send(ctx) {
                    counters::bump(COUNTER_DIRECT);
                    return act;
                }
            }
            cold_path();
            counters::bump(COUNTER_DIRECT_FALLBACK);
        }
        // Pass on to the next program / the stack: otherwise we only ever drop.
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT as i32
    }
}

const NS: u64 = 1_000_000_000;

/// This CPU's scratch words for [`opaque`].
#[map]
static OPAQUE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// `w` as values neither LLVM nor the verifier knows: stored to this CPU's scratch words and
/// loaded back. The parser hands on constants that differ by path (protocol, family, a
/// fragment, an ICMP error), and ordering a flow's ends branches (`conntrack::side_mask`);
/// carried into the flow's code, they made the verifier walk that code (conntrack, the
/// policy check, events) once per combination. Loaded back, every path carries the same
/// unknown values and meets the others at once (with conntrack's ordering the egress program
/// went over the verifier's limit of 1M instructions; through this, it verifies in ~400k).
/// `None` never happens (one entry).
#[inline(always)]
fn opaque(w: [u64; 2]) -> Option<[u64; 2]> {
    let p = OPAQUE.get_ptr_mut(0)?;
    unsafe {
        core::ptr::write_volatile(p, w);
        Some(core::ptr::read_volatile(p))
    }
}

#[inline(always)]
fn frag_key(t: &Tuple, id: u32, dir: u8) -> FragKey {
    FragKey {
        saddr: addr_bytes(t.saddr),
        daddr: addr_bytes(t.daddr),
        id,
        proto: t.proto,
        family: t.family,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
fn decide(ctx: &TcContext, dir: u8, parsed: Parsed) -> (u8, bool, bool) {
    let mut pkt = match parsed {
        Parsed::NonIp => {
            cold_path();
            return (reason::NON_IP, false, false);
        }
        Parsed::Malformed => {
            cold_path();
            let d = plain(reason::MALFORMED, 0);
            emit_with_config(ctx, &Tuple::empty(), dir, &d);
            return (reason::MALFORMED, false, false);
        }
        Parsed::Ip(p) => p,
    };
    let Some(cfg) = CONFIG.get(0) else {
        cold_path();
        return (reason::NOT_READY, false, false);
    };
    let generation = cfg.generation;
    let slot = (generation & 1) as u8;
    let flags = cfg.flags;
    let (rate, burst) = (cfg.events_per_sec, cfg.events_burst);
    let t = &mut pkt.t;
    // Locally generated (the node's own stack, not forwarded from any device): only on the
    // pod's ingress hook, where forwarded packets carry the device they arrived on.
    let from_host = dir == DIR_INGRESS && unsafe { (*ctx.skb.skb).ingress_ifindex } == 0;
    if flags & CFG_READY == 0 {
        cold_path();
        let d = plain(reason::NOT_READY, 0);
        events::emit(ctx, t, dir, &d, generation, rate, burst);
        return (reason::NOT_READY, false, false);
    }
    let mut tcp_flags = 0;
    let mut related_error = false;
    match pkt.l4 {
        L4::NeighborDiscovery => {
            cold_path();
            return (reason::NEIGHBOR_DISCOVERY, false, false);
        }
        L4::Truncated => {
            cold_path();
            if from_host {
                return (reason::FROM_HOST, false, false);
            }
            let local = addr_bytes(if dir == DIR_EGRESS { t.saddr } else { t.daddr });
            let d = policy::check_portless_fallback(
                slot,
                flags,
                dir,
                t.family,
                &local,
                reason::MALFORMED,
                reason::NOT_ISOLATED,
            );
            if !d.allows() {
                events::emit(ctx, t, dir, &d, generation, rate, burst);
            }
            return (d.reason, false, false);
        }
        L4::Unknown => {
            cold_path();
            // A later fragment: find the ports its first fragment carried.
            let id = match pkt.frag {
                Frag::Later(id) => id,
                _ => 0,
            };
            let fk = frag_key(t, id, dir);
            let mut found = false;
            if let Some(fv) = FRAGS.get_ptr(&fk) {
                let fv = unsafe { &*fv };
                if time::now_ns() <= fv.expires_ns {
                    t.sport = fv.sport;
                    t.dport = fv.dport;
                    found = true;
                }
            }
            if !found {
                if from_host {
                    return (reason::FROM_HOST, false, false);
                }
                let local = addr_bytes(if dir == DIR_EGRESS { t.saddr } else { t.daddr });
                let d = policy::check_portless_fallback(
                    slot,
                    flags,
                    dir,
                    t.family,
                    &local,
                    reason::FRAGMENT_UNTRACKED,
                    reason::FRAGMENT,
                );
                if !d.allows() {
                    events::emit(ctx, t, dir, &d, generation, rate, burst);
                }
                return (d.reason, false, false);
            }
        }
        L4::Error(inner) => {
            cold_path();
            if conntrack::related(&inner) {
                return (reason::RELATED, false, false);
            }
            related_error = true;
        }
        L4::Ports(f) => tcp_flags = f,
        L4::Echo | L4::PortLess => {}
    }

    let first_frag = match pkt.frag {
        Frag::First(id) => id as u64 | 1 << 32,
        _ => 0,
    };
    // Fragments always take the node's path ([`may_deliver`]).
    let fragment = !matches!(pkt.frag, Frag::None);
    // This CPU's flow cache: a packet of a flow conntrack passed within the second (not one
    // that opens it, nor a first fragment, whose ports later fragments need; one that closes
    // it only once conntrack has the flow closing).
    let f = conntrack::flow(t, dir);
    if first_frag == 0 && !parse::tcp_opening(t.proto, tcp_flags) {
        let closing = parse::tcp_closing(t.proto, tcp_flags);
        if let Some((r, direct)) = flowcache::get(&f, dir, generation, closing) {
            return (r, direct && may_deliver(dir, flags, fragment), false);
        }
    }
    // Everything below meets the parser's constants (protocol, family, ports, a fragment,
    // an ICMP error) and the order of the flow's ends as values it does not know (see
    // `opaque`): the verifier walks conntrack, the policy check and the events once, not
    // once per protocol, packet kind and order.
    let w = t.sport as u64
        | (t.dport as u64) << 16
        | (t.proto as u64) << 32
        | (t.family as u64) << 40
        | (tcp_flags as u64) << 48
        | (related_error as u64) << 56
        | (conntrack::side_mask(&f) & 1) << 57
        | (fragment as u64) << 58;
    let Some([w, first_frag]) = opaque([w, first_frag]) else {
        return (reason::NOT_READY, false, false);
    };
    let m = ((w >> 57) & 1).wrapping_neg();
    t.sport = w as u16;
    t.dport = (w >> 16) as u16;
    t.proto = (w >> 32) as u8;
    t.family = (w >> 40) as u8;
    let tcp_flags = (w >> 48) as u8;
    let related_error = (w >> 56) & 1 != 0;
    let fragment = (w >> 58) & 1 != 0;
    // Whether the packet is delivered straight to the other pod's veth, and whether it was
    // routed for that already (a new flow's opening packet).
    let mut direct = false;
    let mut routed = false;

    // Conntrack: one lookup for the flow; established or reply. A TCP SYN without ACK opens
    // a flow, it is never an established packet or a reply: the policy decides it without
    // that lookup (a retransmitted SYN is decided again and renews the entry; the peer's SYN
    // of a simultaneous open meets the policy like any opening). The flow is built again from
    // the values loaded back: the first one still carries the parser's constants.
    let f = conntrack::flow(t, dir);
    let hit = if parse::tcp_opening(t.proto, tcp_flags) {
        Hit::Miss
    } else {
        conntrack::lookup(&f, m, dir, tcp_flags, flags, generation)
    };
    let mut r = match hit {
        Hit::Pass(r, d) => {
            direct = d && may_deliver(dir, flags, fragment);
            r
        }
        Hit::Revoked(d) => {
            cold_path();
            let d = plain(reason::REVOKED, d.endpoint);
            events::emit(ctx, t, dir, &d, generation, rate, burst);
            return (reason::REVOKED, false, false);
        }
        Hit::Miss => reason::POLICY_DENY,
    };
    if r == reason::POLICY_DENY {
        // A new flow: the policy decides.
        let (local, peer) = if dir == DIR_EGRESS {
            (t.saddr, t.daddr)
        } else {
            (t.daddr, t.saddr)
        };
        let port = if has_ports(t.proto) { t.dport } else { 0 };
        let (local, peer) = (addr_bytes(local), addr_bytes(peer));
        let d = if from_host {
            plain(reason::FROM_HOST, 0)
        } else {
            policy::check(
                generation, flags, dir, t.family, &local, &peer, t.proto, port,
            )
        };
        if d.allows() {
            if !related_error {
                // Only a TCP flow's opening SYN starts a direct flow (`CT_DIRECT`): any other
                // packet without an entry may belong to a flow netfilter already knows.
                direct = may_deliver(dir, flags, fragment)
                    && parse::tcp_opening(t.proto, tcp_flags)
                    && deliver::route(ctx, true);
                routed = direct;
                conntrack::create(&f, m, dir, &d, tcp_flags, generation, from_host, direct);
            }
            if flags & CFG_EVENTS_ALLOW != 0 {
                events::emit(ctx, t, dir, &d, generation, rate, burst);
            }
        } else {
            events::emit(ctx, t, dir, &d, generation, rate, burst);
        }
        r = d.reason;
    }
    if r < reason::FIRST_DROP {
        if first_frag != 0 {
            cold_path();
            let id = first_frag as u32;
            let fv = FragValue {
                sport: t.sport,
                dport: t.dport,
                _pad: 0,
                expires_ns: time::now_ns() + FRAG_TIMEOUT_S * NS,
            };
            let _ = FRAGS.insert(&frag_key(t, id, dir), &fv, 0);
        }
    }
    (r, direct, routed)
}

/// Whether a packet at the hook of `dir` may be delivered straight to another pod's veth
/// (see `deliver`), its flow permitting: only from the sender's side (the pod's egress), with
/// the option on (`flags`: the Config's), and never a fragment (netfilter reassembles a
/// flow's fragments only if it sees all of them).
#[inline(always)]
fn may_deliver(dir: u8, flags: u32, fragment: bool) -> bool {
    dir == DIR_EGRESS && flags & CFG_DIRECT != 0 && !fragment
}

#[inline(always)]
fn plain(reason: u8, endpoint: u32) -> Decision {
    Decision {
        reason,
        policy: 0,
        rule: 0,
        endpoint,
    }
}

#[inline(always)]
fn emit_with_config(ctx: &TcContext, t: &Tuple, dir: u8, d: &Decision) {
    if let Some(cfg) = CONFIG.get(0) {
        events::emit(
            ctx,
            t,
            dir,
            d,
            cfg.generation,
            cfg.events_per_sec,
            cfg.events_burst,
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
