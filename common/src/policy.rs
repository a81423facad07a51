//! `pal_pol_v1` and `pal_port_v1`: compiled NetworkPolicy, two LPM lookups per new flow.
//!
//! 1. `pal_pol_v1` (LPM trie) maps (policy_id, direction, family, peer address) to what is
//!    allowed with that peer. Prefixes may nest; each entry carries the *union* of every rule
//!    that covers the whole prefix (the `policy` crate computes it), so the longest match alone
//!    answers: no walking of rules, and an ipBlock `except` in one rule cannot hide an allow
//!    from another rule. A prefix that lies in an except-hole of every covering rule is present
//!    with an empty port set, so it shadows shorter allowing prefixes.
//! 2. If the entry does not allow all ports, `pal_port_v1` (LPM trie) maps (portset_id,
//!    protocol, destination port) to the rule deciding it: the first rule allowing it, or a
//!    denying entry (`RULE_DENY` | rule, or `RULE_REF_NONE`) that shadows a shorter allowing
//!    one. Port ranges are split into port prefixes; a wildcard protocol entry has prefix
//!    length 32. ClusterNetworkPolicy tiers are resolved by the `policy` crate into these
//!    answers: the datapath never walks policies.
//!
//! Both maps are written by the agent from the `policy` crate's output and read by the TC
//! programs. Byte order: `policy_id` and `portset_id` are written big-endian (`*_be`) so that
//! LPM bit order and numeric order agree; addresses and ports are network byte order.

/// `PolicyKey.prefixlen` = `POLICY_KEY_FIXED_BITS` + address prefix length.
pub const POLICY_KEY_FIXED_BITS: u32 = 64;

/// Data part of the `pal_pol_v1` LPM key (the `prefixlen` word is added by the map type).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PolicyKey {
    pub policy_id_be: [u8; 4],
    /// `DIR_INGRESS` (peer = source) or `DIR_EGRESS` (peer = destination).
    pub dir: u8,
    /// `FAMILY_V4` / `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 2],
    /// Peer address, network byte order; IPv4 uses the first 4 bytes, the rest are zero.
    pub addr_be: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 24);

/// `PolicyValue.flags`: every protocol and port is allowed with this peer; `rule_ref` names
/// the first rule that allows it.
pub const POL_ALL_PORTS: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    pub flags: u32,
    /// Rule that allows all ports (`POL_ALL_PORTS`), else 0.
    pub rule_ref: u32,
    /// Key prefix in `pal_port_v1` when not `POL_ALL_PORTS`; 0 = no port allowed (an
    /// except-hole or a region no rule covers).
    pub portset_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 16);

/// `PortKey.prefixlen` for an exact (protocol, port): 32 + 8 + 16.
pub const PORT_KEY_FULL_BITS: u32 = 56;
/// `PortKey.prefixlen` matching every protocol and port of a port set.
pub const PORT_KEY_ANY_PROTO_BITS: u32 = 32;
/// `PortKey.prefixlen` matching every port of one protocol.
pub const PORT_KEY_ANY_PORT_BITS: u32 = 40;

/// Data part of the `pal_port_v1` LPM key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortKey {
    pub portset_id_be: [u8; 4],
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, ...).
    pub proto: u8,
    /// Destination port, network byte order. 0 for protocols without ports.
    pub port_be: [u8; 2],
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortValue {
    /// The rule that decides this (protocol, port): a rule allowing it, or `RULE_DENY` | the
    /// ClusterNetworkPolicy Deny rule that drops it, or `RULE_REF_NONE` (dropped, no rule to
    /// name: a NetworkPolicy's default deny under a ClusterNetworkPolicy). A present entry
    /// shadows shorter ones, so denying entries carve ports out of an allowing one.
    pub rule_ref: u32,
}
const _: () = assert!(core::mem::size_of::<PortValue>() == 4);

/// `rule_ref` 0 means "no rule". Real rule references start at 1; the agent keeps the table
/// from `rule_ref` to (namespace, policy name, direction, rule index) and serves it to
/// `palisadectl`.
pub const RULE_REF_NONE: u32 = 0;

/// Set in a `rule_ref` found by the lookups (`PolicyValue.rule_ref`, `PortValue.rule_ref`):
/// the rule (the low bits) is a ClusterNetworkPolicy `Deny` rule and the packet is dropped
/// (`Reason::POLICY_DENY`). Rule references stay below this bit.
pub const RULE_DENY: u32 = 1 << 31;

/// Whether a `rule_ref` from the lookups admits the packet (a rule, not a deny).
#[inline(always)]
pub const fn rule_allows(rule_ref: u32) -> bool {
    rule_ref != RULE_REF_NONE && rule_ref & RULE_DENY == 0
}

/// LPM `prefixlen` for a `PolicyKey` with an address prefix of `addr_bits` bits.
pub const fn policy_prefixlen(addr_bits: u8) -> u32 {
    POLICY_KEY_FIXED_BITS + addr_bits as u32
}
