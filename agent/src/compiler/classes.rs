//! Subject classes (local pods grouped by what enforces them) and peer classes (addresses
//! grouped by the exact set of policy peers they satisfy).
//!
//! Peer classes are interned by their *signature*: the sorted list of features an address
//! has. Features are the peer atoms (the distinct `from`/`to` entries of the policies that
//! enforce some local pod: selector peers and ipBlocks), numbered `0..atoms`, followed by
//! named-port resolutions `(name, protocol) -> port` for the names used in egress rules
//! (egress named ports resolve against the destination, i.e. the peer). Anything else about an
//! address (labels no policy selects on) cannot reach the signature, so it never creates a
//! class. Class ids are given in order of first appearance while walking the partition and
//! then the pods in their sorted order, so they are deterministic.
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use super::cidr::{Block, Partition};
use super::index::{addressable, PodIndex};
use super::ports::Piece;
use crate::model::{Cluster, Direction, Peer, PortRef, Protocol, Rule};

/// Hands out dense ids 1.. (0 stays free for "none") in order of first appearance.
pub(crate) struct Interner<K> {
    ids: HashMap<K, u32>,
    pub keys: Vec<K>,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    pub fn new() -> Self {
        Interner {
            ids: HashMap::new(),
            keys: Vec::new(),
        }
    }

    pub fn intern(&mut self, k: K) -> u32 {
        if let Some(&id) = self.ids.get(&k) {
            return id;
        }
        self.keys.push(k.clone());
        let id = self.keys.len() as u32;
        self.ids.insert(k, id);
        id
    }

    pub fn get(&self, k: &K) -> Option<u32> {
        self.ids.get(k).copied()
    }

    /// The key of id `id` (1-based).
    pub fn key(&self, id: u32) -> &K {
        &self.keys[id as usize - 1]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// A named port as a policy writes it.
pub(crate) type PortName<'a> = (&'a str, Protocol);

/// Index of a direction in per-direction arrays (equals the map's `DIR_*` code).
pub(crate) fn di(d: Direction) -> usize {
    d.code() as usize
}

/// What makes local pods enforceable alike.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SubjectKey {
    /// Policy indices isolating the pod, per direction (ingress, egress), sorted.
    pub policies: [Vec<u32>; 2],
    /// The pod's own resolution of every named port its ingress policies use: (name id,
    /// port), sorted by name id.
    pub named: Vec<(u32, Option<u16>)>,
}

impl SubjectKey {
    pub fn resolve(&self, name: u32) -> Option<u16> {
        self.named
            .binary_search_by_key(&name, |&(n, _)| n)
            .ok()
            .and_then(|i| self.named[i].1)
    }
}

pub(crate) struct Subjects {
    /// Per pod of the cluster: its subject class (0: not isolated or not local).
    pub pod_class: Vec<u32>,
    pub classes: Interner<SubjectKey>,
    /// Pod indices per class (index: id - 1).
    pub members: Vec<Vec<u32>>,
    /// Per policy and direction: it isolates at least one local pod.
    pub relevant: Vec<[bool; 2]>,
}

impl Subjects {
    pub fn build<'a>(
        index: &PodIndex<'a>,
        local: &[bool],
        names: &mut Interner<PortName<'a>>,
    ) -> Subjects {
        let cluster = index.cluster;
        let mut per_pod: Vec<[Vec<u32>; 2]> = vec![Default::default(); cluster.pods.len()];
        let mut relevant = vec![[false; 2]; cluster.policies.len()];
        for (pi, pol) in cluster.policies.iter().enumerate() {
            if !pol.ingress_isolation && !pol.egress_isolation {
                continue;
            }
            for pod in index.select_in(&pol.namespace, &pol.pod_selector) {
                if !local[pod as usize] {
                    continue;
                }
                for d in Direction::BOTH {
                    if pol.isolates(d) {
                        per_pod[pod as usize][di(d)].push(pi as u32);
                        relevant[pi][di(d)] = true;
                    }
                }
            }
        }
        // Named ports of each policy's ingress rules.
        let mut ingress_names: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut classes = Interner::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let mut pod_class = vec![0; cluster.pods.len()];
        for (i, pols) in per_pod.into_iter().enumerate() {
            if pols[0].is_empty() && pols[1].is_empty() {
                continue;
            }
            let pod = &cluster.pods[i];
            let mut ids: Vec<u32> = Vec::new();
            for &p in &pols[0] {
                let list = ingress_names.entry(p).or_insert_with(|| {
                    let mut v: Vec<u32> = cluster.policies[p as usize]
                        .rules(Direction::Ingress)
                        .iter()
                        .flat_map(|r| &r.ports)
                        .filter_map(|s| match &s.port {
                            Some(PortRef::Name(n)) => Some(names.intern((n.as_str(), s.protocol))),
                            _ => None,
                        })
                        .collect();
                    v.sort_unstable();
                    v.dedup();
                    v
                });
                ids.extend_from_slice(list);
            }
            ids.sort_unstable();
            ids.dedup();
            let named = ids
                .into_iter()
                .map(|n| {
                    let (name, proto) = *names.key(n);
                    (n, pod.resolve_named_port(name, proto))
                })
                .collect();
            let id = classes.intern(SubjectKey {
                policies: pols,
                named,
            });
            if id as usize > members.len() {
                members.push(Vec::new());
            }
            members[id as usize - 1].push(i as u32);
            pod_class[i] = id;
        }
        Subjects {
            pod_class,
            classes,
            members,
            relevant,
        }
    }
}

