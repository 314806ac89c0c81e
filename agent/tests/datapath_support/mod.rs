//! Helpers shared by the datapath tests: unique pin directories, crafted frames, small Plans
//! written directly as map entries.
#![allow(dead_code)]

pub mod netns;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use etherparse::{IpNumber, PacketBuilder};
use netward::datapath::{Datapath, DatapathConfig};
use netward::plan::Plan;
use netward_common::*;

/// A fresh datapath with its own bpffs directory and small maps; removed on drop.
pub struct TestDp {
    pub dp: Option<Datapath>,
    pub dir: PathBuf,
}

impl std::ops::Deref for TestDp {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        self.dp.as_ref().unwrap()
    }
}
impl std::ops::DerefMut for TestDp {
    fn deref_mut(&mut self) -> &mut Datapath {
        self.dp.as_mut().unwrap()
    }
}
impl Drop for TestDp {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let _ = dp.destroy();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static N: AtomicU32 = AtomicU32::new(0);

pub fn test_config(tag: &str) -> DatapathConfig {
    let n = N.fetch_add(1, Ordering::SeqCst);
    DatapathConfig {
        bpffs_dir: PathBuf::from(format!(
            "/sys/fs/bpf/netward-test-{tag}-{}-{n}",
            std::process::id()
        )),
        ipcache_max: 1024,
        policy_max: 4096,
        endpoints_max: 1024,
        conntrack_max: 4096,
        conntrack_gc_interval: netward::datapath::DEFAULT_CONNTRACK_GC_INTERVAL,
        frags_max: 256,
        services_max: 256,
        service_policy_max: 1024,
        events_ring_bytes: 64 * 1024,
        fail_closed_unknown: false,
        events_per_sec: 1_000_000,
        events_burst: 1000,
        events_allow: true,
        direct_delivery: true,
        attach_mode: None,
        flow_cache_slots: netward_common::FLOW_CACHE_DEFAULT_SLOTS,
        decision_cache_slots: netward_common::DECISION_CACHE_DEFAULT_SLOTS,
        flow_cache_window_jiffies: netward_common::FLOW_CACHE_WINDOW_JIFFIES,
    }
}

pub fn open(cfg: DatapathConfig) -> TestDp {
    let dir = cfg.bpffs_dir.clone();
    let dp = match Datapath::open_or_create(cfg) {
        Ok(dp) => dp,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("open datapath: {e:?}");
        }
    };
    TestDp { dp: Some(dp), dir }
}

pub fn v4(s: &str) -> [u8; 4] {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets(),
        _ => panic!("not v4"),
    }
}

pub fn v6(s: &str) -> [u8; 16] {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V6(a) => a.octets(),
        _ => panic!("not v6"),
    }
}

const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// L4 of a crafted packet.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        syn: bool,
        ack: bool,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// Raw IP payload with this protocol number.
    Raw {
        proto: u8,
    },
}

pub fn tcp(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        syn: true,
        ack: false,
    }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

pub fn tcp_ack(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        syn: false,
        ack: true,
    }
}

fn sctp_header(sport: u16, dport: u16) -> Vec<u8> {
    // Common header (ports, verification tag, checksum) + an INIT chunk header.
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&[1, 0, 0, 4]);
    h
}

/// An Ethernet frame from `src` to `dst` (both v4 or both v6) carrying `l4`.
pub fn frame(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2(SMAC, DMAC);
    let b = match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let v6 = s.is_ipv6();
    let payload = [0xabu8; 8];
    let mut out = Vec::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            syn,
            ack,
        } => {
            let mut b = b.tcp(sport, dport, 1, 1000);
            if syn {
                b = b.syn();
            }
            if ack {
                b = b.ack(1);
            }
            b.write(&mut out, &payload).unwrap();
        }
        L4::Udp { sport, dport } => b.udp(sport, dport).write(&mut out, &payload).unwrap(),
        L4::Sctp { sport, dport } => b
            .write(&mut out, IpNumber(PROTO_SCTP), &sctp_header(sport, dport))
            .unwrap(),
        L4::EchoRequest { id } => {
            if v6 {
                b.icmpv6_echo_request(id, 1)
                    .write(&mut out, &payload)
                    .unwrap()
            } else {
                b.icmpv4_echo_request(id, 1)
                    .write(&mut out, &payload)
                    .unwrap()
            }
        }
        L4::EchoReply { id } => {
            if v6 {
                b.icmpv6_echo_reply(id, 1)
                    .write(&mut out, &payload)
                    .unwrap()
            } else {
                b.icmpv4_echo_reply(id, 1)
                    .write(&mut out, &payload)
                    .unwrap()
            }
        }
        L4::Raw { proto } => b.write(&mut out, IpNumber(proto), &payload).unwrap(),
    }
    out
}

