//! `palisadectl explain` and `palisadectl policy lint` against a running agent, then real
//! packets: the answer the agent gives (allowed or denied, and the policy that decides) is
//! what the datapath then does. Offline (`--manifests` on the directory the agent reads),
//! `--what-if` predicts the answer before the policy is applied, and once it is applied the
//! offline answer is the agent's.
//!
//! Threat model (the request is new input on the agent's socket): a client asking about
//! pods, Services or what-if policies that do not exist, or sending an invalid what-if
//! policy, gets an error naming it; the agent keeps enforcing and answering (checked with a
//! second, valid question afterwards).

use palisade_tests::lab::{Family, Lab, PORTS, Protocol};
use palisade_tests::require_privileges;

#[path = "common/policy_cases.rs"]
#[allow(dead_code)]
mod policy_cases;
use policy_cases::enforcing_lab;

const FROM_B_ON_80: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: TCP, port: 80}]
";

/// A namespaceSelector on a label no namespace has (PL204): lint against the agent finds it.
const BY_NAME_LABEL: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y-by-name, namespace: z}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {name: y}}}]
";

/// `palisadectl ARGS` on node 0: (exit code, stdout, stderr).
fn ctl(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = lab
        .agent(0)
        .expect("an agent")
        .palisadectl(args)
        .expect("palisadectl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `palisadectl explain FROM TO 80/TCP` on node 0, polled until the answer names `name`: `wait`
/// answers with the generation applied so far while the directory source may still be
/// rescanning off the agent's loop (main 7de0d35), so the test waits on the condition itself
/// (the answer is given after the loop compiled and wrote the maps, on the same loop).
fn explain_naming(lab: &Lab, from: &str, to: &str, name: &str) -> (i32, String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, out, err) = ctl(lab, &["explain", from, to, "80/TCP"]);
        if out.contains(name) || std::time::Instant::now() > deadline {
            return (code, out, err);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The agent's answer for FROM -> TO 80/TCP (JSON), after checking that the offline answer
/// (`--manifests` on the directory the agent reads) is the same, exit status included.
fn agent_answer_equal_to_offline(
    lab: &Lab,
    manifests: &str,
    from: &str,
    to: &str,
) -> serde_json::Value {
    let (agent_code, agent, _) = ctl(lab, &["explain", from, to, "80/TCP", "-o", "json"]);
    let (code, offline, err) = ctl(
        lab,
        &[
            "explain",
            from,
            to,
            "80/TCP",
            "-o",
            "json",
            "--manifests",
            manifests,
        ],
    );
    assert_eq!(code, agent_code, "{offline}{err}");
    let agent: serde_json::Value = serde_json::from_str(&agent).expect("JSON answer");
    let offline: serde_json::Value = serde_json::from_str(&offline).expect("JSON answer");
    assert_eq!(
        offline, agent,
        "{from} -> {to}: offline and agent answers differ"
    );
    agent
}

#[test]
fn privileged_explain_against_the_agent_is_what_packets_then_do() {
    if !require_privileges("privileged_explain_against_the_agent_is_what_packets_then_do") {
        return;
    }
    let mut lab = enforcing_lab(1);
    let manifests = lab.manifests_dir();
    let manifests = manifests.to_str().expect("utf-8 path").to_string();

    // Before the policy exists: offline, as a CI job would ask, what would it do?
    let planned = lab.dir().join("planned.yaml");
    std::fs::write(&planned, FROM_B_ON_80).expect("write the planned policy");
    let planned = planned.to_str().expect("utf-8 path").to_string();
    let offline = [
        "--manifests",
        manifests.as_str(),
        "--what-if",
        planned.as_str(),
    ];
    let (code, out, err) = ctl(
        &lab,
        &[&["explain", "x/c", "x/a", "80/TCP"][..], &offline].concat(),
    );
    assert_eq!(code, 1, "would be denied\n{out}{err}");
    assert!(
        out.contains(
            "ingress at x/a: DENIED: no rule allows x/c; isolated by NetworkPolicy x/allow-from-b"
        ) && out.contains("what-if: NetworkPolicy x/allow-from-b added"),
        "{out}"
    );
    let (code, out, err) = ctl(
        &lab,
        &["explain", "x/c", "x/a", "80/TCP", "--manifests", &manifests],
    );
    assert_eq!(code, 0, "allowed while no policy exists\n{out}{err}");

    lab.apply_yaml("policies", &format!("{FROM_B_ON_80}\n---\n{BY_NAME_LABEL}"))
        .expect("apply");
    lab.wait_synced().expect("agent enforces the policies");
    let (code, out, err) = explain_naming(&lab, "x/b", "x/a", "x/allow-from-b");
    lab.wait_synced().expect("agent enforces the policies");

    // The agent's answers.
    assert_eq!(code, 0, "allowed exits 0\n{out}{err}");
    assert!(out.starts_with("x/b -> x/a TCP 80: ALLOWED\n"), "{out}");
    assert!(
        out.contains("ingress at x/a: allowed by NetworkPolicy x/allow-from-b spec.ingress[0]"),
        "{out}"
    );
    let (code, out, err) = ctl(&lab, &["explain", "x/c", "x/a", "80/TCP"]);
    assert_eq!(code, 1, "denied exits 1\n{out}{err}");
    assert!(out.starts_with("x/c -> x/a TCP 80: DENIED\n"), "{out}");
    assert!(
        out.contains(
            "ingress at x/a: DENIED: no rule allows x/c; isolated by NetworkPolicy x/allow-from-b"
        ),
        "{out}"
    );
    let (code, json, _) = ctl(&lab, &["explain", "x/c", "x/a", "80/TCP", "-o", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON answer");
    assert_eq!(v["verdict"], "denied");
    assert_eq!(
        v["connections"][0]["ingress"]["policies"][0]["name"],
        "allow-from-b"
    );

    // Offline from the directory the agent reads: the same answer as the agent's.
    for (from, to) in [("x/b", "x/a"), ("x/c", "x/a")] {
        agent_answer_equal_to_offline(&lab, &manifests, from, to);
    }

    // Real packets, both families: x/b reaches x/a on TCP 80, x/c does not.
    for family in [Family::V4, Family::V6] {
        let observed = lab
            .probe_all(&PORTS[..1], &[Protocol::Tcp], family)
            .expect("probes run");
        let table = observed.table(PORTS[0], Protocol::Tcp).expect("TCP table");
        assert_eq!(PORTS[0], 80);
        assert_eq!(table.get("x/b", "x/a"), Some(true), "{family}\n{observed}");
        assert_eq!(table.get("x/c", "x/a"), Some(false), "{family}\n{observed}");
    }

    // Lint against the agent: the running policies' findings, and the exit status gate.
    let (code, out, err) = ctl(&lab, &["policy", "lint", "--fail-on", "warning"]);
    assert_eq!(code, 1, "a warning exists\n{out}{err}");
    assert!(
        out.contains(
            "warning[PL204 namespace-label-unknown]: NetworkPolicy z/from-y-by-name spec.ingress[0].from[0].namespaceSelector"
        ),
        "{out}"
    );
    let (code, json, err) = ctl(&lab, &["policy", "lint", "-o", "json"]);
    assert_eq!(code, 0, "no error-level finding\n{json}{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(v["policies"], 2);

    // Bad questions are answered with errors naming them; the agent keeps answering.
    let (code, _, err) = ctl(&lab, &["explain", "x/nope", "x/a"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("pod x/nope is not in the cluster state"),
        "{err}"
    );
    let what_if = lab.dir().join("bad-what-if.yaml");
    std::fs::write(
        &what_if,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n",
    )
    .expect("write what-if");
    let (code, _, err) = ctl(
        &lab,
        &[
            "explain",
            "x/b",
            "x/a",
            "80",
            "--what-if",
            what_if.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "NetworkPolicy x/bad: spec.ingress[0].ports[0].port: port 0 is not in 1..=65535"
        ),
        "{err}"
    );
    let (code, out, _) = ctl(&lab, &["explain", "x/b", "x/a", "80/TCP"]);
    assert_eq!(code, 0, "{out}");
}

/// An Admin-tier Deny over a namespace's allow-all, and a Baseline Deny where no NetworkPolicy
/// isolates (docs/policy.md's worked example).
const TIERS: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-z-to-x}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{name: nothing-from-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default-deny-y}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {matchLabels: {ns: y}}}
  ingress: [{name: deny-from-everywhere, action: Deny, from: [{namespaces: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-in, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
";

/// The agent explains ClusterNetworkPolicy tiers: it names the Admin Deny that overrides the
/// namespace's allow, the NetworkPolicy that decides before the Baseline tier, and the
/// Baseline Deny; the offline answer (`--manifests`) is the agent's; packets then do what it
/// said.
#[test]
fn privileged_explain_names_the_cluster_network_policy_tier_that_decides() {
    if !require_privileges("privileged_explain_names_the_cluster_network_policy_tier_that_decides")
    {
        return;
    }
    let mut lab = enforcing_lab(1);
    let manifests = lab.manifests_dir();
    let manifests = manifests.to_str().expect("utf-8 path").to_string();
    lab.apply_yaml("tiers", TIERS).expect("apply");
    lab.wait_synced().expect("agent enforces the policies");
    let (code, out, err) = explain_naming(&lab, "z/a", "x/a", "no-z-to-x");
    assert_eq!(code, 1, "denied exits 1\n{out}{err}");
    assert!(
        out.contains(
            "ingress at x/a: DENIED by ClusterNetworkPolicy no-z-to-x (Admin tier, priority 10) spec.ingress[0] (Deny)"
        ) && out.contains("but an Admin-tier rule decided first"),
        "{out}"
    );
    let (code, out, err) = ctl(&lab, &["explain", "y/a", "x/a", "80/TCP"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ingress at x/a: allowed by NetworkPolicy x/allow-all-in spec.ingress[0]"),
        "{out}"
    );
    let (code, out, err) = ctl(&lab, &["explain", "x/a", "y/b", "80/TCP"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "ingress at y/b: DENIED by ClusterNetworkPolicy default-deny-y (Baseline tier, priority 100) spec.ingress[0] (Deny)"
        ),
        "{out}"
    );
    for (from, to) in [("z/a", "x/a"), ("y/a", "x/a"), ("x/a", "y/b")] {
        let agent = agent_answer_equal_to_offline(&lab, &manifests, from, to);
        if from == "z/a" {
            let p = &agent["connections"][0]["ingress"]["policies"][0];
            assert_eq!(p["kind"], "ClusterNetworkPolicy", "{agent}");
            assert_eq!(p["tier"], "Admin", "{agent}");
            assert_eq!(p["rules"][0]["action"], "deny", "{agent}");
            assert_eq!(p["rules"][0]["decides"], true, "{agent}");
        }
    }
    // Real packets, both families: what the agent said.
    for family in [Family::V4, Family::V6] {
        let observed = lab
            .probe_all(&PORTS[..1], &[Protocol::Tcp], family)
            .expect("probes run");
        let table = observed.table(PORTS[0], Protocol::Tcp).expect("TCP table");
        assert_eq!(table.get("z/a", "x/a"), Some(false), "{family}\n{observed}");
        assert_eq!(table.get("y/a", "x/a"), Some(true), "{family}\n{observed}");
        assert_eq!(table.get("x/a", "y/b"), Some(false), "{family}\n{observed}");
    }
}
