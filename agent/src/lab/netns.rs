//! Entering named network namespaces (`/run/netns/NAME`, as `ip netns add` makes them).
//!
//! A socket belongs to the network namespace its creating thread was in when it was made,
//! and keeps it afterwards. So the lab creates sockets on a thread that entered the pod's
//! namespace, then uses them from anywhere (a tokio runtime in the root namespace included).
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// While alive, the current thread is in another network namespace; dropping it returns.
pub struct Entered {
    home: File,
}

/// Move the current thread into network namespace `name` until the guard drops.
pub fn enter(name: &str) -> Result<Entered> {
    let home = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
    let path = Path::new(NETNS_DIR).join(name);
    let target = File::open(&path)
        .with_context(|| format!("network namespace {name} ({})", path.display()))?;
    setns(&target, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))?;
    Ok(Entered { home })
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Returning can only fail if our own namespace vanished, which a thread's cannot.
        setns(&self.home, CloneFlags::CLONE_NEWNET).expect("returning to own netns");
    }
}

/// Run `f` on a fresh thread inside network namespace `name` and return its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let _in = enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in network namespace panicked"))?
}

/// Whether network namespace `name` exists.
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Every named network namespace whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
