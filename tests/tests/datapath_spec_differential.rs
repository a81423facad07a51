//! Tier 1, differential against the SPEC: random clusters, NetworkPolicies and
//! ClusterNetworkPolicies (Admin and Baseline tiers, Accept/Deny/Pass, namespaces, pods, nodes
//! and networks peers, ports, ranges and named ports) are compiled
//! (`palisade_policy::compile`), turned into their desired state
//! (`palisade_policy::desired_endpoint`) and
//! written by the agent's own `Applier` into the real maps of the loaded object; random new
//! flows (TCP, UDP, SCTP, ICMP, another protocol; v4 and v6; ingress at `to_pod`, egress at
//! `from_pod`; pod and external peers; numeric and named-port targets) then run through the
//! real programs with `BPF_PROG_TEST_RUN`. The kernel's verdict must be the reference
//! evaluator's (`Evaluator::check` for that direction at that pod), which reads the policy
//! objects and never the compiled form: `policy_deny` for a ClusterNetworkPolicy Deny.
//!
//! A sample of probes is also sent malformed or fragmented, with the verdict
//! `docs/datapath.md` gives: bad IHL, IHL beyond the total length, truncated L4, TCP data
//! offset < 5 (dropped `bad_header`); IPv4 options (same verdict); a first fragment (same
//! verdict) then a later fragment of it (same verdict again), and a later fragment alone
//! (only an all-ports rule for that protocol admits it: the evaluator at port 0); an IPv6
//! hop-by-hop + destination options chain, and a chain of the maximum 8 headers (same
//! verdict); 9 headers (dropped `ext_headers_too_long`).
//!
//! Each scenario applies several successive policy sets through one `Applier` (so in-place
//! updates and rewrites are both exercised against the kernel), probing new flows after each.
//!
//! Deterministic: `PALISADE_SPEC_DIFF_SEED` replays a run, `PALISADE_SPEC_DIFF_SCENARIOS`
//! sets how many scenarios (default 30).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use aya::maps::{
    HashMap as BpfHashMap, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use palisade_agent::applier::{AddrMap, Applier, Capacity, MapOps};
use palisade_common::{
    conntrack::{CtKey, CtValue},
    endpoint::EndpointInfo,
    maps,
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{PolicyKey, PolicyValue, PortKey, PortValue},
    stats::{Config, HostAddrKey},
    verdict::Reason,
};
use palisade_policy::cnp::ClusterNetworkPolicy;
use palisade_policy::{
    Cluster, DirectionVerdict, Endpoint, Evaluator, NamedPort, NodeInfo, PodInfo, Prefix, Protocol,
    RuleRegistry, compile, describe,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, Ext, V4, V6, V6Frag},
};

const DEFAULT_SCENARIOS: u64 = 30;
const PHASES: usize = 3;
const PROBES_PER_PHASE: usize = 60;
/// Percentage of probes also sent in every malformed/fragmented shape.
const VARIANT_PERCENT: u64 = 35;
const EP_ID: u32 = 7;
const GRE: u8 = 47;

use palisade_tests::rng::Rng;

// ---------------------------------------------------------------------------------------
// Random clusters and policies (the vocabulary of policy/tests/prop.rs: small enough that
// selectors, blocks, excepts and named ports collide often).
// ---------------------------------------------------------------------------------------

const NS: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 2] = ["a", "b"];
const CIDRS: [&str; 11] = [
    "10.0.0.0/24",
    "10.0.0.0/29",
    "10.0.0.0/30",
    "10.0.0.4/30",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.2/32",
    "fd00::/64",
    "fd00::/126",
    "::/0",
    "192.168.0.0/16",
];
const EXCEPTS: [&str; 12] = [
    "10.0.0.1/32",
    "10.0.0.2/31",
    "10.0.0.0/28",
    "10.0.0.4/30",
    "10.0.0.0/30",
    "10.0.0.0/24",
    "10.0.0.0/16",
    "fd00::1/128",
    "fd00::/125",
    "fd00::/64",
    "192.168.0.0/24",
    "10.0.0.100/32",
];
const EXTERNAL: [&str; 6] = [
    "10.0.0.50",
    "10.0.1.1",
    "192.168.0.1",
    "fd00::50",
    "2001:db8::1",
    "fd00::2:1",
];
const HOST_IP: &str = "10.0.0.100";
/// Node addresses (ClusterNetworkPolicy `nodes` peers): the host-network pods' address, an
/// external address, and one of nothing else.
const NODE_ADDRS: [&str; 4] = ["10.0.0.100", "10.0.1.1", "fd00::50", "192.168.7.7"];
/// Destination ports probed: policy ports, named-port targets (53, 80, 81) and misses.
const PROBE_PORTS: [u16; 7] = [53, 80, 81, 82, 83, 443, 8080];

