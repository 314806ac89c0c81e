//! Map sync of the tables derived from a Plan: `POLICY_HASH` (a hash map), `LOCAL_TABLE` and
//! `HOST_TABLE` (arrays laid out in `plan_table`), following the slot protocol of
//! [`super::sync`]: capacity checked first (fail closed), the inactive slot made exactly the
//! new Plan, `CONFIG` flips, the old slot deleted.
//!
//! The Plan keeps its policy entries as longest-prefix keys ([`PolicyKey`]); here each becomes
//! an exact [`PolicyHashKey`], and every local endpoint (the ipcache entries with `EP_LOCAL`)
//! carries, per direction, the prefix lengths its subject class's entries use
//! ([`PolicyLens`]): all the datapath needs to find the longest match with a few hash probes
//! after one lookup of the local address. `HOST_TABLE` mirrors the full-length ipcache entries
//! (pods, Service addresses) so the peer resolves without the trie.
//!
//! Both address tables are keyed by an 8-byte [`AddrKey`] (IPv6 addresses by a 32-bit tag,
//! the full address in the value): an IPv6 address whose tag an earlier address of the same
//! slot already holds is left out, and the datapath finds it in the `IPCACHE` trie instead.
//! Older objects (benchmarked side by side) have hash maps instead: `LOCAL_ADDRS` /
//! `HOST_ADDRS` by [`AddrKey`], or `ENDPOINTS` / `ADDRS` keyed by the full [`HostKey`];
//! [`HostLayout`] tells which one the loaded object has.
use std::collections::BTreeMap;

use netward_common::{
    policy_len_bit, AddrKey, EndpointValue, HostKey, IpcacheKey, IpcacheValue, PolicyHashKey,
    PolicyKey, PolicyLens, PolicyValue, TableKey, Tagged, ANY_PEER, DIR_EGRESS, DIR_INGRESS,
    EP_LOCAL,
};

use super::plan_table::{layout, Mapped, HOST_TABLE, LOCAL_TABLE};
use super::slot_hash::{map_err, SlotCounts};
use super::{Datapath, SyncError};
use crate::plan::Plan;

pub(super) const POLICY_HASH: &str = "POLICY_HASH";
pub(super) const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
pub(super) const HOST_ADDRS: &str = "HOST_ADDRS";
/// The previous layout's tables (full-address keys).
pub(super) const ENDPOINTS: &str = "ENDPOINTS";
pub(super) const ADDRS: &str = "ADDRS";

/// How the loaded object keys its address tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HostLayout {
    /// `LOCAL_TABLE` / `HOST_TABLE`, arrays laid out by the agent (see `plan_table`), by
    /// [`AddrKey`].
    Table,
    /// `LOCAL_ADDRS` / `HOST_ADDRS` hash maps by [`AddrKey`] (the previous build).
    Tagged,
    /// `ENDPOINTS` / `ADDRS` by [`HostKey`] (the build before).
    Full,
}

/// `entries` (sorted by address) as tagged entries: the first address of a tag keeps it, a
/// later one with the same tag is left to the trie.
pub(super) fn tagged<V: Copy>(entries: &[(HostKey, V)]) -> Vec<(AddrKey, Tagged<V>)> {
    let mut out: BTreeMap<AddrKey, Tagged<V>> = BTreeMap::new();
    for (k, v) in entries {
        out.entry(AddrKey::new(k.slot, k.family, &k.addr))
            .or_insert(Tagged {
                addr: k.addr,
                v: *v,
            });
    }
    out.into_iter().collect()
}

/// A Plan's hash tables, in the slot being installed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HashTables {
    pub(super) policy: Vec<(PolicyHashKey, PolicyValue)>,
    pub(super) endpoints: Vec<(HostKey, EndpointValue)>,
    pub(super) addrs: Vec<(HostKey, IpcacheValue)>,
}

fn unpackable(k: &PolicyKey) -> SyncError {
    SyncError::Map {
        map: POLICY_HASH,
        source: anyhow::anyhow!(
            "policy entry {k:?} cannot be packed: prefix length {} (the datapath probes 80 or \
             88..=104) or a class number beyond {}",
            k.prefixlen,
            netward_common::CLASS_LIMIT - 1
        ),
    }
}

fn sorted<K: Ord + Copy, V>(mut v: Vec<(K, V)>) -> Vec<(K, V)> {
    v.sort_by_key(|(k, _)| *k);
    v.dedup_by_key(|(k, _)| *k);
    v
}

