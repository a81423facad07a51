//! The ClusterNetworkPolicy conformance suite as data (`policy/conformance/
//! cluster-network-policy.yaml`, see its header): the model, every upstream test's objects,
//! the edits each subtest makes, and the connectivity each asserts. Public so that every tier
//! replays the same data: tier 0 through the reference evaluator and the compiled lookups,
//! the lab through real packets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde_json::Value;

use super::ClusterNetworkPolicy;
use crate::manifest::NAMESPACE_NAME_LABEL;
use crate::model::{Cluster, Labels, NamedPort, NodeInfo, PodInfo, Protocol};

/// The data file, compiled in.
pub const SUITE_YAML: &str = include_str!("../../conformance/cluster-network-policy.yaml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub model: SuiteModel,
    pub tests: Vec<SuiteTest>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuiteModel {
    pub namespaces: Vec<SuiteNamespace>,
    /// Served by every pod that is not host-network.
    pub serve: Serve,
    pub named_ports: Vec<SuitePort>,
    pub pods: Vec<SuitePod>,
    /// Served by every host-network pod, on its node's addresses.
    pub host_serve: Serve,
    pub host_named_ports: Vec<SuitePort>,
    pub host_network_pods: Vec<SuitePod>,
    pub nodes: Vec<SuiteNode>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteNamespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    pub sctp: Vec<u16>,
}

impl Serve {
    /// Every (protocol, port) served.
    pub fn all(&self) -> Vec<(Protocol, u16)> {
        let mut v = Vec::new();
        for (proto, ports) in [
            (Protocol::Tcp, &self.tcp),
            (Protocol::Udp, &self.udp),
            (Protocol::Sctp, &self.sctp),
        ] {
            v.extend(ports.iter().map(|p| (proto, *p)));
        }
        v
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuitePort {
    pub name: String,
    pub protocol: String,
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuitePod {
    pub namespace: String,
    pub name: String,
    /// Index of the node it runs on.
    pub node: usize,
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteNode {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteTest {
    /// The upstream test's short name.
    pub name: String,
    /// The upstream file it expresses (`conformance/tests/...`).
    pub upstream: String,
    /// An upstream experimental feature it needs, if any.
    #[serde(default)]
    pub feature: Option<String>,
    /// Multi-document YAML.
    pub objects: String,
    pub steps: Vec<SuiteStep>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteStep {
    pub name: String,
    #[serde(default)]
    pub edits: Vec<Edit>,
    #[serde(deserialize_with = "probes")]
    pub probes: Vec<Probe>,
}

/// One edit of an object (see the data file's header).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// `Kind/name` or `Kind/namespace/name`.
    pub object: String,
    #[serde(default)]
    pub swap: Option<String>,
    #[serde(default)]
    pub rules: Option<[usize; 2]>,
    #[serde(default)]
    pub set: Option<String>,
    #[serde(default)]
    pub insert: Option<String>,
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub delete: Option<bool>,
}

/// One connectivity assertion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Client and server pod names.
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Expected: the connection completes (else it is dropped).
    pub connects: bool,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{} {}",
            self.from,
            self.to,
            self.protocol.k8s_name().to_lowercase(),
            self.port,
            if self.connects { "connects" } else { "blocked" }
        )
    }
}

impl std::str::FromStr for Probe {
    type Err = String;

    /// `<from> -> <to> <tcp|udp|sctp>/<port> <connects|blocked>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("probe {s:?}: expected `<from> -> <to> <proto>/<port> connects|blocked`");
        let w: Vec<&str> = s.split_whitespace().collect();
        let [from, "->", to, pp, outcome] = w.as_slice() else {
            return Err(bad());
        };
        let (proto, port) = pp.split_once('/').ok_or_else(bad)?;
        let protocol =
            Protocol::from_k8s(&proto.to_ascii_uppercase()).ok_or_else(|| bad() + " (protocol)")?;
        let port: u16 = port.parse().map_err(|_| bad() + " (port)")?;
        let connects = match *outcome {
            "connects" => true,
            "blocked" => false,
            _ => return Err(bad()),
        };
        Ok(Probe {
            from: from.to_string(),
            to: to.to_string(),
            protocol,
            port,
            connects,
        })
    }
}

fn probes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Probe>, D::Error> {
    let lines: Vec<String> = Vec::deserialize(d)?;
    lines
        .iter()
        .map(|l| l.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// YAML 1.2 booleans, as the agent reads manifests (a namespace `y` stays a string).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// The suite. Panics when the compiled-in data does not parse (a test asserts it does).
pub fn suite() -> Suite {
    serde_saphyr::from_str_with_options(SUITE_YAML, yaml_options())
        .unwrap_or_else(|e| panic!("policy/conformance/cluster-network-policy.yaml: {e}"))
}

impl Suite {
    /// Every probe of every step.
    pub fn assertions(&self) -> usize {
        self.tests
            .iter()
            .flat_map(|t| &t.steps)
            .map(|s| s.probes.len())
            .sum()
    }

    /// The pod (or host-network pod) called `name`.
    pub fn pod(&self, name: &str) -> Option<&SuitePod> {
        self.model
            .pods
            .iter()
            .chain(&self.model.host_network_pods)
            .find(|p| p.name == name)
    }

    pub fn is_host_network(&self, name: &str) -> bool {
        self.model.host_network_pods.iter().any(|p| p.name == name)
    }

    /// The model as a policy `Cluster` (no policies): pods get `pod_ips(name)`, host-network
    /// pods their node's `node_ips(index)`, nodes their labels and `node_ips`.
    pub fn cluster(
        &self,
        pod_ips: &dyn Fn(&str) -> Vec<IpAddr>,
        node_ips: &dyn Fn(usize) -> Vec<IpAddr>,
    ) -> Cluster {
        let mut c = Cluster::default();
        for ns in &self.model.namespaces {
            let mut labels = ns.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.into(), ns.name.clone());
            c.namespaces.insert(ns.name.clone(), labels);
        }
        let ports = |list: &[SuitePort]| -> Vec<NamedPort> {
            list.iter()
                .map(|p| NamedPort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: Protocol::from_k8s(&p.protocol).unwrap_or_else(|| {
                        panic!("named port {}: protocol {:?}", p.name, p.protocol)
                    }),
                })
                .collect()
        };
        for p in &self.model.pods {
            c.pods.push(PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                ips: pod_ips(&p.name),
                ports: ports(&self.model.named_ports),
                host_network: false,
            });
        }
        for p in &self.model.host_network_pods {
            c.pods.push(PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                ips: node_ips(p.node),
                ports: ports(&self.model.host_named_ports),
                host_network: true,
            });
        }
        for (i, n) in self.model.nodes.iter().enumerate() {
            c.nodes.push(NodeInfo {
                name: n.name.clone(),
                labels: n.labels.clone(),
                addrs: node_ips(i),
            });
        }
        c
    }
}

