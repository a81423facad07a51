//! Flows, metrics and audit mode end to end: the lab (pods in network namespaces, the real
//! plugin, agent and programs), real connections, and what an operator sees:
//! `palisadectl flows -o json` (Hubble's field names), `/metrics` parsed with a Prometheus
//! text-format parser, and `palisadectl status`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[path = "common/metrics.rs"]
mod metrics;

use metrics::{scrape, value};
use palisade_tests::lab::kubeproxy::per_pod_services_yaml;
use palisade_tests::lab::{AgentMode, Family, Lab, LabConfig, Protocol};
use palisade_tests::require_privileges;
use serde_json::Value;

/// x/a: isolated for ingress by two policies; one rule lets y/b in on TCP 80.
const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80, protocol: TCP}]
";

fn lab(test: &str, agent_args: &[&str]) -> Option<Lab> {
    if !require_privileges(test) {
        return None;
    }
    let lab = Lab::start(LabConfig {
        agent: AgentMode::Required,
        verbose: true,
        agent_args: agent_args.iter().map(|s| s.to_string()).collect(),
        ..LabConfig::default()
    })
    .expect("lab starts");
    Some(lab)
}

fn addr(lab: &Lab, pod: &str, family: Family) -> IpAddr {
    *lab.pod_ips(pod)
        .expect("pod")
        .iter()
        .find(|a| a.is_ipv4() == (family == Family::V4))
        .expect("address of the family")
}

/// One new connection (TCP) or request/answer (UDP) from `from` to `to`: answered or not.
fn connect(lab: &Lab, from: &str, to: &str, port: u16, proto: Protocol, family: Family) -> bool {
    let dest = SocketAddr::new(addr(lab, to, family), port);
    let got = lab
        .who_answers(from, dest, proto, 1, Duration::from_millis(700))
        .expect("probe runs");
    got[0].is_some()
}

/// [`Lab::wait_flow`]; these tests panic rather than return errors.
fn wait_flow(lab: &Lab, args: &[&str], what: &str, want: impl Fn(&Value) -> bool) -> Value {
    lab.wait_flow(args, what, want)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    v.sort();
    v
}

fn port_of(f: &Value, proto: &str) -> u64 {
    f["l4"][proto]["destination_port"].as_u64().unwrap_or(0)
}

