//! The agent's local control socket (a unix socket under /run/netward/): `netward status`
//! and `netward monitor` talk to the agent on the same node through it.
//!
//! Protocol: the client sends one JSON line, a [`Request`]; the agent answers `status` with
//! one JSON line ([`Status`]) and `monitor` with a stream of JSON lines ([`FlowEvent`]), one
//! per verdict that passes the filter, until the client hangs up.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::control::Shared;
use super::status::{FlowEvent, Status};

/// Where the agent listens by default.
pub const DEFAULT_SOCKET: &str = "/run/netward/agent.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    Monitor(MonitorFilter),
}

/// Which verdict events `monitor` streams. `ns/pod` patterns; a bare `ns/` or `ns` matches
/// every pod of the namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    /// `allowed` or `denied`.
    pub verdict: Option<String>,
    pub port: Option<u16>,
}

fn pod_matches(pattern: &str, pod: Option<&str>) -> bool {
    let Some(pod) = pod else { return false };
    match pattern.split_once('/') {
        Some((ns, "")) => pod.split_once('/').is_some_and(|(pns, _)| pns == ns),
        Some(_) => pod == pattern,
        None => pod.split_once('/').is_some_and(|(pns, _)| pns == pattern),
    }
}

impl MonitorFilter {
    pub fn matches(&self, e: &FlowEvent) -> bool {
        self.from
            .as_deref()
            .is_none_or(|p| pod_matches(p, e.src_pod.as_deref()))
            && self
                .to
                .as_deref()
                .is_none_or(|p| pod_matches(p, e.dst_pod.as_deref()))
            && self.verdict.as_deref().is_none_or(|v| v == e.verdict)
            && self.port.is_none_or(|p| p == e.dport)
    }
}

/// Serve the control socket (replaces a stale socket file).
pub fn serve(path: &Path, shared: Arc<Shared>) -> Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = session(stream, shared).await {
                    tracing::debug!(error = format!("{e:#}"), "control socket session ended");
                }
            });
        }
    }))
}

async fn session(stream: UnixStream, shared: Arc<Shared>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(&line).context("parsing the request")?;
    match request {
        Request::Status => {
            let mut out = serde_json::to_vec(&shared.status())?;
            out.push(b'\n');
            write.write_all(&out).await?;
        }
        Request::Monitor(filter) => {
            let mut rx = shared.events.subscribe();
            loop {
                match rx.recv().await {
                    Ok(e) if filter.matches(&e) => {
                        let mut out = serde_json::to_vec(&e)?;
                        out.push(b'\n');
                        write.write_all(&out).await?;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "monitor client too slow");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

async fn connect(path: &Path, request: &Request) -> Result<BufReader<UnixStream>> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to the agent at {} (is `netward agent` running on this node?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(BufReader::new(stream))
}

/// Ask the agent for its status.
pub async fn status(path: &Path) -> Result<Status> {
    let mut r = connect(path, &Request::Status).await?;
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if line.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    serde_json::from_str(&line).context("parsing the agent's status")
}

/// Stream verdict events from the agent; `f` returns false to stop.
pub async fn monitor(
    path: &Path,
    filter: MonitorFilter,
    mut f: impl FnMut(FlowEvent) -> bool,
) -> Result<()> {
    let mut r = connect(path, &Request::Monitor(filter)).await?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("the agent closed the event stream");
        }
        let e: FlowEvent = serde_json::from_str(&line).context("parsing an event")?;
        if !f(e) {
            return Ok(());
        }
    }
}

/// The default socket path as a PathBuf.
pub fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
