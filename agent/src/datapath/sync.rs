//! Map sync: the only writer of `IPCACHE`, the hash tables derived from the Plan, the Service
//! maps and `CONFIG`.
//!
//! Applying a Plan (generation g -> g+1, slot = generation & 1):
//! 1. capacity check: the live slot plus the new Plan must fit (both coexist for a moment);
//!    otherwise fail closed before writing anything;
//! 2. diff the new Plan against what the inactive slot holds (normally nothing; leftovers of
//!    an interrupted sync are corrected): delete stale keys, insert/update changed ones;
//! 3. flip: one write of `CONFIG` (slot + generation + flags) makes the new Plan live for the
//!    next packet; conntrack entries re-check against it lazily (generation mismatch);
//! 4. delete the old slot's entries.
//!
//! The tables derived from the Plan (`POLICY_HASH`, `LOCAL_TABLE`, `HOST_TABLE`,
//! `hash_sync.rs`, `plan_table.rs`) and the Service maps (`service_sync.rs`) follow the same protocol. An older
//! build of the eBPF object (benchmarked side by side, `--baseline-object`) has `HOSTS` and the
//! `POLICY` trie instead: the Plan's entries are then written there as they are.
//!
//! If a write fails in step 2 (map full, kernel out of memory), the inactive slot is emptied
//! again and the error returned and counted: the old Plan stays in force, nothing fails open.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};
use netward_common::{
    Config, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, CFG_DIRECT, CFG_EVENTS_ALLOW,
    CFG_FAIL_CLOSED_UNKNOWN, CFG_READY,
};
use serde::Serialize;

use super::hash_sync::HashTables;
use super::service_sync::{ServiceCounts, ServiceTables};
use super::slot_hash::SlotCounts;
use super::Datapath;
use crate::plan::Plan;

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub generation: u64,
    pub slot: u8,
    pub ipcache_written: usize,
    pub ipcache_deleted: usize,
    pub policy_written: usize,
    pub policy_deleted: usize,
    /// `SERVICES` + `SERVICE_POLICY` entries written / deleted (service_sync.rs).
    pub services_written: usize,
    pub services_deleted: usize,
    #[serde(skip)]
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("map {map} is full: {needed} entries needed (live Plan + new Plan), capacity {capacity}; the previous Plan stays in force")]
    MapFull {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    /// An address table holds each Plan slot in its own half (see `plan_table`).
    #[error("map {map} is full: the new Plan needs {needed} entries, a slot holds {capacity} (half the configured capacity); the previous Plan stays in force")]
    SlotFull {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("writing map {map}: {source}; the previous Plan stays in force")]
    Write {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

type IpData = [u8; IpcacheKey::DATA_LEN];
/// A typed view of one LPM map, borrowed from the loaded object.
type Lpm<'a, K> = LpmTrie<&'a mut MapData, <K as LpmEntry>::Data, <K as LpmEntry>::Value>;
type PolData = [u8; PolicyKey::DATA_LEN];

/// One LPM map's view in sync: key -> value, grouped by slot.
trait LpmEntry: Copy + Ord {
    type Data: aya::Pod;
    type Value: aya::Pod + PartialEq;
    fn slot(&self) -> u8;
    fn with_slot(self, slot: u8) -> Self;
    fn to_key(self) -> Key<Self::Data>;
    fn from_key(k: &Key<Self::Data>) -> Self;
}

impl LpmEntry for IpcacheKey {
    type Data = IpData;
    type Value = IpcacheValue;
    fn slot(&self) -> u8 {
        self.slot
    }
    fn with_slot(mut self, slot: u8) -> Self {
        self.slot = slot;
        self
    }
    fn to_key(self) -> Key<IpData> {
        Key::new(self.prefixlen, self.lpm_data())
    }
    fn from_key(k: &Key<IpData>) -> Self {
        IpcacheKey::from_lpm(k.prefix_len(), k.data())
    }
}

impl LpmEntry for PolicyKey {
    type Data = PolData;
    type Value = PolicyValue;
    fn slot(&self) -> u8 {
        self.slot
    }
    fn with_slot(mut self, slot: u8) -> Self {
        self.slot = slot;
        self
    }
    fn to_key(self) -> Key<PolData> {
        Key::new(self.prefixlen, self.lpm_data())
    }
    fn from_key(k: &Key<PolData>) -> Self {
        PolicyKey::from_lpm(k.prefix_len(), k.data())
    }
}

/// The `HOSTS` hash map.
type Hosts<'a> = HashMap<&'a mut MapData, IpcacheKey, IpcacheValue>;

fn hosts_read(map: &Hosts<'_>) -> Result<BTreeMap<IpcacheKey, IpcacheValue>, SyncError> {
    map.iter()
        .map(|r| {
            r.map_err(|e| SyncError::Map {
                map: "HOSTS",
                source: e.into(),
            })
        })
        .collect()
}

fn hosts_remove(map: &mut Hosts<'_>, k: &IpcacheKey) -> Result<(), SyncError> {
    match map.remove(k) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(SyncError::Map {
            map: "HOSTS",
            source: e.into(),
        }),
    }
}

fn hosts_write_slot(
    map: &mut Hosts<'_>,
    slot: u8,
    current: &BTreeMap<IpcacheKey, IpcacheValue>,
    desired: &[(IpcacheKey, IpcacheValue)],
) -> Result<(), SyncError> {
    let wanted: BTreeSet<IpcacheKey> = desired.iter().map(|(k, _)| *k).collect();
    for k in current
        .keys()
        .filter(|k| k.slot == slot && !wanted.contains(k))
    {
        hosts_remove(map, k)?;
    }
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            map.insert(k, v, 0).map_err(|source| SyncError::Write {
                map: "HOSTS",
                source,
            })?;
        }
    }
    Ok(())
}

