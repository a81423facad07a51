//! Tier 1: the datapath's clock (`ebpf/src/clock.rs`). Each CPU reads the coarse monotonic
//! clock once per jiffy and reuses it for the rest of that jiffy; the stamps it writes must
//! still follow CLOCK_MONOTONIC_COARSE as time passes (a reading kept past its jiffy would
//! age every flow it stamps: idle timeouts, learnt-address expiries and event times).

use std::time::Duration;

use palisade_common::{FAMILY_V4, conntrack::CtKey, packet::IPPROTO_TCP, verdict::Reason};
use palisade_tests::bpf::{
    Datapath, Prog,
    frame::{self, TCP_SYN, V4},
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

/// A reading may be one tick behind the coarse clock (the kernel advances `jiffies_64` just
/// before the clock in the same tick): 10 ms covers a tick at any HZ (100 and up).
const TICK_SLACK_NS: u64 = 10_000_000;

fn coarse_ns() -> u64 {
    palisade_tests::bpf::coarse_now_ns().expect("reading the coarse monotonic clock")
}

/// Polls the clock until it has passed `t` (no fixed sleep: the condition is the clock).
fn wait_until(t: u64) {
    while coarse_ns() < t {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stamp_of(dp: &Datapath, sport: u16) -> u64 {
    dp.conntrack()
        .expect("reading conntrack")
        .into_iter()
        .find(|(k, _): &(CtKey, _)| k.family == FAMILY_V4 && k.sport_be == sport.to_be_bytes())
        .unwrap_or_else(|| panic!("flow from port {sport} not tracked"))
        .1
        .last_seen_ns
}

#[test]
fn privileged_flow_stamps_follow_the_coarse_clock_as_jiffies_pass() {
    // Not isolated: every new flow passes and is tracked, stamped with the datapath's clock.
    let Some(dp) = setup(
        "privileged_flow_stamps_follow_the_coarse_clock_as_jiffies_pass",
        0,
    ) else {
        return;
    };
    for i in 0..8u16 {
        let sport = 40_000 + i;
        let before = coarse_ns();
        let syn = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(sport, 80, TCP_SYN));
        expect(&dp, Prog::ToPod, &syn, Reason::NOT_ISOLATED);
        let after = coarse_ns();
        let stamp = stamp_of(&dp, sport);
        assert!(
            stamp + TICK_SLACK_NS >= before && stamp <= after,
            "flow {i}: stamped {stamp}, the coarse clock read {before} before and {after} after"
        );
        // Several jiffies at any HZ before the next flow: a reading kept too long shows.
        wait_until(after + 5 * TICK_SLACK_NS);
    }
}
