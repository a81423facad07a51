//! What the agent writes so that the datapath decides egress by name exactly as the API says:
//! per endpoint, its name rules, the patterns the datapath matches answers against (each with
//! a rule mask), and one variant compile of the endpoint's egress per name rule.
//!
//! # Name rules
//! The name rules of an endpoint are the egress ClusterNetworkPolicy rules selecting it that
//! have at least one `domainNames` peer (only Accept rules can: in a Deny or Pass rule such a
//! peer fails closed at validation), in evaluation order (tier, priority, name, rule index):
//! R_0..R_{k-1}, `k <= `[`MAX_NAME_RULES`]. Baseline rules are left out when a NetworkPolicy
//! isolates the endpoint's egress: that tier is never reached, so they could not change an
//! answer. Rules beyond the limit fail closed for that endpoint (their names are never
//! learnt for it: their `domainNames` peers match nothing) and are reported, naming the pod
//! and the policy and rule.
//!
//! # What the datapath does
//! The base compile (the endpoint's `EndpointPolicy`) has every `domainNames` peer match no
//! address. The datapath learns, from the cluster DNS service's answers to the pod, (endpoint,
//! address) -> (expiry, mask S), S = the rules one of whose patterns matches a name on the
//! answer's chain ([`EndpointNames::mask_for`], or the longest match over
//! [`EndpointNames::patterns`]). For a new egress flow the base policy does not allow, to an
//! address learnt with mask S, it allows the flow iff some i in S has variant i allowing it,
//! taking the first such i (lowest bit) and that variant's `rule_ref`
//! ([`EndpointNames::egress_lookup`] emulates it). Variant i is the endpoint's egress compiled
//! as if R_i's `domainNames` peers matched every address (0.0.0.0/0 and ::/0) and every other
//! name peer none.
//!
//! # Why the variants give the API's answer
//! Let M be the set of rules (of the tiers) that match the flow without any name, and for a
//! set S of name rules, "S matches" mean R_i's name peers match the address for i in S (the
//! rule then matches if its ports do). The reference evaluator walks the rules in order: in
//! the Admin tier the first matching rule decides (Accept, Deny) or jumps to the
//! NetworkPolicy tier (Pass); an isolating NetworkPolicy decides; then the Baseline tier as
//! the Admin one. Which rule positions the walk visits before it stops depends only on the
//! matching rules it has met so far. Name peers occur only in Accept rules, so adding
//! matches only adds Accept rules to M:
//! - If the walk over M visits no rule of S (with its ports matching), the walk over M + S is
//!   the same walk: the answer is the base answer, and so is the answer with each {i} alone.
//! - Otherwise let R_j be the first rule of S it visits. Over M + S the walk is the same up to
//!   R_j, which accepts: allowed, by R_j. Over M + {j} the same: allowed by R_j. For i in S
//!   before R_j, the walk over M never visits R_i, so over M + {i} it is the base walk.
//!
//! So "allowed with the names of S matching" == "exists i in S: allowed with only R_i's
//! matching", and when the base does not allow the flow, the first i in S whose variant
//! allows it is j, whose variant names R_j. `tests/fqdn.rs` holds this against the reference
//! evaluator given learnt facts ([`Learnt`]) for random clusters.
//!
//! # Patterns
//! [`EndpointNames::patterns`] is the union of the name rules' patterns, each with a mask such
//! that a longest-match lookup (on reversed-label keys: an exact name beats any wildcard, a
//! longer wildcard suffix beats a shorter one) answers the union of the bits of every rule
//! with a pattern matching the name: an exact `X` carries the bits of every rule with `X` or
//! with `*.S` for S a proper label-suffix of X; a wildcard `*.S` those of every rule with
//! `*.S'` for S' equal to S or a proper label-suffix of it. (The datapath's key encoding is
//! `common/src/fqdn.rs`'s.)

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_common::DIR_EGRESS;
use palisade_common::policy::rule_allows;

