//! kube-proxy's iptables data path in the lab: Service and EndpointSlice objects (the YAML a
//! test applies, parsed into k8s-openapi types) become NAT rules laid out as kube-proxy's
//! iptables mode lays them out, loaded with `iptables-restore` / `ip6tables-restore` into every
//! node namespace (never the machine's own namespace). See docs/services.md.
//!
//! Layout (table `nat`, per family):
//! - `PREROUTING` and `OUTPUT` jump to `KUBE-SERVICES` (traffic from pods arrives through
//!   PREROUTING; traffic the node itself sends through OUTPUT);
//! - `KUBE-SERVICES`: one rule per (ClusterIP, Service port) with ready endpoints, matching
//!   destination address, protocol and port, jumping to `KUBE-SVC-<hash>`;
//! - `KUBE-SVC-<hash>`: one rule per endpoint; endpoint `i` of `n` is taken with probability
//!   `1/(n-i)` (`-m statistic --mode random`), the last one unconditionally, so every endpoint
//!   is equally likely; conntrack keeps a connection on the endpoint its first packet drew;
//! - `KUBE-SEP-<hash>`: `DNAT --to-destination <endpoint ip>:<port>`;
//! - `KUBE-NODEPORTS`: one rule per (Service port with a `nodePort`, family with ready
//!   endpoints), matching protocol and node port, jumping to the same `KUBE-SVC-<hash>`;
//!   `KUBE-SERVICES` jumps to it last, for destinations of type `LOCAL` (every address of the
//!   node), as kube-proxy does.
//!
//! The endpoint's port comes from the EndpointSlice port with the Service port's name and
//! protocol, as kube-proxy reads it: a named `targetPort` was resolved per pod by whoever
//! wrote the slice (the endpoint-slice controller; in the lab [`Lab::apply_services`] plays
//! it when a Service has a selector and the YAML brings no slice for it).
//!
//! Differences from kube-proxy, on purpose: no masquerade (pod-to-pod through a Service
//! keeps the client's address, which policy needs; hairpin traffic, a pod reaching itself
//! through its own Service, is therefore not supported; kube-proxy also masquerades NodePort
//! traffic of `externalTrafficPolicy: Cluster` Services, the lab does not), no external IPs or
//! load balancers, and a Service port without ready endpoints gets no rule (kube-proxy REJECTs
//! in the filter table; here the packet finds no route to the Service address).
//!
//! Only chains named `KUBE-*` are written (`--noflush`), so other NAT rules of the node (the
//! agent's masquerade table is nftables `inet palisade`) are left alone.

mod endpoints;
mod lab;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::LabError;
use super::model::kind_of;

pub use endpoints::{ServiceTarget, endpoint_slices_for, per_pod_services_yaml};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The lab's Service CIDRs (ClusterIPs are chosen from them by the tests).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

const HOOK_COMMENT: &str = "kubernetes service portals";
const NODEPORTS: &str = "KUBE-NODEPORTS";

/// The rules of one family (`iptables` or `ip6tables`), before rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatRules {
    /// Every chain the rules use (`KUBE-SERVICES` first), in creation order.
    pub chains: Vec<String>,
    /// `-A <chain> ...` lines, in order.
    pub rules: Vec<String>,
}

