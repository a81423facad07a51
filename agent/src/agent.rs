//! The agent: the datapath, the reconcile (`reconcile`: source -> desired state -> applier ->
//! status), the node's own network (`node`), flows and metrics (`observe`), and the requests
//! of the socket. One owner, driven by one loop (see `run`), so there is no locking.

use std::path::PathBuf;

use palisade_common::endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED};
use palisade_common::stats::{CFG_DEBUG_LOG, CFG_NO_FLOW_EVENTS, Config};
use palisade_common::verdict::{REASON_SLOTS, Reason};
use palisade_common::{FAMILY_V4, FAMILY_V6};

use crate::api::{Request, Response};
use crate::applier::Applier;
use crate::compile::Compiler;
use crate::datapath::Datapath;
use crate::endpoints::{EndpointRecord, EpIds, read_all};
use crate::node::network::NetworkTask;
use crate::node::uplinks::Uplinks;
use crate::reconcile::Reconciler;
use crate::source::Source;
use crate::status::{CounterRow, EndpointRow, Problem, Status};

pub struct AgentConfig {
    pub node: String,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub object: PathBuf,
    pub debug_log: bool,
    /// Routes to other nodes' pod CIDRs and masquerade (see `node::routing`,
    /// `node::masquerade`).
    pub network: crate::node::routing::NetworkConfig,
    /// Interfaces that get `to_uplink` (Service traffic leaving the node, judged after
    /// translation); empty: the interface holding this node's InternalIP and those holding a
    /// default route, re-read at every reconcile.
    pub uplinks: Vec<String>,
    /// Flow events, history, metrics (`observe`).
    pub observe: crate::observe::ObserveConfig,
    /// Every policy audited: nothing is enforced, what policies would drop is reported.
    pub audit_mode: bool,
    /// `--map-size`: sizes of the maps the agent creates.
    pub map_sizes: crate::map_sizes::MapSizes,
    /// `--dns-service`: the cluster DNS Service ("namespace/name") whose answers teach pods
    /// the addresses of their allowed domain names.
    pub dns_service: String,
    /// `--fqdn-max-per-pod`: learnt addresses per pod.
    pub fqdn_max_per_pod: u32,
}

pub struct Agent {
    cfg: AgentConfig,
    dp: Datapath,
    rec: Reconciler,
    /// Routes to the other nodes' pods and masquerade rules, synced by a task of their own.
    network: NetworkTask,
    uplinks: Uplinks,
    /// Flows and metrics (`observe`), and the ring buffer until the reader takes it.
    observe: std::sync::Arc<crate::observe::Hub>,
    flow_events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
}

impl Agent {
    /// Opens the datapath (adopting pinned maps and links), reads the endpoint records and the
    /// source, and adopts what is pinned. Nothing is written before the first `reconcile`.
    /// Starts the node network task on the current tokio runtime.
    pub fn start(cfg: AgentConfig, source: Box<dyn Source>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut dp = Datapath::open_sized(&cfg.object, &cfg.bpffs, &cfg.map_sizes)
            .with_context(|| format!("opening datapath from {}", cfg.object.display()))?;
        let pinned = crate::datapath_ops::read_pinned(&dp).context("reading pinned maps")?;
        let capacity = crate::datapath_ops::capacity(&dp.maps).context("reading map sizes")?;
        let applier = Applier::adopt(pinned, capacity);
        tracing::info!(
            "adopted pinned state: {} endpoints, {} links; map capacity {capacity:?}",
            applier.ifindexes().len(),
            dp.pinned_ifindexes().len()
        );
        let ep_ids = EpIds::open(&cfg.state_dir, applier.max_ep_id() + 1)?;
        let compiler = Compiler::load(&cfg.state_dir)
            .audit_everything(cfg.audit_mode)
            .for_capacity(applier.capacity().policy);
        let flow_events = if cfg.observe.events {
            dp.take_flow_events()
        } else {
            None
        };
        let observe = crate::observe::Hub::new(&cfg.observe);
        let mut flags = 0;
        if cfg.debug_log {
            flags |= CFG_DEBUG_LOG;
        }
        if !cfg.observe.events {
            flags |= CFG_NO_FLOW_EVENTS;
        }
        let mut rec = Reconciler::new(
            source,
            applier,
            ep_ids,
            compiler,
            Config { flags, _pad: 0 },
            cfg.state_dir.clone(),
            cfg.node.clone(),
        )
        .with_names(cfg.dns_service.clone(), cfg.fqdn_max_per_pod);
        rec.adopt(read_all(&cfg.state_dir)?, dp.pinned_ifindexes())?;
        let network = NetworkTask::spawn(cfg.network.clone(), cfg.node.clone());
        let uplinks = Uplinks::new(cfg.uplinks.clone());
        Ok(Agent {
            cfg,
            dp,
            rec,
            network,
            uplinks,
            observe,
            flow_events,
        })
    }

