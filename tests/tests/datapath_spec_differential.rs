//! Tier 1, differential against the SPEC: random clusters, NetworkPolicies and
//! ClusterNetworkPolicies (Admin and Baseline tiers, Accept/Deny/Pass, namespaces, pods, nodes
//! and networks peers, ports, ranges and named ports) are compiled
//! (`palisade_policy::compile`), turned into their desired state
//! (`palisade_policy::desired_endpoint`) and
//! written by the agent's own `Applier` into the real maps of the loaded object; random new
//! flows (TCP, UDP, SCTP, ICMP, another protocol; v4 and v6; ingress at `to_pod`, egress at
//! `from_pod`; pod and external peers; numeric and named-port targets) then run through the
//! real programs with `BPF_PROG_TEST_RUN`. The kernel's verdict must be the reference
//! evaluator's (`Evaluator::check` for that direction at that pod), which reads the policy
//! objects and never the compiled form: `policy_deny` for a ClusterNetworkPolicy Deny.
//!
//! A sample of probes is also sent malformed or fragmented, with the verdict
//! `docs/datapath.md` gives: bad IHL, IHL beyond the total length, truncated L4, TCP data
//! offset < 5 (dropped `bad_header`); IPv4 options (same verdict); a first fragment (same
//! verdict) then a later fragment of it (same verdict again), and a later fragment alone
//! (only an all-ports rule for that protocol admits it: the evaluator at port 0); an IPv6
//! hop-by-hop + destination options chain, and a chain of the maximum 8 headers (same
//! verdict); 9 headers (dropped `ext_headers_too_long`).
//!
//! Each scenario applies several successive policy sets through one `Applier` (so in-place
//! updates and rewrites are both exercised against the kernel), probing new flows after each.
//!
//! The random clusters and policies come from `palisade_policy::random` (the generator of
//! `policy/tests/prop.rs`), biased towards the local pod's namespace.
//!
//! Deterministic: `PALISADE_SPEC_DIFF_SEED` replays a run, `PALISADE_SPEC_DIFF_SCENARIOS`
//! sets how many scenarios (default 30).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use palisade_agent::applier::{Applier, Capacity};
use palisade_agent::datapath::Maps;
use palisade_agent::datapath_ops::{Ops, ignore_missing};
use palisade_common::{
    conntrack::CtKey,
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    verdict::Reason,
};
use palisade_policy::random::{self, EXTERNAL};
use palisade_policy::{
    Cluster, DirectionVerdict, Endpoint, Evaluator, PodInfo, RuleRegistry, compile, describe,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, Ext, V4, V6, V6Frag},
};

const DEFAULT_SCENARIOS: u64 = 30;
const PHASES: usize = 3;
const PROBES_PER_PHASE: usize = 60;
/// Percentage of probes also sent in every malformed/fragmented shape.
const VARIANT_PERCENT: u64 = 35;
const EP_ID: u32 = 7;
const GRE: u8 = 47;

use palisade_tests::rng::Rng;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

// ---------------------------------------------------------------------------------------
// Random clusters and policies: `palisade_policy::random` (the generator of
// policy/tests/prop.rs), drawn from a runner seeded by the scenario's seed.
// ---------------------------------------------------------------------------------------

/// Destination ports probed: policy ports, named-port targets (53, 80, 81) and misses.
const PROBE_PORTS: [u16; 7] = [53, 80, 81, 82, 83, 443, 8080];

/// Draws values from `palisade_policy::random`'s strategies, deterministically for a seed.
struct Draw(TestRunner);

impl Draw {
    fn new(seed: u64) -> Draw {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        Draw(TestRunner::new_with_rng(
            ProptestConfig::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
        ))
    }

    fn one<S: Strategy>(&mut self, s: S) -> S::Value {
        s.new_tree(&mut self.0)
            .expect("the generator never rejects")
            .current()
    }
}

