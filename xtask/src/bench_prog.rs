//! `cargo xtask bench prog`: the datapath programs' own cost per packet, measured by the
//! kernel (`BPF_PROG_TEST_RUN`), next to the object's empty `pass` program in the same run.
//!
//! The object is loaded the way the tier-1 tests load it (`palisade_tests::bpf::Datapath`:
//! private bpffs, test-sized conntrack), with one endpoint isolated both ways and a policy
//! allowing the peer on TCP port 80 in both directions (two LPM lookups per policy question,
//! as in the lab). Cases, each the mean over `--repeat` runs of one frame inside the kernel,
//! median of `--reps` repetitions:
//! - established, per hook: a packet of a tracked flow in the direction it was admitted
//!   (`to_pod` for an inbound flow, `from_pod` for an outbound one) and a reply of it on the
//!   other hook. The flow is admitted, answered, aged by `CT_REFRESH_NS` and moved to the
//!   assured tier by its next packet before timing, so every timed run is the steady state;
//!   the same for an IPv6 inbound flow (both hooks);
//! - new allowed flow: a SYN that policy admits and that is then tracked. A repeated run would
//!   be established from its second run on, so each frame (its own source port) runs once
//!   (`repeat = 1`, `--new-flows` frames); the `pass` row measured the same way gives that
//!   mode's fixed cost (the kernel's timer around one run);
//! - first reply: each new flow's SYN-ACK leaving the pod, run once (it marks the flow
//!   `CT_SEEN_REPLY`);
//! - promotion: each of those flows aged by `CT_REFRESH_NS`, then its client's ACK, run once:
//!   the packet that refreshes the stamp and moves the flow from the LRU into the assured tier
//!   (`ebpf/src/assured.rs`, `promote`);
//! - denied: a SYN to a port policy does not allow (never tracked; a drop event, rate
//!   limited per flow, unless events are off);
//! - new allowed flow with the LRU full (events off, last): every insert evicts, as on a node
//!   taking many short connections;
//! - cold (`--cold-mib`, 4 by default): the empty program and every repeated case run once
//!   each right after this process wrote that many MiB on the same CPU, so the program's code,
//!   its maps and the kernel's own path start in the last-level cache (or, past its size, in
//!   memory). A pod-to-pod round trip runs the programs between the whole network stack's
//!   work, which leaves them about this cold: these rows, not the hot loop's, add up to what
//!   `bench datapath` measures per round trip (docs/performance.md, "Cold caches").
//!
//! Every case is run with flow events on (the default) and off (`CFG_NO_FLOW_EVENTS`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6,
    conntrack::CT_REFRESH_NS,
    endpoint::{EP_EGRESS_ISOLATED, EP_HAS_V4, EP_HAS_V6, EP_INGRESS_ISOLATED, EndpointInfo},
    packet::IPPROTO_TCP,
    policy::{PORT_KEY_FULL_BITS, PolicyKey, PolicyValue, PortKey, PortValue, policy_prefixlen},
    stats::{CFG_NO_FLOW_EVENTS, Config},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{TCP_ACK, TCP_SYN, V4, V6},
};

#[derive(clap::Args, Clone)]
pub struct ProgArgs {
    /// Runs of one frame per measurement (the kernel's mean).
    #[arg(long, default_value_t = 200_000)]
    pub repeat: u32,
    /// Repetitions of every case (the median is reported, with min and max).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// New flows per repetition of the new-flow, first-reply and promotion cases (each its own
    /// frames, run once). At most 3072 over all repetitions and both event settings, so the
    /// test-sized LRU (4096) never evicts during it and the endpoint's assured budget (4096)
    /// takes every promotion.
    #[arg(long, default_value_t = 300)]
    pub new_flows: u16,
    /// Also time the repeated cases run once each after writing this many MiB on the same
    /// CPU (0: not measured): the caches as a packet finds them after the rest of the stack
    /// ran, which `--repeat`'s hot loop hides. 4 reaches past an L2 of 1-2 MiB; past the L3
    /// (64 here) every line comes from memory.
    #[arg(long, default_value_t = 4)]
    pub cold_mib: usize,
}

