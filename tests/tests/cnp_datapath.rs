//! ClusterNetworkPolicies through the datapath's stateful paths, in the lab (real CNI plugin,
//! agent and eBPF; see docs/lab.md): the properties issue 13 asks to hold "exactly as for v1
//! ones". The datapath knows no tiers (the compiler resolves Admin, NetworkPolicy and
//! Baseline into the map contents), so each test here shows one stateful path with real
//! packets under a decision that only a ClusterNetworkPolicy makes:
//!
//! - replies are admitted by conntrack, not by a rule (both ends isolated both ways);
//! - fragments follow their first fragment's Accept or Deny;
//! - Service egress is judged after translation (an Admin Deny of a pod denies its Service),
//!   and the flow names the Service and the backend;
//! - a SIGKILLed agent leaves the tiers enforced, its successor adopts them without rewriting,
//!   and a later ClusterNetworkPolicy update is enforced (and cuts what it now forbids).
//!
//! Every test states its threat model in its header comment; tests wait on conditions (agent
//! synced, a packet captured, an answer received), never on fixed sleeps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use palisade_tests::lab::kubeproxy::per_pod_services_yaml;
use palisade_tests::lab::netns::in_netns;
use palisade_tests::lab::{Family, Lab, LabConfig, Protocol};
use palisade_tests::packet::Capture;

#[path = "common/tcp_echo.rs"]
mod tcp_echo;
use tcp_echo::{Conn, Echo, can_connect};
#[path = "common/agent_restart.rs"]
mod agent_restart;
use agent_restart::Crash;

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn lab(test: &str) -> Result<Option<Lab>> {
    Ok(Lab::start_enforcing(
        test,
        LabConfig {
            verbose: true,
            ..LabConfig::default()
        },
    )?)
}

fn addr(lab: &Lab, pod: &str, family: Family) -> Result<IpAddr> {
    lab.pod_ips(pod)
        .and_then(|ips| {
            ips.iter()
                .copied()
                .find(|a| a.is_ipv4() == (family == Family::V4))
        })
        .with_context(|| format!("{pod} has no {family:?} address"))
}

fn ns<'a>(lab: &'a Lab, pod: &str) -> Result<&'a str> {
    lab.pod_netns(pod).with_context(|| format!("no pod {pod}"))
}

fn apply(lab: &mut Lab, name: &str, yaml: &str) -> Result<()> {
    lab.apply_yaml(name, yaml)?;
    lab.wait_synced()?;
    Ok(())
}

fn status(lab: &Lab) -> String {
    lab.agent_status()
        .map(|s| s.join("\n"))
        .unwrap_or_else(|e| format!("(status failed: {e})"))
}

/// Who answers one TCP connection or UDP request from `from` to `dest` (the lab's servers
/// on 80 and 81 say who they are), or `None`.
fn answer(lab: &Lab, from: &str, dest: SocketAddr, proto: Protocol) -> Result<Option<String>> {
    let got = lab.who_answers(from, dest, proto, 1, Duration::from_millis(700))?;
    Ok(got.into_iter().next().flatten())
}

