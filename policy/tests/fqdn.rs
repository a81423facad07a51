//! Egress by domain name, policy side (`palisade_policy::fqdn::names`): the per-endpoint name
//! rules, patterns and variant compiles decide, for addresses a pod learnt from DNS, what the
//! reference evaluator decides given the same learnt facts; and the limit of name rules per
//! pod fails closed and is reported.

use palisade_common::DIR_EGRESS;
use palisade_common::decide::{CtMatch, Facts, decide};
use palisade_common::policy::{RULE_DENY, rule_allows};
use palisade_policy::cnp::ClusterNetworkPolicy;
use palisade_policy::conformance::model_cluster;
use palisade_policy::fqdn::{Learnt, MAX_NAME_RULES};
use palisade_policy::random::{EXTERNAL, cluster_with_names, learnt};
use palisade_policy::{
    Direction, Endpoint, Evaluator, Outcome, PodKey, RuleId, RuleRegistry, compile, describe,
    lookup, pod_endpoint,
};
use proptest::prelude::*;

fn cnp(yaml: &str) -> ClusterNetworkPolicy {
    serde_saphyr::from_str(yaml).expect("test YAML")
}

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

fn passes(isolated: bool, allow_rule: u32) -> bool {
    !decide(&Facts {
        spoofed: false,
        peer_is_host: false,
        ct: CtMatch::New,
        ct_current: false,
        isolated,
        allow_rule,
        untracked_fragment: false,
    })
    .is_drop()
}

proptest! {
    #![proptest_config(config())]

    /// For random clusters whose ClusterNetworkPolicies have `domainNames` peers (exact and
    /// wildcard, in every tier and action) and random learnt facts (pod, address, name), the
    /// datapath's answer (base lookup, else the first variant of the address's mask that
    /// allows: `EndpointNames::egress_lookup`, masks from `mask_for`) is the reference
    /// evaluator's, at every local endpoint, peer, protocol and port; and when only a name
    /// allows the flow, the rule named is the evaluator's.
    #[test]
    fn variants_decide_as_the_reference_evaluator_with_learnt_names(
        (c, facts) in cluster_with_names().prop_flat_map(|c| { let l = learnt(&c); (Just(c), l) }),
        local_mask in any::<u8>(),
    ) {
        let local: Vec<_> = c.pods.iter().enumerate()
            .filter(|(i, _)| local_mask & (1 << i) != 0)
            .map(|(_, p)| p.key())
            .collect();
        let mut reg = RuleRegistry::new();
        let compiled = compile(&c, &local, &mut reg);
        let ev = Evaluator::new(&c).with_learnt(facts.clone());
        let mut peers: Vec<Endpoint> = EXTERNAL.iter().map(|a| Endpoint::External(a.parse().expect("ext"))).collect();
        for p in &c.pods {
            for ip in &p.ips {
                peers.push(Endpoint::Pod { pod: p.key(), addr: *ip });
            }
        }
        for key in &local {
            let pod = c.pod(key).expect("local pod");
            let Some(ep) = compiled.endpoints.get(key) else { continue };
            let names = compiled.names.get(key);
            // More than MAX_NAME_RULES name rules: the rest fail closed (tested below).
            if names.is_some_and(|n| !n.overflow.is_empty()) {
                continue;
            }
            if let Some(n) = names {
                prop_assert_eq!(n.variants.len(), n.name_rules.len());
                for v in &n.variants {
                    prop_assert_eq!(v.egress_isolated, ep.egress_isolated);
                }
            }
            for peer in &peers {
                let addr = peer.addr();
                let mask = names.map_or(0, |n| {
                    facts.names(key, addr).iter().fold(0, |m, name| m | n.mask_for(name))
                });
                for proto in [6u8, 17, 132, 1] {
                    for port in [0u16, 53, 80, 81, 82, 443] {
                        let decision = ev.decide(pod, Direction::Egress, peer, proto, port);
                        let want = decision.verdict();
                        prop_assert_eq!(want.isolated, ep.egress_isolated);
                        let base = lookup(ep, DIR_EGRESS, addr, proto, port);
                        let rule = match names {
                            Some(n) => n.egress_lookup(ep, addr, proto, port, mask),
                            None => base,
                        }
                        .unwrap_or(0);
                        let got = passes(ep.egress_isolated, rule);
                        prop_assert_eq!(
                            got, want.passes(),
                            "{} egress to {} proto {} port {} mask {:#b}: rule {}, evaluator {:?}\n{}",
                            key, peer, proto, port, mask, rule, decision.outcome, describe(ep, &reg)
                        );
                        if ep.egress_isolated && !base.is_some_and(rule_allows) {
                            let refd = |id: &RuleId| reg.get(id).expect("compiled rules have references");
                            let named = match &decision.outcome {
                                Outcome::NotIsolated => 0,
                                Outcome::Accepted(id) => refd(id),
                                Outcome::Denied(id) => RULE_DENY | refd(id),
                                Outcome::NetworkPolicy(allowing) => {
                                    allowing.iter().filter_map(|id| reg.get(id)).min().unwrap_or(0)
                                }
                                Outcome::DefaultAllow => refd(&RuleId::default_allow(Direction::Egress)),
                            };
                            prop_assert_eq!(rule, named, "{} egress to {} proto {} port {}: attribution", key, peer, proto, port);
                        }
                    }
                }
            }
        }
    }
}

