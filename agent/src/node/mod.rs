//! The node itself, outside the BPF maps: routes to other nodes' pods and masquerade (synced by
//! a task of their own, off the agent's loop), the uplinks `to_uplink` is attached to, and the
//! node's addresses.

pub mod addrs;
pub mod masquerade;
pub mod network;
pub mod routing;
pub mod uplinks;
