//! From the agent's view of the cluster to the policy crate's input, and from its output to
//! the applier's desired endpoints (built by the policy crate, `palisade_policy::DesiredEndpoint`).
//!
//! Invalid NetworkPolicies and ClusterNetworkPolicies: an update that fails validation does
//! not replace the last valid version of that policy (nothing lost); a policy that was never
//! valid is not enforced. Both are reported as problems naming the object and field. A valid
//! ClusterNetworkPolicy whose peers fail closed (a peer kind this version does not know,
//! domainNames outside an Accept rule) is enforced, and each such peer is reported.
//!
//! Oversized NetworkPolicies (issue 9 §3): a policy that compiles to more than
//! [`policy_limit`] `pal_pol_v1` entries for one endpoint is rejected alone, with a problem
//! naming it and the numbers. It is not dropped (that would lift the isolation it asks for,
//! failing open): it is enforced as its isolation only, allowing nothing, so the pods it
//! selects are denied what it alone would allow and keep what the other policies allow. It
//! stays rejected until the object changes (a smaller version is then compiled again). The
//! check costs nothing while every endpoint is within the limit (an endpoint's entries
//! include every key of each policy selecting it); only an endpoint over it makes each policy
//! of its namespace compile alone, to find the one(s) to blame.
//!
//! Incremental work: a compile prepares (validates and normalizes) only the policies that
//! changed since the previous compile (same `Arc` from the source, or an equal object), and
//! converts to map entries only the endpoint policies that changed. Port set contents keep
//! their `Arc` from one compile to the next, so the applier's comparisons of unchanged entries
//! stop at the pointer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_policy as policy;
use palisade_policy::cnp::ClusterNetworkPolicy;
use palisade_policy::{DesiredEndpoint, Entries, PortContent, PortContents};

use palisade_common::endpoint::{EP_HAS_V4, EP_HAS_V6};

use crate::endpoints::EndpointRecord;
use crate::source::Snapshot;
use crate::status::Problem;

/// A policy kind the agent prepares (validates and normalizes) once per object version.
trait Policy: PartialEq {
    type Prepared;
    /// `audit_all`: the node is in audit mode (`--audit-mode`; kinds that cannot be audited
    /// ignore it).
    fn prepare(&self, audit_all: bool) -> Result<Self::Prepared, Vec<policy::Problem>>;
    /// Problems of a valid object that do not stop it from being enforced.
    fn notices(_prepared: &Self::Prepared) -> &[policy::Problem] {
        &[]
    }
}

impl Policy for NetworkPolicy {
    type Prepared = policy::Prepared;
    fn prepare(&self, audit_all: bool) -> Result<policy::Prepared, Vec<policy::Problem>> {
        policy::prepare(self).map(|p| p.with_audit(audit_all))
    }
}

impl Policy for ClusterNetworkPolicy {
    type Prepared = policy::PreparedCnp;
    fn prepare(&self, _audit_all: bool) -> Result<policy::PreparedCnp, Vec<policy::Problem>> {
        policy::prepare_cluster_policy(self)
    }
    fn notices(prepared: &policy::PreparedCnp) -> &[policy::Problem] {
        prepared.notices()
    }
}

/// What the agent knows about one policy object of the source.
struct PolicyState<O: Policy> {
    /// The object last seen.
    seen: Arc<O>,
    /// Problems of `seen` (empty when it is valid).
    problems: Vec<policy::Problem>,
    /// What is enforced: `seen` when valid, else the last valid version, if any.
    enforced: Option<Arc<O::Prepared>>,
    /// `seen` compiles to more entries than one policy may have: the problem saying so, and
    /// the policy's isolation alone, enforced instead of `enforced` (NetworkPolicies only).
    oversized: Option<(Problem, Arc<O::Prepared>)>,
}

