//! Port sets: the union of what several rules allow, with the lowest rule reference per port,
//! turned into LPM port prefixes.

use std::collections::BTreeMap;

/// A port prefix inside a port set: protocol `proto` (`None`: every protocol and port, then
/// `port` and `len` are 0) and the first `len` bits of the 16-bit `port`. `len` 0 with a
/// protocol means every port of that protocol, including port 0 (the lookup of a non-first
/// fragment, whose port is unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPrefix {
    pub proto: Option<u8>,
    pub port: u16,
    pub len: u8,
}

impl PortPrefix {
    /// First and last port covered.
    pub fn range(&self) -> (u16, u16) {
        let size = 1u32 << (16 - u32::from(self.len));
        (self.port, (u32::from(self.port) + size - 1) as u16)
    }

    /// LPM `prefixlen` of this entry in `pal_port_v1`.
    pub fn lpm_prefixlen(&self) -> u32 {
        match self.proto {
            None => palisade_common::policy::PORT_KEY_ANY_PROTO_BITS,
            Some(_) => palisade_common::policy::PORT_KEY_ANY_PORT_BITS + u32::from(self.len),
        }
    }
}

/// Port prefixes allowed with one peer prefix, each with the first (lowest) rule reference that
/// allows it. Empty: nothing is allowed (a deny hole). `Ord` + `Hash` so the agent can intern
/// identical sets under one `portset_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSet(pub BTreeMap<PortPrefix, u32>);

impl PortSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The LPM answer for (`proto`, `port`), as the datapath's second lookup gives it.
    pub fn lookup(&self, proto: u8, port: u16) -> Option<u32> {
        for len in (0..=16u8).rev() {
            let mask = if len == 0 { 0 } else { u16::MAX << (16 - len) };
            let key = PortPrefix {
                proto: Some(proto),
                port: port & mask,
                len,
            };
            if let Some(r) = self.0.get(&key) {
                return Some(*r);
            }
        }
        self.0
            .get(&PortPrefix {
                proto: None,
                port: 0,
                len: 0,
            })
            .copied()
    }
}

/// Accumulates allowed (protocol, port range, rule) triples; `finish` resolves overlaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortUnion {
    /// Lowest rule allowing every protocol and port.
    pub any: Option<u32>,
    /// (protocol, first port, last port, rule). Ranges use u32 so 0..=65535 is representable
    /// and `last + 1` never overflows.
    pub ranges: Vec<(u8, u32, u32, u32)>,
}

impl PortUnion {
    pub fn is_empty(&self) -> bool {
        self.any.is_none() && self.ranges.is_empty()
    }

    pub fn add_any(&mut self, rule: u32) {
        self.any = Some(self.any.map_or(rule, |a| a.min(rule)));
    }

    pub fn add_range(&mut self, proto: u8, lo: u32, hi: u32, rule: u32) {
        self.ranges.push((proto, lo, hi, rule));
    }

    pub fn merge(&mut self, other: &PortUnion) {
        if let Some(a) = other.any {
            self.add_any(a);
        }
        self.ranges.extend_from_slice(&other.ranges);
    }

    /// `None` with `Some(rule)`: everything is allowed, first by `rule` (no port entry names
    /// a lower rule). Otherwise the port set.
    pub fn finish(&self) -> Result<u32, PortSet> {
        let any = self.any.unwrap_or(u32::MAX);
        let mut ranges: Vec<_> = self.ranges.iter().copied().filter(|r| r.3 < any).collect();
        if let Some(a) = self.any
            && ranges.is_empty()
        {
            return Ok(a);
        }
        let mut set = BTreeMap::new();
        if let Some(a) = self.any {
            set.insert(
                PortPrefix {
                    proto: None,
                    port: 0,
                    len: 0,
                },
                a,
            );
        }
        // Lowest rule first: it paints the ports it covers; later rules only fill gaps.
        ranges.sort_by_key(|r| (r.0, r.3, r.1, r.2));
        let mut i = 0;
        while i < ranges.len() {
            let proto = ranges[i].0;
            let mut painted: Vec<(u32, u32, u32)> = Vec::new();
            while i < ranges.len() && ranges[i].0 == proto {
                let (_, lo, hi, r) = ranges[i];
                paint(&mut painted, lo, hi, r);
                i += 1;
            }
            // Merge neighbours with the same rule, then split into prefixes.
            let mut merged: Vec<(u32, u32, u32)> = Vec::new();
            for seg in painted {
                match merged.last_mut() {
                    Some(last) if last.1 + 1 == seg.0 && last.2 == seg.2 => last.1 = seg.1,
                    _ => merged.push(seg),
                }
            }
            // When every port of the protocol is allowed (port 0 is painted only by an
            // all-ports rule, which then covers everything), that rule is one `len` 0 entry and
            // only ports that a lower rule names get longer prefixes. Splitting the whole range
            // instead would leave no `len` 0 entry, and a later fragment with unknown ports
            // (looked up at `len` 0) would be denied although every port is allowed.
            let all_ports = merged.first().filter(|m| m.0 == 0).map(|m| m.2);
            if let Some(r) = all_ports {
                set.insert(
                    PortPrefix {
                        proto: Some(proto),
                        port: 0,
                        len: 0,
                    },
                    r,
                );
            }
            for (lo, hi, r) in merged {
                if Some(r) == all_ports {
                    continue;
                }
                for (port, len) in split_range(lo, hi) {
                    set.insert(
                        PortPrefix {
                            proto: Some(proto),
                            port,
                            len,
                        },
                        r,
                    );
                }
            }
        }
        Err(PortSet(set))
    }
}

