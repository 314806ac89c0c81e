//! Loading the embedded eBPF object with pinned, size-configured maps.
use std::fs;
use std::mem::size_of;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::MapInfo;
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use netward_common::{
    table_buckets_per_slot, AddrKey, Bucket, Config, CtFlowKey, CtKey, CtPairKey, CtPairValue,
    CtValue, EndpointValue, FragKey, FragValue, HostKey, IpcacheKey, IpcacheValue, PolicyHashKey,
    PolicyValue, RateState, ServiceKey, ServicePolicyKey, ServiceValue, Tagged, COUNTER_COUNT,
};

use super::DatapathConfig;

/// The eBPF object built by agent/build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netward"));

/// Program names in the object.
pub(crate) const PROG_EGRESS: &str = "netward_egress";
pub(crate) const PROG_INGRESS: &str = "netward_ingress";

/// A map the loader checks or sizes.
struct MapSpec {
    name: &'static str,
    /// (key size, value size), checked against a map pinned by an earlier agent so that a
    /// layout change never silently reuses an incompatible map. None: not checked (the ring
    /// buffer; maps that are not pinned; the older builds' maps only a benchmark's baseline
    /// object has).
    layout: Option<(usize, usize)>,
    /// Capacity from the configuration; None: the object's own.
    capacity: Option<Capacity>,
}

/// A map's capacity in a configuration.
type Capacity = fn(&DatapathConfig) -> u32;

const fn map(
    name: &'static str,
    layout: Option<(usize, usize)>,
    capacity: Option<Capacity>,
) -> MapSpec {
    MapSpec {
        name,
        layout,
        capacity,
    }
}

/// Every map of the object (and of the older objects an upgrade or a benchmark meets) that
/// the loader checks or sizes: one table, so a map is named once.
const MAPS: &[MapSpec] = &[
    map("CONFIG", Some((4, size_of::<Config>())), None),
    map(
        "IPCACHE",
        Some((size_of::<IpcacheKey>(), size_of::<IpcacheValue>())),
        Some(|c| c.ipcache_max),
    ),
    // The address tables: two slots of buckets, sized from [`TABLES`].
    map(
        "LOCAL_TABLE",
        Some((4, size_of::<Bucket<AddrKey, Tagged<EndpointValue>>>())),
        None,
    ),
    map(
        "HOST_TABLE",
        Some((4, size_of::<Bucket<AddrKey, Tagged<IpcacheValue>>>())),
        None,
    ),
    // HOST_ADDRS, LOCAL_ADDRS: the previous build's address tables (upgrade, benchmark
    // baseline).
    map(
        "HOST_ADDRS",
        Some((size_of::<AddrKey>(), size_of::<Tagged<IpcacheValue>>())),
        Some(|c| c.ipcache_max),
    ),
    map(
        "LOCAL_ADDRS",
        Some((size_of::<AddrKey>(), size_of::<Tagged<EndpointValue>>())),
        Some(|c| c.endpoints_max),
    ),
    map(
        "POLICY_HASH",
        Some((size_of::<PolicyHashKey>(), size_of::<PolicyValue>())),
        Some(|c| c.policy_max),
    ),
    // ADDRS, ENDPOINTS: the previous build's address tables (upgrade, benchmark baseline).
    map(
        "ADDRS",
        Some((size_of::<HostKey>(), size_of::<IpcacheValue>())),
        Some(|c| c.ipcache_max),
    ),
    map(
        "ENDPOINTS",
        Some((size_of::<HostKey>(), size_of::<EndpointValue>())),
        Some(|c| c.endpoints_max),
    ),
    // HOSTS and POLICY: the maps of builds before the hash tables (a benchmark baseline).
    map("HOSTS", None, Some(|c| c.ipcache_max)),
    map("POLICY", None, Some(|c| c.policy_max)),
    map(
        "CT_PAIRS",
        Some((size_of::<CtPairKey>(), size_of::<CtPairValue>())),
        Some(|c| c.conntrack_max),
    ),
    // CT, CONNTRACK: the older agents' conntrack (migrated into CT_PAIRS, see ct_migrate;
    // live in an older object benchmarked side by side).
    map(
        "CT",
        Some((size_of::<CtFlowKey>(), size_of::<CtValue>())),
        Some(|c| c.conntrack_max),
    ),
    map(
        "CONNTRACK",
        Some((size_of::<CtKey>(), size_of::<CtValue>())),
        Some(|c| c.conntrack_max),
    ),
    // Per CPU, not pinned.
    map("FLOW_CACHE", None, Some(|c| c.flow_cache_slots.max(1))),
    map(
        "DECISION_CACHE",
        None,
        Some(|c| c.decision_cache_slots.max(1)),
    ),
    map(
        "FRAGS",
        Some((size_of::<FragKey>(), size_of::<FragValue>())),
        Some(|c| c.frags_max),
    ),
    map("EVENTS", None, Some(|c| c.events_ring_bytes)),
    map("COUNTERS", Some((4, 8)), None),
    map("POD_VETHS", Some((4, 8)), None),
    map("RATELIMIT", Some((4, size_of::<RateState>())), None),
    map(
        "SERVICES",
        Some((size_of::<ServiceKey>(), size_of::<ServiceValue>())),
        Some(|c| c.services_max),
    ),
    map(
        "SERVICE_POLICY",
        Some((size_of::<ServicePolicyKey>(), size_of::<PolicyValue>())),
        Some(|c| c.service_policy_max),
    ),
];

/// The address tables and their configured capacity (entries, both slots): each array holds
/// two slots of `table_buckets_per_slot(capacity)` buckets.
const TABLES: [(&str, Capacity); 2] = [
    ("LOCAL_TABLE", |c| c.endpoints_max),
    ("HOST_TABLE", |c| c.ipcache_max),
];

