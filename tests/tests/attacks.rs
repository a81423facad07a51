//! Attacks through real packets against the real agent and eBPF datapath, in the lab (one
//! node; pods x/a, x/b, x/c wired by the real CNI plugin). Packets are crafted by hand and
//! sent from a pod's namespace (raw IP sockets with IP_HDRINCL, or AF_PACKET frames on the
//! pod's `eth0`); what arrives is observed with an AF_PACKET capture on the destination
//! pod's `eth0`, which sees every frame before IP reassembly. A "never arrives" is judged
//! after a legitimate packet sent later over the same path has arrived (a veth keeps order),
//! so no test waits a fixed time.
//!
//! Every test states its threat model in its header comment.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use palisade_tests::lab::netns::in_netns;
use palisade_tests::lab::{AgentMode, Lab, LabConfig};
use palisade_tests::packet::{
    Capture, ether, icmp4, icmp6, ipv4, ipv6, ipv6_hop, link_local, macs, send_frames,
    send_hdrincl, sys, udp,
};
use palisade_tests::require_privileges;

/// Attacks the datapath is known to let through, with the reason: the test observes them,
/// prints them LOUDLY, and does not fail, so CI stays green while the gap is open.
const KNOWN_DATAPATH_GAPS: &[(&str, &str)] = &[];

fn lab() -> Lab {
    Lab::start(LabConfig {
        agent: AgentMode::Required,
        verbose: true,
        ..LabConfig::default()
    })
    .expect("lab starts with the agent")
}

fn addr(lab: &Lab, pod: &str, v6: bool) -> IpAddr {
    *lab.pod_ips(pod)
        .expect("pod exists")
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .expect("address of the family")
}

fn netns(lab: &Lab, pod: &str) -> String {
    lab.pod_netns(pod).expect("pod exists").to_string()
}

fn apply(lab: &mut Lab, name: &str, yaml: &str) {
    lab.apply_yaml(name, yaml).expect("apply");
    lab.wait_synced().expect("agents synced");
}

fn status(lab: &Lab) -> String {
    lab.agent_status()
        .map(|s| s.join("\n"))
        .unwrap_or_else(|e| format!("(status failed: {e})"))
}

/// Threat model: a compromised pod (x/c) forges the source address of a pod the target admits
/// (x/a), to reach a target (x/b) whose ingress policy only admits x/a. Anti-spoofing at the
/// sending pod's veth must drop the forged packets, IPv4 (raw socket with IP_HDRINCL) and IPv6
/// (a hand-made frame on the pod's eth0), before they reach the target's policy.
#[test]
fn privileged_attack_spoofed_source_never_reaches_a_pod_that_admits_the_real_source() {
    if !require_privileges(
        "privileged_attack_spoofed_source_never_reaches_a_pod_that_admits_the_real_source",
    ) {
        return;
    }
    let mut lab = lab();
    apply(
        &mut lab,
        "only-from-a",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: only-from-a, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]}\n",
    );
    let (na, nb, nc) = (netns(&lab, "x/a"), netns(&lab, "x/b"), netns(&lab, "x/c"));
    let mut cap = Capture::start(&nb);
    // IPv4 through IP_HDRINCL.
    let (a4, b4) = match (addr(&lab, "x/a", false), addr(&lab, "x/b", false)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (a, b),
        _ => unreachable!(),
    };
    let dgram = |m: &[u8]| udp(a4.into(), b4.into(), 5555, 80, m);
    send_hdrincl(
        &nc,
        &[ipv4(a4, b4, 17, 0x5501, 0, false, &dgram(b"plt-spoof-v4"))],
    );
    send_hdrincl(
        &na,
        &[ipv4(a4, b4, 17, 0x5502, 0, false, &dgram(b"plt-legit-v4"))],
    );
    assert!(
        cap.wait_for(b"plt-legit-v4", 1),
        "the genuine packet from x/a never arrived (setup broken)\n{}",
        status(&lab)
    );
    assert_eq!(
        cap.count(b"plt-spoof-v4"),
        0,
        "x/c's packet with x/a's IPv4 source reached x/b\n{}",
        status(&lab)
    );
    // IPv6 through a frame on x/c's eth0.
    let (a6, b6) = match (addr(&lab, "x/a", true), addr(&lab, "x/b", true)) {
        (IpAddr::V6(a), IpAddr::V6(b)) => (a, b),
        _ => unreachable!(),
    };
    for (ns, marker) in [(&nc, &b"plt-spoof-v6"[..]), (&na, &b"plt-legit-v6"[..])] {
        let (mac, gw) = macs(ns);
        let l4 = udp(a6.into(), b6.into(), 5555, 80, marker);
        let frame = ether(gw, mac, 0x86dd, &ipv6(a6, b6, 17, &l4));
        send_frames(ns, &[frame]);
    }
    assert!(
        cap.wait_for(b"plt-legit-v6", 1),
        "the genuine IPv6 packet from x/a never arrived (setup broken)\n{}",
        status(&lab)
    );
    assert_eq!(
        cap.count(b"plt-spoof-v6"),
        0,
        "x/c's packet with x/a's IPv6 source reached x/b\n{}",
        status(&lab)
    );
}

