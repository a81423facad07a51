//! The conformance table: every case checks the reference evaluator AND the compiled form
//! (LPM emulation + `common::decide`) against the spec's verdicts, for every pair of model
//! endpoints, every probe, IPv4 and IPv6.

use std::fmt::Write as _;

use palisade_policy::conformance::{Case, Flow, PROBES, case_cluster, cases, model_endpoints};
use palisade_policy::{
    Endpoint, Evaluator, PodInfo, RuleRegistry, compile, compiled_allows, describe, proto_name,
};

/// Collected mismatches, printed as one readable report.
#[derive(Default)]
struct Diff {
    lines: Vec<String>,
    endpoints: std::collections::BTreeSet<String>,
}

impl Diff {
    fn check(&mut self, what: &str, f: &Flow, want: bool, got: bool) {
        if want != got {
            let word = |b: bool| if b { "allow" } else { "deny" };
            self.lines.push(format!(
                "  {what:<9} {:>4} -> {:<4} {:<4} {:<5} {:>4}: want {:<5} got {}",
                f.src,
                f.dst,
                proto_name(f.proto),
                f.port,
                if f.v6 { "v6" } else { "v4" },
                word(want),
                word(got)
            ));
            self.endpoints.insert(f.src.to_string());
            self.endpoints.insert(f.dst.to_string());
        }
    }
}

fn run(case: &Case) {
    let cluster = case_cluster(case);
    let all: Vec<_> = cluster.pods.iter().map(PodInfo::key).collect();
    let mut reg = RuleRegistry::new();
    let compiled = compile(&cluster, &all, &mut reg);
    assert!(
        compiled.problems.is_empty(),
        "{}: {:?}",
        case.name,
        compiled.problems
    );
    let ev = Evaluator::new(&cluster);
    let mut diff = Diff::default();
    let mut probes = 0;
    for v6 in [false, true] {
        let eps = model_endpoints(v6);
        for (sn, s) in &eps {
            for (dn, d) in &eps {
                let both_external =
                    matches!(s, Endpoint::External(_)) && matches!(d, Endpoint::External(_));
                if sn == dn || both_external {
                    continue;
                }
                for (proto, port) in PROBES {
                    let f = Flow {
                        src: sn,
                        dst: dn,
                        proto,
                        port,
                        v6,
                    };
                    let want = (case.expect)(&f);
                    diff.check("reference", &f, want, ev.allows(s, d, proto, port));
                    diff.check(
                        "compiled",
                        &f,
                        want,
                        compiled_allows(&compiled, s, d, proto, port),
                    );
                    probes += 1;
                }
            }
        }
    }
    if !diff.lines.is_empty() {
        let mut msg = format!(
            "case {}: {} mismatches in {probes} probes\n",
            case.name,
            diff.lines.len()
        );
        for l in diff.lines.iter().take(40) {
            writeln!(msg, "{l}").expect("String write");
        }
        for e in &diff.endpoints {
            if let Some(ep) = compiled.endpoints.iter().find(|(k, _)| &k.to_string() == e) {
                write!(msg, "compiled policy of {e}:\n{}", describe(ep.1, &reg))
                    .expect("String write");
            }
        }
        panic!("{msg}");
    }
}

fn case(name: &str) {
    let all = cases();
    let c = all
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name} in conformance::cases()"));
    run(c);
}

macro_rules! table {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { case(stringify!($name)); } )*
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

table!(
    no_policy_allows_everything,
    empty_pod_selector_default_deny_isolates_every_pod_of_its_namespace_only,
    rule_without_from_and_ports_allows_everything,
    empty_ingress_list_without_policy_types_denies_all_ingress,
    pod_selector_peer_means_pods_of_the_policy_namespace,
    namespace_selector_peer_means_every_pod_of_matching_namespaces,
    namespace_and_pod_selector_in_one_peer_mean_their_intersection,
    namespace_and_pod_selector_in_two_peers_mean_their_union,
    empty_namespace_selector_means_every_namespace,
    not_in_and_does_not_exist_match_objects_lacking_the_key,
    port_without_protocol_means_tcp,
    protocol_only_port_entry_allows_every_port_of_that_protocol,
    sctp_rule_allows_neither_tcp_nor_udp,
    rule_without_ports_allows_every_protocol_including_icmp,
    endport_range_is_inclusive,
    named_port_resolves_per_target_pod,
    named_port_with_protocol_must_match_the_container_port_protocol,
    egress_named_port_resolves_per_destination_pod,
    egress_named_port_with_empty_to_resolves_against_every_pod_but_no_external_host,
    named_port_matches_nothing_for_ipblock_peers,
    policy_types_default_adds_egress_only_with_egress_rules,
    rules_of_a_direction_missing_from_policy_types_are_ignored,
    egress_type_with_no_rules_denies_all_egress_including_external,
    ipblock_matches_pod_addresses_and_except_removes_one,
    except_in_one_rule_does_not_hide_allow_of_another_rule,
    except_of_one_peer_does_not_hide_an_overlapping_peer_of_the_same_rule,
    address_in_cidr_and_except_of_different_policies_is_allowed,
    pod_peer_and_covering_ipblock_combine_their_ports,
    several_policies_selecting_one_pod_combine_as_a_union,
    egress_ipblock_except_blocks_the_excepted_range,
    default_namespace_name_label_selects_a_namespace_by_name,
    egress_allow_all_policy_wins_over_a_stacked_narrower_egress_policy,
    connection_needs_both_egress_at_source_and_ingress_at_destination,
);

#[test]
fn every_table_case_has_a_test() {
    let mut table: Vec<_> = cases().iter().map(|c| c.name).collect();
    let mut named = NAMES.to_vec();
    table.sort();
    named.sort();
    assert_eq!(table, named);
}
