//! `netward agent`: the per-node daemon. It watches the API server ([`crate::k8s`]), compiles
//! a Plan for its node on every change and installs it through the datapath
//! ([`control`]), attaches to local pod veths found from the node's routes ([`routes`]),
//! serves `/healthz`, `/readyz`, `/metrics` ([`http`]) and a local control socket for
//! `netward status` / `netward monitor` ([`api`]).
pub mod api;
pub mod control;
pub mod ebpf;
pub mod enforce;
pub mod http;
pub mod metrics;
pub mod routes;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use control::{Applied, Controller, LoopConfig, Shared};
pub use enforce::{Enforcer, PlanOnly};

/// Everything `netward agent` is configured with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name (spec.nodeName of the pods it enforces).
    pub node: String,
    /// None: `kube::Config::infer` (in-cluster service account, else KUBECONFIG / ~/.kube).
    pub kubeconfig: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub metrics_addr: SocketAddr,
    pub socket: PathBuf,
    pub loop_config: LoopConfig,
    /// Compute Plans without a datapath (nothing is enforced).
    pub plan_only: bool,
    /// Capacities of the maps the agent creates.
    pub map_sizes: crate::datapath::MapSizes,
    /// How often expired conntrack entries are swept (zero: never).
    pub conntrack_gc_interval: std::time::Duration,
    /// Deliver TCP flows between two local pods veth to veth (`DatapathConfig::direct_delivery`).
    pub direct_delivery: bool,
}

/// A kube client from an explicit kubeconfig or the inferred configuration.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Everything the agent runs besides its control loop, for tests that drive the loop.
pub struct Running {
    pub shared: Arc<Shared>,
    pub metrics_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start the watchers, servers and control loop with `enforcer`; returns once all are
/// started (the loop runs in the background).
pub async fn start<E: Enforcer>(
    cfg: &AgentConfig,
    client: kube::Client,
    enforcer: E,
) -> Result<Running> {
    let shared = Shared::new(&cfg.node);
    let (metrics_addr, http_task) = http::serve(cfg.metrics_addr, shared.clone()).await?;
    let api_task = api::serve(&cfg.socket, shared.clone())?;
    let watchers = crate::k8s::Watchers::start(client, kube::runtime::watcher::Config::default());
    let controller = Controller::new(
        &cfg.node,
        watchers,
        enforcer,
        shared.clone(),
        cfg.loop_config.clone(),
    );
    let loop_task = tokio::spawn(async move {
        if let Err(e) = controller.run().await {
            tracing::error!(error = format!("{e:#}"), "control loop ended");
        }
    });
    tracing::info!(node = %cfg.node, metrics = %metrics_addr, socket = %cfg.socket.display(), "agent started");
    Ok(Running {
        shared,
        metrics_addr,
        tasks: vec![http_task, api_task, loop_task],
    })
}

/// Run the agent until interrupted.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let client = kube_client(cfg.kubeconfig.as_deref()).await?;
    let running = if cfg.plan_only {
        start(&cfg, client, PlanOnly::default()).await?
    } else {
        let dp = crate::datapath::DatapathConfig {
            bpffs_dir: cfg.bpffs.clone(),
            conntrack_gc_interval: cfg.conntrack_gc_interval,
            direct_delivery: cfg.direct_delivery,
            ..Default::default()
        }
        .with_sizes(cfg.map_sizes);
        let enforcer = ebpf::EbpfEnforcer::open(dp).context("loading the eBPF datapath")?;
        start(&cfg, client, enforcer).await?
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Maps and links stay pinned: enforcement continues until the next agent takes over.
    tracing::info!("stopping; the pinned datapath keeps enforcing");
    let _ = std::fs::remove_file(&cfg.socket);
    drop(running);
    Ok(())
}
