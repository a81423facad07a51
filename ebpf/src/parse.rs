//! Parsing a frame into the few integers the datapath decides on.
//!
//! Every field is read at an offset computed from the headers before it: directly from the
//! packet when it lies in the skb's linear part (a bounds check against `data_end`, the common
//! case, ~15 ns cheaper per read than the helper), else with `bpf_skb_load_bytes`
//! (`TcContext::load`), so non-linear skbs parse like linear ones. Header fields stay integers:
//! an unknown value is a value, never an invalid Rust enum.

use aya_ebpf::programs::TcContext;
use palisade_common::{
    DIR_EGRESS, FAMILY_V4, FAMILY_V6,
    endpoint::{EP_HAS_V4, EP_HAS_V6, EndpointInfo},
    neighbor::{self, ND_NEIGHBOR_ADVERT},
    packet::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
        IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_SCTP, IPPROTO_TCP,
        IPPROTO_UDP, MAX_IPV6_EXT_HEADERS,
    },
    verdict::Reason,
};

/// `Packet.frag`: not a fragment (or an IPv6 atomic fragment).
pub const FRAG_NONE: u8 = 0;
/// First fragment: offset 0, more-fragments set; carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// Any later fragment: no L4 header, ports come from `pal_frag_v1`.
pub const FRAG_LATER: u8 = 2;

pub use palisade_common::packet::{TCP_FIN, TCP_RST, TCP_SYN};

/// A flow's identity as carried by one packet. Addresses and ports in network byte order;
/// IPv4 addresses use the first 4 bytes. An ICMP echo request carries its identifier as
/// (sport = id, dport = 0) and an echo reply as (sport = 0, dport = id), so the reversed tuple
/// of a request is its reply, and a peer's *request* reusing the identifier never is; other
/// protocols without ports use 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tuple {
    pub family: u8,
    pub proto: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl Tuple {
    pub const ZERO: Tuple = Tuple {
        family: 0,
        proto: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: [0; 2],
        dport: [0; 2],
    };
}

/// What the datapath knows about an IP packet after parsing. Lives in the per-CPU scratch
/// map (`maps::SCRATCH`), not on the stack; flags are `u8` (0/1).
#[repr(C)]
pub struct Packet {
    pub t: Tuple,
    /// `FRAG_*`.
    pub frag: u8,
    /// IPv4 identification or IPv6 fragment identification (when `frag != FRAG_NONE`).
    pub frag_id: u32,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// An ICMP error message (v4 types 3, 11, 12; v6 types 1-4).
    pub icmp_error: u8,
    /// The embedded packet of an ICMP error could be parsed into `inner`.
    pub has_inner: u8,
    /// Tuple of the packet embedded in an ICMP error, as it was sent.
    pub inner: Tuple,
    /// ICMP / ICMPv6 type and code (for flow events).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The conntrack lookup's result (`conntrack::CT_*`), set by the evaluation (for flow
    /// events: which packets start a flow).
    pub ct: u8,
    /// Offset of the L4 header and its length (TCP: the data offset; UDP: 8), for the
    /// readers of payloads (`crate::fqdn`). 0 when not parsed (fragments, ICMP).
    pub l4_off: u16,
    pub l4_hlen: u8,
    /// To a multiple of 8 bytes (`zero_words`).
    pub _pad: [u8; 5],
}

impl Packet {
    pub const ZERO: Packet = Packet {
        t: Tuple::ZERO,
        frag: FRAG_NONE,
        frag_id: 0,
        tcp_flags: 0,
        icmp_error: 0,
        has_inner: 0,
        inner: Tuple::ZERO,
        icmp_type: 0,
        icmp_code: 0,
        ct: 0,
        l4_off: 0,
        l4_hlen: 0,
        _pad: [0; 5],
    };
}

/// `size_of::<T>()` bytes at `off`: read directly when they are in the skb's linear part
/// (the common case), else with `bpf_skb_load_bytes`.
#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, Reason> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if off < 0xffff && start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: in bounds of the packet data (checked above, as the verifier requires).
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).map_err(|_| Reason::BAD_HEADER)
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    ((b0 as u16) << 8) | b1 as u16
}

