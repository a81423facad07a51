//! Observability: flow events from the datapath turned into named flows, a bounded history,
//! streaming to `palisadectl flows`, and Prometheus metrics.
//!
//! - [`reader`]: drains the datapath's ring buffer (`pal_flow_v1`) without ever making it wait;
//! - [`names`]: numbers -> pods, Services, policies, rules, peers, ports, reasons;
//! - [`flow`] (the node contract's): the flow as served (Hubble's field names), and
//!   [`filter`]: what a client asked for;
//! - [`metrics`]: `/metrics` (prometheus-client, served with hyper).
//!
//! The [`Hub`] is shared by the agent (which publishes `Names` after every apply and records
//! its own metrics), the reader (which adds flows) and the socket server (which streams
//! them). History and streaming are bounded: the history keeps the last `history` flows, and
//! a client that reads too slowly is told how many flows it missed instead of holding memory.

pub mod filter;
pub mod metrics;
pub mod names;
pub mod reader;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

pub use filter::QueryExt;
pub use names::{LocalEndpoint, Names, NamesInput};
pub use palisade_node_api::flow::{self, FlowQuery, FlowRecord};

/// Settings of the observability features (`palisade-agent` flags).
#[derive(Clone, Debug)]
pub struct ObserveConfig {
    /// Flow events from the datapath (`--flow-events`); off: the datapath emits none.
    pub events: bool,
    /// Flows kept in memory for `palisadectl flows` (`--flow-history`).
    pub history: usize,
    /// Where `/metrics` listens (`--metrics-address`); `None`: no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            events: true,
            history: 4096,
            metrics_addr: None,
        }
    }
}

/// One flow of the history, numbered in arrival order.
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    /// Unix nanoseconds of the flow (for `--since`).
    pub unix_ns: Option<i128>,
    pub record: FlowRecord,
}

/// How many flows a live stream may fall behind before it is told it missed some.
const STREAM_BUFFER: usize = 1024;
/// Flows shown without `--last`, `--since` or `--follow` (as `hubble observe`).
pub const DEFAULT_LAST: usize = 20;

pub struct Hub {
    capacity: usize,
    history: Mutex<History>,
    tx: broadcast::Sender<Arc<Stored>>,
    names: Mutex<Arc<Names>>,
    pub metrics: metrics::Metrics,
}

#[derive(Default)]
struct History {
    flows: VecDeque<Arc<Stored>>,
    next_seq: u64,
}

impl Hub {
    pub fn new(cfg: &ObserveConfig) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(STREAM_BUFFER);
        Arc::new(Hub {
            capacity: cfg.history,
            history: Mutex::new(History::default()),
            tx,
            names: Mutex::new(Arc::new(Names::default())),
            metrics: metrics::Metrics::new(),
        })
    }

    /// Publishes what names are made of after an apply (and forgets the metric series of
    /// policies that are gone).
    pub fn set_names(&self, names: Names) {
        self.metrics.prune_policies(&names);
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(names);
    }

    pub fn names(&self) -> Arc<Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds named flows: to the history (dropping the oldest beyond its capacity), to every
    /// live stream, and to the per-policy metrics.
    pub fn push(&self, records: Vec<FlowRecord>) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for record in records {
            self.metrics.count_flow(&record.flow);
            let stored = Arc::new(Stored {
                seq: h.next_seq,
                unix_ns: names::parse_time(&record.time),
                record,
            });
            h.next_seq += 1;
            if self.capacity > 0 {
                if h.flows.len() == self.capacity {
                    h.flows.pop_front();
                }
                h.flows.push_back(stored.clone());
            }
            // No receiver is not an error: nobody follows.
            if self.tx.send(stored).is_err() {}
        }
        self.metrics.set_history(h.flows.len());
    }

    /// The flows of the history `q` asks for, oldest first, and a live stream from after
    /// them when it follows. Subscribing first and skipping what the history already gave
    /// loses nothing and repeats nothing.
    pub fn query(
        &self,
        q: &FlowQuery,
    ) -> (Vec<Arc<Stored>>, Option<broadcast::Receiver<Arc<Stored>>>) {
        let rx = q.follow.then(|| self.tx.subscribe());
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Stored>> = h
            .flows
            .iter()
            .filter(|s| q.matches(&s.record, s.unix_ns))
            .cloned()
            .collect();
        let last = match (q.last, q.follow, q.since_unix_ns) {
            (Some(n), _, _) => n,
            (None, true, None) => 0,
            (None, false, None) => DEFAULT_LAST,
            (None, _, Some(_)) => usize::MAX,
        };
        if out.len() > last {
            out.drain(..out.len() - last);
        }
        (out, rx)
    }

    /// Flows in the history.
    pub fn history_len(&self) -> usize {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flows
            .len()
    }
}

/// What `start` runs on (`Agent::observe_parts`).
pub struct Parts {
    pub hub: Arc<Hub>,
    pub ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    pub maps_dir: std::path::PathBuf,
    pub metrics_addr: Option<SocketAddr>,
}

