//! Hand-written semantic cases: each one cites the NetworkPolicy rule it tests (the
//! networking.k8s.io/v1 API reference, "API" below; the Kubernetes "Network Policies" concept
//! page, "Docs"; or DESIGN.md's "Semantics that must be exact", "DESIGN") and asserts the
//! expected verdict per side with BOTH evaluators: `spec` (the model, read directly) and `plan`
//! (the compiled Plan, looked up as the datapath does).
use crate::compiler;
use crate::eval::{plan, spec, Decision, Flow};
use crate::model::{Cluster, Direction, Operator};
use crate::testkit::*;

use V::*;

/// Expected verdict, per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    /// Both sides allow.
    Allow,
    /// The source's egress denies, the destination's ingress allows.
    DenyEgress,
    /// The destination's ingress denies, the source's egress allows.
    DenyIngress,
    /// Both sides deny.
    DenyBoth,
}

fn verdict(d: &Decision) -> V {
    match (d.egress.allows(), d.ingress.allows()) {
        (true, true) => Allow,
        (false, true) => DenyEgress,
        (true, false) => DenyIngress,
        (false, false) => DenyBoth,
    }
}

/// Assert `want` for `flow` with the spec evaluator, then with the plan evaluator on the Plan
/// compiled for `node`.
#[track_caller]
fn check_on(c: &Cluster, node: Option<&str>, f: Flow, want: V) {
    let s = spec::evaluate(c, node, &f);
    assert_eq!(verdict(&s), want, "spec evaluator, {f:?}: {s:#?}");
    assert_eq!(s.allowed(), want == Allow);
    let p = plan::evaluate(&compiler::compile(c, node), &f);
    assert_eq!(verdict(&p), want, "plan evaluator, {f:?}: {p:#?}");
}

#[track_caller]
fn check(c: &Cluster, f: Flow, want: V) {
    check_on(c, None, f, want)
}

// Addresses of the base cluster.
const WEB: &str = "10.0.1.1";
const WEB6: &str = "fd00::1:1";
const CLIENT: &str = "10.0.1.2";
const CLIENT6: &str = "fd00::1:2";
const DB: &str = "10.0.1.3";
const DEV_WEB: &str = "10.0.2.1";
const DEV_CLIENT: &str = "10.0.2.2";
const PROM: &str = "10.0.3.1";
const DNS: &str = "10.0.4.1";
const LONE: &str = "10.0.5.1";
const EXT: &str = "203.0.113.7";
const EXT6: &str = "2001:db8::7";
const METADATA: &str = "169.254.169.254";

/// Namespaces prod (team=a, env=prod), dev (team=b), monitoring (purpose=monitoring),
/// kube-system (no labels), lonely (no labels); web/client dual stack; db, dns with named
/// ports; every pod on node n1 except dev's (n2).
fn base() -> ClusterBuilder {
    ClusterBuilder::new()
        .namespace("prod", &[("team", "a"), ("env", "prod")])
        .namespace("dev", &[("team", "b")])
        .namespace("monitoring", &[("purpose", "monitoring")])
        .namespace("kube-system", &[])
        .namespace("lonely", &[])
        .pod("prod", "web", &[("app", "web"), ("tier", "front")], WEB)
        .ip(WEB6)
        .port("http", 8080, TCP)
        .port("metrics", 9090, TCP)
        .node("n1")
        .pod("prod", "client", &[("app", "client")], CLIENT)
        .ip(CLIENT6)
        .port("http", 9000, TCP)
        .node("n1")
        .pod("prod", "db", &[("app", "db"), ("tier", "back")], DB)
        .port("postgres", 5432, TCP)
        .port("metrics", 9187, TCP)
        .node("n1")
        .pod("dev", "web", &[("app", "web")], DEV_WEB)
        .port("http", 8081, TCP)
        .node("n2")
        .pod("dev", "client", &[("app", "client")], DEV_CLIENT)
        .node("n2")
        .pod("monitoring", "prom", &[("app", "prometheus")], PROM)
        .node("n1")
        .pod("kube-system", "dns", &[("k8s-app", "kube-dns")], DNS)
        .port("dns", 53, UDP)
        .port("dns-tcp", 53, TCP)
        .node("n1")
        .pod("lonely", "pod", &[], LONE)
        .node("n1")
}

/// `podSelector: {app: web}` in prod, `ingress: []`.
fn deny_web_ingress() -> PolicyBuilder {
    policy("prod", "deny-web")
        .select(&[("app", "web")])
        .ingress_section()
}

// ---------------------------------------------------------------------------------------
// Isolation, policyTypes, union
// ---------------------------------------------------------------------------------------

/// Docs: "By default, a pod is non-isolated for ingress; all inbound connections are allowed"
/// (and likewise for egress).
#[test]
fn c01_no_policy_allows_everything() {
    let c = base().build();
    check(&c, tcp(CLIENT, WEB, 1), Allow);
    check(&c, udp(EXT, DB, 9), Allow);
    check(&c, icmp(WEB, EXT), Allow);
}

/// API ingress: "If this field is empty then this NetworkPolicy does not allow any traffic
/// (and serves solely to ensure that the pods it selects are isolated by default)".
#[test]
fn c02_ingress_deny_all_isolates_only_selected_pods_for_ingress() {
    let c = base().policy(deny_web_ingress()).build();
    check(&c, tcp(CLIENT, WEB, 8080), DenyIngress);
    check(&c, tcp(EXT, WEB, 8080), DenyIngress);
    // Not selected: db stays open.
    check(&c, tcp(CLIENT, DB, 5432), Allow);
    // Isolation is per direction: web may still open connections.
    check(&c, tcp(WEB, DB, 5432), Allow);
}

/// API policyTypes: "policies that contain an egress section are assumed to affect egress, and
/// all policies (whether or not they contain an ingress section) are assumed to affect
/// ingress". Upstream `SetDefaults_NetworkPolicy` adds Egress only when `len(spec.egress) != 0`:
/// `egress: []` without policyTypes isolates ingress only; one egress rule isolates both.
#[test]
fn c03_default_policy_types_from_egress_rules() {
    let empty_section = base()
        .policy(
            policy("prod", "lock-db")
                .select(&[("app", "db")])
                .egress_section(),
        )
        .build();
    check(&empty_section, tcp(DB, EXT, 443), Allow);
    check(&empty_section, tcp(CLIENT, DB, 5432), DenyIngress);
    let with_rule = base()
        .policy(
            policy("prod", "lock-db")
                .select(&[("app", "db")])
                .egress(rule().ip_block("198.51.100.0/24", &[])),
        )
        .build();
    check(&with_rule, tcp(DB, EXT, 443), DenyEgress);
    check(&with_rule, tcp(DB, "198.51.100.1", 443), Allow);
    check(&with_rule, tcp(CLIENT, DB, 5432), DenyIngress);
}

/// API policyTypes defaulting: a policy with only an ingress section does not affect egress.
#[test]
fn c04_ingress_only_policy_does_not_isolate_egress() {
    let c = base()
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")])),
        )
        .build();
    check(&c, tcp(WEB, EXT, 443), Allow);
    check(&c, udp(WEB, DNS, 53), Allow);
}

/// API policyTypes: "If you want to write an egress-only policy, you must explicitly specify
/// policyTypes [ "Egress" ]" - the ingress section of such a policy is ignored.
#[test]
fn c05_explicit_egress_type_ignores_ingress_section() {
    let c = base()
        .policy(
            policy("prod", "egress-only")
                .select(&[("app", "web")])
                .types(&[Direction::Egress])
                // Would deny everything but client if it counted.
                .ingress(rule().pods(&[("app", "client")]))
                .egress(rule().ip_block("203.0.113.0/24", &[])),
        )
        .build();
    // Not isolated for ingress at all.
    check(&c, tcp(DB, WEB, 8080), Allow);
    check(&c, tcp(EXT, WEB, 8080), Allow);
    // Isolated for egress.
    check(&c, tcp(WEB, EXT, 443), Allow);
    check(&c, tcp(WEB, DB, 5432), DenyEgress);
}

