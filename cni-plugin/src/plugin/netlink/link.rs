//! Links: the veth pair, up, delete, lookup.

use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::{Nl, err, errno, fmt_mac};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub up: bool,
    pub is_veth: bool,
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: String::new(),
        up: m.header.flags.contains(LinkFlags::Up),
        is_veth: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = fmt_mac(b),
            LinkAttribute::LinkInfo(infos) => {
                l.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    l
}

/// The link called `name`, or `None`.
pub fn get(nl: &Nl, name: &str) -> Result<Option<Link>> {
    nl.block_on(async {
        let mut s = nl
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(to_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(err("getting link", name)(e)),
        }
    })
}

/// Every link whose name starts with `prefix`.
pub fn list_prefixed(nl: &Nl, prefix: &str) -> Result<Vec<Link>> {
    nl.block_on(async {
        let msgs: Vec<LinkMessage> = nl
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(err("listing links", "(all)"))?;
        Ok(msgs
            .iter()
            .map(to_link)
            .filter(|l| l.name.starts_with(prefix))
            .collect())
    })
}

/// Creates a veth pair: `host` in this connection's namespace, `pod` directly in the namespace
/// `pod_ns`, both with `mtu`. Creating the peer in its namespace (rather than moving it later)
/// means no temporary name can clash and no half-moved link is ever visible.
pub fn create_veth(nl: &Nl, host: &str, pod: &str, pod_ns: BorrowedFd<'_>, mtu: u32) -> Result<()> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.to_string())
        .mtu(mtu)
        .setns_by_fd(pod_ns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, pod)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    nl.block_on(nl.handle.link().add(msg).execute())
        .map_err(err("creating veth", format!("{host} <-> {pod}")))
}

pub fn set_up(nl: &Nl, index: u32, what: &str) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    nl.block_on(nl.handle.link().set(msg).execute())
        .map_err(err("setting link up", what))
}

/// Deletes link `index`; `Ok(false)` when it was already gone.
pub fn delete(nl: &Nl, index: u32, what: &str) -> Result<bool> {
    match nl.block_on(nl.handle.link().del(index).execute()) {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(err("deleting link", what)(e)),
    }
}

/// Deletes the link called `name` if it exists; `Ok(false)` when there was none.
pub fn delete_by_name(nl: &Nl, name: &str) -> Result<bool> {
    match get(nl, name)? {
        Some(l) => delete(nl, l.index, name),
        None => Ok(false),
    }
}
