//! Applies desired endpoint policies to the datapath maps as a diff, never exposing a
//! half-written policy to a packet.
//!
//! Two ways to change an endpoint's policy; both end by writing its `pal_ep_v1` entry with a new
//! `policy_gen`, which makes conntrack re-check tracked flows against the new policy.
//!
//! **Rewrite** (a new endpoint, or a change touching a large part of its entries):
//! 1. allocate a fresh `policy_id`;
//! 2. write the port sets it needs that are not present yet (port sets are shared between
//!    endpoints and entries, addressed by content, reference counted, immutable);
//! 3. write all its `pal_pol_v1` entries under the new `policy_id` (no packet reads them yet);
//! 4. replace the endpoint's `pal_ep_v1` entry in one update, switching packets at once;
//! 5. retire the old `policy_id`'s entries and the port sets no longer referenced (below).
//!
//! **In place** (a change touching few entries; O(change) map writes instead of O(policy)):
//! 1. if a direction stops being isolated, clear its flag first (so deleting its entries below
//!    never denies what the new state allows);
//! 2. add the keys only the new state has, longest prefix first;
//! 3. update the keys both have whose value changed;
//! 4. delete the keys only the old state has, shortest prefix first;
//! 5. write the endpoint entry with the final flags (a direction that becomes isolated is
//!    switched on only now, with its entries complete) and a new `policy_gen`.
//!
//! Why in place is safe: a packet makes one LPM lookup, answered by the longest present prefix
//! containing its peer address A. With the order above, at every instant that prefix is either
//! the longest old prefix containing A carrying its old value, or the longest new prefix
//! containing A carrying its new value: adds go longest-first, so a new prefix is never present
//! without the longer new prefixes under it; deletes go shortest-first, so an old prefix is never
//! gone while a shorter old prefix over the same address is still there; and a key present in
//! both is the longest in both whenever it is the longest present. So each packet sees the old
//! policy or the new one for its address, never a mix; port sets are immutable and written
//! before anything points at them.
//!
//! **Retiring, then a grace period.** A packet copies its endpoint entry when it starts and
//! makes its policy and port lookups afterwards, so a packet that read the old `policy_id` (or
//! an old value's `portset_id`) just before the switch may look up after it. Deleting those
//! entries at once would make such a packet miss and drop a flow both versions allow. So what
//! no endpoint references any more is only retired by `apply`/`remove`; `commit` (once per
//! reconcile) waits for an RCU grace period (`MapOps::grace_period`: every program run that
//! started before it has finished) and only then deletes it. One grace period covers all the
//! endpoints of a reconcile.
//!
//! An endpoint whose desired policy equals the applied one is not touched, so a restarted agent
//! that finds its pinned state current rewrites nothing (and conntrack entries stay current).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use palisade_common::endpoint::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EndpointInfo};
use palisade_common::policy::{POL_ALL_PORTS, PolicyKey, PolicyValue, PortKey, PortValue};

/// Number of keys that differ between two entry sets (added, removed or changed).
fn diff_size(a: &Entries, b: &Entries) -> usize {
    let changed_or_removed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    let added = b.keys().filter(|k| !a.contains_key(*k)).count();
    changed_or_removed + added
}

/// The entries of one port set, with `portset_id` zeroed: (LPM prefixlen, key, rule_ref).
pub type PortContent = BTreeSet<(u32, PortKey, u32)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    /// Every protocol and port; the rule that allows it.
    All(u32),
    /// A port set (empty: nothing allowed, an except-hole).
    Ports(Arc<PortContent>),
}

/// Policy entries of one endpoint, with `policy_id` zeroed: (LPM prefixlen, key) -> allow.
pub type Entries = BTreeMap<(u32, PolicyKey), Allow>;

/// What one endpoint should look like in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub ifindex: u32,
    pub ep_id: u32,
    /// `EP_*` flags (isolation and address families).
    pub flags: u32,
    pub ipv4_be: [u8; 4],
    pub ipv6_be: [u8; 16],
    pub entries: Entries,
}

/// The map operations the applier needs (the real maps, or an in-memory fake in tests).
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
    /// Returns once every datapath program run that started before the call has finished
    /// (nothing read before the call is still being used).
    fn grace_period(&mut self) -> Result<(), Self::Error>;
}

