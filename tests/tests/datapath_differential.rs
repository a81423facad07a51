//! Tier 1, differential: random endpoint policies written straight into the maps and random
//! (sometimes malformed) packets, each run through the kernel and through a small Rust model
//! of the datapath (LPM lookups, conntrack, fragment tracking) that ends in the same
//! `palisade_common::decide::decide`. Every verdict must agree.
//!
//! Deterministic: scenario seeds derive from `PALISADE_DIFF_SEED` (default fixed); a failure
//! prints the seed and the packet history to replay it.

use std::collections::HashMap;

use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6,
    conntrack::{CtKey, FragKey},
    decide::{CtMatch, Facts, decide, restorable, restore, tcp_mid_stream},
    endpoint::{EP_EGRESS_ISOLATED, EP_HAS_V4, EP_HAS_V6, EP_INGRESS_ISOLATED, EndpointInfo},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{
        POL_ALL_PORTS, PORT_KEY_ANY_PORT_BITS, PORT_KEY_ANY_PROTO_BITS, PORT_KEY_FULL_BITS,
        PolicyKey, PolicyValue, PortKey, PortValue, policy_prefixlen,
    },
    stats::HostAddrKey,
    verdict::{Reason, Verdict},
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, Ext, V4, V6, V6Frag},
};

const SCENARIOS: u64 = 40;
const PACKETS_PER_SCENARIO: usize = 120;

use palisade_tests::rng::Rng;

const POD4: [u8; 4] = [10, 0, 0, 2];
const POD6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const NODE4: [u8; 4] = [192, 168, 0, 10];
const PEERS4: [[u8; 4]; 6] = [
    [10, 0, 1, 1],
    [10, 0, 1, 2],
    [10, 0, 1, 130],
    [10, 0, 2, 1],
    [10, 1, 0, 1],
    NODE4,
];
const PEERS6: [[u8; 16]; 3] = [
    [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];
const PORTS: [u16; 8] = [53, 80, 443, 8000, 8002, 8004, 9999, 0];
const SPORTS: [u16; 3] = [1000, 1001, 40000];
const PROTOS: [u8; 5] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMP, 47];

fn addr16(a: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..a.len()].copy_from_slice(a);
    out
}

fn mask(bytes: &mut [u8], bits: u32) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let start = (i as u32) * 8;
        if start >= bits {
            *b = 0;
        } else if bits - start < 8 {
            *b &= 0xffu8 << (8 - (bits - start));
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    mask(&mut a, bits);
    mask(&mut b, bits);
    a == b
}

fn pol_bytes(k: &PolicyKey) -> Vec<u8> {
    let mut v = k.policy_id_be.to_vec();
    v.extend_from_slice(&[k.dir, k.family, 0, 0]);
    v.extend_from_slice(&k.addr_be);
    v
}

fn port_bytes(k: &PortKey) -> Vec<u8> {
    let mut v = k.portset_id_be.to_vec();
    v.push(k.proto);
    v.extend_from_slice(&k.port_be);
    v.push(0);
    v
}

/// Longest prefix match among `entries` whose prefix length is at most `max_bits`.
fn lpm<V: Copy>(entries: &[(u32, Vec<u8>, V)], key: &[u8], max_bits: u32) -> Option<V> {
    entries
        .iter()
        .filter(|(bits, k, _)| *bits <= max_bits && prefix_eq(k, key, *bits))
        .max_by_key(|(bits, _, _)| *bits)
        .map(|(_, _, v)| *v)
}

/// A packet the generator can build, with what the model needs to know about it.
#[derive(Clone, Debug)]
struct Spec {
    prog: Prog,
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    /// 0 none, 1 first fragment, 2 later fragment.
    frag: u8,
    frag_id: u16,
    malformed: Option<Malformed>,
}

#[derive(Clone, Copy, Debug)]
enum Malformed {
    BadIhl,
    UnknownEthertype,
    TruncatedL4,
    TooManyExtHeaders,
}

