//! Plain facts about the cluster that policy needs: namespaces and their labels, pods (labels,
//! addresses, named container ports), nodes (labels, addresses), and the NetworkPolicy and
//! ClusterNetworkPolicy objects themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cnp::ClusterNetworkPolicy;

/// Label set of a namespace or pod.
pub type Labels = BTreeMap<String, String>;

/// Everything `compile` and `evaluate` look at.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespace name -> labels. Include `kubernetes.io/metadata.name` as the API server does
    /// (`Cluster::from_objects` adds it). A pod or policy in a namespace missing here behaves as
    /// if its namespace had no labels.
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodInfo>,
    pub policies: Vec<NetworkPolicy>,
    /// Admin and Baseline tier policies.
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// Nodes, for ClusterNetworkPolicy `nodes` peers.
    pub nodes: Vec<NodeInfo>,
}

/// What policy needs to know about a Node: its labels and addresses (`status.addresses`
/// that are IP addresses, whatever their type).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub addrs: Vec<IpAddr>,
}

/// Identity of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The L4 protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The spelling Kubernetes uses (`TCP`, `UDP`, `SCTP`; case-sensitive, as the API server).
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub const fn k8s_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// Name of an IP protocol number for humans (`TCP`, `ICMP`, `proto 47`).
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        p => format!("proto {p}"),
    }
}

/// A named container port (`spec.containers[].ports[]` with a `name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// What policy needs to know about a pod.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The pod's addresses (`status.podIPs`). Empty while the pod has none.
    pub ips: Vec<IpAddr>,
    /// Named container ports of all containers.
    pub ports: Vec<NamedPort>,
    /// `spec.hostNetwork`: the pod uses its node's addresses.
    pub host_network: bool,
}

impl PodInfo {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    /// Whether a podSelector/namespaceSelector peer can name this pod. Pods without addresses
    /// have nothing to match on; host-network pods share their node's addresses, so naming
    /// them would name the node (and every other host-network pod on it). Both can still be
    /// reached through an `ipBlock` that contains their address.
    pub fn is_selectable_peer(&self) -> bool {
        !self.host_network && !self.ips.is_empty()
    }
}

/// One end of a connection, for `evaluate`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A pod, using address `addr` (one of its `ips`).
    Pod { pod: PodKey, addr: IpAddr },
    /// Anything that is not a pod: another node, a host outside the cluster.
    External(IpAddr),
}

impl Endpoint {
    pub fn addr(&self) -> IpAddr {
        match self {
            Endpoint::Pod { addr, .. } | Endpoint::External(addr) => *addr,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod { pod, addr } => write!(f, "{pod}({addr})"),
            Endpoint::External(a) => write!(f, "{a}"),
        }
    }
}

impl Cluster {
    /// The pod with this key, if any.
    pub fn pod(&self, key: &PodKey) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == key.namespace && p.name == key.name)
    }
}
