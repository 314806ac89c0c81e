//! `lab daemon`: the lab's agent. It enforces the manifests' policies on every lab pod's host
//! veth with the same code as the agent in a cluster: `compiler::compile` (every lab pod is
//! local to this node), then [`Datapath`] map sync and TCX attachment. It watches the
//! manifests and applies edits live, pods included: like a kubelet and CNI plugin next to the
//! agent, it creates the namespace and veth of a pod that appears, removes those of a pod
//! that goes, and recreates a pod whose addresses change (see [`Node::sync`] for the order
//! that keeps every pod enforced meanwhile). It also plays kube-proxy: the Services' virtual
//! addresses are rewritten to their endpoints by nftables rules it keeps in sync
//! ([`services`]).
//!
//! Pins live under the lab's own bpffs directory, so labs never share maps. The daemon
//! leaves everything pinned when it stops: a restarted daemon adopts the pinned maps and
//! links, and enforcement never pauses (`lab down` removes the pins).
//!
//! Progress is visible to tools and tests in the state directory: `daemon.ready` once the
//! first Plan is applied and every veth attached, and `daemon.applied`, the number of syncs
//! that changed something (Plan or pods) by this daemon process so far (a test waits for it
//! to grow after an edit).
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use super::{load_manifests, process, reconcile, services, topology, LabName, LabPod, LabState};
use crate::datapath::{Datapath, DatapathConfig, Verdict};
use crate::model::Cluster;
use crate::plan::Plan;

/// The datapath configuration of lab `name`: its own pin directory, fail closed for local
/// addresses without an endpoint entry.
pub fn datapath_config(name: &LabName) -> DatapathConfig {
    DatapathConfig {
        bpffs_dir: name.pin_dir(),
        ..DatapathConfig::default()
    }
}

/// Path of the apply counter.
pub fn applied_file(name: &LabName) -> PathBuf {
    name.state_dir().join("daemon.applied")
}

