//! Service and EndpointSlice conversion: addresses, endpoints, validation, fail-closed, and the
//! manifest-only completion (cluster IP allocation, selector endpoints).

use serde_json::{json, Value};

use super::*;
use crate::source::convert::{convert, Objects, Sourced};
use crate::source::manifest::load_str;

fn svc(spec: Value, status: Value) -> corev1::Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": spec, "status": status,
    }))
    .expect("test service deserialises")
}

fn slice(name: &str, service: &str, v: Value) -> discoveryv1::EndpointSlice {
    let mut obj = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "prod",
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
    });
    for (k, val) in v.as_object().unwrap() {
        obj[k] = val.clone();
    }
    serde_json::from_value(obj).expect("test slice deserialises")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn run(
    services: Vec<corev1::Service>,
    slices: Vec<discoveryv1::EndpointSlice>,
) -> super::super::Converted {
    convert(&Objects {
        services: services
            .into_iter()
            .map(|s| Sourced::new(s, "s.yaml"))
            .collect(),
        endpoint_slices: slices
            .into_iter()
            .map(|s| Sourced::new(s, "e.yaml"))
            .collect(),
        ..Default::default()
    })
}

fn web_ports() -> Value {
    json!([{"name": "http", "port": 80, "targetPort": 8080},
           {"name": "dns", "port": 53, "protocol": "UDP"}])
}

#[test]
fn virtual_addresses_are_cluster_external_and_load_balancer_ips() {
    let s = svc(
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.5",
               "clusterIPs": ["10.96.0.5", "fd00::5"],
               "externalIPs": ["192.0.2.1", "10.96.0.5"], "ports": web_ports()}),
        json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.7"}, {"hostname": "lb.example"},
            {"ip": "198.51.100.8", "ipMode": "Proxy"}]}}),
    );
    let c = run(vec![s], vec![]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let s = &c.cluster.services[0];
    assert_eq!(
        s.vips,
        [
            ip("10.96.0.5"),
            ip("192.0.2.1"),
            ip("198.51.100.7"),
            ip("fd00::5")
        ]
    );
    assert_eq!(
        s.ports,
        [
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80
            },
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53
            },
        ]
    );
    assert!(s.endpoints.is_empty());
    assert_eq!(c.cluster.namespaces["prod"].name, "prod");
}

#[test]
fn headless_and_external_name_services_have_no_virtual_address() {
    let headless = svc(
        json!({"clusterIP": "None", "ports": web_ports()}),
        json!({}),
    );
    let mut ext = svc(
        json!({"type": "ExternalName", "externalName": "db.example.com", "externalIPs": ["192.0.2.1"]}),
        json!({}),
    );
    ext.metadata.name = Some("ext".into());
    let c = run(vec![headless, ext], vec![]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(c.cluster.services.is_empty());
    assert_eq!(c.service_drafts.len(), 2);
    assert!(c.service_drafts.iter().all(|d| !d.needs_cluster_ip));
}

#[test]
fn endpoints_come_from_ready_endpoints_of_the_services_slices() {
    let s = svc(
        json!({"clusterIP": "10.96.0.5", "ports": web_ports()}),
        json!({}),
    );
    let http = json!([{"name": "http", "port": 8080}]);
    let slices = vec![
        slice(
            "web-a",
            "web",
            json!({"ports": http, "endpoints": [
                {"addresses": ["10.244.0.2"]},
                {"addresses": ["10.244.0.3"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]}),
        ),
        // Same address in another slice with another port: ports are merged.
        slice(
            "web-b",
            "web",
            json!({"ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {}}]}),
        ),
        // Another Service's slice, and an FQDN slice: ignored.
        slice(
            "db-a",
            "db",
            json!({"ports": http, "endpoints": [{"addresses": ["10.244.0.9"]}]}),
        ),
        slice(
            "web-fqdn",
            "web",
            json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}]}),
        ),
    ];
    let c = run(vec![s], slices);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let s = &c.cluster.services[0];
    let eps: Vec<(IpAddr, Vec<(&str, u16)>)> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.ip,
                e.ports.iter().map(|p| (p.name.as_str(), p.port)).collect(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            (ip("10.244.0.2"), vec![("dns", 5353), ("http", 8080)]),
            (ip("10.244.0.3"), vec![("http", 8080)]),
        ]
    );
    let http = &s.ports[0];
    let backends: Vec<(IpAddr, u16)> = s.backends(http).collect();
    assert_eq!(
        backends,
        [(ip("10.244.0.2"), 8080), (ip("10.244.0.3"), 8080)]
    );
    let dns: Vec<(IpAddr, u16)> = s.backends(&s.ports[1]).collect();
    assert_eq!(dns, [(ip("10.244.0.2"), 5353)]);
    assert!(
        c.notices.iter().any(|n| n.contains("FQDN")),
        "{:?}",
        c.notices
    );
    assert!(
        c.notices
            .iter()
            .any(|n| n.contains("EndpointSlice prod/db-a: its Service prod/db is not defined")),
        "{:?}",
        c.notices
    );
}

