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
/// [`IpcacheValue::flags`]: the address is a Service virtual address (a `HOSTS` entry) that
/// kube-proxy rewrites after the egress hook: egress new flows to it look up [`ServiceKey`]
/// first; `peer_class` is the class the address has as a plain address (for unserved ports).
pub const EP_SERVICE: u32 = 1 << 3;

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

    /// Whether the entry covers exactly one address (32 bits for IPv4, 128 for IPv6): the
    /// entries the exact-address hash tables mirror.
    pub const fn is_host(&self) -> bool {
        self.addr_prefix() == if self.family == FAMILY_V4 { 32 } else { 128 }
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

/// `POLICY_HASH` key: one [`PolicyKey`] of the Plan as an exact-match hash key. The datapath
/// probes the prefix lengths a subject uses (see [`PolicyLens`]) from the longest down,
/// which finds exactly what a longest-prefix match of the [`PolicyKey`] would, at a cost
/// independent of the number of entries. Packed into 12 bytes: the kernel hashes a key of up
/// to 12 bytes in one round, a longer one costs a round per 12 bytes more (measured here: a
/// lookup of a 24-byte key ~30 ns, of a 12-byte key ~17 ns). Bits beyond the length are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyHashKey {
    /// Subject class (low 24 bits) | slot << 24 | dir << 25.
    pub subject: u32,
    /// Peer class (low 24 bits) | prefix length << 24 ([`POLICY_PREFIX_ANY_PROTO`], 88..=104).
    pub peer: u32,
    /// Host byte order, masked to the first `len - 88` bits.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Classes (subject and peer) must fit in 24 bits to be packed into a [`PolicyHashKey`].
pub const CLASS_LIMIT: u32 = 1 << 24;

impl PolicyHashKey {
    /// The subject word: computed once per lookup, shared by all probes.
    pub const fn subject_word(slot: u8, dir: u8, subject: u32) -> u32 {
        (subject & (CLASS_LIMIT - 1)) | (slot as u32 & 1) << 24 | (dir as u32 & 1) << 25
    }

    /// The key for `(len, ...)` with the port masked to the length, as the datapath builds it.
    pub const fn with_word(subject_word: u32, len: u32, peer: u32, proto: u8, port: u16) -> Self {
        let (proto, port) = if len <= POLICY_PREFIX_ANY_PROTO {
            (0, 0)
        } else {
            (proto, port & policy_port_mask(len))
        };
        PolicyHashKey {
            subject: subject_word,
            peer: (peer & (CLASS_LIMIT - 1)) | len << 24,
            port,
            proto,
            _pad: 0,
        }
    }

    pub const fn new(
        len: u32,
        slot: u8,
        dir: u8,
        subject: u32,
        peer: u32,
        proto: u8,
        port: u16,
    ) -> Self {
        Self::with_word(
            Self::subject_word(slot, dir, subject),
            len,
            peer,
            proto,
            port,
        )
    }

    /// The hash key of a Plan entry, or `None` when it cannot be packed: a prefix length the
    /// datapath does not probe (the compiler emits only [`POLICY_PREFIX_ANY_PROTO`] and
    /// 88..=104) or a class beyond [`CLASS_LIMIT`].
    pub const fn from_policy(k: &PolicyKey) -> Option<Self> {
        if policy_len_bit(k.prefixlen).is_none()
            || k.subject_class() >= CLASS_LIMIT
            || k.peer_class() >= CLASS_LIMIT
            || k.slot > 1
            || k.dir > 1
        {
            return None;
        }
        Some(Self::new(
            k.prefixlen,
            k.slot,
            k.dir,
            k.subject_class(),
            k.peer_class(),
            k.proto,
            k.port_number(),
        ))
    }

    pub const fn slot(&self) -> u8 {
        ((self.subject >> 24) & 1) as u8
    }

    pub const fn with_slot(mut self, slot: u8) -> Self {
        self.subject = (self.subject & !(1 << 24)) | (slot as u32 & 1) << 24;
        self
    }

    /// Back to the Plan's key (masked).
    pub const fn to_policy(&self) -> PolicyKey {
        PolicyKey::new(
            self.peer >> 24,
            self.slot(),
            ((self.subject >> 25) & 1) as u8,
            self.subject & (CLASS_LIMIT - 1),
            self.peer & (CLASS_LIMIT - 1),
            self.proto,
            self.port,
        )
    }
}

/// One address in one slot: the agent's view of a `LOCAL_TABLE` / `HOST_TABLE` entry (and the
/// key of `ENDPOINTS` / `ADDRS` in an older layout, still known to upgrades from it).
/// For IPv4 the address occupies the first 4 bytes of `addr` and the rest is zero. Scalar
/// padding only: zeroing byte arrays costs the datapath a `memset` call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HostKey {
    pub slot: u8,
    pub family: u8,
    pub _pad: u16,
    pub addr: [u8; 16],
}

