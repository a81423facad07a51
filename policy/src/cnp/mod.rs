//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): the Admin and Baseline tiers
//! around namespaced NetworkPolicies. See `docs/policy.md` ("ClusterNetworkPolicy tiers").
//!
//! - [`types`]: the resource, serde-compatible with upstream (and a kube-rs resource).
//! - [`validate_cluster_policy`] / [`prepare_cluster_policy`]: validation as the CRD does it;
//!   peers that cannot be enforced fail closed and are reported as notices (so are
//!   `domainNames` peers, which only learnt addresses match: `fqdn::names`).
//! - Evaluation (the reference evaluator, `eval.rs`) and compilation (`tiers.rs`) read the
//!   prepared form.

#[cfg(feature = "testing")]
pub mod conformance;
pub(crate) mod eval;
pub mod types;
mod validate;

use std::sync::Arc;

pub use types::ClusterNetworkPolicy;
pub use validate::{
    Action, MAX_PRIORITY, MAX_RULES, Tier, cluster_policy_object_name, validate_cluster_policy,
};
pub(crate) use validate::{CnpPeer, CnpPort, CnpRule, NormCnp, Subject, normalize_cnp};

use crate::validate::Problem;

/// A ClusterNetworkPolicy that passed validation, ready to compile (the cluster-scoped
/// counterpart of [`Prepared`](crate::Prepared)); `notices` name the peers that fail closed.
#[derive(Clone, Debug)]
pub struct PreparedCnp {
    pub(crate) policy: Arc<NormCnp>,
    notices: Vec<Problem>,
}

impl PreparedCnp {
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    pub fn tier(&self) -> Tier {
        self.policy.tier
    }

    pub fn priority(&self) -> u32 {
        self.policy.priority
    }

    /// Peers enforced fail-closed (a domainNames peer of a Deny or Pass rule, a peer of an
    /// unknown kind), and each domainNames peer of an Accept rule (what it matches).
    pub fn notices(&self) -> &[Problem] {
        &self.notices
    }
}

/// Validates and normalizes one ClusterNetworkPolicy: `Err` lists every problem.
pub fn prepare_cluster_policy(p: &ClusterNetworkPolicy) -> Result<PreparedCnp, Vec<Problem>> {
    normalize_cnp(p).map(|(policy, notices)| PreparedCnp {
        policy: Arc::new(policy),
        notices,
    })
}
