//! Service + EndpointSlices -> [`model::Service`], validated as apimachinery's
//! `pkg/apis/core/validation` (ValidateService) and `pkg/apis/discovery/validation`
//! (ValidateEndpointSlice) do.
//!
//! Why it matters: egress to a Service is checked before kube-proxy's DNAT, on the virtual
//! address, and allowed only if the client may reach *every* ready endpoint of the port (see
//! [`model::Service`]). So the model must know every address kube-proxy rewrites for and every
//! endpoint it may rewrite to:
//! - virtual addresses: `spec.clusterIPs` (or `spec.clusterIP`) without `None`, plus
//!   `spec.externalIPs` and `status.loadBalancer.ingress[].ip` (except `ipMode: Proxy`, which
//!   kube-proxy does not rewrite). Headless and ExternalName Services have none.
//! - endpoints: every address of every endpoint with `conditions.ready != false` in the
//!   EndpointSlices labelled `kubernetes.io/service-name=<name>` of the same namespace, with
//!   the slice's ports, matched to the Service's ports by name. FQDN slices are ignored, as
//!   kube-proxy does. Terminating-but-serving endpoints are not included: kube-proxy only
//!   falls back to them when no endpoint is ready, and netward denies that case anyway.
//!   Topology hints and `internalTrafficPolicy: Local` only narrow kube-proxy's choice to a
//!   subset; using all ready endpoints is at least as strict.
//!
//! Failing closed: any validation error in a Service or in one of its EndpointSlices drops
//! every endpoint of the Service, so connections to its (valid) virtual addresses are denied.
//! Dropping only the bad endpoint would be wrong, because with "every endpoint must be
//! allowed" fewer endpoints can only allow more. Invalid virtual addresses and ports are
//! ignored (they cannot be represented); traffic to them is then judged as ordinary traffic to
//! that address, as if the Service did not exist.
//!
//! Manifests have no EndpointSlice controller and no IP allocator: [`complete_for_manifests`]
//! computes endpoints from the selector like the controller would and allocates cluster IPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::policy::Report;
use super::syntax;
use crate::model::{
    Cluster, EndpointPort, FieldError, Labels, Pod, Protocol, Service, ServiceEndpoint, ServicePort,
};

/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Addresses given to manifest Services that need a cluster IP and have none (the kind /
/// kubeadm service CIDR, narrowed to a /16).
pub const LAB_SERVICE_RANGE_V4: &str = "10.96.0.0/16";

/// What the effect of an error in a Service or its slices is; appended to every such error.
pub const SERVICE_FAILS_CLOSED: &str =
    "the Service fails closed: its endpoints are not used and connections to its addresses are denied";

/// `spec.ports[].targetPort`, defaulted to the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// Resolved per pod against its container ports of the Service port's protocol.
    Name(String),
}

/// A converted Service plus what only a manifest source still needs to complete it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceDraft {
    /// Virtual addresses may be empty (headless, ExternalName, or a manifest without a cluster
    /// IP); endpoints come from the slices given to [`convert_service`].
    pub service: Service,
    /// `spec.selector` when set and non-empty (only then does the controller write slices).
    pub selector: Option<Labels>,
    /// Parallel to `service.ports`.
    pub target_ports: Vec<TargetPort>,
    /// Not headless, not ExternalName, and no cluster IP given: the API server would allocate
    /// one.
    pub needs_cluster_ip: bool,
    /// Some EndpointSlice of this Service was among the objects.
    pub has_slices: bool,
    /// Validation failed (here or in a slice): the Service keeps no endpoints.
    pub failed: bool,
}

/// Field errors of one object, keyed by the object's display name (`EndpointSlice ns/name`,
/// `Service ns/name`).
pub type ObjectErrors = Vec<(String, FieldError)>;