impl HostKey {
    pub const fn new(slot: u8, family: u8, addr: [u8; 16]) -> Self {
        HostKey {
            slot,
            family,
            _pad: 0,
            addr,
        }
    }

    /// The full-length ipcache key of the same address.
    pub const fn to_ipcache(&self) -> IpcacheKey {
        if self.family == FAMILY_V4 {
            let a = self.addr;
            IpcacheKey::v4(self.slot, [a[0], a[1], a[2], a[3]], 32)
        } else {
            IpcacheKey::v6(self.slot, self.addr, 128)
        }
    }
}

/// Odd multiplier with well-spread bits (2^64 / golden ratio), a bijection on 64-bit words:
/// [`addr_tag`]'s and the datapath's flow cache hash.
pub const TAG_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// A 32-bit digest of an address's two native-endian 64-bit words `(a0, a1)`:
/// `x = a0 ^ a1 * TAG_MUL`, folded to 32 bits. For IPv4 (`a1 = 0`, `a0 < 2^32`) it is the
/// address itself; for IPv6 the multiply mixes the interface identifier into every bit, so
/// structured numbering (words that differ by the same bits) does not collide the way a plain
/// XOR of the words would. Computed the same way by the agent (from bytes) and the datapath
/// (from the two words it parses into), see [`tag_words`].
#[inline(always)]
pub const fn addr_tag(addr: &[u8; 16]) -> u32 {
    let [a0, a1] = addr_words(addr);
    tag_words(a0, a1)
}

/// The slot of a per-CPU direct-mapped cache (flow cache, decision cache) for a key of two
/// addresses' words and one more word, before the mask: multiplicative hashing (the high
/// bits of a product mix every bit of the multiplicand), two rounds so both addresses and
/// `meta` count.
#[inline(always)]
pub const fn cache_index(a: &[u64; 2], b: &[u64; 2], meta: u64) -> u32 {
    let x = (a[0] ^ a[1]).wrapping_mul(TAG_MUL) ^ b[0] ^ b[1] ^ meta;
    (x.wrapping_mul(TAG_MUL) >> 32) as u32
}

/// The address's two native-endian 64-bit words, as the datapath holds them.
#[inline(always)]
pub const fn addr_words(addr: &[u8; 16]) -> [u64; 2] {
    // SAFETY: same size, every bit pattern is a valid u64.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(*addr) }
}

/// [`addr_tag`] of an address held as its two native-endian words.
#[inline(always)]
pub const fn tag_words(a0: u64, a1: u64) -> u32 {
    let x = a0 ^ a1.wrapping_mul(TAG_MUL);
    (x ^ (x >> 32)) as u32
}

/// Another address with the same [`addr_tag`] as the IPv6 address `addr` (the same first 8
/// bytes, `d != 0` picks which): for tests of how tag collisions are handled.
pub const fn tag_twin(addr: &[u8; 16], d: u32) -> [u8; 16] {
    // Inverse of TAG_MUL modulo 2^64 (Newton's iteration doubles the correct bits each step).
    let mut inv = TAG_MUL;
    let mut i = 0;
    while i < 6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(TAG_MUL.wrapping_mul(inv)));
        i += 1;
    }
    let [_, a1] = addr_words(addr);
    // x ^ D with D's halves equal folds to the same tag.
    let delta = ((d as u64) << 32) | d as u64;
    let b1 = (a1.wrapping_mul(TAG_MUL) ^ delta).wrapping_mul(inv);
    let b = b1.to_ne_bytes();
    [
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7], b[0], b[1], b[2],
        b[3], b[4], b[5], b[6], b[7],
    ]
}

/// Key of `LOCAL_TABLE` and `HOST_TABLE` (and of the `LOCAL_ADDRS` / `HOST_ADDRS` hash maps
/// before them): 8 bytes, one word to hash and compare (as a hash map key, a 20-byte key
/// measured about 10 ns slower per lookup). Exact for
/// IPv4 (the tag is the address); for IPv6 the value carries the full address, the datapath
/// compares it, and the agent leaves an address whose tag another address of the same slot and
/// family already uses to the `IPCACHE` trie, which the datapath consults on a mismatch. One
/// code path for both families: a map per family doubled the verifier's walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AddrKey {
    pub slot: u8,
    pub family: u8,
    pub _pad: u16,
    pub tag: u32,
}

impl AddrKey {
    #[inline(always)]
    pub const fn new(slot: u8, family: u8, addr: &[u8; 16]) -> Self {
        AddrKey {
            slot,
            family,
            _pad: 0,
            tag: addr_tag(addr),
        }
    }
}

/// A `LOCAL_TABLE` / `HOST_TABLE` value: the full address the entry is for, then the value.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Tagged<V> {
    pub addr: [u8; 16],
    pub v: V,
}

/// Cells per bucket of an address table (`LOCAL_TABLE`, `HOST_TABLE`).
pub const TABLE_WAYS: usize = 4;