/// A denied TCP connection and a denied UDP datagram appear as DROPPED with the right pods,
/// port, reason and the policies isolating the pod; an allowed connection names the policy,
/// rule, peer and port that allowed it; IPv4 and IPv6. The JSON follows Hubble's fields.
#[test]
fn privileged_flows_name_pods_policies_rules_and_reasons() {
    let Some(mut lab) = lab("privileged_flows_name_pods_policies_rules_and_reasons", &[]) else {
        return;
    };
    lab.apply_yaml("policies", POLICIES).expect("policies");
    lab.wait_synced().expect("synced");
    for family in [Family::V4, Family::V6] {
        let version = if family == Family::V4 { "IPv4" } else { "IPv6" };
        let (a, b, c) = (
            addr(&lab, "x/a", family).to_string(),
            addr(&lab, "y/b", family).to_string(),
            addr(&lab, "y/c", family).to_string(),
        );
        assert!(
            connect(&lab, "y/b", "x/a", 80, Protocol::Tcp, family),
            "y/b -> x/a:80 allowed"
        );
        assert!(
            !connect(&lab, "y/c", "x/a", 80, Protocol::Tcp, family),
            "y/c -> x/a:80 denied"
        );
        assert!(
            !connect(&lab, "y/c", "x/a", 81, Protocol::Udp, family),
            "y/c -> x/a:81/udp denied"
        );

        // Denied TCP.
        let f = wait_flow(
            &lab,
            &[
                "--verdict",
                "DROPPED",
                "--from-pod",
                "y/c",
                "--to-pod",
                "x/a",
                "--protocol",
                "TCP",
                "--last",
                "50",
            ],
            "denied y/c -> x/a TCP",
            |f| f["IP"]["ipVersion"] == version,
        );
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["reason"], "default_deny");
        assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(f["traffic_direction"], "INGRESS");
        assert_eq!(f["is_reply"], false);
        assert_eq!(
            (f["IP"]["source"].as_str(), f["IP"]["destination"].as_str()),
            (Some(c.as_str()), Some(a.as_str()))
        );
        assert_eq!(
            (&f["source"]["namespace"], &f["source"]["pod_name"]),
            (&Value::from("y"), &Value::from("c"))
        );
        assert_eq!(
            (
                &f["destination"]["namespace"],
                &f["destination"]["pod_name"]
            ),
            (&Value::from("x"), &Value::from("a"))
        );
        assert!(
            f["source"]["labels"]
                .as_array()
                .unwrap()
                .contains(&Value::from("k8s:pod=c")),
            "{f}"
        );
        assert_eq!(port_of(&f, "TCP"), 80);
        assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(
            names(&f["ingress_denied_by"]),
            ["x/allow-b-80", "x/deny-all"],
            "{f}"
        );

        // Denied UDP.
        let f = wait_flow(
            &lab,
            &[
                "--verdict",
                "DROPPED",
                "--to-pod",
                "x/a",
                "--protocol",
                "UDP",
                "--port",
                "81",
                "--last",
                "50",
            ],
            "denied y/c -> x/a UDP 81",
            |f| f["IP"]["ipVersion"] == version,
        );
        assert_eq!(
            (f["reason"].as_str(), port_of(&f, "UDP")),
            (Some("default_deny"), 81)
        );
        assert_eq!(f["source"]["pod_name"], "c");
        assert_eq!(
            names(&f["ingress_denied_by"]),
            ["x/allow-b-80", "x/deny-all"]
        );

        // Allowed: the policy, its rule, the peer and the port entry that matched.
        let f = wait_flow(
            &lab,
            &[
                "--verdict",
                "FORWARDED",
                "--from-pod",
                "y/b",
                "--to-pod",
                "x/a",
                "--last",
                "50",
            ],
            "allowed y/b -> x/a at x/a's ingress",
            |f| f["IP"]["ipVersion"] == version && f["traffic_direction"] == "INGRESS",
        );
        assert_eq!(f["reason"], "policy_allow");
        assert_eq!(f["IP"]["source"].as_str(), Some(b.as_str()));
        let by = &f["ingress_allowed_by"][0];
        assert_eq!(
            (by["namespace"].as_str(), by["name"].as_str()),
            (Some("x"), Some("allow-b-80")),
            "{f}"
        );
        assert_eq!(by["rule"]["path"], "spec.ingress[0]");
        let peer = by["rule"]["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("from[0]") && peer.contains("y/b"), "{f}");
        assert!(
            by["rule"]["port"]
                .as_str()
                .unwrap_or_default()
                .starts_with("ports[0]"),
            "{f}"
        );
    }

    // Filters: by policy, by reason (Hubble's or ours), by address.
    let agent = lab.agent(0).unwrap();
    let by_policy = agent
        .flows(&["--policy", "x/allow-b-80", "--last", "1000"])
        .unwrap();
    assert!(
        by_policy
            .iter()
            .all(|f| f["flow"]["ingress_allowed_by"].is_array()
                || f["flow"]["ingress_denied_by"].is_array())
    );
    assert!(!by_policy.is_empty());
    let reason = agent
        .flows(&["--reason", "POLICY_DENIED", "--last", "1000"])
        .unwrap();
    assert!(!reason.is_empty() && reason.iter().all(|f| f["flow"]["reason"] == "default_deny"));
    let c4 = addr(&lab, "y/c", Family::V4).to_string();
    let by_ip = agent
        .flows(&["--ip", &format!("{c4}/32"), "--last", "1000"])
        .unwrap();
    assert!(
        !by_ip.is_empty()
            && by_ip
                .iter()
                .all(|f| f["flow"]["IP"]["source"] == c4.as_str()
                    || f["flow"]["IP"]["destination"] == c4.as_str())
    );
    // A bad filter is refused, naming it.
    let err = agent
        .palisadectl_stdout(&["flows", "--ip", "10.0.0.0/33"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--ip") && err.contains("10.0.0.0/33"), "{err}");
    // The compact and table outputs say the same in words.
    let text = agent
        .palisadectl_stdout(&["flows", "--verdict", "DROPPED", "--last", "1"])
        .unwrap();
    assert!(
        text.contains("DROPPED default_deny INGRESS") && text.contains("denied by"),
        "{text}"
    );

    // Status counts the events.
    let status: Value = serde_json::from_str(&agent.status().unwrap()).unwrap();
    let ev = &status["flow_events"];
    assert_eq!(ev["enabled"], true);
    assert!(ev["emitted"].as_u64().unwrap() >= 6, "{ev}");
    assert_eq!(ev["lost"], 0);
    lab.remove("policies").unwrap();
}

/// The metrics endpoint, parsed as Prometheus does: a real denied connection moves the
/// verdict counter of its direction and reason and the per-policy counter of the policies
/// that isolate the pod; map pressure, events and sync state are there.
/// ClusterNetworkPolicy verdicts name the tier policy and rule that decided: an admin Deny
/// drop says which Deny rule (not "isolates the pod"), an admin Accept names its rule.
#[test]
fn privileged_flows_name_the_cluster_network_policy_rule_that_decided() {
    let Some(mut lab) = lab(
        "privileged_flows_name_the_cluster_network_policy_rule_that_decided",
        &[],
    ) else {
        return;
    };
    lab.apply_yaml(
        "cnp",
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard-x}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: no-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}
  - {name: y-in, action: Accept, from: [{namespaces: {matchLabels: {ns: y}}}]}
",
    )
    .expect("policy");
    lab.wait_synced().expect("synced");
    assert!(
        !connect(&lab, "z/c", "x/a", 80, Protocol::Tcp, Family::V4),
        "z/c -> x/a denied"
    );
    assert!(
        connect(&lab, "y/b", "x/a", 80, Protocol::Tcp, Family::V4),
        "y/b -> x/a allowed"
    );
    let f = wait_flow(
        &lab,
        &[
            "--verdict",
            "DROPPED",
            "--from-pod",
            "z/c",
            "--to-pod",
            "x/a",
            "--last",
            "50",
        ],
        "denied z/c -> x/a",
        |f| f["traffic_direction"] == "INGRESS",
    );
    assert_eq!(f["reason"], "policy_deny", "{f}");
    let by = &f["ingress_denied_by"][0];
    assert_eq!(
        (
            by["kind"].as_str(),
            by["name"].as_str(),
            by["rule"]["path"].as_str()
        ),
        (
            Some("ClusterNetworkPolicy"),
            Some("guard-x"),
            Some("spec.ingress[0]")
        ),
        "{f}"
    );
    assert!(by.get("namespace").is_none(), "cluster-scoped: {f}");
    let f = wait_flow(
        &lab,
        &[
            "--verdict",
            "FORWARDED",
            "--from-pod",
            "y/b",
            "--to-pod",
            "x/a",
            "--last",
            "50",
        ],
        "allowed y/b -> x/a",
        |f| f["traffic_direction"] == "INGRESS",
    );
    let by = &f["ingress_allowed_by"][0];
    assert_eq!(
        (
            by["kind"].as_str(),
            by["name"].as_str(),
            by["rule"]["path"].as_str()
        ),
        (
            Some("ClusterNetworkPolicy"),
            Some("guard-x"),
            Some("spec.ingress[1]")
        ),
        "{f}"
    );
    // The compact line says it in words.
    let text = lab
        .agent(0)
        .unwrap()
        .palisadectl_stdout(&[
            "flows",
            "--verdict",
            "DROPPED",
            "--from-pod",
            "z/c",
            "--last",
            "1",
        ])
        .unwrap();
    assert!(
        text.contains("DROPPED policy_deny INGRESS denied by guard-x spec.ingress[0]")
            && !text.contains("isolates the pod"),
        "{text}"
    );
}

