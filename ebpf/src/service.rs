//! Egress to a Service virtual address (ClusterIP, externalIP, load-balancer IP).
//!
//! The egress hook runs before kube-proxy's DNAT, so a new flow to a virtual address still
//! carries that address. Instead of the (meaningless) peer class of the virtual address, the
//! flow is decided for the Service port it targets: allowed iff the client's subject class has
//! a `SERVICE_POLICY` entry for that port, which the compiler writes only when the client's
//! egress allows every ready endpoint of the port (on its address and target port).
//!
//! Two hash lookups, reached only when the destination's ipcache entry has `EP_SERVICE`:
//! every other flow pays a single flag test in `policy::check`. A port the Service does not
//! serve is not rewritten by kube-proxy, so it falls back to the plain policy lookup.
use netward_common::{reason, ServiceKey, ServicePolicyKey};

use crate::{
    maps::{SERVICES, SERVICE_POLICY},
    policy::Decision,
};

/// The decision for an egress new flow of `subject` to (`vip`, `proto`, `port`), or `None`
/// when the virtual address does not serve that protocol and port (plain policy applies).
/// `d` carries the endpoint of the local pod and is returned completed.
#[inline(always)]
pub fn check(
    slot: u8,
    family: u8,
    subject: u32,
    vip: &[u8; 16],
    proto: u8,
    port: u16,
    mut d: Decision,
) -> Option<Decision> {
    let key = ServiceKey {
        slot,
        family,
        proto,
        _pad: 0,
        port,
        _pad2: 0,
        addr: *vip,
    };
    // SAFETY: the value is copied out immediately; map values are plain integers.
    let sp = unsafe { SERVICES.get(&key) }?.service_port;
    let pk = ServicePolicyKey {
        slot,
        _pad: 0,
        _pad2: 0,
        subject,
        service_port: sp,
    };
    // SAFETY: as above.
    match unsafe { SERVICE_POLICY.get(&pk) } {
        Some(v) => {
            d.reason = reason::POLICY_ALLOW;
            d.policy = v.policy;
            d.rule = v.rule;
        }
        None => d.reason = reason::SERVICE_DENY,
    }
    Some(d)
}
