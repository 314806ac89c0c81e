//! Connection tracking: an LRU hash of admitted flows, keyed by the tuple as first seen plus
//! the enforcing hook's direction (so a pod pair on one node has an entry at each veth and both
//! sides are checked). Replies are looked up as the reversed tuple with the opposite direction.
//!
//! Timeouts (refreshed on every packet, checked on lookup; the LRU evicts earlier under
//! pressure): TCP 6 h, other protocols 60 s, TCP after FIN or RST 10 s.
//!
//! Each entry records the Plan generation it was verified under. When `CONFIG.generation`
//! moves on, the next packet of the flow (either direction) re-checks the flow's forward tuple
//! against the current Plan: still allowed -> the entry is stamped with the new generation;
//! now denied -> the entry is deleted and the packet dropped (`reason::REVOKED`).

use netward_common::{
    CtKey, CtValue, CT_CLOSING, CT_FROM_HOST, CT_SEEN_REPLY, CT_TIMEOUT_CLOSING_S,
    CT_TIMEOUT_OTHER_S, CT_TIMEOUT_TCP_S, DIR_EGRESS, PROTO_TCP,
};

use crate::{
    maps::CONNTRACK,
    parse::{addr_bytes, has_ports, Tuple},
    policy::{self, Decision},
};

const NS: u64 = 1_000_000_000;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

#[inline(always)]
pub fn key(t: &Tuple, dir: u8) -> CtKey {
    CtKey {
        saddr: addr_bytes(t.saddr),
        daddr: addr_bytes(t.daddr),
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        family: t.family,
        dir,
        _pad: 0,
    }
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

/// Re-check a tracked flow (forward key) against the current Plan.
#[inline(always)]
pub fn recheck(k: &CtKey, slot: u8, cfg_flags: u32) -> Decision {
    let (local, peer) = if k.dir == DIR_EGRESS {
        (&k.saddr, &k.daddr)
    } else {
        (&k.daddr, &k.saddr)
    };
    let port = if has_ports(k.proto) { k.dport } else { 0 };
    policy::check(slot, cfg_flags, k.dir, k.family, local, peer, k.proto, port)
}

/// What conntrack says about a packet.
pub enum Hit {
    Miss,
    /// Tracked and still allowed: pass with this reason (ESTABLISHED/REPLY).
    Pass,
    /// Tracked but the current Plan denies it: dropped, entry deleted.
    Revoked(Decision),
}

/// Look up `k` (forward entry when `reply` is false; `k` is then the key as stored).
/// Refreshes the entry, handles generation changes and TCP teardown.
#[inline(always)]
pub fn lookup(
    k: &CtKey,
    reply: bool,
    tcp_flags: u8,
    slot: u8,
    cfg_flags: u32,
    generation: u64,
) -> Hit {
    let Some(v) = CONNTRACK.get_ptr_mut(k) else {
        return Hit::Miss;
    };
    let v = unsafe { &mut *v };
    let now = crate::time::now_ns();
    if now > v.expires_ns {
        let _ = CONNTRACK.remove(k);
        return Hit::Miss;
    }
    // Flows the node opened are allowed whatever the Plan: nothing to re-check.
    if v.generation != generation && v.flags & CT_FROM_HOST == 0 {
        let d = recheck(k, slot, cfg_flags);
        if !d.allows() {
            let _ = CONNTRACK.remove(k);
            return Hit::Revoked(d);
        }
        v.generation = generation;
        v.policy = d.policy;
        v.rule = d.rule;
    }
    let mut flags = v.flags;
    if reply {
        flags |= CT_SEEN_REPLY;
    }
    if k.proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= CT_CLOSING;
    }
    // Refresh at most once a second per flow: keeps the hot path free of stores.
    let expires = now + lifetime(k.proto, flags);
    if flags != v.flags || expires > v.expires_ns + NS {
        v.flags = flags;
        v.expires_ns = expires;
    }
    Hit::Pass
}

/// Track a newly admitted flow (`from_host`: opened by the node, see `CT_FROM_HOST`).
#[inline(always)]
pub fn create(k: &CtKey, d: &Decision, tcp_flags: u8, generation: u64, from_host: bool) {
    let mut flags = if from_host { CT_FROM_HOST } else { 0 };
    if k.proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= CT_CLOSING;
    }
    let v = CtValue {
        generation,
        expires_ns: crate::time::now_ns() + lifetime(k.proto, flags),
        policy: d.policy,
        rule: d.rule,
        flags,
    };
    let _ = CONNTRACK.insert(k, &v, 0);
}

/// Whether an ICMP error about `inner` (the offending packet as it was sent) relates to a
/// flow tracked at this hook (`dir`): the offending packet was either sent by the local pod
/// (entry with the opposite direction, same tuple) or was a reply to a flow the local pod
/// received (entry with this direction, reversed tuple) — and symmetric cases.
#[inline(always)]
pub fn related(inner: &Tuple, dir: u8) -> bool {
    let k = key(inner, dir ^ 1);
    if CONNTRACK.get_ptr(&k).is_some() {
        return true;
    }
    let r = k.reply(); // reversed tuple, direction `dir`
    CONNTRACK.get_ptr(&r).is_some()
}
