//! Tier 1: flow events from the real datapath object (`BPF_PROG_TEST_RUN`, no namespace).
//! Crafted frames go through the programs; the events they leave in `pal_flow_v1` and the
//! counters in `pal_evstat_v1` are checked: one event per decision (a new flow, allowed or
//! denied; a drop, rate-limited per flow; an audit verdict), none for established packets,
//! none when events are off, the reader woken only once enough is pending, and a full ring
//! buffer counts what it lost.

use palisade_common::{
    DIR_AUDIT, DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    endpoint::{
        EP_AUDIT_INGRESS_ISOLATED, EP_EGRESS_ISOLATED, EP_HAS_V4, EP_INGRESS_ISOLATED, EndpointInfo,
    },
    events::{
        EV_DEFERRED, EV_PARTIAL, EV_SERVICE, EVSTAT_EMITTED, EVSTAT_LOST, EVSTAT_SUPPRESSED,
        FLOW_RING_WAKE_BYTES, FlowEvent, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
    },
    packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{POL_ALL_PORTS, PolicyKey, PolicyValue, policy_prefixlen},
    service::SVC_MARK,
    stats::{CFG_NO_FLOW_EVENTS, Config, HostAddrKey},
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, TCP_ACK, TCP_SYN, V4},
    ktime_now_ns,
};

const POD: [u8; 4] = [10, 0, 0, 2];
const PEER: [u8; 4] = [10, 0, 1, 5];
const SVC: [u8; 4] = [10, 96, 0, 10];
const POLICY: u32 = 100;
const EP_ID: u32 = 42;

fn addr16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// The object with one endpoint (`flags`) on the test-run interface; `None` unprivileged.
fn setup(test: &str, flags: u32) -> Option<Datapath> {
    if !palisade_tests::require_privileges(test) {
        return None;
    }
    let mut dp = Datapath::load().expect("loading the datapath");
    let ep = EndpointInfo {
        ep_id: EP_ID,
        policy_id: POLICY,
        policy_gen: 3,
        flags: flags | EP_HAS_V4,
        ipv4_be: POD,
        ipv6_be: [0; 16],
        _pad: 0,
    };
    dp.set_endpoint(TEST_RUN_IFINDEX, ep).expect("seeding");
    Some(dp)
}

/// `peer/32` allowed on every port by rule `rule_ref`, in key direction `dir`.
fn allow(dp: &mut Datapath, dir: u8, peer: [u8; 4], rule_ref: u32) {
    let key = PolicyKey {
        policy_id_be: POLICY.to_be_bytes(),
        dir,
        family: FAMILY_V4,
        _pad: [0; 2],
        addr_be: addr16(peer),
    };
    let v = PolicyValue {
        flags: POL_ALL_PORTS,
        rule_ref,
        portset_id: 0,
        _pad: 0,
    };
    dp.add_policy(policy_prefixlen(32), key, v).expect("policy");
}

fn syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    V4::new(src, dst, IPPROTO_TCP).frame(&frame::tcp(sport, dport, TCP_SYN))
}

#[track_caller]
fn one_event(dp: &mut Datapath) -> FlowEvent {
    let ev = dp.flow_events().expect("reading events");
    assert_eq!(ev.len(), 1, "exactly one event: {ev:#?}");
    ev[0]
}

#[track_caller]
fn run(dp: &Datapath, prog: Prog, f: &[u8], action: u32) {
    assert_eq!(dp.run_raw(prog, f).expect("test run"), action);
}