impl<O: Policy> PolicyState<O> {
    /// The state now that the source holds `obj`: `old` when the object did not change, else
    /// `obj` prepared anew (keeping the last valid version when `obj` is invalid). A replaced
    /// state goes to `retired`.
    fn next(old: Option<Self>, obj: &Arc<O>, retired: &mut Vec<Self>, audit_all: bool) -> Self {
        match old {
            Some(st) if Arc::ptr_eq(&st.seen, obj) || *st.seen == **obj => st,
            old => {
                let st = match obj.prepare(audit_all) {
                    Ok(p) => PolicyState {
                        seen: obj.clone(),
                        problems: Vec::new(),
                        enforced: Some(Arc::new(p)),
                        oversized: None,
                    },
                    Err(problems) => PolicyState {
                        seen: obj.clone(),
                        problems,
                        enforced: old.as_ref().and_then(|o| o.enforced.clone()),
                        oversized: None,
                    },
                };
                retired.extend(old);
                st
            }
        }
    }

    /// What the datapath enforces for it.
    fn in_force(&self) -> Option<&O::Prepared> {
        match &self.oversized {
            Some((_, isolation)) => Some(isolation),
            None => self.enforced.as_deref(),
        }
    }

    /// Its problems for `palisadectl status`: what is wrong with the object last seen, or what
    /// of the enforced version fails closed.
    fn report(&self, problems: &mut Vec<Problem>) {
        for p in &self.problems {
            let mut p = to_problem(p);
            p.message.push_str(if self.enforced.is_some() {
                "; keeping the last valid version of this policy"
            } else {
                "; policy not enforced"
            });
            problems.push(p);
        }
        if self.problems.is_empty()
            && let Some(e) = &self.enforced
        {
            problems.extend(O::notices(e).iter().map(to_problem));
        }
    }
}

/// Brings `states` in line with the source's objects `now`, reporting problems.
fn track<K: Ord + Clone, O: Policy>(
    states: &mut BTreeMap<K, PolicyState<O>>,
    now: &BTreeMap<K, Arc<O>>,
    retired: &mut Vec<PolicyState<O>>,
    audit_all: bool,
    problems: &mut Vec<Problem>,
) {
    let mut old = std::mem::take(states);
    for (key, obj) in now {
        let st = PolicyState::next(old.remove(key), obj, retired, audit_all);
        st.report(problems);
        states.insert(key.clone(), st);
    }
    // Policies gone from the source.
    retired.extend(old.into_values());
}

/// Most `pal_pol_v1` entries one NetworkPolicy may compile to for one endpoint, for a map of
/// `capacity` entries: a quarter of it (262 144 with the default 1 048 576), so that one
/// policy cannot take the map that every endpoint of the node shares, and a rewrite (new
/// entries written beside the old ones) of an endpoint holding it still fits.
pub fn policy_limit(capacity: u32) -> usize {
    (capacity as usize / 4).max(1)
}

/// `np` with its rules removed and its policy types made explicit: the pods it selects stay
/// isolated in the directions it isolates, and it allows nothing.
fn isolation_only(np: &NetworkPolicy) -> Option<policy::Prepared> {
    let mut np = np.clone();
    let spec = np.spec.as_mut()?;
    if spec.policy_types.is_none() {
        let mut types = vec!["Ingress".to_string()];
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            types.push("Egress".into());
        }
        spec.policy_types = Some(types);
    }
    spec.ingress = None;
    spec.egress = None;
    policy::prepare(&np).ok()
}

pub struct Compiler {
    registry: policy::RuleRegistry,
    /// Per policy (namespace, name), from the previous compile.
    policies: BTreeMap<(String, String), PolicyState<NetworkPolicy>>,
    /// Per ClusterNetworkPolicy name, from the previous compile.
    cluster_policies: BTreeMap<String, PolicyState<ClusterNetworkPolicy>>,
    /// Port set -> its `pal_port_v1` content, kept from one compile to the next.
    port_contents: PortContents,
    /// The previous compile's distinct endpoint policies with their converted entries.
    converted: Vec<(Arc<policy::EndpointPolicy>, Arc<Entries>)>,
    /// The node is in audit mode: every policy is audited (decides nothing, reports).
    audit_all: bool,
    /// `max_entries` of the node's `pal_pol_v1` (see [`policy_limit`]).
    capacity: u32,
}

