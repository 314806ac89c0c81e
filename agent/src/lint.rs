//! `netward lint`: the pitfalls users hit when writing NetworkPolicies.
//!
//! Every check reads only the [`Cluster`] model (no Plan) and reports [`Finding`]s that name the
//! policy (`ns/name`), the field (`spec.egress[0].to[1].podSelector`), what is wrong and how to
//! fix it. Checks, one module each:
//!
//! * [`dns`]: pods isolated for egress that cannot reach DNS (UDP 53 and TCP 53).
//! * [`selectors`]: pod/namespace selectors that match nothing, with near-miss suggestions.
//! * [`ports`]: named ports that no pod receiving the traffic declares.
//! * [`shadow`]: duplicate rules and rules fully covered by another (provable structurally).
//! * here: validation errors, policies in namespaces without pods, ignored rule sections.
//!
//! Order is deterministic: policies in cluster order (namespace, name), and within a policy
//! its errors, namespace, sections, podSelector, ingress rules, egress rules, then DNS.
use serde::Serialize;

use crate::model::{Cluster, Direction, Pod, Policy};

mod dns;
mod ports;
mod selectors;
mod shadow;
mod similar;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One finding: which policy, which field, what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Short stable identifier, e.g. `egress-without-dns`.
    pub code: &'static str,
    /// `namespace/name` of the policy (or namespace) concerned.
    pub object: String,
    /// e.g. `spec.ingress[0].from[1].namespaceSelector`.
    pub field: String,
    pub message: String,
    pub fix: String,
}

/// Every finding for `cluster`, in a deterministic order.
pub fn lint(cluster: &Cluster) -> Vec<Finding> {
    let mut dns = dns::check(cluster);
    let mut out = Vec::new();
    for (index, policy) in cluster.policies.iter().enumerate() {
        validation_errors(policy, &mut out);
        let has_pods = namespace_has_pods(cluster, policy, &mut out);
        ignored_sections(policy, &mut out);
        if has_pods {
            selectors::check_pod_selector(cluster, policy, &mut out);
        }
        for dir in Direction::BOTH {
            for (ri, rule) in policy.rules(dir).iter().enumerate() {
                let field = rule_field(dir, ri);
                selectors::check_peers(cluster, policy, dir, rule, &field, &mut out);
                ports::check(cluster, policy, dir, rule, &field, &mut out);
                shadow::check(cluster, index, dir, ri, &field, &mut out);
            }
        }
        out.extend(dns.remove(&index).unwrap_or_default());
    }
    out
}

/// `spec.ingress[3]` / `spec.egress[0]`.
fn rule_field(dir: Direction, index: usize) -> String {
    format!("spec.{}[{index}]", dir.as_str())
}

