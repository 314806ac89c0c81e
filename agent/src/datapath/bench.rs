//! `cargo xtask bench datapath`: cost of the real programs per packet, measured by the kernel
//! with `BPF_PROG_TEST_RUN`, for Plans of 1, 1k, 10k, 100k policy entries. Every build and
//! size has its own datapath, all loaded at once, and each path is measured in ten rounds
//! that visit all of them in turn (`repeat / 10` runs each; the figure is the median round),
//! so the machine's drift and bursts fall on every size alike. Paths:
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
//!   miss, the local endpoint (`LOCAL_TABLE`), the peer (`HOST_TABLE`), the policy hash probed
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
//!   bound; `new_flows` in all, a tenth per round, the average over them. (Measured one size
//!   after the other, the machine's drift between sizes read as a spread of 20-33 % across
//!   sizes, the same in the current and the baseline build);
//! * the reused tuple, cold: the allowed SYN of the reused tuple, one run each, right after
//!   each new tuple's run: what a run costs when it follows a syscall, without the insert;
//!   the cold column minus this one is the insert's own cost;
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
    /// Which object: "current", "current, cache miss" (no flow or decision cache hits),
    /// "baseline" or "baseline, cache miss".
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
    /// The reused-tuple SYN measured as the cold path is (one run per test run, in the same
    /// loop): what one run costs there without the insert.
    pub new_flow_allowed_single: f64,
    pub non_ip: f64,
    /// `netward_floor` (the test-run floor) in the same run; NaN when the object lacks it.
    pub floor: f64,
}

impl BenchRow {
    /// A row to be measured (every figure NaN).
    fn empty(build: &'static str, policy_entries: usize) -> Self {
        BenchRow {
            build,
            policy_entries,
            established: f64::NAN,
            reply: f64::NAN,
            new_flow: f64::NAN,
            new_flow_udp: f64::NAN,
            new_flow_allowed_reused: f64::NAN,
            new_flow_allowed: f64::NAN,
            new_flow_allowed_single: f64::NAN,
            non_ip: f64::NAN,
            floor: f64::NAN,
        }
    }
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
    // Aligned copy of the baseline object: the object parser wants 8-byte alignment.
    let baseline_words = match &opts.baseline_object {
        Some(path) => {
            let object = std::fs::read(path)
                .with_context(|| format!("read baseline object {}", path.display()))?;
            let words: Vec<u64> = object
                .chunks(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    u64::from_ne_bytes(w)
                })
                .collect();
            Some((words, object.len()))
        }
        None => None,
    };
    // SAFETY: the Vec<u64> holds at least `len` initialised bytes.
    let baseline = baseline_words.as_ref().map(|(words, len)| unsafe {
        std::slice::from_raw_parts(words.as_ptr() as *const u8, *len)
    });
    // One datapath per build and size, all alive until the end, so every path can be
    // measured in rounds that visit all of them in turn (below).
    let mut measured: Vec<(BenchRow, Datapath)> = Vec::new();
    let result = (|| {
        for &n in &opts.sizes {
            let plan = synthetic_plan(n);
            let tag = |build: &str| suffixed(&cfg.bpffs_dir, &format!("-{build}-{n}"));
            // (name, its configuration, its object: this build's when None)
            let mut builds = vec![
                (
                    "current",
                    DatapathConfig {
                        bpffs_dir: tag("current"),
                        ..cfg.clone()
                    },
                    None,
                ),
                (
                    "current, cache miss",
                    DatapathConfig {
                        bpffs_dir: tag("cachemiss"),
                        flow_cache_window_jiffies: 0,
                        ..cfg.clone()
                    },
                    None,
                ),
            ];
            if let Some(object) = baseline {
                let bcfg = DatapathConfig {
                    bpffs_dir: tag("baseline"),
                    ..cfg.clone()
                };
                builds.push(("baseline", bcfg, Some(object)));
                let bcfg = DatapathConfig {
                    bpffs_dir: tag("baselinemiss"),
                    flow_cache_window_jiffies: 0,
                    ..cfg.clone()
                };
                builds.push(("baseline, cache miss", bcfg, Some(object)));
            }
            for (name, build_cfg, object) in builds {
                let mut dp = match object {
                    Some(object) => Datapath::open_object(build_cfg, object)?,
                    None => Datapath::open_or_create(build_cfg)?,
                };
                match dp
                    .apply(&plan)
                    .map_err(anyhow::Error::from)
                    .and_then(|_| prepare(&dp))
                {
                    Ok(()) => measured.push((BenchRow::empty(name, n), dp)),
                    Err(e) => {
                        let _ = dp.destroy();
                        return Err(e);
                    }
                }
            }
        }
        measure_repeated(&mut measured, opts)?;
        measure_cold(&mut measured, opts)
    })();
    let mut rows = Vec::new();
    for (row, dp) in measured {
        rows.push(row);
        dp.destroy()?;
    }
    result.map(|()| rows)
}

