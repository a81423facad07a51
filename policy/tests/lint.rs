//! `lint`: every check has a case that triggers it and one that must not; the upstream
//! conformance cases give no warning or error beyond the few that are true by construction
//! (listed, with why); reports render as text and round-trip through JSON.

use palisade_policy::conformance::{case_cluster, cases};
use palisade_policy::lint::{CHECKS, Finding, LintInput, LintReport, Severity, lint, render};
use palisade_policy::{Cluster, Object, Problem, ServiceInfo, manifest, service_info};

/// Namespaces web (team=a), db (team=b), kube-system; pods web/frontend, web/api (named port
/// http 8080), db/postgres (5432), kube-system/coredns (53 UDP and TCP).
const STATE: &str = "
kind: Namespace
metadata: {name: web, labels: {team: a}}
---
kind: Namespace
metadata: {name: db, labels: {team: b}}
---
kind: Namespace
metadata: {name: kube-system}
---
kind: Pod
metadata: {namespace: web, name: frontend, labels: {app: frontend}}
spec: {containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.1.0.10}]}
---
kind: Pod
metadata: {namespace: web, name: api, labels: {app: api}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 10.1.0.11}]}
---
kind: Pod
metadata: {namespace: db, name: postgres, labels: {app: postgres}}
spec: {containers: [{name: c, image: i, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIPs: [{ip: 10.2.0.10}]}
---
kind: Pod
metadata: {namespace: kube-system, name: coredns, labels: {k8s-app: kube-dns}}
spec:
  containers:
  - name: c
    image: i
    ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53, protocol: TCP}]
status: {podIPs: [{ip: 10.3.0.10}]}
";

const DNS_SERVICE: &str = "
metadata: {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}, {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}]";

fn cluster(yaml: &str) -> Cluster {
    let objects =
        manifest::parse_objects(yaml, manifest::Format::Yaml).expect("test manifests parse");
    assert!(
        objects.iter().all(|o| matches!(
            o,
            Object::Namespace(_) | Object::Pod(_) | Object::NetworkPolicy(_)
        )),
        "unexpected kind in test manifests"
    );
    let (c, problems) = Cluster::from_objects(&objects);
    assert!(problems.is_empty(), "{problems:?}");
    c
}

fn services(yamls: &[&str]) -> Vec<ServiceInfo> {
    yamls
        .iter()
        .map(|y| service_info(&serde_saphyr::from_str(y).expect("Service YAML")).0)
        .collect()
}

/// Lint of STATE (with the DNS Service) plus `policies` (NetworkPolicy documents, `kind`
/// added here).
fn run(policies: &str) -> LintReport {
    run_with(policies, &[DNS_SERVICE], &[])
}

fn run_with(policies: &str, svcs: &[&str], read_problems: &[Problem]) -> LintReport {
    let docs: Vec<String> = policies
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| format!("kind: NetworkPolicy\n{d}"))
        .collect();
    let c = cluster(&format!("{STATE}\n---\n{}", docs.join("\n---\n")));
    let svcs = services(svcs);
    lint(&LintInput {
        cluster: &c,
        services: &svcs,
        namespaces_known: true,
        read_problems,
    })
}

fn with_code<'r>(r: &'r LintReport, code: &str) -> Vec<&'r Finding> {
    r.findings.iter().filter(|f| f.code == code).collect()
}

/// Exactly one finding of `code`, at `object` `path`; returns it.
#[track_caller]
fn one<'r>(r: &'r LintReport, code: &str, object: &str, path: &str) -> &'r Finding {
    let f = with_code(r, code);
    assert_eq!(f.len(), 1, "want one {code}, got:\n{}", render(r));
    assert_eq!(
        (f[0].object.as_str(), f[0].path.as_str()),
        (object, path),
        "\n{}",
        render(r)
    );
    f[0]
}

#[track_caller]
fn none(r: &LintReport, code: &str) {
    assert!(
        with_code(r, code).is_empty(),
        "want no {code}, got:\n{}",
        render(r)
    );
}

/// Allows DNS from every pod of `ns` (so DNS checks stay quiet in other tests).
fn dns_ok(ns: &str) -> String {
    format!(
        "
metadata: {{namespace: {ns}, name: dns}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}, podSelector: {{matchLabels: {{k8s-app: kube-dns}}}}}}]
    ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
