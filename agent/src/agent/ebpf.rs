//! The production [`Enforcer`]: netward's eBPF datapath (pinned maps and links under bpffs).
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::enforce::Enforcer;
use super::status::{Counters, FlowEvent, MapFill};
use crate::datapath::{Datapath, DatapathConfig, EventReader, GcHandle, Verdict};
use crate::plan::Plan;

pub struct EbpfEnforcer {
    dp: Datapath,
    events: EventReader,
    /// The conntrack sweep (`None`: off), stopped when the enforcer goes.
    gc: Option<GcHandle>,
}

impl EbpfEnforcer {
    /// Load (or adopt the pinned) datapath, and start sweeping its expired conntrack entries
    /// every `cfg.conntrack_gc_interval`.
    pub fn open(cfg: DatapathConfig) -> Result<EbpfEnforcer> {
        let dp = Datapath::open_or_create(cfg)?;
        let events = dp.events()?;
        let gc = dp.spawn_conntrack_gc()?;
        Ok(EbpfEnforcer { dp, events, gc })
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}

impl Enforcer for EbpfEnforcer {
    fn describe(&self) -> String {
        format!(
            "ebpf ({:?}) pinned at {}",
            self.dp.attach_mode(),
            self.dp.config().bpffs_dir.display()
        )
    }

    fn apply(&mut self, plan: &Arc<Plan>) -> Result<u64> {
        Ok(self.dp.apply(plan)?.generation)
    }

    fn attach(&mut self, ifname: &str) -> Result<()> {
        self.dp.attach(ifname)
    }

    fn detach(&mut self, ifname: &str) -> Result<()> {
        self.dp.detach(ifname)
    }

    fn detach_index(&mut self, ifindex: u32) -> Result<()> {
        self.dp.detach_index(ifindex)
    }

    fn attached(&self) -> Result<Vec<u32>> {
        self.dp.attached()
    }

    fn recheck_direct(&mut self) -> Result<()> {
        self.dp.recheck_direct().map(drop)
    }

    fn counters(&self) -> Result<Counters> {
        let c = self.dp.counters()?;
        Ok(Counters {
            allowed: c.allowed,
            denied: c.denied,
            // `direction/reason`, as metrics and `netward status` split them.
            by_reason: c
                .ingress_by_reason
                .iter()
                .map(|(k, v)| (format!("ingress/{k}"), *v))
                .chain(
                    c.egress_by_reason
                        .iter()
                        .map(|(k, v)| (format!("egress/{k}"), *v)),
                )
                .collect(),
            events_lost: c.events_lost,
            sync_failures: c.sync_failures,
            flow_cache_hits: c.flow_cache_hits,
            decision_cache_hits: c.decision_cache_hits,
            direct_delivered: c.direct_delivered,
            direct_fallback: c.direct_fallback,
        })
    }

    fn map_fill(&mut self) -> Result<Vec<MapFill>> {
        let (ipcache, policy) = self.dp.all_entries()?;
        let endpoints = self.dp.endpoint_entries()?.len();
        let cfg = self.dp.config();
        let mut fill = vec![
            MapFill {
                map: "ipcache".into(),
                entries: ipcache.len() as u64,
                capacity: cfg.ipcache_max as u64,
            },
            MapFill {
                map: "policy".into(),
                entries: policy.len() as u64,
                capacity: cfg.policy_max as u64,
            },
            MapFill {
                map: "endpoints".into(),
                entries: endpoints as u64,
                capacity: cfg.endpoints_max as u64,
            },
        ];
        // Live flows as the last sweep counted them (none yet: not reported).
        if let Some(stats) = self.gc.as_ref().map(GcHandle::stats) {
            if stats.sweeps.load(Ordering::Relaxed) > 0 {
                fill.push(MapFill {
                    map: "conntrack".into(),
                    entries: stats.live.load(Ordering::Relaxed),
                    capacity: cfg.conntrack_max as u64,
                });
            }
        }
        Ok(fill)
    }

    fn poll_events(&mut self) -> Result<Vec<FlowEvent>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(self
            .events
            .drain()
            .into_iter()
            .map(|e| FlowEvent {
                time_ms: now,
                verdict: match e.verdict {
                    Verdict::Allow => "allowed".into(),
                    Verdict::Drop => "denied".into(),
                },
                reason: e.reason.to_string(),
                direction: e.direction.to_string(),
                protocol: crate::model::Protocol::from_number(e.protocol)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| format!("proto-{}", e.protocol)),
                src: e.src,
                sport: e.sport,
                dst: e.dst,
                dport: e.dport,
                src_pod: None,
                dst_pod: None,
                policy: e.policy.map(|p| p.key()),
                rule: e.rule,
                generation: e.generation,
            })
            .collect())
    }
}
