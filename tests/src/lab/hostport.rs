//! The CNI `portmap` plugin's hostPort data path in the lab: the DNAT rules portmap installs
//! for a container's `hostPort`, laid out as portmap lays them out (table `nat`, per family),
//! loaded into the pod's node namespace with `iptables-restore --noflush` (never the machine's
//! own namespace):
//! - `PREROUTING` and `OUTPUT` jump to `CNI-HOSTPORT-DNAT` for destinations of type `LOCAL`
//!   (every address of the node);
//! - `CNI-HOSTPORT-DNAT`: per container, protocol and host ports, a jump to `CNI-DN-<hash>`;
//! - `CNI-DN-<hash>`: `DNAT --to-destination <pod ip>:<container port>`.
//!
//! portmap's hairpin masquerade (`CNI-HOSTPORT-SETMARK` / `-MASQ`) is left out, as kube-proxy's
//! masquerade is in [`super::kubeproxy`]: the backend sees the client's own address.

use std::process::Command;

use super::kubeproxy::chain_hash;
use super::netns::{run, run_with_input};
use super::reachability::Protocol;
use super::{Lab, LabError};

const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";

impl Lab {
    /// Maps `host_port` (`protocol`) on every address of pod `pod`'s node to `container_port`
    /// of the pod, in each family the pod has an address of, as portmap does for a container
    /// port with `hostPort`. The rules go with the node's namespace.
    pub fn add_host_port(
        &self,
        pod: &str,
        protocol: Protocol,
        host_port: u16,
        container_port: u16,
    ) -> Result<(), LabError> {
        let runtime = self.pods.get(pod).ok_or_else(|| LabError::Config {
            reason: format!("no pod {pod}"),
        })?;
        let node = &self.nodes[runtime.node].netns;
        let proto = protocol.as_str().to_ascii_lowercase();
        for ip in &runtime.ips {
            let (save, restore, dest) = if ip.is_ipv4() {
                (
                    "iptables-save",
                    "iptables-restore",
                    format!("{ip}:{container_port}"),
                )
            } else {
                (
                    "ip6tables-save",
                    "ip6tables-restore",
                    format!("[{ip}]:{container_port}"),
                )
            };
            let existing =
                run(Command::new("ip").args(["netns", "exec", node, save, "-t", "nat"]))?;
            let chain = format!(
                "CNI-DN-{}",
                chain_hash(&format!("{pod}/{proto}/{host_port}"))
            );
            let mut input = String::from("*nat\n");
            if !existing.contains(&format!(":{DNAT_CHAIN} ")) {
                input.push_str(&format!(":{DNAT_CHAIN} - [0:0]\n"));
                for hook in ["PREROUTING", "OUTPUT"] {
                    input.push_str(&format!(
                        "-A {hook} -m comment --comment \"CNI portfwd requiring masquerade\" -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}\n"
                    ));
                }
            }
            input.push_str(&format!(":{chain} - [0:0]\n"));
            input.push_str(&format!(
                "-A {DNAT_CHAIN} -p {proto} -m comment --comment \"dnat name: lab id: {pod}\" -m multiport --dports {host_port} -j {chain}\n"
            ));
            input.push_str(&format!(
                "-A {chain} -p {proto} -m {proto} --dport {host_port} -j DNAT --to-destination {dest}\n"
            ));
            input.push_str("COMMIT\n");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", node, restore, "--noflush"]);
            run_with_input(cmd, &input)?;
        }
        self.log(format_args!(
            "lab: hostPort {host_port}/{proto} on node {} -> {pod}:{container_port}",
            self.nodes[runtime.node].name
        ));
        Ok(())
    }
}
