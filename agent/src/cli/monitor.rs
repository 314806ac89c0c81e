//! `netward monitor`: stream verdict events live from the agent on this node, with the
//! policy that allowed each flow (like `hubble observe`).
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::agent::api::MonitorFilter;
use crate::agent::status::FlowEvent;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    Allowed,
    Denied,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Only flows from this pod (`ns/pod`, or `ns` for a whole namespace).
    #[arg(long)]
    pub from: Option<String>,
    /// Only flows to this pod (`ns/pod`, or `ns`).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,
    /// Only flows to this destination port.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
    /// The agent's control socket.
    #[arg(long, default_value = crate::agent::api::DEFAULT_SOCKET, env = "NETWARD_SOCKET")]
    pub socket: PathBuf,
}

/// One line per event, hubble-style.
pub fn render(e: &FlowEvent) -> String {
    let endpoint = |pod: &Option<String>, ip: &std::net::IpAddr, port: u16| match pod {
        Some(p) => format!("{p} ({ip}:{port})"),
        None => format!("{ip}:{port}"),
    };
    let by = match (&e.policy, e.rule) {
        (Some(p), Some(r)) => format!(" by {p} {} rule {r}", e.direction),
        (Some(p), None) => format!(" by {p}"),
        _ => String::new(),
    };
    let secs = e.time_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03} {} -> {} {} {} {} ({}){by}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        e.time_ms % 1000,
        endpoint(&e.src_pod, &e.src, e.sport),
        endpoint(&e.dst_pod, &e.dst, e.dport),
        e.protocol,
        e.direction,
        e.verdict.to_uppercase(),
        e.reason,
    )
}

pub fn run(args: MonitorArgs) -> ExitCode {
    let filter = MonitorFilter {
        from: args.from,
        to: args.to,
        verdict: args.verdict.map(|v| match v {
            VerdictArg::Allowed => "allowed".to_string(),
            VerdictArg::Denied => "denied".to_string(),
        }),
        port: args.port,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let output = args.output;
    let result = rt.block_on(crate::agent::api::monitor(&args.socket, filter, |e| {
        let line = match output {
            Output::Json => serde_json::to_string(&e).expect("event serialises"),
            Output::Text => render(&e),
        };
        // Stop quietly when stdout closes (`| head`).
        writeln!(std::io::stdout(), "{line}").is_ok()
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
