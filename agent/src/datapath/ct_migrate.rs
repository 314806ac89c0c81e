//! Upgrade from an agent whose conntrack was an older map, into `CT_PAIRS` (one entry per
//! flow, its ends in a canonical order, each end's verdict in the value):
//! * `CT` (the previous layout): one entry per flow and veth, keyed in the veth's orientation
//!   (`local` = its pod), the origin direction in the value; a same-node pod pair's two
//!   entries become one entry with both sides;
//! * `CONNTRACK` (the layout before): the tuple as first seen + the admitting hook's
//!   direction, re-keyed to the veth's orientation first.
//!
//! Established connections must survive the upgrade: the old programs keep enforcing through
//! the pinned links until `Datapath::open_or_create` swaps the new ones in, and a reply whose
//! flow the new programs do not know would be judged as a new flow (and dropped when the policy
//! only allows the other direction). So the live entries are copied before the swap, copied
//! again after it (entries the old programs created meanwhile), and only then is the old pin
//! removed. Copies never overwrite what the new programs wrote: a flow they track already only
//! gains the sides it lacks.
use std::collections::BTreeMap;
use std::mem::size_of;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, MapError};
use aya::Ebpf;
use netward_common::{
    CtFlowKey, CtKey, CtPairKey, CtPairValue, CtSide, CtValue, CT_CLOSING, CT_FROM_HOST,
    CT_ORIGIN_EGRESS, CT_TRACKED, DIR_EGRESS, FAMILY_V4, FAMILY_V6,
};

/// The map the programs track flows in.
pub(crate) const MAP: &str = "CT_PAIRS";

/// An older layout's map, by pin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `CT`: [`CtFlowKey`] (the veth's orientation) -> [`CtValue`].
    Oriented,
    /// `CONNTRACK`: [`CtKey`] (tuple as first seen + direction) -> [`CtValue`].
    FirstSeen,
}

impl Layout {
    const ALL: [Layout; 2] = [Layout::Oriented, Layout::FirstSeen];

    fn pin(self) -> &'static str {
        match self {
            Layout::Oriented => "CT",
            Layout::FirstSeen => "CONNTRACK",
        }
    }

    fn key_size(self) -> usize {
        match self {
            Layout::Oriented => size_of::<CtFlowKey>(),
            Layout::FirstSeen => size_of::<CtKey>(),
        }
    }
}

/// Re-key a `CONNTRACK` entry to the veth's orientation: `local` is the pod of the admitting
/// hook (source on egress, destination on ingress); the direction moves into the value's
/// origin flag. `None` for an unknown family.
pub(crate) fn orient(k: &CtKey, v: &CtValue) -> Option<(CtFlowKey, CtValue)> {
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

/// A `CT` entry (one veth's view of a flow) as its side of the flow's `CT_PAIRS` entry.
/// `None` for an unknown family.
pub(crate) fn pair(k: &CtFlowKey, v: &CtValue) -> Option<(CtPairKey, CtPairValue)> {
    if k.family != FAMILY_V4 && k.family != FAMILY_V6 {
        return None;
    }
    let (key, side) = CtPairKey::new(k.local, k.lport, k.remote, k.rport, k.proto, k.family);
    let mut value = CtPairValue {
        expires_ns: v.expires_ns,
        flags: v.flags & CT_CLOSING,
        ..Default::default()
    };
    value.sides[side] = CtSide {
        generation: v.generation,
        policy: v.policy,
        rule: v.rule,
        flags: CT_TRACKED | (v.flags & (CT_ORIGIN_EGRESS | CT_FROM_HOST)),
    };
    Some((key, value))
}

/// `into` gains the sides of `from` that it does not track; the later expiry and a closing
/// flag carry over. Whether `into` changed.
pub(crate) fn merge(into: &mut CtPairValue, from: &CtPairValue) -> bool {
    let before = *into;
    for (i, f) in into.sides.iter_mut().zip(from.sides.iter()) {
        if i.flags & CT_TRACKED == 0 && f.flags & CT_TRACKED != 0 {
            *i = *f;
        }
    }
    into.expires_ns = into.expires_ns.max(from.expires_ns);
    into.flags |= from.flags & CT_CLOSING;
    *into != before
}

/// A pinned map of an older layout, when an older agent left one.
pub(crate) struct Legacy {
    layout: Layout,
    path: PathBuf,
    map: Map,
}

/// Open the older layouts' pins under `dir`. Not those the object just loaded declares
/// itself (an older object run side by side by the benchmark: that map is its own live
/// conntrack, not something to migrate).
pub(crate) fn open_legacy(dir: &Path, bpf: &Ebpf) -> Result<Vec<Legacy>> {
    let mut found = Vec::new();
    for layout in Layout::ALL {
        let path = dir.join(layout.pin());
        if bpf.map(layout.pin()).is_some() || !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path)
            .with_context(|| format!("open pinned map {}", path.display()))?;
        let info = map.info()?;
        let sizes = (info.key_size() as usize, info.value_size() as usize);
        if sizes != (layout.key_size(), size_of::<CtValue>()) {
            anyhow::bail!(
                "pinned map {} has key/value sizes {}/{}, not an older conntrack layout: \
                 remove the pins (netward datapath reset)",
                path.display(),
                sizes.0,
                sizes.1
            );
        }
        let map = Map::from_map_data(map)?;
        found.push(Legacy { layout, path, map });
    }
    Ok(found)
}

