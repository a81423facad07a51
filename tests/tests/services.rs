//! Services under policy in the lab: kube-proxy-style iptables DNAT in every node namespace
//! (tests/src/lab/kubeproxy/), pods probed through ClusterIPs. Policy is about pods and their
//! ports; a Service is only a path: a connection to ClusterIP:port must reach a backend exactly
//! when the client's egress and the backend's ingress allow that backend pod on its target
//! port. See docs/services.md.
//!
//! Every pod of the 3x3 model gets its own Service (`svc-<pod>` in its namespace), so the
//! truth tables through ClusterIPs read like the pod-IP ones (the column is the backend pod).
//! Hairpin (a pod reaching itself through its Service) is not judged: the lab's kube-proxy does
//! not masquerade.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use palisade_tests::lab::kubeproxy::{ServiceTarget, per_pod_services_yaml};
use palisade_tests::lab::{
    AgentMode, Case, Family, Lab, LabConfig, PORTS, Peer, Protocol, Reachability, plugin_works,
    stub_plugin,
};
use palisade_tests::require_privileges;

// The shared case type and loop; this file brings its own cases (read through ClusterIPs).
#[allow(dead_code)]
#[path = "common/policy_cases.rs"]
mod policy_cases;
use policy_cases::{PolicyCase, run_cases_probing};

fn config(agent: AgentMode, nodes: usize) -> LabConfig {
    let mut c = LabConfig {
        agent,
        nodes,
        verbose: true,
        ..LabConfig::default()
    };
    if agent == AgentMode::Off && !plugin_works(&palisade_tests::bin_dir().join("palisade")) {
        c.cni_plugin = Some(stub_plugin());
    }
    c
}

fn cases() -> Vec<Case> {
    PORTS
        .iter()
        .flat_map(|&port| Protocol::ALL.map(|protocol| Case { port, protocol }))
        .collect()
}

/// A lab with a Service per pod (`port_offset` added to every Service port; `named` targets
/// by the pods' port names).
fn lab_with_services(agent: AgentMode, nodes: usize, port_offset: u16, named: bool) -> Lab {
    services_on(config(agent, nodes), port_offset, named)
}

fn services_on(config: LabConfig, port_offset: u16, named: bool) -> Lab {
    let mut lab = Lab::start(config).expect("lab starts");
    eprintln!("lab {}: {}", lab.id(), lab.mode());
    let yaml = per_pod_services_yaml(&lab.model().pods, port_offset, named);
    lab.apply_services("services", &yaml)
        .expect("services applied");
    lab.wait_synced().expect("synced");
    lab
}

fn targets(lab: &Lab, family: Family, port_offset: u16) -> Vec<ServiceTarget> {
    lab.per_pod_service_targets(family, port_offset)
        .expect("service targets")
}

/// Applies each case, probes every pod through every pod's Service in v4 and v6, compares.
fn run_cases(lab: &mut Lab, port_offset: u16, cases_: &[PolicyCase]) -> Vec<String> {
    run_cases_with(lab, port_offset, &cases(), cases_)
}

fn run_cases_with(
    lab: &mut Lab,
    port_offset: u16,
    probe_cases: &[Case],
    cases_: &[PolicyCase],
) -> Vec<String> {
    run_cases_probing(lab, cases_, ", through ClusterIPs", false, |lab, family| {
        let t = targets(lab, family, port_offset);
        lab.probe_services(&t, probe_cases, family)
            .map_err(|e| e.to_string())
    })
}

