//! ClusterNetworkPolicy: validation (as the upstream CRD does it), the peers that fail
//! closed, and the worked example of docs/policy.md (its verdicts and compiled entries).

use palisade_common::DIR_INGRESS;
use palisade_common::policy::RULE_DENY;
use palisade_policy::cnp::{ClusterNetworkPolicy, prepare_cluster_policy};
use palisade_policy::conformance::model_cluster;
use palisade_policy::{
    Endpoint, Evaluator, Outcome, PodKey, RuleId, RuleRegistry, compile, compiled_allows, describe,
    lookup, pod_endpoint, validate_cluster_policy,
};

fn cnp(yaml: &str) -> ClusterNetworkPolicy {
    serde_saphyr::from_str(yaml).expect("test YAML")
}

fn problems(yaml: &str) -> Vec<(String, String)> {
    validate_cluster_policy(&cnp(yaml))
        .into_iter()
        .map(|p| (p.field, p.message))
        .collect()
}

#[test]
fn what_the_crd_rejects_is_reported_with_field_and_value() {
    let got = problems(
        "
metadata: {name: bad}
spec:
  tier: Middle
  priority: 1001
  subject: {namespaces: {}, pods: {podSelector: {}}}
  ingress:
  - action: Allow
    from: []
  - action: Deny
    from: [{namespaces: {}, pods: {podSelector: {}}}]
    protocols: [{tcp: {}}, {udp: {destinationPort: {number: 0}}}, {sctp: {destinationPort: {range: {start: 90, end: 80}}}}, {}]
  egress:
  - action: Accept
    to: [{networks: [10.0.0.0/33]}]
    protocols: [{destinationNamedPort: web}]
  - action: Pass
    to: [{pods: {namespaceSelector: {}}}]",
    );
    let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.tier",
            "spec.priority",
            "spec.subject",
            "spec.ingress[0].action",
            "spec.ingress[0].from",
            "spec.ingress[1].from[0]",
            "spec.ingress[1].protocols[0].tcp.destinationPort",
            "spec.ingress[1].protocols[1].udp.destinationPort.number",
            "spec.ingress[1].protocols[2].sctp.destinationPort.range",
            "spec.ingress[1].protocols[3]",
            "spec.egress[0].to[0].networks[0]",
            "spec.egress[0].protocols[0].destinationNamedPort",
            "spec.egress[1].to[0].pods.podSelector",
        ],
        "{got:#?}"
    );
    // Values are named.
    assert!(got[0].1.contains("\"Middle\""), "{}", got[0].1);
    assert!(got[1].1.contains("1001"), "{}", got[1].1);
    assert!(got[3].1.contains("\"Allow\""), "{}", got[3].1);
    assert!(
        got[8].1.contains("90") && got[8].1.contains("80"),
        "{}",
        got[8].1
    );
}

#[test]
fn too_many_rules_and_a_missing_spec_are_invalid() {
    let rule = "{action: Deny, from: [{namespaces: {}}]}";
    let rules = vec![rule; 26].join(", ");
    let got = problems(&format!(
        "metadata: {{name: big}}\nspec: {{tier: Admin, priority: 0, subject: {{namespaces: {{}}}}, ingress: [{rules}]}}"
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "spec.ingress");
    assert!(got[0].1.contains("26 rules"), "{}", got[0].1);
    assert_eq!(problems("metadata: {name: empty}")[0].0, "spec");
}

/// A `domainNames` peer of an Accept rule matches no address in the compiled policy (only
/// addresses a pod learnt for its names: tests/fqdn.rs) and is no problem; in a Pass (or
/// Deny) rule, which the API does not allow, it fails closed: upstream makes such a rule a
/// Deny of all traffic. The policy is enforced; that peer is a notice.
#[test]
fn unsupported_peers_fail_closed_and_are_reported() {
    let p = cnp("
metadata: {name: dns}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - action: Accept
    to: [{domainNames: ['*.example.com']}, {namespaces: {matchLabels: {ns: y}}}]
  - action: Pass
    to: [{domainNames: [example.org]}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]");
    let notices = validate_cluster_policy(&p);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].field, "spec.egress[1].to[0].domainNames");
    assert!(
        notices[0].message.contains("denies all traffic"),
        "{notices:?}"
    );
    let mut c = model_cluster();
    c.cluster_policies.push(p);
    let ev = Evaluator::new(&c);
    let ep =
        |ns: &str, pod: &str| pod_endpoint(&c, &PodKey::new(ns, pod), false).expect("model pod");
    let xa = c.pod(&PodKey::new("x", "a")).expect("x/a");
    // Rule 0 still accepts y; rule 1 (Pass with a domainNames peer) denies everything else,
    // every port.
    let to_y = ev.decide(xa, palisade_policy::Direction::Egress, &ep("y", "b"), 6, 81);
    assert_eq!(
        to_y.outcome,
        Outcome::Accepted(RuleId::cluster_network_policy(
            "dns",
            palisade_policy::Direction::Egress,
            0
        ))
    );
    let to_z = ev.decide(
        xa,
        palisade_policy::Direction::Egress,
        &ep("z", "b"),
        17,
        53,
    );
    assert!(matches!(to_z.outcome, Outcome::Denied(_)), "{to_z:?}");
}

