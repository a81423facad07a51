//! Flood: a pod sending ~100,000 denied UDP datagrams per second, each to another port (a
//! new flow each, so the per-flow rate limit alone does not hold it back).
//!
//! Threat model: a pod (or its compromised workload) floods denied traffic to make the node's
//! observability cost the node: the agent's memory (history, streams), other pods' verdicts,
//! or visibility lost without anyone being told. What must hold:
//! - the agent's memory stays bounded: its history holds at most `--flow-history` flows and
//!   its resident size grows by a bounded amount, also over a second flood;
//! - other pods' verdicts stay exactly right during the flood (the datapath never waits on the
//!   ring buffer);
//! - events the agent could not take are counted, not silently lost: with the agent stopped
//!   (SIGSTOP, the worst case of "does not keep up") the ring buffer fills, the lost counter
//!   moves in `palisadectl status` and in `/metrics` (parsed as Prometheus does), and every
//!   drop of the flood is an event, a loss or a suppression.
//!
//! How fast the flood really went is printed (a loaded 2-core machine may not reach 100k/s);
//! nothing is asserted on timings.

#[path = "common/metrics.rs"]
mod metrics;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use palisade_tests::lab::{AgentMode, Lab, LabConfig, Protocol};
use palisade_tests::require_privileges;
use serde_json::Value;

const HISTORY: usize = 2000;
/// The agent's resident size may grow by this much over the floods (history, buffers).
const RSS_SLACK_KIB: u64 = 64 * 1024;

fn status(lab: &Lab) -> Value {
    serde_json::from_str(&lab.agent(0).unwrap().status().unwrap()).unwrap()
}