/// API policyTypes: "if you want to write a policy that specifies that no egress is allowed,
/// you must specify a policyTypes value that include "Egress"".
#[test]
fn c06_explicit_egress_type_without_section_denies_all_egress() {
    let c = base()
        .policy(
            policy("prod", "no-egress")
                .select(&[("app", "client")])
                .types(&[Direction::Egress]),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), DenyEgress);
    check(&c, tcp(WEB, CLIENT, 9000), Allow);
}

/// API policyTypes: ["Ingress", "Egress"] with neither section: default deny both ways.
#[test]
fn c07_both_types_no_sections_default_deny() {
    let c = base()
        .policy(policy("prod", "deny-all").types(&[Direction::Ingress, Direction::Egress]))
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), DenyBoth);
    check(&c, tcp(DEV_CLIENT, WEB, 8080), DenyIngress);
    check(&c, tcp(WEB, DEV_WEB, 8081), DenyEgress);
    // Other namespaces are untouched.
    check(&c, tcp(DEV_CLIENT, DEV_WEB, 8081), Allow);
}

/// Docs: "Network policies do not conflict; they are additive. [...] the allowed connections
/// [...] is the union of what the applicable policies allow." Attribution: first allowing
/// policy in cluster order.
#[test]
fn c08_union_of_policies() {
    let c = base()
        .policy(
            policy("prod", "a-client-http")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")]).tcp(8080)),
        )
        .policy(
            policy("prod", "b-prom-metrics")
                .select(&[("app", "web")])
                .ingress(rule().namespaces(&[("purpose", "monitoring")]).tcp(9090)),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(PROM, WEB, 9090), Allow);
    check(&c, tcp(CLIENT, WEB, 9090), DenyIngress);
    check(&c, tcp(PROM, WEB, 8080), DenyIngress);
    match spec::evaluate(&c, None, &tcp(PROM, WEB, 9090)).ingress {
        crate::eval::SideVerdict::Allowed {
            isolated_by,
            policy,
            rule,
        } => {
            assert_eq!(isolated_by.len(), 2);
            assert_eq!(policy.key(), "prod/b-prom-metrics");
            assert_eq!(rule, 0);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// DESIGN: "Policies are additive (union). There is no deny rule." A default-deny policy
/// beside an allow policy does not take anything away.
#[test]
fn c09_deny_all_plus_allow_is_allow() {
    let c = base()
        .policy(policy("prod", "deny-all").ingress_section())
        .policy(
            policy("prod", "allow-db")
                .select(&[("app", "db")])
                .ingress(rule().pods(&[("app", "web")]).named_port(TCP, "postgres")),
        )
        .build();
    check(&c, tcp(WEB, DB, 5432), Allow);
    check(&c, tcp(CLIENT, DB, 5432), DenyIngress);
    check(&c, tcp(DB, WEB, 8080), DenyIngress);
}

/// API podSelector: "Selects the pods to which this NetworkPolicy object applies" - within the
/// policy's namespace only (a NetworkPolicy is namespaced).
#[test]
fn c10_policy_selects_only_in_its_own_namespace() {
    let c = base()
        .policy(
            policy("dev", "deny-web")
                .select(&[("app", "web")])
                .ingress_section(),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(CLIENT, DEV_WEB, 8081), DenyIngress);
}

/// API podSelector: "An empty podSelector matches all pods in this namespace."
#[test]
fn c11_empty_pod_selector_selects_whole_namespace() {
    let c = base()
        .policy(policy("prod", "deny").ingress_section())
        .build();
    for dst in [WEB, CLIENT, DB] {
        check(&c, tcp(DEV_CLIENT, dst, 80), DenyIngress);
    }
    check(&c, tcp(WEB, DEV_WEB, 8081), Allow);
}

// ---------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------

/// API NetworkPolicyPeer.podSelector: "If namespaceSelector is also set, then the
/// NetworkPolicyPeer as a whole selects the pods matching podSelector in the Namespaces
/// selected by NamespaceSelector" - one peer with both selectors is an AND.
#[test]
fn c12_pod_and_namespace_selector_in_one_peer_is_and() {
    let c = base()
        .policy(
            policy("prod", "db-in")
                .select(&[("app", "db")])
                .ingress(rule().pods_in(&[("team", "b")], &[("app", "client")])),
        )
        .build();
    check(&c, tcp(DEV_CLIENT, DB, 5432), Allow);
    // Right labels, wrong namespace.
    check(&c, tcp(CLIENT, DB, 5432), DenyIngress);
    // Right namespace, wrong labels.
    check(&c, tcp(DEV_WEB, DB, 5432), DenyIngress);
}

/// API NetworkPolicyIngressRule.from: "Items in this list are combined using a logical OR
/// operation." Docs "Behavior of to and from selectors": two entries are an OR.
#[test]
fn c13_two_peers_are_or() {
    let c = base()
        .policy(
            policy("prod", "db-in").select(&[("app", "db")]).ingress(
                rule()
                    .namespaces(&[("team", "b")])
                    .pods(&[("app", "client")]),
            ),
        )
        .build();
    // Any pod of dev (namespace peer).
    check(&c, tcp(DEV_WEB, DB, 5432), Allow);
    check(&c, tcp(DEV_CLIENT, DB, 5432), Allow);
    // Client of the own namespace (pod peer).
    check(&c, tcp(CLIENT, DB, 5432), Allow);
    // Neither.
    check(&c, tcp(WEB, DB, 5432), DenyIngress);
    check(&c, tcp(PROM, DB, 5432), DenyIngress);
}

/// API NetworkPolicyPeer.podSelector: "Otherwise it selects the pods matching podSelector in
/// the policy's own namespace."
#[test]
fn c14_pod_selector_alone_means_own_namespace() {
    let c = base()
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")])),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(DEV_CLIENT, WEB, 8080), DenyIngress);
}

/// API NetworkPolicyPeer.podSelector: "if present but empty, it selects all pods" - of the
/// own namespace when alone.
#[test]
fn c15_empty_pod_selector_peer_is_all_pods_of_own_namespace() {
    let c = base()
        .policy(
            policy("prod", "same-ns")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[])),
        )
        .build();
    check(&c, tcp(DB, WEB, 8080), Allow);
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(DEV_CLIENT, WEB, 8080), DenyIngress);
    check(&c, tcp(EXT, WEB, 8080), DenyIngress);
}

/// API NetworkPolicyPeer.namespaceSelector: "Otherwise it selects all pods in the namespaces
/// selected by namespaceSelector."
#[test]
fn c16_namespace_selector_alone_selects_all_pods_of_those_namespaces() {
    let c = base()
        .policy(
            policy("prod", "from-monitoring")
                .select(&[("app", "web")])
                .ingress(rule().namespaces(&[("purpose", "monitoring")])),
        )
        .build();
    check(&c, tcp(PROM, WEB, 9090), Allow);
    check(&c, tcp(CLIENT, WEB, 9090), DenyIngress);
}

/// API NetworkPolicyPeer.namespaceSelector: "if present but empty, it selects all
/// namespaces" - with a podSelector: those pods in every namespace, but never external IPs.
#[test]
fn c17_empty_namespace_selector_is_all_namespaces() {
    let c = base()
        .policy(
            policy("prod", "clients-anywhere")
                .select(&[("app", "web")])
                .ingress(rule().pods_in(&[], &[("app", "client")])),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(DEV_CLIENT, WEB, 8080), Allow);
    check(&c, tcp(DEV_WEB, WEB, 8080), DenyIngress);
    check(&c, tcp(EXT, WEB, 8080), DenyIngress);
}

/// API ingress: an empty list allows nothing, whereas a rule with no `from` and no `ports`
/// ("If this field is empty or missing, this rule matches all sources" / "all ports") allows
/// everything: `ingress: []` vs `ingress: [{}]`.
#[test]
fn c18_empty_ingress_list_vs_one_empty_rule() {
    let deny = base().policy(deny_web_ingress()).build();
    let allow_all = base()
        .policy(
            policy("prod", "allow-all")
                .select(&[("app", "web")])
                .ingress(rule()),
        )
        .build();
    for f in [
        tcp(CLIENT, WEB, 8080),
        udp(EXT, WEB, 9999),
        sctp(DEV_CLIENT, WEB, 7),
        icmp(EXT, WEB),
        tcp(EXT6, WEB6, 443),
    ] {
        check(&deny, f, DenyIngress);
        check(&allow_all, f, Allow);
    }
}

