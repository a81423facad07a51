//! The ClusterNetworkPolicy conformance suite (`policy/conformance/cluster-network-policy.yaml`:
//! the 24 tests of sigs.k8s.io/network-policy-api v0.2.0's ClusterNetworkPolicy profile,
//! experimental named ports and node peers included, written as data) through real packets:
//! its model (four namespaces of two pods on two nodes, host-network pods as processes in
//! their nodes' namespaces, Node objects with labels) wired by the real CNI plugin and
//! enforced by the real agents (directory source) and eBPF datapath. For every test its
//! objects are applied, then each step's edits, and after each step every assertion is probed
//! on IPv4 and IPv6 at once and compared with the data's expectation and with the reference
//! evaluator on the lab's own addresses. The count of assertions passed is printed.
//!
//! Then what the user sees: the agents' counters name `policy_deny` drops, and an invalid
//! update of a ClusterNetworkPolicy is reported (object, field, value) while its last valid
//! version stays enforced.

use std::net::IpAddr;

use palisade_policy::cnp::conformance::{Replay, Suite, Tally, suite};
use palisade_policy::{Endpoint, Evaluator, PodKey};
use palisade_tests::lab::{AgentMode, Case, Family, Lab, LabConfig, Model, Pair, Protocol};
use palisade_tests::require_privileges;

/// Assertions the datapath is known to get wrong, with the reason: reported LOUDLY (and
/// listed at the end) so that CI stays green while the gap is open. Empty: none known.
const KNOWN_GAPS: &[(&str, &str)] = &[];

fn pod_id(s: &Suite, name: &str) -> String {
    let p = s
        .pod(name)
        .unwrap_or_else(|| panic!("{name} is not a pod of the model"));
    format!("{}/{}", p.namespace, p.name)
}

fn protocol(p: palisade_policy::Protocol) -> Protocol {
    match p {
        palisade_policy::Protocol::Tcp => Protocol::Tcp,
        palisade_policy::Protocol::Udp => Protocol::Udp,
        palisade_policy::Protocol::Sctp => Protocol::Sctp,
    }
}

