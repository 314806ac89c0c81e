//! The datapath: netward's eBPF programs and maps, as seen from the agent.
//!
//! [`Datapath`] loads the embedded eBPF object, pins its maps and links under a bpffs directory
//! (default `/sys/fs/bpf/netward`), attaches the two tc programs to pod veths, and is the only
//! writer of the maps ([`Datapath::apply`], map sync). It also reads verdict events and
//! counters.
//!
//! Lifecycle, and why nothing ever opens a window:
//! * maps are pinned by name: a new agent process (restart or upgrade) reuses them, so the Plan
//!   in force, conntrack and counters survive;
//! * TCX links are pinned per interface: they stay attached while no agent runs; a new agent
//!   replaces the program inside each pinned link atomically (`bpf_link_update`), old and new
//!   program never both miss a packet;
//! * a Plan is written beside the live one (other slot) and activated by one write to
//!   `CONFIG`; a full map fails closed (the old Plan stays in force).
//!
//! ```no_run
//! use netward::datapath::{Datapath, DatapathConfig};
//! # fn f(plan: &netward::plan::Plan) -> anyhow::Result<()> {
//! let mut dp = Datapath::open_or_create(DatapathConfig::default())?;
//! dp.apply(plan)?;            // install the Plan (first apply marks the maps ready)
//! dp.attach("veth1234")?;      // enforce on a pod's host-side veth
//! let mut events = dp.events()?;
//! for e in events.poll(std::time::Duration::from_millis(100))? {
//!     println!("{e:?}");
//! }
//! println!("{:?}", dp.counters()?);
//! # Ok(()) }
//! ```
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aya::Ebpf;

use crate::plan::Plan;

mod attach;
pub mod bench;
mod counters;
mod ct_gc;
mod ct_migrate;
mod events;
mod hash_sync;
mod loader;
mod plan_table;
mod qdisc;
mod service_sync;
mod slot_hash;
mod sync;
pub mod testrun;
mod upgrade;

pub use attach::{AttachMode, DirectChange};
pub use counters::Counters;
pub use ct_gc::{ConntrackGc, GcHandle, GcReport, GcStats};
pub use events::{EventReader, Verdict, VerdictEvent};
pub use sync::{SyncError, SyncReport};
pub use testrun::{Origin, TestRunOutcome};

/// Default interval of the conntrack sweep: closing entries live 10 s, so a closed
/// connection's entry is gone 10-20 s after its last packet.
pub const DEFAULT_CONNTRACK_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Default bpffs directory for pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/netward";

/// How the datapath is set up. Map sizes apply when the maps are created; pinned maps from a
/// previous agent keep their size (resizing needs `Datapath::destroy` first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Where maps and links are pinned (must be on a bpffs; `/sys/fs/bpf` is mounted if needed).
    pub bpffs_dir: PathBuf,
    /// ipcache capacity (entries). Both slots coexist during a sync: size for 2x the Plan.
    pub ipcache_max: u32,
    /// Policy map capacity (`POLICY_HASH` entries), same 2x rule.
    pub policy_max: u32,
    /// `LOCAL_TABLE` capacity: addresses of pods enforced on this node, same 2x rule (each
    /// Plan slot has half; `HOST_TABLE` likewise has half of `ipcache_max` per slot).
    pub endpoints_max: u32,
    pub conntrack_max: u32,
    /// How often the agent sweeps expired conntrack entries ([`ConntrackGc`]; zero: never).
    /// Not a property of the maps: whoever runs the datapath spawns the sweep with it.
    pub conntrack_gc_interval: std::time::Duration,
    /// Slots of each CPU's flow cache in front of conntrack (0 or a power of two; 0: off).
    pub flow_cache_slots: u32,
    /// Slots of each CPU's decision cache in front of the policy maps (0 or a power of two;
    /// 0: off).
    pub decision_cache_slots: u32,
    /// How long a flow cache entry stands in for conntrack (and a decision cache entry for the
    /// policy maps), in jiffies (at most 1 s at any HZ
    /// by default; the benchmark sets 0 so that every probe misses).
    pub flow_cache_window_jiffies: u64,
    pub frags_max: u32,
    /// `SERVICES` capacity: (virtual address, protocol, port) entries, same 2x rule.
    pub services_max: u32,
    /// `SERVICE_POLICY` capacity: (subject class, Service port) allows, same 2x rule.
    pub service_policy_max: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub events_ring_bytes: u32,
    /// Drop traffic of local addresses without an endpoint entry (a pod whose veth exists
    /// before its policy is programmed is then never left open).
    pub fail_closed_unknown: bool,
    /// Per-CPU event budget (token bucket rate per second and burst).
    pub events_per_sec: u32,
    pub events_burst: u32,
    /// Also emit events for allowed new flows (denies always emit).
    pub events_allow: bool,
    /// Deliver TCP flows between two local pods straight from one veth to the other,
    /// skipping the node's IP stack and netfilter (`CFG_DIRECT`; see DATAPATH.md). Both
    /// pods' policies are enforced either way.
    pub direct_delivery: bool,
    /// Force an attach mode (None: TCX when the kernel has it, else netlink). Netlink filters
    /// are not pinned: `destroy` does not know them, `detach` each interface instead.
    pub attach_mode: Option<AttachMode>,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            bpffs_dir: PathBuf::from(DEFAULT_BPFFS_DIR),
            ipcache_max: 65536,
            policy_max: 262144,
            endpoints_max: 16384,
            conntrack_max: 262144,
            conntrack_gc_interval: DEFAULT_CONNTRACK_GC_INTERVAL,
            flow_cache_slots: netward_common::FLOW_CACHE_DEFAULT_SLOTS,
            decision_cache_slots: netward_common::DECISION_CACHE_DEFAULT_SLOTS,
            flow_cache_window_jiffies: netward_common::FLOW_CACHE_WINDOW_JIFFIES,
            frags_max: 8192,
            services_max: 16384,
            service_policy_max: 65536,
            events_ring_bytes: 256 * 1024,
            fail_closed_unknown: true,
            events_per_sec: 1000,
            events_burst: 100,
            events_allow: false,
            direct_delivery: true,
            attach_mode: None,
        }
    }
}

