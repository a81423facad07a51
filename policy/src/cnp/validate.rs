//! Validation and normalisation of ClusterNetworkPolicy objects: what the upstream CRD
//! (v0.2.0, experimental channel) would reject is a problem that makes the object invalid
//! (the agent keeps its last valid version); peers Palisade cannot enforce fail closed, as
//! the API text prescribes, and are reported as notices while the object is enforced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::types::{
    ClusterNetworkPolicy, ClusterNetworkPolicyEgressPeer, ClusterNetworkPolicyIngressPeer,
    ClusterNetworkPolicyProtocol, ClusterNetworkPolicyProtocolPort, NamespacedPod,
};
use crate::fqdn::{DomainPattern, MAX_DOMAIN_NAMES};
use crate::model::Protocol;
use crate::prefix::Prefix;
use crate::selector::Selector;
use crate::validate::{Direction, Problem};

/// Upstream limits (`+kubebuilder:validation` markers of the v1alpha2 types).
pub const MAX_PRIORITY: i32 = 1000;
pub const MAX_RULES: usize = 25;
pub const MAX_PEERS: usize = 25;
pub const MAX_PROTOCOLS: usize = 25;
pub const MAX_NETWORKS: usize = 25;
pub const MAX_RULE_NAME: usize = 100;
/// `CIDR` is `MaxLength=43`.
pub const MAX_CIDR_LEN: usize = 43;

