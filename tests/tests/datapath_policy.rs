//! Tier 1, policy lookups: an endpoint without isolation, default deny, exact ports, port
//! ranges, all-ports CIDRs and `except` holes, SCTP, node addresses, egress rules, port sets
//! that do not leak across protocols, and Service traffic judged after translation; also the
//! object's program sizes, its cost per packet, and debug logging leaving verdicts unchanged.
//!
//! The real datapath object, loaded into the kernel (verifier included), its maps seeded
//! directly with `palisade_common` types, and crafted frames run through `to_pod` /
//! `from_pod` with `BPF_PROG_TEST_RUN`. Each case checks the TC action and the reason the
//! program counted in `pal_stat_v1`. No network namespace is needed.
//!
//! Split by theme from one file, with `datapath_parsing.rs` (parsing, anti-spoofing, fragments) and
//! `datapath_conntrack.rs` (tracked flows).

use anyhow::Result;
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED},
    packet::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{PORT_KEY_ANY_PORT_BITS, PORT_KEY_FULL_BITS},
    stats::{CFG_DEBUG_LOG, Config, HostAddrKey},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, TCP_ACK, TCP_SYN, V4, V6},
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

#[test]
fn privileged_datapath_loads_and_reports_program_sizes() {
    let Some(dp) = setup("privileged_datapath_loads_and_reports_program_sizes", 0) else {
        return;
    };
    for prog in [Prog::ToPod, Prog::FromPod, Prog::ToUplink] {
        let (verified, xlated) = dp.program_size(prog).expect("program info");
        println!(
            "{}: verified instructions {verified:?}, translated bytes {xlated:?}",
            prog.name()
        );
    }
}

#[test]
fn privileged_unisolated_endpoint_passes_and_tracks_new_flows() {
    let Some(dp) = setup(
        "privileged_unisolated_endpoint_passes_and_tracks_new_flows",
        0,
    ) else {
        return;
    };
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::NOT_ISOLATED);
    let out = V4::new(POD4, PEER4, IPPROTO_UDP).frame(&frame::udp(5000, 53, 10));
    expect(&dp, Prog::FromPod, &out, Reason::NOT_ISOLATED);
    assert_eq!(dp.conntrack().expect("reading conntrack").len(), 2);
    // The same packet again is an established flow.
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::CT_ESTABLISHED);
}

#[test]
fn privileged_isolated_endpoint_without_rules_denies_by_default() {
    let Some(dp) = setup(
        "privileged_isolated_endpoint_without_rules_denies_by_default",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::DEFAULT_DENY);
    let out = V6::new(POD6, PEER6, IPPROTO_TCP).frame(&frame::tcp(1000, 443, TCP_SYN));
    expect(&dp, Prog::FromPod, &out, Reason::DEFAULT_DENY);
    assert!(dp.conntrack().expect("reading conntrack").is_empty());
}

#[test]
fn privileged_rule_allows_exact_port_only() {
    let Some(mut dp) = setup(
        "privileged_rule_allows_exact_port_only",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 80, 16, 3);
    let o = run(&dp, Prog::ToPod, &syn_in(PEER4, 80));
    assert_eq!((o.action, o.reason), (TC_ACT_OK, Reason::POLICY_ALLOW));
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 81), Reason::DEFAULT_DENY);
    // Same port, other protocol.
    let udp = V4::new(PEER4, POD4, IPPROTO_UDP).frame(&frame::udp(1, 80, 0));
    expect(&dp, Prog::ToPod, &udp, Reason::DEFAULT_DENY);
    // Same port, other peer.
    expect(&dp, Prog::ToPod, &syn_in(OTHER4, 80), Reason::DEFAULT_DENY);
    // The admitted flow remembers its rule.
    let ct = dp.conntrack().expect("reading conntrack");
    assert_eq!(ct.len(), 1);
    assert_eq!(ct[0].1.rule_ref, 3);
    assert_eq!(ct[0].1.policy_gen, POLICY_A);
}

#[test]
fn privileged_rule_allows_a_port_range_split_into_prefixes() {
    let Some(mut dp) = setup(
        "privileged_rule_allows_a_port_range_split_into_prefixes",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    // 8000-8003 is one prefix: the top 14 bits of the port.
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 8000, 14, 4);
    for port in 8000..=8003 {
        expect(&dp, Prog::ToPod, &syn_in(PEER4, port), Reason::POLICY_ALLOW);
    }
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 7999), Reason::DEFAULT_DENY);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 8004), Reason::DEFAULT_DENY);
}