#[test]
fn privileged_metrics_count_a_real_denied_connection() {
    let Some(mut lab) = lab("privileged_metrics_count_a_real_denied_connection", &[]) else {
        return;
    };
    lab.apply_yaml("policies", POLICIES).expect("policies");
    lab.wait_synced().expect("synced");
    let deny = [
        ("direction", "ingress"),
        ("verdict", "dropped"),
        ("reason", "default_deny"),
    ];
    let before = scrape(&lab);
    let dropped0 = value(&before, "palisade_verdicts_total", &deny);
    assert!(!connect(&lab, "y/c", "x/a", 80, Protocol::Tcp, Family::V4));
    wait_flow(
        &lab,
        &["--verdict", "DROPPED", "--last", "10"],
        "the drop",
        |_| true,
    );
    let after = scrape(&lab);
    assert!(
        value(&after, "palisade_verdicts_total", &deny) > dropped0,
        "verdict counter"
    );
    for p in ["x/deny-all", "x/allow-b-80"] {
        assert!(
            value(
                &after,
                "palisade_policy_verdicts_total",
                &[("policy", p), ("action", "deny"), ("direction", "ingress")]
            ) >= 1.0,
            "policy counter of {p}"
        );
    }
    assert!(value(&after, "palisade_flow_events_emitted_total", &[]) >= 1.0);
    assert_eq!(value(&after, "palisade_flow_events_lost_total", &[]), 0.0);
    assert_eq!(value(&after, "palisade_source_synced", &[]), 1.0);
    assert!(value(&after, "palisade_endpoints", &[("state", "enforced")]) >= 9.0);
    assert!(value(&after, "palisade_map_capacity", &[("map", "pal_ct_v1")]) > 0.0);
    assert!(value(&after, "palisade_map_entries", &[("map", "pal_ct_v1")]) >= 1.0);
    assert!(value(&after, "palisade_map_entries", &[("map", "pal_pol_v1")]) >= 1.0);
    assert!(value(&after, "palisade_policy_programmed_seconds_count", &[]) >= 1.0);
    assert!(value(&after, "palisade_cni_add_seconds_count", &[]) >= 9.0);
}

