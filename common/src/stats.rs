//! `pal_stat_v1` (per-CPU array): packet and byte counters per (direction, reason).
//! Written by the TC programs, read by the agent (metrics, `palisadectl status`).
//! Index = `stats_index(dir, reason)`.

use crate::verdict::REASON_SLOTS;

pub const STATS_SLOTS: u32 = 2 * REASON_SLOTS;

pub const fn stats_index(dir: u8, reason: u32) -> u32 {
    let r = if reason < REASON_SLOTS { reason } else { 0 };
    (dir as u32) * REASON_SLOTS + r
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// `pal_host_v1` (hash): addresses of this node. Key: `HostAddrKey`, value `u32` (1).
/// Traffic between a pod and its own node always passes (kubelet probes). Written by the
/// agent from the node's interfaces, read by the TC programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostAddrKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr_be: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<HostAddrKey>() == 20);

/// `pal_cfg_v1` (array, one entry): datapath settings written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// `CFG_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 8);

/// Emit aya-log debug lines for each verdict (off by default).
pub const CFG_DEBUG_LOG: u32 = 1 << 0;
/// Emit no flow events (`events`); they are on by default.
pub const CFG_NO_FLOW_EVENTS: u32 = 1 << 1;
/// Every packet takes the full evaluation, none the established fast path
/// (`ebpf/src/fastpath.rs`): for the tests that compare the two, and `cargo xtask bench prog`.
/// The agent never sets it.
pub const CFG_NO_FAST_PATH: u32 = 1 << 2;