/// A new allowed flow emits one forwarded event naming the allowing rule, with the tuple and
/// TCP flags; its later packets and its replies emit nothing.
#[test]
fn privileged_new_flows_emit_one_event_and_established_packets_none() {
    let Some(mut dp) = setup(
        "privileged_new_flows_emit_one_event_and_established_packets_none",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow(&mut dp, DIR_INGRESS, PEER, 7);
    run(&dp, Prog::ToPod, &syn(PEER, POD, 40000, 80), TC_ACT_OK);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.rule_ref, e.dir),
        (VERDICT_FORWARDED, Reason::POLICY_ALLOW.0, 7, DIR_INGRESS)
    );
    assert_eq!(
        (e.ep_id, e.ifindex, e.policy_gen),
        (EP_ID, TEST_RUN_IFINDEX, 3)
    );
    assert_eq!(
        (e.family, e.proto, e.tcp_flags),
        (FAMILY_V4, IPPROTO_TCP, TCP_SYN)
    );
    assert_eq!((e.saddr_be, e.daddr_be), (addr16(PEER), addr16(POD)));
    assert_eq!(
        (e.sport_be, e.dport_be),
        (40000u16.to_be_bytes(), 80u16.to_be_bytes())
    );
    assert!(e.time_ns > 0 && e.time_ns <= ktime_now_ns().unwrap());

    // The same flow again, and its reply leaving the pod: tracked, no event.
    let again = V4::new(PEER, POD, IPPROTO_TCP).frame(&frame::tcp(40000, 80, TCP_ACK));
    run(&dp, Prog::ToPod, &again, TC_ACT_OK);
    let reply = V4::new(POD, PEER, IPPROTO_TCP).frame(&frame::tcp(80, 40000, TCP_ACK));
    run(&dp, Prog::FromPod, &reply, TC_ACT_OK);
    assert_eq!(dp.flow_events().unwrap(), vec![]);

    // A new flow leaving the (egress-open) pod: not isolated, forwarded, no rule.
    let udp = V4::new(POD, PEER, IPPROTO_UDP).frame(&frame::udp(5000, 53, 8));
    run(&dp, Prog::FromPod, &udp, TC_ACT_OK);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.rule_ref, e.dir, e.proto),
        (
            VERDICT_FORWARDED,
            Reason::NOT_ISOLATED.0,
            0,
            DIR_EGRESS,
            IPPROTO_UDP
        )
    );
    assert_eq!(dp.event_stat(EVSTAT_EMITTED).unwrap(), 2);
}

/// A denied flow emits a dropped event; more drops of the same flow within the interval are
/// suppressed and counted, and the next event after the interval says how many. Another flow
/// is not held back by the first one's limit. ICMP carries its type and code.
#[test]
fn privileged_drops_are_rate_limited_per_flow() {
    let Some(mut dp) = setup(
        "privileged_drops_are_rate_limited_per_flow",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    let f = syn(PEER, POD, 40000, 80);
    for _ in 0..6 {
        run(&dp, Prog::ToPod, &f, TC_ACT_SHOT);
    }
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.suppressed),
        (VERDICT_DROPPED, Reason::DEFAULT_DENY.0, 0)
    );
    assert_eq!(dp.event_stat(EVSTAT_SUPPRESSED).unwrap(), 5);

    // Another flow (source port) of the same peer: its own event.
    run(&dp, Prog::ToPod, &syn(PEER, POD, 40001, 80), TC_ACT_SHOT);
    assert_eq!(one_event(&mut dp).sport_be, 40001u16.to_be_bytes());

    // The first flow's interval has passed (staged): the next drop is reported with the
    // count of those suppressed.
    let limits = dp.event_limits().unwrap();
    let (key, mut l) = *limits
        .iter()
        .find(|(k, _)| k.sport_be == 40000u16.to_be_bytes())
        .expect("the rate-limit entry of the first flow");
    assert_eq!(l.suppressed, 5);
    l.last_ns = ktime_now_ns().unwrap() - 2_000_000_000;
    dp.set_event_limit(key, l).unwrap();
    run(&dp, Prog::ToPod, &f, TC_ACT_SHOT);
    assert_eq!(one_event(&mut dp).suppressed, 5);

    // ICMP echo request: type 8, code 0.
    run(&dp, Prog::ToPod, &frame::ping4(PEER, POD, 9), TC_ACT_SHOT);
    let e = one_event(&mut dp);
    assert_eq!((e.proto, e.icmp_type, e.icmp_code), (IPPROTO_ICMP, 8, 0));
}

/// Audited policies decide nothing: at an endpoint only they isolate, a new flow they would
/// drop passes and is reported as an audit verdict (the would-be reason, no rule); one an
/// audited rule allows is forwarded and names that rule. Established packets: nothing.
#[test]
fn privileged_audited_policies_report_would_be_drops_and_pass_them() {
    let Some(mut dp) = setup(
        "privileged_audited_policies_report_would_be_drops_and_pass_them",
        EP_AUDIT_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow(&mut dp, DIR_INGRESS | DIR_AUDIT, PEER, 11);
    const OTHER: [u8; 4] = [10, 0, 1, 6];
    run(&dp, Prog::ToPod, &syn(OTHER, POD, 40000, 80), TC_ACT_OK);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.rule_ref),
        (VERDICT_AUDIT, Reason::DEFAULT_DENY.0, 0)
    );
    run(&dp, Prog::ToPod, &syn(PEER, POD, 40000, 80), TC_ACT_OK);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.rule_ref),
        (VERDICT_FORWARDED, Reason::NOT_ISOLATED.0, 11)
    );
    let ack = V4::new(OTHER, POD, IPPROTO_TCP).frame(&frame::tcp(40000, 80, TCP_ACK));
    run(&dp, Prog::ToPod, &ack, TC_ACT_OK);
    assert_eq!(dp.flow_events().unwrap(), vec![]);
    // The datapath counted what it enforced.
    assert_eq!(
        dp.counter(DIR_INGRESS, Reason::NOT_ISOLATED)
            .unwrap()
            .packets,
        2
    );
}

