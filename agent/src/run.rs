//! The agent's event loop: one task owns the `Agent`; the socket server and the source watcher
//! send it work.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::api::server::{self, Job};

/// Interval of the datapath integrity check (`datapath::integrity`): a lost pin or bpffs is
/// restored, and a link detached behind the agent's back attached again, within this.
const DATAPATH_CHECK: Duration = Duration::from_secs(1);

/// How the loop runs: where the agent listens and who may connect, how often it resyncs,
/// where the runtime's CNI configs are.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub socket: PathBuf,
    /// `--socket-group`: the socket is 0660 with this group (its members may read status);
    /// `None`: 0600, root only.
    pub socket_group: Option<nix::unistd::Gid>,
    /// Periodic resync (changes are also picked up at once).
    pub resync: Duration,
    /// `--cni-conf-dir`: the plugin's configs there are checked against the agent's flags
    /// (`cniconf`) on every status request.
    pub cni_conf_dir: PathBuf,
}

/// Runs the agent until SIGTERM/SIGINT. Programs and maps stay pinned and attached after it
/// returns: enforcement does not depend on this process.
pub async fn run(mut agent: Agent, cfg: RunConfig) -> Result<()> {
    // The first reconcile happens before the socket accepts anything: a CNI ADD is never
    // answered against a half-synced view.
    agent.reconcile();
    agent.attach_all();
    let listener = server::bind(&cfg.socket, cfg.socket_group)
        .with_context(|| format!("opening the agent socket {}", cfg.socket.display()))?;
    let socket = cfg.socket.clone();
    let agent_state_dir = agent.state_dir().to_path_buf();
    let cni_problems = || {
        crate::cniconf::check(
            &cfg.cni_conf_dir,
            &crate::cniconf::Expect {
                state_dir: agent_state_dir.as_path(),
                socket: &cfg.socket,
            },
        )
    };
    for p in cni_problems() {
        tracing::warn!(object = %p.object, field = %p.field, "{}", p.message);
    }
    let (tx, mut rx) = mpsc::channel::<Job>(64);
    let parts = agent.observe_parts();
    tokio::spawn(crate::datapath::ct_sweep::run(parts.maps_dir.clone()));
    tokio::spawn(crate::datapath::fqdn_sweep::run(parts.maps_dir.clone()));
    let hub = crate::observe::start(parts).await;
    tokio::spawn(server::serve(
        listener,
        tx,
        agent.state_dir().to_path_buf(),
        hub,
    ));
    let changes = agent.source_changes();
    let mut tick = tokio::time::interval(cfg.resync);
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
                    let mut resp = agent.handle(req);
                    if let Some(s) = resp.status.as_mut() {
                        s.problems.extend(cni_problems());
                    }
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
