//! `KubeSource` against a fake API server speaking the list/watch protocol (tier 0: no root,
//! no cluster). Every wait is bounded and on a condition.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fake_apiserver::{self as fake, FakeApiServer};
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeSpec, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use palisade_agent::source::kube::{POD_CIDR_FILE, client_config};
use palisade_agent::source::{KubeSource, Snapshot, Source};

const NODE: &str = "node-a";
const TIMEOUT: Duration = Duration::from_secs(20);

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..Default::default()
    }
}

fn node(name: &str, cidrs: &[&str]) -> Node {
    Node {
        metadata: meta(None, name, &[]),
        spec: Some(NodeSpec {
            pod_cidr: cidrs.first().map(|c| c.to_string()),
            pod_cidrs: (!cidrs.is_empty()).then(|| cidrs.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        }),
        status: None,
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: meta(Some(ns), name, labels),
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "c".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

fn deny_all(ns: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        }),
    }
}

fn service(ns: &str, name: &str) -> Service {
    Service {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(ns: &str, name: &str, ip: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(Some(ns), name, &[("kubernetes.io/service-name", "web")]),
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![ip.into()],
            ..Default::default()
        }]),
        ports: None,
    }
}

/// One object of every kind.
fn seed(s: &FakeApiServer) {
    s.with(|c| {
        c.apply(
            fake::NODES,
            &node(NODE, &["10.244.1.0/24", "fd00:10:244:1::/64"]),
        );
        c.apply(fake::NAMESPACES, &namespace("x", &[("team", "a")]));
        c.apply(fake::PODS, &pod("x", "p1", "10.244.1.5", &[("app", "web")]));
        c.apply(fake::PODS, &pod("x", "p2", "10.244.1.6", &[("app", "db")]));
        c.apply(fake::SERVICES, &service("x", "web"));
        c.apply(fake::ENDPOINT_SLICES, &slice("x", "web-abc", "10.244.1.5"));
        c.apply(fake::NETWORK_POLICIES, &deny_all("x", "deny"));
    });
}

struct Fixture {
    server: FakeApiServer,
    source: KubeSource,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(server: FakeApiServer) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        let config = client_config(Some(&kubeconfig)).await.unwrap();
        let source = KubeSource::start(config, NODE, dir.path()).unwrap();
        Fixture {
            server,
            source,
            dir,
        }
    }

    fn pod_cidr_file(&self) -> PathBuf {
        self.dir.path().join(POD_CIDR_FILE)
    }

    /// Polls until a snapshot satisfying `pred` arrives (bounded).
    async fn snapshot_where(&mut self, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + TIMEOUT;
        let changes = self.source.changes();
        loop {
            let notified = changes.notified();
            if let Some(s) = self.source.poll().unwrap()
                && pred(&s)
            {
                return s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no snapshot where {what} within {TIMEOUT:?}; generation {}",
                self.source.generation()
            );
            // Either woken or timed out: poll again.
            let _woken = tokio::time::timeout(left, notified).await;
        }
    }

    /// Waits (bounded) until the server state satisfies `pred`.
    fn server_until(&self, what: &str, pred: impl FnMut(&fake::Cluster) -> bool) {
        let ok = tokio::task::block_in_place(|| self.server.wait_until(TIMEOUT, pred));
        assert!(ok, "server: not {what} within {TIMEOUT:?}");
    }

    /// Every kind has an open watch started after `before` watches.
    fn watching_again(&self, before: &BTreeMap<&'static str, u64>) {
        self.server_until("watching every kind again", |c| {
            fake::ALL.iter().all(|r| {
                let s = c.stats(*r);
                s.open_watches == 1 && s.watches > before[r.path]
            })
        });
    }

    fn watch_counts(&self) -> BTreeMap<&'static str, u64> {
        fake::ALL
            .iter()
            .map(|r| (r.path, self.server.stats(*r).watches))
            .collect()
    }

    /// Applies a namespace change and returns the snapshot carrying it: proves the source is
    /// live and that nothing else moved the generation in between.
    async fn sentinel(&mut self, n: u32) -> Snapshot {
        let value = n.to_string();
        self.server.apply(
            fake::NAMESPACES,
            &namespace("sentinel", &[("n", value.as_str())]),
        );
        self.snapshot_where("the sentinel namespace is seen", |s| {
            s.namespaces.get("sentinel").and_then(|ns| {
                ns.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("n").cloned())
            }) == Some(value.clone())
        })
        .await
    }
}

fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn read_cidrs(path: &Path) -> Vec<String> {
    palisade_node_api::podcidr::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_gives_one_complete_snapshot_and_nothing_before_every_kind_is_listed() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    server.hold_lists(fake::NETWORK_POLICIES);
    let mut f = Fixture::start(server).await;
    // Every other kind listed and watching; policies still listing.
    f.server_until("five kinds watching", |c| {
        fake::ALL
            .iter()
            .filter(|r| **r != fake::NETWORK_POLICIES)
            .all(|r| c.stats(*r).open_watches == 1)
            && c.stats(fake::NETWORK_POLICIES).lists >= 1
    });
    assert!(
        f.source.poll().unwrap().is_none(),
        "half-synced view returned"
    );
    assert_eq!(f.source.generation(), 0);
    assert_eq!(f.source.unlisted(), vec!["networkpolicies"]);
    // The pod CIDR file exists before the first snapshot.
    assert_eq!(
        read_cidrs(&f.pod_cidr_file()),
        vec!["10.244.1.0/24", "fd00:10:244:1::/64"]
    );

    f.server.release_lists(fake::NETWORK_POLICIES);
    let snap = f.snapshot_where("complete", |_| true).await;
    assert_eq!(snap.generation, 1);
    assert_eq!(snap.nodes.keys().collect::<Vec<_>>(), vec![NODE]);
    assert_eq!(snap.namespaces.keys().collect::<Vec<_>>(), vec!["x"]);
    assert_eq!(
        snap.pods.keys().cloned().collect::<Vec<_>>(),
        vec![("x".into(), "p1".into()), ("x".into(), "p2".into())]
    );
    assert!(snap.policies.contains_key(&("x".into(), "deny".into())));
    assert!(snap.services.contains_key(&("x".into(), "web".into())));
    assert!(
        snap.endpoint_slices
            .contains_key(&("x".into(), "web-abc".into()))
    );
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    // Pod addresses and labels survive pruning; bookkeeping does not.
    let p1 = &snap.pods[&("x".into(), "p1".into())];
    assert_eq!(labels_of(&p1.metadata)["app"], "web");
    assert_eq!(
        p1.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.1.5")
    );
    assert_eq!(p1.metadata.resource_version, None);
    // Returned once.
    assert!(f.source.poll().unwrap().is_none());
    assert_eq!(f.source.generation(), 1);

    // What kube-rs asked: paged lists, then watches from the list's resourceVersion with
    // bookmarks.
    let reqs = f.server.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/api/v1/pods?") && r.contains("limit=500")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.starts_with("/api/v1/pods?")
            && r.contains("watch=true")
            && r.contains("allowWatchBookmarks=true")
            && r.contains("resourceVersion=")),
        "{reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_relabelled_gives_a_new_generation_and_status_churn_does_not() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;

    f.server.apply(
        fake::PODS,
        &pod(
            "x",
            "p1",
            "10.244.1.5",
            &[("app", "web"), ("tier", "front")],
        ),
    );
    let snap = f
        .snapshot_where("p1 has tier=front", |s| {
            labels_of(&s.pods[&("x".into(), "p1".into())].metadata).get("tier")
                == Some(&"front".to_string())
        })
        .await;
    assert_eq!(snap.generation, first.generation + 1);

    // A status-only update (readiness flap): a MODIFIED event with a new resourceVersion,
    // same labels and addresses. Not a change.
    let mut flapped = pod(
        "x",
        "p1",
        "10.244.1.5",
        &[("app", "web"), ("tier", "front")],
    );
    flapped.status.as_mut().unwrap().conditions =
        Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        }]);
    f.server.apply(fake::PODS, &flapped);
    let s = f.sentinel(1).await;
    assert_eq!(
        s.generation,
        snap.generation + 1,
        "status churn moved the generation"
    );

    // A pod that changes address is a change.
    f.server
        .apply(fake::PODS, &pod("x", "p2", "10.244.1.99", &[("app", "db")]));
    let s2 = f
        .snapshot_where("p2 moved", |s| {
            s.pods[&("x".into(), "p2".into())]
                .status
                .as_ref()
                .and_then(|st| st.pod_ip.clone())
                == Some("10.244.1.99".into())
        })
        .await;
    assert_eq!(s2.generation, s.generation + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_relabelled_gives_a_new_snapshot() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;
    f.server
        .apply(fake::NAMESPACES, &namespace("x", &[("team", "b")]));
    let snap = f
        .snapshot_where("x has team=b", |s| {
            labels_of(&s.namespaces["x"].metadata)["team"] == "b"
        })
        .await;
    assert_eq!(snap.generation, first.generation + 1);
    assert!(f.source.poll().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_added_and_removed_and_this_nodes_pod_cidrs_follow_its_object() {
    let server = FakeApiServer::start().unwrap();
    // This node has no pod CIDRs yet: reported, no file.
    server.apply(fake::NODES, &node(NODE, &[]));
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;
    assert!(!f.pod_cidr_file().exists());
    assert_eq!(first.problems.len(), 1, "{:?}", first.problems);
    assert!(
        first.problems[0].object.contains(NODE),
        "{:?}",
        first.problems
    );

    f.server
        .apply(fake::NODES, &node("node-b", &["10.244.2.0/24"]));
    let s = f
        .snapshot_where("node-b added", |s| s.nodes.contains_key("node-b"))
        .await;
    assert_eq!(s.nodes.len(), 2);
    assert!(!f.pod_cidr_file().exists(), "another node's CIDRs written");

    f.server.apply(
        fake::NODES,
        &node(NODE, &["10.244.1.0/24", "fd00:10:244:1::/64"]),
    );
    let s = f
        .snapshot_where("this node has CIDRs", |s| s.problems.is_empty())
        .await;
    assert_eq!(
        read_cidrs(&f.pod_cidr_file()),
        vec!["10.244.1.0/24", "fd00:10:244:1::/64"]
    );
    assert_eq!(
        s.nodes[NODE]
            .spec
            .as_ref()
            .unwrap()
            .pod_cidrs
            .as_ref()
            .unwrap()
            .len(),
        2
    );

    f.server.apply(fake::NODES, &node(NODE, &["10.244.7.0/24"]));
    f.snapshot_where("this node's CIDRs changed", |s| {
        s.nodes[NODE].spec.as_ref().unwrap().pod_cidr.as_deref() == Some("10.244.7.0/24")
    })
    .await;
    assert_eq!(read_cidrs(&f.pod_cidr_file()), vec!["10.244.7.0/24"]);

    assert!(f.server.delete(fake::NODES, "", "node-b"));
    let s = f
        .snapshot_where("node-b removed", |s| !s.nodes.contains_key("node-b"))
        .await;
    assert_eq!(s.nodes.keys().collect::<Vec<_>>(), vec![NODE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_created_updated_deleted() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;
    let key = ("x".to_string(), "allow-web".to_string());

    let mut np = deny_all("x", "allow-web");
    f.server.apply(fake::NETWORK_POLICIES, &np);
    let s = f
        .snapshot_where("created", |s| s.policies.contains_key(&key))
        .await;
    assert_eq!(s.generation, first.generation + 1);

    np.spec.as_mut().unwrap().policy_types = Some(vec!["Ingress".into(), "Egress".into()]);
    f.server.apply(fake::NETWORK_POLICIES, &np);
    let s = f
        .snapshot_where("updated", |s| {
            s.policies[&key].spec.as_ref().unwrap().policy_types
                == Some(vec!["Ingress".into(), "Egress".into()])
        })
        .await;
    assert_eq!(s.generation, first.generation + 2);

    assert!(f.server.delete(fake::NETWORK_POLICIES, "x", "allow-web"));
    let s = f
        .snapshot_where("deleted", |s| !s.policies.contains_key(&key))
        .await;
    assert_eq!(s.generation, first.generation + 3);
    assert!(s.policies.contains_key(&("x".into(), "deny".into())));
}

fn cluster_policy(name: &str, priority: i32) -> palisade_policy::cnp::ClusterNetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "tier": "Admin",
            "priority": priority,
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "b"}}}]}]
        },
        "status": {"conditions": []}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policy_created_updated_deleted() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;
    assert!(first.problems.is_empty(), "{:?}", first.problems);

    f.server
        .apply(fake::CLUSTER_NETWORK_POLICIES, &cluster_policy("guard", 5));
    let s = f
        .snapshot_where("created", |s| s.cluster_policies.contains_key("guard"))
        .await;
    assert_eq!(s.generation, first.generation + 1);
    // The status is the implementations', not policy: pruned.
    assert_eq!(s.cluster_policies["guard"].status, None);

    f.server
        .apply(fake::CLUSTER_NETWORK_POLICIES, &cluster_policy("guard", 7));
    let s = f
        .snapshot_where("updated", |s| {
            s.cluster_policies["guard"].spec.as_ref().unwrap().priority == Some(7)
        })
        .await;
    assert_eq!(s.generation, first.generation + 2);

    assert!(f.server.delete(fake::CLUSTER_NETWORK_POLICIES, "", "guard"));
    let s = f
        .snapshot_where("deleted", |s| s.cluster_policies.is_empty())
        .await;
    assert_eq!(s.generation, first.generation + 3);
}

