//! PL701 shadowed-rule, PL702 shadowed-policy: NetworkPolicies only add allows, so a rule
//! that another rule already covers, for every pod it applies to, can never add anything.
//! Usually it was meant as a limit ("only port 80 from y") that a broader policy defeats.
//!
//! Rule R (policy P, direction d) is shadowed by rule R' (policy P', same namespace and
//! direction, P' selecting at least every pod P selects) when everything R allows R' allows:
//! for every pod P selects, every peer (each pod address, and one address of each piece of
//! the address space the two rules' ipBlocks cut) and every piece of the port space
//! (`port_space`), `R allows` implies `R' allows`, both asked of the evaluator. That is exact
//! for the cluster state at hand. Of two rules that cover each other over the same pods, the
//! later is reported. A policy is shadowed when all its rules are shadowed by other policies'
//! rules and other policies isolate all its pods in each of its directions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Cx, SHADOWED_POLICY, SHADOWED_RULE, object};
use crate::eval::PeerHit;
use crate::model::{Endpoint, NamedPort};
use crate::port_space::PortSpace;
use crate::prefix::Prefix;
use crate::validate::{Direction, NormRule, Peer};
use crate::wording;

/// Evaluator calls the whole check may make before it stops (and says so).
const BUDGET: usize = 4_000_000;

/// (policy, direction, rule) in `cx.ev.policies`.
type RuleRef = (usize, Direction, usize);

pub(super) fn check(cx: &mut Cx) {
    if !cx.has_pods() {
        return;
    }
    let mut sh = Shadow {
        cx,
        budget: BUDGET,
        peers: HashMap::new(),
    };
    let n = sh.cx.ev.policies.len();
    // For each rule, the first rule shadowing it.
    let mut shadowed: Vec<(RuleRef, RuleRef)> = Vec::new();
    for pi in 0..n {
        if sh.cx.selected[pi].is_empty() {
            continue;
        }
        for dir in Direction::BOTH {
            let count = sh.cx.ev.policies[pi].rules(dir).map_or(0, Vec::len);
            for ri in 0..count {
                let r = (pi, dir, ri);
                // Prefer a shadowing rule of another policy: that is what makes a policy
                // redundant.
                let mut by: Option<RuleRef> = None;
                for pj in sh.candidates(pi, dir) {
                    let cnt = sh.cx.ev.policies[pj].rules(dir).map_or(0, Vec::len);
                    for rj in 0..cnt {
                        let o = (pj, dir, rj);
                        if o != r && sh.shadows(o, r) {
                            by = Some(o);
                            break;
                        }
                    }
                    if by.is_some_and(|b| b.0 != pi) {
                        break;
                    }
                }
                if let Some(b) = by {
                    shadowed.push((r, b));
                }
            }
        }
    }
    if sh.budget == 0 {
        sh.cx.note(format!(
            "shadowing checks (PL701, PL702) stopped after {BUDGET} evaluations: the state is large"
        ));
    }
    report(sh.cx, &shadowed);
}

struct Shadow<'c, 'a> {
    cx: &'c mut Cx<'a>,
    budget: usize,
    /// Pod endpoints (with the pod's index) each rule can name.
    peers: HashMap<RuleRef, std::rc::Rc<Vec<(usize, Endpoint)>>>,
}

impl Shadow<'_, '_> {
    /// Policies of `pi`'s namespace isolating in `dir` whose pods include every pod `pi`
    /// selects.
    fn candidates(&self, pi: usize, dir: Direction) -> Vec<usize> {
        let cx = &self.cx;
        cx.policies_by_ns[&cx.ev.policies[pi].namespace]
            .iter()
            .copied()
            .filter(|pj| {
                cx.ev.policies[*pj].rules(dir).is_some()
                    && cx.selected[pi].iter().all(|i| cx.selects(*pj, *i))
            })
            .collect()
    }

    fn rule(&self, r: RuleRef) -> &NormRule {
        &self.cx.ev.policies[r.0]
            .rules(r.1)
            .expect("isolating direction")[r.2]
    }

    fn same_scope(&self, a: usize, b: usize) -> bool {
        self.cx.selected[a] == self.cx.selected[b]
    }

    /// Whether `by` shadows `r`: covers it, and when they cover each other over the same
    /// pods, `r` is the later one.
    fn shadows(&mut self, by: RuleRef, r: RuleRef) -> bool {
        if !self.covers(by, r) {
            return false;
        }
        !(self.same_scope(by.0, r.0) && by > r && self.covers(r, by))
    }

