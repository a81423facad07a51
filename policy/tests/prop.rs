//! Property: for random clusters, NetworkPolicies, ClusterNetworkPolicies (Admin and Baseline
//! tiers, every action and peer kind, named ports) and probes, the compiled form (the
//! datapath's two LPM lookups + `common::decide`) gives the same verdict as the reference
//! evaluator, in each direction at each local endpoint, and names the same deciding rule;
//! and `explain` answers what the reference evaluator answers. `PROPTEST_CASES` raises the
//! case count (default 200).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use palisade_common::decide::{CtMatch, Facts, decide};
use palisade_common::policy::RULE_DENY;
use palisade_policy::cnp::ClusterNetworkPolicy;
use palisade_policy::{
    Cluster, Direction, Endpoint, Evaluator, NamedPort, NodeInfo, Outcome, PodInfo, PodKey, Prefix,
    Protocol, RuleId, RuleRegistry, ServiceInfo, ServicePort, TargetPort, compile, describe,
    explain, lookup, proto_name,
};
use proptest::prelude::*;

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
const EXTERNAL: [&str; 5] = [
    "10.0.0.50",
    "10.0.1.1",
    "192.168.0.1",
    "fd00::50",
    "2001:db8::1",
];
const HOST_IP: &str = "10.0.0.100";
/// Node addresses: the host-network pods' address, addresses of `EXTERNAL`, and one of
/// nothing else.
const NODE_ADDRS: [&str; 5] = [
    "10.0.0.100",
    "10.0.1.1",
    "fd00::50",
    "192.168.7.7",
    "fd00::7",
];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop::sample::select(&KEYS[..]).prop_map(str::to_string),
        prop::sample::select(&VALUES[..]).prop_map(str::to_string),
        0..=2,
    )
}

