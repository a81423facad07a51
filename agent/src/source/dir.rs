//! `--source dir:PATH`: a directory of Kubernetes manifests, watched with inotify.
//!
//! Files: `*.yaml` / `*.yml` (multi-document YAML) and `*.json` (one JSON object, or several
//! one after the other), as `kubectl apply -f DIR` reads them. Other names (such as the temporary file of
//! a `write + rename`) are neither read nor watched. Kinds read: Namespace, Pod, Node, Service
//! (v1), NetworkPolicy (networking.k8s.io/v1), EndpointSlice (discovery.k8s.io/v1); other kinds
//! are ignored, another apiVersion of these is reported and skipped.
//!
//! Nothing is lost on bad input: a file that does not parse keeps contributing the objects it
//! held when it last parsed, and the parse error is reported as a problem naming the file and
//! document.
//!
//! Cost: a rescan reads every manifest file but parses only those whose content changed since
//! the last rescan (a cache keyed by path and content hash). Parsing is what costs: about
//! 60 ms per MB of YAML (libyaml's scanner alone is ~40 ms/MB) against ~6 ms per MB of JSON, so
//! large generated policies are better written as `.json`. The Kubernetes API source receives
//! JSON and never pays the YAML cost.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::{Snapshot, Source, SourceError};
use crate::status::Problem;

/// One parsed object of a manifest file, as snapshots share it (namespaced objects without a
/// namespace are already put in `default`).
#[derive(Clone, Debug)]
enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    NetworkPolicy(Arc<NetworkPolicy>),
    Node(Arc<Node>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
}

/// (namespace, name) of a namespaced object, `default` when it names none; sets it.
fn default_namespace(meta: &mut ObjectMeta) -> (String, String) {
    let ns = meta
        .namespace
        .get_or_insert_with(|| "default".into())
        .clone();
    (ns, meta.name.clone().unwrap_or_default())
}

/// What the last rescan made of one file.
struct Parsed {
    /// Hash of the content this was parsed from.
    hash: u64,
    /// The objects the file contributes: its own, or its last good ones when it failed.
    objects: Arc<Vec<Object>>,
    /// Problems of this file, already naming it.
    problems: Vec<Problem>,
}

/// A directory of manifests.
pub struct DirSource {
    dir: PathBuf,
    fingerprint: Option<u64>,
    generation: u64,
    /// Per file: its content hash and what it contributes (last good objects on failure).
    files: BTreeMap<PathBuf, Parsed>,
    changes: Arc<Notify>,
    watching: bool,
}

