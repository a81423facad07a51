//! palisade CNI plugin library.
//!
//! The modules without the `plugin` feature are plain serde types and file-store logic, so the
//! agent can depend on this crate (with `default-features = false`) for the interface it shares
//! with the plugin:
//! - [`endpoint::EndpointRecord`] and [`endpoint::read_all`]: the node-local endpoint records
//!   the plugin writes on ADD and removes on DEL;
//! - [`agent_api::Request`] / [`agent_api::Response`]: the one-line JSON protocol on the agent's
//!   Unix socket.
//!
//! The `plugin` feature adds the netlink/namespace plumbing and the CNI commands (the
//! `palisade` binary).

pub mod agent_api;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod ipam;
pub mod result;
pub mod version;

#[cfg(feature = "plugin")]
pub mod plugin;

pub use error::Error;

/// Name of the host-side veth for a container attachment: `pal` + 12 hex digits of a
/// 64-bit FNV-1a hash of `container_id/ifname` (15 bytes, the kernel's IFNAMSIZ - 1).
///
/// Deterministic so DEL and GC find the link again from the container ID alone, even when the
/// endpoint record was never written (kill -9 mid-ADD).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("pal{:012x}", h >> 16)
}

/// Prefix of every host-side veth the plugin creates.
pub const HOST_VETH_PREFIX: &str = "pal";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_name_is_deterministic_short_and_prefixed() {
        let a = host_veth_name("abcdef0123456789", "eth0");
        assert_eq!(a, host_veth_name("abcdef0123456789", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_ne!(a, host_veth_name("abcdef0123456789", "eth1"));
        assert_ne!(a, host_veth_name("abcdef012345678a", "eth0"));
    }
}
