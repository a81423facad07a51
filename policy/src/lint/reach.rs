//! PL401 one-sided-ingress, PL402 one-sided-egress: a connection needs egress at its source
//! and ingress at its destination. An ingress rule that admits pods whose own egress policy
//! does not let them send (or an egress rule towards pods whose ingress does not admit the
//! sender) allows nothing by itself; usually the other half was forgotten.
//!
//! For every selector peer of every rule, each (selected pod, peer pod) pair and each port
//! entry the rule allows for that pair is asked of the evaluator from the other side: does
//! the peer's egress (ingress) allow it on some port of that entry? `port_space` makes "some
//! port of a range" exact. Peer pods the other side cannot tell apart are asked once.

use std::collections::{BTreeMap, BTreeSet};

use super::{Cx, ONE_SIDED_EGRESS, ONE_SIDED_INGRESS, object};
use crate::model::{Endpoint, Labels, NamedPort, PodInfo, Protocol};
use crate::port_space::PortSpace;
use crate::prefix::Prefix;
use crate::validate::{Direction, NormRule, Peer, PortMatch};
use crate::wording;

/// A port entry as a range: `None` is every protocol and port.
type Entry = Option<(Protocol, u16, u16)>;

fn entry_words(e: &Entry) -> String {
    match e {
        None => "any port".into(),
        Some((p, lo, hi)) if lo == hi => format!("{} {lo}", p.k8s_name()),
        Some((p, 1, u16::MAX)) => format!("every {} port", p.k8s_name()),
        Some((p, lo, hi)) => format!("{} {lo}-{hi}", p.k8s_name()),
    }
}

/// Peer pods that the other side's check cannot tell apart: the same policies isolate them
/// in that direction, they have addresses of the same families, and (at ingress, where a
/// named port resolves on them) the same named ports. The evaluator's answer for one member
/// is every member's.
type ClassKey = (Vec<usize>, [bool; 2], Vec<NamedPort>);

pub(super) fn check(cx: &mut Cx) {
    if !cx.has_pods() {
        return;
    }
    let mut found = Vec::new();
    for (pi, pol) in cx.ev.policies.iter().enumerate() {
        for dir in Direction::BOTH {
            let other = match dir {
                Direction::Ingress => Direction::Egress,
                Direction::Egress => Direction::Ingress,
            };
            for (ri, rule) in pol.rules(dir).into_iter().flatten().enumerate() {
                for (k, peer) in rule.peers.iter().flatten().enumerate() {
                    if !matches!(peer, Peer::Pods { .. }) {
                        continue;
                    }
                    let mut classes: BTreeMap<ClassKey, Vec<usize>> = BTreeMap::new();
                    for qi in cx.peer_pods(pi, peer) {
                        let isolating: Vec<usize> = cx.selecting[qi]
                            .iter()
                            .copied()
                            .filter(|p| cx.ev.policies[*p].rules(other).is_some())
                            .collect();
                        if isolating.is_empty() {
                            continue;
                        }
                        let mut ports = Vec::new();
                        if other == Direction::Ingress {
                            ports = cx.pod(qi).ports.clone();
                            ports.sort();
                        }
                        let q = cx.pod(qi);
                        let families = [
                            q.ips.iter().any(|a| a.is_ipv4()),
                            q.ips.iter().any(|a| a.is_ipv6()),
                        ];
                        classes
                            .entry((isolating, families, ports))
                            .or_default()
                            .push(qi);
                    }
                    // The first blocked (peer, selected pod, entry), and every blocked peer.
                    let mut first: Option<(usize, usize, Entry)> = None;
                    let mut blocked: BTreeSet<usize> = BTreeSet::new();
                    for ((isolating, _, _), members) in &classes {
                        let space = space_of(cx, isolating, other);
                        let blocks = blocks_of(cx, isolating, other);
                        for targets in target_classes(cx, &cx.selected[pi], &blocks).values() {
                            // Any member and any target stand for their classes.
                            let (qi, ti) = (members[0], targets[0]);
                            let (q, t) = (cx.pod(qi), cx.pod(ti));
                            // Named ports resolve on the destination: the selected pod at
                            // ingress, the peer at egress.
                            let dst = if dir == Direction::Ingress { t } else { q };
                            for e in entries(rule, dst) {
                                if other_side_allows(cx, qi, other, t, e, &space) {
                                    continue;
                                }
                                // Every pair but a pod with itself.
                                for &m in members {
                                    if let Some(&t2) = targets.iter().find(|t2| **t2 != m) {
                                        blocked.insert(m);
                                        first.get_or_insert((m, t2, e));
                                    }
                                }
                            }
                        }
                    }
                    let Some(first) = first else {
                        continue;
                    };
                    let path = format!(
                        "{}.{}[{k}]",
                        wording::rule_path(dir, ri),
                        wording::peer_field(dir)
                    );
                    found.push(finding(cx, pi, dir, &path, first, &blocked));
                }
            }
        }
    }
    for (check, obj, path, msg, sugg) in found {
        cx.report(check, obj, path, msg, Some(sugg));
    }
}

/// The port entries of `rule` as ranges, named ports resolved on `dst`.
fn entries(rule: &NormRule, dst: &PodInfo) -> Vec<Entry> {
    match &rule.ports {
        None => vec![None],
        Some(ps) => ps
            .iter()
            .flat_map(|s| match &s.port {
                PortMatch::All => vec![Some((s.proto, 1, u16::MAX))],
                PortMatch::Range(lo, hi) => vec![Some((s.proto, *lo, *hi))],
                PortMatch::Named(n) => dst
                    .ports
                    .iter()
                    .filter(|np| &np.name == n && np.protocol == s.proto)
                    .map(|np| Some((s.proto, np.port, np.port)))
                    .collect(),
            })
            .collect(),
    }
}

