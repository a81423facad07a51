//! The agent's reconcile, in one place:
//!
//! 1. **source** -> [`Snapshot`] (`rescan`): the latest complete view of the cluster;
//! 2. snapshot + local endpoints -> **desired state** (`desired`): policy compiled per local
//!    endpoint (`compile`), Service addresses (`services`), this node's addresses
//!    (`node::addrs`), the datapath config: everything the maps should hold, as one
//!    [`DesiredState`];
//! 3. **apply** (`applier`): one diff against what the maps hold, the only code that writes
//!    maps;
//! 4. **status**: what did not apply becomes problems naming the object and the numbers, or
//!    the error that makes the agent unhealthy until a retry succeeds.
//!
//! The kernel state outside the maps (routes, masquerade, uplink attachments) follows the same
//! snapshot from `node`.
//!
//! Live pod interfaces that no valid endpoint record names (`orphans`) are endpoints too: kept
//! isolated, nothing allowed, until their record is recovered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_common::stats::{Config, HostAddrKey};

use crate::applier::{Applier, ApplyError, DesiredEndpoint, DesiredState};
use crate::compile::{Compiled, Compiler};
use crate::datapath::Datapath;
use crate::datapath_ops::Ops;
use crate::endpoints::{EndpointRecord, EpIds, Records};
use crate::orphans::{BadRecords, Orphan};
use crate::source::{Snapshot, Source, SourceError};
use crate::status::Problem;

/// An endpoint of this node: the CNI plugin's record and the id the agent gave it.
pub struct Local {
    pub record: EndpointRecord,
    pub ep_id: u32,
}

pub struct Reconciler {
    source: Box<dyn Source>,
    snapshot: Snapshot,
    compiler: Compiler,
    compiled: Option<Compiled>,
    applier: Applier,
    ep_ids: EpIds,
    /// By record key (`palisade_node_api::endpoint::key`).
    locals: BTreeMap<String, Local>,
    config: Config,
    /// The last desired state built (its endpoints and Services are rebuilt only when the
    /// snapshot or the endpoints changed).
    desired: DesiredState,
    /// Problems of the last apply: objects the maps could not take (the numbers in the
    /// message).
    problems: Vec<Problem>,
    /// Problems of the Services in the last desired state (bad addresses, rejected Services).
    service_problems: Vec<Problem>,
    /// Endpoints (by record key) whose desired state is not in force, with why.
    failed: BTreeMap<String, String>,
    applied_generation: u64,
    last_error: Option<String>,
    /// Set when the snapshot or the endpoints changed since the desired state was built.
    dirty: bool,
    /// Time the last source poll that found a change took (read and parse).
    last_poll: Duration,
    /// When a change not yet enforced was first seen (for the programmed-latency metric).
    changed_at: Option<Instant>,
    /// The state directory shared with the CNI plugin, and this node's name (for recovering
    /// orphans' records).
    state_dir: PathBuf,
    node: String,
    /// Live pod interfaces the kernel knows but no valid record names: kept isolated until
    /// recovered (see `orphans`), by ifindex.
    orphans: BTreeMap<u32, Orphan>,
    /// Endpoint records that do not parse, by path.
    bad_records: BadRecords,
    /// Records recovered by this agent (listed in the status).
    recovered: Vec<Problem>,
    /// Egress by domain name: the cluster DNS Service ("namespace/name") and the per-pod
    /// limit of learnt addresses (`with_names`).
    dns_service: String,
    fqdn_max_learnt: u32,
}

/// `palisade-agent --dns-service`'s default: the cluster DNS Service as kubeadm, kind and
/// CoreDNS's manifests name it.
pub const DEFAULT_DNS_SERVICE: &str = "kube-system/kube-dns";

impl Reconciler {
    /// Adopts `applier`'s view of the pinned maps; `adopt` then takes the endpoint records.
    /// Nothing is written before the first `reconcile`.
    pub fn new(
        source: Box<dyn Source>,
        applier: Applier,
        ep_ids: EpIds,
        compiler: Compiler,
        config: Config,
        state_dir: PathBuf,
        node: String,
    ) -> Self {
        Reconciler {
            source,
            snapshot: Snapshot::default(),
            compiler,
            compiled: None,
            applier,
            ep_ids,
            locals: BTreeMap::new(),
            config,
            desired: DesiredState::default(),
            problems: Vec::new(),
            service_problems: Vec::new(),
            failed: BTreeMap::new(),
            applied_generation: 0,
            last_error: None,
            dirty: true,
            last_poll: Duration::ZERO,
            changed_at: None,
            state_dir,
            node,
            orphans: BTreeMap::new(),
            bad_records: BTreeMap::new(),
            recovered: Vec::new(),
            dns_service: DEFAULT_DNS_SERVICE.into(),
            fqdn_max_learnt: palisade_common::fqdn::DEFAULT_MAX_LEARNT_PER_POD,
        }
    }

