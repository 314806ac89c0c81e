//! Real TCP, UDP and SCTP packets through the datapath the lab daemon attaches, for the
//! NetworkPolicy features one by one. Each test has its own lab name and address range.
use std::net::SocketAddr;

use netward::cli::lab::{report_table, services_table};
use netward::lab::probe::{self, Target};
use netward::model::Protocol::{self, Sctp, Tcp, Udp};
use netward_tests::lab::{connect, echo, echo_server, Scenario, TestLab};
use netward_tests::require_root;

#[test]
fn default_deny_allow_rules_and_replies() {
    require_root!();
    let lab = Scenario::new("deny")
        .namespace("app", &[("team", "a")])
        .pod(
            "app/client",
            &[("app", "client")],
            &["10.210.0.1"],
            &[("", 80, "TCP")],
        )
        .pod(
            "app/server",
            &[("app", "server")],
            &["10.210.0.2"],
            &[
                ("", 80, "TCP"),
                ("", 53, "UDP"),
                ("", 9000, "SCTP"),
                ("", 8080, "TCP"),
            ],
        )
        .pod(
            "app/other",
            &[("app", "other")],
            &["10.210.0.3"],
            &[("", 80, "TCP")],
        )
        .file(
            "policy.yaml",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: app, name: server}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}, {protocol: UDP, port: 53}, {protocol: SCTP, port: 9000}]
"#,
        )
        .up();
    for (port, proto) in [(80, Tcp), (53, Udp), (9000, Sctp)] {
        assert!(
            lab.reach("app/client", "app/server", port, proto),
            "client -> {port}/{proto}"
        );
        assert!(
            !lab.reach("app/other", "app/server", port, proto),
            "other -> {port}/{proto}"
        );
    }
    // A port the rule does not list.
    assert!(!lab.reach("app/client", "app/server", 8080, Tcp));
    // The server is not isolated for egress, the client not for ingress: the server's own
    // connections pass, and the TCP answers above were replies passing the isolated side.
    assert!(lab.reach("app/server", "app/client", 80, Tcp));
    assert!(lab.reach("app/client", "app/other", 80, Tcp));
}

#[test]
fn egress_rules_and_ip_block_except() {
    require_root!();
    let lab = Scenario::new("egress")
        .namespace("e", &[])
        .pod(
            "e/src",
            &[("app", "src")],
            &["10.212.0.1"],
            &[("", 80, "TCP")],
        )
        .pod(
            "e/inside",
            &[],
            &["10.212.0.10"],
            &[("", 80, "TCP"), ("", 81, "TCP")],
        )
        .pod("e/excepted", &[], &["10.212.0.200"], &[("", 80, "TCP")])
        .file(
            "policy.yaml",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: e, name: src-egress}
spec:
  podSelector: {matchLabels: {app: src}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.212.0.0/24, except: [10.212.0.128/25]}}]
    ports: [{protocol: TCP, port: 80}]
"#,
        )
        .up();
    assert!(lab.reach("e/src", "e/inside", 80, Tcp));
    assert!(
        !lab.reach("e/src", "e/inside", 81, Tcp),
        "port not in the egress rule"
    );
    assert!(
        !lab.reach("e/src", "e/excepted", 80, Tcp),
        "address in except"
    );
    assert!(
        !lab.reach("e/src", "e/inside", 80, Udp),
        "protocol not in the egress rule"
    );
    // Only src's egress is isolated.
    assert!(lab.reach("e/excepted", "e/src", 80, Tcp));
    assert!(lab.reach("e/inside", "e/excepted", 80, Tcp));
}

#[test]
fn named_ports_and_end_port_ranges() {
    require_root!();
    let lab = Scenario::new("ports")
        .namespace("p", &[])
        .pod("p/client", &[], &["10.214.0.1"], &[])
        .pod(
            "p/server",
            &[("app", "server")],
            &["10.214.0.2"],
            &[
                ("web", 8080, "TCP"),
                ("", 80, "TCP"),
                ("", 9003, "UDP"),
                ("", 9010, "UDP"),
            ],
        )
        .file(
            "policy.yaml",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: p, name: server}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{port: web}, {protocol: UDP, port: 9000, endPort: 9005}]
