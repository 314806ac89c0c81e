//! `netward status`: what the agent on this node enforces, read from its control socket.
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::agent::status::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// The agent's control socket.
    #[arg(long, default_value = crate::agent::api::DEFAULT_SOCKET, env = "NETWARD_SOCKET")]
    pub socket: PathBuf,
}

pub fn run(args: StatusArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    match rt.block_on(crate::agent::api::status(&args.socket)) {
        Ok(s) => {
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("status serialises")
                ),
                Output::Table => print!("{}", render(&s)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "isolated"
    } else {
        "open"
    }
}

/// The human-readable status.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let age = s.last_sync_unix.map(|t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(t);
        format!("{:.1}s ago", (now - t).max(0.0))
    });
    let _ = writeln!(o, "Node:        {}", s.node);
    let _ = writeln!(o, "Ready:       {}", if s.ready { "yes" } else { "no" });
    let _ = writeln!(o, "Datapath:    {}", s.datapath);
    let _ = writeln!(o, "Generation:  {}", s.generation);
    let _ = writeln!(
        o,
        "Last sync:   {} (latency {}, model {}, compile {})",
        age.as_deref().unwrap_or("never"),
        s.last_sync_latency_ms
            .map_or("-".into(), |l| format!("{l:.1} ms")),
        s.last_convert_ms
            .map_or("-".into(), |l| format!("{l:.1} ms")),
        s.last_compile_ms
            .map_or("-".into(), |l| format!("{l:.1} ms")),
    );
    if let Some(e) = &s.last_error {
        let _ = writeln!(o, "Last error:  {e} (previous Plan in force)");
    }
    let p = &s.plan;
    let _ = writeln!(
        o,
        "Plan:        {} policies, {} endpoints, {} subject / {} peer classes, {} ipcache + {} policy entries",
        p.policies, p.endpoints, p.subject_classes, p.peer_classes, p.ipcache_entries, p.policy_entries
    );
    o.push('\n');
    let mut rows = vec![[
        "ENDPOINT".to_string(),
        "IPS".into(),
        "VETH".into(),
        "ATTACHED".into(),
        "INGRESS".into(),
        "EGRESS".into(),
    ]];
    for e in &s.endpoints {
        rows.push([
            format!("{}/{}", e.namespace, e.name),
            e.ips
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
            e.veth.clone().unwrap_or_else(|| "-".into()),
            if e.attached { "yes" } else { "no" }.into(),
            yes(e.isolated_ingress).into(),
            yes(e.isolated_egress).into(),
        ]);
    }
    table(&mut o, &rows);
    if !s.maps.is_empty() {
        o.push('\n');
        let mut rows = vec![[
            "MAP".to_string(),
            "ENTRIES".into(),
            "CAPACITY".into(),
            "FILL".into(),
        ]];
        for m in &s.maps {
            let fill = if m.capacity > 0 {
                format!("{:.1}%", 100.0 * m.entries as f64 / m.capacity as f64)
            } else {
                "-".into()
            };
            rows.push([
                m.map.clone(),
                m.entries.to_string(),
                m.capacity.to_string(),
                fill,
            ]);
        }
        table(&mut o, &rows);
    }
    let c = &s.counters;
    let _ = writeln!(
        o,
        "\nCounters:    {} allowed, {} denied, {} events lost, {} sync failures",
        c.allowed, c.denied, c.events_lost, c.sync_failures
    );
    let tracked: u64 = c
        .by_reason
        .iter()
        .filter(|(k, _)| k.ends_with("/established") || k.ends_with("/reply"))
        .map(|(_, n)| n)
        .sum();
    if tracked > 0 {
        let _ = writeln!(
            o,
            "Flow cache:  {} of {} packets of tracked flows ({:.1}%) answered without a conntrack lookup",
            c.flow_cache_hits,
            tracked,
            100.0 * c.flow_cache_hits as f64 / tracked as f64
        );
    }
    if c.decision_cache_hits > 0 {
        let _ = writeln!(
            o,
            "Decision cache: {} policy decisions answered without the policy lookups",
            c.decision_cache_hits
        );
    }
    if c.direct_delivered + c.direct_fallback > 0 {
        let _ = writeln!(
            o,
            "Direct:      {} packets delivered veth to veth (same-node TCP), {} of such flows took the node's path",
            c.direct_delivered, c.direct_fallback
        );
    }
    // Keys are `direction/reason`: one row per reason, one column per direction.
    let mut by_dir: std::collections::BTreeMap<&str, [u64; 3]> = Default::default();
    for (key, n) in &c.by_reason {
        let (dir, reason) = key.split_once('/').unwrap_or(("any", key));
        let col = match dir {
            "ingress" => 0,
            "egress" => 1,
            _ => 2,
        };
        by_dir.entry(reason).or_default()[col] += n;
    }
    if !by_dir.is_empty() {
        let any = by_dir.values().any(|v| v[2] > 0);
        let mut rows = vec![[
            "  REASON".to_string(),
            "INGRESS".into(),
            "EGRESS".into(),
            if any { "ANY".into() } else { String::new() },
        ]];
        for (reason, [i, e, a]) in by_dir {
            rows.push([
                format!("  {reason}"),
                i.to_string(),
                e.to_string(),
                if any { a.to_string() } else { String::new() },
            ]);
        }
        table(&mut o, &rows);
    }
    let _ = writeln!(o, "\nWatches:");
    for w in &s.watches {
        let _ = writeln!(
            o,
            "  {:<16} {:>7} objects, {} restarts, {} errors",
            w.resource, w.objects, w.restarts, w.errors
        );
    }
    if !s.policy_errors.is_empty() {
        let _ = writeln!(o, "\nPolicies failing closed:");
        for e in &s.policy_errors {
            let _ = writeln!(o, "  {e}");
        }
    }
    if !s.service_errors.is_empty() {
        let _ = writeln!(
            o,
            "\nServices failing closed (connections to their addresses are denied):"
        );
        for e in &s.service_errors {
            let _ = writeln!(o, "  {e}");
        }
    }
    o
}

fn table<const N: usize>(o: &mut String, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(o, "{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shown_by_direction() {
        let mut s = Status::default();
        for (k, n) in [
            ("ingress/policy_deny", 3),
            ("egress/policy_deny", 1),
            ("egress/reply", 7),
        ] {
            s.counters.by_reason.insert(k.into(), n);
        }
        let out = render(&s);
        let row = |r: &str| {
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(r))
                .unwrap_or_else(|| panic!("no {r} row in\n{out}"))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("REASON"), ["INGRESS", "EGRESS"]);
        assert_eq!(row("policy_deny"), ["3", "1"]);
        assert_eq!(row("reply"), ["0", "7"]);
    }

    #[test]
    fn the_flow_cache_share_is_of_tracked_flow_packets() {
        let mut s = Status::default();
        s.counters
            .by_reason
            .insert("ingress/established".into(), 12);
        s.counters.by_reason.insert("egress/reply".into(), 4);
        s.counters.by_reason.insert("egress/policy_deny".into(), 9);
        s.counters.flow_cache_hits = 12;
        let out = render(&s);
        assert!(
            out.contains("Flow cache:  12 of 16 packets of tracked flows (75.0%)"),
            "{out}"
        );
        // Nothing tracked yet: no line.
        s.counters.by_reason.clear();
        assert!(!render(&s).contains("Flow cache"));
        assert!(!render(&s).contains("Decision cache"));
        s.counters.decision_cache_hits = 3;
        assert!(
            render(&s).contains("Decision cache: 3 policy decisions answered"),
            "{}",
            render(&s)
        );
    }
}
