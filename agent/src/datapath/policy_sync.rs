//! Map sync of the policy maps, `POLICY_HASH` and `ENDPOINTS`, following the slot protocol of
//! [`super::sync`]: capacity checked first (fail closed), the inactive slot diffed to exactly
//! the new Plan, `CONFIG` flips, the old slot deleted.
//!
//! The Plan keeps its policy entries as longest-prefix keys ([`PolicyKey`]); here each becomes
//! an exact [`PolicyHashKey`], and every local endpoint (the ipcache entries with `EP_LOCAL`)
//! carries, per direction, the prefix lengths its subject class's entries use
//! ([`PolicyLens`]): all the datapath needs to find the longest match with a few hash probes
//! after one lookup of the local address.
use std::collections::BTreeMap;

use netward_common::{
    policy_len_bit, EndpointKey, EndpointValue, IpcacheKey, IpcacheValue, PolicyHashKey, PolicyKey,
    PolicyLens, PolicyValue, ANY_PEER, EP_LOCAL, FAMILY_V4,
};

use super::slot_hash::{clear_slot, fits, write_slot, SlotCounts};
use super::{Datapath, SyncError};
use crate::plan::Plan;

pub(super) const POLICY_HASH: &str = "POLICY_HASH";
pub(super) const ENDPOINTS: &str = "ENDPOINTS";

/// A Plan's policy entries and local endpoints as the datapath's hash tables, in the slot
/// being installed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PolicyTables {
    pub(super) policy: Vec<(PolicyHashKey, PolicyValue)>,
    pub(super) endpoints: Vec<(EndpointKey, EndpointValue)>,
}

fn unprobeable(k: &PolicyKey) -> SyncError {
    SyncError::Map {
        map: POLICY_HASH,
        source: anyhow::anyhow!(
            "policy entry {k:?} has prefix length {}, which the datapath cannot probe \
             (80 or 88..=104)",
            k.prefixlen
        ),
    }
}

impl PolicyTables {
    pub(super) fn of(plan: &Plan, slot: u8) -> Result<PolicyTables, SyncError> {
        Self::from_entries(&plan.ipcache, &plan.policy, slot)
    }

    /// From a Plan's ipcache and longest-prefix policy entries (or an older agent's maps).
    pub(super) fn from_entries(
        ipcache: &[(IpcacheKey, IpcacheValue)],
        entries: &[(PolicyKey, PolicyValue)],
        slot: u8,
    ) -> Result<PolicyTables, SyncError> {
        let mut policy = Vec::with_capacity(entries.len());
        // (dir, subject) -> lengths used.
        let mut lens: BTreeMap<(u8, u32), PolicyLens> = BTreeMap::new();
        for &(mut k, v) in entries {
            k.slot = slot;
            let (Some(hk), Some(bit)) =
                (PolicyHashKey::from_policy(&k), policy_len_bit(k.prefixlen))
            else {
                return Err(unprobeable(&k));
            };
            policy.push((hk, v));
            let l = lens.entry((k.dir, k.subject_class())).or_default();
            if k.peer_class() == ANY_PEER {
                l.any_lens |= 1 << bit;
            } else {
                l.peer_lens |= 1 << bit;
            }
        }
        policy.sort_unstable_by_key(|(k, _)| *k);
        policy.dedup_by_key(|(k, _)| *k);
        let full = |k: &IpcacheKey| k.addr_prefix() == if k.family == FAMILY_V4 { 32 } else { 128 };
        let mut endpoints: Vec<(EndpointKey, EndpointValue)> = ipcache
            .iter()
            .filter(|(k, v)| v.flags & EP_LOCAL != 0 && full(k))
            .map(|(k, v)| {
                let of = |dir: u8| {
                    lens.get(&(dir, v.subject_class))
                        .copied()
                        .unwrap_or_default()
                };
                (
                    EndpointKey {
                        slot,
                        family: k.family,
                        _pad: [0; 2],
                        addr: k.addr,
                    },
                    EndpointValue {
                        ip: *v,
                        lens: [of(0), of(1)],
                    },
                )
            })
            .collect();
        endpoints.sort_unstable_by_key(|(k, _)| *k);
        endpoints.dedup_by_key(|(k, _)| *k);
        Ok(PolicyTables { policy, endpoints })
    }
}

/// What both maps held before the write (both slots), for the diff.
pub(super) struct PolicyCurrent {
    policy: BTreeMap<PolicyHashKey, PolicyValue>,
    endpoints: BTreeMap<EndpointKey, EndpointValue>,
}