/// Threat model: a pod (x/a) smuggles a UDP datagram to a port the target's (x/b) policy
/// denies (81) by fragmenting it: the first fragment carries the ports and is dropped by
/// policy; later fragments carry no ports and must not be admitted on their own (nor when
/// they arrive before the first). Control: the same split datagram to the allowed port (80)
/// is delivered whole (every fragment arrives and the server's echo comes back).
#[test]
fn privileged_attack_fragments_of_a_denied_datagram_never_arrive_allowed_ones_do() {
    if !require_privileges(
        "privileged_attack_fragments_of_a_denied_datagram_never_arrive_allowed_ones_do",
    ) {
        return;
    }
    let mut lab = lab();
    apply(
        &mut lab,
        "udp-80-only",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: udp-80-only, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: b}}, ingress: [{ports: [{protocol: UDP, port: 80}]}]}\n",
    );
    let (na, nb) = (netns(&lab, "x/a"), netns(&lab, "x/b"));
    let (a4, b4) = match (addr(&lab, "x/a", false), addr(&lab, "x/b", false)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (a, b),
        _ => unreachable!(),
    };
    let mut at_b = Capture::start(&nb);
    let mut at_a = Capture::start(&na);
    // Two fragments: UDP header + 16 bytes, then the rest (offset 24 bytes = 3 units).
    let split = |id: u16, port: u16, marker: &[u8]| -> Vec<Vec<u8>> {
        let mut payload = b"plt-frag-head-16".to_vec();
        payload.extend_from_slice(marker);
        let d = udp(a4.into(), b4.into(), 6666, port, &payload);
        vec![
            ipv4(a4, b4, 17, id, 0, true, &d[..24]),
            ipv4(a4, b4, 17, id, 3, false, &d[24..]),
        ]
    };
    let denied = split(0x6601, 81, b"plt-frag-denied-in-order");
    send_hdrincl(&na, &denied);
    let mut reversed = split(0x6602, 81, b"plt-frag-denied-reversed");
    reversed.reverse();
    send_hdrincl(&na, &reversed);
    send_hdrincl(&na, &split(0x6603, 80, b"plt-frag-allowed"));
    assert!(
        at_b.wait_for(b"plt-frag-allowed", 1),
        "the allowed datagram's second fragment never arrived\n{}",
        status(&lab)
    );
    let first_allowed = at_b.frames.iter().any(|f| {
        f.len() > 34 && f[14 + 4..14 + 6] == 0x6603u16.to_be_bytes() && f[14 + 6] & 0x3f == 0x20
    });
    assert!(
        first_allowed,
        "the allowed datagram's first fragment never arrived"
    );
    // Reassembled and delivered: x/b's UDP server echoes it (unfragmented) to x/a.
    assert!(
        at_a.wait_for(b"plt-frag-allowed", 1),
        "the allowed fragmented datagram was not delivered to x/b's UDP server\n{}",
        status(&lab)
    );
    for m in [
        &b"plt-frag-denied-in-order"[..],
        b"plt-frag-denied-reversed",
    ] {
        assert_eq!(
            at_b.count(m),
            0,
            "a later fragment of a datagram to denied UDP/81 reached x/b ({})\n{}",
            String::from_utf8_lossy(m),
            status(&lab)
        );
    }
    let ids_seen: Vec<u16> = at_b
        .frames
        .iter()
        .filter(|f| f.len() > 34 && f[12..14] == [0x08, 0x00])
        .map(|f| u16::from_be_bytes([f[18], f[19]]))
        .filter(|id| *id == 0x6601 || *id == 0x6602)
        .collect();
    assert!(
        ids_seen.is_empty(),
        "fragments of the denied datagrams reached x/b: ids {ids_seen:x?}"
    );
}

