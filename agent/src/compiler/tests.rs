//! Compiler unit tests: classes, partition, entries, determinism; behaviour is checked through
//! the plan evaluator (the datapath's lookups).
use std::collections::BTreeMap;
use std::net::IpAddr;

use netward_common::{EP_ISOLATED_INGRESS, EP_LOCAL, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use super::compile;
use crate::eval::{plan::evaluate, Flow, SideVerdict};
use crate::model::*;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(kv).into_iter().collect::<BTreeMap<_, _>>(),
        match_expressions: vec![],
    }
}

struct B {
    c: Cluster,
}

impl B {
    fn new() -> Self {
        B {
            c: Cluster::default(),
        }
    }
    fn ns(mut self, name: &str, kv: &[(&str, &str)]) -> Self {
        let mut l = labels(kv);
        l.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.c.namespaces.insert(
            name.into(),
            Namespace {
                name: name.into(),
                labels: l,
            },
        );
        self
    }
    fn pod(self, ns: &str, name: &str, kv: &[(&str, &str)], ips: &[&str]) -> Self {
        self.pod_full(ns, name, kv, ips, Some("n1"), vec![])
    }
    fn pod_full(
        mut self,
        ns: &str,
        name: &str,
        kv: &[(&str, &str)],
        ips: &[&str],
        node: Option<&str>,
        ports: Vec<ContainerPort>,
    ) -> Self {
        if !self.c.namespaces.contains_key(ns) {
            self = self.ns(ns, &[]);
        }
        self.c.pods.push(Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(kv),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            node: node.map(Into::into),
            host_network: false,
            ports,
        });
        self.c
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self
    }
    fn policy(mut self, p: Policy) -> Self {
        self.c.policies.push(p);
        self.c
            .policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self
    }
}

fn policy(ns: &str, name: &str, pods: LabelSelector) -> Policy {
    Policy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: pods,
        ingress_isolation: true,
        egress_isolation: false,
        ingress: vec![],
        egress: vec![],
        origin: "test".into(),
        errors: vec![],
    }
}

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Number(port)),
        end_port: None,
    }
}

fn own(ns: &str, kv: &[(&str, &str)]) -> Peer {
    Peer::Pods {
        namespaces: NamespaceScope::Own(ns.into()),
        pods: sel(kv),
    }
}

fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

fn flow(src: &str, dst: &str, protocol: u8, port: u16) -> Flow {
    Flow {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol,
        port,
    }
}

fn allowed(plan: &crate::plan::Plan, src: &str, dst: &str, proto: u8, port: u16) -> bool {
    evaluate(plan, &flow(src, dst, proto, port)).allowed()
}

/// prod: web (10.0.0.1), db (10.0.0.2); default deny ingress, web -> db:5432.
fn three_tier() -> Cluster {
    let mut allow = policy("prod", "db-from-web", sel(&[("app", "db")]));
    allow.ingress = vec![Rule {
        peers: vec![own("prod", &[("app", "web")])],
        ports: vec![tcp(5432)],
    }];
    B::new()
        .pod("prod", "web", &[("app", "web")], &["10.0.0.1"])
        .pod("prod", "db", &[("app", "db")], &["10.0.0.2"])
        .policy(policy("prod", "default-deny", LabelSelector::everything()))
        .policy(allow)
        .c
}

#[test]
fn pods_without_policy_are_local_and_not_isolated() {
    let c = B::new()
        .pod("a", "p", &[("app", "x")], &["10.0.0.1", "fd00::1"])
        .c;
    let plan = compile(&c, None);
    assert_eq!(plan.endpoints.len(), 1);
    assert_eq!(plan.endpoints[0].subject_class, 0);
    // Two roots + two pod addresses, each local with endpoint 1.
    assert_eq!(plan.ipcache.len(), 4);
    let locals: Vec<_> = plan
        .ipcache
        .iter()
        .filter(|(_, v)| v.flags == EP_LOCAL)
        .collect();
    assert_eq!(locals.len(), 2);
    assert!(locals.iter().all(|(_, v)| v.endpoint == 1));
    assert!(plan.policy.is_empty());
    let d = evaluate(&plan, &flow("10.0.0.1", "1.1.1.1", PROTO_TCP, 80));
    assert_eq!(d.egress, SideVerdict::NotIsolated);
    assert_eq!(d.ingress, SideVerdict::NotEnforced);
}

