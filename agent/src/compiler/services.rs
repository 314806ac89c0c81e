//! Service virtual addresses: the `SERVICES` and `SERVICE_POLICY` tables and the VIPs'
//! ipcache entries.
//!
//! The egress hook sees a connection to a Service virtual address before kube-proxy rewrites
//! it to an endpoint, so the decision cannot wait for the rewritten packet: it is made here,
//! once per (subject class, Service port). A subject class isolated for egress may connect to
//! a Service port iff its egress allows every endpoint of that port in the address's family
//! (kube-proxy may pick any of them). "Allows" is asked of the Plan itself, with the same
//! ipcache and policy lookups the datapath performs on a plain packet to that endpoint
//! ([`eval::plan::backend_allowed`]), so the two can never disagree; the attribution is the
//! rule allowing the first endpoint.
//!
//! Every virtual address also gets a full-length ipcache entry flagged `EP_SERVICE` whose
//! peer class is the one the address has as a plain address: ports the Service does not serve
//! (and ingress, where the address is a peer) behave exactly as without the Service. A virtual
//! address equal to a pod address is ignored (the pod wins; `netward lint` reports it). When
//! two Services claim the same (address, protocol, port), the first in (namespace, name) order
//! wins, as [`crate::model::Cluster::service_port`] does.
//!
//! Service port ids are per (Service, port, address family), since kube-proxy only rewrites
//! to endpoints of the virtual address's family; they are handed out walking Services, their
//! sorted addresses and their ports in order, so the tables are deterministic.
//!
//! Cost: one ipcache lookup per endpoint address; then per subject class isolated for egress
//! and per Service port, one (memoised) policy lookup per distinct (peer class, target port)
//! of its endpoints, usually one or two. Nothing at all without Services.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use netward_common::{
    IpcacheKey, IpcacheValue, PolicyValue, ServiceKey, ServicePolicyKey, ServiceValue, EP_SERVICE,
};

use super::index::addressable;
use crate::eval::plan::{allow_lookup, ipcache_lookup, service_key};
use crate::model::{Cluster, Direction};
use crate::plan::{Plan, ServicePortRef};

/// The slot the compiler writes.
const SLOT: u8 = 0;

/// Fill `plan`'s Service tables and add the virtual addresses to its ipcache. `plan` must
/// already hold its ipcache, policy entries and subject classes.
pub(crate) fn fill(cluster: &Cluster, plan: &mut Plan) {
    if cluster.services.is_empty() {
        return;
    }
    let pod_ips: HashSet<IpAddr> = cluster
        .pods
        .iter()
        .filter(|p| addressable(p))
        .flat_map(|p| p.ips.iter().copied())
        .collect();

    let mut ids: HashMap<(usize, usize, bool), u32> = HashMap::new();
    let mut ports: Vec<ServicePortRef> = Vec::new();
    let mut services: BTreeMap<ServiceKey, ServiceValue> = BTreeMap::new();
    let mut vips: BTreeMap<IpcacheKey, IpcacheValue> = BTreeMap::new();
    for (si, svc) in cluster.services.iter().enumerate() {
        for &vip in &svc.vips {
            if pod_ips.contains(&vip) {
                continue; // the pod wins
            }
            let v6 = vip.is_ipv6();
            for (pi, port) in svc.ports.iter().enumerate() {
                let key = service_key(vip, port.protocol.number(), port.port);
                if services.contains_key(&key) {
                    continue; // an earlier Service claims it
                }
                let id = *ids.entry((si, pi, v6)).or_insert_with(|| {
                    ports.push(ServicePortRef {
                        namespace: svc.namespace.clone(),
                        name: svc.name.clone(),
                        port_name: port.name.clone(),
                        protocol: port.protocol,
                        port: port.port,
                        backends: svc.backends(port).filter(|b| b.0.is_ipv6() == v6).collect(),
                    });
                    ports.len() as u32
                });
                services.insert(key, ServiceValue { service_port: id });
            }
            let prefix = if v6 { 128 } else { 32 };
            let key = match vip {
                IpAddr::V4(a) => IpcacheKey::v4(SLOT, a.octets(), prefix),
                IpAddr::V6(a) => IpcacheKey::v6(SLOT, a.octets(), prefix),
            };
            // The class the address has as a plain address (before any VIP entry exists).
            let plain = ipcache_lookup(plan, vip).map_or(0, |v| v.peer_class);
            vips.entry(key).or_insert(IpcacheValue {
                peer_class: plain,
                subject_class: 0,
                flags: EP_SERVICE,
                endpoint: 0,
            });
        }
    }

    // An ipBlock of exactly the VIP's /32 or /128 already has this key: same class, now
    // flagged.
    let mut ipcache: BTreeMap<IpcacheKey, IpcacheValue> =
        std::mem::take(&mut plan.ipcache).into_iter().collect();
    ipcache.extend(vips);
    plan.ipcache = ipcache.into_iter().collect();
    plan.services = services.into_iter().collect();
    plan.service_ports = ports;
    plan.service_policy = service_policy(plan);
}

