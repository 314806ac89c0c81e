//! Same-node delivery: a TCP flow between two local pods goes from the sender's veth straight
//! to the receiver's (`bpf_redirect` from the sender's tc ingress to the receiver's host veth,
//! whose tc egress still runs the receiver's program), skipping the node's IP stack in between:
//! routing input, netfilter (conntrack, iptables), forwarding, neighbour output. Like Cilium's
//! `fib.h`, the kernel's own FIB says where the packet would go and with which MAC addresses,
//! so policy routing and the node's routes are obeyed; only a destination behind a pod veth
//! carrying netward's programs (`POD_VETHS`, kept by the agent) qualifies, never an uplink, a
//! bridge or a tunnel, where the node's stack has work to do (masquerade, encapsulation).
//!
//! All or nothing per flow: netfilter must see every packet of a flow or none (it would
//! otherwise hold a half-open entry for minutes, or meet packets of a flow it does not know).
//! So a flow is delivered directly only when its opening TCP SYN was (`CT_DIRECT` in its
//! conntrack entry); a Service flow opens towards a virtual address, which no pod veth routes,
//! so the flows netfilter translates never qualify and their replies always return through
//! it. A packet of a direct flow that cannot be delivered (its route no longer leads to a pod
//! veth, TTL exhausted, a fragment) takes the node's path like before, where netfilter picks
//! the flow up mid-stream (its default, `nf_conntrack_tcp_loose`).
//!
//! The packet is forwarded as a router would: TTL (hop limit) decremented, MAC addresses
//! rewritten from the FIB's neighbour entry; when the neighbour is not resolved yet,
//! `bpf_redirect_neigh` resolves it.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT,
    },
    helpers::{
        bpf_jiffies64,
        generated::{
            bpf_fib_lookup as fib_lookup, bpf_l3_csum_replace, bpf_redirect, bpf_redirect_neigh,
            bpf_skb_store_bytes,
        },
    },
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use netward_common::{cache_index, POD_VETH_WORDS};

use crate::flowcache;
use crate::parse::{be16_at, ptr_at, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Ethernet + a fixed IPv4 header, Ethernet + the IPv6 header.
const V4_END: usize = ETH_HLEN + 20;
const V6_END: usize = ETH_HLEN + 40;

/// Interface indices of the pod veths netward enforces on, as a bitmap (see
/// `netward_common::POD_VETH_WORDS`). Written by the agent when it attaches and detaches.
#[map(name = "POD_VETHS")]
pub static POD_VETHS: Array<u64> = Array::pinned(POD_VETH_WORDS, 0);

/// This CPU's FIB lookups: the helper's in-out parameter (64 bytes, kept off the stack). 0:
/// the forward lookup, between [`route`] and [`send`] the route found; 1: the reverse-path
/// check.
#[map(name = "FIB")]
static FIB: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(2, 0);

/// Ask the FIB (`flags`: `BPF_FIB_LOOKUP_*`) with the parameters in `p`: `Some(no_neigh)`
/// when it routes the packet, with or without a resolved neighbour.
#[inline(always)]
fn fib(ctx: &TcContext, p: &mut bpf_fib_lookup, flags: u32) -> Option<bool> {
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Some(false)
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Some(true)
    } else {
        None
    }
}

/// Whether interface `ifindex` is a pod veth with netward's programs.
#[inline(always)]
fn pod_veth(ifindex: u32) -> bool {
    match POD_VETHS.get(ifindex / 64) {
        Some(w) => w >> (ifindex % 64) & 1 != 0,
        None => false,
    }
}

/// Slots of each CPU's [`HOPS`] (a power of two; 64 bytes each).
const HOP_SLOTS: u32 = 256;

/// A recent FIB answer for a destination: where packets to `addr` arriving on `iif` go (pod
/// veth `oif`, with these MAC addresses).
#[repr(C)]
pub struct Hop {
    addr: [u64; 2],
    iif: u32,
    oif: u32,
    /// `bpf_jiffies64()` at the fill (0: empty).
    jiffies: u64,
    dmac: [u8; 6],
    smac: [u8; 6],
    family: u8,
    _pad: [u8; 19],
}

/// Each CPU's recent FIB answers, direct-mapped by destination: the packets of a direct flow
/// after its SYN take their route from here for up to a second (the flow cache's window)
/// instead of a FIB lookup each, which measured ~170 ns of program time a packet in the lab
/// (cold FIB and neighbour tables, on the one CPU that runs client, server and softirqs). A route or
/// neighbour change reaches a flow within that second; a veth that loses its mark in
/// `POD_VETHS` stops receiving at once (checked on every hit). Only answers with a resolved
/// neighbour are kept.
#[map(name = "HOPS")]
static HOPS: PerCpuArray<Hop> = PerCpuArray::with_max_entries(HOP_SLOTS, 0);

