//! `cargo xtask bench lab`: what enforcement costs real traffic between two lab pods.
//!
//! One run measures, side by side, iperf3 TCP throughput (one stream), a short-connection
//! rate (connect, 1-byte request, 1-byte response, close; a small Rust client and server) and
//! an exchange rate on one persistent connection (1 byte each way, no Nagle: a long-lived
//! flow's small packets) from a client pod to a server pod under:
//! * no program (the lab without its daemon), measured first and last;
//! * the tc hook floor: a program that returns at once (`netward_floor`) on both hooks of
//!   both pods' veths, what any tc program costs before it does anything;
//! * netward with 0 rules and with N ingress rules on the server (N ipBlock /32 peers that
//!   never match, then the rule that admits the client), and with the largest N again under
//!   a restarted daemon, with the per-CPU flow cache off (`--flow-cache-slots 0`) and on,
//!   and with `--baseline-netward PATH` under that build's daemon (an older release);
//! * the equivalent iptables ruleset in the FORWARD path: linear rules (conntrack
//!   ESTABLISHED accept, N source rules, the client rule, drop), and ipset-based as
//!   kube-router does (one hash:net set holding the N sources and the client).
//!
//! For each netward configuration, one more second of connections and one of exchanges run
//! with the kernel's BPF run-time statistics on: the programs' own time per connection and
//! per exchange, free of the rates' noise.
//!
//! Every figure is paired with a control: a second lab of the same shape (client and server
//! pods, routed veths in the root namespace) that no program and no rule ever touches. Each
//! configuration's connection and exchange rates alternate between the measured pair and the
//! control in short slices (control, measured, measured, control, ...), so both see the same
//! moments of this noisy machine, and its ratio is measured / control over those slices. The
//! two iperf3 streams run at once instead, sharing the CPU (see [`iperf_together`]). The no-program rows (the
//! measured pair with nothing attached, first and last) show what the pairing itself reads
//! as: about 1.00 when the two pairs are alike.
//!
//! The node keeps netfilter conntrack on for its forwarded traffic, as kube-proxy's rules do
//! on every Kubernetes node (`--bare-node`: off; see [`NodeConntrack`]).
//!
//! Everything runs on one CPU (`--cpu N`, default the last one; `--no-pin` lets the
//! scheduler place it): client, servers, iperf3, the daemon and the packets' softirq work.
//! Then every cost lies on the connection's path, none hides on an idle CPU, and the run is
//! free of the scheduler's placement, which on two CPUs moved single runs by +-10 %.
//!
//! The lab's `netward` (daemon, servers) is a `--release` build ([`use_release_binary`]).
//! The whole sequence runs `--rounds` times (default 3); the table gives each
//! configuration's median ratio and the range over rounds. iptables rules live in a chain of
//! their own, reached only for packets to the server's veth, and are removed afterwards.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netward::cpustat::{steal_note, CpuTimes};
use netward::lab::process::{self, Role};
use netward::lab::{daemon, netns, LabPod};
use netward_tests::lab::{
    is_root, namespace_yaml, netward_bin, pod_yaml, use_release_binary, ManifestDir, TestLab,
};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

const CONN_PORT: u16 = 7777;
const ECHO_PORT: u16 = 7778;
const IPERF_PORT: u16 = 5201;
const CLIENT: &str = "10.230.0.1";
const SERVER: &str = "10.230.0.2";
/// The control pair's addresses.
const CONTROL_CLIENT: &str = "10.230.1.1";
const CONTROL_SERVER: &str = "10.230.1.2";
/// One slice of a paired rate measurement.
const SLICE: Duration = Duration::from_millis(500);

/// A client pod and its server pod.
struct Pair {
    client: LabPod,
    server: LabPod,
}

impl Pair {
    /// The address the client connects to.
    fn server_addr(&self) -> std::net::IpAddr {
        self.server.ips[0]
    }
}

