//! Upgrading over the pins of an older agent whose maps had another layout.
//!
//! Builds before the hash tables kept the policy in a `POLICY` trie and the full-length
//! ipcache entries in `HOSTS`. A new agent that finds such pins (and a Plan in force, but its
//! own hash maps still empty) rebuilds the live slot of `POLICY_HASH`, `ENDPOINTS` and
//! `ADDRS` from the pinned `IPCACHE` and `POLICY` *before* its programs replace the old
//! ones in the pinned links, so enforcement continues with the same Plan and no window; the
//! old pins are removed once no program uses them.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use netward_common::{Config, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, CFG_READY};

use super::hash_sync::HashTables;
use super::slot_hash::SlotCounts;
use super::Datapath;

/// Pins of older builds that this one no longer uses.
const OLD_PINS: &[&str] = &["POLICY", "HOSTS"];

impl Datapath {
    fn old_pin(&self, name: &str) -> PathBuf {
        self.cfg.bpffs_dir.join(name)
    }

    /// Before the programs are swapped: fill the new tables' live slot from an older agent's
    /// `POLICY` trie when they are empty. Returns whether anything was migrated.
    pub(super) fn upgrade_tables(&mut self) -> Result<bool> {
        let old_policy = self.old_pin("POLICY");
        if !old_policy.exists() || !self.has_policy_hash() {
            return Ok(false);
        }
        let cfg: Config = self.current_config()?;
        if cfg.flags & CFG_READY == 0 {
            return Ok(false);
        }
        let slot = Config::slot_of(cfg.generation);
        let (ip, pol) = self.all_entries()?;
        if pol.iter().any(|(k, _)| k.slot == slot) {
            return Ok(false); // already ours
        }
        let data = MapData::from_pin(&old_policy)
            .with_context(|| format!("open the older agent's {}", old_policy.display()))?;
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
        let ipcache: Vec<(IpcacheKey, IpcacheValue)> =
            ip.into_iter().filter(|(k, _)| k.slot == slot).collect();
        let policy: Vec<(PolicyKey, PolicyValue)> = policy.into_iter().collect();
        let tables = HashTables::from_entries(&ipcache, &policy, slot)?;
        let cur = self.hash_check(&tables, None)?;
        let mut counts = SlotCounts::default();
        self.hash_write(slot, &cur, &tables, &mut counts)?;
        tracing::info!(
            generation = cfg.generation,
            policy_entries = policy.len(),
            "rebuilt the Plan in force into the policy hash tables (upgrade from an older agent)"
        );
        Ok(true)
    }

    /// After the programs are swapped: the older agent's maps are no longer used by anything.
    pub(super) fn remove_old_pins(&self) -> Result<()> {
        if !self.has_policy_hash() {
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
