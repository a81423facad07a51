//! NetworkPolicy (and, through `tiers.rs`, ClusterNetworkPolicy) -> desired contents of
//! `pal_pol_v1` / `pal_port_v1`, per local endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_common::DIR_AUDIT;

use crate::cnp::{NormCnp, PreparedCnp, prepare_cluster_policy};
use crate::fqdn::{EndpointNames, MAX_NAME_RULES};
use crate::model::{Cluster, Labels, NamedPort, PodInfo, PodKey};
use crate::ports::{PortSet, PortUnion};
use crate::prefix::Prefix;
use crate::rules::{RuleId, RuleKind, RuleRegistry};
use crate::selector::Selector;
use crate::validate::{
    Direction, NormPolicy, NormRule, Peer, PortMatch, Problem, normalize, policy_object_name,
};

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
    /// Audited policies (`Prepared::audited`) isolate the endpoint in this direction; their
    /// entries have `DIR_AUDIT` added to the direction.
    pub audit_ingress_isolated: bool,
    pub audit_egress_isolated: bool,
    /// Only directions that are isolated (by enforced or by audited policies) have entries.
    pub entries: BTreeMap<PeerPrefix, PeerAllow>,
}

/// Output of `compile`.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// One entry per local pod that has an interface (not host-network). Endpoints whose
    /// policies are identical share one `Arc`, so the agent may share one `policy_id`.
    pub endpoints: BTreeMap<PodKey, Arc<EndpointPolicy>>,
    /// Skipped (invalid) policies and unknown local pods, in input order; name rules beyond
    /// `fqdn::MAX_NAME_RULES` of an endpoint.
    pub problems: Vec<Problem>,
    /// Endpoints with name rules (egress ClusterNetworkPolicy rules with `domainNames`
    /// peers): what the datapath needs to allow by learnt address (`fqdn::names`).
    pub names: BTreeMap<PodKey, Arc<EndpointNames>>,
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

    /// In audit mode (its annotation, or `with_audit`): it decides nothing; what it would
    /// drop is reported.
    pub fn audited(&self) -> bool {
        self.0.audit
    }

    /// The same policy, audited (`true`: a node in audit mode) or as its annotation says.
    pub fn with_audit(mut self, audit: bool) -> Self {
        self.0.audit |= audit;
        self
    }
}

/// Validates and normalizes one policy: `Err` lists every problem (as `validate` does).
pub fn prepare(policy: &NetworkPolicy) -> Result<Prepared, Vec<Problem>> {
    normalize(policy).map(Prepared)
}

/// Compiles the policy of every pod in `local_pods` (the pods on this node). Every pod of the
/// cluster is a potential peer. Invalid policies (NetworkPolicies and ClusterNetworkPolicies)
/// are skipped whole and reported, as are the peers of valid ClusterNetworkPolicies that fail
/// closed.
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
    let mut prepared_cnps: Vec<PreparedCnp> = Vec::new();
    for p in &cluster.cluster_policies {
        match prepare_cluster_policy(p) {
            Ok(n) => {
                problems.extend(n.notices().iter().cloned());
                prepared_cnps.push(n);
            }
            Err(found) => problems.extend(found),
        }
    }
    let refs: Vec<&Prepared> = prepared.iter().collect();
    let cnp_refs: Vec<&PreparedCnp> = prepared_cnps.iter().collect();
    let mut out = compile_tiers(cluster, &refs, &cnp_refs, local_pods, reg);
    problems.append(&mut out.problems);
    out.problems = problems;
    out
}

/// `compile` over NetworkPolicies already prepared and no ClusterNetworkPolicy.
pub fn compile_prepared(
    cluster: &Cluster,
    policies: &[&Prepared],
    local_pods: &[PodKey],
    reg: &mut RuleRegistry,
) -> Compiled {
    compile_tiers(cluster, policies, &[], local_pods, reg)
}

