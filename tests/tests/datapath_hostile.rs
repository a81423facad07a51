//! Tier 1, hostile pods: the real datapath object on crafted frames (`BPF_PROG_TEST_RUN`, no
//! namespace), for packets a compromised pod builds to get past its policy or to disturb the
//! node. The same attacks through real packets in the lab are in `attacks.rs`. Every test
//! states its threat model in its header comment.

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

use palisade_common::{
    endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Prog, TEST_RUN_IFINDEX,
    frame::{self, V4, V6},
};

const OTHER6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6];
const ROUTER4: [u8; 4] = [10, 9, 9, 9];

/// Threat model: an egress-isolated pod with an admitted inbound flow from PEER dresses data
/// for OTHER (which its policy forbids) as ICMP errors about that flow, v4 and v6. An error
/// is related to a flow only when it goes to the source of the packet it reports: to OTHER it
/// is a new packet, denied by default; to PEER it is related.
#[test]
fn privileged_icmp_error_leaving_the_pod_relates_only_when_sent_to_the_flows_peer() {
    let Some(mut dp) = setup(
        "privileged_icmp_error_leaving_the_pod_relates_only_when_sent_to_the_flows_peer",
        EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    let probe = V4::new(PEER4, POD4, IPPROTO_UDP).packet(&frame::udp(7000, 9, 4));
    expect_packet(&dp, Prog::ToPod, &probe, Reason::NOT_ISOLATED);
    let mut body = probe[..28].to_vec();
    body.extend_from_slice(b"data for someone else");
    let tunnel = V4::new(POD4, OTHER4, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &body));
    expect(&dp, Prog::FromPod, &tunnel, Reason::DEFAULT_DENY);
    let real = V4::new(POD4, PEER4, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &body));
    expect(&dp, Prog::FromPod, &real, Reason::CT_RELATED);

    let probe6 = V6::new(PEER6, POD6, IPPROTO_UDP).packet(&frame::udp(7000, 9, 4));
    expect_packet(&dp, Prog::ToPod, &probe6, Reason::NOT_ISOLATED);
    let mut body6 = probe6[..48].to_vec();
    body6.extend_from_slice(b"data for someone else");
    let tunnel6 = V6::new(POD6, OTHER6, IPPROTO_ICMPV6).frame(&frame::icmp(1, 4, &body6));
    expect(&dp, Prog::FromPod, &tunnel6, Reason::DEFAULT_DENY);
    let real6 = V6::new(POD6, PEER6, IPPROTO_ICMPV6).frame(&frame::icmp(1, 4, &body6));
    expect(&dp, Prog::FromPod, &real6, Reason::CT_RELATED);
    // An error about a *reply* of an outbound flow goes to that reply's source, the peer.
    let query = V4::new(POD4, PEER4, IPPROTO_UDP).packet(&frame::udp(5353, 53, 8));
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(EP_INGRESS_ISOLATED, POLICY_A))
        .expect("switching isolation");
    expect_packet(&dp, Prog::FromPod, &query, Reason::NOT_ISOLATED);
    let answer = V4::new(PEER4, POD4, IPPROTO_UDP).packet(&frame::udp(53, 5353, 8));
    let about_reply = |to| V4::new(POD4, to, IPPROTO_ICMP).frame(&frame::icmp(3, 3, &answer[..28]));
    expect(&dp, Prog::FromPod, &about_reply(PEER4), Reason::CT_RELATED);
    expect(
        &dp,
        Prog::FromPod,
        &about_reply(OTHER4),
        Reason::NOT_ISOLATED,
    );
}

