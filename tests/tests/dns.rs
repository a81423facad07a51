//! DNS egress in the lab: kube-dns (Debian's dnsmasq in pod `kube-system/kube-dns`, behind the
//! kube-dns Service's ClusterIPs, translated by the lab's kube-proxy rules) and the usual
//! policy pair: default-deny egress plus "UDP and TCP 53 to the kube-dns pods". Lookups through
//! the ClusterIP work over UDP and TCP, v4 and v6, and nothing else leaves. See
//! docs/services.md.

use std::net::IpAddr;
use std::time::Duration;

use palisade_tests::lab::dns::{KubeDns, QType, Transport};
use palisade_tests::lab::{
    AgentMode, Case, Family, Lab, LabConfig, Peer, Protocol, Reachability, plugin_works,
    stub_plugin,
};
use palisade_tests::require_privileges;

const NAME: &str = "web.lab.test";

fn records() -> Vec<(&'static str, IpAddr)> {
    vec![
        (NAME, "10.96.2.1".parse().expect("ip")),
        (NAME, "fd00:10:96::201".parse().expect("ip")),
    ]
}

/// One node with the conformance addresses, so the outside host `ext` exists.
fn lab(agent: AgentMode) -> (Lab, KubeDns) {
    let mut c = LabConfig {
        agent,
        verbose: true,
        conformance_addresses: true,
        ..LabConfig::default()
    };
    if agent == AgentMode::Off && !plugin_works(&palisade_tests::bin_dir().join("palisade")) {
        c.cni_plugin = Some(stub_plugin());
    }
    let mut lab = Lab::start(c).expect("lab starts");
    eprintln!("lab {}: {}", lab.id(), lab.mode());
    let dns = lab.start_kube_dns("n0", &records()).expect("kube-dns runs");
    lab.wait_synced().expect("synced");
    (lab, dns)
}

/// Looks `NAME` up from `from` through the kube-dns ClusterIP of every family, with both
/// transports; returns `(family, transport, answered with the records)` for each.
fn lookups(lab: &Lab, from: &str) -> Vec<(Family, Transport, bool)> {
    let mut out = Vec::new();
    for (family, v6) in [(Family::V4, false), (Family::V6, true)] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let mut ok = true;
            for (qtype, want) in [(QType::A, records()[0].1), (QType::Aaaa, records()[1].1)] {
                let got = lab
                    .dns_lookup(
                        from,
                        Lab::kube_dns_addr(v6),
                        NAME,
                        qtype,
                        transport,
                        Duration::from_millis(1500),
                    )
                    .expect("lookup runs");
                eprintln!("{from} -> kube-dns {family} {transport:?} {qtype:?}: {got:?}");
                ok &= got == Some(vec![want]);
            }
            out.push((family, transport, ok));
        }
    }
    out
}

/// Baseline (no agent): the kube-dns Service works through the lab's kube-proxy rules.
#[test]
fn privileged_dns_baseline_lookups_through_the_kube_dns_cluster_ip() {
    if !require_privileges("privileged_dns_baseline_lookups_through_the_kube_dns_cluster_ip") {
        return;
    }
    let (lab, _dns) = lab(AgentMode::Off);
    for (family, transport, ok) in lookups(&lab, "x/a") {
        assert!(ok, "lookup through kube-dns {family} {transport:?} failed");
    }
}

const DENY_EGRESS_ALLOW_DNS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
          podSelector: {matchLabels: {k8s-app: kube-dns}}
      ports:
        - {protocol: UDP, port: 53}
        - {protocol: TCP, port: 53}
";

/// Default-deny egress in x plus the usual DNS rule: lookups through the kube-dns ClusterIP
/// work over UDP and TCP (v4 and v6), and nothing else leaves x: no pod (in x or elsewhere,
/// kube-dns's other ports included) and not the outside host.
#[test]
fn privileged_dns_default_deny_egress_allows_only_lookups_through_kube_dns() {
    if !require_privileges(
        "privileged_dns_default_deny_egress_allows_only_lookups_through_kube_dns",
    ) {
        return;
    }
    let (mut lab, _dns) = lab(AgentMode::Required);
    lab.apply_yaml("dns-policy", DENY_EGRESS_ALLOW_DNS)
        .expect("policies applied");
    lab.wait_synced().expect("synced");
    let failed: Vec<String> = lookups(&lab, "x/a")
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(f, t, _)| format!("{f} {t:?}"))
        .collect();
    let cases = [
        Case {
            port: 80,
            protocol: Protocol::Tcp,
        },
        Case {
            port: 80,
            protocol: Protocol::Udp,
        },
        Case {
            port: 81,
            protocol: Protocol::Tcp,
        },
    ];
    let mut table_failures = Vec::new();
    for family in [Family::V4, Family::V6] {
        let observed = lab.probe_everything(&cases, family).expect("probes run");
        let mut expected = Reachability::all_reachable_like(&observed);
        expected.expect_peer(&Peer::ns("x"), &Peer::any(), false);
        expected.allow_loopback();
        if let Some(d) = expected.diff(&observed, true) {
            table_failures.push(format!("{family}:\n{d}"));
        }
    }
    assert!(
        failed.is_empty() && table_failures.is_empty(),
        "lookups that failed: {failed:?}\nreachability beyond DNS:\n{}\nagent logs: {:?}",
        table_failures.join("\n"),
        lab.agent_logs()
    );
}

/// Exactness of the DNS rule: allowing only UDP 53 lets UDP lookups through the ClusterIP
/// pass and TCP lookups fail (the Service's TCP port 53 is a different (protocol, port)).
#[test]
fn privileged_dns_udp_only_rule_blocks_tcp_lookups() {
    if !require_privileges("privileged_dns_udp_only_rule_blocks_tcp_lookups") {
        return;
    }
    let (mut lab, _dns) = lab(AgentMode::Required);
    lab.apply_yaml(
        "dns-udp-only",
        &DENY_EGRESS_ALLOW_DNS.replace("        - {protocol: TCP, port: 53}\n", ""),
    )
    .expect("policies applied");
    lab.wait_synced().expect("synced");
    for (family, transport, ok) in lookups(&lab, "x/a") {
        assert_eq!(
            ok,
            transport == Transport::Udp,
            "{family} {transport:?}: only UDP lookups may pass"
        );
    }
}