/// A test's objects as they stand after the steps applied so far.
#[derive(Clone, Debug)]
pub struct Replay {
    objects: Vec<Value>,
}

fn kind_and_name(v: &Value) -> String {
    let s = |k: &str| {
        v.get("metadata")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    let ns = s("namespace");
    if ns.is_empty() {
        format!("{kind}/{}", s("name"))
    } else {
        format!("{kind}/{ns}/{}", s("name"))
    }
}

/// The value at `path` (`a.b[2].c`) under `v`.
fn at_path<'v>(v: &'v mut Value, path: &str) -> Result<&'v mut Value, String> {
    let mut cur = v;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => {
                let i: usize = rest
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| format!("bad index in {part:?}"))?;
                (k, Some(i))
            }
            None => (part, None),
        };
        cur = cur
            .get_mut(key)
            .ok_or_else(|| format!("no field {key:?} (path {path})"))?;
        if let Some(i) = index {
            cur = cur
                .get_mut(i)
                .ok_or_else(|| format!("no entry {i} in {key:?} (path {path})"))?;
        }
    }
    Ok(cur)
}

impl Replay {
    pub fn new(test: &SuiteTest) -> Result<Self, String> {
        let mut objects: Vec<Value> =
            serde_saphyr::from_multiple_with_options(&test.objects, yaml_options())
                .map_err(|e| format!("{}: objects: {e}", test.name))?;
        objects.retain(|v| !v.is_null());
        Ok(Replay { objects })
    }

    /// Applies a step's edits, in order.
    pub fn apply(&mut self, step: &SuiteStep) -> Result<(), String> {
        for e in &step.edits {
            self.edit(e)
                .map_err(|m| format!("step {:?}: edit of {}: {m}", step.name, e.object))?;
        }
        Ok(())
    }

