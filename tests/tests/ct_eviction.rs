//! Conntrack eviction across pods (issue 9 §1, last item), with real packets in the lab.
//!
//! Threat model: a hostile pod (or a busy one) opens flows as fast as it can. `pal_ct_v1` is
//! one LRU table for every endpoint of the node, so it evicts other pods' idle flows. Before,
//! the next packet of such a flow in its reply direction, at an endpoint isolated in that
//! direction, was dropped as `default_deny`: a server whose egress is isolated could no longer
//! answer on a flow its ingress policy admitted (TCP was then restored, `ct_restored`; UDP and
//! Service flows were not). What must hold:
//! - a flow that has seen its reply and outlived `CT_REFRESH_NS` lives in the assured tier
//!   (`pal_cta_v1`), which nothing evicts: the flood cuts neither an established TCP
//!   connection nor a UDP flow, and both survive a `kill -9` of the agent (the new agent
//!   adopts the tier); short and closing flows never take the tier's budget;
//! - a flow evicted before its promotion is still restored for TCP (`ct_restored`, tier 1);
//! - an endpoint's budget bounds what it can hold there: past it, promotion is refused and
//!   counted (the flow stays in the LRU tier), and another endpoint's assured flows are untouched;
//! - nothing else opens: a SYN or a UDP datagram that policy does not admit stays dropped, also
//!   one that looks like a reply of an admitted flow.
//!
//! Run with promotion disabled in the eBPF object (every flow stays in the LRU tier, as before
//! the assured tier), the UDP datagram after the flood never arrives: the flood test fails at
//! step 4 (checked once by hand, with step 2's check of the tier removed).

#[path = "common/metrics.rs"]
mod metrics;
#[path = "common/tier1.rs"]
mod tier1;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use palisade_agent::datapath::ct_sweep;
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    assured::{ASSURED_BUDGET, CTST_PROMOTED, CTST_REAPED, CTST_REFUSED, CTST_SLOTS},
    conntrack::{CT_REFRESH_NS, CT_SEEN_REPLY, CT_TIMEOUT_OTHER_NS, CtKey, CtValue},
    endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED},
    events::{EV_REPLY, VERDICT_FORWARDED},
    maps,
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    service::SVC_MARK,
    stats::HostAddrKey,
    verdict::Reason,
};
use palisade_tests::bpf::{
    Prog, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, TCP_ACK, TCP_FIN, TCP_SYN, V4},
};
use palisade_tests::lab::netns::in_netns;
use palisade_tests::lab::{Lab, LabConfig};
use palisade_tests::require_privileges;
use tier1::*;

/// x/a: ingress from namespace y on 8080 (TCP and UDP), egress isolated with nothing allowed.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-serves-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 8080, protocol: TCP}, {port: 8080, protocol: UDP}]
";

/// Pods no policy selects: the flood's destinations (tracked at both ends).
const FLOOD_TO: [&str; 5] = ["x/b", "x/c", "y/a", "y/c", "z/a"];

fn v4(lab: &Lab, pod: &str) -> Result<IpAddr> {
    lab.pod_ips(pod)
        .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
        .with_context(|| format!("{pod} has no IPv4 address"))
}

fn ns(lab: &Lab, pod: &str) -> Result<String> {
    lab.pod_netns(pod)
        .map(str::to_string)
        .with_context(|| format!("no pod {pod}"))
}

/// Reads exactly `want.len()` bytes and compares; false on a timeout (the stream's read
/// timeout bounds each read) or a difference.
fn receives(s: &mut TcpStream, want: &[u8]) -> bool {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).is_ok() && got == want
}

/// One UDP datagram from `from_ns` (bound to `sport`, 0 = any) to `to`.
fn send_udp(from_ns: &str, sport: u16, to: SocketAddr, payload: &'static [u8]) -> Result<()> {
    in_netns(from_ns, move || -> std::io::Result<()> {
        let s = UdpSocket::bind(("0.0.0.0", sport))?;
        s.send_to(payload, to)?;
        Ok(())
    })??;
    Ok(())
}

/// Whether `s` receives a datagram within `wait` (a negative check: bounded by `wait`).
fn udp_arrives(s: &UdpSocket, wait: Duration) -> bool {
    let mut b = [0u8; 64];
    s.set_read_timeout(Some(wait)).is_ok() && s.recv_from(&mut b).is_ok()
}

