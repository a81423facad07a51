//! Palisade's datapath, shared by the two TC programs in `bin/palisade.rs`.
//!
//! - [`maps`]: every map of the object, named from `palisade_common::maps`, pinned by name.
//! - [`parse`]: L2/L3/L4 parsing into a [`parse::Packet`] (fields read as integers).
//! - [`clock`]: the coarse clock, read once per jiffy.
//! - [`ep_cache`]: this CPU's copies of endpoint entries.
//! - [`conntrack`]: flow and fragment tracking; [`assured`]: its tier that nothing evicts.
//! - [`policy`]: the two LPM lookups that answer "which rule allows this".
//! - [`stats`]: per-(direction, reason) counters.
//! - [`events`]: flow events (one per decision) to the agent's ring buffer.
//! - [`fqdn`]: egress by domain name (DNS answers read, learnt addresses checked).
//! - [`words`]: copies and zeroing of map memory, 8 bytes at a time.
#![no_std]
// `asm!` on the BPF target (the atomic add of `assured::charge`).
#![feature(asm_experimental_arch)]

pub mod assured;
pub mod clock;
pub mod conntrack;
pub mod ep_cache;
pub mod events;
pub mod fastpath;
pub mod fqdn;
pub mod maps;
pub mod parse;
pub mod policy;
pub mod stats;
pub mod words;

/// Compares two 16-byte addresses without `memcmp` (shared with the user side).
pub use palisade_common::addr_eq;