/// Starts the ring-buffer reader and the metrics endpoint as tasks of the current runtime,
/// and returns the hub for the socket server. A metrics address that cannot be bound is
/// logged and reported in `palisadectl status`; the agent runs on without it.
pub async fn start(parts: Parts) -> Arc<Hub> {
    let Parts {
        hub,
        ring,
        maps_dir,
        metrics_addr,
    } = parts;
    if let Some(ring) = ring {
        tokio::spawn(reader::run(ring, hub.clone()));
    }
    if let Some(addr) = metrics_addr {
        match metrics::bind(addr).await {
            Ok(listener) => {
                tracing::info!("metrics: http://{addr}/metrics");
                tokio::spawn(metrics::serve(listener, hub.clone(), maps_dir));
            }
            Err(e) => {
                tracing::error!("{e}");
                *hub.metrics
                    .serve_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
    }
    hub
}

/// Answers a `flows` request on `wr`: the matching history, then, when it follows, new flows
/// until the client goes away. A follower that falls behind is told how many it missed.
pub async fn serve_flows<W>(hub: &Hub, q: FlowQuery, mut wr: W)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use crate::api::Response;
    use tokio::io::AsyncWriteExt;
    /// False when the client is gone, or took no line within the socket's request timeout (a
    /// client that stops reading must not hold its connection slot forever).
    async fn send<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, r: &Response) -> bool {
        let mut line = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
        line.push('\n');
        let timeout = crate::api::server::REQUEST_TIMEOUT;
        matches!(
            tokio::time::timeout(timeout, wr.write_all(line.as_bytes())).await,
            Ok(Ok(()))
        )
    }
    if let Err(e) = q.validate() {
        send(&mut wr, &Response::err(e)).await;
        return;
    }
    let (history, rx) = hub.query(&q);
    let mut next = history.last().map_or(0, |s| s.seq + 1);
    for s in history {
        let r = Response {
            ok: true,
            flow: Some(Box::new(s.record.clone())),
            ..Default::default()
        };
        if !send(&mut wr, &r).await {
            return;
        }
    }
    let Some(mut rx) = rx else {
        send(
            &mut wr,
            &Response {
                ok: true,
                ..Default::default()
            },
        )
        .await;
        return;
    };
    loop {
        match rx.recv().await {
            Ok(s) => {
                if s.seq < next || !q.matches(&s.record, s.unix_ns) {
                    continue;
                }
                next = s.seq + 1;
                let r = Response {
                    ok: true,
                    flow: Some(Box::new(s.record.clone())),
                    ..Default::default()
                };
                if !send(&mut wr, &r).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let r = Response {
                    ok: true,
                    lost_flows: Some(n),
                    ..Default::default()
                };
                if !send(&mut wr, &r).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::{Endpoint, Flow};

    fn record(i: usize, verdict: &str) -> FlowRecord {
        FlowRecord {
            flow: Flow {
                time: format!("2026-01-01T00:00:{:02}.000000000Z", i % 60),
                verdict: verdict.into(),
                source: Endpoint {
                    namespace: "x".into(),
                    pod_name: format!("p{i}"),
                    ..Default::default()
                },
                ..Default::default()
            },
            node_name: "n".into(),
            time: format!("2026-01-01T00:00:{:02}.000000000Z", i % 60),
        }
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let hub = Hub::new(&ObserveConfig {
            history: 5,
            ..Default::default()
        });
        hub.push((0..12).map(|i| record(i, "DROPPED")).collect());
        let (all, rx) = hub.query(&FlowQuery {
            last: Some(100),
            ..Default::default()
        });
        assert!(rx.is_none());
        let names: Vec<String> = all.iter().map(|s| s.record.flow.source.pod()).collect();
        assert_eq!(names, ["x/p7", "x/p8", "x/p9", "x/p10", "x/p11"]);
        let (two, _) = hub.query(&FlowQuery {
            last: Some(2),
            ..Default::default()
        });
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].record.flow.source.pod_name, "p11");
    }

    #[test]
    fn a_follower_gets_new_flows_once_and_only_matching_ones() {
        let hub = Hub::new(&ObserveConfig::default());
        hub.push(vec![record(0, "DROPPED")]);
        let q = FlowQuery {
            follow: true,
            last: Some(10),
            verdict: vec!["dropped".into()],
            ..Default::default()
        };
        let (hist, rx) = hub.query(&q);
        let mut rx = rx.expect("a live stream");
        assert_eq!(hist.len(), 1);
        hub.push(vec![record(1, "FORWARDED"), record(2, "DROPPED")]);
        let mut got = Vec::new();
        while let Ok(s) = rx.try_recv() {
            if s.seq >= hist.last().map_or(0, |h| h.seq + 1) && q.matches(&s.record, s.unix_ns) {
                got.push(s.record.flow.source.pod_name.clone());
            }
        }
        assert_eq!(got, ["p2"]);
    }
}
