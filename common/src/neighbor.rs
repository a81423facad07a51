//! What a pod may exchange with its link besides ARP (which `ebpf/src/parse.rs` checks): IPv6
//! neighbour discovery and multicast listener messages, and the router and redirect messages
//! of both families. One pure function per family, called by the datapath's parser and tested
//! here without a kernel.
//!
//! The pod's link is its veth; the only other end is the node. A pod is a host: it resolves
//! its gateway (neighbour solicitation), answers the node's solicitations for its own
//! addresses (neighbour advertisement) and joins multicast groups (MLD). It never needs to
//! advertise routes, prefixes or better first hops: a router advertisement accepted by the
//! node installs a default route and an address on it, a redirect rewrites its routes. Those
//! are dropped leaving the pod, whatever the node's sysctls say (the CNI plugin also sets
//! `accept_ra=0` and `accept_redirects=0` on the host side of the veth).

use crate::verdict::Reason;
use crate::{DIR_EGRESS, addr_eq};

/// ICMPv4 redirect, router advertisement and router solicitation (RFC 792, RFC 1256).
pub const ICMP_REDIRECT: u8 = 5;
pub const ICMP_ROUTER_ADVERT: u8 = 9;
pub const ICMP_ROUTER_SOLICIT: u8 = 10;

/// ICMPv6 types (RFC 4861, RFC 4443, RFC 2710, RFC 3810, RFC 2894, RFC 3122, RFC 3971,
/// RFC 4286).
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
pub const ROUTER_RENUMBERING: u8 = 138;
pub const IND_SOLICIT: u8 = 141;
pub const IND_ADVERT: u8 = 142;
pub const SEND_CERT_PATH_SOLICIT: u8 = 148;
pub const SEND_CERT_PATH_ADVERT: u8 = 149;
pub const MCAST_ROUTER_ADVERT: u8 = 151;
pub const MCAST_ROUTER_SOLICIT: u8 = 152;
pub const MCAST_ROUTER_TERMINATE: u8 = 153;
/// MLD query, report, done (v1) and report (v2).
pub const MLD_QUERY: u8 = 130;
pub const MLD_REPORT: u8 = 131;
pub const MLD_DONE: u8 = 132;
pub const MLD2_REPORT: u8 = 143;

/// Router and link-configuration messages: no host sends them.
#[inline(always)]
pub fn icmp6_is_router_message(ty: u8) -> bool {
    ty == ND_ROUTER_SOLICIT
        || ty == ND_ROUTER_ADVERT
        || ty == ND_REDIRECT
        || ty == ROUTER_RENUMBERING
        || ty == IND_SOLICIT
        || ty == IND_ADVERT
        || ty == SEND_CERT_PATH_SOLICIT
        || ty == SEND_CERT_PATH_ADVERT
        || ty == MCAST_ROUTER_ADVERT
        || ty == MCAST_ROUTER_SOLICIT
        || ty == MCAST_ROUTER_TERMINATE
}

#[inline(always)]
fn is_mld(ty: u8) -> bool {
    ty == MLD_QUERY || ty == MLD_REPORT || ty == MLD_DONE || ty == MLD2_REPORT
}

/// fe80::/10.
#[inline(always)]
pub fn is_link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_unspecified(a: &[u8; 16]) -> bool {
    addr_eq(a, &[0; 16])
}

#[inline(always)]
fn is_multicast(a: &[u8; 16]) -> bool {
    a[0] == 0xff
}

/// Link-local unicast, or multicast of link-local scope (ff02::1, ff02::1:ffXX:XXXX, ...):
/// addresses the node never forwards.
#[inline(always)]
fn on_link(a: &[u8; 16]) -> bool {
    is_link_local(a) || (is_multicast(a) && a[1] & 0x0f == 0x02)
}