fn assert_no_failures(failures: Vec<String>, runs: usize) {
    assert!(
        failures.is_empty(),
        "{} of {runs} case runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The representative upstream cases, read through ClusterIPs.
const TRUTH_TABLE_CASES: &[PolicyCase] = &[
    PolicyCase {
        name: "deny_all_ingress_of_backend_x_a_blocks_its_service",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
",
        expect: |r| {
            r.expect_all_ingress("x/a", false);
        },
    },
    PolicyCase {
        name: "egress_of_x_a_allowed_to_pod_y_b_only",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to:
        - namespaceSelector: {matchLabels: {ns: y}}
          podSelector: {matchLabels: {pod: b}}
",
        expect: |r| {
            r.expect_all_egress("x/a", false);
            r.expect("x/a", "y/b", true);
        },
    },
    PolicyCase {
        name: "egress_of_x_allowed_to_namespace_z_on_tcp_80_only",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-z, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
      ports: [{protocol: TCP, port: 80}]
",
        expect: |r| {
            r.expect_peer(&Peer::ns("x"), &Peer::any(), false);
            r.table_mut(80, Protocol::Tcp)
                .set_peers(&Peer::ns("x"), &Peer::ns("z"), true);
        },
    },
];

/// Baseline (no agent): the DNAT plumbing alone: every pod reaches every other pod through
/// its Service, v4 and v6, TCP and UDP, also with Service ports that differ from the target
/// ports and with named target ports.
#[test]
fn privileged_services_baseline_every_pod_reaches_every_backend_through_cluster_ips() {
    if !require_privileges(
        "privileged_services_baseline_every_pod_reaches_every_backend_through_cluster_ips",
    ) {
        return;
    }
    for (offset, named) in [(0, false), (1000, true)] {
        let lab = lab_with_services(AgentMode::Off, 1, offset, named);
        for family in [Family::V4, Family::V6] {
            let observed = lab
                .probe_services(&targets(&lab, family, offset), &cases(), family)
                .expect("probes run");
            eprintln!("offset {offset} named {named} {family}:\n{observed}");
            let expected = Reachability::all_reachable_like(&observed);
            if let Some(d) = expected.diff(&observed, true) {
                panic!("no agent, service port +{offset}, named {named}, {family}:\n{d}");
            }
        }
    }
}

/// Baseline, three nodes: backends on other nodes are reached through the ClusterIP too.
#[test]
fn privileged_services_baseline_three_nodes_backends_on_other_nodes() {
    if !require_privileges("privileged_services_baseline_three_nodes_backends_on_other_nodes") {
        return;
    }
    let lab = lab_with_services(AgentMode::Off, 3, 0, false);
    for family in [Family::V4, Family::V6] {
        let observed = lab
            .probe_services(&targets(&lab, family, 0), &cases(), family)
            .expect("probes run");
        let expected = Reachability::all_reachable_like(&observed);
        if let Some(d) = expected.diff(&observed, true) {
            panic!("no agent, three nodes, {family}:\n{d}");
        }
    }
}

/// (a) The upstream-style truth tables hold when probing through ClusterIPs.
#[test]
fn privileged_services_truth_tables_hold_through_cluster_ips() {
    if !require_privileges("privileged_services_truth_tables_hold_through_cluster_ips") {
        return;
    }
    let mut lab = lab_with_services(AgentMode::Required, 1, 0, false);
    let failures = run_cases(&mut lab, 0, TRUTH_TABLE_CASES);
    assert_no_failures(failures, TRUTH_TABLE_CASES.len() * 2);
}

/// (b) Service port != targetPort: egress rules name the pod's port (80), never the Service
/// port (1080): a rule on the Service port allows nothing, a rule on the target port allows
/// the connection through the Service port.
#[test]
fn privileged_services_egress_is_judged_on_the_target_port_not_the_service_port() {
    if !require_privileges(
        "privileged_services_egress_is_judged_on_the_target_port_not_the_service_port",
    ) {
        return;
    }
    let mut lab = lab_with_services(AgentMode::Required, 1, 1000, false);
    let cases_ = [
        PolicyCase {
            name: "egress_of_x_a_on_target_port_80_to_y",
            manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
      ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 80}]
",
            expect: |r| {
                r.expect_all_egress("x/a", false);
                for p in Protocol::ALL {
                    r.table_mut(80, p)
                        .set_peers(&Peer::pod("x", "a"), &Peer::ns("y"), true);
                }
            },
        },
        PolicyCase {
            name: "egress_of_x_a_on_service_port_1080_allows_nothing",
            manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-1080, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - ports: [{protocol: TCP, port: 1080}, {protocol: UDP, port: 1080}, {protocol: TCP, port: 1081}, {protocol: UDP, port: 1081}]
",
            expect: |r| {
                r.expect_all_egress("x/a", false);
            },
        },
        PolicyCase {
            name: "ingress_of_y_b_on_target_port_81_through_service_port_1081",
            manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-81, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
    - ports: [{protocol: TCP, port: 81}]
",
            expect: |r| {
                r.expect_all_ingress("y/b", false);
                r.table_mut(81, Protocol::Tcp)
                    .set_peers(&Peer::any(), &Peer::pod("y", "b"), true);
            },
        },
    ];
    let failures = run_cases(&mut lab, 1000, &cases_);
    assert_no_failures(failures, cases_.len() * 2);
}

