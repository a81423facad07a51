//! The upstream NetworkPolicy conformance model: namespaces x, y, z (labels `ns=<name>` and
//! `kubernetes.io/metadata.name=<name>`), each with pods a, b, c (label `pod=<name>`), every
//! pod serving TCP and UDP on 80 and 81 (named ports `serve-<port>-<proto>`).
//!
//! User manifests may hold Namespace and Pod objects: they replace the labels of model objects
//! of the same name, or add namespaces and pods. Everything else (NetworkPolicies, ...) is
//! passed to the agent untouched.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::LabError;
use super::reachability::Protocol;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelNamespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Index of the node the pod runs on.
    pub node: usize,
    /// Named container ports its Pod object declares.
    pub ports: Vec<ModelPort>,
    /// Addresses the CNI plugin is asked for (`runtimeConfig.ips`); empty = any.
    pub requested_ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: no network namespace or CNI ADD of its own; its servers (the
    /// model's `host_serve` ports) run in its node's namespace, on the node's addresses.
    pub host_network: bool,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// The default model's ports: `serve-<port>-<proto>` for TCP and UDP on 80 and 81.
pub fn default_ports() -> Vec<ModelPort> {
    let mut v = Vec::new();
    for port in PORTS {
        for protocol in Protocol::ALL {
            v.push(ModelPort {
                name: port_name(port, protocol),
                port,
                protocol,
            });
        }
    }
    v
}

impl ModelPod {
    /// `ns/name`, the key of the truth tables.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub namespaces: Vec<ModelNamespace>,
    pub pods: Vec<ModelPod>,
    pub nodes: usize,
    /// TCP and UDP ports every pod's servers listen on (SCTP probes reach any port).
    pub serve: Vec<u16>,
    /// The same for host-network pods, in their node's namespace.
    pub host_serve: Vec<u16>,
    /// Labels of the Node objects (by node index; none when absent).
    pub node_labels: Vec<Labels>,
}

/// Kubernetes node name of node `i` (what `spec.nodeName` and the agent's `--node-name` say).
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Named port of the model's servers: `serve-80-tcp`.
pub fn port_name(port: u16, protocol: Protocol) -> String {
    format!("serve-{port}-{}", protocol.as_str().to_ascii_lowercase())
}

#[derive(Deserialize, Default)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<Labels>,
}

impl Model {
    /// The upstream model; pods are spread over the nodes round robin (x/a on n0, x/b on n1,
    /// ...), so with two nodes both same-node and cross-node pairs exist.
    pub fn upstream(nodes: usize) -> Model {
        let nodes = nodes.max(1);
        let mut m = Model {
            namespaces: Vec::new(),
            pods: Vec::new(),
            nodes,
            serve: PORTS.to_vec(),
            host_serve: Vec::new(),
            node_labels: Vec::new(),
        };
        for ns in NAMESPACES {
            m.namespaces.push(default_namespace(ns));
            for pod in POD_NAMES {
                let node = m.pods.len() % nodes;
                m.pods.push(ModelPod {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    labels: Labels::from([("pod".to_string(), pod.to_string())]),
                    node,
                    ports: default_ports(),
                    requested_ips: Vec::new(),
                    host_network: false,
                });
            }
        }
        m
    }

