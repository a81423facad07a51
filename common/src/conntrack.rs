//! `pal_ct_v1` (LRU hash) and `pal_frag_v1` (LRU hash): stateful part of the datapath.
//!
//! Conntrack key: a flow as seen in its *original* direction at one endpoint's hook, plus that
//! endpoint and the direction in which it was admitted. Written by the TC programs when a new
//! flow is allowed, read by both programs: a packet matches either its own tuple (same
//! direction: established) or the reversed tuple admitted in the other direction (a reply).
//! The agent reads it for `palisadectl` and never purges it on restart.
//!
//! Ports are network byte order. An ICMP echo request is keyed (sport = identifier, dport = 0)
//! and an echo reply (sport = 0, dport = identifier): the reversed tuple of a request is the
//! tuple of its reply, while a peer's echo *request* that reuses the identifier is not (it
//! must pass policy as a new flow). Protocols without ports use 0.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub ep_id: u32,
    /// Direction the flow was admitted in (`DIR_INGRESS` / `DIR_EGRESS`).
    pub dir: u8,
    pub proto: u8,
    pub family: u8,
    pub _pad: u8,
    pub saddr_be: [u8; 16],
    pub daddr_be: [u8; 16],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// `CtValue.flags`: a packet was seen in the reply direction.
pub const CT_SEEN_REPLY: u32 = 1 << 0;
/// A FIN or RST was seen; the entry gets the short timeout.
pub const CT_CLOSING: u32 = 1 << 1;
/// A flow to a Service address, tracked untranslated at the client's `from_pod`: its egress
/// is judged after translation (`crate::service`), so the entry admits the Service's replies
/// and is never re-checked against the client's policy itself.
pub const CT_SERVICE: u32 = 1 << 2;
/// The endpoint's policy forbade the flow at a re-check (`POLICY_CHANGED`): the entry stays,
/// so that every later packet of the flow is dropped as `POLICY_CHANGED` again and never
/// judged as new. (A new mid-stream TCP segment may be restored as the reply of the reversed
/// flow, `crate::decide::restore`: without this mark, a connection a policy change cut would
/// come back on its next segment whenever the other direction admits it.) Never current: a
/// re-check that passes (the policy admits it again) clears it.
pub const CT_REVOKED: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// CLOCK_MONOTONIC_COARSE (CLOCK_MONOTONIC at the last tick, read once per jiffy per CPU:
    /// `ebpf/src/clock.rs`) of a recent packet: a packet rewrites it only when it is `CT_REFRESH_NS` old
    /// (`ct_needs_refresh`) or when it changes the flags.
    pub last_seen_ns: u64,
    /// The endpoint's `policy_gen` when the flow was admitted or last re-checked. When the
    /// endpoint's policy changes, the next packet of the flow is re-checked against the new
    /// policy, and dropped (and the entry marked `CT_REVOKED`) if the new policy forbids it:
    /// a policy change cuts established connections it forbids.
    pub policy_gen: u32,
    pub flags: u32,
    /// Rule that admitted the flow (0 when admitted because the endpoint is not isolated).
    pub rule_ref: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 24);

/// Whether an ICMP (or ICMPv6) error may relate to a tracked flow, judged by its outer
/// addresses; the embedded packet's tuple must then match the flow too.
///
/// An error is sent to the source of the packet it reports (RFC 792; RFC 4443 section 2.4),
/// so its outer destination must be the embedded packet's source address. Otherwise any
/// packet could be dressed up as an error about a tracked flow and delivered anywhere: an
/// egress-denied pod would send data to a forbidden host inside a forged error embedding the
/// tuple of a flow it has with an allowed peer. The outer *source* is not checked: a router on
/// the path (a node, or a router outside the cluster) reports with its own address, and
/// path MTU discovery depends on those errors. Linux's own conntrack applies the same rule
/// to related errors (`nf_conntrack_inet_error` in net/netfilter/nf_conntrack_proto_icmp.c:
/// "outer daddr != inner").
#[inline(always)]
pub fn icmp_error_addressed_to_sender(outer_daddr: &[u8; 16], inner_saddr: &[u8; 16]) -> bool {
    crate::addr_eq(outer_daddr, inner_saddr)
}

/// Idle timeouts, nanoseconds.
pub const CT_TIMEOUT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_OTHER_NS: u64 = 60 * 1_000_000_000;

/// How old `CtValue::last_seen_ns` may be before a packet of the flow rewrites it. Packets of
/// a busy flow then leave its entry (its cache line, shared by every CPU the flow's packets
/// run on) untouched between refreshes; an entry can expire up to this much earlier than its
/// idle timeout after its last packet (1 s of the shortest timeout, 10 s).
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Age of an entry last seen at `seen`, at `now` (both CLOCK_MONOTONIC nanoseconds). A `seen`
/// ahead of `now` by less than `CT_REFRESH_NS` is age 0: the datapath stamps with the coarse
/// clock, which lags the precise clock user space stamps with by up to a tick. Further ahead
/// (not written by a clock): the age wraps to a huge value and the entry counts as expired.
#[inline(always)]
pub fn ct_age_ns(now: u64, seen: u64) -> u64 {
    let age = now.wrapping_sub(seen);
    if age > u64::MAX - CT_REFRESH_NS {
        0
    } else {
        age
    }
}

/// Whether a packet at `now` rewrites the timestamp `seen` of its entry.
#[inline(always)]
pub fn ct_needs_refresh(now: u64, seen: u64) -> bool {
    ct_age_ns(now, seen) >= CT_REFRESH_NS
}

/// Idle timeout of an entry of protocol `proto` with `flags` (both tiers; the datapath and the
/// agent's sweep of the assured tier apply the same one).
#[inline(always)]
pub fn idle_timeout_ns(proto: u8, flags: u32) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_TIMEOUT_CLOSING_NS
    } else if proto == crate::packet::IPPROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    }
}

/// Fragment tracking: the first fragment (offset 0, carries the L4 header) records its ports
/// under the datagram identity; later fragments take the ports from here and are checked like
/// the first one. A non-first fragment with no entry is dropped (`Reason::FRAGMENT_UNTRACKED`),
/// so fragments never bypass a port rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub ep_id: u32,
    /// IPv4 identification (16 bits, zero-extended) or IPv6 fragment identification.
    pub id: u32,
    pub dir: u8,
    pub proto: u8,
    pub family: u8,
    pub _pad: u8,
    pub saddr_be: [u8; 16],
    pub daddr_be: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_zero_for_a_stamp_slightly_ahead_and_huge_for_one_far_ahead() {
        let now = 50 * CT_REFRESH_NS;
        assert_eq!(ct_age_ns(now, now - 7), 7);
        // The coarse clock of the datapath lags user space's precise one by up to a tick.
        assert_eq!(ct_age_ns(now, now + 4_000_000), 0);
        assert_eq!(ct_age_ns(now, now + CT_REFRESH_NS - 1), 0);
        // Not a clock's value: expired under every timeout (fail closed).
        assert!(ct_age_ns(now, now + 2 * CT_REFRESH_NS) > CT_TIMEOUT_TCP_NS);
    }

    #[test]
    fn a_packet_rewrites_the_stamp_only_once_it_is_a_refresh_interval_old() {
        let seen = 10 * CT_REFRESH_NS;
        assert!(!ct_needs_refresh(seen, seen));
        assert!(!ct_needs_refresh(seen + CT_REFRESH_NS - 1, seen));
        assert!(ct_needs_refresh(seen + CT_REFRESH_NS, seen));
        assert!(!ct_needs_refresh(seen - 1000, seen));
    }
}
