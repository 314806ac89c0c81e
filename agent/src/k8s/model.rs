//! The event-driven model: with 10k pods, rebuilding the model from the stores on every
//! change (even with a per-object cache) costs more than the whole latency budget. Instead the
//! watch tasks convert each changed object once (with [`crate::source::convert`]'s per-object
//! functions) and send it here, and [`Model`] patches a persistent [`Cluster`] in place: a
//! binary search into the sorted pod/policy vectors, reference counts for the implicit
//! namespaces, and an address index for event attribution. A relist (first list, 410 Gone,
//! reconnect) replaces one resource's objects at once when it completes, like the reflector
//! store does. The result equals `source::convert` over the stores' contents (tested below).
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;

use super::Resource;
use crate::model::{Cluster, Namespace, Pod, Policy, NAMESPACE_NAME_LABEL};
use crate::source::convert::{convert_namespace, convert_pod, convert_policy};

/// Namespace used for namespaced objects without one (as `source::convert` does).
const DEFAULT_NAMESPACE: &str = "default";

/// (namespace, name).
pub type Key = (String, String);

/// One converted object, or its absence (deleted, or a terminated pod).
#[derive(Clone, Debug)]
pub enum Object {
    Namespace(String, Option<Namespace>),
    Pod(Key, Option<Pod>),
    Policy(Key, Option<Policy>),
}

impl Object {
    pub fn namespace(ns: &corev1::Namespace) -> Object {
        let name = ns.metadata.name.clone().unwrap_or_default();
        Object::Namespace(name, Some(convert_namespace(ns)))
    }

    pub fn pod(p: &corev1::Pod) -> Object {
        Object::Pod(key(&p.metadata), convert_pod(p).0)
    }

    pub fn policy(p: &netv1::NetworkPolicy) -> Object {
        Object::Policy(key(&p.metadata), Some(convert_policy(p, super::ORIGIN)))
    }

    /// The same object, deleted.
    pub fn deleted(self) -> Object {
        match self {
            Object::Namespace(k, _) => Object::Namespace(k, None),
            Object::Pod(k, _) => Object::Pod(k, None),
            Object::Policy(k, _) => Object::Policy(k, None),
        }
    }

    fn resource(&self) -> Resource {
        match self {
            Object::Namespace(..) => Resource::Namespaces,
            Object::Pod(..) => Resource::Pods,
            Object::Policy(..) => Resource::NetworkPolicies,
        }
    }

    fn named(&self) -> bool {
        match self {
            Object::Namespace(n, _) => !n.is_empty(),
            Object::Pod(k, _) | Object::Policy(k, _) => !k.1.is_empty(),
        }
    }
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What the watch tasks send, mirroring kube's watcher events.
#[derive(Clone, Debug)]
pub enum ModelEvent {
    /// A relist of this resource starts.
    Init(Resource),
    /// An object of the relist in progress.
    InitApply(Object),
    /// The relist is complete: it replaces the resource's objects.
    InitDone(Resource),
    /// A watch event (added, modified, or deleted as an absent object).
    Apply(Object),
}

/// The persistent model, patched by [`ModelEvent`]s.
#[derive(Default)]
pub struct Model {
    cluster: Cluster,
    /// Namespaces seen as objects (the others in `cluster.namespaces` are implicit).
    explicit: BTreeSet<String>,
    /// Pods and policies per namespace name (implicit namespaces exist while referenced).
    refs: HashMap<String, usize>,
    pods_by_ip: HashMap<IpAddr, String>,
    relists: [Option<Vec<Object>>; 3],
    listed: [bool; 3],
    /// Events applied since this was last reset (by the caller).
    pub applied: usize,
}

fn implicit(name: &str) -> Namespace {
    Namespace {
        name: name.to_string(),
        labels: [(NAMESPACE_NAME_LABEL.to_string(), name.to_string())].into(),
    }
}

/// Position of `key` in a vector sorted by (namespace, name).
fn find<T>(v: &[T], key: &Key, of: impl Fn(&T) -> (&str, &str)) -> Result<usize, usize> {
    v.binary_search_by(|x| of(x).cmp(&(key.0.as_str(), key.1.as_str())))
}

/// Insert, replace or remove `key` in a sorted vector; returns the value it replaced.
fn patch<T>(
    v: &mut Vec<T>,
    key: &Key,
    new: Option<T>,
    of: impl Fn(&T) -> (&str, &str),
) -> Option<T> {
    match (find(v, key, of), new) {
        (Ok(i), Some(n)) => Some(std::mem::replace(&mut v[i], n)),
        (Ok(i), None) => Some(v.remove(i)),
        (Err(i), Some(n)) => {
            v.insert(i, n);
            None
        }
        (Err(_), None) => None,
    }
}

impl Model {
    /// The model of everything applied so far.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Pod addresses (hostNetwork pods excluded) -> `ns/name`.
    pub fn pods_by_ip(&self) -> &HashMap<IpAddr, String> {
        &self.pods_by_ip
    }