impl NatRules {
    /// The `iptables-restore --noflush` input that makes the node's `nat` table hold exactly
    /// these `KUBE-*` chains: every chain is declared (which flushes it), the hooks from
    /// PREROUTING and OUTPUT are added unless `existing` (an `iptables-save -t nat` of the
    /// node) has them, and `KUBE-SVC-*` / `KUBE-SEP-*` chains of `existing` that are no longer
    /// used are flushed and deleted.
    pub fn render(&self, existing: &str) -> String {
        let ours: BTreeSet<&str> = self.chains.iter().map(String::as_str).collect();
        let stale: Vec<&str> = existing
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| {
                (c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-")) && !ours.contains(c)
            })
            .collect();
        let mut out = String::from("*nat\n");
        for c in self
            .chains
            .iter()
            .map(String::as_str)
            .chain(stale.iter().copied())
        {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for hook in ["PREROUTING", "OUTPUT"] {
            let present = existing
                .lines()
                .any(|l| l.starts_with(&format!("-A {hook} ")) && l.ends_with("-j KUBE-SERVICES"));
            if !present {
                out.push_str(&format!(
                    "-A {hook} -m comment --comment \"{HOOK_COMMENT}\" -j KUBE-SERVICES\n"
                ));
            }
        }
        for r in &self.rules {
            out.push_str(r);
            out.push('\n');
        }
        for c in stale {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// The rules of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeProxyRules {
    pub v4: NatRules,
    pub v6: NatRules,
}

/// Services and EndpointSlices among manifest documents (other kinds are skipped).
pub fn parse_objects(docs: &[Value]) -> Result<(Vec<Service>, Vec<EndpointSlice>), LabError> {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for d in docs {
        match kind_of(d) {
            "Service" => services.push(serde_json::from_value(d.clone()).map_err(|e| {
                LabError::Manifest {
                    what: "Service".into(),
                    reason: e.to_string(),
                }
            })?),
            "EndpointSlice" => {
                slices.push(
                    serde_json::from_value(d.clone()).map_err(|e| LabError::Manifest {
                        what: "EndpointSlice".into(),
                        reason: e.to_string(),
                    })?,
                )
            }
            _ => {}
        }
    }
    Ok((services, slices))
}

/// A short stable hash for chain names (FNV-1a 64, 16 hex digits): `KUBE-SVC-` (or portmap's
/// `CNI-DN-`) plus it fits iptables' 28-character chain names.
pub(in crate::lab) fn chain_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

fn protocol_of(p: Option<&str>) -> Result<&'static str, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok("tcp"),
        "UDP" => Ok("udp"),
        "SCTP" => Ok("sctp"),
        other => Err(format!("protocol {other:?} (TCP, UDP or SCTP)")),
    }
}

fn is_v4_slice(s: &EndpointSlice) -> Option<bool> {
    match s.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        _ => None,
    }
}

/// The ClusterIPs of a Service (`spec.clusterIPs`, else `spec.clusterIP`), without `None`.
pub fn cluster_ips(svc: &Service) -> Result<Vec<IpAddr>, LabError> {
    let Some(spec) = &svc.spec else {
        return Ok(Vec::new());
    };
    let list: Vec<&String> = match &spec.cluster_ips {
        Some(l) if !l.is_empty() => l.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    list.into_iter()
        .filter(|s| !s.is_empty() && s.as_str() != "None")
        .map(|s| {
            s.parse().map_err(|_| LabError::Manifest {
                what: format!("Service {}", object_name(&svc.metadata)),
                reason: format!("clusterIP {s:?} is not an IP address"),
            })
        })
        .collect()
}

fn object_name(m: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or("")
    )
}