pub struct Compiled {
    pub problems: Vec<Problem>,
    /// The cluster as the compile saw it (for naming flows: `observe`).
    pub cluster: Arc<policy::Cluster>,
    /// Local endpoint key -> its policy (None: its pod is not in the source).
    endpoints: BTreeMap<String, Option<Arc<policy::EndpointPolicy>>>,
    /// Map entries of each distinct endpoint policy, by `Arc` address.
    entries: HashMap<usize, Arc<Entries>>,
    /// "namespace/name" -> local endpoint key.
    pods: BTreeMap<String, String>,
    /// Local endpoint key -> its endpoint with name rules applied (`with_names`: variant
    /// entries and pattern set), for the endpoints that have name rules.
    named: HashMap<String, DesiredEndpoint>,
    /// What this compile replaced (old policy objects and their prepared forms, old entries).
    /// Freeing a large policy takes milliseconds; held here, it is freed when this `Compiled`
    /// is replaced, i.e. after the next apply has written its maps, off the path from a
    /// change to its enforcement.
    _retired: Retired,
}

#[derive(Default)]
struct Retired {
    policies: Vec<PolicyState<NetworkPolicy>>,
    cluster_policies: Vec<PolicyState<ClusterNetworkPolicy>>,
    entries: Vec<(Arc<policy::EndpointPolicy>, Arc<Entries>)>,
    port_contents: Vec<HashMap<policy::PortSet, Arc<PortContent>>>,
}

fn to_problem(p: &policy::Problem) -> Problem {
    Problem {
        object: p.object.clone(),
        field: p.field.clone(),
        message: p.message.clone(),
    }
}

/// Local endpoint records by pod (namespace, name).
fn local_by_pod<'r>(
    locals: &[(String, &'r EndpointRecord)],
) -> BTreeMap<(String, String), &'r EndpointRecord> {
    locals
        .iter()
        .filter_map(|(_, r)| Some((r.pod()?, *r)))
        .collect()
}

/// The policy crate's view of the snapshot's namespaces and pods (`policies` left empty):
/// namespaces with their labels plus `kubernetes.io/metadata.name`, and pods, those on this
/// node with the addresses of their endpoint records (the CNI plugin is the authority on
/// those). Problems of pod objects (a bad address...) are returned.
pub fn cluster_facts(
    snap: &Snapshot,
    locals: &[(String, &EndpointRecord)],
) -> (policy::Cluster, Vec<policy::Problem>) {
    let mut problems = Vec::new();
    let mut cluster = policy::Cluster::default();
    for (name, ns) in &snap.namespaces {
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(policy::NAMESPACE_NAME_LABEL.into(), name.clone());
        cluster.namespaces.insert(name.clone(), labels);
    }
    let local_by_pod = local_by_pod(locals);
    for (key, pod) in &snap.pods {
        let (mut info, mut found) = policy::pod_info(pod);
        problems.append(&mut found);
        if let Some(r) = local_by_pod.get(key) {
            info.ips = r.addrs();
        }
        cluster.pods.push(info);
    }
    cluster.nodes = snap.nodes.values().map(|n| policy::node_info(n)).collect();
    (cluster, problems)
}

impl Compiler {
    /// The policies enforced: each policy's current version when valid, else its last valid
    /// version (a policy that was never valid is not enforced).
    pub fn enforced(&self) -> Vec<&policy::Prepared> {
        self.policies
            .values()
            .filter_map(|st| st.enforced.as_deref())
            .collect()
    }

    /// The ClusterNetworkPolicies enforced now: the last valid version of each.
    pub fn enforced_cluster_policies(&self) -> Vec<&policy::PreparedCnp> {
        self.cluster_policies
            .values()
            .filter_map(|st| st.enforced.as_deref())
            .collect()
    }

