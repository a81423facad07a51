//! Lost node state must not fail open (issue 9, section 2): the agent's bpffs, pins, links,
//! endpoint records and pinned maps can be lost, removed, detached, corrupted or left by
//! another version. In every case traffic that policy denies stays denied, and
//! `palisadectl status` turns unhealthy naming the cause until the agent has restored it.
//!
//! Threat model for the whole file: **lost node state**: an operator (or a tool) with root on
//! the node having a bad day: unmounting the bpffs, `rm -rf` of a pin directory, `bpftool link
//! detach`, deleting or truncating files under the state directory, or a previous build's
//! maps left pinned. Not a deliberate attacker with root (they own the kernel), but the
//! agent must neither fail open nor report itself healthy while it is.
//!
//! Every test runs the real plugin, agent and eBPF programs in the lab's namespaces and
//! probes with real TCP connections. The policy in all of them: x/a admits TCP from
//! namespace y only; so z/c -> x/a is denied and y/b -> x/a allowed.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use palisade_tests::lab::netns::in_netns;
use palisade_tests::lab::{Lab, LabConfig};
use palisade_tests::require_privileges;

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
";

/// How long the agent may take to notice and restore (its check runs every second).
const NOTICE: Duration = Duration::from_secs(10);

fn lab(test: &str) -> Result<Option<Lab>> {
    let Some(mut lab) = Lab::start_enforcing(test, LabConfig::default())? else {
        return Ok(None);
    };
    lab.apply_yaml("a-from-y", POLICY)?;
    lab.wait_synced()?;
    Ok(Some(lab))
}

/// TCP connection from pod `from` to pod `to` on port 80 (the lab's pods serve it).
fn connects(lab: &Lab, from: &str, to: &str) -> Result<bool> {
    let ip: IpAddr = lab
        .pod_ips(to)
        .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
        .with_context(|| format!("{to} has no IPv4 address"))?;
    let netns = lab
        .pod_netns(from)
        .with_context(|| format!("no pod {from}"))?;
    let to = SocketAddr::new(ip, 80);
    Ok(in_netns(netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok()
    })?)
}

/// The policy holds: y/b reaches x/a, z/c does not.
fn enforced(lab: &Lab, when: &str) -> Result<()> {
    ensure!(
        !connects(lab, "z/c", "x/a")?,
        "{when}: z/c -> x/a passed although policy denies it"
    );
    ensure!(
        connects(lab, "y/b", "x/a")?,
        "{when}: y/b -> x/a refused although policy allows it"
    );
    Ok(())
}

/// (healthy, status JSON) of the lab's agent.
fn health(lab: &mut Lab) -> Result<(bool, String)> {
    Ok(lab.agent_mut(0).context("no agent")?.health()?)
}

