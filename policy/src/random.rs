//! Random clusters, NetworkPolicies and ClusterNetworkPolicies as proptest strategies (feature
//! `testing`): the one generator behind the policy crate's property tests
//! (`policy/tests/prop.rs`, shrinking) and the kernel differential test
//! (`tests/tests/datapath_spec_differential.rs`, drawing from a seeded runner so that a seed
//! replays a run).
//!
//! The vocabulary is small on purpose, so that selectors, blocks, excepts and named ports
//! collide often: namespaces [`NS`], label keys [`KEYS`] and values [`VALUES`], blocks from
//! [`CIDRS`] with holes from [`EXCEPTS`], pod `i` at `10.0.0.<i+1>` / `fd00::<i+1>` (or the
//! host-network [`HOST_IP`]), nodes at [`NODE_ADDRS`], peers outside the cluster at
//! [`EXTERNAL`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use crate::cnp::ClusterNetworkPolicy;
use crate::{Cluster, Labels, NamedPort, NodeInfo, PodInfo, Prefix, Protocol};

pub const NS: [&str; 3] = ["n0", "n1", "n2"];
pub const KEYS: [&str; 2] = ["app", "tier"];
pub const VALUES: [&str; 2] = ["a", "b"];
pub const CIDRS: [&str; 11] = [
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
pub const EXCEPTS: [&str; 12] = [
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
/// Peers outside the cluster: in and out of the blocks above, and node addresses.
pub const EXTERNAL: [&str; 6] = [
    "10.0.0.50",
    "10.0.1.1",
    "192.168.0.1",
    "fd00::50",
    "2001:db8::1",
    "fd00::2:1",
];
/// The address of host-network pods.
pub const HOST_IP: &str = "10.0.0.100";
/// Node addresses (ClusterNetworkPolicy `nodes` peers): the host-network pods' address,
/// addresses of [`EXTERNAL`], and ones of nothing else.
pub const NODE_ADDRS: [&str; 5] = [
    "10.0.0.100",
    "10.0.1.1",
    "fd00::50",
    "192.168.7.7",
    "fd00::7",
];

pub fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        prop::sample::select(&KEYS[..]).prop_map(str::to_string),
        prop::sample::select(&VALUES[..]).prop_map(str::to_string),
        0..=2,
    )
}

pub fn selector() -> impl Strategy<Value = LabelSelector> {
    let req = (
        prop::sample::select(&KEYS[..]),
        prop::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
        proptest::collection::vec(prop::sample::select(&VALUES[..]), 1..=2),
    )
        .prop_map(|(k, op, vs)| LabelSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: matches!(op, "In" | "NotIn")
                .then(|| vs.into_iter().map(str::to_string).collect()),
        });
    (
        proptest::option::of(labels()),
        proptest::option::of(proptest::collection::vec(req, 0..=2)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

pub fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    let sel_peer = (
        proptest::option::of(selector()),
        proptest::option::of(selector()),
        any::<bool>(),
    )
        .prop_map(|(ns, pod, pod_if_none)| {
            let (ns, pod) = match (ns, pod) {
                (None, None) if pod_if_none => (None, Some(LabelSelector::default())),
                (None, None) => (Some(LabelSelector::default()), None),
                other => other,
            };
            NetworkPolicyPeer {
                namespace_selector: ns,
                pod_selector: pod,
                ip_block: None,
            }
        });
    let block = (
        prop::sample::select(&CIDRS[..]),
        proptest::collection::vec(prop::sample::select(&EXCEPTS[..]), 0..=3),
    )
        .prop_map(|(cidr, ex)| {
            let c = Prefix::parse(cidr).expect("vocabulary");
            let mut except: Vec<String> = ex
                .into_iter()
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
        });
    prop_oneof![3 => sel_peer, 2 => block]
}

pub fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    (
        prop::sample::select(&[None, Some("TCP"), Some("UDP"), Some("SCTP")][..]),
        0..6u8,
        prop::sample::select(&[53, 80, 81, 82][..]),
        proptest::option::of(0..3i32),
    )
        .prop_map(|(proto, kind, n, end)| {
            let (port, end_port) = match kind {
                0 => (None, None),
                1 => (Some(IntOrString::String("http".into())), None),
                2 => (Some(IntOrString::String("dns".into())), None),
                3 => (Some(IntOrString::Int(n)), end.map(|e| n + e)),
                _ => (Some(IntOrString::Int(n)), None),
            };
            NetworkPolicyPort {
                protocol: proto.map(str::to_string),
                port,
                end_port,
            }
        })
}