    /// A fresh compiler. Rule references are assigned anew by each agent process; after a
    /// restart the first apply rewrites entries whose references changed, atomically per
    /// endpoint (tracked flows that the policy still allows keep passing).
    pub fn load(_state_dir: &Path) -> Self {
        Compiler {
            registry: policy::RuleRegistry::default(),
            policies: BTreeMap::new(),
            cluster_policies: BTreeMap::new(),
            port_contents: PortContents::default(),
            converted: Vec::new(),
            audit_all: false,
            capacity: palisade_common::maps::POLICY_MAX,
        }
    }

    /// Every policy audited (`--audit-mode`): traffic is judged as if there were no policy,
    /// and what the policies would drop is reported.
    pub fn audit_everything(mut self, on: bool) -> Self {
        self.audit_all = on;
        self
    }

    /// The policies enforced (or audited) now: the last valid version of each.
    pub fn prepared(&self) -> impl Iterator<Item = &Arc<policy::Prepared>> {
        self.policies.values().filter_map(|st| st.enforced.as_ref())
    }

    /// Checks compiled sizes against a `pal_pol_v1` of `capacity` entries (see
    /// [`policy_limit`]).
    pub fn for_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    pub fn registry(&self) -> &policy::RuleRegistry {
        &self.registry
    }

    pub fn compile(&mut self, snap: &Snapshot, locals: &[(String, &EndpointRecord)]) -> Compiled {
        let (cluster, found) = cluster_facts(snap, locals);
        let mut problems: Vec<Problem> = found.iter().map(to_problem).collect();
        let local_by_pod = local_by_pod(locals);
        let mut retired = Retired::default();
        track(
            &mut self.policies,
            &snap.policies,
            &mut retired.policies,
            self.audit_all,
            &mut problems,
        );
        track(
            &mut self.cluster_policies,
            &snap.cluster_policies,
            &mut retired.cluster_policies,
            false,
            &mut problems,
        );
        let prepared_cnps: Vec<&policy::PreparedCnp> = self
            .cluster_policies
            .values()
            .filter_map(|st| st.enforced.as_deref())
            .collect();

        let local_pods: Vec<policy::PodKey> = local_by_pod
            .keys()
            .filter(|k| snap.pods.contains_key(*k))
            .map(|(n, p)| policy::PodKey::new(n, p))
            .collect();
        let prepared: Vec<&policy::Prepared> = self
            .policies
            .values()
            .filter_map(PolicyState::in_force)
            .collect();
        let mut out = policy::compile_tiers(
            &cluster,
            &prepared,
            &prepared_cnps,
            &local_pods,
            &mut self.registry,
        );
        if Self::admit(
            &mut self.policies,
            &mut self.registry,
            self.capacity,
            &cluster,
            &out,
        ) {
            let prepared: Vec<&policy::Prepared> = self
                .policies
                .values()
                .filter_map(PolicyState::in_force)
                .collect();
            out = policy::compile_tiers(
                &cluster,
                &prepared,
                &prepared_cnps,
                &local_pods,
                &mut self.registry,
            );
        }
        for st in self.policies.values() {
            problems.extend(st.oversized.as_ref().map(|(p, _)| p.clone()));
        }
        problems.extend(out.problems.iter().map(to_problem));
        let entries = self.convert_all(out.endpoints.values(), &mut retired);
        let mut endpoints = BTreeMap::new();
        let mut pods = BTreeMap::new();
        let mut named = HashMap::new();
        for (key, r) in locals {
            let pod = r.pod().map(|(n, p)| policy::PodKey::new(n, p));
            let ep = pod.as_ref().and_then(|k| out.endpoints.get(k).cloned());
            if let Some((n, p)) = r.pod() {
                pods.insert(format!("{n}/{p}"), key.clone());
            }
            if let (Some(ep), Some(names)) = (&ep, pod.as_ref().and_then(|k| out.names.get(k)))
                && !names.name_rules.is_empty()
            {
                let base = entries
                    .get(&(Arc::as_ptr(ep) as usize))
                    .cloned()
                    .unwrap_or_default();
                // ifindex, ep_id and addresses are filled in by `desired`.
                let d = DesiredEndpoint::isolated(0, 0, &[])
                    .with_policy(ep, base)
                    .with_names(names, &mut self.port_contents);
                named.insert(key.clone(), d);
            }
            endpoints.insert(key.clone(), ep);
        }
        Compiled {
            problems,
            cluster: Arc::new(cluster),
            endpoints,
            entries,
            pods,
            named,
            _retired: retired,
        }
    }