/// Whether a TCP connection from `from_ns`, bound to `sport`, to `to` completes within
/// `wait` (its SYN dropped: it does not).
fn connects(from_ns: &str, sport: u16, to: SocketAddr, wait: Duration) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrStorage, bind, connect, getsockopt,
        socket, sockopt,
    };
    let r = in_netns(from_ns, move || -> nix::Result<bool> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(0, 0, 0, 0, sport),
        )?;
        match connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(to),
        ) {
            Ok(()) => return Ok(true),
            Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            PollFlags::POLLOUT,
        )];
        if poll(&mut fds, PollTimeout::from(ms))? == 0 {
            return Ok(false);
        }
        Ok(getsockopt(&fd, sockopt::SocketError)? == 0)
    })??;
    Ok(r)
}

/// More distinct flows than `pal_ct_v1` holds, from `from_ns`: two UDP datagrams to each of
/// `ports` ports from 1024 up on each of `targets`, from one thread pinned to each CPU.
/// Returns the flows sent and how long it took.
///
/// Why two datagrams, and every CPU: the kernel's LRU (a "common" LRU with per-CPU lists)
/// parks a new entry on its CPU's pending list until that CPU needs free entries, puts it on
/// the active list if it was looked up meanwhile, and evicts from the inactive list first.
/// So a flood of one-packet flows, or from one CPU only, evicts itself and leaves an
/// established flow tracked by another CPU alone; an attacker whose flows see a second packet
/// (any real connection does) on every CPU evicts it.
fn flood(from_ns: &str, targets: &[IpAddr], ports: u16) -> Result<(u64, Duration)> {
    let cpus: Vec<usize> = {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
        (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    };
    let start = Instant::now();
    let flows = std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| {
                let n = cpus.len();
                scope.spawn(move || {
                    in_netns(from_ns, move || -> Result<u64> {
                        let mut set = nix::sched::CpuSet::new();
                        set.set(cpu)?;
                        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
                        let s = UdpSocket::bind(("0.0.0.0", 0))?;
                        let mut flows = 0u64;
                        for port in (1024..1024u16.saturating_add(ports)).skip(i).step_by(n) {
                            for t in targets {
                                let to = SocketAddr::new(*t, port);
                                // A full socket buffer (ENOBUFS) loses a datagram, not the flood.
                                if s.send_to(b"f", to).is_ok() && s.send_to(b"f", to).is_ok() {
                                    flows += 1;
                                }
                            }
                        }
                        Ok(flows)
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a flood thread panicked"))??
            })
            .sum::<Result<u64>>()
    })?;
    Ok((flows, start.elapsed()))
}

/// Tier 1 (the real programs on crafted frames, `BPF_PROG_TEST_RUN`): the restore rule case
/// by case, with no entry in the table (as after an eviction). The endpoint is isolated both
/// ways: ingress admits PEER4 on TCP 8080 (rule 5), egress admits PEER4 on TCP 443 (rule 6).
/// A mid-stream segment that replies to one of those flows passes as `ct_restored` and
/// re-creates that flow's entry; a SYN, a SYN-ACK, UDP, another port, another peer, a reply
/// from a Service address, and a judgement after Service translation stay dropped.
#[test]
fn privileged_only_mid_stream_tcp_replying_to_an_admitted_flow_is_restored() {
    let Some(mut dp) = setup(
        "privileged_only_mid_stream_tcp_replying_to_an_admitted_flow_is_restored",
        EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 8080, 16, 5);
    allow_peer(
        &mut dp,
        POLICY_A,
        DIR_EGRESS,
        &PEER4,
        32,
        portset(PORTSET + 1),
    );
    allow_port(&mut dp, PORTSET + 1, IPPROTO_TCP, 443, 16, 6);
    let tcp = |src, dst, sport, dport, flags| {
        V4::new(src, dst, IPPROTO_TCP).frame(&frame::tcp(sport, dport, flags))
    };

    // A server pushing on a connection its ingress admitted (entry lost): restored, and the
    // flow is tracked again as admitted: ingress, rule 5, current policy, reply seen.
    let push = tcp(POD4, PEER4, 8080, 40000, TCP_ACK);
    expect(&dp, Prog::FromPod, &push, Reason::CT_RESTORED);
    let ct = dp.conntrack().expect("reading conntrack");
    assert_eq!(ct.len(), 1, "one entry: the restored flow");
    let (k, v) = ct[0];
    let want = CtKey {
        ep_id: 42,
        dir: DIR_INGRESS,
        proto: IPPROTO_TCP,
        family: FAMILY_V4,
        _pad: 0,
        saddr_be: addr16(&PEER4),
        daddr_be: addr16(&POD4),
        sport_be: 40000u16.to_be_bytes(),
        dport_be: 8080u16.to_be_bytes(),
    };
    assert_eq!(k, want);
    assert_eq!((v.policy_gen, v.rule_ref), (POLICY_A, 5));
    assert_ne!(v.flags & CT_SEEN_REPLY, 0);
    expect(&dp, Prog::FromPod, &push, Reason::CT_REPLY);
    expect(
        &dp,
        Prog::ToPod,
        &tcp(PEER4, POD4, 40000, 8080, TCP_ACK),
        Reason::CT_ESTABLISHED,
    );
    // The event names the flow's rule and says it is a reply.
    let events = dp.flow_events().expect("reading flow events");
    let e = events
        .iter()
        .find(|e| e.reason == Reason::CT_RESTORED.0)
        .expect("a ct_restored event");
    assert_eq!(
        (e.verdict, e.dir, e.rule_ref, e.flags & EV_REPLY),
        (VERDICT_FORWARDED, DIR_EGRESS, 5, EV_REPLY)
    );

    // A client whose ingress is isolated, receiving on a connection its egress admitted.
    expect(
        &dp,
        Prog::ToPod,
        &tcp(PEER4, POD4, 443, 50000, TCP_ACK | TCP_FIN),
        Reason::CT_RESTORED,
    );
    assert_eq!(
        dp.counter(DIR_INGRESS, Reason::CT_RESTORED)
            .unwrap()
            .packets,
        1
    );

    // What opens nothing stays dropped.
    for (what, prog, f) in [
        ("SYN", Prog::FromPod, tcp(POD4, PEER4, 8080, 40001, TCP_SYN)),
        (
            "SYN-ACK",
            Prog::FromPod,
            tcp(POD4, PEER4, 8080, 40001, TCP_SYN | TCP_ACK),
        ),
        (
            "UDP",
            Prog::FromPod,
            V4::new(POD4, PEER4, IPPROTO_UDP).frame(&frame::udp(8080, 40001, 4)),
        ),
        (
            "a port no rule admits",
            Prog::FromPod,
            tcp(POD4, PEER4, 8081, 40001, TCP_ACK),
        ),
        (
            "a peer no rule admits",
            Prog::FromPod,
            tcp(POD4, OTHER4, 8080, 40001, TCP_ACK),
        ),
        ("SYN in", Prog::ToPod, tcp(PEER4, POD4, 443, 50001, TCP_SYN)),
    ] {
        let o = run(&dp, prog, &f);
        assert_eq!(
            (o.action, o.reason.name()),
            (TC_ACT_SHOT, "default_deny"),
            "{what}"
        );
    }

    // Judged after Service translation (the client's egress question only): dropped.
    let (action, _) = dp
        .run_with_mark(
            Prog::ToUplink,
            &tcp(POD4, PEER4, 8080, 40002, TCP_ACK),
            SVC_MARK,
            TEST_RUN_IFINDEX,
        )
        .unwrap();
    assert_eq!(action, TC_ACT_SHOT, "after translation");

    // A reply from a Service address (un-translated by the kernel): while SVC4 is only an
    // address the egress admits, its lost reply is restored; once it is a Service address,
    // not (the flow it replies to was judged on a backend the reply does not name).
    allow_peer(&mut dp, POLICY_A, DIR_EGRESS, &SVC4, 32, all_ports(7));
    expect(
        &dp,
        Prog::ToPod,
        &tcp(SVC4, POD4, 80, 50002, TCP_ACK),
        Reason::CT_RESTORED,
    );
    dp.add_service(HostAddrKey {
        family: FAMILY_V4,
        _pad: [0; 3],
        addr_be: addr16(&SVC4),
    })
    .unwrap();
    expect(
        &dp,
        Prog::ToPod,
        &tcp(SVC4, POD4, 80, 50003, TCP_ACK),
        Reason::DEFAULT_DENY,
    );
}

/// `pal_ctst_v1` slot `slot` summed over CPUs.
fn assured_stat(dp: &palisade_tests::bpf::Datapath, slot: u32) -> u64 {
    use aya::maps::PerCpuArray;
    assert!(slot < CTST_SLOTS);
    let m: PerCpuArray<&aya::maps::MapData, u64> =
        PerCpuArray::try_from(dp.ebpf.map(maps::ASSURED_STATS).expect("pal_ctst_v1")).unwrap();
    m.get(&slot, 0).unwrap().iter().sum()
}

/// The assured entries charged to `ep_id` (`pal_ctcnt_v1`).
fn charged(dp: &palisade_tests::bpf::Datapath, ep_id: u32) -> Option<u64> {
    use aya::maps::HashMap;
    let m: HashMap<&aya::maps::MapData, u32, u64> =
        HashMap::try_from(dp.ebpf.map(maps::ASSURED_COUNT).expect("pal_ctcnt_v1")).unwrap();
    m.get(&ep_id, 0).ok()
}

fn set_charged(dp: &mut palisade_tests::bpf::Datapath, ep_id: u32, n: u64) {
    use aya::maps::HashMap;
    let mut m: HashMap<&mut aya::maps::MapData, u32, u64> =
        HashMap::try_from(dp.ebpf.map_mut(maps::ASSURED_COUNT).expect("pal_ctcnt_v1")).unwrap();
    m.insert(ep_id, n, 0).unwrap();
}

/// The endpoint (ep_id 42) ingress-isolated, admitting PEER4 on UDP 53 (rule 5) and TCP 80
/// (rule 6).
fn setup_assured(test: &str) -> Option<palisade_tests::bpf::Datapath> {
    let mut dp = setup(test, EP_INGRESS_ISOLATED)?;
    allow_peer(&mut dp, POLICY_A, DIR_INGRESS, &PEER4, 32, portset(PORTSET));
    allow_port(&mut dp, PORTSET, IPPROTO_UDP, 53, 16, 5);
    allow_port(&mut dp, PORTSET, IPPROTO_TCP, 80, 16, 6);
    Some(dp)
}

/// PEER4's datagram from `sport` to the pod's UDP 53.
fn udp_in(sport: u16) -> Vec<u8> {
    V4::new(PEER4, POD4, IPPROTO_UDP).frame(&frame::udp(sport, 53, 4))
}

/// The pod's datagram from UDP 53 back to PEER4's `dport`.
fn udp_out(dport: u16) -> Vec<u8> {
    V4::new(POD4, PEER4, IPPROTO_UDP).frame(&frame::udp(53, dport, 4))
}

/// Tier 1: the assured tier entry by entry. The endpoint (ep_id 42) is ingress-isolated and
/// admits PEER4 on UDP 53 and TCP 80. A flow that has seen its reply stays in `pal_ct_v1` until
/// a packet refreshes its stamp (`CT_REFRESH_NS` later: staged by ageing the LRU tier), which
/// moves it to `pal_cta_v1` (one entry, charged to the endpoint, counted `promoted`); its
/// packets find it there. A short flow (a query and its answer) and a closing one (a FIN) never
/// move. At the budget (the count staged at `ASSURED_BUDGET`), the refresh still passes but the
/// flow stays in the LRU tier (counted `refused`, once per refresh), and the assured flow is
/// untouched. An expired assured entry met by a packet is deleted and uncharged (`reaped`):
/// that packet is judged as new.
#[test]
fn privileged_a_replied_flow_moves_to_the_assured_tier_at_its_next_refresh_within_its_budget() {
    let Some(mut dp) = setup_assured(
        "privileged_a_replied_flow_moves_to_the_assured_tier_at_its_next_refresh_within_its_budget",
    ) else {
        return;
    };

    // A query admitted by policy and its answer: tracked in the LRU tier, where a flow that
    // ends here stays.
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::POLICY_ALLOW);
    expect(&dp, Prog::FromPod, &udp_out(1000), Reason::CT_REPLY);
    assert!(
        dp.assured().unwrap().is_empty(),
        "a query and its answer do not move"
    );
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::CT_ESTABLISHED);
    assert!(dp.assured().unwrap().is_empty(), "nor within the second");
    assert_eq!(assured_stat(&dp, CTST_PROMOTED), 0);
    // A second later, its next packet refreshes the stamp: the flow moves.
    dp.age_lru(CT_REFRESH_NS).unwrap();
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::CT_ESTABLISHED);
    let assured = dp.assured().unwrap();
    assert_eq!(assured.len(), 1, "moved to the assured tier");
    assert_eq!(dp.conntrack().unwrap().len(), 1, "moved, not copied");
    let (k, v) = assured[0];
    assert_eq!(
        (k.ep_id, k.dir, k.sport_be),
        (42, DIR_INGRESS, 1000u16.to_be_bytes())
    );
    assert_eq!((v.rule_ref, v.flags & CT_SEEN_REPLY), (5, CT_SEEN_REPLY));
    assert_eq!(charged(&dp, 42), Some(1));
    assert_eq!(assured_stat(&dp, CTST_PROMOTED), 1);
    // Its packets find it in either direction.
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::CT_ESTABLISHED);
    expect(&dp, Prog::FromPod, &udp_out(1000), Reason::CT_REPLY);
    assert_eq!(assured_stat(&dp, CTST_PROMOTED), 1, "promoted once");

    // A closing connection never moves: SYN, SYN-ACK, the client's FIN, and a second later
    // the server's ACK refreshes a closing flow.
    let tcp_in =
        |sport, flags| V4::new(PEER4, POD4, IPPROTO_TCP).frame(&frame::tcp(sport, 80, flags));
    let tcp_out =
        |dport, flags| V4::new(POD4, PEER4, IPPROTO_TCP).frame(&frame::tcp(80, dport, flags));
    expect(
        &dp,
        Prog::ToPod,
        &tcp_in(3000, TCP_SYN),
        Reason::POLICY_ALLOW,
    );
    expect(
        &dp,
        Prog::FromPod,
        &tcp_out(3000, TCP_SYN | TCP_ACK),
        Reason::CT_REPLY,
    );
    expect(
        &dp,
        Prog::ToPod,
        &tcp_in(3000, TCP_FIN | TCP_ACK),
        Reason::CT_ESTABLISHED,
    );
    dp.age_lru(CT_REFRESH_NS).unwrap();
    expect(
        &dp,
        Prog::FromPod,
        &tcp_out(3000, TCP_ACK),
        Reason::CT_REPLY,
    );
    assert_eq!(
        dp.assured().unwrap().len(),
        1,
        "the closing flow stays in the LRU tier"
    );
    assert_eq!(
        (
            assured_stat(&dp, CTST_PROMOTED),
            assured_stat(&dp, CTST_REFUSED)
        ),
        (1, 0),
        "and costs no count"
    );

    // At the budget: the next flow's refresh passes, the flow stays in the LRU tier.
    set_charged(&mut dp, 42, u64::from(ASSURED_BUDGET));
    expect(&dp, Prog::ToPod, &udp_in(2000), Reason::POLICY_ALLOW);
    expect(&dp, Prog::FromPod, &udp_out(2000), Reason::CT_REPLY);
    dp.age_lru(CT_REFRESH_NS).unwrap();
    expect(&dp, Prog::FromPod, &udp_out(2000), Reason::CT_REPLY);
    assert_eq!(assured_stat(&dp, CTST_REFUSED), 1);
    assert_eq!(dp.assured().unwrap().len(), 1, "the first flow only");
    assert_eq!(
        dp.conntrack().unwrap().len(),
        3,
        "the refused flow stays tracked (with the closing one)"
    );
    assert_eq!(charged(&dp, 42), Some(u64::from(ASSURED_BUDGET)));
    // A refused flow is asked again at its next refresh, not before, and keeps passing.
    expect(&dp, Prog::FromPod, &udp_out(2000), Reason::CT_REPLY);
    assert_eq!(assured_stat(&dp, CTST_REFUSED), 1);
    dp.age_lru(CT_REFRESH_NS).unwrap();
    expect(&dp, Prog::ToPod, &udp_in(2000), Reason::CT_ESTABLISHED);
    assert_eq!(assured_stat(&dp, CTST_REFUSED), 2);
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::CT_ESTABLISHED);

    // Expiry: the assured entry, aged past the UDP timeout, is deleted by the packet that
    // meets it and uncharged; that packet is new (policy admits it again: tracked anew).
    set_charged(&mut dp, 42, 1);
    {
        use aya::maps::HashMap;
        let mut m: HashMap<&mut aya::maps::MapData, CtKey, CtValue> =
            HashMap::try_from(dp.ebpf.map_mut(maps::ASSURED).unwrap()).unwrap();
        let aged = CtValue {
            last_seen_ns: v.last_seen_ns - CT_TIMEOUT_OTHER_NS - 1,
            ..v
        };
        m.insert(k, aged, 0).unwrap();
    }
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::POLICY_ALLOW);
    assert_eq!(assured_stat(&dp, CTST_REAPED), 1);
    assert!(
        dp.assured().unwrap().is_empty(),
        "the expired entry is gone"
    );
    assert_eq!(charged(&dp, 42), Some(0), "and uncharged");
    assert_eq!(
        dp.conntrack().unwrap().len(),
        3,
        "tracked anew in the LRU tier (with the refused and the closing flow)"
    );
}

