//! Endpoints recorded by the CNI plugin (`<state-dir>/endpoints/*.json`) and the agent's own
//! small persistent state (`<state-dir>/agent/`).

use std::path::{Path, PathBuf};

/// The plugin's endpoint record and the one reader of the records: the node contract's.
pub use palisade_node_api::endpoint::{EndpointRecord, Records, read_all};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] palisade_node_api::Error),
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
        palisade_node_api::file::write_atomic(&self.path, (id + 1).to_string().as_bytes())?;
        self.next = id + 1;
        Ok(id)
    }
}
