//! Helpers for lab tests: a lab that is torn down when the test ends (also on panic), pods
//! built in a line, and the `netward` executable the lab's background processes run.
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use netward::lab::{lifecycle, LabName, LabState};
use netward::model::{Cluster, ContainerPort, Namespace, Pod, Protocol, NAMESPACE_NAME_LABEL};

/// The `netward` binary, built once per test process (`NETWARD_BIN` overrides). A library
/// dependency does not build the package's binary, hence the nested `cargo build`.
pub fn netward_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("NETWARD_BIN") {
            return PathBuf::from(p);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits in the workspace")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "netward", "--bin", "netward"])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building netward failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug/netward")
    })
    .clone()
}

/// Whether this process may build labs (root: namespaces, veths, BPF).
pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// A pod for a test cluster: `ns/name`, labels `k=v,...`, addresses, ports `80/TCP,http=8080/TCP`.
pub fn pod(
    key: &str,
    labels: &[(&str, &str)],
    ips: &[&str],
    ports: &[(&str, u16, Protocol)],
) -> Pod {
    let (namespace, name) = key.split_once('/').expect("ns/name");
    Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: ips
            .iter()
            .map(|i| i.parse::<IpAddr>().expect("ip"))
            .collect(),
        node: None,
        host_network: false,
        ports: ports
            .iter()
            .map(|(n, port, protocol)| ContainerPort {
                name: (!n.is_empty()).then(|| n.to_string()),
                port: *port,
                protocol: *protocol,
            })
            .collect(),
    }
}

/// A cluster of `pods` (namespaces made for them), no policies.
pub fn cluster(mut pods: Vec<Pod>) -> Cluster {
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut c = Cluster::default();
    for p in &pods {
        c.namespaces
            .entry(p.namespace.clone())
            .or_insert_with(|| Namespace {
                name: p.namespace.clone(),
                labels: [(NAMESPACE_NAME_LABEL.to_string(), p.namespace.clone())].into(),
            });
    }
    c.pods = pods;
    c
}

/// A lab that goes down when dropped.
pub struct TestLab {
    pub name: LabName,
    pub state: LabState,
}

impl TestLab {
    /// Bring up lab `name` from `cluster` (its manifests, when the daemon enforces, in
    /// `manifests`). Any leftover of an earlier run of the same test is removed first.
    pub fn up(name: &str, manifests: &[PathBuf], cluster: &Cluster, enforce: bool) -> Result<Self> {
        let name = LabName::new(name)?;
        lifecycle::down(&name).context("cleaning leftovers")?;
        let opts = lifecycle::UpOptions {
            exe: netward_bin(),
            enforce,
        };
        let state = lifecycle::up(&name, manifests, cluster, &opts)?;
        Ok(TestLab { name, state })
    }

    pub fn pod(&self, key: &str) -> &netward::lab::LabPod {
        self.state
            .pod(key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = lifecycle::down(&self.name) {
            eprintln!("lab {} down: {e:#}", self.name);
        }
    }
}
