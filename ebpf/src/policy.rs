//! The policy decision for one side of a flow: ipcache (local endpoint, then peer class) and
//! the policy hash. The local address resolves in `LOCAL_TABLE` (its ipcache entry plus the
//! prefix lengths its subject's policy entries use), the peer through `HOST_TABLE` (the
//! single-address entries, i.e. pods and Service addresses) with a fallback to the `IPCACHE`
//! trie for other addresses (CIDRs): both tables are arrays the agent lays out (`table`), read
//! without a call into the kernel. Then `POLICY_HASH` is probed at the subject's lengths only,
//! longest first: the longest-prefix match without a trie walk whose depth grows with the map.
//! A bounded number of lookups whatever the number of pods, policies or rules: 3 + at most
//! 2 x 18 probes, in practice one or two.
//!
//! Semantics (mirrors `netward::eval::plan`):
//! * the local address (source on egress, destination on ingress) must have an ipcache entry
//!   with `EP_LOCAL`; otherwise it is an unknown endpoint: dropped when `CFG_FAIL_CLOSED_UNKNOWN`
//!   is set, else passed;
//! * a local pod not isolated in this direction passes;
//! * else the flow passes iff the policy map has an entry covering (subject, dir, peer class,
//!   proto, port) or (subject, dir, ANY_PEER, proto, port); port is 0 for port-less protocols;
//! * except egress to a Service virtual address (`EP_SERVICE`) on a port it serves, decided
//!   for the Service's endpoints by [`crate::service::check`].
use aya_ebpf::maps::lpm_trie::Key;
use netward_common::{
    addr_words, policy_bit_len, reason, AddrKey, EndpointValue, IpcacheKey, IpcacheValue,
    PolicyHashKey, PolicyLens, PolicyValue, ANY_PEER, CFG_FAIL_CLOSED_UNKNOWN, DIR_EGRESS,
    DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EP_LOCAL, EP_SERVICE, FAMILY_V4,
    IPCACHE_HEADER_BITS, POLICY_LEN_BITS,
};

use crate::decisioncache;
use crate::maps::{HOST_TABLE, IPCACHE, LOCAL_TABLE, POLICY_HASH, PROBE_KEY};
use crate::parse::has_ports;
use crate::table;

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

/// Whether a value found under an address's key is for that very address.
#[inline(always)]
fn same_addr(stored: &[u8; 16], addr: &[u8; 16]) -> bool {
    let (a, b) = (addr_words(stored), addr_words(addr));
    a[0] == b[0] && a[1] == b[1]
}

/// The ipcache answer for a full address: the host entry if there is one, else the LPM walk.
#[inline(always)]
fn ipcache_get(slot: u8, family: u8, addr: &[u8; 16]) -> Option<IpcacheValue> {
    let k = AddrKey::new(slot, family, addr);
    if let Some(t) = table::get(&HOST_TABLE, table::host_buckets(), slot, &k) {
        // SAFETY: a map value, copied out at once; map values are plain integers.
        let t = unsafe { &*t };
        if same_addr(&t.addr, addr) {
            return Some(t.v);
        }
    }
    IPCACHE.get(ipcache_key(slot, family, addr)).copied()
}

