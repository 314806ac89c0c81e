//! Map sync of the Service maps, `SERVICES` and `SERVICE_POLICY` (hash maps whose keys carry
//! the slot byte), following the protocol of [`super::sync`] step by step: the capacity of the
//! live slot plus the new Plan is checked before anything is written (fail closed), the
//! inactive slot is diffed to exactly the new Plan, `CONFIG` flips, the old slot is deleted.
//!
//! Kept apart from `sync.rs` so the generic LPM/`HOSTS` machinery there and these two maps
//! evolve independently; `sync.rs` only calls the four steps below.
use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, Map, MapData, MapError};
use netward_common::{PolicyValue, ServiceKey, ServicePolicyKey, ServiceValue};

use super::{Datapath, SyncError};
use crate::plan::Plan;

/// A hash map key carrying a slot byte.
trait SlotKey: aya::Pod + Ord {
    fn slot(&self) -> u8;
    fn with_slot(self, slot: u8) -> Self;
}

impl SlotKey for ServiceKey {
    fn slot(&self) -> u8 {
        self.slot
    }
    fn with_slot(mut self, slot: u8) -> Self {
        self.slot = slot;
        self
    }
}

impl SlotKey for ServicePolicyKey {
    fn slot(&self) -> u8 {
        self.slot
    }
    fn with_slot(mut self, slot: u8) -> Self {
        self.slot = slot;
        self
    }
}

const SERVICES: &str = "SERVICES";
const SERVICE_POLICY: &str = "SERVICE_POLICY";

/// A Plan's Service tables, rewritten into the slot being installed.
pub(super) struct ServiceTables {
    services: Vec<(ServiceKey, ServiceValue)>,
    policy: Vec<(ServicePolicyKey, PolicyValue)>,
}

impl ServiceTables {
    pub(super) fn of(plan: &Plan, slot: u8) -> ServiceTables {
        ServiceTables {
            services: in_slot(&plan.services, slot),
            policy: in_slot(&plan.service_policy, slot),
        }
    }
}

fn in_slot<K: SlotKey, V: Copy>(entries: &[(K, V)], slot: u8) -> Vec<(K, V)> {
    entries
        .iter()
        .map(|(k, v)| (k.with_slot(slot), *v))
        .collect()
}

/// What both maps held before the write (both slots), for the diff; None: the loaded object
/// has no Service maps (an older build, benchmarks) and the Plan has no Services.
pub(super) struct ServiceCurrent(Option<ServiceMaps>);

struct ServiceMaps {
    services: BTreeMap<ServiceKey, ServiceValue>,
    policy: BTreeMap<ServicePolicyKey, PolicyValue>,
}

/// Entries written and deleted in both Service maps.
#[derive(Default)]
pub(super) struct ServiceCounts {
    pub written: usize,
    pub deleted: usize,
}

type Hash<'a, K, V> = HashMap<&'a mut MapData, K, V>;

fn map_err(map: &'static str, e: impl Into<anyhow::Error>) -> SyncError {
    SyncError::Map {
        map,
        source: e.into(),
    }
}

impl Datapath {
    /// Whether the loaded object has the Service maps (every build since they exist does).
    fn has_service_maps(&self) -> bool {
        self.bpf.map(SERVICES).is_some() && self.bpf.map(SERVICE_POLICY).is_some()
    }

    /// One of the Service hash maps and its capacity.
    fn service_map<K: SlotKey, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<(Hash<'_, K, V>, u32), SyncError> {
        let map = self
            .bpf
            .map_mut(name)
            .ok_or_else(|| map_err(name, anyhow::anyhow!("missing from the object")))?;
        let capacity = match &*map {
            Map::HashMap(d) => d.info().map_err(|e| map_err(name, e))?.max_entries(),
            _ => return Err(map_err(name, anyhow::anyhow!("not a hash map"))),
        };
        let h = HashMap::try_from(map).map_err(|e| map_err(name, e))?;
        Ok((h, capacity))
    }

    fn service_read<K: SlotKey, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<(BTreeMap<K, V>, u32), SyncError> {
        let (h, capacity) = self.service_map::<K, V>(name)?;
        let all = h
            .iter()
            .collect::<Result<BTreeMap<K, V>, MapError>>()
            .map_err(|e| map_err(name, e))?;
        Ok((all, capacity))
    }