    /// Whether rule `a` allows everything rule `b` allows, for every pod `b`'s policy selects
    /// (false also when `b` allows nothing at all: other checks report that).
    fn covers(&mut self, a: RuleRef, b: RuleRef) -> bool {
        let (ra, rb) = (self.rule(a).clone(), self.rule(b).clone());
        // Cheap refusals: `b` allows every protocol (ICMP...) and `a` only some ports; `b`
        // allows addresses outside the cluster and `a` only pods.
        if rb.ports.is_none() && ra.ports.is_some() {
            return false;
        }
        if has_addresses(&rb) && !has_addresses(&ra) {
            return false;
        }
        let dir = b.1;
        let pod_peers = self.peers_of(b, &rb);
        let cx = &*self.cx;
        let (pa, pb) = (&cx.ev.policies[a.0], &cx.ev.policies[b.0]);
        let mut peers: Vec<Endpoint> = pod_peers.iter().map(|(_, e)| e.clone()).collect();
        if has_addresses(&rb) {
            peers.extend(
                representatives(&ra, &rb)
                    .into_iter()
                    .map(Endpoint::External),
            );
        }
        // The selected pods matter only through their address families and, at ingress
        // (where a named port resolves on them), their named ports: one of each kind stands
        // for all.
        let mut targets: BTreeMap<([bool; 2], Vec<NamedPort>), usize> = BTreeMap::new();
        for &ti in &cx.selected[b.0] {
            let t = cx.pod(ti);
            let mut ports = Vec::new();
            if dir == Direction::Ingress {
                ports = t.ports.clone();
                ports.sort();
            }
            let fam = [
                t.ips.iter().any(|a| a.is_ipv4()),
                t.ips.iter().any(|a| a.is_ipv6()),
            ];
            targets.entry((fam, ports)).or_insert(ti);
        }
        let mut space = PortSpace::default();
        space.add_rule(&ra);
        space.add_rule(&rb);
        if ra.has_named_ports() || rb.has_named_ports() {
            for &ti in targets.values() {
                space.add_pod(cx.pod(ti));
            }
            for (i, _) in pod_peers.iter() {
                space.add_pod(cx.pod(*i));
            }
        }
        let pieces = [space.pieces(false), space.pieces(true)];
        let mut any = false;
        for (&(fam, _), &ti) in &targets {
            let t = cx.pod(ti);
            for peer in &peers {
                let v6 = peer.addr().is_ipv6();
                if !fam[usize::from(v6)] {
                    continue;
                }
                for piece in &pieces[usize::from(v6)] {
                    if self.budget < 2 {
                        self.budget = 0;
                        return false;
                    }
                    self.budget -= 2;
                    let allows = |pol, rule| {
                        cx.ev
                            .rule_match(pol, rule, dir, t, peer, piece.proto, piece.first)
                            .iter()
                            .any(PeerHit::allows)
                    };
                    if !allows(pb, &rb) {
                        continue;
                    }
                    any = true;
                    if !allows(pa, &ra) {
                        return false;
                    }
                }
            }
        }
        any
    }

    /// Every pod endpoint rule `r` can name: the pods its selector peers name, and those
    /// whose address is in one of its ipBlocks (every pod without peers). Cached per rule.
    fn peers_of(&mut self, r: RuleRef, rule: &NormRule) -> std::rc::Rc<Vec<(usize, Endpoint)>> {
        if let Some(v) = self.peers.get(&r) {
            return v.clone();
        }
        let cx = &*self.cx;
        let mut pods: BTreeSet<usize> = BTreeSet::new();
        match &rule.peers {
            None => pods
                .extend((0..cx.cluster().pods.len()).filter(|i| cx.pod(*i).is_selectable_peer())),
            Some(ps) => {
                for p in ps {
                    match p {
                        Peer::Pods { .. } => pods.extend(cx.peer_pods(r.0, p)),
                        Peer::Block { cidr, .. } => {
                            pods.extend((0..cx.cluster().pods.len()).filter(|i| {
                                let pod = cx.pod(*i);
                                pod.is_selectable_peer()
                                    && pod.ips.iter().any(|a| cidr.contains_addr(*a))
                            }))
                        }
                    }
                }
            }
        }
        let v: std::rc::Rc<Vec<(usize, Endpoint)>> = std::rc::Rc::new(
            pods.into_iter()
                .flat_map(|i| {
                    let p = cx.pod(i);
                    p.ips.iter().map(move |a| {
                        (
                            i,
                            Endpoint::Pod {
                                pod: p.key(),
                                addr: *a,
                            },
                        )
                    })
                })
                .collect(),
        );
        self.peers.insert(r, v.clone());
        v
    }
}

/// The rule allows peers by address (an ipBlock, or no peers at all).
fn has_addresses(r: &NormRule) -> bool {
    r.peers
        .as_ref()
        .is_none_or(|ps| ps.iter().any(|p| matches!(p, Peer::Block { .. })))
}

