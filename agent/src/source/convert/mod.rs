//! k8s-openapi objects -> the validated [`Cluster`] model.
//!
//! Both sources (manifest files and the Kubernetes watch) end here, so the CLI, the lab and
//! the agent see the same model for the same objects. Validation follows the API server
//! (apimachinery `pkg/apis/networking/validation` and `util/validation`), because manifests
//! never went through it and because a model that is wrong about validity is wrong about
//! traffic. Nothing here fails as a whole: a bad object is reported and, for policies, kept in
//! a fail-closed form (see [`policy`]), so one typo never stops the rest from compiling.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::model::{Cluster, Namespace, Pod, Policy};

mod pod;
mod policy;
pub mod service;
pub mod syntax;

pub use service::{convert_service, ServiceDraft};

#[cfg(test)]
mod tests;

/// An object and where it came from (file path, `file#document`, or `kubernetes`), used in
/// every message about it.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub object: T,
    pub origin: String,
}

impl<T> Sourced<T> {
    pub fn new(object: T, origin: impl Into<String>) -> Self {
        Sourced {
            object,
            origin: origin.into(),
        }
    }
}

/// The raw objects of a cluster, in the order they were read (later duplicates win).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub namespaces: Vec<Sourced<corev1::Namespace>>,
    pub pods: Vec<Sourced<corev1::Pod>>,
    pub policies: Vec<Sourced<netv1::NetworkPolicy>>,
    pub services: Vec<Sourced<corev1::Service>>,
    /// discovery.k8s.io/v1; matched to Services by the `kubernetes.io/service-name` label.
    pub endpoint_slices: Vec<Sourced<discoveryv1::EndpointSlice>>,
}

/// The model plus everything worth telling the user about how it was built.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    pub cluster: Cluster,
    /// Accepted but noteworthy input (duplicates, terminated pods, CIDR host bits...).
    pub notices: Vec<String>,
    /// Invalid input. Policy errors are here too (one per field error, also kept in
    /// [`Policy::errors`]), and say that the policy fails closed.
    pub errors: Vec<SourceError>,
    /// Every Service as converted, sorted by (namespace, name), including those without a
    /// virtual address (not in `cluster.services`): manifests complete them with
    /// [`service::complete_for_manifests`].
    pub service_drafts: Vec<ServiceDraft>,
}

/// A problem with the input, naming where it came from, the object and the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceError {
    /// File path (with `#document` index) or `kubernetes`.
    pub origin: String,
    /// e.g. `NetworkPolicy production/allow-dns`.
    pub object: Option<String>,
    /// e.g. `spec.egress[0].ports[1].endPort`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SourceError {}

/// What a policy with errors does instead of what it says; appended to its errors.
pub const FAIL_CLOSED: &str = "the policy fails closed: it isolates the pods it selects (all pods of its namespace if its podSelector is invalid) for ingress and egress and allows nothing";

/// Objects without a namespace live in `default`, as `kubectl apply` would put them.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Build the model from raw objects. Never fails; see [`Converted`].
pub fn convert(objects: &Objects) -> Converted {
    let mut out = Converted::default();

    // Deduplicate first (last wins), so a replaced object's problems are not reported.
    let namespaces = dedup(&objects.namespaces, "Namespace", false, &mut out);
    let pods = dedup(&objects.pods, "Pod", true, &mut out);
    let policies = dedup(&objects.policies, "NetworkPolicy", true, &mut out);
    let services = dedup(&objects.services, "Service", true, &mut out);
    let slices = dedup(&objects.endpoint_slices, "EndpointSlice", true, &mut out);

    for ((_, name), ns) in &namespaces {
        out.cluster.namespaces.insert(
            name.clone(),
            pod::namespace(name, ns.object.metadata.labels.as_ref()),
        );
    }

    for ((namespace, name), src) in &pods {
        let object = format!("Pod {namespace}/{name}");
        if let Some(phase) = pod::is_terminated(&src.object) {
            out.notices.push(format!(
                "{}: {object}: skipped: phase {phase} (its address may already be reused)",
                src.origin
            ));
            continue;
        }
        let mut r = policy::Report::default();
        let p = pod::convert_pod(&src.object, namespace, name, &mut r);
        report(&mut out, &src.origin, &object, r, "");
        out.cluster.pods.push(p);
    }
    warn_shared_ips(&out.cluster.pods, &mut out.notices);

    for ((namespace, name), src) in &policies {
        let (p, notices) = policy::convert_policy(&src.object, namespace, name, &src.origin);
        let object = format!("NetworkPolicy {namespace}/{name}");
        let r = policy::Report {
            errors: p.errors.clone(),
            notices,
        };
        report(&mut out, &src.origin, &object, r, FAIL_CLOSED);
        out.cluster.policies.push(p);
    }

    convert_services(&services, &slices, &mut out);

    // Namespaces referenced but not declared exist implicitly, with only their name label.
    let referenced: Vec<String> = out
        .cluster
        .pods
        .iter()
        .map(|p| p.namespace.clone())
        .chain(out.cluster.policies.iter().map(|p| p.namespace.clone()))
        .chain(out.cluster.services.iter().map(|s| s.namespace.clone()))
        .collect();
    for ns in referenced {
        out.cluster
            .namespaces
            .entry(ns.clone())
            .or_insert_with(|| pod::namespace(&ns, None));
    }
    out
}

