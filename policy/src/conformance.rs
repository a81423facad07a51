//! The upstream conformance model (Kubernetes `test/e2e/network/netpol`): namespaces x, y, z
//! (labels `ns=<name>` and `kubernetes.io/metadata.name=<name>`), pods a, b, c in each (label
//! `pod=<name>`), serving 80 and 81 over TCP, UDP and SCTP; plus two hosts outside the
//! cluster. And a table of cases whose names state the semantics they check, each with the
//! verdict the spec gives for every probe.
//!
//! Public so that every tier runs the same table: tier 0 compares `evaluate` and `lookup`,
//! tier 1 compares the kernel against `evaluate`.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::manifest::NAMESPACE_NAME_LABEL;
use crate::model::{Cluster, Endpoint, NamedPort, PodInfo, PodKey, Protocol};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// (IP protocol, destination port) probed in every case: TCP/UDP/SCTP 80 and 81, ICMP.
pub const PROBES: [(u8, u16); 7] = [
    (6, 80),
    (6, 81),
    (17, 80),
    (17, 81),
    (132, 80),
    (132, 81),
    (1, 0),
];

/// `ns/pod` addresses: 10.0.<ns>.<10+pod> and fd00::<ns>:<10+pod> (ns and pod numbered from 0).
pub fn pod_addr(ns: usize, pod: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("fd00::{ns}:{}", 10 + pod)
            .parse()
            .expect("literal v6")
    } else {
        format!("10.0.{ns}.{}", 10 + pod)
            .parse()
            .expect("literal v4")
    }
}

/// Hosts outside the cluster: `ext` (192.168.1.1 / 2001:db8::1) and `gap`, an unused address
/// in x's pod range (10.0.0.99 / fd00::0:99).
pub fn external_addr(name: &str, v6: bool) -> IpAddr {
    let s = match (name, v6) {
        ("ext", false) => "192.168.1.1",
        ("ext", true) => "2001:db8::1",
        (_, false) => "10.0.0.99",
        (_, true) => "fd00::0:99",
    };
    s.parse().expect("literal address")
}

pub const EXTERNALS: [&str; 2] = ["ext", "gap"];

/// The model cluster without policies. Besides `serve-<port>-<proto>` ports, every pod has a
/// port named `web` that differs per pod: a = 80/TCP, b = 81/TCP, c = 80/UDP.
pub fn model_cluster() -> Cluster {
    let mut c = Cluster::default();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        c.namespaces.insert(
            ns.to_string(),
            [("ns", *ns), (NAMESPACE_NAME_LABEL, *ns)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        for (pi, pod) in PODS.iter().enumerate() {
            let mut ports = Vec::new();
            for port in [80u16, 81] {
                for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    ports.push(NamedPort {
                        name: format!("serve-{port}-{}", proto.k8s_name().to_lowercase()),
                        port,
                        protocol: proto,
                    });
                }
            }
            let (wp, wproto) = [
                (80, Protocol::Tcp),
                (81, Protocol::Tcp),
                (80, Protocol::Udp),
            ][pi];
            ports.push(NamedPort {
                name: "web".into(),
                port: wp,
                protocol: wproto,
            });
            c.pods.push(PodInfo {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels: [("pod".to_string(), pod.to_string())].into_iter().collect(),
                ips: vec![pod_addr(ni, pi, false), pod_addr(ni, pi, true)],
                ports,
                host_network: false,
            });
        }
    }
    c
}

/// Every probe endpoint of one family, named `x/a` ... `z/c`, `ext`, `gap`.
pub fn model_endpoints(v6: bool) -> Vec<(String, Endpoint)> {
    let mut v = Vec::new();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        for (pi, pod) in PODS.iter().enumerate() {
            v.push((
                format!("{ns}/{pod}"),
                Endpoint::Pod {
                    pod: PodKey::new(*ns, *pod),
                    addr: pod_addr(ni, pi, v6),
                },
            ));
        }
    }
    for e in EXTERNALS {
        v.push((e.to_string(), Endpoint::External(external_addr(e, v6))));
    }
    v
}

/// One probe, for expectations.
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    pub proto: u8,
    pub port: u16,
    pub v6: bool,
}

