//! The lab side of kube-proxy: applying Services (and the slices the controller would
//! write), loading the rules into every node, and probing through Service addresses.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::{
    SERVICE_NAME_LABEL, ServiceTarget, cluster_ips, endpoint_slices_for, generate, parse_objects,
};
use crate::lab::model::{self, ModelPod};
use crate::lab::reachability::{Case, Family, Protocol, Reachability};
use crate::lab::{Lab, LabError, probe};

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
                let existing = crate::lab::netns::run(Command::new("ip").args([
                    "netns",
                    "exec",
                    &node.netns,
                    save,
                    "-t",
                    "nat",
                ]))?;
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &node.netns, restore, "--noflush"]);
                crate::lab::netns::run_with_input(cmd, &r.render(&existing))?;
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
        let (timeout, seen) = (self.config.probe_timeout, &self.sctp_seen);
        self.probe_round(&ids, cases, family, "service probe", |netns, from| {
            probe::probe_from_mapped(netns, from, &probe_targets, cases, timeout, seen, &port_of)
        })
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
