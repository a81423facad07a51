//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) semantics: cluster objects in, desired
//! datapath map contents out. Pure: no I/O, no kernel. See `docs/policy.md` for the semantics
//! and the decisions taken where the spec is silent.
//!
//! # API
//! - [`Cluster`] (namespaces with labels, [`PodInfo`]s, k8s-openapi `NetworkPolicy`s) is the
//!   input. [`manifest::parse`] reads Kubernetes YAML/JSON manifests (strictly, within
//!   [`manifest::Limits`]); [`Cluster::from_objects`] builds a cluster from the objects.
//! - [`validate`] lists a policy's [`Problem`]s; [`compile`] skips invalid policies whole and
//!   reports them in [`Compiled::problems`] (the agent decides about last-known-good).
//! - [`prepare`] validates and normalizes one policy; [`compile_prepared`] compiles from
//!   prepared policies, so a caller that compiles repeatedly prepares only what changed.
//! - [`compile`]`(cluster, local_pods, &mut registry)` gives one [`EndpointPolicy`] per local
//!   pod: isolation per direction and a map [`PeerPrefix`] -> [`PeerAllow`]. Every pod of the
//!   cluster is a peer. The [`RuleRegistry`] gives stable `rule_ref`s (>= 1) to
//!   [`RuleId`]s; the agent keeps it across compiles.
//! - [`desired_endpoint`] / [`endpoint_entries`] turn that into the desired state of an
//!   endpoint ([`DesiredEndpoint`]: `pal_pol_v1` keys and shared `pal_port_v1` contents in
//!   `palisade_common::policy` types), the input of the agent's applier.
//! - [`lookup`] emulates the datapath's two LPM lookups over the compiled form;
//!   [`evaluate`] is the reference evaluator, written from the spec text over the objects.
//!   Tests hold the two equal.
//! - [`describe`] renders an endpoint policy for humans.
//! - [`explain`] answers "is FROM -> TO allowed, and why" (pods, addresses, Services via
//!   [`ServiceInfo`]), from the reference evaluator's own rule matching.
//! - [`fqdn`]: egress by domain name. `compile` gives every endpoint with name rules
//!   (egress ClusterNetworkPolicy rules with `domainNames` peers) an [`fqdn::EndpointNames`]
//!   in [`Compiled::names`]: its name rules, patterns with rule masks, and one variant of its
//!   egress per name rule, which the datapath consults for addresses the pod learnt from DNS
//!   ([`fqdn::names`] says why that is the API's answer). [`Evaluator::with_learnt`] gives the
//!   reference evaluator the same learnt facts.
//! - [`lint`] finds policies that do not say what their authors meant (stable codes,
//!   severities, field paths, what the policy does and what was probably meant).
//!
//! # Test fixtures (feature `testing`)
//! Not part of the API the agent links: `conformance` (the upstream netpol model and the case
//! table every tier runs), `synthetic_cluster` (large clusters for benchmarks) and `random`
//! (random clusters and policies as proptest strategies, for the property and differential
//! tests). The policy crate's own tests, the privileged tests and xtask enable the feature.
//!
//! # Compiled form
//! Peer prefixes may nest. Each entry carries the union of every rule (peer) that covers the
//! whole prefix, so the longest match alone answers; a prefix that is an `except` hole of
//! every covering peer is present with an empty port set, which denies and shadows shorter
//! allowing prefixes. Pod peers are /32 and /128 host prefixes, carrying the union with any
//! covering ipBlock too. Port sets are port prefixes (an `endPort` range is split) with the
//! lowest `rule_ref` allowing each port; "all protocols and ports" is [`PeerAllow::AllPorts`].

pub mod cnp;
mod compile;
#[cfg(feature = "testing")]
pub mod conformance;
mod eval;
pub mod explain;
pub mod fqdn;
pub mod lint;
pub mod manifest;
mod model;
mod output;
mod port_space;
mod ports;
mod prefix;
#[cfg(feature = "testing")]
pub mod random;
mod rules;
mod selector;
mod service;
#[cfg(feature = "testing")]
mod synth;
mod tiers;
mod validate;
mod wording;

pub use cnp::{PreparedCnp, prepare_cluster_policy, validate_cluster_policy};
pub use compile::{
    Compiled, EndpointPolicy, PeerAllow, PeerPrefix, Prepared, compile, compile_prepared,
    compile_tiers, prepare,
};
pub use eval::{Decision, DirectionVerdict, Evaluator, Outcome, evaluate, pod_endpoint};
pub use manifest::{NAMESPACE_NAME_LABEL, Object, node_info, pod_info};
pub use model::{
    Cluster, Endpoint, Labels, NamedPort, NodeInfo, PodInfo, PodKey, Protocol, proto_name,
};
pub use output::{
    Allow, DesiredEndpoint, Entries, PortContent, PortContents, compiled_allows, describe,
    desired_endpoint, endpoint_entries, lookup, lookup_peer, port_content,
};
pub use port_space::{PortRange, PortRanges};
pub use ports::{PortPrefix, PortSet};
pub use prefix::Prefix;
pub use rules::{RuleId, RuleKind, RuleRegistry};
pub use service::{ServiceInfo, ServicePort, TargetPort, dns_service, service_info};
#[cfg(feature = "testing")]
pub use synth::{SyntheticSpec, synthetic_cluster};
pub use validate::{Direction, Problem, policy_object_name, validate};