/// docs/policy.md, worked example.
const ADMIN_DENY: &str = "
metadata: {name: no-z-to-x}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - name: nothing-from-z
    action: Deny
    from: [{namespaces: {matchLabels: {ns: z}}}]";
const NAMESPACE_ALLOW: &str = "
metadata: {namespace: x, name: allow-all-in}
spec:
  podSelector: {}
  ingress: [{}]";
const BASELINE_DENY: &str = "
metadata: {name: default-deny}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {}}
  ingress:
  - name: deny-from-everywhere
    action: Deny
    from: [{namespaces: {}}]";

#[test]
fn worked_example_admin_deny_beats_a_namespace_allow_and_a_namespace_allow_beats_baseline() {
    let mut c = model_cluster();
    c.cluster_policies = vec![cnp(ADMIN_DENY), cnp(BASELINE_DENY)];
    c.policies = vec![serde_saphyr::from_str(NAMESPACE_ALLOW).expect("policy")];
    let ev = Evaluator::new(&c);
    let locals: Vec<PodKey> = c.pods.iter().map(|p| p.key()).collect();
    let mut reg = RuleRegistry::new();
    let compiled = compile(&c, &locals, &mut reg);
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let ep = |id: &str| -> Endpoint {
        let (ns, pod) = id.split_once('/').expect("ns/pod");
        pod_endpoint(&c, &PodKey::new(ns, pod), false).expect("model pod")
    };
    for (src, dst, allowed) in [
        // x's NetworkPolicy allows everything, but the Admin Deny comes first.
        ("z/a", "x/a", false),
        // Everything else into x: the NetworkPolicy decides (the Baseline tier is never
        // reached for a pod a NetworkPolicy isolates).
        ("y/a", "x/a", true),
        ("x/b", "x/a", true),
        // y has no NetworkPolicy: the Baseline default deny decides.
        ("x/a", "y/b", false),
        ("z/c", "y/b", false),
    ] {
        let (s, d) = (ep(src), ep(dst));
        assert_eq!(ev.allows(&s, &d, 6, 80), allowed, "{src} -> {dst}");
        assert_eq!(
            compiled_allows(&compiled, &s, &d, 6, 80),
            allowed,
            "{src} -> {dst}"
        );
    }
    // The compiled form of x/a's ingress: z's pods denied by the Admin rule (and named), the
    // rest allowed by the NetworkPolicy rule.
    let xa = &compiled.endpoints[&PodKey::new("x", "a")];
    let deny = reg
        .get(&RuleId::cluster_network_policy(
            "no-z-to-x",
            palisade_policy::Direction::Ingress,
            0,
        ))
        .expect("rule reference");
    assert_eq!(
        lookup(xa, DIR_INGRESS, ep("z/a").addr(), 6, 80),
        Some(RULE_DENY | deny)
    );
    let text = describe(xa, &reg);
    println!("x/a:\n{text}");
    assert!(
        text.contains("denied by ClusterNetworkPolicy no-z-to-x ingress[0]"),
        "{text}"
    );
    assert!(text.contains("x/allow-all-in ingress[0]"), "{text}");
    let yb = describe(&compiled.endpoints[&PodKey::new("y", "b")], &reg);
    println!("y/b:\n{yb}");
    assert!(
        yb.contains("denied by ClusterNetworkPolicy default-deny ingress[0]"),
        "{yb}"
    );
}

