mod datapath_support;
use datapath_support::*;
use netward::model::Direction;
use netward_common::*;

#[test]
#[ignore]
fn perf_probe() {
    let mut dp = open(test_config("perf"));
    let mut p = PlanBuilder::new();
    p.pod("10.0.0.1", 2, 1, EP_ISOLATED_INGRESS, 1)
        .peer("10.0.0.2/32", 3)
        .allow(POLICY_PREFIX_FULL, DIR_INGRESS, 1, 3, PROTO_TCP, 80, 1, 0);
    dp.apply(&p.build()).unwrap();
    let ok = frame("10.0.0.2", "10.0.0.1", tcp(1000, 80));
    let r = dp.test_run(Direction::Ingress, &ok, 1_000_000).unwrap();
    eprintln!("established: {:?}", r);
    let bad = frame("10.0.0.2", "10.0.0.1", tcp(1000, 81));
    let r = dp.test_run(Direction::Ingress, &bad, 1_000_000).unwrap();
    eprintln!("denied new: {:?}", r);
    let mut arp = frame("10.0.0.2", "10.0.0.1", tcp(1000, 81));
    arp[12] = 0x08;
    arp[13] = 0x06;
    let r = dp.test_run(Direction::Ingress, &arp, 1_000_000).unwrap();
    eprintln!("arp: {:?}", r);
    let un = frame("10.0.0.2", "10.0.0.9", tcp(1000, 81));
    let r = dp.test_run(Direction::Ingress, &un, 1_000_000).unwrap();
    eprintln!(
        "unknown endpoint (new flow, creates ct then established): {:?}",
        r
    );
}
