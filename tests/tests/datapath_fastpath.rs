//! Tier 1, differential: the established fast path (`ebpf/src/fastpath.rs`) against the full
//! evaluation it shortcuts. Two copies of the object, one with `CFG_NO_FAST_PATH`, get the same
//! endpoint, policy, host and Service addresses and conntrack entries (both tiers; fresh, due
//! for a refresh, expired; current, of an older policy, revoked, Service flows; with and
//! without their reply seen; some whose pod side is not the pod's address, which only a
//! spoofed packet can match), then the same random packets on both hooks, IPv4 and IPv6 (TCP
//! with every flag mix, UDP, ICMP, fragments, IPv4 options, IPv6 extension headers, lengths
//! that lie, spoofed and link-local sources, Service marks).
//! After every packet both must agree on the action, the counted reasons, the mark left and
//! every entry of both tiers (stamps within 0.1 s: the two runs
//! read the clock apart, while a refresh only one made would move a stamp by a second).
//!
//! Another test shows the fast path is taken at all: it answers without parsing, so the packet
//! record the last full evaluation left in `pal_scratch` is still there after it.
//!
//! Deterministic: seeds derive from `PALISADE_DIFF_SEED` (default fixed); a failure prints the
//! seed and the packet to replay it. Each test pins itself to one CPU (`BPF_PROG_TEST_RUN` runs
//! on the caller's), so both objects' per-CPU state sees every packet.

use std::collections::BTreeMap;

use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6,
    conntrack::{CT_CLOSING, CT_REVOKED, CT_SEEN_REPLY, CT_SERVICE, CtKey, CtValue},
    endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EP_NAME_RULES},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN},
    service::SVC_MARK,
    stats::{CFG_NO_FAST_PATH, Config, HostAddrKey},
    verdict::Reason,
};
use palisade_tests::{
    bpf::{
        Datapath, Prog, TEST_RUN_IFINDEX,
        frame::{self, Ext, TCP_ACK, V4, V6, V6Frag},
    },
    rng::Rng,
};

#[path = "common/tier1.rs"]
mod tier1;
use tier1::*;

const SCENARIOS: u64 = 24;
const PACKETS_PER_SCENARIO: usize = 100;
/// A scenario stops early at this age: no stamp it seeds or writes becomes due for a refresh
/// (`CT_REFRESH_NS`, 1 s) before then, so a refresh is never judged by the two runs of one
/// packet on either side of that boundary (each object reads the clock on its own).
const SCENARIO_TIME: std::time::Duration = std::time::Duration::from_millis(800);
const SEEDED_FLOWS: usize = 24;

const SVC4: [u8; 4] = [10, 96, 0, 10];
const OTHER6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6];
const SVC6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
/// Peers: two the policy allows (all ports / TCP 80 only), one it does not, the node (IPv6:
/// a link-local address), a Service address.
const PEERS: [&[u8]; 5] = [&PEER4, &OTHER4, &[10, 0, 3, 3], &NODE4, &SVC4];
const PEERS6: [&[u8]; 5] = [
    &PEER6,
    &OTHER6,
    &[0xfd, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
    &LINK_LOCAL6,
    &SVC6,
];
/// A source leaving the pod that is not the pod's, per family.
const SPOOFED4: [u8; 4] = [10, 0, 0, 99];
const SPOOFED6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99];
const PORTS: [u16; 6] = [53, 80, 443, 8080, 40000, 40001];

const TCP_PSH: u8 = 0x08;
const TCP_FLAG_MIXES: [u8; 8] = [
    TCP_ACK,
    TCP_ACK,
    TCP_PSH | TCP_ACK,
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    0,
];

fn now_ns() -> u64 {
    palisade_tests::bpf::coarse_now_ns().expect("reading the coarse clock")
}

/// One object loaded with the endpoint and policy; `full` turns the fast path off.
fn load(full: bool, ep_flags: u32) -> Datapath {
    let mut dp = Datapath::load().expect("loading the datapath");
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(ep_flags, POLICY_A))
        .expect("seeding the endpoint");
    let flags = if full { CFG_NO_FAST_PATH } else { 0 };
    dp.set_config(Config { flags, _pad: 0 })
        .expect("writing the configuration");
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        allow_peer(&mut dp, POLICY_A, dir, &PEER4, 32, all_ports(11));
        allow_peer(&mut dp, POLICY_A, dir, &OTHER4, 32, portset(PORTSET));
        allow_peer(&mut dp, POLICY_A, dir, &PEER6, 128, all_ports(11));
        allow_peer(&mut dp, POLICY_A, dir, &OTHER6, 128, portset(PORTSET));
    }
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 80, 16, 12);
    seed_node_host(&mut dp);
    for (family, addr_be) in [(FAMILY_V4, addr16(&SVC4)), (FAMILY_V6, SVC6)] {
        dp.add_service(HostAddrKey {
            family,
            _pad: [0; 3],
            addr_be,
        })
        .expect("seeding a Service address");
    }
    dp
}