/// Packets dropped by ingress default deny (the flood's verdict), from `status`.
fn drops(st: &Value) -> u64 {
    st["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["direction"] == "ingress" && c["reason"] == "default_deny")
        .map(|c| c["packets"].as_u64().unwrap_or(0))
        .sum()
}

fn events(st: &Value, what: &str) -> u64 {
    st["flow_events"][what].as_u64().unwrap_or(0)
}

/// `status` once the datapath's drop counter stopped moving (the flood's queued packets are
/// judged), polled; at most 10 s.
fn settled(lab: &Lab) -> Value {
    let t = Instant::now();
    let mut last = status(lab);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let st = status(lab);
        if drops(&st) == drops(&last) || t.elapsed() > Duration::from_secs(10) {
            return st;
        }
        last = st;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `pps` UDP datagrams per second from `netns` to `dst`, each to the next destination port,
/// for `dur`; returns how many were sent and in how long.
fn flood(netns: &str, dst: IpAddr, pps: u64, dur: Duration) -> (u64, Duration) {
    palisade_tests::lab::netns::in_netns(netns, move || {
        let any = if dst.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        };
        let sock = UdpSocket::bind(SocketAddr::new(any, 0)).expect("socket");
        let start = Instant::now();
        let mut sent = 0u64;
        let mut port = 1024u16;
        while start.elapsed() < dur {
            // Paced: catch up with the schedule, then yield for a fraction of a millisecond.
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            while sent < due {
                port = if port == u16::MAX { 1024 } else { port + 1 };
                // A full socket buffer (ENOBUFS) only slows the flood down.
                if sock.send_to(b"flood", SocketAddr::new(dst, port)).is_err() {
                    break;
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        (sent, start.elapsed())
    })
    .expect("flooding from the pod")
}

/// Stops the agent (SIGSTOP) while it lives; continues it (SIGCONT) when dropped, also when
/// the test fails.
struct Stopped(Pid);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let pid = Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP).expect("stopping the agent");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn privileged_a_denied_flood_keeps_memory_bounded_verdicts_right_and_losses_counted() {
    if !require_privileges(
        "privileged_a_denied_flood_keeps_memory_bounded_verdicts_right_and_losses_counted",
    ) {
        return;
    }
    let mut lab = Lab::start(LabConfig {
        agent: AgentMode::Required,
        verbose: true,
        agent_args: vec!["--flow-history".into(), HISTORY.to_string()],
        ..LabConfig::default()
    })
    .expect("lab starts");
    lab.apply_yaml(
        "deny",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-a, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    lab.wait_synced().unwrap();
    let pid = lab.agent(0).unwrap().pid().expect("agent pid");
    let v4 = |pod: &str| {
        *lab.pod_ips(pod)
            .unwrap()
            .iter()
            .find(|a| a.is_ipv4())
            .unwrap()
    };
    let target = v4("x/a");
    let flooder = lab.pod_netns("y/c").unwrap().to_string();
    let before = status(&lab);
    let rss_before = rss_kib(pid);

    // 1. The agent running: other verdicts during the flood, memory after it.
    let dur = Duration::from_secs(4);
    let started = Instant::now();
    let ((sent, took), verdicts) = std::thread::scope(|s| {
        let f = s.spawn(|| flood(&flooder, target, 100_000, dur));
        // Allowed stays allowed, denied stays denied.
        let answers = |from: &str, to: &str| {
            let dst = SocketAddr::new(v4(to), 80);
            lab.who_answers(from, dst, Protocol::Tcp, 1, Duration::from_secs(2))
                .unwrap()[0]
                .is_some()
        };
        let mut checked = 0;
        while started.elapsed() < dur {
            assert!(
                answers("z/a", "y/a"),
                "z/a -> y/a (no policy) during the flood"
            );
            assert!(
                answers("z/b", "x/b"),
                "z/b -> x/b (no policy) during the flood"
            );
            assert!(
                !answers("z/b", "x/a"),
                "z/b -> x/a (denied) during the flood"
            );
            checked += 3;
        }
        (f.join().unwrap(), checked)
    });
    eprintln!(
        "flood: {sent} datagrams in {took:?} ({:.0}/s); {verdicts} other verdicts checked during it",
        sent as f64 / took.as_secs_f64()
    );
    assert!(verdicts >= 3);
    let after = settled(&lab);
    let dropped = drops(&after) - drops(&before);
    let d = |k: &str| events(&after, k) - events(&before, k);
    let (emitted, lost, suppressed) = (d("emitted"), d("lost"), d("suppressed"));
    eprintln!(
        "agent running: {dropped} dropped at x/a; events emitted {emitted}, lost {lost}, suppressed {suppressed}"
    );
    assert!(
        dropped >= sent / 2,
        "the datapath judged the flood ({dropped} of {sent})"
    );
    assert!(
        emitted + lost + suppressed >= dropped,
        "every drop is an event, a loss or a suppression"
    );
    let history = after["flow_events"]["history"].as_u64().unwrap();
    assert!(history <= HISTORY as u64, "history {history} > {HISTORY}");
    let rss_after = rss_kib(pid);
    eprintln!("agent RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + RSS_SLACK_KIB,
        "agent memory grew by {} KiB",
        rss_after - rss_before
    );
    // A second flood grows it no further than the bound (bounded, not merely slow growth).
    let (sent2, took2) = flood(&flooder, target, 100_000, Duration::from_secs(2));
    settled(&lab);
    let rss_again = rss_kib(pid);
    eprintln!("second flood: {sent2} datagrams in {took2:?}; agent RSS {rss_again} KiB");
    assert!(rss_again < rss_before + RSS_SLACK_KIB);
    // The flood's flows are named like any other.
    let flows = lab
        .agent(0)
        .unwrap()
        .flows(&["--from-pod", "y/c", "--verdict", "DROPPED", "--last", "3"])
        .unwrap();
    assert_eq!(flows.len(), 3);
    assert!(
        flows
            .iter()
            .all(|f| f["flow"]["destination"]["pod_name"] == "a")
    );

    // 2. The agent not reading at all: the ring buffer fills and the losses are counted.
    let before = settled(&lab);
    let (sent3, _) = {
        let _stopped = Stopped::new(pid);
        flood(&flooder, target, 100_000, Duration::from_secs(1))
    };
    let after = settled(&lab);
    let dropped = drops(&after) - drops(&before);
    let d = |k: &str| events(&after, k) - events(&before, k);
    let (emitted, lost, suppressed) = (d("emitted"), d("lost"), d("suppressed"));
    eprintln!(
        "agent stopped: {sent3} sent, {dropped} dropped at x/a; events emitted {emitted}, lost {lost}, suppressed {suppressed}"
    );
    assert!(lost > 0, "a full ring buffer counts its losses in status");
    assert!(
        emitted + lost + suppressed >= dropped,
        "every drop is an event, a loss or a suppression"
    );
    let scraped = metrics::scrape(&lab);
    let lost_metric = metrics::value(&scraped, "palisade_flow_events_lost_total", &[]);
    eprintln!("palisade_flow_events_lost_total {lost_metric}");
    assert!(
        lost_metric >= events(&after, "lost") as f64 && lost_metric > 0.0,
        "the metric counts the losses status reports"
    );
    // The agent took up reading again: a new denied flow (from a pod that sent nothing to
    // x/a before) is named.
    let dst = SocketAddr::new(target, 80);
    let answered = lab
        .who_answers("y/a", dst, Protocol::Tcp, 1, Duration::from_secs(2))
        .unwrap()[0]
        .is_some();
    assert!(!answered, "y/a -> x/a is denied");
    let t = Instant::now();
    while lab
        .agent(0)
        .unwrap()
        .flows(&["--from-pod", "y/a", "--verdict", "DROPPED", "--last", "1"])
        .unwrap()
        .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no flow from y/a after the stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