/// API from: "If this field is empty or missing, this rule matches all sources" - a rule with
/// ports only restricts the port, not the peer.
#[test]
fn c19_empty_from_with_ports_matches_every_source() {
    let c = base()
        .policy(
            policy("prod", "http-from-anywhere")
                .select(&[("app", "web")])
                .ingress(rule().tcp(8080)),
        )
        .build();
    check(&c, tcp(EXT, WEB, 8080), Allow);
    check(&c, tcp(DEV_CLIENT, WEB, 8080), Allow);
    check(&c, tcp(EXT6, WEB6, 8080), Allow);
    check(&c, tcp(EXT, WEB, 8443), DenyIngress);
}

/// API ports: "If this field is empty or missing, this rule matches all ports (traffic not
/// restricted by port)" - every protocol too, ICMP included (DESIGN: the documented choice for
/// traffic NetworkPolicy does not define).
#[test]
fn c20_empty_ports_with_from_matches_every_port_and_protocol() {
    let c = base()
        .policy(
            policy("prod", "client-anything")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")])),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 1), Allow);
    check(&c, udp(CLIENT, WEB, 65535), Allow);
    check(&c, sctp(CLIENT, WEB, 9), Allow);
    check(&c, icmp(CLIENT, WEB), Allow);
    check(&c, icmp(DB, WEB), DenyIngress);
}

// ---------------------------------------------------------------------------------------
// ipBlock
// ---------------------------------------------------------------------------------------

/// API IPBlock: "cidr is a string representing the IPBlock"; "except is a slice of CIDRs that
/// should not be included within an IPBlock". Bounds of both are inclusive.
#[test]
fn c21_ip_block_with_except() {
    let c = base()
        .policy(
            policy("prod", "from-partner")
                .select(&[("app", "web")])
                .ingress(rule().ip_block("203.0.113.0/24", &["203.0.113.128/25"])),
        )
        .build();
    check(&c, tcp("203.0.113.0", WEB, 443), Allow);
    check(&c, tcp("203.0.113.127", WEB, 443), Allow);
    check(&c, tcp("203.0.113.128", WEB, 443), DenyIngress);
    check(&c, tcp("203.0.113.255", WEB, 443), DenyIngress);
    check(&c, tcp("203.0.114.1", WEB, 443), DenyIngress);
}

/// Seed scenario "metadata block": egress to 0.0.0.0/0 except the cloud metadata addresses.
/// API egress `to`: "If this field is present and contains at least one item, this rule allows
/// traffic only if the traffic matches at least one item in the to list."
#[test]
fn c22_egress_ip_block_except_metadata() {
    let c = base()
        .policy(
            policy("prod", "no-metadata")
                .types(&[Direction::Egress])
                .egress(
                    rule().ip_block("0.0.0.0/0", &["169.254.169.254/32", "100.100.100.200/32"]),
                ),
        )
        .build();
    check(&c, tcp(WEB, EXT, 443), Allow);
    check(&c, tcp(WEB, METADATA, 80), DenyEgress);
    check(&c, tcp(WEB, "100.100.100.200", 80), DenyEgress);
    check(&c, tcp(WEB, "100.100.100.201", 80), Allow);
    // The IPv4 block says nothing about IPv6 destinations.
    check(&c, tcp(WEB6, EXT6, 443), DenyEgress);
}

/// DESIGN: "ipBlock also matches pod IPs (upstream e2e tests expect it)". A pod matched by
/// address alone, with no selector naming it.
#[test]
fn c23_ip_block_matches_pod_ips() {
    let c = base()
        .policy(
            policy("prod", "db-from-block")
                .select(&[("app", "db")])
                .ingress(rule().ip_block("10.0.2.0/24", &["10.0.2.2/32"])),
        )
        .build();
    check(&c, tcp(DEV_WEB, DB, 5432), Allow);
    // A pod IP inside `except` is excluded like any address.
    check(&c, tcp(DEV_CLIENT, DB, 5432), DenyIngress);
    check(&c, tcp(WEB, DB, 5432), DenyIngress);
}

/// API IPBlock.cidr: valid examples "192.168.1.0/24" or "2001:db8::/64": a block matches
/// addresses of its own family only; ::/0 matches every IPv6 address, 0.0.0.0/0 no IPv6 one.
#[test]
fn c24_ip_block_family() {
    let v4 = base()
        .policy(
            policy("prod", "v4-only")
                .select(&[("app", "web")])
                .ingress(rule().ip_block("0.0.0.0/0", &[])),
        )
        .build();
    check(&v4, tcp(EXT, WEB, 80), Allow);
    check(&v4, tcp(EXT6, WEB6, 80), DenyIngress);
    let v6 = base()
        .policy(
            policy("prod", "v6-only")
                .select(&[("app", "web")])
                .ingress(rule().ip_block("::/0", &["2001:db8::/120"])),
        )
        .build();
    check(&v6, tcp(EXT, WEB, 80), DenyIngress);
    check(&v6, tcp("2001:db9::1", WEB6, 80), Allow);
    check(&v6, tcp(EXT6, WEB6, 80), DenyIngress);
}

/// DESIGN: "IPv4 and IPv6 (dual stack pods: status.podIPs)". A selector peer matches both
/// addresses of a dual-stack pod; an IPv4 ipBlock covering it matches only its IPv4 traffic.
#[test]
fn c25_dual_stack_pods() {
    let by_selector = base()
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")]).tcp(8080)),
        )
        .build();
    check(&by_selector, tcp(CLIENT, WEB, 8080), Allow);
    check(&by_selector, tcp(CLIENT6, WEB6, 8080), Allow);
    check(&by_selector, tcp(EXT6, WEB6, 8080), DenyIngress);
    let by_block = base()
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().ip_block("10.0.1.0/24", &[])),
        )
        .build();
    check(&by_block, tcp(CLIENT, WEB, 8080), Allow);
    check(&by_block, tcp(CLIENT6, WEB6, 8080), DenyIngress);
}

// ---------------------------------------------------------------------------------------
// Ports and protocols
// ---------------------------------------------------------------------------------------

/// API NetworkPolicyPort.port: "If present, only traffic on the specified protocol AND port
/// will be matched."
#[test]
fn c26_numeric_port() {
    let c = base()
        .policy(
            policy("prod", "web-8080")
                .select(&[("app", "web")])
                .ingress(rule().tcp(8080)),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(CLIENT, WEB, 8081), DenyIngress);
    check(&c, tcp(CLIENT, WEB, 0), DenyIngress);
}

/// API NetworkPolicyPort.protocol: "The protocol (TCP, UDP, or SCTP) which traffic must match.
/// If not specified, this field defaults to TCP." A TCP port never admits UDP on that number.
#[test]
fn c27_port_protocol_must_match() {
    let c = base()
        .policy(
            policy("kube-system", "dns-tcp-only")
                .select(&[("k8s-app", "kube-dns")])
                .ingress(rule().tcp(53)),
        )
        .build();
    check(&c, tcp(WEB, DNS, 53), Allow);
    check(&c, udp(WEB, DNS, 53), DenyIngress);
    check(&c, sctp(WEB, DNS, 53), DenyIngress);
}

/// DESIGN: named ports are "resolved against the container ports of the pod receiving the
/// traffic: the local pod on ingress". Two pods selected by one policy resolve `http` each to
/// its own number (prod/web 8080, dev/web 8081).
#[test]
fn c28_named_port_on_ingress_resolves_on_each_receiver() {
    let c = base()
        .policy(
            policy("prod", "http-in")
                .select(&[("app", "web")])
                .ingress(rule().named_port(TCP, "http")),
        )
        .policy(
            policy("dev", "http-in")
                .select(&[("app", "web")])
                .ingress(rule().named_port(TCP, "http")),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(CLIENT, WEB, 8081), DenyIngress);
    check(&c, tcp(CLIENT, DEV_WEB, 8081), Allow);
    check(&c, tcp(CLIENT, DEV_WEB, 8080), DenyIngress);
}

