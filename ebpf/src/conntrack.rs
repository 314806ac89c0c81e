//! Connection tracking: an LRU hash of admitted flows (`CT_PAIRS`), ONE entry per flow. The
//! key holds the flow's two ends in a canonical order (`CtPairKey`: the lower (address, port)
//! first), the value the lifetime they share and each end's verdict (`CtSide`, `sides[0]` for
//! the lower end). A veth's program reads the side of its own pod, the flow's `local` end
//! (source on its egress hook, destination on its ingress hook):
//! * both directions of a flow at one veth find the entry with ONE lookup; the side's
//!   `CT_ORIGIN_EGRESS` says which hook admitted the flow: a packet at that hook is
//!   `established`, at the other one a `reply`;
//! * the two veths of a same-node pod pair share the entry, each with its own side, so both
//!   pods' policies are still checked; the receiver's program finds the entry the sender's
//!   wrote a moment before, a warm line, instead of a cold line of its own (a short
//!   connection's SYN wrote two entries, one per veth, each a cache miss);
//! * a side that is not `CT_TRACKED` (the other end is a remote address, or its veth has not
//!   admitted the flow yet) is a miss for its veth.
//!
//! Timeouts (refreshed by every packet that reads the entry, checked on lookup; the LRU evicts
//! earlier under pressure): TCP 6 h, other protocols 60 s, TCP after FIN or RST 10 s. The
//! `flowcache` in front answers for a flow `CT_PAIRS` passed less than a second ago, so a busy
//! flow reads (and refreshes) its entry about once a second per CPU.
//!
//! Each side records the Plan generation it was verified under. When `CONFIG.generation`
//! moves on, the next packet of the flow (either direction) at that side's veth re-checks the
//! flow as opened (origin direction) against the current Plan: still allowed -> the side is
//! stamped with the new generation; now denied -> the side is cleared (the entry deleted when
//! no side is left) and the packet dropped (`reason::REVOKED`).

use netward_common::{
    ends_swapped, reason, CtPairKey, CtPairValue, CtSide, CT_CLOSING, CT_DIRECT, CT_FROM_HOST,
    CT_ORIGIN_EGRESS, CT_TIMEOUT_CLOSING_S, CT_TIMEOUT_OTHER_S, CT_TIMEOUT_TCP_S, CT_TRACKED,
    DIR_EGRESS, DIR_INGRESS, PROTO_TCP,
};

use crate::{
    flowcache,
    maps::CT,
    parse::{addr_bytes, has_ports, tcp_closing, tcp_opening, Tuple},
    policy::{self, Decision},
};

const NS: u64 = 1_000_000_000;

/// A flow in the veth's canonical orientation (addresses as in [`Tuple`]).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Flow {
    pub local: [u64; 2],
    pub remote: [u64; 2],
    pub lport: u16,
    pub rport: u16,
    pub proto: u8,
    pub family: u8,
}

/// The flow of a packet seen at the hook of direction `dir`.
#[inline(always)]
pub fn flow(t: &Tuple, dir: u8) -> Flow {
    oriented(t, dir == DIR_EGRESS)
}

/// `t` with its source as `local` (`src_local`) or its destination.
#[inline(always)]
fn oriented(t: &Tuple, src_local: bool) -> Flow {
    let (local, remote, lport, rport) = if src_local {
        (t.saddr, t.daddr, t.sport, t.dport)
    } else {
        (t.daddr, t.saddr, t.dport, t.sport)
    };
    Flow {
        local,
        remote,
        lport,
        rport,
        proto: t.proto,
        family: t.family,
    }
}

/// The flow as its other end sees it.
#[inline(always)]
fn reversed(f: &Flow) -> Flow {
    Flow {
        local: f.remote,
        remote: f.local,
        lport: f.rport,
        rport: f.lport,
        proto: f.proto,
        family: f.family,
    }
}

/// Which end of its key the flow's `local` end is, as a mask: 0 when it is `lo` (the lower
/// (address words, port): `ends_swapped`), all ones when it is `hi`.
///
/// The compares branch, and on each path the verifier knows the side exactly; any later
/// branch or pointer offset that depended on it would make it walk all the code behind once
/// per path (over its limit of 1M instructions). So the caller passes the mask through
/// memory the verifier does not track (`opaque` in main.rs) before the flow's code: then it
/// is one unknown value on every path.
#[inline(always)]
pub fn side_mask(f: &Flow) -> u64 {
    (ends_swapped(&f.local, f.lport, &f.remote, f.rport) as u64).wrapping_neg()
}

/// `a` where `m` is 0, `b` where it is all ones: a choice without a branch.
#[inline(always)]
fn pick(a: u64, b: u64, m: u64) -> u64 {
    a ^ ((a ^ b) & m)
}

