//! Per-CPU counters: packets by direction and reason, event accounting. One counter per
//! packet (`counter_index(dir, reason)`); the agent derives allowed/denied totals and sums
//! over CPUs. Per-CPU so the hot path never contends.
use netward_common::counter_index;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Count one verdict at the hook of direction `dir`.
#[inline(always)]
pub fn verdict(dir: u8, r: u8) {
    bump(counter_index(dir, r));
}
