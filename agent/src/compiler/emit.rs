//! Map entries: the ipcache (partition pieces and pod addresses) and the policy LPM entries
//! of every (subject class, direction, peer class).
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netward_common::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, ANY_PEER, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EP_LOCAL, POLICY_PREFIX_ANY_PROTO,
};

use super::classes::{Atoms, PeerClasses, Subjects};
use super::ports::{Piece, PortSet};
use crate::model::{Cluster, Direction};

/// The slot the compiler writes (map sync rewrites it when installing beside the live one).
const SLOT: u8 = 0;

fn ipcache_key(ip: IpAddr, prefix: u8) -> IpcacheKey {
    // Canonical keys: bits past the prefix are zero (userspace LPM relies on it).
    let net = IpNet::new(ip, prefix).expect("valid prefix").trunc();
    match net.network() {
        IpAddr::V4(a) => IpcacheKey::v4(SLOT, a.octets(), prefix),
        IpAddr::V6(a) => IpcacheKey::v6(SLOT, a.octets(), prefix),
    }
}

/// The endpoint id (index+1 into the endpoint table) of each local pod, 0 for others.
pub(crate) fn ipcache(
    cluster: &Cluster,
    subjects: &Subjects,
    peers: &PeerClasses,
    endpoint_of: &[u32],
) -> Vec<(IpcacheKey, IpcacheValue)> {
    let mut map: BTreeMap<IpcacheKey, IpcacheValue> = BTreeMap::new();
    for (piece, &class) in peers.partition.pieces.iter().zip(&peers.piece_class) {
        if piece.redundant {
            continue;
        }
        map.insert(
            ipcache_key(piece.net.network(), piece.net.prefix_len()),
            IpcacheValue {
                peer_class: class,
                ..Default::default()
            },
        );
    }
    // Pod addresses; when two pods claim one address the first (in pod order) wins, as
    // `Cluster::pod_by_ip` does.
    let mut pods: BTreeMap<IpcacheKey, IpcacheValue> = BTreeMap::new();
    for (i, pod) in cluster.pods.iter().enumerate() {
        for (&ip, &class) in pod.ips.iter().zip(&peers.pod_ip_class[i]) {
            let endpoint = endpoint_of[i];
            if endpoint == 0 && class == peers.partition_class(ip) {
                continue; // the partition already answers this
            }
            let mut value = IpcacheValue {
                peer_class: class,
                ..Default::default()
            };
            if endpoint != 0 {
                let s = subjects.pod_class[i];
                value.flags = EP_LOCAL;
                value.endpoint = endpoint;
                value.subject_class = s;
                if s != 0 {
                    let key = subjects.classes.key(s);
                    if !key.policies[0].is_empty() {
                        value.flags |= EP_ISOLATED_INGRESS;
                    }
                    if !key.policies[1].is_empty() {
                        value.flags |= EP_ISOLATED_EGRESS;
                    }
                }
            }
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            pods.entry(ipcache_key(ip, prefix)).or_insert(value);
        }
    }
    map.extend(pods);
    map.into_iter().collect()
}

/// Reusable per-peer-class port sets (index 0 is [`ANY_PEER`]).
struct Builders {
    sets: Vec<PortSet>,
    touched: Vec<u32>,
    live: Vec<bool>,
    /// Last rule stamp that added to each class (a rule reaching a class through two of its
    /// peers is added once).
    stamp: Vec<u64>,
}

impl Builders {
    fn get(&mut self, class: u32) -> &mut PortSet {
        if !self.live[class as usize] {
            self.live[class as usize] = true;
            self.touched.push(class);
        }
        &mut self.sets[class as usize]
    }
}

/// All policy entries, sorted by key.
pub(crate) fn policy(
    subjects: &Subjects,
    atoms: &Atoms<'_>,
    peers: &PeerClasses,
) -> Vec<(PolicyKey, PolicyValue)> {
    let n = peers.classes.len() + 1;
    let mut b = Builders {
        sets: vec![PortSet::default(); n],
        touched: Vec::new(),
        live: vec![false; n],
        stamp: vec![u64::MAX; n],
    };
    // Entries are generated in key order within each prefix length (direction, then subject,
    // then sorted peer classes, then protocol and port), so one bucket per prefix length,
    // concatenated, is the sorted map without sorting it.
    let mut buckets: Vec<Vec<(PolicyKey, PolicyValue)>> = vec![Vec::new(); 25];
    let mut seq: u64 = 0;
    for d in Direction::BOTH {
        let dix = d.code() as usize;
        for (si, key) in subjects.classes.keys.iter().enumerate() {
            let subject = si as u32 + 1;
            for &pi in &key.policies[dix] {
                for (ri, rule) in atoms.rules[pi as usize][dix].iter().enumerate() {
                    seq += 1;
                    let attr = (pi + 1, ri as u16);
                    // Ports known without the peer: numeric ones and, on ingress, named ones
                    // resolved by the local pod.
                    let mut fixed = rule.fixed.clone();
                    if d == Direction::Ingress {
                        for &(name, proto) in &rule.named {
                            if let Some(p) = key.resolve(name) {
                                fixed.push(Piece::Range(proto, p, p));
                            }
                        }
                    }
                    let peer_named = d == Direction::Egress && !rule.named.is_empty();
                    if rule.peers.is_empty() {
                        for &piece in &fixed {
                            b.get(ANY_PEER).add(piece, attr);
                        }
                        // Egress named ports: every class resolving the name, with its port.
                        if peer_named {
                            for &(name, proto) in &rule.named {
                                let feats = peers.name_features.get(&name);
                                for &f in feats.into_iter().flatten() {
                                    let (_, port) =
                                        peers.port_features[(f - peers.atom_count) as usize];
                                    for &c in &peers.by_feature[f as usize] {
                                        b.get(c).add(Piece::Range(proto, port, port), attr);
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    for &atom in &rule.peers {
                        for &c in &peers.by_feature[atom as usize] {
                            if b.stamp[c as usize] == seq {
                                continue;
                            }
                            b.stamp[c as usize] = seq;
                            for &piece in &fixed {
                                b.get(c).add(piece, attr);
                            }
                            if peer_named {
                                for &(name, proto) in &rule.named {
                                    if let Some(p) = peers.resolve(c, name) {
                                        b.get(c).add(Piece::Range(proto, p, p), attr);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let mut touched = std::mem::take(&mut b.touched);
            touched.sort_unstable();
            for &c in &touched {
                b.live[c as usize] = false;
                let set = &mut b.sets[c as usize];
                for e in set.entries() {
                    buckets[e.prefix as usize].push((
                        PolicyKey::new(
                            POLICY_PREFIX_ANY_PROTO + e.prefix as u32,
                            SLOT,
                            d.code(),
                            subject,
                            c,
                            e.proto,
                            e.port,
                        ),
                        PolicyValue {
                            policy: e.attr.0,
                            rule: e.attr.1,
                            flags: 0,
                        },
                    ));
                }
                set.clear();
            }
            touched.clear();
            b.touched = touched;
        }
    }
    let mut out = Vec::with_capacity(buckets.iter().map(Vec::len).sum());
    for bucket in buckets {
        out.extend(bucket);
    }
    debug_assert!(
        out.windows(2).all(|w| w[0].0 < w[1].0),
        "unsorted or duplicate keys"
    );
    out
}