/// The datapaths' order in round `round` of `n`: each round starts one further, so none is
/// always the first after the switch from the previous round's last.
fn in_turn(round: u32, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |j| (round as usize + j) % n)
}

/// The cold path's first source port: its flows stay below the repeated paths' (40000-40002).
const COLD_SPORT_BASE: u16 = 1024;

/// Rounds of each measurement: each visits every build and size in turn, so the machine's
/// drift over the run (seconds between sizes) falls on all of them alike.
const ROUNDS: u32 = 10;

/// New flow allowed (+ conntrack insert, cold): distinct SYNs, one run each, timed by the
/// kernel's run-time statistics, `new_flows` per datapath in [`ROUNDS`] interleaved
/// rounds; each followed by one run of the reused tuple, the same cold path without the
/// insert.
fn measure_cold(measured: &mut [(BenchRow, Datapath)], opts: &BenchOptions) -> Result<()> {
    let per_round = (opts.new_flows.max(1)).div_ceil(ROUNDS);
    anyhow::ensure!(
        per_round * ROUNDS <= 40_000 - COLD_SPORT_BASE as u32,
        "new flows: at most {} (source ports below the repeated paths' flows)",
        40_000 - COLD_SPORT_BASE as u32
    );
    // Per datapath: (ns, runs) of the new tuples, then of the reused one.
    let mut totals = vec![[(0u64, 0u64); 2]; measured.len()];
    let reused = eth_ipv4_tcp(PEER, POD, 40002, ALLOWED_PORT, 0x02);
    let stats_on = Datapath::enable_run_stats()?;
    for round in 0..ROUNDS {
        for i in in_turn(round, measured.len()) {
            let (dp, total) = (&measured[i].1, &mut totals[i]);
            for k in 0..per_round {
                let sport = COLD_SPORT_BASE.wrapping_add((round * per_round + k) as u16);
                let f = eth_ipv4_tcp(PEER, POD, sport, ALLOWED_PORT, 0x02);
                // Each run on its own, timed by the kernel's statistics: the reused tuple
                // right after the new one, so both meet the same cold caches.
                for (j, frame) in [&f, &reused].into_iter().enumerate() {
                    let before = dp.program_stats(Direction::Ingress)?;
                    let r = dp.test_run(Direction::Ingress, frame, 1)?;
                    anyhow::ensure!(r.pass, "allowed new flow denied");
                    let after = dp.program_stats(Direction::Ingress)?;
                    total[j].0 += after.run_time_ns - before.run_time_ns;
                    total[j].1 += after.run_count - before.run_count;
                }
            }
        }
    }
    drop(stats_on);
    for ((row, _), [new, old]) in measured.iter_mut().zip(totals) {
        row.new_flow_allowed = new.0 as f64 / new.1.max(1) as f64;
        row.new_flow_allowed_single = old.0 as f64 / old.1.max(1) as f64;
    }
    Ok(())
}

/// `dir` with `suffix` appended to its last component (bpffs names cannot contain dots).
fn suffixed(dir: &std::path::Path, suffix: &str) -> PathBuf {
    let mut d = dir.as_os_str().to_owned();
    d.push(suffix);
    d.into()
}

