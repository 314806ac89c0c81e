//! The lab: a manifest directory turned into a real node on this machine.
//!
//! Every pod with addresses (and not hostNetwork) becomes a network namespace joined to the
//! root namespace by a veth pair, addressed as a routed CNI (ptp, Calico) does it: the pod's
//! IPs as /32 and /128 on its `eth0`, a default route through a link-local gateway that is
//! the host side of the veth (static neighbor entries on both sides, so no ARP/NDP has to
//! cross the datapath), and a host route per pod IP to its host veth. Small servers answer
//! on every declared container port ([`serve`]), `lab probe` connects every pod to every pod
//! with real packets ([`probe`]), and a background daemon enforces the manifests' policies
//! with the agent's own datapath code ([`daemon`]), follows pods that come and go
//! ([`reconcile`]) and rewrites connections to Service virtual addresses to their endpoints
//! as kube-proxy does ([`services`]).
//!
//! Everything a lab creates carries names derived from the lab name, so several labs run
//! side by side and `lab down` finds leftovers of a crashed lab without its state file:
//!
//! * network namespaces `nwlab-<name>-<index>`,
//! * host veths `<prefix>h<index>` where `<prefix>` is `nw` + 4 hex digits of a hash of the
//!   name (veth names have at most 15 characters),
//! * state (pidfiles, logs, `state.json`) under `/run/netward/lab/<name>/`,
//! * bpffs pins under `/sys/fs/bpf/netward-lab/<name>/`,
//! * the nftables table `inet netward-lab-<name>` (Service DNAT).
//!
//! Addresses come from the manifests; two labs whose pods share an address would fight over
//! the host routes, so `lab up` refuses a pod IP that this machine already routes.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Protocol};

pub mod daemon;
pub mod lifecycle;
pub mod netns;
pub mod probe;
pub mod process;
pub mod reconcile;
pub mod sctp;
pub mod serve;
pub mod services;
pub mod topology;

/// Where labs keep their state: one directory per lab.
pub const STATE_ROOT: &str = "/run/netward/lab";
/// Where labs pin their BPF objects: one directory per lab.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netward-lab";
/// Lab name used when the command line names none.
pub const DEFAULT_NAME: &str = "default";
/// The gateway every lab pod routes through (answered by the host side of its veth).
pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";

/// A validated lab name: 1 to 24 characters of `[a-z0-9-]`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    pub fn new(name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= 24
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            bail!("invalid lab name {name:?}: use 1 to 24 characters of a-z, 0-9 and '-', not starting with '-'");
        }
        Ok(LabName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `nw` + 4 hex digits of FNV-1a of the name: the start of every host veth of this lab.
    pub fn veth_prefix(&self) -> String {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.0.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        format!("nw{:04x}", (h ^ (h >> 16)) & 0xffff)
    }

    /// The start of every network namespace name of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("nwlab-{}-", self.0)
    }

    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.0)
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(&self.0)
    }
}

impl TryFrom<String> for LabName {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        LabName::new(&s)
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl std::fmt::Display for LabName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One pod of a lab, as laid out on this machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    /// `namespace/name`.
    pub key: String,
    /// Its slot in the lab: names and MAC addresses derive from it. A pod keeps its index
    /// for as long as it exists; a new pod takes the lowest free one.
    pub index: usize,
    pub netns: String,
    pub host_veth: String,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<LabPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPort {
    pub port: u16,
    #[serde(deserialize_with = "protocol_from_str")]
    pub protocol: Protocol,
}

fn protocol_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// What `lab up` made, written to `state.json` before anything is created so that `lab
/// down` and `lab status` find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: LabName,
    /// The manifest files or directories the lab was made from (absolute).
    pub manifests: Vec<PathBuf>,
    /// Sorted by key.
    pub pods: Vec<LabPod>,
    /// Grows whenever the pods change (added, removed, readdressed, other ports): the
    /// servers report the revision they serve, so the daemon knows when a pod answers.
    #[serde(default)]
    pub revision: u64,
}

impl LabState {
    /// Lay out `cluster` for a new lab `name`: which pods get a namespace, and their names.
    pub fn layout(name: &LabName, manifests: Vec<PathBuf>, cluster: &Cluster) -> Result<Self> {
        LabState {
            name: name.clone(),
            manifests,
            pods: Vec::new(),
            revision: 0,
        }
        .desired(cluster)
    }

