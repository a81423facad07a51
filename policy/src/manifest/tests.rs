//! The parser against hostile and mistaken manifests.
//!
//! Threat model: whoever writes a manifest the agent reads (a tenant's policy file dropped into
//! the directory source, a generated file gone wrong) tries to stall the parser (deep nesting,
//! alias bombs, huge files) or to make a policy mean more than it says (an unknown field
//! silently dropped). What must hold: the parser stops early with an error naming the limit,
//! and a document with an unknown field yields no object but names document, object, field
//! path and value. Times are printed, never asserted (benchmarks show speed).

use std::time::Instant;

use super::*;

const POLICY_HEAD: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("{what}: {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
    r
}

fn limit_error(text: &str, format: Format) -> String {
    match timed(&format!("{} bytes", text.len()), || parse(text, format)) {
        Err(e @ Error::Limit { .. }) => e.to_string(),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn deeply_nested_flow_collections_stop_at_the_depth_limit() {
    // serde_yaml took 366 s on 120,000 `[` (quadratic scanner) and blocked the agent.
    for open in ["[", "{a: ", "[{a: "] {
        let close: String = open
            .chars()
            .rev()
            .filter_map(|c| match c {
                '[' => Some(']'),
                '{' => Some('}'),
                _ => None,
            })
            .collect();
        let text = format!(
            "{POLICY_HEAD}spec: {}{}\n",
            open.repeat(120_000),
            close.repeat(120_000)
        );
        let e = limit_error(&text, Format::Yaml);
        assert!(e.contains("nested deeper than 64 levels"), "{e}");
        assert!(e.starts_with("document 0"), "{e}");
    }
}

#[test]
fn deeply_nested_block_collections_stop_at_the_depth_limit() {
    let mut block = format!("{POLICY_HEAD}spec:\n");
    for i in 1..2_000 {
        block.push_str(&" ".repeat(i));
        block.push_str("a:\n");
    }
    let e = limit_error(&block, Format::Yaml);
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
    let compact = format!("{POLICY_HEAD}spec:\n{}x\n", "- ".repeat(100_000));
    let e = limit_error(&compact, Format::Yaml);
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
}

#[test]
fn alias_bomb_stops_at_the_node_limit() {
    // "Billion laughs": 10 levels of 10 aliases each would expand to 10^10 nodes.
    let mut text =
        format!("{POLICY_HEAD}x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    let e = limit_error(&text, Format::Yaml);
    assert!(
        e.contains("aliases expand to more than 100000 nodes (the limit per file)"),
        "{e}"
    );
    // With a smaller budget the same bomb stops sooner, and says so.
    let small = Limits {
        alias_expansion: 1_000,
        ..Limits::default()
    };
    let e = parse_with(&text, Format::Yaml, &small)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 1000 nodes"), "{e}");
}

#[test]
fn a_few_aliases_are_fine() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: &l {team: a}\n  annotations: *l\n";
    let m = parse(text, Format::Yaml).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert_eq!(m.objects.len(), 1);
}

#[test]
fn files_over_the_size_limit_are_refused_before_parsing() {
    let limits = Limits {
        file_bytes: 1 << 20,
        ..Limits::default()
    };
    let text = format!(
        "{POLICY_HEAD}spec: {{podSelector: {{}}}}\n# {}\n",
        "x".repeat(1 << 20)
    );
    assert!(matches!(
        parse_with(&text, Format::Yaml, &limits),
        Err(Error::TooLarge { limit, .. }) if limit == 1 << 20
    ));
    assert!(matches!(
        parse_with(&text, Format::Json, &limits),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn documents_over_the_per_document_limits_end_the_file() {
    let limits = Limits {
        document_bytes: 10_000,
        documents: 3,
        ..Limits::default()
    };
    // A long label value: scalar bytes of one document.
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{a: {}}}}}\n",
        "v".repeat(20_000)
    );
    let e = parse_with(&text, Format::Yaml, &limits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10000 bytes"), "{e}");
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"x","labels":{{"a":"{}"}}}}}}"#,
        "v".repeat(20_000)
    );
    let e = parse_with(&json, Format::Json, &limits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("over the limit of 10000"), "{e}");
    // Too many documents in one file.
    let many = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n".repeat(5);
    let e = parse_with(&many, Format::Yaml, &limits).unwrap_err();
    assert!(e.to_string().contains("more than 3 documents"), "{e}");
}