impl HashTables {
    pub(super) fn of(plan: &Plan, slot: u8) -> Result<HashTables, SyncError> {
        Self::from_entries(&plan.ipcache, &plan.policy, slot)
    }

    /// From a Plan's ipcache and longest-prefix policy entries (or an older agent's maps).
    pub(super) fn from_entries(
        ipcache: &[(IpcacheKey, IpcacheValue)],
        entries: &[(PolicyKey, PolicyValue)],
        slot: u8,
    ) -> Result<HashTables, SyncError> {
        let mut t = HashTables::default();
        // (dir, subject) -> lengths used.
        let mut lens: BTreeMap<(u8, u32), PolicyLens> = BTreeMap::new();
        for &(mut k, v) in entries {
            k.slot = slot;
            let (Some(hk), Some(bit)) =
                (PolicyHashKey::from_policy(&k), policy_len_bit(k.prefixlen))
            else {
                return Err(unpackable(&k));
            };
            t.policy.push((hk, v));
            let l = lens.entry((k.dir, k.subject_class())).or_default();
            if k.peer_class() == ANY_PEER {
                l.any_lens |= 1 << bit;
            } else {
                l.peer_lens |= 1 << bit;
            }
        }
        for (k, v) in ipcache.iter().filter(|(k, _)| k.is_host()) {
            t.addrs.push((HostKey::new(slot, k.family, k.addr), *v));
            if v.flags & EP_LOCAL == 0 {
                continue;
            }
            let of = |dir: u8| {
                lens.get(&(dir, v.subject_class))
                    .copied()
                    .unwrap_or_default()
            };
            let e = EndpointValue {
                ip: *v,
                lens: [of(DIR_INGRESS), of(DIR_EGRESS)],
            };
            t.endpoints.push((HostKey::new(slot, k.family, k.addr), e));
        }
        Ok(HashTables {
            policy: sorted(t.policy),
            endpoints: sorted(t.endpoints),
            addrs: sorted(t.addrs),
        })
    }
}

/// What the maps held before the write (both slots), for the diff.
pub(super) struct HashCurrent {
    policy: BTreeMap<PolicyHashKey, PolicyValue>,
    hosts: HostsCurrent,
}

enum HostsCurrent {
    /// The address tables are read and written whole per slot: nothing kept.
    Table,
    Tagged {
        endpoints: BTreeMap<AddrKey, Tagged<EndpointValue>>,
        addrs: BTreeMap<AddrKey, Tagged<IpcacheValue>>,
    },
    Full {
        endpoints: BTreeMap<HostKey, EndpointValue>,
        addrs: BTreeMap<HostKey, IpcacheValue>,
    },
}

impl Datapath {
    /// Which address tables the loaded object has (`None`: neither, an object from before
    /// the hash tables, see `sync.rs`).
    pub(super) fn host_layout(&self) -> Option<HostLayout> {
        let has = |m: &str| self.bpf.map(m).is_some();
        if !has(POLICY_HASH) {
            None
        } else if has(LOCAL_TABLE) && has(HOST_TABLE) {
            Some(HostLayout::Table)
        } else if has(LOCAL_ADDRS) && has(HOST_ADDRS) {
            Some(HostLayout::Tagged)
        } else if has(ENDPOINTS) && has(ADDRS) {
            Some(HostLayout::Full)
        } else {
            None
        }
    }

    /// Whether the loaded object has the policy hash tables (an older build benchmarked side
    /// by side has the `POLICY` trie and `HOSTS` instead, see `sync.rs`).
    pub(super) fn has_policy_hash(&self) -> bool {
        self.host_layout().is_some()
    }

