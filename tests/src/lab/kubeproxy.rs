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
//! - `KUBE-SEP-<hash>`: `DNAT --to-destination <endpoint ip>:<port>`.
//!
//! The endpoint's port comes from the EndpointSlice port with the Service port's name and
//! protocol, as kube-proxy reads it: a named `targetPort` was resolved per pod by whoever
//! wrote the slice (the endpoint-slice controller; in the lab [`Lab::apply_services`] plays
//! it when a Service has a selector and the YAML brings no slice for it).
//!
//! Differences from kube-proxy, on purpose: no masquerade (pod-to-pod through a Service
//! keeps the client's address, which policy needs; hairpin traffic, a pod reaching itself
//! through its own Service, is therefore not supported), no NodePorts, external IPs or load
//! balancers, and a Service port without ready endpoints gets no rule (kube-proxy REJECTs in
//! the filter table; here the packet finds no route to the Service address).
//!
//! Only chains named `KUBE-*` are written (`--noflush`), so other NAT rules of the node (the
//! agent's masquerade table is nftables `inet palisade`) are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::model::{self, ModelPod, kind_of};
use super::reachability::{Case, Family, Protocol, Reachability};
use super::{Lab, LabError, probe};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The lab's Service CIDRs (ClusterIPs are chosen from them by the tests).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

const HOOK_COMMENT: &str = "kubernetes service portals";

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

/// A short stable hash for chain names (FNV-1a 64, 16 hex digits): `KUBE-SVC-` plus it fits
/// iptables' 28-character chain names.
fn chain_hash(s: &str) -> String {
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
        r.chains.push("KUBE-SERVICES".into());
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
    Ok(out)
}

/// A Service port resolved for one pod: (Service port name, protocol, target port number).
type ResolvedPort = (String, String, u16);

/// What the endpoint-slice controller would write for `svc` given the pods `pods` (with their
/// addresses): per address family, one slice per distinct resolution of the Service's target
/// ports (a named `targetPort` resolves through each pod's named container ports; a pod that
/// lacks the name gets no endpoint for that port). A Service without a selector, or with an
/// empty one, gets none.
pub fn endpoint_slices_for(svc: &Service, pods: &[(&ModelPod, &[IpAddr])]) -> Vec<EndpointSlice> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    // No selector, or an empty one: the endpoints are someone else's to write.
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let svc_ports = spec.ports.clone().unwrap_or_default();
    // (v4, resolved ports) -> endpoints
    let mut groups: BTreeMap<(bool, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
    for (pod, ips) in pods {
        if pod.namespace != ns || !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
            continue;
        }
        let resolved: Vec<ResolvedPort> = svc_ports
            .iter()
            .filter_map(|sp| {
                let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                let port = match &sp.target_port {
                    None => u16::try_from(sp.port).ok()?,
                    Some(IntOrString::Int(p)) => u16::try_from(*p).ok()?,
                    Some(IntOrString::String(n)) => {
                        pod.ports
                            .iter()
                            .find(|p| &p.name == n && p.protocol.as_str() == proto)?
                            .port
                    }
                };
                Some((sp.name.clone().unwrap_or_default(), proto, port))
            })
            .collect();
        for v4 in [true, false] {
            let Some(ip) = ips.iter().find(|i| i.is_ipv4() == v4) else {
                continue;
            };
            groups
                .entry((v4, resolved.clone()))
                .or_default()
                .push(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(model::node_name(pod.node)),
                    ..Endpoint::default()
                });
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((v4, ports), endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}{i}", if v4 { "v4-" } else { "v6-" })),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_string(),
                    name.clone(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: if v4 { "IPv4" } else { "IPv6" }.into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, proto, port)| EndpointPort {
                        name: Some(n),
                        protocol: Some(proto),
                        port: Some(i32::from(port)),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// A Service per pod of `pods` for probing the truth tables through ClusterIPs: Service
/// `svc-<pod>` in the pod's namespace, selecting it alone (`pod=<name>`, the model's label),
/// dual stack with ClusterIPs `10.96.1.<i+1>` and `fd00:10:96::1<i+1>` (two decimal digits),
/// and one port per model case (TCP, UDP, SCTP): name `p<port>-<proto>`, `port` the target
/// port plus `port_offset`, `targetPort` the model port by number or, with `named_target`, by
/// the pod's port name (`serve-80-tcp`).
pub fn per_pod_services_yaml(pods: &[ModelPod], port_offset: u16, named_target: bool) -> String {
    let mut out = String::new();
    for (i, p) in pods.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{name}, namespace: {ns}}}\n\
             spec:\n  type: ClusterIP\n  selector: {{pod: {name}}}\n  ipFamilyPolicy: RequireDualStack\n  \
             ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.1.{n}\n  clusterIPs: [10.96.1.{n}, \"fd00:10:96::1{n:02}\"]\n  ports:\n",
            name = p.name,
            ns = p.namespace,
            n = i + 1
        ));
        // One Service port per (port, protocol): a pod may name the same port twice (the
        // conformance model's `web`), and a Service may not repeat a port.
        let mut seen = BTreeSet::new();
        for mp in &p.ports {
            if !matches!(mp.protocol, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
                || !seen.insert((mp.port, mp.protocol))
            {
                continue;
            }
            let target = if named_target {
                mp.name.clone()
            } else {
                mp.port.to_string()
            };
            out.push_str(&format!(
                "  - {{name: p{port}-{proto}, protocol: {up}, port: {sport}, targetPort: {target}}}\n",
                port = mp.port,
                proto = mp.protocol.as_str().to_ascii_lowercase(),
                up = mp.protocol.as_str(),
                sport = mp.port + port_offset,
            ));
        }
    }
    out
}

