//! `netward agent`: run the per-node daemon (see [`crate::agent`]).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::agent::{AgentConfig, LoopConfig};
use crate::datapath::MapSizes;

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
    /// Seconds between sweeps of expired conntrack entries (0: never). Without them, a busy
    /// node's map fills with closed connections' entries and the LRU makes room by recency,
    /// evicting long-idle live flows first.
    #[arg(
        long,
        default_value_t = crate::datapath::DEFAULT_CONNTRACK_GC_INTERVAL.as_secs(),
        env = "NETWARD_CONNTRACK_GC_INTERVAL"
    )]
    pub conntrack_gc_interval: u64,
    /// Deliver TCP flows between two pods of this node straight from one pod's veth to the
    /// other's, skipping the node's IP stack and netfilter (iptables rules and `conntrack -L`
    /// no longer see them); both pods' policies are enforced either way. `false`: every
    /// packet takes the node's path.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "NETWARD_DIRECT_DELIVERY")]
    pub direct_delivery: bool,
    /// Compute and serve Plans without loading the eBPF datapath (nothing is enforced).
    #[arg(long)]
    pub plan_only: bool,
    #[command(flatten)]
    pub sizes: MapSizeArgs,
}

/// Map capacities (entries) for maps the agent creates; pinned maps of an earlier agent keep
/// theirs. The Plan tables hold the live and the next Plan during a sync: size them for twice
/// the largest Plan. A Plan that does not fit is not installed (the previous one stays in
/// force, the failure is logged and counted in /metrics).
#[derive(Args, Debug)]
pub struct MapSizeArgs {
    /// Ipcache entries (pod addresses, ipBlock pieces, Service addresses).
    #[arg(long, default_value_t = MapSizes::default().ipcache, env = "NETWARD_IPCACHE_MAX")]
    pub ipcache_max: u32,
    /// Policy entries.
    #[arg(long, default_value_t = MapSizes::default().policy, env = "NETWARD_POLICY_MAX")]
    pub policy_max: u32,
    /// Addresses of pods enforced on this node.
    #[arg(long, default_value_t = MapSizes::default().endpoints, env = "NETWARD_ENDPOINTS_MAX")]
    pub endpoints_max: u32,
    /// Tracked connections (LRU: the least recently used go first when full).
    #[arg(long, default_value_t = MapSizes::default().conntrack, env = "NETWARD_CONNTRACK_MAX")]
    pub conntrack_max: u32,
    /// Slots of each CPU's flow cache in front of conntrack (64 bytes each; 0 or a power of
    /// two; 0: off): packets of flows conntrack passed within the last second skip its lookup.
    #[arg(long, default_value_t = MapSizes::default().flow_cache, env = "NETWARD_FLOW_CACHE_SLOTS")]
    pub flow_cache_slots: u32,
    /// Slots of each CPU's decision cache in front of the policy maps (64 bytes each; 0 or a
    /// power of two; 0: off): a new flow whose (direction, pod, peer, protocol, port) was
    /// decided under the current Plan within the last second skips the policy lookups.
    #[arg(
        long,
        default_value_t = MapSizes::default().decision_cache,
        env = "NETWARD_DECISION_CACHE_SLOTS"
    )]
    pub decision_cache_slots: u32,
    /// Service (virtual address, protocol, port) entries.
    #[arg(long, default_value_t = MapSizes::default().services, env = "NETWARD_SERVICES_MAX")]
    pub services_max: u32,
    /// (client subject class, Service port) allow entries.
    #[arg(
        long,
        default_value_t = MapSizes::default().service_policy,
        env = "NETWARD_SERVICE_POLICY_MAX"
    )]
    pub service_policy_max: u32,
}

impl MapSizeArgs {
    pub fn sizes(&self) -> MapSizes {
        MapSizes {
            ipcache: self.ipcache_max,
            policy: self.policy_max,
            endpoints: self.endpoints_max,
            conntrack: self.conntrack_max,
            flow_cache: self.flow_cache_slots,
            decision_cache: self.decision_cache_slots,
            services: self.services_max,
            service_policy: self.service_policy_max,
        }
    }
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
        map_sizes: args.sizes.sizes(),
        conntrack_gc_interval: std::time::Duration::from_secs(args.conntrack_gc_interval),
        direct_delivery: args.direct_delivery,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::datapath::DatapathConfig;

    fn agent_args(args: &[&str]) -> AgentArgs {
        let argv = ["netward", "agent", "--node", "n1"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Agent(a) => a,
            _ => unreachable!("not the agent command"),
        }
    }

    #[test]
    fn map_sizes_default_to_the_datapath_defaults_and_follow_the_flags() {
        let d = agent_args(&[]).sizes.sizes();
        assert_eq!(d, MapSizes::default());
        let s = agent_args(&["--policy-max", "1234", "--conntrack-max", "99"])
            .sizes
            .sizes();
        let cfg = DatapathConfig::default().with_sizes(s);
        assert_eq!((cfg.policy_max, cfg.conntrack_max), (1234, 99));
        assert_eq!(cfg.ipcache_max, DatapathConfig::default().ipcache_max);
    }
}
