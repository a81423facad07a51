//! Reachability truth tables, in the layout of the upstream NetworkPolicy e2e suite
//! (kubernetes `test/e2e/network/netpol`): one square table per (port, protocol), rows are
//! the sources ("from"), columns the destinations ("to"), `.` reachable, `X` blocked, `?` not
//! observed.
//!
//! The same type holds expectations and observations: tests start from an all-reachable table,
//! punch holes with [`Reachability::expect_all_ingress`] and friends, and compare with
//! [`Reachability::diff`], which prints expected, observed and the mismatching cells.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Protocol of a probe.
///
/// - TCP: a connect; UDP: a datagram echoed by the server.
/// - SCTP: this kernel has no SCTP, so the probe is a crafted INIT packet sent from a raw
///   socket; reachable when the destination's raw IP-protocol-132 socket received it.
/// - ICMP: an echo request (ICMPv6 echo for v6) from a ping socket; the port is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    #[serde(rename = "ICMP")]
    Icmp,
}

impl Protocol {
    /// What the servers of the default model answer: TCP and UDP.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`); `ICMP` for echo probes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
        }
    }

    /// IP protocol number (ICMP: 1, also for v6 probes, as the policy model numbers them).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
        }
    }

    /// The protocol of an IP protocol number, if probes know it.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            1 | 58 => Some(Protocol::Icmp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Address family the probes use (destination = the pod's IP of that family).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    #[default]
    #[serde(rename = "v4")]
    V4,
    #[serde(rename = "v6")]
    V6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v4" | "4" | "ipv4" => Ok(Family::V4),
            "v6" | "6" | "ipv6" => Ok(Family::V6),
            other => Err(format!("unknown address family {other:?} (use v4 or v6)")),
        }
    }
}

/// One (port, protocol) combination probed between every pair of pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Case {
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// Selects pods by namespace and/or name; `None` matches everything (upstream `Peer`).
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl Peer {
    /// Every pod.
    pub fn any() -> Self {
        Peer::default()
    }
    /// Every pod of namespace `ns`.
    pub fn ns(ns: &str) -> Self {
        Peer {
            namespace: Some(ns.to_string()),
            pod: None,
        }
    }
    /// Pods named `pod` in every namespace.
    pub fn named(pod: &str) -> Self {
        Peer {
            namespace: None,
            pod: Some(pod.to_string()),
        }
    }
    /// Exactly `ns/pod`.
    pub fn pod(ns: &str, pod: &str) -> Self {
        Peer {
            namespace: Some(ns.to_string()),
            pod: Some(pod.to_string()),
        }
    }

    fn matches(&self, id: &str) -> bool {
        let (ns, pod) = id.split_once('/').unwrap_or((id, ""));
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.pod.as_deref().is_none_or(|p| p == pod)
    }
}

/// A square table of booleans over the pods `ns/name`, indexed `[from][to]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthTable {
    pods: Vec<String>,
    /// Row-major (`from * n + to`); `None` = not observed.
    values: Vec<Option<bool>>,
}

impl TruthTable {
    pub fn new(pods: &[String], default: Option<bool>) -> Self {
        TruthTable {
            pods: pods.to_vec(),
            values: vec![default; pods.len() * pods.len()],
        }
    }

    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    fn index(&self, pod: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p == pod)
            .unwrap_or_else(|| panic!("pod {pod:?} is not in the table ({:?})", self.pods))
    }

    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        let n = self.pods.len();
        self.values[self.index(from) * n + self.index(to)]
    }

    pub fn set(&mut self, from: &str, to: &str, value: bool) {
        let n = self.pods.len();
        let i = self.index(from) * n + self.index(to);
        self.values[i] = Some(value);
    }

    /// Sets every cell whose source matches `from` and destination matches `to`.
    pub fn set_peers(&mut self, from: &Peer, to: &Peer, value: bool) {
        let n = self.pods.len();
        for (f, fp) in self.pods.iter().enumerate() {
            if !from.matches(fp) {
                continue;
            }
            for (t, tp) in self.pods.iter().enumerate() {
                if to.matches(tp) {
                    self.values[f * n + t] = Some(value);
                }
            }
        }
    }

    /// Upstream layout: a header `-  <to...>`, then one row per source, tab separated.
    pub fn pretty(&self) -> String {
        let n = self.pods.len();
        let mut out = String::from("-");
        for p in &self.pods {
            out.push('\t');
            out.push_str(p);
        }
        out.push('\n');
        for (f, fp) in self.pods.iter().enumerate() {
            out.push_str(fp);
            for t in 0..n {
                out.push('\t');
                out.push_str(match self.values[f * n + t] {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "?",
                });
            }
            out.push('\n');
        }
        out
    }
}