/// Parses the frame into `pkt`.
///
/// `Err` carries a verdict decided by parsing alone: `NEIGHBOR` (ARP, or the IPv6 neighbour
/// discovery and MLD a pod needs, which pass) or a drop reason (`BAD_HEADER`, `UNKNOWN_L3`,
/// `EXT_HEADERS_TOO_LONG`, `SPOOFED_SOURCE` for an ARP sender or a neighbour advertisement
/// target that is not the pod, `ROUTER_MESSAGE` for a router advertisement, redirect or the
/// like leaving the pod: `palisade_common::neighbor`).
#[inline(always)]
pub fn parse(ctx: &TcContext, dir: u8, ep: &EndpointInfo, pkt: &mut Packet) -> Result<(), Reason> {
    let ethertype: [u8; 2] = load(ctx, 12)?;
    let ethertype = be16(ethertype[0], ethertype[1]);
    if ethertype == ETH_P_ARP {
        return arp(ctx, dir, ep);
    }
    if ethertype == ETH_P_IP {
        return ipv4(ctx, dir, pkt);
    }
    if ethertype == ETH_P_IPV6 {
        return ipv6(ctx, dir, ep, pkt);
    }
    Err(Reason::UNKNOWN_L3)
}

/// ARP passes (the pod resolves its gateway). Leaving the pod, an ARP packet whose sender
/// protocol address is neither the pod's IPv4 address nor 0.0.0.0 (an RFC 5227 probe) is a
/// spoofing attempt on the node's neighbour table.
#[inline(always)]
fn arp(ctx: &TcContext, dir: u8, ep: &EndpointInfo) -> Result<(), Reason> {
    // Fixed part for Ethernet/IPv4: hw type, proto type, hlen, plen, op, sha[6], spa[4].
    let spa: [u8; 4] = load(ctx, ETH_HLEN + 14)?;
    if dir == DIR_EGRESS && ep.flags & EP_HAS_V4 != 0 {
        let zero = spa == [0; 4];
        if !zero && u32::from_ne_bytes(spa) != u32::from_ne_bytes(ep.ipv4_be) {
            return Err(Reason::SPOOFED_SOURCE);
        }
    }
    Err(Reason::NEIGHBOR)
}

