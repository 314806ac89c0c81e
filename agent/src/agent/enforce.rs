//! The seam between the control loop and the kernel: an [`Enforcer`] installs Plans and
//! attaches to veths. The eBPF datapath is the production implementation; [`PlanOnly`]
//! enforces nothing and only keeps the Plan (`netward agent --plan-only`, and tests of the
//! layers above the kernel).
use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Result;

use super::status::{Counters, FlowEvent, MapFill};
use crate::plan::Plan;

/// Installs Plans and attaches programs. Called only from the control loop.
pub trait Enforcer: Send + 'static {
    /// What this is, for `status`.
    fn describe(&self) -> String;
    /// Install `plan` (a diff against what is in force); returns its generation. On error the
    /// previous Plan must stay in force.
    fn apply(&mut self, plan: &Arc<Plan>) -> Result<u64>;
    /// Enforce on a pod's host-side veth (idempotent).
    fn attach(&mut self, ifname: &str) -> Result<()>;
    /// Stop enforcing on a veth (idempotent; the veth may already be gone).
    fn detach(&mut self, ifname: &str) -> Result<()>;
    /// Stop enforcing on the interface with this index (for links left by a previous agent,
    /// known only by index).
    fn detach_index(&mut self, ifindex: u32) -> Result<()>;
    /// Interfaces with programs attached (by index), also those left by a previous agent.
    fn attached(&self) -> Result<Vec<u32>>;
    /// Check again which attached veths may take same-node delivery (see
    /// `Datapath::recheck_direct`); called every rescan.
    fn recheck_direct(&mut self) -> Result<()> {
        Ok(())
    }
    fn counters(&self) -> Result<Counters>;
    fn map_fill(&mut self) -> Result<Vec<MapFill>>;
    /// Verdict events produced since the last call (non-blocking).
    fn poll_events(&mut self) -> Result<Vec<FlowEvent>>;
}

/// Computes and keeps Plans without touching the kernel.
#[derive(Default)]
pub struct PlanOnly {
    pub generation: u64,
    pub plan: Option<Arc<Plan>>,
    pub attached: BTreeSet<String>,
}

impl Enforcer for PlanOnly {
    fn describe(&self) -> String {
        "plan-only (no datapath: Plans are computed, nothing is enforced)".into()
    }
    fn apply(&mut self, plan: &Arc<Plan>) -> Result<u64> {
        self.generation += 1;
        self.plan = Some(plan.clone());
        Ok(self.generation)
    }
    fn attach(&mut self, ifname: &str) -> Result<()> {
        self.attached.insert(ifname.to_string());
        Ok(())
    }
    fn detach(&mut self, ifname: &str) -> Result<()> {
        self.attached.remove(ifname);
        Ok(())
    }
    fn detach_index(&mut self, _ifindex: u32) -> Result<()> {
        Ok(())
    }
    fn attached(&self) -> Result<Vec<u32>> {
        Ok(Vec::new())
    }
    fn counters(&self) -> Result<Counters> {
        Ok(Counters::default())
    }
    fn map_fill(&mut self) -> Result<Vec<MapFill>> {
        let Some(plan) = &self.plan else {
            return Ok(Vec::new());
        };
        Ok(vec![
            MapFill {
                map: "ipcache".into(),
                entries: plan.ipcache.len() as u64,
                capacity: 0,
            },
            MapFill {
                map: "policy".into(),
                entries: plan.policy.len() as u64,
                capacity: 0,
            },
        ])
    }
    fn poll_events(&mut self) -> Result<Vec<FlowEvent>> {
        Ok(Vec::new())
    }
}
