//! Per-CPU counters: allowed/denied totals, one counter per reason, event accounting.
//! Per-CPU so the hot path never contends; the agent sums over CPUs.
use netward_common::{reason, COUNTER_ALLOWED, COUNTER_DENIED, COUNTER_REASON_BASE};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Count one verdict.
#[inline(always)]
pub fn verdict(r: u8) {
    bump(if r < reason::FIRST_DROP {
        COUNTER_ALLOWED
    } else {
        COUNTER_DENIED
    });
    bump(COUNTER_REASON_BASE + r as u32);
}
