//! Indexes that evaluate selectors against candidate pods only.
//!
//! Selectors are scoped to namespaces, and most carry `matchLabels`: the index keeps the
//! addressable pods of each namespace and, for the label keys some selector's `matchLabels`
//! uses, `(namespace, key, value) -> pods`. A selector is then checked only against the
//! smallest candidate list. Labels no selector mentions (pod-template-hash, per-pod ids) are
//! not indexed at all. Namespace selectors are memoised (there are few distinct ones).
use std::collections::{HashMap, HashSet};

use crate::model::{Cluster, LabelSelector, NamespaceScope, Pod};

/// A pod that can send or receive packets as a pod: has an address and its own network
/// namespace. Only these are endpoints or pod peers.
pub(crate) fn addressable(pod: &Pod) -> bool {
    !pod.host_network && !pod.ips.is_empty()
}

pub(crate) struct PodIndex<'a> {
    pub cluster: &'a Cluster,
    by_ns: HashMap<&'a str, Vec<u32>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<u32>>,
    indexed_keys: HashSet<&'a str>,
    ns_memo: HashMap<&'a LabelSelector, Vec<&'a str>>,
}

impl<'a> PodIndex<'a> {
    /// Index the addressable pods of `cluster` by namespace and by the labels in `keys`.
    pub fn new(cluster: &'a Cluster, keys: HashSet<&'a str>) -> Self {
        let mut by_ns: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<u32>> = HashMap::new();
        for (i, pod) in cluster.pods.iter().enumerate() {
            if !addressable(pod) {
                continue;
            }
            let ns = pod.namespace.as_str();
            by_ns.entry(ns).or_default().push(i as u32);
            for (k, v) in &pod.labels {
                if keys.contains(k.as_str()) {
                    by_label
                        .entry((ns, k.as_str(), v.as_str()))
                        .or_default()
                        .push(i as u32);
                }
            }
        }
        PodIndex {
            cluster,
            by_ns,
            by_label,
            indexed_keys: keys,
            ns_memo: HashMap::new(),
        }
    }

    /// Addressable pods of namespace `ns` matching `sel`, in pod order.
    pub fn select_in(&self, ns: &str, sel: &LabelSelector) -> Vec<u32> {
        let Some(all) = self.by_ns.get(ns) else {
            return Vec::new();
        };
        let mut cand: &[u32] = all;
        for (k, v) in &sel.match_labels {
            if !self.indexed_keys.contains(k.as_str()) {
                continue;
            }
            match self.by_label.get(&(ns, k.as_str(), v.as_str())) {
                Some(l) if l.len() < cand.len() => cand = l,
                Some(_) => {}
                None => return Vec::new(),
            }
        }
        cand.iter()
            .copied()
            .filter(|&i| sel.matches(&self.cluster.pods[i as usize].labels))
            .collect()
    }

    /// Namespaces a peer's namespace scope covers, sorted by name.
    pub fn namespaces(&mut self, scope: &'a NamespaceScope) -> Vec<&'a str> {
        match scope {
            NamespaceScope::Own(ns) => vec![ns.as_str()],
            NamespaceScope::Selector(sel) => {
                let cluster = self.cluster;
                self.ns_memo
                    .entry(sel)
                    .or_insert_with(|| {
                        cluster
                            .namespaces
                            .values()
                            .filter(|n| sel.matches(&n.labels))
                            .map(|n| n.name.as_str())
                            .collect()
                    })
                    .clone()
            }
        }
    }
}

/// Every label key a `matchLabels` of `cluster`'s policies mentions (pod selectors only).
pub(crate) fn selector_keys(cluster: &Cluster) -> HashSet<&str> {
    use crate::model::Peer;
    let mut keys = HashSet::new();
    for p in &cluster.policies {
        keys.extend(p.pod_selector.match_labels.keys().map(String::as_str));
        for r in p.ingress.iter().chain(&p.egress) {
            for peer in &r.peers {
                if let Peer::Pods { pods, .. } = peer {
                    keys.extend(pods.match_labels.keys().map(String::as_str));
                }
            }
        }
    }
    keys
}
