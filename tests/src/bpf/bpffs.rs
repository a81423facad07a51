//! A private bpffs instance per test ([`BpffsMount`]), so parallel tests never share a map, and
//! the sweep of instances left by test processes that died.

use std::path::Path;

use anyhow::{Context, Result};

/// A private bpffs instance mounted on a temporary directory; unmounted (lazily, so an open
/// pin never blocks it) and removed on drop.
pub struct BpffsMount {
    dir: tempfile::TempDir,
}

impl BpffsMount {
    /// Mounts a fresh instance on `<tmp>/pltbpf<pid>x<random>`, after unmounting instances
    /// left by test processes that died.
    pub fn new() -> Result<Self> {
        sweep_stale_bpffs();
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "{}{BPFFS_TAG}{}x",
                crate::TEST_PREFIX,
                std::process::id()
            ))
            .tempdir()
            .context("creating a temp dir for bpffs")?;
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs on {}", dir.path().display()))?;
        Ok(BpffsMount { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

const BPFFS_TAG: &str = "bpf";

/// Unmounts and removes `<tmp>/pltbpf<pid>x*` bpffs mounts whose process is gone.
fn sweep_stale_bpffs() {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let tmp = std::env::temp_dir();
    let prefix = format!("{}{BPFFS_TAG}", crate::TEST_PREFIX);
    for line in mountinfo.lines() {
        // Field 5 is the mount point; the filesystem type follows the " - " separator.
        let Some(mount_point) = line.split(' ').nth(4) else {
            continue;
        };
        if !line.contains(" - bpf ") {
            continue;
        }
        let path = Path::new(mount_point);
        if path.parent() != Some(tmp.as_path()) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("sweeping stale bpffs {mount_point}");
        if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {mount_point}: {e}");
            continue;
        }
        if let Err(e) = std::fs::remove_dir(path) {
            eprintln!("removing {mount_point}: {e}");
        }
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting bpffs {}: {e}", self.dir.path().display());
        }
    }
}