/// DESIGN: on ingress the named port is resolved on the receiver, never on the sender: the
/// client declares `http` at 9000, which does not open 9000 on the web pod.
#[test]
fn c29_named_port_on_ingress_is_not_resolved_on_sender() {
    let c = base()
        .policy(
            policy("prod", "http-in")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")]).named_port(TCP, "http")),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 9000), DenyIngress);
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
}

/// DESIGN: named ports resolve on "the peer pod on egress". `metrics` is 9090 on web and 9187
/// on db: an egress rule from prom allows each destination its own number only.
#[test]
fn c30_named_port_on_egress_resolves_on_destination() {
    let c = base()
        .policy(
            policy("monitoring", "scrape")
                .select(&[("app", "prometheus")])
                .egress(
                    rule()
                        .namespaces(&[("team", "a")])
                        .named_port(TCP, "metrics"),
                ),
        )
        .build();
    check(&c, tcp(PROM, WEB, 9090), Allow);
    check(&c, tcp(PROM, DB, 9187), Allow);
    check(&c, tcp(PROM, WEB, 9187), DenyEgress);
    check(&c, tcp(PROM, DB, 9090), DenyEgress);
    // client declares no `metrics` port.
    check(&c, tcp(PROM, CLIENT, 9090), DenyEgress);
}

/// API NetworkPolicyPort.port: "This can either be a numerical or named port on a pod" - an
/// address that is not a pod has no named ports, so an egress named port to an ipBlock-only
/// destination matches nothing, while a pod inside the same block with the name matches.
#[test]
fn c31_named_port_to_non_pod_matches_nothing() {
    let c = base()
        .policy(
            policy("prod", "to-any-http")
                .select(&[("app", "client")])
                .types(&[Direction::Egress])
                .egress(rule().ip_block("0.0.0.0/0", &[]).named_port(TCP, "http")),
        )
        .build();
    check(&c, tcp(CLIENT, EXT, 8080), DenyEgress);
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(CLIENT, DEV_WEB, 8081), Allow);
}

/// API NetworkPolicyPort: "only traffic on the specified protocol AND port will be matched"
/// - a named port resolves only against container ports of the same protocol (`dns` is UDP).
#[test]
fn c32_named_port_with_wrong_protocol() {
    let wrong = base()
        .policy(
            policy("kube-system", "dns-in")
                .select(&[("k8s-app", "kube-dns")])
                .ingress(rule().named_port(TCP, "dns")),
        )
        .build();
    check(&wrong, tcp(WEB, DNS, 53), DenyIngress);
    check(&wrong, udp(WEB, DNS, 53), DenyIngress);
    let right = base()
        .policy(
            policy("kube-system", "dns-in")
                .select(&[("k8s-app", "kube-dns")])
                .ingress(rule().named_port(UDP, "dns")),
        )
        .build();
    check(&right, udp(WEB, DNS, 53), Allow);
    check(&right, tcp(WEB, DNS, 53), DenyIngress);
}

/// API NetworkPolicyPort.endPort: "the range of ports from port to endPort if set, inclusive".
#[test]
fn c33_end_port_range_inclusive() {
    let c = base()
        .policy(
            policy("prod", "range")
                .select(&[("app", "web")])
                .ingress(rule().port_range(TCP, 32000, 32768)),
        )
        .build();
    check(&c, tcp(CLIENT, WEB, 31999), DenyIngress);
    check(&c, tcp(CLIENT, WEB, 32000), Allow);
    check(&c, tcp(CLIENT, WEB, 32500), Allow);
    check(&c, tcp(CLIENT, WEB, 32768), Allow);
    check(&c, tcp(CLIENT, WEB, 32769), DenyIngress);
    check(&c, udp(CLIENT, WEB, 32000), DenyIngress);
}

/// API NetworkPolicyPort.port: "If this field is not provided, this matches all port names and
/// numbers" - a protocol-only entry (UDP) admits every UDP port and nothing else.
#[test]
fn c34_protocol_only_rule() {
    let c = base()
        .policy(
            policy("prod", "udp-any")
                .select(&[("app", "web")])
                .ingress(rule().protocol(UDP)),
        )
        .build();
    check(&c, udp(CLIENT, WEB, 1), Allow);
    check(&c, udp(CLIENT, WEB, 65535), Allow);
    check(&c, tcp(CLIENT, WEB, 8080), DenyIngress);
    check(&c, icmp(CLIENT, WEB), DenyIngress);
}

/// API NetworkPolicyPort.protocol: TCP, UDP, or SCTP; SCTP is matched as its own protocol.
#[test]
fn c35_sctp() {
    let c = base()
        .policy(
            policy("prod", "sctp")
                .select(&[("app", "web")])
                .ingress(rule().port(SCTP, 9999))
                .ingress(rule().tcp(7777)),
        )
        .build();
    check(&c, sctp(CLIENT, WEB, 9999), Allow);
    check(&c, tcp(CLIENT, WEB, 9999), DenyIngress);
    check(&c, sctp(CLIENT, WEB, 7777), DenyIngress);
    check(&c, sctp(CLIENT6, WEB6, 9999), Allow);
}

/// Docs: deny-all is "only guaranteed to deny TCP, UDP and SCTP connections. For other
/// protocols, such as ARP or ICMP, the behaviour is undefined." DESIGN asks to document the
/// choice; ours (eval::spec module docs): on an isolated side only a port-less rule admits
/// ICMP/ICMPv6, a rule listing ports never does.
#[test]
fn c36_icmp_under_portless_and_ported_rules() {
    let portless = base()
        .policy(
            policy("prod", "from-client")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")])),
        )
        .build();
    check(&portless, icmp(CLIENT, WEB), Allow);
    check(&portless, icmp(CLIENT6, WEB6), Allow);
    let ported = base()
        .policy(
            policy("prod", "from-client")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")]).tcp(8080)),
        )
        .build();
    check(&ported, icmp(CLIENT, WEB), DenyIngress);
    check(&ported, icmp(CLIENT6, WEB6), DenyIngress);
    let deny = base().policy(deny_web_ingress()).build();
    check(&deny, icmp(CLIENT, WEB), DenyIngress);
    check(&deny, icmp(WEB, CLIENT), Allow);
}

// ---------------------------------------------------------------------------------------
// Both sides, external endpoints, nodes
// ---------------------------------------------------------------------------------------

/// Docs: "both the egress policy on the source pod and the ingress policy on the destination
/// pod need to allow the connection. If either side does not allow the connection, it will
/// not happen." Same namespace, same node.
#[test]
fn c37_both_sides_must_allow() {
    let egress_web_to_db = policy("prod", "web-out")
        .select(&[("app", "web")])
        .egress(rule().pods(&[("app", "db")]).tcp(5432));
    let ingress_db_from_web = policy("prod", "db-in")
        .select(&[("app", "db")])
        .ingress(rule().pods(&[("app", "web")]).tcp(5432));
    let only_egress = base().policy(egress_web_to_db.clone()).build();
    let only_ingress_deny = base()
        .policy(egress_web_to_db.clone())
        .policy(policy("prod", "db-deny").select(&[("app", "db")]))
        .build();
    let both = base()
        .policy(egress_web_to_db)
        .policy(ingress_db_from_web)
        .build();
    // web's egress policy also isolates web for ingress (default types), irrelevant here.
    check(&only_egress, tcp(WEB, DB, 5432), Allow);
    check(&only_egress, tcp(WEB, DB, 5433), DenyEgress);
    check(&only_ingress_deny, tcp(WEB, DB, 5432), DenyIngress);
    check(&both, tcp(WEB, DB, 5432), Allow);
    check(&both, tcp(CLIENT, DB, 5432), DenyIngress);
    // Enforced on one node: both pods are on n1, both sides still apply.
    check_on(
        &only_ingress_deny,
        Some("n1"),
        tcp(WEB, DB, 5432),
        DenyIngress,
    );
    check_on(&both, Some("n1"), tcp(WEB, DB, 5433), DenyBoth);
}

/// Docs: NetworkPolicy applies to "a connection with a pod on one or both ends": an external
/// source is not enforced; the isolated destination decides alone.
#[test]
fn c38_external_source() {
    let c = base()
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")])),
        )
        .build();
    check(&c, tcp(EXT, WEB, 8080), DenyIngress);
    check(&c, tcp(EXT6, WEB6, 8080), DenyIngress);
    check(&c, tcp(EXT, DB, 5432), Allow);
    let d = spec::evaluate(&c, None, &tcp(EXT, WEB, 8080));
    assert_eq!(d.egress, crate::eval::SideVerdict::NotEnforced);
}

