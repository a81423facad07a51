//! The ADD result, shaped exactly as the spec version the config asked for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::version::Version;

/// The link-local gateway every pod routes through. The host-side veth answers for it (static
/// neighbour entry in the pod, plus proxy ARP on the host side).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

pub fn gateway_for(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

/// What ADD made, independent of the spec version.
#[derive(Debug, Clone)]
pub struct AddResult {
    pub host_veth: String,
    pub host_mac: String,
    pub ifname: String,
    pub pod_mac: String,
    pub netns: String,
    pub mtu: u32,
    /// Pod addresses with the pod CIDR's prefix length.
    pub ips: Vec<IpNetwork>,
    pub dns: Option<Value>,
}

impl AddResult {
    /// Renders the result for `version`: interfaces (host side without sandbox, pod side with
    /// it), ips pointing at the pod interface (index 1), default routes via the link-local
    /// gateways, dns. 0.4.0 adds `"version"` to each IP; 1.1.0 adds the interface MTU.
    pub fn render(&self, version: Version) -> Value {
        let mut host_if = json!({ "name": self.host_veth, "mac": self.host_mac });
        let mut pod_if = json!({ "name": self.ifname, "mac": self.pod_mac, "sandbox": self.netns });
        if version >= Version::V1_1_0 {
            host_if["mtu"] = json!(self.mtu);
            pod_if["mtu"] = json!(self.mtu);
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|n| {
                let mut ip = json!({
                    "interface": 1,
                    "address": n.to_string(),
                    "gateway": gateway_for(&n.ip()).to_string(),
                });
                if version.ips_carry_version() {
                    ip["version"] = json!(if n.is_ipv4() { "4" } else { "6" });
                }
                ip
            })
            .collect();
        let mut routes = Vec::new();
        if self.ips.iter().any(IpNetwork::is_ipv4) {
            routes.push(json!({ "dst": "0.0.0.0/0", "gw": GATEWAY_V4.to_string() }));
        }
        if self.ips.iter().any(IpNetwork::is_ipv6) {
            routes.push(json!({ "dst": "::/0", "gw": GATEWAY_V6.to_string() }));
        }
        json!({
            "cniVersion": version.as_str(),
            "interfaces": [host_if, pod_if],
            "ips": ips,
            "routes": routes,
            "dns": self.dns.clone().unwrap_or_else(|| json!({})),
        })
    }
}

/// The pod addresses a `prevResult` (CHECK) claims for interface `ifname`.
pub fn prev_result_ips(prev: &Value, ifname: &str) -> Result<Vec<IpNetwork>> {
    let bad = |why: &str| {
        Error::invalid_config("prevResult", crate::config::short(prev), why.to_string())
    };
    let interfaces = prev.get("interfaces").and_then(Value::as_array);
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("has no \"ips\" list"))?;
    let mut out = Vec::new();
    for ip in ips {
        // Keep the IPs of our interface (or unattributed ones).
        if let (Some(idx), Some(ifs)) = (ip.get("interface").and_then(Value::as_u64), interfaces) {
            let name = ifs
                .get(idx as usize)
                .and_then(|i| i.get("name"))
                .and_then(Value::as_str);
            if name != Some(ifname) {
                continue;
            }
        }
        let a = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("an ips entry has no \"address\""))?;
        out.push(a.parse().map_err(|_| bad("an ips address is not a CIDR"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            host_veth: "pal0123456789ab".into(),
            host_mac: "02:00:00:00:00:01".into(),
            ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            netns: "/run/netns/p".into(),
            mtu: 1500,
            ips: vec![
                "10.244.1.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
            dns: None,
        }
    }

    #[test]
    fn v1_result_has_interfaces_with_sandbox_ips_with_index_routes_and_dns() {
        let r = sample().render(Version::V1_0_0);
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][0]["name"], "pal0123456789ab");
        assert!(r["interfaces"][0].get("sandbox").is_none());
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(r["interfaces"][1].get("mtu").is_none());
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(r["ips"][1]["gateway"], "fe80::1");
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["routes"][1]["dst"], "::/0");
        assert_eq!(r["dns"], json!({}));
    }

    #[test]
    fn v0_4_ips_carry_version_and_v1_1_interfaces_carry_mtu() {
        let r = sample().render(Version::V0_4_0);
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["ips"][1]["version"], "6");
        let r = sample().render(Version::V1_1_0);
        assert_eq!(r["interfaces"][1]["mtu"], 1500);
    }

    #[test]
    fn prev_result_ips_are_those_of_our_interface() {
        let mut r = sample().render(Version::V1_0_0);
        r["interfaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name":"net1","sandbox":"/x"}));
        r["ips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"interface":2,"address":"192.168.0.2/24"}));
        let ips = prev_result_ips(&r, "eth0").unwrap();
        assert_eq!(ips.len(), 2);
        assert!(prev_result_ips(&json!({}), "eth0").is_err());
    }
}
