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

/// Every address kube-proxy translates for `svc`: `spec.clusterIP(s)` (not `None`: headless
/// Services have no translation; their DNS names resolve to pod addresses, which policy sees
/// directly), `spec.externalIPs`, `status.loadBalancer.ingress[].ip`. Values that are not IP
/// addresses are reported, naming the field.
fn addrs_of(svc: &Service, out: &mut BTreeSet<SvcAddrKey>, problems: &mut Vec<Problem>) {
    let name = format!(
        "Service {}/{}",
        svc.metadata.namespace.as_deref().unwrap_or(""),
        svc.metadata.name.as_deref().unwrap_or("")
    );
    let mut add = |field: &str, v: &str| {
        if v.is_empty() || v == "None" {
            return;
        }
        match v.parse::<IpAddr>() {
            Ok(ip) => {
                out.insert(addr_key(ip));
            }
            Err(_) => problems.push(Problem {
                object: name.clone(),
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
}

/// The desired content of `pal_svc_v1`.
pub fn service_addrs(snap: &Snapshot) -> (BTreeSet<SvcAddrKey>, Vec<Problem>) {
    let mut out = BTreeSet::new();
    let mut problems = Vec::new();
    for svc in snap.services.values() {
        addrs_of(svc, &mut out, &mut problems);
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
        let (addrs, problems) = service_addrs(&snap);
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
        let (addrs, problems) = service_addrs(&snap);
        assert!(addrs.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.externalIPs");
        assert!(problems[0].object.contains("a/bad"));
        assert!(problems[0].message.contains("not-an-ip"));
    }
}
