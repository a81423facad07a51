//! This CPU's copies of `pal_ep_v1` entries, so that a packet finds its endpoint in the
//! lines of one per-CPU array slot instead of a hash bucket and an element found through it.
//!
//! Why: with the caches as the rest of the network stack leaves them, the endpoint lookup is
//! two dependent misses (bucket, then element) in front of the conntrack key, which needs the
//! endpoint's `ep_id`; `cargo xtask bench prog`'s cold rows measure it (docs/performance.md,
//! "Cold caches").
//!
//! Validity: a slot holds an entry together with the `pal_epgen_v1` generation read *before*
//! the entry was looked up. Every writer of `pal_ep_v1` adds one to the generation after each
//! change (the agent's `datapath_ops`, the tests' `Datapath`), so a slot filled before a
//! change, or filled during one with the older entry, carries an older generation and is
//! never used again: the next packet looks the entry up. A packet that read the generation
//! before the change may use the older entry, as a packet that looked the hash up just
//! before the change does. Generation 0 (no writer has bumped it: an object loaded by
//! something else) turns the copies off. The slot is `ifindex % SLOTS`; two endpoints that
//! share one take turns (a lookup each time), which costs what no cache costs.
//!
//! Ordering: the generation is read before the entry. On x86 loads are not reordered with
//! older loads; a weakly ordered CPU could satisfy the entry's load first, which the agent
//! covers there by waiting for running programs before a second bump (`datapath_ops`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use palisade_common::endpoint::EndpointInfo;

use crate::{
    maps::{ENDPOINTS, EP_GEN},
    words::copy_words,
};

/// Slots per CPU.
pub const SLOTS: u32 = 8;

#[repr(C)]
pub struct Slot {
    /// `pal_epgen_v1` when the entry was copied; 0: empty.
    pub generation: u64,
    pub ifindex: u32,
    pub _pad: u32,
    pub ep: EndpointInfo,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 56);
const _: () = assert!(core::mem::offset_of!(Slot, ep).is_multiple_of(8));

/// Not pinned: a loaded object starts with empty slots.
#[map(name = "pal_epcache")]
static CACHE: PerCpuArray<Slot> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Copies the endpoint of host veth `ifindex` into `dst` (8-byte aligned); `false` when
/// `pal_ep_v1` has none.
#[inline(always)]
pub fn load(ifindex: u32, dst: &mut EndpointInfo) -> bool {
    // SAFETY: a live array value; a volatile read of one word.
    let generation = EP_GEN
        .get_ptr(0)
        .map_or(0, |g| unsafe { core::ptr::read_volatile(g) });
    let slot = CACHE.get_ptr_mut(ifindex % SLOTS);
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot; a TC program run is not preempted by another run on the
        // same CPU. Both copies are of 8-byte aligned map memory.
        unsafe {
            if generation != 0 && (*slot).generation == generation && (*slot).ifindex == ifindex {
                copy_words(dst, &(*slot).ep);
                return true;
            }
        }
    }
    match ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: copied out, so a concurrent agent update cannot tear it mid-evaluation;
        // 8-byte aligned map values.
        Some(ep) => unsafe {
            copy_words(dst, ep);
            if let Some(slot) = slot {
                copy_words(&mut (*slot).ep, dst);
                (*slot).ifindex = ifindex;
                (*slot).generation = generation;
            }
            true
        },
        None => false,
    }
}
