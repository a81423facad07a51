//! Running code inside another network namespace.
//!
//! Namespace work runs on a fresh OS thread that `setns()`es and then ends (CNI's `ns.Do`,
//! aya's `run_netns_tokio`): the main thread never leaves the node's namespace, and a thread
//! that switched namespaces is never reused for anything else.

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// Opens a namespace file; a missing path is reported as the bad `CNI_NETNS` it is.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        Error::invalid_env(
            "CNI_NETNS",
            path.display().to_string(),
            format!("cannot open: {e}"),
        )
    })
}

/// Runs `f` on a new thread inside the network namespace `ns` (an open namespace file).
pub fn run_in<T: Send>(ns: &File, path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Netns {
                path: path.to_path_buf(),
                source,
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Netns {
                path: path.to_path_buf(),
                source: nix::Error::EIO,
            })
        })
    })
}
