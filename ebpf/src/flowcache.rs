//! A per-CPU exact-match cache in front of `CT` for the packets of tracked flows (like Open
//! vSwitch's EMC in front of its classifier): a direct-mapped array indexed by a hash of the
//! flow, one 64-byte entry per slot. A hit costs an inlined array access and a compare of five
//! words instead of a kernel hash lookup of a 40-byte key.
//!
//! An entry says "`CT` passed this flow under `generation`, less than
//! `FLOW_CACHE_WINDOW` jiffies ago" (at most 1 s):
//! * it is only filled after `CT` passed a packet, and only for flows that are not closing
//!   (`CT_CLOSING` has the short lifetime; FIN/RST packets always take the `CT` path);
//! * a new Plan generation misses, so a re-check always goes through `CT` and the policy;
//! * within the window `CT` itself could not answer otherwise: the entry was refreshed to at
//!   least 10 s of life when the cache was filled (so it cannot expire), and an LRU eviction
//!   by another CPU only ends tracking the flow that the current Plan allows anyway;
//! * a reply hits only once `CT` has recorded `CT_SEEN_REPLY`, which needs a store;
//! * a SYN that opens a flow clears this CPU's entry (the new connection's origin may differ).
//!
//! Per CPU, so no entry is ever written concurrently; not pinned, a fresh program starts
//! empty. `CT` stays the flow's state: the cache only saves re-reading it every packet, and
//! refreshing it at most once a window keeps the lifetimes of seconds exact to a second.
use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::PerCpuArray};
use netward_common::{FLOW_CACHE_DEFAULT_SLOTS, FLOW_CACHE_WINDOW_JIFFIES};

use crate::conntrack::Flow;

/// Slots per CPU, a power of two; 0: no cache. Set by the agent at load time: read-only
/// data, so the verifier sees a constant and drops the cache code when it is off.
#[no_mangle]
static FLOW_CACHE_SLOTS: u32 = FLOW_CACHE_DEFAULT_SLOTS;

/// How long an entry stands in for `CT`, in jiffies (the agent sets it; 0: every probe
/// misses, which the benchmark uses to measure the miss path).
#[no_mangle]
static FLOW_CACHE_WINDOW: u64 = FLOW_CACHE_WINDOW_JIFFIES;

#[inline(always)]
fn slots() -> u32 {
    unsafe { core::ptr::read_volatile(&FLOW_CACHE_SLOTS) }
}

#[repr(C)]
pub struct Entry {
    words: [u64; 5],
    generation: u64,
    /// `bpf_jiffies64()` at the fill (0: empty, jiffies is never 0 on a running kernel).
    jiffies: u64,
    /// `DIR_*` the flow was opened in.
    origin: u8,
    /// `CT_SEEN_REPLY` was set when filled: packets at the other hook hit too.
    reply_seen: u8,
    _pad: [u8; 6],
}

#[map(name = "FLOW_CACHE")]
static FLOW_CACHE: PerCpuArray<Entry> = PerCpuArray::with_max_entries(FLOW_CACHE_DEFAULT_SLOTS, 0);

/// The flow as the five words an entry holds.
#[inline(always)]
fn words(f: &Flow) -> [u64; 5] {
    let meta =
        f.lport as u64 | (f.rport as u64) << 16 | (f.proto as u64) << 32 | (f.family as u64) << 40;
    [f.local[0], f.local[1], f.remote[0], f.remote[1], meta]
}

/// Word by word: an array `==` compiles to a byte-wise compare (40 byte loads) for BPF.
#[inline(always)]
fn same(a: &[u64; 5], b: &[u64; 5]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

/// A slot of the cache for a flow.
#[derive(Clone, Copy)]
pub struct Slot {
    index: u32,
    words: [u64; 5],
    jiffies: u64,
}

#[inline(always)]
pub fn slot(f: &Flow) -> Slot {
    let w = words(f);
    let x = w[0] ^ w[1].rotate_left(16) ^ w[2].rotate_left(32) ^ w[3].rotate_left(48) ^ w[4];
    // Multiplicative hashing: the high bits mix every input bit.
    let index = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32 & slots().wrapping_sub(1);
    Slot {
        index,
        words: w,
        jiffies: unsafe { bpf_jiffies64() },
    }
}

/// Whether this CPU's cache passes the flow's packet at the hook of direction `dir`: it
/// returns the reason (`ESTABLISHED` or `REPLY`) `CT` gave at the fill.
#[inline(always)]
pub fn get(s: &Slot, dir: u8, generation: u64) -> Option<u8> {
    if slots() == 0 {
        return None;
    }
    let window = unsafe { core::ptr::read_volatile(&FLOW_CACHE_WINDOW) };
    let e = unsafe { &*FLOW_CACHE.get_ptr(s.index)? };
    if !same(&e.words, &s.words)
        || e.generation != generation
        || s.jiffies.wrapping_sub(e.jiffies) >= window
        || e.jiffies == 0
    {
        return None;
    }
    if dir == e.origin {
        Some(netward_common::reason::ESTABLISHED)
    } else if e.reply_seen != 0 {
        Some(netward_common::reason::REPLY)
    } else {
        None
    }
}

/// Record that `CT` passed the flow under `generation` (opened in `origin`).
#[inline(always)]
pub fn fill(s: &Slot, generation: u64, origin: u8, reply_seen: bool) {
    if slots() == 0 {
        return;
    }
    if let Some(e) = FLOW_CACHE.get_ptr_mut(s.index) {
        let e = unsafe { &mut *e };
        e.words = s.words;
        e.generation = generation;
        e.jiffies = s.jiffies;
        e.origin = origin;
        e.reply_seen = reply_seen as u8;
    }
}

/// Forget this CPU's entry of the flow (a SYN opened it anew).
#[inline(always)]
pub fn clear(s: &Slot) {
    if slots() == 0 {
        return;
    }
    if let Some(e) = FLOW_CACHE.get_ptr_mut(s.index) {
        let e = unsafe { &mut *e };
        if same(&e.words, &s.words) {
            e.jiffies = 0;
        }
    }
}