#[test]
fn slices_in_another_namespace_or_unlabelled_are_ignored() {
    let s = svc(
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
        json!({}),
    );
    let mut other_ns = slice(
        "web-x",
        "web",
        json!({"ports": [{"port": 80}], "endpoints": [{"addresses": ["10.244.1.1"]}]}),
    );
    other_ns.metadata.namespace = Some("dev".into());
    let mut unlabelled = slice(
        "web-y",
        "web",
        json!({"ports": [{"port": 80}], "endpoints": [{"addresses": ["10.244.1.2"]}]}),
    );
    unlabelled.metadata.labels = None;
    let c = run(vec![s], vec![other_ns, unlabelled]);
    assert!(c.cluster.services[0].endpoints.is_empty());
    assert!(c
        .notices
        .iter()
        .any(|n| n.contains("web-y: no kubernetes.io/service-name label")));
}

/// Every invalid input is an error naming object and field, and the Service keeps no
/// endpoints (connections to its addresses are denied).
#[test]
fn invalid_services_and_slices_fail_closed() {
    let good_slice = || {
        slice(
            "web-a",
            "web",
            json!({"ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.0.2"]}]}),
        )
    };
    let cases: Vec<(Value, Option<Value>, &str, &str)> = vec![
        (
            json!({"clusterIP": "10.96.0.300", "externalIPs": ["10.1.1.1"]}),
            None,
            "Service prod/web",
            "spec.clusterIP",
        ),
        (
            json!({"clusterIPs": ["10.96.0.5", "x"]}),
            None,
            "Service prod/web",
            "spec.clusterIPs[1]",
        ),
        (
            json!({"clusterIPs": ["10.96.0.5", "10.96.0.6"]}),
            None,
            "Service prod/web",
            "spec.clusterIPs[1]",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "externalIPs": ["nope"]}),
            None,
            "Service prod/web",
            "spec.externalIPs[0]",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "type": "Magic"}),
            None,
            "Service prod/web",
            "spec.type",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 0}]}),
            None,
            "Service prod/web",
            "spec.ports[0].port",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "protocol": "tcp"}]}),
            None,
            "Service prod/web",
            "spec.ports[0].protocol",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": 70000}]}),
            None,
            "Service prod/web",
            "spec.ports[0].targetPort",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": "Web_Port"}]}),
            None,
            "Service prod/web",
            "spec.ports[0].targetPort",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}, {"port": 81}]}),
            None,
            "Service prod/web",
            "spec.ports[1].name",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}),
            None,
            "Service prod/web",
            "spec.ports[1].name",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "Http", "port": 80}]}),
            None,
            "Service prod/web",
            "spec.ports[0].name",
        ),
        (
            json!({"clusterIP": "10.96.0.5", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
            None,
            "Service prod/web",
            "spec.ports[1]",
        ),
        (json!({"ports": []}), None, "Service prod/web", "spec.ports"),
        (
            json!({}),
            Some(json!({"addresses": ["10.244.0.300"]})),
            "EndpointSlice prod/web-bad",
            "endpoints[0].addresses[0]",
        ),
        (
            json!({}),
            Some(json!({"addresses": ["fd00::1"]})),
            "EndpointSlice prod/web-bad",
            "endpoints[0].addresses[0]",
        ),
        (
            json!({}),
            Some(json!({"addresses": []})),
            "EndpointSlice prod/web-bad",
            "endpoints[0].addresses",
        ),
    ];
    for (spec, bad_endpoint, object, field) in cases {
        let mut spec_obj = json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
        for (k, v) in spec.as_object().unwrap() {
            spec_obj[k] = v.clone();
        }
        if spec.as_object().unwrap().contains_key("clusterIPs") {
            spec_obj.as_object_mut().unwrap().remove("clusterIP");
        }
        let mut slices = vec![good_slice()];
        if let Some(e) = bad_endpoint {
            slices.push(slice(
                "web-bad",
                "web",
                json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [e]}),
            ));
        }
        let c = run(vec![svc(spec_obj.clone(), json!({}))], slices);
        let first = c
            .errors
            .first()
            .unwrap_or_else(|| panic!("no error for {spec_obj} {object} {field}"));
        assert_eq!(first.object.as_deref(), Some(object), "{spec_obj}: {first}");
        assert_eq!(first.field.as_deref(), Some(field), "{spec_obj}: {first}");
        assert!(first.message.contains(SERVICE_FAILS_CLOSED), "{first}");
        let origin = if object.starts_with("EndpointSlice") {
            "e.yaml"
        } else {
            "s.yaml"
        };
        assert_eq!(first.origin, origin);
        for s in &c.cluster.services {
            assert!(s.endpoints.is_empty(), "{spec_obj}: fails closed: {s:?}");
        }
        assert!(c.service_drafts[0].failed);
    }
}