/// The API's own shape: the payment pods may reach `api.example.com` and `*.cdn.example.com`
/// and nothing else outside. An address is reached only once the pod learnt it for a matching
/// name, by the rule that names it; the same address learnt by another pod, or for another
/// name, stays denied.
#[test]
fn a_learnt_address_is_allowed_by_the_rule_naming_it_and_nothing_else() {
    let mut c = model_cluster();
    c.cluster_policies.push(cnp("
metadata: {name: payments}
spec:
  tier: Admin
  priority: 1
  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}
  egress:
  - name: api
    action: Accept
    to: [{domainNames: [api.example.com]}]
    protocols: [{tcp: {destinationPort: {number: 443}}}]
  - name: cdn
    action: Accept
    to: [{domainNames: ['*.cdn.example.com']}]
  - name: rest
    action: Deny
    to: [{networks: [0.0.0.0/0, '::/0']}]"));
    let (xa, xb) = (PodKey::new("x", "a"), PodKey::new("x", "b"));
    let mut reg = RuleRegistry::new();
    let compiled = compile(&c, &[xa.clone(), xb.clone()], &mut reg);
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    assert!(!compiled.names.contains_key(&xb), "x/b has no name rule");
    let names = &compiled.names[&xa];
    let ids: Vec<_> = names.name_rules.iter().map(|r| r.id.index).collect();
    assert_eq!(ids, [0, 1]);
    let patterns: Vec<_> = names
        .patterns
        .iter()
        .map(|(p, m)| (p.to_string(), *m))
        .collect();
    assert_eq!(
        patterns,
        [
            ("api.example.com".to_string(), 0b01),
            ("*.cdn.example.com".to_string(), 0b10)
        ]
    );
    assert_eq!(names.mask_for("API.Example.com."), 0b01);
    assert_eq!(names.mask_for("img.cdn.example.com"), 0b10);
    assert_eq!(names.mask_for("cdn.example.com"), 0);

    let ep = &compiled.endpoints[&xa];
    let stripe = "192.0.2.10".parse().expect("address");
    let cdn = "2001:db8::10".parse().expect("address");
    let refs = |i| {
        reg.get(&RuleId::cluster_network_policy(
            "payments",
            Direction::Egress,
            i,
        ))
        .expect("ref")
    };
    // Not learnt: the Deny rule.
    assert_eq!(
        names.egress_lookup(ep, stripe, 6, 443, 0),
        Some(RULE_DENY | refs(2))
    );
    // Learnt for api.example.com: 443/TCP only, by rule 0; other ports still denied.
    let api = names.mask_for("api.example.com");
    assert_eq!(names.egress_lookup(ep, stripe, 6, 443, api), Some(refs(0)));
    assert_eq!(
        names.egress_lookup(ep, stripe, 6, 80, api),
        Some(RULE_DENY | refs(2))
    );
    // Learnt for a CDN name: every port, by rule 1.
    let m = names.mask_for("v.cdn.example.com");
    assert_eq!(names.egress_lookup(ep, cdn, 17, 53, m), Some(refs(1)));

    // The reference evaluator agrees, and only for the pod that learnt the address.
    let mut l = Learnt::default();
    l.learn(xa.clone(), stripe, "api.example.com.");
    let ev = Evaluator::new(&c).with_learnt(l);
    let pod = |k: &PodKey| c.pod(k).expect("pod");
    let at = |k: &PodKey, port| {
        ev.decide(
            pod(k),
            Direction::Egress,
            &Endpoint::External(stripe),
            6,
            port,
        )
        .outcome
    };
    assert_eq!(
        at(&xa, 443),
        Outcome::Accepted(RuleId::cluster_network_policy(
            "payments",
            Direction::Egress,
            0
        ))
    );
    assert!(matches!(at(&xa, 80), Outcome::Denied(_)));
    // x/b is not selected by the policy and learnt nothing: not isolated, allowed.
    assert_eq!(at(&xb, 443), Outcome::NotIsolated);
    // Without learnt facts no name matches: the compiled base alone answers.
    let to_other = pod_endpoint(&c, &PodKey::new("y", "b"), false).expect("y/b");
    assert_eq!(
        lookup(ep, DIR_EGRESS, to_other.addr(), 6, 443),
        Some(RULE_DENY | refs(2))
    );
}

/// Threat model: a namespace owner (or a careless admin) piles up rules with `domainNames`
/// until a pod has more name rules than the datapath's 8-bit mask can hold. The rules beyond
/// the limit must fail closed for that pod (never matched by a learnt address, never by
/// some other rule's bit) and be reported by pod and by policy and rule.
#[test]
fn name_rules_beyond_the_limit_fail_closed_and_are_reported() {
    let mut c = model_cluster();
    let rules: Vec<String> = (0..=MAX_NAME_RULES)
        .map(|i| format!("  - {{action: Accept, to: [{{domainNames: [n{i}.example.com]}}]}}"))
        .collect();
    c.cluster_policies.push(cnp(&format!(
        "metadata: {{name: many}}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  egress:\n{}",
        rules.join("\n")
    )));
    // A Baseline name rule does not count while a NetworkPolicy isolates the pod's egress
    // (that tier is never reached), and is not a name rule then.
    c.cluster_policies.push(cnp("
metadata: {name: base}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{domainNames: [base.example.com]}]}"));
    let xa = PodKey::new("x", "a");
    let ya = PodKey::new("y", "a");
    let mut reg = RuleRegistry::new();
    let compiled = compile(&c, &[xa.clone(), ya.clone()], &mut reg);
    let names = &compiled.names[&xa];
    assert_eq!(names.name_rules.len(), MAX_NAME_RULES);
    assert_eq!(
        names.overflow,
        [
            RuleId::cluster_network_policy("many", Direction::Egress, MAX_NAME_RULES),
            RuleId::cluster_network_policy("base", Direction::Egress, 0)
        ]
    );
    let over: Vec<_> = compiled
        .problems
        .iter()
        .filter(|p| p.message.contains("more than 8"))
        .collect();
    assert_eq!(over.len(), 2, "{:?}", compiled.problems);
    assert_eq!(over[0].object, "ClusterNetworkPolicy many");
    assert_eq!(over[0].field, "spec.egress[8]");
    assert!(
        over[0].message.contains("pod x/a") && over[0].message.contains("fails closed"),
        "{over:?}"
    );
    // The overflowing names teach nothing: no bit, no pattern.
    assert_eq!(names.mask_for("n8.example.com"), 0);
    assert!(
        names
            .patterns
            .iter()
            .all(|(p, _)| p.to_string() != "n8.example.com")
    );
    // y/a has only the Baseline rule.
    assert_eq!(compiled.names[&ya].name_rules.len(), 1);

    // With a NetworkPolicy isolating x/a's egress, the Baseline rule is no name rule.
    c.policies.push(
        serde_saphyr::from_str(
            "metadata: {name: iso, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}",
        )
        .expect("policy"),
    );
    let compiled = compile(&c, std::slice::from_ref(&xa), &mut reg);
    assert_eq!(
        compiled.names[&xa].overflow,
        [RuleId::cluster_network_policy(
            "many",
            Direction::Egress,
            MAX_NAME_RULES
        )]
    );
}
