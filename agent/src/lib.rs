//! palisade-agent: the node agent.
//!
//! source (`source`) -> desired state (`compile` with `palisade_policy`, `services`,
//! `node::addrs`) -> one diff (`applier`) -> maps (`datapath`), all driven from `reconcile`;
//! the TC programs attached to every pod's host-side veth; the node's routes, masquerade and
//! uplinks (`node`).

pub mod agent;
pub mod api;
pub mod applier;
pub mod cniconf;
pub mod compile;
pub mod datapath;
pub mod datapath_ops;
pub mod endpoints;
pub mod insight;
pub mod map_sizes;
pub mod node;
pub mod observe;
pub mod orphans;
pub mod reconcile;
pub mod run;
pub mod services;
pub mod source;
pub mod status;