/// Tier 1: the agent's sweep of the assured tier (`ct_sweep::sweep`, one pass as its periodic
/// task runs it) on the pinned maps. Of the endpoint's two assured flows, the one idle past
/// the UDP timeout goes (counted `expired`), as does an entry of an endpoint that no longer
/// exists (`orphaned`); the live flow stays and is still found. The endpoint's count is
/// rewritten to what it holds and the gone endpoint's count is removed (`recounted`).
#[test]
fn privileged_the_sweep_deletes_expired_and_orphaned_assured_entries_and_recounts() {
    let Some(mut dp) = setup_assured(
        "privileged_the_sweep_deletes_expired_and_orphaned_assured_entries_and_recounts",
    ) else {
        return;
    };
    for sport in [1000, 2000] {
        expect(&dp, Prog::ToPod, &udp_in(sport), Reason::POLICY_ALLOW);
        expect(&dp, Prog::FromPod, &udp_out(sport), Reason::CT_REPLY);
    }
    // A second later, each flow's next packet moves it to the assured tier.
    dp.age_lru(CT_REFRESH_NS).unwrap();
    for sport in [1000, 2000] {
        expect(&dp, Prog::ToPod, &udp_in(sport), Reason::CT_ESTABLISHED);
    }
    assert_eq!(charged(&dp, 42), Some(2));
    {
        use aya::maps::HashMap;
        let mut m: HashMap<&mut aya::maps::MapData, CtKey, CtValue> =
            HashMap::try_from(dp.ebpf.map_mut(maps::ASSURED).unwrap()).unwrap();
        let flows: Vec<(CtKey, CtValue)> = m.iter().map(Result::unwrap).collect();
        let (k, v) = *flows
            .iter()
            .find(|(k, _)| k.sport_be == 2000u16.to_be_bytes())
            .expect("the flow from port 2000 is assured");
        let aged = CtValue {
            last_seen_ns: v.last_seen_ns - CT_TIMEOUT_OTHER_NS - 1,
            ..v
        };
        m.insert(k, aged, 0).unwrap();
        m.insert(CtKey { ep_id: 77, ..k }, v, 0).unwrap();
    }
    set_charged(&mut dp, 77, 1);
    let s = ct_sweep::sweep(dp.pin_dir()).expect("the pinned maps open");
    // (entries, expired, orphaned, recounted)
    assert_eq!(
        (s.entries, s.expired, s.orphaned, s.recounted),
        (3, 1, 1, 2)
    );
    let left = dp.assured().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (left[0].0.ep_id, left[0].0.sport_be),
        (42, 1000u16.to_be_bytes())
    );
    assert_eq!((charged(&dp, 42), charged(&dp, 77)), (Some(1), None));
    expect(&dp, Prog::ToPod, &udp_in(1000), Reason::CT_ESTABLISHED);
}

