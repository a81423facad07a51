//! `explain FROM TO [PORT]`: whether a connection is allowed, and why, naming every policy
//! and rule that isolates, allows or (with tiers) denies it, with the peer and port entry
//! that matched.
//!
//! Answers come from the reference evaluator: its rule matching (`Evaluator::rule_match`,
//! `cnp::eval::rule_matches`), its tiers (`Evaluator::decide`: Admin-tier
//! ClusterNetworkPolicies, then NetworkPolicies, then the Baseline tier) and its precedence
//! (`DirectionVerdict::passes`, i.e. `common::decide`), so an explanation cannot disagree with
//! the evaluator; `policy/tests/prop.rs` holds the two equal over random clusters,
//! NetworkPolicies and ClusterNetworkPolicies.
//!
//! A connection needs egress at its source (when the source is a pod) and ingress at its
//! destination (when that is a pod): each is one [`DirectionExplanation`]. A Service
//! destination is explained per backend pod and target port, because that is what policy
//! judges after kube-proxy's translation. Without a port, the answer is the set of
//! protocols and ports allowed (see `port_space`).

mod answer;
mod query;
mod resolve;
mod text;
mod tiers;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cnp::{NormCnp, PreparedCnp, Tier, normalize_cnp};
use crate::compile::Prepared;
use crate::eval::{Decision, Evaluator, Outcome, PeerHit, PortHit};
use crate::model::{Cluster, Endpoint, PodInfo};
use crate::port_space::{Piece, PortRanges, PortSpace};
use crate::service::ServiceInfo;
use crate::validate::{Direction, NormPolicy, NormRule, Peer, Problem, normalize};
use crate::wording;

pub use answer::{
    Connection, DirectionExplanation, End, Explanation, PolicyExplanation, PolicyKind, RuleAction,
    RuleExplanation, Subject, SubjectKind, Verdict,
};
pub use query::{PortQuery, SubjectSpec};
use resolve::SideEnd;

/// Why a question cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{given:?}: {why}")]
    BadSubject { given: String, why: String },
    #[error("port {given:?}: {why}")]
    BadPort { given: String, why: String },
    #[error("pod {0} is not in the cluster state")]
    PodNotFound(String),
    #[error("pod {0} has no address yet")]
    NoAddress(String),
    #[error("Service {0} is not in the cluster state")]
    ServiceNotFound(String),
    #[error("Service {service} has no port {port:?} (its ports: {known})")]
    ServicePortNotFound {
        service: String,
        port: String,
        known: String,
    },
    #[error("Service {0} has no selector: its backends are not known from pods")]
    NoSelector(String),
    #[error("Service {0} has no backend pod")]
    NoBackends(String),
    #[error("Service {0} has no backend with a container port for its ports in question")]
    NoTargetPort(String),
    #[error("a Service cannot be the source of a connection ({0}); name a pod or an address")]
    ServiceAsSource(String),
    #[error("{0} and {1} have no address family in common")]
    NoCommonFamily(String, String),
    #[error("both {0} and {1} are outside the cluster: no policy judges that connection")]
    BothExternal(String, String),
    #[error("--what-if: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    WhatIf(Vec<Problem>),
}

/// The policies an explanation is made against.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<NormPolicy>,
    /// Valid ClusterNetworkPolicies (the Admin and Baseline tiers), in any order.
    cluster_policies: Vec<NormCnp>,
    /// Said in every explanation (invalid policies left out, what-if changes).
    notes: Vec<String>,
}