    /// Step 1: the live slot (`live`, None before the first Plan) plus the new tables must fit
    /// in every map; nothing is written otherwise.
    pub(super) fn hash_check(
        &mut self,
        t: &HashTables,
        live: Option<u8>,
    ) -> Result<HashCurrent, SyncError> {
        let policy = self.slot_hash_fits(POLICY_HASH, live, t.policy.len())?;
        let hosts = match self.host_layout() {
            Some(HostLayout::Table) => {
                let eps = self.table::<AddrKey, Tagged<EndpointValue>>(LOCAL_TABLE)?;
                fits_table(LOCAL_TABLE, &eps, t.endpoints.len())?;
                let addrs = self.table::<AddrKey, Tagged<IpcacheValue>>(HOST_TABLE)?;
                fits_table(HOST_TABLE, &addrs, t.addrs.len())?;
                HostsCurrent::Table
            }
            Some(HostLayout::Full) => HostsCurrent::Full {
                endpoints: self.slot_hash_fits(ENDPOINTS, live, t.endpoints.len())?,
                addrs: self.slot_hash_fits(ADDRS, live, t.addrs.len())?,
            },
            _ => HostsCurrent::Tagged {
                endpoints: self.slot_hash_fits(LOCAL_ADDRS, live, t.endpoints.len())?,
                addrs: self.slot_hash_fits(HOST_ADDRS, live, t.addrs.len())?,
            },
        };
        Ok(HashCurrent { policy, hosts })
    }

    /// Step 2: make `slot` hold exactly the new tables; `counts` counts policy entries.
    pub(super) fn hash_write(
        &mut self,
        slot: u8,
        cur: &HashCurrent,
        t: &HashTables,
        counts: &mut SlotCounts,
    ) -> Result<(), SyncError> {
        let mut other = SlotCounts::default();
        self.slot_hash_write(POLICY_HASH, slot, &cur.policy, &t.policy, counts)?;
        match &cur.hosts {
            HostsCurrent::Table => {
                self.table_write(HOST_TABLE, slot, &tagged(&t.addrs))?;
                self.table_write(LOCAL_TABLE, slot, &tagged(&t.endpoints))
            }
            HostsCurrent::Tagged { endpoints, addrs } => {
                self.slot_hash_write(HOST_ADDRS, slot, addrs, &tagged(&t.addrs), &mut other)?;
                let eps = tagged(&t.endpoints);
                self.slot_hash_write(LOCAL_ADDRS, slot, endpoints, &eps, &mut other)
            }
            HostsCurrent::Full { endpoints, addrs } => {
                self.slot_hash_write(ADDRS, slot, addrs, &t.addrs, &mut other)?;
                self.slot_hash_write(ENDPOINTS, slot, endpoints, &t.endpoints, &mut other)
            }
        }
    }

    /// Steps 2 (on failure) and 4: delete every entry of `slot` from these maps; returns the
    /// number of policy entries deleted.
    pub(super) fn hash_clear(&mut self, slot: u8) -> Result<usize, SyncError> {
        if self.host_layout() == Some(HostLayout::Table) {
            self.table::<AddrKey, Tagged<EndpointValue>>(LOCAL_TABLE)?
                .clear(slot);
            self.table::<AddrKey, Tagged<IpcacheValue>>(HOST_TABLE)?
                .clear(slot);
        } else if self.host_layout() == Some(HostLayout::Full) {
            self.slot_hash_clear::<HostKey, EndpointValue>(ENDPOINTS, slot)?;
            self.slot_hash_clear::<HostKey, IpcacheValue>(ADDRS, slot)?;
        } else {
            self.slot_hash_clear::<AddrKey, Tagged<EndpointValue>>(LOCAL_ADDRS, slot)?;
            self.slot_hash_clear::<AddrKey, Tagged<IpcacheValue>>(HOST_ADDRS, slot)?;
        }
        self.slot_hash_clear::<PolicyHashKey, PolicyValue>(POLICY_HASH, slot)
    }

    /// Every `POLICY_HASH` entry (both slots) as the Plan's keys.
    pub(super) fn policy_hash_entries(
        &mut self,
    ) -> Result<Vec<(PolicyKey, PolicyValue)>, SyncError> {
        let (all, _) = self.slot_hash_read::<PolicyHashKey, PolicyValue>(POLICY_HASH)?;
        Ok(all.into_iter().map(|(k, v)| (k.to_policy(), v)).collect())
    }

    /// Every address-table entry (both slots) as ipcache keys.
    pub(super) fn hosts_hash_entries(
        &mut self,
    ) -> Result<Vec<(IpcacheKey, IpcacheValue)>, SyncError> {
        match self.host_layout() {
            Some(HostLayout::Full) => self.by_ipcache_key(ADDRS),
            Some(HostLayout::Table) => self.table_by_ipcache_key(HOST_TABLE),
            _ => self.by_tagged_ipcache_key(HOST_ADDRS),
        }
    }