"
    )
}

#[test]
fn pl100_objects_that_could_not_be_read_are_errors() {
    let p = Problem::new("file /m/bad.yaml document 2", "spec", "invalid YAML");
    let r = run_with("", &[DNS_SERVICE], std::slice::from_ref(&p));
    let f = one(&r, "PL100", "file /m/bad.yaml document 2", "spec");
    assert_eq!(f.severity, Severity::Error);
    none(&run(""), "PL100");
}

#[test]
fn pl101_invalid_policy_names_field_and_value() {
    let r = run("
metadata: {namespace: web, name: bad}
spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}");
    let f = one(
        &r,
        "PL101",
        "NetworkPolicy web/bad",
        "spec.ingress[0].ports[0].port",
    );
    assert!(
        f.message
            .starts_with("port 70000 is not in 1..=65535. The API server rejects"),
        "{}",
        f.message
    );
    none(
        &run("
metadata: {namespace: web, name: good}
spec: {podSelector: {}, ingress: [{ports: [{port: 7000}]}]}"),
        "PL101",
    );
}

#[test]
fn pl102_except_outside_cidr_says_what_it_would_do_and_is_not_reported_twice() {
    let r = run("
metadata: {namespace: web, name: ex}
spec:
  podSelector: {}
  egress:
  - to:
    - ipBlock: {cidr: 192.168.0.0/24, except: [192.168.1.0/24, 192.168.0.0/16, 'fd00::/64']}");
    let f = with_code(&r, "PL102");
    assert_eq!(f.len(), 3, "{}", render(&r));
    assert_eq!(f[0].path, "spec.egress[0].to[0].ipBlock.except[0]");
    assert!(f[0].message.starts_with(
        "except 192.168.1.0/24 lies outside cidr 192.168.0.0/24: it would remove nothing"
    ));
    assert!(f[1].message.contains("contains all of cidr 192.168.0.0/24"));
    assert_eq!(
        f[1].suggestion.as_deref(),
        Some("did you mean cidr 192.168.0.0/16 except 192.168.0.0/24?")
    );
    assert!(f[2].message.contains("different address families"));
    none(&r, "PL101");
    none(
        &run("
metadata: {namespace: web, name: ex}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]}]"),
        "PL102",
    );
}

#[test]
fn pl201_policy_selecting_no_pod_shows_the_labels_pods_have() {
    let r = run("
metadata: {namespace: web, name: typo}
spec: {podSelector: {matchLabels: {app: fronted}}, policyTypes: [Ingress]}");
    let f = one(&r, "PL201", "NetworkPolicy web/typo", "spec.podSelector");
    assert_eq!(
        f.suggestion.as_deref(),
        Some("pods there have app=api, app=frontend")
    );
    none(
        &run("
metadata: {namespace: web, name: ok}
spec: {podSelector: {matchLabels: {app: frontend}}, policyTypes: [Ingress]}"),
        "PL201",
    );
    // A namespace without pods in the state says nothing.
    none(
        &run("
metadata: {namespace: empty, name: any}
spec: {podSelector: {matchLabels: {app: x}}, policyTypes: [Ingress]}"),
        "PL201",
    );
}

#[test]
fn pl202_peer_selecting_no_pod() {
    let r = run("
metadata: {namespace: db, name: from-web}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: backend}}}]}]");
    let f = one(
        &r,
        "PL202",
        "NetworkPolicy db/from-web",
        "spec.ingress[0].from[0]",
    );
    assert!(f.message.starts_with("pods app=backend in namespaces team=a matches no pod (namespaces with pods looked at: web)"), "{}", f.message);
    none(&run("
metadata: {namespace: db, name: from-web}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: api}}}]}]"), "PL202");
}

#[test]
fn pl203_namespace_selector_matching_no_namespace() {
    let r = run("
metadata: {namespace: db, name: from-c}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: c}}}]}]}");
    let f = one(
        &r,
        "PL203",
        "NetworkPolicy db/from-c",
        "spec.ingress[0].from[0].namespaceSelector",
    );
    assert_eq!(
        f.suggestion.as_deref(),
        Some("namespaces have team=a, team=b")
    );
    none(&r, "PL204");
    none(
        &run("
metadata: {namespace: db, name: from-a}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]}"),
        "PL203",
    );
}

