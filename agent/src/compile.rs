//! From the agent's view of the cluster to the policy crate's input, and from its output to
//! the applier's desired endpoints.
//!
//! Invalid NetworkPolicies: an update that fails validation does not replace the last valid
//! version of that policy (nothing lost); a policy that was never valid is not enforced. Both
//! are reported as problems naming the object and field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_common::endpoint::{EP_EGRESS_ISOLATED, EP_HAS_V4, EP_HAS_V6, EP_INGRESS_ISOLATED};
use palisade_policy as policy;

use crate::applier::{Allow, DesiredEndpoint, Entries, PortContent};
use crate::endpoints::{EndpointRecord, RecordExt};
use crate::source::Snapshot;
use crate::status::Problem;

pub struct Compiler {
    registry: policy::RuleRegistry,
    last_good: BTreeMap<(String, String), NetworkPolicy>,
}

pub struct Compiled {
    pub problems: Vec<Problem>,
    /// Local endpoint key -> its policy (None: its pod is not in the source).
    endpoints: BTreeMap<String, Option<Arc<policy::EndpointPolicy>>>,
    /// "namespace/name" -> local endpoint key.
    pods: BTreeMap<String, String>,
}

fn to_problem(p: &policy::Problem) -> Problem {
    Problem {
        object: p.object.clone(),
        field: p.field.clone(),
        message: p.message.clone(),
    }
}

impl Compiler {
    /// A fresh compiler. Rule references are assigned anew by each agent process; after a
    /// restart the first apply rewrites entries whose references changed, atomically per
    /// endpoint (tracked flows that the policy still allows keep passing).
    pub fn load(_state_dir: &Path) -> Self {
        Compiler {
            registry: policy::RuleRegistry::default(),
            last_good: BTreeMap::new(),
        }
    }

    pub fn registry(&self) -> &policy::RuleRegistry {
        &self.registry
    }

    pub fn compile(&mut self, snap: &Snapshot, locals: &[(String, &EndpointRecord)]) -> Compiled {
        let mut problems = Vec::new();
        let mut cluster = policy::Cluster::default();
        for (name, ns) in &snap.namespaces {
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), name.clone());
            cluster.namespaces.insert(name.clone(), labels);
        }
        let mut local_by_pod: BTreeMap<(String, String), &EndpointRecord> = BTreeMap::new();
        for (_, r) in locals {
            if let Some(pod) = r.pod() {
                local_by_pod.insert(pod, r);
            }
        }
        for (key, pod) in &snap.pods {
            let (mut info, found) = policy::pod_info(pod);
            problems.extend(found.iter().map(to_problem));
            // For pods on this node the CNI plugin's record is the authority on addresses.
            if let Some(r) = local_by_pod.get(key) {
                info.ips = r.addrs();
            }
            cluster.pods.push(info);
        }
        let mut next_good = BTreeMap::new();
        for (key, np) in &snap.policies {
            let found = policy::validate(np);
            if found.is_empty() {
                next_good.insert(key.clone(), np.clone());
                cluster.policies.push(np.clone());
                continue;
            }
            let kept = self.last_good.get(key).cloned();
            for p in &found {
                let mut p = to_problem(p);
                p.message.push_str(if kept.is_some() {
                    "; keeping the last valid version of this policy"
                } else {
                    "; policy not enforced"
                });
                problems.push(p);
            }
            if let Some(old) = kept {
                cluster.policies.push(old.clone());
                next_good.insert(key.clone(), old);
            }
        }
        self.last_good = next_good;

        let local_pods: Vec<policy::PodKey> = local_by_pod
            .keys()
            .filter(|k| snap.pods.contains_key(*k))
            .map(|(n, p)| policy::PodKey::new(n, p))
            .collect();
        let out = policy::compile(&cluster, &local_pods, &mut self.registry);
        problems.extend(out.problems.iter().map(to_problem));
        let mut endpoints = BTreeMap::new();
        let mut pods = BTreeMap::new();
        for (key, r) in locals {
            let ep = r
                .pod()
                .and_then(|(n, p)| out.endpoints.get(&policy::PodKey::new(n, p)).cloned());
            if let Some((n, p)) = r.pod() {
                pods.insert(format!("{n}/{p}"), key.clone());
            }
            endpoints.insert(key.clone(), ep);
        }
        Compiled {
            problems,
            endpoints,
            pods,
        }
    }
}

impl Compiled {
    pub fn knows(&self, r: &EndpointRecord) -> bool {
        matches!(self.endpoints.get(&r.key()), Some(Some(_)))
    }

    /// The endpoint as the maps should hold it.
    pub fn desired(
        &self,
        key: &str,
        ifindex: u32,
        ep_id: u32,
        r: &EndpointRecord,
    ) -> DesiredEndpoint {
        let ep = self.endpoints.get(key).and_then(|e| e.as_deref());
        desired_endpoint(ep, ifindex, ep_id, &r.addrs())
    }

    pub fn describe(&self, pod: &str, compiler: &Compiler) -> Option<String> {
        let key = self.pods.get(pod)?;
        Some(match self.endpoints.get(key)? {
            Some(ep) => policy::describe(ep, compiler.registry()),
            None => format!("{pod}: not in the source yet: everything denied except its node\n"),
        })
    }
}

/// The endpoint as the maps should hold it, from its compiled policy. `None` (a pod the source
/// does not know yet) gives an endpoint isolated both ways with nothing allowed: fail closed
/// until its labels are known.
pub fn desired_endpoint(
    ep: Option<&policy::EndpointPolicy>,
    ifindex: u32,
    ep_id: u32,
    addrs: &[IpAddr],
) -> DesiredEndpoint {
    let mut d = DesiredEndpoint {
        ifindex,
        ep_id,
        flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
        ipv4_be: [0; 4],
        ipv6_be: [0; 16],
        entries: Entries::new(),
    };
    for a in addrs {
        match a {
            IpAddr::V4(v4) => {
                d.flags |= EP_HAS_V4;
                d.ipv4_be = v4.octets();
            }
            IpAddr::V6(v6) => {
                d.flags |= EP_HAS_V6;
                d.ipv6_be = v6.octets();
            }
        }
    }
    let Some(ep) = ep else { return d };
    d.flags &= !(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    if ep.ingress_isolated {
        d.flags |= EP_INGRESS_ISOLATED;
    }
    if ep.egress_isolated {
        d.flags |= EP_EGRESS_ISOLATED;
    }
    // Port sets numbered by first appearance, only to pair entries with their contents.
    let mut contents: Vec<Arc<PortContent>> = Vec::new();
    let mut by_set: BTreeMap<policy::PortSet, u32> = BTreeMap::new();
    let raw = policy::policy_map_entries(ep, 0, |ps: &policy::PortSet| {
        if let Some(id) = by_set.get(ps) {
            return *id;
        }
        contents.push(Arc::new(
            policy::port_map_entries(0, ps)
                .into_iter()
                .map(|(plen, key, v)| (plen, key, v.rule_ref))
                .collect(),
        ));
        let id = contents.len() as u32;
        by_set.insert(ps.clone(), id);
        id
    });
    for (plen, key, v) in raw {
        let allow = if v.flags & palisade_common::policy::POL_ALL_PORTS != 0 {
            Allow::All(v.rule_ref)
        } else if v.portset_id == 0 {
            Allow::Ports(Arc::new(PortContent::new()))
        } else {
            Allow::Ports(contents[v.portset_id as usize - 1].clone())
        };
        d.entries.insert((plen, key), allow);
    }
    d
}
