//! The directory source: files, caching, and the merge rules of `scan` (last good state,
//! duplicates, unreadable files). Threat model for the hostile cases: whoever can write a file
//! into the directory (or a tenant whose manifests are copied there) tries to stall the agent
//! or to make it drop a policy; what must hold: the other files keep being read, the last good
//! version of every object stays, and the problem names the file.

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
        snap.problems.len() == 1 && snap.problems[0].object.contains("document 0 Pod x/a"),
        "{:?}",
        snap.problems
    );
}

const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
/// The typo of issue 9: `from` in an egress rule (for `to`).
const TYPO: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{from: [{podSelector: {}}]}]\n";

fn egress_rules(snap: &Snapshot) -> Option<usize> {
    let np = snap.policies.get(&("x".to_string(), "p".to_string()))?;
    Some(np.spec.as_ref()?.egress.as_ref().map_or(0, |e| e.len()))
}

#[test]
fn unknown_field_rejects_the_object_and_keeps_its_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, DENY).unwrap();
    std::fs::write(
        dir.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    )
    .unwrap();
    let mut s = DirSource::new(dir.path());
    assert_eq!(egress_rules(&s.rescan().unwrap().unwrap()), Some(0));
    // Before: the typo read as one egress rule with no `to`, which allows everything.
    std::fs::write(&f, TYPO).unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(0), "the deny-all version stays");
    assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
    let p = &snap.problems[0];
    assert!(
        p.object.contains("p.yaml")
            && p.object.ends_with("document 0 (line 1) NetworkPolicy x/p")
            && p.field == "spec.egress[0].from"
            && p.message.contains(r#"[{"podSelector":{}}]"#),
        "{p:?}"
    );
    assert!(snap.namespaces.contains_key("x"), "other files still read");
    // Fixed: the new version is taken.
    std::fs::write(&f, TYPO.replace("from:", "to:")).unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(1));
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    // A new object with a typo is not enforced (there is no good version of it).
    let mut fresh = DirSource::new(dir.path());
    std::fs::write(&f, TYPO).unwrap();
    let snap = fresh.rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), None);
    assert_eq!(snap.problems.len(), 1);
}

#[test]
fn duplicates_are_reported_with_their_files_and_the_last_good_version_stays() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), DENY).unwrap();
    let mut s = DirSource::new(dir.path());
    assert_eq!(egress_rules(&s.rescan().unwrap().unwrap()), Some(0));
    // A second definition, in another file: the version enforced before stays.
    let allow = DENY.replace(
        "policyTypes: [Egress]",
        "policyTypes: [Egress], egress: [{}]",
    );
    std::fs::write(dir.path().join("b.yaml"), &allow).unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(0));
    assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
    let p = &snap.problems[0];
    assert_eq!(p.object, "NetworkPolicy x/p");
    assert!(
        p.message.contains("defined 2 times")
            && p.message.contains("a.yaml document 0")
            && p.message.contains("b.yaml document 0")
            && p.message.contains("enforced before"),
        "{p:?}"
    );
    // Without a previous version (a fresh agent): the last in file order, as kubectl would.
    let snap = DirSource::new(dir.path()).rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(1));
    assert!(snap.problems[0].message.contains("last one in file order"));
    // Within one file, too; the conflict gone, the remaining version is taken.
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), format!("{DENY}---\n{allow}")).unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(0));
    assert!(
        snap.problems[0].message.contains("b.yaml document 0, ")
            && snap.problems[0].message.contains("b.yaml document 1;"),
        "{:?}",
        snap.problems
    );
    std::fs::write(dir.path().join("b.yaml"), &allow).unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(1));
    assert!(snap.problems.is_empty());
}

#[test]
fn hostile_files_are_refused_alone_and_keep_what_they_held() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, DENY).unwrap();
    std::fs::write(
        dir.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    )
    .unwrap();
    let limits = palisade_policy::manifest::Limits {
        file_bytes: 1 << 20,
        ..Default::default()
    };
    let mut s = DirSource::with_limits(dir.path(), limits);
    assert_eq!(egress_rules(&s.rescan().unwrap().unwrap()), Some(0));
    let nested = format!("{DENY}x: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
    let big = format!("{DENY}# {}\n", "x".repeat(2 << 20));
    let mut laughs = format!("{DENY}x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=10 {
        laughs.push_str(&format!(
            "x{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 10].join(", ")
        ));
    }
    let not_utf8 = [DENY.as_bytes(), &[0xff, 0xfe, b'\n']].concat();
    for (what, content, says) in [
        (
            "deep nesting",
            nested.into_bytes(),
            "nested deeper than 64 levels",
        ),
        (
            "a file over the size limit",
            big.into_bytes(),
            "over the limit of 1048576 bytes",
        ),
        (
            "an alias bomb",
            laughs.into_bytes(),
            "aliases expand to more than",
        ),
        ("not UTF-8", not_utf8, "UTF-8"),
    ] {
        std::fs::write(&f, content).unwrap();
        let t = std::time::Instant::now();
        let snap = s.rescan().unwrap().unwrap();
        eprintln!("{what}: rescan {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            egress_rules(&snap),
            Some(0),
            "{what}: the last good policy stays"
        );
        assert!(
            snap.namespaces.contains_key("x"),
            "{what}: other files still read"
        );
        assert_eq!(snap.problems.len(), 1, "{what}: {:?}", snap.problems);
        let p = &snap.problems[0];
        assert!(
            p.object.ends_with("p.yaml")
                && p.message.contains(says)
                && p.message.contains("keeping"),
            "{what}: {p:?}"
        );
        std::fs::write(&f, DENY).unwrap();
        assert!(s.rescan().unwrap().unwrap().problems.is_empty());
    }
}

