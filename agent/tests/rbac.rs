//! The RBAC objects of deploy/palisade.yaml parse into k8s-openapi types and grants exactly what the Kubernetes API
//! source watches: get/list/watch, nothing more, nothing less.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use palisade_agent::source::kube::WATCHED;

/// The RBAC objects of the install manifest (which also holds the ConfigMap and DaemonSet).
fn manifests() -> Vec<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/palisade.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| {
            matches!(
                v["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(docs: &[serde_json::Value], kind: &str) -> T {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/palisade.yaml");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

#[test]
fn cluster_role_grants_read_on_exactly_the_watched_kinds() {
    let docs = manifests();
    assert_eq!(docs.len(), 3);
    let role: ClusterRole = one(&docs, "ClusterRole");
    assert_eq!(role.metadata.name.as_deref(), Some("palisade-agent"));
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.unwrap_or_default() {
            for r in rule.resources.iter().flatten() {
                assert!(!r.contains('*') && !g.contains('*'), "wildcard in {g}/{r}");
                assert!(
                    granted.insert((g.clone(), r.clone())),
                    "{g}/{r} granted twice"
                );
            }
        }
    }
    let watched: BTreeSet<(String, String)> = WATCHED
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert_eq!(granted, watched);
}

#[test]
fn binding_ties_the_role_to_the_agents_service_account() {
    let docs = manifests();
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "palisade-agent");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa.metadata.name.unwrap());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    assert_eq!(subjects[0].namespace.as_deref(), Some("kube-system"));
}
