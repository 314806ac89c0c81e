//! The plan evaluator: the eBPF program's lookups, in userspace, on a Plan.
//!
//! Per side of a flow (the source's egress, the destination's ingress):
//!
//! 0. source and destination are the same local endpoint: the packet stays inside the pod's
//!    network namespace and no program sees it (both sides not enforced);
//! 1. ipcache LPM of the local address: no entry with `EP_LOCAL` -> not enforced here;
//! 2. not isolated in this direction (flags) -> allowed;
//! 3. ipcache LPM of the peer address -> peer class;
//! 4. policy LPM `(dir, subject, peer class, proto, port)` and `(dir, subject, ANY_PEER, ..)`:
//!    allowed iff one hits. The eBPF program needs only "hit or not"; here the lower
//!    (policy, rule) of the two hits is reported, which is the first rule that allows.
//!
//! On the egress side, when the peer's ipcache entry is flagged `EP_SERVICE` (a Service
//! virtual address) and the protocol has ports, `SERVICES (family, proto, addr, port)` is
//! looked up first: a hit gives the Service port id, and `SERVICE_POLICY (subject, id)`
//! decides (hit: allowed with its attribution; miss: reason `SERVICE_DENY`); a miss falls back
//! to step 4 with the address's plain peer class. For a denial the evaluator also names the
//! endpoints the policy lookup denies (the datapath needs only the miss).
//!
//! The LPM is a longest-prefix search over the Plan's sorted entries: keys are canonical
//! (bits past the prefix length are zero, as the compiler writes them), so for each candidate
//! prefix length from the longest down, the masked key is looked up by binary search.
use std::net::IpAddr;

use netward_common::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, ServiceKey, ServicePolicyKey, ANY_PEER,
    EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EP_LOCAL, EP_SERVICE, FAMILY_V4, FAMILY_V6,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

use super::{Decision, Flow, ServiceTarget, SideVerdict};
use crate::model::Direction;
use crate::plan::{Plan, PolicyRef, ServicePortRef};

/// The slot the compiler writes Plans for.
const SLOT: u8 = 0;

/// Evaluate `flow` the way the datapath does with `plan` installed.
pub fn evaluate(plan: &Plan, flow: &Flow) -> Decision {
    // Protocols without ports are looked up with port 0.
    let port = match flow.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => flow.port,
        _ => 0,
    };
    // A pod talking to itself (any of its addresses) never crosses its veth: the datapath
    // does not see the packet ("a pod cannot block access to itself").
    let endpoint = |ip| {
        ipcache_lookup(plan, ip)
            .filter(|v| v.flags & EP_LOCAL != 0)
            .map(|v| v.endpoint)
    };
    if let Some(e) = endpoint(flow.src) {
        if endpoint(flow.dst) == Some(e) {
            return Decision {
                egress: SideVerdict::NotEnforced,
                ingress: SideVerdict::NotEnforced,
            };
        }
    }
    Decision {
        egress: side(
            plan,
            Direction::Egress,
            flow.src,
            flow.dst,
            flow.protocol,
            port,
        ),
        ingress: side(
            plan,
            Direction::Ingress,
            flow.dst,
            flow.src,
            flow.protocol,
            port,
        ),
    }
}

fn side(
    plan: &Plan,
    dir: Direction,
    local: IpAddr,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> SideVerdict {
    let Some(me) = ipcache_lookup(plan, local).filter(|v| v.flags & EP_LOCAL != 0) else {
        return SideVerdict::NotEnforced;
    };
    let flag = match dir {
        Direction::Ingress => EP_ISOLATED_INGRESS,
        Direction::Egress => EP_ISOLATED_EGRESS,
    };
    if me.flags & flag == 0 {
        return SideVerdict::NotIsolated;
    }
    let isolated_by = isolating_policies(plan, me.subject_class, dir);
    // The roots 0.0.0.0/0 and ::/0 give every address a class; without them only ANY_PEER
    // entries can match.
    let peer_entry = ipcache_lookup(plan, peer);
    let has_ports = matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP);
    if dir == Direction::Egress
        && has_ports
        && peer_entry.is_some_and(|v| v.flags & EP_SERVICE != 0)
    {
        if let Some(id) = service_lookup(plan, peer, proto, port) {
            return service_verdict(plan, me.subject_class, id, isolated_by);
        }
    }
    let best = allow_lookup(
        plan,
        dir,
        me.subject_class,
        peer_entry.map(|v| v.peer_class),
        proto,
        port,
    );
    match best.and_then(|v| plan.policy_ref(&v).map(|r| (r.clone(), v.rule))) {
        Some((policy, rule)) => SideVerdict::Allowed {
            isolated_by,
            policy,
            rule,
        },
        None => SideVerdict::Denied { isolated_by },
    }
}

