//! Tier 1, conntrack: replies through egress isolation, echo replies by identifier, a policy
//! change cutting forbidden flows and keeping allowed ones, ICMP errors related to tracked
//! flows (both ways), maps pinned by name surviving a reload, idle expiry by protocol and
//! closing state, entries rewritten only when stale or changed, and a reused pod address
//! inheriting no flows.
//!
//! The real datapath object, loaded into the kernel (verifier included), its maps seeded
//! directly with `palisade_common` types, and crafted frames run through `to_pod` /
//! `from_pod` with `BPF_PROG_TEST_RUN`. Each case checks the TC action and the reason the
//! program counted in `pal_stat_v1`. No network namespace is needed.
//!
//! Split by theme from one file, with `datapath_policy.rs` (policy lookups) and
//! `datapath_parsing.rs` (parsing, anti-spoofing, fragments).

use palisade_common::{
    DIR_INGRESS, FAMILY_V4,
    endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TEST_RUN_IFINDEX,
    frame::{self, TCP_ACK, TCP_FIN, TCP_SYN, V4, V6},
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

#[test]
fn privileged_reply_passes_an_egress_isolated_endpoint() {
    let Some(dp) = setup(
        "privileged_reply_passes_an_egress_isolated_endpoint",
        EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 8080), Reason::NOT_ISOLATED);
    let reply =
        V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(8080, 40000, TCP_SYN | TCP_ACK));
    expect(&dp, Prog::FromPod, &reply, Reason::CT_REPLY);
    // A connection the pod opens itself is not a reply.
    let own = V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(8080, 40001, TCP_SYN));
    expect(&dp, Prog::FromPod, &own, Reason::DEFAULT_DENY);
    // FIN marks the flow closing; the reply flag is recorded.
    let fin = V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(8080, 40000, TCP_FIN | TCP_ACK));
    expect(&dp, Prog::FromPod, &fin, Reason::CT_REPLY);
    let ct = dp.conntrack().expect("reading conntrack");
    assert_eq!(ct.len(), 1);
    let flags = ct[0].1.flags;
    assert_eq!(
        flags,
        palisade_common::conntrack::CT_SEEN_REPLY | palisade_common::conntrack::CT_CLOSING
    );
}

#[test]
fn privileged_ping_reply_matches_the_echo_identifier() {
    let Some(dp) = setup(
        "privileged_ping_reply_matches_the_echo_identifier",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    let req = V4::new(POD4, PEER4, IPPROTO_ICMP).frame(&frame::echo(false, true, 99));
    expect(&dp, Prog::FromPod, &req, Reason::NOT_ISOLATED);
    let reply = V4::new(PEER4, POD4, IPPROTO_ICMP).frame(&frame::echo(false, false, 99));
    expect(&dp, Prog::ToPod, &reply, Reason::CT_REPLY);
    let other_id = V4::new(PEER4, POD4, IPPROTO_ICMP).frame(&frame::echo(false, false, 98));
    expect(&dp, Prog::ToPod, &other_id, Reason::DEFAULT_DENY);
    let req6 = V6::new(POD6, PEER6, IPPROTO_ICMPV6).frame(&frame::echo(true, true, 5));
    expect(&dp, Prog::FromPod, &req6, Reason::NOT_ISOLATED);
    let reply6 = V6::new(PEER6, POD6, IPPROTO_ICMPV6).frame(&frame::echo(true, false, 5));
    expect(&dp, Prog::ToPod, &reply6, Reason::CT_REPLY);
}

#[test]
fn privileged_policy_change_cuts_forbidden_flows_and_keeps_allowed_ones() {
    let Some(mut dp) = setup(
        "privileged_policy_change_cuts_forbidden_flows_and_keeps_allowed_ones",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    // Policy A allows TCP 80 and 443 from the peer; policy B only 443.
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 80, 16, 1);
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 443, 16, 2);
    allow_peer(
        &mut dp,
        POLICY_B,
        DIR_INGRESS,
        &PEER4,
        32,
        portset(PORTSET + 1),
    );
    allow_port(&mut dp, PORTSET + 1, IPPROTO_TCP, 443, 16, 7);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::POLICY_ALLOW);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 443), Reason::POLICY_ALLOW);
    let reply80 = V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(80, 40000, TCP_ACK));
    expect(&dp, Prog::FromPod, &reply80, Reason::CT_REPLY);

    // Atomic switch of the endpoint to policy B.
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(EP_INGRESS_ISOLATED, POLICY_B))
        .expect("switching policy");
    // The reply of the port-80 flow is re-checked as the flow was admitted (ingress, port
    // 80): forbidden now, cut, and the entry is marked revoked: every later packet of that
    // flow is cut the same way (never new, so never restored as a reply: ct_eviction.rs).
    expect(&dp, Prog::FromPod, &reply80, Reason::POLICY_CHANGED);
    expect(&dp, Prog::FromPod, &reply80, Reason::POLICY_CHANGED);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::POLICY_CHANGED);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 81), Reason::DEFAULT_DENY);
    // The port-443 flow is still allowed: it passes and is re-stamped with policy B's rule.
    let ack443 = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(40000, 443, TCP_ACK));
    let o = run(&dp, Prog::ToPod, &ack443);
    assert_eq!((o.action, o.reason), (TC_ACT_OK, Reason::CT_ESTABLISHED));
    let ct = dp.conntrack().expect("reading conntrack");
    let e443 = ct
        .iter()
        .find(|(k, _)| k.dport_be == 443u16.to_be_bytes())
        .expect("443 flow tracked");
    assert_eq!((e443.1.policy_gen, e443.1.rule_ref), (POLICY_B, 7));
    let e80 = ct
        .iter()
        .find(|(k, _)| k.dport_be == 80u16.to_be_bytes())
        .expect("80 flow kept");
    assert_ne!(
        e80.1.flags & palisade_common::conntrack::CT_REVOKED,
        0,
        "the forbidden flow's entry is marked revoked"
    );
    // Lifting isolation keeps every flow.
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(0, POLICY_A + 2))
        .expect("switching policy");
    expect(&dp, Prog::ToPod, &ack443, Reason::CT_ESTABLISHED);
}

