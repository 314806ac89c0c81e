//! Verdict events to the agent through a ring buffer, rate-limited per CPU by a token bucket
//! (`Config::events_per_sec`, `Config::events_burst`) so a flood cannot starve the agent or the
//! ring. Suppressed and lost events are counted.
use aya_ebpf::programs::TcContext;
use netward_common::{
    reason, Event, COUNTER_EVENTS_LOST, COUNTER_EVENTS_RATE_LIMITED, COUNTER_EVENTS_SENT,
    VERDICT_ALLOW, VERDICT_DROP,
};

use crate::{
    counters::bump,
    maps::{EVENTS, RATELIMIT},
    parse::{addr_bytes, Tuple},
    policy::Decision,
};

const NS: u64 = 1_000_000_000;
/// Refill is computed over at most this long, so the arithmetic cannot overflow.
const MAX_REFILL_NS: u64 = 10 * NS;

/// Take one token from this CPU's bucket.
#[inline(always)]
fn take_token(now: u64, rate: u32, burst: u32) -> bool {
    let Some(s) = RATELIMIT.get_ptr_mut(0) else {
        return false;
    };
    let s = unsafe { &mut *s };
    let elapsed = now.saturating_sub(s.last_ns).min(MAX_REFILL_NS);
    let cap = burst.max(1) as u64 * NS;
    let tokens = (s.tokens + elapsed * rate as u64).min(cap);
    s.last_ns = now;
    if tokens >= NS {
        s.tokens = tokens - NS;
        true
    } else {
        s.tokens = tokens;
        false
    }
}

/// Emit an event for `t` decided by `d` at direction `dir`.
#[inline(always)]
pub fn emit(
    ctx: &TcContext,
    t: &Tuple,
    dir: u8,
    d: &Decision,
    generation: u64,
    rate: u32,
    burst: u32,
) {
    // Drops and (optionally) allowed new flows only: laid out after the packet's path.
    core::hint::cold_path();
    if rate == 0 {
        return;
    }
    let now = crate::time::now_ns();
    if !take_token(now, rate, burst) {
        bump(COUNTER_EVENTS_RATE_LIMITED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(COUNTER_EVENTS_LOST);
        return;
    };
    entry.write(Event {
        saddr: addr_bytes(t.saddr),
        daddr: addr_bytes(t.daddr),
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        family: t.family,
        dir,
        verdict: if d.reason < reason::FIRST_DROP {
            VERDICT_ALLOW
        } else {
            VERDICT_DROP
        },
        reason: d.reason,
        _pad: 0,
        rule: d.rule,
        policy: d.policy,
        endpoint: d.endpoint,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        generation,
        ktime_ns: now,
    });
    entry.submit(0);
    bump(COUNTER_EVENTS_SENT);
}
