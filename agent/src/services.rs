//! Service addresses for `pal_svc_v1`.
//!
//! Egress to a Service address is judged after kube-proxy's translation
//! (`palisade_common::service` has the design). The agent's part: keep `pal_svc_v1` equal to
//! the set of every Service's ClusterIPs, external IPs and load balancer ingress IPs (this
//! module), and keep `to_uplink` attached to the interfaces translated packets leave the node
//! through (`node::uplinks`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use palisade_common::service::SvcAddrKey;
use palisade_common::{FAMILY_V4, FAMILY_V6};

use crate::source::Snapshot;
use crate::status::Problem;

/// Map key of one address.
pub fn addr_key(ip: IpAddr) -> SvcAddrKey {
    match ip {
        IpAddr::V4(v4) => {
            let mut k = SvcAddrKey {
                family: FAMILY_V4,
                ..Default::default()
            };
            k.addr_be[..4].copy_from_slice(&v4.octets());
            k
        }
        IpAddr::V6(v6) => SvcAddrKey {
            family: FAMILY_V6,
            addr_be: v6.octets(),
            ..Default::default()
        },
    }
}

/// Most addresses one Service may put in `pal_svc_v1` (ClusterIPs, external IPs and load
/// balancer ingress IPs together). Kubernetes bounds none of `spec.externalIPs` or
/// `status.loadBalancer.ingress`, so one tenant could otherwise fill the map that every
/// Service of the cluster shares (issue 9 §3). A Service over the limit is rejected alone.
pub const MAX_ADDRS_PER_SERVICE: usize = 256;

/// What a rejected Service means for packets, said in its problem.
const REJECTED: &str = "its addresses are left out of pal_svc_v1 (egress to them is judged \
    on the Service address, before translation; ingress at its backends is judged as always)";

/// Every address kube-proxy translates for `svc`: `spec.clusterIP(s)` (not `None`: headless
/// Services have no translation; their DNS names resolve to pod addresses, which policy sees
/// directly), `spec.externalIPs`, `status.loadBalancer.ingress[].ip`. Values that are not IP
/// addresses are reported, naming the field.
fn addrs_of(svc: &Service, name: &str, problems: &mut Vec<Problem>) -> BTreeSet<SvcAddrKey> {
    let mut out = BTreeSet::new();
    let mut add = |field: &str, v: &str| {
        if v.is_empty() || v == "None" {
            return;
        }
        match v.parse::<IpAddr>() {
            Ok(ip) => {
                out.insert(addr_key(ip));
            }
            Err(_) => problems.push(Problem {
                object: name.to_string(),
                field: field.to_string(),
                message: format!("{v:?} is not an IP address; not treated as a Service address"),
            }),
        }
    };
    if let Some(spec) = &svc.spec {
        if let Some(ip) = &spec.cluster_ip {
            add("spec.clusterIP", ip);
        }
        for ip in spec.cluster_ips.iter().flatten() {
            add("spec.clusterIPs", ip);
        }
        for ip in spec.external_ips.iter().flatten() {
            add("spec.externalIPs", ip);
        }
    }
    if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        for ing in lb.ingress.iter().flatten() {
            if let Some(ip) = &ing.ip {
                add("status.loadBalancer.ingress.ip", ip);
            }
        }
    }
    out
}

/// The field holding most of `svc`'s addresses (named by a rejection).
fn field_of(svc: &Service) -> &'static str {
    let external = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .map_or(0, Vec::len);
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map_or(0, Vec::len);
    if lb > external {
        "status.loadBalancer.ingress"
    } else {
        "spec.externalIPs"
    }
}

