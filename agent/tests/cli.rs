//! The `netward` binary, run as a user would on `examples/` (and on small broken inputs fed
//! through standard input): JSON shapes, exit codes, and the verdicts each example scenario
//! is there to show (see examples/README.md).
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn netward(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netward");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn matrix(port: &str, protocol: &str) -> Value {
    let r = netward(
        &[
            "matrix",
            "-f",
            EXAMPLES,
            "--port",
            port,
            "--protocol",
            protocol,
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()
}

fn cell(m: &Value, from: &str, to: &str) -> bool {
    m["matrix"][from][to]
        .as_bool()
        .unwrap_or_else(|| panic!("no boolean for {from} -> {to}"))
}

/// Exit code and JSON of `explain`.
fn explain(from: &str, to: &str, port: &str, protocol: &str) -> (i32, Value) {
    let r = netward(
        &[
            "explain",
            "-f",
            EXAMPLES,
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
            "--protocol",
            protocol,
            "-o",
            "json",
        ],
        None,
    );
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    (r.code, r.json())
}

#[test]
fn matrix_json_has_the_documented_shape() {
    let m = matrix("80", "TCP");
    let obj = m.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        ["matrix", "port", "protocol"],
        "exactly these keys"
    );
    assert_eq!(m["port"], 80);
    assert_eq!(m["protocol"], "TCP");
    let rows = m["matrix"].as_object().unwrap();
    assert_eq!(rows.len(), 12, "every example pod");
    let keys: Vec<&String> = rows.keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "rows sorted");
    for (from, row) in rows {
        let row = row.as_object().unwrap();
        assert_eq!(
            row.keys().collect::<Vec<_>>(),
            keys,
            "every row of {from} has every pod"
        );
        assert!(row.values().all(Value::is_boolean));
    }
}

#[test]
fn matrix_three_tier_verdicts() {
    let m = matrix("8080", "TCP");
    assert!(cell(&m, "production/frontend", "production/backend"));
    assert!(!cell(&m, "production/backend", "production/frontend"));
    // Only the frontend may call the backend, and only on 8080.
    assert!(!cell(&m, "tenant-a/web", "production/backend"));
    assert!(!cell(&m, "monitoring/prometheus", "production/backend"));
    let m = matrix("5432", "TCP");
    assert!(cell(&m, "production/backend", "production/database"));
    assert!(!cell(&m, "production/frontend", "production/database"));
    let m = matrix("80", "TCP");
    // The storefront is public on its `http` port, but production egress is default-deny.
    assert!(cell(&m, "tenant-b/web", "production/frontend"));
    assert!(!cell(&m, "production/backend", "production/frontend"));
}

#[test]
fn matrix_dns_and_default_deny() {
    let udp = matrix("53", "UDP");
    let tcp = matrix("53", "TCP");
    for from in [
        "production/frontend",
        "production/backend",
        "production/database",
    ] {
        assert!(cell(&udp, from, "kube-system/coredns"), "{from} DNS/UDP");
        assert!(cell(&tcp, from, "kube-system/coredns"), "{from} DNS/TCP");
        // DNS only to kube-dns, nowhere else.
        assert!(!cell(&udp, from, "orders/orders-api"), "{from}");
    }
}

#[test]
fn matrix_monitoring_named_port_resolves_per_pod() {
    let m = matrix("9090", "TCP");
    assert!(cell(&m, "monitoring/prometheus", "production/frontend"));
    assert!(cell(&m, "monitoring/prometheus", "production/backend"));
    assert!(!cell(&m, "monitoring/prometheus", "production/database"));
    assert!(!cell(&m, "tenant-a/web", "production/backend"));
    let m = matrix("9187", "TCP");
    assert!(cell(&m, "monitoring/prometheus", "production/database"));
    assert!(!cell(&m, "monitoring/prometheus", "production/backend"));
}

#[test]
fn matrix_tenant_isolation() {
    let m = matrix("8080", "TCP");
    assert!(cell(&m, "tenant-a/web", "tenant-a/worker"));
    assert!(cell(&m, "tenant-a/worker", "tenant-a/web"));
    assert!(!cell(&m, "tenant-b/web", "tenant-a/web"));
    assert!(!cell(&m, "tenant-a/web", "tenant-b/web"));
    assert!(!cell(&m, "orders/orders-api", "tenant-a/web"));
    // Tenants' egress is not isolated.
    assert!(cell(&m, "tenant-a/web", "orders/orders-api"));
}

#[test]
fn matrix_orders_api_to_postgres_across_namespaces() {
    let m = matrix("5432", "TCP");
    assert!(cell(&m, "orders/orders-api", "data/postgres"));
    assert!(!cell(&m, "orders/orders-worker", "data/postgres"));
    assert!(!cell(&m, "production/backend", "data/postgres"));
}

