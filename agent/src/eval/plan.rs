//! The plan evaluator: the eBPF program's lookups, in userspace, on a Plan.
use super::{Decision, Flow};
use crate::plan::Plan;

/// Evaluate `flow` the way the datapath does with `plan` installed.
pub fn evaluate(plan: &Plan, flow: &Flow) -> Decision {
    let _ = (plan, flow);
    unimplemented!()
}