impl Spec {
    fn frame(&self) -> Vec<u8> {
        match self.malformed {
            Some(Malformed::UnknownEthertype) => return frame::eth(0x88cc, &[0u8; 46]),
            Some(Malformed::TooManyExtHeaders) => {
                let p = V6 {
                    ext: vec![Ext { kind: 60, len8: 0 }; 9],
                    ..V6::new(self.src, self.dst, IPPROTO_UDP)
                };
                return p.frame(&frame::udp(self.sport, self.dport, 0));
            }
            _ => {}
        }
        let l4 = if self.frag == 2 {
            vec![0u8; 16]
        } else {
            let mut l4 = match self.proto {
                IPPROTO_TCP => frame::tcp(self.sport, self.dport, frame::TCP_ACK),
                IPPROTO_UDP => frame::udp(self.sport, self.dport, 8),
                IPPROTO_SCTP => frame::sctp(self.sport, self.dport),
                IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                    // Echo: a request is keyed (id, 0), a reply (0, id).
                    let request = self.dport == 0;
                    frame::echo(
                        self.family == FAMILY_V6,
                        request,
                        if request { self.sport } else { self.dport },
                    )
                }
                _ => vec![0u8; 8],
            };
            if matches!(self.malformed, Some(Malformed::TruncatedL4)) {
                l4.truncate(3);
            }
            l4
        };
        if self.family == FAMILY_V4 {
            let mut h = V4::new(
                self.src[..4].try_into().expect("4 bytes"),
                self.dst[..4].try_into().expect("4 bytes"),
                self.proto,
            );
            h.id = self.frag_id;
            h.more_fragments = self.frag == 1;
            h.frag_offset = if self.frag == 2 { 4 } else { 0 };
            if matches!(self.malformed, Some(Malformed::BadIhl)) {
                h.ihl = 3;
            }
            h.frame(&l4)
        } else {
            let mut h = V6::new(self.src, self.dst, self.proto);
            if self.frag != 0 {
                h.frag = Some(V6Frag {
                    offset: if self.frag == 2 { 4 } else { 0 },
                    more: self.frag == 1,
                    id: self.frag_id as u32,
                });
            }
            h.frame(&l4)
        }
    }
}

/// The model's `policy_gen` of a revoked flow (`CT_REVOKED`): equal to no endpoint's.
const REVOKED: u32 = u32::MAX;

/// The model: map contents as the test wrote them, plus the state the datapath keeps.
#[derive(Default)]
struct Model {
    ep: EndpointInfo,
    policy: Vec<(u32, Vec<u8>, PolicyValue)>,
    ports: Vec<(u32, Vec<u8>, PortValue)>,
    hosts: Vec<[u8; 16]>,
    ct: HashMap<CtKey, (u32, u32)>,
    frags: HashMap<FragKey, (u16, u16)>,
}

fn ct_key(ep_id: u32, dir: u8, s: &Spec, reversed: bool) -> CtKey {
    let (saddr, daddr, sport, dport) = if reversed {
        (s.dst, s.src, s.dport, s.sport)
    } else {
        (s.src, s.dst, s.sport, s.dport)
    };
    CtKey {
        ep_id,
        dir,
        proto: s.proto,
        family: s.family,
        _pad: 0,
        saddr_be: saddr,
        daddr_be: daddr,
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
    }
}

fn frag_key(ep_id: u32, dir: u8, s: &Spec) -> FragKey {
    FragKey {
        ep_id,
        id: s.frag_id as u32,
        dir,
        proto: s.proto,
        family: s.family,
        _pad: 0,
        saddr_be: s.src,
        daddr_be: s.dst,
    }
}

impl Model {
    fn allow_rule(&self, dir: u8, k: &CtKey, ports_known: bool) -> u32 {
        let bits = if k.family == FAMILY_V4 { 32 } else { 128 };
        let peer = if dir == DIR_INGRESS {
            k.saddr_be
        } else {
            k.daddr_be
        };
        let pk = PolicyKey {
            policy_id_be: self.ep.policy_id.to_be_bytes(),
            dir,
            family: k.family,
            _pad: [0; 2],
            addr_be: peer,
        };
        let Some(pv) = lpm(&self.policy, &pol_bytes(&pk), policy_prefixlen(bits)) else {
            return 0;
        };
        if pv.flags & POL_ALL_PORTS != 0 {
            return pv.rule_ref;
        }
        if pv.portset_id == 0 {
            return 0;
        }
        let port = if matches!(k.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
            k.dport_be
        } else {
            [0; 2]
        };
        let key = PortKey {
            portset_id_be: pv.portset_id.to_be_bytes(),
            proto: k.proto,
            port_be: port,
            _pad: 0,
        };
        let max = if ports_known {
            PORT_KEY_FULL_BITS
        } else {
            PORT_KEY_ANY_PORT_BITS
        };
        lpm(&self.ports, &port_bytes(&key), max).map_or(0, |v| v.rule_ref)
    }

