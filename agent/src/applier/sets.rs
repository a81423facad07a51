//! Address sets (`pal_svc_v1`, `pal_host_v1`): hash maps whose entries are independent keys.
//!
//! A packet's answer depends on one key only (is its address in the set), so any order of
//! writes gives every packet the old or the new answer. Deletes go first, so the map never
//! holds more than the larger of the old and new sets. A failed write undoes the writes done
//! (newest first), so the old set is in force again; if an undo fails too, the set of present
//! keys stays exact, and the next apply writes only what is still missing.

use std::collections::BTreeSet;

use palisade_common::stats::HostAddrKey;

use super::{AddrMap, ApplyError, Full, MapOps};

#[derive(Debug)]
pub(super) struct AddrSet {
    map: AddrMap,
    present: BTreeSet<HostAddrKey>,
}

impl AddrSet {
    pub fn adopt(map: AddrMap, pinned: Vec<HostAddrKey>) -> Self {
        AddrSet {
            map,
            present: pinned.into_iter().collect(),
        }
    }

    pub fn map(&self) -> AddrMap {
        self.map
    }

    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn present(&self) -> &BTreeSet<HostAddrKey> {
        &self.present
    }

    /// Makes the map hold exactly `want`. Returns true when something was written.
    pub fn apply<M: MapOps>(
        &mut self,
        m: &mut M,
        want: &BTreeSet<HostAddrKey>,
        capacity: u32,
    ) -> Result<bool, ApplyError<M::Error>> {
        if &self.present == want {
            return Ok(false);
        }
        let dels: Vec<HostAddrKey> = self.present.difference(want).copied().collect();
        let adds: Vec<HostAddrKey> = want.difference(&self.present).copied().collect();
        Full::check(
            self.map.name(),
            self.present.len() - dels.len(),
            adds.len(),
            capacity,
        )?;
        // (key, added): done in this order.
        let mut done: Vec<(HostAddrKey, bool)> = Vec::new();
        let steps = dels
            .into_iter()
            .map(|k| (k, false))
            .chain(adds.into_iter().map(|k| (k, true)));
        for (k, add) in steps {
            let r = if add {
                m.put_addr(self.map, k)
            } else {
                m.del_addr(self.map, k)
            };
            if let Err(e) = r {
                self.undo(m, &done);
                return Err(ApplyError::Map(e));
            }
            self.flip(k, add);
            done.push((k, add));
        }
        Ok(true)
    }

    fn flip(&mut self, k: HostAddrKey, present: bool) {
        if present {
            self.present.insert(k);
        } else {
            self.present.remove(&k);
        }
    }

    /// Reverts `done` newest first, stopping at the first write that fails.
    fn undo<M: MapOps>(&mut self, m: &mut M, done: &[(HostAddrKey, bool)]) {
        for &(k, added) in done.iter().rev() {
            let r = if added {
                m.del_addr(self.map, k)
            } else {
                m.put_addr(self.map, k)
            };
            if r.is_err() {
                return;
            }
            self.flip(k, !added);
        }
    }
}
