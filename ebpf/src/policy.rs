//! The two LPM lookups that find the first rule allowing a (peer, protocol, port).
//! `palisade_common::policy` documents the key layout and how the agent fills the maps.

use aya_ebpf::maps::lpm_trie::Key;
use palisade_common::{
    FAMILY_V4,
    packet::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    policy::{
        POL_ALL_PORTS, PORT_KEY_ANY_PORT_BITS, PORT_KEY_FULL_BITS, PolicyKey, PortKey,
        RULE_REF_NONE, policy_prefixlen,
    },
};

use crate::maps::{POLICY, PORTS};

/// The port a policy rule is about: the destination port for TCP, UDP and SCTP, 0 for every
/// other protocol (NetworkPolicy ports exist only for those three; ICMP echo identifiers are
/// conntrack identities, not ports).
#[inline(always)]
pub fn policy_port(proto: u8, dport: [u8; 2]) -> [u8; 2] {
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP {
        dport
    } else {
        [0; 2]
    }
}

/// First rule of policy `policy_id` that allows `peer` with `proto`/`port_be` in direction
/// `dir`, or `RULE_REF_NONE`.
///
/// 1. `pal_pol_v1` longest match on (policy_id, dir, family, peer/32 or /128);
///    no entry: nothing allows this peer.
/// 2. `POL_ALL_PORTS`: the entry's `rule_ref`.
/// 3. `portset_id == 0`: an except-hole, nothing allowed.
/// 4. `pal_port_v1` longest match on (portset_id, proto, port). When the ports are unknown
///    (`ports_known == false`: a fragment whose first fragment was not seen), the lookup key
///    is only `PORT_KEY_ANY_PORT_BITS` long, so only entries allowing every port of the
///    protocol (or every protocol) can match.
#[inline(always)]
pub fn allow_rule(
    policy_id: u32,
    dir: u8,
    family: u8,
    peer: &[u8; 16],
    proto: u8,
    port_be: [u8; 2],
    ports_known: bool,
) -> u32 {
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let pk = Key::new(
        policy_prefixlen(bits),
        PolicyKey {
            policy_id_be: policy_id.to_be_bytes(),
            dir,
            family,
            _pad: [0; 2],
            addr_be: *peer,
        },
    );
    let Some(pv) = POLICY.get(&pk) else {
        return RULE_REF_NONE;
    };
    let (flags, rule_ref, portset_id) = (pv.flags, pv.rule_ref, pv.portset_id);
    if flags & POL_ALL_PORTS != 0 {
        return rule_ref;
    }
    if portset_id == 0 {
        return RULE_REF_NONE;
    }
    let prefixlen = if ports_known {
        PORT_KEY_FULL_BITS
    } else {
        PORT_KEY_ANY_PORT_BITS
    };
    let k = Key::new(
        prefixlen,
        PortKey {
            portset_id_be: portset_id.to_be_bytes(),
            proto,
            port_be,
            _pad: 0,
        },
    );
    match PORTS.get(&k) {
        Some(v) => v.rule_ref,
        None => RULE_REF_NONE,
    }
}