/// Docs egress isolation: "the only allowed connections from the pod are those allowed by the
/// egress list of some NetworkPolicy that applies to the pod for egress" - external
/// destinations included; the non-pod destination has no ingress side.
#[test]
fn c39_external_destination() {
    let c = base()
        .policy(
            policy("prod", "client-out")
                .select(&[("app", "client")])
                .egress(rule().ip_block("203.0.113.0/24", &[]).tcp(443)),
        )
        .build();
    check(&c, tcp(CLIENT, EXT, 443), Allow);
    check(&c, tcp(CLIENT, EXT, 80), DenyEgress);
    check(&c, tcp(CLIENT, "198.51.100.1", 443), DenyEgress);
    check(&c, tcp(CLIENT, WEB, 8080), DenyEgress);
    let d = spec::evaluate(&c, None, &tcp(CLIENT, EXT, 443));
    assert_eq!(d.ingress, crate::eval::SideVerdict::NotEnforced);
}

/// DESIGN: the agent on a node enforces only its pods ("tc programs attached to each pod's
/// host-side veth"). dev/client and dev/web are on n2: n1's agent enforces neither.
#[test]
fn c40_node_local_enforcement() {
    let c = base()
        .policy(policy("dev", "deny-all").types(&[Direction::Ingress, Direction::Egress]))
        .policy(policy("prod", "deny-all").types(&[Direction::Ingress, Direction::Egress]))
        .build();
    // prod/client (n1) -> dev/web (n2).
    let f = tcp(CLIENT, DEV_WEB, 8081);
    check_on(&c, Some("n1"), f, DenyEgress);
    check_on(&c, Some("n2"), f, DenyIngress);
    check_on(&c, None, f, DenyBoth);
    // A node with no pods enforces nothing.
    check_on(&c, Some("n3"), f, Allow);
    check_on(&c, Some("n1"), tcp(DEV_CLIENT, DEV_WEB, 8081), Allow);
}

/// Model (Pod::host_network): hostNetwork pods share the node's address; they are never
/// endpoints nor pod peers. A selector never matches them; an ipBlock matches their address.
/// The hostNetwork pod runs on n2 and dns on n1: the API's "traffic source is the pod's local
/// node" exemption does not apply (the model knows no node addresses; see the report).
#[test]
fn c41_host_network_pod_is_not_a_pod_peer() {
    let c = base()
        .pod(
            "kube-system",
            "node-agent",
            &[("app", "client")],
            "192.168.0.10",
        )
        .host_network()
        .node("n2")
        .policy(
            policy("kube-system", "dns-in")
                .select(&[("k8s-app", "kube-dns")])
                .ingress(rule().pods(&[("app", "client")]))
                .ingress(rule().ip_block("192.168.0.0/24", &[]).udp(53)),
        )
        .policy(policy("kube-system", "deny-all").types(&[Direction::Egress]))
        .build();
    check(&c, tcp("192.168.0.10", DNS, 53), DenyIngress);
    check(&c, udp("192.168.0.10", DNS, 53), Allow);
    // Not enforced itself, although deny-all selects it.
    check(&c, tcp(WEB, "192.168.0.10", 10250), Allow);
}

// ---------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------

/// API LabelSelector.matchExpressions, operator In: the key's value is in the set.
#[test]
fn c42_match_expressions_in() {
    let c = base()
        .policy(policy("prod", "tiers").select_sel(sel_exprs(
            &[],
            vec![req("tier", Operator::In, &["front", "middle"])],
        )))
        .build();
    check(&c, tcp(CLIENT, WEB, 8080), DenyIngress);
    check(&c, tcp(CLIENT, DB, 5432), Allow);
}

/// Labels docs (set-based requirements): "environment notin (frontend) selects all resources
/// with key equal to environment and value distinct than frontend, and all resources without
/// a labels with the environment key" - NotIn matches a missing key.
#[test]
fn c43_match_expressions_not_in_matches_missing_key() {
    let c = base()
        .policy(policy("prod", "not-back").select_sel(sel_exprs(
            &[],
            vec![req("tier", Operator::NotIn, &["back"])],
        )))
        .build();
    // web: tier=front; client: no tier label; db: tier=back.
    check(&c, tcp(DB, WEB, 8080), DenyIngress);
    check(&c, tcp(DB, CLIENT, 9000), DenyIngress);
    check(&c, tcp(WEB, DB, 5432), Allow);
}

/// API LabelSelector.matchExpressions, operators Exists and DoesNotExist (values empty).
#[test]
fn c44_match_expressions_exists_and_does_not_exist() {
    let c = base()
        .policy(
            policy("prod", "db-in")
                .select(&[("app", "db")])
                .ingress(rule().pods_sel(sel_exprs(&[], vec![req("tier", Operator::Exists, &[])]))),
        )
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().pods_sel(sel_exprs(
                    &[],
                    vec![req("tier", Operator::DoesNotExist, &[])],
                ))),
        )
        .build();
    check(&c, tcp(WEB, DB, 5432), Allow);
    check(&c, tcp(CLIENT, DB, 5432), DenyIngress);
    check(&c, tcp(CLIENT, WEB, 8080), Allow);
    check(&c, tcp(DB, WEB, 8080), DenyIngress);
}

/// Docs "Targeting a Namespace by its name": "The Kubernetes control plane sets an immutable
/// label kubernetes.io/metadata.name on all namespaces"; also on namespaces with no other
/// label (kube-system here).
#[test]
fn c45_namespace_selection_by_metadata_name() {
    let c = base()
        .policy(
            policy("prod", "dns-out")
                .types(&[Direction::Egress])
                .egress(
                    rule()
                        .namespaces(&[("kubernetes.io/metadata.name", "kube-system")])
                        .udp(53)
                        .tcp(53),
                ),
        )
        .build();
    check(&c, udp(WEB, DNS, 53), Allow);
    check(&c, tcp(CLIENT, DNS, 53), Allow);
    check(&c, udp(WEB, PROM, 53), DenyEgress);
    check(&c, udp(WEB, EXT, 53), DenyEgress);
}

/// A namespaceSelector on a label that an unlabelled namespace lacks matches none of its pods.
#[test]
fn c46_unlabelled_namespace_not_selected() {
    let c = base()
        .policy(
            policy("prod", "teams")
                .select(&[("app", "web")])
                .ingress(rule().pods_in_sel(
                    sel_exprs(&[], vec![req("team", Operator::Exists, &[])]),
                    sel(&[]),
                )),
        )
        .build();
    check(&c, tcp(DEV_CLIENT, WEB, 8080), Allow);
    check(&c, tcp(LONE, WEB, 8080), DenyIngress);
    check(&c, tcp(DNS, WEB, 8080), DenyIngress);
}

// ---------------------------------------------------------------------------------------
// Validation, seed scenarios
// ---------------------------------------------------------------------------------------

/// Issue 2: "an invalid policy isolates the pods it selects (fail closed)" and "One bad policy
/// never prevents the others from compiling and never opens traffic".
#[test]
fn c47_invalid_policy_fails_closed() {
    let bad = policy("prod", "bad")
        .select(&[("app", "web")])
        .ingress(rule())
        .invalid(
            "spec.ingress[0].ports[0].protocol",
            "unsupported value \"ICMP\"",
        );
    let alone = base().policy(bad.clone()).build();
    check(&alone, tcp(CLIENT, WEB, 8080), DenyIngress);
    check(&alone, tcp(WEB, CLIENT, 9000), DenyEgress);
    check(&alone, tcp(CLIENT, DB, 5432), Allow);
    let with_valid = base()
        .policy(bad)
        .policy(
            policy("prod", "good")
                .select(&[("app", "web")])
                .ingress(rule().pods(&[("app", "client")]).tcp(8080)),
        )
        .build();
    check(&with_valid, tcp(CLIENT, WEB, 8080), Allow);
    check(&with_valid, tcp(CLIENT, WEB, 8081), DenyIngress);
}