#[test]
fn matrix_table_is_readable() {
    let r = netward(&["matrix", "-f", EXAMPLES, "--port", "8080"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Reachability on TCP/8080"));
    assert!(r.stdout.contains("\nproduction\n"), "grouped by namespace");
    assert!(r.stdout.contains(" frontend"));
    assert!(r.stdout.contains("55 of 144 pairs allowed"), "{}", r.stdout);
}

#[test]
fn matrix_collapses_to_namespaces_for_many_pods_unless_full() {
    let mut text = String::new();
    for ns in 0..5 {
        for p in 0..10 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: ns{ns}}}\nstatus: {{podIP: 10.9.{ns}.{p}}}\n"
            ));
        }
    }
    text.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: ns0}\nspec: {podSelector: {}}\n");
    let r = netward(&["matrix", "-f", "-"], Some(&text));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("summarised by namespace"), "{}", r.stdout);
    // ns0 isolates ingress with no rules: only its pods' traffic to themselves is allowed
    // (10 of 100 pairs: mark 1), everything else reaches everything.
    assert!(
        r.stdout
            .contains("1 ns0 1 \u{2713} \u{2713} \u{2713} \u{2713}  410/500"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("2 ns1 \u{b7} \u{2713} \u{2713} \u{2713} \u{2713}  400/500"),
        "{}",
        r.stdout
    );
    // 40 * 50 from the other namespaces, plus ns0's 10 pods to themselves.
    assert!(
        r.stdout.contains("2010 of 2500 pairs allowed"),
        "{}",
        r.stdout
    );
    let r = netward(&["matrix", "-f", "-", "--full"], Some(&text));
    assert!(r.stdout.contains("  50 p9"), "{}", r.stdout);
}

#[test]
fn explain_allowed_and_denied_with_reasons() {
    let (code, v) = explain("production/frontend", "production/backend", "8080", "TCP");
    assert_eq!(code, 0);
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["allowed_by"]["policy"], "production/frontend");
    assert_eq!(v["ingress"]["allowed_by"]["policy"], "production/backend");
    assert_eq!(v["ingress"]["allowed_by"]["rule"], 0);
    let (code, v) = explain("production/frontend", "production/database", "5432", "TCP");
    assert_eq!(code, 1);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["ingress"]["verdict"], "denied");
    let isolating = v["ingress"]["isolated_by"].as_array().unwrap();
    assert!(isolating.contains(&Value::from("production/database")));
    assert!(isolating.contains(&Value::from("production/default-deny-all")));
}

#[test]
fn explain_table_names_the_rule() {
    let r = netward(
        &[
            "explain",
            "-f",
            EXAMPLES,
            "--from",
            "production/frontend",
            "--to",
            "production/backend",
            "--port",
            "8080",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with(
        "production/frontend (10.1.1.10) -> production/backend (10.1.1.20) TCP/8080: ALLOWED"
    ));
    assert!(r.stdout.contains(
        "allowed by:  production/backend ingress[0]: from podSelector app=frontend, ports TCP/api"
    ), "{}", r.stdout);
    assert!(r.stdout.contains("api=8080 on production/backend"));
}

#[test]
fn explain_external_egress_and_metadata_block() {
    assert_eq!(
        explain("production/backend", "203.0.113.10", "443", "TCP").0,
        0
    );
    assert_eq!(
        explain("production/backend", "203.0.113.10", "80", "TCP").0,
        1
    );
    assert_eq!(
        explain("production/backend", "198.51.100.7", "443", "TCP").0,
        1
    );
    assert_eq!(
        explain("production/frontend", "203.0.113.10", "443", "TCP").0,
        1
    );
    let (code, v) = explain("monitoring/prometheus", "169.254.169.254", "80", "TCP");
    assert_eq!(code, 1);
    assert_eq!(
        v["egress"]["isolated_by"][0],
        "monitoring/prometheus-egress"
    );
    assert_eq!(v["ingress"]["verdict"], "not_enforced");
    assert_eq!(explain("prometheus", "100.100.100.200", "80", "TCP").0, 1);
    assert_eq!(explain("prometheus", "198.51.100.7", "443", "TCP").0, 0);
    // ipBlock 0.0.0.0/0 also covers pod addresses.
    assert_eq!(
        explain("prometheus", "production/backend", "9090", "TCP").0,
        0
    );
}

#[test]
fn explain_dns() {
    assert_eq!(
        explain("production/frontend", "kube-system/coredns", "53", "UDP").0,
        0
    );
    assert_eq!(
        explain("production/frontend", "10.1.0.10", "53", "TCP").0,
        0
    );
    assert_eq!(
        explain("production/frontend", "kube-system/coredns", "9153", "TCP").0,
        1
    );
}

#[test]
fn explain_bad_endpoints_are_errors() {
    let r = netward(
        &[
            "explain",
            "-f",
            EXAMPLES,
            "--from",
            "web",
            "--to",
            "data/postgres",
            "--port",
            "1",
        ],
        None,
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("ambiguous") && r.stderr.contains("tenant-a/web"),
        "{}",
        r.stderr
    );
    let r = netward(
        &[
            "explain",
            "-f",
            EXAMPLES,
            "--from",
            "production/nope",
            "--to",
            "data/postgres",
            "--port",
            "1",
        ],
        None,
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no pod \"production/nope\""),
        "{}",
        r.stderr
    );
    let r = netward(
        &[
            "explain",
            "-f",
            EXAMPLES,
            "--from",
            "production/frontend",
            "--to",
            "data/postgres",
        ],
        None,
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--port is required"), "{}", r.stderr);
}

#[test]
fn lint_examples_are_clean() {
    let r = netward(&["lint", "-f", EXAMPLES, "-o", "json"], None);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["findings"], Value::Array(vec![]));
    assert_eq!(v["errors"], Value::Array(vec![]));
}

