//! The agent's event loop: one task owns the `Agent`; the socket server and the source watcher
//! send it work.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::agent::Agent;
use crate::api::{Request, Response};
use crate::observe::Hub;

type Job = (Request, oneshot::Sender<Response>);

/// Interval of the datapath integrity check (`datapath::integrity`): a lost pin or bpffs is
/// restored, and a link detached behind the agent's back attached again, within this.
const DATAPATH_CHECK: Duration = Duration::from_secs(1);

async fn serve(listener: UnixListener, tx: mpsc::Sender<Job>, hub: Arc<Hub>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        let tx = tx.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(rd).read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                // Streamed here, off the agent's loop.
                Ok(Request::Flows { query }) => {
                    return crate::observe::serve_flows(&hub, query, wr).await;
                }
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send((req, otx)).await.is_err() {
                        Response::err("agent is shutting down")
                    } else {
                        orx.await
                            .unwrap_or_else(|_| Response::err("agent dropped the request"))
                    }
                }
                Err(e) => Response::err(format!("bad request {:?}: {e}", line.trim())),
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
            out.push('\n');
            if let Err(e) = wr.write_all(out.as_bytes()).await {
                tracing::debug!("writing response: {e}");
            }
        });
    }
}

/// Runs the agent until SIGTERM/SIGINT. Programs and maps stay pinned and attached after it
/// returns: enforcement does not depend on this process.
pub async fn run(mut agent: Agent, socket: PathBuf, resync: Duration) -> Result<()> {
    // The first reconcile happens before the socket accepts anything: a CNI ADD is never
    // answered against a half-synced view.
    agent.reconcile();
    agent.attach_all();
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", socket.display()));
        }
    }
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    let (tx, mut rx) = mpsc::channel::<Job>(64);
    let hub = crate::observe::start(agent.observe_parts()).await;
    tokio::spawn(serve(listener, tx, hub));
    let changes = agent.source_changes();
    let mut tick = tokio::time::interval(resync);
    // Lost pins, a lost bpffs or a detached link are noticed within this interval.
    let mut check = tokio::time::interval(DATAPATH_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!("ready: socket {}", socket.display());
    loop {
        tokio::select! {
            Some((req, reply)) = rx.recv() => match agent.offload(&req) {
                Some(job) => {
                    tokio::task::spawn_blocking(move || {
                        if reply.send(job()).is_err() {
                            tracing::debug!("client went away before the response");
                        }
                    });
                }
                None => {
                    let resp = agent.handle(req);
                    if reply.send(resp).is_err() {
                        tracing::debug!("client went away before the response");
                    }
                }
            },
            _ = changes.notified() => {
                agent.rescan();
                agent.reconcile();
            }
            _ = tick.tick() => {
                agent.rescan();
                agent.reconcile();
                agent.resync_network();
            }
            _ = check.tick() => agent.check_datapath(),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping; programs stay attached and maps stay pinned");
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::debug!("removing socket: {e}");
    }
    Ok(())
}
