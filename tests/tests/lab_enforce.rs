//! Real TCP, UDP and SCTP packets through the datapath the lab daemon attaches, for the
//! NetworkPolicy features one by one. Each test has its own lab name and address range.
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use netward::lab::probe::{self, Target};
use netward::lab::{netns, LabPod};
use netward::model::Protocol::{Sctp, Tcp, Udp};
use netward_tests::lab::{is_root, namespace_yaml, pod_yaml, ManifestDir, TestLab};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

#[test]
fn default_deny_allow_rules_and_replies() {
    require_root!();
    let dir = ManifestDir::new("deny");
    dir.write(
        "pods.yaml",
        &[
            namespace_yaml("app", &[("team", "a")]),
            pod_yaml(
                "app/client",
                &[("app", "client")],
                &["10.210.0.1"],
                &[("", 80, "TCP")],
            ),
            pod_yaml(
                "app/server",
                &[("app", "server")],
                &["10.210.0.2"],
                &[
                    ("", 80, "TCP"),
                    ("", 53, "UDP"),
                    ("", 9000, "SCTP"),
                    ("", 8080, "TCP"),
                ],
            ),
            pod_yaml(
                "app/other",
                &[("app", "other")],
                &["10.210.0.3"],
                &[("", 80, "TCP")],
            ),
        ]
        .concat(),
    );
    dir.write(
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
    );
    let lab = TestLab::up_enforced("deny", &dir).expect("lab up");
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
    let dir = ManifestDir::new("egress");
    dir.write(
        "pods.yaml",
        &[
            namespace_yaml("e", &[]),
            pod_yaml(
                "e/src",
                &[("app", "src")],
                &["10.212.0.1"],
                &[("", 80, "TCP")],
            ),
            pod_yaml(
                "e/inside",
                &[],
                &["10.212.0.10"],
                &[("", 80, "TCP"), ("", 81, "TCP")],
            ),
            pod_yaml("e/excepted", &[], &["10.212.0.200"], &[("", 80, "TCP")]),
        ]
        .concat(),
    );
    dir.write(
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
    );
    let lab = TestLab::up_enforced("egress", &dir).expect("lab up");
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
    let dir = ManifestDir::new("ports");
    dir.write(
        "pods.yaml",
        &[
            namespace_yaml("p", &[]),
            pod_yaml("p/client", &[], &["10.214.0.1"], &[]),
            pod_yaml(
                "p/server",
                &[("app", "server")],
                &["10.214.0.2"],
                &[
                    ("web", 8080, "TCP"),
                    ("", 80, "TCP"),
                    ("", 9003, "UDP"),
                    ("", 9010, "UDP"),
                ],
            ),
        ]
        .concat(),
    );
    dir.write(
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
    );
    let lab = TestLab::up_enforced("ports", &dir).expect("lab up");
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

/// A line echo server on `port` inside `pod` (runs until the test process ends).
fn echo_server(pod: &LabPod, port: u16) {
    let listener = {
        let _in = netns::enter(&pod.netns).unwrap();
        TcpListener::bind(("0.0.0.0", port)).unwrap()
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn connect(from: &LabPod, to: SocketAddr) -> Option<TcpStream> {
    let _in = netns::enter(&from.netns).unwrap();
    let c = TcpStream::connect_timeout(&to, Duration::from_millis(700)).ok()?;
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    Some(c)
}

fn echo(conn: &mut TcpStream, msg: &str) -> bool {
    if writeln!(conn, "{msg}").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut line)
        .is_ok()
        && line.trim() == msg
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
    let dir = ManifestDir::new("midconn");
    dir.write(
        "pods.yaml",
        &[
            namespace_yaml("m", &[]),
            pod_yaml("m/client", &[("app", "client")], &["10.216.0.1"], &[]),
            pod_yaml("m/server", &[("app", "server")], &["10.216.0.2"], &[]),
        ]
        .concat(),
    );
    dir.write("policy.yaml", &allow_port(7100));
    let lab = TestLab::up_enforced("midconn", &dir).expect("lab up");
    let (client, server) = (lab.pod("m/client"), lab.pod("m/server"));
    echo_server(server, 7100);
    let dst = SocketAddr::new(server.ips[0], 7100);
    let mut conn = connect(client, dst).expect("allowed connection");
    assert!(echo(&mut conn, "one"));

    // The allowance goes: the established connection stops, and no new one opens.
    let before = lab.applied();
    dir.write("policy.yaml", &allow_port(7101));
    lab.wait_applied(before);
    assert!(
        !echo(&mut conn, "two"),
        "established connection survived the policy change"
    );
    assert!(
        connect(client, dst).is_none(),
        "new connection opened without an allowance"
    );

    // A new policy allowing it again: new connections open.
    let before = lab.applied();
    dir.write(
        "again.yaml",
        &allow_port(7100).replace("name: server", "name: again"),
    );
    lab.wait_applied(before);
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
        let r = probe::probe(
            &lab.state,
            &cluster,
            target,
            Some(&dests),
            Default::default(),
        )
        .unwrap();
        assert!(r.differences.is_empty(), "{}", probe::table(&r));
        denied += r
            .matrix
            .values()
            .flat_map(|row| row.values())
            .filter(|v| !**v)
            .count();
    }
    assert!(
        denied > 0,
        "the examples deny something: the comparison must not be vacuous"
    );
}