impl Datapath {
    /// Whether the loaded object has the policy hash maps (an older build benchmarked side by
    /// side has the `POLICY` trie instead, see `sync.rs`).
    pub(super) fn has_policy_hash(&self) -> bool {
        self.bpf.map(POLICY_HASH).is_some() && self.bpf.map(ENDPOINTS).is_some()
    }

    /// Step 1: the live slot (`live`, None before the first Plan) plus the new tables must fit.
    pub(super) fn policy_check(
        &mut self,
        t: &PolicyTables,
        live: Option<u8>,
    ) -> Result<PolicyCurrent, SyncError> {
        let (policy, cap) = self.slot_hash_read::<PolicyHashKey, PolicyValue>(POLICY_HASH)?;
        fits(POLICY_HASH, &policy, live, t.policy.len(), cap)?;
        let (endpoints, cap) = self.slot_hash_read::<EndpointKey, EndpointValue>(ENDPOINTS)?;
        fits(ENDPOINTS, &endpoints, live, t.endpoints.len(), cap)?;
        Ok(PolicyCurrent { policy, endpoints })
    }

    /// Step 2: make `slot` hold exactly the new tables.
    pub(super) fn policy_write(
        &mut self,
        slot: u8,
        cur: &PolicyCurrent,
        t: &PolicyTables,
        counts: &mut SlotCounts,
    ) -> Result<(), SyncError> {
        let (mut h, _) = self.slot_hash::<PolicyHashKey, PolicyValue>(POLICY_HASH)?;
        write_slot(&mut h, POLICY_HASH, slot, &cur.policy, &t.policy, counts)?;
        let (mut h, _) = self.slot_hash::<EndpointKey, EndpointValue>(ENDPOINTS)?;
        let mut endpoint_counts = SlotCounts::default();
        write_slot(
            &mut h,
            ENDPOINTS,
            slot,
            &cur.endpoints,
            &t.endpoints,
            &mut endpoint_counts,
        )
    }

    /// Steps 2 (on failure) and 4: delete every entry of `slot` from both maps; returns the
    /// number of policy entries deleted.
    pub(super) fn policy_clear(&mut self, slot: u8) -> Result<usize, SyncError> {
        let (all, _) = self.slot_hash_read::<EndpointKey, EndpointValue>(ENDPOINTS)?;
        let (mut h, _) = self.slot_hash::<EndpointKey, EndpointValue>(ENDPOINTS)?;
        clear_slot(&mut h, ENDPOINTS, slot, all.keys())?;
        let (all, _) = self.slot_hash_read::<PolicyHashKey, PolicyValue>(POLICY_HASH)?;
        let (mut h, _) = self.slot_hash::<PolicyHashKey, PolicyValue>(POLICY_HASH)?;
        clear_slot(&mut h, POLICY_HASH, slot, all.keys())
    }

    /// Every `POLICY_HASH` entry (both slots) as the Plan's keys.
    pub(super) fn policy_hash_entries(
        &mut self,
    ) -> Result<Vec<(PolicyKey, PolicyValue)>, SyncError> {
        let (all, _) = self.slot_hash_read::<PolicyHashKey, PolicyValue>(POLICY_HASH)?;
        Ok(all.into_iter().map(|(k, v)| (k.to_policy(), v)).collect())
    }

    /// Every `ENDPOINTS` entry (both slots), for inspection and tests.
    pub fn endpoint_entries(&mut self) -> anyhow::Result<Vec<(EndpointKey, EndpointValue)>> {
        let (all, _) = self.slot_hash_read::<EndpointKey, EndpointValue>(ENDPOINTS)?;
        Ok(all.into_iter().collect())
    }
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
        let t = PolicyTables::from_entries(
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
        assert!(t.policy.iter().all(|(k, _)| k.slot == 1));
        assert_eq!(t.endpoints.len(), 2);
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
            .find(|(k, _)| k.len as u32 == POLICY_PREFIX_FULL - 3)
            .unwrap()
            .0;
        assert_eq!(k.port, 8080 & !7);
        assert_eq!(k.to_policy().prefixlen, POLICY_PREFIX_FULL - 3);
    }

    #[test]
    fn a_length_the_datapath_cannot_probe_is_an_error() {
        let err = PolicyTables::from_entries(&[], &[e(84, DIR_INGRESS, 1, 2, 0)], 0).unwrap_err();
        assert!(err.to_string().contains("prefix length 84"), "{err}");
    }
}
