//! `cargo xtask bench datapath`: cost of the real programs per packet, measured by the kernel
//! with `BPF_PROG_TEST_RUN` (average over `repeat` runs), for Plans of 1, 1k, 10k, 100k policy
//! entries. Paths:
//! * established: a tracked TCP flow at the hook that admitted it, the common case: a hit in
//!   this CPU's flow cache (a repeated packet always hits it, as a flow's packets mostly do);
//!   the row `current, cache miss` loads the same object with a zero cache window, so every
//!   packet probes the cache, misses, reads `CT_PAIRS` (one hit) and fills the cache: what the
//!   first packet of a flow per CPU and second costs, and every packet of flows that collide in it
//!   (in that row the decision cache misses too, see below);
//! * reply: the same flow's answer at the pod's other hook (the same cache entry, or the same
//!   single `CT_PAIRS` lookup: the entry is shared by both hooks of the veth);
//! * new flow, TCP SYN (policy path): a SYN the policy denies (a SYN skips conntrack: it
//!   always opens a flow). The packet is repeated, so in the `current` row the per-CPU
//!   decision cache answers (as for a client's next connection to the same pod and port,
//!   from another source port); in `current, cache miss` every probe misses and the policy
//!   maps decide (the first such question per CPU and second). Likewise for the UDP and
//!   allowed-SYN paths below;
//! * new flow, UDP: a packet no flow matches and the policy denies: one conntrack
//!   miss, the local endpoint (`LOCAL_ADDRS`), the peer (`HOST_ADDRS`), the policy hash probed
//!   at the subject's prefix lengths, a rate-limited event: every lookup of a new flow except the
//!   conntrack insert;
//! * allowed SYN, reused tuple (+ conntrack overwrite): an allowed SYN repeated; every run
//!   takes the policy path and finds the entry the run before wrote, as a busy client's SYN
//!   does when its ports wrap within the closing lifetime: one lookup and an overwrite in
//!   place;
//! * new flow allowed (+ conntrack insert, cold): distinct packets, one run each (a new flow
//!   cannot be repeated): the policy path, a conntrack miss and the insert, timed by the
//!   kernel's per-program run-time statistics (`BPF_ENABLE_STATS`), i.e. the program alone;
//!   each run follows a syscall, so caches are colder than in the repeated paths: an upper
//!   bound;
//! * non-IP (ARP): parse the Ethernet header, count (every path bumps one per-CPU counter);
//! * floor: `netward_floor`, a program that returns at once: what `BPF_PROG_TEST_RUN` itself
//!   costs per run here; the other figures minus it are the program's own cost.
//!
//! With `baseline_object` (an older build of the eBPF object), the same Plans and packets run
//! through it too, interleaved size by size in the same process, so before/after figures are
//! taken under the same machine load.
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::programs::SchedClassifier;
use netward_common::*;

use super::testrun::{run_classifier, Origin};
use super::{Datapath, DatapathConfig};

/// The do-nothing program of the object (the test-run floor).
const FLOOR: &str = "netward_floor";
use crate::model::Direction;
use crate::plan::Plan;

/// Local pod and the peer the measured flows come from.
const POD: [u8; 4] = [10, 0, 0, 1];
const PEER: [u8; 4] = [10, 1, 0, 7];
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 81;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub sizes: Vec<usize>,
    pub repeat: u32,
    /// Distinct packets for the allowed-new-flow path.
    pub new_flows: u32,
    pub bpffs_dir: PathBuf,
    /// An older build of the eBPF object to measure side by side.
    pub baseline_object: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sizes: vec![1, 1_000, 10_000, 100_000],
            repeat: 1_000_000,
            new_flows: 20_000,
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/netward-bench-{}", std::process::id())),
            baseline_object: None,
        }
    }
}

/// One row: ns per packet for each path.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Which object: "current", "current, cache miss" (no flow or decision cache hits) or
    /// "baseline".
    pub build: &'static str,
    pub policy_entries: usize,
    pub established: f64,
    /// A reply of that flow (the other hook).
    pub reply: f64,
    /// A TCP SYN the policy denies (a SYN skips conntrack).
    pub new_flow: f64,
    /// A UDP packet of no tracked flow that the policy denies: conntrack miss + policy.
    pub new_flow_udp: f64,
    /// An allowed TCP SYN repeated: policy path + conntrack lookup and overwrite in place
    /// (a reused tuple), warm caches.
    pub new_flow_allowed_reused: f64,
    pub new_flow_allowed: f64,
    pub non_ip: f64,
    /// `netward_floor` (the test-run floor) in the same run; NaN when the object lacks it.
    pub floor: f64,
}

