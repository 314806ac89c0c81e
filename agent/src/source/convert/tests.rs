//! Every validation rule and default of the conversion, one test each (or a table of cases).

use serde_json::{json, Value};

use super::*;
use crate::model::{
    ContainerPort, FieldError, LabelSelector, NamespaceScope, Operator, Peer, PortRef, PortSpec,
    Protocol, Requirement, Rule, NAMESPACE_NAME_LABEL,
};

fn np(spec: Value) -> netv1::NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec,
    }))
    .expect("test policy deserialises")
}

fn pod_obj(v: Value) -> corev1::Pod {
    serde_json::from_value(v).expect("test pod deserialises")
}

/// Convert a single policy through the public entry point.
fn one(spec: Value) -> (Policy, Converted) {
    let objects = Objects {
        policies: vec![Sourced::new(np(spec), "test.yaml")],
        ..Default::default()
    };
    let c = convert(&objects);
    (c.cluster.policies[0].clone(), c)
}

fn fields(p: &Policy) -> Vec<&str> {
    p.errors.iter().map(|e| e.field.as_str()).collect()
}

/// Assert the policy is invalid with exactly these error fields, and fails closed.
fn assert_invalid(spec: Value, expected: &[&str]) -> Policy {
    let (p, c) = one(spec.clone());
    let mut got = fields(&p);
    got.dedup();
    assert_eq!(got, expected, "spec: {spec}");
    assert!(p.ingress_isolation && p.egress_isolation, "fail closed");
    assert!(p.ingress.is_empty() && p.egress.is_empty(), "no rules");
    assert_eq!(c.errors.len(), p.errors.len());
    assert!(c.errors.iter().all(|e| e.message.contains("fails closed")));
    assert!(c.errors[0]
        .to_string()
        .starts_with("test.yaml: NetworkPolicy ns/p: "));
    p
}

fn assert_valid(spec: Value) -> Policy {
    let (p, c) = one(spec.clone());
    assert_eq!(p.errors, Vec::<FieldError>::new(), "spec: {spec}");
    assert!(c.errors.is_empty());
    p
}

fn sel(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: vec![],
    }
}

// ---- policyTypes defaulting (SetDefaults_NetworkPolicy) ----

#[test]
fn policy_types_omitted_means_ingress_only() {
    let p = assert_valid(json!({"podSelector": {}}));
    assert!(p.ingress_isolation && !p.egress_isolation);
}

#[test]
fn policy_types_omitted_with_egress_rules_adds_egress() {
    let p = assert_valid(json!({"podSelector": {}, "egress": [{}]}));
    assert!(p.ingress_isolation && p.egress_isolation);
    assert_eq!(p.egress, vec![Rule::default()]);
}

#[test]
fn policy_types_omitted_with_empty_egress_list_is_ingress_only() {
    // Upstream defaults on len(spec.Egress) != 0: `egress: []` is no egress section.
    let p = assert_valid(json!({"podSelector": {}, "egress": []}));
    assert!(p.ingress_isolation && !p.egress_isolation);
}

#[test]
fn policy_types_empty_list_is_defaulted() {
    let p = assert_valid(json!({"podSelector": {}, "policyTypes": [], "egress": [{}]}));
    assert!(p.ingress_isolation && p.egress_isolation);
}

#[test]
fn policy_types_explicit() {
    let p = assert_valid(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}));
    assert!(!p.ingress_isolation && p.egress_isolation);
    // The ingress rules are kept but the policy does not isolate ingress.
    assert!(p.rules(crate::model::Direction::Ingress).is_empty());
    let p = assert_valid(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
    assert!(p.ingress_isolation && p.egress_isolation);
}

#[test]
fn policy_types_invalid_value() {
    assert_invalid(
        json!({"podSelector": {}, "policyTypes": ["Ingress", "ingress"]}),
        &["spec.policyTypes[1]"],
    );
}

#[test]
fn policy_types_more_than_two() {
    assert_invalid(
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}),
        &["spec.policyTypes"],
    );
}

#[test]
fn missing_spec_and_pod_selector_select_everything() {
    let p = assert_valid(json!(null));
    assert_eq!(p.pod_selector, LabelSelector::everything());
    assert!(p.ingress_isolation && !p.egress_isolation);
    let p = assert_valid(json!({}));
    assert_eq!(p.pod_selector, LabelSelector::everything());
}

