//! Flow tracking (`pal_ct_v1`) and fragment tracking (`pal_frag_v1`).
//!
//! A flow is keyed by the endpoint, the direction it was admitted in and its tuple in that
//! direction. A packet matches its own tuple in its own direction (established) or its
//! reversed tuple admitted in the other direction (a reply). An ICMP error matches through the
//! packet it embeds (related). Entries idle longer than their timeout count as absent.
//!
//! Two tiers hold the entries (`palisade_common::assured`): `pal_cta_v1` (assured flows, which
//! have seen a reply; nothing evicts them) and `pal_ct_v1` (the LRU, every other flow). An
//! entry is in exactly one of them; every lookup asks the assured tier first (the packets of
//! established flows, most packets, find their entry with one lookup), then the LRU.
//!
//! A packet asks first for the tuple it most likely belongs to (`reply_first`): its own, or
//! the reversed one when it comes from the lower port (a server's reply). The order never
//! changes the answer (a packet's own flow and the flow it replies to are never both live:
//! a packet that would admit the one finds the other and is its reply; only the first packets
//! of both, racing on two CPUs, can admit both, and either answer passes them), only how many
//! lookups a reply costs.

use palisade_common::{
    DIR_EGRESS, DIR_INGRESS,
    conntrack::{
        CtKey, CtValue, FragKey, FragValue, ct_age_ns, icmp_error_addressed_to_sender,
        idle_timeout_ns,
    },
    decide::CtMatch,
};

use crate::{
    assured,
    maps::{ASSURED, CONNTRACK, FRAGMENTS},
    parse::{Packet, Tuple},
};

