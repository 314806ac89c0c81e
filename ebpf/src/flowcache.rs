//! A per-CPU exact-match cache in front of `CT_PAIRS` for the packets of tracked flows (like
//! Open vSwitch's EMC in front of its classifier): a direct-mapped array indexed by a hash of
//! the flow, one 64-byte entry per slot. A hit costs an inlined array access and a compare of five
//! words instead of a kernel hash lookup of a 40-byte key.
//!
//! An entry says "`CT_PAIRS` admitted or passed this flow under `generation`, less than
//! `FLOW_CACHE_WINDOW` jiffies ago" (at most 1 s), and whether the flow was closing then:
//! * it is filled when a new flow's `CT_PAIRS` entry is written and after `CT_PAIRS` passed a
//!   packet. Filled with the entry, it answers the flow's first reply: a TCP SYN-ACK is sent
//!   from the softirq that took the SYN, on the same CPU, so a short connection's handshake
//!   reads `CT_PAIRS` at neither veth;
//! * for a same-node pair, the program that read `CT_PAIRS` also fills the other pod's entry
//!   when that pod's side is tracked under this generation: exactly what the other veth's own
//!   lookup would find, a moment later on this CPU;
//! * a FIN or RST hits only an entry filled while `CT_PAIRS` had the flow `CT_CLOSING`: then
//!   it has nothing to record there (closing stays until a SYN reopens the tuple). The first
//!   FIN of a flow always takes the `CT_PAIRS` path and marks it; the FINs after it, at both
//!   veths of a same-node pair, hit. The closing lifetime (10 s) counts from that first
//!   FIN, not the last, which follows within round trips;
//! * a new Plan generation misses, so a re-check always goes through `CT_PAIRS` and the policy;
//! * within the window `CT_PAIRS` itself could not answer otherwise: the entry was refreshed to
//!   at least 10 s of life when the cache was filled (so it cannot expire), and an LRU eviction
//!   by another CPU only ends tracking the flow that the current Plan allows anyway;
//! * it answers both hooks: `established` at the hook the flow was opened at, `reply` at the
//!   other, as `CT_PAIRS` does for any flow it holds;
//! * an entry passes a subset of what `CT_PAIRS` passes while `CT_PAIRS` holds the flow: a new
//!   connection that reuses the 5-tuple within the window, opened from the other side, passes
//!   the same; its allowed SYN's fill overwrites the old entry on its CPU, and on other CPUs at
//!   most the label of its packets is `established` where `CT_PAIRS` says `reply` (or the
//!   reverse) until the window ends. Such a reopened flow's first FIN, on a CPU that still
//!   has the old flow's closing entry, leaves `CT_PAIRS` unmarked: its entry keeps the
//!   open lifetime until a later FIN on another CPU marks it, or the LRU evicts it.
//!
//! Per CPU, so no entry is ever written concurrently; not pinned, a fresh program starts
//! empty. `CT_PAIRS` stays the flow's state: the cache only saves re-reading it every packet,
//! and refreshing it at most once a window keeps the lifetimes of seconds exact to a second.
use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::PerCpuArray};
use netward_common::{cache_index, reason, FLOW_CACHE_DEFAULT_SLOTS, FLOW_CACHE_WINDOW_JIFFIES};

use crate::conntrack::Flow;

/// Slots per CPU, a power of two; 0: no cache. Set by the agent at load time: read-only
/// data, so the verifier sees a constant and drops the cache code when it is off.
#[no_mangle]
static FLOW_CACHE_SLOTS: u32 = FLOW_CACHE_DEFAULT_SLOTS;

/// How long an entry stands in for `CT_PAIRS`, in jiffies (the agent sets it; 0: every probe
/// misses, which the benchmark uses to measure the miss path). Writable data, unlike
/// `FLOW_CACHE_SLOTS`, so the verifier does not know it and a zero window runs exactly the
/// code of a miss (a constant would let it skip the compares).
#[no_mangle]
static mut FLOW_CACHE_WINDOW: u64 = FLOW_CACHE_WINDOW_JIFFIES;

#[inline(always)]
fn slots() -> u32 {
    unsafe { core::ptr::read_volatile(&FLOW_CACHE_SLOTS) }
}

/// (Also the decision cache's window.)
#[inline(always)]
pub(crate) fn window() -> u64 {
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(FLOW_CACHE_WINDOW)) }
}