/// The rules for `services` with the endpoints of `slices` (pure).
pub fn generate(
    services: &[Service],
    slices: &[EndpointSlice],
) -> Result<KubeProxyRules, LabError> {
    let mut out = KubeProxyRules::default();
    for r in [&mut out.v4, &mut out.v6] {
        // KUBE-NODEPORTS is always declared (so flushed): a node port that went away leaves
        // no rule behind that would pin a deleted KUBE-SVC chain.
        r.chains.push("KUBE-SERVICES".into());
        r.chains.push(NODEPORTS.into());
    }
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by_key(|s| object_name(&s.metadata));
    for svc in services {
        let svc_name = object_name(&svc.metadata);
        let bad = |reason: String| LabError::Manifest {
            what: format!("Service {svc_name}"),
            reason,
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let ips = cluster_ips(svc)?;
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .cloned()
            .unwrap_or_default();
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref().unwrap_or("default") == ns
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == name)
            })
            .collect();
        for sp in &ports {
            let proto = protocol_of(sp.protocol.as_deref()).map_err(bad)?;
            let port_name = sp.name.clone().unwrap_or_default();
            let spn = format!("{svc_name}:{port_name}");
            let svc_port = u16::try_from(sp.port)
                .map_err(|_| bad(format!("port {} out of range", sp.port)))?;
            for v4 in [true, false] {
                let fam_ips: Vec<IpAddr> =
                    ips.iter().copied().filter(|i| i.is_ipv4() == v4).collect();
                if fam_ips.is_empty() {
                    continue;
                }
                // Ready endpoints (ip, port) of this Service port, as kube-proxy reads them:
                // the slice port of the same name and protocol; the first address of each
                // endpoint whose `ready` is not false.
                let mut eps: BTreeSet<SocketAddr> = BTreeSet::new();
                for s in own_slices.iter().filter(|s| is_v4_slice(s) == Some(v4)) {
                    let Some(port) = s.ports.iter().flatten().find(|p| {
                        p.name.clone().unwrap_or_default() == port_name
                            && protocol_of(p.protocol.as_deref()).ok() == Some(proto)
                    }) else {
                        continue;
                    };
                    let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    for ep in s.endpoints.iter().flatten() {
                        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                            continue;
                        }
                        let Some(addr) = ep.addresses.first() else {
                            continue;
                        };
                        let ip: IpAddr = addr.parse().map_err(|_| LabError::Manifest {
                            what: format!("EndpointSlice of {svc_name}"),
                            reason: format!("address {addr:?} is not an IP address"),
                        })?;
                        eps.insert(SocketAddr::new(ip, port));
                    }
                }
                if eps.is_empty() {
                    continue;
                }
                let rules = if v4 { &mut out.v4 } else { &mut out.v6 };
                let svc_chain = format!("KUBE-SVC-{}", chain_hash(&format!("{spn}/{proto}")));
                rules.chains.push(svc_chain.clone());
                for ip in fam_ips {
                    let plen = if v4 { 32 } else { 128 };
                    rules.rules.push(format!(
                        "-A KUBE-SERVICES -d {ip}/{plen} -p {proto} -m {proto} --dport {svc_port} -m comment --comment \"{spn} cluster IP\" -j {svc_chain}"
                    ));
                }
                if let Some(node_port) = sp.node_port {
                    let node_port = u16::try_from(node_port)
                        .map_err(|_| bad(format!("nodePort {node_port} out of range")))?;
                    rules.rules.push(format!(
                        "-A {NODEPORTS} -p {proto} -m {proto} --dport {node_port} -m comment --comment \"{spn} node port\" -j {svc_chain}"
                    ));
                }
                let n = eps.len();
                for (i, ep) in eps.iter().enumerate() {
                    let sep_chain =
                        format!("KUBE-SEP-{}", chain_hash(&format!("{spn}/{proto}/{ep}")));
                    let pick = if i + 1 < n {
                        format!(
                            " -m statistic --mode random --probability {:.10}",
                            1.0 / (n - i) as f64
                        )
                    } else {
                        String::new()
                    };
                    rules.rules.push(format!(
                        "-A {svc_chain} -m comment --comment \"{spn} -> {ep}\"{pick} -j {sep_chain}"
                    ));
                    rules.chains.push(sep_chain.clone());
                    rules.rules.push(format!(
                        "-A {sep_chain} -m comment --comment \"{spn}\" -p {proto} -m {proto} -j DNAT --to-destination {ep}"
                    ));
                }
            }
        }
    }
    for r in [&mut out.v4, &mut out.v6] {
        if r.rules
            .iter()
            .any(|l| l.starts_with(&format!("-A {NODEPORTS} ")))
        {
            r.rules.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::lab::model::{self, ModelPod};
    use crate::lab::reachability::Protocol;

    fn objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
        let docs = model::split_documents("test", yaml).expect("yaml");
        parse_objects(&docs).expect("objects")
    }

    const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIPs: [10.96.0.20, \"fd00:10:96::14\"]
  selector: {app: web}
  ports:
    - {name: http, port: 8080, targetPort: http-alt, protocol: TCP}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
  - {name: http, port: 81, protocol: TCP}
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: [10.244.0.5]
  - addresses: [10.244.1.7]
    nodeName: n1
  - addresses: [10.244.0.9]
    conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 81, protocol: TCP}]
