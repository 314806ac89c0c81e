//! Conntrack garbage collection: deletes the `CT_PAIRS` entries whose lifetime has passed.
//!
//! Why: the programs treat an expired entry as absent but only delete one they look up, and
//! nothing looks up the tuple of a closed connection again unless a client reuses it. Under
//! connection churn the map fills with such entries, and the kernel's LRU then makes room by
//! recency alone: a live flow idle for longer than the map takes to cycle (at 10k new
//! connections a second, 262144 entries cycle in ~26 s) is evicted before entries that
//! expired seconds ago. Its next packet in the reply direction meets the policy as a new
//! flow and is dropped when that direction is not allowed: an idle database connection
//! breaks when the server speaks first. With the expired entries gone, the LRU evicts only
//! when live flows alone fill the map.
//!
//! Only once the map is more than half full: below that the LRU evicts nothing, and an
//! expired entry is worth keeping, since a later flow of its tuple (a busy client's port
//! comes round again) writes over it in place, where a new entry costs an insert (~400 ns
//! more for that SYN). Deleting below half full measured +10 % of program time per short
//! connection in the lab benchmark, whose client reuses its ports after pauses longer than
//! the closing lifetime. The map then fills between two sweeps only if more than half of
//! it is taken within the interval (13k new tuples a second at 262144 entries and 10 s).
//!
//! A sweep reads the map and deletes the expired entries in batches (`BPF_MAP_LOOKUP_BATCH`
//! and `BPF_MAP_DELETE_BATCH`, a syscall per 4096 entries, which aya does not offer): at 10k
//! new connections a second a sweep every 10 s meets ~100k expired entries, and a syscall
//! each would take a few percent of a CPU. Between the read and the delete, a new flow may
//! reuse an expired entry's tuple (its program writes over the entry in place); the delete
//! then takes the new flow's entry, which the flow's next packet in its opening direction
//! writes again (a TCP client's ACK follows the SYN-ACK at once; replies on the CPU that
//! opened the flow are answered by the flow cache meanwhile). That needs a tuple reused
//! within the milliseconds of a sweep after its entry expired, and costs less than what
//! the sweep prevents: the LRU evicting live flows.
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd};
use netward_common::{CtPairKey, CtPairValue};

use super::{ct_migrate, Datapath};

/// Entries read per batch syscall. The kernel returns whole buckets, so it must exceed the
/// longest bucket chain, which it does by far.
const BATCH: usize = 4096;

/// What one sweep saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries read.
    pub scanned: u64,
    /// Of those, expired.
    pub expired: u64,
    /// Expired entries removed.
    pub deleted: u64,
    /// Expired entries gone before the delete reached them (a program met them, or the LRU
    /// evicted them).
    pub gone: u64,
}

impl GcReport {
    /// Live entries.
    pub fn live(&self) -> u64 {
        self.scanned - self.expired
    }
}

/// What the collector has seen so far, for metrics and `status`.
#[derive(Debug, Default)]
pub struct GcStats {
    pub sweeps: AtomicU64,
    /// Live entries at the last sweep.
    pub live: AtomicU64,
}

impl GcStats {
    fn record(&self, r: &GcReport) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.live.store(r.live(), Ordering::Relaxed);
    }
}

/// Sweeps one datapath's `CT_PAIRS` (opened from its pin, so it runs beside the owner of the
/// other maps, on its own thread).
pub struct ConntrackGc {
    map: MapData,
    /// The map's `max_entries`.
    capacity: u64,
    path: PathBuf,
    stats: Arc<GcStats>,
}

impl Datapath {
    /// A collector of this datapath's expired conntrack entries.
    pub fn conntrack_gc(&self) -> Result<ConntrackGc> {
        ConntrackGc::open(&self.cfg.bpffs_dir.join(ct_migrate::MAP))
    }

    /// Sweep this datapath's conntrack every `conntrack_gc_interval` of its configuration
    /// (`None`: the interval is zero, no sweep), until the handle is dropped.
    pub fn spawn_conntrack_gc(&self) -> Result<Option<GcHandle>> {
        let interval = self.cfg.conntrack_gc_interval;
        if interval.is_zero() {
            return Ok(None);
        }
        Ok(Some(self.conntrack_gc()?.spawn(interval)))
    }
}

