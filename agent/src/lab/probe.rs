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
//! every address family both pods have (dual-stack pods over IPv4 and IPv6), one report per
//! family; pairs without a common family are left out.
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

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::IPv4
        } else {
            Family::IPv6
        }
    }

    pub const ALL: [Family; 2] = [Family::IPv4, Family::IPv6];
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub from: String,
    pub to: String,
    pub observed: bool,
    pub predicted: bool,
}

/// One port's result over one address family: `matrix` is what real packets did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
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
            for dst in &to.ips {
                if let Some(src) = from.ips.iter().find(|s| s.is_ipv4() == dst.is_ipv4()) {
                    jobs.push(Job {
                        from,
                        to,
                        src: *src,
                        dst: *dst,
                    });
                }
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
/// `cluster` (every lab pod is local to this node): one report per address family probed,
/// IPv4 first.
pub fn probe(
    state: &LabState,
    cluster: &Cluster,
    target: Target,
    destinations: Option<&[String]>,
    opts: Options,
) -> Result<Vec<Report>> {
    let observations = observe(state, target, destinations, opts);
    Ok(Family::ALL
        .into_iter()
        .filter_map(|family| {
            let of_family: Vec<Observation> = observations
                .iter()
                .filter(|o| Family::of(o.dst) == family)
                .cloned()
                .collect();
            (!of_family.is_empty()).then(|| compare(cluster, target, family, &of_family))
        })
        .collect())
}

/// Put observations (of one address family) next to the predicted verdicts of the same flows.
pub fn compare(
    cluster: &Cluster,
    target: Target,
    family: Family,
    observations: &[Observation],
) -> Report {
    let plan = crate::compiler::compile(cluster, None);
    let mut report = Report {
        port: target.port,
        protocol: target.protocol,
        family,
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

/// One Service port on one virtual address, probed from every pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceReport {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// `from -> reached`: reached on every attempt (a Service with several endpoints is
    /// probed several times, each a new connection the rules send to a random endpoint).
    pub observed: BTreeMap<String, bool>,
    /// `from -> allowed`: the spec evaluator with the virtual address as destination (the
    /// client's egress), and every endpoint's ingress for the rewritten connection.
    pub predicted: BTreeMap<String, bool>,
    /// Pods that reached it on some attempts only (some endpoints reachable, others not).
    pub partial: Vec<String>,
    /// Pods whose connections are predicted to reach some endpoints but not others (egress
    /// allowed, the endpoints' ingress split): any observation is consistent with that.
    pub may_vary: Vec<String>,
    pub differences: Vec<ServiceDifference>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceDifference {
    pub from: String,
    pub observed: bool,
    pub predicted: bool,
    pub partial: bool,
}

/// Probe every TCP and UDP port of every Service on each of its virtual addresses, from
/// every lab pod with an address of that family, and compare with the spec evaluator.
///
/// Not probed: a pod that is itself an endpoint of the Service (its connection would come
/// back to it hairpinned, which kube-proxy masquerades: the node would see the node's address,
/// not the pod's), and SCTP ports (an INIT is observed in the destination pod, which the
/// random choice hides).
pub fn probe_services(state: &LabState, cluster: &Cluster, opts: Options) -> Vec<ServiceReport> {
    struct SvcJob<'a> {
        report: usize,
        from: &'a LabPod,
        src: IpAddr,
        attempts: usize,
    }
    let mut reports = Vec::new();
    let mut jobs = Vec::new();
    for s in &cluster.services {
        let endpoints: Vec<IpAddr> = s.endpoints.iter().map(|e| e.ip).collect();
        for p in s.ports.iter().filter(|p| p.protocol != Protocol::Sctp) {
            let backends: Vec<IpAddr> = s.backends(p).map(|(ip, _)| ip).collect();
            for vip in &s.vips {
                let n = backends
                    .iter()
                    .filter(|b| b.is_ipv4() == vip.is_ipv4())
                    .count();
                let report = reports.len();
                reports.push(ServiceReport {
                    service: s.key(),
                    port_name: p.name.clone(),
                    vip: *vip,
                    port: p.port,
                    protocol: p.protocol,
                    observed: BTreeMap::new(),
                    predicted: BTreeMap::new(),
                    partial: Vec::new(),
                    may_vary: Vec::new(),
                    differences: Vec::new(),
                });
                for from in &state.pods {
                    if from.ips.iter().any(|ip| endpoints.contains(ip)) {
                        continue;
                    }
                    if let Some(src) = from.ips.iter().find(|ip| ip.is_ipv4() == vip.is_ipv4()) {
                        jobs.push(SvcJob {
                            report,
                            from,
                            src: *src,
                            attempts: if n > 1 { 3 } else { 1 },
                        });
                    }
                }
            }
        }
    }
    // (reached on every attempt, reached on some)
    let results = run_bounded(&jobs, opts.concurrency, |j| {
        let r = &reports[j.report];
        let dst = SocketAddr::new(r.vip, r.port);
        let Ok(_in) = netns::enter(&j.from.netns) else {
            return (false, false);
        };
        let mut reached = 0;
        for attempt in 0..j.attempts {
            let ok = match r.protocol {
                Protocol::Tcp => tcp(dst, opts.timeout),
                _ => udp(dst, opts.timeout),
            };
            reached += usize::from(ok);
            if reached > 0 && reached <= attempt {
                break; // both outcomes seen
            }
        }
        (reached > 0 && reached == j.attempts, reached > 0)
    });
    for (j, (all, some)) in jobs.iter().zip(results) {
        let r = &mut reports[j.report];
        let flow = Flow {
            src: j.src,
            dst: r.vip,
            protocol: r.protocol.number(),
            port: r.port,
        };
        let (predicted, may_vary) = predict_service(cluster, &flow);
        let partial = some && !all;
        r.observed.insert(j.from.key.clone(), all);
        r.predicted.insert(j.from.key.clone(), predicted);
        if partial {
            r.partial.push(j.from.key.clone());
        }
        if may_vary {
            r.may_vary.push(j.from.key.clone());
        } else if partial || all != predicted {
            r.differences.push(ServiceDifference {
                from: j.from.key.clone(),
                observed: all,
                predicted,
                partial,
            });
        }
    }
    reports
}

/// What a connection to a Service virtual address should do: (reaches whichever endpoint it
/// is sent to, may reach some endpoints only). The client's egress is the spec evaluator's
/// verdict on the virtual address; each endpoint's ingress then sees the rewritten connection
/// (endpoint address, target port), which kube-proxy sends to one endpoint at random.
pub fn predict_service(cluster: &Cluster, flow: &Flow) -> (bool, bool) {
    let egress = eval::spec::evaluate(cluster, None, flow).allowed();
    let Some(protocol) = Protocol::from_number(flow.protocol) else {
        return (false, false);
    };
    let Some((svc, port)) = cluster.service_port(flow.dst, protocol, flow.port) else {
        return (egress, false);
    };
    let ingress: Vec<bool> = svc
        .backends(port)
        .filter(|(ip, _)| ip.is_ipv4() == flow.dst.is_ipv4())
        .map(|(ip, target)| {
            let rewritten = Flow {
                dst: ip,
                port: target,
                ..*flow
            };
            eval::spec::evaluate(cluster, None, &rewritten)
                .ingress
                .allows()
        })
        .collect();
    let all = !ingress.is_empty() && ingress.iter().all(|a| *a);
    let some = ingress.iter().any(|a| *a);
    (egress && all, egress && some && !all)
}
