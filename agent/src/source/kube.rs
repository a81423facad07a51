//! `--source kube`: the Kubernetes API, through kube-rs watchers feeding reflector stores.
//!
//! One watcher per kind in [`WATCHED`]. Each runs kube-rs's list-then-watch state machine
//! (relist on `410 Gone`, resume from the last resourceVersion when a watch ends) behind its
//! default exponential backoff, and feeds a reflector [`Store`]. The source is *complete* once
//! every kind has finished its initial list (`InitDone`); before that `poll` returns `None`,
//! so the agent never enforces a half-synced view. A relist later on does not make it
//! incomplete: the reflector swaps a relisted kind in only at its `InitDone`.
//!
//! ClusterNetworkPolicies come from a CRD the user installs (from sigs.k8s.io/network-policy-api
//! v0.2.0). While the API server does not serve the resource (`404` on its list), no such
//! object can exist: the kind counts as listed and empty, the snapshot names the missing
//! resource as a problem, and the watcher keeps retrying, so a CRD installed later is picked
//! up. Any other error keeps the source incomplete, as for the built-in kinds.
//!
//! Objects are pruned before they are stored (see [`Watched::prune`]): `managedFields`,
//! `resourceVersion`, the last-applied annotation, and for Pods and Nodes the status the agent
//! does not read (conditions, container statuses, heartbeats). A watch event that leaves the
//! pruned object as it was is not a change: the generation does not move and `poll` returns
//! nothing, which keeps heartbeats and readiness flaps from recompiling policy, and makes a
//! reconnect or relist that finds the same objects a no-op.
//!
//! This node's `Node.spec.podCIDRs` are written to `<state-dir>/podcidrs.json` (the file the
//! CNI plugin reads when its config has no `podCIDRs`) before the source is complete, and
//! again whenever they change.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use palisade_policy::cnp::ClusterNetworkPolicy;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Snapshot, Source, SourceError};
use crate::status::Problem;

/// (API group, resource) of every kind the source lists and watches; `""` is the core group.
/// deploy/palisade.yaml grants get/list/watch on exactly these (a test checks it).
pub const WATCHED: &[(&str, &str)] = &[
    ("", "nodes"),
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("networking.k8s.io", "networkpolicies"),
    ("discovery.k8s.io", "endpointslices"),
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
];

/// Name of the pod CIDR file under the state directory (the node contract's).
pub use palisade_node_api::podcidr::FILE_NAME as POD_CIDR_FILE;

/// Annotation `kubectl apply` leaves on objects: a full copy of the object, never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A kind the source watches: its index in [`WATCHED`] and what of it is kept.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + PartialEq + Send + Sync + 'static
{
    /// Index in [`WATCHED`].
    const INDEX: usize;
    /// Served by a CRD the user installs: a `404` on its list means "no such objects" (see
    /// the module doc).
    const OPTIONAL: bool = false;
    /// Drops what the agent does not read, so that changes to it are not changes.
    fn prune(&mut self);
}

fn prune_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.resource_version = None;
    if let Some(a) = &mut m.annotations {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

impl Watched for Node {
    const INDEX: usize = 0;
    /// Keeps metadata, spec (podCIDRs, taints) and status.addresses; drops conditions
    /// (heartbeats every few seconds), images, capacity and the rest of the status.
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.status = self.status.take().map(|s| NodeStatus {
            addresses: s.addresses,
            ..Default::default()
        });
    }
}

impl Watched for Namespace {
    const INDEX: usize = 1;
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.status = None;
    }
}

impl Watched for Pod {
    const INDEX: usize = 2;
    /// Keeps what a pod is as a policy peer or subject: metadata (labels), nodeName,
    /// hostNetwork, container names and ports (named ports), phase and addresses.
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        let keep_ports = |cs: Vec<Container>| -> Vec<Container> {
            cs.into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    restart_policy: c.restart_policy,
                    ..Default::default()
                })
                .collect()
        };
        self.spec = self.spec.take().map(|s| PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: keep_ports(s.containers),
            init_containers: s.init_containers.map(keep_ports),
            ..Default::default()
        });
        self.status = self.status.take().map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            host_ips: s.host_ips,
            ..Default::default()
        });
    }
}

impl Watched for Service {
    const INDEX: usize = 3;
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
    }
}

