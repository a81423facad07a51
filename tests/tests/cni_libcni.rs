//! A real runtime-side client: libcni (the library containerd and CRI-O use) runs ADD, CHECK
//! and DEL on a conflist that chains palisade with the reference `portmap` plugin, and the pod
//! is reachable through the mapped host port from another namespace.
//!
//! libcni 1.1 (Debian's golang-github-appc-cni-dev) speaks spec up to 1.0.0, so the conflist
//! says cniVersion 1.0.0.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use palisade_tests::netns::{Netns, Node, run, sweep_stale, wait_for};
use serde_json::{Value, json};

const GOCODE: &str = "/usr/share/gocode";
const PORTMAP: &str = "/usr/lib/cni/portmap";

/// Builds tests/go/libcni-client offline against Debian's libcni sources.
fn build_client(out_dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/libcni-client/main.go");
    let bin = out_dir.join("libcni-client");
    let gopath = out_dir.join("gopath");
    std::fs::create_dir_all(&gopath)?;
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GOPATH", format!("{}:{GOCODE}", gopath.display()))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        // A cache shared between runs keeps the build at a second or two after the first.
        .env("GOCACHE", std::env::temp_dir().join("pltc-gocache"));
    run(&mut cmd).context("building the libcni client (golang-go, golang-github-appc-cni-dev)")?;
    Ok(bin)
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// A process that is killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill() {
            eprintln!("warning: killing server: {e}");
        }
        if let Err(e) = self.0.wait() {
            eprintln!("warning: reaping server: {e}");
        }
    }
}

#[test]
fn privileged_libcni_chains_palisade_with_portmap_and_the_pod_answers_on_the_host_port()
-> Result<()> {
    if !palisade_tests::require_privileges(
        "privileged_libcni_chains_palisade_with_portmap_and_the_pod_answers_on_the_host_port",
    ) {
        return Ok(());
    }
    sweep_stale(palisade_tests::netns::CNI_TAG, Duration::from_secs(600));
    let plugin = palisade_tests::bin_dir().join("palisade");
    ensure!(
        plugin.exists(),
        "plugin binary {} missing",
        plugin.display()
    );
    ensure!(
        Path::new(PORTMAP).exists(),
        "{PORTMAP} missing (containernetworking-plugins)"
    );
    let work = tempfile::Builder::new().prefix("pltc-libcni").tempdir()?;
    let client = build_client(work.path())?;

    // CNI_PATH: palisade and the reference plugins.
    let cni_bin = work.path().join("bin");
    std::fs::create_dir_all(&cni_bin)?;
    std::os::unix::fs::symlink(&plugin, cni_bin.join("palisade"))?;
    std::os::unix::fs::symlink(PORTMAP, cni_bin.join("portmap"))?;

    // portmap 1.1's CHECK looks for ip6tables rules whenever ip6tables exists, even for an
    // IPv4-only attachment, and so always fails (containernetworking/plugins#819, fixed
    // upstream later). Its iptables library skips IPv6 when `ip6tables` is not on PATH, so
    // the runtime's PATH here offers only the IPv4 tools.
    let tools = work.path().join("tools");
    std::fs::create_dir_all(&tools)?;
    for t in ["iptables", "iptables-save", "iptables-restore"] {
        let real = which(t).with_context(|| format!("{t} not found"))?;
        std::os::unix::fs::symlink(real, tools.join(t))?;
    }

    let node = Node::new()?;
    let pod = Netns::new("c")?;
    let outside = Netns::new("c")?;
    // The "outside" host is linked to the node: 198.51.100.2 -> node 198.51.100.1.
    node.ns.ip(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ])?;
    node.ns
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "uplink"])?;
    node.ns.ip(&["link", "set", "uplink", "up"])?;
    outside.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
    outside.ip(&["link", "set", "eth0", "up"])?;

    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "pltc-libcni",
        "plugins": [
            {
                "type": "palisade",
                // IPv4 only: see the PATH note below.
                "podCIDRs": ["10.244.7.0/24"],
                "stateDir": node.state_dir(),
            },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
        ],
    });
    let conf_path = work.path().join("10-palisade.conflist");
    std::fs::write(&conf_path, serde_json::to_vec_pretty(&conflist)?)?;
    let cache = work.path().join("cache");
    let mappings =
        json!([{ "hostPort": 30080, "containerPort": 8080, "protocol": "tcp" }]).to_string();
    let libcni = |verb: &str| -> Result<String> {
        let mut cmd = node.ns.command(&client);
        cmd.arg(verb)
            .arg(&conf_path)
            .arg("libcni0001")
            .arg(&pod.path)
            .arg("eth0")
            .arg(&cache)
            .arg(&mappings)
            .env("CNI_PATH", &cni_bin)
            .env("PATH", &tools);
        run(&mut cmd).with_context(|| format!("libcni {verb}"))
    };

    let result: Value = serde_json::from_str(&libcni("add")?).context("ADD result")?;
    let pod_v4 = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .context("no IPv4 address in result")?
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(pod_v4.starts_with("10.244.7."), "{result}");
    libcni("check")?;

    // A server in the pod; connect to node IP:hostPort from the outside namespace.
    let _server = Server(
        pod.command("socat")
            .args([
                "-T2",
                "TCP-LISTEN:8080,fork,reuseaddr",
                "SYSTEM:echo hello-from-pod",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning socat in the pod")?,
    );
    let reply = wait_for(
        "hello through hostPort 30080",
        Duration::from_secs(10),
        || {
            outside.run_in(|| {
                let addr: SocketAddr = "198.51.100.1:30080".parse()?;
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                Ok((!buf.is_empty()).then_some(buf))
            })
        },
    )?;
    ensure!(reply.trim() == "hello-from-pod", "got {reply:?}");

    libcni("del")?;
    libcni("del")?;
    ensure!(node.host_veths()?.is_empty(), "{:?}", node.host_veths()?);
    ensure!(node.allocations()?.is_empty(), "{:?}", node.allocations()?);
    ensure!(node.records()?.is_empty(), "{:?}", node.records()?);
    let nat = run(node.ns.command("iptables-save").args(["-t", "nat"]))?;
    ensure!(!nat.contains("30080"), "portmap rules survived DEL:\n{nat}");
    Ok(())
}
