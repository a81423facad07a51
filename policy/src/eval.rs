//! Reference evaluator: the NetworkPolicy spec and the ClusterNetworkPolicy API text read
//! literally, over the cluster objects.
//!
//! It never looks at the compiled form, so tests can hold `compile` + `lookup` against it.
//! It is deliberately simple (linear scans): clarity over speed.

use std::collections::HashMap;
use std::net::IpAddr;

use palisade_common::decide::{CtMatch, Facts, decide};
use palisade_common::policy::RULE_DENY;

use crate::cnp::eval::{rule_matches, subject_selects};
use crate::cnp::{Action, NormCnp, Tier, normalize_cnp};
use crate::compile::Prepared;
use crate::fqdn::Learnt;
use crate::model::{Cluster, Endpoint, Labels, PodInfo, PodKey};
use crate::rules::RuleId;
use crate::validate::{Direction, NormPolicy, NormRule, Peer, PortMatch, normalize};

/// Does the spec allow a new connection from `src` to `dst` with IP protocol `proto` and
/// destination port `dst_port` (0 for protocols without ports, or for "ports unknown": then
/// only rules that allow every port of the protocol match)?
///
/// Invalid policies are ignored, as `compile` ignores them.
pub fn evaluate(
    cluster: &Cluster,
    src: &Endpoint,
    dst: &Endpoint,
    proto: u8,
    dst_port: u16,
) -> bool {
    Evaluator::new(cluster).allows(src, dst, proto, dst_port)
}

/// `evaluate` with the policies normalised once, for many probes over one cluster.
pub struct Evaluator<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) policies: Vec<NormPolicy>,
    /// Pods by key (the first of a duplicated key, as `Cluster::pod`): a peer is looked up on
    /// every rule match.
    by_key: HashMap<PodKey, &'a PodInfo>,
    /// Valid ClusterNetworkPolicies in evaluation order (tier, priority, name).
    pub(crate) cluster_policies: Vec<NormCnp>,
    /// What pods learnt from DNS answers: the addresses `domainNames` peers match.
    learnt: Learnt,
}

/// Outcome of one direction's check at one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionVerdict {
    /// The datapath looks this direction up at this pod: some NetworkPolicy isolates it, or
    /// some ClusterNetworkPolicy with rules in this direction selects it.
    pub isolated: bool,
    /// A rule admits the flow (a ClusterNetworkPolicy Accept, a NetworkPolicy rule, or the
    /// default allow when only ClusterNetworkPolicies apply and none decided).
    pub allowed_by_rule: bool,
    /// A ClusterNetworkPolicy Deny rule drops it.
    pub denied_by_rule: bool,
}

impl DirectionVerdict {
    /// The final answer, through the same precedence function the datapath uses.
    pub fn passes(&self) -> bool {
        let f = Facts {
            spoofed: false,
            peer_is_host: false,
            ct: CtMatch::New,
            ct_current: false,
            isolated: self.isolated,
            allow_rule: if self.denied_by_rule {
                RULE_DENY | 1
            } else {
                u32::from(self.allowed_by_rule)
            },
            untracked_fragment: false,
        };
        !decide(&f).is_drop()
    }
}

/// Who decided a direction at a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No policy of any tier applies to the pod in this direction: allowed.
    NotIsolated,
    /// A ClusterNetworkPolicy Accept rule.
    Accepted(RuleId),
    /// A ClusterNetworkPolicy Deny rule.
    Denied(RuleId),
    /// NetworkPolicies isolate the pod: these rules allow the flow (none: denied).
    NetworkPolicy(Vec<RuleId>),
    /// ClusterNetworkPolicies apply, none decided and no NetworkPolicy isolates: allowed.
    DefaultAllow,
}

/// The evaluator's full answer for one direction at one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// See [`DirectionVerdict::isolated`].
    pub isolated: bool,
    pub outcome: Outcome,
}

impl Decision {
    pub fn verdict(&self) -> DirectionVerdict {
        let (allowed_by_rule, denied_by_rule) = match &self.outcome {
            Outcome::NotIsolated => (false, false),
            Outcome::Accepted(_) | Outcome::DefaultAllow => (true, false),
            Outcome::Denied(_) => (false, true),
            Outcome::NetworkPolicy(rules) => (!rules.is_empty(), false),
        };
        DirectionVerdict {
            isolated: self.isolated,
            allowed_by_rule,
            denied_by_rule,
        }
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        let policies = cluster
            .policies
            .iter()
            .filter_map(|p| normalize(p).ok())
            .collect();
        let mut cluster_policies: Vec<NormCnp> = cluster
            .cluster_policies
            .iter()
            .filter_map(|p| normalize_cnp(p).ok().map(|(n, _)| n))
            .collect();
        cluster_policies.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Self::from_tiers(cluster, policies, cluster_policies)
    }

