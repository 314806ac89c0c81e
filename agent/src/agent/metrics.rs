//! Prometheus metrics (prometheus-client), served on `/metrics`.
//!
//! Counters that live in the kernel (per-CPU verdict counters) or in the watchers are
//! cumulative totals read from their owner; [`Metrics::set_total`] advances the exported
//! counter to the new total so the exported series stays a proper monotonic counter.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::status::{Counters, MapFill, PlanSize};
use crate::k8s::{Resource, WatchStats};

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    verdicts: Family<Labels, Counter<u64, AtomicU64>>,
    packets: Family<Labels, Counter<u64, AtomicU64>>,
    map_entries: Family<Labels, Gauge<i64>>,
    map_capacity: Family<Labels, Gauge<i64>>,
    plan_entries: Family<Labels, Gauge<i64>>,
    compile_seconds: Histogram,
    sync_latency_seconds: Histogram,
    syncs: Family<Labels, Counter<u64, AtomicU64>>,
    watch_restarts: Family<Labels, Counter<u64, AtomicU64>>,
    watch_errors: Family<Labels, Counter<u64, AtomicU64>>,
    watch_objects: Family<Labels, Gauge<i64>>,
    generation: Gauge<i64>,
    ready: Gauge<i64>,
    endpoints_attached: Gauge<i64>,
    flow_cache_hits: Counter<u64, AtomicU64>,
    decision_cache_hits: Counter<u64, AtomicU64>,
    direct_delivered: Counter<u64, AtomicU64>,
    direct_fallback: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("netward"),
            verdicts: Family::default(),
            packets: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            plan_entries: Family::default(),
            // 100 µs .. ~6.5 s
            compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            sync_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            syncs: Family::default(),
            watch_restarts: Family::default(),
            watch_errors: Family::default(),
            watch_objects: Family::default(),
            generation: Gauge::default(),
            ready: Gauge::default(),
            endpoints_attached: Gauge::default(),
            flow_cache_hits: Counter::default(),
            decision_cache_hits: Counter::default(),
            direct_delivered: Counter::default(),
            direct_fallback: Counter::default(),
        };
        m.registry.register(
            "direct_delivered_packets",
            "Packets of same-node TCP flows delivered straight to the receiving pod's veth \
             (skipping the node's IP stack and netfilter)",
            m.direct_delivered.clone(),
        );
        m.registry.register(
            "direct_fallback_packets",
            "Packets of directly delivered flows that took the node's path instead (no route \
             to a pod veth at that moment, TTL exhausted)",
            m.direct_fallback.clone(),
        );
        m.registry.register(
            "decision_cache_hits",
            "Policy decisions (new flows, re-checks after a Plan change) answered by the \
             per-CPU decision cache without the policy lookups",
            m.decision_cache_hits.clone(),
        );
        m.registry.register(
            "flow_cache_hits",
            "Packets of tracked flows (established, reply) answered by the per-CPU flow cache \
             without a conntrack lookup",
            m.flow_cache_hits.clone(),
        );
        m.registry.register(
            "verdicts",
            "Packets by verdict (allowed/denied), as counted by the datapath",
            m.verdicts.clone(),
        );
        m.registry.register(
            "packets_by_reason",
            "Packets by direction and verdict reason, as counted by the datapath",
            m.packets.clone(),
        );
        m.registry.register(
            "map_entries",
            "Entries in each eBPF map",
            m.map_entries.clone(),
        );
        m.registry.register(
            "map_capacity",
            "Capacity (max_entries) of each eBPF map",
            m.map_capacity.clone(),
        );
        m.registry.register(
            "plan_entries",
            "Size of the Plan in force, per table",
            m.plan_entries.clone(),
        );
        m.registry.register(
            "compile_seconds",
            "Time to rebuild the model and compile a Plan",
            m.compile_seconds.clone(),
        );
        m.registry.register(
            "sync_latency_seconds",
            "From the first watch event seen to the maps updated",
            m.sync_latency_seconds.clone(),
        );
        m.registry.register(
            "syncs",
            "Plan syncs by result (applied, unchanged, failed)",
            m.syncs.clone(),
        );
        m.registry.register(
            "watch_restarts",
            "Relists of a watched resource (410 Gone, API server restart, reconnect)",
            m.watch_restarts.clone(),
        );
        m.registry.register(
            "watch_errors",
            "Failed list/watch calls (retried with backoff)",
            m.watch_errors.clone(),
        );
        m.registry.register(
            "watch_objects",
            "Objects in each watch store",
            m.watch_objects.clone(),
        );
        m.registry.register(
            "generation",
            "Generation of the Plan in force",
            m.generation.clone(),
        );
        m.registry.register(
            "ready",
            "1 once a complete Plan is enforced",
            m.ready.clone(),
        );
        m.registry.register(
            "endpoints_attached",
            "Local pod veths with the programs attached",
            m.endpoints_attached.clone(),
        );
        m
    }

    /// Advance a counter to a cumulative total read elsewhere.
    fn set_total(c: &Counter<u64, AtomicU64>, total: u64) {
        let now = c.get();
        if total > now {
            c.inc_by(total - now);
        }
    }

    pub fn observe_sync(
        &self,
        result: &'static str,
        compile_secs: Option<f64>,
        latency_secs: Option<f64>,
    ) {
        self.syncs
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if let Some(s) = compile_secs {
            self.compile_seconds.observe(s);
        }
        if let Some(s) = latency_secs {
            self.sync_latency_seconds.observe(s);
        }
    }

    pub fn set_plan(&self, size: &PlanSize, generation: u64) {
        for (table, n) in [
            ("policies", size.policies),
            ("endpoints", size.endpoints),
            ("subject_classes", size.subject_classes),
            ("peer_classes", size.peer_classes),
            ("ipcache", size.ipcache_entries),
            ("policy", size.policy_entries),
        ] {
            self.plan_entries
                .get_or_create(&vec![("table", table.to_string())])
                .set(n as i64);
        }
        self.generation.set(generation as i64);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready as i64);
    }

    pub fn set_attached(&self, n: usize) {
        self.endpoints_attached.set(n as i64);
    }

    pub fn set_datapath(&self, counters: &Counters, maps: &[MapFill]) {
        Self::set_total(
            &self
                .verdicts
                .get_or_create(&vec![("verdict", "allowed".to_string())]),
            counters.allowed,
        );
        Self::set_total(
            &self
                .verdicts
                .get_or_create(&vec![("verdict", "denied".to_string())]),
            counters.denied,
        );
        Self::set_total(&self.flow_cache_hits, counters.flow_cache_hits);
        Self::set_total(&self.decision_cache_hits, counters.decision_cache_hits);
        Self::set_total(&self.direct_delivered, counters.direct_delivered);
        Self::set_total(&self.direct_fallback, counters.direct_fallback);
        for (key, n) in &counters.by_reason {
            let (direction, reason) = key.split_once('/').unwrap_or(("any", key));
            let labels = vec![
                ("direction", direction.to_string()),
                ("reason", reason.to_string()),
            ];
            Self::set_total(&self.packets.get_or_create(&labels), *n);
        }
        for m in maps {
            let labels = vec![("map", m.map.clone())];
            self.map_entries
                .get_or_create(&labels)
                .set(m.entries as i64);
            self.map_capacity
                .get_or_create(&labels)
                .set(m.capacity as i64);
        }
    }

    pub fn set_watches(&self, stats: &WatchStats, sizes: &[(Resource, usize)]) {
        for r in Resource::ALL {
            let labels = vec![("resource", r.as_str().to_string())];
            Self::set_total(
                &self.watch_restarts.get_or_create(&labels),
                stats.restarts(r),
            );
            Self::set_total(&self.watch_errors.get_or_create(&labels), stats.errors(r));
        }
        for (r, n) in sizes {
            self.watch_objects
                .get_or_create(&vec![("resource", r.as_str().to_string())])
                .set(*n as i64);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_reason_packets_carry_the_direction() {
        let m = Metrics::new();
        let mut c = Counters {
            allowed: 7,
            denied: 4,
            flow_cache_hits: 5,
            decision_cache_hits: 2,
            direct_delivered: 9,
            direct_fallback: 1,
            ..Default::default()
        };
        c.by_reason.insert("ingress/policy_deny".into(), 3);
        c.by_reason.insert("egress/policy_deny".into(), 1);
        c.by_reason.insert("egress/reply".into(), 7);
        m.set_datapath(&c, &[]);
        let text = m.encode();
        let has = |needle: &str| text.lines().any(|l| l.contains(needle));
        for needle in [
            r#"direction="ingress",reason="policy_deny"} 3"#,
            r#"direction="egress",reason="policy_deny"} 1"#,
            r#"direction="egress",reason="reply"} 7"#,
            r#"verdict="denied"} 4"#,
            "netward_flow_cache_hits_total 5",
            "netward_decision_cache_hits_total 2",
            "netward_direct_delivered_packets_total 9",
            "netward_direct_fallback_packets_total 1",
        ] {
            assert!(has(needle), "{needle} missing from\n{text}");
        }
    }
}
