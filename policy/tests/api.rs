//! Validation, manifests, rule references and the map encoding.

use std::net::IpAddr;

use palisade_common::policy::{
    PORT_KEY_ANY_PORT_BITS, PORT_KEY_ANY_PROTO_BITS, PORT_KEY_FULL_BITS,
};
use palisade_common::{DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6};
use palisade_policy::conformance::{Case, case_cluster, model_cluster};
use palisade_policy::manifest::{self, Format};
use palisade_policy::{
    Allow, Cluster, Object, PeerAllow, PodInfo, PodKey, PortContents, RuleRegistry, compile,
    describe, endpoint_entries, lookup, validate,
};

fn policy(yaml: &str) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    serde_saphyr::from_str(yaml).expect("test YAML")
}

fn problems(yaml: &str) -> Vec<(String, String)> {
    validate(&policy(yaml))
        .into_iter()
        .map(|p| (p.field, p.message))
        .collect()
}

#[test]
fn invalid_fields_are_reported_with_their_path_and_value() {
    let got = problems(
        "
metadata: {namespace: x, name: bad}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Maybe, values: [a]}]}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24, 10.0.0.0/16, 'fd00::/64']}
    - podSelector: {matchExpressions: [{key: pod, operator: In}]}
    - podSelector: {matchExpressions: [{key: pod, operator: Exists, values: [a]}]}
    - {}
    - ipBlock: {cidr: 10.0.0.0/8}
      podSelector: {}
    ports:
    - {port: 0}
    - {port: 80, endPort: 79}
    - {port: http, endPort: 90}
    - {protocol: ICMP}
    - {endPort: 90}
    - {port: 80, endPort: 70000}
    - {port: Not_A_Name}",
    );
    let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.podSelector.matchExpressions[0].operator",
            "spec.policyTypes[1]",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "spec.ingress[0].from[1].ipBlock.except[0]",
            "spec.ingress[0].from[1].ipBlock.except[1]",
            "spec.ingress[0].from[1].ipBlock.except[2]",
            "spec.ingress[0].from[2].podSelector.matchExpressions[0].values",
            "spec.ingress[0].from[3].podSelector.matchExpressions[0].values",
            "spec.ingress[0].from[4]",
            "spec.ingress[0].from[5]",
            "spec.ingress[0].ports[0].port",
            "spec.ingress[0].ports[1].endPort",
            "spec.ingress[0].ports[2].endPort",
            "spec.ingress[0].ports[3].protocol",
            "spec.ingress[0].ports[4].endPort",
            "spec.ingress[0].ports[5].endPort",
            "spec.ingress[0].ports[6].port",
        ],
        "{got:#?}"
    );
    let msgs: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert!(msgs[0].contains("\"Maybe\""));
    assert!(msgs[2].contains("10.0.0.0/33"));
    assert!(msgs[3].contains("10.1.0.0/24") && msgs[3].contains("strictly inside"));
    assert!(msgs[11].contains("79") && msgs[11].contains("80"));
    assert!(msgs[13].contains("ICMP"));
}

#[test]
fn compile_skips_an_invalid_policy_whole_and_reports_it() {
    let case = Case {
        name: "invalid",
        policies: "
metadata: {namespace: x, name: bad}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]
---
metadata: {namespace: y, name: good}
spec: {podSelector: {}, policyTypes: [Ingress]}",
        expect: |_| true,
    };
    let c = case_cluster(&case);
    let keys: Vec<_> = c.pods.iter().map(PodInfo::key).collect();
    let mut reg = RuleRegistry::new();
    let out = compile(&c, &keys, &mut reg);
    assert_eq!(out.problems.len(), 1);
    assert_eq!(out.problems[0].object, "NetworkPolicy x/bad");
    assert_eq!(
        out.problems[0].field,
        "spec.ingress[0].from[0].ipBlock.cidr"
    );
    assert!(!out.endpoints[&PodKey::new("x", "a")].ingress_isolated);
    assert!(out.endpoints[&PodKey::new("y", "a")].ingress_isolated);
}

