//! Selectors that match nothing: spec.podSelector, and the podSelector/namespaceSelector of
//! every peer. Explains which label is missing and suggests near matches (case, typos), and
//! points at namespaces that carry no labels besides `kubernetes.io/metadata.name`.
use std::collections::BTreeSet;

use super::similar::{near, quote_list};
use super::{peers_field, Finding, Index, Severity};
use crate::model::{
    Direction, LabelSelector, Labels, NamespaceScope, Peer, Policy, Rule, NAMESPACE_NAME_LABEL,
};

const CODE: &str = "selector-matches-nothing";

/// spec.podSelector selects no pod of the policy's namespace (which has pods).
pub(super) fn check_pod_selector(ix: &Index, policy: &Policy, out: &mut Vec<Finding>) {
    let in_ns = ix.pods_in(&policy.namespace);
    let candidates: Vec<&Labels> = in_ns.iter().map(|p| &p.labels).collect();
    if candidates.iter().any(|l| policy.pod_selector.matches(l)) {
        return;
    }
    let kind = format!("pod in namespace `{}`", policy.namespace);
    let why = explain(&policy.pod_selector, &candidates, &kind);
    out.push(Finding {
        severity: Severity::Warning,
        code: CODE,
        object: policy.key(),
        field: "spec.podSelector".to_string(),
        message: format!(
            "podSelector `{}` selects no pod in namespace `{}`, so the policy applies to nothing: {}",
            policy.pod_selector,
            policy.namespace,
            why.reasons.join("; ")
        ),
        fix: why.fix("the pods this policy should apply to"),
    });
}

/// Every podSelector/namespaceSelector peer of `rule` that matches no pod.
pub(super) fn check_peers<'a>(
    ix: &Index<'a>,
    policy: &Policy,
    dir: Direction,
    rule: &'a Rule,
    field: &str,
    out: &mut Vec<Finding>,
) {
    for (j, peer) in rule.peers.iter().enumerate() {
        let Peer::Pods {
            namespaces,
            pods: pod_sel,
        } = peer
        else {
            continue;
        };
        let peer_field = format!("{field}.{}[{j}]", peers_field(dir));
        let in_scope = ix.scope_namespaces(namespaces);
        let scope = match namespaces {
            NamespaceScope::Own(ns) => format!("namespace `{ns}`"),
            NamespaceScope::Selector(ns_sel) => {
                if in_scope.is_empty() {
                    out.push(namespace_finding(ix, policy, ns_sel, &peer_field));
                    continue;
                }
                format!("namespaces {}", short_list(&in_scope))
            }
        };
        let in_scope_pods: Vec<_> = in_scope.iter().flat_map(|ns| ix.pods_in(ns)).collect();
        let candidates: Vec<&Labels> = in_scope_pods.iter().map(|p| &p.labels).collect();
        if candidates.iter().any(|l| pod_sel.matches(l)) {
            continue;
        }
        if candidates.is_empty() {
            // The own namespace without pods is reported once per policy already.
            if let NamespaceScope::Selector(ns_sel) = namespaces {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: CODE,
                    object: policy.key(),
                    field: format!("{peer_field}.namespaceSelector"),
                    message: format!(
                        "namespaceSelector `{ns_sel}` matches only {scope}, which have no pods"
                    ),
                    fix: "Check that the selector names the namespaces the peers run in."
                        .to_string(),
                });
            }
            continue;
        }
        let why = explain(pod_sel, &candidates, &format!("pod in {scope}"));
        out.push(Finding {
            severity: Severity::Warning,
            code: CODE,
            object: policy.key(),
            field: format!("{peer_field}.podSelector"),
            message: format!(
                "podSelector `{pod_sel}` matches no pod in {scope}, so this peer allows nothing: {}",
                why.reasons.join("; ")
            ),
            fix: why.fix("the intended peer pods"),
        });
    }
}