endpoints: [{addresses: [\"fd00:10:244::5\"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: y, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: [10.244.2.2]}]
";

    #[test]
    fn service_port_jumps_to_a_chain_that_spreads_over_ready_endpoints_by_slice_port() {
        let (s, e) = objects(WEB);
        let r = generate(&s, &e).expect("rules");
        let v4 = r.v4.rules.join("\n");
        // Service port 8080 on the ClusterIP, endpoints on the slice's port 81 (the named
        // targetPort as resolved in the slice), the not-ready endpoint and the other
        // namespace's slice left out.
        assert!(
            v4.contains("-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 8080"),
            "{v4}"
        );
        assert!(v4.contains("DNAT --to-destination 10.244.0.5:81"), "{v4}");
        assert!(v4.contains("DNAT --to-destination 10.244.1.7:81"), "{v4}");
        assert!(!v4.contains("10.244.0.9"), "{v4}");
        assert!(!v4.contains("10.244.2.2"), "{v4}");
        assert!(v4.contains("-p udp -m udp --dport 53"), "{v4}");
        assert!(v4.contains("DNAT --to-destination 10.244.0.5:5353"), "{v4}");
        // Two endpoints: the first with probability 1/2, the second unconditionally.
        let svc_rules: Vec<&String> =
            r.v4.rules
                .iter()
                .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains(":http"))
                .collect();
        assert_eq!(svc_rules.len(), 2, "{svc_rules:?}");
        assert!(svc_rules[0].contains("--probability 0.5000000000"));
        assert!(!svc_rules[1].contains("statistic"));
        // IPv6: only the TCP port has v6 endpoints.
        let v6 = r.v6.rules.join("\n");
        assert!(
            v6.contains("-d fd00:10:96::14/128 -p tcp -m tcp --dport 8080"),
            "{v6}"
        );
        assert!(
            v6.contains("DNAT --to-destination [fd00:10:244::5]:81"),
            "{v6}"
        );
        assert!(!v6.contains("udp"), "{v6}");
        // Chain names fit iptables (28 characters).
        assert!(r.v4.chains.iter().all(|c| c.len() <= 28));
    }

    #[test]
    fn three_endpoints_are_equally_likely() {
        let yaml = "
kind: Service
metadata: {name: s, namespace: x}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: SCTP}]}
---
kind: EndpointSlice
metadata: {name: s1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 80, protocol: SCTP}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]
";
        let (s, e) = objects(yaml);
        let r = generate(&s, &e).expect("rules");
        let probs: Vec<&str> =
            r.v4.rules
                .iter()
                .filter(|l| l.starts_with("-A KUBE-SVC-"))
                .map(|l| l.split("--probability ").nth(1).map_or("-", |p| &p[..12]))
                .collect();
        assert_eq!(probs, ["0.3333333333", "0.5000000000", "-"]);
        assert!(
            r.v4.rules
                .iter()
                .any(|l| l.contains("-p sctp -m sctp --dport 80"))
        );
        assert!(r.v6.rules.is_empty());
    }

    #[test]
    fn render_adds_hooks_once_and_deletes_stale_chains() {
        let (s, e) = objects(WEB);
        let r = generate(&s, &e).expect("rules");
        let fresh = r.v4.render("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert!(
            fresh.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"),
            "{fresh}"
        );
        assert!(fresh.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert!(fresh.contains("-A OUTPUT -m comment"));
        assert!(fresh.ends_with("COMMIT\n"));
        let existing = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-0000000000000000 - [0:0]\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n";
        let again = r.v4.render(existing);
        assert!(!again.contains("-A PREROUTING"), "{again}");
        assert!(again.contains(":KUBE-SVC-0000000000000000 - [0:0]\n"));
        assert!(again.contains("-X KUBE-SVC-0000000000000000\n"));
    }

    #[test]
    fn node_ports_jump_from_local_destinations_to_the_services_chain() {
        let yaml = "
kind: Service
metadata: {name: np, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.0.7, ports: [{port: 80, nodePort: 30080, protocol: TCP}]}
---
kind: EndpointSlice
metadata: {name: np1, namespace: x, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints: [{addresses: [10.244.0.5]}]
";
        let (s, e) = objects(yaml);
        let r = generate(&s, &e).expect("rules");
        let target = |l: &str| l.rsplit(" -j ").next().unwrap_or_default().to_string();
        let cluster =
            r.v4.rules
                .iter()
                .find(|l| l.contains("-d 10.96.0.7/32"))
                .expect("ClusterIP rule");
        let node_port =
            r.v4.rules
                .iter()
                .find(|l| l.starts_with("-A KUBE-NODEPORTS "))
                .expect("node port rule");
        assert!(
            node_port.contains("-p tcp -m tcp --dport 30080"),
            "{node_port}"
        );
        assert_eq!(target(node_port), target(cluster));
        // KUBE-SERVICES sends local destinations to KUBE-NODEPORTS, after every ClusterIP.
        let last = r.v4.rules.last().expect("rules");
        assert!(
            last.starts_with("-A KUBE-SERVICES ")
                && last.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
            "{last}"
        );
        // No IPv6 endpoints: no IPv6 rule, but the chain is declared (flushed) anyway.
        assert!(r.v6.rules.is_empty());
        assert!(r.v6.chains.iter().any(|c| c == "KUBE-NODEPORTS"));
        let (s, e) = objects(WEB);
        assert!(
            !generate(&s, &e)
                .expect("rules")
                .v4
                .rules
                .iter()
                .any(|l| l.contains("KUBE-NODEPORTS"))
        );
    }

    #[test]
    fn controller_resolves_named_target_ports_per_pod() {
        let (s, _) = objects(WEB);
        let mut a = ModelPod {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: 0,
            ports: vec![model::ModelPort {
                name: "http-alt".into(),
                port: 81,
                protocol: Protocol::Tcp,
            }],
            requested_ips: Vec::new(),
            host_network: false,
        };
        let mut b = a.clone();
        b.name = "b".into();
        b.node = 1;
        b.ports[0].port = 82;
        let c = ModelPod {
            labels: [("app".to_string(), "other".to_string())].into(),
            ..a.clone()
        };
        a.ports.push(model::ModelPort {
            name: "unused".into(),
            port: 9,
            protocol: Protocol::Udp,
        });
        let ipa: Vec<IpAddr> = vec!["10.244.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let ipb: Vec<IpAddr> = vec!["10.244.1.6".parse().unwrap()];
        let ipc: Vec<IpAddr> = vec!["10.244.0.7".parse().unwrap()];
        let slices = endpoint_slices_for(&s[0], &[(&a, &ipa), (&b, &ipb), (&c, &ipc)]);
        // v4 {a: 81}, v4 {b: 82}, v6 {a: 81}
        assert_eq!(slices.len(), 3, "{slices:#?}");
        let rules = generate(&s, &slices).expect("rules");
        let v4 = rules.v4.rules.join("\n");
        assert!(v4.contains("--to-destination 10.244.0.5:81"), "{v4}");
        assert!(v4.contains("--to-destination 10.244.1.6:82"), "{v4}");
        assert!(!v4.contains("10.244.0.7"), "{v4}");
        // The UDP port (targetPort = port) resolves for every pod.
        assert!(v4.contains("--to-destination 10.244.1.6:53"), "{v4}");
        let v6 = rules.v6.rules.join("\n");
        assert!(v6.contains("--to-destination [fd00::5]:81"), "{v6}");
        assert_eq!(
            slices[0].endpoints.as_ref().expect("endpoints")[0]
                .node_name
                .as_deref(),
            Some("n0")
        );
    }

    #[test]
    fn per_pod_services_map_cases_to_service_ports() {
        let m = model::Model::upstream(1);
        let yaml = per_pod_services_yaml(&m.pods, 1000, true);
        let (s, _) = objects(&yaml);
        assert_eq!(s.len(), 9);
        assert_eq!(
            cluster_ips(&s[4]).expect("ips"),
            vec![
                "10.96.1.5".parse::<IpAddr>().unwrap(),
                "fd00:10:96::105".parse::<IpAddr>().unwrap()
            ]
        );
        let ports = s[0]
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .expect("ports");
        assert_eq!(ports.len(), 4);
        assert_eq!(ports[0].port, 1080);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("serve-80-tcp".into()))
        );
        // The conformance model: SCTP ports too, and `web` (a second name for one of them)
        // does not repeat a Service port.
        let c = model::Model::conformance();
        let (s, _) = objects(&per_pod_services_yaml(&c.pods, 0, false));
        let ports = s[0]
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .expect("ports");
        assert_eq!(ports.len(), 6, "{ports:?}");
        assert!(ports.iter().any(|p| p.protocol.as_deref() == Some("SCTP")));
    }
}
