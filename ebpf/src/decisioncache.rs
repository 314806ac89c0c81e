//! A per-CPU exact-match cache of policy decisions, in front of [`crate::policy::check`]: a
//! direct-mapped array indexed by a hash of (direction, family, local address, peer address,
//! protocol, port, fail-closed flag), one 64-byte entry per slot, like [`crate::flowcache`] in
//! front of `CT_PAIRS`. A new flow between a pod and a peer it has talked to on that port (a
//! client's next connection, from another source port) is then decided by one inlined array
//! access instead of the `LOCAL_TABLE`, `HOST_TABLE` and `POLICY_HASH` lookups.
//!
//! Why it is exact: a decision is a function of the Plan and of those inputs only. The Plan's
//! maps are written to the inactive slot and go live with a new `CONFIG.generation`, which
//! every entry must match, so a Plan change misses at once; the one `CONFIG` flag the decision
//! reads (`CFG_FAIL_CLOSED_UNKNOWN`, which the agent may change without a new generation) is
//! part of the key. A decision computed while the agent flipped slots under the program is
//! stored under the generation it read, which is no longer live: no later packet sees it.
//! The entry also has the flow cache's window (at most 1 s), so a CPU re-reads the maps at
//! least that often, and a zero window (the benchmark's miss rows) makes every probe miss.
//!
//! Per CPU, so no entry is ever written concurrently; not pinned, a fresh program starts empty.
use netward_common::{
    cache_index, CFG_FAIL_CLOSED_UNKNOWN, COUNTER_DECISION_CACHE_HITS, DECISION_CACHE_DEFAULT_SLOTS,
};

use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::PerCpuArray};

use crate::{counters, flowcache::window, policy::Decision};

/// Slots per CPU, a power of two; 0: no cache. Set by the agent at load time: read-only
/// data, so the verifier sees a constant and drops the cache code when it is off.
#[no_mangle]
static DECISION_CACHE_SLOTS: u32 = DECISION_CACHE_DEFAULT_SLOTS;

#[inline(always)]
fn slots() -> u32 {
    unsafe { core::ptr::read_volatile(&DECISION_CACHE_SLOTS) }
}

#[repr(C)]
pub struct Entry {
    /// local (2 words), peer (2 words), [`meta`].
    words: [u64; 5],
    generation: u64,
    /// The low 32 bits of `bpf_jiffies64()` at the fill (the generation, not the age, makes
    /// an entry exact; the age only bounds how long it stands in for the maps).
    jiffies: u32,
    policy: u32,
    endpoint: u32,
    rule: u16,
    reason: u8,
    _pad: u8,
}

#[map(name = "DECISION_CACHE")]
static DECISION_CACHE: PerCpuArray<Entry> =
    PerCpuArray::with_max_entries(DECISION_CACHE_DEFAULT_SLOTS, 0);

/// What the decision depends on besides the addresses, as one word.
#[inline(always)]
fn meta(cfg_flags: u32, dir: u8, family: u8, proto: u8, port: u16) -> u64 {
    port as u64
        | (proto as u64) << 16
        | (family as u64) << 24
        | (dir as u64) << 32
        | ((cfg_flags & CFG_FAIL_CLOSED_UNKNOWN != 0) as u64) << 40
}

/// The question a decision answers: its key words.
pub struct Question {
    local: [u64; 2],
    peer: [u64; 2],
    meta: u64,
}

impl Question {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg_flags: u32,
        dir: u8,
        family: u8,
        local: &[u8; 16],
        peer: &[u8; 16],
        proto: u8,
        port: u16,
    ) -> Question {
        Question {
            local: netward_common::addr_words(local),
            peer: netward_common::addr_words(peer),
            meta: meta(cfg_flags, dir, family, proto, port),
        }
    }

    #[inline(always)]
    fn index(&self) -> u32 {
        cache_index(&self.local, &self.peer, self.meta) & slots().wrapping_sub(1)
    }
}

/// This CPU's cached decision for `q` under `generation`, if it has one.
#[inline(always)]
pub fn get(q: &Question, generation: u64) -> Option<Decision> {
    if slots() == 0 {
        return None;
    }
    let e = unsafe { &*DECISION_CACHE.get_ptr(q.index())? };
    let age = (unsafe { bpf_jiffies64() } as u32).wrapping_sub(e.jiffies) as u64;
    // Generation and age first: a stale slot is told after two loads.
    if e.generation != generation || age >= window() {
        return None;
    }
    let w = &e.words;
    if (w[0] ^ q.local[0])
        | (w[1] ^ q.local[1])
        | (w[2] ^ q.peer[0])
        | (w[3] ^ q.peer[1])
        | (w[4] ^ q.meta)
        != 0
    {
        return None;
    }
    counters::bump(COUNTER_DECISION_CACHE_HITS);
    Some(Decision {
        reason: e.reason,
        policy: e.policy,
        rule: e.rule,
        endpoint: e.endpoint,
    })
}

/// Remember `d`, decided for `q` under `generation`.
#[inline(always)]
pub fn fill(q: &Question, generation: u64, d: &Decision) {
    if slots() == 0 {
        return;
    }
    if let Some(e) = DECISION_CACHE.get_ptr_mut(q.index()) {
        let e = unsafe { &mut *e };
        e.words = [q.local[0], q.local[1], q.peer[0], q.peer[1], q.meta];
        e.generation = generation;
        e.jiffies = unsafe { bpf_jiffies64() } as u32;
        e.policy = d.policy;
        e.endpoint = d.endpoint;
        e.rule = d.rule;
        e.reason = d.reason;
    }
}
