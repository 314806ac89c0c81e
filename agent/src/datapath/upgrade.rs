//! Upgrading over the pins of an older agent whose maps had another layout.
//!
//! * Builds before the hash tables kept the policy in a `POLICY` trie and the full-length
//!   ipcache entries in `HOSTS`.
//! * The build after them keyed its address tables (`ENDPOINTS`, `ADDRS`) by the full
//!   20-byte address, the next one (`LOCAL_ADDRS` / `HOST_ADDRS`) by an 8-byte tag; this
//!   one has `LOCAL_TABLE` / `HOST_TABLE`, arrays it lays out itself (see `plan_table`). All
//!   of them keep the policy in `POLICY_HASH`.
//!
//! A new agent that finds such pins (and a Plan in force) fills the live slot of its own
//! tables from the pinned `IPCACHE` and the policy (`POLICY` trie or `POLICY_HASH`) *before*
//! its programs replace the old ones in the pinned links, so enforcement continues with the
//! same Plan and no window; the old pins are removed once no program uses them. (Even with
//! empty address tables the programs decide exactly, through the `IPCACHE` trie; the rebuild
//! gives them their one-lookup path back at once.)
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use netward_common::{Config, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, CFG_READY};

use super::hash_sync::{HashTables, HostLayout};
use super::slot_hash::SlotCounts;
use super::Datapath;

/// Pins of older builds that this one no longer uses.
const OLD_PINS: &[&str] = &[
    "POLICY",
    "HOSTS",
    "ENDPOINTS",
    "ADDRS",
    "LOCAL_ADDRS",
    "HOST_ADDRS",
];

impl Datapath {
    fn old_pin(&self, name: &str) -> PathBuf {
        self.cfg.bpffs_dir.join(name)
    }

    /// Before the programs are swapped: fill the new tables' live slot from an older agent's
    /// pins (`POLICY` trie, or older address tables) when ours lack it. Returns whether
    /// anything was migrated.
    pub(super) fn upgrade_tables(&mut self) -> Result<bool> {
        let old_policy = self.old_pin("POLICY");
        let from_trie = old_policy.exists();
        let from_hash_tables =
            self.old_pin("ENDPOINTS").exists() || self.old_pin("LOCAL_ADDRS").exists();
        if !(from_trie || from_hash_tables) || self.host_layout() != Some(HostLayout::Table) {
            return Ok(false);
        }
        let cfg: Config = self.current_config()?;
        if cfg.flags & CFG_READY == 0 {
            return Ok(false);
        }
        let slot = Config::slot_of(cfg.generation);
        let (ip, pol) = self.all_entries()?;
        let in_hash: Vec<(PolicyKey, PolicyValue)> =
            pol.into_iter().filter(|(k, _)| k.slot == slot).collect();
        let live_endpoints = self
            .endpoint_entries()?
            .iter()
            .filter(|(k, _)| k.slot == slot)
            .count();
        if !in_hash.is_empty() && live_endpoints > 0 {
            return Ok(false); // already ours
        }
        let policy = if !in_hash.is_empty() {
            in_hash
        } else if from_trie {
            Self::read_old_trie(&old_policy, slot)?
        } else {
            return Ok(false); // an empty Plan: nothing to carry
        };
        let ipcache: Vec<(IpcacheKey, IpcacheValue)> =
            ip.into_iter().filter(|(k, _)| k.slot == slot).collect();
        let tables = HashTables::from_entries(&ipcache, &policy, slot)?;
        let cur = self.hash_check(&tables, None)?;
        let mut counts = SlotCounts::default();
        self.hash_write(slot, &cur, &tables, &mut counts)?;
        tracing::info!(
            generation = cfg.generation,
            policy_entries = policy.len(),
            "rebuilt the Plan in force into the address tables (upgrade from an older agent)"
        );
        Ok(true)
    }

    /// The `slot` entries of an older agent's `POLICY` trie.
    fn read_old_trie(pin: &Path, slot: u8) -> Result<Vec<(PolicyKey, PolicyValue)>> {
        let data = MapData::from_pin(pin)
            .with_context(|| format!("open the older agent's {}", pin.display()))?;
        let trie: LpmTrie<MapData, [u8; PolicyKey::DATA_LEN], PolicyValue> =
            LpmTrie::try_from(Map::LpmTrie(data)).context("the older POLICY is not a trie")?;
        let mut policy: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
        for r in trie.iter() {
            let (k, v): (Key<[u8; PolicyKey::DATA_LEN]>, PolicyValue) = r?;
            let k = PolicyKey::from_lpm(k.prefix_len(), k.data());
            if k.slot == slot {
                policy.insert(k, v);
            }
        }
        Ok(policy.into_iter().collect())
    }

    /// After the programs are swapped: the older agent's maps are no longer used by anything.
    pub(super) fn remove_old_pins(&self) -> Result<()> {
        if self.host_layout() != Some(HostLayout::Table) {
            return Ok(()); // an older object benchmarked side by side still uses them
        }
        for name in OLD_PINS {
            let pin = self.old_pin(name);
            if pin.exists() {
                std::fs::remove_file(&pin)
                    .with_context(|| format!("remove the older agent's {}", pin.display()))?;
            }
        }
        Ok(())
    }
}