// ---- rules, peers and defaults ----

#[test]
fn missing_and_empty_from_and_ports_mean_all() {
    let p = assert_valid(json!({"podSelector": {}, "ingress": [{}, {"from": [], "ports": []}]}));
    assert_eq!(p.ingress, vec![Rule::default(), Rule::default()]);
}

#[test]
fn pod_selector_alone_means_own_namespace() {
    let p = assert_valid(json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}));
    assert_eq!(p.pod_selector, sel(&[("app", "db")]));
    assert_eq!(
        p.ingress[0].peers,
        vec![Peer::Pods {
            namespaces: NamespaceScope::Own("ns".into()),
            pods: sel(&[("app", "web")]),
        }]
    );
}

#[test]
fn namespace_selector_alone_means_all_pods_and_and_combination() {
    let p = assert_valid(json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "x"}}},
        {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"app": "a"}}},
        {"namespaceSelector": {}},
    ]}]}));
    assert_eq!(
        p.ingress[0].peers,
        vec![
            Peer::Pods {
                namespaces: NamespaceScope::Selector(sel(&[("team", "x")])),
                pods: LabelSelector::everything()
            },
            Peer::Pods {
                namespaces: NamespaceScope::Selector(sel(&[("team", "y")])),
                pods: sel(&[("app", "a")])
            },
            Peer::Pods {
                namespaces: NamespaceScope::Selector(LabelSelector::everything()),
                pods: LabelSelector::everything()
            },
        ]
    );
}

#[test]
fn empty_peer_is_invalid() {
    assert_invalid(
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}, {}]}]}),
        &["spec.ingress[0].from[1]"],
    );
}

#[test]
fn ip_block_with_selector_is_invalid() {
    assert_invalid(
        json!({"podSelector": {}, "egress": [{"to": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}]}),
        &["spec.egress[0].to[0]"],
    );
    assert_invalid(
        json!({"podSelector": {}, "egress": [{"to": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
        &["spec.egress[0].to[0]"],
    );
}

// ---- ipBlock ----

#[test]
fn ip_block_valid_v4_and_v6_with_except() {
    let p = assert_valid(json!({"podSelector": {}, "egress": [{"to": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32", "10.0.0.0/8"]}},
        {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}},
    ]}]}));
    assert_eq!(
        p.egress[0].peers[0],
        Peer::IpBlock {
            cidr: "0.0.0.0/0".parse().unwrap(),
            // Sorted.
            except: vec![
                "10.0.0.0/8".parse().unwrap(),
                "169.254.169.254/32".parse().unwrap()
            ],
        }
    );
    assert!(
        matches!(&p.egress[0].peers[1], Peer::IpBlock { cidr, .. } if cidr.to_string() == "2001:db8::/32")
    );
}

#[test]
fn ip_block_bad_cidr_syntax() {
    for bad in ["10.0.0.0", "10.0.0.0/33", "banana", "10.0.0/8", "::/129"] {
        assert_invalid(
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": bad}}]}]}),
            &["spec.egress[0].to[0].ipBlock.cidr"],
        );
    }
}

#[test]
fn ip_block_empty_cidr_is_required() {
    let p = assert_invalid(
        json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": ""}}]}]}),
        &["spec.egress[0].to[0].ipBlock.cidr"],
    );
    assert_eq!(p.errors[0].message, "Required value");
}

#[test]
fn ip_block_host_bits_are_cleared_with_notice() {
    let (p, c) =
        one(json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.1.2.3/16"}}]}]}));
    assert!(p.errors.is_empty());
    assert!(
        matches!(&p.egress[0].peers[0], Peer::IpBlock { cidr, .. } if cidr.to_string() == "10.1.0.0/16")
    );
    assert!(
        c.notices.iter().any(|n| n.contains("host bits")),
        "{:?}",
        c.notices
    );
}

#[test]
fn ip_block_except_must_be_strict_subset() {
    // (cidr, a valid except, an invalid except)
    let cases = [
        ("10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/16"), // outside
        ("10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8"),  // equal, not strict
        ("10.0.0.0/15", "10.1.0.0/16", "10.0.0.0/8"), // larger
        ("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/64"), // other family
        ("2001:db8::/32", "2001:db8:1::/48", "10.0.0.0/16"), // other family
        ("10.0.0.0/8", "10.1.0.0/16", "not-a-cidr"),  // syntax
    ];
    for (cidr, good, bad) in cases {
        assert_invalid(
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": [good, bad]}}]}]}),
            &["spec.ingress[0].from[0].ipBlock.except[1]"],
        );
    }
}

// ---- ports ----

#[test]
fn port_protocol_defaults_to_tcp_and_accepts_udp_sctp() {
    let p = assert_valid(json!({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP"}, {}]}]}));
    assert_eq!(
        p.ingress[0].ports,
        vec![
            PortSpec {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(80)),
                end_port: None
            },
            PortSpec {
                protocol: Protocol::Udp,
                port: Some(PortRef::Number(53)),
                end_port: None
            },
            PortSpec {
                protocol: Protocol::Sctp,
                port: None,
                end_port: None
            },
            PortSpec {
                protocol: Protocol::Tcp,
                port: None,
                end_port: None
            },
        ]
    );
}

#[test]
fn port_protocol_unsupported() {
    for bad in ["ICMP", "tcp", ""] {
        assert_invalid(
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": bad, "port": 80}]}]}),
            &["spec.ingress[0].ports[0].protocol"],
        );
    }
}

#[test]
fn port_number_range() {
    for bad in [0, 65536, -1] {
        assert_invalid(
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": bad}]}]}),
            &["spec.ingress[0].ports[0].port"],
        );
    }
    assert_valid(
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 1}, {"port": 65535}]}]}),
    );
}

