//! Map sync of the Service maps, `SERVICES` and `SERVICE_POLICY` (hash maps whose keys carry
//! the slot byte), following the protocol of [`super::sync`] step by step: the capacity of the
//! live slot plus the new Plan is checked before anything is written (fail closed), the
//! inactive slot is diffed to exactly the new Plan, `CONFIG` flips, the old slot is deleted.
//!
//! Kept apart from `sync.rs`, which only calls the steps below; the slot-keyed hash map
//! machinery is shared with the policy maps (`slot_hash.rs`).
use std::collections::BTreeMap;

use netward_common::{PolicyValue, ServiceKey, ServicePolicyKey, ServiceValue};

use super::slot_hash::{in_slot, SlotCounts};
use super::{Datapath, SyncError};
use crate::plan::Plan;

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

/// What both maps held before the write (both slots), for the diff; None: the loaded object
/// has no Service maps (an older build, benchmarks) and the Plan has no Services.
pub(super) struct ServiceCurrent(Option<ServiceMaps>);

struct ServiceMaps {
    services: BTreeMap<ServiceKey, ServiceValue>,
    policy: BTreeMap<ServicePolicyKey, PolicyValue>,
}

/// Entries written and deleted in both Service maps.
pub(super) type ServiceCounts = SlotCounts;

impl Datapath {
    /// Whether the loaded object has the Service maps (every build since they exist does).
    fn has_service_maps(&self) -> bool {
        self.bpf.map(SERVICES).is_some() && self.bpf.map(SERVICE_POLICY).is_some()
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
        let services = self.slot_hash_fits(SERVICES, live, t.services.len())?;
        let policy = self.slot_hash_fits(SERVICE_POLICY, live, t.policy.len())?;
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
        self.slot_hash_write(SERVICES, slot, &cur.services, &t.services, counts)?;
        self.slot_hash_write(SERVICE_POLICY, slot, &cur.policy, &t.policy, counts)
    }

    /// Steps 2 (on failure) and 4: delete every entry of `slot` from both maps.
    pub(super) fn services_clear(&mut self, slot: u8) -> Result<usize, SyncError> {
        if !self.has_service_maps() {
            return Ok(0);
        }
        Ok(
            self.slot_hash_clear::<ServiceKey, ServiceValue>(SERVICES, slot)?
                + self.slot_hash_clear::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY, slot)?,
        )
    }

    /// Every entry of both Service maps (both slots, keys as stored), for inspection and tests.
    #[allow(clippy::type_complexity)]
    pub fn service_entries(
        &mut self,
    ) -> anyhow::Result<(
        Vec<(ServiceKey, ServiceValue)>,
        Vec<(ServicePolicyKey, PolicyValue)>,
    )> {
        let (s, _) = self.slot_hash_read::<ServiceKey, ServiceValue>(SERVICES)?;
        let (p, _) = self.slot_hash_read::<ServicePolicyKey, PolicyValue>(SERVICE_POLICY)?;
        Ok((s.into_iter().collect(), p.into_iter().collect()))
    }
}
