//! In-memory maps with the semantics the applier relies on (LPM longest match, full maps that
//! refuse new keys, deleting a missing key is fine), able to fail chosen writes, and to answer
//! what the datapath would decide for a packet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use palisade_common::endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EndpointInfo};
use palisade_common::fqdn::{FqdnEndpoint, NameKey};
use palisade_common::policy::{
    POL_ALL_PORTS, PORT_KEY_ANY_PORT_BITS, PORT_KEY_ANY_PROTO_BITS, PolicyKey, PolicyValue,
    PortKey, PortValue, policy_prefixlen,
};
use palisade_common::stats::{Config, HostAddrKey};
use palisade_common::{DIR_INGRESS, FAMILY_V4, FAMILY_V6, maps};

use super::{AddrMap, Capacity, MapOps};

#[derive(Debug, Clone, PartialEq)]
pub struct FakeMaps {
    pub policy: BTreeMap<(u32, PolicyKey), PolicyValue>,
    pub ports: BTreeMap<(u32, PortKey), PortValue>,
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub services: BTreeSet<HostAddrKey>,
    pub hosts: BTreeSet<HostAddrKey>,
    pub dns_servers: BTreeSet<HostAddrKey>,
    pub fqdn_endpoints: BTreeMap<u32, FqdnEndpoint>,
    pub fqdn_names: BTreeMap<(u32, NameKey), u32>,
    pub config: Option<Config>,
    pub capacity: Capacity,
    /// Successful writes.
    pub writes: usize,
    /// Write attempts (successful or not).
    pub attempts: usize,
    /// The attempt with this number (1-based) fails.
    pub fail_at: Option<usize>,
    /// Every attempt from this number on fails.
    pub fail_from: Option<usize>,
    /// When set, a copy of the maps after every write (to check intermediate states).
    pub history: Option<Vec<FakeMaps>>,
    /// `writes` at each grace period.
    pub grace_periods: Vec<usize>,
}

impl Default for FakeMaps {
    fn default() -> Self {
        FakeMaps::with_capacity(Capacity::default())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("injected failure of write attempt {0}")]
    Injected(usize),
    #[error("{0} is full")]
    NoSpace(&'static str),
}

impl FakeMaps {
    pub fn with_capacity(capacity: Capacity) -> Self {
        FakeMaps {
            policy: BTreeMap::new(),
            ports: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            services: BTreeSet::new(),
            hosts: BTreeSet::new(),
            dns_servers: BTreeSet::new(),
            fqdn_endpoints: BTreeMap::new(),
            fqdn_names: BTreeMap::new(),
            config: None,
            capacity,
            writes: 0,
            attempts: 0,
            fail_at: None,
            fail_from: None,
            history: None,
            grace_periods: Vec::new(),
        }
    }

    /// The maps' content only (no counters or fault settings), for comparisons.
    pub fn content(&self) -> FakeMaps {
        FakeMaps {
            policy: self.policy.clone(),
            ports: self.ports.clone(),
            endpoints: self.endpoints.clone(),
            services: self.services.clone(),
            hosts: self.hosts.clone(),
            dns_servers: self.dns_servers.clone(),
            fqdn_endpoints: self.fqdn_endpoints.clone(),
            fqdn_names: self.fqdn_names.clone(),
            config: self.config,
            ..FakeMaps::with_capacity(self.capacity)
        }
    }

    /// Counts an attempt; `Err` when it is one to fail.
    fn attempt(&mut self) -> Result<(), FakeError> {
        self.attempts += 1;
        let n = self.attempts;
        if self.fail_at == Some(n) || self.fail_from.is_some_and(|f| n >= f) {
            return Err(FakeError::Injected(n));
        }
        Ok(())
    }

    fn record(&mut self) {
        self.writes += 1;
        if let Some(mut h) = self.history.take() {
            h.push(self.content());
            self.history = Some(h);
        }
    }