#[test]
fn pl204_namespace_label_nobody_has_suggests_the_name_label() {
    let r = run("
metadata: {namespace: db, name: from-web}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {name: web}}}]}]}");
    let f = one(
        &r,
        "PL204",
        "NetworkPolicy db/from-web",
        "spec.ingress[0].from[0].namespaceSelector",
    );
    assert!(
        f.message
            .starts_with("requires label \"name\", which no namespace has")
    );
    assert_eq!(
        f.suggestion.as_deref(),
        Some(
            "namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}} (the label every namespace carries)"
        )
    );
    none(&r, "PL203");
    none(&run("
metadata: {namespace: db, name: from-web}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}}}]}]}"), "PL204");
}

const WEB_EGRESS_TO_DB: &str = "
metadata: {namespace: web, name: to-db}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 5432}]}]";

#[test]
fn pl301_default_deny_egress_that_cuts_dns() {
    let r = run(WEB_EGRESS_TO_DB);
    let f = one(&r, "PL301", "NetworkPolicy web/to-db", "spec.egress");
    assert!(f.message.starts_with("pods web/api, web/frontend are isolated for egress (by web/to-db) and cannot reach the cluster DNS at all"), "{}", f.message);
    assert!(
        f.suggestion
            .as_deref()
            .unwrap()
            .contains("podSelector: {matchLabels: {k8s-app: kube-dns}}")
    );
    none(
        &run(&format!("{WEB_EGRESS_TO_DB}\n---\n{}", dns_ok("web"))),
        "PL301",
    );
    // A complete egress lockdown (no egress rule at all) is deliberate.
    none(
        &run("
metadata: {namespace: web, name: lockdown}
spec: {podSelector: {}, policyTypes: [Egress]}"),
        "PL301",
    );
}

#[test]
fn pl302_dns_over_one_transport_with_and_without_the_dns_service() {
    let udp_only = "
metadata: {namespace: web, name: dns-udp}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}], ports: [{protocol: UDP, port: 53}]}]";
    let r = run(udp_only);
    let f = one(&r, "PL302", "NetworkPolicy web/dns-udp", "spec.egress");
    assert!(
        f.message
            .contains("reach the cluster DNS over UDP but not TCP"),
        "{}",
        f.message
    );
    none(&r, "PL301");
    // Without the DNS Service, per policy.
    let r = run_with(udp_only, &[], &[]);
    one(&r, "PL302", "NetworkPolicy web/dns-udp", "spec.egress[0]");
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("dns-blocked (PL301) skipped"))
    );
    none(&run(&dns_ok("web")), "PL302");
    none(&run_with(&dns_ok("web"), &[], &[]), "PL302");
}

#[test]
fn pl401_ingress_admitting_pods_whose_egress_cannot_send() {
    let db_from_frontend = "
metadata: {namespace: db, name: from-frontend}
spec:
  podSelector: {matchLabels: {app: postgres}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 5432}]}]";
    let web_dns_only = dns_ok("web");
    let r = run(&format!("{db_from_frontend}\n---\n{web_dns_only}"));
    let f = one(
        &r,
        "PL401",
        "NetworkPolicy db/from-frontend",
        "spec.ingress[0].from[0]",
    );
    assert_eq!(
        f.message,
        "admits web/frontend, but their own egress does not let them send: web/frontend is isolated for egress by web/dns, which allow nothing to db/postgres on TCP 5432; those connections stay denied"
    );
    none(
        &run(&format!(
            "{db_from_frontend}\n---\n{web_dns_only}\n---\n{WEB_EGRESS_TO_DB}"
        )),
        "PL401",
    );
}

#[test]
fn pl402_egress_towards_pods_whose_ingress_does_not_admit() {
    let api_to_db = "
metadata: {namespace: web, name: api-to-db}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {}}], ports: [{port: pg}]}]";
    let db_deny = "