/// A flow as the table keys it: admitted in `dir` from `src` to `dst` (one of them the pod).
#[derive(Clone, Copy, Debug)]
struct Flow {
    dir: u8,
    proto: u8,
    /// 4 bytes (IPv4) or 16 (IPv6).
    peer: &'static [u8],
    /// The pod's address, or (an entry no packet of the pod can have made) another one.
    pod: &'static [u8],
    pod_port: u16,
    peer_port: u16,
}

impl Flow {
    fn random(rng: &mut Rng) -> Flow {
        let v6 = rng.chance(40);
        let icmp = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
        let pod: &'static [u8] = match (v6, rng.chance(10)) {
            (false, false) => &POD4,
            (false, true) => &SPOOFED4,
            (true, false) => &POD6,
            (true, true) => rng.pick(&[&SPOOFED6[..], &LINK_LOCAL6[..]]),
        };
        Flow {
            dir: rng.pick(&[DIR_INGRESS, DIR_EGRESS]),
            proto: rng.pick(&[IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, icmp]),
            peer: rng.pick(if v6 { &PEERS6 } else { &PEERS }),
            pod,
            pod_port: rng.pick(&PORTS),
            peer_port: rng.pick(&PORTS),
        }
    }

    fn v6(&self) -> bool {
        self.peer.len() == 16
    }

    /// (source, destination, source port, destination port) of the flow's own direction.
    fn ends(&self) -> (&'static [u8], &'static [u8], u16, u16) {
        if self.dir == DIR_INGRESS {
            (self.peer, self.pod, self.peer_port, self.pod_port)
        } else {
            (self.pod, self.peer, self.pod_port, self.peer_port)
        }
    }

    fn key(&self) -> CtKey {
        let (s, d, sp, dp) = self.ends();
        CtKey {
            ep_id: endpoint(0, POLICY_A).ep_id,
            dir: self.dir,
            proto: self.proto,
            family: if self.v6() { FAMILY_V6 } else { FAMILY_V4 },
            _pad: 0,
            saddr_be: addr16(s),
            daddr_be: addr16(d),
            sport_be: sp.to_be_bytes(),
            dport_be: dp.to_be_bytes(),
        }
    }
}

/// Seeds a random flow in both objects, the same entry: its tier, flags, policy generation
/// and age.
fn seed_flow(rng: &mut Rng, dps: [&mut Datapath; 2], now: u64) -> Flow {
    let flow = Flow::random(rng);
    let mut flags = 0;
    for (bit, percent) in [
        (CT_SEEN_REPLY, 80),
        (CT_CLOSING, 10),
        (CT_SERVICE, 10),
        (CT_REVOKED, 10),
    ] {
        if rng.chance(percent) {
            flags |= bit;
        }
    }
    let gen_ = endpoint(0, POLICY_A).policy_gen;
    let value = CtValue {
        // Fresh (stamped 0.9 s ahead, which counts as age 0: a refresh is ~1.9 s away, past
        // the scenario's end), due for a refresh, expired (every timeout is under a day).
        last_seen_ns: match rng.below(10) {
            0..=5 => now + 900_000_000,
            6..=8 => now - 2_000_000_000,
            _ => now - 86_400_000_000_000,
        },
        policy_gen: if rng.chance(85) { gen_ } else { gen_ - 1 },
        flags,
        rule_ref: rng.pick(&[0, 11, 12]),
        _pad: 0,
    };
    let assured = rng.chance(70);
    for dp in dps {
        if assured {
            dp.set_assured(flow.key(), value)
                .expect("seeding pal_cta_v1");
        } else {
            dp.set_conntrack(flow.key(), value)
                .expect("seeding pal_ct_v1");
        }
    }
    flow
}

/// A packet: of a seeded flow (either way) or random; sometimes mangled.
struct Packet {
    prog: Prog,
    frame: Vec<u8>,
    mark: u32,
    what: String,
}