/// Audit mode, as an operator introduces a default deny: annotated, it lets everything
/// through and reports AUDIT flows naming the policy that would deny; without the annotation
/// it enforces.
#[test]
fn privileged_audited_default_deny_reports_then_enforces() {
    let Some(mut lab) = lab("privileged_audited_default_deny_reports_then_enforces", &[]) else {
        return;
    };
    let policy = |audit: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  namespace: x\n  annotations: {{policy.palisade.io/audit: '{audit}'}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n"
        )
    };
    lab.apply_yaml("deny", &policy("true")).unwrap();
    lab.wait_synced().unwrap();
    assert!(
        connect(&lab, "y/c", "x/a", 80, Protocol::Tcp, Family::V4),
        "audited: passes"
    );
    let f = wait_flow(
        &lab,
        &["--verdict", "AUDIT", "--to-pod", "x/a", "--last", "50"],
        "audit of y/c -> x/a",
        |f| f["source"]["pod_name"] == "c",
    );
    assert_eq!(
        (f["reason"].as_str(), f["drop_reason_desc"].as_str()),
        (Some("default_deny"), Some("POLICY_DENIED"))
    );
    let by = &f["ingress_denied_by"][0];
    assert_eq!(
        (by["name"].as_str(), by["audit"].as_bool()),
        (Some("deny-all"), Some(true)),
        "{f}"
    );
    let text = lab
        .agent(0)
        .unwrap()
        .palisadectl_stdout(&["flows", "--verdict", "AUDIT", "--last", "1"])
        .unwrap();
    assert!(
        text.contains("would be denied by x/deny-all (audit)"),
        "{text}"
    );

    lab.apply_yaml("deny", &policy("false")).unwrap();
    lab.wait_synced().unwrap();
    assert!(
        !connect(&lab, "y/c", "x/a", 80, Protocol::Tcp, Family::V4),
        "enforced: denied"
    );
    let f = wait_flow(
        &lab,
        &["--verdict", "DROPPED", "--to-pod", "x/a", "--last", "50"],
        "drop of y/c -> x/a",
        |f| f["source"]["pod_name"] == "c",
    );
    assert_eq!(names(&f["ingress_denied_by"]), ["x/deny-all"]);
    assert!(f["ingress_denied_by"][0].get("audit").is_none(), "{f}");
}

