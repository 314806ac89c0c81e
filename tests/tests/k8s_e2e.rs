//! End to end without a cluster: the real agent (watchers, control loop, eBPF datapath,
//! netlink veth discovery) against the test API server, enforcing on a lab node (network
//! namespaces with real servers). Creating, changing and deleting a NetworkPolicy, a pod
//! label or a namespace label changes what real packets do; 410 expiry, an API server
//! restart and a network cut keep enforcement in force; a qdisc added to a pod veth after
//! attaching takes it out of same-node delivery at the next rescan. A Service's virtual
//! address, DNATed by an nftables rule playing kube-proxy, is allowed or denied as its
//! endpoints and the client's egress policy change through the API. Needs root (and `nft` for
//! the Service test).
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netward::agent::api::MonitorFilter;
use netward::agent::ebpf::EbpfEnforcer;
use netward::agent::{self, AgentConfig, LoopConfig, Shared};
use netward::datapath::{Datapath, DatapathConfig};
use netward::lab::probe::{probe_pair, Target};
use netward::model::Protocol::Tcp;
use netward_tests::apiserver::objects::{endpoint_slice, namespace, pod, policy, service};
use netward_tests::apiserver::ApiServer;
use netward_tests::lab::{cluster, is_root, pod as lab_pod, TestLab};

const NODE: &str = "lab-node";
const WEB: &str = "10.79.0.1";
const CLIENT: &str = "10.79.0.2";
const OTHER: &str = "10.79.1.1";

/// `test` keeps the pinned maps of tests running in parallel apart.
fn dp_config(test: &str) -> DatapathConfig {
    DatapathConfig {
        bpffs_dir: format!("/sys/fs/bpf/netward-test-k8s-{test}-{}", std::process::id()).into(),
        ipcache_max: 4096,
        policy_max: 16384,
        conntrack_max: 16384,
        frags_max: 256,
        events_ring_bytes: 64 * 1024,
        fail_closed_unknown: true,
        events_per_sec: 100_000,
        events_burst: 1000,
        events_allow: true,
        // Swept often, so the status shows the live flows within the test.
        conntrack_gc_interval: Duration::from_millis(300),
        direct_delivery: true,
        ..Default::default()
    }
}

/// Probe `from -> to:80` until it gives `want` (a Plan change takes effect within
/// milliseconds; allow a little for the first attach). Returns how long it took.
async fn expect(lab: &Arc<TestLab>, from: &str, to: &str, want: bool) -> Duration {
    expect_at(lab, from, to, None, want).await
}