#[test]
fn named_port_valid_and_invalid() {
    let p = assert_valid(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "metrics"}]}]}));
    assert_eq!(
        p.ingress[0].ports[0].port,
        Some(PortRef::Name("metrics".into()))
    );
    // A numeric string is a name, and names need a letter.
    for bad in ["8080", "HTTP", "my--port", "-http", "a-very-long-port-name"] {
        assert_invalid(
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": bad}]}]}),
            &["spec.ingress[0].ports[0].port"],
        );
    }
}

#[test]
fn end_port_range() {
    let p = assert_valid(json!({"podSelector": {}, "egress": [{"ports": [
        {"port": 32000, "endPort": 32768}, {"port": 53, "endPort": 53}]}]}));
    assert_eq!(p.egress[0].ports[0].end_port, Some(32768));
    assert_eq!(p.egress[0].ports[1].end_port, Some(53));
}

#[test]
fn end_port_below_port_is_invalid() {
    let p = assert_invalid(
        json!({"podSelector": {}, "egress": [{"ports": [{"port": 8080, "endPort": 80}]}]}),
        &["spec.egress[0].ports[0].endPort"],
    );
    assert!(p.errors[0].message.contains("greater than or equal"));
}

#[test]
fn end_port_out_of_range_is_invalid() {
    assert_invalid(
        json!({"podSelector": {}, "egress": [{"ports": [{"port": 80, "endPort": 70000}]}]}),
        &["spec.egress[0].ports[0].endPort"],
    );
}

#[test]
fn end_port_with_named_port_is_invalid() {
    assert_invalid(
        json!({"podSelector": {}, "egress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
        &["spec.egress[0].ports[0].endPort"],
    );
}

#[test]
fn end_port_without_port_is_invalid() {
    assert_invalid(
        json!({"podSelector": {}, "egress": [{"ports": [{"protocol": "TCP", "endPort": 90}]}]}),
        &["spec.egress[0].ports[0].endPort"],
    );
}

// ---- label selectors ----

#[test]
fn selector_expressions_are_parsed_with_sorted_values() {
    let p = assert_valid(json!({"podSelector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "app", "operator": "Exists"},
        {"key": "legacy", "operator": "DoesNotExist", "values": []},
    ]}}));
    assert_eq!(
        p.pod_selector.match_expressions,
        vec![
            Requirement {
                key: "tier".into(),
                operator: Operator::In,
                values: vec!["api".into(), "web".into()]
            },
            Requirement {
                key: "env".into(),
                operator: Operator::NotIn,
                values: vec!["dev".into()]
            },
            Requirement {
                key: "app".into(),
                operator: Operator::Exists,
                values: vec![]
            },
            Requirement {
                key: "legacy".into(),
                operator: Operator::DoesNotExist,
                values: vec![]
            },
        ]
    );
}

