//! `palisade-agent --source kube` end to end (tier 2: root + namespaces): the agent runs in a
//! node namespace against the fake API server, which listens on 127.0.0.1 *of that namespace*
//! (started from a thread that entered it), pods are wired by the real CNI plugin reading the
//! pod CIDR file the agent wrote, and a NetworkPolicy created through the API is enforced, then
//! lifted when it is deleted.

#[path = "../../agent/tests/common/fake_apiserver.rs"]
mod fake_apiserver;

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fake_apiserver::FakeApiServer;
use palisade_tests::netns::{Invocation, Netns, Node, ping, ping_until, sweep_stale, wait_for};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const V4_CIDR: &str = "10.244.1.0/24";
const V6_CIDR: &str = "fd00:10:244:1::/64";
const TIMEOUT: Duration = Duration::from_secs(20);

/// The agent process and its private bpffs; killed and unmounted on drop.
struct AgentProc {
    child: Child,
    bpffs: PathBuf,
    log: PathBuf,
}

impl AgentProc {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("killing the agent: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("waiting for the agent: {e}");
        }
        if let Err(e) = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.bpffs.display());
        }
    }
}

fn start_agent(node: &Node, dir: &Path, kubeconfig: &Path, socket: &Path) -> Result<AgentProc> {
    let bpffs = dir.join("bpffs");
    std::fs::create_dir_all(&bpffs)?;
    nix::mount::mount(
        Some("bpf"),
        &bpffs,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs on {}", bpffs.display()))?;
    let log = dir.join("agent.log");
    let out = File::create(&log)?;
    let err = out.try_clone()?;
    let mut cmd = node
        .ns
        .command(palisade_tests::bin_dir().join("palisade-agent"));
    cmd.arg("--source")
        .arg("kube")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--bpffs")
        .arg(&bpffs)
        .arg("--bpf-object")
        .arg(palisade_tests::bpf_object())
        .arg("--state-dir")
        .arg(node.state_dir())
        .arg("--socket")
        .arg(socket)
        .arg("--node-name")
        .arg(NODE)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe. If the test dies without its guards, the agent dies
    // too.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawning palisade-agent")?;
    let mut agent = AgentProc { child, bpffs, log };
    let waited = wait_for("the agent's socket", TIMEOUT, || {
        if let Some(st) = agent.child.try_wait()? {
            bail!("agent exited ({st})");
        }
        Ok(UnixStream::connect(socket).ok().map(|_| ()))
    });
    if let Err(e) = waited {
        bail!("{e:#}\nagent log:\n{}", agent.log_tail());
    }
    Ok(agent)
}

fn status(socket: &Path) -> Result<Value> {
    let out = Command::new(palisade_tests::bin_dir().join("palisadectl"))
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()
        .context("running palisadectl status")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "palisadectl status: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits until the agent enforces the source's latest generation with `policies` policies.
fn wait_enforced(socket: &Path, policies: u64) -> Result<Value> {
    wait_for(&format!("{policies} policies enforced"), TIMEOUT, || {
        let s = status(socket)?;
        let done = s["policies"] == policies
            && s["source_generation"] == s["applied_generation"]
            && s["last_error"].is_null();
        Ok(done.then_some(s))
    })
}

fn pod_json(name: &str, app: &str, ips: &[IpAddr]) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {
            "phase": "Running",
            "podIP": ips.first().map(|i| i.to_string()),
            "podIPs": ips.iter().map(|i| json!({"ip": i.to_string()})).collect::<Vec<_>>(),
        }
    })
}

fn ips_of(result: &Value) -> Result<Vec<IpAddr>> {
    result["ips"]
        .as_array()
        .context("no ips in result")?
        .iter()
        .map(|i| {
            let a = i["address"].as_str().context("address")?;
            Ok(a.split('/').next().unwrap_or(a).parse()?)
        })
        .collect()
}

