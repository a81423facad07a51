//! PL301 dns-blocked, PL302 dns-one-transport: a default deny for egress that also cuts
//! name lookups, or lets them through over UDP only (answers that do not fit a UDP reply are
//! retried over TCP, and fail).
//!
//! With the cluster DNS Service in the state (`kube-system/kube-dns`, or a Service labelled
//! `k8s-app: kube-dns`), every pod isolated for egress is asked of the evaluator: can it
//! reach a DNS backend on the Service's UDP 53 and TCP 53 target ports? Pods whose egress is
//! denied completely (no egress rule at all) are left alone: that is a deliberate lockdown.
//! Without the DNS Service, only the policy-level half can be checked: a policy whose egress
//! rules allow port 53 over one transport and never the other.

use std::collections::BTreeMap;

use super::{Cx, DNS_BLOCKED, DNS_ONE_TRANSPORT, object};
use crate::model::{Endpoint, PodInfo, Protocol};
use crate::service::{ServiceInfo, dns_service};
use crate::validate::{Direction, NormRule, PortMatch};
use crate::wording;

pub(super) fn check(cx: &mut Cx) {
    let svc = dns_service(cx.input.services).filter(|s| !s.backends(cx.cluster()).is_empty());
    match svc {
        Some(svc) => with_service(cx, svc),
        None => {
            if cx.ev.policies.iter().any(|p| p.egress.is_some()) {
                cx.note(
                "dns-blocked (PL301) skipped: no cluster DNS Service with backend pods in the state \
                 (kube-system/kube-dns or a Service labelled k8s-app=kube-dns); dns-one-transport \
                 (PL302) checked per policy only",
                );
            }
            per_policy(cx);
        }
    }
}

/// (backend, target port) of every backend for the DNS Service's port 53 over `proto`.
fn targets<'c>(cx: &Cx<'c>, svc: &ServiceInfo, proto: Protocol) -> Vec<(&'c PodInfo, u16)> {
    let backends = svc.backends(cx.cluster());
    svc.ports
        .iter()
        .filter(|p| p.port == 53 && p.protocol == proto)
        .flat_map(|sp| {
            backends
                .iter()
                .filter_map(move |b| ServiceInfo::target_port(sp, b).map(|t| (*b, t)))
        })
        .collect()
}

fn with_service(cx: &mut Cx, svc: &ServiceInfo) {
    let udp = targets(cx, svc, Protocol::Udp);
    let tcp = targets(cx, svc, Protocol::Tcp);
    let reach = |cx: &Cx, i: usize, targets: &[(&PodInfo, u16)], proto: u8| {
        let pod = cx.pod(i);
        targets.iter().any(|(b, port)| {
            b.ips.iter().any(|ip| {
                let ep = Endpoint::Pod {
                    pod: b.key(),
                    addr: *ip,
                };
                pod.ips.iter().any(|a| a.is_ipv6() == ip.is_ipv6())
                    && cx.passes(i, Direction::Egress, &ep, proto, *port)
            })
        })
    };
    // Pods grouped by the policies isolating them for egress and what they reach.
    let mut groups: BTreeMap<(Vec<usize>, bool, bool), Vec<String>> = BTreeMap::new();
    for (i, pod) in cx.cluster().pods.iter().enumerate() {
        if pod.host_network || pod.ips.is_empty() {
            continue;
        }
        let isolating: Vec<usize> = cx.selecting[i]
            .iter()
            .copied()
            .filter(|pi| cx.ev.policies[*pi].egress.is_some())
            .collect();
        let has_rules = isolating.iter().any(|pi| {
            cx.ev.policies[*pi]
                .egress
                .as_ref()
                .is_some_and(|r| !r.is_empty())
        });
        if !has_rules {
            continue;
        }
        let u = udp.is_empty() || reach(cx, i, &udp, 17);
        let t = tcp.is_empty() || reach(cx, i, &tcp, 6);
        if u && t {
            continue;
        }
        groups
            .entry((isolating, u, t))
            .or_default()
            .push(pod.key().to_string());
    }
    let fix = format!(
        "add an egress rule: to: [{{namespaceSelector: {{matchLabels: \
         {{kubernetes.io/metadata.name: {}}}}}, podSelector: {{matchLabels: {{{}}}}}}}], ports: \
         [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]",
        svc.namespace,
        svc.selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for ((isolating, u, t), mut pods) in groups {
        pods.sort();
        let names: Vec<String> = isolating
            .iter()
            .map(|pi| {
                let p = &cx.ev.policies[*pi];
                format!("{}/{}", p.namespace, p.name)
            })
            .collect();
        // The finding goes to the first isolating policy with egress rules.
        let Some(&first) = isolating.iter().find(|pi| {
            cx.ev.policies[**pi]
                .egress
                .as_ref()
                .is_some_and(|r| !r.is_empty())
        }) else {
            continue;
        };
        let pol = &cx.ev.policies[first];
        let (check, what) = match (u, t) {
            (false, false) => (
                &DNS_BLOCKED,
                "cannot reach the cluster DNS at all".to_string(),
            ),
            (true, false) => (
                &DNS_ONE_TRANSPORT,
                "reach the cluster DNS over UDP but not TCP: answers too large for UDP are \
                 retried over TCP and fail"
                    .to_string(),
            ),
            _ => (
                &DNS_ONE_TRANSPORT,
                "reach the cluster DNS over TCP but not UDP, which resolvers try first".to_string(),
            ),
        };
        let msg = format!(
            "pods {} are isolated for egress (by {}) and {what} ({} pods on port 53)",
            wording::list(&pods, 5),
            names.join(", "),
            svc.key()
        );
        cx.report(check, object(pol), "spec.egress", msg, Some(fix.clone()));
    }
}

/// Whether `rule` allows port 53 over `proto` to some peer (a named port may be 53).
fn allows_53(rule: &NormRule, proto: Protocol) -> bool {
    match &rule.ports {
        None => true,
        Some(ports) => ports.iter().any(|p| {
            p.proto == proto
                && match &p.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&53),
                    // A name usually given to port 53 (resolved per pod; a guess here).
                    PortMatch::Named(n) => matches!(n.as_str(), "dns" | "dns-tcp" | "domain"),
                }
        }),
    }
}

fn per_policy(cx: &mut Cx) {
    let mut found = Vec::new();
    for pol in &cx.ev.policies {
        let Some(rules) = &pol.egress else { continue };
        let udp: Vec<usize> = (0..rules.len())
            .filter(|i| allows_53(&rules[*i], Protocol::Udp))
            .collect();
        let tcp: Vec<usize> = (0..rules.len())
            .filter(|i| allows_53(&rules[*i], Protocol::Tcp))
            .collect();
        let (only, other, missing, why) = match (udp.is_empty(), tcp.is_empty()) {
            (false, true) => (
                udp,
                "UDP",
                "TCP",
                "answers too large for UDP are retried over TCP and fail",
            ),
            (true, false) => (tcp, "TCP", "UDP", "resolvers ask over UDP first"),
            _ => continue,
        };
        for i in only {
            found.push((
                object(pol),
                wording::rule_path(Direction::Egress, i),
                format!(
                    "allows DNS (port 53) over {other} only, and no egress rule of this policy \
                     allows {missing} 53: {why}"
                ),
                format!("add {{protocol: {missing}, port: 53}} to this rule's ports"),
            ));
        }
    }
    for (obj, path, msg, sugg) in found {
        cx.report(&DNS_ONE_TRANSPORT, obj, path, msg, Some(sugg));
    }
}