/// Convert one Service with the EndpointSlices of its namespace (those of other Services are
/// ignored). Returns the draft and every field error of the Service and of its slices (each
/// already saying that the Service fails closed), and notices.
pub fn convert_service<'a>(
    svc: &corev1::Service,
    namespace: &str,
    name: &str,
    slices: impl IntoIterator<Item = &'a discoveryv1::EndpointSlice>,
) -> (ServiceDraft, ObjectErrors, Vec<String>) {
    let mut r = Report::default();
    let default_spec = corev1::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        type_,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        r.error(
            "spec.type",
            format!("Unsupported value: {type_:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        );
    }
    let external_name = type_ == "ExternalName";
    let (mut vips, headless, has_cluster_ip) = cluster_ips(spec, external_name, &mut r);
    if !external_name {
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            if let Some(ip) = parse_ip(ip, &format!("spec.externalIPs[{i}]"), &mut r) {
                vips.push(ip);
            }
        }
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let path = format!("status.loadBalancer.ingress[{i}]");
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue; // traffic goes to the load balancer, kube-proxy does not rewrite it
            }
            if let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
                if let Some(ip) = parse_ip(ip, &format!("{path}.ip"), &mut r) {
                    vips.push(ip);
                }
            }
        }
    }
    vips.sort();
    vips.dedup();

    let (ports, target_ports) = service_ports(spec, headless || external_name, &mut r);
    let selector = spec.selector.clone().filter(|s| !s.is_empty());
    for (k, v) in selector.iter().flatten() {
        for m in syntax::qualified_name_errors(k) {
            r.error(format!("spec.selector[{k}]"), m);
        }
        for m in syntax::label_value_errors(v) {
            r.error(format!("spec.selector[{k}]"), m);
        }
    }

    let service_object = format!("Service {namespace}/{name}");
    let mut errors: ObjectErrors = r
        .errors
        .into_iter()
        .map(|e| (service_object.clone(), e))
        .collect();
    let mut notices = r.notices;

    let mut endpoints: BTreeMap<IpAddr, BTreeSet<(String, Protocol, u16)>> = BTreeMap::new();
    let mut has_slices = false;
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let owner = labels.and_then(|l| l.get(SERVICE_NAME_LABEL));
        let slice_ns = slice.metadata.namespace.as_deref().unwrap_or(namespace);
        if owner.map(String::as_str) != Some(name) || slice_ns != namespace {
            continue;
        }
        has_slices = true;
        let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
        let object = format!("EndpointSlice {namespace}/{slice_name}");
        let mut sr = Report::default();
        endpoint_slice(slice, &mut endpoints, &mut sr);
        errors.extend(sr.errors.into_iter().map(|e| (object.clone(), e)));
        notices.extend(sr.notices.into_iter().map(|n| format!("{object}: {n}")));
    }

    let failed = !errors.is_empty();
    for (_, e) in &mut errors {
        e.message = format!("{}; {SERVICE_FAILS_CLOSED}", e.message);
    }
    let endpoints = if failed {
        Vec::new()
    } else {
        endpoints
            .into_iter()
            .map(|(ip, ports)| ServiceEndpoint {
                ip,
                ports: ports
                    .into_iter()
                    .map(|(name, protocol, port)| EndpointPort {
                        name,
                        protocol,
                        port,
                    })
                    .collect(),
            })
            .collect()
    };
    let draft = ServiceDraft {
        service: Service {
            namespace: namespace.to_string(),
            name: name.to_string(),
            vips,
            ports,
            endpoints,
        },
        selector,
        target_ports,
        needs_cluster_ip: !external_name && !headless && !has_cluster_ip,
        has_slices,
        failed,
    };
    (draft, errors, notices)
}

/// The Service a slice belongs to: (namespace, `kubernetes.io/service-name`), if labelled.
pub fn slice_owner(slice: &discoveryv1::EndpointSlice) -> Option<(String, String)> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ns = slice
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| super::DEFAULT_NAMESPACE.to_string());
    Some((ns, name.clone()))
}

/// Parse an address field; errors name the field.
fn parse_ip(text: &str, path: &str, r: &mut Report) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            r.error(
                path,
                format!(
                    "Invalid value: {text:?}: must be a valid IP address; the address is ignored"
                ),
            );
            None
        }
    }
}

/// `spec.clusterIPs` (falling back to `spec.clusterIP`): (addresses, headless, any given).
fn cluster_ips(
    spec: &corev1::ServiceSpec,
    external_name: bool,
    r: &mut Report,
) -> (Vec<IpAddr>, bool, bool) {
    let (field, list): (&str, Vec<&str>) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            ("spec.clusterIPs", list.iter().map(String::as_str).collect())
        }
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    let list: Vec<&str> = list.into_iter().filter(|s| !s.is_empty()).collect();
    if let (Some(ip), Some(first)) = (spec.cluster_ip.as_deref(), list.first()) {
        if !ip.is_empty() && field == "spec.clusterIPs" && ip != *first {
            r.error(
                "spec.clusterIPs[0]",
                format!("Invalid value: {first:?}: must match clusterIP {ip:?}"),
            );
        }
    }
    if external_name {
        if !list.is_empty() {
            r.error(
                field,
                "Forbidden: may not be set for ExternalName services".to_string(),
            );
        }
        return (Vec::new(), false, false);
    }
    let headless = list.contains(&"None");
    if headless && list.len() > 1 {
        r.error(
            field,
            "Invalid value: \"None\" must be the only value when the Service is headless"
                .to_string(),
        );
    }
    if list.len() > 2 {
        r.error(
            field,
            "Too many: may contain at most 2 addresses".to_string(),
        );
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        if *text == "None" {
            continue;
        }
        let path = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        if let Some(ip) = parse_ip(text, &path, r) {
            if ips.iter().any(|have| have.is_ipv4() == ip.is_ipv4()) {
                r.error(
                    path,
                    format!(
                        "Invalid value: {text:?}: may specify at most one address per IP family"
                    ),
                );
            }
            ips.push(ip);
        }
    }
    (ips, headless, !list.is_empty())
}