/// `compile` over policies already prepared: `policies` and `cluster_policies` replace
/// `cluster.policies` and `cluster.cluster_policies`, which are not read. The result is the
/// one `compile` gives for a cluster holding those policies.
pub fn compile_tiers(
    cluster: &Cluster,
    policies: &[&Prepared],
    cluster_policies: &[&PreparedCnp],
    local_pods: &[PodKey],
    reg: &mut RuleRegistry,
) -> Compiled {
    let mut out = Compiled::default();
    let policies: Vec<&NormPolicy> = policies.iter().map(|p| &p.0).collect();
    let refs: Vec<[Vec<u32>; 2]> = policies
        .iter()
        .map(|n| {
            Direction::BOTH.map(|dir| {
                reg.policy_refs(
                    RuleKind::NetworkPolicy,
                    &n.namespace,
                    &n.name,
                    dir,
                    n.rules(dir).map_or(0, Vec::len),
                )
            })
        })
        .collect();
    // Evaluation order: tier, priority, name (see `NormCnp::order_key`).
    let mut cnps: Vec<&NormCnp> = cluster_policies.iter().map(|p| &*p.policy).collect();
    cnps.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let cnp_refs: Vec<[Vec<u32>; 2]> = cnps
        .iter()
        .map(|n| {
            Direction::BOTH.map(|dir| {
                reg.policy_refs(
                    RuleKind::ClusterNetworkPolicy,
                    "",
                    &n.name,
                    dir,
                    n.rules(dir).len(),
                )
            })
        })
        .collect();
    // Only endpoints that ClusterNetworkPolicies select can end in the default allow.
    let default_refs = if cnps.is_empty() {
        [0; 2]
    } else {
        Direction::BOTH.map(|dir| reg.rule_ref(&RuleId::default_allow(dir)))
    };
    let mut c = Compiler::new(cluster, &policies, &refs);
    c.cnps = &cnps;
    c.cnp_refs = &cnp_refs;
    c.default_refs = default_refs;
    let pod_by_key: HashMap<(&str, &str), &PodInfo> = cluster
        .pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect();
    let mut by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        by_ns.entry(p.namespace.as_str()).or_default().push(i);
    }
    type CacheKey = (Vec<usize>, Vec<usize>, Vec<NamedPort>);
    type Cached = (Arc<EndpointPolicy>, Option<Arc<EndpointNames>>);
    let mut cache: HashMap<CacheKey, Cached> = HashMap::new();
    let mut variants: HashMap<EndpointPolicy, Arc<EndpointPolicy>> = HashMap::new();
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
        let selecting_cnps = c.cnps_selecting(pod);
        let mut ports = pod.ports.clone();
        ports.sort();
        let (ep, names) = cache
            .entry((selecting, selecting_cnps, ports))
            .or_insert_with_key(|(sel, sel_cnp, _)| {
                let ep = Arc::new(c.endpoint(sel, sel_cnp, pod));
                let names = c
                    .endpoint_names(sel, sel_cnp, pod, &mut variants)
                    .map(Arc::new);
                (ep, names)
            })
            .clone();
        out.endpoints.insert(key.clone(), ep);
        if let Some(names) = names {
            for id in &names.overflow {
                out.problems.push(Problem::new(
                    format!("ClusterNetworkPolicy {}", id.policy),
                    format!("spec.egress[{}]", id.index),
                    format!(
                        "pod {key} is selected by more than {MAX_NAME_RULES} egress rules with \
                         domainNames peers; this rule's names are never learnt for it (it \
                         reaches none of them: fails closed)"
                    ),
                ));
            }
            out.names.insert(key.clone(), names);
        }
    }
    out
}