#[inline(always)]
fn ipv4(ctx: &TcContext, dir: u8, pkt: &mut Packet) -> Result<(), Reason> {
    let h: [u8; 20] = load(ctx, ETH_HLEN)?;
    if h[0] >> 4 != 4 {
        return Err(Reason::BAD_HEADER);
    }
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(Reason::BAD_HEADER);
    }
    let total = be16(h[2], h[3]) as usize;
    let len = ctx.len() as usize;
    // A BIG TCP GSO packet (IPv4 BIG TCP, Linux 6.3, `gso_ipv4_max_size` > 64 KiB) carries
    // total length 0: `iph_set_totlen()` in include/net/ip.h writes 0 above IP_MAX_MTU.
    let big_gso = total == 0 && len > ETH_HLEN + 0xffff;
    if !big_gso && (total < hlen || ETH_HLEN + total > len) {
        return Err(Reason::BAD_HEADER);
    }
    let frag = be16(h[6], h[7]);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    pkt.t.family = FAMILY_V4;
    pkt.t.proto = h[9];
    pkt.t.saddr[..4].copy_from_slice(&h[12..16]);
    pkt.t.daddr[..4].copy_from_slice(&h[16..20]);
    pkt.frag_id = be16(h[4], h[5]) as u32;
    if offset != 0 {
        pkt.frag = FRAG_LATER;
        return Ok(());
    }
    if more {
        pkt.frag = FRAG_FIRST;
    }
    l4(ctx, ETH_HLEN + hlen, dir, None, pkt)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, dir: u8, ep: &EndpointInfo, pkt: &mut Packet) -> Result<(), Reason> {
    let own = (ep.flags & EP_HAS_V6 != 0).then_some(&ep.ipv6_be);
    let h: [u8; 40] = load(ctx, ETH_HLEN)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::BAD_HEADER);
    }
    let payload = be16(h[4], h[5]) as usize;
    if ETH_HLEN + 40 + payload > ctx.len() as usize {
        return Err(Reason::BAD_HEADER);
    }
    pkt.t.family = FAMILY_V6;
    pkt.t.saddr.copy_from_slice(&h[8..24]);
    pkt.t.daddr.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut off = ETH_HLEN + 40;
    // Walk at most MAX_IPV6_EXT_HEADERS extension headers; the header after them must be
    // an upper-layer protocol.
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        i += 1;
        if next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS {
            let e: [u8; 2] = load(ctx, off)?;
            next = e[0];
            off += (e[1] as usize + 1) * 8;
        } else if next == IPPROTO_AH {
            let e: [u8; 2] = load(ctx, off)?;
            next = e[0];
            off += (e[1] as usize + 2) * 4;
        } else if next == IPPROTO_FRAGMENT {
            let e: [u8; 8] = load(ctx, off)?;
            next = e[0];
            off += 8;
            let fo = be16(e[2], e[3]);
            let offset = fo >> 3;
            let more = fo & 1 != 0;
            pkt.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
            if offset != 0 {
                pkt.t.proto = next;
                pkt.frag = FRAG_LATER;
                return Ok(());
            }
            if more {
                pkt.frag = FRAG_FIRST;
            }
        } else {
            pkt.t.proto = next;
            return l4(ctx, off, dir, own, pkt);
        }
    }
    if is_ipv6_ext(next) {
        return Err(Reason::EXT_HEADERS_TOO_LONG);
    }
    pkt.t.proto = next;
    l4(ctx, off, dir, own, pkt)
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    next == IPPROTO_HOPOPTS
        || next == IPPROTO_ROUTING
        || next == IPPROTO_DSTOPTS
        || next == IPPROTO_FRAGMENT
        || next == IPPROTO_AH
}

/// ICMPv4 error types that embed the offending packet: destination unreachable, time
/// exceeded, parameter problem.
#[inline(always)]
fn icmp4_is_error(ty: u8) -> bool {
    ty == 3 || ty == 11 || ty == 12
}

/// ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter
/// problem.
#[inline(always)]
fn icmp6_is_error(ty: u8) -> bool {
    (1..=4).contains(&ty)
}

/// Parses the L4 header at `off` for `pkt.t.proto`; `dir` and the pod's IPv6 address `own`
/// (`None` for IPv4 packets, or a pod without IPv6) decide link messages.
#[inline(always)]
fn l4(
    ctx: &TcContext,
    off: usize,
    dir: u8,
    own: Option<&[u8; 16]>,
    pkt: &mut Packet,
) -> Result<(), Reason> {
    let proto = pkt.t.proto;
    if proto == IPPROTO_TCP {
        let h: [u8; 20] = load(ctx, off)?;
        if h[12] >> 4 < 5 {
            return Err(Reason::BAD_HEADER);
        }
        pkt.t.sport = [h[0], h[1]];
        pkt.t.dport = [h[2], h[3]];
        pkt.tcp_flags = h[13];
        pkt.l4_off = off as u16;
        pkt.l4_hlen = (h[12] >> 4) * 4;
    } else if proto == IPPROTO_UDP {
        let h: [u8; 8] = load(ctx, off)?;
        pkt.t.sport = [h[0], h[1]];
        pkt.t.dport = [h[2], h[3]];
        pkt.l4_off = off as u16;
        pkt.l4_hlen = 8;
    } else if proto == IPPROTO_SCTP {
        let h: [u8; 12] = load(ctx, off)?;
        pkt.t.sport = [h[0], h[1]];
        pkt.t.dport = [h[2], h[3]];
    } else if proto == IPPROTO_ICMP {
        let h: [u8; 8] = load(ctx, off)?;
        let ty = h[0];
        (pkt.icmp_type, pkt.icmp_code) = (ty, h[1]);
        if let Some(r) = neighbor::icmp4_link_message(dir, ty) {
            return Err(r);
        }
        if ty == 8 || ty == 0 {
            echo_ports(&mut pkt.t, ty == 8, [h[4], h[5]]);
        } else if icmp4_is_error(ty) {
            pkt.icmp_error = 1;
            pkt.has_inner = inner_v4(ctx, off + 8, &mut pkt.inner) as u8;
        }
    } else if proto == IPPROTO_ICMPV6 {
        let h: [u8; 8] = load(ctx, off)?;
        let ty = h[0];
        (pkt.icmp_type, pkt.icmp_code) = (ty, h[1]);
        // Neighbour discovery, MLD, router messages: decided by their rule alone.
        let na_target = if dir == DIR_EGRESS && ty == ND_NEIGHBOR_ADVERT {
            load::<[u8; 16]>(ctx, off + 8)?
        } else {
            [0; 16]
        };
        if let Some(r) =
            neighbor::icmp6_link_message(dir, ty, &pkt.t.saddr, &pkt.t.daddr, &na_target, own)
        {
            return Err(r);
        }
        if ty == 128 || ty == 129 {
            echo_ports(&mut pkt.t, ty == 128, [h[4], h[5]]);
        } else if icmp6_is_error(ty) {
            pkt.icmp_error = 1;
            pkt.has_inner = inner_v6(ctx, off + 8, &mut pkt.inner) as u8;
        }
    }
    Ok(())
}