/// Seed scenario "tenant namespace isolation": `podSelector: {}` + `from: [podSelector: {}]`
/// admits the own namespace only.
#[test]
fn c48_tenant_namespace_isolation() {
    let c = base()
        .policy(policy("dev", "tenant").ingress(rule().pods(&[])))
        .build();
    check(&c, tcp(DEV_CLIENT, DEV_WEB, 8081), Allow);
    check(&c, tcp(CLIENT, DEV_WEB, 8081), DenyIngress);
    check(&c, tcp(EXT, DEV_WEB, 8081), DenyIngress);
    check(&c, tcp(DEV_WEB, CLIENT, 9000), Allow);
}

/// Seed scenario "default deny in production, allow DNS to kube-system":
/// both DNS protocols must be allowed for resolution over UDP and TCP fallback.
#[test]
fn c49_default_deny_with_dns_allowance() {
    let c = base()
        .policy(policy("prod", "default-deny").types(&[Direction::Ingress, Direction::Egress]))
        .policy(
            policy("prod", "allow-dns")
                .types(&[Direction::Egress])
                .egress(
                    rule()
                        .pods_in(
                            &[("kubernetes.io/metadata.name", "kube-system")],
                            &[("k8s-app", "kube-dns")],
                        )
                        .named_port(UDP, "dns")
                        .named_port(TCP, "dns-tcp"),
                ),
        )
        .build();
    check(&c, udp(WEB, DNS, 53), Allow);
    check(&c, tcp(WEB, DNS, 53), Allow);
    check(&c, udp(WEB, DNS, 5353), DenyEgress);
    check(&c, tcp(WEB, DB, 5432), DenyBoth);
}

/// Docs: "a pod cannot block access to itself" - the packet never leaves the pod.
#[test]
fn c50_pod_to_itself_is_never_blocked() {
    let c = base()
        .policy(policy("prod", "deny-all").types(&[Direction::Ingress, Direction::Egress]))
        .build();
    check(&c, tcp(WEB, WEB, 8080), Allow);
    check(&c, tcp(WEB6, WEB6, 8080), Allow);
}

/// DESIGN: named ports resolve on "the peer pod on egress" - also when that pod runs on
/// another node than the one enforcing (its container ports are still known cluster-wide).
#[test]
fn c51_egress_named_port_to_pod_on_another_node() {
    let c = base()
        .policy(
            policy("prod", "client-out")
                .select(&[("app", "client")])
                .types(&[Direction::Egress])
                .egress(rule().namespaces(&[("team", "b")]).named_port(TCP, "http")),
        )
        .build();
    // prod/client on n1 -> dev/web on n2, whose `http` is 8081.
    check_on(&c, Some("n1"), tcp(CLIENT, DEV_WEB, 8081), Allow);
    check_on(&c, Some("n1"), tcp(CLIENT, DEV_WEB, 8080), DenyEgress);
    // dev/client declares no `http`.
    check_on(&c, Some("n1"), tcp(CLIENT, DEV_CLIENT, 8081), DenyEgress);
}

/// API from: "Items in this list are combined using a logical OR operation" - an address
/// excluded by one peer's `except` is still admitted by another peer that selects its pod.
#[test]
fn c52_except_does_not_subtract_from_other_peers() {
    let c = base()
        .policy(
            policy("prod", "db-in").select(&[("app", "db")]).ingress(
                rule()
                    .ip_block("10.0.0.0/8", &["10.0.1.0/24"])
                    .pods(&[("app", "web")]),
            ),
        )
        .build();
    check(&c, tcp(WEB, DB, 5432), Allow);
    check(&c, tcp(CLIENT, DB, 5432), DenyIngress);
    check(&c, tcp(DEV_CLIENT, DB, 5432), Allow);
}

/// Model (Pod::resolve_named_port): a name is looked up for the port entry's protocol, so the
/// same name may stand for different numbers under TCP and UDP.
#[test]
fn c53_same_port_name_per_protocol() {
    let c = base()
        .pod("prod", "resolver", &[("app", "resolver")], "10.0.1.9")
        .port("dns", 53, UDP)
        .port("dns", 1053, TCP)
        .policy(
            policy("prod", "resolver-in")
                .select(&[("app", "resolver")])
                .ingress(rule().named_port(TCP, "dns")),
        )
        .build();
    check(&c, tcp(WEB, "10.0.1.9", 1053), Allow);
    check(&c, tcp(WEB, "10.0.1.9", 53), DenyIngress);
    check(&c, udp(WEB, "10.0.1.9", 53), DenyIngress);
}

/// DESIGN: ICMP choice (eval::spec module docs) for IPv6 too: ICMPv6 to an isolated pod is
/// admitted by a port-less ipBlock rule covering the source, not by a ported one.
#[test]
fn c54_icmpv6_and_ip_block() {
    let c = base()
        .policy(
            policy("prod", "web-in")
                .select(&[("app", "web")])
                .ingress(rule().ip_block("2001:db8::/32", &[]))
                .ingress(rule().ip_block("::/0", &[]).tcp(443)),
        )
        .build();
    check(&c, icmp(EXT6, WEB6), Allow);
    check(&c, icmp("2001:db9::1", WEB6), DenyIngress);
    check(&c, tcp("2001:db9::1", WEB6, 443), Allow);
}

/// API NetworkPolicyPort.endPort with SCTP and on egress: the range applies to the destination
/// port of the given protocol only.
#[test]
fn c55_egress_sctp_range() {
    let c = base()
        .policy(
            policy("prod", "web-out")
                .select(&[("app", "web")])
                .types(&[Direction::Egress])
                .egress(rule().port_range(SCTP, 3868, 3870)),
        )
        .build();
    check(&c, sctp(WEB, EXT, 3868), Allow);
    check(&c, sctp(WEB, EXT, 3870), Allow);
    check(&c, sctp(WEB, EXT, 3871), DenyEgress);
    check(&c, tcp(WEB, EXT, 3868), DenyEgress);
}