    /// The policy crate's conformance model (`palisade_policy::conformance::model_cluster`):
    /// the same namespaces, pods and labels, every pod at its fixed addresses
    /// (`conformance::pod_addr`) with the named ports the model gives it (`serve-*` for TCP,
    /// UDP and SCTP, and `web`, which differs per pod). One node.
    pub fn conformance() -> Model {
        let cluster = palisade_policy::conformance::model_cluster();
        let mut m = Model {
            namespaces: Vec::new(),
            pods: Vec::new(),
            nodes: 1,
            serve: PORTS.to_vec(),
            host_serve: Vec::new(),
            node_labels: Vec::new(),
        };
        for (name, labels) in &cluster.namespaces {
            m.namespaces.push(ModelNamespace {
                name: name.clone(),
                labels: labels.clone(),
            });
        }
        for p in &cluster.pods {
            let ports = p
                .ports
                .iter()
                .map(|np| ModelPort {
                    name: np.name.clone(),
                    port: np.port,
                    protocol: match np.protocol {
                        palisade_policy::Protocol::Tcp => Protocol::Tcp,
                        palisade_policy::Protocol::Udp => Protocol::Udp,
                        palisade_policy::Protocol::Sctp => Protocol::Sctp,
                    },
                })
                .collect();
            m.pods.push(ModelPod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                node: 0,
                ports,
                requested_ips: p.ips.clone(),
                host_network: false,
            });
        }
        m
    }

    /// The ClusterNetworkPolicy conformance model (`palisade_policy::cnp::conformance`): its
    /// namespaces, pods (with their nodes, served ports and named ports), host-network pods
    /// and node labels, on two nodes.
    pub fn cluster_network_policy() -> Model {
        let suite = palisade_policy::cnp::conformance::suite();
        let sm = &suite.model;
        let named = |list: &[palisade_policy::cnp::conformance::SuitePort]| -> Vec<ModelPort> {
            list.iter()
                .map(|p| ModelPort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: match p.protocol.as_str() {
                        "UDP" => Protocol::Udp,
                        "SCTP" => Protocol::Sctp,
                        _ => Protocol::Tcp,
                    },
                })
                .collect()
        };
        let tcp_udp = |s: &palisade_policy::cnp::conformance::Serve| -> Vec<u16> {
            let mut v: Vec<u16> = s.tcp.iter().chain(&s.udp).copied().collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut m = Model {
            namespaces: sm
                .namespaces
                .iter()
                .map(|n| {
                    let mut labels = n.labels.clone();
                    labels.insert(NS_NAME_LABEL.into(), n.name.clone());
                    ModelNamespace {
                        name: n.name.clone(),
                        labels,
                    }
                })
                .collect(),
            pods: Vec::new(),
            nodes: sm.nodes.len(),
            serve: tcp_udp(&sm.serve),
            host_serve: tcp_udp(&sm.host_serve),
            node_labels: sm.nodes.iter().map(|n| n.labels.clone()).collect(),
        };
        for (list, host_network, ports) in [
            (&sm.pods, false, named(&sm.named_ports)),
            (&sm.host_network_pods, true, named(&sm.host_named_ports)),
        ] {
            for p in list {
                m.pods.push(ModelPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    node: p.node,
                    ports: ports.clone(),
                    requested_ips: Vec::new(),
                    host_network,
                });
            }
        }
        m
    }

    pub fn pod(&self, id: &str) -> Option<&ModelPod> {
        self.pods.iter().find(|p| p.id() == id)
    }

    pub fn pod_ids(&self) -> Vec<String> {
        self.pods.iter().map(ModelPod::id).collect()
    }

    /// Applies the Namespace and Pod objects among `docs` (see the module doc).
    pub fn overlay(&mut self, docs: &[Value]) -> Result<(), LabError> {
        for doc in docs {
            let kind = kind_of(doc);
            if kind != "Namespace" && kind != "Pod" {
                continue;
            }
            let meta: Meta = doc
                .get("metadata")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| LabError::Manifest {
                    what: format!("{kind} metadata"),
                    reason: e.to_string(),
                })?
                .unwrap_or_default();
            let name = meta.name.ok_or_else(|| LabError::Manifest {
                what: kind.to_string(),
                reason: "metadata.name is missing".into(),
            })?;
            if kind == "Namespace" {
                let mut labels = meta.labels.unwrap_or_default();
                labels.insert(NS_NAME_LABEL.into(), name.clone());
                match self.namespaces.iter_mut().find(|n| n.name == name) {
                    Some(n) => n.labels = labels,
                    None => self.namespaces.push(ModelNamespace { name, labels }),
                }
                continue;
            }
            let namespace = meta.namespace.unwrap_or_else(|| "default".into());
            if !self.namespaces.iter().any(|n| n.name == namespace) {
                self.namespaces.push(default_namespace(&namespace));
            }
            let node =
                match doc
                    .get("spec")
                    .and_then(|s| s.get("nodeName"))
                    .and_then(Value::as_str)
                {
                    Some(n) => Some((0..self.nodes).find(|&i| node_name(i) == n).ok_or_else(
                        || LabError::Manifest {
                            what: format!("Pod {namespace}/{name}"),
                            reason: format!(
                                "spec.nodeName {n:?} is not a lab node (n0..n{})",
                                self.nodes - 1
                            ),
                        },
                    )?),
                    None => None,
                };
            match self
                .pods
                .iter_mut()
                .find(|p| p.namespace == namespace && p.name == name)
            {
                Some(p) => {
                    if let Some(l) = meta.labels {
                        p.labels = l;
                    }
                    if let Some(n) = node {
                        p.node = n;
                    }
                }
                None => {
                    let node = node.unwrap_or(self.pods.len() % self.nodes);
                    self.pods.push(ModelPod {
                        namespace,
                        name,
                        labels: meta.labels.unwrap_or_default(),
                        node,
                        ports: default_ports(),
                        requested_ips: Vec::new(),
                        host_network: false,
                    });
                }
            }
        }
        Ok(())
    }

    /// The model as a multi-document YAML file for the agent's directory source. Pods with
    /// known addresses carry `status.podIPs` (agents of other nodes need them).
    pub fn to_yaml(&self, ips: &BTreeMap<String, Vec<IpAddr>>) -> String {
        let mut docs = Vec::new();
        for ns in &self.namespaces {
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": ns.labels},
            }));
        }
        for pod in &self.pods {
            let ports: Vec<_> = pod
                .ports
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "containerPort": p.port,
                        "protocol": p.protocol.as_str(),
                    })
                })
                .collect();
            let mut doc = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
                "spec": {
                    "nodeName": node_name(pod.node),
                    "containers": [{"name": "server", "image": "palisade-lab/server", "ports": ports}],
                },
            });
            if pod.host_network {
                doc["spec"]["hostNetwork"] = json!(true);
            }
            if let Some(addrs) = ips.get(&pod.id()).filter(|a| !a.is_empty()) {
                let list: Vec<_> = addrs.iter().map(|a| json!({"ip": a.to_string()})).collect();
                doc["status"] = json!({
                    "phase": "Running",
                    "podIP": addrs[0].to_string(),
                    "podIPs": list,
                });
            }
            docs.push(doc);
        }
        let mut out = String::from("# Written by the Palisade lab: the upstream netpol model.\n");
        for d in docs {
            out.push_str("---\n");
            // A JSON value always serializes to YAML.
            out.push_str(&serde_saphyr::to_string(&d).unwrap_or_default());
        }
        out
    }
}