#[test]
fn privileged_icmp_error_about_a_tracked_flow_is_related() {
    let Some(dp) = setup(
        "privileged_icmp_error_about_a_tracked_flow_is_related",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    let query = V4::new(POD4, PEER4, IPPROTO_UDP).packet(&frame::udp(5353, 53, 8));
    expect_packet(&dp, Prog::FromPod, &query, Reason::NOT_ISOLATED);
    // Port unreachable from the peer, embedding the query.
    let unreach = V4::new(PEER4, POD4, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &query[..28]));
    expect(&dp, Prog::ToPod, &unreach, Reason::CT_RELATED);
    // From a router on the path: the peer of the error is not the flow's peer.
    let ttl = V4::new([10, 9, 9, 9], POD4, IPPROTO_ICMP).frame(&frame::icmp(11, 0, &query[..28]));
    expect(&dp, Prog::ToPod, &ttl, Reason::CT_RELATED);
    // An error about a flow that does not exist.
    let other = V4::new(POD4, PEER4, IPPROTO_UDP).packet(&frame::udp(5353, 54, 8));
    let forged = V4::new(PEER4, POD4, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &other[..28]));
    expect(&dp, Prog::ToPod, &forged, Reason::DEFAULT_DENY);
    // An embedded packet cut too short relates to nothing.
    let cut = V4::new(PEER4, POD4, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &query[..22]));
    expect(&dp, Prog::ToPod, &cut, Reason::DEFAULT_DENY);
    // ICMPv6 packet too big about a TCP flow.
    let syn6 = V6::new(POD6, PEER6, IPPROTO_TCP).packet(&frame::tcp(1000, 443, TCP_SYN));
    expect_packet(&dp, Prog::FromPod, &syn6, Reason::NOT_ISOLATED);
    let ptb = V6::new(PEER6, POD6, IPPROTO_ICMPV6).frame(&frame::icmp(2, 0, &syn6[..48]));
    expect(&dp, Prog::ToPod, &ptb, Reason::CT_RELATED);
}

#[test]
fn privileged_maps_pinned_by_name_survive_a_reload() {
    if !palisade_tests::require_privileges("privileged_maps_pinned_by_name_survive_a_reload") {
        return;
    }
    let mut dp = Datapath::load().expect("loading");
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(EP_INGRESS_ISOLATED, POLICY_A))
        .expect("seeding endpoint");
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, all_ports(1));
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 22), Reason::POLICY_ALLOW);
    for name in [
        palisade_common::maps::ENDPOINTS,
        palisade_common::maps::POLICY,
        palisade_common::maps::CONNTRACK,
        palisade_common::maps::STATS,
    ] {
        assert!(dp.pin_dir().join(name).exists(), "{name} pinned");
    }
    // A new agent loads the object again over the same pins: endpoint, policy, flows and
    // counters are the ones it left.
    let pins = dp.into_pins();
    let dp = Datapath::load_pinned(pins).expect("reloading over pins");
    let ack = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(40000, 22, TCP_ACK));
    expect(&dp, Prog::ToPod, &ack, Reason::CT_ESTABLISHED);
    let allowed = dp
        .counter(DIR_INGRESS, Reason::POLICY_ALLOW)
        .expect("reading counters");
    assert_eq!(allowed.packets, 1);
    assert_eq!(allowed.bytes, syn_in(PEER4, 22).len() as u64);
}

