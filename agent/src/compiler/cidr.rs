//! Partition of the address space by the ipBlocks policies use.
//!
//! Every `cidr` and `except` of every ipBlock, plus the roots `0.0.0.0/0` and `::/0`, becomes
//! a prefix of the partition. For an address `x`, the LPM longest match `Q` is the longest of
//! those prefixes containing `x`; every other prefix containing `x` is an ancestor of `Q`
//! (prefixes holding one address are nested). So "block `b` contains `x`" is "`b.cidr` is on
//! `Q`'s ancestor chain and no `b.except` is": the membership of `Q` is computed once from its
//! chain and is exactly the set of ipBlocks containing any address it wins for. IPv4 and IPv6
//! are separate trees, so an IPv6 block never matches an IPv4 address.
//!
//! A prefix whose membership equals its nearest ancestor's is redundant in the LPM map (it
//! wins only for addresses the ancestor would give the same answer) and is marked so.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One prefix of the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub net: IpNet,
    /// Ids of the ipBlocks containing every address this prefix wins for, sorted.
    pub blocks: Vec<u32>,
    /// Same membership as the nearest ancestor: no LPM entry needed.
    pub redundant: bool,
}

/// The partition, with a lookup for single addresses (pod IPs).
pub(crate) struct Partition {
    /// Sorted by (family, network address, prefix length): a depth-first order.
    pub pieces: Vec<Piece>,
    /// (masked address, prefix length) -> index in `pieces`.
    by_prefix: HashMap<(IpAddr, u8), usize>,
    /// Distinct prefix lengths per family, longest first.
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
}

/// An ipBlock peer: its id and its `cidr` and `except` list.
pub(crate) struct Block<'a> {
    pub id: u32,
    pub cidr: &'a IpNet,
    pub except: &'a [IpNet],
}

