//! `policy lint`: policies that do not say what their authors meant.
//!
//! Each check has a stable code and name (see [`CHECKS`]), a severity, and reports
//! [`Finding`]s naming the policy, the field path of the rule or peer (`spec.ingress[0].from[1]`),
//! what the policy actually does, and what was probably meant. Checks that need the cluster's
//! state (pods, namespaces, Services) run only when the input has it, and say so in
//! [`LintReport::notes`] when they cannot.
//!
//! Every semantic question ("does this pod's egress allow that one on TCP 80?") is asked of
//! the reference evaluator, so lint and enforcement cannot disagree about what a policy does.

mod dns;
mod ipblock;
mod reach;
mod selectors;
mod shadow;
mod shape;
mod text;
mod validity;

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::eval::Evaluator;
use crate::model::{Cluster, Endpoint, PodInfo};
use crate::service::ServiceInfo;
use crate::validate::{Direction, NormPolicy, Problem, normalize};

pub use text::render;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// True and worth knowing; often intended.
    Info,
    /// The policy very likely does not do what was meant.
    Warning,
    /// The policy (or an object) is not enforced at all.
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" | "warn" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            _ => Err(format!(
                "unknown severity {s:?} (expected info, warning or error)"
            )),
        }
    }
}

/// One check: its stable code and name, its severity and what it looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub code: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
}

macro_rules! checks {
    ($($id:ident = $code:literal $name:literal $sev:ident $summary:literal;)*) => {
        $(pub(crate) const $id: Check = Check {
            code: $code,
            name: $name,
            severity: Severity::$sev,
            summary: $summary,
        };)*
        /// Every check, in code order. Codes and names never change meaning; a retired check
        /// keeps its code unused.
        pub const CHECKS: &[Check] = &[$($id),*];
    };
}

checks! {
    OBJECT_NOT_READ = "PL100" "object-not-read" Error
        "a manifest or object could not be read, so what it holds is not known or enforced";
    INVALID_POLICY = "PL101" "invalid-policy" Error
        "the policy fails validation: the API server rejects it and Palisade enforces none of it";
    EXCEPT_OUTSIDE_CIDR = "PL102" "except-outside-cidr" Error
        "an ipBlock except is not strictly inside its cidr";
    POLICY_SELECTS_NO_POD = "PL201" "policy-selects-no-pod" Warning
        "spec.podSelector selects no pod of a namespace that has pods: the policy has no effect";
    PEER_SELECTS_NO_POD = "PL202" "peer-selects-no-pod" Warning
        "a peer's selectors match no pod: it allows nothing";
    NAMESPACE_SELECTOR_MATCHES_NOTHING = "PL203" "namespace-selector-matches-nothing" Warning
        "a peer's namespaceSelector matches no namespace: it allows nothing";
    NAMESPACE_LABEL_UNKNOWN = "PL204" "namespace-label-unknown" Warning
        "a namespaceSelector requires a label no namespace has (kubernetes.io/metadata.name was probably meant)";
    DNS_BLOCKED = "PL301" "dns-blocked" Warning
        "pods isolated for egress (with some egress allowed) cannot reach the cluster DNS on UDP or TCP 53";
    DNS_ONE_TRANSPORT = "PL302" "dns-one-transport" Warning
        "DNS is allowed over UDP or TCP only: truncated answers retry over TCP";
    ONE_SIDED_INGRESS = "PL401" "one-sided-ingress" Warning
        "an ingress rule admits pods whose own egress policy does not let them send";
    ONE_SIDED_EGRESS = "PL402" "one-sided-egress" Warning
        "an egress rule allows sending to pods whose ingress policy does not admit it";
    SPLIT_RULE = "PL501" "split-rule" Warning
        "one rule lists only peers and another only ports: every port from the peers, and the ports from everyone";
    PORTS_WITHOUT_PEERS = "PL502" "ports-without-peers" Info
        "a rule lists ports but no peers while its sibling rules name their peers: those ports are open to every source";
    IPBLOCK_COVERS_PODS = "PL601" "ipblock-covers-pods" Info
        "an ipBlock covers pod addresses: those pods match it whatever their labels";
    IPBLOCK_COVERS_SERVICES = "PL602" "ipblock-covers-services" Warning
        "an egress ipBlock covers Service addresses but not their backends: Service traffic is judged after translation";
    SHADOWED_RULE = "PL701" "shadowed-rule" Warning
        "a rule can never add anything: another rule allows all it allows to every pod it applies to";
    SHADOWED_POLICY = "PL702" "shadowed-policy" Warning
        "a policy adds nothing: other policies isolate its pods and allow all its rules allow";
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `PL201`.
    pub code: String,
    /// `policy-selects-no-pod`.
    pub check: String,
    pub severity: Severity,
    /// `NetworkPolicy x/allow-web`.
    pub object: String,
    /// Field path inside the object, e.g. `spec.ingress[0].from[1]`.
    pub path: String,
    /// What the policy actually does.
    pub message: String,
    /// What was probably meant, and how to write it.
    pub suggestion: Option<String>,
}

/// Everything lint found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LintReport {
    /// NetworkPolicies looked at.
    pub policies: usize,
    /// Ordered by object, path and code.
    pub findings: Vec<Finding>,
    /// Checks that could not run on this input, and why.
    pub notes: Vec<String>,
}

impl LintReport {
    /// The most severe finding's severity.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// Findings at `sev` or above.
    pub fn at_least(&self, sev: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity >= sev).count()
    }
}