/// `CLOCK_MONOTONIC` in ns: the clock behind the programs' `bpf_ktime_get_coarse_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out buffer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one copy pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CopyReport {
    pub copied: usize,
    /// Already present in the new map (an earlier pass, or the new programs tracked it).
    pub present: usize,
    /// Present, without (all) the sides copied: those were added.
    pub merged: usize,
    /// Expired, or of an unknown family.
    pub skipped: usize,
}

impl Legacy {
    /// The live entries, each as its side of a `CT_PAIRS` entry (unmerged); expired ones
    /// and unknown families are counted in `r.skipped`.
    fn entries(&self, r: &mut CopyReport) -> Result<Vec<(CtPairKey, CtPairValue)>> {
        match self.layout {
            Layout::Oriented => self.read(r, pair),
            Layout::FirstSeen => self.read(r, |k: &CtKey, v| {
                orient(k, v).and_then(|(k, v)| pair(&k, &v))
            }),
        }
    }

    /// [`Legacy::entries`] of a map keyed by `K`, each converted by `convert`.
    fn read<K: aya::Pod>(
        &self,
        r: &mut CopyReport,
        convert: impl Fn(&K, &CtValue) -> Option<(CtPairKey, CtPairValue)>,
    ) -> Result<Vec<(CtPairKey, CtPairValue)>> {
        let now = monotonic_ns();
        let map: HashMap<&MapData, K, CtValue> = HashMap::try_from(&self.map)?;
        let mut out = Vec::new();
        // Entries may come and go while the old programs run: a key that vanished between
        // listing and reading is skipped (the second pass catches what appears later).
        for k in map.keys() {
            let k = k?;
            let v = match map.get(&k, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            match convert(&k, &v) {
                Some(e) if v.expires_ns >= now => out.push(e),
                _ => r.skipped += 1,
            }
        }
        Ok(out)
    }

    /// Copy every live entry into `CT_PAIRS` of `bpf`: a same-node pod pair's two entries
    /// become one with both sides; a flow the new programs track already gains only the sides
    /// it lacks.
    pub(crate) fn copy_into(&self, bpf: &mut Ebpf) -> Result<CopyReport> {
        let mut r = CopyReport::default();
        let mut flows: BTreeMap<CtPairKey, CtPairValue> = BTreeMap::new();
        for (k, v) in self.entries(&mut r)? {
            flows
                .entry(k)
                .and_modify(|e| {
                    merge(e, &v);
                })
                .or_insert(v);
        }
        const BPF_NOEXIST: u64 = 1;
        const BPF_EXIST: u64 = 2;
        let mut ct: HashMap<&mut MapData, CtPairKey, CtPairValue> =
            HashMap::try_from(bpf.map_mut(MAP).context("CT_PAIRS missing")?)?;
        for (k, v) in &flows {
            match ct.insert(k, v, BPF_NOEXIST) {
                Ok(()) => r.copied += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                {
                    let mut cur = match ct.get(k, 0) {
                        Ok(cur) => cur,
                        // Gone again meanwhile (expired, evicted): the flow's next packet
                        // is judged as new, as it would have been.
                        Err(MapError::KeyNotFound) => continue,
                        Err(e) => return Err(e).context("read a conntrack entry"),
                    };
                    // (The whole value is written back: a write the programs make to the
                    // entry between this read and that write is lost. Only flows the new
                    // programs began to track during the swap get here.)
                    if merge(&mut cur, v) {
                        ct.insert(k, cur, BPF_EXIST)
                            .context("add a side to a conntrack entry")?;
                        r.merged += 1;
                    } else {
                        r.present += 1;
                    }
                }
                Err(e) => return Err(e).context("copy a conntrack entry"),
            }
        }
        Ok(r)
    }

    /// Remove the pin; the map is freed once no program uses it.
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
        let (k, nv) = orient(&legacy(DIR_EGRESS, FAMILY_V4), &v).unwrap();
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
        let (k, nv) = orient(&legacy(DIR_INGRESS, FAMILY_V6), &v).unwrap();
        assert_eq!((k.lport, k.rport, k.family), (80, 40000, FAMILY_V6));
        assert_eq!(k.local[..4], [10, 0, 1, 7]);
        assert_eq!(k.remote[15], 9);
        // The origin comes from the old key's direction only.
        assert_eq!(nv.flags, netward_common::CT_FROM_HOST);
        assert_eq!(orient(&legacy(DIR_INGRESS, 0), &v), None);
    }

