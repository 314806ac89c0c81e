//! Reading the per-CPU counters (summed over CPUs) plus map sync's own failure count.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use netward_common::{
    reason, COUNTER_ALLOWED, COUNTER_DENIED, COUNTER_EVENTS_LOST, COUNTER_EVENTS_RATE_LIMITED,
    COUNTER_EVENTS_SENT, COUNTER_REASON_BASE,
};
use serde::Serialize;

use super::Datapath;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub allowed: u64,
    pub denied: u64,
    /// Packets per reason (`reason::name`), only non-zero ones.
    pub by_reason: BTreeMap<&'static str, u64>,
    pub events_sent: u64,
    pub events_rate_limited: u64,
    pub events_lost: u64,
    /// Plans that failed to apply in this agent process (map full, ...): each left the
    /// previous Plan in force.
    pub sync_failures: u64,
}

impl Counters {
    /// Packets counted for `reason` (a `reason::*` code).
    pub fn reason(&self, r: u8) -> u64 {
        self.by_reason.get(reason::name(r)).copied().unwrap_or(0)
    }
}

impl Datapath {
    /// Counters summed over CPUs (they survive agent restarts with the pinned map).
    pub fn counters(&self) -> Result<Counters> {
        let map = self.bpf.map("COUNTERS").context("COUNTERS missing")?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let get = |i: u32| -> Result<u64> { Ok(arr.get(&i, 0)?.iter().sum()) };
        let mut c = Counters {
            allowed: get(COUNTER_ALLOWED)?,
            denied: get(COUNTER_DENIED)?,
            events_sent: get(COUNTER_EVENTS_SENT)?,
            events_rate_limited: get(COUNTER_EVENTS_RATE_LIMITED)?,
            events_lost: get(COUNTER_EVENTS_LOST)?,
            sync_failures: self.sync_failures,
            ..Default::default()
        };
        for r in 0..reason::COUNT {
            let n = get(COUNTER_REASON_BASE + r as u32)?;
            if n > 0 {
                c.by_reason.insert(reason::name(r), n);
            }
        }
        Ok(c)
    }
}
