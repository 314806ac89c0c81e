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
        preflight_pod(pod)?;
    }
    Ok(())
}

/// Refuse a pod whose address this machine already routes (another lab with the same
/// addresses, or a real network): the host routes would fight.
pub fn preflight_pod(pod: &LabPod) -> Result<()> {
    for ip in &pod.ips {
        let family = if ip.is_ipv4() { "-4" } else { "-6" };
        let routes = ip_output(&[family, "route", "show", "exact", &host_prefix(*ip)])?;
        let local = ip_output(&[family, "route", "show", "table", "local", &ip.to_string()])?;
        if !routes.trim().is_empty() || !local.trim().is_empty() {
            bail!(
                "pod {} address {ip} (status.podIPs) is already in use on this machine ({}): \
                 another lab with the same addresses? use other addresses or `netward lab down`",
                pod.key,
                routes
                    .trim()
                    .lines()
                    .chain(local.trim().lines())
                    .next()
                    .unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Create every pod of `state`; `connect` also opens their host side (see [`connect_pod`]).
/// On error the caller tears the lab down.
pub fn create(state: &LabState, connect: bool) -> Result<()> {
    for pod in &state.pods {
        create_pod(&state.name, pod).with_context(|| format!("creating pod {}", pod.key))?;
        if connect {
            connect_pod(&state.name, pod).with_context(|| format!("connecting pod {}", pod.key))?;
        }
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
}

/// Routing between pods needs forwarding; it is left on at `lab down` (other labs may run).
fn enable_forwarding(pod: &LabPod) -> Result<()> {
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    if pod.ips.iter().any(IpAddr::is_ipv6) {
        write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Make a pod's namespace, its veth pair and everything inside the pod (addresses, gateway,
/// routes). The host side stays down, without route nor neighbor: no packet crosses it until
/// [`connect_pod`], so the daemon attaches the programs first and a new pod is never open.
pub fn create_pod(name: &LabName, pod: &LabPod) -> Result<()> {
    enable_forwarding(pod)?;
    let ns = pod.netns.as_str();
    let host = pod.host_veth.as_str();
    let host_mac = mac(name, pod.index, 1);
    let pod_mac = mac(name, pod.index, 2);
    ip(&["netns", "add", ns])?;
    ip(&[
        "link", "add", host, "address", &host_mac, "type", "veth", "peer", "name", "eth0",
        "address", &pod_mac, "netns", ns,
    ])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    for addr in &pod.ips {
        let prefix = host_prefix(*addr);
        let (gateway, nodad, family): (&str, &[&str], &str) = match addr {
            IpAddr::V4(_) => (GATEWAY_V4, &[], "-4"),
            IpAddr::V6(_) => (GATEWAY_V6, &["nodad"], "-6"),
        };
        let mut add = vec!["-n", ns, "addr", "add", &prefix, "dev", "eth0"];
        add.extend_from_slice(nodad);
        ip(&add)?;
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            gateway,
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        if addr.is_ipv4() {
            ip(&[
                "-n", ns, "route", "replace", GATEWAY_V4, "dev", "eth0", "scope", "link",
            ])?;
        }
        ip(&[
            "-n", ns, family, "route", "replace", "default", "via", gateway, "dev", "eth0",
        ])?;
    }
    Ok(())
}

/// Open a created pod to the node: host side up, a static neighbor and a host route per
/// pod address. Idempotent (a restarted daemon connects every pod again).
pub fn connect_pod(name: &LabName, pod: &LabPod) -> Result<()> {
    let host = pod.host_veth.as_str();
    ip(&["link", "set", host, "up"])?;
    let pod_mac = mac(name, pod.index, 2);
    for addr in &pod.ips {
        let a = addr.to_string();
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
        ip(&["route", "replace", &host_prefix(*addr), "dev", host])
            .with_context(|| format!("routing pod address {a} to {host}"))?;
    }
    Ok(())
}

/// Remove one pod: its host veth first (that stops its traffic at once and takes the peer,
/// the host route and the neighbor along), then its namespace. Idempotent.
pub fn remove_pod(pod: &LabPod) -> Result<()> {
    let link = std::path::Path::new("/sys/class/net").join(&pod.host_veth);
    if link.exists() {
        if let Err(e) = ip(&["link", "del", &pod.host_veth]) {
            if link.exists() {
                return Err(e);
            }
        }
    }
    if netns::exists(&pod.netns) {
        if let Err(e) = ip(&["netns", "del", &pod.netns]) {
            if netns::exists(&pod.netns) {
                return Err(e);
            }
        }
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