/// Polls the status until `done(healthy, text)`, for at most `NOTICE`.
fn wait_status(
    lab: &mut Lab,
    what: &str,
    done: impl Fn(bool, &str) -> bool,
) -> Result<(bool, String)> {
    let start = Instant::now();
    loop {
        let (healthy, text) = health(lab)?;
        if done(healthy, &text) {
            return Ok((healthy, text));
        }
        if start.elapsed() > NOTICE {
            bail!("after {NOTICE:?}, still not {what}; status:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file under the bpffs's `maps/` and `links/` (relative paths, sorted).
fn pins(bpffs: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(bpffs, bpffs, &mut out);
    out.sort();
    out
}

fn bpffs_of(lab: &mut Lab) -> Result<PathBuf> {
    Ok(lab.agent_mut(0).context("no agent")?.bpffs().to_path_buf())
}

/// Restarts the agent (kill -9, start again) and checks that the new one adopted the pinned
/// state of the 9 endpoints and enforces the policy.
fn restart_adopts(lab: &mut Lab) -> Result<()> {
    let agent = lab.agent_mut(0).context("no agent")?;
    agent.respawn()?;
    lab.wait_synced()?;
    let log = std::fs::read_to_string(lab.agent_logs()[0])?;
    let last_start = log
        .rsplit("adopted pinned state:")
        .next()
        .unwrap_or_default();
    ensure!(
        last_start.trim_start().starts_with("9 endpoints, 9 links"),
        "the restarted agent did not adopt the 9 endpoints and their links:\n{log}"
    );
    enforced(lab, "after a restart")
}

/// Threat model: lost node state: the bpffs under the agent is unmounted (and, for a while,
/// cannot be mounted again: a file sits where the mount point was). Before: every link was
/// released with its pin, every pod unfiltered, status healthy. Now: the agent holds its
/// links and maps open, so enforcement goes on; status is unhealthy naming the bpffs until
/// the agent has mounted one again and pinned everything; a restarted agent adopts it all.
#[test]
fn privileged_lost_bpffs_keeps_enforcing_reports_unhealthy_and_is_restored() -> Result<()> {
    let Some(mut lab) =
        lab("privileged_lost_bpffs_keeps_enforcing_reports_unhealthy_and_is_restored")?
    else {
        return Ok(());
    };
    enforced(&lab, "before")?;
    let bpffs = bpffs_of(&mut lab)?;
    let before = pins(&bpffs);
    ensure!(
        before.iter().any(|p| p.ends_with("-to_pod")),
        "no link pins under {}: {before:?}",
        bpffs.display()
    );

    // Unmount, and block the remount: the mount point becomes a file. (An agent quick enough
    // to mount again in between is unmounted again.)
    let mut tries = 0;
    loop {
        nix::mount::umount2(&bpffs, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", bpffs.display()))?;
        match std::fs::remove_dir(&bpffs) {
            Ok(()) => break,
            Err(e) if tries < 5 => {
                eprintln!("removing the mount point: {e}; again");
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::write(&bpffs, "not a directory")?;
    let (_, status) = wait_status(&mut lab, "unhealthy naming the bpffs", |healthy, text| {
        !healthy && text.contains("no bpffs is mounted")
    })?;
    ensure!(
        status.contains(&bpffs.display().to_string()),
        "the problem does not name the path:\n{status}"
    );
    enforced(&lab, "with the bpffs gone")?;

    std::fs::remove_file(&bpffs)?;
    let (_, status) = wait_status(&mut lab, "healthy again", |healthy, _| healthy)?;
    ensure!(
        status.contains("the bpffs was gone"),
        "the restoration is not listed:\n{status}"
    );
    ensure!(
        nix::sys::statfs::statfs(&bpffs)?.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC,
        "no bpffs on {} after the restoration",
        bpffs.display()
    );
    let after = pins(&bpffs);
    ensure!(
        before == after,
        "pins not restored:\nbefore {before:?}\nafter  {after:?}"
    );
    enforced(&lab, "after the restoration")?;
    restart_adopts(&mut lab)
}

/// Threat model: lost node state: `rm -rf` of the pin directories (`maps/` and `links/`)
/// while the bpffs stays. Before: the links went with their pins (pods unfiltered at once)
/// and a restarted agent started from empty maps. Now: enforcement never stops, the pins are
/// back within seconds, the status lists what was restored, and a restart adopts.
#[test]
fn privileged_removed_pin_directories_keep_enforcing_and_are_pinned_again() -> Result<()> {
    let Some(mut lab) =
        lab("privileged_removed_pin_directories_keep_enforcing_and_are_pinned_again")?
    else {
        return Ok(());
    };
    let bpffs = bpffs_of(&mut lab)?;
    let before = pins(&bpffs);
    std::fs::remove_dir_all(bpffs.join("links"))?;
    std::fs::remove_dir_all(bpffs.join("maps"))?;
    // Denied traffic stays denied all along, until the status lists the restoration.
    let start = Instant::now();
    let status = loop {
        ensure!(
            !connects(&lab, "z/c", "x/a")?,
            "z/c -> x/a passed {:?} after the pins were removed",
            start.elapsed()
        );
        let (healthy, text) = health(&mut lab)?;
        if text.contains("pinned again (the agent held the link, so it stayed attached)")
            && text.contains("pal_ct_v1")
        {
            ensure!(healthy, "unhealthy after restoring:\n{text}");
            break text;
        }
        ensure!(
            start.elapsed() < NOTICE,
            "after {NOTICE:?}, the restoration is not listed:\n{text}"
        );
    };
    eprintln!("restored after {:?}:\n{status}", start.elapsed());
    let after = pins(&bpffs);
    ensure!(
        before == after,
        "pins not restored:\nbefore {before:?}\nafter  {after:?}"
    );
    enforced(&lab, "after the restoration")?;
    restart_adopts(&mut lab)
}

/// A pod's endpoint record: (path, content).
fn record_of(lab: &mut Lab, pod: &str) -> Result<(PathBuf, serde_json::Value)> {
    let (ns, name) = pod.split_once('/').context("pod as ns/name")?;
    let dir = state_dir(lab)?.join("endpoints");
    for e in std::fs::read_dir(&dir)? {
        let path = e?.path();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&path)?)
        else {
            continue;
        };
        if v["pod_namespace"] == ns && v["pod_name"] == name {
            return Ok((path, v));
        }
    }
    bail!("no endpoint record of {pod} in {}", dir.display())
}

fn state_dir(lab: &mut Lab) -> Result<PathBuf> {
    Ok(lab
        .agent_mut(0)
        .context("no agent")?
        .state_dir()
        .to_path_buf())
}

/// The host-side interface index of a pod, from its endpoint record.
fn host_ifindex(lab: &mut Lab, pod: &str) -> Result<u32> {
    let (_, v) = record_of(lab, pod)?;
    v["host_ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .context("record without host_ifindex")
}

/// Threat model: lost node state: someone detaches the pod's TCX links (`bpftool link
/// detach`, both hooks) while the agent runs; the link objects and their pins live on,
/// attached to nothing. Before: the pod stayed unfiltered until the agent restarted. Now: the
/// agent attaches them again within its check interval and lists what it did.
#[test]
fn privileged_link_detached_behind_the_agents_back_is_attached_again() -> Result<()> {
    let Some(mut lab) = lab("privileged_link_detached_behind_the_agents_back_is_attached_again")?
    else {
        return Ok(());
    };
    let ifindex = host_ifindex(&mut lab, "x/a")?;
    let links = bpffs_of(&mut lab)?.join("links");
    for hook in ["to_pod", "from_pod"] {
        palisade_tests::bpf::detach_pinned_link(&links.join(format!("{ifindex}-{hook}")))?;
    }
    let start = Instant::now();
    while connects(&lab, "z/c", "x/a")? {
        ensure!(
            start.elapsed() < NOTICE,
            "z/c still reaches x/a {NOTICE:?} after its link was detached"
        );
    }
    eprintln!("x/a filtered again {:?} after the detach", start.elapsed());
    let (healthy, status) = wait_status(&mut lab, "listing the re-attached link", |_, text| {
        text.contains("detached by something other than the agent")
    })?;
    ensure!(healthy, "unhealthy after re-attaching:\n{status}");
    enforced(&lab, "after re-attaching")?;
    restart_adopts(&mut lab)
}

/// Moves the IPAM allocations of a container to `to` (and back, with the arguments swapped):
/// the plugin's store says nothing about its addresses meanwhile.
fn move_allocations(from: &Path, to: &Path, container_id: &str) -> Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut n = 0;
    for e in std::fs::read_dir(from)? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.parse::<IpAddr>().is_err() {
            continue;
        }
        if std::fs::read_to_string(&path)?.lines().next() == Some(container_id) {
            std::fs::rename(&path, to.join(name))?;
            n += 1;
        }
    }
    Ok(n)
}

/// An address of the node (on its loopback), from which it reaches its pods.
const NODE_ADDR: &str = "10.255.255.1/32";

/// TCP connection from the node itself to a pod on port 80.
fn node_connects(lab: &Lab, to: &str) -> Result<bool> {
    let ip: IpAddr = lab
        .pod_ips(to)
        .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
        .with_context(|| format!("{to} has no IPv4 address"))?;
    let node = lab.node_netns()[0].to_string();
    let to = SocketAddr::new(ip, 80);
    Ok(in_netns(&node, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok()
    })?)
}

/// Threat model: lost node state: a pod's endpoint record is deleted, another's corrupted
/// (truncated), and the agent restarts. Before: the agent removed the endpoint entries and
/// links of both pods (unfiltered) and reported nothing. Now: each live interface without a
/// valid record stays isolated (only the node reaches it), is reported naming the interface
/// and the record, and is recovered from the node's own state (pinned addresses, the IPAM
/// allocation, the Pod's status.podIPs) with a new record written. Here x/a's recovery is
/// held back (its IPAM allocation hidden) to see it isolated; y/c's is immediate.
#[test]
fn privileged_pod_without_a_valid_record_stays_isolated_is_reported_and_recovered() -> Result<()> {
    let Some(mut lab) =
        lab("privileged_pod_without_a_valid_record_stays_isolated_is_reported_and_recovered")?
    else {
        return Ok(());
    };
    let (a_record, a) = record_of(&mut lab, "x/a")?;
    let (c_record, _) = record_of(&mut lab, "y/c")?;
    let a_veth = a["host_veth"].as_str().unwrap_or_default().to_string();
    let state = state_dir(&mut lab)?;
    // A one-node lab's node has no address of its own to reach pods from (their gateway is
    // link-local): give it one (the agent learns node addresses at start).
    let node = lab.node_netns()[0].to_string();
    palisade_tests::lab::netns::ip(&["-n", &node, "addr", "add", NODE_ADDR, "dev", "lo"])?;
    lab.agent_mut(0).context("no agent")?.kill_hard()?;
    std::fs::remove_file(&a_record)?;
    let text = std::fs::read_to_string(&c_record)?;
    std::fs::write(&c_record, &text[..text.len() / 2])?;
    let hidden = state.join("ipam-hidden");
    let container = a["container_id"].as_str().unwrap_or_default();
    ensure!(
        move_allocations(&state.join("ipam"), &hidden, container)? > 0,
        "no IPAM allocation of x/a found"
    );
    lab.agent_mut(0).context("no agent")?.respawn()?;
    lab.wait_synced()?;

    ensure!(
        !connects(&lab, "z/c", "x/a")?,
        "x/a without a record: z/c -> x/a passed (x/a unfiltered)"
    );
    ensure!(
        !connects(&lab, "y/b", "x/a")?,
        "x/a without a record must be isolated: y/b -> x/a passed"
    );
    ensure!(
        node_connects(&lab, "x/a")?,
        "x/a without a record must still be reachable from its node"
    );
    let (healthy, status) = health(&mut lab)?;
    ensure!(
        !healthy,
        "healthy with a pod interface without a record:\n{status}"
    );
    for needle in [
        format!("interface {a_veth}"),
        "no valid endpoint record".to_string(),
        "kept isolated".to_string(),
        "no IPAM allocation".to_string(),
    ] {
        ensure!(
            status.contains(&needle),
            "status does not say {needle:?}:\n{status}"
        );
    }
    // y/c was recovered at once: a record that parses again, listed in the status.
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&c_record)?)
        .with_context(|| format!("y/c's record was not rewritten; status:\n{status}"))?;
    ensure!(
        c["pod_name"] == "c" && c["pod_namespace"] == "y",
        "y/c's record: {c}"
    );
    ensure!(
        status.contains("recovered from the pinned endpoint entry")
            && status.contains(&c_record.display().to_string()),
        "y/c's recovery is not listed:\n{status}"
    );
    ensure!(
        connects(&lab, "z/c", "y/c")?,
        "y/c (no policy) is no longer reachable"
    );

    // The allocation is back: x/a is recovered, its record written, its policy enforced.
    move_allocations(&hidden, &state.join("ipam"), container)?;
    wait_status(&mut lab, "healthy after x/a's recovery", |healthy, _| {
        healthy
    })?;
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&a_record)?)
        .context("x/a's record was not written again")?;
    ensure!(
        again["container_id"] == a["container_id"] && again["host_ifindex"] == a["host_ifindex"],
        "x/a's new record differs:\nbefore {a}\nafter  {again}"
    );
    enforced(&lab, "after x/a's recovery")?;
    restart_adopts(&mut lab)
}