fn labels(rng: &mut Rng) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    for _ in 0..rng.upto(2) {
        l.insert(rng.pick(&KEYS).to_string(), rng.pick(&VALUES).to_string());
    }
    l
}

fn selector(rng: &mut Rng) -> LabelSelector {
    let match_labels = rng.chance(50).then(|| labels(rng));
    let match_expressions = rng.chance(50).then(|| {
        (0..rng.upto(2))
            .map(|_| {
                let op = rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
                let values: Vec<String> = (0..1 + rng.upto(1))
                    .map(|_| rng.pick(&VALUES).to_string())
                    .collect();
                LabelSelectorRequirement {
                    key: rng.pick(&KEYS).into(),
                    operator: op.into(),
                    values: matches!(op, "In" | "NotIn").then_some(values),
                }
            })
            .collect()
    });
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

fn peer(rng: &mut Rng) -> NetworkPolicyPeer {
    if rng.chance(60) {
        let ns = rng.chance(50).then(|| selector(rng));
        let pod = rng.chance(50).then(|| selector(rng));
        let (ns, pod) = match (ns, pod) {
            (None, None) if rng.chance(50) => (None, Some(LabelSelector::default())),
            (None, None) => (Some(LabelSelector::default()), None),
            other => other,
        };
        return NetworkPolicyPeer {
            namespace_selector: ns,
            pod_selector: pod,
            ip_block: None,
        };
    }
    let cidr = rng.pick(&CIDRS);
    let c = Prefix::parse(cidr).expect("vocabulary");
    let mut except: Vec<String> = (0..rng.upto(3))
        .map(|_| rng.pick(&EXCEPTS))
        .filter(|e| {
            let e = Prefix::parse(e).expect("vocabulary");
            c.contains(&e) && e.len > c.len
        })
        .map(str::to_string)
        .collect();
    except.sort();
    except.dedup();
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.into(),
            except: (!except.is_empty()).then_some(except),
        }),
        ..Default::default()
    }
}

fn port(rng: &mut Rng) -> NetworkPolicyPort {
    let proto = rng.pick(&[None, Some("TCP"), Some("UDP"), Some("SCTP")]);
    let n = rng.pick(&[53, 80, 81, 82]);
    let (port, end_port) = match rng.below(6) {
        0 => (None, None),
        1 => (Some(IntOrString::String("http".into())), None),
        2 => (Some(IntOrString::String("dns".into())), None),
        3 => (
            Some(IntOrString::Int(n)),
            rng.chance(70).then(|| n + rng.below(3) as i32),
        ),
        _ => (Some(IntOrString::Int(n)), None),
    };
    NetworkPolicyPort {
        protocol: proto.map(str::to_string),
        port,
        end_port,
    }
}

type Rule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule(rng: &mut Rng) -> Rule {
    let peers = rng
        .chance(75)
        .then(|| (0..rng.upto(3)).map(|_| peer(rng)).collect());
    let ports = rng
        .chance(75)
        .then(|| (0..rng.upto(3)).map(|_| port(rng)).collect());
    (peers, ports)
}

/// A policy in `home` (the local pod's namespace) more often than not, so the endpoint
/// under test is isolated in most scenarios.
fn policy(rng: &mut Rng, index: usize, home: &str) -> NetworkPolicy {
    let ns = if rng.chance(60) {
        home.to_string()
    } else {
        rng.pick(&NS).to_string()
    };
    let pod_selector = if rng.chance(30) {
        LabelSelector::default()
    } else {
        selector(rng)
    };
    let policy_types = match rng.below(4) {
        0 => None,
        1 => Some(vec!["Ingress".into()]),
        2 => Some(vec!["Egress".into()]),
        _ => Some(vec!["Ingress".into(), "Egress".into()]),
    };
    let ingress = rng.chance(80).then(|| {
        (0..rng.upto(2))
            .map(|_| {
                let (from, ports) = rule(rng);
                NetworkPolicyIngressRule { from, ports }
            })
            .collect()
    });
    let egress = rng.chance(80).then(|| {
        (0..rng.upto(2))
            .map(|_| {
                let (to, ports) = rule(rng);
                NetworkPolicyEgressRule { to, ports }
            })
            .collect()
    });
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(ns),
            name: Some(format!("p{index}")),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types,
            ingress,
            egress,
        }),
    }
}