#[test]
fn rule_refs_are_stable_across_compiles_and_never_reused() {
    let a = "
metadata: {namespace: x, name: a}
spec: {podSelector: {}, ingress: [{ports: [{port: 80}]}, {ports: [{port: 81}]}]}";
    let b = "
metadata: {namespace: x, name: b}
spec: {podSelector: {}, egress: [{ports: [{port: 53, protocol: UDP}]}]}";
    let mut c = model_cluster();
    c.policies = vec![policy(a), policy(b)];
    let keys = vec![PodKey::new("x", "a")];
    let mut reg = RuleRegistry::new();
    compile(&c, &keys, &mut reg);
    assert_eq!(reg.len(), 3);
    let r_b = reg.describe(3).expect("rule 3").clone();
    assert_eq!(r_b.to_string(), "x/b egress[0]");
    assert!(reg.drop_unused().is_empty());
    // Policy a disappears: b keeps its reference; a's are dropped and not reused.
    c.policies = vec![policy(b)];
    let out = compile(&c, &keys, &mut reg);
    assert_eq!(reg.drop_unused(), vec![1, 2]);
    assert_eq!(reg.describe(3), Some(&r_b));
    let ep = &out.endpoints[&keys[0]];
    assert_eq!(
        lookup(ep, DIR_EGRESS, "1.2.3.4".parse().unwrap(), 17, 53),
        Some(3)
    );
    c.policies = vec![policy(a), policy(b)];
    compile(&c, &keys, &mut reg);
    assert_eq!(
        reg.describe(4).map(|r| r.to_string()).as_deref(),
        Some("x/a ingress[0]")
    );
}

#[test]
fn map_entries_use_common_layout_and_empty_sets_deny_without_a_portset() {
    let p = "
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]
    ports: [{port: 80, endPort: 81}, {protocol: UDP}]
  - from: [{podSelector: {matchLabels: {pod: b}}}]";
    let mut c = model_cluster();
    c.policies = vec![policy(p)];
    let key = PodKey::new("x", "a");
    let mut reg = RuleRegistry::new();
    let out = compile(&c, std::slice::from_ref(&key), &mut reg);
    let ep = &out.endpoints[&key];
    let mut contents = PortContents::default();
    let entries = endpoint_entries(ep, &mut contents);
    // 10.0.0.0/16, its hole 10.0.1.0/24, and x/b's /32 and /128.
    assert_eq!(entries.len(), 4, "{}", describe(ep, &reg));
    let mut sets = Vec::new();
    for ((plen, k), allow) in &entries {
        assert_eq!(k.policy_id_be, [0; 4], "the applier sets the policy id");
        assert_eq!(k.dir, DIR_INGRESS);
        match (k.family, *plen, allow) {
            (FAMILY_V4, 80, Allow::Ports(c)) => {
                assert_eq!(&k.addr_be[..4], &[10, 0, 0, 0][..]);
                sets.push(c.clone());
            }
            (FAMILY_V4, 88, Allow::Ports(c)) => assert!(c.is_empty(), "the hole denies"),
            // x/b over IPv4 is also inside the ipBlock, whose rule 1 is lower for its ports.
            (FAMILY_V4, 96, Allow::Ports(c)) => sets.push(c.clone()),
            (FAMILY_V6, 192, Allow::All(rule_ref)) => assert_eq!(*rule_ref, 2),
            other => panic!("unexpected entry {other:?}"),
        }
    }
    // The two allowing /16 and /32 entries name different port sets; equal sets are shared.
    assert_eq!(sets.len(), 2);
    let again = endpoint_entries(ep, &mut contents);
    for (a, b) in entries.values().zip(again.values()) {
        if let (Allow::Ports(a), Allow::Ports(b)) = (a, b) {
            assert!(std::sync::Arc::ptr_eq(a, b), "a port set keeps its content");
        }
    }
    let lens: Vec<_> = sets[0]
        .iter()
        .map(|(l, k, r)| (*l, k.proto, u16::from_be_bytes(k.port_be), *r))
        .collect();
    assert_eq!(
        lens,
        vec![
            (PORT_KEY_ANY_PORT_BITS, 17, 0, 1),
            (PORT_KEY_FULL_BITS - 1, 6, 80, 1)
        ]
    );
    assert!(sets[0].iter().all(|(_, k, _)| k.portset_id_be == [0; 4]));
    assert_eq!(PORT_KEY_ANY_PROTO_BITS, 32);
    let text = describe(ep, &reg);
    assert!(
        text.contains("from 10.0.1.0/24: nothing (excepted)"),
        "{text}"
    );
    assert!(text.contains("TCP 80-81 (x/p ingress[0])"), "{text}");
    assert!(text.contains("egress: not isolated"), "{text}");
    // x/b is covered by the ipBlock too: its ports name rule 1, everything else rule 2.
    let xb: IpAddr = "10.0.0.11".parse().unwrap();
    assert_eq!(lookup(ep, DIR_INGRESS, xb, 1, 0), Some(2));
    assert_eq!(lookup(ep, DIR_INGRESS, xb, 6, 81), Some(1));
    assert_eq!(lookup(ep, DIR_INGRESS, xb, 17, 0), Some(1));
    assert!(matches!(
        ep.entries.values().next(),
        Some(PeerAllow::Ports(_))
    ));
}