    /// The cluster DNS Service whose answers teach names (`--dns-service`) and the per-pod
    /// limit of learnt addresses (`--fqdn-max-per-pod`).
    pub fn with_names(mut self, dns_service: String, max_learnt: u32) -> Self {
        self.dns_service = dns_service;
        self.fqdn_max_learnt = max_learnt;
        self
    }

    /// Takes the endpoint records found at start, and finds the orphans among `linked` (the
    /// interfaces with pinned links) and the pinned endpoint entries; reads the source.
    pub fn adopt(&mut self, records: Records, linked: Vec<u32>) -> anyhow::Result<()> {
        let Records { records, bad } = records;
        for b in &bad {
            tracing::warn!("endpoint record {b}");
        }
        self.bad_records = bad.into_iter().map(|b| (b.path, b.error.chain())).collect();
        for (key, record) in records {
            // Keep the ep_id a previous agent gave this interface.
            let ep_id = match self.applier.endpoint_info(record.host_ifindex) {
                Some(info) => info.ep_id,
                None => self.ep_ids.alloc()?,
            };
            self.locals.insert(key, Local { record, ep_id });
        }
        self.find_orphans(linked)?;
        self.rescan();
        Ok(())
    }

    /// Interfaces with a pinned endpoint entry or links but no valid record, that still
    /// exist: kept isolated (see `orphans`).
    fn find_orphans(&mut self, linked: Vec<u32>) -> anyhow::Result<()> {
        let recorded: BTreeSet<u32> = self
            .locals
            .values()
            .map(|l| l.record.host_ifindex)
            .collect();
        let mut known: BTreeSet<u32> = self.applier.ifindexes().into_iter().collect();
        known.extend(linked);
        for ifindex in known.difference(&recorded) {
            // Gone: the pod is gone, and the reconcile removes what is left of it.
            let Some(ifname) = crate::datapath::ifname_of(*ifindex) else {
                continue;
            };
            let info = self.applier.endpoint_info(*ifindex).copied();
            let ep_id = match info {
                Some(i) => i.ep_id,
                None => self.ep_ids.alloc()?,
            };
            let orphan = Orphan {
                ifindex: *ifindex,
                ifname,
                ep_id,
                addrs: crate::orphans::pinned_addrs(info.as_ref()),
                blocker: "not tried yet".into(),
                record: None,
            };
            tracing::error!("{}", orphan.problem().message);
            self.orphans.insert(*ifindex, orphan);
        }
        Ok(())
    }

    /// Tries to recover the record of every orphan from the node's state (see `orphans`).
    /// Recovered ones become endpoints like any other, with their policy.
    fn recover_orphans(&mut self) {
        let ifindexes: Vec<u32> = self.orphans.keys().copied().collect();
        for ifindex in ifindexes {
            if crate::datapath::ifname_of(ifindex).is_none() {
                // The interface went away: nothing left to protect.
                self.orphans.remove(&ifindex);
                self.dirty = true;
                continue;
            }
            let Some(o) = self.orphans.get_mut(&ifindex) else {
                continue;
            };
            let record = match crate::orphans::recover(
                o,
                &self.state_dir,
                &self.snapshot,
                &self.node,
                &self.bad_records,
            ) {
                Ok(r) => r,
                Err(why) => {
                    o.blocker = why;
                    continue;
                }
            };
            match record.write(&self.state_dir) {
                Ok(path) => {
                    let ep_id = o.ep_id;
                    let message = format!(
                        "had no valid endpoint record: recovered from the pinned endpoint entry, the IPAM allocation and Pod {}/{}; record {} written",
                        record.pod_namespace.as_deref().unwrap_or_default(),
                        record.pod_name.as_deref().unwrap_or_default(),
                        path.display()
                    );
                    tracing::warn!(interface = %o.ifname, "{message}");
                    self.recovered.push(Problem {
                        object: format!("interface {} (ifindex {ifindex})", o.ifname),
                        field: "endpoint record".into(),
                        message,
                    });
                    self.bad_records.remove(&path);
                    self.orphans.remove(&ifindex);
                    self.locals.insert(record.key(), Local { record, ep_id });
                    self.dirty = true;
                }
                Err(e) => o.blocker = format!("writing its record: {e}"),
            }
        }
    }