/// Baseline: namespaces x and y deny all ingress and egress between pods. Admin: x/a may
/// send to y/b on TCP 8080 and UDP 80. NetworkPolicy: y/b admits x/a on the same ports (an
/// egress Accept does not open the peer's ingress). Nothing admits y/b -> x/a, nor any
/// reply by rule: replies pass because conntrack knows their connection.
const REPLIES: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny-x-y}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {matchExpressions: [{key: ns, operator: In, values: [x, y]}]}}
  ingress: [{name: deny-all, action: Deny, from: [{namespaces: {}}]}]
  egress: [{name: deny-all, action: Deny, to: [{namespaces: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-a-to-y-b}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}
  egress:
  - name: to-y-b
    action: Accept
    to: [{pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}}]
    protocols: [{tcp: {destinationPort: {number: 8080}}}, {udp: {destinationPort: {number: 80}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-x-a, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{protocol: TCP, port: 8080}, {protocol: UDP, port: 80}]
";

/// Threat model: a pod (y/b) that may only be reached must not gain a way in to its client
/// (x/a) from the replies it is allowed to send: replies are admitted because conntrack saw
/// the connection x/a opened under an Admin Accept, not by any rule, so y/b cannot open
/// anything toward x/a itself, on IPv4 and IPv6.
#[test]
fn privileged_cnp_replies_pass_by_conntrack_and_the_reverse_direction_stays_denied() -> Result<()> {
    let Some(mut lab) =
        lab("privileged_cnp_replies_pass_by_conntrack_and_the_reverse_direction_stays_denied")?
    else {
        return Ok(());
    };
    apply(&mut lab, "replies", REPLIES)?;
    let _echo_b = Echo::start(ns(&lab, "y/b")?, 8080)?;
    let _echo_a = Echo::start(ns(&lab, "x/a")?, 8080)?;
    for family in FAMILIES {
        let (a, b) = (addr(&lab, "x/a", family)?, addr(&lab, "y/b", family)?);
        // TCP both ways on one connection: the data goes out under the Admin Accept, the
        // echoes come back through y/b's egress and x/a's ingress, which the Baseline denies.
        let mut conn = Conn::open(
            ns(&lab, "x/a")?,
            SocketAddr::new(b, 8080),
            Duration::from_secs(2),
        )
        .with_context(|| format!("x/a -> y/b:8080 ({family:?}) is allowed\n{}", status(&lab)))?;
        for i in 0..3 {
            ensure!(
                conn.roundtrip(),
                "x/a <-> y/b:8080 ({family:?}): echo {i} did not come back\n{}",
                status(&lab)
            );
        }
        // UDP: the request goes out under the Admin Accept, the answer comes back as a reply.
        ensure!(
            answer(&lab, "x/a", SocketAddr::new(b, 80), Protocol::Udp)?.as_deref() == Some("y/b"),
            "x/a -> y/b UDP/80 ({family:?}): no answer\n{}",
            status(&lab)
        );
        // The reverse direction: new connections from y/b to x/a are denied (the Baseline
        // Deny), although y/b has just sent x/a packets on the same ports.
        ensure!(
            !can_connect(ns(&lab, "y/b")?, SocketAddr::new(a, 8080)),
            "y/b -> x/a:8080 ({family:?}) opened a connection: replies became a rule"
        );
        ensure!(
            answer(&lab, "y/b", SocketAddr::new(a, 80), Protocol::Udp)?.is_none(),
            "y/b -> x/a UDP/80 ({family:?}) was answered"
        );
        // What the Accept does not name stays denied too.
        ensure!(
            answer(&lab, "x/a", SocketAddr::new(b, 81), Protocol::Udp)?.is_none(),
            "x/a -> y/b UDP/81 ({family:?}) was answered: the Baseline Deny did not hold"
        );
        ensure!(
            conn.roundtrip(),
            "x/a <-> y/b:8080 ({family:?}) broke after the denied probes"
        );
    }
    Ok(())
}

/// y/b: an Admin Accept from namespace x on UDP 80, then an Admin Deny from x on UDP 81.
const FRAGMENTS: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: y-b-udp}
spec:
  tier: Admin
  priority: 20
  subject: {pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}}
  ingress:
  - {name: accept-80, action: Accept, from: [{namespaces: {matchLabels: {ns: x}}}], protocols: [{udp: {destinationPort: {number: 80}}}]}
  - {name: deny-81, action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}], protocols: [{udp: {destinationPort: {number: 81}}}]}
";

/// A datagram of 1,800 bytes (more than the pods' MTU of 1,500: the kernel fragments it)
/// that starts with `<tag>-head` and ends with `<tag>-tail`, so a capture can tell its first
/// fragment (which carries the ports) from its last (which does not).
fn big_datagram(tag: &str) -> Vec<u8> {
    let mut d = format!("{tag}-head").into_bytes();
    d.resize(1800 - tag.len() - 5, b'.');
    d.extend_from_slice(format!("{tag}-tail").as_bytes());
    d
}