impl Flow<'_> {
    pub fn from(&self, e: &str) -> bool {
        self.src == e
    }
    pub fn to(&self, e: &str) -> bool {
        self.dst == e
    }
    pub fn from_ns(&self, ns: &str) -> bool {
        self.src.split_once('/').is_some_and(|(n, _)| n == ns)
    }
    pub fn to_ns(&self, ns: &str) -> bool {
        self.dst.split_once('/').is_some_and(|(n, _)| n == ns)
    }
    pub fn from_pod_named(&self, pod: &str) -> bool {
        self.src.split_once('/').is_some_and(|(_, p)| p == pod)
    }
    pub fn to_pod_named(&self, pod: &str) -> bool {
        self.dst.split_once('/').is_some_and(|(_, p)| p == pod)
    }
    pub fn tcp(&self, port: u16) -> bool {
        self.proto == 6 && self.port == port
    }
    pub fn udp(&self, port: u16) -> bool {
        self.proto == 17 && self.port == port
    }
}

/// A table case: policies (multi-document YAML, `metadata` + `spec` each) and the spec's
/// verdict for every probe.
pub struct Case {
    pub name: &'static str,
    pub policies: &'static str,
    pub expect: fn(&Flow) -> bool,
}

/// The model cluster with the case's policies.
pub fn case_cluster(case: &Case) -> Cluster {
    let mut c = model_cluster();
    let policies: Vec<NetworkPolicy> = serde_saphyr::from_multiple(case.policies)
        .unwrap_or_else(|e| panic!("case {}: policy YAML: {e}", case.name));
    c.policies.extend(policies);
    c
}