#[test]
fn selector_in_and_notin_need_values() {
    for op in ["In", "NotIn"] {
        assert_invalid(
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "app", "operator": op}]}}]}]}),
            &["spec.ingress[0].from[0].podSelector.matchExpressions[0].values"],
        );
    }
}

#[test]
fn selector_exists_and_doesnotexist_forbid_values() {
    for op in ["Exists", "DoesNotExist"] {
        assert_invalid(
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "app", "operator": op, "values": ["x"]}]}}]}]}),
            &["spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"],
        );
    }
}

#[test]
fn selector_unknown_operator() {
    assert_invalid(
        json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "Gt", "values": ["1"]}]}}]}]}),
        &["spec.egress[0].to[0].podSelector.matchExpressions[0].operator"],
    );
}

#[test]
fn selector_bad_keys_and_values() {
    assert_invalid(
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app name": "web"}}}]}]}),
        &["spec.ingress[0].from[0].podSelector.matchLabels"],
    );
    assert_invalid(
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web/1"}}}]}]}),
        &["spec.ingress[0].from[0].podSelector.matchLabels"],
    );
    assert_invalid(
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "/app", "operator": "Exists"}]}}]}]}),
        &["spec.ingress[0].from[0].podSelector.matchExpressions[0].key"],
    );
    assert_invalid(
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["ok", "not ok"]}]}}]}]}),
        &["spec.ingress[0].from[0].podSelector.matchExpressions[0].values[1]"],
    );
}

// ---- fail closed ----

#[test]
fn invalid_policy_keeps_valid_pod_selector_and_isolates_both_directions() {
    let p = assert_invalid(
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}, {}]}),
        &["spec.ingress[0].from[0].ipBlock.cidr"],
    );
    assert_eq!(p.pod_selector, sel(&[("app", "web")]));
}

#[test]
fn invalid_pod_selector_selects_whole_namespace() {
    let p = assert_invalid(
        json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
               "ingress": [{}]}),
        &["spec.podSelector.matchExpressions[0].values"],
    );
    assert_eq!(p.pod_selector, LabelSelector::everything());
    assert_eq!(p.origin, "test.yaml");
}

#[test]
fn one_bad_policy_does_not_affect_others() {
    let mut good = np(json!({"podSelector": {}, "ingress": [{}]}));
    good.metadata.name = Some("good".into());
    let bad = np(json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}));
    let c = convert(&Objects {
        policies: vec![Sourced::new(bad, "a.yaml"), Sourced::new(good, "b.yaml")],
        ..Default::default()
    });
    assert_eq!(c.cluster.policies.len(), 2);
    let good = c
        .cluster
        .policies
        .iter()
        .find(|p| p.name == "good")
        .unwrap();
    assert!(good.errors.is_empty());
    assert_eq!(good.ingress, vec![Rule::default()]);
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.errors[0].origin, "a.yaml");
}

// ---- pods ----

fn pod_json(name: &str, status: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "prod", "labels": {"app": name}},
           "spec": spec, "status": status})
}

fn convert_pods(pods: Vec<Value>) -> Converted {
    convert(&Objects {
        pods: pods
            .into_iter()
            .enumerate()
            .map(|(i, v)| Sourced::new(pod_obj(v), format!("pods.yaml#{i}")))
            .collect(),
        ..Default::default()
    })
}