/// An address table's key as one word. Never zero for a real key (an address key has its
/// family): an all-zero cell is empty.
pub trait TableKey: Copy {
    fn table_word(&self) -> u64;
}

impl TableKey for AddrKey {
    #[inline(always)]
    fn table_word(&self) -> u64 {
        self.slot as u64
            | (self.family as u64) << 8
            | (self._pad as u64) << 16
            | (self.tag as u64) << 32
    }
}

/// One entry of an address table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cell<K, V> {
    pub key: K,
    pub value: V,
}

/// An address table's array element: a key lives in one of the [`TABLE_WAYS`] cells of one of its
/// two buckets ([`table_buckets`]).
pub type Bucket<K, V> = [Cell<K, V>; TABLE_WAYS];

/// The two candidate buckets (out of `buckets`, a power of two: one slot's half of the array)
/// of a key given as its [`TableKey::table_word`]: the low and high halves of a full 64-bit
/// mix (MurmurHash3's finalizer), so every key bit moves both. Shared by the agent, which
/// places every key in one of them, and the datapath, which looks only there.
#[inline(always)]
pub const fn table_buckets(w: u64, buckets: u32) -> [u32; 2] {
    let mut x = w;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    let m = buckets.wrapping_sub(1);
    [x as u32 & m, (x >> 32) as u32 & m]
}

/// Buckets per slot of an address table of `capacity` entries (both slots, like the hash
/// maps it replaces): a power of two, with four cells per bucket, so a slot holding its share (half
/// the capacity) is at most half full, where two-choice four-way placement never fails in
/// practice. The array holds two slots of this many buckets.
pub const fn table_buckets_per_slot(capacity: u32) -> u32 {
    let cells = if capacity < 4 { 4 } else { capacity };
    (cells / TABLE_WAYS as u32).next_power_of_two()
}

/// The port bits a policy prefix length keeps (88: none, 104: all).
pub const fn policy_port_mask(len: u32) -> u16 {
    if len <= POLICY_PREFIX_ANY_PORT {
        0
    } else if len >= POLICY_PREFIX_FULL {
        u16::MAX
    } else {
        u16::MAX << (POLICY_PREFIX_FULL - len)
    }
}

/// Bit of a policy prefix length in [`PolicyLens`] masks: 80 -> bit 0, 88..=104 -> bits
/// 1..=17, so a higher bit is a longer prefix.
pub const fn policy_len_bit(len: u32) -> Option<u32> {
    if len == POLICY_PREFIX_ANY_PROTO {
        Some(0)
    } else if len >= POLICY_PREFIX_ANY_PORT && len <= POLICY_PREFIX_FULL {
        Some(len - POLICY_PREFIX_ANY_PORT + 1)
    } else {
        None
    }
}

/// Inverse of [`policy_len_bit`].
pub const fn policy_bit_len(bit: u32) -> u32 {
    if bit == 0 {
        POLICY_PREFIX_ANY_PROTO
    } else {
        POLICY_PREFIX_ANY_PORT + bit - 1
    }
}

/// Number of [`policy_len_bit`] bits.
pub const POLICY_LEN_BITS: u32 = 18;

/// Which prefix lengths ([`policy_len_bit`] bits) a subject's `POLICY_HASH` entries use in one
/// direction, for specific peer classes and for [`ANY_PEER`]: the datapath probes only those.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyLens {
    pub peer_lens: u32,
    pub any_lens: u32,
}

/// `LOCAL_TABLE` value (in a [`Tagged`]): everything the datapath needs about the local side
/// of a new flow in one lookup: the ipcache entry of the address (always [`EP_LOCAL`]) and,
/// per direction (`DIR_*` index), the prefix lengths its subject class's policy entries use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointValue {
    pub ip: IpcacheValue,
    pub lens: [PolicyLens; 2],
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
///
/// Map sync writes the whole value with one `bpf_map_update_elem`. The program derives the
/// live slot from `generation & 1` (one aligned 8-byte word, never torn), so it can never pair
/// the slot of one Plan with the generation of another; `slot` mirrors it for humans/tools.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Slot (0 or 1) whose ipcache and policy entries are live; always `generation & 1`.
    pub slot: u8,
    pub _pad: [u8; 3],
    /// `CFG_*` flags.
    pub flags: u32,
    /// Monotonic Plan generation; conntrack entries remember the one they were checked under.
    pub generation: u64,
    /// Verdict events each CPU may emit per second (token bucket refill rate); 0: no events.
    pub events_per_sec: u32,
    /// Token bucket depth (burst) per CPU.
    pub events_burst: u32,
}

impl Config {
    /// The slot a generation lives in.
    pub const fn slot_of(generation: u64) -> u8 {
        (generation & 1) as u8
    }
}

