//! Per-namespace sysctls under /proc/sys/net. The kernel resolves these files against the
//! network namespace of the thread that opens them, so call these from the thread that is in
//! the right namespace.

use crate::error::{Error, Result};

/// Writes `value` to `/proc/sys/<key>` (key with `/` separators).
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|e| Error::io("writing sysctl", path, e))
}

/// Writes only when the current value differs (avoids needless writes on every ADD).
pub fn ensure(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    match std::fs::read_to_string(&path) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => set(key, value),
    }
}

/// The per-device sysctls of the host side of a pod's veth (call in the node's namespace).
///
/// Addressing, for the families the pod has: IPv4 `proxy_arp=1`, `proxy_delay=0` (the node
/// answers ARP for the pod's link-local gateway 169.254.1.1 at once); IPv6 `accept_dad=0` (the
/// host side's link-local address must not sit in duplicate address detection: the kernel
/// would not use it as the source of its neighbour solicitations towards the pod).
///
/// Never taking configuration from the pod, whatever families it has (the veth carries
/// whatever the pod sends): IPv4 `accept_redirects=0`, since a forwarding node accepts ICMP
/// redirects when both `all` and the device allow them (both default to 1); IPv6
/// `accept_ra=0` and `accept_redirects=0` (when the node has IPv6), since a forwarding node
/// ignores router advertisements only while `accept_ra` is below 2, and nodes that take their
/// own uplink address by SLAAC set 2, often as the default for new devices. A pod must never
/// install a route or an address on the node; the datapath also drops router messages from
/// pods (`router_message`).
pub fn host_veth(name: &str, v4: bool, v6: bool) -> Result<()> {
    if v4 {
        set(&format!("net/ipv4/conf/{name}/proxy_arp"), "1")?;
        set(&format!("net/ipv4/neigh/{name}/proxy_delay"), "0")?;
    }
    set(&format!("net/ipv4/conf/{name}/accept_redirects"), "0")?;
    if v6 {
        set(&format!("net/ipv6/conf/{name}/accept_dad"), "0")?;
    }
    if v6 || std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{name}")).exists() {
        set(&format!("net/ipv6/conf/{name}/accept_ra"), "0")?;
        set(&format!("net/ipv6/conf/{name}/accept_redirects"), "0")?;
    }
    Ok(())
}

/// The per-device sysctls of the pod side of its veth (call in the pod's namespace), before
/// the link comes up: no duplicate address detection (the plugin owns the addresses) and
/// `accept_ra=0`: the pod's routes are static, so it neither needs router advertisements nor
/// sends router solicitations (which its veth would drop as router messages).
pub fn pod_link(ifname: &str, v6: bool) -> Result<()> {
    if v6 {
        set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        set(&format!("net/ipv6/conf/{ifname}/accept_ra"), "0")?;
    }
    Ok(())
}