/// `spec.ports`: names (a DNS label, required and unique when several), port, protocol,
/// targetPort (defaulted to the port), unique (port, protocol).
fn service_ports(
    spec: &corev1::ServiceSpec,
    may_be_empty: bool,
    r: &mut Report,
) -> (Vec<ServicePort>, Vec<TargetPort>) {
    let list = spec.ports.as_deref().unwrap_or_default();
    if list.is_empty() && !may_be_empty {
        r.error("spec.ports", "Required value");
    }
    let mut ports = Vec::new();
    let mut targets = Vec::new();
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, p) in list.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let before = r.errors.len();
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            if list.len() > 1 {
                r.error(
                    format!("{path}.name"),
                    "Required value: when there are several ports each must be named",
                );
            }
        } else {
            for m in syntax::dns1123_label_errors(&name) {
                r.error(format!("{path}.name"), m);
            }
            if !names.insert(name.clone()) {
                r.error(format!("{path}.name"), format!("Duplicate value: {name:?}"));
            }
        }
        let protocol = protocol(p.protocol.as_deref(), &format!("{path}.protocol"), r);
        let port = match syntax::port_number(p.port) {
            Ok(n) => Some(n),
            Err(m) => {
                r.error(format!("{path}.port"), format!("Invalid value: {m}"));
                None
            }
        };
        let target = match &p.target_port {
            None => port.map(TargetPort::Number),
            Some(IntOrString::Int(n)) => match syntax::port_number(*n) {
                Ok(n) => Some(TargetPort::Number(n)),
                Err(m) => {
                    r.error(format!("{path}.targetPort"), format!("Invalid value: {m}"));
                    None
                }
            },
            Some(IntOrString::String(s)) => {
                let errs = syntax::port_name_errors(s);
                for m in &errs {
                    r.error(format!("{path}.targetPort"), format!("Invalid value: {m}"));
                }
                errs.is_empty().then(|| TargetPort::Name(s.clone()))
            }
        };
        if let (Some(protocol), Some(port)) = (protocol, port) {
            if !seen.insert((port, protocol)) {
                r.error(
                    path.clone(),
                    format!("Duplicate value: port {port}/{protocol} is listed twice"),
                );
            }
        }
        if r.errors.len() == before {
            if let (Some(protocol), Some(port), Some(target)) = (protocol, port, target) {
                ports.push(ServicePort {
                    name,
                    protocol,
                    port,
                });
                targets.push(target);
            }
        }
    }
    (ports, targets)
}

