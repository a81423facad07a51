//! Endpoint policies in `pal_ep_v1`, `pal_pol_v1` and `pal_port_v1`, applied as a diff, never
//! exposing a half-written policy to a packet.
//!
//! Two ways to change an endpoint's policy; both end by writing its `pal_ep_v1` entry with a new
//! `policy_gen`, which makes conntrack re-check tracked flows against the new policy. Both
//! start by checking that the entries they add fit (`Full`, nothing written otherwise) and by
//! writing the port sets the new state needs that are not present yet (port sets are shared
//! between endpoints, addressed by content, reference counted per endpoint, immutable).
//!
//! **Rewrite** (a new endpoint, or a change touching a large part of its entries):
//! 1. allocate a fresh `policy_id`;
//! 2. write all its `pal_pol_v1` entries under the new `policy_id` (no packet reads them yet);
//! 3. replace the endpoint's `pal_ep_v1` entry in one update, switching packets at once;
//! 4. retire the old `policy_id`'s entries and the port sets no longer referenced (below).
//!
//! A failure before step 3 completes leaves the old state in force; what steps 1-2 wrote is
//! retired the same way.
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
//! A failure in any step undoes the steps done, newest first. Each undo step returns the maps
//! to the state before the matching forward step, so the undo walks back through states the
//! forward pass went through (each answering old or new per address) and ends in the old
//! state. If an undo write fails too, the undo stops there: the maps hold one of those
//! intermediate states, and the applier records exactly that state, from which the next apply
//! continues.
//!
//! **Retiring, then a grace period.** A packet copies its endpoint entry when it starts and
//! makes its policy and port lookups afterwards, so a packet that read the old `policy_id` (or
//! an old value's `portset_id`) just before a switch may look up after it. Deleting those
//! entries at once would make such a packet miss and drop a flow both versions allow. So what
//! no endpoint references any more is only retired; `commit` (once per apply, after every
//! endpoint) waits for an RCU grace period (`MapOps::grace_period`: every program run that
//! started before it has finished) and only then deletes it. One grace period covers all the
//! endpoints of an apply; a change that does not fit commits first, so the room retired
//! entries hold is there for it. Retired entries count as used until deleted.
//!
//! An endpoint whose desired policy equals the applied one is not touched, so a restarted agent
//! that finds its pinned state current rewrites nothing (and conntrack entries stay current).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use palisade_common::endpoint::{
    EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EP_NAME_RULES, EndpointInfo,
};
use palisade_common::maps;
use palisade_common::policy::{POL_ALL_PORTS, PolicyKey, PolicyValue, PortKey, PortValue};

use super::{Allow, ApplyError, Capacity, DesiredEndpoint, Entries, Full, MapOps, PortContent};

/// Number of keys that differ between two entry sets (added, removed or changed).
fn diff_size(a: &Entries, b: &Entries) -> usize {
    let changed_or_removed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    let added = b.keys().filter(|k| !a.contains_key(*k)).count();
    changed_or_removed + added
}

/// The distinct non-empty port set contents `entries` use (by value).
fn contents(entries: &Entries) -> HashSet<Arc<PortContent>> {
    let mut seen: HashSet<*const PortContent> = HashSet::new();
    let mut out = HashSet::new();
    for allow in entries.values() {
        if let Allow::Ports(c) = allow
            && !c.is_empty()
            && seen.insert(Arc::as_ptr(c))
        {
            out.insert(c.clone());
        }
    }
    out
}

/// A change touching more than this fraction (1/N) of an endpoint's entries is applied as a
/// rewrite under a fresh `policy_id` instead of in place.
const REWRITE_FRACTION: usize = 4;

#[derive(Clone, Debug)]
struct Applied {
    info: EndpointInfo,
    entries: Arc<Entries>,
}

/// One forward step of an in-place update, with what undoes it.
enum Step {
    /// The endpoint entry went from `before` to `after`.
    Endpoint {
        before: EndpointInfo,
        after: EndpointInfo,
    },
    Added((u32, PolicyKey)),
    /// Value changed; the old allow.
    Changed((u32, PolicyKey), Allow),
    /// Deleted; the old allow.
    Deleted((u32, PolicyKey), Allow),
}

