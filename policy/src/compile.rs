//! NetworkPolicy -> desired contents of `pal_pol_v1` / `pal_port_v1`, per local endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::model::{Cluster, Labels, NamedPort, PodInfo, PodKey};
use crate::ports::{PortSet, PortUnion};
use crate::prefix::Prefix;
use crate::validate::{
    Direction, NormPolicy, NormRule, Peer, PortMatch, Problem, normalize, policy_object_name,
};

/// Identity of one rule: `spec.<direction>[index]` of policy `namespace/policy`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {}[{}]",
            self.namespace,
            self.policy,
            self.direction.name(),
            self.index
        )
    }
}

/// Stable `rule_ref` numbers (>= 1) for rules. The agent keeps one registry for its lifetime:
/// an unchanged rule keeps its number across compiles, and a number is never given to another
/// rule, so a `rule_ref` seen in a counter or a conntrack entry always names the same rule.
#[derive(Clone, Debug, Default)]
pub struct RuleRegistry {
    /// (namespace, policy) -> references of its ingress and egress rules, by index. A rule
    /// without a reference yet has 0 there.
    by_policy: HashMap<(String, String), [Vec<u32>; 2]>,
    by_ref: BTreeMap<u32, RuleId>,
    last: u32,
    /// Bit `r` set: reference `r` was used since the last `drop_unused`.
    used: Vec<u64>,
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl RuleRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn mark_used(&mut self, r: u32) {
        let (word, bit) = (r as usize / 64, r % 64);
        if self.used.len() <= word {
            self.used.resize(word + 1, 0);
        }
        self.used[word] |= 1 << bit;
    }

    fn is_used(&self, r: u32) -> bool {
        self.used
            .get(r as usize / 64)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// The reference of `id`, assigning the next free number on first sight. Marks it used.
    pub fn rule_ref(&mut self, id: &RuleId) -> u32 {
        let r = match self.get(id) {
            Some(r) => r,
            None => {
                self.last += 1;
                let refs = &mut self
                    .by_policy
                    .entry((id.namespace.clone(), id.policy.clone()))
                    .or_default()[dir_index(id.direction)];
                if refs.len() <= id.index {
                    refs.resize(id.index + 1, 0);
                }
                refs[id.index] = self.last;
                self.by_ref.insert(self.last, id.clone());
                self.last
            }
        };
        self.mark_used(r);
        r
    }

    /// The references of rules `0..count` of one direction of one policy, assigning numbers
    /// to those seen for the first time (in index order). Marks them used.
    pub(crate) fn policy_refs(
        &mut self,
        namespace: &str,
        policy: &str,
        direction: Direction,
        count: usize,
    ) -> Vec<u32> {
        let key = (namespace.to_string(), policy.to_string());
        let mut refs = self
            .by_policy
            .get(&key)
            .map(|d| d[dir_index(direction)].clone())
            .unwrap_or_default();
        if refs.len() < count {
            refs.resize(count, 0);
        }
        let mut assigned = false;
        for (index, r) in refs.iter_mut().enumerate().take(count) {
            if *r == 0 {
                self.last += 1;
                *r = self.last;
                self.by_ref.insert(
                    self.last,
                    RuleId {
                        namespace: namespace.to_string(),
                        policy: policy.to_string(),
                        direction,
                        index,
                    },
                );
                assigned = true;
            }
        }
        for &r in &refs[..count] {
            self.mark_used(r);
        }
        if assigned {
            self.by_policy.entry(key).or_default()[dir_index(direction)] = refs.clone();
        }
        refs.truncate(count);
        refs
    }

    /// The reference of `id`, if it has one (does not assign or mark).
    pub fn get(&self, id: &RuleId) -> Option<u32> {
        self.by_policy
            .get(&(id.namespace.clone(), id.policy.clone()))
            .and_then(|d| d[dir_index(id.direction)].get(id.index))
            .copied()
            .filter(|r| *r != 0)
    }

    /// The rule behind a reference.
    pub fn describe(&self, rule_ref: u32) -> Option<&RuleId> {
        self.by_ref.get(&rule_ref)
    }

    pub fn len(&self) -> usize {
        self.by_ref.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ref.is_empty()
    }

    /// Forgets every rule not referenced since the previous call (i.e. by the compiles in
    /// between) and returns their references. Call it once the maps no longer hold them.
    pub fn drop_unused(&mut self) -> Vec<u32> {
        let stale: Vec<u32> = self
            .by_ref
            .keys()
            .filter(|r| !self.is_used(**r))
            .copied()
            .collect();
        for r in &stale {
            if let Some(id) = self.by_ref.remove(r)
                && let Some(d) = self
                    .by_policy
                    .get_mut(&(id.namespace.clone(), id.policy.clone()))
                && let Some(slot) = d[dir_index(id.direction)].get_mut(id.index)
            {
                *slot = 0;
            }
        }
        self.by_policy
            .retain(|_, d| d.iter().flatten().any(|r| *r != 0));
        self.used.clear();
        stale
    }
}

/// A key of an endpoint's policy: direction (`DIR_INGRESS`/`DIR_EGRESS`) and peer prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerPrefix {
    pub dir: u8,
    /// Masked to `len` bits.
    pub addr: IpAddr,
    pub len: u8,
}

