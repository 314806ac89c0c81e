//! Find each local pod's host-side veth from the node's routes: CNI plugins (kindnet's ptp,
//! Calico, Cilium in veth mode, the lab) install a host route per pod address whose output
//! device is the pod's veth. Read through rtnetlink, never by running `ip`.
//!
//! Only exact host routes (/32, /128) count: a pod address that is only covered by a wider
//! route (another node's pod CIDR via eth0) has no local veth, and attaching to the uplink
//! would be wrong.
use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

/// A network device on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
}

/// Pod address -> host device, from every host route of the node (all tables).
#[derive(Clone, Debug, Default)]
pub struct HostRoutes {
    by_ip: HashMap<IpAddr, Device>,
}

impl HostRoutes {
    /// Dump the routes and links of the current network namespace.
    pub async fn scan() -> Result<HostRoutes> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        let conn = tokio::spawn(conn);
        let result = async {
            let mut names = HashMap::new();
            let mut links = handle.link().get().execute();
            while let Some(link) = links.try_next().await.context("listing links")? {
                for attr in &link.attributes {
                    if let LinkAttribute::IfName(name) = attr {
                        names.insert(link.header.index, name.clone());
                    }
                }
            }
            let mut by_ip = HashMap::new();
            let v4 = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
            let v6 = RouteMessageBuilder::<std::net::Ipv6Addr>::new().build();
            for mut req in [v4, v6] {
                // A dump of every table, not only main (the filter is on the family only).
                req.header.table = 0;
                let mut routes = handle.route().get(req).execute();
                while let Some(route) = routes.try_next().await.context("listing routes")? {
                    if let Some((ip, ifindex)) = host_route(&route) {
                        if let Some(name) = names.get(&ifindex) {
                            by_ip.entry(ip).or_insert(Device {
                                ifindex,
                                name: name.clone(),
                            });
                        }
                    }
                }
            }
            Ok(HostRoutes { by_ip })
        }
        .await;
        conn.abort();
        result
    }

    /// The device of the host route to `ip`, if there is one.
    pub fn device(&self, ip: IpAddr) -> Option<&Device> {
        self.by_ip.get(&ip)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// (address, output ifindex) of a /32 or /128 unicast route with a single output device.
fn host_route(route: &RouteMessage) -> Option<(IpAddr, u32)> {
    let full = match route.header.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    if route.header.destination_prefix_length != full {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some((dst?, oif?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root: a veth with host routes in a fresh network namespace.
    #[test]
    fn finds_the_device_of_a_host_route_and_ignores_wider_routes() {
        if !nix_is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = format!("nwroutes{}", std::process::id());
        let sh = |cmd: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", cmd])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{cmd}");
        };
        sh(&format!("ip netns add {ns}"));
        let result = std::panic::catch_unwind(|| {
            sh(&format!(
                "ip -n {ns} link add dummy7 type veth peer name peer7 && ip -n {ns} link set dummy7 up && ip -n {ns} link set peer7 up && \
                 ip -n {ns} route add 10.9.0.7/32 dev dummy7 && \
                 ip -n {ns} route add 10.8.0.0/24 dev dummy7 && \
                 ip -n {ns} -6 route add fd00::7/128 dev dummy7"
            ));
            // Scan from a thread that entered the namespace.
            let path = format!("/run/netns/{ns}");
            std::thread::spawn(move || {
                let f = std::fs::File::open(path).unwrap();
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(HostRoutes::scan()).unwrap()
            })
            .join()
            .unwrap()
        });
        sh(&format!("ip netns del {ns}"));
        let routes = result.unwrap();
        let d = routes
            .device("10.9.0.7".parse().unwrap())
            .expect("host route");
        assert_eq!(d.name, "dummy7");
        assert!(routes.device("10.8.0.1".parse().unwrap()).is_none());
        assert_eq!(
            routes.device("fd00::7".parse().unwrap()).unwrap().name,
            "dummy7"
        );
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
