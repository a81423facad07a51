//! FROM and TO resolved to the endpoints of the connections they stand for: a pod's
//! addresses, an address (a pod's, a Service's, or one outside the cluster), a Service's
//! backends with their target ports.

use super::{ExplainError, Explainer, PortQuery, Subject, SubjectKind, SubjectSpec};
use crate::model::{Endpoint, PodInfo, Protocol};
use crate::service::ServiceInfo;

/// One side of the question, resolved to endpoints.
pub(super) struct Side<'c> {
    pub subject: Subject,
    pub ends: Vec<SideEnd<'c>>,
}

pub(super) struct SideEnd<'c> {
    pub ep: Endpoint,
    pub pod: Option<&'c PodInfo>,
    /// A Service destination: (description, protocol, target port).
    pub svc: Option<(String, Protocol, u16)>,
}

impl<'a> Explainer<'a> {
    pub(super) fn side(
        &self,
        given: &str,
        is_dst: bool,
        port: Option<&PortQuery>,
        notes: &mut Vec<String>,
    ) -> Result<Side<'a>, ExplainError> {
        let cluster = self.ev.cluster;
        match SubjectSpec::parse(given)? {
            SubjectSpec::Pod(key) => {
                let pod = cluster
                    .pod(&key)
                    .ok_or_else(|| ExplainError::PodNotFound(key.to_string()))?;
                if pod.ips.is_empty() {
                    return Err(ExplainError::NoAddress(key.to_string()));
                }
                Ok(pod_side(given, pod))
            }
            SubjectSpec::Addr(ip) => {
                if let Some(pod) = cluster.pods.iter().find(|p| p.ips.contains(&ip)) {
                    notes.push(format!("{ip} is the address of pod {}", pod.key()));
                    let mut side = pod_side(given, pod);
                    side.ends.retain(|e| e.ep.addr() == ip);
                    return Ok(side);
                }
                if let Some(svc) = self.services.iter().find(|s| s.addresses.contains(&ip)) {
                    if !is_dst {
                        return Err(ExplainError::ServiceAsSource(given.into()));
                    }
                    notes.push(format!(
                        "{ip} is an address of Service {}: explained per backend",
                        svc.key()
                    ));
                    let mut side = self.service_side(given, svc, None, port, notes)?;
                    side.ends.retain(|e| e.ep.addr().is_ipv6() == ip.is_ipv6());
                    return Ok(side);
                }
                Ok(Side {
                    subject: Subject {
                        given: given.into(),
                        kind: SubjectKind::External,
                        name: None,
                        addresses: vec![ip],
                    },
                    ends: vec![SideEnd {
                        ep: Endpoint::External(ip),
                        pod: None,
                        svc: None,
                    }],
                })
            }
            SubjectSpec::Service {
                namespace,
                name,
                port: svc_port,
            } => {
                if !is_dst {
                    return Err(ExplainError::ServiceAsSource(given.into()));
                }
                let svc = self
                    .services
                    .iter()
                    .find(|s| s.namespace == namespace && s.name == name)
                    .ok_or_else(|| ExplainError::ServiceNotFound(format!("{namespace}/{name}")))?;
                self.service_side(given, svc, svc_port.as_deref(), port, notes)
            }
        }
    }

    /// Every backend address x every Service port in question (`svc_port` from
    /// `svc:NS/NAME:PORT`, or the PORT argument read as a Service port).
    fn service_side(
        &self,
        given: &str,
        svc: &ServiceInfo,
        svc_port: Option<&str>,
        port: Option<&PortQuery>,
        notes: &mut Vec<String>,
    ) -> Result<Side<'a>, ExplainError> {
        let known = || {
            svc.ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n} {}/{}", p.port, p.protocol.k8s_name()),
                    None => format!("{}/{}", p.port, p.protocol.k8s_name()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let not_found = |port: String| ExplainError::ServicePortNotFound {
            service: svc.key(),
            port,
            known: known(),
        };
        let ports: Vec<_> = match (svc_port, port) {
            (Some(p), _) => {
                let sp = svc.port(p).ok_or_else(|| not_found(p.into()))?;
                if let Some(q) = port
                    && (q.port != Some(sp.port) || q.port_protocol() != Some(sp.protocol))
                {
                    return Err(not_found(format!("{p} with {q}")));
                }
                vec![sp]
            }
            (None, Some(q)) => {
                let found: Vec<_> = svc
                    .ports
                    .iter()
                    .filter(|p| Some(p.port) == q.port && Some(p.protocol) == q.port_protocol())
                    .collect();
                if found.is_empty() {
                    return Err(not_found(q.to_string()));
                }
                found
            }
            (None, None) => svc.ports.iter().collect(),
        };
        if svc.selector.is_none() {
            return Err(ExplainError::NoSelector(svc.key()));
        }
        let backends = svc.backends(self.ev.cluster);
        if backends.is_empty() {
            return Err(ExplainError::NoBackends(svc.key()));
        }
        let mut ends = Vec::new();
        let mut addresses = svc.addresses.clone();
        for b in &backends {
            for sp in &ports {
                let desc = format!("{} {}/{}", svc.key(), sp.port, sp.protocol.k8s_name());
                let Some(target) = ServiceInfo::target_port(sp, b) else {
                    notes.push(format!(
                        "backend {} has no container port for {desc}: kube-proxy sends it nothing",
                        b.key()
                    ));
                    continue;
                };
                for ip in &b.ips {
                    ends.push(SideEnd {
                        ep: Endpoint::Pod {
                            pod: b.key(),
                            addr: *ip,
                        },
                        pod: Some(*b),
                        svc: Some((format!("{desc} -> {target}"), sp.protocol, target)),
                    });
                }
            }
            addresses.extend(b.ips.iter().copied());
        }
        addresses.dedup();
        if ends.is_empty() {
            return Err(ExplainError::NoTargetPort(svc.key()));
        }
        Ok(Side {
            subject: Subject {
                given: given.into(),
                kind: SubjectKind::Service,
                name: Some(svc.key()),
                addresses,
            },
            ends,
        })
    }
}

fn pod_side<'c>(given: &str, pod: &'c PodInfo) -> Side<'c> {
    Side {
        subject: Subject {
            given: given.into(),
            kind: SubjectKind::Pod,
            name: Some(pod.key().to_string()),
            addresses: pod.ips.clone(),
        },
        ends: pod
            .ips
            .iter()
            .map(|ip| SideEnd {
                ep: Endpoint::Pod {
                    pod: pod.key(),
                    addr: *ip,
                },
                pod: Some(pod),
                svc: None,
            })
            .collect(),
    }
}