fn namespace_finding(
    ix: &Index,
    policy: &Policy,
    ns_sel: &LabelSelector,
    peer_field: &str,
) -> Finding {
    let cluster = ix.cluster;
    let candidates: Vec<&Labels> = cluster.namespaces.values().map(|n| &n.labels).collect();
    let mut why = explain(ns_sel, &candidates, "namespace");
    let unlabelled: Vec<&str> = cluster
        .namespaces
        .values()
        .filter(|n| n.labels.keys().all(|k| k == NAMESPACE_NAME_LABEL))
        .map(|n| n.name.as_str())
        .collect();
    if !unlabelled.is_empty() {
        why.reasons.push(format!(
            "namespaces {} carry no labels besides {NAMESPACE_NAME_LABEL}",
            short_list(&unlabelled)
        ));
    }
    // `name: kube-system` style selectors: the intended label is the automatic one.
    for (k, v) in &ns_sel.match_labels {
        if k != NAMESPACE_NAME_LABEL && cluster.namespaces.contains_key(v) {
            why.suggestions.push(format!(
                "Select namespace `{v}` by name with `{NAMESPACE_NAME_LABEL}: {v}` instead of `{k}: {v}`."
            ));
        }
    }
    let mut fix = why.fix("the intended namespaces");
    if !unlabelled.is_empty() {
        fix.push_str(" Unlabelled namespaces: `kubectl label namespace NAME KEY=VALUE`.");
    }
    Finding {
        severity: Severity::Warning,
        code: CODE,
        object: policy.key(),
        field: format!("{peer_field}.namespaceSelector"),
        message: format!(
            "namespaceSelector `{ns_sel}` matches no namespace, so this peer allows nothing: {}",
            why.reasons.join("; ")
        ),
        fix,
    }
}

/// Why a selector matched none of the candidates, and what was probably meant.
#[derive(Debug, Default)]
struct Why {
    reasons: Vec<String>,
    suggestions: Vec<String>,
}

impl Why {
    fn fix(&self, intended: &str) -> String {
        if self.suggestions.is_empty() {
            format!("Correct the selector, or add the missing labels to {intended}.")
        } else {
            format!(
                "{} Otherwise, correct the selector or add the missing labels to {intended}.",
                self.suggestions.join(" ")
            )
        }
    }
}