metadata: {namespace: db, name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}";
    let r = run(&format!(
        "{api_to_db}\n---\n{db_deny}\n---\n{}",
        dns_ok("web")
    ));
    let f = one(
        &r,
        "PL402",
        "NetworkPolicy web/api-to-db",
        "spec.egress[0].to[0]",
    );
    assert!(f.message.starts_with("lets its pods send to db/postgres, but their ingress does not admit it: db/postgres is isolated for ingress by db/deny, which admit nothing from web/api on TCP 5432"), "{}", f.message);
    let db_from_api = "
metadata: {namespace: db, name: from-api}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]";
    none(
        &run(&format!(
            "{api_to_db}\n---\n{db_deny}\n---\n{db_from_api}\n---\n{}",
            dns_ok("web")
        )),
        "PL402",
    );
}

#[test]
fn pl501_split_rule_peers_in_one_rule_ports_in_the_next() {
    let r = run("
metadata: {namespace: db, name: split}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
  - ports: [{port: 5432}]");
    let f = one(&r, "PL501", "NetworkPolicy db/split", "spec.ingress[1]");
    assert!(f.message.starts_with("spec.ingress[1] allows TCP 5432 from every source (it lists no from), and spec.ingress[0] allows every protocol and port from every pod in namespaces team=a."), "{}", f.message);
    none(
        &run("
metadata: {namespace: db, name: joined}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}]"),
        "PL501",
    );
}

#[test]
fn pl502_ports_open_to_everyone_among_rules_naming_peers() {
    let r = run("
metadata: {namespace: db, name: metrics}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}]
  - ports: [{port: 9187}]");
    let f = one(&r, "PL502", "NetworkPolicy db/metrics", "spec.ingress[1]");
    assert_eq!(f.severity, Severity::Info);
    none(&r, "PL501");
    none(
        &run("
metadata: {namespace: db, name: metrics}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 5432}]
  - ports: [{port: 9187}]"),
        "PL502",
    );
}

#[test]
fn pl601_ipblock_that_also_matches_pods() {
    let r = run("
metadata: {namespace: db, name: world}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]}");
    let f = one(
        &r,
        "PL601",
        "NetworkPolicy db/world",
        "spec.ingress[0].from[0].ipBlock",
    );
    assert!(
        f.message.starts_with(
            "0.0.0.0/0 is every address: it matches every pod of the cluster (4 here) too"
        ),
        "{}",
        f.message
    );
    assert!(
        f.suggestion
            .as_deref()
            .unwrap()
            .contains("(these pods are in 10.0.0.0/14)"),
        "{:?}",
        f.suggestion
    );
    none(
        &run("
metadata: {namespace: db, name: partner}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]}"),
        "PL601",
    );
}

#[test]
fn pl602_egress_ipblock_over_service_addresses_but_not_their_backends() {
    let r = run(&format!(
        "
metadata: {{namespace: web, name: to-services}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: 10.96.0.0/12}}}}]}}]
---
{}",
        dns_ok("web")
    ));
    let f = one(
        &r,
        "PL602",
        "NetworkPolicy web/to-services",
        "spec.egress[0].to[0].ipBlock",
    );
    assert!(f.message.starts_with("covers the address of Service kube-system/kube-dns (10.96.0.10) but this rule allows none of its backend pods"), "{}", f.message);
    none(
        &run("
metadata: {namespace: web, name: to-10}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]"),
        "PL602",
    );
}

#[test]
fn pl701_rule_another_rule_already_covers() {
    let r = run("
metadata: {namespace: db, name: limits}
spec:
  podSelector: {matchLabels: {app: postgres}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432}]
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
---
metadata: {namespace: db, name: from-web}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]");
    let f = one(&r, "PL701", "NetworkPolicy db/limits", "spec.ingress[0]");
    assert!(f.message.starts_with("can never add anything: NetworkPolicy db/from-web spec.ingress[0] allows everything it allows, to every pod it applies to (db/postgres)"), "{}", f.message);
    none(&r, "PL702");
    none(&run("
metadata: {namespace: db, name: limits}
spec:
  podSelector: {matchLabels: {app: postgres}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432}]
---
metadata: {namespace: db, name: from-web}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: frontend}}}]}]"), "PL701");
}

#[test]
fn pl702_policy_that_adds_nothing_and_of_two_equal_ones_the_later() {
    let r = run("
metadata: {namespace: db, name: only-5432}
spec:
  podSelector: {matchLabels: {app: postgres}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}], ports: [{port: 5432}]}]