#[repr(C)]
pub struct Entry {
    words: [u64; 5],
    generation: u64,
    /// `bpf_jiffies64()` at the fill (0: empty, jiffies is never 0 on a running kernel).
    jiffies: u64,
    /// `DIR_*` the flow was opened in.
    origin: u8,
    /// 1: `CT_PAIRS` had the flow `CT_CLOSING` at the fill, so a FIN or RST has nothing to
    /// record there either.
    closing: u8,
    /// 1: `CT_PAIRS` had the flow `CT_DIRECT` at the fill (see `deliver`).
    direct: u8,
    _pad: [u8; 5],
}

#[map(name = "FLOW_CACHE")]
static FLOW_CACHE: PerCpuArray<Entry> = PerCpuArray::with_max_entries(FLOW_CACHE_DEFAULT_SLOTS, 0);

/// The flow's ports, protocol and family as one word (the entry's fifth).
#[inline(always)]
fn meta(f: &Flow) -> u64 {
    f.lport as u64 | (f.rport as u64) << 16 | (f.proto as u64) << 32 | (f.family as u64) << 40
}

/// Whether the entry holds the flow: word by word (an array `==` compiles to a byte-wise
/// compare, 40 byte loads, for BPF).
#[inline(always)]
fn holds(e: &Entry, f: &Flow, meta: u64) -> bool {
    let w = &e.words;
    (w[0] ^ f.local[0])
        | (w[1] ^ f.local[1])
        | (w[2] ^ f.remote[0])
        | (w[3] ^ f.remote[1])
        | (w[4] ^ meta)
        == 0
}

/// The flow's slot.
#[inline(always)]
fn index(f: &Flow, meta: u64) -> u32 {
    cache_index(&f.local, &f.remote, meta) & slots().wrapping_sub(1)
}

/// Whether this CPU's cache passes the flow's packet at the hook of direction `dir`: the
/// reason `CT_PAIRS` gave at the fill, as its `_CACHED` twin (`ESTABLISHED_CACHED`,
/// `REPLY_CACHED`: the same verdict and name, counted apart so the agent can tell the cache's
/// share), and whether the flow is delivered directly (`CT_DIRECT`). Everything is recomputed from `f` (cheap ALU work) rather than kept across the
/// `CT_PAIRS` lookup, which would spill it to the stack on every miss.
#[inline(always)]
pub fn get(f: &Flow, dir: u8, generation: u64, closing: bool) -> Option<(u8, bool)> {
    if slots() == 0 {
        return None;
    }
    let meta = meta(f);
    let e = unsafe { &*FLOW_CACHE.get_ptr(index(f, meta))? };
    // (An empty entry has jiffies 0, and jiffies64 starts near 2^32: always too old.)
    let age = unsafe { bpf_jiffies64() }.wrapping_sub(e.jiffies);
    // Age and generation first: an empty or stale slot (what a new flow usually meets) is
    // told after two loads, before the five of the flow compare.
    if age >= window() || e.generation != generation {
        return None;
    }
    if !holds(e, f, meta) || (closing && e.closing == 0) {
        return None;
    }
    let r = if dir == e.origin {
        reason::ESTABLISHED_CACHED
    } else {
        reason::REPLY_CACHED
    };
    Some((r, e.direct != 0))
}

/// Record that `CT_PAIRS` admitted or passed the flow under `generation` (opened in `origin`),
/// and the flow's state there (`closing`, `direct`).
#[inline(always)]
pub fn fill(f: &Flow, generation: u64, origin: u8, closing: bool, direct: bool) {
    if slots() == 0 {
        return;
    }
    let meta = meta(f);
    if let Some(e) = FLOW_CACHE.get_ptr_mut(index(f, meta)) {
        let e = unsafe { &mut *e };
        e.words = [f.local[0], f.local[1], f.remote[0], f.remote[1], meta];
        e.generation = generation;
        e.jiffies = unsafe { bpf_jiffies64() };
        e.origin = origin;
        e.closing = closing as u8;
        e.direct = direct as u8;
    }
}

/// Drop this CPU's entry of the flow, if it holds one: `CT_PAIRS` no longer holds that end's
/// verdict (a SYN reopened the tuple and cleared it).
#[inline(always)]
pub fn forget(f: &Flow) {
    if slots() == 0 {
        return;
    }
    let meta = meta(f);
    if let Some(e) = FLOW_CACHE.get_ptr_mut(index(f, meta)) {
        let e = unsafe { &mut *e };
        if holds(e, f, meta) {
            e.jiffies = 0;
        }
    }
}