/// The flow's key, its ends ordered by `m` (`side_mask`).
#[inline(always)]
fn key(f: &Flow, m: u64) -> CtPairKey {
    let lo = [
        pick(f.local[0], f.remote[0], m),
        pick(f.local[1], f.remote[1], m),
    ];
    let hi = [
        pick(f.remote[0], f.local[0], m),
        pick(f.remote[1], f.local[1], m),
    ];
    CtPairKey {
        lo: addr_bytes(lo),
        hi: addr_bytes(hi),
        lo_port: pick(f.lport as u64, f.rport as u64, m) as u16,
        hi_port: pick(f.rport as u64, f.lport as u64, m) as u16,
        proto: f.proto,
        family: f.family,
        _pad: [0; 2],
    }
}

/// The index of side `m` in `CtPairValue::sides`. `m` is unknown to the verifier (passed
/// through `opaque`), the same on every path, so an offset into the entry from it costs no
/// extra walks. Each side is written on its own: a write of both sides' words would store
/// the other side's words as read a moment before, and lose a write of them by its veth's
/// program on another CPU.
#[inline(always)]
fn index(m: u64) -> usize {
    (m & 1) as usize
}

#[inline(always)]
fn lifetime(proto: u8, flags: u16) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_TIMEOUT_CLOSING_S * NS
    } else if proto == PROTO_TCP {
        CT_TIMEOUT_TCP_S * NS
    } else {
        CT_TIMEOUT_OTHER_S * NS
    }
}

/// The hook (`DIR_*`) that admitted a side's flow: the flag as 0 or 1, no branch.
#[inline(always)]
fn origin_of(side_flags: u16) -> u8 {
    const _: () = assert!(DIR_INGRESS == 0 && DIR_EGRESS == 1);
    (side_flags & CT_ORIGIN_EGRESS != 0) as u8
}

/// Re-check a tracked flow against the current Plan, as it was opened: from the local pod
/// (egress, the remote's port) or towards it (ingress, the local port).
#[inline(always)]
fn recheck(f: &Flow, ct_flags: u16, generation: u64, cfg_flags: u32) -> Decision {
    let (dir, port) = if ct_flags & CT_ORIGIN_EGRESS != 0 {
        (DIR_EGRESS, f.rport)
    } else {
        (DIR_INGRESS, f.lport)
    };
    let port = if has_ports(f.proto) { port } else { 0 };
    let (local, remote) = (addr_bytes(f.local), addr_bytes(f.remote));
    policy::check(
        generation, cfg_flags, dir, f.family, &local, &remote, f.proto, port,
    )
}

/// What conntrack says about a packet.
pub enum Hit {
    Miss,
    /// Tracked and still allowed: pass with this reason (ESTABLISHED or REPLY); whether the
    /// flow is delivered directly (`CT_DIRECT`).
    Pass(u8, bool),
    /// Tracked but the current Plan denies it: dropped, entry deleted.
    Revoked(Decision),
}

/// Look up the flow of a packet at the hook of direction `dir` (`m`: its `side_mask`, passed
/// through `opaque`). Refreshes the entry, handles
/// generation changes and TCP teardown.
#[inline(always)]
pub fn lookup(f: &Flow, m: u64, dir: u8, tcp_flags: u8, cfg_flags: u32, generation: u64) -> Hit {
    let closing = tcp_closing(f.proto, tcp_flags);
    let k = key(f, m);
    let Some(v) = CT.get_ptr_mut(&k) else {
        return Hit::Miss;
    };
    let v = unsafe { &mut *v };
    let now = crate::time::now_ns();
    if now > v.expires_ns {
        core::hint::cold_path();
        let _ = CT.remove(&k);
        return Hit::Miss;
    }
    let i = index(m);
    let side = v.sides[i];
    let side_flags = side.flags;
    // Only the other end's verdict: this veth has not admitted the flow.
    if side_flags & CT_TRACKED == 0 {
        return Hit::Miss;
    }
    // Flows the node opened are allowed whatever the Plan: nothing to re-check.
    if side.generation != generation && side_flags & CT_FROM_HOST == 0 {
        core::hint::cold_path();
        let d = recheck(f, side_flags, generation, cfg_flags);
        let s = &mut v.sides[i];
        if !d.allows() {
            // This end's verdict goes; the other end's stays its own veth's to judge.
            *s = CtSide::default();
            if (v.sides[0].flags | v.sides[1].flags) & CT_TRACKED == 0 {
                let _ = CT.remove(&k);
            }
            return Hit::Revoked(d);
        }
        s.generation = generation;
        s.policy = d.policy;
        s.rule = d.rule;
    }
    let origin = origin_of(side_flags);
    let r = if origin == dir {
        reason::ESTABLISHED
    } else {
        reason::REPLY
    };
    let mut flags = v.flags;
    if closing {
        flags |= CT_CLOSING;
    }
    // Refresh at most once a second per flow: keeps the hot path free of stores.
    let expires = now + lifetime(f.proto, flags);
    if flags != v.flags || expires > v.expires_ns + NS {
        v.flags = flags;
        v.expires_ns = expires;
    }
    let entry_closing = flags & CT_CLOSING != 0;
    let direct = flags & CT_DIRECT != 0;
    flowcache::fill(f, generation, origin, entry_closing, direct);
    // The other end too, when a local veth holds it under this Plan (a same-node pair): its
    // program runs next, on this CPU, for this packet and most of the flow's others, and now
    // finds what its own lookup would give. Above all the FIN at the receiver and the
    // answering FIN at both veths, once this packet marked the flow closing.
    let other = v.sides[i ^ 1];
    if other.flags & CT_TRACKED != 0 && other.generation == generation {
        flowcache::fill(
            &reversed(f),
            generation,
            origin_of(other.flags),
            entry_closing,
            direct,
        );
    }
    Hit::Pass(r, direct)
}