/// Plans the current daemon process applied so far (0 when none or not running).
pub fn applied(name: &LabName) -> u64 {
    std::fs::read_to_string(applied_file(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The node as the daemon keeps it: the lab's pods, the datapath enforcing on them, and the
/// last Plan applied.
struct Node {
    state: LabState,
    dp: Datapath,
    last: Option<Plan>,
    /// Nothing loaded by this process yet: load the Service rules even if unchanged.
    fresh: bool,
}

impl Node {
    fn name(&self) -> &LabName {
        &self.state.name
    }

    /// Bring the node to what `cluster` asks for; true when anything changed.
    ///
    /// Order matters for the pods that stay: a removed pod's veth is deleted before the Plan
    /// forgets it (its traffic stops first), a new pod is created closed (host side down),
    /// the Plan that knows it is applied, the programs are attached, and only then is it
    /// connected. Other pods' entries change only through the Plan's atomic switch.
    fn sync(&mut self, cluster: &Cluster) -> Result<bool> {
        let desired = self.state.desired(cluster)?;
        let diff = reconcile::diff(&self.state, &desired);
        for pod in &diff.remove {
            let idx = topology::ifindex(&pod.host_veth).ok();
            if let Err(e) = topology::remove_pod(pod) {
                error!("removing pod {}: {e:#}", pod.key);
            }
            if let Some(idx) = idx {
                if let Err(e) = self.dp.detach_index(idx) {
                    warn!("unpinning the links of pod {}: {e:#}", pod.key);
                }
            }
            info!("pod {} removed", pod.key);
        }
        let mut created = Vec::new();
        let mut failed = Vec::new();
        for pod in &diff.create {
            // Same names as a leftover of a crash mid-sync? They are this lab's: remove.
            let made = topology::preflight_pod(pod)
                .and_then(|()| topology::remove_pod(pod))
                .and_then(|()| topology::create_pod(self.name(), pod));
            match made {
                Ok(()) => created.push(pod.clone()),
                Err(e) => {
                    error!("pod {} not created: {e:#}", pod.key);
                    let _ = topology::remove_pod(pod);
                    failed.push(pod.key.clone());
                }
            }
        }
        let pods_changed = !diff.is_empty();
        if pods_changed {
            let mut next = desired;
            next.pods.retain(|p| !failed.contains(&p.key));
            next.revision = self.state.revision + 1;
            next.save()?;
            self.state = next;
            self.wait_for_servers();
        }

        let plan = crate::compiler::compile(cluster, None);
        let mut plan_changed = false;
        if self.last.as_ref() != Some(&plan) {
            match self.dp.apply(&plan) {
                Ok(r) => {
                    info!(
                        "applied Plan generation {} (+{} -{} ipcache, +{} -{} policy) in {:?}",
                        r.generation,
                        r.ipcache_written,
                        r.ipcache_deleted,
                        r.policy_written,
                        r.policy_deleted,
                        r.duration
                    );
                    self.last = Some(plan);
                    plan_changed = true;
                }
                // New pods below still get their programs: without their endpoints in the
                // maps they fail closed.
                Err(e) => error!("{e}"),
            }
        }
        // kube-proxy's part, after the Plan that knows the Services' endpoints.
        let services_changed = match services::sync(self.name(), cluster, self.fresh) {
            Ok(changed) => {
                self.fresh = false;
                if changed {
                    info!("Service rules: {} Services", cluster.services.len());
                }
                changed
            }
            Err(e) => {
                error!("{e:#}");
                false
            }
        };
        for pod in &created {
            self.open(pod)?;
            info!("pod {} created", pod.key);
        }
        Ok(pods_changed || plan_changed || services_changed)
    }

    /// Enforce on a pod's veth (unless a pinned link already does), then connect it.
    fn open(&mut self, pod: &LabPod) -> Result<()> {
        let attached = self.dp.attached().context("listing pinned links")?;
        if !attached.contains(&topology::ifindex(&pod.host_veth)?) {
            self.dp
                .attach(&pod.host_veth)
                .with_context(|| format!("attaching to {} (pod {})", pod.host_veth, pod.key))?;
        }
        topology::connect_pod(self.name(), pod)
            .with_context(|| format!("connecting pod {}", pod.key))
    }

    /// Wait (bounded) until the servers serve the current revision, so that a pod answers
    /// once the daemon reports the change applied.
    fn wait_for_servers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while process::running(process::Role::Serve, self.name()).is_some()
            && super::serve::revision(self.name()) < self.state.revision
        {
            if Instant::now() > deadline {
                warn!(
                    "the servers did not pick up revision {} within 10 s",
                    self.state.revision
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn load(state: &LabState) -> Result<Cluster> {
    load_manifests(&state.manifests, |line| info!("{line}"))
}

/// The daemon's datapath options (`netward agent`'s, from the environment `lab up` passes on).
pub struct Options {
    pub flow_cache_slots: u32,
    pub conntrack_gc_interval: Duration,
    pub direct_delivery: bool,
}

/// How often the daemon checks whether its veths still qualify for same-node delivery
/// (`Datapath::recheck_direct`), as the agent does on every rescan.
const RECHECK: Duration = Duration::from_secs(2);

/// Run the daemon of lab `name` until killed.
pub fn run(name: &LabName, opts: Options) -> Result<()> {
    let mut state = LabState::require(name)?;
    let cluster = load(&state).context("initial manifests")?;
    let cfg = DatapathConfig {
        flow_cache_slots: opts.flow_cache_slots,
        conntrack_gc_interval: opts.conntrack_gc_interval,
        direct_delivery: opts.direct_delivery,
        ..datapath_config(name)
    };
    let dp = Datapath::open_or_create(cfg).context("loading the datapath")?;
    // A pod of the state that is not (fully) on the machine is made again by the first sync.
    state.pods.retain(|p| {
        let present = super::netns::exists(&p.netns)
            && Path::new("/sys/class/net").join(&p.host_veth).exists();
        if !present {
            warn!(
                "pod {} is missing on this machine: creating it again",
                p.key
            );
        }
        present
    });
    let mut node = Node {
        state,
        dp,
        last: None,
        fresh: true,
    };
    // The Plan first, then the programs, then the routes: a veth never enforces an empty
    // Plan and no pod is reachable before its programs run. A restarted daemon finds its
    // links pinned and already switched to the programs it just loaded (open_or_create).
    node.sync(&cluster).context("initial sync")?;
    if node.last.is_none() {
        anyhow::bail!("the initial Plan could not be applied (see above)");
    }
    for pod in node.state.pods.clone() {
        node.open(&pod)?;
    }
    let mut count = 1u64;
    std::fs::write(applied_file(name), count.to_string())?;
    info!("enforcing on {} veths", node.state.pods.len());
    spawn_event_logger(&node.dp);
    // Expired conntrack entries go, as in the agent (stopped when this returns).
    let _gc = node.dp.spawn_conntrack_gc().unwrap_or_else(|e| {
        warn!("no conntrack sweep: {e:#}");
        None
    });

    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    let manifests = node.state.manifests.clone();
    for path in &manifests {
        watch(&mut watcher, path)?;
    }
    process::mark_ready(process::Role::Daemon, name)?;
    let mut recheck_at = Instant::now() + RECHECK;
    loop {
        let wait = recheck_at.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(()) => {}
            // Look at the veths' tc hooks again, as the agent does every rescan.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = node.dp.recheck_direct() {
                    warn!("checking the veths' tc hooks failed: {e:#}");
                }
                recheck_at = Instant::now() + RECHECK;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Editors write in several steps: settle, then take everything queued.
        std::thread::sleep(Duration::from_millis(150));
        while rx.try_recv().is_ok() {}
        let cluster = match load(&node.state) {
            Ok(c) => c,
            Err(e) => {
                error!("not applied, the previous Plan and pods stay: {e:#}");
                continue;
            }
        };
        match node.sync(&cluster) {
            Ok(false) => {}
            Ok(true) => {
                count += 1;
                std::fs::write(applied_file(name), count.to_string())?;
            }
            Err(e) => error!("{e:#}"),
        }
    }
    Ok(())
}

/// Watch a manifest file or directory. A file is watched through its directory, because
/// editors replace files (write a new one, rename it over the old).
fn watch(watcher: &mut impl Watcher, path: &Path) -> Result<()> {
    let (target, mode) = if path.is_dir() {
        (path.to_path_buf(), RecursiveMode::Recursive)
    } else {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (parent.to_path_buf(), RecursiveMode::NonRecursive)
    };
    watcher
        .watch(&target, mode)
        .with_context(|| format!("watching {}", target.display()))
}

/// Log denied packets (rate-limited by the datapath) to the daemon's log.
fn spawn_event_logger(dp: &Datapath) {
    let mut reader = match dp.events() {
        Ok(r) => r,
        Err(e) => {
            warn!("no verdict events: {e:#}");
            return;
        }
    };
    std::thread::spawn(move || loop {
        match reader.poll(Duration::from_millis(500)) {
            Ok(events) => {
                for e in events.iter().filter(|e| e.verdict == Verdict::Drop) {
                    info!(
                        "denied {} {}:{} -> {}:{} ({}, {}) pod {}",
                        e.protocol,
                        e.src,
                        e.sport,
                        e.dst,
                        e.dport,
                        e.direction,
                        e.reason,
                        e.endpoint.as_deref().unwrap_or("?")
                    );
                }
            }
            Err(e) => {
                warn!("verdict events: {e:#}");
                return;
            }
        }
    });
}
