//! What the agent reports about itself: the `status` document served on the control socket
//! (and printed by `netward status`), and the flow events streamed to `netward monitor`.
//! Both are plain serde types so the CLI reads exactly what the agent wrote.
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The agent's view of what it enforces on this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// A complete Plan is enforced (readiness).
    pub ready: bool,
    /// Generation of the Plan in force (0: none yet).
    pub generation: u64,
    /// Unix time (seconds) of the last successful sync.
    pub last_sync_unix: Option<f64>,
    /// The last sync's latency, from the first change seen to maps updated (ms).
    pub last_sync_latency_ms: Option<f64>,
    /// The last sync's model rebuild time: store snapshot + convert (ms).
    pub last_convert_ms: Option<f64>,
    /// The last sync's compile time (ms).
    pub last_compile_ms: Option<f64>,
    /// The last failure to build or apply a Plan (the previous Plan stayed in force).
    pub last_error: Option<String>,
    /// Local pods this node enforces.
    pub endpoints: Vec<EndpointStatus>,
    /// Objects per watched resource and their watch counters.
    pub watches: Vec<WatchStatus>,
    /// Plan sizes.
    pub plan: PlanSize,
    /// Map occupancy per map.
    pub maps: Vec<MapFill>,
    /// Datapath packet counters.
    pub counters: Counters,
    /// Policies that failed validation and therefore fail closed (`ns/name: error`).
    pub policy_errors: Vec<String>,
    /// Services (or their EndpointSlices) that failed validation: they keep no endpoints, so
    /// connections to their addresses are denied (`Kind ns/name: field: error`).
    #[serde(default)]
    pub service_errors: Vec<String>,
    /// What the datapath is (e.g. `ebpf (tcx) at /sys/fs/bpf/netward` or `plan-only`).
    pub datapath: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// Host-side veth found from the node's routes (None: no route yet).
    pub veth: Option<String>,
    pub ifindex: Option<u32>,
    /// The tc programs are attached to `veth`.
    pub attached: bool,
    pub isolated_ingress: bool,
    pub isolated_egress: bool,
    pub subject_class: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub resource: String,
    pub objects: usize,
    pub restarts: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSize {
    pub policies: usize,
    pub endpoints: usize,
    pub subject_classes: usize,
    pub peer_classes: usize,
    pub ipcache_entries: usize,
    pub policy_entries: usize,
}

impl From<crate::plan::PlanStats> for PlanSize {
    fn from(s: crate::plan::PlanStats) -> Self {
        PlanSize {
            policies: s.policies,
            endpoints: s.endpoints,
            subject_classes: s.subject_classes,
            peer_classes: s.peer_classes,
            ipcache_entries: s.ipcache_entries,
            policy_entries: s.policy_entries,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

/// Datapath counters (packets), as cumulative totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub allowed: u64,
    pub denied: u64,
    /// Packets per (direction, reason); direction is `ingress`, `egress` or `any` when the
    /// datapath does not split by direction.
    pub by_reason: BTreeMap<String, u64>,
    pub events_lost: u64,
    pub sync_failures: u64,
    /// Packets of tracked flows the per-CPU flow cache answered (0 from an agent without one).
    #[serde(default)]
    pub flow_cache_hits: u64,
    /// Policy decisions the per-CPU decision cache answered (0 from an agent without one).
    #[serde(default)]
    pub decision_cache_hits: u64,
    /// Packets delivered straight to another local pod's veth (0 from an agent without it).
    #[serde(default)]
    pub direct_delivered: u64,
    /// Packets of directly delivered flows that took the node's path instead.
    #[serde(default)]
    pub direct_fallback: u64,
}

/// One verdict, attributed, as `netward monitor` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvent {
    /// Unix time in milliseconds when the agent read the event.
    pub time_ms: u64,
    pub verdict: String,
    pub reason: String,
    /// From the local pod's point of view.
    pub direction: String,
    pub protocol: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// `ns/pod` of the source and destination, when they are known pods.
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
    /// `ns/name` of the policy whose rule allowed the flow, and the rule index.
    pub policy: Option<String>,
    pub rule: Option<u16>,
    pub generation: u64,
}

impl FlowEvent {
    pub fn allowed(&self) -> bool {
        self.verdict == "allowed"
    }
}
