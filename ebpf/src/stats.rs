//! Counting verdicts in `pal_stat_v1`.

use palisade_common::{stats::stats_index, verdict::Reason};

use crate::maps::STATS;

/// Adds one packet of `bytes` bytes to the (direction, reason) counter. Per-CPU slots, so
/// plain adds are race-free.
#[inline(always)]
pub fn count(dir: u8, reason: Reason, bytes: u32) {
    if let Some(c) = STATS.get_ptr_mut(stats_index(dir, reason.0)) {
        // SAFETY: per-CPU map value, valid for this run and not shared with another CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}
