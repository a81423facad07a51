//! Property: for random clusters, NetworkPolicies, ClusterNetworkPolicies (Admin and Baseline
//! tiers, every action and peer kind, named ports) and probes, the compiled form (the
//! datapath's two LPM lookups + `common::decide`) gives the same verdict as the reference
//! evaluator, in each direction at each local endpoint, and names the same deciding rule;
//! and `explain` answers what the reference evaluator answers. `PROPTEST_CASES` raises the
//! case count (default 200). The generator is `palisade_policy::random` (shared with the
//! kernel differential test).

use palisade_common::decide::{CtMatch, Facts, decide};
use palisade_common::policy::RULE_DENY;
use palisade_policy::random::{EXTERNAL, cluster};
use palisade_policy::{
    Cluster, Direction, Endpoint, Evaluator, Outcome, PodKey, Protocol, RuleId, RuleRegistry,
    ServiceInfo, ServicePort, TargetPort, compile, describe, explain, lookup, proto_name,
};
use proptest::prelude::*;

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
