//! Palisade's datapath, shared by the two TC programs in `bin/palisade.rs`.
//!
//! - [`maps`]: every map of the object, named from `palisade_common::maps`, pinned by name.
//! - [`parse`]: L2/L3/L4 parsing into a [`parse::Packet`] (fields read as integers).
//! - [`conntrack`]: flow and fragment tracking.
//! - [`policy`]: the two LPM lookups that answer "which rule allows this".
//! - [`stats`]: per-(direction, reason) counters.
//! - [`events`]: flow events (one per decision) to the agent's ring buffer.
#![no_std]

pub mod conntrack;
pub mod events;
pub mod maps;
pub mod parse;
pub mod policy;
pub mod stats;

/// Compares two 16-byte addresses without `memcmp` (which the BPF target does not have).
#[inline(always)]
pub fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: both are 16 readable bytes; unaligned reads are allowed on the stack and in maps.
    unsafe {
        let a = core::ptr::read_unaligned(a.as_ptr() as *const [u64; 2]);
        let b = core::ptr::read_unaligned(b.as_ptr() as *const [u64; 2]);
        a[0] == b[0] && a[1] == b[1]
    }
}
