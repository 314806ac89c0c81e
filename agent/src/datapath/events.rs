//! Reading verdict events from the `EVENTS` ring buffer and attributing them to policies and
//! endpoints through the Plan that was live when the event was produced.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, RingBuf};
use netward_common::{reason, Event, ServiceKey, DIR_EGRESS, FAMILY_V4, VERDICT_ALLOW};
use serde::Serialize;

use super::{Datapath, PlanHistory};
use crate::model::Direction;
use crate::plan::{Plan, PolicyRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Drop,
}

/// A decoded verdict event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerdictEvent {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// From the local pod's point of view.
    pub direction: Direction,
    pub verdict: Verdict,
    /// `reason::name` of the reason code.
    pub reason: &'static str,
    /// The policy whose rule allowed the flow.
    pub policy: Option<PolicyRef>,
    pub rule: Option<u16>,
    /// `namespace/name` of the local pod, when known.
    pub endpoint: Option<String>,
    /// Egress to a Service virtual address on a port it serves: the Service port, as
    /// `namespace/name:port/PROTO` (decided for its endpoints, see `model::Service`).
    pub service: Option<String>,
    pub ifindex: u32,
    pub generation: u64,
    pub ktime_ns: u64,
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

impl VerdictEvent {
    /// Decode a raw event; `history` gives the Plan tables for attribution.
    pub(crate) fn decode(e: &Event, history: &PlanHistory) -> VerdictEvent {
        let plan = history.get(e.generation);
        let policy = plan.as_ref().and_then(|p| {
            (e.policy != 0)
                .then(|| {
                    p.policy_ref(&netward_common::PolicyValue {
                        policy: e.policy,
                        rule: e.rule,
                        flags: 0,
                    })
                })
                .flatten()
                .cloned()
        });
        let endpoint = plan
            .as_ref()
            .and_then(|p| p.endpoint(e.endpoint))
            .map(|ep| ep.key());
        let service = plan
            .as_ref()
            .filter(|_| e.dir == DIR_EGRESS)
            .and_then(|p| service_of(p, e));
        VerdictEvent {
            src: addr(e.family, &e.saddr),
            dst: addr(e.family, &e.daddr),
            sport: e.sport,
            dport: e.dport,
            protocol: e.proto,
            direction: if e.dir == DIR_EGRESS {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            verdict: if e.verdict == VERDICT_ALLOW {
                Verdict::Allow
            } else {
                Verdict::Drop
            },
            reason: reason::name(e.reason),
            rule: (e.policy != 0).then_some(e.rule),
            policy,
            endpoint,
            service,
            ifindex: e.ifindex,
            generation: e.generation,
            ktime_ns: e.ktime_ns,
        }
    }
}

/// The Service port an event's destination (virtual address, protocol, port) belongs to.
fn service_of(plan: &Plan, e: &Event) -> Option<String> {
    let key = ServiceKey {
        slot: 0,
        family: e.family,
        proto: e.proto,
        _pad: 0,
        port: e.dport,
        _pad2: 0,
        addr: e.daddr,
    };
    let i = plan.services.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
    let id = plan.services[i].1.service_port as usize;
    let sp = plan.service_ports.get(id.checked_sub(1)?)?;
    Some(format!(
        "{}/{}:{}/{}",
        sp.namespace, sp.name, sp.port, sp.protocol
    ))
}

/// A reader of the pinned `EVENTS` ring buffer. Several readers may exist (each opens the
/// pin), but events are consumed: run one reader per agent.
pub struct EventReader {
    ring: RingBuf<MapData>,
    history: Arc<Mutex<PlanHistory>>,
}

impl EventReader {
    /// Events available now, decoded (never blocks).
    pub fn drain(&mut self) -> Vec<VerdictEvent> {
        let history = self.history.lock().expect("plan history lock");
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the ring holds `Event`s written by the program (repr(C), POD);
                // read_unaligned copes with any alignment of the item.
                let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.push(VerdictEvent::decode(&e, &history));
            }
        }
        out
    }

    /// Wait up to `timeout` for events, then drain them.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<VerdictEvent>> {
        let first = self.drain();
        if !first.is_empty() {
            return Ok(first);
        }
        let mut pfd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll the events ring buffer");
            }
        }
        Ok(self.drain())
    }

    /// The ring buffer's fd, to register with an event loop (e.g. tokio `AsyncFd`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}

impl Datapath {
    /// A reader of verdict events, decoded with the Plans this `Datapath` installed.
    pub fn events(&self) -> Result<EventReader> {
        let path = self.cfg.bpffs_dir.join("EVENTS");
        let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
        let ring = RingBuf::try_from(Map::RingBuf(data))?;
        Ok(EventReader {
            ring,
            history: self.history.clone(),
        })
    }
}