fn named_ports(rng: &mut Rng) -> Vec<NamedPort> {
    let vocab = [
        ("http", 80, Protocol::Tcp),
        ("http", 81, Protocol::Tcp),
        ("http", 80, Protocol::Udp),
        ("dns", 53, Protocol::Udp),
        ("dns", 53, Protocol::Tcp),
    ];
    let mut ports: Vec<NamedPort> = (0..rng.upto(2))
        .map(|_| {
            let (name, port, protocol) = rng.pick(&vocab);
            NamedPort {
                name: name.into(),
                port,
                protocol,
            }
        })
        .collect();
    ports.dedup_by(|a, b| a.name == b.name);
    ports
}

/// Pod `i`; pod 0 is the local endpoint under test (both families, a pod interface).
fn pod(rng: &mut Rng, i: usize) -> PodInfo {
    let v4: IpAddr = format!("10.0.0.{}", i + 1).parse().expect("v4");
    let v6: IpAddr = format!("fd00::{}", i + 1).parse().expect("v6");
    let (ips, host_network) = if i == 0 {
        (vec![v4, v6], false)
    } else {
        match rng.below(8) {
            0 => (vec![], false),
            1 => (vec![HOST_IP.parse().expect("v4")], true),
            2 | 3 => (vec![v4], false),
            4 => (vec![v6], false),
            _ => (vec![v4, v6], false),
        }
    };
    PodInfo {
        namespace: rng.pick(&NS).to_string(),
        name: format!("pod{i}"),
        labels: labels(rng),
        ips,
        ports: named_ports(rng),
        host_network,
    }
}

fn cluster_pods(rng: &mut Rng) -> (BTreeMap<String, BTreeMap<String, String>>, Vec<PodInfo>) {
    let namespaces = NS
        .iter()
        .map(|n| {
            let mut l = labels(rng);
            l.insert("kubernetes.io/metadata.name".into(), n.to_string());
            (n.to_string(), l)
        })
        .collect();
    let pods = (0..2 + rng.upto(4)).map(|i| pod(rng, i)).collect();
    (namespaces, pods)
}

fn policies(rng: &mut Rng, home: &str) -> Vec<NetworkPolicy> {
    (0..1 + rng.upto(3)).map(|i| policy(rng, i, home)).collect()
}

fn selector_json(rng: &mut Rng) -> serde_json::Value {
    serde_json::to_value(selector(rng)).expect("selector serializes")
}

fn cnp_peer(rng: &mut Rng, egress: bool) -> serde_json::Value {
    match rng.below(if egress { 4 } else { 2 }) {
        0 => serde_json::json!({"namespaces": selector_json(rng)}),
        1 => serde_json::json!({"pods": {"namespaceSelector": selector_json(rng),
                                         "podSelector": selector_json(rng)}}),
        2 => serde_json::json!({"nodes": selector_json(rng)}),
        _ => {
            serde_json::json!({"networks": (0..1 + rng.upto(1)).map(|_| rng.pick(&CIDRS)).collect::<Vec<_>>()})
        }
    }
}

fn cnp_protocol(rng: &mut Rng, named_ok: bool) -> serde_json::Value {
    if named_ok && rng.chance(20) {
        return serde_json::json!({"destinationNamedPort": rng.pick(&["http", "dns"])});
    }
    let proto = rng.pick(&["tcp", "udp", "sctp"]);
    let n = rng.pick(&[53, 80, 81, 82]);
    let port = match rng.below(4) {
        0 => serde_json::json!({"range": {"start": n, "end": n + 1}}),
        1 => serde_json::json!({"range": {"start": 1, "end": 65535}}),
        _ => serde_json::json!({"number": n}),
    };
    serde_json::json!({proto: {"destinationPort": port}})
}

fn cnp_rules(rng: &mut Rng, egress: bool) -> Vec<serde_json::Value> {
    (0..rng.upto(3))
        .map(|_| {
            let peers: Vec<serde_json::Value> = (0..1 + rng.upto(2))
                .map(|_| cnp_peer(rng, egress))
                .collect();
            // Upstream forbids named ports next to networks or nodes peers.
            let named_ok = !peers
                .iter()
                .any(|p| p.get("networks").is_some() || p.get("nodes").is_some());
            let mut r = serde_json::json!({
                "action": rng.pick(&["Accept", "Deny", "Pass"]),
                (if egress { "to" } else { "from" }): peers,
            });
            if rng.chance(60) {
                r["protocols"] = (0..1 + rng.upto(2))
                    .map(|_| cnp_protocol(rng, named_ok))
                    .collect();
            }
            r
        })
        .collect()
}