/// A rule's peers and ports (each absent or a list, possibly empty).
pub type Rule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

pub fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(proptest::collection::vec(peer(), 0..=3)),
        proptest::option::of(proptest::collection::vec(port(), 0..=3)),
    )
}

/// A NetworkPolicy in any namespace; with `home`, in that namespace more often than not and
/// selecting every pod there now and then (so a pod of `home` is isolated in most draws).
pub fn policy(home: Option<String>) -> impl Strategy<Value = NetworkPolicy> {
    let ns = match home.clone() {
        Some(h) => {
            prop_oneof![3 => Just(h), 2 => prop::sample::select(&NS[..]).prop_map(str::to_string)]
                .boxed()
        }
        None => (0..NS.len()).prop_map(|i| NS[i].to_string()).boxed(),
    };
    let sel = match home {
        Some(_) => prop_oneof![3 => Just(LabelSelector::default()), 7 => selector()].boxed(),
        None => selector().boxed(),
    };
    (
        ns,
        sel,
        0..4u8,
        proptest::option::of(proptest::collection::vec(rule(), 0..=2)),
        proptest::option::of(proptest::collection::vec(rule(), 0..=2)),
        // Unused (policies are named by [`policies`]), drawn so that the seeds persisted in
        // policy/tests/prop.proptest-regressions still generate the cases they recorded.
        0..1000u32,
    )
        .prop_map(|(ns, sel, types, ing, eg, _)| NetworkPolicy {
            metadata: ObjectMeta {
                namespace: Some(ns),
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(sel),
                policy_types: match types {
                    0 => None,
                    1 => Some(vec!["Ingress".into()]),
                    2 => Some(vec!["Egress".into()]),
                    _ => Some(vec!["Ingress".into(), "Egress".into()]),
                },
                ingress: ing.map(|rs| {
                    rs.into_iter()
                        .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                        .collect()
                }),
                egress: eg.map(|rs| {
                    rs.into_iter()
                        .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                        .collect()
                }),
            }),
        })
}

/// `count` policies ([`policy`]) named `p0`, `p1`, ...
pub fn policies(
    home: Option<String>,
    count: RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<NetworkPolicy>> {
    proptest::collection::vec(policy(home), count).prop_map(|mut ps| {
        for (i, p) in ps.iter_mut().enumerate() {
            p.metadata.name = Some(format!("p{i}"));
        }
        ps
    })
}

fn selector_json() -> impl Strategy<Value = serde_json::Value> {
    selector().prop_map(|s| serde_json::to_value(s).expect("selector serializes"))
}

/// `domainNames` entries of generated egress peers: exact names, nested wildcards, and
/// spellings that differ only in case and the trailing dot.
pub const DOMAIN_PATTERNS: [&str; 6] = [
    "api.example.com",
    "*.example.com",
    "*.cdn.example.com",
    "example.org",
    "a.cdn.example.com",
    "API.Example.com.",
];
/// Names pods learn addresses for ([`learnt`]): matched by some patterns above, by none, in
/// other spellings.
pub const LEARNT_NAMES: [&str; 6] = [
    "api.example.com",
    "a.cdn.example.com",
    "x.example.com.",
    "EXAMPLE.org",
    "example.com",
    "other.net",
];

fn cnp_peer(egress: bool, names: bool) -> impl Strategy<Value = serde_json::Value> {
    let ns = selector_json().prop_map(|s| serde_json::json!({"namespaces": s}));
    let pods = (proptest::option::of(selector_json()), selector_json()).prop_map(|(n, p)| {
        let mut v = serde_json::json!({"pods": {"podSelector": p}});
        if let Some(n) = n {
            v["pods"]["namespaceSelector"] = n;
        }
        v
    });
    let nodes = selector_json().prop_map(|s| serde_json::json!({"nodes": s}));
    let networks = proptest::collection::vec(prop::sample::select(&CIDRS[..]), 1..=2)
        .prop_map(|n| serde_json::json!({"networks": n}));
    let domain_names = proptest::collection::vec(prop::sample::select(&DOMAIN_PATTERNS[..]), 1..=2)
        .prop_map(|n| serde_json::json!({"domainNames": n}));
    if egress && names {
        prop_oneof![3 => ns, 3 => pods, 2 => nodes, 2 => networks, 4 => domain_names].boxed()
    } else if egress {
        prop_oneof![3 => ns, 3 => pods, 2 => nodes, 2 => networks].boxed()
    } else {
        prop_oneof![ns, pods].boxed()
    }
}

fn cnp_protocol() -> impl Strategy<Value = serde_json::Value> {
    (
        0..5u8,
        prop::sample::select(&[53, 80, 81, 82][..]),
        0..4u8,
    )
        .prop_map(|(kind, n, range)| {
            let proto = ["tcp", "udp", "sctp"][usize::from(kind % 3)];
            if kind == 4 {
                return serde_json::json!({"destinationNamedPort": if n == 53 { "dns" } else { "http" }});
            }
            let port = match range {
                0 => serde_json::json!({"range": {"start": n, "end": n + 1}}),
                1 => serde_json::json!({"range": {"start": 1, "end": 65535}}),
                _ => serde_json::json!({"number": n}),
            };
            serde_json::json!({proto: {"destinationPort": port}})
        })
}

fn cnp_rule(egress: bool, names: bool) -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(&["Accept", "Deny", "Pass"][..]),
        proptest::collection::vec(cnp_peer(egress, names), 1..=3),
        proptest::option::of(proptest::collection::vec(cnp_protocol(), 1..=3)),
    )
        .prop_map(move |(action, peers, protocols)| {
            // Upstream forbids named ports in a rule with networks, nodes or domainNames peers.
            let addresses = peers.iter().any(|p| {
                p.get("networks").is_some()
                    || p.get("nodes").is_some()
                    || p.get("domainNames").is_some()
            });
            let protocols = protocols.map(|ps| {
                let kept: Vec<_> = ps
                    .into_iter()
                    .filter(|p| !(addresses && p.get("destinationNamedPort").is_some()))
                    .collect();
                kept
            });
            let mut r =
                serde_json::json!({"action": action, (if egress { "to" } else { "from" }): peers});
            if let Some(ps) = protocols.filter(|p| !p.is_empty()) {
                r["protocols"] = serde_json::Value::Array(ps);
            }
            r
        })
}

