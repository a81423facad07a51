//! The protocol and port space cut into pieces that a given set of rules treats alike, so a
//! question about *every* port ("which ports does this allow?", "does rule A allow all that
//! rule B allows?") is answered exactly with one probe per piece.
//!
//! Every rule allows a union of port ranges per protocol (a named port resolves to one port
//! per pod), or every protocol and port. Cutting TCP, UDP and SCTP ports 1..=65535 at every
//! range start and every range end + 1 of the rules involved (and at each named port of the
//! pods involved) leaves pieces inside which no rule changes its answer; one probe at the
//! first port of each piece therefore answers for the whole piece. Every other protocol
//! (ICMP, ICMPv6, GRE...) is one piece: only rules without ports allow it, and those allow
//! them all alike. Port 0 (a non-first fragment, ports unknown) is not a piece.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{PodInfo, Protocol};
use crate::validate::{NormRule, PortMatch};

const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// One piece: `proto` ports `first..=last`; `proto` is ICMP (1) or ICMPv6 (58) for the piece
/// "every other protocol" (then `first` = `last` = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub proto: u8,
    pub first: u16,
    pub last: u16,
}

impl Piece {
    pub fn is_other_protocols(&self) -> bool {
        !PORT_PROTOCOLS.iter().any(|p| p.number() == self.proto)
    }
}

/// Cut points per port protocol (TCP, UDP, SCTP), each in 1..=65536.
#[derive(Clone, Debug)]
pub(crate) struct PortSpace {
    cuts: [BTreeSet<u32>; 3],
}

impl Default for PortSpace {
    fn default() -> Self {
        PortSpace {
            cuts: std::array::from_fn(|_| BTreeSet::from([1, 65536])),
        }
    }
}

fn slot(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

impl PortSpace {
    fn cut(&mut self, proto: Protocol, first: u16, last: u16) {
        let s = &mut self.cuts[slot(proto)];
        s.insert(u32::from(first.max(1)));
        s.insert(u32::from(last) + 1);
    }

    /// The boundaries of what `rule` allows (named ports are cut by `add_pod`).
    pub fn add_rule(&mut self, rule: &NormRule) {
        for p in rule.ports.iter().flatten() {
            if let PortMatch::Range(lo, hi) = p.port {
                self.cut(p.proto, lo, hi);
            }
        }
    }

    /// Each named container port of `pod`, which a named port entry may resolve to.
    pub fn add_pod(&mut self, pod: &PodInfo) {
        for np in &pod.ports {
            self.cut(np.protocol, np.port, np.port);
        }
    }

    /// `proto` `first..=last` (a range someone asks about) as its own pieces.
    pub fn add_range(&mut self, proto: Protocol, first: u16, last: u16) {
        self.cut(proto, first, last);
    }

    /// Every piece, ports of TCP, UDP, SCTP in order, then every other protocol (ICMP for
    /// IPv4, ICMPv6 for IPv6 stands for them).
    pub fn pieces(&self, v6: bool) -> Vec<Piece> {
        let mut out = Vec::new();
        for proto in PORT_PROTOCOLS {
            let cuts: Vec<u32> = self.cuts[slot(proto)].iter().copied().collect();
            for w in cuts.windows(2) {
                out.push(Piece {
                    proto: proto.number(),
                    first: w[0] as u16,
                    last: (w[1] - 1) as u16,
                });
            }
        }
        out.push(Piece {
            proto: if v6 { 58 } else { 1 },
            first: 0,
            last: 0,
        });
        out
    }
}

/// A set of protocols and ports, as `explain` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRanges {
    /// TCP, UDP and SCTP port ranges (merged, in order).
    pub ranges: Vec<PortRange>,
    /// Every protocol other than TCP, UDP and SCTP (ICMP, ICMPv6...).
    pub other_protocols: bool,
}

/// `protocol` ports `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub first: u16,
    pub last: u16,
}

impl PortRanges {
    /// The pieces whose flag is set, merged.
    pub(crate) fn from_pieces(pieces: &[Piece], set: &[bool]) -> Self {
        let mut out = PortRanges::default();
        for (p, _) in pieces.iter().zip(set).filter(|(_, s)| **s) {
            if p.is_other_protocols() {
                out.other_protocols = true;
                continue;
            }
            let name = crate::model::proto_name(p.proto);
            match out.ranges.last_mut() {
                Some(r) if r.protocol == name && u32::from(r.last) + 1 == u32::from(p.first) => {
                    r.last = p.last;
                }
                _ => out.ranges.push(PortRange {
                    protocol: name,
                    first: p.first,
                    last: p.last,
                }),
            }
        }
        out
    }

    /// Every protocol and every port.
    pub fn is_everything(&self) -> bool {
        self.other_protocols
            && PORT_PROTOCOLS.iter().all(|p| {
                self.ranges
                    .iter()
                    .any(|r| r.protocol == p.k8s_name() && r.first <= 1 && r.last == u16::MAX)
            })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.other_protocols
    }

    /// Whether (`proto`, `port`) is in the set (port 1..=65535 for TCP, UDP, SCTP).
    pub fn contains(&self, proto: u8, port: u16) -> bool {
        match PORT_PROTOCOLS.iter().find(|p| p.number() == proto) {
            Some(p) => self
                .ranges
                .iter()
                .any(|r| r.protocol == p.k8s_name() && (r.first..=r.last).contains(&port)),
            None => self.other_protocols,
        }
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_everything() {
            return f.write_str("every protocol and port");
        }
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let mut parts: Vec<String> = self
            .ranges
            .iter()
            .map(|r| match (r.first, r.last) {
                (1, u16::MAX) => format!("every {} port", r.protocol),
                (a, b) if a == b => format!("{} {a}", r.protocol),
                (a, b) => format!("{} {a}-{b}", r.protocol),
            })
            .collect();
        if self.other_protocols {
            parts.push("every other protocol (ICMP included)".into());
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_every_port_once_and_merge_back() {
        let mut s = PortSpace::default();
        s.cut(Protocol::Tcp, 80, 80);
        s.cut(Protocol::Tcp, 79, 90);
        s.cut(Protocol::Udp, 65535, 65535);
        let pieces = s.pieces(false);
        for proto in [6u8, 17, 132] {
            let mine: Vec<_> = pieces.iter().filter(|p| p.proto == proto).collect();
            assert_eq!(mine.first().unwrap().first, 1);
            assert_eq!(mine.last().unwrap().last, 65535);
            for w in mine.windows(2) {
                assert_eq!(u32::from(w[0].last) + 1, u32::from(w[1].first));
            }
        }
        let tcp80: Vec<bool> = pieces
            .iter()
            .map(|p| p.proto == 6 && (p.first..=p.last).contains(&80))
            .collect();
        let r = PortRanges::from_pieces(&pieces, &tcp80);
        assert_eq!(r.to_string(), "TCP 80");
        assert!(r.contains(6, 80) && !r.contains(6, 81) && !r.contains(1, 0));
        let all = vec![true; pieces.len()];
        assert_eq!(
            PortRanges::from_pieces(&pieces, &all).to_string(),
            "every protocol and port"
        );
        let none = vec![false; pieces.len()];
        assert_eq!(
            PortRanges::from_pieces(&pieces, &none).to_string(),
            "nothing"
        );
    }
}