const SVC4: [u8; 4] = [10, 96, 0, 10];

/// `pal_ct_v1`'s size in the lab below: small, so that the flood that evicts all of it is quick.
const LAB_CT_ENTRIES: u32 = 8192;

/// The assured entries pinned under `bpffs` (the agent's maps), of every endpoint.
fn pinned_assured(bpffs: &std::path::Path) -> Result<Vec<(CtKey, CtValue)>> {
    use aya::maps::{HashMap, Map, MapData};
    let md = MapData::from_pin(bpffs.join("maps").join(maps::ASSURED))
        .with_context(|| format!("opening the pinned {}", maps::ASSURED))?;
    let m: HashMap<MapData, CtKey, CtValue> = HashMap::try_from(Map::HashMap(md))?;
    Ok(m.iter().collect::<Result<Vec<_>, _>>()?)
}

/// Whether `pinned` holds a flow of protocol `proto` whose (source, destination) ports are
/// `ports` (network order in the key).
fn holds(pinned: &[(CtKey, CtValue)], proto: u8, ports: (u16, u16)) -> bool {
    pinned.iter().any(|(k, v)| {
        k.proto == proto
            && k.sport_be == ports.0.to_be_bytes()
            && k.dport_be == ports.1.to_be_bytes()
            && v.flags & CT_SEEN_REPLY != 0
    })
}