struct Args {
    seconds: u64,
    conn_seconds: u64,
    sizes: Vec<usize>,
    rounds: u32,
    /// Another build's `netward` whose daemon also runs the largest Plan.
    baseline: Option<PathBuf>,
    /// Run everything (clients, servers, iperf3, the daemon, the packets' softirq work) on
    /// this one CPU; `None`: wherever the scheduler puts it.
    cpu: Option<usize>,
    /// Leave netfilter conntrack off for the node's forwarded traffic (see [`NodeConntrack`]).
    bare_node: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        seconds: 4,
        conn_seconds: 3,
        sizes: vec![1_000, 10_000],
        rounds: 3,
        baseline: None,
        cpu: Some(last_cpu()?),
        bare_node: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--conn-seconds" => a.conn_seconds = it.next().context("--conn-seconds N")?.parse()?,
            "--sizes" => {
                a.sizes = it
                    .next()
                    .context("--sizes N,M")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => a.rounds = it.next().context("--rounds N")?.parse()?,
            "--baseline-netward" => {
                let p = PathBuf::from(it.next().context("--baseline-netward PATH")?);
                anyhow::ensure!(
                    p.is_file(),
                    "--baseline-netward {}: no such file",
                    p.display()
                );
                a.baseline = Some(p);
            }
            "--cpu" => a.cpu = Some(it.next().context("--cpu N")?.parse()?),
            "--no-pin" => a.cpu = None,
            "--bare-node" => a.bare_node = true,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// The highest-numbered CPU this process may run on.
fn last_cpu() -> Result<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    (0..CpuSet::count())
        .rev()
        .find(|&c| set.is_set(c).unwrap_or(false))
        .context("no CPU in this process's affinity mask")
}

/// Confine this process, and every thread and process it starts from now on, to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// The i-th never-matching source of the synthetic rulesets.
fn decoy(i: usize) -> String {
    format!("172.16.{}.{}", (i / 250) % 250, i % 250 + 1)
}

fn policy_yaml(rules: usize) -> String {
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: bench, name: server}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n",
    );
    let ports = format!(
        "    ports: [{{port: {IPERF_PORT}}}, {{port: {CONN_PORT}}}, {{port: {ECHO_PORT}}}]\n"
    );
    for i in 0..rules {
        y.push_str(&format!(
            "  - from: [{{ipBlock: {{cidr: {}/32}}}}]\n",
            decoy(i)
        ));
        y.push_str(&ports);
    }
    y.push_str("  - from: [{podSelector: {matchLabels: {app: client}}}]\n");
    y.push_str(&ports);
    y
}

/// A listener on `port` inside `pod`.
fn listen_in(pod: &LabPod, port: u16) -> Result<TcpListener> {
    let _in = netns::enter(&pod.netns)?;
    Ok(TcpListener::bind(("0.0.0.0", port))?)
}

/// Short-connection server: read 1 byte, answer 1 byte, close.
fn conn_server(pod: &LabPod) -> Result<()> {
    let listener = listen_in(pod, CONN_PORT)?;
    for _ in 0..2 {
        let l = listener.try_clone()?;
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
    }
    Ok(())
}

/// Persistent-connection server: echo every byte back until the client closes.
fn echo_server(pod: &LabPod) -> Result<()> {
    let listener = listen_in(pod, ECHO_PORT)?;
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut b = [0u8; 1];
                while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
            });
        }
    });
    Ok(())
}

/// 1-byte exchanges per second over one connection for `time` (what a
/// long-lived flow's packets cost, where the short-connection rate is mostly new flows).
fn pingpong_rate(p: &Pair, time: Duration) -> Result<f64> {
    let _in = netns::enter(&p.client.netns)?;
    let dst = SocketAddr::new(p.server_addr(), ECHO_PORT);
    let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(1))
        .context("echo connection refused or dropped")?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(1)))?;
    per_second(time, || {
        let mut b = [0u8; 1];
        c.write_all(b"x")?;
        c.read_exact(&mut b).context("echo dropped")?;
        Ok(())
    })
}

/// Connections per second from the pair's client for `time`.
fn conn_rate(p: &Pair, time: Duration) -> Result<f64> {
    let _in = netns::enter(&p.client.netns)?;
    let dst = SocketAddr::new(p.server_addr(), CONN_PORT);
    per_second(time, || {
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(1))
            .context("short connection refused or dropped")?;
        c.write_all(b"x")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
        Ok(())
    })
}

