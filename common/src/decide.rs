//! The decision that remains after the datapath's lookups: one small pure function, called by
//! the TC programs (`ebpf/`) and by the reference evaluator in `policy/`, so both agree by
//! construction on precedence.

use crate::policy::{RULE_DENY, rule_allows};
use crate::verdict::{Reason, Verdict};

/// How a packet relates to the conntrack table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtMatch {
    /// No tracked flow.
    New,
    /// Same direction as a tracked flow.
    Established,
    /// Reverse direction of a flow admitted in the other direction.
    Reply,
    /// An ICMP error whose embedded packet belongs to a tracked flow.
    Related,
}

/// What the datapath found out about a packet before deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Leaving the pod with a source that is not one of the pod's addresses.
    pub spoofed: bool,
    /// The peer is an address of this node.
    pub peer_is_host: bool,
    pub ct: CtMatch,
    /// The tracked flow was admitted (or last re-checked) under the endpoint's current
    /// `policy_gen`.
    pub ct_current: bool,
    /// The endpoint is isolated in the direction being checked. For a new flow: the packet's
    /// direction. For a tracked flow that is not current: the direction the flow was admitted
    /// in, so the re-check asks the same question the admission did.
    pub isolated: bool,
    /// What the lookups found for the (peer, protocol, port) being checked (same direction
    /// convention as `isolated`): the first rule allowing it; 0 when nothing allows it; or
    /// `RULE_DENY` | the ClusterNetworkPolicy Deny rule that drops it (the policy tiers are
    /// already resolved into this one answer by the compiler).
    pub allow_rule: u32,
    /// A non-first fragment whose first fragment was not seen: its ports are unknown, so
    /// `allow_rule` only counts rules that allow every port.
    pub untracked_fragment: bool,
}

/// Evaluation order:
/// 1. A spoofed source is dropped, whatever else holds.
/// 2. Traffic between a pod and its own node passes (kubelet probes must never be cut).
/// 3. A tracked flow admitted under the current policy passes (established, reply, related).
/// 4. A tracked flow admitted under an older policy is re-checked as a new flow in the
///    direction it was admitted; if the new policy forbids it, it is dropped
///    (`POLICY_CHANGED`): policy changes cut connections they forbid.
/// 5. An endpoint that no policy isolates in this direction accepts everything.
/// 6. A rule that allows the peer, protocol and port admits the flow.
/// 7. A ClusterNetworkPolicy Deny rule drops it (`POLICY_DENY`, naming the rule).
/// 8. Everything else is dropped: default deny (or `FRAGMENT_UNTRACKED` for a fragment
///    whose ports could not be known).
#[inline(always)]
pub fn decide(f: &Facts) -> Verdict {
    if f.spoofed {
        return Verdict::drop(Reason::SPOOFED_SOURCE);
    }
    if f.peer_is_host {
        return Verdict::pass(Reason::HOST, 0);
    }
    let ct_reason = match f.ct {
        CtMatch::New => None,
        CtMatch::Established => Some(Reason::CT_ESTABLISHED),
        CtMatch::Reply => Some(Reason::CT_REPLY),
        CtMatch::Related => Some(Reason::CT_RELATED),
    };
    if let Some(reason) = ct_reason {
        if f.ct_current || !f.isolated {
            return Verdict::pass(reason, 0);
        }
        if rule_allows(f.allow_rule) {
            return Verdict::pass(reason, f.allow_rule);
        }
        return Verdict::drop(Reason::POLICY_CHANGED);
    }
    if !f.isolated {
        return Verdict::pass(Reason::NOT_ISOLATED, 0);
    }
    if rule_allows(f.allow_rule) {
        return Verdict::pass(Reason::POLICY_ALLOW, f.allow_rule);
    }
    if f.allow_rule & RULE_DENY != 0 {
        return Verdict {
            reason: Reason::POLICY_DENY,
            rule_ref: f.allow_rule & !RULE_DENY,
        };
    }
    if f.untracked_fragment {
        return Verdict::drop(Reason::FRAGMENT_UNTRACKED);
    }
    Verdict::drop(Reason::DEFAULT_DENY)
}

