//! Egress by domain name: `pal_fqep_v1` (one entry per endpoint with name rules) and
//! `pal_fqname_v1` (pattern sets, shared by content between endpoints), applied as a diff.
//!
//! Why no packet sees a half-written state:
//! - a pattern set is written whole under a fresh id before any `pal_fqep_v1` entry points at
//!   it, and never changed afterwards (an endpoint whose patterns change is pointed at another
//!   set in one update);
//! - [`NameMaps::prepare`] runs before the endpoints' own maps are written: an endpoint that
//!   gains name rules has its `pal_fqep_v1` entry before its `pal_ep_v1` entry carries
//!   `EP_NAME_RULES` (the programs read it only under that flag);
//! - [`NameMaps::finish`] runs after: entries of endpoints that lost their rules (their
//!   `pal_ep_v1` entry no longer has the flag, or is gone) are deleted, and sets no endpoint
//!   points at are deleted after a grace period (a DNS answer being read may still be matching
//!   against one).
//!
//! The variant policies are `pal_pol_v1` entries of the endpoint's own policy (written by
//! `endpoints`), so they switch with it. Between `prepare` and the endpoint's switch, a
//! packet may pair the new pattern set with the old variants: for that instant an answer may
//! teach a mask the old variants read differently. Both are the pod's own rules; nothing the
//! pod's policies never allowed is ever allowed.
//!
//! A set that fails to be written is deleted again (after a grace period) and its endpoints
//! keep their previous entry; the failure is reported in `Outcome::maps`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use palisade_common::fqdn::{FqdnEndpoint, NAME_BYTES, NameKey};
use palisade_common::maps;
use palisade_policy::fqdn::NamePatterns;

use super::{ApplyError, DesiredEndpoint, Full, MapOps};

#[derive(Debug, Default)]
pub(super) struct NameMaps {
    /// ep_id -> its `pal_fqep_v1` value.
    applied: BTreeMap<u32, FqdnEndpoint>,
    /// name_set -> (its content, endpoints pointing at it).
    sets: BTreeMap<u32, (Arc<NamePatterns>, u32)>,
    /// The set written for each content (a content adopted twice after a crash has one here;
    /// the endpoints on the other are rewritten and it is retired).
    by_content: HashMap<Arc<NamePatterns>, u32>,
    /// Sets to delete after a grace period (nothing points at them any more), each with the
    /// entries of it still present (positions in its content's order: a set whose write or
    /// delete failed part-way holds only some, and only those are counted in `used`).
    retired: Vec<(u32, Arc<NamePatterns>, Range<usize>)>,
    next_set: u32,
    /// Entries present in `pal_fqname_v1` (retired sets included).
    used: usize,
}

fn name_key(set: u32, name: &[u8; NAME_BYTES]) -> NameKey {
    NameKey {
        name_set_be: set.to_be_bytes(),
        name: *name,
    }
}

impl NameMaps {
    /// The applied view from what the pinned maps hold.
    pub fn adopt(endpoints: Vec<(u32, FqdnEndpoint)>, names: Vec<(u32, NameKey, u32)>) -> Self {
        let mut n = NameMaps {
            next_set: 1,
            used: names.len(),
            ..Default::default()
        };
        let mut content: BTreeMap<u32, NamePatterns> = BTreeMap::new();
        for (plen, key, mask) in names {
            let set = u32::from_be_bytes(key.name_set_be);
            content
                .entry(set)
                .or_default()
                .insert((plen, key.name, mask));
            n.next_set = n.next_set.max(set + 1);
        }
        for (set, c) in content {
            let c = Arc::new(c);
            n.by_content.entry(c.clone()).or_insert(set);
            n.sets.insert(set, (c, 0));
        }
        for (ep_id, fe) in endpoints {
            n.next_set = n.next_set.max(fe.name_set + 1);
            if let Some((_, refs)) = n.sets.get_mut(&fe.name_set) {
                *refs += 1;
            }
            n.applied.insert(ep_id, fe);
        }
        n.release_unused();
        n
    }

    /// (endpoints with name rules, `pal_fqname_v1` entries present).
    pub fn usage(&self) -> (usize, usize) {
        (self.applied.len(), self.used)
    }

