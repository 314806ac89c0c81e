//! `lab probe`: real connections from every lab pod to every lab pod, next to the verdicts
//! the compiler and plan evaluator predict for the same flows.
//!
//! What counts as reached, per protocol (each probe is a new flow from a fresh port):
//! * TCP: the connection opened and the server's answer came back, or the destination
//!   refused it (a RST from the destination kernel is a reply: the SYN arrived).
//! * UDP: the echo came back, or an ICMP port-unreachable did (the datagram arrived).
//! * SCTP: the INIT arrived in the destination pod (observed there by a raw listener).
//!
//! A pod probing itself never leaves its namespace, so no node datapath can see it (as in a
//! cluster); those cells are not probed and appear in neither matrix. A pair is probed over
//! the first address family both pods have; pairs without one are left out.
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{netns, sctp, LabPod, LabState};
use crate::eval::{self, Flow};
use crate::model::{Cluster, Protocol};

/// A destination port to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long one probe waits for its answer.
    pub timeout: Duration,
    /// Probes in flight at once.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_millis(800),
            concurrency: 32,
        }
    }
}

/// `from -> to -> reached`, the shape of `netward matrix`.
pub type Matrix = BTreeMap<String, BTreeMap<String, bool>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub from: String,
    pub to: String,
    pub observed: bool,
    pub predicted: bool,
}

/// One port's result: `matrix` is what real packets did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub port: u16,
    pub protocol: Protocol,
    pub matrix: Matrix,
    pub predicted: Matrix,
    pub differences: Vec<Difference>,
}

/// The distinct declared ports of the lab's pods, each with the pods declaring it.
pub fn declared_targets(state: &LabState) -> Vec<(Target, Vec<String>)> {
    let mut map: BTreeMap<Target, Vec<String>> = BTreeMap::new();
    for pod in &state.pods {
        for p in &pod.ports {
            map.entry(Target {
                port: p.port,
                protocol: p.protocol,
            })
            .or_default()
            .push(pod.key.clone());
        }
    }
    map.into_iter().collect()
}

/// One probed pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observation {
    pub from: String,
    pub to: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub reached: bool,
}

struct Job<'a> {
    from: &'a LabPod,
    to: &'a LabPod,
    src: IpAddr,
    dst: IpAddr,
}

/// Probe `target` with real packets from every pod to each pod in `destinations` (all pods
/// when None).
pub fn observe(
    state: &LabState,
    target: Target,
    destinations: Option<&[String]>,
    opts: Options,
) -> Vec<Observation> {
    let mut jobs = Vec::new();
    for to in &state.pods {
        if destinations.is_some_and(|d| !d.contains(&to.key)) {
            continue;
        }
        for from in &state.pods {
            if from.key == to.key {
                continue;
            }
            let pair = to.ips.iter().find_map(|dst| {
                from.ips
                    .iter()
                    .find(|s| s.is_ipv4() == dst.is_ipv4())
                    .map(|src| (*src, *dst))
            });
            if let Some((src, dst)) = pair {
                jobs.push(Job { from, to, src, dst });
            }
        }
    }
    let results = run_bounded(&jobs, opts.concurrency, |j| {
        probe_one(j, target, opts.timeout).unwrap_or(false)
    });
    jobs.iter()
        .zip(results)
        .map(|(j, reached)| Observation {
            from: j.from.key.clone(),
            to: j.to.key.clone(),
            src: j.src,
            dst: j.dst,
            reached,
        })
        .collect()
}

/// Observe `target` and compare with what the compiler and plan evaluator predict for
/// `cluster` (every lab pod is local to this node).
pub fn probe(
    state: &LabState,
    cluster: &Cluster,
    target: Target,
    destinations: Option<&[String]>,
    opts: Options,
) -> Result<Report> {
    let observations = observe(state, target, destinations, opts);
    Ok(compare(cluster, target, &observations))
}

/// Put observations next to the predicted verdicts of the same flows.
pub fn compare(cluster: &Cluster, target: Target, observations: &[Observation]) -> Report {
    let plan = crate::compiler::compile(cluster, None);
    let mut report = Report {
        port: target.port,
        protocol: target.protocol,
        matrix: Matrix::new(),
        predicted: Matrix::new(),
        differences: Vec::new(),
    };
    for o in observations {
        let flow = Flow {
            src: o.src,
            dst: o.dst,
            protocol: target.protocol.number(),
            port: target.port,
        };
        let predicted = eval::plan::evaluate(&plan, &flow).allowed();
        report
            .matrix
            .entry(o.from.clone())
            .or_default()
            .insert(o.to.clone(), o.reached);
        report
            .predicted
            .entry(o.from.clone())
            .or_default()
            .insert(o.to.clone(), predicted);
        if o.reached != predicted {
            report.differences.push(Difference {
                from: o.from.clone(),
                to: o.to.clone(),
                observed: o.reached,
                predicted,
            });
        }
    }
    report
        .differences
        .sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    report
}

