//! The one way node state is written and read.
//!
//! Writes are atomic and durable: a private temporary file (`.tmp.<pid>.<n>.<name>.tmp`: hidden,
//! and with an extension no reader of state or manifests takes; created with `O_EXCL`, 0600) in the target's directory, written, fsynced, renamed over the
//! target, and the directory fsynced, so a crash or power loss leaves either the old content or
//! the new, never a torn file, and a reader never sees a half-written one.
//!
//! Reads are bounded: the file is opened with `O_NONBLOCK` (opening a FIFO for reading would
//! otherwise wait for a writer forever), must be a regular file, and may not exceed a size the
//! caller names. State files hold pod names and addresses: they are 0600 and their
//! directories 0700.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// Mode of every state file.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every state directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Prefix of the temporary files of [`write_atomic`].
pub const TMP_PREFIX: &str = ".tmp.";

/// Creates `dir` (and missing parents) with mode 0700 and makes `dir` itself 0700 when it
/// existed with a wider mode (a state directory of an older release).
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io("creating directory", dir, e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io("inspecting", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::NotRegularFile {
            path: dir.to_path_buf(),
            kind: "non-directory where a directory belongs",
        });
    }
    if meta.permissions().mode() & 0o777 != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(|e| Error::io("restricting to 0700", dir, e))?;
    }
    Ok(())
}

/// Writes `data` to `path` atomically and durably, as a 0600 file (see the module comment).
/// Missing parent directories are created 0700.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(|e| Error::io("creating directory", dir, e))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("path", path.display().to_string(), "has no file name"))?;
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        name.to_string_lossy()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| Error::io("creating", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
    })();
    if let Err(e) = written {
        // Best effort: a leftover is removed by `remove_tmp_leftovers` once this pid is gone.
        if let Err(rm) = std::fs::remove_file(&tmp)
            && rm.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io("removing after a failed write", &tmp, rm));
        }
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Reads `path` whole, or `None` when it does not exist. Fails (naming the path) when it is
/// not a regular file (a FIFO is detected without blocking) or larger than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io("inspecting", path, e))?;
    check_regular(path, &meta)?;
    if meta.len() > max {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // `take`: the file may grow between fstat and read.
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading", path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            max,
        });
    }
    Ok(Some(buf))
}

/// Fails unless `meta` describes a regular file, naming what it is instead.
pub fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_dir() {
        "directory"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    };
    Err(Error::NotRegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// Removes `dir`'s temporary files of writers that are gone (their pid no longer exists);
/// those of a live writer are left to it. Returns what it removed.
pub fn remove_tmp_leftovers(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut removed = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("listing", dir, e))?;
        let name = ent.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
            continue;
        };
        let live = rest
            .split('.')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if live {
            continue;
        }
        let p = ent.path();
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing leftover", &p, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_replaces_whole_files_privately_and_leaves_no_tmp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/dir/f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&d.path().join("sub/dir")), 0o700);
        let names: Vec<_> = std::fs::read_dir(d.path().join("sub/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
    }

    #[test]
    fn private_dir_narrows_an_existing_wide_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("endpoints");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
    }

    #[test]
    fn bounded_read_refuses_fifos_directories_and_large_files_at_once() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_bounded(&fifo, 10).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        let e = read_bounded(d.path(), 10).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let big = d.path().join("big");
        std::fs::write(&big, [b'x'; 11]).unwrap();
        let e = read_bounded(&big, 10).unwrap_err();
        assert!(e.to_string().contains("more than the 10 allowed"), "{e}");
        assert_eq!(read_bounded(&big, 11).unwrap().unwrap().len(), 11);
        assert!(read_bounded(&d.path().join("none"), 10).unwrap().is_none());
    }

    #[test]
    fn tmp_leftovers_of_dead_writers_go_and_of_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join(format!(".tmp.{}.0.a", std::process::id()));
        // pid_max is at most 2^22: this pid cannot exist.
        let dead = d.path().join(".tmp.4999999.0.a");
        std::fs::write(&mine, "x").unwrap();
        std::fs::write(&dead, "x").unwrap();
        assert_eq!(
            remove_tmp_leftovers(d.path()).unwrap(),
            std::slice::from_ref(&dead)
        );
        assert!(mine.exists() && !dead.exists());
    }
}
