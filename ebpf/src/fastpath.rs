//! The established fast path: most packets belong to an assured flow whose verdict is already
//! known, and need none of the evaluation's general machinery (the packet record, fragments,
//! ICMP, IPv6 extension headers, the host and Service checks, policy). `established` answers
//! those with a short straight-line read of the headers and one lookup in `pal_cta_v1`
//! (`Answer::Pass`); everything else takes the full evaluation unchanged (`bin/palisade.rs`).
//!
//! It only ever answers what the full evaluation would answer for the same packet and state:
//! `CT_ESTABLISHED` / `CT_REPLY`, nothing written but the timestamp once it is
//! `CT_REFRESH_NS` old. Taken only when all of these hold (else nothing is changed):
//! - not a deferred (Service) judgement, an endpoint without name rules (whose passing
//!   replies may be DNS answers to read);
//! - IPv4 without options, not a fragment, total length within the frame; or IPv6 whose next
//!   header is the transport's (no extension header, so no fragment), payload length within
//!   the frame; TCP (header length at least 20, none of SYN, FIN, RST: those change a flow's
//!   flags) or UDP; the headers in the skb's linear part;
//! - leaving the pod, the source is the pod's address of that family (the anti-spoofing
//!   check; an IPv6 link-local source, which only neighbour discovery may use, is never it);
//! - the first tuple `conntrack::lookup` asks (`reply_first` order) is live in the assured
//!   tier, admitted under the endpoint's current `policy_gen`, not revoked, not a Service flow,
//!   and a reply finds `CT_SEEN_REPLY` already set (every assured entry has it).
//!
//! Because a packet's own flow and the flow it would reply to are never both live, the first
//! tuple's answer is the lookup's answer. The tier-1 test `datapath_fastpath.rs` runs the same
//! packets with the fast path off (`CFG_NO_FAST_PATH`) and on and compares every verdict and
//! every entry.
//!
//! A packet of a flow in the LRU tier (every short connection: flows move to the assured tier
//! only after `CT_REFRESH_NS`) misses here; `Answer::AssuredMiss` tells the full evaluation,
//! whose first lookup is of the same key, to skip that tier for it (`conntrack::lookup`), so
//! such a packet costs no second miss.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use palisade_common::{
    DIR_EGRESS, FAMILY_V4, FAMILY_V6,
    conntrack::{
        CT_REVOKED, CT_SEEN_REPLY, CT_SERVICE, CtKey, ct_age_ns, ct_needs_refresh, idle_timeout_ns,
    },
    endpoint::{EP_HAS_V4, EP_HAS_V6, EP_NAME_RULES, EndpointInfo},
    packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN},
    verdict::{Reason, Verdict},
};

use crate::{clock, conntrack::other_dir, maps::ASSURED};

/// IPv4 header without options, the IPv6 header, and the 20 bytes of a TCP header (UDP uses
/// the first 8).
const IP_HLEN: usize = 20;
const IP6_HLEN: usize = 40;
const L4_LEN: usize = 20;

/// What the fast path found.
pub enum Answer {
    /// A packet of a current assured flow: its verdict.
    Pass(Verdict),
    /// The tuple the full evaluation asks first is not in the assured tier (it may be in the
    /// LRU).
    AssuredMiss,
    /// Anything else: the full evaluation decides.
    Unknown,
}

/// Value of `answer` for `Answer::AssuredMiss` (no reason has it).
const ASSURED_MISS: u32 = u32::MAX;

/// The fast path's answer for this packet. `key` is scratch space for the lookup key.
#[inline(always)]
pub fn established(skb: *mut __sk_buff, dir: u8, ep: &EndpointInfo, key: &mut CtKey) -> Answer {
    match answer(skb, dir, ep, key) {
        0 => Answer::Unknown,
        ASSURED_MISS => Answer::AssuredMiss,
        r => Answer::Pass(Verdict::pass(Reason(r), 0)),
    }
}