---
metadata: {namespace: db, name: allow-web}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]");
    let f = one(&r, "PL702", "NetworkPolicy db/only-5432", "spec");
    assert_eq!(
        f.message,
        "adds nothing: other policies already isolate its pods (db/postgres) for ingress, and everything its rules allow is allowed by NetworkPolicy db/allow-web too"
    );
    none(&r, "PL701");
    let twin = "
metadata: {namespace: db, name: deny-a}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
metadata: {namespace: db, name: deny-b}
spec: {podSelector: {}, policyTypes: [Ingress]}";
    one(&run(twin), "PL702", "NetworkPolicy db/deny-b", "spec");
    // The narrower policy selects a pod the broader one does not: it isolates it.
    none(
        &run("
metadata: {namespace: web, name: only-8080}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 8080}]}]
---
metadata: {namespace: web, name: allow-all-api}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{}]"),
        "PL702",
    );
}

#[test]
fn every_check_has_a_test_above_and_codes_are_unique() {
    let tested = [
        "PL100", "PL101", "PL102", "PL201", "PL202", "PL203", "PL204", "PL301", "PL302", "PL401",
        "PL402", "PL501", "PL502", "PL601", "PL602", "PL701", "PL702",
    ];
    let codes: Vec<&str> = CHECKS.iter().map(|c| c.code).collect();
    assert_eq!(codes, tested);
    let mut names: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), CHECKS.len());
}

/// Warnings and errors that the upstream conformance cases give, each true by construction:
/// the case is written to show exactly that.
const CONFORMANCE_EXPECTED: &[(&str, &str, &str, &str)] = &[
    // The second peer's namespaceSelector requires label `absent`, which no namespace has: the
    // case checks that such a peer matches nothing.
    (
        "not_in_and_does_not_exist_match_objects_lacking_the_key",
        "PL204",
        "NetworkPolicy x/exprs",
        "spec.ingress[0].from[1].namespaceSelector",
    ),
    // The allow-all egress policy makes the narrower one add nothing: the case's name says so.
    (
        "egress_allow_all_policy_wins_over_a_stacked_narrower_egress_policy",
        "PL702",
        "NetworkPolicy x/egress-to-y-80",
        "spec",
    ),
];

#[test]
fn upstream_conformance_cases_give_no_warning_beyond_the_expected_ones() {
    let mut got = Vec::new();
    for case in cases() {
        let c = case_cluster(&case);
        let r = lint(&LintInput {
            cluster: &c,
            services: &[],
            namespaces_known: true,
            read_problems: &[],
        });
        for f in &r.findings {
            if f.severity >= Severity::Warning {
                got.push((case.name, f.code.clone(), f.object.clone(), f.path.clone()));
            } else {
                assert_eq!(
                    f.code,
                    "PL601",
                    "{}: unexpected info finding\n{}",
                    case.name,
                    render(&r)
                );
            }
        }
    }
    let got: Vec<(&str, &str, &str, &str)> = got
        .iter()
        .map(|(n, c, o, p)| (*n, c.as_str(), o.as_str(), p.as_str()))
        .collect();
    assert_eq!(got, CONFORMANCE_EXPECTED);
}

#[test]
fn reports_render_as_text_and_round_trip_through_json() {
    let r = run("
metadata: {namespace: db, name: from-web}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {name: web}}}]}]}");
    let text = render(&r);
    assert!(
        text.starts_with("warning[PL204 namespace-label-unknown]: NetworkPolicy db/from-web spec.ingress[0].from[0].namespaceSelector\n  requires label \"name\""),
        "{text}"
    );
    assert!(
        text.contains(
            "\n  suggestion: namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}}"
        ),
        "{text}"
    );
    assert!(
        text.contains("1 finding (0 error, 1 warning, 0 info) in 1 NetworkPolicy"),
        "{text}"
    );
    let json = serde_json::to_string(&r).unwrap();
    let back: LintReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["findings"][0]["severity"], "warning");
    assert_eq!(v["findings"][0]["code"], "PL204");
    assert_eq!(r.worst(), Some(Severity::Warning));
    assert_eq!(r.at_least(Severity::Error), 0);
}
