//! Reading the per-CPU counters (summed over CPUs) plus map sync's own failure count.
//!
//! The datapath bumps one counter per packet, by the hook's direction and the verdict reason
//! (`counter_index`); allowed/denied totals are sums over reasons (below `FIRST_DROP` pass).
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use netward_common::{
    counter_index, reason, COUNTER_DECISION_CACHE_HITS, COUNTER_DIRECT, COUNTER_DIRECT_FALLBACK,
    COUNTER_EVENTS_LOST, COUNTER_EVENTS_RATE_LIMITED, COUNTER_EVENTS_SENT, DIR_EGRESS, DIR_INGRESS,
};
use serde::Serialize;

use super::Datapath;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub allowed: u64,
    pub denied: u64,
    /// Packets per reason (`reason::name`), both directions, only non-zero ones.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Packets per reason at the pod's ingress hook (what it receives), only non-zero ones.
    pub ingress_by_reason: BTreeMap<&'static str, u64>,
    /// Packets per reason at the pod's egress hook (what it sends), only non-zero ones.
    pub egress_by_reason: BTreeMap<&'static str, u64>,
    pub events_sent: u64,
    pub events_rate_limited: u64,
    pub events_lost: u64,
    /// Packets of tracked flows (`established`, `reply`) the per-CPU flow cache answered
    /// without reading conntrack.
    pub flow_cache_hits: u64,
    /// Policy decisions (new flows, re-checks) the per-CPU decision cache answered without
    /// the policy lookups.
    pub decision_cache_hits: u64,
    /// Packets delivered straight to another local pod's veth (`direct_delivery`).
    pub direct_delivered: u64,
    /// Packets of such flows that took the node's path instead (no route to a pod veth at
    /// that moment, TTL exhausted).
    pub direct_fallback: u64,
    /// Plans that failed to apply in this agent process (map full, ...): each left the
    /// previous Plan in force.
    pub sync_failures: u64,
}

impl Counters {
    /// Packets counted for `reason` (a `reason::*` code), both directions.
    pub fn reason(&self, r: u8) -> u64 {
        self.by_reason.get(reason::name(r)).copied().unwrap_or(0)
    }

    /// Packets counted for `reason` at the hook of direction `dir` (`DIR_*`).
    pub fn reason_dir(&self, dir: u8, r: u8) -> u64 {
        let m = if dir == DIR_EGRESS {
            &self.egress_by_reason
        } else {
            &self.ingress_by_reason
        };
        m.get(reason::name(r)).copied().unwrap_or(0)
    }

    /// Sum per-reason figures into the totals (allowed/denied, both directions).
    fn add(&mut self, dir: u8, r: u8, n: u64) {
        if n == 0 {
            return;
        }
        let name = reason::name(r);
        if r < reason::FIRST_DROP {
            self.allowed += n;
        } else {
            self.denied += n;
        }
        *self.by_reason.entry(name).or_default() += n;
        let m = if dir == DIR_EGRESS {
            &mut self.egress_by_reason
        } else {
            &mut self.ingress_by_reason
        };
        // (Two codes share a name: `ESTABLISHED` and `ESTABLISHED_CACHED`, ...)
        *m.entry(name).or_default() += n;
    }
}

impl Datapath {
    /// Counters summed over CPUs (they survive agent restarts with the pinned map).
    pub fn counters(&self) -> Result<Counters> {
        let map = self.bpf.map("COUNTERS").context("COUNTERS missing")?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let get = |i: u32| -> Result<u64> { Ok(arr.get(&i, 0)?.iter().sum()) };
        let mut c = Counters {
            events_sent: get(COUNTER_EVENTS_SENT)?,
            events_rate_limited: get(COUNTER_EVENTS_RATE_LIMITED)?,
            events_lost: get(COUNTER_EVENTS_LOST)?,
            decision_cache_hits: get(COUNTER_DECISION_CACHE_HITS)?,
            direct_delivered: get(COUNTER_DIRECT)?,
            direct_fallback: get(COUNTER_DIRECT_FALLBACK)?,
            sync_failures: self.sync_failures,
            ..Default::default()
        };
        for dir in [DIR_INGRESS, DIR_EGRESS] {
            for r in 0..reason::COUNT {
                let n = get(counter_index(dir, r))?;
                if r == reason::ESTABLISHED_CACHED || r == reason::REPLY_CACHED {
                    c.flow_cache_hits += n;
                }
                c.add(dir, r, n);
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_directions_add_up() {
        let mut c = Counters::default();
        c.add(DIR_INGRESS, reason::POLICY_DENY, 3);
        c.add(DIR_EGRESS, reason::POLICY_DENY, 2);
        c.add(DIR_EGRESS, reason::ESTABLISHED, 7);
        c.add(DIR_INGRESS, reason::NON_IP, 0);
        c.add(DIR_EGRESS, reason::ESTABLISHED_CACHED, 5);
        c.add(DIR_EGRESS, reason::REPLY_CACHED, 1);
        c.add(DIR_EGRESS, reason::REPLY, 2);
        assert_eq!((c.allowed, c.denied), (15, 5));
        assert_eq!(c.reason_dir(DIR_EGRESS, reason::ESTABLISHED), 12);
        assert_eq!(c.reason_dir(DIR_EGRESS, reason::REPLY), 3);
        assert_eq!(c.reason(reason::POLICY_DENY), 5);
        assert_eq!(c.reason_dir(DIR_INGRESS, reason::POLICY_DENY), 3);
        assert_eq!(c.reason_dir(DIR_EGRESS, reason::POLICY_DENY), 2);
        assert_eq!(c.reason_dir(DIR_INGRESS, reason::ESTABLISHED), 0);
        assert!(!c.by_reason.contains_key("non_ip"));
    }
}
