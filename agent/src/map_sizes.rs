//! `--map-size NAME=ENTRIES`: the `max_entries` of a map when the agent creates it (aya's
//! `EbpfLoader::set_max_entries`), instead of the object's default (`palisade_common::maps`).
//!
//! Uses: a smaller memory footprint on small nodes, larger tables on large ones, and tests
//! that need a deliberately small map (a Service map that a tenant can fill). Only the maps
//! whose size is a matter of capacity can be sized; the config and counter arrays cannot.
//! The sizes are part of the layout a pinned map must have (`datapath::layout`): a map pinned
//! with another size (by an agent run with other `--map-size` flags) is replaced by one of
//! the size asked for, its entries copied where that map kind is copied. The agent reads the
//! real sizes of the loaded maps and checks every write against those (`applier::Capacity`).
//!
//! Without `--map-size`, the flow-state tables are sized from `--max-pods` by
//! [`for_max_pods`] (docs/datapath.md, "Map sizes"): the LRU tables are preallocated (the
//! kernel requires it), so their capacity is memory an idle node pays for, and a fixed size
//! is either too much for a small node or too little for a large one.

use std::collections::BTreeMap;

use palisade_common::maps;

/// Maps that `--map-size` may size.
pub const SIZABLE: [&str; 11] = [
    maps::ENDPOINTS,
    maps::POLICY,
    maps::PORTS,
    maps::SERVICES,
    maps::HOST_ADDRS,
    maps::CONNTRACK,
    maps::ASSURED,
    maps::FRAGMENTS,
    maps::EVENT_LIMIT,
    maps::SVC_FLOWS,
    // The node's limit on addresses learnt from DNS answers (docs/fqdn.md, "Limits").
    maps::FQDN_LEARNT,
];

/// Kubelet's default `--max-pods`: the agent's default, for which [`for_max_pods`] gives the
/// eBPF object's own capacities (`palisade_common::maps`).
pub const DEFAULT_MAX_PODS: u32 = 110;

/// Largest `--max-pods`: the endpoint map holds `ENDPOINTS_MAX` endpoints.
pub const MAX_PODS_LIMIT: u32 = maps::ENDPOINTS_MAX;

/// Entries per pod of each table sized by [`for_max_pods`], and the least size of each:
/// (map, per pod, minimum). Why these numbers: docs/datapath.md, "Map sizes".
pub const PER_POD: [(&str, u32, u32); 5] = [
    // New, unreplied and short flows, and flows refused promotion: LRU, evicts the idlest.
    (maps::CONNTRACK, 128, 1_024),
    // Replied flows past their first second; at least one endpoint's whole budget
    // (`ASSURED_BUDGET`).
    (maps::ASSURED, 512, palisade_common::assured::ASSURED_BUDGET),
    // Datagrams being reassembled (first fragment seen, last one not yet).
    (maps::FRAGMENTS, 8, 256),
    // Drop-event rate limits and Service flows awaiting their event: LRU, events only.
    (maps::EVENT_LIMIT, 32, 1_024),
    (maps::SVC_FLOWS, 32, 1_024),
];

/// `max_entries` of the flow-state tables for a node that runs at most `max_pods` pods:
/// per pod x `max_pods`, rounded up to a power of two (a hash map's bucket count is one
/// anyway), at least the minimum, at most [`MAX`].
pub fn for_max_pods(max_pods: u32) -> Vec<(String, u32)> {
    PER_POD
        .iter()
        .map(|&(name, per_pod, min)| {
            let n = (u64::from(max_pods) * u64::from(per_pod))
                .next_power_of_two()
                .clamp(u64::from(min), u64::from(MAX));
            (name.to_string(), n as u32)
        })
        .collect()
}

/// One `--max-pods` argument.
pub fn parse_max_pods(arg: &str) -> Result<u32, String> {
    let n: u32 = arg
        .parse()
        .map_err(|_| format!("--max-pods: {arg:?} is not a number of pods"))?;
    if n == 0 || n > MAX_PODS_LIMIT {
        return Err(format!(
            "--max-pods: {n} is outside 1..={MAX_PODS_LIMIT} (the endpoint map's capacity)"
        ));
    }
    Ok(n)
}

/// Largest size accepted (16 Mi entries): a typo must not make the kernel try to allocate
/// gigabytes.
pub const MAX: u32 = 1 << 24;

/// One `NAME=ENTRIES` argument.
pub fn parse(arg: &str) -> Result<(String, u32), String> {
    let (name, n) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: expected NAME=ENTRIES, e.g. pal_svc_v1=4096"))?;
    if !SIZABLE.contains(&name) {
        return Err(format!(
            "{name:?} is not a map whose size can be set (one of {})",
            SIZABLE.join(", ")
        ));
    }
    let n: u32 = n
        .parse()
        .map_err(|_| format!("{name}: {n:?} is not a number of entries"))?;
    if n == 0 || n > MAX {
        return Err(format!("{name}: {n} entries is outside 1..={MAX}"));
    }
    Ok((name.to_string(), n))
}