    fn isolated(&self, dir: u8) -> bool {
        let bit = if dir == DIR_INGRESS {
            EP_INGRESS_ISOLATED
        } else {
            EP_EGRESS_ISOLATED
        };
        self.ep.flags & bit != 0
    }

    /// The verdict the datapath must give `s`, updating the model's state as it would.
    fn eval(&mut self, s: &Spec) -> Verdict {
        let dir = s.prog.dir();
        match s.malformed {
            Some(Malformed::UnknownEthertype) => return Verdict::drop(Reason::UNKNOWN_L3),
            Some(Malformed::TooManyExtHeaders) => {
                return Verdict::drop(Reason::EXT_HEADERS_TOO_LONG);
            }
            Some(Malformed::BadIhl) => return Verdict::drop(Reason::BAD_HEADER),
            Some(Malformed::TruncatedL4) if s.frag != 2 && s.proto != 47 => {
                return Verdict::drop(Reason::BAD_HEADER);
            }
            _ => {}
        }
        let ep_id = self.ep.ep_id;
        let mut s = s.clone();
        let mut ports_known = true;
        if s.frag == 2 {
            match self.frags.get(&frag_key(ep_id, dir, &s)) {
                Some(&(sp, dp)) => {
                    s.sport = sp;
                    s.dport = dp;
                }
                None => {
                    s.sport = 0;
                    s.dport = 0;
                    ports_known = false;
                }
            }
        }
        let own = if s.family == FAMILY_V4 {
            addr16(&POD4)
        } else {
            POD6
        };
        let spoofed = dir == DIR_EGRESS && s.src != own;
        let peer = if dir == DIR_INGRESS { s.src } else { s.dst };
        let peer_is_host = !spoofed && self.hosts.contains(&peer);
        if spoofed || peer_is_host {
            return decide(&Facts {
                spoofed,
                peer_is_host,
                ct: CtMatch::New,
                ct_current: false,
                isolated: false,
                allow_rule: 0,
                untracked_fragment: false,
            });
        }
        let other = if dir == DIR_INGRESS {
            DIR_EGRESS
        } else {
            DIR_INGRESS
        };
        let own_key = ct_key(ep_id, dir, &s, false);
        let rev_key = ct_key(ep_id, other, &s, true);
        let (ct, key) = if self.ct.contains_key(&own_key) {
            (CtMatch::Established, own_key)
        } else if self.ct.contains_key(&rev_key) {
            (CtMatch::Reply, rev_key)
        } else {
            (CtMatch::New, own_key)
        };
        let tracked = ct != CtMatch::New;
        let ct_current = tracked && self.ct[&key].0 == self.ep.policy_gen;
        let iso = self.isolated(key.dir);
        let allow_rule = if iso && !ct_current {
            self.allow_rule(key.dir, &key, ports_known || tracked)
        } else {
            0
        };
        let facts = Facts {
            spoofed: false,
            peer_is_host: false,
            ct,
            ct_current,
            isolated: iso,
            allow_rule,
            untracked_fragment: !ports_known,
        };
        let mut v = decide(&facts);
        let mut key = key;
        if v.is_drop() {
            if v.reason == Reason::POLICY_CHANGED {
                // Kept and marked revoked (`CT_REVOKED`): never current until a re-check passes.
                self.ct.insert(key, (REVOKED, 0));
                return v;
            }
            // Every TCP frame of the generator is an ACK: mid-stream unless a later fragment.
            let mid_stream = tcp_mid_stream(s.proto, frame::TCP_ACK, s.frag == 2);
            if !restorable(&facts, v, mid_stream, false) {
                return v;
            }
            // The flow it would reply to: the reversed tuple in the other direction.
            key = rev_key;
            let iso = self.isolated(other);
            let reversed = Facts {
                ct: CtMatch::New,
                ct_current: false,
                isolated: iso,
                allow_rule: if iso {
                    self.allow_rule(other, &key, true)
                } else {
                    0
                },
                untracked_fragment: false,
                ..facts
            };
            match restore(&reversed, false) {
                Some(r) => v = r,
                None => return v,
            }
        }
        if tracked {
            if !ct_current {
                self.ct.insert(key, (self.ep.policy_gen, v.rule_ref));
            }
        } else if s.frag != 2 {
            self.ct.insert(key, (self.ep.policy_gen, v.rule_ref));
        }
        if s.frag == 1 {
            self.frags
                .insert(frag_key(ep_id, dir, &s), (s.sport, s.dport));
        }
        v
    }
}