    fn room<K: Ord, V>(
        map: &BTreeMap<K, V>,
        k: &K,
        cap: u32,
        name: &'static str,
    ) -> Result<(), FakeError> {
        if !map.contains_key(k) && map.len() >= cap as usize {
            return Err(FakeError::NoSpace(name));
        }
        Ok(())
    }
}

impl MapOps for FakeMaps {
    type Error = FakeError;
    fn put_policy(&mut self, p: u32, k: PolicyKey, v: PolicyValue) -> Result<(), FakeError> {
        self.attempt()?;
        Self::room(&self.policy, &(p, k), self.capacity.policy, maps::POLICY)?;
        self.policy.insert((p, k), v);
        self.record();
        Ok(())
    }
    fn del_policy(&mut self, p: u32, k: PolicyKey) -> Result<(), FakeError> {
        self.attempt()?;
        self.policy.remove(&(p, k));
        self.record();
        Ok(())
    }
    fn put_port(&mut self, p: u32, k: PortKey, v: PortValue) -> Result<(), FakeError> {
        self.attempt()?;
        Self::room(&self.ports, &(p, k), self.capacity.ports, maps::PORTS)?;
        self.ports.insert((p, k), v);
        self.record();
        Ok(())
    }
    fn del_port(&mut self, p: u32, k: PortKey) -> Result<(), FakeError> {
        self.attempt()?;
        self.ports.remove(&(p, k));
        self.record();
        Ok(())
    }
    fn put_endpoint(&mut self, i: u32, v: EndpointInfo) -> Result<(), FakeError> {
        self.attempt()?;
        Self::room(
            &self.endpoints,
            &i,
            self.capacity.endpoints,
            maps::ENDPOINTS,
        )?;
        self.endpoints.insert(i, v);
        self.record();
        Ok(())
    }
    fn del_endpoint(&mut self, i: u32) -> Result<(), FakeError> {
        self.attempt()?;
        self.endpoints.remove(&i);
        self.record();
        Ok(())
    }
    fn put_addr(&mut self, map: AddrMap, k: HostAddrKey) -> Result<(), FakeError> {
        self.attempt()?;
        let (set, cap) = match map {
            AddrMap::Services => (&mut self.services, self.capacity.services),
            AddrMap::HostAddrs => (&mut self.hosts, self.capacity.host_addrs),
            AddrMap::DnsServers => (&mut self.dns_servers, self.capacity.dns_servers),
        };
        if !set.contains(&k) && set.len() >= cap as usize {
            return Err(FakeError::NoSpace(map.name()));
        }
        set.insert(k);
        self.record();
        Ok(())
    }
    fn del_addr(&mut self, map: AddrMap, k: HostAddrKey) -> Result<(), FakeError> {
        self.attempt()?;
        match map {
            AddrMap::Services => self.services.remove(&k),
            AddrMap::HostAddrs => self.hosts.remove(&k),
            AddrMap::DnsServers => self.dns_servers.remove(&k),
        };
        self.record();
        Ok(())
    }
    fn put_config(&mut self, c: Config) -> Result<(), FakeError> {
        self.attempt()?;
        self.config = Some(c);
        self.record();
        Ok(())
    }
    fn put_fqdn_endpoint(&mut self, ep_id: u32, v: FqdnEndpoint) -> Result<(), FakeError> {
        self.attempt()?;
        self.fqdn_endpoints.insert(ep_id, v);
        self.record();
        Ok(())
    }
    fn del_fqdn_endpoint(&mut self, ep_id: u32) -> Result<(), FakeError> {
        self.attempt()?;
        self.fqdn_endpoints.remove(&ep_id);
        self.record();
        Ok(())
    }
    fn put_name(&mut self, p: u32, k: NameKey, mask: u32) -> Result<(), FakeError> {
        self.attempt()?;
        let cap = self.capacity.fqdn_names;
        FakeMaps::room(&self.fqdn_names, &(p, k), cap, maps::FQDN_NAMES)?;
        self.fqdn_names.insert((p, k), mask);
        self.record();
        Ok(())
    }
    fn del_name(&mut self, p: u32, k: NameKey) -> Result<(), FakeError> {
        self.attempt()?;
        self.fqdn_names.remove(&(p, k));
        self.record();
        Ok(())
    }
    fn grace_period(&mut self) -> Result<(), FakeError> {
        self.grace_periods.push(self.writes);
        Ok(())
    }
}

/// What the datapath's policy lookups answer for a new flow of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No `pal_ep_v1` entry: dropped (fail closed).
    NoEndpoint,
    /// The direction is not isolated: allowed.
    NotIsolated,
    /// Allowed by this rule.
    Allowed(u32),
    Denied,
}

