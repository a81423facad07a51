//! Privileged test of requested addresses in the `palisade` CNI plugin (the CNI conventions'
//! `ips` capability, `runtimeConfig: {"ips": [...]}`, and `CNI_ARGS` `IP=`): the pod gets
//! exactly the requested addresses, ADD again is idempotent, and a request for an address
//! outside the pod CIDRs, reserved, or held by another container fails with an error naming
//! the address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use palisade_tests::netns::{Invocation, Netns, Node, ping_until, sweep_stale};
use serde_json::{Value, json};

fn plugin() -> PathBuf {
    palisade_tests::bin_dir().join("palisade")
}

fn conf(node: &Node, ips: &[&str]) -> Vec<u8> {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "k8s-pod-network",
        "type": "palisade",
        "podCIDRs": ["10.0.0.0/16", "fd00::/64"],
        "stateDir": node.state_dir(),
    });
    if !ips.is_empty() {
        c["runtimeConfig"] = json!({ "ips": ips });
    }
    serde_json::to_vec(&c).expect("config encodes")
}

fn inv<'a>(
    node: &'a Node,
    command: &'a str,
    cid: &'a str,
    netns: &'a Path,
    args: &'a str,
) -> Invocation<'a> {
    Invocation {
        plugin: plugin(),
        node: &node.ns,
        command,
        container_id: cid,
        netns: Some(netns),
        ifname: "eth0",
        args: Some(args),
        cni_path: None,
    }
}

fn ips_of(out: &Output) -> Result<Vec<String>> {
    ensure!(
        out.status.success(),
        "plugin failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("result is not JSON")?;
    v["ips"]
        .as_array()
        .context("result has no ips")?
        .iter()
        .map(|i| Ok(i["address"].as_str().context("no address")?.to_string()))
        .collect()
}

fn expect_error(out: &Output, code: u64, needles: &[&str]) -> Result<()> {
    ensure!(
        !out.status.success(),
        "plugin succeeded but should have failed"
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("error output is not JSON")?;
    ensure!(v["code"] == code, "expected code {code}, got {v}");
    let msg = v["msg"].as_str().unwrap_or_default();
    for n in needles {
        ensure!(msg.contains(n), "msg {msg:?} does not say {n:?}");
    }
    Ok(())
}

#[test]
fn privileged_cni_requested_ips_are_allocated_exactly_and_conflicts_are_named() -> Result<()> {
    if !palisade_tests::require_privileges(
        "privileged_cni_requested_ips_are_allocated_exactly_and_conflicts_are_named",
    ) {
        return Ok(());
    }
    sweep_stale(palisade_tests::netns::CNI_TAG, Duration::from_secs(600));
    let node = Node::new()?;
    let pod_a = Netns::new(palisade_tests::netns::CNI_TAG)?;
    let pod_b = Netns::new(palisade_tests::netns::CNI_TAG)?;
    let pod_c = Netns::new(palisade_tests::netns::CNI_TAG)?;
    let k8s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a";

    // runtimeConfig.ips: exactly these addresses, with the pod CIDRs' prefixes.
    let want = ["10.0.1.11/16", "fd00::1:11/64"];
    let add_a = inv(&node, "ADD", "ctr-a", &pod_a.path, k8s);
    let got = ips_of(&add_a.run(&conf(&node, &want))?)?;
    ensure!(got == want, "ADD gave {got:?}, asked for {want:?}");
    // Idempotent for the same container.
    let again = ips_of(&add_a.run(&conf(&node, &want))?)?;
    ensure!(again == want, "second ADD gave {again:?}");
    // The address works: the node reaches the pod by it.
    let a_v4: IpAddr = "10.0.1.11".parse()?;
    ping_until(&node.ns, a_v4, Duration::from_secs(5))?;

    // CNI_ARGS IP=: the same convention host-local reads.
    let args_b = format!("{k8s};IP=10.0.2.12,fd00::2:12");
    let add_b = inv(&node, "ADD", "ctr-b", &pod_b.path, &args_b);
    let got = ips_of(&add_b.run(&conf(&node, &[]))?)?;
    ensure!(
        got == ["10.0.2.12/16", "fd00::2:12/64"],
        "ADD with IP= gave {got:?}"
    );

    // Taken by another container: code 104, naming the address and the holder.
    let add_c = inv(&node, "ADD", "ctr-c", &pod_c.path, k8s);
    expect_error(
        &add_c.run(&conf(&node, &["10.0.1.11/16"]))?,
        104,
        &["10.0.1.11", "ctr-a"],
    )?;
    // Outside the pod CIDRs, or reserved: code 7, naming the address.
    expect_error(
        &add_c.run(&conf(&node, &["192.168.1.1/24"]))?,
        7,
        &["192.168.1.1", "outside"],
    )?;
    expect_error(
        &add_c.run(&conf(&node, &["10.0.0.1/16"]))?,
        7,
        &["10.0.0.1", "reserved"],
    )?;
    // A failed ADD leaves nothing of ctr-c behind.
    ensure!(
        !pod_c.has_link("eth0"),
        "ctr-c has an eth0 after failed ADDs"
    );
    let allocs = node.allocations()?;
    ensure!(allocs.len() == 4, "allocations: {allocs:?}");

    // After DEL of a, its address can be requested by c.
    inv(&node, "DEL", "ctr-a", &pod_a.path, k8s).run(&conf(&node, &want))?;
    let got = ips_of(&add_c.run(&conf(&node, &["10.0.1.11/16"]))?)?;
    ensure!(got[0] == "10.0.1.11/16", "c after a's DEL got {got:?}");

    for (cid, ns) in [("ctr-b", &pod_b), ("ctr-c", &pod_c)] {
        let out = inv(&node, "DEL", cid, &ns.path, k8s).run(&conf(&node, &[]))?;
        ensure!(out.status.success(), "DEL {cid} failed");
    }
    ensure!(node.allocations()?.is_empty(), "allocations left");
    Ok(())
}