/// Threat model: a pod (x/a) hides the transport header of a datagram to a denied port behind
/// an IPv6 extension header (destination options), hoping the datapath reads ports at a fixed
/// offset. The datapath must walk the header chain: to the denied UDP/81 nothing arrives, to
/// the allowed UDP/80 the datagram arrives and is delivered (the server's echo comes back).
#[test]
fn privileged_attack_ipv6_extension_header_before_udp_is_judged_on_the_real_port() {
    if !require_privileges(
        "privileged_attack_ipv6_extension_header_before_udp_is_judged_on_the_real_port",
    ) {
        return;
    }
    let mut lab = lab();
    apply(
        &mut lab,
        "udp-80-only",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: udp-80-only, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: b}}, ingress: [{ports: [{protocol: UDP, port: 80}]}]}\n",
    );
    let (na, nb) = (netns(&lab, "x/a"), netns(&lab, "x/b"));
    let (a6, b6) = match (addr(&lab, "x/a", true), addr(&lab, "x/b", true)) {
        (IpAddr::V6(a), IpAddr::V6(b)) => (a, b),
        _ => unreachable!(),
    };
    let mut at_b = Capture::start(&nb);
    let mut at_a = Capture::start(&na);
    let (mac, gw) = macs(&na);
    let frame = |port: u16, marker: &[u8]| {
        // Destination options: next header UDP, length 0 (8 bytes), one PadN option.
        let mut ext = vec![17, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&udp(a6.into(), b6.into(), 7777, port, marker));
        ether(gw, mac, 0x86dd, &ipv6(a6, b6, 60, &ext))
    };
    send_frames(
        &na,
        &[frame(81, b"plt-ext-denied"), frame(80, b"plt-ext-allowed")],
    );
    assert!(
        at_b.wait_for(b"plt-ext-allowed", 1),
        "the allowed datagram behind a destination-options header never arrived\n{}",
        status(&lab)
    );
    assert!(
        at_a.wait_for(b"plt-ext-allowed", 1),
        "the allowed datagram was not delivered to x/b's UDP server (no echo)\n{}",
        status(&lab)
    );
    assert_eq!(
        at_b.count(b"plt-ext-denied"),
        0,
        "the datagram to denied UDP/81 behind a destination-options header reached x/b\n{}",
        status(&lab)
    );
}

