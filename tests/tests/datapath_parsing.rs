//! Tier 1, what the programs parse and refuse: spoofed sources leaving the pod, malformed
//! headers, unknown ethertypes, an interface without an endpoint, neighbour discovery through
//! isolation, IPv4 and IPv6 fragments (tracked after their first fragment, untracked ones
//! admitted only by rules allowing every port) and IPv6 extension header chains.
//!
//! The real datapath object, loaded into the kernel (verifier included), its maps seeded
//! directly with `palisade_common` types, and crafted frames run through `to_pod` /
//! `from_pod` with `BPF_PROG_TEST_RUN`. Each case checks the TC action and the reason the
//! program counted in `pal_stat_v1`. No network namespace is needed.
//!
//! Split by theme from one file, with `datapath_policy.rs` (policy lookups) and
//! `datapath_conntrack.rs` (tracked flows).

use palisade_common::{
    DIR_INGRESS,
    endpoint::{EP_EGRESS_ISOLATED, EP_HAS_V4, EP_INGRESS_ISOLATED, EndpointInfo},
    packet::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    policy::{PORT_KEY_ANY_PROTO_BITS, PortKey, PortValue},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Prog, TEST_RUN_IFINDEX,
    frame::{self, Ext, TCP_SYN, V4, V6, V6Frag},
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

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
