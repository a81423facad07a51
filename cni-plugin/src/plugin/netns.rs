//! The pod's network namespace (`CNI_NETNS`): checked, opened, and entered by a helper thread.
//!
//! Namespace work runs on a fresh OS thread that `setns()`es and then ends (CNI's `ns.Do`,
//! aya's `run_netns_tokio`): the main thread never leaves the node's namespace, and a thread
//! that switched namespaces is never reused for anything else.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// `statfs.f_type` of nsfs, the filesystem of namespace files (`linux/magic.h`).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `ioctl(fd, NS_GET_NSTYPE)`: the `CLONE_NEW*` type of a namespace file (Linux 4.11,
/// `linux/nsfs.h`: `_IO(0xb7, 0x3)`).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::invalid_env("CNI_NETNS", path.display().to_string(), reason)
}

/// Opens `CNI_NETNS` and checks that it is a network namespace other than the node's own; every
/// failure is the caller's bad `CNI_NETNS` (code 4) saying what the path is instead.
///
/// Opened with `O_NONBLOCK`: opening a FIFO for reading would otherwise wait for a writer
/// forever.
pub fn open(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| bad(path, format!("cannot inspect: {e}")))?;
    if let Err(palisade_node_api::Error::NotRegularFile { kind, .. }) =
        palisade_node_api::file::check_regular(path, &meta)
    {
        return Err(bad(path, format!("is a {kind}, not a network namespace")));
    }
    // SAFETY: fstatfs fills the zeroed struct it is given; the fd is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(bad(path, format!("cannot inspect: {e}")));
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64, u32/i32 elsewhere
    if st.f_type as i64 != NSFS_MAGIC {
        return Err(bad(
            path,
            "is a regular file, not a namespace file (expected /proc/<pid>/ns/net or a bind mount of one)",
        ));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open namespace file.
    let nstype = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype != libc::CLONE_NEWNET {
        return Err(bad(
            path,
            "is a namespace file, but not of a network namespace",
        ));
    }
    let own = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| Error::io("inspecting", "/proc/self/ns/net", e))?;
    if (own.dev(), own.ino()) == (meta.dev(), meta.ino()) {
        return Err(bad(
            path,
            "is the node's own network namespace (where the plugin runs), not a pod's",
        ));
    }
    Ok(f)
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
