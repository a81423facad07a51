//! ClusterNetworkPolicies in an explanation: each Admin- or Baseline-tier policy selecting the
//! pod, its rules in words, which of them match the connection and which one decides.
//!
//! Whether a rule matches is asked of the reference evaluator's own `rule_matches`, and who
//! decides comes from its `decide` (through `Evaluator::tier_outcome`): the explanation cannot
//! disagree with the answer the datapath is tested against.

use crate::cnp::eval::rule_matches;
use crate::cnp::{CnpPeer, CnpPort, CnpRule, NormCnp};
use crate::eval::{Evaluator, Outcome};
use crate::model::{Endpoint, PodInfo};
use crate::port_space::{Piece, PortRanges, PortSpace};
use crate::rules::RuleId;
use crate::selector::Selector;
use crate::validate::Direction;
use crate::wording;

use super::{PolicyExplanation, PolicyKind, RuleAction, RuleExplanation};

/// The boundaries of what `cnp`'s rules in `dir` match (named ports are cut by the pods).
pub(super) fn add_ports(space: &mut PortSpace, cnp: &NormCnp, dir: Direction) {
    for rule in cnp.rules(dir) {
        for p in rule.ports.iter().flatten() {
            if let CnpPort::Range { proto, lo, hi } = p {
                space.add_range(*proto, *lo, *hi);
            }
        }
    }
}

/// One ClusterNetworkPolicy selecting `pod` in `dir`, against `peer` on each of `pieces`
/// (`outcomes[k]` is the evaluator's decision for piece `k`).
#[allow(clippy::too_many_arguments)]
pub(super) fn explain(
    ev: &Evaluator<'_>,
    cnp: &NormCnp,
    pod: &PodInfo,
    dir: Direction,
    peer: &Endpoint,
    pieces: &[Piece],
    outcomes: &[&Outcome],
    every: bool,
) -> PolicyExplanation {
    let rules: Vec<RuleExplanation> = cnp
        .rules(dir)
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let id = RuleId::cluster_network_policy(&cnp.name, dir, index);
            let hit = |p: &Piece, r: &CnpRule| {
                rule_matches(ev.cluster, r, dir, pod, peer, p.proto, p.first, &[])
            };
            let matched: Vec<bool> = pieces.iter().map(|p| hit(p, rule)).collect();
            let decided: Vec<bool> = outcomes
                .iter()
                .map(|o| matches!(o, Outcome::Accepted(r) | Outcome::Denied(r) if *r == id))
                .collect();
            // The peer entry naming `peer`, asked of each entry alone (every port).
            let peer_match = rule.peers.iter().enumerate().find_map(|(j, p)| {
                let alone = CnpRule {
                    action: rule.action,
                    peers: vec![p.clone()],
                    ports: None,
                };
                pieces.iter().any(|pc| hit(pc, &alone)).then(|| {
                    format!(
                        "{}[{j}] ({}) includes {}",
                        wording::peer_field(dir),
                        peer_words(p),
                        peer_of(peer)
                    )
                })
            });
            let port_match = if every {
                None
            } else {
                match &rule.ports {
                    None => Some("every port (no ports listed)".to_string()),
                    Some(ports) => ports.iter().enumerate().find_map(|(j, p)| {
                        let alone = CnpRule {
                            action: rule.action,
                            peers: vec![CnpPeer::Everything],
                            ports: Some(vec![p.clone()]),
                        };
                        pieces
                            .iter()
                            .any(|pc| hit(pc, &alone))
                            .then(|| format!("ports[{j}] ({})", port_words(p)))
                    }),
                }
            };
            RuleExplanation {
                path: wording::rule_path(dir, index),
                action: match rule.action {
                    crate::cnp::Action::Accept => RuleAction::Accept,
                    crate::cnp::Action::Deny => RuleAction::Deny,
                    crate::cnp::Action::Pass => RuleAction::Pass,
                },
                peers: rule
                    .peers
                    .iter()
                    .map(peer_words)
                    .collect::<Vec<_>>()
                    .join("; "),
                ports: match &rule.ports {
                    None => "every protocol and port".into(),
                    Some(ps) => ps.iter().map(port_words).collect::<Vec<_>>().join(", "),
                },
                peer_match,
                port_match,
                // What the rule decides, where it decides something; else what it matches.
                allowed_ports: every.then(|| {
                    let shown = if decided.iter().any(|d| *d) {
                        &decided
                    } else {
                        &matched
                    };
                    PortRanges::from_pieces(pieces, shown)
                }),
                matches: matched.iter().any(|m| *m),
                decides: decided.iter().any(|d| *d),
            }
        })
        .collect();
    PolicyExplanation {
        kind: PolicyKind::ClusterNetworkPolicy,
        namespace: None,
        name: cnp.name.clone(),
        tier: Some(cnp.tier.name().to_string()),
        priority: Some(cnp.priority),
        decides: rules.iter().any(|r| r.decides),
        rules,
    }
}

fn namespaces_words(s: &Selector) -> String {
    if s.reqs.is_empty() {
        "every namespace".into()
    } else {
        format!("namespaces {}", wording::selector(s))
    }
}

fn peer_words(p: &CnpPeer) -> String {
    match p {
        CnpPeer::Namespaces(s) => format!("every pod in {}", namespaces_words(s)),
        CnpPeer::Pods { namespaces, pods } if pods.reqs.is_empty() => {
            format!("every pod in {}", namespaces_words(namespaces))
        }
        CnpPeer::Pods { namespaces, pods } => format!(
            "pods {} in {}",
            wording::selector(pods),
            namespaces_words(namespaces)
        ),
        CnpPeer::Nodes(s) => format!("addresses of nodes {}", wording::selector(s)),
        CnpPeer::Networks(cidrs) => format!(
            "addresses in {}",
            cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CnpPeer::DomainNames(patterns) => format!(
            "addresses the pod learnt from DNS for {}",
            patterns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CnpPeer::Everything => "every address (a peer enforced fail-closed)".into(),
    }
}

fn port_words(p: &CnpPort) -> String {
    match p {
        CnpPort::Range { proto, lo, hi } if *lo <= 1 && *hi == u16::MAX => {
            format!("every {} port", proto.k8s_name())
        }
        CnpPort::Range { proto, lo, hi } if lo == hi => format!("{} {lo}", proto.k8s_name()),
        CnpPort::Range { proto, lo, hi } => format!("{} {lo}-{hi}", proto.k8s_name()),
        CnpPort::Named(n) => format!("port named {n}"),
    }
}

fn peer_of(peer: &Endpoint) -> String {
    match peer {
        Endpoint::Pod { pod, .. } => pod.to_string(),
        Endpoint::External(a) => a.to_string(),
    }
}