/// Threat model: a pod (x/a) that x/b's ingress policy denies ICMP waits until x/b pings it,
/// then sends x/b an echo REQUEST reusing the identifier of x/b's own request. NetworkPolicy
/// says the request is a new flow into x/b and must be dropped (only x/b's request and its
/// reply are one flow). Listed in KNOWN_DATAPATH_GAPS while the datapath admits it.
#[test]
fn privileged_attack_icmp_echo_request_reusing_a_tracked_identifier_is_denied() {
    let name = "icmp_echo_request_reusing_the_identifier_of_a_tracked_request_passes_as_its_reply";
    if !require_privileges(
        "privileged_attack_icmp_echo_request_reusing_a_tracked_identifier_is_denied",
    ) {
        return;
    }
    let mut lab = lab();
    apply(
        &mut lab,
        "b-denies-icmp",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: b-denies-icmp, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: b}}, ingress: [{ports: [{protocol: TCP, port: 80}]}]}\n",
    );
    let (na, nb) = (netns(&lab, "x/a"), netns(&lab, "x/b"));
    let (a4, b4) = (addr(&lab, "x/a", false), addr(&lab, "x/b", false));
    const IDENT: u16 = 4242;
    // x/b pings x/a (egress not isolated): tracked at x/b's endpoint.
    assert!(
        ping(&nb, b4, a4, IDENT),
        "x/b cannot ping x/a (setup broken)"
    );
    // x/a pings x/b with another identifier: denied, as policy says.
    assert!(
        !ping(&na, a4, b4, IDENT + 1),
        "x/a's fresh echo request reached x/b"
    );
    // x/a reuses x/b's identifier.
    let passed = ping(&na, a4, b4, IDENT);
    if !passed {
        return;
    }
    match KNOWN_DATAPATH_GAPS.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => eprintln!("KNOWN DATAPATH GAP (observed, not failing): {name}: {why}"),
        None => panic!(
            "x/a's echo request reusing x/b's identifier reached x/b\n{}",
            status(&lab)
        ),
    }
}

/// One echo request from a ping socket in `ns` bound to identifier `ident`; true when the
/// reply came back within a second.
fn ping(ns: &str, src: IpAddr, dst: IpAddr, ident: u16) -> bool {
    in_netns(ns, || {
        palisade_tests::lab::netns::write_sysctl("net.ipv4.ping_group_range", "0 2147483647")
            .expect("ping_group_range");
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            let fd = OwnedFd::from_raw_fd(sys(
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
                "ping socket",
            ));
            let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
                panic!("IPv4 only")
            };
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(s.octets());
            sa.sin_port = ident.to_be();
            sys(
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                ),
                "bind ping ident",
            );
            sa.sin_addr.s_addr = u32::from_ne_bytes(d.octets());
            sa.sin_port = 0;
            let req = [8u8, 0, 0, 0, 0, 0, 0, 1, b'p', b'l', b't'];
            sys(
                libc::sendto(
                    fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&raw const sa).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                ) as i32,
                "send echo",
            );
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&raw mut pfd, 1, 1000) <= 0 {
                return false;
            }
            let mut buf = [0u8; 64];
            let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
            n >= 8 && buf[0] == 0
        }
    })
    .expect("in pod namespace")
}