use super::DomainPattern;
use crate::cnp::{CnpPeer, Tier};
use crate::compile::{Compiler, EndpointPolicy};
use crate::model::{PodInfo, PodKey};
use crate::output::lookup;
use crate::rules::RuleId;
use crate::validate::Direction;

/// At most this many name rules per endpoint (the mask is 8 bits).
pub const MAX_NAME_RULES: usize = 8;

/// One name rule of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NameRule {
    pub id: RuleId,
    pub rule_ref: u32,
    /// Its `domainNames` entries (of all its name peers).
    pub patterns: Vec<DomainPattern>,
}

/// What the datapath needs to decide egress by name for one endpoint (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointNames {
    /// R_0..R_{k-1}: bit i of a mask is `name_rules[i]`.
    pub name_rules: Vec<NameRule>,
    /// Each distinct pattern of the name rules with its longest-match mask.
    pub patterns: Vec<(DomainPattern, u8)>,
    /// `variants[i]`: the egress entries (and `egress_isolated`) with R_i's names matching
    /// every address. Identical variants (of any endpoint) share one `Arc`.
    pub variants: Vec<Arc<EndpointPolicy>>,
    /// Name rules beyond [`MAX_NAME_RULES`]: never learnt for this endpoint (fail closed).
    pub overflow: Vec<RuleId>,
}

impl EndpointNames {
    /// The mask a name teaches: bit i when a pattern of R_i matches it (a linear scan; the
    /// datapath's longest match over `patterns` answers the same).
    pub fn mask_for(&self, name: &str) -> u8 {
        let rules: Vec<&[DomainPattern]> = self
            .name_rules
            .iter()
            .map(|r| r.patterns.as_slice())
            .collect();
        mask_for(&rules, name)
    }

    /// What the datapath answers for a new egress flow of this endpoint (base policy `base`)
    /// to `peer`, learnt with `mask` (0: not learnt): the base answer when it allows, else
    /// the first variant in `mask` that allows, else the base answer. As `output::lookup`:
    /// the rule reference, `None` when no entry matches.
    pub fn egress_lookup(
        &self,
        base: &EndpointPolicy,
        peer: IpAddr,
        proto: u8,
        port: u16,
        mask: u8,
    ) -> Option<u32> {
        let r = lookup(base, DIR_EGRESS, peer, proto, port);
        if r.is_some_and(rule_allows) {
            return r;
        }
        (0..self.variants.len())
            .filter(|i| mask & (1 << i) != 0)
            .find_map(|i| {
                lookup(&self.variants[i], DIR_EGRESS, peer, proto, port).filter(|v| rule_allows(*v))
            })
            .or(r)
    }
}