const POD: [u8; 4] = [10, 0, 0, 2];
const PEER: [u8; 4] = [10, 0, 1, 5];
/// The pod's and the peer's IPv6 addresses (fd00::2, fd00:1::5).
const POD6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PEER6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const EP_ID: u32 = 42;
const POLICY_ID: u32 = 100;
const PORTSET: u32 = 7;
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 81;

/// One row of the report: nanoseconds per packet (median, min, max over the repetitions).
struct Row {
    case: &'static str,
    events: bool,
    ns: Vec<f64>,
}

pub fn run(args: &ProgArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench prog loads BPF programs: run as root");
    }
    if args.reps == 0 || args.repeat == 0 || args.new_flows == 0 {
        bail!("--reps, --repeat and --new-flows must be at least 1");
    }
    if args.new_flows as usize * args.reps * 2 > 3 * 4096 / 4 {
        bail!("--new-flows x --reps x 2 (events on and off) must stay under 3072");
    }
    let object = palisade_tests::bpf_object();
    let mut dp = Datapath::load().with_context(|| format!("loading {}", object.display()))?;
    seed(&mut dp)?;
    let mut rows = Vec::new();
    let mut next_sport: u16 = 20_000;
    for events in [true, false] {
        let flags = if events { 0 } else { CFG_NO_FLOW_EVENTS };
        dp.set_config(Config { flags, _pad: 0 })?;
        let cases = cases(&mut dp, events)?;
        let mut pass = Row {
            case: "empty program (pass)",
            events,
            ns: Vec::new(),
        };
        let mut measured: Vec<Row> = cases
            .iter()
            .map(|c| Row {
                case: c.name,
                events,
                ns: Vec::new(),
            })
            .collect();
        let mut new_flow = Row {
            case: "new allowed flow (to_pod SYN, run once each)",
            events,
            ns: Vec::new(),
        };
        let mut first_reply = Row {
            case: "first reply (from_pod SYN-ACK, run once each)",
            events,
            ns: Vec::new(),
        };
        let mut promotion = Row {
            case: "promotion (to_pod ACK, flow 1 s old, run once)",
            events,
            ns: Vec::new(),
        };
        let mut pass_once = Row {
            case: "empty program, run once each",
            events,
            ns: Vec::new(),
        };
        for _ in 0..args.reps {
            // Interleaved: every case once per repetition, so noise hits them alike.
            pass.ns
                .push(ns(dp.pass_time_per_run(&cases[0].frame, args.repeat)?));
            for (c, row) in cases.iter().zip(measured.iter_mut()) {
                row.ns
                    .push(ns(dp.time_per_run(c.prog, &c.frame, args.repeat)?));
            }
            // Drained as the agent drains it (every 50 ms): records left pending past
            // `FLOW_RING_WAKE_BYTES` would make every later event force a wake-up (an
            // irq_work, ~5 us here), which no reader that keeps up ever sees.
            dp.flow_events()?;
            let t = new_flows(&mut dp, &mut next_sport, args.new_flows)?;
            new_flow.ns.push(t.flow);
            first_reply.ns.push(t.reply);
            promotion.ns.push(t.promotion);
            pass_once.ns.push(t.once);
        }
        rows.push(pass);
        rows.extend(measured);
        rows.push(new_flow);
        rows.push(first_reply);
        rows.push(promotion);
        rows.push(pass_once);
        if args.cold_mib > 0 {
            rows.extend(cold_rows(&dp, &cases, events, args)?);
        }
    }
    // Last: it fills the LRU, which no earlier case may find full.
    rows.push(Row {
        case: "new allowed flow, LRU full (run once each)",
        events: false,
        ns: full_lru_flows(&dp, &mut next_sport, args.new_flows, args.reps)?,
    });
    print!("{}", report(&dp, &rows, args)?);
    Ok(())
}

