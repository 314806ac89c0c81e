//! `netward lint`: the pitfalls users hit when writing NetworkPolicies.
//!
//! Every check reads only the [`Cluster`] model (no Plan) and reports [`Finding`]s that name the
//! policy (`ns/name`), the field (`spec.egress[0].to[1].podSelector`), what is wrong and how to
//! fix it. Checks, one module each:
//!
//! * `dns`: pods isolated for egress that cannot reach DNS (UDP 53 and TCP 53).
//! * `selectors`: pod/namespace selectors that match nothing, with near-miss suggestions.
//! * `ports`: named ports that no pod receiving the traffic declares.
//! * `shadow`: duplicate rules and rules fully covered by another (provable structurally).
//! * `services`: Service ports some egress-isolated clients may reach on some endpoints but
//!   not all (so never through the virtual address), DNS Services none of whose endpoints the
//!   clients may reach though their rules allow port 53 elsewhere (an ipBlock of the Service
//!   address does not count), virtual addresses equal to pod addresses.
//! * here: validation errors, policies in namespaces without pods, ignored rule sections.
//!
//! Order is deterministic: policies in cluster order (namespace, name), and within a policy
//! its errors, namespace, sections, podSelector, ingress rules, egress rules, then DNS; then
//! Services in cluster order.
use serde::Serialize;

use crate::model::{Cluster, Direction, Policy};
use index::Index;

mod dns;
mod index;
mod ports;
mod selectors;
mod services;
mod shadow;
mod similar;
#[cfg(test)]
mod soundness;

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
    /// `namespace/name` of the policy (or namespace) concerned; `Service namespace/name` for a
    /// Service.
    pub object: String,
    /// e.g. `spec.ingress[0].from[1].namespaceSelector`.
    pub field: String,
    pub message: String,
    pub fix: String,
}

/// Every finding for `cluster`, in a deterministic order.
pub fn lint(cluster: &Cluster) -> Vec<Finding> {
    let ix = Index::new(cluster);
    let mut dns = dns::check(&ix);
    let mut out = Vec::new();
    for (index, policy) in cluster.policies.iter().enumerate() {
        validation_errors(policy, &mut out);
        let has_pods = namespace_has_pods(&ix, policy, &mut out);
        ignored_sections(policy, &mut out);
        if has_pods {
            selectors::check_pod_selector(&ix, policy, &mut out);
        }
        for dir in Direction::BOTH {
            for (ri, rule) in policy.rules(dir).iter().enumerate() {
                let field = rule_field(dir, ri);
                selectors::check_peers(&ix, policy, dir, rule, &field, &mut out);
                ports::check(&ix, policy, dir, rule, &field, &mut out);
                shadow::check(&ix, index, dir, ri, &field, &mut out);
            }
        }
        out.extend(dns.remove(&index).unwrap_or_default());
    }
    out.extend(services::check(&ix));
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
                "Correct {} so that the API server would accept the policy.",
                e.field
            ),
        });
    }
}

/// Reports a policy whose namespace has no pods; returns whether it has some.
fn namespace_has_pods(ix: &Index, policy: &Policy, out: &mut Vec<Finding>) -> bool {
    if ix.populated_namespaces().any(|ns| ns == policy.namespace) {
        return true;
    }
    let populated: Vec<&str> = ix.populated_namespaces().collect();
    let near = similar::near(&policy.namespace, populated.iter().copied());
    let mut fix = String::from("Deploy the policy to the namespace of the pods it is meant for");
    if !near.is_empty() {
        fix.push_str(&format!(" (did you mean {}?)", similar::quote_list(&near)));
    }
    fix.push_str(", or delete it if that namespace is gone.");
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
                    "Add {name} to spec.policyTypes, or remove spec.{}.",
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

    /// End to end from manifests: field paths are those of the YAML the user wrote.
    #[test]
    fn pitfalls_manifest() {
        let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  containers: [{name: c, image: x, ports: [{name: pg, containerPort: 5432}]}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  containers: [{name: c, image: x, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]
status: {podIP: 10.0.1.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {name: kube-system}}}]
    ports: [{protocol: UDP, port: 53}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: prod}
spec:
  podSelector: {matchLabels: {app: Web}}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-in, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: postgres}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: postgres}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: staging}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0/8}}]
"#;
        let loaded = crate::source::manifest::load_str("pitfalls.yaml", yaml);
        let f = lint(&loaded.cluster);
        let got: Vec<(&str, &str, &str)> = f
            .iter()
            .map(|f| (f.code, f.object.as_str(), f.field.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "selector-matches-nothing",
                    "prod/allow-dns",
                    "spec.egress[0].to[0].namespaceSelector"
                ),
                // Attributed to the first policy (in cluster order) isolating the pods.
                ("egress-without-dns", "prod/allow-dns", "spec.egress"),
                (
                    "invalid-policy",
                    "prod/bad",
                    "spec.ingress[0].from[0].ipBlock.cidr"
                ),
                (
                    "named-port-undeclared",
                    "prod/db-in",
                    "spec.ingress[0].ports[0].port"
                ),
                (
                    "named-port-undeclared",
                    "prod/db-in",
                    "spec.ingress[1].ports[0].port"
                ),
                ("duplicate-rule", "prod/db-in", "spec.ingress[1]"),
                (
                    "selector-matches-nothing",
                    "prod/web-in",
                    "spec.podSelector"
                ),
                (
                    "namespace-without-pods",
                    "staging/deny",
                    "metadata.namespace"
                ),
            ],
            "{f:#?}"
        );
        for finding in &f {
            assert!(!finding.fix.is_empty() && !finding.message.is_empty());
        }
    }
}