/// A probe result in the JSON form (`--json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCase {
    pub port: u16,
    pub protocol: Protocol,
    pub from: String,
    pub to: String,
    pub reachable: bool,
}

/// Reachability of every pod pair for several (port, protocol) cases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    pods: Vec<String>,
    family: Family,
    tables: BTreeMap<Case, TruthTable>,
}

impl Reachability {
    /// A table for every (port, protocol), each cell set to `default` (`None` = unobserved).
    pub fn new(
        pods: &[String],
        ports: &[u16],
        protocols: &[Protocol],
        family: Family,
        default: Option<bool>,
    ) -> Self {
        let mut tables = BTreeMap::new();
        for &port in ports {
            for &protocol in protocols {
                tables.insert(Case { port, protocol }, TruthTable::new(pods, default));
            }
        }
        Reachability {
            pods: pods.to_vec(),
            family,
            tables,
        }
    }

    /// A table for every case of `cases`, each cell set to `default`.
    pub fn with_cases(
        pods: &[String],
        cases: &[Case],
        family: Family,
        default: Option<bool>,
    ) -> Self {
        Reachability {
            pods: pods.to_vec(),
            family,
            tables: cases
                .iter()
                .map(|&c| (c, TruthTable::new(pods, default)))
                .collect(),
        }
    }