/// Sizes by map name (the last one given wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSizes(BTreeMap<String, u32>);

impl MapSizes {
    pub fn new(sizes: impl IntoIterator<Item = (String, u32)>) -> Self {
        MapSizes(sizes.into_iter().collect())
    }

    /// The agent's sizes: [`for_max_pods`], then every `--map-size` (which wins).
    pub fn for_node(max_pods: u32, overrides: impl IntoIterator<Item = (String, u32)>) -> Self {
        Self::new(for_max_pods(max_pods).into_iter().chain(overrides))
    }

    /// The size set for `name`, if any (a pinned map's expected layout follows it).
    pub fn get(&self, name: &str) -> Option<u32> {
        self.0.get(name).copied()
    }

    /// Sets every size on `loader`.
    pub fn apply<'a>(&'a self, loader: &mut aya::EbpfLoader<'a>) {
        for (name, n) in &self.0 {
            loader.map_max_entries(name, *n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_name_the_map_and_value() {
        assert_eq!(parse("pal_svc_v1=64"), Ok(("pal_svc_v1".into(), 64)));
        let e = parse("pal_cfg_v1=4").unwrap_err();
        assert!(e.contains("pal_cfg_v1") && e.contains("pal_svc_v1"), "{e}");
        let e = parse("pal_pol_v1=lots").unwrap_err();
        assert!(e.contains("\"lots\""), "{e}");
        assert!(parse("pal_pol_v1=0").unwrap_err().contains("outside"));
        assert!(parse("pal_pol_v1=99999999999").is_err());
        assert!(parse("pal_pol_v1").unwrap_err().contains("NAME=ENTRIES"));
        let s = MapSizes::new([("pal_svc_v1".into(), 64), ("pal_svc_v1".into(), 32)]);
        assert_eq!(s.get("pal_svc_v1"), Some(32));
        assert_eq!(s.get(maps::POLICY), None);
    }

    #[test]
    fn the_default_max_pods_gives_the_objects_own_capacities() {
        let expected = [
            (maps::CONNTRACK, maps::CONNTRACK_MAX),
            (maps::ASSURED, maps::ASSURED_MAX),
            (maps::FRAGMENTS, maps::FRAGMENTS_MAX),
            (maps::EVENT_LIMIT, palisade_common::events::EVENT_LIMIT_MAX),
            (maps::SVC_FLOWS, palisade_common::events::SVC_FLOWS_MAX),
        ];
        let got = for_max_pods(DEFAULT_MAX_PODS);
        assert_eq!(got.len(), expected.len());
        for (name, n) in expected {
            assert!(got.contains(&(name.to_string(), n)), "{name}: {got:?}");
            assert!(SIZABLE.contains(&name));
        }
    }

    #[test]
    fn sizes_scale_with_max_pods_rounded_up_and_bounded() {
        let get = |pods, name| {
            for_max_pods(pods)
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
        };
        // 20 pods: 2560 -> 4096 conntrack; the assured tier keeps one endpoint's budget.
        assert_eq!(get(20, maps::CONNTRACK), Some(4_096));
        assert_eq!(get(20, maps::ASSURED), Some(16_384));
        assert_eq!(
            get(1, maps::ASSURED),
            Some(palisade_common::assured::ASSURED_BUDGET)
        );
        assert_eq!(get(1, maps::FRAGMENTS), Some(256));
        // 250 pods: 32 000 -> 32 768.
        assert_eq!(get(250, maps::CONNTRACK), Some(32_768));
        assert_eq!(get(250, maps::EVENT_LIMIT), Some(8_192));
        // The largest node stays within what --map-size accepts.
        for (name, n) in for_max_pods(MAX_PODS_LIMIT) {
            assert!(n <= MAX, "{name}: {n}");
        }
        assert_eq!(get(MAX_PODS_LIMIT, maps::ASSURED), Some(1 << 23));
    }

    #[test]
    fn map_size_overrides_the_formula_and_bad_max_pods_are_named() {
        let s = MapSizes::for_node(110, [(maps::CONNTRACK.to_string(), 8_192)]);
        assert_eq!(s.get(maps::CONNTRACK), Some(8_192));
        assert_eq!(s.get(maps::ASSURED), Some(maps::ASSURED_MAX));
        assert_eq!(s.get(maps::POLICY), None);
        assert_eq!(parse_max_pods("250"), Ok(250));
        let e = parse_max_pods("0").unwrap_err();
        assert!(e.contains("--max-pods") && e.contains("outside"), "{e}");
        assert!(parse_max_pods("16385").unwrap_err().contains("16384"));
        assert!(parse_max_pods("many").unwrap_err().contains("\"many\""));
    }
}
