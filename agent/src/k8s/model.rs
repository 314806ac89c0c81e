//! Incremental model building: the agent rebuilds the model on every change, and with 10k
//! pods converting every object each time costs more than the whole latency budget. Objects
//! are converted with [`crate::source::convert`]'s per-object functions and cached by
//! resourceVersion (the API server changes it on every write), so a change re-converts only
//! the objects that changed. The result equals `source::convert` over the same objects
//! (tested below).
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use kube::ResourceExt;

use crate::model::{Cluster, Namespace, Pod, Policy, NAMESPACE_NAME_LABEL};
use crate::source::convert::{convert_namespace, convert_pod, convert_policy};

/// Namespace used for namespaced objects without one (as `source::convert` does).
const DEFAULT_NAMESPACE: &str = "default";

type Key = (String, String);

struct Entry<T> {
    resource_version: String,
    value: T,
}

/// Converted objects by (namespace, name), valid while their resourceVersion is unchanged.
#[derive(Default)]
pub struct ModelCache {
    namespaces: HashMap<String, Entry<Namespace>>,
    pods: HashMap<Key, Entry<Option<Pod>>>,
    policies: HashMap<Key, Entry<Policy>>,
    /// Objects converted (cache misses) by the last build.
    pub last_converted: usize,
}

fn key<K: kube::Resource>(o: &K) -> Key {
    (
        o.meta()
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        o.name_any(),
    )
}

/// Carry over cached entries whose resourceVersion is unchanged, convert the rest.
fn refresh<K, T, Kf, Cf>(
    old: &mut HashMap<Kf, Entry<T>>,
    objects: &[Arc<K>],
    key: impl Fn(&K) -> Kf,
    convert: Cf,
    misses: &mut usize,
) -> HashMap<Kf, Entry<T>>
where
    K: kube::Resource,
    Kf: std::hash::Hash + Eq,
    Cf: Fn(&K) -> T,
{
    let mut next = HashMap::with_capacity(objects.len());
    for o in objects {
        let k = key(o);
        let rv = o.meta().resource_version.clone().unwrap_or_default();
        let entry = match old.remove(&k) {
            Some(e) if !rv.is_empty() && e.resource_version == rv => e,
            _ => {
                *misses += 1;
                Entry {
                    resource_version: rv,
                    value: convert(o),
                }
            }
        };
        next.insert(k, entry);
    }
    next
}

impl ModelCache {
    /// The model of these objects (the reflector stores' contents).
    pub fn build(
        &mut self,
        namespaces: &[Arc<corev1::Namespace>],
        pods: &[Arc<corev1::Pod>],
        policies: &[Arc<netv1::NetworkPolicy>],
    ) -> Cluster {
        let mut misses = 0;
        self.namespaces = refresh(
            &mut self.namespaces,
            namespaces,
            |n| n.name_any(),
            convert_namespace,
            &mut misses,
        );
        self.pods = refresh(&mut self.pods, pods, key, |p| convert_pod(p).0, &mut misses);
        self.policies = refresh(
            &mut self.policies,
            policies,
            key,
            |p| convert_policy(p, super::ORIGIN),
            &mut misses,
        );
        self.last_converted = misses;

        let mut cluster = Cluster::default();
        for (name, e) in &self.namespaces {
            cluster.namespaces.insert(name.clone(), e.value.clone());
        }
        let mut pods: Vec<(&Key, &Pod)> = self
            .pods
            .iter()
            .filter_map(|(k, e)| e.value.as_ref().map(|p| (k, p)))
            .collect();
        pods.sort_unstable_by(|a, b| a.0.cmp(b.0));
        cluster.pods = pods.into_iter().map(|(_, p)| p.clone()).collect();
        let mut policies: Vec<(&Key, &Policy)> =
            self.policies.iter().map(|(k, e)| (k, &e.value)).collect();
        policies.sort_unstable_by(|a, b| a.0.cmp(b.0));
        cluster.policies = policies.into_iter().map(|(_, p)| p.clone()).collect();
        // Namespaces referenced but not (yet) seen exist implicitly with their name label.
        let referenced: Vec<String> = cluster
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .chain(cluster.policies.iter().map(|p| p.namespace.clone()))
            .collect();
        for ns in referenced {
            cluster
                .namespaces
                .entry(ns.clone())
                .or_insert_with(|| Namespace {
                    labels: [(NAMESPACE_NAME_LABEL.to_string(), ns.clone())].into(),
                    name: ns,
                });
        }
        cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{convert, Objects, Sourced};

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> Arc<T> {
        Arc::new(serde_yaml::from_str(s).unwrap())
    }

    fn objects() -> (
        Vec<Arc<corev1::Namespace>>,
        Vec<Arc<corev1::Pod>>,
        Vec<Arc<netv1::NetworkPolicy>>,
    ) {
        let ns = vec![
            yaml("metadata: {name: a, resourceVersion: '1', labels: {team: x}}"),
            yaml("metadata: {name: b, resourceVersion: '2'}"),
        ];
        let pods = vec![
            yaml(
                "metadata: {name: web, namespace: a, resourceVersion: '3', labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}",
            ),
            yaml(
                "metadata: {name: done, namespace: a, resourceVersion: '4'}
spec: {containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.0.0.9}",
            ),
            yaml(
                "metadata: {name: x, namespace: c, resourceVersion: '5'}
spec: {nodeName: n2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.2}",
            ),
        ];
        let pols = vec![
            yaml(
                "metadata: {name: p, namespace: b, resourceVersion: '6'}
spec: {podSelector: {}, ingress: [{ports: [{port: http}]}]}",
            ),
            yaml(
                "metadata: {name: bad, namespace: a, resourceVersion: '7'}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]}",
            ),
        ];
        (ns, pods, pols)
    }

    fn reference(
        ns: &[Arc<corev1::Namespace>],
        pods: &[Arc<corev1::Pod>],
        pols: &[Arc<netv1::NetworkPolicy>],
    ) -> Cluster {
        let objects = Objects {
            namespaces: ns
                .iter()
                .map(|o| Sourced::new((**o).clone(), super::super::ORIGIN))
                .collect(),
            pods: pods
                .iter()
                .map(|o| Sourced::new((**o).clone(), super::super::ORIGIN))
                .collect(),
            policies: pols
                .iter()
                .map(|o| Sourced::new((**o).clone(), super::super::ORIGIN))
                .collect(),
        };
        convert(&objects).cluster
    }

    #[test]
    fn equals_source_convert_and_reconverts_only_changed_objects() {
        let (ns, mut pods, pols) = objects();
        let mut cache = ModelCache::default();
        assert_eq!(cache.build(&ns, &pods, &pols), reference(&ns, &pods, &pols));
        assert_eq!(cache.last_converted, 7);
        // Nothing changed: nothing converted.
        assert_eq!(cache.build(&ns, &pods, &pols), reference(&ns, &pods, &pols));
        assert_eq!(cache.last_converted, 0);
        // One pod relabelled (new resourceVersion), one deleted.
        let mut web = (*pods[0]).clone();
        web.metadata.labels = Some([("app".to_string(), "api".to_string())].into());
        web.metadata.resource_version = Some("8".into());
        pods[0] = Arc::new(web);
        pods.pop();
        let built = cache.build(&ns, &pods, &pols);
        assert_eq!(cache.last_converted, 1);
        assert_eq!(built, reference(&ns, &pods, &pols));
        assert_eq!(built.pods[0].labels["app"], "api");
        assert!(built
            .policies
            .iter()
            .any(|p| p.name == "bad" && !p.errors.is_empty()));
    }
}
