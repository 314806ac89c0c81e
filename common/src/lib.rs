//! Map keys and values shared by the netward agent (userspace) and its eBPF programs.
//!
//! Everything here is `#[repr(C)]`, has explicit padding (no uninitialised bytes may reach
//! the kernel) and is plain old data. Multi-byte fields inside LPM trie keys are stored as
//! big-endian byte arrays because the kernel's LPM trie matches prefixes bit by bit from the
//! first data byte.
//!
//! The per-packet lookup chain (see DESIGN.md, "Recommended map model"):
//!
//! 1. `CONFIG[0]`: which map slot (generation) is live.
//! 2. `IPCACHE` (LPM trie): local pod IP -> subject class + isolation flags.
//! 3. `IPCACHE` (LPM trie): peer IP -> peer class.
//! 4. `POLICY` (LPM trie): (slot, direction, subject class, peer class, proto, port) -> allow,
//!    looked up once with the peer's class and once with [`ANY_PEER`].
//!
//! Every key carries the slot byte so that a new Plan is written beside the live one and made
//! visible by a single write to `CONFIG` (no packet sees a half-applied Plan).
#![no_std]

/// Direction of a policy check, seen from the local pod being enforced.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Address families as stored in [`IpcacheKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the policy model knows about.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Peer class used by policy entries that allow any peer ("from/to" missing or empty).
pub const ANY_PEER: u32 = 0;
/// Subject class of an address that is not a local, policy-selected pod.
pub const NO_SUBJECT: u32 = 0;

/// [`IpcacheValue::flags`]: the address belongs to a pod enforced on this node.
pub const EP_LOCAL: u32 = 1 << 0;
/// [`IpcacheValue::flags`]: some policy isolates this pod for ingress.
pub const EP_ISOLATED_INGRESS: u32 = 1 << 1;
/// [`IpcacheValue::flags`]: some policy isolates this pod for egress.
pub const EP_ISOLATED_EGRESS: u32 = 1 << 2;

/// Number of bits of [`IpcacheKey`] data before the address: slot + family.
pub const IPCACHE_HEADER_BITS: u32 = 16;

/// LPM key of the ipcache: `slot | family | address`. For IPv4 the address occupies the
/// first 4 bytes of `addr` and the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IpcacheKey {
    /// Significant bits of the data that follows: `IPCACHE_HEADER_BITS + address prefix`.
    pub prefixlen: u32,
    pub slot: u8,
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 2],
}

impl IpcacheKey {
    pub const fn v4(slot: u8, addr: [u8; 4], prefix: u8) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        IpcacheKey {
            prefixlen: IPCACHE_HEADER_BITS + prefix as u32,
            slot,
            family: FAMILY_V4,
            addr: a,
            _pad: [0; 2],
        }
    }

    pub const fn v6(slot: u8, addr: [u8; 16], prefix: u8) -> Self {
        IpcacheKey {
            prefixlen: IPCACHE_HEADER_BITS + prefix as u32,
            slot,
            family: FAMILY_V6,
            addr,
            _pad: [0; 2],
        }
    }

    /// The address prefix length (without the slot/family header).
    pub const fn addr_prefix(&self) -> u32 {
        self.prefixlen - IPCACHE_HEADER_BITS
    }
}

/// What the datapath knows about an address (a pod IP or a CIDR piece).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IpcacheValue {
    /// Class of this address as a policy peer (never [`ANY_PEER`]).
    pub peer_class: u32,
    /// Class of this address as a local subject ([`NO_SUBJECT`] unless [`EP_LOCAL`]).
    pub subject_class: u32,
    /// `EP_*` flags.
    pub flags: u32,
    /// Index+1 of the endpoint in the Plan's endpoint table (0: none); reported in events.
    pub endpoint: u32,
}

/// Significant bits of [`PolicyKey`] up to and including the peer class: an entry with this
/// prefix length allows every protocol and port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 80;
/// Up to and including the protocol: every port of that protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 88;
/// All data bits: one exact port.
pub const POLICY_PREFIX_FULL: u32 = 104;

/// LPM key of the policy map: `slot | dir | subject | peer | proto | port`, big-endian.
/// Port ranges become prefix-aligned blocks of the last 16 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub slot: u8,
    pub dir: u8,
    pub subject: [u8; 4],
    pub peer: [u8; 4],
    pub proto: u8,
    pub port: [u8; 2],
    pub _pad: [u8; 3],
}

impl PolicyKey {
    pub const fn new(
        prefixlen: u32,
        slot: u8,
        dir: u8,
        subject: u32,
        peer: u32,
        proto: u8,
        port: u16,
    ) -> Self {
        PolicyKey {
            prefixlen,
            slot,
            dir,
            subject: subject.to_be_bytes(),
            peer: peer.to_be_bytes(),
            proto,
            port: port.to_be_bytes(),
            _pad: [0; 3],
        }
    }

    pub const fn subject_class(&self) -> u32 {
        u32::from_be_bytes(self.subject)
    }

    pub const fn peer_class(&self) -> u32 {
        u32::from_be_bytes(self.peer)
    }

    pub const fn port_number(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Attribution of an allow entry: which policy and rule produced it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyValue {
    /// Index+1 of the policy in the Plan's policy table.
    pub policy: u32,
    /// Index of the rule within the policy's ingress or egress list.
    pub rule: u16,
    pub flags: u16,
}

/// `CONFIG[0]`: global datapath settings written by map sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Slot (0 or 1) whose ipcache and policy entries are live.
    pub slot: u8,
    pub _pad: [u8; 3],
    /// `CFG_*` flags.
    pub flags: u32,
    /// Monotonic Plan generation; conntrack entries remember the one they were checked under.
    pub generation: u64,
}

/// [`Config::flags`]: drop traffic of a local address that has no endpoint entry.
pub const CFG_FAIL_CLOSED_UNKNOWN: u32 = 1 << 0;
/// [`Config::flags`]: the maps hold a complete Plan (set after the first sync).
pub const CFG_READY: u32 = 1 << 1;

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all types are repr(C), contain only integers and byte arrays, and have
    // explicit padding fields, so every bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for IpcacheValue {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for Config {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<IpcacheKey>(), 4 + 1 + 1 + 16 + 2);
        assert_eq!(size_of::<IpcacheValue>(), 16);
        assert_eq!(size_of::<PolicyKey>(), 4 + 1 + 1 + 4 + 4 + 1 + 2 + 3);
        assert_eq!(size_of::<PolicyValue>(), 8);
        assert_eq!(size_of::<Config>(), 16);
    }

    #[test]
    fn policy_prefixes_cover_fields() {
        // slot(8) dir(8) subject(32) peer(32) = 80 bits, + proto(8) = 88, + port(16) = 104.
        assert_eq!(POLICY_PREFIX_ANY_PROTO, 80);
        assert_eq!(POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO + 8);
        assert_eq!(POLICY_PREFIX_FULL, POLICY_PREFIX_ANY_PORT + 16);
        let k = PolicyKey::new(POLICY_PREFIX_FULL, 1, DIR_EGRESS, 7, 9, PROTO_TCP, 8080);
        assert_eq!(k.subject_class(), 7);
        assert_eq!(k.peer_class(), 9);
        assert_eq!(k.port_number(), 8080);
    }
}