#[derive(Default, Debug)]
pub(super) struct EndpointMaps {
    applied: BTreeMap<u32, Applied>,
    /// Port set content -> (portset_id, number of endpoints holding it).
    portsets: HashMap<Arc<PortContent>, (u32, u32)>,
    next_policy_id: u32,
    next_portset_id: u32,
    next_gen: u32,
    /// Entries referenced by nothing that are still in the maps (a crash mid-apply, a delete
    /// that failed): deleted at the start of the next apply. Full keys.
    orphans: Vec<(u32, PolicyKey)>,
    orphan_ports: Vec<(u32, PortKey)>,
    /// Entries no endpoint references any more that a packet in flight may still read:
    /// deleted by `commit` after a grace period (see the module documentation).
    retired: Vec<(u32, PolicyKey)>,
    retired_ports: Vec<(u32, PortKey)>,
    /// Entries present in `pal_pol_v1` / `pal_port_v1` (orphans included).
    policy_used: usize,
    ports_used: usize,
}

fn with_policy_id(mut key: PolicyKey, id: u32) -> PolicyKey {
    key.policy_id_be = id.to_be_bytes();
    key
}

fn with_portset_id(mut key: PortKey, id: u32) -> PortKey {
    key.portset_id_be = id.to_be_bytes();
    key
}

impl EndpointMaps {
    pub fn adopt(
        endpoints: Vec<(u32, EndpointInfo)>,
        policy: Vec<(u32, PolicyKey, PolicyValue)>,
        ports: Vec<(u32, PortKey, PortValue)>,
    ) -> Self {
        let mut a = EndpointMaps {
            next_policy_id: 1,
            next_portset_id: 1,
            next_gen: 1,
            policy_used: policy.len(),
            ports_used: ports.len(),
            ..Default::default()
        };
        let mut ports_by_id: BTreeMap<u32, PortContent> = BTreeMap::new();
        for (plen, key, v) in ports {
            let id = u32::from_be_bytes(key.portset_id_be);
            ports_by_id
                .entry(id)
                .or_default()
                .insert((plen, with_portset_id(key, 0), v.rule_ref));
            a.next_portset_id = a.next_portset_id.max(id + 1);
        }
        let ports_by_id: BTreeMap<u32, Arc<PortContent>> = ports_by_id
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let mut pol_by_id: BTreeMap<u32, Vec<(u32, PolicyKey, PolicyValue)>> = BTreeMap::new();
        for (plen, key, v) in policy {
            let id = u32::from_be_bytes(key.policy_id_be);
            pol_by_id.entry(id).or_default().push((plen, key, v));
            a.next_policy_id = a.next_policy_id.max(id + 1);
        }
        let mut used_ports: BTreeSet<u32> = BTreeSet::new();
        for (ifindex, info) in endpoints {
            a.next_policy_id = a.next_policy_id.max(info.policy_id + 1);
            a.next_gen = a.next_gen.max(info.policy_gen + 1);
            let mut entries = Entries::new();
            let mut held: BTreeSet<u32> = BTreeSet::new();
            for (plen, key, v) in pol_by_id.remove(&info.policy_id).unwrap_or_default() {
                let allow = if v.flags & POL_ALL_PORTS != 0 {
                    Allow::All(v.rule_ref)
                } else {
                    match ports_by_id.get(&v.portset_id) {
                        Some(content) if v.portset_id != 0 => {
                            used_ports.insert(v.portset_id);
                            if held.insert(v.portset_id) {
                                a.portsets
                                    .entry(content.clone())
                                    .or_insert((v.portset_id, 0))
                                    .1 += 1;
                            }
                            Allow::Ports(content.clone())
                        }
                        // Id 0, or a port set that is gone: nothing is allowed either way.
                        _ => Allow::Ports(Arc::default()),
                    }
                };
                entries.insert((plen, with_policy_id(key, 0)), allow);
            }
            a.applied.insert(
                ifindex,
                Applied {
                    info,
                    entries: Arc::new(entries),
                },
            );
        }
        for (_, rest) in pol_by_id {
            a.orphans.extend(rest.into_iter().map(|(p, k, _)| (p, k)));
        }
        for (id, content) in ports_by_id {
            if !used_ports.contains(&id) {
                for (plen, key, _) in content.iter() {
                    a.orphan_ports.push((*plen, with_portset_id(*key, id)));
                }
            }
        }
        a
    }

    pub fn info(&self, ifindex: u32) -> Option<&EndpointInfo> {
        self.applied.get(&ifindex).map(|a| &a.info)
    }