#[inline(always)]
pub fn other_dir(dir: u8) -> u8 {
    if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

/// Key of `t` admitted in `dir` at endpoint `ep_id`.
#[inline(always)]
pub fn key(ep_id: u32, dir: u8, t: &Tuple) -> CtKey {
    CtKey {
        ep_id,
        dir,
        proto: t.proto,
        family: t.family,
        _pad: 0,
        saddr_be: t.saddr,
        daddr_be: t.daddr,
        sport_be: t.sport,
        dport_be: t.dport,
    }
}

/// Key of the reverse of `t` (the flow `t` replies to) admitted in `dir`.
#[inline(always)]
pub fn reversed_key(ep_id: u32, dir: u8, t: &Tuple) -> CtKey {
    CtKey {
        ep_id,
        dir,
        proto: t.proto,
        family: t.family,
        _pad: 0,
        saddr_be: t.daddr,
        daddr_be: t.saddr,
        sport_be: t.dport,
        dport_be: t.sport,
    }
}

#[inline(always)]
fn timeout(proto: u8, flags: u32) -> u64 {
    idle_timeout_ns(proto, flags)
}

/// A live (not expired) entry for `k`, assured tier first (unless `ask_assured` is false: the
/// caller just found `k` absent there). An expired assured entry is deleted on the way
/// (`assured::reap`); the LRU's expired entries are left to its eviction.
#[inline(always)]
fn live(k: &CtKey, now: u64, ask_assured: bool) -> Option<*mut CtValue> {
    if ask_assured && let Some(v) = ASSURED.get_ptr_mut(k) {
        // SAFETY: map value pointer returned by the kernel, valid for this program run.
        let (seen, flags) = unsafe { ((*v).last_seen_ns, (*v).flags) };
        if ct_age_ns(now, seen) <= timeout(k.proto, flags) {
            return Some(v);
        }
        assured::reap(k);
    }
    let v = CONNTRACK.get_ptr_mut(k)?;
    // SAFETY: map value pointer returned by the kernel, valid for this program run.
    let (seen, flags) = unsafe { ((*v).last_seen_ns, (*v).flags) };
    if ct_age_ns(now, seen) > timeout(k.proto, flags) {
        return None;
    }
    Some(v)
}

/// `lookup` results (integers: they are compared in the verifier-friendly way and converted
/// to `CtMatch` only when `decide` is called).
pub const CT_NEW: u8 = 0;
pub const CT_ESTABLISHED: u8 = 1;
pub const CT_REPLY: u8 = 2;
pub const CT_RELATED: u8 = 3;

#[inline(always)]
pub fn ct_match(code: u8) -> CtMatch {
    match code {
        CT_ESTABLISHED => CtMatch::Established,
        CT_REPLY => CtMatch::Reply,
        CT_RELATED => CtMatch::Related,
        _ => CtMatch::New,
    }
}

/// Whether a packet is more likely a reply than a packet of a flow admitted in its own
/// direction: it comes from the lower port (clients pick ephemeral ports, 32768 and up on
/// Linux, above the ports servers listen on). An ICMP echo reply (source "port" 0, see
/// `palisade_common::conntrack`) is one too.
#[inline(always)]
fn reply_first(t: &Tuple) -> bool {
    u16::from_be_bytes(t.sport) < u16::from_be_bytes(t.dport)
}

/// Looks the packet up (1 and 2 in the `reply_first` order: only the number of lookups
/// differs):
/// 1. its own tuple admitted in its own direction: `CT_ESTABLISHED`;
/// 2. its reversed tuple admitted in the other direction: `CT_REPLY`;
/// 3. for an ICMP error addressed to the embedded packet's source
///    (`icmp_error_addressed_to_sender`), the embedded packet's tuple admitted in the other
///    direction (the error is about a packet of that flow), then the embedded tuple reversed
///    admitted in this direction (about a reply of a flow admitted here): `CT_RELATED`. An
///    ICMP error is never established or a reply itself; one that relates to nothing is a
///    new packet (judged by policy, never tracked).
///
/// Returns the match and the live entry; `key` ends up as the matched entry's key (the flow
/// as it was admitted, which is what a re-check evaluates) or, for `CT_NEW`, the packet's own
/// key (what a new flow is tracked under).
///
/// `first_not_assured`: the first tuple asked (1 or 2, in the `reply_first` order) was just
/// found absent from the assured tier (`crate::fastpath`), so its lookup there is skipped.
#[inline(always)]
pub fn lookup(
    ep_id: u32,
    dir: u8,
    pkt: &Packet,
    now: u64,
    key: &mut CtKey,
    first_not_assured: bool,
) -> (u8, *mut CtValue) {
    let other = other_dir(dir);
    if pkt.icmp_error != 0 {
        if pkt.has_inner != 0 && icmp_error_addressed_to_sender(&pkt.t.daddr, &pkt.inner.saddr) {
            *key = self::key(ep_id, other, &pkt.inner);
            if let Some(v) = live(key, now, true) {
                return (CT_RELATED, v);
            }
            *key = reversed_key(ep_id, dir, &pkt.inner);
            if let Some(v) = live(key, now, true) {
                return (CT_RELATED, v);
            }
        }
        *key = self::key(ep_id, dir, &pkt.t);
        return (CT_NEW, core::ptr::null_mut());
    }
    let ask = !first_not_assured;
    if reply_first(&pkt.t) {
        *key = reversed_key(ep_id, other, &pkt.t);
        if let Some(v) = live(key, now, ask) {
            return (CT_REPLY, v);
        }
        *key = self::key(ep_id, dir, &pkt.t);
        if let Some(v) = live(key, now, true) {
            return (CT_ESTABLISHED, v);
        }
    } else {
        *key = self::key(ep_id, dir, &pkt.t);
        if let Some(v) = live(key, now, ask) {
            return (CT_ESTABLISHED, v);
        }
        *key = reversed_key(ep_id, other, &pkt.t);
        if let Some(v) = live(key, now, true) {
            return (CT_REPLY, v);
        }
        *key = self::key(ep_id, dir, &pkt.t);
    }
    (CT_NEW, core::ptr::null_mut())
}

/// Tracks a newly admitted flow. `Err` when the map refused the entry.
#[inline(always)]
pub fn insert(k: &CtKey, now: u64, policy_gen: u32, rule_ref: u32, flags: u32) -> Result<(), i32> {
    let v = CtValue {
        last_seen_ns: now,
        policy_gen,
        flags,
        rule_ref,
        _pad: 0,
    };
    CONNTRACK.insert(k, v, 0)
}

#[inline(always)]
fn frag_key(ep_id: u32, dir: u8, pkt: &Packet) -> FragKey {
    FragKey {
        ep_id,
        id: pkt.frag_id,
        dir,
        proto: pkt.t.proto,
        family: pkt.t.family,
        _pad: 0,
        saddr_be: pkt.t.saddr,
        daddr_be: pkt.t.daddr,
    }
}

/// Records the ports of an admitted first fragment for the later fragments.
#[inline(always)]
pub fn frag_record(ep_id: u32, dir: u8, pkt: &Packet) -> Result<(), i32> {
    let v = FragValue {
        sport_be: pkt.t.sport,
        dport_be: pkt.t.dport,
    };
    FRAGMENTS.insert(frag_key(ep_id, dir, pkt), v, 0)
}

/// Ports recorded by the first fragment of this datagram, if it was admitted.
#[inline(always)]
pub fn frag_ports(ep_id: u32, dir: u8, pkt: &Packet) -> Option<([u8; 2], [u8; 2])> {
    // SAFETY: read-only copy of a map value.
    let v = unsafe { FRAGMENTS.get(frag_key(ep_id, dir, pkt)) }?;
    Some((v.sport_be, v.dport_be))
}