/// What was read back from pinned maps when adopting them.
#[derive(Default, Debug)]
pub struct PinnedState {
    pub endpoints: Vec<(u32, EndpointInfo)>,
    pub policy: Vec<(u32, PolicyKey, PolicyValue)>,
    pub ports: Vec<(u32, PortKey, PortValue)>,
}

#[derive(Clone, Debug)]
struct Applied {
    info: EndpointInfo,
    entries: Entries,
}

/// A change touching more than this fraction (1/N) of an endpoint's entries is applied as a
/// rewrite under a fresh `policy_id` instead of in place.
const REWRITE_FRACTION: usize = 4;

#[derive(Default, Debug)]
pub struct Applier {
    endpoints: BTreeMap<u32, Applied>,
    portsets: HashMap<Arc<PortContent>, (u32, u32)>,
    next_policy_id: u32,
    next_portset_id: u32,
    next_gen: u32,
    /// Entries of policy ids found pinned but referenced by no endpoint (a crash mid-apply):
    /// deleted on the next apply.
    orphans: Vec<(u32, PolicyKey)>,
    orphan_ports: Vec<(u32, PortKey)>,
    /// Entries no endpoint references any more that a packet in flight may still read:
    /// deleted by `commit` after a grace period (see the module documentation).
    retired: Vec<(u32, PolicyKey)>,
    retired_ports: Vec<(u32, PortKey)>,
}

