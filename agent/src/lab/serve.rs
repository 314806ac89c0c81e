//! `lab serve`: the servers on every declared container port of every lab pod.
//!
//! TCP: accept, read one request (up to 1 KiB, 2 s), answer `netward-lab <ns/pod>
//! <port>/TCP\n`, close. UDP: echo every datagram. Sockets bind the wildcard IPv6 address,
//! dual-stack, so one socket answers both families. SCTP has no socket on this kernel: its
//! probes are observed by a raw listener (see [`super::sctp`]).
//!
//! One process serves the whole lab: its sockets are created on a thread inside each pod's
//! namespace and then driven by one tokio runtime in the root namespace.
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::{netns, process, LabName, LabState};
use crate::model::Protocol;

/// The answer of a TCP server: tells the client which pod and port it reached.
pub fn tcp_answer(pod: &str, port: u16) -> String {
    format!("netward-lab {pod} {port}/TCP\n")
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// Bind every port of every pod (inside the pods' namespaces).
fn bind_all(state: &LabState) -> Result<Vec<(String, u16, Bound)>> {
    let mut out = Vec::new();
    for pod in &state.pods {
        let ports = pod.ports.clone();
        let key = pod.key.clone();
        let bound = netns::run_in(&pod.netns, move || {
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
                v.push((key.clone(), p.port, b));
            }
            Ok(v)
        })?;
        out.extend(bound);
    }
    Ok(out)
}

/// Run the servers of lab `name` until killed.
pub fn run(name: &LabName) -> Result<()> {
    let state = LabState::require(name)?;
    let sockets = bind_all(&state)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let count = sockets.len();
        for (pod, port, b) in sockets {
            match b {
                Bound::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let l = tokio::net::TcpListener::from_std(l)?;
                    tokio::spawn(serve_tcp(l, tcp_answer(&pod, port)));
                }
                Bound::Udp(s) => {
                    s.set_nonblocking(true)?;
                    tokio::spawn(serve_udp(tokio::net::UdpSocket::from_std(s)?));
                }
            }
        }
        info!("lab {name}: {count} servers up");
        process::mark_ready(process::Role::Serve, name)?;
        std::future::pending::<Result<()>>().await
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
