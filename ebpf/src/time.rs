//! Time for timeouts and rate limiting: the coarse monotonic clock (jiffies resolution) is
//! enough for second-scale lifetimes and much cheaper than reading the TSC per packet.
//! The coarse clock only moves with the tick that advances jiffies, so each CPU caches it per
//! jiffy: the verifier inlines `bpf_jiffies64` into one load, whereas the coarse clock is a
//! helper call (about 12-15 ns per packet measured with `BPF_PROG_TEST_RUN` on this machine
//! kind). At worst a reading is one tick old, irrelevant for lifetimes of seconds.
use aya_ebpf::{macros::map, maps::PerCpuArray};

/// The last (jiffies, coarse ns) pair this CPU read.
#[repr(C)]
pub struct Clock {
    jiffies: u64,
    ns: u64,
}

/// Per program load, not pinned: a cache, no state worth keeping.
#[map]
static CLOCK: PerCpuArray<Clock> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn now_ns() -> u64 {
    let j = unsafe { aya_ebpf::helpers::bpf_jiffies64() };
    if let Some(c) = CLOCK.get_ptr_mut(0) {
        let c = unsafe { &mut *c };
        // (jiffies is never 0 on a running kernel: a zeroed slot is never taken as valid.)
        if c.jiffies == j && j != 0 {
            return c.ns;
        }
        let ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
        c.jiffies = j;
        c.ns = ns;
        return ns;
    }
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}
