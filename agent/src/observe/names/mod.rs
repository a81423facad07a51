//! Numbers to names: a `FlowEvent` of the datapath becomes a `FlowRecord` naming pods,
//! Services, policies, rules, the matching peer and port, and the reason.
//!
//! `Names` is a snapshot of what the agent enforced, built after every apply (`Names::build`)
//! and shared with the ring-buffer reader. Rules are named through the rule registry
//! (`rule_ref` -> policy, direction, rule index: the datapath's own reference, so the name is
//! the rule that decided); the peer and port entry that matched, and the policies isolating a
//! pod for a default deny, come from `palisade_policy::explain` over the same policies (the
//! evaluator's rule matching, so they cannot disagree with the compiled policy). A new policy
//! kind plugs in where `policy_of` turns a rule reference into a `Policy` and where
//! `explain` lists the policies of a direction.
//!
//! This module holds `Names` and the naming of endpoints, Services, layer 4 and times;
//! `policies` names the policies and rules behind a verdict (the explanation walk), and
//! `batch_cache` keeps the explainers and explanations of one batch of events.

mod batch_cache;
mod policies;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_common::events::{
    EV_DNS_OTHER_SERVER, EV_REPLY, EV_SERVICE, FlowEvent, VERDICT_AUDIT, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};
use palisade_common::verdict::Reason;
use palisade_common::{DIR_INGRESS, FAMILY_V4, FAMILY_V6};
use palisade_policy::{Cluster, PodKey, Prepared, RuleRegistry};

use crate::source::Snapshot;
use palisade_node_api::flow::{
    Endpoint, Flow, FlowRecord, Icmp, Interface, Ip, L4, Ports, Service, Tcp, TcpFlags,
};

use batch_cache::Lazy;

/// A pod on this node, by its endpoint id.
#[derive(Clone, Debug)]
pub struct LocalEndpoint {
    pub pod: Option<PodKey>,
    pub ifindex: u32,
    pub host_veth: String,
}

/// What names are made of, as of one apply.
#[derive(Default)]
pub struct Names {
    node: String,
    endpoints: HashMap<u32, LocalEndpoint>,
    /// Interface index -> host veth name (events without an endpoint name an interface).
    interfaces: HashMap<u32, String>,
    pods_by_ip: HashMap<IpAddr, Arc<Endpoint>>,
    /// (address, port, protocol number) -> (namespace, name).
    services: HashMap<(IpAddr, u16, u8), (String, String)>,
    /// Addresses of this node.
    host: BTreeSet<IpAddr>,
    registry: RuleRegistry,
    cluster: Arc<Cluster>,
    prepared: Vec<Arc<Prepared>>,
}

/// The inputs of `Names::build`, borrowed from the agent.
pub struct NamesInput<'a> {
    pub node: &'a str,
    pub snapshot: &'a Snapshot,
    pub endpoints: Vec<(u32, LocalEndpoint)>,
    pub registry: &'a RuleRegistry,
    pub prepared: Vec<Arc<Prepared>>,
    pub cluster: Arc<Cluster>,
    pub host: BTreeSet<IpAddr>,
}

/// `FlowEvent` verdicts in Hubble's words.
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        VERDICT_FORWARDED => "FORWARDED",
        VERDICT_DROPPED => "DROPPED",
        VERDICT_AUDIT => "AUDIT",
        _ => "VERDICT_UNKNOWN",
    }
}

/// Hubble's `drop_reason_desc` where the meaning is the same, else Palisade's reason name
/// in capitals.
pub fn drop_reason_desc(r: Reason) -> String {
    match r {
        Reason::DEFAULT_DENY | Reason::POLICY_CHANGED => "POLICY_DENIED".into(),
        Reason::SPOOFED_SOURCE => "INVALID_SOURCE_IP".into(),
        Reason::BAD_HEADER | Reason::EXT_HEADERS_TOO_LONG => "INVALID_PACKET_DROPPED".into(),
        Reason::UNKNOWN_L3 => "UNSUPPORTED_L3_PROTOCOL".into(),
        r => r.name().to_ascii_uppercase(),
    }
}

fn addr_of(family: u8, be: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([be[0], be[1], be[2], be[3]])),
        FAMILY_V6 => Some(IpAddr::from(*be)),
        _ => None,
    }
}

/// `k8s:key=value` labels of a pod, with Hubble's namespace label, sorted.
fn pod_labels(ns: &str, labels: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("k8s:{k}={v}"))
        .chain([format!("k8s:io.kubernetes.pod.namespace={ns}")])
        .collect();
    out.sort();
    out
}

