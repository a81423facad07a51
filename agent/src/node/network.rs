//! The node's routes and masquerade rules, kept in line with the Nodes of the snapshot by a
//! task of their own.
//!
//! Route writes are netlink round trips and masquerade runs the `nft` binary: slow, blocking
//! work. It runs on tokio's blocking pool under [`NetworkTask`], never on the agent's loop,
//! which serves CNI requests and drives the Kubernetes watchers on a current-thread runtime.
//! The loop only hands the task the latest Nodes and reads its problems back.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;

use super::routing::{NetworkConfig, Plan, Router, masquerade_spec, plan};
use crate::status::Problem;

/// What the task is asked to sync.
#[derive(Clone, Default)]
struct Job {
    nodes: BTreeMap<String, Arc<Node>>,
    /// Bumped by each periodic resync (which syncs even when the Nodes did not change).
    resyncs: u64,
}

/// Handle of the task that owns the node's [`NodeNetwork`].
pub struct NetworkTask {
    jobs: watch::Sender<Job>,
    problems: watch::Receiver<Vec<Problem>>,
    /// Syncs finished (for tests waiting on the task).
    done: watch::Receiver<u64>,
}

impl NetworkTask {
    /// Starts the task on the current tokio runtime. It syncs once the first Nodes arrive.
    pub fn spawn(cfg: NetworkConfig, own: String) -> Self {
        let (jobs, mut rx) = watch::channel(Job::default());
        // The first sync happens even with no Nodes (it removes what a previous agent left).
        rx.mark_changed();
        let (ptx, problems) = watch::channel(Vec::new());
        let (dtx, done) = watch::channel(0);
        tokio::spawn(run(NodeNetwork::new(cfg, own), rx, ptx, dtx));
        NetworkTask {
            jobs,
            problems,
            done,
        }
    }

    /// Hands the task the snapshot's Nodes (nothing happens when they did not change).
    pub fn update(&self, nodes: &BTreeMap<String, Arc<Node>>) {
        self.jobs.send_if_modified(|j| {
            let same = j.nodes.len() == nodes.len()
                && j.nodes
                    .iter()
                    .zip(nodes)
                    .all(|(a, b)| a.0 == b.0 && Arc::ptr_eq(a.1, b.1));
            if !same {
                j.nodes = nodes.clone();
            }
            !same
        });
    }

    /// Asks for a sync even when the Nodes did not change (repairs a route someone deleted,
    /// retries what failed).
    pub fn resync(&self) {
        self.jobs.send_modify(|j| j.resyncs += 1);
    }

    /// Problems of the last sync.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.borrow().clone()
    }

    /// Number of syncs finished so far.
    pub fn syncs(&self) -> u64 {
        *self.done.borrow()
    }
}

async fn run(
    mut net: NodeNetwork,
    mut jobs: watch::Receiver<Job>,
    problems: watch::Sender<Vec<Problem>>,
    done: watch::Sender<u64>,
) {
    let mut resyncs = 0;
    while jobs.changed().await.is_ok() {
        let job = jobs.borrow_and_update().clone();
        let force = job.resyncs != resyncs;
        resyncs = job.resyncs;
        let synced = tokio::task::spawn_blocking(move || {
            net.sync(&job.nodes, force);
            net
        })
        .await;
        match synced {
            Ok(n) => net = n,
            Err(e) => {
                problems.send_replace(vec![Problem {
                    object: "node network".into(),
                    field: "routes".into(),
                    message: format!("the route and masquerade sync stopped: {e}"),
                }]);
                return;
            }
        }
        problems.send_replace(net.problems().to_vec());
        done.send_modify(|d| *d += 1);
    }
}

/// Keeps the node's routes and masquerade rules in line with the Nodes; owned by the task.
///
/// Work happens only when what the Nodes mean for this node changed (the route plan or the
/// masquerade rules: a Node's heartbeat changes the object, not the plan), or on `force` (the
/// periodic resync, which also retries what failed and repairs routes someone removed). So a
/// failing `nft` or netlink call is retried once per resync, never on a CNI ADD's path.
pub struct NodeNetwork {
    cfg: NetworkConfig,
    own: String,
    router: Router,
    /// The route plan and masquerade script of the last sync.
    last_inputs: Option<(Option<Plan>, String)>,
    /// The masquerade script last applied successfully.
    applied_masq: Option<String>,
    problems: Vec<Problem>,
}

impl NodeNetwork {
    pub fn new(cfg: NetworkConfig, own: String) -> Self {
        NodeNetwork {
            cfg,
            own,
            router: Router,
            last_inputs: None,
            applied_masq: None,
            problems: Vec::new(),
        }
    }

    /// Problems of the last sync (unroutable Nodes, routes or rules that could not be written).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Syncs routes and masquerade with `nodes` if their meaning for this node changed since
    /// the last sync, or on `force`. Errors become problems; nothing panics.
    pub fn sync(&mut self, nodes: &BTreeMap<String, Arc<Node>>, force: bool) {
        let route_plan = self.cfg.routes.then(|| plan(nodes, &self.own));
        let spec = masquerade_spec(&self.cfg, nodes, &self.own);
        let script = super::masquerade::ruleset(spec.as_ref());
        let inputs = (route_plan, script);
        if !force && self.last_inputs.as_ref() == Some(&inputs) {
            return;
        }
        let (route_plan, script) = &inputs;
        let mut problems = Vec::new();
        if let Some(p) = route_plan {
            problems.extend(p.problems.iter().cloned());
            match self.router.sync(p) {
                Ok(ch) => {
                    if !(ch.added.is_empty() && ch.replaced.is_empty() && ch.removed.is_empty()) {
                        tracing::info!(
                            "routes: added {:?}, replaced {:?}, removed {:?}",
                            ch.added.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            ch.replaced
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>(),
                            ch.removed
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                        );
                    }
                    problems.extend(ch.problems);
                }
                Err(e) => {
                    problems.push(Problem {
                        object: format!("node {}", self.own),
                        field: "routes".into(),
                        message: error_chain(&e),
                    });
                }
            }
        }
        if self.applied_masq.as_ref() != Some(script) {
            match super::masquerade::apply(spec.as_ref()) {
                Ok(()) => {
                    tracing::info!(
                        "masquerade: {}",
                        match &spec {
                            Some(s) => format!(
                                "pods {:?}, not to {:?}",
                                s.pod_cidrs
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>(),
                                s.no_masquerade
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                            ),
                            None => "off".into(),
                        }
                    );
                    self.applied_masq = Some(script.clone());
                }
                Err(e) => {
                    self.applied_masq = None;
                    problems.push(Problem {
                        object: format!("nftables table inet {}", super::masquerade::TABLE),
                        field: "masquerade".into(),
                        message: error_chain(&e),
                    });
                }
            }
        }
        if problems != self.problems {
            for p in &problems {
                tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
            }
        }
        self.problems = problems;
        self.last_inputs = Some(inputs);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}