/// The bundled seed scenarios (examples/): both evaluators agree on every pod pair (and a few
/// external addresses) for the ports the scenarios use, for the whole cluster and per node.
#[test]
fn examples_agree_on_every_pair() {
    let loaded =
        crate::source::manifest::load(&[concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let c = loaded.cluster;
    assert!(c.pods.len() >= 9 && c.policies.len() >= 8);
    let mut addrs: Vec<std::net::IpAddr> = c.pods.iter().flat_map(|p| p.ips.clone()).collect();
    for a in [EXT, METADATA, "100.100.100.200", EXT6] {
        addrs.push(ip(a));
    }
    let mut nodes: Vec<Option<&str>> = vec![None];
    nodes.extend(c.pods.iter().filter_map(|p| p.node.as_deref()).map(Some));
    nodes.dedup();
    let probes = [
        (6, 80),
        (6, 443),
        (6, 5432),
        (6, 8080),
        (6, 9090),
        (6, 53),
        (17, 53),
        (132, 9999),
        (1, 0),
    ];
    let mut allowed = 0;
    let mut checked = 0;
    for node in nodes {
        let compiled = compiler::compile(&c, node);
        for &src in &addrs {
            for &dst in &addrs {
                if src == dst || src.is_ipv4() != dst.is_ipv4() {
                    continue;
                }
                for (protocol, port) in probes {
                    let f = Flow {
                        src,
                        dst,
                        protocol,
                        port,
                    };
                    let s = spec::evaluate(&c, node, &f);
                    let p = plan::evaluate(&compiled, &f);
                    assert_eq!(
                        s.allowed(),
                        p.allowed(),
                        "node {node:?}, {f:?}\nspec: {s:#?}\nplan: {p:#?}"
                    );
                    checked += 1;
                    allowed += usize::from(s.allowed());
                }
            }
        }
    }
    // Both verdicts occur (the scenarios neither allow nor deny everything).
    assert!(allowed > 0 && allowed < checked, "{allowed}/{checked}");
}

// ---------------------------------------------------------------------------------------
// Egress to Service virtual addresses (model::Service; DESIGN "Known limitation" resolved
// in the compiler): the egress hook sees the virtual address before kube-proxy's DNAT, so a
// connection to (VIP, protocol, service port) is allowed iff the client's egress allows
// every ready endpoint of that port (endpoint address + target port); the ingress side is
// enforced post-DNAT by the endpoint itself.
// ---------------------------------------------------------------------------------------

mod services {
    use std::net::IpAddr;

    use super::*;
    use crate::eval::{ServiceTarget, SideVerdict};
    use crate::model::NAMESPACE_NAME_LABEL;

    const DNS_VIP: &str = "10.96.0.10";
    const WEB_VIP: &str = "10.96.0.1";
    const WEB_VIP6: &str = "fd00:96::1";
    const EMPTY_VIP: &str = "10.96.0.20";
    const EXT_VIP: &str = "10.96.0.30";
    const WEB2: &str = "10.0.1.4";

    /// The base cluster plus prod/web2 (app=web, `http` = 8081: the named targetPort
    /// resolves differently per endpoint) and Services: kube-system/kube-dns (selector, named
    /// targetPorts), prod/web (dual stack, selector app=web, targetPort `http`), prod/empty
    /// (no endpoints), prod/external (manual endpoints outside the cluster).
    fn svc_base() -> ClusterBuilder {
        base()
            .pod("prod", "web2", &[("app", "web")], WEB2)
            .port("http", 8081, TCP)
            .node("n1")
            .service("kube-system", "kube-dns", &[DNS_VIP])
            .svc_port("dns", UDP, 53, Target::Name("dns".into()))
            .svc_port("dns-tcp", TCP, 53, Target::Name("dns-tcp".into()))
            .svc_selector(&[("k8s-app", "kube-dns")])
            .service("prod", "web", &[WEB_VIP, WEB_VIP6])
            .svc_port("", TCP, 80, Target::Name("http".into()))
            .svc_selector(&[("app", "web")])
            .service("prod", "empty", &[EMPTY_VIP])
            .svc_port("", TCP, 80, Target::Num(8080))
            .service("prod", "external", &[EXT_VIP])
            .svc_port("https", TCP, 443, Target::Num(8443))
            .svc_endpoint("192.0.2.10", &[("https", TCP, 8443)])
            .svc_endpoint("192.0.2.11", &[("https", TCP, 8443)])
    }

    /// Both evaluators return exactly `want` for the egress side and NotEnforced for the
    /// ingress side (the virtual address is no pod).
    #[track_caller]
    fn check_vip(c: &Cluster, node: Option<&str>, f: Flow, want: SideVerdict) {
        let s = spec::evaluate(c, node, &f);
        let p = plan::evaluate(&compiler::compile(c, node), &f);
        assert_eq!(s.egress, want, "spec evaluator, {f:?}");
        assert_eq!(s.ingress, SideVerdict::NotEnforced, "spec evaluator, {f:?}");
        assert_eq!(p, s, "plan evaluator disagrees with the spec on {f:?}");
    }

    fn refs(names: &[&str]) -> Vec<PolicyRef> {
        names
            .iter()
            .map(|k| {
                let (ns, name) = k.split_once('/').unwrap();
                PolicyRef {
                    namespace: ns.into(),
                    name: name.into(),
                }
            })
            .collect()
    }

    fn allowed(isolated_by: &[&str], policy: &str, rule: u16) -> SideVerdict {
        SideVerdict::Allowed {
            isolated_by: refs(isolated_by),
            policy: refs(&[policy]).remove(0),
            rule,
        }
    }

    fn service_denied(
        isolated_by: &[&str],
        service: (&str, &str, &str, Protocol, u16),
        backends: usize,
        denied: &[(&str, u16)],
    ) -> SideVerdict {
        SideVerdict::ServiceDenied {
            isolated_by: refs(isolated_by),
            service: ServiceTarget {
                namespace: service.0.into(),
                name: service.1.into(),
                port_name: service.2.into(),
                protocol: service.3,
                port: service.4,
            },
            backends,
            denied: denied.iter().map(|&(a, p)| (ip(a), p)).collect(),
        }
    }

    use crate::model::Protocol;
    use crate::plan::PolicyRef;

    /// The motivating case: "allow DNS to the kube-dns pods" must cover queries sent
    /// to the kube-dns Service address, on both of its ports.
    #[test]
    fn s01_dns_to_kube_dns_vip_allowed_by_pod_selector_rule() {
        let c = svc_base()
            .policy(
                policy("prod", "client-dns")
                    .select(&[("app", "client")])
                    .egress(
                        rule()
                            .pods_in(
                                &[(NAMESPACE_NAME_LABEL, "kube-system")],
                                &[("k8s-app", "kube-dns")],
                            )
                            .udp(53)
                            .tcp(53),
                    ),
            )
            .build();
        let by = ["prod/client-dns"];
        check_vip(
            &c,
            None,
            udp(CLIENT, DNS_VIP, 53),
            allowed(&by, "prod/client-dns", 0),
        );
        check_vip(
            &c,
            None,
            tcp(CLIENT, DNS_VIP, 53),
            allowed(&by, "prod/client-dns", 0),
        );
        check(&c, udp(CLIENT, DNS, 53), Allow);
        // A port the Service does not serve: the VIP is a plain address, no rule allows it.
        let d = spec::evaluate(&c, None, &tcp(CLIENT, DNS_VIP, 80));
        assert_eq!(
            d.egress,
            SideVerdict::Denied {
                isolated_by: refs(&by)
            }
        );
        check(&c, tcp(CLIENT, DNS_VIP, 80), DenyEgress);
        // A client the rule does not cover (prod/db, isolated by its own egress policy)
        // is denied with SERVICE_DENY, naming the kube-dns endpoint it may not reach.
        let locked = svc_base()
            .policy(
                policy("prod", "db-out")
                    .select(&[("app", "db")])
                    .egress(rule().ip_block("198.51.100.0/24", &[])),
            )
            .build();
        let want = service_denied(
            &["prod/db-out"],
            ("kube-system", "kube-dns", "dns", UDP, 53),
            1,
            &[(DNS, 53)],
        );
        assert_eq!(
            want.deny_reason(),
            Some(netward_common::reason::SERVICE_DENY)
        );
        check_vip(&locked, None, udp(DB, DNS_VIP, 53), want);
    }

    /// Some endpoints allowed, some not: kube-proxy may pick a denied one, so the Service
    /// port is denied, naming the denied endpoints.
    #[test]
    fn s02_partially_allowed_service_is_denied() {
        let c = svc_base()
            .policy(
                policy("prod", "client-web")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).tcp(8080)),
            )
            .build();
        let want = service_denied(
            &["prod/client-web"],
            ("prod", "web", "", TCP, 80),
            2,
            &[(WEB2, 8081)],
        );
        check_vip(&c, None, tcp(CLIENT, WEB_VIP, 80), want);
        // Straight to the pods, each as the rule says.
        check(&c, tcp(CLIENT, WEB, 8080), Allow);
        check(&c, tcp(CLIENT, WEB2, 8081), DenyEgress);
    }

    /// A Service port without any ready endpoint: nothing could answer; denied for an
    /// isolated client even by an allow-all egress rule.
    #[test]
    fn s03_service_without_endpoints_is_denied() {
        let c = svc_base()
            .policy(
                policy("prod", "client-all")
                    .select(&[("app", "client")])
                    .egress(rule()),
            )
            .build();
        check_vip(
            &c,
            None,
            tcp(CLIENT, EMPTY_VIP, 80),
            service_denied(&["prod/client-all"], ("prod", "empty", "", TCP, 80), 0, &[]),
        );
        // The other Services' endpoints are all allowed by the allow-all rule.
        check_vip(
            &c,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            allowed(&["prod/client-all"], "prod/client-all", 0),
        );
    }

    /// The Service's targetPort is a name: it resolves on each endpoint pod (web 8080, web2
    /// 8081); an egress rule with the named port resolves on each destination alike.
    #[test]
    fn s04_named_target_port_resolves_per_endpoint() {
        let named = svc_base()
            .policy(
                policy("prod", "client-http")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).named_port(TCP, "http")),
            )
            .build();
        check_vip(
            &named,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            allowed(&["prod/client-http"], "prod/client-http", 0),
        );
        // Numeric rules must cover both resolutions; the attribution is the rule allowing
        // the first endpoint (10.0.1.1:8080).
        let numeric = svc_base()
            .policy(
                policy("prod", "client-ports")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).tcp(8081))
                    .egress(rule().pods(&[("app", "web")]).tcp(8080)),
            )
            .build();
        check_vip(
            &numeric,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            allowed(&["prod/client-ports"], "prod/client-ports", 1),
        );
        // The Service port (80) itself is not what the rules are about.
        let on_80 = svc_base()
            .policy(
                policy("prod", "client-80")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).tcp(80)),
            )
            .build();
        check_vip(
            &on_80,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            service_denied(
                &["prod/client-80"],
                ("prod", "web", "", TCP, 80),
                2,
                &[(WEB, 8080), (WEB2, 8081)],
            ),
        );
    }

    /// Ports and protocols the Service does not serve see the virtual address as a plain
    /// address: ipBlocks containing it decide.
    #[test]
    fn s05_unserved_port_of_a_vip_falls_back_to_ip_block() {
        let c = svc_base()
            .policy(
                policy("prod", "client-svc-range")
                    .select(&[("app", "client")])
                    .egress(rule().ip_block("10.96.0.0/12", &[]).tcp(443))
                    .egress(rule().ip_block("10.96.0.0/12", &[]).tcp(80)),
            )
            .build();
        let by = ["prod/client-svc-range"];
        let d = spec::evaluate(&c, None, &tcp(CLIENT, WEB_VIP, 443));
        assert_eq!(d.egress, allowed(&by, "prod/client-svc-range", 0));
        check(&c, tcp(CLIENT, WEB_VIP, 443), Allow);
        // UDP/80 and ICMP are not served either: plain address, no UDP or portless rule.
        check(&c, udp(CLIENT, WEB_VIP, 80), DenyEgress);
        check(&c, icmp(CLIENT, WEB_VIP), DenyEgress);
        // TCP/80 is served: the ipBlock covering the VIP does not matter, the endpoints do.
        check_vip(
            &c,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            service_denied(
                &by,
                ("prod", "web", "", TCP, 80),
                2,
                &[(WEB, 8080), (WEB2, 8081)],
            ),
        );
    }

    /// A client no egress policy isolates may connect to any Service port, endpoints or not;
    /// a client on another node is not enforced here.
    #[test]
    fn s06_not_isolated_or_not_local_client() {
        let c = svc_base()
            .policy(
                policy("prod", "client-none")
                    .select(&[("app", "client")])
                    .types(&[Direction::Egress]),
            )
            .build();
        check_vip(&c, None, tcp(LONE, EMPTY_VIP, 80), SideVerdict::NotIsolated);
        check_vip(
            &c,
            None,
            tcp(DEV_CLIENT, WEB_VIP, 80),
            SideVerdict::NotIsolated,
        );
        // prod/client is isolated but runs on n1: the Plan for n2 does not enforce it.
        check_vip(
            &c,
            Some("n2"),
            tcp(CLIENT, WEB_VIP, 80),
            SideVerdict::NotEnforced,
        );
        check_vip(
            &c,
            Some("n1"),
            tcp(CLIENT, WEB_VIP, 80),
            service_denied(
                &["prod/client-none"],
                ("prod", "web", "", TCP, 80),
                2,
                &[(WEB, 8080), (WEB2, 8081)],
            ),
        );
    }

    /// Endpoints that are not pods (manual EndpointSlices) are matched by ipBlock on their
    /// address and target port; selectors never match them.
    #[test]
    fn s07_non_pod_endpoints_by_ip_block() {
        let all = svc_base()
            .policy(
                policy("prod", "client-ext")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[]).namespaces(&[]))
                    .egress(rule().ip_block("192.0.2.0/24", &[]).tcp(8443)),
            )
            .build();
        check_vip(
            &all,
            None,
            tcp(CLIENT, EXT_VIP, 443),
            allowed(&["prod/client-ext"], "prod/client-ext", 1),
        );
        let one = svc_base()
            .policy(
                policy("prod", "client-ext")
                    .select(&[("app", "client")])
                    .egress(rule().ip_block("192.0.2.10/32", &[]).tcp(8443)),
            )
            .build();
        check_vip(
            &one,
            None,
            tcp(CLIENT, EXT_VIP, 443),
            service_denied(
                &["prod/client-ext"],
                ("prod", "external", "https", TCP, 443),
                2,
                &[("192.0.2.11", 8443)],
            ),
        );
    }

    /// A dual-stack Service: kube-proxy rewrites a virtual address only to endpoints of its
    /// own family, so each family is decided on its own endpoints.
    #[test]
    fn s08_dual_stack_vips_use_their_family_endpoints() {
        let v4_only = svc_base()
            .policy(
                policy("prod", "client-v4")
                    .select(&[("app", "client")])
                    .egress(rule().ip_block("10.0.0.0/8", &[])),
            )
            .build();
        let by = ["prod/client-v4"];
        check_vip(
            &v4_only,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            allowed(&by, "prod/client-v4", 0),
        );
        check_vip(
            &v4_only,
            None,
            tcp(CLIENT6, WEB_VIP6, 80),
            service_denied(&by, ("prod", "web", "", TCP, 80), 1, &[(WEB6, 8080)]),
        );
        // web2 has no IPv6 address: only web's serves the v6 VIP.
        let web_8080 = svc_base()
            .policy(
                policy("prod", "client-web")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "web")]).tcp(8080)),
            )
            .build();
        let by = ["prod/client-web"];
        check_vip(
            &web_8080,
            None,
            tcp(CLIENT6, WEB_VIP6, 80),
            allowed(&by, "prod/client-web", 0),
        );
        check_vip(
            &web_8080,
            None,
            tcp(CLIENT, WEB_VIP, 80),
            service_denied(&by, ("prod", "web", "", TCP, 80), 2, &[(WEB2, 8081)]),
        );
    }

    /// A virtual address equal to a pod address: the pod wins (the address reaches the pod,
    /// whose ingress is enforced), the Service is ignored for it.
    #[test]
    fn s09_vip_colliding_with_a_pod_address_is_the_pod() {
        let c = svc_base()
            .service("prod", "clash", &[DB])
            .svc_port("", TCP, 5432, Target::Num(8080))
            .svc_selector(&[("app", "web")])
            .policy(
                policy("prod", "db-in")
                    .select(&[("app", "db")])
                    .ingress(rule().pods(&[("app", "client")]).tcp(5432)),
            )
            .policy(
                policy("prod", "client-db")
                    .select(&[("app", "client")])
                    .egress(rule().pods(&[("app", "db")]).tcp(5432)),
            )
            .build();
        check(&c, tcp(CLIENT, DB, 5432), Allow);
        check(&c, tcp(WEB, DB, 5432), DenyIngress);
        let plan = compiler::compile(&c, None);
        let db: IpAddr = ip(DB);
        assert_eq!(plan::service_lookup(&plan, db, 6, 5432), None);
        assert!(plan.service_ports.iter().all(|s| s.name != "clash"));
    }

    /// The Plan's Service tables: every (VIP, protocol, port), the VIP ipcache entries keep
    /// their plain class, and SERVICE_POLICY only holds egress-isolated classes.
    #[test]
    fn s10_plan_service_tables() {
        let c = svc_base()
            .policy(
                policy("prod", "client-all")
                    .select(&[("app", "client")])
                    .egress(rule()),
            )
            .policy(deny_web_ingress())
            .build();
        let plan = compiler::compile(&c, None);
        // dns x2, web v4 + v6, empty, external.
        assert_eq!(plan.services.len(), 6);
        assert_eq!(plan.service_ports.len(), 6);
        assert!(plan.services.windows(2).all(|w| w[0].0 < w[1].0));
        for vip in [DNS_VIP, WEB_VIP, WEB_VIP6, EMPTY_VIP, EXT_VIP] {
            let v = plan::ipcache_lookup(&plan, ip(vip)).unwrap();
            assert_eq!(v.flags, netward_common::EP_SERVICE, "{vip}");
            assert_ne!(v.peer_class, 0);
        }
        // One egress-isolated class (client); every Service port but the empty one.
        assert_eq!(plan.service_policy.len(), 5);
        let client_class = plan
            .endpoints
            .iter()
            .find(|e| e.key() == "prod/client")
            .unwrap()
            .subject_class;
        assert!(plan
            .service_policy
            .iter()
            .all(|(k, _)| k.subject == client_class));
        assert_eq!(plan.stats().service_entries, 6);
        // Without Services nothing changes.
        let mut bare = c.clone();
        bare.services.clear();
        let p0 = compiler::compile(&bare, None);
        assert!(p0.services.is_empty() && p0.service_policy.is_empty());
        assert!(p0.ipcache.len() < plan.ipcache.len());
    }
}