/// The endpoint, isolated both ways, and its policy: the peer on TCP/80, both directions.
fn seed(dp: &mut Datapath) -> Result<()> {
    dp.set_endpoint(
        TEST_RUN_IFINDEX,
        EndpointInfo {
            ep_id: EP_ID,
            policy_id: POLICY_ID,
            policy_gen: POLICY_ID,
            flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED | EP_HAS_V4 | EP_HAS_V6,
            ipv4_be: POD,
            ipv6_be: POD6,
            _pad: 0,
        },
    )?;
    let mut peer = [0u8; 16];
    peer[..4].copy_from_slice(&PEER);
    for (family, addr_be, bits) in [(FAMILY_V4, peer, 32), (FAMILY_V6, PEER6, 128)] {
        for dir in [DIR_INGRESS, DIR_EGRESS] {
            let key = PolicyKey {
                policy_id_be: POLICY_ID.to_be_bytes(),
                dir,
                family,
                _pad: [0; 2],
                addr_be,
            };
            let value = PolicyValue {
                flags: 0,
                rule_ref: 0,
                portset_id: PORTSET,
                _pad: 0,
            };
            dp.add_policy(policy_prefixlen(bits), key, value)?;
        }
    }
    let port = PortKey {
        portset_id_be: PORTSET.to_be_bytes(),
        proto: IPPROTO_TCP,
        port_be: ALLOWED_PORT.to_be_bytes(),
        _pad: 0,
    };
    dp.add_port(PORT_KEY_FULL_BITS, port, PortValue { rule_ref: 1 })
}

fn inbound(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    V4::new(PEER, POD, IPPROTO_TCP).frame(&palisade_tests::bpf::frame::tcp(sport, dport, flags))
}

fn outbound(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    V4::new(POD, PEER, IPPROTO_TCP).frame(&palisade_tests::bpf::frame::tcp(sport, dport, flags))
}

fn inbound6(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    V6::new(PEER6, POD6, IPPROTO_TCP).frame(&palisade_tests::bpf::frame::tcp(sport, dport, flags))
}

fn outbound6(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    V6::new(POD6, PEER6, IPPROTO_TCP).frame(&palisade_tests::bpf::frame::tcp(sport, dport, flags))
}

struct Case {
    name: &'static str,
    prog: Prog,
    frame: Vec<u8>,
}

