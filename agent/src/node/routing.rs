//! Pod routes between nodes (direct routing, as kind's nodes need it): in this node's network
//! namespace, one route per other node's pod CIDR via that node's InternalIP of the same
//! family, kept in sync with the Nodes of the snapshot.
//!
//! Ownership: every route the agent writes carries [`RTPROT_PALISADE`] as its `rtm_protocol`
//! (`ip route show proto 80`). The agent only ever replaces or deletes routes of that
//! protocol: on start it deletes the own-protocol routes no Node asks for any more (left by a
//! previous agent), and it never overwrites a route someone else owns (that is reported as a
//! problem instead).
//!
//! Planning ([`plan`]) is pure; [`Router::sync`] diffs the plan against the kernel's main
//! table over rtnetlink.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::status::Problem;

/// `rtm_protocol` of Palisade's routes. 80 (ASCII 'P') is not among the numbers iproute2
/// reserves (`/usr/share/iproute2/rt_protos`: 0-18, 42, 99, 186-192).
pub const RTPROT_PALISADE: u8 = 80;

/// An IP prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n` (host bits are cleared); a bare address is a host prefix.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.parse::<u8>().ok().filter(|&l| l <= max)?,
            None => max,
        };
        Some(Cidr::new(addr, len))
    }

    pub fn new(addr: IpAddr, len: u8) -> Cidr {
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Cidr { addr, len }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Pod CIDRs of a Node (`spec.podCIDRs`, else `spec.podCIDR`), with problems for bad values.
pub fn node_pod_cidrs(node: &Node, problems: &mut Vec<Problem>) -> Vec<Cidr> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    let (field, list): (&str, Vec<String>) = match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(l), _) if !l.is_empty() => ("spec.podCIDRs", l.clone()),
        (_, Some(c)) => ("spec.podCIDR", vec![c.clone()]),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in list {
        match Cidr::parse(&s) {
            Some(c) => out.push(c),
            None => problems.push(Problem {
                object: format!("Node {name}"),
                field: field.into(),
                message: format!("{s:?} is not a CIDR; no route to it"),
            }),
        }
    }
    out
}

/// The node's InternalIP of each family (the first one listed).
fn internal_ips(node: &Node) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut v4 = None;
    let mut v6 = None;
    let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addrs.into_iter().flatten() {
        if a.type_ != "InternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => {
                v4.get_or_insert(ip);
            }
            Ok(ip @ IpAddr::V6(_)) => {
                v6.get_or_insert(ip);
            }
            Err(_) => {}
        }
    }
    (v4, v6)
}

/// One route the agent wants: `dst via gateway`, for the pod CIDR of `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub gateway: IpAddr,
    pub node: String,
}

/// Desired routes by destination, and what could not be routed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: BTreeMap<Cidr, Want>,
    pub problems: Vec<Problem>,
}

/// Routes to every other node's pod CIDRs via its InternalIP of the same family. Nodes without
/// pod CIDRs, or without an InternalIP of a CIDR's family, are reported, not routed; a CIDR
/// claimed by two nodes is routed to the first (by name) and reported.
pub fn plan(nodes: &BTreeMap<String, Arc<Node>>, own: &str) -> Plan {
    let mut p = Plan::default();
    for (name, node) in nodes {
        if name == own {
            continue;
        }
        let object = format!("Node {name}");
        let cidrs = node_pod_cidrs(node, &mut p.problems);
        if cidrs.is_empty() {
            p.problems.push(Problem {
                object,
                field: "spec.podCIDRs".into(),
                message: "no pod CIDR: no route to this node's pods".into(),
            });
            continue;
        }
        let (v4, v6) = internal_ips(node);
        for c in cidrs {
            let gw = if c.is_ipv4() { v4 } else { v6 };
            let Some(gateway) = gw else {
                p.problems.push(Problem {
                    object: object.clone(),
                    field: "status.addresses".into(),
                    message: format!("no InternalIP of the family of pod CIDR {c}: no route to it"),
                });
                continue;
            };
            if let Some(prev) = p.routes.get(&c) {
                p.problems.push(Problem {
                    object: object.clone(),
                    field: "spec.podCIDRs".into(),
                    message: format!("pod CIDR {c} is also Node {}'s; routed there", prev.node),
                });
                continue;
            }
            p.routes.insert(
                c,
                Want {
                    gateway,
                    node: name.clone(),
                },
            );
        }
    }
    p
}

