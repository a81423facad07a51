//! Pods on different nodes: the lab's nodes joined by an underlay bridge, the agents routing
//! each other's pod CIDRs from the Node objects (routes of protocol 80), and masquerade of pod
//! traffic that leaves the cluster (see docs/lab.md).

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_tests::lab::{Family, Lab, PORTS, Protocol, Reachability, canonical_cidr, netns};
use palisade_tests::require_privileges;
use serde_json::{Value, json};

#[path = "common/policy_cases.rs"]
mod policy_cases;
use policy_cases::{POLICY_CASES, enforcing_lab, run_cases};

/// The upstream model spread over three nodes (x/a on n0, x/b on n1, x/c on n2, ...) passes
/// the same truth tables as on one node, with every inter-node route written by the agents.
#[test]
fn privileged_nodes_three_nodes_policy_truth_tables() {
    if !require_privileges("privileged_nodes_three_nodes_policy_truth_tables") {
        return;
    }
    let mut lab = enforcing_lab(3);
    for i in 0..3 {
        let routes = lab.palisade_routes(i).expect("routes");
        assert_eq!(routes, lab.expected_pod_routes()[i], "node n{i}");
        assert_eq!(lab.node_uplink(i), Some("eth0"));
    }
    for family in [Family::V4, Family::V6] {
        let observed = lab
            .probe_all(&PORTS, &Protocol::ALL, family)
            .expect("probes run");
        let expected = Reachability::all_reachable_like(&observed);
        if let Some(diff) = expected.diff(&observed, false) {
            panic!("three nodes, no policy, {family}:\n{diff}");
        }
    }
    let failures = run_cases(&mut lab, POLICY_CASES);
    assert!(
        failures.is_empty(),
        "{} of {} case runs failed:\n{}",
        failures.len(),
        POLICY_CASES.len() * 2,
        failures.join("\n")
    );
}

/// Routes node `own` should hold for `nodes` (Node objects as the lab writes them).
fn routes_for(nodes: &[Value], own: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in nodes {
        if n["metadata"]["name"] == own {
            continue;
        }
        let ips: Vec<IpAddr> = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == "InternalIP")
            .filter_map(|a| a["address"].as_str()?.parse().ok())
            .collect();
        for c in n["spec"]["podCIDRs"].as_array().into_iter().flatten() {
            let c = c.as_str().unwrap_or_default();
            if let Some(via) = ips.iter().find(|ip| ip.is_ipv6() == c.contains(':')) {
                out.push((canonical_cidr(c), via.to_string()));
            }
        }
    }
    out.sort();
    out
}

/// Waits until all three nodes hold the routes `nodes` ask for; prints how long it took from
/// the call (the manifest was just written).
fn wait_routes(lab: &Lab, nodes: &[Value], step: &str) {
    let start = Instant::now();
    let want: Vec<Vec<(String, String)>> = (0..3)
        .map(|i| routes_for(nodes, &format!("n{i}")))
        .collect();
    lab.wait_pod_routes(&want)
        .unwrap_or_else(|e| panic!("{step}: {e}"));
    eprintln!("{step}: routes on every node after {:?}", start.elapsed());
}

