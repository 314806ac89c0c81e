//! kube-proxy for the lab: Service virtual addresses rewritten (DNAT) to their endpoints by
//! nftables on the lab node, as kube-proxy's nftables mode does it.
//!
//! Each lab has a table of its own, `inet netward-lab-<name>`, so labs run side by side and
//! `lab down` removes exactly its own. Per Service port and virtual address, a rule in the
//! `services` chain (nat, prerouting: pods' packets enter the node through their host veth)
//! jumps to a chain choosing an endpoint at random (`numgen random mod N`, one chain per
//! endpoint doing the DNAT); a port without any endpoint of the address's family is dropped
//! (kube-proxy rejects it; either way nothing reaches a pod). The whole table is replaced in
//! one nft transaction, so a change never shows a half-written ruleset, and conntrack keeps
//! established connections on the endpoint they were given.
//!
//! netward's egress hook runs before this rewrite (tc ingress on the client's host veth comes
//! before netfilter's prerouting), which is why it decides on the virtual address itself.
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::LabName;
use crate::model::{Cluster, Protocol};

/// The nftables table (family inet) of lab `name`.
pub fn table(name: &LabName) -> String {
    format!("netward-lab-{name}")
}

/// Where the ruleset last loaded is kept (for comparison, and to read).
fn applied_path(name: &LabName) -> PathBuf {
    name.state_dir().join("services.nft")
}

fn l4(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The nft script that replaces lab `name`'s table with the DNAT rules of `cluster`'s
/// Services; a script that only removes the table when there is no Service.
pub fn ruleset(name: &LabName, cluster: &Cluster) -> String {
    let table = table(name);
    // Creating before deleting makes the delete valid when the table does not exist yet.
    let mut out = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    if cluster.services.is_empty() {
        return out;
    }
    let mut rules = String::new();
    let mut chains = String::new();
    let (mut svc, mut ep) = (0usize, 0usize);
    for s in &cluster.services {
        for p in &s.ports {
            let backends: Vec<(IpAddr, u16)> = s.backends(p).collect();
            for vip in &s.vips {
                let (match_family, nat_family) = if vip.is_ipv4() {
                    ("ip", "ip")
                } else {
                    ("ip6", "ip6")
                };
                let of_family: Vec<&(IpAddr, u16)> = backends
                    .iter()
                    .filter(|(ip, _)| ip.is_ipv4() == vip.is_ipv4())
                    .collect();
                let comment = format!(
                    "{} {}/{}{}",
                    s.key(),
                    p.protocol,
                    p.port,
                    if p.name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.name)
                    }
                );
                let verdict = if of_family.is_empty() {
                    "drop".to_string()
                } else {
                    format!("jump svc{svc}")
                };
                let _ = writeln!(
                    rules,
                    "    {match_family} daddr {vip} {} dport {} {verdict} comment \"{comment}\"",
                    l4(p.protocol),
                    p.port
                );
                if of_family.is_empty() {
                    continue;
                }
                let map: Vec<String> = (0..of_family.len())
                    .map(|i| format!("{i} : jump ep{}", ep + i))
                    .collect();
                let _ = writeln!(
                    chains,
                    "  chain svc{svc} {{\n    numgen random mod {} vmap {{ {} }}\n  }}",
                    of_family.len(),
                    map.join(", ")
                );
                for (ip, port) in of_family {
                    let to = match ip {
                        IpAddr::V4(a) => format!("{a}:{port}"),
                        IpAddr::V6(a) => format!("[{a}]:{port}"),
                    };
                    let _ = writeln!(
                        chains,
                        "  chain ep{ep} {{\n    meta l4proto {} dnat {nat_family} to {to}\n  }}",
                        l4(p.protocol)
                    );
                    ep += 1;
                }
                svc += 1;
            }
        }
    }
    let _ = write!(
        out,
        "table inet {table} {{\n  chain services {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n{chains}}}\n"
    );
    out
}

/// Run `nft -f -` on `script` (one transaction).
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (nftables)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}\nruleset:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Bring lab `name`'s DNAT rules in line with `cluster` (nothing done when the last loaded
/// ruleset is the same, unless `force`). True when the rules changed.
pub fn sync(name: &LabName, cluster: &Cluster, force: bool) -> Result<bool> {
    let script = ruleset(name, cluster);
    let path = applied_path(name);
    if !force && std::fs::read_to_string(&path).is_ok_and(|old| old == script) {
        return Ok(false);
    }
    nft(&script).with_context(|| format!("loading the Service rules of lab {name}"))?;
    std::fs::write(&path, &script).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Remove lab `name`'s table; idempotent.
pub fn remove(name: &LabName) -> Result<()> {
    let table = table(name);
    nft(&format!(
        "table inet {table} {{}}\ndelete table inet {table}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointPort, Service, ServiceEndpoint, ServicePort};

    fn endpoint(ip: &str, name: &str, protocol: Protocol, port: u16) -> ServiceEndpoint {
        ServiceEndpoint {
            ip: ip.parse().unwrap(),
            ports: vec![EndpointPort {
                name: name.into(),
                protocol,
                port,
            }],
        }
    }

    #[test]
    fn random_choice_per_family_and_drop_without_endpoints() {
        let name = LabName::new("t-1").unwrap();
        let cluster = Cluster {
            services: vec![
                Service {
                    namespace: "kube-system".into(),
                    name: "kube-dns".into(),
                    vips: vec!["10.96.0.10".parse().unwrap(), "fd96::a".parse().unwrap()],
                    ports: vec![ServicePort {
                        name: "dns".into(),
                        protocol: Protocol::Udp,
                        port: 53,
                    }],
                    endpoints: vec![
                        endpoint("10.244.0.5", "dns", Protocol::Udp, 5353),
                        endpoint("10.244.0.6", "dns", Protocol::Udp, 5353),
                        endpoint("fd44::5", "dns", Protocol::Udp, 5353),
                    ],
                },
                Service {
                    namespace: "a".into(),
                    name: "empty".into(),
                    vips: vec!["10.96.0.11".parse().unwrap()],
                    ports: vec![ServicePort {
                        name: String::new(),
                        protocol: Protocol::Tcp,
                        port: 80,
                    }],
                    endpoints: vec![],
                },
            ],
            ..Default::default()
        };
        let r = ruleset(&name, &cluster);
        assert!(r.starts_with("table inet netward-lab-t-1 {}\ndelete table inet netward-lab-t-1\n"));
        assert!(
            r.contains("ip daddr 10.96.0.10 udp dport 53 jump svc0"),
            "{r}"
        );
        assert!(r.contains("numgen random mod 2 vmap { 0 : jump ep0, 1 : jump ep1 }"));
        assert!(
            r.contains("meta l4proto udp dnat ip to 10.244.0.6:5353"),
            "{r}"
        );
        assert!(
            r.contains("ip6 daddr fd96::a udp dport 53 jump svc1"),
            "{r}"
        );
        assert!(
            r.contains("numgen random mod 1 vmap { 0 : jump ep2 }"),
            "{r}"
        );
        assert!(r.contains("dnat ip6 to [fd44::5]:5353"), "{r}");
        assert!(r.contains("ip daddr 10.96.0.11 tcp dport 80 drop"), "{r}");
        // No Service: the table only goes.
        let none = ruleset(&name, &Cluster::default());
        assert_eq!(none.lines().count(), 2);
    }
}
