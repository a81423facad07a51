//! Privileged tests of the `palisade` CNI plugin (tier 2: root + network namespaces).
//!
//! Each test builds a node namespace and pod namespaces of its own, runs the real plugin binary
//! inside the node namespace as a runtime would, and checks traffic and leftovers.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use palisade_tests::netns::{Netns, Node, ping_until, wait_for};
use serde_json::json;

#[path = "common/cni.rs"]
mod harness;
use harness::*;

#[test]
fn privileged_two_pods_on_one_node_reach_each_other_and_the_node() -> Result<()> {
    if !setup("privileged_two_pods_on_one_node_reach_each_other_and_the_node") {
        return Ok(());
    }
    let node = Node::new()?;
    let pods = [Netns::new("c")?, Netns::new("c")?];
    let cids = ["podA0123", "podB0123"];
    let cfg = conf(&node, "1.1.0", json!({}));
    let mut results = Vec::new();
    for (pod, cid) in pods.iter().zip(cids) {
        let r = ok_json(&inv(&node, "ADD", cid, Some(&pod.path)).run(&cfg)?)?;
        ensure!(r["cniVersion"] == "1.1.0", "{r}");
        ensure!(r["interfaces"][1]["sandbox"] == json!(pod.path), "{r}");
        ensure!(r["interfaces"][1]["mtu"] == 1450, "{r}");
        ensure!(
            r["ips"].as_array().map(Vec::len) == Some(2),
            "dual stack gives one of each: {r}"
        );
        results.push(r);
    }
    let a = ips_of(&results[0])?;
    let b = ips_of(&results[1])?;
    ensure!(
        a.iter().all(|ip| !b.contains(ip)),
        "duplicate address {a:?} {b:?}"
    );

    let t = Duration::from_secs(5);
    for (from, to) in [(&pods[0], &b), (&pods[1], &a)] {
        for ip in to.iter() {
            ping_until(from, *ip, t)?;
        }
    }
    for pod in &pods {
        ping_until(pod, node.v4, t)?;
        ping_until(pod, node.v6, t)?;
    }
    for ip in a.iter().chain(&b) {
        ping_until(&node.ns, *ip, t)?;
    }

    // The endpoint record carries what the agent needs.
    let recs = palisade_node_api::endpoint::read_all(node.state_dir())?;
    ensure!(recs.records.len() == 2 && recs.bad.is_empty(), "{recs:?}");
    let r0 = recs
        .records
        .values()
        .find(|r| r.container_id == cids[0])
        .context("record of pod A")?;
    ensure!(
        r0.pod_namespace.as_deref() == Some("default") && r0.pod_name.as_deref() == Some("web")
    );
    ensure!(
        r0.ips.iter().any(|s| s.ends_with("/24")) && r0.ips.iter().any(|s| s.ends_with("/64")),
        "{r0:?}"
    );
    ensure!(r0.host_veth == palisade_node_api::host_veth_name(cids[0], "eth0"));

    // ADD again for the same container + ifname: same answer, nothing new.
    let again = ok_json(&inv(&node, "ADD", cids[0], Some(&pods[0].path)).run(&cfg)?)?;
    ensure!(
        ips_of(&again)? == a,
        "second ADD changed addresses: {again}"
    );
    ensure!(node.allocations()?.len() == 4);

    // DEL removes veth, routes and allocation; DEL twice is fine.
    let host_a = palisade_node_api::host_veth_name(cids[0], "eth0");
    ok_empty(&inv(&node, "DEL", cids[0], Some(&pods[0].path)).run(&cfg)?)?;
    ok_empty(&inv(&node, "DEL", cids[0], Some(&pods[0].path)).run(&cfg)?)?;
    ensure!(!node.ns.has_link(&host_a), "host veth survived DEL");
    ensure!(!pods[0].has_link("eth0"), "pod veth survived DEL");
    let routes = node.ns.ip(&["route"])? + &node.ns.ip(&["-6", "route"])?;
    for ip in &a {
        ensure!(
            !routes.contains(&ip.to_string()),
            "route to {ip} survived DEL: {routes}"
        );
    }
    ensure!(node.allocations()?.len() == 2, "{:?}", node.allocations()?);
    ensure!(node.records()?.len() == 1, "{:?}", node.records()?);
    ok_empty(&inv(&node, "DEL", cids[1], Some(&pods[1].path)).run(&cfg)?)?;
    assert_clean(&node)
}

