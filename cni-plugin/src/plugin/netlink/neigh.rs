//! Static neighbour entries: the pod resolves its link-local gateway to the host veth's MAC
//! without ARP/NDP, so neither proxy ARP nor an address on the host veth is needed for it.

use std::net::IpAddr;

use netlink_packet_route::neighbour::NeighbourState;

use super::{Nl, err};
use crate::error::Result;

pub fn add_permanent(nl: &Nl, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
    let req = nl
        .handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .state(NeighbourState::Permanent)
        .replace();
    nl.block_on(req.execute())
        .map_err(err("adding neighbour", ip.to_string()))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let v: Option<Vec<u8>> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    v.filter(|v| v.len() == 6)
}
