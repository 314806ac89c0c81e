//! Creating and removing a lab's namespaces, veths, addresses, routes and neighbors.
//!
//! This drives iproute2's `ip` (present on every node, and the most readable record of what
//! is done: each step is one `ip` command, logged at debug level). Discovery for `lab down`
//! does not need the state file: namespaces and host veths carry the lab's name prefixes.
use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tracing::debug;

use super::{netns, LabName, LabPod, LabState, GATEWAY_V4, GATEWAY_V6};

/// Run `ip ARGS`, failing with the command and its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    debug!("ip {}", args.join(" "));
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deterministic, locally administered MAC addresses of a pod's veth ends, so that static
/// neighbor entries can be written before the links exist. `side` 1: host, 2: pod.
fn mac(name: &LabName, index: usize, side: u8) -> String {
    let h = u16::from_str_radix(&name.veth_prefix()[2..], 16).expect("hex prefix");
    let [a, b] = h.to_be_bytes();
    let [c, d] = (index as u16).to_be_bytes();
    format!("02:{a:02x}:{b:02x}:{c:02x}:{d:02x}:{side:02x}")
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Host interfaces (root namespace) whose name starts with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Everything that would stop `state` from being created cleanly, checked before anything
/// is made: leftovers of the same lab, another lab sharing the veth prefix, addresses this
/// machine already routes (another lab with the same manifests, or a real network).
pub fn preflight(state: &LabState) -> Result<()> {
    let name = &state.name;
    let leftovers = netns::list(&name.netns_prefix());
    let links = links_with_prefix(&name.veth_prefix());
    if !leftovers.is_empty() || !links.is_empty() {
        // Another lab whose name hashes to the same prefix owns those links?
        for other in super::list_labs()? {
            if other != *name && other.veth_prefix() == name.veth_prefix() {
                bail!(
                    "lab names {name} and {other} share the interface prefix {}: choose another name",
                    name.veth_prefix()
                );
            }
        }
        bail!(
            "lab {name} has leftovers on this machine ({}): run `netward lab down --name {name}` first",
            leftovers
                .iter()
                .chain(links.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for pod in &state.pods {
        for ip in &pod.ips {
            let family = if ip.is_ipv4() { "-4" } else { "-6" };
            let routes = ip_output(&[family, "route", "show", "exact", &host_prefix(*ip)])?;
            let local = ip_output(&[family, "route", "show", "table", "local", &ip.to_string()])?;
            if !routes.trim().is_empty() || !local.trim().is_empty() {
                bail!(
                    "pod {} address {ip} (status.podIPs) is already in use on this machine ({}): \
                     another lab with the same addresses? use other addresses or `netward lab down`",
                    pod.key,
                    routes.trim().lines().chain(local.trim().lines()).next().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// Create every pod of `state`. On error the caller tears the lab down.
pub fn create(state: &LabState) -> Result<()> {
    enable_forwarding(state)?;
    for (index, pod) in state.pods.iter().enumerate() {
        create_pod(&state.name, index, pod).with_context(|| format!("creating pod {}", pod.key))?;
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
}

/// Routing between pods needs forwarding; it is left on at `lab down` (other labs may run).
fn enable_forwarding(state: &LabState) -> Result<()> {
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    if state.pods.iter().flat_map(|p| &p.ips).any(IpAddr::is_ipv6) {
        write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

fn create_pod(name: &LabName, index: usize, pod: &LabPod) -> Result<()> {
    let ns = pod.netns.as_str();
    let host = pod.host_veth.as_str();
    let host_mac = mac(name, index, 1);
    let pod_mac = mac(name, index, 2);
    ip(&["netns", "add", ns])?;
    ip(&[
        "link", "add", host, "address", &host_mac, "type", "veth", "peer", "name", "eth0",
        "address", &pod_mac, "netns", ns,
    ])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["link", "set", host, "up"])?;
    for addr in &pod.ips {
        let a = addr.to_string();
        let prefix = host_prefix(*addr);
        match addr {
            IpAddr::V4(_) => {
                ip(&["-n", ns, "addr", "add", &prefix, "dev", "eth0"])?;
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    GATEWAY_V4,
                    "lladdr",
                    &host_mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
                ip(&[
                    "-n", ns, "route", "replace", GATEWAY_V4, "dev", "eth0", "scope", "link",
                ])?;
                ip(&[
                    "-n", ns, "route", "replace", "default", "via", GATEWAY_V4, "dev", "eth0",
                ])?;
            }
            IpAddr::V6(_) => {
                ip(&["-n", ns, "addr", "add", &prefix, "dev", "eth0", "nodad"])?;
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    GATEWAY_V6,
                    "lladdr",
                    &host_mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
                ip(&[
                    "-n", ns, "-6", "route", "replace", "default", "via", GATEWAY_V6, "dev", "eth0",
                ])?;
            }
        }
        ip(&[
            "neigh",
            "replace",
            &a,
            "lladdr",
            &pod_mac,
            "dev",
            host,
            "nud",
            "permanent",
        ])?;
        ip(&["route", "add", &prefix, "dev", host])
            .with_context(|| format!("routing pod address {a} to {host}"))?;
    }
    Ok(())
}

/// Remove every namespace and host veth of lab `name` (found by prefix, so also after a
/// crash). Host veths go first: deleting one removes its peer synchronously, whereas a
/// deleted namespace frees its devices later, in the background. Deleting a device removes
/// its routes and neighbors. Idempotent.
pub fn destroy(name: &LabName) -> Result<()> {
    let mut errors = Vec::new();
    for link in links_with_prefix(&name.veth_prefix()) {
        if let Err(e) = ip(&["link", "del", &link]) {
            // Gone meanwhile (a namespace deleted by a concurrent `down`) is fine.
            if std::path::Path::new("/sys/class/net").join(&link).exists() {
                errors.push(e.to_string());
            }
        }
    }
    for ns in netns::list(&name.netns_prefix()) {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            if netns::exists(&ns) {
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("removing lab {name}: {}", errors.join("; "))
    }
}

/// Interface index of a host veth.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{ifname}/ifindex");
    let s = std::fs::read_to_string(&path).with_context(|| format!("interface {ifname}"))?;
    s.trim().parse().with_context(|| format!("parsing {path}"))
}