/// The repeated cases, their flows admitted (and promoted) first; each frame checked once for
/// the reason it is meant to measure.
fn cases(dp: &mut Datapath, events: bool) -> Result<Vec<Case>> {
    // Ports per events pass: the flows of the first pass are not reused by the second.
    let base = if events { 40_000 } else { 41_000 };
    let (in_client, out_client) = (base, base + 1);
    // Each flow admitted: its SYN allowed by policy, its SYN-ACK a reply.
    let admit = |dp: &Datapath, syn: (Prog, Vec<u8>), syn_ack: (Prog, Vec<u8>)| -> Result<()> {
        check(dp, syn.0, &syn.1, Reason::POLICY_ALLOW)?;
        check(dp, syn_ack.0, &syn_ack.1, Reason::CT_REPLY)
    };
    let in_flow = |sport, dport, flags| (Prog::ToPod, inbound(sport, dport, flags));
    let out_flow = |sport, dport, flags| (Prog::FromPod, outbound(sport, dport, flags));
    admit(
        dp,
        in_flow(in_client, ALLOWED_PORT, TCP_SYN),
        out_flow(ALLOWED_PORT, in_client, TCP_SYN | TCP_ACK),
    )?;
    admit(
        dp,
        out_flow(out_client, ALLOWED_PORT, TCP_SYN),
        in_flow(ALLOWED_PORT, out_client, TCP_SYN | TCP_ACK),
    )?;
    admit(
        dp,
        (Prog::ToPod, inbound6(in_client, ALLOWED_PORT, TCP_SYN)),
        (
            Prog::FromPod,
            outbound6(ALLOWED_PORT, in_client, TCP_SYN | TCP_ACK),
        ),
    )?;
    // As if these flows were a second old: the checks below (their next packets) move them
    // to the assured tier, where the timed runs find them.
    dp.age_lru(CT_REFRESH_NS)?;
    // Another flow stays in the LRU tier, as every short connection does: its packets miss
    // the assured tier first.
    let short_client = base + 3;
    admit(
        dp,
        in_flow(short_client, ALLOWED_PORT, TCP_SYN),
        out_flow(ALLOWED_PORT, short_client, TCP_SYN | TCP_ACK),
    )?;
    let cases = vec![
        Case {
            name: "established, to_pod (inbound flow)",
            prog: Prog::ToPod,
            frame: inbound(in_client, ALLOWED_PORT, TCP_ACK),
        },
        Case {
            name: "reply, from_pod (inbound flow)",
            prog: Prog::FromPod,
            frame: outbound(ALLOWED_PORT, in_client, TCP_ACK),
        },
        Case {
            name: "established, from_pod (outbound flow)",
            prog: Prog::FromPod,
            frame: outbound(out_client, ALLOWED_PORT, TCP_ACK),
        },
        Case {
            name: "reply, to_pod (outbound flow)",
            prog: Prog::ToPod,
            frame: inbound(ALLOWED_PORT, out_client, TCP_ACK),
        },
        Case {
            name: "established, to_pod (IPv6 inbound flow)",
            prog: Prog::ToPod,
            frame: inbound6(in_client, ALLOWED_PORT, TCP_ACK),
        },
        Case {
            name: "reply, from_pod (IPv6 inbound flow)",
            prog: Prog::FromPod,
            frame: outbound6(ALLOWED_PORT, in_client, TCP_ACK),
        },
        Case {
            name: "established, to_pod (short flow, LRU tier)",
            prog: Prog::ToPod,
            frame: inbound(short_client, ALLOWED_PORT, TCP_ACK),
        },
        Case {
            name: "denied, to_pod (SYN, port not allowed)",
            prog: Prog::ToPod,
            frame: inbound(base + 2, DENIED_PORT, TCP_SYN),
        },
    ];
    for c in &cases {
        let reason = match c.name {
            n if n.starts_with("established") => Reason::CT_ESTABLISHED,
            n if n.starts_with("reply") => Reason::CT_REPLY,
            _ => Reason::DEFAULT_DENY,
        };
        check(dp, c.prog, &c.frame, reason)?;
    }
    if dp.assured()?.len() < 3 {
        bail!("the admitted flows did not move to the assured tier");
    }
    Ok(cases)
}

fn check(dp: &Datapath, prog: Prog, frame: &[u8], reason: Reason) -> Result<()> {
    let o = dp.run(prog, frame)?;
    let action = if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    };
    if o.reason != reason || o.action != action {
        bail!(
            "{}: expected {} (action {action}), got {} (action {})",
            prog.name(),
            reason.name(),
            o.reason.name(),
            o.action
        );
    }
    Ok(())
}

/// Mean ns per run, run once each, of `new_flows`' cases.
struct OnceTimes {
    /// A new allowed flow (its SYN).
    flow: f64,
    /// Its first reply (the SYN-ACK leaving the pod).
    reply: f64,
    /// Its next packet once the flow is `CT_REFRESH_NS` old (the client's ACK): the move
    /// into the assured tier.
    promotion: f64,
    /// The `pass` program on the same SYNs.
    once: f64,
}