/// `ClusterNetworkPolicy name`.
pub fn cluster_policy_object_name(p: &ClusterNetworkPolicy) -> String {
    format!(
        "ClusterNetworkPolicy {}",
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// Where a ClusterNetworkPolicy is evaluated: before NetworkPolicies (`Admin`) or after them
/// (`Baseline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Deny,
    /// Skip the rest of this tier.
    Pass,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// A ClusterNetworkPolicy after validation.
#[derive(Clone, Debug)]
pub(crate) struct NormCnp {
    pub name: String,
    pub tier: Tier,
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

impl NormCnp {
    pub fn rules(&self, dir: Direction) -> &[CnpRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Evaluation order within a tier: priority, then name. Upstream leaves the order of two
    /// policies with the same priority to the implementation; ordering by name makes it
    /// deterministic (and the same on every node).
    pub fn order_key(&self) -> (Tier, u32, &str) {
        (self.tier, self.priority, &self.name)
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Subject {
    /// Every pod of the matching namespaces.
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct CnpRule {
    pub action: Action,
    /// Any of them matches (an empty list matches nothing).
    pub peers: Vec<CnpPeer>,
    /// `None`: every protocol and port, ICMP included.
    pub ports: Option<Vec<CnpPort>>,
}

impl CnpRule {
    pub fn has_named_ports(&self) -> bool {
        self.ports
            .iter()
            .flatten()
            .any(|p| matches!(p, CnpPort::Named(_)))
    }
}

#[derive(Clone, Debug)]
pub(crate) enum CnpPeer {
    /// Every (selectable) pod of the matching namespaces.
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Every address of the matching Nodes (egress only).
    Nodes(Selector),
    /// Addresses in these CIDRs, pod addresses included (egress only).
    Networks(Vec<Prefix>),
    /// Names (Accept rules only, egress): matches no address in the compiled policy; an
    /// address matches only for a pod that learnt it from the cluster DNS service's answer
    /// for a matching name (`fqdn::names`, docs/fqdn.md).
    DomainNames(Vec<DomainPattern>),
    /// Every address: what a Deny or Pass rule with a peer Palisade cannot enforce becomes
    /// (fail closed).
    Everything,
}

#[derive(Clone, Debug)]
pub(crate) enum CnpPort {
    /// `lo..=hi`. A range covering 1..=65535 starts at 0 here: it names every port, so it
    /// also matches a packet whose port is unknown (a later fragment), which is looked up at
    /// port 0.
    Range { proto: Protocol, lo: u16, hi: u16 },
    /// A container port of the destination pod, with its protocol.
    Named(String),
}

/// Everything wrong with `p`: the problems that make it invalid, or, when it is valid, the
/// notices about peers that fail closed. Empty when it is enforced exactly as written.
pub fn validate_cluster_policy(p: &ClusterNetworkPolicy) -> Vec<Problem> {
    match normalize_cnp(p) {
        Ok((_, notices)) => notices,
        Err(problems) => problems,
    }
}

/// `Ok((policy, notices))`, or `Err(problems)` when the CRD would reject the object.
pub(crate) fn normalize_cnp(
    p: &ClusterNetworkPolicy,
) -> Result<(NormCnp, Vec<Problem>), Vec<Problem>> {
    let mut v = Validator {
        obj: cluster_policy_object_name(p),
        problems: Vec::new(),
        notices: Vec::new(),
    };
    let name = p.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        v.problem("metadata.name", "is empty");
    }
    let Some(spec) = p.spec.as_ref() else {
        v.problem("spec", "is missing");
        return Err(v.problems);
    };
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Some(Tier::Admin),
        Some("Baseline") => Some(Tier::Baseline),
        Some(other) => {
            v.problem(
                "spec.tier",
                format!("unknown tier {other:?} (expected Admin or Baseline)"),
            );
            None
        }
        None => {
            v.problem("spec.tier", "is missing (expected Admin or Baseline)");
            None
        }
    };
    let priority = match spec.priority {
        Some(n) if (0..=MAX_PRIORITY).contains(&n) => Some(n as u32),
        Some(n) => {
            v.problem("spec.priority", format!("{n} is not in 0..={MAX_PRIORITY}"));
            None
        }
        None => {
            v.problem("spec.priority", "is missing");
            None
        }
    };
    let subject = v.subject(spec.subject.as_ref());
    let ingress = v.rules(
        Direction::Ingress,
        spec.ingress.as_deref().unwrap_or_default(),
    );
    let egress = v.rules(
        Direction::Egress,
        spec.egress.as_deref().unwrap_or_default(),
    );
    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    match (tier, priority, subject) {
        (Some(tier), Some(priority), Some(subject)) => Ok((
            NormCnp {
                name,
                tier,
                priority,
                subject,
                ingress,
                egress,
            },
            v.notices,
        )),
        // Each `None` above pushed a problem.
        _ => Err(v.problems),
    }
}

/// A rule before the fail-closed transform: its peers, and whether one of them cannot be
/// enforced (with the notice saying which).
struct RawRule {
    action: Option<Action>,
    peers: Vec<CnpPeer>,
    /// (field, what is wrong) of each peer that cannot be enforced.
    unenforceable: Vec<(String, String)>,
    ports: Option<Vec<CnpPort>>,
}

struct Validator {
    obj: String,
    problems: Vec<Problem>,
    notices: Vec<Problem>,
}

/// Either kind of peer, read through one view.
struct PeerView<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<&'a NamespacedPod>,
    nodes: Option<&'a LabelSelector>,
    networks: Option<&'a Vec<String>>,
    domain_names: Option<&'a Vec<String>>,
}

impl<'a> From<&'a ClusterNetworkPolicyIngressPeer> for PeerView<'a> {
    fn from(p: &'a ClusterNetworkPolicyIngressPeer) -> Self {
        PeerView {
            namespaces: p.namespaces.as_ref(),
            pods: p.pods.as_ref(),
            nodes: None,
            networks: None,
            domain_names: None,
        }
    }
}

impl<'a> From<&'a ClusterNetworkPolicyEgressPeer> for PeerView<'a> {
    fn from(p: &'a ClusterNetworkPolicyEgressPeer) -> Self {
        PeerView {
            namespaces: p.namespaces.as_ref(),
            pods: p.pods.as_ref(),
            nodes: p.nodes.as_ref(),
            networks: p.networks.as_ref(),
            domain_names: p.domain_names.as_ref(),
        }
    }
}

impl Validator {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::new(&self.obj, field, message.into()));
    }

    fn selector(&mut self, s: Option<&LabelSelector>, field: &str) -> Option<Selector> {
        let empty = LabelSelector::default();
        Selector::parse(s.unwrap_or(&empty), &self.obj, field, &mut self.problems)
    }

    fn namespaced_pod(&mut self, p: &NamespacedPod, field: &str) -> Option<(Selector, Selector)> {
        let namespaces = self.selector(
            p.namespace_selector.as_ref(),
            &format!("{field}.namespaceSelector"),
        );
        if p.pod_selector.is_none() {
            self.problem(format!("{field}.podSelector"), "is missing");
            return None;
        }
        let pods = self.selector(p.pod_selector.as_ref(), &format!("{field}.podSelector"))?;
        Some((namespaces?, pods))
    }

    fn subject(
        &mut self,
        s: Option<&super::types::ClusterNetworkPolicySubject>,
    ) -> Option<Subject> {
        let Some(s) = s else {
            self.problem("spec.subject", "is missing");
            return None;
        };
        match (&s.namespaces, &s.pods) {
            (Some(ns), None) => self
                .selector(Some(ns), "spec.subject.namespaces")
                .map(Subject::Namespaces),
            (None, Some(p)) => self
                .namespaced_pod(p, "spec.subject.pods")
                .map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
            (None, None) => {
                self.problem("spec.subject", "must set namespaces or pods");
                None
            }
            (Some(_), Some(_)) => {
                self.problem("spec.subject", "must set only one of namespaces and pods");
                None
            }
        }
    }

    fn rules<R: RuleView>(&mut self, dir: Direction, rules: &[R]) -> Vec<CnpRule> {
        let base = format!("spec.{}", dir.name());
        if rules.len() > MAX_RULES {
            self.problem(
                &base,
                format!("{} rules; at most {MAX_RULES} are allowed", rules.len()),
            );
        }
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let f = format!("{base}[{i}]");
            let raw = self.rule(r, dir, &f);
            out.push(self.fail_closed(raw));
        }
        out
    }

    fn rule<R: RuleView>(&mut self, r: &R, dir: Direction, f: &str) -> RawRule {
        if let Some(n) = r.name()
            && n.chars().count() > MAX_RULE_NAME
        {
            self.problem(
                format!("{f}.name"),
                format!(
                    "{} characters; at most {MAX_RULE_NAME} are allowed",
                    n.chars().count()
                ),
            );
        }
        let action = match r.action() {
            Some("Accept") => Some(Action::Accept),
            Some("Deny") => Some(Action::Deny),
            Some("Pass") => Some(Action::Pass),
            Some(other) => {
                self.problem(
                    format!("{f}.action"),
                    format!("unknown action {other:?} (expected Accept, Deny or Pass)"),
                );
                None
            }
            None => {
                self.problem(format!("{f}.action"), "is missing");
                None
            }
        };
        let peer_field = format!("{f}.{}", R::PEERS);
        let peers: Vec<PeerView> = match r.peers() {
            None => {
                self.problem(&peer_field, "is missing (at least one peer is required)");
                Vec::new()
            }
            Some(ps) if ps.is_empty() => {
                self.problem(&peer_field, "is empty (at least one peer is required)");
                ps
            }
            Some(ps) if ps.len() > MAX_PEERS => {
                self.problem(
                    &peer_field,
                    format!("{} peers; at most {MAX_PEERS} are allowed", ps.len()),
                );
                ps
            }
            Some(ps) => ps,
        };
        let mut raw = RawRule {
            action,
            peers: Vec::new(),
            unenforceable: Vec::new(),
            ports: None,
        };
        let mut addresses_only = false;
        for (j, p) in peers.iter().enumerate() {
            let pf = format!("{peer_field}[{j}]");
            addresses_only |= p.nodes.is_some() || p.networks.is_some() || p.domain_names.is_some();
            self.peer(p, dir, &pf, &mut raw);
        }
        if let Some(ps) = r.protocols() {
            let pf = format!("{f}.protocols");
            if ps.is_empty() {
                self.problem(&pf, "is empty (omit it to match every protocol)");
            } else if ps.len() > MAX_PROTOCOLS {
                self.problem(
                    &pf,
                    format!("{} entries; at most {MAX_PROTOCOLS} are allowed", ps.len()),
                );
            }
            let mut ports = Vec::new();
            for (j, p) in ps.iter().enumerate() {
                if let Some(port) = self.protocol(p, &format!("{pf}[{j}]")) {
                    if matches!(port, CnpPort::Named(_)) && addresses_only {
                        self.problem(
                            format!("{pf}[{j}].destinationNamedPort"),
                            "cannot be used in a rule with networks, nodes or domainNames \
                             peers (they have no named ports)",
                        );
                    }
                    ports.push(port);
                }
            }
            raw.ports = Some(ports);
        }
        raw
    }

    fn peer(&mut self, p: &PeerView, dir: Direction, pf: &str, raw: &mut RawRule) {
        let set = [
            p.namespaces.is_some(),
            p.pods.is_some(),
            p.nodes.is_some(),
            p.networks.is_some(),
            p.domain_names.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            self.problem(
                pf,
                "must set exactly one of namespaces, pods, nodes, networks and domainNames",
            );
            return;
        }
        if let Some(s) = p.namespaces {
            if let Some(sel) = self.selector(Some(s), &format!("{pf}.namespaces")) {
                raw.peers.push(CnpPeer::Namespaces(sel));
            }
        } else if let Some(np) = p.pods {
            if let Some((namespaces, pods)) = self.namespaced_pod(np, &format!("{pf}.pods")) {
                raw.peers.push(CnpPeer::Pods { namespaces, pods });
            }
        } else if let Some(s) = p.nodes {
            if let Some(sel) = self.selector(Some(s), &format!("{pf}.nodes")) {
                raw.peers.push(CnpPeer::Nodes(sel));
            }
        } else if let Some(nets) = p.networks {
            let nf = format!("{pf}.networks");
            if nets.is_empty() || nets.len() > MAX_NETWORKS {
                self.problem(
                    &nf,
                    format!(
                        "{} CIDRs; between 1 and {MAX_NETWORKS} are allowed",
                        nets.len()
                    ),
                );
            }
            let mut cidrs = Vec::new();
            for (k, c) in nets.iter().enumerate() {
                let cf = format!("{nf}[{k}]");
                if c.len() > MAX_CIDR_LEN {
                    self.problem(
                        &cf,
                        format!("{c:?} is longer than {MAX_CIDR_LEN} characters"),
                    );
                    continue;
                }
                match Prefix::parse(c) {
                    Ok(pfx) => cidrs.push(pfx),
                    Err(e) => self.problem(cf, e),
                }
            }
            raw.peers.push(CnpPeer::Networks(cidrs));
        } else if let Some(names) = p.domain_names {
            let nf = format!("{pf}.domainNames");
            if names.is_empty() || names.len() > MAX_DOMAIN_NAMES {
                self.problem(
                    &nf,
                    format!(
                        "{} names; between 1 and {MAX_DOMAIN_NAMES} are allowed",
                        names.len()
                    ),
                );
            }
            let mut patterns = Vec::new();
            for (k, n) in names.iter().enumerate() {
                match DomainPattern::parse(n) {
                    Ok(p) => patterns.push(p),
                    Err(e) => self.problem(format!("{nf}[{k}]"), format!("{n:?} {e}")),
                }
            }
            match raw.action {
                // Matched by the addresses the pod learns for these names (docs/fqdn.md).
                Some(Action::Accept) => raw.peers.push(CnpPeer::DomainNames(patterns)),
                // No action: the rule is invalid anyway.
                None => {}
                Some(Action::Deny | Action::Pass) => raw.unenforceable.push((
                    nf,
                    format!("{names:?}: domainNames peers are only supported in Accept rules"),
                )),
            }
        } else {
            // Upstream: a peer with no field set comes from a CRD newer than the implementation
            // (a peer kind it does not know); fail closed.
            let what = match dir {
                Direction::Ingress => "namespaces or pods",
                Direction::Egress => "namespaces, pods, nodes, networks or domainNames",
            };
            raw.unenforceable.push((
                pf.to_string(),
                format!("sets none of {what} (a peer kind this version does not know?)"),
            ));
        }
    }

    fn protocol(&mut self, p: &ClusterNetworkPolicyProtocol, f: &str) -> Option<CnpPort> {
        let set: Vec<(&str, Option<Protocol>)> = [
            ("tcp", p.tcp.is_some(), Some(Protocol::Tcp)),
            ("udp", p.udp.is_some(), Some(Protocol::Udp)),
            ("sctp", p.sctp.is_some(), Some(Protocol::Sctp)),
            (
                "destinationNamedPort",
                p.destination_named_port.is_some(),
                None,
            ),
        ]
        .into_iter()
        .filter(|(_, on, _)| *on)
        .map(|(n, _, proto)| (n, proto))
        .collect();
        let (field, proto) = match set.as_slice() {
            [one] => *one,
            [] => {
                self.problem(f, "must set one of tcp, udp, sctp and destinationNamedPort");
                return None;
            }
            _ => {
                self.problem(
                    f,
                    "must set only one of tcp, udp, sctp and destinationNamedPort",
                );
                return None;
            }
        };
        let Some(proto) = proto else {
            return p.destination_named_port.clone().map(CnpPort::Named);
        };
        let pp: &ClusterNetworkPolicyProtocolPort = match proto {
            Protocol::Tcp => p.tcp.as_ref()?,
            Protocol::Udp => p.udp.as_ref()?,
            Protocol::Sctp => p.sctp.as_ref()?,
        };
        let df = format!("{f}.{field}.destinationPort");
        let Some(port) = &pp.destination_port else {
            self.problem(&df, "is missing");
            return None;
        };
        let in_range = |n: i32| (1..=65535).contains(&n);
        match (port.number, &port.range) {
            (Some(n), None) if in_range(n) => Some(CnpPort::Range {
                proto,
                lo: n as u16,
                hi: n as u16,
            }),
            (Some(n), None) => {
                self.problem(format!("{df}.number"), format!("{n} is not in 1..=65535"));
                None
            }
            (None, Some(r)) => {
                let rf = format!("{df}.range");
                let (Some(lo), Some(hi)) = (r.start, r.end) else {
                    self.problem(&rf, "must set start and end");
                    return None;
                };
                let before = self.problems.len();
                for (name, n) in [("start", lo), ("end", hi)] {
                    if !in_range(n) {
                        self.problem(format!("{rf}.{name}"), format!("{n} is not in 1..=65535"));
                    }
                }
                if self.problems.len() == before && lo >= hi {
                    self.problem(&rf, format!("start {lo} must be less than end {hi}"));
                }
                (self.problems.len() == before).then_some(CnpPort::Range {
                    proto,
                    // Every port: port-unknown lookups (port 0) match too.
                    lo: if lo == 1 && hi == 65535 { 0 } else { lo as u16 },
                    hi: hi as u16,
                })
            }
            (None, None) => {
                self.problem(&df, "must set number or range");
                None
            }
            (Some(_), Some(_)) => {
                self.problem(&df, "must set only one of number and range");
                None
            }
        }
    }

    /// Upstream, for a peer the implementation cannot enforce: an Accept rule treats it as
    /// matching nothing; a Deny or Pass rule becomes a Deny of all traffic.
    fn fail_closed(&mut self, raw: RawRule) -> CnpRule {
        let action = raw.action.unwrap_or(Action::Deny);
        if raw.unenforceable.is_empty() {
            return CnpRule {
                action,
                peers: raw.peers,
                ports: raw.ports,
            };
        }
        let effect = match action {
            Action::Accept => "this peer matches nothing (an Accept rule fails closed)",
            Action::Deny | Action::Pass => {
                "the rule denies all traffic instead (a Deny or Pass rule fails closed)"
            }
        };
        for (field, what) in &raw.unenforceable {
            self.notices
                .push(Problem::new(&self.obj, field, format!("{what}; {effect}")));
        }
        match action {
            Action::Accept => CnpRule {
                action,
                peers: raw.peers,
                ports: raw.ports,
            },
            Action::Deny | Action::Pass => CnpRule {
                action: Action::Deny,
                peers: vec![CnpPeer::Everything],
                ports: None,
            },
        }
    }
}

/// Ingress and egress rules, read alike.
trait RuleView {
    /// `from` or `to`.
    const PEERS: &'static str;
    fn name(&self) -> Option<&str>;
    fn action(&self) -> Option<&str>;
    fn peers(&self) -> Option<Vec<PeerView<'_>>>;
    fn protocols(&self) -> Option<&[ClusterNetworkPolicyProtocol]>;
}

impl RuleView for super::types::ClusterNetworkPolicyIngressRule {
    const PEERS: &'static str = "from";
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }
    fn peers(&self) -> Option<Vec<PeerView<'_>>> {
        self.from
            .as_ref()
            .map(|ps| ps.iter().map(PeerView::from).collect())
    }
    fn protocols(&self) -> Option<&[ClusterNetworkPolicyProtocol]> {
        self.protocols.as_deref()
    }
}

impl RuleView for super::types::ClusterNetworkPolicyEgressRule {
    const PEERS: &'static str = "to";
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }
    fn peers(&self) -> Option<Vec<PeerView<'_>>> {
        self.to
            .as_ref()
            .map(|ps| ps.iter().map(PeerView::from).collect())
    }
    fn protocols(&self) -> Option<&[ClusterNetworkPolicyProtocol]> {
        self.protocols.as_deref()
    }
}