/// A protocol field, defaulted to TCP; exact upstream spelling.
fn protocol(value: Option<&str>, path: &str, r: &mut Report) -> Option<Protocol> {
    match value {
        None => Some(Protocol::Tcp),
        Some(s) => {
            match s.parse::<Protocol>() {
                Ok(p) if p.as_str() == s => Some(p),
                _ => {
                    r.error(
                    path,
                    format!("Unsupported value: {s:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                );
                    None
                }
            }
        }
    }
}

/// Add the ready endpoints of one slice, with the slice's ports.
fn endpoint_slice(
    slice: &discoveryv1::EndpointSlice,
    out: &mut BTreeMap<IpAddr, BTreeSet<(String, Protocol, u16)>>,
    r: &mut Report,
) {
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => {
            r.notices.push(
                "addressType FQDN: ignored (kube-proxy does not route to FQDN endpoints)".into(),
            );
            return;
        }
        other => {
            r.error(
                "addressType",
                format!(
                    "Unsupported value: {other:?}: supported values: \"IPv4\", \"IPv6\", \"FQDN\""
                ),
            );
            None
        }
    };
    let mut ports = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let path = format!("ports[{i}]");
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() {
            for m in syntax::dns1123_label_errors(&name) {
                r.error(format!("{path}.name"), m);
            }
        }
        if !names.insert(name.clone()) {
            r.error(format!("{path}.name"), format!("Duplicate value: {name:?}"));
        }
        let protocol = protocol(p.protocol.as_deref(), &format!("{path}.protocol"), r);
        // A port without a number is not proxied by kube-proxy.
        let Some(n) = p.port else { continue };
        match (syntax::port_number(n), protocol) {
            (Ok(n), Some(protocol)) => {
                ports.insert((name, protocol, n));
            }
            (Err(m), _) => r.error(format!("{path}.port"), format!("Invalid value: {m}")),
            _ => {}
        }
    }
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let path = format!("endpoints[{i}]");
        if e.addresses.is_empty() || e.addresses.len() > 100 {
            r.error(
                format!("{path}.addresses"),
                "must contain between 1 and 100 addresses",
            );
        }
        let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
        for (j, text) in e.addresses.iter().enumerate() {
            let apath = format!("{path}.addresses[{j}]");
            let Some(ip) = parse_ip(text, &apath, r) else {
                continue;
            };
            if family.is_some_and(|v4| v4 != ip.is_ipv4()) {
                r.error(
                    apath,
                    format!(
                        "Invalid value: {text:?}: must be an {} address",
                        slice.address_type
                    ),
                );
                continue;
            }
            if ready {
                out.entry(ip).or_default().extend(ports.iter().cloned());
            }
        }
    }
}

/// Finish manifest Services the way a cluster would: allocate a cluster IP from
/// [`LAB_SERVICE_RANGE_V4`] where the API server would have, and compute the endpoints of a
/// Service with a selector and no EndpointSlice like the EndpointSlice controller: every pod of
/// its namespace matching the selector that has addresses (hostNetwork pods with the addresses
/// they list), each Service port's targetPort resolved per pod (named ones against the pod's
/// container ports of that protocol; a pod that cannot resolve it does not serve that port).
/// Pod readiness is not known offline: every such pod counts as ready, which can only deny
/// more. Rebuilds `cluster.services` from `drafts`.
pub fn complete_for_manifests(
    cluster: &mut Cluster,
    drafts: &[ServiceDraft],
    notices: &mut Vec<String>,
) {
    let range: Ipv4Net = LAB_SERVICE_RANGE_V4.parse().expect("valid lab range");
    let used: BTreeSet<IpAddr> = drafts
        .iter()
        .flat_map(|d| d.service.vips.iter().copied())
        .collect();
    let mut free = range
        .hosts()
        .map(IpAddr::V4)
        .filter(|ip| !used.contains(ip));
    let mut services = Vec::new();
    for d in drafts {
        let mut s = d.service.clone();
        if d.needs_cluster_ip {
            match free.next() {
                Some(ip) => {
                    s.vips.push(ip);
                    s.vips.sort();
                    notices.push(format!(
                        "Service {}: no spec.clusterIP; assigned {ip} from the lab range {LAB_SERVICE_RANGE_V4}",
                        s.key()
                    ));
                }
                None => notices.push(format!(
                    "Service {}: no spec.clusterIP and the lab range {LAB_SERVICE_RANGE_V4} is exhausted",
                    s.key()
                )),
            }
        }
        if let (Some(selector), false, false) = (&d.selector, d.has_slices, d.failed) {
            s.endpoints = selector_endpoints(&s, &d.target_ports, selector, &cluster.pods);
        }
        if !s.vips.is_empty() {
            services.push(s);
        }
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    cluster.services = services;
}

/// The endpoints the EndpointSlice controller would publish for a selector.
fn selector_endpoints(
    s: &Service,
    targets: &[TargetPort],
    selector: &Labels,
    pods: &[Pod],
) -> Vec<ServiceEndpoint> {
    let mut out: BTreeMap<IpAddr, Vec<EndpointPort>> = BTreeMap::new();
    let selected = pods.iter().filter(|p| {
        p.namespace == s.namespace && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
    });
    for pod in selected {
        let ports: Vec<EndpointPort> = s
            .ports
            .iter()
            .zip(targets)
            .filter_map(|(sp, t)| {
                let port = match t {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod.resolve_named_port(name, sp.protocol),
                }?;
                Some(EndpointPort {
                    name: sp.name.clone(),
                    protocol: sp.protocol,
                    port,
                })
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        for ip in &pod.ips {
            out.entry(*ip).or_insert_with(|| ports.clone());
        }
    }
    out.into_iter()
        .map(|(ip, ports)| ServiceEndpoint { ip, ports })
        .collect()
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
