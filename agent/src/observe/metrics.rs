//! Prometheus metrics on `GET /metrics` (`--metrics-address`, default `0.0.0.0:9963`;
//! `--metrics=false` turns the endpoint off). Written with `prometheus-client` (OpenMetrics
//! text), served by a minimal hyper HTTP/1 server. Every label has a bounded set of values:
//! directions, verdicts, reasons, map names, endpoint states, and policy names (bounded by
//! the policies that exist: series of a deleted policy are removed).
//!
//! Two kinds of values:
//! - kept by the agent as things happen: policy verdicts (from flows), the change ->
//!   enforcement histogram, CNI ADD waits, endpoints by state, entries of the maps the agent
//!   writes, source sync state, problems;
//! - read from the pinned maps at each scrape (off the agent's loop, on a blocking thread):
//!   packet verdict counters (`pal_stat_v1`), flow events emitted/lost/suppressed
//!   (`pal_evstat_v1`), the assured conntrack tier's promotions (`pal_ctst_v1`), entries of the maps the programs write, and every map's capacity.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap as BpfHash, Map, MapData, MapInfo, PerCpuArray};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use palisade_common::assured::{CTST_PROMOTED, CTST_REAPED, CTST_REFUSED};
use palisade_common::conntrack::{CtKey, CtValue, FragKey, FragValue};
use palisade_common::events::{
    EVSTAT_EMITTED, EVSTAT_LOST, EVSTAT_SUPPRESSED, EventLimit, SvcOrig,
};
use palisade_common::fqdn::{
    FQST_ANSWERS, FQST_FULL, FQST_LEARNT, FQST_NOT_ALLOWED, FQST_OTHER_SERVER, FQST_POD_FULL,
    FQST_SLOTS, FQST_UNREAD, LearntKey, LearntValue,
};
use palisade_common::maps;
use palisade_common::stats::{Counter as StatCounter, STATS_SLOTS};
use palisade_common::verdict::{REASON_SLOTS, Reason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::names::Names;
use palisade_node_api::flow::Flow;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    /// `namespace/name`.
    policy: String,
    direction: &'static str,
    /// `allow`, `deny` (isolates, no rule allowed), `audit` (would deny).
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    direction: &'static str,
    verdict: &'static str,
    reason: &'static str,
}