fn packet(rng: &mut Rng, flows: &[Flow]) -> Packet {
    let flow = if !flows.is_empty() && rng.chance(80) {
        flows[rng.below(flows.len() as u64) as usize]
    } else {
        Flow::random(rng)
    };
    // Its own direction (established) or the other (a reply).
    let reply = rng.chance(50);
    let (mut s, mut d, mut sp, mut dp) = flow.ends();
    let mut dir = flow.dir;
    if reply {
        (s, d, sp, dp) = (d, s, dp, sp);
        dir = if dir == DIR_INGRESS {
            DIR_EGRESS
        } else {
            DIR_INGRESS
        };
    }
    let prog = if dir == DIR_INGRESS {
        Prog::ToPod
    } else {
        Prog::FromPod
    };
    let mut what = format!("{prog:?} proto {} {s:?}:{sp} -> {d:?}:{dp}", flow.proto);
    if dir == DIR_EGRESS && rng.chance(5) {
        s = if flow.v6() {
            rng.pick(&[&SPOOFED6[..], &LINK_LOCAL6[..]])
        } else {
            &SPOOFED4
        };
        what += " spoofed";
    }
    let tcp_flags = rng.pick(&TCP_FLAG_MIXES);
    let l4 = match flow.proto {
        IPPROTO_TCP => {
            what += &format!(" flags {tcp_flags:#x}");
            frame::tcp(sp, dp, tcp_flags)
        }
        IPPROTO_UDP => frame::udp(sp, dp, 16),
        _ => frame::echo(flow.v6(), !reply, flow.peer_port),
    };
    let (frame, l4_off) = if flow.v6() {
        (v6_frame(rng, s, d, flow.proto, &l4, &mut what), 14 + 40)
    } else {
        (v4_frame(rng, s, d, flow.proto, &l4, &mut what), 14 + 20)
    };
    let frame = mangle(rng, frame, l4_off, flow.proto, &mut what);
    // Entering the pod, sometimes as a Service packet translated to it (judged first as the
    // sender's egress).
    let mark = if prog == Prog::ToPod && rng.chance(5) {
        what += " SVC_MARK";
        SVC_MARK
    } else {
        0
    };
    Packet {
        prog,
        frame,
        mark,
        what,
    }
}

/// An IPv4 frame, sometimes with options, as a fragment, or with a total length that lies.
fn v4_frame(rng: &mut Rng, s: &[u8], d: &[u8], proto: u8, l4: &[u8], what: &mut String) -> Vec<u8> {
    let mut ip = V4::new(
        s.try_into().expect("IPv4"),
        d.try_into().expect("IPv4"),
        proto,
    );
    match rng.below(24) {
        0 => {
            ip.ihl = 6;
            *what += " options";
        }
        1 => {
            ip.more_fragments = true;
            *what += " first fragment";
        }
        2 => {
            ip.frag_offset = 8;
            *what += " later fragment";
        }
        3 => {
            ip.total_len = Some(20);
            *what += " total length 20";
        }
        4 => {
            ip.total_len = Some(1400);
            *what += " total length past the frame";
        }
        5 => {
            ip.total_len = Some(0);
            *what += " total length 0";
        }
        _ => {}
    }
    let mut frame = ip.frame(l4);
    if rng.chance(3) {
        // Don't-fragment set: not a fragment.
        frame[14 + 6] |= 0x40;
        *what += " DF";
    }
    frame
}

/// An IPv6 frame, sometimes with an extension header, as a fragment, or with a payload
/// length that lies.
fn v6_frame(rng: &mut Rng, s: &[u8], d: &[u8], proto: u8, l4: &[u8], what: &mut String) -> Vec<u8> {
    let mut ip = V6::new(
        s.try_into().expect("IPv6"),
        d.try_into().expect("IPv6"),
        proto,
    );
    match rng.below(24) {
        0 => {
            // Hop-by-hop options.
            ip.ext.push(Ext { kind: 0, len8: 0 });
            *what += " hop-by-hop header";
        }
        1 => {
            ip.frag = Some(V6Frag {
                offset: 0,
                more: true,
                id: 7,
            });
            *what += " first fragment";
        }
        2 => {
            ip.frag = Some(V6Frag {
                offset: 0,
                more: false,
                id: 7,
            });
            *what += " atomic fragment";
        }
        3 => {
            ip.payload_len = Some(4);
            *what += " payload length 4";
        }
        4 => {
            ip.payload_len = Some(1400);
            *what += " payload length past the frame";
        }
        5 => {
            ip.payload_len = Some(0);
            *what += " payload length 0";
        }
        _ => {}
    }
    ip.frame(l4)
}