/// A Plan written directly as map entries (slot 0), as the compiler would produce it.
#[derive(Default)]
pub struct PlanBuilder {
    pub plan: Plan,
}

impl PlanBuilder {
    pub fn new() -> Self {
        let mut p = PlanBuilder::default();
        // Default routes: every address has a peer class ("world" = class 1).
        p.ipcache(IpcacheKey::v4(0, [0; 4], 0), 1, 0, 0, 0);
        p.ipcache(IpcacheKey::v6(0, [0; 16], 0), 1, 0, 0, 0);
        p
    }

    pub fn ipcache(
        &mut self,
        k: IpcacheKey,
        peer: u32,
        subject: u32,
        flags: u32,
        endpoint: u32,
    ) -> &mut Self {
        self.plan.ipcache.retain(|(e, _)| *e != k);
        self.plan.ipcache.push((
            k,
            IpcacheValue {
                peer_class: peer,
                subject_class: subject,
                flags,
                endpoint,
            },
        ));
        self.plan.ipcache.sort();
        self
    }

    /// A local pod at `addr` (v4 or v6 string).
    pub fn pod(
        &mut self,
        addr: &str,
        peer: u32,
        subject: u32,
        flags: u32,
        endpoint: u32,
    ) -> &mut Self {
        let k = match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => IpcacheKey::v4(0, a.octets(), 32),
            IpAddr::V6(a) => IpcacheKey::v6(0, a.octets(), 128),
        };
        self.ipcache(k, peer, subject, flags | EP_LOCAL, endpoint)
    }

    /// A remote address or CIDR with a peer class.
    pub fn peer(&mut self, cidr: &str, peer: u32) -> &mut Self {
        let net: ipnet::IpNet = cidr.parse().unwrap();
        let k = match net {
            ipnet::IpNet::V4(n) => IpcacheKey::v4(0, n.network().octets(), n.prefix_len()),
            ipnet::IpNet::V6(n) => IpcacheKey::v6(0, n.network().octets(), n.prefix_len()),
        };
        self.ipcache(k, peer, 0, 0, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn allow(
        &mut self,
        prefix: u32,
        dir: u8,
        subject: u32,
        peer: u32,
        proto: u8,
        port: u16,
        policy: u32,
        rule: u16,
    ) -> &mut Self {
        let k = PolicyKey::new(prefix, 0, dir, subject, peer, proto, port);
        self.plan.policy.retain(|(e, _)| *e != k);
        self.plan.policy.push((
            k,
            PolicyValue {
                policy,
                rule,
                flags: 0,
            },
        ));
        self.plan.policy.sort();
        self
    }

    /// A Service virtual address (full-length ipcache entry flagged `EP_SERVICE`, plain peer
    /// class `peer`) serving `ports` as (protocol, port, Service port id).
    pub fn service(&mut self, vip: &str, peer: u32, ports: &[(u8, u16, u32)]) -> &mut Self {
        let (k, family, addr) = match vip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&a.octets());
                (IpcacheKey::v4(0, a.octets(), 32), FAMILY_V4, addr)
            }
            IpAddr::V6(a) => (IpcacheKey::v6(0, a.octets(), 128), FAMILY_V6, a.octets()),
        };
        self.ipcache(k, peer, 0, EP_SERVICE, 0);
        for &(proto, port, id) in ports {
            let key = ServiceKey {
                slot: 0,
                family,
                proto,
                _pad: 0,
                port,
                _pad2: 0,
                addr,
            };
            self.plan.services.retain(|(e, _)| *e != key);
            self.plan
                .services
                .push((key, ServiceValue { service_port: id }));
        }
        self.plan.services.sort();
        self
    }

    /// Subject class `subject` may reach Service port `id` (attributed to `policy`/`rule`).
    pub fn service_allow(&mut self, subject: u32, id: u32, policy: u32, rule: u16) -> &mut Self {
        let key = ServicePolicyKey {
            slot: 0,
            _pad: 0,
            _pad2: 0,
            subject,
            service_port: id,
        };
        self.plan.service_policy.retain(|(e, _)| *e != key);
        self.plan.service_policy.push((
            key,
            PolicyValue {
                policy,
                rule,
                flags: 0,
            },
        ));
        self.plan.service_policy.sort();
        self
    }

    pub fn build(&self) -> Plan {
        self.plan.clone()
    }
}

