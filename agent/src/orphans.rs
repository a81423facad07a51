//! Pod interfaces the kernel knows but no valid endpoint record names ("orphans"): a record
//! deleted, truncated or corrupted while its pod lives on.
//!
//! The kernel still holds what the agent pinned for the pod: its `pal_ep_v1` entry (keyed by
//! the host-side ifindex, holding the pod's addresses and endpoint id) and its TCX links. The
//! agent used to remove both for an interface without a record, leaving the pod unfiltered
//! and reporting nothing. Now, for an interface that still exists:
//! 1. it stays attached and isolated both ways with nothing allowed (only the node reaches
//!    it: the datapath lets node addresses through), under its old endpoint id;
//! 2. it is reported (unhealthy) naming the interface and the record's path;
//! 3. it is recovered when the node's own state says whose it is: the pinned addresses, the
//!    IPAM allocation of those addresses (container id and interface name: the record's
//!    key), and the Pod whose `status.podIPs` are those addresses (its name). A new record
//!    is written, and the pod gets its policy again.
//!
//! An interface that no longer exists is cleaned up as before (the pod is gone).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_common::endpoint::{EP_HAS_V4, EP_HAS_V6, EndpointInfo};

use crate::endpoints::EndpointRecord;
use crate::source::Snapshot;
use crate::status::Problem;

/// `netns` and `mac` of a recovered record: the host side cannot see them.
pub const UNKNOWN_NETNS: &str = "/var/run/netns/palisade-recovered-unknown";
pub const UNKNOWN_MAC: &str = "02:00:00:00:00:00";

/// A live interface without a valid record.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub ifindex: u32,
    pub ifname: String,
    pub ep_id: u32,
    /// From its pinned `pal_ep_v1` entry (empty when there is none).
    pub addrs: Vec<IpAddr>,
    /// Why it is not recovered yet (after the last attempt).
    pub blocker: String,
    /// The record's path and what is wrong with it, once known (from the IPAM allocation).
    pub record: Option<(PathBuf, String)>,
}

/// The pod's addresses as pinned in its endpoint entry.
pub fn pinned_addrs(info: Option<&EndpointInfo>) -> Vec<IpAddr> {
    let Some(info) = info else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if info.flags & EP_HAS_V4 != 0 {
        out.push(IpAddr::from(info.ipv4_be));
    }
    if info.flags & EP_HAS_V6 != 0 {
        out.push(IpAddr::from(info.ipv6_be));
    }
    out
}

impl Orphan {
    pub fn problem(&self) -> Problem {
        let record = match &self.record {
            Some((path, what)) => format!("endpoint record {} {what}", path.display()),
            None => "no valid endpoint record names this interface".into(),
        };
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        Problem {
            object: format!("interface {} (ifindex {})", self.ifname, self.ifindex),
            field: "endpoint record".into(),
            message: format!(
                "{record}: the pod [{}] is kept isolated (only the node reaches it) until the record is recovered; not recovered yet: {}",
                addrs.join(", "),
                self.blocker
            ),
        }
    }
}

/// Records that do not parse: (path, error).
pub type BadRecords = BTreeMap<PathBuf, String>;