/// How many times a second `step` runs, back to back, for `time`.
fn per_second(time: Duration, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let end = start + time;
    let mut n = 0u64;
    while Instant::now() < end {
        step()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Kernel run-time totals of the loaded netward programs (both hooks of every veth).
fn program_totals() -> Result<(u64, u64)> {
    let (mut ns, mut runs) = (0u64, 0u64);
    for p in aya::programs::loaded_programs() {
        let p = p.context("list BPF programs")?;
        if p.name_as_str().is_some_and(|n| n.starts_with("netward_")) {
            ns += p.run_time().as_nanos() as u64;
            runs += p.run_count();
        }
    }
    Ok((ns, runs))
}

/// What netward's programs cost one unit of `rate` (a short connection, an exchange), from
/// the kernel's run-time statistics over `secs` of it: (ns per unit, program runs per unit).
/// Measured apart from the rates themselves, as the statistics add two clock reads to every
/// run.
fn program_cost(p: &Pair, time: Duration, rate: Rate) -> Result<(f64, f64)> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let (ns0, runs0) = program_totals()?;
    let per_s = rate(p, time)?;
    let (ns1, runs1) = program_totals()?;
    let units = (per_s * time.as_secs_f64()).max(1.0);
    Ok(((ns1 - ns0) as f64 / units, (runs1 - runs0) as f64 / units))
}

/// A rate measured over a pair for a while: units per second.
type Rate = fn(&Pair, Duration) -> Result<f64>;

/// `rate` of `measured` and of `control` over `slices` slices of `slice` each, alternating
/// (control, measured, measured, control, ...): the mean rate of each.
fn paired(
    measured: &Pair,
    control: &Pair,
    slices: u32,
    slice: Duration,
    rate: Rate,
) -> Result<(f64, f64)> {
    let (mut m, mut c) = (0.0, 0.0);
    for i in 0..slices.max(1) {
        let first_control = i % 2 == 0;
        for is_control in [first_control, !first_control] {
            if is_control {
                c += rate(control, slice)?;
            } else {
                m += rate(measured, slice)?;
            }
        }
    }
    let n = slices.max(1) as f64;
    Ok((m / n, c / n))
}

/// iperf3 throughput of `measured` and of `control`, one stream each for `time`, both at
/// once: (measured, control) bits per second. On one CPU the two streams share it (the
/// scheduler gives the two senders equal time, and each sender's packets are processed in
/// its own context), so the ratio is the ratio of what a byte costs on each path. Run apart,
/// in alternating slices, each stream restarted its slow start and ran alone with whatever
/// else the machine did then: no-program ratios of 0.91-1.05; at once, two untouched pairs
/// read 0.98-1.00.
fn iperf_together(measured: &Pair, control: &Pair, time: Duration) -> Result<(f64, f64)> {
    std::thread::scope(|s| {
        let c = s.spawn(|| iperf(control, time));
        let m = iperf(measured, time);
        let c = c
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))?;
        Ok((m?, c?))
    })
}