/// `n` new allowed flows (SYNs from fresh source ports), each run once; each flow's first
/// reply (the SYN-ACK leaving the pod), run once; then, the flows aged by `CT_REFRESH_NS`,
/// each flow's next packet (the client's ACK, which moves the flow to the assured tier), run
/// once.
fn new_flows(dp: &mut Datapath, next_sport: &mut u16, n: u16) -> Result<OnceTimes> {
    let before = dp.assured()?.len();
    let (mut flow, mut reply, mut once) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let first = *next_sport;
    for _ in 0..n {
        let f = inbound(*next_sport, ALLOWED_PORT, TCP_SYN);
        let r = outbound(ALLOWED_PORT, *next_sport, TCP_SYN | TCP_ACK);
        *next_sport = next_sport.wrapping_add(1);
        once += dp.pass_time_per_run(&f, 1)?;
        flow += dp.time_per_run(Prog::ToPod, &f, 1)?;
        reply += dp.time_per_run(Prog::FromPod, &r, 1)?;
    }
    if dp.assured()?.len() != before {
        bail!("a flow moved to the assured tier at its first reply");
    }
    dp.age_lru(CT_REFRESH_NS)?;
    let mut promotion = Duration::ZERO;
    for i in 0..n {
        let a = inbound(first.wrapping_add(i), ALLOWED_PORT, TCP_ACK);
        promotion += dp.time_per_run(Prog::ToPod, &a, 1)?;
    }
    let promoted = dp.assured()?.len() - before;
    if promoted != n as usize {
        bail!(
            "{n} new flows timed, {promoted} moved to the assured tier (the LRU evicted, or a \
             flow was denied)"
        );
    }
    let n = n as f64;
    Ok(OnceTimes {
        flow: ns(flow) / n,
        reply: ns(reply) / n,
        promotion: ns(promotion) / n,
        once: ns(once) / n,
    })
}

/// Fills the LRU tier with unreplied flows (as a node taking many short connections keeps
/// it: closing flows linger `CT_TIMEOUT_CLOSING_NS`), then times `n` more new flows per
/// repetition, each run once (each insert evicts the least recently used entry): the mean
/// per repetition.
fn full_lru_flows(dp: &Datapath, next_sport: &mut u16, n: u16, reps: usize) -> Result<Vec<f64>> {
    let mut syn = || {
        let f = inbound(*next_sport, ALLOWED_PORT, TCP_SYN);
        *next_sport = next_sport.wrapping_add(1);
        f
    };
    for _ in 0..palisade_tests::bpf::TEST_CT_ENTRIES {
        dp.time_per_run(Prog::ToPod, &syn(), 1)?;
    }
    let mut out = Vec::new();
    for _ in 0..reps {
        let mut t = Duration::ZERO;
        for _ in 0..n {
            t += dp.time_per_run(Prog::ToPod, &syn(), 1)?;
        }
        out.push(ns(t) / n as f64);
    }
    Ok(out)
}