/// 0 to 2 ClusterNetworkPolicies, usually selecting the local pod's namespace.
fn cluster_policies(rng: &mut Rng, home: &str) -> Vec<ClusterNetworkPolicy> {
    (0..rng.upto(2))
        .map(|i| {
            let subject = if rng.chance(60) {
                serde_json::json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": home}}})
            } else if rng.chance(50) {
                serde_json::json!({"namespaces": selector_json(rng)})
            } else {
                serde_json::json!({"pods": {"namespaceSelector": selector_json(rng),
                                            "podSelector": selector_json(rng)}})
            };
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("cnp{i}")},
                "spec": {
                    "tier": rng.pick(&["Admin", "Baseline"]),
                    "priority": rng.below(3),
                    "subject": subject,
                    "ingress": cnp_rules(rng, false),
                    "egress": cnp_rules(rng, true),
                }
            }))
            .expect("generated ClusterNetworkPolicy parses")
        })
        .collect()
}

fn nodes(rng: &mut Rng) -> Vec<NodeInfo> {
    (0..2)
        .map(|i| NodeInfo {
            name: format!("node{i}"),
            labels: labels(rng),
            addrs: (0..1 + rng.upto(1))
                .map(|_| rng.pick(&NODE_ADDRS).parse().expect("node address"))
                .collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The agent's applier writing into the harness's maps.
// ---------------------------------------------------------------------------------------

struct HarnessMaps<'a>(&'a mut Datapath);

impl HarnessMaps<'_> {
    fn map(&mut self, name: &str) -> &mut aya::maps::Map {
        self.0
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} missing from the object"))
    }
}

/// Deleting what is already gone is fine, as for the agent's own map operations.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

/// Forgets every tracked flow, so the next frame is judged as a new flow whatever its tuple
/// (protocols without ports have one tuple per address pair).
fn clear_conntrack(dp: &mut Datapath) {
    let mut m: BpfHashMap<&mut MapData, CtKey, CtValue> = BpfHashMap::try_from(
        dp.ebpf
            .map_mut(maps::CONNTRACK)
            .expect("conntrack map in the object"),
    )
    .expect("conntrack map type");
    let keys: Vec<CtKey> = m
        .keys()
        .collect::<Result<_, _>>()
        .expect("reading conntrack keys");
    for k in keys {
        ignore_missing(m.remove(&k)).expect("deleting a conntrack entry");
    }
}

impl MapOps for HarnessMaps<'_> {
    type Error = MapError;
    fn put_policy(&mut self, p: u32, k: PolicyKey, v: PolicyValue) -> Result<(), MapError> {
        let mut m: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.map(maps::POLICY))?;
        m.insert(&Key::new(p, k), v, 0)
    }
    fn del_policy(&mut self, p: u32, k: PolicyKey) -> Result<(), MapError> {
        let mut m: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.map(maps::POLICY))?;
        ignore_missing(m.remove(&Key::new(p, k)))
    }
    fn put_port(&mut self, p: u32, k: PortKey, v: PortValue) -> Result<(), MapError> {
        let mut m: LpmTrie<&mut MapData, PortKey, PortValue> =
            LpmTrie::try_from(self.map(maps::PORTS))?;
        m.insert(&Key::new(p, k), v, 0)
    }
    fn del_port(&mut self, p: u32, k: PortKey) -> Result<(), MapError> {
        let mut m: LpmTrie<&mut MapData, PortKey, PortValue> =
            LpmTrie::try_from(self.map(maps::PORTS))?;
        ignore_missing(m.remove(&Key::new(p, k)))
    }
    fn put_endpoint(&mut self, i: u32, v: EndpointInfo) -> Result<(), MapError> {
        let mut m: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.map(maps::ENDPOINTS))?;
        m.insert(i, v, 0)
    }
    fn del_endpoint(&mut self, i: u32) -> Result<(), MapError> {
        let mut m: BpfHashMap<&mut MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.map(maps::ENDPOINTS))?;
        ignore_missing(m.remove(&i))
    }
    fn put_addr(&mut self, map: AddrMap, k: HostAddrKey) -> Result<(), MapError> {
        let mut m: BpfHashMap<&mut MapData, HostAddrKey, u32> =
            BpfHashMap::try_from(self.map(map.name()))?;
        m.insert(k, 1, 0)
    }
    fn del_addr(&mut self, map: AddrMap, k: HostAddrKey) -> Result<(), MapError> {
        let mut m: BpfHashMap<&mut MapData, HostAddrKey, u32> =
            BpfHashMap::try_from(self.map(map.name()))?;
        ignore_missing(m.remove(&k))
    }
    fn grace_period(&mut self) -> Result<(), MapError> {
        palisade_agent::datapath_ops::rcu_grace_period();
        Ok(())
    }
    fn put_config(&mut self, c: Config) -> Result<(), MapError> {
        let mut m: aya::maps::Array<&mut MapData, Config> =
            aya::maps::Array::try_from(self.map(maps::CONFIG))?;
        m.set(0, c, 0)
    }
}