/// Whether the directory source reads a file of this name.
fn is_manifest_name(name: &std::ffi::OsStr) -> bool {
    matches!(
        Path::new(name).extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn content_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
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
            files: BTreeMap::new(),
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
        // Not IN_MODIFY: a file is read once its writer closes it (or renames it into
        // place), not once per write(2) while it is half written. The periodic resync still
        // catches a writer that never closes.
        ino.add_watch(
            &self.dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_CREATE,
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
                // Drain the events; wake the agent only for names it reads (or when events were
                // lost: the queue overflowed, or the directory itself went away). Writing a
                // temporary file next to a manifest then costs no rescan.
                match guard.get_inner().0.read_events() {
                    Ok(events) => {
                        let relevant = events.iter().any(|e| match &e.name {
                            Some(name) => is_manifest_name(name),
                            None => true,
                        });
                        if relevant {
                            notify.notify_one();
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
        self.watching = true;
        Ok(())
    }

    /// Reads the directory. Returns a new snapshot when its content changed since the last
    /// call, `None` otherwise. Only files whose content changed are parsed again.
    pub fn rescan(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let files = self.read_files()?;
        let hashed: Vec<(PathBuf, u64, String)> = files
            .into_iter()
            .map(|(path, text)| (path, content_hash(&text), text))
            .collect();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (path, hash, _) in &hashed {
            path.hash(&mut h);
            hash.hash(&mut h);
        }
        let fp = h.finish();
        if self.fingerprint == Some(fp) {
            return Ok(None);
        }
        self.fingerprint = Some(fp);
        self.generation += 1;
        let mut next: BTreeMap<PathBuf, Parsed> = BTreeMap::new();
        for (path, hash, text) in hashed {
            let old = self.files.remove(&path);
            let parsed = match old {
                Some(p) if p.hash == hash => p,
                old => parse_file(&path, hash, &text, old),
            };
            next.insert(path, parsed);
        }
        self.files = next;
        let mut snap = Snapshot {
            generation: self.generation,
            problems: self
                .files
                .values()
                .flat_map(|p| p.problems.iter().cloned())
                .collect(),
            ..Default::default()
        };
        // Shared, not copied: an object of an unchanged file keeps its `Arc`.
        for parsed in self.files.values() {
            for o in parsed.objects.iter() {
                match o {
                    Object::Namespace(ns) => {
                        let name = ns.metadata.name.clone().unwrap_or_default();
                        snap.namespaces.insert(name, ns.clone());
                    }
                    Object::Pod(p) => {
                        let key = (
                            p.metadata.namespace.clone().unwrap_or_default(),
                            p.metadata.name.clone().unwrap_or_default(),
                        );
                        snap.pods.insert(key, p.clone());
                    }
                    Object::NetworkPolicy(np) => {
                        let key = (
                            np.metadata.namespace.clone().unwrap_or_default(),
                            np.metadata.name.clone().unwrap_or_default(),
                        );
                        snap.policies.insert(key, np.clone());
                    }
                    Object::Node(n) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        snap.nodes.insert(name, n.clone());
                    }
                    Object::Service(svc) => {
                        let key = (
                            svc.metadata.namespace.clone().unwrap_or_default(),
                            svc.metadata.name.clone().unwrap_or_default(),
                        );
                        snap.services.insert(key, svc.clone());
                    }
                    Object::EndpointSlice(es) => {
                        let key = (
                            es.metadata.namespace.clone().unwrap_or_default(),
                            es.metadata.name.clone().unwrap_or_default(),
                        );
                        snap.endpoint_slices.insert(key, es.clone());
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
            if !path.file_name().is_some_and(is_manifest_name) || !path.is_file() {
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

/// Parses one file whose content (hash `hash`) is new. On failure the file keeps contributing
/// the objects of `old`, its previous state.
fn parse_file(path: &Path, hash: u64, text: &str, old: Option<Parsed>) -> Parsed {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let result = if is_json {
        parse_json_manifests(text)
    } else {
        parse_manifests(text)
    };
    match result {
        Ok((objects, mut problems)) => {
            for p in &mut problems {
                p.object = format!("{} {}", path.display(), p.object);
            }
            Parsed {
                hash,
                objects: Arc::new(objects),
                problems,
            }
        }
        Err(p) => Parsed {
            hash,
            objects: old.map(|o| o.objects).unwrap_or_default(),
            problems: vec![Problem {
                object: format!("file {}", path.display()),
                field: p.field,
                message: format!("{} (keeping the objects it held before)", p.message),
            }],
        },
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

/// The kinds the agent reads from a directory.
#[derive(Clone, Copy)]
enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
    Service,
    EndpointSlice,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// The one apiVersion the agent reads this kind in.
    fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Node | Kind::Service => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
}

/// Which kind document `i` is, from its `kind` and `apiVersion`; `None` (with a problem when
/// the user should know) for documents the agent does not read.
fn classify(i: usize, meta: TypeMeta, problems: &mut Vec<Problem>) -> Option<(Kind, String)> {
    let kind = meta.kind.unwrap_or_default();
    let what = format!("document {i} ({kind})");
    let known = match kind.as_str() {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        "NetworkPolicy" => Kind::NetworkPolicy,
        "Node" => Kind::Node,
        "Service" => Kind::Service,
        "EndpointSlice" => Kind::EndpointSlice,
        "List" => {
            problems.push(Problem {
                object: what,
                field: "kind".into(),
                message: "kind List is not supported; write one document per object".into(),
            });
            return None;
        }
        // Other kinds (Deployments, ConfigMaps...) may share the directory; not ours.
        _ => return None,
    };
    // Namespaces and Pods are core/v1 only and have always been read without checking
    // apiVersion; the other kinds must name the one version the agent reads.
    let checked = !matches!(known, Kind::Namespace | Kind::Pod);
    if checked && meta.api_version.as_deref() != Some(known.api_version()) {
        problems.push(Problem {
            object: what,
            field: "apiVersion".into(),
            message: format!(
                "{} apiVersion {:?} is not {}; skipped",
                known.name(),
                meta.api_version.unwrap_or_default(),
                known.api_version()
            ),
        });
        return None;
    }
    Some((known, what))
}

/// Deserializes a document of `kind` with `de`, a deserializer of one format.
fn typed<'de, D: serde::Deserializer<'de>>(kind: Kind, de: D) -> Result<Object, D::Error> {
    Ok(match kind {
        Kind::Namespace => Object::Namespace(Arc::new(Namespace::deserialize(de)?)),
        Kind::Pod => {
            let mut p = Pod::deserialize(de)?;
            default_namespace(&mut p.metadata);
            Object::Pod(Arc::new(p))
        }
        Kind::NetworkPolicy => {
            let mut np = NetworkPolicy::deserialize(de)?;
            default_namespace(&mut np.metadata);
            Object::NetworkPolicy(Arc::new(np))
        }
        Kind::Node => Object::Node(Arc::new(Node::deserialize(de)?)),
        Kind::Service => {
            let mut svc = Service::deserialize(de)?;
            default_namespace(&mut svc.metadata);
            Object::Service(Arc::new(svc))
        }
        Kind::EndpointSlice => {
            let mut es = EndpointSlice::deserialize(de)?;
            default_namespace(&mut es.metadata);
            Object::EndpointSlice(Arc::new(es))
        }
    })
}

fn schema_problem(what: String, kind: Kind, field: String, e: impl std::fmt::Display) -> Problem {
    let kind = kind.name();
    Problem {
        object: what,
        field,
        message: format!("does not match the {kind} schema: {e}; skipped"),
    }
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
        // Borrowing the value: the typed pass below consumes it, nothing is copied.
        let meta = TypeMeta::deserialize(&value).map_err(|e| ParseFailure {
            field: format!("document {i}"),
            message: format!("not a Kubernetes object: {e}"),
        })?;
        let Some((kind, what)) = classify(i, meta, &mut problems) else {
            continue;
        };
        match typed(kind, value) {
            Ok(o) => objects.push(o),
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| format!("line {}", l.line()))
                    .unwrap_or_default();
                problems.push(schema_problem(what, kind, line, e));
            }
        }
    }
    Ok((objects, problems))
}

/// Parses a JSON manifest: one object, or several one after the other (whitespace between),
/// with the same rules as `parse_manifests`. JSON that does not parse fails the whole file.
fn parse_json_manifests(text: &str) -> Result<(Vec<Object>, Vec<Problem>), ParseFailure> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let stream =
        serde_json::Deserializer::from_str(text).into_iter::<&serde_json::value::RawValue>();
    for (i, doc) in stream.enumerate() {
        // Each document is scanned once as raw JSON, then deserialized straight into its type
        // from the text: no intermediate tree.
        let raw = doc.map_err(|e| ParseFailure {
            field: format!("document {i}"),
            message: format!("not valid JSON: {e}"),
        })?;
        let meta: TypeMeta = serde_json::from_str(raw.get()).map_err(|e| ParseFailure {
            field: format!("document {i}"),
            message: format!("not a Kubernetes object: {e}"),
        })?;
        let Some((kind, what)) = classify(i, meta, &mut problems) else {
            continue;
        };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        match typed(kind, &mut de) {
            Ok(o) => objects.push(o),
            Err(e) => problems.push(schema_problem(what, kind, String::new(), e)),
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
    fn nodes_services_and_endpoint_slices_are_read_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cluster.yaml"),
            r#"apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status:
  addresses:
  - {type: InternalIP, address: 192.168.254.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: dflt}
spec: {ports: [{port: 53}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: x
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  targetRef: {kind: Pod, name: a, namespace: x}
ports: [{name: http, port: 8080, protocol: TCP}]
"#,
        )
        .unwrap();
        let mut s = DirSource::new(dir.path());
        let snap = s.rescan().unwrap().unwrap();
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let n1 = &snap.nodes["n1"];
        assert_eq!(
            n1.spec.as_ref().unwrap().pod_cidrs.as_deref().unwrap(),
            ["10.244.1.0/24", "fd00:10:244:1::/64"]
        );
        assert_eq!(
            snap.services.keys().cloned().collect::<Vec<_>>(),
            [
                ("default".to_string(), "dflt".to_string()),
                ("x".into(), "web".into())
            ]
        );
        let es = &snap.endpoint_slices[&("x".to_string(), "web-abc".to_string())];
        assert_eq!(es.endpoints.as_ref().unwrap()[0].addresses, ["10.244.1.5"]);
        assert_eq!(es.ports.as_ref().unwrap()[0].port, Some(8080));
        // A Node removed from the directory leaves the snapshot.
        std::fs::remove_file(dir.path().join("cluster.yaml")).unwrap();
        let snap = s.rescan().unwrap().unwrap();
        assert!(snap.nodes.is_empty() && snap.services.is_empty());
        assert!(snap.endpoint_slices.is_empty());
    }

    #[test]
    fn endpoint_slice_of_another_api_version_is_skipped_and_named() {
        let (objs, problems) = parse_manifests(
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 1, "the Node is read");
        assert!(matches!(objs[0], Object::Node(_)));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].field == "apiVersion" && problems[0].message.contains("v1beta1"),
            "{problems:?}"
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

    #[test]
    fn json_manifests_are_read_and_temporary_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.json"),
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny","namespace":"x"},"spec":{"podSelector":{}}}
               {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".p.yaml.tmp"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: tmp}\n",
        )
        .unwrap();
        let mut s = DirSource::new(dir.path());
        let snap = s.rescan().unwrap().unwrap();
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        assert!(snap.policies.contains_key(&("x".into(), "deny".into())));
        assert_eq!(snap.namespaces.keys().collect::<Vec<_>>(), ["x"]);
        // A JSON file that stops parsing keeps its objects and is named.
        std::fs::write(dir.path().join("p.json"), "{\"kind\": ").unwrap();
        let snap = s.rescan().unwrap().unwrap();
        assert_eq!(snap.policies.len(), 1, "last good policy kept");
        assert!(
            snap.problems.len() == 1 && snap.problems[0].object.contains("p.json"),
            "{:?}",
            snap.problems
        );
        // A document of the wrong schema is skipped and named; the others are kept.
        std::fs::write(
            dir.path().join("p.json"),
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"x"},"spec":{"containers":5}}
               {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y"}}"#,
        )
        .unwrap();
        let snap = s.rescan().unwrap().unwrap();
        assert!(snap.policies.is_empty());
        assert!(snap.namespaces.contains_key("y"));
        assert!(
            snap.problems.len() == 1 && snap.problems[0].object.contains("document 0 (Pod)"),
            "{:?}",
            snap.problems
        );
    }
}
