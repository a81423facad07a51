//! Tier 1: the real datapath object, loaded into the kernel (verifier included), its maps
//! seeded directly with `palisade_common` types, and crafted frames run through `to_pod` /
//! `from_pod` with `BPF_PROG_TEST_RUN`. Each case checks the TC action and the reason the
//! program counted in `pal_stat_v1`. No network namespace is needed.

use anyhow::Result;
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    endpoint::{EP_EGRESS_ISOLATED, EP_HAS_V4, EP_INGRESS_ISOLATED, EndpointInfo},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{
        PORT_KEY_ANY_PORT_BITS, PORT_KEY_ANY_PROTO_BITS, PORT_KEY_FULL_BITS, PortKey, PortValue,
    },
    stats::{CFG_DEBUG_LOG, Config, HostAddrKey},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, Ext, TCP_ACK, TCP_FIN, TCP_SYN, V4, V6, V6Frag},
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

/// Threat: a pod forging its source address to impersonate another pod (whose flows the
/// peer's policy allows) or to poison the node's neighbour table.
#[test]
fn privileged_spoofed_sources_are_dropped_leaving_the_pod() {
    let Some(mut dp) = setup("privileged_spoofed_sources_are_dropped_leaving_the_pod", 0) else {
        return;
    };
    // Even towards the node, which otherwise always passes.
    seed_node_host(&mut dp);
    let forged = V4::new(OTHER4, NODE4, IPPROTO_TCP).frame(&frame::tcp(1, 10250, TCP_SYN));
    expect(&dp, Prog::FromPod, &forged, Reason::SPOOFED_SOURCE);
    let own = V4::new(POD4, NODE4, IPPROTO_TCP).frame(&frame::tcp(1, 10250, TCP_SYN));
    expect(&dp, Prog::FromPod, &own, Reason::HOST);
    let forged6 = V6::new(PEER6, POD6, IPPROTO_UDP).frame(&frame::udp(1, 2, 0));
    expect(&dp, Prog::FromPod, &forged6, Reason::SPOOFED_SOURCE);
    // Link-local sources are for neighbour discovery only.
    let ll = V6::new(LINK_LOCAL6, PEER6, IPPROTO_UDP).frame(&frame::udp(1, 2, 0));
    expect(&dp, Prog::FromPod, &ll, Reason::SPOOFED_SOURCE);
    let ns = frame::neighbour_solicitation(LINK_LOCAL6, PEER6);
    expect(&dp, Prog::FromPod, &ns, Reason::NEIGHBOR);
    // ARP: the sender must be the pod (or 0.0.0.0 for an address probe).
    expect(
        &dp,
        Prog::FromPod,
        &frame::arp(POD4, [169, 254, 1, 1]),
        Reason::NEIGHBOR,
    );
    expect(
        &dp,
        Prog::FromPod,
        &frame::arp([0; 4], POD4),
        Reason::NEIGHBOR,
    );
    expect(
        &dp,
        Prog::FromPod,
        &frame::arp(OTHER4, [169, 254, 1, 1]),
        Reason::SPOOFED_SOURCE,
    );
    // The same addresses going into the pod are no spoofing concern of this pod.
    let inbound = V4::new(OTHER4, POD4, IPPROTO_TCP).frame(&frame::tcp(1, 2, TCP_SYN));
    expect(&dp, Prog::ToPod, &inbound, Reason::NOT_ISOLATED);
    // A pod without an IPv6 address sends no IPv6 at all.
    dp.set_endpoint(
        TEST_RUN_IFINDEX,
        EndpointInfo {
            flags: EP_HAS_V4,
            ..endpoint(0, POLICY_A)
        },
    )
    .expect("updating endpoint");
    let v6 = V6::new(POD6, PEER6, IPPROTO_UDP).frame(&frame::udp(1, 2, 0));
    expect(&dp, Prog::FromPod, &v6, Reason::SPOOFED_SOURCE);
}

