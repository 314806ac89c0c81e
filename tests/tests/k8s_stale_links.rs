//! A restarted agent takes over the links pinned by the previous one (enforcement never lapses)
//! and then detaches those on interfaces that are no local pod's veth any more (the pod went
//! away while no agent ran), while the veths of current pods stay attached. Needs root.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netward::agent::ebpf::EbpfEnforcer;
use netward::agent::{self, AgentConfig, LoopConfig};
use netward::datapath::{Datapath, DatapathConfig};
use netward_tests::apiserver::objects::{namespace, pod};
use netward_tests::apiserver::ApiServer;
use netward_tests::lab::is_root;

const NODE: &str = "stale-node";
const POD_IP: &str = "10.76.0.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair whose host side is `name` (both ends in this namespace), deleted on drop.
struct Veth {
    name: String,
}

impl Veth {
    fn new(name: &str) -> Veth {
        let _ = Command::new("ip").args(["link", "del", name]).status();
        ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ]);
        ip(&["link", "set", name, "up"]);
        ip(&["link", "set", &format!("{name}p"), "up"]);
        Veth { name: name.into() }
    }

    fn ifindex(&self) -> u32 {
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// Removes the test's bpffs directory also when the test fails (unpinning detaches).
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pinned links of interface `ifindex` under the datapath's bpffs directory.
fn pins(dir: &Path, ifindex: u32) -> usize {
    std::fs::read_dir(dir.join("links"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{ifindex}_"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether the kernel reports a tc (TCX) program on `dev`.
fn kernel_attached(dev: &str) -> bool {
    let out = Command::new("bpftool")
        .args(["net", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("tcx")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_detaches_links_left_on_interfaces_that_are_no_pod_veth() {
    if !is_root() {
        eprintln!("skipped: needs root (BPF, veths)");
        return;
    }
    let tag = std::process::id() % 100_000;
    let pod_veth = Veth::new(&format!("nwsp{tag}"));
    let stale_veth = Veth::new(&format!("nwss{tag}"));
    ip(&[
        "route",
        "add",
        &format!("{POD_IP}/32"),
        "dev",
        &pod_veth.name,
    ]);

    let dpc = DatapathConfig {
        bpffs_dir: format!("/sys/fs/bpf/netward-test-k8s-stale-{}", std::process::id()).into(),
        ipcache_max: 1024,
        policy_max: 1024,
        conntrack_max: 1024,
        frags_max: 64,
        events_ring_bytes: 16 * 1024,
        ..Default::default()
    };
    let dir = dpc.bpffs_dir.clone();
    let _cleanup = PinDir(dir.clone());
    // The previous agent: both interfaces attached, then it exits (the pins stay).
    {
        let mut dp = Datapath::open_or_create(dpc.clone()).expect("datapath");
        dp.attach(&pod_veth.name).unwrap();
        dp.attach(&stale_veth.name).unwrap();
    }
    assert!(
        pins(&dir, stale_veth.ifindex()) > 0,
        "the previous agent's links are pinned"
    );
    let tcx = kernel_attached(&stale_veth.name);

    let server = ApiServer::start().await.unwrap();
    server.apply(&namespace("a", &[])).unwrap();
    server
        .apply(&pod(
            "a/web",
            NODE,
            POD_IP,
            &[("app", "web")],
            &[("http", 80)],
        ))
        .unwrap();
    let cfg = AgentConfig {
        node: NODE.into(),
        kubeconfig: None,
        bpffs: dir.clone(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        socket: std::env::temp_dir().join(format!("netward-stale-{}.sock", std::process::id())),
        loop_config: LoopConfig {
            debounce: Duration::from_millis(20),
            rescan: Duration::from_millis(200),
            ..Default::default()
        },
        plan_only: false,
        map_sizes: Default::default(),
        conntrack_gc_interval: netward::datapath::DEFAULT_CONNTRACK_GC_INTERVAL,
        direct_delivery: true,
    };
    let enforcer = EbpfEnforcer::open(dpc.clone()).expect("datapath");
    let running = agent::start(&cfg, server.client().unwrap(), enforcer)
        .await
        .unwrap();

    let start = Instant::now();
    while pins(&dir, stale_veth.ifindex()) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stale link on {} was not detached",
            stale_veth.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pins(&dir, pod_veth.ifindex()) > 0,
        "the pod's veth stays attached"
    );
    let status = running.shared.status();
    assert!(
        status
            .endpoints
            .iter()
            .any(|e| e.attached && e.veth.as_deref() == Some(pod_veth.name.as_str())),
        "{:?}",
        status.endpoints
    );
    if tcx {
        assert!(
            !kernel_attached(&stale_veth.name),
            "the kernel link is gone"
        );
        assert!(kernel_attached(&pod_veth.name));
    }

    drop(running);
    let _ = std::fs::remove_file(&cfg.socket);
    if let Ok(dp) = Datapath::open_or_create(dpc) {
        let _ = dp.destroy();
    }
}
