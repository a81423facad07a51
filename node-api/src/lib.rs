//! The node contract: everything the CNI plugin (`palisade`), the agent (`palisade-agent`) and
//! `palisadectl` exchange on one node, declared once.
//!
//! - [`socket`]: the agent's Unix socket, one JSON request line and one JSON response line
//!   ([`socket::Request`], [`socket::Response`]) and the client call;
//! - [`endpoint`]: the endpoint records the plugin writes on ADD (`<stateDir>/endpoints/`), the
//!   one reader and the one writer, and the record key;
//! - [`podcidr`]: the node's pod-CIDR file the agent writes and the plugin reads;
//! - [`ipam`]: the plugin's IPAM allocation files, as the agent reads them;
//! - [`status`]: what `palisadectl status` / `endpoints` show;
//! - [`flow`]: the flows `palisadectl flows` asks for and the agent streams (Hubble's field
//!   names);
//! - [`file`]: the one atomic (fsynced, private) file writer and the bounded reader every
//!   state file goes through;
//! - [`host_veth_name`]: the host-side veth name of an attachment (the plugin creates it, the
//!   agent checks a request against it).
//!
//! Nothing here needs a runtime, netlink or the kernel ABI: the plugin is exec'd once per CNI
//! call and links this crate, not the agent's.

pub mod endpoint;
pub mod error;
pub mod file;
pub mod flow;
pub mod ipam;
pub mod podcidr;
pub mod socket;
pub mod status;

pub use error::{Error, Result};

/// Prefix of every host-side veth the plugin creates.
pub const HOST_VETH_PREFIX: &str = "pal";

/// Name of the host-side veth for a container attachment: `pal` + 12 hex digits of a
/// 64-bit FNV-1a hash of `container_id/ifname` (15 bytes, the kernel's IFNAMSIZ - 1).
///
/// Deterministic so DEL and GC find the link again from the container ID alone, even when the
/// endpoint record was never written (kill -9 mid-ADD). `/` occurs in neither part, so two
/// attachments never hash the same input.
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
    format!("{HOST_VETH_PREFIX}{:012x}", h >> 16)
}

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
        // The released plugin named this attachment so; a changed hash would orphan veths.
        assert_eq!(host_veth_name("podA0123", "eth0"), "pala577649e8aef");
    }
}