/// The namespaces and 2 to 5 pods; pod 0 is the local endpoint under test (both families,
/// a pod interface).
fn cluster_pods(draw: &mut Draw) -> (BTreeMap<String, BTreeMap<String, String>>, Vec<PodInfo>) {
    let namespaces = draw.one(random::namespaces());
    let mut pods = draw.one(random::pods(2..=5));
    pods[0].ips = vec![
        "10.0.0.1".parse().expect("v4"),
        "fd00::1".parse().expect("v6"),
    ];
    pods[0].host_network = false;
    (namespaces, pods)
}

// ---------------------------------------------------------------------------------------
// The agent's applier writing into the harness's maps: through the agent's own `MapOps`
// implementation (`datapath_ops::Ops`) over the agent's typed maps, opened again from the
// harness's pins (`Datapath::agent_maps`), so this test drives the agent's write path.
// ---------------------------------------------------------------------------------------

/// Forgets every tracked flow, so the next frame is judged as a new flow whatever its tuple
/// (protocols without ports have one tuple per address pair).
fn clear_conntrack(m: &mut Maps) {
    let keys: Vec<CtKey> = m
        .conntrack
        .keys()
        .collect::<Result<_, _>>()
        .expect("reading conntrack keys");
    for k in keys {
        ignore_missing(m.conntrack.remove(&k)).expect("deleting a conntrack entry");
    }
}

// ---------------------------------------------------------------------------------------
// Probes and the frames that carry them.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Probe {
    prog: Prog,
    /// The far end: the source at `to_pod`, the destination at `from_pod`.
    peer: Endpoint,
    proto: u8,
    /// Destination port (TCP/UDP/SCTP); the policy port is 0 for other protocols.
    dport: u16,
}

impl Probe {
    fn v6(&self) -> bool {
        self.peer.addr().is_ipv6()
    }
    fn policy_port(&self) -> u16 {
        if matches!(self.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
            self.dport
        } else {
            0
        }
    }
    fn direction(&self) -> palisade_policy::Direction {
        match self.prog {
            Prog::ToPod => palisade_policy::Direction::Ingress,
            Prog::FromPod | Prog::ToUplink => palisade_policy::Direction::Egress,
        }
    }
}

/// How a probe is put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    /// IPv4 IHL below 5.
    BadIhl(u8),
    /// IPv4 IHL 6..=15 with (end-of-list) options: a valid header.
    V4Options(u8),
    /// IPv4 IHL 15 with a total length shorter than the header.
    IhlBeyondTotalLength,
    /// L4 cut to 3 bytes (before the ports / echo identifier).
    TruncatedL4,
    /// TCP data offset 4.
    TcpBadDataOffset,
    /// Offset 0, more fragments, datagram id.
    FirstFragment(u32),
    /// Offset 32 bytes, last fragment, datagram id (of the preceding first fragment).
    LaterFragment(u32),
    /// A later fragment of a datagram whose first fragment was never sent (fresh id, given
    /// when it is sent).
    LoneFragment(u32),
    /// IPv6 extension headers (hop-by-hop first, then destination options) before L4.
    ExtChain(usize),
}

struct Addrs {
    pod4: [u8; 4],
    pod6: [u8; 16],
}

fn l4(proto: u8, v6: bool, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        IPPROTO_TCP => frame::tcp(sport, dport, frame::TCP_SYN),
        IPPROTO_UDP => frame::udp(sport, dport, 8),
        IPPROTO_SCTP => frame::sctp(sport, dport),
        // Echo request: the identifier (fresh, like a source port) keys the flow.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => frame::echo(v6, true, sport),
        _ => vec![0u8; 8],
    }
}

