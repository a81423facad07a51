//! Kubernetes manifests -> typed objects: the project's one manifest parser (the agent's
//! directory source, the lab and the tests all read manifests through it).
//!
//! Input is multi-document YAML, or JSON objects one after the other, as `kubectl apply -f`
//! reads them. Kinds read ([`Kind`]): Namespace, Pod, Node, Service (v1), NetworkPolicy
//! (networking.k8s.io/v1), EndpointSlice (discovery.k8s.io/v1), ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2, our own serde type [`ClusterNetworkPolicy`]). Other
//! kinds are skipped silently (a directory may hold Deployments too).
//!
//! What a caller can rely on:
//! 1. Bounded work before anything is built ([`limits`]): a file larger than
//!    [`Limits::file_bytes`] is refused before it is read; YAML is parsed by a streaming parser
//!    that stops at the first document nested deeper than [`Limits::depth`], holding more than
//!    [`Limits::document_nodes`] nodes (aliases counted as expanded) or scalar bytes, or
//!    over the alias limits; JSON documents are measured (size, depth) before they are parsed.
//!    Such a file is [`Error`] as a whole: nothing in it is trusted.
//! 2. Strict fields, as `kubectl apply --validate=strict` ([`strict`]): a document of a kind
//!    read here with a field its schema does not have (a typo such as `egress: [{from: ...}]`),
//!    a duplicate key, or a value of the wrong type is *rejected*: it yields no object, a
//!    [`Problem`] naming the document, the object, the field path and the value, and its
//!    [`ObjectKey`] in [`Manifest::rejected`] so that a caller keeping state can keep the last
//!    good version of that object enforced.
//! 3. Every other document is still read: one bad object does not hide the others.

mod cluster;
pub mod limits;
mod strict;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::cnp::ClusterNetworkPolicy;
use crate::validate::Problem;

pub use cluster::{NAMESPACE_NAME_LABEL, node_info, pod_info};
pub use limits::Limits;

/// A manifest's text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// The format of a file name, as `kubectl apply -f DIR` tells it: `.yaml` / `.yml` and
    /// `.json`; `None` for any other name.
    pub fn of_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        }
    }
}

/// The kinds Palisade reads from manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
    Service,
    EndpointSlice,
    ClusterNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ClusterNetworkPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// The one apiVersion this kind is read in.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Node | Kind::Service => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
        }
    }

    /// Whether objects of this kind live in a namespace (`default` when they name none).
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::ClusterNetworkPolicy
        )
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Which object: kind, namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.name(), self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// One object read from a manifest. Namespaced objects that name no namespace are in
/// `default`, as the API server puts them.
#[derive(Clone, Debug)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    NetworkPolicy(Arc<NetworkPolicy>),
    Node(Arc<Node>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ClusterNetworkPolicy(Arc<ClusterNetworkPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let kind = self.kind();
        let meta = self.metadata();
        ObjectKey {
            kind,
            namespace: kind
                .namespaced()
                .then(|| meta.namespace.clone().unwrap_or_else(|| "default".into())),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// What a manifest holds.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    /// The objects read, each with the index of its document.
    pub objects: Vec<(usize, Object)>,
    /// Documents of a kind read here that were rejected (wrong schema, unknown field, another
    /// apiVersion), with the object each names: a caller keeping state keeps that object's last
    /// good version.
    pub rejected: Vec<(usize, ObjectKey)>,
    /// One problem per rejected or skipped document (several for several unknown fields),
    /// naming the document (`object`), the field and the value.
    pub problems: Vec<Problem>,
}

/// A manifest that cannot be read at all (not YAML/JSON, or over a limit): none of its
/// documents can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is larger than [`Limits::file_bytes`].
    #[error("{bytes} bytes, over the limit of {limit} bytes per manifest file")]
    TooLarge { bytes: u64, limit: u64 },
    /// A document is not valid YAML/JSON.
    #[error("document {document}: not valid {format}: {message}")]
    Syntax {
        document: usize,
        format: &'static str,
        message: String,
    },
    /// A document exceeds one of the [`Limits`]; `what` says which, with the limit.
    #[error("document {document}: {what}")]
    Limit { document: usize, what: String },
}

impl Error {
    /// The document the error is in, if it is about one.
    pub fn document(&self) -> Option<usize> {
        match self {
            Error::TooLarge { .. } => None,
            Error::Syntax { document, .. } | Error::Limit { document, .. } => Some(*document),
        }
    }
}

/// Parses a manifest with the default [`Limits`].
pub fn parse(text: &str, format: Format) -> Result<Manifest, Error> {
    parse_with(text, format, &Limits::default())
}

/// Parses a manifest. Documents are numbered from 0 in the order they appear, empty ones
/// not counted. A `kind: List` is not expanded (reported).
pub fn parse_with(text: &str, format: Format, limits: &Limits) -> Result<Manifest, Error> {
    if text.len() as u64 > limits.file_bytes {
        return Err(Error::TooLarge {
            bytes: text.len() as u64,
            limit: limits.file_bytes,
        });
    }
    let mut m = Manifest::default();
    let mut read = |document: usize, line: Option<u64>, tree: Value| {
        read_document(&mut m, document, line, tree);
    };
    match format {
        Format::Yaml => limits::yaml_documents(text, limits, &mut read)?,
        Format::Json => limits::json_documents(text, limits, &mut read)?,
    }
    Ok(m)
}

/// Parses a manifest that must hold only readable objects (tests, the lab, bundled examples):
/// the objects, or every problem and error as one message.
pub fn parse_objects(text: &str, format: Format) -> Result<Vec<Object>, String> {
    let m = parse(text, format).map_err(|e| e.to_string())?;
    if !m.problems.is_empty() {
        let all: Vec<String> = m.problems.iter().map(|p| p.to_string()).collect();
        return Err(all.join("; "));
    }
    Ok(m.objects.into_iter().map(|(_, o)| o).collect())
}

/// How problems name document `index` (and its line, when known).
fn document_name(index: usize, line: Option<u64>) -> String {
    match line {
        Some(l) => format!("document {index} (line {l})"),
        None => format!("document {index}"),
    }
}

fn str_at<'a>(tree: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(tree, |v, k| v.as_object()?.get(*k))?
        .as_str()
}

