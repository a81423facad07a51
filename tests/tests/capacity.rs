//! Map capacity against a hostile tenant, on a real kernel with deliberately small maps
//! (`--map-size pal_svc_v1=64 --map-size pal_pol_v1=512`).
//!
//! Threat model: a tenant with API access to its own namespace creates (1) a Service with more
//! external IPs than the node's Service map holds, (2) a NetworkPolicy whose compiled form
//! does not fit the limit one policy may take of the policy map. Before the fix, the first
//! filled `pal_svc_v1` and every later reconcile failed: pod creation, policy updates and
//! other Services stalled on every node, and stale entries stayed after the Service was
//! deleted; the second did the same through `pal_pol_v1`. What must hold: each object is
//! rejected alone with a problem in `palisadectl status` naming it and the numbers; nothing
//! of it is written (the pinned map holds exactly what the admitted objects need); other pods
//! are still created (CNI ADD works) and other policies and Services still apply; the
//! oversized policy fails closed (the pods it selects stay isolated by it); deleting the
//! object clears the problem and leaves no stale entries.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use aya::maps::{HashMap, LpmTrie, Map, MapData};
use palisade_common::maps;
use palisade_common::policy::{PolicyKey, PolicyValue};
use palisade_common::service::SvcAddrKey;
use palisade_tests::lab::{Family, Lab, LabConfig, Protocol};

const MAP_SIZES: [&str; 4] = [
    "--map-size",
    "pal_svc_v1=64",
    "--map-size",
    "pal_pol_v1=512",
];

fn lab(test: &str) -> Result<Option<Lab>> {
    Ok(Lab::start_enforcing(
        test,
        LabConfig {
            agent_args: MAP_SIZES.iter().map(|s| s.to_string()).collect(),
            ..LabConfig::default()
        },
    )?)
}

fn pinned(bpffs: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(bpffs.join("maps").join(name))
        .with_context(|| format!("opening pinned {name}"))?;
    Map::from_map_data(data).with_context(|| format!("reading {name}"))
}

/// Addresses in the node's pinned `pal_svc_v1`.
fn service_map(lab: &Lab) -> Result<BTreeSet<IpAddr>> {
    let bpffs = lab.agent_bpffs(0).context("no agent")?;
    let m: HashMap<MapData, SvcAddrKey, u32> = HashMap::try_from(pinned(bpffs, maps::SERVICES)?)?;
    let mut out = BTreeSet::new();
    for k in m.keys() {
        let k = k?;
        out.insert(if k.family == palisade_common::FAMILY_V4 {
            IpAddr::from(<[u8; 4]>::try_from(&k.addr_be[..4])?)
        } else {
            IpAddr::from(k.addr_be)
        });
    }
    Ok(out)
}

/// Entries in the node's pinned `pal_pol_v1`.
fn policy_entries(lab: &Lab) -> Result<usize> {
    let bpffs = lab.agent_bpffs(0).context("no agent")?;
    let m: LpmTrie<MapData, PolicyKey, PolicyValue> =
        LpmTrie::try_from(pinned(bpffs, maps::POLICY)?)?;
    let mut n = 0;
    for k in m.keys() {
        k?;
        n += 1;
    }
    Ok(n)
}

fn service(ns: &str, name: &str, cluster_ip: &str, external: &[Ipv4Addr]) -> String {
    let ips: Vec<String> = external.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{port: 80}}]\n  externalIPs: [{}]\n",
        ips.join(", ")
    )
}

fn reaches(lab: &Lab, from: &str, to: &str) -> Result<bool> {
    let r = lab.probe_all(&[80], &[Protocol::Tcp], Family::V4)?;
    r.table(80, Protocol::Tcp)
        .and_then(|t| t.get(from, to))
        .with_context(|| format!("no probe {from} -> {to}"))
}