fn build(p: &Probe, a: &Addrs, sport: u16, shape: Shape) -> Vec<u8> {
    let v6 = p.v6();
    let mut body = l4(p.proto, v6, sport, p.dport);
    match shape {
        Shape::TruncatedL4 => body.truncate(3),
        Shape::TcpBadDataOffset => body[12] = 4 << 4,
        Shape::LaterFragment(_) | Shape::LoneFragment(_) => body = vec![0u8; 16],
        Shape::FirstFragment(_) => body.extend_from_slice(&[0u8; 24]),
        _ => {}
    }
    match p.peer.addr() {
        IpAddr::V4(peer) => {
            let (src, dst) = match p.prog {
                Prog::ToPod => (peer.octets(), a.pod4),
                Prog::FromPod | Prog::ToUplink => (a.pod4, peer.octets()),
            };
            let mut h = V4::new(src, dst, p.proto);
            match shape {
                Shape::BadIhl(ihl) | Shape::V4Options(ihl) => h.ihl = ihl,
                Shape::IhlBeyondTotalLength => {
                    h.ihl = 15;
                    h.total_len = Some(40);
                }
                Shape::FirstFragment(id) => {
                    h.id = id as u16;
                    h.more_fragments = true;
                }
                Shape::LaterFragment(id) | Shape::LoneFragment(id) => {
                    h.id = id as u16;
                    h.frag_offset = 4;
                }
                _ => {}
            }
            h.frame(&body)
        }
        IpAddr::V6(peer) => {
            let (src, dst) = match p.prog {
                Prog::ToPod => (peer.octets(), a.pod6),
                Prog::FromPod | Prog::ToUplink => (a.pod6, peer.octets()),
            };
            let mut h = V6::new(src, dst, p.proto);
            match shape {
                Shape::FirstFragment(id) => {
                    h.frag = Some(V6Frag {
                        offset: 0,
                        more: true,
                        id,
                    })
                }
                Shape::LaterFragment(id) | Shape::LoneFragment(id) => {
                    h.frag = Some(V6Frag {
                        offset: 4,
                        more: false,
                        id,
                    })
                }
                Shape::ExtChain(n) => {
                    h.ext = (0..n)
                        .map(|i| Ext {
                            kind: if i == 0 { 0 } else { 60 },
                            len8: (i % 2) as u8,
                        })
                        .collect();
                }
                _ => {}
            }
            h.frame(&body)
        }
    }
}

/// The verdict of a new flow at this endpoint: the spec evaluator's direction verdict, through
/// the datapath's reasons.
fn new_flow_reason(v: DirectionVerdict, untracked_fragment: bool) -> Reason {
    if !v.isolated {
        Reason::NOT_ISOLATED
    } else if v.allowed_by_rule {
        Reason::POLICY_ALLOW
    } else if v.denied_by_rule {
        Reason::POLICY_DENY
    } else if untracked_fragment {
        Reason::FRAGMENT_UNTRACKED
    } else {
        Reason::DEFAULT_DENY
    }
}

struct Mismatch {
    text: String,
}

/// Everything about one scenario phase needed to explain a mismatch.
struct Context<'a> {
    seed: u64,
    phase: usize,
    cluster: &'a Cluster,
    compiled: String,
}

impl Context<'_> {
    fn report(
        &self,
        probe: &Probe,
        shape: Shape,
        spec: DirectionVerdict,
        want: Reason,
        got: palisade_tests::bpf::Outcome,
    ) -> Mismatch {
        let np = self
            .cluster
            .policies
            .iter()
            .map(|p| serde_saphyr::to_string(p).unwrap_or_else(|e| format!("<yaml: {e}>")));
        let cnp = self
            .cluster
            .cluster_policies
            .iter()
            .map(|p| serde_saphyr::to_string(p).unwrap_or_else(|e| format!("<yaml: {e}>")));
        let yaml = np.chain(cnp).collect::<Vec<_>>().join("---\n");
        Mismatch {
            text: format!(
                "seed {} phase {}: {:?} {} peer {} proto {} dport {} shape {:?}\n  \
                 spec evaluator: {:?} -> expected {} ({}); kernel: {} (action {})\n\
                 namespaces: {:?}\nnodes: {:?}\npods: {:#?}\npolicies:\n{yaml}\ncompiled (pod0):\n{}",
                self.seed,
                self.phase,
                probe.prog,
                probe.direction().name(),
                probe.peer,
                palisade_policy::proto_name(probe.proto),
                probe.dport,
                shape,
                spec,
                want.name(),
                if want.is_drop() { "drop" } else { "pass" },
                got.reason.name(),
                got.action,
                self.cluster.namespaces,
                self.cluster.nodes,
                self.cluster.pods,
                self.compiled,
            ),
        }
    }
}