/// One address of each piece the two rules' ipBlocks (and excepts) cut the address space
/// into: each prefix's first address and the one after its last.
fn representatives(a: &NormRule, b: &NormRule) -> Vec<IpAddr> {
    let mut out: BTreeSet<IpAddr> = BTreeSet::from([
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ]);
    for r in [a, b] {
        for p in r.peers.iter().flatten() {
            if let Peer::Block { cidr, except } = p {
                for q in std::iter::once(cidr).chain(except) {
                    out.insert(q.addr);
                    if let Some(next) = after(q) {
                        out.insert(next);
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The first address after `p`, if any.
fn after(p: &Prefix) -> Option<IpAddr> {
    match p.addr {
        IpAddr::V4(a) => {
            let size = 1u64 << (32 - u32::from(p.len));
            let next = u64::from(u32::from(a)) + size;
            u32::try_from(next)
                .ok()
                .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
        }
        IpAddr::V6(a) => {
            if p.len == 0 {
                return None;
            }
            let size = 1u128 << (128 - u32::from(p.len));
            u128::from(a)
                .checked_add(size)
                .map(|n| IpAddr::V6(Ipv6Addr::from(n)))
        }
    }
}

fn rule_name(cx: &Cx, r: RuleRef) -> String {
    let p = &cx.ev.policies[r.0];
    format!(
        "NetworkPolicy {}/{} {}",
        p.namespace,
        p.name,
        wording::rule_path(r.1, r.2)
    )
}

fn report(cx: &mut Cx, shadowed: &[(RuleRef, RuleRef)]) {
    let mut found = Vec::new();
    let mut whole: BTreeSet<usize> = BTreeSet::new();
    for pi in 0..cx.ev.policies.len() {
        let pol = &cx.ev.policies[pi];
        if cx.selected[pi].is_empty() {
            continue;
        }
        let mine: Vec<&(RuleRef, RuleRef)> = shadowed.iter().filter(|(r, _)| r.0 == pi).collect();
        let total: usize = Direction::BOTH
            .iter()
            .map(|d| pol.rules(*d).map_or(0, Vec::len))
            .sum();
        let by_others = mine.iter().filter(|(_, by)| by.0 != pi).count();
        if by_others < total {
            continue;
        }
        // Every direction it isolates is isolated by another policy over all its pods.
        let covered_dirs = Direction::BOTH.iter().all(|d| {
            pol.rules(*d).is_none()
                || cx.policies_by_ns[&pol.namespace].iter().any(|&pj| {
                    pj != pi
                        && cx.ev.policies[pj].rules(*d).is_some()
                        && cx.selected[pi].iter().all(|i| cx.selects(pj, *i))
                        // Two policies isolating the same pods with no rules: report the later.
                        && (total > 0 || cx.selected[pj] != cx.selected[pi] || pj < pi)
                })
        });
        if !covered_dirs {
            continue;
        }
        whole.insert(pi);
        let by: BTreeSet<String> = mine
            .iter()
            .map(|(_, b)| {
                let p = &cx.ev.policies[b.0];
                format!("NetworkPolicy {}/{}", p.namespace, p.name)
            })
            .collect();
        let dirs: Vec<&str> = Direction::BOTH
            .iter()
            .filter(|d| pol.rules(**d).is_some())
            .map(|d| d.name())
            .collect();
        let pods: Vec<String> = cx.selected[pi]
            .iter()
            .map(|i| cx.pod(*i).key().to_string())
            .collect();
        let rules_part = if by.is_empty() {
            String::new()
        } else {
            format!(
                ", and everything its rules allow is allowed by {} too",
                by.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        found.push((
            &SHADOWED_POLICY,
            object(pol),
            "spec".to_string(),
            format!(
                "adds nothing: other policies already isolate its pods ({}) for {}{rules_part}",
                wording::list(&pods, 5),
                dirs.join(" and "),
            ),
            "policies only add allows: a narrower policy cannot limit what another allows. \
             Remove it, or narrow the broader policy if this one was meant as the limit"
                .to_string(),
        ));
    }
    for (r, by) in shadowed {
        if whole.contains(&r.0) {
            continue;
        }
        let pods: Vec<String> = cx.selected[r.0]
            .iter()
            .map(|i| cx.pod(*i).key().to_string())
            .collect();
        found.push((
            &SHADOWED_RULE,
            object(&cx.ev.policies[r.0]),
            wording::rule_path(r.1, r.2),
            format!(
                "can never add anything: {} allows everything it allows, to every pod it applies \
                 to ({})",
                rule_name(cx, *by),
                wording::list(&pods, 5)
            ),
            "policies only add allows: a narrower rule cannot limit what another allows. Remove \
             it, or narrow the other rule if this one was meant as the limit"
                .to_string(),
        ));
    }
    for (check, obj, path, msg, sugg) in found {
        cx.report(check, obj, path, msg, Some(sugg));
    }
}