/// Services with their slices (grouped by the `kubernetes.io/service-name` label).
fn convert_services(
    services: &BTreeMap<(String, String), &Sourced<corev1::Service>>,
    slices: &BTreeMap<(String, String), &Sourced<discoveryv1::EndpointSlice>>,
    out: &mut Converted,
) {
    let mut by_service: BTreeMap<(String, String), Vec<&Sourced<discoveryv1::EndpointSlice>>> =
        BTreeMap::new();
    for ((namespace, name), src) in slices {
        match service::slice_owner(&src.object) {
            Some(owner) => by_service.entry(owner).or_default().push(src),
            None => out.notices.push(format!(
                "{}: EndpointSlice {namespace}/{name}: no {} label; ignored",
                src.origin,
                service::SERVICE_NAME_LABEL
            )),
        }
    }
    for (key, src) in services {
        let (namespace, name) = key;
        let owned = by_service.remove(key).unwrap_or_default();
        let (draft, errors, notices) = convert_service(
            &src.object,
            namespace,
            name,
            owned.iter().map(|s| &s.object),
        );
        // Each error names the object it is in, with that object's origin.
        for (object, e) in errors {
            let origin = owned
                .iter()
                .find(|s| {
                    object
                        == format!(
                            "EndpointSlice {namespace}/{}",
                            s.object.metadata.name.as_deref().unwrap_or_default()
                        )
                })
                .map_or(&src.origin, |s| &s.origin);
            out.errors.push(SourceError {
                origin: origin.clone(),
                object: Some(object),
                field: Some(e.field),
                message: e.message,
            });
        }
        for n in notices {
            out.notices
                .push(format!("{}: Service {namespace}/{name}: {n}", src.origin));
        }
        if !draft.service.vips.is_empty() {
            out.cluster.services.push(draft.service.clone());
        }
        out.service_drafts.push(draft);
    }
    for ((namespace, name), owned) in by_service {
        for src in owned {
            out.notices.push(format!(
                "{}: EndpointSlice {}/{}: its Service {namespace}/{name} is not defined; ignored",
                src.origin,
                namespace,
                src.object.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
}

/// Convert one policy on its own (for sources that keep per-object state). The result is
/// already fail-closed if invalid; use [`convert`] to also get notices and implicit namespaces.
pub fn convert_policy(np: &netv1::NetworkPolicy, origin: &str) -> Policy {
    let namespace = np
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let name = np.metadata.name.as_deref().unwrap_or_default();
    policy::convert_policy(np, namespace, name, origin).0
}

/// Convert one pod on its own: None for terminated pods; field errors beside it.
pub fn convert_pod(p: &corev1::Pod) -> (Option<Pod>, Vec<crate::model::FieldError>) {
    if pod::is_terminated(p).is_some() {
        return (None, Vec::new());
    }
    let namespace = p.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let mut r = policy::Report::default();
    let out = pod::convert_pod(p, namespace, name, &mut r);
    (Some(out), r.errors)
}

/// Convert one namespace on its own (labels include the name label).
pub fn convert_namespace(ns: &corev1::Namespace) -> Namespace {
    pod::namespace(
        ns.metadata.name.as_deref().unwrap_or_default(),
        ns.metadata.labels.as_ref(),
    )
}

/// A namespace known only by name (referenced, not declared).
pub fn convert_namespace_named(name: &str) -> Namespace {
    pod::namespace(name, None)
}

fn report(out: &mut Converted, origin: &str, object: &str, r: policy::Report, effect: &str) {
    for n in r.notices {
        out.notices.push(format!("{origin}: {object}: {n}"));
    }
    for e in r.errors {
        let message = if effect.is_empty() {
            e.message
        } else {
            format!("{}; {effect}", e.message)
        };
        out.errors.push(SourceError {
            origin: origin.to_string(),
            object: Some(object.to_string()),
            field: Some(e.field),
            message,
        });
    }
}

/// Key objects by (namespace, name), sorted; a later object with the same key replaces an
/// earlier one, with a notice. Objects without a name are reported and dropped.
fn dedup<'a, T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    objects: &'a [Sourced<T>],
    kind: &str,
    namespaced: bool,
    out: &mut Converted,
) -> BTreeMap<(String, String), &'a Sourced<T>> {
    let mut map: BTreeMap<(String, String), &Sourced<T>> = BTreeMap::new();
    for src in objects {
        let meta = src.object.metadata();
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            out.errors.push(SourceError {
                origin: src.origin.clone(),
                object: Some(kind.to_string()),
                field: Some("metadata.name".to_string()),
                message: "Required value; the object is ignored".to_string(),
            });
            continue;
        };
        let namespace = if namespaced {
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
        } else {
            String::new()
        };
        let display = if namespaced {
            format!("{namespace}/{name}")
        } else {
            name.clone()
        };
        if let Some(prev) = map.insert((namespace, name), src) {
            out.notices.push(format!(
                "{}: {kind} {display} is defined again; this definition replaces the one from {}",
                src.origin, prev.origin
            ));
        }
    }
    map
}

/// Two pods with one address make every verdict about that address ambiguous: say so.
fn warn_shared_ips(pods: &[Pod], notices: &mut Vec<String>) {
    let mut owners: BTreeMap<std::net::IpAddr, Vec<String>> = BTreeMap::new();
    for p in pods.iter().filter(|p| !p.host_network) {
        for ip in &p.ips {
            owners.entry(*ip).or_default().push(p.key());
        }
    }
    for (ip, pods) in owners.into_iter().filter(|(_, v)| v.len() > 1) {
        notices.push(format!(
            "address {ip} is used by several pods ({}); the first one is used for verdicts",
            pods.join(", ")
        ));
    }
}
