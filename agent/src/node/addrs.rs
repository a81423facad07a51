//! This node's addresses and interfaces, read from the kernel of the agent's network
//! namespace (the node's): the addresses for `pal_host_v1`, and the interfaces that hold an
//! InternalIP or a default route (the uplinks `to_uplink` is attached to by default).

use std::collections::BTreeSet;
use std::net::IpAddr;

use palisade_common::stats::HostAddrKey;
use palisade_common::{FAMILY_V4, FAMILY_V6};

use crate::source::Snapshot;

/// The desired content of `pal_host_v1`: every address of the node's interfaces, except IPv6
/// link-local ones (every veth has one; they are per link, not "the node" as a peer).
pub fn host_addrs() -> BTreeSet<HostAddrKey> {
    let mut want = BTreeSet::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return want;
    };
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            let mut k = HostAddrKey {
                family: FAMILY_V4,
                ..Default::default()
            };
            k.addr_be[..4].copy_from_slice(&v4.ip().octets());
            want.insert(k);
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            let ip = v6.ip();
            if ip.is_unicast_link_local() {
                continue;
            }
            want.insert(HostAddrKey {
                family: FAMILY_V6,
                addr_be: ip.octets(),
                ..Default::default()
            });
        }
    }
    want
}

/// This node's InternalIP addresses (`status.addresses`), from the snapshot's Nodes.
pub fn internal_ips(snap: &Snapshot, node: &str) -> Vec<IpAddr> {
    snap.nodes
        .get(node)
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Interfaces (of the agent's network namespace) holding one of `addrs`.
pub fn interfaces_holding(addrs: &[IpAddr]) -> Vec<String> {
    let mut out = BTreeSet::new();
    if addrs.is_empty() {
        return Vec::new();
    }
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for a in ifs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if addrs.contains(&ip) {
                out.insert(a.interface_name);
            }
        }
    }
    out.into_iter().collect()
}

/// Interfaces holding a default route (IPv4 `/proc/net/route`, IPv6 `/proc/net/ipv6_route`),
/// the uplinks when `--uplink` is not given. Read from procfs of the agent's network namespace.
pub fn default_route_interfaces() -> Vec<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    parse_default_routes(&v4, &v6)
}

fn parse_default_routes(v4: &str, v6: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for l in v4.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            out.insert(f[0].to_string());
        }
    }
    for l in v6.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // dst dst_len src src_len nexthop metric refcnt use flags iface
        if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
            out.insert(f[9].to_string());
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_interfaces_from_procfs() {
        let v4 = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(parse_default_routes(v4, v6), vec!["eth0", "eth1"]);
    }
}
