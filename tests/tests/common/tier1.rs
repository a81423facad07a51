//! The tier-1 harness shared by the `datapath*.rs` tests: one endpoint on the test-run
//! ifindex, seeded maps, and `expect` (the TC action and the one counted reason). Included with
//! `#[path]` (a subdirectory of tests/ is not a test target of its own); each test file uses
//! only part of it.
#![allow(dead_code)]

use palisade_common::{
    FAMILY_V4, FAMILY_V6,
    endpoint::{EP_HAS_V4, EP_HAS_V6, EndpointInfo},
    packet::IPPROTO_TCP,
    policy::{
        POL_ALL_PORTS, PORT_KEY_ANY_PORT_BITS, PolicyKey, PolicyValue, PortKey, PortValue,
        policy_prefixlen,
    },
    stats::HostAddrKey,
    verdict::Reason,
};
use palisade_tests::bpf::{
    Datapath, Outcome, Prog, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX,
    frame::{self, TCP_SYN, V4},
};

pub const POD4: [u8; 4] = [10, 0, 0, 2];
pub const PEER4: [u8; 4] = [10, 0, 1, 5];
pub const OTHER4: [u8; 4] = [10, 0, 1, 6];
pub const NODE4: [u8; 4] = [192, 168, 0, 10];
pub const POD6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const PEER6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
pub const LINK_LOCAL6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

pub const POLICY_A: u32 = 100;
pub const POLICY_B: u32 = 101;
pub const PORTSET: u32 = 7;

/// The endpoint under test. Its `policy_gen` follows `policy_id` here (every test policy
/// switch is to another id).
pub fn endpoint(flags: u32, policy_id: u32) -> EndpointInfo {
    EndpointInfo {
        ep_id: 42,
        policy_id,
        policy_gen: policy_id,
        flags: flags | EP_HAS_V4 | EP_HAS_V6,
        ipv4_be: POD4,
        ipv6_be: POD6,
        _pad: 0,
    }
}

/// Pins the calling thread to the CPU it runs on and returns that CPU: `BPF_PROG_TEST_RUN`
/// runs the program on the caller's CPU, so every packet of a test then meets the same
/// per-CPU state (endpoint copies, scratch entry).
pub fn stay_on_this_cpu() -> usize {
    let cpu = nix::sched::sched_getcpu().expect("sched_getcpu");
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu set");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
    cpu
}

/// The object loaded with one endpoint on the test-run ifindex; `None` when not privileged.
pub fn setup(test: &str, flags: u32) -> Option<Datapath> {
    if !palisade_tests::require_privileges(test) {
        return None;
    }
    let mut dp = Datapath::load().expect("loading the datapath");
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint(flags, POLICY_A))
        .expect("seeding the endpoint");
    Some(dp)
}

pub fn addr16(a: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..a.len()].copy_from_slice(a);
    out
}

/// A `pal_pol_v1` entry for `addr/bits` of policy `policy_id` in `dir`.
pub fn allow_peer(
    dp: &mut Datapath,
    policy_id: u32,
    dir: u8,
    addr: &[u8],
    bits: u8,
    v: PolicyValue,
) {
    let family = if addr.len() == 4 {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    let key = PolicyKey {
        policy_id_be: policy_id.to_be_bytes(),
        dir,
        family,
        _pad: [0; 2],
        addr_be: addr16(addr),
    };
    dp.add_policy(policy_prefixlen(bits), key, v)
        .expect("writing a policy entry");
}

/// Seeds the node's address [`NODE4`] in `pal_host_v1`.
pub fn seed_node_host(dp: &mut Datapath) {
    dp.add_host(HostAddrKey {
        family: FAMILY_V4,
        _pad: [0; 3],
        addr_be: addr16(&NODE4),
    })
    .expect("seeding host");
}

pub fn all_ports(rule_ref: u32) -> PolicyValue {
    PolicyValue {
        flags: POL_ALL_PORTS,
        rule_ref,
        portset_id: 0,
        _pad: 0,
    }
}

pub fn portset(portset_id: u32) -> PolicyValue {
    PolicyValue {
        flags: 0,
        rule_ref: 0,
        portset_id,
        _pad: 0,
    }
}

/// A `pal_port_v1` entry: `port_bits` of the port significant (16 = exact, 0 = any port).
pub fn allow_port(
    dp: &mut Datapath,
    portset_id: u32,
    proto: u8,
    port: u16,
    port_bits: u32,
    rule: u32,
) {
    let key = PortKey {
        portset_id_be: portset_id.to_be_bytes(),
        proto,
        port_be: port.to_be_bytes(),
        _pad: 0,
    };
    dp.add_port(
        PORT_KEY_ANY_PORT_BITS + port_bits,
        key,
        PortValue { rule_ref: rule },
    )
    .expect("writing a port entry");
}

#[track_caller]
pub fn run(dp: &Datapath, prog: Prog, f: &[u8]) -> Outcome {
    dp.run(prog, f).expect("running the program")
}

#[track_caller]
pub fn expect(dp: &Datapath, prog: Prog, f: &[u8], reason: Reason) {
    let o = run(dp, prog, f);
    assert_eq!(
        o.reason.name(),
        reason.name(),
        "{prog:?}: unexpected reason"
    );
    let action = if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    };
    assert_eq!(o.action, action, "{prog:?} {}: TC action", reason.name());
}

/// [`expect`] for the IP packet `packet` in an Ethernet frame of its IP version: a test that
/// embeds the packet in ICMP errors afterwards keeps the packet rather than the frame.
#[track_caller]
pub fn expect_packet(dp: &Datapath, prog: Prog, packet: &[u8], reason: Reason) {
    let ethertype = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    expect(dp, prog, &frame::eth(ethertype, packet), reason);
}

pub fn syn_in(src: [u8; 4], dport: u16) -> Vec<u8> {
    V4::new(src, POD4, IPPROTO_TCP).frame(&frame::tcp(40000, dport, TCP_SYN))
}
