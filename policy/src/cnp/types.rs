//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`, sigs.k8s.io/network-policy-api
//! v0.2.0, experimental channel) as Rust types: serde-compatible with the upstream schema, so
//! one type reads manifests (the directory source) and API objects (the watcher).
//!
//! Fields the upstream schema requires are still `Option` here: a missing one is a validation
//! [`Problem`](crate::Problem) naming the field (`validate_cluster_policy`), not a parse error
//! that would lose the whole object. Field values are validated there too (the CRD's enums,
//! ranges and list sizes), never by serde.
//!
//! `k8s_openapi::Resource` and `Metadata` are implemented, so kube-rs sees it as a resource
//! (its blanket `kube::Resource` impl) and the agent can watch it like the built-in kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// A cluster-wide network policy in the Admin or Baseline tier.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterNetworkPolicy {
    pub metadata: ObjectMeta,
    pub spec: Option<ClusterNetworkPolicySpec>,
    pub status: Option<ClusterNetworkPolicyStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// 0..=1000; lower is evaluated first within a tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<ClusterNetworkPolicySubject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<ClusterNetworkPolicyIngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<ClusterNetworkPolicyEgressRule>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// Exactly one field: pods of the selected namespaces, or selected pods of selected
/// namespaces. Host-network pods are never subjects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods matching `podSelector` in namespaces matching `namespaceSelector` (absent or empty:
/// every namespace).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<ClusterNetworkPolicyIngressPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<ClusterNetworkPolicyEgressPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// Exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyIngressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyEgressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The addresses (`status.addresses`) of the selected Nodes (experimental upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (up to 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Names (Accept rules only): matched by the addresses the cluster DNS service answers
    /// the pod for them (see `docs/fqdn.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// Exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ClusterNetworkPolicyProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ClusterNetworkPolicyProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ClusterNetworkPolicyProtocolPort>,
    /// A container port name of the destination pod (experimental upstream); its protocol is
    /// the container port's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// The shape upstream gives `ClusterNetworkPolicyProtocolTCP`, `...UDP` and `...SCTP` alike.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyProtocolPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// Exactly one field: a port, or an inclusive range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// `start` < `end`, both in 1..=65535.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i32>,
}

impl k8s_openapi::Resource for ClusterNetworkPolicy {
    const API_VERSION: &'static str = "policy.networking.k8s.io/v1alpha2";
    const GROUP: &'static str = "policy.networking.k8s.io";
    const KIND: &'static str = "ClusterNetworkPolicy";
    const VERSION: &'static str = "v1alpha2";
    const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for ClusterNetworkPolicy {
    const LIST_KIND: &'static str = "ClusterNetworkPolicyList";
}

impl k8s_openapi::Metadata for ClusterNetworkPolicy {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The object as it travels: `apiVersion` and `kind` are written (as the API server and
/// `kubectl` do) and accepted, not stored (the type says them).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<M, S, T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    metadata: M,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<T>,
}

impl Serialize for ClusterNetworkPolicy {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        use k8s_openapi::Resource;
        Wire {
            api_version: Some(Self::API_VERSION.to_string()),
            kind: Some(Self::KIND.to_string()),
            metadata: &self.metadata,
            spec: self.spec.as_ref(),
            status: self.status.as_ref(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ClusterNetworkPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w: Wire<ObjectMeta, ClusterNetworkPolicySpec, ClusterNetworkPolicyStatus> =
            Wire::deserialize(d)?;
        Ok(ClusterNetworkPolicy {
            metadata: w.metadata,
            spec: w.spec,
            status: w.status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object in the upstream schema (the shape of `conformance/base` manifests, written
    /// here for the test) reads, and writes back with `apiVersion` and `kind`.
    #[test]
    fn upstream_shaped_object_round_trips() {
        let json = serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "p"},
            "spec": {
                "tier": "Admin",
                "priority": 3,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}},
                "ingress": [{"name": "r", "action": "Deny",
                             "from": [{"namespaces": {"matchLabels": {"t": "x"}}}],
                             "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                           {"udp": {"destinationPort": {"range": {"start": 1, "end": 9}}}},
                                           {"destinationNamedPort": "dns"}]}],
                "egress": [{"action": "Accept", "to": [{"networks": ["10.0.0.0/8"]},
                                                      {"nodes": {}},
                                                      {"domainNames": ["*.example.com"]}]}]
            },
            "status": {"conditions": []}
        });
        let p: ClusterNetworkPolicy = serde_json::from_value(json.clone()).expect("parses");
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.priority, Some(3));
        let proto = &spec.ingress.as_ref().expect("ingress")[0]
            .protocols
            .as_ref()
            .expect("protocols")[1];
        assert_eq!(
            proto.udp.as_ref().and_then(|u| u.destination_port.as_ref()),
            Some(&Port {
                number: None,
                range: Some(PortRange {
                    start: Some(1),
                    end: Some(9)
                })
            })
        );
        assert_eq!(serde_json::to_value(&p).expect("serializes"), json);
    }
}