/// An Admin or Baseline ClusterNetworkPolicy; with `home`, its subject is that namespace
/// more often than not.
pub fn cluster_policy(home: Option<String>) -> impl Strategy<Value = ClusterNetworkPolicy> {
    cluster_policy_with(home, false)
}

/// [`cluster_policy`]; with `names`, egress peers may be `domainNames` ([`DOMAIN_PATTERNS`]).
fn cluster_policy_with(
    home: Option<String>,
    names: bool,
) -> impl Strategy<Value = ClusterNetworkPolicy> {
    let any_subject = prop_oneof![
        selector_json().prop_map(|s| serde_json::json!({"namespaces": s})),
        (selector_json(), selector_json()).prop_map(
            |(n, p)| serde_json::json!({"pods": {"namespaceSelector": n, "podSelector": p}})
        ),
    ];
    let subject = match home {
        Some(h) => prop_oneof![
            3 => Just(serde_json::json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": h}}})),
            2 => any_subject,
        ]
        .boxed(),
        None => any_subject.boxed(),
    };
    (
        any::<bool>(),
        0..3i32,
        subject,
        proptest::collection::vec(cnp_rule(false, false), 0..=3),
        proptest::collection::vec(cnp_rule(true, names), 0..=3),
    )
        .prop_map(|(admin, priority, subject, ingress, egress)| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "cnp"},
                "spec": {
                    "tier": if admin { "Admin" } else { "Baseline" },
                    "priority": priority,
                    "subject": subject,
                    "ingress": ingress,
                    "egress": egress,
                }
            }))
            .expect("generated ClusterNetworkPolicy parses")
        })
}