/// Whether the packet in `ctx` (an untagged IP packet arriving on a pod's host veth) can be
/// delivered straight to the pod veth the node routes it to: the route is in this CPU's
/// `FIB` entry for [`send`]. A flow's `opening` packet always asks the FIB, and also checks
/// that its source address is routed back through the veth it came from (a strict
/// reverse-path check, as the node's `rp_filter=1` would make): a pod cannot open a direct
/// flow under another pod's address. Its other packets may take the route from [`HOPS`].
#[inline(always)]
pub fn route(ctx: &TcContext, opening: bool) -> bool {
    let Some(p) = FIB.get_ptr_mut(0) else {
        return false;
    };
    let p = unsafe { &mut *p };
    // Untagged IPv4 or IPv6 whose TTL (hop limit) survives the hop; read again here rather
    // than carried from the parser: a few loads, and the parser's values stay out of the
    // code the verifier walks per path. Addresses as IPv6-sized arrays of words (IPv4 in the
    // first), the FIB's own layout.
    let Some(ethertype) = be16_at(ctx, 12) else {
        return false;
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The sender's veth first: an unmarked one never delivers, whatever the route.
    if !pod_veth(ifindex) {
        return false;
    }
    let mut src = [0u32; 4];
    let mut dst = [0u32; 4];
    let (family, proto, tos, flowinfo);
    if ethertype == ETH_P_IP {
        let Some(h) = ptr_at::<[u8; V4_END]>(ctx, 0) else {
            return false;
        };
        let h = unsafe { &*h };
        if h[ETH_HLEN + 8] <= 1 {
            return false;
        }
        family = AF_INET;
        proto = h[ETH_HLEN + 9];
        tos = h[ETH_HLEN + 1];
        flowinfo = 0;
        let a = ETH_HLEN + 12;
        src[0] = u32::from_ne_bytes([h[a], h[a + 1], h[a + 2], h[a + 3]]);
        dst[0] = u32::from_ne_bytes([h[a + 4], h[a + 5], h[a + 6], h[a + 7]]);
    } else if ethertype == ETH_P_IPV6 {
        let Some(h) = ptr_at::<[u8; V6_END]>(ctx, 0) else {
            return false;
        };
        let h = unsafe { &*h };
        if h[ETH_HLEN + 7] <= 1 {
            return false;
        }
        family = AF_INET6;
        proto = h[ETH_HLEN + 6];
        tos = 0;
        flowinfo = u32::from_ne_bytes([
            h[ETH_HLEN],
            h[ETH_HLEN + 1],
            h[ETH_HLEN + 2],
            h[ETH_HLEN + 3],
        ]) & u32::from_ne_bytes([0x0f, 0xff, 0xff, 0xff]);
        for i in 0..4 {
            let s = ETH_HLEN + 8 + 4 * i;
            let d = s + 16;
            src[i] = u32::from_ne_bytes([h[s], h[s + 1], h[s + 2], h[s + 3]]);
            dst[i] = u32::from_ne_bytes([h[d], h[d + 1], h[d + 2], h[d + 3]]);
        }
    } else {
        return false;
    }
    let addr = [
        dst[0] as u64 | (dst[1] as u64) << 32,
        dst[2] as u64 | (dst[3] as u64) << 32,
    ];
    let slot =
        cache_index(&addr, &[0, 0], ifindex as u64 | (family as u64) << 32) & (HOP_SLOTS - 1);
    if !opening {
        if let Some(e) = HOPS.get_ptr(slot) {
            let e = unsafe { &*e };
            let age = unsafe { bpf_jiffies64() }.wrapping_sub(e.jiffies);
            if age < flowcache::window()
                && e.addr[0] == addr[0]
                && e.addr[1] == addr[1]
                && e.iif == ifindex
                && e.family == family
                && pod_veth(e.oif)
            {
                p.family = family;
                p.ifindex = e.oif;
                p.__bindgen_anon_5.__bindgen_anon_1.h_vlan_TCI = 0;
                p.dmac = e.dmac;
                p.smac = e.smac;
                return true;
            }
        }
    }
    *p = unsafe { core::mem::zeroed() };
    p.ifindex = ifindex;
    p.family = family;
    p.l4_protocol = proto;
    p.__bindgen_anon_2.flowinfo = flowinfo;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv6_src = src;
    p.__bindgen_anon_4.ipv6_dst = dst;
    // An input lookup as for a packet arriving on `ifindex` (policy rules, forwarding
    // enabled on it, the MTU of the way out). Without a resolved neighbour the route still
    // names the interface (kernel 6.1+, d1c362e1dd68); `send` resolves it then.
    let Some(no_neigh) = fib(ctx, p, 0) else {
        return false;
    };
    // Remember which of the two it was in the (otherwise unused) VLAN field.
    p.__bindgen_anon_5.__bindgen_anon_1.h_vlan_TCI = no_neigh as u16;
    if p.ifindex == ifindex || !pod_veth(p.ifindex) {
        return false;
    }
    if opening && !routed_back(ctx, p, ifindex) {
        return false;
    }
    if !no_neigh {
        if let Some(e) = HOPS.get_ptr_mut(slot) {
            let e = unsafe { &mut *e };
            e.addr = addr;
            e.iif = ifindex;
            e.oif = p.ifindex;
            e.dmac = p.dmac;
            e.smac = p.smac;
            e.family = family;
            e.jiffies = unsafe { bpf_jiffies64() };
        }
    }
    true
}

/// Whether the source of the packet `p` was just looked up for is routed out through
/// `ifindex`: an output lookup of the source bound to that interface, which only a route
/// through it answers. The packet's other fields are what the forward lookup left in `p`
/// (its source, the family), read before they are overwritten.
#[inline(always)]
fn routed_back(ctx: &TcContext, fwd: &bpf_fib_lookup, ifindex: u32) -> bool {
    let Some(r) = FIB.get_ptr_mut(1) else {
        return false;
    };
    let r = unsafe { &mut *r };
    *r = unsafe { core::mem::zeroed() };
    r.family = fwd.family;
    r.ifindex = ifindex;
    // The forward lookup leaves the source as it was.
    r.__bindgen_anon_4.ipv6_dst = unsafe { fwd.__bindgen_anon_3.ipv6_src };
    fib(ctx, r, BPF_FIB_LOOKUP_OUTPUT).is_some() && r.ifindex == ifindex
}

/// Forward the packet along the route [`route`] found (`TC_ACT_REDIRECT`), or `None` when it
/// cannot be rewritten. Written through helpers, never through packet pointers: a program
/// that writes packet memory directly gets a prologue from the verifier that un-clones any
/// cloned skb on every run, also the runs that write nothing (and a TCP sender's packets are
/// all clones); the helpers un-clone only when they write.
#[inline(always)]
pub fn send(ctx: &TcContext) -> Option<i32> {
    let p = unsafe { &*FIB.get_ptr(0)? };
    let no_neigh = unsafe { p.__bindgen_anon_5.__bindgen_anon_1.h_vlan_TCI } != 0;
    let skb = ctx.skb.skb;
    if p.family == AF_INET {
        let h = unsafe { &*ptr_at::<[u8; V4_END]>(ctx, 0)? };
        let (ttl, proto) = (h[ETH_HLEN + 8], h[ETH_HLEN + 9]);
        // TTL - 1, and the header checksum adjusted for its 16-bit word.
        let old = u16::from_ne_bytes([ttl, proto]) as u64;
        let new = u16::from_ne_bytes([ttl - 1, proto]) as u64;
        let ttl = [ttl - 1];
        unsafe {
            if bpf_l3_csum_replace(skb, (ETH_HLEN + 10) as u32, old, new, 2) != 0
                || bpf_skb_store_bytes(skb, (ETH_HLEN + 8) as u32, ttl.as_ptr() as *const _, 1, 0)
                    != 0
            {
                return None;
            }
        }
    } else {
        let h = unsafe { &*ptr_at::<[u8; V6_END]>(ctx, 0)? };
        let hops = [h[ETH_HLEN + 7] - 1];
        if unsafe {
            bpf_skb_store_bytes(skb, (ETH_HLEN + 7) as u32, hops.as_ptr() as *const _, 1, 0)
        } != 0
        {
            return None;
        }
    }
    let rc = if no_neigh {
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = p.family as u32;
        // The FIB left the next hop in the destination (the gateway, if the route has one).
        nh.__bindgen_anon_1.ipv6_nh = unsafe { p.__bindgen_anon_4.ipv6_dst };
        unsafe {
            bpf_redirect_neigh(
                p.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }
    } else {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&p.dmac);
        macs[6..].copy_from_slice(&p.smac);
        if unsafe { bpf_skb_store_bytes(skb, 0, macs.as_ptr() as *const _, 12, 0) } != 0 {
            return None;
        }
        unsafe { bpf_redirect(p.ifindex, 0) }
    };
    Some(rc as i32)
}
