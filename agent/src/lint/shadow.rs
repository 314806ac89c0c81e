//! Duplicate and fully shadowed rules. Rule A is shadowed by rule B (same direction) when B
//! applies to every pod A applies to and B's peers and ports each contain A's. Only what can
//! be proved by comparing the structures is reported, independently of the current pods and
//! labels:
//!
//! * pods: same namespace, and B's podSelector has a subset of A's requirements (fewer
//!   constraints select more);
//! * peers: B lists no peers, or every peer of A is contained in one peer of B (selectors as
//!   above, `podSelector` alone = `namespaceSelector: {kubernetes.io/metadata.name: ns}`;
//!   ipBlocks by CIDR containment and excepts);
//! * ports: B lists no ports, or every port of A is contained in one of B's (same protocol;
//!   port-less, numeric ranges, or the same name).
//!
//! Two rules that contain each other (with policies applying to the same pods) are
//! duplicates; only the later one is reported.
use ipnet::IpNet;

use super::{Finding, Index, Severity};
use crate::model::{
    Direction, LabelSelector, NamespaceScope, Operator, Peer, Policy, PortRef, PortSpec,
    Requirement, Rule, NAMESPACE_NAME_LABEL,
};

/// Report rule `ri` of policy `pi` (direction `dir`) if another rule covers it.
pub(super) fn check(
    ix: &Index,
    pi: usize,
    dir: Direction,
    ri: usize,
    field: &str,
    out: &mut Vec<Finding>,
) {
    let policy = &ix.cluster.policies[pi];
    let rule = &policy.rules(dir)[ri];
    // Only policies of the same namespace can apply to the same pods.
    for &pj in ix.policies_in(&policy.namespace) {
        let other_policy = &ix.cluster.policies[pj];
        if !policy_covers(other_policy, policy) {
            continue;
        }
        for (rj, other) in other_policy.rules(dir).iter().enumerate() {
            if (pj, rj) == (pi, ri) || !rule_covers(other, rule) {
                continue;
            }
            let mutual = policy_covers(policy, other_policy) && rule_covers(rule, other);
            if mutual && (pj, rj) > (pi, ri) {
                // The later duplicate is the one reported.
                continue;
            }
            let other_field = format!("spec.{}[{rj}]", dir.as_str());
            let where_ = if pj == pi {
                other_field
            } else {
                format!("{other_field} of {}", other_policy.key())
            };
            let (code, message, fix) = if mutual {
                (
                    "duplicate-rule",
                    format!("this rule is a duplicate of {where_}"),
                    "remove one of the two rules".to_string(),
                )
            } else {
                (
                    "shadowed-rule",
                    format!(
                        "this rule is fully covered by {where_}, which applies to the same or \
                         more pods with the same or wider peers and ports: it never changes \
                         what is allowed"
                    ),
                    "remove it, or narrow the covering rule if this one was meant to be the \
                     only way in"
                        .to_string(),
                )
            };
            out.push(Finding {
                severity: Severity::Warning,
                code,
                object: policy.key(),
                field: field.to_string(),
                message,
                fix,
            });
            return;
        }
    }
}

/// `outer` applies to every pod `inner` applies to.
fn policy_covers(outer: &Policy, inner: &Policy) -> bool {
    outer.namespace == inner.namespace && implies(&inner.pod_selector, &outer.pod_selector)
}

/// Every object matching `strong` matches `weak` (proved from the selectors alone).
fn implies(strong: &LabelSelector, weak: &LabelSelector) -> bool {
    weak.match_labels.iter().all(|(k, v)| {
        strong.match_labels.get(k) == Some(v)
            || strong.match_expressions.iter().any(|r| {
                r.key == *k && r.operator == Operator::In && r.values == std::slice::from_ref(v)
            })
    }) && weak
        .match_expressions
        .iter()
        .all(|r| strong.match_expressions.contains(r) || implied_by_labels(r, strong))
}