/// [`Config::flags`]: drop traffic of a local address that has no endpoint entry.
pub const CFG_FAIL_CLOSED_UNKNOWN: u32 = 1 << 0;
/// [`Config::flags`]: the maps hold a complete Plan (set after the first sync).
pub const CFG_READY: u32 = 1 << 1;
/// [`Config::flags`]: also emit events for allowed new flows (denies always emit).
pub const CFG_EVENTS_ALLOW: u32 = 1 << 2;
/// [`Config::flags`]: deliver same-node TCP flows straight to the receiving pod's veth
/// (skipping the node's IP stack and netfilter; see the datapath's `deliver`).
pub const CFG_DIRECT: u32 = 1 << 3;

/// Words of the `POD_VETHS` bitmap (bit `i % 64` of word `i / 64`: interface index `i` is a
/// pod veth with netward's programs). Interfaces with a higher index are never delivered to
/// directly (they take the node's path).
pub const POD_VETH_WORDS: u32 = 16384;

impl IpcacheKey {
    /// Bytes after `prefixlen` (the LPM trie's data part).
    pub const DATA_LEN: usize = 20;

    /// The LPM data part, as laid out in memory after `prefixlen`.
    pub const fn lpm_data(&self) -> [u8; Self::DATA_LEN] {
        let mut d = [0u8; Self::DATA_LEN];
        d[0] = self.slot;
        d[1] = self.family;
        let mut i = 0;
        while i < 16 {
            d[2 + i] = self.addr[i];
            i += 1;
        }
        d
    }

    /// Inverse of [`IpcacheKey::lpm_data`].
    pub const fn from_lpm(prefixlen: u32, d: [u8; Self::DATA_LEN]) -> Self {
        let mut addr = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            addr[i] = d[2 + i];
            i += 1;
        }
        IpcacheKey {
            prefixlen,
            slot: d[0],
            family: d[1],
            addr,
            _pad: [0; 2],
        }
    }
}

impl PolicyKey {
    /// Bytes after `prefixlen` (the LPM trie's data part).
    pub const DATA_LEN: usize = 16;

    pub const fn lpm_data(&self) -> [u8; Self::DATA_LEN] {
        [
            self.slot,
            self.dir,
            self.subject[0],
            self.subject[1],
            self.subject[2],
            self.subject[3],
            self.peer[0],
            self.peer[1],
            self.peer[2],
            self.peer[3],
            self.proto,
            self.port[0],
            self.port[1],
            0,
            0,
            0,
        ]
    }

    pub const fn from_lpm(prefixlen: u32, d: [u8; Self::DATA_LEN]) -> Self {
        PolicyKey {
            prefixlen,
            slot: d[0],
            dir: d[1],
            subject: [d[2], d[3], d[4], d[5]],
            peer: [d[6], d[7], d[8], d[9]],
            proto: d[10],
            port: [d[11], d[12]],
            _pad: [0; 3],
        }
    }
}

/// Conntrack key (`CT_PAIRS`): the flow's two ends in a canonical order, the lower
/// (address words, port) first, whichever end sent the packet. The two veths of a same-node
/// pod pair therefore find ONE entry: the receiver's program reads the line the sender's just
/// wrote, instead of a cold line of its own, and each end keeps its own verdict in the value
/// ([`CtPairValue::sides`], `sides[0]` for `lo`). IPv4 addresses fill the first 4 bytes (rest
/// zero); `family` keeps them apart from IPv6 addresses of the same bytes. Ports are host byte
/// order; for ICMP echo both hold the echo identifier; other port-less protocols use 0.
/// The order is [`ends_swapped`]'s: the address as two native-endian `u64` words, then the
/// port (any total order would do; this one is a few instructions in the programs).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtPairKey {
    pub lo: [u8; 16],
    pub hi: [u8; 16],
    pub lo_port: u16,
    pub hi_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl CtPairKey {
    /// The key of a flow seen from `local` (the pod behind a veth) and which side `local` is
    /// (0: `lo`, 1: `hi`). Ends that compare equal (a flow from an address and port to
    /// itself) are side 0 at both hooks, as the one veth's two hooks shared one entry before.
    pub fn new(
        local: [u8; 16],
        lport: u16,
        remote: [u8; 16],
        rport: u16,
        proto: u8,
        family: u8,
    ) -> (CtPairKey, usize) {
        let side = ends_swapped(&addr_words(&local), lport, &addr_words(&remote), rport) as usize;
        let (lo, hi, lo_port, hi_port) = if side == 0 {
            (local, remote, lport, rport)
        } else {
            (remote, local, rport, lport)
        };
        let k = CtPairKey {
            lo,
            hi,
            lo_port,
            hi_port,
            proto,
            family,
            _pad: [0; 2],
        };
        (k, side)
    }
}

/// Whether a flow seen from its `local` end has that end second in its [`CtPairKey`]: the
/// order of the ends, (address as its two native-endian words, port), lower first. The one
/// definition of that order, for the programs and the agent alike.
#[inline(always)]
pub fn ends_swapped(local: &[u64; 2], lport: u16, remote: &[u64; 2], rport: u16) -> bool {
    (local[0], local[1], lport) > (remote[0], remote[1], rport)
}