// ---------------------------------------------------------------------------------------
// Probes and the frames that carry them.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Probe {
    prog: Prog,
    /// The far end: the source at `to_pod`, the destination at `from_pod`.
    peer: Endpoint,
    proto: u8,
    /// Destination port (TCP/UDP/SCTP); the policy port is 0 for other protocols.
    dport: u16,
}

impl Probe {
    fn v6(&self) -> bool {
        self.peer.addr().is_ipv6()
    }
    fn policy_port(&self) -> u16 {
        if matches!(self.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
            self.dport
        } else {
            0
        }
    }
    fn direction(&self) -> palisade_policy::Direction {
        match self.prog {
            Prog::ToPod => palisade_policy::Direction::Ingress,
            Prog::FromPod | Prog::ToUplink => palisade_policy::Direction::Egress,
        }
    }
}

/// How a probe is put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    /// IPv4 IHL below 5.
    BadIhl(u8),
    /// IPv4 IHL 6..=15 with (end-of-list) options: a valid header.
    V4Options(u8),
    /// IPv4 IHL 15 with a total length shorter than the header.
    IhlBeyondTotalLength,
    /// L4 cut to 3 bytes (before the ports / echo identifier).
    TruncatedL4,
    /// TCP data offset 4.
    TcpBadDataOffset,
    /// Offset 0, more fragments, datagram id.
    FirstFragment(u32),
    /// Offset 32 bytes, last fragment, datagram id (of the preceding first fragment).
    LaterFragment(u32),
    /// A later fragment of a datagram whose first fragment was never sent (fresh id, given
    /// when it is sent).
    LoneFragment(u32),
    /// IPv6 extension headers (hop-by-hop first, then destination options) before L4.
    ExtChain(usize),
}

struct Addrs {
    pod4: [u8; 4],
    pod6: [u8; 16],
}

fn l4(proto: u8, v6: bool, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        IPPROTO_TCP => frame::tcp(sport, dport, frame::TCP_SYN),
        IPPROTO_UDP => frame::udp(sport, dport, 8),
        IPPROTO_SCTP => frame::sctp(sport, dport),
        // Echo request: the identifier (fresh, like a source port) keys the flow.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => frame::echo(v6, true, sport),
        _ => vec![0u8; 8],
    }
}

fn build(p: &Probe, a: &Addrs, sport: u16, shape: Shape) -> Vec<u8> {
    let v6 = p.v6();
    let mut body = l4(p.proto, v6, sport, p.dport);
    match shape {
        Shape::TruncatedL4 => body.truncate(3),
        Shape::TcpBadDataOffset => body[12] = 4 << 4,
        Shape::LaterFragment(_) | Shape::LoneFragment(_) => body = vec![0u8; 16],
        Shape::FirstFragment(_) => body.extend_from_slice(&[0u8; 24]),
        _ => {}
    }
    match p.peer.addr() {
        IpAddr::V4(peer) => {
            let (src, dst) = match p.prog {
                Prog::ToPod => (peer.octets(), a.pod4),
                Prog::FromPod | Prog::ToUplink => (a.pod4, peer.octets()),
            };
            let mut h = V4::new(src, dst, p.proto);
            match shape {
                Shape::BadIhl(ihl) | Shape::V4Options(ihl) => h.ihl = ihl,
                Shape::IhlBeyondTotalLength => {
                    h.ihl = 15;
                    h.total_len = Some(40);
                }
                Shape::FirstFragment(id) => {
                    h.id = id as u16;
                    h.more_fragments = true;
                }
                Shape::LaterFragment(id) | Shape::LoneFragment(id) => {
                    h.id = id as u16;
                    h.frag_offset = 4;
                }
                _ => {}
            }
            h.frame(&body)
        }
        IpAddr::V6(peer) => {
            let (src, dst) = match p.prog {
                Prog::ToPod => (peer.octets(), a.pod6),
                Prog::FromPod | Prog::ToUplink => (a.pod6, peer.octets()),
            };
            let mut h = V6::new(src, dst, p.proto);
            match shape {
                Shape::FirstFragment(id) => {
                    h.frag = Some(V6Frag {
                        offset: 0,
                        more: true,
                        id,
                    })
                }
                Shape::LaterFragment(id) | Shape::LoneFragment(id) => {
                    h.frag = Some(V6Frag {
                        offset: 4,
                        more: false,
                        id,
                    })
                }
                Shape::ExtChain(n) => {
                    h.ext = (0..n)
                        .map(|i| Ext {
                            kind: if i == 0 { 0 } else { 60 },
                            len8: (i % 2) as u8,
                        })
                        .collect();
                }
                _ => {}
            }
            h.frame(&body)
        }
    }
}