impl Watched for NetworkPolicy {
    const INDEX: usize = 4;
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
    }
}

impl Watched for EndpointSlice {
    const INDEX: usize = 5;
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
    }
}

impl Watched for ClusterNetworkPolicy {
    const INDEX: usize = 6;
    const OPTIONAL: bool = true;
    /// The status is the implementations' (conditions), not policy.
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.status = None;
    }
}

/// A client configuration: from `kubeconfig` when given (its current context), else the
/// in-cluster service account.
pub async fn client_config(kubeconfig: Option<&Path>) -> Result<kube::Config, SourceError> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                SourceError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| SourceError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })
        }
        None => kube::Config::incluster().map_err(|source| SourceError::InCluster { source }),
    }
}

/// State the watcher tasks share with `poll`. Tasks apply an event to their store and bump
/// the generation under this lock, and `poll` reads the stores under it, so a snapshot's
/// content is exactly that of its generation.
#[derive(Default)]
struct State {
    /// Per kind of [`WATCHED`]: initial list done.
    listed: [bool; WATCHED.len()],
    /// Per kind: an optional kind whose resource the API server does not serve (404).
    missing: [bool; WATCHED.len()],
    /// Every kind listed once.
    complete: bool,
    /// 0 until complete; 1 at completion; +1 per change after.
    generation: u64,
    /// About this node and its pod CIDR file.
    node_problem: Option<Problem>,
}

struct Shared {
    state: Mutex<State>,
    changes: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A task that panicked while holding the lock left the state as it was between
        // events; carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reflector stores, one per kind.
struct Stores {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    policies: Store<NetworkPolicy>,
    endpoint_slices: Store<EndpointSlice>,
    cluster_policies: Store<ClusterNetworkPolicy>,
}

/// The Kubernetes API source.
pub struct KubeSource {
    shared: Arc<Shared>,
    stores: Stores,
    tasks: Vec<JoinHandle<()>>,
    /// Generation of the last snapshot `poll` returned.
    returned: u64,
    cluster: String,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    /// Starts one watcher task per kind on the current tokio runtime. `node` is this node's
    /// name; its pod CIDRs are written to `state_dir/podcidrs.json`.
    pub fn start(
        config: kube::Config,
        node: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Result<KubeSource, SourceError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SourceError::NoRuntime);
        }
        let cluster = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).map_err(|source| SourceError::KubeClient { source })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changes: Arc::new(Notify::new()),
        });
        let mut pod_cidrs = PodCidrWriter::new(node.into(), state_dir.into().join(POD_CIDR_FILE));
        let mut tasks = Vec::new();
        let (nodes, t) = spawn_watch::<Node>(
            &client,
            &shared,
            Some(Box::new(move |nodes: &Store<Node>| {
                let node = nodes.get(&ObjectRef::new(pod_cidrs.node()));
                pod_cidrs.update(node.as_deref())
            })),
        );
        tasks.push(t);
        let (namespaces, t) = spawn_watch::<Namespace>(&client, &shared, None);
        tasks.push(t);
        let (pods, t) = spawn_watch::<Pod>(&client, &shared, None);
        tasks.push(t);
        let (services, t) = spawn_watch::<Service>(&client, &shared, None);
        tasks.push(t);
        let (policies, t) = spawn_watch::<NetworkPolicy>(&client, &shared, None);
        tasks.push(t);
        let (endpoint_slices, t) = spawn_watch::<EndpointSlice>(&client, &shared, None);
        tasks.push(t);
        let (cluster_policies, t) = spawn_watch::<ClusterNetworkPolicy>(&client, &shared, None);
        tasks.push(t);
        Ok(KubeSource {
            shared,
            stores: Stores {
                nodes,
                namespaces,
                pods,
                services,
                policies,
                endpoint_slices,
                cluster_policies,
            },
            tasks,
            returned: 0,
            cluster,
        })
    }

    /// True once every kind has been listed.
    pub fn is_complete(&self) -> bool {
        self.shared.lock().complete
    }

    /// The resources whose initial list has not completed yet.
    pub fn unlisted(&self) -> Vec<&'static str> {
        let st = self.shared.lock();
        WATCHED
            .iter()
            .zip(st.listed)
            .filter(|(_, done)| !done)
            .map(|((_, r), _)| *r)
            .collect()
    }

    /// Waits until every kind has been listed (the pod CIDR file is then written, when this
    /// node has pod CIDRs).
    pub async fn wait_complete(&self) {
        loop {
            let notified = self.shared.changes.notified();
            if self.is_complete() {
                return;
            }
            notified.await;
        }
    }

    fn snapshot(&self, st: &State) -> Snapshot {
        // The stores' `Arc`s are handed out as they are: no object is copied, and an object
        // that did not change keeps its `Arc` from one snapshot to the next.
        fn by_name<K: Watched>(store: &Store<K>) -> std::collections::BTreeMap<String, Arc<K>> {
            store
                .state()
                .into_iter()
                .map(|o| (o.meta().name.clone().unwrap_or_default(), o))
                .collect()
        }
        fn by_key<K: Watched>(
            store: &Store<K>,
        ) -> std::collections::BTreeMap<(String, String), Arc<K>> {
            store
                .state()
                .into_iter()
                .map(|o| {
                    let m = o.meta();
                    (
                        (
                            m.namespace.clone().unwrap_or_default(),
                            m.name.clone().unwrap_or_default(),
                        ),
                        o,
                    )
                })
                .collect()
        }
        Snapshot {
            generation: st.generation,
            namespaces: by_name(&self.stores.namespaces),
            pods: by_key(&self.stores.pods),
            policies: by_key(&self.stores.policies),
            nodes: by_name(&self.stores.nodes),
            services: by_key(&self.stores.services),
            endpoint_slices: by_key(&self.stores.endpoint_slices),
            // Not served (its CRD deleted): what the store still holds no longer exists.
            cluster_policies: if st.missing[ClusterNetworkPolicy::INDEX] {
                Default::default()
            } else {
                by_name(&self.stores.cluster_policies)
            },
            problems: st
                .node_problem
                .iter()
                .cloned()
                .chain(missing_problems(&st.missing))
                .collect(),
        }
    }
}

