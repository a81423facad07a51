//! The sweep of the assured conntrack tier (`pal_cta_v1`, `palisade_common::assured`).
//!
//! Nothing evicts an assured entry: it leaves when it expires or when its endpoint goes away.
//! The datapath deletes an expired entry it meets; this sweep, every `INTERVAL` on a blocking
//! thread off the agent's loop and on its own handles to the pinned maps, deletes the expired
//! entries no packet meets any more and the entries of endpoints that no longer exist (ep_ids
//! are never reused), and recounts `pal_ctcnt_v1`.
//!
//! Counts: the datapath adds and subtracts atomically while the sweep walks the map, so a
//! count is rewritten only when it did not change between the sweep's first read and its
//! write (else the next sweep fixes it). The counts of endpoints that no longer exist are
//! removed. If the agent is down, expired entries only hold budget (promotions are refused,
//! the flows stay in the LRU tier): that fails closed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use palisade_common::conntrack::{CtKey, CtValue, ct_age_ns, idle_timeout_ns};
use palisade_common::endpoint::EndpointInfo;
use palisade_common::maps;

/// How often the sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Assured entries found.
    pub entries: usize,
    pub expired: usize,
    /// Entries of endpoints that no longer exist.
    pub orphaned: usize,
    /// Counts rewritten or removed.
    pub recounted: usize,
}

/// Why an assured entry goes, if it does (pure: the sweep's decision).
pub fn goes(k: &CtKey, v: &CtValue, now_ns: u64, live_eps: &BTreeSet<u32>) -> Option<&'static str> {
    if !live_eps.contains(&k.ep_id) {
        Some("orphaned")
    } else if ct_age_ns(now_ns, v.last_seen_ns) > idle_timeout_ns(k.proto, v.flags) {
        Some("expired")
    } else {
        None
    }
}

/// The counts to write: `Some(n)` rewrite, `None` remove (the endpoint is gone and holds
/// nothing). Only counts that did not change during the sweep (`before` == `after`) and
/// differ from what the map holds are touched.
pub fn recount(
    before: &BTreeMap<u32, u64>,
    after: &BTreeMap<u32, u64>,
    held: &BTreeMap<u32, u64>,
    live_eps: &BTreeSet<u32>,
) -> Vec<(u32, Option<u64>)> {
    let mut out = Vec::new();
    for (ep, now) in after {
        if before.get(ep) != Some(now) {
            continue;
        }
        let want = held.get(ep).copied().unwrap_or(0);
        if want == 0 && !live_eps.contains(ep) {
            out.push((*ep, None));
        } else if want != *now {
            out.push((*ep, Some(want)));
        }
    }
    out
}

pub(super) fn now_ns() -> u64 {
    // The datapath stamps entries with `bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC as of the
    // last tick (`ct_age_ns` takes the lag).
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

pub(super) fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
) -> Option<HashMap<MapData, K, V>> {
    let md = MapData::from_pin(dir.join(name)).ok()?;
    HashMap::try_from(Map::HashMap(md)).ok()
}

pub(super) fn counts(m: &HashMap<MapData, u32, u64>) -> BTreeMap<u32, u64> {
    m.iter().filter_map(Result::ok).collect()
}