impl PolicySet {
    /// The valid policies of `cluster`; invalid ones are left out (as `compile` does) and
    /// named in a note.
    pub fn from_cluster(cluster: &Cluster) -> Self {
        let mut set = PolicySet::default();
        for p in &cluster.policies {
            match normalize(p) {
                Ok(n) => set.policies.push(n),
                Err(problems) => set.notes.push(format!(
                    "{} is invalid and not enforced ({})",
                    crate::validate::policy_object_name(p),
                    problems
                        .iter()
                        .map(|p| format!("{}: {}", p.field, p.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            }
        }
        for p in &cluster.cluster_policies {
            match normalize_cnp(p) {
                Ok((n, _)) => set.cluster_policies.push(n),
                Err(problems) => set.notes.push(format!(
                    "{} is invalid and not enforced ({})",
                    crate::cnp::cluster_policy_object_name(p),
                    problems
                        .iter()
                        .map(|p| format!("{}: {}", p.field, p.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            }
        }
        set
    }

    /// NetworkPolicies already prepared (e.g. what an agent enforces); no ClusterNetworkPolicy
    /// until [`PolicySet::with_cluster_policies`].
    pub fn from_prepared(policies: &[&Prepared]) -> Self {
        PolicySet {
            policies: policies.iter().map(|p| p.norm().clone()).collect(),
            cluster_policies: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The Admin and Baseline tiers: these ClusterNetworkPolicies, already prepared (what an
    /// agent enforces), replace any the set held.
    pub fn with_cluster_policies(mut self, policies: &[&PreparedCnp]) -> Self {
        self.cluster_policies = policies.iter().map(|p| (*p.policy).clone()).collect();
        self
    }

    /// As if `extra` were applied: each replaces the policy of the same namespace and name,
    /// or is added. Any invalid one fails the whole what-if, naming its problems.
    pub fn what_if(&mut self, extra: &[NetworkPolicy]) -> Result<(), ExplainError> {
        let mut problems = Vec::new();
        let mut norm = Vec::new();
        for p in extra {
            match normalize(p) {
                Ok(n) => norm.push(n),
                Err(mut found) => problems.append(&mut found),
            }
        }
        if !problems.is_empty() {
            return Err(ExplainError::WhatIf(problems));
        }
        for n in norm {
            let key = format!("{}/{}", n.namespace, n.name);
            match self
                .policies
                .iter_mut()
                .find(|p| p.namespace == n.namespace && p.name == n.name)
            {
                Some(old) => {
                    *old = n;
                    self.notes
                        .push(format!("what-if: NetworkPolicy {key} replaced"));
                }
                None => {
                    self.policies.push(n);
                    self.notes
                        .push(format!("what-if: NetworkPolicy {key} added"));
                }
            }
        }
        Ok(())
    }

    /// Adds a note every explanation over this set repeats.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The audited policies of this set as if they were enforced: what explains an `AUDIT`
    /// flow (the drops they would decide). ClusterNetworkPolicies are never audited.
    pub fn audited(&self) -> PolicySet {
        PolicySet {
            policies: self
                .policies
                .iter()
                .filter(|p| p.audit)
                .map(|p| NormPolicy {
                    audit: false,
                    ..p.clone()
                })
                .collect(),
            cluster_policies: Vec::new(),
            notes: vec!["audited policies, as if enforced".to_string()],
        }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// What is asked of one connection.
enum Probe {
    One(PortQuery, Piece),
    Every,
}

/// Answers questions over one cluster state and policy set.
pub struct Explainer<'a> {
    ev: Evaluator<'a>,
    services: &'a [ServiceInfo],
    notes: Vec<String>,
}

impl<'a> Explainer<'a> {
    pub fn new(cluster: &'a Cluster, policies: &PolicySet, services: &'a [ServiceInfo]) -> Self {
        let mut tiers = policies.cluster_policies.clone();
        tiers.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Explainer {
            ev: Evaluator::from_tiers(cluster, policies.policies.clone(), tiers),
            services,
            notes: policies.notes.clone(),
        }
    }

    /// `explain FROM TO [PORT]`.
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        port: Option<&str>,
    ) -> Result<Explanation, ExplainError> {
        let mut notes = self.notes.clone();
        let port = port.map(PortQuery::parse).transpose()?;
        let src = self.side(from, false, None, &mut notes)?;
        let dst = self.side(to, true, port.as_ref(), &mut notes)?;
        if src.ends.iter().all(|e| e.pod.is_none()) && dst.ends.iter().all(|e| e.pod.is_none()) {
            return Err(ExplainError::BothExternal(
                src.subject.given.clone(),
                dst.subject.given.clone(),
            ));
        }
        let mut connections = Vec::new();
        for s in &src.ends {
            for d in &dst.ends {
                if s.ep.addr().is_ipv6() != d.ep.addr().is_ipv6() {
                    continue;
                }
                let v6 = d.ep.addr().is_ipv6();
                let probe = match (&d.svc, &port) {
                    (Some((_, proto, target)), _) => Probe::One(
                        PortQuery {
                            protocol: proto.k8s_name().into(),
                            port: Some(*target),
                        },
                        Piece {
                            proto: proto.number(),
                            first: *target,
                            last: *target,
                        },
                    ),
                    (None, Some(q)) => Probe::One(q.clone(), piece_of(q, v6)),
                    (None, None) => Probe::Every,
                };
                connections.push(self.connection(s, d, probe));
            }
        }
        if connections.is_empty() {
            return Err(ExplainError::NoCommonFamily(
                src.subject.given.clone(),
                dst.subject.given.clone(),
            ));
        }
        let every_port = port.is_none() && dst.subject.kind != SubjectKind::Service;
        let all = connections.iter().all(|c| {
            c.allowed
                && (!every_port || c.allowed_ports.as_ref().is_some_and(|r| r.is_everything()))
        });
        let none = connections.iter().all(|c| !c.allowed);
        Ok(Explanation {
            from: src.subject,
            to: dst.subject,
            port,
            verdict: if all {
                Verdict::Allowed
            } else if none {
                Verdict::Denied
            } else {
                Verdict::Partly
            },
            connections,
            notes,
        })
    }

    /// One direction at `pod` with `peer` on one protocol and port (0 for protocols without
    /// ports), as `explain` words it: for naming a flow the datapath decided
    /// (`agent/src/observe`).
    pub fn direction_on_port(
        &self,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        proto: u8,
        port: u16,
    ) -> DirectionExplanation {
        let piece = Piece {
            proto,
            first: port,
            last: port,
        };
        let q = PortQuery {
            protocol: crate::model::proto_name(proto),
            port: Some(port),
        };
        self.direction(pod, dir, peer, &[piece], &Probe::One(q, piece))
            .0
    }

    fn connection(&self, s: &SideEnd, d: &SideEnd, probe: Probe) -> Connection {
        let v6 = d.ep.addr().is_ipv6();
        let pieces = match &probe {
            Probe::One(_, piece) => vec![*piece],
            Probe::Every => {
                let mut space = PortSpace::default();
                for (end, dir) in [(s, Direction::Egress), (d, Direction::Ingress)] {
                    let Some(pod) = end.pod else { continue };
                    for pol in self.isolating(pod, dir) {
                        for rule in pol.rules(dir).into_iter().flatten() {
                            space.add_rule(rule);
                        }
                    }
                    for cnp in self.ev.selecting(pod, dir) {
                        tiers::add_ports(&mut space, cnp, dir);
                    }
                }
                for pod in [s.pod, d.pod].into_iter().flatten() {
                    space.add_pod(pod);
                }
                space.pieces(v6)
            }
        };
        let eg = s
            .pod
            .map(|p| self.direction(p, Direction::Egress, &d.ep, &pieces, &probe));
        let ing = d
            .pod
            .map(|p| self.direction(p, Direction::Ingress, &s.ep, &pieces, &probe));
        let pass: Vec<bool> = (0..pieces.len())
            .map(|k| {
                eg.as_ref().is_none_or(|(_, m)| m[k]) && ing.as_ref().is_none_or(|(_, m)| m[k])
            })
            .collect();
        let every = matches!(probe, Probe::Every);
        Connection {
            src: end_of(&s.ep),
            dst: end_of(&d.ep),
            service_port: d.svc.as_ref().map(|(desc, _, _)| desc.clone()),
            probe: match probe {
                Probe::One(q, _) => Some(q),
                Probe::Every => None,
            },
            allowed: pass.iter().any(|p| *p),
            allowed_ports: every.then(|| PortRanges::from_pieces(&pieces, &pass)),
            egress: eg.map(|(e, _)| e),
            ingress: ing.map(|(e, _)| e),
        }
    }

    /// Policies isolating `pod` in `dir` (none for host-network pods, as the evaluator).
    fn isolating<'s>(
        &'s self,
        pod: &'s PodInfo,
        dir: Direction,
    ) -> impl Iterator<Item = &'s NormPolicy> + 's {
        self.ev.policies.iter().filter(move |pol| {
            // Audited policies decide nothing (`PolicySet::audited` explains them).
            !pol.audit
                && !pod.host_network
                && pol.namespace == pod.namespace
                && pol.selector.matches(&pod.labels)
                && pol.rules(dir).is_some()
        })
    }

    /// One direction at `pod` with `peer`, for each piece: the explanation and which pieces
    /// pass. Who decides each piece is the reference evaluator's `decide`; the policies are
    /// listed in evaluation order (Admin tier, NetworkPolicies, Baseline tier).
    fn direction(
        &self,
        pod: &PodInfo,
        dir: Direction,
        peer: &Endpoint,
        pieces: &[Piece],
        probe: &Probe,
    ) -> (DirectionExplanation, Vec<bool>) {
        let every = matches!(probe, Probe::Every);
        let decisions: Vec<Decision> = pieces
            .iter()
            .map(|p| self.ev.decide(pod, dir, peer, p.proto, p.first))
            .collect();
        let outcomes: Vec<&Outcome> = decisions.iter().map(|d| &d.outcome).collect();
        let pass: Vec<bool> = decisions.iter().map(|d| d.verdict().passes()).collect();
        let isolated = decisions.iter().any(|d| d.isolated);
        // A NetworkPolicy rule decides a piece only where no Admin rule decided first.
        let np_decides: Vec<bool> = outcomes
            .iter()
            .map(|o| matches!(o, Outcome::NetworkPolicy(_)))
            .collect();
        let selecting = self.ev.selecting(pod, dir);
        let tier = |t: Tier| {
            selecting
                .iter()
                .filter(move |c| c.tier == t)
                .map(|c| tiers::explain(&self.ev, c, pod, dir, peer, pieces, &outcomes, every))
        };
        let mut policies: Vec<PolicyExplanation> = tier(Tier::Admin).collect();
        for pol in self.isolating(pod, dir) {
            let mut rules = Vec::new();
            for (i, rule) in pol.rules(dir).into_iter().flatten().enumerate() {
                let hits: Vec<Vec<PeerHit>> = pieces
                    .iter()
                    .map(|p| {
                        self.ev
                            .rule_match(pol, rule, dir, pod, peer, p.proto, p.first)
                    })
                    .collect();
                let allows: Vec<bool> =
                    hits.iter().map(|h| h.iter().any(PeerHit::allows)).collect();
                let decides = allows.iter().zip(&np_decides).any(|(a, d)| *a && *d);
                rules.push(rule_explanation(
                    pol, rule, dir, i, peer, &hits, &allows, pieces, every, decides,
                ));
            }
            policies.push(PolicyExplanation {
                kind: PolicyKind::NetworkPolicy,
                namespace: Some(pol.namespace.clone()),
                name: pol.name.clone(),
                tier: None,
                priority: None,
                decides: rules.iter().any(|r| r.decides),
                rules,
            });
        }
        policies.extend(tier(Tier::Baseline));
        let expl = DirectionExplanation {
            pod: pod.key().to_string(),
            direction: dir,
            isolated,
            allowed: pass.iter().any(|p| *p),
            allowed_ports: every.then(|| PortRanges::from_pieces(pieces, &pass)),
            note: pod.host_network.then(|| {
                "host-network pod: no NetworkPolicy or ClusterNetworkPolicy applies to it"
                    .to_string()
            }),
            default_allow: outcomes.iter().any(|o| **o == Outcome::DefaultAllow),
            policies,
        };
        (expl, pass)
    }
}

fn end_of(ep: &Endpoint) -> End {
    match ep {
        Endpoint::Pod { pod, addr } => End {
            pod: Some(pod.to_string()),
            address: *addr,
        },
        Endpoint::External(a) => End {
            pod: None,
            address: *a,
        },
    }
}

/// The piece a port question probes (ICMP stands for every protocol without ports).
fn piece_of(q: &PortQuery, v6: bool) -> Piece {
    match (q.port_protocol(), q.port) {
        (Some(p), Some(port)) => Piece {
            proto: p.number(),
            first: port,
            last: port,
        },
        _ => Piece {
            proto: if v6 { 58 } else { 1 },
            first: 0,
            last: 0,
        },
    }
}

fn peer_name(peer: &Endpoint) -> String {
    match peer {
        Endpoint::Pod { pod, .. } => pod.to_string(),
        Endpoint::External(a) => a.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_explanation(
    pol: &NormPolicy,
    rule: &NormRule,
    dir: Direction,
    index: usize,
    peer: &Endpoint,
    hits: &[Vec<PeerHit>],
    allows: &[bool],
    pieces: &[Piece],
    every: bool,
    decides: bool,
) -> RuleExplanation {
    // The hit to show: the first that allows something, else the first peer that matched.
    let shown = hits
        .iter()
        .flatten()
        .find(|h| h.allows())
        .or_else(|| hits.iter().flatten().next());
    let field = wording::peer_field(dir);
    let peer_match = shown.map(|h| {
        let what = match (h.peer, &rule.peers) {
            (Some(j), Some(ps)) => {
                format!("{field}[{j}] ({})", wording::peer(&pol.namespace, &ps[j]))
            }
            _ => format!("every peer (it lists no {field})"),
        };
        let how = match (
            h.as_pod,
            rule.peers.as_ref().and_then(|ps| h.peer.map(|j| &ps[j])),
        ) {
            (true, Some(_)) => format!("names {} as a pod", peer_name(peer)),
            (true, None) => format!("includes {}", peer_name(peer)),
            (false, Some(Peer::Block { .. })) => format!("contains {}", peer.addr()),
            (false, _) => format!("includes {}", peer.addr()),
        };
        format!("{what} {how}")
    });
    let port_match = if every {
        None
    } else {
        shown.and_then(|h| match h.port {
            PortHit::Every => Some("every port (no ports listed)".to_string()),
            PortHit::Entry(j) => rule
                .ports
                .as_ref()
                .map(|ps| format!("ports[{j}] ({})", wording::port(&ps[j]))),
            PortHit::NoEntry => None,
        })
    };
    RuleExplanation {
        path: wording::rule_path(dir, index),
        action: RuleAction::Allow,
        peers: wording::peers(&pol.namespace, rule),
        ports: wording::ports(rule),
        peer_match,
        port_match,
        allowed_ports: every.then(|| PortRanges::from_pieces(pieces, allows)),
        matches: allows.iter().any(|a| *a),
        decides,
    }
}

pub use text::render;
