//! Pinned maps are checked against the object's own definitions before they are adopted.
//!
//! aya reuses whatever is pinned under a map's name without comparing it with the object: a
//! map pinned by another build (a different key or value size, type, flags or capacity) would
//! be handed to programs and to the agent's typed handles that assume the object's layout. A
//! larger value than the agent's type reads past its buffers; a smaller `max_entries` silently
//! shrinks conntrack. So, before loading:
//!
//! 1. every map the object pins by name is looked up under `maps/`; one whose type, key size,
//!    value size, `max_entries` or flags differ from the object's (or a pin that is not a map)
//!    is unpinned, and the loader creates a fresh one in its place;
//! 2. when only `max_entries` (or `BPF_F_NO_PREALLOC`) differs, the old map is kept open and, after loading, its
//!    entries are copied into the new one (conntrack: established flows survive; endpoints:
//!    endpoint ids and addresses survive, so the applier adopts instead of re-numbering);
//!    the policy tries, the Service and node addresses are rewritten by the agent anyway,
//!    counters start from zero, and fragments are transient;
//!    the addresses pods learnt from DNS answers (`pal_fqaddr_v1`, sized by `--map-size`) are
//!    copied too, and merged once more after this agent's programs replaced the previous
//!    agent's on every interface ([`PreviousLearnt`]): until then those go on learning into
//!    the old map (their program array is replaced with it, `object::load`);
//! 3. each replacement is logged and listed in `palisadectl status`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aya::Pod;
use aya::maps::{HashMap, Map, MapData, MapInfo};
use palisade_common::conntrack::{CtKey, CtValue};
use palisade_common::endpoint::EndpointInfo;
use palisade_common::fqdn::{LearntKey, LearntValue};
use palisade_common::maps;

use super::DatapathError;
use crate::map_sizes::MapSizes;
use crate::status::Problem;

/// `BPF_F_NO_PREALLOC`: how the kernel allocates entries, not what they hold.
const NO_PREALLOC: u32 = 1;

/// What the kernel reports about a map, as far as its layout goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    fn of(info: &MapInfo) -> Self {
        Layout {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }

    /// Same map except, at most, its capacity and whether it is preallocated: entries can be
    /// copied over (a map of an agent from before a hash became `BPF_F_NO_PREALLOC` keeps
    /// its entries: the endpoints keep their ids).
    fn copyable_from(&self, other: &Layout) -> bool {
        self.map_type == other.map_type
            && self.key_size == other.key_size
            && self.value_size == other.value_size
            && (self.flags | NO_PREALLOC) == (other.flags | NO_PREALLOC)
    }
}

fn type_name(t: u32) -> String {
    // The kernel's `enum bpf_map_type` numbers of the types Palisade uses.
    match t {
        1 => "hash".into(),
        2 => "array".into(),
        5 => "percpu_hash".into(),
        6 => "percpu_array".into(),
        9 => "lru_hash".into(),
        11 => "lpm_trie".into(),
        n => format!("type {n}"),
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, key {} B, value {} B, max_entries {}, flags {:#x}",
            type_name(self.map_type),
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags
        )
    }
}

/// A pinned map that did not match the object and was replaced.
pub struct Replaced {
    pub name: String,
    pub path: PathBuf,
    /// `None`: the pin was not a map at all.
    pub found: Option<Layout>,
    pub expected: Layout,
    /// The old map, kept open to copy its entries (only when its layout allows it).
    old: Option<MapData>,
    /// (copied, found) entries, once copied.
    pub copied: Option<(usize, usize)>,
}

impl Replaced {
    pub fn describe(&self) -> String {
        let found = match &self.found {
            Some(l) => format!("pinned map is {l}"),
            None => "pin is not a map".into(),
        };
        let outcome = match self.copied {
            Some((c, n)) if c == n => format!("replaced by a new map; its {n} entries copied"),
            Some((c, n)) => format!(
                "replaced by a new map; {c} of its {n} entries copied (the rest did not fit)"
            ),
            None => "replaced by a new, empty map (the agent rewrites what it needs)".into(),
        };
        let outcome = if self.name == maps::FQDN_LEARNT {
            format!(
                "{outcome}; the previous agent's programs learn into the old map until this \
                 agent's replace them, then what they learnt meanwhile is merged"
            )
        } else {
            outcome
        };
        format!(
            "{found}, the eBPF object defines {}: {outcome}",
            self.expected
        )
    }

