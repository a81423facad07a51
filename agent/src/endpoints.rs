//! Endpoints recorded by the CNI plugin (`<state-dir>/endpoints/*.json`) and the agent's own
//! small persistent state (`<state-dir>/agent/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The CNI plugin's endpoint record: one type, owned by the plugin crate.
pub use palisade_cni::endpoint::EndpointRecord;

/// What the agent needs from a record.
pub trait RecordExt {
    /// Unique per attachment: `<container_id>_<ifname>` (the record's file stem).
    fn key(&self) -> String;
    /// (namespace, name) of the pod, when the runtime passed them.
    fn pod(&self) -> Option<(String, String)>;
    /// The addresses, without prefix lengths.
    fn addrs(&self) -> Vec<std::net::IpAddr>;
}

impl RecordExt for EndpointRecord {
    fn key(&self) -> String {
        format!("{}_{}", self.container_id, self.ifname)
    }

    fn pod(&self) -> Option<(String, String)> {
        Some((self.pod_namespace.clone()?, self.pod_name.clone()?))
    }

    fn addrs(&self) -> Vec<std::net::IpAddr> {
        // The plugin wrote these; an entry that does not parse cannot occur, and is skipped.
        self.ips
            .iter()
            .filter_map(|s| s.split('/').next()?.parse().ok())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads every endpoint record. Records that do not parse are reported and skipped.
pub fn read_records(
    state_dir: &Path,
) -> Result<(BTreeMap<String, EndpointRecord>, Vec<String>), StateError> {
    let dir = palisade_cni::endpoint::dir(state_dir);
    let mut out = BTreeMap::new();
    let mut bad = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, bad)),
        Err(source) => return Err(StateError::Read { path: dir, source }),
    };
    for e in rd.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden || p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read_to_string(&p).map(|t| serde_json::from_str::<EndpointRecord>(&t)) {
            Ok(Ok(r)) => {
                out.insert(r.key(), r);
            }
            Ok(Err(e)) => bad.push(format!("{}: {e}", p.display())),
            Err(e) => bad.push(format!("{}: {e}", p.display())),
        }
    }
    Ok((out, bad))
}

/// Writes a small file atomically (temp file + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Allocator of endpoint ids: monotonic, persisted before an id is handed out, so ids are
/// never reused, not even across agent restarts (conntrack keys carry them).
pub struct EpIds {
    path: PathBuf,
    next: u32,
}

impl EpIds {
    pub fn open(state_dir: &Path, at_least: u32) -> Result<Self, StateError> {
        let path = state_dir.join("agent/next-ep-id");
        let stored = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().unwrap_or(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => return Err(StateError::Read { path, source }),
        };
        Ok(EpIds {
            path,
            next: stored.max(at_least).max(1),
        })
    }

    pub fn alloc(&mut self) -> Result<u32, StateError> {
        let id = self.next;
        write_atomic(&self.path, (id + 1).to_string().as_bytes())?;
        self.next = id + 1;
        Ok(id)
    }
}