/// Threat model: a pod (x/a) sends a datagram an Admin Deny forbids (UDP 81) in fragments,
/// hoping the fragments without ports slip past a Deny that only the first fragment can be
/// matched against. None of its fragments may arrive; the same datagram to the port the Admin
/// Accept allows (UDP 80) arrives whole and its (also fragmented) echo comes back. The
/// kernel fragments both (a plain UDP socket and a datagram larger than the MTU), IPv4 and
/// IPv6; a capture on y/b's eth0 sees the fragments before reassembly.
#[test]
fn privileged_cnp_fragments_follow_the_admin_accept_or_deny_of_their_first_fragment() -> Result<()>
{
    let Some(mut lab) =
        lab("privileged_cnp_fragments_follow_the_admin_accept_or_deny_of_their_first_fragment")?
    else {
        return Ok(());
    };
    apply(&mut lab, "fragments", FRAGMENTS)?;
    for family in FAMILIES {
        let b = addr(&lab, "y/b", family)?;
        // Small datagrams first: the Accept and the Deny hold (and links are ready).
        ensure!(
            answer(&lab, "x/a", SocketAddr::new(b, 80), Protocol::Udp)?.as_deref() == Some("y/b"),
            "x/a -> y/b UDP/80 ({family:?}) is accepted\n{}",
            status(&lab)
        );
        ensure!(
            answer(&lab, "x/a", SocketAddr::new(b, 81), Protocol::Udp)?.is_none(),
            "x/a -> y/b UDP/81 ({family:?}) is denied by the Admin Deny"
        );
        let mut at_b = Capture::start(ns(&lab, "y/b")?);
        let unspecified: IpAddr = match family {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        };
        let sock = in_netns(ns(&lab, "x/a")?, move || {
            UdpSocket::bind(SocketAddr::new(unspecified, 0))
        })??;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let denied = big_datagram(&format!("plt-cnp-frag-denied-{family:?}"));
        let allowed = big_datagram(&format!("plt-cnp-frag-allowed-{family:?}"));
        // The denied datagram first: a veth keeps order, so once the allowed one has
        // arrived, any fragment of the denied one would have arrived before it.
        sock.send_to(&denied, SocketAddr::new(b, 81))?;
        sock.send_to(&allowed, SocketAddr::new(b, 80))?;
        let (allowed_head, allowed_tail) = (
            format!("plt-cnp-frag-allowed-{family:?}-head"),
            format!("plt-cnp-frag-allowed-{family:?}-tail"),
        );
        let (denied_head, denied_tail) = (
            format!("plt-cnp-frag-denied-{family:?}-head"),
            format!("plt-cnp-frag-denied-{family:?}-tail"),
        );
        ensure!(
            at_b.wait_for(allowed_tail.as_bytes(), 1) && at_b.wait_for(allowed_head.as_bytes(), 1),
            "the allowed datagram's fragments did not all reach y/b ({family:?})\n{}",
            status(&lab)
        );
        // Fragmented for real: no frame carries both ends.
        ensure!(
            !at_b.frames.iter().any(|f| {
                f.windows(allowed_head.len())
                    .any(|w| w == allowed_head.as_bytes())
                    && f.windows(allowed_tail.len())
                        .any(|w| w == allowed_tail.as_bytes())
            }),
            "the allowed datagram was not fragmented ({family:?}): the test proves nothing"
        );
        // Delivered whole: y/b's UDP server echoes all 1,800 bytes.
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (n, from) = sock.recv_from(&mut buf).with_context(|| {
                format!(
                    "no echo of the allowed fragmented datagram ({family:?})\n{}",
                    status(&lab)
                )
            })?;
            if from == SocketAddr::new(b, 80) && buf[..n] == allowed[..] {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the echo of the allowed datagram never came back whole ({family:?})"
            );
        }
        for m in [&denied_head, &denied_tail] {
            ensure!(
                at_b.count(m.as_bytes()) == 0,
                "a fragment of the datagram to the denied UDP/81 reached y/b ({m})\n{}",
                status(&lab)
            );
        }
    }
    Ok(())
}

