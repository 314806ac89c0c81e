//! `lab daemon`: the lab's agent. It enforces the manifests' policies on every lab pod's host
//! veth with the same code as the agent in a cluster: `compiler::compile` (every lab pod is
//! local to this node), then [`Datapath`] map sync and TCX attachment. It watches the
//! manifests and applies edits live.
//!
//! Pins live under the lab's own bpffs directory, so labs never share maps. The daemon
//! leaves everything pinned when it stops: a restarted daemon adopts the pinned maps and
//! links, and enforcement never pauses (`lab down` removes the pins).
//!
//! Progress is visible to tools and tests in the state directory: `daemon.ready` once the
//! first Plan is applied and every veth attached, and `daemon.applied`, the number of Plans
//! applied by this daemon process so far (a test waits for it to grow after an edit).
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use super::{load_manifests, process, LabName, LabState};
use crate::datapath::{Datapath, DatapathConfig, Verdict};
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

fn load_plan(state: &LabState) -> Result<Plan> {
    let cluster = load_manifests(&state.manifests, |line| info!("{line}"))?;
    let pods: Vec<String> = cluster
        .pods
        .iter()
        .filter(|p| !p.host_network && !p.ips.is_empty())
        .map(|p| p.key())
        .collect();
    let lab_pods: Vec<&String> = state.pods.iter().map(|p| &p.key).collect();
    if pods.iter().collect::<Vec<_>>() != lab_pods {
        warn!("the manifests' pods changed: policies follow, but the lab's pods do not (run `lab down` and `lab up` to rebuild them)");
    }
    Ok(crate::compiler::compile(&cluster, None))
}

/// Run the daemon of lab `name` until killed.
pub fn run(name: &LabName) -> Result<()> {
    let state = LabState::require(name)?;
    let plan = load_plan(&state).context("initial manifests")?;
    let mut dp = Datapath::open_or_create(datapath_config(name)).context("loading the datapath")?;
    // The Plan first, then the programs: a veth never enforces an empty Plan.
    let report = dp.apply(&plan).context("applying the initial Plan")?;
    let mut count = 1u64;
    std::fs::write(applied_file(name), count.to_string())?;
    info!(
        "applied Plan generation {} ({} ipcache, {} policy entries)",
        report.generation,
        plan.ipcache.len(),
        plan.policy.len()
    );
    // A restarted daemon finds its links pinned and already switched to the programs it
    // just loaded (open_or_create); attaching those again would be refused.
    let attached = dp.attached().context("listing pinned links")?;
    for pod in &state.pods {
        if attached.contains(&super::topology::ifindex(&pod.host_veth)?) {
            continue;
        }
        dp.attach(&pod.host_veth)
            .with_context(|| format!("attaching to {} (pod {})", pod.host_veth, pod.key))?;
    }
    info!("enforcing on {} veths", state.pods.len());
    spawn_event_logger(&dp);

    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    for path in &state.manifests {
        watch(&mut watcher, path)?;
    }
    process::mark_ready(process::Role::Daemon, name)?;
    let mut last = plan;
    while rx.recv().is_ok() {
        // Editors write in several steps: settle, then take everything queued.
        std::thread::sleep(Duration::from_millis(150));
        while rx.try_recv().is_ok() {}
        let plan = match load_plan(&state) {
            Ok(p) => p,
            Err(e) => {
                error!("not applied, the previous Plan stays in force: {e:#}");
                continue;
            }
        };
        if plan == last {
            continue;
        }
        match dp.apply(&plan) {
            Ok(r) => {
                count += 1;
                std::fs::write(applied_file(name), count.to_string())?;
                info!(
                    "applied Plan generation {} (+{} -{} ipcache, +{} -{} policy) in {:?}",
                    r.generation,
                    r.ipcache_written,
                    r.ipcache_deleted,
                    r.policy_written,
                    r.policy_deleted,
                    r.duration
                );
                last = plan;
            }
            Err(e) => error!("{e}"),
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