/// Bit i when some pattern of `rules[i]` matches `name` (i < 8).
pub fn mask_for(rules: &[&[DomainPattern]], name: &str) -> u8 {
    rules
        .iter()
        .take(MAX_NAME_RULES)
        .enumerate()
        .filter(|(_, ps)| ps.iter().any(|p| p.matches(name)))
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// Every distinct pattern of `rules` (at most 8) with the mask its longest-match entry carries
/// (see the module doc), sorted by pattern.
pub fn patterns(rules: &[&[DomainPattern]]) -> Vec<(DomainPattern, u8)> {
    let mut own: BTreeMap<&DomainPattern, u8> = BTreeMap::new();
    for (i, ps) in rules.iter().take(MAX_NAME_RULES).enumerate() {
        for p in ps.iter() {
            *own.entry(p).or_default() |= 1 << i;
        }
    }
    own.keys()
        .map(|p| {
            let mask = own
                .iter()
                .filter(|(q, _)| answers_for(q, p))
                .fold(0, |m, (_, b)| m | b);
            ((*p).clone(), mask)
        })
        .collect()
}

/// Whether `q` matches every name whose longest match is `p`'s entry: for an exact `p`, that
/// name; for `*.S`, names with labels before S (and no longer match), which `*.S'` matches
/// iff S' is S or a proper label-suffix of S.
fn answers_for(q: &DomainPattern, p: &DomainPattern) -> bool {
    match (q.is_wildcard(), p.is_wildcard()) {
        (false, false) => q == p,
        (true, false) => q.matches(p.suffix()),
        (true, true) => q.suffix() == p.suffix() || q.matches(p.suffix()),
        (false, true) => false,
    }
}

/// What pods learnt from the cluster DNS service's answers: (pod, address) -> the names it
/// was an answer for. The reference evaluator's input for `domainNames` peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learnt(BTreeMap<PodKey, BTreeMap<IpAddr, Vec<String>>>);

impl Learnt {
    /// `pod` was answered `addr` for `name` (any case, with or without the trailing dot).
    pub fn learn(&mut self, pod: PodKey, addr: IpAddr, name: impl Into<String>) {
        let names = self.0.entry(pod).or_default().entry(addr).or_default();
        let name = name.into();
        if !names.contains(&name) {
            names.push(name);
        }
    }

    /// The names `pod` learnt `addr` for (empty if none).
    pub fn names(&self, pod: &PodKey, addr: IpAddr) -> &[String] {
        self.0
            .get(pod)
            .and_then(|m| m.get(&addr))
            .map_or(&[], Vec::as_slice)
    }

    /// Every (address, names) `pod` learnt.
    pub fn of(&self, pod: &PodKey) -> impl Iterator<Item = (&IpAddr, &Vec<String>)> {
        self.0.get(pod).into_iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Compiler<'_> {
    /// The name rules, patterns and variants of an endpoint (`None` when it has no name
    /// rule). `selecting` and `selecting_cnps` as for `Compiler::endpoint`; `interned` shares
    /// identical variants.
    pub(crate) fn endpoint_names(
        &mut self,
        selecting: &[usize],
        selecting_cnps: &[usize],
        target: &PodInfo,
        interned: &mut HashMap<EndpointPolicy, Arc<EndpointPolicy>>,
    ) -> Option<EndpointNames> {
        let cnps = self.cnps;
        let (_, enforced) = self.split_audited(selecting);
        let np_isolated = self.np_isolates(&enforced, Direction::Egress);
        let mut rules: Vec<(usize, usize)> = Vec::new();
        for &ci in selecting_cnps {
            // The Baseline tier is never reached when a NetworkPolicy isolates the endpoint.
            if cnps[ci].tier == Tier::Baseline && np_isolated {
                continue;
            }
            for (ri, rule) in cnps[ci].egress.iter().enumerate() {
                if rule
                    .peers
                    .iter()
                    .any(|p| matches!(p, CnpPeer::DomainNames(_)))
                {
                    rules.push((ci, ri));
                }
            }
        }
        if rules.is_empty() {
            return None;
        }
        let id = |(ci, ri): (usize, usize)| {
            RuleId::cluster_network_policy(&cnps[ci].name, Direction::Egress, ri)
        };
        let overflow = rules
            .split_off(rules.len().min(MAX_NAME_RULES))
            .into_iter()
            .map(id)
            .collect();
        let mut name_rules = Vec::with_capacity(rules.len());
        let mut variants = Vec::with_capacity(rules.len());
        for &(ci, ri) in &rules {
            name_rules.push(NameRule {
                id: id((ci, ri)),
                rule_ref: self.cnp_refs[ci][1][ri],
                patterns: cnps[ci].egress[ri]
                    .peers
                    .iter()
                    .flat_map(|p| match p {
                        CnpPeer::DomainNames(ps) => ps.as_slice(),
                        _ => &[],
                    })
                    .cloned()
                    .collect(),
            });
            self.name_variant = Some((ci, ri));
            let mut ep = EndpointPolicy::default();
            // Audited NetworkPolicies decide nothing: the variant holds enforced entries only.
            self.endpoint_direction(
                &[],
                &enforced,
                selecting_cnps,
                target,
                Direction::Egress,
                &mut ep,
            );
            self.name_variant = None;
            let shared = match interned.get(&ep) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(ep.clone());
                    interned.insert(ep, a.clone());
                    a
                }
            };
            variants.push(shared);
        }
        let pats: Vec<&[DomainPattern]> =
            name_rules.iter().map(|r| r.patterns.as_slice()).collect();
        Some(EndpointNames {
            patterns: patterns(&pats),
            name_rules,
            variants,
            overflow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    /// The datapath's longest match on reversed-label keys, emulated: an exact key
    /// `[labels reversed.., "$"]`, a wildcard key `[suffix labels reversed.., "*"]`; a name
    /// looks up its exact key, then wildcard keys from its longest proper suffix down.
    fn longest_match(patterns: &[(DomainPattern, u8)], name: &str) -> u8 {
        let key = |labels: &[&str], end: &str| -> Vec<String> {
            labels
                .iter()
                .rev()
                .map(|l| l.to_ascii_lowercase())
                .chain([end.to_string()])
                .collect()
        };
        let table: BTreeMap<Vec<String>, u8> = patterns
            .iter()
            .map(|(p, m)| {
                let labels: Vec<&str> = p.suffix().split('.').collect();
                (key(&labels, if p.is_wildcard() { "*" } else { "$" }), *m)
            })
            .collect();
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels: Vec<&str> = name.split('.').collect();
        if let Some(m) = table.get(&key(&labels, "$")) {
            return *m;
        }
        (1..labels.len())
            .find_map(|skip| table.get(&key(&labels[skip..], "*")).copied())
            .unwrap_or(0)
    }

    #[test]
    fn masks_carry_every_rule_a_longest_match_stands_for() {
        let r0 = [p("api.example.com")];
        let r1 = [p("*.example.com")];
        let r2 = [p("*.cdn.example.com"), p("example.org")];
        let r3 = [p("x.cdn.example.com")];
        let rules: [&[DomainPattern]; 4] = [&r0, &r1, &r2, &r3];
        let got = patterns(&rules);
        let want = [
            ("*.cdn.example.com", 0b0110),
            ("*.example.com", 0b0010),
            ("api.example.com", 0b0011),
            ("example.org", 0b0100),
            ("x.cdn.example.com", 0b1110),
        ];
        let mut got: Vec<(String, u8)> = got.iter().map(|(p, m)| (p.to_string(), *m)).collect();
        got.sort();
        let want: Vec<(String, u8)> = want.iter().map(|(p, m)| (p.to_string(), *m)).collect();
        assert_eq!(got, want);
        assert_eq!(mask_for(&rules, "API.example.com."), 0b0011);
        assert_eq!(mask_for(&rules, "a.b.cdn.example.com"), 0b0110);
        assert_eq!(mask_for(&rules, "example.com"), 0);
    }

    fn label() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["a", "b", "cdn", "example", "com", "Com"][..])
    }

    fn pattern() -> impl Strategy<Value = DomainPattern> {
        (any::<bool>(), prop::collection::vec(label(), 2..=3)).prop_map(|(w, ls)| {
            let s = format!("{}{}", if w { "*." } else { "" }, ls.join("."));
            DomainPattern::parse(&s).expect("generated pattern")
        })
    }

    proptest! {
        /// The longest-match answer over `patterns` is `mask_for`, for random rules and names.
        #[test]
        fn longest_match_over_patterns_is_mask_for(
            rules in prop::collection::vec(prop::collection::vec(pattern(), 1..=3), 1..=MAX_NAME_RULES),
            names in prop::collection::vec((prop::collection::vec(label(), 1..=5), any::<bool>()), 1..=20),
        ) {
            let rules: Vec<&[DomainPattern]> = rules.iter().map(Vec::as_slice).collect();
            let pats = patterns(&rules);
            for (labels, dot) in &names {
                let name = format!("{}{}", labels.join("."), if *dot { "." } else { "" });
                prop_assert_eq!(longest_match(&pats, &name), mask_for(&rules, &name), "{} {:?}", name, pats);
            }
        }
    }
}
