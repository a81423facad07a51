//! What policy questions need to know about a Service: its addresses, its ports and how they
//! map to its backends' ports, and which pods are its backends.
//!
//! Policy never names a Service: a connection to a Service address is judged after kube-proxy
//! translated it, against the backend pod and its target port. `explain` uses this to answer
//! for `svc:NS/NAME`, and `lint` to find ipBlocks that cover Service addresses and the
//! cluster's DNS pods.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{Cluster, Labels, PodInfo, Protocol};
use crate::validate::Problem;

/// A Service, for policy questions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `spec.selector`; `None` (or empty in the object) when the Service has none: then
    /// something else manages its endpoints and backends are not known from pods.
    pub selector: Option<Labels>,
    /// Every address kube-proxy translates: cluster IPs (not `None`), external IPs, load
    /// balancer ingress IPs.
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

/// One `spec.ports[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
}

/// `targetPort`: a number, or the name of a container port of each backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl ServiceInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Pods the Service's selector picks: in its namespace, with matching labels and an
    /// address (host-network pods included: kube-proxy then translates to their node's
    /// address). Empty without a selector.
    pub fn backends<'c>(&self, cluster: &'c Cluster) -> Vec<&'c PodInfo> {
        let Some(sel) = &self.selector else {
            return Vec::new();
        };
        cluster
            .pods
            .iter()
            .filter(|p| {
                p.namespace == self.namespace
                    && !p.ips.is_empty()
                    && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The port a connection to `port` reaches on `backend`, if the backend has it (a named
    /// target port the pod lacks gets no traffic).
    pub fn target_port(port: &ServicePort, backend: &PodInfo) -> Option<u16> {
        match &port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => backend
                .ports
                .iter()
                .find(|np| &np.name == name && np.protocol == port.protocol)
                .map(|np| np.port),
        }
    }

    /// The Service port named `name` or numbered `name`.
    pub fn port(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| {
            p.name.as_deref() == Some(name) || name.parse::<u16>().is_ok_and(|n| n == p.port)
        })
    }
}

/// Policy-relevant facts of a Service object. Values that are not addresses or ports are
/// reported (naming the field) and left out.
pub fn service_info(svc: &Service) -> (ServiceInfo, Vec<Problem>) {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let mut problems = Vec::new();
    let mut addresses = Vec::new();
    let mut add = |field: &str, v: &str, problems: &mut Vec<Problem>| {
        if v.is_empty() || v == "None" {
            return;
        }
        match v.parse::<IpAddr>() {
            Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
            Ok(_) => {}
            Err(_) => problems.push(Problem::new(
                &object,
                field,
                format!("{v:?} is not an IP address"),
            )),
        }
    };
    let mut ports = Vec::new();
    let mut selector = None;
    if let Some(spec) = &svc.spec {
        if let Some(ip) = &spec.cluster_ip {
            add("spec.clusterIP", ip, &mut problems);
        }
        for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
            add(&format!("spec.clusterIPs[{i}]"), ip, &mut problems);
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            add(&format!("spec.externalIPs[{i}]"), ip, &mut problems);
        }
        selector = spec
            .selector
            .clone()
            .filter(|s| !s.is_empty())
            .map(|s| s.into_iter().collect());
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let field = format!("spec.ports[{i}]");
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => match Protocol::from_k8s(s) {
                    Some(pr) => pr,
                    None => {
                        problems.push(Problem::new(
                            &object,
                            format!("{field}.protocol"),
                            format!("unknown protocol {s:?}"),
                        ));
                        continue;
                    }
                },
            };
            let Ok(port) = u16::try_from(p.port)
                .map_err(|_| ())
                .and_then(|n| if n == 0 { Err(()) } else { Ok(n) })
            else {
                problems.push(Problem::new(
                    &object,
                    format!("{field}.port"),
                    format!("{} is not in 1..=65535", p.port),
                ));
                continue;
            };
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                    Ok(n) if n != 0 => TargetPort::Number(n),
                    _ => {
                        problems.push(Problem::new(
                            &object,
                            format!("{field}.targetPort"),
                            format!("{n} is not in 1..=65535"),
                        ));
                        continue;
                    }
                },
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n != 0 => TargetPort::Number(n),
                    _ => TargetPort::Name(s.clone()),
                },
            };
            ports.push(ServicePort {
                name: p.name.clone(),
                port,
                protocol,
                target,
            });
        }
    }
    if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        for (i, ing) in lb.ingress.iter().flatten().enumerate() {
            if let Some(ip) = &ing.ip {
                add(
                    &format!("status.loadBalancer.ingress[{i}].ip"),
                    ip,
                    &mut problems,
                );
            }
        }
    }
    let info = ServiceInfo {
        namespace,
        name,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        selector,
        addresses,
        ports,
    };
    (info, problems)
}

/// The cluster's DNS Service: `kube-system/kube-dns`, else a Service labelled
/// `k8s-app: kube-dns` (CoreDNS keeps that label and name for compatibility).
pub fn dns_service(services: &[ServiceInfo]) -> Option<&ServiceInfo> {
    services
        .iter()
        .find(|s| s.namespace == "kube-system" && s.name == "kube-dns")
        .or_else(|| {
            services
                .iter()
                .find(|s| s.labels.get("k8s-app").map(String::as_str) == Some("kube-dns"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NamedPort;

    fn svc(yaml: &str) -> (ServiceInfo, Vec<Problem>) {
        service_info(&serde_saphyr::from_str::<Service>(yaml).expect("Service YAML"))
    }

    #[test]
    fn ports_targets_and_addresses_are_read_and_bad_values_named() {
        let (s, problems) = svc("
metadata: {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::a']
  externalIPs: [nope]
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}
  - {name: metrics, port: 9153}
  - {name: bad, port: 70000}
");
        assert_eq!(
            s.addresses,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00:96::a".parse().unwrap()
            ]
        );
        assert_eq!(s.ports.len(), 3);
        assert_eq!(s.ports[1].target, TargetPort::Name("dns-tcp".into()));
        assert_eq!(s.ports[2].target, TargetPort::Number(9153));
        assert_eq!(s.ports[2].protocol, Protocol::Tcp);
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.externalIPs[0]", "spec.ports[3].port"]);
        assert!(dns_service(std::slice::from_ref(&s)).is_some());
        assert_eq!(s.port("dns-tcp").map(|p| p.port), Some(53));
        assert_eq!(s.port("9153").map(|p| p.port), Some(9153));
    }

    #[test]
    fn backends_are_selected_pods_of_the_namespace_and_named_targets_resolve_per_pod() {
        let (s, _) = svc("
metadata: {namespace: x, name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}
");
        let pod = |ns: &str, name: &str, app: &str, port: Option<u16>| PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            ports: port
                .map(|p| NamedPort {
                    name: "http".into(),
                    port: p,
                    protocol: Protocol::Tcp,
                })
                .into_iter()
                .collect(),
            host_network: false,
        };
        let c = Cluster {
            pods: vec![
                pod("x", "a", "web", Some(8080)),
                pod("x", "b", "web", None),
                pod("x", "c", "db", Some(8080)),
                pod("y", "a", "web", Some(8080)),
            ],
            ..Default::default()
        };
        let b = s.backends(&c);
        assert_eq!(
            b.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(ServiceInfo::target_port(&s.ports[0], b[0]), Some(8080));
        assert_eq!(ServiceInfo::target_port(&s.ports[0], b[1]), None);
    }
}