/// `r` holds for every object carrying `strong`'s matchLabels.
fn implied_by_labels(r: &Requirement, strong: &LabelSelector) -> bool {
    let Some(v) = strong.match_labels.get(&r.key) else {
        return false;
    };
    match r.operator {
        Operator::In => r.values.contains(v),
        Operator::NotIn => !r.values.contains(v),
        Operator::Exists => true,
        Operator::DoesNotExist => false,
    }
}

fn rule_covers(outer: &Rule, inner: &Rule) -> bool {
    let peers = outer.peers.is_empty()
        || (!inner.peers.is_empty()
            && inner
                .peers
                .iter()
                .all(|i| outer.peers.iter().any(|o| peer_covers(o, i))));
    let ports = outer.ports.is_empty()
        || (!inner.ports.is_empty()
            && inner
                .ports
                .iter()
                .all(|i| outer.ports.iter().any(|o| port_covers(o, i))));
    peers && ports
}

fn name_selector(ns: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())].into(),
        match_expressions: Vec::new(),
    }
}

fn namespace_selector(scope: &NamespaceScope) -> LabelSelector {
    match scope {
        NamespaceScope::Own(ns) => name_selector(ns),
        NamespaceScope::Selector(s) => s.clone(),
    }
}

fn peer_covers(outer: &Peer, inner: &Peer) -> bool {
    match (outer, inner) {
        (
            Peer::Pods {
                namespaces: on,
                pods: op,
            },
            Peer::Pods {
                namespaces: inn,
                pods: ip,
            },
        ) => implies(&namespace_selector(inn), &namespace_selector(on)) && implies(ip, op),
        (
            Peer::IpBlock {
                cidr: oc,
                except: oe,
            },
            Peer::IpBlock {
                cidr: ic,
                except: ie,
            },
        ) => block_covers(oc, oe, ic, ie),
        _ => false,
    }
}

/// `ic \ ie` ⊆ `oc \ oe`: the inner CIDR is inside the outer one, and every outer except
/// that overlaps it lies inside one of the inner excepts (CIDRs nest or are disjoint).
fn block_covers(oc: &IpNet, oe: &[IpNet], ic: &IpNet, ie: &[IpNet]) -> bool {
    oc.contains(ic)
        && oe.iter().all(|e| {
            let overlaps = e.contains(ic) || ic.contains(e);
            !overlaps || ie.iter().any(|x| x.contains(e))
        })
}

