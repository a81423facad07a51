//! The name maps through the whole applier, against in-memory maps.

use std::collections::BTreeSet;
use std::sync::Arc;

use palisade_common::endpoint::EP_NAME_RULES;
use palisade_common::fqdn::{DEFAULT_MAX_LEARNT_PER_POD, NAME_BYTES};
use palisade_common::stats::HostAddrKey;
use palisade_policy::fqdn::{DesiredNames, NamePatterns};

use super::super::fake::FakeMaps;
use super::super::*;

fn patterns(names: &[&str]) -> Arc<NamePatterns> {
    Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut name = [0u8; NAME_BYTES];
                name[..n.len()].copy_from_slice(n.as_bytes());
                (64 + i as u32, name, 1u32 << i)
            })
            .collect(),
    )
}

fn named(ifindex: u32, names: Option<&[&str]>) -> DesiredEndpoint {
    DesiredEndpoint {
        ifindex,
        ep_id: ifindex + 100,
        flags: if names.is_some() { EP_NAME_RULES } else { 0 },
        ipv4_be: [10, 0, 0, ifindex as u8],
        ipv6_be: [0; 16],
        entries: Arc::default(),
        names: names.map(|n| DesiredNames {
            rules: n.len() as u32,
            patterns: patterns(n),
        }),
    }
}

fn state(eps: Vec<DesiredEndpoint>) -> DesiredState {
    DesiredState {
        dns_servers: BTreeSet::from([HostAddrKey {
            family: palisade_common::FAMILY_V4,
            _pad: [0; 3],
            addr_be: [10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }]),
        endpoints: eps.into_iter().map(|d| (d.ifindex, d)).collect(),
        ..Default::default()
    }
}

/// Set ids in use by `pal_fqep_v1` == set ids present in `pal_fqname_v1`.
fn sets_consistent(m: &FakeMaps) {
    let used: BTreeSet<u32> = m.fqdn_endpoints.values().map(|f| f.name_set).collect();
    let present: BTreeSet<u32> = m
        .fqdn_names
        .keys()
        .map(|(_, k)| u32::from_be_bytes(k.name_set_be))
        .collect();
    assert_eq!(used, present);
}

/// Endpoints with equal patterns share one set; a change of patterns moves the endpoint to a
/// complete new set and the old one goes after a grace period; an endpoint losing its rules
/// or going away loses its entry; a restarted applier rewrites nothing; the DNS servers and
/// the per-pod limit are written.
#[test]
fn name_sets_are_shared_switched_whole_and_freed() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let want = state(vec![
        named(1, Some(&["a", "b"])),
        named(2, Some(&["a", "b"])),
        named(3, None),
    ]);
    assert!(a.apply(&mut m, &want).is_complete());
    assert_eq!(m.fqdn_endpoints.len(), 2);
    assert_eq!(m.fqdn_names.len(), 2, "one shared set");
    assert_eq!(m.dns_servers.len(), 1);
    let fe = m.fqdn_endpoints[&101];
    assert_eq!((fe.rules, fe.max_learnt), (2, DEFAULT_MAX_LEARNT_PER_POD));
    assert!(m.endpoints[&1].flags & EP_NAME_RULES != 0);
    sets_consistent(&m);

    // Unchanged: nothing written, also after a restart.
    let writes = m.writes;
    assert!(!a.apply(&mut m, &want).written);
    let mut b = Applier::adopt(m.pinned(), Capacity::default());
    assert!(!b.apply(&mut m, &want).written);
    assert_eq!(m.writes, writes);

    // Endpoint 1 changes patterns: a new set, written before its entry points at it.
    let want = state(vec![
        named(1, Some(&["a", "c"])),
        named(2, Some(&["a", "b"])),
        named(3, None),
    ]);
    m.history = Some(Vec::new());
    assert!(b.apply(&mut m, &want).is_complete());
    for h in m.history.take().unwrap() {
        for f in h.fqdn_endpoints.values() {
            assert!(
                h.fqdn_names
                    .keys()
                    .any(|(_, k)| u32::from_be_bytes(k.name_set_be) == f.name_set),
                "an entry points at a set not (yet or any more) written"
            );
        }
    }
    assert_eq!(m.fqdn_names.len(), 4);
    sets_consistent(&m);

    // Endpoint 2 loses its rules, endpoint 1 goes: their entries and sets go.
    let want = state(vec![named(2, None), named(3, None)]);
    assert!(b.apply(&mut m, &want).is_complete());
    assert!(
        m.fqdn_endpoints.is_empty() && m.fqdn_names.is_empty(),
        "{m:?}"
    );
    assert!(!m.grace_periods.is_empty());
}