/// Writes a random policy for `policy_id` into the datapath and the model.
fn random_policy(rng: &mut Rng, dp: &mut Datapath, m: &mut Model, policy_id: u32) {
    for _ in 0..rng.below(8) {
        let dir = rng.pick(&[DIR_INGRESS, DIR_EGRESS]);
        let v6 = rng.chance(25);
        let (family, mut addr, bits) = if v6 {
            (
                FAMILY_V6,
                rng.pick(&PEERS6),
                rng.pick(&[16u32, 32, 120, 128]),
            )
        } else {
            (
                FAMILY_V4,
                addr16(&rng.pick(&PEERS4)),
                rng.pick(&[0u32, 8, 16, 24, 25, 32]),
            )
        };
        mask(&mut addr, bits);
        let key = PolicyKey {
            policy_id_be: policy_id.to_be_bytes(),
            dir,
            family,
            _pad: [0; 2],
            addr_be: addr,
        };
        let value = match rng.below(3) {
            0 => PolicyValue {
                flags: POL_ALL_PORTS,
                rule_ref: 1 + rng.below(50) as u32,
                portset_id: 0,
                _pad: 0,
            },
            1 => PolicyValue {
                flags: 0,
                rule_ref: 0,
                portset_id: 0,
                _pad: 0,
            },
            _ => PolicyValue {
                flags: 0,
                rule_ref: 0,
                portset_id: 1 + rng.below(3) as u32,
                _pad: 0,
            },
        };
        let plen = policy_prefixlen(bits as u8);
        dp.add_policy(plen, key, value).expect("writing policy");
        let kb = pol_bytes(&key);
        m.policy.retain(|(b, k, _)| !(*b == plen && *k == kb));
        m.policy.push((plen, kb, value));
    }
}

fn random_ports(rng: &mut Rng, dp: &mut Datapath, m: &mut Model) {
    for _ in 0..rng.below(10) {
        let portset = 1 + rng.below(3) as u32;
        let (proto, bits) = match rng.below(6) {
            0 => (0, PORT_KEY_ANY_PROTO_BITS),
            1 => (rng.pick(&PROTOS[..3]), PORT_KEY_ANY_PORT_BITS),
            2 => (rng.pick(&PROTOS[..3]), PORT_KEY_ANY_PORT_BITS + 14),
            3 => (rng.pick(&PROTOS[..3]), PORT_KEY_ANY_PORT_BITS + 6),
            _ => (rng.pick(&PROTOS[..3]), PORT_KEY_FULL_BITS),
        };
        let mut key = PortKey {
            portset_id_be: portset.to_be_bytes(),
            proto,
            port_be: rng.pick(&PORTS).to_be_bytes(),
            _pad: 0,
        };
        let mut kb = port_bytes(&key);
        mask(&mut kb, bits);
        key.proto = kb[4];
        key.port_be = [kb[5], kb[6]];
        let value = PortValue {
            rule_ref: 100 + rng.below(50) as u32,
        };
        dp.add_port(bits, key, value).expect("writing port");
        m.ports.retain(|(b, k, _)| !(*b == bits && *k == kb));
        m.ports.push((bits, kb, value));
    }
}

fn random_endpoint(rng: &mut Rng, policy_id: u32, gen_: u32) -> EndpointInfo {
    let mut flags = EP_HAS_V4 | EP_HAS_V6;
    if rng.chance(70) {
        flags |= EP_INGRESS_ISOLATED;
    }
    if rng.chance(50) {
        flags |= EP_EGRESS_ISOLATED;
    }
    EndpointInfo {
        ep_id: 7,
        policy_id,
        policy_gen: gen_,
        flags,
        ipv4_be: POD4,
        ipv6_be: POD6,
        _pad: 0,
    }
}