/// Probe one flow from pod `from` to `dst` (an address of pod `to`).
pub fn probe_pair(
    from: &LabPod,
    to: &LabPod,
    dst: IpAddr,
    target: Target,
    timeout: Duration,
) -> Result<bool> {
    let src = from
        .ips
        .iter()
        .copied()
        .find(|s| s.is_ipv4() == dst.is_ipv4())
        .with_context(|| format!("pod {} has no address of the family of {dst}", from.key))?;
    probe_one(&Job { from, to, src, dst }, target, timeout)
}

/// Run `f` over `items` on at most `concurrency` threads; results in input order.
pub fn run_bounded<T: Sync, R: Send + Default + Clone>(
    items: &[T],
    concurrency: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(vec![R::default(); items.len()]);
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                out.lock().expect("no panics while locked")[i] = r;
            });
        }
    });
    out.into_inner().expect("no panics while locked")
}

fn probe_one(job: &Job, target: Target, timeout: Duration) -> Result<bool> {
    let dst = SocketAddr::new(job.dst, target.port);
    match target.protocol {
        Protocol::Tcp => {
            let _in = netns::enter(&job.from.netns)?;
            Ok(tcp(dst, timeout))
        }
        Protocol::Udp => {
            let _in = netns::enter(&job.from.netns)?;
            Ok(udp(dst, timeout))
        }
        Protocol::Sctp => {
            let listener = {
                let _in = netns::enter(&job.to.netns)?;
                sctp::Listener::open()?
            };
            let tag = rand_u32() | 1;
            {
                let _in = netns::enter(&job.from.netns)?;
                sctp::send_init(dst, 32_768 + (tag % 28_000) as u16, tag)?;
            }
            Ok(listener.wait(job.src, target.port, tag, timeout))
        }
    }
}

/// TCP connect + one request/response. Call inside the source namespace.
pub fn tcp(dst: SocketAddr, timeout: Duration) -> bool {
    let mut conn = match TcpStream::connect_timeout(&dst, timeout) {
        Ok(c) => c,
        Err(e) => return e.kind() == ErrorKind::ConnectionRefused,
    };
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    if conn.write_all(b"netward-probe\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    match conn.read_to_end(&mut answer) {
        Ok(_) => !answer.is_empty(),
        Err(e) => e.kind() == ErrorKind::ConnectionReset && !answer.is_empty(),
    }
}

/// UDP request/echo, two tries. Call inside the source namespace.
pub fn udp(dst: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    if sock.connect(dst).is_err() {
        return false;
    }
    let nonce = rand_u32().to_be_bytes();
    let _ = sock.set_read_timeout(Some(timeout / 2));
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        if sock.send(&nonce).is_err() {
            return false;
        }
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == nonce => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return true,
            Err(_) => {}
        }
    }
    false
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// A human-readable table of a report: rows are sources, columns destinations; `.` reached,
/// `X` blocked, and a trailing `!` where observation and prediction differ.
pub fn table(report: &Report) -> String {
    let mut cols: Vec<&String> = report.matrix.values().flat_map(|r| r.keys()).collect();
    cols.sort();
    cols.dedup();
    let width = cols.iter().map(|c| c.len()).max().unwrap_or(4).max(4);
    let rows_w = report
        .matrix
        .keys()
        .map(|k| k.len())
        .max()
        .unwrap_or(4)
        .max(9);
    let mut out = format!(
        "{}/{} observed ('.' reached, 'X' blocked, '!' differs from prediction)\n{:rows_w$}",
        report.protocol, report.port, "from \\ to"
    );
    for c in &cols {
        out.push_str(&format!("  {c:>width$}"));
    }
    out.push('\n');
    for (from, row) in &report.matrix {
        out.push_str(&format!("{from:rows_w$}"));
        for c in &cols {
            let cell = match row.get(*c) {
                None => "-".to_string(),
                Some(&o) => {
                    let p = report.predicted.get(from).and_then(|r| r.get(*c)).copied();
                    let mut s = if o { "." } else { "X" }.to_string();
                    if p != Some(o) {
                        s.push('!');
                    }
                    s
                }
            };
            out.push_str(&format!("  {cell:>width$}"));
        }
        out.push('\n');
    }
    if report.differences.is_empty() {
        out.push_str("observed == predicted\n");
    } else {
        for d in &report.differences {
            out.push_str(&format!(
                "DIFFERS {} -> {}: observed {}, predicted {}\n",
                d.from,
                d.to,
                if d.observed { "reached" } else { "blocked" },
                if d.predicted { "allowed" } else { "denied" }
            ));
        }
    }
    out
}