    /// Finds the NetworkPolicies that make an endpoint of `out` exceed the limit and marks
    /// them oversized (see the module doc). Returns true when one was marked (compile again).
    fn admit(
        policies: &mut BTreeMap<(String, String), PolicyState<NetworkPolicy>>,
        registry: &mut policy::RuleRegistry,
        capacity: u32,
        cluster: &policy::Cluster,
        out: &policy::Compiled,
    ) -> bool {
        let limit = policy_limit(capacity);
        let mut marked = false;
        for (pod, ep) in &out.endpoints {
            if ep.entries.len() <= limit {
                continue;
            }
            for ((ns, name), st) in policies.iter_mut() {
                if *ns != pod.namespace || st.oversized.is_some() {
                    continue;
                }
                let Some(p) = st.enforced.as_deref() else {
                    continue;
                };
                let alone =
                    policy::compile_prepared(cluster, &[p], std::slice::from_ref(pod), registry);
                let n = alone.endpoints.get(pod).map_or(0, |e| e.entries.len());
                if n <= limit {
                    continue;
                }
                let Some(isolation) = isolation_only(&st.seen) else {
                    continue;
                };
                let map = palisade_common::maps::POLICY;
                let problem = Problem {
                    object: format!("NetworkPolicy {ns}/{name}"),
                    field: "spec".into(),
                    message: format!(
                        "compiles to {n} {map} entries for Pod {pod}, more than the {limit} one \
                         policy may have ({map} holds {capacity}); rejected: the pods it \
                         selects stay isolated by it and it allows nothing until it changes"
                    ),
                };
                tracing::warn!(object = %problem.object, "{}", problem.message);
                st.oversized = Some((problem, Arc::new(isolation)));
                marked = true;
            }
        }
        marked
    }

    /// Map entries of every distinct endpoint policy: those equal to one of the previous
    /// compile are reused, the others built, with the port set contents of the previous
    /// compile reused by content.
    fn convert_all<'a>(
        &mut self,
        eps: impl Iterator<Item = &'a Arc<policy::EndpointPolicy>>,
        retired: &mut Retired,
    ) -> HashMap<usize, Arc<Entries>> {
        let mut out: HashMap<usize, Arc<Entries>> = HashMap::new();
        let mut converted = Vec::new();
        for ep in eps {
            let addr = Arc::as_ptr(ep) as usize;
            if out.contains_key(&addr) {
                continue;
            }
            let reused = self
                .converted
                .iter()
                .find(|(old, _)| Arc::ptr_eq(old, ep) || **old == **ep)
                .map(|(_, e)| e.clone());
            let entries = match reused {
                Some(e) => {
                    // Keep its port sets alive in the cache.
                    for allow in ep.entries.values() {
                        if let policy::PeerAllow::Ports(set) = allow {
                            self.port_contents.get(set);
                        }
                    }
                    e
                }
                None => Arc::new(policy::endpoint_entries(ep, &mut self.port_contents)),
            };
            converted.push((ep.clone(), entries.clone()));
            out.insert(addr, entries);
        }
        retired
            .entries
            .extend(std::mem::replace(&mut self.converted, converted));
        retired.port_contents.push(self.port_contents.next_round());
        out
    }
}

impl Compiled {
    pub fn knows(&self, r: &EndpointRecord) -> bool {
        matches!(self.endpoints.get(&r.key()), Some(Some(_)))
    }