/// The desired content of `pal_svc_v1` for a map of `capacity` entries, and the problems.
///
/// Admission, so that one Service cannot stall the others: a Service with more than
/// [`MAX_ADDRS_PER_SERVICE`] addresses is rejected; the others are admitted smallest first
/// (then by namespace/name) while their addresses fit, so a Service that does not fit is the
/// one rejected, never the small ones already there. A rejected Service is named in a problem
/// with the numbers; it is admitted again by the first reconcile after it shrinks or space
/// frees up (nothing is retried in between: the desired state does not change).
pub fn service_addrs(snap: &Snapshot, capacity: u32) -> (BTreeSet<SvcAddrKey>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut sized = Vec::new();
    for ((ns, n), svc) in &snap.services {
        let name = format!("Service {ns}/{n}");
        let addrs = addrs_of(svc, &name, &mut problems);
        if addrs.len() > MAX_ADDRS_PER_SERVICE {
            problems.push(Problem {
                object: name,
                field: field_of(svc).into(),
                message: format!(
                    "{} addresses (ClusterIPs, external and load balancer IPs), more than the \
                     {MAX_ADDRS_PER_SERVICE} a Service may have; rejected: {REJECTED}",
                    addrs.len()
                ),
            });
            continue;
        }
        sized.push((addrs.len(), name, field_of(svc), addrs));
    }
    sized.sort();
    let mut out = BTreeSet::new();
    for (_, name, field, addrs) in sized {
        let new = addrs.difference(&out).count();
        let free = (capacity as usize).saturating_sub(out.len());
        if new > free {
            problems.push(Problem {
                object: name,
                field: field.into(),
                message: format!(
                    "needs {new} more entries in {}, {free} of {capacity} free; rejected: \
                     {REJECTED}",
                    palisade_common::maps::SERVICES
                ),
            });
            continue;
        }
        out.extend(addrs);
    }
    (out, problems)
}

