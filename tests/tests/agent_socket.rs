//! Privileged test: the agent's socket against a local user and against bad requests (issue 9
//! §4), with the real agent, plugin and datapath in a node namespace.
//!
//! Threat model: a local unprivileged user (`nobody`) who can connect to the socket (an
//! operator widened its mode, or mounted it into a container), and any client that sends a
//! wrong or hostile request. They try to add an endpoint on an interface that is not a pod's
//! (pointing one at the uplink cut the node off), to delete a live pod's endpoint (which
//! unfiltered it), and to hold the agent's connection slots with requests that never end.
//! What must hold: the socket is 0600 by default; only root adds or deletes (peer
//! credentials), others may read status; an add must name the plugin's host veth of that
//! attachment and equal the record the plugin wrote; a del of a pod whose veth still exists is
//! refused and the pod stays enforced; a request is bounded in size and time.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use palisade_node_api::endpoint::EndpointRecord;
use palisade_node_api::socket::{Request, Response, call};
use palisade_tests::lab::{Agent, AgentBins};
use palisade_tests::netns::{Netns, Node, wait_for};
use palisade_tests::unprivileged::{
    SOCKET_HOLDER, SOCKET_PROBE, python_as_nobody, spawn_python_as_nobody,
};
use serde_json::json;

#[path = "common/cni.rs"]
mod harness;
use harness::*;

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

/// The endpoint keys `palisadectl endpoints` lists (its POD column: pods unknown to the empty
/// source show their container ID).
fn listed(agent: &Agent) -> Result<Vec<String>> {
    Ok(agent
        .endpoints()?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Sends `line` as `nobody`; returns the agent's answer.
fn as_nobody(sock: &Path, line: &serde_json::Value) -> Result<Response> {
    let out = python_as_nobody(
        SOCKET_PROBE,
        &[sock.to_str().unwrap_or_default(), &line.to_string()],
    )?;
    ensure!(out["connect"] == "ok", "nobody could not connect: {out}");
    Ok(serde_json::from_value(out["answer"].clone())?)
}

/// Step 2b of the test below: `nobody` holds every connection it may (see there).
fn holders_hold_nothing_root_needs(
    node: &Node,
    sock: &Path,
    cfg: &[u8],
    bound: Duration,
) -> Result<()> {
    use std::io::BufRead;
    let follow = json!({ "op": "flows", "query": { "follow": true } }).to_string();
    let mut holder = spawn_python_as_nobody(
        SOCKET_HOLDER,
        &[sock.to_str().unwrap_or_default(), "80", &follow, "8"],
    )?;
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut line)?;
    let held: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("holder said {line:?}"))?;
    eprintln!("nobody's 80 follow streams: {held}");
    let checked = (|| -> Result<()> {
        ensure!(
            held["held"] == 8,
            "nobody holds more than the follower limit: {held}"
        );
        let answers = held["answers"].as_object().context("answers")?;
        let limit = answers
            .get("the agent already serves 8 flows --follow streams (its limit)")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let busy = answers.get("busy").and_then(|v| v.as_u64()).unwrap_or(0);
        ensure!(limit >= 1 && limit + busy == 72, "{held}");
        // Root's status and a pod's whole CNI ADD (which asks the agent) while nobody holds.
        ensure!(call(sock, &Request::Status, Duration::from_secs(10))?.ok);
        let pod = Netns::new("c")?;
        ok_json(&run_bounded(
            &inv(node, "ADD", "sock3", Some(&pod.path)),
            cfg,
            bound,
        )?)?;
        ok_empty(&run_bounded(
            &inv(node, "DEL", "sock3", Some(&pod.path)),
            cfg,
            bound,
        )?)?;
        Ok(())
    })();
    drop(holder.stdin.take());
    holder.wait()?;
    checked
}

