//! Egress by domain name (ClusterNetworkPolicy `domainNames` peers): the meaning, pure.
//!
//! The datapath is not wired yet: a `domainNames` peer still fails closed (see
//! `cnp/validate.rs`) and docs/fqdn.md says what is planned. What lives here is the meaning
//! the datapath and the reference evaluator will share, testable without a kernel:
//! - [`DomainPattern`]: one `domainNames` entry, validated as the CRD does and matched as the
//!   API defines (case-insensitive, with or without the trailing dot, `*.` = one or more
//!   whole labels);
//! - [`dns`]: a bounded reader of DNS response messages (the wire format, RFC 1035 §4);
//! - [`learn`]: which addresses a response teaches a pod with given patterns, and for how long.

pub mod dns;
pub mod learn;
mod pattern;

pub use pattern::{DomainPattern, MAX_DOMAIN_NAMES, MAX_NAME_LEN};