/// `count` ClusterNetworkPolicies ([`cluster_policy`]) named `cnp0`, `cnp1`, ...
pub fn cluster_policies(
    home: Option<String>,
    count: RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<ClusterNetworkPolicy>> {
    cluster_policies_with(home, count, false)
}

fn cluster_policies_with(
    home: Option<String>,
    count: RangeInclusive<usize>,
    names: bool,
) -> impl Strategy<Value = Vec<ClusterNetworkPolicy>> {
    proptest::collection::vec(cluster_policy_with(home, names), count).prop_map(|mut ps| {
        for (i, p) in ps.iter_mut().enumerate() {
            p.metadata.name = Some(format!("cnp{i}"));
        }
        ps
    })
}

pub fn node(i: usize) -> impl Strategy<Value = NodeInfo> {
    (
        labels(),
        proptest::collection::vec(prop::sample::select(&NODE_ADDRS[..]), 1..=2),
    )
        .prop_map(move |(labels, addrs)| NodeInfo {
            name: format!("node{i}"),
            labels,
            addrs: addrs
                .iter()
                .map(|a| a.parse().expect("node address"))
                .collect(),
        })
}

/// Two nodes, `node0` and `node1`.
pub fn nodes() -> impl Strategy<Value = Vec<NodeInfo>> {
    (node(0), node(1)).prop_map(|(a, b)| vec![a, b])
}

/// Pod `i`: `10.0.0.<i+1>` and/or `fd00::<i+1>`, the host-network address, or none.
pub fn pod(i: usize) -> impl Strategy<Value = PodInfo> {
    let named = prop::sample::select(
        &[
            ("http", 80, Protocol::Tcp),
            ("http", 81, Protocol::Tcp),
            ("http", 80, Protocol::Udp),
            ("dns", 53, Protocol::Udp),
            ("dns", 53, Protocol::Tcp),
        ][..],
    )
    .prop_map(|(n, p, pr)| NamedPort {
        name: n.into(),
        port: p,
        protocol: pr,
    });
    (
        0..NS.len(),
        labels(),
        0..8u8,
        proptest::collection::vec(named, 0..=2),
    )
        .prop_map(move |(ns, labels, addr, mut ports)| {
            ports.dedup_by(|a, b| a.name == b.name);
            let v4: IpAddr = format!("10.0.0.{}", i + 1).parse().expect("v4");
            let v6: IpAddr = format!("fd00::{}", i + 1).parse().expect("v6");
            let (ips, host_network) = match addr {
                0 => (vec![], false),
                1 => (vec![HOST_IP.parse().expect("v4")], true),
                2 | 3 => (vec![v4], false),
                4 => (vec![v6], false),
                _ => (vec![v4, v6], false),
            };
            PodInfo {
                namespace: NS[ns].into(),
                name: format!("pod{i}"),
                labels,
                ips,
                ports,
                host_network,
            }
        })
}

/// `count` pods `pod0`, `pod1`, ... ([`pod`]).
pub fn pods(count: RangeInclusive<usize>) -> impl Strategy<Value = Vec<PodInfo>> {
    count.prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>())
}

/// The namespaces [`NS`] with random labels and their `kubernetes.io/metadata.name`.
pub fn namespaces() -> impl Strategy<Value = BTreeMap<String, Labels>> {
    proptest::collection::vec(labels(), NS.len()).prop_map(|nsl| {
        NS.iter()
            .zip(nsl)
            .map(|(n, mut l)| {
                l.insert(crate::NAMESPACE_NAME_LABEL.into(), n.to_string());
                (n.to_string(), l)
            })
            .collect()
    })
}

/// A whole cluster: 1 to 6 pods, up to 4 NetworkPolicies and 3 ClusterNetworkPolicies
/// anywhere, two nodes.
pub fn cluster() -> impl Strategy<Value = Cluster> {
    cluster_with(false)
}

/// [`cluster`] whose ClusterNetworkPolicies' egress rules may have `domainNames` peers.
pub fn cluster_with_names() -> impl Strategy<Value = Cluster> {
    cluster_with(true)
}

fn cluster_with(names: bool) -> impl Strategy<Value = Cluster> {
    (
        namespaces(),
        pods(1..=6),
        policies(None, 0..=4),
        cluster_policies_with(None, 0..=3, names),
        nodes(),
    )
        .prop_map(
            |(namespaces, pods, policies, cluster_policies, nodes)| Cluster {
                namespaces,
                pods,
                policies,
                cluster_policies,
                nodes,
            },
        )
}

/// What pods of `cluster` learnt from DNS answers: each pod, for some of the addresses of
/// [`EXTERNAL`] and of the cluster's pods, one or two of [`LEARNT_NAMES`].
pub fn learnt(cluster: &Cluster) -> impl Strategy<Value = crate::fqdn::Learnt> + use<> {
    let mut addrs: Vec<IpAddr> = EXTERNAL
        .iter()
        .map(|a| a.parse().expect("external address"))
        .collect();
    addrs.extend(cluster.pods.iter().flat_map(|p| p.ips.iter().copied()));
    let keys: Vec<crate::PodKey> = cluster.pods.iter().map(PodInfo::key).collect();
    let (na, np) = (addrs.len(), keys.len());
    proptest::collection::vec((0..np, 0..na, 0..LEARNT_NAMES.len()), 0..=3 * na).prop_map(
        move |facts| {
            let mut l = crate::fqdn::Learnt::default();
            for (p, a, n) in facts {
                l.learn(keys[p].clone(), addrs[a], LEARNT_NAMES[n]);
            }
            l
        },
    )
}
