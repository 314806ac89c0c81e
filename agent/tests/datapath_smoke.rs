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

/// Each enforcing program is one function: its body inlined into the classifier's entry.
/// LLVM stops inlining a large body into the entry the `#[classifier]` macro wraps around it,
/// and a BPF-to-BPF call then costs every packet ~7 ns (and the verifier more work).
#[test]
fn each_program_is_one_function() {
    let dp = open(test_config("onefunction"));
    for dir in [Direction::Egress, Direction::Ingress] {
        let id = dp.program_stats(dir).unwrap().id;
        let out = std::process::Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().count() > 100, "{text}");
        // The compiler's own mem* functions are called where it zeroes a buffer (the event
        // path); any other callee is a piece of the body that was not inlined.
        let builtin = ["_memset", "_memcpy", "_memmove", "_memcmp", "_bcmp"];
        let calls: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("call pc") && !builtin.iter().any(|b| l.trim_end().ends_with(b)))
            .collect();
        assert!(calls.is_empty(), "{dir:?}: BPF-to-BPF calls: {calls:?}");
    }
}

/// The verifier's work stays well under its limit (1M instructions per program): the programs
/// grow with every feature, and a load that fails on a node fails closed for every new pod.
/// The figure is printed so a change's cost shows in the test log.
#[test]
fn verifier_load_has_headroom() {
    const LIMIT: u32 = 1_000_000;
    let dp = open(test_config("verifier"));
    for dir in [Direction::Egress, Direction::Ingress] {
        let s = dp.program_stats(dir).unwrap();
        let Some(n) = s.verified_insns else {
            continue; // kernel too old to report it
        };
        println!(
            "{dir:?}: {n} instructions verified, {} bytes JITed",
            s.jited_bytes
        );
        assert!(
            n < LIMIT * 8 / 10,
            "{dir:?}: the verifier walked {n} instructions, over 80% of its {LIMIT} limit"
        );
    }
}
