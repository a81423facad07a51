//! What the endpoint-slice controller would write for the lab's pods, and per-pod Services
//! for probing the truth tables through ClusterIPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::SERVICE_NAME_LABEL;
use crate::lab::model::{self, ModelPod};
use crate::lab::reachability::{Case, Protocol};

/// A Service port resolved for one pod: (Service port name, protocol, target port number).
type ResolvedPort = (String, String, u16);

/// What the endpoint-slice controller would write for `svc` given the pods `pods` (with their
/// addresses): per address family, one slice per distinct resolution of the Service's target
/// ports (a named `targetPort` resolves through each pod's named container ports; a pod that
/// lacks the name gets no endpoint for that port). A Service without a selector, or with an
/// empty one, gets none.
pub fn endpoint_slices_for(svc: &Service, pods: &[(&ModelPod, &[IpAddr])]) -> Vec<EndpointSlice> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    // No selector, or an empty one: the endpoints are someone else's to write.
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let svc_ports = spec.ports.clone().unwrap_or_default();
    // (v4, resolved ports) -> endpoints
    let mut groups: BTreeMap<(bool, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
    for (pod, ips) in pods {
        if pod.namespace != ns || !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
            continue;
        }
        let resolved: Vec<ResolvedPort> = svc_ports
            .iter()
            .filter_map(|sp| {
                let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                let port = match &sp.target_port {
                    None => u16::try_from(sp.port).ok()?,
                    Some(IntOrString::Int(p)) => u16::try_from(*p).ok()?,
                    Some(IntOrString::String(n)) => {
                        pod.ports
                            .iter()
                            .find(|p| &p.name == n && p.protocol.as_str() == proto)?
                            .port
                    }
                };
                Some((sp.name.clone().unwrap_or_default(), proto, port))
            })
            .collect();
        for v4 in [true, false] {
            let Some(ip) = ips.iter().find(|i| i.is_ipv4() == v4) else {
                continue;
            };
            groups
                .entry((v4, resolved.clone()))
                .or_default()
                .push(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(model::node_name(pod.node)),
                    ..Endpoint::default()
                });
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((v4, ports), endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}{i}", if v4 { "v4-" } else { "v6-" })),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_string(),
                    name.clone(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: if v4 { "IPv4" } else { "IPv6" }.into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, proto, port)| EndpointPort {
                        name: Some(n),
                        protocol: Some(proto),
                        port: Some(i32::from(port)),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// A Service per pod of `pods` for probing the truth tables through ClusterIPs: Service
/// `svc-<pod>` in the pod's namespace, selecting it alone (`pod=<name>`, the model's label),
/// dual stack with ClusterIPs `10.96.1.<i+1>` and `fd00:10:96::1<i+1>` (two decimal digits),
/// and one port per model case (TCP, UDP, SCTP): name `p<port>-<proto>`, `port` the target
/// port plus `port_offset`, `targetPort` the model port by number or, with `named_target`, by
/// the pod's port name (`serve-80-tcp`).
pub fn per_pod_services_yaml(pods: &[ModelPod], port_offset: u16, named_target: bool) -> String {
    let mut out = String::new();
    for (i, p) in pods.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{name}, namespace: {ns}}}\n\
             spec:\n  type: ClusterIP\n  selector: {{pod: {name}}}\n  ipFamilyPolicy: RequireDualStack\n  \
             ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.1.{n}\n  clusterIPs: [10.96.1.{n}, \"fd00:10:96::1{n:02}\"]\n  ports:\n",
            name = p.name,
            ns = p.namespace,
            n = i + 1
        ));
        // One Service port per (port, protocol): a pod may name the same port twice (the
        // conformance model's `web`), and a Service may not repeat a port.
        let mut seen = BTreeSet::new();
        for mp in &p.ports {
            if !matches!(mp.protocol, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
                || !seen.insert((mp.port, mp.protocol))
            {
                continue;
            }
            let target = if named_target {
                mp.name.clone()
            } else {
                mp.port.to_string()
            };
            out.push_str(&format!(
                "  - {{name: p{port}-{proto}, protocol: {up}, port: {sport}, targetPort: {target}}}\n",
                port = mp.port,
                proto = mp.protocol.as_str().to_ascii_lowercase(),
                up = mp.protocol.as_str(),
                sport = mp.port + port_offset,
            ));
        }
    }
    out
}

/// A probe target through a Service: the column `id` of the truth table, the ClusterIP, and
/// the Service port to use for each model case (the case names the *target* port).
#[derive(Clone, Debug)]
pub struct ServiceTarget {
    pub id: String,
    pub addr: IpAddr,
    pub ports: BTreeMap<Case, u16>,
}