fn socket(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

impl Names {
    pub fn build(input: NamesInput<'_>) -> Names {
        let snap = input.snapshot;
        let mut pods_by_ip = HashMap::new();
        for ((ns, name), pod) in &snap.pods {
            let (info, _) = palisade_policy::pod_info(pod);
            if info.host_network {
                continue;
            }
            let ep = Arc::new(Endpoint {
                namespace: ns.clone(),
                pod_name: name.clone(),
                labels: pod_labels(ns, info.labels.clone()),
                node_name: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            });
            for ip in info.ips {
                pods_by_ip.insert(ip, ep.clone());
            }
        }
        let mut services = HashMap::new();
        for ((ns, name), svc) in &snap.services {
            let Some(spec) = &svc.spec else { continue };
            let addrs = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .chain(spec.external_ips.iter().flatten())
                .filter_map(|a| a.parse::<IpAddr>().ok());
            for a in addrs {
                for p in spec.ports.iter().flatten() {
                    let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                        "UDP" => 17,
                        "SCTP" => 132,
                        _ => 6,
                    };
                    services.insert(
                        (a, p.port.clamp(0, 65535) as u16, proto),
                        (ns.clone(), name.clone()),
                    );
                }
            }
        }
        let interfaces = input
            .endpoints
            .iter()
            .map(|(_, e)| (e.ifindex, e.host_veth.clone()))
            .collect();
        Names {
            node: input.node.to_string(),
            endpoints: input.endpoints.into_iter().collect(),
            interfaces,
            pods_by_ip,
            services,
            host: input.host,
            registry: input.registry.clone(),
            cluster: input.cluster,
            prepared: input.prepared,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether any policy of `(namespace, name)` is still enforced or audited (metrics prune
    /// series of deleted policies).
    pub fn has_policy(&self, key: &str) -> bool {
        self.prepared.iter().any(|p| {
            let (ns, n) = p.key();
            format!("{ns}/{n}") == key
        })
    }

    /// Names a batch of events. `wall_offset_ns`: realtime minus monotonic clock now.
    pub fn resolve(&self, events: &[FlowEvent], wall_offset_ns: i128) -> Vec<FlowRecord> {
        // Explainers are built once per batch, and only when some event needs one.
        let mut explain = Lazy::new(self);
        events
            .iter()
            .map(|e| self.resolve_one(e, wall_offset_ns, &mut explain))
            .collect()
    }

    fn endpoint_of(&self, addr: Option<IpAddr>, local: Option<&PodKey>) -> Endpoint {
        if let Some(key) = local
            && let Some(a) = addr
            && let Some(ep) = self.pods_by_ip.get(&a)
            && ep.namespace == key.namespace
            && ep.pod_name == key.name
        {
            return (**ep).clone();
        }
        if let Some(key) = local {
            return Endpoint {
                namespace: key.namespace.clone(),
                pod_name: key.name.clone(),
                labels: pod_labels(&key.namespace, []),
                node_name: self.node.clone(),
            };
        }
        match addr {
            Some(a) => match self.pods_by_ip.get(&a) {
                Some(ep) => (**ep).clone(),
                None if self.host.contains(&a) => Endpoint {
                    labels: vec!["reserved:host".into()],
                    node_name: self.node.clone(),
                    ..Default::default()
                },
                None => Endpoint {
                    labels: vec!["reserved:world".into()],
                    ..Default::default()
                },
            },
            None => Endpoint {
                labels: vec!["reserved:unknown".into()],
                ..Default::default()
            },
        }
    }

    fn resolve_one(&self, e: &FlowEvent, wall_offset_ns: i128, explain: &mut Lazy) -> FlowRecord {
        let reason = Reason(e.reason);
        let ingress = e.dir == DIR_INGRESS;
        let (src, dst) = (
            addr_of(e.family, &e.saddr_be),
            addr_of(e.family, &e.daddr_be),
        );
        let (sport, dport) = (
            u16::from_be_bytes(e.sport_be),
            u16::from_be_bytes(e.dport_be),
        );
        let local = self.endpoints.get(&e.ep_id);
        let local_pod = local.and_then(|l| l.pod.as_ref());
        let (source, destination) = if ingress {
            (
                self.endpoint_of(src, None),
                self.endpoint_of(dst, local_pod),
            )
        } else {
            (
                self.endpoint_of(src, local_pod),
                self.endpoint_of(dst, None),
            )
        };
        let time = format_time(e.time_ns, wall_offset_ns);
        let mut flow = Flow {
            time: time.clone(),
            verdict: verdict_name(e.verdict).into(),
            drop_reason_desc: (e.verdict != VERDICT_FORWARDED).then(|| drop_reason_desc(reason)),
            reason: reason.name().into(),
            ip: src.zip(dst).map(|(s, d)| Ip {
                source: s.to_string(),
                destination: d.to_string(),
                ip_version: if s.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            }),
            l4: l4_of(e, sport, dport),
            source,
            destination,
            destination_service: None,
            node_name: self.node.clone(),
            traffic_direction: if ingress { "INGRESS" } else { "EGRESS" }.into(),
            is_reply: e.flags & EV_REPLY != 0,
            interface: Interface {
                index: e.ifindex,
                name: local
                    .map(|l| l.host_veth.clone())
                    .or_else(|| self.interfaces.get(&e.ifindex).cloned())
                    .unwrap_or_default(),
            },
            suppressed: e.suppressed,
            ..Default::default()
        };
        if e.flags & EV_SERVICE != 0
            && let Some(a) = addr_of(e.family, &e.svc_addr_be)
        {
            let port = u16::from_be_bytes(e.svc_port_be);
            let (namespace, name) = self
                .services
                .get(&(a, port, e.proto))
                .cloned()
                .unwrap_or_default();
            flow.destination_service = Some(Service {
                namespace,
                name,
                address: socket(a, port),
            });
        }
        if e.flags & EV_DNS_OTHER_SERVER != 0 {
            flow.dns_not_learnt = Some("other_server".into());
        }
        self.name_policies(e, reason, local_pod, &mut flow, explain);
        flow.summary = summary(&flow, e);
        FlowRecord {
            flow,
            node_name: self.node.clone(),
            time,
        }
    }
}

fn l4_of(e: &FlowEvent, sport: u16, dport: u16) -> Option<L4> {
    if e.family == 0 {
        return None;
    }
    let ports = Ports {
        source_port: sport,
        destination_port: dport,
    };
    let icmp = Icmp {
        ty: e.icmp_type,
        code: e.icmp_code,
    };
    let mut l4 = L4::default();
    match e.proto {
        6 => {
            l4.tcp = Some(Tcp {
                source_port: sport,
                destination_port: dport,
                flags: TcpFlags::from_bits(e.tcp_flags),
            })
        }
        17 => l4.udp = Some(ports),
        132 => l4.sctp = Some(ports),
        1 => l4.icmpv4 = Some(icmp),
        58 => l4.icmpv6 = Some(icmp),
        p => l4.protocol = Some(p),
    }
    Some(l4)
}

/// One line, like Hubble's `Summary`.
fn summary(flow: &Flow, e: &FlowEvent) -> String {
    let l4 = flow.l4.as_ref();
    let what = if let Some(t) = l4.and_then(|l| l.tcp.as_ref()) {
        format!("TCP Flags: {}", t.flags.names())
    } else if let Some(i) = l4.and_then(|l| l.icmpv4.as_ref().or(l.icmpv6.as_ref())) {
        let v = if e.proto == 1 { "ICMPv4" } else { "ICMPv6" };
        format!("{v} type {} code {}", i.ty, i.code)
    } else {
        flow.l4_parts().2
    };
    if e.suppressed > 0 {
        format!(
            "{what} ({} more drops of this flow not shown)",
            e.suppressed
        )
    } else if e.flags & EV_DNS_OTHER_SERVER != 0 {
        format!(
            "{what} (DNS answer not from the cluster DNS service: its names' addresses are not \
             learnt)"
        )
    } else {
        what
    }
}

/// RFC 3339 with nanoseconds, UTC.
fn format_time(mono_ns: u64, wall_offset_ns: i128) -> String {
    let wall = i128::from(mono_ns) + wall_offset_ns;
    jiff::Timestamp::from_nanosecond(wall)
        .map(|t| format!("{t:.9}"))
        .unwrap_or_default()
}

/// Realtime minus monotonic clock, nanoseconds (event times are `bpf_ktime_get_ns`).
pub fn wall_offset_ns() -> i128 {
    let read = |clock| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(clock, &mut t) };
        i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// The time of a flow as Unix nanoseconds (for `--since`).
pub fn parse_time(s: &str) -> Option<i128> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_nanosecond())
}

#[cfg(test)]
mod tests;