#[test]
fn privileged_policy_created_through_the_api_is_enforced_by_an_agent_with_the_kube_source()
-> Result<()> {
    let name =
        "privileged_policy_created_through_the_api_is_enforced_by_an_agent_with_the_kube_source";
    if !palisade_tests::require_privileges(name) {
        return Ok(());
    }
    sweep_stale(palisade_tests::netns::CNI_TAG, Duration::from_secs(600));
    let node = Node::new()?;
    let pods = [Netns::new("c")?, Netns::new("c")?];
    let dir = tempfile::Builder::new().prefix("pltk").tempdir()?;

    // The API server lives in the node's namespace, as the agent must reach it at 127.0.0.1.
    let server = node.ns.run_in(|| Ok(FakeApiServer::start()?))?;
    server.with(|c| {
        c.apply(
            fake_apiserver::NODES,
            &json!({"metadata": {"name": NODE},
                    "spec": {"podCIDR": V4_CIDR, "podCIDRs": [V4_CIDR, V6_CIDR]}}),
        );
        c.apply(
            fake_apiserver::NAMESPACES,
            &json!({"metadata": {"name": "default"}}),
        );
        c.apply(fake_apiserver::PODS, &pod_json("web", "web", &[]));
        c.apply(fake_apiserver::PODS, &pod_json("client", "client", &[]));
    });
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let socket = dir.path().join("agent.sock");
    let agent = start_agent(&node, dir.path(), &kubeconfig, &socket)?;

    // The pod CIDR file exists by the time the socket answers.
    let cidr_file = node.state_dir().join("podcidrs.json");
    let written: Value = serde_json::from_slice(&std::fs::read(&cidr_file)?)?;
    ensure!(
        written == json!({"podCIDRs": [V4_CIDR, V6_CIDR]}),
        "{written}"
    );

    // Pods wired by the plugin from that file, announced to the agent.
    let conf = serde_json::to_vec(&json!({
        "cniVersion": "1.1.0",
        "name": "k8s-pod-network",
        "type": "palisade",
        "podCIDRFile": cidr_file,
        "stateDir": node.state_dir(),
        "agentSocket": socket,
    }))?;
    let mut ips = Vec::new();
    for (pod, (cid, pname)) in pods
        .iter()
        .zip([("kcli0001", "client"), ("kweb0001", "web")])
    {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pname}");
        let inv = Invocation {
            plugin: palisade_tests::bin_dir().join("palisade"),
            node: &node.ns,
            command: "ADD",
            container_id: cid,
            netns: Some(&pod.path),
            ifname: "eth0",
            args: Some(&args),
            cni_path: None,
        };
        let out = inv.run(&conf)?;
        ensure!(
            out.status.success(),
            "ADD {pname}: {}\n{}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            agent.log_tail()
        );
        let got = ips_of(&serde_json::from_slice(&out.stdout)?)?;
        ensure!(
            got.iter().any(|ip| ip.to_string().starts_with("10.244.1.")),
            "{got:?}"
        );
        server.apply(fake_apiserver::PODS, &pod_json(pname, pname, &got));
        ips.push(got);
    }
    let (client, web) = (&pods[0], &ips[1]);
    let web_v4 = *web.iter().find(|i| i.is_ipv4()).context("web v4")?;
    wait_enforced(&socket, 0)?;
    ping_until(client, web_v4, Duration::from_secs(5))
        .with_context(|| format!("no policy yet\nagent log:\n{}", agent.log_tail()))?;

    // A policy created through the API: web accepts nothing.
    server.apply(
        fake_apiserver::NETWORK_POLICIES,
        &json!({"metadata": {"name": "web-deny", "namespace": "default"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "policyTypes": ["Ingress"]}}),
    );
    let st = wait_enforced(&socket, 1)?;
    if ping(client, web_v4, Duration::from_millis(500)).is_ok() {
        bail!(
            "client reached web under a deny-all ingress policy\nstatus: {st}\nagent log:\n{}",
            agent.log_tail()
        );
    }

    // Deleted through the API: traffic flows again.
    ensure!(server.delete(fake_apiserver::NETWORK_POLICIES, "default", "web-deny"));
    wait_enforced(&socket, 0)?;
    ping_until(client, web_v4, Duration::from_secs(5))
        .with_context(|| format!("policy deleted\nagent log:\n{}", agent.log_tail()))?;

    for (pod, cid) in pods.iter().zip(["kcli0001", "kweb0001"]) {
        let out = Invocation {
            plugin: palisade_tests::bin_dir().join("palisade"),
            node: &node.ns,
            command: "DEL",
            container_id: cid,
            netns: Some(&pod.path),
            ifname: "eth0",
            args: Some("IgnoreUnknown=1"),
            cni_path: None,
        }
        .run(&conf)?;
        ensure!(
            out.status.success(),
            "DEL {cid}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    drop(agent);
    drop(server);
    Ok(())
}