/// Track a flow newly admitted at the hook of direction `dir` (`from_host`: opened by the
/// node, see `CT_FROM_HOST`; `direct`: its opening packet is delivered directly, see
/// `CT_DIRECT`): this end's side of the flow's entry.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn create(
    f: &Flow,
    m: u64,
    dir: u8,
    d: &Decision,
    tcp_flags: u8,
    generation: u64,
    from_host: bool,
    direct: bool,
) {
    let mut side_flags = CT_TRACKED;
    if from_host {
        side_flags |= CT_FROM_HOST;
    }
    if dir == DIR_EGRESS {
        side_flags |= CT_ORIGIN_EGRESS;
    }
    let mut flags = if tcp_closing(f.proto, tcp_flags) {
        CT_CLOSING
    } else {
        0
    };
    if direct {
        flags |= CT_DIRECT;
    }
    let now = crate::time::now_ns();
    let verdict = CtSide {
        generation,
        policy: d.policy,
        rule: d.rule,
        flags: side_flags,
    };
    let k = key(f, m);
    let i = index(m);
    // The entry exists when the other end's veth admitted the flow first (on one node, the
    // sender's program, a moment ago: a warm line) or when a reused 5-tuple (a busy client's
    // ports wrap within the closing lifetime) finds its earlier flow's entry: written in place,
    // which costs a lookup where a replacing insert costs an LRU node taken and one given back.
    if let Some(old) = CT.get_ptr_mut(&k) {
        let old = unsafe { &mut *old };
        // An expired entry, or a closing one that a TCP SYN reopens, is an earlier flow: its
        // other end's verdict is not this flow's (that veth decides the new flow's SYN).
        // Otherwise it is this flow, and stays closing once it is.
        if now > old.expires_ns || (old.flags & CT_CLOSING != 0 && tcp_opening(f.proto, tcp_flags))
        {
            if old.sides[i ^ 1].flags & CT_TRACKED != 0 {
                old.sides[i ^ 1] = CtSide::default();
                // And that end's entry in this CPU's flow cache (on one node, its program
                // runs next here): its packets meet conntrack and the policy again.
                flowcache::forget(&reversed(f));
            }
        } else {
            flags |= old.flags;
        }
        old.sides[i] = verdict;
        old.flags = flags;
        old.expires_ns = now + lifetime(f.proto, flags);
    } else {
        let mut v = CtPairValue {
            expires_ns: now + lifetime(f.proto, flags),
            flags,
            _pad: [0; 6],
            sides: [CtSide::default(); 2],
        };
        v.sides[i] = verdict;
        if CT.insert(&k, &v, 0).is_err() {
            return;
        }
    }
    // The flow's first reply (for TCP the SYN-ACK, on this CPU) then needs no `CT_PAIRS` read.
    flowcache::fill(
        f,
        generation,
        dir,
        flags & CT_CLOSING != 0,
        flags & CT_DIRECT != 0,
    );
}

/// Whether an ICMP error about `inner` (the offending packet as it was sent) relates to a
/// tracked flow: one lookup (either end may be the local pod; the key is the same), on the
/// ICMP error path only.
#[inline(always)]
pub fn related(inner: &Tuple) -> bool {
    let f = oriented(inner, true);
    CT.get_ptr(&key(&f, side_mask(&f))).is_some()
}
