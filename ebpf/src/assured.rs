//! The assured conntrack tier (`pal_cta_v1`, meaning in `palisade_common::assured`): the
//! moves into it, the per-endpoint counts, the deletion of expired entries met on the way.
//!
//! The two helpers are BPF-to-BPF calls (`inline(never)`): each runs on a rare path (a
//! refresh of a flow's stamp, at most once per `CT_REFRESH_NS` per flow; an expired entry),
//! and a call keeps its map operations out of the many inlined copies of the lookup that the
//! verifier walks.

use palisade_common::{
    assured::{
        ASSURED_BUDGET, CTST_PROMOTED, CTST_REAPED, CTST_REFUSED, Promotion, assurable, promotion,
    },
    conntrack::{CtKey, CtValue},
};

use crate::maps::{ASSURED, ASSURED_COUNT, ASSURED_STATS, CONNTRACK};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = ASSURED_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *c += 1 };
    }
}

/// Adds `delta` (wrapping) to the count of `ep_id`, atomically: programs on other CPUs
/// promote and delete entries of the same endpoint.
#[inline(always)]
fn charge(ep_id: u32, delta: u64) {
    if let Some(c) = ASSURED_COUNT.get_ptr_mut(ep_id) {
        // SAFETY: map value pointer, 8-byte aligned, valid for this program run.
        unsafe { atomic_add(c, delta) };
    }
}

/// `*c += delta` (wrapping), atomically (`BPF_ATOMIC | BPF_ADD`, the `lock xadd` of the BPF
/// instruction set: `core::sync::atomic` has no read-modify-write on this target).
///
/// # Safety
/// `c` points to a live, 8-byte aligned map value.
#[inline(always)]
pub unsafe fn atomic_add(c: *mut u64, delta: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {d}",
            p = in(reg) c,
            d = in(reg) delta,
        )
    };
}

/// Deletes the expired assured entry `k` and, if this delete removed it (not a racing one),
/// uncharges its endpoint. Returns 0 (a call needs a return value the verifier can use).
#[inline(never)]
pub fn reap(k: &CtKey) -> u32 {
    if ASSURED.remove(k).is_ok() {
        charge(k.ep_id, u64::MAX);
        count(CTST_REAPED);
    }
    0
}

/// A passing packet refreshed the stamp of the tracked flow `k` (`v` its live entry, already
/// updated for this packet, in either tier): a flow in the LRU tier that has seen its reply
/// and is not closing moves into the assured tier within its endpoint's budget
/// (`promotion`), else stays, a refusal counted.
///
/// # Safety
/// `v` is the live value of `k` found by this program run's lookup, in either tier.
#[inline(never)]
pub unsafe fn promote(k: &CtKey, v: *mut CtValue) -> u32 {
    // SAFETY: live map value (the caller's lookup).
    let flags = unsafe { (*v).flags };
    if !assurable(flags) {
        return 0;
    }
    // Only an entry of the LRU tier moves: `v` is one when the LRU holds `k` there (an
    // assured flow's refresh finds nothing, a miss once per `CT_REFRESH_NS`).
    if CONNTRACK.get_ptr_mut(k) != Some(v) {
        return 0;
    }
    // One lookup of the count on the common path (the endpoint has promoted before): the
    // pointer is read, then charged.
    let found = ASSURED_COUNT.get_ptr_mut(k.ep_id);
    let charged = found.map_or(0, |c| {
        // SAFETY: map value pointer valid for this program run; an aligned 8-byte load is
        // single-copy atomic.
        unsafe { core::ptr::read_volatile(c) }
    });
    match promotion(flags, charged, ASSURED_BUDGET) {
        Promotion::Stay => return 0,
        Promotion::Refuse => {
            count(CTST_REFUSED);
            return 0;
        }
        Promotion::Promote => {}
    }
    let c = match found {
        Some(c) => c,
        None => {
            // The endpoint's first promotion. A racing first insert of the same count is
            // fine (`BPF_NOEXIST`: one wins).
            let _ = ASSURED_COUNT.insert(k.ep_id, 0u64, BPF_NOEXIST);
            match ASSURED_COUNT.get_ptr_mut(k.ep_id) {
                Some(c) => c,
                None => {
                    // The counts map is full: no count, no promotion (fail closed).
                    count(CTST_REFUSED);
                    return 0;
                }
            }
        }
    };
    // SAFETY: the live LRU entry found by the lookup; copied before it is deleted.
    let moved = unsafe { *v };
    match ASSURED.insert(k, moved, BPF_NOEXIST) {
        Ok(()) => {
            // SAFETY: the count's map value pointer, 8-byte aligned, valid for this run.
            unsafe { atomic_add(c, 1) };
            let _ = CONNTRACK.remove(k);
            count(CTST_PROMOTED);
        }
        // Another CPU promoted the same flow first: the LRU copy is stale.
        Err(e) if e == -EEXIST => {
            let _ = CONNTRACK.remove(k);
        }
        // The tier is full (its `max_entries`, the per-node bound).
        Err(_) => count(CTST_REFUSED),
    }
    0
}