    /// Whether every resource has completed its first list.
    pub fn ready(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    /// Number of namespaces seen as objects.
    pub fn explicit_namespaces(&self) -> usize {
        self.explicit.len()
    }

    pub fn apply(&mut self, event: ModelEvent) {
        self.applied += 1;
        match event {
            ModelEvent::Init(r) => self.relists[r as usize] = Some(Vec::new()),
            ModelEvent::InitApply(o) => self.relists[o.resource() as usize]
                .get_or_insert_with(Vec::new)
                .push(o),
            ModelEvent::InitDone(r) => {
                let objects = self.relists[r as usize].take().unwrap_or_default();
                self.replace(r, objects);
                self.listed[r as usize] = true;
            }
            ModelEvent::Apply(o) => self.set(o),
        }
    }

    /// Make `objects` the complete set of resource `r` (later duplicates win).
    fn replace(&mut self, r: Resource, objects: Vec<Object>) {
        let keep: HashSet<Key> = objects
            .iter()
            .map(|o| match o {
                Object::Namespace(n, _) => (String::new(), n.clone()),
                Object::Pod(k, _) | Object::Policy(k, _) => k.clone(),
            })
            .collect();
        let gone: Vec<Object> = match r {
            Resource::Namespaces => self
                .explicit
                .iter()
                .filter(|n| !keep.contains(&(String::new(), (*n).clone())))
                .map(|n| Object::Namespace(n.clone(), None))
                .collect(),
            Resource::Pods => self
                .cluster
                .pods
                .iter()
                .map(|p| (p.namespace.clone(), p.name.clone()))
                .filter(|k| !keep.contains(k))
                .map(|k| Object::Pod(k, None))
                .collect(),
            Resource::NetworkPolicies => self
                .cluster
                .policies
                .iter()
                .map(|p| (p.namespace.clone(), p.name.clone()))
                .filter(|k| !keep.contains(k))
                .map(|k| Object::Policy(k, None))
                .collect(),
        };
        for o in gone.into_iter().chain(objects) {
            self.set(o);
        }
    }

    fn set(&mut self, o: Object) {
        if !o.named() {
            return;
        }
        match o {
            Object::Namespace(name, ns) => match ns {
                Some(ns) => {
                    self.explicit.insert(name.clone());
                    self.cluster.namespaces.insert(name, ns);
                }
                None => {
                    self.explicit.remove(&name);
                    if self.refs.contains_key(&name) {
                        self.cluster
                            .namespaces
                            .insert(name.clone(), implicit(&name));
                    } else {
                        self.cluster.namespaces.remove(&name);
                    }
                }
            },
            Object::Pod(k, pod) => {
                if let Some(p) = &pod {
                    self.add_ref(&p.namespace);
                    if !p.host_network {
                        for ip in &p.ips {
                            self.pods_by_ip.insert(*ip, p.key());
                        }
                    }
                }
                let new_ips: Vec<IpAddr> = pod.as_ref().map(|p| p.ips.clone()).unwrap_or_default();
                if let Some(old) = patch(&mut self.cluster.pods, &k, pod, |p| {
                    (p.namespace.as_str(), p.name.as_str())
                }) {
                    let old_key = old.key();
                    for ip in old.ips.iter().filter(|ip| !new_ips.contains(ip)) {
                        if self.pods_by_ip.get(ip) == Some(&old_key) {
                            self.pods_by_ip.remove(ip);
                        }
                    }
                    self.drop_ref(&old.namespace);
                }
            }
            Object::Policy(k, policy) => {
                if let Some(p) = &policy {
                    self.add_ref(&p.namespace);
                }
                if let Some(old) = patch(&mut self.cluster.policies, &k, policy, |p| {
                    (p.namespace.as_str(), p.name.as_str())
                }) {
                    self.drop_ref(&old.namespace);
                }
            }
        }
    }

    fn add_ref(&mut self, ns: &str) {
        *self.refs.entry(ns.to_string()).or_default() += 1;
        if !self.cluster.namespaces.contains_key(ns) {
            self.cluster.namespaces.insert(ns.to_string(), implicit(ns));
        }
    }

    fn drop_ref(&mut self, ns: &str) {
        if let Some(n) = self.refs.get_mut(ns) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(ns);
                if !self.explicit.contains(ns) {
                    self.cluster.namespaces.remove(ns);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{convert, Objects, Sourced};
    use std::collections::BTreeMap;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).unwrap()
    }

    /// A fake store: the objects by (namespace, name), as the reflector keeps them.
    #[derive(Default, Clone)]
    struct Store {
        ns: BTreeMap<String, corev1::Namespace>,
        pods: BTreeMap<Key, corev1::Pod>,
        pols: BTreeMap<Key, netv1::NetworkPolicy>,
    }

    impl Store {
        fn reference(&self) -> Cluster {
            fn s<T>(o: T) -> Sourced<T> {
                Sourced::new(o, super::super::ORIGIN)
            }
            let objects = Objects {
                namespaces: self.ns.values().cloned().map(s).collect(),
                pods: self.pods.values().cloned().map(s).collect(),
                policies: self.pols.values().cloned().map(s).collect(),
                ..Default::default()
            };
            convert(&objects).cluster
        }

        /// The events of a full relist of every resource.
        fn relist(&self) -> Vec<ModelEvent> {
            let mut ev = vec![ModelEvent::Init(Resource::Namespaces)];
            ev.extend(
                self.ns
                    .values()
                    .map(|o| ModelEvent::InitApply(Object::namespace(o))),
            );
            ev.push(ModelEvent::InitDone(Resource::Namespaces));
            ev.push(ModelEvent::Init(Resource::Pods));
            ev.extend(
                self.pods
                    .values()
                    .map(|o| ModelEvent::InitApply(Object::pod(o))),
            );
            ev.push(ModelEvent::InitDone(Resource::Pods));
            ev.push(ModelEvent::Init(Resource::NetworkPolicies));
            ev.extend(
                self.pols
                    .values()
                    .map(|o| ModelEvent::InitApply(Object::policy(o))),
            );
            ev.push(ModelEvent::InitDone(Resource::NetworkPolicies));
            ev
        }

        fn put_ns(&mut self, s: &str) -> ModelEvent {
            let o: corev1::Namespace = yaml(s);
            let e = ModelEvent::Apply(Object::namespace(&o));
            self.ns.insert(o.metadata.name.clone().unwrap(), o);
            e
        }
        fn del_ns(&mut self, name: &str) -> ModelEvent {
            let o = self.ns.remove(name).unwrap();
            ModelEvent::Apply(Object::namespace(&o).deleted())
        }
        fn put_pod(&mut self, s: &str) -> ModelEvent {
            let o: corev1::Pod = yaml(s);
            let e = ModelEvent::Apply(Object::pod(&o));
            self.pods.insert(key(&o.metadata), o);
            e
        }
        fn del_pod(&mut self, ns: &str, name: &str) -> ModelEvent {
            let o = self.pods.remove(&(ns.into(), name.into())).unwrap();
            ModelEvent::Apply(Object::pod(&o).deleted())
        }
        fn put_pol(&mut self, s: &str) -> ModelEvent {
            let o: netv1::NetworkPolicy = yaml(s);
            let e = ModelEvent::Apply(Object::policy(&o));
            self.pols.insert(key(&o.metadata), o);
            e
        }
        fn del_pol(&mut self, ns: &str, name: &str) -> ModelEvent {
            let o = self.pols.remove(&(ns.into(), name.into())).unwrap();
            ModelEvent::Apply(Object::policy(&o).deleted())
        }
    }

    fn pod(ns: &str, name: &str, app: &str, ip: &str, phase: &str) -> String {
        format!(
            "metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]}}
status: {{phase: {phase}, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}"
        )
    }

    fn check(model: &Model, store: &Store, step: &str) {
        let reference = store.reference();
        assert_eq!(model.cluster(), &reference, "after {step}");
        let by_ip: HashMap<IpAddr, String> = reference
            .pods
            .iter()
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p.key())))
            .collect();
        assert_eq!(model.pods_by_ip(), &by_ip, "pods_by_ip after {step}");
    }