impl Source for KubeSource {
    fn poll(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let st = self.shared.lock();
        if !st.complete || st.generation == self.returned {
            return Ok(None);
        }
        let snap = self.snapshot(&st);
        drop(st);
        self.returned = snap.generation;
        Ok(Some(snap))
    }

    fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    fn changes(&self) -> Arc<Notify> {
        self.shared.changes.clone()
    }

    fn describe(&self) -> String {
        format!("kube:{}", self.cluster)
    }
}

/// The resources of optional kinds the API server does not serve, as problems.
fn missing_problems(missing: &[bool; WATCHED.len()]) -> impl Iterator<Item = Problem> + '_ {
    WATCHED
        .iter()
        .zip(missing)
        .filter(|(_, m)| **m)
        .map(|((group, resource), _)| Problem {
            object: format!("resource {group}/{resource}"),
            field: String::new(),
            message: "not served by the API server (its CRD is not installed): none of these \
                      objects can exist, none is enforced; install the CRD from \
                      sigs.k8s.io/network-policy-api v0.2.0 (docs/install.md)"
                .into(),
        })
}

/// Called with a kind's store after it changed (and after its initial list); what it returns
/// replaces the source's node problem.
type OnChange<K> = Box<dyn FnMut(&Store<K>) -> Option<Problem> + Send>;

fn spawn_watch<K: Watched>(
    client: &kube::Client,
    shared: &Arc<Shared>,
    on_change: Option<OnChange<K>>,
) -> (Store<K>, JoinHandle<()>) {
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let task = tokio::spawn(watch_kind(
        api,
        writer,
        reader.clone(),
        shared.clone(),
        on_change,
    ));
    (reader, task)
}

/// The store's content by object reference (to compare a relist with what it replaces).
fn contents<K: Watched>(store: &Store<K>) -> HashMap<ObjectRef<K>, Arc<K>> {
    store
        .state()
        .into_iter()
        .map(|o| (ObjectRef::from_obj(&*o), o))
        .collect()
}

