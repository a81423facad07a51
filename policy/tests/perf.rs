//! Performance sanity (no timed assertion): 10,000 pods, 1,000 policies, 100 local endpoints.
//! Run `cargo test --release -p palisade-policy --test perf -- --nocapture` for figures.

use std::time::Instant;

use palisade_policy::{
    Allow, PeerAllow, PortContents, RuleRegistry, SyntheticSpec, compile, endpoint_entries,
    synthetic_cluster,
};

#[test]
fn compile_of_100_local_endpoints_against_10k_pods_and_1k_policies() {
    let t0 = Instant::now();
    let (cluster, local) = synthetic_cluster(SyntheticSpec::default());
    let built = t0.elapsed();
    assert_eq!(cluster.pods.len(), 10_000);
    assert_eq!(cluster.policies.len(), 1_000);
    assert_eq!(local.len(), 100);

    let mut reg = RuleRegistry::new();
    let t1 = Instant::now();
    let compiled = compile(&cluster, &local, &mut reg);
    let first = t1.elapsed();
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    assert_eq!(compiled.endpoints.len(), 100);

    // A second compile with the same registry keeps every rule reference.
    let before: Vec<_> = (1..=reg.len() as u32)
        .map(|r| reg.describe(r).cloned())
        .collect();
    let t2 = Instant::now();
    let again = compile(&cluster, &local, &mut reg);
    let second = t2.elapsed();
    let after: Vec<_> = (1..=reg.len() as u32)
        .map(|r| reg.describe(r).cloned())
        .collect();
    assert_eq!(before, after);
    assert_eq!(compiled.endpoints, again.endpoints);

    let mut entries = 0;
    let mut contents = PortContents::default();
    let mut sets = std::collections::BTreeSet::new();
    let mut distinct = std::collections::BTreeSet::new();
    for ep in compiled.endpoints.values() {
        distinct.insert(std::sync::Arc::as_ptr(ep) as usize);
        for allow in endpoint_entries(ep, &mut contents).values() {
            entries += 1;
            if let Allow::Ports(c) = allow
                && !c.is_empty()
            {
                sets.insert(std::sync::Arc::as_ptr(c) as usize);
            }
        }
        assert!(ep.ingress_isolated);
        assert!(
            ep.entries
                .values()
                .any(|a| !matches!(a, PeerAllow::Ports(s) if s.is_empty()))
        );
    }
    eprintln!(
        "synthetic 10k pods/1k policies: build {built:?}; compile 100 endpoints {first:?} (again {second:?}); \
         {} distinct endpoint policies, {entries} pal_pol_v1 entries, {} distinct port sets, {} rules",
        distinct.len(),
        sets.len(),
        reg.len()
    );
}

/// `lint` and `explain` on the synthetic cluster (1,000 pods and 100 policies; with
/// `--release` also 10,000 pods and 1,000 policies): figures only (`--nocapture`).
#[test]
fn lint_and_explain_of_the_synthetic_cluster() {
    use palisade_policy::explain::{Explainer, PolicySet};
    use palisade_policy::lint::{LintInput, lint};
    let small = SyntheticSpec {
        namespaces: 10,
        pods_per_namespace: 100,
        policies_per_namespace: 10,
        local_pods: 1,
        cluster_policies: 0,
    };
    let specs = if cfg!(debug_assertions) {
        vec![small]
    } else {
        vec![small, SyntheticSpec::default()]
    };
    for spec in specs {
        let (cluster, _) = synthetic_cluster(spec);
        let t = Instant::now();
        let report = lint(&LintInput {
            cluster: &cluster,
            services: &[],
            namespaces_known: true,
            read_problems: &[],
        });
        let linted = t.elapsed();
        let set = PolicySet::from_cluster(&cluster);
        let ex = Explainer::new(&cluster, &set, &[]);
        let (a, b) = (cluster.pods[0].key(), cluster.pods[1].key());
        let t = Instant::now();
        let e = ex
            .explain(&a.to_string(), &b.to_string(), None)
            .expect("two pods");
        let explained = t.elapsed();
        let mut codes = std::collections::BTreeMap::new();
        for f in &report.findings {
            *codes.entry(f.code.clone()).or_insert(0) += 1;
        }
        eprintln!(
            "synthetic {} pods/{} policies: lint {linted:?} ({} findings {codes:?}, notes {:?}); explain every port {explained:?} ({} connections)",
            cluster.pods.len(),
            cluster.policies.len(),
            report.findings.len(),
            report.notes,
            e.connections.len()
        );
    }
}

/// The same with 1,000 ClusterNetworkPolicies (Admin and Baseline tiers, every peer kind)
/// mixed in: every endpoint is looked up both ways, and the compile stays deterministic.
#[test]
fn compile_with_1k_cluster_network_policies_mixed_in() {
    let (cluster, local) = synthetic_cluster(SyntheticSpec {
        cluster_policies: 1_000,
        ..SyntheticSpec::default()
    });
    assert_eq!(cluster.cluster_policies.len(), 1_000);
    let mut reg = RuleRegistry::new();
    let t = Instant::now();
    let compiled = compile(&cluster, &local, &mut reg);
    let first = t.elapsed();
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    assert_eq!(compiled.endpoints.len(), 100);
    let again = compile(&cluster, &local, &mut reg);
    assert_eq!(compiled.endpoints, again.endpoints);
    let mut entries = 0;
    let mut sets = std::collections::BTreeSet::new();
    let mut contents = PortContents::default();
    for ep in compiled.endpoints.values() {
        assert!(ep.ingress_isolated && ep.egress_isolated);
        let e = endpoint_entries(ep, &mut contents);
        for allow in e.values() {
            if let Allow::Ports(c) = allow
                && !c.is_empty()
            {
                sets.insert(c.clone());
            }
        }
        entries += e.len();
    }
    eprintln!(
        "synthetic 10k pods/1k policies/1k ClusterNetworkPolicies: compile 100 endpoints \
         {first:?}; {entries} pal_pol_v1 entries, {} distinct port sets, {} rules",
        sets.len(),
        reg.len()
    );
}
