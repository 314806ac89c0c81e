//! The Plan's address tables (`LOCAL_TABLE`, `HOST_TABLE`): arrays the agent lays out itself,
//! each key in one of the four cells of one of its two buckets
//! (`netward_common::table_buckets`), each Plan slot in its own half. A lookup is at most
//! three inlined array accesses and eight key compares, with no call into the kernel: a hash
//! map lookup measured ~26 ns here, one of these ~3 ns (see DATAPATH.md).
use aya_ebpf::maps::Array;
use netward_common::{table_buckets, Bucket, Cell, TableKey, TABLE_WAYS};

/// Buckets per slot of each table (a power of two), set by the agent at load time from the
/// maps' sizes: read-only data, constants to the verifier.
#[no_mangle]
static LOCAL_TABLE_BUCKETS: u32 = 1;
#[no_mangle]
static HOST_TABLE_BUCKETS: u32 = 1;

#[inline(always)]
pub fn local_buckets() -> u32 {
    unsafe { core::ptr::read_volatile(&LOCAL_TABLE_BUCKETS) }
}

#[inline(always)]
pub fn host_buckets() -> u32 {
    unsafe { core::ptr::read_volatile(&HOST_TABLE_BUCKETS) }
}

/// 1 when `c`'s key is `w`, else 0, without a branch.
#[inline(always)]
fn is<K: TableKey>(c: &K, w: u64) -> u64 {
    let x = c.table_word() ^ w;
    ((x | x.wrapping_neg()) >> 63) ^ 1
}

/// Bit i set when cell i of bucket `b` holds the key with word `w`: four compares as
/// arithmetic, not branches.
#[inline(always)]
fn matches<K: TableKey, V>(b: *const Cell<K, V>, w: u64) -> u64 {
    let mut m = 0u64;
    for i in 0..TABLE_WAYS {
        // SAFETY: an array value, valid for the program's run.
        m |= is(unsafe { &(*b.add(i)).key }, w) << i;
    }
    m
}

/// The cell of bucket `b` holding the key with word `w`, if one does: the compares as
/// arithmetic, then one test, and the cell picked by its index.
#[inline(always)]
fn in_bucket<K: TableKey, V>(b: *const Cell<K, V>, w: u64) -> Option<*const V> {
    let m = matches(b, w);
    if m == 0 {
        return None;
    }
    // A key is in one cell: its index from its bit (1, 2, 4, 8 -> 0, 1, 2, 3).
    let i = ((m >> 1) & 1 | ((m >> 2) & 1) * 2 | ((m >> 3) & 1) * 3) as usize & (TABLE_WAYS - 1);
    // SAFETY: an array value; `i` < TABLE_WAYS.
    Some(unsafe { &(*b.add(i)).value as *const V })
}

/// The value of `key` in `slot`'s half of `table` (`buckets` per slot), if present.
#[inline(always)]
pub fn get<K: TableKey, V>(
    table: &Array<Bucket<K, V>>,
    buckets: u32,
    slot: u8,
    key: &K,
) -> Option<*const V> {
    let w = key.table_word();
    let base = (slot as u32 & 1) * buckets;
    let [h1, h2] = table_buckets(w, buckets);
    if let Some(v) = in_bucket(table.get_ptr(base + h1)? as *const Cell<K, V>, w) {
        return Some(v);
    }
    in_bucket(table.get_ptr(base + h2)? as *const Cell<K, V>, w)
}