fn ct_entry(proto: u8, sport: u16, dport: u16) -> palisade_common::conntrack::CtKey {
    palisade_common::conntrack::CtKey {
        ep_id: 42,
        dir: DIR_INGRESS,
        proto,
        family: FAMILY_V4,
        _pad: 0,
        saddr_be: addr16(&PEER4),
        daddr_be: addr16(&POD4),
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
    }
}

#[test]
fn privileged_idle_flows_expire_by_protocol_and_closing_state() {
    // Isolated both ways: an expired TCP flow's late segment is not restored as a reply
    // either (ct_eviction.rs), so expiry shows as `DEFAULT_DENY`.
    let Some(mut dp) = setup(
        "privileged_idle_flows_expire_by_protocol_and_closing_state",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    use palisade_common::conntrack::{CT_CLOSING, CT_REFRESH_NS, CtValue};
    let now = palisade_tests::bpf::ktime_now_ns().expect("clock");
    let aged = |secs: u64, flags: u32| CtValue {
        last_seen_ns: now.saturating_sub(secs * 1_000_000_000),
        policy_gen: POLICY_A,
        flags,
        rule_ref: 0,
        _pad: 0,
    };
    // Idle 30 s: a TCP flow lives, a closing TCP flow (10 s) does not.
    dp.set_conntrack(ct_entry(IPPROTO_TCP, 1, 80), aged(30, 0))
        .expect("staging flow");
    dp.set_conntrack(ct_entry(IPPROTO_TCP, 2, 80), aged(30, CT_CLOSING))
        .expect("staging flow");
    // UDP: 60 s.
    dp.set_conntrack(ct_entry(IPPROTO_UDP, 3, 53), aged(30, 0))
        .expect("staging flow");
    dp.set_conntrack(ct_entry(IPPROTO_UDP, 4, 53), aged(90, 0))
        .expect("staging flow");
    let tcp = |sport| V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(sport, 80, TCP_ACK));
    let udp = |sport| V4::new(PEER4, POD4, IPPROTO_UDP).frame(&frame::udp(sport, 53, 4));
    expect(&dp, Prog::ToPod, &tcp(1), Reason::CT_ESTABLISHED);
    expect(&dp, Prog::ToPod, &tcp(2), Reason::DEFAULT_DENY);
    expect(&dp, Prog::ToPod, &udp(3), Reason::CT_ESTABLISHED);
    expect(&dp, Prog::ToPod, &udp(4), Reason::DEFAULT_DENY);
    // A passing packet refreshes the entry (staged 30 s old: older than `CT_REFRESH_NS`).
    // The datapath stamps with the coarse clock, up to a tick behind `now`.
    let ct = dp.conntrack().expect("reading conntrack");
    let e = ct
        .iter()
        .find(|(k, _)| k.sport_be == 1u16.to_be_bytes())
        .expect("flow 1");
    assert!(e.1.last_seen_ns > now - CT_REFRESH_NS);
}