#[test]
fn privileged_cluster_network_policy_conformance_through_real_packets() {
    if !require_privileges("privileged_cluster_network_policy_conformance_through_real_packets") {
        return;
    }
    let started = std::time::Instant::now();
    let s = suite();
    let mut lab = Lab::start(LabConfig {
        agent: AgentMode::Required,
        base_model: Some(Model::cluster_network_policy()),
        verbose: true,
        ..LabConfig::default()
    })
    .expect("lab with the ClusterNetworkPolicy model starts");
    eprintln!(
        "lab {} up in {:?}: {}",
        lab.id(),
        started.elapsed(),
        lab.mode()
    );
    let ips = |lab: &Lab, name: &str| -> Vec<IpAddr> {
        lab.pod_ips(&pod_id(&s, name))
            .map(<[IpAddr]>::to_vec)
            .unwrap_or_default()
    };
    let node_ips = |n: usize| Lab::node_addrs(n).to_vec();
    let mut tally = Tally::default();
    let mut gaps = Vec::new();
    for test in &s.tests {
        let t = std::time::Instant::now();
        let mut replay = Replay::new(test).expect("objects parse");
        for step in &test.steps {
            replay.apply(step).expect("edits apply");
            let pod_ips = |name: &str| ips(&lab, name);
            let yaml = replay.yaml(&pod_ips);
            let cluster = replay
                .apply_to(s.cluster(&pod_ips, &node_ips), &pod_ips)
                .expect("objects are policies");
            lab.apply_yaml("cnp-conformance", &yaml)
                .unwrap_or_else(|e| panic!("{}: apply: {e}", test.name));
            lab.wait_synced()
                .unwrap_or_else(|e| panic!("{}: sync: {e}", test.name));
            let mut pairs = Vec::new();
            for p in &step.probes {
                for family in [Family::V4, Family::V6] {
                    pairs.push(Pair {
                        from: pod_id(&s, &p.from),
                        to: pod_id(&s, &p.to),
                        case: Case {
                            port: p.port,
                            protocol: protocol(p.protocol),
                        },
                        family,
                    });
                }
            }
            let got = lab
                .probe_pairs(&pairs)
                .unwrap_or_else(|e| panic!("{}: probe: {e}", test.name));
            let ev = Evaluator::new(&cluster);
            for (i, pair) in pairs.iter().enumerate() {
                let probe = &step.probes[i / 2];
                let v6 = pair.family == Family::V6;
                let end = |name: &str| -> Endpoint {
                    let p = s.pod(name).expect("model pod");
                    let key = PodKey::new(&p.namespace, &p.name);
                    let info = cluster.pod(&key).expect("in the cluster");
                    Endpoint::Pod {
                        pod: key,
                        addr: *info
                            .ips
                            .iter()
                            .find(|a| a.is_ipv6() == v6)
                            .expect("an address of the family"),
                    }
                };
                let spec = ev.allows(
                    &end(&probe.from),
                    &end(&probe.to),
                    probe.protocol.number(),
                    probe.port,
                );
                let what = format!("{:?}: {probe} ({})", step.name, pair.family);
                let ok = got[i] == probe.connects && spec == probe.connects;
                if !ok {
                    let detail = format!(
                        "{what}: real packets {}, reference evaluator {}",
                        if got[i] { "connected" } else { "blocked" },
                        if spec { "allows" } else { "denies" }
                    );
                    if let Some((_, why)) = KNOWN_GAPS
                        .iter()
                        .find(|(n, _)| *n == format!("{}: {what}", test.name))
                    {
                        eprintln!("KNOWN GAP {}: {detail}: {why}", test.name);
                        gaps.push(format!("{}: {detail}: {why}", test.name));
                    } else {
                        eprintln!("FAIL {}: {detail}", test.name);
                    }
                }
                tally.record(&test.name, &what, ok);
            }
        }
        let (passed, total) = tally.per_test.get(&test.name).copied().unwrap_or_default();
        eprintln!(
            "{} {}: {passed}/{total} in {:?}",
            if passed == total { "ok  " } else { "FAIL" },
            test.name,
            t.elapsed()
        );
        lab.remove("cnp-conformance").expect("objects removed");
    }
    println!(
        "ClusterNetworkPolicy conformance: {} of {} assertions passed through real packets \
         ({} upstream assertions x IPv4 and IPv6) in {:?}",
        tally.passed,
        tally.total(),
        s.assertions(),
        started.elapsed()
    );
    what_the_user_sees(&mut lab);
    let unexplained: Vec<&String> = tally
        .failed
        .iter()
        .filter(|f| !gaps.iter().any(|g| g.starts_with(f.as_str())))
        .collect();
    for g in &gaps {
        eprintln!("  KNOWN GAP: {g}");
    }
    if !unexplained.is_empty() {
        for l in lab.agent_logs() {
            eprintln!("agent log: {}", l.display());
        }
    }
    assert!(
        unexplained.is_empty(),
        "{} assertions failed:\n{}",
        unexplained.len(),
        unexplained
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Status after the suite: `policy_deny` drops counted; then an invalid update keeps the last
/// valid version enforced and is reported by object, field and value.
fn what_the_user_sees(lab: &mut Lab) {
    let statuses = lab.agent_status().expect("palisadectl status");
    let denied: u64 = statuses
        .iter()
        .map(|st| {
            let v: serde_json::Value = serde_json::from_str(st).expect("status is JSON");
            v["counters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["reason"] == "policy_deny")
                .map(|c| c["packets"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    assert!(denied > 0, "no policy_deny drop counted: {statuses:?}");
    eprintln!("agents counted {denied} policy_deny drops");

    let deny = |priority: i64| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
             metadata: {{name: no-slytherin}}\nspec:\n  tier: Admin\n  priority: {priority}\n  \
             subject: {{namespaces: {{matchLabels: {{conformance-house: gryffindor}}}}}}\n  \
             ingress: [{{action: Deny, from: [{{namespaces: {{matchLabels: {{conformance-house: slytherin}}}}}}]}}]\n"
        )
    };
    let blocked = |lab: &Lab| {
        let pair = Pair {
            from: "network-policy-conformance-slytherin/draco-malfoy-0".into(),
            to: "network-policy-conformance-gryffindor/harry-potter-1".into(),
            case: Case {
                port: 80,
                protocol: Protocol::Tcp,
            },
            family: Family::V4,
        };
        !lab.probe_pairs(&[pair]).expect("probe")[0]
    };
    lab.apply_yaml("user-sees", &deny(5)).expect("apply");
    lab.wait_synced().expect("sync");
    assert!(blocked(lab), "the Admin Deny is enforced");
    lab.apply_yaml("user-sees", &deny(5000)).expect("apply");
    lab.wait_synced().expect("sync");
    let statuses = lab.agent_status().expect("palisadectl status");
    for st in &statuses {
        assert!(
            st.contains("ClusterNetworkPolicy no-slytherin")
                && st.contains("spec.priority")
                && st.contains("5000 is not in 0..=1000")
                && st.contains("keeping the last valid version"),
            "the invalid update is reported: {st}"
        );
    }
    assert!(blocked(lab), "the last valid version stays enforced");
    lab.remove("user-sees").expect("remove");
    lab.wait_synced().expect("sync");
    assert!(!blocked(lab), "gone with its object");
}
