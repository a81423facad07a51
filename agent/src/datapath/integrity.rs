//! The periodic check that the datapath is still what the agent built: the bpffs is mounted,
//! every map and link is pinned where a restarted agent will look for it, and every link is
//! still attached to its interface with the agent's program in it. What is lost is restored
//! at once; what cannot be restored is a fault, which makes the agent unhealthy and is named
//! in `palisadectl status` until it is restored. Each restoration is also listed there for a
//! while (it means something or someone removed the node's state).
//!
//! Order of the check (each step needs the one before it):
//! 1. the bpffs: if `--bpffs` is no longer on one (unmounted), mount one (see `bpffs`);
//! 2. the `maps/` and `links/` directories (removed: created again);
//! 3. each map pin is the agent's map (missing, or replaced by another object: pinned again
//!    from the map the agent holds open);
//! 4. each link pin is the agent's link (same, from the link's descriptor the agent holds);
//! 5. each link is attached (someone's `BPF_LINK_DETACH`, e.g. `bpftool link detach`: a new
//!    link is attached) and runs the agent's program (someone's `BPF_LINK_UPDATE`: swapped
//!    back). A link whose interface is gone is dropped: the pod is gone, the reconcile loop
//!    removes its endpoint.
//!
//! Cost: one `statfs`, one `stat` per pin and one `bpf(2)` call per link; run every second.
//! While the bpffs or a pin is missing, enforcement never stops: the agent holds every map
//! and link open. A gap remains only for a link detached behind the agent's back: its
//! interface is unfiltered until the next check (at most one check interval).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};

use super::{Datapath, bpffs, create_dirs, ifname_of, links};
use crate::status::Problem;

/// How long a restoration stays listed in the status.
const NOTICE_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct State {
    /// What the last check could not restore.
    faults: Vec<Problem>,
    /// Restorations of the last `NOTICE_TTL`.
    notices: VecDeque<(Instant, Problem)>,
}

/// What one check found: how many faults remain, how many things it restored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub faults: usize,
    pub restored: usize,
}

struct Findings {
    faults: Vec<Problem>,
    restored: Vec<Problem>,
}

fn problem(object: String, field: &str, message: String) -> Problem {
    Problem {
        object,
        field: field.into(),
        message,
    }
}

fn link_object(ifindex: u32) -> String {
    match ifname_of(ifindex) {
        Some(n) => format!("interface {n} (ifindex {ifindex})"),
        None => format!("interface with ifindex {ifindex}"),
    }
}

impl Datapath {
    /// Faults found by the last check (the agent is unhealthy while there are any).
    pub fn faults(&self) -> &[Problem] {
        &self.check.faults
    }

    /// Restorations made recently (informational).
    pub fn restorations(&self) -> impl Iterator<Item = &Problem> {
        self.check.notices.iter().map(|(_, p)| p)
    }

