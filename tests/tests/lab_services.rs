//! Services in the lab: connections to a virtual address are rewritten by the lab's nftables
//! rules (kube-proxy's part) to a random endpoint, enforced by netward, kept in sync as the
//! manifests change, and removed by `lab down`.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use netward::lab::{netns, probe, services, LabPod};
use netward_tests::lab::{pod_yaml, Scenario};
use netward_tests::require_root;

const VIP: &str = "10.97.22.1";
const VIP6: &str = "fd97:22::1";

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: s, name: web}
spec:
  clusterIP: 10.97.22.1
  clusterIPs: [10.97.22.1, "fd97:22::1"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
"#;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: s, name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
"#;

fn web(n: u8) -> String {
    pod_yaml(
        &format!("s/web-{n}"),
        &[("app", "web")],
        &[&format!("10.222.0.1{n}"), &format!("fd22::1{n}")],
        &[("", 8080, "TCP"), ("", 5353, "UDP")],
    )
}

/// The answer of the server a TCP connection from `from` to `dst` reached.
fn answer(from: &LabPod, dst: SocketAddr) -> Option<String> {
    let _in = netns::enter(&from.netns).unwrap();
    let mut c = TcpStream::connect_timeout(&dst, Duration::from_millis(700)).ok()?;
    c.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    c.write_all(b"hello\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

/// Which pods answered `n` connections to the Service's TCP port on `vip` ("blocked": none).
fn answered_by(from: &LabPod, vip: &str, n: usize) -> BTreeSet<String> {
    let dst = SocketAddr::new(vip.parse().unwrap(), 80);
    (0..n)
        .map(|_| match answer(from, dst) {
            Some(a) => a.split_whitespace().nth(1).unwrap_or("?").to_string(),
            None => "blocked".to_string(),
        })
        .collect()
}

fn table_exists(table: &str) -> bool {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == format!("table inet {table}"))
}

#[test]
fn service_virtual_addresses_are_rewritten_enforced_and_followed_live() {
    require_root!();
    let mut lab = Scenario::new("svc")
        .namespace("s", &[])
        .pod(
            "s/client",
            &[("app", "client")],
            &["10.222.0.1", "fd22::1"],
            &[],
        )
        .pod(
            "s/other",
            &[("app", "other")],
            &["10.222.0.2", "fd22::2"],
            &[],
        )
        .file("web.yaml", &[web(1), web(2)].concat())
        .file("service.yaml", SERVICE)
        .file("policy.yaml", POLICY)
        .up();
    let table = services::table(&lab.name);
    assert!(table_exists(&table), "no table {table}");
    let client = lab.pod("s/client").clone();
    let other = lab.pod("s/other").clone();

    // Random choice among both endpoints, over each family; the target port is the
    // endpoints' 8080.
    for vip in [VIP, VIP6] {
        let by = answered_by(&client, vip, 24);
        assert_eq!(
            by,
            ["s/web-1".to_string(), "s/web-2".to_string()].into(),
            "both endpoints answer on {vip}"
        );
        // The endpoints' ingress admits the client only.
        assert_eq!(
            answered_by(&other, vip, 2),
            ["blocked".to_string()].into(),
            "{vip}"
        );
    }

    // Every Service port from every pod, observed == predicted; web pods are endpoints
    // (hairpin) and not probed.
    let cluster = netward::lab::load_manifests(&lab.state.manifests, |_| {}).unwrap();
    let reports = probe::probe_services(&lab.state, &cluster, Default::default());
    assert_eq!(reports.len(), 4, "TCP and UDP port, IPv4 and IPv6 address");
    for r in &reports {
        assert!(r.differences.is_empty(), "{r:?}");
        assert_eq!(r.observed.get("s/client"), Some(&true), "{r:?}");
        assert_eq!(r.observed.get("s/other"), Some(&false), "{r:?}");
        assert!(!r.observed.contains_key("s/web-1"));
    }

    // An endpoint goes: the rules follow, every connection reaches the one left.
    lab.edit("web.yaml", &web(1));
    for vip in [VIP, VIP6] {
        assert_eq!(
            answered_by(&client, vip, 12),
            ["s/web-1".to_string()].into()
        );
    }

    // The Service goes: so does the table (nothing left to rewrite).
    lab.remove("service.yaml");
    assert!(!table_exists(&table), "table left without Services");
    // And comes back.
    lab.edit("service.yaml", SERVICE);
    assert_eq!(
        answered_by(&client, VIP6, 4),
        ["s/web-1".to_string()].into()
    );

    let name = lab.name.clone();
    drop(lab);
    assert!(
        !table_exists(&services::table(&name)),
        "lab down left the table"
    );
}