#[test]
fn privileged_an_evicting_flood_cuts_no_flow_that_has_seen_its_reply() -> Result<()> {
    let test = "privileged_an_evicting_flood_cuts_no_flow_that_has_seen_its_reply";
    if !require_privileges(test) {
        return Ok(());
    }
    let mut lab = Lab::start(LabConfig {
        agent_args: vec![
            "--map-size".into(),
            format!("{}={LAB_CT_ENTRIES}", maps::CONNTRACK),
        ],
        ..LabConfig::default()
    })?;
    ensure!(
        lab.enforcing(),
        "{test}: the lab is not enforcing ({}): build with `cargo xtask build`",
        lab.mode()
    );
    lab.apply_yaml("a-serves-y", POLICY)?;
    lab.wait_synced()?;
    let (xa, yb, zb, zc) = (
        ns(&lab, "x/a")?,
        ns(&lab, "y/b")?,
        ns(&lab, "z/b")?,
        ns(&lab, "z/c")?,
    );
    let a = SocketAddr::new(v4(&lab, "x/a")?, 8080);
    let b_ip = v4(&lab, "y/b")?;

    // 1. Negative cases, before anything is tracked. x/a's egress is isolated: a SYN or a
    // datagram from its port 8080 to y/b (the reverse of flows its ingress admits) is no reply
    // of anything and stays dropped; so does a SYN or datagram from z/b, which nothing admits.
    let b_udp = in_netns(&yb, || UdpSocket::bind(("0.0.0.0", 9090)))??;
    let b_tcp = in_netns(&yb, || TcpListener::bind(("0.0.0.0", 9091)))??;
    let short = Duration::from_millis(700);
    ensure!(
        !connects(&xa, 8080, SocketAddr::new(b_ip, 9091), short)?,
        "a SYN from x/a:8080 to y/b passed x/a's isolated egress"
    );
    send_udp(&xa, 8080, SocketAddr::new(b_ip, 9090), b"from-a")?;
    ensure!(
        !udp_arrives(&b_udp, short),
        "a datagram from x/a:8080 to y/b passed x/a's isolated egress"
    );
    let a_udp = in_netns(&xa, || UdpSocket::bind(("0.0.0.0", 8080)))??;
    ensure!(
        !connects(&zb, 40000, a, short)?,
        "a SYN from z/b to x/a:8080 passed x/a's ingress"
    );
    send_udp(&zb, 0, a, b"from-zb")?;
    ensure!(
        !udp_arrives(&a_udp, short),
        "a datagram from z/b to x/a:8080 passed x/a's ingress"
    );
    drop(b_tcp);
    for (from, proto) in [
        ("x/a", "TCP"),
        ("x/a", "UDP"),
        ("z/b", "TCP"),
        ("z/b", "UDP"),
    ] {
        // The last such flow (`--last 1`), as soon as there is one.
        let f = lab.wait_flow(
            &[
                "--from-pod",
                from,
                "--protocol",
                proto,
                "--verdict",
                "DROPPED",
                "--last",
                "1",
            ],
            "dropped",
            |_| true,
        )?;
        ensure!(f["reason"] == "default_deny", "{proto} from {from}: {f}");
    }

    // 2. y/b connects to x/a:8080 (admitted), one roundtrip, then the connection idles; and
    // y/b's UDP port 9092 exchanges one datagram each way with x/a:8080. Both flows have seen
    // their reply; once they are a second old, their next packets move x/a's entries to the
    // assured tier.
    let listener = in_netns(&xa, || TcpListener::bind(("0.0.0.0", 8080)))??;
    let mut client = in_netns(&yb, move || {
        TcpStream::connect_timeout(&a, Duration::from_secs(2))
    })?
    .context("y/b connects to x/a:8080")?;
    let (mut server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    let client_port = client.local_addr()?.port();
    client.write_all(b"hello")?;
    ensure!(receives(&mut server, b"hello"), "x/a got y/b's hello");
    server.write_all(b"hi")?;
    ensure!(receives(&mut client, b"hi"), "y/b got x/a's answer");
    let b_dgram = in_netns(&yb, || UdpSocket::bind(("0.0.0.0", 9092)))??;
    b_dgram.send_to(b"ping", a)?;
    ensure!(
        udp_arrives(&a_udp, Duration::from_secs(2)),
        "x/a got y/b's ping"
    );
    let b9092 = SocketAddr::new(b_ip, 9092);
    a_udp.send_to(b"pong", b9092)?;
    ensure!(
        udp_arrives(&b_dgram, Duration::from_secs(2)),
        "y/b got x/a's pong"
    );
    let bpffs = lab.agent(0).context("agent")?.bpffs().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let assured = pinned_assured(&bpffs)?;
        if holds(&assured, IPPROTO_TCP, (client_port, 8080))
            && holds(&assured, IPPROTO_UDP, (9092, 8080))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "both flows in {} once they outlived CT_REFRESH_NS: {assured:?}",
            maps::ASSURED
        );
        std::thread::sleep(Duration::from_millis(250));
        // One more roundtrip on each flow: the packet that finds its stamp a second old moves
        // it.
        client.write_all(b"again")?;
        ensure!(receives(&mut server, b"again"), "x/a got y/b's again");
        server.write_all(b"ok")?;
        ensure!(receives(&mut client, b"ok"), "y/b got x/a's ok");
        b_dgram.send_to(b"ping", a)?;
        ensure!(
            udp_arrives(&a_udp, Duration::from_secs(2)),
            "x/a got y/b's ping"
        );
        a_udp.send_to(b"pong", b9092)?;
        ensure!(
            udp_arrives(&b_dgram, Duration::from_secs(2)),
            "y/b got x/a's pong"
        );
    }

    // 3. z/c (no policy: every flow it opens is tracked, at its egress and at the
    // destination's ingress) opens more flows than the table holds, several times over.
    let targets = FLOOD_TO
        .iter()
        .map(|p| v4(&lab, p))
        .collect::<Result<Vec<_>>>()?;
    let (sent, took) = flood(&zc, &targets, 8000)?;
    eprintln!(
        "flood: {sent} new UDP flows (two datagrams each) from z/c in {took:?} ({:.0} flows/s); pal_ct_v1 holds {LAB_CT_ENTRIES}",
        sent as f64 / took.as_secs_f64()
    );
    ensure!(
        sent > 4 * u64::from(LAB_CT_ENTRIES),
        "the flood sent {sent} flows, not more than 4 x {LAB_CT_ENTRIES}"
    );

    // The agent has read the flood's events (the ring buffer has room for the push's):
    // a drop that no flow had before shows up in `palisadectl flows`.
    let marker = SocketAddr::new(a.ip(), 8081);
    let za = ns(&lab, "z/a")?;
    let t = Instant::now();
    loop {
        ensure!(!connects(&za, 0, marker, Duration::from_millis(200))?);
        let seen = lab.agent(0).context("agent")?.flows(&[
            "--from-pod",
            "z/a",
            "--to-pod",
            "x/a",
            "--last",
            "1",
        ])?;
        if !seen.is_empty() {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the agent did not catch up with the flood's events: {}",
            lab.agent(0).context("agent")?.status()?
        );
    }
    eprintln!("the agent read the flood's events after {:?}", t.elapsed());

    // 4. x/a pushes on the idle connection and sends a datagram on the idle UDP flow: its
    // egress is isolated and the LRU tier was evicted many times over; both arrive, as
    // replies of the flows x/a's ingress admitted (found in the assured tier).
    server.write_all(b"push")?;
    ensure!(
        receives(&mut client, b"push"),
        "x/a's push on y/b's established connection did not arrive after the flood"
    );
    a_udp.send_to(b"after", b9092)?;
    ensure!(
        udp_arrives(&b_dgram, Duration::from_secs(2)),
        "x/a's datagram on the UDP flow y/b opened did not arrive after the flood"
    );
    // What the operator sees: the promotions (x/a's two flows, and z/c's flood none: it saw no
    // reply), none refused, and the tier's entries next to its capacity.
    let scraped = metrics::scrape(&lab);
    let promoted = metrics::value(&scraped, "palisade_conntrack_assured_promoted_total", &[]);
    let refused = metrics::value(&scraped, "palisade_conntrack_assured_refused_total", &[]);
    let entries = metrics::value(&scraped, "palisade_map_entries", &[("map", maps::ASSURED)]);
    eprintln!("assured: promoted {promoted}, refused {refused}, entries {entries}");
    ensure!(
        promoted >= 2.0 && refused == 0.0 && entries >= 2.0,
        "metrics: promoted {promoted}, refused {refused}, {} entries {entries}",
        maps::ASSURED
    );
    // `palisadectl status` says the same (a refusal there is how an operator learns that some
    // pod's flows stay evictable).
    let status: serde_json::Value =
        serde_json::from_str(&lab.agent(0).context("agent")?.status()?)?;
    let ct = &status["conntrack"];
    ensure!(
        ct["assured_promoted"].as_u64() >= Some(2) && ct["assured_refused"] == 0,
        "palisadectl status conntrack: {ct}"
    );
    client.write_all(b"again")?;
    ensure!(receives(&mut server, b"again"), "roundtrip after the flood");
    server.write_all(b"ok")?;
    ensure!(receives(&mut client, b"ok"), "roundtrip after the flood");

    // 5. kill -9 of the agent, a new one adopts the pinned maps (the assured tier included):
    // the flows still pass, what policy forbids is still dropped.
    {
        let agent = lab.agent_mut(0).context("agent")?;
        agent.kill_hard()?;
        agent.respawn()?;
    }
    lab.wait_synced()?;
    ensure!(
        holds(&pinned_assured(&bpffs)?, IPPROTO_UDP, (9092, 8080)),
        "the UDP flow is still assured after the agent's restart"
    );
    a_udp.send_to(b"restarted", b9092)?;
    ensure!(
        udp_arrives(&b_dgram, Duration::from_secs(2)),
        "x/a's datagram did not arrive after the agent's restart"
    );
    server.write_all(b"still")?;
    ensure!(
        receives(&mut client, b"still"),
        "x/a's push did not arrive after the agent's restart"
    );
    send_udp(&zb, 0, a, b"from-zb")?;
    ensure!(
        !udp_arrives(&a_udp, short),
        "a datagram from z/b to x/a:8080 passed x/a's ingress after the agent's restart"
    );
    a_udp.send_to(b"from-a", SocketAddr::new(b_ip, 9090))?;
    ensure!(
        !udp_arrives(&b_udp, short),
        "a datagram from x/a:8080 to y/b:9090 passed x/a's isolated egress after the restart"
    );
    Ok(())
}