/// `from` on ingress, `to` on egress.
fn peers_field(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// Pods that policies can select and that are endpoints (hostNetwork pods are neither).
fn pods(cluster: &Cluster) -> impl Iterator<Item = &Pod> {
    cluster.pods.iter().filter(|p| !p.host_network)
}

fn validation_errors(policy: &Policy, out: &mut Vec<Finding>) {
    for e in &policy.errors {
        out.push(Finding {
            severity: Severity::Error,
            code: "invalid-policy",
            object: policy.key(),
            field: e.field.clone(),
            message: format!(
                "{} (from {}); the policy fails closed: the pods it selects are isolated for \
                 ingress and egress and it allows nothing",
                e.message, policy.origin
            ),
            fix: format!(
                "correct {} so the API server would accept the policy",
                e.field
            ),
        });
    }
}

/// Reports a policy whose namespace has no pods; returns whether it has some.
fn namespace_has_pods(cluster: &Cluster, policy: &Policy, out: &mut Vec<Finding>) -> bool {
    if pods(cluster).any(|p| p.namespace == policy.namespace) {
        return true;
    }
    let populated: Vec<&str> = cluster
        .namespaces
        .keys()
        .filter(|ns| pods(cluster).any(|p| &p.namespace == *ns))
        .map(String::as_str)
        .collect();
    let near = similar::near(&policy.namespace, populated.iter().copied());
    let mut fix = String::from("deploy the policy to the namespace of the pods it is meant for");
    if !near.is_empty() {
        fix.push_str(&format!(" (did you mean {}?)", similar::quote_list(&near)));
    }
    fix.push_str(", or delete it if that namespace is gone");
    out.push(Finding {
        severity: Severity::Warning,
        code: "namespace-without-pods",
        object: policy.key(),
        field: "metadata.namespace".to_string(),
        message: format!(
            "namespace `{}` has no pods, so this policy selects nothing",
            policy.namespace
        ),
        fix,
    });
    false
}

/// Rules under a direction that policyTypes leaves out are ignored by Kubernetes.
fn ignored_sections(policy: &Policy, out: &mut Vec<Finding>) {
    if !policy.errors.is_empty() {
        return;
    }
    for dir in Direction::BOTH {
        let rules = match dir {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        if !policy.isolates(dir) && !rules.is_empty() {
            let name = match dir {
                Direction::Ingress => "Ingress",
                Direction::Egress => "Egress",
            };
            out.push(Finding {
                severity: Severity::Warning,
                code: "ignored-rules",
                object: policy.key(),
                field: format!("spec.{}", dir.as_str()),
                message: format!(
                    "spec.policyTypes does not include {name}, so the {} {} rule(s) are ignored",
                    rules.len(),
                    dir.as_str()
                ),
                fix: format!(
                    "add {name} to spec.policyTypes, or remove spec.{}",
                    dir.as_str()
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    fn codes(f: &[Finding]) -> Vec<(&'static str, String, String)> {
        f.iter()
            .map(|f| (f.code, f.object.clone(), f.field.clone()))
            .collect()
    }

    #[test]
    fn clean_cluster_has_no_findings() {
        let c = ClusterBuilder::new()
            .pod("prod", "web", &[("app", "web")], "10.0.0.1")
            .port("http", 8080, TCP)
            .pod("prod", "client", &[("app", "client")], "10.0.0.2")
            .policy(
                policy("prod", "web-in")
                    .select(&[("app", "web")])
                    .ingress(rule().pods(&[("app", "client")]).named_port(TCP, "http")),
            )
            .build();
        assert_eq!(lint(&c), vec![]);
    }

    #[test]
    fn validation_errors_are_errors() {
        let c = ClusterBuilder::new()
            .pod("prod", "web", &[("app", "web")], "10.0.0.1")
            .policy(policy("prod", "bad").invalid(
                "spec.ingress[0].from[0].ipBlock.cidr",
                "invalid CIDR \"10.0.0/8\"",
            ))
            .build();
        let f = lint(&c);
        assert_eq!(
            codes(&f),
            vec![(
                "invalid-policy",
                "prod/bad".to_string(),
                "spec.ingress[0].from[0].ipBlock.cidr".to_string()
            )],
            "{f:#?}"
        );
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].message.contains("fails closed"));
    }

    #[test]
    fn namespace_without_pods_suggests_near_namespace() {
        let c = ClusterBuilder::new()
            .pod("production", "web", &[("app", "web")], "10.0.0.1")
            .policy(policy("prodution", "deny").ingress_section())
            .policy(policy("production", "deny").ingress_section())
            .build();
        let f = lint(&c);
        assert_eq!(
            codes(&f),
            vec![(
                "namespace-without-pods",
                "prodution/deny".to_string(),
                "metadata.namespace".to_string()
            )]
        );
        assert!(f[0].fix.contains("`production`"), "{}", f[0].fix);
    }

    #[test]
    fn ignored_rules_under_missing_policy_type() {
        let c = ClusterBuilder::new()
            .pod("prod", "web", &[("app", "web")], "10.0.0.1")
            .policy(
                policy("prod", "egress-only")
                    .types(&[Direction::Egress])
                    .ingress(rule().tcp(80))
                    .egress(rule()),
            )
            .policy(
                policy("prod", "both")
                    .types(&[Direction::Ingress, Direction::Egress])
                    .ingress(rule().tcp(80)),
            )
            .build();
        let f = lint(&c);
        assert_eq!(
            codes(&f),
            vec![(
                "ignored-rules",
                "prod/egress-only".to_string(),
                "spec.ingress".to_string()
            )],
            "{f:#?}"
        );
    }
}
