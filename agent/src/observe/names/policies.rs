//! The policies named on a flow (`*_allowed_by` / `*_denied_by`): the question the datapath
//! asked, answered by the explanation of the same direction; the rule behind a rule
//! reference (through the rule registry) with the peer and port entry that matched, or, for
//! a default deny, every policy isolating the pod.

use palisade_common::DIR_INGRESS;
use palisade_common::events::{EV_REPLY, FlowEvent, VERDICT_AUDIT, VERDICT_FORWARDED};
use palisade_common::verdict::Reason;
use palisade_node_api::flow::{Flow, Policy, Rule};
use palisade_policy::explain::{DirectionExplanation, PolicyKind};
use palisade_policy::{Direction, PodKey, RuleKind};

use super::batch_cache::Lazy;
use super::{Names, addr_of};

impl Names {
    /// `*_allowed_by` / `*_denied_by`.
    pub(super) fn name_policies(
        &self,
        e: &FlowEvent,
        reason: Reason,
        local_pod: Option<&PodKey>,
        flow: &mut Flow,
        explain: &mut Lazy,
    ) {
        let decided_by_policy = reason == Reason::POLICY_ALLOW
            || reason == Reason::POLICY_DENY
            || reason == Reason::DEFAULT_DENY
            || reason == Reason::POLICY_CHANGED
            || reason == Reason::CT_RESTORED
            || reason == Reason::FRAGMENT_UNTRACKED
            || e.verdict == VERDICT_AUDIT
            || (reason == Reason::NOT_ISOLATED && e.rule_ref != 0);
        let Some(pod) = local_pod.filter(|_| decided_by_policy) else {
            return;
        };
        let Some(info) = self.cluster.pod(pod) else {
            return;
        };
        // The question the datapath asked: a reply cut by a policy change (or restored after
        // its entry was lost) is checked as the flow it replies to (the other direction; the
        // peer is the same address).
        let mut dir = if e.dir == DIR_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let (mut peer_addr, mut port) = if dir == Direction::Ingress {
            (
                addr_of(e.family, &e.saddr_be),
                u16::from_be_bytes(e.dport_be),
            )
        } else {
            (
                addr_of(e.family, &e.daddr_be),
                u16::from_be_bytes(e.dport_be),
            )
        };
        if e.flags & EV_REPLY != 0 {
            dir = match dir {
                Direction::Ingress => Direction::Egress,
                Direction::Egress => Direction::Ingress,
            };
            port = u16::from_be_bytes(e.sport_be);
            if e.dir == DIR_INGRESS {
                peer_addr = addr_of(e.family, &e.saddr_be);
            }
        }
        let Some(peer_addr) = peer_addr else { return };
        let port = if matches!(e.proto, 6 | 17 | 132) {
            port
        } else {
            0
        };
        let peer = match self.pods_by_ip.get(&peer_addr) {
            Some(p) => palisade_policy::Endpoint::Pod {
                pod: PodKey::new(&p.namespace, &p.pod_name),
                addr: peer_addr,
            },
            None => palisade_policy::Endpoint::External(peer_addr),
        };
        let audit =
            e.verdict == VERDICT_AUDIT || (reason == Reason::NOT_ISOLATED && e.rule_ref != 0);
        let expl = explain.direction(audit, pod, info, dir, peer, e.proto, port);
        let (allowed, denied) = match dir {
            Direction::Ingress => (&mut flow.ingress_allowed_by, &mut flow.ingress_denied_by),
            Direction::Egress => (&mut flow.egress_allowed_by, &mut flow.egress_denied_by),
        };
        if e.rule_ref != 0 && e.verdict == VERDICT_FORWARDED {
            allowed.extend(self.policy_of(e.rule_ref, &expl, audit));
        } else if e.rule_ref != 0 && reason == Reason::POLICY_DENY {
            // A tier's Deny rule decided (not isolation): name that rule.
            denied.extend(self.policy_of(e.rule_ref, &expl, audit));
        } else if e.verdict != VERDICT_FORWARDED {
            denied.extend(isolating(&expl, audit));
        }
    }

    /// The policy and rule behind a rule reference, with the peer and port entry that
    /// matched (from the explanation of the same direction).
    fn policy_of(&self, rule_ref: u32, expl: &DirectionExplanation, audit: bool) -> Option<Policy> {
        let id = self.registry.describe(rule_ref)?;
        let kind = match id.kind {
            RuleKind::NetworkPolicy => "NetworkPolicy",
            RuleKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            // No tier decided: the default allow, which no policy names.
            RuleKind::DefaultAllow => return None,
        };
        let matched = expl
            .policies
            .iter()
            .find(|p| p.namespace.as_deref() == Some(id.namespace.as_str()) && p.name == id.policy)
            .and_then(|p| p.rules.get(id.index));
        Some(Policy {
            kind: kind.into(),
            namespace: id.namespace.clone(),
            name: id.policy.clone(),
            audit,
            rule: Some(Rule {
                path: format!("spec.{}[{}]", id.direction.name(), id.index),
                index: id.index,
                peer: matched.and_then(|r| r.peer_match.clone()),
                port: matched.and_then(|r| r.port_match.clone()),
            }),
        })
    }
}

/// The policies isolating the pod in the explained direction (none of whose rules allowed
/// the flow, or it would not have been denied).
fn isolating(expl: &DirectionExplanation, audit: bool) -> Vec<Policy> {
    expl.policies
        .iter()
        .map(|p| Policy {
            kind: match p.kind {
                PolicyKind::NetworkPolicy => "NetworkPolicy".into(),
                PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy".into(),
            },
            namespace: p.namespace.clone().unwrap_or_default(),
            name: p.name.clone(),
            audit,
            rule: None,
        })
        .collect()
}