/// The local pod at `addr`. `LOCAL_TABLE` holds the ipcache entries with `EP_LOCAL` (always
/// full-length) except IPv6 addresses whose tag another one already uses: those are found in
/// the trie and probed at every prefix length (exact, only slower).
#[inline(always)]
fn endpoint_get(slot: u8, family: u8, addr: &[u8; 16]) -> Option<EndpointValue> {
    let k = AddrKey::new(slot, family, addr);
    if let Some(t) = table::get(&LOCAL_TABLE, table::local_buckets(), slot, &k) {
        // SAFETY: a map value, copied out at once; map values are plain integers.
        let t = unsafe { &*t };
        if same_addr(&t.addr, addr) {
            return Some(t.v);
        }
    }
    let ip = *IPCACHE.get(ipcache_key(slot, family, addr))?;
    if ip.flags & EP_LOCAL == 0 {
        return None;
    }
    let all = PolicyLens {
        peer_lens: (1 << POLICY_LEN_BITS) - 1,
        any_lens: (1 << POLICY_LEN_BITS) - 1,
    };
    Some(EndpointValue {
        ip,
        lens: [all, all],
    })
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

/// The longest entry of `POLICY_HASH` matching (subject, peer, proto, port) among the prefix
/// lengths in `lens` (`policy_len_bit` bits): probed from the longest down, so the answer is
/// the longest-prefix match; at most one hash lookup per length the subject uses.
/// Found-or-not plus the value, always initialised: with an `Option` LLVM may move the value
/// registers of the `None` path, which the verifier rejects as reading uninitialised ones.
#[derive(Clone, Copy, Default)]
struct Probe {
    found: bool,
    v: PolicyValue,
}

#[inline(always)]
fn policy_probe(subject_word: u32, peer: u32, proto: u8, port: u16, lens: u32) -> Probe {
    let mut out = Probe::default();
    // The key is built in a per-CPU scratch value, not on the stack: the verifier does not
    // track map memory, so the paths that probe a length and those that skip it end in the
    // same state and are pruned (on the stack, 18 optional writes made it explore 2^18 paths).
    let Some(key) = PROBE_KEY.get_ptr_mut(0) else {
        return out;
    };
    // SAFETY: a per-CPU array value, valid for the program's run.
    let key = unsafe { &mut *key };
    // Bits not yet probed: the loop ends after the shortest length the subject uses, so the
    // common case (full-length entries only) is one iteration, not 18.
    let mut rest = lens;
    let mut bit = POLICY_LEN_BITS;
    while bit > 0 && rest != 0 {
        bit -= 1;
        if rest & (1 << bit) == 0 {
            continue;
        }
        rest &= !(1 << bit);
        *key = PolicyHashKey::with_word(subject_word, policy_bit_len(bit), peer, proto, port);
        // SAFETY: the value is copied out at once; map values are plain integers.
        if let Some(v) = unsafe { POLICY_HASH.get(&*key) } {
            out.found = true;
            out.v = *v;
            break;
        }
    }
    out
}

/// The `EP_ISOLATED_*` flag of direction `dir`.
#[inline(always)]
fn isolation_flag(dir: u8) -> u32 {
    if dir == DIR_EGRESS {
        EP_ISOLATED_EGRESS
    } else {
        EP_ISOLATED_INGRESS
    }
}

/// Decide whether the local pod at `local` may exchange (`proto`, `port`) with `peer` in
/// direction `dir`, under the Plan of `generation`: this CPU's decision cache, else the maps.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn check(
    generation: u64,
    cfg_flags: u32,
    dir: u8,
    family: u8,
    local: &[u8; 16],
    peer: &[u8; 16],
    proto: u8,
    port: u16,
) -> Decision {
    let q = decisioncache::Question::new(cfg_flags, dir, family, local, peer, proto, port);
    if let Some(d) = decisioncache::get(&q, generation) {
        return d;
    }
    let slot = (generation & 1) as u8;
    let d = check_maps(slot, cfg_flags, dir, family, local, peer, proto, port);
    // The question again rather than kept across the lookups (it would spill to the stack).
    let q = decisioncache::Question::new(cfg_flags, dir, family, local, peer, proto, port);
    decisioncache::fill(&q, generation, &d);
    d
}

/// [`check`] from the Plan's maps in `slot`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn check_maps(
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
    let Some(local_ep) = endpoint_get(slot, family, local) else {
        d.reason = if cfg_flags & CFG_FAIL_CLOSED_UNKNOWN != 0 {
            reason::UNKNOWN_ENDPOINT
        } else {
            reason::UNKNOWN_ENDPOINT_OPEN
        };
        return d;
    };
    let ep = local_ep.ip;
    d.endpoint = ep.endpoint;
    if ep.flags & isolation_flag(dir) == 0 {
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
    // Which prefix lengths to probe (none: the subject allows nothing in this direction).
    let lens = if dir == DIR_EGRESS {
        local_ep.lens[DIR_EGRESS as usize]
    } else {
        local_ep.lens[DIR_INGRESS as usize]
    };
    // A rule naming the peer's class wins over one for any peer, as in the Plan evaluator.
    let word = PolicyHashKey::subject_word(slot, dir, ep.subject_class);
    let mut hit = Probe::default();
    if peer_class != ANY_PEER && lens.peer_lens != 0 {
        hit = policy_probe(word, peer_class, proto, port, lens.peer_lens);
    }
    if !hit.found && lens.any_lens != 0 {
        hit = policy_probe(word, ANY_PEER, proto, port, lens.any_lens);
    }
    if hit.found {
        let v = hit.v;
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
    match endpoint_get(slot, family, local) {
        Some(e) => {
            let v = e.ip;
            d.endpoint = v.endpoint;
            if v.flags & isolation_flag(dir) == 0 {
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
