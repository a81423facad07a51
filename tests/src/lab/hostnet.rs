//! Host-network pods: a process in their node's network namespace, on the node's addresses
//! (no namespace, CNI ADD or endpoint of their own), serving the model's `host_serve` ports.
//! Upstream's conformance runs host-network pods for node peers; this is their lab form.

use super::probe::PodServer;
use super::{Lab, LabError, ModelPod, PodRuntime};

impl Lab {
    pub(super) fn add_host_network_pod(&mut self, m: &ModelPod) -> Result<(), LabError> {
        let node = self.nodes.get(m.node).ok_or_else(|| LabError::Config {
            reason: format!(
                "host-network pod {} on node {}: no such node",
                m.id(),
                m.node
            ),
        })?;
        let netns = node.netns.clone();
        let ips = Lab::node_addrs(m.node).to_vec();
        let id = m.id();
        let server = PodServer::start(&netns, &id, &self.model.host_serve, &self.sctp_seen)?;
        self.log(format_args!(
            "lab: host-network pod {id} on {} ({netns}): {ips:?}",
            node.name
        ));
        self.pods.insert(
            id,
            PodRuntime {
                netns: netns.clone(),
                container_id: String::new(),
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                node: m.node,
                ips,
                server: Some(server),
                added: false,
                host_network: true,
            },
        );
        Ok(())
    }
}