/// The empty program and every repeated case, each run once after `args.cold_mib` MiB were
/// written on this CPU, `args.new_flows` times per repetition; rows named "... cold", the
/// empty program's first.
fn cold_rows(dp: &Datapath, cases: &[Case], events: bool, args: &ProgArgs) -> Result<Vec<Row>> {
    // One CPU for the eviction and the run it precedes.
    let cpu = nix::sched::sched_getcpu().context("sched_getcpu")?;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("cpu set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;
    let mut buf = vec![0u8; args.cold_mib << 20];
    let mut evict = |salt: u8| {
        for i in (0..buf.len()).step_by(64) {
            buf[i] = buf[i].wrapping_add(salt);
        }
        std::hint::black_box(&buf);
    };
    let mut rows: Vec<Row> = std::iter::once(Row {
        case: "empty program, cold",
        events,
        ns: Vec::new(),
    })
    .chain(cases.iter().map(|c| Row {
        case: cold_name(c.name),
        events,
        ns: Vec::new(),
    }))
    .collect();
    for _ in 0..args.reps {
        let mut sums = vec![Duration::ZERO; rows.len()];
        for k in 0..args.new_flows {
            evict(k as u8);
            sums[0] += dp.pass_time_per_run(&cases[0].frame, 1)?;
            for (i, c) in cases.iter().enumerate() {
                evict(k as u8);
                sums[i + 1] += dp.time_per_run(c.prog, &c.frame, 1)?;
            }
        }
        for (row, sum) in rows.iter_mut().zip(sums) {
            row.ns.push(ns(sum) / args.new_flows as f64);
        }
    }
    Ok(rows)
}

fn cold_name(case: &str) -> &'static str {
    match case {
        n if n.starts_with("established, to_pod (short") => "established, to_pod, LRU tier, cold",
        n if n.starts_with("established, to_pod (IPv6") => "established, to_pod, IPv6, cold",
        n if n.starts_with("reply, from_pod (IPv6") => "reply, from_pod, IPv6, cold",
        n if n.starts_with("established, to_pod") => "established, to_pod, cold",
        n if n.starts_with("reply, from_pod") => "reply, from_pod, cold",
        n if n.starts_with("established, from_pod") => "established, from_pod, cold",
        n if n.starts_with("reply, to_pod") => "reply, to_pod, cold",
        _ => "denied, to_pod, cold",
    }
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn report(dp: &Datapath, rows: &[Row], args: &ProgArgs) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let commit = crate::bench_datapath::git_head();
    writeln!(
        out,
        "bench prog: BPF_PROG_TEST_RUN, ns per packet, median (min-max) of {} reps; \
         repeat {} (new flows: {} frames run once each; cold: run once after writing {} MiB, \
         {} times); object {}; commit {commit}; load {}",
        args.reps,
        args.repeat,
        args.new_flows,
        args.cold_mib,
        args.new_flows,
        palisade_tests::bpf_object().display(),
        crate::bench_datapath::loadavg()
    )?;
    for events in [true, false] {
        writeln!(
            out,
            "\nflow events {}:",
            if events { "on (default)" } else { "off" }
        )?;
        let group: Vec<&Row> = rows.iter().filter(|r| r.events == events).collect();
        let pass = group
            .iter()
            .find(|r| r.case.starts_with("empty program (pass)"))
            .map(|r| stats(&r.ns).0)
            .unwrap_or(0.0);
        let pass_once = group
            .iter()
            .find(|r| r.case.starts_with("empty program, run once"))
            .map(|r| stats(&r.ns).0)
            .unwrap_or(0.0);
        let pass_cold = group
            .iter()
            .find(|r| r.case.starts_with("empty program, cold"))
            .map(|r| stats(&r.ns).0)
            .unwrap_or(0.0);
        writeln!(
            out,
            "  {:<46} {:>8} {:>17} {:>12}",
            "case", "ns", "(min-max)", "minus empty"
        )?;
        for r in group {
            let (med, lo, hi) = stats(&r.ns);
            let empty = if r.case.contains("run once") {
                pass_once
            } else if r.case.ends_with("cold") {
                pass_cold
            } else {
                pass
            };
            writeln!(
                out,
                "  {:<46} {med:>8.1} {:>17} {:>12.1}",
                r.case,
                format!("({lo:.1}-{hi:.1})"),
                med - empty
            )?;
        }
    }
    writeln!(
        out,
        "\nprogram sizes (verified instructions, translated bytes):"
    )?;
    for prog in [Prog::ToPod, Prog::FromPod, Prog::ToUplink] {
        let (verified, xlated) = dp.program_size(prog)?;
        writeln!(
            out,
            "  {:<10} {:>9} {:>9}",
            prog.name(),
            verified.map_or("?".into(), |v| v.to_string()),
            xlated.map_or("?".into(), |v| v.to_string())
        )?;
    }
    Ok(out)
}
