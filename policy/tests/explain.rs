//! `explain` on the upstream model cluster (namespaces x, y, z; pods a, b, c): the answer
//! names the deciding policy, rule, peer and port, in words and JSON; every-port questions
//! answer the allowed ports; Services are explained per backend and target port;
//! `--what-if` replaces and adds; bad questions get errors naming what was given.
//! (That the allowed/denied answer equals the reference evaluator's is `prop.rs`.)

use palisade_policy::conformance::{Case, case_cluster};
use palisade_policy::explain::{ExplainError, Explainer, Explanation, PolicySet, Verdict, render};
use palisade_policy::{Cluster, ServiceInfo, service_info};

/// The model cluster; every pod of x also has `app=web`.
fn cluster(policies: &'static str) -> Cluster {
    let mut c = case_cluster(&Case {
        name: "explain",
        policies,
        expect: |_| true,
    });
    for p in c.pods.iter_mut().filter(|p| p.namespace == "x") {
        p.labels.insert("app".into(), "web".into());
    }
    c
}

fn services() -> Vec<ServiceInfo> {
    // Backend x/a; `web` is 80/TCP on a, 81/TCP on b, 80/UDP on c (the model's named port).
    [
        "
metadata: {namespace: x, name: web}
spec:
  clusterIP: 10.96.0.5
  selector: {pod: a}
  ports: [{name: http, port: 8080, targetPort: 80}, {name: alt, port: 81, targetPort: web}]",
        "
metadata: {namespace: x, name: all}
spec: {clusterIP: 10.96.0.6, selector: {app: web}, ports: [{port: 80}]}",
        "
metadata: {namespace: y, name: udp-web}
spec: {selector: {pod: a}, ports: [{name: w, port: 80, protocol: UDP, targetPort: web}]}",
    ]
    .iter()
    .map(|y| service_info(&serde_saphyr::from_str(y).expect("Service YAML")).0)
    .collect()
}

const DENY_AND_FROM_B: &str = "
metadata: {namespace: x, name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
metadata: {namespace: x, name: from-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 192.168.0.0/16}}]
    ports: [{protocol: UDP}]";

fn explain(policies: &'static str, from: &str, to: &str, port: Option<&str>) -> Explanation {
    try_explain(policies, from, to, port)
        .unwrap_or_else(|e| panic!("explain {from} {to} {port:?}: {e}"))
}

fn try_explain(
    policies: &'static str,
    from: &str,
    to: &str,
    port: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let c = cluster(policies);
    let set = PolicySet::from_cluster(&c);
    let svcs = services();
    Explainer::new(&c, &set, &svcs).explain(from, to, port)
}

#[test]
fn allowed_connection_names_the_allowing_policy_rule_peer_and_port() {
    let e = explain(DENY_AND_FROM_B, "x/b", "x/a", Some("80"));
    assert_eq!(e.verdict, Verdict::Allowed);
    assert_eq!(e.connections.len(), 2, "IPv4 and IPv6");
    let ing = e.connections[0].ingress.as_ref().expect("x/a is a pod");
    assert!(ing.isolated && ing.allowed);
    let from_b = &ing.policies[1];
    assert_eq!(from_b.title(), "NetworkPolicy x/from-b");
    assert!(from_b.decides);
    let r = &from_b.rules[0];
    assert_eq!(r.path, "spec.ingress[0]");
    assert_eq!(
        r.peer_match.as_deref(),
        Some("from[0] (pods pod=b in namespace x) names x/b as a pod")
    );
    assert_eq!(r.port_match.as_deref(), Some("ports[0] (TCP 80)"));
    let text = render(&e);
    assert!(text.starts_with("x/b -> x/a TCP 80: ALLOWED\n"), "{text}");
    assert!(
        text.contains("ingress at x/a: allowed by NetworkPolicy x/from-b spec.ingress[0]; isolated by NetworkPolicy x/deny, NetworkPolicy x/from-b"),
        "{text}"
    );
    assert!(
        text.contains("x/b (10.0.0.11, fd00::11) -> x/a (10.0.0.10, fd00::10): TCP 80 allowed"),
        "both families on one line when they agree:\n{text}"
    );
    assert!(
        text.contains("egress at x/b: allowed, not isolated"),
        "{text}"
    );
}