"#,
        )
        .up();
    assert!(
        lab.reach("p/client", "p/server", 8080, Tcp),
        "named port web"
    );
    assert!(!lab.reach("p/client", "p/server", 80, Tcp));
    assert!(
        lab.reach("p/client", "p/server", 9003, Udp),
        "inside endPort range"
    );
    assert!(
        !lab.reach("p/client", "p/server", 9010, Udp),
        "outside endPort range"
    );
    assert!(
        !lab.reach("p/client", "p/server", 8080, Udp),
        "named port is TCP"
    );
}

fn allow_port(port: u16) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: m, name: server}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{port: {port}}}]
"#
    )
}

#[test]
fn policy_change_mid_connection_stops_it_and_a_new_allow_opens() {
    require_root!();
    let mut lab = Scenario::new("midconn")
        .namespace("m", &[])
        .pod("m/client", &[("app", "client")], &["10.216.0.1"], &[])
        .pod("m/server", &[("app", "server")], &["10.216.0.2"], &[])
        .file("policy.yaml", &allow_port(7100))
        .up();
    let (client, server) = (lab.pod("m/client").clone(), lab.pod("m/server").clone());
    let (client, server) = (&client, &server);
    echo_server(server, 7100);
    let dst = SocketAddr::new(server.ips[0], 7100);
    let mut conn = connect(client, dst).expect("allowed connection");
    assert!(echo(&mut conn, "one"));

    // The allowance goes: the established connection stops, and no new one opens.
    lab.edit("policy.yaml", &allow_port(7101));
    assert!(
        !echo(&mut conn, "two"),
        "established connection survived the policy change"
    );
    assert!(
        connect(client, dst).is_none(),
        "new connection opened without an allowance"
    );

    // A new policy allowing it again: new connections open.
    lab.edit(
        "again.yaml",
        &allow_port(7100).replace("name: server", "name: again"),
    );
    let mut conn = connect(client, dst).expect("connection allowed again");
    assert!(echo(&mut conn, "three"));
}

#[test]
fn examples_predicted_equals_observed() {
    require_root!();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let files = vec![examples];
    let cluster = netward::lab::load_manifests(&files, |_| {}).expect("examples load");
    let lab = TestLab::up("examples", &files, &cluster, true).expect("lab up");
    let mut targets = probe::declared_targets(&lab.state);
    targets.push((
        Target {
            port: 80,
            protocol: Tcp,
        },
        lab.state.pods.iter().map(|p| p.key.clone()).collect(),
    ));
    let mut denied = 0;
    for (target, dests) in targets {
        let reports = probe::probe(
            &lab.state,
            &cluster,
            target,
            Some(&dests),
            Default::default(),
        )
        .unwrap();
        for r in reports {
            assert!(r.differences.is_empty(), "{}", report_table(&r));
            denied += r
                .matrix
                .values()
                .flat_map(|row| row.values())
                .filter(|v| !**v)
                .count();
        }
    }
    assert!(
        denied > 0,
        "the examples deny something: the comparison must not be vacuous"
    );

    // Services through their virtual addresses (90-services.yaml).
    let services = probe::probe_services(&lab.state, &cluster, Default::default());
    let pods: Vec<&str> = lab.state.pods.iter().map(|p| p.key.as_str()).collect();
    for r in &services {
        assert!(
            r.differences.is_empty(),
            "{}",
            services_table(&pods, &services)
        );
    }
    let cell = |svc: &str, protocol: Protocol, from: &str| -> bool {
        let r = services
            .iter()
            .find(|r| r.service == svc && r.protocol == protocol)
            .unwrap_or_else(|| panic!("{svc} {protocol} not probed"));
        r.observed[from]
    };
    // One client of postgres reaches it, the others are denied (egress or ingress).
    assert!(cell("data/postgres", Tcp, "orders/orders-api"));
    assert!(!cell("data/postgres", Tcp, "orders/orders-worker"));
    assert!(!cell("data/postgres", Tcp, "production/backend"));
    // DNS through the kube-dns virtual address, from production pods whose egress only
    // allows the kube-dns pods: decided on every endpoint (both coredns replicas).
    for from in ["production/frontend", "production/backend"] {
        assert!(cell("kube-system/kube-dns", Udp, from), "{from} DNS/UDP");
        assert!(cell("kube-system/kube-dns", Tcp, from), "{from} DNS/TCP");
    }
}
