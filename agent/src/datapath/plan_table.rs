//! The Plan's address tables as the datapath reads them (`ebpf/src/table.rs`): `LOCAL_TABLE`
//! and `HOST_TABLE` are arrays of [`Bucket`]s, each Plan slot in its own half, each key in one
//! of the four cells of one of its two buckets ([`table_buckets`]). The agent is their only
//! writer and lays a slot out here ([`layout`]: two-choice, four-way cuckoo placement), then
//! writes the buckets that changed through a shared mapping of the array (`BPF_F_MMAPABLE`):
//! no syscall per entry, and the whole table read back in one pass.
//!
//! A slot is written only while it is not live (the slot protocol of `sync.rs`), so the
//! programs never read a bucket being written, except a packet still running on the Plan
//! that was live a moment before the flip, as with the hash maps these replace.
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Map, MapData};
use netward_common::{table_buckets, Bucket, Cell, TableKey, TABLE_WAYS};

use super::slot_hash::map_err;
use super::SyncError;

pub(super) const LOCAL_TABLE: &str = "LOCAL_TABLE";
pub(super) const HOST_TABLE: &str = "HOST_TABLE";

/// Whether a cell holds nothing (real keys are never all zero, see [`TableKey`]).
fn empty<K: TableKey, V>(c: &Cell<K, V>) -> bool {
    c.key.table_word() == 0
}

/// Cuckoo moves tried for one key before the slot is declared full. At the load the tables
/// are sized for (at most half full) a key nearly always finds a free cell in one of its
/// buckets; the bound ends a walk that cannot succeed (more keys than cells).
const MAX_MOVES: usize = 500;

/// One slot of a table: `entries` (distinct keys) placed in `buckets` buckets, each key in
/// one of its two candidate buckets. `None` when they do not fit.
pub(super) fn layout<K, V>(entries: &[(K, V)], buckets: u32) -> Option<Vec<Bucket<K, V>>>
where
    K: TableKey + Default,
    V: Copy + Default,
{
    let mut t: Vec<Bucket<K, V>> = vec![Default::default(); buckets as usize];
    // A fixed sequence: the same entries always give the same layout.
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    for &(key, value) in entries {
        let mut c = Cell { key, value };
        let mut placed = false;
        for _ in 0..MAX_MOVES {
            let [b1, b2] = table_buckets(c.key.table_word(), buckets);
            let free = |b: u32, t: &Vec<Bucket<K, V>>| {
                t[b as usize].iter().position(|x| empty(x)).map(|i| (b, i))
            };
            if let Some((b, i)) = free(b1, &t).or_else(|| free(b2, &t)) {
                t[b as usize][i] = c;
                placed = true;
                break;
            }
            // Both full: take a cell of one of them, and place its key next.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let b = if rng & 1 == 0 { b1 } else { b2 };
            let i = (rng >> 1) as usize % TABLE_WAYS;
            std::mem::swap(&mut t[b as usize][i], &mut c);
        }
        if !placed {
            return None;
        }
    }
    Some(t)
}

/// A table's array, mapped into the agent (unmapped on drop).
pub(super) struct Mapped<K, V> {
    ptr: *mut Bucket<K, V>,
    len: usize,
    /// Buckets per slot.
    buckets: u32,
    _kv: PhantomData<(K, V)>,
}

