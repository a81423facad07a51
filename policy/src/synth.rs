//! A synthetic cluster of realistic shape, for benchmarks and performance sanity tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cnp::ClusterNetworkPolicy;
use crate::manifest::NAMESPACE_NAME_LABEL;
use crate::model::{Cluster, NamedPort, NodeInfo, PodInfo, PodKey, Protocol};

/// Size of a synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticSpec {
    /// At most 250.
    pub namespaces: usize,
    /// At most 60,000.
    pub pods_per_namespace: usize,
    /// Policies per namespace, in a cycle of 10 shapes (default deny, named ports, endPort,
    /// ipBlock with except, namespace and pod selectors, egress to DNS, ...).
    pub policies_per_namespace: usize,
    /// How many pods (spread over namespaces) are returned as local to the node.
    pub local_pods: usize,
    /// ClusterNetworkPolicies, in a cycle of 10 shapes over both tiers (see
    /// `synthetic_cluster_policy`), with 10 Nodes for their node peers.
    pub cluster_policies: usize,
}

impl Default for SyntheticSpec {
    /// 10,000 pods, 1,000 policies, 100 local pods.
    fn default() -> Self {
        SyntheticSpec {
            namespaces: 100,
            pods_per_namespace: 100,
            policies_per_namespace: 10,
            local_pods: 100,
            cluster_policies: 0,
        }
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(kv)),
        match_expressions: None,
    }
}

fn pods(kv: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(sel(kv)),
        ..Default::default()
    }
}

fn port(proto: &str, p: IntOrString, end: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(proto.into()),
        port: Some(p),
        end_port: end,
    }
}

/// Builds the cluster and the list of local pods.
pub fn synthetic_cluster(spec: SyntheticSpec) -> (Cluster, Vec<PodKey>) {
    let mut c = Cluster::default();
    let tiers = ["web", "db", "cache"];
    for i in 0..spec.namespaces {
        let ns = format!("ns-{i}");
        let team = format!("team-{}", i % 10);
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        c.namespaces.insert(
            ns.clone(),
            labels(&[(NAMESPACE_NAME_LABEL, &ns), ("team", &team), ("env", env)]),
        );
        for j in 0..spec.pods_per_namespace {
            let app = format!("app-{}", j % 10);
            c.pods.push(PodInfo {
                namespace: ns.clone(),
                name: format!("p-{j}"),
                labels: labels(&[("app", &app), ("tier", tiers[j % 3])]),
                ips: vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    i as u8,
                    (j / 250) as u8,
                    (j % 250 + 1) as u8,
                ))],
                ports: vec![
                    NamedPort {
                        name: "http".into(),
                        port: 8080,
                        protocol: Protocol::Tcp,
                    },
                    NamedPort {
                        name: "metrics".into(),
                        port: 9090,
                        protocol: Protocol::Tcp,
                    },
                ],
                host_network: false,
            });
        }
        for k in 0..spec.policies_per_namespace {
            let mut s = NetworkPolicySpec::default();
            let app = format!("app-{}", k % 10);
            let other = format!("app-{}", (k + 1) % 10);
            match k % 10 {
                0 => {
                    s.pod_selector = Some(LabelSelector::default());
                    s.policy_types = Some(vec!["Ingress".into()]);
                }
                1 => {
                    s.pod_selector = Some(sel(&[("app", &app)]));
                    s.ingress = Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![pods(&[("app", &other)])]),
                        ports: Some(vec![port("TCP", IntOrString::String("http".into()), None)]),
                    }]);
                }
                2 => {
                    s.pod_selector = Some(sel(&[("tier", "web")]));
                    s.ingress = Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(sel(&[(
                                "team",
                                &format!("team-{}", (i + 1) % 10),
                            )])),
                            pod_selector: None,
                            ip_block: None,
                        }]),
                        ports: Some(vec![port("TCP", IntOrString::Int(80), Some(90))]),
                    }]);
                }
                3 => {
                    s.pod_selector = Some(sel(&[("tier", "db")]));
                    s.egress = Some(vec![
                        NetworkPolicyEgressRule {
                            to: Some(vec![NetworkPolicyPeer {
                                ip_block: Some(IPBlock {
                                    cidr: "10.0.0.0/8".into(),
                                    except: Some(vec![format!("10.{i}.0.0/16")]),
                                }),
                                ..Default::default()
                            }]),
                            ports: Some(vec![port("TCP", IntOrString::Int(5432), None)]),
                        },
                        NetworkPolicyEgressRule {
                            to: Some(vec![NetworkPolicyPeer {
                                namespace_selector: Some(sel(&[("env", "prod")])),
                                pod_selector: Some(sel(&[("tier", "db"), ("app", &app)])),
                                ip_block: None,
                            }]),
                            ports: Some(vec![port(
                                "TCP",
                                IntOrString::String("http".into()),
                                None,
                            )]),
                        },
                    ]);
                }
                4 => {
                    s.pod_selector = Some(LabelSelector::default());
                    s.ingress = Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector {
                                match_labels: None,
                                match_expressions: Some(vec![LabelSelectorRequirement {
                                    key: "team".into(),
                                    operator: "In".into(),
                                    values: Some(vec!["team-0".into()]),
                                }]),
                            }),
                            pod_selector: Some(sel(&[("app", "app-0")])),
                            ip_block: None,
                        }]),
                        ports: Some(vec![port(
                            "TCP",
                            IntOrString::String("metrics".into()),
                            None,
                        )]),
                    }]);
                }
                5 => {
                    s.pod_selector = Some(LabelSelector::default());
                    s.policy_types = Some(vec!["Egress".into()]);
                    s.egress = Some(vec![NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(sel(&[(NAMESPACE_NAME_LABEL, "ns-0")])),
                            pod_selector: Some(sel(&[("app", "app-5")])),
                            ip_block: None,
                        }]),
                        ports: Some(vec![
                            port("UDP", IntOrString::Int(53), None),
                            port("TCP", IntOrString::Int(53), None),
                        ]),
                    }]);
                }
                _ => {
                    s.pod_selector = Some(sel(&[("app", &app)]));
                    s.ingress = Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![
                            pods(&[("app", &other)]),
                            NetworkPolicyPeer {
                                ip_block: Some(IPBlock {
                                    cidr: "192.168.0.0/16".into(),
                                    except: Some(vec![format!("192.168.{k}.0/24")]),
                                }),
                                ..Default::default()
                            },
                        ]),
                        ports: None,
                    }]);
                }
            }
            c.policies.push(NetworkPolicy {
                metadata: ObjectMeta {
                    namespace: Some(ns.clone()),
                    name: Some(format!("pol-{k}")),
                    ..Default::default()
                },
                spec: Some(s),
            });
        }
    }
    for n in 0..10u8 {
        c.nodes.push(NodeInfo {
            name: format!("node-{n}"),
            labels: labels(&[("kubernetes.io/os", "linux")]),
            addrs: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, n + 2))],
        });
    }
    for k in 0..spec.cluster_policies {
        c.cluster_policies
            .push(synthetic_cluster_policy(k, spec.namespaces.max(1)));
    }
    let total = c.pods.len();
    let step = (total / spec.local_pods.max(1)).max(1);
    let local = c
        .pods
        .iter()
        .step_by(step)
        .take(spec.local_pods)
        .map(PodInfo::key)
        .collect();
    (c, local)
}

