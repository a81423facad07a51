//! Validation and normalisation of NetworkPolicy objects.
//!
//! `normalize` turns a k8s-openapi `NetworkPolicy` into the small internal form every other
//! module works on (defaults applied, selectors parsed, CIDRs masked), or into the list of
//! everything wrong with it. An invalid policy is never half-applied: `compile` skips it whole
//! and reports these problems.

use std::fmt;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::Protocol;
use crate::prefix::Prefix;
use crate::selector::Selector;

/// Something `policy` could not represent: which object, which field, and what is wrong with
/// which value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// `NetworkPolicy ns/name` or `Pod ns/name`.
    pub object: String,
    /// Path of the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong; names the offending value.
    pub message: String,
}

impl Problem {
    pub fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// `NetworkPolicy ns/name`.
pub fn policy_object_name(p: &NetworkPolicy) -> String {
    format!(
        "NetworkPolicy {}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// A policy after defaults and parsing.
#[derive(Clone, Debug)]
pub(crate) struct NormPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    /// `Some` when `Ingress` is among the (defaulted) policyTypes; the rules (possibly none).
    pub ingress: Option<Vec<NormRule>>,
    pub egress: Option<Vec<NormRule>>,
    /// Audit mode (`AUDIT_ANNOTATION: "true"`, or a node in audit mode): the policy decides
    /// nothing; what it would drop is reported.
    pub audit: bool,
}

impl NormPolicy {
    pub fn rules(&self, dir: Direction) -> Option<&Vec<NormRule>> {
        match dir {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}

/// Direction, from the selected pod's point of view.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// `palisade_common::DIR_INGRESS` / `DIR_EGRESS`.
    pub const fn to_dir(self) -> u8 {
        match self {
            Direction::Ingress => palisade_common::DIR_INGRESS,
            Direction::Egress => palisade_common::DIR_EGRESS,
        }
    }

    pub fn from_dir(dir: u8) -> Option<Self> {
        match dir {
            palisade_common::DIR_INGRESS => Some(Direction::Ingress),
            palisade_common::DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct NormRule {
    /// `None`: no or empty `from`/`to`, i.e. every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: no or empty `ports`, i.e. every port of every protocol.
    pub ports: Option<Vec<PortSpec>>,
}

impl NormRule {
    pub fn has_named_ports(&self) -> bool {
        self.ports
            .iter()
            .flatten()
            .any(|p| matches!(p.port, PortMatch::Named(_)))
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// Pods matching `pods` in namespaces matching `namespaces` (`None`: the policy's own
    /// namespace).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block {
        cidr: Prefix,
        except: Vec<Prefix>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct PortSpec {
    pub proto: Protocol,
    pub port: PortMatch,
}

#[derive(Clone, Debug)]
pub(crate) enum PortMatch {
    /// Only a protocol: every port of it.
    All,
    /// `port` ..= `endPort` (or `port` ..= `port`).
    Range(u16, u16),
    /// A named container port, resolved against a pod.
    Named(String),
}

/// The annotation that puts a NetworkPolicy in audit mode: `"true"` (audited: it decides
/// nothing, the flows it would drop are reported as `AUDIT`) or `"false"` (enforced, as
/// without it). Any other value is a problem of the policy (the last valid version stays).
pub const AUDIT_ANNOTATION: &str = "policy.palisade.io/audit";

fn audit_mode(policy: &NetworkPolicy, obj: &str, problems: &mut Vec<Problem>) -> bool {
    let Some(v) = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUDIT_ANNOTATION))
    else {
        return false;
    };
    match v.as_str() {
        "true" => true,
        "false" => false,
        other => {
            problems.push(Problem::new(
                obj,
                format!("metadata.annotations[{AUDIT_ANNOTATION}]"),
                format!("{other:?} is neither \"true\" (audit) nor \"false\" (enforce)"),
            ));
            false
        }
    }
}

/// Everything wrong with `policy` (empty when `compile` would accept it).
pub fn validate(policy: &NetworkPolicy) -> Vec<Problem> {
    match normalize(policy) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

pub(crate) fn normalize(policy: &NetworkPolicy) -> Result<NormPolicy, Vec<Problem>> {
    let obj = policy_object_name(policy);
    let mut problems = Vec::new();
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    if namespace.is_empty() {
        problems.push(Problem::new(&obj, "metadata.namespace", "is empty"));
    }
    if name.is_empty() {
        problems.push(Problem::new(&obj, "metadata.name", "is empty"));
    }
    let audit = audit_mode(policy, &obj, &mut problems);
    let Some(spec) = policy.spec.as_ref() else {
        problems.push(Problem::new(&obj, "spec", "is missing"));
        return Err(problems);
    };
    // An absent podSelector is the empty selector (the API server serializes `podSelector: {}`).
    let selector = Selector::parse(
        &spec.pod_selector.clone().unwrap_or_default(),
        &obj,
        "spec.podSelector",
        &mut problems,
    );

    let (mut has_in, mut has_eg) = (false, false);
    match &spec.policy_types {
        // Default: Ingress, plus Egress when there is at least one egress rule.
        None => {
            has_in = true;
            has_eg = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_in = true,
                    "Egress" => has_eg = true,
                    other => problems.push(Problem::new(
                        &obj,
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                    )),
                }
            }
        }
    }

    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        ingress.push(norm_rule(
            r.from.as_deref(),
            "from",
            r.ports.as_deref(),
            &obj,
            &f,
            &mut problems,
        ));
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        egress.push(norm_rule(
            r.to.as_deref(),
            "to",
            r.ports.as_deref(),
            &obj,
            &f,
            &mut problems,
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NormPolicy {
        namespace,
        name,
        selector: selector.unwrap_or_default(),
        // Rules of a direction not in policyTypes are ignored, as the spec says.
        ingress: has_in.then_some(ingress),
        egress: has_eg.then_some(egress),
        audit,
    })
}

fn norm_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    peer_field: &str,
    ports: Option<&[NetworkPolicyPort]>,
    obj: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> NormRule {
    let peers = peers.filter(|p| !p.is_empty()).map(|ps| {
        ps.iter()
            .enumerate()
            .filter_map(|(j, p)| norm_peer(p, obj, &format!("{field}.{peer_field}[{j}]"), problems))
            .collect()
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|ps| {
        ps.iter()
            .enumerate()
            .filter_map(|(j, p)| norm_port(p, obj, &format!("{field}.ports[{j}]"), problems))
            .collect()
    });
    NormRule { peers, ports }
}

fn norm_peer(
    p: &NetworkPolicyPeer,
    obj: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<Peer> {
    let has_sel = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_sel) {
        (Some(_), true) => {
            problems.push(Problem::new(
                obj,
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            ));
            None
        }
        (None, false) => {
            problems.push(Problem::new(
                obj,
                field,
                "peer must set ipBlock, podSelector or namespaceSelector",
            ));
            None
        }
        (None, true) => {
            let namespaces = match &p.namespace_selector {
                Some(s) => Some(Selector::parse(
                    s,
                    obj,
                    &format!("{field}.namespaceSelector"),
                    problems,
                )?),
                None => None,
            };
            let pods = match &p.pod_selector {
                Some(s) => Selector::parse(s, obj, &format!("{field}.podSelector"), problems)?,
                None => Selector::default(),
            };
            Some(Peer::Pods { namespaces, pods })
        }
        (Some(b), false) => {
            let cidr = match Prefix::parse(&b.cidr) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(Problem::new(obj, format!("{field}.ipBlock.cidr"), e));
                    return None;
                }
            };
            let mut except = Vec::new();
            for (k, e) in b.except.iter().flatten().enumerate() {
                let ef = format!("{field}.ipBlock.except[{k}]");
                match Prefix::parse(e) {
                    Err(m) => problems.push(Problem::new(obj, ef, m)),
                    // Strict subset, as the API server requires.
                    Ok(x) if !cidr.contains(&x) || x.len == cidr.len => {
                        problems.push(Problem::new(
                            obj,
                            ef,
                            format!("{e:?} is not strictly inside cidr {:?}", b.cidr),
                        ))
                    }
                    Ok(x) => except.push(x),
                }
            }
            Some(Peer::Block { cidr, except })
        }
    }
}

/// IANA_SVC_NAME: at most 15 characters of a-z, 0-9 and '-', at least one letter, no leading,
/// trailing or double '-'.
fn is_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn norm_port(
    p: &NetworkPolicyPort,
    obj: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<PortSpec> {
    let before = problems.len();
    let proto = match p.protocol.as_deref() {
        None => Some(Protocol::Tcp),
        Some(s) => {
            let pr = Protocol::from_k8s(s);
            if pr.is_none() {
                problems.push(Problem::new(
                    obj,
                    format!("{field}.protocol"),
                    format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"),
                ));
            }
            pr
        }
    };
    let in_range = |n: i32| (1..=65535).contains(&n);
    let port = match (&p.port, p.end_port) {
        (None, None) => Some(PortMatch::All),
        (None, Some(e)) => {
            problems.push(Problem::new(
                obj,
                format!("{field}.endPort"),
                format!("endPort {e} needs a numeric port"),
            ));
            None
        }
        (Some(IntOrString::Int(n)), end) => {
            let n = *n;
            if !in_range(n) {
                problems.push(Problem::new(
                    obj,
                    format!("{field}.port"),
                    format!("port {n} is not in 1..=65535"),
                ));
                None
            } else {
                match end {
                    None => Some(PortMatch::Range(n as u16, n as u16)),
                    Some(e) if !in_range(e) => {
                        problems.push(Problem::new(
                            obj,
                            format!("{field}.endPort"),
                            format!("endPort {e} is not in 1..=65535"),
                        ));
                        None
                    }
                    Some(e) if e < n => {
                        problems.push(Problem::new(
                            obj,
                            format!("{field}.endPort"),
                            format!("endPort {e} is below port {n}"),
                        ));
                        None
                    }
                    Some(e) => Some(PortMatch::Range(n as u16, e as u16)),
                }
            }
        }
        (Some(IntOrString::String(s)), end) => {
            if let Some(e) = end {
                problems.push(Problem::new(
                    obj,
                    format!("{field}.endPort"),
                    format!("endPort {e} cannot be used with the named port {s:?}"),
                ));
                None
            } else if !is_svc_name(s) {
                problems.push(Problem::new(
                    obj,
                    format!("{field}.port"),
                    format!("{s:?} is neither a port number nor a valid port name (IANA_SVC_NAME)"),
                ));
                None
            } else {
                Some(PortMatch::Named(s.clone()))
            }
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(PortSpec {
        proto: proto?,
        port: port?,
    })
}