    fn addr(b: [u8; 4]) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&b);
        a
    }

    /// One veth's `CT` entry of a flow between `local` and `remote`.
    fn oriented(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> CtFlowKey {
        CtFlowKey {
            local: addr(local),
            remote: addr(remote),
            lport,
            rport,
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_same_node_pairs_two_entries_become_one_with_both_sides() {
        // A (10.0.0.1:40000) opened to B (10.0.0.2:80): A's veth admitted it at egress,
        // B's at ingress, under different generations and policies.
        let a = (
            oriented([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80),
            CtValue {
                generation: 7,
                expires_ns: 100,
                policy: 3,
                rule: 1,
                flags: CT_ORIGIN_EGRESS,
            },
        );
        let b = (
            oriented([10, 0, 0, 2], 80, [10, 0, 0, 1], 40000),
            CtValue {
                generation: 6,
                expires_ns: 200,
                policy: 4,
                rule: 2,
                flags: CT_CLOSING,
            },
        );
        let (ka, mut va) = pair(&a.0, &a.1).unwrap();
        let (kb, vb) = pair(&b.0, &b.1).unwrap();
        assert_eq!(ka, kb, "both veths' entries are one flow");
        assert_eq!(ka.lo[..4], [10, 0, 0, 1]);
        assert_eq!((ka.lo_port, ka.hi_port), (40000, 80));
        assert!(merge(&mut va, &vb));
        assert_eq!(
            va.sides[0],
            CtSide {
                generation: 7,
                policy: 3,
                rule: 1,
                flags: CT_TRACKED | CT_ORIGIN_EGRESS
            }
        );
        assert_eq!(
            va.sides[1],
            CtSide {
                generation: 6,
                policy: 4,
                rule: 2,
                flags: CT_TRACKED
            }
        );
        assert_eq!((va.expires_ns, va.flags), (200, CT_CLOSING));
        // Merging again changes nothing; a tracked side is never overwritten.
        assert!(!merge(&mut va, &vb));
        let mut other = vb;
        other.sides[1].generation = 99;
        assert!(!merge(&mut va, &other));
        assert_eq!(va.sides[1].generation, 6);
    }

    #[test]
    fn the_lower_end_is_side_zero_whichever_veth_wrote_it() {
        // The same address on both ends (a pod to itself through a Service): ports decide.
        let k = oriented([10, 0, 0, 5], 8080, [10, 0, 0, 5], 40000);
        let (key, v) = pair(&k, &CtValue::default()).unwrap();
        assert_eq!((key.lo_port, key.hi_port), (8080, 40000));
        assert_eq!(v.sides[0].flags, CT_TRACKED);
        assert_eq!(v.sides[1].flags, 0);
        let (key2, v2) = pair(
            &oriented([10, 0, 0, 5], 40000, [10, 0, 0, 5], 8080),
            &CtValue::default(),
        )
        .unwrap();
        assert_eq!(key2, key);
        assert_eq!((v2.sides[0].flags, v2.sides[1].flags), (0, CT_TRACKED));
        let mut unknown = k;
        unknown.family = 0;
        assert_eq!(pair(&unknown, &CtValue::default()), None);
    }
}
