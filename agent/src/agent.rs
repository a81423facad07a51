//! The agent's state and its reconcile step: source snapshot + endpoints -> policy compile ->
//! diff -> maps. One owner, driven by one loop (see `run`), so there is no locking.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use palisade_common::endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED};
use palisade_common::stats::{CFG_DEBUG_LOG, CFG_NO_FLOW_EVENTS, Config, HostAddrKey};
use palisade_common::verdict::{REASON_SLOTS, Reason};
use palisade_common::{FAMILY_V4, FAMILY_V6};

use crate::api::{Request, Response};
use crate::applier::Applier;
use crate::compile::{self, Compiled};
use crate::datapath::Datapath;
use crate::endpoints::{EndpointRecord, EpIds, Records, read_all};
use crate::source::{Snapshot, Source};
use crate::status::{CounterRow, EndpointRow, Problem, Status};

pub struct AgentConfig {
    pub node: String,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub object: PathBuf,
    pub debug_log: bool,
    /// Routes to other nodes' pod CIDRs and masquerade (see `routing`, `masquerade`).
    pub network: crate::routing::NetworkConfig,
    /// Interfaces that get `to_uplink` (Service traffic leaving the node, judged after
    /// translation); empty: the interface holding this node's InternalIP and those holding a
    /// default route, re-read at every reconcile.
    pub uplinks: Vec<String>,
    /// Flow events, history, metrics (`observe`).
    pub observe: crate::observe::ObserveConfig,
    /// Every policy audited: nothing is enforced, what policies would drop is reported.
    pub audit_mode: bool,
}

struct Local {
    record: EndpointRecord,
    ep_id: u32,
}

pub struct Agent {
    cfg: AgentConfig,
    source: Box<dyn Source>,
    snapshot: Snapshot,
    dp: Datapath,
    applier: Applier,
    compiler: compile::Compiler,
    ep_ids: EpIds,
    locals: BTreeMap<String, Local>,
    /// Live pod interfaces the kernel knows but no valid record names: kept isolated until
    /// recovered (see `orphans`), by ifindex.
    orphans: BTreeMap<u32, crate::orphans::Orphan>,
    /// Endpoint records that do not parse, by path.
    bad_records: crate::orphans::BadRecords,
    /// Records recovered by this agent (listed in the status).
    recovered: Vec<Problem>,
    host_addrs: BTreeSet<HostAddrKey>,
    /// Routes to the other nodes' pods and masquerade rules, kept in line with the Nodes.
    network: crate::routing::NodeNetwork,
    /// Content of `pal_svc_v1` as last written (`None` until the first sync, which also
    /// removes what a previous agent left).
    svc_addrs: Option<BTreeSet<palisade_common::service::SvcAddrKey>>,
    /// Uplink (name, ifindex) pairs `to_uplink` is attached to.
    uplinks: Vec<(String, u32)>,
    applied_generation: u64,
    compiled: Option<Compiled>,
    last_error: Option<String>,
    /// Set when something changed that the next reconcile must apply.
    dirty: bool,
    /// Time the last source poll that found a change took (read and parse).
    last_poll: std::time::Duration,
    /// Flows and metrics (`observe`), and the ring buffer until the reader takes it.
    observe: std::sync::Arc<crate::observe::Hub>,
    flow_events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    /// When the agent first saw a change not yet enforced (for the programmed-latency metric).
    changed_at: Option<std::time::Instant>,
}

