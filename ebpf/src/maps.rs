//! Every map of the datapath. All are pinned by name under the agent's bpffs directory
//! (`EbpfLoader::default_map_pin_directory`), so a restarted or upgraded agent reuses them:
//! Plans, conntrack, counters survive and enforcement never has an open window.
//! Sizes here are defaults; the agent overrides them at load time (configurable).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netward_common::{
    AddrKey, Bucket, Config, CtPairKey, CtPairValue, EndpointValue, FragKey, FragValue, IpcacheKey,
    IpcacheValue, PolicyHashKey, PolicyValue, RateState, ServiceKey, ServicePolicyKey,
    ServiceValue, Tagged, COUNTER_COUNT,
};

/// LPM data parts (everything after `prefixlen`), see `IpcacheKey::lpm_data`.
pub type IpcacheData = [u8; IpcacheKey::DATA_LEN];

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "IPCACHE")]
pub static IPCACHE: LpmTrie<IpcacheData, IpcacheValue> = LpmTrie::pinned(65536, 0);

/// `BPF_F_MMAPABLE`: the agent writes the Plan's address tables through a mapping.
const MMAPABLE: u32 = 1 << 10;

/// The full-length ipcache entries (pods, Service addresses), laid out by the agent (see
/// `table`): a hit is exactly what the trie would answer (nothing is longer than a full
/// prefix), so those addresses resolve without walking it. Two slots of
/// `HOST_TABLE_BUCKETS` buckets.
#[map(name = "HOST_TABLE")]
pub static HOST_TABLE: Array<Bucket<AddrKey, Tagged<IpcacheValue>>> = Array::pinned(2, MMAPABLE);

/// The Plan's policy entries as exact keys (`PolicyHashKey`: one prefix length each); probed
/// only at the lengths the subject's `LOCAL_TABLE` entry lists, longest first.
#[map(name = "POLICY_HASH")]
pub static POLICY_HASH: HashMap<PolicyHashKey, PolicyValue> = HashMap::pinned(262144, 0);

/// Scratch space for the `POLICY_HASH` key being probed (see `policy::policy_probe`).
#[map(name = "PROBE_KEY")]
pub static PROBE_KEY: PerCpuArray<PolicyHashKey> = PerCpuArray::with_max_entries(1, 0);

/// Local pods' addresses -> their ipcache entry and the prefix lengths their subject class's
/// `POLICY_HASH` entries use per direction: the local side of a new flow in one lookup. Laid
/// out by the agent like `HOST_TABLE`.
#[map(name = "LOCAL_TABLE")]
pub static LOCAL_TABLE: Array<Bucket<AddrKey, Tagged<EndpointValue>>> = Array::pinned(2, MMAPABLE);

/// Conntrack, both families: one entry per flow, its ends in a canonical order, each end's
/// verdict in the value (see `conntrack`).
#[map(name = "CT_PAIRS")]
pub static CT: LruHashMap<CtPairKey, CtPairValue> = LruHashMap::pinned(262144, 0);

#[map(name = "FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(8192, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

#[map(name = "RATELIMIT")]
pub static RATELIMIT: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// Service virtual address ports (`slot | family | proto | port | addr`) -> Service port id.
/// Looked up only for egress new flows whose destination carries `EP_SERVICE`.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(16384, 0);

/// (slot, subject class, Service port id) -> attribution, present only when the subject may
/// reach every endpoint of that Service port.
#[map(name = "SERVICE_POLICY")]
pub static SERVICE_POLICY: HashMap<ServicePolicyKey, PolicyValue> = HashMap::pinned(65536, 0);