/// Run one packet and report (passed, reason name) from the counters' delta.
pub fn run(dp: &Datapath, dir: netward::model::Direction, frame: &[u8]) -> (bool, &'static str) {
    let before = dp.counters().unwrap();
    let out = dp.test_run(dir, frame, 1).unwrap();
    let after = dp.counters().unwrap();
    // One packet, one counter: the reason at this hook's direction, and the matching total.
    let d = match dir {
        netward::model::Direction::Egress => DIR_EGRESS,
        netward::model::Direction::Ingress => DIR_INGRESS,
    };
    let mut reason = "none";
    for r in 0..reason::COUNT {
        if after.reason_dir(d, r) > before.reason_dir(d, r) {
            reason = reason::name(r);
        }
    }
    let totals = |c: &netward::datapath::Counters| c.allowed + c.denied;
    assert_eq!(
        totals(&after),
        totals(&before) + 1,
        "{before:?} -> {after:?}"
    );
    (out.pass, reason)
}

/// Offset of the IP header in frames built by [`frame`].
pub const IP_OFF: usize = 14;

/// Insert `n` bytes of IPv4 NOP options after the IPv4 header (adjusting IHL and length).
pub fn with_ipv4_options(f: &[u8], n: usize) -> Vec<u8> {
    assert!(n.is_multiple_of(4));
    let mut out = f[..IP_OFF + 20].to_vec();
    out.extend(std::iter::repeat_n(1u8, n));
    out.extend_from_slice(&f[IP_OFF + 20..]);
    out[IP_OFF] = 0x40 | ((20 + n) / 4) as u8;
    let tl = u16::from_be_bytes([out[IP_OFF + 2], out[IP_OFF + 3]]) + n as u16;
    out[IP_OFF + 2..IP_OFF + 4].copy_from_slice(&tl.to_be_bytes());
    out
}

/// Insert IPv6 extension headers (each `(type, total length in bytes)`) between the IPv6
/// header and its payload.
pub fn with_ipv6_ext(f: &[u8], exts: &[(u8, usize)]) -> Vec<u8> {
    let upper = f[IP_OFF + 6];
    let mut out = f[..IP_OFF + 40].to_vec();
    let mut extra = 0;
    for (i, (ty, len)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map(|e| e.0).unwrap_or(upper);
        let mut h = vec![0u8; *len];
        h[0] = next;
        h[1] = if *ty == 51 {
            (*len / 4 - 2) as u8
        } else {
            (*len / 8 - 1) as u8
        };
        out.extend_from_slice(&h);
        extra += len;
    }
    out[IP_OFF + 6] = exts.first().map(|e| e.0).unwrap_or(upper);
    out.extend_from_slice(&f[IP_OFF + 40..]);
    let pl = u16::from_be_bytes([out[IP_OFF + 4], out[IP_OFF + 5]]) + extra as u16;
    out[IP_OFF + 4..IP_OFF + 6].copy_from_slice(&pl.to_be_bytes());
    out
}

/// Insert 802.1Q tags (outer first) after the MAC addresses.
pub fn with_vlans(f: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    out.extend_from_slice(&f[12..]);
    out
}

