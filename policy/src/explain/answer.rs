//! What `explain` answers: serde types, so an agent can send them and `-o json` print them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::PortQuery;
use crate::port_space::PortRanges;
use crate::validate::Direction;

/// The answer to one question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub from: Subject,
    pub to: Subject,
    /// The port asked about; `None`: every protocol and port.
    pub port: Option<PortQuery>,
    pub verdict: Verdict,
    /// One per (source address, destination address[, Service port]) of one family.
    pub connections: Vec<Connection>,
    pub notes: Vec<String>,
}

/// `allowed`: every connection (on every port, when none was asked) is allowed; `denied`:
/// none is (on any port); `partly`: the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Denied,
    Partly,
}

/// FROM or TO as understood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// As given on the command line.
    pub given: String,
    pub kind: SubjectKind,
    /// `ns/pod` or `ns/service`; `None` for an address outside the cluster.
    pub name: Option<String>,
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Pod,
    /// Not a pod: another node, a host outside the cluster.
    External,
    Service,
}

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// `ns/pod`, or `None` outside the cluster.
    pub pod: Option<String>,
    pub address: IpAddr,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pod {
            Some(p) => write!(f, "{p} ({})", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

/// One connection and the two checks it meets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub src: End,
    pub dst: End,
    /// For a Service destination: `ns/name port/PROTO -> target port`.
    pub service_port: Option<String>,
    /// The protocol and port judged (a Service's target port); `None` when every port was
    /// asked about.
    pub probe: Option<PortQuery>,
    /// Allowed (with every port asked about: allowed on some port, see `allowed_ports`).
    pub allowed: bool,
    /// With every port asked about: what is allowed.
    pub allowed_ports: Option<PortRanges>,
    /// Egress at the source; `None` when the source is not a pod.
    pub egress: Option<DirectionExplanation>,
    /// Ingress at the destination; `None` when the destination is not a pod.
    pub ingress: Option<DirectionExplanation>,
}

/// One direction at one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionExplanation {
    pub pod: String,
    pub direction: Direction,
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    /// This direction lets the connection through (on some port, with every port asked).
    pub allowed: bool,
    /// With every port asked about: what this direction allows.
    pub allowed_ports: Option<PortRanges>,
    /// Why the pod is not judged, when it is not (host-network pods).
    pub note: Option<String>,
    /// Some of what passes passes by the default allow: ClusterNetworkPolicies select the
    /// pod, none of their rules decided and no NetworkPolicy isolates it.
    #[serde(default)]
    pub default_allow: bool,
    /// Every policy that selects the pod for this direction, in evaluation order: Admin-tier
    /// ClusterNetworkPolicies (by priority), NetworkPolicies (in the order they were given),
    /// Baseline-tier ClusterNetworkPolicies.
    pub policies: Vec<PolicyExplanation>,
}

/// Kinds of policy that can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    NetworkPolicy,
    ClusterNetworkPolicy,
}

/// What a rule does when it matches. NetworkPolicy rules only allow; ClusterNetworkPolicy
/// rules accept, deny or pass (to the next tier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Allow,
    Accept,
    Deny,
    Pass,
}

/// One policy selecting the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyExplanation {
    pub kind: PolicyKind,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    /// A ClusterNetworkPolicy's tier (`Admin`, `Baseline`) and priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Some rule of this policy decides the connection (on some port, with every port asked).
    pub decides: bool,
    pub rules: Vec<RuleExplanation>,
}

impl PolicyExplanation {
    /// `NetworkPolicy x/allow-web`, `ClusterNetworkPolicy deny-db (Admin tier, priority 10)`.
    pub fn title(&self) -> String {
        let kind = match self.kind {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        };
        let tier = match (&self.tier, self.priority) {
            (Some(t), Some(p)) => format!(" ({t} tier, priority {p})"),
            (Some(t), None) => format!(" ({t} tier)"),
            _ => String::new(),
        };
        match &self.namespace {
            Some(ns) => format!("{kind} {ns}/{}{tier}", self.name),
            None => format!("{kind} {}{tier}", self.name),
        }
    }
}

/// One rule of a policy, and how it meets the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleExplanation {
    /// `spec.ingress[0]`.
    pub path: String,
    pub action: RuleAction,
    /// The rule's peers and ports in words.
    pub peers: String,
    pub ports: String,
    /// Which peer names the connection's peer, e.g. `from[1] (pods app=web in namespace x)
    /// names x/b as a pod`; `None`: no peer does.
    pub peer_match: Option<String>,
    /// With one port asked about: the port entry that matches (`ports[0] (TCP 80)`, `every
    /// port`); `None`: none does.
    pub port_match: Option<String>,
    /// With every port asked about: what this rule allows for this peer.
    pub allowed_ports: Option<PortRanges>,
    /// The rule matches the connection (on some port, with every port asked): a
    /// NetworkPolicy rule allows it; a ClusterNetworkPolicy rule applies its action, unless
    /// an earlier rule or tier decided first (see `decides`).
    pub matches: bool,
    /// The connection's verdict (on some port, with every port asked) comes from this rule.
    #[serde(default)]
    pub decides: bool,
}
