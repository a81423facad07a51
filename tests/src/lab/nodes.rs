//! The nodes' side of a lab: their underlay (two or three nodes), their Node objects and the
//! routes to each other's pod CIDRs the agents keep (or the lab adds without agents).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Lab, LabError, Mode, ROUTE_PROTOCOL, UNDERLAY_V4, UNDERLAY_V6, canonical_cidr, model, netns,
    write_atomic,
};

impl Lab {
    /// The uplink of node `i` (its link to the underlay bridge, in the node's namespace):
    /// `eth0`; `None` with one node (no underlay) or no such node.
    pub fn node_uplink(&self, i: usize) -> Option<&'static str> {
        (self.underlay.is_some() && i < self.nodes.len()).then_some("eth0")
    }

    /// Node `i`'s underlay addresses (its InternalIPs): `192.168.254.<i+1>`, `fd00:ffff::<i+1>`.
    pub fn node_addrs(i: usize) -> [IpAddr; 2] {
        [
            format!("{UNDERLAY_V4}.{}", i + 1).parse().expect("IPv4"),
            format!("{UNDERLAY_V6}:{}", i + 1).parse().expect("IPv6"),
        ]
    }

    /// Pod CIDRs of node `i` (what its CNI plugin allocates from).
    pub fn node_pod_cidrs(&self, i: usize) -> Option<&[String]> {
        self.nodes.get(i).map(|n| n.cni.pod_cidrs.as_slice())
    }

    /// The Node objects the lab writes for the agents (multi-node, enforcing): name,
    /// spec.podCIDRs, status.addresses (InternalIP of each family, Hostname).
    pub fn node_objects(&self) -> Vec<serde_json::Value> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let [v4, v6] = Self::node_addrs(i);
                let labels = self.model.node_labels.get(i).cloned().unwrap_or_default();
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": n.name, "labels": labels},
                    "spec": {"podCIDR": n.cni.pod_cidrs.first(), "podCIDRs": n.cni.pod_cidrs},
                    "status": {"addresses": [
                        {"type": "InternalIP", "address": v4.to_string()},
                        {"type": "InternalIP", "address": v6.to_string()},
                        {"type": "Hostname", "address": n.name},
                    ]},
                })
            })
            .collect()
    }

    /// Replaces the Node objects in the manifests directory (`01-nodes.yaml`); the agents pick
    /// them up like any manifest change.
    pub fn write_nodes(&self, nodes: &[serde_json::Value]) -> Result<(), LabError> {
        let docs: Vec<Value> = nodes
            .iter()
            .map(|n| {
                serde_json::to_value(n).map_err(|e| LabError::Manifest {
                    what: "Node".into(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        write_atomic(
            &self.manifests_dir().join("01-nodes.yaml"),
            &model::join_documents(&docs),
        )
    }

    /// Palisade's routes (protocol 80) in node `i`, as `(destination, gateway)` pairs of both
    /// families, sorted.
    pub fn palisade_routes(&self, i: usize) -> Result<Vec<(String, String)>, LabError> {
        let ns = &self.nodes[i].netns;
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let text = netns::ip(&["-n", ns, fam, "route", "show", "proto", ROUTE_PROTOCOL])?;
            for line in text.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let Some(p) = w.iter().position(|x| *x == "via") {
                    out.push((w[0].to_string(), w[p + 1].to_string()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// For every node: the routes the agents should hold, from the default Node objects
    /// (every other node's pod CIDRs via its underlay address of the same family).
    pub fn expected_pod_routes(&self) -> Vec<Vec<(String, String)>> {
        (0..self.nodes.len())
            .map(|i| {
                let mut want: Vec<(String, String)> = (0..self.nodes.len())
                    .filter(|&j| j != i)
                    .flat_map(|j| {
                        let [v4, v6] = Self::node_addrs(j);
                        self.nodes[j].cni.pod_cidrs.iter().map(move |c| {
                            let via = if c.contains(':') { v6 } else { v4 };
                            (canonical_cidr(c), via.to_string())
                        })
                    })
                    .collect();
                want.sort();
                want
            })
            .collect()
    }

    /// Waits (bounded by the sync timeout) until node `i`'s Palisade routes are `want[i]`,
    /// for every node.
    pub fn wait_pod_routes(&self, want: &[Vec<(String, String)>]) -> Result<(), LabError> {
        let start = Instant::now();
        let limit = self.config.sync_timeout;
        for (i, w) in want.iter().enumerate() {
            loop {
                let got = self.palisade_routes(i)?;
                if &got == w {
                    break;
                }
                if start.elapsed() > limit {
                    let status = self
                        .agents
                        .get(i)
                        .map(|a| a.status().unwrap_or_else(|e| e.to_string()))
                        .unwrap_or_default();
                    return Err(LabError::Timeout {
                        what: format!(
                            "routes of node {}: want {w:?}, have {got:?}; agent status: {status}",
                            self.nodes[i].name
                        ),
                        after: limit,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The underlay: a bridge `br0` in namespace `<id>-ul`; per node a veth `eth0` (node) /
    /// `n<i>` (bridge port). Without agents the lab routes the pod CIDRs itself; with agents
    /// the agents do (from the Node objects).
    pub(super) fn build_underlay(&mut self) -> Result<(), LabError> {
        let ul = format!("{}-ul", self.id);
        netns::add(&ul)?;
        // Recorded first: teardown removes it (and the bridge ports with it).
        self.underlay = Some(ul.clone());
        netns::ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        netns::ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].netns.clone();
            let port = format!("n{i}");
            netns::add_veth(&ul, &port, &ns, "eth0")?;
            netns::ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
            let [v4, v6] = Self::node_addrs(i);
            netns::add_addr(&ns, "eth0", &format!("{v4}/24"))?;
            netns::add_addr(&ns, "eth0", &format!("{v6}/64"))?;
            netns::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        if self.mode == Mode::Enforcing {
            return Ok(());
        }
        for (i, want) in self.expected_pod_routes().into_iter().enumerate() {
            let ns = self.nodes[i].netns.clone();
            for (cidr, via) in want {
                netns::ip(&["-n", &ns, "route", "add", &cidr, "via", &via, "dev", "eth0"])?;
            }
        }
        Ok(())
    }
}