/// Adds the parts of `lo..=hi` not yet in `painted` (sorted, disjoint) with rule `r`.
fn paint(painted: &mut Vec<(u32, u32, u32)>, lo: u32, hi: u32, r: u32) {
    let mut gaps = Vec::new();
    let mut cur = lo;
    for &(a, b, _) in painted.iter() {
        if b < cur {
            continue;
        }
        if a > hi {
            break;
        }
        if a > cur {
            gaps.push((cur, a - 1, r));
        }
        cur = cur.max(b + 1);
        if cur > hi {
            break;
        }
    }
    if cur <= hi {
        gaps.push((cur, hi, r));
    }
    painted.extend(gaps);
    painted.sort_unstable();
}

/// Splits `lo..=hi` (within 0..=65535) into the fewest aligned port prefixes.
pub(crate) fn split_range(mut lo: u32, hi: u32) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    while lo <= hi {
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_aligned_prefixes() {
        assert_eq!(split_range(0, 65535), vec![(0, 0)]);
        assert_eq!(split_range(80, 80), vec![(80, 16)]);
        assert_eq!(split_range(80, 81), vec![(80, 15)]);
        assert_eq!(split_range(79, 82), vec![(79, 16), (80, 15), (82, 16)]);
        assert_eq!(split_range(1, 65535).len(), 16);
        assert_eq!(split_range(65535, 65535), vec![(65535, 16)]);
    }

    #[test]
    fn lowest_rule_wins_per_port_and_every_port_is_covered() {
        let mut u = PortUnion::default();
        u.add_range(6, 70, 90, 5);
        u.add_range(6, 80, 100, 2);
        u.add_range(17, 53, 53, 9);
        let set = u.finish().unwrap_err();
        for p in 0..=200u16 {
            let want = match p {
                80..=100 => Some(2),
                70..=79 => Some(5),
                _ => None,
            };
            assert_eq!(set.lookup(6, p), want, "tcp {p}");
        }
        assert_eq!(set.lookup(17, 53), Some(9));
        assert_eq!(set.lookup(17, 54), None);
        assert_eq!(set.lookup(1, 0), None);
    }

    #[test]
    fn all_ports_wins_unless_a_lower_rule_names_a_port() {
        let mut u = PortUnion::default();
        u.add_any(4);
        u.add_range(6, 80, 80, 7);
        assert_eq!(u.finish(), Ok(4));
        u.add_range(6, 81, 81, 1);
        let set = u.finish().unwrap_err();
        assert_eq!(set.lookup(6, 81), Some(1));
        assert_eq!(set.lookup(6, 80), Some(4));
        assert_eq!(set.lookup(1, 0), Some(4));
    }

    /// Found by the kernel-vs-spec differential test: `{protocol: TCP}` (every TCP port) in
    /// one rule and a lower rule naming TCP 53 must still give an entry for every TCP port,
    /// which is what a later fragment with unknown ports is looked up against.
    #[test]
    fn every_port_of_a_protocol_keeps_one_entry_when_a_lower_rule_names_a_port() {
        let mut u = PortUnion::default();
        u.add_range(6, 0, 65535, 5);
        u.add_range(6, 53, 53, 2);
        let set = u.finish().unwrap_err();
        let whole = PortPrefix {
            proto: Some(6),
            port: 0,
            len: 0,
        };
        assert_eq!(set.0.get(&whole), Some(&5));
        assert_eq!(set.lookup(6, 53), Some(2));
        assert_eq!(set.lookup(6, 54), Some(5));
        assert_eq!(set.lookup(6, 0), Some(5));
        assert_eq!(set.0.len(), 2, "{set:?}");
    }
}