    /// Step 1: the live slot (`live`, None before the first Plan) plus the new tables must fit
    /// in each map; nothing is written otherwise. Returns what the maps hold now.
    pub(super) fn services_check(
        &mut self,
        t: &ServiceTables,
        live: Option<u8>,
    ) -> Result<ServiceCurrent, SyncError> {
        if !self.has_service_maps() && t.services.is_empty() && t.policy.is_empty() {
            return Ok(ServiceCurrent(None));
        }
        let (services, cap) = self.service_read::<ServiceKey, ServiceValue>(SERVICES)?;
        fits(SERVICES, &services, live, t.services.len(), cap)?;
        let (policy, cap) = self.service_read::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY)?;
        fits(SERVICE_POLICY, &policy, live, t.policy.len(), cap)?;
        Ok(ServiceCurrent(Some(ServiceMaps { services, policy })))
    }

    /// Step 2: make `slot` hold exactly the new tables.
    pub(super) fn services_write(
        &mut self,
        slot: u8,
        cur: &ServiceCurrent,
        t: &ServiceTables,
        counts: &mut ServiceCounts,
    ) -> Result<(), SyncError> {
        let Some(cur) = &cur.0 else { return Ok(()) };
        let (mut h, _) = self.service_map::<ServiceKey, ServiceValue>(SERVICES)?;
        write_slot(&mut h, SERVICES, slot, &cur.services, &t.services, counts)?;
        let (mut h, _) = self.service_map::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY)?;
        write_slot(&mut h, SERVICE_POLICY, slot, &cur.policy, &t.policy, counts)
    }

    /// Steps 2 (on failure) and 4: delete every entry of `slot` from both maps.
    pub(super) fn services_clear(&mut self, slot: u8) -> Result<usize, SyncError> {
        if !self.has_service_maps() {
            return Ok(0);
        }
        let (all, _) = self.service_read::<ServiceKey, ServiceValue>(SERVICES)?;
        let (mut h, _) = self.service_map::<ServiceKey, ServiceValue>(SERVICES)?;
        let mut n = clear_slot(&mut h, SERVICES, slot, all.keys())?;
        let (all, _) = self.service_read::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY)?;
        let (mut h, _) = self.service_map::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY)?;
        n += clear_slot(&mut h, SERVICE_POLICY, slot, all.keys())?;
        Ok(n)
    }

    /// Every entry of both Service maps (both slots, keys as stored), for inspection and tests.
    #[allow(clippy::type_complexity)]
    pub fn service_entries(
        &mut self,
    ) -> anyhow::Result<(
        Vec<(ServiceKey, ServiceValue)>,
        Vec<(ServicePolicyKey, PolicyValue)>,
    )> {
        let (s, _) = self.service_read::<ServiceKey, ServiceValue>(SERVICES)?;
        let (p, _) = self.service_read::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY)?;
        Ok((s.into_iter().collect(), p.into_iter().collect()))
    }
}

fn fits<K: SlotKey, V>(
    map: &'static str,
    cur: &BTreeMap<K, V>,
    live: Option<u8>,
    new: usize,
    capacity: u32,
) -> Result<(), SyncError> {
    let kept = live.map_or(0, |s| cur.keys().filter(|k| k.slot() == s).count());
    let needed = kept + new;
    if needed > capacity as usize {
        return Err(SyncError::MapFull {
            map,
            needed,
            capacity,
        });
    }
    Ok(())
}

fn remove<K: SlotKey, V: aya::Pod>(
    h: &mut Hash<'_, K, V>,
    map: &'static str,
    k: &K,
) -> Result<(), SyncError> {
    match h.remove(k) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(map, e)),
    }
}

fn write_slot<K: SlotKey, V: aya::Pod + PartialEq>(
    h: &mut Hash<'_, K, V>,
    map: &'static str,
    slot: u8,
    cur: &BTreeMap<K, V>,
    desired: &[(K, V)],
    counts: &mut ServiceCounts,
) -> Result<(), SyncError> {
    let wanted: BTreeSet<K> = desired.iter().map(|(k, _)| *k).collect();
    for k in cur
        .keys()
        .filter(|k| k.slot() == slot && !wanted.contains(k))
    {
        remove(h, map, k)?;
        counts.deleted += 1;
    }
    for (k, v) in desired {
        if cur.get(k) != Some(v) {
            h.insert(k, v, 0)
                .map_err(|source| SyncError::Write { map, source })?;
            counts.written += 1;
        }
    }
    Ok(())
}

fn clear_slot<'k, K: SlotKey + 'k, V: aya::Pod>(
    h: &mut Hash<'_, K, V>,
    map: &'static str,
    slot: u8,
    keys: impl Iterator<Item = &'k K>,
) -> Result<usize, SyncError> {
    let mut n = 0;
    for k in keys.filter(|k| k.slot() == slot) {
        remove(h, map, k)?;
        n += 1;
    }
    Ok(n)
}