    /// NetworkPolicies only (lint reasons about them alone).
    pub(crate) fn from_parts(cluster: &'a Cluster, policies: Vec<NormPolicy>) -> Self {
        Self::from_tiers(cluster, policies, Vec::new())
    }

    /// `cluster_policies` sorted in evaluation order.
    pub(crate) fn from_tiers(
        cluster: &'a Cluster,
        policies: Vec<NormPolicy>,
        cluster_policies: Vec<NormCnp>,
    ) -> Self {
        let mut by_key = HashMap::with_capacity(cluster.pods.len());
        for p in &cluster.pods {
            by_key.entry(p.key()).or_insert(p);
        }
        Evaluator {
            cluster,
            policies,
            by_key,
            cluster_policies,
            learnt: Learnt::default(),
        }
    }

    /// The same evaluator, with pods having learnt `learnt` from the cluster DNS service's
    /// answers: a `domainNames` peer matches an address for a pod that learnt it for a name
    /// one of its entries matches (and nothing else).
    pub fn with_learnt(mut self, learnt: Learnt) -> Self {
        self.learnt = learnt;
        self
    }

    /// An evaluator over policies already prepared (`cluster.policies` is not read): the ones
    /// an agent enforces, say, which keep the last valid version of a policy whose update
    /// was invalid.
    pub fn with_prepared(cluster: &'a Cluster, policies: &[&Prepared]) -> Self {
        Self::with_prepared_tiers(cluster, policies, &[])
    }

    /// [`Evaluator::with_prepared`] with ClusterNetworkPolicies already prepared too
    /// (`cluster.cluster_policies` is not read either).
    pub fn with_prepared_tiers(
        cluster: &'a Cluster,
        policies: &[&Prepared],
        cluster_policies: &[&crate::cnp::PreparedCnp],
    ) -> Self {
        let mut cnps: Vec<NormCnp> = cluster_policies
            .iter()
            .map(|p| (*p.policy).clone())
            .collect();
        cnps.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Self::from_tiers(
            cluster,
            policies.iter().map(|p| p.norm().clone()).collect(),
            cnps,
        )
    }