/// Polls `cond` every 20 ms for at most `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn privileged_nodes_routes_follow_the_node_objects() {
    if !require_privileges("privileged_nodes_routes_follow_the_node_objects") {
        return;
    }
    let mut lab = enforcing_lab(3);
    let base = lab.node_objects();

    // n2 leaves: n0 and n1 drop the routes to its pods; n2 keeps its routes to them.
    let without_n2: Vec<Value> = base[..2].to_vec();
    lab.write_nodes(&without_n2).expect("write nodes");
    let mut want: Vec<Vec<(String, String)>> = (0..2)
        .map(|i| routes_for(&without_n2, &format!("n{i}")))
        .collect();
    want.push(routes_for(&base, "n2"));
    lab.wait_pod_routes(&want).expect("n2's routes removed");
    assert!(
        lab.palisade_routes(0)
            .unwrap()
            .iter()
            .all(|(c, _)| !c.starts_with("10.244.2.")),
        "n0 still routes n2's pods"
    );

    // n2 comes back with other InternalIPs: routes replaced with the new gateways.
    let mut moved = base.clone();
    moved[2]["status"]["addresses"] = json!([
        {"type": "InternalIP", "address": "192.168.254.33"},
        {"type": "InternalIP", "address": "fd00:ffff::33"},
    ]);
    lab.write_nodes(&moved).expect("write nodes");
    wait_routes(&lab, &moved, "n2's InternalIP changed");
    assert!(
        lab.palisade_routes(1)
            .unwrap()
            .contains(&("10.244.2.0/24".into(), "192.168.254.33".into())),
        "{:?}",
        lab.palisade_routes(1)
    );

    // A new Node: every lab node routes its pod CIDRs.
    let mut added = base.clone();
    added.push(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n9"},
        "spec": {"podCIDRs": ["10.244.9.0/24", "fd00:10:244:9::/64"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.254.9"},
            {"type": "InternalIP", "address": "fd00:ffff::9"},
        ]},
    }));
    // And one that cannot be routed (no InternalIP): reported, not a failure.
    added.push(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n8"},
        "spec": {"podCIDRs": ["10.244.8.0/24"]},
    }));
    lab.write_nodes(&added).expect("write nodes");
    wait_routes(&lab, &added, "node n9 added");
    lab.wait_synced().expect("synced");
    let status = lab.agent_status().expect("status");
    assert!(
        status[0].contains("Node n8") && status[0].contains("InternalIP"),
        "the unroutable Node is reported: {}",
        status[0]
    );

    // Back to the lab's Nodes; pods on different nodes reach each other again.
    lab.write_nodes(&base).expect("write nodes");
    wait_routes(&lab, &base, "back to the lab's nodes");
    let observed = lab
        .probe_all(&[80], &[Protocol::Tcp], Family::V4)
        .expect("probes");
    if let Some(diff) = Reachability::all_reachable_like(&observed).diff(&observed, false) {
        panic!("after the node changes:\n{diff}");
    }

    // A restarted agent deletes stale routes of its own protocol and leaves others' alone.
    let ns = lab.node_netns()[0].to_string();
    lab.agent_mut(0)
        .expect("agent n0")
        .kill_hard()
        .expect("kill");
    netns::ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "10.244.77.0/24",
        "via",
        "192.168.254.2",
        "proto",
        "80",
    ])
    .expect("stale route");
    netns::ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "10.244.78.0/24",
        "via",
        "192.168.254.2",
    ])
    .expect("foreign route");
    lab.agent_mut(0)
        .expect("agent n0")
        .respawn()
        .expect("respawn");
    wait_routes(&lab, &base, "stale route removed on start");
    let all = netns::ip(&["-n", &ns, "route", "show"]).expect("routes");
    assert!(all.contains("10.244.78.0/24"), "foreign route kept:\n{all}");
    assert!(!all.contains("10.244.77.0/24"), "stale route gone:\n{all}");
}

/// A `socat` listener in a namespace that answers every connection with the peer address it
/// saw; killed on drop.
struct PeerEcho(Child);

impl PeerEcho {
    fn start(netns_name: &str, port: u16) -> PeerEcho {
        let child = Command::new("ip")
            .args(["netns", "exec", netns_name, "socat"])
            .arg(format!(
                "TCP-LISTEN:{port},pf=ip6,ipv6only=0,reuseaddr,fork"
            ))
            .arg("SYSTEM:echo $SOCAT_PEERADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs (scripts/setup.sh installs it)");
        let echo = PeerEcho(child);
        wait_for(
            &format!("socat listening on {port} in {netns_name}"),
            Duration::from_secs(5),
            || {
                netns::ip(&["netns", "exec", netns_name, "ss", "-Hltn"])
                    .map(|o| o.contains(&format!(":{port}")))
                    .unwrap_or(false)
            },
        );
        echo
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill() {
            eprintln!("killing socat: {e}");
        }
        if let Err(e) = self.0.wait() {
            eprintln!("waiting for socat: {e}");
        }
    }
}

/// The source address `to` saw for a TCP connection from namespace `from`.
fn seen_source(from: &str, to: IpAddr, port: u16) -> String {
    let addr = match to {
        IpAddr::V4(a) => format!("TCP4:{a}:{port}"),
        IpAddr::V6(a) => format!("TCP6:[{a}]:{port}"),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", from, "socat", "-T", "3", "-", &addr])
        .stdin(Stdio::null())
        .output()
        .expect("socat runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !text.is_empty(),
        "{from} -> {addr}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // socat prints `[0000:...:ffff:c0a8:fe02]` (a v4-mapped address on a dual-stack socket).
    let ip: IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|e| panic!("{from} -> {addr}: peer {text:?}: {e}"));
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(ip)
            .to_string(),
        v4 => v4.to_string(),
    }
}

