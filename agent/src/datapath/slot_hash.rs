//! Hash maps whose keys carry the Plan slot byte (`POLICY_HASH`, `SERVICES`, `SERVICE_POLICY`,
//! and the address tables of older objects, `LOCAL_ADDRS` / `HOST_ADDRS`): read, capacity check, diff one slot to a desired set, clear a slot.
//! The slot protocol itself (check, write inactive slot, flip, clear old slot) is in `sync.rs`.
use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, Map, MapData, MapError};
use netward_common::{AddrKey, HostKey, PolicyHashKey, ServiceKey, ServicePolicyKey};

use super::{Datapath, SyncError};

/// A hash map key carrying a slot byte.
pub(super) trait SlotKey: aya::Pod + Ord {
    fn slot(&self) -> u8;
    fn with_slot(self, slot: u8) -> Self;
}

/// Keys whose slot is a plain `slot: u8` field.
macro_rules! slot_field {
    ($($t:ty),*) => {$(
        impl SlotKey for $t {
            fn slot(&self) -> u8 {
                self.slot
            }
            fn with_slot(mut self, slot: u8) -> Self {
                self.slot = slot;
                self
            }
        }
    )*};
}

slot_field!(ServiceKey, ServicePolicyKey, HostKey, AddrKey);

/// Packed with the subject class (see `PolicyHashKey::subject_word`).
impl SlotKey for PolicyHashKey {
    fn slot(&self) -> u8 {
        PolicyHashKey::slot(self)
    }
    fn with_slot(self, slot: u8) -> Self {
        PolicyHashKey::with_slot(self, slot)
    }
}

/// Entries written and deleted.
#[derive(Default)]
pub(super) struct SlotCounts {
    pub written: usize,
    pub deleted: usize,
}

pub(super) type Hash<'a, K, V> = HashMap<&'a mut MapData, K, V>;

pub(super) fn map_err(map: &'static str, e: impl Into<anyhow::Error>) -> SyncError {
    SyncError::Map {
        map,
        source: e.into(),
    }
}

pub(super) fn in_slot<K: SlotKey, V: Copy>(entries: &[(K, V)], slot: u8) -> Vec<(K, V)> {
    entries
        .iter()
        .map(|(k, v)| (k.with_slot(slot), *v))
        .collect()
}

impl Datapath {
    /// One slot-keyed hash map of the object and its capacity.
    pub(super) fn slot_hash<K: SlotKey, V: aya::Pod>(
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

    /// Everything in the map (both slots) and its capacity.
    pub(super) fn slot_hash_read<K: SlotKey, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<(BTreeMap<K, V>, u32), SyncError> {
        let (h, capacity) = self.slot_hash::<K, V>(name)?;
        let all = h
            .iter()
            .collect::<Result<BTreeMap<K, V>, MapError>>()
            .map_err(|e| map_err(name, e))?;
        Ok((all, capacity))
    }

    /// Step 1 for one map: everything it holds, after checking that its live slot (`live`,
    /// None before the first Plan) plus `new` entries fit.
    pub(super) fn slot_hash_fits<K: SlotKey, V: aya::Pod>(
        &mut self,
        name: &'static str,
        live: Option<u8>,
        new: usize,
    ) -> Result<BTreeMap<K, V>, SyncError> {
        let (cur, cap) = self.slot_hash_read::<K, V>(name)?;
        fits(name, &cur, live, new, cap)?;
        Ok(cur)
    }

    /// Step 2 for one map: `slot` becomes exactly `desired`, diffed against `cur`.
    pub(super) fn slot_hash_write<K: SlotKey, V: aya::Pod + PartialEq>(
        &mut self,
        name: &'static str,
        slot: u8,
        cur: &BTreeMap<K, V>,
        desired: &[(K, V)],
        counts: &mut SlotCounts,
    ) -> Result<(), SyncError> {
        let (mut h, _) = self.slot_hash::<K, V>(name)?;
        write_slot(&mut h, name, slot, cur, desired, counts)
    }

    /// Steps 2 (on failure) and 4 for one map: delete every entry of `slot`; returns how many.
    pub(super) fn slot_hash_clear<K: SlotKey, V: aya::Pod>(
        &mut self,
        name: &'static str,
        slot: u8,
    ) -> Result<usize, SyncError> {
        let (all, _) = self.slot_hash_read::<K, V>(name)?;
        let (mut h, _) = self.slot_hash::<K, V>(name)?;
        clear_slot(&mut h, name, slot, all.keys())
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
    counts: &mut SlotCounts,
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