/// Audit mode: when the enforced policies (`f`, which `decide` judges) pass a packet that the
/// enforced and audited policies together would drop, the drop they would decide. Audited
/// policies decide nothing: this only says whether to report the packet as `VERDICT_AUDIT`.
///
/// "Together" is the NetworkPolicy union, read with the precedence list of `decide`:
/// 1. isolated in the direction when the enforced or the audited policies isolate;
/// 2. allowed when a rule of either allows (`f.allow_rule` first, else `audit_allow_rule`).
///
/// So only a packet that `decide` passes as `NOT_ISOLATED` can be audited: when the enforced
/// policies isolate and pass it, one of their rules allows it, and it allows it together too.
#[inline(always)]
pub fn audit(f: &Facts, audit_isolated: bool, audit_allow_rule: u32) -> Option<Verdict> {
    let together = Facts {
        isolated: f.isolated || audit_isolated,
        allow_rule: if f.allow_rule != 0 {
            f.allow_rule
        } else {
            audit_allow_rule
        },
        ..*f
    };
    let would = decide(&together);
    (!decide(f).is_drop() && would.is_drop()).then_some(would)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Facts {
        Facts {
            spoofed: false,
            peer_is_host: false,
            ct: CtMatch::New,
            ct_current: false,
            isolated: true,
            allow_rule: 0,
            untracked_fragment: false,
        }
    }

    #[test]
    fn spoofed_source_is_dropped_even_towards_the_host() {
        let f = Facts {
            spoofed: true,
            peer_is_host: true,
            ..base()
        };
        assert_eq!(decide(&f).reason, Reason::SPOOFED_SOURCE);
    }

    #[test]
    fn host_traffic_passes_an_isolated_endpoint() {
        let f = Facts {
            peer_is_host: true,
            ..base()
        };
        assert_eq!(decide(&f), Verdict::pass(Reason::HOST, 0));
    }

    #[test]
    fn stale_flow_forbidden_by_new_policy_is_cut() {
        let f = Facts {
            ct: CtMatch::Reply,
            ct_current: false,
            ..base()
        };
        assert_eq!(decide(&f).reason, Reason::POLICY_CHANGED);
    }

    #[test]
    fn stale_flow_still_allowed_keeps_passing_and_names_the_rule() {
        let f = Facts {
            ct: CtMatch::Established,
            allow_rule: 7,
            ..base()
        };
        assert_eq!(decide(&f), Verdict::pass(Reason::CT_ESTABLISHED, 7));
    }

    #[test]
    fn current_reply_passes_without_a_rule() {
        let f = Facts {
            ct: CtMatch::Reply,
            ct_current: true,
            ..base()
        };
        assert_eq!(decide(&f), Verdict::pass(Reason::CT_REPLY, 0));
    }

    #[test]
    fn unisolated_endpoint_accepts_new_flows() {
        let f = Facts {
            isolated: false,
            ..base()
        };
        assert_eq!(decide(&f).reason, Reason::NOT_ISOLATED);
    }

    #[test]
    fn audit_reports_what_the_audited_policies_would_drop_and_nothing_else() {
        let open = Facts {
            isolated: false,
            ..base()
        };
        // An audited default deny at an endpoint no enforced policy isolates.
        assert_eq!(
            audit(&open, true, 0),
            Some(Verdict::drop(Reason::DEFAULT_DENY))
        );
        // An audited rule allows it: nothing to report.
        assert_eq!(audit(&open, true, 9), None);
        // No audited policy isolates in this direction.
        assert_eq!(audit(&open, false, 0), None);
        // Enforced and allowed: allowed together too.
        let allowed = Facts {
            allow_rule: 3,
            ..base()
        };
        assert_eq!(audit(&allowed, true, 0), None);
        // Enforced drop: a drop, not an audit.
        assert_eq!(audit(&base(), true, 0), None);
        // Tracked flows under the current policy are not judged again.
        let tracked = Facts {
            ct: CtMatch::Established,
            ct_current: true,
            ..open
        };
        assert_eq!(audit(&tracked, true, 0), None);
    }

    #[test]
    fn deny_rule_drops_and_names_the_rule_even_for_an_untracked_fragment() {
        for untracked_fragment in [false, true] {
            let f = Facts {
                allow_rule: RULE_DENY | 9,
                untracked_fragment,
                ..base()
            };
            assert_eq!(
                decide(&f),
                Verdict {
                    reason: Reason::POLICY_DENY,
                    rule_ref: 9
                }
            );
        }
    }

    #[test]
    fn stale_flow_now_denied_by_a_rule_is_cut_as_a_policy_change() {
        let f = Facts {
            ct: CtMatch::Established,
            allow_rule: RULE_DENY | 3,
            ..base()
        };
        assert_eq!(decide(&f).reason, Reason::POLICY_CHANGED);
        let unisolated = Facts {
            isolated: false,
            ..f
        };
        assert_eq!(
            decide(&unisolated),
            Verdict::pass(Reason::CT_ESTABLISHED, 0)
        );
    }

    #[test]
    fn isolated_without_rule_is_default_deny() {
        assert_eq!(decide(&base()).reason, Reason::DEFAULT_DENY);
        let f = Facts {
            untracked_fragment: true,
            ..base()
        };
        assert_eq!(decide(&f).reason, Reason::FRAGMENT_UNTRACKED);
    }
}