/// `CFG_NO_FLOW_EVENTS`: the programs emit nothing (and count nothing as lost).
#[test]
fn privileged_no_events_when_switched_off() {
    let Some(mut dp) = setup(
        "privileged_no_events_when_switched_off",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    dp.set_config(Config {
        flags: CFG_NO_FLOW_EVENTS,
        _pad: 0,
    })
    .unwrap();
    run(&dp, Prog::ToPod, &syn(PEER, POD, 40000, 80), TC_ACT_SHOT);
    assert_eq!(dp.flow_events().unwrap(), vec![]);
    assert_eq!(dp.event_stat(EVSTAT_EMITTED).unwrap(), 0);
    assert_eq!(dp.event_stat(EVSTAT_LOST).unwrap(), 0);
}

/// A packet on an interface without endpoint: reported with what is known (the interface),
/// marked partial, no stale tuple from the scratch entry.
#[test]
fn privileged_drop_without_endpoint_reports_the_interface_only() {
    let Some(mut dp) = setup(
        "privileged_drop_without_endpoint_reports_the_interface_only",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow(&mut dp, DIR_INGRESS, PEER, 7);
    // Leave another packet's tuple in the scratch entry first.
    run(&dp, Prog::ToPod, &syn(PEER, POD, 40000, 80), TC_ACT_OK);
    dp.flow_events().unwrap();
    dp.remove_endpoint(TEST_RUN_IFINDEX).unwrap();
    run(&dp, Prog::ToPod, &syn(PEER, POD, 40000, 80), TC_ACT_SHOT);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.ep_id, e.ifindex),
        (VERDICT_DROPPED, Reason::NO_ENDPOINT.0, 0, TEST_RUN_IFINDEX)
    );
    assert_ne!(e.flags & EV_PARTIAL, 0);
    assert_eq!((e.saddr_be, e.family, e.sport_be), ([0; 16], 0, [0; 2]));
}

/// A client's flow to a Service address: the judgement after translation reports the backend
/// and names the Service address the client used. At a client whose egress is open, the flow
/// is reported at `from_pod` with the Service address.
#[test]
fn privileged_service_flows_name_the_service_and_the_backend() {
    let Some(mut dp) = setup(
        "privileged_service_flows_name_the_service_and_the_backend",
        EP_EGRESS_ISOLATED,
    ) else {
        return;
    };
    dp.add_service(HostAddrKey {
        family: FAMILY_V4,
        _pad: [0; 3],
        addr_be: addr16(SVC),
    })
    .unwrap();
    allow(&mut dp, DIR_EGRESS, PEER, 5);
    run(&dp, Prog::FromPod, &syn(POD, SVC, 40000, 80), TC_ACT_OK);
    assert_eq!(
        dp.flow_events().unwrap(),
        vec![],
        "judged after translation"
    );
    let translated = syn(POD, PEER, 40000, 8080);
    let (action, _) = dp
        .run_with_mark(Prog::ToUplink, &translated, SVC_MARK, TEST_RUN_IFINDEX)
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.rule_ref, e.dir),
        (VERDICT_FORWARDED, Reason::POLICY_ALLOW.0, 5, DIR_EGRESS)
    );
    assert_eq!(
        e.flags & (EV_SERVICE | EV_DEFERRED),
        EV_SERVICE | EV_DEFERRED
    );
    assert_eq!(
        (e.daddr_be, e.dport_be),
        (addr16(PEER), 8080u16.to_be_bytes())
    );
    assert_eq!(
        (e.svc_addr_be, e.svc_port_be),
        (addr16(SVC), 80u16.to_be_bytes())
    );

    // A forbidden backend: dropped, still naming the Service.
    run(&dp, Prog::FromPod, &syn(POD, SVC, 40001, 80), TC_ACT_OK);
    let bad = syn(POD, [10, 0, 1, 6], 40001, 8080);
    let (action, _) = dp
        .run_with_mark(Prog::ToUplink, &bad, SVC_MARK, TEST_RUN_IFINDEX)
        .unwrap();
    assert_eq!(action, TC_ACT_SHOT);
    let e = one_event(&mut dp);
    assert_eq!((e.verdict, e.svc_addr_be), (VERDICT_DROPPED, addr16(SVC)));

    // Egress open: reported at from_pod, destination = the Service address.
    let ep = EndpointInfo {
        ep_id: EP_ID,
        policy_id: POLICY,
        policy_gen: 3,
        flags: EP_HAS_V4,
        ipv4_be: POD,
        ipv6_be: [0; 16],
        _pad: 0,
    };
    dp.set_endpoint(TEST_RUN_IFINDEX, ep).unwrap();
    run(&dp, Prog::FromPod, &syn(POD, SVC, 40002, 80), TC_ACT_OK);
    let e = one_event(&mut dp);
    assert_eq!(
        (e.verdict, e.reason, e.flags & EV_SERVICE, e.svc_addr_be),
        (
            VERDICT_FORWARDED,
            Reason::NOT_ISOLATED.0,
            EV_SERVICE,
            addr16(SVC)
        )
    );
    // Its later packets, judged after translation at an open client: nothing.
    let ack = V4::new(POD, PEER, IPPROTO_TCP).frame(&frame::tcp(40002, 8080, TCP_ACK));
    dp.run_with_mark(Prog::ToUplink, &ack, SVC_MARK, TEST_RUN_IFINDEX)
        .unwrap();
    assert_eq!(dp.flow_events().unwrap(), vec![]);
}

