//! The real classifier loads (verifier) and decides on a crafted packet.
mod datapath_support;

use datapath_support::*;
use netward::model::Direction;
use netward_common::*;

#[test]
fn loads_and_enforces_a_minimal_plan() {
    let mut dp = open(test_config("smoke"));
    let mut p = PlanBuilder::new();
    p.pod("10.0.0.1", 2, 1, EP_ISOLATED_INGRESS, 1)
        .peer("10.0.0.2/32", 3)
        .allow(POLICY_PREFIX_FULL, DIR_INGRESS, 1, 3, PROTO_TCP, 80, 1, 0);
    dp.apply(&p.build()).unwrap();
    let ok = frame("10.0.0.2", "10.0.0.1", tcp(1000, 80));
    let bad = frame("10.0.0.2", "10.0.0.1", tcp(1000, 81));
    assert!(dp.test_run(Direction::Ingress, &ok, 1).unwrap().pass);
    assert!(!dp.test_run(Direction::Ingress, &bad, 1).unwrap().pass);
}