fn selector() -> impl Strategy<Value = LabelSelector> {
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

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
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

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
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

type Rule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(proptest::collection::vec(peer(), 0..=3)),
        proptest::option::of(proptest::collection::vec(port(), 0..=3)),
    )
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        0..NS.len(),
        selector(),
        0..4u8,
        proptest::option::of(proptest::collection::vec(rule(), 0..=2)),
        proptest::option::of(proptest::collection::vec(rule(), 0..=2)),
        0..1000u32,
    )
        .prop_map(|(ns, sel, types, ing, eg, id)| NetworkPolicy {
            metadata: ObjectMeta {
                namespace: Some(NS[ns].into()),
                name: Some(format!("p{id}")),
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

fn selector_json() -> impl Strategy<Value = serde_json::Value> {
    selector().prop_map(|s| serde_json::to_value(s).expect("selector serializes"))
}

fn cnp_peer(egress: bool) -> impl Strategy<Value = serde_json::Value> {
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
    if egress {
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

fn cnp_rule(egress: bool) -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(&["Accept", "Deny", "Pass"][..]),
        proptest::collection::vec(cnp_peer(egress), 1..=3),
        proptest::option::of(proptest::collection::vec(cnp_protocol(), 1..=3)),
    )
        .prop_map(move |(action, peers, protocols)| {
            // Upstream forbids named ports in a rule with networks or nodes peers.
            let addresses = peers
                .iter()
                .any(|p| p.get("networks").is_some() || p.get("nodes").is_some());
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

fn cluster_policy() -> impl Strategy<Value = ClusterNetworkPolicy> {
    (
        any::<bool>(),
        0..3i32,
        prop_oneof![
            selector_json().prop_map(|s| serde_json::json!({"namespaces": s})),
            (selector_json(), selector_json()).prop_map(
                |(n, p)| serde_json::json!({"pods": {"namespaceSelector": n, "podSelector": p}})
            ),
        ],
        proptest::collection::vec(cnp_rule(false), 0..=3),
        proptest::collection::vec(cnp_rule(true), 0..=3),
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

fn node(i: usize) -> impl Strategy<Value = NodeInfo> {
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

fn pod(i: usize) -> impl Strategy<Value = PodInfo> {
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

fn cluster() -> impl Strategy<Value = Cluster> {
    let ns_labels = proptest::collection::vec(labels(), NS.len());
    let pods = (1..=6usize).prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>());
    let policies = proptest::collection::vec(policy(), 0..=4);
    let cluster_policies = proptest::collection::vec(cluster_policy(), 0..=3);
    let nodes = (node(0), node(1));
    (ns_labels, pods, policies, cluster_policies, nodes).prop_map(
        |(nsl, pods, mut policies, mut cluster_policies, nodes)| {
            for (i, p) in policies.iter_mut().enumerate() {
                p.metadata.name = Some(format!("p{i}"));
            }
            for (i, p) in cluster_policies.iter_mut().enumerate() {
                p.metadata.name = Some(format!("cnp{i}"));
            }
            let namespaces = NS
                .iter()
                .zip(nsl)
                .map(|(n, mut l)| {
                    l.insert("kubernetes.io/metadata.name".into(), n.to_string());
                    (n.to_string(), l)
                })
                .collect();
            Cluster {
                namespaces,
                pods,
                policies,
                cluster_policies,
                nodes: vec![nodes.0, nodes.1],
            }
        },
    )
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compiled_lookup_equals_reference_evaluator(c in cluster(), local_mask in any::<u8>()) {
        let local: Vec<_> = c.pods.iter().enumerate()
            .filter(|(i, _)| local_mask & (1 << i) != 0)
            .map(|(_, p)| p.key())
            .collect();
        let mut reg = RuleRegistry::new();
        let compiled = compile(&c, &local, &mut reg);
        prop_assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        let ev = Evaluator::new(&c);
        let mut peers: Vec<Endpoint> = EXTERNAL.iter().map(|a| Endpoint::External(a.parse().expect("ext"))).collect();
        for p in &c.pods {
            for ip in &p.ips {
                peers.push(Endpoint::Pod { pod: p.key(), addr: *ip });
            }
        }
        for key in &local {
            let pod = c.pod(key).expect("local pod");
            let ep = compiled.endpoints.get(key);
            prop_assert_eq!(ep.is_none(), pod.host_network);
            let Some(ep) = ep else { continue };
            for dir in Direction::BOTH {
                let isolated = match dir {
                    Direction::Ingress => ep.ingress_isolated,
                    Direction::Egress => ep.egress_isolated,
                };
                for peer in &peers {
                    for proto in [6u8, 17, 132, 1] {
                        for port in [0u16, 53, 80, 81, 82, 83, 443] {
                            let decision = ev.decide(pod, dir, peer, proto, port);
                            let want = decision.verdict();
                            // The rule the datapath names: a ClusterNetworkPolicy rule (a Deny
                            // with RULE_DENY), the lowest-numbered NetworkPolicy rule allowing
                            // the flow, or the default allow.
                            let refd = |id: &RuleId| reg.get(id).expect("compiled rules have references");
                            let lowest = match &decision.outcome {
                                Outcome::NotIsolated => 0,
                                Outcome::Accepted(id) => refd(id),
                                Outcome::Denied(id) => RULE_DENY | refd(id),
                                Outcome::NetworkPolicy(allowing) => {
                                    allowing.iter().filter_map(|id| reg.get(id)).min().unwrap_or(0)
                                }
                                Outcome::DefaultAllow => refd(&RuleId::default_allow(dir)),
                            };
                            prop_assert_eq!(want.isolated, isolated, "isolation of {} {}", key, dir.name());
                            let rule = lookup(ep, dir.to_dir(), peer.addr(), proto, port).unwrap_or(0);
                            let got = !decide(&Facts {
                                spoofed: false, peer_is_host: false, ct: CtMatch::New, ct_current: false,
                                isolated, allow_rule: rule, untracked_fragment: false,
                            }).is_drop();
                            prop_assert_eq!(
                                got, want.passes(),
                                "{} {} peer {} proto {} port {}: compiled rule {}\n{}",
                                key, dir.name(), peer, proto, port, rule, describe(ep, &reg)
                            );
                            if isolated {
                                prop_assert_eq!(
                                    rule, lowest,
                                    "{} {} peer {} proto {} port {}: rule attribution\n{}",
                                    key, dir.name(), peer, proto, port, describe(ep, &reg)
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A Service in `n0` over pods `app=a`: port 80 to the named port `http`, 53/UDP to 53.
fn web_service() -> ServiceInfo {
    ServiceInfo {
        namespace: "n0".into(),
        name: "web".into(),
        selector: Some([("app".to_string(), "a".to_string())].into()),
        addresses: vec!["10.96.0.1".parse().expect("v4")],
        ports: vec![
            ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                target: TargetPort::Name("http".into()),
            },
            ServicePort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::Udp,
                target: TargetPort::Number(53),
            },
        ],
        ..Default::default()
    }
}

fn endpoint_of(end: &explain::End) -> Endpoint {
    match &end.pod {
        Some(p) => {
            let (ns, name) = p.split_once('/').expect("ns/pod");
            Endpoint::Pod {
                pod: PodKey::new(ns, name),
                addr: end.address,
            }
        }
        None => Endpoint::External(end.address),
    }
}

proptest! {
    #![proptest_config(config())]

    /// `explain`'s answer, for one port and for every port, is the reference evaluator's, for
    /// pods, addresses and a Service's backends, over NetworkPolicies and ClusterNetworkPolicies
    /// of both tiers.
    #[test]
    fn explain_answer_equals_reference_evaluator(c in cluster(), pick in any::<u64>()) {
        let ev = Evaluator::new(&c);
        let services = [web_service()];
        let set = explain::PolicySet::from_cluster(&c);
        let ex = explain::Explainer::new(&c, &set, &services);
        let mut names: Vec<String> = c.pods.iter().map(|p| p.key().to_string()).collect();
        names.extend(EXTERNAL.iter().map(|s| s.to_string()));
        let n = names.len() as u64;
        let probes = [(6u8, 53u16), (6, 80), (6, 81), (17, 53), (17, 80), (132, 82), (6, 443), (1, 0)];
        for round in 0..6u64 {
            let r = pick.rotate_left((round * 11) as u32);
            let from = &names[(r % n) as usize];
            let to = if round == 5 { "svc:n0/web".to_string() } else { names[((r / n) % n) as usize].clone() };
            let (proto, port) = probes[((r / (n * n)) % probes.len() as u64) as usize];
            let port_arg = if proto == 1 { "icmp".to_string() } else { format!("{port}/{}", proto_name(proto)) };
            for every in [false, true] {
                let asked = (!every).then_some(port_arg.as_str());
                let e = match ex.explain(from, &to, asked) {
                    Ok(e) => e,
                    // Pods without addresses, two external ends, no common family, a
                    // Service without backends: nothing to compare.
                    Err(_) => continue,
                };
                for conn in &e.connections {
                    let (s, d) = (endpoint_of(&conn.src), endpoint_of(&conn.dst));
                    match (&conn.probe, &conn.allowed_ports) {
                        (Some(q), _) => {
                            let proto = match q.port_protocol() {
                                Some(p) => p.number(),
                                None if conn.dst.address.is_ipv6() => 58,
                                None => 1,
                            };
                            let want = ev.allows(&s, &d, proto, q.port.unwrap_or(0));
                            prop_assert_eq!(conn.allowed, want, "{} -> {} {}\n{}", from, to, q, explain::render(&e));
                        }
                        (None, Some(ranges)) => {
                            for (proto, port) in probes {
                                let proto = if proto == 1 && conn.dst.address.is_ipv6() { 58 } else { proto };
                                let want = ev.allows(&s, &d, proto, port);
                                prop_assert_eq!(
                                    ranges.contains(proto, port), want,
                                    "{} -> {} every port, at {} {}\n{}", from, to, proto, port, explain::render(&e)
                                );
                            }
                        }
                        (None, None) => prop_assert!(false, "no answer\n{}", explain::render(&e)),
                    }
                }
            }
        }
    }
}

/// Every answer of the evaluator over pairs of pods and external hosts (of one address
/// family, as a connection is), for comparing clusters.
fn all_answers(c: &Cluster) -> Vec<bool> {
    let ev = Evaluator::new(c);
    let mut eps: Vec<Endpoint> = EXTERNAL
        .iter()
        .map(|a| Endpoint::External(a.parse().expect("ext")))
        .collect();
    for p in &c.pods {
        for ip in &p.ips {
            eps.push(Endpoint::Pod {
                pod: p.key(),
                addr: *ip,
            });
        }
    }
    let mut out = Vec::new();
    for s in &eps {
        for d in eps
            .iter()
            .filter(|d| d.addr().is_ipv6() == s.addr().is_ipv6())
        {
            for (proto, port) in [
                (6u8, 53u16),
                (6, 80),
                (6, 81),
                (17, 53),
                (17, 80),
                (132, 82),
                (6, 443),
                (1, 0),
            ] {
                out.push(ev.allows(s, d, proto, port));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// What lint calls shadowed really adds nothing: without the rule (PL701) or the policy
    /// (PL702), the evaluator answers exactly as before.
    #[test]
    fn shadowed_rules_and_policies_change_no_answer_when_removed(c in cluster()) {
        use palisade_policy::lint::{LintInput, lint};
        let report = lint(&LintInput { cluster: &c, services: &[], namespaces_known: true, read_problems: &[] });
        let before = all_answers(&c);
        for f in report.findings.iter().filter(|f| f.code == "PL701" || f.code == "PL702") {
            let name = f.object.rsplit('/').next().expect("ns/name");
            let mut changed = c.clone();
            let at = changed.policies.iter().position(|p| p.metadata.name.as_deref() == Some(name)).expect("policy");
            if f.code == "PL702" {
                changed.policies.remove(at);
            } else {
                let spec = changed.policies[at].spec.as_mut().expect("spec");
                let (dir, index) = f.path.trim_start_matches("spec.").split_once('[').expect("rule path");
                let index: usize = index.trim_end_matches(']').parse().expect("index");
                match dir {
                    "ingress" => { spec.ingress.as_mut().expect("rules").remove(index); }
                    _ => { spec.egress.as_mut().expect("rules").remove(index); }
                }
            }
            prop_assert!(all_answers(&changed) == before, "{} {} {}: removing it changed an answer", f.code, f.object, f.path);
        }
    }
}
