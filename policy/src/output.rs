//! The compiled form as map entries (`common` types), its LPM emulation, and a human view.

use std::net::IpAddr;

use palisade_common::policy::{
    POL_ALL_PORTS, PolicyKey, PolicyValue, PortKey, PortValue, RULE_DENY, policy_prefixlen,
};
use palisade_common::{FAMILY_V4, FAMILY_V6};

use palisade_common::decide::{CtMatch, Facts, decide};

use crate::compile::{Compiled, EndpointPolicy, PeerAllow, PeerPrefix};
use crate::model::{Endpoint, proto_name};
use crate::ports::PortSet;
use crate::prefix::{mask, max_len};
use crate::rules::RuleRegistry;
use crate::validate::Direction;

/// `pal_pol_v1` entries of one endpoint policy under `policy_id`: (LPM prefixlen, key, value).
/// `portset_id` is asked for the id of each non-empty port set (the agent interns them and
/// writes `port_map_entries` for each new one); an empty set becomes `portset_id` 0 (deny)
/// without asking.
pub fn policy_map_entries(
    ep: &EndpointPolicy,
    policy_id: u32,
    mut portset_id: impl FnMut(&PortSet) -> u32,
) -> Vec<(u32, PolicyKey, PolicyValue)> {
    ep.entries
        .iter()
        .map(|(pp, allow)| {
            let key = policy_key(policy_id, pp.dir, pp.addr);
            let value = match allow {
                PeerAllow::AllPorts { rule_ref } => PolicyValue {
                    flags: POL_ALL_PORTS,
                    rule_ref: *rule_ref,
                    portset_id: 0,
                    _pad: 0,
                },
                PeerAllow::Ports(set) => PolicyValue {
                    flags: 0,
                    rule_ref: 0,
                    portset_id: if set.is_empty() { 0 } else { portset_id(set) },
                    _pad: 0,
                },
            };
            (policy_prefixlen(pp.len), key, value)
        })
        .collect()
}

fn policy_key(policy_id: u32, dir: u8, addr: IpAddr) -> PolicyKey {
    let mut addr_be = [0u8; 16];
    let family = match addr {
        IpAddr::V4(a) => {
            addr_be[..4].copy_from_slice(&a.octets());
            FAMILY_V4
        }
        IpAddr::V6(a) => {
            addr_be.copy_from_slice(&a.octets());
            FAMILY_V6
        }
    };
    PolicyKey {
        policy_id_be: policy_id.to_be_bytes(),
        dir,
        family,
        _pad: [0; 2],
        addr_be,
    }
}

/// `pal_port_v1` entries of one port set under `portset_id`: (LPM prefixlen, key, value).
pub fn port_map_entries(portset_id: u32, set: &PortSet) -> Vec<(u32, PortKey, PortValue)> {
    set.0
        .iter()
        .map(|(pp, rule_ref)| {
            let key = PortKey {
                portset_id_be: portset_id.to_be_bytes(),
                proto: pp.proto.unwrap_or(0),
                port_be: pp.port.to_be_bytes(),
                _pad: 0,
            };
            (
                pp.lpm_prefixlen(),
                key,
                PortValue {
                    rule_ref: *rule_ref,
                },
            )
        })
        .collect()
}

/// The longest entry of `ep` in direction `dir` containing `peer`, as LPM lookup #1 finds it.
pub fn lookup_peer(ep: &EndpointPolicy, dir: u8, peer: IpAddr) -> Option<(PeerPrefix, &PeerAllow)> {
    (0..=max_len(&peer)).rev().find_map(|len| {
        let k = PeerPrefix {
            dir,
            addr: mask(peer, len),
            len,
        };
        ep.entries.get(&k).map(|a| (k, a))
    })
}

/// What the datapath's two lookups answer for a new flow with `peer` (the source at ingress,
/// the destination at egress): the first rule allowing it, or `None`. Isolation is not
/// considered here (see `EndpointPolicy::{ingress,egress}_isolated` and `common::decide`).
pub fn lookup(ep: &EndpointPolicy, dir: u8, peer: IpAddr, proto: u8, dst_port: u16) -> Option<u32> {
    match lookup_peer(ep, dir, peer)?.1 {
        PeerAllow::AllPorts { rule_ref } => Some(*rule_ref),
        PeerAllow::Ports(set) => set.lookup(proto, dst_port),
    }
}

