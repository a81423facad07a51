//! palisade CNI plugin library.
//!
//! What the plugin shares with the agent (endpoint records, the agent socket, the pod-CIDR
//! file, the host veth name) lives in `palisade_node_api`; this crate is the plugin itself:
//! its config and environment, the IPAM store, the result, and (feature `plugin`) the
//! netlink/namespace plumbing and the CNI commands (the `palisade` binary).

pub mod config;
pub mod error;
pub mod ipam;
pub mod result;
pub mod version;

#[cfg(feature = "plugin")]
pub mod plugin;

pub use error::Error;