/// Mark an IPv4 frame as a fragment: `more` fragments flag, `offset` in 8-byte units, `id`.
pub fn ipv4_frag(f: &[u8], id: u16, offset: u16, more: bool) -> Vec<u8> {
    let mut out = f.to_vec();
    out[IP_OFF + 4..IP_OFF + 6].copy_from_slice(&id.to_be_bytes());
    let ff = offset | if more { 0x2000 } else { 0 };
    out[IP_OFF + 6..IP_OFF + 8].copy_from_slice(&ff.to_be_bytes());
    out
}

/// Turn an IPv6 frame into a fragment: a fragment header with `id`, `offset` (8-byte units)
/// and M flag; a later fragment (offset > 0) carries only payload bytes, no L4 header.
pub fn ipv6_frag(f: &[u8], id: u32, offset: u16, more: bool) -> Vec<u8> {
    let upper = f[IP_OFF + 6];
    let mut out = f[..IP_OFF + 40].to_vec();
    out[IP_OFF + 6] = 44;
    let fo = (offset << 3) | more as u16;
    out.extend_from_slice(&[upper, 0]);
    out.extend_from_slice(&fo.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    if offset == 0 {
        out.extend_from_slice(&f[IP_OFF + 40..]);
    } else {
        out.extend_from_slice(&[0x55; 16]);
    }
    let pl = (out.len() - IP_OFF - 40) as u16;
    out[IP_OFF + 4..IP_OFF + 6].copy_from_slice(&pl.to_be_bytes());
    out
}

/// An ICMP (v4) or ICMPv6 error from `src` to `dst` about `offending` (a frame from
/// [`frame`]): type 3/code 3 (v4) or type 1/code 4 (v6), quoting the IP header and 8 bytes.
pub fn icmp_error(src: &str, dst: &str, offending: &[u8]) -> Vec<u8> {
    let v6 = src.contains(':');
    let ip_len = if v6 { 40 } else { 20 };
    let quoted = &offending[IP_OFF..IP_OFF + ip_len + 8];
    let mut payload = if v6 {
        vec![1, 4, 0, 0, 0, 0, 0, 0]
    } else {
        vec![3, 3, 0, 0, 0, 0, 0, 0]
    };
    payload.extend_from_slice(quoted);
    let proto = if v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2(SMAC, DMAC);
    let b = match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    b.write(&mut out, IpNumber(proto), &payload).unwrap();
    out
}

/// An ICMPv6 message of `ty` (no body beyond the 8-byte header).
pub fn icmpv6(src: &str, dst: &str, ty: u8) -> Vec<u8> {
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) else {
        panic!("v6 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SMAC, DMAC)
        .ipv6(s.octets(), d.octets(), 255)
        .write(&mut out, IpNumber(PROTO_ICMPV6), &[ty, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    out
}

/// Pin, at `path`, a new map of `map_type` with the given shape, created with the raw `bpf()`
/// syscall: stands in for a map an older agent left behind.
pub fn pin_raw_map(path: &std::path::Path, map_type: u32, key: u32, value: u32, entries: u32) {
    pin_raw_map_flags(path, map_type, key, value, entries, 0)
}

/// [`pin_raw_map`] with `map_flags` (an LPM trie needs `BPF_F_NO_PREALLOC`).
pub fn pin_raw_map_flags(
    path: &std::path::Path,
    map_type: u32,
    key: u32,
    value: u32,
    entries: u32,
    flags: u32,
) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[map_type, key, value, entries, flags]);
    // SAFETY: attr is a zeroed, large enough `union bpf_attr` for BPF_MAP_CREATE.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = c.as_ptr() as u64;
    pin[1] = fd as u64; // bpf_fd (low 32 bits), file_flags 0
                        // SAFETY: pin is a zeroed `union bpf_attr` for BPF_OBJ_PIN; c outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            pin.as_ptr(),
            std::mem::size_of_val(&pin),
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: fd was returned by BPF_MAP_CREATE above and is not used afterwards.
    unsafe { libc::close(fd as i32) };
}

/// Keep this thread on the CPU it runs on: the flow and decision caches are per CPU, and a
/// test run executes on the calling CPU.
pub fn pin_to_this_cpu() {
    use nix::sched::{sched_getcpu, sched_setaffinity, CpuSet};
    let cpu = sched_getcpu().expect("sched_getcpu");
    let mut set = CpuSet::new();
    set.set(cpu).expect("a CPU the kernel runs us on");
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}