fn random_spec(rng: &mut Rng, history: &[Spec]) -> Spec {
    // Replies and repeats of earlier packets exercise conntrack and fragments.
    if !history.is_empty() && rng.chance(40) {
        let old = history[rng.below(history.len() as u64) as usize].clone();
        if old.malformed.is_none() {
            if rng.chance(50) {
                return Spec {
                    prog: if old.prog == Prog::ToPod {
                        Prog::FromPod
                    } else {
                        Prog::ToPod
                    },
                    src: old.dst,
                    dst: old.src,
                    sport: old.dport,
                    dport: old.sport,
                    frag: 0,
                    ..old
                };
            }
            if old.frag == 1 {
                return Spec { frag: 2, ..old };
            }
            return old;
        }
    }
    let prog = rng.pick(&[Prog::ToPod, Prog::FromPod]);
    let v6 = rng.chance(30);
    let (family, pod, peer) = if v6 {
        (FAMILY_V6, POD6, rng.pick(&PEERS6))
    } else {
        (FAMILY_V4, addr16(&POD4), addr16(&rng.pick(&PEERS4)))
    };
    let mut proto = rng.pick(&PROTOS);
    if v6 && proto == IPPROTO_ICMP {
        proto = IPPROTO_ICMPV6;
    }
    let (mut src, dst) = if prog == Prog::ToPod {
        (peer, pod)
    } else {
        (pod, peer)
    };
    if prog == Prog::FromPod && rng.chance(5) {
        src = peer; // spoofed
    }
    let (sport, dport) = if matches!(proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        let id = rng.pick(&SPORTS);
        if rng.chance(50) { (id, 0) } else { (0, id) }
    } else if proto == 47 {
        (0, 0)
    } else {
        (rng.pick(&SPORTS), rng.pick(&PORTS))
    };
    let frag = match rng.below(10) {
        0 => 1,
        1 => 2,
        _ => 0,
    };
    let malformed = match rng.below(25) {
        0 => Some(Malformed::BadIhl).filter(|_| !v6),
        1 => Some(Malformed::UnknownEthertype),
        2 => Some(Malformed::TruncatedL4),
        3 => Some(Malformed::TooManyExtHeaders).filter(|_| v6),
        _ => None,
    };
    Spec {
        prog,
        family,
        src,
        dst,
        proto,
        sport,
        dport,
        frag,
        frag_id: rng.below(3) as u16,
        malformed,
    }
}