impl PeerPrefix {
    pub fn prefix(&self) -> Prefix {
        Prefix::new(self.addr, self.len)
    }
}

/// What is allowed with the peers of one prefix (longest match wins).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerAllow {
    /// Every protocol and port; `rule_ref` is the first rule allowing it.
    AllPorts { rule_ref: u32 },
    /// These ports only. Empty: nothing (a hole that shadows shorter allowing prefixes).
    Ports(PortSet),
}

/// Desired policy of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointPolicy {
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Only directions that are isolated have entries.
    pub entries: BTreeMap<PeerPrefix, PeerAllow>,
}

/// Output of `compile`.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// One entry per local pod that has an interface (not host-network). Endpoints whose
    /// policies are identical share one `Arc`, so the agent may share one `policy_id`.
    pub endpoints: BTreeMap<PodKey, Arc<EndpointPolicy>>,
    /// Skipped (invalid) policies and unknown local pods, in input order.
    pub problems: Vec<Problem>,
}

/// A NetworkPolicy that passed validation, in the normalized form `compile_prepared` works
/// on. Preparing is the per-policy part of a compile (parsing CIDRs, selectors, ports): a
/// caller that compiles repeatedly keeps the `Prepared` of every policy that did not change.
#[derive(Clone, Debug)]
pub struct Prepared(NormPolicy);

impl Prepared {
    /// `namespace/name` of the policy.
    pub fn key(&self) -> (&str, &str) {
        (&self.0.namespace, &self.0.name)
    }

    pub(crate) fn norm(&self) -> &NormPolicy {
        &self.0
    }
}

/// Validates and normalizes one policy: `Err` lists every problem (as `validate` does).
pub fn prepare(policy: &NetworkPolicy) -> Result<Prepared, Vec<Problem>> {
    normalize(policy).map(Prepared)
}

/// Compiles the policy of every pod in `local_pods` (the pods on this node). Every pod of the
/// cluster is a potential peer. Invalid policies are skipped whole and reported.
pub fn compile(cluster: &Cluster, local_pods: &[PodKey], reg: &mut RuleRegistry) -> Compiled {
    let mut problems = Vec::new();
    let mut prepared: Vec<Prepared> = Vec::new();
    for p in &cluster.policies {
        match prepare(p) {
            Ok(n) => prepared.push(n),
            Err(found) => {
                debug_assert!(found.iter().all(|pr| pr.object == policy_object_name(p)));
                problems.extend(found);
            }
        }
    }
    let refs: Vec<&Prepared> = prepared.iter().collect();
    let mut out = compile_prepared(cluster, &refs, local_pods, reg);
    problems.append(&mut out.problems);
    out.problems = problems;
    out
}