fn hosts_clear_slot(map: &mut Hosts<'_>, slot: u8) -> Result<(), SyncError> {
    let keys: Vec<IpcacheKey> = hosts_read(map)?
        .into_keys()
        .filter(|k| k.slot == slot)
        .collect();
    for k in &keys {
        hosts_remove(map, k)?;
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    written: usize,
    deleted: usize,
}

/// Everything currently in an LPM map, by key.
fn read_all<K: LpmEntry>(
    map: &Lpm<'_, K>,
    name: &'static str,
) -> Result<BTreeMap<K, K::Value>, SyncError> {
    let mut out = BTreeMap::new();
    for r in map.iter() {
        let (k, v) = r.map_err(|e| SyncError::Map {
            map: name,
            source: e.into(),
        })?;
        out.insert(K::from_key(&k), v);
    }
    Ok(out)
}

/// Write `desired` (already in `slot`) into `slot`, diffing against `current`.
fn write_slot<K: LpmEntry>(
    map: &mut Lpm<'_, K>,
    name: &'static str,
    slot: u8,
    current: &BTreeMap<K, K::Value>,
    desired: &[(K, K::Value)],
    counts: &mut Counts,
) -> Result<(), SyncError> {
    let wanted: BTreeSet<K> = desired.iter().map(|(k, _)| *k).collect();
    for k in current
        .keys()
        .filter(|k| k.slot() == slot && !wanted.contains(k))
    {
        remove(map, name, *k)?;
        counts.deleted += 1;
    }
    for (k, v) in desired {
        if current.get(k) == Some(v) {
            continue;
        }
        map.insert(&k.to_key(), *v, 0)
            .map_err(|source| SyncError::Write { map: name, source })?;
        counts.written += 1;
    }
    Ok(())
}

fn remove<K: LpmEntry>(map: &mut Lpm<'_, K>, name: &'static str, k: K) -> Result<(), SyncError> {
    match map.remove(&k.to_key()) {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(SyncError::Map {
            map: name,
            source: e.into(),
        }),
    }
}

/// Delete every entry of `slot` (live keys re-read so nothing written since is missed).
fn clear_slot<K: LpmEntry>(
    map: &mut Lpm<'_, K>,
    name: &'static str,
    slot: u8,
) -> Result<usize, SyncError> {
    let keys: Vec<K> = read_all::<K>(map, name)?
        .into_keys()
        .filter(|k| k.slot() == slot)
        .collect();
    for k in &keys {
        remove(map, name, *k)?;
    }
    Ok(keys.len())
}

/// The tables of builds before the hash tables (`HOSTS` keyed by the ipcache key, the
/// `POLICY` trie): written only when such an object is loaded as a benchmark baseline.
#[derive(Default)]
struct Legacy {
    hosts: Vec<(IpcacheKey, IpcacheValue)>,
    policy: Vec<(PolicyKey, PolicyValue)>,
}

impl Legacy {
    fn of(plan: &Plan, ipcache: &[(IpcacheKey, IpcacheValue)], slot: u8) -> Legacy {
        Legacy {
            hosts: ipcache
                .iter()
                .filter(|(k, _)| k.is_host())
                .copied()
                .collect(),
            policy: plan
                .policy
                .iter()
                .map(|(k, v)| (k.with_slot(slot), *v))
                .collect(),
        }
    }
}

struct LegacyCurrent {
    hosts: BTreeMap<IpcacheKey, IpcacheValue>,
    policy: BTreeMap<PolicyKey, PolicyValue>,
}

impl Datapath {
    fn lpm<K: LpmEntry>(&mut self, name: &'static str) -> Result<(Lpm<'_, K>, u32), SyncError> {
        let capacity = max_entries(self, name)?;
        let map = self.bpf.map_mut(name).ok_or_else(|| SyncError::Map {
            map: name,
            source: anyhow::anyhow!("missing from the object"),
        })?;
        let lpm: Lpm<'_, K> = LpmTrie::try_from(map).map_err(|e| SyncError::Map {
            map: name,
            source: e.into(),
        })?;
        Ok((lpm, capacity))
    }

    fn hosts(&mut self) -> Result<(Hosts<'_>, u32), SyncError> {
        let capacity = map_capacity(self, "HOSTS")?;
        let map = self.bpf.map_mut("HOSTS").ok_or_else(|| SyncError::Map {
            map: "HOSTS",
            source: anyhow::anyhow!("missing from the object"),
        })?;
        let h = HashMap::try_from(map).map_err(|e| SyncError::Map {
            map: "HOSTS",
            source: e.into(),
        })?;
        Ok((h, capacity))
    }

    /// The `CONFIG` value in force.
    pub fn current_config(&self) -> anyhow::Result<Config> {
        let map = self
            .bpf
            .map("CONFIG")
            .ok_or_else(|| anyhow::anyhow!("CONFIG missing"))?;
        let arr: Array<&MapData, Config> = Array::try_from(map)?;
        Ok(arr.get(&0, 0)?)
    }

    fn write_config(&mut self, c: Config) -> Result<(), SyncError> {
        let map = self.bpf.map_mut("CONFIG").ok_or_else(|| SyncError::Map {
            map: "CONFIG",
            source: anyhow::anyhow!("missing from the object"),
        })?;
        let mut arr: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(|e| SyncError::Map {
                map: "CONFIG",
                source: e.into(),
            })?;
        arr.set(0, c, 0).map_err(|source| SyncError::Write {
            map: "CONFIG",
            source,
        })
    }

    fn config_flags(&self, ready: bool) -> u32 {
        let mut f = 0;
        if ready {
            f |= CFG_READY;
        }
        if self.cfg.fail_closed_unknown {
            f |= CFG_FAIL_CLOSED_UNKNOWN;
        }
        if self.cfg.events_allow {
            f |= CFG_EVENTS_ALLOW;
        }
        if self.cfg.direct_delivery {
            f |= CFG_DIRECT;
        }
        f
    }

    /// Write the configured options (flags, event budget) into `CONFIG`, keeping the live
    /// generation and readiness.
    pub(crate) fn write_options(&mut self) -> anyhow::Result<()> {
        let cur = self.current_config()?;
        let ready = cur.flags & CFG_READY != 0;
        let c = Config {
            slot: Config::slot_of(cur.generation),
            _pad: [0; 3],
            flags: self.config_flags(ready),
            generation: cur.generation,
            events_per_sec: self.cfg.events_per_sec.min(1_000_000),
            events_burst: self.cfg.events_burst,
        };
        self.write_config(c)?;
        Ok(())
    }

    /// Install `plan`: written beside the live Plan, activated atomically, old slot removed.
    /// A map that is too small fails closed: the error is returned, logged and counted
    /// ([`super::Counters::sync_failures`]) and the previous Plan stays in force.
    pub fn apply(&mut self, plan: &Plan) -> Result<SyncReport, SyncError> {
        let r = self.apply_inner(plan);
        if let Err(e) = &r {
            self.sync_failures += 1;
            tracing::error!(error = %e, "map sync failed");
        }
        r
    }

    fn apply_inner(&mut self, plan: &Plan) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let cur = self.current_config().map_err(|e| SyncError::Map {
            map: "CONFIG",
            source: e,
        })?;
        let live_slot = Config::slot_of(cur.generation);
        let live = cur.flags & CFG_READY != 0;
        let generation = cur.generation + 1;
        let slot = Config::slot_of(generation);

        let ipcache: Vec<(IpcacheKey, IpcacheValue)> = plan
            .ipcache
            .iter()
            .map(|(k, v)| (k.with_slot(slot), *v))
            .collect();
        let hashed = self.has_policy_hash();
        let (tables, legacy) = if hashed {
            (HashTables::of(plan, slot)?, Legacy::default())
        } else {
            (HashTables::default(), Legacy::of(plan, &ipcache, slot))
        };

        let svc = ServiceTables::of(plan, slot);

        let mut ip_counts = Counts::default();
        let mut pol_counts = SlotCounts::default();
        let mut svc_counts = ServiceCounts::default();
        {
            // 1. capacity (both slots coexist until the old one is removed).
            let (ip_map, ip_cap) = self.lpm::<IpcacheKey>("IPCACHE")?;
            let ip_cur = read_all::<IpcacheKey>(&ip_map, "IPCACHE")?;
            let live_opt = live.then_some(live_slot);
            let ip_need = live_opt.map_or(0, |s| ip_cur.keys().filter(|k| k.slot == s).count())
                + ipcache.len();
            if ip_need > ip_cap as usize {
                return Err(SyncError::MapFull {
                    map: "IPCACHE",
                    needed: ip_need,
                    capacity: ip_cap,
                });
            }
            let hash_cur = if hashed {
                Some(self.hash_check(&tables, live_opt)?)
            } else {
                None
            };
            let legacy_cur = if hashed {
                None
            } else {
                Some(self.legacy_check(&legacy, live_opt)?)
            };
            let svc_cur = self.services_check(&svc, live_opt)?;

            // 2. the inactive slot becomes exactly the new Plan.
            let res = (|| {
                if let Some(cur) = &hash_cur {
                    self.hash_write(slot, cur, &tables, &mut pol_counts)?;
                }
                if let Some(cur) = &legacy_cur {
                    self.legacy_write(slot, cur, &legacy, &mut pol_counts)?;
                }
                let (mut m, _) = self.lpm::<IpcacheKey>("IPCACHE")?;
                write_slot(&mut m, "IPCACHE", slot, &ip_cur, &ipcache, &mut ip_counts)?;
                self.services_write(slot, &svc_cur, &svc, &mut svc_counts)
            })();
            if let Err(e) = res {
                // Leave the inactive slot empty; the live Plan is untouched.
                if let Ok((mut m, _)) = self.lpm::<IpcacheKey>("IPCACHE") {
                    let _ = clear_slot::<IpcacheKey>(&mut m, "IPCACHE", slot);
                }
                let _ = self.tables_clear(hashed, slot);
                let _ = self.services_clear(slot);
                return Err(e);
            }
        }

        // 3. flip.
        let c = Config {
            slot,
            _pad: [0; 3],
            flags: self.config_flags(true),
            generation,
            events_per_sec: self.cfg.events_per_sec.min(1_000_000),
            events_burst: self.cfg.events_burst,
        };
        self.write_config(c)?;
        self.history
            .lock()
            .expect("plan history lock")
            .push(generation, Arc::new(plan.clone()));

        // 4. the old slot goes.
        let (mut m, _) = self.lpm::<IpcacheKey>("IPCACHE")?;
        ip_counts.deleted += clear_slot::<IpcacheKey>(&mut m, "IPCACHE", live_slot)?;
        pol_counts.deleted += self.tables_clear(hashed, live_slot)?;
        svc_counts.deleted += self.services_clear(live_slot)?;

        Ok(SyncReport {
            generation,
            slot,
            ipcache_written: ip_counts.written,
            ipcache_deleted: ip_counts.deleted,
            policy_written: pol_counts.written,
            policy_deleted: pol_counts.deleted,
            services_written: svc_counts.written,
            services_deleted: svc_counts.deleted,
            duration: start.elapsed(),
        })
    }

    /// Entries of the live slot, for inspection and tests: (ipcache, policy), keys with the
    /// slot byte as stored.
    #[allow(clippy::type_complexity)]
    pub fn live_entries(
        &mut self,
    ) -> anyhow::Result<(
        Vec<(IpcacheKey, IpcacheValue)>,
        Vec<(PolicyKey, PolicyValue)>,
    )> {
        let (ip, pol) = self.all_entries()?;
        let slot = Config::slot_of(self.current_config()?.generation);
        Ok((
            ip.into_iter().filter(|(k, _)| k.slot == slot).collect(),
            pol.into_iter().filter(|(k, _)| k.slot == slot).collect(),
        ))
    }

    /// Every entry of the full-address table (`HOST_TABLE`, both slots), as ipcache keys (an
    /// IPv6 address whose tag another one holds is only in the trie).
    pub fn host_entries(&mut self) -> anyhow::Result<Vec<(IpcacheKey, IpcacheValue)>> {
        if self.has_policy_hash() {
            return Ok(self.hosts_hash_entries()?);
        }
        let (h, _) = self.hosts()?;
        Ok(hosts_read(&h)?.into_iter().collect())
    }

    /// Every entry of both slots.
    #[allow(clippy::type_complexity)]
    pub fn all_entries(
        &mut self,
    ) -> anyhow::Result<(
        Vec<(IpcacheKey, IpcacheValue)>,
        Vec<(PolicyKey, PolicyValue)>,
    )> {
        let (m, _) = self.lpm::<IpcacheKey>("IPCACHE")?;
        let ip = read_all::<IpcacheKey>(&m, "IPCACHE")?.into_iter().collect();
        let pol = if self.has_policy_hash() {
            self.policy_hash_entries()?
        } else {
            let (m, _) = self.lpm::<PolicyKey>("POLICY")?;
            read_all::<PolicyKey>(&m, "POLICY")?.into_iter().collect()
        };
        Ok((ip, pol))
    }

    /// Delete `slot` from whichever lookup tables the object has; returns the number of
    /// policy entries deleted.
    fn tables_clear(&mut self, hashed: bool, slot: u8) -> Result<usize, SyncError> {
        if hashed {
            self.hash_clear(slot)
        } else {
            let (mut h, _) = self.hosts()?;
            hosts_clear_slot(&mut h, slot)?;
            let (mut m, _) = self.lpm::<PolicyKey>("POLICY")?;
            clear_slot::<PolicyKey>(&mut m, "POLICY", slot)
        }
    }

    fn legacy_check(&mut self, l: &Legacy, live: Option<u8>) -> Result<LegacyCurrent, SyncError> {
        let (h_map, h_cap) = self.hosts()?;
        let hosts = hosts_read(&h_map)?;
        let need = live.map_or(0, |s| hosts.keys().filter(|k| k.slot == s).count()) + l.hosts.len();
        if need > h_cap as usize {
            return Err(SyncError::MapFull {
                map: "HOSTS",
                needed: need,
                capacity: h_cap,
            });
        }
        let (pol_map, pol_cap) = self.lpm::<PolicyKey>("POLICY")?;
        let policy = read_all::<PolicyKey>(&pol_map, "POLICY")?;
        let need =
            live.map_or(0, |s| policy.keys().filter(|k| k.slot == s).count()) + l.policy.len();
        if need > pol_cap as usize {
            return Err(SyncError::MapFull {
                map: "POLICY",
                needed: need,
                capacity: pol_cap,
            });
        }
        Ok(LegacyCurrent { hosts, policy })
    }

    fn legacy_write(
        &mut self,
        slot: u8,
        cur: &LegacyCurrent,
        l: &Legacy,
        counts: &mut SlotCounts,
    ) -> Result<(), SyncError> {
        let (mut h, _) = self.hosts()?;
        hosts_write_slot(&mut h, slot, &cur.hosts, &l.hosts)?;
        let (mut m, _) = self.lpm::<PolicyKey>("POLICY")?;
        let mut c = Counts::default();
        write_slot(&mut m, "POLICY", slot, &cur.policy, &l.policy, &mut c)?;
        counts.written += c.written;
        counts.deleted += c.deleted;
        Ok(())
    }
}

fn max_entries(dp: &Datapath, name: &'static str) -> Result<u32, SyncError> {
    map_capacity(dp, name)
}

fn map_capacity(dp: &Datapath, name: &'static str) -> Result<u32, SyncError> {
    let map = dp.bpf.map(name).ok_or_else(|| SyncError::Map {
        map: name,
        source: anyhow::anyhow!("missing"),
    })?;
    let data: &MapData = match map {
        aya::maps::Map::LpmTrie(d) | aya::maps::Map::HashMap(d) => d,
        _ => {
            return Err(SyncError::Map {
                map: name,
                source: anyhow::anyhow!("unexpected map type"),
            })
        }
    };
    let info = data.info().map_err(|e| SyncError::Map {
        map: name,
        source: e.into(),
    })?;
    Ok(info.max_entries())
}