impl Agent {
    /// Opens the datapath (adopting pinned maps and links), reads the endpoint records and the
    /// source, and adopts what is pinned. Nothing is written before the first `reconcile`.
    pub fn start(cfg: AgentConfig, source: Box<dyn Source>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut dp = Datapath::open(&cfg.object, &cfg.bpffs)
            .with_context(|| format!("opening datapath from {}", cfg.object.display()))?;
        let pinned = crate::datapath_ops::read_pinned(&dp).context("reading pinned maps")?;
        let applier = Applier::adopt(pinned);
        tracing::info!(
            "adopted pinned state: {} endpoints, {} links",
            applier.ifindexes().len(),
            dp.pinned_ifindexes().len()
        );
        let ep_ids = EpIds::open(&cfg.state_dir, applier.max_ep_id() + 1)?;
        let compiler = compile::Compiler::load(&cfg.state_dir).audit_everything(cfg.audit_mode);
        let flow_events = if cfg.observe.events {
            dp.take_flow_events()
        } else {
            None
        };
        let observe = crate::observe::Hub::new(&cfg.observe);
        let network = crate::routing::NodeNetwork::new(cfg.network.clone(), cfg.node.clone());
        let mut agent = Agent {
            cfg,
            source,
            snapshot: Snapshot::default(),
            dp,
            applier,
            compiler,
            ep_ids,
            locals: BTreeMap::new(),
            orphans: BTreeMap::new(),
            bad_records: BTreeMap::new(),
            recovered: Vec::new(),
            host_addrs: BTreeSet::new(),
            network,
            svc_addrs: None,
            uplinks: Vec::new(),
            applied_generation: 0,
            compiled: None,
            last_error: None,
            dirty: true,
            last_poll: std::time::Duration::ZERO,
            observe,
            flow_events,
            changed_at: None,
        };
        let mut flags = 0;
        if agent.cfg.debug_log {
            flags |= CFG_DEBUG_LOG;
        }
        if !agent.cfg.observe.events {
            flags |= CFG_NO_FLOW_EVENTS;
        }
        agent.dp.set_config(Config { flags, _pad: 0 })?;
        let Records { records, bad } = read_all(&agent.cfg.state_dir)?;
        for b in &bad {
            tracing::warn!("endpoint record {b}");
        }
        let bad = bad.into_iter().map(|b| (b.path, b.error.chain())).collect();
        agent.bad_records = bad;
        for (key, record) in records {
            // Keep the ep_id a previous agent gave this interface.
            let ep_id = match agent.applier.endpoint_info(record.host_ifindex) {
                Some(info) => info.ep_id,
                None => agent.ep_ids.alloc()?,
            };
            agent.locals.insert(key, Local { record, ep_id });
        }
        agent.find_orphans()?;
        agent.rescan();
        Ok(agent)
    }

