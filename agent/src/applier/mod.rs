//! The agent's one write path: every map the agent writes (`pal_ep_v1`, `pal_pol_v1`,
//! `pal_port_v1`, `pal_svc_v1`, `pal_host_v1`, `pal_cfg_v1`, and for egress by domain name
//! `pal_fqep_v1`, `pal_fqname_v1`, `pal_dnssrv_v1`) is written here, as one diff
//! between what the applier knows the maps hold and the desired state of the node.
//!
//! What holds, whatever fails (proven in `tests.rs` with the fault-injecting [`fake::FakeMaps`],
//! which fails the k-th write for every k of large changes):
//! 1. **Capacity is checked before writing.** A change whose entries would not fit in a map
//!    (its real `max_entries`, see [`Capacity`]) writes nothing and is reported with the
//!    numbers ([`Full`]); a map never fills up half-way through an object. The desired state
//!    is built with the same capacities in mind (`services::service_addrs` admits Services,
//!    `compile` limits what one policy may take), so this check is the last line, not the
//!    policy.
//! 2. **Old or new, never a mix, nothing leaked.** A write that fails half-way leaves the old
//!    or the new state of its object in force: `endpoints` has the order and the undo journal
//!    for the policy maps, `sets` the argument for address sets. Entries no endpoint uses any
//!    more are deleted after a grace period (a packet that read them just before a switch
//!    still finds them, see `endpoints`); those that could not be deleted are remembered and
//!    deleted first by the next apply.
//! 3. **One object failing does not stop the others.** [`Outcome`] lists failures per
//!    endpoint and per map; everything else was applied.
//! 4. **The applier's view is the maps' content** (after adopting the pinned maps), even after
//!    a failure, so an unchanged desired state writes nothing and a retry writes only what is
//!    still missing.

mod endpoints;
#[cfg(test)]
pub mod fake;
mod names;
mod sets;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use palisade_common::endpoint::EndpointInfo;
use palisade_common::fqdn::{DEFAULT_MAX_LEARNT_PER_POD, FqdnEndpoint, NameKey};
use palisade_common::maps;
use palisade_common::policy::{PolicyKey, PolicyValue, PortKey, PortValue};
use palisade_common::service::SvcAddrKey;
use palisade_common::stats::{Config, HostAddrKey};

pub use palisade_policy::{Allow, DesiredEndpoint, Entries, PortContent};

/// The address-set maps (hash maps from [`HostAddrKey`] to 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrMap {
    /// `pal_svc_v1`: every Service address (egress judged after translation).
    Services,
    /// `pal_host_v1`: this node's addresses (traffic with the node always passes).
    HostAddrs,
    /// `pal_dnssrv_v1`: the cluster DNS Service's addresses (only their answers teach).
    DnsServers,
}

impl AddrMap {
    pub fn name(self) -> &'static str {
        match self {
            AddrMap::Services => maps::SERVICES,
            AddrMap::HostAddrs => maps::HOST_ADDRS,
            AddrMap::DnsServers => maps::DNS_SERVERS,
        }
    }
}

/// The map operations the applier needs: the real maps (`datapath_ops::Ops`), or an in-memory
/// fake in tests. Deleting a key that is not there is not an error (cleanup is idempotent).
pub trait MapOps {
    type Error: std::error::Error + Send + Sync + 'static;
    fn put_policy(
        &mut self,
        prefixlen: u32,
        key: PolicyKey,
        value: PolicyValue,
    ) -> Result<(), Self::Error>;
    fn del_policy(&mut self, prefixlen: u32, key: PolicyKey) -> Result<(), Self::Error>;
    fn put_port(
        &mut self,
        prefixlen: u32,
        key: PortKey,
        value: PortValue,
    ) -> Result<(), Self::Error>;
    fn del_port(&mut self, prefixlen: u32, key: PortKey) -> Result<(), Self::Error>;
    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), Self::Error>;
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error>;
    fn put_addr(&mut self, map: AddrMap, key: HostAddrKey) -> Result<(), Self::Error>;
    fn del_addr(&mut self, map: AddrMap, key: HostAddrKey) -> Result<(), Self::Error>;
    fn put_config(&mut self, config: Config) -> Result<(), Self::Error>;
    fn put_fqdn_endpoint(&mut self, ep_id: u32, value: FqdnEndpoint) -> Result<(), Self::Error>;
    fn del_fqdn_endpoint(&mut self, ep_id: u32) -> Result<(), Self::Error>;
    /// A `pal_fqname_v1` entry (LPM `prefixlen`, key, rule mask).
    fn put_name(&mut self, prefixlen: u32, key: NameKey, mask: u32) -> Result<(), Self::Error>;
    fn del_name(&mut self, prefixlen: u32, key: NameKey) -> Result<(), Self::Error>;
    /// Returns once every datapath program run that started before the call has finished
    /// (nothing read before the call is still being used).
    fn grace_period(&mut self) -> Result<(), Self::Error>;
}

