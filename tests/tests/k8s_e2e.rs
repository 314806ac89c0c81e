//! End to end without a cluster: the real agent (watchers, control loop, eBPF datapath,
//! netlink veth discovery) against the test API server, enforcing on a lab node (network
//! namespaces with real servers). Creating, changing and deleting a NetworkPolicy, a pod
//! label or a namespace label changes what real packets do; 410 expiry, an API server
//! restart and a network cut keep enforcement in force. Needs root.
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netward::agent::api::MonitorFilter;
use netward::agent::ebpf::EbpfEnforcer;
use netward::agent::{self, AgentConfig, LoopConfig, Shared};
use netward::datapath::{Datapath, DatapathConfig};
use netward::lab::probe::{probe_pair, Target};
use netward::model::Protocol::Tcp;
use netward_tests::apiserver::objects::{namespace, pod, policy};
use netward_tests::apiserver::ApiServer;
use netward_tests::lab::{cluster, is_root, pod as lab_pod, TestLab};

const NODE: &str = "lab-node";
const WEB: &str = "10.79.0.1";
const CLIENT: &str = "10.79.0.2";
const OTHER: &str = "10.79.1.1";

fn dp_config() -> DatapathConfig {
    DatapathConfig {
        bpffs_dir: format!("/sys/fs/bpf/netward-test-k8s-e2e-{}", std::process::id()).into(),
        ipcache_max: 4096,
        policy_max: 16384,
        conntrack_max: 16384,
        frags_max: 256,
        events_ring_bytes: 64 * 1024,
        fail_closed_unknown: true,
        events_per_sec: 100_000,
        events_burst: 1000,
        events_allow: true,
    }
}

/// Probe `from -> to:80` until it gives `want` (a Plan change takes effect within
/// milliseconds; allow a little for the first attach). Returns how long it took.
async fn expect(lab: &Arc<TestLab>, from: &str, to: &str, want: bool) -> Duration {
    let start = Instant::now();
    loop {
        let (lab2, f, t) = (lab.clone(), from.to_string(), to.to_string());
        let got = tokio::task::spawn_blocking(move || {
            let (fp, tp) = (lab2.pod(&f), lab2.pod(&t));
            let target = Target {
                port: 80,
                protocol: Tcp,
            };
            probe_pair(fp, tp, tp.ips[0], target, Duration::from_millis(300)).unwrap()
        })
        .await
        .unwrap();
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{from} -> {to}:80 is {} but should be {}",
            if got { "allowed" } else { "denied" },
            if want { "allowed" } else { "denied" },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    let dpc = dp_config();
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
    };
    let running = agent::start(&cfg, server.client().unwrap(), enforcer)
        .await
        .unwrap();
    let result = async {
        wait_attached(&running.shared, 3).await;
        expect(&lab, "a/client", "a/web", true).await;
        expect(&lab, "b/other", "a/web", true).await;

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
    }
    .await;
    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
    if let Ok(dp) = Datapath::open_or_create(dpc) {
        let _ = dp.destroy();
    }
    result
}