#[test]
fn default_deny_with_port_allow() {
    let plan = compile(&three_tier(), None);
    assert!(allowed(&plan, "10.0.0.1", "10.0.0.2", PROTO_TCP, 5432));
    assert!(!allowed(&plan, "10.0.0.1", "10.0.0.2", PROTO_TCP, 5433));
    assert!(!allowed(&plan, "10.0.0.1", "10.0.0.2", PROTO_UDP, 5432));
    assert!(!allowed(&plan, "10.0.0.1", "10.0.0.2", PROTO_ICMP, 0));
    assert!(!allowed(&plan, "10.0.0.2", "10.0.0.1", PROTO_TCP, 5432));
    assert!(!allowed(&plan, "8.8.8.8", "10.0.0.2", PROTO_TCP, 5432));
    let d = evaluate(&plan, &flow("10.0.0.1", "10.0.0.2", PROTO_TCP, 5432));
    match d.ingress {
        SideVerdict::Allowed {
            isolated_by,
            policy,
            rule,
        } => {
            assert_eq!(policy.name, "db-from-web");
            assert_eq!(rule, 0);
            let names: Vec<_> = isolated_by.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["db-from-web", "default-deny"]);
        }
        other => panic!("{other:?}"),
    }
    // Egress is not isolated by ingress-only policies.
    assert_eq!(d.egress, SideVerdict::NotIsolated);
}

