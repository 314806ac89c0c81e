//! Packet parsing: Ethernet (+ up to two 802.1Q/802.1ad tags), IPv4 (IHL, options,
//! fragments), IPv6 (bounded walk of extension headers, fragment header), TCP/UDP/SCTP ports,
//! ICMP/ICMPv6 (echo identifier, and the embedded tuple of error messages).
//!
//! Direct packet access with explicit bounds checks (the verifier proves them); the caller
//! pulls enough of a non-linear skb first (only when [`headers_linear`] says the headers are
//! not all in the linear area). Outcomes never let a packet pass as something it
//! is not:
//! * not IP -> [`Parsed::NonIp`];
//! * an IP header that is truncated or inconsistent -> [`Parsed::Malformed`] (addresses are
//!   not trustworthy, the packet is dropped);
//! * a valid IP header but truncated L4 header -> [`L4::Truncated`] (addresses known, the
//!   local pod's isolation decides);
//! * a non-first fragment -> [`Frag::Later`] (no L4 header; ports come from the fragment
//!   table).
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use netward_common::{
    FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Extension headers walked before giving up (the packet is then malformed).
const IPV6_MAX_EXT: usize = 8;

/// TCP header flags ([`L4::Ports`] carries them for TCP, 0 for other protocols).
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A TCP SYN without ACK: the first packet of a connection.
#[inline(always)]
pub fn tcp_opening(proto: u8, tcp_flags: u8) -> bool {
    proto == PROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A TCP FIN or RST: the connection is closing.
#[inline(always)]
pub fn tcp_closing(proto: u8, tcp_flags: u8) -> bool {
    proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Bytes the parser may need in the linear area (eth + 2 tags + IPv6 + ext headers + L4 + an
/// ICMP error's embedded IPv6 header and ports).
pub const PARSE_MAX: u32 = 256;

/// A flow's addresses, ports and protocol (ports in host byte order). 8-byte aligned so that
/// copies compile to word moves instead of byte loops.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Tuple {
    /// Addresses as two native-endian words (the packet's bytes in memory order; IPv4 in the
    /// first 4 bytes, rest zero), so building and comparing them needs no byte loops.
    pub saddr: [u64; 2],
    pub daddr: [u64; 2],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
}

/// The 16 address bytes of a [`Tuple`] address.
#[inline(always)]
pub fn addr_bytes(a: [u64; 2]) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid; memory order is what the words hold.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(a) }
}

#[inline(always)]
fn v4_word(b: &[u8]) -> [u64; 2] {
    [u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64, 0]
}

#[inline(always)]
fn v6_words(b: &[u8]) -> [u64; 2] {
    [
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    ]
}

impl Tuple {
    pub const fn empty() -> Self {
        Tuple {
            saddr: [0; 2],
            daddr: [0; 2],
            sport: 0,
            dport: 0,
            proto: 0,
            family: 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// First fragment of a datagram (carries the L4 header).
    First(u32),
    /// A later fragment: no L4 header.
    Later(u32),
}

#[derive(Clone, Copy)]
pub enum L4 {
    /// TCP/UDP/SCTP with ports in the tuple (TCP flags byte for TCP, else 0).
    Ports(u8),
    /// ICMP/ICMPv6 echo request/reply: both tuple ports hold the identifier.
    Echo,
    /// ICMP error carrying the tuple of the packet it is about (as that packet was sent).
    Error(Tuple),
    /// ICMPv6 neighbour discovery / router discovery / MLD: IPv6's ARP.
    NeighborDiscovery,
    /// Any other protocol or ICMP type: no ports.
    PortLess,
    /// The L4 header is cut short.
    Truncated,
    /// A later fragment: the L4 header is in the first fragment.
    Unknown,
}

pub enum Parsed {
    NonIp,
    Malformed,
    Ip(Packet),
}

pub struct Packet {
    pub t: Tuple,
    pub l4: L4,
    pub frag: Frag,
}

#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn u8_at(ctx: &TcContext, off: usize) -> Option<u8> {
    ptr_at::<u8>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
pub(crate) fn be16_at(ctx: &TcContext, off: usize) -> Option<u16> {
    ptr_at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// Whether the linear area already holds everything [`parse`] reads of this packet: the
/// common untagged IPv4/IPv6 (no extension headers) TCP/UDP/SCTP packet needs its headers
/// only. A data segment's payload usually sits in page fragments, and pulling it in would
/// copy, for TCP's transmit clones a whole new head: per packet, for nothing. Anything
/// else (tags, extension headers, ICMP errors) says no and is pulled as before.
#[inline(always)]
pub fn headers_linear(ctx: &TcContext) -> bool {
    let (l4, proto) = match be16_at(ctx, 12) {
        // The 20-byte header the parser reads whatever IHL says, then the options.
        Some(ETH_P_IP) => match ptr_at::<[u8; 20]>(ctx, ETH_HLEN) {
            Some(h) => {
                let h = unsafe { &*h };
                (ETH_HLEN + ((h[0] & 0x0f) as usize) * 4, h[9])
            }
            None => return false,
        },
        Some(ETH_P_IPV6) => match u8_at(ctx, ETH_HLEN + 6) {
            Some(nh) => (ETH_HLEN + 40, nh),
            None => return false,
        },
        _ => return false,
    };
    let min = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        _ => return false,
    };
    ptr_at::<u8>(ctx, l4 + min - 1).is_some()
}

/// Ethernet, an IPv4 header without options, a UDP header.
const V4_UDP_END: usize = ETH_HLEN + 20 + 8;
/// Ethernet, an IPv4 header without options, a TCP header without options.
const V4_TCP_END: usize = ETH_HLEN + 20 + 20;

/// The common packet in a few instructions: untagged IPv4 without options, not a fragment,
/// carrying TCP or UDP, its headers in the linear area. `None`: anything else, for
/// [`parse`]. What it returns is exactly what [`parse`] returns for the same packet; in real
/// traffic a program starts with cold caches, and the full parser's code for tags, IPv6
/// extension headers and ICMP errors costs more to fetch than to run.
#[inline(always)]
pub fn parse_common(ctx: &TcContext) -> Option<Packet> {
    let h = unsafe { &*ptr_at::<[u8; V4_UDP_END]>(ctx, 0)? };
    // Version 4 and IHL 5; a total length [`parse_v4`] accepts; neither a fragment offset
    // nor more-fragments.
    if u16::from_be_bytes([h[12], h[13]]) != ETH_P_IP
        || h[14] != 0x45
        || u16::from_be_bytes([h[16], h[17]]) < 20
        || h[20] & 0x3f != 0
        || h[21] != 0
    {
        return None;
    }
    let proto = h[23];
    let flags = match proto {
        PROTO_UDP => 0,
        // [`parse_l4`] wants the whole fixed header, else the packet is `Truncated`.
        PROTO_TCP => unsafe { (*ptr_at::<[u8; V4_TCP_END]>(ctx, 0)?)[ETH_HLEN + 20 + 13] },
        _ => return None,
    };
    Some(Packet {
        t: Tuple {
            saddr: v4_word(&h[26..30]),
            daddr: v4_word(&h[30..34]),
            sport: u16::from_be_bytes([h[34], h[35]]),
            dport: u16::from_be_bytes([h[36], h[37]]),
            proto,
            family: FAMILY_V4,
        },
        l4: L4::Ports(flags),
        frag: Frag::None,
    })
}

/// Parse the packet in `ctx`.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let Some(mut ethertype) = be16_at(ctx, 12) else {
        return Parsed::NonIp; // shorter than an Ethernet header: not IP either
    };
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner). On a real veth the kernel has
    // usually moved the tag to skb metadata already; tagged frames still reach tc egress.
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            match be16_at(ctx, off + 2) {
                Some(t) => ethertype = t,
                None => return Parsed::Malformed,
            }
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IP => parse_v4(ctx, off),
        ETH_P_IPV6 => parse_v6(ctx, off),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Malformed, // more than two tags
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, off: usize) -> Parsed {
    let mut t = Tuple::empty();
    t.family = FAMILY_V4;
    let Some(hdr) = ptr_at::<[u8; 20]>(ctx, off) else {
        return Parsed::Malformed;
    };
    let hdr = unsafe { *hdr };
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if hdr[0] >> 4 != 4 || ihl < 20 || total_len < ihl {
        return Parsed::Malformed;
    }
    // Options must be present in full.
    if ptr_at::<u8>(ctx, off + ihl - 1).is_none() {
        return Parsed::Malformed;
    }
    t.proto = hdr[9];
    t.saddr = v4_word(&hdr[12..16]);
    t.daddr = v4_word(&hdr[16..20]);
    let frag_field = u16::from_be_bytes([hdr[6], hdr[7]]);
    let id = u16::from_be_bytes([hdr[4], hdr[5]]) as u32;
    let frag = if frag_field & 0x1fff != 0 {
        Frag::Later(id)
    } else if frag_field & 0x2000 != 0 {
        Frag::First(id)
    } else {
        Frag::None
    };
    let l4 = if let Frag::Later(_) = frag {
        L4::Unknown
    } else {
        parse_l4(ctx, off + ihl, &mut t)
    };
    Parsed::Ip(Packet { t, l4, frag })
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, off: usize) -> Parsed {
    let mut t = Tuple::empty();
    t.family = FAMILY_V6;
    let Some(hdr) = ptr_at::<[u8; 40]>(ctx, off) else {
        return Parsed::Malformed;
    };
    let hdr = unsafe { &*hdr };
    if hdr[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    t.saddr = v6_words(&hdr[8..24]);
    t.daddr = v6_words(&hdr[24..40]);
    let mut nh = hdr[6];
    let mut off = off + 40;
    let mut frag = Frag::None;
    let mut done = false;
    for _ in 0..IPV6_MAX_EXT {
        if !matches!(nh, 0 | 43 | 60 | 51 | 44) {
            done = true;
            break;
        }
        // Every extension header is at least 8 bytes: read them at once.
        let Some(h) = ptr_at::<[u8; 8]>(ctx, off) else {
            return Parsed::Malformed;
        };
        let h = unsafe { *h };
        let cur = nh;
        nh = h[0];
        match cur {
            // Authentication header: (len + 2) * 4 bytes.
            51 => off += (h[1] as usize + 2) * 4,
            // Fragment header: 8 bytes; offset (13 bits) and M flag.
            44 => {
                off += 8;
                let fo = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if fo & 0xfff8 != 0 {
                    frag = Frag::Later(id);
                    done = true;
                    break;
                } else if fo & 1 != 0 {
                    frag = Frag::First(id);
                }
            }
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            _ => off += (h[1] as usize + 1) * 8,
        }
    }
    if !done {
        return Parsed::Malformed; // extension header chain too long
    }
    t.proto = nh;
    let l4 = if let Frag::Later(_) = frag {
        L4::Unknown
    } else {
        parse_l4(ctx, off, &mut t)
    };
    Parsed::Ip(Packet { t, l4, frag })
}

/// Fill the tuple's ports from the L4 header at `off`.
#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, t: &mut Tuple) -> L4 {
    match t.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let min = match t.proto {
                PROTO_TCP => 20,
                PROTO_UDP => 8,
                _ => 12,
            };
            if ptr_at::<u8>(ctx, off + min - 1).is_none() {
                return L4::Truncated;
            }
            let (Some(sport), Some(dport)) = (be16_at(ctx, off), be16_at(ctx, off + 2)) else {
                return L4::Truncated;
            };
            t.sport = sport;
            t.dport = dport;
            let flags = if t.proto == PROTO_TCP {
                u8_at(ctx, off + 13).unwrap_or(0)
            } else {
                0
            };
            L4::Ports(flags)
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let Some(h) = ptr_at::<[u8; 8]>(ctx, off) else {
                return L4::Truncated;
            };
            let h = unsafe { *h };
            let ty = h[0];
            let v6 = t.proto == PROTO_ICMPV6;
            let echo = if v6 {
                ty == 128 || ty == 129
            } else {
                ty == 8 || ty == 0
            };
            let error = if v6 {
                (1..=4).contains(&ty)
            } else {
                matches!(ty, 3 | 4 | 5 | 11 | 12)
            };
            if echo {
                let id = u16::from_be_bytes([h[4], h[5]]);
                t.sport = id;
                t.dport = id;
                L4::Echo
            } else if error {
                match parse_inner(ctx, off + 8, v6) {
                    Some(inner) => L4::Error(inner),
                    None => L4::PortLess, // cannot relate it: treated as plain ICMP
                }
            } else if v6 && matches!(ty, 130..=137 | 143) {
                L4::NeighborDiscovery
            } else {
                L4::PortLess
            }
        }
        _ => L4::PortLess,
    }
}

