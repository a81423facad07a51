//! The plugin's IPAM allocations as the agent reads them: `<stateDir>/ipam/<ip>`, one file per
//! allocated address holding `containerID\nifname\n`, written by the plugin by rename (so a
//! file is complete or absent, and reading one needs no lock). The agent reads them to recover
//! a pod's endpoint record from the pod's address (the allocation gives the record's key).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::Result;

/// `<state_dir>/ipam`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ipam")
}

/// (container id, interface name) of an allocation file's content.
pub fn parse_owner(content: &str) -> (String, String) {
    let mut lines = content.lines();
    (
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    )
}

/// Who holds `ip`: (container id, interface name), `None` when nobody does.
pub fn owner_of(state_dir: &Path, ip: IpAddr) -> Result<Option<(String, String)>> {
    let path = dir(state_dir).join(ip.to_string());
    // Two short lines; the bound only keeps a bad file from being read whole.
    let Some(bytes) = crate::file::read_bounded(&path, 4096)? else {
        return Ok(None);
    };
    Ok(Some(parse_owner(&String::from_utf8_lossy(&bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_read_from_the_allocation_file_of_the_address() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir(d.path())).unwrap();
        std::fs::write(dir(d.path()).join("10.244.0.5"), "abc123\neth0\n").unwrap();
        assert_eq!(
            owner_of(d.path(), "10.244.0.5".parse().unwrap()).unwrap(),
            Some(("abc123".into(), "eth0".into()))
        );
        assert_eq!(
            owner_of(d.path(), "10.244.0.6".parse().unwrap()).unwrap(),
            None
        );
    }
}