/// A packet of a tracked flow rewrites the entry's timestamp only once it is `CT_REFRESH_NS`
/// old (a busy flow leaves its entry's cache line alone), and its flags whenever they change
/// (a FIN's closing state, with the timestamp, at once).
#[test]
fn privileged_tracked_packets_rewrite_their_entry_only_when_stale_or_changed() {
    let Some(mut dp) = setup(
        "privileged_tracked_packets_rewrite_their_entry_only_when_stale_or_changed",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    use palisade_common::conntrack::{CT_CLOSING, CT_REFRESH_NS, CtValue};
    let now = palisade_tests::bpf::ktime_now_ns().expect("clock");
    let staged = |age: u64| CtValue {
        last_seen_ns: now - age,
        policy_gen: POLICY_A,
        flags: 0,
        rule_ref: 0,
        _pad: 0,
    };
    dp.set_conntrack(ct_entry(IPPROTO_TCP, 1, 80), staged(CT_REFRESH_NS / 2))
        .expect("staging flow");
    dp.set_conntrack(ct_entry(IPPROTO_TCP, 2, 80), staged(2 * CT_REFRESH_NS))
        .expect("staging flow");
    let seg = |sport, flags| V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(sport, 80, flags));
    expect(&dp, Prog::ToPod, &seg(1, TCP_ACK), Reason::CT_ESTABLISHED);
    expect(&dp, Prog::ToPod, &seg(2, TCP_ACK), Reason::CT_ESTABLISHED);
    let entry = |dp: &Datapath, sport: u16| {
        dp.conntrack()
            .expect("reading conntrack")
            .into_iter()
            .find(|(k, _)| k.sport_be == sport.to_be_bytes())
            .expect("tracked flow")
            .1
    };
    assert_eq!(
        entry(&dp, 1).last_seen_ns,
        now - CT_REFRESH_NS / 2,
        "a fresh entry is not rewritten"
    );
    assert!(
        entry(&dp, 2).last_seen_ns > now - CT_REFRESH_NS,
        "a stale entry is refreshed"
    );
    expect(
        &dp,
        Prog::ToPod,
        &seg(1, TCP_ACK | TCP_FIN),
        Reason::CT_ESTABLISHED,
    );
    let e = entry(&dp, 1);
    assert_ne!(
        e.flags & CT_CLOSING,
        0,
        "the FIN's closing state is written"
    );
    assert!(
        e.last_seen_ns > now - CT_REFRESH_NS / 2,
        "with the timestamp"
    );
}

#[test]
fn privileged_icmp_errors_the_pod_sends_relate_to_its_inbound_flows() {
    let Some(dp) = setup(
        "privileged_icmp_errors_the_pod_sends_relate_to_its_inbound_flows",
        EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    // The peer sends UDP to a closed port of the pod (admitted: ingress not isolated)...
    let probe = V4::new(PEER4, POD4, IPPROTO_UDP).packet(&frame::udp(7000, 9, 4));
    expect_packet(&dp, Prog::ToPod, &probe, Reason::NOT_ISOLATED);
    // ...and the pod answers port unreachable: related, though egress is isolated.
    let unreach = V4::new(POD4, PEER4, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &probe[..28]));
    expect(&dp, Prog::FromPod, &unreach, Reason::CT_RELATED);
    // An error about a *reply* of that flow travelling back to the peer, reported by the
    // peer's side: the embedded packet is the pod's reply, same direction as the admission.
    let reply = V4::new(POD4, PEER4, IPPROTO_UDP).packet(&frame::udp(9, 7000, 4));
    let err = V4::new(PEER4, POD4, IPPROTO_ICMP).frame(&frame::icmp(3, 1, &reply[..28]));
    expect(&dp, Prog::ToPod, &err, Reason::CT_RELATED);
    // ICMP errors never create flows.
    assert_eq!(dp.conntrack().expect("reading conntrack").len(), 1);
}

/// Threat model: a pod is deleted and a new pod gets its address (and, in this test, even its
/// host interface index). Flows the old pod had admitted must not admit traffic of the new
/// pod: conntrack keys carry the endpoint id, which the agent never reuses.
#[test]
fn privileged_reused_address_does_not_inherit_the_previous_pods_tracked_flows() {
    let Some(mut dp) = setup(
        "privileged_reused_address_does_not_inherit_the_previous_pods_tracked_flows",
        EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    // The old pod (ep_id 42, not ingress-isolated) accepted a connection from the peer.
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 8080), Reason::NOT_ISOLATED);
    let reply =
        V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(8080, 40000, TCP_SYN | TCP_ACK));
    expect(&dp, Prog::FromPod, &reply, Reason::CT_REPLY);
    // A new pod with the same address on the same interface, isolated both ways, no rules.
    let mut new_pod = endpoint(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED, POLICY_A);
    new_pod.ep_id = 43;
    dp.set_endpoint(TEST_RUN_IFINDEX, new_pod)
        .expect("replacing the endpoint");
    // The old flow's packets are new flows for the new pod, and its policy denies them.
    expect(&dp, Prog::FromPod, &reply, Reason::DEFAULT_DENY);
    let data_in = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(40000, 8080, frame::TCP_ACK));
    expect(&dp, Prog::ToPod, &data_in, Reason::DEFAULT_DENY);
}
