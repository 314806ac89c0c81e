//! The plan evaluator: the eBPF program's lookups, in userspace, on a Plan.
//!
//! Per side of a flow (the source's egress, the destination's ingress):
//!
//! 0. source and destination are the same local endpoint: the packet stays inside the pod's
//!    network namespace and no program sees it (both sides not enforced);
//! 0. source and destination are the same local endpoint: the packet stays inside the pod's
//!    network namespace and no program sees it (both sides not enforced);
//! 1. ipcache LPM of the local address: no entry with `EP_LOCAL` -> not enforced here;
//! 2. not isolated in this direction (flags) -> allowed;
//! 3. ipcache LPM of the peer address -> peer class;
//! 4. policy LPM `(dir, subject, peer class, proto, port)` and `(dir, subject, ANY_PEER, ..)`:
//!    allowed iff one hits. The eBPF program needs only "hit or not"; here the lower
//!    (policy, rule) of the two hits is reported, which is the first rule that allows.
//!
//! The LPM is a longest-prefix search over the Plan's sorted entries: keys are canonical
//! (bits past the prefix length are zero, as the compiler writes them), so for each candidate
//! prefix length from the longest down, the masked key is looked up by binary search.
use std::net::IpAddr;

use netward_common::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, ANY_PEER, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EP_LOCAL, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use super::{Decision, Flow, SideVerdict};
use crate::model::Direction;
use crate::plan::{Plan, PolicyRef};

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
    let peer_class = ipcache_lookup(plan, peer).map(|v| v.peer_class);
    let hit = |class: u32| policy_lookup(plan, dir, me.subject_class, class, proto, port);
    let best = [peer_class.and_then(hit), hit(ANY_PEER)]
        .into_iter()
        .flatten()
        .min_by_key(|v| (v.policy, v.rule));
    match best.and_then(|v| plan.policy_ref(&v).map(|r| (r.clone(), v.rule))) {
        Some((policy, rule)) => SideVerdict::Allowed {
            isolated_by,
            policy,
            rule,
        },
        None => SideVerdict::Denied { isolated_by },
    }
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