    pub fn problem(&self) -> Problem {
        Problem {
            object: format!("pinned map {}", self.path.display()),
            field: "layout".into(),
            message: format!("at agent start: {}", self.describe()),
        }
    }
}

/// Layouts of the maps the object pins by name, with the sizes `--map-size` sets.
pub fn expected(object: &aya_obj::Object, sizes: &MapSizes) -> BTreeMap<String, Layout> {
    object
        .maps
        .iter()
        .filter(|(_, m)| matches!(m.pinning(), aya_obj::maps::PinningType::ByName))
        .map(|(name, m)| {
            (
                name.clone(),
                Layout {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: sizes.get(name).unwrap_or(m.max_entries()),
                    flags: m.map_flags(),
                },
            )
        })
        .collect()
}

/// Unpins every pinned map under `maps_dir` whose layout differs from `expected` (step 1).
pub fn unpin_mismatched(
    expected: &BTreeMap<String, Layout>,
    maps_dir: &Path,
) -> Result<Vec<Replaced>, DatapathError> {
    let mut out = Vec::new();
    for (name, want) in expected {
        let path = maps_dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let found = MapInfo::from_pin(&path).ok().map(|i| Layout::of(&i));
        if found.as_ref() == Some(want) {
            continue;
        }
        let old = match &found {
            Some(f) if want.copyable_from(f) => MapData::from_pin(&path).ok(),
            _ => None,
        };
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| DatapathError::Unpin {
            path: path.clone(),
            source,
        })?;
        out.push(Replaced {
            name: name.clone(),
            path,
            found,
            expected: *want,
            old,
            copied: None,
        });
    }
    Ok(out)
}

/// What the previous agent's programs use when this agent replaced the learnt-address map
/// (another size), held open until this agent's programs replace theirs on every interface.
/// Until then they keep learning into and reading the old map, and tail-calling their own DNS
/// reader through the old program array: held open here because unpinning it dropped its
/// last user reference, and the kernel empties a program array then (their pods would stop
/// learning). What they learnt after the copy at load is merged into the new map by
/// [`PreviousLearnt::merge_into`]; both are freed with it.
pub struct PreviousLearnt {
    /// The old `pal_fqaddr_v1` (`None`: not copyable, another key or value layout).
    map: Option<Map>,
    /// The old program array (`None`: there was none).
    _program_array: Option<MapData>,
}

impl PreviousLearnt {
    /// `map` and the program array from [`copy_entries`] and [`unpin_program_array`].
    pub fn new(map: Option<Map>, program_array: Option<MapData>) -> Option<Self> {
        (map.is_some() || program_array.is_some()).then_some(PreviousLearnt {
            map,
            _program_array: program_array,
        })
    }

    /// Merges every entry into `new` (`LearntValue::merged` where both hold one): (written,
    /// found); `None` when there is no copyable old map.
    pub fn merge_into(self, new: &mut Map, now_ns: u64) -> Option<(usize, usize)> {
        merge_learnt(self.map.as_ref()?, new, now_ns)
    }
}

/// Unpins the DNS reader's program array (`maps::TAILS`), so that the loader creates a new
/// one for this agent's reader while the previous agent's programs keep theirs; returns it
/// held open (see [`PreviousLearnt`]).
pub fn unpin_program_array(maps_dir: &Path) -> Result<Option<MapData>, DatapathError> {
    let path = maps_dir.join(maps::TAILS);
    let held = MapData::from_pin(&path).ok();
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(DatapathError::Unpin { path, source: e })
        }
        _ => Ok(held),
    }
}

/// Copies the entries of the replaced maps that were kept open into the new ones the loader
/// created in their place (step 2). Returns the replaced learnt-address map, kept open for
/// the merge after attaching ([`PreviousLearnt`]).
pub fn copy_entries(replaced: &mut [Replaced], new: &mut aya::Ebpf, now_ns: u64) -> Option<Map> {
    let mut previous = None;
    for r in replaced.iter_mut() {
        let Some(old) = r.old.take() else { continue };
        let Some(new) = new.map_mut(&r.name) else {
            continue;
        };
        let Ok(old) = Map::from_map_data(old) else {
            continue;
        };
        let copied = match r.name.as_str() {
            // The counts are not copied: the sweep (`ct_sweep`) recounts what the assured tier
            // holds.
            maps::CONNTRACK | maps::ASSURED => copy::<CtKey, CtValue>(&old, new),
            maps::ENDPOINTS => copy::<u32, EndpointInfo>(&old, new),
            // Recounted by the fqdn sweep too; copied so that the per-pod limit holds from
            // the start.
            maps::FQDN_COUNTS => copy::<u32, u64>(&old, new),
            maps::FQDN_LEARNT => {
                let copied = merge_learnt(&old, new, now_ns);
                previous = Some(old);
                copied
            }
            _ => None,
        };
        r.copied = copied;
    }
    for r in replaced.iter() {
        tracing::warn!(map = %r.name, path = %r.path.display(), "{}", r.describe());
    }
    previous
}

