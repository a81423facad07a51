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

use std::collections::BTreeMap;

use palisade_common::maps;

/// Maps that `--map-size` may size.
pub const SIZABLE: [&str; 8] = [
    maps::ENDPOINTS,
    maps::POLICY,
    maps::PORTS,
    maps::SERVICES,
    maps::HOST_ADDRS,
    maps::CONNTRACK,
    maps::ASSURED,
    maps::FRAGMENTS,
];

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
}