#[test]
fn manifests_split_into_typed_objects_and_build_a_cluster() {
    let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: c
    image: i
    ports: [{name: http, containerPort: 8080}, {containerPort: 9000}]
status: {podIPs: [{ip: 10.1.0.5}, {ip: 'fd00::5'}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: other}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Service
metadata: {name: svc}
";
    let objs = manifest::parse_objects(yaml, Format::Yaml).expect("parses");
    assert_eq!(objs.len(), 4);
    assert!(matches!(&objs[3], Object::Service(s) if s.metadata.name.as_deref() == Some("svc")));
    let (c, problems) = Cluster::from_objects(&objs);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(c.namespaces["shop"]["kubernetes.io/metadata.name"], "shop");
    assert_eq!(c.namespaces["shop"]["team"], "a");
    assert_eq!(c.namespaces["other"].len(), 1);
    let web = c.pod(&PodKey::new("shop", "web")).expect("pod");
    assert_eq!(web.ips.len(), 2);
    assert_eq!(web.ports.len(), 1);
    assert_eq!(web.ports[0].port, 8080);
}

#[test]
fn manifest_errors_name_the_document_and_the_field() {
    let yaml = "
kind: Namespace
metadata: {name: a}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80, endPort: eighty}]
";
    let m = manifest::parse(yaml, Format::Yaml).expect("YAML");
    assert_eq!(m.objects.len(), 1);
    let p = &m.problems[0];
    assert_eq!(p.object, "document 1 (line 5) NetworkPolicy a/p");
    assert_eq!(p.field, "spec.ingress[0].ports[0].endPort");
    assert!(p.message.contains("\"eighty\""), "{p}");
    assert!(matches!(
        manifest::parse("a: [\n", Format::Yaml),
        Err(manifest::Error::Syntax { document: 0, .. })
    ));
}

#[test]
fn host_network_and_address_less_pods_are_not_selector_peers_but_ipblocks_match_their_address() {
    let mut c = model_cluster();
    c.pods.push(PodInfo {
        namespace: "x".into(),
        name: "host".into(),
        labels: [("pod".to_string(), "b".to_string())].into_iter().collect(),
        ips: vec!["10.9.0.1".parse().unwrap()],
        ports: vec![],
        host_network: true,
    });
    c.pods.push(PodInfo {
        namespace: "x".into(),
        name: "pending".into(),
        labels: [("pod".to_string(), "b".to_string())].into_iter().collect(),
        ..Default::default()
    });
    c.policies.push(policy(
        "
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}, {from: [{ipBlock: {cidr: 10.9.0.0/16}}], ports: [{port: 81}]}]",
    ));
    let keys: Vec<_> = c.pods.iter().map(PodInfo::key).collect();
    let mut reg = RuleRegistry::new();
    let out = compile(&c, &keys, &mut reg);
    assert!(
        !out.endpoints.contains_key(&PodKey::new("x", "host")),
        "host-network pods get no endpoint"
    );
    assert!(out.endpoints.contains_key(&PodKey::new("x", "pending")));
    let ep = &out.endpoints[&PodKey::new("x", "a")];
    let host: IpAddr = "10.9.0.1".parse().unwrap();
    assert_eq!(lookup(ep, DIR_INGRESS, host, 6, 80), None);
    assert_eq!(lookup(ep, DIR_INGRESS, host, 6, 81), Some(2));
    let src = palisade_policy::Endpoint::Pod {
        pod: PodKey::new("x", "host"),
        addr: host,
    };
    let dst = palisade_policy::pod_endpoint(&c, &PodKey::new("x", "a"), false).unwrap();
    assert!(!palisade_policy::evaluate(&c, &src, &dst, 6, 80));
    assert!(palisade_policy::evaluate(&c, &src, &dst, 6, 81));
}
