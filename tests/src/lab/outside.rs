//! Hosts outside the cluster: `ext` behind node 0 (conformance mode) and hosts on the
//! underlay, each serving like a pod.

use std::net::IpAddr;

use super::probe::PodServer;
use super::{
    Lab, LabError, OUTSIDE_GW_V4, OUTSIDE_GW_V6, OutsideHost, PORTS, UNDERLAY_V4, UNDERLAY_V6,
    allow_ping, netns,
};

impl Lab {
    /// Adds a host outside the cluster on the underlay (two or three nodes): namespace
    /// `<lab>-<id>`, `eth0` on the bridge with `192.168.254.<host>/24` and `fd00:ffff::<host>/64`
    /// and no route to the pod CIDRs (so only masqueraded pod traffic can be answered),
    /// serving like a pod. Returns its addresses.
    pub fn add_underlay_host(&mut self, id: &str, host: u8) -> Result<Vec<IpAddr>, LabError> {
        let Some(ul) = self.underlay.clone() else {
            return Err(LabError::Config {
                reason: "an underlay host needs two or three nodes".into(),
            });
        };
        let netns_name = format!("{}-{id}", self.id);
        netns::add(&netns_name)?;
        let ips: Vec<IpAddr> = vec![
            format!("{UNDERLAY_V4}.{host}").parse().expect("IPv4"),
            format!("{UNDERLAY_V6}:{host}").parse().expect("IPv6"),
        ];
        self.outside.push(OutsideHost {
            id: id.to_string(),
            netns: netns_name.clone(),
            ips: ips.clone(),
            server: None,
        });
        let port = format!("h-{id}");
        netns::add_veth(&ul, &port, &netns_name, "eth0")?;
        netns::ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        netns::in_netns(&netns_name, || {
            netns::write_sysctl("net.ipv6.conf.eth0.accept_dad", "0")
        })??;
        for (addr, len) in [(ips[0], 24), (ips[1], 64)] {
            netns::add_addr(&netns_name, "eth0", &format!("{addr}/{len}"))?;
        }
        netns::ip(&["-n", &netns_name, "link", "set", "eth0", "up"])?;
        allow_ping(&netns_name)?;
        let server = PodServer::start(&netns_name, id, &PORTS, &self.sctp_seen)?;
        if let Some(o) = self.outside.iter_mut().find(|o| o.id == id) {
            o.server = Some(server);
        }
        self.log(format_args!(
            "lab: underlay host {id} ({netns_name}): {ips:?}"
        ));
        Ok(ips)
    }

    /// Network namespace of an outside host.
    pub fn outside_netns(&self, id: &str) -> Option<&str> {
        self.outside
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.netns.as_str())
    }

    /// Ids of the hosts outside the cluster (`ext` in conformance mode).
    pub fn outside_ids(&self) -> Vec<String> {
        self.outside.iter().map(|o| o.id.clone()).collect()
    }

    /// Addresses of an outside host.
    pub fn outside_ips(&self, id: &str) -> Option<&[IpAddr]> {
        self.outside
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.ips.as_slice())
    }

    /// Builds an outside host `id` (conformance mode): a namespace `<lab>-<id>` joined to node
    /// 0 by a veth (`ext0` in the node, `eth0` in the host), with the model's addresses
    /// (`conformance::external_addr`) on `eth0` and the node's `192.168.1.254` /
    /// `2001:db8::fe` on `ext0`, so the node reaches the host through the connected routes
    /// 192.168.1.0/24 and 2001:db8::/64; the host routes only the pod CIDRs back via the node
    /// (no default route). The host serves like a pod.
    pub(super) fn add_outside_host(&mut self, id: &str) -> Result<(), LabError> {
        let netns_name = format!("{}-{id}", self.id);
        let node = self.nodes[0].netns.clone();
        netns::add(&netns_name)?;
        let ips = vec![
            palisade_policy::conformance::external_addr(id, false),
            palisade_policy::conformance::external_addr(id, true),
        ];
        // Recorded first: teardown removes the namespace (and the veth with it).
        self.outside.push(OutsideHost {
            id: id.to_string(),
            netns: netns_name.clone(),
            ips: ips.clone(),
            server: None,
        });
        netns::add_veth(&node, "ext0", &netns_name, "eth0")?;
        for (ns, dev) in [(node.as_str(), "ext0"), (netns_name.as_str(), "eth0")] {
            netns::in_netns(ns, || {
                netns::write_sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")
            })??;
        }
        let (v4, v6) = (ips[0].to_string(), ips[1].to_string());
        netns::add_addr(&node, "ext0", &format!("{OUTSIDE_GW_V4}/24"))?;
        netns::add_addr(&node, "ext0", &format!("{OUTSIDE_GW_V6}/64"))?;
        netns::add_addr(&netns_name, "eth0", &format!("{v4}/24"))?;
        netns::add_addr(&netns_name, "eth0", &format!("{v6}/64"))?;
        netns::ip(&["-n", &node, "link", "set", "ext0", "up"])?;
        netns::ip(&["-n", &netns_name, "link", "set", "eth0", "up"])?;
        for cidr in &self.nodes[0].cni.pod_cidrs {
            let via = if cidr.contains(':') {
                OUTSIDE_GW_V6
            } else {
                OUTSIDE_GW_V4
            };
            netns::ip(&[
                "-n",
                &netns_name,
                "route",
                "add",
                cidr,
                "via",
                via,
                "dev",
                "eth0",
            ])?;
        }
        allow_ping(&netns_name)?;
        let server = PodServer::start(&netns_name, id, &PORTS, &self.sctp_seen)?;
        if let Some(o) = self.outside.iter_mut().find(|o| o.id == id) {
            o.server = Some(server);
        }
        self.log(format_args!(
            "lab: outside host {id} ({netns_name}): {ips:?}"
        ));
        Ok(())
    }
}
