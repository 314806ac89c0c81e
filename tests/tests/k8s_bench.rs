//! `cargo xtask bench agent`: event-to-enforced latency of the agent with 10k pods in its
//! stores. One pod label changes at a time on the test API server; the clock stops when the
//! agent has installed the resulting Plan (eBPF maps updated when run as root, otherwise
//! the Plan computed). Ignored in normal test runs; run in release by the xtask.
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use netward::agent::ebpf::EbpfEnforcer;
use netward::agent::{self, AgentConfig, Enforcer, LoopConfig, PlanOnly};
use netward::datapath::{Datapath, DatapathConfig};
use netward_tests::apiserver::objects::{namespace, pod, policy};
use netward_tests::apiserver::ApiServer;

const NODE: &str = "bench-node";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "benchmark: cargo xtask bench agent"]
fn agent_event_to_enforced_latency() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = netward_tests::lab::is_root();
    let pods = env_usize("BENCH_PODS", 10_000);
    let rounds = env_usize("BENCH_ROUNDS", 30);
    let dpc = DatapathConfig {
        bpffs_dir: format!("/sys/fs/bpf/netward-bench-agent-{}", std::process::id()).into(),
        ipcache_max: 65536,
        policy_max: 262144,
        ..Default::default()
    };
    if root {
        run(
            &rt,
            pods,
            rounds,
            EbpfEnforcer::open(dpc.clone()).expect("datapath"),
            "eBPF maps updated",
        );
        if let Ok(dp) = Datapath::open_or_create(dpc) {
            let _ = dp.destroy();
        }
    } else {
        run(
            &rt,
            pods,
            rounds,
            PlanOnly::default(),
            "Plan computed (not root: no datapath)",
        );
    }
}

fn run<E: Enforcer>(
    rt: &tokio::runtime::Runtime,
    pods: usize,
    rounds: usize,
    enforcer: E,
    what: &str,
) {
    rt.block_on(async {
        let server = ApiServer::start().await.unwrap();
        let namespaces = 100;
        for n in 0..namespaces {
            server
                .apply(&namespace(&format!("ns{n}"), &[("team", &format!("t{}", n % 10))]))
                .unwrap();
            // Per namespace: default deny, web from the same team's frontends, and DNS egress.
            server
                .apply(&policy(&format!(
                    "metadata: {{name: default-deny, namespace: ns{n}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}"
                )))
                .unwrap();
            server
                .apply(&policy(&format!(
                    "metadata: {{name: web, namespace: ns{n}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: frontend}}}}}}], ports: [{{port: http}}]}}]",
                    n % 10
                )))
                .unwrap();
            server
                .apply(&policy(&format!(
                    "metadata: {{name: dns, namespace: ns{n}}}
spec:
  podSelector: {{}}
  egress: [{{to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: dns}}}}}}], ports: [{{port: 53, protocol: UDP}}]}}]"
                )))
                .unwrap();
        }
        let apps = ["web", "frontend", "worker", "db"];
        for i in 0..pods {
            let ns = i % namespaces;
            // About 110 pods on this node (a full node), the rest elsewhere.
            let node = if i % (pods / 110).max(1) == 0 { NODE } else { "elsewhere" };
            let ip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
            server
                .apply(&pod(
                    &format!("ns{ns}/p{i}"),
                    node,
                    &ip,
                    &[("app", apps[(i / namespaces) % apps.len()])],
                    &[("http", 8080)],
                ))
                .unwrap();
        }
        let cfg = AgentConfig {
            node: NODE.into(),
            kubeconfig: None,
            bpffs: "/sys/fs/bpf".into(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            socket: std::env::temp_dir().join(format!("netward-bench-{}.sock", std::process::id())),
            loop_config: LoopConfig::default(),
            plan_only: false,
            map_sizes: Default::default(),
            conntrack_gc_interval: netward::datapath::DEFAULT_CONNTRACK_GC_INTERVAL,
            direct_delivery: true,
        };
        let t0 = Instant::now();
        let running = agent::start(&cfg, server.client().unwrap(), enforcer).await.unwrap();
        let mut rx = running.shared.applied();
        while rx.borrow_and_update().generation == 0 {
            rx.changed().await.unwrap();
        }
        let initial = t0.elapsed();
        let first = running.shared.status();
        if std::env::var("BENCH_DEBUG").is_ok() {
            let plan = rx.borrow().plan.clone().unwrap();
            eprintln!("{:?}\n{:?}", plan.stats(), plan.subject_classes);
        }

        // Toggle one local pod between app=web and app=worker: its ingress rules change.
        let local = (0..pods).step_by((pods / 110).max(1)).next().unwrap();
        let key_ns = format!("ns{}", local % namespaces);
        let name = format!("p{local}");
        let mut latencies = Vec::new();
        let mut agent_latencies = Vec::new();
        let mut compiles = Vec::new();
        let mut converts = Vec::new();
        for r in 0..rounds {
            let app = if r % 2 == 0 { "worker" } else { "web" };
            let before = rx.borrow_and_update().generation;
            let start = Instant::now();
            server
                .update::<Pod>(Some(&key_ns), &name, |p| {
                    p.metadata.labels = Some([("app".to_string(), app.to_string())].into())
                })
                .unwrap();
            loop {
                tokio::time::timeout(Duration::from_secs(30), rx.changed())
                    .await
                    .expect("a new Plan within 30 s")
                    .unwrap();
                if rx.borrow_and_update().generation > before {
                    break;
                }
            }
            latencies.push(start.elapsed());
            let s = running.shared.status();
            agent_latencies.push(Duration::from_secs_f64(s.last_sync_latency_ms.unwrap_or(0.0) / 1e3));
            compiles.push(Duration::from_secs_f64(s.last_compile_ms.unwrap_or(0.0) / 1e3));
            converts.push(Duration::from_secs_f64(s.last_convert_ms.unwrap_or(0.0) / 1e3));
            // Let the maps settle (no back-to-back coalescing).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        latencies.sort();
        agent_latencies.sort();
        compiles.sort();
        converts.sort();
        let p = &first.plan;
        println!("\nagent event-to-enforced latency ({what})");
        println!(
            "stores: {pods} pods, {namespaces} namespaces, {} policies; Plan: {} endpoints, {} ipcache + {} policy entries",
            namespaces * 3,
            p.endpoints,
            p.ipcache_entries,
            p.policy_entries
        );
        println!("initial list + first Plan: {initial:?}");
        let lc = LoopConfig::default();
        println!(
            "debounce: {:?} quiet, {:?} max wait; rounds: {rounds}",
            lc.debounce, lc.max_wait
        );
        println!("{:<44} {:>10} {:>10} {:>10}", "", "p50", "p95", "max");
        for (label, v) in [
            ("API write -> Plan installed (client side)", &latencies),
            ("watch event seen -> maps updated (agent)", &agent_latencies),
            ("  of which: model update from events (agent)", &converts),
            ("  of which: compile (agent)", &compiles),
        ] {
            println!(
                "{label:<44} {:>10.1?} {:>10.1?} {:>10.1?}",
                percentile(v, 0.5),
                percentile(v, 0.95),
                v[v.len() - 1]
            );
        }
        let p95 = percentile(&latencies, 0.95);
        println!(
            "target < 100 ms: {}",
            if p95 < Duration::from_millis(100) { "met (p95)" } else { "NOT met (p95)" }
        );
        drop(running);
        let _ = std::fs::remove_file(&cfg.socket);
    });
}
