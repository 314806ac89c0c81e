//! `lab serve`: the servers on every declared container port of every lab pod.
//!
//! TCP: accept, read one request (up to 1 KiB, 2 s), answer `netward-lab <ns/pod>
//! <port>/TCP\n`, close. UDP: echo every datagram. Sockets bind the wildcard IPv6 address,
//! dual-stack, so one socket answers both families. SCTP has no socket on this kernel: its
//! probes are observed by a raw listener (see [`super::sctp`]).
//!
//! One process serves the whole lab: its sockets are created on a thread inside each pod's
//! namespace and then driven by one tokio runtime in the root namespace. It follows the
//! lab's state file, where the daemon records pods added, removed or changed, and reports
//! the state revision it serves in `serve.revision`.
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{netns, process, LabName, LabPod, LabState};
use crate::model::Protocol;

/// The answer of a TCP server: tells the client which pod and port it reached.
pub fn tcp_answer(pod: &str, port: u16) -> String {
    format!("netward-lab {pod} {port}/TCP\n")
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// Bind every TCP and UDP port of `pod`, inside its namespace.
fn bind_pod(pod: &LabPod) -> Result<Vec<(u16, Bound)>> {
    let ports = pod.ports.clone();
    let key = pod.key.clone();
    netns::run_in(&pod.netns, move || {
        let mut v = Vec::new();
        for p in ports {
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, p.port));
            let b = match p.protocol {
                Protocol::Tcp => Bound::Tcp(
                    std::net::TcpListener::bind(addr)
                        .with_context(|| format!("pod {key}: binding {}/TCP", p.port))?,
                ),
                Protocol::Udp => Bound::Udp(
                    std::net::UdpSocket::bind(addr)
                        .with_context(|| format!("pod {key}: binding {}/UDP", p.port))?,
                ),
                Protocol::Sctp => continue,
            };
            v.push((p.port, b));
        }
        Ok(v)
    })
}

/// Path of the revision the servers serve.
pub fn revision_file(name: &LabName) -> PathBuf {
    name.state_dir().join("serve.revision")
}

/// The lab state revision the servers serve (0 when unknown).
pub fn revision(name: &LabName) -> u64 {
    std::fs::read_to_string(revision_file(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The servers of each pod, as served: the pod as it was when bound, and its tasks.
type Served = BTreeMap<String, (LabPod, Vec<JoinHandle<()>>)>;

/// Serve `state`'s pods: stop the servers of pods gone or changed, start those of pods new
/// or changed (a recreated pod has a new namespace: its old sockets are in the dead one).
async fn reconcile(served: &mut Served, state: &LabState) -> Result<()> {
    let stale: Vec<String> = served
        .iter()
        .filter(|(key, (pod, _))| state.pod(key) != Some(pod))
        .map(|(key, _)| key.clone())
        .collect();
    for key in stale {
        let (_, tasks) = served.remove(&key).expect("listed");
        for t in tasks {
            t.abort();
            let _ = t.await; // the listener is dropped (its port free) once this returns
        }
    }
    let mut errors = Vec::new();
    for pod in &state.pods {
        if served.contains_key(&pod.key) {
            continue;
        }
        let bound = match tokio::task::block_in_place(|| bind_pod(pod)) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let mut tasks = Vec::new();
        for (port, b) in bound {
            tasks.push(match b {
                Bound::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let l = tokio::net::TcpListener::from_std(l)?;
                    tokio::spawn(serve_tcp(l, tcp_answer(&pod.key, port)))
                }
                Bound::Udp(s) => {
                    s.set_nonblocking(true)?;
                    tokio::spawn(serve_udp(tokio::net::UdpSocket::from_std(s)?))
                }
            });
        }
        served.insert(pod.key.clone(), (pod.clone(), tasks));
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// Run the servers of lab `name` until killed, following the pods of its state file.
pub fn run(name: &LabName) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Only the state file: this process writes its own revision file next to it.
            if ev.is_ok_and(|e| {
                !e.kind.is_access()
                    && e.paths
                        .iter()
                        .any(|p| p.file_name() == Some(std::ffi::OsStr::new("state.json")))
            }) {
                let _ = tx.send(());
            }
        })?;
        watcher
            .watch(&name.state_dir(), RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", name.state_dir().display()))?;
        let mut served = Served::new();
        let state = LabState::require(name)?;
        // The first time, any failure is fatal: `lab up` reports it.
        reconcile(&mut served, &state).await?;
        std::fs::write(revision_file(name), state.revision.to_string())?;
        info!("lab {name}: servers of {} pods up", served.len());
        process::mark_ready(process::Role::Serve, name)?;
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            while rx.try_recv().is_ok() {}
            let state = match LabState::require(name) {
                Ok(s) => s,
                Err(e) => {
                    warn!("{e:#}");
                    continue;
                }
            };
            if let Err(e) = reconcile(&mut served, &state).await {
                error!("{e:#}");
            }
            std::fs::write(revision_file(name), state.revision.to_string())?;
            info!(
                "lab {name}: revision {}, servers of {} pods",
                state.revision,
                served.len()
            );
        }
        Ok(())
    })
}

async fn serve_tcp(listener: tokio::net::TcpListener, answer: String) {
    loop {
        match listener.accept().await {
            Ok((mut conn, _)) => {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf));
                    if let Ok(Ok(_)) = read.await {
                        let _ = conn.write_all(answer.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    }
                });
            }
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let _ = socket.send_to(&buf[..n], from).await;
            }
            Err(e) => {
                warn!("udp recv: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
