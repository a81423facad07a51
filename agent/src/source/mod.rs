//! Sources of cluster state, behind one trait: a directory of Kubernetes YAML manifests
//! (`dir`), and the Kubernetes API (`kube`, next).

pub mod dir;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::Notify;

pub use dir::DirSource;

use crate::status::Problem;

/// Where the agent learns about the cluster.
pub trait Source: Send {
    /// The latest complete view, when it changed since the last call; `None` when unchanged.
    /// A source never returns a half-synced view (the API source waits for the initial list of
    /// every kind).
    fn poll(&mut self) -> Result<Option<Snapshot>, SourceError>;
    /// Generation of the latest view seen (increases by one per change).
    fn generation(&self) -> u64;
    /// Woken when the source may have changed; the agent then calls `poll`.
    fn changes(&self) -> Arc<Notify>;
    /// For logs and status, e.g. "dir:/etc/palisade/manifests".
    fn describe(&self) -> String;
}

/// Objects keyed by (namespace, name); namespaces by name.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one every time the source's content changes.
    pub generation: u64,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<(String, String), Pod>,
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
    /// Problems found while reading (files that do not parse, unknown kinds...).
    pub problems: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading source directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching source directory {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown source {0:?}: expected dir:PATH")]
    Unknown(String),
}