    #[test]
    fn event_driven_model_equals_source_convert() {
        let mut store = Store::default();
        store.put_ns("metadata: {name: a, labels: {team: x}}");
        store.put_ns("metadata: {name: b}");
        store.put_pod(&pod("a", "web", "web", "10.0.0.1", "Running"));
        store.put_pod(&pod("a", "done", "web", "10.0.0.9", "Succeeded"));
        store.put_pod(&pod("c", "x", "db", "10.0.0.2", "Running"));
        store.put_pol(
            "metadata: {name: p, namespace: b}
spec: {podSelector: {}, ingress: [{ports: [{port: http}]}]}",
        );
        store.put_pol(
            "metadata: {name: bad, namespace: a}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]}",
        );
        let mut model = Model::default();
        for e in store.relist() {
            assert!(!model.ready());
            model.apply(e);
        }
        assert!(model.ready());
        check(&model, &store, "the first list");
        assert!(model
            .cluster()
            .policies
            .iter()
            .any(|p| p.name == "bad" && !p.errors.is_empty()));

        type Step = fn(&mut Store) -> ModelEvent;
        let steps: Vec<(&str, Step)> = vec![
            ("relabel pod", |s| {
                s.put_pod(&pod("a", "web", "api", "10.0.0.1", "Running"))
            }),
            ("new pod in implicit namespace", |s| {
                s.put_pod(&pod("d", "y", "web", "10.0.0.3", "Running"))
            }),
            ("pod readdressed", |s| {
                s.put_pod(&pod("d", "y", "web", "10.0.0.4", "Running"))
            }),
            ("pod terminates", |s| {
                s.put_pod(&pod("c", "x", "db", "10.0.0.2", "Failed"))
            }),
            ("terminated pod deleted", |s| s.del_pod("c", "x")),
            ("namespace c declared", |s| {
                s.put_ns("metadata: {name: c, labels: {env: prod}}")
            }),
            ("namespace d declared", |s| {
                s.put_ns("metadata: {name: d, labels: {env: dev}}")
            }),
            ("namespace relabelled", |s| {
                s.put_ns("metadata: {name: a, labels: {team: y}}")
            }),
            ("referenced namespace deleted", |s| s.del_ns("d")),
            ("last pod of implicit namespace deleted", |s| {
                s.del_pod("d", "y")
            }),
            ("policy changed", |s| {
                s.put_pol(
                    "metadata: {name: p, namespace: b}
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{}]}",
                )
            }),
            ("policy in new namespace", |s| {
                s.put_pol("metadata: {name: q, namespace: e}\nspec: {podSelector: {}}")
            }),
            ("policy deleted", |s| s.del_pol("a", "bad")),
            ("only policy of implicit namespace deleted", |s| {
                s.del_pol("e", "q")
            }),
            ("unreferenced namespace deleted", |s| s.del_ns("b")),
        ];
        for (step, f) in steps {
            let e = f(&mut store);
            model.apply(e);
            check(&model, &store, step);
        }

        // A relist (410 Gone) after changes the watch missed: objects added, changed, gone.
        let missed: Store = {
            let mut s = store.clone();
            s.del_pod("a", "web");
            s.put_pod(&pod("f", "z", "web", "10.0.0.5", "Running"));
            s.put_pod(&pod("a", "done", "web", "10.0.0.9", "Running"));
            s.del_ns("c");
            s.put_ns("metadata: {name: g}");
            s.del_pol("b", "p");
            s.put_pol("metadata: {name: r, namespace: h}\nspec: {podSelector: {}}");
            s
        };
        let events = missed.relist();
        // The model keeps the old objects until a resource's relist completes.
        let first_done = events
            .iter()
            .position(|e| matches!(e, ModelEvent::InitDone(_)))
            .unwrap();
        for e in &events[..first_done] {
            model.apply(e.clone());
        }
        check(&model, &store, "a relist in progress");
        for e in &events[first_done..] {
            model.apply(e.clone());
        }
        check(&model, &missed, "the relist");
    }
}