pub(crate) struct Compiler<'a> {
    pub(crate) cluster: &'a Cluster,
    policies: &'a [&'a NormPolicy],
    refs: &'a [[Vec<u32>; 2]],
    /// ClusterNetworkPolicies in evaluation order, and their rule references.
    pub(crate) cnps: &'a [&'a NormCnp],
    pub(crate) cnp_refs: &'a [[Vec<u32>; 2]],
    /// The default-allow reference per direction (ingress, egress).
    pub(crate) default_refs: [u32; 2],
    /// Every namespace: declared ones with their labels, plus those only pods mention.
    pub(crate) namespaces: BTreeMap<&'a str, &'a Labels>,
    /// Selectable pods per namespace.
    pods_by_ns: HashMap<&'a str, Vec<usize>>,
    /// Selectable pods per (label key, value).
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
    /// Selectable pods of each (policy, direction, rule, peer).
    peer_pods: HashMap<(usize, Direction, usize, usize), Arc<Vec<usize>>>,
    /// Host prefixes of each ClusterNetworkPolicy (policy, direction, rule, peer) naming
    /// pods or nodes (`tiers.rs`).
    pub(crate) cnp_peer_hosts: HashMap<(usize, Direction, usize, usize), Arc<Vec<Prefix>>>,
    /// Those lists interned by content.
    pub(crate) cnp_host_lists: std::collections::HashSet<Arc<Vec<Prefix>>>,
    /// Selectable pod at each host prefix (named ports of egress destinations).
    pub(crate) pod_at: Option<HashMap<Prefix, usize>>,
    /// While compiling the variant of egress rule (policy, rule) (`fqdn::names`): that
    /// rule's `domainNames` peers match every address. `None`: they match none.
    pub(crate) name_variant: Option<(usize, usize)>,
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
            cnps: &[],
            cnp_refs: &[],
            default_refs: [0; 2],
            namespaces,
            pods_by_ns,
            by_label,
            peer_pods: HashMap::new(),
            cnp_peer_hosts: HashMap::new(),
            cnp_host_lists: Default::default(),
            pod_at: None,
            name_variant: None,
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
            Some(s) => self.namespaces_matching(s),
        };
        let v = Arc::new(self.select_in(&ns, pods));
        self.peer_pods.insert((pi, dir, ri, k), v.clone());
        v
    }

    /// Names of the namespaces whose labels `s` matches.
    pub(crate) fn namespaces_matching(&self, s: &Selector) -> BTreeSet<&'a str> {
        self.namespaces
            .iter()
            .filter(|(_, l)| s.matches(l))
            .map(|(n, _)| *n)
            .collect()
    }

    /// Selectable pods of namespaces `ns` matching `pods`, sorted.
    pub(crate) fn select_in(&self, ns: &BTreeSet<&str>, pods: &Selector) -> Vec<usize> {
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
        found
    }

    /// The policy of one endpoint. `selecting` are the NetworkPolicies selecting it,
    /// `selecting_cnps` the ClusterNetworkPolicies (indices in evaluation order).
    ///
    /// Enforced NetworkPolicies and the tiers isolate and allow under
    /// `DIR_INGRESS`/`DIR_EGRESS`; audited NetworkPolicies under the same plus `DIR_AUDIT`
    /// (what they allow alone: `common::decide::audit` joins the two). The tiers are never
    /// audited.
    fn endpoint(
        &mut self,
        selecting: &[usize],
        selecting_cnps: &[usize],
        target: &PodInfo,
    ) -> EndpointPolicy {
        let mut ep = EndpointPolicy::default();
        let (audited, enforced) = self.split_audited(selecting);
        for dir in Direction::BOTH {
            self.endpoint_direction(&audited, &enforced, selecting_cnps, target, dir, &mut ep);
        }
        ep
    }

    /// `selecting` NetworkPolicies as (audited, enforced).
    pub(crate) fn split_audited(&self, selecting: &[usize]) -> (Vec<usize>, Vec<usize>) {
        selecting.iter().partition(|pi| self.policies[**pi].audit)
    }

    /// Whether the enforced NetworkPolicies `enforced` isolate the endpoint in `dir`.
    pub(crate) fn np_isolates(&self, enforced: &[usize], dir: Direction) -> bool {
        enforced
            .iter()
            .any(|pi| self.policies[*pi].rules(dir).is_some())
    }

    /// One direction of [`Compiler::endpoint`] into `ep`.
    pub(crate) fn endpoint_direction(
        &mut self,
        audited: &[usize],
        enforced: &[usize],
        selecting_cnps: &[usize],
        target: &PodInfo,
        dir: Direction,
        ep: &mut EndpointPolicy,
    ) {
        let audit_isolated = audited
            .iter()
            .any(|pi| self.policies[*pi].rules(dir).is_some());
        match dir {
            Direction::Ingress => ep.audit_ingress_isolated = audit_isolated,
            Direction::Egress => ep.audit_egress_isolated = audit_isolated,
        }
        if audit_isolated {
            self.direction(audited, target, dir, DIR_AUDIT, &mut ep.entries);
        }
        let np_isolated = self.np_isolates(enforced, dir);
        let tiered: Vec<usize> = selecting_cnps
            .iter()
            .copied()
            .filter(|ci| !self.cnps[*ci].rules(dir).is_empty())
            .collect();
        // The datapath looks this direction up when any tier has something to say.
        let isolated = np_isolated || !tiered.is_empty();
        match dir {
            Direction::Ingress => ep.ingress_isolated = isolated,
            Direction::Egress => ep.egress_isolated = isolated,
        }
        if tiered.is_empty() || (np_isolated && !self.has_admin(&tiered)) {
            // NetworkPolicies alone decide (a Baseline policy is never reached when a
            // NetworkPolicy isolates the pod).
            if np_isolated {
                self.direction(enforced, target, dir, 0, &mut ep.entries);
            }
            return;
        }
        let mut np = BTreeMap::new();
        if np_isolated {
            self.direction(enforced, target, dir, 0, &mut np);
        }
        self.tiered_direction(
            &tiered,
            np_isolated.then_some(&np),
            target,
            dir,
            &mut ep.entries,
        );
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
    ///
    /// `dir_bits` is added to the entries' direction (`DIR_AUDIT` for audited policies).
    fn direction(
        &mut self,
        selecting: &[usize],
        target: &PodInfo,
        dir: Direction,
        dir_bits: u8,
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
                    dir: dir.to_dir() | dir_bits,
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
