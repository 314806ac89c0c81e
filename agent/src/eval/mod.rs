//! Evaluators: given a flow, is it allowed, and why.
//!
//! * [`spec`] reads the model and applies the NetworkPolicy definition directly: the truth.
//! * [`plan`] performs, on a [`crate::plan::Plan`], exactly the map lookups the eBPF program
//!   performs per packet.
//!
//! Both return a [`Decision`]; differential tests assert they return the same one (verdicts,
//! isolating policies, attribution, and for Service virtual addresses the denied endpoints).
//!
//! Egress to a Service virtual address (see [`crate::model::Service`]) is decided against the
//! Service port's endpoints: allowed iff every one is allowed (attributed to the rule allowing
//! the first), else [`SideVerdict::ServiceDenied`]. Its ingress side is not enforced at the
//! virtual address: the endpoint's own ingress is checked post-DNAT on the endpoint's veth.
use std::net::IpAddr;

use serde::Serialize;

use crate::model::Protocol;
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
    /// Egress to a Service virtual address: isolated, and the egress rules do not allow every
    /// endpoint kube-proxy may rewrite the connection to (datapath reason `SERVICE_DENY`).
    /// `denied` lists the endpoints no rule allows, in address order; it is empty when the
    /// Service port has no endpoint at all (`backends == 0`).
    ServiceDenied {
        isolated_by: Vec<PolicyRef>,
        service: ServiceTarget,
        /// Number of (endpoint address, target port) the connection may be rewritten to.
        backends: usize,
        denied: Vec<(IpAddr, u16)>,
    },
}

/// The Service port a flow to a virtual address is rewritten for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ServiceTarget {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl ServiceTarget {
    /// `namespace/name:port/PROTO` (with the port name when there is one).
    pub fn describe(&self) -> String {
        let name = if self.port_name.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.port_name)
        };
        format!(
            "service {}/{} port {}/{}{name}",
            self.namespace, self.name, self.port, self.protocol
        )
    }
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        !matches!(
            self,
            SideVerdict::Denied { .. } | SideVerdict::ServiceDenied { .. }
        )
    }

    /// The datapath reason a denying verdict is counted under (None when it allows).
    pub fn deny_reason(&self) -> Option<u8> {
        match self {
            SideVerdict::Denied { .. } => Some(netward_common::reason::POLICY_DENY),
            SideVerdict::ServiceDenied { .. } => Some(netward_common::reason::SERVICE_DENY),
            _ => None,
        }
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
