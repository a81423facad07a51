//! palisade-agent: the node agent.
//!
//! watch (source) -> compute (`palisade_policy`) -> diff (`applier`) -> write maps
//! (`datapath`), and attach the TC programs to every pod's host-side veth.

pub mod agent;
pub mod api;
pub mod applier;
pub mod cniconf;
pub mod compile;
pub mod datapath;
pub mod datapath_ops;
pub mod endpoints;
pub mod insight;
pub mod masquerade;
pub mod observe;
pub mod orphans;
pub mod routing;
pub mod run;
pub mod services;
pub mod source;
pub mod status;