/// A whole node in audit mode (`--audit-mode`): every policy decides nothing, and reports.
#[test]
fn privileged_node_audit_mode_enforces_nothing_and_reports() {
    let Some(mut lab) = lab(
        "privileged_node_audit_mode_enforces_nothing_and_reports",
        &["--audit-mode"],
    ) else {
        return;
    };
    lab.apply_yaml("policies", POLICIES).unwrap();
    lab.wait_synced().unwrap();
    assert!(connect(&lab, "y/c", "x/a", 80, Protocol::Tcp, Family::V6));
    let f = wait_flow(
        &lab,
        &["--verdict", "AUDIT", "--last", "50"],
        "an audit",
        |f| f["source"]["pod_name"] == "c",
    );
    assert_eq!(
        names(&f["ingress_denied_by"]),
        ["x/allow-b-80", "x/deny-all"]
    );
    // An audited rule that would allow it is named on the forwarded flow.
    assert!(connect(&lab, "y/b", "x/a", 80, Protocol::Tcp, Family::V6));
    let f = wait_flow(
        &lab,
        &["--verdict", "FORWARDED", "--to-pod", "x/a", "--last", "50"],
        "forwarded y/b",
        |f| f["source"]["pod_name"] == "b" && f["traffic_direction"] == "INGRESS",
    );
    assert_eq!(f["ingress_allowed_by"][0]["name"], "allow-b-80");
    assert_eq!(f["ingress_allowed_by"][0]["audit"], true);
}

/// A flow through a Service ClusterIP names the Service and the backend it was translated to.
#[test]
fn privileged_flow_through_a_cluster_ip_names_the_service_and_the_backend() {
    let Some(mut lab) = lab(
        "privileged_flow_through_a_cluster_ip_names_the_service_and_the_backend",
        &[],
    ) else {
        return;
    };
    let yaml = per_pod_services_yaml(&lab.model().pods, 1000, false);
    lab.apply_services("services", &yaml).expect("services");
    // y/c's egress is isolated: allowed only to x/a on TCP 80 (judged after translation).
    lab.apply_yaml(
        "egress",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c-to-a, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]\n",
    )
    .unwrap();
    lab.wait_synced().unwrap();
    let svc = lab.cluster_ip("x", "svc-a", Family::V4).unwrap();
    let got = lab
        .who_answers(
            "y/c",
            SocketAddr::new(svc, 1080),
            Protocol::Tcp,
            1,
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(got[0].as_deref(), Some("x/a"), "through the ClusterIP");
    let f = wait_flow(
        &lab,
        &[
            "--from-pod",
            "y/c",
            "--verdict",
            "FORWARDED",
            "--last",
            "50",
        ],
        "y/c's egress via the Service",
        |f| f["traffic_direction"] == "EGRESS" && f["destination_service"].is_object(),
    );
    assert_eq!(f["destination"]["pod_name"], "a", "the backend: {f}");
    assert_eq!(port_of(&f, "TCP"), 80);
    let s = &f["destination_service"];
    assert_eq!(
        (s["namespace"].as_str(), s["name"].as_str()),
        (Some("x"), Some("svc-a")),
        "{f}"
    );
    assert_eq!(s["address"].as_str(), Some(format!("{svc}:1080").as_str()));
    assert_eq!(f["egress_allowed_by"][0]["name"], "c-to-a");
    // A Service whose backend the policy forbids: dropped, naming the Service too.
    let svc_b = lab.cluster_ip("x", "svc-b", Family::V4).unwrap();
    let got = lab
        .who_answers(
            "y/c",
            SocketAddr::new(svc_b, 1080),
            Protocol::Tcp,
            1,
            Duration::from_millis(700),
        )
        .unwrap();
    assert_eq!(got[0], None);
    let f = wait_flow(
        &lab,
        &["--from-pod", "y/c", "--verdict", "DROPPED", "--last", "50"],
        "y/c -> svc-b dropped",
        |f| f["destination"]["pod_name"] == "b",
    );
    assert_eq!(f["destination_service"]["name"], "svc-b");
    assert_eq!(names(&f["egress_denied_by"]), ["y/c-to-a"]);
}