impl<K: TableKey, V: Copy> Mapped<K, V> {
    /// Map `name`'s array; its value size must be one bucket of (K, V).
    pub(super) fn open(map: &Map, name: &'static str) -> Result<Self, SyncError> {
        let data: &MapData = match map {
            Map::Array(d) => d,
            _ => return Err(map_err(name, anyhow::anyhow!("not an array"))),
        };
        let info = data.info().map_err(|e| map_err(name, e))?;
        let size = std::mem::size_of::<Bucket<K, V>>();
        if info.value_size() as usize != size || !size.is_multiple_of(8) {
            return Err(map_err(
                name,
                anyhow::anyhow!("value size {} is not a bucket ({size})", info.value_size()),
            ));
        }
        let entries = info.max_entries();
        if !entries.is_multiple_of(2) || !(entries / 2).is_power_of_two() {
            return Err(map_err(
                name,
                anyhow::anyhow!("{entries} buckets: not two slots of a power of two"),
            ));
        }
        // The kernel maps whole pages of the array's values.
        // SAFETY: no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * size).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the array's values, which the kernel keeps alive while
        // mapped; released in drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(map_err(
                name,
                anyhow::anyhow!("mmap: {}", std::io::Error::last_os_error()),
            ));
        }
        Ok(Mapped {
            ptr: ptr as *mut Bucket<K, V>,
            len,
            buckets: entries / 2,
            _kv: PhantomData,
        })
    }

    /// Buckets per slot.
    pub(super) fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Entries a slot is sized for: half its cells.
    pub(super) fn capacity(&self) -> usize {
        self.buckets as usize * TABLE_WAYS / 2
    }

    fn bucket(&self, slot: u8, i: u32) -> *mut Bucket<K, V> {
        let at = (slot as usize & 1) * self.buckets as usize + i as usize;
        // SAFETY: `at` < 2 * buckets, the mapped array's length.
        unsafe { self.ptr.add(at) }
    }

    /// Every entry of `slot`.
    pub(super) fn entries(&self, slot: u8) -> Vec<(K, V)> {
        let mut out = Vec::new();
        for i in 0..self.buckets {
            // SAFETY: in the mapping; values are plain integers.
            let b = unsafe { std::ptr::read_volatile(self.bucket(slot, i)) };
            out.extend(b.iter().filter(|c| !empty(c)).map(|c| (c.key, c.value)));
        }
        out
    }

    /// Make `slot` hold `layout` (from [`layout`] with [`Self::buckets`]): only the buckets
    /// that differ are written.
    pub(super) fn write(&mut self, slot: u8, layout: &[Bucket<K, V>])
    where
        Bucket<K, V>: PartialEq,
    {
        assert_eq!(layout.len(), self.buckets as usize);
        for (i, new) in layout.iter().enumerate() {
            let p = self.bucket(slot, i as u32);
            // SAFETY: in the mapping.
            unsafe {
                if std::ptr::read_volatile(p) != *new {
                    std::ptr::write_volatile(p, *new);
                }
            }
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Empty `slot`; returns how many entries it held.
    pub(super) fn clear(&mut self, slot: u8) -> usize
    where
        K: Default,
        V: Default,
    {
        let mut n = 0;
        for i in 0..self.buckets {
            let p = self.bucket(slot, i);
            // SAFETY: in the mapping.
            unsafe {
                let b = std::ptr::read_volatile(p);
                let used = b.iter().filter(|c| !empty(c)).count();
                if used > 0 {
                    n += used;
                    std::ptr::write_volatile(p, Default::default());
                }
            }
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        n
    }
}

impl<K, V> Drop for Mapped<K, V> {
    fn drop(&mut self) {
        // SAFETY: mapped in `open` with this length.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netward_common::{table_buckets_per_slot, AddrKey, FAMILY_V4, FAMILY_V6};

    /// `n` addresses as the address tables hold them: IPv4 pods from a /16 in order, and
    /// IPv6 ones (tag keys) every third.
    fn entries(n: u32) -> Vec<(AddrKey, u64)> {
        (0..n)
            .map(|i| {
                let mut a = [0u8; 16];
                let family = if i % 3 == 2 {
                    a[0] = 0xfd;
                    a[12..].copy_from_slice(&i.to_be_bytes());
                    FAMILY_V6
                } else {
                    a[..4].copy_from_slice(&[10, 244, (i >> 8) as u8, i as u8]);
                    a[1] = 244u8.wrapping_add((i >> 16) as u8);
                    FAMILY_V4
                };
                (AddrKey::new(1, family, &a), i as u64 + 1)
            })
            .collect()
    }

    /// What the datapath does: look in the key's two buckets.
    fn find<K: TableKey + PartialEq, V: Copy>(t: &[Bucket<K, V>], k: &K) -> Option<V> {
        let [b1, b2] = table_buckets(k.table_word(), t.len() as u32);
        [b1, b2]
            .iter()
            .flat_map(|b| t[*b as usize].iter())
            .find(|c| c.key == *k)
            .map(|c| c.value)
    }

    #[test]
    fn every_key_is_found_in_its_buckets_up_to_the_sized_load() {
        for n in [1u32, 3, 100, 5_000, 10_002, 32_768, 131_072] {
            // A slot holds half the capacity: the table is then at most half full.
            let buckets = table_buckets_per_slot(2 * n);
            let mut e = entries(n);
            e.sort();
            e.dedup_by_key(|(k, _)| *k);
            let t = layout(&e, buckets).expect("fits at half load");
            for (k, v) in &e {
                assert_eq!(find(&t, k), Some(*v), "{n} entries");
            }
            let cells = t.iter().flatten().filter(|c| !empty(c)).count();
            assert_eq!(cells, e.len(), "each entry once");
            // A key that is not there is not found.
            let absent = AddrKey::new(
                1,
                FAMILY_V4,
                &[192, 168, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            );
            assert_eq!(find(&t, &absent), None);
        }
    }

    #[test]
    fn a_full_slot_is_reported_not_truncated() {
        // 4 buckets, 16 cells: 17 keys cannot fit.
        assert!(layout(&entries(17), 4).is_none());
        let t = layout(&entries(8), 4).expect("8 of 16 cells");
        assert_eq!(t.iter().flatten().filter(|c| !empty(c)).count(), 8);
    }

    #[test]
    fn the_layout_is_a_function_of_the_entries() {
        let e = entries(3000);
        let b = table_buckets_per_slot(6000);
        assert_eq!(layout(&e, b), layout(&e, b));
    }

    #[test]
    fn address_keys_are_never_empty_cells() {
        let k = AddrKey::new(0, FAMILY_V4, &[0; 16]);
        assert_ne!(k.table_word(), 0);
    }
}