/// Copies every entry of `old` into `new`, as far as `new` has room: (copied, found). An
/// entry `new` already holds is overwritten.
fn copy<K: Pod, V: Pod>(old: &Map, new: &mut Map) -> Option<(usize, usize)> {
    copy_with::<K, V>(old, new, None)
}

/// [`copy`], where `new` holding the same key already (written by this agent's programs since
/// the old map was read) is resolved by `merge(current, old)` instead of overwritten.
fn copy_with<K: Pod, V: Pod>(
    old: &Map,
    new: &mut Map,
    merge: Option<&dyn Fn(V, V) -> V>,
) -> Option<(usize, usize)> {
    let old: HashMap<&MapData, K, V> = HashMap::try_from(old).ok()?;
    let mut new: HashMap<&mut MapData, K, V> = HashMap::try_from(new).ok()?;
    let (mut written, mut found) = (0, 0);
    for entry in old.iter() {
        let Ok((k, v)) = entry else { continue };
        found += 1;
        let v = match (merge, new.get(&k, 0)) {
            (Some(merge), Ok(current)) => merge(current, v),
            _ => v,
        };
        if new.insert(k, v, 0).is_ok() {
            written += 1;
        }
    }
    Some((written, found))
}

/// [`copy_with`] for learnt addresses: the two entries of one address are merged as the
/// datapath merges a refresh. A refresh racing between the read and the write may lose its
/// later expiry (the next answer restores it); it never widens what either entry allowed.
fn merge_learnt(old: &Map, new: &mut Map, now_ns: u64) -> Option<(usize, usize)> {
    let merge = |current: LearntValue, old: LearntValue| current.merged(old, now_ns);
    copy_with::<LearntKey, LearntValue>(old, new, Some(&merge))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(max_entries: u32) -> Layout {
        Layout {
            map_type: 9,
            key_size: 40,
            value_size: 16,
            max_entries,
            flags: 0,
        }
    }

    #[test]
    fn only_a_capacity_change_is_copied_and_the_status_names_both_layouts() {
        assert!(ct(262_144).copyable_from(&ct(1024)));
        let other_value = Layout {
            value_size: 8,
            ..ct(1024)
        };
        assert!(!ct(262_144).copyable_from(&other_value));
        // An endpoint map from before `BPF_F_NO_PREALLOC` is copied; another flag is not.
        let prealloc = Layout {
            map_type: 1,
            ..ct(16_384)
        };
        let no_prealloc = Layout {
            flags: 1,
            ..prealloc
        };
        assert!(no_prealloc.copyable_from(&prealloc));
        assert!(!no_prealloc.copyable_from(&Layout {
            flags: 1 << 3,
            ..prealloc
        }));
        let r = Replaced {
            name: maps::CONNTRACK.into(),
            path: PathBuf::from("/b/maps/pal_ct_v1"),
            found: Some(ct(1024)),
            expected: ct(262_144),
            old: None,
            copied: Some((3, 5)),
        };
        let p = r.problem();
        assert_eq!(p.object, "pinned map /b/maps/pal_ct_v1");
        assert_eq!(
            p.message,
            "at agent start: pinned map is lru_hash, key 40 B, value 16 B, max_entries 1024, flags 0x0, the eBPF object defines lru_hash, key 40 B, value 16 B, max_entries 262144, flags 0x0: replaced by a new map; 3 of its 5 entries copied (the rest did not fit)"
        );
        let not_a_map = Replaced {
            found: None,
            copied: None,
            ..r
        };
        assert!(not_a_map.describe().starts_with("pin is not a map"));
        // The learnt addresses: the status also says that the previous agent's programs go
        // on learning into the old map, merged later.
        let learnt = Replaced {
            name: maps::FQDN_LEARNT.into(),
            copied: Some((4, 4)),
            ..not_a_map
        };
        assert!(
            learnt
                .describe()
                .ends_with("its 4 entries copied; the previous agent's programs learn into the old map until this agent's replace them, then what they learnt meanwhile is merged"),
            "{}",
            learnt.describe()
        );
    }
}