/// The header of the packet an ICMP error is about (no extension-header walk, no options
/// beyond IHL; ports when present).
#[inline(always)]
fn parse_inner(ctx: &TcContext, off: usize, v6: bool) -> Option<Tuple> {
    let mut t = Tuple::empty();
    let l4off;
    if v6 {
        let hdr = unsafe { &*ptr_at::<[u8; 40]>(ctx, off)? };
        t.family = FAMILY_V6;
        t.proto = hdr[6];
        t.saddr = v6_words(&hdr[8..24]);
        t.daddr = v6_words(&hdr[24..40]);
        l4off = off + 40;
    } else {
        let hdr = unsafe { *ptr_at::<[u8; 20]>(ctx, off)? };
        let ihl = ((hdr[0] & 0x0f) as usize) * 4;
        if hdr[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        t.family = FAMILY_V4;
        t.proto = hdr[9];
        t.saddr = v4_word(&hdr[12..16]);
        t.daddr = v4_word(&hdr[16..20]);
        l4off = off + ihl;
    }
    match t.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            t.sport = be16_at(ctx, l4off)?;
            t.dport = be16_at(ctx, l4off + 2)?;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = be16_at(ctx, l4off + 4)?;
            t.sport = id;
            t.dport = id;
        }
        _ => {}
    }
    Some(t)
}

/// Whether a protocol's policy entries are keyed by destination port.
#[inline(always)]
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}
