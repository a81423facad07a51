//! The applier's map operations on the real pinned maps, and reading them back for adoption.

use aya::maps::MapError;
use palisade_common::endpoint::EndpointInfo;
use palisade_common::maps;
use palisade_common::policy::{PolicyKey, PolicyValue, PortKey, PortValue};

use crate::applier::{MapOps, PinnedState};
use crate::datapath::{Datapath, DatapathError, Maps, lpm};

pub struct Ops<'a>(pub &'a mut Maps);

fn e(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

/// Deleting what is already gone is fine (idempotent cleanup).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

impl MapOps for Ops<'_> {
    type Error = DatapathError;
    fn put_policy(&mut self, p: u32, k: PolicyKey, v: PolicyValue) -> Result<(), DatapathError> {
        self.0
            .policy
            .insert(&lpm(p, k), v, 0)
            .map_err(e(maps::POLICY, "insert"))
    }
    fn del_policy(&mut self, p: u32, k: PolicyKey) -> Result<(), DatapathError> {
        ignore_missing(self.0.policy.remove(&lpm(p, k))).map_err(e(maps::POLICY, "remove"))
    }
    fn put_port(&mut self, p: u32, k: PortKey, v: PortValue) -> Result<(), DatapathError> {
        self.0
            .ports
            .insert(&lpm(p, k), v, 0)
            .map_err(e(maps::PORTS, "insert"))
    }
    fn del_port(&mut self, p: u32, k: PortKey) -> Result<(), DatapathError> {
        ignore_missing(self.0.ports.remove(&lpm(p, k))).map_err(e(maps::PORTS, "remove"))
    }
    fn put_endpoint(&mut self, i: u32, v: EndpointInfo) -> Result<(), DatapathError> {
        self.0
            .endpoints
            .insert(i, v, 0)
            .map_err(e(maps::ENDPOINTS, "insert"))
    }
    fn del_endpoint(&mut self, i: u32) -> Result<(), DatapathError> {
        ignore_missing(self.0.endpoints.remove(&i)).map_err(e(maps::ENDPOINTS, "remove"))
    }
    fn grace_period(&mut self) -> Result<(), DatapathError> {
        rcu_grace_period();
        Ok(())
    }
}

/// Waits until every eBPF program run that started before the call has finished.
///
/// TC programs run inside RCU read-side sections (softirq, or `rcu_read_lock_bh` on transmit),
/// and `membarrier(MEMBARRIER_CMD_GLOBAL)` returns only after an RCU grace period
/// (`synchronize_rcu`), which waits for every such section that had begun: the one syscall that
/// gives this guarantee to user space. Kernels with `nohz_full` refuse the command; there a
/// sleep far longer than any program run (microseconds) stands in for it.
pub fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: the syscall takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn read_pinned(dp: &Datapath) -> Result<PinnedState, DatapathError> {
    let m = &dp.maps;
    let mut st = PinnedState::default();
    for r in m.endpoints.iter() {
        st.endpoints.push(r.map_err(e(maps::ENDPOINTS, "iterate"))?);
    }
    for r in m.policy.iter() {
        let (k, v) = r.map_err(e(maps::POLICY, "iterate"))?;
        st.policy.push((k.prefix_len(), k.data(), v));
    }
    for r in m.ports.iter() {
        let (k, v) = r.map_err(e(maps::PORTS, "iterate"))?;
        st.ports.push((k.prefix_len(), k.data(), v));
    }
    Ok(st)
}