/// The table.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no_policy_allows_everything",
            policies: "",
            expect: |_| true,
        },
        Case {
            name: "empty_pod_selector_default_deny_isolates_every_pod_of_its_namespace_only",
            policies: "
metadata: {namespace: x, name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}",
            expect: |f| !f.to_ns("x"),
        },
        Case {
            name: "rule_without_from_and_ports_allows_everything",
            policies: "
metadata: {namespace: x, name: allow-all}
spec: {podSelector: {}, ingress: [{}]}",
            expect: |_| true,
        },
        Case {
            name: "empty_ingress_list_without_policy_types_denies_all_ingress",
            policies: "
metadata: {namespace: x, name: deny}
spec: {podSelector: {matchLabels: {pod: a}}, ingress: []}",
            expect: |f| !f.to("x/a"),
        },
        Case {
            name: "pod_selector_peer_means_pods_of_the_policy_namespace",
            policies: "
metadata: {namespace: x, name: from-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
            expect: |f| !f.to("x/a") || f.from("x/b"),
        },
        Case {
            name: "namespace_selector_peer_means_every_pod_of_matching_namespaces",
            policies: "
metadata: {namespace: x, name: from-y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            expect: |f| !f.to("x/a") || f.from_ns("y"),
        },
        Case {
            name: "namespace_and_pod_selector_in_one_peer_mean_their_intersection",
            policies: "
metadata: {namespace: x, name: from-y-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}",
            expect: |f| !f.to("x/a") || f.from("y/b"),
        },
        Case {
            name: "namespace_and_pod_selector_in_two_peers_mean_their_union",
            policies: "
metadata: {namespace: x, name: from-y-or-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}",
            expect: |f| !f.to("x/a") || f.from_ns("y") || f.from("x/b"),
        },
        Case {
            name: "empty_namespace_selector_means_every_namespace",
            policies: "
metadata: {namespace: x, name: from-any-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]",
            expect: |f| !f.to("x/a") || f.from_pod_named("b"),
        },
        Case {
            name: "not_in_and_does_not_exist_match_objects_lacking_the_key",
            policies: "
metadata: {namespace: x, name: exprs}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}, {key: team, operator: DoesNotExist}]}
    - podSelector: {matchExpressions: [{key: team, operator: NotIn, values: [red]}, {key: pod, operator: Exists}]}
      namespaceSelector: {matchExpressions: [{key: absent, operator: Exists}]}",
            expect: |f| !f.to("x/a") || ((f.from_ns("y") || f.from_ns("z")) && !f.from_pod_named("a")),
        },
        Case {
            name: "port_without_protocol_means_tcp",
            policies: "
metadata: {namespace: x, name: port-81}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81}]}]",
            expect: |f| !f.to("x/a") || f.tcp(81),
        },
        Case {
            name: "protocol_only_port_entry_allows_every_port_of_that_protocol",
            policies: "
metadata: {namespace: x, name: all-udp}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: UDP}]}]",
            expect: |f| !f.to("x/a") || f.proto == 17,
        },
        Case {
            name: "sctp_rule_allows_neither_tcp_nor_udp",
            policies: "
metadata: {namespace: x, name: sctp-80}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: SCTP, port: 80}]}]",
            expect: |f| !f.to_ns("x") || (f.proto == 132 && f.port == 80),
        },
        Case {
            name: "rule_without_ports_allows_every_protocol_including_icmp",
            policies: "
metadata: {namespace: x, name: from-y-any}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            expect: |f| !f.to_ns("x") || f.from_ns("y"),
        },
        Case {
            name: "endport_range_is_inclusive",
            policies: "
metadata: {namespace: x, name: range}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: TCP, port: 79, endPort: 80}, {protocol: UDP, port: 81, endPort: 90}]}]",
            expect: |f| !f.to_ns("x") || f.tcp(80) || f.udp(81),
        },
        Case {
            name: "named_port_resolves_per_target_pod",
            policies: "
metadata: {namespace: x, name: web}
spec:
  podSelector: {}
  ingress: [{ports: [{port: web}]}]",
            // web: a = 80/TCP, b = 81/TCP, c = 80/UDP (protocol mismatch with the TCP default).
            expect: |f| !f.to_ns("x") || (f.to("x/a") && f.tcp(80)) || (f.to("x/b") && f.tcp(81)),
        },
        Case {
            name: "named_port_with_protocol_must_match_the_container_port_protocol",
            policies: "
metadata: {namespace: x, name: web-udp}
spec:
  podSelector: {}
  ingress: [{ports: [{port: web, protocol: UDP}, {port: serve-81-sctp, protocol: SCTP}]}]",
            expect: |f| !f.to_ns("x") || (f.to("x/c") && f.udp(80)) || (f.proto == 132 && f.port == 81),
        },
        Case {
            name: "egress_named_port_resolves_per_destination_pod",
            policies: "
metadata: {namespace: x, name: egress-web}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: web}]}]",
            expect: |f| !f.from("x/a") || (f.to("y/a") && f.tcp(80)) || (f.to("y/b") && f.tcp(81)),
        },
        Case {
            name: "egress_named_port_with_empty_to_resolves_against_every_pod_but_no_external_host",
            policies: "
metadata: {namespace: x, name: egress-web-any}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{ports: [{port: web}]}, {ports: [{port: 81, protocol: UDP}]}]",
            // Egress rules without policyTypes: x/a is isolated both ways, with no ingress rule.
            expect: |f| {
                !f.to("x/a")
                    && (!f.from("x/a")
                        || f.udp(81)
                    || (f.to_pod_named("a") && f.tcp(80))
                        || (f.to_pod_named("b") && f.tcp(81)))
            },
        },
        Case {
            name: "named_port_matches_nothing_for_ipblock_peers",
            policies: "
metadata: {namespace: x, name: egress-web-cidr}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
    ports: [{port: web}]
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: web}]",
            expect: |f| !f.from("x/a") || (f.to("x/b") && f.tcp(81)),
        },
        Case {
            name: "policy_types_default_adds_egress_only_with_egress_rules",
            policies: "
metadata: {namespace: x, name: ingress-only}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}]}]
---
metadata: {namespace: y, name: with-egress}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {}}]}]",
            expect: |f| {
                (!f.to("x/a") || f.from_ns("x"))
                    && !f.to("y/a")
                    && (!f.from("y/a") || f.to_ns("y"))
            },
        },
        Case {
            name: "rules_of_a_direction_missing_from_policy_types_are_ignored",
            policies: "
metadata: {namespace: x, name: egress-type-only}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]",
            expect: |f| !f.from("x/a") || f.to_ns("z"),
        },
        Case {
            name: "egress_type_with_no_rules_denies_all_egress_including_external",
            policies: "
metadata: {namespace: y, name: deny-egress}
spec: {podSelector: {}, policyTypes: [Egress, Ingress], ingress: [{}]}",
            expect: |f| !f.from_ns("y"),
        },
        Case {
            name: "ipblock_matches_pod_addresses_and_except_removes_one",
            policies: "
metadata: {namespace: x, name: cidr}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.11/32]}}]}]",
            expect: |f| !f.to("x/a") || (!f.v6 && f.src != "ext" && !f.from("y/b")),
        },
        Case {
            name: "except_in_one_rule_does_not_hide_allow_of_another_rule",
            policies: "
metadata: {namespace: x, name: two-rules}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]
  - from: [{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.10/32]}}]
    ports: [{port: 81}]",
            expect: |f| {
                !f.to("x/a")
                    || (!f.v6
                        && f.src != "ext"
                        && (!f.from_ns("y") || (!f.from("y/a") && f.tcp(81))))
            },
        },
        Case {
            name: "except_of_one_peer_does_not_hide_an_overlapping_peer_of_the_same_rule",
            policies: "
metadata: {namespace: x, name: two-peers}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
    - ipBlock: {cidr: 10.0.1.0/24}
    - podSelector: {matchLabels: {pod: c}}
      namespaceSelector: {}",
            expect: |f| !f.to("x/a") || (!f.v6 && f.src != "ext") || f.from_pod_named("c"),
        },
        Case {
            name: "address_in_cidr_and_except_of_different_policies_is_allowed",
            policies: "
metadata: {namespace: x, name: allow-y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.1.0/24}}]}]
---
metadata: {namespace: x, name: allow-all-but-y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.1.0/24]}}, {ipBlock: {cidr: 'fd00::/16', except: ['fd00::1:0/112']}}]}]",
            // IPv4: pol1 allows y, pol2 everything else. IPv6: only pol2's fd00::/16 minus y.
            expect: |f| !f.to("x/a") || !f.v6 || (f.src != "ext" && !f.from_ns("y")),
        },
        Case {
            name: "pod_peer_and_covering_ipblock_combine_their_ports",
            policies: "
metadata: {namespace: x, name: mix}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{port: 81}]",
            expect: |f| {
                !f.to("x/a")
                    || (f.from("x/b") && f.tcp(80))
                    || (!f.v6 && (f.from_ns("x") || f.src == "gap") && f.tcp(81))
            },
        },
        Case {
            name: "several_policies_selecting_one_pod_combine_as_a_union",
            policies: "
metadata: {namespace: x, name: from-b-80}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
---
metadata: {namespace: x, name: from-c-81}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}, {port: 80, protocol: UDP}]}]",
            expect: |f| {
                !f.to_ns("x")
                    || (f.to("x/a") && f.from("x/b") && f.tcp(80))
                    || (f.from("x/c") && (f.tcp(81) || f.udp(80)))
            },
        },
        Case {
            name: "egress_ipblock_except_blocks_the_excepted_range",
            policies: "
metadata: {namespace: x, name: egress-cidr}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}, {ipBlock: {cidr: 'fd00::/16'}}], ports: [{port: 80}, {port: 80, protocol: UDP}]}]",
            expect: |f| !f.from("x/a") || ((f.tcp(80) || f.udp(80)) && f.dst != "ext" && (f.v6 || !f.to_ns("z"))),
        },
        Case {
            name: "default_namespace_name_label_selects_a_namespace_by_name",
            policies: "
metadata: {namespace: x, name: from-z-by-name}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [z]}]}}]",
            expect: |f| !f.to_ns("x") || f.from_ns("z"),
        },
        Case {
            name: "egress_allow_all_policy_wins_over_a_stacked_narrower_egress_policy",
            policies: "
metadata: {namespace: x, name: egress-to-y-80}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]
---
metadata: {namespace: x, name: egress-all}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]",
            expect: |_| true,
        },
        Case {
            name: "connection_needs_both_egress_at_source_and_ingress_at_destination",
            policies: "
metadata: {namespace: x, name: a-egress-to-y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
---
metadata: {namespace: y, name: only-from-x-a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]",
            expect: |f| (!f.from("x/a") || f.to_ns("y")) && (!f.to_ns("y") || f.from("x/a")),
        },
    ]
}