fn roots() -> [IpNet; 2] {
    [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
}

impl Partition {
    pub fn new(blocks: &[Block<'_>]) -> Partition {
        // prefix -> (block ids with that cidr, block ids with that except)
        let mut marks: BTreeMap<IpNet, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for r in roots() {
            marks.entry(r).or_default();
        }
        for b in blocks {
            marks.entry(b.cidr.trunc()).or_default().0.push(b.id);
            for e in b.except {
                marks.entry(e.trunc()).or_default().1.push(b.id);
            }
        }
        let mut pieces = Vec::with_capacity(marks.len());
        // Ancestor chain of the current prefix: (net, index into pieces).
        let mut stack: Vec<(IpNet, usize)> = Vec::new();
        for net in marks.keys() {
            while stack.last().is_some_and(|(top, _)| !top.contains(net)) {
                stack.pop();
            }
            let chain = stack.iter().map(|(n, _)| n).chain(std::iter::once(net));
            let mut inside: Vec<u32> = Vec::new();
            let mut excluded: Vec<u32> = Vec::new();
            for n in chain {
                let (c, e) = &marks[n];
                inside.extend(c);
                excluded.extend(e);
            }
            inside.sort_unstable();
            inside.dedup();
            inside.retain(|id| !excluded.contains(id));
            let redundant = stack
                .last()
                .is_some_and(|&(_, parent)| pieces_blocks(&pieces, parent) == &inside[..]);
            stack.push((*net, pieces.len()));
            pieces.push(Piece {
                net: *net,
                blocks: inside,
                redundant,
            });
        }
        let mut by_prefix = HashMap::with_capacity(pieces.len());
        let (mut v4_lens, mut v6_lens) = (Vec::new(), Vec::new());
        for (i, p) in pieces.iter().enumerate() {
            by_prefix.insert((p.net.network(), p.net.prefix_len()), i);
            match p.net {
                IpNet::V4(_) => v4_lens.push(p.net.prefix_len()),
                IpNet::V6(_) => v6_lens.push(p.net.prefix_len()),
            }
        }
        for l in [&mut v4_lens, &mut v6_lens] {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }
        Partition {
            pieces,
            by_prefix,
            v4_lens,
            v6_lens,
        }
    }

    /// The piece an LPM lookup of `ip` returns (always some: the roots are present).
    pub fn lookup(&self, ip: IpAddr) -> &Piece {
        let lens = match ip {
            IpAddr::V4(_) => &self.v4_lens,
            IpAddr::V6(_) => &self.v6_lens,
        };
        for &len in lens {
            let net = IpNet::new(ip, len)
                .expect("prefix length within family")
                .trunc();
            if let Some(&i) = self.by_prefix.get(&(net.network(), len)) {
                return &self.pieces[i];
            }
        }
        unreachable!("the partition always holds the /0 roots")
    }
}

fn pieces_blocks(pieces: &[Piece], i: usize) -> &[u32] {
    &pieces[i].blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Membership of every address by brute force vs the partition's LPM answer.
    #[test]
    fn lpm_membership_equals_exact_block_set() {
        let c1 = net("10.0.0.0/8");
        let e1 = [net("10.1.0.0/16"), net("10.2.3.0/24")];
        let c2 = net("10.1.0.0/16");
        let e2 = [net("10.1.2.0/24")];
        let c3 = net("0.0.0.0/0");
        let e3 = [net("169.254.169.254/32")];
        let c4 = net("fd00::/8");
        let blocks = [
            Block {
                id: 0,
                cidr: &c1,
                except: &e1,
            },
            Block {
                id: 1,
                cidr: &c2,
                except: &e2,
            },
            Block {
                id: 2,
                cidr: &c3,
                except: &e3,
            },
            Block {
                id: 3,
                cidr: &c4,
                except: &[],
            },
        ];
        let p = Partition::new(&blocks);
        let probes = [
            "10.0.0.1",
            "10.1.0.1",
            "10.1.2.3",
            "10.2.3.4",
            "10.2.4.4",
            "11.0.0.0",
            "169.254.169.254",
            "169.254.169.253",
            "fd00::1",
            "fe80::1",
            "::",
            "0.0.0.0",
        ];
        for s in probes {
            let ip: IpAddr = s.parse().unwrap();
            let want: Vec<u32> = blocks
                .iter()
                .filter(|b| b.cidr.contains(&ip) && !b.except.iter().any(|e| e.contains(&ip)))
                .map(|b| b.id)
                .collect();
            assert_eq!(p.lookup(ip).blocks, want, "{s}");
        }
        // IPv6 root has no IPv4 block and vice versa.
        assert_eq!(
            p.lookup("2001:db8::1".parse().unwrap()).blocks,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn redundant_pieces_are_marked() {
        // Nested excepts of one block: the inner except changes nothing.
        let c = net("10.0.0.0/8");
        let e = [net("10.1.0.0/16"), net("10.1.2.0/24")];
        let c2 = net("10.1.0.0/16");
        let blocks = [
            Block {
                id: 0,
                cidr: &c,
                except: &e,
            },
            Block {
                id: 1,
                cidr: &c2,
                except: &[],
            },
        ];
        let p = Partition::new(&blocks);
        let find = |s: &str| p.pieces.iter().find(|x| x.net == net(s)).unwrap();
        assert_eq!(find("10.1.0.0/16").blocks, vec![1]);
        assert!(!find("10.1.0.0/16").redundant);
        assert_eq!(find("10.1.2.0/24").blocks, vec![1]);
        assert!(find("10.1.2.0/24").redundant);
        assert!(!find("0.0.0.0/0").redundant && !find("::/0").redundant);
    }

    #[test]
    fn host_bits_are_ignored() {
        let c = net("10.0.0.7/24");
        let p = Partition::new(&[Block {
            id: 5,
            cidr: &c,
            except: &[],
        }]);
        assert_eq!(p.lookup("10.0.0.200".parse().unwrap()).blocks, vec![5]);
    }
}
