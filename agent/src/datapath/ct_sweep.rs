//! The sweep of the assured conntrack tier (`pal_cta_v1`, `palisade_common::assured`).
//!
//! Nothing evicts an assured entry: it leaves when it expires or when its endpoint goes away.
//! The datapath deletes an expired entry it meets; this sweep, every `INTERVAL` on a blocking
//! thread off the agent's loop and on its own handles to the pinned maps, deletes the expired
//! entries no packet meets any more and the entries of endpoints that no longer exist (ep_ids
//! are never reused), and recounts `pal_ctcnt_v1` (the pass and its runner: `sweeper`).
//!
//! Counts: the datapath adds and subtracts atomically while the sweep walks the map, so a
//! count is rewritten only when it did not change between the sweep's first read and its
//! write (else the next sweep fixes it). The counts of endpoints that no longer exist are
//! removed. If the agent is down, expired entries only hold budget (promotions are refused,
//! the flows stay in the LRU tier): that fails closed.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use palisade_common::conntrack::{CtKey, CtValue, ct_age_ns, idle_timeout_ns};
use palisade_common::endpoint::EndpointInfo;
use palisade_common::maps;

use super::sweeper::{self, Swept, open};

/// How often the sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Why an assured entry goes, if it does (pure: the sweep's decision).
pub fn goes(k: &CtKey, v: &CtValue, now_ns: u64, live_eps: &BTreeSet<u32>) -> Option<&'static str> {
    let idle = ct_age_ns(now_ns, v.last_seen_ns) > idle_timeout_ns(k.proto, v.flags);
    sweeper::why(k.ep_id, live_eps, idle)
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
    Some(sweeper::pass(
        &mut assured,
        &mut count,
        &live_eps,
        |k| k.ep_id,
        |k, v, now| goes(k, v, now, &live_eps),
    ))
}

/// Sweeps every `INTERVAL` until the process ends.
pub async fn run(dir: std::path::PathBuf) {
    sweeper::run(dir, INTERVAL, maps::ASSURED, sweep).await
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
}
