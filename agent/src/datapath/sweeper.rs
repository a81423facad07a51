//! What the agent's periodic sweeps of pinned tables share: `ct_sweep` (the assured conntrack
//! tier) and `fqdn_sweep` (learnt addresses). Each is a table keyed by endpoint that only the
//! agent deletes from, plus a per-endpoint count the datapath keeps (a budget or a limit):
//! a pass deletes the entries the sweep's own rule says go, then recounts.
//!
//! Counts: the datapath adds and subtracts atomically while the sweep walks the table, so a
//! count is rewritten only when it did not change between the pass's first read and its write
//! (else the next pass fixes it); the counts of endpoints that no longer exist are removed.
//!
//! A pass runs on a blocking thread off the agent's loop and on its own handles to the pinned
//! maps; a pass that changed something is logged, maps not (yet) pinned only at debug.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries found.
    pub entries: usize,
    /// Deleted: expired.
    pub expired: usize,
    /// Deleted: their endpoint no longer exists (or no longer has what the table is for).
    pub orphaned: usize,
    /// Per-endpoint counts rewritten or removed.
    pub recounted: usize,
}

/// The counts to write: `Some(n)` rewrite, `None` remove (the endpoint is gone and holds
/// nothing). Only counts that did not change during the pass (`before` == `after`) and
/// differ from what the table holds are touched.
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

/// Why an entry of endpoint `ep` goes, if it does: `"orphaned"` when `ep` is not in
/// `live_eps`, else `"expired"` when the sweep's own rule says so.
pub fn why(ep: u32, live_eps: &BTreeSet<u32>, expired: bool) -> Option<&'static str> {
    if !live_eps.contains(&ep) {
        Some("orphaned")
    } else if expired {
        Some("expired")
    } else {
        None
    }
}

pub(super) fn now_ns() -> u64 {
    // The datapath stamps entries with the coarse clock (`ebpf/src/clock.rs`): CLOCK_MONOTONIC
    // as of the last tick, or one tick before (`ct_age_ns` takes the lag).
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

/// One pass over `table`: every entry for which `goes(key, value, now_ns)` names a reason
/// (`"orphaned"` or another, counted as expired) is deleted, then `count` is recounted from
/// what stays (`ep_of`: the endpoint an entry counts against; `live_eps`: the endpoints
/// whose counts are kept even at zero).
pub(super) fn pass<K: aya::Pod, V: aya::Pod>(
    table: &mut HashMap<MapData, K, V>,
    count: &mut HashMap<MapData, u32, u64>,
    live_eps: &BTreeSet<u32>,
    ep_of: impl Fn(&K) -> u32,
    goes: impl Fn(&K, &V, u64) -> Option<&'static str>,
) -> Swept {
    let before = counts(count);
    let now = now_ns();
    let mut out = Swept::default();
    let mut held: BTreeMap<u32, u64> = BTreeMap::new();
    let mut gone = Vec::new();
    for (k, v) in table.iter().filter_map(Result::ok) {
        out.entries += 1;
        match goes(&k, &v, now) {
            Some(why) => gone.push((k, why == "orphaned")),
            None => *held.entry(ep_of(&k)).or_default() += 1,
        }
    }
    for (k, orphaned) in gone {
        // A failed remove: someone deleted it first (the conntrack datapath deletes the
        // expired entries it meets, and uncharges them).
        if table.remove(&k).is_ok() {
            if orphaned {
                out.orphaned += 1;
            } else {
                out.expired += 1;
            }
        }
    }
    let after = counts(count);
    for (ep, n) in recount(&before, &after, &held, live_eps) {
        let done = match n {
            Some(n) => count.insert(ep, n, 0).is_ok(),
            None => count.remove(&ep).is_ok(),
        };
        out.recounted += usize::from(done);
    }
    out
}

/// Runs `sweep` (one pass over the maps pinned under `dir`; `None`: a map could not be
/// opened) every `interval` until the process ends. `table` names the swept map in logs.
pub(super) async fn run(
    dir: PathBuf,
    interval: Duration,
    table: &'static str,
    sweep: fn(&Path) -> Option<Swept>,
) {
    let mut tick = tokio::time::interval(interval);
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
                    "swept {table}"
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("{table}: maps not pinned (yet)"),
            Err(e) => tracing::warn!("sweeping {table}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