#[test]
fn denied_connection_names_every_isolating_policy_and_why_each_rule_misses() {
    let e = explain(DENY_AND_FROM_B, "x/b", "x/a", Some("81"));
    assert_eq!(e.verdict, Verdict::Denied);
    let text = render(&e);
    for want in [
        "x/b -> x/a TCP 81: DENIED",
        "ingress at x/a: DENIED: no rule allows x/b; isolated by NetworkPolicy x/deny, NetworkPolicy x/from-b",
        "NetworkPolicy x/deny: no ingress rules (isolates, allows nothing)",
        "spec.ingress[0] does not match: from[0] (pods pod=b in namespace x) names x/b as a pod, but its ports (TCP 80) do not include this one",
        "spec.ingress[1] does not match: no peer names x/b (peers: addresses in 192.168.0.0/16)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // An address outside the cluster meets only the destination's ingress.
    let e = explain(DENY_AND_FROM_B, "192.168.1.1", "x/a", Some("53/udp"));
    assert_eq!(e.verdict, Verdict::Allowed);
    let text = render(&e);
    assert!(
        text.contains("192.168.1.1 is not a pod; no policy judges its egress"),
        "{text}"
    );
    assert!(
        text.contains("spec.ingress[1] ALLOWS: from[0] (addresses in 192.168.0.0/16) contains 192.168.1.1; port: ports[0] (every UDP port)"),
        "{text}"
    );
}

#[test]
fn every_port_question_answers_the_allowed_ports() {
    let e = explain(DENY_AND_FROM_B, "x/b", "x/a", None);
    assert_eq!(e.verdict, Verdict::Partly);
    let c = &e.connections[0];
    let ports = c.allowed_ports.as_ref().expect("every-port answer");
    assert_eq!(ports.to_string(), "TCP 80");
    assert!(ports.contains(6, 80) && !ports.contains(6, 81) && !ports.contains(1, 0));
    let text = render(&e);
    assert!(text.contains("allowed on TCP 80"), "{text}");
    assert!(
        text.contains(
            "spec.ingress[0] allows TCP 80: from[0] (pods pod=b in namespace x) names x/b as a pod"
        ),
        "{text}"
    );
    let e = explain(DENY_AND_FROM_B, "x/a", "x/b", None);
    assert_eq!(e.verdict, Verdict::Denied);
    assert!(render(&e).contains("denied on every port"));
    let e = explain("", "x/a", "x/b", None);
    assert_eq!(e.verdict, Verdict::Allowed);
    assert!(render(&e).contains("allowed on every protocol and port"));
}

#[test]
fn service_is_explained_per_backend_and_target_port() {
    let e = explain(DENY_AND_FROM_B, "x/b", "svc:x/web", None);
    // http 8080 -> 80 (allowed from x/b), alt 81 -> web = 80/TCP on x/a (allowed too).
    assert_eq!(e.verdict, Verdict::Allowed, "{}", render(&e));
    let text = render(&e);
    assert!(
        text.contains("via x/web 8080/TCP -> 80: TCP 80 allowed"),
        "{text}"
    );
    assert!(
        text.contains("via x/web 81/TCP -> 80: TCP 80 allowed"),
        "{text}"
    );
    let e = explain(DENY_AND_FROM_B, "y/a", "svc:x/web:http", None);
    assert_eq!(e.verdict, Verdict::Denied);
    assert_eq!(e.connections.len(), 2);
    // Every pod of x is a backend of x/all: a (isolated, not from y), b and c (isolated by
    // the deny): denied; from x/b, only x/a on 80 is allowed.
    let e = explain(DENY_AND_FROM_B, "x/b", "svc:x/all", None);
    assert_eq!(e.verdict, Verdict::Partly, "{}", render(&e));
    // A named target port the backend lacks (`web` is TCP on y/a, the Service port is UDP):
    // kube-proxy sends it nothing, so there is no connection to explain.
    let e = try_explain("", "x/a", "svc:y/udp-web", None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Service y/udp-web has no backend with a container port for its ports in question"
    );
}

#[test]
fn service_address_is_explained_as_the_service_and_pod_address_as_the_pod() {
    let e = explain(DENY_AND_FROM_B, "x/b", "10.96.0.5", Some("8080"));
    assert_eq!(e.verdict, Verdict::Allowed, "{}", render(&e));
    assert_eq!(
        e.connections.len(),
        1,
        "IPv4 only: the address asked is IPv4"
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("address of Service x/web"))
    );
    let e = explain(DENY_AND_FROM_B, "10.0.0.11", "x/a", Some("80"));
    assert_eq!(e.connections.len(), 1);
    assert_eq!(e.connections[0].src.pod.as_deref(), Some("x/b"));
    assert!(
        e.notes
            .iter()
            .any(|n| n == "10.0.0.11 is the address of pod x/b")
    );
}

