//! Upgrade from an agent whose conntrack was the `CONNTRACK` map (40-byte key: the tuple as
//! first seen + the admitting hook's direction) to `CT` (the veth's canonical orientation,
//! origin direction in the value).
//!
//! Established connections must survive the upgrade: the old programs keep enforcing through
//! the pinned links until `Datapath::open_or_create` swaps the new ones in, and a reply whose
//! flow the new programs do not know would be judged as a new flow (and dropped when the policy
//! only allows the other direction). So the live entries are copied before the swap, copied
//! again after it (entries the old programs created meanwhile), and only then is the old pin
//! removed. Copies never overwrite (`BPF_NOEXIST`): after the swap the new programs own the
//! entries they refresh, re-stamp or delete.
use std::mem::size_of;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, MapError};
use aya::Ebpf;
use netward_common::{
    CtFlowKey, CtKey, CtValue, CT_ORIGIN_EGRESS, DIR_EGRESS, FAMILY_V4, FAMILY_V6,
};

/// Name of the old map's pin.
pub(crate) const LEGACY_MAP: &str = "CONNTRACK";

/// Re-key a legacy entry: `local` is the pod of the admitting hook (source on egress,
/// destination on ingress); the direction moves into the value's origin flag. `None` for an
/// unknown family.
pub(crate) fn convert(k: &CtKey, v: &CtValue) -> Option<(CtFlowKey, CtValue)> {
    if k.family != FAMILY_V4 && k.family != FAMILY_V6 {
        return None;
    }
    let egress = k.dir == DIR_EGRESS;
    let (local, remote, lport, rport) = if egress {
        (k.saddr, k.daddr, k.sport, k.dport)
    } else {
        (k.daddr, k.saddr, k.dport, k.sport)
    };
    let mut v = *v;
    v.flags &= !CT_ORIGIN_EGRESS;
    if egress {
        v.flags |= CT_ORIGIN_EGRESS;
    }
    // Both layouts keep an IPv4 address in the first 4 bytes, the rest zero.
    let key = CtFlowKey {
        local,
        remote,
        lport,
        rport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    Some((key, v))
}

/// The pinned legacy map, when an older agent left one.
pub(crate) struct Legacy {
    path: PathBuf,
    map: HashMap<MapData, CtKey, CtValue>,
}

/// Open `<dir>/CONNTRACK` if it is the legacy layout. `None` when there is none, or when the
/// object just loaded declares `CONNTRACK` itself (an older object run side by side by the
/// benchmark: that map is its own live conntrack, not something to migrate).
pub(crate) fn open_legacy(dir: &Path, bpf: &Ebpf) -> Result<Option<Legacy>> {
    let path = dir.join(LEGACY_MAP);
    if bpf.map(LEGACY_MAP).is_some() || !path.exists() {
        return Ok(None);
    }
    let data =
        MapData::from_pin(&path).with_context(|| format!("open pinned map {}", path.display()))?;
    let info = data.info()?;
    let sizes = (info.key_size() as usize, info.value_size() as usize);
    if sizes != (size_of::<CtKey>(), size_of::<CtValue>()) {
        anyhow::bail!(
            "pinned map {} has key/value sizes {}/{}, not the legacy conntrack layout: \
             remove the pins (netward datapath reset)",
            path.display(),
            sizes.0,
            sizes.1
        );
    }
    let map = HashMap::try_from(Map::from_map_data(data)?)
        .with_context(|| format!("{} is not a hash map", path.display()))?;
    Ok(Some(Legacy { path, map }))
}

/// `CLOCK_MONOTONIC` in ns: the clock behind the programs' `bpf_ktime_get_coarse_ns`.
fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out buffer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one copy pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CopyReport {
    pub copied: usize,
    /// Already present in the new maps (an earlier pass, or the new programs tracked it).
    pub present: usize,
    /// Expired, or of an unknown family.
    pub skipped: usize,
}

impl Legacy {
    /// Copy every live legacy entry into `CT` of `bpf`, never overwriting.
    pub(crate) fn copy_into(&self, bpf: &mut Ebpf) -> Result<CopyReport> {
        let mut entries = Vec::new();
        let mut r = CopyReport::default();
        let now = monotonic_ns();
        // Entries may come and go while the old programs run: a key that vanished between
        // listing and reading is skipped (the second pass catches what appears later).
        for k in self.map.keys() {
            let k = k?;
            let v = match self.map.get(&k, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            match convert(&k, &v) {
                Some(e) if v.expires_ns >= now => entries.push(e),
                _ => r.skipped += 1,
            }
        }
        const BPF_NOEXIST: u64 = 1;
        let mut ct: HashMap<&mut MapData, CtFlowKey, CtValue> =
            HashMap::try_from(bpf.map_mut("CT").context("CT missing")?)?;
        for (k, v) in &entries {
            match ct.insert(k, v, BPF_NOEXIST) {
                Ok(()) => r.copied += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                {
                    r.present += 1
                }
                Err(e) => return Err(e).context("copy a conntrack entry"),
            }
        }
        Ok(r)
    }

    /// Remove the legacy pin; the map is freed once no program uses it.
    pub(crate) fn unpin(self) -> Result<()> {
        std::fs::remove_file(&self.path).with_context(|| format!("remove {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netward_common::{DIR_INGRESS, PROTO_TCP};

    fn legacy(dir: u8, family: u8) -> CtKey {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s[..4].copy_from_slice(&[10, 0, 0, 1]);
        d[..4].copy_from_slice(&[10, 0, 1, 7]);
        if family == FAMILY_V6 {
            s[15] = 9;
        }
        CtKey {
            saddr: s,
            daddr: d,
            sport: 40000,
            dport: 80,
            proto: PROTO_TCP,
            family,
            dir,
            _pad: 0,
        }
    }

    #[test]
    fn layout_is_the_old_agents() {
        assert_eq!(size_of::<CtKey>(), 40);
    }

    #[test]
    fn egress_entries_keep_the_source_as_local() {
        let v = CtValue {
            generation: 3,
            expires_ns: 99,
            policy: 2,
            rule: 1,
            flags: 0,
        };
        let (k, nv) = convert(&legacy(DIR_EGRESS, FAMILY_V4), &v).unwrap();
        assert_eq!(
            (
                &k.local[..4],
                &k.remote[..4],
                k.lport,
                k.rport,
                k.proto,
                k.family
            ),
            (
                &[10, 0, 0, 1][..],
                &[10, 0, 1, 7][..],
                40000,
                80,
                PROTO_TCP,
                FAMILY_V4
            )
        );
        assert_eq!(nv.flags, CT_ORIGIN_EGRESS);
        assert_eq!(
            (nv.generation, nv.expires_ns, nv.policy, nv.rule),
            (3, 99, 2, 1)
        );
    }

    #[test]
    fn ingress_entries_keep_the_destination_as_local() {
        let v = CtValue {
            flags: CT_ORIGIN_EGRESS | netward_common::CT_FROM_HOST,
            ..Default::default()
        };
        let (k, nv) = convert(&legacy(DIR_INGRESS, FAMILY_V6), &v).unwrap();
        assert_eq!((k.lport, k.rport, k.family), (80, 40000, FAMILY_V6));
        assert_eq!(k.local[..4], [10, 0, 1, 7]);
        assert_eq!(k.remote[15], 9);
        // The origin comes from the old key's direction only.
        assert_eq!(nv.flags, netward_common::CT_FROM_HOST);
        assert_eq!(convert(&legacy(DIR_INGRESS, 0), &v), None);
    }
}
