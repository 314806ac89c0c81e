//! `netward lint`: the pitfalls users hit when writing NetworkPolicies.
use serde::Serialize;

use crate::model::Cluster;

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
    let _ = cluster;
    Vec::new()
}
