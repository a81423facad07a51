//! The ClusterNetworkPolicy conformance suite (`policy/conformance/cluster-network-policy.yaml`)
//! replayed without a kernel: after every step's edits, every assertion is checked against the
//! reference evaluator and against the compiled lookups (egress at the client, ingress at the
//! server, through `common::decide`), on IPv4 and IPv6. The lab replays the same data through
//! real packets (`tests/tests/cnp_conformance.rs`).

use std::net::IpAddr;

use palisade_policy::cnp::conformance::{Probe, Replay, Suite, Tally, suite};
use palisade_policy::{
    Cluster, Endpoint, Evaluator, PodKey, RuleRegistry, compile, compiled_allows, describe,
};

/// Pod `i` of the model: 10.0.<node>.<10+i> and fd00::<node>:<10+i>.
fn addrs(s: &Suite) -> impl Fn(&str) -> Vec<IpAddr> + '_ {
    move |name| {
        let (i, p) = s
            .model
            .pods
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the model"));
        vec![
            format!("10.0.{}.{}", p.node, 10 + i).parse().expect("v4"),
            format!("fd00::{}:{}", p.node, 10 + i).parse().expect("v6"),
        ]
    }
}

fn node_addrs(n: usize) -> Vec<IpAddr> {
    vec![
        format!("192.168.254.{}", n + 1).parse().expect("v4"),
        format!("fd00:ffff::{}", n + 1).parse().expect("v6"),
    ]
}

fn endpoint(s: &Suite, c: &Cluster, name: &str, v6: bool) -> Endpoint {
    let p = s
        .pod(name)
        .unwrap_or_else(|| panic!("probe names {name}, not in the model"));
    let info = c
        .pod(&PodKey::new(&p.namespace, &p.name))
        .expect("in cluster");
    let addr = *info
        .ips
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .expect("an address of the family");
    Endpoint::Pod {
        pod: info.key(),
        addr,
    }
}

fn check(
    s: &Suite,
    c: &Cluster,
    probe: &Probe,
    v6: bool,
    reg: &mut RuleRegistry,
) -> Result<(), String> {
    let src = endpoint(s, c, &probe.from, v6);
    let dst = endpoint(s, c, &probe.to, v6);
    let proto = probe.protocol.number();
    let by_evaluator = Evaluator::new(c).allows(&src, &dst, proto, probe.port);
    let locals: Vec<PodKey> = c.pods.iter().map(|p| p.key()).collect();
    let compiled = compile(c, &locals, reg);
    if !compiled.problems.is_empty() {
        return Err(format!("compile problems: {:?}", compiled.problems));
    }
    let by_lookup = compiled_allows(&compiled, &src, &dst, proto, probe.port);
    if by_evaluator == probe.connects && by_lookup == probe.connects {
        return Ok(());
    }
    let show = |e: &Endpoint| match e {
        Endpoint::Pod { pod, .. } => compiled
            .endpoints
            .get(pod)
            .map(|ep| describe(ep, reg))
            .unwrap_or_else(|| "(no endpoint: host network)\n".into()),
        Endpoint::External(_) => String::new(),
    };
    Err(format!(
        "evaluator says {by_evaluator}, compiled lookups say {by_lookup}\n  client:\n{}  server:\n{}",
        show(&src),
        show(&dst)
    ))
}

#[test]
fn every_conformance_assertion_holds_in_the_evaluator_and_the_compiled_lookups() {
    let s = suite();
    let pod_ips = addrs(&s);
    let mut tally = Tally::default();
    for test in &s.tests {
        let mut replay = Replay::new(test).expect("objects parse");
        let mut reg = RuleRegistry::new();
        for step in &test.steps {
            replay.apply(step).expect("edits apply");
            let cluster = replay
                .apply_to(s.cluster(&pod_ips, &node_addrs), &pod_ips)
                .expect("objects are policies");
            for probe in &step.probes {
                for v6 in [false, true] {
                    let fam = if v6 { "v6" } else { "v4" };
                    match check(&s, &cluster, probe, v6, &mut reg) {
                        Ok(()) => tally.record(&test.name, probe, true),
                        Err(why) => tally.record(
                            &test.name,
                            format!("{:?}: {probe} ({fam}): {why}", step.name),
                            false,
                        ),
                    }
                }
            }
        }
    }
    println!(
        "{} of {} assertions passed ({} upstream assertions x v4 and v6; evaluator and \
         compiled lookups)",
        tally.passed,
        tally.total(),
        s.assertions()
    );
    for (t, (ok, all)) in &tally.per_test {
        println!("  {t}: {ok}/{all}");
    }
    assert!(
        tally.failed.is_empty(),
        "{} assertions failed:\n{}",
        tally.failed.len(),
        tally.failed.join("\n")
    );
}

#[test]
fn the_suite_covers_every_upstream_test_of_the_profile() {
    let s = suite();
    assert_eq!(
        s.tests.len(),
        24,
        "tests of the ClusterNetworkPolicy profile"
    );
    assert_eq!(s.assertions(), 289, "PokeServer calls of conformance/tests");
    let experimental: Vec<&str> = s
        .tests
        .iter()
        .filter_map(|t| t.feature.as_deref())
        .collect();
    assert_eq!(experimental.len(), 6, "{experimental:?}");
    // Every probe names pods of the model, and every client is a pod with an interface.
    for t in &s.tests {
        for step in &t.steps {
            for p in &step.probes {
                assert!(s.pod(&p.from).is_some() && s.pod(&p.to).is_some(), "{p}");
                assert!(!s.is_host_network(&p.from), "{p}");
            }
        }
    }
}