    /// Woken when the source may have changed.
    pub fn source_changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.rec.source().changes()
    }

    /// Reads the source; the next `reconcile` applies what changed.
    pub fn rescan(&mut self) {
        self.rec.rescan();
    }

    /// Applies the current source and endpoints to the datapath if anything changed (or the
    /// last attempt failed), and hands the Nodes to the node network task.
    pub fn reconcile(&mut self) {
        self.network.update(&self.rec.snapshot().nodes);
        self.uplinks
            .refresh(&mut self.dp, self.rec.snapshot(), &self.cfg.node);
        if let Some(latency) = self.rec.reconcile(&mut self.dp) {
            self.observe.metrics.observe_programmed(latency);
        }
        self.publish_observe();
    }

    /// What `observe` needs after an apply: the names of this state, and the agent's metrics.
    fn publish_observe(&self) {
        use crate::observe::{LocalEndpoint, Names, NamesInput, metrics::AgentState};
        let locals = self.rec.locals();
        let endpoints = locals
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
        let compiled = self.rec.compiled();
        if let Some(c) = compiled {
            let host = self
                .rec
                .host_addrs()
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
                snapshot: self.rec.snapshot(),
                endpoints,
                registry: self.rec.compiler().registry(),
                prepared: self.rec.compiler().prepared().cloned().collect(),
                cluster: c.cluster.clone(),
                host,
            }));
        }
        let known = locals
            .values()
            .filter(|l| compiled.is_some_and(|c| c.knows(&l.record)))
            .count();
        let u = self.rec.applier().usage();
        let status_problems = self.status_problems().len();
        self.observe.metrics.set_agent_state(&AgentState {
            endpoints_enforced: known,
            endpoints_pod_unknown: locals.len() - known,
            map_entries: palisade_common::maps::PINNED_DATA
                .into_iter()
                .filter_map(|map| Some((map, u.entries(map)?)))
                .collect(),
            synced: self.rec.last_error().is_none(),
            source_generation: self.rec.source().generation(),
            applied_generation: self.rec.applied_generation(),
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

    /// Checks that the bpffs, the pins and the links are still in place, restoring what is
    /// lost (see `datapath::integrity`). Cheap; run every second.
    pub fn check_datapath(&mut self) {
        self.dp.check_integrity();
        if !self.rec.orphans().is_empty() {
            // Recovery may have become possible (the Pod or the allocation appeared).
            self.reconcile();
        }
    }

    /// Periodic resync of routes and masquerade, even when the Nodes did not change (repairs
    /// a route someone deleted).
    pub fn resync_network(&mut self) {
        self.network.resync();
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
        if let Some((other, ip)) = self.rec.locals().iter().find_map(|(k, l)| {
            let ip = l.record.addrs().into_iter().find(|a| addrs.contains(a))?;
            (*k != key).then_some((k, ip))
        }) {
            return Response::err(format!(
                "refused add of endpoint {key}: address {ip} is endpoint {other}'s"
            ));
        }
        let ifindex = record.host_ifindex;
        if let Err(e) = self.rec.add_local(record) {
            return Response::err(format!("{e:#}"));
        }
        // Program first (the endpoint entry and its policy), then attach: the first packet
        // through the hook already meets the pod's policy.
        self.reconcile();
        if let Some(e) = self.rec.endpoint_failure(&key) {
            return Response::err(format!("programming endpoint {key}: {e}"));
        }
        if let Some(e) = self.rec.last_error() {
            return Response::err(format!("programming endpoint {key}: {e}"));
        }
        if let Err(e) = self.dp.attach(ifindex) {
            return Response::err(format!(
                "attaching to endpoint {key}: {:#}",
                anyhow::Error::from(e)
            ));
        }
        Response::ok(self.rec.applied_generation())
    }

    /// CNI DEL: forgets the endpoint once its host veth is gone. While the veth exists the
    /// endpoint stays enforced and the request is refused: a `del` must never leave a live
    /// pod attached without its programs (the plugin deletes the veth first).
    fn del_endpoint(&mut self, container_id: &str, ifname: &str) -> Response {
        let key = palisade_node_api::endpoint::key(container_id, ifname);
        if let Some(l) = self.rec.locals().get(&key)
            && crate::datapath::ifname_of(l.record.host_ifindex).as_deref()
                == Some(l.record.host_veth.as_str())
        {
            return Response::err(format!(
                "refused del of endpoint {key}: its host veth {} (ifindex {}) still exists; \
                 it stays enforced until the veth is deleted",
                l.record.host_veth, l.record.host_ifindex
            ));
        }
        if let Some(record) = self.rec.remove_local(&key) {
            self.dp.detach(record.host_ifindex);
            self.reconcile();
        }
        match self.rec.last_error() {
            Some(e) => Response::err(e),
            None => Response::ok(self.rec.applied_generation()),
        }
    }

    /// Attaches programs to every recorded endpoint and every orphan (startup, after
    /// adoption).
    pub fn attach_all(&mut self) {
        let ifs: Vec<(String, u32)> = self
            .rec
            .locals()
            .iter()
            .map(|(k, l)| (k.clone(), l.record.host_ifindex))
            .chain(self.rec.orphans().values().map(|o| {
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
        self.dp.merge_previous_learnt();
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
                self.rec.sync_source();
                self.reconcile();
                match self.rec.last_error() {
                    Some(e) => Response::err(e),
                    None => Response::ok(self.rec.applied_generation()),
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
            Request::Policy { pod } => match self.rec.compiled() {
                Some(c) => match c.describe(&pod, self.rec.compiler()) {
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
                &self.rec.compiler().enforced(),
                &self.rec.compiler().enforced_cluster_policies(),
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
            .rec
            .locals()
            .iter()
            .map(|(k, l)| (k.clone(), &l.record))
            .collect();
        crate::insight::Facts::new(self.rec.snapshot(), &locals)
    }

    /// Problems of the source, the compile, the apply, the endpoint records, the node network,
    /// the datapath and the agent's own settings.
    fn status_problems(&self) -> Vec<Problem> {
        let mut problems = self.rec.problems();
        problems.extend(self.network.problems());
        problems.extend(self.dp.at_start().iter().cloned());
        problems.extend(self.dp.faults().iter().cloned());
        problems.extend(self.dp.restorations().cloned());
        problems.extend(self.fqdn_limits());
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

    /// Egress by domain name at its limits (docs/fqdn.md "Limits"): the pods holding as many
    /// learnt addresses as they may, and the node's table when full. Both fail closed for
    /// new names only.
    fn fqdn_limits(&self) -> Vec<Problem> {
        let Some(fill) = crate::datapath::fqdn_sweep::fill(self.dp.maps_dir()) else {
            return Vec::new();
        };
        let max = u64::from(self.cfg.fqdn_max_per_pod);
        let mut out: Vec<Problem> = self
            .rec
            .locals()
            .values()
            .filter(|l| fill.per_endpoint.get(&l.ep_id).is_some_and(|n| *n >= max))
            .map(|l| Problem {
                object: match l.record.pod() {
                    Some((ns, name)) => format!("Pod {ns}/{name}"),
                    None => format!("endpoint {}", l.record.key()),
                },
                field: "egress domainNames".into(),
                message: format!(
                    "holds {max} addresses learnt from DNS answers, its limit \
                     (--fqdn-max-per-pod): addresses of new names are refused until entries \
                     expire; names already learnt keep working"
                ),
            })
            .collect();
        if fill.entries >= fill.capacity {
            out.push(Problem {
                object: format!("node {}", self.cfg.node),
                field: palisade_common::maps::FQDN_LEARNT.into(),
                message: format!(
                    "full ({} learnt addresses): addresses of new names are refused for every \
                     pod until entries expire; names already learnt keep working",
                    fill.capacity
                ),
            });
        }
        out
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
            healthy: self.rec.last_error().is_none()
                && self.dp.faults().is_empty()
                && self.rec.orphans().is_empty(),
            node: self.cfg.node.clone(),
            source_generation: self.rec.source().generation(),
            applied_generation: self.rec.applied_generation(),
            endpoints: self.rec.locals().len(),
            policies: self.rec.snapshot().policies.len(),
            problems,
            counters,
            last_error: self.rec.last_error().map(str::to_string),
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
            conntrack: {
                let [assured_promoted, assured_refused, assured_reaped] = self.dp.assured_counts();
                crate::status::ConntrackCounts {
                    assured_promoted,
                    assured_refused,
                    assured_reaped,
                }
            },
        }
    }

    fn endpoint_rows(&self) -> Vec<EndpointRow> {
        let applier = self.rec.applier();
        let compiled = self.rec.compiled();
        self.rec
            .locals()
            .values()
            .map(|l| {
                let info = applier
                    .endpoint_info(l.record.host_ifindex)
                    .copied()
                    .unwrap_or_default();
                let pod = l
                    .record
                    .pod()
                    .map(|(n, p)| format!("{n}/{p}"))
                    .unwrap_or_else(|| l.record.container_id.clone());
                EndpointRow {
                    pod_unknown: !compiled.is_some_and(|c| c.knows(&l.record)),
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
