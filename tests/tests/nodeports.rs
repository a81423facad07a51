//! NodePorts and hostPorts under egress policy, in a two-node lab: kube-proxy-style NodePort
//! DNAT (`tests/src/lab/kubeproxy`) and portmap-style hostPort DNAT
//! (`tests/src/lab/hostport.rs`) in the node namespaces. A pod's connection to an address of
//! its own node is node traffic, which always passes; but when the node translates it to a
//! pod, the client's egress policy judges the translated destination, as for a ClusterIP. See
//! docs/services.md and docs/security.md.
//!
//! Pods: x/a (the client), x/c and y/b on node n0; x/b and y/a on node n1.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use palisade_tests::lab::netns::in_netns;
use palisade_tests::lab::{AgentMode, Lab, LabConfig, Protocol};
use palisade_tests::require_privileges;

/// One NodePort Service per backend pod, dual stack: (name, namespace, pod, n) with cluster IPs
/// `10.96.3.<n>` and `fd00:10:96::30<n>` and node port `3000<n>`.
const SERVICES: [(&str, &str, &str, u8); 4] = [
    ("np-xb", "x", "b", 1),
    ("np-xc", "x", "c", 2),
    ("np-ya", "y", "a", 3),
    ("np-yb", "y", "b", 4),
];

fn services_yaml() -> String {
    SERVICES
        .iter()
        .map(|(name, ns, pod, n)| {
            format!(
                "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: NodePort
  selector: {{pod: {pod}}}
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.3.{n}, \"fd00:10:96::30{n}\"]
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 80, nodePort: 3000{n}}}]
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// x/a may open TCP 80 to x/b and x/c only.
const A_EGRESS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]
      ports: [{protocol: TCP, port: 80}]
";

/// A process of the node itself (a kubelet stand-in).
const NODE_PORT_OF_KUBELET: u16 = 10250;

/// Who answers one TCP connection from `from` to `dest` (`None`: nobody within the timeout).
fn answer(lab: &Lab, from: &str, dest: SocketAddr) -> Option<String> {
    lab.who_answers(from, dest, Protocol::Tcp, 1, Duration::from_millis(1500))
        .expect("connection runs")
        .pop()
        .flatten()
}

/// Whether a TCP connection from pod `from` to `dest` is accepted.
fn connects(lab: &Lab, from: &str, dest: SocketAddr) -> bool {
    let ns = lab.pod_netns(from).expect("pod").to_string();
    in_netns(&ns, || {
        std::net::TcpStream::connect_timeout(&dest, Duration::from_millis(1500)).is_ok()
    })
    .expect("in pod namespace")
}

fn egress_drops(lab: &Lab) -> u64 {
    let text = lab.agent_status().expect("status").remove(0);
    let v: serde_json::Value = serde_json::from_str(&text).expect("status is JSON");
    v["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["direction"] == "egress" && c["reason"] == "default_deny")
        .filter_map(|c| c["packets"].as_u64())
        .sum()
}

/// Threat model: a pod (x/a) whose egress policy allows only x/b and x/c (TCP 80) tries to
/// reach other pods through addresses of its own node, which pass as node traffic: NodePorts
/// (kube-proxy) and hostPorts (portmap) that the node translates to pods. Each translated
/// connection must be judged as x/a's egress to the backend pod: allowed backends answer
/// (x/c on the same node, x/b on the other), forbidden ones never do (y/b on the same node,
/// y/a on the other), in IPv4 and IPv6, and the drops are counted as x/a's egress
/// `default_deny`. A process listening on the node itself still answers x/a. Through the other
/// node's address, the NodePort is that node's translation: x/a's policy judges the node
/// address (which it does not allow), not the backend (see docs/security.md, Known limits).
#[test]
fn privileged_nodeports_and_hostports_are_judged_after_translation() {
    if !require_privileges("privileged_nodeports_and_hostports_are_judged_after_translation") {
        return;
    }
    let mut lab = Lab::start(LabConfig {
        agent: AgentMode::Required,
        nodes: 2,
        verbose: true,
        ..LabConfig::default()
    })
    .expect("lab starts with the agents");
    lab.apply_services("nodeports", &services_yaml())
        .expect("NodePort Services");
    lab.apply_yaml("a-egress", A_EGRESS).expect("policy");
    lab.wait_synced().expect("synced");
    lab.add_host_port("y/b", Protocol::Tcp, 8001, 80)
        .expect("hostPort to y/b");
    lab.add_host_port("x/c", Protocol::Tcp, 8002, 80)
        .expect("hostPort to x/c");
    // A kubelet stand-in on node n0, on every address (dual stack).
    let n0 = lab.node_netns()[0].to_string();
    let kubelet = in_netns(&n0, || TcpListener::bind(("::", NODE_PORT_OF_KUBELET)))
        .expect("in node namespace")
        .expect("listening on the node");
    kubelet.set_nonblocking(true).expect("nonblocking");

    let mut failures = Vec::new();
    for node_addr in Lab::node_addrs(0) {
        let at = |port| SocketAddr::new(node_addr, port);
        let drops_before = egress_drops(&lab);
        for (port, backend, allowed) in [
            (30002, "x/c", true),
            (30001, "x/b", true),
            (30004, "y/b", false),
            (30003, "y/a", false),
            (8002, "x/c", true),
            (8001, "y/b", false),
        ] {
            let got = answer(&lab, "x/a", at(port));
            let want = allowed.then(|| backend.to_string());
            if got != want {
                failures.push(format!(
                    "x/a -> {} ({backend}, {}): answered by {got:?}, expected {want:?}",
                    at(port),
                    if allowed { "allowed" } else { "forbidden" }
                ));
            }
        }
        if !connects(&lab, "x/a", at(NODE_PORT_OF_KUBELET)) {
            failures.push(format!(
                "x/a -> {}: the node's own listener did not answer",
                at(NODE_PORT_OF_KUBELET)
            ));
        }
        if egress_drops(&lab) <= drops_before {
            failures.push(format!(
                "{node_addr}: no egress default_deny counted for the forbidden backends"
            ));
        }
    }
    // The other node's NodePort: judged here as traffic to that node's address.
    let n1: IpAddr = Lab::node_addrs(1)[0];
    if let Some(who) = answer(&lab, "x/a", SocketAddr::new(n1, 30002)) {
        failures.push(format!(
            "x/a -> {n1}:30002 answered by {who}: x/a's policy does not allow n1's address"
        ));
    }
    drop(kubelet);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        lab.agent_status().map(|s| s.join("\n")).unwrap_or_default()
    );
}