/// One end's verdict in a [`CtPairValue`]: the hooks of the veth of that end (a local pod)
/// admitted the flow under `generation`. `flags` holds [`CT_TRACKED`] (unset: this end has no
/// verdict; it is not a local pod, or its veth has not seen the flow yet), [`CT_ORIGIN_EGRESS`]
/// and [`CT_FROM_HOST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtSide {
    /// `Config::generation` this end last verified the flow under.
    pub generation: u64,
    /// Policy attribution of the admitting decision (0: not isolated / not enforced).
    pub policy: u32,
    pub rule: u16,
    pub flags: u16,
}

/// Conntrack value (`CT_PAIRS`): the flow's lifetime, shared by its ends, and each end's
/// verdict. An entry always has at least one end [`CT_TRACKED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtPairValue {
    /// `bpf_ktime_get_coarse_ns()` after which the entry is stale (treated as absent).
    pub expires_ns: u64,
    /// [`CT_CLOSING`] or 0.
    pub flags: u16,
    pub _pad: [u8; 6],
    /// `sides[0]`: the key's `lo` end, `sides[1]`: `hi`.
    pub sides: [CtSide; 2],
}

/// [`CtSide::flags`]: this end's veth admitted the flow (the side holds a verdict).
pub const CT_TRACKED: u16 = 1 << 4;

/// Key of the `CT` map of agents before [`CtPairKey`] (migrated, see the agent's `ct_migrate`),
/// in the canonical orientation of the veth that tracks the flow:
/// `local` is the pod behind that veth (source on its egress hook, destination on its ingress
/// hook), `remote` the other side. Both hooks of a veth, and both directions of a flow, find
/// the same entry with one lookup; a same-node pod pair still gets one entry per veth (their
/// `local` differs), so both sides are checked. IPv4 addresses fill the first 4 bytes (rest
/// zero); `family` keeps them apart from IPv6 addresses of the same bytes. Ports are host byte
/// order; for ICMP echo both hold the echo identifier; other port-less protocols use 0. The
/// direction the flow was opened in is [`CT_ORIGIN_EGRESS`] in the value.
///
/// One map for both families: a map per family doubled the verifier's walks of the policy
/// check behind the lookup; a 16-byte key of address tags (IPv6 compared in the value) saved
/// only 2-5 ns per packet (see DATAPATH.md).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtFlowKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub lport: u16,
    pub rport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Key of the `CONNTRACK` map of agents before [`CtFlowKey`]: the tuple as first seen
/// plus the admitting hook's `DIR_*`. Read only when upgrading from such an agent (its entries
/// are converted into `CT`); the programs no longer use it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// `DIR_*` of the hook that admitted the flow (the local pod's point of view).
    pub dir: u8,
    pub _pad: u8,
}

/// Conntrack value of the older agents' maps (`CT`, `CONNTRACK`; migrated into `CT_PAIRS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// `Config::generation` the flow was last verified under.
    pub generation: u64,
    /// `bpf_ktime_get_ns()` after which the entry is stale (treated as absent).
    pub expires_ns: u64,
    /// Policy attribution of the admitting decision (0: not isolated / not enforced).
    pub policy: u32,
    pub rule: u16,
    /// `CT_*` flags.
    pub flags: u16,
}

/// [`CtValue::flags`]: a reply was seen. No longer written (the flow cache answers replies
/// from the entry's creation on) nor read; entries of older builds may carry it.
pub const CT_SEEN_REPLY: u16 = 1 << 0;
/// [`CtPairValue::flags`] (and the older [`CtValue::flags`]): a TCP FIN or RST was seen; the
/// entry lives [`CT_TIMEOUT_CLOSING_S`].
pub const CT_CLOSING: u16 = 1 << 1;
/// [`CtSide::flags`] (and the older [`CtValue::flags`]): the flow was opened by the pod's own
/// node (a locally generated packet into the pod, `reason::FROM_HOST`): always allowed, never
/// re-checked against a Plan.
pub const CT_FROM_HOST: u16 = 1 << 2;
/// [`CtSide::flags`] (and the older [`CtValue::flags`]): the flow was opened by the local pod
/// (its egress hook admitted it);
/// unset: opened towards the pod (ingress hook). A packet at the hook of the origin direction
/// is `established`, at the other hook a `reply`; a re-check uses the origin direction.
pub const CT_ORIGIN_EGRESS: u16 = 1 << 3;
/// [`CtPairValue::flags`]: the flow is delivered between two local pods' veths directly
/// (`CFG_DIRECT`): its opening SYN was, so the node's netfilter never saw it and its other
/// packets must not go that way either (netfilter would meet a flow it does not know, and a
/// flow netfilter translated (a Service's) is never marked).
pub const CT_DIRECT: u16 = 1 << 5;