#[test]
fn privileged_del_succeeds_when_netns_and_allocation_are_already_gone() -> Result<()> {
    if !setup("privileged_del_succeeds_when_netns_and_allocation_are_already_gone") {
        return Ok(());
    }
    let node = Node::new()?;
    let cfg = conf(&node, "1.0.0", json!({}));
    let path = {
        let pod = Netns::new("c")?;
        ok_json(&inv(&node, "ADD", "gone1", Some(&pod.path)).run(&cfg)?)?;
        pod.path.clone()
    }; // pod namespace deleted here: the kernel removes the veth pair with it.
    wait_for(
        "veth to vanish with its netns",
        Duration::from_secs(5),
        || Ok(node.host_veths()?.is_empty().then_some(())),
    )?;
    ok_empty(&inv(&node, "DEL", "gone1", Some(&path)).run(&cfg)?)?;
    ok_empty(&inv(&node, "DEL", "gone1", None).run(&cfg)?)?;
    ok_empty(&inv(&node, "DEL", "never-added", None).run(&cfg)?)?;
    assert_clean(&node)
}

#[test]
fn privileged_check_reports_a_deleted_route_or_address_as_an_error() -> Result<()> {
    if !setup("privileged_check_reports_a_deleted_route_or_address_as_an_error") {
        return Ok(());
    }
    let node = Node::new()?;
    let pod = Netns::new("c")?;
    let cfg = conf(&node, "1.0.0", json!({}));
    let result = ok_json(&inv(&node, "ADD", "chk1", Some(&pod.path)).run(&cfg)?)?;
    let check_cfg = conf(&node, "1.0.0", json!({ "prevResult": result }));
    let check = || inv(&node, "CHECK", "chk1", Some(&pod.path)).run(&check_cfg);
    ok_empty(&check()?)?;

    pod.ip(&["route", "del", "default"])?;
    expect_error(&check()?, 102, "default route via 169.254.1.1")?;
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    ok_empty(&check()?)?;

    let v6 = ips_of(&result)?
        .into_iter()
        .find(IpAddr::is_ipv6)
        .context("v6 address")?;
    pod.ip(&["-6", "addr", "del", &format!("{v6}/64"), "dev", "eth0"])?;
    expect_error(&check()?, 102, &v6.to_string())?;
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
        "noprefixroute",
    ])?;
    ok_empty(&check()?)?;

    let v4 = ips_of(&result)?
        .into_iter()
        .find(IpAddr::is_ipv4)
        .context("v4 address")?;
    node.ns.ip(&["route", "del", &format!("{v4}/32")])?;
    expect_error(&check()?, 102, &format!("host route {v4}/32"))?;

    ok_empty(&inv(&node, "DEL", "chk1", Some(&pod.path)).run(&cfg)?)?;
    assert_clean(&node)
}

#[test]
fn privileged_result_shape_follows_the_requested_version() -> Result<()> {
    if !setup("privileged_result_shape_follows_the_requested_version") {
        return Ok(());
    }
    let node = Node::new()?;
    let pod = Netns::new("c")?;
    let cfg = conf(
        &node,
        "0.4.0",
        json!({ "dns": { "nameservers": ["10.96.0.10"] } }),
    );
    let r = ok_json(&inv(&node, "ADD", "ver04", Some(&pod.path)).run(&cfg)?)?;
    ensure!(r["cniVersion"] == "0.4.0", "{r}");
    ensure!(
        r["ips"][0]["version"] == "4" && r["ips"][1]["version"] == "6",
        "{r}"
    );
    ensure!(r["ips"][0]["interface"] == 1, "{r}");
    ensure!(r["dns"]["nameservers"][0] == "10.96.0.10", "{r}");
    // GC and STATUS do not exist before 1.1.0: the spec's code 1.
    for cmd in ["GC", "STATUS"] {
        expect_error(&inv(&node, cmd, "x", None).run(&cfg)?, 1, cmd)?;
    }
    let status_cfg = conf(&node, "1.1.0", json!({}));
    ok_empty(&inv(&node, "STATUS", "x", None).run(&status_cfg)?)?;
    ok_empty(&inv(&node, "DEL", "ver04", Some(&pod.path)).run(&cfg)?)?;
    assert_clean(&node)
}