    /// Checks and restores the bpffs, the pins and the links (see the module comment).
    pub fn check_integrity(&mut self) -> Check {
        let mut f = Findings {
            faults: Vec::new(),
            restored: Vec::new(),
        };
        if self.check_bpffs(&mut f) {
            self.check_map_pins(&mut f);
            let paths: Vec<PathBuf> = self.links.keys().cloned().collect();
            for path in paths {
                self.check_link(&path, &mut f);
            }
        }
        for p in &f.faults {
            tracing::error!(object = %p.object, field = %p.field, "{}", p.message);
        }
        let now = Instant::now();
        for p in &f.restored {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
            self.check.notices.push_back((now, p.clone()));
        }
        while self
            .check
            .notices
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > NOTICE_TTL)
        {
            self.check.notices.pop_front();
        }
        let out = Check {
            faults: f.faults.len(),
            restored: f.restored.len(),
        };
        self.check.faults = f.faults;
        out
    }

    /// Steps 1 and 2. False when pins cannot be restored now.
    fn check_bpffs(&mut self, f: &mut Findings) -> bool {
        let object = format!("bpffs {}", self.root.display());
        if !bpffs::is_bpffs(&self.root) {
            match bpffs::ensure(&self.root) {
                Ok(Some(at)) => f.restored.push(problem(
                    object.clone(),
                    "mount",
                    format!(
                        "the bpffs was gone (unmounted?): mounted a new one on {}; every map and link pinned again",
                        at.display()
                    ),
                )),
                Ok(None) => {}
                Err(e) => {
                    f.faults.push(problem(
                        object,
                        "mount",
                        format!(
                            "{e}. Enforcement goes on (the agent holds every map and link open), but nothing is pinned: if the agent stopped now, every pod would be unfiltered"
                        ),
                    ));
                    return false;
                }
            }
        }
        let missing_dirs = [&self.maps_dir, &self.links_dir, &self.uplink_links_dir]
            .iter()
            .any(|d| !d.is_dir());
        if let Err(e) = create_dirs(&[&self.maps_dir, &self.links_dir, &self.uplink_links_dir]) {
            f.faults.push(problem(
                object,
                "pin directories",
                format!(
                    "{:#}. Enforcement goes on (the agent holds every map and link open), but nothing can be pinned",
                    anyhow::Error::from(e)
                ),
            ));
            return false;
        }
        if missing_dirs {
            tracing::warn!(
                "pin directories under {} were missing: created again",
                self.root.display()
            );
        }
        true
    }

    /// Step 3.
    fn check_map_pins(&mut self, f: &mut Findings) {
        for (name, map, inode) in &mut self.pinned_maps {
            let path = self.maps_dir.join(name.as_str());
            let now = links::inode_of(&path);
            if now.is_some() && now == *inode {
                continue;
            }
            let object = format!("pinned map {}", path.display());
            let ours = map.info().map(|i| i.id()).ok();
            if now.is_some() {
                let there = aya::maps::MapInfo::from_pin(&path).map(|i| i.id()).ok();
                if there.is_some() && there == ours {
                    *inode = now;
                    continue;
                }
                if let Err(e) = remove_any(&path) {
                    f.faults.push(problem(
                        object,
                        "pin",
                        format!("another object is pinned there and cannot be removed: {e}"),
                    ));
                    continue;
                }
            }
            match map.pin(&path) {
                Ok(()) => {
                    *inode = links::inode_of(&path);
                    f.restored.push(problem(
                        object,
                        "pin",
                        if now.is_some() {
                            "was replaced by another object: the agent's map pinned again".into()
                        } else {
                            "was missing (removed, or its bpffs lost): pinned again".into()
                        },
                    ));
                }
                Err(e) => f.faults.push(problem(
                    object,
                    "pin",
                    format!(
                        "missing and cannot be pinned again: {e}; a restarted agent would start from an empty map"
                    ),
                )),
            }
        }
    }

    /// Steps 4 and 5 for one held link.
    fn check_link(&mut self, path: &Path, f: &mut Findings) {
        let Some(held) = self.links.get(path) else {
            return;
        };
        let (ifindex, program, attach_type) = (held.ifindex, held.program, held.attach_type);
        let object = link_object(ifindex);
        let field = format!("tcx link {program}");
        let info = match links::tcx_info(&held.fd) {
            Ok(i) => i,
            Err(e) => {
                f.faults
                    .push(problem(object, &field, format!("cannot be inspected: {e}")));
                return;
            }
        };
        if info.ifindex == 0 {
            // Detached. Its interface gone: the pod is gone, nothing to guard.
            self.links.remove(path);
            links::remove_pin(path);
            if ifname_of(ifindex).is_none() {
                return;
            }
            match self.attach_one(ifindex, program, attach_type, path.to_path_buf()) {
                Ok(()) => f.restored.push(problem(
                    object,
                    &field,
                    "was detached by something other than the agent: attached again (the interface was unfiltered since the previous check, at most a second)".into(),
                )),
                Err(e) => f.faults.push(problem(
                    object,
                    &field,
                    format!(
                        "was detached by something other than the agent and cannot be attached again: {:#}; the interface is unfiltered",
                        anyhow::Error::from(e)
                    ),
                )),
            }
            return;
        }
        // Step 4: the pin.
        let now = links::inode_of(path);
        if now.is_none() || now != held.pin_inode {
            let there = PinnedLink::from_pin(path)
                .ok()
                .and_then(|p| FdLink::from(p).info().ok())
                .map(|i| i.id());
            if there == Some(info.id) {
                if let Some(h) = self.links.get_mut(path) {
                    h.pin_inode = now;
                }
            } else {
                let replaced = now.is_some();
                let pinned = if replaced { remove_any(path) } else { Ok(()) }
                    .and_then(|()| links::pin(&held.fd, path));
                match pinned {
                    Ok(()) => {
                        if let Some(h) = self.links.get_mut(path) {
                            h.pin_inode = links::inode_of(path);
                        }
                        f.restored.push(problem(
                            object.clone(),
                            &format!("{field} pin {}", path.display()),
                            if replaced {
                                "was replaced by another object: the agent's link pinned again"
                                    .into()
                            } else {
                                "was missing (removed, or its bpffs lost): pinned again (the agent held the link, so it stayed attached)".into()
                            },
                        ));
                    }
                    Err(e) => {
                        f.faults.push(problem(
                            object,
                            &format!("{field} pin {}", path.display()),
                            format!(
                                "missing and cannot be pinned again: {e}; the link stays attached while the agent runs, but not after"
                            ),
                        ));
                        return;
                    }
                }
            }
        }
        // Step 5: the program in the link.
        if self
            .prog_ids
            .get(program)
            .is_some_and(|id| *id != info.prog_id)
        {
            let swapped = PinnedLink::from_pin(path)
                .map_err(|e| format!("{e}"))
                .and_then(|p| {
                    let ifname = ifname_of(ifindex).unwrap_or_default();
                    self.swap_into(FdLink::from(p), ifindex, program, &ifname)
                        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
                });
            match swapped {
                Ok(_) => f.restored.push(problem(
                    object,
                    &field,
                    format!(
                        "ran program id {} instead of the agent's: the agent's program swapped back in",
                        info.prog_id
                    ),
                )),
                Err(e) => f.faults.push(problem(
                    object,
                    &field,
                    format!(
                        "runs program id {}, not the agent's, and it cannot be swapped back: {e}",
                        info.prog_id
                    ),
                )),
            }
        }
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
