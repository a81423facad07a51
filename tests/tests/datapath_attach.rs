//! Tier 2 smoke test of the attach mechanics the agent reuses: a "node" namespace and a "pod"
//! namespace joined by a veth, `to_pod`/`from_pod` attached to the node-side end with
//! [`attach_pod_programs`], and real traffic (ICMP echo, TCP connect) dropped by default deny
//! and passing once a rule allows it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result};
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    endpoint::{EP_EGRESS_ISOLATED, EP_HAS_V4, EP_INGRESS_ISOLATED, EndpointInfo},
    packet::IPPROTO_TCP,
    policy::{PORT_KEY_FULL_BITS, PolicyKey, PolicyValue, PortKey, PortValue, policy_prefixlen},
    verdict::Reason,
};
use palisade_tests::bpf::{Datapath, attach_pod_programs};
use palisade_tests::netns::{self, Netns};

const TAG: &str = "d";
const NODE_IP: [u8; 4] = [10, 99, 0, 1];
const POD_IP: [u8; 4] = [10, 99, 0, 2];
const PORT: u16 = 8080;

fn ifindex_in(ns: &Netns, name: &str) -> Result<u32> {
    let name = name.to_string();
    ns.run_in(move || {
        nix::net::if_::if_nametoindex(name.as_str()).with_context(|| format!("ifindex of {name}"))
    })
}

fn addr16(a: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..a.len()].copy_from_slice(a);
    out
}

/// Connects from `ns` to the pod's listener and exchanges one byte each way.
fn tcp_exchange(ns: &Netns, timeout: Duration) -> Result<()> {
    ns.run_in(|| {
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(POD_IP)), PORT);
        let mut s = TcpStream::connect_timeout(&dst, timeout).context("connect")?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"?")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).context("reading the answer")?;
        Ok(())
    })
}

#[test]
fn privileged_attached_programs_enforce_default_deny_and_rules_on_real_traffic() -> Result<()> {
    if !palisade_tests::require_privileges(
        "privileged_attached_programs_enforce_default_deny_and_rules_on_real_traffic",
    ) {
        return Ok(());
    }
    netns::sweep_stale(TAG, Duration::from_secs(600));
    let node = Netns::new(TAG)?;
    let pod = Netns::new(TAG)?;
    let host_veth = palisade_tests::unique_name("dv");
    node.ip(&[
        "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ])?;
    node.ip(&["addr", "add", "10.99.0.1/24", "dev", &host_veth])?;
    node.ip(&["link", "set", &host_veth, "up"])?;
    pod.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    let ifindex = ifindex_in(&node, &host_veth)?;

    // The pod's server: accepts and answers one byte per connection, until the test ends.
    let listener = pod.run_in(|| {
        TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
            .context("listening in the pod")
    })?;
    let stop = listener.try_clone()?;
    let server = std::thread::spawn(move || {
        // Ends when the test shuts the listening socket down.
        while let Ok((mut c, _)) = listener.accept() {
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() && c.write_all(b"!").is_err() {
                eprintln!("pod server: answering failed");
            }
        }
    });
    let result = exercise(&node, &pod, &host_veth, ifindex);
    nix::sys::socket::shutdown(stop.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        .context("stopping the pod server")?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("pod server panicked"))?;
    result
}

fn exercise(node: &Netns, pod: &Netns, host_veth: &str, ifindex: u32) -> Result<()> {
    // Before attaching, traffic flows.
    netns::ping_until(
        node,
        IpAddr::V4(Ipv4Addr::from(POD_IP)),
        Duration::from_secs(5),
    )?;

    let mut dp = Datapath::load()?;
    let policy_id = 1;
    dp.set_endpoint(
        ifindex,
        EndpointInfo {
            ep_id: 1,
            policy_id,
            policy_gen: 1,
            flags: EP_HAS_V4 | EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
            ipv4_be: POD_IP,
            ipv6_be: [0; 16],
            _pad: 0,
        },
    )?;
    attach_pod_programs(&mut dp.ebpf, &node.path, host_veth)?;

    // Default deny, both ways.
    let short = Duration::from_millis(400);
    assert!(netns::ping(node, IpAddr::V4(Ipv4Addr::from(POD_IP)), short).is_err());
    assert!(tcp_exchange(node, short).is_err());
    assert!(netns::ping(pod, IpAddr::V4(Ipv4Addr::from(NODE_IP)), short).is_err());
    assert!(dp.counter(DIR_INGRESS, Reason::DEFAULT_DENY)?.packets > 0);
    assert!(dp.counter(DIR_EGRESS, Reason::DEFAULT_DENY)?.packets > 0);
    // ARP still passes (the pod resolves the node).
    assert!(
        dp.counter(DIR_INGRESS, Reason::NEIGHBOR)?.packets
            + dp.counter(DIR_EGRESS, Reason::NEIGHBOR)?.packets
            > 0
    );

    // Allow TCP 8080 from the node: the connection and its replies pass (egress stays
    // isolated, replies pass by conntrack); ping stays denied.
    let portset = 5;
    dp.add_policy(
        policy_prefixlen(32),
        PolicyKey {
            policy_id_be: policy_id.to_be_bytes(),
            dir: DIR_INGRESS,
            family: FAMILY_V4,
            _pad: [0; 2],
            addr_be: addr16(&NODE_IP),
        },
        PolicyValue {
            flags: 0,
            rule_ref: 0,
            portset_id: portset,
            _pad: 0,
        },
    )?;
    dp.add_port(
        PORT_KEY_FULL_BITS,
        PortKey {
            portset_id_be: portset.to_be_bytes(),
            proto: IPPROTO_TCP,
            port_be: PORT.to_be_bytes(),
            _pad: 0,
        },
        PortValue { rule_ref: 11 },
    )?;
    netns::wait_for(
        "TCP exchange through the allowed port",
        Duration::from_secs(5),
        || tcp_exchange(node, Duration::from_millis(500)).map(Some),
    )?;
    assert!(dp.counter(DIR_INGRESS, Reason::POLICY_ALLOW)?.packets > 0);
    assert!(dp.counter(DIR_EGRESS, Reason::CT_REPLY)?.packets > 0);
    assert!(netns::ping(node, IpAddr::V4(Ipv4Addr::from(POD_IP)), short).is_err());

    // Dropping the object detaches the programs (TCX links close with it).
    drop(dp);
    netns::ping_until(
        node,
        IpAddr::V4(Ipv4Addr::from(POD_IP)),
        Duration::from_secs(5),
    )?;
    Ok(())
}