/// Threat model: a peer the pod's ingress policy forbids sends the pod ICMP errors that embed
/// the tuple of one of the pod's outbound flows. Errors addressed to the pod are related
/// whoever sends them (a router on the path reports with its own address, and path MTU
/// discovery needs it); one whose outer destination is not the embedded packet's source is
/// not an error about that flow and is judged as a new packet.
#[test]
fn privileged_icmp_error_entering_the_pod_must_be_addressed_to_the_flows_source() {
    let Some(dp) = setup(
        "privileged_icmp_error_entering_the_pod_must_be_addressed_to_the_flows_source",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    let query = V4::new(POD4, PEER4, IPPROTO_UDP).packet(&frame::udp(5353, 53, 8));
    expect_packet(&dp, Prog::FromPod, &query, Reason::NOT_ISOLATED);
    let from_router = V4::new(ROUTER4, POD4, IPPROTO_ICMP).frame(&frame::icmp(11, 0, &query[..28]));
    expect(&dp, Prog::ToPod, &from_router, Reason::CT_RELATED);
    let misaddressed =
        V4::new(ROUTER4, OTHER4, IPPROTO_ICMP).frame(&frame::icmp(11, 0, &query[..28]));
    expect(&dp, Prog::ToPod, &misaddressed, Reason::DEFAULT_DENY);
}

const ALL_NODES6: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const GATEWAY6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Threat model: a pod sends its node the messages a router sends (IPv6 router advertisement
/// and solicitation, redirect, router renumbering; ICMPv4 redirect and router advertisement,
/// here to a node address, which otherwise always passes), hoping the node installs a route
/// or an address from them. A pod is a host: router messages leaving it are dropped
/// (`router_message`) whatever their addresses. Neighbour discovery passes only on the link
/// and only for the pod's own addresses: an advertisement for someone else's address is
/// spoofing, a solicitation to an address off the link is an ordinary packet (judged by
/// policy). Entering the pod, neighbour discovery is the node's (link-local source) only.
#[test]
fn privileged_router_messages_from_a_pod_are_dropped_and_neighbour_discovery_stays_on_the_link() {
    let Some(mut dp) = setup(
        "privileged_router_messages_from_a_pod_are_dropped_and_neighbour_discovery_stays_on_the_link",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    seed_node_host(&mut dp);
    let icmp6 = |src, dst, ty, body: &[u8]| {
        V6::new(src, dst, IPPROTO_ICMPV6).frame(&frame::icmp(ty, 0, body))
    };
    let ra_body = [0u8; 8];
    for (src, dst) in [(LINK_LOCAL6, ALL_NODES6), (POD6, GATEWAY6), (POD6, PEER6)] {
        for ty in [133, 134, 137, 138] {
            let f = icmp6(src, dst, ty, &ra_body);
            expect(&dp, Prog::FromPod, &f, Reason::ROUTER_MESSAGE);
        }
    }
    let embedded = V4::new(POD4, PEER4, IPPROTO_UDP).packet(&frame::udp(1, 2, 0));
    for ty in [5, 9, 10] {
        let f = V4::new(POD4, NODE4, IPPROTO_ICMP).frame(&frame::icmp(ty, 1, &embedded[..28]));
        expect(&dp, Prog::FromPod, &f, Reason::ROUTER_MESSAGE);
    }
    // Neighbour advertisements: for the pod's own address (or link-local) only.
    let na = |src, dst, target: [u8; 16]| icmp6(src, dst, 136, &target);
    expect(
        &dp,
        Prog::FromPod,
        &na(POD6, LINK_LOCAL6, POD6),
        Reason::NEIGHBOR,
    );
    expect(
        &dp,
        Prog::FromPod,
        &na(LINK_LOCAL6, ALL_NODES6, LINK_LOCAL6),
        Reason::NEIGHBOR,
    );
    expect(
        &dp,
        Prog::FromPod,
        &na(POD6, LINK_LOCAL6, PEER6),
        Reason::SPOOFED_SOURCE,
    );
    // Solicitations: on the link they pass; to an address off the link they are ordinary
    // ICMPv6, denied here by egress policy.
    let ns = frame::neighbour_solicitation(POD6, GATEWAY6);
    expect(&dp, Prog::FromPod, &ns, Reason::NEIGHBOR);
    let off_link = icmp6(POD6, OTHER6, 135, &[0u8; 20]);
    expect(&dp, Prog::FromPod, &off_link, Reason::DEFAULT_DENY);
    // Entering the pod: from the node's link-local address, neighbour traffic; forwarded
    // from a peer, an ordinary packet the ingress policy denies.
    let from_node = frame::neighbour_solicitation(LINK_LOCAL6, POD6);
    expect(&dp, Prog::ToPod, &from_node, Reason::NEIGHBOR);
    let forwarded = icmp6(PEER6, POD6, 134, &ra_body);
    expect(&dp, Prog::ToPod, &forwarded, Reason::DEFAULT_DENY);
}
