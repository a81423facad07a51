//! The agent crash and adoption sequence, for tests that show enforcement survives a
//! SIGKILL of the agent: what must hold without any agent, then what its successor must do
//! (adopt the pinned state without rewriting it). Needs `tcp_echo` declared beside it.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use palisade_tests::lab::Lab;

use super::tcp_echo::{Conn, can_connect};

/// Who talks to `target` (a pod's echo server) across the crash: `established` is a
/// connection opened before it, `allowed` and `denied` are pods whose new connections the
/// policy in force admits and refuses.
pub struct Crash<'a> {
    pub target: SocketAddr,
    pub established: &'a mut Conn,
    pub allowed: &'a str,
    pub denied: &'a str,
}

fn netns<'a>(lab: &'a Lab, pod: &str) -> Result<&'a str> {
    lab.pod_netns(pod).with_context(|| format!("no pod {pod}"))
}

/// Kills node 0's agent with SIGKILL; without any agent the established connection lives on,
/// a new allowed connection opens and a denied one stays denied. Then starts its successor,
/// waits until it is synced and checks that it adopted the pinned state without rewriting
/// it (the same endpoint and policy ids, "adopted pinned state: 9 endpoints" in its log),
/// that the established connection still echoes and the denied pod is still refused.
pub fn kill_and_adopt(lab: &mut Lab, c: Crash<'_>) -> Result<()> {
    let Crash {
        target,
        established,
        allowed,
        denied,
    } = c;
    let agent = lab.agent_mut(0).context("no agent")?;
    let before = agent.endpoints()?;

    agent.kill_hard()?;
    ensure!(
        established.roundtrip(),
        "established connection broken by the agent's death"
    );
    ensure!(
        can_connect(netns(lab, allowed)?, target),
        "{allowed} -> {target}: a new allowed connection was refused without the agent"
    );
    ensure!(
        !can_connect(netns(lab, denied)?, target),
        "{denied} -> {target}: a denied connection passed without the agent"
    );

    let agent = lab.agent_mut(0).context("no agent")?;
    agent.respawn()?;
    lab.wait_synced()?;
    let after = lab.agent_mut(0).context("no agent")?.endpoints()?;
    // Same endpoint ids and the same policy ids: the successor adopted the pinned state and
    // rewrote nothing.
    ensure!(
        before == after,
        "endpoints changed across the restart:\nbefore:\n{before}\nafter:\n{after}"
    );
    let log = std::fs::read_to_string(lab.agent_logs()[0])?;
    ensure!(
        log.contains("adopted pinned state: 9 endpoints"),
        "no adoption in the agent log:\n{log}"
    );
    ensure!(
        established.roundtrip(),
        "established connection broken by the restart"
    );
    ensure!(
        !can_connect(netns(lab, denied)?, target),
        "{denied} -> {target}: a denied connection passed after the restart"
    );
    Ok(())
}