/// The repeated paths' packets and expected verdicts, in the order of [`Sample`]'s columns
/// (the floor, last, runs `netward_floor` on the ARP frame).
fn repeated_paths() -> [(Direction, Vec<u8>, bool); 6] {
    let ack = eth_ipv4_tcp(PEER, POD, 40000, ALLOWED_PORT, 0x10);
    let mut arp = ack.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    [
        // Established: the flow `prepare` opened, at the hook that admitted it.
        (Direction::Ingress, ack, true),
        // Its reply.
        (
            Direction::Egress,
            eth_ipv4_tcp(POD, PEER, ALLOWED_PORT, 40000, 0x10),
            true,
        ),
        // A SYN the policy denies.
        (
            Direction::Ingress,
            eth_ipv4_tcp(PEER, POD, 40001, DENIED_PORT, 0x02),
            false,
        ),
        // A UDP packet of no flow, denied.
        (
            Direction::Ingress,
            eth_ipv4_udp(PEER, POD, 40001, DENIED_PORT),
            false,
        ),
        // An allowed SYN, repeated: each run takes the policy path and overwrites the entry
        // the run before wrote (a reused tuple).
        (
            Direction::Ingress,
            eth_ipv4_tcp(PEER, POD, 40002, ALLOWED_PORT, 0x02),
            true,
        ),
        (Direction::Ingress, arp, true),
    ]
}

/// One round's ns per run of each repeated path, then the floor.
type Sample = [f64; 7];

/// Open the flow the established and reply paths measure.
fn prepare(dp: &Datapath) -> Result<()> {
    let syn = eth_ipv4_tcp(PEER, POD, 40000, ALLOWED_PORT, 0x02);
    anyhow::ensure!(
        dp.test_run(Direction::Ingress, &syn, 1)?.pass,
        "allowed flow denied"
    );
    Ok(())
}

/// One round of the repeated paths, `repeat` runs each.
fn measure_round(dp: &mut Datapath, repeat: u32) -> Result<Sample> {
    let mut sample = [f64::NAN; 7];
    let paths = repeated_paths();
    for (i, (dir, frame, pass)) in paths.iter().enumerate() {
        let o = dp.test_run(*dir, frame, repeat)?;
        anyhow::ensure!(
            o.pass == *pass,
            "path {i}: verdict {} expected {pass}",
            o.pass
        );
        sample[i] = o.ns_per_run as f64;
    }
    if let Some(p) = dp.bpf.program_mut(FLOOR) {
        let prog: &mut SchedClassifier = p.try_into()?;
        if prog.fd().is_err() {
            prog.load().context("load netward_floor")?;
        }
        let arp = &paths[5].1;
        sample[6] = run_classifier(prog, arp, repeat, Origin::Forwarded)?.ns_per_run as f64;
    }
    Ok(sample)
}

/// The repeated paths of every datapath, `repeat` runs each in [`ROUNDS`] rounds that visit
/// every build and size in turn: each figure is the median of its rounds. A burst of other
/// work on this noisy machine (seconds long at times, moving single runs by up to 40 %)
/// then falls on one round of every datapath, not on every path of one size.
fn measure_repeated(measured: &mut [(BenchRow, Datapath)], opts: &BenchOptions) -> Result<()> {
    let part = (opts.repeat / ROUNDS).max(1);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); measured.len()];
    for round in 0..ROUNDS {
        for i in in_turn(round, measured.len()) {
            samples[i].push(measure_round(&mut measured[i].1, part)?);
        }
    }
    for ((row, _), s) in measured.iter_mut().zip(samples) {
        let median = |i: usize| {
            let mut v: Vec<f64> = s.iter().map(|x| x[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        row.established = median(0);
        row.reply = median(1);
        row.new_flow = median(2);
        row.new_flow_udp = median(3);
        row.new_flow_allowed_reused = median(4);
        row.non_ip = median(5);
        row.floor = median(6);
    }
    Ok(())
}

/// The rows as a Markdown table, with the spread across sizes and the targets.
pub fn table(rows: &[BenchRow], repeat: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "BPF_PROG_TEST_RUN, ns per packet (repeat {repeat}; allowed new flows: one run each, kernel run-time stats)\n");
    let _ = writeln!(s, "| build | policy entries | established | reply | new flow, TCP SYN (policy path) | new flow, UDP (ct miss + policy path) | allowed SYN, reused tuple (+ct overwrite) | new flow allowed (+ct insert, cold) | the reused tuple, cold (one run each, as the insert) | non-IP | test-run floor |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.build,
            r.policy_entries,
            r.established,
            r.reply,
            r.new_flow,
            r.new_flow_udp,
            r.new_flow_allowed_reused,
            r.new_flow_allowed,
            r.new_flow_allowed_single,
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