#[test]
fn slice_port_errors_fail_closed() {
    let s = svc(
        json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}]}),
        json!({}),
    );
    for (ports, field) in [
        (json!([{"name": "http", "port": 70000}]), "ports[0].port"),
        (
            json!([{"name": "http", "port": 80, "protocol": "ICMP"}]),
            "ports[0].protocol",
        ),
        (json!([{"name": "HTTP", "port": 80}]), "ports[0].name"),
        (
            json!([{"name": "http", "port": 80}, {"name": "http", "port": 81}]),
            "ports[1].name",
        ),
    ] {
        let sl = slice(
            "web-a",
            "web",
            json!({"ports": ports, "endpoints": [{"addresses": ["10.244.0.2"]}]}),
        );
        let c = run(vec![s.clone()], vec![sl]);
        assert_eq!(c.errors[0].field.as_deref(), Some(field), "{}", c.errors[0]);
        assert!(c.cluster.services[0].endpoints.is_empty());
    }
    let sl = slice(
        "web-a",
        "web",
        json!({"addressType": "IPv5", "endpoints": [{"addresses": ["10.244.0.2"]}]}),
    );
    let c = run(vec![s], vec![sl]);
    assert_eq!(c.errors[0].field.as_deref(), Some("addressType"));
    assert!(c.cluster.services[0].endpoints.is_empty());
}

#[test]
fn a_port_without_a_number_is_not_proxied() {
    let s = svc(
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
        json!({}),
    );
    let sl = slice(
        "web-a",
        "web",
        json!({"ports": [{"name": ""}], "endpoints": [{"addresses": ["10.244.0.2"]}]}),
    );
    let c = run(vec![s], vec![sl]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let s = &c.cluster.services[0];
    assert_eq!(s.backends(&s.ports[0]).count(), 0);
}

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: prod, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: prod, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-other-ns, namespace: dev, labels: {app: web}}
spec: {containers: []}
status: {podIP: 10.244.9.9}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {containers: []}
status: {podIP: 10.244.0.12}
";