/// What this node's datapath would decide for a new connection `src` -> `dst`, emulated over
/// the compiled form: egress at `src` and ingress at `dst` for whichever of them is a local
/// endpoint of `compiled`, each through `lookup` and `common::decide`.
pub fn compiled_allows(
    compiled: &Compiled,
    src: &Endpoint,
    dst: &Endpoint,
    proto: u8,
    dst_port: u16,
) -> bool {
    let check = |e: &Endpoint, dir: Direction, peer: &Endpoint| {
        let Endpoint::Pod { pod, .. } = e else {
            return true;
        };
        let Some(ep) = compiled.endpoints.get(pod) else {
            return true;
        };
        let isolated = match dir {
            Direction::Ingress => ep.ingress_isolated,
            Direction::Egress => ep.egress_isolated,
        };
        let facts = Facts {
            spoofed: false,
            peer_is_host: false,
            ct: CtMatch::New,
            ct_current: false,
            isolated,
            allow_rule: lookup(ep, dir.to_dir(), peer.addr(), proto, dst_port).unwrap_or(0),
            untracked_fragment: false,
        };
        !decide(&facts).is_drop()
    };
    check(src, Direction::Egress, dst) && check(dst, Direction::Ingress, src)
}

/// Human text for `palisadectl policy show`: isolation and what is allowed in and out.
pub fn describe(ep: &EndpointPolicy, reg: &RuleRegistry) -> String {
    let mut s = String::new();
    for dir in Direction::BOTH {
        let (isolated, word) = match dir {
            Direction::Ingress => (ep.ingress_isolated, "from"),
            Direction::Egress => (ep.egress_isolated, "to"),
        };
        if !isolated {
            s.push_str(&format!(
                "{}: not isolated, everything allowed\n",
                dir.name()
            ));
            continue;
        }
        // With ClusterNetworkPolicy tiers some entries deny (and name the Deny rule).
        let denies = ep.entries.iter().any(|(k, a)| {
            k.dir == dir.to_dir()
                && match a {
                    PeerAllow::Ports(set) => set.0.values().any(|r| r & RULE_DENY != 0),
                    PeerAllow::AllPorts { .. } => false,
                }
        });
        s.push_str(&format!(
            "{}: isolated, {}:\n",
            dir.name(),
            if denies {
                "per peer (the longest prefix decides)"
            } else {
                "allowed only"
            }
        ));
        let mut any = false;
        for (pp, allow) in ep.entries.iter().filter(|(k, _)| k.dir == dir.to_dir()) {
            any = true;
            let name = |r: u32| {
                reg.describe(r)
                    .map_or_else(|| format!("rule #{r}"), |id| id.to_string())
            };
            // What a port entry's rule_ref means: an allowing rule, a Deny rule, or a deny
            // with no rule to name (a NetworkPolicy's default deny under a tier).
            let rule = |r: u32| match r {
                0 => "denied".to_string(),
                r if r & RULE_DENY != 0 => format!("denied by {}", name(r & !RULE_DENY)),
                r => name(r),
            };
            let what = match allow {
                PeerAllow::AllPorts { rule_ref } => {
                    format!("all protocols and ports ({})", rule(*rule_ref))
                }
                PeerAllow::Ports(set) if set.is_empty() => "nothing (excepted)".to_string(),
                PeerAllow::Ports(set) => set
                    .0
                    .iter()
                    .map(|(p, r)| {
                        let ports = match p.proto {
                            None => "all protocols and ports".to_string(),
                            Some(pr) => match (p.len, p.range()) {
                                (0, _) => format!("{} all ports", proto_name(pr)),
                                (_, (lo, hi)) if lo == hi => format!("{} {lo}", proto_name(pr)),
                                (_, (lo, hi)) => format!("{} {lo}-{hi}", proto_name(pr)),
                            },
                        };
                        format!("{ports} ({})", rule(*r))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            s.push_str(&format!("  {word} {}/{}: {what}\n", pp.addr, pp.len));
        }
        if !any {
            s.push_str("  nothing\n");
        }
    }
    s
}
