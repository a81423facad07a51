//! Tier 1: each CPU's copies of endpoint entries (`ebpf/src/ep_cache.rs`). A change of
//! `pal_ep_v1` followed by the `pal_epgen_v1` bump every writer makes reaches the very next
//! packet on a CPU that holds a copy of the old entry; without the bump the copy would stay
//! in use (which shows the copies are used at all); generation 0 turns them off.
//!
//! Each test pins itself to one CPU: `BPF_PROG_TEST_RUN` runs the program on the caller's
//! CPU, so every packet of a test meets the same per-CPU copies.

use palisade_common::{
    endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED},
    packet::IPPROTO_TCP,
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Prog, TEST_RUN_IFINDEX,
    frame::{self, TCP_SYN, V4},
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

/// A new inbound SYN from `PEER4` to port 80, from a fresh source port each time (so no packet
/// meets a flow an earlier one started).
fn syn(port: &mut u16) -> Vec<u8> {
    *port += 1;
    V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(*port, 80, TCP_SYN))
}

fn load(test: &str) -> Option<(Datapath, u16)> {
    let dp = setup(test, 0)?;
    stay_on_this_cpu();
    Some((dp, 30_000))
}

#[test]
fn privileged_an_endpoint_change_reaches_the_next_packet_on_a_cpu_holding_a_copy() {
    let Some((mut dp, mut port)) =
        load("privileged_an_endpoint_change_reaches_the_next_packet_on_a_cpu_holding_a_copy")
    else {
        return;
    };
    // Twice: the first packet copies the entry, the second uses the copy.
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
    // Isolated for ingress, nothing allowed: the next packet is denied.
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(EP_INGRESS_ISOLATED, POLICY_B))
        .expect("isolating");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::DEFAULT_DENY);
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::DEFAULT_DENY);
    // Gone: nothing is judged against a copy of it.
    dp.remove_endpoint(TEST_RUN_IFINDEX).expect("removing");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NO_ENDPOINT);
    // Back, isolated only for egress: ingress passes again.
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(EP_EGRESS_ISOLATED, POLICY_A))
        .expect("re-adding");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
}

#[test]
fn privileged_a_copy_stays_in_use_until_the_generation_moves() {
    let Some((mut dp, mut port)) =
        load("privileged_a_copy_stays_in_use_until_the_generation_moves")
    else {
        return;
    };
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
    // A writer that skips the bump: this CPU keeps judging by its copy.
    dp.set_endpoint_keeping_generation(TEST_RUN_IFINDEX, endpoint(EP_INGRESS_ISOLATED, POLICY_B))
        .expect("isolating without the bump");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
    // The bump retires the copy.
    dp.set_ep_gen(1_000).expect("bumping");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::DEFAULT_DENY);
}

#[test]
fn privileged_generation_zero_turns_the_copies_off() {
    let Some((mut dp, mut port)) = load("privileged_generation_zero_turns_the_copies_off") else {
        return;
    };
    dp.set_ep_gen(0).expect("generation 0");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::NOT_ISOLATED);
    // No copy is kept under generation 0: a write without a bump is seen at once.
    dp.set_endpoint_keeping_generation(TEST_RUN_IFINDEX, endpoint(EP_INGRESS_ISOLATED, POLICY_B))
        .expect("isolating without the bump");
    expect(&dp, Prog::ToPod, &syn(&mut port), Reason::DEFAULT_DENY);
}
