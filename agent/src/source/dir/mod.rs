//! `--source dir:PATH`: a directory of Kubernetes manifests, watched with inotify.
//!
//! Files: `*.yaml` / `*.yml` (multi-document YAML) and `*.json` (one JSON object, or several
//! one after the other), as `kubectl apply -f DIR` reads them. Other names (such as the
//! temporary file of a `write + rename`) are neither read nor watched. The kinds read and the
//! rules (limits, strict fields) are those of `palisade_policy::manifest`, the one parser.
//!
//! Nothing is lost on bad input (`scan` has the rules): a rejected object keeps its last good
//! version enforced, an object defined twice is reported and one version kept, and a file
//! that cannot be read at all keeps contributing what it contributed before. Every such case
//! is a problem in `palisadectl status` naming the file, document, object, field and value.
//!
//! Cost: a rescan reads every manifest file but parses only those whose content changed since
//! the last rescan (a cache keyed by path and content hash). Parsing is what costs (YAML about
//! 3x JSON: figures in docs/manifests.md), so it runs on tokio's blocking pool, never on the
//! agent's loop: `poll` hands out the snapshot a background rescan finished, and only the
//! first `poll` (before the agent serves anything) scans in place. A hostile file costs at
//! most what `manifest::Limits` allows.

mod scan;
#[cfg(test)]
mod tests;

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use palisade_policy::manifest::{Format, Limits};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::{Snapshot, Source, SourceError};
use scan::Scanner;

/// A directory of manifests.
pub struct DirSource {
    dir: PathBuf,
    scanner: Arc<Mutex<Scanner>>,
    /// Generation of the latest snapshot handed out.
    generation: u64,
    /// The result of a background rescan, not yet handed out.
    ready: Arc<Mutex<Option<Result<Snapshot, SourceError>>>>,
    /// Wakes the agent.
    changes: Arc<Notify>,
    /// Wakes the background rescanner; `None` until it runs (after the first `poll`, and only
    /// under a tokio runtime: unit tests poll in place).
    rescanner: Option<Arc<Notify>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while scanning leaves the scanner as consistent as any rescan start does.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source for DirSource {
    fn poll(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let Some(rescanner) = &self.rescanner else {
            // The watch first, so that no change between the scan and the watch is missed.
            self.start()?;
            return self.rescan();
        };
        match lock(&self.ready).take() {
            Some(r) => {
                let snap = r?;
                self.generation = snap.generation;
                Ok(Some(snap))
            }
            None => {
                // Nothing new yet: look again (off this thread). The periodic resync comes
                // here, and catches writers whose changes inotify did not report.
                rescanner.notify_one();
                Ok(None)
            }
        }
    }

    /// Scans in place, on the caller's thread: the background rescan may not have started
    /// yet for a file written just before. This costs the agent's loop one scan, bounded by
    /// `manifest::Limits` like any scan, and only when a client asks to wait.
    fn sync(&mut self) -> Result<Option<Snapshot>, SourceError> {
        if self.rescanner.is_none() {
            return self.poll();
        }
        // Taking the scanner waits for a background scan in progress to finish first.
        let fresh = lock(&self.scanner).rescan();
        let pending = lock(&self.ready).take();
        let snap = match (fresh, pending) {
            // Ours is the newest: it supersedes what a background scan left.
            (Ok(Some(snap)), _) => snap,
            (Ok(None), Some(pending)) => pending?,
            (Ok(None), None) => return Ok(None),
            (Err(e), pending) => {
                *lock(&self.ready) = pending;
                return Err(e);
            }
        };
        self.generation = snap.generation;
        Ok(Some(snap))
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }
}

struct InotifyFd(Inotify);
impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_limits(dir, Limits::default())
    }

    /// A source enforcing other limits than the default ones (tests).
    pub fn with_limits(dir: impl Into<PathBuf>, limits: Limits) -> Self {
        let dir = dir.into();
        DirSource {
            scanner: Arc::new(Mutex::new(Scanner::new(dir.clone(), limits))),
            dir,
            generation: 0,
            ready: Arc::new(Mutex::new(None)),
            changes: Arc::new(Notify::new()),
            rescanner: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Also writes `state_dir/podcidrs.json` (the file the CNI plugin reads when its config
    /// has no `podCIDRs`) from the Node object named `node`, when the directory holds one.
    pub fn write_pod_cidrs(self, node: &str, state_dir: &Path) -> Self {
        lock(&self.scanner).pod_cidrs = Some(super::kube::PodCidrWriter::new(
            node.to_string(),
            state_dir.join(super::kube::POD_CIDR_FILE),
        ));
        self
    }

    /// Scans the directory in place. Returns a new snapshot when its content changed since
    /// the last scan, `None` otherwise.
    pub fn rescan(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let r = lock(&self.scanner).rescan();
        if let Ok(Some(s)) = &r {
            self.generation = s.generation;
        }
        r
    }

    /// Starts the background rescanner and the inotify watch that wakes it. Needs a tokio
    /// runtime; without one (unit tests) the source is polled in place.
    fn start(&mut self) -> Result<(), SourceError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(());
        }
        let rescanner = Arc::new(Notify::new());
        watch(lock(&self.scanner).dir(), rescanner.clone())?;
        let (scanner, ready, changes) = (
            self.scanner.clone(),
            self.ready.clone(),
            self.changes.clone(),
        );
        let wake = rescanner.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                let scanner = scanner.clone();
                let started = std::time::Instant::now();
                let r = match tokio::task::spawn_blocking(move || lock(&scanner).rescan()).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("rescanning the manifest directory: {e}");
                        continue;
                    }
                };
                tracing::debug!(elapsed = ?started.elapsed(), "manifest directory rescanned");
                let r = match r {
                    Ok(None) => continue,
                    Ok(Some(snap)) => Ok(snap),
                    Err(e) => Err(e),
                };
                *lock(&ready) = Some(r);
                changes.notify_one();
            }
        });
        self.rescanner = Some(rescanner);
        Ok(())
    }
}

/// Whether the directory source reads a file of this name.
fn is_manifest_name(name: &std::ffi::OsStr) -> bool {
    Format::of_path(Path::new(name)).is_some()
}

/// Watches `dir` with inotify; events about manifest names wake `wake`.
fn watch(dir: &Path, wake: Arc<Notify>) -> Result<(), SourceError> {
    let err = |source: std::io::Error| SourceError::Watch {
        path: dir.to_path_buf(),
        source,
    };
    let ino =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| err(e.into()))?;
    // Not IN_MODIFY: a file is read once its writer closes it (or renames it into place), not
    // once per write(2) while it is half written. The periodic resync still catches a writer
    // that never closes.
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CREATE,
    )
    .map_err(|e| err(e.into()))?;
    // SAFETY: the inotify fd is owned by the wrapper, which the AsyncFd owns for its whole
    // lifetime; nothing else closes it.
    let fd =
        unsafe { AsyncFd::register_with_interest(InotifyFd(ino), tokio::io::Interest::READABLE) }
            .map_err(|e| err(e.into()))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            // Drain the events; rescan only for names the source reads (or when events were
            // lost: the queue overflowed, or the directory itself went away). Writing a
            // temporary file next to a manifest then costs no rescan.
            match guard.get_inner().0.read_events() {
                Ok(events) => {
                    let relevant = events.iter().any(|e| match &e.name {
                        Some(name) => is_manifest_name(name),
                        None => true,
                    });
                    if relevant {
                        wake.notify_one();
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!("inotify: {e}");
                    return;
                }
            }
        }
    });
    Ok(())
}