async fn watch_kind<K: Watched>(
    api: Api<K>,
    mut writer: reflector::store::Writer<K>,
    reader: Store<K>,
    shared: Arc<Shared>,
    mut on_change: Option<OnChange<K>>,
) {
    let resource = WATCHED[K::INDEX].1;
    // kube-rs's watcher: list (paged), then watch from the list's resourceVersion; a watch
    // that ends is resumed from the last resourceVersion seen, a 410 Gone restarts with a
    // list. The default backoff (0.8 s doubling to 30 s, reset after 120 s of success)
    // spaces out retries after errors.
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e.modify(K::prune),
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(resource, "watch expired (410 Gone): relisting");
                continue;
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if K::OPTIONAL && status.code == 404 =>
            {
                not_served::<K>(&shared);
                continue;
            }
            Err(e) => {
                tracing::warn!(resource, "{e}; retrying with backoff");
                continue;
            }
        };
        let mut st = shared.lock();
        let changed = match &event {
            Event::Apply(o) => reader.get(&ObjectRef::from_obj(o)).as_deref() != Some(o),
            Event::Delete(o) => reader.get(&ObjectRef::from_obj(o)).is_some(),
            Event::Init | Event::InitApply(_) => false,
            Event::InitDone => {
                let before = contents(&reader);
                writer.apply_watcher_event(&event);
                contents(&reader) != before
            }
        };
        if !matches!(event, Event::InitDone) {
            writer.apply_watcher_event(&event);
        }
        let listed_now = matches!(event, Event::InitDone) && !st.listed[K::INDEX];
        // A resource served again after a 404 (its CRD installed): the problem goes.
        let served_again = matches!(event, Event::InitDone) && st.missing[K::INDEX];
        let changed = changed || served_again;
        if matches!(event, Event::InitDone) {
            st.listed[K::INDEX] = true;
            st.missing[K::INDEX] = false;
            tracing::info!(resource, objects = reader.len(), "listed");
        }
        if let Some(hook) = &mut on_change
            && (changed || listed_now)
            && st.listed[K::INDEX]
        {
            st.node_problem = hook(&reader);
        }
        let wake = if !st.complete {
            if st.listed.iter().all(|l| *l) {
                st.complete = true;
                st.generation = 1;
                true
            } else {
                false
            }
        } else if changed {
            st.generation += 1;
            true
        } else {
            false
        };
        if wake {
            tracing::debug!(resource, generation = st.generation, "changed");
        }
        drop(st);
        if wake || listed_now {
            shared.changes.notify_one();
        }
    }
}

/// An optional kind's list failed with 404: listed (as empty: its objects cannot exist), and
/// missing. A change of the problem is a change of the source.
fn not_served<K: Watched>(shared: &Shared) {
    let resource = WATCHED[K::INDEX].1;
    let mut st = shared.lock();
    if st.missing[K::INDEX] && st.listed[K::INDEX] {
        return;
    }
    tracing::warn!(
        resource,
        "not served by the API server (CRD not installed?): treated as empty; retrying"
    );
    st.missing[K::INDEX] = true;
    st.listed[K::INDEX] = true;
    if !st.complete {
        if st.listed.iter().all(|l| *l) {
            st.complete = true;
            st.generation = 1;
        }
    } else {
        st.generation += 1;
    }
    drop(st);
    shared.changes.notify_one();
}

/// Writes this node's pod CIDRs to the file the CNI plugin reads (both sources use it).
pub(crate) struct PodCidrWriter {
    node: String,
    path: PathBuf,
    /// What the file holds (read at start, then what we wrote).
    written: Option<Vec<String>>,
}

impl PodCidrWriter {
    /// This node's name.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn new(node: String, path: PathBuf) -> Self {
        let written = palisade_node_api::podcidr::read(&path).ok();
        PodCidrWriter {
            node,
            path,
            written,
        }
    }

    /// Brings the file in line with this node's object; returns a problem to report when the
    /// node or its CIDRs are missing or the file cannot be written. The file is left as it is
    /// when the node has no CIDRs (a node object being recreated must not strand the plugin).
    pub(crate) fn update(&mut self, node: Option<&Node>) -> Option<Problem> {
        let object = format!("Node {}", self.node);
        let Some(node) = node else {
            return Some(Problem {
                object,
                field: String::new(),
                message: format!(
                    "this node is not in the API (--node-name / NODE_NAME?); {} not written",
                    self.path.display()
                ),
            });
        };
        let spec = node.spec.clone().unwrap_or_default();
        let cidrs = match spec.pod_cidrs {
            Some(l) if !l.is_empty() => l,
            _ => spec.pod_cidr.into_iter().collect(),
        };
        if cidrs.is_empty() {
            return Some(Problem {
                object,
                field: "spec.podCIDRs".into(),
                message: format!(
                    "no pod CIDRs assigned; {} not written (set podCIDRs in the CNI config)",
                    self.path.display()
                ),
            });
        }
        if self.written.as_ref() == Some(&cidrs) {
            return None;
        }
        match write_pod_cidr_file(&self.path, &cidrs) {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), ?cidrs, "wrote this node's pod CIDRs");
                self.written = Some(cidrs);
                None
            }
            Err(e) => {
                tracing::error!("{e:#}");
                Some(Problem {
                    object,
                    field: "spec.podCIDRs".into(),
                    message: match std::error::Error::source(&e) {
                        Some(cause) => format!("{e}: {cause}"),
                        None => e.to_string(),
                    },
                })
            }
        }
    }
}