    pub(crate) fn pod(&self, e: &Endpoint) -> Option<&'a PodInfo> {
        match e {
            Endpoint::Pod { pod, .. } => self.by_key.get(pod).copied(),
            Endpoint::External(_) => None,
        }
    }

    /// The whole answer: egress at `src` (if it is a pod) and ingress at `dst` (if a pod).
    pub fn allows(&self, src: &Endpoint, dst: &Endpoint, proto: u8, dst_port: u16) -> bool {
        let eg = self
            .pod(src)
            .map(|p| self.check(p, Direction::Egress, dst, proto, dst_port));
        let ing = self
            .pod(dst)
            .map(|p| self.check(p, Direction::Ingress, src, proto, dst_port));
        eg.is_none_or(|v| v.passes()) && ing.is_none_or(|v| v.passes())
    }

    /// One direction at `pod`: ingress with `peer` as the source, egress with `peer` as the
    /// destination.
    pub fn check(
        &self,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> DirectionVerdict {
        self.decide(pod, dir, peer, proto, port).verdict()
    }

    /// One direction at `pod`, with who decided. The tiers, as the API text orders them:
    /// 1. Admin tier: policies by priority (ties by name), each policy's rules in order; the
    ///    first rule matching the connection decides: Accept and Deny are final, Pass skips
    ///    the rest of the Admin tier.
    /// 2. NetworkPolicy tier: when a NetworkPolicy isolates the pod in this direction, the
    ///    union of their rules decides, finally (nothing allows it: denied).
    /// 3. Baseline tier: as the Admin tier; Pass means no decision.
    /// 4. Otherwise the connection is allowed.
    pub fn decide(
        &self,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> Decision {
        let (np_isolated, np_rules) = self.allowing_rules(pod, dir, peer, proto, port);
        let selecting = self.selecting(pod, dir);
        let isolated = np_isolated || !selecting.is_empty();
        let tier = |t| self.tier_outcome(&selecting, t, pod, dir, peer, proto, port);
        let outcome = if let Some(o) = tier(Tier::Admin) {
            o
        } else if np_isolated {
            Outcome::NetworkPolicy(np_rules)
        } else if let Some(o) = tier(Tier::Baseline) {
            o
        } else if isolated {
            Outcome::DefaultAllow
        } else {
            Outcome::NotIsolated
        };
        Decision { isolated, outcome }
    }

    /// The ClusterNetworkPolicies with rules in `dir` whose subject selects `pod`, in
    /// evaluation order.
    pub(crate) fn selecting(&self, pod: &PodInfo, dir: Direction) -> Vec<&NormCnp> {
        self.cluster_policies
            .iter()
            .filter(|c| !c.rules(dir).is_empty() && subject_selects(self.cluster, c, pod))
            .collect()
    }

    /// One tier of `decide` over the policies `selecting` the pod: the first rule (by policy
    /// order, then rule order) matching the connection decides. Accept and Deny are final;
    /// Pass skips the rest of the tier (`None`, as when no rule matches).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tier_outcome(
        &self,
        selecting: &[&NormCnp],
        tier: Tier,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> Option<Outcome> {
        let learnt = match dir {
            Direction::Egress if !self.learnt.is_empty() => {
                self.learnt.names(&pod.key(), peer.addr())
            }
            _ => &[],
        };
        for cnp in selecting.iter().filter(|c| c.tier == tier) {
            for (index, rule) in cnp.rules(dir).iter().enumerate() {
                if !rule_matches(self.cluster, rule, dir, pod, peer, proto, port, learnt) {
                    continue;
                }
                let id = RuleId::cluster_network_policy(&cnp.name, dir, index);
                return match rule.action {
                    Action::Accept => Some(Outcome::Accepted(id)),
                    Action::Deny => Some(Outcome::Denied(id)),
                    Action::Pass => None,
                };
            }
        }
        None
    }

    /// Whether NetworkPolicies isolate `pod` in `dir`, and every NetworkPolicy rule that
    /// allows the flow there (ClusterNetworkPolicies are not considered: see `decide`).
    pub fn allowing_rules(
        &self,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> (bool, Vec<RuleId>) {
        self.allowing_rules_among(self.policies.iter(), pod, dir, peer, proto, port)
    }

    /// `check` for NetworkPolicies alone, looking only at `policies` (which must hold every
    /// policy selecting `pod`; others are skipped as `check` skips them): for callers that
    /// know which policies select a pod and ask many questions about it (lint).
    pub(crate) fn check_among<'p>(
        &self,
        policies: impl Iterator<Item = &'p NormPolicy>,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> DirectionVerdict {
        let (isolated, rules) = self.allowing_rules_among(policies, pod, dir, peer, proto, port);
        DirectionVerdict {
            isolated,
            allowed_by_rule: !rules.is_empty(),
            denied_by_rule: false,
        }
    }

    fn allowing_rules_among<'p>(
        &self,
        policies: impl Iterator<Item = &'p NormPolicy>,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> (bool, Vec<RuleId>) {
        let mut allowing = Vec::new();
        // A host-network pod has no interface of its own: no NetworkPolicy applies to it.
        if pod.host_network {
            return (false, allowing);
        }
        let mut isolated = false;
        for pol in policies {
            // 1. Only policies in the pod's namespace whose podSelector matches it, and whose
            //    policyTypes include this direction, isolate it; audited policies decide
            //    nothing (`audit`).
            if pol.audit || pol.namespace != pod.namespace || !pol.selector.matches(&pod.labels) {
                continue;
            }
            let Some(rules) = pol.rules(dir) else {
                continue;
            };
            isolated = true;
            // 2. The union of their rules is allowed.
            for (index, rule) in rules.iter().enumerate() {
                let hits = self.rule_match(pol, rule, dir, pod, peer, proto, port);
                if hits.iter().any(PeerHit::allows) {
                    allowing.push(RuleId::network_policy(
                        &pol.namespace,
                        &pol.name,
                        dir,
                        index,
                    ));
                }
            }
        }
        (isolated, allowing)
    }

    /// Audit mode: when the enforced policies pass a new flow at `pod` in `dir` that they
    /// and the audited policies together would drop, the drop they would decide (through
    /// `common::decide::audit`, as the datapath).
    pub fn audit(
        &self,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> Option<palisade_common::verdict::Verdict> {
        let enforced = self.check(pod, dir, peer, proto, port);
        let mut audit_isolated = false;
        let mut audit_allowed = false;
        for pol in self.policies.iter().filter(|p| p.audit) {
            if pod.host_network
                || pol.namespace != pod.namespace
                || !pol.selector.matches(&pod.labels)
            {
                continue;
            }
            let Some(rules) = pol.rules(dir) else {
                continue;
            };
            audit_isolated = true;
            audit_allowed |= rules.iter().any(|rule| {
                self.rule_match(pol, rule, dir, pod, peer, proto, port)
                    .iter()
                    .any(PeerHit::allows)
            });
        }
        let f = Facts {
            spoofed: false,
            peer_is_host: false,
            ct: CtMatch::New,
            ct_current: false,
            isolated: enforced.isolated,
            allow_rule: u32::from(enforced.allowed_by_rule),
            untracked_fragment: false,
        };
        palisade_common::decide::audit(&f, audit_isolated, u32::from(audit_allowed))
    }

    /// How `rule` of `pol` matches a connection with `peer` at `pod` in `dir`: every peer of
    /// the rule that names `peer`, each with the port entry that then allows the flow (if
    /// any). The flow is allowed by the rule when some hit has a port.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rule_match(
        &self,
        pol: &NormPolicy,
        rule: &NormRule,
        dir: Direction,
        pod: &PodInfo,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> Vec<PeerHit> {
        let addr = peer.addr();
        // The peer as a pod that selectors can name (see `PodInfo::is_selectable_peer`).
        let peer_pod = self
            .pod(peer)
            .filter(|p| p.is_selectable_peer() && p.ips.contains(&addr));
        // Named ports: at ingress the selected pod's own ports; at egress the destination
        // pod's, which only exists when the destination was matched as a pod. A destination
        // matched only by address has no named ports.
        let hit = |peer: Option<usize>, as_pod: bool| {
            let ctx = match dir {
                Direction::Ingress => Some(pod),
                Direction::Egress => peer_pod.filter(|_| as_pod),
            };
            PeerHit {
                peer,
                as_pod,
                port: port_hit(rule, ctx, proto, port),
            }
        };
        let mut hits = Vec::new();
        match &rule.peers {
            // No `from`/`to`: every pod and every address.
            None => {
                if peer_pod.is_some() {
                    hits.push(hit(None, true));
                }
                hits.push(hit(None, false));
            }
            Some(peers) => {
                for (i, p) in peers.iter().enumerate() {
                    let matched = match p {
                        Peer::Pods { namespaces, pods } => peer_pod.is_some_and(|pp| {
                            let ns_ok = match namespaces {
                                None => pp.namespace == pol.namespace,
                                Some(s) => s.matches(self.ns_labels(&pp.namespace)),
                            };
                            ns_ok && pods.matches(&pp.labels)
                        }),
                        Peer::Block { cidr, except } => {
                            cidr.contains_addr(addr)
                                && !except.iter().any(|e| e.contains_addr(addr))
                        }
                    };
                    if matched {
                        hits.push(hit(Some(i), matches!(p, Peer::Pods { .. })));
                    }
                }
            }
        }
        hits
    }

    /// Labels of namespace `ns` (none when it is unknown).
    pub(crate) fn ns_labels(&self, ns: &str) -> &Labels {
        static NONE: Labels = Labels::new();
        self.cluster.namespaces.get(ns).unwrap_or(&NONE)
    }
}

/// One peer of a rule that names the connection's peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerHit {
    /// Index in `from`/`to`; `None`: the rule has no peers (every peer).
    pub peer: Option<usize>,
    /// Named as a pod (by selectors) rather than by address.
    pub as_pod: bool,
    pub port: PortHit,
}