/// Default slots of each CPU's flow cache in front of `CT` (a power of two; 64 bytes each).
/// Small on purpose: 16 KiB per CPU stays in the CPU's caches. Measured in a lab with real
/// connections, 256 slots served a persistent connection as well as 4096 did, and cost short
/// connections ~11 % less program time (4096 slots scatter each new flow's probe and fill
/// over 256 KiB, mostly cold lines). With many concurrent flows a CPU's flows collide more;
/// a collision costs a `CT` read and a refill (6-8 ns over no cache at all).
pub const FLOW_CACHE_DEFAULT_SLOTS: u32 = 256;
/// Default slots of each CPU's decision cache in front of the policy maps (a power of two;
/// 64 bytes each): one per recent (direction, local, peer, protocol, port) question.
pub const DECISION_CACHE_DEFAULT_SLOTS: u32 = 256;
/// How long a flow cache entry stands in for `CT` (and a decision cache entry for the policy
/// maps), in jiffies: at most 1 s whatever the
/// kernel's HZ (100 to 1000).
pub const FLOW_CACHE_WINDOW_JIFFIES: u64 = 100;

/// Conntrack lifetimes, refreshed by every packet that reads the entry (the flow cache sends a
/// busy flow there about once a second per CPU; the LRU evicts earlier under pressure).
pub const CT_TIMEOUT_TCP_S: u64 = 6 * 3600;
pub const CT_TIMEOUT_OTHER_S: u64 = 60;
pub const CT_TIMEOUT_CLOSING_S: u64 = 10;

/// Fragment tracking key: a datagram's identity. The first fragment (which carries the
/// ports) records them; later fragments reuse them to find their flow.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub dir: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    pub expires_ns: u64,
}

/// Lifetime of a fragment entry.
pub const FRAG_TIMEOUT_S: u64 = 30;

/// Verdicts in [`Event::verdict`].
pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DROP: u8 = 2;

/// Why a packet got its verdict ([`Event::reason`]); also counted per direction
/// ([`counter_index`]).
pub mod reason {
    /// Allowed by a policy rule (new flow).
    pub const POLICY_ALLOW: u8 = 0;
    /// The local pod is not isolated in this direction.
    pub const NOT_ISOLATED: u8 = 1;
    /// The local address has no endpoint entry and the config fails open.
    pub const UNKNOWN_ENDPOINT_OPEN: u8 = 2;
    /// A packet of an established flow (forward direction).
    pub const ESTABLISHED: u8 = 3;
    /// A reply of a tracked flow.
    pub const REPLY: u8 = 4;
    /// An ICMP error about a tracked flow.
    pub const RELATED: u8 = 5;
    /// Not IPv4/IPv6 (ARP, LLDP, ...): NetworkPolicy does not cover it.
    pub const NON_IP: u8 = 6;
    /// A non-first fragment of an admitted datagram, or of a pod not isolated.
    pub const FRAGMENT: u8 = 7;
    /// ICMPv6 neighbour/router discovery and MLD: IPv6's ARP, passed like ARP.
    pub const NEIGHBOR_DISCOVERY: u8 = 8;
    /// A packet into the pod that its own node originated (`__sk_buff.ingress_ifindex == 0`:
    /// kubelet probes, hostNetwork pods, the node): NetworkPolicy always allows it.
    pub const FROM_HOST: u8 = 9;
    /// `ESTABLISHED`, answered by the flow cache without a `CT` lookup: the same verdict, named
    /// `established` everywhere; its own code only so that the counters show the cache's share.
    pub const ESTABLISHED_CACHED: u8 = 10;
    /// `REPLY`, answered by the flow cache (named `reply`, see `ESTABLISHED_CACHED`).
    pub const REPLY_CACHED: u8 = 11;
    /// First reason that drops.
    pub const FIRST_DROP: u8 = 16;
    /// Isolated and no rule allows the flow.
    pub const POLICY_DENY: u8 = 16;
    /// The local address has no endpoint entry and the config fails closed.
    pub const UNKNOWN_ENDPOINT: u8 = 17;
    /// Headers truncated or inconsistent.
    pub const MALFORMED: u8 = 18;
    /// A non-first fragment whose first fragment was not seen (isolated pod).
    pub const FRAGMENT_UNTRACKED: u8 = 19;
    /// An established flow the current Plan no longer allows (re-checked after a change).
    pub const REVOKED: u8 = 20;
    /// No Plan installed yet (`CFG_READY` unset): IP traffic is dropped.
    pub const NOT_READY: u8 = 21;
    /// Egress to a Service virtual address whose endpoints are not all allowed (or it has none).
    pub const SERVICE_DENY: u8 = 22;
    /// One past the largest reason.
    pub const COUNT: u8 = 23;