#[test]
fn privileged_fifty_concurrent_adds_then_dels_leave_no_duplicate_and_no_leak() -> Result<()> {
    if !setup("privileged_fifty_concurrent_adds_then_dels_leave_no_duplicate_and_no_leak") {
        return Ok(());
    }
    const N: usize = 50;
    let node = Node::new()?;
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("c")).collect::<Result<_>>()?;
    let cids: Vec<String> = (0..N).map(|i| format!("conc{i:03}")).collect();
    let cfg = conf(&node, "1.1.0", json!({}));
    let children: Vec<_> = pods
        .iter()
        .zip(&cids)
        .map(|(p, c)| inv(&node, "ADD", c, Some(&p.path)).spawn(&cfg))
        .collect::<Result<_>>()?;
    let mut seen = HashSet::new();
    for c in children {
        let r = ok_json(&c.wait_with_output()?)?;
        for ip in ips_of(&r)? {
            ensure!(seen.insert(ip), "address {ip} handed out twice");
        }
    }
    ensure!(seen.len() == 2 * N);
    ensure!(
        node.allocations()?.len() == 2 * N,
        "store: {:?}",
        node.allocations()?
    );
    ensure!(node.records()?.len() == N);
    ensure!(node.host_veths()?.len() == N);
    let listed: HashSet<IpAddr> = palisade_cni::ipam::Store::open(node.state_dir())?
        .list()?
        .into_iter()
        .map(|a| a.ip)
        .collect();
    ensure!(listed == seen, "store disagrees with results");

    let children: Vec<_> = pods
        .iter()
        .zip(&cids)
        .map(|(p, c)| inv(&node, "DEL", c, Some(&p.path)).spawn(&cfg))
        .collect::<Result<_>>()?;
    for c in children {
        ok_empty(&c.wait_with_output()?)?;
    }
    assert_clean(&node)
}

#[test]
fn privileged_kill_9_during_add_then_gc_leaves_a_consistent_store() -> Result<()> {
    if !setup("privileged_kill_9_during_add_then_gc_leaves_a_consistent_store") {
        return Ok(());
    }
    let node = Node::new()?;
    let cfg = conf(&node, "1.1.0", json!({}));
    // Two attachments that GC must keep; their ADD time sets the kill schedule.
    let keep: Vec<Netns> = (0..2).map(|_| Netns::new("c")).collect::<Result<_>>()?;
    let started = std::time::Instant::now();
    for (i, p) in keep.iter().enumerate() {
        ok_json(&inv(&node, "ADD", &format!("keep{i}"), Some(&p.path)).run(&cfg)?)?;
    }
    let add_time = started.elapsed() / 2;
    // ADDs killed at points spread over a whole ADD, so some die before allocating, some
    // between allocation and veth, some after the veth exists.
    const VICTIMS: u32 = 16;
    let victims: Vec<Netns> = (0..VICTIMS)
        .map(|_| Netns::new("c"))
        .collect::<Result<_>>()?;
    let mut killed_mid_add = 0;
    for (i, p) in victims.iter().enumerate() {
        let cid = format!("kill{i}");
        let mut child = inv(&node, "ADD", &cid, Some(&p.path)).spawn(&cfg)?;
        std::thread::sleep(add_time * i as u32 / VICTIMS);
        if child.try_wait()?.is_none() {
            killed_mid_add += 1;
        }
        child.kill()?;
        child.wait()?;
    }
    eprintln!(
        "{killed_mid_add} of {VICTIMS} ADDs killed before they finished (ADD takes {add_time:?}); \
         left before GC: {} allocations, {} host veths, {} records",
        node.allocations()?.len(),
        node.host_veths()?.len(),
        node.records()?.len()
    );
    let valid = json!([
        { "containerID": "keep0", "ifname": "eth0" },
        { "containerID": "keep1", "ifname": "eth0" },
    ]);
    let gc_cfg = conf(
        &node,
        "1.1.0",
        json!({ "cni.dev/valid-attachments": valid }),
    );
    ok_empty(&inv(&node, "GC", "", None).run(&gc_cfg)?)?;

    let keep_veths: HashSet<String> = ["keep0", "keep1"]
        .iter()
        .map(|c| palisade_node_api::host_veth_name(c, "eth0"))
        .collect();
    let veths: HashSet<String> = node.host_veths()?.into_iter().collect();
    ensure!(veths == keep_veths, "host veths after GC: {veths:?}");
    let allocs = palisade_cni::ipam::Store::open(node.state_dir())?.list()?;
    ensure!(allocs.len() == 4, "allocations after GC: {allocs:?}");
    ensure!(
        allocs
            .iter()
            .all(|a| a.owner.container_id.starts_with("keep")),
        "{allocs:?}"
    );
    ensure!(
        !node.allocations()?.iter().any(|n| n.starts_with(".tmp")),
        "tmp file left"
    );
    let recs = palisade_node_api::endpoint::read_all(node.state_dir())?;
    ensure!(
        recs.records.len() == 2
            && recs.bad.is_empty()
            && recs
                .records
                .values()
                .all(|r| r.container_id.starts_with("keep")),
        "{recs:?}"
    );
    ensure!(node.records()?.len() == 2, "{:?}", node.records()?);
    for p in &victims {
        ensure!(!p.has_link("eth0"), "victim pod {} still has eth0", p.name);
    }
    // The kept pods still work, and GC with nothing valid clears the node.
    ping_until(&keep[0], node.v4, Duration::from_secs(5))?;
    let gc_all = conf(&node, "1.1.0", json!({ "cni.dev/valid-attachments": [] }));
    ok_empty(&inv(&node, "GC", "", None).run(&gc_all)?)?;
    assert_clean(&node)
}

