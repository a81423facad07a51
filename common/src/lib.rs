//! Palisade's kernel <-> user ABI.
//!
//! Everything here is `#[repr(C)]` plain data shared by the eBPF programs (`ebpf/`) and the
//! agent (`agent/`). It is the single source of truth for map layouts: both sides compile
//! against these types, and every type carries a compile-time size assertion.
//!
//! Rules for this crate (see `docs/` and STYLE): no `bool`, Rust enums or `Option` in map
//! types (integer newtypes instead), explicit padding, byte order in field names, map names
//! declared once with a version suffix.
#![no_std]

pub mod assured;
pub mod conntrack;
pub mod decide;
pub mod endpoint;
pub mod events;
pub mod fqdn;
pub mod maps;
pub mod neighbor;
pub mod packet;
pub mod policy;
pub mod service;
pub mod stats;
pub mod verdict;

#[cfg(feature = "user")]
mod pod_impls;

/// Address family tag used in map keys (values of `AF_INET` / `AF_INET6` on Linux).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

/// Directions, named from the pod's point of view.
/// `DIR_INGRESS`: traffic going to the pod (program `to_pod`).
/// `DIR_EGRESS`: traffic leaving the pod (program `from_pod`).
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;
/// Added to a direction in `pal_pol_v1` keys: the entries of the endpoint's *audited*
/// policies (they decide nothing; see `decide::audit`).
pub const DIR_AUDIT: u8 = 2;
/// `pal_pol_v1` keys of an endpoint's name rule i (egress by domain name) have direction
/// `DIR_NAME_VARIANT + i` (i < `fqdn::MAX_NAME_RULES`): its egress compiled as if rule i's
/// `domainNames` peers matched every address, under the endpoint's own `policy_id`, so the
/// variants switch with the rest of its policy in one `pal_ep_v1` update.
pub const DIR_NAME_VARIANT: u8 = 4;

/// Compares two 16-byte addresses (IPv4 in the first 4 bytes, the rest zero) as two words:
/// `==` on arrays compiles to a `memcmp` call, which the BPF target does not have.
#[inline(always)]
pub fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: both are 16 readable bytes; unaligned reads are allowed on the stack and in maps.
    unsafe {
        let a = core::ptr::read_unaligned(a.as_ptr() as *const [u64; 2]);
        let b = core::ptr::read_unaligned(b.as_ptr() as *const [u64; 2]);
        a[0] == b[0] && a[1] == b[1]
    }
}
