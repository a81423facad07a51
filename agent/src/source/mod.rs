//! Sources of cluster state, behind one trait: a directory of Kubernetes YAML manifests
//! (`dir`), and the Kubernetes API (`kube`).

pub mod dir;
pub mod kube;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_policy::cnp::ClusterNetworkPolicy;
use tokio::sync::Notify;

pub use dir::DirSource;
pub use kube::KubeSource;

use crate::status::Problem;

/// Where the agent learns about the cluster.
pub trait Source: Send {
    /// The latest complete view, when it changed since the last call; `None` when unchanged.
    /// A source never returns a half-synced view (the API source waits for the initial list of
    /// every kind).
    fn poll(&mut self) -> Result<Option<Snapshot>, SourceError>;
    /// Like `poll`, but the view includes every change made before the call (a barrier for
    /// `palisadectl wait`: a client that wrote a manifest and then waits must see it applied).
    /// Sources whose `poll` already has that property need not override it.
    fn sync(&mut self) -> Result<Option<Snapshot>, SourceError> {
        self.poll()
    }
    /// Generation of the latest view seen (increases by one per change).
    fn generation(&self) -> u64;
    /// Woken when the source may have changed; the agent then calls `poll`.
    fn changes(&self) -> Arc<Notify>;
    /// For logs and status, e.g. "dir:/etc/palisade/manifests".
    fn describe(&self) -> String;
}

/// Objects keyed by (namespace, name); namespaces and nodes by name.
///
/// Objects are shared (`Arc`), and a source hands out the same `Arc` for an object that did
/// not change since its previous snapshot (the API source's reflector stores keep one `Arc`
/// per object version; the directory source keeps the objects of unchanged files). So a new
/// snapshot copies no object, and a consumer may treat `Arc::ptr_eq` as "unchanged" to skip
/// work (it must still be correct when two equal objects come in different `Arc`s).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one every time the source's content changes.
    pub generation: u64,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub pods: BTreeMap<(String, String), Arc<Pod>>,
    pub policies: BTreeMap<(String, String), Arc<NetworkPolicy>>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`) by name.
    pub cluster_policies: BTreeMap<String, Arc<ClusterNetworkPolicy>>,
    /// Nodes by name; Services and EndpointSlices by (namespace, name). Read by both sources.
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub services: BTreeMap<(String, String), Arc<Service>>,
    pub endpoint_slices: BTreeMap<(String, String), Arc<EndpointSlice>>,
    /// Problems found while reading (files that do not parse, unknown kinds...).
    pub problems: Vec<Problem>,
}

impl Snapshot {
    /// Adds (or replaces) an object under its key.
    pub fn insert(&mut self, o: palisade_policy::Object) {
        use palisade_policy::Object;
        fn key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        }
        match o {
            Object::Namespace(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name, ns);
            }
            Object::Node(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name, n);
            }
            Object::Pod(p) => {
                self.pods.insert(key(&p.metadata), p);
            }
            Object::NetworkPolicy(np) => {
                self.policies.insert(key(&np.metadata), np);
            }
            Object::Service(s) => {
                self.services.insert(key(&s.metadata), s);
            }
            Object::EndpointSlice(es) => {
                self.endpoint_slices.insert(key(&es.metadata), es);
            }
            Object::ClusterNetworkPolicy(cnp) => {
                let name = cnp.metadata.name.clone().unwrap_or_default();
                self.cluster_policies.insert(name, cnp);
            }
        }
    }
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
    #[error("unknown source {0:?}: expected dir:PATH or kube")]
    Unknown(String),
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("loading the in-cluster config (service account)")]
    InCluster {
        #[source]
        source: ::kube::config::InClusterError,
    },
    #[error("building the Kubernetes client")]
    KubeClient {
        #[source]
        source: ::kube::Error,
    },
    #[error("the Kubernetes API source needs a tokio runtime")]
    NoRuntime,
    #[error("writing the pod CIDR file {path}")]
    PodCidrFile {
        path: PathBuf,
        #[source]
        source: palisade_node_api::Error,
    },
}