#[test]
fn privileged_nodes_masquerade_only_traffic_leaving_the_cluster() {
    if !require_privileges("privileged_nodes_masquerade_only_traffic_leaving_the_cluster") {
        return;
    }
    let mut lab = enforcing_lab(2);
    // An outside host on the underlay, with no route to the pod CIDRs: only masqueraded
    // traffic can be answered.
    let out_ips = lab.add_underlay_host("out", 100).expect("outside host");
    let out_ns = lab.outside_netns("out").expect("out").to_string();
    let _out_echo = PeerEcho::start(&out_ns, 9000);
    // x/a on n0, x/b on n1.
    let a_ns = lab.pod_netns("x/a").expect("x/a").to_string();
    let b_ns = lab.pod_netns("x/b").expect("x/b").to_string();
    let _a_echo = PeerEcho::start(&a_ns, 9000);
    for (fam, v6) in [("IPv4", false), ("IPv6", true)] {
        let pick = |ips: &[IpAddr]| *ips.iter().find(|ip| ip.is_ipv6() == v6).expect("addr");
        let out_ip = pick(&out_ips);
        let a_ip = pick(lab.pod_ips("x/a").expect("x/a ips"));
        let b_ip = pick(lab.pod_ips("x/b").expect("x/b ips"));
        let n0 = pick(&Lab::node_addrs(0));
        let n1 = pick(&Lab::node_addrs(1));
        // Leaving the cluster: the node's address.
        assert_eq!(
            seen_source(&b_ns, out_ip, 9000),
            n1.to_string(),
            "{fam} x/b -> out"
        );
        assert_eq!(
            seen_source(&a_ns, out_ip, 9000),
            n0.to_string(),
            "{fam} x/a -> out"
        );
        // Pod to pod on another node: the pod's own address.
        assert_eq!(
            seen_source(&b_ns, a_ip, 9000),
            b_ip.to_string(),
            "{fam} x/b -> x/a"
        );
    }
}

/// A route to a pod CIDR that someone else wrote (another protocol) is never overwritten: the
/// agent reports it; once it is gone, the periodic resync writes Palisade's own.
#[test]
fn privileged_nodes_foreign_route_to_a_pod_cidr_is_reported_and_left_alone() {
    if !require_privileges(
        "privileged_nodes_foreign_route_to_a_pod_cidr_is_reported_and_left_alone",
    ) {
        return;
    }
    let mut lab = enforcing_lab(2);
    let ns = lab.node_netns()[0].to_string();
    lab.agent_mut(0)
        .expect("agent n0")
        .kill_hard()
        .expect("kill");
    netns::ip(&["-n", &ns, "route", "del", "10.244.1.0/24"]).expect("delete own route");
    netns::ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "10.244.1.0/24",
        "via",
        "192.168.254.2",
        "proto",
        "static",
    ])
    .expect("foreign route");
    lab.agent_mut(0)
        .expect("agent n0")
        .respawn()
        .expect("respawn");
    lab.wait_synced().expect("synced");
    // Routes are written by the node-network task beside the apply that `wait` waits for:
    // the report comes when that task's first sync after the restart finishes.
    wait_for("the conflict is reported", Duration::from_secs(30), || {
        lab.agent_status().is_ok_and(|s| {
            s.first()
                .is_some_and(|s| s.contains("not written by Palisade"))
        })
    });
    let routes = netns::ip(&["-n", &ns, "route", "show", "10.244.1.0/24"]).expect("routes");
    assert!(
        routes.contains("proto static"),
        "foreign route kept: {routes}"
    );
    // Gone: the next periodic resync (10 s) writes the agent's own route.
    netns::ip(&["-n", &ns, "route", "del", "10.244.1.0/24"]).expect("delete foreign route");
    wait_for(
        "n0's own route to n1's pods back",
        Duration::from_secs(30),
        || {
            lab.palisade_routes(0)
                .is_ok_and(|r| r == lab.expected_pod_routes()[0])
        },
    );
}