/// Sometimes breaks a frame: a short TCP data offset, a truncation, another ethertype, the
/// wrong IP version.
fn mangle(
    rng: &mut Rng,
    mut frame: Vec<u8>,
    l4_off: usize,
    proto: u8,
    what: &mut String,
) -> Vec<u8> {
    match rng.below(30) {
        0 if proto == IPPROTO_TCP && frame.len() > l4_off + 12 => {
            // TCP data offset 4 (shorter than the fixed header).
            frame[l4_off + 12] = 4 << 4;
            *what += " data offset 4";
        }
        1 => {
            frame.truncate(l4_off + 10);
            *what += " truncated";
        }
        2 => {
            frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
            *what += " VLAN ethertype";
        }
        3 => {
            // IPv4 with version 6, IPv6 with version 4.
            frame[14] ^= 0x20;
            *what += " the other IP version";
        }
        // (`BPF_PROG_TEST_RUN` refuses an IPv6 ethertype on a frame shorter than its header.)
        4 if frame.len() >= 14 + 40 => {
            // The other family's ethertype.
            frame[12..14]
                .copy_from_slice(&if l4_off == 14 + 40 { 0x0800u16 } else { 0x86dd }.to_be_bytes());
            *what += " the other ethertype";
        }
        _ => {}
    }
    frame
}

/// A conntrack entry as compared: (policy_gen, flags, rule_ref, stamp).
type Entry = (u32, u32, u32, u64);

/// Both tiers, keyed by (tier, the key's bytes).
fn table(dp: &Datapath) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    // `conntrack()` lists the LRU's entries first.
    let all = dp.conntrack().expect("reading both conntrack tiers");
    let lru = all.len() - dp.assured().expect("reading pal_cta_v1").len();
    for (i, (k, v)) in all.into_iter().enumerate() {
        let mut id = vec![u8::from(i >= lru)];
        id.extend_from_slice(&key_bytes(&k));
        out.insert(id, (v.policy_gen, v.flags, v.rule_ref, v.last_seen_ns));
    }
    out
}

fn key_bytes(k: &CtKey) -> Vec<u8> {
    let mut b = vec![k.dir, k.proto, k.family];
    b.extend_from_slice(&k.ep_id.to_be_bytes());
    b.extend_from_slice(&k.saddr_be);
    b.extend_from_slice(&k.daddr_be);
    b.extend_from_slice(&k.sport_be);
    b.extend_from_slice(&k.dport_be);
    b
}

/// Stamps written by the two runs of one packet differ by the time between them (and a tick
/// of each object's cached clock); a refresh one side made and the other did not moves a
/// stamp at least a second.
const STAMP_SLACK_NS: u64 = 100_000_000;

fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            (a.0, a.1, a.2) == (b.0, b.1, b.2) && a.3.abs_diff(b.3) < STAMP_SLACK_NS
        }
        (None, None) => true,
        _ => false,
    }
}

/// What one run did: the TC action, the mark left, the packets counted per direction and
/// reason. (Flow events follow from the verdict: the fast path's two reasons emit none. Their
/// number is not compared: the rate limit of drop events depends on when each run happened.)
#[derive(Debug, PartialEq)]
struct Outcome {
    action: u32,
    mark: u32,
    counted: Vec<(u8, &'static str)>,
}

fn counts(dp: &Datapath) -> [Vec<u64>; 2] {
    [DIR_INGRESS, DIR_EGRESS].map(|d| dp.packet_counts(d).expect("reading the counters"))
}

fn outcome(dp: &mut Datapath, p: &Packet) -> Outcome {
    let before = counts(dp);
    let (action, mark) = dp
        .run_with_mark(p.prog, &p.frame, p.mark, TEST_RUN_IFINDEX)
        .unwrap_or_else(|e| panic!("running the program on {}: {e:#}", p.what));
    let after = counts(dp);
    let mut counted = Vec::new();
    for (d, dir) in [DIR_INGRESS, DIR_EGRESS].into_iter().enumerate() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            if after[d][i] != before[d][i] {
                counted.push((dir, r.name()));
            }
        }
    }
    Outcome {
        action,
        mark,
        counted,
    }
}