/// Threat model: an operator installs Palisade before (or without) the upstream CRD. The
/// source must not stay incomplete forever (nothing would be enforced, not even
/// NetworkPolicies), and must not pretend ClusterNetworkPolicies are enforced: the missing
/// resource is named in status until the CRD appears, then its objects are picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_cluster_network_policy_crd_is_empty_and_named_until_installed() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    server.unserve(fake::CLUSTER_NETWORK_POLICIES);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete without the CRD", |_| true).await;
    assert!(first.policies.contains_key(&("x".into(), "deny".into())));
    assert!(first.cluster_policies.is_empty());
    assert!(
        first.problems.iter().any(|p| p.object
            == "resource policy.networking.k8s.io/clusternetworkpolicies"
            && p.message.contains("not served")),
        "{:?}",
        first.problems
    );

    f.server.serve(fake::CLUSTER_NETWORK_POLICIES);
    f.server
        .apply(fake::CLUSTER_NETWORK_POLICIES, &cluster_policy("guard", 5));
    let s = f
        .snapshot_where("the CRD installed and a policy created", |s| {
            s.cluster_policies.contains_key("guard")
        })
        .await;
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_that_ends_resumes_without_losing_events_or_spending_a_generation() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;
    let lists_before: Vec<u64> = fake::ALL.iter().map(|r| f.server.stats(*r).lists).collect();

    // Streams end, nothing changed: the watcher resumes from its resourceVersion.
    let before = f.watch_counts();
    f.server.end_watches();
    f.watching_again(&before);
    assert!(f.source.poll().unwrap().is_none());
    let s = f.sentinel(1).await;
    assert_eq!(
        s.generation,
        first.generation + 1,
        "reconnect spent a generation"
    );

    // Streams end and a pod changes before they are back: the resumed watch replays it.
    let before = f.watch_counts();
    f.server.offline(false, |c| {
        c.apply(fake::PODS, &pod("x", "p1", "10.244.1.5", &[("app", "api")]));
    });
    f.watching_again(&before);
    let s2 = f
        .snapshot_where("p1 relabelled while disconnected", |s| {
            labels_of(&s.pods[&("x".into(), "p1".into())].metadata)["app"] == "api"
        })
        .await;
    assert_eq!(s2.generation, s.generation + 1);

    // Resumed, never relisted.
    let lists_after: Vec<u64> = fake::ALL.iter().map(|r| f.server.stats(*r).lists).collect();
    assert_eq!(lists_before, lists_after);
    assert!(fake::ALL.iter().all(|r| f.server.stats(*r).expired == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_objects_deleted_while_disconnected_disappear() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    let mut f = Fixture::start(server).await;
    let first = f.snapshot_where("complete", |_| true).await;
    let lists_before: BTreeMap<&str, u64> = fake::ALL
        .iter()
        .map(|r| (r.path, f.server.stats(*r).lists))
        .collect();

    // Disconnected, p2 and the policy deleted, history compacted: every resumed watch gets
    // 410 Expired and relists.
    f.server.offline(true, |c| {
        assert!(c.delete(fake::PODS, "x", "p2"));
        assert!(c.delete(fake::NETWORK_POLICIES, "x", "deny"));
    });
    f.server_until("every kind relisted and watching", |c| {
        fake::ALL.iter().all(|r| {
            let s = c.stats(*r);
            s.expired >= 1 && s.lists > lists_before[r.path] && s.open_watches == 1
        })
    });
    let s = f
        .snapshot_where("p2 and the policy gone", |s| {
            !s.pods.contains_key(&("x".into(), "p2".into())) && s.policies.is_empty()
        })
        .await;
    assert!(s.pods.contains_key(&("x".into(), "p1".into())));
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(s.services.len(), 1);
    // One generation per kind whose relist differed (pods, policies); the four relists that
    // found the same objects spent none.
    let s = f.sentinel(1).await;
    assert_eq!(s.generation, first.generation + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_are_followed_to_the_end() {
    let server = FakeApiServer::start().unwrap();
    seed(&server);
    server.with(|c| {
        for i in 0..1200 {
            c.apply(
                fake::PODS,
                &pod("bulk", &format!("p{i:04}"), "10.244.3.1", &[]),
            );
        }
    });
    let mut f = Fixture::start(server).await;
    let s = f.snapshot_where("complete", |_| true).await;
    assert_eq!(s.pods.len(), 1202);
    assert_eq!(s.generation, 1);
    // 500 per page: three pages.
    assert_eq!(f.server.stats(fake::PODS).lists, 3);
}