#[test]
fn privileged_all_ports_rule_allows_every_protocol_from_a_cidr() {
    let Some(mut dp) = setup(
        "privileged_all_ports_rule_allows_every_protocol_from_a_cidr",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_INGRESS,
        &[10, 0, 1, 0],
        24,
        all_ports(9),
    );
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 1), Reason::POLICY_ALLOW);
    let udp = V4::new(OTHER4, POD4, IPPROTO_UDP).frame(&frame::udp(1, 65535, 0));
    expect(&dp, Prog::ToPod, &udp, Reason::POLICY_ALLOW);
    let sctp = V4::new(PEER4, POD4, IPPROTO_SCTP).frame(&frame::sctp(1, 9));
    expect(&dp, Prog::ToPod, &sctp, Reason::POLICY_ALLOW);
    expect(
        &dp,
        Prog::ToPod,
        &frame::ping4(PEER4, POD4, 7),
        Reason::POLICY_ALLOW,
    );
    // Outside the /24.
    expect(
        &dp,
        Prog::ToPod,
        &syn_in([10, 0, 2, 1], 1),
        Reason::DEFAULT_DENY,
    );
}

#[test]
fn privileged_except_hole_shadows_the_enclosing_allowed_cidr() {
    let Some(mut dp) = setup(
        "privileged_except_hole_shadows_the_enclosing_allowed_cidr",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    // ipBlock 10.0.0.0/16 except 10.0.1.0/24: the hole is present with no ports.
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_INGRESS,
        &[10, 0, 0, 0],
        16,
        all_ports(1),
    );
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_INGRESS,
        &[10, 0, 1, 0],
        24,
        portset(0),
    );
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::DEFAULT_DENY);
    expect(
        &dp,
        Prog::ToPod,
        &syn_in([10, 0, 2, 9], 80),
        Reason::POLICY_ALLOW,
    );
}

#[test]
fn privileged_sctp_port_rule_matches_sctp_only() {
    let Some(mut dp) = setup(
        "privileged_sctp_port_rule_matches_sctp_only",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_SCTP, 3868, 16, 5);
    let sctp = V4::new(PEER4, POD4, IPPROTO_SCTP).frame(&frame::sctp(1000, 3868));
    expect(&dp, Prog::ToPod, &sctp, Reason::POLICY_ALLOW);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 3868), Reason::DEFAULT_DENY);
}

#[test]
fn privileged_node_addresses_pass_isolated_endpoints() {
    let Some(mut dp) = setup(
        "privileged_node_addresses_pass_isolated_endpoints",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    seed_node_host(&mut dp);
    expect(&dp, Prog::ToPod, &syn_in(NODE4, 8080), Reason::HOST);
    let out = V4::new(POD4, NODE4, IPPROTO_TCP).frame(&frame::tcp(8080, 3333, TCP_ACK));
    expect(&dp, Prog::FromPod, &out, Reason::HOST);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 8080), Reason::DEFAULT_DENY);
}

#[test]
fn privileged_egress_rules_match_the_destination() {
    let Some(mut dp) = setup(
        "privileged_egress_rules_match_the_destination",
        EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_EGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_UDP, 53, 16, 1);
    // An ingress entry for the same peer does not admit egress traffic.
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &OTHER4, 32, all_ports(2));
    let dns = V4::new(POD4, PEER4, IPPROTO_UDP).frame(&frame::udp(5000, 53, 4));
    expect(&dp, Prog::FromPod, &dns, Reason::POLICY_ALLOW);
    let answer = V4::new(PEER4, POD4, IPPROTO_UDP).frame(&frame::udp(53, 5000, 4));
    expect(&dp, Prog::ToPod, &answer, Reason::CT_REPLY);
    let to_other = V4::new(POD4, OTHER4, IPPROTO_UDP).frame(&frame::udp(5000, 53, 4));
    expect(&dp, Prog::FromPod, &to_other, Reason::DEFAULT_DENY);
}