/// `established`'s work, as a BPF-to-BPF call: its own stack frame (inlined, its locals pushed
/// `to_pod`'s combined stack past the verifier's 512 bytes), and every way out that falls
/// through returns 0 or `ASSURED_MISS`, so the verifier goes on to the full evaluation in two
/// states. Returns the verdict's reason (`CT_ESTABLISHED` or `CT_REPLY`), `ASSURED_MISS`, or 0.
#[inline(never)]
fn answer(skb: *mut __sk_buff, dir: u8, ep: &EndpointInfo, key: &mut CtKey) -> u32 {
    let ctx = &TcContext::new(skb);
    if ep.flags & EP_NAME_RULES != 0 {
        return 0;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN + IP_HLEN + L4_LEN > end {
        return 0;
    }
    // Read in place (a copy of the headers would take stack the full evaluation needs).
    // SAFETY: every offset read below is under the length checked before it (here
    // ETH_HLEN + IP_HLEN + L4_LEN; for IPv6, ETH_HLEN + IP6_HLEN + L4_LEN, checked first), in
    // bounds of the packet data, as the verifier requires.
    let at = |off: usize| unsafe { *((start + off) as *const u8) };
    let be16_at = |off: usize| u16::from_be_bytes([at(off), at(off + 1)]);
    const IP: usize = ETH_HLEN;
    let v6 = match be16_at(12) {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return 0,
    };
    let (proto, l4) = if !v6 {
        let total = be16_at(IP + 2) as usize;
        if at(IP) != 0x45
            || total < IP_HLEN
            || ETH_HLEN + total > ctx.len() as usize
            || be16_at(IP + 6) & 0x3fff != 0
        {
            return 0;
        }
        (at(IP + 9), IP + IP_HLEN)
    } else {
        // No extension header: the next header is the transport's (else the full
        // evaluation walks them).
        if start + ETH_HLEN + IP6_HLEN + L4_LEN > end
            || at(IP) >> 4 != 6
            || ETH_HLEN + IP6_HLEN + be16_at(IP + 4) as usize > ctx.len() as usize
        {
            return 0;
        }
        (at(IP + 6), IP + IP6_HLEN)
    };
    if proto == IPPROTO_TCP {
        if at(l4 + 12) >> 4 < 5 || at(l4 + 13) & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return 0;
        }
    } else if proto != IPPROTO_UDP {
        return 0;
    }
    let (sport, dport) = ([at(l4), at(l4 + 1)], [at(l4 + 2), at(l4 + 3)]);
    // `conntrack::reply_first`: from the lower port, the reversed tuple admitted the other way.
    let reply = u16::from_be_bytes(sport) < u16::from_be_bytes(dport);
    // The key's addresses: the packet's source and destination, swapped for a reply.
    let (src, dst) = if v6 {
        (IP + 8, IP + 24)
    } else {
        (IP + 12, IP + 16)
    };
    let (ks, kd) = if reply { (dst, src) } else { (src, dst) };
    // Field by field into the scratch key (a `CtKey` built on the stack would take stack the
    // full evaluation needs).
    key.ep_id = ep.ep_id;
    key.dir = if reply { other_dir(dir) } else { dir };
    key.proto = proto;
    key._pad = 0;
    // SAFETY: 4 (IPv4) or 16 (IPv6) bytes at `ks` / `kd`, in bounds as above.
    unsafe {
        if v6 {
            key.family = FAMILY_V6;
            key.saddr_be = core::ptr::read_unaligned((start + ks) as *const [u8; 16]);
            key.daddr_be = core::ptr::read_unaligned((start + kd) as *const [u8; 16]);
        } else {
            key.family = FAMILY_V4;
            set_v4(
                &mut key.saddr_be,
                core::ptr::read_unaligned((start + ks) as *const _),
            );
            set_v4(
                &mut key.daddr_be,
                core::ptr::read_unaligned((start + kd) as *const _),
            );
        }
    }
    (key.sport_be, key.dport_be) = if reply {
        (dport, sport)
    } else {
        (sport, dport)
    };
    // Leaving the pod, the source must be the pod's own address of that family (the key holds
    // it: the source, or the destination of the reversed tuple).
    if dir == DIR_EGRESS {
        let own = if reply { &key.daddr_be } else { &key.saddr_be };
        let ok = if v6 {
            ep.flags & EP_HAS_V6 != 0 && words_eq(own, &ep.ipv6_be)
        } else {
            ep.flags & EP_HAS_V4 != 0
                && u32::from_ne_bytes([own[0], own[1], own[2], own[3]])
                    == u32::from_ne_bytes(ep.ipv4_be)
        };
        if !ok {
            return 0;
        }
    }
    let Some(v) = ASSURED.get_ptr_mut(key) else {
        return ASSURED_MISS;
    };
    let now = clock::now();
    // SAFETY: map value pointer returned by the kernel, valid for this program run.
    let (seen, flags, gen_) = unsafe { ((*v).last_seen_ns, (*v).flags, (*v).policy_gen) };
    if ct_age_ns(now, seen) > idle_timeout_ns(proto, flags)
        || gen_ != ep.policy_gen
        || flags & (CT_REVOKED | CT_SERVICE) != 0
        || (reply && flags & CT_SEEN_REPLY == 0)
    {
        return 0;
    }
    if ct_needs_refresh(now, seen) {
        // SAFETY: as above; a plain store, as the full evaluation's refresh.
        unsafe { (*v).last_seen_ns = now };
    }
    if reply {
        Reason::CT_REPLY.0
    } else {
        Reason::CT_ESTABLISHED.0
    }
}

/// An IPv4 address as the conntrack key holds it: the first 4 bytes, the rest zero.
#[inline(always)]
fn set_v4(dst: &mut [u8; 16], a: [u8; 4]) {
    let p = dst.as_mut_ptr();
    // SAFETY: 4 + 4 + 8 bytes within the 16 of `dst`; unaligned writes.
    unsafe {
        core::ptr::write_unaligned(p as *mut [u8; 4], a);
        core::ptr::write_unaligned(p.add(4) as *mut u32, 0);
        core::ptr::write_unaligned(p.add(8) as *mut u64, 0);
    }
}

/// Whether two 16-byte addresses are equal, compared as two 8-byte words (a slice compare
/// compiles to a `bcmp` call).
#[inline(always)]
fn words_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: 16 bytes each; unaligned reads.
    unsafe {
        let (a, b) = (a.as_ptr() as *const u64, b.as_ptr() as *const u64);
        core::ptr::read_unaligned(a) == core::ptr::read_unaligned(b)
            && core::ptr::read_unaligned(a.add(1)) == core::ptr::read_unaligned(b.add(1))
    }
}