    fn edit(&mut self, e: &Edit) -> Result<(), String> {
        let i = self
            .objects
            .iter()
            .position(|o| kind_and_name(o) == e.object)
            .ok_or("no such object")?;
        if e.delete == Some(true) {
            self.objects.remove(i);
            return Ok(());
        }
        let obj = &mut self.objects[i];
        match (&e.swap, &e.set, &e.insert) {
            (Some(list), None, None) => {
                let [a, b] = e.rules.ok_or("swap needs rules: [i, j]")?;
                let seq = at_path(obj, list)?
                    .as_array_mut()
                    .ok_or("swap: not a list")?;
                if a.max(b) >= seq.len() {
                    return Err(format!("swap {a}, {b}: the list has {} entries", seq.len()));
                }
                seq.swap(a, b);
            }
            (None, Some(path), None) => {
                *at_path(obj, path)? = e.value.clone().ok_or("set needs a value")?;
            }
            (None, None, Some(list)) => {
                let index = e.index.ok_or("insert needs an index")?;
                let seq = at_path(obj, list)?
                    .as_array_mut()
                    .ok_or("insert: not a list")?;
                if index > seq.len() {
                    return Err(format!(
                        "insert at {index}: the list has {} entries",
                        seq.len()
                    ));
                }
                seq.insert(index, e.value.clone().ok_or("insert needs a value")?);
            }
            _ => return Err("needs exactly one of swap, set, insert, delete".into()),
        }
        Ok(())
    }

    /// The objects, `<pod-ips:NAME>` list entries replaced by NAME's host CIDRs.
    pub fn objects(&self, pod_ips: &dyn Fn(&str) -> Vec<IpAddr>) -> Vec<Value> {
        fn expand(v: &mut Value, pod_ips: &dyn Fn(&str) -> Vec<IpAddr>) {
            match v {
                Value::Array(seq) => {
                    let mut out = Vec::with_capacity(seq.len());
                    for mut item in std::mem::take(seq) {
                        let name = item
                            .as_str()
                            .and_then(|s| s.strip_prefix("<pod-ips:"))
                            .and_then(|s| s.strip_suffix('>'))
                            .map(str::to_string);
                        match name {
                            Some(n) => out.extend(pod_ips(&n).into_iter().map(|a| {
                                let len = if a.is_ipv4() { 32 } else { 128 };
                                Value::String(format!("{a}/{len}"))
                            })),
                            None => {
                                expand(&mut item, pod_ips);
                                out.push(item);
                            }
                        }
                    }
                    *seq = out;
                }
                Value::Object(m) => m.values_mut().for_each(|v| expand(v, pod_ips)),
                _ => {}
            }
        }
        let mut objects = self.objects.clone();
        objects.iter_mut().for_each(|o| expand(o, pod_ips));
        objects
    }

    /// The objects as multi-document YAML (what the lab writes for the agents).
    pub fn yaml(&self, pod_ips: &dyn Fn(&str) -> Vec<IpAddr>) -> String {
        let mut out = String::new();
        for o in self.objects(pod_ips) {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&o).unwrap_or_default());
        }
        out
    }

    /// `cluster` with the NetworkPolicies and ClusterNetworkPolicies of the objects.
    pub fn apply_to(
        &self,
        mut cluster: Cluster,
        pod_ips: &dyn Fn(&str) -> Vec<IpAddr>,
    ) -> Result<Cluster, String> {
        for o in self.objects(pod_ips) {
            let what = kind_and_name(&o);
            match o.get("kind").and_then(Value::as_str) {
                Some("NetworkPolicy") => cluster.policies.push(
                    serde_json::from_value::<NetworkPolicy>(o)
                        .map_err(|e| format!("{what}: {e}"))?,
                ),
                Some("ClusterNetworkPolicy") => cluster.cluster_policies.push(
                    serde_json::from_value::<ClusterNetworkPolicy>(o)
                        .map_err(|e| format!("{what}: {e}"))?,
                ),
                _ => return Err(format!("{what}: a kind the suite does not use")),
            }
        }
        Ok(cluster)
    }
}

/// Per test: how many of its assertions passed (for the report every replay prints).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: Vec<String>,
    /// Per test: (passed, total).
    pub per_test: BTreeMap<String, (usize, usize)>,
}

impl Tally {
    pub fn record(&mut self, test: &str, what: impl fmt::Display, ok: bool) {
        let e = self.per_test.entry(test.to_string()).or_default();
        e.1 += 1;
        if ok {
            e.0 += 1;
            self.passed += 1;
        } else {
            self.failed.push(format!("{test}: {what}"));
        }
    }

    pub fn total(&self) -> usize {
        self.passed + self.failed.len()
    }
}