/// `max_entries` of the maps the applier fills (read from the loaded maps: `--map-size` and
/// pinned maps may differ from the defaults in `palisade_common::maps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub endpoints: u32,
    pub policy: u32,
    pub ports: u32,
    pub services: u32,
    pub host_addrs: u32,
    pub dns_servers: u32,
    pub fqdn_names: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            endpoints: maps::ENDPOINTS_MAX,
            policy: maps::POLICY_MAX,
            ports: maps::PORTS_MAX,
            services: maps::SERVICES_MAX,
            host_addrs: maps::HOST_ADDRS_MAX,
            dns_servers: maps::DNS_SERVERS_MAX,
            fqdn_names: maps::FQDN_NAMES_MAX,
        }
    }
}

/// Entries present in each map, as the applier knows them (entries waiting to be deleted
/// included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub endpoints: usize,
    pub policy: usize,
    pub ports: usize,
    pub services: usize,
    pub host_addrs: usize,
    pub dns_servers: usize,
    /// Endpoints with name rules (`pal_fqep_v1`).
    pub fqdn_endpoints: usize,
    pub fqdn_names: usize,
}

impl Usage {
    /// The entries of pinned map `map` (a `palisade_common::maps` name) if the applier writes
    /// it; `None` for the maps the datapath fills (they are counted where they are read).
    pub fn entries(&self, map: &str) -> Option<usize> {
        Some(match map {
            maps::ENDPOINTS => self.endpoints,
            maps::POLICY => self.policy,
            maps::PORTS => self.ports,
            maps::HOST_ADDRS => self.host_addrs,
            maps::SERVICES => self.services,
            maps::DNS_SERVERS => self.dns_servers,
            maps::FQDN_ENDPOINTS => self.fqdn_endpoints,
            maps::FQDN_NAMES => self.fqdn_names,
            _ => return None,
        })
    }
}

/// A change that does not fit, found before anything of it was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{map} is full: {needed} more entries needed, {free} of {capacity} free")]
pub struct Full {
    pub map: &'static str,
    pub needed: usize,
    pub free: usize,
    pub capacity: u32,
}