#[test]
fn deeply_nested_json_stops_at_the_depth_limit_before_parsing() {
    let json = format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","spec":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = limit_error(&json, Format::Json);
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
}

/// The one problem of a manifest that must have exactly one, and its rejected object.
fn rejected(text: &str, format: Format) -> (Problem, ObjectKey) {
    let m = parse(text, format).unwrap();
    assert!(m.objects.is_empty(), "{:?}", m.objects);
    assert_eq!(m.rejected.len(), 1, "{m:?}");
    assert_eq!(m.problems.len(), 1, "{:?}", m.problems);
    (m.problems[0].clone(), m.rejected[0].1.clone())
}

#[test]
fn unknown_fields_reject_the_object_naming_document_object_field_and_value() {
    // The typo of issue 9: `from` in an egress rule read as an allow-all egress rule.
    let text = format!(
        "{POLICY_HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - from: [{{podSelector: {{matchLabels: {{app: db}}}}}}]\n"
    );
    let (p, key) = rejected(&text, Format::Yaml);
    assert_eq!(p.object, "document 0 (line 1) NetworkPolicy x/p");
    assert_eq!(p.field, "spec.egress[0].from");
    assert!(p.message.contains("unknown field"), "{p}");
    assert!(
        p.message
            .contains(r#"[{"podSelector":{"matchLabels":{"app":"db"}}}]"#),
        "{p}"
    );
    assert_eq!(key.to_string(), "NetworkPolicy x/p");
    // At other depths: top level, metadata, a peer, an ipBlock, a port; and in JSON.
    for (yaml, field) in [
        ("spec: {podSelector: {}}\nspecs: {}\n", "specs"),
        ("spec: {podSelector: {}, ingres: []}\n", "spec.ingres"),
        (
            "spec:\n  podSelector: {matchLabel: {a: b}}\n",
            "spec.podSelector.matchLabel",
        ),
        (
            "spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}\n",
            "spec.ingress[0].from[0].ipBlock.exept",
        ),
        (
            "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80, proto: UDP}]\n",
            "spec.ingress[0].ports[0].proto",
        ),
    ] {
        let (p, _) = rejected(&format!("{POLICY_HEAD}{yaml}"), Format::Yaml);
        assert_eq!(p.field, field, "{p}");
    }
    let json = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"x"},"spec":{"podSelector":{},"egress":[{"from":[]}]}}"#;
    let (p, _) = rejected(json, Format::Json);
    assert_eq!(
        (p.object.as_str(), p.field.as_str()),
        ("document 0 NetworkPolicy x/p", "spec.egress[0].from")
    );
    // Unknown fields of other kinds the agent reads, too.
    let (p, key) = rejected(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIp: 10.96.0.1}\n",
        Format::Yaml,
    );
    assert_eq!(
        (p.field.as_str(), key.to_string().as_str()),
        ("spec.clusterIp", "Service default/s")
    );
}

#[test]
fn nulls_and_empty_values_are_not_unknown_fields() {
    let text = format!(
        "{POLICY_HEAD}  # comment\nspec:\n  podSelector: {{}}\n  ingress: null\n  egress: []\n  policyTypes: [Egress]\nstatus: null\n"
    );
    // `status` is not a NetworkPolicy field in every version; null or not, it must be known.
    let m = parse(&text, Format::Yaml).unwrap();
    assert!(
        m.problems.is_empty() || m.problems[0].field == "status",
        "{:?}",
        m.problems
    );
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, creationTimestamp: null, labels: {}}\nspec: {containers: [{name: c, image: i, resources: {}}]}\nstatus: {}\n";
    let m = parse(text, Format::Yaml).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert_eq!(m.objects.len(), 1);
}

#[test]
fn duplicate_keys_end_the_file_as_kubectl_refuses_them() {
    let text = format!("{POLICY_HEAD}spec: {{podSelector: {{}}, egress: [], egress: [{{}}]}}\n");
    let e = parse(&text, Format::Yaml).unwrap_err().to_string();
    assert!(e.contains("duplicate") && e.contains("egress"), "{e}");
    let json = r#"{"kind":"Namespace","metadata":{"name":"a","name":"b"}}"#;
    let e = parse(json, Format::Json).unwrap_err().to_string();
    assert!(e.contains("duplicate key \"name\""), "{e}");
}