#[test]
fn fifos_and_other_special_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&dir.path().join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(dir.path().join("p.yaml"), DENY).unwrap();
    let snap = DirSource::new(dir.path()).rescan().unwrap().unwrap();
    assert_eq!(egress_rules(&snap), Some(0));
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
}

#[tokio::test(flavor = "current_thread")]
async fn parsing_runs_off_the_polling_thread() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), DENY).unwrap();
    let mut s = DirSource::new(dir.path());
    // The first poll scans in place (the agent's first reconcile needs the directory).
    assert_eq!(s.poll().unwrap().map(|s| s.generation), Some(1));
    let changes = s.changes();
    std::fs::write(dir.path().join("p.yaml"), TYPO.replace("from:", "to:")).unwrap();
    // The next poll only asks for a rescan; its result wakes `changes`.
    let snap = loop {
        if let Some(snap) = s.poll().unwrap() {
            break snap;
        }
        changes.notified().await;
    };
    assert_eq!(snap.generation, 2);
    assert_eq!(egress_rules(&snap), Some(1));
    assert_eq!(s.generation(), 2);
}

/// `palisadectl wait` after writing a manifest must see it: `sync` is a barrier even while the
/// background rescan has not run yet (with `poll` alone, `wait` answered with the old
/// generation and lab tests probed before the new policy was applied).
#[tokio::test(flavor = "current_thread")]
async fn sync_sees_every_file_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), DENY).unwrap();
    let mut s = DirSource::new(dir.path());
    assert_eq!(s.poll().unwrap().map(|s| s.generation), Some(1));
    for generation in 2..5u64 {
        let egress = if generation % 2 == 0 {
            TYPO.replace("from:", "to:")
        } else {
            DENY.to_string()
        };
        std::fs::write(dir.path().join("p.yaml"), &egress).unwrap();
        // No await in between: the background rescanner has had no chance to run.
        let snap = s.sync().unwrap().expect("the write is seen");
        assert_eq!(snap.generation, generation);
        assert_eq!(s.generation(), generation);
    }
    // Nothing changed since: nothing new, now or once the background scans have run.
    assert!(s.sync().unwrap().is_none());
    tokio::task::yield_now().await;
    assert!(s.sync().unwrap().is_none());
}

#[test]
fn this_nodes_pod_cidrs_are_written_for_the_cni_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let node = |cidrs: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{podCIDRs: [{cidrs}]}}\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n2}}\nspec: {{podCIDRs: [10.244.2.0/24]}}\n"
        )
    };
    std::fs::write(dir.path().join("nodes.yaml"), node("10.244.1.0/24")).unwrap();
    let mut s = DirSource::new(dir.path()).write_pod_cidrs("n1", state.path());
    let snap = s.rescan().unwrap().unwrap();
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    let file = state.path().join(crate::source::kube::POD_CIDR_FILE);
    let read = || palisade_node_api::podcidr::read(&file).unwrap();
    assert_eq!(read(), ["10.244.1.0/24"]);
    std::fs::write(
        dir.path().join("nodes.yaml"),
        node("10.244.1.0/24, \"fd00:10:244:1::/64\""),
    )
    .unwrap();
    s.rescan().unwrap().unwrap();
    assert_eq!(read().len(), 2);
}

const CNP: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin-deny}\nspec:\n  tier: Admin\n  priority: 3\n  subject: {namespaces: {matchLabels: {team: a}}}\n  egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}]}]\n";

fn cnp_egress(snap: &Snapshot) -> Option<String> {
    let p = snap.cluster_policies.get("admin-deny")?;
    let rules = p.spec.as_ref()?.egress.as_ref()?;
    Some(serde_json::to_string(rules).unwrap())
}

/// ClusterNetworkPolicies load through the one manifest parser, cluster-scoped (a namespace in
/// the file is not part of their key), strictly: a typo rejects the object (naming document,
/// object, field path and value) and its last good version stays, as for NetworkPolicies.
/// Threat: a typo such as `from` in an egress rule (read leniently, a rule with no peers)
/// must not change what an Admin Deny covers.
#[test]
fn cluster_network_policies_are_read_strictly_and_keep_their_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cnp.yaml");
    std::fs::write(&f, CNP).unwrap();
    let mut s = DirSource::new(dir.path());
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(snap.cluster_policies.len(), 1, "{:?}", snap.problems);
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    let good = cnp_egress(&snap).expect("read");
    assert!(good.contains("10.0.0.0/8"), "{good}");
    // Typo: `from` in an egress rule.
    std::fs::write(&f, CNP.replace("to: [{networks", "from: [{networks")).unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(cnp_egress(&snap), Some(good.clone()), "last good kept");
    assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
    let p = &snap.problems[0];
    assert!(
        p.object
            .ends_with("document 0 (line 1) ClusterNetworkPolicy admin-deny")
            && p.field == "spec.egress[0].from"
            && p.message.contains("unknown field")
            && p.message.contains("10.0.0.0/8"),
        "{p:?}"
    );
    // Another apiVersion (the retired AdminNetworkPolicy group) is named, not read.
    std::fs::write(
        &f,
        CNP.replace(
            "policy.networking.k8s.io/v1alpha2",
            "policy.networking.k8s.io/v1alpha1",
        ),
    )
    .unwrap();
    let snap = s.rescan().unwrap().unwrap();
    assert_eq!(cnp_egress(&snap), Some(good), "last good kept");
    assert!(
        snap.problems[0]
            .message
            .contains("only policy.networking.k8s.io/v1alpha2"),
        "{:?}",
        snap.problems
    );
    // Gone with its file.
    std::fs::remove_file(&f).unwrap();
    assert!(s.rescan().unwrap().unwrap().cluster_policies.is_empty());
}
