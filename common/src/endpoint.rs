//! `pal_ep_v1`: one entry per pod interface on this node.
//!
//! Key: the ifindex of the host-side veth (`u32`, host byte order). The TC programs attached to
//! that veth look up `skb->ifindex`. No wildcard.
//! Written by the agent (on CNI ADD and on every policy change), read by `to_pod`/`from_pod`.
//! A packet on a hook whose ifindex has no entry is dropped (`Reason::NO_ENDPOINT`): fail closed.
//!
//! Atomic policy switch: policy entries in `pal_pol_v1` are keyed by `policy_id`, not by
//! endpoint. For a large change the agent writes a complete new policy under a fresh
//! `policy_id`, then replaces this endpoint entry in one map update (hash map updates replace
//! the element as a whole, so a packet sees either the old or the new entry), then deletes the
//! old policy's entries. For a small change it updates entries in place, in an order under which
//! every address resolves to either its old or its new answer (see the agent's applier). Either
//! way `policy_gen` increases, which makes conntrack re-check tracked flows.

/// `flags` bits.
pub const EP_INGRESS_ISOLATED: u32 = 1 << 0;
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
/// The endpoint has an IPv4 / IPv6 address (anti-spoofing checks only families it has).
pub const EP_HAS_V4: u32 = 1 << 2;
pub const EP_HAS_V6: u32 = 1 << 3;
/// Audited policies (`DIR_AUDIT` entries under `policy_id`) isolate the endpoint in this
/// direction: new flows they would drop are reported (`VERDICT_AUDIT`), never dropped.
pub const EP_AUDIT_INGRESS_ISOLATED: u32 = 1 << 4;
pub const EP_AUDIT_EGRESS_ISOLATED: u32 = 1 << 5;
/// The endpoint has egress rules with `domainNames` peers (`crate::fqdn`): the datapath reads
/// the cluster DNS answers it gets and consults what it learnt for egress the policy does not
/// allow. Endpoints without it pay nothing for names.
pub const EP_NAME_RULES: u32 = 1 << 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Stable identity of the endpoint for its lifetime, never reused by the agent (monotonic,
    /// recovered from the pinned map on restart). Part of every conntrack key, so a pod that
    /// reuses an address never inherits a previous pod's tracked flows.
    pub ep_id: u32,
    /// Key prefix of this endpoint's current policy in `pal_pol_v1`.
    pub policy_id: u32,
    /// Increases on every change of this endpoint's policy. Conntrack entries remember the
    /// `policy_gen` they were admitted (or last re-checked) under; a tracked flow whose
    /// generation differs is re-checked against the current policy.
    pub policy_gen: u32,
    /// `EP_*` bits.
    pub flags: u32,
    /// The pod's IPv4 address, network byte order (`EP_HAS_V4`).
    pub ipv4_be: [u8; 4],
    /// The pod's IPv6 address, network byte order (`EP_HAS_V6`).
    pub ipv6_be: [u8; 16],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 40);
