//! A node in a network namespace of its own, with pods (namespaces joined to it by veth
//! pairs), for tests with real packets. The node namespace isolates everything the test sets
//! up (forwarding, nftables rules, addresses, interface names) from the machine and from
//! other tests; deleting it removes everything.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Run a command; true when it exits with success.
pub fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run a command and panic with its output when it fails.
pub fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "command failed: {args:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Switch the calling thread into network namespace `ns` (sockets made afterwards live there).
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns changes only the calling thread's network namespace.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {ns}: {}",
        std::io::Error::last_os_error()
    );
}

/// Run `f` on a new thread inside network namespace `ns`; panics propagate.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    match std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = sh(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A pod: its namespace, addresses, and the host-side veth in the node namespace.
pub struct Pod {
    pub ns: Netns,
    pub ip: String,
    pub ip6: String,
    pub host_if: String,
}

/// A routed node: forwarding on, each pod behind a veth pair with a /30 (10.200.0.4n+2) and a
/// /126 (fd20::4n+2).
pub struct Node {
    pub ns: Netns,
    pub pods: Vec<Pod>,
}

impl Node {
    /// `tag` must be unique among concurrently running tests (namespace names are global).
    pub fn new(tag: &str) -> Node {
        let ns = Netns::new(format!("nw{tag}-{}-node", std::process::id()));
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.default.forwarding=1",
        ] {
            must(&["ip", "netns", "exec", &ns.name, "sysctl", "-qw", s]);
        }
        Node {
            ns,
            pods: Vec::new(),
        }
    }

    /// Add a pod; returns its index.
    pub fn pod(&mut self) -> usize {
        let n = self.pods.len();
        let ns = Netns::new(format!("{}-p{n}", self.ns.name.trim_end_matches("-node")));
        let (host_if, pod_if) = (format!("hv{n}"), format!("eth{n}"));
        let gw = format!("10.200.0.{}", 4 * n + 1);
        let ip = format!("10.200.0.{}", 4 * n + 2);
        let (gw6, ip6) = (
            format!("fd20::{:x}", 4 * n + 1),
            format!("fd20::{:x}", 4 * n + 2),
        );
        let node = &self.ns.name;
        must(&[
            "ip", "-n", node, "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
            "netns", &ns.name,
        ]);
        must(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("{gw}/30"),
            "dev",
            &host_if,
        ]);
        must(&["ip", "-n", node, "link", "set", &host_if, "up"]);
        must(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            &pod_if,
        ]);
        must(&["ip", "-n", &ns.name, "link", "set", &pod_if, "up"]);
        must(&["ip", "-n", &ns.name, "route", "add", "default", "via", &gw]);
        // No duplicate address detection: the addresses are usable at once.
        must(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("{gw6}/126"),
            "dev",
            &host_if,
            "nodad",
        ]);
        must(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip6}/126"),
            "dev",
            &pod_if,
            "nodad",
        ]);
        must(&[
            "ip", "-n", &ns.name, "-6", "route", "add", "default", "via", &gw6,
        ]);
        self.pods.push(Pod {
            ns,
            ip,
            ip6,
            host_if,
        });
        n
    }

    /// Load an nftables ruleset (text) into the node namespace.
    pub fn nft(&self, ruleset: &str) {
        nft(&self.ns.name, ruleset);
    }
}

/// Load an nftables ruleset (text) into network namespace `ns`.
pub fn nft(ns: &str, ruleset: &str) {
    let path = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&path, ruleset).unwrap();
    must(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-f",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(path);
}

/// Packets counted by the named nftables counter `name` of table `inet table` in `ns`.
pub fn nft_packets(ns: &str, table: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "counter", "inet", table, name,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("counter {table}/{name}: {text}"));
        }
    }
    panic!(
        "counter {table}/{name} not found in {ns}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pods first: their veths (and peers in the node) go with them.
        self.pods.clear();
    }
}

/// Make the calling thread's namespace (the node) resolve the neighbour entries of `addrs`
/// (one UDP datagram to the discard port each; from the node, which policies always allow):
/// a forwarded IPv6 packet that has to wait for neighbour discovery on a just-created veth is
/// sometimes lost, and TCP retransmits only after a second.
pub fn resolve_neighbours(addrs: &[&str]) {
    for a in addrs {
        let ip: std::net::IpAddr = a.parse().unwrap();
        let bind = if ip.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let s = std::net::UdpSocket::bind(bind).unwrap();
        let _ = s.send_to(b"", (ip, 9));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// TCP and UDP echo servers on `port` (both families) inside network namespace `ns`, until
/// `stop`.
pub fn echo_servers(ns: &str, port: u16, stop: &Arc<AtomicBool>) {
    let addr: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let (listener, udp) = in_ns(ns, move || {
        (
            TcpListener::bind(addr).unwrap(),
            UdpSocket::bind(addr).unwrap(),
        )
    });
    listener.set_nonblocking(true).unwrap();
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let Ok((mut c, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let s = s.clone();
            std::thread::spawn(move || {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut b = [0u8; 64];
                while !s.load(Ordering::Relaxed) {
                    match c.read(&mut b) {
                        Ok(0) => break,
                        Ok(n) => {
                            let _ = c.write_all(&b[..n]);
                        }
                        Err(_) => continue,
                    }
                }
            });
        }
    });
    let s = stop.clone();
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = udp.recv_from(&mut b) {
                let _ = udp.send_to(&b[..n], from);
            }
        }
    });
}

/// A TCP connection from network namespace `ns` to `to` (None: not established within 1 s).
pub fn connect(ns: &str, to: SocketAddr) -> Option<std::net::TcpStream> {
    in_ns(ns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()
    })
}

/// One byte out and back on an established connection (to an echo server).
pub fn exchange(c: &mut std::net::TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 1];
    c.write_all(b"x").is_ok() && c.read_exact(&mut b).is_ok() && b == *b"x"
}
