//! Routes: a host route per pod address on the node; gateway routes in the pod.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::RouteMessageBuilder;

use super::{Nl, err, errno};
use crate::error::Result;
use crate::result::{GATEWAY_V4, GATEWAY_V6};

fn add(nl: &Nl, msg: RouteMessage, what: String) -> Result<()> {
    match nl.block_on(nl.handle.route().add(msg).execute()) {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(err("adding route", what)(e)),
    }
}

/// On the node: `<pod ip>/32 dev <host veth> scope link` (or `/128`).
pub fn add_host_route(nl: &Nl, index: u32, ip: IpAddr) -> Result<()> {
    let msg = match ip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .output_interface(index)
            .build(),
    };
    add(nl, msg, format!("{ip} dev #{index}"))
}

/// In the pod: `169.254.1.1 dev <if> scope link` + `default via 169.254.1.1 dev <if>`.
pub fn add_gateway_v4(nl: &Nl, index: u32) -> Result<()> {
    let link = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(GATEWAY_V4, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    add(nl, link, format!("{GATEWAY_V4}/32 dev #{index}"))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .gateway(GATEWAY_V4)
        .output_interface(index)
        .build();
    add(nl, default, format!("default via {GATEWAY_V4}"))
}

/// In the pod: `default via fe80::1 dev <if>`.
pub fn add_gateway_v6(nl: &Nl, index: u32) -> Result<()> {
    let default = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .gateway(GATEWAY_V6)
        .output_interface(index)
        .build();
    add(nl, default, format!("default via {GATEWAY_V6}"))
}

/// A route as CHECK needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<IpAddr>,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Routes of the main table for one family.
pub fn list(nl: &Nl, v4: bool) -> Result<Vec<Route>> {
    let filter = if v4 {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    };
    nl.block_on(async {
        let msgs: Vec<RouteMessage> = nl
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(err("listing routes", if v4 { "IPv4" } else { "IPv6" }))?;
        Ok(msgs
            .iter()
            .map(|m| {
                let mut r = Route {
                    dst: None,
                    prefix: m.header.destination_prefix_length,
                    gateway: None,
                    oif: None,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => r.dst = addr(d),
                        RouteAttribute::Gateway(g) => r.gateway = addr(g),
                        RouteAttribute::Oif(i) => r.oif = Some(*i),
                        _ => {}
                    }
                }
                r
            })
            .collect())
    })
}