/// A rule, pre-digested for the policy-entry generator.
pub(crate) struct RuleInfo {
    /// Atom ids of its peers; empty: every peer.
    pub peers: Vec<u32>,
    /// Numeric port entries (or `AnyProto` for an empty `ports`).
    pub fixed: Vec<Piece>,
    /// Named port entries: (name id, protocol).
    pub named: Vec<(u32, Protocol)>,
}

impl RuleInfo {
    fn new<'a>(
        rule: &'a Rule,
        atoms: &mut Interner<&'a Peer>,
        names: &mut Interner<PortName<'a>>,
    ) -> RuleInfo {
        let peers = rule.peers.iter().map(|p| atoms.intern(p) - 1).collect();
        let mut fixed = Vec::new();
        let mut named = Vec::new();
        if rule.ports.is_empty() {
            fixed.push(Piece::AnyProto);
        }
        for s in &rule.ports {
            match &s.port {
                None => fixed.push(Piece::AnyPort(s.protocol)),
                Some(PortRef::Number(p)) => {
                    let end = s.end_port.unwrap_or(*p).max(*p);
                    fixed.push(Piece::Range(s.protocol, *p, end));
                }
                Some(PortRef::Name(n)) => {
                    named.push((names.intern((n.as_str(), s.protocol)), s.protocol))
                }
            }
        }
        RuleInfo {
            peers,
            fixed,
            named,
        }
    }
}

/// The peer atoms and digested rules of every relevant policy.
pub(crate) struct Atoms<'a> {
    /// Atom id (0-based) -> peer: `interner.key(id + 1)`.
    pub peers: Interner<&'a Peer>,
    /// Per policy, per direction: its rules (empty when the policy is not relevant there).
    pub rules: Vec<[Vec<RuleInfo>; 2]>,
    /// Name ids used by egress rules, sorted.
    pub egress_names: Vec<u32>,
}

impl<'a> Atoms<'a> {
    pub fn collect(
        cluster: &'a Cluster,
        relevant: &[[bool; 2]],
        names: &mut Interner<PortName<'a>>,
    ) -> Atoms<'a> {
        let mut peers = Interner::new();
        let mut rules = Vec::with_capacity(cluster.policies.len());
        let mut egress_names = Vec::new();
        for (pi, pol) in cluster.policies.iter().enumerate() {
            let mut per_dir: [Vec<RuleInfo>; 2] = Default::default();
            for d in Direction::BOTH {
                if !relevant[pi][di(d)] {
                    continue;
                }
                per_dir[di(d)] = pol
                    .rules(d)
                    .iter()
                    .map(|r| RuleInfo::new(r, &mut peers, names))
                    .collect();
                if d == Direction::Egress {
                    egress_names
                        .extend(per_dir[1].iter().flat_map(|r| r.named.iter().map(|n| n.0)));
                }
            }
            rules.push(per_dir);
        }
        egress_names.sort_unstable();
        egress_names.dedup();
        Atoms {
            peers,
            rules,
            egress_names,
        }
    }

    pub fn count(&self) -> u32 {
        self.peers.len() as u32
    }

    pub fn peer(&self, atom: u32) -> &'a Peer {
        self.peers.key(atom + 1)
    }
}

/// Peer classes of every address: partition pieces and pod IPs.
pub(crate) struct PeerClasses {
    pub classes: Interner<Vec<u32>>,
    pub partition: Partition,
    /// Class of each partition piece (same order as `partition.pieces`).
    pub piece_class: Vec<u32>,
    /// Per pod, per IP (same order as `pod.ips`): class (0 for non-addressable pods).
    pub pod_ip_class: Vec<Vec<u32>>,
    /// Feature -> classes having it, ascending.
    pub by_feature: Vec<Vec<u32>>,
    /// Named-port features: feature - atoms -> (name id, port).
    pub port_features: Vec<(u32, u16)>,
    /// Name id -> named-port features for it.
    pub name_features: HashMap<u32, Vec<u32>>,
    pub atom_count: u32,
    /// Up to [`MEMBER_EXAMPLES`] example members per class, and the member count.
    pub examples: Vec<(Vec<String>, usize)>,
}

