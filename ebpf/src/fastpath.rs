//! The established fast path: most packets belong to an assured flow whose verdict is already
//! known, and need none of the evaluation's general machinery (the packet record, fragments,
//! ICMP, IPv6, the host and Service checks, policy). `established` answers those with a short
//! straight-line read of the headers and one lookup in `pal_cta_v1` (`Answer::Pass`); everything
//! else takes the full evaluation unchanged (`bin/palisade.rs`).
//!
//! It only ever answers what the full evaluation would answer for the same packet and state:
//! `CT_ESTABLISHED` / `CT_REPLY`, nothing written but the timestamp once it is
//! `CT_REFRESH_NS` old. Taken only when all of these hold (else nothing is changed):
//! - not a deferred (Service) judgement, an endpoint without name rules (whose passing
//!   replies may be DNS answers to read);
//! - IPv4 without options, not a fragment, total length within the frame; TCP (header length
//!   at least 20, none of SYN, FIN, RST: those change a flow's flags) or UDP; the headers in
//!   the skb's linear part;
//! - leaving the pod, the source is the pod's address (the anti-spoofing check);
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
    DIR_EGRESS, FAMILY_V4,
    conntrack::{
        CT_REVOKED, CT_SEEN_REPLY, CT_SERVICE, CtKey, ct_age_ns, ct_needs_refresh, idle_timeout_ns,
    },
    endpoint::{EP_HAS_V4, EP_NAME_RULES, EndpointInfo},
    packet::{ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN},
    verdict::{Reason, Verdict},
};

use crate::{clock, conntrack::other_dir, maps::ASSURED};

/// IPv4 header without options, and the 20 bytes of a TCP header (UDP uses the first 8).
const IP_HLEN: usize = 20;
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
    // SAFETY: every offset below is under ETH_HLEN + IP_HLEN + L4_LEN, in bounds of the packet
    // data (checked above, as the verifier requires).
    let at = |off: usize| unsafe { *((start + off) as *const u8) };
    let be16_at = |off: usize| u16::from_be_bytes([at(off), at(off + 1)]);
    const IP: usize = ETH_HLEN;
    const L4: usize = ETH_HLEN + IP_HLEN;
    let total = be16_at(IP + 2) as usize;
    if be16_at(12) != ETH_P_IP
        || at(IP) != 0x45
        || total < IP_HLEN
        || ETH_HLEN + total > ctx.len() as usize
        || be16_at(IP + 6) & 0x3fff != 0
    {
        return 0;
    }
    let proto = at(IP + 9);
    if proto == IPPROTO_TCP {
        if at(L4 + 12) >> 4 < 5 || at(L4 + 13) & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return 0;
        }
    } else if proto != IPPROTO_UDP {
        return 0;
    }
    // SAFETY: as above (4-byte reads at IP + 12 and IP + 16).
    let (saddr, daddr): ([u8; 4], [u8; 4]) = unsafe {
        (
            core::ptr::read_unaligned((start + IP + 12) as *const _),
            core::ptr::read_unaligned((start + IP + 16) as *const _),
        )
    };
    if dir == DIR_EGRESS
        && (ep.flags & EP_HAS_V4 == 0
            || u32::from_ne_bytes(saddr) != u32::from_ne_bytes(ep.ipv4_be))
    {
        return 0;
    }
    let (sport, dport) = ([at(L4), at(L4 + 1)], [at(L4 + 2), at(L4 + 3)]);
    // `conntrack::reply_first`: from the lower port, the reversed tuple admitted the other way.
    let reply = u16::from_be_bytes(sport) < u16::from_be_bytes(dport);
    let (kdir, ks, kd, kps, kpd) = if reply {
        (other_dir(dir), daddr, saddr, dport, sport)
    } else {
        (dir, saddr, daddr, sport, dport)
    };
    // Field by field into the scratch key (a `CtKey` built on the stack would take stack the
    // full evaluation needs).
    key.ep_id = ep.ep_id;
    key.dir = kdir;
    key.proto = proto;
    key.family = FAMILY_V4;
    key._pad = 0;
    set_v4(&mut key.saddr_be, ks);
    set_v4(&mut key.daddr_be, kd);
    key.sport_be = kps;
    key.dport_be = kpd;
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
