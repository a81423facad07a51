//! Unit tests of naming: a snapshot of pods, policies and a Service compiled as the agent does,
//! and events resolved into flows (default deny, allow with the matching rule, audit,
//! DNS answers from other resolvers, events without an endpoint or a known peer).

use super::*;
use crate::compile::Compiler;
use palisade_common::DIR_EGRESS;
use palisade_common::events::EV_REPLY;
use palisade_common::events::{EV_PARTIAL, EV_SERVICE};
use palisade_node_api::endpoint::EndpointRecord;
use palisade_policy::{Direction, RuleId};

const ALLOW_B: &str = "metadata: {name: allow-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 192.0.2.0/24}}, {podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 53, protocol: UDP}, {port: 80}]\n";
const DENY: &str =
    "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
const AUDIT_EGRESS: &str = "metadata: {name: audit-egress, namespace: x, annotations: {policy.palisade.io/audit: 'true'}}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress]}\n";
const SVC: &str = "metadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 8080, targetPort: 80}]}\n";

fn addr(ip: [u8; 4]) -> [u8; 16] {
    let mut a = [0; 16];
    a[..4].copy_from_slice(&ip);
    a
}

/// x/a (ep 1) and x/b (ep 2) on this node, x/c elsewhere; the policies above.
fn names() -> (Names, RuleRegistry) {
    let mut snap = Snapshot::default();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(&format!(
            "metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\nspec: {{nodeName: n{}, containers: []}}\nstatus: {{podIP: 10.244.0.{}}}\n",
            usize::from(i == 2),
            i + 1
        ))
        .unwrap();
        snap.pods
            .insert(("x".into(), (*name).into()), Arc::new(pod));
    }
    for p in [ALLOW_B, DENY, AUDIT_EGRESS] {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_saphyr::from_str(p).unwrap();
        let key = (
            "x".to_string(),
            np.metadata.name.clone().unwrap_or_default(),
        );
        snap.policies.insert(key, Arc::new(np));
    }
    let svc: k8s_openapi::api::core::v1::Service = serde_saphyr::from_str(SVC).unwrap();
    snap.services
        .insert(("x".into(), "web".into()), Arc::new(svc));
    let records: Vec<EndpointRecord> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| EndpointRecord {
            container_id: format!("c{n}"),
            netns: String::new(),
            ifname: "eth0".into(),
            pod_namespace: Some("x".into()),
            pod_name: Some((*n).into()),
            ips: vec![format!("10.244.0.{}/24", i + 1)],
            host_veth: format!("pal{n}"),
            host_ifindex: 10 + i as u32,
            mac: String::new(),
            created_unix_ms: 0,
        })
        .collect();
    let locals: Vec<(String, &EndpointRecord)> = records.iter().map(|r| (r.key(), r)).collect();
    let mut compiler = Compiler::load(std::path::Path::new("/nonexistent"));
    let compiled = compiler.compile(&snap, &locals);
    let endpoints = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (ns, n) = r.pod().unwrap();
            (
                i as u32 + 1,
                LocalEndpoint {
                    pod: Some(PodKey::new(&ns, &n)),
                    ifindex: r.host_ifindex,
                    host_veth: r.host_veth.clone(),
                },
            )
        })
        .collect();
    let names = Names::build(NamesInput {
        node: "n0",
        snapshot: &snap,
        endpoints,
        registry: compiler.registry(),
        prepared: compiler.prepared().cloned().collect(),
        cluster: compiled.cluster.clone(),
        host: BTreeSet::from([IpAddr::from([192, 168, 0, 1])]),
    });
    (names, compiler.registry().clone())
}

fn event(verdict: u8, reason: Reason, src: [u8; 4], dst: [u8; 4], dport: u16) -> FlowEvent {
    FlowEvent {
        time_ns: 1_000_000_000,
        ep_id: 1,
        ifindex: 10,
        reason: reason.0,
        verdict,
        dir: DIR_INGRESS,
        family: FAMILY_V4,
        proto: 6,
        tcp_flags: 0x02,
        saddr_be: addr(src),
        daddr_be: addr(dst),
        sport_be: 40000u16.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        ..Default::default()
    }
}

