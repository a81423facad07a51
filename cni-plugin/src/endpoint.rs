//! Endpoint records: what ADD wired, for the agent.
//!
//! One JSON file per attachment at `<stateDir>/endpoints/<containerID>_<ifname>.json`, written
//! atomically (tmp file + rename) after the veth exists, removed by DEL and GC. The agent reads
//! them all on startup ([`read_all`]) and gets each new one over its socket on ADD.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// Pod addresses in CIDR notation with the pod CIDR's prefix length ("10.244.1.5/24").
    pub ips: Vec<String>,
    /// Host-side veth name (where the TC programs attach).
    pub host_veth: String,
    /// Host-side veth ifindex, in the node's network namespace.
    pub host_ifindex: u32,
    /// Pod-side MAC address ("aa:bb:cc:dd:ee:ff").
    pub mac: String,
    pub created_unix_ms: u64,
}

/// `<state_dir>/endpoints`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("endpoints")
}

/// `<state_dir>/endpoints/<container_id>_<ifname>.json`.
pub fn path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir(state_dir).join(format!("{container_id}_{ifname}.json"))
}

impl EndpointRecord {
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        path(state_dir, &self.container_id, &self.ifname)
    }

    /// Writes the record atomically (tmp + rename).
    pub fn write(&self, state_dir: &Path) -> Result<PathBuf> {
        let d = dir(state_dir);
        std::fs::create_dir_all(&d).map_err(|e| Error::io("creating endpoint directory", &d, e))?;
        let dst = self.path(state_dir);
        let tmp = d.join(format!(
            ".tmp.{}.{}_{}",
            std::process::id(),
            self.container_id,
            self.ifname
        ));
        let body = serde_json::to_vec(self).map_err(|source| Error::Decode {
            what: "endpoint record (encoding)",
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        f.write_all(&body)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io("renaming into place", &dst, e))?;
        Ok(dst)
    }
}

/// Reads one record; `None` when it does not exist.
pub fn read(state_dir: &Path, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>> {
    read_path(&path(state_dir, container_id, ifname))
}

fn read_path(p: &Path) -> Result<Option<EndpointRecord>> {
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading endpoint record", p, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Decode {
            what: "endpoint record",
            source,
        })
}

/// Removes a record; succeeds when it is already gone.
pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> Result<()> {
    let p = path(state_dir, container_id, ifname);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing endpoint record", &p, e)),
    }
}

/// Reads every endpoint record of a state directory (the agent calls this on startup).
/// A missing directory means no endpoints. Tmp files of interrupted writes are skipped;
/// an unreadable record is an error naming the file.
pub fn read_all(state_dir: &Path) -> Result<Vec<EndpointRecord>> {
    let d = dir(state_dir);
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing endpoint records", &d, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("listing endpoint records", &d, e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if let Some(r) = read_path(&ent.path())? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    Ok(out)
}

/// Removes tmp files left by writers that died (GC).
pub fn remove_tmp_leftovers(state_dir: &Path) -> Result<()> {
    let d = dir(state_dir);
    let Ok(rd) = std::fs::read_dir(&d) else {
        return Ok(());
    };
    for ent in rd.flatten() {
        if ent.file_name().to_string_lossy().starts_with(".tmp.") {
            let p = ent.path();
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing leftover tmp file", &p, e)),
            }
        }
    }
    Ok(())
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(cid: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: cid.into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            ips: vec!["10.244.1.5/24".into()],
            host_veth: "pal0123456789ab".into(),
            host_ifindex: 7,
            mac: "02:00:00:00:00:02".into(),
            created_unix_ms: 1,
        }
    }

    #[test]
    fn records_round_trip_and_read_all_lists_them() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_all(d.path()).unwrap().is_empty());
        let p = sample("b").write(d.path()).unwrap();
        assert!(p.ends_with("endpoints/b_eth0.json"));
        sample("a").write(d.path()).unwrap();
        std::fs::write(dir(d.path()).join(".tmp.1.x_eth0"), "{").unwrap();
        let all = read_all(d.path()).unwrap();
        assert_eq!(
            all.iter()
                .map(|r| r.container_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(read(d.path(), "a", "eth0").unwrap(), Some(sample("a")));
        remove(d.path(), "a", "eth0").unwrap();
        remove(d.path(), "a", "eth0").unwrap();
        assert_eq!(read(d.path(), "a", "eth0").unwrap(), None);
    }

    #[test]
    fn record_json_uses_the_contract_field_names() {
        let v = serde_json::to_value(sample("a")).unwrap();
        for k in [
            "container_id",
            "netns",
            "ifname",
            "pod_namespace",
            "pod_name",
            "ips",
            "host_veth",
            "host_ifindex",
            "mac",
            "created_unix_ms",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
