//! Performance sanity (no timed assertion): 10,000 pods, 1,000 policies, 100 local endpoints.
//! Run `cargo test --release -p palisade-policy --test perf -- --nocapture` for figures.

use std::time::Instant;

use palisade_policy::{
    PeerAllow, RuleRegistry, SyntheticSpec, compile, policy_map_entries, synthetic_cluster,
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
    let mut sets = std::collections::BTreeSet::new();
    let mut distinct = std::collections::BTreeSet::new();
    for ep in compiled.endpoints.values() {
        distinct.insert(std::sync::Arc::as_ptr(ep) as usize);
        entries += policy_map_entries(ep, 1, |s| {
            sets.insert(s.clone());
            1
        })
        .len();
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
