//! The policy compiler: `compile(model, node) -> Plan`, pure and deterministic.
//!
//! # Model: peer classes and subject classes
//!
//! The datapath answers "may local pod L talk to address X on (proto, port) in direction D"
//! with a fixed number of lookups, whatever the number of pods and policies:
//!
//! 1. ipcache (L's address) -> `EP_LOCAL`, isolation flags, **subject class** S;
//!    not isolated in D -> allow;
//! 2. ipcache (X) -> **peer class** P;
//! 3. longest-prefix match of the policy keys `(D, S, P, proto, port)` and
//!    `(D, S, ANY_PEER, proto, port)`: allow iff either hits.
//!
//! The Plan states these as longest-prefix tables (what the evaluators read); the datapath
//! answers them with hash lookups (map sync derives the hash tables, see
//! `ebpf/DATAPATH.md`): a full-length ipcache entry by exact address, and the policy match by
//! probing only the prefix lengths the subject's entries use.
//!
//! A *peer atom* is a distinct `from`/`to` entry of a policy that enforces some local pod:
//! a (namespace scope, pod selector) or an ipBlock (cidr, except). A peer class is a set of
//! addresses satisfying exactly the same atoms (plus, for named ports used in egress rules,
//! the same resolution of each name, since those resolve against the destination). Pod IPs
//! are /32 and /128 entries; the rest of the address space is partitioned by the ipBlocks'
//! prefixes ([`cidr`]) so the longest match of any address gives the exact set of ipBlocks
//! containing it (ipBlocks also match pod addresses: a pod's class includes the blocks
//! containing its IP). A subject class is a set of local pods isolated by the same policies
//! in each direction with the same resolution of the named ports their ingress rules use.
//! Labels that no policy selects on never reach a class ([`classes`]).
//!
//! Per (S, D, P) the compiler computes the exact union of what the rules allow, with the
//! first (policy, rule) for each piece, and encodes it as LPM entries ([`ports`]): prefix 80
//! for "any protocol", 88 for "any port of a protocol", prefix-aligned blocks for ports and
//! endPort ranges. Rules with no peers go to `ANY_PEER` once instead of once per class.
//! Protocols without ports (ICMP, ...) are looked up with port 0 and only match prefix-80
//! entries: NetworkPolicy allows them only through rules without `ports`.
//!
//! # Service virtual addresses
//!
//! Egress to a Service's virtual address is checked before kube-proxy's rewrite; the pass in
//! [`services`] decides it per (subject class, Service port) from this Plan's own lookups on
//! every endpoint, and flags the addresses in the ipcache (`EP_SERVICE`).
//!
//! # Why not the alternatives
//!
//! * Cilium: identities per distinct label set, so a high-cardinality label (pod-template-hash,
//!   per-pod ids) makes one identity per pod and the policy maps grow with it; ipBlocks do not
//!   match pod IPs. Our classes are keyed by the atoms policies use, not by labels.
//! * AWS network-policy-agent: one LPM trie per pod keyed by peer CIDR, every rule copied per
//!   pod. Our entries are per class pair, shared by all pods of a class.
//! * Calico: per-endpoint rule programs, cost per packet grows with the rule count. Ours is
//!   a fixed chain of lookups.
//!
//! # Determinism and cost
//!
//! Ids are given in order of first appearance while walking sorted inputs (policies, the
//! partition, pods); hash maps are only used for lookups; every map is sorted by key. Selectors
//! are evaluated through per-namespace and per-label indexes ([`index`]), classes are interned
//! by their sorted feature list, and policy entries are built per subject class only for the
//! peer classes that its rules' atoms reach (inverted index feature -> classes). Entries are
//! generated in key order per prefix length, so the map needs no global sort.
//!
//! # Size, and where it could shrink further
//!
//! Policy entries grow as the sum, over subject classes and their rules, of the peer classes
//! a rule's peers reach times the port blocks of the rule. Labels no policy selects on add
//! nothing. A node's Plan only has that node's subject classes (the agent compiles per node),
//! so it stays small; `node = None` (every pod local, used by the CLI) is the worst case.
//! The expensive rules are broad peers with ports: a `namespaceSelector` alone over many
//! namespaces, or an ipBlock covering pod ranges, gives one entry per reached peer class
//! (see `cargo xtask bench compile -- --breakdown`). A possible next step of the contract: a
//! second, coarse class per address in the ipcache (the atoms that depend only on the
//! namespace or the address: namespace-only selectors, ipBlocks, "any peer") looked up in
//! place of `ANY_PEER`, which keeps two policy lookups per packet and turns those entries
//! into one per coarse class.
mod cidr;
mod classes;
mod emit;
mod index;
mod ports;
mod services;