/// The configurable map capacities (entries), as the agent's flags set them. Both Plan slots
/// coexist during a sync: size the Plan tables for twice the largest Plan. A Plan that does not
/// fit fails closed (the previous one stays in force, the failure is logged and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub ipcache: u32,
    pub policy: u32,
    pub endpoints: u32,
    pub conntrack: u32,
    /// Flow cache slots per CPU (0 or a power of two; 0: off).
    pub flow_cache: u32,
    /// Decision cache slots per CPU (0 or a power of two; 0: off).
    pub decision_cache: u32,
    pub services: u32,
    pub service_policy: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        let d = DatapathConfig::default();
        MapSizes {
            ipcache: d.ipcache_max,
            policy: d.policy_max,
            endpoints: d.endpoints_max,
            conntrack: d.conntrack_max,
            flow_cache: d.flow_cache_slots,
            decision_cache: d.decision_cache_slots,
            services: d.services_max,
            service_policy: d.service_policy_max,
        }
    }
}

impl DatapathConfig {
    /// These capacities for maps created from now on (pinned maps keep theirs).
    pub fn with_sizes(mut self, s: MapSizes) -> Self {
        self.ipcache_max = s.ipcache;
        self.policy_max = s.policy;
        self.endpoints_max = s.endpoints;
        self.conntrack_max = s.conntrack;
        self.flow_cache_slots = s.flow_cache;
        self.decision_cache_slots = s.decision_cache;
        self.services_max = s.services;
        self.service_policy_max = s.service_policy;
        self
    }
}

/// Plans recently installed, by generation, to attribute events to policies.
#[derive(Default)]
pub(crate) struct PlanHistory {
    plans: VecDeque<(u64, Arc<Plan>)>,
}

impl PlanHistory {
    const KEEP: usize = 2;

    fn push(&mut self, generation: u64, plan: Arc<Plan>) {
        self.plans.push_front((generation, plan));
        self.plans.truncate(Self::KEEP);
    }

    /// The Plan that was live at `generation` (or the newest known).
    pub(crate) fn get(&self, generation: u64) -> Option<Arc<Plan>> {
        self.plans
            .iter()
            .find(|(g, _)| *g == generation)
            .or_else(|| self.plans.front())
            .map(|(_, p)| p.clone())
    }
}

/// The loaded datapath. Dropping it leaves everything pinned and enforcing.
pub struct Datapath {
    cfg: DatapathConfig,
    bpf: Ebpf,
    mode: AttachMode,
    history: Arc<Mutex<PlanHistory>>,
    sync_failures: u64,
}

impl Datapath {
    /// Load the programs, reusing pinned maps if a previous agent left them, and atomically
    /// switch every pinned link to the newly loaded programs.
    pub fn open_or_create(cfg: DatapathConfig) -> anyhow::Result<Datapath> {
        Self::from_loaded(loader::load(&cfg)?, cfg)
    }

    /// Like [`Datapath::open_or_create`] with another build of the eBPF object (benchmarks).
    pub(crate) fn open_object(cfg: DatapathConfig, object: &[u8]) -> anyhow::Result<Datapath> {
        Self::from_loaded(loader::load_object(&cfg, object)?, cfg)
    }

    fn from_loaded(bpf: Ebpf, cfg: DatapathConfig) -> anyhow::Result<Datapath> {
        // An older agent's conntrack map (CT, CONNTRACK): its flows move to CT_PAIRS around the
        // swap (before: what exists; after: what the old programs added meanwhile).
        let legacy_ct = ct_migrate::open_legacy(&cfg.bpffs_dir, &bpf)?;
        let mut dp = Datapath {
            mode: cfg.attach_mode.unwrap_or_else(AttachMode::detect),
            bpf,
            cfg,
            history: Arc::default(),
            sync_failures: 0,
        };
        // An older agent's layout: carry its Plan and its conntrack over before its programs
        // are replaced, and the conntrack entries its programs added meanwhile after.
        dp.upgrade_tables()?;
        for old in &legacy_ct {
            let r = old.copy_into(&mut dp.bpf)?;
            tracing::info!(?r, "conntrack: copied the older agent's entries");
        }
        dp.adopt_pinned_links()?;
        for old in legacy_ct {
            let r = old.copy_into(&mut dp.bpf)?;
            tracing::info!(
                ?r,
                "conntrack: copied entries added during the program swap"
            );
            old.unpin()?;
        }
        dp.remove_old_pins()?;
        dp.write_options()?;
        Ok(dp)
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.cfg
    }

    /// TCX or netlink (clsact), chosen from the running kernel.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Remove every pin (links detach, maps are freed once unused). For tests and `lab down`.
    pub fn destroy(self) -> anyhow::Result<()> {
        let dir = self.cfg.bpffs_dir.clone();
        let ifaces = self.attached()?;
        let mut me = self;
        for ifindex in ifaces {
            me.detach_index(ifindex)?;
        }
        drop(me);
        loader::remove_pins(&dir)
    }
}