/// Explain why `sel` matches none of `candidates` (label sets of one `kind` of object).
fn explain(sel: &LabelSelector, candidates: &[&Labels], kind: &str) -> Why {
    let mut why = Why::default();
    if candidates.is_empty() {
        why.reasons.push(format!("there is no {kind}"));
        return why;
    }
    let keys: BTreeSet<&str> = candidates
        .iter()
        .flat_map(|l| l.keys().map(String::as_str))
        .collect();
    let missing_key = |key: &str, why: &mut Why| {
        let alternatives = near(key, keys.iter().copied());
        if !alternatives.is_empty() {
            why.suggestions.push(format!(
                "Did you mean label key {} instead of `{key}`?",
                quote_list(&alternatives)
            ));
        }
    };
    for (k, v) in &sel.match_labels {
        let values: BTreeSet<&str> = candidates
            .iter()
            .filter_map(|l| l.get(k).map(String::as_str))
            .collect();
        if values.is_empty() {
            why.reasons.push(format!("no {kind} has the label `{k}`"));
            missing_key(k, &mut why);
        } else if !values.contains(v.as_str()) {
            let shown: Vec<String> = values.iter().take(8).map(|v| v.to_string()).collect();
            why.reasons.push(format!(
                "no {kind} has `{k}={v}` (values of `{k}` in use: {}{})",
                quote_list(&shown),
                if values.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
            let alternatives = near(v, values.iter().copied());
            if !alternatives.is_empty() {
                let alts: Vec<String> = alternatives.iter().map(|a| format!("{k}={a}")).collect();
                why.suggestions.push(format!(
                    "Did you mean {} instead of `{k}={v}`?",
                    quote_list(&alts)
                ));
            }
        }
    }
    for r in &sel.match_expressions {
        if !candidates.iter().any(|l| r.matches(l)) {
            let single = LabelSelector {
                match_labels: Default::default(),
                match_expressions: vec![r.clone()],
            };
            why.reasons.push(format!("no {kind} satisfies `{single}`"));
            if !keys.contains(r.key.as_str()) {
                missing_key(&r.key, &mut why);
            }
        }
    }
    if why.reasons.is_empty() {
        why.reasons.push(format!(
            "each requirement is met by some {kind}, but no single one meets them all"
        ));
    }
    why
}

/// `` `a`, `b`, `c` `` with at most five names.
fn short_list(names: &[&str]) -> String {
    let mut s: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
    if names.len() > 5 {
        s.push(format!("and {} more", names.len() - 5));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use crate::lint::{lint, Finding};
    use crate::model::Operator;
    use crate::testkit::*;

    fn only(code: &str, f: Vec<Finding>) -> Vec<Finding> {
        f.into_iter().filter(|f| f.code == code).collect()
    }

    fn base() -> ClusterBuilder {
        ClusterBuilder::new()
            .namespace("prod", &[("team", "a")])
            .namespace("kube-system", &[])
            .pod("prod", "web", &[("app", "frontend")], "10.0.0.1")
            .pod("prod", "db", &[("app", "db"), ("tier", "back")], "10.0.0.2")
            .pod("kube-system", "dns", &[("k8s-app", "kube-dns")], "10.0.1.1")
    }

    #[test]
    fn spec_pod_selector_typo_in_value() {
        let c = base()
            .policy(policy("prod", "p").select(&[("app", "frontned")]))
            .build();
        let f = only(super::CODE, lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].object, "prod/p");
        assert_eq!(f[0].field, "spec.podSelector");
        assert!(f[0].message.contains("`app=frontned`"), "{}", f[0].message);
        assert!(f[0].fix.contains("`app=frontend`"), "{}", f[0].fix);
    }

    #[test]
    fn peer_pod_selector_wrong_key_case() {
        let c = base()
            .policy(
                policy("prod", "p")
                    .select(&[("app", "db")])
                    .ingress(rule().tcp(1))
                    .ingress(
                        rule()
                            .ip_block("10.0.0.0/8", &[])
                            .pods(&[("App", "frontend")]),
                    ),
            )
            .build();
        let f = only(super::CODE, lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].field, "spec.ingress[1].from[1].podSelector");
        assert!(f[0]
            .message
            .contains("no pod in namespace `prod` has the label `App`"));
        assert!(f[0].fix.contains("label key `app`"), "{}", f[0].fix);
    }

    #[test]
    fn namespace_selector_on_unlabelled_namespace() {
        let c = base()
            .policy(
                policy("prod", "dns")
                    .types(&[crate::model::Direction::Egress])
                    .egress(rule().pods_in(&[("name", "kube-system")], &[("k8s-app", "kube-dns")])),
            )
            .build();
        let f = only(super::CODE, lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].field, "spec.egress[0].to[0].namespaceSelector");
        assert!(
            f[0].message.contains("`kube-system` carry no labels"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].fix
                .contains("kubernetes.io/metadata.name: kube-system"),
            "{}",
            f[0].fix
        );
    }

    #[test]
    fn pods_exist_but_not_in_selected_namespaces() {
        let c = base()
            .policy(
                policy("prod", "p")
                    .select(&[("app", "db")])
                    .ingress(rule().pods_in(&[("team", "a")], &[("k8s-app", "kube-dns")])),
            )
            .build();
        let f = only(super::CODE, lint(&c));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].field, "spec.ingress[0].from[0].podSelector");
        assert!(
            f[0].message.contains("namespaces `prod`"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn expressions_and_combinations() {
        let c = base()
            .policy(
                policy("prod", "expr")
                    .select_sel(sel_exprs(&[], vec![req("tier", Operator::In, &["front"])])),
            )
            .policy(policy("prod", "combo").select(&[("app", "frontend"), ("tier", "back")]))
            .build();
        let f = only(super::CODE, lint(&c));
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(
            f[0].message.contains("no single one meets them all"),
            "{}",
            f[0].message
        );
        assert!(
            f[1].message.contains("`tier in (front)`"),
            "{}",
            f[1].message
        );
    }

    #[test]
    fn matching_selectors_are_not_reported() {
        let c = base()
            .policy(
                policy("prod", "ok")
                    .select_sel(sel_exprs(&[], vec![req("tier", Operator::NotIn, &["x"])]))
                    .ingress(rule().namespaces(&[("kubernetes.io/metadata.name", "kube-system")]))
                    .ingress(rule().pods_in(&[], &[("k8s-app", "kube-dns")]))
                    .ingress(rule().pods(&[])),
            )
            .build();
        assert_eq!(only(super::CODE, lint(&c)), vec![]);
    }
}