    /// Interfaces with a pinned endpoint entry or links but no valid record, that still
    /// exist: kept isolated (see `orphans`).
    fn find_orphans(&mut self) -> anyhow::Result<()> {
        let recorded: BTreeSet<u32> = self
            .locals
            .values()
            .map(|l| l.record.host_ifindex)
            .collect();
        let mut known: BTreeSet<u32> = self.applier.ifindexes().into_iter().collect();
        known.extend(self.dp.pinned_ifindexes());
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
            let orphan = crate::orphans::Orphan {
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
                &self.cfg.state_dir,
                &self.snapshot,
                &self.cfg.node,
                &self.bad_records,
            ) {
                Ok(r) => r,
                Err(why) => {
                    o.blocker = why;
                    continue;
                }
            };
            match record.write(&self.cfg.state_dir) {
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

    /// Woken when the source may have changed.
    pub fn source_changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.source.changes()
    }

    /// Reads the source; marks dirty when it changed.
    pub fn rescan(&mut self) {
        let started = std::time::Instant::now();
        let polled = self.source.poll();
        self.absorb(polled, started);
    }

    /// Like `rescan`, with every source change made before the call (for `wait`).
    pub fn sync_source(&mut self) {
        let started = std::time::Instant::now();
        let synced = self.source.sync();
        self.absorb(synced, started);
    }

    fn absorb(
        &mut self,
        polled: Result<Option<crate::source::Snapshot>, crate::source::SourceError>,
        started: std::time::Instant,
    ) {
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

    /// Applies the current source and endpoints to the datapath if anything changed (or the
    /// last attempt failed).
    pub fn reconcile(&mut self) {
        self.refresh_host_addrs();
        // Only does work when the Nodes changed (or the last attempt failed).
        self.network.sync(&self.snapshot.nodes, false);
        self.refresh_uplinks();
        if !self.orphans.is_empty() {
            self.recover_orphans();
        }
        if !self.dirty && self.last_error.is_none() {
            return;
        }
        match self.reconcile_inner() {
            Ok(()) => {
                self.dirty = false;
                self.last_error = None;
                self.applied_generation = self.snapshot.generation;
                if let Some(t) = self.changed_at.take() {
                    self.observe.metrics.observe_programmed(t.elapsed());
                }
            }
            Err(e) => {
                tracing::error!("applying state: {e:#}");
                self.last_error = Some(format!("{e:#}"));
            }
        }
        self.publish_observe();
    }

    /// What `observe` needs after an apply: the names of this state, and the agent's metrics.
    fn publish_observe(&self) {
        use crate::observe::{LocalEndpoint, Names, NamesInput, metrics::AgentState};
        let endpoints = self
            .locals
            .values()
            .map(|l| {
                let pod = l
                    .record
                    .pod()
                    .map(|(n, p)| palisade_policy::PodKey::new(&n, &p));
                let ep = LocalEndpoint {
                    pod,
                    ifindex: l.record.host_ifindex,
                    host_veth: l.record.host_veth.clone(),
                };
                (l.ep_id, ep)
            })
            .collect();
        if let Some(c) = &self.compiled {
            let host = self
                .host_addrs
                .iter()
                .filter_map(|k| match k.family {
                    FAMILY_V4 => Some(std::net::IpAddr::from([
                        k.addr_be[0],
                        k.addr_be[1],
                        k.addr_be[2],
                        k.addr_be[3],
                    ])),
                    FAMILY_V6 => Some(std::net::IpAddr::from(k.addr_be)),
                    _ => None,
                })
                .collect();
            self.observe.set_names(Names::build(NamesInput {
                node: &self.cfg.node,
                snapshot: &self.snapshot,
                endpoints,
                registry: self.compiler.registry(),
                prepared: self.compiler.prepared().cloned().collect(),
                cluster: c.cluster.clone(),
                host,
            }));
        }
        let known = self
            .locals
            .values()
            .filter(|l| self.compiled.as_ref().is_some_and(|c| c.knows(&l.record)))
            .count();
        let (pol, ports) = self.applier.sizes();
        let status_problems = self.status_problems().len();
        self.observe.metrics.set_agent_state(&AgentState {
            endpoints_enforced: known,
            endpoints_pod_unknown: self.locals.len() - known,
            map_entries: vec![
                (
                    palisade_common::maps::ENDPOINTS,
                    self.applier.ifindexes().len(),
                ),
                (palisade_common::maps::POLICY, pol),
                (palisade_common::maps::PORTS, ports),
                (palisade_common::maps::HOST_ADDRS, self.host_addrs.len()),
                (
                    palisade_common::maps::SERVICES,
                    self.svc_addrs.as_ref().map_or(0, |s| s.len()),
                ),
            ],
            synced: self.last_error.is_none(),
            source_generation: self.source.generation(),
            applied_generation: self.applied_generation,
            problems: status_problems,
        });
    }

    /// The hub, the ring buffer (once) and where the maps and the metrics endpoint are: for
    /// `observe::start`.
    pub fn observe_parts(&mut self) -> crate::observe::Parts {
        crate::observe::Parts {
            hub: self.observe.clone(),
            ring: self.flow_events.take(),
            maps_dir: self.dp.maps_dir().to_path_buf(),
            metrics_addr: self.cfg.observe.metrics_addr,
        }
    }

    fn reconcile_inner(&mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let locals: Vec<(String, &EndpointRecord)> = self
            .locals
            .iter()
            .map(|(k, l)| (k.clone(), &l.record))
            .collect();
        let compiled = self.compiler.compile(&self.snapshot, &locals);
        self.sync_services()?;
        let compile_time = started.elapsed();
        for p in &compiled.problems {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        let mut ops = crate::datapath_ops::Ops(&mut self.dp.maps);
        for (key, local) in &self.locals {
            let want = compiled.desired(key, local.record.host_ifindex, local.ep_id, &local.record);
            self.applier.apply(&mut ops, &want)?;
        }
        // Interfaces without a valid record: isolated, nothing allowed, until recovered.
        for o in self.orphans.values() {
            let want = compile::desired_endpoint(None, o.ifindex, o.ep_id, &o.addrs);
            self.applier.apply(&mut ops, &want)?;
        }
        // Endpoints applied (now or by an earlier agent) that no record names any more.
        let live: BTreeSet<u32> = self
            .locals
            .values()
            .map(|l| l.record.host_ifindex)
            .chain(self.orphans.keys().copied())
            .collect();
        for ifindex in self.applier.ifindexes() {
            if !live.contains(&ifindex) {
                self.applier.remove(&mut ops, ifindex)?;
            }
        }
        // What the endpoints above stopped referencing, once no packet can still read it.
        self.applier.commit(&mut ops)?;
        for ifindex in self.dp.pinned_ifindexes() {
            if !live.contains(&ifindex) {
                self.dp.detach(ifindex);
            }
        }
        self.compiled = Some(compiled);
        let (pol, ports) = self.applier.sizes();
        let total = started.elapsed();
        tracing::info!(
            generation = self.snapshot.generation,
            endpoints = self.locals.len(),
            policy_entries = pol,
            port_entries = ports,
            "applied in {:?} (source read {:?}, compile {:?}, map writes {:?})",
            total + self.last_poll,
            self.last_poll,
            compile_time,
            total - compile_time
        );
        Ok(())
    }

    /// `pal_svc_v1` := the snapshot's Service addresses (added before removed).
    fn sync_services(&mut self) -> anyhow::Result<()> {
        let (want, problems) = crate::services::service_addrs(&self.snapshot);
        for p in &problems {
            tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
        }
        if self.svc_addrs.as_ref() == Some(&want) {
            return Ok(());
        }
        let map = palisade_common::maps::SERVICES;
        for k in &want {
            self.dp
                .maps
                .services
                .insert(k, 1, 0)
                .map_err(|e| anyhow::anyhow!("adding a Service address to {map}: {e}"))?;
        }
        // Entries a previous agent wrote that are no longer wanted, too.
        let stale: Vec<_> = self
            .dp
            .maps
            .services
            .keys()
            .flatten()
            .filter(|k| !want.contains(k))
            .collect();
        for k in stale {
            if let Err(e) = self.dp.maps.services.remove(&k) {
                tracing::warn!("removing a Service address from {map}: {e}");
            }
        }
        self.svc_addrs = Some(want);
        Ok(())
    }

    /// Keeps `to_uplink` attached to the uplinks (`--uplink`, or the default-route
    /// interfaces), re-attaching when an interface was re-created, detaching from the rest.
    fn refresh_uplinks(&mut self) {
        let names = if self.cfg.uplinks.is_empty() {
            let own = crate::services::internal_ips(&self.snapshot, &self.cfg.node);
            let mut n = crate::services::interfaces_holding(&own);
            n.extend(crate::services::default_route_interfaces());
            n.sort();
            n.dedup();
            n
        } else {
            self.cfg.uplinks.clone()
        };
        let mut want = Vec::new();
        for n in names {
            let Ok(c) = std::ffi::CString::new(n.as_str()) else {
                continue;
            };
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                continue;
            }
            want.push((n, ifindex));
        }
        if want == self.uplinks {
            return;
        }
        let mut attached = Vec::new();
        for (n, ifindex) in &want {
            match self.dp.attach_uplink(*ifindex) {
                Ok(()) => {
                    tracing::info!("to_uplink attached to {n} (ifindex {ifindex})");
                    attached.push((n.clone(), *ifindex));
                }
                Err(e) => tracing::error!("uplink {n}: {:#}", anyhow::Error::from(e)),
            }
        }
        let keep: Vec<u32> = attached.iter().map(|a| a.1).collect();
        self.dp.detach_uplinks_except(&keep);
        self.uplinks = attached;
    }

    /// Checks that the bpffs, the pins and the links are still in place, restoring what is
    /// lost (see `datapath::integrity`). Cheap; run every second.
    pub fn check_datapath(&mut self) {
        self.dp.check_integrity();
        if !self.orphans.is_empty() {
            // Recovery may have become possible (the Pod or the allocation appeared).
            self.reconcile();
        }
    }

    /// Periodic resync of routes and masquerade, even when the Nodes did not change (repairs
    /// a route someone deleted).
    pub fn resync_network(&mut self) {
        self.network.sync(&self.snapshot.nodes, true);
    }

    fn refresh_host_addrs(&mut self) {
        let mut want = BTreeSet::new();
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let Some(sa) = a.address else { continue };
                if let Some(v4) = sa.as_sockaddr_in() {
                    let mut k = HostAddrKey {
                        family: FAMILY_V4,
                        ..Default::default()
                    };
                    k.addr_be[..4].copy_from_slice(&v4.ip().octets());
                    want.insert(k);
                } else if let Some(v6) = sa.as_sockaddr_in6() {
                    let ip = v6.ip();
                    // Link-local addresses are per link: every veth has one; they are not
                    // "the node" as a peer.
                    if ip.is_unicast_link_local() {
                        continue;
                    }
                    want.insert(HostAddrKey {
                        family: FAMILY_V6,
                        addr_be: ip.octets(),
                        ..Default::default()
                    });
                }
            }
        }
        if want == self.host_addrs {
            return;
        }
        for k in want.difference(&self.host_addrs) {
            if let Err(e) = self.dp.maps.hosts.insert(k, 1, 0) {
                tracing::error!(
                    "adding node address to {}: {e}",
                    palisade_common::maps::HOST_ADDRS
                );
                return;
            }
        }
        for k in self.host_addrs.difference(&want) {
            if let Err(e) = self.dp.maps.hosts.remove(k) {
                tracing::warn!("removing node address: {e}");
            }
        }
        self.host_addrs = want;
    }

