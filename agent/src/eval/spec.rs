//! The spec evaluator: NetworkPolicy semantics read straight off the model.
use super::{Decision, Flow};
use crate::model::Cluster;

/// Evaluate `flow` against `cluster`, treating every pod on `node` (all pods when None) as
/// enforced.
pub fn evaluate(cluster: &Cluster, node: Option<&str>, flow: &Flow) -> Decision {
    let _ = (cluster, node, flow);
    unimplemented!()
}