#[test]
fn compile_is_deterministic_and_sorted() {
    let c = three_tier();
    let a = compile(&c, None);
    let b = compile(&c, None);
    assert_eq!(a, b);
    assert_eq!(a.ipcache, b.ipcache);
    assert_eq!(a.policy, b.policy);
    assert!(a.ipcache.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(a.policy.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn unselected_labels_do_not_create_classes() {
    let base = compile(&three_tier(), None).stats();
    let mut c = three_tier();
    for (i, p) in c.pods.iter_mut().enumerate() {
        p.labels.insert("pod-template-hash".into(), format!("h{i}"));
    }
    assert_eq!(compile(&c, None).stats(), base);
}

#[test]
fn pods_with_equal_relevant_labels_share_classes() {
    let mut c = three_tier();
    for i in 3..10 {
        c.pods.push(Pod {
            namespace: "prod".into(),
            name: format!("web-{i}"),
            labels: labels(&[("app", "web"), ("id", &i.to_string())]),
            ips: vec![format!("10.0.0.{i}").parse().unwrap()],
            node: Some("n1".into()),
            host_network: false,
            ports: vec![],
        });
    }
    c.pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let plan = compile(&c, None);
    // Subjects: {deny} for web pods, {allow, deny} for db. Peers: web pods, and everything
    // else (db satisfies no peer atom, like any outside address).
    assert_eq!(plan.subject_classes.len(), 2);
    assert_eq!(plan.peer_classes.len(), 2);
    // One entry: (db class, ingress, web class, TCP 5432).
    assert_eq!(plan.policy.len(), 1);
    assert!(allowed(&plan, "10.0.0.7", "10.0.0.2", PROTO_TCP, 5432));
}

#[test]
fn ipblock_matches_pod_ips_and_honours_except() {
    let mut p = policy("prod", "from-range", sel(&[("app", "db")]));
    p.ingress = vec![Rule {
        peers: vec![block("10.0.0.0/24", &["10.0.0.1/32"])],
        ports: vec![],
    }];
    let c = B::new()
        .pod("prod", "web", &[("app", "web")], &["10.0.0.1"])
        .pod("prod", "api", &[("app", "api")], &["10.0.0.3"])
        .pod("prod", "db", &[("app", "db")], &["10.0.0.2"])
        .policy(p)
        .c;
    let plan = compile(&c, None);
    assert!(!allowed(&plan, "10.0.0.1", "10.0.0.2", PROTO_TCP, 1));
    assert!(allowed(&plan, "10.0.0.3", "10.0.0.2", PROTO_TCP, 1));
    assert!(allowed(&plan, "10.0.0.99", "10.0.0.2", PROTO_ICMP, 0));
    assert!(!allowed(&plan, "10.0.1.1", "10.0.0.2", PROTO_UDP, 53));
    assert!(!allowed(&plan, "fd00::1", "10.0.0.2", PROTO_UDP, 53));
}

#[test]
fn ipv6_block_never_matches_ipv4() {
    let mut p = policy("prod", "v6-only", sel(&[("app", "db")]));
    p.ingress = vec![Rule {
        peers: vec![block("::/0", &[])],
        ports: vec![],
    }];
    let c = B::new()
        .pod("prod", "db", &[("app", "db")], &["10.0.0.2", "fd00::2"])
        .pod("prod", "web", &[], &["10.0.0.1", "fd00::1"])
        .policy(p)
        .c;
    let plan = compile(&c, None);
    assert!(allowed(&plan, "fd00::1", "fd00::2", PROTO_TCP, 80));
    assert!(!allowed(&plan, "10.0.0.1", "10.0.0.2", PROTO_TCP, 80));
}

#[test]
fn port_ranges_become_prefix_blocks() {
    let mut p = policy("prod", "range", sel(&[("app", "db")]));
    p.ingress = vec![Rule {
        peers: vec![],
        ports: vec![PortSpec {
            protocol: Protocol::Tcp,
            port: Some(PortRef::Number(8000)),
            end_port: Some(8999),
        }],
    }];
    let c = B::new()
        .pod("prod", "db", &[("app", "db")], &["10.0.0.2"])
        .policy(p)
        .c;
    let plan = compile(&c, None);
    // 8000/10, 8064/9, 8192/7, 8704/8, 8960/11, 8992/13.
    assert_eq!(plan.policy.len(), 6);
    assert!(plan.policy.iter().all(|(k, _)| k.peer_class() == 0));
    for (port, want) in [
        (7999, false),
        (8000, true),
        (8511, true),
        (8999, true),
        (9000, false),
    ] {
        assert_eq!(
            allowed(&plan, "1.2.3.4", "10.0.0.2", PROTO_TCP, port),
            want,
            "{port}"
        );
    }
}

#[test]
fn named_ports_resolve_on_the_receiving_pod() {
    let http = |port| ContainerPort {
        name: Some("http".into()),
        port,
        protocol: Protocol::Tcp,
    };
    let named = PortSpec {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Name("http".into())),
        end_port: None,
    };
    // Ingress: resolves on the selected pod. Egress: on the destination.
    let mut ing = policy("prod", "in", sel(&[("role", "srv")]));
    ing.ingress = vec![Rule {
        peers: vec![],
        ports: vec![named.clone()],
    }];
    let mut eg = policy("prod", "out", sel(&[("role", "cli")]));
    eg.ingress_isolation = false;
    eg.egress_isolation = true;
    eg.egress = vec![Rule {
        peers: vec![],
        ports: vec![named],
    }];
    let c = B::new()
        .pod_full(
            "prod",
            "a",
            &[("role", "srv")],
            &["10.0.0.1"],
            Some("n1"),
            vec![http(8080)],
        )
        .pod_full(
            "prod",
            "b",
            &[("role", "srv")],
            &["10.0.0.2"],
            Some("n1"),
            vec![http(9090)],
        )
        .pod_full(
            "prod",
            "c",
            &[("role", "cli")],
            &["10.0.0.3"],
            Some("n1"),
            vec![],
        )
        .policy(ing)
        .policy(eg)
        .c;
    let plan = compile(&c, None);
    // a and b differ only by their resolution of "http": two subject classes.
    assert_eq!(plan.endpoints[0].subject_class, 1);
    assert_eq!(plan.endpoints[1].subject_class, 2);
    assert!(allowed(&plan, "10.0.0.3", "10.0.0.1", PROTO_TCP, 8080));
    assert!(!allowed(&plan, "10.0.0.3", "10.0.0.1", PROTO_TCP, 9090));
    assert!(allowed(&plan, "10.0.0.3", "10.0.0.2", PROTO_TCP, 9090));
    assert!(!allowed(&plan, "10.0.0.3", "10.0.0.2", PROTO_TCP, 8080));
    // External destinations have no named ports.
    assert!(!allowed(&plan, "10.0.0.3", "1.1.1.1", PROTO_TCP, 8080));
}

#[test]
fn node_filter_keeps_remote_pods_as_peers_only() {
    let mut c = three_tier();
    c.pods[0].node = Some("n2".into()); // db
    let plan = compile(&c, Some("n1"));
    assert_eq!(plan.endpoints.len(), 1);
    assert_eq!(plan.endpoints[0].name, "web");
    // db is remote: its ingress is not enforced here.
    let d = evaluate(&plan, &flow("10.0.0.1", "10.0.0.2", PROTO_TCP, 1));
    assert_eq!(d.ingress, SideVerdict::NotEnforced);
    // web is isolated by default-deny (ingress).
    let web = plan
        .ipcache
        .iter()
        .find(|(k, _)| k.addr[..4] == [10, 0, 0, 1])
        .unwrap()
        .1;
    assert_eq!(web.flags, EP_LOCAL | EP_ISOLATED_INGRESS);
}

#[test]
fn first_rule_is_attributed_and_any_peer_is_shared() {
    // Two rules: any peer TCP any port (rule 1) and web on 5432 (rule 0 of an earlier policy).
    let mut a = policy("prod", "a", sel(&[("app", "db")]));
    a.ingress = vec![Rule {
        peers: vec![own("prod", &[("app", "web")])],
        ports: vec![tcp(5432)],
    }];
    let mut b = policy("prod", "b", sel(&[("app", "db")]));
    b.ingress = vec![Rule {
        peers: vec![],
        ports: vec![PortSpec {
            protocol: Protocol::Tcp,
            port: None,
            end_port: None,
        }],
    }];
    let c = B::new()
        .pod("prod", "web", &[("app", "web")], &["10.0.0.1"])
        .pod("prod", "db", &[("app", "db")], &["10.0.0.2"])
        .policy(a)
        .policy(b)
        .c;
    let plan = compile(&c, None);
    let who =
        |src: &str, port| match evaluate(&plan, &flow(src, "10.0.0.2", PROTO_TCP, port)).ingress {
            SideVerdict::Allowed { policy, .. } => policy.name,
            other => panic!("{other:?}"),
        };
    assert_eq!(who("10.0.0.1", 5432), "a");
    assert_eq!(who("10.0.0.1", 80), "b");
    assert_eq!(who("9.9.9.9", 5432), "b");
}

#[test]
fn host_network_and_ipless_pods_are_not_endpoints() {
    let mut c = three_tier();
    c.pods.push(Pod {
        namespace: "prod".into(),
        name: "zz-host".into(),
        labels: labels(&[("app", "web")]),
        ips: vec!["192.168.1.10".parse::<IpAddr>().unwrap()],
        node: Some("n1".into()),
        host_network: true,
        ports: vec![],
    });
    c.pods.push(Pod {
        namespace: "prod".into(),
        name: "zz-pending".into(),
        labels: labels(&[("app", "web")]),
        ips: vec![],
        node: None,
        host_network: false,
        ports: vec![],
    });
    let plan = compile(&c, None);
    assert_eq!(plan.endpoints.len(), 2);
    // The hostNetwork pod's address is not a pod peer: web's selector does not reach it.
    assert!(!allowed(&plan, "192.168.1.10", "10.0.0.2", PROTO_TCP, 5432));
}