/// Every failed routing operation.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("starting the netlink thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("the netlink thread panicked")]
    Panicked,
    #[error("opening a netlink connection")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    #[error("listing {family} routes")]
    List {
        family: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<Cidr>,
    pub replaced: Vec<Cidr>,
    pub removed: Vec<Cidr>,
    /// Routes that could not be written (object = the Node, message names route and error).
    pub problems: Vec<Problem>,
}

/// A route of the kernel's main table, as the sync needs it.
#[derive(Clone, Debug)]
struct Existing {
    dst: Cidr,
    gateway: Option<IpAddr>,
    own: bool,
    msg: netlink_packet_route::route::RouteMessage,
}

/// Writes the plan into the current network namespace (the agent's: the node's).
#[derive(Debug, Default)]
pub struct Router;

impl Router {
    /// Makes the main table's own-protocol routes equal `plan.routes`: adds the missing ones,
    /// replaces those whose gateway changed, deletes own routes not in the plan. A failure to
    /// write one route is a problem of its Node; the others are still written.
    pub fn sync(&mut self, plan: &Plan) -> Result<Changes, RoutingError> {
        // The agent's loop runs on a current-thread runtime; netlink I/O gets its own thread
        // and runtime (it inherits the process's network namespace).
        let routes = plan.routes.clone();
        std::thread::Builder::new()
            .name("routing".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| RoutingError::Connect { source })?;
                rt.block_on(sync_netlink(routes))
            })
            .map_err(|source| RoutingError::Thread { source })?
            .join()
            .map_err(|_| RoutingError::Panicked)?
    }
}

async fn sync_netlink(want: BTreeMap<Cidr, Want>) -> Result<Changes, RoutingError> {
    use futures::TryStreamExt;
    use netlink_packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
    };
    use rtnetlink::RouteMessageBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};

    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| RoutingError::Connect { source })?;
    tokio::spawn(conn);
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    };
    let mut existing: BTreeMap<Cidr, Existing> = BTreeMap::new();
    for (family, filter) in [
        ("IPv4", RouteMessageBuilder::<Ipv4Addr>::new().build()),
        ("IPv6", RouteMessageBuilder::<Ipv6Addr>::new().build()),
    ] {
        let msgs: Vec<RouteMessage> = handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|source| RoutingError::List { family, source })?;
        for m in msgs {
            // Main table, unicast routes only (local/broadcast/multicast live elsewhere).
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            if table != 254 || m.header.kind != RouteType::Unicast {
                continue;
            }
            let mut dst = None;
            let mut gateway = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = addr(d),
                    RouteAttribute::Gateway(g) => gateway = addr(g),
                    _ => {}
                }
            }
            let Some(dst) = dst else { continue };
            let c = Cidr::new(dst, m.header.destination_prefix_length);
            let own = m.header.protocol == RouteProtocol::Other(RTPROT_PALISADE);
            // An own route wins the slot: it is the one the agent may change.
            if existing.get(&c).is_some_and(|e| e.own) {
                continue;
            }
            existing.insert(
                c,
                Existing {
                    dst: c,
                    gateway,
                    own,
                    msg: m,
                },
            );
        }
    }
    let mut ch = Changes::default();
    let route_msg = |dst: Cidr, gw: IpAddr| -> Option<RouteMessage> {
        let proto = RouteProtocol::Other(RTPROT_PALISADE);
        match (dst.addr, gw) {
            (IpAddr::V4(d), IpAddr::V4(g)) => Some(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d, dst.len)
                    .gateway(g)
                    .protocol(proto)
                    .build(),
            ),
            (IpAddr::V6(d), IpAddr::V6(g)) => Some(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d, dst.len)
                    .gateway(g)
                    .protocol(proto)
                    .build(),
            ),
            _ => None,
        }
    };
    for (dst, w) in &want {
        let problem = |message: String| Problem {
            object: format!("Node {}", w.node),
            field: "route".into(),
            message,
        };
        let replace = match existing.get(dst) {
            Some(e) if e.own && e.gateway == Some(w.gateway) => continue,
            Some(e) if !e.own => {
                ch.problems.push(problem(format!(
                    "a route to {dst} not written by Palisade (protocol {}) exists; left alone",
                    u8::from(e.msg.header.protocol)
                )));
                continue;
            }
            Some(_) => true,
            None => false,
        };
        let Some(msg) = route_msg(*dst, w.gateway) else {
            continue;
        };
        let mut req = handle.route().add(msg);
        if replace {
            req = req.replace();
        }
        match req.execute().await {
            Ok(()) if replace => ch.replaced.push(*dst),
            Ok(()) => ch.added.push(*dst),
            Err(e) => ch.problems.push(problem(format!(
                "writing route {dst} via {}: {e}",
                w.gateway
            ))),
        }
    }
    for e in existing.into_values() {
        if !e.own || want.contains_key(&e.dst) {
            continue;
        }
        match handle.route().del(e.msg).execute().await {
            Ok(()) => ch.removed.push(e.dst),
            Err(err) => ch.problems.push(Problem {
                object: format!("route {}", e.dst),
                field: "route".into(),
                message: format!("deleting a stale Palisade route: {err}"),
            }),
        }
    }
    Ok(ch)
}

