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

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use palisade_common::events::{
    EV_DNS_OTHER_SERVER, EV_REPLY, EV_SERVICE, FlowEvent, VERDICT_AUDIT, VERDICT_DROPPED,
    VERDICT_FORWARDED,
};
use palisade_common::verdict::Reason;
use palisade_common::{DIR_INGRESS, FAMILY_V4, FAMILY_V6};
use palisade_policy::explain::{DirectionExplanation, Explainer, PolicyKind, PolicySet};
use palisade_policy::{Cluster, Direction, PodKey, Prepared, RuleKind, RuleRegistry};

use crate::source::Snapshot;
use palisade_node_api::flow::{
    Endpoint, Flow, FlowRecord, Icmp, Interface, Ip, L4, Policy, Ports, Rule, Service, Tcp,
    TcpFlags,
};

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

    /// `*_allowed_by` / `*_denied_by`.
    fn name_policies(
        &self,
        e: &FlowEvent,
        reason: Reason,
        local_pod: Option<&PodKey>,
        flow: &mut Flow,
        explain: &mut Lazy,
    ) {
        let decided_by_policy = reason == Reason::POLICY_ALLOW
            || reason == Reason::POLICY_DENY
            || reason == Reason::DEFAULT_DENY
            || reason == Reason::POLICY_CHANGED
            || reason == Reason::CT_RESTORED
            || reason == Reason::FRAGMENT_UNTRACKED
            || e.verdict == VERDICT_AUDIT
            || (reason == Reason::NOT_ISOLATED && e.rule_ref != 0);
        let Some(pod) = local_pod.filter(|_| decided_by_policy) else {
            return;
        };
        let Some(info) = self.cluster.pod(pod) else {
            return;
        };
        // The question the datapath asked: a reply cut by a policy change (or restored after
        // its entry was lost) is checked as the flow it replies to (the other direction; the
        // peer is the same address).
        let mut dir = if e.dir == DIR_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let (mut peer_addr, mut port) = if dir == Direction::Ingress {
            (
                addr_of(e.family, &e.saddr_be),
                u16::from_be_bytes(e.dport_be),
            )
        } else {
            (
                addr_of(e.family, &e.daddr_be),
                u16::from_be_bytes(e.dport_be),
            )
        };
        if e.flags & EV_REPLY != 0 {
            dir = match dir {
                Direction::Ingress => Direction::Egress,
                Direction::Egress => Direction::Ingress,
            };
            port = u16::from_be_bytes(e.sport_be);
            if e.dir == DIR_INGRESS {
                peer_addr = addr_of(e.family, &e.saddr_be);
            }
        }
        let Some(peer_addr) = peer_addr else { return };
        let port = if matches!(e.proto, 6 | 17 | 132) {
            port
        } else {
            0
        };
        let peer = match self.pods_by_ip.get(&peer_addr) {
            Some(p) => palisade_policy::Endpoint::Pod {
                pod: PodKey::new(&p.namespace, &p.pod_name),
                addr: peer_addr,
            },
            None => palisade_policy::Endpoint::External(peer_addr),
        };
        let audit =
            e.verdict == VERDICT_AUDIT || (reason == Reason::NOT_ISOLATED && e.rule_ref != 0);
        let expl = explain.direction(audit, pod, info, dir, peer, e.proto, port);
        let (allowed, denied) = match dir {
            Direction::Ingress => (&mut flow.ingress_allowed_by, &mut flow.ingress_denied_by),
            Direction::Egress => (&mut flow.egress_allowed_by, &mut flow.egress_denied_by),
        };
        if e.rule_ref != 0 && e.verdict == VERDICT_FORWARDED {
            allowed.extend(self.policy_of(e.rule_ref, &expl, audit));
        } else if e.rule_ref != 0 && reason == Reason::POLICY_DENY {
            // A tier's Deny rule decided (not isolation): name that rule.
            denied.extend(self.policy_of(e.rule_ref, &expl, audit));
        } else if e.verdict != VERDICT_FORWARDED {
            denied.extend(isolating(&expl, audit));
        }
    }

    /// The policy and rule behind a rule reference, with the peer and port entry that
    /// matched (from the explanation of the same direction).
    fn policy_of(&self, rule_ref: u32, expl: &DirectionExplanation, audit: bool) -> Option<Policy> {
        let id = self.registry.describe(rule_ref)?;
        let kind = match id.kind {
            RuleKind::NetworkPolicy => "NetworkPolicy",
            RuleKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            // No tier decided: the default allow, which no policy names.
            RuleKind::DefaultAllow => return None,
        };
        let matched = expl
            .policies
            .iter()
            .find(|p| p.namespace.as_deref() == Some(id.namespace.as_str()) && p.name == id.policy)
            .and_then(|p| p.rules.get(id.index));
        Some(Policy {
            kind: kind.into(),
            namespace: id.namespace.clone(),
            name: id.policy.clone(),
            audit,
            rule: Some(Rule {
                path: format!("spec.{}[{}]", id.direction.name(), id.index),
                index: id.index,
                peer: matched.and_then(|r| r.peer_match.clone()),
                port: matched.and_then(|r| r.port_match.clone()),
            }),
        })
    }
}