/// A pattern set that does not fit is reported with the numbers and nothing of it is
/// written; the endpoint's entry is not written either (its names are never learnt: fails
/// closed); once room is made, it is written.
#[test]
fn a_name_set_that_does_not_fit_writes_nothing_and_is_reported() {
    let cap = Capacity {
        fqdn_names: 3,
        ..Capacity::default()
    };
    let mut m = FakeMaps::with_capacity(cap);
    let mut a = Applier::new(cap);
    let out = a.apply(
        &mut m,
        &state(vec![
            named(1, Some(&["a", "b"])),
            named(2, Some(&["c", "d"])),
        ]),
    );
    assert_eq!(out.maps.len(), 1, "{:?}", out.maps);
    let msg = out.maps[0].1.to_string();
    assert!(msg.contains("pal_fqname_v1 is full"), "{msg}");
    assert_eq!((m.fqdn_endpoints.len(), m.fqdn_names.len()), (1, 2));
    sets_consistent(&m);
    let out = a.apply(&mut m, &state(vec![named(2, Some(&["c", "d"]))]));
    assert!(out.is_complete(), "{:?}", out.maps);
    assert_eq!((m.fqdn_endpoints.len(), m.fqdn_names.len()), (1, 2));
    sets_consistent(&m);
}

/// The applier's count of `pal_fqname_v1` entries (what `Full::check` and status read) stays
/// the map's own count when a set's write fails part-way (the entries written so far are
/// deleted after a grace period, and only they are uncounted) and when deleting a retired
/// set fails part-way (the retry uncounts only what is still there).
#[test]
fn a_name_set_written_or_deleted_part_way_is_counted_as_the_map_holds_it() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let count = |a: &Applier, m: &FakeMaps| assert_eq!(a.usage().fqdn_names, m.fqdn_names.len());
    assert!(
        a.apply(&mut m, &state(vec![named(2, Some(&["x", "y"]))]))
            .is_complete()
    );
    count(&a, &m);

    // Endpoint 1's set of three: the second name's write fails (the apply deletes the half
    // set after a grace period and, with room made, writes the set again).
    let want = state(vec![
        named(1, Some(&["a", "b", "c"])),
        named(2, Some(&["x", "y"])),
    ]);
    m.fail_at = Some(m.attempts + 2);
    assert!(a.apply(&mut m, &want).is_complete());
    assert_eq!(m.fqdn_names.len(), 5);
    count(&a, &m);

    // Endpoint 1 goes: its `pal_ep_v1` entry, then its `pal_fqep_v1` entry, then its set,
    // whose second name's delete fails; the next apply finishes.
    let want = state(vec![named(2, Some(&["x", "y"]))]);
    m.fail_at = Some(m.attempts + 4);
    let out = a.apply(&mut m, &want);
    assert!(!out.maps.is_empty(), "the failure is reported: {out:?}");
    assert_eq!(m.fqdn_names.len(), 4, "one name of the set deleted");
    count(&a, &m);
    assert!(a.apply(&mut m, &want).is_complete());
    assert_eq!(m.fqdn_names.len(), 2);
    count(&a, &m);
    sets_consistent(&m);
}
