//! `palisadectl policy lint --manifests DIR` and `palisadectl explain --manifests DIR`, the
//! binary as a CI pipeline runs it: findings, and exit statuses that gate on `--fail-on`
//! (0: nothing at or above it, 1: something, 2: could not lint).

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lint")
}

/// (exit code, stdout, stderr) of `palisadectl ARGS` (no agent is asked: every call here
/// reads manifests).
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["--socket", "/nonexistent/palisade.sock"])
        .args(args)
        .output()
        .expect("palisadectl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory holding the example cluster and `policies` (a file of its own).
fn dir_with(policies: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        examples().join("00-cluster.yaml"),
        d.path().join("00-cluster.yaml"),
    )
    .expect("copy the example cluster");
    std::fs::write(d.path().join("10-policies.yaml"), policies).expect("write policies");
    d
}

const CLEAN: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: db, name: postgres-from-api}
spec:
  podSelector: {matchLabels: {app: postgres}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}}, podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432}]
";

#[test]
fn lint_fail_on_warning_exits_1_on_the_examples_and_0_on_clean_policies() {
    let d = examples();
    let d = d.to_str().expect("utf-8 path");
    let (code, out, err) = ctl(&["policy", "lint", "--manifests", d, "--fail-on", "warning"]);
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        "warning[PL204 namespace-label-unknown]: NetworkPolicy db/postgres-ingress spec.ingress[0].from[0].namespaceSelector",
        "warning[PL501 split-rule]: NetworkPolicy db/postgres-ingress spec.ingress[2]",
        "warning[PL301 dns-blocked]: NetworkPolicy web/default-deny-egress spec.egress",
        "3 findings (0 error, 3 warning, 0 info) in 2 NetworkPolicies",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // The same findings gate nothing at the default threshold (error) or with `never`.
    assert_eq!(ctl(&["policy", "lint", "--manifests", d]).0, 0);
    assert_eq!(
        ctl(&["policy", "lint", "--manifests", d, "--fail-on", "never"]).0,
        0
    );
    assert_eq!(
        ctl(&["policy", "lint", "--manifests", d, "--fail-on", "info"]).0,
        1
    );

    let clean = dir_with(CLEAN);
    let c = clean.path().to_str().expect("utf-8 path");
    let (code, out, err) = ctl(&["policy", "lint", "--manifests", c, "--fail-on", "info"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("0 findings (0 error, 0 warning, 0 info) in 1 NetworkPolicy"),
        "{out}"
    );
}

#[test]
fn lint_errors_exit_1_by_default_and_unreadable_input_exits_2() {
    // An invalid policy (error) and a file that is not YAML (error).
    let d = dir_with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: db, name: bad}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]\n",
    );
    std::fs::write(d.path().join("20-broken.yaml"), "kind: [unclosed\n").unwrap();
    let p = d.path().to_str().expect("utf-8 path");
    let (code, out, err) = ctl(&["policy", "lint", "--manifests", p]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("error[PL102 except-outside-cidr]: NetworkPolicy db/bad spec.ingress[0].from[0].ipBlock.except[0]"),
        "{out}"
    );
    assert!(out.contains("error[PL100 object-not-read]"), "{out}");
    let (code, json, _) = ctl(&["policy", "lint", "--manifests", p, "-o", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    assert!(
        v["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["code"] == "PL102"))
    );

    let (code, _, err) = ctl(&["policy", "lint", "--manifests", "/nonexistent/manifests"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("reading source directory /nonexistent/manifests"),
        "{err}"
    );
    // No --manifests and no agent: the socket path tried is named.
    let (code, _, err) = ctl(&["policy", "lint"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/palisade.sock"), "{err}");
}

#[test]
fn explain_offline_exits_0_allowed_1_denied_2_unanswerable_and_tries_what_if() {
    let d = examples();
    let d = d.to_str().expect("utf-8 path");
    let (code, out, _) = ctl(&[
        "explain",
        "web/api",
        "db/postgres",
        "5432",
        "--manifests",
        d,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("web/api -> db/postgres TCP 5432: ALLOWED"),
        "{out}"
    );
    let (code, out, _) = ctl(&[
        "explain",
        "web/api",
        "svc:kube-system/kube-dns:dns",
        "--manifests",
        d,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("egress at web/api: DENIED: no rule allows kube-system/coredns; isolated by NetworkPolicy web/default-deny-egress"),
        "{out}"
    );
    let fix = examples().join("what-if/allow-dns.yaml");
    let (code, out, _) = ctl(&[
        "explain",
        "web/api",
        "svc:kube-system/kube-dns:dns",
        "--manifests",
        d,
        "--what-if",
        fix.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed by NetworkPolicy web/allow-dns spec.egress[0]"),
        "{out}"
    );
    assert!(
        out.contains("what-if: NetworkPolicy web/allow-dns added"),
        "{out}"
    );
    let (code, _, err) = ctl(&["explain", "web/api", "db/nope", "--manifests", d]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "palisadectl: pod db/nope is not in the cluster state"
    );
}

/// docs/lint.md shows palisadectl's output on examples/lint: it is what palisadectl prints
/// (run from the repository root, as the docs do).
#[test]
fn docs_lint_md_shows_what_palisadectl_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/lint.md")).expect("docs/lint.md");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
            .current_dir(&root)
            .args(args)
            .output()
            .expect("palisadectl runs");
        String::from_utf8(out.stdout).expect("utf-8 output")
    };
    let dns = [
        "explain",
        "web/api",
        "svc:kube-system/kube-dns:dns",
        "--manifests",
        "examples/lint",
    ];
    let mut what_if = dns.to_vec();
    what_if.extend(["--what-if", "examples/lint/what-if/allow-dns.yaml"]);
    let lint = [
        "policy",
        "lint",
        "--manifests",
        "examples/lint",
        "--fail-on",
        "warning",
    ];
    for out in [run(&dns), run(&what_if), run(&lint)] {
        assert!(!out.is_empty());
        assert!(docs.contains(&out), "docs/lint.md does not show:\n{out}");
    }
    // The README quotes the head of explain's answer and lint's first finding and summary.
    let explain = run(&[
        "explain",
        "web/api",
        "db/postgres",
        "5432",
        "--manifests",
        "examples/lint",
    ]);
    let lint = run(&lint);
    let lint_lines: Vec<&str> = lint.lines().collect();
    for line in [
        explain.lines().next().expect("a verdict line"),
        lint_lines[0],
        lint_lines[1],
        lint_lines[2],
        lint_lines[lint_lines.len() - 1],
    ] {
        assert!(readme.contains(line), "README.md does not show {line:?}");
    }
}
