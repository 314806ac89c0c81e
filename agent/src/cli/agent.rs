//! `netward agent`: run the per-node daemon (see [`crate::agent`]).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::agent::{AgentConfig, LoopConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This node's name; pods with this spec.nodeName are enforced here.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Kubeconfig file; default: in-cluster service account, else KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/netward", env = "NETWARD_BPFFS")]
    pub bpffs: PathBuf,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9964", env = "NETWARD_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Control socket for `netward status` and `netward monitor`.
    #[arg(long, default_value = crate::agent::api::DEFAULT_SOCKET, env = "NETWARD_SOCKET")]
    pub socket: PathBuf,
    /// Quiet period (ms): a recompile starts once no change arrived for this long (and at the
    /// latest 50 ms after the first pending change).
    #[arg(long, default_value_t = 5, env = "NETWARD_DEBOUNCE_MS")]
    pub debounce_ms: u64,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "NETWARD_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Compute and serve Plans without loading the eBPF datapath (nothing is enforced).
    #[arg(long)]
    pub plan_only: bool,
}

/// Install the tracing subscriber (RUST_LOG filters, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn run(args: AgentArgs) -> ExitCode {
    init_logging(args.log_format);
    let cfg = AgentConfig {
        node: args.node,
        kubeconfig: args.kubeconfig,
        bpffs: args.bpffs,
        metrics_addr: args.metrics_addr,
        socket: args.socket,
        loop_config: LoopConfig {
            debounce: std::time::Duration::from_millis(args.debounce_ms),
            ..Default::default()
        },
        plan_only: args.plan_only,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(crate::agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