/// iperf3 throughput, bits per second, one stream for `time` (whole seconds, at least 1).
fn iperf(p: &Pair, time: Duration) -> Result<f64> {
    let secs = time.as_secs().max(1);
    let out = Command::new("ip")
        .args(["netns", "exec", &p.client.netns, "iperf3", "-c"])
        .arg(p.server_addr().to_string())
        .args(["-p", &IPERF_PORT.to_string(), "-t", &secs.to_string(), "-J"])
        .output()
        .context("iperf3 client")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if !out.status.success() {
        bail!("iperf3: {}", v["error"]);
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 bits_per_second")
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn restore(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| program.to_string())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Remove `chain` and its jump from FORWARD (the jump's match `matching`), if present.
fn remove_chain(chain: &str, matching: &[&str]) {
    let _ = sh(Command::new("iptables")
        .args(["-D", "FORWARD"])
        .args(matching)
        .args(["-j", chain]));
    let _ = sh(Command::new("iptables").args(["-F", chain]));
    let _ = sh(Command::new("iptables").args(["-X", chain]));
}

const CHAIN: &str = "NWBENCH";
const SET: &str = "nwbench-src";

/// An iptables ruleset in the server's forward path; removed when dropped.
struct Iptables {
    veth: String,
}

impl Iptables {
    fn install(veth: &str, rules: usize, ipset: bool) -> Result<Self> {
        let me = Iptables { veth: veth.into() };
        me.remove();
        let dports = format!("-p tcp -m multiport --dports {IPERF_PORT},{CONN_PORT},{ECHO_PORT}");
        let mut t = format!("*filter\n:{CHAIN} - [0:0]\n");
        t.push_str(&format!(
            "-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
        ));
        if ipset {
            let mut s = format!("create {SET} hash:net maxelem {}\n", rules + 16);
            for i in 0..rules {
                s.push_str(&format!("add {SET} {}/32\n", decoy(i)));
            }
            s.push_str(&format!("add {SET} {CLIENT}/32\n"));
            restore("ipset", &["restore"], &s)?;
            t.push_str(&format!(
                "-A {CHAIN} -m set --match-set {SET} src {dports} -j ACCEPT\n"
            ));
        } else {
            for i in 0..rules {
                t.push_str(&format!(
                    "-A {CHAIN} -s {}/32 {dports} -j ACCEPT\n",
                    decoy(i)
                ));
            }
            t.push_str(&format!("-A {CHAIN} -s {CLIENT}/32 {dports} -j ACCEPT\n"));
        }
        t.push_str(&format!(
            "-A {CHAIN} -j DROP\n-I FORWARD 1 -o {veth} -j {CHAIN}\nCOMMIT\n"
        ));
        restore("iptables-restore", &["--noflush"], &t)?;
        Ok(me)
    }

    fn remove(&self) {
        remove_chain(CHAIN, &["-o", &self.veth]);
        let _ = sh(Command::new("ipset").args(["destroy", SET]));
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        self.remove();
    }
}

const NODE_CHAIN: &str = "NWBENCH-NODE";

/// Netfilter conntrack on for every forwarded packet, as on any Kubernetes node: kube-proxy's
/// `KUBE-FORWARD` chain drops conntrack-INVALID packets, which keeps conntrack tracking all
/// forwarded traffic. Without it the node tracks nothing, until the iptables rulesets' own
/// conntrack rule switches it on for the whole node, the control pair included: their
/// ratios would then hide that cost, and every configuration would be measured against a
/// node no cluster runs. Removed when dropped.
struct NodeConntrack;

impl NodeConntrack {
    fn install() -> Result<Self> {
        Self::remove();
        restore(
            "iptables-restore",
            &["--noflush"],
            &format!(
                "*filter\n:{NODE_CHAIN} - [0:0]\n-A {NODE_CHAIN} -m conntrack --ctstate INVALID -j DROP\n-A FORWARD -j {NODE_CHAIN}\nCOMMIT\n"
            ),
        )?;
        Ok(NodeConntrack)
    }

    fn remove() {
        remove_chain(NODE_CHAIN, &[]);
    }
}

impl Drop for NodeConntrack {
    fn drop(&mut self) {
        Self::remove();
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One configuration's figures in one round: the measured pair's and the control's, from the
/// same alternating slices.
struct Row {
    config: String,
    /// Throughput, bits per second: (measured, control).
    bps: (f64, f64),
    /// Short connections per second: (measured, control).
    cps: (f64, f64),
    /// 1-byte exchanges per second on one connection: (measured, control).
    eps: (f64, f64),
    /// netward's programs per connection: (ns, runs); `None` when no netward is attached.
    cost: Option<(f64, f64)>,
    /// netward's programs per exchange: (ns, runs).
    exchange_cost: Option<(f64, f64)>,
}

/// The whole sequence once: no program, netward (0 rules, then each size), iptables linear
/// and ipset (each size), no program again.
fn one_round(
    a: &Args,
    lab: &TestLab,
    dir: &ManifestDir,
    pair: &Pair,
    control: &Pair,
) -> Result<Vec<Row>> {
    let server = &pair.server;
    let mut rows = Vec::new();
    let mut measure = |config: String| -> Result<()> {
        // iperf3 streams at once (see `iperf_together`), the rates in alternating slices.
        let bps = iperf_together(pair, control, Duration::from_secs(a.seconds.max(1)))?;
        let slices = (a.conn_seconds * 2) as u32;
        let cps = paired(pair, control, slices, SLICE, conn_rate)?;
        let eps = paired(pair, control, slices, SLICE, pingpong_rate)?;
        let (cost, exchange_cost) = if config.starts_with("netward") {
            let second = Duration::from_secs(1);
            (
                Some(program_cost(pair, second, conn_rate)?),
                Some(program_cost(pair, second, pingpong_rate)?),
            )
        } else {
            (None, None)
        };
        eprintln!(
            "{config:44} {:6.2} Gbit/s ({:4.2}) {:7.0} conn/s ({:4.2}) {:7.0} exchanges/s ({:4.2})",
            bps.0 / 1e9,
            bps.0 / bps.1,
            cps.0,
            cps.0 / cps.1,
            eps.0,
            eps.0 / eps.1,
        );
        rows.push(Row {
            config,
            bps,
            cps,
            eps,
            cost,
            exchange_cost,
        });
        Ok(())
    };
    measure("no program".into())?;
    {
        // What any tc program costs this traffic before it does anything.
        let _floor = netward::datapath::bench::attach_floor(
            &[&pair.client.host_veth, &server.host_veth],
            PathBuf::from("/sys/fs/bpf/netward-bench-floor"),
        )?;
        measure("tc hook floor (a program that returns at once)".into())?;
    }

    process::spawn(&netward_bin(), Role::Daemon, &lab.name, &[])?;
    measure("netward, 0 rules".into())?;
    for &n in &a.sizes {
        let before = daemon::applied(&lab.name);
        dir.write("policy.yaml", &policy_yaml(n));
        let deadline = Instant::now() + Duration::from_secs(120);
        while daemon::applied(&lab.name) <= before {
            if Instant::now() > deadline {
                bail!("netward did not apply {n} rules within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        measure(format!("netward, {n} rules"))?;
    }
    // The largest Plan again, with the flow cache off and on, each under a daemon started
    // afresh over the pinned Plan (which stays in force): the two differ only in the cache.
    if let Some(n) = a.sizes.iter().max() {
        let default_slots = netward_common::FLOW_CACHE_DEFAULT_SLOTS.to_string();
        for (label, slots) in [("flow cache off", "0"), ("flow cache on", &*default_slots)] {
            process::stop(Role::Daemon, &lab.name, Duration::from_secs(5))?;
            let args = ["--flow-cache-slots".to_string(), slots.to_string()];
            process::spawn(&netward_bin(), Role::Daemon, &lab.name, &args)?;
            measure(format!("netward, {n} rules, restarted, {label}"))?;
        }
        if let Some(old) = &a.baseline {
            // Its daemon takes over the pinned maps and links as in a downgrade; the next
            // round's daemon (this build) takes them back as in an upgrade.
            process::stop(Role::Daemon, &lab.name, Duration::from_secs(5))?;
            process::spawn(old, Role::Daemon, &lab.name, &[])?;
            measure(format!("netward, {n} rules, restarted, baseline build"))?;
        }
    }
    // Back to no program: stop the daemon and unpin (the links detach).
    process::stop(Role::Daemon, &lab.name, Duration::from_secs(5))?;
    std::fs::remove_dir_all(lab.name.pin_dir()).context("unpinning")?;
    dir.remove("policy.yaml");

    for &n in &a.sizes {
        let _rules = Iptables::install(&server.host_veth, n, false)?;
        measure(format!("iptables linear, {n} rules"))?;
    }
    for &n in &a.sizes {
        let _rules = Iptables::install(&server.host_veth, n, true)?;
        measure(format!("iptables + ipset, {n} rules"))?;
    }
    measure("no program (again)".into())?;
    Ok(rows)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per configuration: median absolute figures of the measured pair, and the median and range
/// over rounds of its ratio to the control pair in the same slices.
fn print_table(rounds: &[Vec<Row>]) {
    let ratios = |i: usize, f: fn(&Row) -> (f64, f64)| -> Vec<f64> {
        rounds
            .iter()
            .map(|r| {
                let (m, c) = f(&r[i]);
                m / c
            })
            .collect()
    };
    println!(
        "\n{} round(s); ratios to the control pair in the same slices: median (min-max)\n",
        rounds.len()
    );
    println!(
        "| configuration | TCP throughput (Gbit/s) | ratio | connections/s | ratio | program ns / connection | runs / connection | exchanges/s (one connection) | ratio | program ns / exchange | runs / exchange |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let range_p = |v: &[f64], p: usize| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        format!("{:.p$} ({lo:.p$}-{hi:.p$})", median(v.to_vec()))
    };
    let range = |v: &[f64]| range_p(v, 2);
    // "ns (min-max) | runs" over the rounds, or dashes where no netward ran.
    let cost = |i: usize, f: fn(&Row) -> Option<(f64, f64)>| -> String {
        let c: Vec<(f64, f64)> = rounds.iter().filter_map(|r| f(&r[i])).collect();
        if c.is_empty() {
            return "- | -".into();
        }
        let ns: Vec<f64> = c.iter().map(|x| x.0).collect();
        let runs = median(c.iter().map(|x| x.1).collect());
        format!("{} | {runs:.1}", range_p(&ns, 0))
    };
    for (i, row) in rounds[0].iter().enumerate() {
        let col = |f: fn(&Row) -> (f64, f64)| median(rounds.iter().map(|r| f(&r[i]).0).collect());
        println!(
            "| {} | {:.2} | {} | {:.0} | {} | {} | {:.0} | {} | {} |",
            row.config,
            col(|x| x.bps) / 1e9,
            range(&ratios(i, |x| x.bps)),
            col(|x| x.cps),
            range(&ratios(i, |x| x.cps)),
            cost(i, |x| x.cost),
            col(|x| x.eps),
            range(&ratios(i, |x| x.eps)),
            cost(i, |x| x.exchange_cost),
        );
    }
}

/// Bring up a two-pod lab `name` (client, server at `addrs`) without any enforcement, its
/// client tuned for many short connections and its servers listening.
fn two_pod_lab(name: &str, addrs: (&str, &str)) -> Result<(TestLab, ManifestDir, Pair)> {
    let dir = ManifestDir::new(name);
    dir.write(
        "pods.yaml",
        &[
            namespace_yaml(name, &[]),
            pod_yaml(
                &format!("{name}/client"),
                &[("app", "client")],
                &[addrs.0],
                &[],
            ),
            pod_yaml(
                &format!("{name}/server"),
                &[("app", "server")],
                &[addrs.1],
                &[],
            ),
        ]
        .concat(),
    );
    let files = vec![dir.path.clone()];
    let cluster = netward::lab::load_manifests(&files, |_| {})?;
    let lab = TestLab::up(name, &files, &cluster, false)?;
    let client = lab.pod(&format!("{name}/client")).clone();
    let server = lab.pod(&format!("{name}/server")).clone();
    for (k, v) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65000"),
    ] {
        sh(Command::new("ip").args([
            "netns",
            "exec",
            &client.netns,
            "sysctl",
            "-qw",
            &format!("{k}={v}"),
        ]))?;
    }
    conn_server(&server)?;
    echo_server(&server)?;
    Ok((lab, dir, Pair { client, server }))
}

fn iperf_server(pod: &LabPod) -> Result<KillOnDrop> {
    Ok(KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &pod.netns, "iperf3", "-s"])
            .args(["-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

fn main() -> Result<()> {
    let a = args()?;
    if !is_root() {
        bail!("the lab benchmark needs root (network namespaces, BPF, iptables)");
    }
    // The daemon and servers are part of what is measured: an optimised build of them.
    let bin = use_release_binary();
    eprintln!("netward binary: {}", bin.display());
    if let Some(cpu) = a.cpu {
        // Before any thread or child exists, so all inherit it.
        pin_to(cpu)?;
        eprintln!("pinned to CPU {cpu}");
    }
    let (lab, dir, pair) = two_pod_lab("bench", (CLIENT, SERVER))?;
    // The control: never enforced, never in a rule.
    let (_control_lab, _control_dir, control) =
        two_pod_lab("benchctl", (CONTROL_CLIENT, CONTROL_SERVER))?;
    let _iperf_servers = [iperf_server(&pair.server)?, iperf_server(&control.server)?];
    let _conntrack = if a.bare_node {
        eprintln!("bare node: netfilter conntrack off until an iptables ruleset needs it");
        None
    } else {
        Some(NodeConntrack::install()?)
    };
    std::thread::sleep(Duration::from_millis(500));

    let start = CpuTimes::now()?;
    let mut rounds = Vec::new();
    for round in 1..=a.rounds.max(1) {
        eprintln!("round {round} of {}", a.rounds.max(1));
        rounds.push(one_round(&a, &lab, &dir, &pair, &control)?);
    }
    print_table(&rounds);
    println!("\n{}", steal_note(&start));
    Ok(())
}