/// `compile` over policies already prepared: `policies` replaces `cluster.policies`, which is
/// not read. The result is the one `compile` gives for a cluster holding those policies.
pub fn compile_prepared(
    cluster: &Cluster,
    policies: &[&Prepared],
    local_pods: &[PodKey],
    reg: &mut RuleRegistry,
) -> Compiled {
    let mut out = Compiled::default();
    let policies: Vec<&NormPolicy> = policies.iter().map(|p| &p.0).collect();
    let refs: Vec<[Vec<u32>; 2]> = policies
        .iter()
        .map(|n| {
            Direction::BOTH.map(|dir| {
                reg.policy_refs(&n.namespace, &n.name, dir, n.rules(dir).map_or(0, Vec::len))
            })
        })
        .collect();
    let mut c = Compiler::new(cluster, &policies, &refs);
    let pod_by_key: HashMap<(&str, &str), &PodInfo> = cluster
        .pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect();
    let mut by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        by_ns.entry(p.namespace.as_str()).or_default().push(i);
    }
    let mut cache: HashMap<(Vec<usize>, Vec<NamedPort>), Arc<EndpointPolicy>> = HashMap::new();
    for key in local_pods {
        let Some(pod) = pod_by_key.get(&(key.namespace.as_str(), key.name.as_str())) else {
            out.problems.push(Problem::new(
                format!("Pod {key}"),
                "metadata.name",
                format!("local pod {key:?} is not in the cluster"),
            ));
            continue;
        };
        if pod.host_network {
            continue;
        }
        let selecting: Vec<usize> = by_ns
            .get(pod.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|i| policies[*i].selector.matches(&pod.labels))
            .collect();
        let mut ports = pod.ports.clone();
        ports.sort();
        let ep = cache
            .entry((selecting, ports))
            .or_insert_with_key(|(sel, _)| Arc::new(c.endpoint(sel, pod)))
            .clone();
        out.endpoints.insert(key.clone(), ep);
    }
    out
}

struct Compiler<'a> {
    cluster: &'a Cluster,
    policies: &'a [&'a NormPolicy],
    refs: &'a [[Vec<u32>; 2]],
    /// Every namespace: declared ones with their labels, plus those only pods mention.
    namespaces: BTreeMap<&'a str, &'a Labels>,
    /// Selectable pods per namespace.
    pods_by_ns: HashMap<&'a str, Vec<usize>>,
    /// Selectable pods per (label key, value).
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
    /// Selectable pods of each (policy, direction, rule, peer).
    peer_pods: HashMap<(usize, Direction, usize, usize), Arc<Vec<usize>>>,
}

static NO_LABELS: Labels = Labels::new();

struct Block {
    cidr: Prefix,
    except: Excepts,
    ports: Arc<PortUnion>,
}

