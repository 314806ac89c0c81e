//! Port sets of one (subject class, direction, peer class) and their LPM encoding.
//!
//! The policy map's last 24 key bits are `proto(8) | port(16)`. A [`PortSet`] records, for
//! every (protocol, port), the first rule (lowest [`Attr`]) that allows it, in three layers
//! that map onto the three kinds of LPM entries:
//!
//! * `any`: every protocol and port (prefix 80);
//! * per protocol `all`: every port of TCP, UDP or SCTP (prefix 88);
//! * per protocol `ranges`: port ranges, split into prefix-aligned blocks (prefix 89..=104).
//!
//! A more specific layer is emitted only where its rule comes strictly before the rule of the
//! layer below it. The LPM longest match then returns exactly the first allowing rule, and
//! ports a covering layer already allows with an earlier rule cost no entry.
use crate::model::Protocol;

/// Attribution of an allow: (policy id = index+1, rule index). Ordered: lower is first.
pub(crate) type Attr = (u32, u16);

/// Index of a protocol in [`PortSet::protos`].
pub(crate) fn proto_index(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

/// What one rule allows, before attribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `ports` empty: every protocol and port.
    AnyProto,
    /// A port entry without a port: every port of the protocol.
    AnyPort(Protocol),
    /// Inclusive port range of the protocol (a single port is `lo == hi`).
    Range(Protocol, u16, u16),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProtoSet {
    pub all: Option<Attr>,
    pub ranges: Vec<(u16, u16, Attr)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortSet {
    pub any: Option<Attr>,
    pub protos: [ProtoSet; 3],
}

fn min_attr(slot: &mut Option<Attr>, a: Attr) {
    if slot.is_none_or(|b| a < b) {
        *slot = Some(a);
    }
}

/// One LPM entry of the proto/port part: `prefix` counts bits after the peer class
/// (0: any protocol, 8: any port of `proto`, 9..=24: a port block starting at `port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortEntry {
    pub prefix: u8,
    pub proto: u8,
    pub port: u16,
    pub attr: Attr,
}

impl PortSet {
    /// Empty the set, keeping its allocations for reuse.
    pub fn clear(&mut self) {
        self.any = None;
        for p in &mut self.protos {
            p.all = None;
            p.ranges.clear();
        }
    }

    pub fn add(&mut self, piece: Piece, attr: Attr) {
        match piece {
            Piece::AnyProto => min_attr(&mut self.any, attr),
            Piece::AnyPort(p) => min_attr(&mut self.protos[proto_index(p)].all, attr),
            // A range over the whole port space is "every port" (keeps LPM keys unique).
            Piece::Range(p, 0, u16::MAX) => min_attr(&mut self.protos[proto_index(p)].all, attr),
            Piece::Range(p, lo, hi) => self.protos[proto_index(p)].ranges.push((lo, hi, attr)),
        }
    }

    /// The LPM entries encoding this set, in a deterministic order.
    pub fn entries(&self) -> Vec<PortEntry> {
        let mut out = Vec::new();
        if let Some(a) = self.any {
            out.push(PortEntry {
                prefix: 0,
                proto: 0,
                port: 0,
                attr: a,
            });
        }
        for (proto, set) in Protocol::ALL.iter().zip(&self.protos) {
            let mut base = self.any;
            if let Some(a) = set.all {
                if base.is_none_or(|b| a < b) {
                    out.push(PortEntry {
                        prefix: 8,
                        proto: proto.number(),
                        port: 0,
                        attr: a,
                    });
                    base = Some(a);
                }
            }
            for (lo, hi, a) in min_pieces(&set.ranges) {
                if base.is_some_and(|b| b <= a) {
                    continue;
                }
                for (start, bits) in prefix_blocks(lo, hi) {
                    out.push(PortEntry {
                        prefix: 8 + bits,
                        proto: proto.number(),
                        port: start,
                        attr: a,
                    });
                }
            }
        }
        out
    }
}

/// Disjoint, sorted, maximal pieces of the union of `ranges`, each with the lowest attribution
/// among the ranges covering it.
pub(crate) fn min_pieces(ranges: &[(u16, u16, Attr)]) -> Vec<(u16, u16, Attr)> {
    if ranges.is_empty() {
        return Vec::new();
    }
    // Elementary interval boundaries (u32: `hi + 1` may be 65536).
    let mut cuts: Vec<u32> = ranges
        .iter()
        .flat_map(|&(lo, hi, _)| [lo as u32, hi as u32 + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u16, u16, Attr)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let best = ranges
            .iter()
            .filter(|&&(l, h, _)| l as u32 <= lo && hi <= h as u32)
            .map(|&(_, _, a)| a)
            .min();
        let Some(a) = best else { continue };
        match out.last_mut() {
            Some(last) if last.2 == a && last.1 as u32 + 1 == lo => last.1 = hi as u16,
            _ => out.push((lo as u16, hi as u16, a)),
        }
    }
    out
}

/// The minimal list of prefix-aligned blocks covering exactly `lo..=hi`, as
/// (first port, significant bits of the 16-bit port).
pub(crate) fn prefix_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // Largest aligned block starting at `lo` ...
        let mut size_log = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        // ... that does not pass `hi`.
        while lo + (1u32 << size_log) - 1 > hi {
            size_log -= 1;
        }
        out.push((lo as u16, 16 - size_log as u8));
        lo += 1u32 << size_log;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u8)]) -> Vec<u32> {
        let mut v: Vec<u32> = blocks
            .iter()
            .flat_map(|&(s, bits)| {
                let size = 1u32 << (16 - bits as u32);
                assert_eq!(s as u32 % size, 0, "block {s}/{bits} is not aligned");
                s as u32..s as u32 + size
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn blocks_cover_ranges_exactly_and_minimally() {
        for &(lo, hi, n) in &[
            (80u16, 80u16, 1usize),
            (0, 65535, 1),
            (1, 65535, 16),
            (8000, 8999, 6),
            (1024, 2047, 1),
            (32768, 65535, 1),
            (65535, 65535, 1),
        ] {
            let b = prefix_blocks(lo, hi);
            assert_eq!(covered(&b), (lo as u32..=hi as u32).collect::<Vec<_>>());
            assert_eq!(b.len(), n, "{lo}-{hi}: {b:?}");
        }
        // Worst case for 16 bits: 2*16-2 blocks.
        assert_eq!(prefix_blocks(1, 65534).len(), 30);
    }

    #[test]
    fn min_pieces_keeps_first_rule_per_port() {
        let p = min_pieces(&[(80, 90, (2, 0)), (85, 100, (1, 3)), (101, 110, (1, 3))]);
        assert_eq!(p, vec![(80, 84, (2, 0)), (85, 110, (1, 3))]);
    }

    #[test]
    fn layers_only_where_earlier_rule() {
        let mut s = PortSet::default();
        s.add(Piece::AnyProto, (2, 0));
        s.add(Piece::Range(Protocol::Tcp, 80, 80), (1, 0)); // earlier: emitted
        s.add(Piece::Range(Protocol::Tcp, 443, 443), (3, 0)); // later: covered by `any`
        s.add(Piece::AnyPort(Protocol::Udp), (5, 1)); // later: covered
        let e = s.entries();
        assert_eq!(
            e,
            vec![
                PortEntry {
                    prefix: 0,
                    proto: 0,
                    port: 0,
                    attr: (2, 0)
                },
                PortEntry {
                    prefix: 24,
                    proto: 6,
                    port: 80,
                    attr: (1, 0)
                },
            ]
        );
    }

    #[test]
    fn full_range_is_any_port() {
        let mut s = PortSet::default();
        s.add(Piece::Range(Protocol::Sctp, 0, 65535), (1, 0));
        assert_eq!(s.entries().len(), 1);
        assert_eq!(s.entries()[0].prefix, 8);
    }
}
