//! The applier against in-memory maps: atomic policy switches, sharing, adoption, and what
//! holds when a write fails half-way (the k-th write fails, for every k) or a map is full.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_common::policy::{PolicyKey, PolicyValue, PortKey, PortValue};
use palisade_common::stats::{CFG_DEBUG_LOG, Config, HostAddrKey};
use palisade_common::{DIR_EGRESS, DIR_INGRESS, FAMILY_V4};

use super::fake::{Answer, FakeError, FakeMaps};
use super::*;

/// `apply_endpoint` then `commit`, as one apply of one endpoint does.
fn applied(
    a: &mut Applier,
    m: &mut FakeMaps,
    d: &DesiredEndpoint,
) -> Result<bool, ApplyError<FakeError>> {
    let r = a.apply_endpoint(m, d);
    a.commit(m);
    r
}

/// `remove_endpoint` then `commit`.
fn removed(a: &mut Applier, m: &mut FakeMaps, ifindex: u32) -> Result<(), FakeError> {
    let r = a.remove_endpoint(m, ifindex);
    a.commit(m);
    r
}

fn key(a: u8, len: u8) -> (u32, PolicyKey) {
    let mut k = PolicyKey {
        dir: DIR_INGRESS,
        family: FAMILY_V4,
        ..Default::default()
    };
    k.addr_be[..4].copy_from_slice(&[10, 0, a, 0]);
    (64 + len as u32, k)
}

fn ports(list: &[(u8, u16, u32)]) -> Allow {
    let c: PortContent = list
        .iter()
        .map(|(proto, port, rule)| {
            (
                56,
                PortKey {
                    proto: *proto,
                    port_be: port.to_be_bytes(),
                    ..Default::default()
                },
                *rule,
            )
        })
        .collect();
    Allow::Ports(Arc::new(c))
}

fn ep(ifindex: u32, entries: Vec<((u32, PolicyKey), Allow)>) -> DesiredEndpoint {
    DesiredEndpoint {
        ifindex,
        ep_id: ifindex + 100,
        flags: 1,
        ipv4_be: [10, 0, 0, ifindex as u8],
        ipv6_be: [0; 16],
        entries: Arc::new(entries.into_iter().collect()),
        names: None,
    }
}

/// The answers for a new flow from `peer` into endpoint `ifindex` on a few (protocol, port)s.
fn answers(m: &FakeMaps, ifindex: u32, peer: IpAddr) -> Vec<Answer> {
    [(6, 80), (17, 53), (6, 443), (1, 0)]
        .iter()
        .map(|(proto, port)| m.answer(ifindex, DIR_INGRESS, peer, *proto, *port))
        .collect()
}

/// Every policy entry and port entry in the maps is reachable from an endpoint, and every
/// endpoint's entries are complete.
fn assert_consistent(m: &FakeMaps) {
    let live: BTreeSet<u32> = m.endpoints.values().map(|i| i.policy_id).collect();
    for (_, k) in m.policy.keys() {
        assert!(
            live.contains(&u32::from_be_bytes(k.policy_id_be)),
            "orphan policy entry {k:?}"
        );
    }
    let used: BTreeSet<u32> = m
        .policy
        .values()
        .filter(|v| v.portset_id != 0)
        .map(|v| v.portset_id)
        .collect();
    let present: BTreeSet<u32> = m
        .ports
        .keys()
        .map(|(_, k)| u32::from_be_bytes(k.portset_id_be))
        .collect();
    assert_eq!(used, present, "port sets in use == port sets present");
}

#[test]
fn policy_change_switches_endpoint_to_a_complete_new_policy_and_frees_the_old() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    assert!(
        applied(
            &mut a,
            &mut m,
            &ep(1, vec![(key(1, 24), ports(&[(6, 80, 1)]))])
        )
        .unwrap()
    );
    let first = m.endpoints[&1].policy_id;
    assert!(
        applied(
            &mut a,
            &mut m,
            &ep(
                1,
                vec![
                    (key(2, 24), ports(&[(6, 81, 2)])),
                    (key(3, 24), Allow::All(3))
                ]
            )
        )
        .unwrap()
    );
    assert_ne!(m.endpoints[&1].policy_id, first);
    assert_eq!(m.policy.len(), 2);
    assert_eq!(m.ports.len(), 1);
    assert_consistent(&m);
}

