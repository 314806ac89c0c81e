//! Lookups the checks share, built once per lint run so that checks cost about
//! (rules x pods of the namespaces concerned) rather than (rules x every pod of the cluster).
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use crate::model::{Cluster, LabelSelector, NamespaceScope, Peer, Pod, Policy, Protocol};

pub(super) struct Index<'a> {
    pub cluster: &'a Cluster,
    /// Non-hostNetwork pods (the ones policies select and peers match), in cluster order.
    pods: Vec<&'a Pod>,
    /// Positions in `pods`, ascending, by namespace.
    pods_by_ns: BTreeMap<&'a str, Vec<usize>>,
    /// Policy indices by namespace, in cluster order.
    policies_by_ns: BTreeMap<&'a str, Vec<usize>>,
    /// Peers repeat a lot across policies (`0.0.0.0/0`, `podSelector: {}`): memoised.
    peer_pods: RefCell<HashMap<&'a Peer, Rc<Vec<usize>>>>,
    /// Named port resolutions per (peer, or every pod; name; protocol): memoised.
    resolutions: RefCell<NamedPorts<'a>>,
}

type NamedPorts<'a> = HashMap<(Option<&'a Peer>, &'a str, Protocol), Rc<BTreeSet<u16>>>;

impl<'a> Index<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        let pods: Vec<&Pod> = cluster.pods.iter().filter(|p| !p.host_network).collect();
        let mut pods_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(i);
        }
        let mut policies_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in cluster.policies.iter().enumerate() {
            policies_by_ns
                .entry(p.namespace.as_str())
                .or_default()
                .push(i);
        }
        Index {
            cluster,
            pods,
            pods_by_ns,
            policies_by_ns,
            peer_pods: RefCell::default(),
            resolutions: RefCell::default(),
        }
    }

    /// Every pod policies can select or match, in cluster order.
    pub fn pods(&self) -> impl Iterator<Item = &'a Pod> + '_ {
        self.pods.iter().copied()
    }

    /// The pods of namespace `ns`, in cluster order.
    pub fn pods_in(&self, ns: &str) -> Vec<&'a Pod> {
        self.positions_in(ns)
            .iter()
            .map(|&i| self.pods[i])
            .collect()
    }

    fn positions_in(&self, ns: &str) -> &[usize] {
        self.pods_by_ns.get(ns).map_or(&[], Vec::as_slice)
    }

    /// Namespaces that have pods, sorted.
    pub fn populated_namespaces(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.pods_by_ns.keys().copied()
    }

    pub fn policies_in(&self, ns: &str) -> &[usize] {
        self.policies_by_ns.get(ns).map_or(&[], Vec::as_slice)
    }

    /// Names of the namespaces whose labels match `sel`, sorted.
    pub fn namespaces_matching(&self, sel: &LabelSelector) -> Vec<&'a str> {
        self.cluster
            .namespaces
            .values()
            .filter(|n| sel.matches(&n.labels))
            .map(|n| n.name.as_str())
            .collect()
    }

    pub fn scope_namespaces(&self, scope: &'a NamespaceScope) -> Vec<&'a str> {
        match scope {
            NamespaceScope::Own(ns) => vec![ns.as_str()],
            NamespaceScope::Selector(sel) => self.namespaces_matching(sel),
        }
    }

    /// The pods `policy` applies to, in cluster order.
    pub fn selected(&self, policy: &Policy) -> Vec<&'a Pod> {
        self.positions_in(&policy.namespace)
            .iter()
            .map(|&i| self.pods[i])
            .filter(|p| policy.pod_selector.matches(&p.labels))
            .collect()
    }

    /// The pods a peer matches (by selectors, or for an ipBlock by address), in cluster order.
    #[cfg(test)]
    pub fn peer_pods(&self, peer: &'a Peer) -> Vec<&'a Pod> {
        self.peer_positions(peer)
            .iter()
            .map(|&i| self.pods[i])
            .collect()
    }

    /// The pods any of `peers` matches, in cluster order, without repetition.
    pub fn peers_pods(&self, peers: &'a [Peer]) -> Vec<&'a Pod> {
        let mut all: Vec<usize> = peers
            .iter()
            .flat_map(|p| self.peer_positions(p).iter().copied().collect::<Vec<_>>())
            .collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter().map(|i| self.pods[i]).collect()
    }

    /// Whether the peer matches at least one pod.
    pub fn peer_has_pods(&self, peer: &'a Peer) -> bool {
        !self.peer_positions(peer).is_empty()
    }

    /// The numbers that the pods matched by `peer` (every pod: None) resolve the named port
    /// `name`/`protocol` to.
    pub fn resolutions(
        &self,
        peer: Option<&'a Peer>,
        name: &'a str,
        protocol: Protocol,
    ) -> Rc<BTreeSet<u16>> {
        let key = (peer, name, protocol);
        if let Some(hit) = self.resolutions.borrow().get(&key) {
            return hit.clone();
        }
        let resolve = |i: usize| self.pods[i].resolve_named_port(name, protocol);
        let set: BTreeSet<u16> = match peer {
            Some(peer) => self
                .peer_positions(peer)
                .iter()
                .filter_map(|&i| resolve(i))
                .collect(),
            None => (0..self.pods.len()).filter_map(resolve).collect(),
        };
        let set = Rc::new(set);
        self.resolutions.borrow_mut().insert(key, set.clone());
        set
    }

    fn peer_positions(&self, peer: &'a Peer) -> Rc<Vec<usize>> {
        if let Some(hit) = self.peer_pods.borrow().get(peer) {
            return hit.clone();
        }
        let positions: Vec<usize> = match peer {
            // Namespaces are sorted and so are the pods inside each: ascending positions.
            Peer::Pods { namespaces, pods } => self
                .scope_namespaces(namespaces)
                .into_iter()
                .flat_map(|ns| self.positions_in(ns).iter().copied())
                .filter(|&i| pods.matches(&self.pods[i].labels))
                .collect(),
            Peer::IpBlock { .. } => (0..self.pods.len())
                .filter(|&i| {
                    self.pods[i]
                        .ips
                        .iter()
                        .any(|ip| peer.ip_block_contains(*ip))
                })
                .collect(),
        };
        let positions = Rc::new(positions);
        self.peer_pods.borrow_mut().insert(peer, positions.clone());
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn peer_pods_agree_with_the_model() {
        let c = ClusterBuilder::new()
            .namespace("a", &[("team", "x")])
            .pod("a", "p1", &[("app", "web")], "10.0.0.1")
            .pod("b", "p2", &[("app", "web")], "10.0.0.2")
            .pod("b", "h", &[("app", "web")], "10.0.0.3")
            .host_network()
            .policy(
                policy("b", "pol")
                    .ingress(rule().pods(&[("app", "web")]))
                    .ingress(rule().namespaces(&[("team", "x")]))
                    .ingress(rule().ip_block("10.0.0.0/31", &[])),
            )
            .build();
        let ix = Index::new(&c);
        let keys = |v: Vec<&Pod>| v.iter().map(|p| p.key()).collect::<Vec<_>>();
        let rules = &c.policies[0].ingress;
        assert_eq!(keys(ix.peer_pods(&rules[0].peers[0])), vec!["b/p2"]);
        assert_eq!(keys(ix.peer_pods(&rules[1].peers[0])), vec!["a/p1"]);
        assert_eq!(keys(ix.peer_pods(&rules[2].peers[0])), vec!["a/p1"]);
        assert_eq!(keys(ix.selected(&c.policies[0])), vec!["b/p2"]);
        for rule in rules {
            let peer = &rule.peers[0];
            if let Peer::Pods { .. } = peer {
                let expected: Vec<String> = c
                    .pods
                    .iter()
                    .filter(|p| c.peer_selects_pod(peer, p))
                    .map(|p| p.key())
                    .collect();
                assert_eq!(keys(ix.peer_pods(peer)), expected);
            }
        }
    }
}