#[test]
fn privileged_capacity_a_service_too_big_for_the_map_is_rejected_alone_and_cleaned_up() -> Result<()>
{
    let Some(mut lab) =
        lab("privileged_capacity_a_service_too_big_for_the_map_is_rejected_alone_and_cleaned_up")?
    else {
        return Ok(());
    };
    let small_ext = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
    lab.apply_yaml("small", &service("x", "small", "10.96.0.10", &small_ext))?;
    lab.wait_synced()?;
    let small: BTreeSet<IpAddr> = ["10.96.0.10", "192.0.2.1", "192.0.2.2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    ensure!(
        service_map(&lab)? == small,
        "setup: pal_svc_v1 holds {:?}",
        service_map(&lab)?
    );

    // 100 external IPs: under the per-Service limit (256), over the map (64).
    let huge_ext: Vec<Ipv4Addr> = (0..100u32)
        .map(|i| Ipv4Addr::from(0xc633_6400 + i))
        .collect();
    lab.apply_yaml("huge", &service("y", "huge", "10.96.0.11", &huge_ext))?;
    lab.wait_synced()?;
    let status = lab.wait_status("the huge Service's problem", |s| {
        s.contains("Service y/huge")
    })?;
    for needle in [
        "needs 101 more entries in pal_svc_v1",
        "61 of 64 free",
        "spec.externalIPs",
    ] {
        ensure!(
            status.contains(needle),
            "status lacks {needle:?}:\n{status}"
        );
    }
    ensure!(
        service_map(&lab)? == small,
        "the rejected Service left entries in pal_svc_v1: {:?}",
        service_map(&lab)?
    );

    // The node keeps working: a new pod is created (CNI ADD asks the agent), another Service
    // and a policy change apply.
    lab.apply_yaml(
        "pod-d",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, labels: {pod: d}}\n",
    )?;
    lab.wait_synced()?;
    ensure!(
        lab.pod_ips("x/d").is_some_and(|a| !a.is_empty()),
        "x/d was not created"
    );
    lab.apply_yaml("other", &service("z", "other", "10.96.0.12", &[]))?;
    ensure!(reaches(&lab, "y/b", "x/a")?, "setup: y/b must reach x/a");
    lab.apply_yaml(
        "deny-x-a",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-x-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n",
    )?;
    lab.wait_synced()?;
    ensure!(
        !reaches(&lab, "y/b", "x/a")?,
        "a policy change was not applied"
    );
    let mut want = small.clone();
    want.insert("10.96.0.12".parse()?);
    ensure!(
        service_map(&lab)? == want,
        "pal_svc_v1 holds {:?}",
        service_map(&lab)?
    );

    // Deleting the Service clears its problem; nothing of it stays.
    lab.remove("huge")?;
    lab.wait_synced()?;
    lab.wait_status("the problem to clear", |s| !s.contains("Service y/huge"))?;
    ensure!(
        service_map(&lab)? == want,
        "pal_svc_v1 holds {:?}",
        service_map(&lab)?
    );
    lab.remove("small")?;
    lab.remove("other")?;
    lab.wait_synced()?;
    ensure!(
        service_map(&lab)?.is_empty(),
        "stale entries: {:?}",
        service_map(&lab)?
    );
    Ok(())
}

#[test]
fn privileged_capacity_a_policy_too_big_is_rejected_alone_fails_closed_and_is_cleaned_up()
-> Result<()> {
    let Some(mut lab) = lab(
        "privileged_capacity_a_policy_too_big_is_rejected_alone_fails_closed_and_is_cleaned_up",
    )?
    else {
        return Ok(());
    };
    lab.wait_synced()?;
    let baseline = policy_entries(&lab)?;
    ensure!(reaches(&lab, "y/b", "z/a")?, "setup: y/b must reach z/a");
    ensure!(reaches(&lab, "y/b", "x/a")?, "setup: y/b must reach x/a");

    // 200 /32 peers (and y/b's namespace): 200+ entries for z/a, over the 128 one policy may
    // take of a 512-entry pal_pol_v1.
    let blocks: Vec<String> = (0..200u32)
        .map(|i| {
            format!(
                "{{ipBlock: {{cidr: {}/32}}}}",
                Ipv4Addr::from(0xcb00_7100 + i)
            )
        })
        .collect();
    let big = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: big, namespace: z}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{}}}}, {}]\n",
        blocks.join(", ")
    );
    lab.apply_yaml("big", &big)?;
    lab.wait_synced()?;
    let status = lab.wait_status("the big policy's problem", |s| {
        s.contains("NetworkPolicy z/big")
    })?;
    for needle in [
        "entries for Pod z/a",
        "more than the 128 one policy may have",
        "pal_pol_v1 holds 512",
    ] {
        ensure!(
            status.contains(needle),
            "status lacks {needle:?}:\n{status}"
        );
    }
    // Fails closed: z/a is isolated by it, and it allows nothing (it would allow y/b).
    ensure!(
        !reaches(&lab, "y/b", "z/a")?,
        "the rejected policy failed open"
    );
    ensure!(
        policy_entries(&lab)? < baseline + 16,
        "the rejected policy was written: {} entries, {baseline} before",
        policy_entries(&lab)?
    );

    // Other policies still apply, and pods are still created.
    lab.apply_yaml(
        "deny-x-a",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-x-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n",
    )?;
    lab.apply_yaml(
        "pod-d",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: z, labels: {pod: d}}\n",
    )?;
    lab.wait_synced()?;
    ensure!(
        lab.pod_ips("z/d").is_some_and(|a| !a.is_empty()),
        "z/d was not created"
    );
    ensure!(
        !reaches(&lab, "y/b", "x/a")?,
        "a policy change was not applied"
    );

    // Deleting it clears the problem and its state; z/a is reachable again.
    lab.remove("big")?;
    lab.remove("deny-x-a")?;
    lab.remove("pod-d")?;
    lab.wait_synced()?;
    lab.wait_status("the problem to clear", |s| {
        !s.contains("NetworkPolicy z/big")
    })?;
    ensure!(
        reaches(&lab, "y/b", "z/a")?,
        "z/a stayed isolated after the policy was deleted"
    );
    let after = policy_entries(&lab)?;
    ensure!(
        after == baseline,
        "{after} pal_pol_v1 entries after the deletion, {baseline} before"
    );
    Ok(())
}
