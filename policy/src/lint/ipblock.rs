//! PL601 ipblock-covers-pods, PL602 ipblock-covers-services: an ipBlock is a pure address
//! match (docs/policy.md), which authors often read as "hosts outside the cluster".
//!
//! - `ipBlock: 0.0.0.0/0` also matches every pod, whatever its labels (info: often meant).
//! - An egress ipBlock over Service addresses (a service CIDR, a ClusterIP) allows nothing
//!   for Service traffic: Palisade, like kube-proxy based CNIs, judges a connection to a
//!   Service after translation, against the backend pod and its target port.

use std::net::IpAddr;

use super::{Cx, IPBLOCK_COVERS_PODS, IPBLOCK_COVERS_SERVICES, object};
use crate::eval::PeerHit;
use crate::model::{Endpoint, PodInfo};
use crate::prefix::{Prefix, max_len};
use crate::service::ServiceInfo;
use crate::validate::{Direction, Peer};
use crate::wording;

pub(super) fn check(cx: &mut Cx) {
    let mut found = Vec::new();
    for (pi, pol) in cx.ev.policies.iter().enumerate() {
        for dir in Direction::BOTH {
            for (ri, rule) in pol.rules(dir).into_iter().flatten().enumerate() {
                for (k, peer) in rule.peers.iter().flatten().enumerate() {
                    let Peer::Block { cidr, except } = peer else {
                        continue;
                    };
                    let inside = |a: &IpAddr| {
                        cidr.contains_addr(*a) && !except.iter().any(|e| e.contains_addr(*a))
                    };
                    let path = format!(
                        "{}.{}[{k}].ipBlock",
                        wording::rule_path(dir, ri),
                        wording::peer_field(dir)
                    );
                    let pods: Vec<&PodInfo> = cx
                        .cluster()
                        .pods
                        .iter()
                        .filter(|p| !p.host_network && p.ips.iter().any(inside))
                        .collect();
                    if !pods.is_empty() {
                        let mut names = pods
                            .iter()
                            .take(5)
                            .map(|p| p.key().to_string())
                            .collect::<Vec<_>>()
                            .join(", ");
                        if pods.len() > 5 {
                            names.push_str(&format!(" and {} more", pods.len() - 5));
                        }
                        let msg = if cidr.len == 0 && except.is_empty() {
                            format!(
                                "{cidr} is every address: it matches every pod of the cluster \
                                 ({} here) too, not only hosts outside it",
                                pods.len()
                            )
                        } else {
                            format!(
                                "ipBlock {} matches {} pods by address ({}): an ipBlock is a pure \
                                 address match, so they match whatever their labels and namespace",
                                block_words(cidr, except),
                                pods.len(),
                                names
                            )
                        };
                        let hull =
                            covering(pods.iter().flat_map(|p| p.ips.iter()).filter(|a| inside(a)));
                        let suggestion = match hull.filter(|h| h.len > cidr.len) {
                            Some(h) => format!(
                                "if you meant hosts outside the cluster only, except the cluster's \
                                 pod CIDR (these pods are in {h})"
                            ),
                            None => "if you meant hosts outside the cluster only, except the \
                                     cluster's pod CIDR; to allow pods, prefer pod and namespace \
                                     selectors"
                                .to_string(),
                        };
                        found.push((
                            &IPBLOCK_COVERS_PODS,
                            object(pol),
                            path.clone(),
                            msg,
                            Some(suggestion),
                        ));
                    }
                    if dir != Direction::Egress {
                        continue;
                    }
                    let mut unreached = Vec::new();
                    for svc in cx.input.services {
                        let covered: Vec<IpAddr> = svc
                            .addresses
                            .iter()
                            .copied()
                            .filter(|a| inside(a))
                            .collect();
                        if covered.is_empty() {
                            continue;
                        }
                        let backends = svc.backends(cx.cluster());
                        if backends.is_empty() {
                            continue;
                        }
                        let src = cx.selected[pi].first().map(|i| cx.pod(*i));
                        if !reaches_a_backend(cx, pi, ri, src, svc, &backends) {
                            unreached.push(format!(
                                "{} ({})",
                                svc.key(),
                                covered
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    }
                    if !unreached.is_empty() {
                        found.push((
                            &IPBLOCK_COVERS_SERVICES,
                            object(pol),
                            path,
                            format!(
                                "covers the address of Service {} but this rule allows none of \
                                 its backend pods: a connection to a Service is judged after \
                                 kube-proxy translates it, against the backend pod and target \
                                 port, so this ipBlock does not let it through",
                                wording::list(&unreached, 3)
                            ),
                            Some(
                                "allow the Service's backend pods instead (a podSelector with the \
                                 Service's selector, and a namespaceSelector on \
                                 kubernetes.io/metadata.name) on their target ports"
                                    .to_string(),
                            ),
                        ));
                    }
                }
            }
        }
    }
    for (check, obj, path, msg, sugg) in found {
        cx.report(check, obj, path, msg, sugg);
    }
}

/// `10.0.0.0/16 except 10.0.1.0/24, ...`.
fn block_words(cidr: &Prefix, except: &[Prefix]) -> String {
    if except.is_empty() {
        return cidr.to_string();
    }
    let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
    format!("{cidr} except {}", ex.join(", "))
}

/// Whether egress rule `ri` of policy `pi` allows some backend of `svc` on some of its
/// target ports (from `src`, one pod the policy selects; the rule's egress answer does not
/// depend on which).
fn reaches_a_backend(
    cx: &Cx,
    pi: usize,
    ri: usize,
    src: Option<&PodInfo>,
    svc: &ServiceInfo,
    backends: &[&PodInfo],
) -> bool {
    let pol = &cx.ev.policies[pi];
    let Some(rule) = pol.egress.as_ref().and_then(|r| r.get(ri)) else {
        return false;
    };
    let fallback = PodInfo {
        namespace: pol.namespace.clone(),
        ..Default::default()
    };
    let src = src.unwrap_or(&fallback);
    backends.iter().any(|b| {
        svc.ports.iter().any(|sp| {
            let Some(target) = ServiceInfo::target_port(sp, b) else {
                return false;
            };
            b.ips.iter().any(|ip| {
                let ep = Endpoint::Pod {
                    pod: b.key(),
                    addr: *ip,
                };
                cx.ev
                    .rule_match(
                        pol,
                        rule,
                        Direction::Egress,
                        src,
                        &ep,
                        sp.protocol.number(),
                        target,
                    )
                    .iter()
                    .any(PeerHit::allows)
            })
        })
    })
}

/// The longest prefix holding every address of `addrs` (all of one family is assumed; the
/// first address decides it).
fn covering<'a>(mut addrs: impl Iterator<Item = &'a IpAddr>) -> Option<Prefix> {
    let first = *addrs.next()?;
    let mut p = Prefix::host(first);
    for a in addrs {
        if a.is_ipv6() != first.is_ipv6() {
            continue;
        }
        while !p.contains_addr(*a) {
            p = Prefix::new(p.addr, p.len - 1);
        }
    }
    debug_assert!(p.len <= max_len(&first));
    Some(p)
}