#[test]
fn privileged_malformed_headers_are_dropped() {
    let Some(dp) = setup("privileged_malformed_headers_are_dropped", 0) else {
        return;
    };
    let tcp = frame::tcp(1, 80, TCP_SYN);
    // IHL below 5.
    let bad_ihl = V4 {
        ihl: 4,
        ..V4::new(PEER4, POD4, IPPROTO_TCP)
    };
    expect(&dp, Prog::ToPod, &bad_ihl.frame(&tcp), Reason::BAD_HEADER);
    // Total length beyond the frame, and below the header length.
    let long = V4 {
        total_len: Some(1500),
        ..V4::new(PEER4, POD4, IPPROTO_TCP)
    };
    expect(&dp, Prog::ToPod, &long.frame(&tcp), Reason::BAD_HEADER);
    let short = V4 {
        total_len: Some(12),
        ..V4::new(PEER4, POD4, IPPROTO_TCP)
    };
    expect(&dp, Prog::ToPod, &short.frame(&tcp), Reason::BAD_HEADER);
    // Truncated TCP header.
    let trunc = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&tcp[..10]);
    expect(&dp, Prog::ToPod, &trunc, Reason::BAD_HEADER);
    // TCP data offset below 5.
    let mut bad_doff = tcp.clone();
    bad_doff[12] = 4 << 4;
    let f = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&bad_doff);
    expect(&dp, Prog::ToPod, &f, Reason::BAD_HEADER);
    // A frame cut inside the IPv4 header cannot be fed: the kernel's test runner refuses it
    // (EINVAL) before the program runs. Options announced beyond the frame can.
    let mut cut = V4::new(PEER4, POD4, IPPROTO_TCP).frame(&tcp);
    cut.truncate(14 + 12);
    assert!(dp.run_raw(Prog::ToPod, &cut).is_err());
    let opts = V4 {
        ihl: 15,
        total_len: Some(60),
        ..V4::new(PEER4, POD4, IPPROTO_TCP)
    };
    let mut f = opts.frame(&[]);
    f.truncate(14 + 40);
    expect(&dp, Prog::ToPod, &f, Reason::BAD_HEADER);
    // Same refusal for a frame cut inside the IPv6 header.
    let mut cut6 = V6::new(PEER6, POD6, IPPROTO_TCP).frame(&tcp);
    cut6.truncate(14 + 30);
    assert!(dp.run_raw(Prog::ToPod, &cut6).is_err());
    // An IPv6 ethertype carrying a version-4 header.
    let mut wrong_version = V6::new(PEER6, POD6, IPPROTO_TCP).frame(&tcp);
    wrong_version[14] = 0x45;
    expect(&dp, Prog::ToPod, &wrong_version, Reason::BAD_HEADER);
    // IPv6 payload length beyond the frame; truncated UDP over IPv6.
    let v6 = V6 {
        payload_len: Some(400),
        ..V6::new(PEER6, POD6, IPPROTO_TCP)
    };
    expect(&dp, Prog::ToPod, &v6.frame(&tcp), Reason::BAD_HEADER);
    let udp6 = V6::new(PEER6, POD6, IPPROTO_UDP).frame(&frame::udp(1, 2, 0)[..6]);
    expect(&dp, Prog::ToPod, &udp6, Reason::BAD_HEADER);
    // Truncated ARP.
    let mut arp = frame::arp(POD4, PEER4);
    arp.truncate(14 + 10);
    expect(&dp, Prog::FromPod, &arp, Reason::BAD_HEADER);
}

#[test]
fn privileged_unknown_ethertype_is_an_explicit_drop() {
    let Some(dp) = setup("privileged_unknown_ethertype_is_an_explicit_drop", 0) else {
        return;
    };
    for ethertype in [0x88cc_u16, 0x8100, 0x8847, 0x0000] {
        let f = frame::eth(ethertype, &[0u8; 46]);
        expect(&dp, Prog::ToPod, &f, Reason::UNKNOWN_L3);
        expect(&dp, Prog::FromPod, &f, Reason::UNKNOWN_L3);
    }
}

#[test]
fn privileged_interface_without_endpoint_fails_closed() {
    let Some(mut dp) = setup("privileged_interface_without_endpoint_fails_closed", 0) else {
        return;
    };
    dp.remove_endpoint(TEST_RUN_IFINDEX)
        .expect("removing endpoint");
    expect(&dp, Prog::ToPod, &syn_in(PEER4, 80), Reason::NO_ENDPOINT);
    expect(
        &dp,
        Prog::FromPod,
        &frame::arp(POD4, PEER4),
        Reason::NO_ENDPOINT,
    );
}