/// The policy lookups of one side: with the peer's class (when the ipcache gave one) and with
/// [`ANY_PEER`]; allowed iff either hits. Of two hits the lower (policy, rule) is returned:
/// the first rule that allows.
pub fn allow_lookup(
    plan: &Plan,
    dir: Direction,
    subject: u32,
    peer_class: Option<u32>,
    proto: u8,
    port: u16,
) -> Option<PolicyValue> {
    let hit = |class: u32| policy_lookup(plan, dir, subject, class, proto, port);
    [peer_class.and_then(hit), hit(ANY_PEER)]
        .into_iter()
        .flatten()
        .min_by_key(|v| (v.policy, v.rule))
}

/// A connection from subject class `subject` to Service port `id`: `SERVICE_POLICY` decides.
fn service_verdict(plan: &Plan, subject: u32, id: u32, isolated_by: Vec<PolicyRef>) -> SideVerdict {
    if let Some(v) = service_policy_lookup(plan, subject, id) {
        if let Some(policy) = plan.policy_ref(&v) {
            return SideVerdict::Allowed {
                isolated_by,
                policy: policy.clone(),
                rule: v.rule,
            };
        }
    }
    let sp = service_port(plan, id);
    let backends = sp.map(|s| s.backends.as_slice()).unwrap_or_default();
    let denied = backends
        .iter()
        .copied()
        .filter(|&(ip, port)| backend_allowed(plan, subject, ip, port, sp_proto(sp)).is_none())
        .collect();
    SideVerdict::ServiceDenied {
        isolated_by,
        service: sp.map(service_target).unwrap_or_else(|| ServiceTarget {
            namespace: String::new(),
            name: format!("<unknown service port {id}>"),
            port_name: String::new(),
            protocol: crate::model::Protocol::Tcp,
            port: 0,
        }),
        backends: backends.len(),
        denied,
    }
}

fn sp_proto(sp: Option<&ServicePortRef>) -> u8 {
    sp.map_or(0, |s| s.protocol.number())
}

/// Whether subject class `subject`'s egress allows the rewritten flow to one backend, with
/// the datapath's lookups (the backend address's ipcache class, then the policy map).
pub fn backend_allowed(
    plan: &Plan,
    subject: u32,
    ip: IpAddr,
    port: u16,
    proto: u8,
) -> Option<PolicyValue> {
    let class = ipcache_lookup(plan, ip).map(|v| v.peer_class);
    allow_lookup(plan, Direction::Egress, subject, class, proto, port)
}

fn service_target(sp: &ServicePortRef) -> ServiceTarget {
    ServiceTarget {
        namespace: sp.namespace.clone(),
        name: sp.name.clone(),
        port_name: sp.port_name.clone(),
        protocol: sp.protocol,
        port: sp.port,
    }
}

/// The Service port table entry of id `id` (1-based).
pub fn service_port(plan: &Plan, id: u32) -> Option<&ServicePortRef> {
    (id as usize)
        .checked_sub(1)
        .and_then(|i| plan.service_ports.get(i))
}

/// The `SERVICES` key of (virtual address, protocol, port) in the compiler's slot.
pub fn service_key(ip: IpAddr, proto: u8, port: u16) -> ServiceKey {
    let (family, addr) = match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    };
    ServiceKey {
        slot: SLOT,
        family,
        proto,
        _pad: 0,
        port,
        _pad2: 0,
        addr,
    }
}

/// `SERVICES` lookup: the Service port id a connection to (ip, proto, port) is rewritten for.
pub fn service_lookup(plan: &Plan, ip: IpAddr, proto: u8, port: u16) -> Option<u32> {
    let key = service_key(ip, proto, port);
    plan.services
        .binary_search_by(|(k, _)| k.cmp(&key))
        .ok()
        .map(|i| plan.services[i].1.service_port)
}

/// `SERVICE_POLICY` lookup.
pub fn service_policy_lookup(plan: &Plan, subject: u32, id: u32) -> Option<PolicyValue> {
    let key = ServicePolicyKey {
        slot: SLOT,
        _pad: 0,
        _pad2: 0,
        subject,
        service_port: id,
    };
    plan.service_policy
        .binary_search_by(|(k, _)| k.cmp(&key))
        .ok()
        .map(|i| plan.service_policy[i].1)
}

/// Policies isolating subject class `class` in `dir`, from the Plan's class table.
fn isolating_policies(plan: &Plan, class: u32, dir: Direction) -> Vec<PolicyRef> {
    let Some(sc) = (class as usize)
        .checked_sub(1)
        .and_then(|i| plan.subject_classes.get(i))
    else {
        return Vec::new();
    };
    let ids = match dir {
        Direction::Ingress => &sc.ingress_policies,
        Direction::Egress => &sc.egress_policies,
    };
    ids.iter()
        .filter_map(|&id| {
            plan.policy_ref(&PolicyValue {
                policy: id,
                ..Default::default()
            })
        })
        .cloned()
        .collect()
}

