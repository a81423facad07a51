//! `--source dir:PATH`: a directory of Kubernetes YAML manifests, watched with inotify.
//!
//! Nothing is lost on bad input: a file that does not parse keeps contributing the objects it
//! held when it last parsed, and the parse error is reported as a problem naming the file and
//! document.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::{Snapshot, Source, SourceError};
use crate::status::Problem;

/// One parsed object of a manifest file.
#[derive(Clone, Debug)]
enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    NetworkPolicy(Box<NetworkPolicy>),
}

/// A directory of YAML manifests.
pub struct DirSource {
    dir: PathBuf,
    fingerprint: Option<u64>,
    generation: u64,
    /// Last objects that parsed, per file.
    last_good: BTreeMap<PathBuf, Vec<Object>>,
    changes: Arc<Notify>,
    watching: bool,
}

impl Source for DirSource {
    fn poll(&mut self) -> Result<Option<Snapshot>, SourceError> {
        if !self.watching {
            self.watch()?;
        }
        self.rescan()
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
        DirSource {
            dir: dir.into(),
            fingerprint: None,
            generation: 0,
            last_good: BTreeMap::new(),
            changes: Arc::new(Notify::new()),
            watching: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts an inotify watch whose events wake `changes()`. Needs a tokio runtime; without
    /// one (unit tests) the source is polled only.
    fn watch(&mut self) -> Result<(), SourceError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let err = |source: std::io::Error| SourceError::Watch {
            path: dir.clone(),
            source,
        };
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| err(e.into()))?;
        ino.add_watch(
            &self.dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MODIFY,
        )
        .map_err(|e| err(e.into()))?;
        // SAFETY: the inotify fd is owned by the wrapper, which the AsyncFd owns for its whole
        // lifetime; nothing else closes it.
        let fd = unsafe {
            AsyncFd::register_with_interest(InotifyFd(ino), tokio::io::Interest::READABLE)
        }
        .map_err(|e| err(e.into()))?;
        let notify = self.changes.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    return;
                };
                // Drain the events; the rescan reads the whole directory anyway.
                match guard.get_inner().0.read_events() {
                    Ok(_) => notify.notify_one(),
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(e) => {
                        tracing::warn!("inotify: {e}");
                        return;
                    }
                }
            }
        });
        self.watching = true;
        Ok(())
    }

    /// Reads the directory. Returns a new snapshot when its content changed since the last
    /// call, `None` otherwise.
    pub fn rescan(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let files = self.read_files()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        files.hash(&mut h);
        let fp = h.finish();
        if self.fingerprint == Some(fp) {
            return Ok(None);
        }
        self.fingerprint = Some(fp);
        self.generation += 1;
        let mut problems = Vec::new();
        let mut next_good = BTreeMap::new();
        for (path, text) in &files {
            match parse_manifests(text) {
                Ok((objects, mut file_problems)) => {
                    for p in &mut file_problems {
                        p.object = format!("{} {}", path.display(), p.object);
                    }
                    problems.extend(file_problems);
                    next_good.insert(path.clone(), objects);
                }
                Err(p) => {
                    problems.push(Problem {
                        object: format!("file {}", path.display()),
                        field: p.field,
                        message: format!("{} (keeping the objects it held before)", p.message),
                    });
                    if let Some(old) = self.last_good.get(path) {
                        next_good.insert(path.clone(), old.clone());
                    }
                }
            }
        }
        self.last_good = next_good;
        let mut snap = Snapshot {
            generation: self.generation,
            problems,
            ..Default::default()
        };
        for objects in self.last_good.values() {
            for o in objects {
                match o {
                    Object::Namespace(ns) => {
                        let name = ns.metadata.name.clone().unwrap_or_default();
                        snap.namespaces.insert(name, (**ns).clone());
                    }
                    Object::Pod(p) => {
                        let key = (
                            p.metadata
                                .namespace
                                .clone()
                                .unwrap_or_else(|| "default".into()),
                            p.metadata.name.clone().unwrap_or_default(),
                        );
                        let mut p = (**p).clone();
                        p.metadata.namespace = Some(key.0.clone());
                        snap.pods.insert(key, p);
                    }
                    Object::NetworkPolicy(np) => {
                        let key = (
                            np.metadata
                                .namespace
                                .clone()
                                .unwrap_or_else(|| "default".into()),
                            np.metadata.name.clone().unwrap_or_default(),
                        );
                        let mut np = (**np).clone();
                        np.metadata.namespace = Some(key.0.clone());
                        snap.policies.insert(key, np);
                    }
                }
            }
        }
        Ok(Some(snap))
    }

    fn read_files(&self) -> Result<Vec<(PathBuf, String)>, SourceError> {
        let err = |source| SourceError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            let is_yaml = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            );
            if !is_yaml || !path.is_file() {
                continue;
            }
            // A file removed between listing and reading is simply gone.
            match std::fs::read_to_string(&path) {
                Ok(text) => out.push((path, text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A whole-file parse failure.
#[derive(Debug)]
pub struct ParseFailure {
    pub field: String,
    pub message: String,
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
}

/// Parses multi-document YAML into the kinds the agent reads. A document that is not valid
/// YAML fails the whole file (its objects cannot be trusted); a document of a known kind that
/// does not match its schema, or of a kind the agent does not read, is reported and skipped.
fn parse_manifests(text: &str) -> Result<(Vec<Object>, Vec<Problem>), ParseFailure> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| ParseFailure {
            field: format!("document {i}"),
            message: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta = serde_yaml::from_value(value.clone()).map_err(|e| ParseFailure {
            field: format!("document {i}"),
            message: format!("not a Kubernetes object: {e}"),
        })?;
        let kind = meta.kind.unwrap_or_default();
        let what = format!("document {i} ({kind})");
        let parsed = match kind.as_str() {
            "Namespace" => serde_yaml::from_value(value).map(|o| Object::Namespace(Box::new(o))),
            "Pod" => serde_yaml::from_value(value).map(|o| Object::Pod(Box::new(o))),
            "NetworkPolicy" => {
                if meta.api_version.as_deref() != Some("networking.k8s.io/v1") {
                    problems.push(Problem {
                        object: what,
                        field: "apiVersion".into(),
                        message: format!(
                            "NetworkPolicy apiVersion {:?} is not networking.k8s.io/v1; skipped",
                            meta.api_version.unwrap_or_default()
                        ),
                    });
                    continue;
                }
                serde_yaml::from_value(value).map(|o| Object::NetworkPolicy(Box::new(o)))
            }
            "List" => {
                problems.push(Problem {
                    object: what,
                    field: "kind".into(),
                    message: "kind List is not supported; write one document per object".into(),
                });
                continue;
            }
            // Services, EndpointSlices and Nodes are read by the Kubernetes API source; in a
            // directory they are accepted and ignored for now.
            _ => continue,
        };
        match parsed {
            Ok(o) => objects.push(o),
            Err(e) => problems.push(Problem {
                object: what,
                field: e
                    .location()
                    .map(|l| format!("line {}", l.line()))
                    .unwrap_or_default(),
                message: format!("does not match the {kind} schema: {e}; skipped"),
            }),
        }
    }
    Ok((objects, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_directory_gives_no_new_snapshot_and_changes_bump_generation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {ns: x}\n",
        )
        .unwrap();
        let mut s = DirSource::new(dir.path());
        let snap = s.rescan().unwrap().unwrap();
        assert_eq!(snap.generation, 1);
        assert!(snap.namespaces.contains_key("x"));
        assert!(s.rescan().unwrap().is_none());
        std::fs::write(
            dir.path().join("ns2.yml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n",
        )
        .unwrap();
        let snap = s.rescan().unwrap().unwrap();
        assert_eq!(snap.generation, 2);
        assert_eq!(snap.namespaces.len(), 2);
    }

    #[test]
    fn file_that_stops_parsing_keeps_its_last_good_objects_and_reports_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        let mut s = DirSource::new(dir.path());
        assert_eq!(s.rescan().unwrap().unwrap().policies.len(), 1);
        std::fs::write(&f, "kind: NetworkPolicy\n  bad: [indent\n").unwrap();
        let snap = s.rescan().unwrap().unwrap();
        assert_eq!(snap.policies.len(), 1, "last good policy kept");
        assert_eq!(snap.problems.len(), 1);
        assert!(
            snap.problems[0].object.contains("p.yaml"),
            "{:?}",
            snap.problems
        );
    }

    #[test]
    fn document_not_matching_schema_is_skipped_and_named() {
        let (objs, problems) = parse_manifests(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: 5}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].object.contains("document 0 (Pod)"),
            "{problems:?}"
        );
    }
}