/// Threat model: a policy rewrite under traffic. A packet copies its endpoint entry, then
/// looks its policy and port set up: one that read the old `policy_id` (or an old value's
/// `portset_id`) just before the switch must still find them, or a flow both versions allow
/// is dropped. So what a change stops referencing is deleted only after a grace period that
/// follows the switch, in a rewrite, an in-place change of a value's port set and a removal.
#[test]
fn what_a_change_stops_referencing_is_deleted_only_after_a_grace_period_after_the_switch() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let mut filler: Vec<_> = (10..30u8).map(|i| (key(i, 24), Allow::All(9))).collect();
    filler.push((key(1, 24), ports(&[(6, 80, 1)])));
    applied(&mut a, &mut m, &ep(1, filler.clone())).unwrap();
    applied(
        &mut a,
        &mut m,
        &ep(2, vec![(key(1, 24), ports(&[(6, 80, 1)]))]),
    )
    .unwrap();
    let mut in_place = filler.clone();
    in_place.last_mut().unwrap().1 = ports(&[(6, 81, 2)]);
    type Step = Box<dyn Fn(&mut Applier, &mut FakeMaps)>;
    let steps: [(&str, Step); 3] = [
        (
            "rewrite",
            Box::new(|a, m| {
                a.apply_endpoint(m, &ep(2, vec![(key(2, 24), ports(&[(6, 82, 3)]))]))
                    .unwrap();
            }),
        ),
        (
            "in place",
            Box::new(move |a, m| {
                a.apply_endpoint(m, &ep(1, in_place.clone())).unwrap();
            }),
        ),
        ("removal", Box::new(|a, m| a.remove_endpoint(m, 2).unwrap())),
    ];
    for (what, step) in steps {
        let before = m.clone();
        m.history = Some(Vec::new());
        m.grace_periods.clear();
        step(&mut a, &mut m);
        let switched = m.writes;
        // Nothing the old state held is gone before the grace period.
        for (i, state) in m.history.take().unwrap().iter().enumerate() {
            let gone_policy = before
                .policy
                .keys()
                .filter(|k| !state.policy.contains_key(*k))
                .filter(|(_, k)| {
                    // In place deletes its own keys in LPM order; only other policy ids count.
                    Some(u32::from_be_bytes(k.policy_id_be))
                        != state.endpoints.get(&1).map(|e| e.policy_id)
                })
                .count();
            let gone_ports = before
                .ports
                .keys()
                .filter(|k| !state.ports.contains_key(*k))
                .count();
            assert_eq!(
                (gone_policy, gone_ports),
                (0, 0),
                "{what}: write {i} deleted entries before any grace period"
            );
        }
        assert!(a.commit(&mut m), "{what}: something was retired");
        assert_eq!(
            m.grace_periods,
            vec![switched],
            "{what}: one grace period, before any delete"
        );
        assert_view_exact(&a, &m);
        assert_consistent(&m);
        // Nothing retired: no grace period to wait for.
        assert!(!a.commit(&mut m));
        assert_eq!(m.grace_periods.len(), 1, "{what}");
    }
}

#[test]
fn identical_port_sets_are_shared_and_freed_with_their_last_user() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let p = ports(&[(6, 80, 1), (17, 53, 1)]);
    applied(&mut a, &mut m, &ep(1, vec![(key(1, 24), p.clone())])).unwrap();
    applied(
        &mut a,
        &mut m,
        &ep(2, vec![(key(1, 24), p.clone()), (key(9, 24), p)]),
    )
    .unwrap();
    assert_eq!(m.ports.len(), 2, "one shared set of two entries");
    removed(&mut a, &mut m, 1).unwrap();
    assert_eq!(m.ports.len(), 2);
    removed(&mut a, &mut m, 2).unwrap();
    assert!(m.ports.is_empty() && m.policy.is_empty() && m.endpoints.is_empty());
}

#[test]
fn unchanged_desired_state_writes_nothing() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let d = ep(1, vec![(key(1, 24), ports(&[(6, 80, 1)]))]);
    applied(&mut a, &mut m, &d).unwrap();
    let writes = m.writes;
    assert!(!applied(&mut a, &mut m, &d).unwrap());
    assert_eq!(m.writes, writes);
}