/// Longest-prefix match of `ip` in the ipcache.
pub fn ipcache_lookup(plan: &Plan, ip: IpAddr) -> Option<IpcacheValue> {
    let (bits, full) = match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32u8),
        IpAddr::V6(a) => (u128::from(a), 128u8),
    };
    for prefix in (0..=full).rev() {
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix as u32)
        };
        let addr = (bits & mask).to_be_bytes();
        let key = match ip {
            IpAddr::V4(_) => IpcacheKey::v4(SLOT, [addr[0], addr[1], addr[2], addr[3]], prefix),
            IpAddr::V6(_) => IpcacheKey::v6(SLOT, addr, prefix),
        };
        if let Ok(i) = plan.ipcache.binary_search_by(|(k, _)| k.cmp(&key)) {
            return Some(plan.ipcache[i].1);
        }
    }
    None
}

/// Longest-prefix match of `(dir, subject, peer, proto, port)` in the policy map.
pub fn policy_lookup(
    plan: &Plan,
    dir: Direction,
    subject: u32,
    peer: u32,
    proto: u8,
    port: u16,
) -> Option<PolicyValue> {
    let lens = (POLICY_PREFIX_ANY_PORT..=POLICY_PREFIX_FULL)
        .rev()
        .chain([POLICY_PREFIX_ANY_PROTO]);
    for len in lens {
        let (p, port) = if len == POLICY_PREFIX_ANY_PROTO {
            (0, 0)
        } else {
            let port_bits = len - POLICY_PREFIX_ANY_PORT;
            let mask = if port_bits == 0 {
                0
            } else {
                u16::MAX << (16 - port_bits)
            };
            (proto, port & mask)
        };
        let key = PolicyKey::new(len, SLOT, dir.code(), subject, peer, p, port);
        if let Ok(i) = plan.policy.binary_search_by(|(k, _)| k.cmp(&key)) {
            return Some(plan.policy[i].1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use netward_common::{POLICY_PREFIX_ANY_PORT as P88, PROTO_ICMP};

    fn v4(a: [u8; 4], len: u8, class: u32) -> (IpcacheKey, IpcacheValue) {
        (
            IpcacheKey::v4(SLOT, a, len),
            IpcacheValue {
                peer_class: class,
                ..Default::default()
            },
        )
    }

    fn allow(len: u32, peer: u32, proto: u8, port: u16, policy: u32) -> (PolicyKey, PolicyValue) {
        (
            PolicyKey::new(len, SLOT, DIR_IN, 1, peer, proto, port),
            PolicyValue {
                policy,
                rule: 0,
                flags: 0,
            },
        )
    }

    const DIR_IN: u8 = netward_common::DIR_INGRESS;

    fn plan(
        mut ipcache: Vec<(IpcacheKey, IpcacheValue)>,
        mut policy: Vec<(PolicyKey, PolicyValue)>,
    ) -> Plan {
        ipcache.sort();
        policy.sort();
        Plan {
            ipcache,
            policy,
            ..Default::default()
        }
    }

    #[test]
    fn ipcache_longest_prefix_wins() {
        let p = plan(
            vec![
                v4([0; 4], 0, 1),
                v4([10, 0, 0, 0], 8, 2),
                v4([10, 1, 2, 0], 24, 3),
                v4([10, 1, 2, 3], 32, 4),
            ],
            vec![],
        );
        let class = |s: &str| ipcache_lookup(&p, s.parse().unwrap()).map(|v| v.peer_class);
        assert_eq!(class("10.1.2.3"), Some(4));
        assert_eq!(class("10.1.2.4"), Some(3));
        assert_eq!(class("10.9.9.9"), Some(2));
        assert_eq!(class("11.0.0.1"), Some(1));
        // No IPv6 root in this hand-made plan: nothing matches.
        assert_eq!(class("fd00::1"), None);
    }

    #[test]
    fn policy_longest_prefix_over_proto_and_port_blocks() {
        let p = plan(
            vec![],
            vec![
                allow(80, 7, 0, 0, 5),                 // any proto: policy 5
                allow(P88, 7, PROTO_TCP, 0, 4),        // any TCP port: policy 4
                allow(P88 + 6, 7, PROTO_TCP, 1024, 3), // 1024..2047: policy 3
                allow(104, 7, PROTO_TCP, 1500, 2),     // 1500: policy 2
            ],
        );
        let hit = |proto, port| {
            policy_lookup(&p, Direction::Ingress, 1, 7, proto, port).map(|v| v.policy)
        };
        assert_eq!(hit(PROTO_TCP, 1500), Some(2));
        assert_eq!(hit(PROTO_TCP, 2047), Some(3));
        assert_eq!(hit(PROTO_TCP, 2048), Some(4));
        assert_eq!(hit(PROTO_UDP, 1500), Some(5));
        assert_eq!(hit(PROTO_ICMP, 0), Some(5));
        // Other subject, peer or direction: no entry.
        assert_eq!(
            policy_lookup(&p, Direction::Egress, 1, 7, PROTO_TCP, 1),
            None
        );
        assert_eq!(
            policy_lookup(&p, Direction::Ingress, 1, 8, PROTO_TCP, 1),
            None
        );
        assert_eq!(
            policy_lookup(&p, Direction::Ingress, 2, 7, PROTO_TCP, 1),
            None
        );
    }
}
