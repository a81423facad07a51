//! Whole address prefixes served by one host outside the cluster, so a test can give every
//! name it resolves an address of its own (the domain-name tests learn per address) without
//! adding thousands of addresses: the host takes the prefix as a local route (any address in
//! it is the host's own, its servers on the unspecified address answer there) and every
//! node routes the prefix to the host. Both live in namespaces the lab created and go with
//! them at teardown.

use std::net::IpAddr;

use super::{Lab, LabError, netns};

impl Lab {
    /// Makes outside host `id` (`ext`, or an underlay host) own `cidr` (v4 or v6): a `local`
    /// route in the host, and in every node a route to `cidr` via the host's address of that
    /// family.
    pub fn serve_prefix_outside(&mut self, id: &str, cidr: &str) -> Result<(), LabError> {
        let v6 = cidr.contains(':');
        let host_ns = self
            .outside_netns(id)
            .ok_or_else(|| LabError::Config {
                reason: format!("no outside host {id}"),
            })?
            .to_string();
        let via: IpAddr = self
            .outside_ips(id)
            .and_then(|ips| ips.iter().copied().find(|a| a.is_ipv6() == v6))
            .ok_or_else(|| LabError::Config {
                reason: format!("outside host {id} has no address of the family of {cidr}"),
            })?;
        let family = if v6 { "-6" } else { "-4" };
        netns::ip(&[
            "-n", &host_ns, family, "route", "add", "local", cidr, "dev", "lo",
        ])?;
        let via = via.to_string();
        for node in self
            .node_netns()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
        {
            netns::ip(&["-n", &node, family, "route", "add", cidr, "via", &via])?;
        }
        self.log(format_args!("lab: {cidr} served by outside host {id}"));
        Ok(())
    }
}