#[test]
fn what_if_replaces_and_adds_policies() {
    let c = cluster(DENY_AND_FROM_B);
    let svcs = services();
    let mut set = PolicySet::from_cluster(&c);
    let extra: Vec<k8s_openapi::api::networking::v1::NetworkPolicy> = [
        "metadata: {namespace: x, name: from-b}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}",
        "metadata: {namespace: y, name: deny-egress}\nspec: {podSelector: {}, policyTypes: [Egress]}",
    ]
    .iter()
    .map(|y| serde_saphyr::from_str(y).expect("policy YAML"))
    .collect();
    set.what_if(&extra).expect("valid what-if");
    let ex = Explainer::new(&c, &set, &svcs);
    assert_eq!(
        ex.explain("x/b", "x/a", Some("80")).unwrap().verdict,
        Verdict::Denied
    );
    let e = ex.explain("x/c", "x/a", Some("80")).unwrap();
    assert_eq!(e.verdict, Verdict::Allowed);
    assert!(
        e.notes
            .contains(&"what-if: NetworkPolicy x/from-b replaced".to_string())
    );
    assert!(
        e.notes
            .contains(&"what-if: NetworkPolicy y/deny-egress added".to_string())
    );
    let e = ex.explain("y/a", "z/a", Some("80")).unwrap();
    assert_eq!(e.verdict, Verdict::Denied);
    assert!(render(&e).contains(
        "egress at y/a: DENIED: no rule allows z/a; isolated by NetworkPolicy y/deny-egress"
    ));
    let bad: k8s_openapi::api::networking::v1::NetworkPolicy = serde_saphyr::from_str(
        "metadata: {namespace: x, name: bad}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
    )
    .unwrap();
    let err = set.what_if(&[bad]).unwrap_err().to_string();
    assert!(
        err.contains(
            "NetworkPolicy x/bad: spec.ingress[0].ports[0].port: port 70000 is not in 1..=65535"
        ),
        "{err}"
    );
}

#[test]
fn invalid_policies_are_left_out_and_said_so() {
    let e = explain(
        "
metadata: {namespace: x, name: broken}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
        "x/b",
        "x/a",
        Some("80"),
    );
    assert_eq!(e.verdict, Verdict::Allowed);
    assert!(
        e.notes.iter().any(|n| n.starts_with("NetworkPolicy x/broken is invalid and not enforced (spec.ingress[0].from[0].ipBlock.cidr:")),
        "{:?}",
        e.notes
    );
}

#[test]
fn bad_questions_get_errors_naming_what_was_given() {
    let err = |from: &str, to: &str, port: Option<&str>| {
        try_explain(DENY_AND_FROM_B, from, to, port)
            .expect_err("a bad question")
            .to_string()
    };
    assert_eq!(
        err("x/nope", "x/a", None),
        "pod x/nope is not in the cluster state"
    );
    assert_eq!(
        err("x/a", "svc:x/none", None),
        "Service x/none is not in the cluster state"
    );
    assert_eq!(
        err("svc:x/web", "x/a", None),
        "a Service cannot be the source of a connection (svc:x/web); name a pod or an address"
    );
    assert_eq!(
        err("x/a", "svc:x/web:9999", None),
        "Service x/web has no port \"9999\" (its ports: http 8080/TCP, alt 81/TCP)"
    );
    assert_eq!(
        err("192.168.1.1", "2001:db8::1", None),
        "both 192.168.1.1 and 2001:db8::1 are outside the cluster: no policy judges that connection"
    );
    assert_eq!(
        err("x/a", "x/b", Some("http")),
        "port \"http\": expected PORT[/PROTOCOL] (e.g. 80, 53/UDP) or ICMP"
    );
    assert!(err("x", "x/b", None).starts_with("\"x\": expected NAMESPACE/POD"));
}

#[test]
fn explanations_round_trip_through_json() {
    let e = explain(DENY_AND_FROM_B, "x/b", "svc:x/web", None);
    let json = serde_json::to_string(&e).unwrap();
    let back: Explanation = serde_json::from_str(&json).unwrap();
    assert_eq!(back, e);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(v["connections"][0]["ingress"]["direction"], "ingress");
    assert_eq!(
        v["connections"][0]["ingress"]["policies"][1]["rules"][0]["action"],
        "allow"
    );
}
