//! The agent's layers above the kernel, driven through the test API server: every change to
//! a NetworkPolicy, a pod label or a namespace label yields the Plan it should, and 410
//! expiry, API server restarts and network cuts never take enforcement away. The Plan is
//! judged with the plan evaluator (the same lookups the eBPF program does).
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netward::agent::{self, AgentConfig, Applied, LoopConfig, PlanOnly};
use netward::eval::{self, Flow};
use netward::plan::Plan;
use netward_tests::apiserver::objects::{endpoint_slice, namespace, pod, policy, service};
use netward_tests::apiserver::ApiServer;
use tokio::sync::watch;

const NODE: &str = "node-1";

fn config(tag: &str) -> AgentConfig {
    static N: AtomicUsize = AtomicUsize::new(0);
    let socket = std::env::temp_dir().join(format!(
        "netward-test-{}-{tag}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    AgentConfig {
        node: NODE.into(),
        kubeconfig: None,
        bpffs: std::env::temp_dir(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        socket,
        loop_config: LoopConfig {
            debounce: Duration::from_millis(20),
            rescan: Duration::from_millis(300),
            ..Default::default()
        },
        plan_only: true,
        map_sizes: Default::default(),
        conntrack_gc_interval: netward::datapath::DEFAULT_CONNTRACK_GC_INTERVAL,
        direct_delivery: true,
    }
}

/// Wait for a Plan newer than `after` that satisfies `check`.
async fn plan_where(
    rx: &mut watch::Receiver<Applied>,
    what: &str,
    check: impl Fn(&Plan) -> bool,
) -> (u64, Arc<Plan>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let a = rx.borrow_and_update();
            if let Some(p) = &a.plan {
                if check(p) {
                    return (a.generation, p.clone());
                }
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            let a = rx.borrow();
            panic!(
                "timed out waiting for a Plan where {what}; last generation {}: {:?}",
                a.generation,
                a.plan.as_ref().map(|p| &p.endpoints)
            );
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allowed(plan: &Plan, src: &str, dst: &str, port: u16) -> bool {
    eval::plan::evaluate(
        plan,
        &Flow {
            src: ip(src),
            dst: ip(dst),
            protocol: 6,
            port,
        },
    )
    .allowed()
}

const WEB: &str = "10.77.0.1";
const CLIENT: &str = "10.77.0.2";
const OTHER: &str = "10.77.1.1"; // in namespace b, on another node

fn seed(server: &ApiServer) {
    server.apply(&namespace("a", &[])).unwrap();
    server.apply(&namespace("b", &[])).unwrap();
    server
        .apply(&pod("a/web", NODE, WEB, &[("app", "web")], &[("http", 80)]))
        .unwrap();
    server
        .apply(&pod("a/client", NODE, CLIENT, &[("app", "client")], &[]))
        .unwrap();
    server
        .apply(&pod("b/other", "node-2", OTHER, &[("app", "other")], &[]))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_follows_policy_pod_and_namespace_changes() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let cfg = config("follow");
    let running = agent::start(&cfg, server.client().unwrap(), PlanOnly::default())
        .await
        .unwrap();
    let mut rx = running.shared.applied();

    // First Plan: both local pods are endpoints, nothing isolated; b/other is remote.
    let (g1, p) = plan_where(&mut rx, "two local endpoints", |p| p.endpoints.len() == 2).await;
    assert!(g1 >= 1);
    let mut eps: Vec<String> = p.endpoints.iter().map(|e| e.key()).collect();
    eps.sort();
    assert_eq!(eps, ["a/client", "a/web"]);
    assert!(allowed(&p, OTHER, WEB, 80));

    // A policy: web accepts only app=client on its named port.
    server
        .apply(&policy(
            "metadata: {name: web-from-client, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]",
        ))
        .unwrap();
    let (_, p) = plan_where(&mut rx, "web isolated for ingress", |p| {
        p.endpoints
            .iter()
            .any(|e| e.name == "web" && e.isolated_ingress)
    })
    .await;
    assert!(allowed(&p, CLIENT, WEB, 80));
    assert!(!allowed(&p, CLIENT, WEB, 81));
    assert!(!allowed(&p, OTHER, WEB, 80));

    // A pod label change: the client loses the label, and with it access.
    server
        .update::<Pod>(Some("a"), "client", |p| {
            p.metadata.labels = Some([("app".to_string(), "intruder".to_string())].into())
        })
        .unwrap();
    let (_, p) = plan_where(&mut rx, "client denied after relabel", |p| {
        !allowed(p, CLIENT, WEB, 80)
    })
    .await;
    assert!(!allowed(&p, OTHER, WEB, 80));

    // A namespace label change: namespace b gets team=friends, which a second policy admits.
    server
        .apply(&policy(
            "metadata: {name: web-from-friends, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: friends}}}]",
        ))
        .unwrap();
    plan_where(&mut rx, "two policies", |p| p.policies.len() == 2).await;
    assert!(!allowed(&rx.borrow().plan.clone().unwrap(), OTHER, WEB, 80));
    server
        .update::<Namespace>(None, "b", |n| {
            n.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("team".into(), "friends".into());
        })
        .unwrap();
    plan_where(&mut rx, "b/other admitted by namespace label", |p| {
        allowed(p, OTHER, WEB, 80)
    })
    .await;

    // Deleting the policies opens web again.
    server
        .delete::<NetworkPolicy>(Some("a"), "web-from-client")
        .unwrap();
    server
        .delete::<NetworkPolicy>(Some("a"), "web-from-friends")
        .unwrap();
    let (_, p) = plan_where(&mut rx, "no isolation", |p| p.policies.is_empty()).await;
    assert!(allowed(&p, CLIENT, WEB, 81));

    // Readiness, metrics and status reflect it.
    let status = agent::api::status(&cfg.socket).await.unwrap();
    assert!(status.ready);
    assert_eq!(status.endpoints.len(), 2);
    assert!(status
        .watches
        .iter()
        .any(|w| w.resource == "pods" && w.objects == 3));
    let metrics = http_get(running.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("netward_sync_latency_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netward_plan_entries{table=\"endpoints\"} 2"),
        "{metrics}"
    );
    assert!(http_get(running.metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_restart_and_cuts_keep_the_plan_and_resume() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    server
        .apply(&policy(
            "metadata: {name: deny-all, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
        ))
        .unwrap();
    let cfg = config("survive");
    let running = agent::start(&cfg, server.client().unwrap(), PlanOnly::default())
        .await
        .unwrap();
    let mut rx = running.shared.applied();
    let (g, p) = plan_where(&mut rx, "deny-all in force", |p| {
        p.endpoints.len() == 2 && p.endpoints.iter().all(|e| e.isolated_ingress)
    })
    .await;
    assert!(!allowed(&p, CLIENT, WEB, 80));

    // 410 on every watch: the agent relists; the same objects give the same Plan, so no new
    // generation is installed (and nothing was ever applied from a partial store).
    server.expire();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while running
        .shared
        .status()
        .watches
        .iter()
        .any(|w| w.restarts == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relist after 410"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rx.borrow().generation,
        g,
        "the relisted objects give the same Plan"
    );
    // An API server restart, then a network cut.
    server.restart();
    server.set_down(true);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        rx.borrow().generation,
        g,
        "nothing applied while the API server is away"
    );
    assert!(running.shared.ready());
    // A change made while the agent cannot see the API server arrives once it is back.
    server
        .delete::<NetworkPolicy>(Some("a"), "deny-all")
        .unwrap();
    server.set_down(false);
    let (g2, p) = plan_where(&mut rx, "deny-all gone after the cut", |p| {
        p.policies.is_empty()
    })
    .await;
    assert!(g2 > g);
    assert!(allowed(&p, CLIENT, WEB, 80));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = running.shared.status();
    assert!(
        status.watches.iter().all(|w| w.errors >= 1),
        "every watch saw the cut: {:?}",
        status.watches
    );
    assert!(status.ready && status.last_error.is_none());
    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

const VIP: &str = "10.77.200.1";

/// Services and EndpointSlices from the API reach the Plan: a connection to the virtual
/// address is allowed iff the client's egress allows every ready endpoint (on its target port),
/// and follows endpoint, readiness and Service changes; an invalid Service fails closed and is
/// reported in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_follows_services_and_endpoint_slices() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    server
        .apply(&policy(
            "metadata: {name: client-to-web, namespace: a}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]",
        ))
        .unwrap();
    // Clients connect to VIP:8080, kube-proxy rewrites it to endpoint:80.
    server
        .apply(&service(
            "a/web",
            VIP,
            &[("app", "web")],
            &[("http", 8080, 80)],
        ))
        .unwrap();
    server
        .apply(&endpoint_slice(
            "a/web-1",
            "web",
            &[(WEB, true)],
            &[("http", 80)],
        ))
        .unwrap();
    let cfg = config("services");
    let running = agent::start(&cfg, server.client().unwrap(), PlanOnly::default())
        .await
        .unwrap();
    let mut rx = running.shared.applied();

    let (_, p) = plan_where(&mut rx, "the VIP allowed", |p| {
        allowed(p, CLIENT, VIP, 8080)
    })
    .await;
    assert!(!p.services.is_empty());
    // Not a port of the Service: the address is nothing the policy allows.
    assert!(!allowed(&p, CLIENT, VIP, 80));

    // A ready endpoint the client may not reach: denied; not ready: allowed again.
    server
        .apply(&endpoint_slice(
            "a/web-2",
            "web",
            &[(OTHER, true)],
            &[("http", 80)],
        ))
        .unwrap();
    plan_where(&mut rx, "the VIP denied (b/other is an endpoint)", |p| {
        !allowed(p, CLIENT, VIP, 8080)
    })
    .await;
    server
        .update::<EndpointSlice>(Some("a"), "web-2", |s| {
            s.endpoints.as_mut().unwrap()[0]
                .conditions
                .as_mut()
                .unwrap()
                .ready = Some(false)
        })
        .unwrap();
    plan_where(&mut rx, "the VIP allowed (b/other not ready)", |p| {
        allowed(p, CLIENT, VIP, 8080)
    })
    .await;

    // The endpoint pod loses the allowed label: denied.
    server
        .update::<Pod>(Some("a"), "web", |p| {
            p.metadata.labels = Some([("app".to_string(), "web-v2".to_string())].into())
        })
        .unwrap();
    plan_where(&mut rx, "the VIP denied (web relabelled)", |p| {
        !allowed(p, CLIENT, VIP, 8080)
    })
    .await;
    server
        .update::<Pod>(Some("a"), "web", |p| {
            p.metadata.labels = Some([("app".to_string(), "web".to_string())].into())
        })
        .unwrap();
    plan_where(&mut rx, "the VIP allowed again", |p| {
        allowed(p, CLIENT, VIP, 8080)
    })
    .await;

    // An invalid edit (a bad port) fails the Service closed and shows in status.
    server
        .update::<Service>(Some("a"), "web", |s| {
            s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("tcp".into())
        })
        .unwrap();
    plan_where(&mut rx, "the VIP denied (invalid Service)", |p| {
        !allowed(p, CLIENT, VIP, 8080)
    })
    .await;
    let status = agent::api::status(&cfg.socket).await.unwrap();
    assert!(
        status
            .service_errors
            .iter()
            .any(|e| e.starts_with("Service a/web: spec.ports[0].protocol: ")),
        "{:?}",
        status.service_errors
    );
    for resource in ["services", "endpointslices"] {
        assert!(
            status.watches.iter().any(|w| w.resource == resource),
            "{:?}",
            status.watches
        );
    }
    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
}
