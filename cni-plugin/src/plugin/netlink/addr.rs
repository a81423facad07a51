//! Addresses on the pod interface.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};

use super::{Nl, err};
use crate::error::Result;

/// Adds `net` (address with the pod CIDR's prefix) to link `index` with
/// - `IFA_F_NODAD`: the address is usable at once; DAD on a point-to-point veth whose only
///   other end is the host can never find a duplicate and would only delay IPv6 by ~1 s;
/// - `IFA_F_NOPREFIXROUTE`: no connected route for the pod CIDR, so every packet, even to a
///   pod on the same node, goes to the gateway and crosses the host-side veth.
pub fn add(nl: &Nl, index: u32, net: IpNetwork) -> Result<()> {
    let mut req = nl.handle.address().add(index, net.ip(), net.prefix());
    req.message_mut().attributes.push(AddressAttribute::Flags(
        AddressFlags::Nodad | AddressFlags::Noprefixroute,
    ));
    match nl.block_on(req.execute()) {
        Ok(()) => Ok(()),
        // Idempotent ADD: the address is already there.
        Err(e) if super::errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(err("adding address", net.to_string())(e)),
    }
}

/// The addresses on link `index`.
pub fn list(nl: &Nl, index: u32) -> Result<Vec<IpAddr>> {
    nl.block_on(async {
        let msgs: Vec<_> = nl
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(err("listing addresses", format!("ifindex {index}")))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == index) {
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = a
                    && !out.contains(ip)
                {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    })
}
