//! Map memory of an idle node (issue 12): the maps the agent creates take at most 8 MiB of
//! kernel memory on a node that runs no workload, their sizes are the ones the documented
//! formula gives for `--max-pods` (`palisade_agent::map_sizes::for_max_pods`,
//! docs/datapath.md "Map sizes"), and the operator sees each map's memory and pressure in
//! `/metrics` before any of them fills.
//!
//! "Idle": the lab node with its 9 pods and no policy: every map the agent writes holds only
//! what 9 endpoints and the node's addresses need (a few hundred bytes; the pods are what a
//! node with no workload has at most: CNI test pods). The memory is the kernel's own account
//! (`memlock` in each map fd's fdinfo), read twice: from `palisade_map_memory_bytes` (the
//! pinned maps, what the operator sees) and from the agent process's fds (every map it holds:
//! also the flow-event ring buffer and the per-CPU scratch map, which are not pinned).

#[path = "common/metrics.rs"]
mod metrics;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use palisade_agent::map_sizes::{DEFAULT_MAX_PODS, for_max_pods};
use palisade_common::maps;
use palisade_tests::lab::{Lab, LabConfig};

/// The bound for an idle node.
const BUDGET: u64 = 8 << 20;

/// Every map the agent pins (the ones `/metrics` must cover).
const PINNED: [&str; maps::PINNED_DATA.len()] = maps::PINNED_DATA;

/// Hashes that must be `BPF_F_NO_PREALLOC` (the LRU ones cannot be).
const NOT_PREALLOCATED: [&str; 5] = [
    maps::ENDPOINTS,
    maps::SERVICES,
    maps::HOST_ADDRS,
    maps::ASSURED,
    maps::ASSURED_COUNT,
];

/// map id -> (name, memlock bytes) of every BPF map the process `pid` holds an fd of.
fn maps_held_by(pid: u32) -> Result<BTreeMap<u64, (String, u64)>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        let name = field("map_name:").unwrap_or_default();
        out.insert(id.parse()?, (name, memlock.parse()?));
    }
    Ok(out)
}

#[test]
fn privileged_an_idle_nodes_maps_take_at_most_8_mib_sized_by_max_pods() -> Result<()> {
    let test = "privileged_an_idle_nodes_maps_take_at_most_8_mib_sized_by_max_pods";
    let Some(lab) = Lab::start_enforcing(test, LabConfig::default())? else {
        return Ok(());
    };
    lab.wait_synced()?;

    // 1. What the operator sees: memory and capacity of every pinned map, entries of every
    //    map that can fill (the arrays are always full and cannot fill up further).
    let scraped = metrics::scrape(&lab);
    let mut pinned_total = 0.0;
    let mut report = String::new();
    for name in PINNED {
        let labels = [("map", name)];
        let has = |metric: &str| {
            scraped
                .samples
                .iter()
                .any(|s| s.metric == metric && s.labels.get("map") == Some(name))
        };
        for metric in [
            "palisade_map_memory_bytes",
            "palisade_map_capacity",
            "palisade_map_entries",
        ] {
            ensure!(has(metric), "/metrics has no {metric} for {name}");
        }
        let bytes = metrics::value(&scraped, "palisade_map_memory_bytes", &labels);
        // An empty LPM trie takes 0 B (its nodes are allocated per entry); every other map has
        // at least its buckets or slots.
        let trie = [maps::POLICY, maps::PORTS, maps::FQDN_NAMES].contains(&name);
        ensure!(
            trie || bytes > 0.0,
            "{name}: palisade_map_memory_bytes is {bytes}"
        );
        report.push_str(&format!("  {name:<14} {:>9.1} KiB\n", bytes / 1024.0));
        pinned_total += bytes;
    }
    eprintln!(
        "pinned maps (palisade_map_memory_bytes):\n{report}  total {:.2} MiB",
        pinned_total / 1048576.0
    );
    ensure!(
        pinned_total <= BUDGET as f64,
        "the pinned maps take {pinned_total} B (> {BUDGET} B):\n{report}"
    );

    // 2. Everything the agent process holds (the ring buffer and scratch map too).
    let agent = lab.agent(0).context("no agent")?;
    let pid = agent.pid().context("agent not running")?;
    let held = maps_held_by(pid)?;
    let total: u64 = held.values().map(|(_, b)| b).sum();
    eprintln!(
        "all {} maps the agent holds: {:.2} MiB",
        held.len(),
        total as f64 / 1048576.0
    );
    ensure!(
        total <= BUDGET,
        "the agent's maps take {total} B (> {BUDGET} B): {held:?}"
    );
    ensure!(
        total as f64 >= pinned_total,
        "the agent holds less ({total} B) than its pinned maps take ({pinned_total} B): {held:?}"
    );

    // 3. The sizes are the formula's for the default --max-pods, the non-LRU hashes are not
    //    preallocated (as the kernel reports them, no bpftool).
    let dir = agent.bpffs().join("maps");
    for (name, entries) in for_max_pods(DEFAULT_MAX_PODS) {
        let info = aya::maps::MapInfo::from_pin(dir.join(&name))?;
        ensure!(
            info.max_entries() == entries,
            "{name}: max_entries {} but the formula gives {entries} for {DEFAULT_MAX_PODS} pods",
            info.max_entries()
        );
        let capacity = metrics::value(&scraped, "palisade_map_capacity", &[("map", &name)]);
        ensure!(
            capacity == f64::from(entries),
            "{name}: capacity metric {capacity}"
        );
    }
    for name in NOT_PREALLOCATED {
        let info = aya::maps::MapInfo::from_pin(dir.join(name))?;
        ensure!(
            info.map_flags() & 1 != 0,
            "{name} is preallocated (flags {:#x})",
            info.map_flags()
        );
    }
    Ok(())
}

/// `--max-pods` scales the flow-state maps: a node for 20 pods gets the formula's smaller
/// conntrack, and `--map-size` still overrides one map.
#[test]
fn privileged_max_pods_sizes_the_flow_maps_and_map_size_overrides_it() -> Result<()> {
    let test = "privileged_max_pods_sizes_the_flow_maps_and_map_size_overrides_it";
    let config = LabConfig {
        agent_args: vec![
            "--max-pods".into(),
            "20".into(),
            "--map-size".into(),
            format!("{}=2048", maps::FRAGMENTS),
        ],
        ..LabConfig::default()
    };
    let Some(lab) = Lab::start_enforcing(test, config)? else {
        return Ok(());
    };
    lab.wait_synced()?;
    let dir = lab.agent(0).context("no agent")?.bpffs().join("maps");
    for (name, formula) in for_max_pods(20) {
        let want = if name == maps::FRAGMENTS {
            2048
        } else {
            formula
        };
        let got = aya::maps::MapInfo::from_pin(dir.join(&name))?.max_entries();
        ensure!(got == want, "{name}: max_entries {got}, expected {want}");
    }
    let scraped = metrics::scrape(&lab);
    let ct = metrics::value(
        &scraped,
        "palisade_map_capacity",
        &[("map", maps::CONNTRACK)],
    );
    ensure!(
        ct == 4096.0,
        "pal_ct_v1 capacity metric {ct}, expected 4096 for 20 pods"
    );
    Ok(())
}