/// `addr` with all but its first `bits` bits cleared.
fn masked(addr: &[u8; 16], bits: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in addr.iter().enumerate() {
        let keep = bits.saturating_sub(8 * i as u32).min(8);
        out[i] = if keep == 0 {
            0
        } else {
            b & (0xff << (8 - keep))
        };
    }
    out
}

impl FakeMaps {
    /// What the datapath's lookups answer for a new flow of endpoint `ifindex` in direction
    /// `dir` with `peer` on (`proto`, `port`), isolation included (conntrack and the node's
    /// own addresses aside).
    pub fn answer(&self, ifindex: u32, dir: u8, peer: IpAddr, proto: u8, port: u16) -> Answer {
        let Some(info) = self.endpoints.get(&ifindex) else {
            return Answer::NoEndpoint;
        };
        let isolated = if dir == DIR_INGRESS {
            EP_INGRESS_ISOLATED
        } else {
            EP_EGRESS_ISOLATED
        };
        if info.flags & isolated == 0 {
            return Answer::NotIsolated;
        }
        let mut q = PolicyKey {
            policy_id_be: info.policy_id.to_be_bytes(),
            dir,
            ..Default::default()
        };
        match peer {
            IpAddr::V4(a) => {
                q.family = FAMILY_V4;
                q.addr_be[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                q.family = FAMILY_V6;
                q.addr_be = a.octets();
            }
        }
        // Longest match, as the LPM trie answers: the stored keys have their host bits clear.
        let addr_bits = if q.family == FAMILY_V4 { 32 } else { 128 };
        let found = (0..=addr_bits).rev().find_map(|bits| {
            let k = PolicyKey {
                addr_be: masked(&q.addr_be, bits),
                ..q
            };
            self.policy.get(&(policy_prefixlen(bits as u8), k))
        });
        let Some(v) = found else {
            return Answer::Denied;
        };
        if v.flags & POL_ALL_PORTS != 0 {
            return Answer::Allowed(v.rule_ref);
        }
        if v.portset_id == 0 {
            return Answer::Denied;
        }
        let id = v.portset_id.to_be_bytes();
        let by_port = (0..=16u32).rev().find_map(|bits| {
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            let k = PortKey {
                portset_id_be: id,
                proto,
                port_be: (port & mask).to_be_bytes(),
                _pad: 0,
            };
            self.ports.get(&(PORT_KEY_ANY_PORT_BITS + bits, k))
        });
        let any = || {
            let k = PortKey {
                portset_id_be: id,
                ..Default::default()
            };
            self.ports.get(&(PORT_KEY_ANY_PROTO_BITS, k))
        };
        match by_port.or_else(any) {
            Some(pv) => Answer::Allowed(pv.rule_ref),
            None => Answer::Denied,
        }
    }

    pub fn pinned(&self) -> super::PinnedState {
        super::PinnedState {
            endpoints: self.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
            policy: self.policy.iter().map(|((p, k), v)| (*p, *k, *v)).collect(),
            ports: self.ports.iter().map(|((p, k), v)| (*p, *k, *v)).collect(),
            services: self.services.iter().copied().collect(),
            host_addrs: self.hosts.iter().copied().collect(),
            dns_servers: self.dns_servers.iter().copied().collect(),
            fqdn_endpoints: self.fqdn_endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
            fqdn_names: self
                .fqdn_names
                .iter()
                .map(|((p, k), m)| (*p, *k, *m))
                .collect(),
            config: self.config,
        }
    }
}
