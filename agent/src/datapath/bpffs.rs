//! The bpffs under `--bpffs`: finding out whether one is mounted there, and mounting one when
//! none is (as the DaemonSet's `mount-bpffs` init container does), both at start and when it
//! disappears while the agent runs.
//!
//! Where a missing bpffs is mounted:
//! - on `--bpffs` itself when that directory exists or can be created (e.g. a lab's private
//!   directory);
//! - on the nearest existing parent when that is a directory of sysfs: sysfs provides
//!   `/sys/fs/bpf` as the mount point for a bpffs and allows no `mkdir` below it. This is the
//!   case of the default `/sys/fs/bpf/palisade` on a host where nothing mounted a bpffs, and
//!   under `ip netns exec`, which mounts a fresh sysfs on `/sys` for the command it runs.
//!
//! Mounting needs CAP_SYS_ADMIN. Without it (the DaemonSet's agent container) the error says
//! how to mount one by hand.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, SYSFS_MAGIC, statfs};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "no bpffs is mounted at {path} or above it ({nearest} is on {fs}), and {target} {why}; mount one with `mount -t bpf bpf {target}` or pass --bpffs DIR on a mounted bpffs (`ip netns exec` mounts a fresh /sys, so a bpffs mounted on /sys/fs/bpf outside it is not visible inside it)"
    )]
    NotMounted {
        path: PathBuf,
        nearest: PathBuf,
        fs: String,
        target: PathBuf,
        why: String,
    },
}

/// True when `path` exists and lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn fs_name(path: &Path) -> String {
    match statfs(path) {
        Ok(s) if s.filesystem_type() == SYSFS_MAGIC => "sysfs".into(),
        Ok(s) => format!("a filesystem of type {:#x}", s.filesystem_type().0),
        Err(e) => format!("an unknown filesystem ({e})"),
    }
}

/// The nearest existing ancestor of `path` (`path` itself when it exists).
fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    loop {
        if p.exists() || !p.pop() {
            return if p.as_os_str().is_empty() {
                PathBuf::from("/")
            } else {
                p
            };
        }
    }
}

/// Makes sure a bpffs holds `path`, mounting one when none does. Returns the mount point when
/// it mounted one, `None` when one was there already.
pub fn ensure(path: &Path) -> Result<Option<PathBuf>, BpffsError> {
    let nearest = nearest_existing(path);
    if is_bpffs(&nearest) {
        return Ok(None);
    }
    let not_mounted = |target: &Path, why: String| BpffsError::NotMounted {
        path: path.to_path_buf(),
        nearest: nearest.clone(),
        fs: fs_name(&nearest),
        target: target.to_path_buf(),
        why,
    };
    let target = match std::fs::create_dir_all(path) {
        Ok(()) => path.to_path_buf(),
        Err(e) => {
            let on_sysfs = statfs(&nearest).is_ok_and(|s| s.filesystem_type() == SYSFS_MAGIC);
            if !on_sysfs {
                return Err(not_mounted(path, format!("cannot be created: {e}")));
            }
            nearest.clone()
        }
    };
    mount(
        Some("bpf"),
        &target,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| {
        let mut why = format!(
            "could not be mounted: {}",
            io::Error::from_raw_os_error(errno as i32)
        );
        if errno == nix::errno::Errno::EPERM {
            why.push_str(" (mounting needs CAP_SYS_ADMIN)");
        }
        not_mounted(&target, why)
    })?;
    Ok(Some(target))
}