fn default_namespace(name: &str) -> ModelNamespace {
    ModelNamespace {
        name: name.to_string(),
        labels: Labels::from([
            ("ns".to_string(), name.to_string()),
            (NS_NAME_LABEL.to_string(), name.to_string()),
        ]),
    }
}

pub fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// True for objects the lab folds into the model instead of passing them on.
pub fn is_model_object(doc: &Value) -> bool {
    matches!(kind_of(doc), "Namespace" | "Pod")
}

/// Splits a multi-document YAML text; empty documents are dropped.
pub fn split_documents(what: &str, text: &str) -> Result<Vec<Value>, LabError> {
    // YAML 1.2 booleans, as the agent's manifest parser reads them: the upstream model's
    // namespace `y` (and label values such as `on`) stay strings in an untyped tree.
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
        LabError::Manifest {
            what: what.to_string(),
            reason: e.to_string(),
        }
    })
}

/// Joins documents back into one YAML text.
pub fn join_documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(d).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_model_has_nine_pods_with_labels() {
        let m = Model::upstream(1);
        assert_eq!(m.pod_ids().len(), 9);
        assert_eq!(m.pod_ids()[0], "x/a");
        assert_eq!(m.namespaces[1].labels["ns"], "y");
        assert_eq!(m.namespaces[1].labels[NS_NAME_LABEL], "y");
        assert_eq!(m.pods[4].labels["pod"], "b");
    }

    #[test]
    fn conformance_model_has_fixed_addresses_and_per_pod_web_ports() {
        let m = Model::conformance();
        assert_eq!(m.pod_ids().len(), 9);
        let yb = m.pod("y/b").expect("y/b");
        assert_eq!(
            yb.requested_ips,
            vec![
                "10.0.1.11".parse::<IpAddr>().expect("ip"),
                "fd00::1:11".parse::<IpAddr>().expect("ip")
            ]
        );
        let web = |id: &str| {
            let p = m.pod(id).expect("pod");
            let w = p.ports.iter().find(|p| p.name == "web").expect("web port");
            (w.port, w.protocol)
        };
        assert_eq!(web("x/a"), (80, Protocol::Tcp));
        assert_eq!(web("x/b"), (81, Protocol::Tcp));
        assert_eq!(web("z/c"), (80, Protocol::Udp));
        assert!(yb.ports.iter().any(|p| p.name == "serve-81-sctp"));
        let text = m.to_yaml(&BTreeMap::new());
        assert!(
            text.contains("serve-80-sctp") && text.contains("name: web"),
            "{text}"
        );
    }

    #[test]
    fn two_nodes_spread_pods_round_robin() {
        let m = Model::upstream(2);
        assert_eq!(m.pods[0].node, 0);
        assert_eq!(m.pods[1].node, 1);
        assert_eq!(m.pods[2].node, 0);
    }

    #[test]
    fn overlay_replaces_labels_and_adds_pods() {
        let mut m = Model::upstream(1);
        let docs = split_documents(
            "test",
            "kind: Namespace\nmetadata: {name: y, labels: {team: blue}}\n---\n\
             kind: Pod\nmetadata: {name: d, namespace: x, labels: {pod: d}}\n---\n\
             kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n",
        )
        .expect("valid yaml");
        m.overlay(&docs).expect("overlay");
        let y = m.namespaces.iter().find(|n| n.name == "y").expect("y");
        assert_eq!(y.labels.get("ns"), None);
        assert_eq!(y.labels["team"], "blue");
        assert_eq!(y.labels[NS_NAME_LABEL], "y");
        assert!(m.pod("x/d").is_some());
        assert_eq!(m.pods.len(), 10);
    }

    #[test]
    fn yaml_carries_named_ports_node_and_pod_ips() {
        let m = Model::upstream(1);
        let ips = BTreeMap::from([("x/a".to_string(), vec!["10.244.0.2".parse().expect("ip")])]);
        let text = m.to_yaml(&ips);
        let docs = split_documents("model", &text).expect("valid yaml");
        assert_eq!(docs.len(), 12);
        let xa = &docs[3];
        assert_eq!(xa["spec"]["nodeName"], "n0");
        assert_eq!(
            xa["spec"]["containers"][0]["ports"][0]["name"],
            "serve-80-tcp"
        );
        assert_eq!(xa["status"]["podIPs"][0]["ip"], "10.244.0.2");
        assert!(docs[4].get("status").is_none());
    }
}