#[test]
fn a_default_deny_names_every_policy_isolating_the_pod() {
    let (names, _) = names();
    let e = event(
        VERDICT_DROPPED,
        Reason::DEFAULT_DENY,
        [10, 244, 0, 3],
        [10, 244, 0, 1],
        81,
    );
    let r = &names.resolve(&[e], 0)[0];
    let f = &r.flow;
    assert_eq!(
        (f.verdict.as_str(), f.reason.as_str()),
        ("DROPPED", "default_deny")
    );
    assert_eq!(f.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
    assert_eq!(
        (f.source.pod(), f.destination.pod()),
        ("x/c".into(), "x/a".into())
    );
    assert_eq!(f.source.node_name, "n1");
    assert!(f.source.labels.contains(&"k8s:pod=c".to_string()));
    let denied: Vec<String> = f.ingress_denied_by.iter().map(|p| p.key()).collect();
    assert_eq!(denied, ["x/allow-b", "x/deny"]);
    assert_eq!(f.interface.name, "pala");
    assert_eq!(f.summary, "TCP Flags: SYN");
    assert_eq!(r.time, "1970-01-01T00:00:01.000000000Z");
}

#[test]
fn an_allowed_flow_names_the_rule_the_peer_and_the_port_that_matched() {
    let (names, reg) = names();
    let rule = reg
        .get(&RuleId::network_policy(
            "x",
            "allow-b",
            Direction::Ingress,
            0,
        ))
        .unwrap();
    let mut e = event(
        VERDICT_FORWARDED,
        Reason::POLICY_ALLOW,
        [10, 244, 0, 2],
        [10, 244, 0, 1],
        80,
    );
    e.rule_ref = rule;
    let f = &names.resolve(&[e], 0)[0].flow;
    let p = &f.ingress_allowed_by[0];
    assert_eq!(p.key(), "x/allow-b");
    let r = p.rule.as_ref().unwrap();
    assert_eq!((r.path.as_str(), r.index), ("spec.ingress[0]", 0));
    assert!(r.peer.as_deref().unwrap().starts_with("from[1]"), "{r:?}");
    assert!(r.port.as_deref().unwrap().starts_with("ports[1]"), "{r:?}");
    assert!(f.drop_reason_desc.is_none() && f.ingress_denied_by.is_empty());
}

#[test]
fn an_audit_names_the_audited_policies_and_services_are_named() {
    let (names, _) = names();
    let mut e = event(
        VERDICT_AUDIT,
        Reason::DEFAULT_DENY,
        [10, 244, 0, 2],
        [10, 244, 0, 3],
        80,
    );
    e.ep_id = 2;
    e.dir = DIR_EGRESS;
    e.flags = EV_SERVICE;
    e.svc_addr_be = addr([10, 96, 0, 7]);
    e.svc_port_be = 8080u16.to_be_bytes();
    let f = &names.resolve(&[e], 0)[0].flow;
    assert_eq!(f.verdict, "AUDIT");
    assert_eq!(f.egress_denied_by.len(), 1);
    assert_eq!(f.egress_denied_by[0].key(), "x/audit-egress");
    assert!(f.egress_denied_by[0].audit);
    let s = f.destination_service.as_ref().unwrap();
    assert_eq!(
        (s.namespace.as_str(), s.name.as_str(), s.address.as_str()),
        ("x", "web", "10.96.0.7:8080")
    );
    assert_eq!(f.destination.pod(), "x/c");
}

/// A DNS answer from another resolver says it taught nothing (egress by domain name).
#[test]
fn an_answer_from_another_resolver_says_it_taught_nothing() {
    let (names, _) = names();
    let mut e = event(
        VERDICT_FORWARDED,
        Reason::CT_REPLY,
        [8, 8, 8, 8],
        [10, 244, 0, 1],
        5353,
    );
    e.flags = EV_REPLY | EV_DNS_OTHER_SERVER;
    let f = &names.resolve(&[e], 0)[0].flow;
    assert_eq!(f.dns_not_learnt.as_deref(), Some("other_server"));
    assert!(
        f.summary.contains("not from the cluster DNS service"),
        "{}",
        f.summary
    );
}

#[test]
fn events_without_an_endpoint_or_a_known_peer_say_what_is_known() {
    let (names, _) = names();
    let mut e = event(VERDICT_DROPPED, Reason::NO_ENDPOINT, [0; 4], [0; 4], 0);
    e.ep_id = 0;
    e.ifindex = 11;
    e.family = 0;
    e.flags = EV_PARTIAL;
    let f = &names.resolve(&[e], 0)[0].flow;
    assert!(f.ip.is_none() && f.l4.is_none());
    assert_eq!(f.interface.name, "palb");
    assert_eq!(f.source.labels, ["reserved:unknown"]);
    // The node and the world.
    let e = event(
        VERDICT_FORWARDED,
        Reason::NOT_ISOLATED,
        [192, 168, 0, 1],
        [10, 244, 0, 1],
        80,
    );
    assert_eq!(
        names.resolve(&[e], 0)[0].flow.source.labels,
        ["reserved:host"]
    );
    let e = event(
        VERDICT_FORWARDED,
        Reason::NOT_ISOLATED,
        [8, 8, 8, 8],
        [10, 244, 0, 1],
        80,
    );
    assert_eq!(
        names.resolve(&[e], 0)[0].flow.source.labels,
        ["reserved:world"]
    );
}