/// ClusterNetworkPolicy `k` of a synthetic cluster: a cycle of 10 shapes an administrator
/// writes (isolating teams and environments, allowing DNS, monitoring and kubelet traffic,
/// blocking the metadata service, baseline defaults), over both tiers, each with its own
/// priority.
fn synthetic_cluster_policy(k: usize, namespaces: usize) -> ClusterNetworkPolicy {
    // The shape is k % 10; what it names cycles with k / 10.
    let team = format!("team-{}", (k / 10) % 10);
    let other = format!("team-{}", (k / 10 + 1) % 10);
    let ns = format!("ns-{}", (k / 10) % namespaces);
    let (tier, spec) = match k % 10 {
        0 => (
            "Admin",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {"team": team, "env": "prod"}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"env": "dev"}}}]}]
            }),
        ),
        1 => (
            "Admin",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {"team": team}}},
                "egress": [{"action": "Accept",
                            "to": [{"pods": {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "ns-0"}},
                                             "podSelector": {"matchLabels": {"app": "app-5"}}}}],
                            "protocols": [{"udp": {"destinationPort": {"number": 53}}},
                                          {"tcp": {"destinationPort": {"number": 53}}}]}]
            }),
        ),
        2 => (
            "Baseline",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]
            }),
        ),
        3 => (
            "Admin",
            serde_json::json!({
                "subject": {"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                                     "podSelector": {"matchLabels": {"tier": "db"}}}},
                "ingress": [{"action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": team}}}]},
                            {"action": "Deny", "from": [{"namespaces": {}}],
                             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 5000, "end": 5999}}}}]}]
            }),
        ),
        4 => (
            "Admin",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {"team": team}}},
                "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]}]
            }),
        ),
        5 => (
            "Admin",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {"env": "prod"}}},
                "egress": [{"action": "Accept", "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}],
                            "protocols": [{"tcp": {"destinationPort": {"number": 10250}}}]}]
            }),
        ),
        6 => (
            "Baseline",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}},
                "egress": [{"action": "Accept", "to": [{"namespaces": {"matchLabels": {"team": team}}}]},
                           {"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]
            }),
        ),
        7 => (
            "Admin",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {"team": team}}},
                "ingress": [{"action": "Accept",
                             "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": "team-0"}},
                                                "podSelector": {"matchLabels": {"app": "app-0"}}}}],
                             "protocols": [{"destinationNamedPort": "metrics"}]}]
            }),
        ),
        8 => (
            "Admin",
            serde_json::json!({
                "subject": {"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                                     "podSelector": {"matchLabels": {"tier": "web"}}}},
                "ingress": [{"action": "Deny",
                             "from": [{"pods": {"namespaceSelector": {"matchLabels": {"env": "dev"}},
                                                "podSelector": {"matchLabels": {"app": "app-9"}}}}],
                             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}}]}]
            }),
        ),
        _ => (
            "Baseline",
            serde_json::json!({
                "subject": {"namespaces": {"matchLabels": {"team": team}}},
                "ingress": [{"action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": other}}}]}]
            }),
        ),
    };
    let mut spec = spec;
    spec["tier"] = serde_json::json!(tier);
    spec["priority"] = serde_json::json!(k % 1001);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("cnp-{k}")},
        "spec": spec,
    }))
    .expect("synthetic ClusterNetworkPolicy")
}
