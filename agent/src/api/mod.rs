//! The agent's local socket: one JSON request line, one JSON response line. The messages are
//! the node contract's (`palisade_node_api::socket`), shared with the CNI plugin (`add`, `del`)
//! and `palisadectl` (`status`, `wait`, `endpoints`, `policy`, `flows`).
//!
//! - [`server`]: binding the socket (0600, or 0660 with `--socket-group`), reading bounded
//!   requests with a deadline, peer credentials (only root changes what is enforced);
//! - [`veth`]: what the kernel says about an interface an `add` names (it must be the
//!   plugin's host veth of that attachment, its peer in another namespace).

pub mod server;
pub mod veth;

pub use palisade_node_api::socket::{Request, Response, call};