    /// An expectation with the same pods and cases as `observed`, everything reachable: the
    /// usual starting point of an expected table.
    pub fn all_reachable_like(observed: &Reachability) -> Self {
        let mut r = observed.clone();
        for t in r.tables.values_mut() {
            t.values.iter_mut().for_each(|v| *v = Some(true));
        }
        r
    }

    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn cases(&self) -> impl Iterator<Item = Case> + '_ {
        self.tables.keys().copied()
    }

    pub fn table(&self, port: u16, protocol: Protocol) -> Option<&TruthTable> {
        self.tables.get(&Case { port, protocol })
    }

    /// The table of one (port, protocol), to set expectations that differ per port.
    pub fn table_mut(&mut self, port: u16, protocol: Protocol) -> &mut TruthTable {
        self.tables
            .get_mut(&Case { port, protocol })
            .unwrap_or_else(|| panic!("no case {protocol}/{port} in this reachability"))
    }

    /// Records one observation.
    pub fn observe(&mut self, case: Case, from: &str, to: &str, reachable: bool) {
        self.table_mut(case.port, case.protocol)
            .set(from, to, reachable);
    }

    /// `from -> to` on every case.
    pub fn expect(&mut self, from: &str, to: &str, reachable: bool) -> &mut Self {
        self.tables
            .values_mut()
            .for_each(|t| t.set(from, to, reachable));
        self
    }

    /// Every source to `pod`, on every case.
    pub fn expect_all_ingress(&mut self, pod: &str, reachable: bool) -> &mut Self {
        self.expect_peer(&Peer::any(), &pod_peer(pod), reachable)
    }

    /// `pod` to every destination, on every case.
    pub fn expect_all_egress(&mut self, pod: &str, reachable: bool) -> &mut Self {
        self.expect_peer(&pod_peer(pod), &Peer::any(), reachable)
    }

    /// Every `from` pod to every `to` pod, on every case.
    pub fn expect_peer(&mut self, from: &Peer, to: &Peer, reachable: bool) -> &mut Self {
        self.tables
            .values_mut()
            .for_each(|t| t.set_peers(from, to, reachable));
        self
    }

    /// Every pod reaches itself (traffic to the pod's own IP never leaves the pod).
    pub fn allow_loopback(&mut self) -> &mut Self {
        let pods = self.pods.clone();
        for p in &pods {
            self.expect(p, p, true);
        }
        self
    }

    /// Number of (reachable, blocked, unobserved) cells over all cases.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for t in self.tables.values() {
            for v in &t.values {
                match v {
                    Some(true) => c.0 += 1,
                    Some(false) => c.1 += 1,
                    None => c.2 += 1,
                }
            }
        }
        c
    }

    /// One summary line: `324 probes (v4): 300 reachable, 24 blocked`.
    pub fn summary(&self) -> String {
        let (ok, blocked, unknown) = self.counts();
        let mut s = format!(
            "{} probes ({}): {ok} reachable, {blocked} blocked",
            ok + blocked + unknown,
            self.family
        );
        if unknown > 0 {
            s.push_str(&format!(", {unknown} not observed"));
        }
        s
    }

    /// Every observation as a list (`--json`).
    pub fn to_cases(&self) -> Vec<ProbeCase> {
        let mut out = Vec::new();
        for (case, t) in &self.tables {
            for from in &t.pods {
                for to in &t.pods {
                    if let Some(reachable) = t.get(from, to) {
                        out.push(ProbeCase {
                            port: case.port,
                            protocol: case.protocol,
                            from: from.clone(),
                            to: to.clone(),
                            reachable,
                        });
                    }
                }
            }
        }
        out
    }

    /// `{"family":"v4","cases":[{"port":80,"protocol":"TCP","from":"x/a","to":"y/b","reachable":true},...]}`
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "family": self.family,
            "pods": self.pods,
            "cases": self.to_cases(),
        })
    }

    /// Compares `self` (expected) with `observed`. `None` when they agree; otherwise a report
    /// with, per mismatching case, the expected, observed and comparison tables (in the
    /// comparison `.` = agrees, `X` = differs) and the list of wrong cells.
    ///
    /// With `ignore_loopback`, cells `p -> p` never count (upstream does the same: what policy
    /// means for a pod talking to itself is not defined).
    pub fn diff(&self, observed: &Reachability, ignore_loopback: bool) -> Option<String> {
        let mut report = String::new();
        let mut wrong_total = 0;
        let mut right_total = 0;
        if self.pods != observed.pods {
            return Some(format!(
                "pods differ: expected {:?}, observed {:?}",
                self.pods, observed.pods
            ));
        }
        for (case, exp) in &self.tables {
            let Some(obs) = observed.tables.get(case) else {
                report.push_str(&format!("{case}: expected but not probed\n"));
                wrong_total += 1;
                continue;
            };
            let mut cmp = TruthTable::new(&self.pods, None);
            let mut wrong = Vec::new();
            for from in &self.pods {
                for to in &self.pods {
                    let e = exp.get(from, to);
                    let o = obs.get(from, to);
                    let agree = e == o || (ignore_loopback && from == to);
                    cmp.set(from, to, agree);
                    if agree {
                        right_total += 1;
                    } else {
                        wrong.push(format!(
                            "  {from} -> {to}: expected {}, observed {}",
                            mark_word(e),
                            mark_word(o)
                        ));
                    }
                }
            }
            if !wrong.is_empty() {
                wrong_total += wrong.len();
                report.push_str(&format!(
                    "== {case} ({}): {} mismatches\nexpected:\n{}\nobserved:\n{}\ncomparison (. = agrees, X = differs):\n{}\n{}\n\n",
                    self.family,
                    wrong.len(),
                    exp.pretty(),
                    obs.pretty(),
                    cmp.pretty(),
                    wrong.join("\n")
                ));
            }
        }
        for case in observed.tables.keys() {
            if !self.tables.contains_key(case) {
                report.push_str(&format!("{case}: probed but no expectation\n"));
                wrong_total += 1;
            }
        }
        if wrong_total == 0 {
            None
        } else {
            Some(format!(
                "reachability: correct {right_total}, incorrect {wrong_total}\n{report}"
            ))
        }
    }
}