/// What lint looks at.
#[derive(Clone, Copy, Debug)]
pub struct LintInput<'a> {
    /// Policies as written (invalid ones too), pods and namespaces.
    pub cluster: &'a Cluster,
    pub services: &'a [ServiceInfo],
    /// The namespaces are known with their labels (Namespace objects were read), not only
    /// their names inferred from pods and policies: namespace selector checks need this.
    pub namespaces_known: bool,
    /// Objects that could not be read (manifests that do not parse...).
    pub read_problems: &'a [Problem],
}

/// Runs every check.
pub fn lint(input: &LintInput) -> LintReport {
    let mut cx = Cx::new(input);
    validity::check(&mut cx);
    shape::check(&mut cx);
    selectors::check(&mut cx);
    ipblock::check(&mut cx);
    dns::check(&mut cx);
    reach::check(&mut cx);
    shadow::check(&mut cx);
    let mut findings = cx.findings;
    findings.sort_by(|a, b| {
        (&a.object, &a.path, &a.code, &a.message).cmp(&(&b.object, &b.path, &b.code, &b.message))
    });
    findings.dedup();
    LintReport {
        policies: input.cluster.policies.len(),
        findings,
        notes: cx.notes,
    }
}

/// What every check shares: the valid policies (normalized, in input order, as the
/// evaluator holds them) and the pods each selects.
pub(crate) struct Cx<'a> {
    pub input: &'a LintInput<'a>,
    pub ev: Evaluator<'a>,
    /// Per policy of `ev.policies`: indices (in `cluster.pods`) of the pods it selects that
    /// policy applies to (not host-network).
    pub selected: Vec<Vec<usize>>,
    /// Per pod of `cluster.pods`: indices (in `ev.policies`) of the policies selecting it.
    pub selecting: Vec<Vec<usize>>,
    /// Namespace -> indices of its pods (every namespace a pod is in).
    pub pods_by_ns: HashMap<&'a str, Vec<usize>>,
    /// Namespace -> indices (in `ev.policies`) of its valid policies.
    pub policies_by_ns: HashMap<String, Vec<usize>>,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

impl<'a> Cx<'a> {
    fn new(input: &'a LintInput<'a>) -> Self {
        let policies: Vec<NormPolicy> = input
            .cluster
            .policies
            .iter()
            .filter_map(|p| normalize(p).ok())
            .collect();
        let selected = policies
            .iter()
            .map(|pol| {
                input
                    .cluster
                    .pods
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        !p.host_network
                            && p.namespace == pol.namespace
                            && pol.selector.matches(&p.labels)
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect::<Vec<Vec<usize>>>();
        let mut selecting = vec![Vec::new(); input.cluster.pods.len()];
        for (pi, pods) in selected.iter().enumerate() {
            for &i in pods {
                selecting[i].push(pi);
            }
        }
        let mut pods_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in input.cluster.pods.iter().enumerate() {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(i);
        }
        let mut policies_by_ns: HashMap<String, Vec<usize>> = HashMap::new();
        for (pi, p) in policies.iter().enumerate() {
            policies_by_ns
                .entry(p.namespace.clone())
                .or_default()
                .push(pi);
        }
        Cx {
            input,
            ev: Evaluator::from_parts(input.cluster, policies),
            selected,
            selecting,
            pods_by_ns,
            policies_by_ns,
            findings: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn cluster(&self) -> &'a Cluster {
        self.input.cluster
    }

    pub fn pod(&self, i: usize) -> &'a PodInfo {
        &self.input.cluster.pods[i]
    }

    /// The state has pods at all (else pod-based checks say nothing).
    pub fn has_pods(&self) -> bool {
        !self.input.cluster.pods.is_empty()
    }

    /// Whether namespace `ns` has pods in the state.
    pub fn ns_has_pods(&self, ns: &str) -> bool {
        self.pods_by_ns.contains_key(ns)
    }

    /// Whether policy `pi` selects pod `i`.
    pub fn selects(&self, pi: usize, i: usize) -> bool {
        self.selected[pi].binary_search(&i).is_ok()
    }

    /// The evaluator's answer for pod `i` in `dir` with `peer` (looking only at the policies
    /// that select the pod, which is all the evaluator would look at).
    pub fn passes(&self, i: usize, dir: Direction, peer: &Endpoint, proto: u8, port: u16) -> bool {
        self.ev
            .check_among(
                self.selecting[i].iter().map(|pi| &self.ev.policies[*pi]),
                self.pod(i),
                dir,
                peer,
                proto,
                port,
            )
            .passes()
    }

    /// Selectable pods (indices) that a selector peer of policy `pi` names.
    pub fn peer_pods(&self, pi: usize, peer: &crate::validate::Peer) -> Vec<usize> {
        let crate::validate::Peer::Pods { namespaces, pods } = peer else {
            return Vec::new();
        };
        let pol = &self.ev.policies[pi];
        let mut out: Vec<usize> = self
            .pods_by_ns
            .iter()
            .filter(|(ns, _)| match namespaces {
                None => **ns == pol.namespace,
                Some(s) => s.matches(self.ev.ns_labels(ns)),
            })
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|i| {
                let p = self.pod(*i);
                p.is_selectable_peer() && pods.matches(&p.labels)
            })
            .collect();
        out.sort_unstable();
        out
    }

    pub fn report(
        &mut self,
        check: &Check,
        object: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
        suggestion: Option<String>,
    ) {
        self.findings.push(Finding {
            code: check.code.into(),
            check: check.name.into(),
            severity: check.severity,
            object: object.into(),
            path: path.into(),
            message: message.into(),
            suggestion,
        });
    }

    pub fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }
}

/// `NetworkPolicy ns/name` of a normalized policy.
pub(crate) fn object(pol: &NormPolicy) -> String {
    format!("NetworkPolicy {}/{}", pol.namespace, pol.name)
}