/// The datapath wakes the agent's reader only once `FLOW_RING_WAKE_BYTES` are pending: the
/// records below that are submitted without a wake-up (the agent's periodic drain,
/// `FLOW_DRAIN_INTERVAL_MS`, finds them), so new flows on a busy node do not each cost their
/// CPU an interrupt; the record that brings the ring to the threshold wakes it. The wait is
/// the agent's: edge-triggered epoll on the ring's fd.
#[test]
fn privileged_the_reader_is_woken_only_once_enough_events_are_pending() {
    let Some(mut dp) = setup(
        "privileged_the_reader_is_woken_only_once_enough_events_are_pending",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    allow(&mut dp, DIR_INGRESS, PEER, 7);
    let waiter = dp.flow_events_waiter().expect("epoll on pal_flow_v1");
    assert!(!waiter.woken(0).unwrap(), "an empty ring woke the reader");
    // A record: the ring buffer's 8-byte header and the event, rounded up to 8 bytes.
    let record = (8 + std::mem::size_of::<FlowEvent>()).next_multiple_of(8) as u64;
    let at_threshold = FLOW_RING_WAKE_BYTES.div_ceil(record);
    for i in 0..at_threshold - 1 {
        run(
            &dp,
            Prog::ToPod,
            &syn(PEER, POD, 1024 + i as u16, 80),
            TC_ACT_OK,
        );
    }
    // A wake-up is raised as an interrupt on the submitting CPU when the test run's system
    // call returns at the latest: 100 ms is ample for one that was raised to arrive.
    assert!(
        !waiter.woken(100).unwrap(),
        "{} records ({} bytes, under {FLOW_RING_WAKE_BYTES}) woke the reader",
        at_threshold - 1,
        (at_threshold - 1) * record
    );
    run(&dp, Prog::ToPod, &syn(PEER, POD, 60000, 80), TC_ACT_OK);
    assert!(
        waiter.woken(5_000).unwrap(),
        "{at_threshold} records ({} bytes) did not wake the reader",
        at_threshold * record
    );
    let events = dp.flow_events().unwrap();
    assert_eq!(events.len() as u64, at_threshold, "every record was kept");
    assert!(events.iter().all(|e| e.reason == Reason::POLICY_ALLOW.0));
}

/// The datapath never waits on the agent: with nobody reading, a full ring buffer loses
/// events, every loss is counted, and every packet still gets its verdict.
#[test]
fn privileged_a_full_ring_buffer_counts_lost_events() {
    let Some(mut dp) = setup(
        "privileged_a_full_ring_buffer_counts_lost_events",
        EP_INGRESS_ISOLATED,
    ) else {
        return;
    };
    // More distinct denied flows than the buffer holds (~9,300 records of 112 bytes).
    let n = 12_000u32;
    for i in 0..n {
        let f = syn(
            PEER,
            POD,
            1024 + (i % 60000) as u16,
            80 + (i / 60000) as u16,
        );
        run(&dp, Prog::ToPod, &f, TC_ACT_SHOT);
    }
    let emitted = dp.event_stat(EVSTAT_EMITTED).unwrap();
    let lost = dp.event_stat(EVSTAT_LOST).unwrap();
    assert!(lost > 0, "nothing lost: emitted {emitted}");
    assert_eq!(emitted + lost, u64::from(n));
    assert_eq!(dp.flow_events().unwrap().len() as u64, emitted);
    assert_eq!(
        dp.counter(DIR_INGRESS, Reason::DEFAULT_DENY)
            .unwrap()
            .packets,
        u64::from(n)
    );
}
