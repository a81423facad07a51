//! The CNI tests' harness: a node namespace, the real plugin binary invoked in it as a runtime
//! would, and checks of its answers and of what it leaves behind. Included with `#[path]` by
//! each `cni*.rs` test file (a subdirectory of tests/ is not a test target of its own); each
//! file uses a part of it.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use palisade_tests::netns::{Invocation, Netns, Node, sweep_stale};
use serde_json::{Value, json};

pub const V4_CIDR: &str = "10.244.1.0/24";
pub const V6_CIDR: &str = "fd00:10:244:1::/64";

pub fn plugin() -> PathBuf {
    palisade_tests::bin_dir().join("palisade")
}

pub fn setup(test: &str) -> bool {
    if !palisade_tests::require_privileges(test) {
        return false;
    }
    sweep_stale(palisade_tests::netns::CNI_TAG, Duration::from_secs(600));
    assert!(
        plugin().exists(),
        "plugin binary {} missing: build it first",
        plugin().display()
    );
    true
}

pub fn conf(node: &Node, version: &str, extra: Value) -> Vec<u8> {
    let mut c = json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "palisade",
        "podCIDRs": [V4_CIDR, V6_CIDR],
        "stateDir": node.state_dir(),
        "mtu": 1450,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).expect("config encodes")
}

pub fn inv<'a>(
    node: &'a Node,
    command: &'a str,
    cid: &'a str,
    netns: Option<&'a Path>,
) -> Invocation<'a> {
    Invocation {
        plugin: plugin(),
        node: &node.ns,
        command,
        container_id: cid,
        netns,
        ifname: "eth0",
        args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
        cni_path: None,
    }
}

pub fn ok_json(out: &Output) -> Result<Value> {
    ensure!(
        out.status.success(),
        "plugin failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("plugin stdout is not JSON")
}

pub fn ok_empty(out: &Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "plugin failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Asserts a CNI error: non-zero exit, the spec's JSON with `code`, and `msg` containing `needle`.
pub fn expect_error(out: &Output, code: u64, needle: &str) -> Result<Value> {
    ensure!(
        !out.status.success(),
        "plugin succeeded but should have failed"
    );
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "error output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    ensure!(v["code"] == code, "expected code {code}, got {v}");
    let msg = v["msg"].as_str().unwrap_or_default();
    ensure!(msg.contains(needle), "msg {msg:?} does not name {needle:?}");
    ensure!(v["cniVersion"].is_string(), "error lacks cniVersion: {v}");
    Ok(v)
}

pub fn ips_of(result: &Value) -> Result<Vec<IpAddr>> {
    result["ips"]
        .as_array()
        .context("result has no ips")?
        .iter()
        .map(|i| {
            let a = i["address"].as_str().context("ip without address")?;
            Ok(a.split('/').next().unwrap_or(a).parse()?)
        })
        .collect()
}

/// Nothing left: no host veth, no allocation, no endpoint record.
pub fn assert_clean(node: &Node) -> Result<()> {
    ensure!(
        node.host_veths()?.is_empty(),
        "host veths left: {:?}",
        node.host_veths()?
    );
    ensure!(
        node.allocations()?.is_empty(),
        "allocations left: {:?}",
        node.allocations()?
    );
    ensure!(
        node.records()?.is_empty(),
        "endpoint records left: {:?}",
        node.records()?
    );
    Ok(())
}

pub fn bad_input_case(test: &str, run: impl FnOnce(&Node, &Netns) -> Result<()>) -> Result<()> {
    if !setup(test) {
        return Ok(());
    }
    let node = Node::new()?;
    let pod = Netns::new("c")?;
    run(&node, &pod)?;
    ensure!(!pod.has_link("eth0"), "pod interface left behind");
    assert_clean(&node)
}

/// Runs an invocation, failing (and killing the plugin) if it has not exited within
/// `bound`: a plugin that hangs on hostile input is the failure being tested for.
pub fn run_bounded(i: &Invocation<'_>, config: &[u8], bound: Duration) -> Result<Output> {
    let mut child = i.spawn(config)?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output().context("collecting plugin output");
        }
        if started.elapsed() > bound {
            child.kill()?;
            let out = child.wait_with_output()?;
            bail!(
                "plugin {} still running after {bound:?} (killed): {}",
                i.command,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