#[test]
fn privileged_debug_logging_does_not_change_verdicts() -> Result<()> {
    let Some(mut dp) = setup(
        "privileged_debug_logging_does_not_change_verdicts",
        EP_INGRESS_ISOLATED,
    ) else {
        return Ok(());
    };
    dp.set_config(Config {
        flags: CFG_DEBUG_LOG,
        _pad: 0,
    })?;
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 1), Reason::DEFAULT_DENY);
    expect(
        &dp,
        Prog::FromPod,
        &frame::arp(POD4, PEER4),
        Reason::NEIGHBOR,
    );
    Ok(())
}

#[test]
fn privileged_port_set_with_other_protocols_does_not_leak_across_protocols() {
    let Some(mut dp) = setup(
        "privileged_port_set_with_other_protocols_does_not_leak_across_protocols",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    // Every UDP port.
    allow_port(&mut dp, PORTSET, IPPROTO_UDP, 0, 0, 1);
    let udp = V4::new(PEER4, POD4, IPPROTO_UDP).frame(&frame::udp(1, 9999, 0));
    expect(&dp, Prog::ToPod, &udp, Reason::POLICY_ALLOW);
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 9999), Reason::DEFAULT_DENY);
    // Full-length key sanity: exact entries use all 56 bits.
    assert_eq!(PORT_KEY_FULL_BITS, PORT_KEY_ANY_PORT_BITS + 16);
}

#[test]
fn privileged_program_cost_per_packet() {
    let Some(mut dp) = setup("privileged_program_cost_per_packet", EP_INGRESS_ISOLATED) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 80, 16, 1);
    let repeat = 100_000;
    let denied = dp
        .time_per_run(Prog::ToPod, &syn_in(PEER4, 81), repeat)
        .expect("timing");
    // The first run admits the flow; the others are established.
    let established = dp
        .time_per_run(Prog::ToPod, &syn_in(PEER4, 80), repeat)
        .expect("timing");
    let arp = dp
        .time_per_run(Prog::FromPod, &frame::arp(POD4, PEER4), repeat)
        .expect("timing");
    println!(
        "per packet (BPF_PROG_TEST_RUN, mean of {repeat}): new flow denied {denied:?}, \
         established {established:?}, ARP {arp:?}"
    );
}

const SVC4: [u8; 4] = [10, 96, 0, 10];
const CLIENT_IFINDEX: u32 = 77;

fn svc_key(addr: [u8; 4]) -> HostAddrKey {
    HostAddrKey {
        family: FAMILY_V4,
        _pad: [0; 3],
        addr_be: addr16(&addr),
    }
}

#[track_caller]
fn counted(dp: &Datapath, dir: u8, reason: Reason) -> u64 {
    dp.counter(dir, reason).expect("reading a counter").packets
}