/// How many members of a peer class the Plan lists.
pub(crate) const MEMBER_EXAMPLES: usize = 8;

impl PeerClasses {
    pub fn build<'a>(
        index: &mut PodIndex<'a>,
        atoms: &Atoms<'a>,
        names: &Interner<PortName<'a>>,
    ) -> PeerClasses {
        let cluster = index.cluster;
        let n_atoms = atoms.count();
        // ipBlock atoms partition the address space.
        let blocks: Vec<Block<'_>> = (0..n_atoms)
            .filter_map(|a| match atoms.peer(a) {
                Peer::IpBlock { cidr, except } => Some(Block {
                    id: a,
                    cidr,
                    except,
                }),
                Peer::Pods { .. } => None,
            })
            .collect();
        let partition = Partition::new(&blocks);

        // Selector atoms -> pods, through the index.
        let mut pod_feats: Vec<Vec<u32>> = vec![Vec::new(); cluster.pods.len()];
        for a in 0..n_atoms {
            if let Peer::Pods { namespaces, pods } = atoms.peer(a) {
                for ns in index.namespaces(namespaces) {
                    for p in index.select_in(ns, pods) {
                        pod_feats[p as usize].push(a);
                    }
                }
            }
        }
        // Egress named ports resolve against the peer: each resolution is a feature.
        let mut port_feats: Interner<(u32, u16)> = Interner::new();
        for (i, pod) in cluster.pods.iter().enumerate() {
            if !addressable(pod) {
                continue;
            }
            for &n in &atoms.egress_names {
                let (name, proto) = *names.key(n);
                if let Some(port) = pod.resolve_named_port(name, proto) {
                    let f = n_atoms + port_feats.intern((n, port)) - 1;
                    pod_feats[i].push(f);
                }
            }
        }

        let mut classes: Interner<Vec<u32>> = Interner::new();
        let mut examples: Vec<(Vec<String>, usize)> = Vec::new();
        let mut note = |id: u32, member: &dyn Fn() -> String| {
            if id as usize > examples.len() {
                examples.push((Vec::new(), 0));
            }
            let e = &mut examples[id as usize - 1];
            if e.0.len() < MEMBER_EXAMPLES {
                e.0.push(member());
            }
            e.1 += 1;
        };
        let piece_class: Vec<u32> = partition
            .pieces
            .iter()
            .map(|p| {
                let id = classes.intern(p.blocks.clone());
                note(id, &|| p.net.to_string());
                id
            })
            .collect();
        let mut pod_ip_class = vec![Vec::new(); cluster.pods.len()];
        for (i, pod) in cluster.pods.iter().enumerate() {
            if !addressable(pod) {
                continue;
            }
            pod_ip_class[i] = pod
                .ips
                .iter()
                .map(|&ip| {
                    let mut sig = pod_feats[i].clone();
                    sig.extend_from_slice(&partition.lookup(ip).blocks);
                    sig.sort_unstable();
                    sig.dedup();
                    let id = classes.intern(sig);
                    note(id, &|| format!("{} ({ip})", pod.key()));
                    id
                })
                .collect();
        }

        let n_features = n_atoms as usize + port_feats.len();
        let mut by_feature = vec![Vec::new(); n_features];
        for (ci, sig) in classes.keys.iter().enumerate() {
            for &f in sig {
                by_feature[f as usize].push(ci as u32 + 1);
            }
        }
        let mut name_features: HashMap<u32, Vec<u32>> = HashMap::new();
        for (k, &(n, _)) in port_feats.keys.iter().enumerate() {
            name_features.entry(n).or_default().push(n_atoms + k as u32);
        }
        PeerClasses {
            classes,
            partition,
            piece_class,
            pod_ip_class,
            by_feature,
            port_features: port_feats.keys,
            name_features,
            atom_count: n_atoms,
            examples,
        }
    }

    /// The port class `class` resolves name id `name` to (egress named ports).
    pub fn resolve(&self, class: u32, name: u32) -> Option<u16> {
        self.classes
            .key(class)
            .iter()
            .rev()
            .take_while(|&&f| f >= self.atom_count)
            .map(|&f| self.port_features[(f - self.atom_count) as usize])
            .find(|&(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// The class an LPM lookup of `ip` in the partition alone returns.
    pub fn partition_class(&self, ip: IpAddr) -> u32 {
        let piece = self.partition.lookup(ip);
        self.classes
            .get(&piece.blocks)
            .expect("every partition piece is interned")
    }
}