/// Writes `{"podCIDRs": [...]}` atomically and durably (the node contract's writer).
pub fn write_pod_cidr_file(path: &Path, cidrs: &[String]) -> Result<(), SourceError> {
    palisade_node_api::podcidr::write(path, cidrs).map_err(|source| SourceError::PodCidrFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, NodeCondition, NodeSpec, PodIP};

    #[test]
    fn watched_indexes_match_the_table() {
        assert_eq!(WATCHED[Node::INDEX].1, Node::plural(&()));
        assert_eq!(WATCHED[Namespace::INDEX].1, Namespace::plural(&()));
        assert_eq!(WATCHED[Pod::INDEX].1, Pod::plural(&()));
        assert_eq!(WATCHED[Service::INDEX].1, Service::plural(&()));
        assert_eq!(WATCHED[NetworkPolicy::INDEX].1, NetworkPolicy::plural(&()));
        assert_eq!(WATCHED[EndpointSlice::INDEX].1, EndpointSlice::plural(&()));
        assert_eq!(WATCHED[NetworkPolicy::INDEX].0, NetworkPolicy::group(&()));
        assert_eq!(WATCHED[EndpointSlice::INDEX].0, EndpointSlice::group(&()));
        assert_eq!(WATCHED[Pod::INDEX].0, Pod::group(&()));
        assert_eq!(
            WATCHED[ClusterNetworkPolicy::INDEX].1,
            ClusterNetworkPolicy::plural(&())
        );
        assert_eq!(
            WATCHED[ClusterNetworkPolicy::INDEX].0,
            ClusterNetworkPolicy::group(&())
        );
    }

    #[test]
    fn pod_status_churn_is_not_a_change_but_labels_and_addresses_are() {
        let base = |rv: &str, ready: bool| -> Pod {
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a", "namespace": "x", "resourceVersion": rv,
                             "labels": {"app": "a"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                         "ports": [{"name": "http", "containerPort": 80}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.5",
                           "podIPs": [{"ip": "10.0.0.5"}],
                           "conditions": [{"type": "Ready",
                                           "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap();
            p.prune();
            p
        };
        assert_eq!(base("1", true), base("2", false));
        let p = base("1", true);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0].ports,
            Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 80,
                ..Default::default()
            }])
        );
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(
            p.status.as_ref().unwrap().pod_ips,
            Some(vec![PodIP {
                ip: "10.0.0.5".into()
            }])
        );
    }

    #[test]
    fn node_heartbeat_is_not_a_change() {
        let node = |hb: &str| {
            let mut n = Node {
                metadata: ObjectMeta {
                    name: Some("n1".into()),
                    resource_version: Some(hb.into()),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    pod_cidrs: Some(vec!["10.244.1.0/24".into()]),
                    ..Default::default()
                }),
                status: Some(NodeStatus {
                    conditions: Some(vec![NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        message: Some(hb.into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            };
            n.prune();
            n
        };
        assert_eq!(node("1"), node("2"));
    }

    #[test]
    fn pod_cidr_file_is_what_the_cni_plugin_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(POD_CIDR_FILE);
        write_pod_cidr_file(
            &path,
            &["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()],
        )
        .unwrap();
        let got = palisade_node_api::podcidr::read(&path).unwrap();
        assert_eq!(got, vec!["10.244.1.0/24", "fd00:10:244:1::/64"]);
        // No temporary file left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