#[test]
fn pod_fields_are_converted() {
    let c = convert_pods(vec![pod_json(
        "web",
        json!({"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}),
        json!({"nodeName": "n1", "containers": [
            {"name": "a", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
            {"name": "b", "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}],
            "initContainers": [{"name": "s", "ports": [{"name": "sidecar", "containerPort": 15000, "protocol": "SCTP"}]}]}),
    )]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let p = &c.cluster.pods[0];
    assert_eq!(p.key(), "prod/web");
    assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        p.ips,
        vec![
            "10.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(p.node.as_deref(), Some("n1"));
    assert!(!p.host_network);
    assert_eq!(
        p.ports,
        vec![
            ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: None,
                port: 53,
                protocol: Protocol::Udp
            },
            ContainerPort {
                name: Some("metrics".into()),
                port: 9090,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: Some("sidecar".into()),
                port: 15000,
                protocol: Protocol::Sctp
            },
        ]
    );
    assert_eq!(p.resolve_named_port("http", Protocol::Tcp), Some(8080));
}

#[test]
fn pod_ip_falls_back_to_pod_ip_field_and_host_network() {
    let c = convert_pods(vec![pod_json(
        "node-agent",
        json!({"podIP": "192.168.1.10"}),
        json!({"hostNetwork": true, "containers": []}),
    )]);
    let p = &c.cluster.pods[0];
    assert_eq!(
        p.ips,
        vec!["192.168.1.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(p.host_network);
}

#[test]
fn pod_without_status_has_no_ips() {
    let c = convert_pods(vec![pod_json(
        "pending",
        json!(null),
        json!({"containers": []}),
    )]);
    assert!(c.cluster.pods[0].ips.is_empty());
    assert!(c.errors.is_empty());
}

#[test]
fn pod_bad_ip_is_an_error_naming_pod_and_field() {
    let c = convert_pods(vec![pod_json(
        "web",
        json!({"podIPs": [{"ip": "10.0.0.300"}, {"ip": "fd00::2"}]}),
        json!({"containers": []}),
    )]);
    assert_eq!(c.errors.len(), 1);
    let e = &c.errors[0];
    assert_eq!(e.object.as_deref(), Some("Pod prod/web"));
    assert_eq!(e.field.as_deref(), Some("status.podIPs[0].ip"));
    assert_eq!(e.origin, "pods.yaml#0");
    // The pod stays, with the address that parsed.
    assert_eq!(
        c.cluster.pods[0].ips,
        vec!["fd00::2".parse::<std::net::IpAddr>().unwrap()]
    );
    let c = convert_pods(vec![pod_json(
        "x",
        json!({"podIP": "nope"}),
        json!({"containers": []}),
    )]);
    assert_eq!(c.errors[0].field.as_deref(), Some("status.podIP"));
}

#[test]
fn pod_two_ips_of_one_family_keeps_first_with_notice() {
    let c = convert_pods(vec![pod_json(
        "web",
        json!({"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}),
        json!({"containers": []}),
    )]);
    assert_eq!(c.cluster.pods[0].ips.len(), 1);
    assert!(c.notices.iter().any(|n| n.contains("10.0.0.2")));
}

#[test]
fn pod_bad_container_ports() {
    let c = convert_pods(vec![pod_json(
        "web",
        json!({"podIP": "10.0.0.1"}),
        json!({"containers": [{"name": "a", "ports": [
            {"containerPort": 0},
            {"containerPort": 80, "protocol": "ICMP"},
            {"containerPort": 81, "name": "Bad_Name"},
            {"containerPort": 82, "name": "ok"}]}]}),
    )]);
    let fields: Vec<_> = c.errors.iter().map(|e| e.field.clone().unwrap()).collect();
    assert!(fields.contains(&"spec.containers[0].ports[0].containerPort".to_string()));
    assert!(fields.contains(&"spec.containers[0].ports[1].protocol".to_string()));
    assert!(fields.contains(&"spec.containers[0].ports[2].name".to_string()));
    assert_eq!(
        c.cluster.pods[0].ports,
        vec![
            ContainerPort {
                name: None,
                port: 81,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: Some("ok".into()),
                port: 82,
                protocol: Protocol::Tcp
            },
        ]
    );
}

#[test]
fn terminated_pods_are_skipped() {
    let c = convert_pods(vec![
        pod_json(
            "done",
            json!({"phase": "Succeeded", "podIP": "10.0.0.1"}),
            json!({"containers": []}),
        ),
        pod_json(
            "running",
            json!({"phase": "Running", "podIP": "10.0.0.1"}),
            json!({"containers": []}),
        ),
    ]);
    assert_eq!(c.cluster.pods.len(), 1);
    assert_eq!(c.cluster.pods[0].name, "running");
    assert!(c.notices.iter().any(|n| n.contains("Succeeded")));
}

#[test]
fn shared_pod_ips_are_noticed() {
    let c = convert_pods(vec![
        pod_json("a", json!({"podIP": "10.0.0.1"}), json!({"containers": []})),
        pod_json("b", json!({"podIP": "10.0.0.1"}), json!({"containers": []})),
    ]);
    assert!(c
        .notices
        .iter()
        .any(|n| n.contains("10.0.0.1") && n.contains("prod/a, prod/b")));
}

// ---- namespaces, ordering, duplicates ----

#[test]
fn namespaces_get_name_label_and_implicit_ones_exist() {
    let ns: corev1::Namespace =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "prod", "labels": {"team": "x", NAMESPACE_NAME_LABEL: "wrong"}}}))
        .unwrap();
    let mut policy = np(json!({"podSelector": {}}));
    policy.metadata.namespace = Some("policies-only".into());
    let c = convert(&Objects {
        namespaces: vec![Sourced::new(ns, "ns.yaml")],
        pods: vec![Sourced::new(
            pod_obj(pod_json("a", json!(null), json!({"containers": []}))),
            "p.yaml",
        )],
        policies: vec![Sourced::new(policy, "np.yaml")],
        ..Default::default()
    });
    let prod = &c.cluster.namespaces["prod"];
    assert_eq!(prod.labels[NAMESPACE_NAME_LABEL], "prod");
    assert_eq!(prod.labels["team"], "x");
    let implicit = &c.cluster.namespaces["policies-only"];
    assert_eq!(implicit.labels.len(), 1);
    assert_eq!(implicit.labels[NAMESPACE_NAME_LABEL], "policies-only");
}

#[test]
fn missing_namespace_is_default() {
    let mut p = np(json!({}));
    p.metadata.namespace = None;
    let c = convert(&Objects {
        policies: vec![Sourced::new(p, "x")],
        ..Default::default()
    });
    assert_eq!(c.cluster.policies[0].namespace, "default");
    assert!(c.cluster.namespaces.contains_key("default"));
}

#[test]
fn objects_sorted_and_duplicates_last_wins() {
    let mk = |ns: &str, name: &str, app: &str| {
        let mut p = np(json!({"podSelector": {"matchLabels": {"app": app}}}));
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p
    };
    let c = convert(&Objects {
        policies: vec![
            Sourced::new(mk("b", "x", "first"), "1.yaml"),
            Sourced::new(mk("a", "z", "z"), "2.yaml"),
            Sourced::new(mk("a", "y", "y"), "3.yaml"),
            Sourced::new(mk("b", "x", "second"), "4.yaml"),
        ],
        ..Default::default()
    });
    let keys: Vec<_> = c.cluster.policies.iter().map(|p| p.key()).collect();
    assert_eq!(keys, ["a/y", "a/z", "b/x"]);
    assert_eq!(
        c.cluster.policies[2].pod_selector,
        sel(&[("app", "second")])
    );
    assert_eq!(c.cluster.policies[2].origin, "4.yaml");
    assert!(c
        .notices
        .iter()
        .any(|n| n.contains("b/x") && n.contains("1.yaml")));
}

#[test]
fn object_without_name_is_an_error() {
    let mut p = np(json!({}));
    p.metadata.name = None;
    let c = convert(&Objects {
        policies: vec![Sourced::new(p, "x.yaml")],
        ..Default::default()
    });
    assert!(c.cluster.policies.is_empty());
    assert_eq!(c.errors[0].field.as_deref(), Some("metadata.name"));
}

#[test]
fn single_object_helpers() {
    let p = convert_policy(
        &np(json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]})),
        "kubernetes",
    );
    assert!(!p.errors.is_empty() && p.egress_isolation);
    let (pod, errs) = convert_pod(&pod_obj(pod_json(
        "a",
        json!({"podIP": "x"}),
        json!({"containers": []}),
    )));
    assert_eq!(pod.unwrap().key(), "prod/a");
    assert_eq!(errs.len(), 1);
    let ns: corev1::Namespace = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
    assert_eq!(convert_namespace(&ns).labels[NAMESPACE_NAME_LABEL], "n");
}