impl PeerHit {
    pub fn allows(&self) -> bool {
        self.port != PortHit::NoEntry
    }
}

/// Which port entry of a rule allows a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortHit {
    /// The rule has no `ports`: every protocol and port.
    Every,
    /// `ports[i]` (the first that matches).
    Entry(usize),
    /// No entry matches.
    NoEntry,
}

fn port_hit(rule: &NormRule, ctx: Option<&PodInfo>, proto: u8, port: u16) -> PortHit {
    let Some(ports) = &rule.ports else {
        return PortHit::Every;
    };
    ports
        .iter()
        .position(|p| {
            p.proto.number() == proto
                && match &p.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
                    PortMatch::Named(name) => ctx.is_some_and(|c| {
                        c.ports
                            .iter()
                            .any(|np| &np.name == name && np.protocol == p.proto && np.port == port)
                    }),
                }
        })
        .map_or(PortHit::NoEntry, PortHit::Entry)
}

/// Address of a pod endpoint of the given family, if it has one.
pub fn pod_endpoint(cluster: &Cluster, pod: &crate::model::PodKey, v6: bool) -> Option<Endpoint> {
    let p = cluster.pod(pod)?;
    let addr: IpAddr = *p.ips.iter().find(|a| a.is_ipv6() == v6)?;
    Some(Endpoint::Pod {
        pod: pod.clone(),
        addr,
    })
}