/// A Plan with about `n` policy entries: one isolated local pod (subject 1) with the measured
/// allow, plus entries for other subjects, peers, protocols, ports and port blocks, and up to
/// 10k peer addresses in the ipcache.
pub fn synthetic_plan(n: usize) -> Plan {
    let mut plan = Plan::default();
    let mut ip = vec![
        (
            IpcacheKey::v4(0, [0; 4], 0),
            IpcacheValue {
                peer_class: 1,
                ..Default::default()
            },
        ),
        (
            IpcacheKey::v6(0, [0; 16], 0),
            IpcacheValue {
                peer_class: 1,
                ..Default::default()
            },
        ),
        (
            IpcacheKey::v4(0, POD, 32),
            IpcacheValue {
                peer_class: 2,
                subject_class: 1,
                flags: EP_LOCAL | EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS,
                endpoint: 1,
            },
        ),
        (
            IpcacheKey::v4(0, PEER, 32),
            IpcacheValue {
                peer_class: 3,
                ..Default::default()
            },
        ),
    ];
    for i in 0..n.min(10_000) as u32 {
        let a = [10, 200, (i >> 8) as u8, i as u8];
        ip.push((
            IpcacheKey::v4(0, a, 32),
            IpcacheValue {
                peer_class: 4 + i % 500,
                ..Default::default()
            },
        ));
    }
    ip.sort();
    ip.dedup_by_key(|(k, _)| *k);
    let mut pol = vec![(
        PolicyKey::new(
            POLICY_PREFIX_FULL,
            0,
            DIR_INGRESS,
            1,
            3,
            PROTO_TCP,
            ALLOWED_PORT,
        ),
        PolicyValue {
            policy: 1,
            rule: 0,
            flags: 0,
        },
    )];
    // Deterministic spread over subjects, peers, protocols and ports (some as 8-port blocks).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while pol.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let subject = 1 + (x % 200) as u32;
        let peer = 3 + ((x >> 8) % 600) as u32;
        let proto = [PROTO_TCP, PROTO_UDP, PROTO_SCTP][((x >> 20) % 3) as usize];
        let port = 1024 + ((x >> 24) % 60_000) as u16;
        let dir = ((x >> 40) & 1) as u8;
        let block = (x >> 41).is_multiple_of(4);
        let (prefix, port) = if block {
            (POLICY_PREFIX_FULL - 3, port & !7)
        } else {
            (POLICY_PREFIX_FULL, port)
        };
        // Keep the measured denial a denial.
        if subject == 1 && dir == DIR_INGRESS {
            continue;
        }
        pol.push((
            PolicyKey::new(prefix, 0, dir, subject, peer, proto, port),
            PolicyValue {
                policy: 2,
                rule: 0,
                flags: 0,
            },
        ));
    }
    pol.sort();
    pol.dedup_by_key(|(k, _)| *k);
    plan.ipcache = ip;
    plan.policy = pol;
    plan
}

/// An Ethernet + IPv4 frame (no options) carrying `l4`.
fn eth_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len() as u16).to_be_bytes();
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, total[0], total[1], 0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    f
}

fn eth_ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
    eth_ipv4(
        src,
        dst,
        PROTO_UDP,
        &[s[0], s[1], d[0], d[1], 0, 9, 0, 0, 1],
    )
}

fn eth_ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
    let tcp = [
        s[0], s[1], d[0], d[1], 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
    ];
    eth_ipv4(src, dst, PROTO_TCP, &tcp)
}