#[test]
fn privileged_agent_socket_gets_the_endpoint_and_an_unreachable_agent_fails_add_with_11()
-> Result<()> {
    if !setup(
        "privileged_agent_socket_gets_the_endpoint_and_an_unreachable_agent_fails_add_with_11",
    ) {
        return Ok(());
    }
    use std::io::{BufRead, BufReader, Write};
    let node = Node::new()?;
    let pod = Netns::new("c")?;
    let sock = node.state_dir().join("agent.sock");
    // No agent listening: ADD fails with "try again later" and leaves nothing.
    let cfg = conf(&node, "1.1.0", json!({ "agentSocket": sock }));
    expect_error(
        &inv(&node, "ADD", "agt1", Some(&pod.path)).run(&cfg)?,
        11,
        "agent",
    )?;
    assert_clean(&node)?;

    // A stand-in agent that accepts the add, then refuses the next one. While it holds the
    // add, the node must have no route to the pod yet: nothing can reach a pod before the
    // agent has programmed it (not even the first packet).
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    let node_ns = node.ns.name.clone();
    let agent = std::thread::spawn(move || -> Result<(Vec<String>, Vec<String>)> {
        let mut got = Vec::new();
        let mut routes_seen = Vec::new();
        for answer in [
            r#"{"ok":true,"generation":7}"#,
            r#"{"ok":false,"error":"no room"}"#,
        ] {
            let (s, _) = listener.accept()?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line)?;
            if let Ok(palisade_node_api::socket::Request::Add { endpoint }) =
                serde_json::from_str(line.trim())
            {
                for ip in &endpoint.ips {
                    let addr = ip.split('/').next().unwrap_or_default();
                    let out = std::process::Command::new("ip")
                        .args(["-n", &node_ns, "route", "show", "exact", addr])
                        .output()?;
                    routes_seen.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
                }
            }
            got.push(line);
            (&s).write_all(format!("{answer}\n").as_bytes())?;
        }
        Ok((got, routes_seen))
    });
    ok_json(&inv(&node, "ADD", "agt1", Some(&pod.path)).run(&cfg)?)?;
    let pod2 = Netns::new("c")?;
    expect_error(
        &inv(&node, "ADD", "agt2", Some(&pod2.path)).run(&cfg)?,
        11,
        "no room",
    )?;
    let (got, routes_seen) = agent
        .join()
        .map_err(|_| anyhow::anyhow!("agent thread panicked"))??;
    ensure!(
        routes_seen.iter().all(String::is_empty),
        "the node routed to the pod before the agent answered: {routes_seen:?}"
    );
    let req: palisade_node_api::socket::Request = serde_json::from_str(got[0].trim())?;
    let palisade_node_api::socket::Request::Add { endpoint } = req else {
        bail!("not an add: {}", got[0])
    };
    ensure!(
        endpoint.container_id == "agt1" && endpoint.host_ifindex > 0,
        "{endpoint:?}"
    );
    ensure!(
        node.records()?.len() == 1 && node.allocations()?.len() == 2,
        "agt2 left state behind"
    );
    // DEL without a listening agent still succeeds (best effort).
    ok_empty(&inv(&node, "DEL", "agt1", Some(&pod.path)).run(&cfg)?)?;
    assert_clean(&node)
}

// ---- bad input: the spec's error, a non-zero exit, nothing left behind -------------------