fn pod_peer(id: &str) -> Peer {
    match id.split_once('/') {
        Some((ns, pod)) => Peer::pod(ns, pod),
        None => panic!("pod id {id:?} is not of the form ns/name"),
    }
}

fn mark_word(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "reachable",
        Some(false) => "blocked",
        None => "not observed",
    }
}

impl fmt::Display for Reachability {
    /// Every case's table under a `TCP/80 (v4)` heading, then the summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (case, t) in &self.tables {
            writeln!(f, "{case} ({}):", self.family)?;
            writeln!(f, "{}", t.pretty())?;
        }
        writeln!(f, "{}", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        ["x/a", "x/b", "y/a"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn pretty_print_uses_the_upstream_layout() {
        let mut t = TruthTable::new(&pods(), Some(true));
        t.set("x/a", "y/a", false);
        assert_eq!(
            t.pretty(),
            "-\tx/a\tx/b\ty/a\nx/a\t.\t.\tX\nx/b\t.\t.\t.\ny/a\t.\t.\t.\n"
        );
    }

    #[test]
    fn ingress_expectation_blocks_the_column_and_loopback_restores_the_diagonal() {
        let mut r = Reachability::new(&pods(), &[80], &[Protocol::Tcp], Family::V4, Some(true));
        r.expect_all_ingress("x/a", false).allow_loopback();
        let t = r.table(80, Protocol::Tcp).expect("case exists");
        assert_eq!(t.get("x/b", "x/a"), Some(false));
        assert_eq!(t.get("y/a", "x/a"), Some(false));
        assert_eq!(t.get("x/a", "x/a"), Some(true));
        assert_eq!(t.get("x/a", "x/b"), Some(true));
    }

    #[test]
    fn peer_expectation_matches_namespace_only() {
        let mut r = Reachability::new(&pods(), &[80], &[Protocol::Udp], Family::V4, Some(false));
        r.expect_peer(&Peer::ns("y"), &Peer::ns("x"), true);
        let t = r.table(80, Protocol::Udp).expect("case exists");
        assert_eq!(t.get("y/a", "x/a"), Some(true));
        assert_eq!(t.get("y/a", "x/b"), Some(true));
        assert_eq!(t.get("x/a", "x/b"), Some(false));
    }

    #[test]
    fn diff_reports_mismatching_cells_and_ignores_loopback_on_request() {
        let exp = Reachability::new(&pods(), &[80], &[Protocol::Tcp], Family::V4, Some(true));
        let mut obs = exp.clone();
        obs.observe(
            Case {
                port: 80,
                protocol: Protocol::Tcp,
            },
            "x/a",
            "x/a",
            false,
        );
        assert!(exp.diff(&obs, true).is_none());
        obs.observe(
            Case {
                port: 80,
                protocol: Protocol::Tcp,
            },
            "x/b",
            "y/a",
            false,
        );
        let report = exp.diff(&obs, true).expect("a mismatch");
        assert!(
            report.contains("x/b -> y/a: expected reachable, observed blocked"),
            "{report}"
        );
        assert!(report.contains("incorrect 1"), "{report}");
        assert!(!report.contains("x/a -> x/a"), "{report}");
    }

    #[test]
    fn json_lists_every_observation() {
        let mut r = Reachability::new(&pods(), &[80, 81], &Protocol::ALL, Family::V4, Some(true));
        r.expect("x/a", "y/a", false);
        let cases = r.to_cases();
        assert_eq!(cases.len(), 4 * 9);
        let v = r.to_json();
        assert_eq!(v["cases"][0]["protocol"], "TCP");
        assert_eq!(v["family"], "v4");
        assert!(
            cases
                .iter()
                .any(|c| c.from == "x/a" && c.to == "y/a" && !c.reachable)
        );
    }
}