/// Like [`expect`], to address `dst` (a Service virtual address) instead of `to`'s own.
async fn expect_at(
    lab: &Arc<TestLab>,
    from: &str,
    to: &str,
    dst: Option<&str>,
    want: bool,
) -> Duration {
    let start = Instant::now();
    let dst: Option<std::net::IpAddr> = dst.map(|d| d.parse().unwrap());
    loop {
        let (lab2, f, t) = (lab.clone(), from.to_string(), to.to_string());
        let got = tokio::task::spawn_blocking(move || {
            let (fp, tp) = (lab2.pod(&f), lab2.pod(&t));
            let target = Target {
                port: 80,
                protocol: Tcp,
            };
            let dst = dst.unwrap_or(tp.ips[0]);
            probe_pair(fp, tp, dst, target, Duration::from_millis(300)).unwrap()
        })
        .await
        .unwrap();
        if got == want {
            return start.elapsed();
        }
        let shown = dst.map_or(to.to_string(), |d| d.to_string());
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{from} -> {shown}:80 is {} but should be {}",
            if got { "allowed" } else { "denied" },
            if want { "allowed" } else { "denied" },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the interface `ifname` is marked for same-node delivery in the pinned `POD_VETHS`
/// under `pins` (read as any tool would, from the pin).
fn pod_veth_marked(pins: &std::path::Path, ifname: &str) -> bool {
    let idx: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let map = aya::maps::MapData::from_pin(pins.join("POD_VETHS")).unwrap();
    let words = aya::maps::Array::<_, u64>::try_from(aya::maps::Map::Array(map)).unwrap();
    words.get(&(idx / 64), 0).unwrap() >> (idx % 64) & 1 == 1
}

fn tc_qdisc(args: &[&str]) {
    let out = std::process::Command::new("tc")
        .arg("qdisc")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "tc qdisc {args:?}: {out:?}");
}

async fn wait_attached(shared: &Shared, n: usize) {
    let start = Instant::now();
    loop {
        let s = shared.status();
        if s.ready && s.endpoints.iter().filter(|e| e.attached).count() == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "endpoints not attached: {:?}",
            s.endpoints
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_packets_follow_kubernetes_changes() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    let lab = Arc::new(
        TestLab::up(
            "k8se2e",
            &[],
            &cluster(vec![
                lab_pod("a/web", &[("app", "web")], &[WEB], &[("http", 80, Tcp)]),
                lab_pod(
                    "a/client",
                    &[("app", "client")],
                    &[CLIENT],
                    &[("http", 80, Tcp)],
                ),
                lab_pod(
                    "b/other",
                    &[("app", "other")],
                    &[OTHER],
                    &[("http", 80, Tcp)],
                ),
            ]),
            false,
        )
        .expect("lab up"),
    );
    let server = ApiServer::start().await.unwrap();
    server.apply(&namespace("a", &[])).unwrap();
    server.apply(&namespace("b", &[])).unwrap();
    for (key, ip, app) in [
        ("a/web", WEB, "web"),
        ("a/client", CLIENT, "client"),
        ("b/other", OTHER, "other"),
    ] {
        server
            .apply(&pod(key, NODE, ip, &[("app", app)], &[("http", 80)]))
            .unwrap();
    }

    let dpc = dp_config("e2e");
    let enforcer = EbpfEnforcer::open(dpc.clone()).expect("datapath");
    let cfg = AgentConfig {
        node: NODE.into(),
        kubeconfig: None,
        bpffs: dpc.bpffs_dir.clone(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        socket: std::env::temp_dir().join(format!("netward-e2e-{}.sock", std::process::id())),
        loop_config: LoopConfig {
            debounce: Duration::from_millis(20),
            rescan: Duration::from_millis(250),
            ..Default::default()
        },
        plan_only: false,
        map_sizes: Default::default(),
        conntrack_gc_interval: netward::datapath::DEFAULT_CONNTRACK_GC_INTERVAL,
        direct_delivery: true,
    };
    let running = agent::start(&cfg, server.client().unwrap(), enforcer)
        .await
        .unwrap();
    let result = async {
        wait_attached(&running.shared, 3).await;
        expect(&lab, "a/client", "a/web", true).await;
        expect(&lab, "b/other", "a/web", true).await;

        // Same-node delivery: the agent's rescan sees a qdisc another component adds to a
        // veth after attaching (its filters would be skipped) and unmarks it, and marks it
        // again once the qdisc is gone.
        let veth = lab.pod("a/web").host_veth.clone();
        let marked = |want: bool| {
            let veth = veth.clone();
            let pins = dpc.bpffs_dir.clone();
            async move {
                let start = Instant::now();
                while pod_veth_marked(&pins, &veth) != want {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "{veth}: POD_VETHS mark still {}",
                        !want
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        marked(true).await;
        tc_qdisc(&["add", "dev", &veth, "clsact"]);
        marked(false).await;
        expect(&lab, "a/client", "a/web", true).await;
        tc_qdisc(&["del", "dev", &veth, "clsact"]);
        marked(true).await;

        // A policy: web accepts only app=client.
        server
            .apply(&policy(
                "metadata: {name: web-from-client, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]",
            ))
            .unwrap();
        let t = expect(&lab, "b/other", "a/web", false).await;
        eprintln!("policy created -> other denied after {t:?}");
        expect(&lab, "a/client", "a/web", true).await;

        // monitor: a denied flow is streamed with its pods.
        let socket = cfg.socket.clone();
        let monitor = tokio::spawn(async move {
            let mut got = None;
            let filter = MonitorFilter {
                to: Some("a/web".into()),
                verdict: Some("denied".into()),
                ..Default::default()
            };
            agent::api::monitor(&socket, filter, |e| {
                got = Some(e);
                false
            })
            .await
            .unwrap();
            got.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        expect(&lab, "b/other", "a/web", false).await;
        let event = tokio::time::timeout(Duration::from_secs(10), monitor)
            .await
            .expect("a denied event")
            .unwrap();
        assert_eq!(event.dst_pod.as_deref(), Some("a/web"));
        assert_eq!(event.src_pod.as_deref(), Some("b/other"));
        assert_eq!(event.dport, 80);

        // A pod label change: the client loses access.
        server
            .update::<Pod>(Some("a"), "client", |p| {
                p.metadata.labels = Some([("app".to_string(), "intruder".to_string())].into())
            })
            .unwrap();
        let t = expect(&lab, "a/client", "a/web", false).await;
        eprintln!("pod relabelled -> client denied after {t:?}");

        // A namespace label change: b is admitted through a namespaceSelector.
        server
            .apply(&policy(
                "metadata: {name: web-from-friends, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: friends}}}]}]",
            ))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        expect(&lab, "b/other", "a/web", false).await;
        server
            .update::<Namespace>(None, "b", |n| {
                n.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("team".into(), "friends".into());
            })
            .unwrap();
        let t = expect(&lab, "b/other", "a/web", true).await;
        eprintln!("namespace labelled -> other allowed after {t:?}");

        // Deleting the policies opens web again.
        server
            .delete::<NetworkPolicy>(Some("a"), "web-from-client")
            .unwrap();
        server
            .delete::<NetworkPolicy>(Some("a"), "web-from-friends")
            .unwrap();
        expect(&lab, "a/client", "a/web", true).await;

        // Enforcement survives 410 expiry, an API server restart and a cut.
        server
            .apply(&policy(
                "metadata: {name: deny-all, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress]}",
            ))
            .unwrap();
        expect(&lab, "b/other", "a/web", false).await;
        server.expire();
        tokio::time::sleep(Duration::from_millis(300)).await;
        expect(&lab, "b/other", "a/web", false).await;
        server.restart();
        server.set_down(true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        expect(&lab, "b/other", "a/web", false).await;
        expect(&lab, "a/client", "a/web", false).await;
        server.set_down(false);
        server
            .delete::<NetworkPolicy>(Some("a"), "deny-all")
            .unwrap();
        let t = expect(&lab, "b/other", "a/web", true).await;
        eprintln!("after the cut, deny-all deleted -> allowed after {t:?}");
        let metrics = running.shared.metrics.encode();
        assert!(
            metrics.contains("netward_verdicts_total{verdict=\"denied\"}"),
            "{metrics}"
        );
        // The conntrack sweep counts the live flows (the probes' connections, closing for
        // 10 s) for the status and /metrics.
        let t0 = std::time::Instant::now();
        loop {
            let live = running
                .shared
                .status()
                .maps
                .iter()
                .find(|m| m.map == "conntrack")
                .map(|m| m.entries);
            if live.is_some_and(|n| n > 0) {
                let metrics = running.shared.metrics.encode();
                assert!(metrics.contains("map=\"conntrack\""), "{metrics}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no conntrack fill in the status: {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
    if let Ok(dp) = Datapath::open_or_create(dpc) {
        let _ = dp.destroy();
    }
    result
}

const SVC_WEB: &str = "10.78.0.1";
const SVC_CLIENT: &str = "10.78.0.2";
const SVC_ROGUE: &str = "10.78.0.3";
/// The Service's cluster IP: no interface has it, only the DNAT rule below.
const VIP: &str = "10.78.200.10";

/// An nftables table in this (the node's) namespace playing kube-proxy: `VIP:80` is rewritten
/// to the web pod. Deleted on drop.
struct KubeProxy {
    table: String,
}

impl KubeProxy {
    fn install(vip: &str, backend: &str) -> KubeProxy {
        let table = format!("netward_e2e_kube_proxy_{}", std::process::id());
        let rules = format!(
            "table ip {table} {{\n  chain prerouting {{\n    \
             type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {vip} tcp dport 80 dnat to {backend}:80\n  }}\n}}\n"
        );
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("running nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f failed:\n{rules}");
        KubeProxy { table }
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

/// Egress to a Service virtual address is decided against the Service's endpoints, and follows
/// the API: the client's egress policy allows the web pods only, kube-proxy (nftables) rewrites
/// the VIP to the web pod, and the VIP is allowed iff every ready endpoint is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vip_follows_endpoints_and_policies() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs nft");
        return;
    }
    let lab = Arc::new(
        TestLab::up(
            "k8ssvc",
            &[],
            &cluster(vec![
                lab_pod("a/web", &[("app", "web")], &[SVC_WEB], &[("http", 80, Tcp)]),
                lab_pod(
                    "a/client",
                    &[("app", "client")],
                    &[SVC_CLIENT],
                    &[("http", 80, Tcp)],
                ),
                lab_pod(
                    "a/rogue",
                    &[("app", "rogue")],
                    &[SVC_ROGUE],
                    &[("http", 80, Tcp)],
                ),
            ]),
            false,
        )
        .expect("lab up"),
    );
    let _kube_proxy = KubeProxy::install(VIP, SVC_WEB);
    let server = ApiServer::start().await.unwrap();
    server.apply(&namespace("a", &[])).unwrap();
    for (key, ip, app) in [
        ("a/web", SVC_WEB, "web"),
        ("a/client", SVC_CLIENT, "client"),
        ("a/rogue", SVC_ROGUE, "rogue"),
    ] {
        server
            .apply(&pod(key, NODE, ip, &[("app", app)], &[("http", 80)]))
            .unwrap();
    }
    server
        .apply(&policy(
            "metadata: {name: client-to-web, namespace: a}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]",
        ))
        .unwrap();
    server
        .apply(&service("a/web", VIP, &[("app", "web")], &[("", 80, 80)]))
        .unwrap();
    server
        .apply(&endpoint_slice(
            "a/web-1",
            "web",
            &[(SVC_WEB, true)],
            &[("", 80)],
        ))
        .unwrap();

    let dpc = dp_config("svc");
    let enforcer = EbpfEnforcer::open(dpc.clone()).expect("datapath");
    let cfg = AgentConfig {
        node: NODE.into(),
        kubeconfig: None,
        bpffs: dpc.bpffs_dir.clone(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        socket: std::env::temp_dir().join(format!("netward-e2e-svc-{}.sock", std::process::id())),
        loop_config: LoopConfig {
            debounce: Duration::from_millis(20),
            rescan: Duration::from_millis(250),
            ..Default::default()
        },
        plan_only: false,
        map_sizes: Default::default(),
        conntrack_gc_interval: netward::datapath::DEFAULT_CONNTRACK_GC_INTERVAL,
        direct_delivery: true,
    };
    let running = agent::start(&cfg, server.client().unwrap(), enforcer)
        .await
        .unwrap();
    let result = async {
        wait_attached(&running.shared, 3).await;
        // The policy allows the only endpoint: the VIP works (DNAT, conntrack, the lot).
        expect_at(&lab, "a/client", "a/web", Some(VIP), true).await;
        expect(&lab, "a/client", "a/rogue", false).await;

        // The backend loses the label the policy allows: the VIP is denied too.
        server
            .update::<Pod>(Some("a"), "web", |p| {
                p.metadata.labels = Some([("app".to_string(), "web-v2".to_string())].into())
            })
            .unwrap();
        let t = expect_at(&lab, "a/client", "a/web", Some(VIP), false).await;
        eprintln!("backend relabelled -> VIP denied after {t:?}");
        server
            .update::<Pod>(Some("a"), "web", |p| {
                p.metadata.labels = Some([("app".to_string(), "web".to_string())].into())
            })
            .unwrap();
        let t = expect_at(&lab, "a/client", "a/web", Some(VIP), true).await;
        eprintln!("label restored -> VIP allowed after {t:?}");

        // A ready endpoint the client may not reach: kube-proxy could pick it, so the VIP is
        // denied (even though this DNAT rule still only goes to web).
        server
            .apply(&endpoint_slice(
                "a/web-2",
                "web",
                &[(SVC_ROGUE, true)],
                &[("", 80)],
            ))
            .unwrap();
        let t = expect_at(&lab, "a/client", "a/web", Some(VIP), false).await;
        eprintln!("non-allowed endpoint added -> VIP denied after {t:?}");
        // Not ready: kube-proxy does not use it, and neither does the verdict.
        server
            .apply(&endpoint_slice(
                "a/web-2",
                "web",
                &[(SVC_ROGUE, false)],
                &[("", 80)],
            ))
            .unwrap();
        let t = expect_at(&lab, "a/client", "a/web", Some(VIP), true).await;
        eprintln!("endpoint not ready -> VIP allowed after {t:?}");

        // The Service goes away: its address is nothing the policy allows.
        server.delete::<Service>(Some("a"), "web").unwrap();
        let t = expect_at(&lab, "a/client", "a/web", Some(VIP), false).await;
        eprintln!("Service deleted -> VIP denied after {t:?}");
        server.delete::<EndpointSlice>(Some("a"), "web-2").unwrap();
        server
            .apply(&service("a/web", VIP, &[("app", "web")], &[("", 80, 80)]))
            .unwrap();
        expect_at(&lab, "a/client", "a/web", Some(VIP), true).await;
        // status reports the new watches (refreshed on the rescan tick).
        let start = Instant::now();
        while !running
            .shared
            .status()
            .watches
            .iter()
            .any(|w| w.resource == "endpointslices" && w.objects == 1)
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                running.shared.status().watches
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
    if let Ok(dp) = Datapath::open_or_create(dpc) {
        let _ = dp.destroy();
    }
    result
}
