//! The compiled form as the agent's applier consumes it (the desired state of each endpoint:
//! map keys in `common` types, port sets as shared contents), its LPM emulation, and a human
//! view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_common::endpoint::{
    EP_AUDIT_EGRESS_ISOLATED, EP_AUDIT_INGRESS_ISOLATED, EP_EGRESS_ISOLATED, EP_HAS_V4, EP_HAS_V6,
    EP_INGRESS_ISOLATED, EP_NAME_RULES,
};
use palisade_common::policy::{PolicyKey, PortKey, RULE_DENY, policy_prefixlen};
use palisade_common::{FAMILY_V4, FAMILY_V6};

use palisade_common::decide::{CtMatch, Facts, decide};

use crate::compile::{Compiled, EndpointPolicy, PeerAllow, PeerPrefix};
use crate::fqdn::EndpointNames;
use crate::fqdn::maps::{DesiredNames, name_patterns, variant_entries};
use crate::model::{Endpoint, proto_name};
use crate::ports::PortSet;
use crate::prefix::{mask, max_len};
use crate::rules::RuleRegistry;
use crate::validate::Direction;

/// The entries of one port set as `pal_port_v1` holds them, with `portset_id` zeroed:
/// (LPM prefixlen, key, `rule_ref`). The applier writes a content once under a `portset_id` of
/// its own and shares it between every entry and endpoint that uses it.
pub type PortContent = BTreeSet<(u32, PortKey, u32)>;

/// What one `pal_pol_v1` entry allows, in the form the agent's applier consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    /// Every protocol and port; the rule that allows it.
    All(u32),
    /// A port set (empty: nothing allowed, an except-hole). Contents are immutable and shared
    /// (`Arc`), so comparing two unchanged entries stops at the pointer.
    Ports(Arc<PortContent>),
}

/// `pal_pol_v1` entries of one endpoint, with `policy_id` zeroed: (LPM prefixlen, key) -> allow.
pub type Entries = BTreeMap<(u32, PolicyKey), Allow>;

/// What one endpoint should look like in the maps: its `pal_ep_v1` entry (without the ids the
/// applier allocates) and its policy entries. The desired state the policy crate hands to the
/// agent's applier; no map encoding happens before the applier's own writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredEndpoint {
    /// Host-side veth ifindex (the `pal_ep_v1` key).
    pub ifindex: u32,
    pub ep_id: u32,
    /// `EP_*` flags (isolation and address families).
    pub flags: u32,
    pub ipv4_be: [u8; 4],
    pub ipv6_be: [u8; 16],
    /// Shared between endpoints with the same policy and from one compile to the next while
    /// the policy does not change. For an endpoint with name rules, its variant policies too
    /// (`with_names`).
    pub entries: Arc<Entries>,
    /// Egress by domain name: set with `EP_NAME_RULES` (`with_names`).
    pub names: Option<DesiredNames>,
}

impl DesiredEndpoint {
    /// An endpoint isolated both ways with nothing allowed (fail closed), with its addresses.
    pub fn isolated(ifindex: u32, ep_id: u32, addrs: &[IpAddr]) -> Self {
        let mut d = DesiredEndpoint {
            ifindex,
            ep_id,
            flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
            ipv4_be: [0; 4],
            ipv6_be: [0; 16],
            entries: Arc::default(),
            names: None,
        };
        for a in addrs {
            match a {
                IpAddr::V4(v4) => {
                    d.flags |= EP_HAS_V4;
                    d.ipv4_be = v4.octets();
                }
                IpAddr::V6(v6) => {
                    d.flags |= EP_HAS_V6;
                    d.ipv6_be = v6.octets();
                }
            }
        }
        d
    }