/// Egress to a Service address is not judged at `from_pod` (the destination is not a pod yet):
/// the packet is marked and its flow tracked as `CT_SERVICE`. After translation, the marked
/// packet is judged as egress of the pod it came from (`skb->ingress_ifindex`) at `to_uplink`
/// (remote backend) or `to_pod` (local backend, before that pod's ingress): an allowed backend
/// passes, a forbidden one is dropped, on the backend's own port. Replies from the Service
/// address match the tracked flow, also after a policy change; the translated flow is
/// re-checked against the new policy.
#[test]
fn privileged_service_traffic_is_judged_after_translation() {
    use palisade_common::{conntrack::CT_SERVICE, service::SVC_MARK};
    // The client under test on the test-run interface, isolated both ways; one egress rule:
    // PEER4 on TCP 8080 (the Service's target port).
    let Some(mut dp) = setup(
        "privileged_service_traffic_is_judged_after_translation",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_EGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 8080, 16, 9);
    dp.add_service(svc_key(SVC4)).unwrap();

    // from_pod: to the Service address, port 80 (no rule names it): deferred and marked.
    let syn = V4::new(POD4, SVC4, IPPROTO_TCP).frame(&frame::tcp(40000, 80, TCP_SYN));
    let (action, mark) = dp
        .run_with_mark(Prog::FromPod, &syn, 0x4000, 0)
        .expect("from_pod");
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(mark, 0x4000 | SVC_MARK, "mark set, other bits kept");
    assert_eq!(counted(&dp, DIR_EGRESS, Reason::SERVICE_DEFERRED), 1);
    let ct = dp.conntrack().unwrap();
    assert!(
        ct.iter()
            .any(|(k, v)| k.daddr_be[..4] == SVC4 && v.flags & CT_SERVICE != 0),
        "the untranslated flow is tracked as CT_SERVICE: {ct:?}"
    );

    // to_uplink: an unmarked packet is not judged (and not counted).
    let other = V4::new(POD4, OTHER4, IPPROTO_TCP).frame(&frame::tcp(40001, 8080, TCP_SYN));
    let before = dp
        .counter(DIR_EGRESS, Reason::DEFAULT_DENY)
        .unwrap()
        .packets;
    let (action, _) = dp
        .run_with_mark(Prog::ToUplink, &other, 0, TEST_RUN_IFINDEX)
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(counted(&dp, DIR_EGRESS, Reason::DEFAULT_DENY), before);

    // to_uplink, translated to the allowed backend and port: passes, mark cleared.
    let allowed = V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(40000, 8080, TCP_SYN));
    let (action, mark) = dp
        .run_with_mark(
            Prog::ToUplink,
            &allowed,
            0x4000 | SVC_MARK,
            TEST_RUN_IFINDEX,
        )
        .unwrap();
    assert_eq!((action, mark), (TC_ACT_OK, 0x4000));
    assert_eq!(counted(&dp, DIR_EGRESS, Reason::POLICY_ALLOW), 1);

    // Translated to a forbidden backend, or to the allowed backend on another port: dropped.
    for (dst, port) in [(OTHER4, 8080), (PEER4, 8081)] {
        let f = V4::new(POD4, dst, IPPROTO_TCP).frame(&frame::tcp(40002, port, TCP_SYN));
        let (action, _) = dp
            .run_with_mark(Prog::ToUplink, &f, SVC_MARK, TEST_RUN_IFINDEX)
            .unwrap();
        assert_eq!(action, TC_ACT_SHOT, "{dst:?}:{port}");
    }
    assert_eq!(counted(&dp, DIR_EGRESS, Reason::DEFAULT_DENY), before + 2);

    // The reply comes back from the Service address (un-translated by the kernel): it is a
    // reply of the tracked flow, at an ingress-isolated pod.
    let reply = V4::new(SVC4, POD4, IPPROTO_TCP).frame(&frame::tcp(80, 40000, TCP_SYN | TCP_ACK));
    expect(&dp, Prog::ToPod, &reply, Reason::CT_REPLY);

    // A local backend: to_pod first judges the sender's egress (the sender's veth is another
    // interface), then the backend's own ingress.
    let mut client = endpoint(EP_EGRESS_ISOLATED, POLICY_B);
    client.ep_id = 43;
    client.ipv4_be = PEER4;
    dp.set_endpoint(CLIENT_IFINDEX, client).unwrap();
    let to_backend = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(41000, 8080, TCP_SYN));
    let (action, _) = dp
        .run_with_mark(Prog::ToPod, &to_backend, SVC_MARK, CLIENT_IFINDEX)
        .unwrap();
    assert_eq!(action, TC_ACT_SHOT, "policy B allows the client nothing");
    allow_peer(&mut dp, POLICY_B, DIR_EGRESS, &POD4, 32, all_ports(11));
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, all_ports(12));
    let (action, _) = dp
        .run_with_mark(Prog::ToPod, &to_backend, SVC_MARK, CLIENT_IFINDEX)
        .unwrap();
    assert_eq!(
        action, TC_ACT_OK,
        "egress of the client and ingress of the backend allow it"
    );

    // Policy change of the first client: the translated flow is re-checked and cut; replies
    // from the Service address still match the CT_SERVICE flow (never re-checked itself).
    dp.set_endpoint(
        TEST_RUN_IFINDEX,
        endpoint(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED, POLICY_B + 1),
    )
    .unwrap();
    let ack = V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(40000, 8080, TCP_ACK));
    let (action, _) = dp
        .run_with_mark(Prog::ToUplink, &ack, SVC_MARK, TEST_RUN_IFINDEX)
        .unwrap();
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(counted(&dp, DIR_EGRESS, Reason::POLICY_CHANGED), 1);
    expect(&dp, Prog::ToPod, &reply, Reason::CT_REPLY);
}
