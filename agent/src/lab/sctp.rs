//! SCTP probes without an SCTP stack: this kernel has no SCTP sockets, so a probe sends a
//! real SCTP INIT packet from a raw socket in the source pod and a raw socket in the
//! destination pod watches for its arrival. The INIT carries a random initiate tag that
//! identifies the probe, and a correct CRC32c so that anything checking it accepts it.
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrStorage,
};
use nix::sys::time::TimeVal;

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Length of an INIT packet without parameters: common header (12) + INIT chunk (20).
pub const INIT_LEN: usize = 32;

/// An SCTP packet holding one INIT chunk (RFC 9260 section 3.3.2).
pub fn init_packet(src_port: u16, dst_port: u16, initiate_tag: u32) -> [u8; INIT_LEN] {
    let mut p = [0u8; INIT_LEN];
    p[0..2].copy_from_slice(&src_port.to_be_bytes());
    p[2..4].copy_from_slice(&dst_port.to_be_bytes());
    // Verification tag 0: an INIT is the one chunk sent before the peer's tag is known.
    p[12] = 1; // chunk type INIT
    p[13] = 0; // flags
    p[14..16].copy_from_slice(&20u16.to_be_bytes());
    p[16..20].copy_from_slice(&initiate_tag.to_be_bytes());
    p[20..24].copy_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&initiate_tag.wrapping_add(1).to_be_bytes()); // initial TSN
    let sum = CRC32C.checksum(&p);
    // The CRC32c goes on the wire least significant byte first (as Linux writes it).
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// Whether `packet` (starting at the SCTP common header) has a valid CRC32c.
pub fn checksum_ok(packet: &[u8]) -> bool {
    if packet.len() < 12 {
        return false;
    }
    let mut copy = packet.to_vec();
    copy[8..12].fill(0);
    CRC32C.checksum(&copy).to_le_bytes() == packet[8..12]
}

/// What an arrived INIT says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenInit {
    pub src_port: u16,
    pub dst_port: u16,
    pub initiate_tag: u32,
}

/// Parse an SCTP packet (from its common header) holding an INIT as its first chunk.
pub fn parse_init(sctp: &[u8]) -> Option<SeenInit> {
    if sctp.len() < INIT_LEN || sctp[12] != 1 || !checksum_ok(sctp) {
        return None;
    }
    Some(SeenInit {
        src_port: u16::from_be_bytes([sctp[0], sctp[1]]),
        dst_port: u16::from_be_bytes([sctp[2], sctp[3]]),
        initiate_tag: u32::from_be_bytes([sctp[16], sctp[17], sctp[18], sctp[19]]),
    })
}

fn raw_socket(v6: bool) -> Result<OwnedFd> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    socket(
        family,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .context("raw SCTP socket")
}

/// Send one INIT to `dst`. Call on a thread inside the source pod's namespace.
pub fn send_init(dst: SocketAddr, src_port: u16, initiate_tag: u32) -> Result<()> {
    let fd = raw_socket(dst.is_ipv6())?;
    let packet = init_packet(src_port, dst.port(), initiate_tag);
    // Raw IP sockets take the protocol from the socket; the port field must be 0.
    let to = SockaddrStorage::from(SocketAddr::new(dst.ip(), 0));
    sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty()).context("sending SCTP INIT")?;
    Ok(())
}

/// A raw SCTP listener in a pod's namespace: sees every SCTP packet delivered to the pod.
pub struct Listener {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl Listener {
    /// Open on a thread inside the destination pod's namespace.
    pub fn open() -> Result<Self> {
        let v4 = raw_socket(false)?;
        let v6 = raw_socket(true)?;
        for fd in [&v4, &v6] {
            setsockopt(fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 20_000))?;
        }
        Ok(Listener { v4, v6 })
    }

    /// Wait up to `timeout` for an INIT with `initiate_tag` to port `dst_port` from `src`.
    pub fn wait(&self, src: IpAddr, dst_port: u16, initiate_tag: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let fd = if src.is_ipv6() { &self.v6 } else { &self.v4 };
            let Ok((n, from)) = recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf) else {
                continue;
            };
            let from_ip = from.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::from(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::from(s.ip())))
            });
            // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
            let sctp = if src.is_ipv4() {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if n < ihl {
                    continue;
                }
                &buf[ihl..n]
            } else {
                &buf[..n]
            };
            if let Some(seen) = parse_init(sctp) {
                if from_ip == Some(src)
                    && seen.dst_port == dst_port
                    && seen.initiate_tag == initiate_tag
                {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_check_value() {
        // CRC-32C of "123456789" (RFC 3720 / catalogue check value).
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_round_trips_and_detects_corruption() {
        let p = init_packet(40000, 9000, 0xdead_beef);
        assert!(checksum_ok(&p));
        assert_eq!(
            parse_init(&p),
            Some(SeenInit {
                src_port: 40000,
                dst_port: 9000,
                initiate_tag: 0xdead_beef
            })
        );
        let mut bad = p;
        bad[5] ^= 1;
        assert!(!checksum_ok(&bad));
        assert_eq!(parse_init(&bad), None);
    }
}