    /// The endpoint with `ep`'s isolation and `entries` (which must be `ep`'s, see
    /// [`endpoint_entries`]).
    pub fn with_policy(mut self, ep: &EndpointPolicy, entries: Arc<Entries>) -> Self {
        self.flags &= !(EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
        for (on, bit) in [
            (ep.ingress_isolated, EP_INGRESS_ISOLATED),
            (ep.egress_isolated, EP_EGRESS_ISOLATED),
            (ep.audit_ingress_isolated, EP_AUDIT_INGRESS_ISOLATED),
            (ep.audit_egress_isolated, EP_AUDIT_EGRESS_ISOLATED),
        ] {
            if on {
                self.flags |= bit;
            }
        }
        self.entries = entries;
        self
    }

    /// The endpoint with `names`' rules (after `with_policy`; nothing changes when it has
    /// none): `EP_NAME_RULES`, its pattern set, and its variant policies added to its entries.
    pub fn with_names(mut self, names: &EndpointNames, contents: &mut PortContents) -> Self {
        if names.name_rules.is_empty() {
            return self;
        }
        self.flags |= EP_NAME_RULES;
        Arc::make_mut(&mut self.entries).extend(variant_entries(names, contents));
        self.names = Some(DesiredNames {
            rules: names.name_rules.len() as u32,
            patterns: Arc::new(name_patterns(names)),
        });
        self
    }
}

/// The endpoint as the maps should hold it, from its compiled policy. `None` (a pod the source
/// does not know yet) gives an endpoint isolated both ways with nothing allowed: fail closed
/// until its labels are known.
pub fn desired_endpoint(
    ep: Option<&EndpointPolicy>,
    ifindex: u32,
    ep_id: u32,
    addrs: &[IpAddr],
    contents: &mut PortContents,
) -> DesiredEndpoint {
    let d = DesiredEndpoint::isolated(ifindex, ep_id, addrs);
    match ep {
        Some(ep) => d.with_policy(ep, Arc::new(endpoint_entries(ep, contents))),
        None => d,
    }
}

/// Port set contents by port set. A caller that builds entries repeatedly keeps one and calls
/// [`PortContents::next_round`] between rounds: a set used again keeps its `Arc`.
#[derive(Debug, Default)]
pub struct PortContents {
    old: HashMap<PortSet, Arc<PortContent>>,
    new: HashMap<PortSet, Arc<PortContent>>,
    empty: Arc<PortContent>,
}

impl PortContents {
    /// The content of `set` (shared with every earlier request for an equal set this round or
    /// the previous one).
    pub fn get(&mut self, set: &PortSet) -> Arc<PortContent> {
        if set.is_empty() {
            // Nothing allowed: the applier writes no port entries for it.
            return self.empty.clone();
        }
        if let Some(c) = self.new.get(set) {
            return c.clone();
        }
        let c = match self.old.remove_entry(set) {
            Some((_, c)) => c,
            None => Arc::new(port_content(set)),
        };
        self.new.insert(set.clone(), c.clone());
        c
    }

    /// Starts a new round: contents not requested since the previous call are returned (to be
    /// dropped by the caller when convenient: freeing large sets takes time).
    pub fn next_round(&mut self) -> HashMap<PortSet, Arc<PortContent>> {
        std::mem::replace(&mut self.old, std::mem::take(&mut self.new))
    }
}

/// The `pal_pol_v1` entries of `ep` (policy id 0), port sets resolved through `contents`.
pub fn endpoint_entries(ep: &EndpointPolicy, contents: &mut PortContents) -> Entries {
    ep.entries
        .iter()
        .map(|(pp, allow)| {
            let allow = match allow {
                PeerAllow::AllPorts { rule_ref } => Allow::All(*rule_ref),
                PeerAllow::Ports(set) => Allow::Ports(contents.get(set)),
            };
            (
                (policy_prefixlen(pp.len), policy_key(pp.dir, pp.addr)),
                allow,
            )
        })
        .collect()
}

fn policy_key(dir: u8, addr: IpAddr) -> PolicyKey {
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
        policy_id_be: [0; 4],
        dir,
        family,
        _pad: [0; 2],
        addr_be,
    }
}

/// The `pal_port_v1` entries of one port set, `portset_id` zeroed.
pub fn port_content(set: &PortSet) -> PortContent {
    set.0
        .iter()
        .map(|(pp, rule_ref)| {
            let key = PortKey {
                portset_id_be: [0; 4],
                proto: pp.proto.unwrap_or(0),
                port_be: pp.port.to_be_bytes(),
                _pad: 0,
            };
            (pp.lpm_prefixlen(), key, *rule_ref)
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
