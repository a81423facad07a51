//! The sweep of learnt addresses (`pal_fqaddr_v1`, `palisade_common::fqdn`).
//!
//! The datapath writes an entry when a DNS answer teaches it and never deletes one: an
//! expired entry already refuses new flows (and, past its grace, re-checked ones), so
//! deleting it only frees room. This sweep, every [`INTERVAL`] on a blocking thread off the
//! agent's loop and on its own handles to the pinned maps, deletes the entries past expiry
//! and grace, and those of endpoints that no longer have name rules (no `pal_fqep_v1` entry:
//! the pod is gone or its rules are), then recounts `pal_fqcnt_v1` (the per-pod limit) as the
//! conntrack sweep recounts its budget: a count is rewritten only when it did not change
//! while the sweep walked (the pass and its runner: `sweeper`). If the agent is down, expired
//! entries only hold room: new names fail closed at a full table, learnt ones keep working.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use palisade_common::fqdn::{FqdnEndpoint, GRACE_NS, LearntKey, LearntValue};
use palisade_common::maps;

use super::sweeper::{self, Swept, counts, open};

/// How often the sweep runs (the shortest TTL is 5 s, the grace 60 s: an entry outlives its
/// grace by at most this).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Why entry `v` of endpoint `ep_id` goes, if it does.
pub fn goes(
    ep_id: u32,
    v: &LearntValue,
    now_ns: u64,
    named: &BTreeSet<u32>,
) -> Option<&'static str> {
    let past_grace = now_ns >= v.expires_ns.saturating_add(GRACE_NS);
    sweeper::why(ep_id, named, past_grace)
}

/// One sweep of the maps pinned under `dir`. `None`: a map could not be opened.
pub fn sweep(dir: &Path) -> Option<Swept> {
    let endpoints: HashMap<MapData, u32, FqdnEndpoint> = open(dir, maps::FQDN_ENDPOINTS)?;
    let mut learnt: HashMap<MapData, LearntKey, LearntValue> = open(dir, maps::FQDN_LEARNT)?;
    let mut count: HashMap<MapData, u32, u64> = open(dir, maps::FQDN_COUNTS)?;
    let named: BTreeSet<u32> = endpoints.keys().filter_map(Result::ok).collect();
    Some(sweeper::pass(
        &mut learnt,
        &mut count,
        &named,
        |k| k.ep_id,
        |k, v, now| goes(k.ep_id, v, now, &named),
    ))
}

/// How full the learnt table is, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// Entries in `pal_fqaddr_v1` and its `max_entries`.
    pub entries: u64,
    pub capacity: u64,
    /// `pal_fqcnt_v1`: learnt entries per ep_id.
    pub per_endpoint: BTreeMap<u32, u64>,
}

/// Reads how full the learnt table is. `None`: a map could not be opened.
pub fn fill(dir: &Path) -> Option<Fill> {
    let capacity = aya::maps::MapInfo::from_pin(dir.join(maps::FQDN_LEARNT))
        .ok()?
        .max_entries()
        .into();
    let learnt: HashMap<MapData, LearntKey, LearntValue> = open(dir, maps::FQDN_LEARNT)?;
    let count: HashMap<MapData, u32, u64> = open(dir, maps::FQDN_COUNTS)?;
    Some(Fill {
        entries: learnt.keys().filter(Result::is_ok).count() as u64,
        capacity,
        per_endpoint: counts(&count),
    })
}

/// Sweeps every [`INTERVAL`] until the agent stops.
pub async fn run(dir: std::path::PathBuf) {
    sweeper::run(dir, INTERVAL, maps::FQDN_LEARNT, sweep).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_past_expiry_and_grace_or_with_their_endpoints_rules() {
        let named: BTreeSet<u32> = [1].into();
        let v = LearntValue {
            expires_ns: 100,
            rules: 1,
            _pad: 0,
        };
        assert_eq!(goes(1, &v, 50, &named), None);
        assert_eq!(goes(1, &v, 100 + GRACE_NS - 1, &named), None, "in grace");
        assert_eq!(goes(1, &v, 100 + GRACE_NS, &named), Some("expired"));
        assert_eq!(goes(2, &v, 50, &named), Some("orphaned"));
    }
}