#[test]
fn privileged_fast_path_agrees_with_the_full_evaluation() {
    if !palisade_tests::require_privileges("privileged_fast_path_agrees_with_the_full_evaluation") {
        return;
    }
    stay_on_this_cpu();
    let base: u64 = std::env::var("PALISADE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xfa57);
    let (mut fast_passes, mut compared) = (0, 0);
    // Loaded once (each load verifies the programs); each scenario sets the endpoint and
    // starts from empty conntrack tiers. The fragment table carries over, the same in both.
    let (mut full, mut fast) = (load(true, 0), load(false, 0));
    for scenario in 0..SCENARIOS {
        let seed = base.wrapping_add(scenario);
        let mut rng = Rng::new(seed);
        let mut ep_flags = 0;
        for (bit, percent) in [
            (EP_INGRESS_ISOLATED, 50),
            (EP_EGRESS_ISOLATED, 50),
            (EP_NAME_RULES, 15),
        ] {
            if rng.chance(percent) {
                ep_flags |= bit;
            }
        }
        for dp in [&mut full, &mut fast] {
            dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(ep_flags, POLICY_A))
                .expect("setting the endpoint");
            dp.clear_conntrack().expect("emptying the conntrack tiers");
        }
        let now = now_ns();
        let started = std::time::Instant::now();
        let mut flows = Vec::new();
        for _ in 0..SEEDED_FLOWS {
            flows.push(seed_flow(&mut rng, [&mut full, &mut fast], now));
        }
        for i in 0..PACKETS_PER_SCENARIO {
            if started.elapsed() > SCENARIO_TIME {
                break;
            }
            let p = packet(&mut rng, &flows);
            let a = outcome(&mut full, &p);
            let b = outcome(&mut fast, &p);
            let context = format!(
                "seed {seed} (PALISADE_DIFF_SEED={base}, scenario {scenario}), packet {i}: {} \
                 (endpoint flags {ep_flags:#x})",
                p.what
            );
            assert_eq!(a, b, "{context}: full evaluation vs fast path");
            let (ta, tb) = (table(&full), table(&fast));
            let differ: Vec<_> = ta
                .keys()
                .chain(tb.keys())
                .filter(|k| !same(ta.get(*k), tb.get(*k)))
                .map(|k| (k, ta.get(k), tb.get(k)))
                .collect();
            assert!(
                differ.is_empty(),
                "{context}: conntrack entries differ ([tier, dir, proto, family, ep_id, \
                 addresses, ports]: (policy_gen, flags, rule_ref, stamp), full vs fast path): \
                 {differ:?}"
            );
            compared += 1;
            let ct = [Reason::CT_ESTABLISHED.name(), Reason::CT_REPLY.name()];
            if a.counted.iter().any(|(_, r)| ct.contains(r)) {
                fast_passes += 1;
            }
        }
    }
    eprintln!("{compared} packets compared, {fast_passes} passed as established or reply");
    // The scenarios must reach the fast path's case often, or they prove little.
    assert!(
        fast_passes * 5 > compared,
        "only {fast_passes} of {compared} packets passed as established or reply"
    );
}

/// Whether `haystack` holds `needle` anywhere.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn privileged_a_packet_of_an_assured_flow_is_answered_before_parsing() {
    if !palisade_tests::require_privileges(
        "privileged_a_packet_of_an_assured_flow_is_answered_before_parsing",
    ) {
        return;
    }
    let cpu = stay_on_this_cpu();
    // A source address nothing else in the scratch entry holds.
    const MARKER: [u8; 4] = [10, 77, 177, 7];
    let assured = Flow {
        dir: DIR_INGRESS,
        proto: IPPROTO_TCP,
        peer: &PEER4,
        pod: &POD4,
        pod_port: 80,
        peer_port: 40000,
    };
    for (full, remembers) in [(true, false), (false, true)] {
        let mut dp = load(full, 0);
        let value = CtValue {
            last_seen_ns: now_ns(),
            policy_gen: endpoint(0, POLICY_A).policy_gen,
            flags: CT_SEEN_REPLY,
            rule_ref: 0,
            _pad: 0,
        };
        dp.set_assured(assured.key(), value)
            .expect("seeding pal_cta_v1");
        // A new flow (the endpoint is not isolated): the full evaluation parses it into the
        // scratch entry.
        let new = V4::new(MARKER, POD4, IPPROTO_UDP).frame(&frame::udp(47777, 53, 8));
        expect(&dp, Prog::ToPod, &new, Reason::NOT_ISOLATED);
        let scratch = dp.scratch_bytes(cpu).expect("reading pal_scratch");
        assert!(
            holds(&scratch, &MARKER),
            "the parsed packet is in the scratch entry"
        );
        // A packet of the assured flow.
        let (s, d, sp, dport) = assured.ends();
        let est = V4::new(s.try_into().unwrap(), d.try_into().unwrap(), IPPROTO_TCP)
            .frame(&frame::tcp(sp, dport, TCP_ACK));
        expect(&dp, Prog::ToPod, &est, Reason::CT_ESTABLISHED);
        let scratch = dp.scratch_bytes(cpu).expect("reading pal_scratch");
        assert_eq!(
            holds(&scratch, &MARKER),
            remembers,
            "fast path {}: the previous packet's record after an established packet",
            if full { "off" } else { "on" }
        );
    }
}