/// The verdict of a new flow at this endpoint: the spec evaluator's direction verdict, through
/// the datapath's reasons.
fn new_flow_reason(v: DirectionVerdict, untracked_fragment: bool) -> Reason {
    if !v.isolated {
        Reason::NOT_ISOLATED
    } else if v.allowed_by_rule {
        Reason::POLICY_ALLOW
    } else if v.denied_by_rule {
        Reason::POLICY_DENY
    } else if untracked_fragment {
        Reason::FRAGMENT_UNTRACKED
    } else {
        Reason::DEFAULT_DENY
    }
}

struct Mismatch {
    text: String,
}

/// Everything about one scenario phase needed to explain a mismatch.
struct Context<'a> {
    seed: u64,
    phase: usize,
    cluster: &'a Cluster,
    compiled: String,
}

impl Context<'_> {
    fn report(
        &self,
        probe: &Probe,
        shape: Shape,
        spec: DirectionVerdict,
        want: Reason,
        got: palisade_tests::bpf::Outcome,
    ) -> Mismatch {
        let np = self
            .cluster
            .policies
            .iter()
            .map(|p| serde_saphyr::to_string(p).unwrap_or_else(|e| format!("<yaml: {e}>")));
        let cnp = self
            .cluster
            .cluster_policies
            .iter()
            .map(|p| serde_saphyr::to_string(p).unwrap_or_else(|e| format!("<yaml: {e}>")));
        let yaml = np.chain(cnp).collect::<Vec<_>>().join("---\n");
        Mismatch {
            text: format!(
                "seed {} phase {}: {:?} {} peer {} proto {} dport {} shape {:?}\n  \
                 spec evaluator: {:?} -> expected {} ({}); kernel: {} (action {})\n\
                 namespaces: {:?}\nnodes: {:?}\npods: {:#?}\npolicies:\n{yaml}\ncompiled (pod0):\n{}",
                self.seed,
                self.phase,
                probe.prog,
                probe.direction().name(),
                probe.peer,
                palisade_policy::proto_name(probe.proto),
                probe.dport,
                shape,
                spec,
                want.name(),
                if want.is_drop() { "drop" } else { "pass" },
                got.reason.name(),
                got.action,
                self.cluster.namespaces,
                self.cluster.nodes,
                self.cluster.pods,
                self.compiled,
            ),
        }
    }
}

/// Counts, to show the generator reached what matters.
#[derive(Default)]
struct Tally {
    frames: usize,
    reasons: HashMap<&'static str, usize>,
    allowed_isolated: [usize; 2],
    denied_isolated: [usize; 2],
    named_port_allows: usize,
}

