//! The clocks the datapath stamps with, read from user space to stage ages and check stamps.

use anyhow::{Context, Result};

/// `bpf_ktime_get_ns()` as user space sees it (`CLOCK_MONOTONIC`), to stage conntrack ages.
pub fn ktime_now_ns() -> Result<u64> {
    clock_ns(libc::CLOCK_MONOTONIC).context("clock_gettime(CLOCK_MONOTONIC)")
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of the datapath's stamps (`ebpf/src/clock.rs`).
pub fn coarse_now_ns() -> Result<u64> {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE).context("clock_gettime(CLOCK_MONOTONIC_COARSE)")
}

fn clock_ns(clock: libc::clockid_t) -> std::io::Result<u64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}