/// The policies isolating the pod in the explained direction (none of whose rules allowed
/// the flow, or it would not have been denied).
fn isolating(expl: &DirectionExplanation, audit: bool) -> Vec<Policy> {
    expl.policies
        .iter()
        .map(|p| Policy {
            kind: match p.kind {
                PolicyKind::NetworkPolicy => "NetworkPolicy".into(),
                PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy".into(),
            },
            namespace: p.namespace.clone().unwrap_or_default(),
            name: p.name.clone(),
            audit,
            rule: None,
        })
        .collect()
}

/// The explainers of one batch: over the enforced policies, and over the audited ones (as if
/// enforced: what they would decide).
struct Lazy<'n> {
    names: &'n Names,
    sets: Option<(PolicySet, PolicySet)>,
    enforced: Option<Explainer<'n>>,
    audited: Option<Explainer<'n>>,
    /// The explanations this batch asked for, by question. An explanation walks every rule of
    /// the policies selecting the pod; a burst of new flows between the same pods on the same
    /// port (alike but for the client's port) asks the same question, answered once here
    /// instead of once per event (with 10,000 rules, once per event cost `bench datapath`'s
    /// TCP_CRR ~5 points with events on: docs/performance.md).
    explained: HashMap<Question, Rc<DirectionExplanation>>,
}

/// An explanation's question: the pod, the direction, the peer, protocol and port, and
/// whether the audited policies answer it.
type Question = (PodKey, Direction, palisade_policy::Endpoint, u8, u16, bool);

impl<'n> Lazy<'n> {
    fn new(names: &'n Names) -> Self {
        Lazy {
            names,
            sets: None,
            enforced: None,
            audited: None,
            explained: HashMap::new(),
        }
    }

    /// `Explainer::direction_on_port` of the enforced (or audited) explainer, once per
    /// question per batch.
    #[allow(clippy::too_many_arguments)]
    fn direction(
        &mut self,
        audit: bool,
        pod: &PodKey,
        info: &palisade_policy::PodInfo,
        dir: Direction,
        peer: palisade_policy::Endpoint,
        proto: u8,
        port: u16,
    ) -> Rc<DirectionExplanation> {
        let question = (pod.clone(), dir, peer, proto, port, audit);
        if let Some(e) = self.explained.get(&question) {
            return e.clone();
        }
        let e = Rc::new(
            self.get(audit)
                .direction_on_port(info, dir, &question.2, proto, port),
        );
        self.explained.insert(question, e.clone());
        e
    }

    fn get(&mut self, audit: bool) -> &Explainer<'n> {
        let names = self.names;
        let sets = self.sets.get_or_insert_with(|| {
            let refs: Vec<&Prepared> = names.prepared.iter().map(|p| &**p).collect();
            let all = PolicySet::from_prepared(&refs);
            let audited = all.audited();
            (all, audited)
        });
        let slot = if audit {
            &mut self.audited
        } else {
            &mut self.enforced
        };
        slot.get_or_insert_with(|| {
            let set = if audit { &sets.1 } else { &sets.0 };
            Explainer::new(&names.cluster, set, &[])
        })
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
mod tests {
    use super::*;
    use crate::compile::Compiler;
    use palisade_common::DIR_EGRESS;
    use palisade_common::events::EV_REPLY;
    use palisade_common::events::{EV_PARTIAL, EV_SERVICE};
    use palisade_node_api::endpoint::EndpointRecord;
    use palisade_policy::{Direction, RuleId};

