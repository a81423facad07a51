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

use crate::manifest::NAMESPACE_NAME_LABEL;
use crate::model::{Cluster, NamedPort, PodInfo, PodKey, Protocol};

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
}

impl Default for SyntheticSpec {
    /// 10,000 pods, 1,000 policies, 100 local pods.
    fn default() -> Self {
        SyntheticSpec {
            namespaces: 100,
            pods_per_namespace: 100,
            policies_per_namespace: 10,
            local_pods: 100,
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