impl Full {
    /// `Err` when `needed` more entries do not fit beside `used`.
    pub fn check(map: &'static str, used: usize, needed: usize, capacity: u32) -> Result<(), Full> {
        let free = (capacity as usize).saturating_sub(used);
        if needed > free {
            return Err(Full {
                map,
                needed,
                free,
                capacity,
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Full(#[from] Full),
    #[error(transparent)]
    Map(E),
}

/// Everything the agent wants the maps to hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    pub config: Config,
    pub host_addrs: BTreeSet<HostAddrKey>,
    pub services: BTreeSet<SvcAddrKey>,
    /// The cluster DNS Service's addresses (`pal_dnssrv_v1`).
    pub dns_servers: BTreeSet<HostAddrKey>,
    /// Learnt addresses per pod (`FqdnEndpoint::max_learnt`); `None`:
    /// `DEFAULT_MAX_LEARNT_PER_POD`.
    pub fqdn_max_learnt: Option<u32>,
    /// By host-side ifindex.
    pub endpoints: BTreeMap<u32, DesiredEndpoint>,
}

/// What one apply did not do; everything else is in force.
#[derive(Debug)]
pub struct Outcome<E: std::error::Error + 'static> {
    /// Something was written.
    pub written: bool,
    /// Endpoints left in their previous state (or still absent, or not yet removed).
    pub endpoints: BTreeMap<u32, ApplyError<E>>,
    /// Address sets and config left in their previous state (map name, why).
    pub maps: Vec<(&'static str, ApplyError<E>)>,
    /// Entries no longer used that could not be deleted yet (deleted by the next apply).
    pub leftovers: usize,
}

impl<E: std::error::Error + 'static> Default for Outcome<E> {
    fn default() -> Self {
        Outcome {
            written: false,
            endpoints: BTreeMap::new(),
            maps: Vec::new(),
            leftovers: 0,
        }
    }
}

impl<E: std::error::Error + 'static> Outcome<E> {
    pub fn is_complete(&self) -> bool {
        self.endpoints.is_empty() && self.maps.is_empty()
    }
}

/// What was read back from pinned maps when adopting them.
#[derive(Default, Debug)]
pub struct PinnedState {
    pub endpoints: Vec<(u32, EndpointInfo)>,
    pub policy: Vec<(u32, PolicyKey, PolicyValue)>,
    pub ports: Vec<(u32, PortKey, PortValue)>,
    pub services: Vec<SvcAddrKey>,
    pub host_addrs: Vec<HostAddrKey>,
    pub dns_servers: Vec<HostAddrKey>,
    pub fqdn_endpoints: Vec<(u32, FqdnEndpoint)>,
    pub fqdn_names: Vec<(u32, NameKey, u32)>,
    pub config: Option<Config>,
}

#[derive(Debug)]
pub struct Applier {
    capacity: Capacity,
    endpoints: endpoints::EndpointMaps,
    services: sets::AddrSet,
    hosts: sets::AddrSet,
    dns_servers: sets::AddrSet,
    names: names::NameMaps,
    /// `None` until written (or adopted).
    config: Option<Config>,
}

impl Applier {
    /// An applier for empty maps.
    pub fn new(capacity: Capacity) -> Self {
        Applier::adopt(PinnedState::default(), capacity)
    }

    /// Rebuilds the applied view from pinned maps, so that the first apply after a restart
    /// rewrites only what differs, and deletes what a crash mid-apply left behind.
    pub fn adopt(pinned: PinnedState, capacity: Capacity) -> Self {
        Applier {
            capacity,
            endpoints: endpoints::EndpointMaps::adopt(
                pinned.endpoints,
                pinned.policy,
                pinned.ports,
            ),
            services: sets::AddrSet::adopt(AddrMap::Services, pinned.services),
            hosts: sets::AddrSet::adopt(AddrMap::HostAddrs, pinned.host_addrs),
            dns_servers: sets::AddrSet::adopt(AddrMap::DnsServers, pinned.dns_servers),
            names: names::NameMaps::adopt(pinned.fqdn_endpoints, pinned.fqdn_names),
            config: pinned.config,
        }
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    pub fn usage(&self) -> Usage {
        let (endpoints, policy, ports) = self.endpoints.usage();
        let (fqdn_endpoints, fqdn_names) = self.names.usage();
        Usage {
            endpoints,
            policy,
            ports,
            services: self.services.len(),
            host_addrs: self.hosts.len(),
            dns_servers: self.dns_servers.len(),
            fqdn_endpoints,
            fqdn_names,
        }
    }

    pub fn endpoint_info(&self, ifindex: u32) -> Option<&EndpointInfo> {
        self.endpoints.info(ifindex)
    }

    /// Endpoints present in `pal_ep_v1`.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.endpoints.ifindexes()
    }

    /// Highest ep_id found in the applied state (for recovering the allocator).
    pub fn max_ep_id(&self) -> u32 {
        self.endpoints.max_ep_id()
    }

    /// Addresses present in `pal_svc_v1`.
    pub fn services(&self) -> &BTreeSet<SvcAddrKey> {
        self.services.present()
    }

    /// Makes the maps hold `want`. Removed endpoints go first, then endpoints whose policy
    /// shrinks, then those that grow, so space freed by one is there for the next (an endpoint
    /// that does not fit first frees what the earlier ones retired, after a grace period).
    pub fn apply<M: MapOps>(&mut self, m: &mut M, want: &DesiredState) -> Outcome<M::Error> {
        let mut out = Outcome::default();
        out.written |= self.endpoints.clean_leftovers(m);
        if self.config != Some(want.config) {
            match m.put_config(want.config) {
                Ok(()) => {
                    self.config = Some(want.config);
                    out.written = true;
                }
                Err(e) => out.maps.push((maps::CONFIG, ApplyError::Map(e))),
            }
        }
        for (set, want, capacity) in [
            (&mut self.hosts, &want.host_addrs, self.capacity.host_addrs),
            (&mut self.services, &want.services, self.capacity.services),
            (
                &mut self.dns_servers,
                &want.dns_servers,
                self.capacity.dns_servers,
            ),
        ] {
            match set.apply(m, want, capacity) {
                Ok(w) => out.written |= w,
                Err(e) => out.maps.push((set.map().name(), e)),
            }
        }
        // Name sets and `pal_fqep_v1` entries before the endpoints that will point at them.
        let max_learnt = want.fqdn_max_learnt.unwrap_or(DEFAULT_MAX_LEARNT_PER_POD);
        let (w, mut name_errors) = self.names.prepare(
            m,
            want.endpoints.values(),
            max_learnt,
            self.capacity.fqdn_names,
        );
        out.written |= w;
        for ifindex in self.endpoints.ifindexes() {
            if want.endpoints.contains_key(&ifindex) {
                continue;
            }
            match self.endpoints.remove(m, ifindex) {
                Ok(()) => out.written = true,
                Err(e) => {
                    out.endpoints.insert(ifindex, ApplyError::Map(e));
                }
            }
        }
        let mut order: Vec<&DesiredEndpoint> = want.endpoints.values().collect();
        order
            .sort_by_key(|d| d.entries.len() as i64 - self.endpoints.entries_len(d.ifindex) as i64);
        for d in order {
            match self.endpoints.apply(m, d, &self.capacity) {
                Ok(w) => out.written |= w,
                Err(e) => {
                    out.endpoints.insert(d.ifindex, e);
                }
            }
        }
        // What the endpoints above stopped referencing, once no packet can still read it.
        out.written |= self.endpoints.commit(m);
        // `pal_fqep_v1` entries of endpoints neither wanting name rules nor still flagged
        // (an endpoint whose update failed keeps what its entry points at), then unused sets.
        let mut named: BTreeSet<u32> = want
            .endpoints
            .values()
            .filter(|d| d.names.is_some())
            .map(|d| d.ep_id)
            .collect();
        named.extend(self.endpoints.named_ep_ids());
        let (w, errors) = self.names.finish(m, &named);
        out.written |= w;
        out.maps
            .extend(errors.into_iter().map(|e| (maps::FQDN_ENDPOINTS, e)));
        if !name_errors.is_empty() {
            // What did not fit may fit now that removed endpoints freed their sets.
            let (w, errors) = self.names.prepare(
                m,
                want.endpoints.values(),
                max_learnt,
                self.capacity.fqdn_names,
            );
            out.written |= w;
            name_errors = errors;
        }
        out.maps
            .extend(name_errors.into_iter().map(|e| (maps::FQDN_NAMES, e)));
        out.leftovers = self.endpoints.leftovers();
        out
    }

    /// Deletes what `apply_endpoint` and `remove_endpoint` retired, after one grace period
    /// (`apply` does this itself). Returns true when something was deleted.
    pub fn commit<M: MapOps>(&mut self, m: &mut M) -> bool {
        self.endpoints.commit(m)
    }

    /// Applies one endpoint alone (tests and benchmarks that drive the policy maps directly;
    /// `commit` deletes what it retired). Returns true when something was written.
    pub fn apply_endpoint<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
    ) -> Result<bool, ApplyError<M::Error>> {
        self.endpoints.clean_leftovers(m);
        self.endpoints.apply(m, want, &self.capacity)
    }

    /// Removes one endpoint alone: its `pal_ep_v1` entry first (packets on its hooks now fail
    /// closed), then its policy (retired: `commit` deletes it).
    pub fn remove_endpoint<M: MapOps>(&mut self, m: &mut M, ifindex: u32) -> Result<(), M::Error> {
        self.endpoints.remove(m, ifindex)
    }
}