#[test]
fn privileged_kernel_verdicts_match_the_model_on_random_policies_and_packets() {
    if !palisade_tests::require_privileges(
        "privileged_kernel_verdicts_match_the_model_on_random_policies_and_packets",
    ) {
        return;
    }
    let base: u64 = std::env::var("PALISADE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut total = 0usize;
    let mut reasons: HashMap<&'static str, usize> = HashMap::new();
    for scenario in 0..SCENARIOS {
        let seed = base.wrapping_add(scenario);
        let mut rng = Rng::new(seed);
        let mut dp = Datapath::load().expect("loading the datapath");
        let mut m = Model::default();
        let mut policy_id = 1 + scenario as u32 * 10;
        let mut gen_ = 1;
        m.ep = random_endpoint(&mut rng, policy_id, gen_);
        dp.set_endpoint(TEST_RUN_IFINDEX, m.ep).expect("endpoint");
        random_policy(&mut rng, &mut dp, &mut m, policy_id);
        random_ports(&mut rng, &mut dp, &mut m);
        if rng.chance(50) {
            dp.add_host(HostAddrKey {
                family: FAMILY_V4,
                _pad: [0; 3],
                addr_be: addr16(&NODE4),
            })
            .expect("host");
            m.hosts.push(addr16(&NODE4));
        }
        let mut history: Vec<Spec> = Vec::new();
        for i in 0..PACKETS_PER_SCENARIO {
            if rng.chance(4) {
                // A policy change: a new policy under a new id (or the same id, new
                // generation, as an in-place update), maybe new isolation.
                if rng.chance(50) {
                    policy_id += 1;
                }
                gen_ += 1;
                m.ep = random_endpoint(&mut rng, policy_id, gen_);
                random_policy(&mut rng, &mut dp, &mut m, policy_id);
                dp.set_endpoint(TEST_RUN_IFINDEX, m.ep).expect("endpoint");
            }
            let spec = random_spec(&mut rng, &history);
            let want = m.eval(&spec);
            let got = dp
                .run(spec.prog, &spec.frame())
                .expect("running the program");
            let want_action = if want.is_drop() {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            };
            if got.reason != want.reason || got.action != want_action {
                panic!(
                    "seed {seed} packet {i}: kernel {} (action {}), model {}\n\
                     packet: {spec:?}\nendpoint: {:?}\npolicy: {:?}\nports: {:?}\n\
                     history: {history:#?}",
                    got.reason.name(),
                    got.action,
                    want.reason.name(),
                    m.ep,
                    m.policy,
                    m.ports,
                );
            }
            *reasons.entry(want.reason.name()).or_default() += 1;
            history.push(spec);
            total += 1;
        }
    }
    println!("{total} packets agreed; reasons seen: {reasons:?}");
    // The generator must reach the interesting verdicts, or the comparison proves little.
    for r in [
        "policy_allow",
        "default_deny",
        "ct_established",
        "ct_reply",
        "ct_restored",
        "policy_changed",
        "spoofed_source",
        "fragment_untracked",
        "bad_header",
        "not_isolated",
    ] {
        assert!(
            reasons.contains_key(r),
            "no packet ended in {r}: {reasons:?}"
        );
    }
}

/// Fail-closed fuzzing: valid frames of every kind the parser knows, with random bytes
/// overwritten and random truncation, run through an endpoint isolated both ways with no rule
/// and no host address. Whatever the bytes, exactly one reason is counted, and the only
/// packets that may pass are ARP and neighbour discovery.
#[test]
fn privileged_mutated_frames_never_pass_an_isolated_endpoint_without_rules() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    if !palisade_tests::require_privileges(
        "privileged_mutated_frames_never_pass_an_isolated_endpoint_without_rules",
    ) {
        return;
    }
    let mut dp = Datapath::load().expect("loading the datapath");
    let ep = EndpointInfo {
        ep_id: 3,
        policy_id: 1,
        policy_gen: 1,
        flags: EP_HAS_V4 | EP_HAS_V6 | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
        ipv4_be: POD4,
        ipv6_be: POD6,
        _pad: 0,
    };
    dp.set_endpoint(TEST_RUN_IFINDEX, ep).expect("endpoint");
    let peer4 = PEERS4[0];
    let peer6 = PEERS6[0];
    let templates: Vec<Vec<u8>> = vec![
        V4::new(peer4, POD4, IPPROTO_TCP).frame(&frame::tcp(1, 80, frame::TCP_SYN)),
        V4::new(POD4, peer4, IPPROTO_UDP).frame(&frame::udp(1, 53, 8)),
        V4::new(peer4, POD4, IPPROTO_SCTP).frame(&frame::sctp(1, 9)),
        frame::ping4(peer4, POD4, 1),
        V4::new(peer4, POD4, IPPROTO_ICMP).frame(&frame::icmp(
            3,
            3,
            &V4::new(POD4, peer4, IPPROTO_UDP).packet(&frame::udp(1, 2, 0)),
        )),
        V6 {
            ext: vec![Ext { kind: 0, len8: 0 }, Ext { kind: 43, len8: 1 }],
            frag: Some(V6Frag {
                offset: 0,
                more: true,
                id: 9,
            }),
            ..V6::new(peer6, POD6, IPPROTO_TCP)
        }
        .frame(&frame::tcp(1, 443, frame::TCP_SYN)),
        V6::new(POD6, peer6, IPPROTO_ICMPV6).frame(&frame::echo(true, true, 4)),
        frame::neighbour_solicitation(POD6, peer6),
        frame::arp(POD4, peer4),
    ];
    let n = templates.len();
    let strategy = (
        0..n,
        proptest::collection::vec((0usize..160, any::<u8>()), 0..6),
        prop_oneof![Just(None), (14usize..160).prop_map(Some)],
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    let delivered = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(t, mutations, cut, to_pod)| {
            let mut f = templates[t].clone();
            for (at, byte) in mutations {
                let at = at % f.len();
                f[at] = byte;
            }
            if let Some(len) = cut {
                f.truncate(len.min(f.len()));
            }
            let prog = if to_pod { Prog::ToPod } else { Prog::FromPod };
            // The kernel's test runner refuses some frames (shorter than an IP header)
            // before the program runs; those prove nothing either way.
            if dp.run_raw(prog, &f).is_err() {
                return Ok(());
            }
            let o = dp
                .run(prog, &f)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            delivered.set(delivered.get() + 1);
            prop_assert!(
                !o.passed() || o.reason == Reason::NEIGHBOR,
                "passed with {}: {f:02x?}",
                o.reason.name()
            );
            prop_assert_eq!(o.action == TC_ACT_OK, !o.reason.is_drop());
            Ok(())
        })
        .expect("a mutated frame passed an isolated endpoint");
    let delivered = delivered.get();
    println!("{delivered} mutated frames evaluated");
    assert!(delivered > 1000, "too few frames reached the program");
}