/// `bpf(2)` with `attr`.
///
/// # Safety
/// The buffers `attr` points to must be alive and large enough for `cmd`: the kernel reads
/// and writes them.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<()> {
    // SAFETY: `attr` is a whole bpf_attr (its size passed); its buffers are the caller's duty.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ConntrackGc {
    pub fn open(path: &Path) -> Result<ConntrackGc> {
        let map = MapData::from_pin(path).with_context(|| format!("open {}", path.display()))?;
        let info = map.info()?;
        let sizes = (info.key_size() as usize, info.value_size() as usize);
        anyhow::ensure!(
            sizes == (size_of::<CtPairKey>(), size_of::<CtPairValue>()),
            "{} has key/value sizes {}/{}, not this build's conntrack layout",
            path.display(),
            sizes.0,
            sizes.1
        );
        Ok(ConntrackGc {
            capacity: info.max_entries() as u64,
            map,
            path: path.to_path_buf(),
            stats: Arc::default(),
        })
    }

    /// The totals, shared with whoever reports them.
    pub fn stats(&self) -> Arc<GcStats> {
        self.stats.clone()
    }

    /// Every entry, read in batches (a consistent view per bucket, not of the whole map).
    fn read_all(&self) -> Result<Vec<(CtPairKey, CtPairValue)>> {
        let fd = self.fd();
        let mut keys = vec![CtPairKey::default(); BATCH];
        let mut values = vec![CtPairValue::default(); BATCH];
        // The kernel's position token (a bucket index for hash maps).
        let mut token = [0u64; 8];
        let mut out = Vec::new();
        let mut first = true;
        loop {
            let mut next = [0u64; 8];
            // SAFETY: all-zero is a valid bpf_attr.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            let b = unsafe { &mut attr.batch };
            b.in_batch = if first { 0 } else { token.as_ptr() as u64 };
            b.out_batch = next.as_mut_ptr() as u64;
            b.keys = keys.as_mut_ptr() as u64;
            b.values = values.as_mut_ptr() as u64;
            b.count = BATCH as u32;
            b.map_fd = fd;
            // SAFETY: `keys` and `values` hold BATCH entries each; `token` and `next` (64
            // bytes) hold a key, more than the kernel's position token (a u32 bucket index
            // for hash maps); all outlive the call.
            let r = unsafe { bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
            let n = unsafe { attr.batch.count } as usize;
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            match r {
                Ok(()) => {}
                // The end of the map (the last batch may still carry entries).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => {
                    return Err(e).with_context(|| format!("batch read of {}", self.path.display()))
                }
            }
            token = next;
            first = false;
        }
    }

    /// Delete `keys` (`BPF_MAP_DELETE_BATCH` stops at a key that is not there any more:
    /// that one is counted as gone and the rest follow).
    fn delete(&self, keys: &[CtPairKey], r: &mut GcReport) -> Result<()> {
        let mut rest = keys;
        while !rest.is_empty() {
            let n = rest.len().min(BATCH);
            // SAFETY: all-zero is a valid bpf_attr.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            let b = unsafe { &mut attr.batch };
            b.keys = rest.as_ptr() as u64;
            b.count = n as u32;
            b.map_fd = self.fd();
            // SAFETY: `keys` points at `n` keys of `rest`, alive for the call.
            let res = unsafe { bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr) };
            let done = unsafe { attr.batch.count } as usize;
            r.deleted += done as u64;
            rest = &rest[done..];
            match res {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !rest.is_empty() => {
                    r.gone += 1;
                    rest = &rest[1..];
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("batch delete in {}", self.path.display()))
                }
            }
        }
        Ok(())
    }

    fn fd(&self) -> u32 {
        self.map.fd().as_fd().as_raw_fd() as u32
    }

    /// One pass over the map: the entries expired at `now_ns` (`CLOCK_MONOTONIC`, the
    /// programs' clock) are counted, and deleted when the map holds more than `keep_below`
    /// entries. Below that the LRU has room and evicts nothing, and an expired entry left
    /// in place is cheaper for a later flow of its tuple (a client's port comes round
    /// again), which writes over it where a new entry costs an insert.
    pub fn sweep_at(&mut self, now_ns: u64, keep_below: u64) -> Result<GcReport> {
        let entries = self.read_all()?;
        let expired: Vec<CtPairKey> = entries
            .iter()
            .filter(|(_, v)| v.expires_ns < now_ns)
            .map(|(k, _)| *k)
            .collect();
        let mut r = GcReport {
            scanned: entries.len() as u64,
            expired: expired.len() as u64,
            ..Default::default()
        };
        if r.scanned > keep_below {
            self.delete(&expired, &mut r)?;
        }
        self.stats.record(&r);
        Ok(r)
    }

    /// [`ConntrackGc::sweep_at`] now, deleting once the map is more than half full.
    pub fn sweep(&mut self) -> Result<GcReport> {
        self.sweep_at(ct_migrate::monotonic_ns(), self.capacity / 2)
    }

    /// Sweep every `interval` on a thread of its own until the handle is dropped (a failed
    /// sweep is logged and retried at the next).
    pub fn spawn(mut self, interval: Duration) -> GcHandle {
        let stats = self.stats();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || loop {
                std::thread::park_timeout(interval);
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let t0 = std::time::Instant::now();
                match self.sweep() {
                    Ok(r) => tracing::debug!(?r, elapsed = ?t0.elapsed(), "conntrack swept"),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "conntrack sweep"),
                }
            })
            .expect("spawn the conntrack collector thread");
        GcHandle {
            stop,
            stats,
            thread: Some(thread),
        }
    }
}

/// A running collector; dropping it stops the thread.
pub struct GcHandle {
    stop: Arc<AtomicBool>,
    stats: Arc<GcStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GcHandle {
    /// What the running collector has seen so far.
    pub fn stats(&self) -> &GcStats {
        &self.stats
    }
}

impl Drop for GcHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