/// (c) Named targetPort: the Services target `serve-<port>-<proto>` by name (resolved through
/// the EndpointSlices, as kube-proxy does), Service ports are 1080/1081, and an egress rule
/// with a named port allows exactly that port of the backends.
#[test]
fn privileged_services_named_target_port_is_judged_as_the_pods_named_port() {
    if !require_privileges("privileged_services_named_target_port_is_judged_as_the_pods_named_port")
    {
        return;
    }
    let mut lab = lab_with_services(AgentMode::Required, 1, 1000, true);
    let cases_ = [PolicyCase {
        name: "egress_of_x_a_by_named_port_serve_81_tcp_to_z",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
      ports: [{protocol: TCP, port: serve-81-tcp}]
",
        expect: |r| {
            r.expect_all_egress("x/a", false);
            r.table_mut(81, Protocol::Tcp)
                .set_peers(&Peer::pod("x", "a"), &Peer::ns("z"), true);
        },
    }];
    let failures = run_cases(&mut lab, 1000, &cases_);
    assert_no_failures(failures, cases_.len() * 2);
}

/// The pods of y labelled `app=web` and a Service `y/web` (ports 80 TCP and UDP, ClusterIPs
/// 10.96.2.1 and fd00:10:96::201) in front of them.
const WEB_SERVICE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {pod: a, app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b, app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c, app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: y}
spec:
  selector: {app: web}
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.2.1
  clusterIPs: [10.96.2.1, \"fd00:10:96::201\"]
  ports:
    - {name: http, protocol: TCP, port: 80, targetPort: 80}
    - {name: echo, protocol: UDP, port: 80, targetPort: 80}
";

/// Who answered `n` new flows from `from` to `y/web` (counted per backend; `None` = no answer).
fn answers(
    lab: &Lab,
    from: &str,
    family: Family,
    protocol: Protocol,
    n: usize,
) -> (BTreeSet<String>, usize, Vec<Option<String>>) {
    let ip = lab.cluster_ip("y", "web", family).expect("ClusterIP");
    let got = lab
        .who_answers(
            from,
            SocketAddr::new(ip, 80),
            protocol,
            n,
            Duration::from_millis(1500),
        )
        .expect("connections run");
    let ids: BTreeSet<String> = got.iter().flatten().cloned().collect();
    let unanswered = got.iter().filter(|g| g.is_none()).count();
    (ids, unanswered, got)
}

/// Baseline of (d): without policy, 45 flows through the ClusterIP reach all three backends
/// (the random DNAT spreads them; each backend is missed with probability (2/3)^45 < 1e-7).
#[test]
fn privileged_services_baseline_random_dnat_reaches_every_backend() {
    if !require_privileges("privileged_services_baseline_random_dnat_reaches_every_backend") {
        return;
    }
    let mut lab = Lab::start(config(AgentMode::Off, 1)).expect("lab starts");
    lab.apply_services("web", WEB_SERVICE).expect("web applied");
    for family in [Family::V4, Family::V6] {
        for protocol in Protocol::ALL {
            let (ids, unanswered, got) = answers(&lab, "x/a", family, protocol, 45);
            let all: BTreeSet<String> = ["y/a", "y/b", "y/c"].map(String::from).into();
            assert_eq!(ids, all, "{family} {protocol}: {got:?}");
            assert_eq!(unanswered, 0, "{family} {protocol}: {got:?}");
        }
    }
}

/// Runs (d) on a lab of `nodes` nodes (see the tests below).
fn partly_allowed_backends(nodes: usize) {
    let mut lab = Lab::start(config(AgentMode::Required, nodes)).expect("lab starts");
    lab.apply_services("web", WEB_SERVICE).expect("web applied");
    lab.apply_yaml(
        "egress-partly",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-partly, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to:
        - namespaceSelector: {matchLabels: {ns: y}}
          podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
",
    )
    .expect("policy applied");
    lab.wait_synced().expect("synced");
    let node_of = |id: &str| lab.model().pod(id).map(|p| p.node);
    eprintln!(
        "client x/a on node {:?}; backends y/a {:?}, y/b {:?}, y/c (forbidden) {:?}",
        node_of("x/a"),
        node_of("y/a"),
        node_of("y/b"),
        node_of("y/c")
    );
    let allowed: BTreeSet<String> = ["y/a", "y/b"].map(String::from).into();
    for family in [Family::V4, Family::V6] {
        for protocol in Protocol::ALL {
            let (ids, unanswered, got) = answers(&lab, "x/a", family, protocol, 45);
            eprintln!("{family} {protocol}: answered by {ids:?}, {unanswered} of 45 unanswered");
            assert_eq!(
                ids, allowed,
                "{family} {protocol}: only (and both) allowed backends answer: {got:?}"
            );
            assert!(
                unanswered > 0,
                "{family} {protocol}: some flows were sent to y/c and must have failed: {got:?}"
            );
        }
    }
    // A pod without egress policy still reaches all three.
    let (ids, _, got) = answers(&lab, "x/b", Family::V4, Protocol::Tcp, 45);
    assert_eq!(ids.len(), 3, "x/b has no egress policy: {got:?}");
}

/// (d) A Service whose backends are partly allowed: x/a may reach y/a and y/b but not y/c.
/// Of 45 new flows through the ClusterIP (TCP connections, UDP exchanges), every answered one
/// comes from an allowed backend, both allowed backends answer, and y/c never does (the flows
/// DNATed to it get no answer; each backend is missed with probability (2/3)^45 < 1e-7).
#[test]
fn privileged_services_partly_allowed_backends_only_allowed_ones_answer() {
    if !require_privileges("privileged_services_partly_allowed_backends_only_allowed_ones_answer") {
        return;
    }
    partly_allowed_backends(1);
}

/// (d) and (e) across nodes: three nodes, pods round robin, so the client x/a and the allowed
/// y/a share node n0 while the allowed y/b (n1) and the forbidden y/c (n2) are remote: the
/// translated packet to a remote backend is judged where it leaves the node.
#[test]
fn privileged_services_three_nodes_partly_allowed_backends_only_allowed_ones_answer() {
    if !require_privileges(
        "privileged_services_three_nodes_partly_allowed_backends_only_allowed_ones_answer",
    ) {
        return;
    }
    partly_allowed_backends(3);
}

/// (e) Backends on other nodes: with three nodes (pods round robin: x/a on n0, x/b on n1, x/c
/// on n2, ...), the truth tables hold through ClusterIPs across the underlay.
#[test]
fn privileged_services_three_nodes_truth_tables_hold_through_cluster_ips() {
    if !require_privileges("privileged_services_three_nodes_truth_tables_hold_through_cluster_ips")
    {
        return;
    }
    let mut lab = lab_with_services(AgentMode::Required, 3, 0, false);
    let failures = run_cases(&mut lab, 0, &TRUTH_TABLE_CASES[..2]);
    assert_no_failures(failures, 4);
}

/// The conformance model's lab (its pods serve SCTP too; this kernel has no SCTP sockets, so
/// an SCTP probe is a crafted INIT that the backend's raw socket must receive).
fn sctp_config(agent: AgentMode) -> LabConfig {
    LabConfig {
        conformance_addresses: true,
        ..config(agent, 1)
    }
}

fn sctp_and_tcp_cases() -> Vec<Case> {
    PORTS
        .iter()
        .flat_map(|&port| [Protocol::Sctp, Protocol::Tcp].map(|protocol| Case { port, protocol }))
        .collect()
}

/// Baseline: SCTP through ClusterIPs (Service ports 1080/1081 -> 80/81): kube-proxy's
/// `-p sctp` DNAT reaches every backend.
#[test]
fn privileged_services_baseline_sctp_through_cluster_ips() {
    if !require_privileges("privileged_services_baseline_sctp_through_cluster_ips") {
        return;
    }
    let lab = services_on(sctp_config(AgentMode::Off), 1000, false);
    for family in [Family::V4, Family::V6] {
        let observed = lab
            .probe_services(&targets(&lab, family, 1000), &sctp_and_tcp_cases(), family)
            .expect("probes run");
        let expected = Reachability::all_reachable_like(&observed);
        if let Some(d) = expected.diff(&observed, true) {
            panic!("no agent, SCTP through ClusterIPs, {family}:\n{d}");
        }
    }
}

/// SCTP through a Service port that differs from the target port: an egress rule on SCTP 80
/// (the pods' port) admits exactly SCTP to namespace y through Service port 1080.
#[test]
fn privileged_services_sctp_egress_is_judged_on_the_target_port() {
    if !require_privileges("privileged_services_sctp_egress_is_judged_on_the_target_port") {
        return;
    }
    let mut lab = services_on(sctp_config(AgentMode::Required), 1000, false);
    let cases_ = [PolicyCase {
        name: "egress_of_x_a_on_sctp_80_to_y",
        manifests: "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-sctp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
      ports: [{protocol: SCTP, port: 80}]
",
        expect: |r| {
            r.expect_all_egress("x/a", false);
            r.table_mut(80, Protocol::Sctp)
                .set_peers(&Peer::pod("x", "a"), &Peer::ns("y"), true);
        },
    }];
    let failures = run_cases_with(&mut lab, 1000, &sctp_and_tcp_cases(), &cases_);
    assert_no_failures(failures, 2);
}

/// Baseline: kube-proxy follows endpoint changes. `y/web` first has three backends; y/c loses
/// the label (its endpoint leaves the regenerated slice): the rules are reloaded, its
/// `KUBE-SEP` chain is deleted, and every flow lands on y/a or y/b. Removing the Service
/// removes every `KUBE-SVC`/`KUBE-SEP` chain of every node.
#[test]
fn privileged_services_baseline_endpoint_changes_reprogram_the_rules() {
    if !require_privileges("privileged_services_baseline_endpoint_changes_reprogram_the_rules") {
        return;
    }
    let mut lab = Lab::start(config(AgentMode::Off, 1)).expect("lab starts");
    let (pods, service) = WEB_SERVICE
        .split_once("---\napiVersion: v1\nkind: Service")
        .expect("WEB_SERVICE has pods, then the Service");
    let service = format!("apiVersion: v1\nkind: Service{service}");
    lab.apply_yaml("web-pods", pods).expect("pods labelled");
    lab.apply_services("web", &service).expect("web applied");
    let (ids, _, got) = answers(&lab, "x/a", Family::V4, Protocol::Tcp, 45);
    assert_eq!(ids.len(), 3, "three backends: {got:?}");
    let chains = |lab: &Lab| -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.node_netns()[0],
                "iptables-save",
                "-t",
                "nat",
            ])
            .output()
            .expect("iptables-save runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(":KUBE-SVC-") || l.starts_with(":KUBE-SEP-"))
            .map(String::from)
            .collect()
    };
    // 2 Service ports x (1 SVC + 3 SEP chains).
    assert_eq!(chains(&lab).len(), 8, "{:?}", chains(&lab));
    lab.apply_yaml(
        "web-pods",
        &pods.replace("labels: {pod: c, app: web}", "labels: {pod: c}"),
    )
    .expect("y/c relabelled");
    lab.apply_services("web", &service).expect("web re-applied");
    assert_eq!(chains(&lab).len(), 6, "{:?}", chains(&lab));
    for protocol in Protocol::ALL {
        let (ids, unanswered, got) = answers(&lab, "x/a", Family::V4, protocol, 45);
        let two: BTreeSet<String> = ["y/a", "y/b"].map(String::from).into();
        assert_eq!(ids, two, "{protocol}: y/c is no endpoint any more: {got:?}");
        assert_eq!(unanswered, 0, "{protocol}: {got:?}");
    }
    lab.remove_services("web").expect("web removed");
    assert!(chains(&lab).is_empty(), "{:?}", chains(&lab));
    let got = lab
        .who_answers(
            "x/a",
            "10.96.2.1:80".parse().expect("address"),
            Protocol::Tcp,
            5,
            Duration::from_millis(500),
        )
        .expect("connections run");
    assert!(
        got.iter().all(Option::is_none),
        "no Service, no translation: {got:?}"
    );
}