/// `SERVICE_POLICY`: (subject class, Service port) for every subject class isolated for
/// egress whose egress allows every backend of the port. Generated in key order.
fn service_policy(plan: &Plan) -> Vec<(ServicePolicyKey, PolicyValue)> {
    // Backends as (peer class, protocol, target port), looked up once per address and
    // deduplicated per Service port (pods of one Service mostly share a class), first
    // occurrence first: the first backend's attribution stays first.
    let mut class_of: HashMap<IpAddr, Option<u32>> = HashMap::new();
    let targets: Vec<Vec<(Option<u32>, u8, u16)>> = plan
        .service_ports
        .iter()
        .map(|sp| {
            let mut seen = HashSet::new();
            sp.backends
                .iter()
                .map(|&(ip, port)| {
                    let class = *class_of
                        .entry(ip)
                        .or_insert_with(|| ipcache_lookup(plan, ip).map(|v| v.peer_class));
                    (class, sp.protocol.number(), port)
                })
                .filter(|t| seen.insert(*t))
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    let mut memo: HashMap<(Option<u32>, u8, u16), Option<PolicyValue>> = HashMap::new();
    for sc in &plan.subject_classes {
        if sc.egress_policies.is_empty() {
            continue;
        }
        memo.clear();
        'port: for (i, backends) in targets.iter().enumerate() {
            let mut first = None;
            for &t in backends {
                let hit = *memo
                    .entry(t)
                    .or_insert_with(|| allow_lookup(plan, Direction::Egress, sc.id, t.0, t.1, t.2));
                match hit {
                    Some(v) => {
                        first.get_or_insert(v);
                    }
                    None => continue 'port,
                }
            }
            // No endpoint at all: nothing to connect to, no entry (SERVICE_DENY).
            if let Some(v) = first {
                out.push((
                    ServicePolicyKey {
                        slot: SLOT,
                        _pad: 0,
                        _pad2: 0,
                        subject: sc.id,
                        service_port: i as u32 + 1,
                    },
                    v,
                ));
            }
        }
    }
    debug_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use netward_common::EP_SERVICE;

    use crate::compiler::compile;
    use crate::eval::plan::{ipcache_lookup, service_lookup, service_port};
    use crate::synth::{add_services, generate, SynthParams};
    use crate::testkit::*;

    fn two_services_one_vip() -> crate::model::Cluster {
        ClusterBuilder::new()
            .pod("a", "web", &[("app", "web")], "10.0.0.1")
            .port("http", 8080, TCP)
            .pod("a", "client", &[("app", "client")], "10.0.0.2")
            // Both claim 10.96.0.1 TCP/80; a/first sorts first and wins.
            .service("a", "second", &["10.96.0.1"])
            .svc_port("", TCP, 80, Target::Num(9999))
            .svc_port("other", TCP, 81, Target::Num(8080))
            .svc_selector(&[("app", "web")])
            .service("a", "first", &["10.96.0.1"])
            .svc_port("", TCP, 80, Target::Name("http".into()))
            .svc_selector(&[("app", "web")])
            .policy(
                policy("a", "client-out")
                    .select(&[("app", "client")])
                    .egress(rule().ip_block("10.96.0.0/16", &[]).tcp(80)),
            )
            .build()
    }

    #[test]
    fn first_service_wins_a_shared_address_and_port() {
        let c = two_services_one_vip();
        let plan = compile(&c, None);
        let vip = ip("10.96.0.1");
        let id = service_lookup(&plan, vip, 6, 80).unwrap();
        assert_eq!(service_port(&plan, id).unwrap().name, "first");
        assert_eq!(
            service_port(&plan, id).unwrap().backends,
            vec![(ip("10.0.0.1"), 8080)]
        );
        let other = service_lookup(&plan, vip, 6, 81).unwrap();
        assert_eq!(service_port(&plan, other).unwrap().name, "second");
        assert_eq!(c.service_port(vip, TCP, 80).unwrap().0.name, "first");
    }

    #[test]
    fn vip_entry_keeps_the_plain_class_and_is_flagged() {
        let c = two_services_one_vip();
        let with = compile(&c, None);
        let mut bare = c.clone();
        bare.services.clear();
        let without = compile(&bare, None);
        let vip = ip("10.96.0.1");
        let v = ipcache_lookup(&with, vip).unwrap();
        assert_eq!(v.flags, EP_SERVICE);
        // The class of the ipBlock 10.96.0.0/16 piece, as without the Service.
        assert_eq!(
            v.peer_class,
            ipcache_lookup(&without, vip).unwrap().peer_class
        );
        assert_eq!(with.policy, without.policy);
        assert_eq!(with.ipcache.len(), without.ipcache.len() + 1);
        assert!(with.ipcache.windows(2).all(|w| w[0].0 < w[1].0));
        // Egress to the VIP's port 80 is about the endpoint 10.0.0.1:8080, not the ipBlock.
        assert!(with.service_policy.is_empty());
    }

    #[test]
    fn deterministic_on_synthetic_clusters() {
        let params = SynthParams {
            namespaces: 10,
            pods: 200,
            policies: 40,
            nodes: 3,
            dual_stack_percent: 30,
            host_network_percent: 2,
        };
        let mut c = generate(&params, 3);
        add_services(&mut c, 3, 3);
        let a = compile(&c, None);
        assert_eq!(a, compile(&c, None));
        assert_eq!(a.services, compile(&c, None).services);
        assert_eq!(a.service_policy, compile(&c, None).service_policy);
        assert!(!a.service_policy.is_empty());
        assert!(a.services.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// Compile time with and without Services on the benchmark's cluster. Run with
    /// `cargo test --release -p netward --lib compiler::services -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement"]
    fn measure_compile_cost_of_services() {
        let c0 = generate(&SynthParams::bench(), 1);
        let mut c = c0.clone();
        add_services(&mut c, 4, 1);
        let backends: usize = c.services.iter().map(|s| s.endpoints.len()).sum();
        println!(
            "{} services, {} ports, {backends} endpoints",
            c.services.len(),
            c.services.iter().map(|s| s.ports.len()).sum::<usize>()
        );
        for node in [None, Some("node-001")] {
            let time = |c: &crate::model::Cluster| {
                let mut best = f64::MAX;
                let mut plan = None;
                for _ in 0..3 {
                    let t = Instant::now();
                    let p = compile(c, node);
                    best = best.min(t.elapsed().as_secs_f64() * 1e3);
                    plan = Some(p);
                }
                (best, plan.unwrap())
            };
            let (t0, _) = time(&c0);
            let (t1, p1) = time(&c);
            println!(
                "node {node:?}: without services {t0:.0} ms, with {t1:.0} ms; {} SERVICES, {} \
                 SERVICE_POLICY entries, {} egress-isolated subject classes",
                p1.services.len(),
                p1.service_policy.len(),
                p1.subject_classes
                    .iter()
                    .filter(|s| !s.egress_policies.is_empty())
                    .count()
            );
        }
    }
}
