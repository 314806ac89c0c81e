//! Map sync: Plans are installed beside the live one and activated by one CONFIG write; the
//! old slot is cleaned; a map too small for the new Plan fails closed; pinned state survives
//! a new `Datapath` (agent restart).
mod datapath_support;

use datapath_support::*;
use netward::datapath::{Datapath, SyncError};
use netward::model::Direction::Ingress;
use netward::plan::Plan;
use netward_common::*;

/// A Plan with one isolated pod and `n` allowed TCP ports from one peer class.
fn plan_with_ports(first_port: u16, n: u16) -> Plan {
    let mut p = PlanBuilder::new();
    p.pod("10.1.0.1", 2, 1, EP_ISOLATED_INGRESS, 1)
        .peer("10.1.1.0/24", 3);
    for i in 0..n {
        p.allow(
            POLICY_PREFIX_FULL,
            DIR_INGRESS,
            1,
            3,
            PROTO_TCP,
            first_port + i,
            1,
            i,
        );
    }
    p.build()
}

fn in_slot<K: Copy, V: Copy>(
    entries: &[(K, V)],
    slot: u8,
    set: impl Fn(&mut K, u8),
) -> Vec<(K, V)> {
    entries
        .iter()
        .map(|(k, v)| {
            let mut k = *k;
            set(&mut k, slot);
            (k, *v)
        })
        .collect()
}

fn assert_live_is(dp: &mut Datapath, plan: &Plan) {
    let slot = Config::slot_of(dp.current_config().unwrap().generation);
    let (ip, pol) = dp.all_entries().unwrap();
    let mut want_ip = in_slot(&plan.ipcache, slot, |k, s| k.slot = s);
    let mut want_pol = in_slot(&plan.policy, slot, |k, s| k.slot = s);
    want_ip.sort();
    want_pol.sort();
    let mut ip = ip;
    let mut pol = pol;
    ip.sort();
    pol.sort();
    // Exactly the Plan, in the live slot, and nothing in the other slot.
    let mut hosts = dp.host_entries().unwrap();
    hosts.sort();
    let want_hosts: Vec<_> = want_ip
        .iter()
        .filter(|(k, _)| k.addr_prefix() == if k.family == FAMILY_V4 { 32 } else { 128 })
        .copied()
        .collect();
    assert_eq!(ip, want_ip);
    assert_eq!(pol, want_pol);
    // HOSTS mirrors the single-address entries.
    assert!(!want_hosts.is_empty());
    assert_eq!(hosts, want_hosts);
}

#[test]
fn apply_a_then_b_leaves_exactly_b() {
    let mut dp = open(test_config("sync-ab"));
    let a = plan_with_ports(1000, 20);
    let b = plan_with_ports(1010, 30); // overlaps a in 1010..1020
    let ra = dp.apply(&a).unwrap();
    assert_eq!((ra.generation, ra.slot), (1, 1));
    assert_eq!(ra.policy_written, 20);
    assert_live_is(&mut dp, &a);
    let rb = dp.apply(&b).unwrap();
    assert_eq!((rb.generation, rb.slot), (2, 0));
    assert_eq!((rb.policy_written, rb.policy_deleted), (30, 20));
    assert_live_is(&mut dp, &b);
    let cfg = dp.current_config().unwrap();
    assert_eq!((cfg.slot, cfg.generation), (0, 2));
    assert_ne!(cfg.flags & CFG_READY, 0);
    // The datapath enforces B.
    assert!(run(&dp, Ingress, &frame("10.1.1.5", "10.1.0.1", tcp(1, 1039))).0);
    assert!(!run(&dp, Ingress, &frame("10.1.1.5", "10.1.0.1", tcp(1, 1005))).0);
    // Applying the same Plan again flips generation and rewrites the other slot.
    let rc = dp.apply(&b).unwrap();
    assert_eq!(rc.generation, 3);
    assert_live_is(&mut dp, &b);
}