/// The ipBlocks (cidr and excepts) of the rules of `policies` in `dir`.
fn blocks_of(cx: &Cx, policies: &[usize], dir: Direction) -> Vec<Prefix> {
    let mut out = Vec::new();
    for pi in policies {
        for r in cx.ev.policies[*pi].rules(dir).into_iter().flatten() {
            for p in r.peers.iter().flatten() {
                if let Peer::Block { cidr, except } = p {
                    out.push(*cidr);
                    out.extend(except.iter().copied());
                }
            }
        }
    }
    out
}

/// Selected pods that a check with `blocks` in its rules cannot tell apart as peers: same
/// namespace, labels and named ports, and addresses of the same families inside the same
/// blocks.
fn target_classes(cx: &Cx, pods: &[usize], blocks: &[Prefix]) -> BTreeMap<TargetKey, Vec<usize>> {
    let mut out: BTreeMap<TargetKey, Vec<usize>> = BTreeMap::new();
    for &i in pods {
        let p = cx.pod(i);
        // A pod without an address has no connection to judge.
        if p.ips.is_empty() {
            continue;
        }
        let mut ports = p.ports.clone();
        ports.sort();
        let mut addrs: Vec<(bool, Vec<usize>)> = p
            .ips
            .iter()
            .map(|a| {
                (
                    a.is_ipv6(),
                    (0..blocks.len())
                        .filter(|b| blocks[*b].contains_addr(*a))
                        .collect(),
                )
            })
            .collect();
        addrs.sort();
        out.entry((p.namespace.clone(), p.labels.clone(), ports, addrs))
            .or_default()
            .push(i);
    }
    out
}

type TargetKey = (String, Labels, Vec<NamedPort>, Vec<(bool, Vec<usize>)>);

/// The port space cut by the rules of `policies` in `dir`.
fn space_of(cx: &Cx, policies: &[usize], dir: Direction) -> PortSpace {
    let mut space = PortSpace::default();
    for pi in policies {
        for r in cx.ev.policies[*pi].rules(dir).into_iter().flatten() {
            space.add_rule(r);
        }
    }
    space
}

/// Whether pod `qi`'s `dir` check lets the connection with `peer` through on some port of
/// `entry`, for some address family they share. `space` is cut by `qi`'s isolating rules.
fn other_side_allows(
    cx: &Cx,
    qi: usize,
    dir: Direction,
    peer: &PodInfo,
    entry: Entry,
    space: &PortSpace,
) -> bool {
    let pod = cx.pod(qi);
    let mut space = space.clone();
    space.add_pod(pod);
    space.add_pod(peer);
    if let Some((p, lo, hi)) = entry {
        space.add_range(p, lo, hi);
    }
    peer.ips.iter().any(|addr| {
        if !pod.ips.iter().any(|a| a.is_ipv6() == addr.is_ipv6()) {
            return false;
        }
        let ep = Endpoint::Pod {
            pod: peer.key(),
            addr: *addr,
        };
        space
            .pieces(addr.is_ipv6())
            .iter()
            .filter(|pc| match entry {
                None => true,
                Some((p, lo, hi)) => pc.proto == p.number() && pc.first >= lo && pc.last <= hi,
            })
            .any(|pc| cx.passes(qi, dir, &ep, pc.proto, pc.first))
    })
}

type Found = (&'static super::Check, String, String, String, String);

fn finding(
    cx: &Cx,
    pi: usize,
    dir: Direction,
    path: &str,
    (qi, ti, e): (usize, usize, Entry),
    blocked: &BTreeSet<usize>,
) -> Found {
    let pol = &cx.ev.policies[pi];
    let peers: Vec<String> = blocked
        .iter()
        .map(|b| cx.pod(*b).key().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (q, t) = (cx.pod(qi), cx.pod(ti));
    let isolating: Vec<String> = cx.selecting[qi]
        .iter()
        .map(|i| &cx.ev.policies[*i])
        .filter(|p| {
            p.rules(match dir {
                Direction::Ingress => Direction::Egress,
                Direction::Egress => Direction::Ingress,
            })
            .is_some()
        })
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    match dir {
        Direction::Ingress => (
            &ONE_SIDED_INGRESS,
            object(pol),
            path.into(),
            format!(
                "admits {}, but their own egress does not let them send: {} is isolated for \
                 egress by {}, which allow nothing to {} on {}; those connections stay denied",
                wording::list(&peers, 5),
                q.key(),
                isolating.join(", "),
                t.key(),
                entry_words(&e)
            ),
            format!(
                "also allow this traffic at the source: an egress rule in {} (or another policy \
                 selecting those pods) to {} on {}",
                isolating.join(", "),
                t.key(),
                entry_words(&e)
            ),
        ),
        Direction::Egress => (
            &ONE_SIDED_EGRESS,
            object(pol),
            path.into(),
            format!(
                "lets its pods send to {}, but their ingress does not admit it: {} is isolated \
                 for ingress by {}, which admit nothing from {} on {}; those connections stay \
                 denied",
                wording::list(&peers, 5),
                q.key(),
                isolating.join(", "),
                t.key(),
                entry_words(&e)
            ),
            format!(
                "also allow this traffic at the destination: an ingress rule in {} (or another \
                 policy selecting those pods) from {} on {}",
                isolating.join(", "),
                t.key(),
                entry_words(&e)
            ),
        ),
    }
}