#[test]
fn privileged_neighbour_traffic_passes_isolated_endpoints() {
    let Some(dp) = setup(
        "privileged_neighbour_traffic_passes_isolated_endpoints",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    expect(
        &dp,
        Prog::ToPod,
        &frame::arp([169, 254, 1, 1], POD4),
        Reason::NEIGHBOR,
    );
    expect(
        &dp,
        Prog::FromPod,
        &frame::arp(POD4, [169, 254, 1, 1]),
        Reason::NEIGHBOR,
    );
    let ns = frame::neighbour_solicitation(LINK_LOCAL6, POD6);
    expect(&dp, Prog::ToPod, &ns, Reason::NEIGHBOR);
    // Echo is not neighbour discovery.
    let ping6 = V6::new(PEER6, POD6, IPPROTO_ICMPV6).frame(&frame::echo(true, true, 1));
    expect(&dp, Prog::ToPod, &ping6, Reason::DEFAULT_DENY);
    // An MLDv2 report from the pod's link-local address to ff02::16 is link-scoped multicast
    // membership, not spoofing; the same message to a unicast peer is spoofed.
    let mld_group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let mld = V6::new(LINK_LOCAL6, mld_group, IPPROTO_ICMPV6).frame(&frame::icmp(143, 0, &[]));
    expect(&dp, Prog::FromPod, &mld, Reason::NEIGHBOR);
    let mld_unicast = V6::new(LINK_LOCAL6, PEER6, IPPROTO_ICMPV6).frame(&frame::icmp(143, 0, &[]));
    expect(&dp, Prog::FromPod, &mld_unicast, Reason::SPOOFED_SOURCE);
}

#[test]
fn privileged_fragments_follow_their_first_fragment() {
    let Some(mut dp) = setup(
        "privileged_fragments_follow_their_first_fragment",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_UDP, 53, 16, 2);
    let first = V4 {
        id: 77,
        more_fragments: true,
        ..V4::new(PEER4, POD4, IPPROTO_UDP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &first.frame(&frame::udp(5000, 53, 16)),
        Reason::POLICY_ALLOW,
    );
    let second = V4 {
        id: 77,
        frag_offset: 3,
        more_fragments: false,
        ..V4::new(PEER4, POD4, IPPROTO_UDP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &second.frame(&[0u8; 24]),
        Reason::CT_ESTABLISHED,
    );
    // A later fragment of a datagram whose first fragment was never seen.
    let orphan = V4 {
        id: 78,
        ..second.clone()
    };
    expect(
        &dp,
        Prog::ToPod,
        &orphan.frame(&[0u8; 24]),
        Reason::FRAGMENT_UNTRACKED,
    );
    // A first fragment to a port no rule allows: its later fragments stay untracked.
    let denied_first = V4 {
        id: 79,
        more_fragments: true,
        ..V4::new(PEER4, POD4, IPPROTO_UDP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &denied_first.frame(&frame::udp(5000, 54, 16)),
        Reason::DEFAULT_DENY,
    );
    let denied_second = V4 {
        id: 79,
        ..second.clone()
    };
    expect(
        &dp,
        Prog::ToPod,
        &denied_second.frame(&[0u8; 24]),
        Reason::FRAGMENT_UNTRACKED,
    );
    // IPv6: a fragment header with offset 0 and M set, then a later one.
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_INGRESS,
        &PEER6,
        128,
        portset(PORTSET),
    );
    let first6 = V6 {
        frag: Some(V6Frag {
            offset: 0,
            more: true,
            id: 0xabcdef,
        }),
        ..V6::new(PEER6, POD6, IPPROTO_UDP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &first6.frame(&frame::udp(5000, 53, 16)),
        Reason::POLICY_ALLOW,
    );
    let second6 = V6 {
        frag: Some(V6Frag {
            offset: 3,
            more: false,
            id: 0xabcdef,
        }),
        ..V6::new(PEER6, POD6, IPPROTO_UDP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &second6.frame(&[0u8; 24]),
        Reason::CT_ESTABLISHED,
    );
    let orphan6 = V6 {
        frag: Some(V6Frag {
            offset: 3,
            more: false,
            id: 1,
        }),
        ..V6::new(PEER6, POD6, IPPROTO_UDP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &orphan6.frame(&[0u8; 24]),
        Reason::FRAGMENT_UNTRACKED,
    );
}

#[test]
fn privileged_untracked_fragment_passes_only_rules_allowing_every_port() {
    let Some(mut dp) = setup(
        "privileged_untracked_fragment_passes_only_rules_allowing_every_port",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    let orphan = |src: [u8; 4]| {
        V4 {
            id: 5,
            frag_offset: 10,
            ..V4::new(src, POD4, IPPROTO_UDP)
        }
        .frame(&[0u8; 16])
    };
    // A port range containing port 0 does not admit a fragment whose port is unknown.
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_UDP, 0, 6, 2);
    expect(&dp, Prog::ToPod, &orphan(PEER4), Reason::FRAGMENT_UNTRACKED);
    // Every UDP port of this peer: admitted.
    allow_port(&mut dp, PORTSET, IPPROTO_UDP, 0, 0, 3);
    expect(&dp, Prog::ToPod, &orphan(PEER4), Reason::POLICY_ALLOW);
    // Every protocol and port of another peer (all-ports entry): admitted.
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &OTHER4, 32, all_ports(4));
    expect(&dp, Prog::ToPod, &orphan(OTHER4), Reason::POLICY_ALLOW);
    // Any-protocol entry of a port set (prefix length 32).
    let third = [10, 0, 1, 7];
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_INGRESS,
        &third,
        32,
        portset(PORTSET + 1),
    );
    let key = PortKey {
        portset_id_be: (PORTSET + 1).to_be_bytes(),
        proto: 0,
        port_be: [0; 2],
        _pad: 0,
    };
    dp.add_port(PORT_KEY_ANY_PROTO_BITS, key, PortValue { rule_ref: 6 })
        .expect("writing port entry");
    expect(&dp, Prog::ToPod, &orphan(third), Reason::POLICY_ALLOW);
}

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
fn privileged_ipv6_extension_headers_are_walked_up_to_the_limit() {
    let Some(mut dp) = setup(
        "privileged_ipv6_extension_headers_are_walked_up_to_the_limit",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_INGRESS,
        &PEER6,
        128,
        portset(PORTSET),
    );
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 443, 16, 1);
    // A fresh source port per packet: each one is a new flow.
    let sport = std::cell::Cell::new(1000u16);
    let tcp = |dport| {
        sport.set(sport.get() + 1);
        frame::tcp(sport.get(), dport, TCP_SYN)
    };
    let chain = vec![
        Ext { kind: 0, len8: 0 },
        Ext { kind: 60, len8: 1 },
        Ext { kind: 43, len8: 2 },
        Ext { kind: 51, len8: 1 },
    ];
    let p = V6 {
        ext: chain.clone(),
        ..V6::new(PEER6, POD6, IPPROTO_TCP)
    };
    expect(&dp, Prog::ToPod, &p.frame(&tcp(443)), Reason::POLICY_ALLOW);
    expect(&dp, Prog::ToPod, &p.frame(&tcp(444)), Reason::DEFAULT_DENY);
    // Exactly the limit (8) passes; one more is refused.
    let eight = V6 {
        ext: vec![Ext { kind: 60, len8: 0 }; 8],
        ..V6::new(PEER6, POD6, IPPROTO_TCP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &eight.frame(&tcp(443)),
        Reason::POLICY_ALLOW,
    );
    let nine = V6 {
        ext: vec![Ext { kind: 60, len8: 0 }; 9],
        ..V6::new(PEER6, POD6, IPPROTO_TCP)
    };
    expect(
        &dp,
        Prog::ToPod,
        &nine.frame(&tcp(443)),
        Reason::EXT_HEADERS_TOO_LONG,
    );
    // A chain cut in the middle of an extension header.
    let mut cut = p.frame(&tcp(443));
    cut.truncate(14 + 40 + 8 + 4);
    let plen = (cut.len() - 54) as u16;
    cut[18..20].copy_from_slice(&plen.to_be_bytes());
    expect(&dp, Prog::ToPod, &cut, Reason::BAD_HEADER);
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
