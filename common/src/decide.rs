//! The decision that remains after the datapath's lookups: one small pure function, called by
//! the TC programs (`ebpf/`) and by the reference evaluator in `policy/`, so both agree by
//! construction on precedence.

use crate::packet::{IPPROTO_TCP, TCP_SYN};
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

/// Whether a packet is a mid-stream TCP segment: TCP with its header seen (not a later
/// fragment) and no SYN. Only a segment of an existing connection is one: a connection is
/// opened by a SYN, so a mid-stream segment that no conntrack entry matches belongs to a
/// connection whose entry was lost (or to none at all: then the receiver's stack answers RST).
#[inline(always)]
pub fn tcp_mid_stream(proto: u8, tcp_flags: u8, later_fragment: bool) -> bool {
    proto == IPPROTO_TCP && !later_fragment && tcp_flags & TCP_SYN == 0
}

/// Conntrack state lost to eviction (`pal_ct_v1` is one LRU table shared by every endpoint of
/// the node: a pod opening many flows evicts other pods' idle ones). The next packet of an
/// evicted flow is new. In the direction the flow was admitted in, policy admits it again;
/// in the reply direction, at an endpoint isolated in that direction, `decide` drops it. So:
/// "eviction cannot cut an allowed established TCP flow".
///
/// `restorable`: whether a packet that `decide` judged `v` from `f` gets a second question,
/// the one of the flow it would be a reply to. Only a new (`CtMatch::New`) mid-stream TCP
/// segment (`tcp_mid_stream`) dropped by policy (`DEFAULT_DENY`, `POLICY_DENY`), not judged
/// after Service translation (`deferred`: the question there is the client's egress only).
/// A SYN, UDP, ICMP, a fragment without ports and every other drop keep their verdict.
#[inline(always)]
pub fn restorable(f: &Facts, v: Verdict, mid_stream: bool, deferred: bool) -> bool {
    mid_stream
        && !deferred
        && f.ct == CtMatch::New
        && !f.untracked_fragment
        && (v.reason == Reason::DEFAULT_DENY || v.reason == Reason::POLICY_DENY)
}