/// An ICMPv6 message of type `ty` from `saddr` to `daddr`, seen in direction `dir` at a pod
/// whose IPv6 address is `own` (if it has one). `na_target` is a neighbour advertisement's
/// target address (read only for those, leaving the pod; anything otherwise).
///
/// `Some(reason)` when the message is decided here, `None` when it is an ordinary packet
/// (anti-spoofing, conntrack and policy judge it, as ICMPv6 with port 0).
///
/// Leaving the pod (`DIR_EGRESS`):
/// 1. A router or link-configuration message (`icmp6_is_router_message`): dropped,
///    `ROUTER_MESSAGE`.
/// 2. A neighbour solicitation or advertisement addressed on the link (link-local unicast, or
///    link-scope multicast): its source must be the pod's address or link-local (or `::`, a
///    solicitation for duplicate address detection), and an advertisement's target the pod's
///    address or link-local, else `SPOOFED_SOURCE` (as for an ARP sender); then `NEIGHBOR`.
/// 3. MLD to a multicast group: `NEIGHBOR`.
/// 4. Anything else, a solicitation or advertisement to an address off the link included:
///    `None`. The node would forward such a packet, so it is judged like any other.
///
/// Entering the pod (`DIR_INGRESS`):
/// 1. Neighbour discovery and router messages from a link-local or unspecified source: the
///    node on the link (the kernel never forwards a packet with a link-local source), so
///    `NEIGHBOR`.
/// 2. MLD to a multicast group: `NEIGHBOR`.
/// 3. Anything else (such a message forwarded from elsewhere): `None`.
#[inline(always)]
pub fn icmp6_link_message(
    dir: u8,
    ty: u8,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    na_target: &[u8; 16],
    own: Option<&[u8; 16]>,
) -> Option<Reason> {
    let nd = ty == ND_NEIGHBOR_SOLICIT || ty == ND_NEIGHBOR_ADVERT;
    if dir == DIR_EGRESS {
        if icmp6_is_router_message(ty) {
            return Some(Reason::ROUTER_MESSAGE);
        }
        if nd && on_link(daddr) {
            let own_or_link_local =
                |a: &[u8; 16]| is_link_local(a) || own.is_some_and(|o| addr_eq(a, o));
            let source_ok =
                own_or_link_local(saddr) || (ty == ND_NEIGHBOR_SOLICIT && is_unspecified(saddr));
            let target_ok = ty != ND_NEIGHBOR_ADVERT || own_or_link_local(na_target);
            return Some(if source_ok && target_ok {
                Reason::NEIGHBOR
            } else {
                Reason::SPOOFED_SOURCE
            });
        }
    } else if (nd || icmp6_is_router_message(ty)) && (is_link_local(saddr) || is_unspecified(saddr))
    {
        return Some(Reason::NEIGHBOR);
    }
    if is_mld(ty) && is_multicast(daddr) {
        return Some(Reason::NEIGHBOR);
    }
    None
}