    /// Short name for metrics and logs.
    pub const fn name(reason: u8) -> &'static str {
        match reason {
            POLICY_ALLOW => "policy_allow",
            NOT_ISOLATED => "not_isolated",
            UNKNOWN_ENDPOINT_OPEN => "unknown_endpoint_open",
            ESTABLISHED | ESTABLISHED_CACHED => "established",
            REPLY | REPLY_CACHED => "reply",
            RELATED => "related",
            NON_IP => "non_ip",
            FRAGMENT => "fragment",
            NEIGHBOR_DISCOVERY => "neighbor_discovery",
            FROM_HOST => "from_host",
            POLICY_DENY => "policy_deny",
            UNKNOWN_ENDPOINT => "unknown_endpoint",
            MALFORMED => "malformed",
            FRAGMENT_UNTRACKED => "fragment_untracked",
            REVOKED => "revoked",
            NOT_READY => "not_ready",
            SERVICE_DENY => "service_deny",
            _ => "unknown",
        }
    }
}

/// Per-CPU counter indices (`COUNTERS` array of u64).
/// Events not emitted because the CPU's token bucket was empty.
pub const COUNTER_EVENTS_RATE_LIMITED: u32 = 0;
/// Events not emitted because the ring buffer was full.
pub const COUNTER_EVENTS_LOST: u32 = 1;
/// Events emitted.
pub const COUNTER_EVENTS_SENT: u32 = 2;
/// Policy decisions the per-CPU decision cache answered without the policy lookups.
pub const COUNTER_DECISION_CACHE_HITS: u32 = 3;
/// Packets delivered straight to a local pod's veth (`CFG_DIRECT`).
pub const COUNTER_DIRECT: u32 = 4;
/// Packets of a directly delivered flow that took the node's path instead (no route to a pod
/// veth at that moment, TTL exhausted).
pub const COUNTER_DIRECT_FALLBACK: u32 = 5;
/// Packets by direction and reason: one counter per packet at
/// [`counter_index`]`(dir, reason)`. Allowed/denied totals are sums (reasons below
/// `reason::FIRST_DROP` pass), so the hot path bumps a single counter.
pub const COUNTER_REASON_BASE: u32 = 6;
/// Size of the `COUNTERS` array.
pub const COUNTER_COUNT: u32 = COUNTER_REASON_BASE + 2 * reason::COUNT as u32;

/// The `COUNTERS` index of packets with `reason` at the hook of direction `dir` (`DIR_*`).
#[inline(always)]
pub const fn counter_index(dir: u8, reason: u8) -> u32 {
    COUNTER_REASON_BASE + dir as u32 * reason::COUNT as u32 + reason as u32
}

/// A verdict event in the `EVENTS` ring buffer.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// `DIR_*` from the local pod's point of view.
    pub dir: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub reason: u8,
    pub _pad: u8,
    /// Attribution of an allow ([`PolicyValue`]); 0 otherwise.
    pub rule: u16,
    pub policy: u32,
    /// [`IpcacheValue::endpoint`] of the local pod (0: unknown).
    pub endpoint: u32,
    /// Interface the program ran on.
    pub ifindex: u32,
    pub generation: u64,
    pub ktime_ns: u64,
}