/// Maps that hold statistics, not enforcement state, with the shape this agent expects
/// (name, key size, value size, max entries). A pinned one of another shape (an older agent:
/// `reason::COUNT` grew) is replaced by a fresh map instead of failing the load: counters
/// restart from zero, enforcement is untouched.
const STATS_MAPS: &[(&str, u32, u32, u32)] = &[
    ("COUNTERS", 4, 8, COUNTER_COUNT),
    ("RATELIMIT", 4, size_of::<RateState>() as u32, 1),
];

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, st a properly sized out buffer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Make sure `dir` exists on a bpffs, mounting one at /sys/fs/bpf when that is where it goes
/// and nothing is mounted there yet (serialised by a lock so parallel tests mount once).
pub(crate) fn ensure_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root)? {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/netward-bpffs.lock")
            .context("open /run/netward-bpffs.lock")?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an open fd; released when `lock` is closed.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if !is_bpffs(root)? {
            let src = c"bpf";
            let target = c"/sys/fs/bpf";
            // SAFETY: constant NUL-terminated strings, no data argument.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    src.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("mount bpffs on /sys/fs/bpf");
            }
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if !is_bpffs(dir)? {
        bail!(
            "{} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            dir.display()
        );
    }
    fs::create_dir_all(dir.join("links"))
        .with_context(|| format!("create {}/links", dir.display()))?;
    Ok(())
}

/// Largest flow or decision cache per CPU (64 MiB of 64-byte slots).
const CACHE_MAX_SLOTS: u32 = 1 << 20;

/// Load the object: maps pinned under `cfg.bpffs_dir` (reused when present), programs loaded.
pub(crate) fn load(cfg: &DatapathConfig) -> Result<Ebpf> {
    load_object(cfg, OBJECT)
}

/// [`load`] of another build of the object (the benchmark compares against an older one).
pub(crate) fn load_object(cfg: &DatapathConfig, object: &[u8]) -> Result<Ebpf> {
    if object.is_empty() {
        bail!("the eBPF object is empty: the agent was built with AYA_BUILD_SKIP");
    }
    for (what, slots) in [
        ("flow cache", cfg.flow_cache_slots),
        ("decision cache", cfg.decision_cache_slots),
    ] {
        if slots != 0 && (!slots.is_power_of_two() || slots > CACHE_MAX_SLOTS) {
            bail!(
                "{what} slots {slots}: must be 0 (off) or a power of two up to {CACHE_MAX_SLOTS}"
            );
        }
    }
    ensure_bpffs(&cfg.bpffs_dir)?;
    replace_stale_stats_maps(&cfg.bpffs_dir)?;
    check_pinned_layouts(&cfg.bpffs_dir)?;
    // The programs index the address tables by their buckets per slot: a table pinned by an
    // earlier agent keeps its size, whatever this configuration says.
    let tables = TABLES.map(|(name, capacity)| {
        let pin = cfg.bpffs_dir.join(name);
        match MapInfo::from_pin(&pin) {
            Ok(info) => info.max_entries() / 2,
            Err(_) => table_buckets_per_slot(capacity(cfg)),
        }
    });
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&cfg.bpffs_dir);
    for m in MAPS {
        if let Some(capacity) = m.capacity {
            loader.map_max_entries(m.name, capacity(cfg));
        }
    }
    for ((name, _), buckets) in TABLES.iter().zip(tables) {
        loader.map_max_entries(name, 2 * buckets);
    }
    let mut bpf = loader
        // Read-only data: the verifier sees constants (the cache code goes when it is off).
        // Not required: an older object (a benchmark baseline) has no flow or decision cache.
        .override_global("FLOW_CACHE_SLOTS", &cfg.flow_cache_slots, false)
        .override_global("DECISION_CACHE_SLOTS", &cfg.decision_cache_slots, false)
        .override_global("FLOW_CACHE_WINDOW", &cfg.flow_cache_window_jiffies, false)
        .override_global("LOCAL_TABLE_BUCKETS", &tables[0], false)
        .override_global("HOST_TABLE_BUCKETS", &tables[1], false)
        .load(object)
        .context("load the eBPF object")?;
    for name in [PROG_EGRESS, PROG_INGRESS] {
        let prog: &mut SchedClassifier = bpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("load program {name} (verifier)"))?;
    }
    Ok(bpf)
}

/// Unpin the statistics maps whose pinned shape differs from this agent's ([`STATS_MAPS`]), so
/// the load creates them anew. Programs still attached keep their old map until replaced.
fn replace_stale_stats_maps(dir: &Path) -> Result<()> {
    for (name, key, value, entries) in STATS_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("open pinned map {}", path.display()))?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found != (*key, *value, *entries) {
            tracing::warn!(
                map = name,
                ?found,
                expected = ?(key, value, entries),
                "pinned statistics map has another shape (older agent): replacing it"
            );
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

fn check_pinned_layouts(dir: &Path) -> Result<()> {
    for m in MAPS {
        let Some((key, value)) = m.layout else {
            continue;
        };
        let path = dir.join(m.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("open pinned map {}", path.display()))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            bail!(
                "pinned map {} has key/value sizes {}/{}, this agent expects {key}/{value}: \
                 remove the pins (netward datapath reset) to recreate it",
                path.display(),
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

/// Remove the pin directory (after links were detached).
pub(crate) fn remove_pins(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod map_table_tests {
    use super::*;

    #[test]
    fn each_map_is_named_once() {
        let mut names: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a map is listed twice in MAPS");
    }
}
