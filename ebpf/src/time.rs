//! Time for timeouts and rate limiting: the coarse monotonic clock (jiffies resolution) is
//! enough for second-scale lifetimes and much cheaper than reading the TSC per packet.
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}
