//! The agent's directory source against mistaken and hostile manifests, end to end: real
//! packets between lab pods, and what `palisadectl status` says.
//!
//! Threat model: whoever writes into the manifest directory (an operator having a bad day, or
//! a tenant whose policy files are copied there) (1) makes a typo that would widen a policy:
//! `egress: [{from: ...}]` for `to`, which k8s-openapi read as an egress rule without `to`,
//! i.e. allow-all egress; (2) drops a file that stalls the parser (240 KB of nested `[` took
//! serde_yaml 366 s, during which the agent's loop answered nothing). What must hold: the typo
//! is rejected with a problem naming file, object, field and value, and the previous version
//! stays enforced; the hostile file is refused alone, named in status, and the agent keeps
//! answering and applying other changes meanwhile.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use palisade_tests::lab::{Family, Lab, LabConfig, Protocol};

fn lab(test: &str) -> Result<Option<Lab>> {
    Ok(Lab::start_enforcing(test, LabConfig::default())?)
}

/// Whether `from` reaches x/a on TCP 80, by real packets.
fn reaches_x_a(lab: &Lab, from: &str) -> Result<bool> {
    let r = lab.probe_all(&[80], &[Protocol::Tcp], Family::V4)?;
    r.table(80, Protocol::Tcp)
        .and_then(|t| t.get(from, "x/a"))
        .with_context(|| format!("no probe {from} -> x/a"))
}

/// Egress of namespace y: only to namespace z (so y/b does not reach x/a).
const Y_EGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-egress, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
";

#[test]
fn privileged_unknown_field_and_hostile_files_are_refused_alone_and_the_last_good_policy_stays()
-> Result<()> {
    let Some(mut lab) = lab(
        "privileged_unknown_field_and_hostile_files_are_refused_alone_and_the_last_good_policy_stays",
    )?
    else {
        return Ok(());
    };
    lab.apply_yaml("y-egress", Y_EGRESS)?;
    lab.wait_synced()?;
    ensure!(!reaches_x_a(&lab, "y/b")?, "setup: y/b must not reach x/a");
    ensure!(reaches_x_a(&lab, "z/b")?, "setup: z/b must reach x/a");

    // (1) The typo. Before the fix this was enforced as allow-all egress for y.
    let typo = Y_EGRESS.replace("  - to:", "  - from:");
    lab.apply_yaml("y-egress", &typo)?;
    lab.wait_synced()?;
    let status = lab.wait_status("the typo's problem", |s| s.contains("spec.egress[0].from"))?;
    for needle in [
        "y-egress.yaml",
        "NetworkPolicy y/y-egress",
        "unknown field",
        "namespaceSelector",
        "rejected",
    ] {
        ensure!(
            status.contains(needle),
            "status lacks {needle:?}:\n{status}"
        );
    }
    ensure!(
        !reaches_x_a(&lab, "y/b")?,
        "the typo widened y's egress: the last good version is not enforced"
    );

    // (2) A hostile file next to it: the agent names it, keeps answering and applying.
    let hostile = lab.manifests_dir().join("hostile.yaml");
    let nested = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: h, namespace: x}}\nspec: {}{}\n",
        "[".repeat(120_000),
        "]".repeat(120_000)
    );
    std::fs::write(&hostile, nested).context("writing the hostile file")?;
    let t = Instant::now();
    let status = lab.wait_status("the hostile file's problem", |s| s.contains("hostile.yaml"))?;
    eprintln!(
        "hostile file reported after {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    ensure!(
        status.contains("nested deeper than 64 levels"),
        "the problem does not name the limit:\n{status}"
    );
    // Other changes still apply: the typo fixed, with a wider peer set (z and x).
    let fixed = Y_EGRESS.replace(
        "  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]",
        "  - to: [{namespaceSelector: {matchLabels: {ns: z}}}, {namespaceSelector: {matchLabels: {ns: x}}}]",
    );
    lab.apply_yaml("y-egress", &fixed)?;
    lab.wait_synced()?;
    ensure!(
        reaches_x_a(&lab, "y/b")?,
        "the fixed version is not enforced"
    );
    let status = lab.agent_status()?.join("\n");
    ensure!(
        !status.contains("spec.egress[0].from") && status.contains("hostile.yaml"),
        "status after the fix:\n{status}"
    );
    std::fs::remove_file(&hostile)?;
    lab.wait_status("the hostile file's problem to go", |s| {
        !s.contains("hostile.yaml")
    })?;
    Ok(())
}