/// Run the benchmark; one row per Plan size (and per build with a baseline object).
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let cfg = DatapathConfig {
        bpffs_dir: opts.bpffs_dir.clone(),
        policy_max: 2 * opts.sizes.iter().copied().max().unwrap_or(1) as u32 + 1024,
        ipcache_max: 32_768,
        conntrack_max: 262_144,
        fail_closed_unknown: true,
        ..DatapathConfig::default()
    };
    let mut builds = vec![("current", Datapath::open_or_create(cfg.clone())?)];
    let mut mcfg = cfg.clone();
    mcfg.flow_cache_window_jiffies = 0;
    mcfg.bpffs_dir = suffixed(&cfg.bpffs_dir, "-cachemiss");
    builds.push(("current, cache miss", Datapath::open_or_create(mcfg)?));
    if let Some(path) = &opts.baseline_object {
        let object = std::fs::read(path)
            .with_context(|| format!("read baseline object {}", path.display()))?;
        let mut bcfg = cfg.clone();
        bcfg.bpffs_dir = suffixed(&cfg.bpffs_dir, "-baseline");
        // Aligned copy: the object parser wants 8-byte alignment.
        let words: Vec<u64> = object
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        // SAFETY: the Vec<u64> holds at least object.len() initialised bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, object.len()) };
        builds.push(("baseline", Datapath::open_object(bcfg, bytes)?));
    }
    let result = (|| {
        let mut rows = Vec::new();
        let mut sport_base: u16 = 1024;
        for &n in &opts.sizes {
            let plan = synthetic_plan(n);
            for (name, dp) in builds.iter_mut() {
                dp.apply(&plan)?;
                rows.push(measure(dp, name, n, opts, sport_base)?);
            }
            sport_base = sport_base.wrapping_add(opts.new_flows.max(1) as u16);
        }
        Ok(rows)
    })();
    for (_, dp) in builds {
        dp.destroy()?;
    }
    result
}

/// `dir` with `suffix` appended to its last component (bpffs names cannot contain dots).
fn suffixed(dir: &std::path::Path, suffix: &str) -> PathBuf {
    let mut d = dir.as_os_str().to_owned();
    d.push(suffix);
    d.into()
}

/// All paths for one installed Plan of `n` entries.
fn measure(
    dp: &mut Datapath,
    build: &'static str,
    n: usize,
    opts: &BenchOptions,
    sport_base: u16,
) -> Result<BenchRow> {
    let syn = eth_ipv4_tcp(PEER, POD, 40000, ALLOWED_PORT, 0x02);
    let ack = eth_ipv4_tcp(PEER, POD, 40000, ALLOWED_PORT, 0x10);
    anyhow::ensure!(
        dp.test_run(Direction::Ingress, &syn, 1)?.pass,
        "allowed flow denied"
    );
    let est = dp.test_run(Direction::Ingress, &ack, opts.repeat)?;
    let answer = eth_ipv4_tcp(POD, PEER, ALLOWED_PORT, 40000, 0x10);
    let reply = dp.test_run(Direction::Egress, &answer, opts.repeat)?;
    anyhow::ensure!(reply.pass, "reply denied");
    let denied = eth_ipv4_tcp(PEER, POD, 40001, DENIED_PORT, 0x02);
    let new = dp.test_run(Direction::Ingress, &denied, opts.repeat)?;
    anyhow::ensure!(!new.pass, "denied flow passed");
    // An allowed SYN, repeated: each run takes the policy path and overwrites the entry the
    // run before wrote (a reused tuple).
    let allowed_syn = eth_ipv4_tcp(PEER, POD, 40002, ALLOWED_PORT, 0x02);
    let allowed_reused = dp.test_run(Direction::Ingress, &allowed_syn, opts.repeat)?;
    anyhow::ensure!(allowed_reused.pass, "allowed SYN denied");
    let udp = eth_ipv4_udp(PEER, POD, 40001, DENIED_PORT);
    let new_udp = dp.test_run(Direction::Ingress, &udp, opts.repeat)?;
    anyhow::ensure!(!new_udp.pass, "denied UDP flow passed");
    let mut arp = ack.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let non_ip = dp.test_run(Direction::Ingress, &arp, opts.repeat)?;
    let floor = match dp.bpf.program_mut(FLOOR) {
        Some(p) => {
            let prog: &mut SchedClassifier = p.try_into()?;
            if prog.fd().is_err() {
                prog.load().context("load netward_floor")?;
            }
            run_classifier(prog, &arp, opts.repeat, Origin::Forwarded)?.ns_per_run as f64
        }
        None => f64::NAN,
    };
    let calls = opts.new_flows.max(1);
    let stats_on = Datapath::enable_run_stats()?;
    let before = dp.program_stats(Direction::Ingress)?;
    for i in 0..calls {
        let sport = sport_base.wrapping_add(i as u16);
        let f = eth_ipv4_tcp(PEER, POD, sport, ALLOWED_PORT, 0x02);
        let r = dp.test_run(Direction::Ingress, &f, 1)?;
        anyhow::ensure!(r.pass, "allowed new flow denied");
    }
    let after = dp.program_stats(Direction::Ingress)?;
    drop(stats_on);
    let runs = (after.run_count - before.run_count).max(1);
    let new_allowed = (after.run_time_ns - before.run_time_ns) as f64 / runs as f64;
    Ok(BenchRow {
        build,
        policy_entries: n,
        established: est.ns_per_run as f64,
        reply: reply.ns_per_run as f64,
        new_flow: new.ns_per_run as f64,
        new_flow_udp: new_udp.ns_per_run as f64,
        new_flow_allowed_reused: allowed_reused.ns_per_run as f64,
        new_flow_allowed: new_allowed,
        non_ip: non_ip.ns_per_run as f64,
        floor,
    })
}