/// Per-CPU token bucket state limiting events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    /// Tokens, scaled by 1e9 (token-nanoseconds) to refill with integer arithmetic.
    pub tokens: u64,
    pub last_ns: u64,
}

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
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtFlowKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for CtPairKey {}
    unsafe impl aya::Pod for CtSide {}
    unsafe impl aya::Pod for CtPairValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for ServicePolicyKey {}
    unsafe impl aya::Pod for PolicyHashKey {}
    unsafe impl aya::Pod for HostKey {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for Tagged<EndpointValue> {}
    unsafe impl aya::Pod for Tagged<IpcacheValue> {}
    unsafe impl aya::Pod for Cell<AddrKey, Tagged<EndpointValue>> {}
    unsafe impl aya::Pod for Cell<AddrKey, Tagged<IpcacheValue>> {}
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
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(size_of::<CtKey>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<CtFlowKey>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<CtValue>(), 8 + 8 + 4 + 2 + 2);
        assert_eq!(size_of::<CtPairKey>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<CtSide>(), 8 + 4 + 2 + 2);
        assert_eq!(size_of::<CtPairValue>(), 8 + 2 + 6 + 2 * 16);
        assert_eq!(size_of::<FragKey>(), 16 + 16 + 4 + 4);
        assert_eq!(size_of::<FragValue>(), 16);
        assert_eq!(size_of::<Event>(), 16 + 16 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 8);
        assert_eq!(size_of::<RateState>(), 16);
        assert_eq!(size_of::<IpcacheKey>(), 4 + IpcacheKey::DATA_LEN);
        assert_eq!(size_of::<PolicyKey>(), 4 + PolicyKey::DATA_LEN);
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

    #[test]
    fn lpm_data_round_trips() {
        let k = PolicyKey::new(
            POLICY_PREFIX_ANY_PORT,
            1,
            DIR_INGRESS,
            0x01020304,
            5,
            17,
            53,
        );
        assert_eq!(PolicyKey::from_lpm(k.prefixlen, k.lpm_data()), k);
        let i = IpcacheKey::v4(1, [10, 1, 2, 3], 24);
        assert_eq!(IpcacheKey::from_lpm(i.prefixlen, i.lpm_data()), i);
        assert_eq!(i.lpm_data()[..6], [1, FAMILY_V4, 10, 1, 2, 3]);
    }

    #[test]
    fn policy_hash_key_packs_and_unpacks() {
        for (len, port) in [
            (POLICY_PREFIX_FULL, 8080),
            (POLICY_PREFIX_FULL - 3, 8080 & !7),
            (POLICY_PREFIX_ANY_PORT, 0),
            (POLICY_PREFIX_ANY_PROTO, 0),
        ] {
            let proto = if len == POLICY_PREFIX_ANY_PROTO {
                0
            } else {
                PROTO_TCP
            };
            let k = PolicyKey::new(len, 1, DIR_EGRESS, CLASS_LIMIT - 1, 77, proto, port);
            let h = PolicyHashKey::from_policy(&k).unwrap();
            assert_eq!(h.to_policy(), k);
            assert_eq!(h.slot(), 1);
            assert_eq!(h.with_slot(0).to_policy().slot, 0);
            // What the datapath builds for any port in the block finds the same key.
            assert_eq!(
                PolicyHashKey::new(
                    len,
                    1,
                    DIR_EGRESS,
                    CLASS_LIMIT - 1,
                    77,
                    PROTO_TCP,
                    port | (5 * (len < POLICY_PREFIX_FULL) as u16)
                ),
                h
            );
        }
        let too_big = PolicyKey::new(POLICY_PREFIX_FULL, 0, 0, CLASS_LIMIT, 1, PROTO_TCP, 1);
        assert!(PolicyHashKey::from_policy(&too_big).is_none());
        assert!(PolicyHashKey::from_policy(&PolicyKey::new(84, 0, 0, 1, 1, 0, 0)).is_none());
        assert_eq!(core::mem::size_of::<PolicyHashKey>(), 12);
        assert_eq!(core::mem::size_of::<HostKey>(), 20);
        assert_eq!(core::mem::size_of::<AddrKey>(), 8);
        // An IPv4 address is its own tag: exact keys.
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(addr_tag(&a), u32::from_ne_bytes([10, 1, 2, 3]));
        assert_eq!(AddrKey::new(1, FAMILY_V4, &a).tag, addr_tag(&a));
        let v6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        for d in [1, 7, u32::MAX] {
            let t = tag_twin(&v6, d);
            assert_ne!(t, v6);
            assert_eq!(addr_tag(&t), addr_tag(&v6));
        }
        // Structured neighbours do not collide (a plain XOR of the words would for these).
        let mut n = v6;
        n[7] = 1;
        n[11] = 1;
        assert_ne!(addr_tag(&n), addr_tag(&v6));
        assert_eq!(core::mem::size_of::<Tagged<EndpointValue>>(), 48);
        assert_eq!(core::mem::size_of::<Tagged<IpcacheValue>>(), 32);
    }

    #[test]
    fn counter_indices_are_distinct_and_in_range() {
        let mut seen = [false; COUNTER_COUNT as usize];
        for i in [
            COUNTER_EVENTS_RATE_LIMITED,
            COUNTER_EVENTS_LOST,
            COUNTER_EVENTS_SENT,
            COUNTER_DECISION_CACHE_HITS,
            COUNTER_DIRECT,
            COUNTER_DIRECT_FALLBACK,
        ] {
            assert!(!seen[i as usize]);
            seen[i as usize] = true;
        }
        for dir in [DIR_INGRESS, DIR_EGRESS] {
            for r in 0..reason::COUNT {
                let i = counter_index(dir, r) as usize;
                assert!(!seen[i], "index {i} used twice");
                seen[i] = true;
            }
        }
        assert_eq!(
            counter_index(DIR_EGRESS, reason::COUNT - 1),
            COUNTER_COUNT - 1
        );
    }
}

/// `SERVICES` hash key: a port of a Service virtual address, in one slot.
/// For IPv4 the address occupies the first 4 bytes of `addr` and the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceKey {
    pub slot: u8,
    pub family: u8,
    pub proto: u8,
    pub _pad: u8,
    /// Host byte order (hash key, never prefix-matched).
    pub port: u16,
    /// Scalar padding fields: zeroing a byte array costs the datapath a `memset` call.
    pub _pad2: u16,
    pub addr: [u8; 16],
}

/// `SERVICES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceValue {
    /// Index+1 of the Service port in the Plan's service port table.
    pub service_port: u32,
}

/// `SERVICE_POLICY` hash key: may this subject class connect to this Service port? Present
/// (with the attribution of the rule that allows its endpoints) only when it may.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServicePolicyKey {
    pub slot: u8,
    pub _pad: u8,
    pub _pad2: u16,
    pub subject: u32,
    pub service_port: u32,
}