/// The `palisadectl status` counter of node 0 for (`direction`, `reason`), in packets.
fn counter(lab: &Lab, direction: &str, reason: &str) -> u64 {
    let text = lab
        .agent_status()
        .expect("palisadectl status")
        .into_iter()
        .next()
        .expect("one node");
    let v: serde_json::Value = serde_json::from_str(&text).expect("status is JSON");
    v["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["direction"] == direction && c["reason"] == reason)
        .filter_map(|c| c["packets"].as_u64())
        .sum()
}

/// Waits (bounded) until `cond` holds; false if it never did.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Sends one UDP datagram from `from` (in network namespace `ns`, source port `sport`) to
/// `to`:`port`.
fn send_udp(ns: &str, from: IpAddr, sport: u16, to: IpAddr, port: u16, payload: &[u8]) {
    in_netns(ns, || {
        let s = std::net::UdpSocket::bind((from, sport)).expect("bind UDP");
        s.send_to(payload, (to, port)).expect("send UDP");
    })
    .expect("in pod namespace");
}

/// Threat model: a pod (x/a) whose egress policy denies everything, and whose ingress admits
/// x/b, tries to send data to a pod it may not reach (x/c) inside ICMP errors. x/b sends it a
/// UDP datagram (an admitted inbound flow, tracked at x/a); x/a then sends x/c "port
/// unreachable" errors that embed that flow's tuple and carry a marker, IPv4 (IP_HDRINCL) and
/// ICMPv6 (a frame on eth0). An error only relates to a flow when it goes to the source of the
/// packet it reports: nothing reaches x/c, and each forged error is counted as x/a's egress
/// `default_deny`. Control: the same errors addressed to x/b (as real errors would be) arrive.
#[test]
fn privileged_attack_forged_icmp_errors_carry_nothing_past_egress_policy() {
    if !require_privileges("privileged_attack_forged_icmp_errors_carry_nothing_past_egress_policy")
    {
        return;
    }
    let mut lab = lab();
    apply(
        &mut lab,
        "a-no-egress",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: a-no-egress, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}\n",
    );
    let (na, nb, nc) = (netns(&lab, "x/a"), netns(&lab, "x/b"), netns(&lab, "x/c"));
    let mut at_b = Capture::start(&nb);
    let mut at_c = Capture::start(&nc);
    let denied_before = counter(&lab, "egress", "default_deny");
    // IPv4: the tracked flow b:41001 -> a:80, then errors about it.
    let (a4, b4, c4) = match (
        addr(&lab, "x/a", false),
        addr(&lab, "x/b", false),
        addr(&lab, "x/c", false),
    ) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(c)) => (a, b, c),
        _ => unreachable!(),
    };
    send_udp(&nb, b4.into(), 41001, a4.into(), 80, b"plt-icmp-flow-v4");
    assert!(
        at_b.wait_for(b"plt-icmp-flow-v4", 1),
        "x/a's UDP server never echoed x/b's datagram (setup broken)\n{}",
        status(&lab)
    );
    let embedded = ipv4(
        b4,
        a4,
        17,
        0x7101,
        0,
        false,
        &udp(b4.into(), a4.into(), 41001, 80, b""),
    );
    let error_v4 = |to, marker: &[u8]| {
        let mut body = embedded.clone();
        body.extend_from_slice(marker);
        ipv4(a4, to, 1, 0x7102, 0, false, &icmp4(3, 3, [0; 4], &body))
    };
    send_hdrincl(
        &na,
        &[
            error_v4(c4, b"plt-icmp-tunnel-v4"),
            error_v4(b4, b"plt-icmp-real-v4"),
        ],
    );
    assert!(
        at_b.wait_for(b"plt-icmp-real-v4", 1),
        "an ICMP error about its flow, addressed to x/b, never arrived\n{}",
        status(&lab)
    );
    // IPv6: the tracked flow [b]:41002 -> [a]:80.
    let (a6, b6, c6) = match (
        addr(&lab, "x/a", true),
        addr(&lab, "x/b", true),
        addr(&lab, "x/c", true),
    ) {
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(c)) => (a, b, c),
        _ => unreachable!(),
    };
    send_udp(&nb, b6.into(), 41002, a6.into(), 80, b"plt-icmp-flow-v6");
    assert!(
        at_b.wait_for(b"plt-icmp-flow-v6", 1),
        "x/a's UDP server never echoed x/b's IPv6 datagram (setup broken)\n{}",
        status(&lab)
    );
    let embedded6 = ipv6(b6, a6, 17, &udp(b6.into(), a6.into(), 41002, 80, b""));
    let (mac, gw) = macs(&na);
    let error_v6 = |to, marker: &[u8]| {
        let mut body = embedded6.clone();
        body.extend_from_slice(marker);
        let icmp = icmp6(a6, to, 1, 4, [0; 4], &body);
        ether(gw, mac, 0x86dd, &ipv6(a6, to, 58, &icmp))
    };
    send_frames(
        &na,
        &[
            error_v6(c6, b"plt-icmp-tunnel-v6"),
            error_v6(b6, b"plt-icmp-real-v6"),
        ],
    );
    assert!(
        at_b.wait_for(b"plt-icmp-real-v6", 1),
        "an ICMPv6 error about its flow, addressed to x/b, never arrived\n{}",
        status(&lab)
    );
    // Both forged errors are judged (and counted) before the real ones that followed them.
    let judged = eventually(|| counter(&lab, "egress", "default_deny") >= denied_before + 2);
    for marker in [&b"plt-icmp-tunnel-v4"[..], b"plt-icmp-tunnel-v6"] {
        assert_eq!(
            at_c.count(marker),
            0,
            "x/a's forged ICMP error ({}) reached x/c past its egress policy\n{}",
            String::from_utf8_lossy(marker),
            status(&lab)
        );
    }
    assert!(
        judged,
        "the forged errors were not counted as x/a's egress default_deny\n{}",
        status(&lab)
    );
}

