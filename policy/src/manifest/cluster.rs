//! Objects -> [`Cluster`]: the policy-relevant facts of Namespaces, Pods, NetworkPolicies,
//! ClusterNetworkPolicies and Nodes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::Object;
use crate::model::{Cluster, NamedPort, NodeInfo, PodInfo, Protocol};
use crate::validate::Problem;

/// Label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Cluster {
    /// Builds a cluster from objects. Namespaces get the `kubernetes.io/metadata.name` label,
    /// as the API server sets it; namespaces that pods or policies use without a Namespace
    /// object are created with only that label. Pods and policies without a namespace are in
    /// `default`. Pod problems (a bad address, a bad port) are returned; the pod is kept
    /// without the bad part.
    pub fn from_objects(objects: &[Object]) -> (Cluster, Vec<Problem>) {
        let mut c = Cluster::default();
        let mut problems = Vec::new();
        let mut used = Vec::new();
        for o in objects {
            match o {
                Object::Namespace(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
                    c.namespaces.insert(name, labels);
                }
                Object::Pod(p) => {
                    let (info, mut pr) = pod_info(p);
                    used.push(info.namespace.clone());
                    problems.append(&mut pr);
                    c.pods.push(info);
                }
                Object::NetworkPolicy(np) => {
                    let mut np = (**np).clone();
                    let ns = np
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    used.push(ns.clone());
                    c.policies.push(np);
                }
                Object::ClusterNetworkPolicy(cnp) => c.cluster_policies.push((**cnp).clone()),
                Object::Node(n) => c.nodes.push(node_info(n)),
                Object::Service(_) | Object::EndpointSlice(_) => {}
            }
        }
        for ns in used {
            c.namespaces
                .entry(ns.clone())
                .or_insert_with(|| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns)]));
        }
        (c, problems)
    }
}

/// What ClusterNetworkPolicy `nodes` peers need of a Node: its labels and every address of
/// `status.addresses` that is an IP address (`Hostname` entries are not).
pub fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        addrs: n
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| a.address.parse().ok())
            .collect(),
    }
}

/// Policy-relevant facts of a Pod object.
pub fn pod_info(p: &Pod) -> (PodInfo, Vec<Problem>) {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = p.metadata.name.clone().unwrap_or_default();
    let object = format!("Pod {namespace}/{name}");
    let mut problems = Vec::new();
    let mut ips = Vec::new();
    if let Some(st) = &p.status {
        let listed: Vec<(String, String)> = match &st.pod_ips {
            Some(v) if !v.is_empty() => v
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("status.podIPs[{i}].ip"), a.ip.clone()))
                .collect(),
            _ => st
                .pod_ip
                .iter()
                .map(|a| ("status.podIP".to_string(), a.clone()))
                .collect(),
        };
        for (field, a) in listed {
            match a.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => problems.push(Problem::new(
                    &object,
                    field,
                    format!("{a:?} is not an IP address"),
                )),
            }
        }
    }
    let mut ports = Vec::new();
    let mut host_network = false;
    if let Some(spec) = &p.spec {
        host_network = spec.host_network.unwrap_or(false);
        for (ci, c) in spec.containers.iter().enumerate() {
            for (pi, cp) in c.ports.iter().flatten().enumerate() {
                let Some(pname) = &cp.name else { continue };
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let proto = match cp.protocol.as_deref() {
                    None => Some(Protocol::Tcp),
                    Some(s) => Protocol::from_k8s(s),
                };
                match (proto, u16::try_from(cp.container_port)) {
                    (Some(protocol), Ok(port)) if port != 0 => ports.push(NamedPort {
                        name: pname.clone(),
                        port,
                        protocol,
                    }),
                    (None, _) => problems.push(Problem::new(
                        &object,
                        format!("{field}.protocol"),
                        format!(
                            "unknown protocol {:?}",
                            cp.protocol.as_deref().unwrap_or("")
                        ),
                    )),
                    _ => problems.push(Problem::new(
                        &object,
                        format!("{field}.containerPort"),
                        format!("{} is not in 1..=65535", cp.container_port),
                    )),
                }
            }
        }
    }
    let info = PodInfo {
        namespace,
        name,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        ports,
        host_network,
    };
    (info, problems)
}