    /// The state directory shared with the CNI plugin.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.cfg.state_dir
    }

    /// CNI ADD (the socket server checked the peer, the record and its veth). Refused when an
    /// address of the record is another local endpoint's: one pod must not take over another's
    /// address (and its policy).
    fn add_endpoint(&mut self, record: EndpointRecord) -> Response {
        let key = record.key();
        let addrs = record.addrs();
        if let Some((other, ip)) = self.locals.iter().find_map(|(k, l)| {
            let ip = l.record.addrs().into_iter().find(|a| addrs.contains(a))?;
            (*k != key).then_some((k, ip))
        }) {
            return Response::err(format!(
                "refused add of endpoint {key}: address {ip} is endpoint {other}'s"
            ));
        }
        let ep_id = match self.locals.get(&key) {
            Some(l) if l.record.host_ifindex == record.host_ifindex => l.ep_id,
            _ => match self.ep_ids.alloc() {
                Ok(id) => id,
                Err(e) => return Response::err(format!("{e:#}")),
            },
        };
        let ifindex = record.host_ifindex;
        self.locals.insert(key.clone(), Local { record, ep_id });
        self.dirty = true;
        // Program first (the endpoint entry and its policy), then attach: the first packet
        // through the hook already meets the pod's policy.
        self.reconcile();
        if let Some(e) = &self.last_error {
            return Response::err(format!("programming endpoint {key}: {e}"));
        }
        if let Err(e) = self.dp.attach(ifindex) {
            return Response::err(format!(
                "attaching to endpoint {key}: {:#}",
                anyhow::Error::from(e)
            ));
        }
        Response::ok(self.applied_generation)
    }

    /// CNI DEL: forgets the endpoint once its host veth is gone. While the veth exists the
    /// endpoint stays enforced and the request is refused: a `del` must never leave a live
    /// pod attached without its programs (the plugin deletes the veth first).
    fn del_endpoint(&mut self, container_id: &str, ifname: &str) -> Response {
        let key = palisade_node_api::endpoint::key(container_id, ifname);
        if let Some(l) = self.locals.get(&key)
            && crate::datapath::ifname_of(l.record.host_ifindex).as_deref()
                == Some(l.record.host_veth.as_str())
        {
            return Response::err(format!(
                "refused del of endpoint {key}: its host veth {} (ifindex {}) still exists; \
                 it stays enforced until the veth is deleted",
                l.record.host_veth, l.record.host_ifindex
            ));
        }
        if let Some(l) = self.locals.remove(&key) {
            self.dp.detach(l.record.host_ifindex);
            self.dirty = true;
            self.reconcile();
        }
        match &self.last_error {
            Some(e) => Response::err(e.clone()),
            None => Response::ok(self.applied_generation),
        }
    }

    /// Attaches programs to every recorded endpoint (startup, after adoption).
    pub fn attach_all(&mut self) {
        let ifs: Vec<(String, u32)> = self
            .locals
            .iter()
            .map(|(k, l)| (k.clone(), l.record.host_ifindex))
            .chain(self.orphans.values().map(|o| {
                (
                    format!("interface {} without a record", o.ifname),
                    o.ifindex,
                )
            }))
            .collect();
        for (key, ifindex) in ifs {
            if let Err(e) = self.dp.attach(ifindex) {
                tracing::warn!("endpoint {key}: {:#}", anyhow::Error::from(e));
            }
        }
    }

    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Add { endpoint } => {
                let started = std::time::Instant::now();
                let r = self.add_endpoint(endpoint);
                self.observe.metrics.observe_cni_add(started.elapsed());
                r
            }
            Request::Del {
                container_id,
                ifname,
            } => self.del_endpoint(&container_id, &ifname),
            Request::Wait => {
                self.sync_source();
                self.reconcile();
                match &self.last_error {
                    Some(e) => Response::err(e.clone()),
                    None => Response::ok(self.applied_generation),
                }
            }
            Request::Status => Response {
                ok: true,
                status: Some(self.status()),
                ..Default::default()
            },
            Request::Endpoints => Response {
                ok: true,
                endpoints: Some(self.endpoint_rows()),
                ..Default::default()
            },
            Request::Policy { pod } => match &self.compiled {
                Some(c) => match c.describe(&pod, &self.compiler) {
                    Some(text) => Response {
                        ok: true,
                        text: Some(text),
                        ..Default::default()
                    },
                    None => Response::err(format!(
                        "pod {pod} is not an endpoint on node {}",
                        self.cfg.node
                    )),
                },
                None => Response::err("nothing applied yet"),
            },
            Request::Explain {
                from,
                to,
                port,
                what_if,
            } => crate::insight::explain_response(
                &self.insight_facts(),
                &self.compiler.enforced(),
                &from,
                &to,
                port.as_deref(),
                what_if.as_deref(),
            ),
            // `offload` answers it; here only if a caller did not ask `offload` first.
            Request::Lint => crate::insight::lint_job(self.insight_facts())(),
            // Streamed by the socket server itself (`observe::serve_flows`).
            Request::Flows { .. } => Response::err("flows are served by the socket server"),
        }
    }

    /// Requests answered off the agent's loop, on a copy of what they need (they may take
    /// seconds on a large cluster; CNI ADDs must not wait for them): the job to run, or `None`
    /// for `handle`.
    pub fn offload(&mut self, req: &Request) -> Option<crate::insight::Job> {
        match req {
            Request::Lint => Some(crate::insight::lint_job(self.insight_facts())),
            _ => None,
        }
    }

    /// What explain and lint read: the snapshot, with this node's pods at the addresses of
    /// their endpoint records.
    fn insight_facts(&self) -> crate::insight::Facts {
        let locals: Vec<(String, &EndpointRecord)> = self
            .locals
            .iter()
            .map(|(k, l)| (k.clone(), &l.record))
            .collect();
        crate::insight::Facts::new(&self.snapshot, &locals)
    }

    /// Problems of the source, the compile, the node network and the agent's own settings.
    fn status_problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self.snapshot.problems.clone();
        if let Some(c) = &self.compiled {
            problems.extend(c.problems.iter().cloned());
        }
        problems.extend(self.network.problems().iter().cloned());
        problems.extend(self.dp.at_start().iter().cloned());
        problems.extend(self.dp.faults().iter().cloned());
        problems.extend(self.dp.restorations().cloned());
        problems.extend(self.orphans.values().map(crate::orphans::Orphan::problem));
        problems.extend(self.recovered.iter().cloned());
        problems.extend(self.bad_records.iter().map(|(path, e)| Problem {
            object: format!("endpoint record {}", path.display()),
            field: String::new(),
            message: format!("does not parse: {e}"),
        }));
        if let Some(e) = self
            .observe
            .metrics
            .serve_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            problems.push(Problem {
                object: format!("agent on node {}", self.cfg.node),
                field: "--metrics-address".into(),
                message: format!("{e}; no metrics endpoint"),
            });
        }
        problems
    }

    pub fn status(&self) -> Status {
        let problems = self.status_problems();
        let counters = self
            .dp
            .counters()
            .into_iter()
            .map(|(slot, c)| CounterRow {
                direction: if slot / REASON_SLOTS == 0 {
                    "ingress".into()
                } else {
                    "egress".into()
                },
                reason: Reason(slot % REASON_SLOTS).name().into(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        Status {
            // Unhealthy while the datapath is not fully restored: a lost bpffs or pin, a
            // detached link (the problems name each).
            // Unhealthy while a pod interface has no valid record, too.
            healthy: self.last_error.is_none()
                && self.dp.faults().is_empty()
                && self.orphans.is_empty(),
            node: self.cfg.node.clone(),
            source_generation: self.source.generation(),
            applied_generation: self.applied_generation,
            endpoints: self.locals.len(),
            policies: self.snapshot.policies.len(),
            problems,
            counters,
            last_error: self.last_error.clone(),
            flow_events: {
                let [emitted, lost, suppressed] = self.dp.event_counts();
                crate::status::FlowEventCounts {
                    enabled: self.cfg.observe.events,
                    emitted,
                    lost,
                    suppressed,
                    history: self.observe.history_len(),
                }
            },
        }
    }

    fn endpoint_rows(&self) -> Vec<EndpointRow> {
        self.locals
            .values()
            .map(|l| {
                let info = self
                    .applier
                    .endpoint_info(l.record.host_ifindex)
                    .copied()
                    .unwrap_or_default();
                let pod = l
                    .record
                    .pod()
                    .map(|(n, p)| format!("{n}/{p}"))
                    .unwrap_or_else(|| l.record.container_id.clone());
                EndpointRow {
                    pod_unknown: !self.compiled.as_ref().is_some_and(|c| c.knows(&l.record)),
                    pod,
                    ifname: l.record.ifname.clone(),
                    host_veth: l.record.host_veth.clone(),
                    ifindex: l.record.host_ifindex,
                    ep_id: l.ep_id,
                    policy_id: info.policy_id,
                    ips: l.record.ips.clone(),
                    ingress_isolated: info.flags & EP_INGRESS_ISOLATED != 0,
                    egress_isolated: info.flags & EP_EGRESS_ISOLATED != 0,
                }
            })
            .collect()
    }
}
