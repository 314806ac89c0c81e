//! The policy decision for one side of a flow: ipcache (local endpoint, then peer class) and
//! the policy LPM trie. Addresses resolve through `HOSTS` (hash of the single-address entries,
//! i.e. pods) and fall back to the `IPCACHE` trie for other addresses; then at most two policy
//! trie lookups. A bounded number of lookups whatever the number of pods, policies or rules.
//!
//! Semantics (mirrors `netward::eval::plan`):
//! * the local address (source on egress, destination on ingress) must have an ipcache entry
//!   with `EP_LOCAL`; otherwise it is an unknown endpoint: dropped when `CFG_FAIL_CLOSED_UNKNOWN`
//!   is set, else passed;
//! * a local pod not isolated in this direction passes;
//! * else the flow passes iff the policy trie has an entry covering (subject, dir, peer class,
//!   proto, port) or (subject, dir, ANY_PEER, proto, port); port is 0 for port-less protocols;
//! * except egress to a Service virtual address (`EP_SERVICE`) on a port it serves, decided
//!   for the Service's endpoints by [`crate::service::check`].
use aya_ebpf::maps::lpm_trie::Key;
use netward_common::{
    reason, IpcacheKey, IpcacheValue, PolicyKey, ANY_PEER, CFG_FAIL_CLOSED_UNKNOWN, DIR_EGRESS,
    EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EP_LOCAL, EP_SERVICE, FAMILY_V4, IPCACHE_HEADER_BITS,
    POLICY_PREFIX_FULL,
};

use crate::maps::{HOSTS, IPCACHE, POLICY};
use crate::parse::has_ports;

/// Outcome of a policy check.
#[derive(Clone, Copy)]
pub struct Decision {
    /// `reason::*`; `< reason::FIRST_DROP` means the flow may pass.
    pub reason: u8,
    pub policy: u32,
    pub rule: u16,
    /// Endpoint id of the local pod (0: unknown).
    pub endpoint: u32,
}

impl Decision {
    #[inline(always)]
    pub fn allows(&self) -> bool {
        self.reason < reason::FIRST_DROP
    }
}

/// The ipcache answer for a full address: the host entry if there is one, else the LPM walk.
#[inline(always)]
fn ipcache_get(slot: u8, family: u8, addr: &[u8; 16]) -> Option<IpcacheValue> {
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let host = IpcacheKey {
        prefixlen: IPCACHE_HEADER_BITS + bits,
        slot,
        family,
        addr: *addr,
        _pad: [0; 2],
    };
    if let Some(v) = unsafe { HOSTS.get(&host) } {
        return Some(*v);
    }
    IPCACHE.get(ipcache_key(slot, family, addr)).copied()
}

#[inline(always)]
fn ipcache_key(slot: u8, family: u8, addr: &[u8; 16]) -> Key<[u8; IpcacheKey::DATA_LEN]> {
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let mut data = [0u8; IpcacheKey::DATA_LEN];
    data[0] = slot;
    data[1] = family;
    data[2..18].copy_from_slice(addr);
    Key::new(IPCACHE_HEADER_BITS + bits, data)
}

#[inline(always)]
fn policy_key(
    slot: u8,
    dir: u8,
    subject: u32,
    peer: u32,
    proto: u8,
    port: u16,
) -> Key<[u8; PolicyKey::DATA_LEN]> {
    let s = subject.to_be_bytes();
    let p = peer.to_be_bytes();
    let pt = port.to_be_bytes();
    Key::new(
        POLICY_PREFIX_FULL,
        [
            slot, dir, s[0], s[1], s[2], s[3], p[0], p[1], p[2], p[3], proto, pt[0], pt[1], 0, 0, 0,
        ],
    )
}

/// Decide whether the local pod at `local` may exchange (`proto`, `port`) with `peer` in
/// direction `dir`, under the Plan in `slot`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn check(
    slot: u8,
    cfg_flags: u32,
    dir: u8,
    family: u8,
    local: &[u8; 16],
    peer: &[u8; 16],
    proto: u8,
    port: u16,
) -> Decision {
    let mut d = Decision {
        reason: reason::POLICY_DENY,
        policy: 0,
        rule: 0,
        endpoint: 0,
    };
    let ep = match ipcache_get(slot, family, local) {
        Some(v) if v.flags & EP_LOCAL != 0 => v,
        _ => {
            d.reason = if cfg_flags & CFG_FAIL_CLOSED_UNKNOWN != 0 {
                reason::UNKNOWN_ENDPOINT
            } else {
                reason::UNKNOWN_ENDPOINT_OPEN
            };
            return d;
        }
    };
    d.endpoint = ep.endpoint;
    let isolated = if dir == DIR_EGRESS {
        EP_ISOLATED_EGRESS
    } else {
        EP_ISOLATED_INGRESS
    };
    if ep.flags & isolated == 0 {
        d.reason = reason::NOT_ISOLATED;
        return d;
    }
    let peer_v = ipcache_get(slot, family, peer);
    // Egress to a Service virtual address is decided for its endpoints (service.rs); a port
    // it does not serve falls through to the plain lookup. Other flows: one flag test.
    if let Some(v) = peer_v {
        if v.flags & EP_SERVICE != 0 && dir == DIR_EGRESS && has_ports(proto) {
            if let Some(sd) =
                crate::service::check(slot, family, ep.subject_class, peer, proto, port, d)
            {
                return sd;
            }
        }
    }
    let peer_class = peer_v.map(|v| v.peer_class).unwrap_or(ANY_PEER);
    let mut hit = None;
    if peer_class != ANY_PEER {
        hit = POLICY.get(policy_key(
            slot,
            dir,
            ep.subject_class,
            peer_class,
            proto,
            port,
        ));
    }
    if hit.is_none() {
        hit = POLICY.get(policy_key(
            slot,
            dir,
            ep.subject_class,
            ANY_PEER,
            proto,
            port,
        ));
    }
    if let Some(v) = hit {
        d.reason = reason::POLICY_ALLOW;
        d.policy = v.policy;
        d.rule = v.rule;
    }
    d
}

/// Whether the local pod is enforced and isolated in `dir` (used for packets whose ports are
/// unknown: truncated L4 headers, untracked fragments). Returns the decision to apply when
/// the ports cannot be known: drop `drop_reason` when isolated (or unknown and failing closed).
#[inline(always)]
pub fn check_portless_fallback(
    slot: u8,
    cfg_flags: u32,
    dir: u8,
    family: u8,
    local: &[u8; 16],
    drop_reason: u8,
    pass_reason: u8,
) -> Decision {
    let mut d = Decision {
        reason: drop_reason,
        policy: 0,
        rule: 0,
        endpoint: 0,
    };
    match ipcache_get(slot, family, local) {
        Some(v) if v.flags & EP_LOCAL != 0 => {
            d.endpoint = v.endpoint;
            let isolated = if dir == DIR_EGRESS {
                EP_ISOLATED_EGRESS
            } else {
                EP_ISOLATED_INGRESS
            };
            if v.flags & isolated == 0 {
                d.reason = pass_reason;
            }
        }
        _ => {
            if cfg_flags & CFG_FAIL_CLOSED_UNKNOWN == 0 {
                d.reason = reason::UNKNOWN_ENDPOINT_OPEN;
            }
        }
    }
    d
}