#[test]
fn wrong_types_name_the_field_and_the_value() {
    let text = "kind: Namespace\nmetadata: {name: a}\n---\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\napiVersion: networking.k8s.io/v1\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endPort: eighty}]\n";
    let m = parse(text, Format::Yaml).unwrap();
    assert_eq!(m.objects.len(), 1, "the Namespace is read");
    assert_eq!(m.problems.len(), 1, "{:?}", m.problems);
    let p = &m.problems[0];
    assert_eq!(p.object, "document 1 (line 4) NetworkPolicy a/p");
    assert_eq!(p.field, "spec.ingress[0].ports[0].endPort");
    assert!(p.message.contains("\"eighty\""), "{p}");
    assert_eq!(m.rejected[0].0, 1);
}

#[test]
fn other_kinds_lists_and_other_api_versions() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {whatever: 1}\n---\nkind: List\nitems: []\n---\napiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\n---\nmetadata: {name: nokind}\n---\n- a list\n";
    let m = parse(text, Format::Yaml).unwrap();
    assert!(m.objects.is_empty());
    let fields: Vec<&str> = m.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["kind", "apiVersion", "kind", ""],
        "{:?}",
        m.problems
    );
    assert_eq!(
        m.rejected,
        [(
            2,
            ObjectKey {
                kind: Kind::EndpointSlice,
                namespace: Some("default".into()),
                name: "s".into()
            }
        )]
    );
}

#[test]
fn syntax_errors_name_the_document() {
    let e = parse(
        "kind: Namespace\nmetadata: {name: a}\n---\na: [\n",
        Format::Yaml,
    )
    .unwrap_err();
    assert_eq!(e.document(), Some(1), "{e}");
    assert!(
        e.to_string().starts_with("document 1: not valid YAML"),
        "{e}"
    );
    let e = parse("{\"kind\": ", Format::Json).unwrap_err();
    assert!(
        e.to_string().starts_with("document 0: not valid JSON"),
        "{e}"
    );
}

#[test]
fn every_kind_is_read_with_its_key_and_default_namespace() {
    let text = r#"apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: web}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5], targetRef: {kind: Pod, name: a, namespace: x}}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: a}
---
kind: Namespace
metadata: {name: x}
"#;
    let m = parse(text, Format::Yaml).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let keys: Vec<String> = m.objects.iter().map(|(_, o)| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "Node n1",
            "Service default/web",
            "EndpointSlice x/web-a",
            "Pod default/a",
            "Namespace x"
        ]
    );
    let Object::Pod(p) = &m.objects[3].1 else {
        panic!()
    };
    assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
}

/// ClusterNetworkPolicies and Nodes reach the cluster model (cluster-scoped: a namespace in the
/// manifest is dropped from the key, as the API server ignores it); an unknown field in one
/// rejects it alone.
#[test]
fn cluster_network_policies_and_nodes_reach_the_cluster() {
    let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
        metadata: {name: base, namespace: ignored}\nspec: {tier: Baseline, priority: 1, \
        subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}\n---\n\
        apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
        metadata: {name: typo}\nspec: {tier: Admin, priority: 1, subjects: {namespaces: {}}}\n---\n\
        apiVersion: v1\nkind: Node\nmetadata: {name: n0, labels: {zone: a}}\n\
        status: {addresses: [{type: InternalIP, address: 10.1.0.1}, {type: Hostname, address: n0}]}\n";
    let m = parse(text, Format::Yaml).expect("parses");
    assert_eq!(m.objects.len(), 2, "{:?}", m.problems);
    assert_eq!(
        m.objects[0].1.key().to_string(),
        "ClusterNetworkPolicy base"
    );
    assert_eq!(m.rejected.len(), 1);
    assert_eq!(m.rejected[0].1.to_string(), "ClusterNetworkPolicy typo");
    assert!(
        m.problems[0].object.ends_with("ClusterNetworkPolicy typo")
            && m.problems[0].field == "spec.subjects",
        "{:?}",
        m.problems
    );
    let objects: Vec<Object> = m.objects.into_iter().map(|(_, o)| o).collect();
    let (c, problems) = crate::Cluster::from_objects(&objects);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(c.cluster_policies.len(), 1);
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(
        c.nodes[0].addrs,
        vec!["10.1.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(c.nodes[0].labels.get("zone").map(String::as_str), Some("a"));
}