/// Node networking settings (agent flags).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Program routes to the other nodes' pod CIDRs.
    pub routes: bool,
    /// Masquerade pod traffic leaving the cluster (`--masquerade`).
    pub masquerade: bool,
    /// `--cluster-cidr`: the cluster's pod CIDRs; empty = the union of every Node's podCIDRs.
    pub cluster_cidrs: Vec<Cidr>,
    /// `--service-cidr`: never masqueraded either.
    pub service_cidrs: Vec<Cidr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            routes: true,
            masquerade: true,
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
        }
    }
}

/// The masquerade rules for this node: sources = own pod CIDRs, exempt destinations =
/// cluster CIDRs (or every Node's pod CIDRs) + service CIDRs. `None` when off.
pub fn masquerade_spec(
    cfg: &NetworkConfig,
    nodes: &BTreeMap<String, Arc<Node>>,
    own: &str,
) -> Option<crate::node::masquerade::MasqueradeSpec> {
    if !cfg.masquerade {
        return None;
    }
    let mut ignored = Vec::new();
    let pod_cidrs = nodes
        .get(own)
        .map(|n| node_pod_cidrs(n, &mut ignored))
        .unwrap_or_default();
    let mut no_masquerade: Vec<Cidr> = if cfg.cluster_cidrs.is_empty() {
        nodes
            .values()
            .flat_map(|n| node_pod_cidrs(n, &mut ignored))
            .collect()
    } else {
        cfg.cluster_cidrs.clone()
    };
    no_masquerade.extend(cfg.service_cidrs.iter().copied());
    no_masquerade.sort();
    no_masquerade.dedup();
    Some(crate::node::masquerade::MasqueradeSpec {
        pod_cidrs,
        no_masquerade,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> (String, Arc<Node>) {
        let yaml = format!(
            "metadata: {{name: {name}}}\nspec: {{podCIDRs: {cidrs:?}}}\nstatus:\n  addresses: [{}]\n",
            ips.iter()
                .map(|ip| format!("{{type: InternalIP, address: \"{ip}\"}}"))
                .chain(std::iter::once(
                    "{type: Hostname, address: host}".to_string()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        (
            name.into(),
            Arc::new(serde_saphyr::from_str(&yaml).unwrap()),
        )
    }

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn routes_every_other_nodes_pod_cidrs_via_its_internal_ip_of_the_same_family() {
        let nodes = BTreeMap::from([
            node(
                "n0",
                &["10.244.0.0/24", "fd00:10:244::/64"],
                &["192.168.254.1"],
            ),
            node(
                "n1",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["fd00:ffff::2", "192.168.254.2"],
            ),
            node(
                "n2",
                &["10.244.2.0/24"],
                &["192.168.254.3", "192.168.254.33"],
            ),
        ]);
        let p = plan(&nodes, "n0");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let got: Vec<(String, String, String)> = p
            .routes
            .iter()
            .map(|(c, w)| (c.to_string(), w.gateway.to_string(), w.node.clone()))
            .collect();
        let want = [
            ("10.244.1.0/24", "192.168.254.2", "n1"),
            ("10.244.2.0/24", "192.168.254.3", "n2"),
            ("fd00:10:244:1::/64", "fd00:ffff::2", "n1"),
        ]
        .map(|(a, b, n)| (a.to_string(), b.to_string(), n.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn nodes_without_pod_cidrs_or_internal_ip_are_reported_not_routed() {
        let nodes = BTreeMap::from([
            node("n0", &["10.244.0.0/24"], &["192.168.254.1"]),
            node("nocidr", &[], &["192.168.254.2"]),
            node(
                "noip",
                &["10.244.3.0/24", "fd00:10:244:3::/64"],
                &["fd00:ffff::4"],
            ),
            node("bad", &["10.244.300.0/24"], &["192.168.254.5"]),
        ]);
        let p = plan(&nodes, "n0");
        assert_eq!(
            p.routes.keys().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["fd00:10:244:3::/64"]
        );
        let objects: Vec<(&str, &str)> = p
            .problems
            .iter()
            .map(|p| (p.object.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            objects,
            [
                ("Node bad", "spec.podCIDRs"),
                ("Node bad", "spec.podCIDRs"),
                ("Node nocidr", "spec.podCIDRs"),
                ("Node noip", "status.addresses"),
            ],
            "{:?}",
            p.problems
        );
        assert!(p.problems[0].message.contains("10.244.300.0/24"));
        assert!(p.problems[3].message.contains("10.244.3.0/24"));
    }

    #[test]
    fn own_node_is_not_routed_and_a_cidr_claimed_twice_goes_to_the_first_node() {
        let nodes = BTreeMap::from([
            node("a", &["10.244.1.0/24"], &["192.168.254.2"]),
            node("b", &["10.244.1.0/24"], &["192.168.254.3"]),
            node("me", &["10.244.0.0/24"], &["192.168.254.1"]),
        ]);
        let p = plan(&nodes, "me");
        assert_eq!(p.routes.len(), 1);
        assert_eq!(p.routes[&c("10.244.1.0/24")].node, "a");
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].message.contains("Node a"), "{:?}", p.problems);
        assert!(plan(&BTreeMap::new(), "me").routes.is_empty());
    }

    #[test]
    fn masquerade_exempts_cluster_and_service_cidrs_defaulting_to_every_nodes_pod_cidrs() {
        let nodes = BTreeMap::from([
            node(
                "n0",
                &["10.244.0.0/24", "fd00:10:244::/64"],
                &["192.168.254.1"],
            ),
            node("n1", &["10.244.1.0/24"], &["192.168.254.2"]),
        ]);
        let strs = |v: &[Cidr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut cfg = NetworkConfig {
            service_cidrs: vec![c("10.96.0.0/12")],
            ..NetworkConfig::default()
        };
        // No --cluster-cidr: the union of the Nodes' pod CIDRs.
        let spec = masquerade_spec(&cfg, &nodes, "n0").unwrap();
        assert_eq!(strs(&spec.pod_cidrs), ["10.244.0.0/24", "fd00:10:244::/64"]);
        assert_eq!(
            strs(&spec.no_masquerade),
            [
                "10.96.0.0/12",
                "10.244.0.0/24",
                "10.244.1.0/24",
                "fd00:10:244::/64"
            ]
        );
        cfg.cluster_cidrs = vec![c("10.244.0.0/16")];
        let spec = masquerade_spec(&cfg, &nodes, "n1").unwrap();
        assert_eq!(strs(&spec.pod_cidrs), ["10.244.1.0/24"]);
        assert_eq!(strs(&spec.no_masquerade), ["10.96.0.0/12", "10.244.0.0/16"]);
        // A node the Nodes do not list yet translates nothing; --masquerade=false: no rules.
        assert!(
            masquerade_spec(&cfg, &nodes, "n7")
                .unwrap()
                .pod_cidrs
                .is_empty()
        );
        cfg.masquerade = false;
        assert!(masquerade_spec(&cfg, &nodes, "n0").is_none());
    }

    #[test]
    fn cidr_parse_clears_host_bits_and_rejects_garbage() {
        assert_eq!(c("10.244.1.7/24").to_string(), "10.244.1.0/24");
        assert_eq!(c("fd00:10:244:1::9/64").to_string(), "fd00:10:244:1::/64");
        assert_eq!(c("10.0.0.1").to_string(), "10.0.0.1/32");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("x/8").is_none());
    }
}