/// x/a may not send anything to pod y/b (Admin Deny, by pod selector).
const SERVICE_DENY: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-a-not-to-y-b}
spec:
  tier: Admin
  priority: 30
  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}
  egress:
  - name: no-y-b
    action: Deny
    to: [{pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}}]
";

/// Threat model: a pod (x/a) that an Admin Deny keeps from a pod (y/b) reaches it through a
/// Service whose backend it is: the ClusterIP is not y/b's address, so a datapath judging
/// before translation would let it pass. Egress is judged after kube-proxy's DNAT, on the
/// backend: y/b's Service is denied (TCP and UDP, IPv4 and IPv6) while y/a's Service passes,
/// and the flow names the Service and the backend.
#[test]
fn privileged_cnp_service_egress_is_judged_on_the_backend_after_translation() -> Result<()> {
    let Some(mut lab) =
        lab("privileged_cnp_service_egress_is_judged_on_the_backend_after_translation")?
    else {
        return Ok(());
    };
    // svc-<pod> in the pod's namespace: port 1080 -> target 80 (1081 -> 81).
    let services = per_pod_services_yaml(&lab.model().pods, 1000, false);
    lab.apply_services("services", &services)?;
    apply(&mut lab, "deny", SERVICE_DENY)?;
    for family in FAMILIES {
        let svc_a = lab.cluster_ip("y", "svc-a", family)?;
        let svc_b = lab.cluster_ip("y", "svc-b", family)?;
        let b = addr(&lab, "y/b", family)?;
        for proto in [Protocol::Tcp, Protocol::Udp] {
            ensure!(
                answer(&lab, "x/a", SocketAddr::new(svc_a, 1080), proto)?.as_deref() == Some("y/a"),
                "x/a -> svc-a ({svc_a}:1080 {proto:?}) passes to y/a\n{}",
                status(&lab)
            );
            ensure!(
                answer(&lab, "x/a", SocketAddr::new(svc_b, 1080), proto)?.is_none(),
                "x/a -> svc-b ({svc_b}:1080 {proto:?}) reached y/b past the Admin Deny"
            );
            ensure!(
                answer(&lab, "x/a", SocketAddr::new(b, 80), proto)?.is_none(),
                "x/a -> y/b:80 ({proto:?}, {family:?}) passed the Admin Deny"
            );
            // Another client is not a subject: svc-b answers it.
            ensure!(
                answer(&lab, "x/b", SocketAddr::new(svc_b, 1080), proto)?.as_deref() == Some("y/b"),
                "x/b -> svc-b ({svc_b}:1080 {proto:?}) passes to y/b\n{}",
                status(&lab)
            );
        }
        // What the operator sees: the dropped flow names the Service and the backend.
        let svc_addr = SocketAddr::new(svc_b, 1080).to_string();
        let f = lab.wait_flow(
            &["--from-pod", "x/a", "--verdict", "DROPPED", "--last", "200"],
            "x/a -> svc-b dropped",
            |f| {
                f["destination_service"]["address"].as_str() == Some(svc_addr.as_str())
                    && f["l4"]["TCP"].is_object()
            },
        )?;
        ensure!(
            f["destination"]["namespace"] == "y" && f["destination"]["pod_name"] == "b",
            "the flow names the backend y/b: {f}"
        );
        ensure!(
            f["destination_service"]["namespace"] == "y"
                && f["destination_service"]["name"] == "svc-b",
            "the flow names the Service y/svc-b: {f}"
        );
        ensure!(
            f["l4"]["TCP"]["destination_port"] == 80,
            "the flow shows the translated port 80: {f}"
        );
        ensure!(
            f["drop_reason_desc"] == "POLICY_DENY",
            "the drop is the Admin Deny's (POLICY_DENY): {f}"
        );
        let svc_a_addr = SocketAddr::new(svc_a, 1080).to_string();
        let f = lab.wait_flow(
            &[
                "--from-pod",
                "x/a",
                "--verdict",
                "FORWARDED",
                "--last",
                "200",
            ],
            "x/a -> svc-a forwarded",
            |f| {
                f["traffic_direction"] == "EGRESS"
                    && f["destination_service"]["address"].as_str() == Some(svc_a_addr.as_str())
            },
        )?;
        ensure!(
            f["destination"]["pod_name"] == "a" && f["destination_service"]["name"] == "svc-a",
            "the forwarded flow names svc-a and its backend y/a: {f}"
        );
    }
    Ok(())
}