#[test]
fn restarted_applier_adopts_pinned_state_and_rewrites_nothing_that_is_current() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let d1 = ep(
        1,
        vec![(key(1, 24), ports(&[(6, 80, 1)])), (key(4, 32), ports(&[]))],
    );
    let d2 = ep(2, vec![(key(1, 24), ports(&[(6, 80, 1)]))]);
    applied(&mut a, &mut m, &d1).unwrap();
    applied(&mut a, &mut m, &d2).unwrap();
    let before = m.clone();
    let mut b = Applier::adopt(m.pinned(), Capacity::default());
    assert!(!applied(&mut b, &mut m, &d1).unwrap());
    assert!(!applied(&mut b, &mut m, &d2).unwrap());
    assert_eq!(m.policy, before.policy);
    // A change after adoption allocates fresh ids and keeps the maps consistent.
    applied(
        &mut b,
        &mut m,
        &ep(1, vec![(key(7, 24), ports(&[(6, 80, 1)]))]),
    )
    .unwrap();
    assert_consistent(&m);
    removed(&mut b, &mut m, 2).unwrap();
    removed(&mut b, &mut m, 1).unwrap();
    assert!(m.policy.is_empty() && m.ports.is_empty());
}

#[test]
fn small_change_is_applied_in_place_with_few_writes() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let mut entries: Vec<_> = (0..100u8)
        .map(|i| (key(i, 24), ports(&[(6, 80, 1)])))
        .collect();
    applied(&mut a, &mut m, &ep(1, entries.clone())).unwrap();
    let id = m.endpoints[&1].policy_id;
    let gen0 = m.endpoints[&1].policy_gen;
    let writes = m.writes;
    entries.push((key(200, 24), Allow::All(9)));
    applied(&mut a, &mut m, &ep(1, entries)).unwrap();
    assert_eq!(m.endpoints[&1].policy_id, id, "same policy id: in place");
    assert!(
        m.endpoints[&1].policy_gen > gen0,
        "new generation: conntrack re-checks"
    );
    assert_eq!(m.writes - writes, 2, "one entry and the endpoint");
    assert_consistent(&m);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Threat model: a packet arriving while the agent updates an endpoint in place must get
    /// the old policy's answer or the new policy's answer for its address, never a mix
    /// (which could allow what neither allows, or deny a flow both allow).
    #[test]
    fn every_intermediate_state_of_an_in_place_update_answers_old_or_new(
        old in proptest::collection::btree_map((0u8..4, 0u8..4, 20u8..=32), 0u32..4, 1..12),
        new in proptest::collection::btree_map((0u8..4, 0u8..4, 20u8..=32), 0u32..4, 1..12),
    ) {
        // Nested prefixes in 10.0.0.0/20..32 over a small address space, values drawn from
        // a few port sets, "all ports" and deny.
        let to_entries = |m: &BTreeMap<(u8, u8, u8), u32>| -> Vec<((u32, PolicyKey), Allow)> {
            m.iter().map(|((b2, b3, len), v)| {
                let mut k = PolicyKey { dir: DIR_INGRESS, family: FAMILY_V4, ..Default::default() };
                let raw = u32::from_be_bytes([10, 0, *b2, *b3 * 64]);
                let mask = u32::MAX << (32 - *len as u32);
                k.addr_be[..4].copy_from_slice(&(raw & mask).to_be_bytes());
                let allow = match v {
                    0 => Allow::Ports(Arc::new(PortContent::new())),
                    1 => Allow::All(7),
                    2 => ports(&[(6, 80, 1)]),
                    _ => ports(&[(17, 53, 2), (6, 443, 3)]),
                };
                ((64 + *len as u32, k), allow)
            }).collect()
        };
        let (old_e, new_e) = (to_entries(&old), to_entries(&new));
        let mut m = FakeMaps::default();
        let mut a = Applier::new(Capacity::default());
        // A large unchanged part keeps the change below the rewrite threshold.
        let filler: Vec<_> = (0..200u8).map(|i| {
            let mut k = PolicyKey { dir: DIR_INGRESS, family: FAMILY_V4, ..Default::default() };
            k.addr_be[..4].copy_from_slice(&[192, 168, i, 0]);
            ((64 + 24, k), Allow::All(5))
        }).collect();
        let d_old = ep(1, old_e.into_iter().chain(filler.clone()).collect());
        let d_new = ep(1, new_e.into_iter().chain(filler).collect());
        applied(&mut a, &mut m, &d_old).unwrap();
        let probes: Vec<IpAddr> = (0..4u8).flat_map(|b2| (0..=255u8).step_by(16).map(move |b3| IpAddr::from([10, 0, b2, b3]))).collect();
        let before: Vec<_> = probes.iter().map(|p| answers(&m, 1, *p)).collect();
        let id = m.endpoints[&1].policy_id;
        m.history = Some(Vec::new());
        applied(&mut a, &mut m, &d_new).unwrap();
        let history = m.history.take().unwrap();
        proptest::prop_assert_eq!(m.endpoints[&1].policy_id, id, "applied in place");
        let after: Vec<_> = probes.iter().map(|p| answers(&m, 1, *p)).collect();
        for state in &history {
            for (i, p) in probes.iter().enumerate() {
                let got = answers(state, 1, *p);
                proptest::prop_assert!(got == before[i] || got == after[i],
                    "address {:?}: intermediate answer {:?} is neither old {:?} nor new {:?}", p, got, before[i], after[i]);
            }
        }
        assert_consistent(&m);
    }
}

