//! Verdicts and their reasons. Every packet decision carries a `Reason`; drops also name it in
//! the counters. Numbers are stable: a retired reason keeps its number and is never reused.

/// What decided a packet. Integer newtype, not a Rust enum (it crosses the kernel boundary).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Reason(pub u32);

impl Reason {
    // --- passes ---
    /// The endpoint is not isolated in this direction: no policy selects it.
    pub const NOT_ISOLATED: Reason = Reason(1);
    /// A policy rule allows it (`rule_ref` names the rule).
    pub const POLICY_ALLOW: Reason = Reason(2);
    /// A packet of a flow admitted earlier, same direction.
    pub const CT_ESTABLISHED: Reason = Reason(3);
    /// A reply to a flow admitted in the other direction.
    pub const CT_REPLY: Reason = Reason(4);
    /// An ICMP error about a tracked flow.
    pub const CT_RELATED: Reason = Reason(5);
    /// Traffic between the pod and its own node (kubelet probes).
    pub const HOST: Reason = Reason(6);
    /// ARP and IPv6 neighbour discovery between the pod and its gateway.
    pub const NEIGHBOR: Reason = Reason(7);
    /// Egress to a Service address: judged after translation, at the backend's `to_pod` or
    /// at `to_uplink` (see `crate::service`).
    pub const SERVICE_DEFERRED: Reason = Reason(8);
    /// A mid-stream TCP segment whose flow's conntrack entry was lost (evicted from the full
    /// table): it is a reply to a flow that policy allows in the other direction, so it passes
    /// and that flow is tracked again (`crate::decide::restore`; `rule_ref` names the rule).
    pub const CT_RESTORED: Reason = Reason(9);

    // --- drops (32 and up) ---
    /// Isolated and no rule allows it.
    pub const DEFAULT_DENY: Reason = Reason(32);
    /// Source address is not the pod's own address.
    pub const SPOOFED_SOURCE: Reason = Reason(33);
    /// Truncated or malformed IP/L4 header.
    pub const BAD_HEADER: Reason = Reason(34);
    /// An ethertype the datapath does not handle (neither IPv4, IPv6 nor ARP).
    pub const UNKNOWN_L3: Reason = Reason(35);
    /// No endpoint entry for this interface: fail closed.
    pub const NO_ENDPOINT: Reason = Reason(36);
    /// A non-first fragment whose first fragment was not admitted.
    pub const FRAGMENT_UNTRACKED: Reason = Reason(37);
    /// A tracked flow that the endpoint's new policy forbids.
    pub const POLICY_CHANGED: Reason = Reason(38);
    /// IPv6 extension header chain longer than the datapath walks.
    pub const EXT_HEADERS_TOO_LONG: Reason = Reason(39);
    /// The datapath could not complete (map update failed, ...): fail closed.
    pub const INTERNAL_ERROR: Reason = Reason(40);
    /// A ClusterNetworkPolicy `Deny` rule (the verdict's `rule_ref` names it).
    pub const POLICY_DENY: Reason = Reason(41);
    /// A router or link-configuration message leaving a pod: ICMPv6 router advertisement or
    /// solicitation, redirect, router renumbering, ...; ICMPv4 redirect or router discovery
    /// (`crate::neighbor`).
    pub const ROUTER_MESSAGE: Reason = Reason(42);

    pub const fn is_drop(self) -> bool {
        self.0 >= 32
    }

    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "not_isolated",
            2 => "policy_allow",
            3 => "ct_established",
            4 => "ct_reply",
            5 => "ct_related",
            6 => "host",
            7 => "neighbor",
            8 => "service_deferred",
            9 => "ct_restored",
            32 => "default_deny",
            33 => "spoofed_source",
            34 => "bad_header",
            35 => "unknown_l3",
            36 => "no_endpoint",
            37 => "fragment_untracked",
            38 => "policy_changed",
            39 => "ext_headers_too_long",
            40 => "internal_error",
            41 => "policy_deny",
            42 => "router_message",
            _ => "unknown",
        }
    }

    /// Every reason, for counters and docs.
    pub const ALL: [Reason; 20] = [
        Reason::NOT_ISOLATED,
        Reason::POLICY_ALLOW,
        Reason::CT_ESTABLISHED,
        Reason::CT_REPLY,
        Reason::CT_RELATED,
        Reason::HOST,
        Reason::NEIGHBOR,
        Reason::SERVICE_DEFERRED,
        Reason::CT_RESTORED,
        Reason::DEFAULT_DENY,
        Reason::SPOOFED_SOURCE,
        Reason::BAD_HEADER,
        Reason::UNKNOWN_L3,
        Reason::NO_ENDPOINT,
        Reason::FRAGMENT_UNTRACKED,
        Reason::POLICY_CHANGED,
        Reason::EXT_HEADERS_TOO_LONG,
        Reason::INTERNAL_ERROR,
        Reason::POLICY_DENY,
        Reason::ROUTER_MESSAGE,
    ];
}

/// Number of counter slots per direction (reasons are < this).
pub const REASON_SLOTS: u32 = 64;

/// A decision: pass or drop, why, and which rule (0 when no rule; for `POLICY_DENY` the Deny
/// rule, without the `RULE_DENY` bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    pub rule_ref: u32,
}

impl Verdict {
    pub const fn pass(reason: Reason, rule_ref: u32) -> Self {
        Verdict { reason, rule_ref }
    }
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            reason,
            rule_ref: 0,
        }
    }
    pub const fn is_drop(&self) -> bool {
        self.reason.is_drop()
    }
}