    /// The pods `cluster` asks for, laid out next to this state's: a pod that stays keeps
    /// its index (namespace and veth names), a new pod takes the lowest free index. Fails,
    /// naming both pods, when two pods claim the same address.
    pub fn desired(&self, cluster: &Cluster) -> Result<Self> {
        let prefix = self.name.veth_prefix();
        let mut seen: std::collections::BTreeMap<IpAddr, String> = Default::default();
        let wanted: Vec<&crate::model::Pod> = cluster
            .pods
            .iter()
            .filter(|p| !p.host_network && !p.ips.is_empty())
            .collect();
        for pod in &wanted {
            for ip in &pod.ips {
                if let Some(other) = seen.insert(*ip, pod.key()) {
                    bail!(
                        "pods {other} and {} both have status.podIPs address {ip}",
                        pod.key()
                    );
                }
            }
        }
        let mut used: std::collections::BTreeSet<usize> = wanted
            .iter()
            .filter_map(|p| self.pod(&p.key()).map(|old| old.index))
            .collect();
        let mut pods = Vec::new();
        for pod in wanted {
            let key = pod.key();
            let index = match self.pod(&key) {
                Some(old) => old.index,
                None => {
                    let free = (0..).find(|i| !used.contains(i)).expect("unbounded");
                    used.insert(free);
                    free
                }
            };
            let mut ports: Vec<LabPort> = pod
                .ports
                .iter()
                .map(|p| LabPort {
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect();
            ports.sort_by_key(|p| (p.protocol, p.port));
            ports.dedup();
            pods.push(LabPod {
                key,
                index,
                netns: format!("{}{index}", self.name.netns_prefix()),
                host_veth: format!("{prefix}h{index}"),
                ips: pod.ips.clone(),
                ports,
            });
        }
        pods.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabState {
            name: self.name.clone(),
            manifests: self.manifests.clone(),
            pods,
            revision: self.revision,
        })
    }

    pub fn pod(&self, key: &str) -> Option<&LabPod> {
        self.pods.iter().find(|p| p.key == key)
    }

    fn path(name: &LabName) -> PathBuf {
        name.state_dir().join("state.json")
    }

    /// The state of lab `name`, None when it is not up.
    pub fn load(name: &LabName) -> Result<Option<Self>> {
        let path = Self::path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn require(name: &LabName) -> Result<Self> {
        Self::load(name)?
            .with_context(|| format!("lab {name} is not up (no {})", Self::path(name).display()))
    }

    pub fn save(&self) -> Result<()> {
        let dir = self.name.state_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, Self::path(&self.name))?;
        Ok(())
    }
}

/// Load manifests for a lab. Notices and per-object errors go to `report` (invalid
/// policies stay in the model, rewritten to fail closed); unreadable input is an error,
/// because a model missing objects could be more open than the manifests.
pub fn load_manifests(files: &[PathBuf], mut report: impl FnMut(String)) -> Result<Cluster> {
    let loaded = crate::source::manifest::load(files);
    for n in &loaded.notices {
        report(format!("notice: {n}"));
    }
    for e in &loaded.errors {
        report(format!("error: {e}"));
    }
    if loaded.incomplete {
        bail!(
            "some manifests could not be read ({} errors): refusing to build or enforce from a partial model",
            loaded.errors.len()
        );
    }
    Ok(loaded.cluster)
}

/// Names of every lab with a state directory on this machine.
pub fn list_labs() -> Result<Vec<LabName>> {
    let mut out = Vec::new();
    match fs::read_dir(STATE_ROOT) {
        Ok(entries) => {
            for e in entries.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    if let Ok(name) = LabName::new(n) {
                        out.push(name);
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(STATE_ROOT),
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(LabName::new("t1").is_ok());
        assert!(LabName::new("a-b-9").is_ok());
        for bad in ["", "-a", "A", "a_b", "a/b", &"x".repeat(25)] {
            assert!(LabName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let n = LabName::new(&"z".repeat(24)).unwrap();
        let p = n.veth_prefix();
        assert_eq!(p.len(), 6);
        assert!(format!("{p}h{}", 99_999_999).len() <= 15);
        assert_ne!(
            LabName::new("a").unwrap().veth_prefix(),
            LabName::new("b").unwrap().veth_prefix()
        );
    }
}