/// One sweep of the maps pinned under `dir`. `None`: a map could not be opened.
pub fn sweep(dir: &Path) -> Option<Swept> {
    let endpoints: HashMap<MapData, u32, EndpointInfo> = open(dir, maps::ENDPOINTS)?;
    let mut assured: HashMap<MapData, CtKey, CtValue> = open(dir, maps::ASSURED)?;
    let mut count: HashMap<MapData, u32, u64> = open(dir, maps::ASSURED_COUNT)?;
    let live_eps: BTreeSet<u32> = endpoints
        .iter()
        .filter_map(Result::ok)
        .map(|(_, e)| e.ep_id)
        .collect();
    let before = counts(&count);
    let now = now_ns();
    let mut out = Swept::default();
    let mut held: BTreeMap<u32, u64> = BTreeMap::new();
    let mut gone = Vec::new();
    for (k, v) in assured.iter().filter_map(Result::ok) {
        out.entries += 1;
        match goes(&k, &v, now, &live_eps) {
            Some("orphaned") => gone.push((k, true)),
            Some(_) => gone.push((k, false)),
            None => *held.entry(k.ep_id).or_default() += 1,
        }
    }
    for (k, orphaned) in gone {
        // A failed remove: the datapath deleted it first (and uncharged it).
        if assured.remove(&k).is_ok() {
            if orphaned {
                out.orphaned += 1;
            } else {
                out.expired += 1;
            }
        }
    }
    let after = counts(&count);
    for (ep, n) in recount(&before, &after, &held, &live_eps) {
        let done = match n {
            Some(n) => count.insert(ep, n, 0).is_ok(),
            None => count.remove(&ep).is_ok(),
        };
        out.recounted += usize::from(done);
    }
    Some(out)
}

/// Sweeps every `INTERVAL` until the process ends.
pub async fn run(dir: std::path::PathBuf) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || sweep(&d)).await {
            Ok(Some(s)) if s.expired + s.orphaned + s.recounted > 0 => {
                tracing::info!(
                    entries = s.entries,
                    expired = s.expired,
                    orphaned = s.orphaned,
                    recounted = s.recounted,
                    "swept {}",
                    maps::ASSURED
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("{}: maps not pinned (yet)", maps::ASSURED),
            Err(e) => tracing::warn!("sweeping {}: {e}", maps::ASSURED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::conntrack::{CT_CLOSING, CT_TIMEOUT_CLOSING_NS, CT_TIMEOUT_OTHER_NS};
    use palisade_common::packet::{IPPROTO_TCP, IPPROTO_UDP};

    fn key(ep_id: u32, proto: u8) -> CtKey {
        CtKey {
            ep_id,
            proto,
            ..CtKey::default()
        }
    }

    #[test]
    fn expired_entries_and_those_of_gone_endpoints_go() {
        let live = BTreeSet::from([1]);
        let now = 1_000 * 1_000_000_000;
        let fresh = CtValue {
            last_seen_ns: now - CT_TIMEOUT_OTHER_NS,
            ..CtValue::default()
        };
        assert_eq!(goes(&key(1, IPPROTO_UDP), &fresh, now, &live), None);
        assert_eq!(
            goes(&key(2, IPPROTO_UDP), &fresh, now, &live),
            Some("orphaned")
        );
        let idle = CtValue {
            last_seen_ns: now - CT_TIMEOUT_OTHER_NS - 1,
            ..fresh
        };
        assert_eq!(
            goes(&key(1, IPPROTO_UDP), &idle, now, &live),
            Some("expired")
        );
        assert_eq!(goes(&key(1, IPPROTO_TCP), &idle, now, &live), None);
        let closing = CtValue {
            last_seen_ns: now - CT_TIMEOUT_CLOSING_NS - 1,
            flags: CT_CLOSING,
            ..fresh
        };
        assert_eq!(
            goes(&key(1, IPPROTO_TCP), &closing, now, &live),
            Some("expired")
        );
    }

    #[test]
    fn only_counts_that_held_still_during_the_sweep_are_rewritten() {
        let live = BTreeSet::from([1, 2, 3]);
        let before = BTreeMap::from([(1, 5), (2, 7), (3, 1), (9, 2), (8, 0)]);
        // 2 changed during the sweep (a racing promotion): left for the next sweep.
        let after = BTreeMap::from([(1, 5), (2, 8), (3, 1), (9, 2), (8, 0)]);
        let held = BTreeMap::from([(1, 4), (2, 6), (3, 1)]);
        assert_eq!(
            recount(&before, &after, &held, &live),
            vec![(1, Some(4)), (8, None), (9, None)]
        );
        // A wrapped count (a delete raced a rewrite) is fixed.
        let wrapped = BTreeMap::from([(1, u64::MAX)]);
        assert_eq!(
            recount(&wrapped, &wrapped, &BTreeMap::new(), &live),
            vec![(1, Some(0))]
        );
    }
}