    const ALLOW_B: &str = "metadata: {name: allow-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 192.0.2.0/24}}, {podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 53, protocol: UDP}, {port: 80}]\n";
    const DENY: &str =
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
    const AUDIT_EGRESS: &str = "metadata: {name: audit-egress, namespace: x, annotations: {policy.palisade.io/audit: 'true'}}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress]}\n";
    const SVC: &str = "metadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 8080, targetPort: 80}]}\n";

    fn addr(ip: [u8; 4]) -> [u8; 16] {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&ip);
        a
    }

    /// x/a (ep 1) and x/b (ep 2) on this node, x/c elsewhere; the policies above.
    fn names() -> (Names, RuleRegistry) {
        let mut snap = Snapshot::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(&format!(
                "metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\nspec: {{nodeName: n{}, containers: []}}\nstatus: {{podIP: 10.244.0.{}}}\n",
                usize::from(i == 2),
                i + 1
            ))
            .unwrap();
            snap.pods
                .insert(("x".into(), (*name).into()), Arc::new(pod));
        }
        for p in [ALLOW_B, DENY, AUDIT_EGRESS] {
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_saphyr::from_str(p).unwrap();
            let key = (
                "x".to_string(),
                np.metadata.name.clone().unwrap_or_default(),
            );
            snap.policies.insert(key, Arc::new(np));
        }
        let svc: k8s_openapi::api::core::v1::Service = serde_saphyr::from_str(SVC).unwrap();
        snap.services
            .insert(("x".into(), "web".into()), Arc::new(svc));
        let records: Vec<EndpointRecord> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| EndpointRecord {
                container_id: format!("c{n}"),
                netns: String::new(),
                ifname: "eth0".into(),
                pod_namespace: Some("x".into()),
                pod_name: Some((*n).into()),
                ips: vec![format!("10.244.0.{}/24", i + 1)],
                host_veth: format!("pal{n}"),
                host_ifindex: 10 + i as u32,
                mac: String::new(),
                created_unix_ms: 0,
            })
            .collect();
        let locals: Vec<(String, &EndpointRecord)> = records.iter().map(|r| (r.key(), r)).collect();
        let mut compiler = Compiler::load(std::path::Path::new("/nonexistent"));
        let compiled = compiler.compile(&snap, &locals);
        let endpoints = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (ns, n) = r.pod().unwrap();
                (
                    i as u32 + 1,
                    LocalEndpoint {
                        pod: Some(PodKey::new(&ns, &n)),
                        ifindex: r.host_ifindex,
                        host_veth: r.host_veth.clone(),
                    },
                )
            })
            .collect();
        let names = Names::build(NamesInput {
            node: "n0",
            snapshot: &snap,
            endpoints,
            registry: compiler.registry(),
            prepared: compiler.prepared().cloned().collect(),
            cluster: compiled.cluster.clone(),
            host: BTreeSet::from([IpAddr::from([192, 168, 0, 1])]),
        });
        (names, compiler.registry().clone())
    }

    fn event(verdict: u8, reason: Reason, src: [u8; 4], dst: [u8; 4], dport: u16) -> FlowEvent {
        FlowEvent {
            time_ns: 1_000_000_000,
            ep_id: 1,
            ifindex: 10,
            reason: reason.0,
            verdict,
            dir: DIR_INGRESS,
            family: FAMILY_V4,
            proto: 6,
            tcp_flags: 0x02,
            saddr_be: addr(src),
            daddr_be: addr(dst),
            sport_be: 40000u16.to_be_bytes(),
            dport_be: dport.to_be_bytes(),
            ..Default::default()
        }
    }

    #[test]
    fn a_default_deny_names_every_policy_isolating_the_pod() {
        let (names, _) = names();
        let e = event(
            VERDICT_DROPPED,
            Reason::DEFAULT_DENY,
            [10, 244, 0, 3],
            [10, 244, 0, 1],
            81,
        );
        let r = &names.resolve(&[e], 0)[0];
        let f = &r.flow;
        assert_eq!(
            (f.verdict.as_str(), f.reason.as_str()),
            ("DROPPED", "default_deny")
        );
        assert_eq!(f.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(
            (f.source.pod(), f.destination.pod()),
            ("x/c".into(), "x/a".into())
        );
        assert_eq!(f.source.node_name, "n1");
        assert!(f.source.labels.contains(&"k8s:pod=c".to_string()));
        let denied: Vec<String> = f.ingress_denied_by.iter().map(|p| p.key()).collect();
        assert_eq!(denied, ["x/allow-b", "x/deny"]);
        assert_eq!(f.interface.name, "pala");
        assert_eq!(f.summary, "TCP Flags: SYN");
        assert_eq!(r.time, "1970-01-01T00:00:01.000000000Z");
    }

    #[test]
    fn an_allowed_flow_names_the_rule_the_peer_and_the_port_that_matched() {
        let (names, reg) = names();
        let rule = reg
            .get(&RuleId::network_policy(
                "x",
                "allow-b",
                Direction::Ingress,
                0,
            ))
            .unwrap();
        let mut e = event(
            VERDICT_FORWARDED,
            Reason::POLICY_ALLOW,
            [10, 244, 0, 2],
            [10, 244, 0, 1],
            80,
        );
        e.rule_ref = rule;
        let f = &names.resolve(&[e], 0)[0].flow;
        let p = &f.ingress_allowed_by[0];
        assert_eq!(p.key(), "x/allow-b");
        let r = p.rule.as_ref().unwrap();
        assert_eq!((r.path.as_str(), r.index), ("spec.ingress[0]", 0));
        assert!(r.peer.as_deref().unwrap().starts_with("from[1]"), "{r:?}");
        assert!(r.port.as_deref().unwrap().starts_with("ports[1]"), "{r:?}");
        assert!(f.drop_reason_desc.is_none() && f.ingress_denied_by.is_empty());
    }

    #[test]
    fn an_audit_names_the_audited_policies_and_services_are_named() {
        let (names, _) = names();
        let mut e = event(
            VERDICT_AUDIT,
            Reason::DEFAULT_DENY,
            [10, 244, 0, 2],
            [10, 244, 0, 3],
            80,
        );
        e.ep_id = 2;
        e.dir = DIR_EGRESS;
        e.flags = EV_SERVICE;
        e.svc_addr_be = addr([10, 96, 0, 7]);
        e.svc_port_be = 8080u16.to_be_bytes();
        let f = &names.resolve(&[e], 0)[0].flow;
        assert_eq!(f.verdict, "AUDIT");
        assert_eq!(f.egress_denied_by.len(), 1);
        assert_eq!(f.egress_denied_by[0].key(), "x/audit-egress");
        assert!(f.egress_denied_by[0].audit);
        let s = f.destination_service.as_ref().unwrap();
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str(), s.address.as_str()),
            ("x", "web", "10.96.0.7:8080")
        );
        assert_eq!(f.destination.pod(), "x/c");
    }

    /// A DNS answer from another resolver says it taught nothing (egress by domain name).
    #[test]
    fn an_answer_from_another_resolver_says_it_taught_nothing() {
        let (names, _) = names();
        let mut e = event(
            VERDICT_FORWARDED,
            Reason::CT_REPLY,
            [8, 8, 8, 8],
            [10, 244, 0, 1],
            5353,
        );
        e.flags = EV_REPLY | EV_DNS_OTHER_SERVER;
        let f = &names.resolve(&[e], 0)[0].flow;
        assert_eq!(f.dns_not_learnt.as_deref(), Some("other_server"));
        assert!(
            f.summary.contains("not from the cluster DNS service"),
            "{}",
            f.summary
        );
    }

    #[test]
    fn events_without_an_endpoint_or_a_known_peer_say_what_is_known() {
        let (names, _) = names();
        let mut e = event(VERDICT_DROPPED, Reason::NO_ENDPOINT, [0; 4], [0; 4], 0);
        e.ep_id = 0;
        e.ifindex = 11;
        e.family = 0;
        e.flags = EV_PARTIAL;
        let f = &names.resolve(&[e], 0)[0].flow;
        assert!(f.ip.is_none() && f.l4.is_none());
        assert_eq!(f.interface.name, "palb");
        assert_eq!(f.source.labels, ["reserved:unknown"]);
        // The node and the world.
        let e = event(
            VERDICT_FORWARDED,
            Reason::NOT_ISOLATED,
            [192, 168, 0, 1],
            [10, 244, 0, 1],
            80,
        );
        assert_eq!(
            names.resolve(&[e], 0)[0].flow.source.labels,
            ["reserved:host"]
        );
        let e = event(
            VERDICT_FORWARDED,
            Reason::NOT_ISOLATED,
            [8, 8, 8, 8],
            [10, 244, 0, 1],
            80,
        );
        assert_eq!(
            names.resolve(&[e], 0)[0].flow.source.labels,
            ["reserved:world"]
        );
    }
}