/// Ports of the L4 header embedded in an ICMP error (only its first 8 bytes are guaranteed).
#[inline(always)]
fn inner_ports(ctx: &TcContext, off: usize, t: &mut Tuple) -> bool {
    let Ok(h) = ctx.load::<[u8; 8]>(off) else {
        return false;
    };
    let p = t.proto;
    if p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP {
        t.sport = [h[0], h[1]];
        t.dport = [h[2], h[3]];
    } else if (p == IPPROTO_ICMP && (h[0] == 8 || h[0] == 0))
        || (p == IPPROTO_ICMPV6 && (h[0] == 128 || h[0] == 129))
    {
        echo_ports(t, h[0] == 8 || h[0] == 128, [h[4], h[5]]);
    }
    true
}

/// Echo identifier as ports: a request is (id, 0), a reply (0, id). See [`Tuple`].
#[inline(always)]
fn echo_ports(t: &mut Tuple, request: bool, id: [u8; 2]) {
    if request {
        t.sport = id;
        t.dport = [0, 0];
    } else {
        t.sport = [0, 0];
        t.dport = id;
    }
}

/// Parses the IPv4 packet embedded in an ICMP error. `false` when it is truncated or
/// malformed: the error then relates to no flow.
#[inline(always)]
fn inner_v4(ctx: &TcContext, off: usize, t: &mut Tuple) -> bool {
    let Ok(h) = ctx.load::<[u8; 20]>(off) else {
        return false;
    };
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || hlen < 20 {
        return false;
    }
    t.family = FAMILY_V4;
    t.proto = h[9];
    t.saddr[..4].copy_from_slice(&h[12..16]);
    t.daddr[..4].copy_from_slice(&h[16..20]);
    inner_ports(ctx, off + hlen, t)
}

/// Parses the IPv6 packet embedded in an ICMPv6 error. Extension headers in the embedded
/// packet are not walked: such an error relates to no flow.
#[inline(always)]
fn inner_v6(ctx: &TcContext, off: usize, t: &mut Tuple) -> bool {
    let Ok(h) = ctx.load::<[u8; 40]>(off) else {
        return false;
    };
    if h[0] >> 4 != 6 || is_ipv6_ext(h[6]) {
        return false;
    }
    t.family = FAMILY_V6;
    t.proto = h[6];
    t.saddr.copy_from_slice(&h[8..24]);
    t.daddr.copy_from_slice(&h[24..40]);
    inner_ports(ctx, off + 40, t)
}