    /// ep_ids of the endpoints whose entry has `EP_NAME_RULES`.
    pub fn named_ep_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.applied
            .values()
            .filter(|a| a.info.flags & EP_NAME_RULES != 0)
            .map(|a| a.info.ep_id)
    }

    pub fn ifindexes(&self) -> Vec<u32> {
        self.applied.keys().copied().collect()
    }

    pub fn entries_len(&self, ifindex: u32) -> usize {
        self.applied.get(&ifindex).map_or(0, |a| a.entries.len())
    }

    pub fn max_ep_id(&self) -> u32 {
        self.applied
            .values()
            .map(|a| a.info.ep_id)
            .max()
            .unwrap_or(0)
    }

    /// (endpoints, policy entries, port entries) present.
    pub fn usage(&self) -> (usize, usize, usize) {
        (self.applied.len(), self.policy_used, self.ports_used)
    }

    pub fn leftovers(&self) -> usize {
        self.orphans.len() + self.orphan_ports.len() + self.retired.len() + self.retired_ports.len()
    }

    /// Deletes what was retired, after one grace period; what cannot be deleted is left for
    /// the next apply's `clean_leftovers`. Returns true when something was deleted.
    pub fn commit<M: MapOps>(&mut self, m: &mut M) -> bool {
        if self.retired.is_empty() && self.retired_ports.is_empty() {
            return false;
        }
        if m.grace_period().is_err() {
            return false;
        }
        let mut deleted = false;
        for (plen, key) in std::mem::take(&mut self.retired) {
            match m.del_policy(plen, key) {
                Ok(()) => {
                    self.policy_used = self.policy_used.saturating_sub(1);
                    deleted = true;
                }
                Err(_) => self.orphans.push((plen, key)),
            }
        }
        for (plen, key) in std::mem::take(&mut self.retired_ports) {
            match m.del_port(plen, key) {
                Ok(()) => {
                    self.ports_used = self.ports_used.saturating_sub(1);
                    deleted = true;
                }
                Err(_) => self.orphan_ports.push((plen, key)),
            }
        }
        deleted
    }

    /// Deletes the entries nothing references; those whose delete fails stay listed.
    /// Returns true when something was deleted.
    pub fn clean_leftovers<M: MapOps>(&mut self, m: &mut M) -> bool {
        let before = self.leftovers();
        let mut keep = Vec::new();
        for (plen, key) in std::mem::take(&mut self.orphans) {
            match m.del_policy(plen, key) {
                Ok(()) => self.policy_used = self.policy_used.saturating_sub(1),
                Err(_) => keep.push((plen, key)),
            }
        }
        self.orphans = keep;
        let mut keep = Vec::new();
        for (plen, key) in std::mem::take(&mut self.orphan_ports) {
            match m.del_port(plen, key) {
                Ok(()) => self.ports_used = self.ports_used.saturating_sub(1),
                Err(_) => keep.push((plen, key)),
            }
        }
        self.orphan_ports = keep;
        self.leftovers() < before
    }

    /// Takes a reference on each of `wanted` not already in `held`, writing the port sets
    /// that are not present yet. All or nothing: on failure, what this call took is
    /// released and the error returned.
    fn acquire<M: MapOps>(
        &mut self,
        m: &mut M,
        wanted: &HashSet<Arc<PortContent>>,
        held: &HashSet<Arc<PortContent>>,
    ) -> Result<Vec<Arc<PortContent>>, M::Error> {
        let mut taken = Vec::new();
        for c in wanted.iter().filter(|c| !held.contains(*c)) {
            if let Some(slot) = self.portsets.get_mut(c) {
                slot.1 += 1;
                taken.push(c.clone());
                continue;
            }
            let id = self.next_portset_id;
            self.next_portset_id += 1;
            let mut written = Vec::new();
            let mut failed = None;
            for (plen, key, rule_ref) in c.iter() {
                let key = with_portset_id(*key, id);
                match m.put_port(
                    *plen,
                    key,
                    PortValue {
                        rule_ref: *rule_ref,
                    },
                ) {
                    Ok(()) => {
                        self.ports_used += 1;
                        written.push((*plen, key));
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                for (plen, key) in written {
                    self.retire_port(plen, key);
                }
                self.release(taken);
                return Err(e);
            }
            self.portsets.insert(c.clone(), (id, 1));
            taken.push(c.clone());
        }
        Ok(taken)
    }

    /// Drops one reference on each of `contents`, retiring the port sets nobody holds.
    fn release(&mut self, contents: impl IntoIterator<Item = Arc<PortContent>>) {
        for c in contents {
            let Some(slot) = self.portsets.get_mut(&c) else {
                continue;
            };
            slot.1 -= 1;
            if slot.1 > 0 {
                continue;
            }
            let id = slot.0;
            self.portsets.remove(&c);
            for (plen, key, _) in c.iter() {
                self.retire_port(*plen, with_portset_id(*key, id));
            }
        }
    }

    /// A port entry nothing references any more: deleted by the next `commit`.
    fn retire_port(&mut self, plen: u32, key: PortKey) {
        self.retired_ports.push((plen, key));
    }

    /// A policy entry nothing references any more: deleted by the next `commit`.
    fn retire_policy(&mut self, plen: u32, key: PolicyKey) {
        self.retired.push((plen, key));
    }

    /// `check_fits`, after freeing what retired entries hold when it does not fit.
    fn fits<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
        new_entries: usize,
        wanted: &HashSet<Arc<PortContent>>,
        cap: &Capacity,
    ) -> Result<(), Full> {
        match self.check_fits(want, new_entries, wanted, cap) {
            Err(_) if self.commit(m) => self.check_fits(want, new_entries, wanted, cap),
            r => r,
        }
    }

    fn bump_gen(&mut self) -> u32 {
        let g = self.next_gen;
        self.next_gen += 1;
        g
    }

    /// The map value of `allow`; its port set must be held.
    fn value(&self, allow: &Allow) -> PolicyValue {
        match allow {
            Allow::All(rule_ref) => PolicyValue {
                flags: POL_ALL_PORTS,
                rule_ref: *rule_ref,
                portset_id: 0,
                _pad: 0,
            },
            Allow::Ports(c) => PolicyValue {
                portset_id: self.portsets.get(c).map_or(0, |s| s.0),
                ..PolicyValue::default()
            },
        }
    }

    fn info_of(want: &DesiredEndpoint, policy_id: u32, policy_gen: u32) -> EndpointInfo {
        EndpointInfo {
            ep_id: want.ep_id,
            policy_id,
            policy_gen,
            flags: want.flags,
            ipv4_be: want.ipv4_be,
            ipv6_be: want.ipv6_be,
            _pad: 0,
        }
    }

    /// Whether `want`'s new entries fit: `new_entries` in `pal_pol_v1`, the port sets not
    /// present yet in `pal_port_v1`, and a new endpoint in `pal_ep_v1`.
    fn check_fits(
        &self,
        want: &DesiredEndpoint,
        new_entries: usize,
        wanted: &HashSet<Arc<PortContent>>,
        cap: &Capacity,
    ) -> Result<(), Full> {
        if !self.applied.contains_key(&want.ifindex) {
            Full::check(maps::ENDPOINTS, self.applied.len(), 1, cap.endpoints)?;
        }
        Full::check(maps::POLICY, self.policy_used, new_entries, cap.policy)?;
        let new_ports = wanted
            .iter()
            .filter(|c| !self.portsets.contains_key(*c))
            .map(|c| c.len())
            .sum();
        Full::check(maps::PORTS, self.ports_used, new_ports, cap.ports)
    }

    /// Makes the maps hold `want` for its endpoint. Returns true when something was written.
    pub fn apply<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
        cap: &Capacity,
    ) -> Result<bool, ApplyError<M::Error>> {
        let Some(cur) = self.applied.get(&want.ifindex).cloned() else {
            self.rewrite(m, want, None, cap)?;
            return Ok(true);
        };
        if cur.entries == want.entries {
            let same = cur.info.ep_id == want.ep_id
                && cur.info.flags == want.flags
                && cur.info.ipv4_be == want.ipv4_be
                && cur.info.ipv6_be == want.ipv6_be;
            if same {
                return Ok(false);
            }
            // Same entries, other flags or addresses: one endpoint update (a new generation,
            // since becoming isolated restricts tracked flows).
            let info = Self::info_of(want, cur.info.policy_id, self.next_gen);
            m.put_endpoint(want.ifindex, info)
                .map_err(ApplyError::Map)?;
            self.bump_gen();
            self.applied.insert(
                want.ifindex,
                Applied {
                    info,
                    entries: cur.entries,
                },
            );
            return Ok(true);
        }
        let changed = diff_size(&cur.entries, &want.entries);
        let size = cur.entries.len().max(want.entries.len());
        if changed * REWRITE_FRACTION > size || cur.info.ep_id != want.ep_id {
            match self.rewrite(m, want, Some(cur.clone()), cap) {
                // A rewrite holds the old and the new entries at once; in place needs room for
                // the added keys only, and is as atomic per packet.
                Err(ApplyError::Full(_)) if cur.info.ep_id == want.ep_id => {
                    self.in_place(m, want, cur, cap)?
                }
                r => r?,
            }
        } else {
            self.in_place(m, want, cur, cap)?;
        }
        Ok(true)
    }

    fn rewrite<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
        cur: Option<Applied>,
        cap: &Capacity,
    ) -> Result<(), ApplyError<M::Error>> {
        let wanted = contents(&want.entries);
        self.fits(m, want, want.entries.len(), &wanted, cap)?;
        let held = cur
            .as_ref()
            .map(|c| contents(&c.entries))
            .unwrap_or_default();
        let taken = self.acquire(m, &wanted, &held).map_err(ApplyError::Map)?;
        let policy_id = self.next_policy_id;
        self.next_policy_id += 1;
        let info = Self::info_of(want, policy_id, self.next_gen);
        let mut written = Vec::with_capacity(want.entries.len());
        let mut result = Ok(());
        for ((plen, key), allow) in want.entries.iter() {
            let key = with_policy_id(*key, policy_id);
            match m.put_policy(*plen, key, self.value(allow)) {
                Ok(()) => {
                    self.policy_used += 1;
                    written.push((*plen, key));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = m.put_endpoint(want.ifindex, info);
        }
        if let Err(e) = result {
            // Nothing points at the new entries: the old state is in force. Take them back.
            for (plen, key) in written {
                self.retire_policy(plen, key);
            }
            self.release(taken);
            return Err(ApplyError::Map(e));
        }
        self.bump_gen();
        self.applied.insert(
            want.ifindex,
            Applied {
                info,
                entries: want.entries.clone(),
            },
        );
        if let Some(old) = cur {
            for (plen, key) in old.entries.keys() {
                self.retire_policy(*plen, with_policy_id(*key, old.info.policy_id));
            }
            let gone: Vec<_> = held.into_iter().filter(|c| !wanted.contains(c)).collect();
            self.release(gone);
        }
        Ok(())
    }

    fn in_place<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
        cur: Applied,
        cap: &Capacity,
    ) -> Result<(), ApplyError<M::Error>> {
        let wanted = contents(&want.entries);
        let adds = want
            .entries
            .keys()
            .filter(|k| !cur.entries.contains_key(*k))
            .count();
        self.fits(m, want, adds, &wanted, cap)?;
        let held = contents(&cur.entries);
        let taken = self.acquire(m, &wanted, &held).map_err(ApplyError::Map)?;
        let final_info = Self::info_of(want, cur.info.policy_id, self.next_gen);
        let mut journal = Vec::new();
        let result = self.in_place_steps(m, want, &cur, final_info, &mut journal);
        let (held_after, err) = match result {
            Ok(()) => {
                self.bump_gen();
                self.applied.insert(
                    want.ifindex,
                    Applied {
                        info: final_info,
                        entries: want.entries.clone(),
                    },
                );
                (wanted.clone(), None)
            }
            Err(e) => {
                let kept = self.undo(m, want.ifindex, cur.info.policy_id, &journal);
                let now = if kept == 0 {
                    cur.clone()
                } else {
                    replay(&cur, want, &journal[..kept])
                };
                let held_after = contents(&now.entries);
                self.applied.insert(want.ifindex, now);
                (held_after, Some(e))
            }
        };
        let release: Vec<_> = held
            .into_iter()
            .chain(taken.iter().cloned())
            .filter(|c| !held_after.contains(c))
            .collect();
        // Each content of `held` holds one reference; each of `taken` one more, and a content
        // is in at most one of the two (`acquire` skips what is held).
        self.release(release);
        match err {
            Some(e) => Err(ApplyError::Map(e)),
            None => Ok(()),
        }
    }

    /// The forward steps of an in-place update, each recorded in `journal` once done.
    fn in_place_steps<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &DesiredEndpoint,
        cur: &Applied,
        final_info: EndpointInfo,
        journal: &mut Vec<Step>,
    ) -> Result<(), M::Error> {
        let policy_id = cur.info.policy_id;
        let isolation = EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED;
        // 1. Directions that stop being isolated are released first.
        let dropped = cur.info.flags & isolation & !want.flags;
        if dropped != 0 {
            let after = EndpointInfo {
                flags: cur.info.flags & !dropped,
                ..cur.info
            };
            m.put_endpoint(want.ifindex, after)?;
            journal.push(Step::Endpoint {
                before: cur.info,
                after,
            });
        }
        // 2. Keys only the new state has, longest prefix first.
        let mut adds: Vec<_> = want
            .entries
            .iter()
            .filter(|(k, _)| !cur.entries.contains_key(*k))
            .collect();
        adds.sort_by_key(|e| std::cmp::Reverse(e.0.0));
        for (&(plen, key), allow) in adds {
            m.put_policy(plen, with_policy_id(key, policy_id), self.value(allow))?;
            self.policy_used += 1;
            journal.push(Step::Added((plen, key)));
        }
        // 3. Keys both have, with a new value.
        for (&(plen, key), allow) in want.entries.iter() {
            if let Some(old) = cur.entries.get(&(plen, key))
                && old != allow
            {
                m.put_policy(plen, with_policy_id(key, policy_id), self.value(allow))?;
                journal.push(Step::Changed((plen, key), old.clone()));
            }
        }
        // 4. Keys only the old state has, shortest prefix first.
        let mut dels: Vec<_> = cur
            .entries
            .iter()
            .filter(|(k, _)| !want.entries.contains_key(*k))
            .collect();
        dels.sort_by_key(|e| e.0.0);
        for (&(plen, key), allow) in dels {
            m.del_policy(plen, with_policy_id(key, policy_id))?;
            self.policy_used = self.policy_used.saturating_sub(1);
            journal.push(Step::Deleted((plen, key), allow.clone()));
        }
        // 5. Final flags and a new generation.
        m.put_endpoint(want.ifindex, final_info)
    }

    /// Undoes `journal` newest first; stops at the first undo write that fails. Returns how
    /// many steps (from the start) are still in force.
    fn undo<M: MapOps>(
        &mut self,
        m: &mut M,
        ifindex: u32,
        policy_id: u32,
        journal: &[Step],
    ) -> usize {
        let mut kept = journal.len();
        for step in journal.iter().rev() {
            let r = match step {
                Step::Endpoint { before, .. } => m.put_endpoint(ifindex, *before),
                Step::Added((plen, key)) => m
                    .del_policy(*plen, with_policy_id(*key, policy_id))
                    .map(|()| self.policy_used = self.policy_used.saturating_sub(1)),
                Step::Changed((plen, key), old) => {
                    m.put_policy(*plen, with_policy_id(*key, policy_id), self.value(old))
                }
                Step::Deleted((plen, key), old) => m
                    .put_policy(*plen, with_policy_id(*key, policy_id), self.value(old))
                    .map(|()| self.policy_used += 1),
            };
            if r.is_err() {
                break;
            }
            kept -= 1;
        }
        kept
    }

    /// Removes an endpoint: first its endpoint entry (packets on its hooks now fail closed),
    /// then its policy (retired). If the endpoint entry cannot be deleted, nothing changes.
    pub fn remove<M: MapOps>(&mut self, m: &mut M, ifindex: u32) -> Result<(), M::Error> {
        let Some(old) = self.applied.get(&ifindex) else {
            return Ok(());
        };
        m.del_endpoint(ifindex)?;
        let old = old.clone();
        self.applied.remove(&ifindex);
        for (plen, key) in old.entries.keys() {
            self.retire_policy(*plen, with_policy_id(*key, old.info.policy_id));
        }
        self.release(contents(&old.entries));
        Ok(())
    }
}

/// The state after the first steps of an in-place update from `cur` towards `want`.
fn replay(cur: &Applied, want: &DesiredEndpoint, done: &[Step]) -> Applied {
    let mut info = cur.info;
    let mut entries = (*cur.entries).clone();
    for step in done {
        match step {
            Step::Endpoint { after, .. } => info = *after,
            Step::Added(k) | Step::Changed(k, _) => {
                if let Some(a) = want.entries.get(k) {
                    entries.insert(*k, a.clone());
                }
            }
            Step::Deleted(k, _) => {
                entries.remove(k);
            }
        }
    }
    Applied {
        info,
        entries: Arc::new(entries),
    }
}