/// Classifies one document's tree and reads it into `m`.
fn read_document(m: &mut Manifest, index: usize, line: Option<u64>, tree: Value) {
    let doc = document_name(index, line);
    if !tree.is_object() {
        m.problems.push(Problem::new(
            doc,
            "",
            "not a Kubernetes object (a mapping with `kind`); skipped",
        ));
        return;
    }
    let Some(kind_name) = str_at(&tree, &["kind"]) else {
        m.problems.push(Problem::new(
            doc,
            "kind",
            "no `kind` (or not a string); skipped",
        ));
        return;
    };
    if kind_name == "List" {
        m.problems.push(Problem::new(
            doc,
            "kind",
            "kind List is not supported; write one document per object",
        ));
        return;
    }
    // Other kinds (Deployments, ConfigMaps...) may share the directory; not ours.
    let Some(kind) = Kind::from_name(kind_name) else {
        return;
    };
    let name = str_at(&tree, &["metadata", "name"]).unwrap_or_default();
    let key = ObjectKey {
        kind,
        namespace: kind.namespaced().then(|| {
            str_at(&tree, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_string()
        }),
        name: name.to_string(),
    };
    let object = format!("{doc} {key}");
    let api_version = str_at(&tree, &["apiVersion"]);
    // A missing `apiVersion` is read as the one version read here (test fixtures and the
    // policy crate's callers omit it); another version is refused: its fields may mean
    // something else.
    let version_ok = api_version.is_none_or(|v| v == kind.api_version());
    if !version_ok {
        m.problems.push(Problem::new(
            object,
            "apiVersion",
            format!(
                "{kind_name} {:?} is not read (only {}); rejected",
                api_version.unwrap_or_default(),
                kind.api_version()
            ),
        ));
        m.rejected.push((index, key));
        return;
    }
    if name.is_empty() {
        m.problems
            .push(Problem::new(object, "metadata.name", "no name; rejected"));
        return;
    }
    match strict::typed(kind, &tree) {
        Ok(o) => m.objects.push((index, o)),
        Err(fields) => {
            for f in fields {
                m.problems.push(Problem::new(
                    object.clone(),
                    f.path,
                    format!("{}; the {kind_name} is rejected", f.message),
                ));
            }
            m.rejected.push((index, key));
        }
    }
}

#[cfg(test)]
mod tests;
