//! One rescan of the manifest directory: read the files (bounded), parse those whose content
//! changed (`palisade_policy::manifest`, the project's one parser), and merge every file's
//! objects into a snapshot, keeping the last good version of each object that is rejected or
//! defined twice.
//!
//! The merge, for every object (kind + namespace/name) that some document names:
//! 1. Defined once and readable: that version.
//! 2. Defined once but rejected (unknown field, wrong schema, another apiVersion): the version
//!    the previous snapshot held, if any (the last good state stays enforced); else none.
//! 3. Defined in several documents (in one file or across files): a problem naming every
//!    place; the version the previous snapshot held, if any; else the last readable one in
//!    file-name then document order, which is what `kubectl apply -f DIR` would leave.
//! 4. A file that cannot be read or parsed at all (too large, not UTF-8, not YAML, over a
//!    parser limit) keeps contributing what it contributed before.
//!
//! Named nowhere any more: gone (the object was deleted).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_policy::manifest::{self, Format, Limits, Object, ObjectKey};

use crate::source::kube::PodCidrWriter;
use crate::source::{Snapshot, SourceError};
use crate::status::Problem;

/// What the last rescan made of one file.
struct Parsed {
    /// Hash of the content (or, for a file not read, of its size) this was made from.
    hash: u64,
    /// The objects the file contributes, with their document index: its own, or its previous
    /// ones when it cannot be read at all.
    objects: Arc<Vec<(usize, Object)>>,
    /// Objects its documents name but that were rejected.
    rejected: Vec<(usize, ObjectKey)>,
    /// Problems of this file, already naming it.
    problems: Vec<Problem>,
}

/// Where a document defines an object: file, document index, the object if it is readable.
type Place<'a> = (&'a Path, usize, Option<&'a Object>);

/// A manifest file as read from the directory.
enum Content {
    Text(String),
    /// Not read (too large, not UTF-8): why, and a hash of what was seen so that a change of
    /// the file is noticed.
    Unreadable {
        hash: u64,
        why: String,
    },
}

/// The directory's state across rescans.
pub(super) struct Scanner {
    dir: PathBuf,
    limits: Limits,
    fingerprint: Option<u64>,
    pub(super) generation: u64,
    files: BTreeMap<PathBuf, Parsed>,
    /// Every object of the previous snapshot: the last good versions.
    last_good: BTreeMap<ObjectKey, Object>,
    /// Writes this node's pod CIDRs (from its Node object, when the directory has one) to
    /// the file the CNI plugin reads, as the API source does.
    pub(super) pod_cidrs: Option<PodCidrWriter>,
}