/// Threat model: a pod whose egress policy denies everything (x/rogue) tries to reconfigure
/// its node. The node is one whose new devices take router advertisements while forwarding
/// (`net.ipv6.conf.default.accept_ra=2`, as nodes that configure their uplink by SLAAC often
/// have). x/rogue sends the node an IPv6 router advertisement (a default route and a prefix to
/// autoconfigure an address from), a redirect, and a neighbour advertisement claiming x/b's
/// address. The node must get no route and no address from it; its side of x/rogue's veth
/// must accept neither router advertisements nor redirects at all; status must count the two
/// router messages (`router_message`) and the forged advertisement (`spoofed_source`) as
/// x/rogue's egress drops. Control: neighbour discovery still works (x/b reaches x/rogue over
/// IPv6).
#[test]
fn privileged_attack_router_advertisement_and_redirect_from_a_pod_change_nothing_on_the_node() {
    if !require_privileges(
        "privileged_attack_router_advertisement_and_redirect_from_a_pod_change_nothing_on_the_node",
    ) {
        return;
    }
    let mut lab = lab();
    let node = lab.node_netns()[0].to_string();
    in_netns(&node, || {
        palisade_tests::lab::netns::write_sysctl("net.ipv6.conf.default.accept_ra", "2")
    })
    .expect("in node namespace")
    .expect("default.accept_ra=2 on the node");
    apply(
        &mut lab,
        "rogue",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: rogue, namespace: x, labels: {pod: rogue}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: rogue-no-egress, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: rogue}}, policyTypes: [Egress]}\n",
    );
    let nr = netns(&lab, "x/rogue");
    let (rogue6, b6) = match (addr(&lab, "x/rogue", true), addr(&lab, "x/b", true)) {
        (IpAddr::V6(r), IpAddr::V6(b)) => (r, b),
        _ => unreachable!(),
    };
    let host_veth = palisade_node_api::host_veth_name(&nr, "eth0");
    let node_ll = in_netns(&node, || {
        palisade_tests::lab::netns::ip(&["-6", "-o", "addr", "show", "dev", &host_veth])
    })
    .expect("in node namespace")
    .expect("ip addr");
    let node_ll: std::net::Ipv6Addr = node_ll
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on {host_veth}: {node_ll:?}"));
    let (mac, gw_mac) = macs(&nr);
    let ll = link_local(&nr);
    let all_nodes: std::net::Ipv6Addr = "ff02::1".parse().expect("ff02::1");
    let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
    let router_before = counter(&lab, "egress", "router_message");
    let spoofed_before = counter(&lab, "egress", "spoofed_source");
    // Router advertisement: default router for 1800 s, prefix 2001:db8:dead::/64 (on-link,
    // autonomous), the pod's MAC as source link-layer address. Hop limit 255, as ND requires.
    let mut ra = vec![0u8; 8]; // reachable time, retransmit timer
    ra.extend_from_slice(&[1, 1]);
    ra.extend_from_slice(&mac);
    ra.extend_from_slice(&[3, 4, 64, 0xc0]);
    ra.extend_from_slice(&2_592_000u32.to_be_bytes());
    ra.extend_from_slice(&604_800u32.to_be_bytes());
    ra.extend_from_slice(&[0; 4]);
    ra.extend_from_slice(
        &"2001:db8:dead::"
            .parse::<std::net::Ipv6Addr>()
            .expect("prefix")
            .octets(),
    );
    let ra = icmp6(ll, all_nodes, 134, 0, [64, 0, 0x07, 0x08], &ra);
    // Redirect: "for 2001:db8:beef::1, use fe80::bad".
    let mut redirect = "fe80::bad"
        .parse::<std::net::Ipv6Addr>()
        .expect("target")
        .octets()
        .to_vec();
    redirect.extend_from_slice(
        &"2001:db8:beef::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("dst")
            .octets(),
    );
    let redirect = icmp6(ll, node_ll, 137, 0, [0; 4], &redirect);
    // Neighbour advertisement (override) claiming x/b's address.
    let na = icmp6(ll, all_nodes, 136, 0, [0x20, 0, 0, 0], &b6.octets());
    send_frames(
        &nr,
        &[
            ether(
                all_nodes_mac,
                mac,
                0x86dd,
                &ipv6_hop(ll, all_nodes, 58, 255, &ra),
            ),
            ether(
                gw_mac,
                mac,
                0x86dd,
                &ipv6_hop(ll, node_ll, 58, 255, &redirect),
            ),
            ether(
                all_nodes_mac,
                mac,
                0x86dd,
                &ipv6_hop(ll, all_nodes, 58, 255, &na),
            ),
        ],
    );
    let node_routes = || {
        let routes = palisade_tests::lab::netns::ip(&["-n", &node, "-6", "route", "show"])
            .expect("ip route");
        let addrs =
            palisade_tests::lab::netns::ip(&["-n", &node, "-6", "addr", "show"]).expect("ip addr");
        (routes, addrs)
    };
    let taken = |(routes, addrs): &(String, String)| {
        routes.contains("default")
            || routes.contains("2001:db8:dead")
            || addrs.contains("2001:db8:dead")
    };
    let settled = eventually(|| {
        taken(&node_routes())
            || (counter(&lab, "egress", "router_message") >= router_before + 2
                && counter(&lab, "egress", "spoofed_source") > spoofed_before)
    });
    let seen = node_routes();
    assert!(
        !taken(&seen),
        "the node took a route or an address from x/rogue's router advertisement:\n{}\n{}",
        seen.0,
        seen.1
    );
    assert!(
        settled,
        "x/rogue's router advertisement, redirect and forged neighbour advertisement were not \
         counted as drops (router_message, spoofed_source)\n{}",
        status(&lab)
    );
    for key in ["accept_ra", "accept_redirects"] {
        let path = format!("/proc/sys/net/ipv6/conf/{host_veth}/{key}");
        let value = in_netns(&node, || std::fs::read_to_string(&path))
            .expect("in node namespace")
            .expect("reading the sysctl");
        assert_eq!(
            value.trim(),
            "0",
            "{key} on the node's side of x/rogue's veth"
        );
    }
    // Neighbour discovery still works: the node resolves x/rogue and x/b connects over IPv6.
    let nb = netns(&lab, "x/b");
    let connects = eventually(|| {
        in_netns(&nb, || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(rogue6.into(), 80),
                std::time::Duration::from_millis(500),
            )
            .is_ok()
        })
        .expect("in pod namespace")
    });
    assert!(
        connects,
        "x/b cannot reach x/rogue over IPv6\n{}",
        status(&lab)
    );
}
