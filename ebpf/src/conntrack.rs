//! Connection tracking: an LRU hash of admitted flows (`CT`), keyed in the canonical
//! orientation of the veth: `local` is the pod behind it (source
//! on its egress hook, destination on its ingress hook), `remote` the other side. Both
//! directions of a flow at one veth find the same entry with ONE lookup; a same-node pod pair
//! has an entry per veth (different `local`), so both sides are checked. The value's
//! `CT_ORIGIN_EGRESS` says which hook admitted the flow: a packet at that hook is
//! `established`, at the other one a `reply`.
//!
//! Timeouts (refreshed by every packet that reads the entry, checked on lookup; the LRU evicts
//! earlier under pressure): TCP 6 h, other protocols 60 s, TCP after FIN or RST 10 s. The
//! `flowcache` in front answers for a flow `CT` passed less than a second ago, so a busy flow
//! reads (and refreshes) its entry about once a second per CPU.
//!
//! Each entry records the Plan generation it was verified under. When `CONFIG.generation`
//! moves on, the next packet of the flow (either direction) re-checks the flow as opened
//! (origin direction) against the current Plan: still allowed -> the entry is stamped with the
//! new generation; now denied -> the entry is deleted and the packet dropped
//! (`reason::REVOKED`).

use netward_common::{
    reason, CtFlowKey, CtValue, CT_CLOSING, CT_FROM_HOST, CT_ORIGIN_EGRESS, CT_TIMEOUT_CLOSING_S,
    CT_TIMEOUT_OTHER_S, CT_TIMEOUT_TCP_S, DIR_EGRESS, DIR_INGRESS, PROTO_TCP,
};

use crate::{
    flowcache,
    maps::CT,
    parse::{addr_bytes, has_ports, tcp_closing, Tuple},
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

#[inline(always)]
fn key(f: &Flow) -> CtFlowKey {
    CtFlowKey {
        local: addr_bytes(f.local),
        remote: addr_bytes(f.remote),
        lport: f.lport,
        rport: f.rport,
        proto: f.proto,
        family: f.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn get(f: &Flow) -> Option<*mut CtValue> {
    CT.get_ptr_mut(key(f))
}

#[inline(always)]
fn remove(f: &Flow) {
    let _ = CT.remove(key(f));
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
    /// Tracked and still allowed: pass with this reason (ESTABLISHED or REPLY).
    Pass(u8),
    /// Tracked but the current Plan denies it: dropped, entry deleted.
    Revoked(Decision),
}

/// Look up the flow of a packet at the hook of direction `dir`. Refreshes the entry, handles
/// generation changes and TCP teardown.
#[inline(always)]
pub fn lookup(f: &Flow, dir: u8, tcp_flags: u8, cfg_flags: u32, generation: u64) -> Hit {
    let closing = tcp_closing(f.proto, tcp_flags);
    if !closing {
        if let Some(r) = flowcache::get(f, dir, generation) {
            return Hit::Pass(r);
        }
    }
    let Some(v) = get(f) else {
        return Hit::Miss;
    };
    let v = unsafe { &mut *v };
    let now = crate::time::now_ns();
    if now > v.expires_ns {
        core::hint::cold_path();
        remove(f);
        return Hit::Miss;
    }
    // Flows the node opened are allowed whatever the Plan: nothing to re-check.
    if v.generation != generation && v.flags & CT_FROM_HOST == 0 {
        core::hint::cold_path();
        let d = recheck(f, v.flags, generation, cfg_flags);
        if !d.allows() {
            remove(f);
            return Hit::Revoked(d);
        }
        v.generation = generation;
        v.policy = d.policy;
        v.rule = d.rule;
    }
    let mut flags = v.flags;
    let origin = if flags & CT_ORIGIN_EGRESS != 0 {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    let r = if origin == dir {
        reason::ESTABLISHED
    } else {
        reason::REPLY
    };
    if closing {
        flags |= CT_CLOSING;
    }
    // Refresh at most once a second per flow: keeps the hot path free of stores.
    let expires = now + lifetime(f.proto, flags);
    if flags != v.flags || expires > v.expires_ns + NS {
        v.flags = flags;
        v.expires_ns = expires;
    }
    if flags & CT_CLOSING == 0 {
        flowcache::fill(f, generation, origin);
    }
    Hit::Pass(r)
}

/// Track a flow newly admitted at the hook of direction `dir` (`from_host`: opened by the
/// node, see `CT_FROM_HOST`).
#[inline(always)]
pub fn create(f: &Flow, dir: u8, d: &Decision, tcp_flags: u8, generation: u64, from_host: bool) {
    let mut flags = if from_host { CT_FROM_HOST } else { 0 };
    if dir == DIR_EGRESS {
        flags |= CT_ORIGIN_EGRESS;
    }
    if tcp_closing(f.proto, tcp_flags) {
        flags |= CT_CLOSING;
    }
    let v = CtValue {
        generation,
        expires_ns: crate::time::now_ns() + lifetime(f.proto, flags),
        policy: d.policy,
        rule: d.rule,
        flags,
    };
    // One key for both the lookup and the insert (`get` would build it again: ~480 bytes
    // more JIT code).
    let k = key(f);
    // A reused 5-tuple (a busy client's ports wrap within the closing lifetime) finds its
    // old entry: overwritten in place, which costs a lookup where a replacing insert costs
    // an LRU node taken and one given back.
    if let Some(old) = CT.get_ptr_mut(&k) {
        unsafe { *old = v };
    } else if CT.insert(&k, &v, 0).is_err() {
        return;
    }
    // The flow's first reply (for TCP the SYN-ACK, on this CPU) then needs no `CT` read.
    if flags & CT_CLOSING == 0 {
        flowcache::fill(f, generation, dir);
    }
}

/// Whether an ICMP error about `inner` (the offending packet as it was sent) relates to a
/// tracked flow: the offending packet was sent by a local pod (its source is `local`) or to
/// one (its destination is `local`). Two lookups, on the ICMP error path only.
#[inline(always)]
pub fn related(inner: &Tuple) -> bool {
    get(&oriented(inner, true)).is_some() || get(&oriented(inner, false)).is_some()
}
