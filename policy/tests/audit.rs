//! Audit mode: a NetworkPolicy annotated `policy.palisade.io/audit: "true"` decides nothing;
//! the compiled form carries what it allows under `DIR_AUDIT`, and the datapath's
//! `decide::audit` over those lookups agrees with the reference evaluator's `audit`.

use palisade_common::verdict::Reason;
use palisade_common::{DIR_AUDIT, DIR_INGRESS};
use palisade_policy::conformance::model_cluster;
use palisade_policy::{
    Cluster, Direction, Evaluator, PodKey, RuleRegistry, compile, lookup, pod_endpoint, prepare,
    validate,
};

fn with_policies(yaml: &[&str]) -> Cluster {
    let mut c = model_cluster();
    for y in yaml {
        c.policies
            .push(serde_saphyr::from_str(y).expect("test YAML"));
    }
    c
}

const AUDITED_DENY: &str = "
metadata: {namespace: x, name: deny-all, annotations: {policy.palisade.io/audit: 'true'}}
spec: {podSelector: {}, policyTypes: [Ingress]}";
const AUDITED_ALLOW_B: &str = "
metadata: {namespace: x, name: allow-b, annotations: {policy.palisade.io/audit: 'true'}}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]";
const ENFORCED_DENY: &str = "
metadata: {namespace: x, name: enforced-deny, annotations: {policy.palisade.io/audit: 'false'}}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}";

/// For every source pod, at x/a ingress on TCP 80 and 81: the compiled lookups under
/// `DIR_AUDIT`, joined by `decide::audit` as the datapath joins them, equal the evaluator's
/// audit verdict; and the enforced answer ignores the audited policies.
fn check(cluster: &Cluster) {
    let a = PodKey::new("x", "a");
    let mut reg = RuleRegistry::new();
    let compiled = compile(cluster, std::slice::from_ref(&a), &mut reg);
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let ep = &compiled.endpoints[&a];
    let ev = Evaluator::new(cluster);
    let pod_a = cluster.pod(&a).unwrap();
    let dst = pod_endpoint(cluster, &a, false).unwrap();
    for p in &cluster.pods {
        let src = pod_endpoint(cluster, &p.key(), false).unwrap();
        for port in [80u16, 81] {
            let enforced = ev.check(pod_a, Direction::Ingress, &src, 6, port);
            assert_eq!(enforced.isolated, ep.ingress_isolated);
            let rule = lookup(ep, DIR_INGRESS, src.addr(), 6, port);
            assert_eq!(
                rule.is_some(),
                enforced.allowed_by_rule,
                "{} port {port}",
                p.key()
            );
            let audit_rule = lookup(ep, DIR_INGRESS | DIR_AUDIT, src.addr(), 6, port);
            let f = palisade_common::decide::Facts {
                spoofed: false,
                peer_is_host: false,
                ct: palisade_common::decide::CtMatch::New,
                ct_current: false,
                isolated: ep.ingress_isolated,
                allow_rule: rule.unwrap_or(0),
                untracked_fragment: false,
            };
            let datapath = palisade_common::decide::audit(
                &f,
                ep.audit_ingress_isolated,
                audit_rule.unwrap_or(0),
            );
            assert_eq!(
                datapath,
                ev.audit(pod_a, Direction::Ingress, &src, 6, port),
                "{} -> x/a port {port}",
                p.key()
            );
            // Enforcement is the enforced policies' alone.
            assert_eq!(
                ev.allows(&src, &dst, 6, port),
                enforced.passes(),
                "{} -> x/a port {port}",
                p.key()
            );
        }
    }
}

#[test]
fn an_audited_default_deny_isolates_nothing_and_reports_every_new_flow() {
    let c = with_policies(&[AUDITED_DENY]);
    check(&c);
    let a = PodKey::new("x", "a");
    let compiled = compile(&c, std::slice::from_ref(&a), &mut RuleRegistry::new());
    let ep = &compiled.endpoints[&a];
    assert!(!ep.ingress_isolated && ep.audit_ingress_isolated);
    let ev = Evaluator::new(&c);
    let src = pod_endpoint(&c, &PodKey::new("y", "b"), false).unwrap();
    assert_eq!(
        ev.audit(c.pod(&a).unwrap(), Direction::Ingress, &src, 6, 80)
            .map(|v| v.reason),
        Some(Reason::DEFAULT_DENY)
    );
}

#[test]
fn audited_rules_allow_only_what_they_name() {
    check(&with_policies(&[AUDITED_DENY, AUDITED_ALLOW_B]));
    check(&with_policies(&[AUDITED_ALLOW_B]));
}

#[test]
fn an_enforced_drop_is_a_drop_not_an_audit() {
    let c = with_policies(&[ENFORCED_DENY, AUDITED_ALLOW_B]);
    check(&c);
    let ev = Evaluator::new(&c);
    let a = PodKey::new("x", "a");
    let src = pod_endpoint(&c, &PodKey::new("x", "c"), false).unwrap();
    assert_eq!(
        ev.audit(c.pod(&a).unwrap(), Direction::Ingress, &src, 6, 80),
        None
    );
}

#[test]
fn a_node_in_audit_mode_audits_every_policy() {
    let np = serde_saphyr::from_str(ENFORCED_DENY).unwrap();
    let p = prepare(&np).unwrap();
    assert!(!p.audited());
    assert!(p.with_audit(true).audited());
    let np = serde_saphyr::from_str(AUDITED_DENY).unwrap();
    assert!(prepare(&np).unwrap().with_audit(false).audited());
}

#[test]
fn a_bad_audit_annotation_is_reported_naming_it_and_its_value() {
    let np = serde_saphyr::from_str(
        "
metadata: {namespace: x, name: p, annotations: {policy.palisade.io/audit: 'yes'}}
spec: {podSelector: {}}",
    )
    .unwrap();
    let problems = validate(&np);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].field,
        "metadata.annotations[policy.palisade.io/audit]"
    );
    assert!(problems[0].message.contains("\"yes\""), "{}", problems[0]);
}
