//! The Plan: exactly the map contents the datapath will read, plus the tables that give the
//! numbers in those maps a meaning (policy ids, endpoint ids, class descriptions).
//!
//! A Plan is produced by [`crate::compiler::compile`] (pure, deterministic) and consumed by
//! map sync (the only writer of the maps), by the plan evaluator (the same lookups the eBPF
//! program does, in userspace) and by the CLI. Keys are written for slot 0; map sync rewrites
//! the slot byte when it installs a Plan beside the live one.

use std::net::IpAddr;

use netward_common::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, ServiceKey, ServicePolicyKey, ServiceValue,
};
use serde::Serialize;

use crate::model::Direction;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    /// The node this Plan enforces (None: every pod is treated as local, used by the CLI).
    pub node: Option<String>,
    /// ipcache LPM entries, sorted by key, keys unique. Always contains the IPv4 and IPv6
    /// default routes (0.0.0.0/0 and ::/0) so every address has a peer class.
    #[serde(skip)]
    pub ipcache: Vec<(IpcacheKey, IpcacheValue)>,
    /// Policy LPM entries (all allows), sorted by key, keys unique.
    #[serde(skip)]
    pub policy: Vec<(PolicyKey, PolicyValue)>,
    /// `PolicyValue::policy - 1` indexes this table.
    pub policies: Vec<PolicyRef>,
    /// `IpcacheValue::endpoint - 1` indexes this table: local pods enforced by this Plan.
    pub endpoints: Vec<Endpoint>,
    /// `subject_class - 1` indexes this table.
    pub subject_classes: Vec<SubjectClass>,
    /// `peer_class - 1` indexes this table.
    pub peer_classes: Vec<PeerClass>,
    /// `SERVICES` entries: every (virtual address, protocol, port) of a Service, sorted by
    /// key. Each virtual address also has a full-length ipcache entry flagged `EP_SERVICE`.
    #[serde(skip)]
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// `SERVICE_POLICY` entries (all allows), sorted by key: only for subject classes
    /// isolated for egress, only where every endpoint of the Service port is allowed.
    #[serde(skip)]
    pub service_policy: Vec<(ServicePolicyKey, PolicyValue)>,
    /// `ServiceValue::service_port - 1` indexes this table.
    pub service_ports: Vec<ServicePortRef>,
}

/// A port of a Service, as reached through its virtual addresses of one address family
/// (kube-proxy rewrites only to endpoints of the virtual address's family, so a dual-stack
/// Service port has one entry per family, each with that family's backends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePortRef {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    pub protocol: crate::model::Protocol,
    pub port: u16,
    /// (endpoint address, target port) a connection may be rewritten to.
    pub backends: Vec<(IpAddr, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod enforced by this Plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    /// 0 when no policy selects the pod.
    pub subject_class: u32,
    pub isolated_ingress: bool,
    pub isolated_egress: bool,
}

impl Endpoint {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The local pods that share the same selecting policies (and named-port resolutions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubjectClass {
    pub id: u32,
    /// Policy ids (index+1 into [`Plan::policies`]) isolating this class for ingress.
    pub ingress_policies: Vec<u32>,
    /// Policy ids isolating this class for egress.
    pub egress_policies: Vec<u32>,
    /// Human-readable description, e.g. pods in the class.
    pub members: Vec<String>,
}

/// Addresses that satisfy exactly the same set of policy peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerClass {
    pub id: u32,
    /// Human-readable description of what the class satisfies (selectors, ipBlocks, ports).
    pub satisfies: Vec<String>,
    /// Example members (pods or CIDRs), for `netward plan --dump`.
    pub members: Vec<String>,
}

/// Sizes, for `netward plan` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlanStats {
    pub endpoints: usize,
    pub subject_classes: usize,
    pub peer_classes: usize,
    pub ipcache_entries: usize,
    pub policy_entries: usize,
    pub policies: usize,
    pub service_entries: usize,
    pub service_policy_entries: usize,
}

impl Plan {
    pub fn stats(&self) -> PlanStats {
        PlanStats {
            endpoints: self.endpoints.len(),
            subject_classes: self.subject_classes.len(),
            peer_classes: self.peer_classes.len(),
            ipcache_entries: self.ipcache.len(),
            policy_entries: self.policy.len(),
            policies: self.policies.len(),
            service_entries: self.services.len(),
            service_policy_entries: self.service_policy.len(),
        }
    }

    /// The policy a [`PolicyValue`] points at.
    pub fn policy_ref(&self, value: &PolicyValue) -> Option<&PolicyRef> {
        (value.policy as usize)
            .checked_sub(1)
            .and_then(|i| self.policies.get(i))
    }

    pub fn endpoint(&self, id: u32) -> Option<&Endpoint> {
        (id as usize)
            .checked_sub(1)
            .and_then(|i| self.endpoints.get(i))
    }
}

/// Which rule of which policy an allow came from, decoded for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribution {
    pub policy: PolicyRef,
    pub direction: Direction,
    pub rule: u16,
}