/// The desired content of `pal_dnssrv_v1`: the ClusterIPs of the cluster DNS Service
/// `service` ("namespace/name", `palisade-agent --dns-service`), whose answers teach pods the
/// addresses of their allowed names (after kube-proxy's reverse translation an answer comes
/// from the ClusterIP the pod asked). `names_in_use`: some local pod has name rules, so a
/// missing Service is a problem worth reporting (its pods learn nothing: every name fails
/// closed).
pub fn dns_server_addrs(
    snap: &Snapshot,
    service: &str,
    names_in_use: bool,
) -> (BTreeSet<SvcAddrKey>, Vec<Problem>) {
    let mut problems = Vec::new();
    let object = format!("Service {service}");
    let key = service
        .split_once('/')
        .map(|(ns, n)| (ns.to_string(), n.to_string()));
    let Some(svc) = key.and_then(|k| snap.services.get(&k)) else {
        if names_in_use {
            problems.push(Problem {
                object,
                field: "metadata.name".into(),
                message: format!(
                    "the cluster DNS Service (--dns-service {service}) is not in the source: no \
                     answer teaches pods the addresses of their domainNames rules (every name \
                     is refused)"
                ),
            });
        }
        return (BTreeSet::new(), problems);
    };
    let mut out = BTreeSet::new();
    let spec = svc.spec.as_ref();
    let ips = spec
        .and_then(|s| s.cluster_ip.iter().next())
        .into_iter()
        .chain(
            spec.and_then(|s| s.cluster_ips.as_ref())
                .into_iter()
                .flatten(),
        );
    for ip in ips {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(a) => {
                out.insert(addr_key(a));
            }
            Err(_) => problems.push(Problem {
                object: object.clone(),
                field: "spec.clusterIPs".into(),
                message: format!("{ip:?} is not an IP address; not a DNS server address"),
            }),
        }
    }
    let max = palisade_common::maps::DNS_SERVERS_MAX as usize;
    if out.len() > max {
        problems.push(Problem {
            object,
            field: "spec.clusterIPs".into(),
            message: format!("{} addresses, more than the {max} kept", out.len()),
        });
        out = out.into_iter().take(max).collect();
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    fn svc(yaml: &str) -> Arc<Service> {
        Arc::new(serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn the_dns_service_gives_its_cluster_ips_and_a_missing_one_is_named() {
        let mut snap = Snapshot::default();
        let (addrs, problems) = dns_server_addrs(&snap, "kube-system/kube-dns", true);
        assert!(addrs.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].object == "Service kube-system/kube-dns"
                && problems[0].message.contains("every name is refused"),
            "{problems:?}"
        );
        assert!(
            dns_server_addrs(&snap, "kube-system/kube-dns", false)
                .1
                .is_empty()
        );
        snap.services.insert(
            ("kube-system".into(), "kube-dns".into()),
            svc("metadata: {name: kube-dns, namespace: kube-system}\nspec:\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00:10:96::a', bogus]\n  externalIPs: [192.0.2.7]\n"),
        );
        let (addrs, problems) = dns_server_addrs(&snap, "kube-system/kube-dns", true);
        let want: BTreeSet<SvcAddrKey> = ["10.96.0.10", "fd00:10:96::a"]
            .iter()
            .map(|a| addr_key(a.parse().unwrap()))
            .collect();
        assert_eq!(addrs, want);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.clusterIPs");
    }

    #[test]
    fn cluster_external_and_load_balancer_addresses_are_service_addresses() {
        let mut snap = Snapshot {
            services: BTreeMap::new(),
            ..Default::default()
        };
        snap.services.insert(
            ("a".into(), "web".into()),
            svc("metadata: {name: web, namespace: a}\nspec:\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00:96::a']\n  externalIPs: [192.0.2.7]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.1}, {hostname: lb.example}]\n"),
        );
        snap.services.insert(
            ("a".into(), "headless".into()),
            svc("metadata: {name: headless, namespace: a}\nspec: {clusterIP: None}\n"),
        );
        let (addrs, problems) = service_addrs(&snap, 1024);
        assert!(problems.is_empty(), "{problems:?}");
        let want: BTreeSet<SvcAddrKey> = ["10.96.0.10", "fd00:96::a", "192.0.2.7", "198.51.100.1"]
            .iter()
            .map(|a| addr_key(a.parse().unwrap()))
            .collect();
        assert_eq!(addrs, want);
    }

    #[test]
    fn a_bad_address_is_reported_with_its_field() {
        let mut snap = Snapshot::default();
        snap.services.insert(
            ("a".into(), "bad".into()),
            svc("metadata: {name: bad, namespace: a}\nspec: {externalIPs: [not-an-ip]}\n"),
        );
        let (addrs, problems) = service_addrs(&snap, 1024);
        assert!(addrs.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.externalIPs");
        assert!(problems[0].object.contains("a/bad"));
        assert!(problems[0].message.contains("not-an-ip"));
    }

    fn with_external_ips(snap: &mut Snapshot, name: &str, first: u32, n: u32) {
        let ips: Vec<String> = (first..first + n)
            .map(|i| format!("'{}'", std::net::Ipv4Addr::from(0xc000_0000 + i)))
            .collect();
        snap.services.insert(
            ("t".into(), name.into()),
            svc(&format!(
                "metadata: {{name: {name}, namespace: t}}\nspec: {{clusterIP: {}, externalIPs: [{}]}}\n",
                std::net::Ipv4Addr::from(0x0a60_0000 + first),
                ips.join(", ")
            )),
        );
    }

    #[test]
    fn a_service_over_the_per_service_limit_is_rejected_alone_with_the_numbers() {
        let mut snap = Snapshot::default();
        with_external_ips(&mut snap, "small", 0, 3);
        with_external_ips(&mut snap, "huge", 1000, 30_000);
        let (addrs, problems) = service_addrs(&snap, 65_536);
        assert_eq!(addrs.len(), 4, "the small Service is admitted");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].object, "Service t/huge");
        assert_eq!(problems[0].field, "spec.externalIPs");
        assert!(
            problems[0].message.contains("30001 addresses") && problems[0].message.contains("256"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn services_that_do_not_fit_are_rejected_largest_first_and_admitted_when_space_frees() {
        let mut snap = Snapshot::default();
        with_external_ips(&mut snap, "a", 0, 10);
        with_external_ips(&mut snap, "b", 100, 200);
        with_external_ips(&mut snap, "c", 400, 20);
        // 11 + 201 + 21 = 233 addresses, 64 entries: b does not fit, a and c do.
        let (addrs, problems) = service_addrs(&snap, 64);
        assert_eq!(addrs.len(), 32);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].object, "Service t/b");
        assert!(
            problems[0]
                .message
                .contains("needs 201 more entries in pal_svc_v1, 32 of 64 free"),
            "{}",
            problems[0].message
        );
        // b deleted: nothing rejected.
        snap.services.remove(&("t".into(), "b".into()));
        let (addrs, problems) = service_addrs(&snap, 64);
        assert_eq!((addrs.len(), problems.len()), (32, 0));
    }
}
