//! `lab up`, `lab down`, `lab status`, `lab exec`: the life of a lab as a whole.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::process::{self, Role};
use super::{services, topology, LabName, LabState};
use crate::model::Cluster;

/// How `lab up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The `netward` executable the background processes run (`lab serve`, `lab daemon`).
    pub exe: PathBuf,
    /// Start the enforcing daemon (false: topology and servers only, nothing enforced).
    pub enforce: bool,
}

/// Bring lab `name` up from `cluster` (loaded from `manifests`). On any error everything
/// made so far is removed again.
pub fn up(
    name: &LabName,
    manifests: &[PathBuf],
    cluster: &Cluster,
    opts: &UpOptions,
) -> Result<LabState> {
    if let Some(existing) = LabState::load(name)? {
        bail!(
            "lab {name} is already up (from {}): run `netward lab down --name {name}` first",
            existing
                .manifests
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let manifests = manifests
        .iter()
        .map(|p| std::path::absolute(p).with_context(|| p.display().to_string()))
        .collect::<Result<Vec<_>>>()?;
    let state = LabState::layout(name, manifests, cluster)?;
    if state.pods.is_empty() {
        bail!("no pod with status.podIP(s) (and not hostNetwork) in the manifests: nothing to build a lab from");
    }
    topology::preflight(&state)?;
    state.save()?;
    let result = (|| {
        topology::create(&state, !opts.enforce)?;
        // kube-proxy's rules; an enforcing daemon keeps them in sync from here.
        services::sync(name, cluster, true)?;
        process::spawn(&opts.exe, Role::Serve, name, &[])?;
        if opts.enforce {
            process::spawn(&opts.exe, Role::Daemon, name, &[])?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = down(name);
        return Err(e);
    }
    Ok(state)
}

/// Remove everything lab `name` made; works from leftovers alone and is idempotent.
pub fn down(name: &LabName) -> Result<()> {
    process::stop(Role::Daemon, name, Duration::from_secs(5))?;
    process::stop(Role::Serve, name, Duration::from_secs(2))?;
    let topo = topology::destroy(name);
    let nat = services::remove(name);
    let pins = remove_pins(&name.pin_dir());
    let dir = name.state_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    topo?;
    nat?;
    pins
}

/// Remove a bpffs pin directory (pins are files; unlinking one drops the kernel's reference,
/// so programs attached through pinned links detach).
fn remove_pins(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing pins {}", dir.display())),
    }
}

/// `lab status` for one lab.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub manifests: Vec<PathBuf>,
    pub pods: Vec<PodStatus>,
    /// Pid of the servers' process, if it runs.
    pub serve: Option<u32>,
    /// Pid of the enforcing daemon, if it runs.
    pub daemon: Option<u32>,
    /// Whether the daemon reported enforcement ready.
    pub enforcing: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct PodStatus {
    pub pod: String,
    pub ips: Vec<std::net::IpAddr>,
    pub netns: String,
    pub host_veth: String,
    /// Whether the netns and the host veth exist.
    pub present: bool,
}

pub fn status(name: &LabName) -> Result<Status> {
    let state = LabState::require(name)?;
    let daemon = process::running(Role::Daemon, name);
    Ok(Status {
        name: name.to_string(),
        manifests: state.manifests.clone(),
        pods: state
            .pods
            .iter()
            .map(|p| PodStatus {
                pod: p.key.clone(),
                ips: p.ips.clone(),
                netns: p.netns.clone(),
                host_veth: p.host_veth.clone(),
                present: super::netns::exists(&p.netns)
                    && Path::new("/sys/class/net").join(&p.host_veth).exists(),
            })
            .collect(),
        serve: process::running(Role::Serve, name),
        daemon,
        enforcing: daemon.is_some() && Role::Daemon.ready_file(name).exists(),
    })
}

/// Run `cmd` inside pod `key`'s network namespace, inheriting stdio.
pub fn exec(name: &LabName, key: &str, cmd: &[String]) -> Result<ExitStatus> {
    let state = LabState::require(name)?;
    let pod = state.pod(key).with_context(|| {
        format!(
            "lab {name} has no pod {key:?} (pods: {})",
            state
                .pods
                .iter()
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let Some((program, args)) = cmd.split_first() else {
        bail!("lab exec: no command given (usage: netward lab exec ns/pod -- CMD ARGS...)");
    };
    Command::new("ip")
        .args(["netns", "exec", &pod.netns, program])
        .args(args)
        .status()
        .with_context(|| format!("running {program} in pod {key}"))
}