    /// The endpoint as the maps should hold it; `None` (a pod the source does not know yet)
    /// gives an endpoint isolated both ways with nothing allowed: fail closed until its labels
    /// are known.
    pub fn desired(
        &self,
        key: &str,
        ifindex: u32,
        ep_id: u32,
        r: &EndpointRecord,
    ) -> DesiredEndpoint {
        let d = DesiredEndpoint::isolated(ifindex, ep_id, &r.addrs());
        let Some(ep) = self.endpoints.get(key).and_then(|e| e.as_ref()) else {
            return d;
        };
        if let Some(n) = self.named.get(key) {
            let (flags, entries, names) = (n.flags, n.entries.clone(), n.names.clone());
            return DesiredEndpoint {
                flags: flags | (d.flags & (EP_HAS_V4 | EP_HAS_V6)),
                entries,
                names,
                ..d
            };
        }
        let entries = match self.entries.get(&(Arc::as_ptr(ep) as usize)) {
            Some(e) => e.clone(),
            None => Arc::new(policy::endpoint_entries(ep, &mut PortContents::default())),
        };
        d.with_policy(ep, entries)
    }

    pub fn describe(&self, pod: &str, compiler: &Compiler) -> Option<String> {
        let key = self.pods.get(pod)?;
        Some(match self.endpoints.get(key)? {
            Some(ep) => policy::describe(ep, compiler.registry()),
            None => format!("{pod}: not in the source yet: everything denied except its node\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ns: &str, name: &str, n: u8) -> EndpointRecord {
        EndpointRecord {
            container_id: format!("{ns}{name}"),
            netns: String::new(),
            ifname: "eth0".into(),
            pod_namespace: Some(ns.into()),
            pod_name: Some(name.into()),
            ips: vec![format!("10.244.0.{n}/24")],
            host_veth: String::new(),
            host_ifindex: u32::from(n),
            mac: String::new(),
            created_unix_ms: 0,
        }
    }

    fn snapshot(policies: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(&format!(
                "metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\nstatus: {{podIP: 10.244.0.{}}}\n",
                i + 1
            ))
            .unwrap();
            s.pods.insert(("x".into(), (*name).into()), Arc::new(pod));
        }
        for (i, p) in policies.iter().enumerate() {
            let np: NetworkPolicy = serde_saphyr::from_str(p).unwrap();
            s.policies
                .insert(("x".into(), format!("p{i}")), Arc::new(np));
        }
        s
    }

    const ALLOW_B: &str = "metadata: {name: p0, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.8/29]}}]\n    ports: [{port: 80}]\n";
    const ALLOW_C: &str = "metadata: {name: p0, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]\n    ports: [{port: 81, protocol: UDP}]\n";
    const INVALID: &str = "metadata: {name: p0, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: not-a-cidr}}]\n";
    const EGRESS_B: &str = "metadata: {name: p1, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 53, protocol: UDP}]}]\n";

    /// A compiler that reuses what did not change gives, at every step, exactly what a fresh
    /// compiler given the same history gives (caches never change the answer).
    #[test]
    fn incremental_compile_equals_compile_from_scratch() {
        let records: Vec<EndpointRecord> = (1..=3)
            .map(|n| record("x", ["a", "b", "c"][n as usize - 1], n))
            .collect();
        let locals: Vec<(String, &EndpointRecord)> = records.iter().map(|r| (r.key(), r)).collect();
        let steps: Vec<Vec<&str>> = vec![
            vec![ALLOW_B],
            vec![ALLOW_B, EGRESS_B],
            vec![ALLOW_C, EGRESS_B],
            vec![INVALID, EGRESS_B],
            vec![INVALID],
            vec![ALLOW_B],
            vec![],
        ];
        let mut incremental = Compiler::load(Path::new("/nonexistent"));
        let mut history: Vec<Snapshot> = Vec::new();
        let mut prev: Option<Snapshot> = None;
        for step in &steps {
            let mut snap = snapshot(step);
            // Unchanged objects keep their Arc, as the sources guarantee.
            if let Some(prev) = &prev {
                for (k, v) in snap.policies.iter_mut() {
                    if let Some(old) = prev.policies.get(k).filter(|o| ***o == **v) {
                        *v = old.clone();
                    }
                }
            }
            history.push(snap.clone());
            let got = incremental.compile(&snap, &locals);
            let mut fresh = Compiler::load(Path::new("/nonexistent"));
            let mut want = None;
            for s in &history {
                want = Some(fresh.compile(s, &locals));
            }
            let want = want.unwrap();
            assert_eq!(got.problems, want.problems, "step {step:?}");
            for (i, (key, r)) in locals.iter().enumerate() {
                let g = got.desired(key, r.host_ifindex, i as u32, r);
                let w = want.desired(key, r.host_ifindex, i as u32, r);
                assert_eq!(g, w, "step {step:?}, endpoint {key}");
                let ep = want.endpoints[key].as_deref();
                assert_eq!(
                    g,
                    policy::desired_endpoint(
                        ep,
                        r.host_ifindex,
                        i as u32,
                        &r.addrs(),
                        &mut PortContents::default()
                    ),
                    "step {step:?}, endpoint {key}"
                );
            }
            prev = Some(snap);
        }
        // The invalid update kept the allow-c version; then the policy went away.
        let s = snapshot(&[INVALID]);
        let c = incremental.compile(&s, &locals);
        assert!(
            c.problems
                .iter()
                .any(|p| p.message.ends_with("policy not enforced")),
            "{:?}",
            c.problems
        );
    }

    /// Threat model: a tenant writes a NetworkPolicy whose compiled form would take more of
    /// `pal_pol_v1` than one policy may. It is rejected alone, named with the numbers, and
    /// fails closed (the pod it selects stays isolated by it, allowing nothing); another
    /// policy beside it applies; a smaller version of it applies again.
    #[test]
    fn an_oversized_policy_is_rejected_alone_and_enforced_as_its_isolation() {
        let records: Vec<EndpointRecord> = (1..=3)
            .map(|n| record("x", ["a", "b", "c"][n as usize - 1], n))
            .collect();
        let locals: Vec<(String, &EndpointRecord)> = records.iter().map(|r| (r.key(), r)).collect();
        let blocks: Vec<String> = (0..10)
            .map(|i| format!("{{ipBlock: {{cidr: 198.51.100.{i}/32}}}}"))
            .collect();
        let big = format!(
            "metadata: {{name: p0, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{}]\n",
            blocks.join(", ")
        );
        // A 16-entry pal_pol_v1: 4 entries per policy.
        let mut c = Compiler::load(Path::new("/nonexistent")).for_capacity(16);
        let out = c.compile(&snapshot(&[big.as_str(), EGRESS_B]), &locals);
        let p: Vec<&Problem> = out
            .problems
            .iter()
            .filter(|p| p.object == "NetworkPolicy x/p0")
            .collect();
        assert_eq!(p.len(), 1, "{:?}", out.problems);
        assert!(
            p[0].message
                .contains("compiles to 10 pal_pol_v1 entries for Pod x/a")
                && p[0].message.contains("more than the 4 one policy may have")
                && p[0].message.contains("pal_pol_v1 holds 16"),
            "{}",
            p[0].message
        );
        let (ka, ra) = &locals[0];
        let a = out.desired(ka, ra.host_ifindex, 1, ra);
        assert!(
            a.flags & palisade_common::endpoint::EP_INGRESS_ISOLATED != 0 && a.entries.is_empty(),
            "x/a fails closed: isolated, nothing allowed: {a:?}"
        );
        let (kb, rb) = &locals[1];
        let b = out.desired(kb, rb.host_ifindex, 2, rb);
        assert!(
            b.flags & palisade_common::endpoint::EP_EGRESS_ISOLATED != 0 && !b.entries.is_empty(),
            "the other policy applies: {b:?}"
        );
        // Unchanged, it stays rejected; a version that fits is compiled again.
        let out = c.compile(&snapshot(&[big.as_str(), EGRESS_B]), &locals);
        assert!(
            out.problems
                .iter()
                .any(|p| p.object == "NetworkPolicy x/p0")
        );
        let out = c.compile(&snapshot(&[ALLOW_C, EGRESS_B]), &locals);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let a = out.desired(ka, ra.host_ifindex, 1, ra);
        assert!(!a.entries.is_empty(), "the smaller version applies: {a:?}");
    }
}