#[test]
fn privileged_kernel_verdicts_equal_spec_evaluator_on_random_network_policies() {
    if !palisade_tests::require_privileges(
        "privileged_kernel_verdicts_equal_spec_evaluator_on_random_network_policies",
    ) {
        return;
    }
    let base: u64 = std::env::var("PALISADE_SPEC_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5bec);
    let scenarios: u64 = std::env::var("PALISADE_SPEC_DIFF_SCENARIOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SCENARIOS);
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let mut mismatches: Vec<Mismatch> = Vec::new();
    for scenario in 0..scenarios {
        let seed = base.wrapping_add(scenario);
        run_scenario(seed, &mut tally, &mut mismatches);
    }
    println!(
        "{} frames in {} scenarios ({:?}); reasons: {:?}; isolated allowed (in, eg) {:?}, \
         denied {:?}; allowed through a named port: {}",
        tally.frames,
        scenarios,
        started.elapsed(),
        tally.reasons,
        tally.allowed_isolated,
        tally.denied_isolated,
        tally.named_port_allows,
    );
    if !mismatches.is_empty() {
        for m in mismatches.iter().take(5) {
            eprintln!("MISMATCH {}\n", m.text);
        }
        panic!(
            "{} kernel verdicts differ from the spec evaluator (first ones above; \
             replay with PALISADE_SPEC_DIFF_SEED)",
            mismatches.len()
        );
    }
    for r in [
        "policy_allow",
        "policy_deny",
        "default_deny",
        "not_isolated",
        "bad_header",
        "fragment_untracked",
        "ct_established",
        "ext_headers_too_long",
    ] {
        assert!(
            tally.reasons.contains_key(r),
            "no frame ended in {r}: {:?}",
            tally.reasons
        );
    }
    for d in 0..2 {
        assert!(
            tally.allowed_isolated[d] > 0 && tally.denied_isolated[d] > 0,
            "direction {d}: too few isolated verdicts of each kind"
        );
    }
    assert!(
        tally.named_port_allows > 0,
        "no probe was allowed through a named port only"
    );
}

fn run_scenario(seed: u64, tally: &mut Tally, mismatches: &mut Vec<Mismatch>) {
    let mut rng = Rng::new(seed);
    let mut dp = Datapath::load().expect("loading the datapath");
    let (namespaces, pods) = cluster_pods(&mut rng);
    let local = pods[0].key();
    let home = pods[0].namespace.clone();
    let addrs = Addrs {
        pod4: [10, 0, 0, 1],
        pod6: "fd00::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    };
    let mut peers: Vec<Endpoint> = EXTERNAL
        .iter()
        .map(|a| Endpoint::External(a.parse().expect("external")))
        .collect();
    for p in &pods {
        for ip in &p.ips {
            peers.push(Endpoint::Pod {
                pod: p.key(),
                addr: *ip,
            });
        }
    }
    let mut applier = Applier::new(Capacity::default());
    let mut reg = RuleRegistry::new();
    // Fresh source ports / echo identifiers / fragment ids: every probe is a new flow.
    let mut next_sport: u16 = 10_000;
    let mut next_frag_id: u32 = 1;
    for phase in 0..PHASES {
        let cluster = Cluster {
            namespaces: namespaces.clone(),
            pods: pods.clone(),
            policies: policies(&mut rng, &home),
            cluster_policies: cluster_policies(&mut rng, &home),
            nodes: nodes(&mut rng),
        };
        let compiled = compile(&cluster, std::slice::from_ref(&local), &mut reg);
        assert!(
            compiled.problems.is_empty(),
            "seed {seed}: generated policies invalid: {:?}",
            compiled.problems
        );
        let ep = compiled
            .endpoints
            .get(&local)
            .expect("the local pod has an endpoint");
        let desired = palisade_policy::desired_endpoint(
            Some(ep),
            TEST_RUN_IFINDEX,
            EP_ID,
            &pods[0].ips,
            &mut palisade_policy::PortContents::default(),
        );
        applier
            .apply_endpoint(&mut HarnessMaps(&mut dp), &desired)
            .expect("applying the desired endpoint to the kernel maps");
        applier.commit(&mut HarnessMaps(&mut dp));
        let ctx = Context {
            seed,
            phase,
            cluster: &cluster,
            compiled: describe(ep, &reg),
        };
        let ev = Evaluator::new(&cluster);
        let pod0 = cluster.pod(&local).expect("local pod");
        for _ in 0..PROBES_PER_PHASE {
            let v6 = rng.chance(35);
            let candidates: Vec<&Endpoint> =
                peers.iter().filter(|e| e.addr().is_ipv6() == v6).collect();
            let peer = (*rng.pick(&candidates)).clone();
            let mut proto = rng.pick(&[
                IPPROTO_TCP,
                IPPROTO_TCP,
                IPPROTO_UDP,
                IPPROTO_UDP,
                IPPROTO_SCTP,
                IPPROTO_ICMP,
                GRE,
            ]);
            if v6 && proto == IPPROTO_ICMP {
                proto = IPPROTO_ICMPV6;
            }
            let mut probe = Probe {
                prog: rng.pick(&[Prog::ToPod, Prog::FromPod]),
                peer,
                proto,
                dport: rng.pick(&PROBE_PORTS),
            };
            // Often aim at a named port of the pod that resolves it (the local pod at
            // ingress, the destination pod at egress).
            let resolver = match (&probe.prog, &probe.peer) {
                (Prog::ToPod, _) => Some(pod0),
                (Prog::FromPod, Endpoint::Pod { pod, .. }) => cluster.pod(pod),
                _ => None,
            };
            if let Some(r) = resolver.filter(|r| !r.ports.is_empty() && rng.chance(40)) {
                let np = rng.pick(&r.ports);
                probe.proto = np.protocol.number();
                probe.dport = np.port;
            }
            let spec = ev.check(
                pod0,
                probe.direction(),
                &probe.peer,
                probe.proto,
                probe.policy_port(),
            );
            let d = usize::from(probe.prog == Prog::FromPod);
            if spec.isolated {
                if spec.allowed_by_rule {
                    tally.allowed_isolated[d] += 1;
                    if named_port_only(&cluster, pod0, &probe) {
                        tally.named_port_allows += 1;
                    }
                } else {
                    tally.denied_isolated[d] += 1;
                }
            }
            let plain = new_flow_reason(spec, false);
            let mut cases: Vec<(Shape, Reason)> = vec![(Shape::Plain, plain)];
            if rng.chance(VARIANT_PERCENT) {
                cases.extend(variants(&mut rng, &probe, plain, &mut next_frag_id));
            }
            // The answer for a later fragment whose first fragment was never seen: ports
            // unknown, so only an all-ports rule for this protocol (port 0 to the evaluator).
            let untracked = new_flow_reason(
                ev.check(pod0, probe.direction(), &probe.peer, probe.proto, 0),
                true,
            );
            for (shape, want) in cases {
                // A fragment alone, or after a first fragment that was dropped, is untracked:
                // judged with its ports unknown.
                let want = if matches!(shape, Shape::LoneFragment(_))
                    || (matches!(shape, Shape::LaterFragment(_)) && plain.is_drop())
                {
                    untracked
                } else {
                    want
                };
                // A later fragment continues the flow of its first fragment (same ports).
                let sport = if matches!(shape, Shape::LaterFragment(_)) {
                    next_sport.wrapping_sub(1)
                } else {
                    next_sport = next_sport.checked_add(1).unwrap_or(10_000);
                    next_sport
                };
                let shape = match shape {
                    Shape::LoneFragment(_) => {
                        next_frag_id += 1;
                        Shape::LoneFragment(next_frag_id)
                    }
                    s => s,
                };
                if !matches!(shape, Shape::LaterFragment(_)) {
                    clear_conntrack(&mut dp);
                }
                let f = build(&probe, &addrs, sport, shape);
                let got = dp.run(probe.prog, &f).expect("running the program");
                tally.frames += 1;
                *tally.reasons.entry(got.reason.name()).or_default() += 1;
                let want_action = if want.is_drop() {
                    TC_ACT_SHOT
                } else {
                    TC_ACT_OK
                };
                if got.reason != want || got.action != want_action {
                    mismatches.push(ctx.report(&probe, shape, spec, want, got));
                }
            }
        }
    }
}

/// Malformed and fragmented shapes of `probe`, with the reason docs/datapath.md gives each.
fn variants(
    rng: &mut Rng,
    probe: &Probe,
    plain: Reason,
    next_frag_id: &mut u32,
) -> Vec<(Shape, Reason)> {
    let mut out = Vec::new();
    let has_l4_header = matches!(
        probe.proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_ICMP | IPPROTO_ICMPV6
    );
    if !probe.v6() {
        out.push((Shape::BadIhl(rng.below(5) as u8), Reason::BAD_HEADER));
        out.push((Shape::V4Options(6 + rng.below(10) as u8), plain));
        out.push((Shape::IhlBeyondTotalLength, Reason::BAD_HEADER));
    } else {
        out.push((Shape::ExtChain(2), plain));
        out.push((Shape::ExtChain(8), plain));
        out.push((Shape::ExtChain(9), Reason::EXT_HEADERS_TOO_LONG));
    }
    out.push((
        Shape::TruncatedL4,
        if has_l4_header {
            Reason::BAD_HEADER
        } else {
            plain
        },
    ));
    if probe.proto == IPPROTO_TCP {
        out.push((Shape::TcpBadDataOffset, Reason::BAD_HEADER));
    }
    // A first fragment is a new flow like the plain probe; the later fragment of the same
    // datagram continues it (established) when the first passed, and is untracked (dropped,
    // since no all-ports rule admitted the first) when it did not.
    *next_frag_id += 1;
    let id = *next_frag_id;
    out.push((Shape::FirstFragment(id), plain));
    out.push((
        Shape::LaterFragment(id),
        if plain.is_drop() {
            Reason::FRAGMENT_UNTRACKED
        } else {
            Reason::CT_ESTABLISHED
        },
    ));
    out.push((Shape::LoneFragment(0), Reason::FRAGMENT_UNTRACKED));
    out
}

/// Whether the probe is allowed only by port entries that name a port (so a named-port
/// resolution is what admitted it): the same probe is denied once every pod's named ports
/// are removed.
fn named_port_only(cluster: &Cluster, pod0: &PodInfo, probe: &Probe) -> bool {
    let mut bare = cluster.clone();
    for p in &mut bare.pods {
        p.ports.clear();
    }
    let ev2 = Evaluator::new(&bare);
    let pod = bare.pod(&pod0.key()).expect("pod0");
    !ev2.check(
        pod,
        probe.direction(),
        &probe.peer,
        probe.proto,
        probe.policy_port(),
    )
    .allowed_by_rule
}