fn hash_of(x: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// A parser problem, naming the file too.
fn problem(p: palisade_policy::Problem, file: &Path) -> Problem {
    Problem {
        object: format!("file {} {}", file.display(), p.object),
        field: p.field,
        message: p.message,
    }
}

impl Scanner {
    pub(super) fn new(dir: PathBuf, limits: Limits) -> Self {
        Scanner {
            dir,
            limits,
            fingerprint: None,
            generation: 0,
            files: BTreeMap::new(),
            last_good: BTreeMap::new(),
            pod_cidrs: None,
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory. Returns a new snapshot when its content changed since the last
    /// call, `None` otherwise. Only files whose content changed are parsed again.
    pub(super) fn rescan(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let files = self.read_files()?;
        let hashed: Vec<(PathBuf, u64, Content)> = files
            .into_iter()
            .map(|(path, content)| {
                let hash = match &content {
                    Content::Text(t) => hash_of(t),
                    Content::Unreadable { hash, .. } => *hash,
                };
                (path, hash, content)
            })
            .collect();
        let fp = hash_of(
            hashed
                .iter()
                .map(|(path, hash, _)| (path, hash))
                .collect::<Vec<_>>(),
        );
        if self.fingerprint == Some(fp) {
            return Ok(None);
        }
        self.fingerprint = Some(fp);
        self.generation += 1;
        let mut next: BTreeMap<PathBuf, Parsed> = BTreeMap::new();
        for (path, hash, content) in hashed {
            let old = self.files.remove(&path);
            let parsed = match old {
                Some(p) if p.hash == hash => p,
                old => self.parse_file(&path, hash, content, old),
            };
            next.insert(path, parsed);
        }
        self.files = next;
        let mut snap = self.merge();
        if let Some(w) = &mut self.pod_cidrs {
            // No Node object of this node: the user gives podCIDRs in the CNI config.
            let node = snap.nodes.get(w.node()).cloned();
            if let Some(p) = node.and_then(|n| w.update(Some(&n))) {
                snap.problems.push(p);
            }
        }
        Ok(Some(snap))
    }

    fn read_files(&self) -> Result<Vec<(PathBuf, Content)>, SourceError> {
        let err = |source| SourceError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            if Format::of_path(&path).is_none() {
                continue;
            }
            // Regular files only (following links): a FIFO or a device named `x.yaml` would
            // block or never end.
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Removed between listing and reading: simply gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            let unreadable = |why: String| Content::Unreadable {
                hash: hash_of((meta.len(), meta.modified().ok())),
                why,
            };
            if meta.len() > self.limits.file_bytes {
                out.push((
                    path,
                    unreadable(
                        manifest::Error::TooLarge {
                            bytes: meta.len(),
                            limit: self.limits.file_bytes,
                        }
                        .to_string(),
                    ),
                ));
                continue;
            }
            match read_bounded(&path, self.limits.file_bytes) {
                Ok(text) => out.push((path, Content::Text(text))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Not UTF-8, or grown past the limit since the stat: this file's problem,
                // not the directory's.
                Err(e) => {
                    let why = e.to_string();
                    out.push((path, unreadable(why)));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Parses one file whose content (hash `hash`) is new. When it cannot be read at all it
    /// keeps contributing what `old`, its previous state, contributed.
    fn parse_file(&self, path: &Path, hash: u64, content: Content, old: Option<Parsed>) -> Parsed {
        let failure = match content {
            Content::Text(text) => {
                let format = Format::of_path(path).unwrap_or(Format::Yaml);
                match manifest::parse_with(&text, format, &self.limits) {
                    Ok(m) => {
                        return Parsed {
                            hash,
                            objects: Arc::new(m.objects),
                            rejected: m.rejected,
                            problems: m.problems.into_iter().map(|p| problem(p, path)).collect(),
                        };
                    }
                    Err(e) => (
                        e.document()
                            .map(|d| format!("document {d}"))
                            .unwrap_or_default(),
                        match e {
                            manifest::Error::Syntax {
                                message, format, ..
                            } => {
                                format!("not valid {format}: {message}")
                            }
                            manifest::Error::Limit { what, .. } => what,
                            e @ manifest::Error::TooLarge { .. } => e.to_string(),
                        },
                    ),
                }
            }
            Content::Unreadable { why, .. } => (String::new(), why),
        };
        let (field, why) = failure;
        let (objects, rejected) = match old {
            Some(o) => (o.objects, o.rejected),
            None => Default::default(),
        };
        Parsed {
            hash,
            objects,
            rejected,
            problems: vec![Problem {
                object: format!("file {}", path.display()),
                field,
                message: format!("{why} (the file is ignored; keeping the objects it held before)"),
            }],
        }
    }

    /// The snapshot of the current files, by the rules at the top of this module.
    fn merge(&mut self) -> Snapshot {
        let mut snap = Snapshot {
            generation: self.generation,
            problems: self
                .files
                .values()
                .flat_map(|p| p.problems.iter().cloned())
                .collect(),
            ..Default::default()
        };
        // Per object, every place that defines it: (file, document, the object if readable).
        let mut places: BTreeMap<ObjectKey, Vec<Place>> = BTreeMap::new();
        for (path, parsed) in &self.files {
            for (doc, o) in parsed.objects.iter() {
                places
                    .entry(o.key())
                    .or_default()
                    .push((path, *doc, Some(o)));
            }
            for (doc, key) in &parsed.rejected {
                places
                    .entry(key.clone())
                    .or_default()
                    .push((path, *doc, None));
            }
        }
        let mut good = BTreeMap::new();
        for (key, mut at) in places {
            at.sort_by_key(|(path, doc, _)| (*path, *doc));
            let before = self.last_good.get(&key);
            let chosen = match at.as_slice() {
                [(_, _, Some(o))] => Some(*o),
                [(_, _, None)] => before,
                _ => {
                    let last = at.iter().rev().find_map(|(_, _, o)| *o);
                    let chosen = before.or(last);
                    let list: Vec<String> = at
                        .iter()
                        .map(|(path, doc, o)| {
                            let bad = if o.is_none() { " (rejected)" } else { "" };
                            format!("{} document {doc}{bad}", path.display())
                        })
                        .collect();
                    let keeping = match (before, last) {
                        (Some(_), _) => "enforcing the version enforced before".to_string(),
                        (None, Some(_)) => {
                            "enforcing the last one in file order, as kubectl apply -f DIR would"
                                .to_string()
                        }
                        (None, None) => "none is readable".to_string(),
                    };
                    snap.problems.push(Problem {
                        object: key.to_string(),
                        field: "metadata.name".into(),
                        message: format!(
                            "defined {} times: {}; {keeping}; remove all but one",
                            at.len(),
                            list.join(", ")
                        ),
                    });
                    chosen
                }
            };
            if let Some(o) = chosen {
                good.insert(key, o.clone());
            }
        }
        // Shared, not copied: an object of an unchanged file keeps its `Arc`.
        for o in good.values() {
            snap.insert(o.clone());
        }
        self.last_good = good;
        snap
    }
}

/// Reads at most `limit` bytes of a file as UTF-8; more is an error, so a file that grew
/// since it was measured is not read without bound.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("over the limit of {limit} bytes per manifest file"),
        ));
    }
    Ok(text)
}