/// The address tables hold each slot in its own half: a Plan with more pods and Service
/// addresses than a slot holds fails closed, whatever the Plan in force holds.
#[test]
fn too_small_address_table_fails_closed_and_keeps_the_old_plan() {
    let mut cfg = test_config("sync-hosts-full");
    cfg.ipcache_max = 64; // 16 buckets of 4 per slot: 32 entries
    let mut dp = open(cfg);
    let with_peers = |n: u8| {
        let mut p = PlanBuilder::new();
        p.pod("10.1.0.1", 2, 1, EP_ISOLATED_INGRESS, 1);
        for i in 0..n {
            p.peer(&format!("10.1.1.{i}/32"), 3);
        }
        p.allow(POLICY_PREFIX_FULL, DIR_INGRESS, 1, 3, PROTO_TCP, 80, 1, 0);
        p.build()
    };
    // Small enough that the ipcache (both slots, 64) takes the next one.
    let a = with_peers(6);
    dp.apply(&a).unwrap();
    match dp.apply(&with_peers(40)) {
        Err(SyncError::SlotFull {
            map,
            needed,
            capacity,
        }) => assert_eq!((map, needed, capacity), ("HOST_TABLE", 41, 32)),
        other => panic!("expected SlotFull, got {other:?}"),
    }
    assert_eq!(dp.current_config().unwrap().generation, 1);
    assert_live_is(&mut dp, &a);
    assert_eq!(dp.counters().unwrap().sync_failures, 1);
    // A still enforces: 10.1.1.5 is a peer of class 3, 10.1.1.30 is in no class.
    assert!(run(&dp, Ingress, &frame("10.1.1.5", "10.1.0.1", tcp(1, 80))).0);
    assert!(!run(&dp, Ingress, &frame("10.1.1.30", "10.1.0.1", tcp(1, 80))).0);
    // A Plan as large as a slot still applies, beside the one in force.
    let b = with_peers(31);
    dp.apply(&b).unwrap();
    assert_live_is(&mut dp, &b);
    assert!(run(&dp, Ingress, &frame("10.1.1.30", "10.1.0.1", tcp(1, 80))).0);
}

#[test]
fn too_small_map_fails_closed_and_keeps_the_old_plan() {
    let mut cfg = test_config("sync-full");
    cfg.policy_max = 64;
    let mut dp = open(cfg);
    let a = plan_with_ports(2000, 30);
    dp.apply(&a).unwrap();
    // 30 live + 40 new > 64.
    let b = plan_with_ports(3000, 40);
    match dp.apply(&b) {
        Err(SyncError::MapFull {
            map,
            needed,
            capacity,
        }) => {
            assert_eq!((map, needed, capacity), ("POLICY_HASH", 70, 64));
        }
        other => panic!("expected MapFull, got {other:?}"),
    }
    assert_eq!(dp.current_config().unwrap().generation, 1);
    assert_live_is(&mut dp, &a);
    assert_eq!(dp.counters().unwrap().sync_failures, 1);
    // A still enforces (2005 allowed, 3005 denied).
    assert!(run(&dp, Ingress, &frame("10.1.1.5", "10.1.0.1", tcp(1, 2005))).0);
    assert!(!run(&dp, Ingress, &frame("10.1.1.5", "10.1.0.1", tcp(1, 3005))).0);
    // A Plan larger than the whole map also fails, even from scratch.
    let huge = plan_with_ports(4000, 65);
    assert!(matches!(dp.apply(&huge), Err(SyncError::MapFull { .. })));
    assert_live_is(&mut dp, &a);
    // A Plan that fits still applies afterwards.
    let c = plan_with_ports(5000, 10);
    dp.apply(&c).unwrap();
    assert_live_is(&mut dp, &c);
}

#[test]
fn pinned_state_survives_a_new_datapath() {
    let cfg = test_config("sync-restart");
    let mut first = open(cfg.clone());
    let a = plan_with_ports(1000, 5);
    first.apply(&a).unwrap();
    let established = frame("10.1.1.5", "10.1.0.1", tcp(7, 1001));
    assert_eq!(run(&first, Ingress, &established), (true, "policy_allow"));
    // "Restart": the old process' handle goes away without cleaning up.
    let dp = first.dp.take().unwrap();
    drop(dp);
    let mut second = open(cfg);
    assert_eq!(second.current_config().unwrap().generation, 1);
    assert_live_is(&mut second, &a);
    // Conntrack survived: the flow is still established under the new programs.
    assert_eq!(
        run(
            &second,
            Ingress,
            &frame("10.1.1.5", "10.1.0.1", tcp_ack(7, 1001))
        ),
        (true, "established")
    );
    let b = plan_with_ports(1003, 5);
    assert_eq!(second.apply(&b).unwrap().generation, 2);
    assert_live_is(&mut second, &b);
}