/// The rows as a Markdown table, with the spread across sizes and the targets.
pub fn table(rows: &[BenchRow], repeat: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "BPF_PROG_TEST_RUN, ns per packet (repeat {repeat}; allowed new flows: one run each, kernel run-time stats)\n");
    let _ = writeln!(s, "| build | policy entries | established | reply | new flow, TCP SYN (policy path) | new flow, UDP (ct miss + policy path) | allowed SYN, reused tuple (+ct overwrite) | new flow allowed (+ct insert, cold) | non-IP | test-run floor |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.build,
            r.policy_entries,
            r.established,
            r.reply,
            r.new_flow,
            r.new_flow_udp,
            r.new_flow_allowed_reused,
            r.new_flow_allowed,
            r.non_ip,
            r.floor
        );
    }
    let spread = |build: &str, f: fn(&BenchRow) -> f64| {
        let of_build = || rows.iter().filter(|r| r.build == build).map(f);
        let max = of_build().fold(f64::MIN, f64::max);
        let min = of_build().fold(f64::MAX, f64::min);
        (max / min - 1.0) * 100.0
    };
    let current = |f| spread("current", f);
    let _ = writeln!(
        s,
        "\nspread across sizes, current build (max/min - 1): established {:.0} % (on a cache miss {:.0} %), new flow {:.0} % (UDP {:.0} %), new flow allowed {:.0} %",
        current(|r| r.established),
        spread("current, cache miss", |r| r.established),
        current(|r| r.new_flow),
        current(|r| r.new_flow_udp),
        current(|r| r.new_flow_allowed)
    );
    let _ = writeln!(
        s,
        "targets: new flow <= 150 ns, established <= 60 ns, flat within 10 %"
    );
    s
}

/// `netward_floor` (a program that returns at once) attached first at both tc hooks (TCX) of
/// some interfaces: what any tc program costs real traffic on this kernel, before it does
/// anything (`bench lab`'s floor row). Detached when dropped: its links are not pinned.
pub struct FloorAttached {
    _bpf: aya::Ebpf,
    pin_dir: PathBuf,
}

/// Attach [`FloorAttached`] to `ifnames`; its maps go under `pin_dir` (removed on drop).
pub fn attach_floor(ifnames: &[&str], pin_dir: PathBuf) -> Result<FloorAttached> {
    use aya::programs::{tc::TcAttachOptions, LinkOrder, TcAttachType};
    let cfg = DatapathConfig {
        bpffs_dir: pin_dir.clone(),
        ..DatapathConfig::default()
    };
    let _ = super::loader::remove_pins(&pin_dir);
    let mut bpf = super::loader::load(&cfg)?;
    let prog: &mut SchedClassifier = bpf
        .program_mut(FLOOR)
        .context("the eBPF object has no netward_floor")?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().context("load netward_floor")?;
    }
    for ifname in ifnames {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            prog.attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .with_context(|| format!("attach netward_floor to {ifname} (TCX)"))?;
        }
    }
    Ok(FloorAttached { _bpf: bpf, pin_dir })
}

impl Drop for FloorAttached {
    fn drop(&mut self) {
        let _ = super::loader::remove_pins(&self.pin_dir);
    }
}