fn id_be(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

impl Applier {
    pub fn new() -> Self {
        Applier {
            next_policy_id: 1,
            next_portset_id: 1,
            next_gen: 1,
            ..Default::default()
        }
    }

    /// Rebuilds the applied view from pinned maps, so that the first reconcile after a restart
    /// rewrites only what differs.
    pub fn adopt(pinned: PinnedState) -> Self {
        let mut a = Applier::new();
        let mut ports_by_id: BTreeMap<u32, PortContent> = BTreeMap::new();
        for (plen, mut key, v) in pinned.ports {
            let id = u32::from_be_bytes(key.portset_id_be);
            key.portset_id_be = [0; 4];
            ports_by_id
                .entry(id)
                .or_default()
                .insert((plen, key, v.rule_ref));
            a.next_portset_id = a.next_portset_id.max(id + 1);
        }
        let mut pol_by_id: BTreeMap<u32, Vec<(u32, PolicyKey, PolicyValue)>> = BTreeMap::new();
        for (plen, key, v) in pinned.policy {
            let id = u32::from_be_bytes(key.policy_id_be);
            pol_by_id.entry(id).or_default().push((plen, key, v));
            a.next_policy_id = a.next_policy_id.max(id + 1);
        }
        let mut used_ports: BTreeSet<u32> = BTreeSet::new();
        for (ifindex, info) in pinned.endpoints {
            a.next_policy_id = a.next_policy_id.max(info.policy_id + 1);
            a.next_gen = a.next_gen.max(info.policy_gen + 1);
            let mut entries = Entries::new();
            for (plen, mut key, v) in pol_by_id.remove(&info.policy_id).unwrap_or_default() {
                key.policy_id_be = [0; 4];
                let allow = if v.flags & POL_ALL_PORTS != 0 {
                    Allow::All(v.rule_ref)
                } else if v.portset_id == 0 {
                    Allow::Ports(Arc::new(PortContent::new()))
                } else {
                    used_ports.insert(v.portset_id);
                    let content =
                        Arc::new(ports_by_id.get(&v.portset_id).cloned().unwrap_or_default());
                    let slot = a
                        .portsets
                        .entry(content.clone())
                        .or_insert((v.portset_id, 0));
                    slot.1 += 1;
                    Allow::Ports(content)
                };
                entries.insert((plen, key), allow);
            }
            a.endpoints.insert(ifindex, Applied { info, entries });
        }
        for (_, rest) in pol_by_id {
            a.orphans.extend(rest.into_iter().map(|(p, k, _)| (p, k)));
        }
        for (id, content) in ports_by_id {
            if !used_ports.contains(&id) {
                for (plen, mut key, _) in content {
                    key.portset_id_be = id_be(id);
                    a.orphan_ports.push((plen, key));
                }
            }
        }
        a
    }

    pub fn endpoint_info(&self, ifindex: u32) -> Option<&EndpointInfo> {
        self.endpoints.get(&ifindex).map(|a| &a.info)
    }

    pub fn ifindexes(&self) -> Vec<u32> {
        self.endpoints.keys().copied().collect()
    }

    /// Highest ep_id found in the applied state (for recovering the allocator).
    pub fn max_ep_id(&self) -> u32 {
        self.endpoints
            .values()
            .map(|a| a.info.ep_id)
            .max()
            .unwrap_or(0)
    }

    /// Number of port sets and policy entries currently written (for status and benches).
    pub fn sizes(&self) -> (usize, usize) {
        let pol = self.endpoints.values().map(|a| a.entries.len()).sum();
        let ports = self.portsets.keys().map(|c| c.len()).sum();
        (pol, ports)
    }

    fn clean_orphans<M: MapOps>(&mut self, m: &mut M) -> Result<(), M::Error> {
        for (plen, key) in std::mem::take(&mut self.orphans) {
            m.del_policy(plen, key)?;
        }
        for (plen, key) in std::mem::take(&mut self.orphan_ports) {
            m.del_port(plen, key)?;
        }
        Ok(())
    }

    fn acquire<M: MapOps>(
        &mut self,
        m: &mut M,
        content: &Arc<PortContent>,
    ) -> Result<u32, M::Error> {
        if let Some(slot) = self.portsets.get_mut(content) {
            slot.1 += 1;
            return Ok(slot.0);
        }
        let id = self.next_portset_id;
        self.next_portset_id += 1;
        for (plen, key, rule_ref) in content.iter() {
            let mut key = *key;
            key.portset_id_be = id_be(id);
            m.put_port(
                *plen,
                key,
                PortValue {
                    rule_ref: *rule_ref,
                },
            )?;
        }
        self.portsets.insert(content.clone(), (id, 1));
        Ok(id)
    }

    /// One user fewer; the last one retires the port set's entries.
    fn release(&mut self, content: &Arc<PortContent>) {
        let Some(slot) = self.portsets.get_mut(content) else {
            return;
        };
        slot.1 -= 1;
        if slot.1 > 0 {
            return;
        }
        let id = slot.0;
        self.portsets.remove(content);
        for (plen, key, _) in content.iter() {
            let mut key = *key;
            key.portset_id_be = id_be(id);
            self.retired_ports.push((*plen, key));
        }
    }

    fn bump_gen(&mut self) -> u32 {
        let g = self.next_gen;
        self.next_gen += 1;
        g
    }

    fn value<M: MapOps>(&mut self, m: &mut M, allow: &Allow) -> Result<PolicyValue, M::Error> {
        Ok(match allow {
            Allow::All(rule_ref) => PolicyValue {
                flags: POL_ALL_PORTS,
                rule_ref: *rule_ref,
                portset_id: 0,
                _pad: 0,
            },
            Allow::Ports(c) if c.is_empty() => PolicyValue::default(),
            Allow::Ports(c) => PolicyValue {
                flags: 0,
                rule_ref: 0,
                portset_id: self.acquire(m, c)?,
                _pad: 0,
            },
        })
    }

    fn release_allow(&mut self, allow: &Allow) {
        if let Allow::Ports(c) = allow
            && !c.is_empty()
        {
            self.release(c);
        }
    }

    fn info(want: &DesiredEndpoint, policy_id: u32, policy_gen: u32, flags: u32) -> EndpointInfo {
        EndpointInfo {
            ep_id: want.ep_id,
            policy_id,
            policy_gen,
            flags,
            ipv4_be: want.ipv4_be,
            ipv6_be: want.ipv6_be,
            _pad: 0,
        }
    }

    /// Makes the maps hold `want` for its endpoint. Returns true when something was written.
    pub fn apply<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
    ) -> Result<bool, M::Error> {
        self.clean_orphans(m)?;
        let Some(cur) = self.endpoints.get(&want.ifindex) else {
            self.rewrite(m, want)?;
            return Ok(true);
        };
        let cur_info = cur.info;
        if cur.entries == want.entries {
            let same = cur_info.ep_id == want.ep_id
                && cur_info.flags == want.flags
                && cur_info.ipv4_be == want.ipv4_be
                && cur_info.ipv6_be == want.ipv6_be;
            if same {
                return Ok(false);
            }
            // Same entries, other flags or addresses: one endpoint update (a new generation,
            // since becoming isolated restricts tracked flows).
            let policy_gen = self.bump_gen();
            let info = Self::info(want, cur_info.policy_id, policy_gen, want.flags);
            m.put_endpoint(want.ifindex, info)?;
            if let Some(cur) = self.endpoints.get_mut(&want.ifindex) {
                cur.info = info;
            }
            return Ok(true);
        }
        let changed = diff_size(&cur.entries, &want.entries);
        let size = cur.entries.len().max(want.entries.len());
        if changed * REWRITE_FRACTION > size || cur_info.ep_id != want.ep_id {
            self.rewrite(m, want)?;
        } else {
            self.in_place(m, want)?;
        }
        Ok(true)
    }

    fn rewrite<M: MapOps>(&mut self, m: &mut M, want: &DesiredEndpoint) -> Result<(), M::Error> {
        let policy_id = self.next_policy_id;
        self.next_policy_id += 1;
        for ((plen, key), allow) in &want.entries {
            let mut key = *key;
            key.policy_id_be = id_be(policy_id);
            let value = self.value(m, allow)?;
            m.put_policy(*plen, key, value)?;
        }
        let policy_gen = self.bump_gen();
        let info = Self::info(want, policy_id, policy_gen, want.flags);
        m.put_endpoint(want.ifindex, info)?;
        let old = self.endpoints.insert(
            want.ifindex,
            Applied {
                info,
                entries: want.entries.clone(),
            },
        );
        if let Some(old) = old {
            self.retire(old);
        }
        Ok(())
    }

    fn in_place<M: MapOps>(&mut self, m: &mut M, want: &DesiredEndpoint) -> Result<(), M::Error> {
        let Some(cur) = self.endpoints.remove(&want.ifindex) else {
            return Ok(());
        };
        let policy_id = cur.info.policy_id;
        let isolation = EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED;
        // 1. Directions that stop being isolated are released first.
        let dropped = cur.info.flags & isolation & !want.flags;
        if dropped != 0 {
            m.put_endpoint(
                want.ifindex,
                EndpointInfo {
                    flags: cur.info.flags & !dropped,
                    ..cur.info
                },
            )?;
        }
        let with_id = |mut k: PolicyKey| {
            k.policy_id_be = id_be(policy_id);
            k
        };
        // 2. Keys only the new state has, longest prefix first.
        let mut adds: Vec<_> = want
            .entries
            .iter()
            .filter(|(k, _)| !cur.entries.contains_key(*k))
            .collect();
        adds.sort_by_key(|e| std::cmp::Reverse(e.0.0));
        for ((plen, key), allow) in adds {
            let value = self.value(m, allow)?;
            m.put_policy(*plen, with_id(*key), value)?;
        }
        // 3. Keys both have, with a new value.
        for ((plen, key), allow) in &want.entries {
            if let Some(old) = cur.entries.get(&(*plen, *key))
                && old != allow
            {
                let value = self.value(m, allow)?;
                m.put_policy(*plen, with_id(*key), value)?;
                self.release_allow(old);
            }
        }
        // 4. Keys only the old state has, shortest prefix first.
        let mut dels: Vec<_> = cur
            .entries
            .iter()
            .filter(|(k, _)| !want.entries.contains_key(*k))
            .collect();
        dels.sort_by_key(|e| e.0.0);
        for ((plen, key), allow) in dels {
            m.del_policy(*plen, with_id(*key))?;
            self.release_allow(allow);
        }
        // 5. Final flags and a new generation.
        let policy_gen = self.bump_gen();
        let info = Self::info(want, policy_id, policy_gen, want.flags);
        m.put_endpoint(want.ifindex, info)?;
        self.endpoints.insert(
            want.ifindex,
            Applied {
                info,
                entries: want.entries.clone(),
            },
        );
        Ok(())
    }

    /// Retires the entries of a policy id no endpoint uses any more.
    fn retire(&mut self, old: Applied) {
        for ((plen, key), allow) in old.entries {
            let mut key = key;
            key.policy_id_be = id_be(old.info.policy_id);
            self.retired.push((plen, key));
            self.release_allow(&allow);
        }
    }

    /// Deletes what `apply` and `remove` retired, after one grace period. Called once all the
    /// endpoints of a reconcile are applied; what it could not delete stays retired (deleted
    /// by the next call).
    pub fn commit<M: MapOps>(&mut self, m: &mut M) -> Result<(), M::Error> {
        if self.retired.is_empty() && self.retired_ports.is_empty() {
            return Ok(());
        }
        m.grace_period()?;
        while let Some((plen, key)) = self.retired.pop() {
            if let Err(e) = m.del_policy(plen, key) {
                self.retired.push((plen, key));
                return Err(e);
            }
        }
        while let Some((plen, key)) = self.retired_ports.pop() {
            if let Err(e) = m.del_port(plen, key) {
                self.retired_ports.push((plen, key));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes an endpoint: first its endpoint entry (packets on its hooks now fail closed),
    /// then its policy (retired: deleted by `commit`).
    pub fn remove<M: MapOps>(&mut self, m: &mut M, ifindex: u32) -> Result<(), M::Error> {
        if self.endpoints.contains_key(&ifindex) {
            m.del_endpoint(ifindex)?;
            if let Some(old) = self.endpoints.remove(&ifindex) {
                self.retire(old);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod fake {
    //! In-memory maps with the same semantics the applier relies on.
    use super::*;

    #[derive(Default, Debug, Clone, PartialEq)]
    pub struct FakeMaps {
        pub policy: BTreeMap<(u32, PolicyKey), PolicyValue>,
        pub ports: BTreeMap<(u32, PortKey), PortValue>,
        pub endpoints: BTreeMap<u32, EndpointInfo>,
        pub writes: usize,
        /// `writes` at each grace period.
        pub grace_periods: Vec<usize>,
        /// When set, a copy of the maps after every write (to check intermediate states).
        pub history: Option<Vec<FakeMaps>>,
    }

    impl FakeMaps {
        fn record(&mut self) {
            self.writes += 1;
            if let Some(mut h) = self.history.take() {
                h.push(self.clone());
                self.history = Some(h);
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("fake map: deleting a missing key")]
    pub struct Missing;

    impl MapOps for FakeMaps {
        type Error = Missing;
        fn put_policy(&mut self, p: u32, k: PolicyKey, v: PolicyValue) -> Result<(), Missing> {
            self.policy.insert((p, k), v);
            self.record();
            Ok(())
        }
        fn del_policy(&mut self, p: u32, k: PolicyKey) -> Result<(), Missing> {
            let r = self.policy.remove(&(p, k)).map(|_| ()).ok_or(Missing);
            self.record();
            r
        }
        fn put_port(&mut self, p: u32, k: PortKey, v: PortValue) -> Result<(), Missing> {
            self.ports.insert((p, k), v);
            self.record();
            Ok(())
        }
        fn del_port(&mut self, p: u32, k: PortKey) -> Result<(), Missing> {
            let r = self.ports.remove(&(p, k)).map(|_| ()).ok_or(Missing);
            self.record();
            r
        }
        fn put_endpoint(&mut self, i: u32, v: EndpointInfo) -> Result<(), Missing> {
            self.endpoints.insert(i, v);
            self.record();
            Ok(())
        }
        fn del_endpoint(&mut self, i: u32) -> Result<(), Missing> {
            let r = self.endpoints.remove(&i).map(|_| ()).ok_or(Missing);
            self.record();
            r
        }
        fn grace_period(&mut self) -> Result<(), Missing> {
            self.grace_periods.push(self.writes);
            Ok(())
        }
    }

    impl FakeMaps {
        /// What the datapath would answer for an IPv4 ingress peer of endpoint `ifindex`:
        /// the longest matching entry under the endpoint's current policy id, resolved to
        /// its port entries. None: no entry (nothing allowed).
        pub fn answer(&self, ifindex: u32, addr: [u8; 4]) -> Option<(u32, u32, PortContent)> {
            self.answer_under(self.endpoints.get(&ifindex)?.policy_id, addr)
        }

        /// The same, for a packet that read `policy_id` from its endpoint entry earlier.
        pub fn answer_under(
            &self,
            policy_id: u32,
            addr: [u8; 4],
        ) -> Option<(u32, u32, PortContent)> {
            let (_, v) = self
                .policy
                .iter()
                .filter(|((plen, k), _)| {
                    u32::from_be_bytes(k.policy_id_be) == policy_id && {
                        let bits = plen - 64;
                        let mask = if bits == 0 {
                            0
                        } else {
                            u32::MAX << (32 - bits)
                        };
                        let a = u32::from_be_bytes(addr);
                        let p = u32::from_be_bytes([
                            k.addr_be[0],
                            k.addr_be[1],
                            k.addr_be[2],
                            k.addr_be[3],
                        ]);
                        a & mask == p & mask
                    }
                })
                .max_by_key(|((plen, _), _)| *plen)?;
            let ports = self
                .ports
                .iter()
                .filter(|((_, k), _)| {
                    v.portset_id != 0 && u32::from_be_bytes(k.portset_id_be) == v.portset_id
                })
                .map(|((plen, k), pv)| {
                    (
                        *plen,
                        PortKey {
                            portset_id_be: [0; 4],
                            ..*k
                        },
                        pv.rule_ref,
                    )
                })
                .collect();
            Some((v.flags, v.rule_ref, ports))
        }

        pub fn pinned(&self) -> PinnedState {
            PinnedState {
                endpoints: self.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
                policy: self.policy.iter().map(|((p, k), v)| (*p, *k, *v)).collect(),
                ports: self.ports.iter().map(|((p, k), v)| (*p, *k, *v)).collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMaps;
    use super::*;
    use palisade_common::{DIR_INGRESS, FAMILY_V4};

    /// `apply` then `commit`, as one reconcile of one endpoint does.
    fn applied(
        a: &mut Applier,
        m: &mut FakeMaps,
        d: &DesiredEndpoint,
    ) -> Result<bool, fake::Missing> {
        let r = a.apply(m, d)?;
        a.commit(m)?;
        Ok(r)
    }

    /// `remove` then `commit`.
    fn removed(a: &mut Applier, m: &mut FakeMaps, ifindex: u32) -> Result<(), fake::Missing> {
        a.remove(m, ifindex)?;
        a.commit(m)
    }

    fn key(a: u8, len: u8) -> (u32, PolicyKey) {
        let mut k = PolicyKey {
            dir: DIR_INGRESS,
            family: FAMILY_V4,
            ..Default::default()
        };
        k.addr_be[..4].copy_from_slice(&[10, 0, a, 0]);
        (64 + len as u32, k)
    }

    fn ports(list: &[(u8, u16, u32)]) -> Allow {
        let c: PortContent = list
            .iter()
            .map(|(proto, port, rule)| {
                (
                    56,
                    PortKey {
                        proto: *proto,
                        port_be: port.to_be_bytes(),
                        ..Default::default()
                    },
                    *rule,
                )
            })
            .collect();
        Allow::Ports(Arc::new(c))
    }

    fn ep(ifindex: u32, entries: Vec<((u32, PolicyKey), Allow)>) -> DesiredEndpoint {
        DesiredEndpoint {
            ifindex,
            ep_id: ifindex + 100,
            flags: 1,
            ipv4_be: [10, 0, 0, ifindex as u8],
            ipv6_be: [0; 16],
            entries: entries.into_iter().collect(),
        }
    }

    /// Every policy entry and port entry in the maps is reachable from an endpoint, and every
    /// endpoint's entries are complete.
    fn assert_consistent(m: &FakeMaps) {
        let live: BTreeSet<u32> = m.endpoints.values().map(|i| i.policy_id).collect();
        for (_, k) in m.policy.keys() {
            assert!(
                live.contains(&u32::from_be_bytes(k.policy_id_be)),
                "orphan policy entry {k:?}"
            );
        }
        let used: BTreeSet<u32> = m
            .policy
            .values()
            .filter(|v| v.portset_id != 0)
            .map(|v| v.portset_id)
            .collect();
        let present: BTreeSet<u32> = m
            .ports
            .keys()
            .map(|(_, k)| u32::from_be_bytes(k.portset_id_be))
            .collect();
        assert_eq!(used, present, "port sets in use == port sets present");
    }

    #[test]
    fn policy_change_switches_endpoint_to_a_complete_new_policy_and_frees_the_old() {
        let mut m = FakeMaps::default();
        let mut a = Applier::new();
        assert!(
            applied(
                &mut a,
                &mut m,
                &ep(1, vec![(key(1, 24), ports(&[(6, 80, 1)]))])
            )
            .unwrap()
        );
        let first = m.endpoints[&1].policy_id;
        assert!(
            a.apply(
                &mut m,
                &ep(
                    1,
                    vec![
                        (key(2, 24), ports(&[(6, 81, 2)])),
                        (key(3, 24), Allow::All(3))
                    ]
                )
            )
            .unwrap()
        );
        assert_ne!(m.endpoints[&1].policy_id, first);
        // A packet that read the old policy id before the switch still finds its answer...
        let old_answer = m.answer_under(first, [10, 0, 1, 7]);
        assert!(old_answer.is_some_and(|(_, _, p)| p.len() == 1));
        assert!(m.grace_periods.is_empty());
        // ...until the grace period, after which the old policy and its port set are gone.
        let before = m.writes;
        a.commit(&mut m).unwrap();
        assert_eq!(
            m.grace_periods,
            vec![before],
            "deleted only after a grace period"
        );
        assert_eq!(m.answer_under(first, [10, 0, 1, 7]), None);
        assert_eq!(m.policy.len(), 2);
        assert_eq!(m.ports.len(), 1);
        assert_consistent(&m);
        // Nothing retired: no grace period to wait for.
        a.commit(&mut m).unwrap();
        assert_eq!(m.grace_periods.len(), 1);
    }

    #[test]
    fn identical_port_sets_are_shared_and_freed_with_their_last_user() {
        let mut m = FakeMaps::default();
        let mut a = Applier::new();
        let p = ports(&[(6, 80, 1), (17, 53, 1)]);
        applied(&mut a, &mut m, &ep(1, vec![(key(1, 24), p.clone())])).unwrap();
        a.apply(
            &mut m,
            &ep(2, vec![(key(1, 24), p.clone()), (key(9, 24), p)]),
        )
        .unwrap();
        assert_eq!(m.ports.len(), 2, "one shared set of two entries");
        removed(&mut a, &mut m, 1).unwrap();
        assert_eq!(m.ports.len(), 2);
        removed(&mut a, &mut m, 2).unwrap();
        assert!(m.ports.is_empty() && m.policy.is_empty() && m.endpoints.is_empty());
    }

    #[test]
    fn unchanged_desired_state_writes_nothing() {
        let mut m = FakeMaps::default();
        let mut a = Applier::new();
        let d = ep(1, vec![(key(1, 24), ports(&[(6, 80, 1)]))]);
        applied(&mut a, &mut m, &d).unwrap();
        let writes = m.writes;
        assert!(!applied(&mut a, &mut m, &d).unwrap());
        assert_eq!(m.writes, writes);
    }

    #[test]
    fn restarted_applier_adopts_pinned_state_and_rewrites_nothing_that_is_current() {
        let mut m = FakeMaps::default();
        let mut a = Applier::new();
        let d1 = ep(
            1,
            vec![(key(1, 24), ports(&[(6, 80, 1)])), (key(4, 32), ports(&[]))],
        );
        let d2 = ep(2, vec![(key(1, 24), ports(&[(6, 80, 1)]))]);
        applied(&mut a, &mut m, &d1).unwrap();
        applied(&mut a, &mut m, &d2).unwrap();
        let before = m.clone();
        let mut b = Applier::adopt(m.pinned());
        assert!(!applied(&mut b, &mut m, &d1).unwrap());
        assert!(!applied(&mut b, &mut m, &d2).unwrap());
        assert_eq!(m.policy, before.policy);
        // A change after adoption allocates fresh ids and keeps the maps consistent.
        applied(
            &mut b,
            &mut m,
            &ep(1, vec![(key(7, 24), ports(&[(6, 80, 1)]))]),
        )
        .unwrap();
        assert_consistent(&m);
        removed(&mut b, &mut m, 2).unwrap();
        removed(&mut b, &mut m, 1).unwrap();
        assert!(m.policy.is_empty() && m.ports.is_empty());
    }

    #[test]
    fn small_change_is_applied_in_place_with_few_writes() {
        let mut m = FakeMaps::default();
        let mut a = Applier::new();
        let mut entries: Vec<_> = (0..100u8)
            .map(|i| (key(i, 24), ports(&[(6, 80, 1)])))
            .collect();
        applied(&mut a, &mut m, &ep(1, entries.clone())).unwrap();
        let id = m.endpoints[&1].policy_id;
        let gen0 = m.endpoints[&1].policy_gen;
        let writes = m.writes;
        entries.push((key(200, 24), Allow::All(9)));
        applied(&mut a, &mut m, &ep(1, entries)).unwrap();
        assert_eq!(m.endpoints[&1].policy_id, id, "same policy id: in place");
        assert!(
            m.endpoints[&1].policy_gen > gen0,
            "new generation: conntrack re-checks"
        );
        assert_eq!(m.writes - writes, 2, "one entry and the endpoint");
        assert_consistent(&m);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Threat model: a packet arriving while the agent updates an endpoint in place must get
        /// the old policy's answer or the new policy's answer for its address, never a mix
        /// (which could allow what neither allows, or deny a flow both allow).
        #[test]
        fn every_intermediate_state_of_an_in_place_update_answers_old_or_new(
            old in proptest::collection::btree_map((0u8..4, 0u8..4, 20u8..=32), 0u32..4, 1..12),
            new in proptest::collection::btree_map((0u8..4, 0u8..4, 20u8..=32), 0u32..4, 1..12),
        ) {
            // Nested prefixes in 10.0.0.0/20..32 over a small address space, values drawn from
            // a few port sets, "all ports" and deny.
            let to_entries = |m: &BTreeMap<(u8, u8, u8), u32>| -> Vec<((u32, PolicyKey), Allow)> {
                m.iter().map(|((b2, b3, len), v)| {
                    let mut k = PolicyKey { dir: DIR_INGRESS, family: FAMILY_V4, ..Default::default() };
                    let raw = u32::from_be_bytes([10, 0, *b2, *b3 * 64]);
                    let mask = u32::MAX << (32 - *len as u32);
                    k.addr_be[..4].copy_from_slice(&(raw & mask).to_be_bytes());
                    let allow = match v {
                        0 => Allow::Ports(Arc::new(PortContent::new())),
                        1 => Allow::All(7),
                        2 => ports(&[(6, 80, 1)]),
                        _ => ports(&[(17, 53, 2), (6, 443, 3)]),
                    };
                    ((64 + *len as u32, k), allow)
                }).collect()
            };
            let (old_e, new_e) = (to_entries(&old), to_entries(&new));
            let mut m = FakeMaps::default();
            let mut a = Applier::new();
            // A large unchanged part keeps the change below the rewrite threshold.
            let filler: Vec<_> = (0..200u8).map(|i| {
                let mut k = PolicyKey { dir: DIR_INGRESS, family: FAMILY_V4, ..Default::default() };
                k.addr_be[..4].copy_from_slice(&[192, 168, i, 0]);
                ((64 + 24, k), Allow::All(5))
            }).collect();
            let d_old = ep(1, old_e.into_iter().chain(filler.clone()).collect());
            let d_new = ep(1, new_e.into_iter().chain(filler).collect());
            applied(&mut a, &mut m, &d_old).unwrap();
            let probes: Vec<[u8; 4]> = (0..4u8).flat_map(|b2| (0..=255u8).step_by(16).map(move |b3| [10, 0, b2, b3])).collect();
            let before: Vec<_> = probes.iter().map(|p| m.answer(1, *p)).collect();
            let id = m.endpoints[&1].policy_id;
            m.history = Some(Vec::new());
            applied(&mut a, &mut m, &d_new).unwrap();
            let history = m.history.take().unwrap();
            proptest::prop_assert_eq!(m.endpoints[&1].policy_id, id, "applied in place");
            let after: Vec<_> = probes.iter().map(|p| m.answer(1, *p)).collect();
            for state in &history {
                for (i, p) in probes.iter().enumerate() {
                    let got = state.answer(1, *p);
                    proptest::prop_assert!(got == before[i] || got == after[i],
                        "address {:?}: intermediate answer {:?} is neither old {:?} nor new {:?}", p, got, before[i], after[i]);
                }
            }
            assert_consistent(&m);
        }
    }

    #[test]
    fn adoption_cleans_entries_left_by_a_crash_mid_apply() {
        let mut m = FakeMaps::default();
        let mut a = Applier::new();
        applied(
            &mut a,
            &mut m,
            &ep(1, vec![(key(1, 24), ports(&[(6, 80, 1)]))]),
        )
        .unwrap();
        // A crash after step 3 of the next apply: new entries written, endpoint not switched.
        let mut k = key(5, 24);
        k.1.policy_id_be = 99u32.to_be_bytes();
        m.policy.insert(
            k,
            PolicyValue {
                portset_id: 42,
                ..Default::default()
            },
        );
        m.ports.insert(
            (
                56,
                PortKey {
                    portset_id_be: 42u32.to_be_bytes(),
                    proto: 6,
                    port_be: [0, 1],
                    _pad: 0,
                },
            ),
            PortValue { rule_ref: 1 },
        );
        let mut b = Applier::adopt(m.pinned());
        applied(&mut b, &mut m, &ep(2, vec![])).unwrap();
        assert_consistent(&m);
        assert_eq!(m.policy.len(), 1);
    }
}
