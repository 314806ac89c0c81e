//! Helpers for lab tests: a lab that is torn down when the test ends (also on panic), pods
//! built in a line, and the `netward` executable the lab's background processes run.
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netward::lab::probe::{self, Target};
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

/// A directory of manifests for a test, removed when dropped.
pub struct ManifestDir {
    pub path: PathBuf,
}

impl ManifestDir {
    pub fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("netward-lab-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating manifest dir");
        ManifestDir { path }
    }

    /// Write (or replace, atomically as editors do) `file` with `yaml`.
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.path.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("writing manifest");
        std::fs::rename(&tmp, self.path.join(file)).expect("renaming manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.path.join(file)).expect("removing manifest");
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// YAML of a Namespace with labels.
pub fn namespace_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{{}}}\n---\n",
        labels
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// YAML of a running Pod: `ns/name`, labels, addresses, ports `(name, port, protocol)`.
pub fn pod_yaml(
    key: &str,
    labels: &[(&str, &str)],
    ips: &[&str],
    ports: &[(&str, u16, &str)],
) -> String {
    let (ns, name) = key.split_once('/').expect("ns/name");
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ports = ports
        .iter()
        .map(|(n, p, proto)| {
            let name = if n.is_empty() {
                String::new()
            } else {
                format!("name: {n}, ")
            };
            format!("{{{name}containerPort: {p}, protocol: {proto}}}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let ip_list = ips
        .iter()
        .map(|i| format!("{{ip: \"{i}\"}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: {ns}\n  name: {name}\n  labels: {{{labels}}}\n\
         spec:\n  containers:\n  - name: c\n    image: x\n    ports: [{ports}]\n\
         status:\n  phase: Running\n  podIP: \"{}\"\n  podIPs: [{ip_list}]\n---\n",
        ips[0]
    )
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

    /// Bring up lab `name` from the manifests in `dir`, enforced by the lab daemon.
    pub fn up_enforced(name: &str, dir: &ManifestDir) -> Result<Self> {
        let files = vec![dir.path.clone()];
        let cluster = netward::lab::load_manifests(&files, |l| eprintln!("{l}"))?;
        Self::up(name, &files, &cluster, true)
    }

    /// Wait until the daemon applied more than `before` Plans (after a manifest edit).
    pub fn wait_applied(&self, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while netward::lab::daemon::applied(&self.name) <= before {
            assert!(
                Instant::now() < deadline,
                "lab {}: edit not applied within 20 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stop the daemon (SIGKILL when `hard`, else SIGTERM) and start a new one; returns once
    /// the new one is enforcing.
    pub fn restart_daemon(&self, hard: bool) -> Result<()> {
        use netward::lab::process::{self, Role};
        if hard {
            process::kill_hard(Role::Daemon, &self.name)?;
        } else {
            process::stop(Role::Daemon, &self.name, Duration::from_secs(5))?;
        }
        process::spawn(&netward_bin(), Role::Daemon, &self.name, &[])?;
        Ok(())
    }

    pub fn applied(&self) -> u64 {
        netward::lab::daemon::applied(&self.name)
    }

    /// Probe one flow `from -> to:port/protocol` (first address family both have).
    pub fn reach(&self, from: &str, to: &str, port: u16, protocol: Protocol) -> bool {
        let (f, t) = (self.pod(from), self.pod(to));
        let dst = t
            .ips
            .iter()
            .copied()
            .find(|d| f.ips.iter().any(|s| s.is_ipv4() == d.is_ipv4()))
            .expect("common family");
        probe::probe_pair(
            f,
            t,
            dst,
            Target { port, protocol },
            Duration::from_millis(700),
        )
        .expect("probe")
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
