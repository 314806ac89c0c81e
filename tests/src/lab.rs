//! Helpers for lab tests: a lab that is torn down when the test ends (also on panic), pods
//! built in a line, the `netward` executable the lab's background processes run, and the
//! shared fixture of the enforcing lab tests ([`Scenario`] -> [`LiveLab`]): manifests written
//! to a directory of their own, a lab enforcing them, edits applied and awaited.
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netward::lab::probe::{self, Target};
use netward::lab::{lifecycle, netns, LabName, LabPod, LabState};
use netward::model::{Cluster, ContainerPort, Namespace, Pod, Protocol, NAMESPACE_NAME_LABEL};

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `netward` binary, built once per test process (`NETWARD_BIN` overrides). A library
/// dependency does not build the package's binary, hence the nested `cargo build`.
pub fn netward_bin() -> PathBuf {
    BIN.get_or_init(|| {
        std::env::var("NETWARD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| build_netward(false))
    })
    .clone()
}

/// Make every lab of this process run an optimised `netward` (benchmarks): builds it with
/// `--release` unless `NETWARD_BIN` names one. Call before anything starts a lab.
pub fn use_release_binary() -> PathBuf {
    let bin = std::env::var("NETWARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| build_netward(true));
    assert!(
        BIN.set(bin.clone()).is_ok() || BIN.get() == Some(&bin),
        "a lab already runs another netward binary"
    );
    bin
}

fn build_netward(release: bool) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "netward", "--bin", "netward"])
        .current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building netward failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("netward")
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

/// Skip the calling test (return) unless this process is root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::lab::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// The manifests of an enforcing lab test, built up before the lab exists.
pub struct Scenario {
    test: String,
    dir: ManifestDir,
    pods: String,
}

impl Scenario {
    /// A scenario for lab `test` (also the lab's name; one address range per test).
    pub fn new(test: &str) -> Self {
        Scenario {
            test: test.into(),
            dir: ManifestDir::new(test),
            pods: String::new(),
        }
    }

    pub fn namespace(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        self.pods.push_str(&namespace_yaml(name, labels));
        self
    }

    /// A running pod: `ns/name`, labels, addresses, ports `(name, port, protocol)`.
    pub fn pod(
        mut self,
        key: &str,
        labels: &[(&str, &str)],
        ips: &[&str],
        ports: &[(&str, u16, &str)],
    ) -> Self {
        self.pods.push_str(&pod_yaml(key, labels, ips, ports));
        self
    }

    /// Another manifest file (policies, more pods).
    pub fn file(self, name: &str, yaml: &str) -> Self {
        self.dir.write(name, yaml);
        self
    }

    /// Bring the lab up, enforcing; namespaces and pods go to `pods.yaml`.
    pub fn up(self) -> LiveLab {
        self.dir.write("pods.yaml", &self.pods);
        let lab = TestLab::up_enforced(&self.test, &self.dir).expect("lab up");
        LiveLab { lab, dir: self.dir }
    }
}

/// An enforcing lab and its manifest directory; edits wait until the daemon applied them.
/// Dereferences to the [`TestLab`].
pub struct LiveLab {
    // Dropped in this order: the lab goes down before its manifests go.
    pub lab: TestLab,
    pub dir: ManifestDir,
}

impl std::ops::Deref for LiveLab {
    type Target = TestLab;
    fn deref(&self) -> &TestLab {
        &self.lab
    }
}

impl LiveLab {
    /// Write manifest `file` and wait until the daemon applied the change; the lab's pods
    /// are reloaded from its state (pods may have come or gone).
    pub fn edit(&mut self, file: &str, yaml: &str) {
        let before = self.lab.applied();
        self.dir.write(file, yaml);
        self.settle(before);
    }

    /// Remove manifest `file` and wait until the daemon applied the change.
    pub fn remove(&mut self, file: &str) {
        let before = self.lab.applied();
        self.dir.remove(file);
        self.settle(before);
    }

    fn settle(&mut self, before: u64) {
        self.lab.wait_applied(before);
        self.lab.state = LabState::require(&self.lab.name).expect("lab state");
    }
}

/// A line echo server on `port` inside `pod` (runs until the test process ends).
pub fn echo_server(pod: &LabPod, port: u16) {
    let listener = {
        let _in = netns::enter(&pod.netns).expect("entering the pod");
        TcpListener::bind(("0.0.0.0", port)).expect("binding the echo server")
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = conn.try_clone() else { return };
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A TCP connection from `from` to `to`, None when it does not open within 700 ms.
pub fn connect(from: &LabPod, to: SocketAddr) -> Option<TcpStream> {
    let _in = netns::enter(&from.netns).expect("entering the pod");
    let c = TcpStream::connect_timeout(&to, Duration::from_millis(700)).ok()?;
    c.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    Some(c)
}

/// Send a line on `conn` and whether the same line came back.
pub fn echo(conn: &mut TcpStream, msg: &str) -> bool {
    if writeln!(conn, "{msg}").is_err() {
        return false;
    }
    let Ok(read) = conn.try_clone() else {
        return false;
    };
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).is_ok() && line.trim() == msg
}