/// A probe target through a Service: the column `id` of the truth table, the ClusterIP, and
/// the Service port to use for each model case (the case names the *target* port).
#[derive(Clone, Debug)]
pub struct ServiceTarget {
    pub id: String,
    pub addr: IpAddr,
    pub ports: BTreeMap<Case, u16>,
}

/// Runs `cmd` (already set to `ip netns exec <node> iptables-restore ...`) with `input`.
fn run_with_input(mut cmd: Command, input: &str) -> Result<(), LabError> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: what.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| LabError::Spawn {
                cmd: what.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        cmd: what.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: what,
            status: out.status.to_string(),
            output: format!(
                "{}\n--- input ---\n{input}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

impl Lab {
    /// Every Service and EndpointSlice among the applied user manifests.
    pub fn services(&self) -> Result<(Vec<Service>, Vec<EndpointSlice>), LabError> {
        let docs: Vec<Value> = self.user.values().flatten().cloned().collect();
        parse_objects(&docs)
    }

    /// Applies Service (and EndpointSlice) YAML under `name`: the objects go to the agents'
    /// manifests directory like any [`Lab::apply`], a Service with a selector and no slice in
    /// `yaml` gets the slices the endpoint-slice controller would write (from the lab's pods,
    /// which the same YAML may add), and the kube-proxy rules of every applied Service are
    /// loaded into every node. Call [`Lab::wait_synced`] before probing.
    pub fn apply_services(&mut self, name: &str, yaml: &str) -> Result<(), LabError> {
        self.apply_yaml(name, yaml)?;
        let docs = model::split_documents(name, yaml)?;
        let (services, slices) = parse_objects(&docs)?;
        let pods: Vec<(&ModelPod, &[IpAddr])> = self
            .model
            .pods
            .iter()
            .filter_map(|m| self.pods.get(&m.id()).map(|p| (m, p.ips.as_slice())))
            .collect();
        let mut generated = Vec::new();
        for svc in &services {
            let svc_name = svc.metadata.name.as_deref().unwrap_or("");
            let has_slice = slices.iter().any(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == svc_name)
                    && s.metadata.namespace == svc.metadata.namespace
            });
            if !has_slice {
                generated.extend(endpoint_slices_for(svc, &pods));
            }
        }
        if !generated.is_empty() {
            let mut text = yaml.to_string();
            for s in &generated {
                let mut v = serde_json::to_value(s).map_err(|e| LabError::Manifest {
                    what: "generated EndpointSlice".into(),
                    reason: e.to_string(),
                })?;
                if let Value::Object(m) = &mut v {
                    m.insert("apiVersion".into(), "discovery.k8s.io/v1".into());
                    m.insert("kind".into(), "EndpointSlice".into());
                }
                text.push_str("\n---\n");
                text.push_str(
                    &serde_saphyr::to_string(&v).map_err(|e| LabError::Manifest {
                        what: "generated EndpointSlice".into(),
                        reason: e.to_string(),
                    })?,
                );
            }
            self.apply_yaml(name, &text)?;
        }
        self.program_kube_proxy()
    }

    /// Removes manifests applied under `name` and reloads the kube-proxy rules.
    pub fn remove_services(&mut self, name: &str) -> Result<(), LabError> {
        self.remove(name)?;
        self.program_kube_proxy()
    }

    /// Loads the kube-proxy rules of every applied Service into every node namespace.
    pub fn program_kube_proxy(&self) -> Result<(), LabError> {
        let (services, slices) = self.services()?;
        let rules = generate(&services, &slices)?;
        for node in &self.nodes {
            for (save, restore, r) in [
                ("iptables-save", "iptables-restore", &rules.v4),
                ("ip6tables-save", "ip6tables-restore", &rules.v6),
            ] {
                let existing = super::netns::run(Command::new("ip").args([
                    "netns",
                    "exec",
                    &node.netns,
                    save,
                    "-t",
                    "nat",
                ]))?;
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &node.netns, restore, "--noflush"]);
                run_with_input(cmd, &r.render(&existing))?;
            }
        }
        self.log(format_args!(
            "lab: kube-proxy rules: {} v4 / {} v6 lines on {} node(s)",
            rules.v4.rules.len(),
            rules.v6.rules.len(),
            self.nodes.len()
        ));
        Ok(())
    }

    /// The ClusterIP of family `family` of Service `ns/name` (applied with
    /// [`Lab::apply_services`]).
    pub fn cluster_ip(&self, ns: &str, name: &str, family: Family) -> Result<IpAddr, LabError> {
        let (services, _) = self.services()?;
        let svc = services
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref().unwrap_or("default") == ns
            })
            .ok_or_else(|| LabError::Config {
                reason: format!("no Service {ns}/{name} applied"),
            })?;
        cluster_ips(svc)?
            .into_iter()
            .find(|i| i.is_ipv4() == (family == Family::V4))
            .ok_or_else(|| LabError::Config {
                reason: format!("Service {ns}/{name} has no {family} ClusterIP"),
            })
    }

    /// Probe targets for [`per_pod_services_yaml`] Services (applied): one per model pod, its
    /// column id the pod's, the ClusterIP of `family`, each case's target port mapped to the
    /// Service port `port + port_offset`.
    pub fn per_pod_service_targets(
        &self,
        family: Family,
        port_offset: u16,
    ) -> Result<Vec<ServiceTarget>, LabError> {
        self.model
            .pods
            .iter()
            .map(|p| {
                let addr = self.cluster_ip(&p.namespace, &format!("svc-{}", p.name), family)?;
                let ports = p
                    .ports
                    .iter()
                    .map(|mp| {
                        (
                            Case {
                                port: mp.port,
                                protocol: mp.protocol,
                            },
                            mp.port + port_offset,
                        )
                    })
                    .collect();
                Ok(ServiceTarget {
                    id: p.id(),
                    addr,
                    ports,
                })
            })
            .collect()
    }

    /// Probes from every pod to every target through its Service address, all in parallel;
    /// the table's rows are the pods, its columns the targets' ids (which must be pod ids, so
    /// expectations read as the pod-IP tables do).
    pub fn probe_services(
        &self,
        targets: &[ServiceTarget],
        cases: &[Case],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let ids = self.pod_ids();
        if let Some(t) = targets.iter().find(|t| !ids.contains(&t.id)) {
            return Err(LabError::Config {
                reason: format!("service target {} is not a pod id", t.id),
            });
        }
        self.wait_links_ready(family)?;
        let probe_targets: Vec<probe::Target> = targets
            .iter()
            .map(|t| probe::Target {
                id: t.id.clone(),
                addr: t.addr,
            })
            .collect();
        let port_of = |t: &probe::Target, c: Case| -> u16 {
            targets
                .iter()
                .find(|s| s.id == t.id)
                .and_then(|s| s.ports.get(&c).copied())
                .unwrap_or(c.port)
        };
        let mut reach = Reachability::with_cases(&ids, cases, family, None);
        let timeout = self.config.probe_timeout;
        let seen = &self.sctp_seen;
        let results: Vec<Result<(String, Vec<probe::Outcome>), LabError>> =
            std::thread::scope(|s| {
                let handles: Vec<_> = ids
                    .iter()
                    .map(|from| {
                        let netns = self.pod_netns(from).unwrap_or_default();
                        let (t, port_of) = (&probe_targets, &port_of);
                        s.spawn(move || {
                            probe::probe_from_mapped(netns, from, t, cases, timeout, seen, port_of)
                                .map(|o| (from.clone(), o))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(LabError::ThreadPanicked {
                                what: "service probe".into(),
                            })
                        })
                    })
                    .collect()
            });
        for r in results {
            let (from, outcomes) = r?;
            for o in outcomes {
                reach.observe(o.case, &from, &o.to, o.reachable);
            }
        }
        Ok(reach)
    }

    /// `count` new connections (TCP) or request/answer exchanges (UDP) at once from pod
    /// `from` to `dest`, each from its own source port (so each is a new flow kube-proxy
    /// balances on its own); each yields the id of the server that answered (the servers tell
    /// who they are), or `None` when it did not complete within `timeout`.
    pub fn who_answers(
        &self,
        from: &str,
        dest: SocketAddr,
        protocol: Protocol,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Option<String>>, LabError> {
        let netns = self.pod_netns(from).ok_or_else(|| LabError::Config {
            reason: format!("no pod {from}"),
        })?;
        self.wait_links_ready(if dest.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        })?;
        probe::who_answers(netns, dest, protocol, count, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