/// Threat model: lost node state: maps pinned by another build (or an older version with
/// the same map names) sit under the agent's bpffs when it starts: conntrack with a smaller
/// max_entries, endpoints with another value size, the policy trie as a plain hash, the
/// counters and the endpoint generation with another value size, and the config pin not a
/// map at all. Before: the agent
/// adopted them blindly (crashing on some layouts, silently shrinking conntrack on others).
/// Now: every one is replaced (conntrack's entries copied), the agent runs and enforces, and
/// the status says what it replaced.
#[test]
fn privileged_pinned_maps_with_foreign_layouts_are_replaced_and_reported() -> Result<()> {
    use palisade_common::maps;
    let Some(mut lab) =
        lab("privileged_pinned_maps_with_foreign_layouts_are_replaced_and_reported")?
    else {
        return Ok(());
    };
    let dir = bpffs_of(&mut lab)?.join("maps");
    lab.agent_mut(0).context("no agent")?.kill_hard()?;
    let ct_key = std::mem::size_of::<palisade_common::conntrack::CtKey>() as u32;
    let ct_value = std::mem::size_of::<palisade_common::conntrack::CtValue>() as u32;
    let pol_key = std::mem::size_of::<palisade_common::policy::PolicyKey>() as u32 + 4;
    // (map, type, key size, value size, max_entries, flags); types: 1 hash, 2 array, 6
    // percpu array, 9 lru hash.
    let foreign: [(&str, u32, u32, u32, u32, u32); 5] = [
        (maps::CONNTRACK, 9, ct_key, ct_value, 1024, 0),
        (maps::ENDPOINTS, 1, 4, 8, maps::ENDPOINTS_MAX, 0),
        (maps::POLICY, 1, pol_key, 16, 1024, 0),
        (maps::STATS, 6, 4, 8, palisade_common::stats::STATS_SLOTS, 0),
        // The endpoint generation with a 4-byte value (the programs read 8).
        (maps::EP_GEN, 2, 4, 4, 1, 0),
    ];
    for (name, ty, k, v, max, flags) in foreign {
        let path = dir.join(name);
        std::fs::remove_file(&path)?;
        palisade_tests::bpf::create_pinned_map(&path, ty, k, v, max, flags)?;
    }
    std::fs::remove_file(dir.join(maps::CONFIG))?;
    std::fs::create_dir(dir.join(maps::CONFIG))?;

    lab.agent_mut(0).context("no agent")?.respawn()?;
    lab.wait_synced()?;
    enforced(&lab, "after replacing the foreign maps")?;
    let (healthy, status) = health(&mut lab)?;
    ensure!(healthy, "unhealthy after replacing the maps:\n{status}");
    for needle in [
        format!("{}\"", dir.join(maps::CONNTRACK).display()),
        "max_entries 1024".to_string(),
        "lru_hash".to_string(),
        format!("max_entries {}", maps::CONNTRACK_MAX),
        format!("{}\"", dir.join(maps::POLICY).display()),
        "pinned map is hash".to_string(),
        format!("{}\"", dir.join(maps::ENDPOINTS).display()),
        format!("{}\"", dir.join(maps::STATS).display()),
        format!("{}\"", dir.join(maps::EP_GEN).display()),
        format!("{}\"", dir.join(maps::CONFIG).display()),
        "pin is not a map".to_string(),
        "replaced by a new".to_string(),
    ] {
        ensure!(
            status.contains(&needle),
            "status does not say {needle:?}:\n{status}"
        );
    }
    let ct = aya::maps::MapInfo::from_pin(dir.join(maps::CONNTRACK))?;
    ensure!(
        ct.max_entries() == maps::CONNTRACK_MAX,
        "conntrack pinned with max_entries {}",
        ct.max_entries()
    );
    restart_adopts(&mut lab)
}

