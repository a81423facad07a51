//! The agent's local socket: one JSON request line, one JSON response line. The messages are
//! the node contract's (`palisade_node_api::socket`), shared with the CNI plugin (`add`, `del`)
//! and `palisadectl` (`status`, `wait`, `endpoints`, `policy`, `flows`).

pub use palisade_node_api::socket::{Request, Response, call};