use crate::model::{Cluster, Direction, Peer};
use crate::plan::{Endpoint, PeerClass, Plan, PolicyRef, SubjectClass};

use classes::{Atoms, Interner, PeerClasses, Subjects};
use index::{addressable, PodIndex};

/// Compile the cluster's policies into the map contents for `node` (None: every pod local).
pub fn compile(cluster: &Cluster, node: Option<&str>) -> Plan {
    let mut index = PodIndex::new(cluster, index::selector_keys(cluster));
    let local: Vec<bool> = cluster
        .pods
        .iter()
        .map(|p| addressable(p) && node.is_none_or(|n| p.node.as_deref() == Some(n)))
        .collect();
    let mut names = Interner::new();
    let subjects = Subjects::build(&index, &local, &mut names);
    let atoms = Atoms::collect(cluster, &subjects.relevant, &mut names);
    let peers = PeerClasses::build(&mut index, &atoms, &names);

    let mut endpoints = Vec::new();
    let mut endpoint_of = vec![0u32; cluster.pods.len()];
    for (i, pod) in cluster.pods.iter().enumerate() {
        if !local[i] {
            continue;
        }
        let s = subjects.pod_class[i];
        let isolated = |d: Direction| {
            s != 0 && !subjects.classes.key(s).policies[d.code() as usize].is_empty()
        };
        endpoints.push(Endpoint {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ips: pod.ips.clone(),
            node: pod.node.clone(),
            subject_class: s,
            isolated_ingress: isolated(Direction::Ingress),
            isolated_egress: isolated(Direction::Egress),
        });
        endpoint_of[i] = endpoints.len() as u32;
    }

    let ipcache = emit::ipcache(cluster, &subjects, &peers, &endpoint_of);
    let policy = emit::policy(&subjects, &atoms, &peers);

    let subject_classes = subjects
        .classes
        .keys
        .iter()
        .zip(&subjects.members)
        .enumerate()
        .map(|(i, (key, members))| SubjectClass {
            id: i as u32 + 1,
            ingress_policies: key.policies[0].iter().map(|p| p + 1).collect(),
            egress_policies: key.policies[1].iter().map(|p| p + 1).collect(),
            members: members
                .iter()
                .map(|&p| cluster.pods[p as usize].key())
                .collect(),
        })
        .collect();
    let peer_classes = peers
        .classes
        .keys
        .iter()
        .zip(&peers.examples)
        .enumerate()
        .map(|(i, (sig, (examples, count)))| {
            let mut members = examples.clone();
            if *count > examples.len() {
                members.push(format!("... {} more", count - examples.len()));
            }
            PeerClass {
                id: i as u32 + 1,
                satisfies: sig
                    .iter()
                    .map(|&f| describe_feature(f, &atoms, &peers, &names))
                    .collect(),
                members,
            }
        })
        .collect();

    let mut plan = Plan {
        node: node.map(str::to_string),
        ipcache,
        policy,
        policies: cluster
            .policies
            .iter()
            .map(|p| PolicyRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            })
            .collect(),
        endpoints,
        subject_classes,
        peer_classes,
        // Filled by the Service pass below, from this Plan's own lookups.
        services: Vec::new(),
        service_policy: Vec::new(),
        service_ports: Vec::new(),
    };
    services::fill(cluster, &mut plan);
    plan
}

fn describe_feature(
    f: u32,
    atoms: &Atoms<'_>,
    peers: &PeerClasses,
    names: &Interner<classes::PortName<'_>>,
) -> String {
    use crate::model::NamespaceScope;
    if f < atoms.count() {
        return match atoms.peer(f) {
            Peer::Pods {
                namespaces: NamespaceScope::Own(ns),
                pods,
            } => format!("podSelector {pods} in namespace {ns}"),
            Peer::Pods {
                namespaces: NamespaceScope::Selector(sel),
                pods,
            } => format!("podSelector {pods} in namespaces {sel}"),
            Peer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
            Peer::IpBlock { cidr, except } => {
                let e: Vec<String> = except.iter().map(ToString::to_string).collect();
                format!("ipBlock {cidr} except {}", e.join(","))
            }
        };
    }
    let (name, port) = peers.port_features[(f - atoms.count()) as usize];
    let (n, proto) = names.key(name);
    format!("named port {n}/{proto} = {port}")
}

#[cfg(test)]
mod tests;