const BROKEN: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.2.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIP: 10.2.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-range, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: 8080, endPort: 80}]
";

#[test]
fn lint_reports_invalid_policies_and_exits_1() {
    let r = netward(&["lint", "-f", "-", "-o", "json"], Some(BROKEN));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["field"], "spec.ingress[0].ports[0].endPort");
    assert_eq!(errors[0]["object"], "NetworkPolicy shop/bad-range");
    assert!(!v["findings"].as_array().unwrap().is_empty());
    let r = netward(&["lint", "-f", "-"], Some(BROKEN));
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("shop/bad-range"), "{}", r.stdout);
}

#[test]
fn invalid_policy_fails_closed_and_is_reported() {
    let r = netward(
        &["matrix", "-f", "-", "--port", "8080", "-o", "json"],
        Some(BROKEN),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("<stdin>#3: NetworkPolicy shop/bad-range: spec.ingress[0].ports[0].endPort"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("invalid policy fails closed"),
        "{}",
        r.stderr
    );
    let m = r.json();
    // The invalid policy isolates db for ingress and egress, allowing nothing.
    assert!(!cell(&m, "shop/web", "shop/db"));
    assert!(!cell(&m, "shop/db", "shop/web"));
    assert!(cell(&m, "shop/web", "shop/web"));
}

#[test]
fn unreadable_input_is_an_error() {
    let r = netward(
        &["matrix", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: [oops\n"),
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("<stdin>#1: invalid YAML"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let r = netward(&["lint", "-f", "/nonexistent/dir"], None);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("/nonexistent/dir: cannot read"),
        "{}",
        r.stderr
    );
}

#[test]
fn plan_sizes_and_dump() {
    let r = netward(&["plan", "-f", EXAMPLES, "-o", "json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["stats"]["policies"], 11);
    assert_eq!(v["stats"]["endpoints"], 12);
    assert!(v["stats"]["policy_entries"].as_u64().unwrap() > 0);
    assert!(v.get("dump").is_none());
    let r = netward(
        &[
            "plan", "-f", EXAMPLES, "--node", "node-2", "--dump", "-o", "json",
        ],
        None,
    );
    let v = r.json();
    let endpoints = v["dump"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 6, "pods of node-2");
    let ipcache = v["dump"]["ipcache"].as_array().unwrap();
    assert!(ipcache.iter().any(|e| e["prefix"] == "0.0.0.0/0"));
    assert!(ipcache
        .iter()
        .any(|e| e["prefix"] == "10.1.1.30/32" && e["endpoint"] == "production/database"));
    let policy = v["dump"]["policy"].as_array().unwrap();
    assert!(policy
        .iter()
        .any(|e| e["policy"] == "data/postgres-from-orders-api"
            && e["ports"] == "5432"
            && e["protocol"] == "TCP"));
    let r = netward(&["plan", "-f", EXAMPLES, "--dump"], None);
    assert!(r.stdout.contains("subject classes:") && r.stdout.contains("peer classes:"));
}

#[test]
fn without_files_the_bundled_examples_are_used() {
    let embedded = netward(&["matrix", "--port", "5432", "-o", "json"], None);
    assert_eq!(embedded.code, 0, "{}", embedded.stderr);
    assert!(embedded.stderr.contains("bundled examples"));
    assert_eq!(embedded.json(), matrix("5432", "TCP"));
}

#[test]
fn matrix_for_one_node_enforces_only_its_pods() {
    let r = netward(
        &[
            "matrix", "-f", EXAMPLES, "--port", "5432", "--node", "node-1", "-o", "json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = r.json();
    // Both on node-2: node-1's Plan enforces neither side.
    assert!(cell(&m, "orders/orders-worker", "data/postgres"));
    // frontend is on node-1: its egress is enforced there.
    assert!(!cell(&m, "production/frontend", "data/postgres"));
    let r = netward(&["matrix", "-f", EXAMPLES, "--node", "node-1"], None);
    assert!(r.stdout.contains("Plan for node node-1"), "{}", r.stdout);
}

#[test]
fn matrix_verify_agrees_with_the_spec_on_the_examples() {
    for (port, proto) in [("80", "TCP"), ("53", "UDP"), ("9187", "TCP"), ("0", "ICMP")] {
        let r = netward(
            &[
                "matrix",
                "-f",
                EXAMPLES,
                "--port",
                port,
                "--protocol",
                proto,
                "--verify",
                "-o",
                "json",
            ],
            None,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr
                .contains("verified: the spec evaluator agrees with the Plan on all 144 pairs"),
            "{}",
            r.stderr
        );
    }
}
