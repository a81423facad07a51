//! ClusterNetworkPolicy rules read literally, for the reference evaluator: which pods a
//! policy's subject selects, and whether one rule matches one connection. Linear scans over
//! the cluster objects; the compiler (`tiers.rs`) never calls these.

use crate::model::{Cluster, Endpoint, Labels, PodInfo};
use crate::validate::Direction;

use super::{CnpPeer, CnpPort, CnpRule, NormCnp, Subject};

fn ns_labels<'c>(cluster: &'c Cluster, ns: &str) -> &'c Labels {
    static NONE: Labels = Labels::new();
    cluster.namespaces.get(ns).unwrap_or(&NONE)
}

/// "Subject defines the pods to which this ClusterNetworkPolicy applies" -- "host-networked
/// pods are not included in subject selection".
pub(crate) fn subject_selects(cluster: &Cluster, cnp: &NormCnp, pod: &PodInfo) -> bool {
    if pod.host_network {
        return false;
    }
    let ns = ns_labels(cluster, &pod.namespace);
    match &cnp.subject {
        Subject::Namespaces(s) => s.matches(ns),
        Subject::Pods { namespaces, pods } => namespaces.matches(ns) && pods.matches(&pod.labels),
    }
}

/// Whether `rule` of a policy selecting `pod` matches the connection with `peer` (the source
/// at ingress, the destination at egress) on (`proto`, `port`). Port 0 stands for "unknown"
/// (a later fragment): only a rule covering every port of the protocol names it. `learnt`
/// are the names the cluster DNS service answered `pod` with `peer`'s address for (what a
/// `domainNames` peer matches; empty when the pod learnt nothing for that address).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rule_matches(
    cluster: &Cluster,
    rule: &CnpRule,
    dir: Direction,
    pod: &PodInfo,
    peer: &Endpoint,
    proto: u8,
    port: u16,
    learnt: &[String],
) -> bool {
    let addr = peer.addr();
    // "Note that host-networked pods are not included in this type of peer": namespaces and
    // pods peers name pods with their own addresses only.
    let peer_pod = match peer {
        Endpoint::Pod { pod, .. } => cluster
            .pod(pod)
            .filter(|p| p.is_selectable_peer() && p.ips.contains(&addr)),
        Endpoint::External(_) => None,
    };
    let peer_ok = rule.peers.iter().any(|p| match p {
        CnpPeer::Namespaces(s) => {
            peer_pod.is_some_and(|pp| s.matches(ns_labels(cluster, &pp.namespace)))
        }
        CnpPeer::Pods { namespaces, pods } => peer_pod.is_some_and(|pp| {
            namespaces.matches(ns_labels(cluster, &pp.namespace)) && pods.matches(&pp.labels)
        }),
        // "It selects the nodeIPs as the peer type by matching on the IPs present in the
        // node.Status.Addresses field of the node."
        CnpPeer::Nodes(s) => cluster
            .nodes
            .iter()
            .any(|n| s.matches(&n.labels) && n.addrs.contains(&addr)),
        // "Cluster-internal traffic will be checked against the rule as well."
        CnpPeer::Networks(cidrs) => cidrs.iter().any(|c| c.contains_addr(addr)),
        // "the addresses the cluster's DNS service returned to that pod for a matching name"
        // (issue 14): never an address by itself.
        CnpPeer::DomainNames(patterns) => learnt
            .iter()
            .any(|name| patterns.iter().any(|p| p.matches(name))),
        CnpPeer::Everything => true,
    });
    if !peer_ok {
        return false;
    }
    let Some(ports) = &rule.ports else {
        // "If unspecified, protocol-specific attributes will not be used to match traffic."
        return true;
    };
    // A named port is a container port of the destination: the selected pod at ingress, the
    // peer pod at egress.
    let destination = match dir {
        Direction::Ingress => Some(pod),
        Direction::Egress => peer_pod,
    };
    ports.iter().any(|p| match p {
        CnpPort::Range { proto: pr, lo, hi } => pr.number() == proto && (*lo..=*hi).contains(&port),
        CnpPort::Named(name) => destination.is_some_and(|d| {
            d.ports.iter().any(|np| {
                &np.name == name && np.protocol.number() == proto && np.port == port && port != 0
            })
        }),
    })
}