    /// Writes the pattern sets and `pal_fqep_v1` entries of every endpoint in `want` with
    /// name rules (before the endpoints' own maps). Returns (written, failures).
    pub fn prepare<'a, M: MapOps>(
        &mut self,
        m: &mut M,
        want: impl Iterator<Item = &'a DesiredEndpoint>,
        max_learnt: u32,
        capacity: u32,
    ) -> (bool, Vec<ApplyError<M::Error>>) {
        let mut written = false;
        let mut errors = Vec::new();
        for d in want {
            let Some(names) = &d.names else {
                continue;
            };
            let set = match self.set_for(m, &names.patterns, capacity) {
                Ok((set, w)) => {
                    written |= w;
                    set
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let fe = FqdnEndpoint {
                name_set: set,
                rules: names.rules,
                max_learnt,
                _pad: 0,
            };
            let old = self.applied.get(&d.ep_id).copied();
            if old == Some(fe) {
                continue;
            }
            if let Err(e) = m.put_fqdn_endpoint(d.ep_id, fe) {
                errors.push(ApplyError::Map(e));
                continue;
            }
            written = true;
            self.applied.insert(d.ep_id, fe);
            self.sets.get_mut(&set).expect("set_for wrote it").1 += 1;
            if let Some(old) = old {
                self.unref(old.name_set);
            }
        }
        // A set written for an endpoint whose entry then failed: nothing points at it.
        self.release_unused();
        (written, errors)
    }

    /// Deletes the `pal_fqep_v1` entries of endpoints not in `keep` (after the endpoints'
    /// own maps no longer flag them), then, after a grace period, the sets nothing points at.
    pub fn finish<M: MapOps>(
        &mut self,
        m: &mut M,
        keep: &BTreeSet<u32>,
    ) -> (bool, Vec<ApplyError<M::Error>>) {
        let mut written = false;
        let mut errors = Vec::new();
        let gone: Vec<u32> = self
            .applied
            .keys()
            .filter(|ep| !keep.contains(ep))
            .copied()
            .collect();
        for ep_id in gone {
            match m.del_fqdn_endpoint(ep_id) {
                Ok(()) => {
                    written = true;
                    let fe = self.applied.remove(&ep_id).expect("listed above");
                    self.unref(fe.name_set);
                }
                Err(e) => errors.push(ApplyError::Map(e)),
            }
        }
        if self.retired.is_empty() {
            return (written, errors);
        }
        if let Err(e) = m.grace_period() {
            errors.push(ApplyError::Map(e));
            return (written, errors);
        }
        let mut keep_retired = Vec::new();
        for (set, content, mut present) in std::mem::take(&mut self.retired) {
            let mut failed = None;
            for (plen, name, _) in content.iter().skip(present.start).take(present.len()) {
                match m.del_name(*plen, name_key(set, name)) {
                    Ok(()) => {
                        self.used = self.used.saturating_sub(1);
                        present.start += 1;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            written = true;
            // The next try starts at the entry whose delete failed.
            if let Some(e) = failed {
                errors.push(ApplyError::Map(e));
                keep_retired.push((set, content, present));
            }
        }
        self.retired = keep_retired;
        (written, errors)
    }

    /// The set holding `content`, written now if there is none. Returns (set, written).
    fn set_for<M: MapOps>(
        &mut self,
        m: &mut M,
        content: &Arc<NamePatterns>,
        capacity: u32,
    ) -> Result<(u32, bool), ApplyError<M::Error>> {
        if let Some(&set) = self.by_content.get(content) {
            return Ok((set, false));
        }
        Full::check(maps::FQDN_NAMES, self.used, content.len(), capacity)?;
        let set = self.next_set;
        self.next_set += 1;
        for (i, (plen, name, mask)) in content.iter().enumerate() {
            if let Err(e) = m.put_name(*plen, name_key(set, name), *mask) {
                // Written so far: deleted after a grace period (nothing points at them).
                self.used += i;
                self.retired.push((set, content.clone(), 0..i));
                return Err(ApplyError::Map(e));
            }
        }
        self.used += content.len();
        self.sets.insert(set, (content.clone(), 0));
        self.by_content.insert(content.clone(), set);
        Ok((set, true))
    }

    fn unref(&mut self, set: u32) {
        if let Some((_, refs)) = self.sets.get_mut(&set) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.release_set(set);
            }
        }
    }

    /// Retires every set no endpoint points at.
    fn release_unused(&mut self) {
        let unused: Vec<u32> = self
            .sets
            .iter()
            .filter(|(_, (_, refs))| *refs == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in unused {
            self.release_set(id);
        }
    }

    fn release_set(&mut self, set: u32) {
        if let Some((content, _)) = self.sets.remove(&set) {
            if self.by_content.get(&content) == Some(&set) {
                self.by_content.remove(&content);
            }
            let all = 0..content.len();
            self.retired.push((set, content, all));
        }
    }
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;
