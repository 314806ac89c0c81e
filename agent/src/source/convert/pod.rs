//! Pod and Namespace -> model, keeping only what policy enforcement needs: labels, addresses,
//! node, hostNetwork and the declared container ports (for named ports).

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as corev1;

use super::policy::Report;
use super::syntax;
use crate::model::{ContainerPort, Labels, Namespace, Pod, Protocol, NAMESPACE_NAME_LABEL};

/// Pod phases whose IP may already belong to another pod: such pods are not in the model.
pub(super) fn is_terminated(pod: &corev1::Pod) -> Option<&str> {
    let phase = pod.status.as_ref()?.phase.as_deref()?;
    matches!(phase, "Succeeded" | "Failed").then_some(phase)
}

pub(super) fn convert_pod(pod: &corev1::Pod, namespace: &str, name: &str, r: &mut Report) -> Pod {
    let spec = pod.spec.as_ref();
    Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips: pod_ips(pod.status.as_ref(), r),
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports: spec.map(|s| container_ports(s, r)).unwrap_or_default(),
    }
}

/// `status.podIPs` (or `status.podIP` when podIPs is absent), at most one per family.
fn pod_ips(status: Option<&corev1::PodStatus>, r: &mut Report) -> Vec<IpAddr> {
    let Some(status) = status else {
        return Vec::new();
    };
    let candidates: Vec<(String, &str)> = match status.pod_ips.as_deref() {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
            .collect(),
        _ => status
            .pod_ip
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|ip| vec![("status.podIP".to_string(), ip)])
            .unwrap_or_default(),
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for (field, text) in candidates {
        match text.parse::<IpAddr>() {
            Ok(ip) if ips.iter().any(|have| have.is_ipv4() == ip.is_ipv4()) => {
                r.notices.push(format!(
                    "{field}: {ip} ignored: a pod has at most one address per family"
                ));
            }
            Ok(ip) => ips.push(ip),
            Err(_) => r.error(
                field,
                format!("{text:?}: must be a valid IP address; the address is ignored"),
            ),
        }
    }
    ips
}

/// Declared ports of every container (init containers included: restartable sidecars serve).
fn container_ports(spec: &corev1::PodSpec, r: &mut Report) -> Vec<ContainerPort> {
    let mut out = Vec::new();
    let groups = [
        ("spec.containers", spec.containers.as_slice()),
        (
            "spec.initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    for (group, containers) in groups {
        for (ci, c) in containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let path = format!("{group}[{ci}].ports[{pi}]");
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => match s.parse::<Protocol>() {
                        Ok(proto) if proto.as_str() == s => proto,
                        _ => {
                            r.error(
                                format!("{path}.protocol"),
                                format!("Unsupported value: {s:?}: supported values: \"TCP\", \"UDP\", \"SCTP\"; the port is ignored"),
                            );
                            continue;
                        }
                    },
                };
                let port = match syntax::port_number(p.container_port) {
                    Ok(port) => port,
                    Err(m) => {
                        r.error(
                            format!("{path}.containerPort"),
                            format!("{m}; the port is ignored"),
                        );
                        continue;
                    }
                };
                let name = p.name.clone().filter(|n| {
                    let errs = syntax::port_name_errors(n);
                    for m in &errs {
                        r.error(
                            format!("{path}.name"),
                            format!("{m}; the port is kept without its name"),
                        );
                    }
                    errs.is_empty()
                });
                out.push(ContainerPort {
                    name,
                    port,
                    protocol,
                });
            }
        }
    }
    out
}

/// A namespace's labels always carry `kubernetes.io/metadata.name=<name>` (the API server
/// sets it and does not let users change it).
pub(super) fn namespace(name: &str, labels: Option<&Labels>) -> Namespace {
    let mut labels = labels.cloned().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    Namespace {
        name: name.to_string(),
        labels,
    }
}