/// The verdict of a `restorable` packet, from the facts of the flow it would reply to:
/// the reversed tuple in the other direction at the same endpoint (`reversed.isolated` and
/// `reversed.allow_rule` asked for that direction, the same peer and the packet's *source*
/// port). When policy admits that flow as new, the packet passes as `CT_RESTORED` (naming
/// the rule that admits the flow) and the datapath tracks that flow again; else `None`: the
/// packet keeps its drop.
///
/// A peer that is a Service address (`peer_is_service`: a reply the kernel un-translated
/// from a backend) is never restored: the flow it replies to went to the Service and was
/// judged on the backend it was translated to, which the reply no longer names, and judging
/// egress on a Service address is wrong both ways (see `crate::service`). Kept dropped.
#[inline(always)]
pub fn restore(reversed: &Facts, peer_is_service: bool) -> Option<Verdict> {
    if peer_is_service || reversed.ct != CtMatch::New {
        return None;
    }
    let v = decide(reversed);
    (!v.is_drop()).then_some(Verdict::pass(Reason::CT_RESTORED, v.rule_ref))
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

    /// The facts of the packet as a new flow and of the flow it would reply to, through
    /// `restorable` and `restore`, as the datapath chains them.
    fn after_eviction(
        packet: Facts,
        mid_stream: bool,
        deferred: bool,
        reversed: Facts,
        peer_is_service: bool,
    ) -> Verdict {
        let v = decide(&packet);
        if v.is_drop() && restorable(&packet, v, mid_stream, deferred) {
            restore(&reversed, peer_is_service).unwrap_or(v)
        } else {
            v
        }
    }

    #[test]
    fn mid_stream_tcp_is_a_segment_without_syn_whose_header_was_seen() {
        const ACK: u8 = 0x10;
        assert!(tcp_mid_stream(IPPROTO_TCP, ACK, false));
        assert!(tcp_mid_stream(IPPROTO_TCP, ACK | 0x08 | 0x01, false));
        assert!(tcp_mid_stream(IPPROTO_TCP, 0x04, false));
        assert!(!tcp_mid_stream(IPPROTO_TCP, TCP_SYN, false));
        assert!(!tcp_mid_stream(IPPROTO_TCP, TCP_SYN | ACK, false));
        // A later fragment carries no TCP header: its flags read as 0, which is not "no SYN".
        assert!(!tcp_mid_stream(IPPROTO_TCP, 0, true));
        assert!(!tcp_mid_stream(crate::packet::IPPROTO_UDP, 0, false));
        assert!(!tcp_mid_stream(crate::packet::IPPROTO_ICMP, 0, false));
    }

    #[test]
    fn a_lost_reply_of_a_flow_policy_allows_in_the_other_direction_is_restored() {
        // Egress-isolated server pushing on a connection its ingress rule 5 admitted.
        let reversed = Facts {
            allow_rule: 5,
            ..base()
        };
        assert_eq!(
            after_eviction(base(), true, false, reversed, false),
            Verdict::pass(Reason::CT_RESTORED, 5)
        );
        // The other direction is not isolated at all: restored, no rule to name.
        let open = Facts {
            isolated: false,
            ..base()
        };
        assert_eq!(
            after_eviction(base(), true, false, open, false),
            Verdict::pass(Reason::CT_RESTORED, 0)
        );
        // Dropped by a ClusterNetworkPolicy Deny as a new flow: a reply is still a reply.
        let denied = Facts {
            allow_rule: RULE_DENY | 2,
            ..base()
        };
        assert_eq!(
            after_eviction(denied, true, false, reversed, false),
            Verdict::pass(Reason::CT_RESTORED, 5)
        );
    }

    #[test]
    fn a_lost_reply_stays_dropped_when_the_flow_it_replies_to_is_not_allowed() {
        // Nothing allows the reversed flow; a Deny rule drops it.
        for allow_rule in [0, RULE_DENY | 4] {
            let reversed = Facts {
                allow_rule,
                ..base()
            };
            assert_eq!(
                after_eviction(base(), true, false, reversed, false).reason,
                Reason::DEFAULT_DENY
            );
        }
        // The flow it replies to went to a Service address: kept dropped (no sound check).
        let open = Facts {
            isolated: false,
            ..base()
        };
        assert_eq!(
            after_eviction(base(), true, false, open, true).reason,
            Reason::DEFAULT_DENY
        );
        assert_eq!(restore(&open, true), None);
    }

    #[test]
    fn only_mid_stream_tcp_dropped_by_policy_as_new_asks_the_reply_question() {
        let open = Facts {
            isolated: false,
            ..base()
        };
        // A SYN, UDP, ICMP (not mid-stream): today's verdict.
        assert_eq!(
            after_eviction(base(), false, false, open, false).reason,
            Reason::DEFAULT_DENY
        );
        // Judged after Service translation: the client's egress question only.
        assert_eq!(
            after_eviction(base(), true, true, open, false).reason,
            Reason::DEFAULT_DENY
        );
        // A fragment whose ports are unknown.
        let fragment = Facts {
            untracked_fragment: true,
            ..base()
        };
        assert_eq!(
            after_eviction(fragment, true, false, open, false).reason,
            Reason::FRAGMENT_UNTRACKED
        );
        // Other drops are not policy's judgement of a new flow.
        let spoofed = Facts {
            spoofed: true,
            ..base()
        };
        assert_eq!(
            after_eviction(spoofed, true, false, open, false).reason,
            Reason::SPOOFED_SOURCE
        );
        let stale = Facts {
            ct: CtMatch::Reply,
            ..base()
        };
        assert_eq!(
            after_eviction(stale, true, false, open, false).reason,
            Reason::POLICY_CHANGED
        );
        // What passes as new keeps its verdict (nothing to restore).
        let allowed = Facts {
            allow_rule: 3,
            ..base()
        };
        assert_eq!(
            after_eviction(allowed, true, false, open, false),
            Verdict::pass(Reason::POLICY_ALLOW, 3)
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