#[test]
fn manifest_services_without_slices_get_selector_endpoints_and_a_cluster_ip() {
    let text = format!(
        "{PODS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: prod}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns}}
  - {{name: metrics, port: 9100}}
---
apiVersion: v1
kind: Service
metadata: {{name: db-headless, namespace: prod}}
spec: {{clusterIP: None, selector: {{app: db}}, ports: [{{port: 5432}}]}}
"
    );
    let l = load_str("m.yaml", &text);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert_eq!(l.cluster.services.len(), 1, "headless has no VIP");
    let s = &l.cluster.services[0];
    assert_eq!(s.vips, [ip("10.96.0.1")]);
    assert!(l.notices.iter().any(|n| n == "Service prod/web: no spec.clusterIP; assigned 10.96.0.1 from the lab range 10.96.0.0/16"), "{:?}", l.notices);
    // web-2 had no address: it got a lab address first, then became an endpoint.
    let web2 = l.cluster.pod("prod", "web-2").unwrap().ips[0];
    let eps: Vec<(IpAddr, Vec<(&str, u16)>)> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.ip,
                e.ports.iter().map(|p| (p.name.as_str(), p.port)).collect(),
            )
        })
        .collect();
    let mut expected = vec![
        (
            ip("10.244.0.11"),
            vec![("http", 8080), ("dns", 5353), ("metrics", 9100)],
        ),
        // No UDP port named dns: web-2 does not serve that port.
        (web2, vec![("http", 9090), ("metrics", 9100)]),
    ];
    expected.sort();
    assert_eq!(eps, expected);
}

#[test]
fn manifest_slices_win_over_the_selector_and_allocation_skips_used_addresses() {
    let text = format!(
        "{PODS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: prod}}
spec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: fixed, namespace: prod}}
spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-abc, namespace: prod, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: '', port: 8443}}]
endpoints: [{{addresses: [10.244.0.12]}}]
"
    );
    let l = load_str("m.yaml", &text);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let web = l.cluster.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.vips, [ip("10.96.0.2")]);
    let backends: Vec<(IpAddr, u16)> = web.backends(&web.ports[0]).collect();
    assert_eq!(backends, [(ip("10.244.0.12"), 8443)]);
    let fixed = l
        .cluster
        .services
        .iter()
        .find(|s| s.name == "fixed")
        .unwrap();
    assert!(
        fixed.endpoints.is_empty(),
        "no selector, no slices: no endpoints"
    );
}

#[test]
fn manifest_errors_name_file_object_and_field_and_keep_no_endpoints() {
    let text = format!(
        "{PODS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: prod}}
spec: {{selector: {{app: web}}, ports: [{{name: a, port: 80, protocol: ICMP}}, {{name: b, port: 81}}]}}
---
apiVersion: discovery.k8s.io/v2
kind: EndpointSlice
metadata: {{name: x}}
"
    );
    let l = load_str("m.yaml", &text);
    let msgs: Vec<String> = l.errors.iter().map(ToString::to_string).collect();
    assert!(
        msgs[0].starts_with("m.yaml#6: EndpointSlice with apiVersion \"discovery.k8s.io/v2\""),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.starts_with(
            "m.yaml#5: Service prod/web: spec.ports[0].protocol: Unsupported value: \"ICMP\""
        )),
        "{msgs:?}"
    );
    let web = &l.cluster.services[0];
    assert_eq!(web.ports.len(), 1, "the valid port is kept");
    assert!(web.endpoints.is_empty(), "fails closed");
}

#[test]
fn host_network_pods_are_endpoints_with_the_addresses_they_list() {
    let text = "
apiVersion: v1
kind: Pod
metadata: {name: agent-1, namespace: prod, labels: {app: agent}}
spec: {hostNetwork: true, containers: [{name: c, ports: [{name: metrics, containerPort: 9100}]}]}
status: {podIP: 172.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-2, namespace: prod, labels: {app: agent}}
spec: {hostNetwork: true, containers: []}
---
apiVersion: v1
kind: Service
metadata: {name: agent, namespace: prod}
spec: {clusterIP: 10.96.5.5, selector: {app: agent}, ports: [{port: 9100, targetPort: metrics}]}
";
    let l = load_str("h.yaml", text);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let s = &l.cluster.services[0];
    // agent-2 lists no address (and hostNetwork pods get no lab address): not an endpoint.
    let backends: Vec<(IpAddr, u16)> = s.backends(&s.ports[0]).collect();
    assert_eq!(backends, [(ip("172.18.0.2"), 9100)]);
}