/// Threat model: lost node state, the ordinary kind: an upgrade. The agent before issue 12's
/// sizing left a preallocated endpoint map (flags 0) and a 262 144-entry conntrack table
/// pinned. Now the endpoint map is `BPF_F_NO_PREALLOC` and conntrack is sized from
/// `--max-pods`: both are replaced and their entries copied (the endpoints keep their ids,
/// so the new agent adopts the 9 endpoints instead of renumbering them; a tracked flow
/// survives), the node enforces throughout the restart and the status names both.
#[test]
fn privileged_maps_of_the_previous_sizing_are_replaced_with_their_entries() -> Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use palisade_common::conntrack::{CtKey, CtValue};
    use palisade_common::endpoint::EndpointInfo;
    use palisade_common::maps;
    let test = "privileged_maps_of_the_previous_sizing_are_replaced_with_their_entries";
    let Some(mut lab) = lab(test)? else {
        return Ok(());
    };
    let dir = bpffs_of(&mut lab)?.join("maps");
    lab.agent_mut(0).context("no agent")?.kill_hard()?;
    // Replaces the pin `name` by a preallocated map (flags 0) of the old layout.
    let old_pin = |name: &str, ty: u32, k: usize, v: usize, max: u32| -> Result<MapData> {
        let path = dir.join(name);
        std::fs::remove_file(&path)?;
        palisade_tests::bpf::create_pinned_map(&path, ty, k as u32, v as u32, max, 0)?;
        Ok(MapData::from_pin(&path)?)
    };
    // The endpoints as the killed agent wrote them, moved into a preallocated map (type 1).
    let eps: Vec<(u32, EndpointInfo)> = {
        let md = MapData::from_pin(dir.join(maps::ENDPOINTS))?;
        let m: HashMap<MapData, u32, EndpointInfo> = HashMap::try_from(Map::HashMap(md))?;
        m.iter().collect::<Result<_, _>>()?
    };
    ensure!(eps.len() == 9, "{} endpoints pinned, expected 9", eps.len());
    let ep_size = std::mem::size_of::<EndpointInfo>();
    let md = old_pin(maps::ENDPOINTS, 1, 4, ep_size, maps::ENDPOINTS_MAX)?;
    let mut old: HashMap<MapData, u32, EndpointInfo> = HashMap::try_from(Map::HashMap(md))?;
    for (k, v) in &eps {
        old.insert(k, v, 0)?;
    }
    // One tracked UDP flow of x/a's endpoint in an LRU table (type 9) of the old default size.
    let flow = CtKey {
        ep_id: eps[0].1.ep_id,
        proto: palisade_common::packet::IPPROTO_UDP,
        family: palisade_common::FAMILY_V4,
        saddr_be: [10, 99, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr_be: [10, 99, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport_be: 4242u16.to_be_bytes(),
        dport_be: 4243u16.to_be_bytes(),
        ..CtKey::default()
    };
    let seen = CtValue {
        last_seen_ns: palisade_tests::bpf::ktime_now_ns()?,
        ..CtValue::default()
    };
    let (k, v) = (size_of::<CtKey>(), size_of::<CtValue>());
    let md = old_pin(maps::CONNTRACK, 9, k, v, 262_144)?;
    let mut old: HashMap<MapData, CtKey, CtValue> = HashMap::try_from(Map::LruHashMap(md))?;
    old.insert(flow, seen, 0)?;
    drop(old);

    // Respawns the agent; checks that it adopted the 9 endpoints (not renumbered them: their
    // ids came through the copy) and that the policy holds.
    restart_adopts(&mut lab)?;
    let (healthy, status) = health(&mut lab)?;
    ensure!(healthy, "unhealthy after the upgrade:\n{status}");
    for needle in [
        format!("{}\"", dir.join(maps::ENDPOINTS).display()),
        "flags 0x0, the eBPF object defines hash".to_string(),
        "its 9 entries copied".to_string(),
        format!("{}\"", dir.join(maps::CONNTRACK).display()),
        "max_entries 262144".to_string(),
        format!("max_entries {}", maps::CONNTRACK_MAX),
        "its 1 entries copied".to_string(),
    ] {
        ensure!(
            status.contains(&needle),
            "status does not say {needle:?}:\n{status}"
        );
    }
    let md = MapData::from_pin(dir.join(maps::CONNTRACK))?;
    let ct: HashMap<MapData, CtKey, CtValue> = HashMap::try_from(Map::LruHashMap(md))?;
    ensure!(
        ct.get(&flow, 0).is_ok(),
        "the tracked flow was not carried over"
    );
    let info = aya::maps::MapInfo::from_pin(dir.join(maps::ENDPOINTS))?;
    ensure!(info.map_flags() & 1 != 0, "pal_ep_v1 is still preallocated");
    Ok(())
}

/// An agent process run by `ip netns exec` (a fresh /sys, as a user would run it by hand),
/// killed on drop.
struct NetnsAgent {
    child: std::process::Child,
    log: PathBuf,
}

impl NetnsAgent {
    fn spawn(netns: &str, dir: &Path, bpffs: &str) -> Result<NetnsAgent> {
        let bin = palisade_tests::bin_dir();
        let log = dir.join(format!("agent-{}.log", bpffs.replace('/', "_")));
        std::fs::create_dir_all(dir.join("manifests"))?;
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(bin.join("palisade-agent"))
            .arg(format!("--source=dir:{}", dir.join("manifests").display()))
            .arg(format!("--bpffs={bpffs}"))
            .arg(format!(
                "--bpf-object={}",
                palisade_tests::bpf_object().display()
            ))
            .arg(format!("--state-dir={}", dir.join("state").display()))
            .arg(format!("--socket={}", dir.join("agent.sock").display()))
            .args(["--node-name=n", "--masquerade=false", "--pod-routes=false"])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(NetnsAgent { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's socket answers, or the agent exits: Some(exit status).
    fn wait(&mut self, socket: &Path) -> Result<Option<std::process::ExitStatus>> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(st) = self.child.try_wait()? {
                return Ok(Some(st));
            }
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent neither ready nor exited after 30 s:\n{}", self.log())
    }
}

impl Drop for NetnsAgent {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("killing the agent: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("waiting for the agent: {e}");
        }
    }
}

/// First contact (issue 11, section 5): under `ip netns exec` (a fresh sysfs on /sys, so no
/// bpffs on /sys/fs/bpf) the agent failed with "creating pin directory ...: No such file or
/// directory". Now it mounts a bpffs on /sys/fs/bpf itself (inside that command's own mount
/// namespace: nothing outside sees it) and says so in the status; where no bpffs can be
/// mounted it says that none is mounted and how to mount one.
#[test]
fn privileged_agent_without_a_bpffs_mounts_one_or_says_how() -> Result<()> {
    if !require_privileges("privileged_agent_without_a_bpffs_mounts_one_or_says_how") {
        return Ok(());
    }
    let ns = palisade_tests::netns::Netns::new("fo")?;
    let dir = tempfile::Builder::new()
        .prefix(&palisade_tests::unique_name("fo"))
        .tempdir()?;
    let socket = dir.path().join("agent.sock");
    let bpffs = format!("/sys/fs/bpf/{}", palisade_tests::unique_name("fo"));
    let mut agent = NetnsAgent::spawn(&ns.name, dir.path(), &bpffs)?;
    if let Some(st) = agent.wait(&socket)? {
        bail!(
            "the agent exited ({st}) under ip netns exec:\n{}",
            agent.log()
        );
    }
    let out = std::process::Command::new(palisade_tests::bin_dir().join("palisadectl"))
        .arg(format!("--socket={}", socket.display()))
        .arg("status")
        .output()?;
    let status = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "status unhealthy:\n{status}");
    ensure!(
        status.contains("the agent mounted one on /sys/fs/bpf"),
        "the mount is not reported:\n{status}"
    );
    drop(agent);

    // Nowhere to mount: the path lies under a regular file.
    std::fs::write(dir.path().join("file"), "")?;
    let blocked = dir.path().join("file/bpffs");
    let mut agent = NetnsAgent::spawn(&ns.name, dir.path(), &blocked.display().to_string())?;
    let Some(st) = agent.wait(&socket)? else {
        bail!("the agent started without a bpffs:\n{}", agent.log());
    };
    let log = agent.log();
    ensure!(!st.success(), "exit status {st}");
    for needle in [
        format!("no bpffs is mounted at {}", blocked.display()),
        format!("mount -t bpf bpf {}", blocked.display()),
        "ip netns exec".to_string(),
    ] {
        ensure!(
            log.contains(&needle),
            "the error does not say {needle:?}:\n{log}"
        );
    }
    Ok(())
}