    /// Every local-endpoint entry (both slots) by ipcache key, for inspection and tests.
    pub fn endpoint_entries(&mut self) -> anyhow::Result<Vec<(IpcacheKey, EndpointValue)>> {
        Ok(match self.host_layout() {
            Some(HostLayout::Full) => self.by_ipcache_key(ENDPOINTS)?,
            Some(HostLayout::Table) => self.table_by_ipcache_key(LOCAL_TABLE)?,
            _ => self.by_tagged_ipcache_key(LOCAL_ADDRS)?,
        })
    }

    /// One address table, mapped.
    fn table<K: TableKey, V: Copy>(&self, name: &'static str) -> Result<Mapped<K, V>, SyncError> {
        let map = self
            .bpf
            .map(name)
            .ok_or_else(|| map_err(name, anyhow::anyhow!("missing from the object")))?;
        Mapped::open(map, name)
    }

    /// Every entry of an address table (both slots).
    fn table_all<K: TableKey + Ord, V: Copy>(
        &self,
        name: &'static str,
    ) -> Result<BTreeMap<K, V>, SyncError> {
        let t = self.table::<K, V>(name)?;
        Ok([0, 1].into_iter().flat_map(|s| t.entries(s)).collect())
    }

    /// Step 2 for one address table: `slot` laid out anew with exactly `desired`.
    fn table_write<K, V>(
        &self,
        name: &'static str,
        slot: u8,
        desired: &[(K, V)],
    ) -> Result<(), SyncError>
    where
        K: TableKey + Default + PartialEq,
        V: Copy + Default + PartialEq,
    {
        let mut t = self.table::<K, V>(name)?;
        // The count was checked in step 1 (`fits_table`); placement can still fail.
        let l = layout(desired, t.buckets()).ok_or_else(|| SyncError::SlotFull {
            map: name,
            needed: desired.len(),
            capacity: t.capacity() as u32,
        })?;
        t.write(slot, &l);
        Ok(())
    }

    /// An address table's entries (both slots) under their ipcache keys, sorted.
    fn table_by_ipcache_key<V: Copy>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(IpcacheKey, V)>, SyncError> {
        Ok(tagged_by_ipcache_key(
            self.table_all::<AddrKey, Tagged<V>>(name)?,
        ))
    }