#[test]
fn privileged_the_agent_socket_lets_only_root_change_endpoints_and_bounds_requests() -> Result<()> {
    if !setup("privileged_the_agent_socket_lets_only_root_change_endpoints_and_bounds_requests") {
        return Ok(());
    }
    let bins = AgentBins::in_dir(&palisade_tests::bin_dir(), palisade_tests::bpf_object());
    if let Some(why) = bins.unusable_reason() {
        anyhow::bail!("agent unusable: {why}");
    }
    let node = Node::new()?;
    let node_dir = tempfile::Builder::new().prefix("pltc-agent").tempdir()?;
    let manifests = node_dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    // The runtime's CNI configs: one palisade entry that names another state directory.
    let cni_conf = node_dir.path().join("net.d");
    std::fs::create_dir_all(&cni_conf)?;
    std::fs::write(
        cni_conf.join("10-palisade.conflist"),
        json!({"cniVersion": "1.1.0", "name": "p", "plugins": [{
            "type": "palisade", "stateDir": "/srv/elsewhere",
            "agentSocket": node_dir.path().join("agent.sock"),
            "podCIDRs": [V4_CIDR]}]})
        .to_string(),
    )?;
    let mut agent = Agent::start(
        &bins,
        &node.ns.name,
        "n1",
        node_dir.path(),
        &manifests,
        node.state_dir(),
        &["--cni-conf-dir".into(), cni_conf.display().to_string()],
    )?;
    let status = agent.status()?;
    ensure!(
        status.contains("plugins[0].stateDir") && status.contains("/srv/elsewhere"),
        "the mismatched conflist is not reported: {status}"
    );
    let sock = node_dir.path().join("agent.sock");
    let pod = Netns::new("c")?;
    let cfg = conf(&node, "1.1.0", json!({ "agentSocket": sock }));
    let bound = Duration::from_secs(30);
    ok_json(&run_bounded(
        &inv(&node, "ADD", "sock1", Some(&pod.path)),
        &cfg,
        bound,
    )?)?;
    ensure!(listed(&agent)? == ["default/web"], "{}", agent.endpoints()?);
    let record = palisade_node_api::endpoint::read(node.state_dir(), "sock1", "eth0")?
        .context("record of sock1")?;

    // 1. Root only by default.
    ensure!(mode(&sock)? == 0o600, "agent socket is {:o}", mode(&sock)?);

    // 2. Someone widened it: nobody connects, may read, may not change anything.
    std::fs::set_permissions(node_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let status = as_nobody(&sock, &json!({ "op": "status" }))?;
    ensure!(status.ok && status.status.is_some(), "{status:?}");
    let mut on_lo = record.clone();
    on_lo.host_ifindex = 1;
    on_lo.host_veth = "lo".into();
    for req in [
        json!({ "op": "add", "endpoint": on_lo }),
        json!({ "op": "add", "endpoint": record }),
        json!({ "op": "del", "container_id": "sock1", "ifname": "eth0" }),
    ] {
        let r = as_nobody(&sock, &req)?;
        let e = r.error.clone().unwrap_or_default();
        ensure!(
            !r.ok && e.contains("uid 65534"),
            "nobody's {req} was not refused: {r:?}"
        );
    }
    ensure!(listed(&agent)? == ["default/web"], "{}", agent.endpoints()?);

    // 2b. Nobody opens 80 `flows --follow` streams (which last): 8 are followed (the limit),
    //     the others are answered at once (refused: the follower limit, or busy past the 48
    //     slots of users other than root); root's requests and a CNI ADD still go through.
    //     (0.1 let them hold all 64 slots: every ADD of the node waited forever.)
    holders_hold_nothing_root_needs(&node, &sock, &cfg, bound)?;

    // 3. Root's requests are checked too: an add must match the plugin's record and name the
    //    plugin's veth of that attachment; a del of a live veth keeps the pod enforced.
    let t = Duration::from_secs(10);
    let refused = |req: &Request, needle: &str| -> Result<()> {
        let r = call(&sock, req, t)?;
        let e = r.error.clone().unwrap_or_default();
        ensure!(
            !r.ok && e.contains(needle),
            "{} not refused with {needle:?}: {r:?}",
            req.op()
        );
        Ok(())
    };
    refused(
        &Request::Add {
            endpoint: EndpointRecord {
                ips: vec!["10.244.1.200/24".into()],
                ..record.clone()
            },
        },
        "does not match the endpoint record the plugin wrote",
    )?;
    // A record of its own on disk (root can write one), pointing at lo.
    let evil = EndpointRecord {
        container_id: "evil".into(),
        host_veth: palisade_node_api::host_veth_name("evil", "eth0"),
        host_ifindex: 1,
        ips: vec!["10.244.1.201/24".into()],
        ..record.clone()
    };
    evil.write(node.state_dir())?;
    refused(
        &Request::Add {
            endpoint: evil.clone(),
        },
        "ifindex 1 is \"lo\", not the attachment's host veth",
    )?;
    palisade_node_api::endpoint::remove(node.state_dir(), "evil", "eth0")?;
    refused(
        &Request::Del {
            container_id: "sock1".into(),
            ifname: "eth0".into(),
        },
        "still exists",
    )?;
    ensure!(listed(&agent)? == ["default/web"], "{}", agent.endpoints()?);
    // Another pod's record (written by root) taking sock1's address: its own veth passes the
    // kernel checks, the address is refused.
    let pod2 = Netns::new("c")?;
    ok_json(&run_bounded(
        &inv(&node, "ADD", "sock2", Some(&pod2.path)),
        &cfg,
        bound,
    )?)?;
    let record2 = palisade_node_api::endpoint::read(node.state_dir(), "sock2", "eth0")?
        .context("record of sock2")?;
    let thief = EndpointRecord {
        ips: record.ips.clone(),
        ..record2.clone()
    };
    thief.write(node.state_dir())?;
    refused(
        &Request::Add { endpoint: thief },
        &format!("is endpoint {}'s", record.key()),
    )?;
    record2.write(node.state_dir())?;
    ok_empty(&run_bounded(
        &inv(&node, "DEL", "sock2", Some(&pod2.path)),
        &cfg,
        bound,
    )?)?;
    wait_for("the agent to drop sock2", Duration::from_secs(10), || {
        Ok((listed(&agent)? == ["default/web"]).then_some(()))
    })?;

    // 4. A client that never finishes its line is answered and dropped within the bound,
    //    and does not hold up others meanwhile.
    let mut slow = UnixStream::connect(&sock)?;
    slow.write_all(b"{\"op\":")?;
    ensure!(call(&sock, &Request::Status, t)?.ok);
    slow.set_read_timeout(Some(Duration::from_secs(20)))?;
    let started = Instant::now();
    let mut answer = String::new();
    slow.read_to_string(&mut answer)
        .context("the agent kept a silent client past its bound")?;
    eprintln!(
        "silent client answered after {:?}: {answer}",
        started.elapsed()
    );
    ensure!(answer.contains("no complete request line"), "{answer:?}");
    let mut big = UnixStream::connect(&sock)?;
    big.set_read_timeout(Some(Duration::from_secs(20)))?;
    // The agent stops reading at its limit: the write may fail once it has answered.
    if let Err(e) = big.write_all(&vec![b'x'; 100 * 1024]) {
        eprintln!("writing the oversized request: {e}");
    }
    let mut answer = String::new();
    big.read_to_string(&mut answer)?;
    ensure!(answer.contains("longer than"), "{answer:?}");

    // 5. The plugin's DEL (veth first, then the agent) removes the endpoint.
    ok_empty(&run_bounded(
        &inv(&node, "DEL", "sock1", Some(&pod.path)),
        &cfg,
        bound,
    )?)?;
    wait_for("the agent to drop sock1", Duration::from_secs(10), || {
        Ok(listed(&agent)?.is_empty().then_some(()))
    })?;
    agent.stop()?;
    assert_clean(&node)
}
