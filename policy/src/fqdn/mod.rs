//! Egress by domain name (ClusterNetworkPolicy `domainNames` peers): the meaning, pure.
//!
//! - [`DomainPattern`]: one `domainNames` entry, validated as the CRD does and matched as the
//!   API defines (case-insensitive, with or without the trailing dot, `*.` = one or more
//!   whole labels);
//! - [`dns`]: a bounded reader of DNS response messages (the wire format, RFC 1035 §4);
//! - [`learn`]: which addresses a response teaches a pod with given patterns, and for how long;
//! - [`names`]: what the compile gives the datapath per endpoint (name rules, patterns with
//!   rule masks, one variant compile per name rule) and why that decides as the API says;
//!   [`Learnt`] is the reference evaluator's view of what pods learnt;
//! - [`maps`]: those as the agent's applier writes them.
//!
//! In the compiled policy a `domainNames` peer matches no address: a pod reaches a name only
//! through the addresses it learnt (docs/fqdn.md).

pub mod dns;
pub mod learn;
pub mod maps;
pub mod names;
mod pattern;

pub use maps::{DesiredNames, NamePatterns};
pub use names::{EndpointNames, Learnt, MAX_NAME_RULES, NameRule};
pub use pattern::{DomainPattern, MAX_DOMAIN_NAMES, MAX_NAME_LEN};