#[test]
fn adoption_cleans_entries_left_by_a_crash_mid_apply() {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    applied(
        &mut a,
        &mut m,
        &ep(1, vec![(key(1, 24), ports(&[(6, 80, 1)]))]),
    )
    .unwrap();
    // A crash after step 3 of the next apply: new entries written, endpoint not switched.
    let mut k = key(5, 24);
    k.1.policy_id_be = 99u32.to_be_bytes();
    m.policy.insert(
        k,
        PolicyValue {
            portset_id: 42,
            ..Default::default()
        },
    );
    m.ports.insert(
        (
            56,
            PortKey {
                portset_id_be: 42u32.to_be_bytes(),
                proto: 6,
                port_be: [0, 1],
                _pad: 0,
            },
        ),
        PortValue { rule_ref: 1 },
    );
    let mut b = Applier::adopt(m.pinned(), Capacity::default());
    applied(&mut b, &mut m, &ep(2, vec![])).unwrap();
    assert_consistent(&m);
    assert_eq!(m.policy.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Whole-node applies: faults at every write, full maps.
// ---------------------------------------------------------------------------------------------

fn addr(a: [u8; 4]) -> HostAddrKey {
    let mut k = HostAddrKey {
        family: FAMILY_V4,
        ..Default::default()
    };
    k.addr_be[..4].copy_from_slice(&a);
    k
}

/// `n` entries 10.0.i.0/24 (i from `from`), cycling through a few shared port sets, "all
/// ports" and an except-hole.
fn entries(from: u8, n: u8) -> Vec<((u32, PolicyKey), Allow)> {
    (0..n)
        .map(|i| {
            let a = from.wrapping_add(i);
            let allow = match a % 5 {
                0 => Allow::All(9),
                1 => Allow::Ports(Arc::new(PortContent::new())),
                2 => ports(&[(6, 80, 1)]),
                3 => ports(&[(17, 53, 2), (6, 443, 3)]),
                _ => ports(&[(6, 80, 4), (17, 53, 4), (6, 443, 4), (6, 0, 5)]),
            };
            (key(a, 24), allow)
        })
        .collect()
}

fn with_flags(mut d: DesiredEndpoint, flags: u32) -> DesiredEndpoint {
    d.flags = flags;
    d
}

const IN: u32 = palisade_common::endpoint::EP_INGRESS_ISOLATED;
const OUT: u32 = palisade_common::endpoint::EP_EGRESS_ISOLATED;

/// Two node states covering every kind of change: an endpoint changed in place (entries added,
/// changed, deleted), one rewritten, one removed, one added, one whose flags only change, one
/// that stops being isolated in a small in-place change; Services and node addresses added and
/// removed; the config changed.
fn two_states() -> (DesiredState, DesiredState) {
    let mut old = DesiredState::default();
    let mut new = DesiredState {
        config: Config {
            flags: CFG_DEBUG_LOG,
            _pad: 0,
        },
        ..Default::default()
    };
    old.host_addrs = [addr([192, 168, 0, 1]), addr([192, 168, 0, 2])].into();
    new.host_addrs = [addr([192, 168, 0, 2]), addr([192, 168, 0, 3])].into();
    old.services = (1..=20).map(|i| addr([10, 96, 0, i])).collect();
    new.services = (10..=30).map(|i| addr([10, 96, 0, i])).collect();
    let big = entries(0, 120);
    let mut big_new = big.clone();
    big_new.retain(|(k, _)| *k != key(7, 24));
    big_new.push((key(200, 24), Allow::All(11)));
    big_new.push((key(0, 16), ports(&[(6, 8080, 12)])));
    for e in big_new
        .iter_mut()
        .filter(|(k, _)| *k == key(2, 24) || *k == key(10, 24))
    {
        e.1 = ports(&[(17, 53, 13)]);
    }
    let eps_old = [
        ep(1, big),
        ep(2, entries(130, 20)),
        ep(3, entries(160, 15)),
        with_flags(ep(4, entries(180, 10)), IN),
        with_flags(ep(5, entries(40, 60)), IN | OUT),
    ];
    let mut five = entries(40, 60);
    five[3].1 = Allow::All(14);
    let eps_new = [
        ep(1, big_new),
        ep(2, entries(210, 25)),
        with_flags(ep(4, entries(180, 10)), IN | OUT),
        with_flags(ep(5, five), OUT),
        ep(6, entries(100, 30)),
    ];
    old.endpoints = eps_old.into_iter().map(|d| (d.ifindex, d)).collect();
    new.endpoints = eps_new.into_iter().map(|d| (d.ifindex, d)).collect();
    (old, new)
}

fn probes() -> Vec<IpAddr> {
    (0..=255u8)
        .step_by(3)
        .map(|a| IpAddr::from([10, 0, a, 1]))
        .chain([IpAddr::from([10, 0, 3, 200]), IpAddr::from([192, 0, 2, 1])])
        .collect()
}

/// Every answer the maps give: per endpoint, per probe, both directions.
#[derive(Debug, PartialEq)]
struct View {
    endpoints: BTreeMap<u32, Vec<Answer>>,
    services: BTreeSet<HostAddrKey>,
    hosts: BTreeSet<HostAddrKey>,
    config: Option<Config>,
}

fn view(m: &FakeMaps) -> View {
    let probes = probes();
    let endpoints = (1..=6)
        .map(|i| {
            let mut v = Vec::new();
            for p in &probes {
                v.extend(answers(m, i, *p));
                v.push(m.answer(i, DIR_EGRESS, *p, 6, 80));
            }
            (i, v)
        })
        .collect();
    View {
        endpoints,
        services: m.services.clone(),
        hosts: m.hosts.clone(),
        config: m.config,
    }
}

/// The applier's view of the maps is their content (so nothing is leaked or forgotten).
fn assert_view_exact(a: &Applier, m: &FakeMaps) {
    let u = a.usage();
    let real = Usage {
        endpoints: m.endpoints.len(),
        policy: m.policy.len(),
        ports: m.ports.len(),
        services: m.services.len(),
        host_addrs: m.hosts.len(),
        dns_servers: m.dns_servers.len(),
        fqdn_endpoints: m.fqdn_endpoints.len(),
        fqdn_names: m.fqdn_names.len(),
    };
    assert_eq!(u, real, "the applier's count of entries equals the maps'");
    assert_eq!(
        a.ifindexes(),
        m.endpoints.keys().copied().collect::<Vec<_>>()
    );
    for (i, info) in &m.endpoints {
        assert_eq!(a.endpoint_info(*i), Some(info));
    }
}

/// Every count in `Usage` is reported under the name of its pinned map, once (`/metrics`
/// reads `Usage::entries` over `maps::PINNED_DATA`).
#[test]
fn usage_reports_each_count_under_one_pinned_map() {
    let u = Usage {
        endpoints: 1,
        policy: 2,
        ports: 3,
        services: 4,
        host_addrs: 5,
        dns_servers: 6,
        fqdn_endpoints: 7,
        fqdn_names: 8,
    };
    let mut got: Vec<usize> = maps::PINNED_DATA
        .into_iter()
        .filter_map(|m| u.entries(m))
        .collect();
    got.sort();
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
}

/// Applies `old` cleanly to fresh maps.
fn at_old(old: &DesiredState) -> (Applier, FakeMaps) {
    let mut m = FakeMaps::default();
    let mut a = Applier::new(Capacity::default());
    let out = a.apply(&mut m, old);
    assert!(out.is_complete(), "{out:?}");
    (a, m)
}

/// Threat model: lost node state. The agent's map writes fail part-way (a full or broken map,
/// a kernel out of memory) while it applies a large change. Whatever write fails, every object
/// (each endpoint's policy, each address set, the config) must be in its old or its new state
/// as a whole, never a mix that allows what neither allows; and once writes succeed again,
/// the next apply reaches the new state with no entry left behind.
#[test]
fn a_failure_at_any_write_of_a_large_change_leaves_each_object_old_or_new_and_leaks_nothing() {
    let (old, new) = two_states();
    let (mut a, mut m) = at_old(&old);
    let want_old = view(&m);
    let base = m.attempts;
    assert!(a.apply(&mut m, &new).is_complete());
    let total = m.attempts - base;
    let want_new = view(&m);
    let clean = m.content();
    assert_consistent(&m);
    assert!(total > 100, "a large change: {total} writes");
    for k in 1..=total {
        let (mut a, mut m) = at_old(&old);
        m.fail_at = Some(m.attempts + k);
        let out = a.apply(&mut m, &new);
        assert!(
            !out.is_complete() || out.leftovers > 0,
            "write {k} failed: the outcome says so (a failed object, or leftovers to delete)"
        );
        let got = view(&m);
        for (i, answers) in &got.endpoints {
            assert!(
                *answers == want_old.endpoints[i] || *answers == want_new.endpoints[i],
                "write {k} failed: endpoint {i} is neither in its old nor its new state"
            );
        }
        for (what, g, o, n) in [
            (
                "services",
                &got.services,
                &want_old.services,
                &want_new.services,
            ),
            (
                "node addresses",
                &got.hosts,
                &want_old.hosts,
                &want_new.hosts,
            ),
        ] {
            assert!(
                g == o || g == n,
                "write {k} failed: {what} neither old nor new"
            );
        }
        assert!(got.config == want_old.config || got.config == want_new.config);
        assert_view_exact(&a, &m);
        // Writes work again: the next apply completes the change and leaves nothing behind.
        let out = a.apply(&mut m, &new);
        assert!(out.is_complete(), "write {k}: retry {out:?}");
        assert_eq!(out.leftovers, 0);
        assert_eq!(
            view(&m),
            want_new,
            "write {k}: the retry reaches the new state"
        );
        assert_eq!(
            (m.policy.len(), m.ports.len(), m.endpoints.len()),
            (clean.policy.len(), clean.ports.len(), clean.endpoints.len()),
            "write {k}: no entry leaked"
        );
        assert_consistent(&m);
        assert_view_exact(&a, &m);
        // And a further apply writes nothing.
        let before = m.attempts;
        assert!(!a.apply(&mut m, &new).written);
        assert_eq!(m.attempts, before);
    }
}

/// The same with a map that stays broken from the k-th write on (undo writes fail too): every
/// packet still gets its old or its new answer, and once the map works again nothing leaks.
#[test]
fn a_map_broken_from_any_write_on_still_answers_old_or_new_per_packet_and_recovers() {
    let (old, new) = two_states();
    let (mut a, mut m) = at_old(&old);
    let want_old = view(&m);
    let base = m.attempts;
    a.apply(&mut m, &new);
    let total = m.attempts - base;
    let want_new = view(&m);
    let clean = m.content();
    for k in 1..=total {
        let (mut a, mut m) = at_old(&old);
        m.fail_from = Some(m.attempts + k);
        a.apply(&mut m, &new);
        let got = view(&m);
        for (i, answers) in &got.endpoints {
            for (j, g) in answers.iter().enumerate() {
                let (o, n) = (&want_old.endpoints[i][j], &want_new.endpoints[i][j]);
                assert!(
                    g == o || g == n,
                    "broken from write {k}: endpoint {i} probe {j}: {g:?} is neither {o:?} nor {n:?}"
                );
            }
        }
        for (g, o, n) in [
            (&got.services, &want_old.services, &want_new.services),
            (&got.hosts, &want_old.hosts, &want_new.hosts),
        ] {
            assert!(g.iter().all(|x| o.contains(x) || n.contains(x)));
            assert!(o.intersection(n).all(|x| g.contains(x)));
        }
        assert_view_exact(&a, &m);
        m.fail_from = None;
        let out = a.apply(&mut m, &new);
        assert!(out.is_complete(), "broken from write {k}: retry {out:?}");
        assert_eq!(view(&m), want_new);
        assert_eq!(
            (m.policy.len(), m.ports.len()),
            (clean.policy.len(), clean.ports.len()),
            "broken from write {k}: no entry leaked"
        );
        assert_consistent(&m);
        assert_view_exact(&a, &m);
    }
}

/// Threat model: a hostile tenant. A policy too big for what is left of `pal_pol_v1`, or more
/// Service addresses than `pal_svc_v1` holds, must be refused before anything is written,
/// with the numbers, while every other object is applied.
#[test]
fn a_change_that_does_not_fit_writes_nothing_of_it_and_the_rest_is_applied() {
    let cap = Capacity {
        policy: 100,
        ports: 50,
        services: 8,
        ..Capacity::default()
    };
    let mut m = FakeMaps::with_capacity(cap);
    let mut a = Applier::new(cap);
    let mut want = DesiredState::default();
    want.endpoints.insert(1, ep(1, entries(0, 60)));
    want.endpoints.insert(2, ep(2, entries(100, 30)));
    assert!(a.apply(&mut m, &want).is_complete());
    // Endpoint 3 needs 30 entries; 2 are free once endpoint 2 grew.
    want.endpoints.insert(3, ep(3, entries(150, 30)));
    // Endpoint 2 grows within what is free.
    want.endpoints.insert(2, ep(2, entries(100, 38)));
    want.services = (1..=9).map(|i| addr([10, 96, 0, i])).collect();
    let out = a.apply(&mut m, &want);
    let full = |e: &ApplyError<_>| match e {
        ApplyError::Full(f) => f.clone(),
        ApplyError::Map(e) => panic!("a map write was tried and failed: {e}"),
    };
    assert_eq!(out.endpoints.len(), 1, "{out:?}");
    assert_eq!(
        full(&out.endpoints[&3]),
        Full {
            map: palisade_common::maps::POLICY,
            needed: 30,
            free: 2,
            capacity: 100
        }
    );
    assert_eq!(out.maps.len(), 1);
    assert_eq!(out.maps[0].0, palisade_common::maps::SERVICES);
    assert_eq!(full(&out.maps[0].1).needed, 9);
    assert!(
        !m.endpoints.contains_key(&3),
        "nothing of endpoint 3 was written"
    );
    assert!(m.services.is_empty(), "no Service address was written");
    assert_eq!(
        a.endpoint_info(2).map(|i| i.policy_id),
        Some(m.endpoints[&2].policy_id)
    );
    assert_eq!(m.policy.len(), 98);
    assert_consistent(&m);
    assert_view_exact(&a, &m);
    // Once endpoint 1 shrinks (in place: a rewrite would need room for both), endpoint 3 fits.
    want.endpoints.insert(1, ep(1, entries(0, 20)));
    want.services.pop_last();
    let out = a.apply(&mut m, &want);
    assert!(out.is_complete(), "{out:?}");
    assert_eq!(m.policy.len(), 88);
    assert_eq!(m.services.len(), 8);
    assert_consistent(&m);
}

/// A rewrite needs room for both the old and the new entries of the endpoint until it
/// switches; when only an in-place change fits, that is used; when neither fits, the change is
/// refused whole and the old policy stays.
#[test]
fn a_change_is_applied_in_place_when_a_rewrite_does_not_fit_and_refused_when_neither_does() {
    let cap = Capacity {
        policy: 50,
        ..Capacity::default()
    };
    let mut m = FakeMaps::with_capacity(cap);
    let mut a = Applier::new(cap);
    applied(&mut a, &mut m, &ep(1, entries(0, 40))).unwrap();
    let id = m.endpoints[&1].policy_id;
    let err = a
        .apply_endpoint(&mut m, &ep(1, entries(100, 40)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::Full(Full {
                needed: 40,
                free: 10,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(m.endpoints[&1].policy_id, id);
    assert_eq!(m.policy.len(), 40);
    // Drop 20, add 5: a rewrite would need 25 new entries at once, in place needs 5.
    let mut smaller = entries(0, 20);
    smaller.extend(entries(100, 5));
    applied(&mut a, &mut m, &ep(1, smaller)).unwrap();
    assert_eq!(m.endpoints[&1].policy_id, id, "applied in place");
    assert_eq!(m.policy.len(), 25);
    assert_consistent(&m);
    assert_view_exact(&a, &m);
}