/// x/a on TCP 8080: an Admin Accept from namespace `accept`, an Admin Deny from namespace
/// `deny`, and a NetworkPolicy that admits only namespace z (which the Admin Deny overrides
/// when `deny` is z).
fn restart_policies(accept: &str, deny: &str) -> String {
    format!(
        "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: x-a-8080}}
spec:
  tier: Admin
  priority: 40
  subject: {{pods: {{namespaceSelector: {{matchLabels: {{ns: x}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}
  ingress:
  - {{name: accept, action: Accept, from: [{{namespaces: {{matchLabels: {{ns: {accept}}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 8080}}}}}}]}}
  - {{name: deny, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: {deny}}}}}}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a-from-z, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}]}}]
"
    )
}

/// Threat model: the agent can crash or be OOM-killed at any moment. The tiers live in pinned
/// maps, so without an agent an Admin Accept keeps admitting (new and established
/// connections) and an Admin Deny keeps denying even what a NetworkPolicy allows; the next
/// agent adopts the pinned state without rewriting it (same endpoint and policy ids) and then
/// enforces a ClusterNetworkPolicy update, cutting the connection the update forbids.
#[test]
fn privileged_cnp_enforcement_survives_sigkill_and_the_successor_adopts_then_enforces_updates()
-> Result<()> {
    let Some(mut lab) = lab(
        "privileged_cnp_enforcement_survives_sigkill_and_the_successor_adopts_then_enforces_updates",
    )?
    else {
        return Ok(());
    };
    let a = SocketAddr::new(addr(&lab, "x/a", Family::V4)?, 8080);
    let _echo = Echo::start(ns(&lab, "x/a")?, 8080)?;
    apply(&mut lab, "x-a-8080", &restart_policies("y", "z"))?;
    let mut established = Conn::open(ns(&lab, "y/b")?, a, Duration::from_secs(2))
        .with_context(|| format!("y/b -> x/a:8080 is accepted\n{}", status(&lab)))?;
    ensure!(
        established.roundtrip(),
        "y/b -> x/a:8080 accepted, but no echo"
    );
    ensure!(
        !can_connect(ns(&lab, "z/c")?, a),
        "z/c -> x/a:8080: the Admin Deny must override the NetworkPolicy"
    );
    ensure!(
        !can_connect(ns(&lab, "x/b")?, a),
        "x/b -> x/a:8080: neither tier admits it"
    );
    // Without an agent the Admin Accept keeps admitting y and the Admin Deny keeps denying
    // z (which the NetworkPolicy allows); the successor adopts and the Deny still holds.
    agent_restart::kill_and_adopt(
        &mut lab,
        Crash {
            target: a,
            established: &mut established,
            allowed: "y/c",
            denied: "z/c",
        },
    )?;

    // The update the successor must enforce: z accepted, y denied.
    apply(&mut lab, "x-a-8080", &restart_policies("z", "y"))?;
    ensure!(
        can_connect(ns(&lab, "z/c")?, a),
        "z/c -> x/a:8080 is accepted after the update\n{}",
        status(&lab)
    );
    ensure!(
        !can_connect(ns(&lab, "y/c")?, a),
        "y/c -> x/a:8080 is denied after the update"
    );
    ensure!(
        !established.roundtrip(),
        "y/b's connection survived an update that now denies it"
    );
    Ok(())
}