/// Builds the record of `o` from the node's state, or says what is missing.
pub fn recover(
    o: &mut Orphan,
    state_dir: &Path,
    snapshot: &Snapshot,
    node: &str,
    bad: &BadRecords,
) -> Result<EndpointRecord, String> {
    let Some(first) = o.addrs.first().copied() else {
        return Err("its pinned endpoint entry holds no address".into());
    };
    let (container_id, ifname) = palisade_node_api::ipam::owner_of(state_dir, first)
        .map_err(|e| format!("reading the IPAM store: {}", e.chain()))?
        .ok_or_else(|| {
            format!(
                "no IPAM allocation of {first} in {} names its container",
                palisade_node_api::ipam::dir(state_dir).display()
            )
        })?;
    let veth = palisade_node_api::host_veth_name(&container_id, &ifname);
    if veth != o.ifname {
        return Err(format!(
            "the IPAM allocation of {first} names container {container_id} interface {ifname}, whose host veth is {veth}, not {}",
            o.ifname
        ));
    }
    let path = palisade_node_api::endpoint::path(state_dir, &container_id, &ifname);
    let what = match bad.get(&path) {
        Some(e) => format!("does not parse ({e})"),
        None if path.exists() => "names another interface".into(),
        None => "is missing".into(),
    };
    o.record = Some((path, what));
    let (ns, name) = pod_with_ips(snapshot, &o.addrs).ok_or_else(|| {
        format!(
            "no Pod in the source has status.podIPs {:?}",
            o.addrs.iter().map(ToString::to_string).collect::<Vec<_>>()
        )
    })?;
    let cidrs = node_cidrs(snapshot, node);
    let ips = o
        .addrs
        .iter()
        .map(|a| {
            let len = cidrs
                .iter()
                .find(|c| contains(c, *a))
                .map(|c| c.len)
                .unwrap_or(if a.is_ipv4() { 32 } else { 128 });
            format!("{a}/{len}")
        })
        .collect();
    Ok(EndpointRecord {
        container_id,
        // Not visible from the host side. The contract requires an absolute path; nothing on
        // the agent's side reads it, and the runtime's DEL passes its own CNI_NETNS.
        netns: UNKNOWN_NETNS.into(),
        ifname,
        pod_namespace: Some(ns),
        pod_name: Some(name),
        ips,
        host_veth: o.ifname.clone(),
        host_ifindex: o.ifindex,
        // Not visible from the host side either: marked unknown (locally administered zero).
        mac: UNKNOWN_MAC.into(),
        created_unix_ms: palisade_node_api::endpoint::now_unix_ms(),
    })
}

/// The Pod whose status.podIPs (or podIP) are exactly `addrs`.
fn pod_with_ips(snapshot: &Snapshot, addrs: &[IpAddr]) -> Option<(String, String)> {
    let mut want: Vec<IpAddr> = addrs.to_vec();
    want.sort();
    snapshot.pods.iter().find_map(|(key, pod)| {
        let st = pod.status.as_ref()?;
        let mut ips: Vec<IpAddr> = match &st.pod_ips {
            Some(l) if !l.is_empty() => l.iter().filter_map(|p| p.ip.parse().ok()).collect(),
            _ => st.pod_ip.iter().filter_map(|p| p.parse().ok()).collect(),
        };
        ips.sort();
        ips.dedup();
        (ips == want).then(|| key.clone())
    })
}

fn node_cidrs(snapshot: &Snapshot, node: &str) -> Vec<crate::node::routing::Cidr> {
    let mut ignored = Vec::new();
    snapshot
        .nodes
        .get(node)
        .map(|n| crate::node::routing::node_pod_cidrs(n, &mut ignored))
        .unwrap_or_default()
}

fn contains(c: &crate::node::routing::Cidr, ip: IpAddr) -> bool {
    fn bits(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }
    let ((net, w1), (a, w2)) = (bits(c.addr), bits(ip));
    if w1 != w2 || u32::from(c.len) > w1 {
        return false;
    }
    let shift = w1 - u32::from(c.len);
    shift >= 128 || (net >> shift) == (a >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::routing::Cidr;

    #[test]
    fn cidr_contains_its_addresses_only() {
        let c = Cidr::parse("10.244.1.0/24").unwrap();
        assert!(contains(&c, "10.244.1.7".parse().unwrap()));
        assert!(!contains(&c, "10.244.2.7".parse().unwrap()));
        assert!(!contains(&c, "fd00::7".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(contains(&all, "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn pinned_addresses_follow_the_family_flags() {
        let info = EndpointInfo {
            flags: EP_HAS_V4,
            ipv4_be: [10, 244, 0, 5],
            ..Default::default()
        };
        assert_eq!(
            pinned_addrs(Some(&info)),
            vec!["10.244.0.5".parse::<IpAddr>().unwrap()]
        );
        assert!(pinned_addrs(None).is_empty());
    }
}