impl<'a> Compiler<'a> {
    fn new(
        cluster: &'a Cluster,
        policies: &'a [&'a NormPolicy],
        refs: &'a [[Vec<u32>; 2]],
    ) -> Self {
        let mut namespaces: BTreeMap<&str, &Labels> = cluster
            .namespaces
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let mut pods_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, p) in cluster.pods.iter().enumerate() {
            namespaces.entry(p.namespace.as_str()).or_insert(&NO_LABELS);
            if !p.is_selectable_peer() {
                continue;
            }
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(i);
            for (k, v) in &p.labels {
                by_label
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        Compiler {
            cluster,
            policies,
            refs,
            namespaces,
            pods_by_ns,
            by_label,
            peer_pods: HashMap::new(),
        }
    }

    /// Selectable pods matched by a selector peer of policy `pi` (memoised).
    fn select(&mut self, pi: usize, dir: Direction, ri: usize, k: usize) -> Arc<Vec<usize>> {
        if let Some(v) = self.peer_pods.get(&(pi, dir, ri, k)) {
            return v.clone();
        }
        let pol = &self.policies[pi];
        let Some(Peer::Pods { namespaces, pods }) = pol
            .rules(dir)
            .and_then(|r| r.get(ri))
            .and_then(|r| r.peers.as_ref())
            .and_then(|p| p.get(k))
        else {
            return Arc::default();
        };
        let ns: BTreeSet<&str> = match namespaces {
            None => BTreeSet::from([pol.namespace.as_str()]),
            Some(s) => self
                .namespaces
                .iter()
                .filter(|(_, l)| s.matches(l))
                .map(|(n, _)| *n)
                .collect(),
        };
        let mut found: Vec<usize> = match pods.index_hint() {
            Some((key, values)) => values
                .iter()
                .flat_map(|v| self.by_label.get(&(key, v.as_str())).into_iter().flatten())
                .copied()
                .filter(|i| ns.contains(self.cluster.pods[*i].namespace.as_str()))
                .collect(),
            None => ns
                .iter()
                .flat_map(|n| self.pods_by_ns.get(n).into_iter().flatten())
                .copied()
                .collect(),
        };
        found.retain(|i| pods.matches(&self.cluster.pods[*i].labels));
        found.sort_unstable();
        found.dedup();
        let v = Arc::new(found);
        self.peer_pods.insert((pi, dir, ri, k), v.clone());
        v
    }

    fn endpoint(&mut self, selecting: &[usize], target: &PodInfo) -> EndpointPolicy {
        let mut ep = EndpointPolicy::default();
        for dir in Direction::BOTH {
            let isolated = selecting
                .iter()
                .any(|pi| self.policies[*pi].rules(dir).is_some());
            match dir {
                Direction::Ingress => ep.ingress_isolated = isolated,
                Direction::Egress => ep.egress_isolated = isolated,
            }
            if isolated {
                self.direction(selecting, target, dir, &mut ep.entries);
            }
        }
        ep
    }

    /// The entries of one isolated direction.
    ///
    /// 1. Every rule contributes "blocks" (an ipBlock, or 0.0.0.0/0 and ::/0 for a rule
    ///    without peers) and host prefixes (each address of each pod a selector names).
    /// 2. S = every block cidr, every except, every host prefix.
    /// 3. value(P) for P in S = union of the ports of every host contribution at P and of
    ///    every block whose cidr contains P and none of whose excepts contains P. Because every
    ///    boundary is in S, the longest P in S containing an address gives exactly the union
    ///    the spec gives for that address (per peer, so an except of one peer or rule never
    ///    hides another's allow).
    /// 4. P with an empty value is kept only when a shorter block could otherwise match it
    ///    (a hole); it then denies.
    fn direction(
        &mut self,
        selecting: &[usize],
        target: &PodInfo,
        dir: Direction,
        entries: &mut BTreeMap<PeerPrefix, PeerAllow>,
    ) {
        let mut blocks: Vec<Block> = Vec::new();
        let mut hosts: HashMap<Prefix, PortUnion> = HashMap::new();
        let di = match dir {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        let policies = self.policies;
        let cluster = self.cluster;
        for &pi in selecting {
            let Some(rules) = policies[pi].rules(dir) else {
                continue;
            };
            for (ri, rule) in rules.iter().enumerate() {
                let r = self.refs[pi][di][ri];
                // Named ports resolve against the selected pod at ingress; at egress against
                // each destination pod, and never for address peers.
                let base = Arc::new(port_union(
                    rule,
                    (dir == Direction::Ingress).then_some(target),
                    r,
                ));
                let per_pod = dir == Direction::Egress && rule.has_named_ports();
                let add_pod = |hosts: &mut HashMap<Prefix, PortUnion>, p: &PodInfo| {
                    let u = if per_pod {
                        port_union(rule, Some(p), r)
                    } else {
                        (*base).clone()
                    };
                    for ip in &p.ips {
                        hosts.entry(Prefix::host(*ip)).or_default().merge(&u);
                    }
                };
                match &rule.peers {
                    None => {
                        for cidr in [
                            Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                            Prefix::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                        ] {
                            blocks.push(Block {
                                cidr,
                                except: Excepts::Few(Vec::new()),
                                ports: base.clone(),
                            });
                        }
                        if per_pod {
                            for p in cluster.pods.iter().filter(|p| p.is_selectable_peer()) {
                                if resolves_named(rule, p) {
                                    add_pod(&mut hosts, p);
                                }
                            }
                        }
                    }
                    Some(peers) => {
                        for (k, peer) in peers.iter().enumerate() {
                            match peer {
                                Peer::Block { cidr, except } => blocks.push(Block {
                                    cidr: *cidr,
                                    except: Excepts::new(except),
                                    ports: base.clone(),
                                }),
                                Peer::Pods { .. } => {
                                    for &i in self.select(pi, dir, ri, k).iter() {
                                        add_pod(&mut hosts, &cluster.pods[i]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Only blocks whose cidr contains P matter for P: index them by cidr and walk P's
        // ancestors at the prefix lengths that occur (at most 33 for IPv4, 129 for IPv6),
        // instead of testing every block against every P.
        let by_cidr = PrefixIndex::new(blocks.iter().enumerate().map(|(i, b)| (b.cidr, i)));
        let mut s: BTreeSet<Prefix> = hosts.keys().copied().collect();
        for b in &blocks {
            s.insert(b.cidr);
            s.extend(b.except.iter());
        }
        for p in s {
            let mut u = hosts.remove(&p).unwrap_or_default();
            let mut shadowing = false;
            for (cidr, covering) in by_cidr.containing(&p) {
                shadowing |= cidr.len < p.len;
                for &bi in covering {
                    let b = &blocks[bi];
                    if !b.except.contains(&p) {
                        u.merge(&b.ports);
                    }
                }
            }
            if u.is_empty() && !shadowing {
                continue;
            }
            let allow = match u.finish() {
                Ok(rule_ref) => PeerAllow::AllPorts { rule_ref },
                Err(set) => PeerAllow::Ports(set),
            };
            entries.insert(
                PeerPrefix {
                    dir: dir.to_dir(),
                    addr: p.addr,
                    len: p.len,
                },
                allow,
            );
        }
    }
}

/// Prefixes with values, for the question "which of them contain P": a hash map by exact
/// prefix plus the prefix lengths that occur per family, so a query probes only P's ancestors
/// at those lengths.
struct PrefixIndex<T> {
    by_prefix: HashMap<Prefix, Vec<T>>,
    /// Distinct lengths present, ascending: `[0]` IPv4, `[1]` IPv6.
    lens: [Vec<u8>; 2],
}

impl<T> PrefixIndex<T> {
    fn new(items: impl IntoIterator<Item = (Prefix, T)>) -> Self {
        let mut by_prefix: HashMap<Prefix, Vec<T>> = HashMap::new();
        let mut lens: [BTreeSet<u8>; 2] = Default::default();
        for (p, v) in items {
            lens[usize::from(!p.is_v4())].insert(p.len);
            by_prefix.entry(p).or_default().push(v);
        }
        PrefixIndex {
            by_prefix,
            lens: lens.map(|l| l.into_iter().collect()),
        }
    }

    /// Every indexed prefix containing `p` (itself included), shortest first, with its values.
    fn containing<'s>(&'s self, p: &Prefix) -> impl Iterator<Item = (Prefix, &'s [T])> + 's {
        let p = *p;
        self.lens[usize::from(!p.is_v4())]
            .iter()
            .take_while(move |l| **l <= p.len)
            .filter_map(move |&l| {
                let a = Prefix::new(p.addr, l);
                self.by_prefix.get(&a).map(|v| (a, v.as_slice()))
            })
    }
}

/// The excepts of one ipBlock: a plain list when short, indexed when long (a block with
/// thousands of excepts would otherwise make the union step quadratic again).
enum Excepts {
    Few(Vec<Prefix>),
    Many(PrefixIndex<()>),
}

impl Excepts {
    const INDEX_ABOVE: usize = 8;

    fn new(except: &[Prefix]) -> Self {
        if except.len() > Self::INDEX_ABOVE {
            Excepts::Many(PrefixIndex::new(except.iter().map(|e| (*e, ()))))
        } else {
            Excepts::Few(except.to_vec())
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = Prefix> + '_> {
        match self {
            Excepts::Few(v) => Box::new(v.iter().copied()),
            Excepts::Many(ix) => Box::new(ix.by_prefix.keys().copied()),
        }
    }

    /// Whether some except contains `p`.
    fn contains(&self, p: &Prefix) -> bool {
        match self {
            Excepts::Few(v) => v.iter().any(|e| e.contains(p)),
            Excepts::Many(ix) => ix.containing(p).next().is_some(),
        }
    }
}

fn resolves_named(rule: &NormRule, pod: &PodInfo) -> bool {
    rule.ports.iter().flatten().any(|s| match &s.port {
        PortMatch::Named(n) => pod
            .ports
            .iter()
            .any(|np| &np.name == n && np.protocol == s.proto),
        _ => false,
    })
}

/// What `rule` allows port-wise, named ports resolved against `ctx` (none if `None`).
fn port_union(rule: &NormRule, ctx: Option<&PodInfo>, r: u32) -> PortUnion {
    let mut u = PortUnion::default();
    let Some(ports) = &rule.ports else {
        u.add_any(r);
        return u;
    };
    for s in ports {
        let proto = s.proto.number();
        match &s.port {
            PortMatch::All => u.add_range(proto, 0, 65535, r),
            PortMatch::Range(lo, hi) => u.add_range(proto, u32::from(*lo), u32::from(*hi), r),
            PortMatch::Named(n) => {
                for np in ctx.iter().flat_map(|c| c.ports.iter()) {
                    if &np.name == n && np.protocol == s.proto {
                        u.add_range(proto, u32::from(np.port), u32::from(np.port), r);
                    }
                }
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::parse(s).expect("prefix")
    }

    /// The indexed forms answer exactly what testing every prefix would.
    #[test]
    fn indexed_containment_equals_testing_every_prefix() {
        let mut set: Vec<Prefix> = Vec::new();
        for i in 0..40u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 | (i * 0x0001_3700));
            set.push(Prefix::new(IpAddr::V4(a), (8 + i % 25) as u8));
        }
        set.push(p("fd00::/8"));
        set.push(p("fd00:1::/32"));
        set.push(p("0.0.0.0/0"));
        let many = Excepts::new(&set);
        assert!(matches!(many, Excepts::Many(_)));
        let few = Excepts::Few(set.clone());
        let ix = PrefixIndex::new(set.iter().map(|s| (*s, ())));
        let mut probes: Vec<Prefix> = set.clone();
        for i in 0..2000u32 {
            let a =
                std::net::Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i.wrapping_mul(0x9e37_79b9)));
            probes.push(Prefix::new(IpAddr::V4(a), (i % 33) as u8));
        }
        probes.push(p("fd00:1:2::/48"));
        probes.push(p("fe80::/10"));
        probes.push(p("::/0"));
        for q in &probes {
            assert_eq!(many.contains(q), few.contains(q), "{q}");
            let want: Vec<Prefix> = {
                let mut v: Vec<Prefix> = set.iter().filter(|s| s.contains(q)).copied().collect();
                v.sort_by_key(|s| s.len);
                v.dedup();
                v
            };
            let got: Vec<Prefix> = ix.containing(q).map(|(s, _)| s).collect();
            assert_eq!(got, want, "{q}");
        }
    }
}