/// What a scrape read from the pinned maps.
#[derive(Debug, Default)]
struct Readings {
    /// (stats slot, packets, bytes).
    verdicts: Vec<(u32, u64, u64)>,
    /// `EVSTAT_*` sums.
    events: [u64; 3],
    /// `CTST_*` sums (the assured conntrack tier).
    assured: [u64; 3],
    /// `FQST_*` sums (egress by domain name).
    fqdn: [u64; FQST_SLOTS as usize],
    /// (map, entries, capacity, kernel memory in bytes).
    maps: Vec<(&'static str, Option<u64>, u64, Option<u64>)>,
}

#[derive(Debug, Default)]
struct DatapathCollector {
    readings: Mutex<Readings>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        for (name, help, bytes) in [
            (
                "palisade_verdicts",
                "Packets judged by the datapath, by direction, verdict and reason",
                false,
            ),
            (
                "palisade_verdict_bytes",
                "Bytes of the packets judged by the datapath, by direction, verdict and reason",
                true,
            ),
        ] {
            let mut m = enc.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (slot, packets, b) in &r.verdicts {
                let reason = Reason(slot % REASON_SLOTS);
                let labels = VerdictLabels {
                    direction: if slot / REASON_SLOTS == 0 {
                        "ingress"
                    } else {
                        "egress"
                    },
                    verdict: if reason.is_drop() {
                        "dropped"
                    } else {
                        "forwarded"
                    },
                    reason: reason.name(),
                };
                let v = if bytes { *b } else { *packets };
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        for (slot, name, help) in [
            (
                EVSTAT_EMITTED,
                "palisade_flow_events_emitted",
                "Flow events the datapath wrote to its ring buffer",
            ),
            (
                EVSTAT_LOST,
                "palisade_flow_events_lost",
                "Flow events lost because the ring buffer was full (the agent did not keep up)",
            ),
            (
                EVSTAT_SUPPRESSED,
                "palisade_flow_events_suppressed",
                "Drop events not emitted because of the per-flow rate limit (1 per second)",
            ),
        ] {
            let c = ConstCounter::new(r.events[slot as usize]);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (slot, name, help) in [
            (
                CTST_PROMOTED,
                "palisade_conntrack_assured_promoted",
                "Flows moved into the assured conntrack tier (replied flows, by the packet that refreshes them a second on)",
            ),
            (
                CTST_REFUSED,
                "palisade_conntrack_assured_refused",
                "Promotions refused, per attempt: the endpoint's budget or the assured tier was full (the flow stays evictable; asked again at its next refresh)",
            ),
            (
                CTST_REAPED,
                "palisade_conntrack_assured_reaped",
                "Expired assured entries the datapath deleted when it met them",
            ),
        ] {
            let c = ConstCounter::new(r.assured[slot as usize]);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        encode_fqdn(&r, &mut enc)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// Egress by domain name: what the datapath read and learnt from DNS answers, and why it
/// learnt nothing from the others (docs/fqdn.md "Seeing it").
fn encode_fqdn(r: &Readings, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for (slot, name, help) in [
        (
            FQST_ANSWERS,
            "palisade_fqdn_answers",
            "DNS answers from the cluster DNS service read for pods with domainNames rules",
        ),
        (
            FQST_LEARNT,
            "palisade_fqdn_learnt",
            "(pod, address) entries learnt or refreshed from DNS answers",
        ),
    ] {
        let c = ConstCounter::new(r.fqdn[slot as usize]);
        c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
    }
    let mut m = enc.encode_descriptor(
        "palisade_fqdn_refused",
        "DNS answers or addresses that taught nothing, by reason (not_allowed: the question \
         matches none of the pod's names; unread: malformed, truncated or an error; \
         other_server: not from the cluster DNS service; node_full / pod_full: the node's or \
         the pod's table of learnt addresses is full)",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (slot, reason) in [
        (FQST_NOT_ALLOWED, "not_allowed"),
        (FQST_UNREAD, "unread"),
        (FQST_OTHER_SERVER, "other_server"),
        (FQST_FULL, "node_full"),
        (FQST_POD_FULL, "pod_full"),
    ] {
        ConstCounter::new(r.fqdn[slot as usize])
            .encode(m.encode_family(&RefusedLabels { reason })?)?;
    }
    let entries = r
        .maps
        .iter()
        .find(|(name, ..)| *name == maps::FQDN_LEARNT)
        .and_then(|(_, entries, ..)| *entries)
        .unwrap_or(0);
    let g = ConstGauge::new(entries as i64);
    g.encode(enc.encode_descriptor(
        "palisade_fqdn_learnt_entries",
        "(pod, address) entries learnt from DNS answers now in the node's table",
        None,
        g.metric_type(),
    )?)
}

pub struct Metrics {
    registry: Registry,
    datapath: Arc<DatapathCollector>,
    policy_verdicts: Family<PolicyLabels, Counter>,
    programmed: Histogram,
    cni_add: Histogram,
    endpoints: Family<StateLabels, Gauge>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    map_memory: Family<MapLabels, Gauge>,
    source_synced: Gauge,
    source_generation: Gauge,
    applied_generation: Gauge,
    problems: Gauge,
    history: Gauge,
    malformed: Counter,
    /// Policies with series in `policy_verdicts` (to remove those of deleted policies).
    policy_series: Mutex<std::collections::HashSet<PolicyLabels>>,
    /// Why the endpoint is not serving, if it is not (reported in `palisadectl status`).
    pub serve_error: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let datapath = Arc::new(DatapathCollector::default());
        registry.register_collector(Box::new(datapath.clone()));
        let m = Metrics {
            datapath,
            policy_verdicts: Family::default(),
            // 1 ms .. ~16 s.
            programmed: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            cni_add: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            endpoints: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_memory: Family::default(),
            source_synced: Gauge::default(),
            source_generation: Gauge::default(),
            applied_generation: Gauge::default(),
            problems: Gauge::default(),
            history: Gauge::default(),
            malformed: Counter::default(),
            policy_series: Mutex::default(),
            serve_error: Mutex::default(),
            registry: Registry::default(),
        };
        let Metrics {
            policy_verdicts,
            programmed,
            cni_add,
            endpoints,
            map_entries,
            map_capacity,
            map_memory,
            source_synced,
            source_generation,
            applied_generation,
            problems,
            history,
            malformed,
            ..
        } = &m;
        let r = &mut registry;
        r.register(
            "palisade_policy_verdicts",
            "New flows decided per policy: allow (a rule of it allowed), deny (it isolates the \
             pod and no rule allowed), audit (an audited policy would have denied)",
            policy_verdicts.clone(),
        );
        r.register(
            "palisade_policy_programmed_seconds",
            "Time from the agent seeing a change of its source (policy, pod, namespace, \
             service) to its enforcement in the maps",
            programmed.clone(),
        );
        r.register(
            "palisade_cni_add_seconds",
            "Time a CNI ADD waited for its endpoint to be programmed",
            cni_add.clone(),
        );
        r.register(
            "palisade_endpoints",
            "Endpoints on this node by state: enforced (pod known), pod_unknown (isolated both \
             ways until its pod is in the source)",
            endpoints.clone(),
        );
        r.register(
            "palisade_map_entries",
            "Entries in each datapath map",
            map_entries.clone(),
        );
        r.register(
            "palisade_map_capacity",
            "Capacity (max entries) of each datapath map",
            map_capacity.clone(),
        );
        r.register_with_unit(
            "palisade_map_memory",
            "Kernel memory of each pinned datapath map (fdinfo memlock: preallocated LRU \
             tables at full size, other hashes their buckets and entries)",
            prometheus_client::registry::Unit::Bytes,
            map_memory.clone(),
        );
        r.register(
            "palisade_source_synced",
            "1 when the last apply of the source's content succeeded",
            source_synced.clone(),
        );
        r.register(
            "palisade_source_generation",
            "Generation of the source's latest content",
            source_generation.clone(),
        );
        r.register(
            "palisade_applied_generation",
            "Generation of the source's content enforced in the maps",
            applied_generation.clone(),
        );
        r.register(
            "palisade_problems",
            "Objects or settings the agent could not use (palisadectl status lists them)",
            problems.clone(),
        );
        r.register(
            "palisade_flow_history",
            "Flows held in the agent's history",
            history.clone(),
        );
        r.register(
            "palisade_flow_events_malformed",
            "Ring buffer records that were not flow events (ignored)",
            malformed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one flow against the policies it names.
    pub fn count_flow(&self, f: &Flow) {
        let action = match f.verdict.as_str() {
            "AUDIT" => "audit",
            "DROPPED" => "deny",
            _ => "allow",
        };
        let named = [
            ("ingress", &f.ingress_allowed_by),
            ("egress", &f.egress_allowed_by),
            ("ingress", &f.ingress_denied_by),
            ("egress", &f.egress_denied_by),
        ];
        for (direction, list) in named {
            for p in list {
                let labels = PolicyLabels {
                    policy: p.key(),
                    direction,
                    action,
                };
                self.policy_verdicts.get_or_create(&labels).inc();
                let mut seen = self.policy_series.lock().unwrap_or_else(|p| p.into_inner());
                if !seen.contains(&labels) {
                    seen.insert(labels);
                }
            }
        }
    }

    /// Removes the series of policies that no longer exist.
    pub fn prune_policies(&self, names: &Names) {
        let mut seen = self.policy_series.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|l| {
            let keep = names.has_policy(&l.policy);
            if !keep {
                self.policy_verdicts.remove(l);
            }
            keep
        });
    }

    pub fn observe_programmed(&self, d: std::time::Duration) {
        self.programmed.observe(d.as_secs_f64());
    }

    pub fn observe_cni_add(&self, d: std::time::Duration) {
        self.cni_add.observe(d.as_secs_f64());
    }

    /// The agent's view after an apply (or a failed one).
    pub fn set_agent_state(&self, s: &AgentState) {
        self.endpoints
            .get_or_create(&StateLabels { state: "enforced" })
            .set(s.endpoints_enforced as i64);
        self.endpoints
            .get_or_create(&StateLabels {
                state: "pod_unknown",
            })
            .set(s.endpoints_pod_unknown as i64);
        for (map, n) in &s.map_entries {
            self.map_entries
                .get_or_create(&MapLabels { map })
                .set(*n as i64);
        }
        self.source_synced.set(i64::from(s.synced));
        self.source_generation.set(s.source_generation as i64);
        self.applied_generation.set(s.applied_generation as i64);
        self.problems.set(s.problems as i64);
    }

    pub fn set_history(&self, n: usize) {
        self.history.set(n as i64);
    }

    pub fn count_malformed_event(&self) {
        self.malformed.inc();
    }

    fn set_readings(&self, r: Readings) {
        for (map, entries, capacity, memory) in &r.maps {
            if let Some(n) = entries {
                self.map_entries
                    .get_or_create(&MapLabels { map })
                    .set(*n as i64);
            }
            if let Some(b) = memory {
                self.map_memory
                    .get_or_create(&MapLabels { map })
                    .set(*b as i64);
            }
            self.map_capacity
                .get_or_create(&MapLabels { map })
                .set(*capacity as i64);
        }
        *self
            .datapath
            .readings
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// What the agent knows that the metrics show (`Metrics::set_agent_state`).
#[derive(Debug, Default)]
pub struct AgentState {
    pub endpoints_enforced: usize,
    pub endpoints_pod_unknown: usize,
    /// Entries of the maps the agent writes.
    pub map_entries: Vec<(&'static str, usize)>,
    pub synced: bool,
    pub source_generation: u64,
    pub applied_generation: u64,
    pub problems: usize,
}

fn open(dir: &Path, name: &str) -> Option<MapData> {
    MapData::from_pin(dir.join(name)).ok()
}

/// Entries of a hash map the programs write, counted key by key.
fn count_keys<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Option<u64> {
    let md = open(dir, name)?;
    let m: BpfHash<MapData, K, V> = BpfHash::try_from(Map::LruHashMap(md)).ok()?;
    Some(m.keys().filter(Result::is_ok).count() as u64)
}

/// Reads the pinned maps under `dir` (blocking: counting conntrack entries walks the table).
fn read_datapath(dir: &Path) -> Readings {
    let mut r = Readings::default();
    if let Some(md) = open(dir, maps::STATS)
        && let Ok(m) = PerCpuArray::<MapData, StatCounter>::try_from(Map::PerCpuArray(md))
    {
        for slot in 0..STATS_SLOTS {
            if let Ok(v) = m.get(&slot, 0) {
                let (p, b) = v
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                if p > 0 {
                    r.verdicts.push((slot, p, b));
                }
            }
        }
    }
    if let Some(md) = open(dir, maps::EVENT_STATS)
        && let Ok(m) = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(md))
    {
        for slot in [EVSTAT_EMITTED, EVSTAT_LOST, EVSTAT_SUPPRESSED] {
            if let Ok(v) = m.get(&slot, 0) {
                r.events[slot as usize] = v.iter().sum();
            }
        }
    }
    if let Some(md) = open(dir, maps::ASSURED_STATS)
        && let Ok(m) = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(md))
    {
        for slot in [CTST_PROMOTED, CTST_REFUSED, CTST_REAPED] {
            if let Ok(v) = m.get(&slot, 0) {
                r.assured[slot as usize] = v.iter().sum();
            }
        }
    }
    if let Some(md) = open(dir, maps::FQDN_STATS)
        && let Ok(m) = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(md))
    {
        for slot in 0..FQST_SLOTS {
            if let Ok(v) = m.get(&slot, 0) {
                r.fqdn[slot as usize] = v.iter().sum();
            }
        }
    }
    type Count = fn(&Path, &str) -> Option<u64>;
    let counted: [(&'static str, Count); 8] = [
        (maps::CONNTRACK, count_keys::<CtKey, CtValue>),
        (maps::ASSURED, count_keys::<CtKey, CtValue>),
        (maps::ASSURED_COUNT, count_keys::<u32, u64>),
        (maps::FRAGMENTS, count_keys::<FragKey, FragValue>),
        (maps::EVENT_LIMIT, count_keys::<CtKey, EventLimit>),
        (maps::SVC_FLOWS, count_keys::<CtKey, SvcOrig>),
        (maps::FQDN_LEARNT, count_keys::<LearntKey, LearntValue>),
        (maps::FQDN_COUNTS, count_keys::<u32, u64>),
    ];
    for name in maps::PINNED_DATA {
        let Ok(info) = MapInfo::from_pin(dir.join(name)) else {
            continue;
        };
        let capacity = u64::from(info.max_entries());
        let entries = match counted.iter().find(|(n, _)| *n == name) {
            Some((_, count)) => count(dir, name),
            // Arrays always hold every slot; the agent reports the maps it writes.
            None if [
                maps::STATS,
                maps::EVENT_STATS,
                maps::ASSURED_STATS,
                maps::FQDN_STATS,
                maps::CONFIG,
                maps::EP_GEN,
            ]
            .contains(&name) =>
            {
                Some(capacity)
            }
            None => None,
        };
        let memory = crate::datapath::map_memory_bytes(&info);
        r.maps.push((name, entries, capacity, memory));
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<super::Hub>,
    dir: PathBuf,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found: try /metrics\n")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    match tokio::task::spawn_blocking(move || read_datapath(&dir)).await {
        Ok(r) => metrics.metrics.set_readings(r),
        Err(e) => tracing::warn!("reading the datapath maps for /metrics: {e}"),
    }
    let mut resp = Response::new(Full::new(Bytes::from(metrics.metrics.encode())));
    if let Ok(v) = "application/openmetrics-text; version=1.0.0; charset=utf-8".parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Serves `/metrics` on `listener` until the process ends. `maps_dir`: the pinned maps.
pub async fn serve(listener: tokio::net::TcpListener, hub: Arc<super::Hub>, maps_dir: PathBuf) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics: accept: {e}");
                continue;
            }
        };
        let (hub, dir) = (hub.clone(), maps_dir.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, hub.clone(), dir.clone()));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

/// Binds the metrics address: `Err` names the address (the agent keeps running without
/// metrics and reports it in `palisadectl status`).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics address {addr}: {e}"))
}