#[test]
fn privileged_add_with_malformed_json_fails_with_code_6_and_leaves_nothing() -> Result<()> {
    bad_input_case(
        "privileged_add_with_malformed_json_fails_with_code_6_and_leaves_nothing",
        |node, pod| {
            let out = inv(node, "ADD", "bad1", Some(&pod.path))
                .run(br#"{"cniVersion": "1.0.0", "name": "#)?;
            expect_error(&out, 6, "network config")?;
            Ok(())
        },
    )
}

#[test]
fn privileged_add_with_unknown_cni_version_fails_with_code_1_and_leaves_nothing() -> Result<()> {
    bad_input_case(
        "privileged_add_with_unknown_cni_version_fails_with_code_1_and_leaves_nothing",
        |node, pod| {
            let out =
                inv(node, "ADD", "bad2", Some(&pod.path)).run(&conf(node, "0.3.1", json!({})))?;
            expect_error(&out, 1, "0.3.1")?;
            Ok(())
        },
    )
}

#[test]
fn privileged_add_with_missing_or_bad_cni_variables_fails_with_code_4_and_leaves_nothing()
-> Result<()> {
    bad_input_case(
        "privileged_add_with_missing_or_bad_cni_variables_fails_with_code_4_and_leaves_nothing",
        |node, pod| {
            let cfg = conf(node, "1.1.0", json!({}));
            let mut i = inv(node, "ADD", "", Some(&pod.path));
            expect_error(&i.run(&cfg)?, 4, "CNI_CONTAINERID")?;
            i.container_id = "bad3";
            i.ifname = "much-too-long-ifname";
            expect_error(&i.run(&cfg)?, 4, "CNI_IFNAME")?;
            i.ifname = "eth0";
            i.netns = None;
            expect_error(&i.run(&cfg)?, 4, "CNI_NETNS")?;
            i.netns = Some(&pod.path);
            i.args = Some("K8S_POD_NAME");
            expect_error(&i.run(&cfg)?, 4, "CNI_ARGS")?;
            i.args = None;
            i.command = "FROBNICATE";
            expect_error(&i.run(&cfg)?, 4, "CNI_COMMAND")?;
            Ok(())
        },
    )
}

#[test]
fn privileged_add_with_a_netns_path_that_does_not_exist_fails_with_code_4_and_leaves_nothing()
-> Result<()> {
    bad_input_case(
        "privileged_add_with_a_netns_path_that_does_not_exist_fails_with_code_4_and_leaves_nothing",
        |node, _pod| {
            let missing = Path::new("/run/netns/pltc-does-not-exist");
            let out =
                inv(node, "ADD", "bad4", Some(missing)).run(&conf(node, "1.1.0", json!({})))?;
            expect_error(&out, 4, "CNI_NETNS=\"/run/netns/pltc-does-not-exist\"")?;
            Ok(())
        },
    )
}

#[test]
fn privileged_add_with_a_cidr_that_does_not_parse_fails_with_code_7_and_leaves_nothing()
-> Result<()> {
    bad_input_case(
        "privileged_add_with_a_cidr_that_does_not_parse_fails_with_code_7_and_leaves_nothing",
        |node, pod| {
            let cfg = conf(
                node,
                "1.1.0",
                json!({ "podCIDRs": ["10.244.1.0/24", "fd00::/abc"] }),
            );
            let out = inv(node, "ADD", "bad5", Some(&pod.path)).run(&cfg)?;
            expect_error(&out, 7, "podCIDRs[1]")?;
            Ok(())
        },
    )
}

#[test]
fn privileged_add_on_an_exhausted_pool_fails_with_code_100_and_leaves_nothing_new() -> Result<()> {
    bad_input_case(
        "privileged_add_on_an_exhausted_pool_fails_with_code_100_and_leaves_nothing_new",
        |node, pod| {
            // A /30 has one usable address (.2); dual stack so the v6 allocation of the failed
            // ADD must be rolled back too.
            let cfg = conf(
                node,
                "1.1.0",
                json!({ "podCIDRs": ["fd00:99::/64", "10.99.0.0/30"] }),
            );
            let first = Netns::new("c")?;
            ok_json(&inv(node, "ADD", "full1", Some(&first.path)).run(&cfg)?)?;
            let before = node.allocations()?;
            let out = inv(node, "ADD", "full2", Some(&pod.path)).run(&cfg)?;
            expect_error(&out, 100, "10.99.0.0/30")?;
            ensure!(
                node.allocations()? == before,
                "failed ADD changed the store"
            );
            ensure!(node.host_veths()?.len() == 1);
            ok_empty(&inv(node, "DEL", "full1", Some(&first.path)).run(&cfg)?)?;
            Ok(())
        },
    )
}
