//! Tier 1: egress by domain name in the real datapath object (`BPF_PROG_TEST_RUN`). The maps
//! the agent writes (an endpoint with name rules, its patterns, its variant policies, the DNS
//! service's address) are seeded directly; DNS answers are crafted with the `policy` crate's
//! builder and run through `to_pod` (which tail-calls `dns_learn`), then connections through
//! `from_pod`. What the datapath learnt is read back from `pal_fqaddr_v1` and compared with
//! the pure semantics (`policy::fqdn::learn`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use palisade_agent::datapath::fqdn_sweep;
use palisade_common::{
    DIR_EGRESS, DIR_NAME_VARIANT, FAMILY_V4,
    endpoint::{EP_EGRESS_ISOLATED, EP_NAME_RULES},
    fqdn::{
        DEFAULT_MAX_LEARNT_PER_POD, FQST_ANSWERS, FQST_FULL, FQST_LEARNT, FQST_NOT_ALLOWED,
        FQST_OTHER_SERVER, FQST_POD_FULL, FQST_UNREAD, FqdnEndpoint, GRACE_SECS, LearntKey,
        LearntValue,
    },
    maps,
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    stats::HostAddrKey,
    verdict::Reason,
};
use palisade_policy::fqdn::{
    DomainPattern,
    dns::{Record, TYPE_A, TYPE_AAAA, build_compressed_response, parse_response},
    learn::learn,
};
use palisade_tests::{
    bpf::{
        Datapath, Prog, TC_ACT_OK,
        frame::{self, TCP_ACK, TCP_SYN, V4, V6},
    },
    rng::Rng,
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

const DNS4: [u8; 4] = [10, 96, 0, 10];
const EP_ID: u32 = 42;
const NAME_SET: u32 = 5;
/// Variant policies (directions of the endpoint's `POLICY_A`): name rule 0
/// (`api.example.com`, `*.cdn.example.com`: every port) and name rule 1 (`*.example.com`:
/// TCP port 80 only).
const VARIANT_0: u8 = DIR_NAME_VARIANT;
const VARIANT_1: u8 = DIR_NAME_VARIANT + 1;
const RULE_0: u32 = 9;
const RULE_1: u32 = 10;
const PORTSET_80: u32 = 8;

/// The endpoint egress-isolated with name rules; its policy allows only the DNS service (and
/// `PEER4` port 53, a resolver it may ask directly); the names are seeded as the agent writes
/// them (rule masks: a longest match carries every rule matching the name).
fn setup_names(test: &str) -> Option<Datapath> {
    setup_names_limited(test, DEFAULT_MAX_LEARNT_PER_POD)
}

/// As `setup_names`, with the per-pod limit `max_learnt`.
fn setup_names_limited(test: &str, max_learnt: u32) -> Option<Datapath> {
    let mut dp = setup(test, EP_EGRESS_ISOLATED | EP_NAME_RULES)?;
    allow_peer(&mut dp, POLICY_A, DIR_EGRESS, &DNS4, 32, all_ports(1));
    allow_peer(&mut dp, POLICY_A, DIR_EGRESS, &PEER4, 32, all_ports(2));
    for (addr, bits) in [(&[0u8; 4][..], 0), (&[0u8; 16][..], 0)] {
        allow_peer(&mut dp, POLICY_A, VARIANT_0, addr, bits, all_ports(RULE_0));
        allow_peer(
            &mut dp,
            POLICY_A,
            VARIANT_1,
            addr,
            bits,
            portset(PORTSET_80),
        );
    }
    allow_port(&mut dp, PORTSET_80, IPPROTO_TCP, 80, 16, RULE_1);
    dp.set_fqdn_endpoint(
        EP_ID,
        FqdnEndpoint {
            name_set: NAME_SET,
            rules: 2,
            max_learnt,
            _pad: 0,
        },
    )
    .expect("seeding pal_fqep_v1");
    for (pattern, rules) in [
        ("api.example.com", 0b11),
        ("*.cdn.example.com", 0b11),
        ("*.example.com", 0b10),
    ] {
        dp.add_fqdn_pattern(NAME_SET, pattern, rules)
            .expect("seeding pal_fqname_v1");
    }
    dp.add_dns_server(HostAddrKey {
        family: FAMILY_V4,
        _pad: [0; 3],
        addr_be: addr16(&DNS4),
    })
    .expect("seeding pal_dnssrv_v1");
    Some(dp)
}

fn patterns() -> Vec<DomainPattern> {
    ["api.example.com", "*.cdn.example.com", "*.example.com"]
        .iter()
        .map(|p| DomainPattern::parse(p).expect("a pattern"))
        .collect()
}

/// The pod asks `server` (UDP, from `sport`): the query passes and is tracked.
fn query(dp: &Datapath, server: [u8; 4], sport: u16) {
    let q = V4::new(POD4, server, IPPROTO_UDP).frame(&frame::udp(sport, 53, 30));
    expect(dp, Prog::FromPod, &q, Reason::POLICY_ALLOW);
}

/// `server`'s UDP answer `msg` to the pod's port `dport`: always delivered (`reason`).
fn answer(dp: &Datapath, server: [u8; 4], dport: u16, msg: &[u8], reason: Reason) {
    let mut udp = frame::udp(53, dport, msg.len());
    udp[8..].copy_from_slice(msg);
    expect(
        dp,
        Prog::ToPod,
        &V4::new(server, POD4, IPPROTO_UDP).frame(&udp),
        reason,
    );
}

/// Asks the DNS service for `question` and gets `records` back (compressed, as servers write).
fn resolve(dp: &Datapath, sport: u16, question: &str, qtype: u16, records: &[Record]) {
    query(dp, DNS4, sport);
    let msg = build_compressed_response(sport, question, qtype, records);
    answer(dp, DNS4, sport, &msg, Reason::CT_REPLY);
}

/// As `resolve`, answered with one address record of `name` itself.
fn resolve_addr(dp: &Datapath, sport: u16, name: &str, qtype: u16, ttl: u32, addr: &str) {
    resolve(dp, sport, name, qtype, &[Record::addr(name, ttl, addr)]);
}

fn connect4(dp: &Datapath, dst: [u8; 4], sport: u16, dport: u16, reason: Reason) {
    let syn = V4::new(POD4, dst, IPPROTO_TCP).frame(&frame::tcp(sport, dport, TCP_SYN));
    expect(dp, Prog::FromPod, &syn, reason);
}

/// At a limit whose refusals `slot` of `pal_fqst_v1` counts: the answer for a new name
/// (`a.cdn.example.com`) is counted there once and teaches nothing (its connection is refused:
/// fails closed for the new name only), while `203.0.113.5`, learnt before, still connects.
fn new_name_refused_learnt_kept(dp: &Datapath, slot: u32) {
    resolve_addr(dp, 40001, "a.cdn.example.com", TYPE_A, 60, "198.51.100.9");
    assert_eq!(stat(dp, slot), 1, "refusals counted in pal_fqst_v1[{slot}]");
    connect4(dp, [198, 51, 100, 9], 50000, 443, Reason::DEFAULT_DENY);
    connect4(dp, [203, 0, 113, 5], 50001, 443, Reason::POLICY_ALLOW);
}

fn learnt_addrs(dp: &Datapath) -> BTreeSet<(IpAddr, u32)> {
    dp.learnt()
        .expect("reading pal_fqaddr_v1")
        .into_iter()
        .map(|(k, v)| (ip_of(&k), v.rules))
        .collect()
}

fn ip_of(k: &LearntKey) -> IpAddr {
    if k.family == FAMILY_V4 {
        IpAddr::from([k.addr_be[0], k.addr_be[1], k.addr_be[2], k.addr_be[3]])
    } else {
        IpAddr::from(k.addr_be)
    }
}

fn stat(dp: &Datapath, slot: u32) -> u64 {
    dp.fqdn_stat(slot).expect("reading pal_fqst_v1")
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of the datapath's stamps.
fn now_ns() -> u64 {
    palisade_tests::bpf::coarse_now_ns().expect("reading the coarse monotonic clock")
}

#[test]
fn privileged_dns_answers_teach_the_asking_pod_the_addresses_of_its_allowed_names() {
    let Some(dp) = setup_names(
        "privileged_dns_answers_teach_the_asking_pod_the_addresses_of_its_allowed_names",
    ) else {
        return;
    };
    // Nothing learnt yet: refused by address.
    connect4(&dp, [203, 0, 113, 5], 50000, 443, Reason::DEFAULT_DENY);

    let before = now_ns();
    resolve(
        &dp,
        40000,
        "API.Example.com.",
        TYPE_A,
        &[Record::addr("api.example.com", 300, "203.0.113.5")],
    );
    let learnt = dp.learnt().expect("reading pal_fqaddr_v1");
    assert_eq!(learnt.len(), 1, "{learnt:?}");
    let (k, v) = learnt[0];
    assert_eq!(
        (k.ep_id, ip_of(&k), v.rules),
        (EP_ID, "203.0.113.5".parse().unwrap(), 0b11)
    );
    let ttl_ns = v.expires_ns.saturating_sub(before);
    assert!(
        (299_000_000_000..=301_000_000_000).contains(&ttl_ns),
        "expires in {ttl_ns} ns, not after the TTL of 300 s"
    );
    // The first connection after the lookup passes, by name rule 0's variant; another address
    // is still refused.
    connect4(&dp, [203, 0, 113, 5], 50001, 443, Reason::POLICY_ALLOW);
    connect4(&dp, [203, 0, 113, 6], 50002, 443, Reason::DEFAULT_DENY);

    // A CNAME chain from an allowed name: the target's address is learnt.
    resolve(
        &dp,
        40001,
        "img.cdn.example.com",
        TYPE_A,
        &[
            Record::cname("img.cdn.example.com", 600, "edge.provider.net"),
            Record::addr("edge.provider.net", 60, "198.51.100.9"),
        ],
    );
    connect4(&dp, [198, 51, 100, 9], 50003, 8443, Reason::POLICY_ALLOW);

    // Only rule 1 (`*.example.com`, TCP 80) allows `www.example.com`.
    resolve_addr(&dp, 40002, "www.example.com", TYPE_A, 60, "203.0.113.20");
    connect4(&dp, [203, 0, 113, 20], 50004, 443, Reason::DEFAULT_DENY);
    connect4(&dp, [203, 0, 113, 20], 50005, 80, Reason::POLICY_ALLOW);

    // AAAA over an IPv4 query: the IPv6 address is learnt.
    resolve_addr(&dp, 40003, "api.example.com", TYPE_AAAA, 60, "2001:db8::5");
    let dst6: [u8; 16] = "2001:db8::5"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let syn6 = V6::new(POD6, dst6, IPPROTO_TCP).frame(&frame::tcp(50006, 443, TCP_SYN));
    expect(&dp, Prog::FromPod, &syn6, Reason::POLICY_ALLOW);

    // A name the pod's rules do not allow teaches nothing.
    let not_allowed = stat(&dp, FQST_NOT_ALLOWED);
    resolve_addr(&dp, 40004, "evil.org", TYPE_A, 60, "203.0.113.66");
    assert_eq!(stat(&dp, FQST_NOT_ALLOWED), not_allowed + 1);
    connect4(&dp, [203, 0, 113, 66], 50007, 443, Reason::DEFAULT_DENY);

    let want: BTreeSet<(IpAddr, u32)> = [
        ("203.0.113.5", 0b11),
        ("198.51.100.9", 0b11),
        ("203.0.113.20", 0b10),
        ("2001:db8::5", 0b11),
    ]
    .iter()
    .map(|(a, r)| (a.parse().unwrap(), *r))
    .collect();
    assert_eq!(learnt_addrs(&dp), want);
    assert_eq!(stat(&dp, FQST_LEARNT), 4);
    assert_eq!(stat(&dp, FQST_UNREAD), 0);
}

/// The per-pod limit: at `max_learnt` entries a new address is not learnt (counted, its
/// connection refused: fails closed for the new name only); what was learnt keeps working and
/// can be refreshed.
#[test]
fn privileged_a_pod_at_its_limit_learns_no_new_address_and_keeps_what_it_learnt() {
    let Some(dp) = setup_names_limited(
        "privileged_a_pod_at_its_limit_learns_no_new_address_and_keeps_what_it_learnt",
        2,
    ) else {
        return;
    };
    resolve(
        &dp,
        40000,
        "api.example.com",
        TYPE_A,
        &[
            Record::addr("api.example.com", 60, "203.0.113.5"),
            Record::addr("api.example.com", 60, "203.0.113.6"),
        ],
    );
    assert_eq!(stat(&dp, FQST_LEARNT), 2);
    new_name_refused_learnt_kept(&dp, FQST_POD_FULL);
    // A refresh of a learnt address is not a new entry.
    resolve_addr(&dp, 40002, "api.example.com", TYPE_A, 600, "203.0.113.6");
    assert_eq!((stat(&dp, FQST_LEARNT), stat(&dp, FQST_POD_FULL)), (3, 1));
    assert_eq!(learnt_addrs(&dp).len(), 2);
    assert_eq!(dp.fqdn_count(EP_ID).expect("reading pal_fqcnt_v1"), Some(2));
}

/// The node's table full (`FQDN_LEARNT_MAX` entries): a new address is not learnt (counted
/// `FQST_FULL`, its connection refused: fails closed for the new name only); what was learnt
/// keeps working.
#[test]
fn privileged_a_full_node_table_learns_no_new_address_and_keeps_what_it_learnt() {
    let Some(mut dp) =
        setup_names("privileged_a_full_node_table_learns_no_new_address_and_keeps_what_it_learnt")
    else {
        return;
    };
    resolve_addr(&dp, 40000, "api.example.com", TYPE_A, 600, "203.0.113.5");
    // Other endpoints' entries fill the rest.
    let far = now_ns() + 600_000_000_000;
    for i in 0..maps::FQDN_LEARNT_MAX - 1 {
        let key = LearntKey::new(
            1000 + i / 1000,
            FAMILY_V4,
            addr16(&[198, 18, (i >> 8) as u8, i as u8]),
        );
        let value = LearntValue {
            expires_ns: far,
            rules: 1,
            _pad: 0,
        };
        dp.set_learnt(key, value).expect("filling pal_fqaddr_v1");
    }
    new_name_refused_learnt_kept(&dp, FQST_FULL);
}

#[test]
fn privileged_answers_from_other_resolvers_or_unasked_teach_nothing() {
    let Some(dp) = setup_names("privileged_answers_from_other_resolvers_or_unasked_teach_nothing")
    else {
        return;
    };
    let msg = build_compressed_response(
        1,
        "api.example.com",
        TYPE_A,
        &[Record::addr("api.example.com", 60, "203.0.113.5")],
    );
    // Asked directly, another resolver (which policy lets the pod reach) teaches nothing.
    query(&dp, PEER4, 41000);
    answer(&dp, PEER4, 41000, &msg, Reason::CT_REPLY);
    assert_eq!(stat(&dp, FQST_OTHER_SERVER), 1);
    // An answer nobody asked for is not a reply: not read (the pod's ingress is not isolated,
    // so it is delivered).
    answer(&dp, DNS4, 41001, &msg, Reason::NOT_ISOLATED);
    assert!(learnt_addrs(&dp).is_empty());
    assert_eq!(stat(&dp, FQST_ANSWERS), 0);
    connect4(&dp, [203, 0, 113, 5], 50000, 443, Reason::DEFAULT_DENY);
}

#[test]
fn privileged_tcp_answers_teach_and_expiry_refuses_new_flows_after_the_grace_keeps_old_ones() {
    let Some(mut dp) = setup_names(
        "privileged_tcp_answers_teach_and_expiry_refuses_new_flows_after_the_grace_keeps_old_ones",
    ) else {
        return;
    };
    // DNS over TCP: one segment carrying the 2-byte length and the message.
    let syn = V4::new(POD4, DNS4, IPPROTO_TCP).frame(&frame::tcp(42000, 53, TCP_SYN));
    expect(&dp, Prog::FromPod, &syn, Reason::POLICY_ALLOW);
    let msg = build_compressed_response(
        7,
        "a.cdn.example.com",
        TYPE_A,
        &[Record::addr("a.cdn.example.com", 30, "192.0.2.44")],
    );
    let mut seg = frame::tcp(53, 42000, TCP_ACK);
    seg.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    seg.extend_from_slice(&msg);
    expect(
        &dp,
        Prog::ToPod,
        &V4::new(DNS4, POD4, IPPROTO_TCP).frame(&seg),
        Reason::CT_REPLY,
    );
    assert_eq!(learnt_addrs(&dp).len(), 1);
    connect4(&dp, [192, 0, 2, 44], 50000, 443, Reason::POLICY_ALLOW);

    // Expired 1 s ago: a new flow is refused; the flow admitted before survives a policy
    // change (its re-check is within the grace period)...
    let key = LearntKey::new(EP_ID, FAMILY_V4, addr16(&[192, 0, 2, 44]));
    let expired = LearntValue {
        expires_ns: now_ns() - 1_000_000_000,
        rules: 0b11,
        _pad: 0,
    };
    dp.set_learnt(key, expired)
        .expect("staging an expired entry");
    connect4(&dp, [192, 0, 2, 44], 50001, 443, Reason::DEFAULT_DENY);
    dp.set_endpoint(
        palisade_tests::bpf::TEST_RUN_IFINDEX,
        endpoint(EP_EGRESS_ISOLATED | EP_NAME_RULES, POLICY_B),
    )
    .expect("switching policy");
    allow_peer(&mut dp, POLICY_B, DIR_EGRESS, &DNS4, 32, all_ports(1));
    allow_peer(&mut dp, POLICY_B, VARIANT_0, &[0; 4], 0, all_ports(RULE_0));
    let ack = V4::new(POD4, [192, 0, 2, 44], IPPROTO_TCP).frame(&frame::tcp(50000, 443, TCP_ACK));
    expect(&dp, Prog::FromPod, &ack, Reason::CT_ESTABLISHED);
    // ... and past the grace it is cut at the next re-check.
    let long_ago = LearntValue {
        expires_ns: now_ns() - (GRACE_SECS as u64 + 1) * 1_000_000_000,
        ..expired
    };
    dp.set_learnt(key, long_ago)
        .expect("staging an entry past its grace");
    dp.set_endpoint(
        palisade_tests::bpf::TEST_RUN_IFINDEX,
        endpoint(EP_EGRESS_ISOLATED | EP_NAME_RULES, POLICY_A),
    )
    .expect("switching policy back");
    expect(&dp, Prog::FromPod, &ack, Reason::POLICY_CHANGED);
}

/// The agent's sweep (`fqdn_sweep::sweep`, one pass as its periodic task runs it) on the
/// pinned maps: it deletes the entries past expiry and grace and those of an endpoint without
/// name rules (no `pal_fqep_v1` entry), keeps the others, and rewrites a count that differs
/// from what the endpoint holds; what was learnt keeps connecting, what went is refused.
#[test]
fn privileged_the_sweep_deletes_entries_past_their_grace_or_of_endpoints_without_name_rules() {
    let Some(mut dp) = setup_names(
        "privileged_the_sweep_deletes_entries_past_their_grace_or_of_endpoints_without_name_rules",
    ) else {
        return;
    };
    resolve_addr(&dp, 40000, "api.example.com", TYPE_A, 600, "203.0.113.5");
    assert_eq!(dp.fqdn_count(EP_ID).expect("reading pal_fqcnt_v1"), Some(1));
    // Staged beside it (the count does not see them): a live entry, one past its grace, and
    // one of an endpoint with no name rules.
    let now = now_ns();
    let staged = [
        (EP_ID, [192, 0, 2, 50], now + 600_000_000_000),
        (
            EP_ID,
            [192, 0, 2, 44],
            now - (GRACE_SECS as u64 + 1) * 1_000_000_000,
        ),
        (EP_ID + 1, [192, 0, 2, 60], now + 600_000_000_000),
    ];
    for (ep_id, addr, expires_ns) in staged {
        let value = LearntValue {
            expires_ns,
            rules: 0b11,
            _pad: 0,
        };
        dp.set_learnt(LearntKey::new(ep_id, FAMILY_V4, addr16(&addr)), value)
            .expect("staging pal_fqaddr_v1");
    }
    let s = fqdn_sweep::sweep(dp.pin_dir()).expect("the pinned maps open");
    // (entries, expired, orphaned, recounted)
    assert_eq!(
        (s.entries, s.expired, s.orphaned, s.recounted),
        (4, 1, 1, 1)
    );
    let kept: BTreeSet<IpAddr> = learnt_addrs(&dp).into_iter().map(|(a, _)| a).collect();
    let want_kept: BTreeSet<IpAddr> = ["203.0.113.5", "192.0.2.50"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(kept, want_kept);
    assert_eq!(dp.fqdn_count(EP_ID).expect("reading pal_fqcnt_v1"), Some(2));
    connect4(&dp, [203, 0, 113, 5], 50000, 443, Reason::POLICY_ALLOW);
    connect4(&dp, [192, 0, 2, 50], 50001, 443, Reason::POLICY_ALLOW);
    connect4(&dp, [192, 0, 2, 44], 50002, 443, Reason::DEFAULT_DENY);
    // Nothing more to do on the next pass.
    let s = fqdn_sweep::sweep(dp.pin_dir()).expect("the pinned maps open");
    assert_eq!(
        (s.entries, s.expired, s.orphaned, s.recounted),
        (2, 0, 0, 0)
    );
}

/// Random chains and mutated answers: always delivered, never a wrong lesson. From a
/// well-formed (compressed) answer the datapath learns what the pure semantics
/// (`policy::fqdn::learn`) learn whenever the question itself is allowed (it does not follow a
/// chain *to* an allowed name: it learns less, never more). From a mutated one it learns only
/// addresses written in the message, and only when the question is an allowed name.
#[test]
fn privileged_the_datapath_learns_what_the_pure_reader_learns_and_nothing_from_garbage() {
    let Some(mut dp) = setup_names(
        "privileged_the_datapath_learns_what_the_pure_reader_learns_and_nothing_from_garbage",
    ) else {
        return;
    };
    let patterns = patterns();
    let names = [
        "api.example.com",
        "x.cdn.example.com",
        "www.example.com",
        "evil.org",
        "edge.provider.net",
        "A.b.CDN.example.com",
    ];
    let mut rng = Rng::new(0xd15c);
    let mut learnt_some = 0;
    for round in 0..300u16 {
        // A chain: the question, up to 3 CNAME links, then addresses.
        let q = rng.pick(&names);
        let mut records = Vec::new();
        let mut cur = q.to_string();
        for _ in 0..rng.upto(3) {
            let next = rng.pick(&names).to_string();
            records.push(Record::cname(&cur, rng.below(1000) as u32, &next));
            cur = next;
        }
        for _ in 0..=rng.upto(3) {
            let ip = format!("192.0.2.{}", rng.below(250) + 1);
            records.push(Record::addr(&cur, rng.below(100_000) as u32, &ip));
        }
        let mut msg = build_compressed_response(round, q, TYPE_A, &records);
        let mutated = round % 3 == 0;
        if mutated {
            for _ in 0..=rng.upto(3) {
                let i = 2 + rng.upto(msg.len() - 3);
                msg[i] = rng.below(256) as u8;
            }
            if rng.chance(20) {
                msg.truncate(12 + rng.upto(msg.len() - 12));
            }
        }
        for (k, _) in dp.learnt().expect("reading pal_fqaddr_v1") {
            dp.remove_learnt(&k).expect("clearing pal_fqaddr_v1");
        }
        let sport = 20000 + round;
        query(&dp, DNS4, sport);
        let mut udp = frame::udp(53, sport, msg.len());
        udp[8..].copy_from_slice(&msg);
        let o = dp
            .run(Prog::ToPod, &V4::new(DNS4, POD4, IPPROTO_UDP).frame(&udp))
            .expect("running to_pod");
        assert_eq!(
            o.action, TC_ACT_OK,
            "round {round}: an answer is always delivered"
        );
        let got: BTreeSet<IpAddr> = learnt_addrs(&dp).into_iter().map(|(a, _)| a).collect();
        learnt_some += usize::from(!got.is_empty());
        let question_allowed = patterns.iter().any(|p| p.matches(q));
        if !mutated {
            let pure: BTreeSet<IpAddr> = match parse_response(&msg) {
                Ok(resp) if question_allowed => learn(&resp, &patterns)
                    .into_iter()
                    .map(|l| l.addr)
                    .collect(),
                _ => BTreeSet::new(),
            };
            assert_eq!(got, pure, "round {round}: {q} {records:?}");
            continue;
        }
        for addr in &got {
            let IpAddr::V4(v4) = addr else {
                panic!("round {round}: learnt {addr} from an A-only message")
            };
            assert!(
                msg.windows(4).any(|w| w == v4.octets()),
                "round {round}: learnt {addr}, which the message does not carry: {msg:02x?}"
            );
        }
        if !got.is_empty() {
            assert!(
                wire_question_allowed(&msg),
                "round {round}: learnt {got:?} for a question that is not allowed: {msg:02x?}"
            );
        }
    }
    assert!(
        learnt_some > 50,
        "only {learnt_some} rounds learnt anything"
    );
}

/// Whether the question of `msg`, read label by label as bytes (a mutation may leave bytes
/// no name in text has), is one the patterns allow: `api.example.com`, or one or more labels
/// before `cdn.example.com` or `example.com` (ASCII case-insensitive).
fn wire_question_allowed(msg: &[u8]) -> bool {
    let mut labels = Vec::new();
    let mut at = 12;
    while let Some(&l) = msg.get(at) {
        if l == 0 {
            break;
        }
        let Some(label) = msg.get(at + 1..at + 1 + l as usize) else {
            return false;
        };
        labels.push(label.to_ascii_lowercase());
        at += 1 + l as usize;
    }
    let is = |i: usize, s: &str| labels.get(i).is_some_and(|l| l == s.as_bytes());
    let n = labels.len();
    let example_com = n >= 2 && is(n - 2, "example") && is(n - 1, "com");
    (n == 3 && is(0, "api") && example_com)
        || (n >= 4 && example_com && is(n - 3, "cdn"))
        || (n >= 3 && example_com)
}