fn port_covers(outer: &PortSpec, inner: &PortSpec) -> bool {
    if outer.protocol != inner.protocol {
        return false;
    }
    match (&outer.port, &inner.port) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(PortRef::Number(os)), Some(PortRef::Number(is))) => {
            let oe = outer.end_port.unwrap_or(*os);
            let ie = inner.end_port.unwrap_or(*is);
            os <= is && ie <= oe
        }
        (Some(PortRef::Name(a)), Some(PortRef::Name(b))) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::lint::{lint, Finding};
    use crate::model::Operator;
    use crate::testkit::*;

    fn only(f: Vec<Finding>) -> Vec<(&'static str, String, String)> {
        f.into_iter()
            .filter(|f| f.code == "duplicate-rule" || f.code == "shadowed-rule")
            .map(|f| (f.code, f.object, f.field))
            .collect()
    }

    fn base() -> ClusterBuilder {
        ClusterBuilder::new()
            .namespace("prod", &[("team", "a")])
            .pod(
                "prod",
                "web",
                &[("app", "web"), ("tier", "front")],
                "10.0.0.1",
            )
            .port("http", 8080, TCP)
            .pod("prod", "client", &[("app", "client")], "10.0.0.2")
    }

    fn f(code: &'static str, obj: &str, field: &str) -> (&'static str, String, String) {
        (code, obj.to_string(), field.to_string())
    }

    #[test]
    fn duplicate_within_and_across_policies() {
        let r = || rule().pods(&[("app", "client")]).tcp(8080);
        let c = base()
            .policy(
                policy("prod", "a")
                    .select(&[("app", "web")])
                    .ingress(r())
                    .ingress(r()),
            )
            .policy(policy("prod", "b").select(&[("app", "web")]).ingress(r()))
            .build();
        assert_eq!(
            only(lint(&c)),
            vec![
                f("duplicate-rule", "prod/a", "spec.ingress[1]"),
                f("duplicate-rule", "prod/b", "spec.ingress[0]"),
            ]
        );
    }

    #[test]
    fn shadowed_by_wider_rule_on_wider_selection() {
        let c = base()
            .policy(
                policy("prod", "narrow")
                    .select(&[("app", "web"), ("tier", "front")])
                    .ingress(
                        rule()
                            .pods_in(
                                &[("kubernetes.io/metadata.name", "prod")],
                                &[("app", "client")],
                            )
                            .port_range(TCP, 8080, 8081)
                            .ip_block("10.1.2.0/24", &["10.1.2.0/28"]),
                    ),
            )
            .policy(
                policy("prod", "wide").select(&[("app", "web")]).ingress(
                    rule()
                        .pods(&[])
                        .ip_block("10.0.0.0/8", &["10.1.2.0/28", "10.9.0.0/16"])
                        .port_range(TCP, 8000, 9000),
                ),
            )
            .build();
        assert_eq!(
            only(lint(&c)),
            vec![f("shadowed-rule", "prod/narrow", "spec.ingress[0]")]
        );
    }

    #[test]
    fn not_reported_without_proof() {
        let c = base()
            // Different selected pods (b does not cover a: it is narrower).
            .policy(
                policy("prod", "a")
                    .select(&[("app", "web")])
                    .ingress(rule().pods(&[("app", "client")])),
            )
            .policy(
                policy("prod", "b")
                    .select(&[("app", "web"), ("tier", "front")])
                    .ingress(rule().pods(&[])),
            )
            // Except of the wider block cuts into the narrower block.
            .policy(
                policy("prod", "c")
                    .select(&[("app", "client")])
                    .ingress(rule().ip_block("10.0.0.0/8", &["10.1.0.0/16"]))
                    .ingress(rule().ip_block("10.1.2.0/24", &[])),
            )
            // Named vs numeric ports, different protocols, missing vs listed ports.
            .policy(
                policy("prod", "d")
                    .select(&[("app", "client")])
                    .ingress(rule().named_port(TCP, "http"))
                    .ingress(rule().tcp(8080))
                    .ingress(rule().udp(8080))
                    .ingress(rule().pods(&[("app", "web")])),
            )
            // Selector with an expression is not implied by a different one.
            .policy(policy("prod", "e").select(&[("app", "client")]).ingress(
                rule().pods_sel(sel_exprs(&[], vec![req("tier", Operator::NotIn, &["x"])])),
            ))
            .build();
        // b's rule (all own pods) covers a's, but b applies to fewer pods; c's second rule
        // loses 10.1.2.0/24 to the first rule's except; d's and e's rules are incomparable.
        assert_eq!(only(lint(&c)), vec![]);
    }

    #[test]
    fn implied_selectors() {
        use super::implies;
        let strong = sel_exprs(&[("app", "web")], vec![req("env", Operator::In, &["prod"])]);
        assert!(implies(&strong, &sel(&[])));
        assert!(implies(&strong, &sel(&[("env", "prod")])));
        assert!(implies(
            &strong,
            &sel_exprs(&[], vec![req("app", Operator::In, &["web", "api"])])
        ));
        assert!(implies(
            &strong,
            &sel_exprs(&[], vec![req("app", Operator::NotIn, &["db"])])
        ));
        assert!(implies(
            &strong,
            &sel_exprs(&[], vec![req("app", Operator::Exists, &[])])
        ));
        assert!(!implies(&strong, &sel(&[("tier", "front")])));
        assert!(!implies(
            &strong,
            &sel_exprs(&[], vec![req("app", Operator::DoesNotExist, &[])])
        ));
        assert!(!implies(&sel(&[]), &strong));
    }
}