    /// Live interfaces without a valid record (kept isolated), by ifindex.
    pub fn orphans(&self) -> &BTreeMap<u32, Orphan> {
        &self.orphans
    }

    /// This node's addresses as last applied to `pal_host_v1`.
    pub fn host_addrs(&self) -> &BTreeSet<HostAddrKey> {
        &self.desired.host_addrs
    }

    pub fn source(&self) -> &dyn Source {
        self.source.as_ref()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn compiled(&self) -> Option<&Compiled> {
        self.compiled.as_ref()
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    pub fn locals(&self) -> &BTreeMap<String, Local> {
        &self.locals
    }

    pub fn applied_generation(&self) -> u64 {
        self.applied_generation
    }

    /// The error of the last apply, if it did not complete (retried by the next reconcile).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Problems of the snapshot, the compile, the last apply and the endpoint records
    /// (orphans, recovered records, records that do not parse).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = self.snapshot.problems.clone();
        if let Some(c) = &self.compiled {
            out.extend(c.problems.iter().cloned());
        }
        out.extend(self.service_problems.iter().cloned());
        out.extend(self.problems.iter().cloned());
        out.extend(self.orphans.values().map(Orphan::problem));
        out.extend(self.recovered.iter().cloned());
        out.extend(self.bad_records.iter().map(|(path, e)| Problem {
            object: format!("endpoint record {}", path.display()),
            field: String::new(),
            message: format!("does not parse: {e}"),
        }));
        out
    }

    /// Why the endpoint `key` is not in force, if it is not.
    pub fn endpoint_failure(&self, key: &str) -> Option<&str> {
        self.failed.get(key).map(String::as_str)
    }

    /// 1. Reads the source; marks dirty when it changed.
    pub fn rescan(&mut self) {
        let started = Instant::now();
        let polled = self.source.poll();
        self.absorb(polled, started);
    }

    /// Like `rescan`, with every source change made before the call (for `wait`).
    pub fn sync_source(&mut self) {
        let started = Instant::now();
        let synced = self.source.sync();
        self.absorb(synced, started);
    }

    fn absorb(&mut self, polled: Result<Option<Snapshot>, SourceError>, started: Instant) {
        match polled {
            Ok(Some(snap)) => {
                self.last_poll = started.elapsed();
                self.changed_at.get_or_insert(started);
                for p in &snap.problems {
                    tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
                }
                self.snapshot = snap;
                self.dirty = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("{e:#}");
                self.last_error = Some(format!("{e:#}"));
            }
        }
    }

    /// A CNI ADD: the endpoint of `record` (a new ep_id unless it is the same interface).
    pub fn add_local(&mut self, record: EndpointRecord) -> anyhow::Result<String> {
        let key = record.key();
        let ep_id = match self.locals.get(&key) {
            Some(l) if l.record.host_ifindex == record.host_ifindex => l.ep_id,
            _ => self.ep_ids.alloc()?,
        };
        self.locals.insert(key.clone(), Local { record, ep_id });
        self.dirty = true;
        Ok(key)
    }

    /// A CNI DEL: forgets the endpoint; returns its record.
    pub fn remove_local(&mut self, key: &str) -> Option<EndpointRecord> {
        let l = self.locals.remove(key)?;
        self.dirty = true;
        Some(l.record)
    }

    /// 2-4. Applies the current snapshot and endpoints if anything changed (or the last
    /// attempt did not complete). Returns, when a source change got enforced, the time since
    /// it was first seen.
    pub fn reconcile(&mut self, dp: &mut Datapath) -> Option<Duration> {
        if !self.orphans.is_empty() {
            self.recover_orphans();
        }
        let hosts = crate::node::addrs::host_addrs();
        if !self.dirty && self.last_error.is_none() && hosts == self.desired.host_addrs {
            return None;
        }
        let started = Instant::now();
        // The previous compile (holding what it replaced) is dropped only after the apply:
        // freeing a large policy takes milliseconds, off the path from a change to its
        // enforcement.
        let mut compiled = None;
        if self.dirty {
            compiled = Some(self.build_desired(hosts));
        } else {
            self.desired.host_addrs = hosts;
        }
        let compile_time = started.elapsed();
        let out = self.applier.apply(&mut Ops(&mut dp.maps), &self.desired);
        // Endpoints applied by an earlier agent that no record names any more have no
        // desired state (removed above); their links go too.
        let retired = match compiled {
            Some(c) => self.compiled.replace(c),
            None => None,
        };
        let live: BTreeSet<u32> = self
            .locals
            .values()
            .map(|l| l.record.host_ifindex)
            .chain(self.orphans.keys().copied())
            .collect();
        for ifindex in dp.pinned_ifindexes() {
            if !live.contains(&ifindex) {
                dp.detach(ifindex);
            }
        }
        let by_ifindex: BTreeMap<u32, &str> = self
            .locals
            .iter()
            .map(|(k, l)| (l.record.host_ifindex, k.as_str()))
            .collect();
        let mut problems = Vec::new();
        let mut errors = Vec::new();
        self.failed.clear();
        for (ifindex, e) in &out.endpoints {
            let key = by_ifindex.get(ifindex).copied();
            let object = match (key.and_then(|k| self.locals[k].record.pod()), key) {
                (Some((ns, name)), _) => format!("Pod {ns}/{name}"),
                (None, Some(k)) => format!("endpoint {k} (ifindex {ifindex})"),
                (None, None) => match self.orphans.get(ifindex) {
                    Some(o) => format!("interface {} (ifindex {ifindex})", o.ifname),
                    None => format!("ifindex {ifindex}"),
                },
            };
            if let Some(k) = key {
                self.failed.insert(k.to_string(), e.to_string());
            }
            match e {
                ApplyError::Full(f) => problems.push(Problem {
                    object,
                    field: "policy".into(),
                    message: format!("not programmed, its previous state stays: {f}"),
                }),
                ApplyError::Map(e) => {
                    errors.push(format!("{object}: {:#}", anyhow::anyhow!("{e}")))
                }
            }
        }
        for (map, e) in &out.maps {
            match e {
                ApplyError::Full(f) => problems.push(Problem {
                    object: format!("map {map}"),
                    field: "capacity".into(),
                    message: format!("not updated, its previous content stays: {f}"),
                }),
                ApplyError::Map(e) => errors.push(format!("{map}: {e}")),
            }
        }
        if out.leftovers > 0 {
            tracing::warn!(
                "{} unused map entries could not be deleted yet",
                out.leftovers
            );
        }
        for p in &problems {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        self.problems = problems;
        self.dirty = false;
        let mut programmed = None;
        if errors.is_empty() {
            self.last_error = None;
            self.applied_generation = self.snapshot.generation;
            programmed = self.changed_at.take().map(|t| t.elapsed());
        } else {
            let e = errors.join("; ");
            tracing::error!("applying state: {e}");
            self.last_error = Some(e);
        }
        let total = started.elapsed();
        let u = self.applier.usage();
        tracing::info!(
            generation = self.snapshot.generation,
            endpoints = self.locals.len(),
            policy_entries = u.policy,
            port_entries = u.ports,
            "applied in {:?} (source read {:?}, compile {:?}, map writes {:?})",
            total + self.last_poll,
            self.last_poll,
            compile_time,
            total - compile_time
        );
        drop(retired);
        programmed
    }

    /// 2. The desired state of the maps from the snapshot, the endpoints and `hosts`.
    fn build_desired(&mut self, hosts: BTreeSet<HostAddrKey>) -> Compiled {
        let locals: Vec<(String, &EndpointRecord)> = self
            .locals
            .iter()
            .map(|(k, l)| (k.clone(), &l.record))
            .collect();
        let compiled = self.compiler.compile(&self.snapshot, &locals);
        for p in &compiled.problems {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        let (services, problems) =
            crate::services::service_addrs(&self.snapshot, self.applier.capacity().services);
        for p in &problems {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        self.service_problems = problems;
        let mut endpoints: BTreeMap<u32, DesiredEndpoint> = self
            .locals
            .iter()
            .map(|(key, l)| {
                let d = compiled.desired(key, l.record.host_ifindex, l.ep_id, &l.record);
                (d.ifindex, d)
            })
            .collect();
        // Interfaces without a valid record: isolated, nothing allowed, until recovered.
        for o in self.orphans.values() {
            let d = DesiredEndpoint::isolated(o.ifindex, o.ep_id, &o.addrs);
            endpoints.insert(o.ifindex, d);
        }
        let names_in_use = endpoints.values().any(|d| d.names.is_some());
        let (dns_servers, problems) =
            crate::services::dns_server_addrs(&self.snapshot, &self.dns_service, names_in_use);
        for p in &problems {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        self.service_problems.extend(problems);
        self.desired = DesiredState {
            config: self.config,
            host_addrs: hosts,
            services,
            dns_servers,
            fqdn_max_learnt: Some(self.fqdn_max_learnt),
            endpoints,
        };
        compiled
    }
}
