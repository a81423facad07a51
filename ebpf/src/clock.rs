//! The datapath's clock: CLOCK_MONOTONIC as of the last tick, in nanoseconds.
//!
//! Conntrack ages, flow-event times and learnt-address expiries are seconds-scale, so a
//! tick's precision is plenty; `bpf_ktime_get_coarse_ns` gives exactly that, but it is a
//! helper call, ~17 ns on the benchmark VM (`docs/performance.md`, "Where an established
//! packet's time goes"), paid by every packet. The coarse clock only moves when the tick
//! advances `jiffies`, and `bpf_jiffies64` is inlined by the verifier (a load of
//! `jiffies_64` on 64-bit JITs), so each CPU reads the coarse clock once per jiffy and keeps
//! it in its scratch entry with the jiffy it was read in.
//!
//! The kernel advances `jiffies_64` just before the coarse clock in the same tick
//! (`tick_do_update_jiffies64`, then `update_wall_time`), so a value read in between is kept
//! for that jiffy: at most one more tick behind. Across CPUs the clock was already a tick
//! apart; `palisade_common::conntrack::ct_age_ns` takes a timestamp up to `CT_REFRESH_NS`
//! ahead as age 0.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::SCRATCH;

/// This CPU's last reading of the coarse clock (in `maps::Scratch`). All zero before the
/// first: `jiffies_64` is never 0 (it starts at `INITIAL_JIFFIES`, 5 minutes before the
/// 32-bit wrap), so the first call reads the clock.
#[repr(C)]
pub struct Clock {
    pub jiffies: u64,
    pub ns: u64,
}

/// CLOCK_MONOTONIC as of the last tick (CLOCK_MONOTONIC_COARSE), in nanoseconds.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call, inlined by the verifier.
    let j = unsafe { bpf_jiffies64() };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's scratch entry; a TC program run is not preempted by another run on
    // the same CPU (and a torn pair would only be a tick stale). Callers may hold references
    // to the entry's other fields: only `clock`'s bytes are read and written here, through
    // the raw pointer.
    unsafe {
        let c = &mut (*s).clock;
        if c.jiffies == j {
            return c.ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        c.jiffies = j;
        c.ns = ns;
        ns
    }
}