    /// A `HostKey` map's entries (both slots) under their ipcache keys, sorted.
    fn by_ipcache_key<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Vec<(IpcacheKey, V)>, SyncError> {
        let (all, _) = self.slot_hash_read::<HostKey, V>(name)?;
        let mut out: Vec<_> = all.into_iter().map(|(k, v)| (k.to_ipcache(), v)).collect();
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// An `AddrKey` map's entries (both slots) under their ipcache keys, sorted.
    fn by_tagged_ipcache_key<V: Copy>(
        &mut self,
        name: &'static str,
    ) -> Result<Vec<(IpcacheKey, V)>, SyncError>
    where
        Tagged<V>: aya::Pod,
    {
        let (all, _) = self.slot_hash_read::<AddrKey, Tagged<V>>(name)?;
        Ok(tagged_by_ipcache_key(all))
    }
}

/// Tagged address entries under their ipcache keys, sorted.
fn tagged_by_ipcache_key<V: Copy>(all: BTreeMap<AddrKey, Tagged<V>>) -> Vec<(IpcacheKey, V)> {
    let mut out: Vec<_> = all
        .into_iter()
        .map(|(k, t)| (HostKey::new(k.slot, k.family, t.addr).to_ipcache(), t.v))
        .collect();
    out.sort_by_key(|(k, _)| *k);
    out
}

/// Step 1 for an address table: a slot holds at most its capacity (the other slot has its own
/// half, so the Plan in force does not count).
fn fits_table<K: TableKey, V: Copy>(
    map: &'static str,
    t: &Mapped<K, V>,
    new: usize,
) -> Result<(), SyncError> {
    if new > t.capacity() {
        return Err(SyncError::SlotFull {
            map,
            needed: new,
            capacity: t.capacity() as u32,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netward_common::{
        DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_INGRESS, POLICY_PREFIX_ANY_PORT,
        POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
    };

    fn e(len: u32, dir: u8, subject: u32, peer: u32, port: u16) -> (PolicyKey, PolicyValue) {
        (
            PolicyKey::new(len, 0, dir, subject, peer, 6, port),
            PolicyValue {
                policy: 1,
                rule: 0,
                flags: 0,
            },
        )
    }

    fn ip(addr: [u8; 4], prefix: u8, flags: u32, subject: u32) -> (IpcacheKey, IpcacheValue) {
        (
            IpcacheKey::v4(0, addr, prefix),
            IpcacheValue {
                peer_class: 5,
                subject_class: subject,
                flags,
                endpoint: 1,
            },
        )
    }

    #[test]
    fn endpoints_carry_the_lengths_their_subject_uses_per_peer_kind() {
        let ipcache = [
            ip([10, 0, 0, 1], 32, EP_LOCAL | EP_ISOLATED_INGRESS, 3),
            ip([10, 0, 0, 2], 32, 0, 0), // a remote pod: not an endpoint
            ip([10, 1, 0, 0], 16, 0, 0), // a CIDR piece
            ip([10, 0, 0, 3], 32, EP_LOCAL, 0), // local, selected by nothing
        ];
        let t = HashTables::from_entries(
            &ipcache,
            &[
                e(POLICY_PREFIX_FULL, DIR_INGRESS, 3, 7, 80),
                e(POLICY_PREFIX_FULL - 3, DIR_INGRESS, 3, 7, 8080),
                e(POLICY_PREFIX_ANY_PROTO, DIR_INGRESS, 3, ANY_PEER, 0),
                e(POLICY_PREFIX_ANY_PORT, DIR_EGRESS, 3, 9, 0),
            ],
            1,
        )
        .unwrap();
        assert_eq!(t.policy.len(), 4);
        assert!(t.policy.iter().all(|(k, _)| k.slot() == 1));
        assert_eq!(t.endpoints.len(), 2);
        assert_eq!(t.addrs.len(), 3, "every full-length entry, local or not");
        let (k, v) = t.endpoints[0];
        assert_eq!((k.slot, &k.addr[..4]), (1, &[10, 0, 0, 1][..]));
        assert_eq!(v.ip, ipcache[0].1);
        assert_eq!(
            v.lens[DIR_INGRESS as usize],
            PolicyLens {
                peer_lens: (1 << 17) | (1 << 14),
                any_lens: 1,
            }
        );
        assert_eq!(
            v.lens[DIR_EGRESS as usize],
            PolicyLens {
                peer_lens: 1 << 1,
                any_lens: 0,
            }
        );
        assert_eq!(t.endpoints[1].1.lens, [PolicyLens::default(); 2]);
        // A range block keeps only its prefix of the port.
        let k = t
            .policy
            .iter()
            .find(|(k, _)| k.to_policy().prefixlen == POLICY_PREFIX_FULL - 3)
            .unwrap()
            .0;
        assert_eq!(k.port, 8080 & !7);
        assert_eq!(k.to_policy().prefixlen, POLICY_PREFIX_FULL - 3);
    }

    #[test]
    fn a_tag_goes_to_the_first_address_that_has_it() {
        let host = |a: [u8; 16]| HostKey::new(0, netward_common::FAMILY_V6, a);
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 1;
        let twin = netward_common::tag_twin(&a, 3);
        let (x, y) = if a < twin { (a, twin) } else { (twin, a) };
        let mut z = a;
        z[15] = 2;
        let (x, y, z) = (host(x), host(y), host(z));
        assert_eq!(
            AddrKey::new(0, x.family, &x.addr),
            AddrKey::new(0, y.family, &y.addr)
        );
        let t = tagged(&[(x, 10u32), (y, 11), (z, 12)]);
        assert_eq!(t.len(), 2);
        let by_addr: Vec<([u8; 16], u32)> = t.iter().map(|(_, v)| (v.addr, v.v)).collect();
        assert!(by_addr.contains(&(x.addr, 10)) && by_addr.contains(&(z.addr, 12)));
        assert!(
            !by_addr.iter().any(|(a, _)| *a == y.addr),
            "y is left to the trie"
        );
    }

    #[test]
    fn a_length_the_datapath_cannot_probe_is_an_error() {
        let err = HashTables::from_entries(&[], &[e(84, DIR_INGRESS, 1, 2, 0)], 0).unwrap_err();
        assert!(err.to_string().contains("prefix length 84"), "{err}");
        let big = e(
            POLICY_PREFIX_FULL,
            DIR_INGRESS,
            netward_common::CLASS_LIMIT,
            2,
            80,
        );
        assert!(HashTables::from_entries(&[], &[big], 0).is_err());
    }
}