/// An ICMPv4 message of type `ty` seen in direction `dir`: `Some(ROUTER_MESSAGE)` for a
/// redirect or router discovery message leaving the pod (a forwarding node accepts redirects
/// by default: `accept_redirects` must be 1 in `all` and on the device), `None` otherwise.
#[inline(always)]
pub fn icmp4_link_message(dir: u8, ty: u8) -> Option<Reason> {
    (dir == DIR_EGRESS
        && (ty == ICMP_REDIRECT || ty == ICMP_ROUTER_ADVERT || ty == ICMP_ROUTER_SOLICIT))
        .then_some(Reason::ROUTER_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DIR_INGRESS;

    const POD: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const OTHER_POD: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    const LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    const GW: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const SOLICITED: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1];
    const SITE_MCAST: [u8; 16] = [0xff, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const ZERO: [u8; 16] = [0; 16];

    fn out(ty: u8, s: &[u8; 16], d: &[u8; 16], target: &[u8; 16]) -> Option<Reason> {
        icmp6_link_message(DIR_EGRESS, ty, s, d, target, Some(&POD))
    }

    #[test]
    fn router_advertisements_and_redirects_from_a_pod_are_dropped_whatever_the_addresses() {
        for ty in [
            ND_ROUTER_SOLICIT,
            ND_ROUTER_ADVERT,
            ND_REDIRECT,
            ROUTER_RENUMBERING,
            IND_SOLICIT,
            IND_ADVERT,
            SEND_CERT_PATH_SOLICIT,
            SEND_CERT_PATH_ADVERT,
            MCAST_ROUTER_ADVERT,
            MCAST_ROUTER_SOLICIT,
            MCAST_ROUTER_TERMINATE,
        ] {
            for (s, d) in [(&LL, &ALL_NODES), (&POD, &GW), (&POD, &OTHER_POD)] {
                assert_eq!(
                    out(ty, s, d, &ZERO),
                    Some(Reason::ROUTER_MESSAGE),
                    "type {ty}"
                );
            }
        }
    }

    #[test]
    fn neighbour_discovery_on_the_link_passes_for_the_pods_own_addresses() {
        // Resolving the gateway, from the pod's address or its link-local one.
        assert_eq!(
            out(ND_NEIGHBOR_SOLICIT, &POD, &SOLICITED, &ZERO),
            Some(Reason::NEIGHBOR)
        );
        assert_eq!(
            out(ND_NEIGHBOR_SOLICIT, &LL, &GW, &ZERO),
            Some(Reason::NEIGHBOR)
        );
        // Duplicate address detection.
        assert_eq!(
            out(ND_NEIGHBOR_SOLICIT, &ZERO, &SOLICITED, &ZERO),
            Some(Reason::NEIGHBOR)
        );
        // Answering the node for its own address (or its link-local one).
        assert_eq!(
            out(ND_NEIGHBOR_ADVERT, &POD, &LL, &POD),
            Some(Reason::NEIGHBOR)
        );
        assert_eq!(
            out(ND_NEIGHBOR_ADVERT, &LL, &ALL_NODES, &LL),
            Some(Reason::NEIGHBOR)
        );
    }

    #[test]
    fn neighbour_discovery_for_someone_elses_address_is_spoofing() {
        assert_eq!(
            out(ND_NEIGHBOR_ADVERT, &POD, &LL, &OTHER_POD),
            Some(Reason::SPOOFED_SOURCE)
        );
        assert_eq!(
            out(ND_NEIGHBOR_SOLICIT, &OTHER_POD, &SOLICITED, &ZERO),
            Some(Reason::SPOOFED_SOURCE)
        );
        // `::` is for solicitations only.
        assert_eq!(
            out(ND_NEIGHBOR_ADVERT, &ZERO, &ALL_NODES, &POD),
            Some(Reason::SPOOFED_SOURCE)
        );
        // A pod without IPv6 owns only link-local addresses.
        assert_eq!(
            icmp6_link_message(DIR_EGRESS, ND_NEIGHBOR_ADVERT, &POD, &LL, &POD, None),
            Some(Reason::SPOOFED_SOURCE)
        );
    }

    #[test]
    fn neighbour_discovery_off_the_link_is_an_ordinary_packet() {
        // The node would forward these: anti-spoofing and policy judge them.
        assert_eq!(out(ND_NEIGHBOR_SOLICIT, &POD, &OTHER_POD, &ZERO), None);
        assert_eq!(out(ND_NEIGHBOR_ADVERT, &POD, &SITE_MCAST, &POD), None);
        // Echo and errors are not link messages.
        assert_eq!(out(128, &POD, &GW, &ZERO), None);
        assert_eq!(out(1, &POD, &OTHER_POD, &ZERO), None);
    }

    #[test]
    fn multicast_listener_messages_pass_to_groups_only() {
        for ty in [MLD_QUERY, MLD_REPORT, MLD_DONE, MLD2_REPORT] {
            assert_eq!(out(ty, &LL, &ALL_NODES, &ZERO), Some(Reason::NEIGHBOR));
            assert_eq!(out(ty, &LL, &OTHER_POD, &ZERO), None);
            let inbound = icmp6_link_message(DIR_INGRESS, ty, &LL, &ALL_NODES, &ZERO, Some(&POD));
            assert_eq!(inbound, Some(Reason::NEIGHBOR));
        }
    }

    #[test]
    fn entering_the_pod_only_messages_from_the_link_are_neighbour_traffic() {
        let inbound =
            |ty, s: &[u8; 16]| icmp6_link_message(DIR_INGRESS, ty, s, &POD, &ZERO, Some(&POD));
        for ty in [
            ND_NEIGHBOR_SOLICIT,
            ND_NEIGHBOR_ADVERT,
            ND_ROUTER_ADVERT,
            ND_REDIRECT,
        ] {
            assert_eq!(inbound(ty, &LL), Some(Reason::NEIGHBOR), "type {ty}");
            assert_eq!(inbound(ty, &ZERO), Some(Reason::NEIGHBOR), "type {ty}");
            // Forwarded from another pod or host: not neighbour traffic (policy judges it).
            assert_eq!(inbound(ty, &OTHER_POD), None, "type {ty}");
        }
    }

    #[test]
    fn icmpv4_redirects_and_router_discovery_from_a_pod_are_dropped() {
        for ty in [ICMP_REDIRECT, ICMP_ROUTER_ADVERT, ICMP_ROUTER_SOLICIT] {
            assert_eq!(
                icmp4_link_message(DIR_EGRESS, ty),
                Some(Reason::ROUTER_MESSAGE)
            );
            assert_eq!(icmp4_link_message(DIR_INGRESS, ty), None);
        }
        for ty in [0, 3, 8, 11] {
            assert_eq!(icmp4_link_message(DIR_EGRESS, ty), None);
        }
    }
}