/// Counts, to show the generator reached what matters.
#[derive(Default)]
struct Tally {
    frames: usize,
    reasons: HashMap<&'static str, usize>,
    allowed_isolated: [usize; 2],
    denied_isolated: [usize; 2],
    named_port_allows: usize,
}

#[test]
fn privileged_kernel_verdicts_equal_spec_evaluator_on_random_network_policies() {
    if !palisade_tests::require_privileges(
        "privileged_kernel_verdicts_equal_spec_evaluator_on_random_network_policies",
    ) {
        return;
    }
    let base: u64 = std::env::var("PALISADE_SPEC_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5bec);
    let scenarios: u64 = std::env::var("PALISADE_SPEC_DIFF_SCENARIOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SCENARIOS);
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let mut mismatches: Vec<Mismatch> = Vec::new();
    for scenario in 0..scenarios {
        let seed = base.wrapping_add(scenario);
        run_scenario(seed, &mut tally, &mut mismatches);
    }
    println!(
        "{} frames in {} scenarios ({:?}); reasons: {:?}; isolated allowed (in, eg) {:?}, \
         denied {:?}; allowed through a named port: {}",
        tally.frames,
        scenarios,
        started.elapsed(),
        tally.reasons,
        tally.allowed_isolated,
        tally.denied_isolated,
        tally.named_port_allows,
    );
    if !mismatches.is_empty() {
        for m in mismatches.iter().take(5) {
            eprintln!("MISMATCH {}\n", m.text);
        }
        panic!(
            "{} kernel verdicts differ from the spec evaluator (first ones above; \
             replay with PALISADE_SPEC_DIFF_SEED)",
            mismatches.len()
        );
    }
    for r in [
        "policy_allow",
        "policy_deny",
        "default_deny",
        "not_isolated",
        "bad_header",
        "fragment_untracked",
        "ct_established",
        "ext_headers_too_long",
    ] {
        assert!(
            tally.reasons.contains_key(r),
            "no frame ended in {r}: {:?}",
            tally.reasons
        );
    }
    for d in 0..2 {
        assert!(
            tally.allowed_isolated[d] > 0 && tally.denied_isolated[d] > 0,
            "direction {d}: too few isolated verdicts of each kind"
        );
    }
    assert!(
        tally.named_port_allows > 0,
        "no probe was allowed through a named port only"
    );
}

fn run_scenario(seed: u64, tally: &mut Tally, mismatches: &mut Vec<Mismatch>) {
    let mut rng = Rng::new(seed);
    let mut draw = Draw::new(seed);
    let dp = Datapath::load().expect("loading the datapath");
    let mut maps = dp.agent_maps().expect("opening the agent's maps");
    let (namespaces, pods) = cluster_pods(&mut draw);
    let local = pods[0].key();
    let home = pods[0].namespace.clone();
    let addrs = Addrs {
        pod4: [10, 0, 0, 1],
        pod6: "fd00::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    };
    let mut peers: Vec<Endpoint> = EXTERNAL
        .iter()
        .map(|a| Endpoint::External(a.parse().expect("external")))
        .collect();
    for p in &pods {
        for ip in &p.ips {
            peers.push(Endpoint::Pod {
                pod: p.key(),
                addr: *ip,
            });
        }
    }
    let mut applier = Applier::new(Capacity::default());
    let mut reg = RuleRegistry::new();
    // Fresh source ports / echo identifiers / fragment ids: every probe is a new flow.
    let mut next_sport: u16 = 10_000;
    let mut next_frag_id: u32 = 1;
    for phase in 0..PHASES {
        let cluster = Cluster {
            namespaces: namespaces.clone(),
            pods: pods.clone(),
            // A policy set in the local pod's namespace more often than not, so the endpoint
            // under test is isolated in most phases.
            policies: draw.one(random::policies(Some(home.clone()), 1..=3)),
            cluster_policies: draw.one(random::cluster_policies(Some(home.clone()), 0..=2)),
            nodes: draw.one(random::nodes()),
        };
        let compiled = compile(&cluster, std::slice::from_ref(&local), &mut reg);
        assert!(
            compiled.problems.is_empty(),
            "seed {seed}: generated policies invalid: {:?}",
            compiled.problems
        );
        let ep = compiled
            .endpoints
            .get(&local)
            .expect("the local pod has an endpoint");
        let desired = palisade_policy::desired_endpoint(
            Some(ep),
            TEST_RUN_IFINDEX,
            EP_ID,
            &pods[0].ips,
            &mut palisade_policy::PortContents::default(),
        );
        applier
            .apply_endpoint(&mut Ops(&mut maps), &desired)
            .expect("applying the desired endpoint to the kernel maps");
        applier.commit(&mut Ops(&mut maps));
        let ctx = Context {
            seed,
            phase,
            cluster: &cluster,
            compiled: describe(ep, &reg),
        };
        let ev = Evaluator::new(&cluster);
        let pod0 = cluster.pod(&local).expect("local pod");
        for _ in 0..PROBES_PER_PHASE {
            let v6 = rng.chance(35);
            let candidates: Vec<&Endpoint> =
                peers.iter().filter(|e| e.addr().is_ipv6() == v6).collect();
            let peer = (*rng.pick(&candidates)).clone();
            let mut proto = rng.pick(&[
                IPPROTO_TCP,
                IPPROTO_TCP,
                IPPROTO_UDP,
                IPPROTO_UDP,
                IPPROTO_SCTP,
                IPPROTO_ICMP,
                GRE,
            ]);
            if v6 && proto == IPPROTO_ICMP {
                proto = IPPROTO_ICMPV6;
            }
            let mut probe = Probe {
                prog: rng.pick(&[Prog::ToPod, Prog::FromPod]),
                peer,
                proto,
                dport: rng.pick(&PROBE_PORTS),
            };
            // Often aim at a named port of the pod that resolves it (the local pod at
            // ingress, the destination pod at egress).
            let resolver = match (&probe.prog, &probe.peer) {
                (Prog::ToPod, _) => Some(pod0),
                (Prog::FromPod, Endpoint::Pod { pod, .. }) => cluster.pod(pod),
                _ => None,
            };
            if let Some(r) = resolver.filter(|r| !r.ports.is_empty() && rng.chance(40)) {
                let np = rng.pick(&r.ports);
                probe.proto = np.protocol.number();
                probe.dport = np.port;
            }
            let spec = ev.check(
                pod0,
                probe.direction(),
                &probe.peer,
                probe.proto,
                probe.policy_port(),
            );
            let d = usize::from(probe.prog == Prog::FromPod);
            if spec.isolated {
                if spec.allowed_by_rule {
                    tally.allowed_isolated[d] += 1;
                    if named_port_only(&cluster, pod0, &probe) {
                        tally.named_port_allows += 1;
                    }
                } else {
                    tally.denied_isolated[d] += 1;
                }
            }
            let plain = new_flow_reason(spec, false);
            let mut cases: Vec<(Shape, Reason)> = vec![(Shape::Plain, plain)];
            if rng.chance(VARIANT_PERCENT) {
                cases.extend(variants(&mut rng, &probe, plain, &mut next_frag_id));
            }
            // The answer for a later fragment whose first fragment was never seen: ports
            // unknown, so only an all-ports rule for this protocol (port 0 to the evaluator).
            let untracked = new_flow_reason(
                ev.check(pod0, probe.direction(), &probe.peer, probe.proto, 0),
                true,
            );
            for (shape, want) in cases {
                // A fragment alone, or after a first fragment that was dropped, is untracked:
                // judged with its ports unknown.
                let want = if matches!(shape, Shape::LoneFragment(_))
                    || (matches!(shape, Shape::LaterFragment(_)) && plain.is_drop())
                {
                    untracked
                } else {
                    want
                };
                // A later fragment continues the flow of its first fragment (same ports).
                let sport = if matches!(shape, Shape::LaterFragment(_)) {
                    next_sport.wrapping_sub(1)
                } else {
                    next_sport = next_sport.checked_add(1).unwrap_or(10_000);
                    next_sport
                };
                let shape = match shape {
                    Shape::LoneFragment(_) => {
                        next_frag_id += 1;
                        Shape::LoneFragment(next_frag_id)
                    }
                    s => s,
                };
                if !matches!(shape, Shape::LaterFragment(_)) {
                    clear_conntrack(&mut maps);
                }
                let f = build(&probe, &addrs, sport, shape);
                let got = dp.run(probe.prog, &f).expect("running the program");
                tally.frames += 1;
                *tally.reasons.entry(got.reason.name()).or_default() += 1;
                let want_action = if want.is_drop() {
                    TC_ACT_SHOT
                } else {
                    TC_ACT_OK
                };
                if got.reason != want || got.action != want_action {
                    mismatches.push(ctx.report(&probe, shape, spec, want, got));
                }
            }
        }
    }
}

/// Malformed and fragmented shapes of `probe`, with the reason docs/datapath.md gives each.
fn variants(
    rng: &mut Rng,
    probe: &Probe,
    plain: Reason,
    next_frag_id: &mut u32,
) -> Vec<(Shape, Reason)> {
    let mut out = Vec::new();
    let has_l4_header = matches!(
        probe.proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_ICMP | IPPROTO_ICMPV6
    );
    if !probe.v6() {
        out.push((Shape::BadIhl(rng.below(5) as u8), Reason::BAD_HEADER));
        out.push((Shape::V4Options(6 + rng.below(10) as u8), plain));
        out.push((Shape::IhlBeyondTotalLength, Reason::BAD_HEADER));
    } else {
        out.push((Shape::ExtChain(2), plain));
        out.push((Shape::ExtChain(8), plain));
        out.push((Shape::ExtChain(9), Reason::EXT_HEADERS_TOO_LONG));
    }
    out.push((
        Shape::TruncatedL4,
        if has_l4_header {
            Reason::BAD_HEADER
        } else {
            plain
        },
    ));
    if probe.proto == IPPROTO_TCP {
        out.push((Shape::TcpBadDataOffset, Reason::BAD_HEADER));
    }
    // A first fragment is a new flow like the plain probe; the later fragment of the same
    // datagram continues it (established) when the first passed, and is untracked (dropped,
    // since no all-ports rule admitted the first) when it did not.
    *next_frag_id += 1;
    let id = *next_frag_id;
    out.push((Shape::FirstFragment(id), plain));
    out.push((
        Shape::LaterFragment(id),
        if plain.is_drop() {
            Reason::FRAGMENT_UNTRACKED
        } else {
            Reason::CT_ESTABLISHED
        },
    ));
    out.push((Shape::LoneFragment(0), Reason::FRAGMENT_UNTRACKED));
    out
}

/// Whether the probe is allowed only by port entries that name a port (so a named-port
/// resolution is what admitted it): the same probe is denied once every pod's named ports
/// are removed.
fn named_port_only(cluster: &Cluster, pod0: &PodInfo, probe: &Probe) -> bool {
    let mut bare = cluster.clone();
    for p in &mut bare.pods {
        p.ports.clear();
    }
    let ev2 = Evaluator::new(&bare);
    let pod = bare.pod(&pod0.key()).expect("pod0");
    !ev2.check(
        pod,
        probe.direction(),
        &probe.peer,
        probe.proto,
        probe.policy_port(),
    )
    .allowed_by_rule
}
