//! IP prefixes (CIDRs) with canonical (masked) addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address prefix. The address is always masked to `len` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

pub(crate) fn max_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit after the first `len` cleared.
pub(crate) fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl Prefix {
    /// A prefix of `len` bits of `addr` (host bits are cleared). `len` is clamped to the
    /// family's width.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let len = len.min(max_len(&addr));
        Prefix {
            addr: mask(addr, len),
            len,
        }
    }

    /// The single-address prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Prefix::new(addr, max_len(&addr))
    }

    /// Parses `a.b.c.d/n` or `x::y/n`. Host bits after the prefix are accepted and cleared,
    /// like the API server's own parsing of `ipBlock.cidr` (which only warns about them).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (missing /prefix-length)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR ({a:?} is not an IP address)"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= max_len(&addr))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a CIDR (prefix length {l:?} is not in 0..={})",
                    max_len(&addr)
                )
            })?;
        Ok(Prefix::new(addr, len))
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &Prefix) -> bool {
        self.is_v4() == other.is_v4()
            && self.len <= other.len
            && mask(other.addr, self.len) == self.addr
    }

    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.contains(&Prefix::host(addr))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_are_cleared_and_containment_is_by_family() {
        let p = Prefix::parse("10.1.2.3/16").unwrap();
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert!(p.contains(&Prefix::parse("10.1.200.0/24").unwrap()));
        assert!(!p.contains(&Prefix::parse("10.0.0.0/8").unwrap()));
        assert!(
            !Prefix::parse("0.0.0.0/0")
                .unwrap()
                .contains(&Prefix::parse("::/0").unwrap())
        );
        assert!(
            Prefix::parse("::/0")
                .unwrap()
                .contains_addr("fd00::1".parse().unwrap())
        );
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("10.0.0.0").is_err());
    }
}
