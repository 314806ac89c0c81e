//! Soundness of lint's claims on random clusters, checked against the spec evaluator and
//! the model: removing a rule reported duplicate or shadowed never changes a verdict, and a
//! selector reported as matching nothing matches no pod.
use proptest::prelude::*;

use crate::eval::spec;
use crate::lint::lint;
use crate::model::{Cluster, Direction, LabelSelector, Operator, Rule};
use crate::testkit::*;

const PODS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
const OTHERS: [&str; 2] = ["10.0.0.9", "192.0.2.1"];

fn selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(sel(&[])),
        Just(sel(&[("app", "a")])),
        Just(sel(&[("app", "b")])),
        Just(sel(&[("app", "a"), ("tier", "t")])),
        Just(sel(&[("tier", "t")])),
        Just(sel_exprs(&[], vec![req("app", Operator::In, &["a", "b"])])),
        Just(sel_exprs(&[], vec![req("tier", Operator::NotIn, &["t"])])),
        Just(sel_exprs(&[], vec![req("app", Operator::Exists, &[])])),
    ]
}

fn ns_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(sel(&[])),
        Just(sel(&[("team", "x")])),
        Just(sel(&[("kubernetes.io/metadata.name", "n1")])),
        Just(sel(&[("kubernetes.io/metadata.name", "n2")])),
    ]
}

fn rule_strategy() -> impl Strategy<Value = RuleBuilder> {
    let peer = prop_oneof![
        selector().prop_map(|s| rule().pods_sel(s)),
        (ns_selector(), selector()).prop_map(|(n, p)| rule().pods_in_sel(n, p)),
        Just(rule().ip_block("10.0.0.0/8", &[])),
        Just(rule().ip_block("10.0.0.0/29", &["10.0.0.2/32"])),
        Just(rule().ip_block("10.0.0.0/30", &[])),
    ];
    let ports = prop_oneof![
        Just(vec![]),
        Just(vec![(TCP, Some(80), None, None)]),
        Just(vec![(TCP, Some(80), Some(81), None)]),
        Just(vec![(TCP, None, None, Some("http"))]),
        Just(vec![(UDP, None, None, None)]),
        Just(vec![(TCP, None, None, None), (UDP, Some(53), None, None)]),
    ];
    (prop::collection::vec(peer, 0..3), ports).prop_map(|(peers, ports)| {
        // Merge the single-peer builders' peers into one rule.
        let mut peers_rule: Vec<crate::model::Peer> = Vec::new();
        for p in peers {
            peers_rule.extend(p.resolve("n1").peers);
        }
        let mut r = rule();
        for p in peers_rule {
            r = r.peer(p);
        }
        for (proto, port, end, name) in ports {
            r = match (port, end, name) {
                (_, _, Some(n)) => r.named_port(proto, n),
                (Some(p), Some(e), _) => r.port_range(proto, p, e),
                (Some(p), None, _) => r.port(proto, p),
                (None, _, _) => r.protocol(proto),
            };
        }
        r
    })
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    let pod = (
        prop::bool::ANY,
        prop::option::of(prop_oneof![Just("a"), Just("b")]),
        prop::bool::ANY,
        prop_oneof![Just(80u16), Just(81u16)],
    );
    let pol = (
        selector(),
        prop::collection::vec(rule_strategy(), 0..4),
        prop::collection::vec(rule_strategy(), 0..3),
        prop::bool::ANY,
    );
    (
        prop::collection::vec(pod, 4),
        prop::collection::vec(pol, 1..5),
    )
        .prop_map(|(pods, pols)| {
            let mut b = ClusterBuilder::new()
                .namespace("n1", &[("team", "x")])
                .namespace("n2", &[]);
            for (i, (in_n1, app, tier, http)) in pods.into_iter().enumerate() {
                let mut l: Vec<(&str, &str)> = Vec::new();
                if let Some(a) = app {
                    l.push(("app", a));
                }
                if tier {
                    l.push(("tier", "t"));
                }
                let ns = if in_n1 { "n1" } else { "n2" };
                b = b
                    .pod(ns, &format!("p{i}"), &l, PODS[i])
                    .port("http", http, TCP);
            }
            for (j, (s, ingress, egress, both)) in pols.into_iter().enumerate() {
                // All policies in n1: the peers above were resolved for n1.
                let mut p = policy("n1", &format!("pol{j}")).select_sel(s);
                for r in ingress {
                    p = p.ingress(r);
                }
                for r in egress {
                    p = p.egress(r);
                }
                if both {
                    p = p.types(&[Direction::Ingress, Direction::Egress]);
                }
                b = b.policy(p);
            }
            b.build()
        })
}

fn verdicts(c: &Cluster) -> Vec<bool> {
    let addrs: Vec<&str> = PODS.iter().chain(OTHERS.iter()).copied().collect();
    let mut out = Vec::new();
    for s in &addrs {
        for d in &addrs {
            for (proto, port) in [(6, 80), (6, 81), (17, 53), (1, 0)] {
                out.push(spec::evaluate(c, None, &flow(s, d, proto, port)).allowed());
            }
        }
    }
    out
}

/// `spec.ingress[3]` -> (Ingress, 3).
fn parse_field(field: &str) -> (Direction, usize) {
    let (dir, rest) = if let Some(r) = field.strip_prefix("spec.ingress[") {
        (Direction::Ingress, r)
    } else if let Some(r) = field.strip_prefix("spec.egress[") {
        (Direction::Egress, r)
    } else {
        panic!("unexpected field {field}")
    };
    (dir, rest.trim_end_matches(']').parse().unwrap())
}

/// `spec.egress[1].to[2].podSelector` -> (Egress, 1, 2).
fn parse_peer_field(field: &str) -> (Direction, usize, usize) {
    let (rule, rest) = field
        .split_once(".from[")
        .or(field.split_once(".to["))
        .unwrap();
    let (dir, ri) = parse_field(rule);
    let pj = rest.split(']').next().unwrap().parse().unwrap();
    (dir, ri, pj)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// A selector reported as matching nothing matches no pod.
    #[test]
    fn selectors_reported_empty_match_nothing(c in cluster_strategy()) {
        for f in lint(&c) {
            if f.code != "selector-matches-nothing" {
                continue;
            }
            let policy = c.policies.iter().find(|p| p.key() == f.object).unwrap();
            if f.field == "spec.podSelector" {
                prop_assert!(!c.pods.iter().any(|p| policy.selects(p)), "{:?}", f);
                continue;
            }
            let (dir, ri, pj) = parse_peer_field(&f.field);
            let peer = &policy.rules(dir)[ri].peers[pj];
            prop_assert!(
                !c.pods.iter().any(|p| c.peer_selects_pod(peer, p)),
                "{:?}",
                f
            );
        }
    }

    #[test]
    fn removing_a_reported_rule_changes_nothing(c in cluster_strategy()) {
        let before = verdicts(&c);
        for f in lint(&c) {
            if f.code != "duplicate-rule" && f.code != "shadowed-rule" {
                continue;
            }
            let pi = c.policies.iter().position(|p| p.key() == f.object).unwrap();
            let (dir, ri) = parse_field(&f.field);
            let mut without = c.clone();
            let rules: &mut Vec<Rule> = match dir {
                Direction::Ingress => &mut without.policies[pi].ingress,
                Direction::Egress => &mut without.policies[pi].egress,
            };
            rules.remove(ri);
            prop_assert_eq!(&verdicts(&without), &before, "{:?}", f);
        }
    }
}