/// `explain` knows the tiers: on the worked example it names the Admin Deny that overrides the
/// namespace's allow (and says the allow was overridden), the NetworkPolicy that decides
/// before the Baseline tier, and the Baseline Deny where no NetworkPolicy isolates; with an
/// Admin Accept on one port, the other ports are allowed by the default allow and it says so.
#[test]
fn explain_names_the_tier_rule_that_decides_and_what_it_overrides() {
    use palisade_policy::explain::{Explainer, PolicyKind, PolicySet, RuleAction, render};
    let mut c = model_cluster();
    c.cluster_policies = vec![
        cnp(ADMIN_DENY),
        cnp(BASELINE_DENY),
        cnp("
metadata: {name: web-from-x}
spec:
  tier: Admin
  priority: 20
  subject: {pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}}
  ingress:
  - action: Accept
    from: [{namespaces: {matchLabels: {ns: x}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]"),
    ];
    c.policies = vec![serde_saphyr::from_str(NAMESPACE_ALLOW).expect("policy")];
    let set = PolicySet::from_cluster(&c);
    let ex = Explainer::new(&c, &set, &[]);
    let ask = |from: &str, to: &str, port: Option<&str>| {
        let e = ex.explain(from, to, port).expect("an answer");
        let text = render(&e);
        println!("{text}");
        (e, text)
    };

    let (e, text) = ask("z/a", "x/a", Some("80"));
    assert!(
        text.contains(
            "ingress at x/a: DENIED by ClusterNetworkPolicy no-z-to-x (Admin tier, priority 10) spec.ingress[0] (Deny)"
        ),
        "{text}"
    );
    assert!(
        text.contains("spec.ingress[0] DENIES: from[0] (every pod in namespaces ns=z) includes z/a; port: every port (no ports listed)"),
        "{text}"
    );
    assert!(
        text.contains("but an Admin-tier rule decided first"),
        "the overridden namespace allow is named: {text}"
    );
    let ing = e.connections[0].ingress.as_ref().expect("ingress");
    assert_eq!(ing.policies[0].kind, PolicyKind::ClusterNetworkPolicy);
    assert_eq!(ing.policies[0].tier.as_deref(), Some("Admin"));
    assert_eq!(ing.policies[0].rules[0].action, RuleAction::Deny);
    assert!(ing.policies[0].decides && ing.policies[0].rules[0].decides);
    assert_eq!(ing.policies[1].kind, PolicyKind::NetworkPolicy);
    assert!(ing.policies[1].rules[0].matches && !ing.policies[1].rules[0].decides);

    let (_, text) = ask("y/a", "x/a", Some("80"));
    assert!(
        text.contains("ingress at x/a: allowed by NetworkPolicy x/allow-all-in spec.ingress[0]"),
        "{text}"
    );
    assert!(
        text.contains("spec.ingress[0] (Deny) does not match: no peer includes y/a"),
        "{text}"
    );

    let (_, text) = ask("x/a", "y/b", Some("80"));
    assert!(
        text.contains(
            "ingress at y/b: DENIED by ClusterNetworkPolicy default-deny (Baseline tier, priority 100) spec.ingress[0] (Deny)"
        ),
        "{text}"
    );

    // z/c: the Admin Accept decides TCP 80 from x; every other port falls through to the
    // Baseline Deny (no NetworkPolicy in z).
    let (e, text) = ask("x/a", "z/c", None);
    let ing = e.connections[0].ingress.as_ref().expect("ingress");
    let allowed = ing.allowed_ports.as_ref().expect("every port asked");
    assert!(allowed.contains(6, 80) && !allowed.contains(6, 81) && !allowed.contains(17, 80));
    assert!(
        text.contains("by ClusterNetworkPolicy web-from-x (Admin tier, priority 20) spec.ingress[0] (Accept); the rest denied by ClusterNetworkPolicy default-deny"),
        "{text}"
    );
    // Without the Baseline Deny, the rest is the default allow, said as such.
    let mut c2 = c.clone();
    c2.cluster_policies.remove(1);
    let set = PolicySet::from_cluster(&c2);
    let ex2 = Explainer::new(&c2, &set, &[]);
    let e = ex2.explain("x/a", "z/c", Some("81")).expect("an answer");
    let text = render(&e);
    println!("{text}");
    assert!(
        text.contains("ingress at z/c: allowed by the default allow (ClusterNetworkPolicies select the pod, none decides, no NetworkPolicy isolates it)"),
        "{text}"
    );
    assert!(
        e.connections[0]
            .ingress
            .as_ref()
            .expect("ingress")
            .default_allow
    );
}

/// A `domainNames` entry the CRD's pattern rejects makes the policy invalid, named by field
/// and value; a valid one in a Deny or Pass rule is reported as supported only in Accept rules.
#[test]
fn domain_names_are_validated_as_the_crd_does_and_named_in_problems() {
    let p = cnp("
metadata: {name: names}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Accept
    to: [{domainNames: ['api.example.com', 'a.*.example.com', 'com']}]");
    let problems = prepare_cluster_policy(&p).expect_err("invalid names");
    let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.egress[0].to[0].domainNames[1]",
            "spec.egress[0].to[0].domainNames[2]"
        ],
        "{problems:?}"
    );
    assert!(
        problems[0].message.contains("\"a.*.example.com\""),
        "{problems:?}"
    );
    assert!(
        problems[1].message.contains("at least two labels"),
        "{problems:?}"
    );

    let p = cnp("
metadata: {name: names}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{domainNames: ['*.Example.com.']}]");
    let notices = validate_cluster_policy(&p);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0]
            .message
            .contains("only supported in Accept rules")
            && notices[0].message.contains("denies all traffic"),
        "{notices:?}"
    );
}
