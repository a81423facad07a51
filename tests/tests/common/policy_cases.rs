//! The upstream truth-table cases and the loop that runs them on a lab, shared by the lab
//! tests on one, two (tests/lab.rs) and three nodes (tests/nodes.rs). Included with
//! `#[path]`: a subdirectory of tests/ is not a test target of its own.

use palisade_tests::lab::{
    AgentMode, Family, Lab, LabConfig, PORTS, Peer, Protocol, Reachability, plugin_works,
};

/// One truth-table case: manifests applied to the bare model, and the expected reachability
/// built from "everything reachable" (loopback is not judged, as upstream).
pub struct PolicyCase {
    pub name: &'static str,
    pub manifests: &'static str,
    pub expect: fn(&mut Reachability),
}

/// Cases after the upstream NetworkPolicy e2e suite (`test/e2e/network/netpol`).
pub const POLICY_CASES: &[PolicyCase] = &[
    PolicyCase {
        name: "default_deny_ingress_in_x_blocks_everything_into_x",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
        expect: |r| {
            r.expect_peer(&Peer::any(), &Peer::ns("x"), false);
        },
    },
    PolicyCase {
        name: "allow_from_namespace_y_admits_only_y_into_x_a",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: y}}
",
        expect: |r| {
            r.expect_all_ingress("x/a", false);
            r.expect_peer(&Peer::ns("y"), &Peer::pod("x", "a"), true);
        },
    },
    PolicyCase {
        name: "allow_by_port_81_tcp_admits_only_tcp_81_into_x_a",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {}}]
      ports: [{protocol: TCP, port: 81}]
",
        expect: |r| {
            r.expect_all_ingress("x/a", false);
            r.table_mut(81, Protocol::Tcp)
                .set_peers(&Peer::any(), &Peer::pod("x", "a"), true);
        },
    },
    PolicyCase {
        name: "allow_by_named_port_serve_80_udp_admits_only_udp_80_into_x_a",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - ports: [{protocol: UDP, port: serve-80-udp}]
",
        expect: |r| {
            r.expect_all_ingress("x/a", false);
            r.table_mut(80, Protocol::Udp)
                .set_peers(&Peer::any(), &Peer::pod("x", "a"), true);
        },
    },
    PolicyCase {
        name: "namespace_and_pod_selector_in_one_peer_admit_their_intersection",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: y}}
          podSelector: {matchLabels: {pod: b}}
",
        expect: |r| {
            r.expect_all_ingress("x/a", false);
            r.expect("y/b", "x/a", true);
        },
    },
    PolicyCase {
        name: "default_deny_egress_of_x_a_blocks_everything_from_x_a",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
",
        expect: |r| {
            r.expect_all_egress("x/a", false);
        },
    },
    PolicyCase {
        name: "egress_allowed_to_namespace_z_on_tcp_80_only",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
      ports: [{protocol: TCP, port: 80}]
",
        expect: |r| {
            r.expect_all_egress("x/a", false);
            r.table_mut(80, Protocol::Tcp)
                .set_peers(&Peer::pod("x", "a"), &Peer::ns("z"), true);
        },
    },
    PolicyCase {
        name: "namespace_labels_from_a_manifest_are_what_selectors_see",
        manifests: "
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z, team: blue}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-blue, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
",
        expect: |r| {
            r.expect_peer(&Peer::any(), &Peer::ns("x"), false);
            r.expect_peer(&Peer::ns("z"), &Peer::ns("x"), true);
        },
    },
    PolicyCase {
        name: "pod_labels_from_a_manifest_are_what_selectors_see",
        manifests: "
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c, role: client}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-clients, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]
",
        expect: |r| {
            r.expect_all_ingress("x/b", false);
            r.expect("y/c", "x/b", true);
        },
    },
];

/// Starts an enforcing lab: the real plugin and the agent are required.
pub fn enforcing_lab(nodes: usize) -> Lab {
    let real = palisade_tests::bin_dir().join("palisade");
    assert!(
        plugin_works(&real),
        "{} does not answer CNI VERSION: build it (cargo xtask build)",
        real.display()
    );
    Lab::start(LabConfig {
        nodes,
        agent: AgentMode::Required,
        verbose: true,
        ..LabConfig::default()
    })
    .expect("lab starts with the agent")
}

/// Runs every case on `lab` (applied, synced, probed in v4 and v6, removed); returns the
/// failure reports.
pub fn run_cases(lab: &mut Lab, cases: &[PolicyCase]) -> Vec<String> {
    run_cases_probing(lab, cases, "", true, |lab, family| {
        lab.probe_all(&PORTS, &Protocol::ALL, family)
            .map_err(|e| e.to_string())
    })
}

/// Applies each case, probes with `probe` in v4 and v6, and compares with the case's table
/// (`allow_loopback`: a pod's cell for itself is not judged). `via` is added to the log lines
/// (e.g. ", through ClusterIPs"). Returns one message per mismatch.
pub fn run_cases_probing(
    lab: &mut Lab,
    cases: &[PolicyCase],
    via: &str,
    allow_loopback: bool,
    mut probe: impl FnMut(&Lab, Family) -> Result<Reachability, String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        lab.apply_yaml(case.name, case.manifests)
            .unwrap_or_else(|e| panic!("{}: apply: {e}", case.name));
        lab.wait_synced()
            .unwrap_or_else(|e| panic!("{}: sync: {e}", case.name));
        for family in [Family::V4, Family::V6] {
            let start = std::time::Instant::now();
            let observed =
                probe(lab, family).unwrap_or_else(|e| panic!("{}: probe: {e}", case.name));
            let mut expected = Reachability::all_reachable_like(&observed);
            (case.expect)(&mut expected);
            if allow_loopback {
                expected.allow_loopback();
            }
            match expected.diff(&observed, true) {
                None => eprintln!(
                    "ok   {} ({family}{via}): {} in {:?}",
                    case.name,
                    observed.summary(),
                    start.elapsed()
                ),
                Some(d) => {
                    eprintln!("FAIL {} ({family})", case.name);
                    failures.push(format!("case {} ({family}):\n{d}", case.name));
                }
            }
        }
        lab.remove(case.name)
            .unwrap_or_else(|e| panic!("{}: remove: {e}", case.name));
    }
    if !failures.is_empty() {
        for l in lab.agent_logs() {
            eprintln!("agent log: {}", l.display());
        }
    }
    failures
}
