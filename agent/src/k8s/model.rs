//! The event-driven model: with 10k pods, rebuilding the model from the stores on every
//! change (even with a per-object cache) costs more than the whole latency budget. Instead the
//! watch tasks convert each changed object once (with [`crate::source::convert`]'s per-object
//! functions) and send it here, and [`Model`] patches a persistent [`Cluster`] in place: a
//! binary search into the sorted pod/policy vectors, reference counts for the implicit
//! namespaces, and an address index for event attribution. A relist (first list, 410 Gone,
//! reconnect) replaces one resource's objects at once when it completes, like the reflector
//! store does. The result equals `source::convert` over the stores' contents (tested below).
//!
//! Services are the exception to "convert once in the watch task": a Service's model depends
//! on its EndpointSlices, so the raw Services and slices are kept here, indexed by owning
//! Service, and an event recomputes only the one Service it touches.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as netv1;

use super::{Resource, RESOURCES};
use crate::model::{Cluster, Namespace, Pod, Policy, NAMESPACE_NAME_LABEL};
use crate::source::convert::service::slice_owner;
use crate::source::convert::{convert_namespace, convert_pod, convert_policy, convert_service};

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
    /// Raw: converted together with its slices by the model.
    Service(Key, Option<Box<corev1::Service>>),
    EndpointSlice(Key, Option<Box<discoveryv1::EndpointSlice>>),
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

    pub fn service(s: &corev1::Service) -> Object {
        Object::Service(key(&s.metadata), Some(Box::new(s.clone())))
    }

    pub fn endpoint_slice(s: &discoveryv1::EndpointSlice) -> Object {
        Object::EndpointSlice(key(&s.metadata), Some(Box::new(s.clone())))
    }

    /// The same object, deleted.
    pub fn deleted(self) -> Object {
        match self {
            Object::Namespace(k, _) => Object::Namespace(k, None),
            Object::Pod(k, _) => Object::Pod(k, None),
            Object::Policy(k, _) => Object::Policy(k, None),
            Object::Service(k, _) => Object::Service(k, None),
            Object::EndpointSlice(k, _) => Object::EndpointSlice(k, None),
        }
    }

    fn resource(&self) -> Resource {
        match self {
            Object::Namespace(..) => Resource::Namespaces,
            Object::Pod(..) => Resource::Pods,
            Object::Policy(..) => Resource::NetworkPolicies,
            Object::Service(..) => Resource::Services,
            Object::EndpointSlice(..) => Resource::EndpointSlices,
        }
    }

    /// (namespace, name); namespaces have an empty namespace.
    fn key(&self) -> Key {
        match self {
            Object::Namespace(n, _) => (String::new(), n.clone()),
            Object::Pod(k, _)
            | Object::Policy(k, _)
            | Object::Service(k, _)
            | Object::EndpointSlice(k, _) => k.clone(),
        }
    }

    fn named(&self) -> bool {
        !self.key().1.is_empty()
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
    /// Pods, policies and Services per namespace name (implicit namespaces exist while referenced).
    refs: HashMap<String, usize>,
    pods_by_ip: HashMap<IpAddr, String>,
    /// Raw Services and EndpointSlices, and the slices of each Service (by owner label).
    services: HashMap<Key, corev1::Service>,
    slices: HashMap<Key, discoveryv1::EndpointSlice>,
    slices_of: HashMap<Key, BTreeSet<Key>>,
    /// Validation errors of Services failing closed (and of their slices), per Service.
    service_errors: BTreeMap<Key, Vec<String>>,
    relists: [Option<Vec<Object>>; RESOURCES],
    listed: [bool; RESOURCES],
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

    /// `Object: field: message` of every Service (or EndpointSlice) that failed validation;
    /// such a Service keeps no endpoints, so connections to its addresses are denied.
    pub fn service_errors(&self) -> impl Iterator<Item = &String> {
        self.service_errors.values().flatten()
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
        let keep: HashSet<Key> = objects.iter().map(Object::key).collect();
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
            Resource::Services => self
                .services
                .keys()
                .filter(|k| !keep.contains(*k))
                .map(|k| Object::Service(k.clone(), None))
                .collect(),
            Resource::EndpointSlices => self
                .slices
                .keys()
                .filter(|k| !keep.contains(*k))
                .map(|k| Object::EndpointSlice(k.clone(), None))
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
            Object::Service(k, svc) => {
                match svc {
                    Some(svc) => self.services.insert(k.clone(), *svc),
                    None => self.services.remove(&k),
                };
                self.recompute_service(&k);
            }
            Object::EndpointSlice(k, slice) => {
                let old_owner = self.slices.get(&k).and_then(slice_owner);
                let new_owner = slice.as_deref().and_then(slice_owner);
                if let Some(owner) = &old_owner {
                    if let Some(set) = self.slices_of.get_mut(owner) {
                        set.remove(&k);
                        if set.is_empty() {
                            self.slices_of.remove(owner);
                        }
                    }
                }
                match slice {
                    Some(slice) => self.slices.insert(k.clone(), *slice),
                    None => self.slices.remove(&k),
                };
                if let Some(owner) = &new_owner {
                    self.slices_of
                        .entry(owner.clone())
                        .or_default()
                        .insert(k.clone());
                    self.recompute_service(owner);
                }
                if let Some(owner) = old_owner.filter(|o| Some(o) != new_owner.as_ref()) {
                    self.recompute_service(&owner);
                }
            }
        }
    }

    /// Convert one Service with its current slices into `cluster.services` (only Services with
    /// a virtual address are there).
    fn recompute_service(&mut self, k: &Key) {
        let converted = self.services.get(k).map(|svc| {
            let slices = self
                .slices_of
                .get(k)
                .into_iter()
                .flatten()
                .filter_map(|sk| self.slices.get(sk));
            let (draft, errors, _notices) = convert_service(svc, &k.0, &k.1, slices);
            let errors: Vec<String> = errors
                .into_iter()
                .map(|(object, e)| format!("{object}: {e}"))
                .collect();
            (draft.service, errors)
        });
        let (converted, errors) = match converted {
            Some((s, e)) => (Some(s), e),
            None => (None, Vec::new()),
        };
        if errors.is_empty() {
            self.service_errors.remove(k);
        } else if self.service_errors.get(k) != Some(&errors) {
            for e in &errors {
                tracing::warn!("{e}");
            }
            self.service_errors.insert(k.clone(), errors);
        }
        let new = converted.filter(|s| !s.vips.is_empty());
        if let Some(s) = &new {
            self.add_ref(&s.namespace);
        }
        if let Some(old) = patch(&mut self.cluster.services, k, new, |s| {
            (s.namespace.as_str(), s.name.as_str())
        }) {
            self.drop_ref(&old.namespace);
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
        svcs: BTreeMap<Key, corev1::Service>,
        slices: BTreeMap<Key, discoveryv1::EndpointSlice>,
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
                services: self.svcs.values().cloned().map(s).collect(),
                endpoint_slices: self.slices.values().cloned().map(s).collect(),
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
            ev.push(ModelEvent::Init(Resource::Services));
            ev.extend(
                self.svcs
                    .values()
                    .map(|o| ModelEvent::InitApply(Object::service(o))),
            );
            ev.push(ModelEvent::InitDone(Resource::Services));
            ev.push(ModelEvent::Init(Resource::EndpointSlices));
            ev.extend(
                self.slices
                    .values()
                    .map(|o| ModelEvent::InitApply(Object::endpoint_slice(o))),
            );
            ev.push(ModelEvent::InitDone(Resource::EndpointSlices));
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
        fn put_svc(&mut self, s: &str) -> ModelEvent {
            let o: corev1::Service = yaml(s);
            let e = ModelEvent::Apply(Object::service(&o));
            self.svcs.insert(key(&o.metadata), o);
            e
        }
        fn del_svc(&mut self, ns: &str, name: &str) -> ModelEvent {
            let o = self.svcs.remove(&(ns.into(), name.into())).unwrap();
            ModelEvent::Apply(Object::service(&o).deleted())
        }
        fn put_slice(&mut self, s: &str) -> ModelEvent {
            let o: discoveryv1::EndpointSlice = yaml(s);
            let e = ModelEvent::Apply(Object::endpoint_slice(&o));
            self.slices.insert(key(&o.metadata), o);
            e
        }
        fn del_slice(&mut self, ns: &str, name: &str) -> ModelEvent {
            let o = self.slices.remove(&(ns.into(), name.into())).unwrap();
            ModelEvent::Apply(Object::endpoint_slice(&o).deleted())
        }
    }

    fn pod(ns: &str, name: &str, app: &str, ip: &str, phase: &str) -> String {
        format!(
            "metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]}}
status: {{phase: {phase}, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}"
        )
    }

    fn svc(ns: &str, name: &str, ip: &str) -> String {
        format!(
            "metadata: {{name: {name}, namespace: {ns}}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}"
        )
    }

    fn slice(ns: &str, name: &str, service: &str, ip: &str, ready: bool) -> String {
        format!(
            "metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{ip}], conditions: {{ready: {ready}}}}}]"
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
        store.put_svc(&svc("a", "web", "10.96.0.1"));
        store.put_slice(&slice("a", "web-1", "web", "10.0.0.1", true));
        store.put_slice(&slice("a", "orphan-1", "gone", "10.0.0.7", true));
        let mut model = Model::default();
        for e in store.relist() {
            assert!(!model.ready());
            model.apply(e);
        }
        assert!(model.ready());
        check(&model, &store, "the first list");
        assert_eq!(model.cluster().services[0].endpoints.len(), 1);
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
            ("second slice", |s| {
                s.put_slice(&slice("a", "web-2", "web", "10.0.0.3", true))
            }),
            ("endpoint not ready", |s| {
                s.put_slice(&slice("a", "web-2", "web", "10.0.0.3", false))
            }),
            ("orphan slice's Service appears", |s| {
                s.put_svc(&svc("a", "gone", "10.96.0.2"))
            }),
            ("slice moves to another Service", |s| {
                s.put_slice(&slice("a", "web-1", "gone", "10.0.0.1", true))
            }),
            ("invalid slice fails its Service closed", |s| {
                s.put_slice(&slice("a", "web-2", "web", "10.0.0.300", true))
            }),
            ("Service in an implicit namespace", |s| {
                s.put_svc(&svc("i", "api", "10.96.0.3"))
            }),
            ("Service becomes headless", |s| {
                s.put_svc(&svc("i", "api", "None"))
            }),
            ("slice deleted", |s| s.del_slice("a", "web-2")),
            ("Service deleted, slices stay", |s| s.del_svc("a", "gone")),
        ];
        for (step, f) in steps {
            let e = f(&mut store);
            model.apply(e);
            check(&model, &store, step);
            let errors: Vec<&String> = model.service_errors().collect();
            if step == "invalid slice fails its Service closed" {
                assert_eq!(errors.len(), 1, "{errors:?}");
                assert!(
                    errors[0].starts_with("EndpointSlice a/web-2: endpoints[0].addresses[0]: "),
                    "{errors:?}"
                );
            } else if step == "slice deleted" {
                assert!(errors.is_empty(), "{errors:?}");
            }
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
            s.put_svc(&svc("a", "gone", "10.96.0.4"));
            s.put_slice(&slice("a", "web-3", "web", "10.0.0.5", true));
            s.del_slice("a", "orphan-1");
            s.del_svc("i", "api");
            s.put_svc(&svc("j", "new", "10.96.0.5"));
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
