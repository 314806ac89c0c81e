//! Evaluators: given a flow, is it allowed, and why.
//!
//! * [`spec`] reads the model and applies the NetworkPolicy definition directly: the truth.
//! * [`plan`] performs, on a [`crate::plan::Plan`], exactly the map lookups the eBPF program
//!   performs per packet.
//!
//! Both return a [`Decision`]; differential tests assert they agree on `allowed()`.
use std::net::IpAddr;

use serde::Serialize;

use crate::plan::PolicyRef;

#[cfg(test)]
mod cases;
pub mod plan;
pub mod spec;

/// A new connection (or connectionless packet) from `src` to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, ...).
    pub protocol: u8,
    /// Destination port; 0 for protocols without ports.
    pub port: u16,
}

/// The verdict of one side: the source pod's egress or the destination pod's ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum SideVerdict {
    /// The address is not a pod enforced here (outside the cluster, or on another node).
    NotEnforced,
    /// The pod is enforced here but no policy isolates it in this direction.
    NotIsolated,
    /// Isolated, and this rule allows the flow (the first one that does).
    Allowed {
        isolated_by: Vec<PolicyRef>,
        policy: PolicyRef,
        rule: u16,
    },
    /// Isolated, and no rule of the isolating policies allows the flow.
    Denied { isolated_by: Vec<PolicyRef> },
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, SideVerdict::Denied { .. })
    }
}

/// Both sides of a flow. Allowed only when both allow (policies are additive per side and
/// both the sender's egress and the receiver's ingress must agree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The source pod's egress.
    pub egress: SideVerdict,
    /// The destination pod's ingress.
    pub ingress: SideVerdict,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}
