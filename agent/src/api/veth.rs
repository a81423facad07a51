//! What the kernel says about a host-side veth, so that an endpoint is only ever programmed on
//! the interface the plugin made for it: a `veth` named as the plugin names that attachment,
//! whose peer lives in another network namespace (the pod's). Pointing an endpoint at the
//! uplink, `lo` or another pod's veth would cut the node off or unfilter that pod.

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use palisade_node_api::endpoint::EndpointRecord;

/// An interface of the agent's (the node's) network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub is_veth: bool,
    /// `IFLA_LINK_NETNSID`: set when the veth's peer is in another network namespace.
    pub peer_netnsid: Option<i32>,
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        name: String::new(),
        is_veth: false,
        peer_netnsid: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                l.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::LinkNetNsId(id) => l.peer_netnsid = Some(*id),
            _ => {}
        }
    }
    l
}

/// The link with `ifindex` in this process's network namespace, or `None`. Blocking: netlink
/// runs on a thread of its own with its own runtime (as `routing` does), off the agent's loop.
pub fn inspect(ifindex: u32) -> Result<Option<Link>, String> {
    std::thread::Builder::new()
        .name("veth-check".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| format!("netlink runtime: {e}"))?;
            rt.block_on(get(ifindex))
        })
        .map_err(|e| format!("netlink thread: {e}"))?
        .join()
        .map_err(|_| "netlink thread panicked".to_string())?
}

async fn get(ifindex: u32) -> Result<Option<Link>, String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
    tokio::spawn(conn);
    let mut s = handle.link().get().match_index(ifindex).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(to_link(&m))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(format!("netlink: getting link {ifindex}: {e}")),
    }
}

/// Whether `link` (found at `record.host_ifindex`) is the host veth the plugin made for
/// `record`; `Err` says what it is instead.
pub fn check_is_host_veth(record: &EndpointRecord, link: Option<&Link>) -> Result<(), String> {
    let ifindex = record.host_ifindex;
    let Some(link) = link else {
        return Err(format!("no interface has ifindex {ifindex}"));
    };
    if link.name != record.host_veth {
        return Err(format!(
            "ifindex {ifindex} is {:?}, not the attachment's host veth {:?}",
            link.name, record.host_veth
        ));
    }
    if !link.is_veth {
        return Err(format!("{:?} (ifindex {ifindex}) is not a veth", link.name));
    }
    if link.peer_netnsid.is_none() {
        return Err(format!(
            "{:?} (ifindex {ifindex}) has its peer in the node's own namespace, not a pod's",
            link.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EndpointRecord {
        EndpointRecord {
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            pod_namespace: None,
            pod_name: None,
            ips: vec!["10.244.0.5/24".into()],
            host_veth: palisade_node_api::host_veth_name("c1", "eth0"),
            host_ifindex: 7,
            mac: "02:00:00:00:00:01".into(),
            created_unix_ms: 1,
        }
    }

    #[test]
    fn only_the_plugins_veth_with_its_peer_elsewhere_passes() {
        let r = record();
        let good = Link {
            name: r.host_veth.clone(),
            is_veth: true,
            peer_netnsid: Some(0),
        };
        assert!(check_is_host_veth(&r, Some(&good)).is_ok());
        for (link, needle) in [
            (None, "no interface"),
            (
                Some(Link {
                    name: "eth0".into(),
                    ..good.clone()
                }),
                "not the attachment's host veth",
            ),
            (
                Some(Link {
                    is_veth: false,
                    ..good.clone()
                }),
                "is not a veth",
            ),
            (
                Some(Link {
                    peer_netnsid: None,
                    ..good.clone()
                }),
                "node's own namespace",
            ),
        ] {
            let e = check_is_host_veth(&r, link.as_ref()).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_kernel_names_loopback_and_reports_it_as_no_veth() {
        let lo = inspect(1).unwrap().expect("ifindex 1 is lo");
        assert_eq!(lo.name, "lo");
        assert!(!lo.is_veth && lo.peer_netnsid.is_none(), "{lo:?}");
        assert_eq!(inspect(0x7fff_fff0).unwrap(), None);
    }
}
